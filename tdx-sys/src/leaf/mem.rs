//! Secure-EPT and private-memory leaves: TDH.MEM.*.

// UNSAFETY: raw leaf functions (see the parent module).
#![allow(unsafe_code)]

use tdx_types::{
    Leaf, Pfn, TdxStatus,
    regs::{PAMT_REMOVAL_HINT, PageInfo, SeptDetails, TdrAndFlags},
};

use super::{Completion, call, call_no_outputs, call_ret};
use crate::args::{RegShape, Seamcall, SeamcallArgs};

/// RCX and RDX as a TDH.MEM.* leaf returns them.
///
/// On a walk or state error they are the S-EPT details ([`SeptOut::details`]).
/// On success, TDH.MEM.PAGE.REMOVE and TDH.MEM.SEPT.REMOVE return the page
/// they removed, and TDH.MEM.PAGE.PROMOTE the S-EPT page it freed, in RCX
/// ([`SeptOut::removed`]); other leaves return zeros. With Dynamic PAMT
/// (module 1.5.16+) that RCX may also carry the removal hint, bit 62
/// ([`SeptOut::pamt_removal_hint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeptOut {
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
}

impl SeptOut {
    /// RCX/RDX read as S-EPT extended error information.
    pub const fn details(self) -> SeptDetails {
        SeptDetails::from_regs(self.rcx, self.rdx)
    }

    /// RCX read as the host physical address of a removed page (REMOVE
    /// leaves and PROMOTE, on success), or `None` if it is not a page
    /// address. The Dynamic PAMT removal hint (bit 62) is masked off first.
    pub const fn removed(self) -> Option<Pfn> {
        match tdx_types::Hpa::try_new_aligned(self.rcx & !PAMT_REMOVAL_HINT, 4096) {
            Ok(hpa) => Some(hpa.pfn()),
            Err(_) => None,
        }
    }

    /// Dynamic PAMT (module 1.5.16+): on success of TDH.MEM.PAGE.REMOVE,
    /// TDH.MEM.SEPT.REMOVE or TDH.MEM.PAGE.PROMOTE, true if the page in
    /// RCX was the last 4K module page of its 2 MiB range
    /// ([`PAMT_REMOVAL_HINT`]; `tdh_mem_page_remove.c`,
    /// `tdh_mem_sept_remove.c`, `tdh_mem_page_promote.c`). Meaningless on
    /// an error (RCX holds S-EPT details then).
    pub const fn pamt_removal_hint(self) -> bool {
        self.rcx & PAMT_REMOVAL_HINT != 0
    }
}

/// Issues a TDH.MEM.* leaf that takes RCX = page info, RDX = TDR or flags,
/// R8 = page, and returns RCX/RDX.
///
/// # Safety
///
/// The crate-level contract for `leaf` and its operands.
#[inline(always)]
unsafe fn mem_leaf<B: Seamcall + ?Sized>(
    b: &B,
    leaf: tdx_types::LeafVersion,
    rcx: u64,
    rdx: u64,
    r8: u64,
) -> Completion<SeptOut> {
    let args = SeamcallArgs::regs6(rcx, rdx, r8, 0, 0, 0);
    // SAFETY: forwarded from this function's own contract.
    let (status, o) = unsafe { call_ret(b, leaf, args) };
    Completion {
        status,
        out: SeptOut {
            rcx: o.rcx,
            rdx: o.rdx,
        },
    }
}

/// TDH.MEM.SEPT.ADD (3), version 0: add an S-EPT page below the entry at
/// `info` (the level of the entry that will point to the new page).
///
/// RCX = GPA | level, RDX = TDR | allow_existing (bit 0), R8 = new S-EPT
/// page. Out: RCX/RDX = S-EPT details on error.
///
/// # Safety
///
/// Crate-level contract; `sept` is handed to the module (unless the entry
/// already exists and `allow_existing` is set, in which case the module
/// leaves it alone; the caller learns which from the status).
#[doc(alias = "TDH.MEM.SEPT.ADD")]
#[inline]
pub unsafe fn tdh_mem_sept_add<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: TdrAndFlags,
    sept: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_SEPT_ADD.v0(),
            info.into_bits(),
            tdr.into_bits(),
            sept.hpa().as_u64(),
        )
    }
}

