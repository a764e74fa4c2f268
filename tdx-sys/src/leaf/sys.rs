//! Module-wide leaves: bring-up, metadata, shutdown and update.

// UNSAFETY: raw leaf functions (see the parent module).
#![allow(unsafe_code)]

use tdx_types::{
    Hpa, Leaf, TdxStatus,
    metadata::{MdFieldId, TdxFeatures0},
    regs::{ShutdownHandoff, SysConfigKeyId},
};

use super::{Completion, call_no_outputs, call_ret};
use crate::args::{Seamcall, SeamcallArgs};

/// TDH.SYS.INIT (33): global initialization, once per module load.
///
/// RCX = attributes (0; every bit is reserved). The module clears RCX, RDX,
/// R8-R10 on return; they carry nothing, so they are discarded.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.SYS.INIT")]
#[inline]
pub unsafe fn tdh_sys_init<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_INIT.v0(), SeamcallArgs::ZERO) }
}

/// TDH.SYS.LP.INIT (35): initialize the calling logical processor.
///
/// # Safety
///
/// Crate-level contract; in particular it runs on the logical processor
/// the caller means to initialize, without migrating.
#[doc(alias = "TDH.SYS.LP.INIT")]
#[inline]
pub unsafe fn tdh_sys_lp_init<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_LP_INIT.v0(), SeamcallArgs::ZERO) }
}

/// Outputs of TDH.SYS.RD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SysRdOut {
    /// R8: the field's value, zero-extended.
    pub value: u64,
    /// RDX: the next field ID in the context (the first one when the input
    /// was the null ID and the status `TDX_METADATA_FIRST_FIELD_ID_IN_CONTEXT`).
    pub next: MdFieldId,
}

/// TDH.SYS.RD (34): read one global metadata field.
///
/// RDX = field ID; out R8 = value, RDX = next field ID.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.SYS.RD")]
#[inline]
pub unsafe fn tdh_sys_rd<B: Seamcall + ?Sized>(b: &B, field: MdFieldId) -> Completion<SysRdOut> {
    let args = SeamcallArgs {
        rdx: field.into_raw(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::SYS_RD.v0(), args) };
    Completion {
        status,
        out: SysRdOut {
            value: o.r8,
            next: MdFieldId::from_raw(o.rdx),
        },
    }
}

/// Outputs of the legacy TDH.SYS.INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SysInfoOut {
    /// RDX: bytes of TDSYSINFO_STRUCT written.
    pub sysinfo_len: u64,
    /// R9: number of CMR entries written.
    pub num_cmrs: u64,
}

/// TDH.SYS.INFO (32, legacy): fill a TDSYSINFO_STRUCT and a CMR array.
///
/// RCX = TDSYSINFO PA (1024-byte aligned), RDX = its size, R8 = CMR array
/// PA (512-byte aligned), R9 = CMR array entries; out RDX = bytes written,
/// R9 = CMR entries written. Superseded by TDH.SYS.RD in current modules.
///
/// # Safety
///
/// Crate-level contract; `sysinfo` (`sysinfo_len` bytes) and `cmrs`
/// (`cmr_entries` × 16 bytes) are host memory the module may write for the
/// duration of the call.
#[doc(alias = "TDH.SYS.INFO")]
#[inline]
pub unsafe fn tdh_sys_info<B: Seamcall + ?Sized>(
    b: &B,
    sysinfo: Hpa,
    sysinfo_len: u64,
    cmrs: Hpa,
    cmr_entries: u64,
) -> Completion<SysInfoOut> {
    let args = SeamcallArgs::regs6(
        sysinfo.as_u64(),
        sysinfo_len,
        cmrs.as_u64(),
        cmr_entries,
        0,
        0,
    );
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::SYS_INFO.v0(), args) };
    Completion {
        status,
        out: SysInfoOut {
            sysinfo_len: o.rdx,
            num_cmrs: o.r9,
        },
    }
}

/// TDH.SYS.CONFIG (45), version 0: hand the TDMRs and the global KeyID to
/// the module.
///
/// RCX = PA of the array of TDMR_INFO PAs (512-byte aligned), RDX = number
/// of TDMRs, R8 = global private KeyID, and bit 16 to enable Dynamic PAMT
/// (Intel TDX module 1.5.16+, TDX_FEATURES0 bit 36; with it each TDMR's 4K
/// PAMT area need only be TDMR size / 32768 bytes, the module's bitmap).
/// A module without Dynamic PAMT refuses bit 16 (`TDX_OPERAND_INVALID|R8`).
///
/// # Safety
///
/// Crate-level contract; the array and every TDMR_INFO it points to are
/// host memory the module reads during the call, and every PAMT range in
/// them is memory the caller hands to the module for good (until the module
/// is unloaded).
#[doc(alias = "TDH.SYS.CONFIG")]
#[inline]
pub unsafe fn tdh_sys_config<B: Seamcall + ?Sized>(
    b: &B,
    tdmr_array: Hpa,
    nr_tdmrs: u64,
    keyid: SysConfigKeyId,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdmr_array.as_u64(), nr_tdmrs, keyid.into_bits(), 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_CONFIG.v0(), args) }
}

