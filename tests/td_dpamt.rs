//! Dynamic PAMT through the safe API, on the simulated module 1.5.16
//! (`Profile::tdx_1_5_16`):
//!
//! - bring-up turns it on when the module has it and the caller allows it,
//!   and the PAMT at bring-up shrinks to the bitmap;
//! - a TD's whole lifecycle (control pages, initial pages, 4K and 2M
//!   mappings, unmapping, teardown) adds a pair for each 2 MiB range that
//!   gets 4K module pages and removes every one of them again;
//! - threads mapping and unmapping pages of the same ranges add one pair
//!   per range, never two, and remove each once;
//! - a failed or busy PAMT.ADD gives the frame back and leaks nothing; a
//!   refused PAMT.REMOVE keeps the pair installed, which the next page
//!   reuses and `release_pairs` removes.
//!
//! Every test ends with the simulator's invariants (which include the
//! pairs: each pair page serves one range, counts match the pages) and the
//! page accounting back where it started.

// UNSAFETY: the tests hand frames they allocated from the simulator to TDs
// (`GuestFrame::new`, the caller's promise) and free them afterwards.
#![allow(unsafe_code)]

mod td_host;

use std::sync::{Arc, Barrier};
use td_host::{assert_back_to, calls, frames, give_frames_back};

use tdx::{
    Gpa, Leaf, Pfn, Size1G, Size2M, Size4K, TdxStatus,
    api::{
        ExtInited, InitialRcx, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, PageRole, Td, TdError, TdHost, TdHostRef},
    },
    types::abi::{EptPageWalk, EptpControls, TdParams},
};
use tdx_sim::{Fault, MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

type Module<'s> = TdxModule<ExtInited, &'s Simulator, &'s Simulator>;

/// Two packages of two CPUs, 4 GiB of TDX memory, module 1.5.16.
fn sim() -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5_16()),
    )
    .unwrap()
}

fn ready(sim: &Simulator, allow: bool) -> Module<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let mut m = TdxModule::init(sim, sim).unwrap();
    m.set_dynamic_pamt(allow);
    m.configure(&input).unwrap().init_extensions().unwrap()
}

fn params() -> TdParams {
    let mut p = TdParams::new();
    p.set_xfam(3);
    p.set_max_vcpus(2);
    p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FourLevel));
    p.set_tsc_frequency(100);
    p.set_config_flags(TdParams::CONFIG_FLAG_NO_RBP_MOD);
    p
}

/// A finalized TD with two vCPUs.
fn running<H: TdHostRef>(h: H) -> Td<Finalized, H> {
    let mut td = Td::build(h, &params()).unwrap();
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.create_vcpu(tdx::api::CpuId(2), InitialRcx(0), X2ApicId(1))
        .unwrap();
    td.finalize().unwrap()
}

