//! The guest model: what runs inside a TD when the host enters a vCPU.
//!
//! A test gives a vCPU a guest program ([`Simulator::set_guest`]): Rust
//! code that acts as the TD's software on that vCPU, through a [`Guest`]
//! context whose methods are the guest's operations (TDG.MEM.PAGE.ACCEPT,
//! memory reads and writes of private and shared GPAs, CPUID, RDMSR and
//! WRMSR, the instructions that always #VE, TDG.VP.VMCALL,
//! TDG.VP.VEINFO.GET, halt, a triple fault). The program runs on a thread
//! of its own, but only while the host is inside TDH.VP.ENTER for its
//! vCPU: each operation is a
//! request the entering leaf carries out (on the host thread that called
//! TDH.VP.ENTER, with the module's locks that leaf holds) and answers, or
//! turns into a TD exit. After an exit the program stays stopped inside
//! the operation that exited until the next TDH.VP.ENTER of the vCPU, which
//! resumes it there: a fault-like exit (EPT violation, the kick's external
//! interrupt) runs the operation again, a trap-like one (TDG.VP.VMCALL)
//! completes it with the host's reply. The hand-off is synchronous, so a
//! run is as deterministic as the host's own calls; the guest's "RIP" is
//! the number of operations it has issued ([`Guest::ops`]).
//!
//! What each operation does is the module's behaviour (Intel TDX module
//! 1.5.01; file names below are in that source):
//!
//! - TDG.MEM.PAGE.ACCEPT (`src/td_dispatcher/vm_exits/tdg_mem_page_accept.c`):
//!   4K and 2M only (1G is `TDX_OPERAND_INVALID|RCX`), the statuses
//!   PAGE_ALREADY_ACCEPTED / PAGE_SIZE_MISMATCH / OPERAND_BUSY, and the
//!   EPT-violation TD exit with an ACCEPT extended exit qualification
//!   where the module makes one (`async_tdexit_ept_violation`,
//!   `src/td_dispatcher/vm_exits/td_other_exits.c`). An entry a host
//!   marked with host priority is BUSY for the guest; if the guest still
//!   meets the mark [`HP_LOCK_TIMEOUT`] ticks of the simulated TSC
//!   ([`Simulator::set_tsc`]) after it first did, the vCPU makes the
//!   trap-like `TDX_HOST_PRIORITY_BUSY_TIMEOUT` exit and the ACCEPT
//!   returns BUSY (bit 60 = the next entry's host-recoverability hint)
//!   (`src/td_dispatcher/tdx_td_dispatcher.c`). A 2M accept zeroes the
//!   page in 4K chunks from the entry's ACCEPT_COUNTER and, after each
//!   chunk but the last, stops if an interrupt is pending (a kick of the
//!   vCPU; [`Simulator::kick_during_accept`] makes one arrive after a
//!   given chunk): the counter stays in the still-PENDING entry, the
//!   TDCALL does not complete (no status, RIP not advanced), the vCPU
//!   makes the kick's external-interrupt exit, and after the next entry
//!   the ACCEPT goes on from the counter. TDH.MEM.RANGE.BLOCK, REMOVE,
//!   DEMOTE and PROMOTE of the entry reset the counter. PAGE.AUG does not
//!   zero the page; the accept does.
//! - A private access (`src/td_dispatcher/vm_exits/td_ept_violation.c`):
//!   a MAPPED page is read or written; a PENDING page is a #VE for the
//!   program (an [`Exception`] from the operation) unless the TD has
//!   ATTRIBUTES.SEPT_VE_DISABLE, then an EPT-violation exit with extended
//!   exit qualification type 6; anything else an EPT-violation exit (type
//!   0). The access repeats after the next entry.
//! - A shared access goes through the VMM's shared EPT, which tdx-api does
//!   not manage and a test sets page by page
//!   ([`Simulator::map_shared`](crate::Simulator::map_shared)): a page
//!   mapped to host memory is read and written there; an MMIO page is a
//!   #VE the CPU delivers (suppress-#VE clear) while VE_INFO is free, and
//!   an EPT-violation exit with the shared GPA while it is still valid
//!   (the CPU converts an EPT violation to a #VE only then); an unmapped
//!   one is an EPT-violation exit with the shared GPA, and the access
//!   repeats after the next entry.
//! - #VE and VE_INFO (`tdx_inject_ve`,
//!   `src/td_dispatcher/vm_exits/td_other_exits.c`;
//!   `src/td_dispatcher/vm_exits/tdg_vp_veinfo_get.c`): every #VE records
//!   VE_INFO (exit reason, qualification, GPA, instruction length) in the
//!   vCPU, valid until the program's [`Guest::veinfo_get`] reads it (as a
//!   guest's #VE handler does first). A #VE the module injects while
//!   VE_INFO is still valid is a #DF instead ([`Exception::DoubleFault`]).
//!   An operation that #VEs does not complete: the program's handling of
//!   the [`Exception`] stands for the guest's handler.
//! - CPUID (`src/td_dispatcher/vm_exits/td_cpuid.c`, [`Guest::cpuid`]):
//!   answered from the TD's CPUID values, which TDH.MNG.RD's CPUID_VALUES
//!   shows too: the module's CPUID lookup table (a leaf it lacks or marks
//!   faulting, e.g. 0x2, 0x6, 0xB, 0x1F on 1.5.01, 0x40000000-0x4FFFFFFF,
//!   is a #VE with reason 10), a leaf above the last base or extended leaf
//!   read as the last base leaf (0x23), TD_PARAMS' configuration applied
//!   (CONFIG_DIRECT bits as configured; the simulated CPU has every
//!   ALLOW_DIRECT bit, so those are as configured too), CPUID(0) and
//!   CPUID(1)'s FIXED1 bits and the CPU's vendor and F/M/S; dynamic:
//!   CPUID(1).EBX\[31:24\] = VCPU_INDEX, CPUID(0x80000001).EDX.SYSCALL = 1.
//!   TDG.VP.CPUIDVE.SET ([`Guest::cpuidve_set`]) makes every CPUID a #VE.
//!   Not modelled: the other native CPUID values (0), FIXED0/FIXED1 bits
//!   beyond leaves 0 and 1, XFAM-dependent bits, the bits that reflect
//!   guest CR4 (0), the host's per-leaf CPUID_CONTROL.
//! - RDMSR/WRMSR (`src/td_dispatcher/vm_exits/td_msr_access.c`, the
//!   module's whole MSR table `include/auto_gen/msr_config_lookup.c`;
//!   [`Guest::rdmsr`], [`Guest::wrmsr`]): outside 0-0x1FFF and
//!   0xC0000000-0xC0001FFF, or in range but not in the table (APIC_BASE,
//!   the MTRRs, most x2APIC MSRs incl. the ICR and the timer): #VE
//!   (reason 31/32). In the table: a bitmap bit 0 (fixed, or dynamic and
//!   the TD has the feature: PERFMON, PKS, CET/PT/ULI/LBR by XFAM, WAITPKG
//!   and TSX by CPUID) is a direct access to the vCPU's value the model
//!   keeps (IA32_TSC reads the simulated TSC; PAT and EFER start at the
//!   TD VMCS's values; writes to the read-only ARCH_CAPABILITIES and
//!   XAPIC_DISABLE_STATUS are #GP). Otherwise the module emulates WRMSR of
//!   XSS (bits outside the CPU's and XFAM's: #GP), DEBUGCTL (reserved
//!   bits: #GP; TR without BTS: #VE; bit 13 kept) and EFER (only SCE may
//!   change, else #VE), RDMSR of DEBUGCTL, MISC_ENABLE (the LP's value
//!   with PERFMON_AVAILABLE clear and PEBS_UNAVAILABLE set),
//!   PERF_CAPABILITIES (0), ARCH_CAPABILITIES (the CPU's, the module's
//!   masking not modelled), XAPIC_DISABLE_STATUS (1) and the VMX
//!   capability MSRs (0: their virtual values are not modelled); the rest
//!   is the table's action: #VE (TSC and MISC_ENABLE writes, ...), #GP
//!   (features the TD lacks, SGX, SMM, reserved x2APIC, VMX MSR writes),
//!   or #VE/#GP by the TD's CPUID for TSC_DEADLINE, DCA, TME and MKTME.
//! - HLT, IN/OUT, INVD, WBINVD, VMCALL, MWAIT, MONITOR, PCONFIG
//!   ([`Guest::instruction`], `src/td_dispatcher/tdx_td_dispatcher.c`):
//!   always a #VE with the VM exit's reason and qualification, never a TD
//!   exit (the GHCI HLT the host sees is [`Guest::halt`], the TDVMCALL a
//!   handler makes).
//! - TDG.VP.VMCALL (`src/td_dispatcher/vm_exits/tdg_vp_vmcall.c`,
//!   `src/td_transitions/tdh_vp_enter.c`): the module's check of the
//!   exposure control (RAX, RCX, RSP, and RBP under NO_RBP_MOD, may not be
//!   exposed; bits 63:32 reserved: `TDX_OPERAND_INVALID|RCX` to the guest,
//!   no exit), the exit with the exposed registers, the host's reply copied
//!   into the exposed registers at the next entry. XMM registers are not
//!   modelled: an exposure of XMMs shows in the exit's RCX (the module
//!   allows it), their contents read as zero and the host's are dropped.
//!
//! - TDG.VP.INFO, TDG.MR.RTMR.EXTEND and TDG.MR.REPORT
//!   ([`Guest::vp_info`], [`Guest::rtmr_extend`], [`Guest::mr_report`]),
//!   their memory operands mapped as the module maps them (an unmapped GPA
//!   is an EPT-violation exit with the missing access, and the call runs
//!   again after the next entry; a PENDING page or an MMIO page is a #VE
//!   the module injects, so a #DF while VE_INFO is valid).
//!
//! The host stops a running guest with a kick ([`Simulator::kick`]): the
//! guest leaves at its next operation with an external-interrupt exit, as
//! an IPI to the LP running it would make it leave. A thread that wants
//! the LP a guest runs on (a SEAMCALL there, as `Cpus::on_cpu` makes
//! one: the simulator's IPI) kicks that guest too, until it has the LP.
//!
//! A VMM's run loop against a guest program, through tdx-api's vCPU
//! handle:
//!
//! ```
//! use tdx_api::{
//!     CpuId, TdxModule,
//!     plan::{MemRange, PlanInput},
//!     td::{TdConfig, TdHost},
//! };
//! use tdx_sim::{Guest, MachineDesc, Simulator};
//! use tdx_types::exit::{TdExit, VmcallRequest, VmcallStatus};
//!
//! const GIB: u64 = 1 << 30;
//! let sim = Simulator::new(MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2)).unwrap();
//! let input = PlanInput::new(vec![MemRange { start: 4 * GIB, end: 8 * GIB, node: 0 }]);
//! let module = TdxModule::init(&sim, &sim).unwrap().configure(&input).unwrap();
//! let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
//! let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
//! let id = td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
//! let td = td.finalize().map_err(|f| f.error).unwrap();
//!
//! // The guest: halts twice (GHCI HLT), then its program ends (it halts
//! // at every entry from then on).
//! sim.set_guest(id.tdvpr, |g: &mut Guest| {
//!     assert_eq!(g.halt(), VmcallStatus::SUCCESS);
//!     g.halt();
//! });
//! let mut v = td.vcpu(id).unwrap();
//! for cpu in [0, 1] {
//!     // The second entry is on another CPU: the handle flushes first.
//!     assert!(matches!(v.enter(CpuId(cpu)).unwrap(), TdExit::Vmcall { .. }));
//!     assert!(matches!(v.vmcall(), Some(Ok(VmcallRequest::Hlt { .. }))));
//!     v.reply(VmcallStatus::SUCCESS).unwrap();
//! }
//! drop(v);
//! assert!(td.teardown().is_clean());
//! ```
//!
//! [`Simulator::set_guest`]: crate::Simulator::set_guest
//! [`Simulator::kick`]: crate::Simulator::kick
//! [`Simulator::set_tsc`]: crate::Simulator::set_tsc
//! [`Simulator::kick_during_accept`]: crate::Simulator::kick_during_accept

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, mpsc},
};

