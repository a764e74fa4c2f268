//! TDH.MNG.*: TD build, keys and the HKID's release
//! (`src/vmm_dispatcher/api_calls/tdh_mng_*.c`). TDH.MNG.RD/WR are in
//! [`super::metadata`].

use sha2::{Digest, Sha384};
use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType};

use crate::{
    dispatch::{Call, LeafResult, op},
    kot::KotState,
    locks::LockMode::Exclusive,
    memory::{ModuleUse, PAGE},
    td::{Lifecycle, MAX_TDCS, MIN_TDCS, OpState},
};

/// TDH.MNG.CREATE (`tdh_mng_create.c`). Locks: TDR X:RCX (an NDA page), KOT X.
pub(crate) fn create(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let s = c.sim;
    if a.rdx >> 16 != 0 || !s.machine.is_private_hkid(a.rdx) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let e = c.explicit(a.rcx, OperandId::RCX, 0, Exclusive, PamtPageType::NDA)?;
    c.kot(Exclusive)?;
    let hkid = a.rdx as u16;
    if s.kot.data().get(hkid) != KotState::Free {
        return Err(TdxStatus::HKID_NOT_FREE);
    }
    c.locked();
    s.kot.data().state.insert(hkid, KotState::Assigned);
    let tdr = a.rcx / PAGE;
    let (slot, _) = s.tds.create(tdr, hkid, s.machine.desc.packages as usize);
    e.set(PamtPageType::TDR, u64::from(slot));
    let global = s.sys.global_hkid().unwrap_or(0);
    s.mem
        .give_to_module(tdr, tdr + 1, ModuleUse::Td, global, true);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.KEY.CONFIG (`tdh_mng_key_config.c`). Locks: TDR X:RCX. (The key table's
/// own busy state, `TDX_OPERAND_BUSY|KET`, is not modelled: PCONFIG always
/// succeeds here.)
pub(crate) fn key_config(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rcx, OperandId::RCX, Exclusive)?;
    let pkg = c.package() as usize;
    if td.fatal() {
        return Err(TdxStatus::TD_FATAL);
    }
    if td.lifecycle() != Lifecycle::HkidAssigned {
        return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
    }
    if td.ctl().pkg_configured[pkg] {
        return Err(TdxStatus::KEY_CONFIGURED);
    }
    c.locked();
    let mut ctl = td.ctl();
    ctl.pkg_configured[pkg] = true;
    if ctl.pkg_configured.iter().all(|&b| b) {
        td.set_lifecycle(Lifecycle::KeysConfigured);
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.ADDCX (`tdh_mng_add_cx.c`). Locks: TDR X:RDX, then the new page X:RCX
/// (an NDA page). The op state is read without its lock, once the TDCS
/// has its six pages.
pub(crate) fn addcx(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rdx, OperandId::RDX, Exclusive)?;
    if td.fatal() {
        return Err(TdxStatus::TD_FATAL);
    }
    if td.lifecycle() != Lifecycle::KeysConfigured {
        return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
    }
    let n = td.num_tdcx();
    if n >= MAX_TDCS {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    let e = c.explicit(a.rcx, OperandId::RCX, 0, Exclusive, PamtPageType::NDA)?;
    if n >= MIN_TDCS && td.op_state() != OpState::Uninitialized {
        return Err(TdxStatus::OP_STATE_INCORRECT);
    }
    c.locked();
    let page = a.rcx / PAGE;
    e.set(PamtPageType::TDCX, td.tdr());
    c.sim
        .mem
        .give_to_module(page, page + 1, ModuleUse::Td, td.hkid(), true);
    td.ctl().tdcx.push(page);
    td.set_num_tdcx(n + 1);
    td.chldcnt.add(c.lp, 1);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.INIT (`tdh_mng_init.c`). Locks: TDR X:RCX (the op state is checked
/// without its lock).
pub(crate) fn init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let rcx = a.rcx;
    a.rcx = 0;
    let td = c.tdr(rcx, OperandId::RCX, Exclusive)?;
    c.tdcs(td, None, &[OpState::Uninitialized])?;
    let s = c.sim;
    if !s.machine.shared_hpa_ok(a.rdx, 1024, 1024) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let mut p = [0u8; 1024];
    s.module_read(a.rdx, &mut p, "TDH.MNG.INIT");
    let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |o: usize| u16::from_le_bytes(p[o..o + 2].try_into().expect("2 bytes"));
    let prof = &s.machine.desc.profile;
    let (attributes, xfam) = (u64_at(0), u64_at(8));
    let fixed = |v: u64, f0: u64, f1: u64| v & !f0 == 0 && v & f1 == f1;
    if !fixed(attributes, prof.attributes_fixed0, prof.attributes_fixed1) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::ATTRIBUTES));
    }
    if !fixed(xfam, prof.xfam_fixed0, prof.xfam_fixed1) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::XFAM));
    }
    let max_vcpus = u16_at(16);
    if max_vcpus == 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::MAX_VCPUS));
    }
    let num_l2 = p[18];
    if num_l2 > 3 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::NUM_L2_VMS));
    }
    if td.num_tdcx() < MIN_TDCS + u64::from(num_l2) {
        return Err(TdxStatus::TDCS_NOT_ALLOCATED);
    }
    if p[20..24].iter().any(|&b| b != 0) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let config_flags = u64_at(32);
    if config_flags & !0b111 != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::EXEC_CONTROLS));
    }
    let gpaw = config_flags & 1 != 0;
    let eptp = u64_at(24);
    let pwl = ((eptp >> 3) & 0b111) as u8;
    let eptp_ok = eptp & 0b111 == 6
        && (pwl == 3 || pwl == 4)
        && eptp & !0b11_1111 == 0
        && (!gpaw || pwl == 4);
    if !eptp_ok {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::EPTP_CONTROLS));
    }
    let tsc = u16_at(40);
    if !(4..=400).contains(&tsc) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::TSC_FREQUENCY));
    }
    if p[42..80].iter().any(|&b| b != 0) || p[19] & !1 != 0 || p[232..256].iter().any(|&b| b != 0) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    // CPUID values: only configurable bits of the configurable leaves.
    for i in 0..48usize {
        let v: [u32; 4] = core::array::from_fn(|j| {
            u32::from_le_bytes(
                p[256 + 16 * i + 4 * j..260 + 16 * i + 4 * j]
                    .try_into()
                    .expect("4 bytes"),
            )
        });
        let mask = prof.cpuid_config.get(i).map_or([0; 4], |c| c.mask);
        if v.iter().zip(mask).any(|(&x, m)| x & !m != 0) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::CPUID_CONFIG));
        }
    }
    // IA32_ARCH_CAPABILITIES configuration: only bits the module lets
    // the host configure (the module publishes its mask as global
    // metadata). Model choice, UNCONFIRMED: the mask's value.
    let arch_caps = u64::from_le_bytes(p[224..232].try_into().expect("8 bytes"));
    if arch_caps & !ARCH_CAPS_CONFIG_MASK != 0 {
        return Err(op(
            TdxStatus::OPERAND_INVALID,
            OperandId::IA32_ARCH_CAPABILITIES_CONFIG,
        ));
    }
    c.locked();
    let mut ctl = td.ctl();
    ctl.max_vcpus = u32::from(max_vcpus);
    ctl.num_vcpus = 0;
    ctl.attributes = attributes;
    ctl.tsc_multiplier = 1 << 48;
    ctl.measurement = Some(Sha384::new());
    ctl.params = Some(Box::new(p));
    td.set_num_assoc_vcpus(0);
    td.set_td_epoch(1);
    td.set_ept(pwl, gpaw, num_l2);
    td.set_op_state(OpState::Initialized);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.VPFLUSHDONE (`tdh_mng_vpflushdone.c`). Locks: TDR X:RCX, KOT X (the TDCS is
/// read without its lock).
pub(crate) fn vpflushdone(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rcx, OperandId::RCX, Exclusive)?;
    c.kot(Exclusive)?;
    if !matches!(
        td.lifecycle(),
        Lifecycle::HkidAssigned | Lifecycle::KeysConfigured
    ) {
        return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
    }
    if td.num_tdcx() >= MIN_TDCS
        && td.op_state() != OpState::Uninitialized
        && td.num_assoc_vcpus() != 0
    {
        return Err(TdxStatus::FLUSHVP_NOT_DONE);
    }
    c.locked();
    td.set_lifecycle(Lifecycle::Blocked);
    let hkid = td.hkid();
    let packages = c.sim.machine.desc.packages as usize;
    let mut kot = c.sim.kot.data();
    kot.state.insert(hkid, KotState::Flushed);
    kot.wbinvd_pending.insert(hkid, vec![true; packages]);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.KEY.FREEID (`tdh_mng_key_freeid.c`). Locks: TDR X:RCX, then (after the
/// lifecycle check) KOT X.
pub(crate) fn key_freeid(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rcx, OperandId::RCX, Exclusive)?;
    if td.lifecycle() != Lifecycle::Blocked {
        return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
    }
    c.kot(Exclusive)?;
    let hkid = td.hkid();
    if c.sim
        .kot
        .data()
        .wbinvd_pending
        .get(&hkid)
        .is_some_and(|p| p.iter().any(|&x| x))
    {
        return Err(TdxStatus::WBCACHE_NOT_COMPLETE);
    }
    c.locked();
    td.set_lifecycle(Lifecycle::Teardown);
    let mut kot = c.sim.kot.data();
    kot.state.insert(hkid, KotState::Free);
    kot.wbinvd_pending.remove(&hkid);
    Ok(TdxStatus::SUCCESS)
}

/// The IA32_ARCH_CAPABILITIES bits TD_PARAMS may configure. Model choice
/// (UNCONFIRMED: the module reports its real mask through global metadata,
/// which the references do not give): the "not affected" bits a VMM may
/// want to hide or show for migration pools: RDCL_NO (0), IBRS_ALL (1),
/// RSBA (2), SSB_NO (4), MDS_NO (5), TAA_NO (8), RRSBA (19), BHI_NO (20),
/// PBRSB_NO (24).
pub const ARCH_CAPS_CONFIG_MASK: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 4)
    | (1 << 5)
    | (1 << 8)
    | (1 << 19)
    | (1 << 20)
    | (1 << 24);
