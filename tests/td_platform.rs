//! The platform traits as the library uses them, on the simulator:
//!
//! - a TD dropped without `teardown` hands every guest frame to
//!   `FrameDeallocator::return_guest_frames`, once; one torn down hands
//!   them to the caller in its report and the platform gets none;
//! - the hardware facts are asked for once, at `TdxModule::init`, through
//!   bring-up, a TD's build, mapping, unmapping and teardown;
//! - on a machine with the partial-write erratum and no direct map, the
//!   provided `movdir64b_clear` refuses, and every page it would have
//!   cleared is leaked with the reason instead of freed or returned;
//!   likewise a Dynamic PAMT pair the module gives back;
//! - the simulator flags a "guest frame" returned while it is not host
//!   memory.

// UNSAFETY: the tests hand frames they allocated from the simulator to TDs
// (`GuestFrame::new`, the caller's promise), free them afterwards, and
// implement the platform traits by forwarding to the simulator.
#![allow(unsafe_code)]

use std::{
    collections::BTreeMap,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

mod td_host;

use td_host::{assert_back_to, frames, give_frames_back, host, sim};
use tdx::{
    Gpa, Pfn, Size2M, Size4K,
    api::{
        CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
        HardwareInfo, InitialRcx, NodeId, PackageId, Placement, PlatformError, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, PageRole, Td, TdConfig, TdError, TdHost, TdHostRef},
    },
    types::{Hpa, PfnRun},
};
use tdx_sim::{MachineDesc, PageState, Profile, Simulator, Violation};

const GIB: u64 = 1 << 30;

/// A finalized TD of `host` with one vCPU.
fn finalized<H: TdHostRef>(host: H) -> Td<Finalized, H> {
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = Td::build(host, &params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.finalize().map_err(|f| f.error).unwrap()
}

/// Maps three 4K frames and one 2M frame of `run` (515 frames, the 2M
/// part first and 2M-aligned) into `td`.
fn map_all<H: TdHostRef>(td: &Td<Finalized, H>, run: PfnRun) {
    let base = run.first().as_u64();
    // SAFETY: `run` was allocated for this TD; nothing else reads, writes
    // or frees it until the TD gives it back.
    let big = unsafe { GuestFrame::<Size2M>::new(Pfn::new(base)) }.unwrap();
    td.map(Gpa::new(0x20_0000), big)
        .map_err(|f| f.error)
        .unwrap();
    for i in 0..3 {
        // SAFETY: as above.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(base + 512 + i)) }.unwrap();
        td.map(Gpa::new(0x1000 * (i + 1)), f)
            .map_err(|f| f.error)
            .unwrap();
    }
}

/// How many times each frame of `runs` appears.
fn frame_counts(runs: &[PfnRun]) -> BTreeMap<u64, u32> {
    let mut m = BTreeMap::new();
    for r in runs {
        for f in r.iter() {
            *m.entry(f.as_u64()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn a_dropped_td_returns_every_guest_frame_to_the_platform_once() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();

    let run = frames(&sim, 515, 512);
    let td = finalized(&h);
    map_all(&td, run);
    assert!(sim.take_returned_guest_frames().is_empty());
    drop(td);

    let returned = sim.take_returned_guest_frames();
    let counts = frame_counts(&returned);
    assert_eq!(counts.len(), 515, "every frame: {returned:?}");
    assert!(counts.values().all(|&n| n == 1), "each once: {counts:?}");
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        run.iter().map(|f| f.as_u64()).collect::<Vec<_>>()
    );
    // One call per run of the report, and the report says the same.
    let reports = sim.dropped_td_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(returned, reports[0].guest_returned);
    assert_eq!(returned.len(), 4, "a 2M run and three 4K runs");
    assert!(sim.take_returned_guest_frames().is_empty(), "taken once");

    give_frames_back(&sim, &returned);
    assert_back_to(&sim, &baseline, "dropped");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_td_torn_down_returns_its_guest_frames_in_the_report_only() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();

    let run = frames(&sim, 515, 512);
    let td = finalized(&h);
    map_all(&td, run);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert!(
        sim.take_returned_guest_frames().is_empty(),
        "the caller has them"
    );
    assert!(sim.dropped_td_reports().is_empty());
    let counts = frame_counts(&report.guest_returned);
    assert_eq!(counts.len(), 515);
    assert!(counts.values().all(|&n| n == 1));

    give_frames_back(&sim, &report.guest_returned);
    assert_back_to(&sim, &baseline, "torn down");
}

/// Forwards every platform trait to the simulator and counts `hardware()`.
/// `CLEAR`: forward `movdir64b_clear` too; without it the provided method
/// runs, and finds no direct map (the simulator has none).
#[derive(Debug)]
struct Fwd<'s, const CLEAR: bool> {
    sim: &'s Simulator,
    hardware_calls: AtomicU32,
}

impl<'s, const CLEAR: bool> Fwd<'s, CLEAR> {
    fn new(sim: &'s Simulator) -> Self {
        Self {
            sim,
            hardware_calls: AtomicU32::new(0),
        }
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl<const CLEAR: bool> FrameAllocator for Fwd<'_, CLEAR> {
    fn alloc_pages(&self, n: u64, a: u64, p: Placement) -> Result<PfnRun, PlatformError> {
        self.sim.alloc_pages(n, a, p)
    }
}

// SAFETY: forwards to the simulator.
unsafe impl<const CLEAR: bool> FrameDeallocator for Fwd<'_, CLEAR> {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        self.sim.leak_pages(run, reason)
    }
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.sim.return_guest_frames(run) }
    }
}

