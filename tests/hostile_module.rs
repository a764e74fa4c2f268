// Thousands of lifecycles of SEAMCALLs with guest threads: too slow for Miri.
#![cfg(not(miri))]
//! A hostile TDX module: a `Seamcall` backend in front of the simulator
//! that answers as a buggy or compromised module would, within what the
//! library can tell apart from a correct one.
//!
//! For each call, at a seeded random rate it:
//!
//! - does not run the leaf at all and answers an arbitrary error status
//!   (any value with the error bit set: known codes, known classes with
//!   random details, or random bits) with garbage in every output register;
//! - runs the leaf and, when the module failed, answers another arbitrary
//!   error status with garbage outputs;
//! - runs a read leaf (TDH.SYS.RD, SYS.RDALL, MNG.RD, VP.RD, MEM.SEPT.RD,
//!   PHYMEM.PAGE.RDMD) that succeeded and returns garbage values: metadata
//!   the library must check before it uses it (sizes, counts, indices).
//!
//! - for TDH.VP.ENTER, at its own rate, either does not enter at all or
//!   enters and then replaces the exit: an arbitrary exit status and
//!   reason (ordinary exits such as TDCALL or EPT violation, the
//!   non-recoverable and L2 statuses, random bits) with garbage in every
//!   output register (exit qualification, extended qualification, GPA,
//!   interruption information, the TDG.VP.VMCALL registers and control).
//!
//! What it never does is answer success for work the module did not do:
//! the `Seamcall` contract (point 3) lets the library rely on a successful
//! status to decide who owns memory, and no host library can do otherwise.
//! (A forged TD exit is no such answer: TDH.VP.ENTER moves no page, and its
//! exit only reports what the guest asked for, which a host checks anyway.)
//!
//! Whole lifecycles run against it (bring-up, a TD with vCPUs, a measured
//! image, 4K and 2M maps, a run loop, unmaps, demote, teardown or drop).
//! In the run loop two vCPUs enter, by turns on one thread or, in about
//! one run in four, each on a thread of its own (the VMM kicking the other
//! out of the guest for its conversions), with guest programs that accept,
//! write and read their memory (mapped on their EPT violations), convert
//! a buffer to shared and back (MapGPA), ask for CPUID and halt, while the
//! VMM moves them between CPUs. After each lifecycle the test checks that
//! the library never panicked (a panic fails the test), never looped
//! without bound (each run has a watchdog, and the backend counts calls),
//! and lost nothing: the simulator saw no rule broken (no host access to
//! module memory, no page freed while the module owned it), its invariants
//! hold, and every page the test or the library allocated is free again or
//! was reported leaked with a reason.
//!
//! CI runs a fixed set of seeds; `cargo test --test hostile_module --
//! --ignored` runs thousands (`HOSTILE_SEEDS=n` for another number), in a
//! debug build so that arithmetic overflow panics too.

// UNSAFETY: the backend implements the `unsafe trait Seamcall` by
// forwarding to the simulator, and the test hands frames it allocated to
// TDs (`GuestFrame::new`) and frees them when they come back.
#![allow(unsafe_code)]

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread,
    time::Duration,
};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tdx::{
    Gpa, Leaf, Size2M, Size4K, TdxStatus,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdConfig, TdHost, VcpuId},
    },
    sys::{RegShape, Seamcall, SeamcallArgs},
    types::{
        PfnRun,
        exit::{TdExit, VmcallRegs, VmcallRequest, VmcallStatus, subfunction},
    },
};
use tdx_sim::{Guest, MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// More SEAMCALLs than one lifecycle can need with every retry the
/// library's policies allow: past this the library is looping.
const CALL_LIMIT: u64 = 2_000_000;

/// How hostile one run is, in calls per 1000.
#[derive(Debug, Clone, Copy)]
struct Rates {
    /// Calls not run, answered with an arbitrary error.
    fake: u32,
    /// Failed calls whose status and outputs are replaced.
    corrupt: u32,
    /// Successful reads whose values are replaced.
    garble_reads: u32,
    /// TDH.VP.ENTER calls whose exit is forged (half of them not run).
    forge_exits: u32,
}

struct Hostile<'s> {
    sim: &'s Simulator,
    rates: Rates,
    rng: Mutex<ChaCha8Rng>,
    calls: AtomicU64,
    faked: AtomicU64,
    corrupted: AtomicU64,
    garbled: AtomicU64,
    enters: AtomicU64,
    forged: AtomicU64,
    runaway: AtomicBool,
    /// Hostile only while set: runs that must reach the TD leaves bring
    /// the module up with it clear.
    armed: AtomicBool,
}

