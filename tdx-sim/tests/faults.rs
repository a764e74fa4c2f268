//! Fault injection: scripted statuses change nothing and a retry succeeds,
//! `Fault::stop_early` interrupts the resumable Extensions leaves with their
//! resume state saved, and seeded random faults are reproducible and only
//! use statuses the module can return for the leaf (its busy and
//! interrupted results).

// UNSAFETY: the tests issue raw leaves (`tdx_sys::leaf`) and write list pages with `DirectMap::write_phys`, all against the
// simulator, whose memory is simulated.
#![allow(unsafe_code)]

use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Placement,
    platform::on_each_package,
};
use tdx_sim::{
    Fault, FaultAction, MachineDesc, PageState, Profile, Simulator, SysState,
    testkit::{self, BringUpOptions, simple_layout, write_tdmr_infos},
    transient_statuses,
};
use tdx_sys::leaf;
use tdx_types::{
    Hpa, Leaf, OperandId, Pfn, PfnRun, TdxStatus,
    abi::TdmrInfo,
    metadata::{PamtPageType, field},
    regs::{HpaListInfo, SysConfigKeyId},
};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// 2 GiB of RAM at 4 GiB, two packages of two LPs.
fn small(profile: Profile) -> Simulator {
    let desc = MachineDesc::new(vec![(4 * GIB, 6 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile);
    Simulator::new(desc).unwrap()
}

/// One 2 GiB TDMR [4G, 6G) with its PAMT at its top, in a reserved area.
fn small_layout() -> Vec<TdmrInfo> {
    simple_layout(&[(4 * GIB, 6 * GIB)], 2)
}

fn sys_init(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf takes no memory operand.
    unsafe { leaf::tdh_sys_init(sim) }
}

/// `f` on logical processor `lp` (through `Simulator::set_lp`).
fn on_lp<T>(sim: &Simulator, lp: u32, f: impl FnOnce() -> T) -> T {
    let prev = sim.current_lp();
    sim.set_lp(lp);
    let out = f();
    sim.set_lp(prev);
    out
}

fn lp_init(sim: &Simulator, lp: u32) -> TdxStatus {
    on_lp(sim, lp, || {
        // SAFETY: simulated module; the LP is selected for the call (crate
        // contract item 4).
        unsafe { leaf::tdh_sys_lp_init(sim) }
    })
}

fn key_config(sim: &Simulator, lp: u32) -> TdxStatus {
    on_lp(sim, lp, || {
        // SAFETY: simulated module; the LP is selected, packages go one at a
        // time after WBINVD (crate contract item 4).
        unsafe { leaf::tdh_sys_key_config(sim) }
    })
}

fn tdmr_init(sim: &Simulator, base: u64) -> (TdxStatus, u64) {
    // SAFETY: simulated module; the PAMT was handed over at CONFIG.
    let c = unsafe { leaf::tdh_sys_tdmr_init(sim, Hpa::new(base)) };
    (c.status, c.out)
}

fn rdmd(sim: &Simulator, pa: u64) -> (TdxStatus, PamtPageType) {
    // SAFETY: simulated module; RDMD only reads metadata.
    let c = unsafe { leaf::tdh_phymem_page_rdmd(sim, Pfn::new(pa / PAGE)) };
    (c.status, c.out.page_type)
}

fn ext_mem_add(sim: &Simulator, info: HpaListInfo) -> (TdxStatus, HpaListInfo) {
    // SAFETY: simulated module; the listed pages and the list page are
    // simulator pages allocated for this (crate contract items 1-2).
    let c = unsafe { leaf::tdh_ext_mem_add(sim, info) };
    (c.status, c.out)
}

fn ext_init(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf takes no operand.
    unsafe { leaf::tdh_ext_init(sim) }
}

/// Writes `pages` into the list page and returns the HPA_LIST_INFO.
fn write_list(sim: &Simulator, list: PfnRun, pages: &[u64]) -> HpaListInfo {
    let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    // SAFETY: the list page is host memory the test allocated, and no
    // SEAMCALL is running.
    unsafe { sim.write_phys(list.hpa(), &bytes) };
    HpaListInfo::try_new(list.first(), pages.len()).unwrap()
}

/// SYS.INIT, LP.INIT on every LP, CONFIG, WBINVD: ready for KEY.CONFIG.
fn configured(sim: &Simulator) {
    let opts = BringUpOptions {
        stop_after_config: true,
        ..Default::default()
    };
    testkit::bring_up(sim, &small_layout(), opts);
    sim.wbinvd_all();
}

/// An Extensions module in SYS_READY with its TDMR initialized, the pool
/// (1000 frames) and a list page allocated.
fn ext_ready() -> (Simulator, Vec<u64>, PfnRun) {
    let sim = small(Profile::tdx_1_5_ext());
    let opts = BringUpOptions {
        init_ext: false,
        ..Default::default()
    };
    testkit::bring_up(&sim, &small_layout(), opts);
    let pool = sim.alloc_pages(1000, 1, Placement::Anywhere).unwrap();
    let list = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
    let pages = pool.iter().map(|p| p.hpa().as_u64()).collect();
    (sim, pages, list)
}

// ---------------------------------------------------------------------------
// The transient statuses are the ones the model names
// ---------------------------------------------------------------------------

#[test]
fn transient_statuses_match_the_model() {
    let busy_rcx = TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX);
    // the sys leaves take the global lock (SYS_BUSY).
    for leaf in [
        Leaf::SYS_INIT,
        Leaf::SYS_LP_INIT,
        Leaf::SYS_CONFIG,
        Leaf::SYS_SHUTDOWN,
    ] {
        assert_eq!(
            transient_statuses(leaf),
            (&[TdxStatus::SYS_BUSY][..], false)
        );
    }
    // the global lock, PCONFIG busy (KET) and entropy.
    let (k, resumable) = transient_statuses(Leaf::SYS_KEY_CONFIG);
    assert!(!resumable);
    for s in [
        TdxStatus::SYS_BUSY,
        TdxStatus::KEY_GENERATION_FAILED,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::KET),
    ] {
        assert!(k.contains(&s), "{s}");
    }
    // the per-TDMR mutex; the page's PAMT lock.
    assert_eq!(
        transient_statuses(Leaf::SYS_TDMR_INIT),
        (&[busy_rcx][..], false)
    );
    assert_eq!(
        transient_statuses(Leaf::PHYMEM_PAGE_RDMD),
        (&[busy_rcx][..], false)
    );
    // The Extensions leaves are resumable; SYS.RD and LP.SHUTDOWN have nothing.
    assert_eq!(transient_statuses(Leaf::EXT_MEM_ADD), (&[][..], true));
    assert_eq!(transient_statuses(Leaf::EXT_INIT), (&[][..], true));
    assert_eq!(transient_statuses(Leaf::SYS_RD), (&[][..], false));
    assert_eq!(transient_statuses(Leaf::SYS_LP_SHUTDOWN), (&[][..], false));
}

