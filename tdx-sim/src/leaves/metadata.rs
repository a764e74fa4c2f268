//! TDH.MNG.RD/WR and TDH.VP.RD/WR: TD- and vCPU-scope metadata
//! (`src/vmm_dispatcher/api_calls/tdh_mng_rd_wr.c`, `tdh_vp_rd_wr.c`, and
//! the metadata handlers in `src/common/metadata_handlers/`).
//!
//! The rules, as module 1.5.01 has them:
//!
//! - **Registers.** R8 is cleared when the leaf starts and holds the value
//!   read (RD), or the field's old value masked with the read mask (WR), on
//!   success. A version-1 read also sets RDX to -1 when it starts and, on
//!   success, to the ID of the next element the host may read; a null field
//!   ID ([`MdFieldId::is_null`]) asks for the first one
//!   (`TDX_METADATA_FIRST_FIELD_ID_IN_CONTEXT`). Version 0 and the writes
//!   leave RDX alone.
//! - **Field IDs.** The leaf overwrites `CONTEXT_CODE` with its own; an ID
//!   with reserved bits, `LAST_ELEMENT_IN_FIELD` or
//!   `LAST_FIELD_IN_SEQUENCE` set is `TDX_METADATA_FIELD_ID_INCORRECT`
//!   ([`MdFieldId::is_single_element`]); a field is found by class and
//!   field code in the module's lookup tables ([`md_tables`]), so element
//!   size, `INC_SIZE`, `WRITE_MASK_VALID` and `NON_ARCH` do not matter; no
//!   entry is `TDX_METADATA_FIELD_ID_INCORRECT`.
//! - **Access.** The host's masks are the debug ones in a TD with
//!   ATTRIBUTES.DEBUG, the production ones otherwise. A zero read mask is
//!   `TDX_METADATA_FIELD_NOT_READABLE`; a write whose mask R9 has no
//!   writable bit is `TDX_METADATA_FIELD_NOT_WRITABLE`, one that would
//!   change a bit of R9 that is not writable is
//!   `TDX_METADATA_FIELD_VALUE_NOT_VALID`. Values are masked to the
//!   field's width.
//!
//! Values: every field of the tables resolves and follows these rules.
//! The fields the simulator keeps read as the module has them (the
//! TDR/TDCS management fields, TD_PARAMS' fields, MRTD, the epoch, the
//! vCPU's index, pages and association, the fields a host writes); the
//! others read as 0 (the simulator has no UUID, XSAVE layout, migration,
//! RTMR extension, native CPUID values or VMCS beyond the fields written).

use tdx_sys::SeamcallArgs;
use tdx_types::{
    OperandId, TdxStatus,
    metadata::{ElementSize, MdFieldId},
};

use super::md_tables::{self, MdEntry};
use crate::{
    dispatch::{Call, LeafResult, op},
    locks::LockMode::Shared,
    memory::PAGE,
    profile::MetadataTables,
    td::{Lifecycle, MIN_TDVPS, OpState, Td, TdCtl, Vcpu, VcpuState},
};

pub(crate) const FIELD_VALUE_NOT_VALID: TdxStatus = TdxStatus::METADATA_FIELD_VALUE_NOT_VALID;
pub(crate) const WR_MASK_NOT_VALID: TdxStatus = TdxStatus::METADATA_WR_MASK_NOT_VALID;
/// The operand is the VMCS field's encoding.
pub(crate) const TD_VMCS_FIELD_NOT_INITIALIZED: TdxStatus =
    TdxStatus::TD_VMCS_FIELD_NOT_INITIALIZED;

/// TDCS class of the virtual CPUID values (`MD_TDCS_CPUID_CLASS_CODE`).
const CPUID_CLASS: u8 = 20;
/// No sub-leaf (`CPUID_SUBLEAF_NA`).
pub(crate) const SUBLEAF_NA: u32 = u32::MAX;

