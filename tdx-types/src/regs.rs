//! Packed register values of the host ABI.
//!
//! Each type here is one 64-bit register operand with fields, declared with
//! `bitfield-struct` so the layout is written once, in bit order. Reserved
//! fields keep whatever bits they held, so a value read back from the module
//! survives a round trip through [`from_bits`](PageInfo::from_bits) and
//! `into_bits`; the typed constructors (`PageInfo::new`, ...) always leave
//! them zero, which is what the module requires on input.
//!
//! Two register values are not bitfields because a field's position is not
//! fixed: [`KeyedPa`] (the KeyID sits above the platform's physical address
//! bits) and the status in RAX (see [`crate::status`]).

use bitfield_struct::bitfield;
use core::fmt;

use crate::{
    addr::{AddrError, Gpa, Hpa, MAX_PA_BITS, PAGE_SHIFT, Pfn},
    page::{PageSize, TdxLevel},
};

/// Why a register value could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegError {
    /// An address did not fit or was misaligned.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// A count is out of range for the field that holds it.
    #[error("{what} {value} is out of range 1..={max}")]
    Count {
        /// What was counted.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The largest value the field can hold.
        max: usize,
    },
    /// A KeyID does not fit in the KeyID bits.
    #[error("KeyID {hkid} does not fit above bit {shift}")]
    KeyId {
        /// The KeyID.
        hkid: u16,
        /// Where the KeyID bits start.
        shift: u32,
    },
}

/// `GPA | level`, the RCX operand of TDH.MEM.SEPT.ADD, PAGE.AUG,
/// RANGE.BLOCK/UNBLOCK, PAGE.REMOVE, SEPT.REMOVE, PROMOTE, DEMOTE
/// (`page_info_api_input_t` in the module).
///
/// Bits 2:0 level, 11:3 reserved (zero), 51:12 GPA bits 51:12, 63:52
/// reserved (zero).
#[bitfield(u64, debug = false)]
#[derive(PartialEq, Eq, Hash)]
pub struct PageInfo {
    /// The S-EPT level (see [`TdxLevel`]).
    #[bits(3)]
    pub level: u8,
    #[bits(9)]
    __reserved0: u16,
    /// GPA bits 51:12 (the guest frame number).
    #[bits(40)]
    pub gfn: u64,
    #[bits(12)]
    __reserved1: u16,
}

impl PageInfo {
    /// `gpa | level`. The GPA must be aligned to the size an entry at
    /// `level` covers (4 KiB << 9·level), as the module checks.
    #[inline]
    pub const fn try_new(gpa: Gpa, level: TdxLevel) -> Result<Self, RegError> {
        match gpa.check_aligned(level.bytes()) {
            Ok(_) => {}
            Err(e) => return Err(RegError::Addr(e)),
        }
        // A `Gpa` is below 2^52 and, aligned, has bits 11:0 clear: it is
        // already the GFN field in place, and the level fits in 2:0.
        Ok(Self::from_bits(gpa.as_u64() | level.as_u8() as u64))
    }

    /// `gpa | S::LEVEL` for a page of size `S`.
    #[inline]
    pub const fn for_page<S: PageSize>(gpa: Gpa) -> Result<Self, RegError> {
        Self::try_new(gpa, S::LEVEL)
    }

    /// The GPA (level bits removed).
    pub const fn gpa(self) -> Gpa {
        Gpa::new_truncate(self.gfn() << PAGE_SHIFT)
    }

    /// The level as a [`TdxLevel`], or `None` for the values 5..=7.
    pub const fn tdx_level(self) -> Option<TdxLevel> {
        TdxLevel::from_u8(self.level())
    }

    /// True if the reserved bits (11:3 and 63:52) are zero.
    pub const fn reserved_bits_clear(self) -> bool {
        self.0 & (0x0000_0000_0000_0FF8 | 0xFFF0_0000_0000_0000) == 0
    }
}

impl fmt::Debug for PageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PageInfo(gpa={:#x}, level={}",
            self.gfn() << PAGE_SHIFT,
            self.level()
        )?;
        if !self.reserved_bits_clear() {
            write!(f, ", reserved bits set: raw={:#x}", self.0)?;
        }
        f.write_str(")")
    }
}

