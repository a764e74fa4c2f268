//! Physical-memory leaves: TDH.PHYMEM.*.

// UNSAFETY: raw leaf functions (see the parent module).
#![allow(unsafe_code)]

use tdx_types::{
    Leaf, LeafVersion, Pfn, TdxStatus,
    metadata::PamtPageType,
    regs::{HpaLevel, KeyedPa, PAMT_REMOVAL_HINT},
};

use super::{Completion, call_no_outputs, call_ret};
use crate::args::{Seamcall, SeamcallArgs};

/// What the module says about a page's PAMT entry (TDH.PHYMEM.PAGE.RECLAIM,
/// TDH.PHYMEM.PAGE.RDMD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageMetadata {
    /// RCX: the page type (PT_NDA, PT_RSVD, PT_REG, PT_TDR, ...). Bits above
    /// 7 are kept in [`PageMetadata::raw_type`].
    pub page_type: PamtPageType,
    /// RCX as returned.
    pub raw_type: u64,
    /// RDX: the owner (the TDR's physical address; 0 for a TDR).
    pub owner: u64,
    /// R8: the page size (TDX level encoding; 0 = 4K, 1 = 2M, 2 = 1G).
    pub level: u64,
    /// TDH.PHYMEM.PAGE.RECLAIM with Dynamic PAMT (module 1.5.16+): R9 is
    /// [`PAMT_REMOVAL_HINT`] when the reclaimed 4K page was the last module
    /// page of its 2 MiB range, else 0 (`tdh_phymem_page_reclaim.c`).
    /// Always false for RDMD (its R9 is the block epoch) and on a module
    /// without Dynamic PAMT.
    pub pamt_removal_hint: bool,
}

impl PageMetadata {
    fn from_regs(a: &SeamcallArgs, hint_in_r9: bool) -> Self {
        Self {
            page_type: PamtPageType(a.rcx as u8),
            raw_type: a.rcx,
            owner: a.rdx,
            level: a.r8,
            pamt_removal_hint: hint_in_r9 && a.r9 & PAMT_REMOVAL_HINT != 0,
        }
    }
}

/// TDH.PHYMEM.PAGE.RDMD (24): read a page's PAMT metadata.
///
/// RCX = page; out RCX = page type (RDX/R8 are decoded as for RECLAIM; the
/// references confirm only RCX for this leaf).
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.PHYMEM.PAGE.RDMD")]
#[inline]
pub unsafe fn tdh_phymem_page_rdmd<B: Seamcall + ?Sized>(
    b: &B,
    page: Pfn,
) -> Completion<PageMetadata> {
    // SAFETY: caller's contract.
    unsafe { page_metadata_leaf(b, Leaf::PHYMEM_PAGE_RDMD.v0(), page, false) }
}

/// TDH.PHYMEM.PAGE.RECLAIM (28): take a page back from a TD in teardown.
///
/// RCX = page; out RCX = page type, RDX = owner, R8 = size, and with
/// Dynamic PAMT R9 = the removal hint
/// ([`PageMetadata::pamt_removal_hint`]). The outputs are filled as soon as
/// the module read the PAMT entry, so they also describe the page on most
/// errors.
///
/// # Safety
///
/// Crate-level contract; the page comes back to the host only after the
/// flushes the ABI prescribes (the TDR: TDH.PHYMEM.PAGE.WBINVD with the
/// global KeyID).
#[doc(alias = "TDH.PHYMEM.PAGE.RECLAIM")]
#[inline]
pub unsafe fn tdh_phymem_page_reclaim<B: Seamcall + ?Sized>(
    b: &B,
    page: Pfn,
) -> Completion<PageMetadata> {
    // SAFETY: caller's contract.
    unsafe { page_metadata_leaf(b, Leaf::PHYMEM_PAGE_RECLAIM.v0(), page, true) }
}

/// Issues a leaf that takes RCX = page and returns its PAMT metadata in
/// RCX/RDX/R8 (RDMD, RECLAIM).
///
/// # Safety
///
/// The contract of the leaf `lv`.
#[inline]
unsafe fn page_metadata_leaf<B: Seamcall + ?Sized>(
    b: &B,
    lv: LeafVersion,
    page: Pfn,
    hint_in_r9: bool,
) -> Completion<PageMetadata> {
    let args = SeamcallArgs {
        rcx: page.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: the caller keeps the contract of `lv`.
    let (status, o) = unsafe { call_ret(b, lv, args) };
    Completion {
        status,
        out: PageMetadata::from_regs(&o, hint_in_r9),
    }
}

/// TDH.PHYMEM.CACHE.WB (40): write back and invalidate the cache lines of
/// every flushed HKID on this package.
///
/// RCX = 0 to start, 1 to resume after `TDX_INTERRUPTED_RESUMABLE`.
/// `TDX_NO_HKID_READY_TO_WBCACHE` (not an error) if nothing was waiting.
///
/// # Safety
///
/// Crate-level contract; a resume runs on the same package as the start.
#[doc(alias = "TDH.PHYMEM.CACHE.WB")]
#[inline]
pub unsafe fn tdh_phymem_cache_wb<B: Seamcall + ?Sized>(b: &B, resume: bool) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: resume.into(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::PHYMEM_CACHE_WB.v0(), args) }
}

