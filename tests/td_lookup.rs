//! `Td::mapping`: what the TD maps at a GPA, by size, first GPA, first
//! frame and state, as its record of the S-EPT says.

// UNSAFETY: the test hands frames it allocated from the simulator to the
// TD (`GuestFrame::new`) and frees them when they come back.
#![allow(unsafe_code)]

mod td_host;

use td_host::{frames, give_frames_back, host, sim};
use tdx::{
    Gpa, Pfn, Size1G, Size2M, Size4K, TdxLevel,
    api::{
        CpuId, InitialRcx, X2ApicId,
        td::{GuestFrame, Mapping, MappingState, TdConfig},
    },
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn mapping_reports_each_page_by_size_first_gpa_and_frame() {
    let sim = sim();
    let h = host(&sim);
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = h.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();

    let small = frames(&sim, 1, 1);
    let huge = frames(&sim, 512, 512);
    let giant = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD (the three frames).
    let f4 = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
    td.map(Gpa::new(MIB), f4).unwrap();
    // SAFETY: as above.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(2 * MIB), f2).unwrap();
    // SAFETY: as above.
    let f1 = unsafe { GuestFrame::<Size1G>::new(giant.first()) }.unwrap();
    td.map_1g(Gpa::new(GIB), f1, &|| {}).unwrap();

    let m = |gpa: u64| td.mapping(Gpa::new(gpa));
    let page = |gpa: u64, size, first: Pfn| Mapping {
        gpa: Gpa::new(gpa),
        size,
        first,
        state: MappingState::Mapped,
    };
    assert_eq!(
        m(MIB + 0x123),
        Some(page(MIB, TdxLevel::L4K, small.first()))
    );
    assert_eq!(m(MIB - 4096), None, "the 4K page next to it");
    assert_eq!(
        m(3 * MIB - 1),
        Some(page(2 * MIB, TdxLevel::L2M, huge.first()))
    );
    assert_eq!(
        m(GIB + 7 * MIB),
        Some(page(GIB, TdxLevel::L1G, giant.first()))
    );
    assert_eq!(m(2 * GIB), None);
    assert_eq!(m(0), None);

    // Split: the 4K pages below are reported one by one.
    td.demote::<Size2M>(Gpa::new(2 * MIB), &|| {}).unwrap();
    let third = Pfn::new(huge.first().as_u64() + 3);
    assert_eq!(
        m(2 * MIB + 3 * 4096 + 8),
        Some(page(2 * MIB + 3 * 4096, TdxLevel::L4K, third))
    );
    // Unmapped: nothing.
    let _ = td
        .unmap::<Size4K>(Gpa::new(MIB), &|| {})
        .unwrap()
        .into_range();
    assert_eq!(m(MIB), None);

    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    // Every frame came back (the unmap, then teardown).
    give_frames_back(&sim, &[small, huge, giant]);
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn the_simulators_handles_have_names_and_a_td_builds_from_its_config() {
    use tdx::api::td::{Finalized, Initialized};
    use tdx_sim::{SimHost, SimTd};
    let sim = sim();
    let h: SimHost<'_> = host(&sim);
    let config = TdConfig::builder().max_vcpus(1).build();
    let mut td: SimTd<'_, '_, Initialized> = h.build_td_from(&config).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td: SimTd<'_, '_, Finalized> = td.finalize().map_err(|f| f.error).unwrap();
    assert_eq!(td.vcpus().count(), 1);
    assert!(td.teardown().is_clean());
}

/// A map that overlaps what is there is refused from the TD's own record,
/// before any SEAMCALL, saying what is in the way: a page of the same size,
/// a larger page, or a table of smaller pages (in use or empty). The frame
/// comes back each time.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_overlapping_map_says_what_is_in_the_way_before_any_seamcall() {
    use td_host::calls;
    use tdx::{
        Leaf,
        api::td::{Occupant, TdError},
    };
    let sim = sim();
    let h = host(&sim);
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = h.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();

    let small = frames(&sim, 1, 1);
    let huge = frames(&sim, 512, 512);
    let spare4 = frames(&sim, 1, 1);
    let spare2 = frames(&sim, 512, 512);
    let spare1 = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: every frame below was allocated above for this TD.
    let f4 = |r: tdx::types::PfnRun| unsafe { GuestFrame::<Size4K>::new(r.first()) }.unwrap();
    // SAFETY: as above.
    let f2 = |r: tdx::types::PfnRun| unsafe { GuestFrame::<Size2M>::new(r.first()) }.unwrap();
    // SAFETY: as above.
    let f1 = |r: tdx::types::PfnRun| unsafe { GuestFrame::<Size1G>::new(r.first()) }.unwrap();
    // A 4K page at 1 MiB (its 2M entry becomes a table) and a 2M page at 2 MiB.
    td.map(Gpa::new(MIB), f4(small)).unwrap();
    td.map(Gpa::new(2 * MIB), f2(huge)).unwrap();

    let seamcalls = || sim.stats().seamcalls.values().sum::<u64>();
    let before = seamcalls();
    let occupied = |gpa: u64, by| TdError::Occupied {
        gpa: Gpa::new(gpa),
        by,
    };
    // The same 4K page.
    let e = td.map(Gpa::new(MIB), f4(spare4)).unwrap_err();
    let page4 = Occupant::Page {
        at: Gpa::new(MIB),
        size: TdxLevel::L4K,
    };
    assert_eq!(e.error, occupied(MIB, page4));
    assert_eq!(e.returned.pfn(), spare4.first(), "the frame comes back");
    // A 4K page inside the 2M page: the larger page, by its first GPA.
    let inside = 2 * MIB + 5 * 4096;
    let e = td.map(Gpa::new(inside), e.returned).unwrap_err();
    let page2 = Occupant::Page {
        at: Gpa::new(2 * MIB),
        size: TdxLevel::L2M,
    };
    assert_eq!(e.error, occupied(inside, page2));
    let _ = e.returned.into_range();
    // A 2M page over the 4K one: the table of 4K pages in its 2M entry.
    let e = td.map(Gpa::new(0), f2(spare2)).unwrap_err();
    let table2 = Occupant::Table {
        at: Gpa::new(0),
        size: TdxLevel::L2M,
    };
    assert_eq!(e.error, occupied(0, table2));
    // The same 2M page.
    let e = td.map(Gpa::new(2 * MIB), e.returned).unwrap_err();
    assert_eq!(e.error, occupied(2 * MIB, page2));
    let _ = e.returned.into_range();
    // A 1G page over the first GiB, which holds both.
    let e = td.map_1g(Gpa::new(0), f1(spare1), &|| {}).unwrap_err();
    let table1 = Occupant::Table {
        at: Gpa::new(0),
        size: TdxLevel::L1G,
    };
    assert_eq!(e.error, occupied(0, table1));
    assert_eq!(
        seamcalls(),
        before,
        "every refusal came before any SEAMCALL"
    );
    assert!(e.error.to_string().contains("remove_table"), "{}", e.error);

    // Unmapped, the 4K page's table is empty and still in the way of a 2M
    // page; once removed, the 2M page maps.
    let _ = td
        .unmap::<Size4K>(Gpa::new(MIB), &|| {})
        .unwrap()
        .into_range();
    let e = td.map(Gpa::new(0), f2(spare2)).unwrap_err();
    assert_eq!(e.error, occupied(0, table2));
    let adds = calls(&sim, Leaf::MEM_PAGE_AUG);
    td.remove_table::<Size2M>(Gpa::new(0), &|| {}).unwrap();
    td.map(Gpa::new(0), e.returned).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), adds + 1);

    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    give_frames_back(&sim, &[small, huge, spare4, spare2, spare1]);
    sim.check_invariants().unwrap();
}
