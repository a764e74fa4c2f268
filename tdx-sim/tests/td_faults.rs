//! Fault injection on the TD leaves (the BUSY, interrupted and entropy
//! statuses Intel's `tdh_*.c` can return):
//!
//! - `transient_statuses(leaf)` for every TD leaf is exactly the set of
//!   busy/entropy/epoch statuses the model lists for that leaf: OPERAND_BUSY
//!   on each operand whose lock the leaf takes,
//!   PREVIOUS_TLB_EPOCH_BUSY at TRACK, RND_NO_ENTROPY and the PCONFIG
//!   statuses at key generation, and "resumable" for CACHE.WB;
//! - a scripted status is returned as it is, changes nothing, and the retry
//!   succeeds, for every TD leaf;
//! - a whole TD lifecycle under seeded random faults completes through a
//!   host that retries what the module says may be retried, and the faults
//!   are reproducible from the seed.
//!
//! Fault::stop_early on TDH.PHYMEM.CACHE.WB (interrupted, resumed with
//! RCX=1 on the same package) is in `td_teardown.rs`, next to the other
//! CACHE.WB rules.

// UNSAFETY: `Retrying` implements the `unsafe trait`s `Seamcall` and
// `Platform` by forwarding to the simulator, whose memory is simulated.
#![allow(unsafe_code)]

mod td_support;

use std::collections::BTreeSet;

use td_support::*;
use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
    HardwareInfo, NodeId, PackageId, Placement, PlatformError,
};
use tdx_sim::{Fault, FaultAction, KotState, Simulator, transient_statuses};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{
    Gpa, Hpa, Leaf, LeafVersion, OperandId, Pfn, PfnRun, TdxStatus, metadata::PamtPageType,
};

// ---------------------------------------------------------------------------
// transient_statuses(leaf) against the model
// ---------------------------------------------------------------------------

/// The statuses of the model for `leaf` that a host must retry.
fn model_transients(leaf: Leaf) -> Vec<TdxStatus> {
    use OperandId as O;
    let b = busy;
    match leaf {
        // TDR_X(RCX); KOT lock; RNG for TD_UUID.
        Leaf::MNG_CREATE => vec![b(O::RCX), b(O::KOT), TdxStatus::RND_NO_ENTROPY],
        // TDR_X(RCX); PCONFIG as in TDH.SYS.KEY.CONFIG.
        Leaf::MNG_KEY_CONFIG => vec![b(O::RCX), b(O::KET), TdxStatus::KEY_GENERATION_FAILED],
        // TDR_X(RDX); EXPL(RCX); key generation at the sixth page.
        Leaf::MNG_ADDCX => vec![b(O::RDX), b(O::RCX), TdxStatus::RND_NO_ENTROPY],
        // TDR_X(RCX); TDCS() without the op-state lock.
        Leaf::MNG_INIT => vec![b(O::RCX)],
        // TDR_S(RDX); op-state lock; EXPL(RCX).
        Leaf::VP_CREATE => vec![b(O::RDX), b(O::OP_STATE), b(O::RCX)],
        // EXPL(RDX); TDR_IMPL; op-state lock; EXPL(RCX).
        Leaf::VP_ADDCX => vec![b(O::RDX), b(O::TDR), b(O::OP_STATE), b(O::RCX)],
        // EXPL(RCX); TDR_IMPL; op-state lock.
        Leaf::VP_INIT => vec![b(O::RCX), b(O::TDR), b(O::OP_STATE)],
        // EXPL(RCX); TDR_IMPL; no TDCS().
        Leaf::VP_FLUSH => vec![b(O::RCX), b(O::TDR)],
        // TDR_S(RDX); op-state lock; SWALK tree + entry; EXPL(R8).
        Leaf::MEM_SEPT_ADD => vec![
            b(O::RDX),
            b(O::OP_STATE),
            b(O::SEPT_TREE),
            b(O::RCX),
            b(O::R8),
        ],
        // TDR_S(RDX); op-state lock; SWALK; the child page's PAMT lock
        // (RCX); the same locks for REMOVE, BLOCK and
        // UNBLOCK.
        Leaf::MEM_SEPT_REMOVE
        | Leaf::MEM_PAGE_REMOVE
        | Leaf::MEM_RANGE_BLOCK
        | Leaf::MEM_RANGE_UNBLOCK => vec![b(O::RDX), b(O::OP_STATE), b(O::SEPT_TREE), b(O::RCX)],
        // TDR_X(RDX); no op-state lock, no tree lock; EXPL(R8).
        Leaf::MEM_PAGE_ADD => vec![b(O::RDX), b(O::R8)],
        // TDR_S(RDX); op-state lock; SWALK; free-range check on R8.
        Leaf::MEM_PAGE_AUG => vec![
            b(O::RDX),
            b(O::OP_STATE),
            b(O::SEPT_TREE),
            b(O::RCX),
            b(O::R8),
        ],
        // TDR_S(RCX); op-state lock; epoch lock; previous epoch.
        Leaf::MEM_TRACK => vec![
            b(O::RCX),
            b(O::OP_STATE),
            b(O::TD_EPOCH),
            TdxStatus::PREVIOUS_TLB_EPOCH_BUSY,
        ],
        // TDR_X(RDX) only (the TDCS checks without the op-state lock).
        Leaf::MR_EXTEND => vec![b(O::RDX)],
        // TDR_X(RCX).
        Leaf::MR_FINALIZE => vec![b(O::RCX)],
        // TDR_X(RCX); KOT lock.
        Leaf::MNG_VPFLUSHDONE | Leaf::MNG_KEY_FREEID => vec![b(O::RCX), b(O::KOT)],
        // WBT mutex; KOT.
        Leaf::PHYMEM_CACHE_WB => vec![b(O::WBCACHE), b(O::KOT)],
        // The PAMT walk's lock; TDR_IMPL of the owner.
        Leaf::PHYMEM_PAGE_RECLAIM => vec![b(O::RCX), b(O::TDR)],
        // EXPL(page, shared).
        Leaf::PHYMEM_PAGE_WBINVD => vec![b(O::RCX)],
        // A no-op.
        Leaf::MNG_KEY_RECLAIMID => vec![],
        _ => panic!("{leaf} is not a TD leaf of the model"),
    }
}