impl std::fmt::Debug for Hostile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hostile")
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

/// Error statuses a module answers, for the hostile draws to hit the
/// library's special cases (busy, interrupted, entropy, resume errors).
const KNOWN: &[TdxStatus] = &[
    TdxStatus::INTERRUPTED_RESUMABLE,
    TdxStatus::INTERRUPTED_RESTARTABLE,
    TdxStatus::OPERAND_INVALID,
    TdxStatus::OPERAND_BUSY,
    TdxStatus::PREVIOUS_TLB_EPOCH_BUSY,
    TdxStatus::SYS_BUSY,
    TdxStatus::RND_NO_ENTROPY,
    TdxStatus::OPERAND_BUSY_HOST_PRIORITY,
    TdxStatus::PAGE_METADATA_INCORRECT,
    TdxStatus::HPA_RANGE_NOT_FREE,
    TdxStatus::NO_PAMT_PAGE_PAIR,
    TdxStatus::INTERRUPTED_PAMT,
    TdxStatus::MISSING_PAMT_PAGE_PAIR,
    TdxStatus::TD_ASSOCIATED_PAGES_EXIST,
    TdxStatus::SYS_NOT_READY,
    TdxStatus::TD_FATAL,
    TdxStatus::LIFECYCLE_STATE_INCORRECT,
    TdxStatus::OP_STATE_INCORRECT,
    TdxStatus::VCPU_ASSOCIATED,
    TdxStatus::VCPU_NOT_ASSOCIATED,
    TdxStatus::KEY_GENERATION_FAILED,
    TdxStatus::TD_KEYS_NOT_CONFIGURED,
    TdxStatus::WBCACHE_NOT_COMPLETE,
    TdxStatus::HKID_NOT_FREE,
    TdxStatus::WBCACHE_RESUME_ERROR,
    TdxStatus::FLUSHVP_NOT_DONE,
    TdxStatus::SEAMCALL_VMFAILINVALID,
    TdxStatus::SEAMCALL_VMFAILVALID,
];

impl<'s> Hostile<'s> {
    fn new(sim: &'s Simulator, seed: u64, rates: Rates) -> Self {
        Self {
            sim,
            rates,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            calls: AtomicU64::new(0),
            faked: AtomicU64::new(0),
            corrupted: AtomicU64::new(0),
            garbled: AtomicU64::new(0),
            enters: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            runaway: AtomicBool::new(false),
            armed: AtomicBool::new(true),
        }
    }

    /// An arbitrary status with the error bit set.
    fn error(rng: &mut ChaCha8Rng) -> TdxStatus {
        let raw = match rng.next_u32() % 3 {
            0 => KNOWN[rng.next_u32() as usize % KNOWN.len()].raw() | u64::from(rng.next_u32() % 4),
            1 => {
                let class = KNOWN[rng.next_u32() as usize % KNOWN.len()].raw();
                (class & 0xFFFF_FFFF_0000_0000) | u64::from(rng.next_u32())
            }
            _ => rng.next_u64(),
        };
        TdxStatus::from_raw(raw | 1 << 63)
    }

    /// Garbage in every register the shape returns.
    fn garble(rng: &mut ChaCha8Rng, args: &mut SeamcallArgs, shape: RegShape) {
        let mut g = || match rng.next_u32() % 4 {
            0 => 0,
            1 => u64::MAX,
            2 => u64::from(rng.next_u32() % 4096),
            _ => rng.next_u64(),
        };
        match shape {
            RegShape::NoOutputs => {}
            RegShape::Ret => {
                for r in [
                    &mut args.rcx,
                    &mut args.rdx,
                    &mut args.r8,
                    &mut args.r9,
                    &mut args.r10,
                    &mut args.r11,
                ] {
                    *r = g();
                }
            }
            RegShape::SavedRet => {
                for r in [
                    &mut args.rcx,
                    &mut args.rdx,
                    &mut args.r8,
                    &mut args.r9,
                    &mut args.r10,
                    &mut args.r11,
                    &mut args.r12,
                    &mut args.r13,
                    &mut args.r14,
                    &mut args.r15,
                    &mut args.rbx,
                    &mut args.rdi,
                    &mut args.rsi,
                ] {
                    *r = g();
                }
            }
        }
    }
}

