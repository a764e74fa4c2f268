//! TD exits: what TDH.VP.ENTER hands back when the guest stops running,
//! and the guest's requests to the host (TDG.VP.VMCALL, per the GHCI).
//!
//! TDH.VP.ENTER either fails before the guest runs (RAX is an ordinary
//! error status naming what was wrong: the vCPU is associated with another
//! CPU, a lock is busy, the TD is not runnable...) or returns after a TD
//! exit. A TD exit's RAX is a TD-exit status in bits 63:32 (zero for an
//! ordinary exit) over the 32-bit VMX exit reason in bits 31:0, and RCX,
//! RDX, R8 and R9 carry the exit's details. [`TdExit::decode`] tells the
//! two apart and decodes the exit.
//!
//! Facts, from Intel's TDX module (tag `TDX_1.5.01`):
//!
//! - RAX, RCX (exit qualification, bits 33:32 the VM index), RDX (extended
//!   exit qualification), R8 (GPA) and R9 (interruption information) of an
//!   asynchronous exit: `src/td_transitions/td_exit.c`
//!   (`async_tdexit_internal`);
//! - TDG.VP.VMCALL exits (RCX = the guest's register-exposure control):
//!   `src/td_dispatcher/vm_exits/tdg_vp_vmcall.c`;
//! - the exit reasons: `src/common/x86_defs/vmcs_defs.h`; the extended
//!   exit qualification and its ACCEPT details: the same file and
//!   `include/tdx_api_defs.h`; the TD-exit statuses:
//!   `include/auto_gen/tdx_error_codes_defs.h`.
//!
//! The GHCI sub-functions and their registers follow the Guest-Host
//! Communication Interface as Linux's guest (`arch/x86/coco/tdx/tdx.c`)
//! and KVM (`arch/x86/kvm/vmx/tdx.c`) use it.

use core::fmt;

use crate::status::TdxStatus;

/// A VMX basic exit reason (bits 15:0 of the exit reason; Intel SDM
/// Vol. 3, Appendix C). Open: any value survives a round trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct ExitReason(pub u16);

macro_rules! exit_reasons {
    ($( $(#[$meta:meta])* $name:ident = $value:literal, )*) => {
        impl ExitReason {
            $( $(#[$meta])* pub const $name: Self = Self($value); )*

            /// The name of a known reason, as `vmcs_defs.h` spells it
            /// without the `VMEXIT_REASON_` prefix.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }
        }
    };
}

exit_reasons! {
    /// An exception or NMI (the interruption information says which).
    EXCEPTION_OR_NMI = 0,
    /// An external interrupt (the host's kick, a timer, a device).
    EXTERNAL_INTERRUPT = 1,
    /// A triple fault: the vCPU cannot run again.
    TRIPLE_FAULT = 2,
    /// An INIT signal.
    INIT = 3,
    /// An SMI other than an I/O SMI.
    OTHER_SMI = 6,
    /// A task switch.
    TASK_SWITCH = 9,
    /// CPUID (a GHCI instruction sub-function).
    CPUID = 10,
    /// HLT (a GHCI instruction sub-function).
    HLT = 12,
    /// IN/OUT (a GHCI instruction sub-function).
    IO = 30,
    /// RDMSR (a GHCI instruction sub-function).
    RDMSR = 31,
    /// WRMSR (a GHCI instruction sub-function).
    WRMSR = 32,
    /// VM entry failed on guest state (the module's TD-entry XSTATE load).
    FAILED_VMENTER_GS = 33,
    /// VM entry failed loading an MSR.
    FAILED_VMENTER_MSR = 34,
    /// VM entry failed on a machine check.
    FAILED_VMENTER_MC = 41,
    /// An SMI while the CPU was in a C-state.
    C_STATE_SMI = 42,
    /// An EPT violation (also the GHCI MMIO sub-function).
    EPT_VIOLATION = 48,
    /// An EPT misconfiguration (shared GPAs only).
    EPT_MISCONFIG = 49,
    /// A bus lock.
    BUS_LOCK = 74,
    /// A notification VM exit.
    NOTIFICATION = 75,
    /// TDCALL: the guest's TDG.VP.VMCALL.
    TDCALL = 77,
}

impl fmt::Debug for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "ExitReason({})", self.0),
        }
    }
}

/// Bit 26 of the 32-bit exit reason: a bus lock was detected while the
/// guest ran (reported once per logical processor, then cleared:
/// `td_exit.c`).
pub const EXIT_REASON_BUS_LOCK_DETECTED: u32 = 1 << 26;
/// Bit 31 of the 32-bit exit reason: the VM entry failed.
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// The kind of an extended exit qualification (RDX bits 3:0).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct EeqType(pub u8);

