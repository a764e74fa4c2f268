//! Errors of the TD API.

use core::fmt;

use tdx_types::{Gpa, LeafVersion, Pfn, TdxError, TdxLevel};

use crate::platform::{CpuId, PackageId, PlatformError};

/// What a failed call was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operand {
    /// The TD as a whole (its TDR).
    Tdr,
    /// A guest physical address.
    Gpa(Gpa),
    /// A host frame.
    HostPage(Pfn),
    /// A vCPU, by its position in creation order (TDH.VP.CREATE calls on
    /// this TD, half-built vCPUs included; not the module's VCPU_INDEX).
    Vcpu(usize),
    /// A package (per-package leaves).
    Package(PackageId),
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tdr => f.write_str("the TD"),
            Self::Gpa(g) => write!(f, "GPA {g}"),
            Self::HostPage(p) => write!(f, "PFN {p}"),
            Self::Vcpu(i) => write!(f, "vCPU {i}"),
            Self::Package(p) => write!(f, "{p}"),
        }
    }
}

/// A TD_PARAMS field the module would refuse, found before any SEAMCALL
/// ([`check_params`](super::check_params)).
///
/// Each variant is a rule TDH.MNG.INIT of TDX module 1.5.01 applies
/// (`src/vmm_dispatcher/api_calls/tdh_mng_init.c`); its documentation names
/// the status the module would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// ATTRIBUTES breaks ATTRIBUTES_FIXED0/1
    /// (`TDX_OPERAND_INVALID|ATTRIBUTES`).
    #[error("attributes {0:#x} break ATTRIBUTES_FIXED0/1")]
    Attributes(u64),
    /// A migratable TD asks for DEBUG or PERFMON
    /// (`TDX_OPERAND_INVALID|ATTRIBUTES`).
    #[error("attributes {0:#x}: a migratable TD can be neither a debug TD nor use PERFMON")]
    MigratableAttributes(u64),
    /// XFAM breaks XFAM_FIXED0/1 (`TDX_OPERAND_INVALID|XFAM`). XFAM_FIXED0
    /// already leaves out what the CPU does not support.
    #[error("XFAM {0:#x} breaks XFAM_FIXED0/1")]
    Xfam(u64),
    /// XFAM breaks a rule about features that go together
    /// (`TDX_OPERAND_INVALID|XFAM`).
    #[error("XFAM {xfam:#x}: {rule}")]
    XfamCombination {
        /// The XFAM asked for.
        xfam: u64,
        /// The rule it breaks.
        rule: XfamRule,
    },
    /// max_vcpus is 0 (`TDX_OPERAND_INVALID|MAX_VCPUS`) or above the
    /// module's limit (MAX_VCPUS_PER_TD where the module reports it: module
    /// 1.5.05 refuses more than 576 with the same status).
    #[error("max_vcpus {asked} not in 1..={max}")]
    MaxVcpus {
        /// Asked for.
        asked: u16,
        /// [`SysInfo::vcpu_limit`](crate::SysInfo::vcpu_limit):
        /// MAX_VCPUS_PER_TD, or 0xFFFF where the module has no such field.
        max: u16,
    },
    /// TSC frequency outside 4..=400 (× 25 MHz)
    /// (`TDX_OPERAND_INVALID|TSC_FREQUENCY`).
    #[error("TSC frequency {0} × 25 MHz outside 4..=400")]
    TscFrequency(u16),
    /// Unknown config_flags bits (`TDX_OPERAND_INVALID|EXEC_CONTROLS`).
    #[error("config_flags {0:#x} has unknown bits")]
    ConfigFlags(u64),
    /// TD partitioning (L2 VMs) is not supported by this API yet.
    #[error("{0} L2 VMs: TD partitioning is not supported")]
    L2Vms(u8),
    /// EPTP controls other than write-back with a 4- or 5-level walk (5 if
    /// MAX_GPAW) (`TDX_OPERAND_INVALID|EPTP_CONTROLS`).
    #[error("EPTP controls {0:#x} invalid")]
    Eptp(u64),
    /// A reserved byte (`reserved_0`, `reserved_1`, `reserved_2`, or
    /// `msr_config_ctls` bits 7:1 at byte 19) is not zero
    /// (`TDX_OPERAND_INVALID|RDX`).
    #[error("TD_PARAMS byte {offset} is reserved and must be 0")]
    Reserved {
        /// Byte offset in TD_PARAMS.
        offset: usize,
    },
    /// A CPUID entry the module does not read is not zero: past the
    /// module's NUM_CPUID_CONFIG entries, TD_PARAMS is reserved
    /// (`reserved_3`, `TDX_OPERAND_INVALID|RDX`).
    #[error(
        "CPUID entry {index} is set but the module configures only {count} leaves (the rest of the area is reserved)"
    )]
    CpuidEntryUnused {
        /// The entry.
        index: usize,
        /// The module's NUM_CPUID_CONFIG.
        count: usize,
    },
    /// A CPUID entry sets bits the module does not let the host configure
    /// (`TDX_OPERAND_INVALID|CPUID_CONFIG`, RCX = the leaf and subleaf).
    #[error(
        "CPUID entry {index} ({leaf:#x}/{subleaf:#x}) {register} bits {bits:#x} are not configurable"
    )]
    CpuidBits {
        /// The entry.
        index: usize,
        /// Its leaf.
        leaf: u32,
        /// Its subleaf (`0xFFFF_FFFF` when the leaf has none).
        subleaf: u32,
        /// `"EAX"`, `"EBX"`, `"ECX"` or `"EDX"`.
        register: &'static str,
        /// The bits that are not configurable.
        bits: u32,
    },
    /// Module 1.5.05: the CPUID(0x1F) entries (the TD's topology) are
    /// neither all zero nor levels of increasing type that include CORE
    /// (`TDX_CPUID_LEAF_1F_FORMAT_UNRECOGNIZED`, RCX 0).
    #[error("the CPUID(0x1F) topology is not well formed at sub-leaf {subleaf}")]
    CpuidTopology {
        /// The first sub-leaf the module finds wrong.
        subleaf: u32,
    },
    /// `ia32_arch_capabilities_config` is not zero but `msr_config_ctls`
    /// bit 0 is clear
    /// (`TDX_OPERAND_INVALID|IA32_ARCH_CAPABILITIES_CONFIG`).
    #[error("IA32_ARCH_CAPABILITIES config {0:#x} without msr_config_ctls bit 0")]
    ArchCapabilitiesNotEnabled(u64),
    /// `ia32_arch_capabilities_config` sets bits the module does not let
    /// the host configure
    /// (`TDX_OPERAND_INVALID|IA32_ARCH_CAPABILITIES_CONFIG`).
    #[error("IA32_ARCH_CAPABILITIES config {config:#x}: bits {bits:#x} are not configurable")]
    ArchCapabilities {
        /// The configured value.
        config: u64,
        /// The bits that are not configurable.
        bits: u64,
    },
}