/// `HPA | level`, the RCX operand of TDH.PHYMEM.PAMT.ADD/REMOVE (Dynamic
/// PAMT): same layout as [`PageInfo`], with a host physical address.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HpaLevel {
    /// The level (1 = 2M for PAMT.ADD/REMOVE).
    #[bits(3)]
    pub level: u8,
    #[bits(9)]
    __reserved0: u16,
    /// HPA bits 51:12.
    #[bits(40)]
    pub pfn: u64,
    #[bits(12)]
    __reserved1: u16,
}

impl HpaLevel {
    /// `hpa | level`; `hpa` must be aligned to the level's size.
    pub const fn try_new(hpa: Hpa, level: TdxLevel) -> Result<Self, RegError> {
        match hpa.check_aligned(level.bytes()) {
            Ok(_) => {}
            Err(e) => return Err(RegError::Addr(e)),
        }
        // As for `PageInfo`: the aligned HPA is the PFN field in place.
        Ok(Self::from_bits(hpa.as_u64() | level.as_u8() as u64))
    }
}

/// The state of a Secure-EPT entry as the module reports it in extended
/// error information (RDX bits 15:8). An open set: migration adds states.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct SeptState(pub u8);

impl SeptState {
    /// Free: nothing mapped.
    pub const FREE: Self = Self(0);
    /// A leaf that was blocked (TDH.MEM.RANGE.BLOCK).
    pub const BLOCKED: Self = Self(1);
    /// An AUGed page the guest has not accepted yet.
    pub const PENDING: Self = Self(2);
    /// A pending page that was blocked.
    pub const PENDING_BLOCKED: Self = Self(3);
    /// A mapped leaf (Linux: "PRESENT").
    pub const MAPPED: Self = Self(4);
    /// Removed (import flows only).
    pub const REMOVED: Self = Self(5);
    /// Write-blocked (migration).
    pub const BLOCKEDW: Self = Self(8);
    /// A blocked non-leaf entry.
    pub const NL_BLOCKED: Self = Self(0x81);
    /// A mapped non-leaf entry (points to an S-EPT page).
    pub const NL_MAPPED: Self = Self(0x84);

    /// The name, if known.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "FREE",
            1 => "BLOCKED",
            2 => "PENDING",
            3 => "PENDING_BLOCKED",
            4 => "MAPPED",
            5 => "REMOVED",
            8 => "BLOCKEDW",
            0x81 => "NL_BLOCKED",
            0x84 => "NL_MAPPED",
            _ => return None,
        })
    }
}

impl fmt::Debug for SeptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "SeptState({:#x})", self.0),
        }
    }
}

impl fmt::Display for SeptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// RDX of the extended error information of TDH.MEM.* leaves: the level
/// and state of the S-EPT entry where the walk stopped.
///
/// Bits 2:0 level, 15:8 state, 17:16 L2 VM index.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct SeptLevelState {
    /// Level of the entry.
    #[bits(3)]
    pub level: u8,
    #[bits(5)]
    __reserved0: u8,
    /// State of the entry.
    #[bits(8, from = SeptState, into = SeptState::into_bits)]
    pub state: SeptState,
    /// L2 VM index the entry belongs to (0 = L1).
    #[bits(2)]
    pub vm: u8,
    #[bits(46)]
    __reserved1: u64,
}

impl SeptState {
    /// The raw value (used by the bitfield conversion).
    pub const fn into_bits(self) -> u8 {
        self.0
    }
}

impl From<u8> for SeptState {
    fn from(v: u8) -> Self {
        Self(v)
    }
}

/// The extended error information TDH.MEM.* leaves return in RCX and RDX
/// when an S-EPT walk or state check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeptDetails {
    /// RCX: the architectural view of the S-EPT entry
    /// (`set_arch_septe_details_in_vmm_regs` in the module's
    /// `sept_manager.c`). A free entry has only bit 63 ("suppress #VE")
    /// set; a leaf (bit 7 set, 4K included) shows its frame, bit 63,
    /// memory type, IPAT and RWX (MAPPED `frame | 0x80000000000000F7`,
    /// pending or blocked `frame | 0x80000000000000F0`); a non-leaf entry
    /// shows RWX and bit 7 only (`0x7` mapped, `0x0` blocked), never the
    /// S-EPT page below it.
    pub entry: u64,
    /// RDX: level and state.
    pub level_state: SeptLevelState,
}