/// The module's CPUID lookup table (`cpuid_lookup` in
/// `include/auto_gen/cpuid_configurations.c`, module 1.5.01): leaf,
/// sub-leaf, faulting. TDH.MNG.INIT marks every non-faulting entry valid
/// (`tdh_mng_init.c`), so those read; faulting ones do not.
const CPUID_LOOKUP_1_5_01: [(u32, u32, bool); 64] = [
    (0x1, SUBLEAF_NA, false),
    (0x4, 0, false),
    (0x4, 1, false),
    (0x4, 2, false),
    (0x4, 3, false),
    (0x7, 0, false),
    (0x7, 1, false),
    (0xA, SUBLEAF_NA, false),
    (0x1C, SUBLEAF_NA, false),
    (0x8000_0008, SUBLEAF_NA, false),
    (0x0, SUBLEAF_NA, false),
    (0x3, SUBLEAF_NA, false),
    (0x4, 4, false),
    (0x6, SUBLEAF_NA, true),
    (0x7, 2, false),
    (0x8, SUBLEAF_NA, false),
    (0xD, 0, false),
    (0xD, 1, false),
    (0xD, 2, false),
    (0xD, 3, false),
    (0xD, 4, false),
    (0xD, 5, false),
    (0xD, 6, false),
    (0xD, 7, false),
    (0xD, 8, false),
    (0xD, 9, false),
    (0xD, 10, false),
    (0xD, 11, false),
    (0xD, 12, false),
    (0xD, 13, false),
    (0xD, 14, false),
    (0xD, 15, false),
    (0xD, 16, false),
    (0xD, 17, false),
    (0xD, 18, false),
    (0xE, SUBLEAF_NA, false),
    (0x11, SUBLEAF_NA, false),
    (0x12, SUBLEAF_NA, false),
    (0x13, SUBLEAF_NA, false),
    (0x14, 0, false),
    (0x14, 1, false),
    (0x15, SUBLEAF_NA, false),
    (0x19, SUBLEAF_NA, false),
    (0x1D, 0, false),
    (0x1D, 1, false),
    (0x1E, SUBLEAF_NA, false),
    (0x1F, 0, true),
    (0x1F, 1, true),
    (0x1F, 2, true),
    (0x1F, 3, true),
    (0x1F, 4, true),
    (0x1F, 5, true),
    (0x20, SUBLEAF_NA, false),
    (0x21, 0, false),
    (0x8000_0000, SUBLEAF_NA, false),
    (0x8000_0001, SUBLEAF_NA, false),
    (0x8000_0006, SUBLEAF_NA, true),
    (0x8000_0007, SUBLEAF_NA, false),
    (0x22, SUBLEAF_NA, false),
    (0x23, 0, false),
    (0x23, 1, false),
    (0x23, 2, false),
    (0x23, 3, false),
    (0x5, SUBLEAF_NA, false),
];

/// Module 1.5.05's CPUID lookup table (`MAX_NUM_CPUID_LOOKUP` 68, same
/// file): 1.5.01's 64 entries with CPUID(0x1F) sub-leaves 0-5 (indices
/// 46-51) no longer faulting (they are configurable), then 0xB sub-leaves
/// 0-2 (64-66) and 0x1A (67).
const CPUID_LOOKUP_1_5_05: [(u32, u32, bool); 68] = {
    let mut t = [(0, 0, false); 68];
    let mut i = 0;
    while i < 64 {
        t[i] = CPUID_LOOKUP_1_5_01[i];
        if t[i].0 == 0x1F {
            t[i].2 = false;
        }
        i += 1;
    }
    t[64] = (0xB, 0, false);
    t[65] = (0xB, 1, false);
    t[66] = (0xB, 2, false);
    t[67] = (0x1A, SUBLEAF_NA, false);
    t
};

/// The CPUID lookup table of the module whose metadata tables are
/// `layout`.
pub(crate) fn cpuid_lookup(layout: MetadataTables) -> &'static [(u32, u32, bool)] {
    match layout {
        MetadataTables::Tdx1_5_01 => &CPUID_LOOKUP_1_5_01,
        MetadataTables::Tdx1_5_05 => &CPUID_LOOKUP_1_5_05,
    }
}

/// `get_cpuid_lookup_entry` (`src/common/helpers/helpers.c`): the first
/// entry of the leaf whose sub-leaf is `subleaf` or not applicable.
pub(crate) fn cpuid_index(lookup: &[(u32, u32, bool)], leaf: u32, subleaf: u32) -> Option<usize> {
    lookup
        .iter()
        .position(|&(l, s, _)| l == leaf && (s == SUBLEAF_NA || s == subleaf))
}

/// The leaf and sub-leaf a CPUID-class field code names.
fn cpuid_leaf_subleaf(code: u32) -> (u32, u32) {
    let leaf = ((code >> 9) & 0x7F) | ((code >> 16) & 1) << 31;
    let subleaf = if code & (1 << 8) != 0 {
        SUBLEAF_NA
    } else {
        (code >> 1) & 0x7F
    };
    (leaf, subleaf)
}