// ---------------------------------------------------------------------------
// Scripted statuses
// ---------------------------------------------------------------------------

#[test]
fn key_config_key_generation_failed_changes_nothing_and_a_retry_succeeds() {
    let sim = small(Profile::tdx_1_5());
    configured(&sim);
    sim.inject(Fault::status(
        Leaf::SYS_KEY_CONFIG,
        1,
        TdxStatus::KEY_GENERATION_FAILED,
    ));
    assert_eq!(key_config(&sim, 0), TdxStatus::KEY_GENERATION_FAILED);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    // The package bit was not set: the retry configures it (SUCCESS, not
    // KEY_CONFIGURED).
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 1), TdxStatus::KEY_CONFIGURED);
    assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    assert_eq!(
        sim.fired_faults(),
        [(
            Leaf::SYS_KEY_CONFIG,
            1,
            FaultAction::Status(TdxStatus::KEY_GENERATION_FAILED)
        )]
    );
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_failure_on_the_last_package_keeps_the_module_not_ready() {
    let sim = small(Profile::tdx_1_5());
    configured(&sim);
    let ket_busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::KET);
    sim.inject(Fault::status(Leaf::SYS_KEY_CONFIG, 2, ket_busy));
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 2), ket_busy);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_init_and_lp_init_sys_busy_change_nothing() {
    let sim = small(Profile::tdx_1_5());
    sim.inject(Fault::status(Leaf::SYS_INIT, 1, TdxStatus::SYS_BUSY));
    sim.inject(Fault::status(Leaf::SYS_LP_INIT, 2, TdxStatus::SYS_BUSY));
    assert_eq!(sys_init(&sim), TdxStatus::SYS_BUSY);
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 1), TdxStatus::SYS_BUSY);
    // LP 1 is not initialized: SYS.RD there says so, and LP.INIT works.
    let rd = || {
        // SAFETY: simulated module; the leaf touches no memory.
        unsafe { leaf::tdh_sys_rd(&sim, field::MAX_TDMRS) }.status
    };
    assert_eq!(on_lp(&sim, 1, rd), TdxStatus::SYS_LP_INIT_NOT_DONE);
    assert_eq!(lp_init(&sim, 1), TdxStatus::SUCCESS);
    assert_eq!(on_lp(&sim, 1, rd), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_config_sys_busy_has_no_side_effect() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    sim.inject(Fault::status(Leaf::SYS_CONFIG, 1, TdxStatus::SYS_BUSY));
    let tdmrs = small_layout();
    let array = write_tdmr_infos(&sim, &tdmrs);
    let key = SysConfigKeyId::new().with_hkid(32);
    let config = || {
        // SAFETY: simulated module; the array and TDMR_INFO pages are
        // simulator pages allocated for this call (crate contract items 1-2).
        unsafe { leaf::tdh_sys_config(&sim, Hpa::new(array), 1, key) }
    };
    assert_eq!(config(), TdxStatus::SYS_BUSY);
    // The leaf did not run: the global KeyID was not reserved.
    assert_eq!(sim.kot_state(32), tdx_sim::KotState::Free);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    assert_eq!(config(), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn tdmr_init_busy_does_not_advance_the_tdmr() {
    let sim = small(Profile::tdx_1_5());
    let busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX);
    let opts = BringUpOptions {
        init_tdmrs: false,
        ..Default::default()
    };
    testkit::bring_up(&sim, &small_layout(), opts);
    // The nth count is per leaf: calls of other leaves do not move it.
    sim.inject(Fault::status(Leaf::SYS_TDMR_INIT, 256, busy));
    let base = 4 * GIB;
    let mut calls = 0;
    let mut faults = 0;
    loop {
        let (s, rdx) = tdmr_init(&sim, base);
        calls += 1;
        if s == busy {
            faults += 1;
            // Call 256 would have completed the first 1 GiB block; it did not.
            assert_eq!(
                rdmd(&sim, base).0,
                TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX)
            );
            continue;
        }
        assert_eq!(s, TdxStatus::SUCCESS);
        if rdx == base + 2 * GIB {
            break;
        }
    }
    assert_eq!(
        (calls, faults),
        (513, 1),
        "512 productive calls and one fault"
    );
    assert_eq!(tdmr_init(&sim, base).0, TdxStatus::TDMR_ALREADY_INITIALIZED);
    assert_eq!(rdmd(&sim, base), (TdxStatus::SUCCESS, PamtPageType::NDA));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Fault::stop_early on the resumable Extensions leaves
// ---------------------------------------------------------------------------

#[test]
fn ext_mem_add_stop_early_resumes_through_first_entry() {
    let (sim, pages, list) = ext_ready();
    let module_before = sim.accounting().module;
    let state = |pa: u64| sim.page_state(Pfn::new(pa / PAGE));
    sim.inject(Fault::stop_early(Leaf::EXT_MEM_ADD, 1, 100));
    sim.inject(Fault::stop_early(Leaf::EXT_MEM_ADD, 3, 0));
    sim.inject(Fault::stop_early(Leaf::EXT_MEM_ADD, 4, 487));

    // Window 0: entries 0..512, interrupted after 100.
    let info = write_list(&sim, list, &pages[..512]);
    let (s, out) = ext_mem_add(&sim, info);
    assert_eq!(s, TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(
        out,
        info.with_first_entry(100),
        "FIRST_ENTRY updated, rest kept"
    );
    assert_eq!(sim.ext_status(), (100, false));
    assert_eq!(state(pages[99]), Some(PageState::Module));
    assert_eq!(state(pages[100]), Some(PageState::Host));
    assert_eq!(ext_mem_add(&sim, out).0, TdxStatus::SUCCESS);
    assert_eq!(sim.ext_status(), (512, false));

    // Window 1: entries 512..1000 (488), interrupted with no progress, then
    // after 487 more, then done.
    let info = write_list(&sim, list, &pages[512..]);
    let (s, out) = ext_mem_add(&sim, info);
    assert_eq!((s, out), (TdxStatus::INTERRUPTED_RESUMABLE, info));
    assert_eq!(sim.ext_status(), (512, false));
    let (s, out) = ext_mem_add(&sim, out);
    assert_eq!(
        (s, out),
        (TdxStatus::INTERRUPTED_RESUMABLE, info.with_first_entry(487))
    );
    assert_eq!(sim.ext_status(), (999, false));
    assert_eq!(ext_mem_add(&sim, out).0, TdxStatus::SUCCESS);

    // Every page was donated exactly once.
    assert_eq!(sim.ext_status(), (1000, false));
    assert_eq!(sim.accounting().module, module_before + 1000);
    for &pa in &pages {
        assert_eq!(state(pa), Some(PageState::Module), "{pa:#x}");
        assert_eq!(rdmd(&sim, pa), (TdxStatus::SUCCESS, PamtPageType::RSVD));
    }
    assert_eq!(
        sim.fired_faults(),
        [
            (Leaf::EXT_MEM_ADD, 1, FaultAction::StopEarly { after: 100 }),
            (Leaf::EXT_MEM_ADD, 3, FaultAction::StopEarly { after: 0 }),
            (Leaf::EXT_MEM_ADD, 4, FaultAction::StopEarly { after: 487 }),
        ]
    );
    assert_eq!(ext_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(sim.ext_status(), (1000, true));
    // SAFETY: the list page is host memory the test allocated and no longer
    // uses.
    unsafe { sim.free_pages(list) };
    sim.check_invariants().unwrap();
}

#[test]
fn ext_init_stop_early_resumes() {
    let (sim, pages, list) = ext_ready();
    for window in pages.chunks(512) {
        let info = write_list(&sim, list, window);
        assert_eq!(ext_mem_add(&sim, info).0, TdxStatus::SUCCESS);
    }
    sim.inject(Fault::stop_early(Leaf::EXT_INIT, 1, 1));
    sim.inject(Fault::stop_early(Leaf::EXT_INIT, 2, 0));
    assert_eq!(ext_init(&sim), TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(sim.ext_status(), (1000, false));
    assert_eq!(ext_init(&sim), TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(sim.ext_status(), (1000, false));
    assert_eq!(ext_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(sim.ext_status(), (1000, true));
    // SAFETY: as in the test above.
    unsafe { sim.free_pages(list) };
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Seeded random faults
// ---------------------------------------------------------------------------

/// Calls `f` until it returns something other than a transient status of
/// `leaf`.
fn retry(leaf: Leaf, mut f: impl FnMut() -> TdxStatus) -> TdxStatus {
    let (transient, _) = transient_statuses(leaf);
    for _ in 0..10_000 {
        let s = f();
        if !transient.contains(&s) {
            return s;
        }
    }
    panic!("{leaf} never got through");
}

/// A bring-up of the Extensions profile that retries every transient
/// status and resumes every interrupted leaf, with random faults at
/// `per_million` from `seed`. Returns the simulator.
fn bring_up_under_random_faults(seed: u64, per_million: u32) -> Simulator {
    let sim = small(Profile::tdx_1_5_ext());
    sim.inject_random(seed, per_million);
    let tdmrs = small_layout();
    assert_eq!(retry(Leaf::SYS_INIT, || sys_init(&sim)), TdxStatus::SUCCESS);
    for lp in 0..sim.cpus() {
        let s = retry(Leaf::SYS_LP_INIT, || lp_init(&sim, lp));
        assert_eq!(s, TdxStatus::SUCCESS);
    }
    let t = tdmrs[0];
    for (b, s) in [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()] {
        sim.alloc_pages(s / PAGE, 1, Placement::Exact(Pfn::new(b / PAGE)))
            .unwrap();
    }
    let array = write_tdmr_infos(&sim, &tdmrs);
    let key = SysConfigKeyId::new().with_hkid(32);
    let s = retry(Leaf::SYS_CONFIG, || {
        // SAFETY: simulated module; the array, TDMR_INFOs and PAMT frames are
        // simulator pages allocated for this (crate contract items 1-2).
        unsafe { leaf::tdh_sys_config(&sim, Hpa::new(array), 1, key) }
    });
    assert_eq!(s, TdxStatus::SUCCESS);
    sim.wbinvd_all();
    on_each_package(&sim, &mut |_, CpuId(lp)| {
        let s = retry(Leaf::SYS_KEY_CONFIG, || key_config(&sim, lp));
        assert_eq!(s, TdxStatus::SUCCESS);
    });
    assert_eq!(sim.module_state(), SysState::Ready);
    let end = t.base() + t.size();
    loop {
        let mut rdx = 0;
        let s = retry(Leaf::SYS_TDMR_INIT, || {
            let (s, r) = tdmr_init(&sim, t.base());
            rdx = r;
            s
        });
        if s == TdxStatus::TDMR_ALREADY_INITIALIZED {
            break;
        }
        assert_eq!(s, TdxStatus::SUCCESS);
        if rdx == end {
            break;
        }
    }
    let pool = sim.alloc_pages(1000, 1, Placement::Anywhere).unwrap();
    let list = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
    let pages: Vec<u64> = pool.iter().map(|p| p.hpa().as_u64()).collect();
    for window in pages.chunks(512) {
        let mut info = write_list(&sim, list, window);
        loop {
            let (s, out) = ext_mem_add(&sim, info);
            if s == TdxStatus::INTERRUPTED_RESUMABLE {
                info = out;
                continue;
            }
            assert_eq!(s, TdxStatus::SUCCESS);
            break;
        }
    }
    while ext_init(&sim) == TdxStatus::INTERRUPTED_RESUMABLE {}
    assert_eq!(sim.ext_status(), (1000, true));
    for &pa in pages.iter().step_by(50) {
        let s = retry(Leaf::PHYMEM_PAGE_RDMD, || rdmd(&sim, pa).0);
        assert_eq!(s, TdxStatus::SUCCESS);
    }
    // SAFETY: the list page is host memory allocated above, no longer used.
    unsafe { sim.free_pages(list) };
    sim
}

#[test]
fn random_faults_are_reproducible_and_only_transient() {
    let a = bring_up_under_random_faults(7, 500_000);
    let b = bring_up_under_random_faults(7, 500_000);
    let fired = a.fired_faults();
    assert!(fired.len() > 50, "only {} faults fired", fired.len());
    assert_eq!(fired, b.fired_faults(), "same seed, same faults");
    assert_eq!(a.stats(), b.stats());
    for &(leaf, _, action) in &fired {
        let (statuses, resumable) = transient_statuses(leaf);
        match action {
            FaultAction::Status(s) => assert!(statuses.contains(&s), "{leaf}: {s}"),
            FaultAction::StopEarly { .. } => assert!(resumable, "{leaf} is not resumable"),
            FaultAction::FailAfter { .. } => panic!("random faults never fail after work"),
        }
    }
    // Both kinds fired, on more than one leaf.
    assert!(
        fired
            .iter()
            .any(|f| matches!(f.2, FaultAction::StopEarly { .. }))
    );
    assert!(fired.iter().any(|f| f.0 == Leaf::SYS_TDMR_INIT));
    let c = bring_up_under_random_faults(8, 500_000);
    assert_ne!(c.fired_faults(), fired, "another seed, other faults");
    for sim in [a, b, c] {
        assert_eq!(sim.module_state(), SysState::Ready);
        sim.check_invariants().unwrap();
    }
}

#[test]
fn random_faults_only_hit_leaves_with_transient_statuses() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
    // Every call that can fault does.
    sim.inject_random(3, 1_000_000);
    for _ in 0..100 {
        // SAFETY: simulated module; the leaf touches no memory.
        let rd = unsafe { leaf::tdh_sys_rd(&sim, field::MAX_TDMRS) };
        assert_eq!((rd.status, rd.out.value), (TdxStatus::SUCCESS, 64));
        // SAFETY: simulated module; the leaf is a no-op.
        let s = unsafe { leaf::tdh_sys_lp_shutdown(&sim) };
        assert_eq!(s, TdxStatus::SUCCESS);
    }
    assert!(sim.fired_faults().is_empty());
    // A leaf the gate refuses never reaches the fault point.
    // SAFETY: simulated module; refused before it runs.
    let c = unsafe { leaf::tdh_sys_tdmr_init(&sim, Hpa::new(4 * GIB)) };
    assert_eq!(c.status, TdxStatus::SYS_NOT_READY);
    // LP.INIT can fault (SYS_BUSY), and does every time.
    let (transient, _) = transient_statuses(Leaf::SYS_LP_INIT);
    for _ in 0..10 {
        assert!(transient.contains(&lp_init(&sim, 1)));
    }
    assert_eq!(sim.fired_faults().len(), 10);
    assert!(sim.fired_faults().iter().all(|f| f.0 == Leaf::SYS_LP_INIT));
    sim.check_invariants().unwrap();
}

#[test]
fn random_faults_with_zero_rate_never_fire() {
    let sim = small(Profile::tdx_1_5());
    sim.inject_random(9, 0);
    let r = testkit::bring_up(&sim, &small_layout(), BringUpOptions::default());
    assert_eq!(r.tdmr_init_calls, 512);
    assert!(sim.fired_faults().is_empty());
    sim.check_invariants().unwrap();
}
