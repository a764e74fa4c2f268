//! Many threads at once on one simulator, with exact accounting after:
//! two threads map and unmap overlapping GPAs of one TD with raw leaves
//! (AUG, BLOCK, TRACK, REMOVE, PAGE.WBINVD), meeting each other on the
//! S-EPT tree, entry and epoch locks, while two more threads build and tear
//! down other TDs (meeting on the KOT and the write-back table). Every
//! status each leaf returns must be one the module can return there, and
//! afterwards every frame is back, the page accounting is what it was, and
//! `check_invariants` (locks free, child counts = PAMT = S-EPT) holds.
//!
//! The interleaving differs from run to run; what is checked holds for
//! every interleaving.

mod td_support;

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};
use tdx_api::platform::on_each_package;

use td_support::*;
use tdx_sim::Simulator;
use tdx_types::{OperandId, Pfn, TdxStatus, regs::SeptState};

const RCX: OperandId = OperandId::RCX;
const SEPT_TREE: OperandId = OperandId::SEPT_TREE;
const TD_EPOCH: OperandId = OperandId::TD_EPOCH;

/// GPAs the mapping threads share: 48 4K pages in one 2 MiB range.
const GPAS: u64 = 48;
const GPA_BASE: u64 = 0x40_0000;
/// Operations per mapping thread.
const OPS: usize = 20_000;
/// TDs each churn thread builds and tears down.
const CHURN: usize = 30;

/// A small deterministic generator per thread (the interleaving is what
/// varies between runs, not the choices).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Statuses seen, by operation, for the report.
type Seen = Mutex<BTreeMap<(&'static str, u64), u64>>;

fn note(seen: &Seen, op: &'static str, s: TdxStatus) {
    *seen.lock().unwrap().entry((op, s.raw())).or_default() += 1;
}

/// One mapping thread: random AUG / BLOCK / TRACK / REMOVE on the shared
/// GPAs; frames come from and go back to `pool`.
fn mapper(sim: &Simulator, td: &Td, pool: &Mutex<Vec<Pfn>>, seed: u64, seen: &Seen) {
    let mut rng = Rng(seed);
    for _ in 0..OPS {
        let gpa = GPA_BASE + (rng.next() % GPAS) * PAGE;
        match rng.next() % 4 {
            0 => {
                let Some(f) = pool.lock().unwrap().pop() else {
                    continue;
                };
                let s = page_aug(sim, info(gpa, 0), td.tdr, f).status;
                note(seen, "AUG", s);
                let allowed = [
                    TdxStatus::SUCCESS,
                    busy(RCX),
                    busy(SEPT_TREE),
                    e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
                ];
                assert!(allowed.contains(&s), "AUG {gpa:#x}: {s}");
                if s != TdxStatus::SUCCESS {
                    pool.lock().unwrap().push(f);
                }
            }
            1 => {
                let s = range_block(sim, info(gpa, 0), td.tdr).status;
                note(seen, "BLOCK", s);
                let allowed = [
                    TdxStatus::SUCCESS,
                    busy(SEPT_TREE),
                    e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
                    e(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, RCX),
                ];
                assert!(allowed.contains(&s), "BLOCK {gpa:#x}: {s}");
            }
            2 => {
                let s = track(sim, td.tdr);
                note(seen, "TRACK", s);
                assert!(s == TdxStatus::SUCCESS || s == busy(TD_EPOCH), "TRACK: {s}");
            }
            _ => {
                let c = page_remove(sim, info(gpa, 0), td.tdr);
                note(seen, "REMOVE", c.status);
                let allowed = [
                    TdxStatus::SUCCESS,
                    busy(RCX),
                    busy(SEPT_TREE),
                    e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
                    e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX),
                    e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX),
                ];
                assert!(allowed.contains(&c.status), "REMOVE {gpa:#x}: {}", c.status);
                if c.status == TdxStatus::SUCCESS {
                    let f = Pfn::new(c.out.rcx / PAGE);
                    ok("WBINVD", wbinvd(sim, f, td.hkid));
                    pool.lock().unwrap().push(f);
                }
            }
        }
    }
}

/// Runs a leaf until it is not `TDX_OPERAND_BUSY`.
fn retry(mut f: impl FnMut() -> TdxStatus) -> TdxStatus {
    loop {
        let s = f();
        if !s.is(TdxStatus::OPERAND_BUSY) {
            return s;
        }
        std::thread::yield_now();
    }
}