use tdx_types::{
    Hpa, TdxStatus,
    exit::{VmcallRegs, VmcallStatus, subfunction},
};

/// The host-priority lock timeout in TSC ticks: the TDCS value TDH.MNG.INIT
/// sets, `DEFAULT_HP_LOCK_TIMEOUT_USEC` (1 s,
/// `src/common/data_structures/td_control_structures.h`) at the native TSC
/// frequency, which the simulated CPU has at 2.5 GHz (model choice).
pub const HP_LOCK_TIMEOUT: u64 = 2_500_000_000;

/// How the VMM's shared EPT maps a shared GPA, for the guest model
/// ([`Simulator::map_shared`](crate::Simulator::map_shared)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedMapping {
    /// Host memory: the guest's accesses read and write this page.
    Memory(Hpa),
    /// Emulated MMIO: an entry with suppress-#VE clear, as KVM makes them,
    /// so an access is a #VE for the guest (whose handler would make a
    /// TDG.VP.VMCALL<#VE.RequestMMIO>), not a TD exit.
    Mmio,
}

/// A guest program: what a vCPU runs.
pub type GuestProgram = Box<dyn FnOnce(&mut Guest) + Send + 'static>;

/// The VE_INFO of a #VE (`tdvps_ve_info_t`,
/// `src/common/data_structures/tdx_tdvps.h`): what the guest's #VE handler
/// reads with TDG.VP.VEINFO.GET ([`Guest::veinfo_get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtualizationException {
    /// The VMX exit reason: 48 (EPT violation), 10 (CPUID), 31/32
    /// (RDMSR/WRMSR), or the instruction's ([`Instruction::exit_reason`]).
    pub reason: u32,
    /// The exit qualification (an EPT violation's access: bit 0 read, bit 1
    /// write; an instruction's VMX qualification; 0 for CPUID and MSRs).
    pub qualification: u64,
    /// The faulting GPA (EPT violations; 0 otherwise).
    pub gpa: u64,
    /// The guest linear address: always 0 (the model has no guest paging).
    pub gla: u64,
    /// The instruction length the VM exit recorded (the model's: the
    /// instruction's architectural encoding length for the instruction
    /// #VEs, CPUID, RDMSR and WRMSR; 0 for EPT violations).
    pub instruction_length: u32,
    /// The VMX instruction information: always 0 in the model.
    pub instruction_info: u32,
}

