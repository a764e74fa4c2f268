//! Heap allocation failure on every path of tdx-api that runs after
//! bring-up: building a TD, creating a vCPU, initial pages, finalizing,
//! mapping (4K, 2M, 1G), unmapping (one page, a range), demote, promote, a
//! run-loop step, teardown and dropping a TD.
//!
//! The global allocator of this test binary fails the `n`th heap
//! allocation of the armed thread. The simulator allocates too, inside
//! SEAMCALLs and platform calls, and must not be made to fail (it would
//! abort): the TD host runs on [`Guarded`], a backend and platform that
//! forward every call to the simulator with failure injection suspended,
//! so only the library's own allocations count and fail. (A closure the
//! library gives the platform, `on_cpu`'s, counts again.)
//!
//! Each operation runs with allocation `n` failing for n = 1, 2, 3, ...
//! until a run makes no failing allocation. At every `n` the call returns
//! [`TdError::Alloc`] with what it was given, or (teardown, drop) completes
//! with exact `unlisted_` counts; the simulator's invariants hold and, at
//! the end, every page is back. An infallible allocation added to one of
//! these paths aborts this test binary (the allocator error handler); the
//! line `alloc_failure: <operation>: allocation <n> fails` printed to
//! stderr before each attempt names the operation and `n`.

// UNSAFETY: the global allocator is an `unsafe impl GlobalAlloc`; the
// wrapper implements the unsafe `Seamcall` and `Platform` traits by
// forwarding; the tests hand frames they allocated to TDs and free what
// comes back.
#![allow(unsafe_code)]

mod td_host;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::HashSet,
    io::Write,
};

use td_host::assert_back_to;
use tdx::{
    Gpa, Pfn, Size1G, Size2M, Size4K, TdxLevel, TdxStatus,
    api::{
        CacheMaintenance, CpuId, Cpus, DirectMap, ExtInited, FrameAllocator, FrameDeallocator,
        Hardware, HardwareInfo, InitialRcx, NodeId, PackageId, Placement, PlatformError, TdxModule,
        X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Map1gLeft, TdConfig, TdError, TdHost, TeardownReport},
    },
    sys::{RegShape, Seamcall, SeamcallArgs},
    types::{
        Hpa, PfnRun,
        exit::{TdExit, VmcallRegs, VmcallRequest, subfunction},
    },
};
use tdx_sim::{Fault, Guest, MachineDesc, Profile, Simulator};

// ---------------------------------------------------------------------
// The failing allocator.

thread_local! {
    /// The allocation (1-based, counted from arming) that fails; 0: none.
    static FAIL_AT: Cell<u64> = const { Cell::new(0) };
    /// Allocations counted since arming.
    static SEEN: Cell<u64> = const { Cell::new(0) };
    /// Whether the `FAIL_AT`th allocation happened (and failed).
    static HIT: Cell<bool> = const { Cell::new(false) };
    /// Above 0 while the simulator runs: its allocations neither count nor
    /// fail.
    static SUSPENDED: Cell<u32> = const { Cell::new(0) };
}

/// Whether the allocation being made now fails. Never allocates (the
/// thread-locals are const-initialized, without destructors).
fn fails_now() -> bool {
    FAIL_AT
        .try_with(|at| {
            let at = at.get();
            if at == 0 || SUSPENDED.with(Cell::get) > 0 {
                return false;
            }
            let n = SEEN.with(|s| {
                s.set(s.get() + 1);
                s.get()
            });
            if n == at {
                HIT.with(|h| h.set(true));
            }
            n == at
        })
        .unwrap_or(false)
}

struct Failing;

#[global_allocator]
static ALLOCATOR: Failing = Failing;

