//! TDH.SYS.*: module bring-up, global metadata and shutdown
//! (`src/vmm_dispatcher/api_calls/tdh_sys_*.c`).
//!
//! INIT, CONFIG, KEY.CONFIG and SHUTDOWN take the module's global lock
//! exclusively and LP.INIT shares it (another holder: `TDX_SYS_BUSY`);
//! TDMR.INIT takes its TDR's mutex (`TDX_OPERAND_BUSY|RCX`); RD and
//! LP.SHUTDOWN take no lock.

use tdx_sys::SeamcallArgs;
use tdx_types::{
    OperandId, TdxStatus, abi::TdmrInfo, metadata::TdxFeatures0, regs::ShutdownHandoff,
};
use zerocopy::FromBytes;

use crate::{
    dispatch::{Call, LeafResult, op},
    kot::KotState,
    locks::{LockMode, Ordering},
    memory::{CacheLines, ModuleUse, PAGE},
    pamt::{GIB, TdmrSpec},
    state::{Shared, SysState},
    violation::Violation,
};

const MAX_PA: u64 = 1 << 52;

/// `api_error_with_multiple_info`: the status with detail bytes.
fn detail(code: TdxStatus, b0: usize, b1: usize, b2: usize) -> TdxStatus {
    code.with_config_detail(b0 as u8, b1 as u8, b2 as u8)
}