/// An exception a guest operation ended in instead of completing: what
/// the module (or the CPU) delivered to the guest. The program stands for
/// the guest's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exception {
    /// A #VE. Its VE_INFO stays valid until the program reads it with
    /// [`Guest::veinfo_get`], as a guest's #VE handler does first thing.
    Ve(VirtualizationException),
    /// A #DF: a #VE the module had to inject while VE_INFO was still valid
    /// (`tdx_inject_ve`, `src/td_dispatcher/vm_exits/td_other_exits.c`; its
    /// comment says #GP(0), the code injects #DF). VE_INFO keeps the first
    /// #VE's contents.
    DoubleFault,
    /// A #GP(0) (an MSR the TD may not access, a bad value for a handled
    /// MSR).
    GeneralProtection,
}

impl Exception {
    /// The VE_INFO of a #VE, `None` for the other exceptions.
    pub fn ve(&self) -> Option<&VirtualizationException> {
        match self {
            Exception::Ve(ve) => Some(ve),
            _ => None,
        }
    }
}

/// An instruction the module always turns into a #VE (never a TD exit)
/// for an L1 TD (`src/td_dispatcher/tdx_td_dispatcher.c`, `td_generic_ve_exit`):
/// VE_INFO has the VM exit's reason and qualification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// HLT (exit reason 12).
    Hlt,
    /// INVD (13).
    Invd,
    /// VMCALL (18).
    Vmcall,
    /// IN or OUT with the port in DX (30): `size` 1, 2 or 4 bytes, `input`
    /// for IN. The qualification is the VMX one: size - 1 (bits 2:0),
    /// direction (bit 3, 1 = IN), the port (bits 31:16).
    Io {
        /// The port.
        port: u16,
        /// The access size in bytes.
        size: u8,
        /// IN (true) or OUT.
        input: bool,
    },
    /// MWAIT (36).
    Mwait,
    /// MONITOR (39).
    Monitor,
    /// WBINVD (54).
    Wbinvd,
    /// PCONFIG (65).
    Pconfig,
}

