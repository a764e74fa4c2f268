//! TDH.VP.*: vCPUs (`src/vmm_dispatcher/api_calls/tdh_vp_*.c`).
//!
//! A vCPU's lock is its TDVPR page's PAMT entry: CREATE takes the new page
//! exclusively after the TDR (shared) and the op state (shared); the other
//! leaves take the TDVPR first (ADDCX, INIT and FLUSH exclusively, RD and
//! WR shared), then the TDR implicitly (shared, `BUSY|TDR`). Not
//! modelled: TD entry, and the association VP.RD/WR make with the calling
//! LP.

use tdx_sys::SeamcallArgs;
use tdx_types::{
    OperandId, TdxStatus,
    metadata::{MdFieldId, PamtPageType, field, td_field_id},
};

use crate::{
    dispatch::{Call, LeafResult},
    locks::LockMode::{self, Exclusive, Shared},
    memory::{ModuleUse, PAGE},
    pamt::Entry,
    td::{Lifecycle, MAX_TDVPS, MIN_TDVPS, OpState, Td, Vcpu},
};

/// TDH.VP.CREATE (`tdh_vp_create.c`). Locks: TDR S:RDX, op state S, the new
/// TDVPR X:RCX (an NDA page).
pub(crate) fn create(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rdx, OperandId::RDX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized])?;
    let e = c.explicit(a.rcx, OperandId::RCX, 0, Exclusive, PamtPageType::NDA)?;
    c.locked();
    let page = a.rcx / PAGE;
    let tdr = td.tdr();
    e.set(PamtPageType::TDVPR, tdr);
    c.sim
        .mem
        .give_to_module(page, page + 1, ModuleUse::Td, td.hkid(), true);
    c.sim.vcpus.insert(page, Vcpu::new(page));
    td.chldcnt.add(c.lp, 1);
    Ok(TdxStatus::SUCCESS)
}

/// The vCPU whose TDVPR is at `pa` (operand `o`), its TDVPR taken in
/// `mode`, then its TD's TDR implicitly (shared): the TDVPR frame and TD.
fn vcpu<'s>(
    c: &mut Call<'s>,
    pa: u64,
    o: OperandId,
    mode: LockMode,
) -> Result<(u64, &'s Td), TdxStatus> {
    let e: &Entry = c.explicit(pa, o, 0, mode, PamtPageType::TDVPR)?;
    let td = c.implicit_tdr(e.owner_field(), Shared)?;
    Ok((pa / PAGE, td))
}

/// TDH.VP.ADDCX (`tdh_vp_addcx.c`). Locks: TDVPR X:RDX, TDR implicit S, op
/// state S, the new page X:RCX (an NDA page).
pub(crate) fn addcx(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (v, td) = vcpu(c, a.rdx, OperandId::RDX, Exclusive)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized])?;
    let (initialized, pages) = c.sim.vcpus.with(v, |vc| (vc.initialized, vc.pages.len()));
    if initialized {
        return Err(TdxStatus::VCPU_STATE_INCORRECT);
    }
    if pages >= MAX_TDVPS {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    let e = c.explicit(a.rcx, OperandId::RCX, 0, Exclusive, PamtPageType::NDA)?;
    c.locked();
    let page = a.rcx / PAGE;
    e.set(PamtPageType::TDCX, td.tdr());
    c.sim
        .mem
        .give_to_module(page, page + 1, ModuleUse::Td, td.hkid(), true);
    c.sim.vcpus.with(v, |vc| vc.pages.push(page));
    td.chldcnt.add(c.lp, 1);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.VP.INIT (`tdh_vp_init.c`). Locks: TDVPR X:RCX, TDR implicit S, op
/// state S.
pub(crate) fn init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (v, td) = vcpu(c, a.rcx, OperandId::RCX, Exclusive)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized])?;
    let need = MIN_TDVPS + 3 * usize::from(td.num_l2_vms());
    let (initialized, pages) = c.sim.vcpus.with(v, |vc| (vc.initialized, vc.pages.len()));
    if pages < need {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    if initialized {
        return Err(TdxStatus::VCPU_STATE_INCORRECT);
    }
    let ctl = td.ctl();
    if ctl.num_vcpus >= ctl.max_vcpus {
        return Err(TdxStatus::MAX_VCPUS_EXCEEDED);
    }
    drop(ctl);
    c.locked();
    td.ctl().num_vcpus += 1;
    td.add_assoc_vcpus(1);
    let lp = c.lp;
    c.sim.vcpus.with(v, |vc| {
        vc.initialized = true;
        vc.assoc_lp = Some(lp);
    });
    Ok(TdxStatus::SUCCESS)
}