fn info_status(code: TdxStatus, i: usize) -> TdxStatus {
    detail(code, i, 0, 0)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Levels in the order `tdh_sys_config.c` checks PAMT sizes and CMRs: 1G, 2M, 4K.
const LEVELS_1G_FIRST: [usize; 3] = [2, 1, 0];
/// Levels in the order of steps 9 and 10: 4K, 2M, 1G.
const LEVELS_4K_FIRST: [usize; 3] = [0, 1, 2];

/// TDH.SYS.INIT (`tdh_sys_init.c`). Locks: global X.
pub(crate) fn init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    c.sys_lock(LockMode::Exclusive)?;
    if a.rcx != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let sys = &c.sim.sys;
    if sys.state() != SysState::SysInitPending {
        return Err(TdxStatus::SYS_INIT_NOT_PENDING);
    }
    // The platform checks (`check_platform_config_and_cpu_enumeration`):
    // of the LP's host MSRs the model has, BOOT_NT4 (in the CPUID checks).
    let misc_enable = c.sim.host_msr(c.lp, crate::HostMsr::MiscEnable);
    if misc_enable & super::instr::MISC_BOOT_NT4 != 0 {
        return Err(TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    }
    // Then the CMR list MCHECK handed over (`check_cmrs`, after the
    // platform and key-management checks). The state stays SYSINIT_PENDING.
    if !cmr_list_valid(&c.sim.machine) {
        return Err(TdxStatus::CMR_LIST_INVALID);
    }
    c.locked();
    let mut d = sys.data();
    d.num_init_lps = 0;
    d.num_init_pkgs = 0;
    d.lp_init.fill(false);
    d.pkg_configured.fill(false);
    sys.set_state(SysState::SysInitDone);
    // The LP's IA32_TSC_ADJUST, which TDH.MNG.INIT, TDH.VP.INIT and
    // TDH.VP.ENTER compare with theirs (`tdh_sys_init.c`).
    let tsc_adjust = c.sim.host_msr(c.lp, crate::HostMsr::TscAdjust);
    c.sim
        .tsc_adjust_sample
        .store(tsc_adjust, crate::locks::Ordering::Release);
    (a.rcx, a.rdx, a.r8, a.r9, a.r10) = (0, 0, 0, 0, 0);
    Ok(TdxStatus::SUCCESS)
}

/// `check_cmrs` (`tdh_sys_init.c`): each non-empty CMR's first and last
/// byte below the KeyID bits, base and size 4 KiB aligned, and each one
/// starting after the previous non-empty one's base and last byte (sorted,
/// disjoint; touching is allowed).
fn cmr_list_valid(m: &crate::state::Machine) -> bool {
    let mut prev: Option<(u64, u64)> = None;
    for &(base, end) in &m.cmrs {
        if base >= end {
            continue;
        }
        let last = end - 1;
        if base & m.hkid_mask != 0 || last & m.hkid_mask != 0 || last > 1 << 52 {
            return false;
        }
        if base % 4096 != 0 || (end - base) % 4096 != 0 {
            return false;
        }
        if let Some((prev_base, prev_last)) = prev
            && (prev_base > base || prev_last > base)
        {
            return false;
        }
        prev = Some((base, last));
    }
    true
}

/// TDH.SYS.LP.INIT (`tdh_sys_lp_init.c`). Locks: global S.
pub(crate) fn lp_init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    c.sys_lock(LockMode::Shared)?;
    let sys = &c.sim.sys;
    if sys.state() != SysState::SysInitDone {
        return Err(TdxStatus::SYS_LP_INIT_NOT_PENDING);
    }
    let lp = c.lp as usize;
    let mut d = sys.data();
    if d.lp_init[lp] {
        return Err(TdxStatus::SYS_LP_INIT_DONE);
    }
    drop(d);
    // `compare_cpuid_configuration`: BOOT_NT4 first, IA32_TSC_ADJUST equal
    // to TDH.SYS.INIT's sample last.
    let misc_enable = c.sim.host_msr(c.lp, crate::HostMsr::MiscEnable);
    if misc_enable & super::instr::MISC_BOOT_NT4 != 0 {
        return Err(TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    }
    super::vp::tsc_adjust_unchanged(c)?;
    c.locked();
    d = sys.data();
    d.lp_init[lp] = true;
    d.num_init_lps += 1;
    (a.rcx, a.rdx, a.r8) = (0, 0, 0);
    Ok(TdxStatus::SUCCESS)
}

/// TDH.SYS.RD (`tdh_sys_rd.c`). No lock.
pub(crate) fn rd(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let sys = &c.sim.sys;
    if !sys.data().lp_init[c.lp as usize] {
        return Err(TdxStatus::SYS_LP_INIT_NOT_DONE);
    }
    c.locked();
    let fields = &sys.fields;
    // A null field ID (all ones) asks for the first field ID.
    if a.rdx == u64::MAX {
        a.rdx = fields.first().map_or(u64::MAX, |(f, _)| f.into_raw());
        a.r8 = 0;
        return Ok(TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT);
    }
    match sys.field_index.get(&a.rdx) {
        Some(&i) => {
            a.r8 = fields[i].1;
            a.rdx = fields.get(i + 1).map_or(u64::MAX, |(f, _)| f.into_raw());
            Ok(TdxStatus::SUCCESS)
        }
        None => {
            a.r8 = 0;
            Err(TdxStatus::METADATA_FIELD_ID_INCORRECT)
        }
    }
}

/// TDH.SYS.CONFIG (`tdh_sys_config.c`). Locks: global X.
pub(crate) fn config(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    c.sys_lock(LockMode::Exclusive)?;
    let s = c.sim;
    let m = &s.machine;
    if s.sys.state() != SysState::SysInitDone {
        return Err(TdxStatus::SYS_CONFIG_NOT_PENDING);
    }
    if s.sys.data().num_init_lps < m.desc.lps() {
        return Err(TdxStatus::SYS_CONFIG_NOT_PENDING);
    }
    let n = a.rdx;
    if !m.shared_hpa_ok(a.rcx, 512, n.clamp(1, 64) * 8) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    if n > 64 || n > u64::from(m.desc.profile.max_tdmrs) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    if n < 1 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    // R8: the global KeyID in bits 15:0; bit 16 enables Dynamic PAMT on a
    // module that has it (1.5.16+: `sys_config_options`,
    // `include/tdx_api_defs.h`); other bits reserved.
    let dpamt_bit = s.machine.desc.profile.has_dynamic_pamt();
    let reserved_from = if dpamt_bit { 17 } else { 16 };
    if a.r8 >> reserved_from != 0 || !m.is_private_hkid(a.r8 & 0xFFFF) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
    }
    // Model choice: v1's R9 may only enable features the module has and
    // lets the host configure (the references do not say what the module
    // answers otherwise).
    let features = TdxFeatures0::from_bits(if c.version >= 1 { a.r9 } else { 0 });
    let allowed = m.desc.profile.configurable_features.into_bits();
    if features.into_bits() & !allowed != 0 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R9));
    }
    // Side effect before the TDMR checks, not undone on failure (quirk).
    let hkid = a.r8 as u16;
    s.kot.data().state.insert(hkid, KotState::Reserved);
    s.sys.set_global_hkid(hkid);
    // Dynamic PAMT (`tdh_sys_config.c`, module 1.5.16+): the flag is set
    // with the other side effects, then refused if the KeyID start bit is
    // above 48 (the node keeps pair addresses in 36-bit fields).
    let dynamic = dpamt_bit && a.r8 & (1 << 16) != 0;
    s.sys.dynamic_pamt.store(dynamic, Ordering::Relaxed);
    if dynamic && m.hkid_start > 48 {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
    }

    let mut entries = Vec::with_capacity(n as usize);
    for i in 0..n {
        let pa = s.module_read_u64(a.rcx + 8 * i, "TDH.SYS.CONFIG");
        if !m.shared_hpa_ok(pa, 512, 320) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        entries.push(pa);
    }
    let mut tdmrs: Vec<TdmrSpec> = Vec::with_capacity(entries.len());
    for (i, &pa) in entries.iter().enumerate() {
        let mut bytes = [0u8; 512];
        s.module_read(pa, &mut bytes[..320], "TDH.SYS.CONFIG");
        let info = TdmrInfo::read_from_bytes(&bytes).expect("512 bytes make a TdmrInfo");
        tdmrs.push(check_tdmr(s, i, &info, &tdmrs)?);
    }
    c.locked();
    // Success: the PAMTs now belong to the module.
    for (i, t) in tdmrs.iter().enumerate() {
        for &(b, sz) in &t.pamt {
            let (fa, fb) = (b / PAGE, (b + sz) / PAGE);
            s.mem.set_owned(fa, fb, ModuleUse::Pamt(i as u8));
            s.mem.set_state(fa, fb, crate::memory::PageState::Module);
        }
    }
    s.pamt.configure(tdmrs, dynamic);
    let mut d = s.sys.data();
    d.features = features;
    d.pkg_configured.fill(false);
    d.num_init_pkgs = 0;
    s.sys.set_state(SysState::SysConfigDone);
    Ok(TdxStatus::SUCCESS)
}

