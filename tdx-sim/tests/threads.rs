//! The logical processor is a property of the calling thread: threads that
//! run TD lifecycles at the same time on one simulator each run on the LP
//! they selected (`Cpus::on_cpu`, `Simulator::set_lp`), and a thread
//! that selected none cannot issue a SEAMCALL at all.

mod td_support;

use std::sync::Barrier;
use tdx_api::Cpus;

use td_support::*;
use tdx_api::CpuId;
use tdx_types::TdxStatus;

/// Runs a leaf until it is not `TDX_OPERAND_BUSY` (other threads' leaves
/// hold the module's locks now and then, as on a real host).
fn retry(mut f: impl FnMut() -> TdxStatus) -> TdxStatus {
    loop {
        let s = f();
        if !s.is(TdxStatus::OPERAND_BUSY) {
            return s;
        }
        std::thread::yield_now();
    }
}

/// A TD built on the calling thread's LP `lp`: KEY.CONFIG on `lp`'s package
/// first (a second call there answers TDX_KEY_CONFIGURED), then on the
/// other package; each vCPU is initialized and flushed on `lp` (a flush from
/// any other LP fails with TDX_VCPU_NOT_ASSOCIATED). MNG.CREATE, CACHE.WB
/// and KEY.FREEID meet the other threads' teardowns on the KOT and the
/// write-back table, and are retried while busy.
fn lifecycle_on(sim: &tdx_sim::Simulator, lp: u32, hkid: u16, rounds: usize) {
    let mut td = Td::unassigned(sim, hkid);
    ok("MNG.CREATE", retry(|| mng_create(sim, td.tdr, hkid)));
    assert_eq!(sim.current_lp(), lp);
    ok("KEY.CONFIG (own package)", mng_key_config(sim, td.tdr));
    assert_eq!(
        mng_key_config(sim, td.tdr),
        TdxStatus::KEY_CONFIGURED,
        "the own package again"
    );
    let other = (lp + 2) % 4; // the other package of the 2x2 host
    ok(
        "KEY.CONFIG (other package)",
        on(sim, other, || mng_key_config(sim, td.tdr)),
    );
    assert_eq!(sim.current_lp(), lp, "on_cpu gave the LP back");
    td.add_tdcs(sim, 6);
    td.init(sim, &Params::new());
    for _ in 0..rounds {
        let i = td.create_vcpu(sim, 5);
        let tdvpr = td.vcpus[i].tdvpr;
        ok("VP.INIT", vp_init(sim, tdvpr, 0, i as u32));
        assert_eq!(sim.current_lp(), lp);
        ok("VP.FLUSH (same LP)", vp_flush(sim, tdvpr));
    }
    // The canonical teardown, retrying what other teardowns make busy.
    ok("VPFLUSHDONE", retry(|| mng_vpflushdone(sim, td.tdr)));
    for pkg_lp in [lp, other] {
        on(sim, pkg_lp, || {
            let s = retry(|| cache_wb(sim, false));
            assert!(
                s == TdxStatus::SUCCESS || s == TdxStatus::NO_HKID_READY_TO_WBCACHE,
                "CACHE.WB: {s}"
            );
        });
    }
    ok("KEY.FREEID", retry(|| mng_key_freeid(sim, td.tdr)));
    td.reclaim_children(sim);
    ok("RECLAIM TDR", page_reclaim(sim, td.tdr).status);
    td.free_all(sim);
}

#[test]
fn each_thread_runs_on_the_lp_it_selected() {
    let sim = host();
    let barrier = Barrier::new(4);
    let base = td_hkid(&sim);
    std::thread::scope(|s| {
        for lp in 0..4u32 {
            let (sim, barrier) = (&sim, &barrier);
            s.spawn(move || {
                sim.on_cpu(CpuId(lp), &mut || {
                    barrier.wait();
                    lifecycle_on(sim, lp, base + lp as u16, 4);
                });
            });
        }
    });
    sim.check_invariants().unwrap();
}

#[test]
fn a_thread_that_selected_no_lp_is_placed_on_one_and_keeps_it() {
    let sim = host();
    let lps = sim.machine().lps();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                // A vCPU thread of a VMM: no on_cpu, no set_lp.
                ok("RDMD", sim_leaf_without_lp(&sim));
                let lp = sim.current_lp();
                assert!(lp < lps, "LP {lp} of {lps}");
                ok("RDMD", sim_leaf_without_lp(&sim));
                assert_eq!(sim.current_lp(), lp, "the thread keeps its LP");
            });
        }
        // set_lp gives a thread the LP it asks for.
        s.spawn(|| {
            sim.set_lp(3);
            assert_eq!(sim.current_lp(), 3);
            ok("RDMD", page_rdmd(&sim, pamt_page()).status);
        });
    });
    // The building thread is still on LP 0.
    assert_eq!(sim.current_lp(), 0);
}

fn sim_leaf_without_lp(sim: &tdx_sim::Simulator) -> TdxStatus {
    page_rdmd(sim, pamt_page()).status
}

#[test]
fn on_cpu_nests_and_set_lp_inside_it_ends_with_it() {
    let sim = host();
    sim.set_lp(1);
    on(&sim, 2, || {
        assert_eq!(sim.current_lp(), 2);
        on(&sim, 3, || assert_eq!(sim.current_lp(), 3));
        assert_eq!(sim.current_lp(), 2);
        sim.set_lp(0);
        assert_eq!(sim.current_lp(), 0);
    });
    assert_eq!(sim.current_lp(), 1);
    // Two simulators in one thread keep separate selections.
    let other = host();
    assert_eq!(other.current_lp(), 0);
    on(&other, 3, || {
        assert_eq!(other.current_lp(), 3);
        assert_eq!(sim.current_lp(), 1);
    });
}
