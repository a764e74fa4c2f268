// Guarantee: page sizes are types. A 4 KiB frame range cannot be passed where
// a 2 MiB page is required.
use tdx::{Pfn, PfnRange, Size2M, Size4K};

fn map_2m(_page: PfnRange<Size2M>) {}

fn main() {
    let small: PfnRange<Size4K> = PfnRange::new(Pfn::new(0x200));
    map_2m(small);
}
