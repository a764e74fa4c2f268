// Guarantee: giving pages back to the allocator is an `unsafe` promise that
// the TDX module owns none of them. `free` and `split_donated` (which frees
// every page past the donated ones) cannot be called from safe code.
use tdx::api::{Placement, TdxPageArray};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let array = TdxPageArray::alloc(&sim, 4, Placement::Anywhere).unwrap();
    let _kept = array.split_donated(0);
    let array = TdxPageArray::alloc(&sim, 4, Placement::Anywhere).unwrap();
    array.free();
}
