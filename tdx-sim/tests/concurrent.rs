//! Leaves that really run at the same time, interleaved exactly: a leaf on
//! one thread is stopped after it has taken its locks
//! (`Simulator::pause_next`), another thread's leaves meet those locks, and
//! the first one finishes. No sleeps: every step waits for the one before.
//! Also the guest side of TDG.MEM.PAGE.ACCEPT against host leaves (the
//! entry lock and its host-priority mark), and the CACHE.WB resume race of
//! `src/vmm_dispatcher/api_calls/tdh_phymem_cache_wb.c`.

mod td_support;

use td_support::*;
use tdx_sim::{Fault, LockMode, LockSide, ModuleLock, Simulator, SysState};
use tdx_types::{Gpa, Leaf, OperandId, TdxLevel, TdxStatus, regs::SeptState};

const RCX: OperandId = OperandId::RCX;

/// Runs `f` on a new thread on logical processor `lp` and returns its
/// handle.
fn spawn_on<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    sim: &'scope Simulator,
    lp: u32,
    f: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    s.spawn(move || {
        sim.set_lp(lp);
        f()
    })
}

fn entry(td: &Td, gpa: u64, level: u8) -> ModuleLock {
    ModuleLock::SeptEntry {
        tdr: td.tdr,
        gpa: Gpa::new(gpa),
        level: TdxLevel::from_u8(level).unwrap(),
    }
}

