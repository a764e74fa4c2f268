//! Raw-leaf tests of TD teardown against the simulator: TDH.MNG.VPFLUSHDONE,
//! TDH.PHYMEM.CACHE.WB (start, resume, NO_HKID_READY), TDH.MNG.KEY.FREEID,
//! TDH.MNG.KEY.RECLAIMID, TDH.PHYMEM.PAGE.RECLAIM and PAGE.WBINVD
//! (`tdh_mng_vpflushdone.c`, `tdh_phymem_cache_wb.c`, `tdh_mng_key_*.c`,
//! `tdh_phymem_page_*.c` in Intel's `src/vmm_dispatcher/api_calls/`),
//! teardown in the wrong order (each step refused with the module's status
//! and nothing changed), HKID reuse, and the cache rule the simulator
//! checks on the host side: a page that held a private KeyID's lines must
//! be written back (PAGE.WBINVD with that KeyID, or CACHE.WB for the TD's
//! HKID) before the host allocator gets it back.

mod td_support;

use td_support::*;
use tdx_sim::{Fault, KotState, PageState, Violation};
use tdx_types::{Leaf, OperandId, Pfn, TdxStatus, metadata::PamtPageType};

const RCX: OperandId = OperandId::RCX;

/// A running TD with a bit of everything: two vCPUs on LPs of different
/// packages, a measured page, a 4K and a 2M AUGed page.
fn busy_td(sim: &tdx_sim::Simulator) -> Td {
    let mut td = Td::build(sim, Stage::VcpuReady);
    td.add_vcpu(sim, 2);
    td.add_page(sim, 0, &[0x11; 4096]);
    ok("MR.FINALIZE", mr_finalize(sim, td.tdr));
    td.aug(sim, 0x1000, 0);
    td.aug(sim, 2 * MIB, 1);
    td
}

// ---------------------------------------------------------------------------
// The canonical order
// ---------------------------------------------------------------------------

#[test]
fn canonical_teardown_gives_every_page_back() {
    let sim = host();
    let host_before = sim.accounting().host;
    let td = busy_td(&sim);
    let hkid = td.hkid;
    td.teardown(&sim);
    let a = sim.accounting();
    assert_eq!(a.host, host_before, "{a:?}");
    assert_eq!(sim.kot_state(hkid), KotState::Free);
    sim.check_invariants().unwrap();
}

