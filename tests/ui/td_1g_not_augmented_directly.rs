// Guarantee: TDH.MEM.PAGE.AUG maps 4K and 2M pages only (module 1.5); a 1G
// frame goes through `map_1g` (AUG of 2M parts and PROMOTE), never `map`.
use tdx::api::{
    Platform,
    td::{Finalized, GuestFrame, Td},
};
use tdx::{Gpa, Size1G, sys::Seamcall};

fn map_1g<B: Seamcall + Sync, P: Platform + Sync>(
    mut td: Td<'_, Finalized, B, P>,
    frame: GuestFrame<Size1G>,
) {
    let _ = td.map(Gpa::new(0), frame);
}

fn main() {}
