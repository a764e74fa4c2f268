// Guarantee: a TD cannot be finalized while one of its vCPUs is half
// built (the module creates vCPUs only before TDH.MR.FINALIZE): the vCPU
// builder borrows the TD.
use tdx::api::{
    CpuId, Platform,
    td::{Initialized, Td},
};
use tdx::sys::Seamcall;

fn finalize_mid_build<B: Seamcall + Sync, P: Platform + Sync>(mut td: Td<'_, Initialized, B, P>) {
    let v = td.new_vcpu(CpuId(0)).unwrap();
    let _td = td.finalize();
    let _ = v.add_tdcx();
}

fn main() {}
