//! A split page (`Td::demote`) as the TD records it: the table a demote
//! links leaves its entries unwritten until one is needed, and stands for
//! the 512 smaller pages meanwhile. These tests check that such a table
//! behaves as one filled with the 512 pages would: `Td::mapping` of every
//! GPA, maps and unmaps of single pages inside, refusals that name what is
//! in the way, `promote` right after a demote and after changes (refused
//! when one page differs), `remove_table`, a 1 GiB split and a 2 MiB split
//! inside it, threads on one split table, and teardown accounting for
//! every frame.

// UNSAFETY: the tests hand frames they allocated from the simulator to the
// TD (`GuestFrame::new`) and free them when they come back.
#![allow(unsafe_code)]

mod td_host;

use std::sync::atomic::{AtomicBool, Ordering};

use td_host::{assert_back_to, calls, frames, give_frames_back, host, sim};
use tdx::{
    Gpa, Leaf, Pfn, Size1G, Size2M, Size4K, TdxLevel,
    api::{
        CpuId, InitialRcx, X2ApicId,
        td::{Finalized, GuestFrame, Mapping, MappingState, Occupant, Td, TdConfig, TdError},
    },
    types::PfnRun,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

type SimTd<'h, 's> = Td<Finalized, &'h td_host::Host<'s>>;

fn finalized<'h, 's>(h: &'h td_host::Host<'s>) -> SimTd<'h, 's> {
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = h.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.finalize().map_err(|f| f.error).unwrap()
}

fn page(gpa: u64, size: TdxLevel, first: u64) -> Option<Mapping> {
    Some(Mapping {
        gpa: Gpa::new(gpa),
        size,
        first: Pfn::new(first),
        state: MappingState::Mapped,
    })
}

/// A 2M page at `gpa` from `huge`, split.
fn map_and_split(td: &SimTd<'_, '_>, gpa: u64, huge: PfnRun) {
    // SAFETY: allocated by the caller for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(gpa), f).unwrap();
    td.demote::<Size2M>(Gpa::new(gpa), &|| {}).unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn every_4k_gpa_of_a_split_page_maps_its_part_and_refuses_a_map() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let huge = frames(&sim, 512, 512);
    let base = 2 * MIB;
    map_and_split(&td, base, huge);
    let first = huge.first().as_u64();
    for i in 0..512 {
        let gpa = base + i * 4096;
        assert_eq!(
            td.mapping(Gpa::new(gpa + 0x10)),
            page(gpa, TdxLevel::L4K, first + i),
            "part {i}"
        );
    }
    assert_eq!(td.private_pages(), 512);
    assert_eq!(td.entries_in_flight(), 0);
    // A 4K map onto a part not touched since the split: refused, naming
    // the part, frame back, no SEAMCALL.
    let small = frames(&sim, 1, 1);
    let augs = calls(&sim, Leaf::MEM_PAGE_AUG);
    // SAFETY: allocated above for this TD.
    let f4 = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
    let at = Gpa::new(base + 77 * 4096);
    let e = td.map(at, f4).unwrap_err();
    assert_eq!(
        e.error,
        TdError::Occupied {
            gpa: at,
            by: Occupant::Page {
                at,
                size: TdxLevel::L4K
            }
        }
    );
    // A 2M map onto the split range: the table is in the way.
    let huge2 = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge2.first()) }.unwrap();
    let e2 = td.map(Gpa::new(base), f2).unwrap_err();
    assert_eq!(
        e2.error,
        TdError::Occupied {
            gpa: Gpa::new(base),
            by: Occupant::Table {
                at: Gpa::new(base),
                size: TdxLevel::L2M
            }
        }
    );
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), augs);
    let _ = e.returned.into_range();
    let _ = e2.returned.into_range();

    // Unmap one part and map another frame there: the neighbours keep
    // theirs.
    let back = td.unmap::<Size4K>(at, &|| {}).unwrap();
    assert_eq!(back.pfn().as_u64(), first + 77);
    assert_eq!(td.mapping(at), None);
    assert_eq!(
        td.mapping(Gpa::new(at.as_u64() + 4096)),
        page(at.as_u64() + 4096, TdxLevel::L4K, first + 78)
    );
    // SAFETY: allocated above for this TD.
    let f4 = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
    td.map(at, f4).unwrap();
    assert_eq!(
        td.mapping(at),
        page(at.as_u64(), TdxLevel::L4K, small.first().as_u64())
    );
    // Now one part differs: the merge is refused before any SEAMCALL.
    let blocks = calls(&sim, Leaf::MEM_RANGE_BLOCK);
    let e = td.promote::<Size2M>(Gpa::new(base), &|| {}).unwrap_err();
    assert!(matches!(e, TdError::Gpa { .. }), "{e:?}");
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), blocks);
    assert_eq!(td.entries_in_flight(), 0);
    // The original frame back in place: the merge goes through.
    let _ = td.unmap::<Size4K>(at, &|| {}).unwrap().into_range();
    td.map(at, back).unwrap();
    td.promote::<Size2M>(Gpa::new(base), &|| {}).unwrap();
    assert_eq!(
        td.mapping(Gpa::new(base + 5 * 4096)),
        page(base, TdxLevel::L2M, first)
    );
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![huge]);
    give_frames_back(&sim, &[huge, huge2, small]);
    assert_back_to(&sim, &baseline, "split 2M");
}