#[test]
fn teardown_of_a_td_that_never_finished_building() {
    let sim = host();
    // Keys never configured on package 1.
    let hkid = td_hkid(&sim);
    let td = Td::create(&sim, hkid);
    ok(
        "KEY.CONFIG pkg 0",
        on(&sim, 0, || mng_key_config(&sim, td.tdr)),
    );
    td.teardown(&sim);
    // Initialized with a vCPU that was created but never initialized.
    let mut td = Td::build_with(&sim, hkid + 1, Stage::Initialized);
    td.create_vcpu(&sim, 2);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

/// Every step of teardown tried too early, in the order a confused host
/// might: each is refused with the module's status and changes nothing,
/// and the canonical order then completes.
#[test]
fn teardown_in_the_wrong_order_is_refused() {
    let sim = host();
    let mut td = busy_td(&sim);
    let global = global_hkid(&sim);
    let tdcs0 = td.tdcs[0];
    let tdvpr = td.vcpus[0].tdvpr;
    let before = sim.accounting();
    // Reclaim while the TD lives (KEYS_CONFIGURED): child, then TDR.
    assert_eq!(
        page_reclaim(&sim, tdcs0).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    assert_eq!(
        page_reclaim(&sim, td.tdr).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    // WBINVD of a page the TD still owns.
    assert_eq!(wbinvd(&sim, td.tdr, global), metadata(RCX));
    // FREEID before VPFLUSHDONE.
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    // VPFLUSHDONE with vCPUs still associated.
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    // VP.FLUSH on an LP the vCPU is not associated with.
    assert_eq!(
        on(&sim, 0, || vp_flush(&sim, tdvpr)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    // CACHE.WB with nothing flushed yet: a warning, nothing to do.
    let s = cache_wb(&sim, false);
    assert_eq!(s, TdxStatus::NO_HKID_READY_TO_WBCACHE);
    assert!(!s.is_error());
    assert_eq!(sim.accounting(), before);
    assert_eq!(sim.kot_state(td.hkid), KotState::Assigned);
    // One vCPU flushed is not enough.
    ok("VP.FLUSH 0", on(&sim, VCPU_LP, || vp_flush(&sim, tdvpr)));
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    let t1 = td.vcpus[1].tdvpr;
    ok("VP.FLUSH 1", on(&sim, 2, || vp_flush(&sim, t1)));
    for v in &mut td.vcpus {
        v.lp = None;
    }
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(sim.kot_state(td.hkid), KotState::Flushed);
    // BLOCKED: the TD's S-EPT and TDCS leaves are gone (keys no longer
    // configured), KEY.CONFIG and VPFLUSHDONE are out of their state.
    assert_eq!(
        page_remove(&sim, info(0x1000, 0), td.tdr).status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(track(&sim, td.tdr), TdxStatus::TD_KEYS_NOT_CONFIGURED);
    assert_eq!(
        sept_remove(&sim, info(0, 1), td.tdr).status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        range_block(&sim, info(0x1000, 0), td.tdr).status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        mng_key_config(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    assert_eq!(
        mng_vpflushdone(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    assert_eq!(
        page_reclaim(&sim, tdcs0).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    // FREEID before CACHE.WB, and after it ran on one package only.
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    ok("CACHE.WB pkg 0", on(&sim, 0, || cache_wb(&sim, false)));
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    // Another LP of package 0 does not count for package 1.
    ok(
        "CACHE.WB pkg 0 again",
        on(&sim, 1, || cache_wb(&sim, false)),
    );
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    ok("CACHE.WB pkg 1", on(&sim, 3, || cache_wb(&sim, false)));
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    assert_eq!(sim.kot_state(td.hkid), KotState::Free);
    // TEARDOWN: the TDR cannot go while it has children; then it goes last.
    assert_eq!(
        page_reclaim(&sim, td.tdr).status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    assert_eq!(rdmd(&sim, td.tdr).0, PamtPageType::TDR);
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.VPFLUSHDONE
// ---------------------------------------------------------------------------

#[test]
fn vpflushdone_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::VcpuReady);
    let p = page(&sim);
    assert_eq!(mng_vpflushdone(&sim, p), metadata(RCX));
    assert_eq!(mng_vpflushdone(&sim, td.tdcs[0]), metadata(RCX));
    let (s, _) = raw(
        &sim,
        Leaf::MNG_VPFLUSHDONE.v0(),
        [td.tdr.hpa().as_u64() + 1, 0, 0, 0, 0, 0],
    );
    assert_eq!(s, invalid(RCX));
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    let t = td.vcpus[0].tdvpr;
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, t)));
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(
        mng_vpflushdone(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    sim.check_invariants().unwrap();
}

#[test]
fn vpflushdone_in_every_build_stage_without_associated_vcpus() {
    let sim = host();
    let hkid = td_hkid(&sim);
    for (i, stage) in [
        Stage::Created,
        Stage::KeysConfigured,
        Stage::TdcsAdded,
        Stage::Initialized,
    ]
    .into_iter()
    .enumerate()
    {
        let td = Td::build_with(&sim, hkid + i as u16, stage);
        ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
        assert_eq!(sim.kot_state(td.hkid), KotState::Flushed, "{stage:?}");
    }
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.PHYMEM.CACHE.WB
// ---------------------------------------------------------------------------

#[test]
fn cache_wb_rcx_above_one_is_operand_invalid() {
    let sim = host();
    for rcx in [2, 3, u64::MAX] {
        let (s, _) = raw(&sim, Leaf::PHYMEM_CACHE_WB.v0(), [rcx, 0, 0, 0, 0, 0]);
        assert_eq!(s, invalid(RCX), "RCX {rcx}");
    }
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_resume_without_a_start_is_a_resume_error() {
    let sim = host();
    assert_eq!(cache_wb(&sim, true), TdxStatus::WBCACHE_RESUME_ERROR);
    // Also after a completed run on this package.
    let td = Td::build(&sim, Stage::Created);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    ok("CACHE.WB", on(&sim, 0, || cache_wb(&sim, false)));
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, true)),
        TdxStatus::WBCACHE_RESUME_ERROR
    );
    // Nothing FLUSHED that this package still owes? A new start snapshots
    // the FLUSHED KeyIDs again and succeeds.
    ok("CACHE.WB restart", on(&sim, 0, || cache_wb(&sim, false)));
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_with_nothing_flushed_is_a_warning() {
    let sim = host();
    let s = cache_wb(&sim, false);
    assert_eq!(s, TdxStatus::NO_HKID_READY_TO_WBCACHE);
    assert!(!s.is_error() && !s.is_success());
    // A live TD's KeyID is not FLUSHED either.
    let _td = Td::build(&sim, Stage::Runnable);
    assert_eq!(
        on(&sim, 2, || cache_wb(&sim, false)),
        TdxStatus::NO_HKID_READY_TO_WBCACHE
    );
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_interrupted_resumes_on_the_same_package() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    // Calls 1 (the start) and 3 (the first resume on package 0) stop
    // after one unit of work; call 2 is the resume on package 1.
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 1, 1));
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 3, 1));
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, false)),
        TdxStatus::INTERRUPTED_RESUMABLE
    );
    // The other package has nothing to resume.
    assert_eq!(
        on(&sim, 2, || cache_wb(&sim, true)),
        TdxStatus::WBCACHE_RESUME_ERROR
    );
    // Interrupted again on resume, then it finishes (another LP of the
    // same package resumes it: the progress is per package).
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, true)),
        TdxStatus::INTERRUPTED_RESUMABLE
    );
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    ok("CACHE.WB resume", on(&sim, 1, || cache_wb(&sim, true)));
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, true)),
        TdxStatus::WBCACHE_RESUME_ERROR
    );
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    ok("CACHE.WB pkg 1", on(&sim, 2, || cache_wb(&sim, false)));
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_interrupted_before_any_progress_still_resumes() {
    let sim = host();
    let td = Td::build(&sim, Stage::Created);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 1, 0));
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, false)),
        TdxStatus::INTERRUPTED_RESUMABLE
    );
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, true)),
        TdxStatus::SUCCESS,
        "an interrupted CACHE.WB must be resumable"
    );
    sim.check_invariants().unwrap();
}