/// TDH.VP.RD / TDH.VP.WR (a subset of fields). Locks: TDVPR S:RCX, TDR
/// implicit S, op state S.
///
/// Model choice (the simulator models a subset of the metadata): the fields KVM
/// uses. `PEND_NMI` (bit 0 writable), `VCPU_STATE_DETAILS` (read only;
/// bit 0 = a virtual interrupt is pending, never set here since no guest
/// runs), and the TD VMCS fields KVM writes for posted interrupts:
/// POSTED_INTR_NV (0x0002, 16 bits), POSTED_INTR_DESC_ADDR (0x2016) and
/// PIN_BASED_VM_EXEC_CONTROL (0x4000, only bit 7, posted interrupts,
/// writable). Anything else: TDX_METADATA_FIELD_ID_INCORRECT. Writes
/// take R8 = value, R9 = write mask and return the old value in R8.
pub(crate) fn rd_wr(c: &mut Call<'_>, a: &mut SeamcallArgs, write: bool) -> LeafResult {
    let value = a.r8;
    a.r8 = 0;
    let (v, td) = vcpu(c, a.rcx, OperandId::RCX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let id = MdFieldId::from_raw(a.rdx);
    let vmcs = |f: u32| td_field_id(false, field::TDVPS_CLASS_VMCS, f);
    let writable_mask = if id == field::PEND_NMI {
        Some(1)
    } else if id == field::VCPU_STATE_DETAILS {
        Some(0)
    } else if id == vmcs(0x0002) {
        Some(0xFFFF)
    } else if id == vmcs(0x2016) {
        Some(!0xFFF & ((1 << 52) - 1))
    } else if id == vmcs(0x4000) {
        Some(1 << 7)
    } else {
        None
    };
    let Some(wmask) = writable_mask else {
        return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
    };
    let old = c
        .sim
        .vcpus
        .with(v, |vc| vc.fields.get(&id.into_raw()).copied().unwrap_or(0));
    if write {
        let mask = a.r9;
        if wmask == 0 || mask & !wmask != 0 {
            return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE);
        }
        c.locked();
        c.sim.vcpus.with(v, |vc| {
            vc.fields
                .insert(id.into_raw(), (old & !mask) | (value & mask))
        });
    } else {
        c.locked();
    }
    a.r8 = old;
    Ok(TdxStatus::SUCCESS)
}

/// TDH.VP.FLUSH (`tdh_vp_flush.c`). Locks: TDVPR X:RCX, TDR implicit S (no op
/// state check at all).
pub(crate) fn flush(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (v, td) = vcpu(c, a.rcx, OperandId::RCX, Exclusive)?;
    if td.lifecycle() != Lifecycle::KeysConfigured {
        return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
    }
    let need = MIN_TDVPS + 3 * usize::from(td.num_l2_vms());
    let (pages, assoc) = c.sim.vcpus.with(v, |vc| (vc.pages.len(), vc.assoc_lp));
    if pages < need {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    if assoc != Some(c.lp) {
        return Err(TdxStatus::VCPU_NOT_ASSOCIATED);
    }
    c.locked();
    c.sim.vcpus.with(v, |vc| vc.assoc_lp = None);
    td.add_assoc_vcpus(-1);
    Ok(TdxStatus::SUCCESS)
}