// SAFETY: forwards to the simulator.
unsafe impl<const CLEAR: bool> Cpus for Fwd<'_, CLEAR> {
    fn cpus(&self) -> u32 {
        self.sim.cpus()
    }
    fn package_of(&self, cpu: CpuId) -> PackageId {
        self.sim.package_of(cpu)
    }
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.sim.node_of(pfn)
    }
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        self.sim.on_cpu(cpu, f)
    }
    fn yield_now(&self) {
        self.sim.yield_now()
    }
}

// SAFETY: forwards to the simulator (which has no direct map).
unsafe impl<const CLEAR: bool> DirectMap for Fwd<'_, CLEAR> {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.write_phys(pa, data) }
    }
    fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>> {
        self.sim.direct_map(pa)
    }
}

// SAFETY: forwards to the simulator's cache model.
unsafe impl CacheMaintenance for Fwd<'_, true> {
    fn wbinvd_all(&self) {
        self.sim.wbinvd_all()
    }
    fn clflush_page(&self, pfn: Pfn) {
        self.sim.clflush_page(pfn)
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: forwarded contract.
        unsafe { self.sim.movdir64b_clear(run) }
    }
}

// SAFETY: the flushes forward to the simulator's cache model; the clear is
// the provided one, which without a direct map refuses before any store.
unsafe impl CacheMaintenance for Fwd<'_, false> {
    fn wbinvd_all(&self) {
        self.sim.wbinvd_all()
    }
    fn clflush_page(&self, pfn: Pfn) {
        self.sim.clflush_page(pfn)
    }
}

// SAFETY: forwards to the simulator; counting changes nothing.
unsafe impl<const CLEAR: bool> HardwareInfo for Fwd<'_, CLEAR> {
    fn hardware(&self) -> Hardware {
        self.hardware_calls.fetch_add(1, Ordering::SeqCst);
        self.sim.hardware()
    }
}

