//! A VMM's run loop: one thread per vCPU, each entering its vCPU with
//! TDH.VP.ENTER and handling what the guest asks for, against guest
//! programs running in the simulated TDX module.
//!
//! The guests boot by accepting their private memory, which the VMM maps
//! lazily on the EPT violations the accepts cause; they write and read it,
//! convert a buffer to shared (MapGPA: the VMM removes the private pages in
//! one batch, kicking the running vCPUs) and back to private (accepting it
//! again), ask CPUID of the hypervisor range, and halt; one asks for a
//! TDREPORT, whose MRTD the VMM checks against the offline calculator. The VMM moves one
//! vCPU to another CPU mid-run (the library flushes it on the old one), and
//! the teardown accounts for every frame.
//!
//! Run: `cargo run --release --example run_loop`

// UNSAFETY: the VMM hands frames of its guest memory to the TD
// (`GuestFrame::new`: the promise not to touch them while the TD owns them).
#![allow(unsafe_code)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, mpsc},
    thread,
};

use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        measure,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdConfig, TdError, TdHost, Vcpu},
    },
    types::{
        PfnRun, TdxStatus,
        exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{Guest, MachineDesc, Profile, SharedMapping, Simulator};

const GIB: u64 = 1 << 30;
/// The shared bit of a 4-level EPT TD's GPAs.
const SHARED: u64 = 1 << 47;
/// Private memory per vCPU: 32 pages from GPA `i * SPAN`.
const PAGES: u64 = 32;
const SPAN: u64 = 1 << 21;
/// The buffer each guest converts: its last 4 pages.
const BUF: u64 = 4;
const VCPUS: u32 = 3;
/// RDX, RBX, RSI, RDI, R8-R15, as Linux guests expose them.
const EXPOSE: u64 = 0xFFCC;

type Sim = &'static Simulator;
type Host = TdHost<Sim, Sim>;
type Vm = Td<Finalized, Arc<Host>>;

fn vmcall(g: &mut Guest, sub: u64, r12: u64, r13: u64) -> VmcallRegs {
    let regs = VmcallRegs {
        r11: sub,
        r12,
        r13,
        ..VmcallRegs::default()
    };
    g.vmcall(EXPOSE, regs).expect("a valid exposure")
}

/// TDREPORT_STRUCT: TDINFO at byte 512, its MRTD after ATTRIBUTES and
/// XFAM.
const REPORT_MRTD: usize = 512 + 16;

/// vCPU `i`'s guest; vCPU 0's also asks for a TDREPORT and hands its MRTD
/// to `report` (standing in for the quote it would send to a verifier).
fn guest(
    i: u64,
    report: Option<mpsc::Sender<[u8; 48]>>,
) -> impl FnOnce(&mut Guest) + Send + 'static {
    move |g: &mut Guest| {
        let base = i * SPAN;
        for p in 0..PAGES {
            assert_eq!(g.accept(base + p * 4096, 0), TdxStatus::SUCCESS);
        }
        for p in 0..PAGES {
            g.write(base + p * 4096, &(i * 1000 + p).to_le_bytes())
                .unwrap();
        }
        for p in 0..PAGES {
            let v = g.read(base + p * 4096, 8).unwrap();
            assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), i * 1000 + p);
        }
        if let Some(report) = report {
            // TDG.MR.REPORT into the first page, for REPORTDATA in the
            // second.
            assert_eq!(g.mr_report(base, base + 4096, 0), Ok(TdxStatus::SUCCESS));
            let r = g.read(base, 1024).unwrap();
            report
                .send(r[REPORT_MRTD..REPORT_MRTD + 48].try_into().unwrap())
                .unwrap();
        }
        // The buffer to shared and back.
        let buf = base + (PAGES - BUF) * 4096;
        let r = vmcall(g, subfunction::MAP_GPA, buf | SHARED, BUF * 4096);
        assert_eq!(r.r10, VmcallStatus::SUCCESS.0);
        g.write(buf | SHARED, b"shared").unwrap();
        assert_eq!(g.read(buf | SHARED, 6).unwrap(), b"shared");
        let r = vmcall(g, subfunction::MAP_GPA, buf, BUF * 4096);
        assert_eq!(r.r10, VmcallStatus::SUCCESS.0);
        for p in 0..BUF {
            assert_eq!(g.accept(buf + p * 4096, 0), TdxStatus::SUCCESS);
        }
        let r = vmcall(g, subfunction::CPUID, 0x4000_0000, 0);
        assert_eq!(r.r12, 0x4000_0001);
        g.halt();
    }
}

