// Guarantee: the initial RCX and the x2APIC ID of a vCPU have their own
// types, so swapping them (or passing bare integers) does not compile.
use tdx::api::{
    CpuId, InitialRcx, X2ApicId,
    td::{Initialized, Td, TdHostRef},
};

fn swapped<H: TdHostRef>(mut td: Td<Initialized, H>) {
    let _ = td.create_vcpu(CpuId(0), X2ApicId(1), InitialRcx(0x1000));
}

fn bare<H: TdHostRef>(mut td: Td<Initialized, H>) {
    let _ = td.create_vcpu(CpuId(0), 0x1000, 1);
}

fn main() {}