/// The per-TDMR checks of `tdh_sys_config.c`, in order.
fn check_tdmr(
    s: &Shared,
    i: usize,
    info: &TdmrInfo,
    prev: &[TdmrSpec],
) -> Result<TdmrSpec, TdxStatus> {
    let (base, size) = (info.base(), info.size());
    let tdmr_err = Err(info_status(TdxStatus::INVALID_TDMR, i));
    // 1
    let Some(end) = base.checked_add(size) else {
        return tdmr_err;
    };
    // 2, 3
    if let Some(p) = prev.last()
        && (base < p.base || base < p.base + p.size)
    {
        return Err(info_status(TdxStatus::NON_ORDERED_TDMR, i));
    }
    // 4
    if base % GIB != 0 || size % GIB != 0 || size == 0 {
        return tdmr_err;
    }
    // 5, 6
    let m = &s.machine;
    if base >= MAX_PA || m.has_hkid_bits(base) || end > MAX_PA || m.has_hkid_bits(end - 1) {
        return tdmr_err;
    }
    // 7: reserved areas.
    let slots = info.reserved_area_slots();
    let nslots = slots
        .len()
        .min(usize::from(m.desc.profile.max_reserved_per_tdmr));
    let mut reserved = Vec::new();
    let mut prev_area: Option<(u64, u64)> = None;
    for j in 0..nslots {
        let (off, sz) = (slots[j].offset(), slots[j].size());
        if sz == 0 {
            if j + 1 < nslots && slots[j + 1].size() != 0 {
                return Err(detail(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, i, j, 0));
            }
            continue;
        }
        let bad = Err(detail(TdxStatus::INVALID_RESERVED_IN_TDMR, i, j, 0));
        let Some(off_end) = off.checked_add(sz) else {
            return bad;
        };
        if let Some((po, ps)) = prev_area
            && (off < po || off < po + ps)
        {
            return Err(detail(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, i, j, 0));
        }
        if off % PAGE != 0 || sz % PAGE != 0 {
            return bad;
        }
        let Some(abs) = base.checked_add(off) else {
            return bad;
        };
        let Some(abs_end) = abs.checked_add(sz) else {
            return bad;
        };
        if off_end > size {
            return bad;
        }
        reserved.push((abs, abs_end));
        prev_area = Some((off, sz));
    }
    // 8: PAMT addresses and sizes, 1G then 2M then 4K. With Dynamic PAMT
    // the 4K area is the bitmap: one bit per 4K page, TDMR size / 32768
    // bytes (`check_pamt_addresses_and_size`, module 1.5.16+).
    let pamt = [info.pamt_4k(), info.pamt_2m(), info.pamt_1g()];
    let esz = m.desc.profile.pamt_entry_size;
    let dynamic = s.sys.dynamic_pamt.load(Ordering::Relaxed);
    for l in LEVELS_1G_FIRST {
        let (pb, ps) = pamt[l];
        let bad = Err(detail(TdxStatus::INVALID_PAMT, i, l, 0));
        let Some(pe) = pb.checked_add(ps) else {
            return bad;
        };
        if pb % PAGE != 0 || ps % PAGE != 0 {
            return bad;
        }
        if pb >= MAX_PA || m.has_hkid_bits(pb) {
            return bad;
        }
        if ps != 0 && (pe > MAX_PA || m.has_hkid_bits(pe - 1)) {
            return bad;
        }
        // A zero-size PAMT fails here too: every level needs entries.
        let required = if dynamic && l == 0 {
            size >> 15
        } else {
            (size >> (12 + 9 * l)) * u64::from(esz[l])
        };
        if ps < required {
            return bad;
        }
    }
    let this = TdmrSpec {
        base,
        size,
        reserved,
        pamt,
    };
    let range = |(b, s): (u64, u64)| (b, b + s);
    // 9: PAMT vs PAMT.
    for (k, other) in prev.iter().enumerate() {
        for l in LEVELS_4K_FIRST {
            if other
                .pamt
                .iter()
                .any(|&p| overlaps(range(this.pamt[l]), range(p)))
            {
                return Err(detail(TdxStatus::PAMT_OVERLAP, i, l, k));
            }
        }
    }
    if overlaps(range(this.pamt[0]), range(this.pamt[1]))
        || overlaps(range(this.pamt[0]), range(this.pamt[2]))
    {
        return Err(detail(TdxStatus::PAMT_OVERLAP, i, 0, i));
    }
    if overlaps(range(this.pamt[1]), range(this.pamt[2])) {
        return Err(detail(TdxStatus::PAMT_OVERLAP, i, 1, i));
    }
    // 10: PAMT vs non-reserved TDMR memory.
    let all: Vec<&TdmrSpec> = prev.iter().chain(std::iter::once(&this)).collect();
    for (k, other) in all.iter().enumerate() {
        let other_free = other.non_reserved();
        for l in LEVELS_4K_FIRST {
            if other_free.iter().any(|&r| overlaps(range(this.pamt[l]), r)) {
                return Err(detail(TdxStatus::PAMT_OVERLAP, i, l, k));
            }
        }
        if k < i {
            let this_free = this.non_reserved();
            for l in LEVELS_4K_FIRST {
                if this_free.iter().any(|&r| overlaps(range(other.pamt[l]), r)) {
                    return Err(detail(TdxStatus::PAMT_OVERLAP, k, l, i));
                }
            }
        }
    }
    // 11: PAMT in a merged CMR, 1G then 2M then 4K.
    for l in LEVELS_1G_FIRST {
        let (st, e) = range(this.pamt[l]);
        if !in_merged_cmr(s, st, e) {
            return Err(detail(TdxStatus::PAMT_OUTSIDE_CMRS, i, l, 0));
        }
    }
    // 12: every non-reserved part in a merged CMR.
    if this
        .non_reserved()
        .iter()
        .any(|&(st, e)| !in_merged_cmr(s, st, e))
    {
        return Err(info_status(TdxStatus::TDMR_OUTSIDE_CMRS, i));
    }
    Ok(this)
}

