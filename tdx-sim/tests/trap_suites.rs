//! The safe API (tdx-api) driving the simulated module through the real
//! SEAMCALL instruction (`tdx_sim::trap::TrapBackend`), compared with the
//! same work through the simulator directly.
//!
//! - `bring_up_td_run_loop_and_teardown_match`: module bring-up
//!   (`TdxModule::init`, `configure`, `init_extensions`), a TD with two
//!   vCPUs and four measured pages, finalized, private memory mapped at 4K
//!   and 2M, a run loop (a guest that accepts, writes and reads pages, takes
//!   a private page lazily on its EPT violation, converts a buffer to shared
//!   and back, asks for CPUID and halts; a second vCPU entered on one CPU
//!   and then another), unmap, and teardown; on module 1.5.01 and on
//!   1.5.16 with Dynamic PAMT. Both runs go through a trace `Recorder`: the
//!   traces (every SEAMCALL with its inputs and outputs, every host
//!   service call) are the same bytes, and so are the MRTD, the exits, the
//!   teardown report, the page accounting and the per-leaf counts.
//! - `threads_map_one_td_through_the_trap`: four threads map and unmap
//!   pages of one TD at once through the trap, each on its own LP; the
//!   accounting is exact while the pages are mapped and after teardown,
//!   and equals that of the same work through the simulator directly.

#![cfg(all(target_os = "linux", target_arch = "x86_64", feature = "trap"))]
// UNSAFETY: `GuestFrame::new` takes frames the test allocated from the
// simulator (whose memory is simulated) and gives to the TD.
#![allow(unsafe_code)]

mod td_support;

use td_support::{GIB, MIB, run};
use tdx_api::{
    CpuId, InitialRcx, Platform, TdxModule, X2ApicId,
    plan::{MemRange, PlanInput},
    td::{GuestFrame, TdConfig, TdHost},
};
use tdx_sim::{
    Accounting, Guest, MachineDesc, Profile, Recorder, Simulator, TraceMachine, seamcalls_by_name,
    trap::TrapBackend,
};
use tdx_sys::Seamcall;
use tdx_types::{
    Gpa, Pfn, PfnRun, Size2M, Size4K, TdxStatus,
    exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
};

const SHARED: u64 = 1 << 47;
/// The guest's pages: 8 mapped up front at [0, 32K), one taken on a fault
/// at 64K, a 2 MiB page at 2M, a 4-page buffer at 128K that goes shared
/// and back.
const UPFRONT: u64 = 8;
const LAZY: u64 = 0x1_0000;
const BUF: u64 = 0x2_0000;
const BUF_PAGES: u64 = 4;

/// Gives `run` back to the host allocator.
fn free<H: Platform + ?Sized>(h: &H, run: PfnRun) {
    // SAFETY: the frames came from the simulator's allocator and the TD
    // gave them back (unmapped or reclaimed); its memory is simulated.
    unsafe { h.free_pages(run) }
}

fn machine(profile: Profile) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(profile),
    )
    .unwrap()
}

fn plan_input() -> PlanInput {
    PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }])
}

fn vmcall(g: &mut Guest, sub: u64, r12: u64, r13: u64) -> VmcallRegs {
    let regs = VmcallRegs {
        r11: sub,
        r12,
        r13,
        ..VmcallRegs::default()
    };
    g.vmcall(0xFFCC, regs).expect("a valid exposure")
}

