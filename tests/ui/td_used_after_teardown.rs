// Guarantee: teardown consumes the TD; nothing can use it (or its pages)
// afterwards.
use tdx::api::{
    Platform,
    td::{Finalized, Td},
};
use tdx::sys::Seamcall;

fn after_teardown<B: Seamcall + Sync, P: Platform + Sync>(td: Td<'_, Finalized, B, P>) {
    let _report = td.teardown();
    let _ = td.tdr();
}

fn main() {}
