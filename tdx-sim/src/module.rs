//! The TDX module model: module-wide state, TDMRs and the sparse PAMT, and
//! the module-wide leaves (`reference/tdx-module-model.md` §1-§3).
//!
//! Where the references leave a behaviour open (the Extensions leaves, the
//! PAMT type of extension-pool pages, TDH.SYS.CONFIG v1's feature check),
//! the model's choice is marked "model choice" at the place it is made.

use rustc_hash::FxHashMap as HashMap;
use tdx_api::sparse::PageMap;
use tdx_sys::SeamcallArgs;
use tdx_types::{
    Leaf, LeafVersion, OperandId, TdxStatus,
    abi::TdmrInfo,
    metadata::{MdFieldId, PamtPageType, TdxFeatures0, field},
    regs::{HpaListInfo, ShutdownHandoff},
};
use zerocopy::FromBytes;

use crate::{
    memory::{CacheLines, PAGE, PageState},
    rangemap::RangeMap,
    sim::{Machine, State},
    violation::Violation,
};

const GIB: u64 = 1 << 30;
const MAX_PA: u64 = 1 << 52;

/// The module-wide state (`sysinit_state_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysState {
    /// Before TDH.SYS.INIT.
    SysInitPending,
    /// After TDH.SYS.INIT.
    SysInitDone,
    /// After TDH.SYS.CONFIG.
    SysConfigDone,
    /// After TDH.SYS.KEY.CONFIG on the last package.
    Ready,
    /// After TDH.SYS.SHUTDOWN.
    Shutdown,
}

/// State of a KeyID in the module's key ownership table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KotState {
    /// Free for TDH.MNG.CREATE.
    Free,
    /// Assigned to a TD.
    Assigned,
    /// Flushed (teardown started).
    Flushed,
    /// The global KeyID.
    Reserved,
}

/// Why the module owns a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleUse {
    /// Part of the PAMT of a TDMR.
    Pamt(u8),
    /// Donated to the extension memory pool.
    ExtPool,
    /// A TD's control, S-EPT or private page.
    Td,
}

/// One PAMT entry (the fields a host can observe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamtEntry {
    /// Page type.
    pub pt: PamtPageType,
    /// Owner TDR frame (0 for a TDR or an unowned page).
    pub owner: u64,
    /// Blocking epoch.
    pub bepoch: u64,
}

impl PamtEntry {
    pub(crate) const NDA: Self = Self {
        pt: PamtPageType::NDA,
        owner: 0,
        bepoch: 0,
    };
    pub(crate) const RSVD: Self = Self {
        pt: PamtPageType::RSVD,
        owner: 0,
        bepoch: 0,
    };
}

/// A configured TDMR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tdmr {
    pub(crate) base: u64,
    pub(crate) size: u64,
    /// Reserved areas as absolute `[start, end)` byte ranges, in order.
    pub(crate) reserved: Vec<(u64, u64)>,
    /// PAMT `(base, size)` per level: index 0 = 4K, 1 = 2M, 2 = 1G.
    pub(crate) pamt: [(u64, u64); 3],
    /// Next address whose PAMT entry is not initialized.
    pub(crate) last_init: u64,
    /// Per PAMT level: the frame up to which this TDMR's PAMT was marked
    /// private-dirty, and the cache generation of that marking.
    pub(crate) dirty_mark: [(u64, u64); 3],
}

impl Tdmr {
    fn end(&self) -> u64 {
        self.base + self.size
    }

    fn in_reserved(&self, pa: u64) -> bool {
        self.reserved.iter().any(|&(s, e)| pa >= s && pa < e)
    }

    /// The parts of the TDMR not covered by reserved areas.
    fn non_reserved(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = self.base;
        for &(s, e) in &self.reserved {
            if s > cur {
                out.push((cur, s));
            }
            cur = cur.max(e);
        }
        if cur < self.end() {
            out.push((cur, self.end()));
        }
        out
    }
}

/// Extension state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtState {
    pub(crate) pool_pages: u64,
    pub(crate) init_steps_done: u32,
    pub(crate) initialized: bool,
}

