// Guarantee: a status is not a bare integer. It cannot be compared with a
// u64 by accident (compare codes with `TdxStatus::is`, or raw values with
// `raw()`).
use tdx::TdxStatus;

fn main() {
    let s = TdxStatus::from_raw(0x8000_0200_0000_0001);
    if s == 0x8000_0200_0000_0000u64 {}
}
