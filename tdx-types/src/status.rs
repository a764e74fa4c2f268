//! SEAMCALL completion status (RAX on return), its decoding, and [`TdxError`].
//!
//! Layout of the 64-bit status (`api_error_code_t` in the TDX module):
//!
//! | bits  | field |
//! |-------|-------|
//! | 63    | error |
//! | 62    | non-recoverable |
//! | 61    | fatal |
//! | 60    | host recoverability hint |
//! | 59:48 | reserved |
//! | 47:40 | class (0xFF is never used by the module; Linux uses it for software codes) |
//! | 39:32 | details L1 (the code within its class) |
//! | 31:0  | operand ID, or "details L2" (TDH.SYS.CONFIG packs TDMR / area / level bytes here) |
//!
//! A status whose error bit is clear is **not** an error, even when it is not
//! zero: `TDX_KEY_CONFIGURED`, `TDX_TDMR_ALREADY_INITIALIZED`,
//! `TDX_NO_HKID_READY_TO_WBCACHE` and friends report that there was nothing
//! left to do. [`TdxStatus::into_result`] keeps them on the `Ok` side.
//!
//! [`TdxStatus`] is an open type: a module newer than this crate may return a
//! code we have no name for, and it keeps its raw value and decodes its
//! fields like any other.
//!
//! Where Linux and the TDX module 1.5 source disagree on a value
//! (`TDX_NON_RECOVERABLE_TD`, `TDX_NON_RECOVERABLE_TD_WRONG_APIC_MODE`), the
//! constant has the module's value and the Linux value is kept beside it
//! with a `LINUX_` prefix; both decode to the same name, since they differ
//! only in the flag bits.

use core::fmt;

use crate::leaf::LeafVersion;

/// Mask of the bits Linux compares when it matches a status against a named
/// code (`TDX_SEAMCALL_STATUS_MASK`): everything but the operand/details.
pub const STATUS_CODE_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// Bit 63 of a status: the call failed (Linux `TDX_ERROR`).
pub const ERROR_BIT: u64 = 1 << 63;
/// Bit 62 of a status: not recoverable (Linux `TDX_NON_RECOVERABLE`).
pub const NON_RECOVERABLE_BIT: u64 = 1 << 62;
/// Bit 61 of a status: fatal.
pub const FATAL_BIT: u64 = 1 << 61;
/// Bit 60 of a status: the host may recover.
pub const RECOVERABILITY_HINT_BIT: u64 = 1 << 60;

/// The class Linux reserves for statuses it makes up itself (bits 47:40).
pub const SW_ERROR_CLASS: u8 = 0xFF;

/// The status a SEAMCALL returned in RAX.
///
/// # Examples
///
/// ```
/// use tdx_types::{TdxStatus, OperandId, StatusDetail, ErrorKind};
///
/// let s = TdxStatus::from_raw(0x8000_0200_0000_0001);
/// assert!(s.is_error());
/// assert_eq!(s.code(), TdxStatus::OPERAND_BUSY);
/// assert_eq!(s.name(), Some("TDX_OPERAND_BUSY"));
/// assert_eq!(s.detail(), StatusDetail::Operand(OperandId::RCX));
/// assert_eq!(s.kind(), Some(ErrorKind::Busy));
/// assert_eq!(s.to_string(), "TDX_OPERAND_BUSY (0x8000020000000001), operand RCX");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct TdxStatus(u64);