/// `is_area_in_cmr`: back-to-back CMRs (in array order) chain into one.
fn in_merged_cmr(s: &Shared, start: u64, end: u64) -> bool {
    let mut merged_start = None;
    let mut prev_end = None;
    for &(cs, ce) in &s.machine.cmrs {
        if cs == ce {
            continue;
        }
        merged_start = match (merged_start, prev_end) {
            (Some(ms), Some(pe)) if pe == cs => Some(ms),
            _ => Some(cs),
        };
        prev_end = Some(ce);
        if start >= merged_start.unwrap_or(cs) && end <= ce {
            return true;
        }
    }
    false
}

/// TDH.SYS.KEY.CONFIG (`tdh_sys_key_config.c`). Locks: global X.
pub(crate) fn key_config(c: &mut Call<'_>) -> LeafResult {
    c.sys_lock(LockMode::Exclusive)?;
    let s = c.sim;
    if s.sys.state() != SysState::SysConfigDone {
        return Err(TdxStatus::SYS_KEY_CONFIG_NOT_PENDING);
    }
    let pkg = c.package() as usize;
    if s.sys.data().pkg_configured[pkg] {
        return Err(TdxStatus::KEY_CONFIGURED);
    }
    c.locked();
    let mut d = s.sys.data();
    // Cache rule (Linux: WBINVD on all CPUs before the first KEY.CONFIG):
    // PAMT lines the host dirtied under KeyID 0 must be gone before the
    // module writes the PAMT under the global KeyID.
    if d.num_init_pkgs == 0 {
        for (b, sz) in s.pamt.tdmrs().iter().flat_map(|t| t.pamt) {
            if let Some(pfn) = s.mem.host_dirty(b / PAGE, (b + sz) / PAGE) {
                s.violation(Violation::KeyConfigWithDirtyPamt { pfn });
                break;
            }
        }
    }
    d.pkg_configured[pkg] = true;
    d.num_init_pkgs += 1;
    if d.num_init_pkgs as usize == d.pkg_configured.len() {
        s.sys.set_state(SysState::Ready);
    }
    Ok(TdxStatus::SUCCESS)
}

