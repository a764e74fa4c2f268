//! Traces: a line-oriented JSON record of what a host did to a TDX module,
//! a [`Recorder`] that writes one from any backend, and replay on the
//! simulator.
//!
//! This module owns the format (parsing, validation, writing), the
//! recording wrapper, and replay. It leaves to the caller where a trace
//! comes from and goes to (any [`BufRead`] / [`Write`]), and, when
//! recording on real hardware, describing the machine truthfully
//! ([`TraceMachine`]): the recorder cannot discover memory or CMRs itself.
//!
//! # Format
//!
//! One JSON object per line, told apart by `op`. Blank lines are skipped.
//!
//! ```text
//! {"op":"machine","memory":[[start,end],...],"cmrs":[[s,e],...],"packages":2,"lps_per_package":4,"keyids":{"mktme":31,"tdx":32},"profile":"tdx-1.5","phys_addr_bits":46,"cpu":{"ept_pml5":false,"hle":false}}
//! {"op":"write","pa":"0x10000","hex":"00112233"}
//! {"op":"cpu","lp":3}
//! {"op":"wbinvd"}
//! {"op":"clflush","pa":"0x20000"}
//! {"op":"seamcall","leaf":"TDH.SYS.CONFIG","in":{"rcx":"0x10000","rdx":"0x1","r8":"0x20"},"out":{"rax":"0x0"}}
//! {"op":"guest","vcpu":"0x100008000","do":"accept","gpa":"0x1000","level":0}
//! {"op":"kick","vcpu":"0x100008000","at":"op"}
//! {"op":"map_shared","tdr":"0x100000000","gpa":"0x800000003000","to":"0x100018000"}
//! {"op":"tsc","value":"0x3e8"}
//! ```
//!
//! - Numbers are JSON integers (0 to 2^64 - 1) or `"0x..."` strings of hex
//!   digits. Nothing else is a number (no decimal strings, no signs).
//! - The machine line comes first, exactly once. Only `memory` is required;
//!   `cmrs` defaults to `memory`, `packages` and `lps_per_package` to 1, the
//!   KeyIDs and the profile to the [`MachineDesc::new`] defaults (31 MKTME,
//!   32 TDX, `"tdx-1.5"`; names as [`Profile::by_name`] knows them).
//!   Logical processor `n` is on package `n / lps_per_package`.
//!   `phys_addr_bits` (the physical address width, 52 by default) and `cpu`
//!   describe the CPU facts TDH.MNG.INIT checks TD_PARAMS against
//!   ([`NativeCpu`]); `cpu` is an object whose keys are all optional, each
//!   defaulting to [`NativeCpu::default`]: `xcr0_supported`,
//!   `xss_supported`, `fms`, `arch_capabilities` (numbers) and `ept_pml5`,
//!   `hle`, `rtm`, `lass` (booleans). The recorder writes these only where they
//!   differ from the defaults, so a trace of a default machine reads as it
//!   did before they existed.
//! - `write` stores `hex` (two digits a byte, an even count) at `pa` the way
//!   the host wrote it through its direct map.
//! - `cpu` selects the logical processor the following SEAMCALLs run on;
//!   calls run on LP 0 until a `cpu` line says otherwise.
//! - `wbinvd` writes back and invalidates every CPU's caches; `clflush`
//!   flushes the 4 KiB page at `pa` (4 KiB aligned, below 2^52).
//! - `seamcall`: `leaf` is a name as the references spell it
//!   (`"TDH.SYS.CONFIG"`, or the C spelling `"TDH_SYS_CONFIG"`; version 0)
//!   or a number, which is the whole RAX value, version included
//!   (`"0x10016"` is TDH.VP.INIT version 1). A number is taken as it is,
//!   even with reserved or P-SEAMLDR bits set, so that a recording of such a
//!   call replays (the model answers it as the module or CPU would). `in`
//!   names input registers (`rcx`, `rdx`, `r8`-`r15`, `rbx`, `rdi`, `rsi`);
//!   absent ones are 0. `out` is optional: expected values for any subset of
//!   `rax` and those registers.
//! - `guest`, `kick`, `map_shared` and `tsc` are what the guests did and
//!   what the host did to them outside SEAMCALLs; [Guests](#guests) has
//!   them.
//! - Unknown fields are an error, as is anything else this list does not
//!   allow: a malformed trace is a [`TraceError`] naming the line, never a
//!   panic.
//!
//! # Register shape on replay
//!
//! A trace does not say which entry shape ([`RegShape`]) the host used.
//! Replay uses the smallest shape that carries every register the line
//! names: [`RegShape::SavedRet`] for TDH.VP.ENTER (the only leaf the
//! references call with it) and for any call whose `in` or `out` names
//! R12-R15, RBX, RDI or RSI; [`RegShape::Ret`] for everything else. `Ret`
//! rather than `NoOutputs` so that the output registers are always
//! reported: a leaf without outputs leaves them as they were, which costs
//! nothing. Each output line reports RCX, RDX and R8-R11 for `Ret` and all
//! thirteen registers for `SavedRet`.
//!
//! [`Trace::run_recorded`] issues each call with the shape its recorded
//! outputs show instead ([`TraceCall::recorded_shape`]), so that the lines
//! record back as they were.
//!
//! # Guests
//!
//! A guest program ([`Simulator::set_guest`]) is code, but what it does to
//! the module is a sequence of guest operations, each a method of
//! [`Guest`]; the run is deterministic given those and the host's calls
//! (the [guest model](crate::guest)). A trace carries the operations, not
//! the code:
//!
//! - `guest`: the guest of the vCPU whose TDVPR is at `vcpu` (a page
//!   address) issued the operation `do`, with its operands:
//!   `"accept"` (`gpa`, `level` 0-255), `"read"` (`gpa`, `len`: the access
//!   stays within one 4K page), `"write"` (`gpa`, `hex`: within one 4K
//!   page), `"vmcall"` (`control`, and `regs`, an object of the registers
//!   a TDG.VP.VMCALL may expose, `rdx`, `rbx`, `rsi`, `rdi`, `r8`-`r15`;
//!   absent ones are 0; `Guest::halt`, `tdvmcall` and
//!   `report_fatal_error` are this operation), `"vp_info"`,
//!   `"rtmr_extend"` (`gpa`, `index`), `"mr_report"` (`report`, `data`,
//!   `subtype`), `"triple_fault"`, `"fatal_td_event"`, `"cpuid"` (`leaf`,
//!   `subleaf`), `"rdmsr"` (`msr`), `"wrmsr"` (`msr`, `value`),
//!   `"instruction"` (`kind`: `"hlt"`, `"invd"`, `"vmcall"`, `"mwait"`,
//!   `"monitor"`, `"wbinvd"`, `"pconfig"`, or `"io"` with `port`, `size`
//!   1, 2 or 4 and `input` a boolean), `"veinfo_get"`, `"cpuidve_set"`
//!   (`control`), and `"end"` (the program returned). Each operation is written once, when the guest
//!   issues it: the repeats after a fault-like exit (an EPT violation, an
//!   interrupt) are the module's, not the guest's. A guest line comes
//!   before the line of the TDH.VP.ENTER during which the guest issued
//!   it, so each vCPU's operations are in order and each entry's are
//!   between it and the one before. A program's results (what a read
//!   returned) are not written; they follow from the rest.
//! - `kick`: the vCPU took an interrupt and exited with it (the
//!   external-interrupt exit of [`Simulator::kick`], or of another
//!   thread's SEAMCALL on its LP). `at` is `"op"` when it took it on
//!   issuing an operation, which is the next `guest` line of that vCPU
//!   (the operation then runs after the next entry), or `"entry"` when it
//!   took it at once on entering (the operation it was stopped in, or its
//!   halt, waits for the entry after). A kick is written where the vCPU
//!   took it, not where the host kicked: a kick that found no vCPU in the
//!   guest, or that the vCPU left before it took it, changed nothing and
//!   is not written.
//! - `map_shared`: the host set how the VMM's shared EPT of the TD whose
//!   TDR is at `tdr` maps the shared 4K page at `gpa`
//!   ([`Simulator::map_shared`]): `to` is the host page's address (below
//!   2^52), `"mmio"`, or `null` (unmapped).
//! - `tsc`: the host set the simulated TSC to `value`
//!   ([`Simulator::set_tsc`]), which TDH.VP.ENTER's TSC_ROLLBACK check and
//!   the host-priority timeout read.
//!
//! Only [`Recorder::for_simulator`] writes these lines: the simulator logs
//! them while that recorder exists, and the recorder writes what was
//! logged before the next line it writes (a SEAMCALL's after the call, so
//! the guest lines of an entry come before it, and before the `cpu` line
//! that selected its LP). A `map_shared` or `tsc` made while another
//! thread's vCPU is in the guest is therefore replayed before that entry
//! rather than in its middle; a run whose guests must see such a change
//! between two operations of one entry does not replay. A guest program
//! that panics issues no operation (TDH.VP.ENTER panics with it). Not in
//! the format: the host MSRs a test sets
//! ([`Simulator::set_host_msr`](crate::Simulator::set_host_msr)), and a
//! kick that interrupts a 2 MiB accept between its 4K chunks
//! ([`Simulator::kick_during_accept`](crate::Simulator::kick_during_accept)):
//! a replay runs that accept to the end.
//!
//! On replay each vCPU's `guest` and `kick` (`"op"`) lines make a script
//! that is its guest program: it issues the operations in order, each as
//! the [`Guest`] method (the results are not checked: the SEAMCALLs'
//! expected outputs are), arms a kick before the operation a `kick` line
//! precedes, and ends (the vCPU then halts) at `end` or when it needs a
//! line it does not have: replay hands it the lines before each entry as
//! it reaches that entry's line, so a guest that goes further than the
//! recorded one did in an entry ends there instead of waiting for lines
//! to come. The lines a replayed guest never got to are reported (see
//! [Replay](#replay)). The program is installed before the vCPU's first
//! TDH.VP.ENTER, replacing one set with [`Simulator::set_guest`] that has
//! not started; a successful TDH.VP.CREATE of the same TDVPR page starts a
//! new vCPU there, with a new script. A `kick` at `"entry"` is armed at its
//! place and taken by the vCPU's next entry; `map_shared` and `tsc` are
//! applied at their place. A recorded run replays to the same outputs, and
//! recorded again ([`Trace::run_recorded`]) it gives the same lines. A
//! trace without guest lines replays as before they existed: its vCPUs
//! have no program and halt.
//!
//! # Recording
//!
//! [`Recorder`] wraps a [`Seamcall`] backend and a [`Platform`](tdx_api::Platform) and
//! implements both, forwarding every call unchanged. It writes the machine
//! line when it is built, then every `write_phys`, `wbinvd_all`,
//! `clflush_page` and SEAMCALL, and a `cpu` line before a SEAMCALL whenever
//! the logical processor selected with [`Cpus::on_cpu`] differs from
//! the last one written. Reads, allocations, frees and leaks are not part
//! of the format and are not written. [`CacheMaintenance::movdir64b_clear`]
//! is written (when it succeeds) as what it leaves behind: a `write` of zeros and a `clflush`
//! for each page. A recorder of the simulator
//! ([`Recorder::for_simulator`]) also writes the guests' lines
//! ([Guests](#guests)).
//!
//! # Replay
//!
//! [`replay`] parses a whole trace first (so a malformed trace runs
//! nothing), builds a [`Simulator`] from the machine line, runs every line,
//! and writes one JSON line per SEAMCALL:
//!
//! ```text
//! {"line":7,"leaf":"TDH.SYS.CONFIG","rax":"0x0","status":"TDX_SUCCESS","out":{"rcx":"0x..",...},"match":true}
//! ```
//!
//! `match` is there only when the trace line had `out`; when it is false,
//! `expected` lists the registers that differed, with the values the trace
//! expected. Two other lines report what went otherwise than recorded,
//! each a mismatch of its line ([`ReplaySummary::mismatches`]): a
//! `map_shared` that names no TD, and the first `guest` (or `kick`) line
//! of a vCPU whose replayed guest never got to it (it went another way):
//!
//! ```text
//! {"line":12,"op":"map_shared","match":false,"error":"no TD has its TDR at 0x..."}
//! {"line":40,"op":"guest","match":false,"error":"the replayed guest did not reach this operation"}
//! ```
//!
//! After the run the simulator's invariants are checked
//! ([`Simulator::check_invariants`]): a trace that breaks a rule of the ABI
//! fails even when every expectation held ([`ReplaySummary::passed`]).