/// `md_cpuid_field_id_set_leaf_subleaf`: `id` with element 0 of
/// `leaf`/`subleaf` as its CPUID field code (the other bits kept).
fn with_cpuid(id: MdFieldId, leaf: u32, subleaf: u32) -> MdFieldId {
    let code = ((leaf & 0x7F) << 9)
        | ((leaf >> 31) << 16)
        | ((subleaf & 0x7F) << 1)
        | u32::from(subleaf == SUBLEAF_NA) << 8;
    id.with_field_code((id.field_code() & !0x1_FFFF) | code)
}

impl MdEntry {
    fn class(&self) -> u8 {
        ((self.id >> 56) & 0x3F) as u8
    }

    fn code(&self) -> u32 {
        (self.id & 0xFF_FFFF) as u32
    }

    /// 2 for the TD VMCS (INC_SIZE), 1 otherwise.
    fn stride(&self) -> u32 {
        1 + ((self.id >> 50) & 1) as u32
    }

    fn elements(&self) -> u32 {
        u32::from(self.fields) * u32::from(self.elems)
    }

    fn size_mask(&self) -> u64 {
        ElementSize::from_code(((self.id >> 32) & 3) as u8).mask()
    }

    /// The host's read and write masks (`md_get_rd_wr_mask`).
    fn masks(&self, debug: bool) -> (u64, u64) {
        if debug {
            (self.dbg_rd, self.dbg_wr)
        } else {
            (self.prod_rd, self.prod_wr)
        }
    }

    fn is(&self, name: &str) -> bool {
        self.name == name
    }
}

/// Which leaves' metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Td,
    Vp,
}

/// The lookup tables of a context as a TD sees them, in walk order, each
/// cut to its visible length (`md_get_lookup_table`).
struct Tables {
    ctx: Ctx,
    list: [&'static [MdEntry]; 2],
    /// The CPUID lookup table the CPUID class walks.
    cpuid: &'static [(u32, u32, bool)],
}

impl Tables {
    fn new(ctx: Ctx, layout: MetadataTables, num_l2_vms: u8) -> Self {
        let unused = 3 - usize::from(num_l2_vms.min(3));
        match ctx {
            Ctx::Td => {
                let t: &'static [MdEntry] = match layout {
                    MetadataTables::Tdx1_5_01 => &md_tables::TD_1_5_01,
                    MetadataTables::Tdx1_5_05 => &md_tables::TD_1_5_05,
                };
                Self {
                    ctx,
                    list: [&t[..t.len() - unused], &[]],
                    cpuid: cpuid_lookup(layout),
                }
            }
            Ctx::Vp => {
                let v = &md_tables::TDVPS;
                Self {
                    ctx,
                    list: [&md_tables::TD_VMCS, &v[..v.len() - 3 * unused]],
                    cpuid: cpuid_lookup(layout),
                }
            }
        }
    }