macro_rules! status_codes {
    ($( $(#[$meta:meta])* $name:ident = $value:literal, )*) => {
        impl TdxStatus {
            $( $(#[$meta])* pub const $name: Self = Self($value); )*
        }

        /// Every named status code (module, Linux, and Linux-synthesized),
        /// with its name as Linux and the module spell it.
        pub const NAMED_STATUSES: &[(TdxStatus, &str)] = &[
            $( (TdxStatus::$name, concat!("TDX_", stringify!($name))), )*
        ];
    };
}

status_codes! {
    /// The leaf completed.
    SUCCESS = 0x0000_0000_0000_0000,
    /// The vCPU can no longer run (returned by TDH.VP.ENTER).
    NON_RECOVERABLE_VCPU = 0x4000_0001_0000_0000,
    /// The TD can no longer run. Module 1.5 value (fatal bit set); Linux
    /// names [`TdxStatus::LINUX_NON_RECOVERABLE_TD`] instead.
    NON_RECOVERABLE_TD = 0x6000_0002_0000_0000,
    /// The TD can no longer run and its memory cannot be accessed.
    NON_RECOVERABLE_TD_NON_ACCESSIBLE = 0x6000_0005_0000_0000,
    /// The TD used a wrong APIC mode. Module 1.5 value (error, fatal);
    /// Linux names [`TdxStatus::LINUX_NON_RECOVERABLE_TD_WRONG_APIC_MODE`].
    NON_RECOVERABLE_TD_WRONG_APIC_MODE = 0xE000_0007_0000_0000,
    /// The leaf was interrupted and saved its progress; call it again.
    INTERRUPTED_RESUMABLE = 0x8000_0003_0000_0000,
    /// A host interrupt was pending: the leaf stopped before changing
    /// anything and restored RCX/RDX to their inputs; issue the same call
    /// again (TDH.MEM.PAGE.DEMOTE and PROMOTE of module 1.5,
    /// `tdh_mem_page_demote.c`, `tdh_mem_page_promote.c`).
    INTERRUPTED_RESTARTABLE = 0x8000_0004_0000_0000,
    /// An operand is invalid; the operand ID names it.
    OPERAND_INVALID = 0xC000_0100_0000_0000,
    /// An address operand is outside every initialized TDMR block.
    OPERAND_ADDR_RANGE_ERROR = 0xC000_0101_0000_0000,
    /// A lock on an operand is held by someone else; retry.
    OPERAND_BUSY = 0x8000_0200_0000_0000,
    /// TDH.MEM.TRACK: a logical processor still runs the TD in the previous epoch.
    PREVIOUS_TLB_EPOCH_BUSY = 0x8000_0201_0000_0000,
    /// The module-global lock is held; retry.
    SYS_BUSY = 0x8000_0202_0000_0000,
    /// The random number generator ran dry; retry a bounded number of times.
    RND_NO_ENTROPY = 0x8000_0203_0000_0000,
    /// A guest-side call backed off because the host holds priority on a lock.
    OPERAND_BUSY_HOST_PRIORITY = 0x8000_0204_0000_0000,
    /// A page operand has the wrong PAMT type or size.
    PAGE_METADATA_INCORRECT = 0xC000_0300_0000_0000,
    /// The page is already free (a warning).
    PAGE_ALREADY_FREE = 0x0000_0301_0000_0000,
    /// The page is not owned by this TD.
    PAGE_NOT_OWNED_BY_TD = 0xC000_0302_0000_0000,
    /// The page is not free.
    PAGE_NOT_FREE = 0xC000_0303_0000_0000,
    /// Dynamic PAMT (Intel TDX module 1.5.16+, `tdx_error_codes_defs.h`):
    /// TDH.PHYMEM.PAMT.ADD of a 2 MiB range that already has a pair or is a
    /// 2M/1G TD page.
    HPA_RANGE_NOT_FREE = 0xC000_0304_0000_0000,
    /// Dynamic PAMT: TDH.PHYMEM.PAMT.REMOVE of a 2 MiB range that has no
    /// PAMT page pair.
    NO_PAMT_PAGE_PAIR = 0xC000_0305_0000_0000,
    /// Dynamic PAMT: TDH.PHYMEM.PAMT.REMOVE found a 4K entry in use in the
    /// pair; the operand field is the page index (0 or 1), not a register.
    PAMT_PAGE_NOT_EMPTY = 0xC000_0306_0000_0000,
    /// Dynamic PAMT: TDH.IMPORT.MEM met a page whose range has no pair
    /// (migration only); add the pair and call again.
    INTERRUPTED_PAMT = 0x8000_0307_0000_0000,
    /// Dynamic PAMT: a 4K page handed to the module lies in a 2 MiB range
    /// with no PAMT page pair; add one (TDH.PHYMEM.PAMT.ADD) and call
    /// again. Recoverable; the operand is the page's register.
    MISSING_PAMT_PAGE_PAIR = 0x8000_0308_0000_0000,
    /// A guest TDCALL kept meeting a lock the host holds with priority for
    /// longer than the TD's host-priority timeout: a TD exit of
    /// TDH.VP.ENTER (bit 60 marks it trap-like).
    HOST_PRIORITY_BUSY_TIMEOUT = 0x9000_0205_0000_0000,
    /// TDH.PHYMEM.PAGE.RECLAIM of a TDR while the TD still has pages.
    TD_ASSOCIATED_PAGES_EXIST = 0xC000_0400_0000_0000,
    /// TDH.SYS.INIT after the module was initialized.
    SYS_INIT_NOT_PENDING = 0xC000_0500_0000_0000,
    /// A metadata read on a logical processor that did not run TDH.SYS.LP.INIT.
    SYS_LP_INIT_NOT_DONE = 0xC000_0502_0000_0000,
    /// TDH.SYS.LP.INIT twice on one logical processor.
    SYS_LP_INIT_DONE = 0xC000_0503_0000_0000,
    /// The module is not ready for this leaf (bring-up not finished).
    SYS_NOT_READY = 0xC000_0505_0000_0000,
    /// The module was shut down.
    SYS_SHUTDOWN = 0xC000_0506_0000_0000,
    /// TDH.SYS.KEY.CONFIG outside its window (before CONFIG, or after READY).
    SYS_KEY_CONFIG_NOT_PENDING = 0xC000_0507_0000_0000,
    /// The module-wide state does not allow this leaf.
    SYS_STATE_INCORRECT = 0xC000_0508_0000_0000,
    /// TDH.SYS.LP.INIT outside its window.
    SYS_LP_INIT_NOT_PENDING = 0xC000_050B_0000_0000,
    /// TDH.SYS.CONFIG outside its window, or before every LP ran LP.INIT.
    SYS_CONFIG_NOT_PENDING = 0xC000_050C_0000_0000,
    /// The SEAM capabilities of the platform do not fit the module.
    INCOMPATIBLE_SEAM_CAPABILITIES = 0xC000_050D_0000_0000,
    /// TDH.SYS.SHUTDOWN refused: a compatibility-sensitive operation runs
    /// (runtime-update series).
    UPDATE_COMPAT_SENSITIVE = 0x8000_0512_0000_0000,
    /// The TD is in a fatal state.
    TD_FATAL = 0xE000_0604_0000_0000,
    /// The operation needs a debug TD.
    TD_NON_DEBUG = 0xC000_0605_0000_0000,
    /// The TD does not have enough TDCS pages yet.
    TDCS_NOT_ALLOCATED = 0xC000_0606_0000_0000,
    /// The TD lifecycle state (TDR) does not allow this leaf.
    LIFECYCLE_STATE_INCORRECT = 0xC000_0607_0000_0000,
    /// The TD operation state (TDCS) does not allow this leaf.
    OP_STATE_INCORRECT = 0xC000_0608_0000_0000,
    /// TDH.MR.FINALIZE on a TD without vCPUs.
    NO_VCPUS = 0xC000_0609_0000_0000,
    /// Wrong number of TDCX pages for the TD or vCPU.
    TDCX_NUM_INCORRECT = 0xC000_0610_0000_0000,
    /// Module 1.5.05: TDH.VP.INIT v1 with an x2APIC ID another vCPU of
    /// the TD has (the operand is the ID). Not in 1.5.01.
    X2APIC_ID_NOT_UNIQUE = 0xC000_0621_0000_0000,
    /// The vCPU state does not allow this leaf.
    VCPU_STATE_INCORRECT = 0xC000_0700_0000_0000,
    /// The vCPU is associated with another logical processor.
    VCPU_ASSOCIATED = 0x8000_0701_0000_0000,
    /// TDH.VP.FLUSH on a logical processor the vCPU is not associated with.
    VCPU_NOT_ASSOCIATED = 0x8000_0702_0000_0000,
    /// TDH.VP.INIT past the TD's max_vcpus.
    MAX_VCPUS_EXCEEDED = 0xC000_0705_0000_0000,
    /// TDG.VP.VEINFO.GET with no #VE information pending.
    NO_VALID_VE_INFO = 0xC000_0704_0000_0000,
    /// TDH.VP.ENTER: the TSC is earlier than at the vCPU's last exit.
    TSC_ROLLBACK = 0xC000_0706_0000_0000,
    /// TDH.VP.WR: a TD-VMCS field another field depends on is not set
    /// yet (posted interrupts).
    TD_VMCS_FIELD_NOT_INITIALIZED = 0xC000_0730_0000_0000,
    /// Key generation (PCONFIG) failed for lack of entropy; retry.
    KEY_GENERATION_FAILED = 0x8000_0800_0000_0000,
    /// The TD's keys are not configured on every package (or teardown began).
    TD_KEYS_NOT_CONFIGURED = 0x8000_0810_0000_0000,
    /// The key state does not allow this leaf.
    KEY_STATE_INCORRECT = 0xC000_0811_0000_0000,
    /// The key is already configured on this package (not an error).
    KEY_CONFIGURED = 0x0000_0815_0000_0000,
    /// TDH.MNG.KEY.FREEID before TDH.PHYMEM.CACHE.WB ran on every package.
    WBCACHE_NOT_COMPLETE = 0x8000_0817_0000_0000,
    /// TDH.MNG.CREATE with an HKID that is not free.
    HKID_NOT_FREE = 0xC000_0820_0000_0000,
    /// TDH.PHYMEM.CACHE.WB found no HKID to flush (not an error).
    NO_HKID_READY_TO_WBCACHE = 0x0000_0821_0000_0000,
    /// TDH.PHYMEM.CACHE.WB resume without a started flush.
    WBCACHE_RESUME_ERROR = 0xC000_0823_0000_0000,
    /// TDH.MNG.VPFLUSHDONE while vCPUs are still associated.
    FLUSHVP_NOT_DONE = 0x8000_0824_0000_0000,
    /// The number of activated HKIDs is not supported.
    NUM_ACTIVATED_HKIDS_NOT_SUPPORTED = 0xC000_0825_0000_0000,
    /// IA32_MISC_ENABLE limits CPUID's maximum leaf.
    LIMIT_CPUID_MAXVAL_SET = 0xC000_0901_0000_0000,
    /// Module 1.5.05: TDH.MNG.INIT's CPUID(0x1F) topology configuration is
    /// not a well-formed list of levels (`check_cpuid_1f`). Not in 1.5.01.
    CPUID_LEAF_1F_FORMAT_UNRECOGNIZED = 0xC000_0904_0000_0000,
    /// An MSR differs between logical processors; the operand is the MSR.
    INCONSISTENT_MSR = 0xC000_0920_0000_0000,
    /// An MSR has a value the module does not accept.
    INCORRECT_MSR_VALUE = 0xC000_0921_0000_0000,
    /// TDH.SYS.CONFIG: TDMR i is malformed (byte 0 = i).
    INVALID_TDMR = 0xC000_0A00_0000_0000,
    /// TDH.SYS.CONFIG: TDMR i is out of order or overlaps TDMR i-1.
    NON_ORDERED_TDMR = 0xC000_0A01_0000_0000,
    /// TDH.SYS.CONFIG: a non-reserved part of TDMR i is outside every CMR.
    TDMR_OUTSIDE_CMRS = 0xC000_0A02_0000_0000,
    /// TDH.SYS.TDMR.INIT on a TDMR that is fully initialized (not an error).
    TDMR_ALREADY_INITIALIZED = 0x0000_0A03_0000_0000,
    /// TDH.SYS.CONFIG: a PAMT of TDMR i is malformed or too small (i, level).
    INVALID_PAMT = 0xC000_0A10_0000_0000,
    /// TDH.SYS.CONFIG: a PAMT of TDMR i is outside every CMR (i, level).
    PAMT_OUTSIDE_CMRS = 0xC000_0A11_0000_0000,
    /// TDH.SYS.CONFIG: PAMTs overlap each other or TDMR memory (i, level, k).
    PAMT_OVERLAP = 0xC000_0A12_0000_0000,
    /// TDH.SYS.CONFIG: reserved area j of TDMR i is malformed (i, j).
    INVALID_RESERVED_IN_TDMR = 0xC000_0A20_0000_0000,
    /// TDH.SYS.CONFIG: reserved area j of TDMR i is out of order (i, j).
    NON_ORDERED_RESERVED_IN_TDMR = 0xC000_0A21_0000_0000,
    /// The CMR list the module got from MCHECK is invalid.
    CMR_LIST_INVALID = 0xC000_0A22_0000_0000,
    /// The S-EPT walk stopped above the requested level.
    EPT_WALK_FAILED = 0xC000_0B00_0000_0000,
    /// The S-EPT entry is free.
    EPT_ENTRY_FREE = 0xC000_0B01_0000_0000,
    /// The S-EPT entry is not free.
    EPT_ENTRY_NOT_FREE = 0xC000_0B02_0000_0000,
    /// The S-EPT entry is not present.
    EPT_ENTRY_NOT_PRESENT = 0xC000_0B03_0000_0000,
    /// The S-EPT entry is not a leaf.
    EPT_ENTRY_NOT_LEAF = 0xC000_0B04_0000_0000,
    /// The S-EPT entry is a leaf.
    EPT_ENTRY_LEAF = 0xC000_0B05_0000_0000,
    /// Removal of a GPA range that was not blocked first.
    GPA_RANGE_NOT_BLOCKED = 0xC000_0B06_0000_0000,
    /// The GPA range is already blocked (not an error).
    GPA_RANGE_ALREADY_BLOCKED = 0x0000_0B07_0000_0000,
    /// Removal before TDH.MEM.TRACK made the block visible to every LP.
    TLB_TRACKING_NOT_DONE = 0xC000_0B08_0000_0000,
    /// TDH.MEM.PAGE.PROMOTE: the 512 entries below are not one aligned,
    /// contiguous run of MAPPED (or of PENDING) leaves
    /// (`is_sept_page_valid_for_merge` in `tdh_mem_page_promote.c`).
    EPT_INVALID_PROMOTE_CONDITIONS = 0xC000_0B09_0000_0000,
    /// The S-EPT entry's state does not allow this leaf.
    EPT_ENTRY_STATE_INCORRECT = 0xC000_0B0D_0000_0000,
    /// TDH.MEM.SEPT.REMOVE of an S-EPT page that still has entries.
    EPT_PAGE_NOT_FREE = 0xC000_0B0E_0000_0000,
    /// The L2 S-EPT walk failed.
    L2_SEPT_WALK_FAILED = 0xC000_0B0F_0000_0000,
    /// The L2 S-EPT entry is not free.
    L2_SEPT_ENTRY_NOT_FREE = 0xC000_0B10_0000_0000,
    /// TDG.MEM.PAGE.ACCEPT: the page is already accepted (a warning; the
    /// details name the level).
    PAGE_ALREADY_ACCEPTED = 0x0000_0B0A_0000_0000,
    /// TDG.MEM.PAGE.ACCEPT of a 2M page over a table of 4K pages.
    PAGE_SIZE_MISMATCH = 0xC000_0B0B_0000_0000,
    /// The metadata field ID is not valid.
    METADATA_FIELD_ID_INCORRECT = 0xC000_0C00_0000_0000,
    /// The metadata field is not writable (by this leaf, or at all).
    METADATA_FIELD_NOT_WRITABLE = 0xC000_0C01_0000_0000,
    /// The metadata field is not readable.
    METADATA_FIELD_NOT_READABLE = 0xC000_0C02_0000_0000,
    /// A metadata write would change bits the field does not let the
    /// caller change, or puts a value the field does not allow.
    METADATA_FIELD_VALUE_NOT_VALID = 0xC000_0C03_0000_0000,
    /// A metadata write's mask is not one the field accepts.
    METADATA_WR_MASK_NOT_VALID = 0xC000_0C0A_0000_0000,
    /// TDH.SYS.RD with a null field ID: RDX holds the first field ID (not an error).
    METADATA_FIRST_FIELD_ID_IN_CONTEXT = 0x0000_0C0B_0000_0000,
    /// Base of the codes Linux makes up (class 0xFF); never from the module.
    SW_ERROR = 0x8000_FF00_0000_0000,
    /// The SEAMCALL failed with VMfailInvalid (CF=1): no SEAM module is
    /// loaded, or P-SEAMLDR is busy. Made up by the caller, like Linux does.
    SEAMCALL_VMFAILINVALID = 0x8000_FF00_FFFF_0000,
    /// The SEAMCALL failed with VMfailValid (ZF=1): the CPU refused the
    /// instruction and left an error number in the current VMCS's
    /// VM-instruction error field, with RAX unchanged. Not a Linux code
    /// (Linux tests CF only); tdx-rs makes it up so that an unchanged RAX
    /// (the leaf number, 0 for TDH.VP.ENTER) never reads as a status.
    SEAMCALL_VMFAILVALID = 0x8000_FF00_FFFE_0000,
    /// The SEAMCALL instruction raised #GP (vector 13).
    SEAMCALL_GP = 0x8000_FF00_0000_000D,
    /// The SEAMCALL instruction raised #UD (vector 6).
    SEAMCALL_UD = 0x8000_FF00_0000_0006,
}

impl TdxStatus {
    /// Linux's value for [`TdxStatus::NON_RECOVERABLE_TD`] (no fatal bit).
    pub const LINUX_NON_RECOVERABLE_TD: Self = Self(0x4000_0002_0000_0000);
    /// Linux's value for [`TdxStatus::NON_RECOVERABLE_TD_WRONG_APIC_MODE`]
    /// (no error or fatal... bit 63 clear, bits 62 and 61 set).
    pub const LINUX_NON_RECOVERABLE_TD_WRONG_APIC_MODE: Self = Self(0x6000_0007_0000_0000);

    /// Wraps a raw RAX value.
    #[inline]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw RAX value.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// True for `TDX_SUCCESS` exactly (zero).
    #[inline]
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// True if the error bit (63) is set.
    #[inline]
    pub const fn is_error(self) -> bool {
        self.0 & ERROR_BIT != 0
    }

    /// True for a non-zero status with the error bit clear: a warning or
    /// informational result such as `TDX_KEY_CONFIGURED`.
    #[inline]
    pub const fn is_warning(self) -> bool {
        !self.is_error() && self.0 != 0
    }

    /// Bit 62: the failure cannot be recovered from.
    #[inline]
    pub const fn is_non_recoverable(self) -> bool {
        self.0 & NON_RECOVERABLE_BIT != 0
    }

    /// Bit 61: the failure is fatal (for the TD, or the module).
    #[inline]
    pub const fn is_fatal(self) -> bool {
        self.0 & FATAL_BIT != 0
    }

    /// Bit 60: the module hints that the host can recover.
    #[inline]
    pub const fn host_recoverability_hint(self) -> bool {
        self.0 & RECOVERABILITY_HINT_BIT != 0
    }

    /// Bits 47:40.
    #[inline]
    pub const fn class(self) -> u8 {
        (self.0 >> 40) as u8
    }

    /// Bits 39:32: the code within its class.
    #[inline]
    pub const fn details_l1(self) -> u8 {
        (self.0 >> 32) as u8
    }

    /// Bits 31:0: operand ID or details L2.
    #[inline]
    pub const fn details_l2(self) -> u32 {
        self.0 as u32
    }

    /// The status without its operand or details (bits 31:0 cleared): the
    /// value to compare against the named constants.
    #[inline]
    pub const fn code(self) -> Self {
        Self(self.0 & STATUS_CODE_MASK)
    }

    /// True if `self` and `other` are the same code, whatever their operand
    /// or details.
    #[inline]
    pub const fn is(self, other: Self) -> bool {
        self.0 & STATUS_CODE_MASK == other.0 & STATUS_CODE_MASK
    }

    /// True for a status Linux makes up (class 0xFF with the error bit).
    #[inline]
    pub const fn is_software(self) -> bool {
        self.0 & Self::SW_ERROR.0 == Self::SW_ERROR.0
    }

    /// `self` with `operand` in bits 31:0, as the module reports it.
    #[inline]
    pub const fn with_operand(self, operand: OperandId) -> Self {
        Self((self.0 & STATUS_CODE_MASK) | operand.0 as u64)
    }

    /// `self` with the three detail bytes TDH.SYS.CONFIG packs into bits
    /// 23:0 (`b0` = TDMR index, `b1` = reserved-area index or PAMT level,
    /// `b2` = the other TDMR of a PAMT overlap).
    #[inline]
    pub const fn with_config_detail(self, b0: u8, b1: u8, b2: u8) -> Self {
        Self((self.0 & STATUS_CODE_MASK) | b0 as u64 | (b1 as u64) << 8 | (b2 as u64) << 16)
    }

    /// The name of the code (`"TDX_OPERAND_BUSY"`), or `None` for a code this
    /// crate does not know.
    pub fn name(self) -> Option<&'static str> {
        if self.is_software() && self.class() == SW_ERROR_CLASS {
            return match self.0 {
                v if v == Self::SEAMCALL_VMFAILINVALID.0 => Some("TDX_SEAMCALL_VMFAILINVALID"),
                v if v == Self::SEAMCALL_VMFAILVALID.0 => Some("TDX_SEAMCALL_VMFAILVALID"),
                v if v == Self::SEAMCALL_GP.0 => Some("TDX_SEAMCALL_GP"),
                v if v == Self::SEAMCALL_UD.0 => Some("TDX_SEAMCALL_UD"),
                _ => Some("TDX_SW_ERROR"),
            };
        }
        // A code is identified by class and details L1; the flag bits differ
        // between module versions for some codes (see the module docs).
        let key = self.identity();
        NAMED_STATUSES
            .iter()
            .find(|(s, _)| s.class() != SW_ERROR_CLASS && s.identity() == key)
            .map(|(_, n)| *n)
    }

    /// Class and details L1 (bits 47:32).
    #[inline]
    const fn identity(self) -> u16 {
        (self.0 >> 32) as u16
    }

    /// How the low 32 bits are to be read for this code.
    pub fn detail(self) -> StatusDetail {
        let low = self.details_l2();
        if self.is_software() && self.class() == SW_ERROR_CLASS {
            return match self.0 {
                v if v == Self::SEAMCALL_GP.0 || v == Self::SEAMCALL_UD.0 => {
                    StatusDetail::Trap { vector: low as u8 }
                }
                v if v == Self::SEAMCALL_VMFAILINVALID.0 || v == Self::SEAMCALL_VMFAILVALID.0 => {
                    StatusDetail::None
                }
                _ if low == 0 => StatusDetail::None,
                _ => StatusDetail::Raw(low),
            };
        }
        let [b0, b1, b2, _] = low.to_le_bytes();
        let code = self.code();
        if code.is(Self::INVALID_TDMR)
            || code.is(Self::NON_ORDERED_TDMR)
            || code.is(Self::TDMR_OUTSIDE_CMRS)
        {
            StatusDetail::Tdmr { tdmr: b0 }
        } else if code.is(Self::INVALID_RESERVED_IN_TDMR)
            || code.is(Self::NON_ORDERED_RESERVED_IN_TDMR)
        {
            StatusDetail::ReservedArea { tdmr: b0, area: b1 }
        } else if code.is(Self::INVALID_PAMT) || code.is(Self::PAMT_OUTSIDE_CMRS) {
            StatusDetail::Pamt {
                tdmr: b0,
                level: b1,
            }
        } else if code.is(Self::PAMT_OVERLAP) {
            StatusDetail::PamtOverlap {
                tdmr: b0,
                level: b1,
                other_tdmr: b2,
            }
        } else if self.class() == 0x01 || low != 0 {
            // Operand errors always name an operand, and operand 0 is RAX.
            StatusDetail::Operand(OperandId(low))
        } else {
            StatusDetail::None
        }
    }

    /// The operand the status names, if it names one.
    pub fn operand(self) -> Option<OperandId> {
        match self.detail() {
            StatusDetail::Operand(op) => Some(op),
            _ => None,
        }
    }

    /// How a caller should treat the status, or `None` if it is not an error.
    #[inline]
    pub fn kind(self) -> Option<ErrorKind> {
        if !self.is_error() {
            return None;
        }
        let code = self.code();
        Some(if self.is_software() && self.class() == SW_ERROR_CLASS {
            if self.0 == Self::SEAMCALL_VMFAILINVALID.0 {
                ErrorKind::ModuleUnavailable
            } else {
                ErrorKind::Fault
            }
        } else if code.is(Self::OPERAND_BUSY)
            || code.is(Self::OPERAND_BUSY_HOST_PRIORITY)
            || code.is(Self::SYS_BUSY)
            || code.is(Self::PREVIOUS_TLB_EPOCH_BUSY)
        {
            ErrorKind::Busy
        } else if code.is(Self::INTERRUPTED_RESUMABLE)
            || code.is(Self::INTERRUPTED_RESTARTABLE)
            || code.is(Self::INTERRUPTED_PAMT)
        {
            ErrorKind::Interrupted
        } else if code.is(Self::RND_NO_ENTROPY) || code.is(Self::KEY_GENERATION_FAILED) {
            ErrorKind::NoEntropy
        } else {
            ErrorKind::Failed
        })
    }

    /// `Ok(self)` unless the error bit is set; then a [`TdxError`] for `leaf`.
    /// Warnings (non-zero, error bit clear) are `Ok`: the caller can still
    /// tell them from plain success with [`TdxStatus::is_warning`].
    #[inline]
    pub fn into_result(self, leaf: LeafVersion) -> Result<Self, TdxError> {
        if self.is_error() {
            Err(TdxError::new(leaf, self))
        } else {
            Ok(self)
        }
    }
}

impl From<u64> for TdxStatus {
    fn from(raw: u64) -> Self {
        Self(raw)
    }
}

impl From<TdxStatus> for u64 {
    fn from(s: TdxStatus) -> u64 {
        s.0
    }
}

impl fmt::Display for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#018x})", self.0)?,
            None => write!(
                f,
                "unknown status class {:#04x} code {:#04x} ({:#018x})",
                self.class(),
                self.details_l1(),
                self.0
            )?,
        }
        match self.detail() {
            StatusDetail::None => Ok(()),
            d => write!(f, ", {d}"),
        }
    }
}