/// Statuses the model allows on top of the required ones (a lock the model
/// does not list but the leaf plausibly takes).
fn model_may(leaf: Leaf) -> Vec<TdxStatus> {
    match leaf {
        // PAGE.ADD walks without the tree lock but may lock the entry.
        Leaf::MEM_PAGE_ADD => vec![busy(OperandId::RCX)],
        _ => vec![],
    }
}

fn names(set: &BTreeSet<u64>) -> Vec<String> {
    set.iter()
        .map(|&s| TdxStatus::from_raw(s).to_string())
        .collect()
}

/// The simulator's transient statuses for `leaf` equal the model's.
fn assert_transients_match(leaf: Leaf, resumable: bool) {
    let (got, res) = transient_statuses(leaf);
    let got: BTreeSet<u64> = got.iter().map(|s| s.raw()).collect();
    let must: BTreeSet<u64> = model_transients(leaf).iter().map(|s| s.raw()).collect();
    let may: BTreeSet<u64> = model_may(leaf).iter().map(|s| s.raw()).collect();
    let missing: BTreeSet<u64> = must.difference(&got).copied().collect();
    let extra: BTreeSet<u64> = got
        .iter()
        .filter(|s| !must.contains(s) && !may.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{leaf}: missing {:?}, not returnable {:?}",
        names(&missing),
        names(&extra)
    );
    assert_eq!(res, resumable, "{leaf}: resumable");
}