/// Exit statuses (RAX bits 63:32) TDH.VP.ENTER answers besides 0 (an
/// ordinary exit): non-recoverable vCPU and TD, the host-priority timeout,
/// the L2 and cross-TD exits.
const EXIT_STATUSES: &[u64] = &[
    0x4000_0001,
    0x6000_0002,
    0x6000_0005,
    0xE000_0007,
    0x6000_000A,
    0x9000_0205,
    0x0000_1140,
    0x0000_1141,
    0x0000_1142,
    0x8000_0008,
    0x9000_0009,
];
/// Exit reasons the library decodes (TDCALL, EPT violation and
/// misconfiguration, the asynchronous ones, triple fault, the GHCI
/// instructions).
const EXIT_REASONS: &[u64] = &[
    77, 77, 77, 48, 48, 48, 49, 0, 1, 2, 3, 6, 9, 10, 12, 30, 42, 74, 75,
];

impl Hostile<'_> {
    /// An arbitrary TD exit in RAX.
    fn exit(rng: &mut ChaCha8Rng) -> TdxStatus {
        let reason = match rng.next_u32() % 4 {
            0 | 1 => EXIT_REASONS[rng.next_u32() as usize % EXIT_REASONS.len()],
            2 => u64::from(rng.next_u32() % 80),
            _ => u64::from(rng.next_u32()),
        };
        let status = match rng.next_u32() % 4 {
            0 | 1 => 0,
            2 => EXIT_STATUSES[rng.next_u32() as usize % EXIT_STATUSES.len()],
            _ => u64::from(rng.next_u32()),
        };
        TdxStatus::from_raw(status << 32 | reason)
    }
}

fn is_enter(rax: u64) -> bool {
    Leaf((rax & 0xFFFF) as u16) == Leaf::VP_ENTER
}

fn is_read(rax: u64) -> bool {
    let leaf = Leaf((rax & 0xFFFF) as u16);
    [
        Leaf::SYS_RD,
        Leaf::SYS_RDALL,
        Leaf::MNG_RD,
        Leaf::VP_RD,
        Leaf::MEM_SEPT_RD,
        Leaf::PHYMEM_PAGE_RDMD,
    ]
    .contains(&leaf)
}

// SAFETY: every call either runs on the simulator as given, or does not run
// and answers an error status (the module did nothing, which an error says);
// statuses and outputs are replaced only on calls that failed, and outputs
// of successful calls only for read leaves, which hand over no memory. A
// successful status always means the simulator did the leaf (point 3).
unsafe impl Seamcall for Hostile<'_> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        if self.calls.fetch_add(1, Relaxed) >= CALL_LIMIT {
            // The library is looping; stop it the only way a module can.
            self.runaway.store(true, Relaxed);
            return TdxStatus::SYS_NOT_READY;
        }
        if !self.armed.load(Relaxed) {
            // SAFETY: the caller keeps the contract for this call.
            return unsafe { self.sim.seamcall(rax, args, shape) };
        }
        let enter = is_enter(rax);
        let mut rng = self.rng.lock().unwrap();
        if enter {
            self.enters.fetch_add(1, Relaxed);
            // Not entered: a forged exit.
            if rng.next_u32() % 2000 < self.rates.forge_exits {
                self.forged.fetch_add(1, Relaxed);
                Self::garble(&mut rng, args, shape);
                return Self::exit(&mut rng);
            }
        }
        let draw = rng.next_u32() % 1000;
        if draw < self.rates.fake {
            self.faked.fetch_add(1, Relaxed);
            Self::garble(&mut rng, args, shape);
            return Self::error(&mut rng);
        }
        drop(rng);
        // SAFETY: the caller keeps the contract for this call.
        let status = unsafe { self.sim.seamcall(rax, args, shape) };
        let mut rng = self.rng.lock().unwrap();
        let draw = rng.next_u32() % 1000;
        if status.is_error() && draw < self.rates.corrupt {
            self.corrupted.fetch_add(1, Relaxed);
            Self::garble(&mut rng, args, shape);
            return Self::error(&mut rng);
        }
        if status.is_success() && is_read(rax) && draw < self.rates.garble_reads {
            self.garbled.fetch_add(1, Relaxed);
            Self::garble(&mut rng, args, shape);
        }
        // Entered, and the exit replaced.
        if enter && !status.is_error() && rng.next_u32() % 2000 < self.rates.forge_exits {
            self.forged.fetch_add(1, Relaxed);
            Self::garble(&mut rng, args, shape);
            return Self::exit(&mut rng);
        }
        status
    }
}

