//! Every BUSY result of the TD leaves the simulator models, forced
//! deterministically: a test takes one of the module's locks as another
//! logical processor would (`Simulator::hold`), issues the leaf, and checks
//! the exact status with the module's operand (and the S-EPT details where
//! the module writes them), the output registers as the module leaves them,
//! and that nothing else changed; then it lets the lock go and the same
//! call succeeds. Each leaf's locks are those of its source file in Intel's
//! module (`src/vmm_dispatcher/api_calls/tdh_*.c`), in that order: holding
//! a lock the leaf takes later shows the earlier ones were passed.

mod td_support;

use td_support::*;
use tdx_api::PackageId;
use tdx_sim::{LockMode, ModuleLock, Simulator};
use tdx_sys::SeamcallArgs;
use tdx_types::{
    Gpa, Leaf, LeafVersion, OperandId, Pfn, TdxLevel, TdxStatus,
    metadata::PamtPageType,
    regs::{SeptState, TdrAndFlags},
};

const S: LockMode = LockMode::Shared;
const X: LockMode = LockMode::Exclusive;
const RCX: OperandId = OperandId::RCX;
const RDX: OperandId = OperandId::RDX;
const R8: OperandId = OperandId::R8;
const TDR: OperandId = OperandId::TDR;
const OP_STATE: OperandId = OperandId::OP_STATE;
const SEPT_TREE: OperandId = OperandId::SEPT_TREE;
const TD_EPOCH: OperandId = OperandId::TD_EPOCH;
const KOT: OperandId = OperandId::KOT;
const WBCACHE: OperandId = OperandId::WBCACHE;

fn pa(p: Pfn) -> u64 {
    p.hpa().as_u64()
}

fn pamt(p: Pfn) -> ModuleLock {
    ModuleLock::Pamt {
        pfn: p,
        level: TdxLevel::L4K,
    }
}

fn pamt_2m(p: Pfn) -> ModuleLock {
    ModuleLock::Pamt {
        pfn: p,
        level: TdxLevel::L2M,
    }
}

fn entry(td: &Td, gpa: u64, level: u8) -> ModuleLock {
    ModuleLock::SeptEntry {
        tdr: td.tdr,
        gpa: Gpa::new(gpa),
        level: TdxLevel::from_u8(level).unwrap(),
    }
}

/// What a failed leaf must leave as it was: page counts, the KOT entry of
/// the TD's HKID, the PAMT entry of each page in `pages` (RDMD), the S-EPT
/// entry of each `(gpa, level)` in `gpas` (SEPT.RD, for a TD whose TDCS is
/// usable), the MRTD, and the violations.
fn snapshot(sim: &Simulator, td: &Td, pages: &[Pfn], gpas: &[(u64, u8)]) -> Vec<String> {
    let mut out = vec![
        format!("{:?}", sim.accounting()),
        format!("{:?}", sim.kot_state(td.hkid)),
        format!("{:?}", sim.mrtd(td.tdr)),
        format!("{} violations", sim.violations().len()),
    ];
    for &p in pages.iter().chain([&td.tdr]).chain(&td.tdcs) {
        let m = page_rdmd(sim, p);
        out.push(format!("RDMD {p:?}: {} {:?}", m.status, m.out));
    }
    for &(gpa, level) in gpas {
        let c = sept_rd(sim, info(gpa, level), td.tdr);
        out.push(format!(
            "SEPT.RD {gpa:#x}/{level}: {} {:?}",
            c.status, c.out
        ));
    }
    out
}

/// Issues `lv` with `regs` while `lock` is held in `mode` by someone else,
/// checks that it returns `want`, releases the lock, checks that `snap`
/// is as before, and returns the output registers.
#[track_caller]
fn busy_while_held(
    sim: &Simulator,
    lock: ModuleLock,
    mode: LockMode,
    lv: LeafVersion,
    regs: [u64; 6],
    want: TdxStatus,
    snap: &dyn Fn() -> Vec<String>,
) -> SeamcallArgs {
    let before = snap();
    let held = sim.hold(lock, mode).expect("the test's lock is free");
    let (s, out) = raw(sim, lv, regs);
    drop(held);
    assert_eq!(s, want, "{lv:?} while {lock:?} is held {mode:?}");
    assert_eq!(snap(), before, "{lv:?} got {s} and changed nothing");
    out
}

