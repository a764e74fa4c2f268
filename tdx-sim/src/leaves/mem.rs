//! TDH.MEM.*: the Secure EPT and private pages
//! (`src/vmm_dispatcher/api_calls/tdh_mem_*.c`), and
//! the guest side of TDG.MEM.PAGE.ACCEPT
//! (`src/td_dispatcher/vm_exits/tdg_mem_page_accept.c`).
//!
//! Every leaf here except PAGE.ADD takes the TDR shared (explicitly, from
//! RDX, or RCX for TRACK) and the op state shared, then the S-EPT tree
//! lock shared (SEPT.ADD, SEPT.RD, AUG, REMOVE, DEMOTE, PROMOTE) or
//! exclusive (BLOCK, UNBLOCK, SEPT.REMOVE), then the host lock of the
//! target entry (`BUSY|RCX` with the entry's details). PAGE.ADD takes the
//! TDR exclusively instead and no tree or entry lock. Each leaf but TRACK
//! clears RCX/RDX when it starts, as the module does; the S-EPT details a
//! leaf writes there on an error are [`crate::sept::septe_arch`] and the
//! entry's level and state.

use sha2::Digest;
use tdx_sys::SeamcallArgs;
use tdx_types::{
    OperandId, TdxStatus,
    abi::MeasurementBlock,
    metadata::PamtPageType,
    regs::{SeptState, TdrAndFlags},
};

use super::{pinfo, tracked};
use crate::{
    dispatch::{Call, LeafResult, op},
    locks::{
        LockMode::{Exclusive, Shared},
        LockSide, Ordering,
    },
    memory::{ModuleUse, PAGE},
    pamt::PamtEntry,
    sept::{self, Septe, details, is_leaf_state, state_of, target_of, word},
    state::Shared as SimState,
    td::{OpState, Td},
};

fn state_incorrect(a: &mut SeamcallArgs, e: Option<Septe>, level: u8) -> TdxStatus {
    details(a, e, level);
    op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX)
}

fn pages_of(level: u8) -> u64 {
    1 << (9 * u32::from(level))
}

/// True if the TD may be running (the module's
/// `op_state_is_tlb_tracking_required`, among the states the model has).
fn running(td: &Td) -> bool {
    td.op_state() == OpState::Runnable
}

/// TD_PARAMS.ATTRIBUTES.DEBUG (bit 0).
const TD_ATTRIBUTES_DEBUG: u64 = 1;
/// NULL_PA (`x86_defs.h`): "no page" in a page operand.
const NULL_PA: u64 = u64::MAX;
/// Bit 63 of a page operand of SEPT.ADD v1 and DEMOTE.
const BIT63: u64 = 1 << 63;
/// Bits 11:1 and 63:52 of `td_handle_and_flags_t` (RDX of SEPT.ADD and
/// DEMOTE), reserved (`tdx_api_defs.h`).
const TD_HANDLE_RESERVED: u64 = 0xFFF0_0000_0000_0FFE;

/// RCX and RDX as the caller gave them; both cleared, as every TDH.MEM.*
/// leaf except TRACK does when it starts ("by default, no extended error
/// code is returned").
fn take_rcx_rdx(a: &mut SeamcallArgs) -> (u64, u64) {
    let r = (a.rcx, a.rdx);
    (a.rcx, a.rdx) = (0, 0);
    r
}

/// TDH.MEM.SEPT.ADD, versions 0 and 1 (`tdh_mem_sept_add.c`). Locks: TDR
/// S:RDX[51:12], op state S, tree S, the parent entry, the new page X:R8.
///
/// Version 1 adds R9..R11, one L2 S-EPT page per L2 VM, and lets R8 be
/// -1 when the L1 entry is already NL_MAPPED. On every path but a version
/// above 1 (refused by the dispatcher after clearing RCX/RDX, R8..R11
/// untouched), version 1 writes R8..R11 back as the module does: -1 for a
/// page given as -1 or taken by the module, the page with bit 63 set where
/// the entry already existed and `allow_existing` let the call succeed
/// without it, and otherwise the page with bit 63 cleared (every page an
/// error stopped the call from taking). Bit 63 of an input page is ignored.
///
/// Model limit: L2 S-EPT trees are not modelled, so an L2 page for an L2
/// VM the TD has is refused with `TDX_OPERAND_INVALID` on its register, as
/// the module refuses one for an L2 VM the TD does not have.
pub(crate) fn sept_add(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let v1 = c.version >= 1;
    // The pages given, bit 63 ignored; R9..R11 only in version 1.
    let mut pages = [a.r8, a.r9, a.r10, a.r11];
    if !v1 {
        pages[1..].fill(NULL_PA);
    }
    for p in &mut pages {
        if *p != NULL_PA {
            *p &= !BIT63;
        }
    }
    let mut flagged = pages;
    let status = sept_add_inner(c, a, pages, &mut flagged);
    if v1 {
        [a.r8, a.r9, a.r10, a.r11] = flagged;
    }
    status
}

