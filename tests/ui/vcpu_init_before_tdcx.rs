// Guarantee: a vCPU is initialized (TDH.VP.INIT) only after its TDCX pages
// are added; a builder in the `VpCreated` state has no `init`.
use tdx::api::{
    CpuId, Platform,
    td::{Initialized, Td},
};
use tdx::sys::Seamcall;

fn init_too_early<B: Seamcall + Sync, P: Platform + Sync>(mut td: Td<'_, Initialized, B, P>) {
    let v = td.new_vcpu(CpuId(0)).unwrap();
    let _ = v.init(0, 0);
}

fn main() {}