#[test]
fn a_promote_right_after_a_demote_merges_and_a_second_split_works() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(4 * MIB), f).unwrap();
    let control = td.control_pages();
    td.demote::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap();
    assert_eq!(td.control_pages(), control + 1, "the split's S-EPT page");
    let promotes = calls(&sim, Leaf::MEM_PAGE_PROMOTE);
    td.promote::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_PROMOTE), promotes + 1);
    assert_eq!(td.control_pages(), control);
    assert_eq!(
        td.mapping(Gpa::new(4 * MIB + 300 * 4096)),
        page(4 * MIB, TdxLevel::L2M, huge.first().as_u64())
    );
    // A promote of a range that is a page already: nothing to merge.
    assert_eq!(
        td.promote::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap_err(),
        TdError::NotMapped(Gpa::new(4 * MIB))
    );
    // Split again, touch one part without changing it (unmap and map the
    // same frame back), merge again.
    td.demote::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap();
    let at = Gpa::new(4 * MIB + 511 * 4096);
    let f = td.unmap::<Size4K>(at, &|| {}).unwrap();
    td.map(at, f).unwrap();
    td.promote::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap();
    assert_eq!(td.private_pages(), 1);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![huge]);
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "promote after demote");
}

/// `remove_table` refuses a split table while any part is mapped, written
/// or not; once every part is unmapped it frees the S-EPT page, and a 2M
/// page can be mapped there.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn remove_table_of_a_split_page_waits_for_every_part() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let huge = frames(&sim, 512, 512);
    let base = 6 * MIB;
    map_and_split(&td, base, huge);
    let removes = calls(&sim, Leaf::MEM_SEPT_REMOVE);
    assert!(matches!(
        td.remove_table::<Size2M>(Gpa::new(base), &|| {}),
        Err(TdError::Gpa { .. })
    ));
    // All but one part out.
    let r = td.unmap_range(Gpa::new(base), 511 * 4096, &|| {});
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.pages.len(), 511);
    assert!(matches!(
        td.remove_table::<Size2M>(Gpa::new(base), &|| {}),
        Err(TdError::Gpa { .. })
    ));
    assert_eq!(calls(&sim, Leaf::MEM_SEPT_REMOVE), removes);
    let last = td
        .unmap::<Size4K>(Gpa::new(base + 511 * 4096), &|| {})
        .unwrap();
    assert_eq!(last.pfn().as_u64(), huge.first().as_u64() + 511);
    let _ = last.into_range();
    td.remove_table::<Size2M>(Gpa::new(base), &|| {}).unwrap();
    assert_eq!(td.mapping(Gpa::new(base)), None);
    // SAFETY: the frames came back above (every part unmapped).
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(base), f).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    give_frames_back(&sim, &[huge]);
    assert_back_to(&sim, &baseline, "remove_table");
}

