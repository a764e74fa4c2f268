// Guarantee: TDH.MEM.PAGE.AUG maps 4K and 2M pages only (module 1.5); a 1G
// frame goes through `map_1g` (AUG of 2M parts and PROMOTE), never `map`.
use tdx::api::td::{Finalized, GuestFrame, Td, TdHostRef};
use tdx::{Gpa, Size1G};

fn map_1g<H: TdHostRef>(td: Td<Finalized, H>, frame: GuestFrame<Size1G>) {
    let _ = td.map(Gpa::new(0), frame);
}

fn main() {}