impl fmt::Debug for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TdxStatus({self})")
    }
}

/// What the low 32 bits of a status say, decoded according to its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusDetail {
    /// Nothing.
    None,
    /// The operand the status is about (a register, or a module object).
    Operand(OperandId),
    /// TDH.SYS.CONFIG: about TDMR `tdmr` (index into the TDMR array).
    Tdmr {
        /// Index of the TDMR in the array passed to TDH.SYS.CONFIG.
        tdmr: u8,
    },
    /// TDH.SYS.CONFIG: about reserved area `area` of TDMR `tdmr`.
    ReservedArea {
        /// TDMR index.
        tdmr: u8,
        /// Reserved-area index within the TDMR.
        area: u8,
    },
    /// TDH.SYS.CONFIG: about the PAMT of level `level` (0 = 4K, 1 = 2M,
    /// 2 = 1G) of TDMR `tdmr`.
    Pamt {
        /// TDMR index.
        tdmr: u8,
        /// PAMT level.
        level: u8,
    },
    /// TDH.SYS.CONFIG: the level-`level` PAMT of TDMR `tdmr` overlaps a PAMT
    /// or the memory of TDMR `other_tdmr`.
    PamtOverlap {
        /// TDMR whose PAMT overlaps.
        tdmr: u8,
        /// Level of that PAMT.
        level: u8,
        /// The TDMR it overlaps with.
        other_tdmr: u8,
    },
    /// A software status made from an exception: the vector (13 = #GP, 6 = #UD).
    Trap {
        /// The exception vector.
        vector: u8,
    },
    /// Bits this crate does not know how to read.
    Raw(u32),
}