// UNSAFETY: the recorder implements the `unsafe trait`s `Seamcall` and
// `Platform` by forwarding to the wrapped implementations, and replay issues
// SEAMCALLs (an `unsafe fn`) against the simulator, whose memory is
// simulated.
#![allow(unsafe_code)]

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt::{self, Write as _},
    io::{self, BufRead, Write},
    ptr::NonNull,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde_json::{Map, Value};
use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
    HardwareInfo, NodeId, PackageId, Placement, PlatformError, td::TeardownReport,
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{Hpa, Leaf, LeafVersion, Pfn, PfnRun, TdxStatus, exit::VmcallRegs};

use crate::{
    guest::{Guest, Instruction, Request, SharedMapping},
    machine::{MachineDesc, MachineError, NativeCpu},
    profile::Profile,
    sim::{InvariantError, Simulator},
    state::{Shared, SysState},
    violation::Violation,
};

const PAGE: u64 = 4096;

/// Physical addresses are below 2^52 (the widest physical address width).
const MAX_PA: u64 = 1 << 52;

/// The most logical processors a trace's machine may have. The simulator
/// keeps per-LP state, so an absurd count from a malformed trace must be
/// refused before it is built; real machines have a few thousand at most.
pub const MAX_TRACE_LPS: u32 = 1 << 16;

// ---------------------------------------------------------------------------
// Registers
// ---------------------------------------------------------------------------

/// A register of [`SeamcallArgs`], as a trace names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reg {
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// R8.
    R8,
    /// R9.
    R9,
    /// R10.
    R10,
    /// R11.
    R11,
    /// R12.
    R12,
    /// R13.
    R13,
    /// R14.
    R14,
    /// R15.
    R15,
    /// RBX.
    Rbx,
    /// RDI.
    Rdi,
    /// RSI.
    Rsi,
}

impl Reg {
    /// Every register, in [`SeamcallArgs`] order (the order traces use).
    pub const ALL: [Self; 13] = [
        Self::Rcx,
        Self::Rdx,
        Self::R8,
        Self::R9,
        Self::R10,
        Self::R11,
        Self::R12,
        Self::R13,
        Self::R14,
        Self::R15,
        Self::Rbx,
        Self::Rdi,
        Self::Rsi,
    ];

    /// RCX, RDX, R8-R11: the registers every shape passes, and the outputs
    /// of [`RegShape::Ret`].
    pub const SIX: [Self; 6] = [
        Self::Rcx,
        Self::Rdx,
        Self::R8,
        Self::R9,
        Self::R10,
        Self::R11,
    ];

    /// The lower-case name a trace uses (`"r8"`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rcx => "rcx",
            Self::Rdx => "rdx",
            Self::R8 => "r8",
            Self::R9 => "r9",
            Self::R10 => "r10",
            Self::R11 => "r11",
            Self::R12 => "r12",
            Self::R13 => "r13",
            Self::R14 => "r14",
            Self::R15 => "r15",
            Self::Rbx => "rbx",
            Self::Rdi => "rdi",
            Self::Rsi => "rsi",
        }
    }

    /// The register named `name` (lower case, as [`Reg::name`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// True for the registers only [`RegShape::SavedRet`] carries (R12-R15,
    /// RBX, RDI, RSI).
    pub const fn saved_ret_only(self) -> bool {
        !matches!(
            self,
            Self::Rcx | Self::Rdx | Self::R8 | Self::R9 | Self::R10 | Self::R11
        )
    }

    /// The register's value in `args`.
    pub const fn get(self, args: &SeamcallArgs) -> u64 {
        match self {
            Self::Rcx => args.rcx,
            Self::Rdx => args.rdx,
            Self::R8 => args.r8,
            Self::R9 => args.r9,
            Self::R10 => args.r10,
            Self::R11 => args.r11,
            Self::R12 => args.r12,
            Self::R13 => args.r13,
            Self::R14 => args.r14,
            Self::R15 => args.r15,
            Self::Rbx => args.rbx,
            Self::Rdi => args.rdi,
            Self::Rsi => args.rsi,
        }
    }

    /// Sets the register in `args`.
    pub fn set(self, args: &mut SeamcallArgs, value: u64) {
        let slot = match self {
            Self::Rcx => &mut args.rcx,
            Self::Rdx => &mut args.rdx,
            Self::R8 => &mut args.r8,
            Self::R9 => &mut args.r9,
            Self::R10 => &mut args.r10,
            Self::R11 => &mut args.r11,
            Self::R12 => &mut args.r12,
            Self::R13 => &mut args.r13,
            Self::R14 => &mut args.r14,
            Self::R15 => &mut args.r15,
            Self::Rbx => &mut args.rbx,
            Self::Rdi => &mut args.rdi,
            Self::Rsi => &mut args.rsi,
        };
        *slot = value;
    }

    /// The input registers of `shape`.
    pub const fn inputs(shape: RegShape) -> &'static [Self] {
        match shape {
            RegShape::NoOutputs | RegShape::Ret => &Self::SIX,
            RegShape::SavedRet => &Self::ALL,
        }
    }

    /// The output registers of `shape` (besides RAX).
    pub const fn outputs(shape: RegShape) -> &'static [Self] {
        match shape {
            RegShape::NoOutputs => &[],
            RegShape::Ret => &Self::SIX,
            RegShape::SavedRet => &Self::ALL,
        }
    }
}

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// The machine line: what a trace says about the host it was recorded on.
///
/// On real hardware the caller fills it in from what the host knows (its
/// memory map, the CMRs the module reports, the CPU topology, MSR 0x87, the
/// module version, the CPU facts of [`NativeCpu`]). Only what the format
/// carries is here: NUMA nodes, the SEAM range and errata take the
/// [`MachineDesc::new`] defaults on replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceMachine {
    /// Usable RAM as `[start, end)` byte ranges.
    pub memory: Vec<(u64, u64)>,
    /// Convertible memory ranges; `None` means "the same as `memory`".
    pub cmrs: Option<Vec<(u64, u64)>>,
    /// Number of packages.
    pub packages: u32,
    /// Logical processors per package.
    pub lps_per_package: u32,
    /// MKTME KeyIDs (MSR 0x87 bits 31:0).
    pub mktme_keyids: u32,
    /// TDX private KeyIDs (MSR 0x87 bits 63:32).
    pub tdx_keyids: u32,
    /// The module profile's name ([`Profile::by_name`]).
    pub profile: String,
    /// Physical address width ([`MachineDesc::phys_addr_bits`]).
    pub phys_addr_bits: u32,
    /// The CPU facts TDH.MNG.INIT checks ([`MachineDesc::cpu`]).
    pub cpu: NativeCpu,
}

impl TraceMachine {
    /// A machine with `memory` and the defaults of [`MachineDesc::new`].
    pub fn new(memory: Vec<(u64, u64)>) -> Self {
        Self::from_desc(&MachineDesc::new(memory))
    }

    /// The parts of `desc` a trace carries.
    pub fn from_desc(desc: &MachineDesc) -> Self {
        Self {
            memory: desc.memory.clone(),
            cmrs: desc.cmrs.clone(),
            packages: desc.packages,
            lps_per_package: desc.lps_per_package,
            mktme_keyids: desc.mktme_keyids,
            tdx_keyids: desc.tdx_keyids,
            profile: desc.profile.name.to_owned(),
            phys_addr_bits: desc.phys_addr_bits,
            cpu: desc.cpu,
        }
    }

    /// The machine description replay builds the simulator from. Fails only
    /// for an unknown profile name; the rest is checked when the simulator
    /// is built.
    pub fn to_desc(&self) -> Result<MachineDesc, MachineError> {
        let profile = Profile::by_name(&self.profile)
            .ok_or_else(|| MachineError::UnknownProfile(self.profile.clone()))?;
        let mut desc = MachineDesc::new(self.memory.clone())
            .with_cpus(self.packages, self.lps_per_package)
            .with_keyids(self.mktme_keyids, self.tdx_keyids)
            .with_profile(profile)
            .with_cpu(self.cpu);
        desc.cmrs = self.cmrs.clone();
        desc.phys_addr_bits = self.phys_addr_bits;
        Ok(desc)
    }
}

/// Expected outputs of a SEAMCALL (a `seamcall` line's `out`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedOut {
    /// RAX (the status), if expected.
    pub rax: Option<u64>,
    /// Expected register values, in [`Reg::ALL`] order, each at most once.
    pub regs: Vec<(Reg, u64)>,
}

/// A `seamcall` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCall {
    /// RAX: the leaf and its version (or any value the host put there).
    pub rax: u64,
    /// The input registers (absent ones are 0).
    pub input: SeamcallArgs,
    /// What the outputs should be, if the trace says.
    pub expected: Option<ExpectedOut>,
}

impl TraceCall {
    /// The register shape replay uses for this call (see the
    /// [module documentation](self#register-shape-on-replay)).
    pub fn replay_shape(&self) -> RegShape {
        let is_vp_enter = LeafVersion::from_rax(self.rax).is_ok_and(|l| l.leaf() == Leaf::VP_ENTER);
        let names_saved = Reg::ALL
            .iter()
            .any(|r| r.saved_ret_only() && r.get(&self.input) != 0)
            || self
                .expected
                .as_ref()
                .is_some_and(|e| e.regs.iter().any(|(r, _)| r.saved_ret_only()));
        if is_vp_enter || names_saved {
            RegShape::SavedRet
        } else {
            RegShape::Ret
        }
    }

    /// The register shape the recorder's call had, as far as the line
    /// shows it: the shape whose outputs are exactly the expected
    /// registers ([`Recorder`] writes them all), else
    /// [`TraceCall::replay_shape`].
    pub fn recorded_shape(&self) -> RegShape {
        let Some(e) = &self.expected else {
            return self.replay_shape();
        };
        let named: Vec<Reg> = e.regs.iter().map(|&(r, _)| r).collect();
        [RegShape::NoOutputs, RegShape::Ret, RegShape::SavedRet]
            .into_iter()
            .find(|&shape| named == Reg::outputs(shape))
            .unwrap_or_else(|| self.replay_shape())
    }
}

/// A guest operation (a `guest` line's `do`): one method of [`Guest`], as
/// the guest program called it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestOp {
    /// `accept`: [`Guest::accept`].
    Accept {
        /// The GPA.
        gpa: u64,
        /// 0 (4K) or 1 (2M); the module refuses the rest.
        level: u8,
    },
    /// `read`: [`Guest::read`], within one 4K page.
    Read {
        /// The GPA.
        gpa: u64,
        /// Bytes.
        len: usize,
    },
    /// `write`: [`Guest::write`], within one 4K page.
    Write {
        /// The GPA.
        gpa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `vmcall`: [`Guest::vmcall`] (the helpers `halt`, `tdvmcall` and
    /// `report_fatal_error` are this call).
    Vmcall {
        /// The exposure control.
        control: u64,
        /// The guest's registers.
        regs: VmcallRegs,
    },
    /// `vp_info`: [`Guest::vp_info`].
    VpInfo,
    /// `rtmr_extend`: [`Guest::rtmr_extend`].
    RtmrExtend {
        /// The GPA of the 48 bytes.
        gpa: u64,
        /// The RTMR.
        index: u64,
    },
    /// `mr_report`: [`Guest::mr_report`].
    MrReport {
        /// The TDREPORT's GPA.
        report: u64,
        /// REPORTDATA's GPA.
        data: u64,
        /// The subtype.
        subtype: u64,
    },
    /// `triple_fault`: [`Guest::triple_fault`].
    TripleFault,
    /// `fatal_td_event`: [`Guest::fatal_td_event`].
    FatalTdEvent,
    /// `cpuid`: [`Guest::cpuid`].
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
    },
    /// `rdmsr`: [`Guest::rdmsr`].
    Rdmsr {
        /// The MSR.
        msr: u32,
    },
    /// `wrmsr`: [`Guest::wrmsr`].
    Wrmsr {
        /// The MSR.
        msr: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// `instruction`: [`Guest::instruction`], `kind` one of `hlt`, `invd`,
    /// `vmcall`, `mwait`, `monitor`, `wbinvd`, `pconfig`, or `io` with
    /// `port`, `size` (1, 2 or 4) and `input` (a boolean, true for IN).
    Instruction(Instruction),
    /// `veinfo_get`: [`Guest::veinfo_get`].
    VeinfoGet,
    /// `cpuidve_set`: [`Guest::cpuidve_set`].
    CpuidveSet {
        /// RCX.
        control: u64,
    },
    /// `end`: the program returned (the vCPU halts from then on).
    End,
}

/// The VMCALL registers in the order a trace writes them, with their names.
fn vmcall_regs(r: &VmcallRegs) -> [(&'static str, u64); 12] {
    [
        ("rdx", r.rdx),
        ("rbx", r.rbx),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("r8", r.r8),
        ("r9", r.r9),
        ("r10", r.r10),
        ("r11", r.r11),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
    ]
}

/// The VMCALL register named `name`, in `r`.
fn vmcall_reg<'r>(r: &'r mut VmcallRegs, name: &str) -> Option<&'r mut u64> {
    Some(match name {
        "rdx" => &mut r.rdx,
        "rbx" => &mut r.rbx,
        "rsi" => &mut r.rsi,
        "rdi" => &mut r.rdi,
        "r8" => &mut r.r8,
        "r9" => &mut r.r9,
        "r10" => &mut r.r10,
        "r11" => &mut r.r11,
        "r12" => &mut r.r12,
        "r13" => &mut r.r13,
        "r14" => &mut r.r14,
        "r15" => &mut r.r15,
        _ => return None,
    })
}