/// vCPU 0's program.
fn guest(g: &mut Guest) {
    for p in 0..UPFRONT {
        assert_eq!(g.accept(p * 4096, 0), TdxStatus::SUCCESS);
        g.write(p * 4096, &(0x1000 + p).to_le_bytes()).unwrap();
    }
    for p in 0..UPFRONT {
        let v = g.read(p * 4096, 8).unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 0x1000 + p);
    }
    // Not mapped yet: the host maps it on the EPT violation.
    assert_eq!(g.accept(LAZY, 0), TdxStatus::SUCCESS);
    g.write(LAZY, b"lazy").unwrap();
    assert_eq!(g.accept(2 * MIB, 1), TdxStatus::SUCCESS);
    g.write(2 * MIB + 4096, b"huge").unwrap();
    // A buffer to shared and back.
    let r = vmcall(g, subfunction::MAP_GPA, BUF | SHARED, BUF_PAGES * 4096);
    assert_eq!(r.r10, VmcallStatus::SUCCESS.0);
    let r = vmcall(g, subfunction::MAP_GPA, BUF, BUF_PAGES * 4096);
    assert_eq!(r.r10, VmcallStatus::SUCCESS.0);
    for p in 0..BUF_PAGES {
        assert_eq!(g.accept(BUF + p * 4096, 0), TdxStatus::SUCCESS);
    }
    let r = vmcall(g, subfunction::CPUID, 0x4000_0000, 0);
    assert_eq!(r.r12, 0x4000_0001);
    g.halt();
}

/// What one run produced, to compare.
#[derive(Debug, PartialEq)]
struct Outcome {
    mrtd: Vec<u8>,
    exits: Vec<String>,
    report: String,
    accounting: Accounting,
    seamcalls: Vec<(String, u64)>,
    trace: Vec<u8>,
}

/// The whole suite on `sim`, SEAMCALLs through `backend`.
fn suite<B: Seamcall + Sync>(sim: &Simulator, backend: &B, dynamic: bool) -> Outcome {
    let tm = TraceMachine::from_desc(&sim.machine());
    let rec = Recorder::new(backend, sim, &tm, Vec::new()).unwrap();
    let base = sim.accounting();
    let mut module = TdxModule::init(&rec, &rec).map_err(|r| r.error).unwrap();
    module.set_dynamic_pamt(dynamic);
    assert_eq!(module.uses_dynamic_pamt(), dynamic);
    let module = module
        .configure(&plan_input())
        .map_err(|e| e.error.clone())
        .unwrap()
        .init_extensions()
        .map_err(|r| r.error.clone())
        .unwrap();
    let host = TdHost::new(module).map_err(|r| r.error).unwrap();
    let params = TdConfig::builder().max_vcpus(2).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let v0 = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let v1 = td
        .create_vcpu(CpuId(1), InitialRcx(0), X2ApicId(1))
        .unwrap();
    // Four measured pages.
    let initial = run(&rec, 4, 1);
    for i in 0..4u64 {
        let page: [u8; 4096] = std::array::from_fn(|b| (b as u8) ^ (i as u8));
        // SAFETY: a frame allocated from the simulator for this TD and not
        // touched by the host while the TD holds it.
        let f =
            unsafe { GuestFrame::<Size4K>::new(Pfn::new(initial.first().as_u64() + i)) }.unwrap();
        td.add_page(Gpa::new(0xFFF0_0000 + 4096 * i), f, &page, true)
            .map_err(|f| f.error)
            .unwrap();
    }
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let mrtd = td.mrtd().unwrap().to_vec();

    // Private memory: 8 4K pages and one 2M page up front, the rest on
    // faults, from one memslot of 4 MiB.
    let memslot = run(&rec, 1024, 512);
    let frame4k = |gpa: u64| {
        // SAFETY: the memslot's frame for this GPA, given to the TD only.
        unsafe { GuestFrame::<Size4K>::new(Pfn::new(memslot.first().as_u64() + gpa / 4096)) }
            .unwrap()
    };
    for p in 0..UPFRONT {
        td.map(Gpa::new(p * 4096), frame4k(p * 4096))
            .map_err(|f| f.error)
            .unwrap();
    }
    // SAFETY: as above (the memslot's 2 MiB-aligned second half).
    let f2m =
        unsafe { GuestFrame::<Size2M>::new(Pfn::new(memslot.first().as_u64() + 512)) }.unwrap();
    td.map(Gpa::new(2 * MIB), f2m).map_err(|f| f.error).unwrap();

    // The run loop.
    sim.set_guest(v0.tdvpr, guest);
    sim.set_guest(v1.tdvpr, |g: &mut Guest| {
        g.halt();
        g.halt();
    });
    let mut exits = Vec::new();
    let kick = || {};
    let mut v = td.vcpu(v0).unwrap();
    loop {
        sim.set_lp(0);
        let exit = v.enter(CpuId(0)).unwrap();
        exits.push(format!("{exit:?}"));
        match exit {
            TdExit::EptViolation { gpa, .. } => {
                td.map(Gpa::new(gpa), frame4k(gpa))
                    .map_err(|f| f.error)
                    .unwrap();
            }
            TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                VmcallRequest::MapGpa { gpa, size } if gpa & SHARED != 0 => {
                    let r = td.unmap_range(Gpa::new(gpa & !SHARED), size, &kick);
                    assert!(r.is_complete(), "{r:?}");
                    exits.push(format!("{r:?}"));
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::MapGpa { .. } => v.reply(VmcallStatus::SUCCESS).unwrap(),
                VmcallRequest::Cpuid { .. } => v.reply_cpuid([0x4000_0001, 0, 0, 0]).unwrap(),
                VmcallRequest::Hlt { .. } => {
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                    break;
                }
                other => panic!("unexpected TDVMCALL {other:?}"),
            },
            other => panic!("unexpected exit {other:?}"),
        }
    }
    drop(v);
    // vCPU 1 on its CPU, then moved to a CPU of the other package.
    let mut v = td.vcpu(v1).unwrap();
    for cpu in [1, 3] {
        sim.set_lp(cpu);
        let exit = v.enter(CpuId(cpu)).unwrap();
        exits.push(format!("{exit:?}"));
        assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))));
        v.reply(VmcallStatus::SUCCESS).unwrap();
    }
    drop(v);
    sim.set_lp(0);

    // Unmap a 4K page and the 2M page; the rest goes with the teardown.
    let f = td.unmap::<Size4K>(Gpa::new(0), &kick).unwrap();
    exits.push(format!("unmapped {:#x}", f.pfn().as_u64()));
    let f = td.unmap::<Size2M>(Gpa::new(2 * MIB), &kick).unwrap();
    exits.push(format!("unmapped {:#x}", f.pfn().as_u64()));
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    let report = format!("{report:?}");
    drop(host);
    free(&rec, memslot);
    free(&rec, initial);
    let accounting = sim.accounting();
    assert!(accounting.module > base.module, "the module keeps its PAMT");
    sim.check_invariants().unwrap();
    let mut seamcalls: Vec<_> = seamcalls_by_name(&sim.stats()).into_iter().collect();
    seamcalls.sort();
    Outcome {
        mrtd,
        exits,
        report,
        accounting,
        seamcalls,
        trace: rec.finish().unwrap(),
    }
}

