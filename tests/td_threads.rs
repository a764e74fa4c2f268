//! Trust Domains under concurrency, on the simulator:
//!
//! - the auto traits every public handle promises (compile-time);
//! - every contention path of the library, forced deterministically: an
//!   entry another operation holds ([`TdError::InProgress`]), module BUSY
//!   under each retry policy ([`TdError::Busy`], spins, yields), a TRACK
//!   that stays busy (the removal is kept, then resumed);
//! - batching: N removals cost one TDH.MEM.TRACK and one kick;
//! - `map_1g` when an AUG and a rollback removal both fail: every 2M part
//!   comes back, stays mapped, or is returned by teardown;
//! - a TDH.PHYMEM.CACHE.WB resumed after another caller's CACHE.WB ran on
//!   the package (`TDX_WBCACHE_RESUME_ERROR`) is started again and the
//!   teardown is clean;
//! - a threaded stress test: threads mapping, unmapping, splitting,
//!   merging and removing tables on random, overlapping GPAs of one TD
//!   shared by `Arc`; afterwards every frame is back exactly once, the
//!   simulator's accounting is what it was, and no rule was broken.

// UNSAFETY: the tests hand frames they allocated from the simulator to TDs
// (`GuestFrame::new`, the caller's promise) and free them afterwards.
#![allow(unsafe_code)]

mod td_host;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tdx::{
    Gpa, Leaf, Pfn, Size1G, Size2M, Size4K, TdxLevel, TdxStatus,
    api::{
        CacheMaintenance, CpuId, Cpus, DirectMap, ExtInited, FrameAllocator, FrameDeallocator,
        Hardware, HardwareInfo, InitialRcx, NodeId, PackageId, Placement, Platform, PlatformError,
        TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        retry::{Backoff, RetryPolicy},
        td::{
            Finalized, GuestFrame, Map1gLeft, Occupant, Outcome, Td, TdError, TdHost, TdHostRef,
            TeardownReport, VcpuId, Zap, ZapReport,
        },
    },
    types::{
        Hpa, OperandId, PfnRun,
        abi::{EptPageWalk, EptpControls, TdParams},
    },
};
use tdx_sim::{Accounting, Fault, MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

// ---- the auto traits of every public handle ---------------------------

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}

/// Compile-time: losing `Send` or `Sync` on a handle is an API break.
#[test]
fn handles_are_send_and_sync() {
    type H<'s> = TdHost<&'s Simulator, &'s Simulator>;
    send_sync::<H<'static>>();
    send_sync::<Td<Finalized, &'static H<'static>>>();
    send_sync::<Td<Finalized, Arc<H<'static>>>>();
    send_sync::<Td<tdx::api::td::Initialized, Arc<H<'static>>>>();
    send::<Zap<'static, &'static H<'static>>>();
    send_sync::<GuestFrame<Size4K>>();
    send_sync::<GuestFrame<Size1G>>();
    send_sync::<TeardownReport>();
    send_sync::<ZapReport>();
    send_sync::<VcpuId>();
    send_sync::<TdError>();
    send_sync::<tdx::api::td::HkidPool>();
    send_sync::<TdxModule<ExtInited, &'static Simulator, &'static Simulator>>();
}

// ---- fixtures ---------------------------------------------------------

/// Two packages of two CPUs, 4 GiB of TDX memory.
fn sim() -> Simulator {
    let d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
        .with_cpus(2, 2)
        .with_profile(td_host::profile(Profile::tdx_1_5()));
    Simulator::new(d).unwrap()
}

fn ready<P: Platform + Sync + std::fmt::Debug>(
    sim: &Simulator,
    p: P,
) -> TdxModule<ExtInited, &Simulator, P> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    TdxModule::init(sim, p)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap()
}

fn params() -> TdParams {
    let mut p = TdParams::new();
    p.set_xfam(3);
    p.set_max_vcpus(4);
    p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FourLevel));
    p.set_tsc_frequency(100);
    p.set_config_flags(TdParams::CONFIG_FLAG_NO_RBP_MOD);
    p
}

/// A finalized TD with one vCPU on CPU 0.
fn running<H: TdHostRef>(host: H) -> Td<Finalized, H> {
    let mut td = Td::build(host, &params()).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.finalize().unwrap()
}

fn frames(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere).unwrap()
}

fn frame4k(pfn: Pfn) -> GuestFrame<Size4K> {
    // SAFETY: tests allocate these frames from the simulator and touch them
    // only after the TD gives them back.
    unsafe { GuestFrame::new(pfn) }.unwrap()
}

fn frame2m(pfn: Pfn) -> GuestFrame<Size2M> {
    // SAFETY: as `frame4k`.
    unsafe { GuestFrame::new(pfn) }.unwrap()
}

fn free(sim: &Simulator, runs: impl IntoIterator<Item = PfnRun>) {
    for r in runs {
        // SAFETY: the TD gave these frames back (unmap or teardown report):
        // they are host memory again, flushed.
        unsafe { sim.free_pages(r) };
    }
}