impl GuestOp {
    /// The `do` name of the operation.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Accept { .. } => "accept",
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::Vmcall { .. } => "vmcall",
            Self::VpInfo => "vp_info",
            Self::RtmrExtend { .. } => "rtmr_extend",
            Self::MrReport { .. } => "mr_report",
            Self::TripleFault => "triple_fault",
            Self::FatalTdEvent => "fatal_td_event",
            Self::Cpuid { .. } => "cpuid",
            Self::Rdmsr { .. } => "rdmsr",
            Self::Wrmsr { .. } => "wrmsr",
            Self::Instruction(_) => "instruction",
            Self::VeinfoGet => "veinfo_get",
            Self::CpuidveSet { .. } => "cpuidve_set",
            Self::End => "end",
        }
    }

    /// Issues the operation as the guest program `g`; false when the
    /// program ends here (`end`, or an access the guest model refuses,
    /// which a parsed trace never has).
    fn issue(&self, g: &mut Guest) -> bool {
        match self {
            Self::Accept { gpa, level } => {
                g.accept(*gpa, *level);
            }
            Self::Read { gpa, len } => {
                if !within_page(*gpa, *len) {
                    return false;
                }
                let _ = g.read(*gpa, *len);
            }
            Self::Write { gpa, data } => {
                if !within_page(*gpa, data.len()) {
                    return false;
                }
                let _ = g.write(*gpa, data);
            }
            Self::Vmcall { control, regs } => {
                let _ = g.vmcall(*control, *regs);
            }
            Self::VpInfo => {
                g.vp_info();
            }
            Self::RtmrExtend { gpa, index } => {
                let _ = g.rtmr_extend(*gpa, *index);
            }
            Self::MrReport {
                report,
                data,
                subtype,
            } => {
                let _ = g.mr_report(*report, *data, *subtype);
            }
            Self::TripleFault => g.triple_fault(),
            Self::FatalTdEvent => g.fatal_td_event(),
            Self::Cpuid { leaf, subleaf } => {
                let _ = g.cpuid(*leaf, *subleaf);
            }
            Self::Rdmsr { msr } => {
                let _ = g.rdmsr(*msr);
            }
            Self::Wrmsr { msr, value } => {
                let _ = g.wrmsr(*msr, *value);
            }
            Self::Instruction(i) => {
                g.instruction(*i);
            }
            Self::VeinfoGet => {
                let _ = g.veinfo_get();
            }
            Self::CpuidveSet { control } => {
                g.cpuidve_set(*control);
            }
            Self::End => return false,
        }
        true
    }

    /// Writes the fields after `do`.
    fn write_fields(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accept { gpa, level } => write!(f, ",\"gpa\":\"{gpa:#x}\",\"level\":{level}"),
            Self::Read { gpa, len } => write!(f, ",\"gpa\":\"{gpa:#x}\",\"len\":{len}"),
            Self::Write { gpa, data } => {
                write!(f, ",\"gpa\":\"{gpa:#x}\",\"hex\":\"")?;
                write_hex(f, data)?;
                f.write_char('"')
            }
            Self::Vmcall { control, regs } => {
                write!(f, ",\"control\":\"{control:#x}\"")?;
                let set: Vec<_> = vmcall_regs(regs)
                    .into_iter()
                    .filter(|&(_, v)| v != 0)
                    .collect();
                if !set.is_empty() {
                    f.write_str(",\"regs\":{")?;
                    for (i, (name, v)) in set.into_iter().enumerate() {
                        if i > 0 {
                            f.write_char(',')?;
                        }
                        write!(f, "\"{name}\":\"{v:#x}\"")?;
                    }
                    f.write_char('}')?;
                }
                Ok(())
            }
            Self::RtmrExtend { gpa, index } => {
                write!(f, ",\"gpa\":\"{gpa:#x}\",\"index\":{index}")
            }
            Self::MrReport {
                report,
                data,
                subtype,
            } => write!(
                f,
                ",\"report\":\"{report:#x}\",\"data\":\"{data:#x}\",\"subtype\":{subtype}"
            ),
            Self::Cpuid { leaf, subleaf } => {
                write!(f, ",\"leaf\":\"{leaf:#x}\",\"subleaf\":\"{subleaf:#x}\"")
            }
            Self::Rdmsr { msr } => write!(f, ",\"msr\":\"{msr:#x}\""),
            Self::Wrmsr { msr, value } => {
                write!(f, ",\"msr\":\"{msr:#x}\",\"value\":\"{value:#x}\"")
            }
            Self::Instruction(i) => match i {
                Instruction::Io { port, size, input } => write!(
                    f,
                    ",\"kind\":\"io\",\"port\":\"{port:#x}\",\"size\":{size},\"input\":{input}"
                ),
                other => write!(f, ",\"kind\":\"{}\"", instruction_name(other)),
            },
            Self::CpuidveSet { control } => write!(f, ",\"control\":\"{control:#x}\""),
            Self::VpInfo | Self::TripleFault | Self::FatalTdEvent | Self::VeinfoGet | Self::End => {
                Ok(())
            }
        }
    }
}

/// The `kind` of an instruction without operands; `io` has its own fields.
fn instruction_name(i: &Instruction) -> &'static str {
    match i {
        Instruction::Hlt => "hlt",
        Instruction::Invd => "invd",
        Instruction::Vmcall => "vmcall",
        Instruction::Io { .. } => "io",
        Instruction::Mwait => "mwait",
        Instruction::Monitor => "monitor",
        Instruction::Wbinvd => "wbinvd",
        Instruction::Pconfig => "pconfig",
    }
}

/// True if `len` bytes at `gpa` stay within one 4K page, as a guest access
/// must.
fn within_page(gpa: u64, len: usize) -> bool {
    (gpa & 0xFFF).saturating_add(len as u64) <= PAGE
}

/// When a vCPU took a kick (a `kick` line's `at`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KickAt {
    /// `"op"`: before carrying out its next guest operation (the next
    /// `guest` line of the vCPU), which runs again after the next entry.
    Op,
    /// `"entry"`: at its next entry, before the guest went on (the
    /// operation it stopped in, or its halt, waits for the entry after).
    Entry,
}

impl KickAt {
    /// The name a trace uses.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Op => "op",
            Self::Entry => "entry",
        }
    }
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceOp {
    /// `machine`: the host the trace was recorded on.
    Machine(TraceMachine),
    /// `write`: the host wrote `data` at `pa`.
    Write {
        /// Physical address.
        pa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// `cpu`: later SEAMCALLs run on this logical processor.
    Cpu {
        /// The logical processor.
        lp: u32,
    },
    /// `wbinvd`: WBINVD on every CPU.
    Wbinvd,
    /// `clflush`: CLFLUSH over the 4 KiB page at `pa`.
    Clflush {
        /// Physical address of the page (4 KiB aligned).
        pa: u64,
    },
    /// `seamcall`.
    Seamcall(TraceCall),
    /// `guest`: the guest of the vCPU whose TDVPR is at `vcpu` issued
    /// `op`.
    Guest {
        /// The vCPU's TDVPR (its physical address).
        vcpu: u64,
        /// The operation.
        op: GuestOp,
    },
    /// `kick`: the vCPU whose TDVPR is at `vcpu` took an interrupt (a kick
    /// or another thread's SEAMCALL on its LP) and exited with it.
    Kick {
        /// The vCPU's TDVPR.
        vcpu: u64,
        /// When it took it.
        at: KickAt,
    },
    /// `map_shared`: the host set the VMM's shared EPT of the TD whose TDR
    /// is at `tdr` for the 4K page at `gpa`
    /// ([`Simulator::map_shared`]).
    MapShared {
        /// The TD's TDR.
        tdr: u64,
        /// The shared GPA.
        gpa: u64,
        /// The mapping (`None`: unmapped).
        to: Option<SharedMapping>,
    },
    /// `tsc`: the host set the simulated TSC ([`Simulator::set_tsc`]).
    Tsc {
        /// The TSC.
        value: u64,
    },
}

impl TraceOp {
    /// The `op` name of the line.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Machine(_) => "machine",
            Self::Write { .. } => "write",
            Self::Cpu { .. } => "cpu",
            Self::Wbinvd => "wbinvd",
            Self::Clflush { .. } => "clflush",
            Self::Seamcall(_) => "seamcall",
            Self::Guest { .. } => "guest",
            Self::Kick { .. } => "kick",
            Self::MapShared { .. } => "map_shared",
            Self::Tsc { .. } => "tsc",
        }
    }

    /// Parses one line (`line` is its 1-based number, for errors). Checks
    /// what a line can check alone; [`Trace::parse`] checks the rest (the
    /// machine line's place, LP numbers against the machine).
    pub fn parse(text: &str, line: usize) -> Result<Self, TraceError> {
        let value: Value =
            serde_json::from_str(text).map_err(|source| TraceError::Json { line, source })?;
        let Value::Object(obj) = value else {
            return Err(TraceError::NotAnObject { line });
        };
        let p = LineParser { line, obj: &obj };
        let op = match obj.get("op") {
            None => return Err(TraceError::MissingField { line, field: "op" }),
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(p.wrong_type("op", "a string", other)),
        };
        match op {
            "machine" => p.machine(),
            "write" => {
                p.only("write", &["pa", "hex"])?;
                let pa = p.number("pa")?;
                let data = p.hex("hex")?;
                if pa.checked_add(data.len() as u64).is_none() {
                    return Err(TraceError::AddressOverflow {
                        line,
                        pa,
                        len: data.len(),
                    });
                }
                Ok(Self::Write { pa, data })
            }
            "cpu" => {
                p.only("cpu", &["lp"])?;
                let lp = p.number("lp")?;
                let lp = u32::try_from(lp).map_err(|_| TraceError::LpOutOfRange {
                    line,
                    lp,
                    lps: None,
                })?;
                Ok(Self::Cpu { lp })
            }
            "wbinvd" => {
                p.only("wbinvd", &[])?;
                Ok(Self::Wbinvd)
            }
            "clflush" => {
                p.only("clflush", &["pa"])?;
                let pa = p.number("pa")?;
                if !pa.is_multiple_of(PAGE) || pa >= MAX_PA {
                    return Err(TraceError::BadPageAddress { line, pa });
                }
                Ok(Self::Clflush { pa })
            }
            "seamcall" => p.seamcall(),
            "guest" => p.guest(),
            "kick" => {
                p.only("kick", &["vcpu", "at"])?;
                let vcpu = p.page("vcpu")?;
                let at = match p.required("at")? {
                    Value::String(s) if s == "op" => KickAt::Op,
                    Value::String(s) if s == "entry" => KickAt::Entry,
                    other => return Err(p.wrong_type("at", "\"op\" or \"entry\"", other)),
                };
                Ok(Self::Kick { vcpu, at })
            }
            "map_shared" => {
                p.only("map_shared", &["tdr", "gpa", "to"])?;
                let tdr = p.page("tdr")?;
                let gpa = p.number("gpa")?;
                let to = match p.required("to")? {
                    Value::Null => None,
                    Value::String(s) if s == "mmio" => Some(SharedMapping::Mmio),
                    v => {
                        let pa = parse_number(line, "to", v)?;
                        let hpa = Hpa::try_new(pa).map_err(|_| TraceError::BadNumber {
                            line,
                            field: "to".to_owned(),
                            value: v.to_string(),
                            reason: "not a physical address (below 2^52)",
                        })?;
                        Some(SharedMapping::Memory(hpa))
                    }
                };
                Ok(Self::MapShared { tdr, gpa, to })
            }
            "tsc" => {
                p.only("tsc", &["value"])?;
                Ok(Self::Tsc {
                    value: p.number("value")?,
                })
            }
            other => Err(TraceError::UnknownOp {
                line,
                op: other.to_owned(),
            }),
        }
    }
}

