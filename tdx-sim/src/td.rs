//! Trust Domains in the module model: TDR/TDCS state, vCPUs, the Secure
//! EPT, TLB epochs, measurement, HKIDs and teardown
//! (`reference/tdx-module-model.md` §4.7-§4.29, §5).
//!
//! Each leaf runs its checks in the order the model lists them and returns
//! the model's status, operand and S-EPT details. Not modelled: L2 VMs
//! (NUM_L2_VMS must be 0 for anything that depends on it), migration
//! states, service TDs, TD entry (refcounts stay 0, so the "previous epoch"
//! rule passes once TRACK has run).

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use sha2::{Digest, Sha384};
use tdx_api::sparse::PageMap;
use tdx_sys::SeamcallArgs;
use tdx_types::{
    Leaf, LeafVersion, OperandId, TdxStatus,
    abi::MeasurementBlock,
    metadata::{MdFieldId, PamtPageType, field, td_field_id},
    regs::{PageInfo, SeptState, TdrAndFlags},
};

use crate::{
    memory::{CacheLines, PAGE, PageState},
    module::{KotState, ModuleUse, PamtEntry},
    sim::State,
};

const MAX_PA: u64 = 1 << 52;

/// What a leaf model returns: `Err` with the status of the check that
/// stopped it (so checks chain with `?`), or `Ok` with the status of a leaf
/// that ran to its end; the dispatcher passes either on.
type LeafResult = Result<TdxStatus, TdxStatus>;
const MIN_TDCS: usize = 6;
const MAX_TDCS: usize = 9;
const MIN_TDVPS: usize = 6;
const MAX_TDVPS: usize = 15;

/// TDR lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// After TDH.MNG.CREATE.
    HkidAssigned,
    /// After TDH.MNG.KEY.CONFIG on every package.
    KeysConfigured,
    /// After TDH.MNG.VPFLUSHDONE.
    Blocked,
    /// After TDH.MNG.KEY.FREEID.
    Teardown,
}

/// TDCS operation state (without migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// Before TDH.MNG.INIT.
    Uninitialized,
    /// After TDH.MNG.INIT.
    Initialized,
    /// After TDH.MR.FINALIZE.
    Runnable,
}

/// One S-EPT entry (absent from the map = FREE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Septe {
    pub(crate) state: SeptState,
    /// Frame the entry points to (S-EPT page or private page).
    pub(crate) pfn: u64,
}

/// A Trust Domain, keyed by its TDR frame.
#[derive(Debug)]
pub(crate) struct Td {
    pub(crate) hkid: u16,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) fatal: bool,
    pkg_configured: Vec<bool>,
    pub(crate) tdcx: Vec<u64>,
    /// 4K pages charged to the TD (TDR excluded).
    pub(crate) chldcnt: u64,
    pub(crate) op_state: OpState,
    max_vcpus: u32,
    num_vcpus: u32,
    num_assoc_vcpus: u32,
    td_epoch: u64,
    /// Secure-EPT levels minus one (3 for 4-level EPT, 4 for 5-level).
    pwl: u8,
    gpaw: bool,
    num_l2_vms: u8,
    attributes: u64,
    tsc_offset: u64,
    tsc_multiplier: u64,
    measurement: Option<Sha384>,
    pub(crate) mrtd: Option<[u8; 48]>,
    /// S-EPT entries by (level, GPA >> (12 + 9 level)).
    pub(crate) sept: Sept,
}

/// The S-EPT of one TD: one sparse map per level, keyed by
/// `GPA >> (12 + 9 level)`, so an entry's neighbours (its page-table page)
/// sit together as in the real tree.
#[derive(Debug, Default)]
pub(crate) struct Sept([PageMap<Septe>; 5]);

impl Sept {
    pub(crate) fn get(&self, &(level, i): &(u8, u64)) -> Option<&Septe> {
        self.0[usize::from(level)].get(i)
    }

    fn get_mut(&mut self, &(level, i): &(u8, u64)) -> Option<&mut Septe> {
        self.0[usize::from(level)].get_mut(i)
    }

    fn contains_key(&self, &(level, i): &(u8, u64)) -> bool {
        self.0[usize::from(level)].contains_key(i)
    }

    fn insert(&mut self, (level, i): (u8, u64), e: Septe) -> Option<Septe> {
        self.0[usize::from(level)].insert(i, e)
    }

    fn remove(&mut self, &(level, i): &(u8, u64)) -> Option<Septe> {
        self.0[usize::from(level)].remove(i)
    }

    /// Heap bytes of the entries.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.0.iter().map(PageMap::heap_bytes).sum()
    }
}

/// A vCPU, keyed by its TDVPR frame.
#[derive(Debug)]
pub(crate) struct Vcpu {
    pub(crate) tdr: u64,
    pub(crate) pages: Vec<u64>,
    initialized: bool,
    pub(crate) assoc_lp: Option<u32>,
    /// Values of the TDVPS fields VP.WR wrote (absent: 0).
    fields: HashMap<u64, u64>,
}

/// KeyID bookkeeping beyond the KOT state: which packages still have to
/// write back the HKID's cache lines.
#[derive(Debug, Default)]
pub(crate) struct TdWorld {
    pub(crate) tds: HashMap<u64, Td>,
    pub(crate) vcpus: HashMap<u64, Vcpu>,
    /// Per HKID: packages that still need TDH.PHYMEM.CACHE.WB.
    wbinvd_pending: HashMap<u16, Vec<bool>>,
    /// Per package: the HKIDs a started CACHE.WB covers, and its progress.
    cache_wb: HashMap<u32, (HashSet<u16>, u32)>,
}

/// Steps a TDH.PHYMEM.CACHE.WB takes (a fault can interrupt between steps).
const CACHE_WB_STEPS: u32 = 4;

/// True for the TD leaves the simulator models.
pub(crate) fn implements(leaf: Leaf) -> bool {
    matches!(
        leaf,
        Leaf::MNG_CREATE
            | Leaf::MNG_KEY_CONFIG
            | Leaf::MNG_ADDCX
            | Leaf::MNG_INIT
            | Leaf::MNG_RD
            | Leaf::MNG_WR
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
            | Leaf::MR_EXTEND
            | Leaf::MR_FINALIZE
            | Leaf::MEM_PAGE_AUG
            | Leaf::MEM_RANGE_BLOCK
            | Leaf::MEM_RANGE_UNBLOCK
            | Leaf::MEM_TRACK
            | Leaf::MEM_PAGE_REMOVE
            | Leaf::MEM_PAGE_DEMOTE
            | Leaf::MEM_PAGE_PROMOTE
            | Leaf::MNG_VPFLUSHDONE
            | Leaf::PHYMEM_CACHE_WB
            | Leaf::MNG_KEY_FREEID
            | Leaf::MNG_KEY_RECLAIMID
            | Leaf::PHYMEM_PAGE_RECLAIM
            | Leaf::PHYMEM_PAGE_WBINVD
    )
}