// SAFETY: every call is `System`'s with the caller's arguments, or a null
// pointer, which `GlobalAlloc` allows as the answer to any allocation.
unsafe impl GlobalAlloc for Failing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if fails_now() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if fails_now() {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if fails_now() {
            // The old block stays valid, as `realloc` requires on failure.
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, forwarded (every block came from
        // `System`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Disarms when dropped, even by a panic.
struct Armed;

impl Drop for Armed {
    fn drop(&mut self) {
        FAIL_AT.with(|a| a.set(0));
    }
}

/// Runs `f` with this thread's `n`th heap allocation (outside the
/// simulator) failing; its result, and whether that allocation happened.
fn with_failure<R>(n: u64, f: impl FnOnce() -> R) -> (R, bool) {
    SEEN.with(|s| s.set(0));
    HIT.with(|h| h.set(false));
    FAIL_AT.with(|a| a.set(n));
    let armed = Armed;
    let r = f();
    drop(armed);
    (r, HIT.with(Cell::get))
}

/// Suspends failure injection while alive (the simulator is running).
struct Suspend;

impl Suspend {
    fn new() -> Self {
        SUSPENDED.with(|s| s.set(s.get() + 1));
        Self
    }
}

impl Drop for Suspend {
    fn drop(&mut self) {
        SUSPENDED.with(|s| s.set(s.get() - 1));
    }
}

fn sim_side<R>(f: impl FnOnce() -> R) -> R {
    let _s = Suspend::new();
    f()
}

/// Runs a closure of the library's that the simulator calls back, with
/// failure injection as it was before the simulator was entered.
fn library_side(f: &mut (dyn FnMut() + Send)) {
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            SUSPENDED.with(|s| s.set(self.0));
        }
    }
    let _r = Restore(SUSPENDED.with(|s| s.replace(0)));
    f();
}

/// Prints, unbuffered and past the test harness's capture, the attempt
/// about to run: an abort leaves this as the last line.
fn attempt(op: &str, n: u64) {
    let _ = writeln!(
        std::io::stderr(),
        "alloc_failure: {op}: allocation {n} fails"
    );
}

/// Runs `step(n)` for n = 1, 2, ... until it returns true (a run that made
/// no failing allocation); the number of allocations that failed.
fn sweep(op: &str, mut step: impl FnMut(u64) -> bool) -> u64 {
    const MAX: u64 = 400;
    for n in 1..=MAX {
        attempt(op, n);
        if step(n) {
            return n - 1;
        }
    }
    panic!("{op}: allocation {MAX} still fails");
}

fn assert_alloc(e: &TdError, op: &str, n: u64) {
    assert!(
        matches!(e, TdError::Alloc { .. }),
        "{op}, allocation {n}: {e:?}"
    );
}

// ---------------------------------------------------------------------
// The simulator with failure injection suspended.

/// The simulator as backend and platform, each call made with failure
/// injection suspended.
#[derive(Debug, Clone, Copy)]
struct Guarded<'s>(&'s Simulator);

// SAFETY: forwards each call unchanged to the simulator, which keeps the
// contract.
unsafe impl Seamcall for Guarded<'_> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // SAFETY: the caller keeps the contract for this call; forwarded
        // with the same arguments.
        sim_side(|| unsafe { self.0.seamcall(rax, args, shape) })
    }
}

// SAFETY: here and in the impls below, each method forwards to the
// simulator's, which keeps the trait's contract; the wrapper changes only
// this test's failure injection state around them.
unsafe impl FrameAllocator for Guarded<'_> {
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        sim_side(|| self.0.alloc_pages(count, align, placement))
    }
}

// SAFETY: as above.
unsafe impl FrameDeallocator for Guarded<'_> {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: the caller's promise, forwarded.
        sim_side(|| unsafe { self.0.free_pages(run) })
    }

    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        sim_side(|| self.0.leak_pages(run, reason))
    }

    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, forwarded.
        sim_side(|| unsafe { self.0.return_guest_frames(run) })
    }

    fn dropped_td(&self, report: &TeardownReport) {
        sim_side(|| self.0.dropped_td(report))
    }
}

// SAFETY: as above.
unsafe impl DirectMap for Guarded<'_> {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: the caller's promise, forwarded.
        sim_side(|| unsafe { self.0.read_phys(pa, buf) })
    }

    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: the caller's promise, forwarded.
        sim_side(|| unsafe { self.0.write_phys(pa, data) })
    }

    fn direct_map(&self, pa: Hpa) -> Option<core::ptr::NonNull<u8>> {
        sim_side(|| self.0.direct_map(pa))
    }
}

// SAFETY: as above.
unsafe impl Cpus for Guarded<'_> {
    fn cpus(&self) -> u32 {
        sim_side(|| self.0.cpus())
    }

    fn package_of(&self, cpu: CpuId) -> PackageId {
        sim_side(|| self.0.package_of(cpu))
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        sim_side(|| self.0.node_of(pfn))
    }

    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        sim_side(|| self.0.on_cpu(cpu, &mut || library_side(f)))
    }

    fn enter_guest(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        sim_side(|| self.0.enter_guest(cpu, &mut || library_side(f)))
    }

    fn yield_now(&self) {
        sim_side(|| self.0.yield_now())
    }
}

// SAFETY: as above.
unsafe impl CacheMaintenance for Guarded<'_> {
    fn wbinvd_all(&self) {
        sim_side(|| self.0.wbinvd_all())
    }

    fn clflush_page(&self, pfn: Pfn) {
        sim_side(|| self.0.clflush_page(pfn))
    }

    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: the caller's promise, forwarded.
        sim_side(|| unsafe { self.0.movdir64b_clear(run) })
    }
}

// SAFETY: as above.
unsafe impl HardwareInfo for Guarded<'_> {
    fn hardware(&self) -> Hardware {
        sim_side(|| self.0.hardware())
    }
}

type Host<'s> = TdHost<Guarded<'s>, Guarded<'s>>;
type Ftd<'h, 's> = tdx::api::td::Td<Finalized, &'h Host<'s>>;

const GIB: u64 = 1 << 30;

