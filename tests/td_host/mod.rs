//! The simulated host the vCPU tests run on: two packages of two CPUs and
//! 4 GiB of TDX memory at 4 GiB, module 1.5.01, brought up.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use tdx::api::{
    TdxModule,
    plan::{MemRange, PlanInput},
    td::TdHost,
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;

/// The simulator, not brought up.
pub(crate) fn sim() -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap()
}

pub(crate) type Host<'s> = TdHost<&'s Simulator, &'s Simulator>;

/// The module of `sim` brought up, as a TD host.
pub(crate) fn host(sim: &Simulator) -> Host<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let m = TdxModule::init(sim, sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    TdHost::new(m).unwrap()
}