impl Instruction {
    /// The VMX basic exit reason of the instruction's VM exit.
    pub fn exit_reason(&self) -> u32 {
        match self {
            Instruction::Hlt => 12,
            Instruction::Invd => 13,
            Instruction::Vmcall => 18,
            Instruction::Io { .. } => 30,
            Instruction::Mwait => 36,
            Instruction::Monitor => 39,
            Instruction::Wbinvd => 54,
            Instruction::Pconfig => 65,
        }
    }

    /// The VMX exit qualification (only I/O has one).
    pub fn qualification(&self) -> u64 {
        match *self {
            Instruction::Io { port, size, input } => {
                u64::from(size.saturating_sub(1) & 7)
                    | u64::from(input) << 3
                    | u64::from(port) << 16
            }
            _ => 0,
        }
    }

    /// The instruction's length (its shortest encoding: HLT F4, IN/OUT
    /// through DX EC-EF, INVD and WBINVD 0F 08/09, the 0F 01 group three
    /// bytes).
    pub fn length(&self) -> u32 {
        match self {
            Instruction::Hlt | Instruction::Io { .. } => 1,
            Instruction::Invd | Instruction::Wbinvd => 2,
            Instruction::Vmcall
            | Instruction::Mwait
            | Instruction::Monitor
            | Instruction::Pconfig => 3,
        }
    }
}

/// The guest side of one vCPU, handed to its program. Each method is one
/// guest operation; it returns when the operation completed, which may be
/// after any number of TD exits and entries.
#[derive(Debug)]
pub struct Guest {
    tx: mpsc::Sender<Result<Request, String>>,
    rx: mpsc::Receiver<Reply>,
    ops: u64,
}

/// What a guest operation asks of the module: the operation as a trace
/// writes it. The channel from a program carries `Err` with its panic
/// message when it panicked.
pub(crate) use crate::trace::GuestOp as Request;

/// The module's answer to a guest operation.
#[derive(Debug)]
pub(crate) enum Reply {
    Status(TdxStatus),
    Read(Result<Vec<u8>, Exception>),
    Write(Result<(), Exception>),
    Vmcall(Result<VmcallRegs, TdxStatus>),
    VpInfo(VpInfo),
    Tdcall(Result<TdxStatus, Exception>),
    Cpuid(Result<[u32; 4], Exception>),
    Msr(Result<u64, Exception>),
    Exception(Exception),
    VeInfo(Result<VirtualizationException, TdxStatus>),
}