fn calls(sim: &Simulator, leaf: Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

fn assert_clean(sim: &Simulator, baseline: &Accounting, label: &str) {
    assert_eq!(&sim.accounting(), baseline, "{label}: pages lost");
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

fn busy(op: OperandId) -> TdxStatus {
    TdxStatus::OPERAND_BUSY.with_operand(op)
}

// ---- entries another operation holds ----------------------------------

/// While a batch holds a page blocked, every other operation on it (or
/// on the range it is in) is refused with `InProgress`, changes nothing,
/// and hands its frame back; other GPAs are not affected.
#[test]
fn a_held_entry_refuses_other_operations_at_once() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let td = running(&host);
    let big = frames(&sim, 512, 512).first();
    let small = frames(&sim, 1, 1).first();
    let (g2m, g4k) = (Gpa::new(0), Gpa::new(2 * MIB));
    td.map(g2m, frame2m(big)).unwrap();
    td.map(g4k, frame4k(small)).unwrap();
    let kicks = AtomicU64::new(0);
    let kick = || {
        kicks.fetch_add(1, Ordering::Relaxed);
    };

    let mut zap = td.zap();
    zap.block::<Size4K>(g4k).unwrap();
    zap.block::<Size2M>(g2m).unwrap();
    let aug_before = calls(&sim, Leaf::MEM_PAGE_AUG);
    let other = frames(&sim, 1, 1).first();
    let f = td.map(g4k, frame4k(other)).unwrap_err();
    assert_eq!(f.error, TdError::InProgress(g4k));
    assert_eq!(f.returned.pfn(), other, "the frame comes back");
    // A 4K page under the 2M page being removed.
    let f = td.map(Gpa::new(4096), frame4k(other)).unwrap_err();
    assert_eq!(f.error, TdError::InProgress(Gpa::new(4096)));
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), aug_before, "no SEAMCALL");
    assert_eq!(
        td.unmap::<Size4K>(g4k, &kick),
        Err(TdError::InProgress(g4k))
    );
    assert_eq!(
        td.demote::<Size2M>(g2m, &kick),
        Err(TdError::InProgress(g2m))
    );
    let mut second = td.zap();
    assert_eq!(second.block::<Size4K>(g4k), Err(TdError::InProgress(g4k)));
    assert!(second.is_empty());
    drop(second);
    assert_eq!(kicks.load(Ordering::Relaxed), 0, "nothing was kicked yet");
    // Another GPA maps meanwhile.
    td.map(Gpa::new(4 * MIB), frame4k(other)).unwrap();

    let report = zap.commit(&kick);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.frames_returned(), 513);
    assert_eq!(kicks.load(Ordering::Relaxed), 1);
    free(&sim, report.returned().collect::<Vec<_>>());
    let back = td.unmap::<Size4K>(Gpa::new(4 * MIB), &kick).unwrap();
    free(&sim, [back.run()]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    assert!(r.guest_returned.is_empty());
    assert_clean(&sim, &base, "held entry");
}

/// A batch dropped without commit leaves its pages blocked and with the
/// TD; a later removal resumes without a second BLOCK.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_dropped_batch_leaves_pages_blocked_and_a_removal_resumes() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let td = running(&host);
    let f = frames(&sim, 1, 1).first();
    td.map(Gpa::new(0), frame4k(f)).unwrap();
    let mut zap = td.zap();
    zap.block::<Size4K>(Gpa::new(0)).unwrap();
    drop(zap);
    let blocks = calls(&sim, Leaf::MEM_RANGE_BLOCK);
    // Mapping there is refused: the module's entry is blocked.
    let g = frames(&sim, 1, 1).first();
    assert_eq!(
        td.map(Gpa::new(0), frame4k(g)).unwrap_err().error,
        TdError::Occupied {
            gpa: Gpa::new(0),
            by: Occupant::Page {
                at: Gpa::new(0),
                size: TdxLevel::L4K
            }
        }
    );
    let back = td.unmap::<Size4K>(Gpa::new(0), &|| {}).unwrap();
    assert_eq!(back.pfn(), f);
    assert_eq!(
        calls(&sim, Leaf::MEM_RANGE_BLOCK),
        blocks,
        "no second BLOCK"
    );
    free(&sim, [back.run(), PfnRun::try_new(g, 1).unwrap()]);
    assert!(td.teardown().is_clean());
    assert_clean(&sim, &base, "dropped batch");
}

// ---- module BUSY under each policy ------------------------------------

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn busy_is_returned_at_once_with_the_immediate_policy() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    td.set_policy(RetryPolicy::IMMEDIATE);
    let f = frames(&sim, 1, 1).first();
    // The S-EPT tables first, so the injected BUSY hits PAGE.AUG.
    let warm = frames(&sim, 1, 1).first();
    td.map(Gpa::new(0), frame4k(warm)).unwrap();
    sim.inject(Fault::status(Leaf::MEM_PAGE_AUG, 1, busy(OperandId::RCX)));
    let failed = td.map(Gpa::new(4096), frame4k(f)).unwrap_err();
    assert!(failed.error.is_contention(), "{:?}", failed.error);
    let TdError::Busy { error, .. } = failed.error else {
        panic!("{:?}", failed.error)
    };
    assert_eq!(error.status(), busy(OperandId::RCX));
    assert_eq!(failed.returned.pfn(), f);
    // Nothing changed: the same call succeeds now.
    td.map(Gpa::new(4096), failed.returned).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.guest_frames_returned(), 2);
    free(&sim, r.guest_returned.iter().copied());
    assert_clean(&sim, &base, "immediate");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn spins_and_yields_are_bounded_by_the_policy() {
    for (policy, busies, ok, yields) in [
        (RetryPolicy::spin(3), 3, true, 0),
        (RetryPolicy::spin(3), 4, false, 0),
        (
            RetryPolicy {
                busy: Backoff::Yield(2),
                entropy: 0,
            },
            2,
            true,
            2,
        ),
        (
            RetryPolicy {
                busy: Backoff::Yield(2),
                entropy: 0,
            },
            3,
            false,
            2,
        ),
    ] {
        let sim = sim();
        let host = TdHost::new(ready(&sim, &sim)).unwrap();
        let base = sim.accounting();
        let mut td = running(&host);
        td.set_policy(policy);
        let warm = frames(&sim, 1, 1).first();
        td.map(Gpa::new(0), frame4k(warm)).unwrap();
        for n in 1..=busies {
            sim.inject(Fault::status(
                Leaf::MEM_PAGE_AUG,
                n,
                busy(OperandId::SEPT_TREE),
            ));
        }
        let y0 = sim.stats().yields;
        let aug0 = calls(&sim, Leaf::MEM_PAGE_AUG);
        let f = frames(&sim, 1, 1).first();
        let r = td.map(Gpa::new(4096), frame4k(f));
        assert_eq!(r.is_ok(), ok, "{policy:?} with {busies} BUSY: {r:?}");
        let calls_made = calls(&sim, Leaf::MEM_PAGE_AUG) - aug0;
        assert_eq!(
            calls_made,
            if ok { busies + 1 } else { busies },
            "{policy:?}"
        );
        assert_eq!(sim.stats().yields - y0, yields, "{policy:?}: yields");
        if let Err(f) = r {
            free(&sim, [f.returned.run()]);
        }
        let rep = td.teardown();
        assert!(rep.is_clean());
        free(&sim, rep.guest_returned.iter().copied());
        assert_clean(&sim, &base, "policy");
    }
}