    fn entry(&self, (t, i): (usize, usize)) -> &'static MdEntry {
        &self.list[t][i]
    }

    fn is_cpuid(&self, id: MdFieldId) -> bool {
        self.ctx == Ctx::Td && id.class_code() == CPUID_CLASS
    }

    /// `md_find_entry_idx`: the entry whose class is the ID's and whose
    /// field-code range holds its field code (CPUID values: by the element
    /// bit alone). The TD VMCS is table 0 of the vCPU context, for class 0;
    /// the L2 VMCS classes (36, 44, 52) are not modelled and find nothing.
    fn find(&self, id: MdFieldId) -> Option<(usize, usize)> {
        let class = id.class_code();
        let code = if self.is_cpuid(id) {
            id.field_code() & 1
        } else {
            id.field_code()
        };
        let t = match self.ctx {
            Ctx::Td => 0,
            Ctx::Vp if class == 0 => 0,
            Ctx::Vp if matches!(class, 36 | 44 | 52) => return None,
            Ctx::Vp => 1,
        };
        self.list[t]
            .iter()
            .position(|e| {
                let span = e.elements() * e.stride();
                e.class() == class && code >= e.code() && code < e.code() + span
            })
            .map(|i| (t, i))
    }

    /// The first element of the entry at `pos` (CPUID values: leaf 1).
    fn first_of(&self, pos: (usize, usize)) -> MdFieldId {
        let id = MdFieldId::from_raw(self.entry(pos).id);
        if self.is_cpuid(id) {
            let (l, s, _) = self.cpuid[0];
            with_cpuid(id, l, s)
        } else {
            id
        }
    }

    /// The entry after `pos`, moving from the TD VMCS to the TDVPS table.
    fn next_entry(&self, (t, i): (usize, usize)) -> Option<(usize, usize)> {
        if i + 1 < self.list[t].len() {
            Some((t, i + 1))
        } else if t == 0 && !self.list[1].is_empty() {
            Some((1, 0))
        } else {
            None
        }
    }

    /// One step of `md_get_next_item_with_iterator` (elements): the next
    /// element of the same entry (the caller's ID with its field code
    /// advanced), else the first of the next entry.
    fn step(&self, pos: (usize, usize), id: MdFieldId) -> Option<((usize, usize), MdFieldId)> {
        let e = self.entry(pos);
        if self.is_cpuid(id) {
            if id.field_code() & 1 == 0 {
                return Some((pos, id.with_field_code(id.field_code() | 1)));
            }
            let (leaf, subleaf) = cpuid_leaf_subleaf(id.field_code());
            if let Some(i) = cpuid_index(self.cpuid, leaf, subleaf)
                && let Some(&(l, s, _)) = self.cpuid.get(i + 1)
            {
                return Some((pos, with_cpuid(id, l, s)));
            }
        } else {
            let n = (id.field_code() - e.code()) / e.stride();
            if n + 1 < e.elements() {
                return Some((pos, id.with_field_code(id.field_code() + e.stride())));
            }
        }
        let next = self.next_entry(pos)?;
        Some((next, self.first_of(next)))
    }

    /// `md_get_next_element_in_context` for reads: from `from` (an ID
    /// found at its position), or from the start for `None`, the next
    /// element whose entry the host may read; -1 when there is none.
    fn next_readable(&self, from: Option<((usize, usize), MdFieldId)>, debug: bool) -> u64 {
        let mut cur = match from {
            None => {
                let p = (0, 0);
                Some((p, self.first_of(p)))
            }
            Some((p, id)) => self.step(p, id),
        };
        while let Some((p, id)) = cur {
            if self.entry(p).masks(debug).0 != 0 {
                return id.into_raw();
            }
            cur = self.step(p, id);
        }
        u64::MAX
    }
}

/// The field's element index within its entry.
fn element(e: &MdEntry, id: MdFieldId) -> u32 {
    (id.field_code() - e.code()) / e.stride()
}

/// The key of an element in the written-value maps.
fn key(id: MdFieldId) -> u64 {
    u64::from(id.class_code()) << 32 | u64::from(id.field_code())
}

