//! TDH.VP.*: vCPUs (`src/vmm_dispatcher/api_calls/tdh_vp_*.c`).
//!
//! A vCPU's lock is its TDVPR page's PAMT entry: CREATE takes the new page
//! exclusively after the TDR (shared) and the op state (shared); the other
//! leaves take the TDVPR first (ADDCX, INIT and FLUSH exclusively, RD and
//! WR shared), then the TDR implicitly (shared, `BUSY|TDR`; exclusive for
//! TDH.VP.INIT version 1). TDH.VP.ENTER takes the TDVPR and the TDR shared
//! and holds them while the guest runs ([`enter`]).

use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType};

use super::{instr, metadata};
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
    c.pamt_count(a.rcx, true);
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
    c.pamt_count(a.rcx, true);
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
/// The LP's IA32_TSC_ADJUST must equal TDH.SYS.INIT's sample
/// ([`crate::Simulator::set_host_msr`]): else `TDX_INCONSISTENT_MSR|0x3B`
/// right after the VCPU_INDEX is taken, and 1.5.01 does not give the index
/// back either (`tdh_vp_init.c`). The model checks it before version 1's
/// x2APIC ID (1.5.05's order there was not read).
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
    // `tdh_vp_init.c`: after the VCPU_INDEX is taken, which the failure
    // does not give back (NUM_VCPUS counts it; the vCPU stays
    // uninitialized).
    if let Err(st) = tsc_adjust_unchanged(c) {
        ctl.num_vcpus += 1;
        return Err(st);
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

/// IA32_TSC_ADJUST of the calling LP equal to the value TDH.SYS.INIT
/// sampled, else `TDX_INCONSISTENT_MSR|0x3B` (TDH.VP.INIT, TDH.VP.ENTER,
/// TDH.MNG.INIT: "we read TSC below").
pub(crate) fn tsc_adjust_unchanged(c: &Call<'_>) -> Result<(), TdxStatus> {
    let now = c.sim.host_msr(c.lp, crate::HostMsr::TscAdjust);
    if now
        != c.sim
            .tsc_adjust_sample
            .load(crate::locks::Ordering::Acquire)
    {
        return Err(op(
            TdxStatus::INCONSISTENT_MSR,
            OperandId(instr::IA32_TSC_ADJUST),
        ));
    }
    Ok(())
}

/// RCX of TDH.VP.ENTER: bits 11:0 and 63:54 reserved
/// (`include/tdx_api_defs.h`, `tdvpr_and_flags_t`).
const ENTER_RESERVED: u64 = 0xFFF | (0x3FF << 54);
/// RCX bit 52: HOST_RECOVERABILITY_HINT.
const ENTER_HOST_HINT: u64 = 1 << 52;
/// RCX bit 53: RESUME_L1 (L2 only).
const ENTER_RESUME_L1: u64 = 1 << 53;

/// TDH.VP.ENTER (`src/td_transitions/tdh_vp_enter.c`): the checks in the
/// module's order, then the guest runs ([`crate::guest`]) until its next
/// TD exit, whose registers the leaf returns (RAX the exit's status and
/// reason).
///
/// Checks: leaf version (dispatcher); RCX reserved bits
/// (`OPERAND_INVALID|RCX`); the TDVPR page, PAMT walk shared (`|RCX`); its
/// TDR implicit shared (`BUSY|TDR`); TD not fatal, keys configured, TDCS
/// allocated, op-state lock shared (`BUSY|OP_STATE`) and RUNNABLE; enough
/// TDVPS pages (`TDCX_NUM_INCORRECT`); vCPU READY (`VCPU_STATE_INCORRECT`:
/// not initialized, in the guest on another LP, or disabled); association
/// compare-exchange (`VCPU_ASSOCIATED` when associated with another LP,
/// which stays so until TDH.VP.FLUSH on that LP; a new association is not
/// undone by a later failure); RCX bit 52 without a trap-like last exit,
/// or bit 53 on an L1 vCPU (`OPERAND_INVALID|RCX`); the simulated TSC
/// ([`crate::Simulator::set_tsc`]) earlier than the vCPU's last TD exit
/// (`TSC_ROLLBACK`); the epoch lock shared
/// (`BUSY|TD_EPOCH`), under which the entry is counted in
/// `refcount[td_epoch & 1]`; the zero-step filter: when the vCPU's last
/// private-GPA EPT violations at one guest RIP passed the threshold (6),
/// the S-EPT tree lock exclusive (`BUSY|SEPT_TREE`), and if a GPA they
/// listed still faults, an emulated EPT-violation exit (RAX 48, RCX 2, R8
/// the GPA) without entering the guest. The host-MSR checks
/// ([`crate::Simulator::set_host_msr`]) sit where the module has them: the
/// LP's IA32_MISC_ENABLE.BOOT_NT4 before everything
/// (`LIMIT_CPUID_MAXVAL_SET`), IA32_TSC_ADJUST differing from TDH.SYS.INIT's
/// sample after the RCX bit 52/53 checks (`INCONSISTENT_MSR|0x3B`), and
/// for a TD whose CPUID has MONITOR/MWAIT a clear
/// IA32_MISC_ENABLE.ENABLE_MONITOR_FSM after TSC_ROLLBACK
/// (`INCORRECT_MSR_VALUE|0x1A0`). Not modelled: the zero-step #VE
/// notification (NOTIFY_ENABLES).
///
/// While the guest runs the leaf holds what the module holds until the TD
/// exit: the TDR's PAMT entry and the TDVPR's (shared) and one count in
/// the epoch's refcount; the op-state and epoch locks are let go. On a
/// failure only RAX changes.
pub(crate) fn enter(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    use crate::td::{LastExit, VcpuState};
    let rcx = a.rcx;
    // The LP's IA32_MISC_ENABLE, read first (`tdh_vp_enter.c`).
    let misc_enable = c.sim.host_msr(c.lp, crate::HostMsr::MiscEnable);
    if misc_enable & instr::MISC_BOOT_NT4 != 0 {
        return Err(TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    }
    if rcx & ENTER_RESERVED != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let pa = rcx & ((1 << 52) - 1);
    let (v, td) = vcpu(c, pa, OperandId::RCX, Shared, Shared)?;
    let mark = c.held.mark();
    c.tdcs(td, Some(Shared), &[OpState::Runnable])?;
    let need = MIN_TDVPS + 3 * usize::from(td.num_l2_vms());
    if c.sim.vcpus.with(v, |vc| vc.pages.len()) < need {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    let lp = c.lp;
    // The state check and the association's compare-exchange.
    let (new_assoc, last_exit) = c.sim.vcpus.with(v, |vc| {
        if vc.state != VcpuState::Ready {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        }
        match vc.assoc_lp {
            Some(other) if other != lp => Err(TdxStatus::VCPU_ASSOCIATED),
            Some(_) => Ok((false, vc.last_exit)),
            None => {
                vc.assoc_lp = Some(lp);
                Ok((true, vc.last_exit))
            }
        }
    })?;
    if new_assoc {
        td.add_assoc_vcpus(1);
    }
    if rcx & ENTER_HOST_HINT != 0 && last_exit != LastExit::AsyncTrap {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    if rcx & ENTER_RESUME_L1 != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    tsc_adjust_unchanged(c)?;
    // TSC earlier than the vCPU's last exit (signed difference).
    let tsc = c.sim.tsc.load(crate::locks::Ordering::Acquire);
    let last_exit_tsc = c.sim.vcpus.with(v, |vc| vc.last_exit_tsc);
    if (tsc.wrapping_sub(last_exit_tsc) as i64) < 0 {
        return Err(TdxStatus::TSC_ROLLBACK);
    }
    // A TD with MONITOR/MWAIT needs the LP's MONITOR FSM enabled.
    if instr::cpuid_flags(c.sim, td).monitor_mwait
        && misc_enable & instr::MISC_ENABLE_MONITOR_FSM == 0
    {
        return Err(op(
            TdxStatus::INCORRECT_MSR_VALUE,
            OperandId(instr::IA32_MISC_ENABLE),
        ));
    }
    c.epoch(td, Shared)?;
    // The zero-step filter (`td_entry_stepping_filter`,
    // `src/td_transitions/td_exit_stepping.c`): the RIP at entry; with
    // GPAs listed, the S-EPT tree lock exclusive (held until the guest is
    // entered), and an emulated EPT-violation exit without entering if
    // one of them still faults.
    let listed = c.sim.vcpus.with(v, |vc| {
        vc.rip_on_entry = vc.rip;
        vc.epf_gpas.clone()
    });
    if !listed.is_empty() {
        c.held
            .sharex(&td.tree_lock, Exclusive)
            .map_err(|b| op(b.status(), OperandId::SEPT_TREE))?;
        if let Some(&gpa) = listed.iter().find(|&&g| super::tdg::epf_expected(td, g)) {
            c.locked();
            c.sim
                .vcpus
                .with(v, |vc| vc.last_exit = crate::td::LastExit::AsyncFault);
            let exit = super::tdg::zero_step_exit(gpa);
            exit.write(a);
            return Ok(TdxStatus::from_raw(exit.rax));
        }
    }
    c.locked();
    // In the guest for a host's kick from before the epoch count to after
    // the exit's (see `Guests::arrive`): a TRACK and kick in between must
    // wait for this entry.
    c.sim.guests.arrive(v, lp);
    let epoch = td.enter_epoch();
    // The op-state and epoch locks go before the guest runs.
    c.held.release_to(mark);
    c.sim.vcpus.with(v, |vc| {
        vc.vcpu_epoch = epoch;
        vc.state = VcpuState::Active;
    });
    let hint = rcx & ENTER_HOST_HINT != 0;
    let exit = super::tdg::run_guest(c.sim, td, v, a, last_exit, hint, lp);
    let now = c.sim.tsc.load(crate::locks::Ordering::Acquire);
    if !exit.dead {
        c.sim.vcpus.with(v, |vc| {
            vc.state = exit.state;
            vc.last_exit = exit.last;
            vc.last_exit_tsc = now;
            // `vmexit_stepping_filter` (`td_exit_stepping.c`), which the
            // module runs on every VM exit (`tdx_td_dispatcher.c`): forward
            // progress since the entry resets the EPT-violation tracking.
            // An EPT-violation exit did so already, before counting
            // (`super::tdg::epf_stepping_log`).
            if !exit.private_epf && vc.rip != vc.rip_on_entry {
                vc.epf_count = 0;
                vc.epf_gpas.clear();
            }
        });
        td.exit_epoch(epoch);
    }
    c.sim.guests.depart(v);
    if exit.fatal {
        td.set_fatal();
    }
    exit.write(a);
    Ok(TdxStatus::from_raw(exit.rax))
}