/// Outputs of TDH.MEM.SEPT.ADD version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeptAddV1Out {
    /// RCX/RDX.
    pub sept: SeptOut,
    /// R8..R11 as `tdh_mem_sept_add.c` writes them back: -1 where no page
    /// was given or the module took the page; the page with bit 63 set
    /// ([`SEPT_ADD_PAGE_UNUSED`]) where the entry already existed and
    /// `allow_existing` made it unneeded; otherwise (an error stopped the
    /// call before the module took it) the page with bit 63 clear.
    pub pages: [u64; 4],
}

/// Bit 63 of a page operand of TDH.MEM.SEPT.ADD v1 on return: "not used,
/// the entry already existed". A page an error kept from the module comes
/// back with bit 63 clear; a page the module took comes back as -1.
pub const SEPT_ADD_PAGE_UNUSED: u64 = 1 << 63;

/// TDH.MEM.SEPT.ADD (3), version 1: add the L1 S-EPT page and up to three
/// L2 S-EPT pages in one call.
///
/// R8 = L1 page, R9-R11 = L2 pages; `None` is passed as -1 ("none"). May
/// return `TDX_INTERRUPTED_RESUMABLE`; reissue the same call (with
/// allow_existing, pages already added are skipped).
///
/// # Safety
///
/// Crate-level contract; a page given is handed to the module exactly when
/// the returned value for it is -1 (on success or on
/// `TDX_INTERRUPTED_RESUMABLE`); any other returned value means the module
/// did not take it.
#[doc(alias = "TDH.MEM.SEPT.ADD")]
#[inline]
pub unsafe fn tdh_mem_sept_add_v1<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: TdrAndFlags,
    pages: [Option<Pfn>; 4],
) -> Completion<SeptAddV1Out> {
    let reg = |p: Option<Pfn>| p.map_or(u64::MAX, |p| p.hpa().as_u64());
    let args = SeamcallArgs::regs6(
        info.into_bits(),
        tdr.into_bits(),
        reg(pages[0]),
        reg(pages[1]),
        reg(pages[2]),
        reg(pages[3]),
    );
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MEM_SEPT_ADD.v(1), args) };
    Completion {
        status,
        out: SeptAddV1Out {
            sept: SeptOut {
                rcx: o.rcx,
                rdx: o.rdx,
            },
            pages: [o.r8, o.r9, o.r10, o.r11],
        },
    }
}

/// TDH.MEM.SEPT.REMOVE (30): remove an empty S-EPT page below the entry at
/// `info`.
///
/// RCX = GPA | level (1..=pwl), RDX = TDR. Out: RCX = the removed S-EPT page
/// on success; S-EPT details on error.
///
/// # Safety
///
/// Crate-level contract; the returned page comes back to the host only
/// after the flushes the ABI prescribes.
#[doc(alias = "TDH.MEM.SEPT.REMOVE")]
#[inline]
pub unsafe fn tdh_mem_sept_remove<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_SEPT_REMOVE.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            0,
        )
    }
}

/// TDH.MEM.SEPT.RD (25): read an S-EPT entry.
///
/// RCX = GPA | level, RDX = TDR. Out: RCX = the entry, RDX = level and
/// state (the same layout as S-EPT error details).
///
/// # Safety
///
/// Crate-level contract. The leaf touches no host memory.
#[doc(alias = "TDH.MEM.SEPT.RD")]
#[inline]
pub unsafe fn tdh_mem_sept_rd<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_SEPT_RD.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            0,
        )
    }
}