/// The registers a call leaves: RCX..R11.
fn regs(a: &SeamcallArgs) -> [u64; 6] {
    [a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11]
}

/// `regs` with RCX and RDX cleared (the TDH.MEM.* leaves clear them on
/// entry).
fn cleared(mut r: [u64; 6]) -> [u64; 6] {
    r[0] = 0;
    r[1] = 0;
    r
}

// ---------------------------------------------------------------------------
// TDH.MNG.*
// ---------------------------------------------------------------------------

#[test]
fn mng_create_busy_on_the_new_tdr_and_the_kot() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let td = Td::unassigned(&sim, hkid);
    let lv = Leaf::MNG_CREATE.v0();
    let r = [pa(td.tdr), u64::from(hkid), 0, 0, 0, 0];
    let snap = || snapshot_host(&sim, hkid, &[td.tdr]);
    // TDR_X(RCX) on a page someone else has a PAMT lock on.
    let out = busy_while_held(&sim, pamt(td.tdr), S, lv, r, busy(RCX), &snap);
    assert_eq!(regs(&out), r, "MNG.CREATE has no outputs");
    // Then KOT X.
    let out = busy_while_held(&sim, ModuleLock::Kot, S, lv, r, busy(KOT), &snap);
    assert_eq!(regs(&out), r);
    ok("MNG.CREATE", raw(&sim, lv, r).0);
    assert_eq!(sim.kot_state(hkid), tdx_sim::KotState::Assigned);
    Td::teardown(td, &sim);
    sim.check_invariants().unwrap();
}

/// [`snapshot`] for a page that is no TD's yet.
fn snapshot_host(sim: &Simulator, hkid: u16, pages: &[Pfn]) -> Vec<String> {
    let mut out = vec![
        format!("{:?}", sim.accounting()),
        format!("{:?}", sim.kot_state(hkid)),
    ];
    for &p in pages {
        let m = page_rdmd(sim, p);
        out.push(format!("RDMD {p:?}: {} {:?}", m.status, m.out));
    }
    out
}

