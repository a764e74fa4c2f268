//! TDH.PHYMEM.*: page metadata, reclaim, and cache write-back
//! (`src/vmm_dispatcher/api_calls/tdh_phymem_*.c`).

use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType};

use crate::{
    dispatch::{Call, LeafResult, op},
    kot::KotState,
    locks::{
        LockMode::{Exclusive, Shared},
        LockSide, Ordering,
    },
    memory::{ModuleUse, PAGE},
    pamt,
    td::Lifecycle,
    violation::Violation,
};

const MAX_PA: u64 = 1 << 52;

/// Steps a TDH.PHYMEM.CACHE.WB takes (a fault can interrupt between steps).
const CACHE_WB_STEPS: u32 = 4;

/// The HPA checks of RDMD and RECLAIM: 4K aligned, below 2^52, KeyID 0
/// (INVALID|RCX); in an initialized TDMR block (ADDR_RANGE_ERROR|RCX).
fn page_operand<'s>(c: &Call<'s>, pa: u64) -> Result<&'s pamt::Tdmr, TdxStatus> {
    if !pa.is_multiple_of(PAGE) || pa >= MAX_PA || c.sim.machine.has_hkid_bits(pa) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    c.sim
        .pamt
        .block(pa)
        .ok_or(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX))
}

