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
    machine::{MachineDesc, NativeCpu},
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
    c.pamt_count(a.rcx, true);
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
    c.pamt_count(a.rcx, true);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MNG.INIT (`tdh_mng_init.c` `tdh_mng_init`). Locks: TDR X:RCX (the
/// op state is checked without its lock).
///
/// Output registers: RCX := 0 before any check; RCX := the CPUID leaf and
/// subleaf on the CPUID-configuration errors that report one; RDX is never
/// written. The LP's host MSRs ([`crate::Simulator::set_host_msr`]):
/// IA32_MISC_ENABLE bit 22 set is `TDX_LIMIT_CPUID_MAXVAL_SET` (before the
/// TDR), IA32_TSC_ADJUST changed since TDH.SYS.INIT is
/// `TDX_INCONSISTENT_MSR|0x3B` (after the TSC frequency). The module
/// writes some TDCS fields before a later check fails; the simulator
/// commits only on success, which no leaf can tell apart while the op
/// state stays UNINITIALIZED (a retry rewrites them all).
pub(crate) fn init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let rcx = a.rcx;
    a.rcx = 0;
    let misc_enable = c.sim.host_msr(c.lp, crate::HostMsr::MiscEnable);
    if misc_enable & super::instr::MISC_BOOT_NT4 != 0 {
        return Err(TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    }
    let td = c.tdr(rcx, OperandId::RCX, Exclusive)?;
    c.tdcs(td, None, &[OpState::Uninitialized])?;
    let s = c.sim;
    if !s.machine.shared_hpa_ok(a.rdx, 1024, 1024) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let mut p = [0u8; 1024];
    s.module_read(a.rdx, &mut p, "TDH.MNG.INIT");
    let tsc_adjust = super::vp::tsc_adjust_unchanged(c);
    let params = match check_td_params(&s.machine.desc, td.num_tdcx(), &p, tsc_adjust) {
        Ok(v) => v,
        Err(e) => {
            a.rcx = e.rcx;
            return Err(e.status);
        }
    };
    c.locked();
    let mut ctl = td.ctl();
    ctl.max_vcpus = u32::from(params.max_vcpus);
    ctl.num_vcpus = 0;
    ctl.attributes = params.attributes;
    ctl.tsc_multiplier = 1 << 48;
    ctl.measurement = Some(Sha384::new());
    ctl.params = Some(Box::new(p));
    td.set_num_assoc_vcpus(0);
    td.set_td_epoch(1);
    td.set_ept(params.pwl, params.gpaw, params.num_l2_vms);
    td.set_op_state(OpState::Initialized);
    Ok(TdxStatus::SUCCESS)
}

/// What TDH.MNG.INIT keeps of an accepted TD_PARAMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TdInitParams {
    pub(crate) attributes: u64,
    pub(crate) xfam: u64,
    pub(crate) max_vcpus: u16,
    pub(crate) num_l2_vms: u8,
    pub(crate) config_flags: u64,
    /// EPT page-walk length minus one (3 or 4).
    pub(crate) pwl: u8,
    pub(crate) gpaw: bool,
    pub(crate) tsc_frequency: u16,
}

/// A TD_PARAMS check that failed: the status and the RCX it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InitError {
    pub(crate) status: TdxStatus,
    pub(crate) rcx: u64,
}

impl From<TdxStatus> for InitError {
    fn from(status: TdxStatus) -> Self {
        Self { status, rcx: 0 }
    }
}

/// ATTRIBUTES bit 0, DEBUG.
const ATTR_DEBUG: u64 = 1 << 0;
/// ATTRIBUTES bit 29, MIGRATABLE.
const ATTR_MIGRATABLE: u64 = 1 << 29;
/// ATTRIBUTES bit 63, PERFMON.
const ATTR_PERFMON: u64 = 1 << 63;
/// `MIN_PA_FOR_PML5` (`src/common/x86_defs/x86_defs.h`).
const MIN_PA_FOR_PML5: u32 = 49;
/// `MAX_L2_VMS` (`src/common/data_structures/tdx_tdvps.h`).
const MAX_L2_VMS: u8 = 3;
/// The CPUID area of TD_PARAMS starts here.
const CPUID_OFFSET: usize = 256;
/// Operand ID of `TDX_INCORRECT_MSR_VALUE` for IA32_ARCH_CAPABILITIES: the
/// MSR's address (0x10A).
const IA32_ARCH_CAPABILITIES_MSR: OperandId = OperandId(0x10A);

