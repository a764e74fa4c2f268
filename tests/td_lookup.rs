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
        CpuId,
        td::{GuestFrame, Mapping, MappingState, TdConfig},
    },
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[test]
fn mapping_reports_each_page_by_size_first_gpa_and_frame() {
    let sim = sim();
    let h = host(&sim);
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = h.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), 0, 0).unwrap();
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
fn the_simulators_handles_have_names_and_a_td_builds_from_its_config() {
    use tdx::api::td::{Finalized, Initialized};
    use tdx_sim::{SimHost, SimTd};
    let sim = sim();
    let h: SimHost<'_> = host(&sim);
    let config = TdConfig::builder().max_vcpus(1).build();
    let mut td: SimTd<'_, '_, Initialized> = h.build_td_from(&config).unwrap();
    td.create_vcpu(CpuId(0), 0, 0).unwrap();
    let td: SimTd<'_, '_, Finalized> = td.finalize().map_err(|f| f.error).unwrap();
    assert_eq!(td.vcpus().count(), 1);
    assert!(td.teardown().is_clean());
}