#[test]
fn mng_key_config_busy_on_the_tdr() {
    let sim = host();
    let td = Td::build(&sim, Stage::Created);
    let lv = Leaf::MNG_KEY_CONFIG.v0();
    let r = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RCX), &snap);
    // Nothing was configured: the package still takes its key.
    ok("KEY.CONFIG", raw(&sim, lv, r).0);
    assert_eq!(raw(&sim, lv, r).0, TdxStatus::KEY_CONFIGURED);
    on(&sim, 2, || ok("KEY.CONFIG", raw(&sim, lv, r).0));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_addcx_busy_on_the_tdr_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::KeysConfigured);
    let p = td.page(&sim);
    let lv = Leaf::MNG_ADDCX.v0();
    let r = [pa(p), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RDX), &snap);
    busy_while_held(&sim, pamt(p), S, lv, r, busy(RCX), &snap);
    ok("MNG.ADDCX", raw(&sim, lv, r).0);
    td.tdcs.push(p);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_busy_on_the_tdr_clears_rcx() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let params = Params::new().write(&sim);
    td.runs
        .push(tdx_types::PfnRun::try_new(Pfn::containing(params), 1).unwrap());
    let lv = Leaf::MNG_INIT.v0();
    let r = [pa(td.tdr), params.as_u64(), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    let out = busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RCX), &snap);
    assert_eq!(out.rcx, 0, "MNG.INIT clears RCX on entry");
    ok("MNG.INIT", raw(&sim, lv, r).0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_wr_busy_on_the_tdr_then_the_op_state() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let field = tdx_types::metadata::field::TD_MRTD.into_raw();
    let snap = || snapshot(&sim, &td, &[], &[]);
    for lv in [Leaf::MNG_RD.v0(), Leaf::MNG_WR.v0()] {
        let r = [pa(td.tdr), field, 7, u64::MAX, 0, 0];
        // TDR_S(RCX): only an exclusive holder stops it.
        let out = busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(RCX), &snap);
        assert_eq!(out.r8, 0, "R8 is cleared on entry");
        let out = busy_while_held(
            &sim,
            ModuleLock::OpState(td.tdr),
            X,
            lv,
            r,
            busy(OP_STATE),
            &snap,
        );
        assert_eq!(out.r8, 0);
        // Shared holders do not stop it.
        let _tdr = sim.hold(ModuleLock::Tdr(td.tdr), S).unwrap();
        let _op = sim.hold(ModuleLock::OpState(td.tdr), S).unwrap();
        let s = raw(&sim, lv, r).0;
        assert!(!s.is(TdxStatus::OPERAND_BUSY), "{s}");
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vpflushdone_busy_on_the_tdr_then_the_kot() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    let lv = Leaf::MNG_VPFLUSHDONE.v0();
    let r = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RCX), &snap);
    busy_while_held(&sim, ModuleLock::Kot, S, lv, r, busy(KOT), &snap);
    assert_eq!(sim.kot_state(td.hkid), tdx_sim::KotState::Assigned);
    ok("VPFLUSHDONE", raw(&sim, lv, r).0);
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn key_freeid_busy_on_the_tdr_then_the_kot() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    Td::cache_wb_all(&sim);
    let lv = Leaf::MNG_KEY_FREEID.v0();
    let r = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RCX), &snap);
    busy_while_held(&sim, ModuleLock::Kot, S, lv, r, busy(KOT), &snap);
    assert_eq!(sim.kot_state(td.hkid), tdx_sim::KotState::Flushed);
    ok("KEY.FREEID", raw(&sim, lv, r).0);
    assert_eq!(sim.kot_state(td.hkid), tdx_sim::KotState::Free);
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.VP.*
// ---------------------------------------------------------------------------