/// Every TD_PARAMS check of TDH.MNG.INIT after the TD_PARAMS address, in
/// the module's order (`read_and_set_td_configurations`,
/// `read_and_set_cpuid_configurations`, then `tdh_mng_init` itself, all in
/// `src/vmm_dispatcher/api_calls/tdh_mng_init.c`), against the module
/// profile and the CPU of `desc`. `num_tdcx` is the TD's TDCS page count;
/// `tsc_adjust` is the LP's IA32_TSC_ADJUST check, which the module makes
/// after TSC_FREQUENCY.
pub(crate) fn check_td_params(
    desc: &MachineDesc,
    num_tdcx: u64,
    p: &[u8; 1024],
    tsc_adjust: Result<(), TdxStatus>,
) -> Result<TdInitParams, InitError> {
    let prof = &desc.profile;
    let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
    let u16_at = |o: usize| u16::from_le_bytes(p[o..o + 2].try_into().expect("2 bytes"));
    let zero = |r: core::ops::Range<usize>| p[r].iter().all(|&b| b == 0);
    let invalid = |o: OperandId| InitError::from(op(TdxStatus::OPERAND_INVALID, o));
    let fixed = |v: u64, f0: u64, f1: u64| v & !f0 == 0 && v & f1 == f1;

    // ATTRIBUTES (`verify_td_attributes`, src/common/helpers/helpers.c):
    // FIXED0/FIXED1, and a migratable TD is neither a debug TD nor uses
    // PERFMON.
    let attributes = u64_at(0);
    if !fixed(attributes, desc.attributes_fixed0(), prof.attributes_fixed1)
        || (attributes & ATTR_MIGRATABLE != 0 && attributes & (ATTR_DEBUG | ATTR_PERFMON) != 0)
    {
        return Err(invalid(OperandId::ATTRIBUTES));
    }
    let migratable = attributes & ATTR_MIGRATABLE != 0;

    // XFAM (`check_xfam`, helpers.c): only bits the module allows and the
    // CPU supports; x87 and SSE; AVX-512 only with AVX and its three
    // components together; CET user/supervisor together; AMX TILECFG and
    // TILEDATA together.
    let xfam = u64_at(8);
    let bit = |n: u32| xfam >> n & 1;
    if !fixed(xfam, desc.xfam_fixed0(), prof.xfam_fixed1)
        || (bit(5) == 1 && bit(2) == 0)
        || bit(5) != bit(6)
        || bit(5) != bit(7)
        || bit(11) != bit(12)
        || bit(17) != bit(18)
    {
        return Err(invalid(OperandId::XFAM));
    }

    // Module 1.5.05 also refuses more than its MAX_VCPUS_PER_TD
    // (`tdh_mng_init.c` of 1.5.05); 1.5.01 has no such limit.
    let max_vcpus = u16_at(16);
    if max_vcpus == 0 || prof.max_vcpus_per_td.is_some_and(|m| max_vcpus > m) {
        return Err(invalid(OperandId::MAX_VCPUS));
    }
    let num_l2_vms = p[18];
    if num_l2_vms > MAX_L2_VMS {
        return Err(invalid(OperandId::NUM_L2_VMS));
    }
    // `is_required_tdcs_allocated`: one more TDCS page per L2 VM
    // (src/common/data_structures/td_control_structures.h).
    if num_tdcx < MIN_TDCS + u64::from(num_l2_vms) {
        return Err(TdxStatus::TDCS_NOT_ALLOCATED.into());
    }
    if !zero(20..24) {
        return Err(invalid(OperandId::RDX));
    }

    // CONFIG_FLAGS (`verify_td_config_flags`, helpers.c).
    let config_flags = u64_at(32);
    if !fixed(
        config_flags,
        prof.config_flags_fixed0,
        prof.config_flags_fixed1,
    ) {
        return Err(invalid(OperandId::EXEC_CONTROLS));
    }
    let gpaw = config_flags & 1 != 0;

    // EPTP_CONTROLS (`verify_and_set_td_eptp_controls`, helpers.c):
    // write-back; a 4-level walk, or 5-level when the CPU has 5-level EPT
    // and a physical address width of at least 49 bits; A/D, SSS, the
    // reserved bits and the root address all 0; GPAW needs 5 levels.
    let eptp = u64_at(24);
    let pwl = ((eptp >> 3) & 0b111) as u8;
    let max_pwl = if desc.cpu.ept_pml5 { 4 } else { 3 };
    let eptp_ok = eptp & 0b111 == 6
        && (3..=max_pwl).contains(&pwl)
        && eptp & !0b11_1111 == 0
        && (pwl < 4 || desc.phys_addr_bits >= MIN_PA_FOR_PML5)
        && (!gpaw || pwl == 4);
    if !eptp_ok {
        return Err(invalid(OperandId::EPTP_CONTROLS));
    }

    // VIRT_TSC_FREQUENCY_MIN/MAX, units of 25 MHz (td_control_structures.h).
    let tsc_frequency = u16_at(40);
    if !(4..=400).contains(&tsc_frequency) {
        return Err(invalid(OperandId::TSC_FREQUENCY));
    }
    tsc_adjust.map_err(InitError::from)?;
    // reserved_1, msr_config_ctls bits 7:1, reserved_2: three checks with
    // the same status, in this order.
    if !zero(42..80) || p[19] & !1 != 0 || !zero(232..256) {
        return Err(invalid(OperandId::RDX));
    }

    check_cpuid_config(desc, migratable, p)?;
    if prof.cpuid_1f_topology {
        check_cpuid_1f(p, &prof.cpuid_config)?;
    }

    // reserved_3: everything after the module's CPUID entries.
    if !zero(CPUID_OFFSET + 16 * prof.cpuid_config.len()..1024) {
        return Err(invalid(OperandId::RDX));
    }

    // IA32_ARCH_CAPABILITIES configuration (`init_virt_ia32_arch_capabilities`,
    // src/common/helpers/virt_msr_helpers.c): any bit needs
    // msr_config_ctls bit 0, and only the configurable bits may be set.
    let arch_caps = u64_at(224);
    if (p[19] & 1 == 0 && arch_caps != 0) || arch_caps & !prof.arch_caps_config_mask != 0 {
        return Err(invalid(OperandId::IA32_ARCH_CAPABILITIES_CONFIG));
    }

    // `td_immutable_state_cross_check` (helpers.c): a migratable TD has no
    // L2 VMs.
    if migratable && num_l2_vms > 0 {
        return Err(invalid(OperandId::RDX));
    }
    Ok(TdInitParams {
        attributes,
        xfam,
        max_vcpus,
        num_l2_vms,
        config_flags,
        pwl,
        gpaw,
        tsc_frequency,
    })
}