/// What is in the way of a new mapping ([`TdError::Occupied`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Occupant {
    /// A private page is mapped there: the same size, or a larger page
    /// that covers the GPA. Unmap it first (or, for a larger page, demote
    /// it and map into the part).
    Page {
        /// Its first GPA.
        at: Gpa,
        /// Its size.
        size: TdxLevel,
    },
    /// The entry of the size asked for holds an S-EPT table of smaller
    /// pages. Unmap those pages (if any), then remove the table
    /// ([`Td::remove_table`](super::Td::remove_table)), or promote the
    /// pages into one ([`Td::promote`](super::Td::promote)).
    Table {
        /// The first GPA the table covers.
        at: Gpa,
        /// The size of the entry that holds the table (a table of 4K pages
        /// sits in a 2M entry).
        size: TdxLevel,
    },
}

impl fmt::Display for Occupant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Page { at, size } => write!(f, "a {size:?} page is mapped at {at}"),
            Self::Table { at, size } => write!(
                f,
                "the {size:?} entry at {at} holds a table of smaller pages (unmap them, then remove_table)"
            ),
        }
    }
}

/// An XFAM rule about features that go together (`check_xfam`,
/// `src/common/helpers/helpers.c` of TDX module 1.5.01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XfamRule {
    /// AVX-512's opmask state (bit 5) needs AVX (bit 2) (`check_xfam`
    /// tests bit 5 alone; bits 6 and 7 follow it by
    /// [`Self::Avx512Together`]).
    Avx512NeedsAvx,
    /// The three AVX-512 components (bits 7:5) go together.
    Avx512Together,
    /// CET user and supervisor state (bits 12:11) go together.
    CetTogether,
    /// AMX TILECFG and TILEDATA (bits 18:17) go together.
    AmxTogether,
}

impl fmt::Display for XfamRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Avx512NeedsAvx => "AVX-512's opmask (bit 5) needs AVX (bit 2)",
            Self::Avx512Together => "AVX-512's bits 7:5 must be all set or all clear",
            Self::CetTogether => "CET's bits 12:11 must be both set or both clear",
            Self::AmxTogether => "AMX's bits 18:17 must be both set or both clear",
        })
    }
}

