// Guarantee: vCPUs are created (TDH.VP.CREATE/ADDCX/INIT) before
// finalization only; a finalized TD has neither `create_vcpu` nor
// `new_vcpu`.
use tdx::api::{
    CpuId,
    td::{Finalized, Td, TdHostRef},
};

fn after_finalize<H: TdHostRef>(mut td: Td<Finalized, H>) {
    let _ = td.create_vcpu(CpuId(0), 0, 0);
    let _ = td.new_vcpu(CpuId(0));
}

fn main() {}