impl EeqType {
    /// No extended information.
    pub const NONE: Self = Self(0);
    /// TDG.MEM.PAGE.ACCEPT could not accept: see [`AcceptDetails`].
    pub const ACCEPT: Self = Self(1);
    /// GPA details (L2 VMs).
    pub const GPA_DETAILS: Self = Self(2);
    /// TD entry failed loading an MSR; the info is its index.
    pub const TD_ENTRY_MSR_LOAD_FAILURE: Self = Self(3);
    /// TD entry failed restoring extended state.
    pub const TD_ENTRY_XSTATE_LOAD_FAILURE: Self = Self(4);
    /// A guest write to TD attributes (migration).
    pub const ATTR_WR: Self = Self(5);
    /// The guest touched a page the host added but the guest has not
    /// accepted, with #VE on pending pages disabled
    /// (ATTRIBUTES.SEPT_VE_DISABLE).
    pub const PENDING_EPT_VIOLATION: Self = Self(6);
}

impl fmt::Debug for EeqType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::NONE => "NONE",
            Self::ACCEPT => "ACCEPT",
            Self::GPA_DETAILS => "GPA_DETAILS",
            Self::TD_ENTRY_MSR_LOAD_FAILURE => "TD_ENTRY_MSR_LOAD_FAILURE",
            Self::TD_ENTRY_XSTATE_LOAD_FAILURE => "TD_ENTRY_XSTATE_LOAD_FAILURE",
            Self::ATTR_WR => "ATTR_WR",
            Self::PENDING_EPT_VIOLATION => "PENDING_EPT_VIOLATION",
            _ => return write!(f, "EeqType({})", self.0),
        };
        f.write_str(name)
    }
}

/// The extended exit qualification (RDX of an asynchronous TD exit).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Eeq(pub u64);

impl Eeq {
    /// Bits 3:0.
    pub const fn kind(self) -> EeqType {
        EeqType((self.0 & 0xF) as u8)
    }

    /// Bits 63:32: the kind's information.
    pub const fn info(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The details of a failed TDG.MEM.PAGE.ACCEPT, if this is one.
    pub const fn accept(self) -> Option<AcceptDetails> {
        if self.0 & 0xF == EeqType::ACCEPT.0 as u64 {
            Some(AcceptDetails(self.info()))
        } else {
            None
        }
    }
}

/// Why TDG.MEM.PAGE.ACCEPT made a TD exit instead of accepting: the S-EPT
/// walk for the requested level stopped at an entry the host must change
/// first (map, demote, or unblock). Layout from `tdx_api_defs.h`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AcceptDetails(pub u32);

impl AcceptDetails {
    /// The level the guest asked to accept (0 = 4K, 1 = 2M).
    pub const fn requested_level(self) -> u8 {
        (self.0 & 0x7) as u8
    }

    /// The level of the entry where the walk stopped.
    pub const fn stopped_level(self) -> u8 {
        ((self.0 >> 3) & 0x7) as u8
    }

    /// That entry's public S-EPT state (as in the S-EPT details of host
    /// leaves: 0 FREE, 1 BLOCKED, 2 PENDING, 3 PENDING_BLOCKED, 4 MAPPED,
    /// 5 REMOVED, 0x81 NL_BLOCKED, 0x84 NL_MAPPED).
    pub const fn state(self) -> u8 {
        ((self.0 >> 6) & 0xFF) as u8
    }

    /// True if that entry is a leaf (maps a page).
    pub const fn is_leaf(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// The VM index (0 = the TD itself).
    pub const fn vm(self) -> u8 {
        ((self.0 >> 20) & 0x3) as u8
    }
}

impl fmt::Debug for AcceptDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptDetails")
            .field("requested_level", &self.requested_level())
            .field("stopped_level", &self.stopped_level())
            .field("state", &format_args!("{:#x}", self.state()))
            .field("is_leaf", &self.is_leaf())
            .field("vm", &self.vm())
            .finish()
    }
}

/// The exit qualification of an EPT violation (Intel SDM Vol. 3, "Exit
/// Qualification for EPT Violations"), as the module reports it (bits
/// 12:7 cleared, the VM index in bits 33:32).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct EptViolationQual(pub u64);

impl EptViolationQual {
    /// The access was a data read.
    pub const fn read(self) -> bool {
        self.0 & 1 != 0
    }

    /// The access was a data write.
    pub const fn write(self) -> bool {
        self.0 & 2 != 0
    }

    /// The access was an instruction fetch.
    pub const fn fetch(self) -> bool {
        self.0 & 4 != 0
    }

    /// The GPA was readable (bits 5:3: what the walk allowed).
    pub const fn gpa_readable(self) -> bool {
        self.0 & 8 != 0
    }

    /// The GPA was writable.
    pub const fn gpa_writable(self) -> bool {
        self.0 & 0x10 != 0
    }

    /// The GPA was executable.
    pub const fn gpa_executable(self) -> bool {
        self.0 & 0x20 != 0
    }
}