/// The text of a leaf in a trace: its name for a named leaf at version 0,
/// else the RAX value in hex.
pub fn leaf_text(rax: u64) -> String {
    match LeafVersion::from_rax(rax) {
        Ok(lv) if lv.version() == 0 => match lv.leaf().name() {
            Some(name) => name.to_owned(),
            None => format!("{rax:#x}"),
        },
        _ => format!("{rax:#x}"),
    }
}

fn json_str(s: &str) -> String {
    // Serializing a string cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

fn write_ranges(f: &mut fmt::Formatter<'_>, ranges: &[(u64, u64)]) -> fmt::Result {
    f.write_char('[')?;
    for (i, (s, e)) in ranges.iter().enumerate() {
        if i > 0 {
            f.write_char(',')?;
        }
        write!(f, "[\"{s:#x}\",\"{e:#x}\"]")?;
    }
    f.write_char(']')
}

/// `{"rcx":"0x1",...}` for `regs` of `args`.
fn write_regs(
    f: &mut impl fmt::Write,
    rax: Option<u64>,
    regs: impl IntoIterator<Item = (Reg, u64)>,
) -> fmt::Result {
    f.write_char('{')?;
    let mut first = true;
    if let Some(rax) = rax {
        write!(f, "\"rax\":\"{rax:#x}\"")?;
        first = false;
    }
    for (r, v) in regs {
        if !first {
            f.write_char(',')?;
        }
        first = false;
        write!(f, "\"{}\":\"{v:#x}\"", r.name())?;
    }
    f.write_char('}')
}

fn write_hex(f: &mut impl fmt::Write, data: &[u8]) -> fmt::Result {
    for b in data {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// The machine line's `phys_addr_bits` and `cpu`, each field only where it
/// differs from the [`MachineDesc::new`] default.
fn write_cpu_facts(f: &mut fmt::Formatter<'_>, m: &TraceMachine) -> fmt::Result {
    let d = MachineDesc::new(Vec::new());
    if m.phys_addr_bits != d.phys_addr_bits {
        write!(f, ",\"phys_addr_bits\":{}", m.phys_addr_bits)?;
    }
    let (c, dc) = (&m.cpu, &d.cpu);
    let mut fields: Vec<String> = Vec::new();
    let mut hex = |name: &str, v: u64, dv: u64| {
        if v != dv {
            fields.push(format!("\"{name}\":\"{v:#x}\""));
        }
    };
    hex("xcr0_supported", c.xcr0_supported, dc.xcr0_supported);
    hex("xss_supported", c.xss_supported, dc.xss_supported);
    hex("fms", c.fms.into(), dc.fms.into());
    hex(
        "arch_capabilities",
        c.arch_capabilities,
        dc.arch_capabilities,
    );
    for (name, v, dv) in [
        ("ept_pml5", c.ept_pml5, dc.ept_pml5),
        ("hle", c.hle, dc.hle),
        ("rtm", c.rtm, dc.rtm),
        ("lass", c.lass, dc.lass),
    ] {
        if v != dv {
            fields.push(format!("\"{name}\":{v}"));
        }
    }
    if !fields.is_empty() {
        write!(f, ",\"cpu\":{{{}}}", fields.join(","))?;
    }
    Ok(())
}

/// The line as the recorder writes it: one JSON object, without the
/// newline. Addresses are hex strings, counts integers, and only the
/// non-zero input registers are written.
impl fmt::Display for TraceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{\"op\":\"{}\"", self.name())?;
        match self {
            Self::Machine(m) => {
                f.write_str(",\"memory\":")?;
                write_ranges(f, &m.memory)?;
                if let Some(cmrs) = &m.cmrs {
                    f.write_str(",\"cmrs\":")?;
                    write_ranges(f, cmrs)?;
                }
                write!(
                    f,
                    ",\"packages\":{},\"lps_per_package\":{},\"keyids\":{{\"mktme\":{},\"tdx\":{}}},\"profile\":{}",
                    m.packages,
                    m.lps_per_package,
                    m.mktme_keyids,
                    m.tdx_keyids,
                    json_str(&m.profile)
                )?;
                write_cpu_facts(f, m)?;
            }
            Self::Write { pa, data } => {
                write!(f, ",\"pa\":\"{pa:#x}\",\"hex\":\"")?;
                write_hex(f, data)?;
                f.write_char('"')?;
            }
            Self::Cpu { lp } => write!(f, ",\"lp\":{lp}")?,
            Self::Wbinvd => {}
            Self::Clflush { pa } => write!(f, ",\"pa\":\"{pa:#x}\"")?,
            Self::Seamcall(c) => {
                write!(f, ",\"leaf\":{}", json_str(&leaf_text(c.rax)))?;
                let inputs = Reg::ALL
                    .into_iter()
                    .map(|r| (r, r.get(&c.input)))
                    .filter(|&(_, v)| v != 0);
                if inputs.clone().next().is_some() {
                    f.write_str(",\"in\":")?;
                    write_regs(f, None, inputs)?;
                }
                if let Some(e) = &c.expected {
                    f.write_str(",\"out\":")?;
                    write_regs(f, e.rax, e.regs.iter().copied())?;
                }
            }
            Self::Guest { vcpu, op } => {
                write!(f, ",\"vcpu\":\"{vcpu:#x}\",\"do\":\"{}\"", op.name())?;
                op.write_fields(f)?;
            }
            Self::Kick { vcpu, at } => {
                write!(f, ",\"vcpu\":\"{vcpu:#x}\",\"at\":\"{}\"", at.name())?;
            }
            Self::MapShared { tdr, gpa, to } => {
                write!(f, ",\"tdr\":\"{tdr:#x}\",\"gpa\":\"{gpa:#x}\",\"to\":")?;
                match to {
                    None => f.write_str("null")?,
                    Some(SharedMapping::Mmio) => f.write_str("\"mmio\"")?,
                    Some(SharedMapping::Memory(hpa)) => write!(f, "\"{:#x}\"", hpa.as_u64())?,
                }
            }
            Self::Tsc { value } => write!(f, ",\"value\":\"{value:#x}\"")?,
        }
        f.write_char('}')
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a trace cannot be read or replayed. Every variant that belongs to a
/// line says which (1-based).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// Reading the trace failed.
    #[error("line {line}: cannot read the trace: {source}")]
    Io {
        /// The line being read.
        line: usize,
        /// The reader's error.
        source: io::Error,
    },
    /// Writing the replay output failed.
    #[error("line {line}: cannot write the replay output: {source}")]
    Output {
        /// The line being replayed.
        line: usize,
        /// The writer's error.
        source: io::Error,
    },
    /// The line is not UTF-8.
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 {
        /// The line.
        line: usize,
    },
    /// The line is not JSON.
    #[error("line {line}: not valid JSON: {source}")]
    Json {
        /// The line.
        line: usize,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// The line is JSON but not an object.
    #[error("line {line}: not a JSON object (each line is one object with an \"op\")")]
    NotAnObject {
        /// The line.
        line: usize,
    },
    /// `op` names no operation of the format.
    #[error(
        "line {line}: unknown op {op:?} (known: machine, write, cpu, wbinvd, clflush, seamcall, guest, kick, map_shared, tsc)"
    )]
    UnknownOp {
        /// The line.
        line: usize,
        /// The `op` found.
        op: String,
    },
    /// A required field is absent.
    #[error("line {line}: missing field `{field}`")]
    MissingField {
        /// The line.
        line: usize,
        /// The field.
        field: &'static str,
    },
    /// A field the operation does not have.
    #[error("line {line}: a `{op}` line has no field {field:?}")]
    UnknownField {
        /// The line.
        line: usize,
        /// The operation.
        op: &'static str,
        /// The field found (a path such as `keyids.foo` inside objects).
        field: String,
    },
    /// A field has the wrong JSON type.
    #[error("line {line}: `{field}` is {found}, expected {expected}")]
    WrongType {
        /// The line.
        line: usize,
        /// The field (a path such as `memory[1][0]`).
        field: String,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A number that is not one, or too large for its field.
    #[error("line {line}: `{field}` is {value}: {reason}")]
    BadNumber {
        /// The line.
        line: usize,
        /// The field.
        field: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `leaf` is a string that is neither a known name nor a `0x` number.
    #[error(
        "line {line}: unknown leaf {name:?} (give a name such as \"TDH.SYS.CONFIG\" or the RAX value, e.g. \"0x10016\")"
    )]
    UnknownLeaf {
        /// The line.
        line: usize,
        /// The name found.
        name: String,
    },
    /// `in` or `out` names something that is not a register it may name.
    #[error(
        "line {line}: `{field}` names {name:?}, not one of rcx, rdx, r8-r15, rbx, rdi, rsi{}",
        if *field == "out" { ", rax" } else { " (RAX is the leaf)" }
    )]
    UnknownRegister {
        /// The line.
        line: usize,
        /// `in` or `out`.
        field: &'static str,
        /// The key found.
        name: String,
    },
    /// The trace has no lines.
    #[error("the trace is empty: it needs a machine line first")]
    Empty,
    /// The first line is not the machine line.
    #[error("line {line}: the first line must be the machine line, not `{op}`")]
    MachineNotFirst {
        /// The line.
        line: usize,
        /// The op found.
        op: &'static str,
    },
    /// A second machine line.
    #[error("line {line}: a second machine line (the first is line {first})")]
    DuplicateMachine {
        /// The line.
        line: usize,
        /// The line of the first machine line.
        first: usize,
    },
    /// The machine line describes a machine the simulator cannot build.
    #[error("line {line}: bad machine description: {source}")]
    Machine {
        /// The machine line.
        line: usize,
        /// Why.
        source: MachineError,
    },
    /// More logical processors than [`MAX_TRACE_LPS`].
    #[error(
        "line {line}: {packages} packages of {lps_per_package} LPs is more than the {MAX_TRACE_LPS} logical processors a trace may describe"
    )]
    TooManyLps {
        /// The machine line.
        line: usize,
        /// Packages.
        packages: u32,
        /// LPs per package.
        lps_per_package: u32,
    },
    /// A `cpu` line names a logical processor the machine does not have.
    #[error("line {line}: LP {lp} does not exist{}", match lps {
        Some(n) => format!(" (the machine has {n}: 0..{n})"),
        None => String::new(),
    })]
    LpOutOfRange {
        /// The line.
        line: usize,
        /// The LP named.
        lp: u64,
        /// LPs the machine has, when known.
        lps: Option<u32>,
    },
    /// `hex` has an odd number of digits.
    #[error("line {line}: `hex` has {len} digits, an odd number (two make a byte)")]
    OddHex {
        /// The line.
        line: usize,
        /// Digits.
        len: usize,
    },
    /// `hex` has a character that is not a hex digit.
    #[error("line {line}: `hex` has {ch:?} at offset {offset}, not a hex digit")]
    BadHex {
        /// The line.
        line: usize,
        /// Character offset in the string.
        offset: usize,
        /// The character.
        ch: char,
    },
    /// A write runs past the top of the 64-bit address space.
    #[error("line {line}: {len} bytes at {pa:#x} run past the top of the address space")]
    AddressOverflow {
        /// The line.
        line: usize,
        /// The address.
        pa: u64,
        /// Bytes.
        len: usize,
    },
    /// A `clflush` address is not a page.
    #[error("line {line}: clflush address {pa:#x} is not 4 KiB aligned below 2^52")]
    BadPageAddress {
        /// The line.
        line: usize,
        /// The address.
        pa: u64,
    },
    /// A field that names a page (a vCPU's TDVPR, a TD's TDR) is not one.
    #[error("line {line}: `{field}` is {pa:#x}, not a 4 KiB aligned address below 2^52")]
    NotAPage {
        /// The line.
        line: usize,
        /// The field.
        field: &'static str,
        /// The address.
        pa: u64,
    },
    /// A `guest` line's `do` names no guest operation.
    #[error(
        "line {line}: unknown guest operation {name:?} (known: accept, read, write, vmcall, vp_info, rtmr_extend, mr_report, triple_fault, fatal_td_event, cpuid, rdmsr, wrmsr, instruction, veinfo_get, cpuidve_set, end)"
    )]
    UnknownGuestOp {
        /// The line.
        line: usize,
        /// The name found.
        name: String,
    },
    /// A guest `read` or `write` crosses a 4K page (a guest access stays
    /// within one).
    #[error("line {line}: a guest access of {len} bytes at {gpa:#x} crosses a 4 KiB page")]
    CrossesPage {
        /// The line.
        line: usize,
        /// The GPA.
        gpa: u64,
        /// Bytes.
        len: usize,
    },
    /// A guest `vmcall`'s `regs` names something that is not a register a
    /// TDG.VP.VMCALL passes.
    #[error(
        "line {line}: `regs` names {name:?}, not one of rdx, rbx, rsi, rdi, r8-r15 (the registers a TDG.VP.VMCALL may expose)"
    )]
    UnknownVmcallRegister {
        /// The line.
        line: usize,
        /// The key found.
        name: String,
    },
}

