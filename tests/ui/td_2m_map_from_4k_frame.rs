// Guarantee: the page size of a mapping is the size in the frame's type; a
// frame the type says is 4K cannot be mapped as a 2M page.
use tdx::api::td::{Finalized, GuestFrame, Td, TdHostRef};
use tdx::{Gpa, Size2M, Size4K};

fn map_2m<H: TdHostRef>(td: Td<Finalized, H>, frame: GuestFrame<Size4K>) {
    let _ = td.map::<Size2M>(Gpa::new(0), frame);
}

fn main() {}