/// The register-exposure control of a TDG.VP.VMCALL (RCX of the exit):
/// which guest registers the guest passed to the host, and which of them
/// it reads back at the next entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VmcallControl(pub u64);

impl VmcallControl {
    /// Bits 15:0: the general-purpose registers, by index (RAX 0, RCX 1,
    /// RDX 2, RBX 3, RSP 4, RBP 5, RSI 6, RDI 7, R8-R15 8-15). The module
    /// never exposes RAX, RCX or RSP.
    pub const fn gprs(self) -> u16 {
        self.0 as u16
    }

    /// Bits 31:16: the XMM registers.
    pub const fn xmms(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// True if the guest exposed the general-purpose register `index`.
    pub const fn exposes(self, index: u8) -> bool {
        index < 16 && self.gprs() & (1 << index) != 0
    }
}

/// How bad a non-recoverable exit is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Unrecoverable {
    /// This vCPU cannot run again (`TDX_NON_RECOVERABLE_VCPU`); the TD's
    /// other vCPUs can.
    Vcpu,
    /// The TD cannot run again (`TDX_NON_RECOVERABLE_TD`); it can still be
    /// torn down.
    Td,
    /// The TD cannot run again and its memory cannot be read (`..._TD_NON_ACCESSIBLE`,
    /// e.g. a machine check, or any exit of a vCPU of a TD another vCPU
    /// made fatal).
    TdNonAccessible,
    /// The TD ran with a wrong APIC mode (`..._TD_WRONG_APIC_MODE`).
    TdWrongApicMode,
    /// The module's metadata of the TD is corrupted (`..._TD_CORRUPTED_MD`).
    TdCorruptedMetadata,
}

/// TD-exit statuses (RAX bits 63:32 of a TD exit, `tdx_error_codes_defs.h`),
/// as raw values, for decoding.
mod exit_status {
    pub(super) const NONE: u32 = 0;
    pub(super) const NON_RECOVERABLE_VCPU: u32 = 0x4000_0001;
    pub(super) const NON_RECOVERABLE_TD: u32 = 0x6000_0002;
    pub(super) const NON_RECOVERABLE_TD_NON_ACCESSIBLE: u32 = 0x6000_0005;
    pub(super) const NON_RECOVERABLE_TD_WRONG_APIC_MODE: u32 = 0xE000_0007;
    pub(super) const NON_RECOVERABLE_TD_CORRUPTED_MD: u32 = 0x6000_000A;
    pub(super) const HOST_PRIORITY_BUSY_TIMEOUT: u32 = 0x9000_0205;
    pub(super) const TD_EXIT_BEFORE_L2_ENTRY: u32 = 0x0000_1140;
    pub(super) const TD_EXIT_ON_L2_VM_EXIT: u32 = 0x0000_1141;
    pub(super) const TD_EXIT_ON_L2_TO_L1: u32 = 0x0000_1142;
    pub(super) const CROSS_TD_FAULT: u32 = 0x8000_0008;
    pub(super) const CROSS_TD_TRAP: u32 = 0x9000_0009;
}

/// The registers TDH.VP.ENTER returns that describe a TD exit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ExitRegs {
    /// Status over exit reason.
    pub rax: u64,
    /// Exit qualification (a TDG.VP.VMCALL: its exposure control).
    pub rcx: u64,
    /// Extended exit qualification.
    pub rdx: u64,
    /// GPA.
    pub r8: u64,
    /// Interruption information.
    pub r9: u64,
}