/// TDH.MEM.PAGE.ADD (2): copy `source` into the private page `page`, map it
/// at `info` (level 0 only) and measure it into MRTD (the GPA, not the
/// contents).
///
/// RCX = GPA, RDX = TDR, R8 = target page, R9 = source page (shared).
///
/// # Safety
///
/// Crate-level contract; `page` is handed to the TD, and `source` is host
/// memory the module reads during the call.
#[doc(alias = "TDH.MEM.PAGE.ADD")]
#[inline]
pub unsafe fn tdh_mem_page_add<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
    page: Pfn,
    source: Pfn,
) -> Completion<SeptOut> {
    let args = SeamcallArgs::regs6(
        info.into_bits(),
        tdr.hpa().as_u64(),
        page.hpa().as_u64(),
        source.hpa().as_u64(),
        0,
        0,
    );
    // SAFETY: caller's contract.
    let (status, o) = unsafe { call_ret(b, Leaf::MEM_PAGE_ADD.v0(), args) };
    Completion {
        status,
        out: SeptOut {
            rcx: o.rcx,
            rdx: o.rdx,
        },
    }
}

/// TDH.MEM.PAGE.AUG (6): map `page` (aligned to the level's size) at `info`
/// as a pending private page the guest must accept.
///
/// RCX = GPA | level, RDX = TDR, R8 = page.
///
/// # Safety
///
/// Crate-level contract; the whole page (4 KiB, 2 MiB or 1 GiB from `page`
/// on) is handed to the TD.
#[doc(alias = "TDH.MEM.PAGE.AUG")]
#[inline]
pub unsafe fn tdh_mem_page_aug<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
    page: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_PAGE_AUG.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            page.hpa().as_u64(),
        )
    }
}

/// TDH.MEM.RANGE.BLOCK (7): block the S-EPT entry at `info`; stamps the
/// TLB epoch. `TDX_GPA_RANGE_ALREADY_BLOCKED` (not an error) if it was.
///
/// RCX = GPA | level, RDX = TDR.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MEM.RANGE.BLOCK")]
#[inline]
pub unsafe fn tdh_mem_range_block<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_RANGE_BLOCK.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            0,
        )
    }
}

/// TDH.MEM.RANGE.UNBLOCK (39): undo a block once the epoch is tracked.
///
/// RCX = GPA | level, RDX = TDR.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MEM.RANGE.UNBLOCK")]
#[inline]
pub unsafe fn tdh_mem_range_unblock<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_RANGE_UNBLOCK.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            0,
        )
    }
}

/// TDH.MEM.TRACK (38): advance the TD's TLB epoch.
///
/// RCX = TDR. The host must then make every logical processor running the
/// TD exit before it removes blocked pages.
///
/// # Safety
///
/// Crate-level contract.
#[doc(alias = "TDH.MEM.TRACK")]
#[inline]
pub unsafe fn tdh_mem_track<B: Seamcall + ?Sized>(b: &B, tdr: Pfn) -> TdxStatus {
    let args = SeamcallArgs {
        rcx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    unsafe { call_no_outputs(b, Leaf::MEM_TRACK.v0(), args) }
}

/// TDH.MEM.PAGE.REMOVE (29): unmap a private page (blocked and tracked once
/// the TD runs).
///
/// RCX = GPA | level, RDX = TDR. Out: RCX = the removed page on success;
/// S-EPT details on error.
///
/// # Safety
///
/// Crate-level contract; the removed page comes back to the host only after
/// TDH.PHYMEM.PAGE.WBINVD with the TD's KeyID (and the partial-write
/// erratum clearing where it applies).
#[doc(alias = "TDH.MEM.PAGE.REMOVE")]
#[inline]
pub unsafe fn tdh_mem_page_remove<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    unsafe {
        mem_leaf(
            b,
            Leaf::MEM_PAGE_REMOVE.v0(),
            info.into_bits(),
            tdr.hpa().as_u64(),
            0,
        )
    }
}

