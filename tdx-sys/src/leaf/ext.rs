//! Extension leaves (module Extensions, DICE quoting, TDX Connect) and the
//! P-SEAMLDR calls.
//!
//! The extension leaves come from 2026 patch series on the kernel mailing
//! lists, not from module 1.5: "Enable DICE-based TDX Quoting Extension"
//! v2 (2026-06-18) for TDH.EXT.* and TDH.QUOTE.*, and "PCI/TSM: PCIe Link
//! Encryption Establishment via TDX platform services" v2 (Xu Yilun,
//! 2026-03-28) for TDH.EXT.* and the TDX Connect leaves; their merge status
//! is open. The P-SEAMLDR calls are Linux's
//! (`arch/x86/virt/vmx/tdx/seamldr.c`).

// UNSAFETY: raw leaf functions (see the parent module).
#![allow(unsafe_code)]

use tdx_types::{
    Hpa, Leaf, Pfn, TdxStatus,
    leaf::SeamldrLeaf,
    regs::{HpaArrayT, HpaListInfo},
};

use super::{Completion, call_no_outputs, call_ret};
use crate::args::{RegShape, Seamcall, SeamcallArgs};

/// TDH.EXT.MEM.ADD (61): donate up to 512 pages, listed in a list page, to
/// the module's extension memory pool.
///
/// RCX = HPA_LIST_INFO; out RCX = the updated HPA_LIST_INFO. On
/// `TDX_INTERRUPTED_RESUMABLE`, issue the call again with the returned value
/// (its FIRST_ENTRY says where to resume).
///
/// # Safety
///
/// Crate-level contract; every page in the list's window is handed to the
/// module for good, and the list page is host memory the module reads
/// during the call.
#[doc(alias = "TDH.EXT.MEM.ADD")]
#[inline]
pub unsafe fn tdh_ext_mem_add<B: Seamcall + ?Sized>(
    b: &B,
    list: HpaListInfo,
) -> Completion<HpaListInfo> {
    let args = SeamcallArgs {
        rcx: list.into_bits(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::EXT_MEM_ADD.v0(), args) };
    Completion {
        status,
        out: HpaListInfo::from_bits(o.rcx),
    }
}

/// TDH.EXT.INIT (60): initialize the module Extensions. Repeat while it
/// answers `TDX_INTERRUPTED_RESUMABLE`.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.EXT.INIT")]
#[inline]
pub unsafe fn tdh_ext_init<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::EXT_INIT.v0(), SeamcallArgs::ZERO) }
}

/// TDH.QUOTE.INIT (100): initialize the DICE quoting extension (also
/// re-keys after a runtime update). Repeat while interrupted.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.QUOTE.INIT")]
#[inline]
pub unsafe fn tdh_quote_init<B: Seamcall + ?Sized>(b: &B) -> TdxStatus {
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::QUOTE_INIT.v0(), SeamcallArgs::ZERO) }
}

/// The quote format that means "the module's default" (all ones).
pub const QUOTE_ID_DEFAULT: u16 = u16::MAX;

/// TDH.QUOTE.GET (98): produce a quote for a TD.
///
/// RCX = TDR, RDX bits 47:32 = quote format ID, R8 = input data (page
/// aligned), R9 = its length, R10 = first node of an HPA_LINKED_LIST
/// buffer, R11 = total buffer bytes; out RCX = quote length.
///
/// # Safety
///
/// Crate-level contract; the input data and every buffer page of the linked
/// list are host memory the module reads or writes during the call.
#[doc(alias = "TDH.QUOTE.GET")]
#[inline]
pub unsafe fn tdh_quote_get<B: Seamcall + ?Sized>(
    b: &B,
    tdr: Pfn,
    quote_id: u16,
    input: Hpa,
    input_len: u64,
    buffer_list: Hpa,
    buffer_len: u64,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(
        tdr.hpa().as_u64(),
        u64::from(quote_id) << 32,
        input.as_u64(),
        input_len,
        buffer_list.as_u64(),
        buffer_len,
    );
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::QUOTE_GET.v0(), args) };
    Completion { status, out: o.rcx }
}