/// A TD exit, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum TdExit {
    /// The guest called TDG.VP.VMCALL: a request to the host, whose
    /// registers are those `control` exposes (decode them with
    /// [`VmcallRequest::decode`]). The guest resumes after the call at the
    /// next entry, with the exposed registers the host passes then.
    Vmcall {
        /// Which registers the guest exposed.
        control: VmcallControl,
    },
    /// An EPT violation the host must handle. On a private GPA: the page is
    /// not mapped (or not usable: blocked, or pending with #VE disabled;
    /// see `eeq`), or TDG.MEM.PAGE.ACCEPT stopped ([`Eeq::accept`]). On a
    /// shared GPA (the shared bit set in `gpa`): an ordinary EPT fault of
    /// the VMM's shared EPT (MMIO or shared memory). The guest repeats the
    /// access at the next entry.
    ///
    /// Resolve a private fault before entering again, retrying a mapping
    /// that met contention rather than re-entering: the module counts the
    /// private EPT violations at one guest RIP with no progress in between
    /// (the zero-step mitigation, `STEPPING_EPF_THRESHOLD` = 6 in Intel's
    /// `src/td_transitions/td_exit_stepping.h`), and past that count each
    /// entry first checks the GPAs that faulted: while one still does not
    /// translate (unmapped, blocked, or mapped but not yet accepted), the
    /// entry ends in an emulated EPT violation for it without running the
    /// guest, so a page the guest must accept keeps the vCPU out for good.
    EptViolation {
        /// The GPA (4 KiB aligned, shared bit as the guest used it).
        gpa: u64,
        /// The access and what the walk allowed.
        qualification: EptViolationQual,
        /// Extended information.
        eeq: Eeq,
    },
    /// An EPT misconfiguration of a shared GPA.
    EptMisconfig {
        /// The GPA (4 KiB aligned).
        gpa: u64,
    },
    /// An asynchronous event made the vCPU leave the guest (an external
    /// interrupt such as the host's kick, an NMI, an SMI, INIT, a bus lock,
    /// a notification, a task switch); the host handles it or nothing and
    /// enters again.
    Async {
        /// The exit reason.
        reason: ExitReason,
        /// The exit qualification.
        qualification: u64,
        /// The VM-exit interruption information.
        interruption: u32,
    },
    /// A guest TDCALL met a lock the host holds with priority for longer
    /// than the TD's host-priority timeout: the host should finish (or
    /// stop retrying) what it does on the TD's S-EPT and enter again. The
    /// guest's call returns busy.
    HostPriorityBusyTimeout,
    /// The vCPU or the whole TD cannot run again.
    Unrecoverable {
        /// Which.
        what: Unrecoverable,
        /// The exit reason that led to it.
        reason: ExitReason,
        /// The exit qualification.
        qualification: u64,
    },
    /// Any other exit (those of debug TDs, L2 VMs, service TDs), raw.
    Other {
        /// The whole RAX.
        status: TdxStatus,
        /// The exit reason.
        reason: ExitReason,
        /// The registers.
        regs: ExitRegs,
    },
}

impl TdExit {
    /// Decodes what TDH.VP.ENTER returned: `Ok` for a TD exit, `Err` with
    /// the status if the entry failed before the guest ran (nothing in the
    /// guest changed; the other registers are the caller's).
    pub fn decode(regs: ExitRegs) -> Result<Self, TdxStatus> {
        let status = (regs.rax >> 32) as u32;
        let raw_reason = regs.rax as u32;
        let reason = ExitReason(raw_reason as u16);
        let unrecoverable = |what| Self::Unrecoverable {
            what,
            reason,
            qualification: regs.rcx,
        };
        match status {
            exit_status::NONE => Ok(Self::ordinary(reason, regs)),
            exit_status::NON_RECOVERABLE_VCPU => Ok(unrecoverable(Unrecoverable::Vcpu)),
            exit_status::NON_RECOVERABLE_TD => Ok(unrecoverable(Unrecoverable::Td)),
            exit_status::NON_RECOVERABLE_TD_NON_ACCESSIBLE => {
                Ok(unrecoverable(Unrecoverable::TdNonAccessible))
            }
            exit_status::NON_RECOVERABLE_TD_WRONG_APIC_MODE => {
                Ok(unrecoverable(Unrecoverable::TdWrongApicMode))
            }
            exit_status::NON_RECOVERABLE_TD_CORRUPTED_MD => {
                Ok(unrecoverable(Unrecoverable::TdCorruptedMetadata))
            }
            exit_status::HOST_PRIORITY_BUSY_TIMEOUT => Ok(Self::HostPriorityBusyTimeout),
            exit_status::TD_EXIT_BEFORE_L2_ENTRY
            | exit_status::TD_EXIT_ON_L2_VM_EXIT
            | exit_status::TD_EXIT_ON_L2_TO_L1
            | exit_status::CROSS_TD_FAULT
            | exit_status::CROSS_TD_TRAP => Ok(Self::Other {
                status: TdxStatus::from_raw(regs.rax),
                reason,
                regs,
            }),
            _ => Err(TdxStatus::from_raw(regs.rax)),
        }
    }

