// Guarantee: a TdxPageArray is unique. It owns its pages and its root page,
// so it cannot be cloned: two owners could hand the same pages to the
// module twice, or free pages the module took.
use tdx::api::{Placement, TdxPageArray};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let array = TdxPageArray::alloc(&sim, 4, Placement::Anywhere).unwrap();
    let copy = array.clone();
    let _ = (array, copy);
}
