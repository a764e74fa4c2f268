// Guarantee: a FirmwarePage is unique. It cannot be cloned, so two owners of
// one module-owned page cannot exist.
use tdx::{FirmwarePage, Pfn};

fn main() {
    let page = FirmwarePage::from_pfn(Pfn::new(0x1000));
    let copy = page.clone();
    let _ = (page, copy);
}