/// CACHE.WB only clears packages for the KeyIDs that were
/// FLUSHED when it was started; a TD flushed while a CACHE.WB is under way
/// needs a fresh start on that package.
#[test]
fn cache_wb_covers_only_the_keyids_flushed_when_it_started() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let a = Td::build_with(&sim, hkid, Stage::KeysConfigured);
    let b = Td::build_with(&sim, hkid + 1, Stage::KeysConfigured);
    ok("VPFLUSHDONE a", mng_vpflushdone(&sim, a.tdr));
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 1, 1));
    assert_eq!(
        on(&sim, 0, || cache_wb(&sim, false)),
        TdxStatus::INTERRUPTED_RESUMABLE
    );
    ok("VPFLUSHDONE b", mng_vpflushdone(&sim, b.tdr));
    ok(
        "CACHE.WB resume pkg 0",
        on(&sim, 0, || cache_wb(&sim, true)),
    );
    ok("CACHE.WB pkg 1", on(&sim, 2, || cache_wb(&sim, false)));
    ok("KEY.FREEID a", mng_key_freeid(&sim, a.tdr));
    assert_eq!(mng_key_freeid(&sim, b.tdr), TdxStatus::WBCACHE_NOT_COMPLETE);
    ok(
        "CACHE.WB pkg 0 restart",
        on(&sim, 1, || cache_wb(&sim, false)),
    );
    ok("KEY.FREEID b", mng_key_freeid(&sim, b.tdr));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.KEY.FREEID, HKID reuse
// ---------------------------------------------------------------------------

#[test]
fn key_freeid_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::TdcsAdded);
    let p = page(&sim);
    assert_eq!(mng_key_freeid(&sim, p), metadata(RCX));
    assert_eq!(mng_key_freeid(&sim, td.tdcs[2]), metadata(RCX));
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    sim.check_invariants().unwrap();
}