/// TD_PARAMS CPUID entry `i`: EAX, EBX, ECX, EDX.
pub(crate) fn cpuid_entry(p: &[u8; 1024], i: usize) -> [u32; 4] {
    let at = CPUID_OFFSET + 16 * i;
    core::array::from_fn(|j| {
        u32::from_le_bytes(p[at + 4 * j..at + 4 * j + 4].try_into().expect("4 bytes"))
    })
}

/// The CPUID configuration checks of `read_and_set_cpuid_configurations`
/// (tdh_mng_init.c). The module walks its CPUID lookup table, so the
/// entries are checked in lookup order ([`CpuidConfig::lookup_index`]:
/// entries 0-9, 10, 11 in 1.5.01; 0-9, 10, 12-17, 11 in 1.5.05). For
/// each entry: EAX, EBX, ECX, EDX each only with configurable bits (RCX :=
/// leaf/subleaf); after leaf 1, its family/model/stepping (RCX :=
/// leaf/subleaf); after leaf 7/0, the TSX rules (RCX stays 0 in 1.5.01 and
/// is leaf 7/0 in 1.5.05 when HLE ≠ RTM, never on the TSX_CTRL error).
///
/// [`CpuidConfig::lookup_index`]: crate::CpuidConfig::lookup_index
fn check_cpuid_config(
    desc: &MachineDesc,
    migratable: bool,
    p: &[u8; 1024],
) -> Result<(), InitError> {
    let cpu = &desc.cpu;
    let mut order: Vec<usize> = (0..desc.profile.cpuid_config.len()).collect();
    order.sort_by_key(|&i| desc.profile.cpuid_config[i].lookup_index);
    for i in order {
        let entry = &desc.profile.cpuid_config[i];
        let v = cpuid_entry(p, i);
        let refused = InitError {
            status: op(TdxStatus::OPERAND_INVALID, OperandId::CPUID_CONFIG),
            rcx: entry.leaf_subleaf(),
        };
        if v.iter().zip(entry.mask()).any(|(&x, m)| x & !m != 0) {
            return Err(refused);
        }
        match (entry.leaf, entry.subleaf) {
            // Leaf 1 EAX: every bit is CONFIG_DIRECT or fixed to 0 (the
            // lookup entry's FIXED0 covers 31:28 and 15:14), so the TD's
            // F/M/S is the configured value, 0 meaning the CPU's own. A
            // migratable TD's must pass `check_fms_config`
            // (src/common/helpers/cpuid_fms.c); a non-migratable TD's must
            // be the CPU's.
            (0x1, None) => {
                let fms = if v[0] == 0 { cpu.fms } else { v[0] };
                let ok = if migratable {
                    fms_config_ok(&desc.profile.allowed_fms, cpu.fms, fms)
                } else {
                    fms == cpu.fms
                };
                if !ok {
                    return Err(refused);
                }
            }
            // Leaf 7/0 EBX: HLE (4) and RTM (11) are ALLOW_DIRECT, not
            // masked by XFAM: the TD sees configured & native. They must
            // be equal (`TDX_OPERAND_INVALID|CPUID_CONFIG`; RCX not set by
            // 1.5.01, leaf 7/0 by 1.5.05), and TSX needs
            // IA32_ARCH_CAPABILITIES.TSX_CTRL
            // (`TDX_INCORRECT_MSR_VALUE|0x10A`).
            (0x7, Some(0)) => {
                let hle = v[1] >> 4 & 1 == 1 && cpu.hle;
                let rtm = v[1] >> 11 & 1 == 1 && cpu.rtm;
                if hle != rtm {
                    return Err(InitError {
                        rcx: if desc.profile.hle_rtm_error_sets_rcx {
                            entry.leaf_subleaf()
                        } else {
                            0
                        },
                        ..refused
                    });
                }
                if hle && cpu.arch_capabilities & NativeCpu::ARCH_CAP_TSX_CTRL == 0 {
                    return Err(
                        op(TdxStatus::INCORRECT_MSR_VALUE, IA32_ARCH_CAPABILITIES_MSR).into(),
                    );
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The CPUID(0x1F) level types (`cpuid_topology_level_type_e`,
/// src/common/x86_defs/x86_defs.h): INVALID 0, SMT 1, CORE 2, MODULE 3,
/// TILE 4, DIE 5; 6 is the end of the range.
const LEVEL_CORE: u32 = 2;
const LEVEL_MAX: u32 = 6;

/// `check_cpuid_1f` with a null configuration allowed (src/common/helpers/
/// helpers.c, module 1.5.05), after the CPUID walk: the six CPUID(0x1F)
/// sub-leaves as configured (only CONFIG_DIRECT bits are left, so the
/// TD's value is the configured one). All six zero: the CPU's own
/// topology, which the model takes to be well formed. Otherwise, walking
/// the sub-leaves: a zero sub-leaf 0 with a nonzero later one, a level
/// type (ECX 15:8) not above the previous sub-leaf's or 6 and above, an
/// INVALID (0) sub-leaf 0, or an INVALID sub-leaf before any CORE level
/// is `TDX_CPUID_LEAF_1F_FORMAT_UNRECOGNIZED` (RCX stays 0). As in the
/// module, an INVALID level resets "the previous level".
fn check_cpuid_1f(p: &[u8; 1024], table: &[crate::CpuidConfig]) -> Result<(), InitError> {
    let bad = || InitError::from(TdxStatus::CPUID_LEAF_1F_FORMAT_UNRECOGNIZED);
    let sub = |s: u32| {
        table
            .iter()
            .position(|c| c.leaf == 0x1F && c.subleaf == Some(s))
            .map_or([0; 4], |i| cpuid_entry(p, i))
    };
    if sub(0) == [0; 4] {
        if (1..LEVEL_MAX).any(|s| sub(s) != [0; 4]) {
            return Err(bad());
        }
        return Ok(());
    }
    let (mut prev, mut core) = (0, false);
    for s in 0..LEVEL_MAX {
        let level = sub(s)[2] >> 8 & 0xFF;
        if level != 0 {
            if level <= prev || level >= LEVEL_MAX {
                return Err(bad());
            }
            core |= level == LEVEL_CORE;
        } else if s == 0 || !core {
            return Err(bad());
        }
        prev = level;
    }
    Ok(())
}

/// `check_fms_config` (src/common/helpers/cpuid_fms.c): the F/M/S a
/// migratable TD may claim on a CPU whose own is `platform`. `allowed` is
/// the module's model list, newest first, each with its latest stepping.
/// Family and model (every bit but stepping 3:0) must be the CPU's or an
/// older model of the list; the stepping no later than the list's for that
/// model, nor than the CPU's own for the CPU's model.
fn fms_config_ok(allowed: &[u32], platform: u32, fms: u32) -> bool {
    let model = |x: u32| x & !0xF;
    let stepping = |x: u32| x & 0xF;
    if model(platform) == model(fms) && stepping(fms) > stepping(platform) {
        return false;
    }
    // The machine description is refused for a CPU model the module does
    // not know (`find_table_start` would be a module fatal error).
    let Some(start) = allowed.iter().position(|&a| model(a) == model(platform)) else {
        return false;
    };
    let mut found = false;
    for &a in &allowed[start..] {
        if model(a) == model(fms) {
            found = true;
            if stepping(fms) > stepping(a) {
                return false;
            }
        }
    }
    found
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

/// The IA32_ARCH_CAPABILITIES bits TD_PARAMS may configure in module
/// 1.5.01: SSB_NO (4), RRSBA (19), BHI_NO (20), PBRSB_NO (24)
/// (`IA32_ARCH_CAPABILITIES_CONFIG_MASK`, src/common/x86_defs/msr_defs.h;
/// checked by `init_virt_ia32_arch_capabilities`,
/// src/common/helpers/virt_msr_helpers.c).
pub const ARCH_CAPS_CONFIG_MASK: u64 = (1 << 4) | (1 << 19) | (1 << 20) | (1 << 24);
