// Guarantee: a TdxPageArray reads, writes, frees and leaks its frames
// through the platform that allocated them, and no other. No operation takes
// a platform, so frames allocated from `a` cannot be written through, or
// given back to, `b` (which never handed them out) with safe code.
use tdx::api::{Placement, TdxPageArray};
use tdx_sim::{MachineDesc, Simulator};

fn main() {
    let a = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let b = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    let mut array = TdxPageArray::alloc(&a, 4, Placement::Anywhere).unwrap();
    array.populate(&b, 0);
    array.leak(&b, "given back to an allocator that never gave them out");
}
