// Guarantee: a TdxPageArray borrows the platform that allocated its frames
// for as long as it holds them: the platform cannot be dropped (or moved)
// while an array still has frames to give back to it.
use tdx::api::{Placement, TdxPageArray};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let array = TdxPageArray::alloc(&sim, 4, Placement::Anywhere).unwrap();
    drop(sim);
    array.leak("the platform is gone");
}