/// A TD operation failed.
///
/// Non-exhaustive: new module behaviours add variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TdError {
    /// A SEAMCALL failed with a status that retrying does not change.
    #[error("{error} (on {on})")]
    Seamcall {
        /// The leaf and its status.
        error: TdxError,
        /// What the call was about.
        on: Operand,
    },
    /// The module answered BUSY (a lock another logical processor or a
    /// vCPU in the guest holds), or `TDX_INTERRUPTED_RESTARTABLE` (DEMOTE
    /// or PROMOTE found a host interrupt pending), on every call the
    /// [`RetryPolicy`](crate::retry::RetryPolicy) allowed. Nothing changed;
    /// the same call may succeed later.
    #[error("{error} (on {on}): busy after the retries the policy allows")]
    Busy {
        /// The leaf and its last status (with the operand it could not
        /// lock).
        error: TdxError,
        /// What the call was about.
        on: Operand,
    },
    /// Another thread is changing the entry of this GPA (or a table above
    /// it) in the same TD, or a removal on this TD is waiting for the
    /// S-EPT tree lock and new mappings step aside until it has it.
    /// Nothing changed; the same call may succeed once that thread is
    /// done.
    #[error("GPA {0}: another thread is changing it")]
    InProgress(Gpa),
    /// Another thread is adding or removing the Dynamic PAMT page pair of
    /// the 2 MiB range that starts at this frame (a page of the range is
    /// being given to the module, or the last one left it), for longer
    /// than the [`RetryPolicy`](crate::retry::RetryPolicy) waits. Nothing
    /// changed; the same call may succeed once that thread is done.
    #[error("PAMT pair of the 2 MiB range at PFN {0}: another thread is adding or removing it")]
    PamtInProgress(Pfn),
    /// The global (heap) allocator could not provide memory for the
    /// library's own records. Nothing is lost: the call gave back what it
    /// was given (the TD, the frame) and every page it had taken.
    /// Every heap allocation after bring-up is fallible and ends here
    /// instead of aborting (see the crate's *Allocation* section).
    #[error("no memory for {what}{}", OnSuffix(*on))]
    Alloc {
        /// What it was for.
        what: &'static str,
        /// What the call was about (`None` for [`TdHost::new`](super::TdHost::new),
        /// which concerns no TD).
        on: Option<Operand>,
    },
    /// The platform could not provide a page.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// Every guest KeyID is in use.
    #[error("no free guest KeyID")]
    NoHkid,
    /// TD_PARAMS refused before any SEAMCALL.
    #[error("TD_PARAMS: {0}")]
    Params(ParamsError),
    /// A GPA the API refuses by arithmetic.
    #[error("GPA {gpa}: {why}")]
    Gpa {
        /// The address.
        gpa: Gpa,
        /// Why.
        why: &'static str,
    },
    /// Something is in the way of a new mapping at the GPA: a page (of the
    /// same size, or a larger one that covers it) or an S-EPT table of
    /// smaller pages. Found in the TD's own record, before any SEAMCALL.
    #[error("GPA {gpa}: {by}")]
    Occupied {
        /// The GPA asked for.
        gpa: Gpa,
        /// What is there.
        by: Occupant,
    },
    /// Nothing of that size is mapped at the GPA.
    #[error("no page of that size is mapped at GPA {0}")]
    NotMapped(Gpa),
    /// [`Td::add_image`](super::Td::add_image) was given fewer frames than
    /// the image has pages; refused before any SEAMCALL.
    #[error("the image at GPA {gpa} needs {needed} frames, {given} given")]
    ImageFrames {
        /// Where the image goes.
        gpa: Gpa,
        /// Its pages (4 KiB each, the last one padded).
        needed: usize,
        /// Frames given.
        given: usize,
    },
    /// The CPU does not exist.
    #[error("{0} does not exist")]
    NoSuchCpu(CpuId),
    /// The TD has as many built vCPUs (TDH.VP.INIT done) as its TD_PARAMS
    /// MAX_VCPUS allows; refused before any page moves.
    #[error("the TD already has its {max} vCPUs (TD_PARAMS MAX_VCPUS)")]
    TooManyVcpus {
        /// MAX_VCPUS.
        max: u16,
    },
    /// No built vCPU of this TD has this TDVPR.
    #[error("no vCPU of this TD has TDVPR {0}")]
    UnknownVcpu(Pfn),
    /// A [`Vcpu`](super::Vcpu) handle cannot do this now.
    #[error("vCPU with TDVPR {tdvpr}: {why}")]
    Vcpu {
        /// The vCPU's TDVPR page.
        tdvpr: Pfn,
        /// Why.
        why: &'static str,
    },
    /// The KeyID shift cannot build a keyed address.
    #[error("KeyID shift {0} cannot build a keyed physical address")]
    KeyidShift(u32),
    /// The module answered something the ABI rules out.
    #[error("{leaf}: {what}")]
    Protocol {
        /// The leaf.
        leaf: LeafVersion,
        /// What was wrong.
        what: &'static str,
        /// The GPA, if any.
        gpa: Option<Gpa>,
    },
}

impl TdError {
    /// True for contention that goes away by itself: [`TdError::Busy`],
    /// [`TdError::InProgress`] and [`TdError::PamtInProgress`]. A VMM retries the fault (returns to the
    /// guest, which faults again), as KVM does with `-EBUSY`.
    pub fn is_contention(&self) -> bool {
        matches!(
            self,
            Self::Busy { .. } | Self::InProgress(_) | Self::PamtInProgress(_)
        )
    }
}

/// `" (on X)"`, or nothing.
struct OnSuffix(Option<Operand>);

impl fmt::Display for OnSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(on) => write!(f, " (on {on})"),
            None => Ok(()),
        }
    }
}

/// A failed TD step that hands back what it was given: the TD (to retry or
/// tear down), or a guest frame the module did not take.
pub type TdFailure<T> = crate::Failed<T, TdError>;