/// What TDG.VP.INFO returns (`src/td_dispatcher/vm_exits/tdg_vp_info.c`),
/// register by register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VpInfo {
    /// RCX: the GPA width (52 with GPAW, else 48).
    pub rcx: u64,
    /// RDX: the TD's ATTRIBUTES.
    pub rdx: u64,
    /// R8: NUM_VCPUS (31:0) and MAX_VCPUS (63:32).
    pub r8: u64,
    /// R9: this vCPU's VCPU_INDEX.
    pub r9: u64,
    /// R10: TDCALLs available (bit 0: TDG.SYS.RD).
    pub r10: u64,
    /// R11: reserved, 0.
    pub r11: u64,
}

/// The unwinding payload that ends a guest thread whose vCPU went away.
struct Stopped;

fn stop() -> ! {
    std::panic::resume_unwind(Box::new(Stopped))
}

/// GPR indices of the TDG.VP.VMCALL exposure control.
const R10: u16 = 1 << 10;
const R11: u16 = 1 << 11;
const R12: u16 = 1 << 12;

impl Guest {
    fn call(&mut self, r: Request) -> Reply {
        self.ops += 1;
        if self.tx.send(Ok(r)).is_err() {
            stop();
        }
        self.rx.recv().unwrap_or_else(|_| stop())
    }

    /// TDG.VP.INFO: the TD's GPA width, attributes, vCPU counts and this
    /// vCPU's index.
    pub fn vp_info(&mut self) -> VpInfo {
        match self.call(Request::VpInfo) {
            Reply::VpInfo(i) => i,
            r => unreachable!("{r:?}"),
        }
    }

