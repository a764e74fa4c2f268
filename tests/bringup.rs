//! The safe bring-up (`TdxModule`: init → configure → init_extensions) on
//! the simulated host, through `tdx-api` only:
//!
//! - every shared memory map, with and without the Extensions profile, on
//!   several CPU layouts: the module ends Ready, the module owns exactly the
//!   PAMTs and the extension pool, no host buffer is left behind;
//! - a fault at every step of bring-up (each leaf busy, out of entropy,
//!   interrupted, failing; once, and past the retry bound): a typed error at
//!   the right step, the right kind of handle back, no page lost, no cache
//!   rule broken, and a retry that succeeds where the API promises one;
//! - re-planning around PAMT ranges the platform cannot give, the
//!   partial-write erratum, a module without Extensions, seeded random
//!   faults;
//! - `TdxPageArray`: windows, encodings, release checks, accounting, and
//!   every operation going to the platform that allocated the array.
//!
//! Every test ends with `Simulator::check_invariants` (page accounting, the
//! module's and the host's views of ownership agree, no rule break).
//!
//! Timing: the shared maps (about 3 TiB of memory in all, twice) run in
//! well under the budget in debug builds, so every map runs in every build;
//! the fault matrix uses a small two-node machine.

// UNSAFETY: the page-array tests write a root page, and free the pages a
// test allocated, through the simulator's `Platform` (`unsafe fn`s whose
// contracts the simulator itself checks and records).
#![allow(unsafe_code)]

mod common;

use common::maps;

use tdx::{
    Hpa, Leaf, Pfn, TdxError, TdxStatus,
    api::{
        CpuId, Cpus, DirectMap, Failed, FrameAllocator, FrameDeallocator, NodeId, PackageId,
        Placement, PlatformError, TdxModule, TdxPageArray,
        module::{
            BUSY_RETRIES, BringUpError, ConfigureLeft, ENTROPY_RETRIES, NO_PROGRESS_LIMIT,
            REPLAN_LIMIT, Step,
        },
        page_array::ReleaseError,
        plan::{MemRange, Plan, PlanInput},
    },
    types::{OperandId, PfnRun, metadata::field},
};
use tdx_sim::{Accounting, Fault, MachineDesc, PageState, Profile, Simulator, SysState};

const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------
// Machines and inputs
// ---------------------------------------------------------------------------

