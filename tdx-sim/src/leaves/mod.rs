//! The leaf handlers, by family, each in the file where Intel's module has
//! it (`src/vmm_dispatcher/api_calls/tdh_<family>_*.c`):
//!
//! - [`sys`]: TDH.SYS.* (module bring-up, metadata, shutdown);
//! - [`ext`]: TDH.EXT.* (the extensions of module 1.5.x profiles);
//! - [`mng`]: TDH.MNG.* (TD build and teardown, keys);
//! - [`metadata`]: TDH.MNG.RD/WR and TDH.VP.RD/WR (TD and vCPU metadata);
//! - [`vp`]: TDH.VP.* (vCPUs);
//! - [`mem`]: TDH.MEM.* (the S-EPT and private pages);
//! - [`mr`]: TDH.MR.* (measurement);
//! - [`phymem`]: TDH.PHYMEM.* (page metadata, reclaim, cache write-back).
//!
//! Each handler runs its checks in the module's order and takes the
//! module's locks in the module's order (the lock table of each leaf is in
//! its doc), through [`Call`]; what it returns is the status, operand and
//! S-EPT details the module returns.

use tdx_sys::SeamcallArgs;
use tdx_types::{Leaf, OperandId, TdxStatus, regs::PageInfo};

use crate::{
    dispatch::{Call, LeafResult, op},
    memory::PAGE,
    profile::Profile,
    td::Td,
};

pub(crate) mod ext;
pub(crate) mod instr;
mod md_tables;
pub(crate) mod mem;
pub(crate) mod metadata;
pub(crate) mod mng;
pub(crate) mod mr;
pub(crate) mod phymem;
pub(crate) mod sys;
pub(crate) mod tdg;
pub(crate) mod vp;

/// True if the simulator models `leaf` on a module of `profile`.
pub(crate) fn implements(profile: &Profile, leaf: Leaf) -> bool {
    match leaf {
        Leaf::EXT_MEM_ADD | Leaf::EXT_INIT => profile.has_ext(),
        Leaf::PHYMEM_PAMT_ADD | Leaf::PHYMEM_PAMT_REMOVE => profile.has_dynamic_pamt(),
        Leaf::SYS_INIT
        | Leaf::SYS_LP_INIT
        | Leaf::SYS_RD
        | Leaf::SYS_CONFIG
        | Leaf::SYS_KEY_CONFIG
        | Leaf::SYS_TDMR_INIT
        | Leaf::SYS_SHUTDOWN
        | Leaf::SYS_LP_SHUTDOWN
        | Leaf::MNG_CREATE
        | Leaf::MNG_KEY_CONFIG
        | Leaf::MNG_ADDCX
        | Leaf::MNG_INIT
        | Leaf::MNG_RD
        | Leaf::MNG_WR
        | Leaf::MNG_VPFLUSHDONE
        | Leaf::MNG_KEY_FREEID
        | Leaf::MNG_KEY_RECLAIMID
        | Leaf::VP_ENTER
        | Leaf::VP_CREATE
        | Leaf::VP_ADDCX
        | Leaf::VP_INIT
        | Leaf::VP_RD
        | Leaf::VP_WR
        | Leaf::VP_FLUSH
        | Leaf::MEM_SEPT_ADD
        | Leaf::MEM_SEPT_REMOVE
        | Leaf::MEM_SEPT_RD
        | Leaf::MEM_PAGE_ADD
        | Leaf::MEM_PAGE_AUG
        | Leaf::MEM_RANGE_BLOCK
        | Leaf::MEM_RANGE_UNBLOCK
        | Leaf::MEM_TRACK
        | Leaf::MEM_PAGE_REMOVE
        | Leaf::MEM_PAGE_DEMOTE
        | Leaf::MEM_PAGE_PROMOTE
        | Leaf::MR_EXTEND
        | Leaf::MR_FINALIZE
        | Leaf::PHYMEM_PAGE_RDMD
        | Leaf::PHYMEM_PAGE_RECLAIM
        | Leaf::PHYMEM_PAGE_WBINVD
        | Leaf::PHYMEM_CACHE_WB => true,
        _ => false,
    }
}