impl TraceError {
    /// The line the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Empty => None,
            Self::Io { line, .. }
            | Self::Output { line, .. }
            | Self::NotUtf8 { line }
            | Self::Json { line, .. }
            | Self::NotAnObject { line }
            | Self::UnknownOp { line, .. }
            | Self::MissingField { line, .. }
            | Self::UnknownField { line, .. }
            | Self::WrongType { line, .. }
            | Self::BadNumber { line, .. }
            | Self::UnknownLeaf { line, .. }
            | Self::UnknownRegister { line, .. }
            | Self::MachineNotFirst { line, .. }
            | Self::DuplicateMachine { line, .. }
            | Self::Machine { line, .. }
            | Self::TooManyLps { line, .. }
            | Self::LpOutOfRange { line, .. }
            | Self::OddHex { line, .. }
            | Self::BadHex { line, .. }
            | Self::AddressOverflow { line, .. }
            | Self::BadPageAddress { line, .. }
            | Self::NotAPage { line, .. }
            | Self::UnknownGuestOp { line, .. }
            | Self::CrossesPage { line, .. }
            | Self::UnknownVmcallRegister { line, .. } => Some(*line),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field access for one line, with its number for errors.
struct LineParser<'a> {
    line: usize,
    obj: &'a Map<String, Value>,
}

impl LineParser<'_> {
    fn wrong_type(
        &self,
        field: impl Into<String>,
        expected: &'static str,
        v: &Value,
    ) -> TraceError {
        TraceError::WrongType {
            line: self.line,
            field: field.into(),
            expected,
            found: type_name(v),
        }
    }

    /// Refuses fields other than `op` and `allowed`.
    fn only(&self, op: &'static str, allowed: &[&str]) -> Result<(), TraceError> {
        match self
            .obj
            .keys()
            .find(|k| *k != "op" && !allowed.contains(&k.as_str()))
        {
            Some(k) => Err(TraceError::UnknownField {
                line: self.line,
                op,
                field: k.clone(),
            }),
            None => Ok(()),
        }
    }

    fn required(&self, field: &'static str) -> Result<&Value, TraceError> {
        self.obj.get(field).ok_or(TraceError::MissingField {
            line: self.line,
            field,
        })
    }

    fn number(&self, field: &'static str) -> Result<u64, TraceError> {
        parse_number(self.line, field, self.required(field)?)
    }

    /// A page's physical address: 4K aligned, below 2^52.
    fn page(&self, field: &'static str) -> Result<u64, TraceError> {
        let pa = self.number(field)?;
        if !pa.is_multiple_of(PAGE) || pa >= MAX_PA {
            return Err(TraceError::NotAPage {
                line: self.line,
                field,
                pa,
            });
        }
        Ok(pa)
    }

    fn u8(&self, field: &'static str) -> Result<u8, TraceError> {
        let v = self.required(field)?;
        let n = parse_number(self.line, field, v)?;
        u8::try_from(n).map_err(|_| TraceError::BadNumber {
            line: self.line,
            field: field.to_owned(),
            value: v.to_string(),
            reason: "does not fit in 8 bits",
        })
    }

    fn u32(&self, field: &'static str) -> Result<u32, TraceError> {
        let v = self.required(field)?;
        let n = parse_number(self.line, field, v)?;
        u32::try_from(n).map_err(|_| TraceError::BadNumber {
            line: self.line,
            field: field.to_owned(),
            value: v.to_string(),
            reason: "does not fit in 32 bits",
        })
    }

    /// An `instruction` line's `kind` (and `io`'s operands, which only
    /// `io` may have).
    fn instruction(&self) -> Result<Instruction, TraceError> {
        let line = self.line;
        let kind = match self.required("kind")? {
            Value::String(s) => s.as_str(),
            other => return Err(self.wrong_type("kind", "a string", other)),
        };
        let simple = match kind {
            "hlt" => Some(Instruction::Hlt),
            "invd" => Some(Instruction::Invd),
            "vmcall" => Some(Instruction::Vmcall),
            "mwait" => Some(Instruction::Mwait),
            "monitor" => Some(Instruction::Monitor),
            "wbinvd" => Some(Instruction::Wbinvd),
            "pconfig" => Some(Instruction::Pconfig),
            "io" => None,
            other => {
                return Err(TraceError::UnknownGuestOp {
                    line,
                    name: format!("instruction {other}"),
                });
            }
        };
        if let Some(i) = simple {
            self.only("guest", &["vcpu", "do", "kind"])?;
            return Ok(i);
        }
        let port = u16::try_from(self.number("port")?).map_err(|_| TraceError::BadNumber {
            line,
            field: "port".to_owned(),
            value: self
                .obj
                .get("port")
                .map_or_else(String::new, Value::to_string),
            reason: "does not fit in 16 bits",
        })?;
        let size = self.u8("size")?;
        if !matches!(size, 1 | 2 | 4) {
            return Err(TraceError::BadNumber {
                line,
                field: "size".to_owned(),
                value: size.to_string(),
                reason: "is not 1, 2 or 4",
            });
        }
        let input = match self.required("input")? {
            Value::Bool(b) => *b,
            other => return Err(self.wrong_type("input", "a boolean", other)),
        };
        Ok(Instruction::Io { port, size, input })
    }

    /// A `guest` line.
    fn guest(&self) -> Result<TraceOp, TraceError> {
        let line = self.line;
        let name = match self.required("do")? {
            Value::String(s) => s.as_str(),
            other => return Err(self.wrong_type("do", "a string", other)),
        };
        let fields: &[&str] = match name {
            "accept" => &["gpa", "level"],
            "read" => &["gpa", "len"],
            "write" => &["gpa", "hex"],
            "vmcall" => &["control", "regs"],
            "rtmr_extend" => &["gpa", "index"],
            "mr_report" => &["report", "data", "subtype"],
            "cpuid" => &["leaf", "subleaf"],
            "rdmsr" => &["msr"],
            "wrmsr" => &["msr", "value"],
            "instruction" => &["kind", "port", "size", "input"],
            "cpuidve_set" => &["control"],
            "vp_info" | "triple_fault" | "fatal_td_event" | "veinfo_get" | "end" => &[],
            other => {
                return Err(TraceError::UnknownGuestOp {
                    line,
                    name: other.to_owned(),
                });
            }
        };
        let mut allowed = vec!["vcpu", "do"];
        allowed.extend_from_slice(fields);
        self.only("guest", &allowed)?;
        let vcpu = self.page("vcpu")?;
        let op = match name {
            "accept" => GuestOp::Accept {
                gpa: self.number("gpa")?,
                level: self.u8("level")?,
            },
            "read" => {
                let gpa = self.number("gpa")?;
                let v = self.required("len")?;
                let len = parse_number(line, "len", v)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| within_page(gpa, l))
                    .ok_or(TraceError::CrossesPage {
                        line,
                        gpa,
                        len: usize::try_from(len).unwrap_or(usize::MAX),
                    })?;
                GuestOp::Read { gpa, len }
            }
            "write" => {
                let gpa = self.number("gpa")?;
                let data = self.hex("hex")?;
                if !within_page(gpa, data.len()) {
                    return Err(TraceError::CrossesPage {
                        line,
                        gpa,
                        len: data.len(),
                    });
                }
                GuestOp::Write { gpa, data }
            }
            "vmcall" => {
                let control = self.number("control")?;
                let mut regs = VmcallRegs::default();
                if let Some(v) = self.obj.get("regs") {
                    let Value::Object(m) = v else {
                        return Err(self.wrong_type("regs", "an object of registers", v));
                    };
                    for (k, v) in m {
                        let value = parse_number(line, &format!("regs.{k}"), v)?;
                        let slot = vmcall_reg(&mut regs, k).ok_or_else(|| {
                            TraceError::UnknownVmcallRegister {
                                line,
                                name: k.clone(),
                            }
                        })?;
                        *slot = value;
                    }
                }
                GuestOp::Vmcall { control, regs }
            }
            "rtmr_extend" => GuestOp::RtmrExtend {
                gpa: self.number("gpa")?,
                index: self.number("index")?,
            },
            "mr_report" => GuestOp::MrReport {
                report: self.number("report")?,
                data: self.number("data")?,
                subtype: self.number("subtype")?,
            },
            "vp_info" => GuestOp::VpInfo,
            "triple_fault" => GuestOp::TripleFault,
            "fatal_td_event" => GuestOp::FatalTdEvent,
            "cpuid" => GuestOp::Cpuid {
                leaf: self.u32("leaf")?,
                subleaf: self.u32("subleaf")?,
            },
            "rdmsr" => GuestOp::Rdmsr {
                msr: self.u32("msr")?,
            },
            "wrmsr" => GuestOp::Wrmsr {
                msr: self.u32("msr")?,
                value: self.number("value")?,
            },
            "instruction" => GuestOp::Instruction(self.instruction()?),
            "veinfo_get" => GuestOp::VeinfoGet,
            "cpuidve_set" => GuestOp::CpuidveSet {
                control: self.number("control")?,
            },
            _ => GuestOp::End,
        };
        Ok(TraceOp::Guest { vcpu, op })
    }

    fn hex(&self, field: &'static str) -> Result<Vec<u8>, TraceError> {
        let v = self.required(field)?;
        let Value::String(s) = v else {
            return Err(self.wrong_type(field, "a string of hex digits", v));
        };
        if let Some((offset, ch)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(TraceError::BadHex {
                line: self.line,
                offset,
                ch,
            });
        }
        if s.len() % 2 != 0 {
            return Err(TraceError::OddHex {
                line: self.line,
                len: s.len(),
            });
        }
        let digit = |b: u8| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        Ok(s.as_bytes()
            .chunks_exact(2)
            .map(|p| digit(p[0]) << 4 | digit(p[1]))
            .collect())
    }

    fn ranges(&self, field: &'static str) -> Result<Vec<(u64, u64)>, TraceError> {
        let v = self.required(field)?;
        let Value::Array(items) = v else {
            return Err(self.wrong_type(field, "an array of [start, end] pairs", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Array(pair) if pair.len() == 2 => Ok((
                    parse_number(self.line, &format!("{field}[{i}][0]"), &pair[0])?,
                    parse_number(self.line, &format!("{field}[{i}][1]"), &pair[1])?,
                )),
                other => {
                    Err(self.wrong_type(format!("{field}[{i}]"), "a [start, end] pair", other))
                }
            })
            .collect()
    }

    fn u32_or(&self, field: &str, v: Option<&Value>, default: u32) -> Result<u32, TraceError> {
        let Some(v) = v else { return Ok(default) };
        let n = parse_number(self.line, field, v)?;
        u32::try_from(n).map_err(|_| TraceError::BadNumber {
            line: self.line,
            field: field.to_owned(),
            value: v.to_string(),
            reason: "does not fit in 32 bits",
        })
    }

    fn u64_or(&self, field: &str, v: Option<&Value>, default: u64) -> Result<u64, TraceError> {
        match v {
            Some(v) => parse_number(self.line, field, v),
            None => Ok(default),
        }
    }

    fn bool_or(&self, field: &str, v: Option<&Value>, default: bool) -> Result<bool, TraceError> {
        match v {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    /// The machine line's `cpu` object ([`NativeCpu`]), absent keys taking
    /// the defaults.
    fn cpu(&self, default: NativeCpu) -> Result<NativeCpu, TraceError> {
        let Some(v) = self.obj.get("cpu") else {
            return Ok(default);
        };
        let Value::Object(c) = v else {
            return Err(self.wrong_type("cpu", "an object of CPU facts", v));
        };
        const KEYS: [&str; 8] = [
            "xcr0_supported",
            "xss_supported",
            "ept_pml5",
            "fms",
            "hle",
            "rtm",
            "arch_capabilities",
            "lass",
        ];
        if let Some(key) = c.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(TraceError::UnknownField {
                line: self.line,
                op: "machine",
                field: format!("cpu.{key}"),
            });
        }
        Ok(NativeCpu {
            xcr0_supported: self.u64_or(
                "cpu.xcr0_supported",
                c.get("xcr0_supported"),
                default.xcr0_supported,
            )?,
            xss_supported: self.u64_or(
                "cpu.xss_supported",
                c.get("xss_supported"),
                default.xss_supported,
            )?,
            ept_pml5: self.bool_or("cpu.ept_pml5", c.get("ept_pml5"), default.ept_pml5)?,
            fms: self.u32_or("cpu.fms", c.get("fms"), default.fms)?,
            hle: self.bool_or("cpu.hle", c.get("hle"), default.hle)?,
            rtm: self.bool_or("cpu.rtm", c.get("rtm"), default.rtm)?,
            arch_capabilities: self.u64_or(
                "cpu.arch_capabilities",
                c.get("arch_capabilities"),
                default.arch_capabilities,
            )?,
            lass: self.bool_or("cpu.lass", c.get("lass"), default.lass)?,
        })
    }

    fn machine(&self) -> Result<TraceOp, TraceError> {
        let line = self.line;
        self.only(
            "machine",
            &[
                "memory",
                "cmrs",
                "packages",
                "lps_per_package",
                "keyids",
                "profile",
                "phys_addr_bits",
                "cpu",
            ],
        )?;
        let defaults = MachineDesc::new(Vec::new());
        let memory = self.ranges("memory")?;
        let cmrs = match self.obj.get("cmrs") {
            Some(_) => Some(self.ranges("cmrs")?),
            None => None,
        };
        let packages = self.u32_or("packages", self.obj.get("packages"), defaults.packages)?;
        let lps_per_package = self.u32_or(
            "lps_per_package",
            self.obj.get("lps_per_package"),
            defaults.lps_per_package,
        )?;
        if u64::from(packages) * u64::from(lps_per_package) > u64::from(MAX_TRACE_LPS) {
            return Err(TraceError::TooManyLps {
                line,
                packages,
                lps_per_package,
            });
        }
        let (mut mktme_keyids, mut tdx_keyids) = (defaults.mktme_keyids, defaults.tdx_keyids);
        if let Some(k) = self.obj.get("keyids") {
            let Value::Object(k) = k else {
                return Err(self.wrong_type("keyids", "an object {\"mktme\":n,\"tdx\":n}", k));
            };
            if let Some(key) = k.keys().find(|key| *key != "mktme" && *key != "tdx") {
                return Err(TraceError::UnknownField {
                    line,
                    op: "machine",
                    field: format!("keyids.{key}"),
                });
            }
            mktme_keyids = self.u32_or("keyids.mktme", k.get("mktme"), mktme_keyids)?;
            tdx_keyids = self.u32_or("keyids.tdx", k.get("tdx"), tdx_keyids)?;
        }
        let profile = match self.obj.get("profile") {
            None => defaults.profile.name.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(self.wrong_type("profile", "a string", other)),
        };
        let phys_addr_bits = self.u32_or(
            "phys_addr_bits",
            self.obj.get("phys_addr_bits"),
            defaults.phys_addr_bits,
        )?;
        let cpu = self.cpu(defaults.cpu)?;
        let m = TraceMachine {
            memory,
            cmrs,
            packages,
            lps_per_package,
            mktme_keyids,
            tdx_keyids,
            profile,
            phys_addr_bits,
            cpu,
        };
        // Everything the simulator would refuse, refused here, with the line.
        m.to_desc()
            .and_then(|d| d.validate().map(drop))
            .map_err(|source| TraceError::Machine { line, source })?;
        Ok(TraceOp::Machine(m))
    }

    fn seamcall(&self) -> Result<TraceOp, TraceError> {
        let line = self.line;
        self.only("seamcall", &["leaf", "in", "out"])?;
        let rax = match self.required("leaf")? {
            Value::String(s) if s.starts_with("0x") || s.starts_with("0X") => {
                parse_number(line, "leaf", &Value::String(s.clone()))?
            }
            Value::String(s) => match Leaf::from_name(s) {
                Some(l) => l.v0().rax(),
                None => {
                    return Err(TraceError::UnknownLeaf {
                        line,
                        name: s.clone(),
                    });
                }
            },
            v @ Value::Number(_) => parse_number(line, "leaf", v)?,
            other => return Err(self.wrong_type("leaf", "a name or a number", other)),
        };
        let mut input = SeamcallArgs::ZERO;
        if let Some(v) = self.obj.get("in") {
            let Value::Object(regs) = v else {
                return Err(self.wrong_type("in", "an object of registers", v));
            };
            for (k, v) in regs {
                let reg = Reg::from_name(k).ok_or_else(|| TraceError::UnknownRegister {
                    line,
                    field: "in",
                    name: k.clone(),
                })?;
                reg.set(&mut input, parse_number(line, &format!("in.{k}"), v)?);
            }
        }
        let expected = match self.obj.get("out") {
            None => None,
            Some(Value::Object(regs)) => {
                let mut e = ExpectedOut::default();
                for (k, v) in regs {
                    let value = parse_number(line, &format!("out.{k}"), v)?;
                    if k == "rax" {
                        e.rax = Some(value);
                        continue;
                    }
                    let reg = Reg::from_name(k).ok_or_else(|| TraceError::UnknownRegister {
                        line,
                        field: "out",
                        name: k.clone(),
                    })?;
                    e.regs.push((reg, value));
                }
                e.regs.sort_by_key(|&(r, _)| r);
                Some(e)
            }
            Some(other) => return Err(self.wrong_type("out", "an object of registers", other)),
        };
        Ok(TraceOp::Seamcall(TraceCall {
            rax,
            input,
            expected,
        }))
    }
}

/// A JSON integer in `0..2^64` or a `"0x..."` string.
fn parse_number(line: usize, field: &str, v: &Value) -> Result<u64, TraceError> {
    let bad = |reason| TraceError::BadNumber {
        line,
        field: field.to_owned(),
        value: v.to_string(),
        reason,
    };
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| bad("not an integer in 0..2^64")),
        Value::String(s) => {
            let digits = s
                .strip_prefix("0x")
                .or_else(|| s.strip_prefix("0X"))
                .ok_or_else(|| bad("a number in a string must start with 0x"))?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("not a hex number"));
            }
            u64::from_str_radix(digits, 16).map_err(|_| bad("does not fit in 64 bits"))
        }
        _ => Err(TraceError::WrongType {
            line,
            field: field.to_owned(),
            expected: "a number (integer or \"0x...\")",
            found: type_name(v),
        }),
    }
}

