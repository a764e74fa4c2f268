// Guarantee: vCPUs are created (TDH.VP.CREATE/ADDCX/INIT) before
// finalization only; a finalized TD has neither `create_vcpu` nor
// `new_vcpu`.
use tdx::api::{InitialRcx, X2ApicId};
use tdx::api::{
    CpuId,
    td::{Finalized, Td, TdHostRef},
};

fn after_finalize<H: TdHostRef>(mut td: Td<Finalized, H>) {
    let _ = td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0));
    let _ = td.new_vcpu(CpuId(0));
}

fn main() {}