/// Two packages of two CPUs, 4 GiB of TDX memory; module 1.5.16 with
/// Dynamic PAMT, or 1.5.01.
fn sim(dynamic_pamt: bool) -> Simulator {
    if !dynamic_pamt {
        return td_host::sim();
    }
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5_16()),
    )
    .unwrap()
}

/// The module of `sim` brought up (without failures; with Dynamic PAMT
/// if it has it), as a TD host on [`Guarded`].
fn host(sim: &Simulator) -> Host<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let g = Guarded(sim);
    let mut m = TdxModule::init(g, g).unwrap();
    m.set_dynamic_pamt(true);
    let m: TdxModule<ExtInited, _, _> = m.configure(&input).unwrap().init_extensions().unwrap();
    TdHost::new(m).unwrap()
}

fn frames(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere).unwrap()
}

fn free(sim: &Simulator, run: PfnRun) {
    // SAFETY: the TD gave these frames back (or never took them): host
    // memory again.
    unsafe { sim.free_pages(run) };
}

fn frame4k(sim: &Simulator) -> GuestFrame<Size4K> {
    // SAFETY: allocated just now for the TD, left alone while it has them.
    unsafe { GuestFrame::new(frames(sim, 1, 1).first()) }.unwrap()
}

fn frame2m(sim: &Simulator) -> GuestFrame<Size2M> {
    // SAFETY: as above.
    unsafe { GuestFrame::new(frames(sim, 512, 512).first()) }.unwrap()
}

/// No rule broken, the module's and the host's views agree.
fn assert_sound(sim: &Simulator, label: &str) {
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

fn params() -> tdx::types::abi::TdParams {
    let mut p = TdConfig::builder().max_vcpus(1).build().to_params();
    p.set_config_flags(tdx::types::abi::TdParams::CONFIG_FLAG_NO_RBP_MOD);
    p
}

// ---------------------------------------------------------------------
// The tests.

#[test]
fn the_harness_fails_exactly_the_armed_allocation() {
    let (r, hit) = with_failure(1, || Vec::<u8>::new().try_reserve(10).is_err());
    assert!(r && hit, "the first allocation fails");
    let (r, hit) = with_failure(2, || {
        let mut v = Vec::<u8>::new();
        let first = v.try_reserve(10).is_ok();
        let second = v.try_reserve(1000).is_err();
        let third = Vec::<u8>::new().try_reserve(10).is_ok();
        (first, second, third)
    });
    assert_eq!(r, (true, true, true), "only the second fails");
    assert!(hit);
    let (r, hit) = with_failure(1, || sim_side(|| Vec::<u8>::new().try_reserve(10).is_ok()));
    assert!(r && !hit, "the simulator's side neither counts nor fails");
    let (r, hit) = with_failure(3, || Vec::<u8>::new().try_reserve(10).is_ok());
    assert!(r && !hit, "an allocation that never comes does not hit");
}

/// Build, vCPU, initial page, finalize: each fails cleanly at every
/// allocation it makes, then succeeds. Then the runtime operations on the
/// finalized TD, a run-loop step, and the teardown.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn every_operation_fails_cleanly_at_every_allocation() {
    every_operation(false);
}

/// The same with Dynamic PAMT: pairs added and removed on the way.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn every_operation_fails_cleanly_at_every_allocation_with_dynamic_pamt() {
    every_operation(true);
}

