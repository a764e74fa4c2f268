// Guarantee: the page size of a mapping is the size in the frame's type; a
// frame the type says is 4K cannot be mapped as a 2M page.
use tdx::api::{
    Platform,
    td::{Finalized, GuestFrame, Td},
};
use tdx::{Gpa, Size2M, Size4K, sys::Seamcall};

fn map_2m<B: Seamcall + Sync, P: Platform + Sync>(
    mut td: Td<'_, Finalized, B, P>,
    frame: GuestFrame<Size4K>,
) {
    let _ = td.map::<Size2M>(Gpa::new(0), frame);
}

fn main() {}