#[test]
fn a_paused_aug_holds_the_tdr_tree_entry_and_page_and_others_run() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x10_0000;
    td.map_sept(&sim, gpa, 1);
    let (p1, p2, p3) = (td.page(&sim), td.page(&sim), td.page(&sim));
    let pause = sim.pause_next(Leaf::MEM_PAGE_AUG);
    std::thread::scope(|s| {
        let aug = spawn_on(s, &sim, 1, || {
            page_aug(&sim, info(gpa, 0), td.tdr, p1).status
        });
        assert_eq!(pause.wait_entered(), None, "stopped after taking its locks");
        // The entry it is about to fill: a second AUG of the GPA is busy,
        // with the entry's details as it read them (still FREE).
        let c = page_aug(&sim, info(gpa, 0), td.tdr, p2);
        assert_eq!(c.status, busy(RCX));
        assert_details(c.out, 0, SeptState::FREE, None);
        // The guest cannot take the entry either.
        assert_eq!(sim.guest_accept(td.tdr, gpa, 0), busy(RCX));
        // The tree, shared: BLOCK (exclusive) of any GPA is busy.
        assert_eq!(
            range_block(&sim, info(0x1000, 0), td.tdr).status,
            busy(OperandId::SEPT_TREE)
        );
        // The TDR, shared: a leaf that needs it exclusively is busy.
        assert_eq!(mr_finalize(&sim, td.tdr), busy(RCX));
        // The page, exclusively: even RDMD (shared) waits for it.
        assert_eq!(page_rdmd(&sim, p1).status, busy(RCX));
        // Meanwhile an AUG of another GPA of the same TD runs to its end.
        ok(
            "AUG next to it",
            page_aug(&sim, info(gpa + PAGE, 0), td.tdr, p3).status,
        );
        pause.release();
        ok("the paused AUG", aug.join().unwrap());
    });
    assert_eq!(
        sept_state(&sim, td.tdr, gpa, 0),
        (SeptState::PENDING, Some(p1.hpa().as_u64()))
    );
    // Its write cleared the mark the second AUG left; the guest gets in.
    ok("ACCEPT", sim.guest_accept(td.tdr, gpa, 0));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_paused_track_makes_track_busy_but_not_block() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x20_0000;
    td.aug(&sim, gpa, 0);
    let pause = sim.pause_next(Leaf::MEM_TRACK);
    std::thread::scope(|s| {
        let t = spawn_on(s, &sim, 1, || track(&sim, td.tdr));
        assert_eq!(pause.wait_entered(), None);
        // TRACK holds the epoch exclusively.
        assert_eq!(track(&sim, td.tdr), busy(OperandId::TD_EPOCH));
        // BLOCK needs the tree, not the epoch: it runs, and stamps the
        // epoch the paused TRACK has not advanced yet.
        ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
        pause.release();
        ok("the paused TRACK", t.join().unwrap());
    });
    // So that TRACK covers the block: the page can go.
    ok("REMOVE", page_remove(&sim, info(gpa, 0), td.tdr).status);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_paused_page_add_excludes_its_td_only() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let mut other = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::Runnable);
    other.map_sept(&sim, 0, 1);
    let (target, source) = (td.page(&sim), td.page(&sim));
    write(&sim, source.hpa(), &[0x77; 4096]);
    let (sept, q) = (td.page(&sim), other.page(&sim));
    let pause = sim.pause_next(Leaf::MEM_PAGE_ADD);
    std::thread::scope(|s| {
        let add = spawn_on(s, &sim, 1, || {
            page_add(&sim, info(0, 0), td.tdr, target, source).status
        });
        assert_eq!(pause.wait_entered(), None);
        // The TDR exclusively: every other leaf on this TD is busy.
        let flags = tdx_types::regs::TdrAndFlags::with_tdr(td.tdr, false);
        assert_eq!(
            sept_add(&sim, info(1 << 30, 2), flags, sept).status,
            busy(OperandId::RDX)
        );
        assert_eq!(track(&sim, td.tdr), busy(RCX));
        // Another TD runs on.
        ok(
            "AUG on the other TD",
            page_aug(&sim, info(0, 0), other.tdr, q).status,
        );
        pause.release();
        ok("the paused PAGE.ADD", add.join().unwrap());
    });
    td.teardown(&sim);
    other.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_holds_its_package_entry_and_the_kot_for_the_whole_call() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    let new = Td::unassigned(&sim, td_hkid(&sim) + 1);
    let pause = sim.pause_next(Leaf::PHYMEM_CACHE_WB);
    std::thread::scope(|s| {
        // LP 1 is on package 0.
        let wb = spawn_on(s, &sim, 1, || cache_wb(&sim, false));
        assert_eq!(pause.wait_entered(), None);
        // Package 0's entry: busy for LP 0 of the same package.
        assert_eq!(cache_wb(&sim, false), busy(OperandId::WBCACHE));
        // Package 1 has its own entry, and KOT S is shared.
        ok("CACHE.WB package 1", on(&sim, 2, || cache_wb(&sim, false)));
        // The KOT shared: MNG.CREATE (KOT X) waits.
        assert_eq!(mng_create(&sim, new.tdr, new.hkid), busy(OperandId::KOT));
        pause.release();
        ok("the paused CACHE.WB", wb.join().unwrap());
    });
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    new.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn cache_wb_resume_fails_after_another_lp_restarted_and_completed_it() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.flush_vcpus(&sim);
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    // LP 0's start is interrupted after one sub-block.
    sim.inject(Fault::stop_early(Leaf::PHYMEM_CACHE_WB, 1, 1));
    let on_lp = |lp: u32, resume: bool| {
        std::thread::scope(|s| {
            spawn_on(s, &sim, lp, || cache_wb(&sim, resume))
                .join()
                .unwrap()
        })
    };
    assert_eq!(on_lp(0, false), TdxStatus::INTERRUPTED_RESUMABLE);
    // LP 1, same package, starts over and completes: the package's resume
    // point is reset (the state is per package, not per caller).
    ok("CACHE.WB on LP 1", on_lp(1, false));
    // LP 0's resume finds nothing to resume.
    assert_eq!(on_lp(0, true), TdxStatus::WBCACHE_RESUME_ERROR);
    // Package 0 is written back all the same; package 1 is not yet.
    assert_eq!(
        mng_key_freeid(&sim, td.tdr),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    ok("CACHE.WB package 1", on_lp(2, false));
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn shutdown_is_busy_while_another_lp_is_in_a_leaf() {
    let sim = host();
    let pause = sim.pause_next(Leaf::PHYMEM_PAGE_RDMD);
    std::thread::scope(|s| {
        let rd = spawn_on(s, &sim, 3, || page_rdmd(&sim, pamt_page()).status);
        assert_eq!(pause.wait_entered(), None);
        let shutdown = |sim: &Simulator| raw(sim, Leaf::SYS_SHUTDOWN.v0(), [0; 6]).0;
        assert_eq!(shutdown(&sim), TdxStatus::SYS_BUSY);
        assert_eq!(sim.module_state(), SysState::Ready, "set back");
        pause.release();
        ok("the paused RDMD", rd.join().unwrap());
        ok("SHUTDOWN", shutdown(&sim));
    });
    assert_eq!(sim.module_state(), SysState::Shutdown);
}

#[test]
fn a_leaf_that_fails_before_its_locks_pauses_at_its_end() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let held = sim
        .hold(ModuleLock::Tdr(td.tdr), LockMode::Exclusive)
        .unwrap();
    let pause = sim.pause_next(Leaf::MEM_TRACK);
    std::thread::scope(|s| {
        let t = spawn_on(s, &sim, 1, || track(&sim, td.tdr));
        assert_eq!(pause.wait_entered(), Some(busy(RCX)));
        pause.release();
        assert_eq!(t.join().unwrap(), busy(RCX));
    });
    drop(held);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The guest side
// ---------------------------------------------------------------------------

#[test]
fn accept_is_busy_while_a_host_leaf_holds_the_entry() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x30_0000;
    td.aug(&sim, gpa, 0);
    // SEPT.RD takes the entry lock and changes nothing.
    let pause = sim.pause_next(Leaf::MEM_SEPT_RD);
    std::thread::scope(|s| {
        let rd = spawn_on(s, &sim, 1, || sept_rd(&sim, info(gpa, 0), td.tdr).status);
        assert_eq!(pause.wait_entered(), None);
        assert_eq!(sim.guest_accept(td.tdr, gpa, 0), busy(RCX));
        pause.release();
        ok("the paused SEPT.RD", rd.join().unwrap());
    });
    ok("ACCEPT", sim.guest_accept(td.tdr, gpa, 0));
    assert_eq!(sept_state(&sim, td.tdr, gpa, 0).0, SeptState::MAPPED);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_host_that_failed_on_an_entry_has_priority_over_the_guest() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let gpa = 0x30_0000;
    let p = td.aug(&sim, gpa, 0);
    let e = entry(&td, gpa, 0);
    // The guest holds the entry (an ACCEPT in progress): a host BLOCK of
    // it fails and marks it for host priority.
    let guest = sim
        .hold_as(e, LockMode::Exclusive, LockSide::Guest)
        .unwrap();
    let c = range_block(&sim, info(gpa, 0), td.tdr);
    assert_eq!(c.status, busy(RCX));
    assert_details(c.out, 0, SeptState::PENDING, Some(p));
    assert!(sim.host_priority(e));
    drop(guest);
    // Now the guest backs off, and sees plain BUSY (the TD dispatcher
    // turns BUSY_HOST_PRIORITY into BUSY with the same operand), for as
    // long as no host has taken the entry; it changes nothing.
    for _ in 0..3 {
        assert_eq!(sim.guest_accept(td.tdr, gpa, 0), busy(RCX));
    }
    // The entry is not held (a guest attempt meets the mark, not a
    // holder), and ACCEPT changed nothing.
    assert_eq!(
        sim.hold_as(e, LockMode::Exclusive, LockSide::Guest)
            .unwrap_err(),
        TdxStatus::OPERAND_BUSY_HOST_PRIORITY
    );
    // A host that takes the entry clears the mark (SEPT.RD changes nothing
    // else: the page is still PENDING), and the guest gets through.
    assert_eq!(sept_state(&sim, td.tdr, gpa, 0).0, SeptState::PENDING);
    assert!(!sim.host_priority(e));
    ok("ACCEPT", sim.guest_accept(td.tdr, gpa, 0));
    // The host's leaf now runs.
    ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