macro_rules! transients {
    ($($(#[$m:meta])* $name:ident: $leaf:ident, $resumable:expr;)*) => {
        $(
            #[test]
            $(#[$m])*
            fn $name() {
                assert_transients_match(Leaf::$leaf, $resumable);
            }
        )*
    };
}

transients! {
    transients_mng_create: MNG_CREATE, false;
    transients_mng_key_config: MNG_KEY_CONFIG, false;
    transients_mng_addcx: MNG_ADDCX, false;
    transients_mng_init: MNG_INIT, false;
    transients_vp_create: VP_CREATE, false;
    transients_vp_addcx: VP_ADDCX, false;
    transients_vp_init: VP_INIT, false;
    transients_vp_flush: VP_FLUSH, false;
    transients_mem_sept_add: MEM_SEPT_ADD, false;
    transients_mem_sept_remove: MEM_SEPT_REMOVE, false;
    transients_mem_page_add: MEM_PAGE_ADD, false;
    transients_mem_page_aug: MEM_PAGE_AUG, false;
    transients_mem_range_block: MEM_RANGE_BLOCK, false;
    transients_mem_range_unblock: MEM_RANGE_UNBLOCK, false;
    transients_mem_track: MEM_TRACK, false;
    transients_mem_page_remove: MEM_PAGE_REMOVE, false;
    transients_mr_extend: MR_EXTEND, false;
    transients_mr_finalize: MR_FINALIZE, false;
    transients_mng_vpflushdone: MNG_VPFLUSHDONE, false;
    transients_phymem_cache_wb: PHYMEM_CACHE_WB, true;
    transients_mng_key_freeid: MNG_KEY_FREEID, false;
    transients_phymem_page_reclaim: PHYMEM_PAGE_RECLAIM, false;
    transients_phymem_page_wbinvd: PHYMEM_PAGE_WBINVD, false;
    transients_mng_key_reclaimid: MNG_KEY_RECLAIMID, false;
}

/// Every TD leaf that can fail transiently has something a fault can
/// inject (a status, or an interruption).
#[test]
fn every_td_leaf_has_transient_statuses() {
    let leaves = [
        Leaf::MNG_CREATE,
        Leaf::MNG_KEY_CONFIG,
        Leaf::MNG_ADDCX,
        Leaf::MNG_INIT,
        Leaf::VP_CREATE,
        Leaf::VP_ADDCX,
        Leaf::VP_INIT,
        Leaf::VP_FLUSH,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_SEPT_REMOVE,
        Leaf::MEM_PAGE_ADD,
        Leaf::MEM_PAGE_AUG,
        Leaf::MEM_RANGE_BLOCK,
        Leaf::MEM_RANGE_UNBLOCK,
        Leaf::MEM_TRACK,
        Leaf::MEM_PAGE_REMOVE,
        Leaf::MEM_PAGE_DEMOTE,
        Leaf::MEM_PAGE_PROMOTE,
        Leaf::MR_EXTEND,
        Leaf::MR_FINALIZE,
        Leaf::MNG_VPFLUSHDONE,
        Leaf::PHYMEM_CACHE_WB,
        Leaf::MNG_KEY_FREEID,
        Leaf::PHYMEM_PAGE_RECLAIM,
    ];
    let empty: Vec<Leaf> = leaves
        .into_iter()
        .filter(|&l| {
            let (s, resumable) = transient_statuses(l);
            s.is_empty() && !resumable
        })
        .collect();
    assert!(empty.is_empty(), "no transient status: {empty:?}");
}

// ---------------------------------------------------------------------------
// Scripted statuses: returned as they are, nothing changes, retry works
// ---------------------------------------------------------------------------

/// What a test can see of the TD's state without changing it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    accounting: tdx_sim::Accounting,
    kot: KotState,
    pamt: Vec<(PamtPageType, u64, u64, u64)>,
    violations: usize,
}

fn snapshot(sim: &Simulator, td: &Td) -> Snapshot {
    Snapshot {
        accounting: sim.accounting(),
        kot: sim.kot_state(td.hkid),
        pamt: td.runs.iter().map(|r| rdmd(sim, r.first())).collect(),
        violations: sim.violations().len(),
    }
}

/// Calls of `leaf` the simulator's fault plan has counted: every call since
/// the first fault was planned (`plan_start` holds the call counts then).
fn counted(sim: &Simulator, plan_start: &mut Option<tdx_sim::Stats>, leaf: Leaf) -> u64 {
    let now = sim.stats();
    let n = |s: &tdx_sim::Stats| s.seamcalls.get(&leaf.0).copied().unwrap_or(0);
    match plan_start {
        None => {
            *plan_start = Some(now);
            0
        }
        Some(start) => n(&now) - n(start),
    }
}

/// Injects every transient status of `leaf` on its next calls; `call` must
/// return each of them with nothing changed, then `expect`.
fn injected_then_retried(
    sim: &Simulator,
    plan_start: &mut Option<tdx_sim::Stats>,
    td: &Td,
    leaf: Leaf,
    expect: TdxStatus,
    call: impl Fn() -> TdxStatus,
) {
    let (statuses, _) = transient_statuses(leaf);
    assert!(!statuses.is_empty(), "{leaf} has no transient status");
    let base = counted(sim, plan_start, leaf);
    for (i, &s) in statuses.iter().enumerate() {
        sim.inject(Fault::status(leaf, base + i as u64 + 1, s));
    }
    let before = snapshot(sim, td);
    for &s in statuses {
        assert_eq!(call(), s, "{leaf}: the injected status comes back");
        assert_eq!(snapshot(sim, td), before, "{leaf}: {s} changed something");
    }
    assert_eq!(call(), expect, "{leaf}: the retry");
    let fired: Vec<TdxStatus> = sim
        .fired_faults()
        .into_iter()
        .filter(|&(l, _, _)| l == leaf)
        .map(|(_, _, a)| match a {
            FaultAction::Status(s) => s,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(fired, statuses, "{leaf}: every fault fired once, in order");
    sim.check_invariants().unwrap();
}

#[test]
fn injected_mng_create() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Created);
    let tdr = td.page(&sim);
    let hkid = td.hkid + 1;
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_CREATE,
        TdxStatus::SUCCESS,
        || mng_create(&sim, tdr, hkid),
    );
    assert_eq!(sim.kot_state(hkid), KotState::Assigned);
}

#[test]
fn injected_mng_key_config() {
    let sim = host();
    let mut plan = None;
    let td = Td::build(&sim, Stage::Created);
    // A failed KEY.CONFIG leaves the package unconfigured: the retry is a
    // SUCCESS, not KEY_CONFIGURED.
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_KEY_CONFIG,
        TdxStatus::SUCCESS,
        || on(&sim, 0, || mng_key_config(&sim, td.tdr)),
    );
}

