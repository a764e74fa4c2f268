//! The quickstart's TD, recorded and replayed: the steps of
//! `examples/quickstart.rs` (bring-up from a real machine's memory map, a
//! TD with two vCPUs and measured initial memory, finalize, private memory
//! at 1G, 2M and 4K, a batched unmap, teardown) run through the safe API on
//! a `tdx_sim::trace::Recorder`, smaller in page counts than the example.
//! The trace must then replay on a fresh simulator of the trace's machine
//! with every output register the recording saw, and no rule broken.

// UNSAFETY: the test hands frames it allocated from the simulated host to
// the TD (`GuestFrame::new`) and frees them when the TD gives them back.
#![allow(unsafe_code)]

use std::path::PathBuf;

use tdx::{
    Gpa, Leaf, PageSize, Pfn, Size1G, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        td::{GuestFrame, TdConfig, TdHost},
    },
    types::PfnRun,
};
use tdx_sim::{
    MachineDesc, Profile, Simulator, SysState,
    trace::{self, Recorder, Trace},
};

const GIB: u64 = 1 << 30;

fn alloc(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere)
        .expect("host memory")
}

/// Runs the quickstart's steps on a fresh simulator of `desc`, recorded.
/// Returns the trace and the simulator it ran on.
fn record(desc: &MachineDesc) -> (String, Simulator) {
    let sim = Simulator::new(desc.clone()).unwrap();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    {
        let module = TdxModule::init(&rec, &rec)
            .map_err(|r| r.error)
            .unwrap()
            .configure(&desc.plan_input())
            .map_err(|e| e.error.clone())
            .unwrap()
            .init_extensions()
            .map_err(|r| r.error.clone())
            .unwrap();
        let host = TdHost::new(module).map_err(|r| r.error).unwrap();
        let params = TdConfig::builder().max_vcpus(2).build().to_params();
        let mut td = host.build_td(&params).unwrap();
        // Two vCPUs on CPUs of different packages.
        td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
            .unwrap();
        td.create_vcpu(CpuId(4), InitialRcx(0), X2ApicId(1))
            .unwrap();
        // 16 measured initial pages.
        let initial = alloc(&sim, 16, 1);
        for i in 0..16u64 {
            let page: [u8; 4096] = std::array::from_fn(|b| (b as u8) ^ (i as u8));
            // SAFETY: allocated above for this TD; untouched until returned.
            let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(initial.first().as_u64() + i)) }
                .unwrap();
            td.add_page(Gpa::new(0xFFF0_0000 + 4096 * i), f, &page, true)
                .map_err(|f| f.error)
                .unwrap();
        }
        let td = td.finalize().map_err(|f| f.error).unwrap();
        // No vCPU runs: the kick has nobody to interrupt.
        let kick = || {};
        // 1 GiB at 1G, 16 MiB at 2M, 2 MiB at 4K.
        let run1g = alloc(&sim, 1 << 18, 1 << 18);
        // SAFETY: as above.
        let f = unsafe { GuestFrame::<Size1G>::new(run1g.first()) }.unwrap();
        td.map_1g(Gpa::new(4 * GIB), f, &kick)
            .map_err(|f| f.error)
            .unwrap();
        let run2m = alloc(&sim, 8 * 512, 512);
        for i in 0..8 {
            // SAFETY: as above.
            let f =
                unsafe { GuestFrame::<Size2M>::new(Pfn::new(run2m.first().as_u64() + i * 512)) }
                    .unwrap();
            td.map(Gpa::new(6 * GIB + i * Size2M::SIZE), f)
                .map_err(|f| f.error)
                .unwrap();
        }
        let run4k = alloc(&sim, 512, 1);
        for i in 0..512 {
            // SAFETY: as above.
            let f =
                unsafe { GuestFrame::<Size4K>::new(Pfn::new(run4k.first().as_u64() + i)) }.unwrap();
            td.map(Gpa::new(7 * GIB + i * Size4K::SIZE), f)
                .map_err(|f| f.error)
                .unwrap();
        }
        // Half of the 2M and 4K memory in one batch: one TRACK, one kick.
        let mut batch = td.zap();
        batch
            .block_range(Gpa::new(6 * GIB), 4 * Size2M::SIZE)
            .unwrap();
        batch
            .block_range(Gpa::new(7 * GIB), 256 * Size4K::SIZE)
            .unwrap();
        let unmapped = batch.commit(&kick);
        assert!(unmapped.is_complete(), "{:?}", unmapped.stopped);
        let report = td.teardown();
        assert!(report.is_clean(), "{report:?}");
        let back = unmapped.frames_returned() + report.guest_frames_returned();
        assert_eq!(back, 16 + (1 << 18) + 8 * 512 + 512);
        for run in unmapped
            .returned()
            .chain(report.guest_returned.iter().copied())
        {
            // SAFETY: the TD gave the frames back, flushed.
            unsafe { sim.free_pages(run) };
        }
    }
    let text = String::from_utf8(rec.finish().unwrap()).unwrap();
    sim.check_invariants().unwrap();
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    (text, sim)
}