fn op(code: TdxStatus, o: OperandId) -> TdxStatus {
    code.with_operand(o)
}

/// Architectural view of an S-EPT entry for extended error information:
/// FREE shows only "suppress #VE" (bit 63); present entries show their
/// frame and RWX; blocked or pending ones their frame without permissions.
fn septe_arch(e: Option<Septe>, level: u8) -> u64 {
    match e {
        None => 1 << 63,
        Some(e) => {
            let rwx = match e.state {
                SeptState::MAPPED | SeptState::NL_MAPPED => 0b111,
                _ => 0,
            };
            let large =
                if level > 0 && e.state != SeptState::NL_MAPPED && e.state != SeptState::NL_BLOCKED
                {
                    1 << 7
                } else {
                    0
                };
            (e.pfn << 12) | rwx | large
        }
    }
}

/// Writes the S-EPT details of `e` at `level` into RCX/RDX.
fn details(a: &mut SeamcallArgs, e: Option<Septe>, level: u8) {
    a.rcx = septe_arch(e, level);
    let state = e.map_or(SeptState::FREE, |e| e.state);
    a.rdx = u64::from(level) | u64::from(state.0) << 8;
}

fn is_leaf_state(s: SeptState) -> bool {
    matches!(
        s,
        SeptState::MAPPED | SeptState::BLOCKED | SeptState::PENDING | SeptState::PENDING_BLOCKED
    )
}

impl State {
    pub(crate) fn run_td_leaf(&mut self, lv: LeafVersion, a: &mut SeamcallArgs) -> TdxStatus {
        let r = match lv.leaf() {
            Leaf::MNG_CREATE => self.mng_create(a),
            Leaf::MNG_KEY_CONFIG => self.mng_key_config(a),
            Leaf::MNG_ADDCX => self.mng_addcx(a),
            Leaf::MNG_INIT => self.mng_init(a),
            Leaf::MNG_RD => self.mng_rdwr(a, false),
            Leaf::MNG_WR => self.mng_rdwr(a, true),
            Leaf::VP_CREATE => self.vp_create(a),
            Leaf::VP_ADDCX => self.vp_addcx(a),
            Leaf::VP_INIT => self.vp_init(a, lv.version()),
            Leaf::VP_RD => self.vp_rdwr(a, false),
            Leaf::VP_WR => self.vp_rdwr(a, true),
            Leaf::VP_FLUSH => self.vp_flush(a),
            Leaf::MEM_SEPT_ADD => self.sept_add(a, lv.version()),
            Leaf::MEM_SEPT_REMOVE => self.sept_remove(a),
            Leaf::MEM_SEPT_RD => self.sept_rd(a),
            Leaf::MEM_PAGE_ADD => self.page_add(a),
            Leaf::MR_EXTEND => self.mr_extend(a),
            Leaf::MR_FINALIZE => self.mr_finalize(a),
            Leaf::MEM_PAGE_AUG => self.page_aug(a),
            Leaf::MEM_RANGE_BLOCK => self.range_block(a),
            Leaf::MEM_RANGE_UNBLOCK => self.range_unblock(a),
            Leaf::MEM_TRACK => self.mem_track(a),
            Leaf::MEM_PAGE_REMOVE => self.page_remove(a),
            Leaf::MEM_PAGE_DEMOTE => self.page_demote(a),
            Leaf::MEM_PAGE_PROMOTE => self.page_promote(a),
            Leaf::MNG_VPFLUSHDONE => self.vpflushdone(a),
            Leaf::PHYMEM_CACHE_WB => self.cache_wb(a, None),
            Leaf::MNG_KEY_FREEID => self.key_freeid(a),
            Leaf::MNG_KEY_RECLAIMID => Ok(TdxStatus::SUCCESS),
            Leaf::PHYMEM_PAGE_RECLAIM => self.page_reclaim(a),
            Leaf::PHYMEM_PAGE_WBINVD => self.page_wbinvd(a),
            _ => Err(TdxStatus::OPERAND_INVALID),
        };
        r.unwrap_or_else(|s| s)
    }

    // ---- helpers ---------------------------------------------------------

