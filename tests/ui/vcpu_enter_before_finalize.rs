// Guarantee: only a finalized TD runs (the module enters vCPUs only after
// TDH.MR.FINALIZE): an initialized TD has no vCPU handles.
use tdx::api::td::{Initialized, Td, TdHostRef, VcpuId};

fn enter_early<H: TdHostRef>(td: Td<Initialized, H>, id: VcpuId) {
    let _ = td.vcpu(id);
}

fn main() {}