fn level_name(level: u8) -> &'static str {
    match level {
        0 => "4K",
        1 => "2M",
        2 => "1G",
        _ => "?",
    }
}

impl fmt::Display for StatusDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::None => Ok(()),
            Self::Operand(op) => write!(f, "operand {op}"),
            Self::Tdmr { tdmr } => write!(f, "TDMR {tdmr}"),
            Self::ReservedArea { tdmr, area } => write!(f, "TDMR {tdmr} reserved area {area}"),
            Self::Pamt { tdmr, level } => {
                write!(f, "TDMR {tdmr} PAMT level {level} ({})", level_name(level))
            }
            Self::PamtOverlap {
                tdmr,
                level,
                other_tdmr,
            } => write!(
                f,
                "TDMR {tdmr} PAMT level {level} ({}) overlaps TDMR {other_tdmr}",
                level_name(level)
            ),
            Self::Trap { vector } => match vector {
                13 => f.write_str("#GP"),
                6 => f.write_str("#UD"),
                v => write!(f, "exception vector {v}"),
            },
            Self::Raw(v) => write!(f, "details {v:#x}"),
        }
    }
}

/// The operand a status is about: a register, a TD_PARAMS field, or a
/// module-internal object (bits 31:0 of the status).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct OperandId(pub u32);