impl SeptDetails {
    /// From the raw RCX and RDX.
    pub const fn from_regs(rcx: u64, rdx: u64) -> Self {
        Self {
            entry: rcx,
            level_state: SeptLevelState::from_bits(rdx),
        }
    }
}

/// RDX of TDH.MEM.SEPT.ADD: the TDR's address with the `allow_existing`
/// flag in bit 0 (bits 11:1 and 63:52 reserved).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct TdrAndFlags {
    /// Succeed without using the new page if the entry is already mapped.
    pub allow_existing: bool,
    #[bits(11)]
    __reserved0: u16,
    /// TDR frame number (HPA bits 51:12).
    #[bits(40)]
    pub tdr_pfn: u64,
    #[bits(12)]
    __reserved1: u16,
}

impl TdrAndFlags {
    /// The TDR at `tdr`, with `allow_existing`.
    pub const fn with_tdr(tdr: Pfn, allow_existing: bool) -> Self {
        Self::new()
            .with_tdr_pfn(tdr.as_u64())
            .with_allow_existing(allow_existing)
    }
}

/// HPA_LIST_INFO: a list page of up to 512 HPAs and the window of it to
/// process (TDH.EXT.MEM.ADD). The module updates FIRST_ENTRY when it is
/// interrupted, so re-issuing the returned value resumes.
///
/// Bits 2:0 reserved, 11:3 FIRST_ENTRY, 51:12 list page frame, 54:52
/// reserved, 63:55 LAST_ENTRY (number of entries - 1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HpaListInfo {
    #[bits(3)]
    __reserved0: u8,
    /// Index of the first entry still to process.
    #[bits(9)]
    pub first_entry: u16,
    /// Frame of the list page.
    #[bits(40)]
    pub list_pfn: u64,
    #[bits(3)]
    __reserved1: u8,
    /// Index of the last entry (count - 1).
    #[bits(9)]
    pub last_entry: u16,
}

/// Most entries one 4 KiB list or root page holds.
pub const HPA_LIST_MAX_ENTRIES: usize = 512;

impl HpaListInfo {
    /// A list of `count` (1..=512) entries in the page at `list`, starting
    /// at entry 0.
    pub const fn try_new(list: Pfn, count: usize) -> Result<Self, RegError> {
        if count == 0 || count > HPA_LIST_MAX_ENTRIES {
            return Err(RegError::Count {
                what: "HPA list entries",
                value: count,
                max: 512,
            });
        }
        Ok(Self::new()
            .with_list_pfn(list.as_u64())
            .with_last_entry((count - 1) as u16))
    }

    /// Number of entries in the list (LAST_ENTRY + 1).
    pub const fn count(self) -> usize {
        self.last_entry() as usize + 1
    }

    /// Entries not yet processed (none if FIRST_ENTRY is past LAST_ENTRY).
    pub const fn remaining(self) -> usize {
        self.count().saturating_sub(self.first_entry() as usize)
    }
}

/// HPA_ARRAY_T (TDX Connect): either a root page of HPAs, or, when the
/// array has exactly one page, that page itself ("singleton" encoding).
///
/// Bits 51:12 frame (root page, or the single data page), 63:55 SIZE
/// (entries - 1); all other bits zero.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HpaArrayT {
    #[bits(12)]
    __reserved0: u16,
    /// Frame of the root page, or of the only data page.
    #[bits(40)]
    pub pfn: u64,
    #[bits(3)]
    __reserved1: u8,
    /// Number of entries - 1.
    #[bits(9)]
    pub size: u16,
}

impl HpaArrayT {
    /// The encoding of an array of `count` pages whose root page is `root`
    /// and whose first page is `first`: the singleton form (`first`, SIZE 0)
    /// when `count` is 1, the root page otherwise.
    pub const fn encode(root: Pfn, first: Pfn, count: usize) -> Result<Self, RegError> {
        if count == 0 || count > HPA_LIST_MAX_ENTRIES {
            return Err(RegError::Count {
                what: "HPA array entries",
                value: count,
                max: 512,
            });
        }
        let pfn = if count == 1 { first } else { root };
        Ok(Self::new()
            .with_pfn(pfn.as_u64())
            .with_size((count - 1) as u16))
    }

    /// Number of entries (SIZE + 1).
    pub const fn count(self) -> usize {
        self.size() as usize + 1
    }