/// Steps TDH.EXT.INIT takes; a fault can interrupt it between steps.
const EXT_INIT_STEPS: u32 = 4;

/// The module.
#[derive(Debug)]
pub(crate) struct Module {
    pub(crate) state: SysState,
    lp_init: Vec<bool>,
    num_init_lps: u32,
    pkg_configured: Vec<bool>,
    num_init_pkgs: u32,
    pub(crate) tdmrs: Vec<Tdmr>,
    /// The TDMR the last TDH.SYS.TDMR.INIT named.
    last_tdmr: usize,
    pub(crate) global_hkid: Option<u16>,
    pub(crate) kot: HashMap<u16, KotState>,
    pub(crate) features: TdxFeatures0,
    /// Sparse PAMT overrides per level (0 = 4K, 1 = 2M, 2 = 1G), keyed by
    /// the address divided by the level's page size.
    pamt: [PageMap<PamtEntry>; 3],
    /// Frames the module owns, and why.
    pub(crate) owned: RangeMap<ModuleUse>,
    pub(crate) ext: ExtState,
    /// The host took PAMT memory back (after a failed bring-up): the module
    /// must be reloaded before it is used again.
    pub(crate) abandoned: bool,
    /// Metadata fields in walk order, and their index.
    fields: Vec<(MdFieldId, u64)>,
    field_index: HashMap<u64, usize>,
}

impl Module {
    pub(crate) fn new(m: &Machine) -> Self {
        let mut fields = m.desc.profile.global_fields();
        // The CMR array: NUM_CMRS is the array size (32), as module 1.5 reports it.
        fields.push((field::NUM_CMRS, crate::machine::MAX_CMRS as u64));
        for i in 0..crate::machine::MAX_CMRS as u32 {
            let (b, e) = m.cmrs.get(i as usize).copied().unwrap_or((0, 0));
            fields.push((field::cmr_base(i).expect("32 CMRs"), b));
            fields.push((field::cmr_size(i).expect("32 CMRs"), e - b));
        }
        let field_index = fields
            .iter()
            .enumerate()
            .map(|(i, (f, _))| (f.into_raw(), i))
            .collect();
        let lps = m.desc.lps() as usize;
        Self {
            state: SysState::SysInitPending,
            lp_init: vec![false; lps],
            num_init_lps: 0,
            pkg_configured: vec![false; m.desc.packages as usize],
            num_init_pkgs: 0,
            tdmrs: Vec::new(),
            last_tdmr: 0,
            global_hkid: None,
            kot: HashMap::default(),
            features: TdxFeatures0::new(),
            pamt: Default::default(),
            owned: RangeMap::new(),
            ext: ExtState::default(),
            abandoned: false,
            fields,
            field_index,
        }
    }

    /// Heap bytes of the PAMT entries that differ from their default.
    pub(crate) fn pamt_heap_bytes(&self) -> usize {
        self.pamt.iter().map(PageMap::heap_bytes).sum()
    }

    /// `pamt_get_block`: the TDMR whose initialized part covers `pa`.
    pub(crate) fn pamt_block(&self, pa: u64) -> Option<usize> {
        let i = self
            .tdmrs
            .partition_point(|t| t.base <= pa)
            .checked_sub(1)?;
        let t = &self.tdmrs[i];
        (pa < t.end() && pa < t.last_init & !(GIB - 1)).then_some(i)
    }

    /// The PAMT entry of `pa` at `level` (0 = 4K, 1 = 2M, 2 = 1G), for an
    /// address in an initialized block of TDMR `tdmr`.
    pub(crate) fn pamt_entry(&self, tdmr: usize, level: usize, pa: u64) -> PamtEntry {
        let key = pa >> (12 + 9 * level);
        match self.pamt[level].get(key) {
            Some(e) => *e,
            None if level == 0 && self.tdmrs[tdmr].in_reserved(pa) => PamtEntry::RSVD,
            None => PamtEntry::NDA,
        }
    }

    pub(crate) fn set_pamt_entry(&mut self, level: usize, pa: u64, e: PamtEntry) {
        let key = pa >> (12 + 9 * level);
        if e == PamtEntry::NDA {
            // NDA is the default of an initialized entry outside reserved
            // areas; pages in reserved areas never reach NDA.
            self.pamt[level].remove(key);
        } else {
            self.pamt[level].insert(key, e);
        }
    }