/// One line of a parsed trace, with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    /// 1-based line number in the trace text.
    pub line: usize,
    /// What the line says.
    pub op: TraceOp,
}

/// A parsed and checked trace: the machine line, then the rest in order.
#[derive(Debug, Clone)]
pub struct Trace {
    machine: TraceMachine,
    machine_line: usize,
    desc: MachineDesc,
    ops: Vec<TraceLine>,
}

impl Trace {
    /// Reads a whole trace and checks it: every line parses, the machine
    /// line comes first and once, describes a machine the simulator can
    /// build, and every `cpu` line names one of its LPs.
    pub fn parse<R: BufRead>(mut reader: R) -> Result<Self, TraceError> {
        let mut machine: Option<(usize, TraceMachine, MachineDesc)> = None;
        let mut ops = Vec::new();
        let mut buf = Vec::new();
        let mut line = 0;
        loop {
            line += 1;
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|source| TraceError::Io { line, source })?;
            if n == 0 {
                break;
            }
            let text = std::str::from_utf8(&buf).map_err(|_| TraceError::NotUtf8 { line })?;
            if text.trim().is_empty() {
                continue;
            }
            let op = TraceOp::parse(text, line)?;
            match (&machine, op) {
                (None, TraceOp::Machine(m)) => {
                    let desc = m
                        .to_desc()
                        .map_err(|source| TraceError::Machine { line, source })?;
                    machine = Some((line, m, desc));
                }
                (None, op) => {
                    return Err(TraceError::MachineNotFirst {
                        line,
                        op: op.name(),
                    });
                }
                (Some((first, ..)), TraceOp::Machine(_)) => {
                    return Err(TraceError::DuplicateMachine {
                        line,
                        first: *first,
                    });
                }
                (Some((_, _, desc)), op) => {
                    if let TraceOp::Cpu { lp } = op
                        && lp >= desc.lps()
                    {
                        return Err(TraceError::LpOutOfRange {
                            line,
                            lp: u64::from(lp),
                            lps: Some(desc.lps()),
                        });
                    }
                    ops.push(TraceLine { line, op });
                }
            }
        }
        let (machine_line, machine, desc) = machine.ok_or(TraceError::Empty)?;
        Ok(Self {
            machine,
            machine_line,
            desc,
            ops,
        })
    }

    /// The machine line.
    pub fn machine(&self) -> &TraceMachine {
        &self.machine
    }

    /// The machine description replay builds the simulator from.
    pub fn machine_desc(&self) -> &MachineDesc {
        &self.desc
    }

    /// The lines after the machine line (blank lines left out).
    pub fn ops(&self) -> &[TraceLine] {
        &self.ops
    }

    /// A fresh simulator of the trace's machine.
    pub fn simulator(&self) -> Result<Simulator, TraceError> {
        Simulator::new(self.desc.clone()).map_err(|source| TraceError::Machine {
            line: self.machine_line,
            source,
        })
    }

    /// Runs the trace on `sim` (normally [`Trace::simulator`]), writing one
    /// JSON line per SEAMCALL to `out`, then checks the simulator's
    /// invariants. The guests run the trace's guest operations (see the
    /// [module documentation](self#guests)).
    ///
    /// Fails only if `out` fails, or if a `cpu` line names an LP `sim` does
    /// not have (possible only when `sim` is not the trace's machine).
    pub fn run<W: Write + ?Sized>(
        &self,
        sim: &Simulator,
        out: &mut W,
    ) -> Result<ReplaySummary, TraceError> {
        self.run_on(sim, out)
    }

    /// [`Trace::run`] through `rec`, a recorder of the simulator
    /// ([`Recorder::for_simulator`]): the replay is recorded as it runs.
    /// A trace recorded on the simulator records back to the same lines.
    pub fn run_recorded<RW: Write, W: Write + ?Sized>(
        &self,
        rec: &Recorder<'_, Simulator, Simulator, RW>,
        out: &mut W,
    ) -> Result<ReplaySummary, TraceError> {
        self.run_on(rec, out)
    }

    fn run_on<H: ReplayHost + ?Sized, W: Write + ?Sized>(
        &self,
        host: &H,
        out: &mut W,
    ) -> Result<ReplaySummary, TraceError> {
        let sim = host.sim();
        let mut summary = ReplaySummary::default();
        let mut guests = ReplayGuests::default();
        let mut write_line = |line: usize, text: &str| {
            writeln!(out, "{text}").map_err(|source| TraceError::Output { line, source })
        };
        for TraceLine { line, op } in &self.ops {
            let line = *line;
            match op {
                TraceOp::Machine(_) => {} // Trace::parse keeps it out of `ops`.
                TraceOp::Write { pa, data } => host.write(*pa, data),
                TraceOp::Cpu { lp } => {
                    let lps = sim.cpus();
                    if *lp >= lps {
                        return Err(TraceError::LpOutOfRange {
                            line,
                            lp: u64::from(*lp),
                            lps: Some(lps),
                        });
                    }
                    host.select_lp(*lp);
                }
                TraceOp::Wbinvd => host.wbinvd(),
                TraceOp::Clflush { pa } => host.clflush(*pa),
                TraceOp::Seamcall(call) => {
                    let leaf = LeafVersion::from_rax(call.rax).ok().map(|l| l.leaf());
                    let frame = (call.input.rcx & (MAX_PA - 1)) / PAGE;
                    if leaf == Some(Leaf::VP_ENTER) {
                        guests.install(sim, frame);
                    }
                    let (text, status) = replay_call(host, line, call, &mut summary);
                    write_line(line, &text)?;
                    if leaf == Some(Leaf::VP_CREATE) && status.is_success() {
                        // A new vCPU at that page: its guest starts over.
                        if let Some(left) = guests.retire(frame) {
                            summary.mismatches.push(left);
                            write_line(left, &unreached(left))?;
                        }
                    }
                }
                TraceOp::Guest { vcpu, op } => {
                    guests.queue(*vcpu / PAGE, line, Some(op.clone()));
                }
                TraceOp::Kick { vcpu, at } => match at {
                    KickAt::Op => guests.queue(*vcpu / PAGE, line, None),
                    KickAt::Entry => sim.shared().guest_log.arm(*vcpu / PAGE),
                },
                TraceOp::MapShared { tdr, gpa, to } => {
                    if crate::leaves::mem::td_of(sim.shared(), tdr / PAGE).is_some() {
                        sim.map_shared(Pfn::new(tdr / PAGE), *gpa, *to);
                    } else {
                        summary.mismatches.push(line);
                        write_line(
                            line,
                            &format!(
                                "{{\"line\":{line},\"op\":\"map_shared\",\"match\":false,\"error\":\"no TD has its TDR at {tdr:#x}\"}}"
                            ),
                        )?;
                    }
                }
                TraceOp::Tsc { value } => sim.set_tsc(*value),
            }
        }
        let last = self.ops.last().map_or(self.machine_line, |l| l.line);
        for left in guests.retire_all() {
            summary.mismatches.push(left);
            write_line(left, &unreached(left))?;
        }
        summary.mismatches.sort_unstable();
        summary.mismatches.dedup();
        out.flush()
            .map_err(|source| TraceError::Output { line: last, source })?;
        summary.module_state = Some(sim.module_state());
        summary.violations = sim.violations();
        summary.invariants = sim.check_invariants().err();
        Ok(summary)
    }
}