fn compare(profile: Profile, dynamic: bool) {
    let (a, b) = (machine(profile.clone()), machine(profile));
    let direct = suite(&a, &&a, dynamic);
    let trap = TrapBackend::new(&b).unwrap();
    let before = tdx_sim::trap::traps();
    let trapped = suite(&b, &trap, dynamic);
    let traps = tdx_sim::trap::traps() - before;
    let calls: u64 = trapped.seamcalls.iter().map(|(_, n)| n).sum();
    // Every SEAMCALL of this thread trapped; vCPU entries are on this
    // thread too, so all of them.
    assert_eq!(traps, calls, "one trap per SEAMCALL");
    assert!(calls > 100, "{calls} SEAMCALLs");
    assert!(direct.exits.len() > 5, "{:?}", direct.exits);

    assert_eq!(direct.mrtd, trapped.mrtd);
    assert_eq!(direct.exits, trapped.exits);
    assert_eq!(direct.report, trapped.report);
    assert_eq!(direct.accounting, trapped.accounting);
    assert_eq!(direct.seamcalls, trapped.seamcalls);
    assert!(
        direct.trace == trapped.trace,
        "the traces differ:\n{}\n---\n{}",
        String::from_utf8_lossy(&direct.trace),
        String::from_utf8_lossy(&trapped.trace)
    );
}