fn frame4k(pfn: Pfn) -> GuestFrame<Size4K> {
    // SAFETY: every caller passes a frame it allocated for the TD.
    unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap()
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn bring_up_uses_dynamic_pamt_when_the_module_has_it_and_the_caller_allows_it() {
    let dynamic = sim();
    let m = ready(&dynamic, true);
    assert!(m.dynamic_pamt());
    let dynamic_pamt = dynamic.accounting().module;
    let h = TdHost::new(m).unwrap();
    assert!(h.dynamic_pamt());
    assert_eq!(h.pamt_pairs(), 0);

    let refused = sim();
    let m = ready(&refused, false);
    assert!(!m.dynamic_pamt());
    let static_pamt = refused.accounting().module;
    assert!(!TdHost::new(m).unwrap().dynamic_pamt());

    // 4 GiB: static 4 KiB-level PAMT 16 MiB (4096 pages), the bitmap
    // 128 KiB; the 2M and 1G levels are the same in both.
    assert_eq!(
        static_pamt - dynamic_pamt,
        4096 - 32,
        "{static_pamt} {dynamic_pamt}"
    );

    // The default profile (module 1.5.01) has no Dynamic PAMT.
    let old =
        Simulator::new(MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_profile(Profile::tdx_1_5()))
            .unwrap();
    let m = TdxModule::init(&old, &old).unwrap();
    assert!(!m.uses_dynamic_pamt());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_td_lifecycle_adds_a_pair_per_4k_range_and_removes_every_one() {
    let sim = sim();
    let h = TdHost::new(ready(&sim, true)).unwrap();
    let baseline = sim.accounting();
    let td = running(&h);
    // Every control page (TDR, TDCS, TDVPR, TDCX, S-EPT) is in a range
    // with a pair; the planner put them anywhere, so at least one.
    let after_build = h.pamt_pairs();
    assert!(after_build >= 1);
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAMT_ADD), after_build as u64);

    // Runtime memory: 4K pages in two fresh 2 MiB ranges, and a 2M page.
    let small = frames(&sim, 1024, 512);
    let huge = frames(&sim, 512, 512);
    let a = small.first();
    let b = Pfn::new(a.as_u64() + 512);
    for (i, pfn) in [a, Pfn::new(a.as_u64() + 1), b].into_iter().enumerate() {
        td.map(Gpa::new(4 * MIB + i as u64 * 4096), frame4k(pfn))
            .unwrap();
    }
    assert_eq!(
        h.pamt_pairs(),
        after_build + 2,
        "one pair per range, not per page"
    );
    // SAFETY: allocated above for this TD.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(8 * MIB), f2).unwrap();
    assert_eq!(
        h.pamt_pairs(),
        after_build + 2,
        "a 2 MiB page needs no pair"
    );
    // A 1 GiB page (512 2 MiB AUGs and a PROMOTE): no pair for its ranges
    // (the S-EPT pages it needs on the way may add some; they go back
    // with the PROMOTE or at teardown).
    let giant = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD.
    let f1 = unsafe { GuestFrame::<Size1G>::new(giant.first()) }.unwrap();
    td.map_1g(Gpa::new(GIB), f1, &|| {}).unwrap();
    let g = giant.first().as_u64();
    assert!(
        (0..512).all(|i| sim.pamt_pair(Pfn::new(g + i * 512)).is_none()),
        "no range of the 1 GiB page has a pair"
    );

    // The last 4K page of range `b` out: its pair goes; range `a` keeps
    // its pair while one of its pages is mapped.
    let back = td
        .unmap::<Size4K>(Gpa::new(4 * MIB + 2 * 4096), &|| {})
        .unwrap();
    assert_eq!(back.pfn(), b);
    let _ = back.into_range();
    assert_eq!(h.pamt_pairs(), after_build + 1);
    let back = td.unmap::<Size4K>(Gpa::new(4 * MIB), &|| {}).unwrap();
    let _ = back.into_range();
    assert_eq!(h.pamt_pairs(), after_build + 1);

    let pairs = h.pamt_pairs();
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(h.pamt_pairs(), 0, "teardown returns every pair");
    // The report lists the pairs' pages as their own role.
    let pamt = report
        .freed
        .iter()
        .filter(|(_, r)| *r == PageRole::Pamt)
        .count();
    assert_eq!(pamt, 2 * pairs);
    assert_eq!(
        calls(&sim, Leaf::PHYMEM_PAMT_ADD),
        calls(&sim, Leaf::PHYMEM_PAMT_REMOVE)
    );
    // What stayed mapped came back: page a + 1, the 2 MiB and the 1 GiB
    // page, all parts of the three runs.
    assert_eq!(report.guest_frames_returned(), 1 + 512 + 512 * 512);
    give_frames_back(&sim, &[small, huge, giant]);
    assert_back_to(&sim, &baseline, "lifecycle");
}