fn every_operation(dynamic_pamt: bool) {
    let sim = sim(dynamic_pamt);
    let host = host(&sim);
    assert_eq!(host.dynamic_pamt(), dynamic_pamt);
    let base = sim.accounting();
    let params = params();
    let mut counts = Vec::new();

    // build_td: a failure drops what was built (its teardown runs with the
    // injection still armed: its allocations come later and succeed).
    let mut built = None;
    let n = sweep("build_td", |n| {
        let (r, hit) = with_failure(n, || host.build_td(&params));
        match r {
            Err(e) => {
                assert!(
                    hit,
                    "build_td, allocation {n}: {e:?} without a failed allocation"
                );
                assert_alloc(&e, "build_td", n);
                assert_back_to(&sim, &base, &format!("build_td, allocation {n}"));
                false
            }
            Ok(td) => {
                assert!(!hit, "build_td, allocation {n}: the failure was swallowed");
                built = Some(td);
                true
            }
        }
    });
    counts.push(("build_td", n));
    let mut td = built.unwrap();

    // create_vcpu: refused before any page moves.
    let mut vcpu = None;
    let n = sweep("create_vcpu", |n| {
        let before = sim.accounting();
        let (r, hit) = with_failure(n, || td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0)));
        match r {
            Err(e) => {
                assert!(hit, "create_vcpu, allocation {n}: {e:?}");
                assert_alloc(&e, "create_vcpu", n);
                assert_eq!(
                    sim.accounting(),
                    before,
                    "create_vcpu, allocation {n}: pages moved"
                );
                assert_eq!(td.vcpus().count(), 0);
                assert_sound(&sim, "create_vcpu");
                false
            }
            Ok(id) => {
                assert!(
                    !hit,
                    "create_vcpu, allocation {n}: the failure was swallowed"
                );
                vcpu = Some(id);
                true
            }
        }
    });
    counts.push(("create_vcpu", n));
    let vcpu = vcpu.unwrap();

    // add_page: the frame comes back.
    let mut initial = Some(frame4k(&sim));
    let initial_pfn = initial.as_ref().unwrap().pfn();
    let contents = [0x5a_u8; 4096];
    let n = sweep("add_page", |n| {
        let f = initial.take().unwrap();
        let (r, hit) = with_failure(n, || td.add_page(Gpa::new(0x1000), f, &contents, true));
        match r {
            Err(fail) => {
                assert!(hit, "add_page, allocation {n}: {:?}", fail.error);
                assert_alloc(&fail.error, "add_page", n);
                initial = Some(fail.returned.expect("the frame comes back"));
                assert_sound(&sim, "add_page");
                false
            }
            Ok(()) => {
                assert!(!hit, "add_page, allocation {n}: the failure was swallowed");
                true
            }
        }
    });
    counts.push(("add_page", n));

    // finalize: the TD comes back.
    let mut pending = Some(td);
    let mut finalized = None;
    let n = sweep("finalize", |n| {
        let t = pending.take().unwrap();
        let (r, hit) = with_failure(n, || t.finalize());
        match r {
            Err(fail) => {
                assert!(hit, "finalize, allocation {n}: {:?}", fail.error);
                assert_alloc(&fail.error, "finalize", n);
                pending = Some(fail.returned);
                false
            }
            Ok(t) => {
                assert!(!hit, "finalize, allocation {n}: the failure was swallowed");
                finalized = Some(t);
                true
            }
        }
    });
    counts.push(("finalize", n));
    let td = finalized.unwrap();

    let mut given: Vec<PfnRun> = vec![PfnRun::try_new(initial_pfn, 1).unwrap()];
    counts.extend(runtime(&sim, &td, &mut given));
    counts.push(("run-loop step", run_loop_step(&sim, &td, vcpu.tdvpr)));

    let report = td.teardown();
    assert!(report.is_clean() && report.is_complete(), "{report:#?}");
    let back: HashSet<PfnRun> = report.guest_returned.iter().copied().collect();
    let want: HashSet<PfnRun> = given.iter().copied().collect();
    assert_eq!(back, want, "every guest frame comes back");
    for r in &report.guest_returned {
        free(&sim, *r);
    }
    assert_back_to(&sim, &base, "after the operations");
    let _ = writeln!(
        std::io::stderr(),
        "alloc_failure: heap allocations per operation: {counts:?}"
    );
}