#[test]
fn injected_mng_addcx() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::KeysConfigured);
    td.add_tdcs(&sim, 5);
    // The sixth page, where the TDCS key is generated.
    let p = td.page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_ADDCX,
        TdxStatus::SUCCESS,
        || mng_addcx(&sim, p, td.tdr),
    );
    td.tdcs.push(p);
    td.init(&sim, &Params::new());
}

#[test]
fn injected_mng_init() {
    let sim = host();
    let mut plan = None;
    let td = Td::build(&sim, Stage::TdcsAdded);
    let params = Params::new().write(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_INIT,
        TdxStatus::SUCCESS,
        || mng_init(&sim, td.tdr, params).status,
    );
}

#[test]
fn injected_vp_create_addcx_init() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Initialized);
    let tdvpr = td.page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::VP_CREATE,
        TdxStatus::SUCCESS,
        || vp_create(&sim, tdvpr, td.tdr),
    );
    for _ in 0..4 {
        let p = td.page(&sim);
        ok("VP.ADDCX", vp_addcx(&sim, p, tdvpr));
    }
    let p = td.page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::VP_ADDCX,
        TdxStatus::SUCCESS,
        || vp_addcx(&sim, p, tdvpr),
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::VP_INIT,
        TdxStatus::SUCCESS,
        || on(&sim, 2, || vp_init(&sim, tdvpr, 0, 0)),
    );
    // Associated with LP 2 only by the successful call.
    assert_eq!(
        on(&sim, 0, || vp_flush(&sim, tdvpr)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
}

#[test]
fn injected_vp_flush() {
    let sim = host();
    let mut plan = None;
    let td = Td::build(&sim, Stage::Runnable);
    let t = td.vcpus[0].tdvpr;
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::VP_FLUSH,
        TdxStatus::SUCCESS,
        || on(&sim, VCPU_LP, || vp_flush(&sim, t)),
    );
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
}