/// Bytes of TDMR one TDH.SYS.TDMR.INIT initializes with Dynamic PAMT on
/// (`tdh_sys_tdmr_init.c`, module 1.5.16+: 4096 4K pages).
const DPAMT_TDMR_INIT_CHUNK: u64 = 16 << 20;

/// TDH.SYS.TDMR.INIT (`tdh_sys_tdmr_init.c`). Locks: the TDMR's mutex.
pub(crate) fn tdmr_init(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    a.rdx = 0;
    let s = c.sim;
    let base = a.rcx;
    if !base.is_multiple_of(GIB) || base >= MAX_PA || s.machine.has_hkid_bits(base) {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let tdmrs = s.pamt.tdmrs();
    // Hosts call this leaf in long runs on one TDMR: try the last one first.
    let hint = s.sys.last_tdmr.load(std::sync::atomic::Ordering::Relaxed);
    let i = match tdmrs.get(hint) {
        Some(t) if t.base == base => hint,
        _ => match tdmrs.binary_search_by_key(&base, |t| t.base) {
            Ok(i) => i,
            Err(_) => return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX)),
        },
    };
    s.sys
        .last_tdmr
        .store(i, std::sync::atomic::Ordering::Relaxed);
    let t = &tdmrs[i];
    c.mutex(&t.init_lock, OperandId::RCX)?;
    let last = t.last_init.load(Ordering::Acquire);
    if last >= t.end() {
        return Err(TdxStatus::TDMR_ALREADY_INITIALIZED);
    }
    c.locked();
    // With Dynamic PAMT a call initializes 4096 pages' worth (16 MiB):
    // the bitmap bytes, with the reserved pages' bits set
    // (`tdh_sys_tdmr_init.c`, `pamt_init`, module 1.5.16+).
    let chunk = if t.dynamic {
        DPAMT_TDMR_INIT_CHUNK
    } else {
        s.machine.desc.profile.tdmr_init_chunk
    };
    let hkid = s.sys.global_hkid().unwrap_or(0);
    let from = last;
    let to = (from + chunk).min(t.end());
    t.last_init.store(to, Ordering::Release);
    a.rdx = to & !(GIB - 1);
    // The module wrote these PAMT entries under the global KeyID. Each
    // level's dirty range only grows during initialization, so a level
    // is re-marked only past what this TDMR already marked since the
    // last flush of its PAMT (this keeps the call cheap: 2^20 of them for
    // 4 TiB).
    let (off_a, off_b) = (from - t.base, to - t.base);
    let esz = s.machine.desc.profile.pamt_entry_size;
    for (l, &entry) in esz.iter().enumerate() {
        let pb = t.pamt[l].0;
        // The bitmap: one byte per 8 pages.
        let (shift, entry) = if t.dynamic && l == 0 {
            (15, 1)
        } else {
            (12 + 9 * l as u32, entry)
        };
        let first = (pb + (off_a >> shift) * u64::from(entry)) / PAGE;
        let entries_to = (off_b >> shift) + u64::from(off_b & ((1 << shift) - 1) != 0);
        let last = (pb + entries_to * u64::from(entry)).div_ceil(PAGE);
        // Calls on a TDMR follow one another in address order, so this
        // call's first page is the page after the last one marked, or
        // that page itself when entries of both calls share it: then it
        // needs no new mark unless its shard was flushed (or written by
        // the host) since.
        let [marked_to, marked_gen] = &t.dirty_mark[l];
        let marked_to_v = marked_to.load(Ordering::Relaxed);
        let from_page = if first + 1 == marked_to_v
            && s.mem.generation_of(first) == marked_gen.load(Ordering::Relaxed)
        {
            marked_to_v
        } else {
            first
        };
        if from_page < last {
            let generation = s.mem.generation_of(last - 1);
            s.mem.mark_cache(from_page, last, CacheLines::Private(hkid));
            marked_to.store(last, Ordering::Relaxed);
            marked_gen.store(generation, Ordering::Relaxed);
        }
    }
    Ok(TdxStatus::SUCCESS)
}

/// TDH.SYS.SHUTDOWN. Locks: global X; fails with `TDX_SYS_BUSY` while
/// another LP is inside a SEAMCALL.
pub(crate) fn shutdown(c: &mut Call<'_>, a: &mut SeamcallArgs) -> LeafResult {
    let s = c.sim;
    let h = ShutdownHandoff::from_bits(a.rcx);
    let profile = &s.machine.desc.profile;
    let reserved = a.rcx >> 17 != 0;
    let compat_ok = !h.avoid_compat_sensitive() || profile.features0.update_compatibility();
    if reserved || h.handoff_version() > profile.module_hv || !compat_ok {
        return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    c.sys_lock(LockMode::Exclusive)?;
    s.sys.set_state(SysState::Shutdown);
    let others_busy =
        s.lp_busy.iter().enumerate().any(|(lp, b)| {
            lp != c.lp as usize && b.0.load(std::sync::atomic::Ordering::Acquire) != 0
        });
    if others_busy {
        s.sys.set_state(SysState::Ready);
        return Err(TdxStatus::SYS_BUSY);
    }
    c.locked();
    Ok(TdxStatus::SUCCESS)
}