#[test]
fn bring_up_td_run_loop_and_teardown_match() {
    compare(Profile::tdx_1_5(), false);
}

#[test]
fn bring_up_td_run_loop_and_teardown_match_with_dynamic_pamt() {
    compare(Profile::tdx_1_5_16(), true);
}

/// Four threads map 64 4K pages each into one TD at once, each on its own
/// LP, then unmap half; the host's and the module's page counts are exact.
fn threads_map<B: Seamcall + Sync>(
    sim: &Simulator,
    backend: B,
    trapped: bool,
) -> (Accounting, Accounting) {
    const THREADS: u64 = 4;
    const PAGES: u64 = 64;
    let m = TdxModule::init(backend, sim)
        .map_err(|r| r.error)
        .unwrap()
        .configure(&plan_input())
        .map_err(|e| e.error.clone())
        .unwrap()
        .init_extensions()
        .map_err(|r| r.error.clone())
        .unwrap();
    let host = TdHost::new(m).map_err(|r| r.error).unwrap();
    let base = sim.accounting();
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let slots: Vec<PfnRun> = (0..THREADS).map(|_| run(sim, PAGES, 1)).collect();
    let after_build = sim.accounting();
    std::thread::scope(|s| {
        for (t, slot) in slots.iter().enumerate() {
            let td = &td;
            s.spawn(move || {
                sim.set_lp(t as u32);
                let before = tdx_sim::trap::traps();
                for p in 0..PAGES {
                    let gpa = (t as u64 * 2 * MIB) + p * 4096;
                    // SAFETY: this thread's memslot frame, given to the TD only.
                    let f =
                        unsafe { GuestFrame::<Size4K>::new(Pfn::new(slot.first().as_u64() + p)) }
                            .unwrap();
                    let mut f = Some(f);
                    while let Some(frame) = f.take() {
                        if let Err(e) = td.map(Gpa::new(gpa), frame) {
                            assert!(e.error.is_contention(), "map {gpa:#x}: {}", e.error);
                            f = Some(e.returned);
                        }
                    }
                }
                for p in (0..PAGES).step_by(2) {
                    let gpa = (t as u64 * 2 * MIB) + p * 4096;
                    let back = loop {
                        match td.unmap::<Size4K>(Gpa::new(gpa), &|| {}) {
                            Ok(f) => break f,
                            Err(e) => assert!(e.is_contention(), "unmap {gpa:#x}: {e}"),
                        }
                    };
                    assert_eq!(back.pfn().as_u64(), slot.first().as_u64() + p);
                }
                // Each map and unmap issued SEAMCALLs from this thread.
                let traps = tdx_sim::trap::traps() - before;
                assert_eq!(traps >= PAGES * 3 / 2, trapped, "thread {t}: {traps} traps");
            });
        }
    });
    let mapped = sim.accounting();
    // Half of each thread's pages are the TD's now, plus one S-EPT page
    // per thread (each maps its own 2 MiB range under one 1 GiB entry that
    // the first thread there added).
    let sept = mapped.module - after_build.module - THREADS * PAGES / 2;
    assert!(
        (THREADS..=THREADS + 2).contains(&sept),
        "{sept} S-EPT pages: {mapped:?}"
    );
    // The memslot frames the TD holds left the host's count; the S-EPT
    // pages came from free memory.
    assert_eq!(mapped.host, after_build.host - THREADS * PAGES / 2);
    assert_eq!(mapped.free, after_build.free - sept);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    for slot in slots {
        free(sim, slot);
    }
    drop(host);
    assert_eq!(
        sim.accounting().host,
        base.host,
        "every page back with the host"
    );
    sim.check_invariants().unwrap();
    (mapped, sim.accounting())
}

#[test]
fn threads_map_one_td_through_the_trap() {
    let (a, b) = (machine(Profile::tdx_1_5()), machine(Profile::tdx_1_5()));
    let direct = threads_map(&a, &a, false);
    let trap = TrapBackend::new(&b).unwrap();
    let trapped = threads_map(&b, trap, true);
    assert_eq!(direct, trapped);
}
