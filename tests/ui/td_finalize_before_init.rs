// Guarantee: TDH.MR.FINALIZE exists only on an initialized TD
// (TDH.MNG.INIT done); a TD whose TDCS was just added cannot be finalized.
use tdx::api::{
    Platform,
    td::{Td, TdcsAdded},
};
use tdx::sys::Seamcall;

fn before_init<B: Seamcall + Sync, P: Platform + Sync>(td: Td<'_, TdcsAdded, B, P>) {
    let _ = td.finalize();
}

fn main() {}
