//! TDH.EXT.MEM.ADD and TDH.EXT.INIT, the extension leaves of module 1.5.x
//! profiles that have them. Model choices throughout: the references give
//! the register ABI, not the module's checks or locks. The simulator takes
//! each donated page's PAMT entry exclusively (an explicit 4K walk, as every
//! leaf that takes a page does; `TDX_OPERAND_BUSY|RCX`) and changes the
//! pool's counters under the module-global data.

use tdx_sys::SeamcallArgs;
use tdx_types::{OperandId, TdxStatus, metadata::PamtPageType, regs::HpaListInfo};

use crate::{
    dispatch::{Call, LeafResult, op},
    locks::LockMode,
    memory::{ModuleUse, PAGE},
};

/// Steps TDH.EXT.INIT takes; a fault can interrupt it between steps.
const EXT_INIT_STEPS: u32 = 4;

/// TDH.EXT.MEM.ADD: donates the pages of an HPA list to the pool.
pub(crate) fn mem_add(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let s = c.sim;
    let list = HpaListInfo::from_bits(a.rcx);
    let reserved = a.rcx & (0b111 | 0b111 << 52) != 0;
    let list_pa = list.list_pfn() * PAGE;
    if reserved
        || list.first_entry() > list.last_entry()
        || !s.machine.shared_hpa_ok(list_pa, PAGE, PAGE)
    {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let hkid = s.sys.global_hkid().unwrap_or(0);
    for (done, idx) in (list.first_entry()..=list.last_entry()).enumerate() {
        if c.stop_early.is_some_and(|n| done >= n as usize) {
            a.rcx = list.with_first_entry(idx).into_bits();
            return Ok(TdxStatus::INTERRUPTED_RESUMABLE);
        }
        let pa = s.module_read_u64(list_pa + 8 * u64::from(idx), "TDH.EXT.MEM.ADD");
        let mark = c.held.mark();
        let e = match c.explicit(
            pa,
            OperandId::RCX,
            0,
            LockMode::Exclusive,
            PamtPageType::NDA,
        ) {
            Ok(e) => e,
            Err(st) => {
                a.rcx = list.with_first_entry(idx).into_bits();
                return Err(st);
            }
        };
        // Model choice (UNCONFIRMED): pool pages read back as PT_RSVD.
        e.set(PamtPageType::RSVD, 0);
        let pfn = pa / PAGE;
        s.mem
            .give_to_module(pfn, pfn + 1, ModuleUse::ExtPool, hkid, false);
        s.sys.data().ext.pool_pages += 1;
        c.held.release_to(mark);
    }
    c.locked();
    Ok(TdxStatus::SUCCESS)
}

/// TDH.EXT.INIT: initializes the extensions once the pool has enough pages.
pub(crate) fn init(c: &mut Call<'_>) -> LeafResult {
    let required = u64::from(c.sim.machine.desc.profile.memory_pool_required_pages);
    let mut d = c.sim.sys.data();
    let ext = &mut d.ext;
    if ext.initialized {
        return Ok(TdxStatus::SUCCESS);
    }
    if ext.pool_pages < required {
        // Model choice: not enough pool memory donated yet.
        return Err(TdxStatus::SYS_STATE_INCORRECT);
    }
    let mut budget = c.stop_early.unwrap_or(u32::MAX);
    while ext.init_steps_done < EXT_INIT_STEPS {
        if budget == 0 {
            return Ok(TdxStatus::INTERRUPTED_RESUMABLE);
        }
        budget -= 1;
        ext.init_steps_done += 1;
    }
    ext.initialized = true;
    Ok(TdxStatus::SUCCESS)
}
