// Guarantee: a FirmwarePage is not Copy. Handing it on moves it; the old
// binding cannot be used to hand the same page over twice.
use tdx::{FirmwarePage, Pfn};

fn give(_page: FirmwarePage) {}

fn main() {
    let page = FirmwarePage::from_pfn(Pfn::new(0x1000));
    give(page);
    give(page);
}