/// Runs the handler of the call's leaf.
pub(crate) fn run(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    match c.leaf {
        Leaf::SYS_INIT => sys::init(c, a),
        Leaf::SYS_LP_INIT => sys::lp_init(c, a),
        Leaf::SYS_RD => sys::rd(c, a),
        Leaf::SYS_CONFIG => sys::config(c, a),
        Leaf::SYS_KEY_CONFIG => sys::key_config(c),
        Leaf::SYS_TDMR_INIT => sys::tdmr_init(c, a),
        Leaf::SYS_SHUTDOWN => sys::shutdown(c, a),
        Leaf::SYS_LP_SHUTDOWN => Ok(TdxStatus::SUCCESS),
        Leaf::EXT_MEM_ADD => ext::mem_add(c, a),
        Leaf::EXT_INIT => ext::init(c),
        Leaf::MNG_CREATE => mng::create(c, a),
        Leaf::MNG_KEY_CONFIG => mng::key_config(c, a),
        Leaf::MNG_ADDCX => mng::addcx(c, a),
        Leaf::MNG_INIT => mng::init(c, a),
        Leaf::MNG_RD => metadata::mng_rd_wr(c, a, false),
        Leaf::MNG_WR => metadata::mng_rd_wr(c, a, true),
        Leaf::MNG_VPFLUSHDONE => mng::vpflushdone(c, a),
        Leaf::MNG_KEY_FREEID => mng::key_freeid(c, a),
        Leaf::MNG_KEY_RECLAIMID => Ok(TdxStatus::SUCCESS),
        Leaf::VP_ENTER => vp::enter(c, a),
        Leaf::VP_CREATE => vp::create(c, a),
        Leaf::VP_ADDCX => vp::addcx(c, a),
        Leaf::VP_INIT => vp::init(c, a),
        Leaf::VP_RD => vp::rd_wr(c, a, false),
        Leaf::VP_WR => vp::rd_wr(c, a, true),
        Leaf::VP_FLUSH => vp::flush(c, a),
        Leaf::MEM_SEPT_ADD => mem::sept_add(c, a),
        Leaf::MEM_SEPT_REMOVE => mem::sept_remove(c, a),
        Leaf::MEM_SEPT_RD => mem::sept_rd(c, a),
        Leaf::MEM_PAGE_ADD => mem::page_add(c, a),
        Leaf::MEM_PAGE_AUG => mem::page_aug(c, a),
        Leaf::MEM_RANGE_BLOCK => mem::range_block(c, a),
        Leaf::MEM_RANGE_UNBLOCK => mem::range_unblock(c, a),
        Leaf::MEM_TRACK => mem::track(c, a),
        Leaf::MEM_PAGE_REMOVE => mem::page_remove(c, a),
        Leaf::MEM_PAGE_DEMOTE => mem::page_demote(c, a),
        Leaf::MEM_PAGE_PROMOTE => mem::page_promote(c, a),
        Leaf::MR_EXTEND => mr::extend(c, a),
        Leaf::MR_FINALIZE => mr::finalize(c, a),
        Leaf::PHYMEM_PAGE_RDMD => phymem::page_rdmd(c, a),
        Leaf::PHYMEM_PAGE_RECLAIM => phymem::page_reclaim(c, a),
        Leaf::PHYMEM_PAGE_WBINVD => phymem::page_wbinvd(c, a),
        Leaf::PHYMEM_CACHE_WB => phymem::cache_wb(c, a),
        Leaf::PHYMEM_PAMT_ADD => phymem::pamt_add(c, a),
        Leaf::PHYMEM_PAMT_REMOVE => phymem::pamt_remove(c, a),
        _ => Err(TdxStatus::OPERAND_INVALID),
    }
}

/// PINFO(min, max) on RCX (`verify_page_info_input`): reserved bits, level
/// range, alignment. Returns (GPA, level).
pub(crate) fn pinfo(rcx: u64, min: u8, max: u8) -> Result<(u64, u8), TdxStatus> {
    let p = PageInfo::from_bits(rcx);
    let level = p.level();
    let gpa = p.gpa().as_u64();
    let align = PAGE << (9 * u32::from(level));
    if !p.reserved_bits_clear() || level < min || level > max || !gpa.is_multiple_of(align) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    Ok((gpa, level))
}

/// `is_tlb_tracked` (`src/common/helpers/helpers.h`): a block epoch is
/// tracked when it is at least two TRACKs behind, or one TRACK behind and
/// every guest entry made in that epoch (`refcount[b & 1]`, counted by
/// TDH.VP.ENTER and uncounted at each TD exit) has left the guest. The TD
/// epoch is read once: another LP's TRACK may advance it meanwhile, and two
/// reads could see two epochs (a tracked page then looked untracked to a
/// concurrent REMOVE). A TD whose vCPUs never run has both refcounts 0.
pub(crate) fn tracked(td: &Td, bepoch: u64) -> bool {
    let epoch = td.td_epoch();
    bepoch + 1 < epoch || (bepoch + 1 == epoch && td.refcount(bepoch) == 0)
}
