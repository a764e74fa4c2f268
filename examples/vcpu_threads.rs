//! A VMM's memory core with one thread per vCPU, against the simulated
//! TDX module: lazy private memory mapped on EPT violations that arrive on
//! many threads at once, private-to-shared conversions while the vCPUs
//! run, a kick that really waits for the vCPU threads, and a teardown that
//! accounts for every frame.
//!
//! The shape to copy:
//!
//! - the host and the TD are owned (`Arc<TdHost>`, `Arc<Vm>`), so vCPU
//!   threads are ordinary spawned threads and the VMM keeps everything in
//!   one struct;
//! - the fault handler calls `Td::map` on a shared `&Td`: no lock of the
//!   VMM's own, and a fault that meets contention (another vCPU mapping the
//!   same page, a conversion in progress, the module's BUSY) goes back to
//!   the guest, which faults again, as KVM does with `-EBUSY`;
//! - conversions remove a whole range with one TDH.MEM.TRACK and one kick.
//!
//! No guest code runs in this example: each vCPU thread stands for a guest
//! touching random pages of its memory, and "entering the guest" is a flag
//! the kick waits on.
//!
//! Run: `cargo run --release --example vcpu_threads [vcpus] [conversions]`

// UNSAFETY: the VMM hands frames of its guest memory to the TD
// (`GuestFrame::new`: the promise not to touch them while the TD owns them).
#![allow(unsafe_code)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use tdx::{
    Gpa, Pfn, Size2M, Size4K,
    api::{
        CpuId, Cpus, ExtInited, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule,
        X2ApicId,
        plan::{MemRange, PlanInput},
        retry::RetryPolicy,
        td::{Finalized, GuestFrame, Td, TdConfig, TdError, TdHost},
    },
    types::PfnRun,
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Guest private memory: 32 regions of 2 MiB.
const REGIONS: u64 = 32;

type Sim = &'static Simulator;
type Host = TdHost<Sim, Sim>;

/// What the VMM keeps per TD.
struct Vm {
    td: Td<Finalized, Arc<Host>>,
    /// The memslot: guest region `i` is backed by the 2 MiB run
    /// `memory.first() + 512 i`. The VMM owns this memory; it gives the TD
    /// frames from it and gets them back.
    memory: PfnRun,
    /// One flag per vCPU: "inside the guest". The kick waits until every
    /// vCPU that was inside has come out.
    in_guest: Vec<AtomicBool>,
    /// Kick requests, counted; a vCPU that sees a new one leaves the guest.
    kick_epoch: AtomicU64,
    kicks: AtomicU64,
    stop: AtomicBool,
}

impl Vm {
    /// Odd regions are mapped with 2 MiB pages, even ones with 4 KiB pages.
    fn huge(region: u64) -> bool {
        region % 2 == 1
    }

    fn frame_of(&self, gpa: u64) -> Pfn {
        Pfn::new(self.memory.first().as_u64() + gpa / 4096)
    }

    /// The kick TDH.MEM.TRACK asks for: every vCPU leaves the guest at
    /// least once. A real VMM sends an IPI to the CPUs running this TD's
    /// vCPUs and waits for each to exit; here a vCPU thread notices the
    /// new epoch at its next step. The library calls this holding no lock,
    /// so waiting on vCPU threads cannot deadlock with them.
    fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        self.kick_epoch.fetch_add(1, Ordering::SeqCst);
        for flag in &self.in_guest {
            while flag.load(Ordering::SeqCst) {
                thread::yield_now();
            }
        }
    }

    /// The EPT-violation handler: map the faulting page, lazily.
    fn handle_fault(&self, gpa: u64) -> Result<Fault, TdError> {
        let region = gpa / (2 * MIB);
        let r = if Self::huge(region) {
            let at = region * 2 * MIB;
            // SAFETY: the memslot's frames are the VMM's; it does not touch
            // them while the TD holds them.
            let f = unsafe { GuestFrame::<Size2M>::new(self.frame_of(at)) }.expect("aligned");
            self.td.map(Gpa::new(at), f).map_err(|f| f.error)
        } else {
            let at = gpa & !0xFFF;
            // SAFETY: as above.
            let f = unsafe { GuestFrame::<Size4K>::new(self.frame_of(at)) }.expect("aligned");
            self.td.map(Gpa::new(at), f).map_err(|f| f.error)
        };
        match r {
            Ok(()) => Ok(Fault::Mapped),
            // Mapped already (by another vCPU, or before): the guest's
            // access works. A real guest would not have faulted on it.
            Err(TdError::Occupied { .. }) => Ok(Fault::AlreadyMapped),
            // Someone else is changing this page (a conversion, another
            // vCPU's map) or the module is busy: back to the guest, which
            // faults again.
            Err(e) if e.is_contention() => Ok(Fault::Retry),
            Err(e) => Err(e),
        }
    }
}

/// What a fault handler did.
enum Fault {
    /// Mapped the page.
    Mapped,
    /// The page was mapped already.
    AlreadyMapped,
    /// Contention: the guest faults again.
    Retry,
}

#[derive(Debug, Default)]
struct VcpuStats {
    mapped: u64,
    already: u64,
    retried: u64,
}

