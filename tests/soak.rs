// Thousands of SEAMCALLs on threads per test: too slow for Miri.
#![cfg(not(miri))]
//! Soak: whole TD lifecycles on many threads at once, with running vCPUs,
//! under seeded random faults.
//!
//! Each run brings a module up (module 1.5.01 with a static PAMT, or
//! 1.5.16 with Dynamic PAMT), then turns on the simulator's random faults:
//! every status the module can return from each leaf that a host must
//! handle without being wrong (BUSY on each lock the leaf takes, entropy,
//! interrupted). Then two TDs are built on two threads, and for each TD at
//! once:
//!
//! - two vCPU threads run guest programs: the guests accept their memory
//!   (the VMM maps it on the EPT violations), write and read it, convert a
//!   buffer to shared (MapGPA: the VMM removes the pages in one batch,
//!   kicking the running vCPUs) and back, and halt; one vCPU moves to
//!   another CPU after its first exit;
//! - a mapper thread maps 2M pages beside them, splits one (DEMOTE),
//!   merges it back (PROMOTE) and unmaps them, kicking the running vCPUs.
//!
//! The VMM retries what the library reports as contention and treats any
//! other error as a failure: under transient faults only, every operation
//! must eventually succeed. One TD is torn down, the other dropped. After
//! each run: no rule broken (cache, HKID, TLB, host access), the
//! simulator's invariants hold, both teardowns are clean, and the memory
//! accounting is exactly what it was after bring-up.
//!
//! The same soak runs with the library driving the simulator through the
//! real SEAMCALL instruction (`tdx_sim::trap`, Linux x86_64): the
//! simulator behind the trap injects the faults, and the statuses and
//! registers of the faulted calls reach the library through the trap
//! handler as every other answer does.
//! Threaded runs are not reproducible call for call on either backend (the
//! random faults are drawn in the order the threads' calls reach the
//! module, and contention depends on the interleaving), so a sequential
//! variant (the same lifecycle, one host thread: the vCPUs run one after
//! the other, the mapper's work after them) runs each seed on both
//! backends and compares the outcomes exactly: the faults fired (leaf,
//! call number, action), the SEAMCALLs per leaf, every exit, the teardown
//! reports and the page accounting.
//!
//! CI runs a fixed set of seeds; `SOAK_SEEDS=n cargo test --release --test
//! soak -- --ignored` runs more (threaded on both backends, and sequential
//! with the comparison).

// UNSAFETY: the VMM hands frames of its guest memory to the TDs
// (`GuestFrame::new`: the promise not to touch them while a TD owns them).
#![allow(unsafe_code)]

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
};

use tdx::{
    Gpa, Leaf, Pfn, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdConfig, TdError, TdHost, Vcpu},
    },
    sys::Seamcall,
    types::{
        PfnRun, TdxStatus,
        exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{
    Accounting, FaultAction, Guest, MachineDesc, Profile, SharedMapping, Simulator, Stats,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// The shared bit of a 4-level EPT TD's GPAs.
const SHARED: u64 = 1 << 47;
/// Private memory per vCPU: PAGES pages from GPA `i * SPAN`.
const PAGES: u64 = 24;
const SPAN: u64 = 2 * MIB;
/// The buffer each guest converts: its last BUF pages.
const BUF: u64 = 4;
const VCPUS: u32 = 2;
const TDS: u32 = 2;
/// Where the mapper thread maps its 2M pages, and how many.
const HUGE_AT: u64 = 32 * MIB;
const HUGE: u64 = 4;
/// RDX, RBX, RSI, RDI, R8-R15, as Linux guests expose them.
const EXPOSE: u64 = 0xFFCC;
/// Calls of one operation the VMM retries on contention before it calls
/// the run a failure (a library that never gets through).
const RETRIES: u32 = 100_000;

type Host<'s, B> = TdHost<B, &'s Simulator>;
type Vm<'h, 's, B> = Td<Finalized, &'h Host<'s, B>>;

fn vmcall(g: &mut Guest, sub: u64, r12: u64, r13: u64) -> VmcallRegs {
    let regs = VmcallRegs {
        r11: sub,
        r12,
        r13,
        ..VmcallRegs::default()
    };
    g.vmcall(EXPOSE, regs).expect("a valid exposure")
}

/// vCPU `i`'s guest.
fn guest(i: u64) -> impl FnOnce(&mut Guest) + Send + 'static {
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
        g.halt();
    }
}