#[test]
fn hkid_is_reusable_only_after_freeid() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let hkid = td.hkid;
    let p = page(&sim);
    assert_eq!(mng_create(&sim, p, hkid), TdxStatus::HKID_NOT_FREE);
    let mut td = td;
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(sim.kot_state(hkid), KotState::Flushed);
    assert_eq!(mng_create(&sim, p, hkid), TdxStatus::HKID_NOT_FREE);
    Td::cache_wb_all(&sim);
    assert_eq!(mng_create(&sim, p, hkid), TdxStatus::HKID_NOT_FREE);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    // Free again while the old TD's pages are still being reclaimed.
    ok("MNG.CREATE reusing the HKID", mng_create(&sim, p, hkid));
    assert_eq!(sim.kot_state(hkid), KotState::Assigned);
    td.reclaim_children(&sim);
    ok("RECLAIM old TDR", page_reclaim(&sim, td.tdr).status);
    // The global KeyID is never free.
    let q = page(&sim);
    assert_eq!(
        mng_create(&sim, q, global_hkid(&sim)),
        TdxStatus::HKID_NOT_FREE
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.KEY.RECLAIMID
// ---------------------------------------------------------------------------

#[test]
fn key_reclaimid_is_a_no_op() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let before = sim.accounting();
    ok("RECLAIMID", mng_key_reclaimid(&sim, td.tdr));
    for rcx in [0, 1, u64::MAX, page(&sim).hpa().as_u64()] {
        ok(
            "RECLAIMID",
            raw(&sim, Leaf::MNG_KEY_RECLAIMID.v0(), [rcx, 7, 7, 7, 7, 7]).0,
        );
    }
    assert_eq!(sim.accounting().module, before.module);
    assert_eq!(sim.kot_state(td.hkid), KotState::Assigned);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.PHYMEM.PAGE.RECLAIM
// ---------------------------------------------------------------------------

/// A TD in TD_TEARDOWN (after FREEID), with a 2M page and a demoted one.
fn torn_down_td(sim: &tdx_sim::Simulator) -> (Td, Pfn) {
    let mut td = busy_td(sim);
    let big = td.aug(sim, 4 * MIB, 1);
    td.flush_vcpus(sim);
    ok("VPFLUSHDONE", mng_vpflushdone(sim, td.tdr));
    Td::cache_wb_all(sim);
    ok("KEY.FREEID", mng_key_freeid(sim, td.tdr));
    (td, big)
}

#[test]
fn reclaim_outputs_type_owner_and_level() {
    let sim = host();
    let (td, big) = torn_down_td(&sim);
    let owner = td.tdr.hpa().as_u64();
    let tdvpr = td.vcpus[0].tdvpr;
    let tdcx = td.vcpus[0].tdcx[0];
    for (p, pt, level) in [
        (td.tdcs[0], PamtPageType::TDCX, 0),
        (tdcx, PamtPageType::TDCX, 0),
        (tdvpr, PamtPageType::TDVPR, 0),
        (big, PamtPageType::REG, 1),
    ] {
        let c = page_reclaim(&sim, p);
        ok("RECLAIM", c.status);
        assert_eq!(
            (c.out.page_type, c.out.owner, c.out.level),
            (pt, owner, level),
            "{p:?}"
        );
        assert_eq!(sim.page_state(p), Some(PageState::Host));
        assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
    }
    // A 2M page comes back whole.
    assert_eq!(
        sim.page_state(Pfn::new(big.as_u64() + 511)),
        Some(PageState::Host)
    );
    td.reclaim_children(&sim);
    let c = page_reclaim(&sim, td.tdr);
    ok("RECLAIM TDR", c.status);
    assert_eq!(
        (c.out.page_type, c.out.owner, c.out.level),
        (PamtPageType::TDR, 0, 0)
    );
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn reclaim_checks_in_order() {
    let sim = host();
    let (td, big) = torn_down_td(&sim);
    let lv = Leaf::PHYMEM_PAGE_RECLAIM.v0();
    let p = page(&sim).hpa().as_u64();
    let owner = td.tdr.hpa().as_u64();
    // 1. alignment, KeyID bits, 2^52.
    for rcx in [owner + 0x100, with_hkid(&sim, owner, td.hkid), 1 << 52] {
        assert_eq!(
            raw(&sim, lv, [rcx, 0, 0, 0, 0, 0]).0,
            invalid(RCX),
            "{rcx:#x}"
        );
    }
    // 2. not in an initialized PAMT block.
    assert_eq!(
        raw(&sim, lv, [OUTSIDE_TDMR, 0, 0, 0, 0, 0]).0,
        range_error(RCX)
    );
    assert_eq!(raw(&sim, lv, [0x1000, 0, 0, 0, 0, 0]).0, range_error(RCX));
    // 4. NDA or RSVD. The module fills the outputs only after this check
    // (tdh_phymem_page_reclaim.c), so they read 0 for both.
    let (s, out) = raw(&sim, lv, [p, 0, 0, 0, 0, 0]);
    assert_eq!(s, metadata(RCX));
    assert_eq!((out.rcx, out.rdx, out.r8), (0, 0, 0));
    let (s, out) = raw(&sim, lv, [pamt_page().hpa().as_u64(), 0, 0, 0, 0, 0]);
    assert_eq!(s, metadata(RCX));
    assert_eq!((out.rcx, out.rdx, out.r8), (0, 0, 0));
    // 5. a 4K address inside a 2M page: the leaf is 2M and RCX is not
    // 2M aligned; RCX/RDX/R8 describe that leaf.
    let (s, out) = raw(&sim, lv, [big.hpa().as_u64() + 3 * PAGE, 0, 0, 0, 0, 0]);
    assert_eq!(s, invalid(RCX));
    assert_eq!(
        (out.rcx, out.rdx, out.r8),
        (u64::from(PamtPageType::REG.0), owner, 1)
    );
    // 6. the TDR with children.
    let (s, out) = raw(&sim, lv, [owner, 0, 0, 0, 0, 0]);
    assert_eq!(s, TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
    assert_eq!(
        (out.rcx, out.rdx, out.r8),
        (u64::from(PamtPageType::TDR.0), 0, 0)
    );
    // A double reclaim finds an NDA page.
    ok("RECLAIM", page_reclaim(&sim, td.tdcs[0]).status);
    assert_eq!(page_reclaim(&sim, td.tdcs[0]).status, metadata(RCX));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    assert_eq!(page_reclaim(&sim, td.tdr).status, metadata(RCX));
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn reclaim_before_teardown_is_lifecycle_incorrect_with_outputs() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let owner = td.tdr.hpa().as_u64();
    let (s, out) = raw(
        &sim,
        Leaf::PHYMEM_PAGE_RECLAIM.v0(),
        [td.tdcs[1].hpa().as_u64(), 0, 0, 0, 0, 0],
    );
    assert_eq!(s, TdxStatus::LIFECYCLE_STATE_INCORRECT);
    assert_eq!(
        (out.rcx, out.rdx, out.r8),
        (u64::from(PamtPageType::TDCX.0), owner, 0)
    );
    // In TD_BLOCKED too (after VPFLUSHDONE, before FREEID), for every type.
    let mut td = td;
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    for p in [td.tdcs[0], td.vcpus[0].tdvpr, td.vcpus[0].tdcx[4], td.tdr] {
        assert_eq!(
            page_reclaim(&sim, p).status,
            TdxStatus::LIFECYCLE_STATE_INCORRECT
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn reclaim_takes_mapped_private_and_sept_pages_in_any_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let private = td.add_page(&sim, 0, &[1; 4096]);
    let pt = td.sept_page(0, 1);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    // The S-EPT page before the page it still maps: fine in TEARDOWN.
    let c = page_reclaim(&sim, pt);
    ok("RECLAIM PT", c.status);
    assert_eq!(c.out.page_type, PamtPageType::EPT);
    let c = page_reclaim(&sim, private);
    ok("RECLAIM private", c.status);
    assert_eq!(c.out.page_type, PamtPageType::REG);
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.PHYMEM.PAGE.WBINVD
// ---------------------------------------------------------------------------

#[test]
fn page_wbinvd_needs_a_free_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let big = td.aug(&sim, 2 * MIB, 1);
    let small = td.aug(&sim, 0x1000, 0);
    let lv = Leaf::PHYMEM_PAGE_WBINVD.v0();
    let k = |pa: u64| with_hkid(&sim, pa, td.hkid);
    for (rcx, want) in [
        (k(small.hpa().as_u64()), metadata(RCX)),
        (k(td.tdr.hpa().as_u64()), metadata(RCX)),
        (k(td.tdcs[0].hpa().as_u64()), metadata(RCX)),
        // A 4K page inside a 2M private page: the walk ends at 2M.
        (k(big.hpa().as_u64() + 9 * PAGE), metadata(RCX)),
        (k(pamt_page().hpa().as_u64()), metadata(RCX)),
        (k(small.hpa().as_u64() + 0x40), invalid(RCX)),
        (k(OUTSIDE_TDMR), range_error(RCX)),
    ] {
        assert_eq!(raw(&sim, lv, [rcx, 0, 0, 0, 0, 0]).0, want, "RCX {rcx:#x}");
    }
    // A free page, with any KeyID (the module does not validate it).
    let free = td.page(&sim);
    for hkid in [0, 5, td.hkid, global_hkid(&sim), 63] {
        ok("PAGE.WBINVD", wbinvd(&sim, free, hkid));
    }
    // Removed: now it can be written back.
    let removed = td.block_track_remove(&sim, 0x1000, 0);
    ok("PAGE.WBINVD removed", wbinvd(&sim, removed, td.hkid));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The cache rule (a private KeyID's lines are written back before the page
// goes back to the host)
// ---------------------------------------------------------------------------

#[test]
fn freeing_a_reclaimed_tdr_without_wbinvd_with_the_global_keyid_is_a_violation() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    // The wrong KeyID (the TD's) does not write back the global lines.
    ok(
        "PAGE.WBINVD with the TD's KeyID",
        wbinvd(&sim, td.tdr, td.hkid),
    );
    free_page(&sim, td.tdr);
    let global = global_hkid(&sim);
    assert_eq!(
        sim.violations(),
        vec![Violation::PrivateLinesReachedHost {
            pfn: td.tdr.as_u64(),
            keyid: global,
            how: "freed",
        }]
    );
    assert!(sim.check_invariants().is_err());
}

#[test]
fn a_reclaimed_tdr_written_back_with_the_global_keyid_may_be_freed() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    td.teardown(&sim); // WBINVD with the global KeyID, then frees
    assert!(sim.violations().is_empty());
    sim.check_invariants().unwrap();
}

#[test]
fn freeing_a_removed_page_without_wbinvd_with_the_td_hkid_is_a_violation() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let p = td.aug(&sim, 0x1000, 0);
    let removed = td.block_track_remove(&sim, 0x1000, 0);
    assert_eq!(removed, p);
    // Written back under the global KeyID: not the TD's lines.
    ok("PAGE.WBINVD global", wbinvd(&sim, p, global_hkid(&sim)));
    td.runs.retain(|r| r.first() != p);
    free_page(&sim, p);
    assert_eq!(
        sim.violations(),
        vec![Violation::PrivateLinesReachedHost {
            pfn: p.as_u64(),
            keyid: td.hkid,
            how: "freed",
        }]
    );
    assert!(sim.check_invariants().is_err());
}

#[test]
fn a_removed_page_written_back_with_the_td_hkid_may_be_freed() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let p = td.aug(&sim, 2 * MIB, 1);
    td.block_track_remove(&sim, 2 * MIB, 1);
    // PAGE.WBINVD works on 4K pages: all 512 of the 2M page.
    for i in 0..512 {
        ok(
            "PAGE.WBINVD",
            wbinvd(&sim, Pfn::new(p.as_u64() + i), td.hkid),
        );
    }
    let run = *td.runs.iter().find(|r| r.first() == p).unwrap();
    td.runs.retain(|r| r.first() != p);
    free(&sim, run);
    assert!(sim.violations().is_empty());
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