/// TDH.SYS.CONFIG (45), version 1: as version 0, plus R9 = the features to
/// enable (TDX_FEATURES0 bit layout).
///
/// The TDX Connect series also passes the wall-clock time in seconds in
/// R11; `r11` carries it (0 where not used).
///
/// # Safety
///
/// As [`tdh_sys_config`].
#[doc(alias = "TDH.SYS.CONFIG")]
#[inline]
pub unsafe fn tdh_sys_config_v1<B: Seamcall + ?Sized>(
    b: &B,
    tdmr_array: Hpa,
    nr_tdmrs: u64,
    keyid: SysConfigKeyId,
    features: TdxFeatures0,
    r11: u64,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(
        tdmr_array.as_u64(),
        nr_tdmrs,
        keyid.into_bits(),
        features.into_bits(),
        0,
        r11,
    );
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_CONFIG.v(1), args) }
}

/// TDH.SYS.KEY.CONFIG (31): program the global KeyID on this package.
///
/// No operands. Returns `TDX_KEY_CONFIGURED` (not an error) if this package
/// is already done.
///
/// # Safety
///
/// Crate-level contract; run on one CPU of the package meant, one package
/// at a time, after WBINVD on every CPU.
#[doc(alias = "TDH.SYS.KEY.CONFIG")]
#[inline]
pub unsafe fn tdh_sys_key_config<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_KEY_CONFIG.v0(), SeamcallArgs::ZERO) }
}

/// TDH.SYS.TDMR.INIT (36): initialize the next chunk of a TDMR's PAMT.
///
/// RCX = TDMR base; out RDX = the address up to which the TDMR is usable
/// (rounded down to 1 GiB). Repeat until it reaches the TDMR's end; then the
/// module answers `TDX_TDMR_ALREADY_INITIALIZED` (not an error).
///
/// # Safety
///
/// Crate-level contract. The module writes the TDMR's PAMT, which the
/// caller already handed over with TDH.SYS.CONFIG.
#[doc(alias = "TDH.SYS.TDMR.INIT")]
#[inline]
pub unsafe fn tdh_sys_tdmr_init<B: Seamcall + ?Sized>(b: &B, tdmr_base: Hpa) -> Completion<u64> {
    let args = SeamcallArgs {
        rcx: tdmr_base.as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::SYS_TDMR_INIT.v0(), args) };
    Completion { status, out: o.rdx }
}

/// TDH.SYS.LP.SHUTDOWN (44): a no-op that returns success in module 1.5.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.SYS.LP.SHUTDOWN")]
#[inline]
pub unsafe fn tdh_sys_lp_shutdown<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_LP_SHUTDOWN.v0(), SeamcallArgs::ZERO) }
}

/// TDH.SYS.SHUTDOWN (52): shut the module down (runtime update, or before
/// unloading).
///
/// RCX = handoff version | bit 16 AVOID_COMPAT_SENSITIVE. May answer
/// `TDX_UPDATE_COMPAT_SENSITIVE`.
///
/// # Safety
///
/// Crate-level contract. After success no other leaf but
/// TDH.SYS.LP.SHUTDOWN works until the module is reloaded.
#[doc(alias = "TDH.SYS.SHUTDOWN")]
#[inline]
pub unsafe fn tdh_sys_shutdown<B: Seamcall + ?Sized>(b: &B, handoff: ShutdownHandoff) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: handoff.into_bits(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_SHUTDOWN.v0(), args) }
}

/// TDH.SYS.UPDATE (53), version 0: finish a runtime update in the new module.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.SYS.UPDATE")]
#[inline]
pub unsafe fn tdh_sys_update<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_UPDATE.v0(), SeamcallArgs::ZERO) }
}

/// TDH.SYS.UPDATE (53), version 1: R9 = the features enabled at CONFIG.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.SYS.UPDATE")]
#[inline]
pub unsafe fn tdh_sys_update_v1<B: Seamcall + ?Sized>(b: &B, features: TdxFeatures0) -> TdxStatus {
    let args = SeamcallArgs {
        r9: features.into_bits(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_UPDATE.v(1), args) }
}

/// TDH.SYS.DISABLE (69): disable the module (kexec, shutdown). Repeat while
/// it answers `TDX_INTERRUPTED_RESUMABLE` or `TDX_SYS_BUSY`.
///
/// # Safety
///
/// Crate-level contract. Destructive: no SEAMCALL works afterwards until a
/// full re-initialization, so every page the module held stays unusable
/// by the host until then.
#[doc(alias = "TDH.SYS.DISABLE")]
#[inline]
pub unsafe fn tdh_sys_disable<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::SYS_DISABLE.v0(), SeamcallArgs::ZERO) }
}
