//! TDH.PHYMEM.*: page metadata, reclaim, and cache write-back
//! (`src/vmm_dispatcher/api_calls/tdh_phymem_*.c`).

use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType};

use crate::{
    dispatch::{Call, LeafResult, op},
    kot::KotState,
    locks::{
        LockMode::{Exclusive, Shared},
        LockSide,
    },
    memory::PAGE,
    pamt,
    td::Lifecycle,
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
pub(crate) fn page_rdmd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let pa = a.rcx;
    (a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11) = (0, 0, 0, 0, 0, 0);
    let t = page_operand(c, pa)?;
    let (e, level) = pamt::walk(t, pa, None, Shared, LockSide::Host, &mut c.held)
        .map_err(|b| op(b.status(), OperandId::RCX))?;
    c.locked();
    let e = e.get();
    a.rcx = u64::from(e.pt.0);
    a.rdx = e.owner * PAGE;
    a.r8 = u64::from(level);
    if matches!(e.pt, PamtPageType::REG | PamtPageType::EPT) {
        a.r9 = e.bepoch;
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.PAGE.RECLAIM (`tdh_phymem_page_reclaim.c`). Locks: a PAMT walk exclusive to
/// the page's actual leaf (RCX), then for a page other than a TDR the
/// owner's TDR implicitly (shared, `BUSY|TDR`).
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
    s.mem.take_from_module(pfn, pfn + n);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.PHYMEM.PAGE.WBINVD (`tdh_phymem_page_wbinvd.c`). Locks: the page, an NDA page,
/// shared (explicit 4K walk, RCX).
pub(crate) fn page_wbinvd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let m = &c.sim.machine;
    let keyid = m.hkid_of(a.rcx);
    let pa = a.rcx & !m.hkid_mask;
    c.explicit(pa, OperandId::RCX, 0, Shared, PamtPageType::NDA)?;
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