/// The fault-matrix machine: two nodes of 2 GiB with a 1 GiB hole between
/// them (two TDMRs, 512 TDH.SYS.TDMR.INIT calls each), 2 packages x 2 LPs.
fn small(profile: Profile) -> MachineDesc {
    let mut d = MachineDesc::new(vec![(4 * GIB, 6 * GIB), (7 * GIB, 9 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile);
    d.numa = vec![(4 * GIB, 6 * GIB, 0), (7 * GIB, 9 * GIB, 1)];
    // Under Miri one TDH.SYS.TDMR.INIT initializes 1 GiB: 4 calls instead
    // of 1024, which Miri takes minutes over (the tests that count them
    // are ignored under Miri).
    if cfg!(miri) {
        d.profile.tdmr_init_chunk = GIB;
    }
    d
}

fn pages_of(plan: &Plan) -> u64 {
    plan.pamt_bytes() / 4096
}

/// The plan a clean bring-up of `desc` uses (what `configure` will do).
fn reference_plan(desc: &MachineDesc) -> Plan {
    let sim = Simulator::new(desc.clone()).unwrap();
    let m = TdxModule::init(&sim, &sim).unwrap();
    m.plan_for(&desc.plan_input()).unwrap()
}

/// The TDMR whose TDH.SYS.TDMR.INIT is the `nth` call (1-based), in a
/// bring-up without faults.
fn tdmr_of_call(plan: &Plan, chunk: u64, nth: u64) -> u64 {
    let mut before = 0;
    for t in &plan.tdmrs {
        let calls = t.size.div_ceil(chunk);
        if nth <= before + calls {
            return t.base;
        }
        before += calls;
    }
    panic!("call {nth} is past the last TDMR.INIT ({before} calls)")
}

fn tdmr_init_calls(plan: &Plan, chunk: u64) -> u64 {
    plan.tdmrs.iter().map(|t| t.size.div_ceil(chunk)).sum()
}

fn seamcall_err(step: Step, leaf: Leaf, status: TdxStatus) -> BringUpError {
    BringUpError::Seamcall {
        step,
        error: TdxError::new(leaf.v0(), status),
    }
}

fn calls_of(sim: &Simulator, leaf: Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

/// Takes every free page (largest runs first); returns the runs.
fn exhaust(sim: &Simulator) -> Vec<PfnRun> {
    let mut runs = Vec::new();
    for k in (0..=24).rev() {
        while let Ok(r) = sim.alloc_pages(1 << k, 1, Placement::Anywhere) {
            runs.push(r);
        }
    }
    assert_eq!(sim.accounting().free, 0);
    runs
}

/// Gives `n` pages of the held runs back to the allocator (the start of
/// the first run that long); the rest stays held.
fn give_back(sim: &Simulator, held: &mut Vec<PfnRun>, n: u64) {
    let i = held
        .iter()
        .position(|r| r.count() >= n)
        .expect("a run that long");
    let r = held.remove(i);
    free_all(sim, &[PfnRun::try_new(r.first(), n).unwrap()]);
    if r.count() > n {
        held.push(PfnRun::try_new(Pfn::new(r.first().as_u64() + n), r.count() - n).unwrap());
    }
}

fn free_all(sim: &Simulator, runs: &[PfnRun]) {
    for r in runs {
        // SAFETY: the test allocated these runs from `sim` and never gave
        // them to the module; the host never wrote them under a private
        // KeyID.
        unsafe { sim.free_pages(*r) };
    }
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

/// Everything a finished bring-up promises: Ready, the module owns exactly
/// the PAMTs and the pool (and the host sees them as Module), no host page
/// is left allocated, nothing leaked, no rule broken.
fn assert_ready<B, P>(
    sim: &Simulator,
    m: &TdxModule<tdx::api::ExtInited, B, P>,
    profile: &Profile,
    label: &str,
) {
    assert_eq!(sim.module_state(), SysState::Ready, "{label}");
    let plan = m.plan().expect("configured");
    let pool = if profile.has_ext() {
        u64::from(profile.memory_pool_required_pages)
    } else {
        0
    };
    assert_eq!(m.pool_pages(), pool, "{label}: pool pages");
    assert_eq!(
        sim.ext_status(),
        (pool, profile.has_ext() && profile.ext_required),
        "{label}: extension state"
    );
    let a = sim.accounting();
    // Only a failed TDH.EXT.MEM.ADD window is held for good (see
    // `ext_mem_add_failing_mid_window_frees_no_page_the_module_took`).
    let lost: u64 = m.lost_pages().iter().map(|r| r.count()).sum();
    assert_eq!(a.host, 0, "{label}: host buffers left allocated: {a:?}");
    assert_eq!(a.leaked, lost, "{label}: {a:?}");
    assert_eq!(
        a.module,
        pages_of(plan) + pool,
        "{label}: module pages are PAMT + pool: {a:?}"
    );
    assert_eq!(a.free + a.module + a.leaked, a.total, "{label}: {a:?}");
    for (base, size) in plan.pamt_ranges().filter(|&(_, s)| s > 0) {
        for pa in [base, base + size - 4096] {
            assert_eq!(
                sim.page_state(Pfn::new(pa / 4096)),
                Some(PageState::Module),
                "{label}: PAMT page {pa:#x}"
            );
        }
    }
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

/// Nothing held: every page back in the allocator.
fn assert_all_free(sim: &Simulator, label: &str) {
    let a = sim.accounting();
    assert_eq!(
        a,
        Accounting {
            free: a.total,
            host: 0,
            module: 0,
            leaked: 0,
            total: a.total
        },
        "{label}: pages lost"
    );
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Bring-up finished (possibly after retrying a refused step).
    Ready,
    /// `init` failed; nothing held.
    InitRefused,
    /// `configure` refused before the module took anything; retried.
    ConfigRefusedThenReady,
    /// `configure` failed after TDH.SYS.CONFIG; caches flushed, PAMTs
    /// freed, the module must be reloaded.
    MustReload,
    /// `init_extensions` refused; retried.
    ExtRefusedThenReady,
}

/// Brings the module up on a fresh simulator with `faults` injected.
///
/// With `expect` set, the run must fail with exactly that error, at the
/// stage its step belongs to, and then: an `init` failure holds nothing
/// and a retry succeeds; a `configure` failure
/// before TDH.SYS.CONFIG took anything gives the handle back, holds
/// nothing, and a retry succeeds; a failure after it says "reload", with
/// every PAMT page back in the allocator and no cache rule broken; an
/// extension failure gives the `TdmrsSet` handle back with `donated` pool
/// pages still the module's, and a retry donates only the rest.
fn run_case(
    desc: &MachineDesc,
    faults: &[Fault],
    expect: Option<&BringUpError>,
    donated: u64,
    label: &str,
) -> Outcome {
    let profile = desc.profile.clone();
    let input = desc.plan_input();
    let sim = Simulator::new(desc.clone()).unwrap();
    for f in faults {
        sim.inject(*f);
    }
    let m = match TdxModule::init(&sim, &sim) {
        Ok(m) => m,
        Err(r) => {
            assert_eq!(Some(&r.error), expect, "{label}: init");
            assert!(
                std::ptr::eq(r.returned.0, &sim) && std::ptr::eq(r.returned.1, &sim),
                "{label}: the backend and platform come back"
            );
            assert_all_free(&sim, label);
            if let BringUpError::Seamcall { .. } = r.error {
                // A retry succeeds: what already ran (TDH.SYS.INIT, some
                // LP.INITs) answers "done", which `init` accepts.
                let m = TdxModule::init(r.returned.0, r.returned.1)
                    .unwrap_or_else(|r| panic!("{label}: init retry: {:?}", r.error));
                let m = m.configure(&input).unwrap();
                let m = m.init_extensions().unwrap();
                assert_ready(&sim, &m, &profile, label);
            }
            return Outcome::InitRefused;
        }
    };
    let m = match m.configure(&input) {
        Ok(m) => m,
        Err(e) if matches!(e.returned, ConfigureLeft::Unchanged(_)) => {
            let Failed {
                error,
                returned: ConfigureLeft::Unchanged(m),
            } = *e
            else {
                unreachable!()
            };
            assert_eq!(Some(&error), expect, "{label}: configure refused");
            assert!(m.plan().is_none(), "{label}: still unconfigured");
            assert_all_free(&sim, label);
            let m = m
                .configure(&input)
                .unwrap_or_else(|e| panic!("{label}: configure retry: {:?}", e.error));
            let m = m
                .init_extensions()
                .unwrap_or_else(|r| panic!("{label}: extensions: {:?}", r.error));
            assert_ready(&sim, &m, &profile, label);
            return Outcome::ConfigRefusedThenReady;
        }
        Err(r) => {
            assert_eq!(Some(&r.error), expect, "{label}: must reload");
            let ConfigureLeft::MustReload { backend, platform } = r.returned else {
                panic!("{label}: must reload")
            };
            assert!(std::ptr::eq(backend, &sim) && std::ptr::eq(platform, &sim));
            // WBINVD before KEY.CONFIG, and again before the PAMTs left.
            assert!(sim.stats().wbinvd >= 2, "{label}: {:?}", sim.stats());
            assert_all_free(&sim, label);
            return Outcome::MustReload;
        }
    };
    let pamt = pages_of(m.plan().unwrap());
    match m.init_extensions() {
        Ok(m) => {
            assert_eq!(expect, None, "{label}: bring-up succeeded");
            assert_ready(&sim, &m, &profile, label);
            Outcome::Ready
        }
        Err(r) => {
            assert_eq!(Some(&r.error), expect, "{label}: extensions refused");
            let m = r.returned;
            assert_eq!(
                m.pool_pages(),
                donated,
                "{label}: donated before the failure"
            );
            assert_eq!(sim.ext_status().0, donated, "{label}: the module's count");
            // The window that failed is held for good: how much of it the
            // module took is unknown after an error.
            let lost: u64 = m.lost_pages().iter().map(|r| r.count()).sum();
            let need = u64::from(m.sysinfo().memory_pool_required_pages);
            let failed_window = matches!(
                r.error,
                BringUpError::Seamcall {
                    step: Step::ExtMemAdd { .. },
                    ..
                }
            );
            let expect_lost = if failed_window {
                (need - donated).min(512)
            } else {
                0
            };
            assert_eq!(lost, expect_lost, "{label}: lost window");
            let a = sim.accounting();
            assert_eq!(a.host, 0, "{label}: {a:?}");
            assert_eq!(a.leaked, lost, "{label}: {a:?}");
            assert_eq!(a.module, pamt + donated, "{label}: {a:?}");
            sim.check_invariants()
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            let m = m
                .init_extensions()
                .unwrap_or_else(|r| panic!("{label}: extension retry: {:?}", r.error));
            // The module counted exactly the pool: nothing donated twice.
            assert_ready(&sim, &m, &profile, label);
            Outcome::ExtRefusedThenReady
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Every shared map, both profiles, several CPU layouts
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(miri, ignore = "reads memory maps from disk; Miri isolates files")]
fn every_shared_map_brings_up_with_and_without_extensions() {
    // (packages, LPs per package), cycled over the maps.
    const LAYOUTS: [(u32, u32); 5] = [(2, 2), (1, 4), (4, 2), (8, 1), (2, 8)];
    for (i, (name, json)) in maps().into_iter().enumerate() {
        let (packages, lps) = LAYOUTS[i % LAYOUTS.len()];
        for profile in [Profile::tdx_1_5(), Profile::tdx_1_5_ext()] {
            let label = format!("{name} {} {packages}x{lps}", profile.name);
            let desc = MachineDesc::from_memmap_json(&json)
                .unwrap()
                .with_cpus(packages, lps)
                .with_profile(profile.clone());
            let input = desc.plan_input();
            let desc_chunk = desc.profile.tdmr_init_chunk;
            let sim = Simulator::new(desc).unwrap();
            let m = TdxModule::init(&sim, &sim)
                .unwrap_or_else(|r| panic!("{label}: init: {:?}", r.error));
            let m = m
                .configure(&input)
                .unwrap_or_else(|e| panic!("{label}: configure: {:?}", e.error));
            assert_eq!(sim.module_state(), SysState::Ready, "{label}");
            let m = m
                .init_extensions()
                .unwrap_or_else(|r| panic!("{label}: extensions: {:?}", r.error));
            // Ready for TDs: the module's own state, and the extension
            // state and accounting (`assert_ready`).
            assert_eq!(sim.module_state(), SysState::Ready, "{label}");
            assert_ready(&sim, &m, &profile, &label);
            let st = sim.stats();
            assert_eq!(
                calls_of(&sim, Leaf::SYS_LP_INIT),
                u64::from(packages * lps),
                "{label}: LP.INIT on every CPU"
            );
            assert_eq!(
                calls_of(&sim, Leaf::SYS_KEY_CONFIG),
                u64::from(packages),
                "{label}: KEY.CONFIG once per package"
            );
            assert_eq!(m.stats().seamcalls, st.total_seamcalls(), "{label}");
            // TDH.SYS.TDMR.INIT is resumed until each TDMR is done, with a
            // yield between calls.
            let tdmrs = m.plan().unwrap().tdmrs.len() as u64;
            let tdmr_inits = calls_of(&sim, Leaf::SYS_TDMR_INIT);
            assert_eq!(
                tdmr_inits,
                tdmr_init_calls(m.plan().unwrap(), desc_chunk),
                "{label}"
            );
            assert!(st.yields >= tdmr_inits - tdmrs, "{label}: {st:?}");
            assert_eq!(m.stats().retries, 0, "{label}");
            eprintln!(
                "{label}: {} TDMRs, PAMT {} pages, pool {} pages, {} SEAMCALLs",
                m.plan().unwrap().tdmrs.len(),
                pages_of(m.plan().unwrap()),
                m.pool_pages(),
                st.total_seamcalls()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 2. Fault injection at every step
// ---------------------------------------------------------------------------

/// One call of one leaf during bring-up of `small(tdx_1_5_ext)`.
#[derive(Debug, Clone)]
struct Site {
    name: String,
    leaf: Leaf,
    nth: u64,
    step: Step,
    busy: TdxStatus,
    entropy: TdxStatus,
    /// Pool pages donated before this call (extension sites).
    donated: u64,
}

fn sites() -> Vec<Site> {
    let desc = small(Profile::tdx_1_5_ext());
    let plan = reference_plan(&desc);
    let chunk = desc.profile.tdmr_init_chunk;
    let tdmr_calls = tdmr_init_calls(&plan, chunk);
    assert_eq!(plan.tdmrs.len(), 2, "the small machine has two TDMRs");
    let sys_busy = TdxStatus::SYS_BUSY;
    let rcx_busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX);
    let ket_busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::KET);
    let no_entropy = TdxStatus::RND_NO_ENTROPY;
    let site = |name: &str, leaf, nth, step, busy, entropy, donated| Site {
        name: name.to_string(),
        leaf,
        nth,
        step,
        busy,
        entropy,
        donated,
    };
    let mut v = vec![
        site(
            "SYS.INIT",
            Leaf::SYS_INIT,
            1,
            Step::SysInit,
            sys_busy,
            no_entropy,
            0,
        ),
        site(
            "LP.INIT (CPU 2)",
            Leaf::SYS_LP_INIT,
            3,
            Step::LpInit(CpuId(2)),
            sys_busy,
            no_entropy,
            0,
        ),
        site(
            "SYS.RD (TDX_FEATURES0)",
            Leaf::SYS_RD,
            1,
            Step::ReadMetadata(field::TDX_FEATURES0),
            sys_busy,
            no_entropy,
            0,
        ),
        site(
            "SYS.CONFIG",
            Leaf::SYS_CONFIG,
            1,
            Step::Config,
            sys_busy,
            no_entropy,
            0,
        ),
        site(
            "KEY.CONFIG (package 0)",
            Leaf::SYS_KEY_CONFIG,
            1,
            Step::KeyConfig(PackageId(0)),
            sys_busy,
            TdxStatus::KEY_GENERATION_FAILED,
            0,
        ),
        site(
            "KEY.CONFIG (package 1)",
            Leaf::SYS_KEY_CONFIG,
            2,
            Step::KeyConfig(PackageId(1)),
            ket_busy,
            TdxStatus::KEY_GENERATION_FAILED,
            0,
        ),
    ];
    for (what, nth) in [
        ("first", 1),
        ("middle", tdmr_calls / 2 - 7),
        ("last", tdmr_calls),
    ] {
        v.push(site(
            &format!("TDMR.INIT ({what} call, {nth} of {tdmr_calls})"),
            Leaf::SYS_TDMR_INIT,
            nth,
            Step::TdmrInit(tdmr_of_call(&plan, chunk, nth)),
            rcx_busy,
            no_entropy,
            0,
        ));
    }
    v.push(site(
        "EXT.MEM.ADD (window 0)",
        Leaf::EXT_MEM_ADD,
        1,
        Step::ExtMemAdd { window: 0 },
        rcx_busy,
        no_entropy,
        0,
    ));
    v.push(site(
        "EXT.MEM.ADD (window 1)",
        Leaf::EXT_MEM_ADD,
        2,
        Step::ExtMemAdd { window: 512 },
        rcx_busy,
        no_entropy,
        512,
    ));
    v.push(site(
        "EXT.INIT",
        Leaf::EXT_INIT,
        1,
        Step::ExtInit,
        sys_busy,
        no_entropy,
        1000,
    ));
    v
}

/// `count` faults with `status` on calls `nth..nth + count` of `leaf`.
fn repeated(leaf: Leaf, nth: u64, count: u64, status: TdxStatus) -> Vec<Fault> {
    (nth..nth + count)
        .map(|n| Fault::status(leaf, n, status))
        .collect()
}

fn expected_outcome(step: Step) -> Outcome {
    match step {
        Step::KeyIds | Step::SysInit | Step::LpInit(_) | Step::ReadMetadata(_) => {
            Outcome::InitRefused
        }
        Step::Plan | Step::Allocate | Step::Config => Outcome::ConfigRefusedThenReady,
        Step::KeyConfig(_) | Step::TdmrInit(_) => Outcome::MustReload,
        Step::ExtMemAdd { .. } | Step::ExtInit => Outcome::ExtRefusedThenReady,
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn one_busy_or_out_of_entropy_call_at_any_step_is_retried() {
    let desc = small(Profile::tdx_1_5_ext());
    for s in sites() {
        for (kind, status) in [("busy", s.busy), ("no entropy", s.entropy)] {
            let label = format!("{} {kind} once", s.name);
            let outcome = run_case(
                &desc,
                &[Fault::status(s.leaf, s.nth, status)],
                None,
                0,
                &label,
            );
            assert_eq!(outcome, Outcome::Ready, "{label}");
            eprintln!("{label:50} -> {outcome:?}");
        }
    }
    // Every busy status the simulator can return for KEY.CONFIG, and both
    // entropy statuses, on the second package.
    for status in [
        TdxStatus::SYS_BUSY,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::KET),
        TdxStatus::RND_NO_ENTROPY,
        TdxStatus::KEY_GENERATION_FAILED,
    ] {
        let label = format!("KEY.CONFIG (package 1) {status:?} once");
        let outcome = run_case(
            &desc,
            &[Fault::status(Leaf::SYS_KEY_CONFIG, 2, status)],
            None,
            0,
            &label,
        );
        assert_eq!(outcome, Outcome::Ready, "{label}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn transient_statuses_up_to_the_bound_are_retried() {
    let desc = small(Profile::tdx_1_5_ext());
    let s = &sites()[4]; // KEY.CONFIG, package 0
    let label = "KEY.CONFIG entropy x ENTROPY_RETRIES";
    let faults = repeated(s.leaf, s.nth, u64::from(ENTROPY_RETRIES), s.entropy);
    assert_eq!(run_case(&desc, &faults, None, 0, label), Outcome::Ready);
    let s = &sites()[7]; // TDMR.INIT, a middle call
    let label = "TDMR.INIT busy x BUSY_RETRIES";
    let faults = repeated(s.leaf, s.nth, u64::from(BUSY_RETRIES), s.busy);
    assert_eq!(run_case(&desc, &faults, None, 0, label), Outcome::Ready);
    // The retries are counted.
    let sim = Simulator::new(desc.clone()).unwrap();
    for f in repeated(Leaf::SYS_CONFIG, 1, 5, TdxStatus::SYS_BUSY) {
        sim.inject(f);
    }
    let m = TdxModule::init(&sim, &sim).unwrap();
    let m = m.configure(&desc.plan_input()).unwrap();
    assert_eq!(m.stats().retries, 5);
    assert!(sim.stats().yields >= 5, "busy retries yield");
    let m = m.init_extensions().unwrap();
    assert_ready(&sim, &m, &desc.profile, "SYS.CONFIG busy x5");
}

/// At every site, `status` (the site's busy or entropy status) on one more
/// call than the retry bound allows: a typed error naming the step.
fn past_the_bound(what: &str, bound: u32, status: impl Fn(&Site) -> TdxStatus) {
    let desc = small(Profile::tdx_1_5_ext());
    for s in sites() {
        let status = status(&s);
        let label = format!("{} {what} x{}", s.name, bound + 1);
        let faults = repeated(s.leaf, s.nth, u64::from(bound) + 1, status);
        let err = seamcall_err(s.step, s.leaf, status);
        let outcome = run_case(&desc, &faults, Some(&err), s.donated, &label);
        assert_eq!(outcome, expected_outcome(s.step), "{label}");
        eprintln!("{label:50} -> {outcome:?}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn busy_past_the_retry_bound_is_a_typed_error_at_every_step() {
    past_the_bound("busy", BUSY_RETRIES, |s| s.busy);
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn entropy_past_the_retry_bound_is_a_typed_error_at_every_step() {
    past_the_bound("no entropy", ENTROPY_RETRIES, |s| s.entropy);
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_hard_failure_is_a_typed_error_at_every_step() {
    let desc = small(Profile::tdx_1_5_ext());
    for s in sites() {
        let mut statuses = vec![TdxStatus::OPERAND_INVALID];
        match s.leaf {
            Leaf::SYS_CONFIG => statuses.push(TdxStatus::SYS_CONFIG_NOT_PENDING),
            Leaf::SYS_KEY_CONFIG => statuses.push(TdxStatus::SYS_KEY_CONFIG_NOT_PENDING),
            Leaf::SYS_TDMR_INIT | Leaf::EXT_MEM_ADD => {
                statuses.push(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX))
            }
            Leaf::EXT_INIT => statuses.push(TdxStatus::SYS_STATE_INCORRECT),
            _ => {}
        }
        for status in statuses {
            let label = format!("{} {status:?}", s.name);
            let err = seamcall_err(s.step, s.leaf, status);
            let outcome = run_case(
                &desc,
                &[Fault::status(s.leaf, s.nth, status)],
                Some(&err),
                s.donated,
                &label,
            );
            assert_eq!(outcome, expected_outcome(s.step), "{label}");
            eprintln!("{label:50} -> {outcome:?}");
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn interrupted_extension_leaves_are_resumed() {
    let desc = small(Profile::tdx_1_5_ext());
    let cases: Vec<(&str, Vec<Fault>, u64, u64)> = vec![
        // (label, faults, EXT.MEM.ADD calls, EXT.INIT calls)
        (
            "EXT.MEM.ADD window 0 stops after 100",
            vec![Fault::stop_early(Leaf::EXT_MEM_ADD, 1, 100)],
            3,
            1,
        ),
        (
            "EXT.MEM.ADD window 1 stops after 0",
            vec![Fault::stop_early(Leaf::EXT_MEM_ADD, 2, 0)],
            3,
            1,
        ),
        (
            "EXT.MEM.ADD interrupted after every entry of window 1",
            (2..2 + 488)
                .map(|n| Fault::stop_early(Leaf::EXT_MEM_ADD, n, 1))
                .collect(),
            1 + 488,
            1,
        ),
        (
            "EXT.MEM.ADD stalls NO_PROGRESS_LIMIT - 1 times",
            (1..u64::from(NO_PROGRESS_LIMIT))
                .map(|n| Fault::stop_early(Leaf::EXT_MEM_ADD, n, 0))
                .collect(),
            u64::from(NO_PROGRESS_LIMIT) + 1,
            1,
        ),
        (
            "EXT.INIT stops after 1 step, three times",
            (1..=3)
                .map(|n| Fault::stop_early(Leaf::EXT_INIT, n, 1))
                .collect(),
            2,
            4,
        ),
        (
            "EXT.INIT stalls NO_PROGRESS_LIMIT times",
            (1..=u64::from(NO_PROGRESS_LIMIT))
                .map(|n| Fault::stop_early(Leaf::EXT_INIT, n, 0))
                .collect(),
            2,
            u64::from(NO_PROGRESS_LIMIT) + 1,
        ),
    ];
    for (label, faults, mem_add, ext_init) in cases {
        let sim = Simulator::new(desc.clone()).unwrap();
        for f in &faults {
            sim.inject(*f);
        }
        let m = TdxModule::init(&sim, &sim).unwrap();
        let m = m.configure(&desc.plan_input()).unwrap();
        let yields = sim.stats().yields;
        let m = m
            .init_extensions()
            .unwrap_or_else(|r| panic!("{label}: {:?}", r.error));
        assert_eq!(calls_of(&sim, Leaf::EXT_MEM_ADD), mem_add, "{label}");
        assert_eq!(calls_of(&sim, Leaf::EXT_INIT), ext_init, "{label}");
        let resumptions = (mem_add - 2) + (ext_init - 1);
        assert!(
            sim.stats().yields - yields >= resumptions,
            "{label}: the API yields between resumed calls"
        );
        assert_ready(&sim, &m, &desc.profile, label);
        eprintln!("{label:50} -> Ready");
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn extension_leaves_that_make_no_progress_fail_cleanly() {
    let desc = small(Profile::tdx_1_5_ext());
    let stall = |leaf, from: u64, count: u64| -> Vec<Fault> {
        (from..from + count)
            .map(|n| Fault::stop_early(leaf, n, 0))
            .collect()
    };
    let limit = u64::from(NO_PROGRESS_LIMIT);
    // Window 0, no entry taken.
    let err = BringUpError::NoProgress {
        step: Step::ExtMemAdd { window: 0 },
        leaf: Leaf::EXT_MEM_ADD,
        calls: NO_PROGRESS_LIMIT,
    };
    let o = run_case(
        &desc,
        &stall(Leaf::EXT_MEM_ADD, 1, limit),
        Some(&err),
        0,
        "EXT.MEM.ADD window 0 stalls",
    );
    assert_eq!(o, Outcome::ExtRefusedThenReady);
    // Window 1, after window 0 was taken.
    let err = BringUpError::NoProgress {
        step: Step::ExtMemAdd { window: 512 },
        leaf: Leaf::EXT_MEM_ADD,
        calls: NO_PROGRESS_LIMIT,
    };
    let o = run_case(
        &desc,
        &stall(Leaf::EXT_MEM_ADD, 2, limit),
        Some(&err),
        512,
        "EXT.MEM.ADD window 1 stalls",
    );
    assert_eq!(o, Outcome::ExtRefusedThenReady);
    // Part of window 0 taken (10 entries), then no progress: the 10 pages
    // stay the module's, the retry donates the other 990.
    let mut faults = vec![Fault::stop_early(Leaf::EXT_MEM_ADD, 1, 10)];
    faults.extend(stall(Leaf::EXT_MEM_ADD, 2, limit));
    let err = BringUpError::NoProgress {
        step: Step::ExtMemAdd { window: 0 },
        leaf: Leaf::EXT_MEM_ADD,
        calls: NO_PROGRESS_LIMIT,
    };
    let o = run_case(
        &desc,
        &faults,
        Some(&err),
        10,
        "EXT.MEM.ADD 10 entries then stalls",
    );
    assert_eq!(o, Outcome::ExtRefusedThenReady);
    // TDH.EXT.INIT keeps its progress inside the module: the API bounds
    // the resumptions (NO_PROGRESS_LIMIT * 16 interrupted calls).
    let bound = limit * 16;
    let err = BringUpError::NoProgress {
        step: Step::ExtInit,
        leaf: Leaf::EXT_INIT,
        calls: bound as u32 + 1,
    };
    let o = run_case(
        &desc,
        &stall(Leaf::EXT_INIT, 1, bound + 1),
        Some(&err),
        1000,
        "EXT.INIT stalls",
    );
    assert_eq!(o, Outcome::ExtRefusedThenReady);
    // One stall fewer than the bound still finishes.
    let o = run_case(
        &desc,
        &stall(Leaf::EXT_INIT, 1, bound),
        None,
        0,
        "EXT.INIT stalls up to the bound",
    );
    assert_eq!(o, Outcome::Ready);
}

#[test]
fn init_can_be_retried_after_sys_init_failed() {
    let desc = small(Profile::tdx_1_5());
    let err = seamcall_err(Step::SysInit, Leaf::SYS_INIT, TdxStatus::OPERAND_INVALID);
    let o = run_case(
        &desc,
        &[Fault::status(Leaf::SYS_INIT, 1, TdxStatus::OPERAND_INVALID)],
        Some(&err),
        0,
        "SYS.INIT fails, init retried",
    );
    assert_eq!(o, Outcome::InitRefused);
}

/// `init` hands the backend and platform back after LP.INIT failed, when
/// TDH.SYS.INIT already ran: the retry gets `TDX_SYS_INIT_NOT_PENDING` from
/// TDH.SYS.INIT and `TDX_SYS_LP_INIT_DONE` on the CPUs already done, and
/// takes both as done.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn init_can_be_retried_after_lp_init_failed() {
    let desc = small(Profile::tdx_1_5());
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::status(
        Leaf::SYS_LP_INIT,
        3,
        TdxStatus::OPERAND_INVALID,
    ));
    let r = TdxModule::init(&sim, &sim).unwrap_err();
    assert_eq!(
        r.error,
        seamcall_err(
            Step::LpInit(CpuId(2)),
            Leaf::SYS_LP_INIT,
            TdxStatus::OPERAND_INVALID
        )
    );
    let (b, p) = r.returned;
    let m = TdxModule::init(b, p).unwrap_or_else(|r| panic!("init retry: {:?}", r.error));
    let m = m.configure(&desc.plan_input()).unwrap();
    let m = m.init_extensions().unwrap();
    assert_ready(&sim, &m, &desc.profile, "LP.INIT retried");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_module_without_no_rbp_mod_is_refused() {
    let mut profile = Profile::tdx_1_5();
    profile.features0 = profile.features0.with_no_rbp_mod(false);
    let sim = Simulator::new(small(profile)).unwrap();
    let r = TdxModule::init(&sim, &sim).unwrap_err();
    assert_eq!(r.error, BringUpError::MissingFeature("NO_RBP_MOD"));
    assert_all_free(&sim, "NO_RBP_MOD");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn no_plan_is_refused_and_the_handle_can_be_configured_again() {
    let desc = small(Profile::tdx_1_5());
    let sim = Simulator::new(desc.clone()).unwrap();
    let m = TdxModule::init(&sim, &sim).unwrap();
    // Memory only below 1 MiB: nothing to plan.
    let empty = PlanInput::new(vec![MemRange {
        start: 0x1000,
        end: 0x9_f000,
        node: 0,
    }]);
    let Err(r) = m.configure(&empty) else {
        panic!("an empty plan must be refused");
    };
    let ConfigureLeft::Unchanged(handle) = r.returned else {
        panic!("refused, not must-reload: {:?}", r.error)
    };
    assert!(matches!(r.error, BringUpError::Plan(_)), "{:?}", r.error);
    assert_eq!(calls_of(&sim, Leaf::SYS_CONFIG), 0);
    assert_all_free(&sim, "no plan");
    let m = handle.configure(&desc.plan_input()).unwrap();
    let m = m.init_extensions().unwrap();
    assert_ready(&sim, &m, &desc.profile, "configured after a refused plan");
}

/// A TDH.EXT.MEM.ADD that fails in the middle of a window after the module
/// took some entries (the simulator does 300 entries of the second window,
/// then fails). The outputs of a failed call are not trusted, so the API
/// cannot know how many entries the module took: the whole window is held
/// as lost (never freed, never counted as pool), and a retry donates a
/// fresh window in its place.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn ext_mem_add_failing_mid_window_frees_no_page_the_module_took() {
    let desc = small(Profile::tdx_1_5_ext());
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::fail_after(
        Leaf::EXT_MEM_ADD,
        2,
        300,
        TdxStatus::PAGE_METADATA_INCORRECT,
    ));
    let m = TdxModule::init(&sim, &sim).unwrap();
    let m = m.configure(&desc.plan_input()).unwrap();
    let r = m.init_extensions().unwrap_err();
    assert_eq!(
        r.error,
        seamcall_err(
            Step::ExtMemAdd { window: 512 },
            Leaf::EXT_MEM_ADD,
            TdxStatus::PAGE_METADATA_INCORRECT
        )
    );
    assert_eq!(sim.ext_status().0, 512 + 300, "the module took 300 more");
    assert_eq!(
        sim.violations().first(),
        None,
        "nothing the module took was freed"
    );
    sim.check_invariants().unwrap();
    assert_eq!(
        r.returned.pool_pages(),
        512,
        "only the completed window counts"
    );
    let lost: u64 = r.returned.lost_pages().iter().map(|r| r.count()).sum();
    assert_eq!(lost, 488, "the failed window is held, not freed");
    // The retry tops the pool up with fresh pages; the module then has
    // more than it asked for (the 300 it took from the lost window).
    let m = r.returned.init_extensions().unwrap();
    assert_eq!(m.pool_pages(), 1000);
    assert_eq!(sim.ext_status().0, 1000 + 300);
    assert_eq!(sim.violations().first(), None);
    sim.check_invariants().unwrap();
}

/// A platform with RAM the module cannot take (outside every TDMR, as
/// CXL memory or a CMR hole is) may hand it out for the pool: the API
/// refuses before donating anything, with the frame named.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_pool_outside_tdx_memory_is_refused_before_donation() {
    let mut desc = small(Profile::tdx_1_5_ext());
    // 64 MiB at 5 GiB are RAM but not convertible.
    let hole = (5 * GIB, 5 * GIB + (64 << 20));
    desc.cmrs = Some(vec![
        (4 * GIB, hole.0),
        (hole.1, 6 * GIB),
        (7 * GIB, 9 * GIB),
    ]);
    let sim = Simulator::new(desc.clone()).unwrap();
    let m = TdxModule::init(&sim, &sim).unwrap();
    let mut input = desc.plan_input();
    input.usable[0].end = hole.0;
    input.usable.insert(
        1,
        MemRange {
            start: hole.1,
            end: 6 * GIB,
            node: 0,
        },
    );
    let m = m.configure(&input).unwrap();
    // Leave free only the hole: the pool lands in it.
    let (lo, hi) = (hole.0 / 4096, hole.1 / 4096);
    let held = exhaust(&sim);
    let mut freed = 0;
    for r in &held {
        let (a, b) = (r.first().as_u64().max(lo), r.end().min(hi));
        if a < b {
            free_all(&sim, &[PfnRun::try_new(Pfn::new(a), b - a).unwrap()]);
            freed += b - a;
        }
    }
    assert_eq!(freed, hi - lo, "the hole is free RAM");
    let r = m.init_extensions().unwrap_err();
    let BringUpError::NotTdxMemory { step, pfn } = r.error else {
        panic!("{:?}", r.error);
    };
    assert_eq!(step, Step::ExtMemAdd { window: 0 });
    assert!(
        (hole.0..hole.1).contains(&(pfn.as_u64() * 4096)),
        "{pfn:?} is in the hole"
    );
    assert_eq!(calls_of(&sim, Leaf::EXT_MEM_ADD), 0);
    assert_eq!(r.returned.pool_pages(), 0);
    assert_eq!(sim.violations().first(), None);
    sim.check_invariants().unwrap();
    assert_eq!(sim.accounting().leaked, 0);
}

// ---------------------------------------------------------------------------
// 3. Re-planning around what the platform cannot give
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn configure_replans_around_a_pamt_range_the_platform_cannot_give() {
    for profile in [Profile::tdx_1_5(), Profile::tdx_1_5_ext()] {
        let desc = small(profile.clone());
        let sim = Simulator::new(desc.clone()).unwrap();
        let input = desc.plan_input();
        let m = TdxModule::init(&sim, &sim).unwrap();
        let first = m.plan_for(&input).unwrap();
        // Take one page in the middle of the first TDMR's PAMT.
        let (base, bytes) = (first.tdmrs[0].pamt.l4k.0, first.tdmrs[0].pamt.bytes());
        let taken = Pfn::new((base + bytes / 2) / 4096);
        let mine = sim
            .alloc_pages(1, 1, Placement::Exact(taken))
            .expect("the page is free before configuration");
        let m = m.configure(&input).unwrap();
        assert_eq!(m.stats().replans, 1, "{}", profile.name);
        let plan = m.plan().unwrap();
        assert_ne!(plan, &first, "a different placement");
        let t = taken.hpa().as_u64();
        assert!(
            plan.pamt_ranges().all(|(b, s)| t < b || t >= b + s),
            "the new plan avoids the page"
        );
        let m = m.init_extensions().unwrap();
        assert_eq!(sim.page_state(taken), Some(PageState::Host));
        free_all(&sim, &[mine]);
        assert_ready(&sim, &m, &profile, "re-planned");
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn configure_refuses_when_the_platform_cannot_give_any_pamt_and_can_retry() {
    let desc = small(Profile::tdx_1_5());
    let sim = Simulator::new(desc.clone()).unwrap();
    let input = desc.plan_input();
    let m = TdxModule::init(&sim, &sim).unwrap();
    let held = exhaust(&sim);
    let Err(r) = m.configure(&input) else {
        panic!("nothing can be allocated");
    };
    let ConfigureLeft::Unchanged(handle) = r.returned else {
        panic!("refused, not must-reload: {:?}", r.error)
    };
    // Each plan's first PAMT is refused; after REPLAN_LIMIT re-plans the
    // last refusal is the error.
    let BringUpError::Platform {
        step: Step::Allocate,
        error: PlatformError::OutOfMemory { placement, .. },
    } = &r.error
    else {
        panic!("{:?}", r.error);
    };
    assert!(matches!(placement, Placement::Exact(_)), "{placement:?}");
    assert_eq!(handle.stats().replans, REPLAN_LIMIT);
    assert_eq!(calls_of(&sim, Leaf::SYS_CONFIG), 0);
    free_all(&sim, &held);
    assert_all_free(&sim, "out of memory");
    let m = handle.configure(&input).unwrap();
    let m = m.init_extensions().unwrap();
    assert_ready(&sim, &m, &desc.profile, "configured once memory came back");
}

/// A refused `configure` hands the handle back for a retry; the retry
/// should be able to re-plan around what the platform cannot give, as the
/// first call could.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_retried_configure_can_replan_again() {
    let desc = small(Profile::tdx_1_5());
    let sim = Simulator::new(desc.clone()).unwrap();
    let input = desc.plan_input();
    let m = TdxModule::init(&sim, &sim).unwrap();
    let held = exhaust(&sim);
    let Err(r) = m.configure(&input) else {
        panic!("nothing can be allocated");
    };
    let ConfigureLeft::Unchanged(handle) = r.returned else {
        panic!("refused, not must-reload: {:?}", r.error)
    };
    free_all(&sim, &held);
    let m = handle;
    // Memory is back, except one page of the first plan's first PAMT.
    let first = m.plan_for(&input).unwrap();
    let (base, bytes) = (first.tdmrs[0].pamt.l4k.0, first.tdmrs[0].pamt.bytes());
    let mine = sim
        .alloc_pages(1, 1, Placement::Exact(Pfn::new((base + bytes / 2) / 4096)))
        .unwrap();
    let m = m
        .configure(&input)
        .unwrap_or_else(|e| panic!("retry: {:?}", e.error));
    let m = m.init_extensions().unwrap();
    free_all(&sim, &[mine]);
    assert_ready(&sim, &m, &desc.profile, "re-planned on retry");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn init_extensions_refuses_when_the_pool_cannot_be_allocated_and_can_retry() {
    let desc = small(Profile::tdx_1_5_ext());
    let sim = Simulator::new(desc.clone()).unwrap();
    let m = TdxModule::init(&sim, &sim).unwrap();
    let m = m.configure(&desc.plan_input()).unwrap();
    let mut held = exhaust(&sim);
    // Leave one page: the root page fits, the 1000-page pool does not.
    give_back(&sim, &mut held, 1);
    let r = m.init_extensions().unwrap_err();
    assert_eq!(
        r.error,
        BringUpError::Platform {
            step: Step::ExtMemAdd { window: 0 },
            error: PlatformError::OutOfMemory {
                count: 1000,
                align: 1,
                placement: Placement::Anywhere
            }
        }
    );
    assert_eq!(calls_of(&sim, Leaf::EXT_MEM_ADD), 0);
    assert_eq!(sim.accounting().free, 1, "the root page came back");
    free_all(&sim, &held);
    let m = r.returned.init_extensions().unwrap();
    assert_ready(
        &sim,
        &m,
        &desc.profile,
        "pool donated once memory came back",
    );
}

// ---------------------------------------------------------------------------
// 4. The partial-write erratum
// ---------------------------------------------------------------------------

/// After TDH.SYS.CONFIG, on a platform with `X86_BUG_TDX_PW_MCE`, a failure
/// clears every PAMT with MOVDIR64B before the pages return to the
/// allocator.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn pw_mce_platform_clears_pamts_after_a_failed_configuration() {
    for (label, fault) in [
        (
            "KEY.CONFIG fails",
            Fault::status(Leaf::SYS_KEY_CONFIG, 2, TdxStatus::OPERAND_INVALID),
        ),
        (
            "TDMR.INIT fails",
            Fault::status(Leaf::SYS_TDMR_INIT, 700, TdxStatus::OPERAND_INVALID),
        ),
    ] {
        let mut desc = small(Profile::tdx_1_5());
        desc.errata.tdx_pw_mce = true;
        let plan = reference_plan(&desc);
        let sim = Simulator::new(desc.clone()).unwrap();
        sim.inject(fault);
        let m = TdxModule::init(&sim, &sim).unwrap();
        let Err(r) = m.configure(&desc.plan_input()) else {
            panic!("{label}: must reload");
        };
        assert!(
            matches!(r.returned, ConfigureLeft::MustReload { .. }),
            "{label}"
        );
        assert!(matches!(r.error, BringUpError::Seamcall { .. }), "{label}");
        assert_eq!(
            sim.stats().movdir64b_pages,
            pages_of(&plan),
            "{label}: every PAMT page cleared (violations: {:?})",
            sim.violations().first()
        );
        assert_all_free(&sim, label);
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn without_the_erratum_no_pamt_is_cleared() {
    let desc = small(Profile::tdx_1_5());
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::status(
        Leaf::SYS_TDMR_INIT,
        700,
        TdxStatus::OPERAND_INVALID,
    ));
    let m = TdxModule::init(&sim, &sim).unwrap();
    let Err(r) = m.configure(&desc.plan_input()) else {
        panic!("must reload");
    };
    assert!(matches!(r.returned, ConfigureLeft::MustReload { .. }));
    assert_eq!(sim.stats().movdir64b_pages, 0);
    assert_all_free(&sim, "no erratum");
}

// ---------------------------------------------------------------------------
// 5. Extensions decided step by step
// ---------------------------------------------------------------------------

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn init_extensions_issues_only_what_the_module_asks_for() {
    let plain = Profile::tdx_1_5();
    let mut none = Profile::tdx_1_5_ext();
    none.memory_pool_required_pages = 0;
    none.ext_required = false;
    let mut pool_only = Profile::tdx_1_5_ext();
    pool_only.ext_required = false;
    let mut init_only = Profile::tdx_1_5_ext();
    init_only.memory_pool_required_pages = 0;
    let mut one_window = Profile::tdx_1_5_ext();
    one_window.memory_pool_required_pages = 1;
    let mut full_window = Profile::tdx_1_5_ext();
    full_window.memory_pool_required_pages = 512;
    let mut three_windows = Profile::tdx_1_5_ext();
    three_windows.memory_pool_required_pages = 1025;
    for (label, profile, mem_add, ext_init) in [
        ("no Extensions", plain, 0, 0),
        ("Extensions, nothing required", none, 0, 0),
        ("pool only", pool_only, 2, 0),
        ("EXT.INIT only", init_only, 0, 1),
        ("pool of 1 page", one_window, 1, 1),
        ("pool of 512 pages", full_window, 1, 1),
        ("pool of 1025 pages", three_windows, 3, 1),
    ] {
        let desc = small(profile.clone());
        let sim = Simulator::new(desc.clone()).unwrap();
        let m = TdxModule::init(&sim, &sim).unwrap();
        let m = m.configure(&desc.plan_input()).unwrap();
        let before = sim.stats().total_seamcalls();
        let m = m.init_extensions().unwrap();
        assert_eq!(calls_of(&sim, Leaf::EXT_MEM_ADD), mem_add, "{label}");
        assert_eq!(calls_of(&sim, Leaf::EXT_INIT), ext_init, "{label}");
        assert_eq!(
            sim.stats().total_seamcalls() - before,
            mem_add + ext_init,
            "{label}"
        );
        assert_ready(&sim, &m, &profile, label);
    }
}

// ---------------------------------------------------------------------------
// 6. Seeded random faults
// ---------------------------------------------------------------------------

/// One seeded run; returns how it ended and how many faults fired.
fn random_run(seed: u64, per_million: u32) -> (Outcome, usize) {
    let desc = small(Profile::tdx_1_5_ext());
    let label = format!("seed {seed} rate {per_million}");
    let input = desc.plan_input();
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject_random(seed, per_million);
    let fired = || sim.fired_faults().len();
    let m = match TdxModule::init(&sim, &sim) {
        Ok(m) => m,
        Err(r) => {
            assert!(matches!(r.error, BringUpError::Seamcall { .. }), "{label}");
            assert_all_free(&sim, &label);
            return (Outcome::InitRefused, fired());
        }
    };
    let mut outcome = Outcome::Ready;
    let mut m = m;
    let m = loop {
        match m.configure(&input) {
            Ok(m) => break m,
            Err(r) if matches!(r.returned, ConfigureLeft::Unchanged(_)) => {
                assert_all_free(&sim, &label);
                outcome = Outcome::ConfigRefusedThenReady;
                let ConfigureLeft::Unchanged(handle) = r.returned else {
                    unreachable!()
                };
                m = handle;
            }
            Err(r) => {
                assert!(
                    matches!(
                        r.error,
                        BringUpError::Seamcall {
                            step: Step::KeyConfig(_) | Step::TdmrInit(_),
                            ..
                        }
                    ),
                    "{label}: {:?}",
                    r.error
                );
                assert_all_free(&sim, &label);
                return (Outcome::MustReload, fired());
            }
        }
    };
    let pamt = pages_of(m.plan().unwrap());
    let mut m = m;
    for _ in 0..10 {
        match m.init_extensions() {
            Ok(m) => {
                assert_ready(&sim, &m, &desc.profile, &label);
                return (outcome, fired());
            }
            Err(r) => {
                outcome = Outcome::ExtRefusedThenReady;
                let a = sim.accounting();
                assert_eq!(a.module, pamt + r.returned.pool_pages(), "{label}");
                assert_eq!(a.host, 0, "{label}");
                sim.check_invariants()
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                m = r.returned;
            }
        }
    }
    panic!("{label}: extensions never finished");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn seeded_random_faults_end_in_success_or_a_typed_error() {
    let mut tally = std::collections::BTreeMap::new();
    let mut total_fired = 0;
    for seed in 0..50u64 {
        let rate = [50_000, 300_000, 900_000][seed as usize % 3];
        let r = std::panic::catch_unwind(|| random_run(seed, rate));
        let (outcome, fired) = r.unwrap_or_else(|_| panic!("seed {seed} rate {rate} panicked"));
        assert!(fired > 0, "seed {seed} rate {rate}: no fault fired");
        total_fired += fired;
        *tally.entry(format!("{outcome:?}")).or_insert(0) += 1;
    }
    eprintln!("random faults, 50 seeds, {total_fired} faults fired: {tally:?}");
    assert!(tally.contains_key("Ready"), "{tally:?}");
    assert!(
        tally.contains_key("MustReload"),
        "the high rate exhausts the entropy retries somewhere: {tally:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. TdxPageArray
// ---------------------------------------------------------------------------

fn page_array_sim() -> Simulator {
    Simulator::new(small(Profile::tdx_1_5())).unwrap()
}

/// The root page's first `n` entries.
fn root_entries(sim: &Simulator, a: &TdxPageArray<Simulator>, n: usize) -> Vec<u64> {
    let mut buf = vec![0u8; n * 8];
    sim.peek(a.root().hpa().as_u64(), &mut buf);
    buf.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; tdx-api unit tests cover the array")]
fn page_array_windows_and_encodings() {
    for count in [1u64, 511, 512, 513, 1000] {
        for contiguous in [true, false] {
            let label = format!("{count} pages, contiguous {contiguous}");
            let sim = page_array_sim();
            let mut a = if contiguous {
                TdxPageArray::alloc_contiguous(&sim, count, Placement::Anywhere)
            } else {
                TdxPageArray::alloc(&sim, count, Placement::Anywhere)
            }
            .unwrap();
            assert_eq!(a.len() as u64, count);
            assert!(!a.is_empty());
            assert_eq!(sim.accounting().host, count + 1, "{label}: pages + root");
            assert!(!a.pages().contains(&a.root()), "{label}");
            let mut offset = 0;
            let mut windows = 0;
            loop {
                let n = a.populate(offset);
                if n == 0 {
                    break;
                }
                windows += 1;
                assert_eq!(n, (count as usize - offset).min(512), "{label}");
                let want: Vec<u64> = a.pages()[offset..offset + n]
                    .iter()
                    .map(|p| p.hpa().as_u64())
                    .collect();
                assert_eq!(root_entries(&sim, &a, n), want, "{label}: root entries");
                let info = a.hpa_list_info();
                assert_eq!(info.list_pfn(), a.root().as_u64(), "{label}");
                assert_eq!(info.first_entry(), 0, "{label}");
                assert_eq!(info.count(), n, "{label}");
                let arr = a.hpa_array_t();
                assert_eq!(arr.count(), n, "{label}");
                if n == 1 {
                    // The single-page form names the data page itself.
                    assert!(arr.is_singleton(), "{label}");
                    assert_eq!(arr.pfn(), a.pages()[offset].as_u64(), "{label}");
                } else {
                    assert!(!arr.is_singleton(), "{label}");
                    assert_eq!(arr.pfn(), a.root().as_u64(), "{label}");
                }
                offset += n;
            }
            assert_eq!(windows, count.div_ceil(512) as usize, "{label}");
            // SAFETY: the pages were never given to the module.
            unsafe { a.free() };
            assert_all_free(&sim, &label);
        }
    }
}

#[test]
fn page_array_on_a_node() {
    let sim = page_array_sim();
    let a = TdxPageArray::alloc(&sim, 16, Placement::Node(NodeId(1))).unwrap();
    assert!(a.pages().iter().all(|&p| sim.node_of(p) == Some(NodeId(1))));
    // SAFETY: never given to the module.
    unsafe { a.free() };
    assert_all_free(&sim, "node 1");
}

#[test]
fn page_array_release_check_accepts_exactly_the_window() {
    // One page: the single-page form reports the page itself.
    let sim = page_array_sim();
    let mut a = TdxPageArray::alloc(&sim, 1, Placement::Anywhere).unwrap();
    assert_eq!(a.populate(0), 1);
    let page = a.pages()[0].hpa().as_u64();
    let root = a.root().hpa().as_u64();
    assert_eq!(a.check_release(1, page), Ok(()));
    assert_eq!(
        a.check_release(1, root),
        Err(ReleaseError::Hpa {
            expected: page,
            released: root
        })
    );
    assert_eq!(
        a.check_release(0, page),
        Err(ReleaseError::Count {
            given: 1,
            released: 0
        })
    );
    // SAFETY: never given to the module.
    unsafe { a.free() };
    assert_all_free(&sim, "one page");

    // 1000 pages: two windows, the root page reported, its entries checked.
    let sim = page_array_sim();
    let mut a = TdxPageArray::alloc_contiguous(&sim, 1000, Placement::Anywhere).unwrap();
    let root = a.root().hpa().as_u64();
    for (offset, n) in [(0usize, 512usize), (512, 488)] {
        assert_eq!(a.populate(offset), n);
        assert_eq!(a.check_release(n as u64, root), Ok(()));
        for wrong in [n as u64 - 1, n as u64 + 1, 1000] {
            assert_eq!(
                a.check_release(wrong, root),
                Err(ReleaseError::Count {
                    given: n,
                    released: wrong
                })
            );
        }
        let first = a.pages()[offset].hpa().as_u64();
        assert_eq!(
            a.check_release(n as u64, first),
            Err(ReleaseError::Hpa {
                expected: root,
                released: first
            })
        );
        assert_eq!(
            a.check_release(n as u64, root + 4096),
            Err(ReleaseError::Hpa {
                expected: root,
                released: root + 4096
            })
        );
        // Tamper with entry 3 of the root page: the report no longer names
        // the pages given.
        let expected = a.pages()[offset + 3].hpa().as_u64();
        let forged = 0x1234_5000u64;
        // SAFETY: the root page is host memory the array allocated from
        // `sim`; the module does not own it and nothing reads it now.
        unsafe { sim.write_phys(Hpa::new(root + 3 * 8), &forged.to_le_bytes()) };
        assert_eq!(
            a.check_release(n as u64, root),
            Err(ReleaseError::Entry {
                index: 3,
                expected,
                found: forged
            })
        );
        // The last entry, too.
        a.populate(offset);
        let expected = a.pages()[offset + n - 1].hpa().as_u64();
        // SAFETY: as above.
        unsafe { sim.write_phys(Hpa::new(root + (n as u64 - 1) * 8), &0u64.to_le_bytes()) };
        assert_eq!(
            a.check_release(n as u64, root),
            Err(ReleaseError::Entry {
                index: n - 1,
                expected,
                found: 0
            })
        );
        a.populate(offset);
    }
    // A release error means: leak, never free.
    a.leak("release protocol error (test)");
    let acc = sim.accounting();
    assert_eq!((acc.leaked, acc.host, acc.module), (1000, 0, 0));
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; tdx-api unit tests cover the array")]
fn page_array_split_donated_and_free_accounting() {
    for (count, donated) in [
        (1u64, 0usize),
        (1, 1),
        (513, 0),
        (513, 200),
        (1000, 512),
        (1000, 1000),
        (1000, 5000),
    ] {
        for contiguous in [true, false] {
            let label = format!("{count} pages, {donated} donated, contiguous {contiguous}");
            let sim = page_array_sim();
            let a = if contiguous {
                TdxPageArray::alloc_contiguous(&sim, count, Placement::Anywhere)
            } else {
                TdxPageArray::alloc(&sim, count, Placement::Anywhere)
            }
            .unwrap();
            let pages = a.pages().to_vec();
            let root = a.root();
            // SAFETY: no page was given to the module (no SEAMCALL here).
            let given = unsafe { a.split_donated(donated) };
            let kept = (donated as u64).min(count);
            // The runs name exactly the first `kept` pages, in order.
            let listed: Vec<Pfn> = given.iter().flat_map(|r| r.iter()).collect();
            assert_eq!(listed, pages[..kept as usize], "{label}");
            if contiguous && kept > 0 {
                assert_eq!(given.len(), 1, "{label}: one run");
            }
            // The module took nothing here (no SEAMCALL): the "donated"
            // pages are still the host's, the rest and the root are free.
            let acc = sim.accounting();
            assert_eq!(acc.host, kept, "{label}");
            assert_eq!(sim.page_state(root), Some(PageState::Free), "{label}");
            for p in &pages[kept as usize..] {
                assert_eq!(sim.page_state(*p), Some(PageState::Free), "{label}");
            }
            free_all(&sim, &given);
            assert_all_free(&sim, &label);
        }
    }
}

/// The array is bound to the platform that allocated it: with a second
/// platform that owns the very same frame numbers (another simulator of the
/// same machine, whose allocation happens to return the same frames), every
/// operation of the array reads, writes, frees and leaks through the first
/// one only. (Before the binding, each operation took a platform argument,
/// and a safe `split_donated(&b, 0)` freed `a`'s frames into `b`.)
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; tdx-api unit tests cover the array")]
fn page_array_uses_only_the_platform_that_allocated_it() {
    for op in ["free", "split_donated", "leak"] {
        let a = page_array_sim();
        let b = page_array_sim();
        let mut array = TdxPageArray::alloc_contiguous(&a, 600, Placement::Anywhere).unwrap();
        assert!(core::ptr::eq(array.platform(), &a), "{op}");
        // `b` hands out the same frames to its own user, who fills them.
        let first = array.pages()[0];
        let root = array.root();
        let b_pages = b.alloc_pages(1, 1, Placement::Exact(root)).unwrap();
        let b_data = b.alloc_pages(600, 1, Placement::Exact(first)).unwrap();
        let pattern = [0xa5u8; 4096];
        // SAFETY: host memory `b` just gave this test; the module owns none.
        unsafe { b.write_phys(root.hpa(), &pattern) };
        let b_before = b.accounting();

        // populate writes `a`'s root page, not `b`'s.
        assert_eq!(array.populate(0), 512, "{op}");
        let mut in_a = [0u8; 8];
        a.peek(root.hpa().as_u64(), &mut in_a);
        assert_eq!(u64::from_le_bytes(in_a), first.hpa().as_u64(), "{op}");
        let mut in_b = [0u8; 4096];
        b.peek(root.hpa().as_u64(), &mut in_b);
        assert_eq!(in_b, pattern, "{op}: b's page untouched by populate");
        // check_release reads `a`'s root page: `b`'s pattern would fail it.
        assert_eq!(
            array.check_release(512, root.hpa().as_u64()),
            Ok(()),
            "{op}"
        );

        match op {
            // SAFETY: nothing was given to the module (no SEAMCALL).
            "free" => unsafe { array.free() },
            "split_donated" => {
                // SAFETY: as above.
                let kept = unsafe { array.split_donated(100) };
                assert_eq!(kept.iter().map(|r| r.count()).sum::<u64>(), 100);
                assert_eq!(a.accounting().host, 100, "{op}: only the kept pages");
                free_all(&a, &kept);
            }
            "leak" => {
                array.leak("test: leaked into the allocating platform");
                let acc = a.accounting();
                assert_eq!((acc.leaked, acc.host), (600, 0), "{op}");
            }
            _ => unreachable!(),
        }
        if op != "leak" {
            assert_all_free(&a, op);
        }
        assert_eq!(b.accounting(), b_before, "{op}: b's allocator untouched");
        assert_eq!(b.page_state(root), Some(PageState::Host), "{op}");
        assert_eq!(b.page_state(first), Some(PageState::Host), "{op}");
        b.check_invariants().unwrap();
        a.check_invariants().unwrap();
        free_all(&b, &[b_pages, b_data]);
        assert_all_free(&b, op);
    }
}

#[test]
fn page_array_allocation_failure_gives_everything_back() {
    let sim = page_array_sim();
    let total = sim.accounting().total;
    let err = TdxPageArray::alloc_contiguous(&sim, total, Placement::Anywhere).unwrap_err();
    assert_eq!(
        err,
        PlatformError::OutOfMemory {
            count: total,
            align: 1,
            placement: Placement::Anywhere
        }
    );
    assert_all_free(&sim, "contiguous");
    let mut held = exhaust(&sim);
    give_back(&sim, &mut held, 10);
    // The root page and 9 pages fit, the 10th page does not.
    let err = TdxPageArray::alloc(&sim, 20, Placement::Anywhere).unwrap_err();
    assert!(matches!(err, PlatformError::OutOfMemory { count: 1, .. }));
    assert_eq!(sim.accounting().free, 10, "the partial array came back");
    free_all(&sim, &held);
    assert_all_free(&sim, "single pages");
}

/// An "interrupted, resumable" answer from a leaf that is not resumable
/// (here TDH.SYS.KEY.CONFIG and TDH.SYS.INIT) is not taken as
/// success: it is a typed error at that step.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_interruption_from_a_leaf_that_cannot_be_resumed_is_an_error() {
    let desc = small(Profile::tdx_1_5());
    let interrupted = TdxStatus::INTERRUPTED_RESUMABLE;
    let key = seamcall_err(
        Step::KeyConfig(PackageId(0)),
        Leaf::SYS_KEY_CONFIG,
        interrupted,
    );
    let o = run_case(
        &desc,
        &[Fault::status(Leaf::SYS_KEY_CONFIG, 1, interrupted)],
        Some(&key),
        0,
        "KEY.CONFIG interrupted",
    );
    assert_eq!(o, Outcome::MustReload);
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::status(Leaf::SYS_INIT, 1, interrupted));
    let r = TdxModule::init(&sim, &sim).unwrap_err();
    assert_eq!(
        r.error,
        seamcall_err(Step::SysInit, Leaf::SYS_INIT, interrupted)
    );
}

/// Optional TDH.SYS.RD fields (the version, MAX_VCPUS_PER_TD, NUM_CMRS):
/// only TDX_METADATA_FIELD_ID_INCORRECT means "the module has no such
/// field"; any other failure of the read fails `init`. On module 1.5.05
/// the 5th TDH.SYS.RD of `init` reads MAX_VCPUS_PER_TD (after
/// TDX_FEATURES0 and the three version fields).
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_optional_sysinfo_field_is_absent_only_for_field_id_incorrect() {
    let desc = small(Profile::tdx_1_5_05());
    // Unfaulted: 576.
    let sim = Simulator::new(desc.clone()).unwrap();
    let m = TdxModule::init(&sim, &sim).unwrap_or_else(|r| panic!("{:?}", r.error));
    assert_eq!(m.sysinfo().max_vcpus_per_td, Some(576));
    // FIELD_ID_INCORRECT: the field is absent.
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::status(
        Leaf::SYS_RD,
        5,
        TdxStatus::METADATA_FIELD_ID_INCORRECT,
    ));
    let m = TdxModule::init(&sim, &sim).unwrap_or_else(|r| panic!("{:?}", r.error));
    assert_eq!(m.sysinfo().max_vcpus_per_td, None);
    assert_eq!(m.sysinfo().vcpu_limit(), 0xFFFF);
    // A busy answer is retried and the field read.
    let sim = Simulator::new(desc.clone()).unwrap();
    sim.inject(Fault::status(Leaf::SYS_RD, 5, TdxStatus::OPERAND_BUSY));
    let m = TdxModule::init(&sim, &sim).unwrap_or_else(|r| panic!("{:?}", r.error));
    assert_eq!(m.sysinfo().max_vcpus_per_td, Some(576));
    // Any other error is an error, for the version fields and NUM_CMRS
    // too (the 61st read: after MAX_VCPUS_PER_TD come NUM_CPUID_CONFIG and
    // 18 × 3 CPUID fields).
    for (nth, f) in [
        (5, field::MAX_VCPUS_PER_TD),
        (2, field::MAJOR_VERSION),
        (61, field::NUM_CMRS),
    ] {
        let sim = Simulator::new(desc.clone()).unwrap();
        sim.inject(Fault::status(Leaf::SYS_RD, nth, TdxStatus::OPERAND_INVALID));
        let r = TdxModule::init(&sim, &sim).map(|_| ()).unwrap_err();
        assert_eq!(
            r.error,
            seamcall_err(
                Step::ReadMetadata(f),
                Leaf::SYS_RD,
                TdxStatus::OPERAND_INVALID
            ),
            "read {nth}"
        );
    }
}

/// A backend that forwards to the simulator but reports one metadata field
/// (TDH.SYS.RD) as another value: a corrupted or unknown module.
#[derive(Debug)]
struct ReadsAs<'s> {
    sim: &'s Simulator,
    field: tdx::types::metadata::MdFieldId,
    value: u64,
}

// SAFETY: a test double. It forwards every call unchanged except R8 of a
// successful TDH.SYS.RD of `field`, a value the library must check.
unsafe impl tdx::sys::Seamcall for ReadsAs<'_> {
    unsafe fn seamcall(
        &self,
        rax: u64,
        args: &mut tdx::sys::SeamcallArgs,
        shape: tdx::sys::RegShape,
    ) -> TdxStatus {
        let field = args.rdx;
        // SAFETY: forwarded as given.
        let s = unsafe { tdx::sys::Seamcall::seamcall(self.sim, rax, args, shape) };
        let rd = tdx::LeafVersion::from_rax(rax).is_ok_and(|l| l.leaf() == Leaf::SYS_RD);
        if rd && field == self.field.into_raw() && !s.is_error() {
            args.r8 = self.value;
        }
        s
    }
}

/// Bring-up with `field` reading as `value`: the error.
fn bring_up_reading(field: tdx::types::metadata::MdFieldId, value: u64) -> BringUpError {
    let sim = Simulator::new(small(Profile::tdx_1_5())).unwrap();
    let backend = ReadsAs {
        sim: &sim,
        field,
        value,
    };
    let e = match TdxModule::init(&backend, &sim) {
        Err(r) => r.error,
        Ok(m) => {
            // Read at init; if it got through, the plan must refuse it.
            let input = small(Profile::tdx_1_5()).plan_input();
            m.configure(&input).map(|_| ()).unwrap_err().error
        }
    };
    assert_all_free(&sim, "metadata refused");
    e
}

/// CMRs a module reports are checked before the planner does arithmetic
/// on them (found by the hostile-module test: a garbled CMR base overflowed
/// `base + size`).
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn cmrs_past_the_address_space_or_too_many_are_refused_at_init() {
    use tdx::types::metadata::field;
    const PA_END: u64 = 1 << 52;
    let base = field::cmr_base(0).unwrap();
    assert_eq!(
        bring_up_reading(base, u64::MAX - 4095),
        BringUpError::MetadataOutOfRange {
            field: base,
            value: u64::MAX - 4095,
            max: PA_END,
        }
    );
    let size = field::cmr_size(0).unwrap();
    let e = bring_up_reading(size, u64::MAX);
    assert!(
        matches!(e, BringUpError::MetadataOutOfRange { field, value: u64::MAX, max } if field == size && max < PA_END),
        "{e:?}"
    );
    assert_eq!(
        bring_up_reading(field::NUM_CMRS, 33),
        BringUpError::MetadataOutOfRange {
            field: field::NUM_CMRS,
            value: 33,
            max: 32,
        }
    );
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_metadata_value_wider_than_its_field_is_an_error_not_cut() {
    let e = bring_up_reading(tdx::types::metadata::field::MAX_TDMRS, 0x1_0040);
    assert_eq!(
        e,
        BringUpError::MetadataOutOfRange {
            field: tdx::types::metadata::field::MAX_TDMRS,
            value: 0x1_0040,
            max: 0xFFFF,
        }
    );
}