    fn ordinary(reason: ExitReason, regs: ExitRegs) -> Self {
        match reason {
            ExitReason::TDCALL => Self::Vmcall {
                control: VmcallControl(regs.rcx),
            },
            ExitReason::EPT_VIOLATION => Self::EptViolation {
                gpa: regs.r8 & !0xFFF,
                qualification: EptViolationQual(regs.rcx),
                eeq: Eeq(regs.rdx),
            },
            ExitReason::EPT_MISCONFIG => Self::EptMisconfig {
                gpa: regs.r8 & !0xFFF,
            },
            ExitReason::EXCEPTION_OR_NMI
            | ExitReason::EXTERNAL_INTERRUPT
            | ExitReason::INIT
            | ExitReason::OTHER_SMI
            | ExitReason::TASK_SWITCH
            | ExitReason::C_STATE_SMI
            | ExitReason::BUS_LOCK
            | ExitReason::NOTIFICATION => Self::Async {
                reason,
                qualification: regs.rcx,
                interruption: regs.r9 as u32,
            },
            _ => Self::Other {
                status: TdxStatus::from_raw(regs.rax),
                reason,
                regs,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// TDG.VP.VMCALL per the GHCI
// ---------------------------------------------------------------------------

/// The status the host returns to a TDG.VP.VMCALL in R10 (GHCI; Linux
/// `TDVMCALL_STATUS_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct VmcallStatus(pub u64);

impl VmcallStatus {
    /// Done.
    pub const SUCCESS: Self = Self(0);
    /// Call again (MapGPA: from the GPA in R11).
    pub const RETRY: Self = Self(1);
    /// An operand is invalid.
    pub const INVALID_OPERAND: Self = Self(0x8000_0000_0000_0000);
    /// A GPA or size is not aligned.
    pub const ALIGN_ERROR: Self = Self(0x8000_0000_0000_0002);
    /// The host does not implement this sub-function.
    pub const SUBFUNC_UNSUPPORTED: Self = Self(0x8000_0000_0000_0003);
}

impl fmt::Debug for VmcallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Self::SUCCESS => "SUCCESS",
            Self::RETRY => "RETRY",
            Self::INVALID_OPERAND => "INVALID_OPERAND",
            Self::ALIGN_ERROR => "ALIGN_ERROR",
            Self::SUBFUNC_UNSUPPORTED => "SUBFUNC_UNSUPPORTED",
            _ => return write!(f, "VmcallStatus({:#x})", self.0),
        };
        f.write_str(name)
    }
}

/// GHCI sub-function numbers (R11 of a standard TDG.VP.VMCALL, R10 = 0).
/// The instruction sub-functions use the VMX exit reason of the
/// instruction; the others are numbered from 0x10000.
pub mod subfunction {
    /// GetTdVmCallInfo.
    pub const GET_TD_VM_CALL_INFO: u64 = 0x10000;
    /// MapGPA: convert a range between private and shared.
    pub const MAP_GPA: u64 = 0x10001;
    /// GetQuote: ask the host for a quote of a TDREPORT.
    pub const GET_QUOTE: u64 = 0x10002;
    /// ReportFatalError.
    pub const REPORT_FATAL_ERROR: u64 = 0x10003;
    /// SetupEventNotifyInterrupt.
    pub const SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;
    /// Instruction.CPUID.
    pub const CPUID: u64 = 10;
    /// Instruction.HLT.
    pub const HLT: u64 = 12;
    /// Instruction.IO.
    pub const IO: u64 = 30;
    /// Instruction.RDMSR.
    pub const RDMSR: u64 = 31;
    /// Instruction.WRMSR.
    pub const WRMSR: u64 = 32;
    /// #VE.RequestMMIO.
    pub const MMIO: u64 = 48;
}

/// The guest's general-purpose registers a TDG.VP.VMCALL may expose, as
/// TDH.VP.ENTER returns them (an unexposed one reads as 0).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
#[allow(missing_docs)]
pub struct VmcallRegs {
    pub rdx: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// Register indices in [`VmcallControl`].
const RDX: u8 = 2;
const RBX: u8 = 3;
const RSI: u8 = 6;
const RDI: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;
const R10: u8 = 10;
const R11: u8 = 11;
const R12: u8 = 12;
const R13: u8 = 13;
const R14: u8 = 14;
const R15: u8 = 15;

/// A TDG.VP.VMCALL request, decoded per the GHCI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum VmcallRequest {
    /// Convert `[gpa, gpa + size)` to shared (the GPA has the shared bit
    /// set) or to private (it has not). Reply SUCCESS, or RETRY with the
    /// GPA to continue from in R11.
    MapGpa {
        /// The first GPA, shared bit as the guest passed it.
        gpa: u64,
        /// Bytes.
        size: u64,
    },
    /// Produce a quote for the TDREPORT in the shared buffer at `gpa`.
    GetQuote {
        /// The buffer (a shared GPA).
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The guest reports a fatal error and stops.
    ReportFatalError {
        /// The error code (0: a panic).
        code: u64,
        /// Up to 64 bytes of message, from R14, R15, RBX, RDI, RSI, R8, R9
        /// and RDX in that order (bytes of unexposed registers are zero).
        message: [u8; 64],
    },
    /// Asks the host to notify the guest with interrupt `vector`.
    SetupEventNotifyInterrupt {
        /// The vector.
        vector: u64,
    },
    /// Asks which TDVMCALLs the host supports (`leaf` 0: the standard set).
    GetTdVmCallInfo {
        /// The leaf asked about.
        leaf: u64,
    },
    /// CPUID the guest could not run itself. Reply EAX, EBX, ECX, EDX in
    /// R12-R15.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
    },
    /// HLT: the vCPU has nothing to do until an interrupt.
    Hlt {
        /// The guest has interrupts blocked (it only wants to be woken by
        /// one it has not blocked).
        interrupts_blocked: bool,
    },
    /// Port I/O. Reply (for an input) the value in R11.
    Io {
        /// 1, 2 or 4 bytes (other values: reply INVALID_OPERAND).
        size: u64,
        /// An OUT (else an IN).
        write: bool,
        /// The port.
        port: u16,
        /// The value of an OUT.
        value: u64,
    },
    /// RDMSR. Reply EDX:EAX in R11.
    Rdmsr {
        /// The MSR.
        index: u32,
    },
    /// WRMSR.
    Wrmsr {
        /// The MSR.
        index: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// A memory access to a shared GPA the VMM emulates (MMIO). Reply (for
    /// a read) the value in R11.
    Mmio {
        /// 1, 2, 4 or 8 bytes (other values: reply INVALID_OPERAND).
        size: u64,
        /// A write (else a read).
        write: bool,
        /// The GPA (must be shared).
        gpa: u64,
        /// The value of a write.
        value: u64,
    },
    /// A standard call with a sub-function this crate does not know.
    Unknown {
        /// R11.
        subfunction: u64,
    },
    /// A vendor-specific call (R10 ≠ 0; KVM: a hypercall with number R10
    /// and arguments R11-R14).
    Vendor {
        /// R10.
        r10: u64,
    },
}

/// Why a TDG.VP.VMCALL could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum VmcallError {
    /// The guest did not expose a register the request needs (index as in
    /// [`VmcallControl`]). Reply INVALID_OPERAND.
    NotExposed(u8),
}

impl fmt::Display for VmcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotExposed(r) => write!(
                f,
                "the guest did not expose register {r} that the TDVMCALL needs"
            ),
        }
    }
}