/// A TRACK that stays busy: the removal keeps the page (blocked, with the
/// TD) and says so; a second removal resumes at TRACK.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_busy_track_keeps_the_page_and_the_next_removal_resumes() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    td.set_policy(RetryPolicy::IMMEDIATE);
    let f = frames(&sim, 1, 1).first();
    td.map(Gpa::new(0), frame4k(f)).unwrap();
    sim.inject(Fault::status(Leaf::MEM_TRACK, 1, busy(OperandId::TD_EPOCH)));
    let kicks = AtomicU64::new(0);
    let kick = || {
        kicks.fetch_add(1, Ordering::Relaxed);
    };
    let e = td.unmap::<Size4K>(Gpa::new(0), &kick).unwrap_err();
    assert!(matches!(e, TdError::Busy { .. }), "{e:?}");
    assert_eq!(kicks.load(Ordering::Relaxed), 0, "no kick without a TRACK");
    assert_eq!(td.private_pages(), 1, "the page stays with the TD");
    let blocks = calls(&sim, Leaf::MEM_RANGE_BLOCK);
    let back = td.unmap::<Size4K>(Gpa::new(0), &kick).unwrap();
    assert_eq!(back.pfn(), f);
    assert_eq!(
        calls(&sim, Leaf::MEM_RANGE_BLOCK),
        blocks,
        "resumed at TRACK"
    );
    assert_eq!(kicks.load(Ordering::Relaxed), 1);
    free(&sim, [back.run()]);
    assert!(td.teardown().is_clean());
    assert_clean(&sim, &base, "busy track");
}

// ---- batching ---------------------------------------------------------

/// Converting a range private to shared: 512 4K pages and a 2M page
/// removed with one TRACK and one kick.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_range_conversion_costs_one_track_and_one_kick() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let td = running(&host);
    let small = frames(&sim, 512, 1);
    let big = frames(&sim, 512, 512);
    for (i, f) in small.iter().enumerate() {
        td.map(Gpa::new(i as u64 * 4096), frame4k(f)).unwrap();
    }
    td.map(Gpa::new(2 * MIB), frame2m(big.first())).unwrap();
    let (tracks, blocks, removes) = (
        calls(&sim, Leaf::MEM_TRACK),
        calls(&sim, Leaf::MEM_RANGE_BLOCK),
        calls(&sim, Leaf::MEM_PAGE_REMOVE),
    );
    let kicks = AtomicU64::new(0);
    let report = td.unmap_range(Gpa::new(0), 4 * MIB, &|| {
        kicks.fetch_add(1, Ordering::Relaxed);
    });
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.pages.len(), 513);
    assert_eq!(report.frames_returned(), 1024);
    assert_eq!(kicks.load(Ordering::Relaxed), 1);
    assert_eq!(calls(&sim, Leaf::MEM_TRACK) - tracks, 1);
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK) - blocks, 513);
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_REMOVE) - removes, 513);
    assert_eq!(td.private_pages(), 0);
    free(&sim, report.returned().collect::<Vec<_>>());
    // A straddling page stops the range before it; nothing after it is
    // touched, what was blocked before is removed.
    let f = frames(&sim, 1, 1).first();
    let g = frames(&sim, 512, 512);
    td.map(Gpa::new(0), frame4k(f)).unwrap();
    td.map(Gpa::new(2 * MIB), frame2m(g.first())).unwrap();
    let report = td.unmap_range(Gpa::new(0), 3 * MIB, &|| {});
    assert!(
        matches!(report.stopped, Some(TdError::Gpa { .. })),
        "{report:?}"
    );
    assert_eq!(report.frames_returned(), 1);
    free(&sim, report.returned().collect::<Vec<_>>());
    let r = td.teardown();
    assert!(r.is_clean());
    assert_eq!(r.guest_frames_returned(), 512);
    free(&sim, r.guest_returned.iter().copied());
    assert_clean(&sim, &base, "range");
}

// ---- map_1g double failure ---------------------------------------------

