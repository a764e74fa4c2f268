//! TDH.MR.EXTEND and TDH.MR.FINALIZE: the TD's build-time measurement
//! (`src/vmm_dispatcher/api_calls/tdh_mr_*.c`).
//! Both take only the TDR, exclusively (which makes the TDCS and the S-EPT
//! the leaf's alone).

use sha2::Digest;
use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, abi::MeasurementBlock, regs::SeptState};

use crate::{
    dispatch::{Call, LeafResult, op},
    locks::LockMode::Exclusive,
    memory::PAGE,
    sept::details,
    td::OpState,
};

/// TDH.MR.EXTEND (`tdh_mr_extend.c`). Locks: TDR X:RDX.
///
/// The walk goes to whatever leaf maps the GPA
/// (`check_and_walk_private_gpa_to_leaf`, `helpers.c`) and fails unless it
/// ends at a leaf with RWX != 0: a FREE or blocked entry on the way, or a
/// leaf without permissions (PENDING, BLOCKED, PENDING_BLOCKED: an AUGed
/// page not yet accepted fails here too), gives
/// `TDX_EPT_ENTRY_NOT_PRESENT|RCX` with the details of the entry where the
/// walk ended. The module then refuses a leaf that is not MAPPED with
/// `TDX_EPT_ENTRY_NOT_PRESENT` and no operand; only the migration states
/// (BLOCKEDW, EXPORTED_*) have RWX != 0 without being MAPPED, and the
/// simulator has none, so that answer does not arise here.
pub(crate) fn extend(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let (gpa, rdx) = (a.rcx, a.rdx);
    (a.rcx, a.rdx) = (0, 0);
    let td = c.tdr(rdx, OperandId::RDX, Exclusive)?;
    c.tdcs(td, None, &[OpState::Initialized])?;
    if !gpa.is_multiple_of(256) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    if !td.private_gpa(gpa) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    // Walk to whatever leaf maps the GPA.
    let end = match td.sept.walk(td.pwl(), gpa, 0) {
        Ok(s) | Err(s) => s,
    };
    let e = td.sept.view(end.value);
    // Among the simulator's states, the one leaf with RWX != 0 is MAPPED.
    let Some(entry) = e.filter(|s| s.state == SeptState::MAPPED) else {
        details(a, e, end.level);
        return Err(op(TdxStatus::EPT_ENTRY_NOT_PRESENT, OperandId::RCX));
    };
    c.locked();
    let offset = gpa & ((PAGE << (9 * u32::from(end.level))) - 1);
    let mut chunk = [0u8; 256];
    c.sim.mem.read(entry.pfn * PAGE + offset, &mut chunk);
    if let Some(h) = &mut td.ctl().measurement {
        h.update(MeasurementBlock::mr_extend(gpa).as_bytes());
        h.update(chunk);
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.MR.FINALIZE (`tdh_mr_finalize.c`). Locks: TDR X:RCX.
pub(crate) fn finalize(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let td = c.tdr(a.rcx, OperandId::RCX, Exclusive)?;
    c.tdcs(td, None, &[OpState::Initialized])?;
    if td.ctl().num_vcpus == 0 {
        return Err(TdxStatus::NO_VCPUS);
    }
    c.locked();
    let mut ctl = td.ctl();
    let h = ctl.measurement.take().unwrap_or_default();
    ctl.mrtd = Some(h.finalize().into());
    td.set_op_state(OpState::Runnable);
    Ok(TdxStatus::SUCCESS)
}
