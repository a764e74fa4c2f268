//! The simulated host the vCPU tests run on: two packages of two CPUs and
//! 4 GiB of TDX memory at 4 GiB, module 1.5.01, brought up.

// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use tdx::api::{
    FrameAllocator, FrameDeallocator, TdxModule,
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
            .with_profile(profile(Profile::tdx_1_5())),
    )
    .unwrap()
}

/// `p` as the tests run it. Under Miri one TDH.SYS.TDMR.INIT initializes
/// 1 GiB rather than 4 MiB: 4 calls for 4 GiB instead of 1024, which Miri
/// takes close to a minute to interpret. The leaf, its checks and the
/// library's loop over it are the same; only the count differs.
pub(crate) fn profile(mut p: Profile) -> Profile {
    if cfg!(miri) {
        p.tdmr_init_chunk = GIB;
    }
    p
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

/// Frames for guest memory, `count` pages aligned to `align` pages.
pub(crate) fn frames(sim: &Simulator, count: u64, align: u64) -> tdx::types::PfnRun {
    use tdx::api::Placement;
    sim.alloc_pages(count, align, Placement::Anywhere).unwrap()
}

/// Frees frames a TD gave back.
pub(crate) fn give_frames_back(sim: &Simulator, runs: &[tdx::types::PfnRun]) {
    for r in runs {
        // SAFETY: the TD returned these frames (report or unmap): they are
        // host memory again, flushed.
        #[allow(unsafe_code)]
        unsafe {
            sim.free_pages(*r)
        };
    }
}

/// SEAMCALLs of `leaf` the simulator has seen.
pub(crate) fn calls(sim: &Simulator, leaf: tdx::Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

/// Nothing lost: the accounting is what it was after bring-up, no rule was
/// broken, and the module's and host's views agree.
pub(crate) fn assert_back_to(sim: &Simulator, baseline: &tdx_sim::Accounting, label: &str) {
    assert_eq!(&sim.accounting(), baseline, "{label}: pages lost");
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}