/// The checks `md_td_get_element` makes on a CPUID-class ID:
/// reserved code bits or an unknown leaf are FIELD_ID_INCORRECT, a
/// faulting leaf FIELD_NOT_READABLE (for writes too).
fn check_cpuid(lookup: &[(u32, u32, bool)], id: MdFieldId) -> Result<(), TdxStatus> {
    if id.field_code() >> 17 != 0 {
        return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
    }
    let (leaf, subleaf) = cpuid_leaf_subleaf(id.field_code());
    match cpuid_index(lookup, leaf, subleaf) {
        None => Err(TdxStatus::METADATA_FIELD_ID_INCORRECT),
        Some(i) if lookup[i].2 => Err(TdxStatus::METADATA_FIELD_NOT_READABLE),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// What a TD-scope value is read from.
struct TdView<'a> {
    td: &'a Td,
    ctl: &'a TdCtl,
    hkid_start: u32,
    /// The module's CPUID lookup table.
    cpuid: &'static [(u32, u32, bool)],
    /// The machine (the TD's CPUID values are computed from it).
    desc: &'a crate::MachineDesc,
}

impl TdView<'_> {
    fn param(&self, off: usize, len: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(p) = &self.ctl.params {
            b[..len].copy_from_slice(&p[off..off + len]);
        }
        u64::from_le_bytes(b)
    }

    fn with_hkid(&self, frame: u64) -> u64 {
        (frame * PAGE) | (u64::from(self.td.hkid()) << self.hkid_start)
    }

    /// TDCS EPTP: the EPTP controls with the S-EPT root, TDCS page 3,
    /// without KeyID bits (`verify_and_set_td_eptp_controls`).
    fn eptp(&self) -> u64 {
        (self.param(24, 8) & 0xFFF) | self.ctl.tdcx.get(3).map_or(0, |&f| f * PAGE)
    }

    /// The element's value as the TDR/TDCS holds it.
    fn value(&self, e: &MdEntry, id: MdFieldId) -> u64 {
        let (td, ctl) = (self.td, self.ctl);
        let i = element(e, id) as usize;
        if let Some(&v) = ctl.md_written.get(&key(id)) {
            return v;
        }
        match e.name {
            "FATAL" => u64::from(td.fatal()),
            "NUM_TDCX" => td.num_tdcx(),
            "CHLDCNT" => td.chldcnt.sum() as u64,
            "LIFECYCLE_STATE" => match td.lifecycle() {
                Lifecycle::HkidAssigned => 0,
                Lifecycle::KeysConfigured => 1,
                Lifecycle::Blocked => 2,
                Lifecycle::Teardown => 3,
            },
            "TDCX_PA" => ctl.tdcx.get(i).map_or(0, |&f| self.with_hkid(f)),
            "HKID" => u64::from(td.hkid()),
            "PKG_CONFIG_BITMAP" => ctl
                .pkg_configured
                .iter()
                .enumerate()
                .fold(0, |m, (p, &c)| m | u64::from(c) << p),
            "NUM_VCPUS" => u64::from(ctl.num_vcpus),
            "NUM_ASSOC_VCPUS" => u64::from(td.num_assoc_vcpus()),
            "OP_STATE" => match td.op_state() {
                OpState::Uninitialized => 0,
                OpState::Initialized => 1,
                OpState::Runnable => 2,
            },
            "NUM_L2_VMS" => u64::from(td.num_l2_vms()),
            "ATTRIBUTES" => ctl.attributes,
            "XFAM" => self.param(8, 8),
            "MAX_VCPUS" => u64::from(ctl.max_vcpus),
            "GPAW" => u64::from(td.gpaw()),
            "EPTP" => self.eptp(),
            "TSC_OFFSET" => ctl.tsc_offset,
            "TSC_MULTIPLIER" => ctl.tsc_multiplier,
            "TSC_FREQUENCY" => self.param(40, 2),
            // `md_td_get_element` answers the size of the lookup table.
            "NUM_CPUID_VALUES" => self.cpuid.len() as u64,
            // 1 s, set by TDH.MNG.INIT (`tdh_mng_init.c`), read in µs.
            "HP_LOCK_TIMEOUT" => 1_000_000,
            "CONFIG_FLAGS" => self.param(32, 8),
            // PENDING_VE_DISABLE from ATTRIBUTES.SEPT_VE_DISABLE.
            "TD_CTLS" => (ctl.attributes >> 28) & 1,
            "CPUID_VALID" => self.cpuid.get(i).map_or(0, |c| u64::from(!c.2)),
            // The TD's CPUID values (`super::instr::td_cpuid`): element 0
            // EAX (31:0) and EBX (63:32), element 1 ECX and EDX.
            "CPUID_VALUES" => {
                let (leaf, subleaf) = cpuid_leaf_subleaf(id.field_code());
                // Zero before TDH.MNG.INIT computed them.
                let v = ctl
                    .params
                    .as_deref()
                    .and_then(|p| super::instr::td_cpuid_of(self.desc, Some(p), leaf, subleaf))
                    .unwrap_or_default();
                let half = (id.field_code() & 1) as usize * 2;
                u64::from(v[half]) | u64::from(v[half + 1]) << 32
            }
            "TD_EPOCH" => td.td_epoch(),
            "MRTD" => ctl.mrtd.map_or(0, |m| {
                u64::from_le_bytes(m[8 * i..8 * i + 8].try_into().expect("8 bytes"))
            }),
            "MRCONFIGID" => self.param(80 + 8 * i, 8),
            "MROWNER" => self.param(128 + 8 * i, 8),
            "MROWNERCONFIG" => self.param(176 + 8 * i, 8),
            "TOPOLOGY_ENUM_CONFIGURED" => u64::from(!ctl.vp_init_v0),
            "X2APIC_IDS" => ctl.x2apic_ids.get(i).map_or(0, |&x| u64::from(x)),
            _ => 0,
        }
    }
}

/// What a vCPU-scope value is read from.
struct VpView<'a> {
    td: &'a TdView<'a>,
    vcpu: &'a Vcpu,
}