/// What one run did, for the summary.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    calls: u64,
    faked: u64,
    corrupted: u64,
    garbled: u64,
    enters: u64,
    forged: u64,
    exits: u64,
    vmcalls: u64,
    lazy: u64,
    converted: u64,
    halted: u64,
    /// The run loop ran its vCPUs on threads.
    threaded: bool,
    ready: bool,
    finalized: bool,
    mapped: u64,
}

fn frames(sim: &Simulator, count: u64, align: u64) -> Option<PfnRun> {
    sim.alloc_pages(count, align, Placement::Anywhere).ok()
}

fn free(sim: &Simulator, run: PfnRun) {
    // SAFETY: the run came back from a TD (an unmap, a refused map, a
    // teardown report) or was never given to one: host memory again.
    unsafe { sim.free_pages(run) };
}

/// One lifecycle against a hostile module; the checks at the end.
fn run(seed: u64) -> Tally {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let rates = match seed % 4 {
        0 => Rates {
            fake: 2,
            corrupt: 500,
            garble_reads: 5,
            forge_exits: 50,
        },
        1 => Rates {
            fake: 10,
            corrupt: 1000,
            garble_reads: 20,
            forge_exits: 100,
        },
        2 => Rates {
            fake: 50,
            corrupt: 1000,
            garble_reads: 100,
            forge_exits: 300,
        },
        _ => Rates {
            fake: 0,
            corrupt: 0,
            garble_reads: 300,
            forge_exits: 150,
        },
    };
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(if seed.is_multiple_of(3) {
                Profile::tdx_1_5_16()
            } else {
                Profile::tdx_1_5()
            }),
    )
    .unwrap();
    let hostile = Hostile::new(&sim, seed, rates);
    // Three runs in eight are hostile from the first SEAMCALL (one of them
    // with garbled reads only, which reach every metadata check); the others bring
    // the module up cleanly and turn hostile for the TD.
    let hostile_bring_up = seed % 4 == 1 || seed % 8 == 3;
    hostile.armed.store(hostile_bring_up, Relaxed);
    let mut tally = Tally::default();
    lifecycle(&sim, &hostile, &mut rng, &mut tally);
    tally.calls = hostile.calls.load(Relaxed);
    tally.faked = hostile.faked.load(Relaxed);
    tally.corrupted = hostile.corrupted.load(Relaxed);
    tally.garbled = hostile.garbled.load(Relaxed);
    tally.enters = hostile.enters.load(Relaxed);
    tally.forged = hostile.forged.load(Relaxed);

    let label = format!("seed {seed} ({rates:?}, {tally:?})");
    assert!(
        !hostile.runaway.load(Relaxed),
        "{label}: the library looped"
    );
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    // Every page the test or the library allocated is back or was reported
    // leaked: none is still held by the host.
    let acc = sim.accounting();
    assert_eq!(
        acc.host, 0,
        "{label}: pages neither back nor reported: {acc:?}"
    );
    assert_eq!(acc.free + acc.module + acc.leaked, acc.total, "{label}");
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    tally
}