#[test]
#[cfg_attr(miri, ignore = "reads memory maps from disk; Miri isolates files")]
fn the_quickstart_td_replays_with_every_output_as_recorded() {
    let map = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tdx-plan/testdata/memmaps/07-hpe-dl360-gen10plus-icx-2s-128g.json");
    let desc = MachineDesc::from_memmap_json(&std::fs::read_to_string(map).unwrap())
        .unwrap()
        .with_cpus(2, 4)
        .with_profile(Profile::tdx_1_5());
    let (text, _) = record(&desc);

    // Every kind of leaf the quickstart's TD uses is in the trace.
    for leaf in [
        Leaf::MNG_CREATE,
        Leaf::MNG_KEY_CONFIG,
        Leaf::MNG_INIT,
        Leaf::VP_CREATE,
        Leaf::VP_INIT,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_PAGE_ADD,
        Leaf::MR_EXTEND,
        Leaf::MR_FINALIZE,
        Leaf::MEM_PAGE_AUG,
        Leaf::MEM_PAGE_PROMOTE,
        Leaf::MEM_RANGE_BLOCK,
        Leaf::MEM_TRACK,
        Leaf::MEM_PAGE_REMOVE,
        Leaf::PHYMEM_PAGE_WBINVD,
        Leaf::VP_FLUSH,
        Leaf::MNG_VPFLUSHDONE,
        Leaf::PHYMEM_CACHE_WB,
        Leaf::MNG_KEY_FREEID,
        Leaf::PHYMEM_PAGE_RECLAIM,
    ] {
        // The version the library chose is in RAX; a trace names version
        // 0 by its name and any other by its number.
        let named = format!("\"leaf\":\"{}\"", trace::leaf_text(leaf.v0().rax()));
        let numbered = format!("\"leaf\":\"{}\"", trace::leaf_text(leaf.v(1).rax()));
        assert!(
            text.contains(&named) || text.contains(&numbered),
            "{leaf:?} missing from the trace"
        );
    }

    // Replayed on a fresh simulator built from the trace's machine line:
    // every recorded output register matches, and nothing is broken.
    let trace = Trace::parse(text.as_bytes()).unwrap();
    assert_eq!(trace.machine_desc().memory, desc.memory);
    let sim = trace.simulator().unwrap();
    let mut out = Vec::new();
    let summary = trace.run(&sim, &mut out).unwrap();
    assert!(summary.passed(), "{summary}");
    assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    assert_eq!(summary.checked, summary.seamcalls);
    assert_eq!(summary.module_state, Some(SysState::Ready));
    // One output line per SEAMCALL.
    assert_eq!(
        String::from_utf8(out).unwrap().lines().count() as u64,
        summary.seamcalls
    );
}