/// TDH.PHYMEM.PAGE.WBINVD (41): write back and invalidate one page's cache
/// lines for one KeyID.
///
/// RCX = page | KeyID << KeyID shift. The page must already be free in the
/// PAMT (removed or reclaimed).
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.PHYMEM.PAGE.WBINVD")]
#[inline]
pub unsafe fn tdh_phymem_page_wbinvd<B: Seamcall + ?Sized>(b: &B, page: KeyedPa) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: page.into_bits(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::PHYMEM_PAGE_WBINVD.v0(), args) }
}

/// TDH.PHYMEM.PAMT.ADD (58, Dynamic PAMT, Intel TDX module 1.5.16+,
/// `tdh_phymem_pamt_add.c`): give the module the two pages that hold the
/// 4K PAMT entries of one 2 MiB range.
///
/// RCX = 2 MiB-aligned HPA | level 1 (2M), RDX = PAMT page 0 (the entries
/// of the range's first 1 MiB), R8 = PAMT page 1. The pages need not be
/// contiguous and may lie anywhere in initialized TDMR memory that is free
/// and not reserved, even inside the range itself. No outputs: RCX, RDX
/// and R8 keep their values on success and on failure. Errors, in the
/// module's order: Dynamic PAMT off (`OPERAND_INVALID|RAX`), RCX malformed
/// (`OPERAND_INVALID|RCX`), RDX / R8 malformed or outside the TDMRs
/// (`OPERAND_INVALID`, `OPERAND_ADDR_RANGE_ERROR`), the range outside the
/// TDMRs (`OPERAND_ADDR_RANGE_ERROR|RCX`), its entry locked
/// (`OPERAND_BUSY|RCX`), the range already has a pair or is a 2M/1G page
/// (`HPA_RANGE_NOT_FREE|RCX`), a page in use, reserved or already a PAMT
/// page (`PAGE_NOT_FREE|RDX` / `|R8`; the same page twice is
/// `PAGE_NOT_FREE|R8`).
///
/// # Safety
///
/// Crate-level contract; both pages are handed to the module until
/// TDH.PHYMEM.PAMT.REMOVE or TDH.MEM.PAGE.PROMOTE gives them back.
#[doc(alias = "TDH.PHYMEM.PAMT.ADD")]
#[inline]
pub unsafe fn tdh_phymem_pamt_add<B: Seamcall + ?Sized>(
    b: &B,
    range: HpaLevel,
    pamt0: Pfn,
    pamt1: Pfn,
) -> TdxStatus {
    let args = SeamcallArgs::regs6(
        range.into_bits(),
        pamt0.hpa().as_u64(),
        pamt1.hpa().as_u64(),
        0,
        0,
        0,
    );
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::PHYMEM_PAMT_ADD.v0(), args) }
}

/// TDH.PHYMEM.PAMT.REMOVE (59, Dynamic PAMT, Intel TDX module 1.5.16+,
/// `tdh_phymem_pamt_remove.c`): take back the two PAMT pages of a 2 MiB
/// range whose 4K entries are all free.
///
/// RCX = 2 MiB-aligned HPA | level 1; out RDX = page 0, R8 = page 1 (on
/// success only: on failure they are what the caller passed, here 0).
/// Errors: Dynamic PAMT off (`OPERAND_INVALID|RAX`), RCX malformed or
/// outside the TDMRs, the range's entry locked (`OPERAND_BUSY|RCX`), no
/// pair (`NO_PAMT_PAGE_PAIR|RCX`), a 4K entry of the pair in use
/// (`PAMT_PAGE_NOT_EMPTY` with operand 0 or 1: the pair page's index).
/// The module does not clear the pages.
///
/// The caller must not issue it while a SEAMCALL that takes a page of the
/// range back (PAGE.REMOVE, SEPT.REMOVE, PROMOTE) is still running: the
/// module does not exclude that race (a host's per-range count that drops
/// only after those SEAMCALLs return avoids it).
///
/// # Safety
///
/// Crate-level contract; the returned pages come back to the host. The
/// module wrote them under its global private KeyID and does not clear or
/// flush them: write their cache lines back (TDH.PHYMEM.PAGE.WBINVD with
/// the global KeyID, as for a TDR) before the host reuses them. The
/// simulator requires this; whether hardware does is UNCONFIRMED (Linux's
/// Dynamic PAMT v6 only resets them on CPUs with the partial-write
/// erratum).
#[doc(alias = "TDH.PHYMEM.PAMT.REMOVE")]
#[inline]
pub unsafe fn tdh_phymem_pamt_remove<B: Seamcall + ?Sized>(
    b: &B,
    range: HpaLevel,
) -> Completion<[u64; 2]> {
    let args = SeamcallArgs {
        rcx: range.into_bits(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::PHYMEM_PAMT_REMOVE.v0(), args) };
    Completion {
        status,
        out: [o.rdx, o.r8],
    }
}