fn lifecycle(sim: &Simulator, hostile: &Hostile<'_>, rng: &mut ChaCha8Rng, tally: &mut Tally) {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let Ok(m) = TdxModule::init(hostile, sim) else {
        return;
    };
    let Ok(m) = m.configure(&input) else {
        return;
    };
    let Ok(m) = m.init_extensions() else {
        return;
    };
    let Ok(host) = TdHost::new(m) else {
        return;
    };
    tally.ready = true;
    hostile.armed.store(true, Relaxed);
    let params = TdConfig::builder().max_vcpus(2).build().to_params();
    let Ok(mut td) = host.build_td(&params) else {
        return;
    };
    let vcpus: Vec<VcpuId> = (0..2u32)
        .filter_map(|i| {
            td.create_vcpu(CpuId(i * 2), InitialRcx(0), X2ApicId(i))
                .ok()
        })
        .collect();
    // A measured three-page image.
    let mut back: Vec<PfnRun> = Vec::new();
    if let Some(run) = frames(sim, 3, 1) {
        back.push(run);
        let image: Vec<u8> = (0..3 * 4096u32).map(|i| i as u8).collect();
        let tokens: Vec<_> = run
            .iter()
            // SAFETY: allocated above for this TD; untouched until returned.
            .map(|f| unsafe { GuestFrame::<Size4K>::new(f) }.unwrap())
            .collect();
        let mut it = tokens.into_iter();
        match td.add_image(Gpa::new(0xffd000), &image, &mut it, true) {
            Ok(()) => {}
            // A frame the module did not take, and the unused ones, are
            // the test's again; the rest are in the TD until teardown.
            Err(f) => {
                if let Some(f) = f.returned {
                    free(sim, f.run());
                }
            }
        }
        it.for_each(|f| free(sim, f.run()));
        back.pop();
    }
    let td = match td.finalize() {
        Ok(td) => td,
        Err(f) => {
            // Dropped: the teardown runs in `drop`; the guest frames go to
            // the platform.
            drop(f.returned);
            free_dropped(sim);
            return;
        }
    };
    tally.finalized = true;

    // Runtime memory: 4K pages and 2M pages; some unmapped again, one 2M
    // page demoted.
    let mut mapped4 = Vec::new();
    for i in 0..16u64 {
        let Some(run) = frames(sim, 1, 1) else { break };
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
        let gpa = Gpa::new(64 * MIB + i * 4096);
        match td.map(gpa, f) {
            Ok(()) => {
                tally.mapped += 1;
                mapped4.push(gpa);
            }
            Err(f) => free(sim, f.returned.run()),
        }
    }
    let mut mapped2 = Vec::new();
    for i in 0..2u64 {
        let Some(run) = frames(sim, 512, 512) else {
            break;
        };
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap();
        let gpa = Gpa::new(128 * MIB + i * 2 * MIB);
        match td.map(gpa, f) {
            Ok(()) => {
                tally.mapped += 512;
                mapped2.push(gpa);
            }
            Err(f) => free(sim, f.returned.run()),
        }
    }
    run_loop(sim, &td, &vcpus, rng, tally);
    for gpa in &mapped4 {
        if rng.next_u32().is_multiple_of(2)
            && let Ok(f) = td.unmap::<Size4K>(*gpa, &|| {})
        {
            free(sim, f.run());
        }
    }
    if let Some(gpa) = mapped2.first() {
        let _ = td.demote::<Size2M>(*gpa, &|| {});
        for k in 0..4 {
            let at = Gpa::new(gpa.as_u64() + k * 4096);
            if let Ok(f) = td.unmap::<Size4K>(at, &|| {}) {
                free(sim, f.run());
            }
        }
    }
    if rng.next_u32().is_multiple_of(4) {
        drop(td);
        free_dropped(sim);
    } else {
        let report = td.teardown();
        for r in &report.guest_returned {
            free(sim, *r);
        }
    }
}

/// The shared bit of a 4-level EPT TD's GPAs.
const SHARED: u64 = 1 << 47;
/// Where vCPU `i`'s guest has its memory: RUN_PAGES pages from
/// `RUN_AT + i * 2 MiB`, the last RUN_BUF of them converted to shared and
/// back.
const RUN_AT: u64 = 256 * MIB;
const RUN_PAGES: u64 = 6;
const RUN_BUF: u64 = 2;
/// Rounds of entries (one per live vCPU each): a guest that has not halted
/// by then is torn down with its TD, as a VMM gives up on a guest.
const ROUNDS: u32 = 200;
/// Failed entries after which the VMM gives up on a vCPU.
const ENTER_ERRORS: u32 = 16;
/// Frames the VMM gives on EPT violations in one run, whatever GPAs the
/// exits name.
const LAZY_LIMIT: u64 = 48;

/// vCPU `i`'s guest. It checks nothing (a hostile module gives it wrong
/// answers) and never panics: it asks, and goes on.
fn guest(i: u64) -> impl FnOnce(&mut Guest) + Send + 'static {
    move |g: &mut Guest| {
        let base = RUN_AT + i * 2 * MIB;
        for p in 0..RUN_PAGES {
            let _ = g.accept(base + p * 4096, 0);
            let _ = g.write(base + p * 4096, &(i * 1000 + p).to_le_bytes());
        }
        for p in 0..RUN_PAGES {
            let _ = g.read(base + p * 4096, 8);
        }
        let buf = base + (RUN_PAGES - RUN_BUF) * 4096;
        let map_gpa = |g: &mut Guest, gpa: u64| {
            let regs = VmcallRegs {
                r11: subfunction::MAP_GPA,
                r12: gpa,
                r13: RUN_BUF * 4096,
                ..VmcallRegs::default()
            };
            let _ = g.vmcall(0xFC00, regs);
        };
        map_gpa(g, buf | SHARED);
        map_gpa(g, buf);
        for p in 0..RUN_BUF {
            let _ = g.accept(buf + p * 4096, 0);
        }
        let regs = VmcallRegs {
            r11: subfunction::CPUID,
            r12: 0x4000_0000,
            ..VmcallRegs::default()
        };
        let _ = g.vmcall(0xFC00, regs);
        g.halt();
    }
}