/// A 1 GiB split: its 2M parts are reported, a 2M part is split in turn
/// (through the 1G table's unwritten entry), a 4K page inside comes out;
/// the 1G page merges back only when everything is as it was. After every
/// 2M part is unmapped, `map_1g` reuses the empty split table.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_split_1g_page_splits_further_and_merges_back() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let giant = frames(&sim, 512 * 512, 512 * 512);
    let first = giant.first().as_u64();
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size1G>::new(giant.first()) }.unwrap();
    td.map_1g(Gpa::new(GIB), f, &|| {}).unwrap();
    td.demote::<Size1G>(Gpa::new(GIB), &|| {}).unwrap();
    assert_eq!(td.private_pages(), 512);
    for i in [0, 1, 300, 511] {
        let gpa = GIB + i * 2 * MIB;
        assert_eq!(
            td.mapping(Gpa::new(gpa + 4096)),
            page(gpa, TdxLevel::L2M, first + i * 512)
        );
    }
    let part = GIB + 9 * 2 * MIB;
    td.demote::<Size2M>(Gpa::new(part), &|| {}).unwrap();
    assert_eq!(td.private_pages(), 511 + 512);
    let hole = Gpa::new(part + 3 * 4096);
    let f4 = td.unmap::<Size4K>(hole, &|| {}).unwrap();
    assert_eq!(f4.pfn().as_u64(), first + 9 * 512 + 3);
    // The 1G merge is refused: one part is a table.
    assert!(td.promote::<Size1G>(Gpa::new(GIB), &|| {}).is_err());
    td.map(hole, f4).unwrap();
    td.promote::<Size2M>(Gpa::new(part), &|| {}).unwrap();
    td.promote::<Size1G>(Gpa::new(GIB), &|| {}).unwrap();
    assert_eq!(
        td.mapping(Gpa::new(GIB + 700 * MIB)),
        page(GIB, TdxLevel::L1G, first)
    );
    // Split again and take every 2M part out: map_1g then reuses the
    // split table, now empty.
    td.demote::<Size1G>(Gpa::new(GIB), &|| {}).unwrap();
    let r = td.unmap_range(Gpa::new(GIB), GIB, &|| {});
    assert!(r.is_complete(), "{r:?}");
    assert_eq!(r.pages.len(), 512);
    let control = td.control_pages();
    // SAFETY: every part came back above.
    let f = unsafe { GuestFrame::<Size1G>::new(giant.first()) }.unwrap();
    td.map_1g(Gpa::new(GIB), f, &|| {}).unwrap();
    assert_eq!(td.control_pages(), control - 1, "the split table went");
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![giant]);
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "split 1G");
}

/// Teardown right after splits (most parts never written, some unmapped,
/// some remapped to other frames) returns every frame once.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn teardown_after_splits_returns_every_frame_once() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let huge: Vec<PfnRun> = (0..4).map(|_| frames(&sim, 512, 512)).collect();
    for (j, run) in huge.iter().enumerate() {
        map_and_split(&td, (16 + 2 * j as u64) * MIB, *run);
    }
    // In the second split page, swap two parts' frames.
    let (a, b) = (Gpa::new(18 * MIB + 4096), Gpa::new(18 * MIB + 2 * 4096));
    let fa = td.unmap::<Size4K>(a, &|| {}).unwrap();
    let fb = td.unmap::<Size4K>(b, &|| {}).unwrap();
    td.map(a, fb).unwrap();
    td.map(b, fa).unwrap();
    // In the third, one part out for good.
    let out = td
        .unmap::<Size4K>(Gpa::new(20 * MIB + 100 * 4096), &|| {})
        .unwrap()
        .into_range();
    let control = td.control_pages();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    // Every frame of the four runs but `out`, once.
    let mut got: Vec<u64> = r
        .guest_returned
        .iter()
        .flat_map(|run| run.first().as_u64()..run.first().as_u64() + run.count())
        .collect();
    got.sort_unstable();
    let mut want: Vec<u64> = huge
        .iter()
        .flat_map(|run| run.first().as_u64()..run.first().as_u64() + 512)
        .filter(|&f| f != out.first().as_u64())
        .collect();
    want.sort_unstable();
    assert_eq!(got, want);
    assert!(control >= 4);
    give_frames_back(&sim, &huge);
    assert_back_to(&sim, &baseline, "teardown after splits");
}