/// The 40th AUG fails and the removal of the 7th part fails too: the 7th
/// part stays mapped (the TD's, returned by teardown), every other part
/// comes back, and nothing is lost.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn map_1g_double_failure_accounts_for_every_part() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    td.set_policy(RetryPolicy::IMMEDIATE);
    let run = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: as `frame4k`.
    let frame = unsafe { GuestFrame::<Size1G>::new(run.first()) }.unwrap();
    // Tables first (the first 2M AUG adds them), so counting is by AUG.
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_AUG,
        40,
        TdxStatus::OPERAND_INVALID,
    ));
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_REMOVE,
        7,
        TdxStatus::OPERAND_INVALID,
    ));
    let kicks = AtomicU64::new(0);
    let f = td
        .map_1g(Gpa::new(GIB), frame, &|| {
            kicks.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap_err();
    assert_eq!(
        kicks.load(Ordering::Relaxed),
        1,
        "one kick for the rollback"
    );
    let Map1gLeft::Parts(parts) = f.returned else {
        panic!("{:?}", f.returned)
    };
    let kept: Vec<Gpa> = parts.kept().collect();
    assert_eq!(kept, [Gpa::new(GIB + 6 * 2 * MIB)]);
    let back: Vec<PfnRun> = parts.into_returned().map(|g| g.run()).collect();
    assert_eq!(back.len(), 511);
    assert!(back.iter().all(|r| r.count() == 512));
    assert_eq!(td.private_pages(), 1);
    free(&sim, back);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(
        r.guest_returned,
        [PfnRun::try_new(Pfn::new(run.first().as_u64() + 6 * 512), 512).unwrap()]
    );
    free(&sim, r.guest_returned.iter().copied());
    assert_clean(&sim, &base, "map_1g double failure");
}

// ---- CACHE.WB resumed after another caller's -----------------------------

/// An action another thread takes at a chosen moment.
type Action = Box<dyn FnOnce() + Send>;

/// A platform that forwards to the simulator and, when armed, lets "another
/// thread" act at a chosen point: at its first `yield_now` (`armed`: a
/// whole CACHE.WB on package 0, as another caller of the module would run
/// it between an interrupted CACHE.WB and its resume), at the CLFLUSH of a
/// chosen frame (`at_flush`), or by panicking in `yield_now` (a platform
/// callback that unwinds).
#[derive(Default)]
struct Interloper<'s> {
    sim: Option<&'s Simulator>,
    armed: AtomicBool,
    ran: AtomicBool,
    panic_on_yield: AtomicBool,
    at_flush: std::sync::Mutex<Option<(Pfn, Action)>>,
}

impl std::fmt::Debug for Interloper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interloper").finish_non_exhaustive()
    }
}

impl<'s> Interloper<'s> {
    fn new(sim: &'s Simulator) -> Self {
        Self {
            sim: Some(sim),
            ..Self::default()
        }
    }

    fn s(&self) -> &'s Simulator {
        self.sim.expect("built with a simulator")
    }
}

// SAFETY: forwards every method to the simulator, which keeps the
// contract; `yield_now` only adds a SEAMCALL that moves no memory.
unsafe impl FrameAllocator for Interloper<'_> {
    fn alloc_pages(&self, n: u64, a: u64, p: Placement) -> Result<PfnRun, PlatformError> {
        self.s().alloc_pages(n, a, p)
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl FrameDeallocator for Interloper<'_> {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { self.s().free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        self.s().leak_pages(run, reason)
    }
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.s().return_guest_frames(run) }
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl Cpus for Interloper<'_> {
    fn cpus(&self) -> u32 {
        self.s().cpus()
    }
    fn package_of(&self, cpu: CpuId) -> PackageId {
        self.s().package_of(cpu)
    }
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.s().node_of(pfn)
    }
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        self.s().on_cpu(cpu, f)
    }
    fn yield_now(&self) {
        if self.panic_on_yield.load(Ordering::SeqCst) {
            panic!("the platform's yield unwinds");
        }
        if self.armed.swap(false, Ordering::SeqCst) {
            let mut s = TdxStatus::SUCCESS;
            // CPU 1 is on package 0, like CPU 0 where teardown runs it.
            self.s().on_cpu(CpuId(1), &mut || {
                // SAFETY: CACHE.WB moves no memory.
                s = unsafe { tdx::sys::leaf::tdh_phymem_cache_wb(self.s(), false) };
            });
            assert_eq!(s, TdxStatus::SUCCESS, "the interloper's CACHE.WB");
            self.ran.store(true, Ordering::SeqCst);
        }
        self.s().yield_now()
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl DirectMap for Interloper<'_> {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.s().read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.s().write_phys(pa, data) }
    }
    fn direct_map(&self, pa: Hpa) -> Option<core::ptr::NonNull<u8>> {
        self.s().direct_map(pa)
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl CacheMaintenance for Interloper<'_> {
    fn wbinvd_all(&self) {
        self.s().wbinvd_all()
    }
    fn clflush_page(&self, pfn: Pfn) {
        let mut slot = self.at_flush.lock().unwrap();
        if slot.as_ref().is_some_and(|(at, _)| *at == pfn) {
            let (_, act) = slot.take().expect("checked");
            drop(slot);
            act();
        } else {
            drop(slot);
        }
        self.s().clflush_page(pfn)
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: forwarded contract.
        unsafe { self.s().movdir64b_clear(run) }
    }
}