type HostileTd<'h, 's> = Td<Finalized, &'h TdHost<&'h Hostile<'s>, &'s Simulator>>;

/// The run loop's counts, shared by the vCPU threads.
#[derive(Debug, Default)]
struct Counts {
    exits: AtomicU64,
    vmcalls: AtomicU64,
    lazy: AtomicU64,
    converted: AtomicU64,
    halted: AtomicU64,
}

/// A vCPU as the run loop drives it: its handle, the CPU it enters on
/// next, its failed entries so far.
type Driven<'a, 'h, 's> = (tdx::api::td::Vcpu<&'a HostileTd<'h, 's>>, CpuId, u32);

/// One entry of a vCPU and the VMM's handling of its exit, whatever it
/// names; false when the VMM is done with the vCPU (halted, unrecoverable,
/// or too many failed entries).
fn step(
    sim: &Simulator,
    td: &HostileTd<'_, '_>,
    (v, cpu, errors): &mut Driven<'_, '_, '_>,
    rng: &mut ChaCha8Rng,
    counts: &Counts,
    kick: &dyn Fn(),
) -> bool {
    if rng.next_u32().is_multiple_of(8) {
        *cpu = CpuId(rng.next_u32() % 5);
    }
    // CPU 4 does not exist: the library refuses it before any call.
    sim.set_lp(cpu.0 % 4);
    let exit = match v.enter(*cpu) {
        Ok(exit) => exit,
        Err(_) => {
            *errors += 1;
            return *errors < ENTER_ERRORS;
        }
    };
    counts.exits.fetch_add(1, Relaxed);
    match exit {
        TdExit::EptViolation { gpa, .. } if gpa & SHARED == 0 => {
            let Ok(at) = Gpa::try_new(gpa) else {
                return true;
            };
            if counts.lazy.load(Relaxed) >= LAZY_LIMIT {
                return true;
            }
            let Some(run) = frames(sim, 1, 1) else {
                return true;
            };
            // SAFETY: allocated above for this TD.
            let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
            match td.map(at, f) {
                Ok(()) => {
                    counts.lazy.fetch_add(1, Relaxed);
                }
                Err(f) => free(sim, f.returned.run()),
            }
            true
        }
        TdExit::Vmcall { .. } => {
            counts.vmcalls.fetch_add(1, Relaxed);
            let request = v.vmcall().expect("a TDCALL exit has a request");
            let (status, go_on) = match request {
                Err(_) => (VmcallStatus::INVALID_OPERAND, true),
                Ok(VmcallRequest::MapGpa { gpa, size }) if gpa & SHARED != 0 => {
                    match Gpa::try_new(gpa & !SHARED) {
                        Ok(start) => {
                            let r = td.unmap_range(start, size, kick);
                            for run in r.returned() {
                                counts.converted.fetch_add(run.count(), Relaxed);
                                free(sim, run);
                            }
                            let s = if r.is_complete() {
                                VmcallStatus::SUCCESS
                            } else {
                                VmcallStatus::INVALID_OPERAND
                            };
                            (s, true)
                        }
                        Err(_) => (VmcallStatus::INVALID_OPERAND, true),
                    }
                }
                Ok(VmcallRequest::MapGpa { .. }) => (VmcallStatus::SUCCESS, true),
                Ok(VmcallRequest::Cpuid { .. }) => {
                    v.reply_cpuid([1, 2, 3, 4])
                        .expect("a pending TDG.VP.VMCALL takes a reply");
                    return true;
                }
                Ok(VmcallRequest::Hlt { .. }) => {
                    counts.halted.fetch_add(1, Relaxed);
                    (VmcallStatus::SUCCESS, false)
                }
                Ok(_) => (VmcallStatus::SUBFUNC_UNSUPPORTED, true),
            };
            v.reply(status)
                .expect("a pending TDG.VP.VMCALL takes a reply");
            go_on
        }
        TdExit::Unrecoverable { .. } => false,
        _ => true,
    }
}