/// The output line of a guest operation the replayed guest never issued.
fn unreached(line: usize) -> String {
    format!(
        "{{\"line\":{line},\"op\":\"guest\",\"match\":false,\"error\":\"the replayed guest did not reach this operation\"}}"
    )
}

/// What replay does to the machine, on the simulator or through a
/// recorder of it.
trait ReplayHost {
    fn sim(&self) -> &Simulator;
    fn write(&self, pa: u64, data: &[u8]);
    fn select_lp(&self, lp: u32);
    fn wbinvd(&self);
    fn clflush(&self, pa: u64);
    fn call(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus;
    /// The shape `call` is issued with.
    fn shape(&self, call: &TraceCall) -> RegShape {
        call.replay_shape()
    }
}

impl ReplayHost for Simulator {
    fn sim(&self) -> &Simulator {
        self
    }

    fn write(&self, pa: u64, data: &[u8]) {
        if !data.is_empty() {
            self.poke(pa, data);
        }
    }

    fn select_lp(&self, lp: u32) {
        self.set_lp(lp);
    }

    fn wbinvd(&self) {
        self.wbinvd_all();
    }

    fn clflush(&self, pa: u64) {
        self.clflush_page(Pfn::new(pa / PAGE));
    }

    fn call(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // SAFETY: the simulator's memory is simulated: whatever the
        // registers name, no real memory is read, written or handed over,
        // so any RAX and registers keep the `Seamcall` contract.
        unsafe { self.seamcall(rax, args, shape) }
    }
}

impl<W: Write> ReplayHost for Recorder<'_, Simulator, Simulator, W> {
    fn sim(&self) -> &Simulator {
        self.backend
    }

    fn write(&self, pa: u64, data: &[u8]) {
        if data.is_empty() {
            // Nothing to store; the line is written as it was.
            let mut s = self.lock();
            self.drain_guests(&mut s);
            s.emit(&TraceOp::Write {
                pa,
                data: Vec::new(),
            });
        } else {
            // SAFETY: the simulator's memory is simulated (and `write` of
            // a parsed trace does not overflow the address space).
            unsafe { self.write_phys(Hpa::new_truncate(pa), data) };
        }
    }

    fn select_lp(&self, lp: u32) {
        self.lock().lp = lp;
        self.backend.set_lp(lp);
    }

    fn wbinvd(&self) {
        self.wbinvd_all();
    }

    fn clflush(&self, pa: u64) {
        self.clflush_page(Pfn::new(pa / PAGE));
    }

    fn call(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // SAFETY: as for the simulator: the recorder forwards to it.
        unsafe { self.seamcall(rax, args, shape) }
    }

    /// The recording's shape, so that the lines record back as they were.
    fn shape(&self, call: &TraceCall) -> RegShape {
        call.recorded_shape()
    }
}

/// One entry of a replayed guest's script: a guest operation, or (`None`)
/// a kick before the next one; with its line.
type ScriptItem = (usize, Option<GuestOp>);

type Script = Arc<Mutex<VecDeque<ScriptItem>>>;

/// The replayed guests: per vCPU (TDVPR frame), the script of its current
/// life (from its TDH.VP.CREATE) and whether its program is installed.
#[derive(Default)]
struct ReplayGuests {
    lives: HashMap<u64, (Script, bool)>,
}

impl ReplayGuests {
    fn queue(&mut self, frame: u64, line: usize, item: Option<GuestOp>) {
        let (script, _) = self.lives.entry(frame).or_default();
        lock(script).push_back((line, item));
    }

    /// Before an entry of the vCPU at `frame`: its program is the script,
    /// if the trace has one for it and its guest has not started.
    fn install(&mut self, sim: &Simulator, frame: u64) {
        let Some((script, installed)) = self.lives.get_mut(&frame) else {
            return;
        };
        if *installed || sim.shared().guests.started(frame) {
            return;
        }
        *installed = true;
        let script = Arc::clone(script);
        let armed = Arc::clone(&sim.shared().guest_log.armed);
        sim.set_guest(Pfn::new(frame), move |g: &mut Guest| {
            loop {
                // Not held across the operation: the driver adds lines
                // between entries.
                let item = lock(&script).pop_front();
                match item {
                    // Out of operations: the program ends (the vCPU halts).
                    None => return,
                    Some((_, None)) => {
                        lock(&armed).insert(frame);
                    }
                    Some((_, Some(op))) => {
                        if !op.issue(g) {
                            return;
                        }
                    }
                }
            }
        });
    }

    /// Ends the life of the vCPU at `frame`: the line of the first
    /// operation its guest did not reach, if any.
    fn retire(&mut self, frame: u64) -> Option<usize> {
        let (script, _) = self.lives.remove(&frame)?;
        lock(&script).front().map(|&(line, _)| line)
    }

    fn retire_all(&mut self) -> Vec<usize> {
        let mut frames: Vec<u64> = self.lives.keys().copied().collect();
        frames.sort_unstable();
        frames.into_iter().filter_map(|f| self.retire(f)).collect()
    }
}

/// Issues one SEAMCALL and returns its output line.
fn replay_call<H: ReplayHost + ?Sized>(
    host: &H,
    line: usize,
    call: &TraceCall,
    summary: &mut ReplaySummary,
) -> (String, TdxStatus) {
    let shape = host.shape(call);
    let mut args = call.input;
    let status = host.call(call.rax, &mut args, shape);
    let rax = status.raw();
    summary.seamcalls += 1;

    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "{{\"line\":{line},\"leaf\":{},\"rax\":\"{rax:#x}\",\"status\":{},\"out\":",
        json_str(&leaf_text(call.rax)),
        status.name().map_or_else(|| "null".to_owned(), json_str),
    );
    let _ = write_regs(
        &mut s,
        None,
        Reg::outputs(shape).iter().map(|&r| (r, r.get(&args))),
    );
    if let Some(e) = &call.expected {
        summary.checked += 1;
        let wrong_rax = e.rax.filter(|&v| v != rax);
        let wrong: Vec<(Reg, u64)> = e
            .regs
            .iter()
            .copied()
            .filter(|&(r, v)| r.get(&args) != v)
            .collect();
        let matched = wrong_rax.is_none() && wrong.is_empty();
        let _ = write!(s, ",\"match\":{matched}");
        if !matched {
            summary.mismatches.push(line);
            s.push_str(",\"expected\":");
            let _ = write_regs(&mut s, wrong_rax, wrong);
        }
    }
    s.push('}');
    (s, status)
}

// ---------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// SEAMCALLs issued.
    pub seamcalls: u64,
    /// SEAMCALLs with expected outputs.
    pub checked: u64,
    /// Lines that did not replay as recorded, in order: SEAMCALLs whose
    /// expected outputs did not match, `map_shared` lines that named no
    /// TD, and the first guest line each replayed guest did not reach.
    pub mismatches: Vec<usize>,
    /// The module-wide state at the end (`None` only before a run).
    pub module_state: Option<SysState>,
    /// Rule breaks the simulator recorded.
    pub violations: Vec<Violation>,
    /// Why the simulator's invariants failed at the end, if they did.
    pub invariants: Option<InvariantError>,
}

impl ReplaySummary {
    /// True if every expectation held and the simulator's invariants hold
    /// (no rule was broken).
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty() && self.invariants.is_none()
    }
}

/// The summary line the command-line program prints.
impl fmt::Display for ReplaySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seamcalls, {} with expected outputs: ",
            self.seamcalls, self.checked
        )?;
        match self.mismatches.first() {
            None => f.write_str("all matched")?,
            Some(first) => write!(
                f,
                "{} mismatched (first at line {first})",
                self.mismatches.len()
            )?,
        }
        if let Some(state) = self.module_state {
            write!(f, "; module {state:?}")?;
        }
        match &self.invariants {
            None => f.write_str("; invariants hold"),
            Some(e) => write!(f, "; invariants FAILED: {e}"),
        }
    }
}

/// Parses a trace from `reader`, replays it on a fresh simulator of its
/// machine, and writes one JSON line per SEAMCALL to `out`.
///
/// A malformed trace is an error before anything runs; expectations that
/// fail and broken rules are in the summary ([`ReplaySummary::passed`]).
pub fn replay<R: BufRead, W: Write + ?Sized>(
    reader: R,
    out: &mut W,
) -> Result<ReplaySummary, TraceError> {
    let trace = Trace::parse(reader)?;
    let sim = trace.simulator()?;
    trace.run(&sim, out)
}

// ---------------------------------------------------------------------------
// The simulator's guest log
// ---------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The simulator's side of recording and replaying guests: the lines a
/// recorder takes (guest operations, kicks taken, the host's shared-EPT
/// and TSC changes), kept only while a recorder is attached, and the vCPUs
/// a replay has armed a kick for.
#[derive(Debug, Default)]
pub(crate) struct GuestLog {
    /// Recorders attached ([`GuestTap`]).
    taps: AtomicUsize,
    lines: Mutex<Vec<TraceOp>>,
    /// vCPUs (TDVPR frames) that take a kick at their next entry or next
    /// guest operation, whichever comes first.
    armed: Arc<Mutex<HashSet<u64>>>,
}

impl GuestLog {
    fn recording(&self) -> bool {
        self.taps.load(Ordering::Acquire) != 0
    }

    fn push(&self, op: TraceOp) {
        if self.recording() {
            lock(&self.lines).push(op);
        }
    }

    fn take(&self) -> Vec<TraceOp> {
        std::mem::take(&mut *lock(&self.lines))
    }

    fn tap(&self) -> GuestTap<'_> {
        self.taps.fetch_add(1, Ordering::AcqRel);
        GuestTap { log: self }
    }

    /// Arms a kick for the vCPU at frame `v`.
    fn arm(&self, v: u64) {
        lock(&self.armed).insert(v);
    }

    /// Delivers an armed kick to the vCPU at frame `v`, now in the guest.
    fn deliver(&self, s: &Shared, v: u64) {
        if lock(&self.armed).remove(&v) {
            s.guests.kick(v);
        }
    }
}

/// A recorder's hold on the simulator's guest log: the log keeps lines
/// while one is alive.
struct GuestTap<'a> {
    log: &'a GuestLog,
}

impl Drop for GuestTap<'_> {
    fn drop(&mut self) {
        if self.log.taps.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.log.take();
        }
    }
}

/// The vCPU at frame `v` entered the guest (TDH.VP.ENTER): a kick a replay
/// armed for it is pending from now.
pub(crate) fn guest_entered(s: &Shared, v: u64) {
    s.guest_log.deliver(s, v);
}

