// Guarantee: the set of page sizes is closed. Code outside tdx-types cannot
// invent a page size the TDX ABI does not have.
use tdx::{PageSize, TdxLevel};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Size8K {}

impl PageSize for Size8K {
    const SIZE: u64 = 8192;
    const SHIFT: u32 = 13;
    const LEVEL: TdxLevel = TdxLevel::L4K;
    const NAME: &'static str = "8K";
}

fn main() {}
