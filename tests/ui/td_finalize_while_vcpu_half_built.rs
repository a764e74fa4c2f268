// Guarantee: a TD cannot be finalized while one of its vCPUs is half
// built (the module creates vCPUs only before TDH.MR.FINALIZE): the vCPU
// builder borrows the TD.
use tdx::api::{
    CpuId,
    td::{Initialized, Td, TdHostRef},
};

fn finalize_mid_build<H: TdHostRef>(mut td: Td<Initialized, H>) {
    let v = td.new_vcpu(CpuId(0)).unwrap();
    let _td = td.finalize();
    let _ = v.add_tdcx();
}

fn main() {}