/// The guest of the vCPU at frame `v` issued `req` (a new operation, not
/// the repeat of one that exited): logged for a recorder; a kick a replay
/// armed before it is pending from now.
pub(crate) fn guest_request(s: &Shared, v: u64, req: &Request) {
    s.guest_log.deliver(s, v);
    if s.guest_log.recording() {
        s.guest_log.push(TraceOp::Guest {
            vcpu: v * PAGE,
            op: req.clone(),
        });
    }
}

/// The vCPU at frame `v` took a kick: before the operation it just issued
/// (`before_op`), or at its entry.
pub(crate) fn guest_kicked(s: &Shared, v: u64, before_op: bool) {
    let log = &s.guest_log;
    if !log.recording() {
        return;
    }
    let vcpu = v * PAGE;
    let mut lines = lock(&log.lines);
    if before_op {
        // The kick goes before the operation it stopped (logged just now),
        // so that a replay's guest meets it first.
        let last = lines
            .iter()
            .rposition(|l| matches!(l, TraceOp::Guest { vcpu: c, .. } | TraceOp::Kick { vcpu: c, .. } if *c == vcpu));
        let kick = TraceOp::Kick {
            vcpu,
            at: KickAt::Op,
        };
        match last {
            Some(i) if matches!(lines[i], TraceOp::Guest { .. }) => lines.insert(i, kick),
            _ => lines.push(kick),
        }
    } else {
        lines.push(TraceOp::Kick {
            vcpu,
            at: KickAt::Entry,
        });
    }
}

/// The host set the shared EPT of the TD at TDR frame `tdr`.
pub(crate) fn host_map_shared(s: &Shared, tdr: u64, gpa: u64, to: Option<SharedMapping>) {
    s.guest_log.push(TraceOp::MapShared {
        tdr: tdr * PAGE,
        gpa,
        to,
    });
}

/// The host set the simulated TSC.
pub(crate) fn host_tsc(s: &Shared, value: u64) {
    s.guest_log.push(TraceOp::Tsc { value });
}

// ---------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------

/// A recording wrapper: a [`Seamcall`] backend and a [`Platform`](tdx_api::Platform) that
/// forward every call to `B` and `P` unchanged and write a trace of it to
/// `W` (see the [module documentation](self#recording)).
///
/// The recorder keeps its writer behind a mutex and holds it across each
/// recorded call, so the trace's order is the order the calls ran in, and
/// SEAMCALLs through one recorder run one at a time. The logical processor
/// a SEAMCALL is written against is the one the innermost
/// [`Cpus::on_cpu`] through this recorder selected (LP 0 outside any),
/// so a host must issue SEAMCALLs from within `on_cpu` (or on LP 0) for the
/// trace to say where they ran, and must not run `on_cpu` closures of one
/// recorder concurrently. [`on_each_package`](tdx_api::platform::on_each_package)
/// and the provided [`CacheMaintenance::wbinvd_all`] of a platform that
/// does not override it go through the recorder's `on_cpu`, one CPU after
/// the other.
///
/// Writing is best-effort inside the traits (they cannot return I/O
/// errors): the first error stops the recording and [`Recorder::finish`]
/// returns it. Give a [`std::io::BufWriter`] for files.
pub struct Recorder<'a, B: ?Sized, P: ?Sized, W: Write> {
    backend: &'a B,
    platform: &'a P,
    state: Mutex<RecorderState<W>>,
    /// The simulator's guest log, for [`Recorder::for_simulator`].
    guests: Option<GuestTap<'a>>,
}

struct RecorderState<W> {
    out: W,
    /// The LP `on_cpu` selected.
    lp: u32,
    /// The LP the trace last said calls run on.
    written_lp: u32,
    error: Option<io::Error>,
}

impl<W: Write> RecorderState<W> {
    fn emit(&mut self, op: &TraceOp) {
        if self.error.is_none()
            && let Err(e) = writeln!(self.out, "{op}")
        {
            self.error = Some(e);
        }
    }
}

impl<B: ?Sized, P: ?Sized, W: Write> fmt::Debug for Recorder<'_, B, P, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("Recorder")
            .field("lp", &s.lp)
            .field("written_lp", &s.written_lp)
            .field("error", &s.error)
            .finish_non_exhaustive()
    }
}

impl<'a, B: ?Sized, P: ?Sized, W: Write> Recorder<'a, B, P, W> {
    /// A recorder over `backend` and `platform` that writes to `out`,
    /// starting with the machine line for `machine`.
    pub fn new(
        backend: &'a B,
        platform: &'a P,
        machine: &TraceMachine,
        mut out: W,
    ) -> io::Result<Self> {
        writeln!(out, "{}", TraceOp::Machine(machine.clone()))?;
        Ok(Self {
            backend,
            platform,
            state: Mutex::new(RecorderState {
                out,
                lp: 0,
                written_lp: 0,
                error: None,
            }),
            guests: None,
        })
    }

    /// Writes the lines the simulator's guest log holds (none unless the
    /// recorder was made with [`Recorder::for_simulator`]).
    fn drain_guests(&self, s: &mut RecorderState<W>) {
        if let Some(tap) = &self.guests {
            for op in tap.log.take() {
                s.emit(&op);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState<W>> {
        // A panic in a closure run by `on_cpu` must not hide the trace.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wrapped backend.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// The wrapped platform.
    pub fn platform(&self) -> &'a P {
        self.platform
    }

    /// Flushes the trace and returns the writer, or the first write error.
    pub fn finish(self) -> io::Result<W> {
        {
            let mut s = self.lock();
            self.drain_guests(&mut s);
        }
        let Self { state, guests, .. } = self;
        drop(guests);
        let mut s = state.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = s.error {
            return Err(e);
        }
        s.out.flush()?;
        Ok(s.out)
    }
}

impl<'a, W: Write> Recorder<'a, Simulator, Simulator, W> {
    /// A recorder of `sim`, as both backend and platform, with the machine
    /// line taken from its description ([`TraceMachine::from_desc`]).
    ///
    /// It also writes what the simulator's guests do and what the host
    /// does to them through the simulator (`guest`, `kick`, `map_shared`
    /// and `tsc` lines; see the [module documentation](self#guests)),
    /// from when it is built until it is finished or dropped. One such
    /// recorder of a simulator at a time: two would share those lines.
    pub fn for_simulator(sim: &'a Simulator, out: W) -> io::Result<Self> {
        let mut r = Self::new(sim, sim, &TraceMachine::from_desc(&sim.machine()), out)?;
        r.lock().lp = sim.current_lp();
        r.guests = Some(sim.shared().guest_log.tap());
        Ok(r)
    }
}

/// Puts the recorder's LP back when an `on_cpu` closure ends (or unwinds).
struct RestoreLp<'r, W: Write> {
    state: &'r Mutex<RecorderState<W>>,
    prev: u32,
}

impl<W: Write> Drop for RestoreLp<'_, W> {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).lp = self.prev;
    }
}

// SAFETY: every call goes to `B` with the same `rax`, `args` and `shape`,
// and its status comes back unchanged; the recorder only copies `args`
// before and reads it after. So each point of the `Seamcall` contract (the
// inputs the shape names, the outputs it names and nothing else changed,
// the status as the module left it) holds because it holds for `B`.
unsafe impl<B: Seamcall + ?Sized, P: ?Sized, W: Write> Seamcall for Recorder<'_, B, P, W> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let mut s = self.lock();
        let before = *args;
        // SAFETY: the caller keeps the contract for this call, and `B` gets
        // exactly the same arguments.
        let status = unsafe { self.backend.seamcall(rax, args, shape) };
        // What the guests did during the call, and the host's guest
        // actions before it, go before the call's line.
        self.drain_guests(&mut s);
        if s.lp != s.written_lp {
            let lp = s.lp;
            s.emit(&TraceOp::Cpu { lp });
            s.written_lp = lp;
        }
        let mut input = SeamcallArgs::ZERO;
        for &r in Reg::inputs(shape) {
            r.set(&mut input, r.get(&before));
        }
        let expected = ExpectedOut {
            rax: Some(status.raw()),
            regs: Reg::outputs(shape)
                .iter()
                .map(|&r| (r, r.get(args)))
                .collect(),
        };
        s.emit(&TraceOp::Seamcall(TraceCall {
            rax,
            input,
            expected: Some(expected),
        }));
        status
    }
}

// The platform traits: every method forwards to `P` with the same arguments
// and returns what `P` returned, so each promise of a trait holds because it
// holds for `P`. Recording only reads the arguments.

// SAFETY: forwards to `P`.
unsafe impl<B: ?Sized, P: FrameAllocator + ?Sized, W: Write> FrameAllocator
    for Recorder<'_, B, P, W>
{
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        self.platform.alloc_pages(count, align, placement)
    }
}

// SAFETY: forwards to `P`.
unsafe impl<B: ?Sized, P: FrameDeallocator + ?Sized, W: Write> FrameDeallocator
    for Recorder<'_, B, P, W>
{
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: the caller keeps `free_pages`' contract for `run`; `P`
        // gets the same run.
        unsafe { self.platform.free_pages(run) }
    }

    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        self.platform.leak_pages(run, reason);
    }

    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.platform.return_guest_frames(run) };
    }

    fn dropped_td(&self, report: &TeardownReport) {
        self.platform.dropped_td(report);
    }
}

// SAFETY: forwards to `P`; `write_phys` also records the bytes.
unsafe impl<B: ?Sized, P: DirectMap + ?Sized, W: Write> DirectMap for Recorder<'_, B, P, W> {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: the caller keeps `read_phys`' contract for the range; `P`
        // gets the same range.
        unsafe { self.platform.read_phys(pa, buf) }
    }

    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        let mut s = self.lock();
        // SAFETY: the caller keeps `write_phys`' contract for the range; `P`
        // gets the same range and bytes.
        unsafe { self.platform.write_phys(pa, data) };
        self.drain_guests(&mut s);
        s.emit(&TraceOp::Write {
            pa: pa.as_u64(),
            data: data.to_vec(),
        });
    }

    fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>> {
        self.platform.direct_map(pa)
    }
}

// SAFETY: forwards to `P`; `on_cpu` runs the closure through `P::on_cpu`
// (to completion, on that CPU) and only records which LP it selected.
unsafe impl<B: ?Sized, P: Cpus + ?Sized, W: Write> Cpus for Recorder<'_, B, P, W> {
    fn cpus(&self) -> u32 {
        self.platform.cpus()
    }

    fn package_of(&self, cpu: CpuId) -> PackageId {
        self.platform.package_of(cpu)
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.platform.node_of(pfn)
    }

    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        let prev = std::mem::replace(&mut self.lock().lp, cpu.0);
        let _restore = RestoreLp {
            state: &self.state,
            prev,
        };
        self.platform.on_cpu(cpu, f);
    }

    fn yield_now(&self) {
        self.platform.yield_now();
    }
}

// SAFETY: forwards every method to `P`'s (its overrides included), so the
// caches are maintained as `P` maintains them; then records what was done.
unsafe impl<B: ?Sized, P: CacheMaintenance + ?Sized, W: Write> CacheMaintenance
    for Recorder<'_, B, P, W>
{
    fn wbinvd_all(&self) {
        let mut s = self.lock();
        self.platform.wbinvd_all();
        self.drain_guests(&mut s);
        s.emit(&TraceOp::Wbinvd);
    }

    fn clflush_page(&self, pfn: Pfn) {
        let mut s = self.lock();
        self.platform.clflush_page(pfn);
        self.drain_guests(&mut s);
        s.emit(&TraceOp::Clflush {
            pa: pfn.hpa().as_u64(),
        });
    }

    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        let mut s = self.lock();
        // SAFETY: the caller keeps `movdir64b_clear`'s contract for `run`;
        // `P` gets the same run.
        let r = unsafe { self.platform.movdir64b_clear(run) };
        self.drain_guests(&mut s);
        if r.is_ok() {
            // The format has no MOVDIR64B: write what it leaves, zeros with
            // no dirty line, page by page.
            let zeros = vec![0; PAGE as usize];
            for pfn in run.iter() {
                let pa = pfn.hpa().as_u64();
                s.emit(&TraceOp::Write {
                    pa,
                    data: zeros.clone(),
                });
                s.emit(&TraceOp::Clflush { pa });
            }
        }
        r
    }
}

// SAFETY: forwards to `P`.
unsafe impl<B: ?Sized, P: HardwareInfo + ?Sized, W: Write> HardwareInfo for Recorder<'_, B, P, W> {
    fn hardware(&self) -> Hardware {
        self.platform.hardware()
    }
}