#[test]
fn injected_sept_add_and_remove() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.page(&sim);
    let flags = tdx_types::regs::TdrAndFlags::with_tdr(td.tdr, false);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_SEPT_ADD,
        TdxStatus::SUCCESS,
        || sept_add(&sim, info(0, 3), flags, p).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_SEPT_REMOVE,
        TdxStatus::SUCCESS,
        || sept_remove(&sim, info(0, 3), td.tdr).status,
    );
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
}

#[test]
fn injected_page_add_and_mr_extend() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.map_sept(&sim, 0, 1);
    let (target, source) = (td.page(&sim), td.page(&sim));
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_PAGE_ADD,
        TdxStatus::SUCCESS,
        || page_add(&sim, info(0, 0), td.tdr, target, source).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MR_EXTEND,
        TdxStatus::SUCCESS,
        || mr_extend(&sim, td.tdr, Gpa::new(0)).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MR_FINALIZE,
        TdxStatus::SUCCESS,
        || mr_finalize(&sim, td.tdr),
    );
    // The failed calls measured nothing: one PAGE.ADD, one MR.EXTEND.
    let mut block = [0u8; 128];
    block[..12].copy_from_slice(b"MEM.PAGE.ADD");
    let mut ext = [0u8; 128];
    ext[..9].copy_from_slice(b"MR.EXTEND");
    use sha2::Digest;
    let mut h = sha2::Sha384::new();
    h.update(block);
    h.update(ext);
    h.update([0u8; 256]);
    assert_eq!(sim.mrtd(td.tdr).unwrap().to_vec(), h.finalize().to_vec());
}

#[test]
fn injected_aug_block_track_unblock_remove() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, 0, 1);
    let p = td.page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_PAGE_AUG,
        TdxStatus::SUCCESS,
        || page_aug(&sim, info(0, 0), td.tdr, p).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_RANGE_BLOCK,
        TdxStatus::SUCCESS,
        || range_block(&sim, info(0, 0), td.tdr).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_TRACK,
        TdxStatus::SUCCESS,
        || track(&sim, td.tdr),
    );
    // Exactly one TRACK took effect: the epoch is 2, so a page blocked now
    // is stamped 2.
    let q = td.aug(&sim, 0x1000, 0);
    ok("BLOCK", range_block(&sim, info(0x1000, 0), td.tdr).status);
    assert_eq!(rdmd(&sim, q).3, 2);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_RANGE_UNBLOCK,
        TdxStatus::SUCCESS,
        || range_unblock(&sim, info(0, 0), td.tdr).status,
    );
    ok("BLOCK", range_block(&sim, info(0, 0), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_PAGE_REMOVE,
        TdxStatus::SUCCESS,
        || page_remove(&sim, info(0, 0), td.tdr).status,
    );
}

#[test]
fn injected_demote_and_promote() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Initialized);
    td.aug(&sim, 2 * MIB, 1);
    let sept = td.page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_PAGE_DEMOTE,
        TdxStatus::SUCCESS,
        || page_demote(&sim, info(2 * MIB, 1), td.tdr, sept).status,
    );
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MEM_PAGE_PROMOTE,
        TdxStatus::SUCCESS,
        || page_promote(&sim, info(2 * MIB, 1), td.tdr).status,
    );
}

#[test]
fn injected_teardown_leaves() {
    let sim = host();
    let mut plan = None;
    let mut td = Td::build(&sim, Stage::Runnable);
    td.flush_vcpus(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_VPFLUSHDONE,
        TdxStatus::SUCCESS,
        || mng_vpflushdone(&sim, td.tdr),
    );
    Td::cache_wb_all(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::MNG_KEY_FREEID,
        TdxStatus::SUCCESS,
        || mng_key_freeid(&sim, td.tdr),
    );
    let tdcs0 = td.tdcs[0];
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::PHYMEM_PAGE_RECLAIM,
        TdxStatus::SUCCESS,
        || page_reclaim(&sim, tdcs0).status,
    );
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn injected_page_wbinvd() {
    let sim = host();
    let mut plan = None;
    let td = Td::build(&sim, Stage::Created);
    let p = page(&sim);
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::PHYMEM_PAGE_WBINVD,
        TdxStatus::SUCCESS,
        || wbinvd(&sim, p, 0),
    );
}