    /// True for the single-page encoding.
    pub const fn is_singleton(self) -> bool {
        self.size() == 0
    }
}

/// R8 of TDH.SYS.CONFIG (`sys_config_options`): the global private KeyID
/// in bits 15:0; bit 16 turns on Dynamic PAMT (Intel TDX module 1.5.16+,
/// `include/tdx_api_defs.h`; a module without it, such as 1.5.01, refuses
/// the bit as reserved with `TDX_OPERAND_INVALID|R8`). Bits 63:17
/// reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct SysConfigKeyId {
    /// The global private KeyID.
    pub hkid: u16,
    /// Dynamic PAMT (module 1.5.16+; TDX_FEATURES0 bit 36). The module
    /// also refuses it (`TDX_OPERAND_INVALID|R8`) when the KeyID start bit
    /// (MAX_PA minus the MK-TME KeyID bits) is above 48
    /// (`tdh_sys_config.c`).
    pub dynamic_pamt: bool,
    #[bits(47)]
    __reserved: u64,
}

/// Bit 62 of an output HPA: the Dynamic PAMT removal hint
/// (`PAMT_REMOVAL_HINT`, `src/common/memory_handlers/pamt_manager.h`,
/// Intel TDX module 1.5.16+). The module sets it when the page it took back
/// was the last 4K module page of its 2 MiB range (the range's page count
/// went from 1 to 0), so the range's PAMT page pair could now be removed
/// with TDH.PHYMEM.PAMT.REMOVE. Returned ORed into RCX by
/// TDH.MEM.PAGE.REMOVE, TDH.MEM.SEPT.REMOVE and TDH.MEM.PAGE.PROMOTE (the
/// freed S-EPT page), and as R9 = 0 or this bit by
/// TDH.PHYMEM.PAGE.RECLAIM. Advisory: a host keeps its own count per range;
/// any output read as an address must have this bit masked off.
pub const PAMT_REMOVAL_HINT: u64 = 1 << 62;

/// RCX of TDH.SYS.SHUTDOWN: the handoff version in bits 15:0, and bit 16
/// AVOID_COMPAT_SENSITIVE (only if TDX_FEATURES0 bit 47 is set).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct ShutdownHandoff {
    /// Handoff version (metadata MODULE_HV).
    pub handoff_version: u16,
    /// Refuse the shutdown with TDX_UPDATE_COMPAT_SENSITIVE instead of
    /// breaking a compatibility-sensitive operation.
    pub avoid_compat_sensitive: bool,
    #[bits(47)]
    __reserved: u64,
}

/// A physical address with a KeyID in the bits above the physical address
/// width (RCX of TDH.PHYMEM.PAGE.WBINVD): `PA | hkid << keyid_shift`.
///
/// Not a bitfield: where the KeyID starts depends on the platform. Linux
/// uses `boot_cpu_data.x86_phys_bits`, which it has already reduced by the
/// KeyID bits; the module strips the KeyID with its own mask before it
/// checks the page.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyedPa(u64);

impl KeyedPa {
    /// `pa | hkid << keyid_shift`. `pa` must be 4 KiB aligned and below
    /// `1 << keyid_shift`, and the KeyID must fit below bit 52.
    #[inline]
    pub const fn try_new(pa: Hpa, hkid: u16, keyid_shift: u32) -> Result<Self, RegError> {
        if keyid_shift >= MAX_PA_BITS || keyid_shift < PAGE_SHIFT {
            return Err(RegError::KeyId {
                hkid,
                shift: keyid_shift,
            });
        }
        let pa = match pa.check_aligned(1 << PAGE_SHIFT) {
            Ok(p) => p.as_u64(),
            Err(e) => return Err(RegError::Addr(e)),
        };
        if pa >> keyid_shift != 0 {
            return Err(RegError::Addr(AddrError::TooWide {
                kind: "HPA",
                value: pa,
                bits: keyid_shift,
            }));
        }
        let key = (hkid as u64) << keyid_shift;
        if key >> MAX_PA_BITS != 0 {
            return Err(RegError::KeyId {
                hkid,
                shift: keyid_shift,
            });
        }
        Ok(Self(pa | key))
    }

    /// The raw register value.
    pub const fn into_bits(self) -> u64 {
        self.0
    }

