// Guarantee: vCPUs are created (TDH.VP.CREATE/ADDCX/INIT) before
// finalization only; a finalized TD has neither `create_vcpu` nor
// `new_vcpu`.
use tdx::api::{
    CpuId, Platform,
    td::{Finalized, Td},
};
use tdx::sys::Seamcall;

fn after_finalize<B: Seamcall + Sync, P: Platform + Sync>(mut td: Td<'_, Finalized, B, P>) {
    let _ = td.create_vcpu(CpuId(0), 0, 0);
    let _ = td.new_vcpu(CpuId(0));
}

fn main() {}