/// The VMM's run loop. In about three runs in four the vCPUs enter by
/// turns on this thread (so the seed replays), each on its CPU or, now and
/// then, another (or one that does not exist); otherwise each vCPU enters
/// on a thread of its own, the conversions kicking the other out of the guest (not
/// reproducible call for call: the threads' calls reach the hostile
/// module's random draws in the order they come).
fn run_loop(
    sim: &Simulator,
    td: &HostileTd<'_, '_>,
    vcpus: &[VcpuId],
    rng: &mut ChaCha8Rng,
    tally: &mut Tally,
) {
    let mut live: Vec<Driven<'_, '_, '_>> = Vec::new();
    for (i, id) in vcpus.iter().enumerate() {
        sim.set_guest(id.tdvpr, guest(i as u64));
        if let Ok(v) = td.vcpu(*id) {
            live.push((v, id.cpu, 0));
        }
    }
    let counts = Counts::default();
    if rng.next_u32().is_multiple_of(4) {
        tally.threaded = true;
        let tdvprs: Vec<_> = vcpus.iter().map(|v| v.tdvpr).collect();
        let kick = || {
            for &t in &tdvprs {
                if sim.kick(t) {
                    while sim.in_guest(t) {
                        thread::yield_now();
                    }
                }
            }
        };
        thread::scope(|s| {
            for mut d in live {
                let mut rng = ChaCha8Rng::seed_from_u64(u64::from(rng.next_u32()));
                let (counts, kick) = (&counts, &kick);
                s.spawn(move || {
                    for _ in 0..ROUNDS {
                        if !step(sim, td, &mut d, &mut rng, counts, kick) {
                            break;
                        }
                    }
                });
            }
        });
    } else {
        for _ in 0..ROUNDS {
            live.retain_mut(|d| step(sim, td, d, rng, &counts, &|| {}));
            if live.is_empty() {
                break;
            }
        }
    }
    sim.set_lp(0);
    tally.exits += counts.exits.into_inner();
    tally.vmcalls += counts.vmcalls.into_inner();
    tally.lazy += counts.lazy.into_inner();
    tally.converted += counts.converted.into_inner();
    tally.halted += counts.halted.into_inner();
}

/// Frees the guest frames dropped TDs handed to the platform
/// (`FrameDeallocator::return_guest_frames`).
fn free_dropped(sim: &Simulator) {
    for r in sim.take_returned_guest_frames() {
        free(sim, r);
    }
}

/// Runs `seeds` under a watchdog: a run that does not finish in time is a
/// library that hangs.
fn run_seeds(seeds: std::ops::Range<u64>) {
    let mut totals = Tally::default();
    let (mut ready, mut finalized, mut threaded) = (0, 0, 0);
    for seed in seeds.clone() {
        let (tx, rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            let t = run(seed);
            let _ = tx.send(t);
        });
        let t = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(t) => t,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The run panicked: report its message as the test failure.
                if let Err(e) = worker.join() {
                    std::panic::resume_unwind(e);
                }
                unreachable!("a run that sent nothing panicked");
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("seed {seed}: no end after 300 s"),
        };
        worker.join().unwrap();
        totals.calls += t.calls;
        totals.faked += t.faked;
        totals.corrupted += t.corrupted;
        totals.garbled += t.garbled;
        totals.mapped += t.mapped;
        totals.enters += t.enters;
        totals.forged += t.forged;
        totals.exits += t.exits;
        totals.vmcalls += t.vmcalls;
        totals.lazy += t.lazy;
        totals.converted += t.converted;
        totals.halted += t.halted;
        ready += u64::from(t.ready);
        finalized += u64::from(t.finalized);
        threaded += u64::from(t.threaded);
    }
    println!(
        "{} runs: {} reached a ready module, {} a finalized TD; {} SEAMCALLs, {} not run and \
         answered an error, {} failures replaced, {} reads garbled; {} 4K frames mapped; \
         {} TDH.VP.ENTER, {} exits forged, {} exits handled ({} TDG.VP.VMCALL), {} frames \
         mapped on EPT violations, {} converted to shared, {} vCPUs halted; {} run loops on \
         threads",
        seeds.end - seeds.start,
        ready,
        finalized,
        totals.calls,
        totals.faked,
        totals.corrupted,
        totals.garbled,
        totals.mapped,
        totals.enters,
        totals.forged,
        totals.exits,
        totals.vmcalls,
        totals.lazy,
        totals.converted,
        totals.halted,
        threaded
    );
    // The runs reached the TD leaves: a hostility so high that nothing got
    // past bring-up would test nothing.
    assert!(finalized > 0, "no run reached a finalized TD");
    assert!(totals.faked + totals.corrupted + totals.garbled > 0);
    // The run loop ran, exits were forged, and some guests got to the end.
    assert!(totals.enters > 0 && totals.forged > 0 && totals.exits > 0);
    assert!(totals.lazy > 0 && totals.converted > 0 && totals.halted > 0);
    assert!(threaded > 0, "no run loop on threads");
}

