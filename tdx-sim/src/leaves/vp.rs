//! TDH.VP.*: vCPUs (`src/vmm_dispatcher/api_calls/tdh_vp_*.c`).
//!
//! A vCPU's lock is its TDVPR page's PAMT entry: CREATE takes the new page
//! exclusively after the TDR (shared) and the op state (shared); the other
//! leaves take the TDVPR first (ADDCX, INIT and FLUSH exclusively, RD and
//! WR shared), then the TDR implicitly (shared, `BUSY|TDR`; exclusive for
//! TDH.VP.INIT version 1). Not modelled: TD entry.

use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType};

use super::metadata;
use crate::{
    dispatch::{Call, LeafResult, op},
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
/// `mode`, then its TD's TDR implicitly in `tdr_mode`: the TDVPR frame and
/// TD.
pub(crate) fn vcpu<'s>(
    c: &mut Call<'s>,
    pa: u64,
    o: OperandId,
    mode: LockMode,
    tdr_mode: LockMode,
) -> Result<(u64, &'s Td), TdxStatus> {
    let e: &Entry = c.explicit(pa, o, 0, mode, PamtPageType::TDVPR)?;
    let td = c.implicit_tdr(e.owner_field(), tdr_mode)?;
    Ok((pa / PAGE, td))
}

/// TDH.VP.ADDCX (`tdh_vp_addcx.c`). Locks: TDVPR X:RDX, TDR implicit S, op
/// state S, the new page X:RCX (an NDA page).
pub(crate) fn addcx(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (v, td) = vcpu(c, a.rdx, OperandId::RDX, Exclusive, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized])?;
    let (initialized, pages) = c.sim.vcpus.with(v, |vc| (vc.initialized(), vc.pages.len()));
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

/// `TDX_X2APIC_ID_NOT_UNIQUE` (module 1.5.05's
/// `include/auto_gen/tdx_error_codes_defs.h`); the operand is the x2APIC
/// ID.
pub(crate) const X2APIC_ID_NOT_UNIQUE: TdxStatus = TdxStatus::X2APIC_ID_NOT_UNIQUE;

/// TDH.VP.INIT (`tdh_vp_init.c`). Locks: TDVPR X:RCX, TDR implicit S
/// (version 0) or X (version 1), op state S.
///
/// Version 1, which only profiles that list it reach (module 1.5.05; the
/// 1.5.01 dispatcher refuses it), takes the vCPU's x2APIC ID in R8. After
/// the VCPU_INDEX is taken (MAX_VCPUS_EXCEEDED undoes it): an ID above 32
/// bits is `TDX_OPERAND_INVALID|R8` (undone); an ID a lower VCPU_INDEX
/// has is `TDX_X2APIC_ID_NOT_UNIQUE` with that ID, and 1.5.05 does **not**
/// give the index back (the vCPU stays uninitialized; NUM_VCPUS counts it).
/// A lower index whose vCPU was initialized with version 0, or lost to
/// that path, holds ID 0. Version 0 records that the topology is not
/// configured (TDCS TOPOLOGY_ENUM_CONFIGURED, 1.5.05).
///
/// Not modelled: the IA32_TSC_ADJUST check (`TDX_INCONSISTENT_MSR|0x3B`).
pub(crate) fn init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let v1 = c.version >= 1;
    let tdr_mode = if v1 { Exclusive } else { Shared };
    let (v, td) = vcpu(c, a.rcx, OperandId::RCX, Exclusive, tdr_mode)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized])?;
    let need = MIN_TDVPS + 3 * usize::from(td.num_l2_vms());
    let (initialized, pages) = c.sim.vcpus.with(v, |vc| (vc.initialized(), vc.pages.len()));
    if pages < need {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    if initialized {
        return Err(TdxStatus::VCPU_STATE_INCORRECT);
    }
    let mut ctl = td.ctl();
    let index = ctl.num_vcpus;
    if index >= ctl.max_vcpus {
        return Err(TdxStatus::MAX_VCPUS_EXCEEDED);
    }
    if v1 {
        let Ok(x2apic) = u32::try_from(a.r8) else {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
        };
        // The TDCS array is zero where no ID was recorded.
        let taken =
            (0..index as usize).any(|i| ctl.x2apic_ids.get(i).copied().unwrap_or(0) == x2apic);
        if taken {
            // The index stays taken (module 1.5.05 does not undo it here).
            ctl.num_vcpus += 1;
            return Err(op(X2APIC_ID_NOT_UNIQUE, OperandId(x2apic)));
        }
    }
    drop(ctl);
    c.locked();
    let mut ctl = td.ctl();
    ctl.num_vcpus += 1;
    let slots = (index as usize + 1).max(ctl.x2apic_ids.len());
    ctl.x2apic_ids.resize(slots, 0);
    if v1 {
        ctl.x2apic_ids[index as usize] = a.r8 as u32;
    } else {
        ctl.vp_init_v0 = true;
    }
    drop(ctl);
    td.add_assoc_vcpus(1);
    let lp = c.lp;
    c.sim.vcpus.with(v, |vc| {
        vc.state = crate::td::VcpuState::Ready;
        vc.index = index;
        vc.assoc_lp = Some(lp);
    });
    Ok(TdxStatus::SUCCESS)
}

/// TDH.VP.RD / TDH.VP.WR (`tdh_vp_rd_wr.c`): RD version 1 sets RDX to -1
/// and every RD and WR clears R8 when they start. Locks: TDVPR S:RCX, TDR
/// implicit S, op state S (RD and WR in INITIALIZED and RUNNABLE among the
/// model's op states); the rest is [`metadata::vp_rd_wr`].
pub(crate) fn rd_wr(c: &mut Call<'_>, a: &mut SeamcallArgs, write: bool) -> LeafResult {
    let v1 = !write && c.version > 0;
    let start = metadata::VpStart {
        field: a.rdx,
        value: a.r8,
        mask: a.r9,
        v1,
    };
    if v1 {
        a.rdx = u64::MAX;
    }
    a.r8 = 0;
    let vt = vcpu(c, a.rcx, OperandId::RCX, Shared, Shared)?;
    c.tdcs(
        vt.1,
        Some(Shared),
        &[OpState::Initialized, OpState::Runnable],
    )?;
    metadata::vp_rd_wr(c, a, write, vt, start)
}

/// TDH.VP.FLUSH (`tdh_vp_flush.c`). Locks: TDVPR X:RCX, TDR implicit S (no op
/// state check at all).
pub(crate) fn flush(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (v, td) = vcpu(c, a.rcx, OperandId::RCX, Exclusive, Shared)?;
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
