// Guarantee: a FirmwarePage is inert. It does not dereference to the page's
// contents (the module owns them; a host read or write would corrupt or
// poison them).
use tdx::{FirmwarePage, Pfn};

fn main() {
    let page = FirmwarePage::from_pfn(Pfn::new(0x1000));
    let _first_byte: u8 = *page;
}