/// TDH.IOMMU.SETUP (128, TDX Connect): put one IOMMU under the module.
///
/// RCX = the IOMMU's register base (VTBAR), RDX = root page of its IOMMU
/// metadata pages (HPA list); out RCX = the IOMMU ID.
///
/// # Safety
///
/// Crate-level contract; the metadata pages are handed to the module.
#[doc(alias = "TDH.IOMMU.SETUP")]
#[inline]
pub unsafe fn tdh_iommu_setup<B: Seamcall + ?Sized>(
    b: &B,
    vtbar: u64,
    iommu_mt_root: Pfn,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(vtbar, iommu_mt_root.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::IOMMU_SETUP.v0(), args) };
    Completion { status, out: o.rcx }
}

/// TDH.IOMMU.CLEAR (129, TDX Connect): release an IOMMU.
///
/// RCX = IOMMU ID, RDX = root page of its metadata pages.
///
/// # Safety
///
/// Crate-level contract; the metadata pages come back only after the
/// flushes the ABI prescribes.
#[doc(alias = "TDH.IOMMU.CLEAR")]
#[inline]
pub unsafe fn tdh_iommu_clear<B: Seamcall + ?Sized>(
    b: &B,
    iommu_id: u64,
    iommu_mt_root: Pfn,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(iommu_id, iommu_mt_root.hpa().as_u64(), 0, 0, 0, 0);
    // SAFETY: caller's contract.
    let (status, _) = unsafe { call_ret(b, Leaf::IOMMU_CLEAR.v0(), args) };
    status
}

/// TDH.SPDM.MNG (144, TDX Connect): one SPDM management operation.
///
/// RCX = SPDM session ID, RDX = operation, R8 = parameter page (or `None`,
/// passed as -1), R9 = response page, R10 = request page, R11 = HPA_ARRAY_T
/// of device-info pages (or `None`, -1); out RCX = response length.
///
/// # Safety
///
/// Crate-level contract; the parameter, request and response pages and the
/// device-info pages are host memory the module reads or writes during the
/// call.
#[doc(alias = "TDH.SPDM.MNG")]
#[inline]
#[allow(clippy::too_many_arguments)] // one argument per register of the leaf
pub unsafe fn tdh_spdm_mng<B: Seamcall + ?Sized>(
    b: &B,
    spdm_id: u64,
    operation: u64,
    param: Option<Pfn>,
    response: Pfn,
    request: Pfn,
    dev_info: Option<HpaArrayT>,
) -> Completion<u64> {
    let args = SeamcallArgs::regs6(
        spdm_id,
        operation,
        param.map_or(u64::MAX, |p| p.hpa().as_u64()),
        response.hpa().as_u64(),
        request.hpa().as_u64(),
        dev_info.map_or(u64::MAX, HpaArrayT::into_bits),
    );
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::SPDM_MNG.v0(), args) };
    Completion { status, out: o.rcx }
}

/// P-SEAMLDR SEAMLDR.INFO: RCX = PA of the seamldr_info buffer.
///
/// # Safety
///
/// Crate-level contract; the buffer is host memory P-SEAMLDR writes during
/// the call. Linux serializes P-SEAMLDR calls system-wide and refuses them
/// on CPUs with the SEAMRET-invalidates-VMCS erratum.
#[doc(alias = "SEAMLDR.INFO")]
#[inline]
pub unsafe fn seamldr_info<B: Seamcall + ?Sized>(b: &B, info: Hpa) -> TdxStatus {
    let mut args = SeamcallArgs {
        rcx: info.as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { b.seamcall(SeamldrLeaf::INFO.rax(), &mut args, RegShape::NoOutputs) }
}

/// P-SEAMLDR SEAMLDR.INSTALL: RCX = PA of the 4096-byte seamldr_params.
///
/// # Safety
///
/// As [`seamldr_info`]; installing a module replaces the running one, so
/// the caller has shut it down first (TDH.SYS.SHUTDOWN).
#[doc(alias = "SEAMLDR.INSTALL")]
#[inline]
pub unsafe fn seamldr_install<B: Seamcall + ?Sized>(b: &B, params: Hpa) -> TdxStatus {
    let mut args = SeamcallArgs {
        rcx: params.as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { b.seamcall(SeamldrLeaf::INSTALL.rax(), &mut args, RegShape::NoOutputs) }
}