/// What the vCPU threads tell the VMM.
#[derive(Default)]
struct Stats {
    exits: BTreeMap<&'static str, u64>,
    mapped: u64,
    converted: u64,
    busy_faults: u64,
}

fn run_vcpu(
    sim: Sim,
    vm: &Vm,
    mut v: Vcpu<&Vm>,
    memory: PfnRun,
    all: &[Pfn],
    stats: &Mutex<Stats>,
) {
    let mut cpu = v.cpu().expect("associated at TDH.VP.INIT");
    let mut moved = false;
    let count = |what| *stats.lock().unwrap().exits.entry(what).or_default() += 1;
    // The kick: every vCPU of the TD that is in the guest leaves it before
    // the kick returns.
    let kick = || {
        for &t in all {
            if sim.kick(t) {
                while sim.in_guest(t) {
                    thread::yield_now();
                }
            }
        }
    };
    loop {
        // The thread handles the vCPU's exits on the CPU it ran on.
        sim.set_lp(cpu.0);
        let exit = match v.enter(cpu) {
            Ok(exit) => exit,
            Err(e) if e.is_contention() => continue,
            Err(e) => panic!("entering vCPU {}: {e}", v.id().index),
        };
        match exit {
            TdExit::EptViolation { gpa, .. } if gpa & SHARED != 0 => {
                // The VMM's shared memory, in its own EPT (which the library
                // does not manage; the simulator stands in for it): the
                // memslot's frame, host memory again since the conversion.
                count("EPT violation (shared)");
                let pfn = Pfn::new(memory.first().as_u64() + (gpa & !SHARED) / 4096);
                sim.map_shared(vm.tdr(), gpa, Some(SharedMapping::Memory(pfn.hpa())));
            }
            TdExit::EptViolation { gpa, .. } => {
                count("EPT violation (private)");
                let pfn = Pfn::new(memory.first().as_u64() + gpa / 4096);
                // SAFETY: the VMM's memslot frame for this GPA; untouched by
                // the VMM while the TD holds it.
                let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap();
                match vm.map(Gpa::new(gpa), f) {
                    Ok(()) => stats.lock().unwrap().mapped += 1,
                    // Another thread is on it, or the module was busy: the
                    // guest faults again.
                    Err(f) if f.error.is_contention() => stats.lock().unwrap().busy_faults += 1,
                    Err(f) if matches!(f.error, TdError::Occupied { .. }) => {}
                    Err(f) => panic!("map {gpa:#x}: {}", f.error),
                }
            }
            TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                VmcallRequest::MapGpa { gpa, size } if gpa & SHARED != 0 => {
                    count("MapGPA to shared");
                    let r = vm.unmap_range(Gpa::new(gpa & !SHARED), size, &kick);
                    assert!(r.is_complete(), "{r:?}");
                    stats.lock().unwrap().converted += r.frames_returned();
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::MapGpa { gpa, size } => {
                    // To private: out of the VMM's shared EPT; the range is
                    // mappable again, the guest accepts it and the VMM maps
                    // it on the faults.
                    count("MapGPA to private");
                    for page in (gpa..gpa + size).step_by(4096) {
                        sim.map_shared(vm.tdr(), page | SHARED, None);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::Cpuid { .. } => {
                    count("CPUID");
                    v.reply_cpuid([0x4000_0001, 0, 0, 0]).unwrap();
                }
                VmcallRequest::Hlt { .. } => {
                    count("HLT");
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                    return;
                }
                other => panic!("unexpected TDVMCALL {other:?}"),
            },
            TdExit::Async { .. } => count("external interrupt (kick)"),
            other => panic!("unexpected exit {other:?}"),
        }
        // vCPU 2 moves to CPU 3 after its first exit.
        if v.id().index == 2 && !moved {
            moved = true;
            cpu = CpuId(3);
            count("migration");
        }
    }
}

fn main() {
    let sim: Sim = Box::leak(Box::new(
        Simulator::new(
            MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
                .with_cpus(2, 2)
                .with_profile(Profile::tdx_1_5()),
        )
        .unwrap(),
    ));
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(sim, sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    let host = Arc::new(TdHost::new(module).unwrap());
    let base = sim.accounting();
    let params = TdConfig::builder()
        .max_vcpus(VCPUS as u16)
        .build()
        .to_params();
    let mut td = Td::build(host.clone(), &params).unwrap();
    let ids: Vec<_> = (0..VCPUS)
        .map(|i| {
            td.create_vcpu(CpuId(i), InitialRcx(0), X2ApicId(i))
                .unwrap()
        })
        .collect();
    let vm = td.finalize().map_err(|f| f.error).unwrap();
    // The memslot: frames for GPAs [0, VCPUS * SPAN).
    let memory = sim
        .alloc_pages(u64::from(VCPUS) * SPAN / 4096, 512, Placement::Anywhere)
        .unwrap();
    let tdvprs: Vec<Pfn> = ids.iter().map(|v| v.tdvpr).collect();
    let (report_tx, report) = mpsc::channel();
    for (i, id) in ids.iter().enumerate() {
        sim.set_guest(
            id.tdvpr,
            guest(i as u64, (i == 0).then(|| report_tx.clone())),
        );
    }
    let stats = Mutex::new(Stats::default());
    thread::scope(|s| {
        for id in &ids {
            let v = vm.vcpu(*id).unwrap();
            let (vm, tdvprs, stats) = (&vm, &tdvprs, &stats);
            s.spawn(move || run_vcpu(sim, vm, v, memory, tdvprs, stats));
        }
    });
    // The TD's measurement as its TDREPORT gives it, against the offline
    // calculator (no initial pages: the SHA-384 of nothing) and TDH.MNG.RD.
    let reported = report.recv().unwrap();
    let offline = measure::mrtd(std::iter::empty());
    assert_eq!(reported, offline, "TDREPORT's MRTD is the offline one");
    assert_eq!(vm.mrtd().unwrap(), offline);
    let report = vm.teardown();
    // The memslot goes back to the host whole: its converted frames came
    // back at the conversions, the others in the report.
    // SAFETY: every frame of the memslot is the VMM's again (unmapped, or
    // returned by the teardown, flushed).
    unsafe { sim.free_pages(memory) };
    let st = stats.into_inner().unwrap();
    println!(
        "vCPUs: {VCPUS} threads; guest pages mapped lazily: {}",
        st.mapped
    );
    println!(
        "TDREPORT from vCPU 0: MRTD {}… (= offline calculator, = TDH.MNG.RD)",
        reported[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for (what, n) in &st.exits {
        println!("  {what}: {n}");
    }
    println!(
        "converted to shared and back: {} pages; faults that met contention: {}",
        st.converted, st.busy_faults
    );
    println!(
        "teardown: {} control pages freed, {} guest pages returned, {} leaked, HKID freed: {}",
        report.freed.len(),
        report.guest_frames_returned(),
        report.leaked_frames(),
        report.hkid_freed
    );
    drop(host);
    let nothing_lost = sim.accounting() == base && report.is_clean();
    match sim.check_invariants() {
        Ok(()) if nothing_lost && sim.violations().is_empty() => {
            println!("every page accounted for; simulator invariants: ok")
        }
        r => {
            println!("FAILED: {r:?}, {:?}, report {report:?}", sim.violations());
            std::process::exit(1);
        }
    }
}