/// TDH.MEM.PAGE.DEMOTE (15), module 1.5 form: split the 2 MiB or 1 GiB page
/// at `info` into 512 smaller ones, using `sept` as the new S-EPT page.
///
/// RCX = GPA | level, RDX = TDR, R8 = new S-EPT page (module 1.5.01
/// handler signature; the 2.0 tree passes TDR | flags in RDX instead). On a
/// module with Dynamic PAMT enabled a 2M→4K demote also needs the new PAMT
/// page pair in R12/R13: use [`tdh_mem_page_demote_pair`]. This form is
/// issued in the all-register shape with R12/R13 = 0 (and R9-R11 = NULL_PA,
/// no L2 S-EPT pages), so such a module reads "no pair" and refuses the
/// split rather than reading whatever the registers held.
///
/// # Safety
///
/// Crate-level contract; `sept` is handed to the module.
#[doc(alias = "TDH.MEM.PAGE.DEMOTE")]
#[inline]
pub unsafe fn tdh_mem_page_demote<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
    sept: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract; R12/R13 = 0 (no pair).
    unsafe { demote(b, info, tdr, sept, [0, 0]) }
}

/// TDH.MEM.PAGE.DEMOTE in the all-register shape with R12/R13 = `r12_r13`.
///
/// # Safety
///
/// As [`tdh_mem_page_demote_pair`].
#[inline]
unsafe fn demote<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
    sept: Pfn,
    r12_r13: [u64; 2],
) -> Completion<SeptOut> {
    let mut args = SeamcallArgs {
        rcx: info.into_bits(),
        rdx: tdr.hpa().as_u64(),
        r8: sept.hpa().as_u64(),
        // No L2 S-EPT pages (NULL_PA).
        r9: u64::MAX,
        r10: u64::MAX,
        r11: u64::MAX,
        r12: r12_r13[0],
        r13: r12_r13[1],
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let status = unsafe { call(b, Leaf::MEM_PAGE_DEMOTE.v0(), RegShape::SavedRet, &mut args) };
    Completion {
        status,
        out: SeptOut {
            rcx: args.rcx,
            rdx: args.rdx,
        },
    }
}

/// TDH.MEM.PAGE.DEMOTE (15) on a module with Dynamic PAMT enabled (Intel
/// TDX module 1.5.16+, `tdh_mem_page_demote.c`, `pamt_manager.c`
/// `pamt_demote`): as [`tdh_mem_page_demote`], plus R12/R13 = the PAMT
/// page pair of the 2 MiB range being split (`pair`, level-1 demote only;
/// ignored for a 1G demote, and by a module without Dynamic PAMT).
///
/// The new S-EPT page (R8) needs a pair for its own range
/// (`TDX_MISSING_PAMT_PAGE_PAIR|R8`). The pair's checks come after it:
/// `OPERAND_INVALID`, `OPERAND_ADDR_RANGE_ERROR`, `OPERAND_BUSY`,
/// `PAGE_NOT_FREE` with operand R12 or R13. On success the range has the
/// pair with all 512 pages counted. Issued in the all-register shape
/// (R12/R13 are inputs).
///
/// # Safety
///
/// Crate-level contract; `sept` and (for a 2M demote, on success) both pair
/// pages are handed to the module.
#[doc(alias = "TDH.MEM.PAGE.DEMOTE")]
#[inline]
pub unsafe fn tdh_mem_page_demote_pair<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
    sept: Pfn,
    pair: [Pfn; 2],
) -> Completion<SeptOut> {
    let pair = pair.map(|p| p.hpa().as_u64());
    // SAFETY: caller's contract.
    unsafe { demote(b, info, tdr, sept, pair) }
}