macro_rules! operand_ids {
    ($( $name:ident = $value:literal, )*) => {
        impl OperandId {
            $(
                #[doc = concat!("Operand `", stringify!($name), "` (", stringify!($value), ").")]
                pub const $name: Self = Self($value);
            )*

            /// The name of the operand, or `None` if this crate does not know it.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }
        }

        /// Every named operand ID.
        pub const NAMED_OPERANDS: &[OperandId] = &[$( OperandId::$name, )*];
    };
}

operand_ids! {
    RAX = 0, RCX = 1, RDX = 2, RBX = 3, RSI = 6, RDI = 7,
    R8 = 8, R9 = 9, R10 = 10, R11 = 11, R12 = 12, R13 = 13, R14 = 14, R15 = 15,
    ATTRIBUTES = 64, XFAM = 65, EXEC_CONTROLS = 66, EPTP_CONTROLS = 67,
    MAX_VCPUS = 68, CPUID_CONFIG = 69, TSC_FREQUENCY = 70, NUM_L2_VMS = 71,
    IA32_ARCH_CAPABILITIES_CONFIG = 72,
    TDR = 128, TDCX = 129, TDVPR = 130, TDCS = 144, TDVPS = 145,
    SEPT_TREE = 146, SEPT_ENTRY = 147, RTMR = 168, TD_EPOCH = 169, OP_STATE = 172,
    SYS = 184, TDMR = 185, KOT = 186, KET = 187, WBCACHE = 188,
}