// SAFETY: forwards to the simulator, which keeps the contract.
unsafe impl HardwareInfo for Interloper<'_> {
    fn hardware(&self) -> Hardware {
        self.s().hardware()
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_cache_wb_another_caller_completed_is_started_again() {
    let sim = sim();
    let p = Interloper::new(&sim);
    let host = TdHost::new(ready(&sim, &p)).unwrap();
    let base = sim.accounting();
    let td = running(&host);
    let f = frames(&sim, 1, 1).first();
    td.map(Gpa::new(0), frame4k(f)).unwrap();
    // The teardown's first CACHE.WB (package 0) is interrupted; before it
    // resumes, the interloper runs a whole CACHE.WB on package 0.
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 1, 1));
    p.armed.store(true, Ordering::SeqCst);
    let wb = calls(&sim, Leaf::PHYMEM_CACHE_WB);
    let r = td.teardown();
    assert!(p.ran.load(Ordering::SeqCst), "the interloper ran");
    assert!(r.is_clean(), "{r:?}");
    // Package 0: interrupted, the interloper's, the resume
    // (TDX_WBCACHE_RESUME_ERROR), started again; package 1: one.
    assert_eq!(calls(&sim, Leaf::PHYMEM_CACHE_WB) - wb, 5);
    free(&sim, r.guest_returned.iter().copied());
    assert_clean(&sim, &base, "cache wb race");
}

// ---- threaded stress ------------------------------------------------------

/// A small deterministic generator (xorshift), seeded per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one thread holds: frames not in any TD.
#[derive(Default)]
struct Pool {
    small: Vec<Pfn>,
    big: Vec<Pfn>,
}

impl Pool {
    fn put(&mut self, run: PfnRun) {
        if run.count() == 512 && run.first().is_aligned(512) {
            self.big.push(run.first());
        } else {
            self.small.extend(run.iter());
        }
    }
}

/// Errors a concurrent operation may meet; anything else (a leaf the module
/// refused) means the library's records and the module's disagree.
fn expected(e: &TdError) -> bool {
    matches!(
        e,
        TdError::InProgress(_)
            | TdError::Busy { .. }
            | TdError::Occupied { .. }
            | TdError::NotMapped(_)
            | TdError::Gpa { .. }
    )
}

/// The kinds of operation a worker does, for the tally.
const KINDS: [&str; 9] = [
    "map 4K",
    "map 2M",
    "unmap 4K",
    "unmap 2M",
    "demote",
    "promote",
    "remove table",
    "unmap range",
    "-",
];

#[derive(Default, Debug)]
struct Tally {
    ops: u64,
    ok: u64,
    contention: u64,
    /// Of `contention`, the module's BUSY (the rest: another thread held
    /// the entry).
    busy: u64,
    refused: u64,
    /// Successes by kind (`KINDS`).
    ok_by: [u64; 9],
}