/// The runtime operations of a finalized TD, each swept; the runs the TD
/// holds at the end are added to `given`.
#[allow(
    clippy::result_large_err,
    reason = "map_1g's failure is returned as the library makes it (boxing it would allocate while armed)"
)]
fn runtime(sim: &Simulator, td: &Ftd<'_, '_>, given: &mut Vec<PfnRun>) -> Vec<(&'static str, u64)> {
    let kick = || {};
    let mut counts = Vec::new();

    // map 4K: the frame comes back on failure.
    let gpa4k = Gpa::new(0x20_0000);
    let mut f = Some(frame4k(sim));
    let run4k = PfnRun::try_new(f.as_ref().unwrap().pfn(), 1).unwrap();
    counts.push((
        "map 4K",
        sweep("map 4K", |n| {
            let fr = f.take().unwrap();
            let (r, hit) = with_failure(n, || td.map(gpa4k, fr));
            assert_sound(sim, "map 4K");
            match r {
                Err(fail) => {
                    assert!(hit, "map 4K, allocation {n}: {:?}", fail.error);
                    assert_alloc(&fail.error, "map 4K", n);
                    assert!(td.mapping(gpa4k).is_none());
                    f = Some(fail.returned);
                    false
                }
                Ok(()) => {
                    assert!(!hit, "allocation {n}: the failure was swallowed");
                    true
                }
            }
        }),
    ));

    // map 2M.
    let gpa2m = Gpa::new(0x40_0000);
    let mut f = Some(frame2m(sim));
    let run2m = PfnRun::try_new(f.as_ref().unwrap().pfn(), 512).unwrap();
    counts.push((
        "map 2M",
        sweep("map 2M", |n| {
            let fr = f.take().unwrap();
            let (r, hit) = with_failure(n, || td.map(gpa2m, fr));
            assert_sound(sim, "map 2M");
            match r {
                Err(fail) => {
                    assert!(hit, "map 2M, allocation {n}: {:?}", fail.error);
                    assert_alloc(&fail.error, "map 2M", n);
                    f = Some(fail.returned);
                    false
                }
                Ok(()) => {
                    assert!(!hit, "allocation {n}: the failure was swallowed");
                    true
                }
            }
        }),
    ));
    given.push(run2m);

    // map 1G: the whole frame comes back.
    let gpa1g = Gpa::new(GIB);
    let run1g = frames(sim, GIB >> 12, GIB >> 12);
    // SAFETY: allocated just now for the TD.
    let mut f = Some(unsafe { GuestFrame::<Size1G>::new(run1g.first()) }.unwrap());
    counts.push((
        "map 1G",
        sweep("map 1G", |n| {
            let fr = f.take().unwrap();
            let (r, hit) = with_failure(n, || td.map_1g(gpa1g, fr, &kick));
            assert_sound(sim, "map 1G");
            match r {
                Err(fail) => {
                    assert!(hit, "map 1G, allocation {n}: {:?}", fail.error);
                    assert_alloc(&fail.error, "map 1G", n);
                    let Map1gLeft::Whole(back) = fail.returned else {
                        panic!("map 1G, allocation {n}: {:?}", fail.returned)
                    };
                    f = Some(back);
                    false
                }
                Ok(()) => {
                    assert!(!hit, "allocation {n}: the failure was swallowed");
                    true
                }
            }
        }),
    ));
    assert_eq!(td.mapping(gpa1g).map(|m| m.size), Some(TdxLevel::L1G));
    given.push(run1g);

    // unmap 4K: the page stays mapped on failure.
    counts.push((
        "unmap 4K",
        sweep("unmap 4K", |n| {
            let (r, hit) = with_failure(n, || td.unmap::<Size4K>(gpa4k, &kick));
            assert_sound(sim, "unmap 4K");
            match r {
                Err(e) => {
                    assert!(hit, "unmap 4K, allocation {n}: {e:?}");
                    assert_alloc(&e, "unmap 4K", n);
                    assert!(td.mapping(gpa4k).is_some());
                    false
                }
                Ok(back) => {
                    assert!(!hit, "unmap 4K, allocation {n}: the failure was swallowed");
                    assert_eq!(back.pfn(), run4k.first());
                    free(sim, run4k);
                    true
                }
            }
        }),
    ));

    // unmap_range: eight 4K pages; whatever the batch could not take stays
    // mapped and is removed again without failures.
    let base = 0x60_0000u64;
    counts.push((
        "unmap_range",
        sweep("unmap_range", |n| {
            let mut runs = Vec::new();
            for i in 0..8u64 {
                let fr = frame4k(sim);
                runs.push(PfnRun::try_new(fr.pfn(), 1).unwrap());
                td.map(Gpa::new(base + i * 4096), fr).unwrap();
            }
            let (r, hit) = with_failure(n, || td.unmap_range(Gpa::new(base), 8 * 4096, &kick));
            assert_sound(sim, "unmap_range");
            if let Some(e) = &r.stopped {
                assert!(hit, "unmap_range, allocation {n}: {e:?}");
                assert_alloc(e, "unmap_range", n);
            }
            assert!(
                r.pages.iter().all(|p| r.returned().any(|b| b == p.run)),
                "unmap_range, allocation {n}: {r:?}"
            );
            let rest = td.unmap_range(Gpa::new(base), 8 * 4096, &kick);
            assert!(rest.is_complete(), "{rest:?}");
            assert_eq!(r.frames_returned() + rest.frames_returned(), 8);
            let mut back: Vec<PfnRun> = r.returned().chain(rest.returned()).collect();
            back.sort_by_key(|r| r.first());
            runs.sort_by_key(|r| r.first());
            assert_eq!(back, runs);
            for run in runs {
                free(sim, run);
            }
            !hit
        }),
    ));

    // remove_table: the empty S-EPT page under the range goes back.
    counts.push((
        "remove_table",
        sweep("remove_table", |n| {
            let (r, hit) = with_failure(n, || td.remove_table::<Size2M>(Gpa::new(base), &kick));
            assert_sound(sim, "remove_table");
            match r {
                Err(e) => {
                    assert!(hit, "remove_table, allocation {n}: {e:?}");
                    assert_alloc(&e, "remove_table", n);
                    false
                }
                Ok(()) => {
                    assert!(
                        !hit,
                        "remove_table, allocation {n}: the failure was swallowed"
                    );
                    true
                }
            }
        }),
    ));

    // demote the 2M page: it stays a 2M page on failure.
    counts.push((
        "demote",
        sweep("demote", |n| {
            let (r, hit) = with_failure(n, || td.demote::<Size2M>(gpa2m, &kick));
            assert_sound(sim, "demote");
            match r {
                Err(e) => {
                    assert!(hit, "demote, allocation {n}: {e:?}");
                    assert_alloc(&e, "demote", n);
                    assert_eq!(td.mapping(gpa2m).map(|m| m.size), Some(TdxLevel::L2M));
                    false
                }
                Ok(()) => {
                    assert!(!hit, "demote, allocation {n}: the failure was swallowed");
                    assert_eq!(td.mapping(gpa2m).map(|m| m.size), Some(TdxLevel::L4K));
                    true
                }
            }
        }),
    ));

    // promote it back.
    counts.push((
        "promote",
        sweep("promote", |n| {
            let (r, hit) = with_failure(n, || td.promote::<Size2M>(gpa2m, &kick));
            assert_sound(sim, "promote");
            match r {
                Err(e) => {
                    assert!(hit, "promote, allocation {n}: {e:?}");
                    assert_alloc(&e, "promote", n);
                    assert_eq!(td.mapping(gpa2m).map(|m| m.size), Some(TdxLevel::L4K));
                    false
                }
                Ok(()) => {
                    assert!(!hit, "promote, allocation {n}: the failure was swallowed");
                    assert_eq!(td.mapping(gpa2m).map(|m| m.size), Some(TdxLevel::L2M));
                    true
                }
            }
        }),
    ));
    counts
}