impl VpView<'_> {
    fn value(&self, e: &MdEntry, id: MdFieldId) -> u64 {
        let (v, td) = (self.vcpu, self.td);
        if let Some(&x) = v.fields.get(&key(id)) {
            return x;
        }
        let i = element(e, id) as usize;
        if id.class_code() == 0 {
            // TD VMCS fields, by encoding.
            return match id.field_code() {
                0x0002 => 0xFFFF,   // posted-interrupt vector: not set yet
                0x2016 => u64::MAX, // posted-interrupt descriptor: NULL_PA
                0x2010 => td.ctl.tsc_offset,
                0x2032 => td.ctl.tsc_multiplier,
                0x201A => td.eptp(),
                0x4026 => u64::from(td.td.hkid()),
                _ => 0,
            };
        }
        match e.name {
            // TDVPS state: UNINITIALIZED 0, READY 2, ACTIVE 4, DISABLED 8.
            "VCPU_STATE" => v.state as u64,
            "VCPU_INDEX" => u64::from(v.index),
            // TDG.VP.CPUIDVE.SET's flags.
            "CPUID_SUPERVISOR_VE" => u64::from(v.cpuid_ve.0),
            "CPUID_USER_VE" => u64::from(v.cpuid_ve.1),
            "NUM_TDVPS_PAGES" => v.pages.len() as u64,
            "ASSOC_LPID" => v.assoc_lp.map_or(u64::from(u32::MAX), u64::from),
            "XFAM" => td.param(8, 8),
            "TDVPS_PAGE_PA" => v.pages.get(i).map_or(0, |&f| td.with_hkid(f)),
            _ => 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Element access
// ---------------------------------------------------------------------------

/// A single element's read (`md_read_element`): `value` gives the element
/// as stored.
fn read(e: &MdEntry, debug: bool, raw: u64) -> Result<u64, TdxStatus> {
    let (rd, _) = e.masks(debug);
    if rd == 0 {
        return Err(TdxStatus::METADATA_FIELD_NOT_READABLE);
    }
    Ok(raw & e.size_mask() & rd)
}

/// What a write computed: the old value to return (masked with the read
/// mask) and the value to store.
struct Written {
    old: u64,
    new: u64,
}

/// The write rules common to both contexts (`md_td_write_element`,
/// `md_vp_write_element`): the request must cover a writable bit, and must
/// not change a bit it covers that is not writable. `current` is the
/// element as stored; `adjust` is the vCPU rule that an address field
/// still holding its initial invalid value (bit 63 set) counts only its
/// writable bits.
fn write(
    e: &MdEntry,
    debug: bool,
    current: u64,
    value: u64,
    request: u64,
    vp: bool,
) -> Result<Written, TdxStatus> {
    let (rd, wr) = e.masks(debug);
    let current = current & e.size_mask();
    let combined = wr & request;
    if combined == 0 {
        return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE);
    }
    // The vCPU handler compares against 0 when the whole element is
    // written, and against the writable bits of a never-set address.
    let mut base = current;
    if vp {
        if combined == e.size_mask() {
            base = 0;
        }
        if e.attrs & 0b11 != 0 && base >> 63 != 0 {
            base &= wr;
        }
    }
    let forbidden = request & !wr;
    if base & forbidden != value & forbidden {
        return Err(FIELD_VALUE_NOT_VALID);
    }
    Ok(Written {
        old: current & rd,
        new: (base & !combined) | (value & combined),
    })
}

// ---------------------------------------------------------------------------
// Leaves
// ---------------------------------------------------------------------------

/// TDH.MNG.RD (version 0 or 1) / TDH.MNG.WR (`tdh_mng_rd_wr.c`). Locks:
/// TDR S:RCX, op state S. Op states: RD in any initialized state, WR in
/// INITIALIZED and RUNNABLE (among those the model has).
pub(crate) fn mng_rd_wr(c: &mut Call<'_>, a: &mut SeamcallArgs, write_op: bool) -> LeafResult {
    let (requested, value_in, request) = (a.rdx, a.r8, a.r9);
    let v1 = !write_op && c.version > 0;
    if v1 {
        a.rdx = u64::MAX;
    }
    a.r8 = 0;
    let td = c.tdr(a.rcx, OperandId::RCX, Shared)?;
    c.tdcs(td, Some(Shared), &[OpState::Initialized, OpState::Runnable])?;
    let s = c.sim;
    let debug = td.ctl().attributes & 1 != 0;
    let tables = Tables::new(Ctx::Td, s.machine.desc.profile.metadata, td.num_l2_vms());
    let id = MdFieldId::from_raw(requested).with_context_code(MdFieldId::CONTEXT_TD);
    if v1 && id.is_null() {
        c.locked();
        a.rdx = tables.next_readable(None, debug);
        return Ok(TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT);
    }
    if !id.is_single_element() {
        return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
    }
    let pos = tables
        .find(id)
        .ok_or(TdxStatus::METADATA_FIELD_ID_INCORRECT)?;
    let e = tables.entry(pos);
    if tables.is_cpuid(id) {
        check_cpuid(tables.cpuid, id)?;
    }
    let current = TdView {
        td,
        ctl: &td.ctl(),
        hkid_start: s.machine.hkid_start,
        cpuid: tables.cpuid,
        desc: &s.machine.desc,
    }
    .value(e, id);
    if write_op {
        let w = write(e, debug, current, value_in, request, false)?;
        if e.is("HP_LOCK_TIMEOUT") {
            // Whole-field writes only, of 10 ms to 100 s
            // (`md_td_write_element` in `metadata_td.c`,
            // `td_control_structures.h`). The module stores the value in
            // TSC ticks (32 bits of them) and reads it back in µs; the
            // model, without a TSC frequency, keeps the µs.
            if e.masks(debug).1 & request != u64::MAX {
                return Err(WR_MASK_NOT_VALID);
            }
            if !(10_000..=100_000_000).contains(&w.new) {
                return Err(FIELD_VALUE_NOT_VALID);
            }
        }
        c.locked();
        td.ctl().md_written.insert(key(id), w.new & e.size_mask());
        a.r8 = w.old;
    } else {
        let value = read(e, debug, current)?;
        c.locked();
        if v1 {
            a.rdx = tables.next_readable(Some((pos, id)), debug);
        }
        a.r8 = value;
    }
    Ok(TdxStatus::SUCCESS)
}

/// The inputs of TDH.VP.RD/WR as the caller passed them (the leaf
/// overwrites RDX and R8 when it starts).
pub(crate) struct VpStart {
    /// RDX: the field ID.
    pub(crate) field: u64,
    /// R8: the value to write.
    pub(crate) value: u64,
    /// R9: the write mask.
    pub(crate) mask: u64,
    /// A version-1 read.
    pub(crate) v1: bool,
}

/// TDH.VP.RD (version 0 or 1) / TDH.VP.WR (`tdh_vp_rd_wr.c`) of the vCPU
/// whose TDVPR is frame `v` in TD `td` (its TDVPR taken shared, the TDR
/// implicitly shared, by the caller). Locks then: op state S. After the
/// TDVPS page count (`map_tdvps`: TDCX_NUM_INCORRECT), the vCPU must be
/// initialized (VCPU_STATE_INCORRECT) and not associated with another
/// logical processor (VCPU_ASSOCIATED); it is then associated with this
/// one (`check_and_associate_vcpu`, `src/common/helpers/helpers.c`), even
/// if the field access that follows fails.
pub(crate) fn vp_rd_wr(
    c: &mut Call<'_>,
    a: &mut SeamcallArgs,
    write_op: bool,
    (v, td): (u64, &Td),
    start: VpStart,
) -> LeafResult {
    let VpStart {
        field: requested,
        value: value_in,
        mask: request,
        v1,
    } = start;
    let s = c.sim;
    let need = MIN_TDVPS + 3 * usize::from(td.num_l2_vms());
    let (pages, state, assoc) = s
        .vcpus
        .with(v, |vc| (vc.pages.len(), vc.state, vc.assoc_lp));
    if pages < need {
        return Err(TdxStatus::TDCX_NUM_INCORRECT);
    }
    // `check_and_associate_vcpu` (`src/common/helpers/helpers.c`): READY,
    // or DISABLED for a read; an uninitialized vCPU, or one in the guest
    // (ACTIVE, on another LP), is refused before the association check.
    let state_ok = state == VcpuState::Ready || (state == VcpuState::Disabled && !write_op);
    if !state_ok {
        return Err(TdxStatus::VCPU_STATE_INCORRECT);
    }
    if assoc.is_some_and(|lp| lp != c.lp) {
        return Err(TdxStatus::VCPU_ASSOCIATED);
    }
    c.locked();
    if assoc.is_none() {
        let lp = c.lp;
        s.vcpus.with(v, |vc| vc.assoc_lp = Some(lp));
        td.add_assoc_vcpus(1);
    }
    let debug = td.ctl().attributes & 1 != 0;
    let tables = Tables::new(Ctx::Vp, s.machine.desc.profile.metadata, td.num_l2_vms());
    let id = MdFieldId::from_raw(requested).with_context_code(MdFieldId::CONTEXT_VP);
    if v1 && id.is_null() {
        a.rdx = tables.next_readable(None, debug);
        return Ok(TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT);
    }
    if !id.is_single_element() {
        return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
    }
    let pos = tables
        .find(id)
        .ok_or(TdxStatus::METADATA_FIELD_ID_INCORRECT)?;
    let e = tables.entry(pos);
    // The TD VMCS has no "high" half access (`md_vp_get_element`).
    if pos.0 == 0 && id.field_code() & 1 != 0 {
        return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT);
    }
    let current = {
        let ctl = td.ctl();
        let tdv = TdView {
            td,
            ctl: &ctl,
            hkid_start: s.machine.hkid_start,
            cpuid: cpuid_lookup(s.machine.desc.profile.metadata),
            desc: &s.machine.desc,
        };
        s.vcpus
            .with(v, |vc| VpView { td: &tdv, vcpu: vc }.value(e, id))
    };
    if write_op {
        let w = write(e, debug, current, value_in, request, true)?;
        vmcs_write_rules(c, e, id, w.new, v)?;
        s.vcpus.with(v, |vc| {
            vc.fields.insert(key(id), w.new & e.size_mask());
        });
        a.r8 = w.old;
    } else {
        let value = read(e, debug, current)?;
        if v1 {
            a.rdx = tables.next_readable(Some((pos, id)), debug);
        }
        a.r8 = value;
    }
    Ok(TdxStatus::SUCCESS)
}