    /// The explicit-page check (model §3.5) of the page at `pa` for operand
    /// `o`, at `level`, expecting page type `pt`. Returns the TDMR index.
    fn expl(&self, pa: u64, o: OperandId, level: u8, pt: PamtPageType) -> Result<usize, TdxStatus> {
        let align = PAGE << (9 * u32::from(level));
        if !pa.is_multiple_of(align) || pa >= MAX_PA || self.machine.has_hkid_bits(pa) {
            return Err(op(TdxStatus::OPERAND_INVALID, o));
        }
        let Some(t) = self.module.pamt_block(pa) else {
            return Err(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, o));
        };
        // The walk stops at the first PT_REG above the requested level.
        for l in (usize::from(level) + 1..=2).rev() {
            if self.module.pamt_entry(t, l, pa).pt == PamtPageType::REG {
                return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
            }
        }
        if self.module.pamt_entry(t, usize::from(level), pa).pt != pt {
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
        }
        if level > 0 && pt == PamtPageType::NDA {
            // A free huge range: every 4K (and 2M) entry below is free too.
            if !self.range_free(t, pa, align) {
                return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
            }
        }
        Ok(t)
    }

    /// True if every 4K and 2M PAMT entry of `[pa, pa + len)` is NDA.
    fn range_free(&self, t: usize, pa: u64, len: u64) -> bool {
        let tdmr = &self.module.tdmrs[t];
        if tdmr.reserved.iter().any(|&(s, e)| s < pa + len && pa < e) {
            return false;
        }
        self.module.pamt_range_all_nda(pa, len)
    }

    /// TDR_X / TDR_S (model §4.0): the TDR at `pa` for operand `o`.
    fn tdr(&self, pa: u64, o: OperandId) -> Result<u64, TdxStatus> {
        self.expl(pa, o, 0, PamtPageType::TDR)?;
        Ok(pa / PAGE)
    }

    /// TDCS(leaf) (model §4.0): the TD's TDCS is usable and its op state is
    /// one of `allowed`.
    fn tdcs(&self, tdr: u64, allowed: &[OpState]) -> Result<(), TdxStatus> {
        let td = &self.tds.tds[&tdr];
        if td.fatal {
            return Err(TdxStatus::TD_FATAL);
        }
        if td.lifecycle != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        if td.tdcx.len() < MIN_TDCS {
            return Err(TdxStatus::TDCS_NOT_ALLOCATED);
        }
        if !allowed.contains(&td.op_state) {
            return Err(TdxStatus::OP_STATE_INCORRECT);
        }
        Ok(())
    }

    /// PINFO(min, max) on RCX: reserved bits, level range, alignment.
    fn pinfo(&self, rcx: u64, min: u8, max: u8) -> Result<(u64, u8), TdxStatus> {
        let p = PageInfo::from_bits(rcx);
        let level = p.level();
        let gpa = p.gpa().as_u64();
        let align = PAGE << (9 * u32::from(level));
        if !p.reserved_bits_clear() || level < min || level > max || !gpa.is_multiple_of(align) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        Ok((gpa, level))
    }

    /// The private-GPA rule: shared bit clear, and bits 51:48 clear with a
    /// 4-level GPA width.
    fn private_gpa(td: &Td, gpa: u64) -> bool {
        let shared = if td.gpaw { 51 } else { 47 };
        gpa & (1 << shared) == 0 && (td.gpaw || gpa >> 48 == 0) && gpa >> 52 == 0
    }

    /// SWALK (model §4.0): walks to `level` for `gpa`; on failure writes
    /// the details of the entry where the walk stopped into RCX/RDX.
    fn walk(
        &self,
        tdr: u64,
        gpa: u64,
        level: u8,
        a: &mut SeamcallArgs,
    ) -> Result<Option<Septe>, TdxStatus> {
        let td = &self.tds.tds[&tdr];
        if !Self::private_gpa(td, gpa) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let mut l = td.pwl;
        loop {
            let e = td.sept.get(&(l, gpa >> (12 + 9 * u32::from(l)))).copied();
            if l == level {
                return Ok(e);
            }
            match e {
                Some(s) if s.state == SeptState::NL_MAPPED => l -= 1,
                _ => {
                    details(a, e, l);
                    return Err(op(TdxStatus::EPT_WALK_FAILED, OperandId::RCX));
                }
            }
        }
    }

    fn sept_key(gpa: u64, level: u8) -> (u8, u64) {
        (level, gpa >> (12 + 9 * u32::from(level)))
    }

    /// Gives the page at `pfn` (level `level`) to TD `tdr` as type `pt`.
    fn assign(&mut self, pfn: u64, level: u8, pt: PamtPageType, tdr: u64) {
        let owner = if pt == PamtPageType::TDR { 0 } else { tdr };
        self.module.set_pamt_entry(
            usize::from(level),
            pfn * PAGE,
            PamtEntry {
                pt,
                owner,
                bepoch: 0,
            },
        );
        let n = 1u64 << (9 * u32::from(level));
        self.module.owned.insert(pfn, pfn + n, ModuleUse::Td);
        self.mem.set_state(pfn, pfn + n, PageState::Module);
        let key = if pt == PamtPageType::TDR {
            self.module.global_hkid.unwrap_or(0)
        } else {
            self.tds.tds.get(&tdr).map_or(0, |t| t.hkid)
        };
        self.mem.mark_cache(pfn, pfn + n, CacheLines::Private(key));
    }

    /// Takes the page at `pfn` (level `level`) back from the module.
    fn unassign(&mut self, pfn: u64, level: u8) {
        self.module
            .set_pamt_entry(usize::from(level), pfn * PAGE, PamtEntry::NDA);
        let n = 1u64 << (9 * u32::from(level));
        self.module.owned.remove(pfn, pfn + n);
        self.mem.set_state(pfn, pfn + n, PageState::Host);
    }

    fn key_operation_fails(&self) -> bool {
        false
    }

    // ---- §4.7 TDH.MNG.CREATE ----
    fn mng_create(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        if a.rdx >> 16 != 0 || !self.machine.is_private_hkid(a.rdx) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
        }
        self.expl(a.rcx, OperandId::RCX, 0, PamtPageType::NDA)?;
        let hkid = a.rdx as u16;
        if self
            .module
            .kot
            .get(&hkid)
            .is_some_and(|&k| k != KotState::Free)
        {
            return Err(TdxStatus::HKID_NOT_FREE);
        }
        let tdr = a.rcx / PAGE;
        self.module.kot.insert(hkid, KotState::Assigned);
        self.tds.tds.insert(
            tdr,
            Td {
                hkid,
                lifecycle: Lifecycle::HkidAssigned,
                fatal: false,
                pkg_configured: vec![false; self.machine.desc.packages as usize],
                tdcx: Vec::new(),
                chldcnt: 0,
                op_state: OpState::Uninitialized,
                max_vcpus: 0,
                num_vcpus: 0,
                num_assoc_vcpus: 0,
                td_epoch: 0,
                pwl: 3,
                gpaw: false,
                num_l2_vms: 0,
                attributes: 0,
                tsc_offset: 0,
                tsc_multiplier: 0,
                measurement: None,
                mrtd: None,
                sept: Sept::default(),
            },
        );
        self.assign(tdr, 0, PamtPageType::TDR, tdr);
        self.mem.zero(tdr, tdr + 1);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.8 TDH.MNG.KEY.CONFIG ----
    fn mng_key_config(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        let pkg = self.machine.package_of(self.lp) as usize;
        let failing = self.key_operation_fails();
        let td = self.tds.tds.get_mut(&tdr).expect("a PT_TDR page has a TD");
        if td.fatal {
            return Err(TdxStatus::TD_FATAL);
        }
        if td.lifecycle != Lifecycle::HkidAssigned {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        if td.pkg_configured[pkg] {
            return Err(TdxStatus::KEY_CONFIGURED);
        }
        if failing {
            return Err(TdxStatus::KEY_GENERATION_FAILED);
        }
        td.pkg_configured[pkg] = true;
        if td.pkg_configured.iter().all(|&b| b) {
            td.lifecycle = Lifecycle::KeysConfigured;
        }
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.9 TDH.MNG.ADDCX ----
    fn mng_addcx(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        let td = &self.tds.tds[&tdr];
        if td.fatal {
            return Err(TdxStatus::TD_FATAL);
        }
        if td.lifecycle != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        if td.tdcx.len() >= MAX_TDCS {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        self.expl(a.rcx, OperandId::RCX, 0, PamtPageType::NDA)?;
        if td.tdcx.len() >= MIN_TDCS && td.op_state != OpState::Uninitialized {
            return Err(TdxStatus::OP_STATE_INCORRECT);
        }
        let page = a.rcx / PAGE;
        self.assign(page, 0, PamtPageType::TDCX, tdr);
        self.mem.zero(page, page + 1);
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.tdcx.push(page);
        td.chldcnt += 1;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.10 TDH.MNG.INIT ----
    fn mng_init(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        self.tdcs(tdr, &[OpState::Uninitialized])?;
        if !self.machine.shared_hpa_ok(a.rdx, 1024, 1024) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
        }
        let mut p = [0u8; 1024];
        self.module_read(a.rdx, &mut p, "TDH.MNG.INIT");
        let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(p[o..o + 2].try_into().expect("2 bytes"));
        let prof = &self.machine.desc.profile;
        let (attributes, xfam) = (u64_at(0), u64_at(8));
        a.rcx = 0;
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
        if self.tds.tds[&tdr].tdcx.len() < MIN_TDCS + usize::from(num_l2) {
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
        if p[42..80].iter().any(|&b| b != 0)
            || p[19] & !1 != 0
            || p[232..256].iter().any(|&b| b != 0)
        {
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
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.max_vcpus = u32::from(max_vcpus);
        td.num_vcpus = 0;
        td.num_assoc_vcpus = 0;
        td.td_epoch = 1;
        td.pwl = pwl;
        td.gpaw = gpaw;
        td.num_l2_vms = num_l2;
        td.attributes = attributes;
        td.tsc_multiplier = 1 << 48;
        td.measurement = Some(Sha384::new());
        td.op_state = OpState::Initialized;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- TDH.MNG.RD / TDH.MNG.WR (a subset of fields) ----
    fn mng_rdwr(&mut self, a: &mut SeamcallArgs, write: bool) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        let td = &self.tds.tds[&tdr];
        if td.tdcx.len() < MIN_TDCS {
            return Err(TdxStatus::TDCS_NOT_ALLOCATED);
        }
        let id = MdFieldId::from_raw(a.rdx);
        let value = if id == field::TSC_OFFSET {
            Some(td.tsc_offset)
        } else if id == field::TSC_MULTIPLIER {
            Some(td.tsc_multiplier)
        } else if let Some(i) = mrtd_element(id) {
            td.mrtd
                .map(|m| u64::from_le_bytes(m[8 * i..8 * i + 8].try_into().expect("8 bytes")))
        } else {
            None
        };
        let Some(value) = value else {
            a.r8 = 0;
            return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
        };
        if write {
            // None of the modelled fields is host-writable: TSC offset and
            // multiplier come from TD_PARAMS, MRTD from the measurement.
            return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE);
        }
        a.r8 = value;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.11 TDH.VP.CREATE ----
    fn vp_create(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        self.expl(a.rcx, OperandId::RCX, 0, PamtPageType::NDA)?;
        let page = a.rcx / PAGE;
        self.assign(page, 0, PamtPageType::TDVPR, tdr);
        self.mem.zero(page, page + 1);
        self.tds.vcpus.insert(
            page,
            Vcpu {
                tdr,
                pages: vec![page],
                initialized: false,
                assoc_lp: None,
                fields: HashMap::default(),
            },
        );
        self.tds.tds.get_mut(&tdr).expect("checked").chldcnt += 1;
        Ok(TdxStatus::SUCCESS)
    }

    /// The vCPU at `pa` (operand `o`) and its TDR.
    fn vcpu(&self, pa: u64, o: OperandId) -> Result<(u64, u64), TdxStatus> {
        self.expl(pa, o, 0, PamtPageType::TDVPR)?;
        let v = pa / PAGE;
        Ok((v, self.tds.vcpus[&v].tdr))
    }

    // ---- §4.12 TDH.VP.ADDCX ----
    fn vp_addcx(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (v, tdr) = self.vcpu(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        let vc = &self.tds.vcpus[&v];
        if vc.initialized {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        }
        if vc.pages.len() >= MAX_TDVPS {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        self.expl(a.rcx, OperandId::RCX, 0, PamtPageType::NDA)?;
        let page = a.rcx / PAGE;
        self.assign(page, 0, PamtPageType::TDCX, tdr);
        self.mem.zero(page, page + 1);
        self.tds
            .vcpus
            .get_mut(&v)
            .expect("checked")
            .pages
            .push(page);
        self.tds.tds.get_mut(&tdr).expect("checked").chldcnt += 1;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.13 TDH.VP.INIT ----
    fn vp_init(&mut self, a: &mut SeamcallArgs, _version: u8) -> LeafResult {
        let (v, tdr) = self.vcpu(a.rcx, OperandId::RCX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        let need = MIN_TDVPS + 3 * usize::from(self.tds.tds[&tdr].num_l2_vms);
        let vc = &self.tds.vcpus[&v];
        if vc.pages.len() < need {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        if vc.initialized {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        }
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        if td.num_vcpus >= td.max_vcpus {
            return Err(TdxStatus::MAX_VCPUS_EXCEEDED);
        }
        td.num_vcpus += 1;
        td.num_assoc_vcpus += 1;
        let lp = self.lp;
        let vc = self.tds.vcpus.get_mut(&v).expect("checked");
        vc.initialized = true;
        vc.assoc_lp = Some(lp);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- TDH.VP.RD / TDH.VP.WR (a subset of fields) ----
    //
    // Model choice (model §7 leaves VP.RD/WR unspecified): the fields KVM
    // uses. `PEND_NMI` (bit 0 writable), `VCPU_STATE_DETAILS` (read only;
    // bit 0 = a virtual interrupt is pending, never set here since no guest
    // runs), and the TD VMCS fields KVM writes for posted interrupts:
    // POSTED_INTR_NV (0x0002, 16 bits), POSTED_INTR_DESC_ADDR (0x2016) and
    // PIN_BASED_VM_EXEC_CONTROL (0x4000, only bit 7, posted interrupts,
    // writable). Anything else: TDX_METADATA_FIELD_ID_INCORRECT. Writes
    // take R8 = value, R9 = write mask and return the old value in R8.
    fn vp_rdwr(&mut self, a: &mut SeamcallArgs, write: bool) -> LeafResult {
        let (v, _) = self.vcpu(a.rcx, OperandId::RCX)?;
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
            a.r8 = 0;
            return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
        };
        let vcpu = self.tds.vcpus.get_mut(&v).expect("checked by vcpu()");
        let old = vcpu.fields.get(&id.into_raw()).copied().unwrap_or(0);
        if write {
            let (value, mask) = (a.r8, a.r9);
            if wmask == 0 || mask & !wmask != 0 {
                return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE);
            }
            vcpu.fields
                .insert(id.into_raw(), (old & !mask) | (value & mask));
        }
        a.r8 = old;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.24 TDH.VP.FLUSH ----
    fn vp_flush(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (v, tdr) = self.vcpu(a.rcx, OperandId::RCX)?;
        if self.tds.tds[&tdr].lifecycle != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        let need = MIN_TDVPS + 3 * usize::from(self.tds.tds[&tdr].num_l2_vms);
        let vc = &self.tds.vcpus[&v];
        if vc.pages.len() < need {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        if vc.assoc_lp != Some(self.lp) {
            return Err(TdxStatus::VCPU_NOT_ASSOCIATED);
        }
        self.tds.vcpus.get_mut(&v).expect("checked").assoc_lp = None;
        self.tds.tds.get_mut(&tdr).expect("checked").num_assoc_vcpus -= 1;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.14 TDH.MEM.SEPT.ADD, versions 0 and 1 ----
    //
    // Version 1 adds R9..R11, one L2 S-EPT page per L2 VM, and lets R8 be
    // -1 when the L1 entry already exists; its outputs return every page
    // with bit 63 set on the ones not used. Model limit: L2 S-EPT trees are
    // not modelled (model §8 leaves the L2 alias handling out), so an L2
    // page given for a TD without that L2 VM, or for any L2 VM, is refused
    // with TDX_OPERAND_INVALID on its register.
    fn sept_add(&mut self, a: &mut SeamcallArgs, version: u8) -> LeafResult {
        let given = [a.r8, a.r9, a.r10, a.r11];
        let mut used = false;
        let status = self.sept_add_inner(a, version, &mut used);
        if version >= 1 {
            let regs = [&mut a.r8, &mut a.r9, &mut a.r10, &mut a.r11];
            for (i, (r, g)) in regs.into_iter().zip(given).enumerate() {
                *r = if g == u64::MAX {
                    g
                } else if i == 0 && used {
                    g & !(1 << 63)
                } else {
                    g | (1 << 63)
                };
            }
        }
        status
    }

    fn sept_add_inner(&mut self, a: &mut SeamcallArgs, version: u8, used: &mut bool) -> LeafResult {
        let flags = TdrAndFlags::from_bits(a.rdx);
        if a.rdx & (0x0000_0000_0000_0FFE | 0xFFF0_0000_0000_0000) != 0 {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
        }
        let tdr = self.tdr(flags.tdr_pfn() * PAGE, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let pwl = self.tds.tds[&tdr].pwl;
        let (gpa, level) = self.pinfo(a.rcx, 1, pwl)?;
        let e = self.walk(tdr, gpa, level, a)?;
        match e {
            None => {}
            Some(s)
                if s.state == SeptState::NL_MAPPED
                    && (flags.allow_existing() || (version >= 1 && a.r8 == u64::MAX)) =>
            {
                (a.rcx, a.rdx) = (0, 0);
                return Ok(TdxStatus::SUCCESS);
            }
            Some(_) => {
                details(a, e, level);
                return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
            }
        }
        if a.r8 == u64::MAX {
            // v0: no page given is an operand error; v1: the entry had to
            // exist already.
            if version >= 1 {
                details(a, e, level);
                return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
            }
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
        }
        let page_pa = a.r8 & !(1 << 63);
        self.expl(page_pa, OperandId::R8, 0, PamtPageType::NDA)?;
        if version >= 1 {
            for (reg, o) in [
                (a.r9, OperandId::R9),
                (a.r10, OperandId::R10),
                (a.r11, OperandId::R11),
            ] {
                if reg != u64::MAX {
                    return Err(op(TdxStatus::OPERAND_INVALID, o));
                }
            }
        }
        let page = page_pa / PAGE;
        self.assign(page, 0, PamtPageType::EPT, tdr);
        self.mem.zero(page, page + 1);
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: SeptState::NL_MAPPED,
                pfn: page,
            },
        );
        td.chldcnt += 1;
        *used = true;
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.21 TDH.MEM.SEPT.REMOVE ----
    fn sept_remove(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let pwl = self.tds.tds[&tdr].pwl;
        let (gpa, level) = self.pinfo(a.rcx, 1, pwl)?;
        let e = self.walk(tdr, gpa, level, a)?;
        let Some(entry) =
            e.filter(|s| matches!(s.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED))
        else {
            details(a, e, level);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        };
        let td = &self.tds.tds[&tdr];
        if td.op_state == OpState::Runnable {
            if entry.state != SeptState::NL_BLOCKED {
                details(a, e, level);
                return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
            }
            let bepoch = self.module_bepoch(entry.pfn * PAGE, 0);
            if !tracked(td, bepoch) {
                return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
            }
        }
        // All 512 entries of the child page must be free.
        let child_level = level - 1;
        let base = gpa >> (12 + 9 * u32::from(level)) << 9;
        if (0..512).any(|i| td.sept.contains_key(&(child_level, base + i))) {
            return Err(op(TdxStatus::EPT_PAGE_NOT_FREE, OperandId::RCX));
        }
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.remove(&Self::sept_key(gpa, level));
        td.chldcnt -= 1;
        self.unassign(entry.pfn, 0);
        a.rcx = entry.pfn * PAGE;
        a.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    fn module_bepoch(&self, pa: u64, level: usize) -> u64 {
        self.module
            .pamt_block(pa)
            .map_or(0, |t| self.module.pamt_entry(t, level, pa).bepoch)
    }

    // ---- TDH.MEM.SEPT.RD ----
    fn sept_rd(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let pwl = self.tds.tds[&tdr].pwl;
        let (gpa, level) = self.pinfo(a.rcx, 0, pwl)?;
        let e = self.walk(tdr, gpa, level, a)?;
        details(a, e, level);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.15 TDH.MEM.PAGE.ADD ----
    fn page_add(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        let (gpa, _) = self.pinfo(a.rcx, 0, 0)?;
        let e = self.walk(tdr, gpa, 0, a)?;
        if e.is_some() {
            details(a, e, 0);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        }
        if !self.machine.shared_hpa_ok(a.r9, PAGE, PAGE) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::R9));
        }
        self.expl(a.r8, OperandId::R8, 0, PamtPageType::NDA)?;
        let mut src = vec![0u8; PAGE as usize];
        self.module_read(a.r9, &mut src, "TDH.MEM.PAGE.ADD");
        let page = a.r8 / PAGE;
        self.assign(page, 0, PamtPageType::REG, tdr);
        self.mem.zero(page, page + 1);
        self.mem.write(page * PAGE, &src);
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.insert(
            Self::sept_key(gpa, 0),
            Septe {
                state: SeptState::MAPPED,
                pfn: page,
            },
        );
        td.chldcnt += 1;
        if let Some(h) = &mut td.measurement {
            h.update(MeasurementBlock::page_add(gpa).as_bytes());
        }
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.22 TDH.MR.EXTEND ----
    fn mr_extend(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        let gpa = a.rcx;
        if !gpa.is_multiple_of(256) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let td = &self.tds.tds[&tdr];
        if !Self::private_gpa(td, gpa) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        // Walk to whatever leaf maps the GPA.
        let mut l = td.pwl;
        let leaf = loop {
            let e = td.sept.get(&(l, gpa >> (12 + 9 * u32::from(l)))).copied();
            match e {
                Some(s) if s.state == SeptState::NL_MAPPED && l > 0 => l -= 1,
                Some(s)
                    if is_leaf_state(s.state)
                        && s.state != SeptState::BLOCKED
                        && s.state != SeptState::PENDING_BLOCKED =>
                {
                    break (s, l);
                }
                _ => {
                    details(a, e, l);
                    return Err(op(TdxStatus::EPT_ENTRY_NOT_PRESENT, OperandId::RCX));
                }
            }
        };
        if leaf.0.state != SeptState::MAPPED {
            return Err(TdxStatus::EPT_ENTRY_NOT_PRESENT);
        }
        let (entry, level) = leaf;
        let offset = gpa & ((PAGE << (9 * u32::from(level))) - 1);
        let mut chunk = [0u8; 256];
        self.mem.read(entry.pfn * PAGE + offset, &mut chunk);
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        if let Some(h) = &mut td.measurement {
            h.update(MeasurementBlock::mr_extend(gpa).as_bytes());
            h.update(chunk);
        }
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.23 TDH.MR.FINALIZE ----
    fn mr_finalize(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        self.tdcs(tdr, &[OpState::Initialized])?;
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        if td.num_vcpus == 0 {
            return Err(TdxStatus::NO_VCPUS);
        }
        let h = td.measurement.take().unwrap_or_default();
        td.mrtd = Some(h.finalize().into());
        td.op_state = OpState::Runnable;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.16 TDH.MEM.PAGE.AUG ----
    // Module 1.5 maps 4K and 2M pages only (PINFO(0,1)); a 1G mapping is
    // built by PROMOTE.
    fn page_aug(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        let allowed: &[OpState] = if self.machine.desc.profile.aug_before_finalize {
            &[OpState::Runnable, OpState::Initialized]
        } else {
            &[OpState::Runnable]
        };
        self.tdcs(tdr, allowed)?;
        let (gpa, level) = self.pinfo(a.rcx, 0, 1)?;
        let e = self.walk(tdr, gpa, level, a)?;
        if e.is_some_and(|s| s.state != SeptState::REMOVED) {
            details(a, e, level);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        }
        self.expl(a.r8, OperandId::R8, level, PamtPageType::NDA)?;
        let page = a.r8 / PAGE;
        self.assign(page, level, PamtPageType::REG, tdr);
        self.mem.zero(page, page + (1 << (9 * u32::from(level))));
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: SeptState::PENDING,
                pfn: page,
            },
        );
        td.chldcnt += 1 << (9 * u32::from(level));
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    /// The checks TDH.MEM.RANGE.BLOCK (model §4.17) and UNBLOCK (§4.19)
    /// share: TDR_S(RDX); TDCS → {INITIALIZED, RUNNABLE}; PINFO (0..=pwl);
    /// the walk to an entry that is not FREE. Returns (TDR, GPA, level,
    /// entry).
    fn blockable_entry(
        &mut self,
        a: &mut SeamcallArgs,
    ) -> Result<(u64, u64, u8, Septe), TdxStatus> {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let pwl = self.tds.tds[&tdr].pwl;
        let (gpa, level) = self.pinfo(a.rcx, 0, pwl)?;
        let e = self.walk(tdr, gpa, level, a)?;
        let Some(entry) = e else {
            details(a, e, level);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        };
        Ok((tdr, gpa, level, entry))
    }

    // ---- §4.17 TDH.MEM.RANGE.BLOCK ----
    fn range_block(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (tdr, gpa, level, entry) = self.blockable_entry(a)?;
        let e = Some(entry);
        let new = match entry.state {
            SeptState::MAPPED => SeptState::BLOCKED,
            SeptState::PENDING => SeptState::PENDING_BLOCKED,
            SeptState::NL_MAPPED => SeptState::NL_BLOCKED,
            SeptState::BLOCKED | SeptState::PENDING_BLOCKED | SeptState::NL_BLOCKED => {
                details(a, e, level);
                return Err(op(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, OperandId::RCX));
            }
            _ => {
                details(a, e, level);
                return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
            }
        };
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        let epoch = td.td_epoch;
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: new,
                pfn: entry.pfn,
            },
        );
        // The epoch stamp: the page's own entry, or the child S-EPT page's.
        let stamp_level = if new == SeptState::NL_BLOCKED {
            0
        } else {
            usize::from(level)
        };
        let pa = entry.pfn * PAGE;
        if let Some(t) = self.module.pamt_block(pa) {
            let mut pe = self.module.pamt_entry(t, stamp_level, pa);
            pe.bepoch = epoch;
            self.module.set_pamt_entry(stamp_level, pa, pe);
        }
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.19 TDH.MEM.RANGE.UNBLOCK ----
    fn range_unblock(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (tdr, gpa, level, entry) = self.blockable_entry(a)?;
        let e = Some(entry);
        let new = match entry.state {
            SeptState::BLOCKED => SeptState::MAPPED,
            SeptState::PENDING_BLOCKED => SeptState::PENDING,
            SeptState::NL_BLOCKED => SeptState::NL_MAPPED,
            _ => {
                details(a, e, level);
                return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
            }
        };
        let td = &self.tds.tds[&tdr];
        if td.op_state == OpState::Runnable {
            let stamp_level = if new == SeptState::NL_MAPPED {
                0
            } else {
                usize::from(level)
            };
            if !tracked(td, self.module_bepoch(entry.pfn * PAGE, stamp_level)) {
                return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::SEPT_TREE));
            }
        }
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: new,
                pfn: entry.pfn,
            },
        );
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.18 TDH.MEM.TRACK ----
    fn mem_track(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        // No vCPU runs in the model: the previous epoch's refcount is 0.
        self.tds.tds.get_mut(&tdr).expect("checked").td_epoch += 1;
        Ok(TdxStatus::SUCCESS)
    }

    /// The checks TDH.MEM.PAGE.REMOVE (model §4.20) and TDH.MEM.PAGE.DEMOTE
    /// (a model choice, the same checks) share: TDR_S(RDX); TDCS → {INITIALIZED, RUNNABLE}; PINFO
    /// (`min_level`..=2); the walk to a leaf; and for a running TD, the leaf
    /// blocked and its block epoch tracked. Returns (TDR, GPA, level, leaf).
    fn removable_leaf(
        &mut self,
        a: &mut SeamcallArgs,
        min_level: u8,
    ) -> Result<(u64, u64, u8, Septe), TdxStatus> {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let (gpa, level) = self.pinfo(a.rcx, min_level, 2)?;
        let e = self.walk(tdr, gpa, level, a)?;
        let Some(entry) = e.filter(|s| is_leaf_state(s.state)) else {
            details(a, e, level);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        };
        let td = &self.tds.tds[&tdr];
        if td.op_state == OpState::Runnable {
            if !matches!(entry.state, SeptState::BLOCKED | SeptState::PENDING_BLOCKED) {
                details(a, e, level);
                return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
            }
            if !tracked(td, self.module_bepoch(entry.pfn * PAGE, usize::from(level))) {
                return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
            }
        }
        Ok((tdr, gpa, level, entry))
    }

    // ---- §4.20 TDH.MEM.PAGE.REMOVE ----
    fn page_remove(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (tdr, gpa, level, entry) = self.removable_leaf(a, 0)?;
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        td.sept.remove(&Self::sept_key(gpa, level));
        td.chldcnt -= 1 << (9 * u32::from(level));
        self.unassign(entry.pfn, level);
        a.rcx = entry.pfn * PAGE;
        a.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.25 TDH.MNG.VPFLUSHDONE ----
    fn vpflushdone(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        let packages = self.machine.desc.packages as usize;
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        if !matches!(
            td.lifecycle,
            Lifecycle::HkidAssigned | Lifecycle::KeysConfigured
        ) {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        if td.tdcx.len() >= MIN_TDCS
            && td.op_state != OpState::Uninitialized
            && td.num_assoc_vcpus != 0
        {
            return Err(TdxStatus::FLUSHVP_NOT_DONE);
        }
        td.lifecycle = Lifecycle::Blocked;
        let hkid = td.hkid;
        self.module.kot.insert(hkid, KotState::Flushed);
        self.tds.wbinvd_pending.insert(hkid, vec![true; packages]);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.26 TDH.PHYMEM.CACHE.WB ----
    pub(crate) fn cache_wb(&mut self, a: &mut SeamcallArgs, stop_early: Option<u32>) -> LeafResult {
        if a.rcx > 1 {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let pkg = self.machine.package_of(self.lp);
        if a.rcx == 0 {
            let flushed: HashSet<u16> = self
                .module
                .kot
                .iter()
                .filter(|(_, s)| **s == KotState::Flushed)
                .map(|(&h, _)| h)
                .collect();
            if flushed.is_empty() {
                self.tds.cache_wb.remove(&pkg);
                return Err(TdxStatus::NO_HKID_READY_TO_WBCACHE);
            }
            self.tds.cache_wb.insert(pkg, (flushed, 0));
        } else if !self.tds.cache_wb.contains_key(&pkg) {
            // Nothing interrupted on this package to resume (an interruption
            // before the first step still left a resumable state).
            return Err(TdxStatus::WBCACHE_RESUME_ERROR);
        }
        let mut budget = stop_early.unwrap_or(u32::MAX);
        let (set, progress) = self.tds.cache_wb.get_mut(&pkg).expect("started above");
        while *progress < CACHE_WB_STEPS {
            if budget == 0 {
                return Ok(TdxStatus::INTERRUPTED_RESUMABLE);
            }
            budget -= 1;
            *progress += 1;
        }
        let set = core::mem::take(set);
        self.tds.cache_wb.remove(&pkg);
        for hkid in set {
            if let Some(p) = self.tds.wbinvd_pending.get_mut(&hkid) {
                p[pkg as usize] = false;
                if p.iter().all(|&x| !x) {
                    // Every package wrote the HKID's lines back.
                    self.mem.flush_keyid(hkid);
                }
            }
        }
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.27 TDH.MNG.KEY.FREEID ----
    fn key_freeid(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rcx, OperandId::RCX)?;
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        if td.lifecycle != Lifecycle::Blocked {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        let hkid = td.hkid;
        if self
            .tds
            .wbinvd_pending
            .get(&hkid)
            .is_some_and(|p| p.iter().any(|&x| x))
        {
            return Err(TdxStatus::WBCACHE_NOT_COMPLETE);
        }
        td.lifecycle = Lifecycle::Teardown;
        self.module.kot.insert(hkid, KotState::Free);
        self.tds.wbinvd_pending.remove(&hkid);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.28 TDH.PHYMEM.PAGE.RECLAIM ----
    fn page_reclaim(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let pa = a.rcx;
        if !pa.is_multiple_of(PAGE) || pa >= MAX_PA || self.machine.has_hkid_bits(pa) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let Some(t) = self.module.pamt_block(pa) else {
            return Err(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX));
        };
        let (level, e) = self.module.pamt_leaf(t, pa);
        (a.rcx, a.rdx, a.r8) = (u64::from(e.pt.0), e.owner * PAGE, level as u64);
        if matches!(e.pt, PamtPageType::NDA | PamtPageType::RSVD) {
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, OperandId::RCX));
        }
        let size = PAGE << (9 * level as u32);
        if !pa.is_multiple_of(size) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let pfn = pa / PAGE;
        if e.pt == PamtPageType::TDR {
            let td = &self.tds.tds[&pfn];
            if td.lifecycle != Lifecycle::Teardown {
                return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
            }
            if td.chldcnt != 0 {
                return Err(TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
            }
            self.tds.tds.remove(&pfn);
        } else {
            let Some(td) = self.tds.tds.get_mut(&e.owner) else {
                return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
            };
            if td.lifecycle != Lifecycle::Teardown {
                return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
            }
            td.chldcnt -= 1 << (9 * level as u32);
            self.tds.vcpus.remove(&pfn);
        }
        self.unassign(pfn, level as u8);
        Ok(TdxStatus::SUCCESS)
    }

    // ---- §4.29 TDH.PHYMEM.PAGE.WBINVD ----
    fn page_wbinvd(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let keyid = self.machine.hkid_of(a.rcx);
        let pa = a.rcx & !self.machine.hkid_mask;
        if !pa.is_multiple_of(PAGE) || pa >= MAX_PA {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        let Some(t) = self.module.pamt_block(pa) else {
            return Err(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX));
        };
        let (level, e) = self.module.pamt_leaf(t, pa);
        if level != 0 || e.pt != PamtPageType::NDA {
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, OperandId::RCX));
        }
        let pfn = pa / PAGE;
        self.mem.flush_keyid_range(pfn, pfn + 1, keyid as u16);
        Ok(TdxStatus::SUCCESS)
    }
}

impl State {
    // ---- TDH.MEM.PAGE.DEMOTE / PROMOTE (model choices: the model leaves
    // them out; these follow the same rules as REMOVE for a running TD) ----

    /// Splits the 2M or 1G leaf at RCX into 512 leaves one level down, with
    /// the new S-EPT page in R8. Running TDs: the leaf must be blocked and
    /// tracked; the new entries are unblocked.
    fn page_demote(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let (tdr, gpa, level, entry) = self.removable_leaf(a, 1)?;
        self.expl(a.r8, OperandId::R8, 0, PamtPageType::NDA)?;
        let child_state = match entry.state {
            SeptState::BLOCKED | SeptState::MAPPED => SeptState::MAPPED,
            _ => SeptState::PENDING,
        };
        let sept = a.r8 / PAGE;
        self.assign(sept, 0, PamtPageType::EPT, tdr);
        // PAMT: the big page's entry goes, its 512 children become pages.
        let pa = entry.pfn * PAGE;
        self.module
            .set_pamt_entry(usize::from(level), pa, PamtEntry::NDA);
        let step = 1u64 << (9 * u32::from(level - 1));
        for i in 0..512 {
            let child = (entry.pfn + i * step) * PAGE;
            let pe = PamtEntry {
                pt: PamtPageType::REG,
                owner: tdr,
                bepoch: 0,
            };
            self.module
                .set_pamt_entry(usize::from(level - 1), child, pe);
        }
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        let base = gpa >> (12 + 9 * u32::from(level - 1));
        for i in 0..512 {
            td.sept.insert(
                (level - 1, base + i),
                Septe {
                    state: child_state,
                    pfn: entry.pfn + i * step,
                },
            );
        }
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: SeptState::NL_MAPPED,
                pfn: sept,
            },
        );
        td.chldcnt += 1;
        (a.rcx, a.rdx) = (0, 0);
        Ok(TdxStatus::SUCCESS)
    }

    /// Merges the 512 leaves below the entry at RCX (level 1 or 2) into one
    /// page of that level, when they map one aligned, contiguous run in the
    /// same state, and frees the S-EPT page (returned in RCX). Running TDs:
    /// the entry must be blocked and tracked.
    fn page_promote(&mut self, a: &mut SeamcallArgs) -> LeafResult {
        let tdr = self.tdr(a.rdx, OperandId::RDX)?;
        self.tdcs(tdr, &[OpState::Initialized, OpState::Runnable])?;
        let (gpa, level) = self.pinfo(a.rcx, 1, 2)?;
        let e = self.walk(tdr, gpa, level, a)?;
        let Some(entry) =
            e.filter(|s| matches!(s.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED))
        else {
            details(a, e, level);
            return Err(op(TdxStatus::EPT_ENTRY_STATE_INCORRECT, OperandId::RCX));
        };
        let td = &self.tds.tds[&tdr];
        if td.op_state == OpState::Runnable {
            if entry.state != SeptState::NL_BLOCKED {
                details(a, e, level);
                return Err(op(TdxStatus::GPA_RANGE_NOT_BLOCKED, OperandId::RCX));
            }
            if !tracked(td, self.module_bepoch(entry.pfn * PAGE, 0)) {
                return Err(op(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::RCX));
            }
        }
        let base = gpa >> (12 + 9 * u32::from(level - 1));
        let step = 1u64 << (9 * u32::from(level - 1));
        let first = td.sept.get(&(level - 1, base)).copied();
        let Some(first) =
            first.filter(|f| matches!(f.state, SeptState::MAPPED | SeptState::PENDING))
        else {
            return Err(TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX));
        };
        let aligned = first.pfn % (step * 512) == 0;
        let uniform = (0..512).all(|i| {
            td.sept
                .get(&(level - 1, base + i))
                .is_some_and(|c| c.state == first.state && c.pfn == first.pfn + i * step)
        });
        if !aligned || !uniform {
            return Err(TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX));
        }
        for i in 0..512 {
            self.module.set_pamt_entry(
                usize::from(level - 1),
                (first.pfn + i * step) * PAGE,
                PamtEntry::NDA,
            );
        }
        let pe = PamtEntry {
            pt: PamtPageType::REG,
            owner: tdr,
            bepoch: 0,
        };
        self.module
            .set_pamt_entry(usize::from(level), first.pfn * PAGE, pe);
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        for i in 0..512 {
            td.sept.remove(&(level - 1, base + i));
        }
        td.sept.insert(
            Self::sept_key(gpa, level),
            Septe {
                state: first.state,
                pfn: first.pfn,
            },
        );
        td.chldcnt -= 1;
        self.unassign(entry.pfn, 0);
        a.rcx = entry.pfn * PAGE;
        a.rdx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    /// The guest's TDG.MEM.PAGE.ACCEPT, done from the host side: the PENDING
    /// leaf at `gpa`/`level` becomes MAPPED. Returns the status the guest
    /// would see: `TDX_EPT_WALK_FAILED` if an entry above is missing or
    /// blocked, `TDX_EPT_ENTRY_STATE_INCORRECT` if the leaf is not pending
    /// (the statuses are the host leaves'; the guest ABI's are not
    /// modelled).
    pub(crate) fn guest_accept(&mut self, tdr: u64, gpa: u64, level: u8) -> TdxStatus {
        if !self.tds.tds.contains_key(&tdr) {
            return TdxStatus::OPERAND_INVALID;
        }
        // The guest's access walks the S-EPT like the host's leaves: a
        // missing or blocked entry above the page stops it.
        if let Err(s) = self.walk(tdr, gpa, level, &mut SeamcallArgs::default()) {
            return s;
        }
        let td = self.tds.tds.get_mut(&tdr).expect("checked");
        match td.sept.get_mut(&Self::sept_key(gpa, level)) {
            Some(e) if e.state == SeptState::PENDING => {
                e.state = SeptState::MAPPED;
                TdxStatus::SUCCESS
            }
            _ => TdxStatus::EPT_ENTRY_STATE_INCORRECT,
        }
    }
}

/// `is_tlb_tracked` (model §5.5) with every refcount 0.
fn tracked(td: &Td, bepoch: u64) -> bool {
    bepoch < td.td_epoch.saturating_sub(1) || bepoch == td.td_epoch.saturating_sub(1)
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

/// Where TDH.MNG.RD serves MRTD in this model: six 64-bit elements from
/// this field ID (a model choice: the references give no field ID for the
/// TD measurement registers; a host reading MRTD on real hardware must use
/// the module's own ID).
pub const MRTD_FIELD: MdFieldId = td_field_id(false, 0x10, 0x0200);

/// The element index of an MRTD field ID, if `id` is one.
fn mrtd_element(id: MdFieldId) -> Option<usize> {
    let base = MRTD_FIELD.into_raw();
    let raw = id.into_raw();
    (raw >= base && raw < base + 6).then(|| (raw - base) as usize)
}