/// One vCPU-like thread: random operations on 2M regions `0..regions` of
/// the TD. Returns its pool and what happened.
fn worker<H: TdHostRef>(
    td: &Td<Finalized, H>,
    mut pool: Pool,
    seed: u64,
    ops: u64,
    regions: u64,
) -> (Pool, Tally) {
    let mut rng = Rng(seed | 1);
    let mut t = Tally::default();
    let kick = || {};
    for _ in 0..ops {
        let r = rng.below(regions);
        let base = r * 2 * MIB;
        let page = Gpa::new(base + rng.below(512) * 4096);
        let region = Gpa::new(base);
        t.ops += 1;
        let op = rng.below(16);
        let kind = match op {
            0..=2 => 0,
            3..=4 => 1,
            5..=6 => 2,
            7 => 3,
            8..=9 => 4,
            10..=11 => 5,
            12..=13 => 6,
            _ => 7,
        };
        let res: Result<(), TdError> = match kind {
            0 => match pool.small.pop() {
                Some(f) => td.map(page, frame4k(f)).map_err(|e| {
                    pool.small.push(e.returned.pfn());
                    e.error
                }),
                None => Err(TdError::NotMapped(page)),
            },
            1 => match pool.big.pop() {
                Some(f) => td.map(region, frame2m(f)).map_err(|e| {
                    pool.big.push(e.returned.pfn());
                    e.error
                }),
                None => Err(TdError::NotMapped(region)),
            },
            2 => td.unmap::<Size4K>(page, &kick).map(|g| pool.put(g.run())),
            3 => td.unmap::<Size2M>(region, &kick).map(|g| pool.put(g.run())),
            4 => td.demote::<Size2M>(region, &kick),
            5 => td.promote::<Size2M>(region, &kick),
            6 => td.remove_table::<Size2M>(region, &kick),
            _ => {
                // A quarter of a region, or all of it.
                let (start, len) = match rng.below(5) {
                    4 => (region, 2 * MIB),
                    q => (Gpa::new(base + q * 512 * 1024), 512 * 1024),
                };
                let rep = td.unmap_range(start, len, &kick);
                for run in rep.returned() {
                    pool.put(run);
                }
                for p in &rep.pages {
                    if let Outcome::Kept(e) | Outcome::Deferred(e) = p.outcome {
                        assert!(expected(&e), "unexpected {e:?} at {}", p.gpa);
                    }
                }
                match rep.stopped {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
        };
        match res {
            Ok(()) => {
                t.ok += 1;
                t.ok_by[kind] += 1;
            }
            Err(e) if e.is_contention() => {
                // As a vCPU would: back to the guest, which faults again
                // later; let the thread holding the entry finish.
                t.contention += 1;
                t.busy += u64::from(matches!(e, TdError::Busy { .. }));
                if std::env::var("STRESS_DEBUG").is_ok() && matches!(e, TdError::Busy { .. }) {
                    eprintln!("BUSY kind {kind}: {e}");
                }
                std::thread::yield_now();
            }
            Err(e) => {
                assert!(expected(&e), "thread {seed}: unexpected {e:?}");
                t.refused += 1;
            }
        }
    }
    (pool, t)
}

/// `threads` threads share one TD through `Arc<Td<.., Arc<TdHost>>>` and
/// work on overlapping regions, while `lifecycles` other threads each
/// build, map, split and tear down (or drop) four TDs of their own; then
/// the shared TD is torn down. Every 4 KiB frame handed out is back exactly
/// once: in a thread's pool or in the teardown report; every other TD's
/// report is clean.
fn stress(seed: u64, threads: u64, ops: u64, lifecycles: u64) -> [u64; 9] {
    // The simulated machine outlives every thread, as a real one does.
    let sim: &'static Simulator = Box::leak(Box::new(sim()));
    let host = Arc::new(TdHost::new(ready(sim, sim)).unwrap());
    let base = sim.accounting();
    let td = Arc::new(running(Arc::clone(&host)));
    let mut pools = Vec::new();
    let mut handed = BTreeMap::new();
    for _ in 0..threads {
        let mut p = Pool::default();
        for _ in 0..3 {
            let r = frames(sim, 512, 512);
            p.big.push(r.first());
            handed.insert(r.first().as_u64(), r.count());
        }
        let r = frames(sim, 256, 1);
        handed.insert(r.first().as_u64(), r.count());
        p.small.extend(r.iter());
        pools.push(p);
    }
    // The tables above the regions exist before the threads start, as
    // after a guest's boot: otherwise every fault waits (InProgress) for
    // the first thread adding the 512 GiB and 1 GiB tables, and the other
    // threads spend their operations on that.
    let warm = frames(sim, 1, 1).first();
    for region in 0..6 {
        td.map(Gpa::new(region * 2 * MIB), frame4k(warm)).unwrap();
        let back = td
            .unmap::<Size4K>(Gpa::new(region * 2 * MIB), &|| {})
            .unwrap();
        assert_eq!(back.pfn(), warm);
    }
    free(sim, [PfnRun::try_new(warm, 1).unwrap()]);
    let go = Arc::new(Barrier::new(threads as usize + lifecycles as usize));
    // Other threads build, use and tear down TDs of their own meanwhile
    // (every other one by dropping it), each on a CPU it selects.
    let builders: Vec<_> = (0..lifecycles)
        .map(|k| {
            let (host, go) = (Arc::clone(&host), Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                for round in 0..4u64 {
                    let td = running(Arc::clone(&host));
                    let f = frames(sim, 512, 512).first();
                    td.map(Gpa::new(round * 2 * MIB), frame2m(f)).unwrap();
                    td.demote::<Size2M>(Gpa::new(round * 2 * MIB), &|| {})
                        .unwrap();
                    if (k + round) % 2 == 0 {
                        let r = td.teardown();
                        assert!(r.is_clean(), "lifecycle {k}/{round}: {r:?}");
                        assert_eq!(r.guest_frames_returned(), 512);
                    } else {
                        drop(td);
                    }
                    free(sim, [PfnRun::try_new(f, 512).unwrap()]);
                }
            })
        })
        .collect();
    let handles: Vec<_> = pools
        .into_iter()
        .enumerate()
        .map(|(i, pool)| {
            let (td, go) = (Arc::clone(&td), Arc::clone(&go));
            std::thread::spawn(move || {
                go.wait();
                worker(
                    &td,
                    pool,
                    seed.wrapping_mul(31).wrapping_add(i as u64 * 7919),
                    ops,
                    6,
                )
            })
        })
        .collect();
    let mut back: Vec<Pfn> = Vec::new();
    let mut total = Tally::default();
    for h in handles {
        let (pool, t) = h.join().unwrap();
        back.extend(pool.small);
        for b in pool.big {
            back.extend(PfnRun::try_new(b, 512).unwrap().iter());
        }
        total.ops += t.ops;
        total.ok += t.ok;
        total.contention += t.contention;
        total.busy += t.busy;
        total.refused += t.refused;
        for (a, b) in total.ok_by.iter_mut().zip(t.ok_by) {
            *a += b;
        }
    }
    for b in builders {
        b.join().unwrap();
    }
    assert_eq!(
        td.entries_in_flight(),
        0,
        "seed {seed}: a claim was never released: {total:?}"
    );
    // The dropped TDs' reports went to the platform: all clean.
    let dropped = sim.dropped_td_reports();
    assert_eq!(dropped.len() as u64, lifecycles * 2, "seed {seed}");
    for r in &dropped {
        assert!(r.is_clean(), "seed {seed}: a dropped TD: {r:?}");
        assert_eq!(r.guest_frames_returned(), 512);
    }
    eprintln!("seed {seed}: {threads} threads, {total:?}");

    let td = Arc::try_unwrap(td).expect("the threads are done");
    let r = td.teardown();
    assert!(r.is_clean(), "seed {seed}: {r:?}");
    for run in &r.guest_returned {
        back.extend(run.iter());
    }
    back.sort();
    let n = back.len();
    back.dedup();
    assert_eq!(back.len(), n, "seed {seed}: a frame came back twice");
    let want: u64 = handed.values().sum();
    assert_eq!(n as u64, want, "seed {seed}: frames lost");
    for (&first, &count) in &handed {
        let run = PfnRun::try_new(Pfn::new(first), count).unwrap();
        free(sim, [run]);
    }
    drop(host);
    assert_clean(sim, &base, "stress");
    total.ok_by
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn threads_share_one_td_and_every_frame_comes_back() {
    // Every kind of operation succeeded somewhere (over all seeds: how
    // often a merge finds 512 contiguous pages depends on the timing).
    let mut ok_by = [0u64; 9];
    for seed in [1, 2, 3, 0xdead_beef] {
        for (a, b) in ok_by.iter_mut().zip(stress(seed, 4, 4000, 2)) {
            *a += b;
        }
    }
    for (kind, n) in KINDS.iter().zip(ok_by).take(8) {
        assert!(n > 0, "no {kind} succeeded in any seed: {ok_by:?}");
    }
}

// ---- module locks held by "another logical processor" ------------------

/// A vCPU's TDG.MEM.PAGE.ACCEPT holds the S-EPT entry (the guest side of
/// the entry lock): PAGE.AUG on it answers BUSY|RCX; the policy decides
/// how often the library asks again, then the frame comes back with a
/// typed `Busy`, and nothing changed.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_entry_the_guest_holds_makes_map_busy_then_it_maps() {
    use tdx_sim::{LockMode, LockSide, ModuleLock};
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    let warm = frames(&sim, 1, 1).first();
    td.map(Gpa::new(0), frame4k(warm)).unwrap();
    let gpa = Gpa::new(4096);
    let held = sim
        .hold_as(
            ModuleLock::SeptEntry {
                tdr: td.tdr(),
                gpa,
                level: TdxLevel::L4K,
            },
            LockMode::Exclusive,
            LockSide::Guest,
        )
        .unwrap();
    td.set_policy(RetryPolicy::spin(5));
    let aug = calls(&sim, Leaf::MEM_PAGE_AUG);
    let f = frames(&sim, 1, 1).first();
    let failed = td.map(gpa, frame4k(f)).unwrap_err();
    let TdError::Busy { error, .. } = failed.error else {
        panic!("{:?}", failed.error)
    };
    assert_eq!(error.status().code(), TdxStatus::OPERAND_BUSY);
    assert_eq!(error.operand(), Some(OperandId::RCX));
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG) - aug, 6, "1 + 5 retries");
    assert_eq!(td.private_pages(), 1, "nothing mapped");
    drop(held);
    td.map(gpa, failed.returned).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    free(&sim, r.guest_returned.iter().copied());
    assert_clean(&sim, &base, "guest-held entry");
}

