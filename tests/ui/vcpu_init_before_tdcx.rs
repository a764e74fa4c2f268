// Guarantee: a vCPU is initialized (TDH.VP.INIT) only after its TDCX pages
// are added; a builder in the `VpCreated` state has no `init`.
use tdx::api::{
    CpuId, InitialRcx, X2ApicId,
    td::{Initialized, Td, TdHostRef},
};

fn init_too_early<H: TdHostRef>(mut td: Td<Initialized, H>) {
    let v = td.new_vcpu(CpuId(0)).unwrap();
    let _ = v.init(InitialRcx(0), X2ApicId(0));
}

fn main() {}