/// One vCPU run-loop round: a vCPU handle, enter (a TDVMCALL exit),
/// decode the request, answer it; each call swept. Then the guest halts.
/// Returns the allocations of the four together.
fn run_loop_step(sim: &Simulator, td: &Ftd<'_, '_>, tdvpr: Pfn) -> u64 {
    sim.set_guest(tdvpr, |g: &mut Guest| {
        let regs = VmcallRegs {
            r11: subfunction::CPUID,
            r12: 0x4000_0000,
            ..VmcallRegs::default()
        };
        g.vmcall(0xFFCC, regs)
            .expect("the module takes the exposure");
        g.halt();
    });
    let id = td.vcpus().next().expect("a built vCPU");
    let mut v = None;
    let mut total = sweep("vcpu handle", |n| {
        let (r, hit) = with_failure(n, || td.vcpu(id));
        match r {
            Err(e) => {
                assert!(hit, "vcpu handle, allocation {n}: {e:?}");
                assert_alloc(&e, "vcpu handle", n);
                false
            }
            Ok(h) => {
                assert!(
                    !hit,
                    "vcpu handle, allocation {n}: the failure was swallowed"
                );
                v = Some(h);
                true
            }
        }
    });
    let mut v = v.unwrap();
    let mut exit = None;
    total += sweep("enter", |n| {
        let (r, hit) = with_failure(n, || v.enter(CpuId(0)));
        match r {
            Err(e) => {
                assert!(hit, "enter, allocation {n}: {e:?}");
                assert_alloc(&e, "enter", n);
                false
            }
            Ok(x) => {
                assert!(!hit, "enter, allocation {n}: the failure was swallowed");
                exit = Some(x);
                true
            }
        }
    });
    assert!(matches!(exit, Some(TdExit::Vmcall { .. })), "{exit:?}");
    // Decoding cannot fail on memory: it must not allocate at all.
    let (request, hit) = with_failure(1, || v.vmcall());
    assert!(!hit, "decoding a TDVMCALL allocates");
    assert!(
        matches!(
            request,
            Some(Ok(VmcallRequest::Cpuid {
                leaf: 0x4000_0000,
                ..
            }))
        ),
        "{request:?}"
    );
    total += sweep("vmcall reply", |n| {
        let (r, hit) = with_failure(n, || v.reply_cpuid([1, 2, 3, 4]));
        match r {
            Err(e) => {
                assert!(hit, "vmcall reply, allocation {n}: {e:?}");
                assert_alloc(&e, "vmcall reply", n);
                false
            }
            Ok(()) => {
                assert!(
                    !hit,
                    "vmcall reply, allocation {n}: the failure was swallowed"
                );
                true
            }
        }
    });
    let exit = v.enter(CpuId(0)).unwrap();
    assert!(matches!(exit, TdExit::Vmcall { .. }), "{exit:?}");
    assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))));
    total
}

/// A finalized TD with a vCPU, an initial page, 4K pages, a 2M page, a
/// demoted 2M page (an S-EPT table of 4K leaves) and a 1G page, built
/// without failures; the guest runs it holds.
fn populated<'h, 's>(sim: &'s Simulator, host: &'h Host<'s>) -> (Ftd<'h, 's>, Vec<PfnRun>) {
    let kick = || {};
    let mut td = host.build_td(&params()).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let f = frame4k(sim);
    let mut given = vec![PfnRun::try_new(f.pfn(), 1).unwrap()];
    td.add_page(Gpa::new(0x1000), f, &[1; 4096], true).unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    for i in 0..3u64 {
        let f = frame4k(sim);
        given.push(PfnRun::try_new(f.pfn(), 1).unwrap());
        td.map(Gpa::new(0x20_0000 + i * 4096), f).unwrap();
    }
    let f = frame2m(sim);
    given.push(PfnRun::try_new(f.pfn(), 512).unwrap());
    td.map(Gpa::new(0x40_0000), f).unwrap();
    let f = frame2m(sim);
    let split = f.pfn();
    td.map(Gpa::new(0x80_0000), f).unwrap();
    td.demote::<Size2M>(Gpa::new(0x80_0000), &kick).unwrap();
    given.extend((0..512).map(|i| PfnRun::try_new(Pfn::new(split.as_u64() + i), 1).unwrap()));
    (td, given)
}