/// One churn thread on `lp`: builds a running TD with a vCPU on `lp` and a
/// few private pages, and tears it down, `CHURN` times; the KOT and the
/// write-back table are shared with the other churn thread (and TD A's
/// never-ending life), so those leaves are retried while busy.
fn churn(sim: &Simulator, lp: u32, hkid: u16, done: &AtomicU64) {
    for _ in 0..CHURN {
        let mut td = Td::unassigned(sim, hkid);
        ok("MNG.CREATE", retry(|| mng_create(sim, td.tdr, hkid)));
        td.configure_keys(sim);
        td.add_tdcs(sim, 6);
        td.init(sim, &Params::new());
        td.add_vcpu(sim, lp);
        ok("MR.FINALIZE", mr_finalize(sim, td.tdr));
        for i in 0..4 {
            td.aug(sim, i * PAGE, 0);
        }
        td.flush_vcpus(sim);
        ok("VPFLUSHDONE", retry(|| mng_vpflushdone(sim, td.tdr)));
        on_each_package(&sim, &mut |_, _| {
            let s = retry(|| cache_wb(sim, false));
            assert!(
                s == TdxStatus::SUCCESS || s == TdxStatus::NO_HKID_READY_TO_WBCACHE,
                "CACHE.WB: {s}"
            );
        });
        ok("KEY.FREEID", retry(|| mng_key_freeid(sim, td.tdr)));
        td.reclaim_children(sim);
        ok("RECLAIM TDR", page_reclaim(sim, td.tdr).status);
        td.free_all(sim);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn mappers_and_td_churn_at_once_leave_exact_accounting() {
    let sim = host();
    let start = sim.accounting();
    let base = td_hkid(&sim);
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, GPA_BASE, 1);
    let frames = td.run(&sim, 64, 1);
    let pool = Mutex::new(frames.iter().collect::<Vec<Pfn>>());
    let seen: Seen = Mutex::default();
    let churned = AtomicU64::new(0);
    let go = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for (lp, seed) in [(0u32, 0x9e37_79b9_7f4a_7c15u64), (1, 0xd1b5_4a32_d192_ed03)] {
            let (sim, td, pool, seen, go) = (&sim, &td, &pool, &seen, &go);
            s.spawn(move || {
                sim.set_lp(lp);
                go.wait();
                mapper(sim, td, pool, seed, seen);
            });
        }
        for (lp, hkid) in [(2u32, base + 1), (3, base + 2)] {
            let (sim, churned, go) = (&sim, &churned, &go);
            s.spawn(move || {
                sim.set_lp(lp);
                go.wait();
                churn(sim, lp, hkid, churned);
            });
        }
    });
    assert_eq!(churned.load(Ordering::Relaxed), 2 * CHURN as u64);
    // The invariants hold with the GPAs in whatever state the mappers left
    // them.
    sim.check_invariants().unwrap();
    // Take every page back: the frames all come home.
    for i in 0..GPAS {
        let gpa = GPA_BASE + i * PAGE;
        let (st, frame) = sept_state(&sim, td.tdr, gpa, 0);
        if st == SeptState::FREE {
            continue;
        }
        if matches!(st, SeptState::MAPPED | SeptState::PENDING) {
            ok("BLOCK", range_block(&sim, info(gpa, 0), td.tdr).status);
        }
        ok("TRACK", track(&sim, td.tdr));
        let c = page_remove(&sim, info(gpa, 0), td.tdr);
        ok("REMOVE", c.status);
        assert_eq!(Some(c.out.rcx), frame);
        let f = Pfn::new(c.out.rcx / PAGE);
        ok("WBINVD", wbinvd(&sim, f, td.hkid));
        pool.lock().unwrap().push(f);
    }
    let mut back = pool.into_inner().unwrap();
    back.sort();
    assert_eq!(
        back,
        frames.iter().collect::<Vec<_>>(),
        "every frame is back"
    );
    td.teardown(&sim);
    assert_eq!(sim.accounting(), start, "page accounting as before");
    sim.check_invariants().unwrap();
    // The report: what the threads met.
    let seen = seen.into_inner().unwrap();
    for ((op, s), n) in &seen {
        println!("{op:6} {:<60} {n}", TdxStatus::from_raw(*s).to_string());
    }
    // Each operation succeeded at times.
    for op in ["AUG", "BLOCK", "TRACK", "REMOVE"] {
        assert!(
            seen.get(&(op, 0)).is_some_and(|&n| n > 0),
            "{op} never succeeded"
        );
    }
}
