// Guarantee: TDH.MR.FINALIZE exists only on an initialized TD
// (TDH.MNG.INIT done); a TD whose TDCS was just added cannot be finalized.
use tdx::api::td::{Td, TdHostRef, TdcsAdded};

fn before_init<H: TdHostRef>(td: Td<TdcsAdded, H>) {
    let _ = td.finalize();
}

fn main() {}