/// The checks a host write of an address field and of the TD VMCS fields
/// KVM sets makes on the value to be written (`md_vp_write_element`,
/// `md_vp_element_vmcs_wr_handle` in `metadata_vp.c`):
///
/// - a shared host physical address (the posted-interrupt descriptor,
///   64 bytes; the shared EPTP, a page) must pass the shared-HPA check
///   (FIELD_VALUE_NOT_VALID);
/// - the posted-interrupt vector must be 0..=255 (FIELD_VALUE_NOT_VALID);
/// - enabling posted interrupts (pin-based bit 7) needs the vector and the
///   descriptor set first (`TDX_TD_VMCS_FIELD_NOT_INITIALIZED` with the
///   encoding of the field still unset).
///
/// Not modelled: the rules of the fields only a debug TD writes (guest CR0,
/// CR4, DEBUGCTL), of the secondary processor-based controls, and of the
/// private-GPA fields.
fn vmcs_write_rules(
    c: &Call<'_>,
    e: &MdEntry,
    id: MdFieldId,
    new: u64,
    v: u64,
) -> Result<(), TdxStatus> {
    let machine = &c.sim.machine;
    // Attributes: HPA (bit 0) and shared (bit 3).
    if e.attrs & 0b1001 == 0b1001 {
        let len = if id.class_code() == 0 && id.field_code() == 0x2016 {
            64
        } else {
            PAGE
        };
        if !machine.shared_hpa_ok(new, 1, len) {
            return Err(FIELD_VALUE_NOT_VALID);
        }
    }
    if id.class_code() != 0 {
        return Ok(());
    }
    match id.field_code() {
        0x0002 if new > 255 => Err(FIELD_VALUE_NOT_VALID),
        0x4000 if new & (1 << 7) != 0 => {
            let (nv, pid) = c.sim.vcpus.with(v, |vc| {
                (
                    vc.fields.get(&key(vmcs_id(0x0002))).copied(),
                    vc.fields.get(&key(vmcs_id(0x2016))).copied(),
                )
            });
            if nv.unwrap_or(0xFFFF) & 0xFFFF == 0xFFFF {
                return Err(op(TD_VMCS_FIELD_NOT_INITIALIZED, OperandId(0x0002)));
            }
            if pid.unwrap_or(u64::MAX) == u64::MAX {
                return Err(op(TD_VMCS_FIELD_NOT_INITIALIZED, OperandId(0x2016)));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A TD VMCS field's ID (class 0).
fn vmcs_id(encoding: u32) -> MdFieldId {
    MdFieldId::new().with_field_code(encoding)
}