impl fmt::Display for OperandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

impl fmt::Debug for OperandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperandId({self})")
    }
}

/// How a caller should react to an error status.
///
/// Busy and interrupted are kept apart from real failures because callers
/// retry them; running out of entropy is its own kind because the retry must
/// be bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Lock contention (`TDX_OPERAND_BUSY`, `..._HOST_PRIORITY`,
    /// `TDX_SYS_BUSY`, `TDX_PREVIOUS_TLB_EPOCH_BUSY`): nothing changed; retry,
    /// after removing the cause where there is one.
    Busy,
    /// A host interrupt stopped the leaf; call it again.
    /// `TDX_INTERRUPTED_RESUMABLE` (and Dynamic PAMT's
    /// `TDX_INTERRUPTED_PAMT`): the leaf saved its progress, call it with
    /// the resume inputs the leaf defines. `TDX_INTERRUPTED_RESTARTABLE`:
    /// the leaf changed nothing, call it again with the same inputs.
    Interrupted,
    /// `TDX_RND_NO_ENTROPY` or `TDX_KEY_GENERATION_FAILED`: the hardware
    /// random number generator ran dry; retry a bounded number of times.
    NoEntropy,
    /// `TDX_SEAMCALL_VMFAILINVALID`: no TDX module answered.
    ModuleUnavailable,
    /// `TDX_SEAMCALL_GP` / `_UD`: the instruction faulted (not in VMX root,
    /// TDX disabled, ...); `TDX_SEAMCALL_VMFAILVALID`: the CPU refused it.
    Fault,
    /// Any other error: the inputs or the state were wrong. Retrying the
    /// same call gives the same answer.
    Failed,
}

/// A SEAMCALL that completed with the error bit set: the leaf it was, and
/// the raw status with everything the module said.
///
/// Output registers are not to be trusted after an error, so a `TdxError`
/// keeps none of them; a caller that needs the extended error information
/// (S-EPT details, for example) reads it from the raw call's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{leaf}: {status}")]
pub struct TdxError {
    leaf: LeafVersion,
    status: TdxStatus,
}

impl TdxError {
    /// An error for `leaf` with `status`. The status should have its error
    /// bit set; a `TdxError` made from a non-error status reports
    /// [`ErrorKind::Failed`].
    pub const fn new(leaf: LeafVersion, status: TdxStatus) -> Self {
        Self { leaf, status }
    }

    /// The leaf (with its version) that failed.
    #[inline]
    pub const fn leaf(&self) -> LeafVersion {
        self.leaf
    }

    /// The raw status.
    #[inline]
    pub const fn status(&self) -> TdxStatus {
        self.status
    }

    /// How to react: retry, resume, or give up.
    pub fn kind(&self) -> ErrorKind {
        self.status.kind().unwrap_or(ErrorKind::Failed)
    }

    /// The operand the module named, if any.
    pub fn operand(&self) -> Option<OperandId> {
        self.status.operand()
    }