#[derive(Default)]
struct Tally {
    exits: AtomicU64,
    mapped: AtomicU64,
    contention: AtomicU64,
    converted: AtomicU64,
    huge_ops: AtomicU64,
    /// Every exit and conversion, in order (compared in sequential runs).
    log: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("exits", &self.exits)
            .field("mapped", &self.mapped)
            .field("contention", &self.contention)
            .field("converted", &self.converted)
            .field("huge_ops", &self.huge_ops)
            .finish_non_exhaustive()
    }
}

impl Tally {
    fn log(&self, what: impl FnOnce() -> String) {
        self.log.lock().unwrap().push(what());
    }
}

/// Retries `op` while the library reports contention; any other error
/// fails the run.
fn until_done<T>(tally: &Tally, what: &str, mut op: impl FnMut() -> Result<T, TdError>) -> T {
    for _ in 0..RETRIES {
        match op() {
            Ok(t) => return t,
            Err(e) if e.is_contention() => {
                tally.contention.fetch_add(1, Relaxed);
                thread::yield_now();
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: still contended after {RETRIES} tries");
}

fn kick_all(sim: &Simulator, tdvprs: &[Pfn]) {
    for &t in tdvprs {
        if sim.kick(t) {
            while sim.in_guest(t) {
                thread::yield_now();
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_vcpu<B: Seamcall + Sync>(
    sim: &Simulator,
    vm: &Vm<'_, '_, B>,
    mut v: Vcpu<&Vm<'_, '_, B>>,
    memory: PfnRun,
    tdvprs: &[Pfn],
    tally: &Tally,
    migrate_to: Option<CpuId>,
) {
    let mut cpu = v.cpu().expect("associated at TDH.VP.INIT");
    let kick = || kick_all(sim, tdvprs);
    let mut moved = migrate_to.is_none();
    loop {
        sim.set_lp(cpu.0);
        let exit = until_done(tally, "TDH.VP.ENTER", || v.enter(cpu));
        tally.exits.fetch_add(1, Relaxed);
        tally.log(|| format!("{:?} on {cpu:?}: {exit:?}", v.tdvpr()));
        match exit {
            TdExit::EptViolation { gpa, .. } if gpa & SHARED != 0 => {
                let pfn = Pfn::new(memory.first().as_u64() + (gpa & !SHARED) / 4096);
                sim.map_shared(vm.tdr(), gpa, Some(SharedMapping::Memory(pfn.hpa())));
            }
            TdExit::EptViolation { gpa, .. } => {
                let pfn = Pfn::new(memory.first().as_u64() + gpa / 4096);
                // SAFETY: the memslot's frame for this GPA; the VMM does not
                // touch it while the TD holds it.
                let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap();
                match vm.map(Gpa::new(gpa), f) {
                    Ok(()) => {
                        tally.mapped.fetch_add(1, Relaxed);
                    }
                    // Contended, or another vCPU's fault mapped it first:
                    // the guest faults again or goes on.
                    Err(f) if f.error.is_contention() => {
                        tally.contention.fetch_add(1, Relaxed);
                    }
                    Err(f) if matches!(f.error, TdError::Occupied { .. }) => {}
                    Err(f) => panic!("map {gpa:#x}: {}", f.error),
                }
            }
            TdExit::Vmcall { .. } => match v.vmcall().unwrap().unwrap() {
                VmcallRequest::MapGpa { gpa, size } if gpa & SHARED != 0 => {
                    // Until every page is out: a page whose removal met
                    // contention stays blocked and the next pass resumes it.
                    let start = Gpa::new(gpa & !SHARED);
                    for pass in 0.. {
                        let r = vm.unmap_range(start, size, &kick);
                        tally.converted.fetch_add(r.frames_returned(), Relaxed);
                        tally.log(|| format!("{:?}: {r:?}", v.tdvpr()));
                        if r.is_complete() {
                            break;
                        }
                        let all_contention = r.stopped.iter().all(TdError::is_contention)
                            && r.pages.iter().all(|p| match p.outcome {
                                tdx::api::td::Outcome::Kept(e) => e.is_contention(),
                                tdx::api::td::Outcome::Returned => true,
                                tdx::api::td::Outcome::Deferred(_) => false,
                            });
                        assert!(all_contention && pass < RETRIES, "MapGPA: {r:?}");
                        tally.contention.fetch_add(1, Relaxed);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::MapGpa { gpa, size } => {
                    for page in (gpa..gpa + size).step_by(4096) {
                        sim.map_shared(vm.tdr(), page | SHARED, None);
                    }
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                }
                VmcallRequest::Hlt { .. } => {
                    v.reply(VmcallStatus::SUCCESS).unwrap();
                    return;
                }
                other => panic!("unexpected TDVMCALL {other:?}"),
            },
            TdExit::Async { .. } => {}
            other => panic!("unexpected exit {other:?}"),
        }
        if !moved {
            moved = true;
            cpu = migrate_to.unwrap();
        }
    }
}

/// Maps 2M pages beside the running vCPUs, splits and merges one, unmaps
/// them all; returns the frames.
fn mapper<B: Seamcall + Sync>(sim: &Simulator, vm: &Vm<'_, '_, B>, tdvprs: &[Pfn], tally: &Tally) {
    let kick = || kick_all(sim, tdvprs);
    let runs: Vec<PfnRun> = (0..HUGE)
        .map(|_| sim.alloc_pages(512, 512, Placement::Anywhere).unwrap())
        .collect();
    for (i, run) in runs.iter().enumerate() {
        let gpa = Gpa::new(HUGE_AT + i as u64 * 2 * MIB);
        // SAFETY: allocated above for this TD; untouched until returned.
        let mut f = Some(unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap());
        until_done(tally, "map 2M", || match vm.map(gpa, f.take().unwrap()) {
            Ok(()) => Ok(()),
            Err(e) => {
                f = Some(e.returned);
                Err(e.error)
            }
        });
        tally.huge_ops.fetch_add(1, Relaxed);
    }
    let first = Gpa::new(HUGE_AT);
    until_done(tally, "demote", || vm.demote::<Size2M>(first, &kick));
    until_done(tally, "promote", || vm.promote::<Size2M>(first, &kick));
    tally.huge_ops.fetch_add(2, Relaxed);
    for (i, run) in runs.iter().enumerate() {
        let gpa = Gpa::new(HUGE_AT + i as u64 * 2 * MIB);
        let back = until_done(tally, "unmap 2M", || vm.unmap::<Size2M>(gpa, &kick));
        assert_eq!(back.run(), *run);
        // SAFETY: the TD gave the frames back, flushed.
        unsafe { sim.free_pages(back.run()) };
        tally.huge_ops.fetch_add(1, Relaxed);
    }
}

/// One TD's life; `drop_it`: dropped instead of torn down. With
/// `threads`, its vCPUs and the mapper run on threads of their own at
/// once; without, one after the other on this thread.
fn one_td<B: Seamcall + Sync>(
    sim: &Simulator,
    host: &Host<'_, B>,
    index: u32,
    drop_it: bool,
    threads: bool,
    tally: &Tally,
) {
    let params = TdConfig::builder()
        .max_vcpus(VCPUS as u16)
        .build()
        .to_params();
    let mut td = until_done(tally, "build", || host.build_td(&params));
    let ids: Vec<_> = (0..VCPUS)
        .map(|i| {
            let cpu = CpuId((index * VCPUS + i) % 4);
            until_done(tally, "vCPU", || {
                td.create_vcpu(cpu, InitialRcx(0), X2ApicId(i))
            })
        })
        .collect();
    let mut td = Some(td);
    let vm = until_done(tally, "finalize", || match td.take().unwrap().finalize() {
        Ok(vm) => Ok(vm),
        Err(f) => {
            td = Some(f.returned);
            Err(f.error)
        }
    });
    let memory = sim
        .alloc_pages(u64::from(VCPUS) * SPAN / 4096, 512, Placement::Anywhere)
        .unwrap();
    let tdvprs: Vec<Pfn> = ids.iter().map(|v| v.tdvpr).collect();
    for (i, id) in ids.iter().enumerate() {
        sim.set_guest(id.tdvpr, guest(i as u64));
    }
    // The last vCPU moves to the next CPU after its first exit.
    let migrate_to = |i: usize, cpu: CpuId| (i as u32 == VCPUS - 1).then(|| CpuId((cpu.0 + 1) % 4));
    if threads {
        thread::scope(|s| {
            for (i, id) in ids.iter().enumerate() {
                let v = vm.vcpu(*id).unwrap();
                let (vm, tdvprs) = (&vm, &tdvprs);
                let to = migrate_to(i, id.cpu);
                s.spawn(move || run_vcpu(sim, vm, v, memory, tdvprs, tally, to));
            }
            let (vm, tdvprs) = (&vm, &tdvprs);
            s.spawn(move || mapper(sim, vm, tdvprs, tally));
        });
    } else {
        for (i, id) in ids.iter().enumerate() {
            let v = vm.vcpu(*id).unwrap();
            run_vcpu(sim, &vm, v, memory, &tdvprs, tally, migrate_to(i, id.cpu));
        }
        sim.set_lp(0);
        mapper(sim, &vm, &tdvprs, tally);
    }
    sim.set_lp(0);
    if drop_it {
        drop(vm);
    } else {
        let report = vm.teardown();
        tally.log(|| format!("teardown of TD {index}: {report:?}"));
        assert!(report.is_clean(), "teardown: {report:#?}");
    }
    // SAFETY: every frame of the memslot is the VMM's again: converted
    // frames came back at the conversions, the rest with the teardown.
    unsafe { sim.free_pages(memory) };
}

/// What a run produced that is the same on both backends for a sequential
/// run of one seed.
#[derive(Debug, PartialEq)]
struct Outcome {
    faults: Vec<(Leaf, u64, FaultAction)>,
    stats: Stats,
    log: Vec<String>,
    dropped: Vec<String>,
    accounting: Accounting,
}

fn machine(dynamic: bool) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(if dynamic {
                Profile::tdx_1_5_16()
            } else {
                Profile::tdx_1_5()
            }),
    )
    .unwrap()
}

/// One soak run of `seed` on `sim`, SEAMCALLs through `backend`.
fn soak<B: Seamcall + Sync>(
    sim: &Simulator,
    backend: B,
    seed: u64,
    threads: bool,
    what: &str,
) -> Outcome {
    let dynamic = !seed.is_multiple_of(2);
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(backend, sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    assert_eq!(module.dynamic_pamt(), dynamic);
    let host = TdHost::new(module).unwrap();
    let baseline = sim.accounting();
    let before = sim.stats();
    // 3% of the calls of each leaf that has transient statuses.
    sim.inject_random(seed, 30_000);
    let tally = Tally::default();
    if threads {
        thread::scope(|s| {
            for t in 0..TDS {
                let (host, tally) = (&host, &tally);
                s.spawn(move || one_td(sim, host, t, t == 1, true, tally));
            }
        });
    } else {
        for t in 0..TDS {
            one_td(sim, &host, t, t == 1, false, &tally);
        }
    }
    let label = format!("{what} seed {seed} (dynamic PAMT: {dynamic}, {tally:?})");
    let dropped = sim.dropped_td_reports();
    for r in &dropped {
        assert!(r.is_clean(), "{label}: dropped TD: {r:#?}");
    }
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    drop(host);
    let accounting = sim.accounting();
    assert_eq!(accounting, baseline, "{label}: pages lost");
    let mut stats = sim.stats();
    for (leaf, n) in &before.seamcalls {
        *stats.seamcalls.get_mut(leaf).unwrap() -= n;
    }
    if dynamic {
        let adds = stats
            .seamcalls
            .get(&Leaf::PHYMEM_PAMT_ADD.0)
            .copied()
            .unwrap_or(0);
        assert!(adds > 0, "{label}: Dynamic PAMT in use");
    }
    let faults = sim.fired_faults();
    assert!(!faults.is_empty(), "{label}: faults were injected");
    let enters = stats.seamcalls.get(&Leaf::VP_ENTER.0).copied().unwrap_or(0);
    println!(
        "{label}: {} faults fired, {} SEAMCALLs after bring-up ({enters} VP.ENTER)",
        faults.len(),
        stats.total_seamcalls()
    );
    Outcome {
        faults,
        stats,
        log: tally.log.into_inner().unwrap(),
        dropped: dropped.iter().map(|r| format!("{r:?}")).collect(),
        accounting,
    }
}

/// The threaded soak of `seed`, through the simulator directly.
fn soak_direct(seed: u64) {
    let sim = machine(!seed.is_multiple_of(2));
    soak(&sim, &sim, seed, true, "direct");
}

#[test]
fn soak_threads_vcpus_and_faults_lose_nothing() {
    for seed in 0..6 {
        soak_direct(seed);
    }
}

#[test]
#[ignore = "long: run with --release -- --ignored; SOAK_SEEDS=n for more"]
fn soak_many_seeds() {
    for seed in seeds() {
        soak_direct(seed);
    }
}

/// `SOAK_SEEDS` seeds (200 by default) from `SOAK_FIRST` (100).
fn seeds() -> std::ops::Range<u64> {
    let n = std::env::var("SOAK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let first = std::env::var("SOAK_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    first..first + n
}

/// The soak with every SEAMCALL issued by the real instruction and served
/// by the simulator from the trap handler (`tdx_sim::trap`). Only these
/// tests install the handler (`TrapBackend::new`).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod trapped {
    use super::*;
    use tdx_sim::trap::{TrapBackend, traps};

    /// The threaded soak of `seed` through the trap.
    fn soak_trapped(seed: u64) {
        let sim = machine(!seed.is_multiple_of(2));
        let trap = TrapBackend::new(&sim).unwrap();
        let mine = traps();
        soak(&sim, trap, seed, true, "trap");
        // This thread brought the module up: its SEAMCALLs trapped.
        assert!(traps() - mine > 100, "the bring-up went through the trap");
    }

    /// A sequential run of `seed` on both backends: the same outcome.
    fn compare(seed: u64) {
        let dynamic = !seed.is_multiple_of(2);
        let (a, b) = (machine(dynamic), machine(dynamic));
        let direct = soak(&a, &a, seed, false, "sequential direct");
        let trap = TrapBackend::new(&b).unwrap();
        let before = traps();
        let trapped = soak(&b, trap, seed, false, "sequential trap");
        // One host thread: every SEAMCALL after bring-up trapped on it.
        let calls = trapped.stats.total_seamcalls();
        assert!(traps() - before > calls, "{} traps", traps() - before);
        assert!(direct.log.len() > 20, "{:?}", direct.log);
        assert_eq!(direct.faults, trapped.faults, "seed {seed}: faults");
        assert_eq!(direct.stats, trapped.stats, "seed {seed}: SEAMCALLs");
        assert_eq!(direct.log, trapped.log, "seed {seed}: exits");
        assert_eq!(direct, trapped, "seed {seed}");
    }

    #[test]
    fn soak_through_the_trap_loses_nothing() {
        for seed in 0..2 {
            soak_trapped(seed);
        }
    }

    #[test]
    fn soak_sequential_same_on_both_backends() {
        for seed in 0..4 {
            compare(seed);
        }
    }

    #[test]
    #[ignore = "long: run with --release -- --ignored; SOAK_SEEDS=n for more"]
    fn soak_many_seeds_through_the_trap() {
        for seed in seeds() {
            soak_trapped(seed);
            compare(seed);
        }
    }
}