/// TDH.PHYMEM.PAGE.RDMD. Locks: a PAMT walk shared to the page's actual
/// leaf (RCX). Outputs: type, owner, level, and the block epoch of a
/// private or S-EPT page (R9).
///
/// With Dynamic PAMT (`tdh_phymem_page_rdmd.c`, module 1.5.16+): RCX may
/// ask for a 2M or 1G entry (level in bits 2:0, the address aligned to
/// it; without Dynamic PAMT any level bit is `OPERAND_INVALID|RCX`); a 4K
/// query that ends at an NDA entry whose bitmap bit is set (a pair page,
/// or a reserved page) reads PT_PAMT at 4K with no owner; a PT_PAMT node
/// reads PT_PAMT with RCX bit 63 (non-leaf) and its pair in R10/R11.
pub(crate) fn page_rdmd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let rcx = a.rcx;
    (a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11) = (0, 0, 0, 0, 0, 0);
    let dynamic = c.sim.pamt.dynamic();
    let level = if dynamic { (rcx & 7) as u8 } else { 0 };
    if level > 2 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let pa = if dynamic { rcx & !7 } else { rcx };
    if !pa.is_multiple_of(PAGE << (9 * u32::from(level))) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let t = page_operand(c, pa)?;
    let target = if level == 0 { None } else { Some(level) };
    let (e, at) = pamt::walk(t, pa, target, Shared, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    c.locked();
    let e = e.get();
    if dynamic && level == 0 && e.pt == PamtPageType::NDA && t.bitmap_get(pa) {
        a.rcx = u64::from(PamtPageType::PAMT.0);
        return Ok(TdxStatus::SUCCESS);
    }
    a.rcx = u64::from(e.pt.0);
    a.r8 = u64::from(at);
    if e.pt == PamtPageType::PAMT {
        // A node: no owner, the pair in R10/R11 (`non_leaf`, bit 63).
        a.rcx |= 1 << 63;
        let m = t.mid(pa);
        a.r10 = m.pair[0].load(Ordering::Relaxed) * PAGE;
        a.r11 = m.pair[1].load(Ordering::Relaxed) * PAGE;
        return Ok(TdxStatus::SUCCESS);
    }
    a.rdx = e.owner * PAGE;
    if matches!(e.pt, PamtPageType::REG | PamtPageType::EPT) {
        a.r9 = e.bepoch;
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.PAGE.RECLAIM (`tdh_phymem_page_reclaim.c`). Locks: a PAMT walk exclusive to
/// the page's actual leaf (RCX), then for a page other than a TDR the
/// owner's TDR implicitly (shared, `BUSY|TDR`).
///
/// With Dynamic PAMT a reclaimed 4K page leaves its range's count, and R9
/// is the removal hint (bit 62) when it was the last one, else 0; a page
/// whose range has no pair is `PAGE_METADATA_INCORRECT|RCX` (the walk
/// stops at the NDA 2M entry).
pub(crate) fn page_reclaim(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let pa = a.rcx;
    (a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11) = (0, 0, 0, 0, 0, 0);
    let t = page_operand(c, pa)?;
    let (e, level) = pamt::walk(t, pa, None, Exclusive, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    let pt = e.pt();
    if matches!(pt, PamtPageType::NDA | PamtPageType::RSVD) {
        return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, OperandId::RCX));
    }
    let owner = e.get().owner;
    (a.rcx, a.rdx, a.r8) = (u64::from(pt.0), owner * PAGE, u64::from(level));
    if !pa.is_multiple_of(PAGE << (9 * u32::from(level))) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let pfn = pa / PAGE;
    let n = 1u64 << (9 * u32::from(level));
    let s = c.sim;
    if pt == PamtPageType::TDR {
        let slot = e.owner_field();
        let td = s.tds.get(slot);
        if td.lifecycle() != Lifecycle::Teardown {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        if td.chldcnt.sum() != 0 {
            return Err(TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
        }
        c.locked();
        s.tds.free(slot);
    } else {
        let td = c.implicit_tdr(owner, Shared)?;
        if td.lifecycle() != Lifecycle::Teardown {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        c.locked();
        td.chldcnt.add(c.lp, -(n as i64));
        if pt == PamtPageType::TDVPR {
            s.vcpus.remove(pfn);
            s.guests.remove(pfn);
        }
    }
    e.set(PamtPageType::NDA, 0);
    if level == 0 {
        a.r9 = c.pamt_count(pa, false);
    }
    s.mem.take_from_module(pfn, pfn + n);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.PAGE.WBINVD (`tdh_phymem_page_wbinvd.c`). Locks: the page, an NDA page,
/// shared (explicit walk to the page's actual leaf, RCX). With Dynamic
/// PAMT a page whose range has no pair passes (the walk ends at the NDA 2M
/// entry, not "to target size"), and a pair or reserved page is
/// `PAGE_METADATA_INCORRECT|RCX` (its bitmap bit).
pub(crate) fn page_wbinvd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let m = &c.sim.machine;
    let keyid = m.hkid_of(a.rcx);
    let pa = a.rcx & !m.hkid_mask;
    c.explicit_walk(pa, OperandId::RCX, 0, Shared, PamtPageType::NDA, false)?;
    c.locked();
    let pfn = pa / PAGE;
    c.sim.mem.flush_keyid_range(pfn, pfn + 1, keyid as u16);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.CACHE.WB (`tdh_phymem_cache_wb.c`). Locks: the package's write-back
/// table entry (`BUSY|WBCACHE`), then KOT S (`BUSY|KOT`), both for the
/// whole call. A start (RCX 0) snapshots the FLUSHED HKIDs of the KOT and
/// resets the package's resume point; a resume (RCX 1) needs one.
pub(crate) fn cache_wb(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    if a.rcx > 1 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let s = c.sim;
    let pkg = c.package();
    let wbt = &s.kot.wbt[pkg as usize];
    c.mutex(&wbt.lock, OperandId::WBCACHE)?;
    c.kot(Shared)?;
    c.locked();
    let mut st = wbt.state();
    if a.rcx == 0 {
        st.progress = None;
        let flushed: Vec<u16> = s
            .kot
            .data()
            .state
            .iter()
            .filter(|(_, k)| **k == KotState::Flushed)
            .map(|(&h, _)| h)
            .collect();
        if flushed.is_empty() {
            return Err(TdxStatus::NO_HKID_READY_TO_WBCACHE);
        }
        st.hkid_flushed = flushed.into_iter().collect();
        st.progress = Some(0);
    } else if st.progress.is_none() {
        // Nothing interrupted on this package to resume (started and
        // completed by another LP meanwhile, or never started).
        return Err(TdxStatus::WBCACHE_RESUME_ERROR);
    }
    let mut budget = c.stop_early.unwrap_or(u32::MAX);
    let mut progress = st.progress.expect("set above");
    while progress < CACHE_WB_STEPS {
        if budget == 0 {
            st.progress = Some(progress);
            return Ok(TdxStatus::INTERRUPTED_RESUMABLE);
        }
        budget -= 1;
        progress += 1;
    }
    st.progress = None;
    let done = std::mem::take(&mut st.hkid_flushed);
    drop(st);
    let mut kot = s.kot.data();
    for hkid in done {
        if let Some(p) = kot.wbinvd_pending.get_mut(&hkid) {
            p[pkg as usize] = false;
            if p.iter().all(|&x| !x) {
                // Every package wrote the HKID's lines back.
                s.mem.flush_keyid(hkid);
            }
        }
    }
    Ok(TdxStatus::SUCCESS)
}

// ---------------------------------------------------------------------------
// Dynamic PAMT: TDH.PHYMEM.PAMT.ADD and TDH.PHYMEM.PAMT.REMOVE
// ---------------------------------------------------------------------------

const SIZE_2M: u64 = 2 << 20;

/// RCX of PAMT.ADD/REMOVE (`page_size_api_input_t`): level 1 (2M), bits
/// 11:3 and 63:52 reserved, no KeyID bits, 2 MiB aligned
/// (`TDX_OPERAND_INVALID|RCX`). Returns the range's HPA.
fn range_operand(c: &Call<'_>, rcx: u64) -> Result<u64, TdxStatus> {
    let hpa = rcx & !0xFFF & ((1 << 52) - 1);
    let reserved = (rcx >> 3) & 0x1FF != 0 || rcx >> 52 != 0;
    if rcx & 7 != 1 || reserved || c.sim.machine.has_hkid_bits(hpa) || !hpa.is_multiple_of(SIZE_2M)
    {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    Ok(hpa)
}

/// A pair page's address checks (PAMT.ADD RDX/R8, DEMOTE R12/R13): no
/// KeyID bits, 4 KiB aligned, below 2^MAX_PA (`TDX_OPERAND_INVALID|o`).
pub(crate) fn pair_page_ok(c: &Call<'_>, pa: u64) -> bool {
    let m = &c.sim.machine;
    !m.has_hkid_bits(pa) && pa.is_multiple_of(PAGE) && pa >> m.desc.phys_addr_bits == 0
}

/// The TDMR whose initialized PAMT covers the pair page `pa`
/// (`pamt_get_block`, `TDX_OPERAND_ADDR_RANGE_ERROR|o`).
pub(crate) fn pair_page_block<'s>(
    c: &Call<'s>,
    pa: u64,
    o: OperandId,
) -> Result<&'s pamt::Tdmr, TdxStatus> {
    c.sim
        .pamt
        .block(pa)
        .ok_or(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, o))
}

/// A pair page must be free: the entry its 4K walk (shared) ends at is NDA
/// (`<busy>|o`, `TDX_PAGE_NOT_FREE|o`). For a page whose own range has no
/// pair the walk ends at that range's NDA 2M entry, which passes: pair
/// pages need no pair of their own.
pub(crate) fn pair_page_free<'s>(
    c: &mut Call<'s>,
    t: &'s pamt::Tdmr,
    pa: u64,
    o: OperandId,
) -> Result<(), TdxStatus> {
    let (e, _) = pamt::walk(t, pa, Some(0), Shared, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), o))?;
    if e.pt() != PamtPageType::NDA {
        return Err(op(TdxStatus::PAGE_NOT_FREE, o));
    }
    Ok(())
}