    /// Splits the value at `keyid_shift` into (PA, KeyID).
    pub const fn split(self, keyid_shift: u32) -> (Hpa, u64) {
        let mask = (1u64 << keyid_shift) - 1;
        (Hpa::new_truncate(self.0 & mask), self.0 >> keyid_shift)
    }
}

impl fmt::Debug for KeyedPa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyedPa({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::page::{Size1G, Size2M, Size4K};
    use proptest::prelude::*;
    use std::format;

    #[test]
    fn page_info_encoding() {
        // A 2 MiB GPA at level 1: gpa | 1.
        let p = PageInfo::for_page::<Size2M>(Gpa::new(0x8020_0000)).unwrap();
        assert_eq!(p.into_bits(), 0x8020_0001);
        assert_eq!(p.gpa(), Gpa::new(0x8020_0000));
        assert_eq!(p.tdx_level(), Some(TdxLevel::L2M));
        assert_eq!(
            PageInfo::for_page::<Size4K>(Gpa::new(0x1000))
                .unwrap()
                .into_bits(),
            0x1000
        );
        assert_eq!(
            PageInfo::for_page::<Size1G>(Gpa::new(0x4000_0000))
                .unwrap()
                .into_bits(),
            0x4000_0002
        );
        // Misaligned for the level.
        assert!(PageInfo::for_page::<Size2M>(Gpa::new(0x1000)).is_err());
        // Non-leaf levels.
        let p = PageInfo::try_new(Gpa::new(0), TdxLevel::L256T).unwrap();
        assert_eq!(p.into_bits(), 4);
        assert_eq!(format!("{p:?}"), "PageInfo(gpa=0x0, level=4)");
        // Reserved bits survive a round trip and show in Debug.
        let raw = PageInfo::from_bits(0x1008);
        assert!(!raw.reserved_bits_clear());
        assert_eq!(raw.into_bits(), 0x1008);
    }

    #[test]
    fn sept_level_state() {
        // Level 1, state PENDING_BLOCKED.
        let ls = SeptLevelState::from_bits(0x0301);
        assert_eq!(ls.level(), 1);
        assert_eq!(ls.state(), SeptState::PENDING_BLOCKED);
        assert_eq!(ls.vm(), 0);
        let d = SeptDetails::from_regs(1 << 63, 0x8400 | 2);
        assert_eq!(d.level_state.state(), SeptState::NL_MAPPED);
        assert_eq!(format!("{:?}", SeptState(0x42)), "SeptState(0x42)");
    }

    #[test]
    fn hpa_list_info_packing() {
        let l = HpaListInfo::try_new(Pfn::new(0x12345), 512).unwrap();
        assert_eq!(l.into_bits(), (511u64 << 55) | 0x1234_5000);
        assert_eq!(l.count(), 512);
        assert_eq!(l.remaining(), 512);
        let resumed = l.with_first_entry(100);
        assert_eq!(
            resumed.into_bits(),
            (511u64 << 55) | 0x1234_5000 | (100 << 3)
        );
        assert_eq!(resumed.remaining(), 412);
        assert_eq!(
            HpaListInfo::try_new(Pfn::new(1), 0),
            Err(RegError::Count {
                what: "HPA list entries",
                value: 0,
                max: 512
            })
        );
        assert!(HpaListInfo::try_new(Pfn::new(1), 513).is_err());
        assert_eq!(
            HpaListInfo::try_new(Pfn::new(1), 1).unwrap().into_bits(),
            0x1000
        );
    }

    #[test]
    fn hpa_array_t_packing() {
        let root = Pfn::new(0x100);
        let first = Pfn::new(0x200);
        // Singleton: the data page itself, SIZE 0.
        let s = HpaArrayT::encode(root, first, 1).unwrap();
        assert_eq!(s.into_bits(), 0x20_0000);
        assert!(s.is_singleton());
        // Three pages: the root page, SIZE 2.
        let a = HpaArrayT::encode(root, first, 3).unwrap();
        assert_eq!(a.into_bits(), (2u64 << 55) | 0x10_0000);
        assert_eq!(a.count(), 3);
        assert!(HpaArrayT::encode(root, first, 513).is_err());
    }

    #[test]
    fn keyed_pa() {
        // 46-bit physical addresses, KeyID 5.
        let k = KeyedPa::try_new(Hpa::new(0x1234_5000), 5, 46).unwrap();
        assert_eq!(k.into_bits(), (5u64 << 46) | 0x1234_5000);
        assert_eq!(k.split(46), (Hpa::new(0x1234_5000), 5));
        // KeyID too big for 52 bits.
        assert!(KeyedPa::try_new(Hpa::new(0x1000), 64, 46).is_err());
        // Address reaches into the KeyID bits.
        assert!(KeyedPa::try_new(Hpa::new(1 << 46), 1, 46).is_err());
        assert!(KeyedPa::try_new(Hpa::new(0x1001), 1, 46).is_err());
    }

    #[test]
    fn sept_add_rdx_and_sys_config_r8() {
        let r = TdrAndFlags::with_tdr(Pfn::new(0x55), true);
        assert_eq!(r.into_bits(), 0x55001);
        let k = SysConfigKeyId::new().with_hkid(32).with_dynamic_pamt(true);
        assert_eq!(k.into_bits(), (1 << 16) | 32);
        let h = ShutdownHandoff::new()
            .with_handoff_version(3)
            .with_avoid_compat_sensitive(true);
        assert_eq!(h.into_bits(), (1 << 16) | 3);
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn page_info_round_trips(raw: u64) {
            prop_assert_eq!(PageInfo::from_bits(raw).into_bits(), raw);
        }

        #[test]
        fn page_info_typed(gfn in 0u64..(1 << 40), level in 0u8..=2) {
            let level = TdxLevel::from_u8(level).unwrap();
            let gpa = Gpa::new(gfn << 12).align_down(level.bytes());
            let p = PageInfo::try_new(gpa, level).unwrap();
            prop_assert_eq!(p.into_bits(), gpa.as_u64() | level.as_u8() as u64);
            prop_assert!(p.reserved_bits_clear());
            prop_assert_eq!(p.gpa(), gpa);
        }

        #[test]
        fn hpa_list_info_round_trips(raw: u64) {
            let l = HpaListInfo::from_bits(raw);
            prop_assert_eq!(l.into_bits(), raw);
            let rebuilt = HpaListInfo::new()
                .with_first_entry(l.first_entry())
                .with_list_pfn(l.list_pfn())
                .with_last_entry(l.last_entry());
            prop_assert_eq!(rebuilt.into_bits(), raw & !(0b111 | 0b111 << 52));
        }

        #[test]
        fn hpa_list_info_typed(pfn in 0u64..(1 << 40), count in 1usize..=512, first in 0u16..512) {
            let l = HpaListInfo::try_new(Pfn::new(pfn), count).unwrap().with_first_entry(first);
            prop_assert_eq!(l.list_pfn(), pfn);
            prop_assert_eq!(l.count(), count);
            prop_assert_eq!(l.first_entry(), first);
        }

        #[test]
        fn hpa_array_t_round_trips(raw: u64, root in 0u64..(1 << 40), first in 0u64..(1 << 40), count in 1usize..=512) {
            prop_assert_eq!(HpaArrayT::from_bits(raw).into_bits(), raw);
            let a = HpaArrayT::encode(Pfn::new(root), Pfn::new(first), count).unwrap();
            prop_assert_eq!(a.count(), count);
            prop_assert_eq!(a.pfn(), if count == 1 { first } else { root });
        }

        #[test]
        fn sept_level_state_round_trips(raw: u64) {
            prop_assert_eq!(SeptLevelState::from_bits(raw).into_bits(), raw);
        }

        #[test]
        fn small_registers_round_trip(raw: u64) {
            prop_assert_eq!(TdrAndFlags::from_bits(raw).into_bits(), raw);
            prop_assert_eq!(SysConfigKeyId::from_bits(raw).into_bits(), raw);
            prop_assert_eq!(ShutdownHandoff::from_bits(raw).into_bits(), raw);
            prop_assert_eq!(HpaLevel::from_bits(raw).into_bits(), raw);
        }

        #[test]
        fn keyed_pa_splits_back(pfn in 0u64..(1 << 34), hkid in 0u16..64, shift in 46u32..=46) {
            let pa = Hpa::new(pfn << 12);
            let k = KeyedPa::try_new(pa, hkid, shift).unwrap();
            prop_assert_eq!(k.split(shift), (pa, hkid as u64));
        }
    }
}