    /// TDG.MR.RTMR.EXTEND: RTMR\[`index`\] := SHA-384(RTMR\[`index`\] || the
    /// 48 bytes at `gpa`, private, 64-byte aligned)
    /// (`src/td_dispatcher/vm_exits/tdg_mr_rtmr_extend.c`). `Ok` with the
    /// TDCALL's status; `Err` if reading the GPA was a #VE (a PENDING
    /// page). A GPA that is not mapped makes an EPT-violation exit and the
    /// call repeats after the next entry. A #VE while VE_INFO is valid is a
    /// #DF ([`Exception`]).
    pub fn rtmr_extend(&mut self, gpa: u64, index: u64) -> Result<TdxStatus, Exception> {
        match self.call(Request::RtmrExtend { gpa, index }) {
            Reply::Tdcall(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// TDG.MR.REPORT: writes the 1024-byte TDREPORT_STRUCT at `report`
    /// (1024-aligned) for the 64 bytes of REPORTDATA at `data` (64-aligned),
    /// both private or shared; `subtype` must be 0
    /// (`src/td_dispatcher/vm_exits/tdg_mr_report.c`). TDINFO (offset 512)
    /// is the TD's: ATTRIBUTES, XFAM, MRTD, MRCONFIGID, MROWNER,
    /// MROWNERCONFIG, RTMR0-3; REPORTMACSTRUCT and TEE_TCB_INFO, which
    /// the CPU's SEAMDB_REPORT makes, are the model's: REPORTTYPE (0x81, 0,
    /// 0), TEE_TCB_INFO all zero, TEE_TCB_INFO_HASH and TEE_INFO_HASH the
    /// SHA-384 of TEE_TCB_INFO and TDINFO, CPUSVN zero, and a MAC that is
    /// no MAC (the first 32 bytes of the SHA-384 of bytes 0..224).
    pub fn mr_report(
        &mut self,
        report: u64,
        data: u64,
        subtype: u64,
    ) -> Result<TdxStatus, Exception> {
        match self.call(Request::MrReport {
            report,
            data,
            subtype,
        }) {
            Reply::Tdcall(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// CPUID with EAX = `leaf`, ECX = `subleaf`: `Ok` with EAX, EBX, ECX,
    /// EDX as the module answers it from the TD's CPUID values
    /// (`src/td_dispatcher/vm_exits/td_cpuid.c`), or the #VE (reason 10)
    /// for a leaf the module does not virtualize (not in its table, or
    /// marked faulting). [`crate::guest`] lists the values the model has.
    pub fn cpuid(&mut self, leaf: u32, subleaf: u32) -> Result<[u32; 4], Exception> {
        match self.call(Request::Cpuid { leaf, subleaf }) {
            Reply::Cpuid(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// RDMSR of `msr`: `Ok` with EDX:EAX (a direct access to the MSR, or
    /// the module's emulation), or the #VE (reason 31) or #GP(0) the module
    /// gives (`src/td_dispatcher/vm_exits/td_msr_access.c`). [`crate::guest`]
    /// lists what the model does for which MSR.
    pub fn rdmsr(&mut self, msr: u32) -> Result<u64, Exception> {
        match self.call(Request::Rdmsr { msr }) {
            Reply::Msr(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// WRMSR of `value` to `msr`: `Ok` when written (directly or by the
    /// module), or the #VE (reason 32) or #GP(0).
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), Exception> {
        match self.call(Request::Wrmsr { msr, value }) {
            Reply::Msr(r) => r.map(drop),
            r => unreachable!("{r:?}"),
        }
    }

    /// Executes an instruction the module turns into a #VE: the #VE (or a
    /// #DF if VE_INFO is still valid). Its VE_INFO has the instruction's
    /// exit reason, qualification and length; the guest's handler would
    /// then make the matching TDG.VP.VMCALL ([`Guest::tdvmcall`]).
    pub fn instruction(&mut self, kind: Instruction) -> Exception {
        match self.call(Request::Instruction(kind)) {
            Reply::Exception(e) => e,
            r => unreachable!("{r:?}"),
        }
    }

    /// TDG.VP.VEINFO.GET (`src/td_dispatcher/vm_exits/tdg_vp_veinfo_get.c`):
    /// the VE_INFO of the last #VE, which becomes free (a later #VE is a #VE
    /// again, not a #DF); `Err(TDX_NO_VALID_VE_INFO)` when there is none.
    /// The registers: RCX the reason, RDX the qualification, R8 the GLA, R9
    /// the GPA, R10 the instruction length (31:0) and information (63:32);
    /// all zero on the error.
    pub fn veinfo_get(&mut self) -> Result<VirtualizationException, TdxStatus> {
        match self.call(Request::VeinfoGet) {
            Reply::VeInfo(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// TDG.VP.CPUIDVE.SET (`src/td_dispatcher/vm_exits/tdg_vp_cpuidve_set.c`):
    /// bit 0 makes every CPUID in supervisor mode a #VE (reason 10), bit 1
    /// every CPUID in user mode (the guest model runs in supervisor mode
    /// only, so bit 1 is recorded and has no effect); other bits set are
    /// `TDX_OPERAND_INVALID|RCX` and change nothing. Leaves the module
    /// does not virtualize are a #VE either way. The host's per-leaf
    /// CPUID_CONTROL (TDH.VP.WR) is not modelled.
    pub fn cpuidve_set(&mut self, control: u64) -> TdxStatus {
        match self.call(Request::CpuidveSet { control }) {
            Reply::Status(s) => s,
            r => unreachable!("{r:?}"),
        }
    }

    /// Guest operations issued so far (the model's "RIP").
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// TDG.MEM.PAGE.ACCEPT of the private page at `gpa`, `level` 0 (4K) or
    /// 1 (2M): the status the TDCALL returns in RAX. Where the module makes
    /// a TD exit instead (the entry is not PENDING and not accepted, or the
    /// walk stops above at something the host must fix), the call repeats
    /// after the host enters the vCPU again; so does a 2M accept an
    /// interrupt stopped between chunks (it goes on where it stopped).
    pub fn accept(&mut self, gpa: u64, level: u8) -> TdxStatus {
        match self.call(Request::Accept { gpa, level }) {
            Reply::Status(s) => s,
            r => unreachable!("{r:?}"),
        }
    }

    /// Reads `len` bytes at `gpa` (private, or shared with the TD's shared
    /// bit set), within one 4K page.
    ///
    /// # Panics
    ///
    /// If the access crosses a 4K page.
    pub fn read(&mut self, gpa: u64, len: usize) -> Result<Vec<u8>, Exception> {
        assert!(
            (gpa & 0xFFF) + len as u64 <= 0x1000,
            "a guest access stays within one 4K page"
        );
        match self.call(Request::Read { gpa, len }) {
            Reply::Read(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// Writes `data` at `gpa`, within one 4K page.
    ///
    /// # Panics
    ///
    /// If the access crosses a 4K page.
    pub fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Exception> {
        assert!(
            (gpa & 0xFFF) + data.len() as u64 <= 0x1000,
            "a guest access stays within one 4K page"
        );
        match self.call(Request::Write {
            gpa,
            data: data.to_vec(),
        }) {
            Reply::Write(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// TDG.VP.VMCALL with exposure control `control` (GPR mask in bits
    /// 15:0, XMM mask in 31:16) and the guest's registers `regs`. `Ok`
    /// with the registers after the call (the exposed ones as the host
    /// replied, the others as they were); `Err` with the TDCALL's status
    /// when the module refused the control (no exit happened).
    pub fn vmcall(&mut self, control: u64, regs: VmcallRegs) -> Result<VmcallRegs, TdxStatus> {
        match self.call(Request::Vmcall { control, regs }) {
            Reply::Vmcall(r) => r,
            r => unreachable!("{r:?}"),
        }
    }

    /// The GHCI HLT (TDG.VP.VMCALL<Instruction.HLT>, R11 = 12, R12 = 0:
    /// interrupts enabled), exposing R10-R12: the host's TDVMCALL status
    /// (R10).
    pub fn halt(&mut self) -> VmcallStatus {
        let regs = VmcallRegs {
            r11: subfunction::HLT,
            ..VmcallRegs::default()
        };
        match self.vmcall(u64::from(R10 | R11 | R12), regs) {
            Ok(r) => VmcallStatus(r.r10),
            Err(s) => panic!("the module refused a valid TDG.VP.VMCALL control: {s}"),
        }
    }

    /// A standard GHCI TDVMCALL (R10 = 0) of sub-function `subfunction`
    /// (R11) with arguments `args` in R12-R15, exposing R10-R15 as a
    /// Linux guest's `__tdx_hypercall` does for them: the host's status
    /// (R10) and R11-R15 after the call. MapGPA, GetQuote, the instruction
    /// sub-functions (CPUID, HLT, I/O, RDMSR/WRMSR, #VE.RequestMMIO) are
    /// all this call with their sub-function numbers
    /// ([`tdx_types::exit::subfunction`]).
    ///
    /// # Panics
    ///
    /// Never for the control it uses (the module accepts it).
    pub fn tdvmcall(&mut self, subfunction: u64, args: [u64; 4]) -> (VmcallStatus, [u64; 5]) {
        let [r12, r13, r14, r15] = args;
        let regs = VmcallRegs {
            r11: subfunction,
            r12,
            r13,
            r14,
            r15,
            ..VmcallRegs::default()
        };
        match self.vmcall(0xFC00, regs) {
            Ok(r) => (VmcallStatus(r.r10), [r.r11, r.r12, r.r13, r.r14, r.r15]),
            Err(s) => panic!("the module refused a valid TDG.VP.VMCALL control: {s}"),
        }
    }

    /// The GHCI ReportFatalError (R11 = 0x10003, R12 = `code`), repeated
    /// forever, as a guest does: the host sees it at every entry.
    pub fn report_fatal_error(&mut self, code: u64) -> ! {
        loop {
            let regs = VmcallRegs {
                r11: subfunction::REPORT_FATAL_ERROR,
                r12: code,
                ..VmcallRegs::default()
            };
            let _ = self.vmcall(u64::from(R10 | R11 | R12), regs);
        }
    }

    /// A triple fault: the vCPU leaves with TDX_NON_RECOVERABLE_VCPU and
    /// is DISABLED (it never runs again).
    pub fn triple_fault(&mut self) -> ! {
        self.call(Request::TripleFault);
        stop()
    }

    /// An event the module answers by making the whole TD unrecoverable:
    /// here a NOTIFICATION VM exit with "VM context invalid" (bit 0 of its
    /// qualification), which a guest cannot cause at will on real hardware
    /// (the others are VM-entry failures, #MC, corrupted metadata), so
    /// this operation stands for all of them. The vCPU leaves with
    /// `TDX_NON_RECOVERABLE_TD` over exit reason 75 and TDR.FATAL is set
    /// (`src/td_dispatcher/tdx_td_dispatcher.c`, `td_exit.c`): every
    /// later VP.ENTER of the TD is `TDX_TD_FATAL`, and any other vCPU of
    /// the TD in the guest leaves at its next VM exit with
    /// `TDX_NON_RECOVERABLE_TD_NON_ACCESSIBLE`.
    pub fn fatal_td_event(&mut self) -> ! {
        self.call(Request::FatalTdEvent);
        stop()
    }
}

/// Where a stopped guest resumes at the next entry.
#[derive(Debug)]
pub(crate) enum Pending {
    /// Nothing outstanding: the next request comes from the program.
    Next,
    /// A fault-like exit: the request runs again.
    Retry(Request),
    /// A TDG.VP.VMCALL exit: the reply completes it.
    Reply { control: u64, regs: VmcallRegs },
    /// A trap-like asynchronous exit (the host-priority timeout): the
    /// TDCALL completes with this status, bit 60 set to the next entry's
    /// host-recoverability hint.
    Trap(TdxStatus),
    /// The program ended: the vCPU halts at every entry.
    Halted,
}

/// The host end of one vCPU's guest.
#[derive(Debug)]
pub(crate) struct Runner {
    pub(crate) tx: mpsc::Sender<Reply>,
    pub(crate) rx: mpsc::Receiver<Result<Request, String>>,
    pub(crate) pending: Pending,
}

impl Runner {
    /// Starts `program` on its own thread, stopped before its first
    /// operation.
    fn start(tdvpr: u64, program: GuestProgram) -> Self {
        let (req_tx, req_rx) = mpsc::channel();
        let (rep_tx, rep_rx) = mpsc::channel();
        let mut g = Guest {
            tx: req_tx,
            rx: rep_rx,
            ops: 0,
        };
        std::thread::Builder::new()
            .name(format!("tdx-sim guest {tdvpr:#x}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| program(&mut g)));
                match r {
                    Ok(()) => {
                        let _ = g.tx.send(Ok(Request::End));
                    }
                    Err(e) if e.is::<Stopped>() => {}
                    Err(e) => {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        let _ = g.tx.send(Err(msg));
                    }
                }
            })
            .expect("a thread for the guest program");
        Self {
            tx: rep_tx,
            rx: req_rx,
            pending: Pending::Next,
        }
    }
}

/// Every vCPU's guest: programs not started yet, runners of guests that
/// stopped at a TD exit, and the vCPUs now in the guest with their kick.
#[derive(Default)]
pub(crate) struct Guests {
    programs: Mutex<HashMap<u64, GuestProgram>>,
    runners: Mutex<HashMap<u64, Runner>>,
    /// vCPUs in the guest (by TDVPR frame): the LP, and whether a kick is
    /// pending.
    running: Mutex<HashMap<u64, (u32, bool)>>,
}

impl std::fmt::Debug for Guests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guests")
            .field("programs", &lock(&self.programs).len())
            .field("runners", &lock(&self.runners))
            .field("running", &lock(&self.running))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Guests {
    pub(crate) fn set_program(&self, tdvpr: u64, p: GuestProgram) {
        assert!(
            !lock(&self.runners).contains_key(&tdvpr) && !lock(&self.running).contains_key(&tdvpr),
            "tdx-sim: the vCPU at frame {tdvpr:#x} has run its guest already"
        );
        lock(&self.programs).insert(tdvpr, p);
    }

    /// The vCPU's runner, taken for an entry (its program started now if
    /// this is its first; a vCPU with no program halts), and the vCPU
    /// marked as in the guest.
    pub(crate) fn enter(&self, tdvpr: u64, lp: u32) -> Runner {
        let r = lock(&self.runners).remove(&tdvpr).unwrap_or_else(|| {
            let p = lock(&self.programs)
                .remove(&tdvpr)
                .unwrap_or_else(|| Box::new(|_| {}));
            Runner::start(tdvpr, p)
        });
        // Marked at `arrive` already, with any kick that came since.
        lock(&self.running).entry(tdvpr).or_insert((lp, false));
        r
    }

    /// TDH.VP.ENTER is about to count the vCPU in the TD's epoch: from
    /// here until [`depart`](Self::depart) it is in the guest as a host
    /// sees it (KVM's IN_GUEST_MODE spans the whole SEAMCALL), so a kick
    /// now is not lost: it is pending when the guest starts, which then
    /// exits at once, and the kicker waits until the vCPU left the epoch.
    pub(crate) fn arrive(&self, tdvpr: u64, lp: u32) {
        lock(&self.running).insert(tdvpr, (lp, false));
    }

    /// The vCPU left the TD's epoch (its TD exit is complete): it is out of
    /// the guest for a host's kick.
    pub(crate) fn depart(&self, tdvpr: u64) {
        lock(&self.running).remove(&tdvpr);
    }

    /// Takes a pending kick of the vCPU.
    pub(crate) fn take_kick(&self, tdvpr: u64) -> bool {
        lock(&self.running)
            .get_mut(&tdvpr)
            .is_some_and(|(_, k)| std::mem::take(k))
    }

    /// The vCPU left the guest: its runner waits for the next entry.
    /// Still in the guest for a kick until [`depart`](Self::depart).
    pub(crate) fn exit(&self, tdvpr: u64, r: Runner) {
        lock(&self.runners).insert(tdvpr, r);
    }

    /// Whether a kick of the vCPU is pending (the interrupt the module's
    /// `is_interrupt_pending_guest_side` sees), without taking it.
    pub(crate) fn kick_pending(&self, tdvpr: u64) -> bool {
        lock(&self.running).get(&tdvpr).is_some_and(|&(_, k)| k)
    }

    /// Kicks the vCPU if it is in the guest.
    pub(crate) fn kick(&self, tdvpr: u64) -> bool {
        lock(&self.running)
            .get_mut(&tdvpr)
            .map(|(_, k)| *k = true)
            .is_some()
    }

    /// An interrupt for LP `lp` (another thread's `on_cpu` there, as an
    /// IPI): kicks the vCPU in the guest on it, if any.
    pub(crate) fn kick_lp(&self, lp: u32) {
        for (at, k) in lock(&self.running).values_mut() {
            if *at == lp {
                *k = true;
            }
        }
    }

    /// True once the vCPU's guest has started (a program may not be set).
    pub(crate) fn started(&self, tdvpr: u64) -> bool {
        lock(&self.runners).contains_key(&tdvpr) || lock(&self.running).contains_key(&tdvpr)
    }

    pub(crate) fn in_guest(&self, tdvpr: u64) -> bool {
        lock(&self.running).contains_key(&tdvpr)
    }

    /// The vCPU's TDVPR was reclaimed: its guest goes (its thread ends).
    pub(crate) fn remove(&self, tdvpr: u64) {
        lock(&self.programs).remove(&tdvpr);
        lock(&self.runners).remove(&tdvpr);
    }
}