/// The bitmap test-and-set of both pair pages (`PAGE_NOT_FREE|o0` / `|o1`;
/// on the second failure the first bit is cleared again). A reserved page's
/// bit is always set, so a reserved page fails here.
pub(crate) fn pair_bitmap_set(pair: [(&pamt::Tdmr, u64, OperandId); 2]) -> Result<(), TdxStatus> {
    let [(t0, p0, o0), (t1, p1, o1)] = pair;
    if !t0.bitmap_set(p0) {
        return Err(op(TdxStatus::PAGE_NOT_FREE, o0));
    }
    if !t1.bitmap_set(p1) {
        t0.bitmap_clear(p0);
        return Err(op(TdxStatus::PAGE_NOT_FREE, o1));
    }
    Ok(())
}

/// Installs `pair` as the node of the 2 MiB block `mid` with `count` pages
/// and every 4K entry set to (`pt`, `owner`) (PAMT.ADD: NDA; DEMOTE: the
/// demoted page's type and owner), and hands the two pages to the module
/// (zeroed, written under the global KeyID).
pub(crate) fn install_pair(
    c: &Call<'_>,
    mid: &pamt::Mid,
    pair: [u64; 2],
    count: u64,
    pt: PamtPageType,
    owner: u64,
) {
    let s = c.sim;
    let global = s.sys.global_hkid().unwrap_or(0);
    for p in pair {
        let f = p / PAGE;
        s.mem
            .give_to_module(f, f + 1, ModuleUse::PamtPair, global, true);
    }
    for e in &mid.leaves {
        e.set(pt, owner);
    }
    mid.pair[0].store(pair[0] / PAGE, Ordering::Relaxed);
    mid.pair[1].store(pair[1] / PAGE, Ordering::Relaxed);
    mid.count.store(count, Ordering::Release);
    mid.entry.set(PamtPageType::PAMT, 0);
}