impl VmcallRequest {
    /// Decodes a TDG.VP.VMCALL from its exposure control and registers.
    pub fn decode(control: VmcallControl, r: &VmcallRegs) -> Result<Self, VmcallError> {
        let need = |idx: u8, v: u64| {
            if control.exposes(idx) {
                Ok(v)
            } else {
                Err(VmcallError::NotExposed(idx))
            }
        };
        let r10 = need(R10, r.r10)?;
        if r10 != 0 {
            return Ok(Self::Vendor { r10 });
        }
        let sub = need(R11, r.r11)?;
        Ok(match sub {
            subfunction::MAP_GPA => Self::MapGpa {
                gpa: need(R12, r.r12)?,
                size: need(R13, r.r13)?,
            },
            subfunction::GET_QUOTE => Self::GetQuote {
                gpa: need(R12, r.r12)?,
                size: need(R13, r.r13)?,
            },
            subfunction::REPORT_FATAL_ERROR => {
                let code = need(R12, r.r12)?;
                let mut message = [0u8; 64];
                let parts = [
                    (R14, r.r14),
                    (R15, r.r15),
                    (RBX, r.rbx),
                    (RDI, r.rdi),
                    (RSI, r.rsi),
                    (R8, r.r8),
                    (R9, r.r9),
                    (RDX, r.rdx),
                ];
                for (chunk, (idx, v)) in message.chunks_exact_mut(8).zip(parts) {
                    if control.exposes(idx) {
                        chunk.copy_from_slice(&v.to_le_bytes());
                    }
                }
                Self::ReportFatalError { code, message }
            }
            subfunction::SETUP_EVENT_NOTIFY_INTERRUPT => Self::SetupEventNotifyInterrupt {
                vector: need(R12, r.r12)?,
            },
            subfunction::GET_TD_VM_CALL_INFO => Self::GetTdVmCallInfo {
                leaf: need(R12, r.r12)?,
            },
            subfunction::CPUID => Self::Cpuid {
                leaf: need(R12, r.r12)? as u32,
                subleaf: need(R13, r.r13)? as u32,
            },
            subfunction::HLT => Self::Hlt {
                interrupts_blocked: control.exposes(R12) && r.r12 != 0,
            },
            subfunction::IO => {
                let write = need(R13, r.r13)? != 0;
                Self::Io {
                    size: need(R12, r.r12)?,
                    write,
                    port: need(R14, r.r14)? as u16,
                    value: if write { need(R15, r.r15)? } else { 0 },
                }
            }
            subfunction::RDMSR => Self::Rdmsr {
                index: need(R12, r.r12)? as u32,
            },
            subfunction::WRMSR => Self::Wrmsr {
                index: need(R12, r.r12)? as u32,
                value: need(R13, r.r13)?,
            },
            subfunction::MMIO => {
                let write = need(R13, r.r13)? != 0;
                Self::Mmio {
                    size: need(R12, r.r12)?,
                    write,
                    gpa: need(R14, r.r14)?,
                    value: if write { need(R15, r.r15)? } else { 0 },
                }
            }
            subfunction => Self::Unknown { subfunction },
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::ToString};

    use super::*;

    fn exit(rax: u64, rcx: u64, rdx: u64, r8: u64, r9: u64) -> Result<TdExit, TdxStatus> {
        TdExit::decode(ExitRegs {
            rax,
            rcx,
            rdx,
            r8,
            r9,
        })
    }

    #[test]
    fn entry_failures_are_not_exits() {
        // VCPU_ASSOCIATED, OPERAND_BUSY|RCX, OP_STATE_INCORRECT, TD_FATAL.
        for raw in [
            0x8000_0701_0000_0000,
            0x8000_0200_0000_0001,
            0xC000_0608_0000_0000,
            0xE000_0604_0000_0000,
        ] {
            assert_eq!(exit(raw, 1, 2, 3, 4), Err(TdxStatus::from_raw(raw)));
        }
    }

    #[test]
    fn a_vmcall_exit_carries_its_control() {
        // Reason 77 with the bus-lock bit; RCX exposes RDX, RBX, RSI, RDI,
        // R8-R15 (Linux's mask 0xFFCC).
        let e = exit(
            77 | u64::from(EXIT_REASON_BUS_LOCK_DETECTED),
            0xFFCC,
            0,
            0,
            0,
        )
        .unwrap();
        let TdExit::Vmcall { control } = e else {
            panic!("{e:?}")
        };
        assert_eq!(control.gprs(), 0xFFCC);
        assert!(control.exposes(12) && !control.exposes(1) && !control.exposes(16));
    }

    #[test]
    fn an_ept_violation_on_a_private_gpa_with_accept_details() {
        // ACCEPT of a 4K page inside a 2M PENDING leaf: requested 0,
        // stopped at level 1, state PENDING (2), a leaf.
        let info: u64 = (1 << 3) | (2 << 6) | (1 << 14);
        let e = exit(48, 0x1 | 0x8, 1 | (info << 32), 0x1_2345_6789, 0).unwrap();
        let TdExit::EptViolation {
            gpa,
            qualification,
            eeq,
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(gpa, 0x1_2345_6000);
        assert!(qualification.read() && qualification.gpa_readable() && !qualification.write());
        let a = eeq.accept().unwrap();
        assert_eq!(
            (
                a.requested_level(),
                a.stopped_level(),
                a.state(),
                a.is_leaf(),
                a.vm()
            ),
            (0, 1, 2, true, 0)
        );
        // A pending-page violation is not an ACCEPT.
        assert_eq!(Eeq(6).kind(), EeqType::PENDING_EPT_VIOLATION);
        assert!(Eeq(6).accept().is_none());
    }

    #[test]
    fn asynchronous_and_unrecoverable_exits() {
        assert_eq!(
            exit(1, 0, 0, 0, 0x8000_00EC),
            Ok(TdExit::Async {
                reason: ExitReason::EXTERNAL_INTERRUPT,
                qualification: 0,
                interruption: 0x8000_00EC
            })
        );
        assert_eq!(
            exit(0x9000_0205_0000_0000, 0, 0, 0, 0),
            Ok(TdExit::HostPriorityBusyTimeout)
        );
        assert_eq!(
            exit(0x4000_0001_0000_0002, 0, 0, 0, 0),
            Ok(TdExit::Unrecoverable {
                what: Unrecoverable::Vcpu,
                reason: ExitReason::TRIPLE_FAULT,
                qualification: 0
            })
        );
        assert!(matches!(
            exit(0x6000_0005_0000_0001, 0, 0, 0, 0),
            Ok(TdExit::Unrecoverable {
                what: Unrecoverable::TdNonAccessible,
                ..
            })
        ));
        // A debug TD's exception exit is passed through raw.
        assert!(matches!(
            exit(28, 0x10, 0, 0, 0),
            Ok(TdExit::Other {
                reason: ExitReason(28),
                ..
            })
        ));
        assert_eq!(format!("{:?}", ExitReason::EPT_VIOLATION), "EPT_VIOLATION");
        assert_eq!(format!("{:?}", ExitReason(200)), "ExitReason(200)");
    }

    const ALL: VmcallControl = VmcallControl(0xFFCC);

    fn regs(r10: u64, r11: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> VmcallRegs {
        VmcallRegs {
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            ..VmcallRegs::default()
        }
    }

    #[test]
    fn ghci_requests_decode_with_their_registers() {
        let d = |r: VmcallRegs| VmcallRequest::decode(ALL, &r).unwrap();
        assert_eq!(
            d(regs(0, 0x10001, 0x8000_0000_0000, 0x20_0000, 0, 0)),
            VmcallRequest::MapGpa {
                gpa: 0x8000_0000_0000,
                size: 0x20_0000
            }
        );
        assert_eq!(
            d(regs(0, 0x10002, 0x1000, 0x4000, 0, 0)),
            VmcallRequest::GetQuote {
                gpa: 0x1000,
                size: 0x4000
            }
        );
        assert_eq!(
            d(regs(0, 10, 0x4000_0000, 1, 0, 0)),
            VmcallRequest::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 1
            }
        );
        assert_eq!(
            d(regs(0, 30, 1, 1, 0x3F8, 0x41)),
            VmcallRequest::Io {
                size: 1,
                write: true,
                port: 0x3F8,
                value: 0x41
            }
        );
        assert_eq!(
            d(regs(0, 30, 4, 0, 0xCF8, 0x99)),
            VmcallRequest::Io {
                size: 4,
                write: false,
                port: 0xCF8,
                value: 0
            }
        );
        assert_eq!(
            d(regs(0, 31, 0x1B, 0, 0, 0)),
            VmcallRequest::Rdmsr { index: 0x1B }
        );
        assert_eq!(
            d(regs(0, 32, 0x6E0, 0x1234, 0, 0)),
            VmcallRequest::Wrmsr {
                index: 0x6E0,
                value: 0x1234
            }
        );
        assert_eq!(
            d(regs(0, 48, 8, 1, 0xFEC0_0000, 7)),
            VmcallRequest::Mmio {
                size: 8,
                write: true,
                gpa: 0xFEC0_0000,
                value: 7
            }
        );
        assert_eq!(
            d(regs(0, 12, 1, 0, 0, 0)),
            VmcallRequest::Hlt {
                interrupts_blocked: true
            }
        );
        assert_eq!(
            d(regs(0, 0x10004, 0xF3, 0, 0, 0)),
            VmcallRequest::SetupEventNotifyInterrupt { vector: 0xF3 }
        );
        assert_eq!(
            d(regs(0, 0x10000, 0, 0, 0, 0)),
            VmcallRequest::GetTdVmCallInfo { leaf: 0 }
        );
        assert_eq!(
            d(regs(0, 0x12345, 0, 0, 0, 0)),
            VmcallRequest::Unknown {
                subfunction: 0x12345
            }
        );
        assert_eq!(d(regs(5, 1, 2, 3, 4, 0)), VmcallRequest::Vendor { r10: 5 });
    }

    #[test]
    fn a_fatal_error_report_carries_its_message_in_register_order() {
        let mut r = regs(0, 0x10003, 0, 0, 0, 0);
        let text = *b"panic: out of memory in the guest, at the end of its 64 bytes..!";
        let word = |i: usize| u64::from_le_bytes(text[i * 8..i * 8 + 8].try_into().unwrap());
        (r.r14, r.r15, r.rbx, r.rdi, r.rsi, r.r8, r.r9, r.rdx) = (
            word(0),
            word(1),
            word(2),
            word(3),
            word(4),
            word(5),
            word(6),
            word(7),
        );
        let VmcallRequest::ReportFatalError { code, message } =
            VmcallRequest::decode(ALL, &r).unwrap()
        else {
            panic!()
        };
        assert_eq!((code, message), (0, text));
        // With only R10-R15 exposed, the message keeps R14 and R15 and
        // zeros for the rest.
        let VmcallRequest::ReportFatalError { message, .. } =
            VmcallRequest::decode(VmcallControl(0xFC00), &r).unwrap()
        else {
            panic!()
        };
        assert_eq!(&message[..16], &text[..16]);
        assert!(message[16..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_register_the_request_needs_must_be_exposed() {
        // MapGPA without R13 exposed.
        let c = VmcallControl(0xFFCC & !(1 << 13));
        assert_eq!(
            VmcallRequest::decode(c, &regs(0, 0x10001, 0x1000, 0x1000, 0, 0)),
            Err(VmcallError::NotExposed(13))
        );
        // Nothing exposed: not even R10.
        assert_eq!(
            VmcallRequest::decode(VmcallControl(0), &regs(0, 0x10001, 0, 0, 0, 0)),
            Err(VmcallError::NotExposed(10))
        );
        assert_eq!(
            VmcallError::NotExposed(13).to_string(),
            "the guest did not expose register 13 that the TDVMCALL needs"
        );
    }

    proptest::proptest! {

        #![proptest_config(crate::proptest_config())]
        /// Any registers decode without a panic; an entry failure keeps its
        /// whole status, and an exit its reason.
        #[test]
        fn any_registers_decode(rax: u64, rcx: u64, rdx: u64, r8: u64, r9: u64,
                                gprs: [u64; 12], control: u64) {
            match exit(rax, rcx, rdx, r8, r9) {
                Err(s) => proptest::prop_assert_eq!(s.raw(), rax),
                Ok(TdExit::Vmcall { control: c }) => proptest::prop_assert_eq!(c.0, rcx),
                Ok(TdExit::EptViolation { gpa, .. } | TdExit::EptMisconfig { gpa }) => {
                    proptest::prop_assert_eq!(gpa, r8 & !0xFFF)
                }
                Ok(_) => {}
            }
            let [rdx, rbx, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = gprs;
            let r = VmcallRegs { rdx, rbx, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15 };
            let _ = VmcallRequest::decode(VmcallControl(control), &r);
        }
    }
}