#[test]
fn injected_cache_wb() {
    let sim = host();
    let mut plan = None;
    let td = Td::build(&sim, Stage::Created);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    injected_then_retried(
        &sim,
        &mut plan,
        &td,
        Leaf::PHYMEM_CACHE_WB,
        TdxStatus::SUCCESS,
        || on(&sim, 0, || cache_wb(&sim, false)),
    );
}

// ---------------------------------------------------------------------------
// Seeded random faults over a whole lifecycle
// ---------------------------------------------------------------------------

/// A host that retries what the module says may be retried: a transient
/// status of the leaf (the same call again), and TDX_INTERRUPTED_RESUMABLE
/// from TDH.PHYMEM.CACHE.WB (again with RCX = 1). Everything else goes to
/// the simulator unchanged.
struct Retrying<'a> {
    sim: &'a Simulator,
}

// SAFETY: every call reaches the simulator with the caller's `rax`, the
// caller's `args` (restored before each retry; RCX set to 1 only to resume
// CACHE.WB, as the module requires) and `shape`; the outputs and status
// returned are those of the last call. The simulator keeps the contract.
unsafe impl Seamcall for Retrying<'_> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let leaf = LeafVersion::from_rax(rax).ok().map(LeafVersion::leaf);
        let mut input = *args;
        loop {
            let mut a = input;
            // SAFETY: the caller's contract for this call holds for each
            // retry: the same leaf and operands (simulated memory).
            let s = unsafe { self.sim.seamcall(rax, &mut a, shape) };
            let transient = leaf.is_some_and(|l| transient_statuses(l).0.contains(&s));
            if transient {
                continue;
            }
            if s == TdxStatus::INTERRUPTED_RESUMABLE && leaf == Some(Leaf::PHYMEM_CACHE_WB) {
                input.rcx = 1;
                continue;
            }
            *args = a;
            return s;
        }
    }
}

// SAFETY: every method forwards to the simulator with the same arguments.
unsafe impl FrameAllocator for Retrying<'_> {
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        self.sim.alloc_pages(count, align, placement)
    }
}

// SAFETY: forwards to the simulator with the same arguments.
unsafe impl FrameDeallocator for Retrying<'_> {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        self.sim.leak_pages(run, reason);
    }
    fn dropped_td(&self, report: &tdx_api::td::TeardownReport) {
        self.sim.dropped_td(report);
    }
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.sim.return_guest_frames(run) }
    }
}

// SAFETY: forwards to the simulator with the same arguments.
unsafe impl Cpus for Retrying<'_> {
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
        self.sim.on_cpu(cpu, f);
    }
    fn yield_now(&self) {
        self.sim.yield_now();
    }
}

// SAFETY: forwards to the simulator with the same arguments.
unsafe impl DirectMap for Retrying<'_> {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.write_phys(pa, data) }
    }
    fn direct_map(&self, pa: Hpa) -> Option<core::ptr::NonNull<u8>> {
        self.sim.direct_map(pa)
    }
}

// SAFETY: forwards to the simulator with the same arguments.
unsafe impl CacheMaintenance for Retrying<'_> {
    fn wbinvd_all(&self) {
        self.sim.wbinvd_all();
    }
    fn clflush_page(&self, pfn: Pfn) {
        self.sim.clflush_page(pfn);
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: forwarded contract.
        unsafe { self.sim.movdir64b_clear(run) }
    }
}

// SAFETY: forwards to the simulator with the same arguments.
unsafe impl HardwareInfo for Retrying<'_> {
    fn hardware(&self) -> Hardware {
        self.sim.hardware()
    }
}

impl SimHost for Retrying<'_> {
    fn sim(&self) -> &tdx_sim::Simulator {
        self.sim
    }
}