    /// The decoded low 32 bits of the status.
    pub fn detail(&self) -> StatusDetail {
        self.status.detail()
    }

    /// True for [`ErrorKind::Busy`].
    pub fn is_busy(&self) -> bool {
        self.kind() == ErrorKind::Busy
    }

    /// True for [`ErrorKind::Interrupted`].
    pub fn is_interrupted(&self) -> bool {
        self.kind() == ErrorKind::Interrupted
    }

    /// True if the status has the given code, whatever its operand.
    pub fn is(&self, code: TdxStatus) -> bool {
        self.status.is(code)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::leaf::Leaf;
    use proptest::prelude::*;
    use std::{collections::HashMap, string::ToString};

    #[test]
    fn operand_busy_on_rcx() {
        let s = TdxStatus::from_raw(0x8000_0200_0000_0001);
        assert!(s.is_error() && !s.is_non_recoverable() && !s.is_fatal());
        assert_eq!(s.class(), 0x02);
        assert_eq!(s.details_l1(), 0x00);
        assert!(s.is(TdxStatus::OPERAND_BUSY));
        assert_eq!(s.operand(), Some(OperandId::RCX));
        assert_eq!(s.kind(), Some(ErrorKind::Busy));
        assert_eq!(
            s.to_string(),
            "TDX_OPERAND_BUSY (0x8000020000000001), operand RCX"
        );
    }

    #[test]
    fn invalid_pamt_tdmr_3_level_2m() {
        // TDH.SYS.CONFIG: TDMR 3, PAMT level 1 (2M): b0 = 3, b1 = 1.
        let s = TdxStatus::INVALID_PAMT.with_config_detail(3, 1, 0);
        assert_eq!(s.raw(), 0xC000_0A10_0000_0103);
        assert_eq!(s.detail(), StatusDetail::Pamt { tdmr: 3, level: 1 });
        assert_eq!(s.operand(), None);
        assert!(s.is_non_recoverable());
        assert_eq!(s.kind(), Some(ErrorKind::Failed));
        assert_eq!(
            s.to_string(),
            "TDX_INVALID_PAMT (0xc0000a1000000103), TDMR 3 PAMT level 1 (2M)"
        );
    }

    #[test]
    fn config_details() {
        let s = TdxStatus::from_raw(0xC000_0A12_0002_0105);
        assert_eq!(
            s.detail(),
            StatusDetail::PamtOverlap {
                tdmr: 5,
                level: 1,
                other_tdmr: 2
            }
        );
        let s = TdxStatus::NON_ORDERED_RESERVED_IN_TDMR.with_config_detail(1, 15, 0);
        assert_eq!(s.detail(), StatusDetail::ReservedArea { tdmr: 1, area: 15 });
        // TDMR 0 is still a TDMR, not "no detail".
        assert_eq!(
            TdxStatus::INVALID_TDMR.detail(),
            StatusDetail::Tdmr { tdmr: 0 }
        );
        assert_eq!(
            TdxStatus::TDMR_OUTSIDE_CMRS
                .with_config_detail(7, 0, 0)
                .to_string(),
            "TDX_TDMR_OUTSIDE_CMRS (0xc0000a0200000007), TDMR 7"
        );
    }

    #[test]
    fn operand_invalid_rax_has_an_operand() {
        let s = TdxStatus::OPERAND_INVALID;
        assert_eq!(s.operand(), Some(OperandId::RAX));
        let s = TdxStatus::OPERAND_INVALID.with_operand(OperandId::ATTRIBUTES);
        assert_eq!(s.raw(), 0xC000_0100_0000_0040);
        assert_eq!(
            s.to_string(),
            "TDX_OPERAND_INVALID (0xc000010000000040), operand ATTRIBUTES"
        );
        // Other codes without operand bits name none.
        assert_eq!(TdxStatus::SYS_NOT_READY.operand(), None);
        assert_eq!(
            TdxStatus::OPERAND_BUSY
                .with_operand(OperandId::KOT)
                .operand(),
            Some(OperandId::KOT)
        );
    }

    #[test]
    fn warnings_are_not_errors() {
        for w in [
            TdxStatus::KEY_CONFIGURED,
            TdxStatus::TDMR_ALREADY_INITIALIZED,
            TdxStatus::NO_HKID_READY_TO_WBCACHE,
            TdxStatus::GPA_RANGE_ALREADY_BLOCKED,
            TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT,
            TdxStatus::PAGE_ALREADY_FREE,
        ] {
            assert!(!w.is_error(), "{w}");
            assert!(w.is_warning(), "{w}");
            assert_eq!(w.kind(), None);
            assert_eq!(w.into_result(Leaf::SYS_KEY_CONFIG.v0()), Ok(w));
        }
        assert!(TdxStatus::SUCCESS.is_success() && !TdxStatus::SUCCESS.is_warning());
    }

    #[test]
    fn software_codes() {
        assert_eq!(
            TdxStatus::SEAMCALL_VMFAILINVALID.raw(),
            0x8000_FF00_FFFF_0000
        );
        assert_eq!(TdxStatus::SEAMCALL_GP.raw(), 0x8000_FF00_0000_000D);
        assert_eq!(TdxStatus::SEAMCALL_UD.raw(), 0x8000_FF00_0000_0006);
        assert_eq!(
            TdxStatus::SEAMCALL_VMFAILINVALID.kind(),
            Some(ErrorKind::ModuleUnavailable)
        );
        assert_eq!(TdxStatus::SEAMCALL_GP.kind(), Some(ErrorKind::Fault));
        assert_eq!(
            TdxStatus::SEAMCALL_UD.detail(),
            StatusDetail::Trap { vector: 6 }
        );
        assert_eq!(
            TdxStatus::SEAMCALL_GP.to_string(),
            "TDX_SEAMCALL_GP (0x8000ff000000000d), #GP"
        );
        assert_eq!(
            TdxStatus::SEAMCALL_VMFAILINVALID.to_string(),
            "TDX_SEAMCALL_VMFAILINVALID (0x8000ff00ffff0000)"
        );
        assert!(TdxStatus::SEAMCALL_UD.is_software());
        assert!(!TdxStatus::OPERAND_BUSY.is_software());
        // VMfailValid: an error of its own, not the unchanged RAX.
        let v = TdxStatus::SEAMCALL_VMFAILVALID;
        assert!(v.is_error() && v.is_software());
        assert_eq!(v.kind(), Some(ErrorKind::Fault));
        assert_eq!(v.detail(), StatusDetail::None);
        assert_eq!(
            v.to_string(),
            "TDX_SEAMCALL_VMFAILVALID (0x8000ff00fffe0000)"
        );
    }

    #[test]
    fn kinds() {
        use ErrorKind::*;
        let k = |s: TdxStatus| s.kind().unwrap();
        assert_eq!(k(TdxStatus::INTERRUPTED_RESUMABLE), Interrupted);
        assert_eq!(k(TdxStatus::INTERRUPTED_RESTARTABLE), Interrupted);
        assert_eq!(
            TdxStatus::INTERRUPTED_RESTARTABLE.raw(),
            0x8000_0004_0000_0000
        );
        assert_eq!(
            k(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS.with_operand(OperandId::RCX)),
            Failed
        );
        assert_eq!(
            TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS
                .with_operand(OperandId::RCX)
                .raw(),
            0xC000_0B09_0000_0001
        );
        assert_eq!(k(TdxStatus::RND_NO_ENTROPY), NoEntropy);
        assert_eq!(k(TdxStatus::KEY_GENERATION_FAILED), NoEntropy);
        assert_eq!(k(TdxStatus::SYS_BUSY), Busy);
        assert_eq!(k(TdxStatus::PREVIOUS_TLB_EPOCH_BUSY), Busy);
        assert_eq!(
            k(TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE)),
            Busy
        );
        assert_eq!(k(TdxStatus::EPT_WALK_FAILED), Failed);
        assert_eq!(k(TdxStatus::TD_FATAL), Failed);
        assert!(TdxStatus::TD_FATAL.is_fatal());
    }

