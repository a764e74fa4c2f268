// Guarantee: teardown consumes the TD; nothing can use it (or its pages)
// afterwards.
use tdx::api::td::{Finalized, Td, TdHostRef};

fn after_teardown<H: TdHostRef>(td: Td<Finalized, H>) {
    let _report = td.teardown();
    let _ = td.tdr();
}

fn main() {}