#[test]
fn threads_mapping_one_range_add_one_pair_and_remove_it_once() {
    let sim = sim();
    let h = TdHost::new(ready(&sim, true)).unwrap();
    let baseline = sim.accounting();
    let td = running(&h);
    let before = h.pamt_pairs();
    let adds = calls(&sim, Leaf::PHYMEM_PAMT_ADD);
    let removes = calls(&sim, Leaf::PHYMEM_PAMT_REMOVE);
    // Four 2 MiB ranges of frames; four threads each map one page of every
    // range, at once, several rounds, unmapping in between.
    const THREADS: u64 = 4;
    const RANGES: u64 = 4;
    const ROUNDS: u64 = 20;
    let mem = frames(&sim, 512 * RANGES, 512);
    let barrier = Barrier::new(THREADS as usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (td, barrier) = (&td, &barrier);
            s.spawn(move || {
                for round in 0..ROUNDS {
                    barrier.wait();
                    for r in 0..RANGES {
                        let pfn = Pfn::new(mem.first().as_u64() + r * 512 + t);
                        let gpa = Gpa::new((r * 512 + t) * 4096 + 16 * MIB);
                        // Contention (the pair being added or removed by
                        // another thread, or the module's BUSY) comes back
                        // as a typed outcome: retry, as a VMM's fault would.
                        let mut f = frame4k(pfn);
                        loop {
                            match td.map(gpa, f) {
                                Ok(()) => break,
                                Err(e) if e.error.is_contention() => f = e.returned,
                                Err(e) => panic!("round {round}: {}", e.error),
                            }
                        }
                    }
                    barrier.wait();
                    for r in 0..RANGES {
                        let gpa = Gpa::new((r * 512 + t) * 4096 + 16 * MIB);
                        loop {
                            match td.unmap::<Size4K>(gpa, &|| {}) {
                                Ok(f) => {
                                    let _ = f.into_range();
                                    break;
                                }
                                Err(e) if e.is_contention() => {}
                                Err(e) => panic!("round {round}: {e}"),
                            }
                        }
                    }
                }
            });
        }
    });
    // Each round added one pair per range and removed it again (the last
    // page out of each range removes it): never two pairs for one range.
    assert_eq!(h.pamt_pairs(), before);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    // Calls, retries included: equal, because a PAMT.REMOVE never meets a
    // BUSY range. The last page's reference is dropped only after its
    // PAGE.WBINVD (which walks the page's PAMT entry, in the pair, holding
    // the range's 2M entry shared) returned; dropped before it, another
    // thread's PAMT.REMOVE met that walk thousands of times a run.
    let added = calls(&sim, Leaf::PHYMEM_PAMT_ADD) - adds;
    let removed = calls(&sim, Leaf::PHYMEM_PAMT_REMOVE) - removes;
    assert_eq!(added, removed);
    assert!(added >= RANGES, "{added}");
    assert!(added <= RANGES * ROUNDS * THREADS, "{added}");
    sim.check_invariants().unwrap();
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    give_frames_back(&sim, &report.guest_returned);
    give_frames_back(&sim, &[mem]);
    assert_back_to(&sim, &baseline, "threads");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_failed_pamt_add_gives_the_frame_back_and_a_refused_remove_keeps_the_pair() {
    let sim = sim();
    let h = TdHost::new(ready(&sim, true)).unwrap();
    let baseline = sim.accounting();
    let td = running(&h);
    let before = h.pamt_pairs();
    let mem = frames(&sim, 512, 512);
    let gpa = Gpa::new(32 * MIB);

    // A PAMT.ADD that fails with an error: the map fails with it, names the
    // leaf, and the frame comes back; no pair, no page lost.
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAMT_ADD,
        1,
        TdxStatus::from_raw(0xC000_0100_0000_0001),
    ));
    let e = td.map(gpa, frame4k(mem.first())).unwrap_err();
    match e.error {
        TdError::Seamcall { error, .. } => assert_eq!(error.leaf(), Leaf::PHYMEM_PAMT_ADD.v0()),
        other => panic!("{other}"),
    }
    assert_eq!(e.returned.pfn(), mem.first());
    assert_eq!(h.pamt_pairs(), before);
    sim.check_invariants().unwrap();

    // Mapped now; a PAMT.REMOVE the module refuses at the unmap keeps the
    // pair installed with no page: the frame still comes back.
    td.map(gpa, e.returned).unwrap();
    assert_eq!(h.pamt_pairs(), before + 1);
    let removes = calls(&sim, Leaf::PHYMEM_PAMT_REMOVE);
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAMT_REMOVE,
        1,
        TdxStatus::from_raw(0xC000_0100_0000_0001),
    ));
    let back = td.unmap::<Size4K>(gpa, &|| {}).unwrap();
    let _ = back.into_range();
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAMT_REMOVE), removes + 1);
    assert_eq!(h.pamt_pairs(), before + 1, "the pair stays installed");
    sim.check_invariants().unwrap();

    // The next page of the range reuses it: no PAMT.ADD.
    let adds = calls(&sim, Leaf::PHYMEM_PAMT_ADD);
    td.map(gpa, frame4k(mem.first())).unwrap();
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAMT_ADD), adds);
    let _ = td.unmap::<Size4K>(gpa, &|| {}).unwrap().into_range();
    assert_eq!(h.pamt_pairs(), before);

    // Left installed again, a 2 MiB mapping of the range removes it first
    // (the module refuses a 2 MiB page in a range with a pair).
    td.map(gpa, frame4k(mem.first())).unwrap();
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAMT_REMOVE,
        calls(&sim, Leaf::PHYMEM_PAMT_REMOVE) + 1,
        TdxStatus::from_raw(0xC000_0100_0000_0001),
    ));
    let _ = td.unmap::<Size4K>(gpa, &|| {}).unwrap().into_range();
    assert_eq!(h.pamt_pairs(), before + 1);
    // SAFETY: allocated above, back from the TD.
    let f2 = unsafe { GuestFrame::<Size2M>::new(mem.first()) }.unwrap();
    td.map(Gpa::new(64 * MIB), f2).unwrap();
    assert_eq!(h.pamt_pairs(), before);
    sim.check_invariants().unwrap();

    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(h.pamt_pairs(), 0);
    give_frames_back(&sim, &report.guest_returned);
    assert_back_to(&sim, &baseline, "faults");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_pair_left_by_a_refused_remove_goes_with_release_pairs() {
    let sim = sim();
    let h = Arc::new(TdHost::new(ready(&sim, true)).unwrap());
    let baseline = sim.accounting();
    let td = running(Arc::clone(&h));
    let mem = frames(&sim, 1, 1);
    td.map(Gpa::new(MIB), frame4k(mem.first())).unwrap();
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAMT_REMOVE,
        calls(&sim, Leaf::PHYMEM_PAMT_REMOVE) + 1,
        TdxStatus::from_raw(0xC000_0100_0000_0001),
    ));
    let _ = td
        .unmap::<Size4K>(Gpa::new(MIB), &|| {})
        .unwrap()
        .into_range();
    give_frames_back(&sim, &[mem]);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    give_frames_back(&sim, &report.guest_returned);
    // Teardown removed the pairs of its control pages; the one left by the
    // refused removal is still installed, with no page.
    assert_eq!(h.pamt_pairs(), 1);
    assert_eq!(h.release_pairs(), 0);
    assert_back_to(&sim, &baseline, "release_pairs");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn demote_takes_a_pair_with_512_pages_and_promote_gives_it_back() {
    let sim = sim();
    let h = TdHost::new(ready(&sim, true)).unwrap();
    let baseline = sim.accounting();
    let td = running(&h);
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    let gpa = Gpa::new(8 * MIB);
    td.map(gpa, f).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    let before = h.pamt_pairs();
    let adds = calls(&sim, Leaf::PHYMEM_PAMT_ADD);

    // The split gives the range a pair through DEMOTE itself (the new
    // S-EPT page's range may need one too, through PAMT.ADD).
    td.demote::<Size2M>(gpa, &|| {}).unwrap();
    let new_sept_pairs = (calls(&sim, Leaf::PHYMEM_PAMT_ADD) - adds) as usize;
    assert_eq!(h.pamt_pairs(), before + 1 + new_sept_pairs);
    // 511 pages out and back in: the pair stays (the range always holds
    // pages), no PAMT.ADD or REMOVE for it.
    let removes = calls(&sim, Leaf::PHYMEM_PAMT_REMOVE);
    let hole = Gpa::new(gpa.as_u64() + 7 * 4096);
    let f4 = td.unmap::<Size4K>(hole, &|| {}).unwrap();
    td.map(hole, f4).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), hole.as_u64(), 0),
        TdxStatus::SUCCESS
    );
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAMT_REMOVE), removes);

    // The merge hands the pair back without PAMT.REMOVE.
    td.promote::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(
        calls(&sim, Leaf::PHYMEM_PAMT_REMOVE),
        removes + new_sept_pairs as u64
    );
    assert_eq!(h.pamt_pairs(), before);
    sim.check_invariants().unwrap();

    let f = td.unmap::<Size2M>(gpa, &|| {}).unwrap();
    let _ = f.into_range();
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(h.pamt_pairs(), 0);
    give_frames_back(&sim, &[huge]);
    assert_back_to(&sim, &baseline, "demote/promote");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_busy_pamt_add_is_retried_under_the_map_policy_or_returned_as_contention() {
    let sim = sim();
    let h = TdHost::new(ready(&sim, true)).unwrap();
    let baseline = sim.accounting();
    let mut td = running(&h);
    let mem = frames(&sim, 512, 512);
    let busy = TdxStatus::from_raw(0x8000_0200_0000_0001);

    // Retried: the default policy retries BUSY, and the map succeeds.
    let adds = calls(&sim, Leaf::PHYMEM_PAMT_ADD);
    sim.inject(Fault::status(Leaf::PHYMEM_PAMT_ADD, 1, busy));
    td.map(Gpa::new(MIB), frame4k(mem.first())).unwrap();
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAMT_ADD), adds + 2);
    let _ = td
        .unmap::<Size4K>(Gpa::new(MIB), &|| {})
        .unwrap()
        .into_range();

    // A fault path that returns to the guest at once: BUSY is contention,
    // the frame comes back, nothing is installed.
    td.set_map_policy(tdx::api::retry::RetryPolicy::IMMEDIATE);
    let pairs = h.pamt_pairs();
    // (A fault's call number counts from the first fault planned.)
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAMT_ADD,
        calls(&sim, Leaf::PHYMEM_PAMT_ADD) - adds + 1,
        busy,
    ));
    let e = td.map(Gpa::new(MIB), frame4k(mem.first())).unwrap_err();
    assert!(e.error.is_contention(), "{}", e.error);
    assert!(matches!(e.error, TdError::Busy { .. }), "{}", e.error);
    assert_eq!(h.pamt_pairs(), pairs);
    // The retry (the guest faults again) succeeds.
    td.map(Gpa::new(MIB), e.returned).unwrap();
    assert_eq!(h.pamt_pairs(), pairs + 1);

    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    give_frames_back(&sim, &[mem]);
    assert_back_to(&sim, &baseline, "busy");
}
