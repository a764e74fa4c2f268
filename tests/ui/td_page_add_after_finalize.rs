// Guarantee: initial memory (TDH.MEM.PAGE.ADD, measured) exists only before
// finalization; a finalized TD has no `add_page`.
use tdx::api::{
    Platform,
    td::{Finalized, GuestFrame, Td},
};
use tdx::{Gpa, Size4K, sys::Seamcall};

fn after_finalize<B: Seamcall + Sync, P: Platform + Sync>(
    mut td: Td<'_, Finalized, B, P>,
    frame: GuestFrame<Size4K>,
) {
    let _ = td.add_page(Gpa::new(0), frame, &[0; 4096], true);
}

fn main() {}