fn sept_add_inner(
    c: &mut Call<'_>,
    a: &mut SeamcallArgs,
    pages: [u64; 4],
    flagged: &mut [u64; 4],
) -> LeafResult {
    let v1 = c.version >= 1;
    let (rcx, rdx) = take_rcx_rdx(a);
    let flags = TdrAndFlags::from_bits(rdx);
    if rdx & TD_HANDLE_RESERVED != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let td = c.tdr(flags.tdr_pfn() * PAGE, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let (gpa, level) = pinfo(rcx, 1, td.pwl())?;
    let slot = c.walk(td, gpa, level, Some(Shared), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    // `sept_state_is_seamcall_leaf_allowed`: FREE or NL_MAPPED.
    let existing = match e {
        None => false,
        Some(s) if s.state == SeptState::NL_MAPPED => true,
        Some(_) => return Err(state_incorrect(a, e, level)),
    };
    // process_l1_page.
    let mut new_page = None;
    if pages[0] == NULL_PA {
        // Decided before the FREE / NL_MAPPED distinction: allow_existing
        // does not make R8 = -1 acceptable in version 0.
        if !v1 {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
        }
        if !existing {
            return Err(state_incorrect(a, e, level));
        }
    } else if !existing {
        let pe = c.explicit(pages[0], OperandId::R8, 0, Exclusive, PamtPageType::NDA)?;
        new_page = Some(pe);
    } else if flags.allow_existing() {
        flagged[0] |= BIT63;
    } else {
        return Err(state_incorrect(a, e, level));
    }
    // process_l2_pages: each L2 page given must be for an L2 VM the TD
    // has (and, a model limit, L2 S-EPT pages are not modelled at all).
    if v1 {
        for (vm, o) in [(1, OperandId::R9), (2, OperandId::R10), (3, OperandId::R11)] {
            if pages[vm] != NULL_PA {
                return Err(op(TdxStatus::OPERAND_INVALID, o));
            }
        }
    }
    c.locked();
    if let Some(pe) = new_page {
        let page = pages[0] / PAGE;
        pe.set(PamtPageType::EPT, td.tdr());
        c.sim
            .mem
            .give_to_module(page, page + 1, ModuleUse::Td, td.hkid(), true);
        let child = td.sept.add_page(page);
        // The new entry stays locked until the leaf ends, as in the module.
        sept::write_locked(slot.word, word(SeptState::NL_MAPPED, child));
        td.chldcnt.add(c.lp, 1);
        c.pamt_count(pages[0], true);
        // The page is the module's: "nullified" in the outputs.
        flagged[0] = NULL_PA;
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.SEPT.REMOVE, versions 0 and 1 (`tdh_mem_sept_remove.c`).
/// Locks: TDR S:RDX, op state S, tree X, the parent entry, the removed
/// S-EPT page's PAMT entry (implicit X, `BUSY|RCX`).
///
/// Version 1 sets R9..R11 to -1 when it starts, on every path; on success
/// they would carry the removed L2 S-EPT pages of the L2 VMs the entry is
/// aliased for, and the simulator has no aliases. A page below that is not
/// FREE gives `TDX_EPT_PAGE_NOT_FREE|RCX` with the details of the parent
/// entry (the one being removed), not of the child.
pub(crate) fn sept_remove(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = take_rcx_rdx(a);
    if c.version >= 1 {
        (a.r9, a.r10, a.r11) = (NULL_PA, NULL_PA, NULL_PA);
    }
    let td = c.tdr(rdx, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let (gpa, level) = pinfo(rcx, 1, td.pwl())?;
    let slot = c.walk(td, gpa, level, Some(Exclusive), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    let Some(entry) = e.filter(|s| matches!(s.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED))
    else {
        return Err(state_incorrect(a, e, level));
    };
    let cur = slot.word.load(Ordering::Acquire);
    let pe = c.implicit(entry.pfn * PAGE, 0, Exclusive, OperandId::RCX)?;
    if running(td) {
        if entry.state != SeptState::NL_BLOCKED {
            details(a, e, level);
            return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
        }
        if !tracked(td, pe.bepoch()) {
            return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
        }
    }
    // All 512 entries of the child page must be free.
    if td
        .sept
        .children(cur)
        .iter()
        .any(|w| state_of(w.load(Ordering::Acquire)) != SeptState::FREE)
    {
        details(a, e, level);
        return Err(op(TdxStatus::EPT_PAGE_NOT_FREE, OperandId::RCX));
    }
    c.locked();
    sept::write_locked(slot.word, 0);
    td.sept.free_page(cur);
    td.chldcnt.add(c.lp, -1);
    pe.set(PamtPageType::NDA, 0);
    let hint = c.pamt_count(entry.pfn * PAGE, false);
    c.sim.mem.take_from_module(entry.pfn, entry.pfn + 1);
    a.rcx = (entry.pfn * PAGE) | hint;
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.SEPT.RD (`tdh_mem_sept_rd.c`). Locks: TDR S:RDX (bit 0
/// cleared), op state S, tree S, the entry.
///
/// RDX bit 0 asks for the entry's L2 attributes in R8 and is not part of
/// the TDR's address. It is allowed only for a DEBUG TD
/// (`TDX_OPERAND_INVALID|RDX` after the TDR and TDCS checks otherwise);
/// then R8 holds 16 bits of attributes per L2 VM the entry is aliased for,
/// which in the simulator (no L2 aliases) is 0. Every state, FREE
/// included, is read: RCX/RDX are the entry's details.
pub(crate) fn sept_rd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = take_rcx_rdx(a);
    let read_l2_attributes = rdx & 1 != 0;
    let td = c.tdr(rdx & !1, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    if read_l2_attributes && td.ctl().attributes & TD_ATTRIBUTES_DEBUG == 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let (gpa, level) = pinfo(rcx, 0, td.pwl())?;
    let slot = c.walk(td, gpa, level, Some(Shared), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    c.locked();
    if read_l2_attributes {
        a.r8 = 0;
    }
    details(a, e, level);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.PAGE.ADD (`tdh_mem_page_add.c`). Locks: TDR X:RDX (which makes the tree
/// the leaf's alone: no op-state, tree or entry lock), the new page X:R8.
pub(crate) fn page_add(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = (a.rcx, a.rdx);
    (a.rcx, a.rdx) = (0, 0);
    let td = c.tdr(rdx, OperandId::RDX, Exclusive)?;
    c.tdcs(td, None, &[OpState::Initialized])?;
    let (gpa, _) = pinfo(rcx, 0, 0)?;
    let slot = c.walk(td, gpa, 0, None, a)?;
    let e = td.sept.view(slot.value);
    if e.is_some() {
        return Err(state_incorrect(a, e, 0));
    }
    let s = c.sim;
    if !s.machine.shared_hpa_ok(a.r9, PAGE, PAGE) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R9));
    }
    let pe = c.explicit(a.r8, OperandId::R8, 0, Exclusive, PamtPageType::NDA)?;
    c.locked();
    let mut src = vec![0u8; PAGE as usize];
    s.module_read(a.r9, &mut src, "TDH.MEM.PAGE.ADD");
    let page = a.r8 / PAGE;
    pe.set(PamtPageType::REG, td.tdr());
    s.mem
        .give_to_module(page, page + 1, ModuleUse::Td, td.hkid(), true);
    s.mem.write(page * PAGE, &src);
    slot.word
        .store(word(SeptState::MAPPED, page), Ordering::Release);
    td.chldcnt.add(c.lp, 1);
    c.pamt_count(a.r8, true);
    if let Some(h) = &mut td.ctl().measurement {
        h.update(MeasurementBlock::page_add(gpa).as_bytes());
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.PAGE.AUG (`tdh_mem_page_aug.c`). Locks: TDR S:RDX, op state S, tree S,
/// the entry, the new page X:R8 at the mapping level (a 2M page: its 2M
/// PAMT entry; the 512 4K entries below are read without locks).
///
/// Module 1.5 maps 4K and 2M pages only (PINFO(0,1)); a 1G mapping is
/// built by PROMOTE. With Dynamic PAMT (module 1.5.16+) a 4K page needs its
/// range's pair (`TDX_MISSING_PAMT_PAGE_PAIR|R8`) and counts in it; a 2M
/// page's range must have no pair and hold no pair or reserved page
/// (`PAGE_METADATA_INCORRECT|R8`).
pub(crate) fn page_aug(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = (a.rcx, a.rdx);
    (a.rcx, a.rdx) = (0, 0);
    let td = c.tdr(rdx, OperandId::RDX, Shared)?;
    let allowed: &[OpState] = if c.sim.machine.desc.profile.aug_before_finalize {
        &[OpState::Runnable, OpState::Initialized]
    } else {
        &[OpState::Runnable]
    };
    c.tdcs(td, Some(Shared), allowed)?;
    let (gpa, level) = pinfo(rcx, 0, 1)?;
    let slot = c.walk(td, gpa, level, Some(Shared), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    if e.is_some_and(|s| s.state != SeptState::REMOVED) {
        return Err(state_incorrect(a, e, level));
    }
    let pe = c.free_range(a.r8, OperandId::R8, level)?;
    c.locked();
    let page = a.r8 / PAGE;
    let n = pages_of(level);
    c.write_entry_unlock(slot.word, word(SeptState::PENDING, page));
    td.chldcnt.add(c.lp, n as i64);
    pe.set(PamtPageType::REG, td.tdr());
    // Not zeroed: `tdh_mem_page_aug.c` only maps the page; the guest's
    // TDG.MEM.PAGE.ACCEPT zeroes it (with the TD's key) before the TD can
    // read it.
    if level == 0 {
        c.pamt_count(a.r8, true);
    }
    c.sim
        .mem
        .give_to_module(page, page + n, ModuleUse::Td, td.hkid(), false);
    Ok(TdxStatus::SUCCESS)
}

/// The checks TDH.MEM.RANGE.BLOCK and UNBLOCK
/// share: TDR S:RDX; op state S → {INITIALIZED, RUNNABLE}; PINFO
/// (0..=pwl); tree X; the entry, which must not be FREE. Returns (TD,
/// level, entry, its word).
fn blockable_entry<'s>(
    c: &mut Call<'s>,
    a: &mut SeamcallArgs,
) -> Result<(&'s Td, u8, Septe, &'s crate::locks::AtomicU64), TdxStatus> {
    let (rcx, rdx) = (a.rcx, a.rdx);
    (a.rcx, a.rdx) = (0, 0);
    let td = c.tdr(rdx, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let (gpa, level) = pinfo(rcx, 0, td.pwl())?;
    let slot = c.walk(td, gpa, level, Some(Exclusive), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    let Some(entry) = e else {
        return Err(state_incorrect(a, e, level));
    };
    Ok((td, level, entry, slot.word))
}

/// The PAMT entry that records when `entry` (at `level`) was blocked: the
/// page's own, or for a non-leaf entry the child S-EPT page's.
fn stamp(s: &SimState, entry: Septe, level: u8) -> Option<&crate::pamt::Entry> {
    let lvl = if matches!(entry.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED) {
        0
    } else {
        level
    };
    let pa = entry.pfn * PAGE;
    s.pamt.block(pa).map(|t| t.entry(lvl, pa))
}

/// TDH.MEM.RANGE.BLOCK (`tdh_mem_range_block.c`). Locks: TDR S:RDX, op state S, tree
/// X, the entry (the page's block epoch is written without a PAMT lock).
pub(crate) fn range_block(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (td, level, entry, w) = blockable_entry(c, a)?;
    let e = Some(entry);
    let new = match entry.state {
        SeptState::MAPPED => SeptState::BLOCKED,
        SeptState::PENDING => SeptState::PENDING_BLOCKED,
        SeptState::NL_MAPPED => SeptState::NL_BLOCKED,
        SeptState::BLOCKED | SeptState::PENDING_BLOCKED | SeptState::NL_BLOCKED => {
            details(a, e, level);
            return Err(op(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, OperandId::RCX));
        }
        _ => return Err(state_incorrect(a, e, level)),
    };
    c.locked();
    let cur = w.load(Ordering::Acquire);
    sept::write_locked(w, word(new, target_of(cur)));
    if let Some(pe) = stamp(c.sim, entry, level) {
        pe.set_bepoch(td.td_epoch());
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.RANGE.UNBLOCK (`tdh_mem_range_unblock.c`). Locks: TDR S:RDX, op state S, tree
/// X, the entry (the block epoch is read without a PAMT lock).
pub(crate) fn range_unblock(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (td, level, entry, w) = blockable_entry(c, a)?;
    let e = Some(entry);
    let new = match entry.state {
        SeptState::BLOCKED => SeptState::MAPPED,
        SeptState::PENDING_BLOCKED => SeptState::PENDING,
        SeptState::NL_BLOCKED => SeptState::NL_MAPPED,
        _ => return Err(state_incorrect(a, e, level)),
    };
    if running(td) {
        let bepoch = stamp(c.sim, entry, level).map_or(0, |pe| pe.bepoch());
        if !tracked(td, bepoch) {
            return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::SEPT_TREE));
        }
    }
    c.locked();
    let cur = w.load(Ordering::Acquire);
    c.write_entry_unlock(w, word(new, target_of(cur)));
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.TRACK (`tdh_mem_track.c`). Locks: TDR S:RCX, op state S, epoch X.
/// A guest entry made in the previous epoch that has not left the guest
/// yet (`refcount[(td_epoch - 1) & 1]` nonzero) makes it
/// `TDX_PREVIOUS_TLB_EPOCH_BUSY`: the host must make those vCPUs exit (a
/// kick) before it can track again.
pub(crate) fn track(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rcx, OperandId::RCX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    c.epoch(td, Exclusive)?;
    if td.refcount(td.td_epoch().wrapping_sub(1)) != 0 {
        return Err(TdxStatus::PREVIOUS_TLB_EPOCH_BUSY);
    }
    c.locked();
    td.set_td_epoch(td.td_epoch() + 1);
    Ok(TdxStatus::SUCCESS)
}

/// The checks TDH.MEM.PAGE.REMOVE (`tdh_mem_page_remove.c`) and
/// TDH.MEM.PAGE.DEMOTE (`tdh_mem_page_demote.c`) share, in the order both
/// run them: TDR S at `tdr`; op state S → {INITIALIZED, RUNNABLE}; PINFO
/// (`min_level`..=2); tree S; the entry, which must be a leaf (REMOVE also
/// allows the migration states BLOCKEDW and PENDING_BLOCKEDW, which the
/// simulator does not have). `rcx` is the caller's page info. Returns (TD,
/// GPA, level, leaf, its word).
#[allow(clippy::type_complexity)]
fn leaf_entry<'s>(
    c: &mut Call<'s>,
    a: &mut SeamcallArgs,
    rcx: u64,
    tdr: u64,
    min_level: u8,
) -> Result<(&'s Td, u64, u8, Septe, &'s crate::locks::AtomicU64), TdxStatus> {
    let td = c.tdr(tdr, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let (gpa, level) = pinfo(rcx, min_level, 2)?;
    let slot = c.walk(td, gpa, level, Some(Shared), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    let Some(entry) = e.filter(|s| is_leaf_state(s.state)) else {
        return Err(state_incorrect(a, e, level));
    };
    Ok((td, gpa, level, entry, slot.word))
}

/// For a running TD: the leaf must be blocked, and its block epoch (from
/// `bepoch`) tracked.
fn blocked_and_tracked(
    td: &Td,
    a: &mut SeamcallArgs,
    entry: Septe,
    level: u8,
    bepoch: u64,
) -> Result<(), TdxStatus> {
    if running(td) {
        if !matches!(entry.state, SeptState::BLOCKED | SeptState::PENDING_BLOCKED) {
            details(a, Some(entry), level);
            return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
        }
        if !tracked(td, bepoch) {
            return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
        }
    }
    Ok(())
}

/// TDH.MEM.PAGE.REMOVE (`tdh_mem_page_remove.c`). Locks: TDR S:RDX, op state S, tree
/// S, the entry, the page's PAMT entry at its mapping level (implicit X,
/// `BUSY|RCX`). With Dynamic PAMT a removed 4K page leaves its range's
/// count, and RCX carries the removal hint (bit 62) when it was the last.
pub(crate) fn page_remove(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = take_rcx_rdx(a);
    let (td, _, level, entry, w) = leaf_entry(c, a, rcx, rdx, 0)?;
    let pe = c.implicit(entry.pfn * PAGE, level, Exclusive, OperandId::RCX)?;
    blocked_and_tracked(td, a, entry, level, pe.bepoch())?;
    c.locked();
    c.write_entry_unlock(w, 0);
    let n = pages_of(level);
    td.chldcnt.add(c.lp, -(n as i64));
    pe.set(PamtPageType::NDA, 0);
    let hint = if level == 0 {
        c.pamt_count(entry.pfn * PAGE, false)
    } else {
        0
    };
    c.sim.mem.take_from_module(entry.pfn, entry.pfn + n);
    a.rcx = (entry.pfn * PAGE) | hint;
    a.rdx = 0;
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.PAGE.DEMOTE (`tdh_mem_page_demote.c`): splits the 2M or 1G
/// leaf at RCX into 512 leaves one level down, with the new S-EPT page in
/// R8. RDX is `td_handle_and_flags_t`: the TDR in bits 51:12, bit 0
/// `l2_sept_add_mode` (which matters only for L2 VMs), bits 11:1 and 63:52
/// reserved (`TDX_OPERAND_INVALID|RDX` first). Locks: TDR S:RDX[51:12], op
/// state S, tree S, the leaf entry, the new page X:R8, and for a moment
/// the page's own PAMT entry X (`pamt_demote`, `BUSY|RCX`). Running TDs:
/// the leaf must be blocked and tracked (its block epoch read without a
/// lock); the new entries are unblocked. R8..R11 keep their inputs (the
/// module writes R9..R11 back as given when the TD has no L2 VMs).
///
/// Dynamic PAMT (module 1.5.16+): the new S-EPT page needs a pair for its
/// own range (`TDX_MISSING_PAMT_PAGE_PAIR|R8`) and counts in it; a 2M→4K
/// demote takes the demoted range's new pair in R12/R13 (checked after
/// the new S-EPT page, with the 2M entry held X: `OPERAND_INVALID`,
/// `OPERAND_ADDR_RANGE_ERROR`, `OPERAND_BUSY`, `PAGE_NOT_FREE` with R12 or
/// R13), and the range's count becomes 512.
///
/// The module returns `TDX_INTERRUPTED_RESTARTABLE` with RCX/RDX restored
/// to their inputs when a host interrupt is pending before `pamt_demote`;
/// the simulator has no interrupts (a test injects that status with
/// [`crate::Fault::status`], which leaves the registers as given).
pub(crate) fn page_demote(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = take_rcx_rdx(a);
    if rdx & TD_HANDLE_RESERVED != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let tdr = TdrAndFlags::from_bits(rdx).tdr_pfn() * PAGE;
    let (td, _, level, entry, w) = leaf_entry(c, a, rcx, tdr, 1)?;
    let pa = entry.pfn * PAGE;
    let t = c.sim.pamt.block(pa).expect("a mapped page is in a TDMR");
    blocked_and_tracked(td, a, entry, level, t.peek(level, pa).bepoch)?;
    let r8 = a.r8;
    let se = c.explicit(r8, OperandId::R8, 0, Exclusive, PamtPageType::NDA)?;
    let tdr = td.tdr();
    let big = t.entry(level, pa);
    if t.dynamic && level == 1 {
        // Dynamic PAMT, 2M -> 4K (`pamt_demote`, module 1.5.16+): the 2M
        // entry X, then the new pair in R12/R13 (no "inside the range"
        // shortcut: a pair page in the demoted range meets its 2M entry
        // held X), and the range gets the pair with all 512 pages counted.
        c.held
            .sharex_hp(&big.lock, Exclusive, LockSide::Host)
            .map_err(|b| op(b.status(), OperandId::RCX))?;
        let (p0, p1) = (a.r12, a.r13);
        if !super::phymem::pair_page_ok(c, p0) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R12));
        }
        if !super::phymem::pair_page_ok(c, p1) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R13));
        }
        let t0 = super::phymem::pair_page_block(c, p0, OperandId::R12)?;
        let t1 = super::phymem::pair_page_block(c, p1, OperandId::R13)?;
        super::phymem::pair_page_free(c, t0, p0, OperandId::R12)?;
        super::phymem::pair_page_free(c, t1, p1, OperandId::R13)?;
        super::phymem::pair_bitmap_set([(t0, p0, OperandId::R12), (t1, p1, OperandId::R13)])?;
        c.locked();
        super::phymem::install_pair(c, t.mid(pa), [p0, p1], 512, PamtPageType::REG, tdr);
    } else {
        c.locked();
        // pamt_demote: the big page's entry exclusively for the time it
        // takes to hand its type and owner down to its 512 children.
        let mark = c.held.mark();
        c.held
            .sharex_hp(&big.lock, Exclusive, LockSide::Host)
            .map_err(|b| op(b.status(), OperandId::RCX))?;
        let step = pages_of(level - 1);
        for i in 0..512 {
            t.entry(level - 1, (entry.pfn + i * step) * PAGE)
                .set(PamtPageType::REG, tdr);
        }
        big.set(PamtPageType::NDA, 0);
        c.held.release_to(mark);
    }
    let step = pages_of(level - 1);
    let child_state = match entry.state {
        SeptState::BLOCKED | SeptState::MAPPED => SeptState::MAPPED,
        _ => SeptState::PENDING,
    };
    let sept_page = r8 / PAGE;
    se.set(PamtPageType::EPT, tdr);
    c.sim
        .mem
        .give_to_module(sept_page, sept_page + 1, ModuleUse::Td, td.hkid(), true);
    let child = td.sept.add_page(sept_page);
    let nl = word(SeptState::NL_MAPPED, child);
    for (i, e) in td.sept.children(nl).iter().enumerate() {
        e.store(
            word(child_state, entry.pfn + i as u64 * step),
            Ordering::Relaxed,
        );
    }
    sept::write_locked(w, nl);
    td.chldcnt.add(c.lp, 1);
    c.pamt_count(r8, true);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MEM.PAGE.PROMOTE, versions 0 and 1 (`tdh_mem_page_promote.c`):
/// merges the 512 leaves below the entry at RCX (level 1 or 2) into one
/// page of that level, when they map one aligned, contiguous run in the
/// same state, and frees the S-EPT page (returned in RCX). Locks: TDR
/// S:RDX, op state S, tree S, the parent entry, the merged S-EPT page's
/// PAMT entry (implicit X, `BUSY|RCX`), each of the 512 child entries in
/// turn, and for a moment the new page's PAMT entry X (`pamt_promote`,
/// `BUSY|RCX`). Running TDs: the entry must be blocked and tracked.
///
/// Version 1 sets R9..R11 to -1 when it starts, on every path (on success
/// they would carry the freed L2 S-EPT pages of aliased L2 VMs; the
/// simulator has none). The merge check (`is_sept_page_valid_for_merge`)
/// locks each child in turn and checks it at once: a busy child gives
/// `TDX_OPERAND_BUSY|RCX`, a first child that is not MAPPED or PENDING or
/// not aligned to the merged size, or a later child that is not the next
/// page of the run in the same state, gives
/// `TDX_EPT_INVALID_PROMOTE_CONDITIONS|RCX`; both with the details of the
/// parent entry at the requested level, whichever child stopped it.
///
/// Dynamic PAMT (module 1.5.16+): a 4K→2M promote returns the merged
/// range's pair in R12/R13 (written only in the all-register shape), and
/// the freed S-EPT page leaves its range's count, RCX carrying the removal
/// hint (bit 62) when it was the last page there.
///
/// The module returns `TDX_INTERRUPTED_RESTARTABLE` with RCX/RDX restored
/// to their inputs when a host interrupt is pending after the merge check;
/// the simulator has no interrupts (a test injects that status with
/// [`crate::Fault::status`], which leaves the registers as given).
pub(crate) fn page_promote(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (rcx, rdx) = take_rcx_rdx(a);
    if c.version >= 1 {
        (a.r9, a.r10, a.r11) = (NULL_PA, NULL_PA, NULL_PA);
    }
    let td = c.tdr(rdx, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let (gpa, level) = pinfo(rcx, 1, 2)?;
    let slot = c.walk(td, gpa, level, Some(Shared), a)?;
    let e = c.lock_entry(td, &slot, a)?;
    let Some(entry) = e.filter(|s| matches!(s.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED))
    else {
        return Err(state_incorrect(a, e, level));
    };
    let cur = slot.word.load(Ordering::Acquire);
    let spe = c.implicit(entry.pfn * PAGE, 0, Exclusive, OperandId::RCX)?;
    if running(td) {
        if entry.state != SeptState::NL_BLOCKED {
            details(a, e, level);
            return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
        }
        if !tracked(td, spe.bepoch()) {
            return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
        }
    }
    let step = pages_of(level - 1);
    let children = td.sept.children(cur);
    let mut first: Option<Septe> = None;
    for (i, w) in children.iter().enumerate() {
        if c.held.septe(w, LockSide::Host).is_err() {
            details(a, e, level);
            return Err(op(TdxStatus::OPERAND_BUSY, OperandId::RCX));
        }
        let child = td.sept.view(w.load(Ordering::Acquire));
        // Child 0: its frame aligned to the merged size (a FREE entry's
        // frame is 0, which is), then MAPPED or PENDING. Child i: the
        // whole entry equal to child 0's with the frame i steps on.
        let mergeable = match (i, first, child) {
            (0, _, Some(f))
                if matches!(f.state, SeptState::MAPPED | SeptState::PENDING)
                    && f.pfn % (step * 512) == 0 =>
            {
                first = Some(f);
                true
            }
            (_, Some(f), Some(ch)) => ch.state == f.state && ch.pfn == f.pfn + i as u64 * step,
            _ => false,
        };
        if !mergeable {
            details(a, e, level);
            return Err(op(
                TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS,
                OperandId::RCX,
            ));
        }
    }
    let first = first.expect("512 children checked");
    c.locked();
    // pamt_promote: the merged page's entry exclusively for the time it
    // takes to gather its 512 children's type and owner.
    let base = first.pfn * PAGE;
    let t = c.sim.pamt.block(base).expect("a mapped page is in a TDMR");
    let big = t.entry(level, base);
    let mark = c.held.mark();
    c.held
        .sharex_hp(&big.lock, Exclusive, LockSide::Host)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    for i in 0..512 {
        t.entry(level - 1, (first.pfn + i * step) * PAGE)
            .set(PamtPageType::NDA, 0);
    }
    if t.dynamic && level == 1 {
        // Dynamic PAMT, 4K -> 2M (`pamt_promote`, module 1.5.16+): the
        // node's pair goes back to the host in R12/R13, its count (512)
        // with it; no TDH.PHYMEM.PAMT.REMOVE.
        let [p0, p1] = super::phymem::release_pair(c, t.mid(base));
        (a.r12, a.r13) = (p0, p1);
    }
    big.set(PamtPageType::REG, td.tdr());
    c.held.release_to(mark);
    // The children's page goes away with their locks.
    c.held.forget_last(512);
    sept::write_locked(slot.word, word(first.state, first.pfn));
    td.sept.free_page(cur);
    td.chldcnt.add(c.lp, -1);
    spe.set(PamtPageType::NDA, 0);
    let hint = c.pamt_count(entry.pfn * PAGE, false);
    c.sim.mem.take_from_module(entry.pfn, entry.pfn + 1);
    a.rcx = (entry.pfn * PAGE) | hint;
    Ok(TdxStatus::SUCCESS)
}

/// TDG.MEM.PAGE.ACCEPT outside a vCPU, for tests
/// ([`crate::Simulator::guest_accept`]): the module's guest ACCEPT
/// ([`super::tdg::accept`]), its TD exit shown as `TDX_EPT_WALK_FAILED|RCX`.
pub(crate) fn guest_accept(s: &SimState, tdr: u64, gpa: u64, level: u8) -> TdxStatus {
    let Some(td) = td_of(s, tdr) else {
        return TdxStatus::OPERAND_INVALID;
    };
    match super::tdg::accept(s, td, gpa, level, None) {
        super::tdg::Accept::Status(st) => st,
        super::tdg::Accept::HostPriority => op(TdxStatus::OPERAND_BUSY, OperandId::RCX),
        super::tdg::Accept::Exit { .. } => op(TdxStatus::EPT_WALK_FAILED, OperandId::RCX),
        // Without a vCPU no interrupt is ever pending.
        super::tdg::Accept::Interrupted => unreachable!("no vCPU, no interrupt"),
    }
}

/// The TD whose TDR is at frame `tdr`, looked up without locks (for the
/// simulator's own diagnostics and the guest side).
pub(crate) fn td_of(s: &SimState, tdr: u64) -> Option<&Td> {
    let pa = tdr.checked_mul(PAGE)?;
    let t = s.pamt.block(pa)?;
    let e: PamtEntry = t.peek(0, pa);
    (e.pt == PamtPageType::TDR).then(|| s.tds.get(t.entry(0, pa).owner_field()))
}
