// Guarantee: a vCPU handle holds its TD, so the TD cannot be torn down
// (its vCPUs flushed, its pages reclaimed) while a handle may still enter.
use tdx::api::{
    CpuId,
    td::{Finalized, Td, TdHostRef, VcpuId},
};

fn enter_after_teardown<H: TdHostRef>(td: Td<Finalized, H>, id: VcpuId) {
    let mut v = td.vcpu(id).unwrap();
    let _report = td.teardown();
    let _ = v.enter(CpuId(0));
}

fn main() {}
