//! A VMM's run loop through the safe API, against guest programs in the
//! simulator: private memory mapped lazily on the EPT violations the guest
//! causes, a private-to-shared conversion on the guest's MapGPA, CPUID
//! answered, a vCPU kicked out of the guest by another thread so that a
//! removal can finish, a kick that does nothing caught by the module's TLB
//! tracking, and every page back at teardown.

// UNSAFETY: the tests hand frames they allocated from the simulated host to
// the TD (`GuestFrame::new`) and free them when the TD gives them back.
#![allow(unsafe_code)]

mod td_host;

use std::sync::mpsc;

use td_host::{host, sim};
use tdx::{
    Gpa, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, X2ApicId,
        td::{GuestFrame, TdConfig, TdError, Vcpu},
    },
    types::{
        PfnRun, TdxStatus,
        exit::{EeqType, ExitReason, TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{Guest, Simulator};

/// The shared bit of a 4-level EPT TD's GPAs (GPAW 48: bit 47).
const SHARED: u64 = 1 << 47;
/// RDX, RBX, RSI, RDI, R8-R15: what Linux guests expose.
const EXPOSE: u64 = 0xFFCC;

fn frame(sim: &Simulator) -> GuestFrame<Size4K> {
    let pfn = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
    // SAFETY: allocated just now for the TD; untouched until given back.
    unsafe { GuestFrame::new(pfn) }.unwrap()
}

fn free(sim: &Simulator, run: PfnRun) {
    // SAFETY: the TD gave the frames back, flushed.
    unsafe { sim.free_pages(run) };
}

fn vmcall(g: &mut Guest, sub: u64, r12: u64, r13: u64) -> VmcallRegs {
    let regs = VmcallRegs {
        r11: sub,
        r12,
        r13,
        ..VmcallRegs::default()
    };
    g.vmcall(EXPOSE, regs)
        .expect("the module takes the exposure")
}

/// The guest of `lazy_memory_conversion_and_cpuid`: accepts two private
/// pages (the host maps them when the accept faults), writes and reads
/// them, converts the second to shared, asks CPUID, halts. Reports what it
/// saw on `tx`.
fn boot(g: &mut Guest, tx: mpsc::Sender<String>) {
    for gpa in [0x1000, 0x2000] {
        assert_eq!(g.accept(gpa, 0), TdxStatus::SUCCESS, "accept {gpa:#x}");
    }
    g.write(0x1000, b"private").unwrap();
    assert_eq!(g.read(0x1000, 7).unwrap(), b"private");
    let r = vmcall(g, subfunction::MAP_GPA, 0x2000 | SHARED, 0x1000);
    tx.send(format!("mapgpa {:#x}", r.r10)).unwrap();
    let r = vmcall(g, subfunction::CPUID, 0x4000_0000, 0);
    tx.send(format!("cpuid {:#x} {:#x}", r.r10, r.r12)).unwrap();
    g.halt();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn lazy_memory_conversion_and_cpuid() {
    let sim = sim();
    let host = host(&sim);
    let base = sim.accounting();
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let (tx, rx) = mpsc::channel();
    sim.set_guest(id.tdvpr, move |g: &mut Guest| boot(g, tx));

    let mut v = td.vcpu(id).unwrap();
    let (mut faults, mut mapped, mut converted) = (0, Vec::new(), 0);
    loop {
        match v.enter(CpuId(0)).unwrap() {
            // ACCEPT of a page the host has not added: map it and enter
            // again (the guest repeats the accept).
            TdExit::EptViolation { gpa, eeq, .. } if gpa & SHARED == 0 => {
                assert_eq!(eeq.kind(), EeqType::ACCEPT, "{eeq:?}");
                assert_eq!(eeq.accept().unwrap().requested_level(), 0);
                faults += 1;
                td.map(Gpa::new(gpa), frame(&sim)).unwrap();
                mapped.push(gpa);
            }
            TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                VmcallRequest::MapGpa { gpa, size } => {
                    assert_ne!(gpa & SHARED, 0, "to shared");
                    let r = td.unmap_range(Gpa::new(gpa & !SHARED), size, &|| {});
                    assert!(r.is_complete(), "{r:?}");
                    converted += r.frames_returned();
                    for run in r.returned() {
                        free(&sim, run);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::Cpuid { leaf, .. } => {
                    assert_eq!(leaf, 0x4000_0000);
                    v.reply_cpuid([0x4000_0001, 0x1234, 0, 0]).unwrap();
                }
                VmcallRequest::Hlt { .. } => break,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((faults, mapped, converted), (2, vec![0x1000, 0x2000], 1));
    let seen: Vec<String> = rx.try_iter().collect();
    assert_eq!(seen, ["mapgpa 0x0", "cpuid 0x0 0x40000001"]);
    // An enter before the HLT is answered is refused; answered, the guest's
    // program has ended and the vCPU halts at every entry.
    assert!(matches!(v.enter(CpuId(0)), Err(TdError::Vcpu { .. })));
    v.reply(VmcallStatus::SUCCESS).unwrap();
    assert!(matches!(v.enter(CpuId(0)).unwrap(), TdExit::Vmcall { .. }));
    assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))));
    drop(v);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    for run in &report.guest_returned {
        free(&sim, *run);
    }
    assert_eq!(sim.accounting(), base);
    sim.check_invariants().unwrap();
}

/// A vCPU runs in the guest on one thread (its program reads private
/// memory in a loop) while another thread removes a page. TRACK then waits
/// for that vCPU to leave the guest: with a kick that does nothing, the
/// removal fails with the module's TLB-tracking status and the page stays
/// blocked with the TD; with a kick that makes the vCPU exit, the removal
/// resumes from the block and succeeds.
#[test]
fn a_removal_needs_a_kick_that_makes_running_vcpus_exit() {
    let sim = sim();
    let host = host(&sim);
    let base = sim.accounting();
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    // Two pages, mapped by the host and accepted by the guest.
    for gpa in [0x1000, 0x2000] {
        td.map(Gpa::new(gpa), frame(&sim)).unwrap();
    }
    let (running_tx, running) = mpsc::channel();
    sim.set_guest(id.tdvpr, move |g: &mut Guest| {
        for gpa in [0x1000, 0x2000] {
            assert_eq!(g.accept(gpa, 0), TdxStatus::SUCCESS);
        }
        let _ = running_tx.send(());
        // Reads of the first page until the kick (bounded, so that a
        // failing test ends instead of hanging).
        for _ in 0..10_000_000 {
            g.read(0x1000, 8).unwrap();
        }
        g.halt();
    });
    let mut v: Vcpu<_> = td.vcpu(id).unwrap();
    std::thread::scope(|s| {
        let (left_tx, left) = mpsc::channel();
        let vcpu_thread = s.spawn(move || {
            let exit = v.enter(CpuId(0)).unwrap();
            left_tx.send(()).unwrap();
            (exit, v)
        });
        running.recv().unwrap();
        // The vCPU is in the guest on CPU 0 (it entered before any TRACK
        // below); this thread works from CPU 1, as a CPU in the guest runs
        // nothing else.
        sim.set_lp(1);
        let r = td.unmap::<Size4K>(Gpa::new(0x2000), &|| {});
        let Err(TdError::Seamcall { error, .. }) = r else {
            panic!("a no-op kick: {r:?}")
        };
        assert!(error.is(TdxStatus::TLB_TRACKING_NOT_DONE), "{error}");
        // Kicked for real: the vCPU leaves the guest, and the removal
        // (already blocked and tracked) goes through.
        // A kick as the contract asks: the vCPU leaves the guest before
        // the kick returns (an IPI, then wait for the vCPU thread).
        // The library kicks twice here: once because TRACK finds the
        // vCPU of the last epoch still in the guest, once after its TRACK.
        let kicked = std::cell::Cell::new(0);
        let kick = || {
            if sim.kick(id.tdvpr) {
                kicked.set(kicked.get() + 1);
                left.recv().unwrap();
            }
        };
        let f = td.unmap::<Size4K>(Gpa::new(0x2000), &kick).unwrap();
        assert_eq!(kicked.get(), 1, "one kick found the vCPU in the guest");
        free(&sim, f.into_range().into());
        let (exit, v) = vcpu_thread.join().unwrap();
        assert!(
            matches!(
                exit,
                TdExit::Async {
                    reason: ExitReason::EXTERNAL_INTERRUPT,
                    ..
                }
            ),
            "{exit:?}"
        );
        drop(v);
    });
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    for run in &report.guest_returned {
        free(&sim, *run);
    }
    assert_eq!(sim.accounting(), base);
    sim.check_invariants().unwrap();
}

/// A vCPU moved between CPUs by the handle: flushed on the old CPU before
/// it enters on the new one, and torn down where it last ran.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_vcpu_moves_between_cpus_and_is_flushed_where_it_last_ran() {
    let sim = sim();
    let host = host(&sim);
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let mut v = td.vcpu(id).unwrap();
    let flushes = || {
        sim.stats()
            .seamcalls
            .get(&tdx::Leaf::VP_FLUSH.0)
            .copied()
            .unwrap_or(0)
    };
    // No program: the vCPU halts at every entry.
    for (cpu, flushed) in [(0, 0), (0, 0), (3, 1), (1, 2), (1, 2)] {
        assert!(matches!(
            v.enter(CpuId(cpu)).unwrap(),
            TdExit::Vmcall { .. }
        ));
        assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))));
        v.reply(VmcallStatus::SUCCESS).unwrap();
        assert_eq!(v.cpu(), Some(CpuId(cpu)));
        assert_eq!(flushes(), flushed, "entering on CPU {cpu}");
    }
    drop(v);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    // One flush at teardown, on CPU 1 (the module refuses a flush anywhere
    // else: the report would not be clean).
    assert_eq!(flushes(), 3);
}
