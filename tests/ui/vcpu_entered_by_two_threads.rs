// Guarantee: one thread runs a vCPU at a time (the module refuses a second
// entry of a running vCPU): entering takes the handle exclusively.
use tdx::api::{
    CpuId,
    td::{Finalized, Td, TdHostRef, VcpuId},
};

fn two_threads<H: TdHostRef>(td: &Td<Finalized, H>, id: VcpuId)
where
    Td<Finalized, H>: Sync,
{
    let mut v = td.vcpu(id).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| v.enter(CpuId(0)));
        s.spawn(|| v.enter(CpuId(1)));
    });
}

fn main() {}