    /// True if no 4K or 2M PAMT entry of `[pa, pa + len)` differs from NDA
    /// (reserved areas are the caller's to check).
    pub(crate) fn pamt_range_all_nda(&self, pa: u64, len: u64) -> bool {
        for level in [0usize, 1] {
            let shift = 12 + 9 * level as u32;
            let (a, b) = (pa >> shift, (pa + len) >> shift);
            let busy = self.pamt[level].any_in(a, b, |e| e.pt != PamtPageType::NDA);
            if busy {
                return false;
            }
        }
        true
    }

    /// Walks to the leaf entry of `pa`: 1G if PT_REG there, else 2M if
    /// PT_REG there, else 4K (model §3.2).
    pub(crate) fn pamt_leaf(&self, tdmr: usize, pa: u64) -> (usize, PamtEntry) {
        for level in [2, 1] {
            let e = self.pamt_entry(tdmr, level, pa);
            if e.pt == PamtPageType::REG {
                return (level, e);
            }
        }
        (0, self.pamt_entry(tdmr, 0, pa))
    }
}

/// `api_error_with_multiple_info`: the status with detail bytes.
fn detail(code: TdxStatus, b0: usize, b1: usize, b2: usize) -> TdxStatus {
    code.with_config_detail(b0 as u8, b1 as u8, b2 as u8)
}