/// A removal whose BLOCK finds the S-EPT tree held (here by a reader on
/// another logical processor) keeps retrying; meanwhile new mappings on
/// the TD step aside with `InProgress` instead of adding readers, and once
/// the tree is free the removal completes.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn mappings_step_aside_while_a_removal_waits_for_the_tree() {
    use tdx_sim::{LockMode, ModuleLock};
    let sim: &'static Simulator = Box::leak(Box::new(sim()));
    let host = Arc::new(TdHost::new(ready(sim, sim)).unwrap());
    let base = sim.accounting();
    let mut td = running(Arc::clone(&host));
    td.set_policy(RetryPolicy {
        busy: Backoff::Yield(u32::MAX),
        entropy: 0,
    });
    let td = Arc::new(td);
    let f = frames(sim, 2, 1);
    td.map(Gpa::new(0), frame4k(f.first())).unwrap();
    let held = sim
        .hold(ModuleLock::SeptTree(td.tdr()), LockMode::Shared)
        .unwrap();
    let blocks = calls(sim, Leaf::MEM_RANGE_BLOCK);
    let remover = {
        let td = Arc::clone(&td);
        std::thread::spawn(move || td.unmap::<Size4K>(Gpa::new(0), &|| {}))
    };
    // The removal has met the held tree at least once.
    while calls(sim, Leaf::MEM_RANGE_BLOCK) < blocks + 2 {
        std::thread::yield_now();
    }
    let aug = calls(sim, Leaf::MEM_PAGE_AUG);
    let other = Pfn::new(f.first().as_u64() + 1);
    let failed = td.map(Gpa::new(4096), frame4k(other)).unwrap_err();
    assert_eq!(failed.error, TdError::InProgress(Gpa::new(4096)));
    assert_eq!(calls(sim, Leaf::MEM_PAGE_AUG), aug, "no AUG issued");
    drop(held);
    let back = remover.join().unwrap().unwrap();
    assert_eq!(back.pfn(), f.first());
    // The tree is free again: mappings go through.
    td.map(Gpa::new(4096), failed.returned).unwrap();
    let td = Arc::into_inner(td).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    free(sim, [f]);
    drop(host);
    assert_clean(sim, &base, "step aside");
}

/// The fault path and the rest follow separate policies: with mapping set
/// to return BUSY at once, a removal still retries its BUSY BLOCK.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn mapping_and_removal_follow_their_own_policies() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    td.set_map_policy(RetryPolicy::IMMEDIATE);
    assert_eq!(td.policy(), RetryPolicy::DEFAULT);
    let f = frames(&sim, 2, 1);
    td.map(Gpa::new(0), frame4k(f.first())).unwrap();
    sim.inject(Fault::status(Leaf::MEM_PAGE_AUG, 1, busy(OperandId::RCX)));
    sim.inject(Fault::status(
        Leaf::MEM_RANGE_BLOCK,
        1,
        busy(OperandId::SEPT_TREE),
    ));
    let other = Pfn::new(f.first().as_u64() + 1);
    let failed = td.map(Gpa::new(4096), frame4k(other)).unwrap_err();
    assert!(
        matches!(failed.error, TdError::Busy { .. }),
        "{:?}",
        failed.error
    );
    let back = td.unmap::<Size4K>(Gpa::new(0), &|| {}).unwrap();
    assert_eq!(back.pfn(), f.first());
    free(&sim, [f]);
    assert!(td.teardown().is_clean());
    assert_clean(&sim, &base, "two policies");
}

