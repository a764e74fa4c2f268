//! Trust Domain and vCPU leaves: TDH.MNG.*, TDH.VP.*, TDH.MR.*.

// UNSAFETY: raw leaf functions (see the parent module).
#![allow(unsafe_code)]

use tdx_types::{Gpa, Hpa, Leaf, Pfn, TdxStatus, metadata::MdFieldId, regs::SeptDetails};

use super::{Completion, call, call_no_outputs, call_ret};
use crate::args::{RegShape, Seamcall, SeamcallArgs};

/// TDH.MNG.CREATE (9): make `tdr` the TDR of a new TD with private KeyID
/// `hkid`.
///
/// RCX = TDR page, RDX = HKID.
///
/// # Safety
///
/// Crate-level contract; `tdr` is handed to the module (flush it from the
/// caches first, as Linux does).
#[doc(alias = "TDH.MNG.CREATE")]
#[inline]
pub unsafe fn tdh_mng_create<B: Seamcall + ?Sized>(b: &B, tdr: Pfn, hkid: u16) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdr.hpa().as_u64(), hkid.into(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_CREATE.v0(), args) }
}

/// TDH.MNG.KEY.CONFIG (8): program the TD's KeyID on this package.
///
/// RCX = TDR. Returns `TDX_KEY_CONFIGURED` (not an error) on a package that
/// is already done.
///
/// # Safety
///
/// Crate-level contract; run on one CPU of the package meant.
#[doc(alias = "TDH.MNG.KEY.CONFIG")]
#[inline]
pub unsafe fn tdh_mng_key_config<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_KEY_CONFIG.v0(), args) }
}

/// TDH.MNG.ADDCX (1): add a TDCS page to a TD.
///
/// RCX = TDCS page, RDX = TDR.
///
/// # Safety
///
/// Crate-level contract; `tdcs` is handed to the module.
#[doc(alias = "TDH.MNG.ADDCX")]
#[inline]
pub unsafe fn tdh_mng_addcx<B: Seamcall + ?Sized>(b: &B, tdcs: Pfn, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdcs.hpa().as_u64(), tdr.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_ADDCX.v0(), args) }
}

/// TDH.MNG.INIT (21): initialize the TD from a TD_PARAMS structure.
///
/// RCX = TDR, RDX = TD_PARAMS PA (1 KiB aligned, shared); out RCX =
/// extended error information (a CPUID leaf/subleaf on a CPUID error).
///
/// # Safety
///
/// Crate-level contract; the 1024 bytes at `td_params` are host memory the
/// module reads during the call.
#[doc(alias = "TDH.MNG.INIT")]
#[inline]
pub unsafe fn tdh_mng_init<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    td_params: Hpa,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(tdr.hpa().as_u64(), td_params.as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MNG_INIT.v0(), args) };
    Completion { status, out: o.rcx }
}

/// TDH.MNG.RD (11), version 0: read a TD-scope metadata field.
///
/// RCX = TDR, RDX = field ID (found by class and field code; the module
/// sets the context code itself); out R8 = value (0 on error). RDX comes
/// back as given. [`tdh_mng_rd_v1`] also returns the next field ID.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.MNG.RD")]
#[inline]
pub unsafe fn tdh_mng_rd<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    field: MdFieldId,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(tdr.hpa().as_u64(), field.into_raw(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MNG_RD.v0(), args) };
    Completion { status, out: o.r8 }
}

/// Outputs of a version-1 metadata read (TDH.MNG.RD, TDH.VP.RD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MetadataRead {
    /// R8: the element's value (0 on error).
    pub value: u64,
    /// RDX: the ID of the next element the host may read in the same
    /// context, [`MdFieldId::NULL`] when there is none or on error; for a
    /// null input ID (status `TDX_METADATA_FIRST_FIELD_ID_IN_CONTEXT`), the
    /// first one. Within a field the module advances the caller's ID (its
    /// size code and other bits kept); moving to another field it returns
    /// that field's own ID: compare with [`MdFieldId::same_field`].
    pub next: MdFieldId,
}

/// TDH.MNG.RD (11), version 1: read a TD-scope metadata field and learn
/// the next readable one.
///
/// RCX = TDR, RDX = field ID; out R8 = value, RDX = next field ID (-1 at
/// the end and on every error but the null-ID case). Module 1.5.01 and
/// later accept version 1 (`tdh_mng_rd_wr.c`).
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.MNG.RD")]
#[inline]
pub unsafe fn tdh_mng_rd_v1<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    field: MdFieldId,
) -> Completion<MetadataRead> {
    let args = SeamcallArgs::regs6(tdr.hpa().as_u64(), field.into_raw(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MNG_RD.v(1), args) };
    Completion {
        status,
        out: MetadataRead {
            value: o.r8,
            next: MdFieldId::from_raw(o.rdx),
        },
    }
}