/// Threads on one split table: each unmaps and maps back its own 4K pages
/// (writing their entries for the first time, at once), while another
/// tries to merge the range. Contention answers `InProgress`, nothing
/// else; in the end every part maps its own frame again and the merge
/// goes through.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn threads_on_one_split_table() {
    let sim = sim();
    let h = host(&sim);
    let baseline = sim.accounting();
    let td = finalized(&h);
    let huge = frames(&sim, 512, 512);
    let base = 10 * MIB;
    let first = huge.first().as_u64();
    map_and_split(&td, base, huge);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let td = &td;
                s.spawn(move || {
                    for round in 0..3 {
                        for i in (t..512).step_by(4) {
                            let at = Gpa::new(base + i * 4096);
                            let f = loop {
                                match td.unmap::<Size4K>(at, &|| {}) {
                                    Ok(f) => break f,
                                    Err(TdError::InProgress(_) | TdError::Busy { .. }) => {
                                        std::thread::yield_now()
                                    }
                                    // A merge went through: split again.
                                    Err(TdError::NotMapped(_)) => {
                                        match td.demote::<Size2M>(Gpa::new(base), &|| {}) {
                                            Ok(())
                                            | Err(
                                                TdError::InProgress(_)
                                                | TdError::NotMapped(_)
                                                | TdError::Busy { .. },
                                            ) => {}
                                            Err(e) => panic!("round {round}, {i}: {e}"),
                                        }
                                    }
                                    Err(e) => panic!("round {round}, {i}: {e}"),
                                }
                            };
                            assert_eq!(f.pfn().as_u64(), first + i);
                            let mut f = f;
                            loop {
                                match td.map(at, f) {
                                    Ok(()) => break,
                                    Err(e) => {
                                        assert!(
                                            matches!(
                                                e.error,
                                                TdError::InProgress(_) | TdError::Busy { .. }
                                            ),
                                            "{}",
                                            e.error
                                        );
                                        f = e.returned;
                                        std::thread::yield_now();
                                    }
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        let td = &td;
        let done = &done;
        s.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match td.promote::<Size2M>(Gpa::new(base), &|| {}) {
                    Ok(()) => {
                        // Merged: split again so the workers go on.
                        let _ = td.demote::<Size2M>(Gpa::new(base), &|| {});
                    }
                    Err(
                        TdError::InProgress(_)
                        | TdError::Busy { .. }
                        | TdError::Gpa { .. }
                        | TdError::NotMapped(_),
                    ) => {}
                    Err(e) => panic!("merge: {e}"),
                }
                std::thread::yield_now();
            }
        });
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(td.entries_in_flight(), 0);
    // Split (if the merger left it merged) and check every part.
    let _ = td.demote::<Size2M>(Gpa::new(base), &|| {});
    for i in 0..512 {
        let gpa = base + i * 4096;
        assert_eq!(
            td.mapping(Gpa::new(gpa)),
            page(gpa, TdxLevel::L4K, first + i)
        );
    }
    td.promote::<Size2M>(Gpa::new(base), &|| {}).unwrap();
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![huge]);
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "threads on a split table");
}