/// Checks a teardown report made with allocation `n` failing against the
/// TD's guest runs, frees the frames, and checks every page is back.
fn check_report(
    sim: &Simulator,
    base: &tdx_sim::Accounting,
    label: &str,
    report: &TeardownReport,
    given: &[PfnRun],
    hit: bool,
    control_pages: Option<u64>,
) -> u64 {
    assert!(report.is_clean(), "{label}: {report:#?}");
    assert_eq!(report.is_complete(), !hit, "{label}: {report:#?}");
    // Exact counts: the listed runs and the unlisted frames are the runs
    // the TD held, each once.
    let listed: HashSet<PfnRun> = report.guest_returned.iter().copied().collect();
    assert_eq!(
        listed.len(),
        report.guest_returned.len(),
        "{label}: listed twice"
    );
    let all: HashSet<PfnRun> = given.iter().copied().collect();
    assert!(
        listed.is_subset(&all),
        "{label}: returned a run it did not hold"
    );
    let unlisted: u64 = all.difference(&listed).map(|r| r.count()).sum();
    assert_eq!(unlisted, report.unlisted_guest_frames, "{label}");
    // The runs the report could not list went to the platform (a drop
    // hands it the listed ones too), and nothing else did.
    let to_platform: HashSet<PfnRun> = sim.take_returned_guest_frames().into_iter().collect();
    assert!(
        all.difference(&listed).all(|r| to_platform.contains(r)),
        "{label}: an unlisted run did not reach return_guest_frames"
    );
    assert!(
        to_platform.is_subset(&all),
        "{label}: returned a run it did not hold"
    );
    assert_eq!(
        report.guest_frames_returned(),
        given.iter().map(|r| r.count()).sum::<u64>(),
        "{label}"
    );
    let control = report.freed.len() as u64 + report.unlisted_freed;
    if let Some(want) = control_pages {
        assert_eq!(control, want, "{label}: control pages");
    }
    for r in given {
        free(sim, *r);
    }
    assert_back_to(sim, base, label);
    control
}

/// Teardown and drop of a populated TD, at every allocation: they cannot
/// fail, so the report's counts must say exactly what could not be listed.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn teardown_and_drop_account_for_everything_at_every_allocation() {
    teardown_and_drop(false);
}

/// The same with Dynamic PAMT: the report lists the pairs teardown
/// removes too.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn teardown_and_drop_account_for_everything_at_every_allocation_with_dynamic_pamt() {
    teardown_and_drop(true);
}

fn teardown_and_drop(dynamic_pamt: bool) {
    let sim = sim(dynamic_pamt);
    let host = host(&sim);
    assert_eq!(host.dynamic_pamt(), dynamic_pamt);
    let base = sim.accounting();

    // The reference: no failure.
    let (td, given) = populated(&sim, &host);
    let report = td.teardown();
    let control = check_report(&sim, &base, "teardown", &report, &given, false, None);

    let mut counts = Vec::new();
    counts.push((
        "teardown",
        sweep("teardown", |n| {
            let (td, given) = populated(&sim, &host);
            let (report, hit) = with_failure(n, || td.teardown());
            let label = format!("teardown, allocation {n}");
            check_report(&sim, &base, &label, &report, &given, hit, Some(control));
            !hit
        }),
    ));
    counts.push((
        "drop",
        sweep("drop", |n| {
            let (td, given) = populated(&sim, &host);
            let before = sim.dropped_td_reports().len();
            let ((), hit) = with_failure(n, || drop(td));
            let reports = sim.dropped_td_reports();
            assert_eq!(reports.len(), before + 1, "drop reports to the platform");
            let report = reports.last().unwrap();
            let label = format!("drop, allocation {n}");
            check_report(&sim, &base, &label, report, &given, hit, Some(control));
            !hit
        }),
    ));
    let _ = writeln!(
        std::io::stderr(),
        "alloc_failure: heap allocations per operation: {counts:?}"
    );
}