/// A failed PROMOTE whose UNBLOCK fails too leaves the table's entry
/// blocked. That is not contention (nothing is in flight): operations
/// under it say so, and promote (or remove_table) of that table resumes
/// after the BLOCK.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_table_left_blocked_is_reported_and_resumed() {
    let sim = sim();
    let host = TdHost::new(ready(&sim, &sim)).unwrap();
    let base = sim.accounting();
    let mut td = running(&host);
    td.set_policy(RetryPolicy::IMMEDIATE);
    let big = frames(&sim, 512, 512);
    let g = Gpa::new(0);
    td.map(g, frame2m(big.first())).unwrap();
    td.demote::<Size2M>(g, &|| {}).unwrap();
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_PROMOTE,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    sim.inject(Fault::status(
        Leaf::MEM_RANGE_UNBLOCK,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    assert!(td.promote::<Size2M>(g, &|| {}).is_err());
    assert_eq!(td.entries_in_flight(), 0);
    let r = td.unmap_range(g, 2 * MIB, &|| {});
    let stopped = r.stopped.expect("the range cannot be removed now");
    assert!(!stopped.is_contention(), "{stopped:?}");
    assert!(matches!(stopped, TdError::Gpa { .. }), "{stopped:?}");
    let e = td.unmap::<Size4K>(g, &|| {}).unwrap_err();
    assert!(matches!(e, TdError::Gpa { .. }), "{e:?}");
    let blocks = calls(&sim, Leaf::MEM_RANGE_BLOCK);
    td.promote::<Size2M>(g, &|| {}).unwrap();
    assert_eq!(
        calls(&sim, Leaf::MEM_RANGE_BLOCK),
        blocks,
        "resumed after the BLOCK"
    );
    let back = td.unmap::<Size2M>(g, &|| {}).unwrap();
    assert_eq!(back.run(), big);
    free(&sim, [big]);
    assert!(td.teardown().is_clean());
    assert_clean(&sim, &base, "blocked table");
}

/// While `map_1g` maps its parts, the 1 GiB entry is claimed: another
/// thread's removal or mapping of a part gets `InProgress` (before, it could
/// take a part away and the rollback then removed that thread's frame).
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn map_1g_holds_its_range_against_other_threads() {
    let sim: &'static Simulator = Box::leak(Box::new(sim()));
    let p: &'static Interloper<'static> = Box::leak(Box::new(Interloper::new(sim)));
    let host = Arc::new(TdHost::new(ready(sim, p)).unwrap());
    let base = sim.accounting();
    let td = Arc::new(running(Arc::clone(&host)));
    let run = frames(sim, 512 * 512, 512 * 512);
    let theirs = frames(sim, 512, 512);
    let g = Gpa::new(GIB);
    // At map_1g's first CLFLUSH of part 1, "another thread" goes for part 0.
    let part1 = Pfn::new(run.first().as_u64() + 512);
    let (other, seen) = (Arc::clone(&td), Arc::new(std::sync::Mutex::new(None)));
    let record = Arc::clone(&seen);
    *p.at_flush.lock().unwrap() = Some((
        part1,
        Box::new(move || {
            let unmap = other.unmap::<Size2M>(g, &|| {}).map(|f| f.pfn());
            let map = other.map(g, frame2m(theirs.first())).map_err(|f| f.error);
            *record.lock().unwrap() = Some((unmap, map));
        }),
    ));
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_AUG,
        3,
        TdxStatus::OPERAND_INVALID,
    ));
    // SAFETY: as `frame4k`.
    let frame = unsafe { GuestFrame::<Size1G>::new(run.first()) }.unwrap();
    let f = td.map_1g(g, frame, &|| {}).unwrap_err();
    let (unmap, map) = seen.lock().unwrap().take().expect("the other thread ran");
    assert_eq!(unmap, Err(TdError::InProgress(g)));
    assert_eq!(map, Err(TdError::InProgress(g)));
    let Map1gLeft::Whole(back) = f.returned else {
        panic!("{:?}", f.returned)
    };
    assert_eq!(back.run(), run);
    // The empty table the failure left is reused by the next map_1g.
    td.map_1g(g, back, &|| {}).unwrap();
    let td = Arc::into_inner(td).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.guest_returned, [run]);
    free(sim, [run, theirs]);
    drop(host);
    assert_clean(sim, &base, "map_1g claim");
}

/// A platform callback that panics while a removal waits for the S-EPT
/// tree (here: `yield_now` between BLOCK retries) leaves no trace: later
/// mappings on other GPAs do not step aside, and the page stays the TD's.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_panicking_callback_leaves_no_removal_waiting() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let sim = sim();
    let p = Interloper::new(&sim);
    let host = TdHost::new(ready(&sim, &p)).unwrap();
    let base = sim.accounting();
    let td = running(&host);
    let f = frames(&sim, 2, 1);
    td.map(Gpa::new(0), frame4k(f.first())).unwrap();
    sim.inject(Fault::status(
        Leaf::MEM_RANGE_BLOCK,
        1,
        busy(OperandId::SEPT_TREE),
    ));
    p.panic_on_yield.store(true, Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(|| td.unmap::<Size4K>(Gpa::new(0), &|| {})));
    p.panic_on_yield.store(false, Ordering::SeqCst);
    assert!(r.is_err(), "the callback's panic goes through");
    let other = Pfn::new(f.first().as_u64() + 1);
    td.map(Gpa::new(GIB), frame4k(other)).unwrap();
    assert_eq!(td.entries_in_flight(), 0);
    let back = td.unmap::<Size4K>(Gpa::new(0), &|| {}).unwrap();
    assert_eq!(back.pfn(), f.first());
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.guest_frames_returned(), 1);
    free(&sim, [f]);
    assert_clean(&sim, &base, "panicking callback");
}