/// Outputs of [`tdh_mem_page_promote_pair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PromoteOut {
    /// RCX/RDX: the freed S-EPT page (with the removal hint) on success,
    /// S-EPT details on error.
    pub sept: SeptOut,
    /// R12/R13 on success of a 4K→2M promote with Dynamic PAMT: the PAMT
    /// page pair of the merged range, which the module gives back without
    /// TDH.PHYMEM.PAMT.REMOVE (`tdh_mem_page_promote.c`). `None` when R12
    /// is 0 (no pair returned: another level, no Dynamic PAMT, an error).
    pub pair: Option<[Pfn; 2]>,
}

/// TDH.MEM.PAGE.PROMOTE (23) in the all-register shape, for a module with
/// Dynamic PAMT enabled (Intel TDX module 1.5.16+): as
/// [`tdh_mem_page_promote`], and a 4K→2M promote also returns the range's
/// PAMT page pair in R12/R13 ([`PromoteOut::pair`]). R12/R13 are passed as
/// 0 so that a module that writes nothing there reads as "no pair".
///
/// # Safety
///
/// As [`tdh_mem_page_promote`]; the returned pair pages also come back to
/// the host, with the same cache rule as after TDH.PHYMEM.PAMT.REMOVE
/// ([`tdh_phymem_pamt_remove`](super::tdh_phymem_pamt_remove)).
#[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
#[inline]
pub unsafe fn tdh_mem_page_promote_pair<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<PromoteOut> {
    let mut args = SeamcallArgs {
        rcx: info.into_bits(),
        rdx: tdr.hpa().as_u64(),
        ..SeamcallArgs::ZERO
    };
    // SAFETY: caller's contract.
    let status = unsafe {
        call(
            b,
            Leaf::MEM_PAGE_PROMOTE.v0(),
            RegShape::SavedRet,
            &mut args,
        )
    };
    let page = |r: u64| {
        tdx_types::Hpa::try_new_aligned(r, 4096)
            .ok()
            .map(|h| h.pfn())
    };
    let pair = match (args.r12, page(args.r12), page(args.r13)) {
        (0, _, _) => None,
        (_, Some(p0), Some(p1)) => Some([p0, p1]),
        _ => None,
    };
    Completion {
        status,
        out: PromoteOut {
            sept: SeptOut {
                rcx: args.rcx,
                rdx: args.rdx,
            },
            pair,
        },
    }
}

/// TDH.MEM.PAGE.PROMOTE (23): merge 512 pages below the entry at `info`
/// into one page of that level, freeing the S-EPT page that mapped them.
///
/// RCX = GPA | level, RDX = TDR (module 1.5.01 handler signature). RCX/RDX
/// are returned raw: S-EPT details on error; on success RCX is the freed
/// S-EPT page (`tdh_mem_page_promote.c`), with Dynamic PAMT ORed with the
/// removal hint ([`SeptOut::removed`] masks it). On a module with Dynamic
/// PAMT enabled a 4K→2M promote also returns the range's PAMT pair in
/// R12/R13 ([`tdh_mem_page_promote_pair`] returns it). This form is the
/// same call, and drops that pair: on such a module use the `_pair` form,
/// or the pair's two pages are lost to the host.
///
/// Issued in the all-register shape, so the registers the module writes
/// (R12/R13 here) are outputs: a narrower shape would let the module
/// change registers the compiled caller keeps values in. (Found by running
/// every leaf through the real instruction against the simulator.)
///
/// # Safety
///
/// Crate-level contract; the freed S-EPT page comes back to the host only
/// after the flushes the ABI prescribes.
#[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
#[inline]
pub unsafe fn tdh_mem_page_promote<B: Seamcall + ?Sized>(
    b: &B,
    info: PageInfo,
    tdr: Pfn,
) -> Completion<SeptOut> {
    // SAFETY: caller's contract.
    let c = unsafe { tdh_mem_page_promote_pair(b, info, tdr) };
    Completion {
        status: c.status,
        out: c.out.sept,
    }
}