/// Pages that must wait for teardown after a failed write-back, when the
/// TD's list for them cannot grow: the guest page stays parked in its
/// entry (the GPA taken, a typed refusal), the freed S-EPT page of a
/// promote stays with its retired node; teardown gives both back.
#[test]
fn frames_waiting_for_teardown_are_kept_without_allocating() {
    let sim = sim(false);
    let host = host(&sim);
    let base = sim.accounting();
    let kick = || {};
    let mut td = host.build_td(&params()).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let mut given = Vec::new();
    // The simulator counts a fault's `nth` from its first injected fault.
    let wbinvd = || td_host::calls(&sim, tdx::Leaf::PHYMEM_PAGE_WBINVD);
    let first = wbinvd();
    let fail_next_wbinvd = || {
        sim.inject(Fault::status(
            tdx::Leaf::PHYMEM_PAGE_WBINVD,
            wbinvd() - first + 1,
            TdxStatus::OPERAND_INVALID,
        ));
    };

    // Two 4K pages; PAGE.WBINVD fails after each REMOVE. The first finds
    // the TD's list empty, and its growth fails: the page is parked; the
    // second is listed.
    for (i, fail_list) in [(0u64, true), (1, false)] {
        let gpa = Gpa::new(0x20_0000 + i * 4096);
        let f = frame4k(&sim);
        given.push(PfnRun::try_new(f.pfn(), 1).unwrap());
        td.map(gpa, f).unwrap();
        fail_next_wbinvd();
        // The list's first push is the only allocation: fail it or not.
        let (r, hit) = with_failure(if fail_list { 1 } else { 0 }, || {
            td.unmap::<Size4K>(gpa, &kick)
        });
        assert_eq!(hit, fail_list);
        let e = r.unwrap_err();
        assert!(matches!(e, TdError::Seamcall { .. }), "{e:?}");
        // Not mapped any more; a parked page says so.
        let state = td.mapping(gpa).map(|m| m.state);
        let want = fail_list.then_some(tdx::api::td::MappingState::Parked);
        assert_eq!(state, want);
        // Listed: the GPA is free again. Parked: refused, with the frame.
        let f = frame4k(&sim);
        let run = PfnRun::try_new(f.pfn(), 1).unwrap();
        match td.map(gpa, f) {
            Ok(()) => {
                assert!(!fail_list, "a parked GPA is mapped again");
                given.push(run);
            }
            Err(fail) => {
                assert!(fail_list, "{:?}", fail.error);
                assert!(
                    matches!(fail.error, TdError::Gpa { gpa: g, .. } if g == gpa),
                    "{:?}",
                    fail.error
                );
                assert_eq!(td.unmap::<Size4K>(gpa, &kick).unwrap_err(), fail.error);
                free(&sim, run);
            }
        }
    }
    // A parked 2M page: a 4K map inside it is refused as parked (it stays
    // until teardown), not reported as contention a VMM would retry.
    // First fill the list to its capacity: 4K pages whose write-back fails
    // go on it without allocating, until one needs room (and is parked).
    for k in 0.. {
        assert!(k < 64, "the list never needed to grow");
        let gpa = Gpa::new(0x30_0000 + k * 4096);
        let f = frame4k(&sim);
        given.push(PfnRun::try_new(f.pfn(), 1).unwrap());
        td.map(gpa, f).unwrap();
        fail_next_wbinvd();
        let (r, hit) = with_failure(1, || td.unmap::<Size4K>(gpa, &kick));
        assert!(r.is_err());
        if hit {
            break;
        }
    }
    let f = frame2m(&sim);
    given.push(PfnRun::try_new(f.pfn(), 512).unwrap());
    let big = Gpa::new(0x60_0000);
    td.map(big, f).unwrap();
    fail_next_wbinvd();
    let (r, hit) = with_failure(1, || td.unmap::<Size2M>(big, &kick));
    assert!(hit && r.is_err());
    let m = td.mapping(Gpa::new(0x60_1000)).expect("the parked page");
    assert_eq!((m.gpa, m.state), (big, tdx::api::td::MappingState::Parked));
    let f = frame4k(&sim);
    let run = PfnRun::try_new(f.pfn(), 1).unwrap();
    let fail = td.map(Gpa::new(0x60_1000), f).unwrap_err();
    assert!(
        matches!(fail.error, TdError::Gpa { .. }) && !fail.error.is_contention(),
        "{:?}",
        fail.error
    );
    free(&sim, run);

    // A promote whose freed S-EPT page is not written back: kept by the
    // retired node, given back at teardown.
    let f = frame2m(&sim);
    given.push(PfnRun::try_new(f.pfn(), 512).unwrap());
    td.map(Gpa::new(0x40_0000), f).unwrap();
    td.demote::<Size2M>(Gpa::new(0x40_0000), &kick).unwrap();
    fail_next_wbinvd();
    // The merge stands; its write-back error is kept for the teardown
    // report, whose list for it cannot grow: counted.
    let (r, hit) = with_failure(1, || td.promote::<Size2M>(Gpa::new(0x40_0000), &kick));
    assert!(hit, "the deferred error's list grows");
    r.unwrap();
    assert_sound(&sim, "parked");

    let report = td.teardown();
    assert!(report.hkid_freed && report.leaked.is_empty(), "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(report.unlisted_errors, 1, "{report:#?}");
    assert!(!report.is_clean());
    let back: HashSet<PfnRun> = report.guest_returned.iter().copied().collect();
    assert_eq!(back, given.iter().copied().collect(), "{report:#?}");
    for r in &given {
        free(&sim, *r);
    }
    assert_back_to(&sim, &base, "parked");
}
