// Guarantee: initial memory (TDH.MEM.PAGE.ADD, measured) exists only before
// finalization; a finalized TD has no `add_page`.
use tdx::api::td::{Finalized, GuestFrame, Td, TdHostRef};
use tdx::{Gpa, Size4K};

fn after_finalize<H: TdHostRef>(mut td: Td<Finalized, H>, frame: GuestFrame<Size4K>) {
    let _ = td.add_page(Gpa::new(0), frame, &[0; 4096], true);
}

fn main() {}