    #[test]
    fn module_and_linux_values_share_a_name() {
        assert_eq!(
            TdxStatus::NON_RECOVERABLE_TD.name(),
            Some("TDX_NON_RECOVERABLE_TD")
        );
        assert_eq!(
            TdxStatus::LINUX_NON_RECOVERABLE_TD.name(),
            Some("TDX_NON_RECOVERABLE_TD")
        );
        assert_eq!(
            TdxStatus::LINUX_NON_RECOVERABLE_TD_WRONG_APIC_MODE.name(),
            Some("TDX_NON_RECOVERABLE_TD_WRONG_APIC_MODE")
        );
        // The module's value is an error, Linux's is not.
        assert!(TdxStatus::NON_RECOVERABLE_TD_WRONG_APIC_MODE.is_error());
        assert!(!TdxStatus::LINUX_NON_RECOVERABLE_TD_WRONG_APIC_MODE.is_error());
    }

    #[test]
    fn every_name_is_unique_and_round_trips() {
        let mut by_identity = HashMap::new();
        for (s, name) in NAMED_STATUSES {
            assert!(name.starts_with("TDX_"));
            if !s.is_software() {
                assert_eq!(s.details_l2(), 0, "{name} has operand bits");
            }
            if s.class() != SW_ERROR_CLASS
                && let Some(prev) = by_identity.insert(s.identity(), *name)
            {
                panic!("{name} and {prev} share class/details");
            }
            assert_eq!(s.name(), Some(*name), "{s:?}");
            // A named code with any operand keeps its name.
            if !s.is_software() {
                assert_eq!(s.with_operand(OperandId::R9).name(), Some(*name));
            }
        }
        assert_eq!(NAMED_STATUSES.len(), 102);
    }

    #[test]
    fn unknown_codes_survive() {
        let s = TdxStatus::from_raw(0xC000_0E42_0000_0002);
        assert_eq!(s.name(), None);
        assert_eq!(s.kind(), Some(ErrorKind::Failed));
        assert_eq!(s.operand(), Some(OperandId::RDX));
        assert_eq!(
            s.to_string(),
            "unknown status class 0x0e code 0x42 (0xc0000e4200000002), operand RDX"
        );
    }

    #[test]
    fn error_carries_leaf_status_and_operand() {
        let e = TdxStatus::OPERAND_BUSY
            .with_operand(OperandId::R8)
            .into_result(Leaf::MEM_PAGE_AUG.v0())
            .unwrap_err();
        assert_eq!(e.leaf().leaf(), Leaf::MEM_PAGE_AUG);
        assert_eq!(e.operand(), Some(OperandId::R8));
        assert!(e.is_busy() && !e.is_interrupted());
        assert!(e.is(TdxStatus::OPERAND_BUSY));
        assert_eq!(
            e.to_string(),
            "TDH.MEM.PAGE.AUG: TDX_OPERAND_BUSY (0x8000020000000008), operand R8"
        );
        let e = TdxError::new(Leaf::VP_INIT.v(1), TdxStatus::MAX_VCPUS_EXCEEDED);
        assert_eq!(
            e.to_string(),
            "TDH.VP.INIT v1: TDX_MAX_VCPUS_EXCEEDED (0xc000070500000000)"
        );
    }

    #[test]
    fn operand_names() {
        assert_eq!(OperandId::TDR.to_string(), "TDR");
        assert_eq!(OperandId(0x1234).to_string(), "0x1234");
        assert_eq!(NAMED_OPERANDS.len(), 38);
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn fields_recompose(raw: u64) {
            let s = TdxStatus::from_raw(raw);
            let rebuilt = (raw & (0xF << 60))
                | (raw & (0xFFF << 48))
                | (s.class() as u64) << 40
                | (s.details_l1() as u64) << 32
                | s.details_l2() as u64;
            prop_assert_eq!(rebuilt, raw);
            prop_assert_eq!(s.is_error(), raw >> 63 == 1);
            prop_assert_eq!(s.kind().is_some(), s.is_error());
            // Display never panics and always shows the raw value.
            let text = s.to_string();
            let hex = std::format!("{raw:#018x}");
            prop_assert!(text.contains(&hex));
        }

        #[test]
        fn config_detail_round_trip(b0: u8, b1: u8, b2: u8) {
            let s = TdxStatus::PAMT_OVERLAP.with_config_detail(b0, b1, b2);
            prop_assert_eq!(s.detail(), StatusDetail::PamtOverlap { tdmr: b0, level: b1, other_tdmr: b2 });
            prop_assert!(s.is(TdxStatus::PAMT_OVERLAP));
        }
    }
}