/// Takes the node's pair out of the bitmap and gives both pages back to
/// the host (PAMT.REMOVE, PROMOTE). Returns the pair's addresses. The
/// pages keep their cache lines of the global KeyID (the module neither
/// clears nor flushes them), so a host that frees them unflushed is
/// recorded ([`Violation::PrivateLinesReachedHost`]); model choice,
/// UNCONFIRMED on hardware.
pub(crate) fn release_pair(c: &Call<'_>, mid: &pamt::Mid) -> [u64; 2] {
    let s = c.sim;
    let pair = [0, 1].map(|i| mid.pair[i].load(Ordering::Relaxed) * PAGE);
    for p in pair {
        if let Some(t) = s.pamt.block(p) {
            t.bitmap_clear(p);
        }
        s.mem.take_from_module(p / PAGE, p / PAGE + 1);
    }
    pair
}

/// TDH.PHYMEM.PAMT.ADD (`tdh_phymem_pamt_add.c`, Intel TDX module
/// 1.5.16+): installs the PAMT page pair RDX (entries 0-255) and R8
/// (256-511) for the 2 MiB range at RCX. Checks, in the module's order:
/// Dynamic PAMT on (`OPERAND_INVALID|RAX`); RCX (`OPERAND_INVALID|RCX`);
/// RDX (`OPERAND_INVALID|RDX`, `OPERAND_ADDR_RANGE_ERROR|RDX`); R8 (same
/// with R8); the range in a TDMR (`OPERAND_ADDR_RANGE_ERROR|RCX`). Locks:
/// the range's 1G entry S and 2M entry X (`BUSY|RCX`): the range must be
/// neither a 2M/1G page nor have a pair (`HPA_RANGE_NOT_FREE|RCX`); then
/// each pair page outside the range walked to 4K shared (`BUSY|RDX/R8`)
/// and free (`PAGE_NOT_FREE|RDX/R8`); then the bitmap test-and-set of RDX
/// and R8 (`PAGE_NOT_FREE`). No register is written.
pub(crate) fn pamt_add(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let s = c.sim;
    if !s.sys.dynamic_pamt.load(Ordering::Relaxed) {
        return Err(TdxStatus::OPERAND_INVALID);
    }
    let hpa = range_operand(c, a.rcx)?;
    let (p0, p1) = (a.rdx, a.r8);
    if !pair_page_ok(c, p0) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let t0 = pair_page_block(c, p0, OperandId::RDX)?;
    if !pair_page_ok(c, p1) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
    }
    let t1 = pair_page_block(c, p1, OperandId::R8)?;
    let t = s
        .pamt
        .block(hpa)
        .ok_or(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX))?;
    let (e, at) = pamt::walk(t, hpa, Some(1), Exclusive, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    if at != 1 || e.pt() != PamtPageType::NDA {
        return Err(op(TdxStatus::HPA_RANGE_NOT_FREE, OperandId::RCX));
    }
    for (tp, p, o) in [(t0, p0, OperandId::RDX), (t1, p1, OperandId::R8)] {
        // A page inside the range is known free: the range is locked X
        // and has no 4K pages.
        if p & !(SIZE_2M - 1) != hpa {
            pair_page_free(c, tp, p, o)?;
        }
    }
    pair_bitmap_set([(t0, p0, OperandId::RDX), (t1, p1, OperandId::R8)])?;
    c.locked();
    install_pair(c, t.mid(hpa), [p0, p1], 0, PamtPageType::NDA, 0);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.PAMT.REMOVE (`tdh_phymem_pamt_remove.c`, Intel TDX module
/// 1.5.16+): takes the pair of the 2 MiB range at RCX back and returns it
/// in RDX/R8. Checks: Dynamic PAMT on (`OPERAND_INVALID|RAX`); RCX
/// (`OPERAND_INVALID|RCX`, `OPERAND_ADDR_RANGE_ERROR|RCX`); the 1G entry S
/// and 2M entry X (`BUSY|RCX`); the range has a pair
/// (`NO_PAMT_PAGE_PAIR|RCX`); the 256 entries of page 0, then of page 1,
/// read without their locks, all NDA (`PAMT_PAGE_NOT_EMPTY` with operand
/// 0 or 1, the page's index); then the node's count must be 0, else the
/// module's fatal error.
///
/// The scan and the count check are separate steps in the module, and the
/// removers (PAGE.REMOVE, SEPT.REMOVE, PROMOTE's S-EPT page) lock only
/// their page's 4K entry, write it NDA, and decrement the count after: a
/// PAMT.REMOVE between the two fails fatally or hands back a pair the
/// remover still writes into. A leaf here runs its commit as one step, so
/// the interleaving the simulator can show is the benign one (the removed
/// page still in use: `PAMT_PAGE_NOT_EMPTY`); it records
/// [`Violation::PamtRemoveRacedRemoval`] whenever PAMT.REMOVE meets a 4K
/// entry of the range locked by such a removal, whatever the outcome
/// (under the node's exclusive lock, only a node-less "implicit" holder can
/// hold one); on real threads the other interleavings can show too (the
/// fatal error is then recorded as well). UNCONFIRMED on hardware: the window comes from reading the
/// source.
pub(crate) fn pamt_remove(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let s = c.sim;
    if !s.sys.dynamic_pamt.load(Ordering::Relaxed) {
        return Err(TdxStatus::OPERAND_INVALID);
    }
    let hpa = range_operand(c, a.rcx)?;
    let t = s
        .pamt
        .block(hpa)
        .ok_or(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX))?;
    let (e, at) = pamt::walk(t, hpa, Some(1), Exclusive, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    if at != 1 || e.pt() != PamtPageType::PAMT {
        return Err(op(TdxStatus::NO_PAMT_PAGE_PAIR, OperandId::RCX));
    }
    let mid = t.mid(hpa);
    let readers = &s.readers;
    for (i, l) in mid.leaves.iter().enumerate() {
        // Under the node held X, a 4K entry's lock can only be held by a
        // node-less (implicit) holder: a remover (its page REG or EPT, or
        // already NDA if its commit is under way on another thread), or
        // an implicit TDR lock (a TDR, still in use: not a race).
        if l.lock.is_held(readers) && l.pt() != PamtPageType::TDR {
            s.violation(Violation::PamtRemoveRacedRemoval {
                range: hpa,
                pfn: hpa / PAGE + i as u64,
            });
            break;
        }
    }
    for (half, leaves) in mid.leaves.chunks(256).enumerate() {
        if leaves.iter().any(|l| l.pt() != PamtPageType::NDA) {
            return Err(op(TdxStatus::PAMT_PAGE_NOT_EMPTY, OperandId(half as u32)));
        }
    }
    let count = mid.count.load(Ordering::Acquire);
    if count != 0 {
        s.fatal(
            c.leaf,
            format!(
                "the pair of the 2 MiB range at {hpa:#x} has no page in use but a count of {count}"
            ),
        );
        return Err(TdxStatus::SYS_SHUTDOWN);
    }
    c.locked();
    let [p0, p1] = release_pair(c, mid);
    e.set(PamtPageType::NDA, 0);
    (a.rdx, a.r8) = (p0, p1);
    Ok(TdxStatus::SUCCESS)
}