#[test]
fn vp_create_busy_on_the_tdr_op_state_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.page(&sim);
    let lv = Leaf::VP_CREATE.v0();
    let r = [pa(p), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(RDX), &snap);
    busy_while_held(
        &sim,
        ModuleLock::OpState(td.tdr),
        X,
        lv,
        r,
        busy(OP_STATE),
        &snap,
    );
    busy_while_held(&sim, pamt(p), S, lv, r, busy(RCX), &snap);
    ok("VP.CREATE", raw(&sim, lv, r).0);
    td.vcpus.push(Vcpu {
        tdvpr: p,
        tdcx: Vec::new(),
        lp: None,
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_addcx_busy_on_the_tdvpr_tdr_op_state_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let v = td.create_vcpu(&sim, 0);
    let tdvpr = td.vcpus[v].tdvpr;
    let p = td.page(&sim);
    let lv = Leaf::VP_ADDCX.v0();
    let r = [pa(p), pa(tdvpr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p, tdvpr], &[]);
    busy_while_held(&sim, pamt(tdvpr), S, lv, r, busy(RDX), &snap);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(TDR), &snap);
    busy_while_held(
        &sim,
        ModuleLock::OpState(td.tdr),
        X,
        lv,
        r,
        busy(OP_STATE),
        &snap,
    );
    busy_while_held(&sim, pamt(p), S, lv, r, busy(RCX), &snap);
    ok("VP.ADDCX", raw(&sim, lv, r).0);
    td.vcpus[v].tdcx.push(p);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_init_busy_on_the_tdvpr_tdr_then_the_op_state() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let v = td.create_vcpu(&sim, 5);
    let tdvpr = td.vcpus[v].tdvpr;
    let lv = Leaf::VP_INIT.v0();
    let r = [pa(tdvpr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[tdvpr], &[]);
    busy_while_held(&sim, pamt(tdvpr), S, lv, r, busy(RCX), &snap);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(TDR), &snap);
    busy_while_held(
        &sim,
        ModuleLock::OpState(td.tdr),
        X,
        lv,
        r,
        busy(OP_STATE),
        &snap,
    );
    // Not initialized: no vCPU counted, none associated (VPFLUSHDONE would
    // pass with this one never flushed).
    td.init_vcpu(&sim, v, 1);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_flush_busy_on_the_tdvpr_then_the_tdr() {
    let sim = host();
    let td = Td::build(&sim, Stage::VcpuReady);
    let tdvpr = td.vcpus[0].tdvpr;
    let lv = Leaf::VP_FLUSH.v0();
    let r = [pa(tdvpr), 0, 0, 0, 0, 0];
    on(&sim, VCPU_LP, || {
        let snap = || snapshot(&sim, &td, &[tdvpr], &[]);
        busy_while_held(&sim, pamt(tdvpr), S, lv, r, busy(RCX), &snap);
        busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(TDR), &snap);
    });
    // Still associated: VPFLUSHDONE refuses until the flush goes through.
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_rd_wr_busy_on_the_tdvpr_tdr_then_the_op_state() {
    let sim = host();
    let td = Td::build(&sim, Stage::VcpuReady);
    let tdvpr = td.vcpus[0].tdvpr;
    let snap = || snapshot(&sim, &td, &[tdvpr], &[]);
    let pend_nmi = tdx_types::metadata::field::PEND_NMI.into_raw();
    for lv in [Leaf::VP_RD.v0(), Leaf::VP_WR.v0()] {
        let r = [pa(tdvpr), pend_nmi, 1, 1, 0, 0];
        // The TDVPR shared: an exclusive holder (VP.FLUSH, VP.INIT, or a
        // vCPU in the guest) stops it.
        let out = busy_while_held(&sim, pamt(tdvpr), X, lv, r, busy(RCX), &snap);
        assert_eq!(out.r8, 0, "R8 is cleared on entry");
        busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(TDR), &snap);
        busy_while_held(
            &sim,
            ModuleLock::OpState(td.tdr),
            X,
            lv,
            r,
            busy(OP_STATE),
            &snap,
        );
        // On the vCPU's LP: from another, VCPU_ASSOCIATED.
        ok("VP.RD/WR", on(&sim, VCPU_LP, || raw(&sim, lv, r).0));
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.*
// ---------------------------------------------------------------------------

#[test]
fn sept_add_busy_on_tdr_op_state_tree_parent_entry_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x4000_0000;
    td.map_sept(&sim, gpa, 2);
    let p = td.page(&sim);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let r = [
        pinfo(gpa, 1),
        TdrAndFlags::with_tdr(td.tdr, false).into_bits(),
        pa(p),
        0,
        0,
        0,
    ];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 1)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
        (pamt(p), S, R8),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    // The parent entry: BUSY|RCX with its details (FREE at level 1), and
    // the entry marked for host priority until a host takes it.
    let out = busy_while_held(&sim, entry(&td, gpa, 1), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 1, SeptState::FREE, None);
    let held = sim.hold(entry(&td, gpa, 1), X).unwrap();
    assert_eq!(raw(&sim, lv, r).0, busy(RCX));
    drop(held);
    assert!(
        sim.host_priority(entry(&td, gpa, 1)),
        "marked by the failure"
    );
    ok("SEPT.ADD", raw(&sim, lv, r).0);
    assert!(!sim.host_priority(entry(&td, gpa, 1)), "a host got it");
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn page_add_busy_on_the_tdr_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let (target, source) = (td.page(&sim), td.page(&sim));
    write(&sim, source.hpa(), &[0x5a; 4096]);
    let lv = Leaf::MEM_PAGE_ADD.v0();
    let r = [pinfo(0, 0), pa(td.tdr), pa(target), pa(source), 0, 0];
    let snap = || snapshot(&sim, &td, &[target], &[]);
    // TDR_X(RDX): any holder stops it.
    let out = busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RDX), &snap);
    assert_eq!(regs(&out), cleared(r));
    let out = busy_while_held(&sim, pamt(target), S, lv, r, busy(R8), &snap);
    assert_eq!(regs(&out), cleared(r));
    ok("PAGE.ADD", raw(&sim, lv, r).0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_busy_on_tdr_op_state_tree_entry_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x10_0000;
    td.map_sept(&sim, gpa, 1);
    let p = td.page(&sim);
    let lv = Leaf::MEM_PAGE_AUG.v0();
    let r = [pinfo(gpa, 0), pa(td.tdr), pa(p), 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 0)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
        (pamt(p), S, R8),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 0), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 0, SeptState::FREE, None);
    // Shared holders of what AUG shares do not stop it.
    {
        let _tdr = sim.hold(ModuleLock::Tdr(td.tdr), S).unwrap();
        let _op = sim.hold(ModuleLock::OpState(td.tdr), S).unwrap();
        let _tree = sim.hold(ModuleLock::SeptTree(td.tdr), S).unwrap();
        ok("PAGE.AUG", raw(&sim, lv, r).0);
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_2m_takes_the_2m_entry_but_reads_the_4k_entries_unlocked() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 4 * MIB;
    td.map_sept(&sim, gpa, 2);
    let big = td.run(&sim, 512, 512).first();
    let lv = Leaf::MEM_PAGE_AUG.v0();
    let r = [pinfo(gpa, 1), pa(td.tdr), pa(big), 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[big], &[(gpa, 1)]);
    // A walk in progress through the 2 MiB range (its 2M entry shared):
    // the promotion to exclusive fails.
    let out = busy_while_held(&sim, pamt_2m(big), S, lv, r, busy(R8), &snap);
    assert_eq!(regs(&out), cleared(r));
    let held = sim.hold(pamt_2m(big), S).unwrap();
    assert_eq!(raw(&sim, lv, r).0, busy(R8));
    drop(held);
    assert!(sim.host_priority(pamt_2m(big)), "the failed host promotion");
    // A lock on one 4K entry below it does not matter.
    let inner = Pfn::new(big.as_u64() + 7);
    let held = sim.hold(pamt(inner), S).unwrap();
    ok("PAGE.AUG 2M", raw(&sim, lv, r).0);
    drop(held);
    assert!(!sim.host_priority(pamt_2m(big)), "the host got it");
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

/// A running TD with a 4K page AUGed at `gpa`.
fn with_page(sim: &Simulator, gpa: u64) -> (Td, Pfn) {
    let mut td = Td::build(sim, Stage::Runnable);
    let p = td.aug(sim, gpa, 0);
    (td, p)
}

#[test]
fn sept_rd_busy_on_tdr_op_state_tree_then_the_entry() {
    let sim = host();
    let gpa = 0x20_0000;
    let (td, p) = with_page(&sim, gpa);
    let lv = Leaf::MEM_SEPT_RD.v0();
    let r = [pinfo(gpa, 0), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 0)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 0), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 0, SeptState::PENDING, Some(p));
    let (s, out) = raw(&sim, lv, r);
    ok("SEPT.RD", s);
    assert_details(sept_out(out), 0, SeptState::PENDING, Some(p));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn range_block_busy_on_tdr_op_state_tree_then_the_entry() {
    let sim = host();
    let gpa = 0x20_0000;
    let (td, p) = with_page(&sim, gpa);
    let lv = Leaf::MEM_RANGE_BLOCK.v0();
    let r = [pinfo(gpa, 0), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 0)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        // BLOCK takes the tree exclusively: a shared holder stops it.
        (ModuleLock::SeptTree(td.tdr), S, SEPT_TREE),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 0), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 0, SeptState::PENDING, Some(p));
    ok("BLOCK", raw(&sim, lv, r).0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn range_unblock_busy_on_tdr_op_state_tree_then_the_entry() {
    let sim = host();
    let gpa = 0x20_0000;
    let (td, p) = with_page(&sim, gpa);
    ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let lv = Leaf::MEM_RANGE_UNBLOCK.v0();
    let r = [pinfo(gpa, 0), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 0)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), S, SEPT_TREE),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 0), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 0, SeptState::PENDING_BLOCKED, Some(p));
    ok("UNBLOCK", raw(&sim, lv, r).0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn track_busy_on_tdr_op_state_then_the_epoch() {
    let sim = host();
    let gpa = 0x20_0000;
    let (td, _) = with_page(&sim, gpa);
    ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
    let lv = Leaf::MEM_TRACK.v0();
    let r = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[(gpa, 0)]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(RCX), &snap);
    busy_while_held(
        &sim,
        ModuleLock::OpState(td.tdr),
        X,
        lv,
        r,
        busy(OP_STATE),
        &snap,
    );
    busy_while_held(
        &sim,
        ModuleLock::Epoch(td.tdr),
        S,
        lv,
        r,
        busy(TD_EPOCH),
        &snap,
    );
    // The epoch did not move: the blocked page is not tracked yet.
    assert_eq!(
        page_remove(&sim, info(gpa, 0), td.tdr).status,
        e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX)
    );
    ok("TRACK", raw(&sim, lv, r).0);
    ok("REMOVE", page_remove(&sim, info(gpa, 0), td.tdr).status);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn page_remove_busy_on_tdr_op_state_tree_entry_then_the_page() {
    let sim = host();
    let gpa = 0x20_0000;
    let (td, p) = with_page(&sim, gpa);
    ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let lv = Leaf::MEM_PAGE_REMOVE.v0();
    let r = [pinfo(gpa, 0), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[(gpa, 0)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
        // The page's own PAMT entry (implicit X, no parents): BUSY|RCX
        // without details.
        (pamt(p), S, RCX),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 0), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 0, SeptState::PENDING_BLOCKED, Some(p));
    // An implicit lock takes no parents: a walk holding the page's 2M
    // entry does not stop it.
    let held = sim.hold(pamt_2m(p), S).unwrap();
    let (s, out) = raw(&sim, lv, r);
    drop(held);
    ok("REMOVE", s);
    assert_eq!(out.rcx, pa(p), "RCX: the removed page");
    wbinvd(&sim, p, td.hkid);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_remove_busy_on_tdr_op_state_tree_parent_entry_then_the_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x4000_0000;
    td.map_sept(&sim, gpa, 1);
    let pt = td.sept_page(gpa, 1);
    ok("BLOCK", range_block(&sim, info(gpa, 1), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let lv = Leaf::MEM_SEPT_REMOVE.v0();
    let r = [pinfo(gpa, 1), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[pt], &[(gpa, 1)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), S, SEPT_TREE),
        (pamt(pt), S, RCX),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 1), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 1, SeptState::NL_BLOCKED, None);
    let (s, out) = raw(&sim, lv, r);
    ok("SEPT.REMOVE", s);
    assert_eq!(out.rcx, pa(pt));
    td.forget_sept(gpa, 1);
    wbinvd(&sim, pt, td.hkid);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

/// A running TD with a blocked, tracked 2M page at `gpa` and a page for a
/// new S-EPT page.
fn with_blocked_2m(sim: &Simulator, gpa: u64) -> (Td, Pfn, Pfn) {
    let mut td = Td::build(sim, Stage::Runnable);
    let big = td.aug(sim, gpa, 1);
    ok("BLOCK", range_block(sim, info(gpa, 1), td.tdr).status);
    ok("TRACK", track(sim, td.tdr));
    let sept = td.page(sim);
    (td, big, sept)
}

#[test]
fn page_demote_busy_on_tdr_op_state_tree_entry_page_then_the_2m_entry() {
    let sim = host();
    let gpa = 2 * MIB;
    let (td, big, sept) = with_blocked_2m(&sim, gpa);
    let lv = Leaf::MEM_PAGE_DEMOTE.v0();
    let r = [pinfo(gpa, 1), pa(td.tdr), pa(sept), 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[big, sept], &[(gpa, 1)]);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
        (pamt(sept), S, R8),
        // pamt_demote takes the big page's 2M entry exclusively for a
        // moment: a walk holding it makes DEMOTE fail with BUSY|RCX.
        (pamt_2m(big), S, RCX),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    let out = busy_while_held(&sim, entry(&td, gpa, 1), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 1, SeptState::PENDING_BLOCKED, Some(big));
    ok("DEMOTE", raw(&sim, lv, r).0);
    assert_eq!(rdmd(&sim, Pfn::new(big.as_u64() + 9)).2, 0, "4K pages now");
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn page_promote_busy_on_every_lock_it_takes() {
    let sim = host();
    let gpa = 2 * MIB;
    let (td, big, sept) = with_blocked_2m(&sim, gpa);
    ok(
        "DEMOTE",
        page_demote(&sim, info(gpa, 1), td.tdr, sept).status,
    );
    // One of the 512 entries below, held by someone (taken before the
    // parent is blocked: a walk stops at a blocked entry, PROMOTE does not
    // walk to them).
    let child = gpa + 5 * PAGE;
    let child_lock = sim.hold(entry(&td, child, 0), X).unwrap();
    ok("BLOCK NL", range_block(&sim, info(gpa, 1), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let lv = Leaf::MEM_PAGE_PROMOTE.v0();
    let r = [pinfo(gpa, 1), pa(td.tdr), 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[big, sept], &[(gpa, 1)]);
    // The module reports the parent's details for a busy child.
    let before = snap();
    let (s, out) = raw(&sim, lv, r);
    assert_eq!(s, busy(RCX));
    assert_details(sept_out(out), 1, SeptState::NL_BLOCKED, None);
    drop(child_lock);
    assert_eq!(snap(), before);
    for (lock, mode, o) in [
        (ModuleLock::Tdr(td.tdr), X, RDX),
        (ModuleLock::OpState(td.tdr), X, OP_STATE),
        (ModuleLock::SeptTree(td.tdr), X, SEPT_TREE),
        // The S-EPT page that goes away (implicit X).
        (pamt(sept), S, RCX),
        // pamt_promote: the merged page's 2M entry, for a moment.
        (pamt_2m(big), S, RCX),
    ] {
        let out = busy_while_held(&sim, lock, mode, lv, r, busy(o), &snap);
        assert_eq!(regs(&out), cleared(r), "{lock:?}");
    }
    // The parent entry.
    let out = busy_while_held(&sim, entry(&td, gpa, 1), X, lv, r, busy(RCX), &snap);
    assert_details(sept_out(out), 1, SeptState::NL_BLOCKED, None);
    let (s, out) = raw(&sim, lv, r);
    ok("PROMOTE", s);
    assert_eq!(out.rcx, pa(sept), "RCX: the freed S-EPT page");
    wbinvd(&sim, sept, td.hkid);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MR.*
// ---------------------------------------------------------------------------

#[test]
fn mr_extend_and_finalize_busy_on_the_tdr() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.add_page(&sim, 0, &[0x33; 4096]);
    let snap = || snapshot(&sim, &td, &[], &[(0, 0)]);
    let lv = Leaf::MR_EXTEND.v0();
    let r = [0x100, pa(td.tdr), 0, 0, 0, 0];
    // TDR_X: any holder stops it.
    let out = busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RDX), &snap);
    assert_eq!(regs(&out), cleared(r));
    ok("MR.EXTEND", raw(&sim, lv, r).0);
    let lv = Leaf::MR_FINALIZE.v0();
    let r = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), S, lv, r, busy(RCX), &snap);
    assert_eq!(sim.mrtd(td.tdr), None, "not finalized");
    ok("MR.FINALIZE", raw(&sim, lv, r).0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.PHYMEM.*
// ---------------------------------------------------------------------------

#[test]
fn rdmd_and_page_wbinvd_busy_on_the_page() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let p = page(&sim);
    let snap = || snapshot(&sim, &td, &[p], &[]);
    // Both walk the page shared: an exclusive holder stops them.
    let lv = Leaf::PHYMEM_PAGE_RDMD.v0();
    let r = [pa(p), 9, 9, 9, 9, 9];
    let out = busy_while_held(&sim, pamt(p), X, lv, r, busy(RCX), &snap);
    assert_eq!(regs(&out), [0; 6], "RDMD clears its outputs on entry");
    let lv = Leaf::PHYMEM_PAGE_WBINVD.v0();
    let r = [pa(p), 0, 0, 0, 0, 0];
    busy_while_held(&sim, pamt(p), X, lv, r, busy(RCX), &snap);
    // And of the TDR: a leaf's exclusive TDR lock.
    let r = [pa(td.tdr), 9, 9, 9, 9, 9];
    let lv = Leaf::PHYMEM_PAGE_RDMD.v0();
    busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(RCX), &snap);
    free_page(&sim, p);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn reclaim_busy_on_the_page_then_the_owners_tdr() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    let p = td.tdcs[0];
    let lv = Leaf::PHYMEM_PAGE_RECLAIM.v0();
    let r = [pa(p), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[p], &[]);
    // The page, walked exclusively: any holder stops it; outputs 0.
    let out = busy_while_held(&sim, pamt(p), S, lv, r, busy(RCX), &snap);
    assert_eq!(regs(&out), [0; 6]);
    // The owner's TDR, implicitly shared: the outputs already describe the
    // page.
    let out = busy_while_held(&sim, ModuleLock::Tdr(td.tdr), X, lv, r, busy(TDR), &snap);
    assert_eq!(
        (out.rcx, out.rdx, out.r8),
        (u64::from(PamtPageType::TDCX.0), pa(td.tdr), 0)
    );
    // The TDR itself: its own entry, walked exclusively.
    let rt = [pa(td.tdr), 0, 0, 0, 0, 0];
    let snap = || snapshot(&sim, &td, &[], &[]);
    let out = busy_while_held(&sim, pamt(td.tdr), S, lv, rt, busy(RCX), &snap);
    assert_eq!(regs(&out), [0; 6]);
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_busy_on_the_wbt_entry_then_the_kot() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    let lv = Leaf::PHYMEM_CACHE_WB.v0();
    let r = [0; 6];
    let snap = || snapshot(&sim, &td, &[], &[]);
    // LP 0 is on package 0.
    busy_while_held(
        &sim,
        ModuleLock::Wbt(PackageId(0)),
        X,
        lv,
        r,
        busy(WBCACHE),
        &snap,
    );
    // Another package's entry does not matter.
    {
        let _other = sim.hold(ModuleLock::Wbt(PackageId(1)), X).unwrap();
        let _kot = sim.hold(ModuleLock::Kot, S).unwrap();
        ok("CACHE.WB pkg 0", raw(&sim, lv, r).0);
    }
    let snap = || snapshot(&sim, &td, &[], &[]);
    on(&sim, 2, || {
        busy_while_held(&sim, ModuleLock::Kot, X, lv, r, busy(KOT), &snap);
        ok("CACHE.WB pkg 1", raw(&sim, lv, r).0);
    });
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn hold_refuses_what_does_not_exist_and_what_is_taken() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let p = page(&sim);
    // Not a TD; an S-EPT entry the walk does not reach; no such package.
    assert_eq!(
        sim.hold(ModuleLock::OpState(p), S).unwrap_err(),
        TdxStatus::OPERAND_INVALID
    );
    assert_eq!(
        sim.hold(entry(&td, 0x4000_0000, 0), X).unwrap_err(),
        TdxStatus::OPERAND_INVALID
    );
    assert_eq!(
        sim.hold(ModuleLock::Wbt(PackageId(7)), X).unwrap_err(),
        TdxStatus::OPERAND_INVALID
    );
    // The module's rules between holders.
    let a = sim.hold(ModuleLock::SeptTree(td.tdr), S).unwrap();
    let b = sim.hold(ModuleLock::SeptTree(td.tdr), S).unwrap();
    assert_eq!(
        sim.hold(ModuleLock::SeptTree(td.tdr), X).unwrap_err(),
        TdxStatus::OPERAND_BUSY
    );
    drop((a, b));
    let x = sim.hold(ModuleLock::Tdr(td.tdr), X).unwrap();
    assert_eq!(
        sim.hold(ModuleLock::Tdr(td.tdr), S).unwrap_err(),
        TdxStatus::OPERAND_BUSY
    );
    assert!(sim.host_priority(ModuleLock::Tdr(td.tdr)));
    // A guest meets host priority.
    assert_eq!(
        sim.hold_as(ModuleLock::Tdr(td.tdr), S, tdx_sim::LockSide::Guest)
            .unwrap_err(),
        TdxStatus::OPERAND_BUSY_HOST_PRIORITY
    );
    x.release();
    free_page(&sim, p);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