/// One vCPU thread: "run" the guest, take its EPT violations, until the
/// VMM stops it.
fn vcpu(vm: Arc<Vm>, index: usize) -> VcpuStats {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(index as u64 + 1);
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut s = VcpuStats::default();
    let mut seen = vm.kick_epoch.load(Ordering::SeqCst);
    while !vm.stop.load(Ordering::Relaxed) {
        // Enter the guest; it runs until it touches an unmapped page or is
        // kicked out.
        vm.in_guest[index].store(true, Ordering::SeqCst);
        let epoch = vm.kick_epoch.load(Ordering::SeqCst);
        vm.in_guest[index].store(false, Ordering::SeqCst);
        if epoch != seen {
            seen = epoch;
            continue;
        }
        let gpa = next() % (REGIONS * 2 * MIB);
        match vm.handle_fault(gpa) {
            Ok(Fault::Mapped) => s.mapped += 1,
            Ok(Fault::AlreadyMapped) => s.already += 1,
            Ok(Fault::Retry) => s.retried += 1,
            Err(e) => panic!("vCPU {index}: fault at {gpa:#x}: {e}"),
        }
    }
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let vcpus: usize = args.next().map_or(4, |a| a.parse().expect("vCPU count"));
    let conversions: u64 = args
        .next()
        .map_or(200, |a| a.parse().expect("conversion count"));

    // The machine (simulated: two packages of two CPUs, 4 GiB of TDX
    // memory). It lives as long as the program, like real hardware.
    let sim: Sim = Box::leak(Box::new(
        Simulator::new(
            MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
                .with_cpus(2, 2)
                .with_profile(Profile::tdx_1_5()),
        )
        .expect("machine"),
    ));
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let module: TdxModule<ExtInited, Sim, Sim> = TdxModule::init(sim, sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error))
        .expect("bring-up");
    let host = Arc::new(TdHost::new(module).expect("TD host"));
    let baseline = sim.accounting();

    // The TD: vCPUs on CPUs 0..vcpus, finalized with no initial memory.
    let params = TdConfig::builder()
        .max_vcpus(vcpus as u16)
        .build()
        .to_params();
    let mut td = Td::build(Arc::clone(&host), &params).expect("TD");
    for i in 0..vcpus {
        let cpu = CpuId(i as u32 % sim.cpus());
        td.create_vcpu(cpu, InitialRcx(0), X2ApicId(i as u32))
            .expect("vCPU");
    }
    let mut td = td.finalize().map_err(|f| f.error).expect("finalize");
    // Faults go back to the guest on contention instead of spinning;
    // conversions keep the default policy (retry, yielding in between).
    td.set_map_policy(RetryPolicy::IMMEDIATE);

    let memory = sim
        .alloc_pages(REGIONS * 512, 512, Placement::Anywhere)
        .expect("guest memory");
    let vm = Arc::new(Vm {
        td,
        memory,
        in_guest: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
        kick_epoch: AtomicU64::new(0),
        kicks: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    // The vCPU threads, and a device-model thread converting 2 MiB ranges
    // to shared (and so back to unmapped private memory the guest faults
    // in again) while they run.
    let start = Instant::now();
    let vcpu_threads: Vec<_> = (0..vcpus)
        .map(|i| {
            let vm = Arc::clone(&vm);
            thread::spawn(move || vcpu(vm, i))
        })
        .collect();
    // Conversions done, conversions whose batch blocked nothing (nothing
    // mapped there, or a vCPU was mapping the first page: no TRACK, no
    // kick), frames they returned.
    let converted = Arc::new(Mutex::new((0u64, 0u64, 0u64)));
    let converter = {
        let (vm, converted) = (Arc::clone(&vm), Arc::clone(&converted));
        thread::spawn(move || {
            let mut region = 0;
            for _ in 0..conversions {
                region = (region + 7) % REGIONS;
                let report = vm
                    .td
                    .unmap_range(Gpa::new(region * 2 * MIB), 2 * MIB, &|| vm.kick());
                let mut c = converted.lock().expect("tally");
                c.0 += 1;
                c.1 += u64::from(report.pages.is_empty());
                c.2 += report.frames_returned();
                thread::yield_now();
            }
            vm.stop.store(true, Ordering::Relaxed);
        })
    };
    converter.join().expect("converter");
    let mut total = VcpuStats::default();
    for t in vcpu_threads {
        let s = t.join().expect("vCPU thread");
        total.mapped += s.mapped;
        total.already += s.already;
        total.retried += s.retried;
    }
    let elapsed = start.elapsed();

    let mapped = vm.td.private_pages();
    let (done, empty, frames_back) = *converted.lock().expect("tally");
    assert_eq!(done, conversions);
    let vm = Arc::into_inner(vm).expect("every thread is done");
    let kicks = vm.kicks.load(Ordering::Relaxed);
    let report = vm.td.teardown();
    println!(
        "{vcpus} vCPU threads, {:.1} ms: {} pages mapped on EPT violations, {} faults retried \
         after contention, {} touches of pages already mapped",
        elapsed.as_secs_f64() * 1e3,
        total.mapped,
        total.retried,
        total.already,
    );
    println!(
        "{conversions} conversions of 2 MiB to shared ({empty} had nothing to remove), {kicks} \
         kicks (at most one per conversion), {frames_back} 4 KiB frames returned by them"
    );
    println!(
        "teardown: {} pages mapped at the end, {} 4 KiB frames returned, {} control pages freed, \
         {} leaked, clean: {}",
        mapped,
        report.guest_frames_returned(),
        report.freed.len(),
        report.leaked_frames(),
        report.is_clean()
    );
    assert!(report.is_clean(), "{report:?}");
    // One kick per conversion that blocked something (fewer only if its
    // TDH.MEM.TRACK failed), none for one that blocked nothing.
    assert!(
        kicks <= conversions - empty,
        "{kicks} kicks for {} conversions that blocked something",
        conversions - empty
    );
    // SAFETY: the TD is gone and gave every frame back: the memslot is host
    // memory again.
    unsafe { sim.free_pages(memory) };
    drop(host);
    assert_eq!(sim.accounting(), baseline, "every page is back");
    sim.check_invariants().expect("simulator invariants");
    println!("every page is back; simulator invariants hold");
}