/// TDH.MNG.WR (13): write a TD-scope metadata field under a write mask.
///
/// RCX = TDR, RDX = field ID, R8 = value, R9 = write mask; out R8 = the
/// field's previous value, masked (module 1.5 `tdh_mng_rd_wr`; not in
/// Linux, which never writes TD-scope fields).
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.MNG.WR")]
#[inline]
pub unsafe fn tdh_mng_wr<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    field: MdFieldId,
    value: u64,
    mask: u64,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(tdr.hpa().as_u64(), field.into_raw(), value, mask, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MNG_WR.v0(), args) };
    Completion { status, out: o.r8 }
}

/// TDH.MNG.VPFLUSHDONE (19): check that no vCPU is associated any more and
/// start the TD's teardown (HKID state FLUSHED).
///
/// RCX = TDR. `TDX_FLUSHVP_NOT_DONE` while a vCPU is still associated.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MNG.VPFLUSHDONE")]
#[inline]
pub unsafe fn tdh_mng_vpflushdone<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_VPFLUSHDONE.v0(), args) }
}

/// TDH.MNG.KEY.FREEID (20): free the TD's HKID after TDH.PHYMEM.CACHE.WB ran
/// on every package.
///
/// RCX = TDR.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MNG.KEY.FREEID")]
#[inline]
pub unsafe fn tdh_mng_key_freeid<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_KEY_FREEID.v0(), args) }
}

/// TDH.MNG.KEY.RECLAIMID (27): a no-op that returns success in module 1.5.
///
/// RCX = TDR.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MNG.KEY.RECLAIMID")]
#[inline]
pub unsafe fn tdh_mng_key_reclaimid<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MNG_KEY_RECLAIMID.v0(), args) }
}

/// TDH.MR.EXTEND (16): extend MRTD with a 256-byte chunk of TD memory.
///
/// RCX = GPA (256-byte aligned), RDX = TDR; out RCX, RDX = S-EPT details
/// on a walk error.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.MR.EXTEND")]
#[inline]
pub unsafe fn tdh_mr_extend<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    gpa: Gpa,
) -> Completion<SeptDetails> {
    let args = SeamcallArgs::regs6(gpa.as_u64(), tdr.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MR_EXTEND.v0(), args) };
    Completion {
        status,
        out: SeptDetails::from_regs(o.rcx, o.rdx),
    }
}

/// TDH.MR.FINALIZE (17): finalize MRTD; the TD becomes runnable.
///
/// RCX = TDR.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MR.FINALIZE")]
#[inline]
pub unsafe fn tdh_mr_finalize<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MR_FINALIZE.v0(), args) }
}

/// TDH.VP.CREATE (10): make `tdvpr` the root page of a new vCPU of the TD.
///
/// RCX = TDVPR page, RDX = TDR.
///
/// # Safety
///
/// Crate-level contract; `tdvpr` is handed to the module.
#[doc(alias = "TDH.VP.CREATE")]
#[inline]
pub unsafe fn tdh_vp_create<B: Seamcall + ?Sized>(b: &B, tdvpr: Pfn, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), tdr.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_CREATE.v0(), args) }
}

/// TDH.VP.ADDCX (4): add a TDCX page to a vCPU.
///
/// RCX = TDCX page, RDX = TDVPR.
///
/// # Safety
///
/// Crate-level contract; `tdcx` is handed to the module.
#[doc(alias = "TDH.VP.ADDCX")]
#[inline]
pub unsafe fn tdh_vp_addcx<B: Seamcall + ?Sized>(b: &B, tdcx: Pfn, tdvpr: Pfn) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdcx.hpa().as_u64(), tdvpr.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_ADDCX.v0(), args) }
}