fn op(code: TdxStatus, o: OperandId) -> TdxStatus {
    code.with_operand(o)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Levels in the TDMR_INFO check order of model §2.3 step 8 and 11: 1G, 2M, 4K.
const LEVELS_1G_FIRST: [usize; 3] = [2, 1, 0];
/// Levels in the order of steps 9 and 10: 4K, 2M, 1G.
const LEVELS_4K_FIRST: [usize; 3] = [0, 1, 2];

impl State {
    /// True if the simulator models `leaf`.
    pub(crate) fn implements(&self, leaf: Leaf) -> bool {
        match leaf {
            Leaf::SYS_INIT
            | Leaf::SYS_LP_INIT
            | Leaf::SYS_RD
            | Leaf::SYS_CONFIG
            | Leaf::SYS_KEY_CONFIG
            | Leaf::SYS_TDMR_INIT
            | Leaf::SYS_SHUTDOWN
            | Leaf::SYS_LP_SHUTDOWN
            | Leaf::PHYMEM_PAGE_RDMD => true,
            Leaf::EXT_MEM_ADD | Leaf::EXT_INIT => self.machine.desc.profile.has_ext(),
            l => crate::td::implements(l),
        }
    }

    pub(crate) fn run_leaf(
        &mut self,
        lv: LeafVersion,
        a: &mut SeamcallArgs,
        stop_early: Option<u32>,
    ) -> TdxStatus {
        match lv.leaf() {
            Leaf::SYS_INIT => self.sys_init(a),
            Leaf::SYS_LP_INIT => self.sys_lp_init(a),
            Leaf::SYS_RD => self.sys_rd(a),
            Leaf::SYS_CONFIG => self.sys_config(a, lv.version()),
            Leaf::SYS_KEY_CONFIG => self.sys_key_config(),
            Leaf::SYS_TDMR_INIT => self.sys_tdmr_init(a),
            Leaf::SYS_SHUTDOWN => self.sys_shutdown(a),
            Leaf::SYS_LP_SHUTDOWN => TdxStatus::SUCCESS,
            Leaf::PHYMEM_PAGE_RDMD => self.phymem_page_rdmd(a),
            Leaf::EXT_MEM_ADD => self.ext_mem_add(a, stop_early),
            Leaf::EXT_INIT => self.ext_init(stop_early),
            Leaf::PHYMEM_CACHE_WB => self.cache_wb(a, stop_early).unwrap_or_else(|s| s),
            _ => self.run_td_leaf(lv, a),
        }
    }

    /// Reads guest-visible memory for the module, recording a violation if
    /// it is not RAM.
    pub(crate) fn module_read(&mut self, pa: u64, buf: &mut [u8], leaf: &'static str) {
        // A shared address may carry an MKTME KeyID: same memory, other key.
        let pa = pa & !self.machine.hkid_mask;
        let (a, b) = (
            pa / PAGE,
            pa.saturating_add(buf.len() as u64).div_ceil(PAGE),
        );
        if !self.mem.is_ram(a, b) {
            self.violations
                .push(Violation::ModuleReadNonRam { pa, leaf });
        }
        self.mem.read(pa, buf);
    }

    fn module_read_u64(&mut self, pa: u64, leaf: &'static str) -> u64 {
        let mut b = [0; 8];
        self.module_read(pa, &mut b, leaf);
        u64::from_le_bytes(b)
    }

    // ---- §4.1 TDH.SYS.INIT ----
    fn sys_init(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        if a.rcx != 0 {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        if self.module.state != SysState::SysInitPending {
            return TdxStatus::SYS_INIT_NOT_PENDING;
        }
        let m = &mut self.module;
        m.state = SysState::SysInitDone;
        m.num_init_lps = 0;
        m.num_init_pkgs = 0;
        m.lp_init.fill(false);
        m.pkg_configured.fill(false);
        (a.rcx, a.rdx, a.r8, a.r9, a.r10) = (0, 0, 0, 0, 0);
        TdxStatus::SUCCESS
    }

    // ---- §4.2 TDH.SYS.LP.INIT ----
    fn sys_lp_init(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        if self.module.state != SysState::SysInitDone {
            return TdxStatus::SYS_LP_INIT_NOT_PENDING;
        }
        let lp = self.lp as usize;
        if self.module.lp_init[lp] {
            return TdxStatus::SYS_LP_INIT_DONE;
        }
        self.module.lp_init[lp] = true;
        self.module.num_init_lps += 1;
        (a.rcx, a.rdx, a.r8) = (0, 0, 0);
        TdxStatus::SUCCESS
    }

    // ---- §4.6 TDH.SYS.RD ----
    fn sys_rd(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        if !self.module.lp_init[self.lp as usize] {
            return TdxStatus::SYS_LP_INIT_NOT_DONE;
        }
        let fields = &self.module.fields;
        // A null field ID (all ones) asks for the first field ID.
        if a.rdx == u64::MAX {
            a.rdx = fields.first().map_or(u64::MAX, |(f, _)| f.into_raw());
            a.r8 = 0;
            return TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT;
        }
        match self.module.field_index.get(&a.rdx) {
            Some(&i) => {
                a.r8 = fields[i].1;
                a.rdx = fields.get(i + 1).map_or(u64::MAX, |(f, _)| f.into_raw());
                TdxStatus::SUCCESS
            }
            None => {
                a.r8 = 0;
                TdxStatus::METADATA_FIELD_ID_INCORRECT
            }
        }
    }

    // ---- §2 TDH.SYS.CONFIG ----
    fn sys_config(&mut self, a: &mut SeamcallArgs, version: u8) -> TdxStatus {
        if self.module.state != SysState::SysInitDone {
            return TdxStatus::SYS_CONFIG_NOT_PENDING;
        }
        if self.module.num_init_lps < self.machine.desc.lps() {
            return TdxStatus::SYS_CONFIG_NOT_PENDING;
        }
        let n = a.rdx;
        if !self.machine.shared_hpa_ok(a.rcx, 512, n.clamp(1, 64) * 8) {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        if n > 64 || n > u64::from(self.machine.desc.profile.max_tdmrs) {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RDX);
        }
        if n < 1 {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RDX);
        }
        if a.r8 >> 16 != 0 || !self.machine.is_private_hkid(a.r8) {
            return op(TdxStatus::OPERAND_INVALID, OperandId::R8);
        }
        // Model choice: v1's R9 may only enable features the module has and
        // lets the host configure (the references do not say what the module
        // answers otherwise).
        let features = TdxFeatures0::from_bits(if version >= 1 { a.r9 } else { 0 });
        let allowed = self.machine.desc.profile.configurable_features.into_bits();
        if features.into_bits() & !allowed != 0 {
            return op(TdxStatus::OPERAND_INVALID, OperandId::R9);
        }
        // Side effect before the TDMR checks, not undone on failure (quirk).
        let hkid = a.r8 as u16;
        self.module.kot.insert(hkid, KotState::Reserved);
        self.module.global_hkid = Some(hkid);

        let mut entries = Vec::with_capacity(n as usize);
        for i in 0..n {
            let pa = self.module_read_u64(a.rcx + 8 * i, "TDH.SYS.CONFIG");
            if !self.machine.shared_hpa_ok(pa, 512, 320) {
                return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
            }
            entries.push(pa);
        }
        let mut tdmrs: Vec<Tdmr> = Vec::with_capacity(entries.len());
        for (i, &pa) in entries.iter().enumerate() {
            let mut bytes = [0u8; 512];
            self.module_read(pa, &mut bytes[..320], "TDH.SYS.CONFIG");
            let info = TdmrInfo::read_from_bytes(&bytes).expect("512 bytes make a TdmrInfo");
            match self.check_tdmr(i, &info, &tdmrs) {
                Ok(t) => tdmrs.push(t),
                Err(s) => return s,
            }
        }
        // Success: the PAMTs now belong to the module.
        for (i, t) in tdmrs.iter().enumerate() {
            for &(b, s) in &t.pamt {
                let (fa, fb) = (b / PAGE, (b + s) / PAGE);
                self.module.owned.insert(fa, fb, ModuleUse::Pamt(i as u8));
                self.mem.set_state(fa, fb, PageState::Module);
            }
        }
        let m = &mut self.module;
        m.tdmrs = tdmrs;
        m.features = features;
        m.pkg_configured.fill(false);
        m.num_init_pkgs = 0;
        m.state = SysState::SysConfigDone;
        TdxStatus::SUCCESS
    }

    /// The per-TDMR checks of model §2.3, in order.
    fn check_tdmr(&self, i: usize, info: &TdmrInfo, prev: &[Tdmr]) -> Result<Tdmr, TdxStatus> {
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
        let m = &self.machine;
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
        // 8: PAMT addresses and sizes, 1G then 2M then 4K.
        let pamt = [info.pamt_4k(), info.pamt_2m(), info.pamt_1g()];
        let esz = m.desc.profile.pamt_entry_size;
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
            let required = (size >> (12 + 9 * l)) * u64::from(esz[l]);
            if ps < required {
                return bad;
            }
        }
        let this = Tdmr {
            base,
            size,
            reserved,
            pamt,
            last_init: base,
            dirty_mark: [(0, u64::MAX); 3],
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
        let all: Vec<&Tdmr> = prev.iter().chain(std::iter::once(&this)).collect();
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
            let (s, e) = range(this.pamt[l]);
            if !self.in_merged_cmr(s, e) {
                return Err(detail(TdxStatus::PAMT_OUTSIDE_CMRS, i, l, 0));
            }
        }
        // 12: every non-reserved part in a merged CMR.
        if this
            .non_reserved()
            .iter()
            .any(|&(s, e)| !self.in_merged_cmr(s, e))
        {
            return Err(info_status(TdxStatus::TDMR_OUTSIDE_CMRS, i));
        }
        Ok(this)
    }

    /// `is_area_in_cmr`: back-to-back CMRs (in array order) chain into one.
    fn in_merged_cmr(&self, start: u64, end: u64) -> bool {
        let mut merged_start = None;
        let mut prev_end = None;
        for &(s, e) in &self.machine.cmrs {
            if s == e {
                continue;
            }
            merged_start = match (merged_start, prev_end) {
                (Some(ms), Some(pe)) if pe == s => Some(ms),
                _ => Some(s),
            };
            prev_end = Some(e);
            if start >= merged_start.unwrap_or(s) && end <= e {
                return true;
            }
        }
        false
    }

    // ---- §4.4 TDH.SYS.KEY.CONFIG ----
    fn sys_key_config(&mut self) -> TdxStatus {
        if self.module.state != SysState::SysConfigDone {
            return TdxStatus::SYS_KEY_CONFIG_NOT_PENDING;
        }
        let pkg = self.machine.package_of(self.lp) as usize;
        if self.module.pkg_configured[pkg] {
            return TdxStatus::KEY_CONFIGURED;
        }
        // Cache rule (Linux: WBINVD on all CPUs before the first KEY.CONFIG):
        // PAMT lines the host dirtied under KeyID 0 must be gone before the
        // module writes the PAMT under the global KeyID.
        if self.module.num_init_pkgs == 0 {
            let pamts: Vec<(u64, u64)> = self.module.tdmrs.iter().flat_map(|t| t.pamt).collect();
            for (b, s) in pamts {
                if let Some(pfn) = self.mem.host_dirty(b / PAGE, (b + s) / PAGE) {
                    self.violations
                        .push(Violation::KeyConfigWithDirtyPamt { pfn });
                    break;
                }
            }
        }
        let m = &mut self.module;
        m.pkg_configured[pkg] = true;
        m.num_init_pkgs += 1;
        if m.num_init_pkgs as usize == m.pkg_configured.len() {
            m.state = SysState::Ready;
        }
        TdxStatus::SUCCESS
    }

    // ---- §4.5 TDH.SYS.TDMR.INIT ----
    fn sys_tdmr_init(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        let base = a.rcx;
        if !base.is_multiple_of(GIB) || base >= MAX_PA || self.machine.has_hkid_bits(base) {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        // Hosts call this leaf in long runs on one TDMR: try the last one first.
        let hint = self.module.last_tdmr;
        let i = match self.module.tdmrs.get(hint) {
            Some(t) if t.base == base => hint,
            _ => match self.module.tdmrs.binary_search_by_key(&base, |t| t.base) {
                Ok(i) => i,
                Err(_) => return op(TdxStatus::OPERAND_INVALID, OperandId::RCX),
            },
        };
        self.module.last_tdmr = i;
        let chunk = self.machine.desc.profile.tdmr_init_chunk;
        let hkid = self.module.global_hkid.unwrap_or(0);
        let t = &mut self.module.tdmrs[i];
        if t.last_init >= t.end() {
            return TdxStatus::TDMR_ALREADY_INITIALIZED;
        }
        let from = t.last_init;
        let to = (from + chunk).min(t.end());
        t.last_init = to;
        a.rdx = to & !(GIB - 1);
        // The module wrote these PAMT entries under the global KeyID. Each
        // level's dirty range only grows during initialization, so a level
        // is re-marked only past what this TDMR already marked since the
        // last flush (this keeps the call cheap: 2^20 of them for 4 TiB).
        let (off_a, off_b) = (from - t.base, to - t.base);
        let esz = self.machine.desc.profile.pamt_entry_size;
        let generation = self.mem.cache_generation();
        for (l, &entry) in esz.iter().enumerate() {
            let (pb, _) = t.pamt[l];
            let shift = 12 + 9 * l as u32;
            let first = (pb + (off_a >> shift) * u64::from(entry)) / PAGE;
            let last = (pb + off_b.div_ceil(1 << shift) * u64::from(entry)).div_ceil(PAGE);
            let (marked_to, marked_gen) = t.dirty_mark[l];
            let from_page = if marked_gen == generation {
                first.max(marked_to)
            } else {
                first
            };
            if from_page < last {
                self.mem
                    .mark_cache(from_page, last, CacheLines::Private(hkid));
                t.dirty_mark[l] = (last, generation);
            }
        }
        TdxStatus::SUCCESS
    }

    // ---- TDH.SYS.SHUTDOWN ----
    fn sys_shutdown(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        let h = ShutdownHandoff::from_bits(a.rcx);
        let profile = &self.machine.desc.profile;
        let reserved = a.rcx >> 17 != 0;
        let compat_ok = !h.avoid_compat_sensitive() || profile.features0.update_compatibility();
        if reserved || h.handoff_version() > profile.module_hv || !compat_ok {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        self.module.state = SysState::Shutdown;
        TdxStatus::SUCCESS
    }

    // ---- TDH.PHYMEM.PAGE.RDMD ----
    fn phymem_page_rdmd(&mut self, a: &mut SeamcallArgs) -> TdxStatus {
        let pa = a.rcx;
        if !pa.is_multiple_of(PAGE) || pa >= MAX_PA || self.machine.has_hkid_bits(pa) {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        let Some(t) = self.module.pamt_block(pa) else {
            return op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, OperandId::RCX);
        };
        let (level, e) = self.module.pamt_leaf(t, pa);
        a.rcx = u64::from(e.pt.0);
        a.rdx = e.owner * PAGE;
        a.r8 = level as u64;
        a.r9 = e.bepoch;
        TdxStatus::SUCCESS
    }

    // ---- TDH.EXT.MEM.ADD (model choices throughout: the references give
    // the register ABI, not the module's checks) ----
    fn ext_mem_add(&mut self, a: &mut SeamcallArgs, stop_early: Option<u32>) -> TdxStatus {
        let list = HpaListInfo::from_bits(a.rcx);
        let reserved = a.rcx & (0b111 | 0b111 << 52) != 0;
        let list_pa = list.list_pfn() * PAGE;
        if reserved
            || list.first_entry() > list.last_entry()
            || !self.machine.shared_hpa_ok(list_pa, PAGE, PAGE)
        {
            return op(TdxStatus::OPERAND_INVALID, OperandId::RCX);
        }
        let hkid = self.module.global_hkid.unwrap_or(0);
        for (done, idx) in (list.first_entry()..=list.last_entry()).enumerate() {
            if stop_early.is_some_and(|n| done >= n as usize) {
                a.rcx = list.with_first_entry(idx).into_bits();
                return TdxStatus::INTERRUPTED_RESUMABLE;
            }
            let pa = self.module_read_u64(list_pa + 8 * u64::from(idx), "TDH.EXT.MEM.ADD");
            let fail = |s: TdxStatus, a: &mut SeamcallArgs| {
                a.rcx = list.with_first_entry(idx).into_bits();
                op(s, OperandId::RCX)
            };
            if !pa.is_multiple_of(PAGE) || pa >= MAX_PA || self.machine.has_hkid_bits(pa) {
                return fail(TdxStatus::OPERAND_INVALID, a);
            }
            let Some(t) = self.module.pamt_block(pa) else {
                return fail(TdxStatus::OPERAND_ADDR_RANGE_ERROR, a);
            };
            let (level, e) = self.module.pamt_leaf(t, pa);
            if level != 0 || e.pt != PamtPageType::NDA {
                return fail(TdxStatus::PAGE_METADATA_INCORRECT, a);
            }
            // Model choice (UNCONFIRMED): pool pages read back as PT_RSVD.
            self.module.set_pamt_entry(0, pa, PamtEntry::RSVD);
            let pfn = pa / PAGE;
            self.module.owned.insert(pfn, pfn + 1, ModuleUse::ExtPool);
            self.mem.set_state(pfn, pfn + 1, PageState::Module);
            self.mem.mark_cache(pfn, pfn + 1, CacheLines::Private(hkid));
            self.module.ext.pool_pages += 1;
        }
        TdxStatus::SUCCESS
    }

    // ---- TDH.EXT.INIT (model choices: see ext_mem_add) ----
    fn ext_init(&mut self, stop_early: Option<u32>) -> TdxStatus {
        let required = u64::from(self.machine.desc.profile.memory_pool_required_pages);
        let ext = &mut self.module.ext;
        if ext.initialized {
            return TdxStatus::SUCCESS;
        }
        if ext.pool_pages < required {
            // Model choice: not enough pool memory donated yet.
            return TdxStatus::SYS_STATE_INCORRECT;
        }
        let mut budget = stop_early.unwrap_or(u32::MAX);
        while ext.init_steps_done < EXT_INIT_STEPS {
            if budget == 0 {
                return TdxStatus::INTERRUPTED_RESUMABLE;
            }
            budget -= 1;
            ext.init_steps_done += 1;
        }
        ext.initialized = true;
        TdxStatus::SUCCESS
    }
}

fn info_status(code: TdxStatus, i: usize) -> TdxStatus {
    detail(code, i, 0, 0)
}
