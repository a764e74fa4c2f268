// Guarantee: a Pfn is a number, never a pointer: it cannot be dereferenced.
use tdx::Pfn;

fn main() {
    let pfn = Pfn::new(0x1000);
    let _ = *pfn;
}