/// The module of `sim` brought up with `p` as its platform, as a TD host.
fn host_on<'a, const CLEAR: bool>(
    sim: &'a Simulator,
    p: &'a Fwd<'a, CLEAR>,
) -> TdHost<&'a Simulator, &'a Fwd<'a, CLEAR>>
where
    Fwd<'a, CLEAR>: CacheMaintenance,
{
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let m = TdxModule::init(sim, p)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    TdHost::new(m).unwrap()
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn hardware_facts_are_read_once_at_init() {
    let sim = sim();
    let p = Fwd::<true>::new(&sim);
    let h = host_on(&sim, &p);
    assert_eq!(p.hardware_calls.load(Ordering::SeqCst), 1, "bring-up");
    assert_eq!(h.module().hardware(), sim.hardware());
    let baseline = sim.accounting();

    let run = frames(&sim, 515, 512);
    let td = finalized(&h);
    map_all(&td, run);
    let big = td.unmap::<Size2M>(Gpa::new(0x20_0000), &|| {}).unwrap();
    let small = td.unmap::<Size4K>(Gpa::new(0x1000), &|| {}).unwrap();
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(
        p.hardware_calls.load(Ordering::SeqCst),
        1,
        "after a whole TD"
    );

    let mut back = report.guest_returned.clone();
    back.push(big.into_range().into());
    back.push(small.into_range().into());
    give_frames_back(&sim, &back);
    assert_back_to(&sim, &baseline, "after the TD");
}

#[test]
fn without_a_direct_map_the_erratum_clears_nothing_and_every_page_is_leaked() {
    let mut d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
        .with_cpus(2, 2)
        .with_profile(td_host::profile(Profile::tdx_1_5()));
    d.errata.tdx_pw_mce = true;
    let sim = Simulator::new(d).unwrap();
    let p = Fwd::<false>::new(&sim);
    let h = host_on(&sim, &p);

    let run = frames(&sim, 1, 1);
    let td = finalized(&h);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    td.map(Gpa::new(0x1000), f).map_err(|f| f.error).unwrap();
    // Removed and written back, but not cleared: not the caller's yet.
    let e = td.unmap::<Size4K>(Gpa::new(0x1000), &|| {}).unwrap_err();
    assert_eq!(
        e,
        TdError::Platform(PlatformError::NoDirectMap { pfn: run.first() })
    );

    let report = td.teardown();
    assert!(report.guest_returned.is_empty(), "{report:#?}");
    assert!(
        report.freed.is_empty(),
        "nothing cleared, nothing freed: {report:#?}"
    );
    let guest: Vec<_> = report
        .leaked
        .iter()
        .filter(|l| l.role == PageRole::Guest)
        .collect();
    assert_eq!(guest.len(), 1, "{report:#?}");
    assert_eq!(guest[0].run, run);
    assert_eq!(
        guest[0].error,
        Some(TdError::Platform(PlatformError::NoDirectMap {
            pfn: run.first()
        }))
    );
    // Every page the TD held is in the report, and the simulator agrees.
    assert_eq!(sim.accounting().leaked, report.leaked_frames());
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn the_simulator_flags_a_returned_guest_frame_the_module_owns() {
    let sim = sim();
    let h = host(&sim);
    let td = finalized(&h);
    let tdr = PfnRun::try_new(td.tdr(), 1).unwrap();
    // SAFETY: breaks the promise on purpose, on simulated memory only: the
    // TDR is the module's. The simulator records it and frees nothing.
    unsafe { sim.return_guest_frames(tdr) };
    // Not host memory, and it holds lines of the module's global KeyID.
    let pfn = td.tdr().as_u64();
    let global = h.module().global_keyid();
    assert_eq!(
        sim.violations(),
        [
            Violation::ReturnedGuestFrameNotHost {
                pfn,
                state: PageState::Module,
            },
            Violation::PrivateLinesReachedHost {
                pfn,
                keyid: global,
                how: "returned to the VMM",
            },
        ]
    );
    assert_eq!(sim.take_returned_guest_frames(), [tdr]);
    assert!(td.teardown().is_clean());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn without_a_direct_map_a_released_pamt_pair_is_leaked_not_freed() {
    // Dynamic PAMT (module 1.5.16): a pair leaving the module is cleared
    // with MOVDIR64B before it is freed, erratum or not.
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5_16()),
    )
    .unwrap();
    let p = Fwd::<false>::new(&sim);
    let h = host_on(&sim, &p);
    assert!(h.module().dynamic_pamt());

    // A 2 MiB range of its own, so its pair holds only this page.
    let run = frames(&sim, 512, 512);
    let td = finalized(&h);
    let pairs = h.pamt_pairs();
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    td.map(Gpa::new(0x1000), f).map_err(|f| f.error).unwrap();
    assert_eq!(h.pamt_pairs(), pairs + 1);
    let back = td.unmap::<Size4K>(Gpa::new(0x1000), &|| {}).unwrap();
    assert_eq!(back.pfn(), run.first());
    // The pair left the module, was not cleared, and is leaked: two frames.
    assert_eq!(h.pamt_pairs(), pairs);
    assert_eq!(sim.accounting().leaked, 2);

    let report = td.teardown();
    let pamt: Vec<_> = report
        .leaked
        .iter()
        .filter(|l| l.role == PageRole::Pamt)
        .collect();
    assert!(!pamt.is_empty(), "the TD's own pairs: {report:#?}");
    assert!(
        pamt.iter()
            .all(|l| l.reason.contains("MOVDIR64B") && l.run.count() == 2),
        "{pamt:#?}"
    );
    assert!(
        report.freed.iter().all(|&(_, role)| role != PageRole::Pamt),
        "no pair freed: {report:#?}"
    );
    assert_eq!(sim.accounting().leaked, 2 + report.leaked_frames());
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}