/// Builds, runs and tears down a TD through a retrying host while seeded
/// random faults hit `per_million` of the calls; returns the faults fired.
fn lifecycle_under_random_faults(seed: u64, per_million: u32) -> Vec<(Leaf, u64, FaultAction)> {
    let sim = host();
    sim.inject_random(seed, per_million);
    let h = Retrying { sim: &sim };
    let mut td = Td::build(&h, Stage::VcpuReady);
    td.add_vcpu(&h, 3);
    td.add_page(&h, 0, &[0x5A; 4096]);
    ok("MR.EXTEND", mr_extend(&h, td.tdr, Gpa::new(0x100)).status);
    ok("MR.FINALIZE", mr_finalize(&h, td.tdr));
    for i in 1..8 {
        td.aug(&h, i * PAGE, 0);
    }
    td.aug(&h, 2 * MIB, 1);
    let sept = td.page(&h);
    ok("BLOCK", range_block(&h, info(2 * MIB, 1), td.tdr).status);
    ok("TRACK", track(&h, td.tdr));
    ok(
        "DEMOTE",
        page_demote(&h, info(2 * MIB, 1), td.tdr, sept).status,
    );
    ok("UNBLOCK", {
        ok("BLOCK", range_block(&h, info(2 * MIB, 1), td.tdr).status);
        ok("TRACK", track(&h, td.tdr));
        range_unblock(&h, info(2 * MIB, 1), td.tdr).status
    });
    for i in 1..4 {
        td.block_track_remove(&h, i * PAGE, 0);
    }
    td.teardown(&h);
    sim.check_invariants().unwrap();
    sim.fired_faults()
}

fn check_fired(fired: &[(Leaf, u64, FaultAction)]) {
    for &(leaf, _, action) in fired {
        let (statuses, resumable) = transient_statuses(leaf);
        match action {
            FaultAction::Status(s) => assert!(statuses.contains(&s), "{leaf}: {s}"),
            FaultAction::StopEarly { .. } => assert!(resumable, "{leaf} is not resumable"),
            other => panic!("{leaf}: random faults do not {other:?}"),
        }
    }
}

#[test]
fn random_faults_over_a_lifecycle_are_reproducible_and_transient() {
    // (`random_faults_over_many_seeds` runs 32 seeds, including 5, 27 and
    // 30, which interrupt CACHE.WB before its first step.)
    let seeds = [0, 11, 26];
    let first = lifecycle_under_random_faults(seeds[0], 300_000);
    assert_eq!(
        first,
        lifecycle_under_random_faults(seeds[0], 300_000),
        "same seed, same faults"
    );
    let mut hit = BTreeSet::new();
    for seed in seeds {
        let fired = lifecycle_under_random_faults(seed, 300_000);
        check_fired(&fired);
        hit.extend(fired.iter().map(|(l, _, _)| l.0));
    }
    // Every TD leaf the lifecycle issues was hit by some fault.
    for leaf in [
        Leaf::MNG_CREATE,
        Leaf::MNG_KEY_CONFIG,
        Leaf::MNG_ADDCX,
        Leaf::MNG_INIT,
        Leaf::VP_CREATE,
        Leaf::VP_ADDCX,
        Leaf::VP_INIT,
        Leaf::VP_FLUSH,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_PAGE_ADD,
        Leaf::MR_EXTEND,
        Leaf::MR_FINALIZE,
        Leaf::MEM_PAGE_AUG,
        Leaf::MEM_RANGE_BLOCK,
        Leaf::MEM_TRACK,
        Leaf::MEM_PAGE_DEMOTE,
        Leaf::MEM_RANGE_UNBLOCK,
        Leaf::MEM_PAGE_REMOVE,
        Leaf::MNG_VPFLUSHDONE,
        Leaf::PHYMEM_CACHE_WB,
        Leaf::MNG_KEY_FREEID,
        Leaf::PHYMEM_PAGE_RECLAIM,
    ] {
        assert!(hit.contains(&leaf.0), "{leaf} was never hit");
    }
}

#[test]
fn random_faults_over_many_seeds() {
    for seed in 0..32 {
        check_fired(&lifecycle_under_random_faults(seed, 300_000));
    }
}