#[test]
fn a_hostile_module_never_makes_the_library_panic_hang_or_lose_a_page() {
    run_seeds(0..24);
}

#[test]
#[ignore = "long: thousands of seeds; run with -- --ignored (debug build: overflow checks)"]
fn a_hostile_module_soak() {
    let n = std::env::var("HOSTILE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    run_seeds(1000..1000 + n);
}

/// A module that answers one TDH.VP.ENTER (the `nth`) with BUSY and
/// garbage in every output register, and is correct otherwise.
struct BusyEnter<'s> {
    sim: &'s Simulator,
    nth: u64,
    enters: AtomicU64,
}

// SAFETY: every call runs on the simulator as given, but one TDH.VP.ENTER,
// which does not run and answers an error (the module did nothing).
unsafe impl Seamcall for BusyEnter<'_> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        if is_enter(rax) && self.enters.fetch_add(1, Relaxed) + 1 == self.nth {
            let garbage = SeamcallArgs {
                rcx: 0xdead_0001,
                rdx: 0xdead_0002,
                r8: 0xdead_0003,
                r9: 0xdead_0004,
                r10: 0xdead_0005,
                r11: 0xdead_0006,
                r12: 0xdead_0007,
                r13: 0xdead_0008,
                r14: 0xdead_0009,
                r15: 0xdead_000a,
                rbx: 0xdead_000b,
                rdi: 0xdead_000c,
                rsi: 0xdead_000d,
            };
            *args = garbage;
            return TdxStatus::OPERAND_BUSY;
        }
        // SAFETY: the caller keeps the contract for this call.
        unsafe { self.sim.seamcall(rax, args, shape) }
    }
}

/// Regression: an entry that failed (BUSY, with garbage in the output
/// registers) must not pass those outputs to the guest at the retry. The
/// guest's CPUID TDG.VP.VMCALL gets the host's reply, given before the
/// failed entry, and nothing the module left in the registers.
#[test]
fn a_failed_entry_does_not_replace_the_hosts_reply() {
    let sim = Simulator::new(MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2)).unwrap();
    // The first entry exits on the CPUID call; the second, which carries
    // the reply, is the one answered BUSY.
    let busy = BusyEnter {
        sim: &sim,
        nth: 2,
        enters: AtomicU64::new(0),
    };
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(&busy, &sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    let host = TdHost::new(module).unwrap();
    let mut td = host
        .build_td(&TdConfig::builder().max_vcpus(1).build().to_params())
        .unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let (tx, rx) = mpsc::channel();
    sim.set_guest(id.tdvpr, move |g: &mut Guest| {
        let _ = tx.send(g.tdvmcall(subfunction::CPUID, [0x4000_0000, 0, 0, 0]));
        g.halt();
    });
    let mut v = td.vcpu(id).unwrap();
    sim.set_lp(0);
    let exit = v.enter(CpuId(0)).unwrap();
    assert!(matches!(exit, TdExit::Vmcall { .. }), "{exit:?}");
    assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Cpuid { .. }))));
    v.reply_cpuid([0x11, 0x22, 0x33, 0x44]).unwrap();
    let e = v.enter(CpuId(0)).unwrap_err();
    assert!(e.is_contention(), "{e}");
    // Entered again: the guest gets the reply and halts.
    let exit = v.enter(CpuId(0)).unwrap();
    assert!(matches!(exit, TdExit::Vmcall { .. }), "{exit:?}");
    assert!(
        matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))),
        "{:?}",
        v.vmcall()
    );
    let (status, regs) = rx.recv().unwrap();
    assert_eq!(status, VmcallStatus::SUCCESS);
    assert_eq!(regs[1..], [0x11, 0x22, 0x33, 0x44]);
    assert_eq!(busy.enters.load(Relaxed), 3);
    v.reply(VmcallStatus::SUCCESS).unwrap();
    drop(v);
    assert!(td.teardown().is_clean());
}
