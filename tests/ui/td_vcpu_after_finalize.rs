// Guarantee: vCPUs are created (TDH.VP.CREATE/ADDCX/INIT) before
// finalization only; a finalized TD has no `create_vcpu`.
use tdx::api::{
    CpuId, Platform,
    td::{Finalized, Td},
};
use tdx::sys::Seamcall;

fn after_finalize<B: Seamcall + Sync, P: Platform + Sync>(mut td: Td<'_, Finalized, B, P>) {
    let _ = td.create_vcpu(CpuId(0), 0, 0);
}

fn main() {}
