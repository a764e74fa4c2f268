//! A VMM's run loop through the safe API, recorded: a TD whose guest
//! program accepts two private pages (mapped lazily by the host on the EPT
//! violations), writes and reads them, converts one to shared (MapGPA),
//! writes the shared page once the host maps it in the VMM's shared EPT,
//! and halts, all through tdx-api's vCPU handle on a
//! `tdx_sim::trace::Recorder`. The trace carries the guest's operations:
//! it replays on a fresh simulator with every output as recorded, and the
//! replay, recorded, is the same trace.

// UNSAFETY: the test hands frames it allocated from the simulated host to
// the TD (`GuestFrame::new`) and frees them when the TD gives them back.
#![allow(unsafe_code)]

mod td_host;

use tdx::{
    Gpa, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{GuestFrame, TdConfig, TdHost},
    },
    types::{
        TdxStatus,
        exit::{TdExit, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{
    Guest, MachineDesc, Profile, SharedMapping, Simulator,
    trace::{Recorder, Trace},
};

const GIB: u64 = 1 << 30;
/// The shared bit of a 4-level EPT TD's GPAs (GPAW 48: bit 47).
const SHARED: u64 = 1 << 47;

fn frame(sim: &Simulator) -> GuestFrame<Size4K> {
    let pfn = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
    // SAFETY: allocated just now for the TD; untouched until given back.
    unsafe { GuestFrame::new(pfn) }.unwrap()
}

/// The guest: two accepted pages, a conversion, a shared write, a halt.
fn boot(g: &mut Guest) {
    for gpa in [0x1000, 0x2000] {
        assert_eq!(g.accept(gpa, 0), TdxStatus::SUCCESS, "accept {gpa:#x}");
    }
    g.write(0x1000, b"private").unwrap();
    assert_eq!(g.read(0x1000, 7).unwrap(), b"private");
    let (st, _) = g.tdvmcall(subfunction::MAP_GPA, [0x2000 | SHARED, 0x1000, 0, 0]);
    assert_eq!(st, VmcallStatus::SUCCESS);
    g.write(0x2000 | SHARED, b"shared").unwrap();
    assert_eq!(g.halt(), VmcallStatus::SUCCESS);
}

/// Runs the VMM on a fresh simulator, recorded; returns the trace.
fn record() -> String {
    let sim = Simulator::new(
        MachineDesc::new(vec![(GIB, 2 * GIB)])
            .with_cpus(2, 2)
            .with_profile(td_host::profile(Profile::tdx_1_5())),
    )
    .unwrap();
    let base = sim.accounting();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    {
        let input = PlanInput::new(vec![MemRange {
            start: GIB,
            end: 2 * GIB,
            node: 0,
        }]);
        let module = TdxModule::init(&rec, &rec)
            .map_err(|r| r.error)
            .unwrap()
            .configure(&input)
            .map_err(|e| e.error.clone())
            .unwrap()
            .init_extensions()
            .map_err(|r| r.error.clone())
            .unwrap();
        let host = TdHost::new(module).map_err(|r| r.error).unwrap();
        let params = TdConfig::builder().max_vcpus(1).build().to_params();
        let mut td = host.build_td(&params).unwrap();
        let id = td
            .create_vcpu(CpuId(1), InitialRcx(0), X2ApicId(0))
            .unwrap();
        let td = td.finalize().map_err(|f| f.error).unwrap();
        sim.set_guest(id.tdvpr, boot);

        let shared = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
        let mut v = td.vcpu(id).unwrap();
        let mut exits = Vec::new();
        loop {
            let exit = v.enter(CpuId(1)).unwrap();
            exits.push(
                format!("{exit:?}")
                    .split([' ', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            );
            match exit {
                TdExit::EptViolation { gpa, .. } if gpa & SHARED == 0 => {
                    td.map(Gpa::new(gpa), frame(&sim)).unwrap();
                }
                TdExit::EptViolation { gpa, .. } => {
                    sim.map_shared(
                        td.tdr(),
                        gpa,
                        Some(SharedMapping::Memory(shared.first().hpa())),
                    );
                }
                TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                    VmcallRequest::MapGpa { gpa, size } => {
                        let r = td.unmap_range(Gpa::new(gpa & !SHARED), size, &|| {});
                        assert!(r.is_complete(), "{r:?}");
                        for run in r.returned() {
                            // SAFETY: the TD gave the frames back, flushed.
                            unsafe { sim.free_pages(run) };
                        }
                        v.reply(VmcallStatus::SUCCESS).unwrap();
                    }
                    VmcallRequest::Hlt { .. } => break,
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(exits.len(), 5, "{exits:?}");
        v.reply(VmcallStatus::SUCCESS).unwrap();
        drop(v);
        let report = td.teardown();
        assert!(report.is_clean(), "{report:?}");
        for run in report.guest_returned.iter().copied().chain([shared]) {
            // SAFETY: the TD gave the frames back, flushed; `shared` was
            // the host's.
            unsafe { sim.free_pages(run) };
        }
    }
    let text = String::from_utf8(rec.finish().unwrap()).unwrap();
    sim.check_invariants().unwrap();
    assert_ne!(sim.accounting(), base, "the module keeps its PAMT");
    text
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_recorded_vmm_run_loop_replays_and_records_back() {
    let text = record();
    // The guest's operations are in the trace: two accepts, the accesses,
    // the MapGPA and the halt, and the host's shared mapping.
    for needle in [
        "\"do\":\"accept\",\"gpa\":\"0x1000\"",
        "\"do\":\"accept\",\"gpa\":\"0x2000\"",
        "\"do\":\"write\",\"gpa\":\"0x800000002000\"",
        "\"do\":\"vmcall\"",
        "\"do\":\"read\"",
        "\"op\":\"map_shared\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from the trace");
    }

    let t = Trace::parse(text.as_bytes()).unwrap();
    let sim = t.simulator().unwrap();
    let mut out = Vec::new();
    let summary = t.run(&sim, &mut out).unwrap();
    assert!(summary.passed(), "{summary}");
    assert_eq!(summary.checked, summary.seamcalls);

    let sim = t.simulator().unwrap();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    let summary = t.run_recorded(&rec, &mut std::io::sink()).unwrap();
    assert!(summary.passed(), "{summary}");
    let again = String::from_utf8(rec.finish().unwrap()).unwrap();
    assert!(again == text, "the replay recorded other lines");
}