/// TDH.VP.INIT (22), version 1: initialize a vCPU with its x2APIC ID, as
/// Linux does.
///
/// RCX = TDVPR, RDX = initial guest RCX, R8 = x2APIC ID. The vCPU becomes
/// associated with the calling logical processor.
///
/// Only modules with topology enumeration (TDX_FEATURES0.TOPOLOGY_ENUM,
/// bit 20; module 1.5.05 has it) take version 1. Module 1.5.01's dispatcher
/// refuses it with `TDX_OPERAND_INVALID|RAX`: use [`tdh_vp_init_v0`] there.
///
/// # Safety
///
/// Crate-level contract; runs on the logical processor the vCPU is to be
/// associated with.
#[doc(alias = "TDH.VP.INIT")]
#[inline]
pub unsafe fn tdh_vp_init<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    initial_rcx: u64,
    x2apic_id: u32,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), initial_rcx, x2apic_id.into(), 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_INIT.v(1), args) }
}

/// TDH.VP.INIT (22), version 0: RCX = TDVPR, RDX = initial guest RCX.
/// Every module takes it; the module chooses the vCPU's x2APIC ID.
///
/// # Safety
///
/// As [`tdh_vp_init`].
#[doc(alias = "TDH.VP.INIT")]
#[inline]
pub unsafe fn tdh_vp_init_v0<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    initial_rcx: u64,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), initial_rcx, 0, 0, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_INIT.v0(), args) }
}

/// TDH.VP.RD (26), version 0: read a vCPU-scope metadata field.
///
/// RCX = TDVPR, RDX = field ID; out R8 = value. The vCPU must be
/// initialized and not associated with another logical processor; the
/// leaf associates it with the calling one (even when the read then
/// fails), so a vCPU read must run where the vCPU runs.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory; it runs on the
/// logical processor the vCPU is (to be) associated with.
#[doc(alias = "TDH.VP.RD")]
#[inline]
pub unsafe fn tdh_vp_rd<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    field: MdFieldId,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), field.into_raw(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::VP_RD.v0(), args) };
    Completion { status, out: o.r8 }
}

/// TDH.VP.RD (26), version 1: [`tdh_vp_rd`] that also returns the next
/// readable field's ID in RDX (as [`tdh_mng_rd_v1`]).
///
/// # Safety
///
/// As [`tdh_vp_rd`].
#[doc(alias = "TDH.VP.RD")]
#[inline]
pub unsafe fn tdh_vp_rd_v1<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    field: MdFieldId,
) -> Completion<MetadataRead> {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), field.into_raw(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::VP_RD.v(1), args) };
    Completion {
        status,
        out: MetadataRead {
            value: o.r8,
            next: MdFieldId::from_raw(o.rdx),
        },
    }
}

/// TDH.VP.WR (43): write a vCPU-scope metadata field under a write mask.
///
/// RCX = TDVPR, RDX = field ID, R8 = value, R9 = write mask. Linux issues
/// it without outputs.
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.VP.WR")]
#[inline]
pub unsafe fn tdh_vp_wr<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    field: MdFieldId,
    value: u64,
    mask: u64,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(tdvpr.hpa().as_u64(), field.into_raw(), value, mask, 0, 0);
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_WR.v0(), args) }
}

/// TDH.VP.FLUSH (18): flush a vCPU's state from the calling logical
/// processor and dissociate it.
///
/// RCX = TDVPR. `TDX_VCPU_NOT_ASSOCIATED` when the vCPU is not associated
/// with this logical processor.
///
/// # Safety
///
/// Crate-level contract; runs on the logical processor the vCPU is
/// associated with.
#[doc(alias = "TDH.VP.FLUSH")]
#[inline]
pub unsafe fn tdh_vp_flush<B: Seamcall + ?Sized>(b: &B, tdvpr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdvpr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::VP_FLUSH.v0(), args) }
}

/// TDH.VP.ENTER (0): run a vCPU until it exits.
///
/// RCX = TDVPR (set from `tdvpr`); every other register of `regs` is an
/// input (the values a TDVMCALL returns to the guest) and every register is
/// an output (exit qualification, GPA, TDVMCALL arguments, ...). The status
/// is the exit reason or an error.
///
/// # Safety
///
/// Crate-level contract; additionally, the caller has done the host-state
/// work around a TD entry that the module does not do (interrupts,
/// extended-state and debug registers as the platform requires).
#[doc(alias = "TDH.VP.ENTER")]
#[inline]
pub unsafe fn tdh_vp_enter<B: Seamcall + ?Sized>(
    b: &B,
    tdvpr: Pfn,
    regs: &mut SeamcallArgs,
) -> TdxStatus {
    regs.rcx = tdvpr.hpa().as_u64();
    // SAFETY: caller's contract.
    unsafe { call(b, Leaf::VP_ENTER.v0(), RegShape::SavedRet, regs) }
}
