//! In-memory structures of the TDX host ABI, byte for byte.
//!
//! This module owns the layout of every structure the host hands to the TDX
//! module by physical address, or reads back from it: [`TdmrInfo`] and the
//! [`TdmrPaArray`] of TDH.SYS.CONFIG, the CMR table ([`CmrInfo`],
//! [`CmrArray`]), [`TdParams`] for TDH.MNG.INIT, the HPA list pages of the
//! TDX Connect and Quote extensions ([`HpaListPage`]), the legacy
//! TDSYSINFO_STRUCT ([`TdSysInfoLegacy`]), and the 128-byte
//! [`MeasurementBlock`] the module hashes into MRTD.
//!
//! It leaves to the caller everything about *where* these bytes live: a
//! structure here is plain data that can be built on the stack, copied into a
//! physically contiguous buffer, or read back out of one. Allocation, physical
//! addresses of the buffers and cache maintenance belong to the crates above.
//!
//! # Layout rules
//!
//! * The TDX ABI is little-endian. Every multi-byte field is stored with
//!   zerocopy's [`little_endian`](zerocopy::little_endian) types, so the bytes
//!   are right on any host the simulator runs on; getters and setters take and
//!   return plain integers.
//! * Those types have alignment 1, so no structure here has implicit padding:
//!   every gap the ABI leaves is an explicit byte array, and each structure
//!   carries the alignment the module demands (`#[repr(C, align(N))]`).
//! * Sizes, alignments and every field offset are checked by `const`
//!   assertions next to each type, so a layout mistake fails the build.
//! * All wire structures derive zerocopy's [`FromBytes`] and [`IntoBytes`]: any byte
//!   pattern is a valid value (the module may write anything), and
//!   `as_bytes()` gives the exact bytes to place in memory. Setters never
//!   reject a value the ABI can express unless it is an index or a range the
//!   structure itself cannot hold ([`AbiError`]); semantic checks (ordering,
//!   alignment of TDMRs, reserved bits) are the module's job, and a simulator
//!   must be able to build the bad inputs it is meant to reject.
//!
//! Sources: Linux's definitions of these structures
//! (`arch/x86/virt/vmx/tdx/tdx.h`, `arch/x86/kvm/vmx/tdx_arch.h`), and
//! Intel's TDX module source, `intel/tdx-module` at tag `TDX_1.5.01`:
//! `include/tdx_api_defs.h` for layouts, the leaf handlers in
//! `src/vmm_dispatcher/api_calls/` for the rules they check (facts only:
//! offsets, field names, check order).

use core::fmt;
use core::mem::{align_of, offset_of, size_of};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Prints a `u64` as `0x…` inside `Debug` output.
struct Hex(u64);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Generates a getter returning the plain integer and a setter taking one,
/// for fields stored as zerocopy little-endian integers.
macro_rules! le_accessors {
    ($( $(#[$doc:meta])* $field:ident, $setter:ident: $ty:ty; )*) => {
        $(
            $(#[$doc])*
            #[inline]
            pub const fn $field(&self) -> $ty {
                self.$field.get()
            }

            #[doc = concat!("Sets the value returned by [`Self::", stringify!($field), "`].")]
            #[inline]
            pub fn $setter(&mut self, value: $ty) {
                self.$field.set(value);
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An index or value that does not fit the ABI structure it was meant for.
///
/// These are host-side construction errors; nothing here comes from the TDX
/// module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbiError {
    /// A table slot index past the end of the table.
    #[error("index {index} is out of range for a table of {capacity} entries")]
    IndexOutOfRange {
        /// The index that was asked for.
        index: usize,
        /// The number of slots the table has.
        capacity: usize,
    },
    /// A push onto a table that has no free slot left.
    #[error("the table is full ({capacity} entries)")]
    Full {
        /// The number of slots the table has.
        capacity: usize,
    },
    /// An address that does not have the alignment the table requires.
    #[error("address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The address that was given.
        addr: u64,
        /// The alignment required, in bytes.
        align: u64,
    },
    /// Address 0 given to a table in which a zero entry marks the end.
    #[error("address 0 cannot be stored: a zero entry marks the end of the table")]
    ZeroAddress,
    /// A TSC frequency outside the range TDH.MNG.INIT accepts (100 MHz ..= 10 GHz).
    #[error("TSC frequency {hz} Hz is outside 100 MHz ..= 10 GHz (4 ..= 400 units of 25 MHz)")]
    TscFrequencyOutOfRange {
        /// The frequency that was given, in Hz.
        hz: u64,
    },
    /// An EPT page-walk length other than 4 or 5 levels.
    #[error("EPT page-walk length {levels} is not supported (only 4 or 5 levels)")]
    UnsupportedPageWalkLength {
        /// The number of levels that was given.
        levels: u8,
    },
}

/// Checks `index < capacity`.
const fn check_index(index: usize, capacity: usize) -> Result<(), AbiError> {
    if index < capacity {
        Ok(())
    } else {
        Err(AbiError::IndexOutOfRange { index, capacity })
    }
}

// ---------------------------------------------------------------------------
// TDMR_INFO (Linux `struct tdmr_info` in arch/x86/virt/vmx/tdx/tdx.h; module
// `tdmr_info_entry_t` in include/tdx_api_defs.h, checked by tdh_sys_config.c)
// ---------------------------------------------------------------------------

/// Number of reserved-area slots in a TDMR_INFO (module 1.5 value of the
/// `MAX_RESERVED_PER_TDMR` metadata field).
pub const MAX_RESERVED_AREAS: usize = 16;

/// Bytes of TDMR_INFO the module reads: eight `u64` fields (64 bytes) and
/// [`MAX_RESERVED_AREAS`] 16-byte reserved areas.
pub const TDMR_INFO_FIELDS_SIZE: usize = 320;

/// Alignment the module requires of every TDMR_INFO (its physical address must
/// be a multiple of this).
pub const TDMR_INFO_ALIGN: usize = 512;

/// Largest number of TDMRs the module accepts in one TDH.SYS.CONFIG (RDX).
pub const MAX_TDMRS: usize = 64;

/// Distance in bytes between consecutive TDMR_INFO entries in a contiguous
/// TDMR list, for a module reporting `max_reserved` reserved areas per TDMR:
/// `64 + 16 * max_reserved`, rounded up to [`TDMR_INFO_ALIGN`].
///
/// This is how Linux sizes each entry of its TDMR list; with the module 1.5
/// value of 16 it is 512, the size of [`TdmrInfo`].
///
/// # Panics
///
/// If the result overflows `usize`, which needs a `max_reserved` far beyond the
/// 16-bit metadata field that reports it.
#[inline]
pub const fn tdmr_info_stride(max_reserved: usize) -> usize {
    (64 + max_reserved * size_of::<ReservedArea>()).next_multiple_of(TDMR_INFO_ALIGN)
}

/// One reserved area of a TDMR: a range, given as an offset from the TDMR base
/// and a size, that the module must not treat as TDX memory.
///
/// A size of 0 makes the slot a null entry; the module ignores the offset of a
/// null entry, and requires every slot after the first null one to be null too.
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReservedArea {
    offset: U64,
    size: U64,
}

const _: () = assert!(size_of::<ReservedArea>() == 16);
const _: () = assert!(offset_of!(ReservedArea, offset) == 0);
const _: () = assert!(offset_of!(ReservedArea, size) == 8);

impl ReservedArea {
    /// The null entry (offset 0, size 0).
    pub const NULL: Self = Self::new(0, 0);

    /// A reserved area of `size` bytes starting `offset` bytes past the TDMR
    /// base. The module wants both 4 KiB aligned; this is not checked here.
    #[inline]
    pub const fn new(offset: u64, size: u64) -> Self {
        Self {
            offset: U64::new(offset),
            size: U64::new(size),
        }
    }

    /// Offset of the area from the TDMR base, in bytes.
    #[inline]
    pub const fn offset(&self) -> u64 {
        self.offset.get()
    }

    /// Size of the area in bytes; 0 means a null entry.
    #[inline]
    pub const fn size(&self) -> u64 {
        self.size.get()
    }

    /// Whether this slot is a null entry (size 0).
    #[inline]
    pub const fn is_null(&self) -> bool {
        self.size() == 0
    }
}

impl fmt::Debug for ReservedArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReservedArea")
            .field("offset", &Hex(self.offset()))
            .field("size", &Hex(self.size()))
            .finish()
    }
}

/// TDMR_INFO: one Trust Domain Memory Region and the PAMT areas that track
/// it, as passed (by physical address) to TDH.SYS.CONFIG.
///
/// Layout (little-endian, offsets in bytes):
///
/// | offset | field |
/// |---|---|
/// | 0 | base (1 GiB aligned) |
/// | 8 | size (multiple of 1 GiB) |
/// | 16, 24 | 1G PAMT base, size |
/// | 32, 40 | 2M PAMT base, size |
/// | 48, 56 | 4K PAMT base, size |
/// | 64 | 16 × [`ReservedArea`] (16 bytes each) |
/// | 320 | 192 bytes of padding up to the 512-byte stride |
///
/// The module reads the first [`TDMR_INFO_FIELDS_SIZE`] (320) bytes. The type
/// is 512-aligned and 512 bytes long, so an array of `TdmrInfo` is exactly the
/// contiguous TDMR list Linux builds (stride [`tdmr_info_stride`]`(16)`), and
/// every element has the 512-byte alignment the module checks.
///
/// Note the field order: the PAMT fields go 1G, 2M, 4K in the structure, while
/// Linux carves the PAMT memory for one TDMR in the opposite order (4K area
/// first, then 2M, then 1G) out of one allocation. The two orders are
/// independent; only the structure order matters to the module.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(512))]
pub struct TdmrInfo {
    base: U64,
    size: U64,
    pamt_1g_base: U64,
    pamt_1g_size: U64,
    pamt_2m_base: U64,
    pamt_2m_size: U64,
    pamt_4k_base: U64,
    pamt_4k_size: U64,
    reserved_areas: [ReservedArea; MAX_RESERVED_AREAS],
    /// Not read by the module; zero when built here.
    padding: [u8; TDMR_INFO_ALIGN - TDMR_INFO_FIELDS_SIZE],
}

const _: () = assert!(size_of::<TdmrInfo>() == TDMR_INFO_ALIGN);
const _: () = assert!(align_of::<TdmrInfo>() == TDMR_INFO_ALIGN);
const _: () = assert!(size_of::<TdmrInfo>() == tdmr_info_stride(MAX_RESERVED_AREAS));
const _: () = assert!(offset_of!(TdmrInfo, base) == 0);
const _: () = assert!(offset_of!(TdmrInfo, size) == 8);
const _: () = assert!(offset_of!(TdmrInfo, pamt_1g_base) == 16);
const _: () = assert!(offset_of!(TdmrInfo, pamt_1g_size) == 24);
const _: () = assert!(offset_of!(TdmrInfo, pamt_2m_base) == 32);
const _: () = assert!(offset_of!(TdmrInfo, pamt_2m_size) == 40);
const _: () = assert!(offset_of!(TdmrInfo, pamt_4k_base) == 48);
const _: () = assert!(offset_of!(TdmrInfo, pamt_4k_size) == 56);
const _: () = assert!(offset_of!(TdmrInfo, reserved_areas) == 64);
const _: () = assert!(offset_of!(TdmrInfo, padding) == TDMR_INFO_FIELDS_SIZE);

impl TdmrInfo {
    /// An all-zero TDMR_INFO.
    #[inline]
    pub fn new() -> Self {
        Self::new_zeroed()
    }

    /// A TDMR_INFO covering `[base, base + size)`, with no PAMT and no
    /// reserved areas yet.
    #[inline]
    pub fn with_range(base: u64, size: u64) -> Self {
        let mut tdmr = Self::new();
        tdmr.set_base(base);
        tdmr.set_size(size);
        tdmr
    }

    le_accessors! {
        /// Physical base address of the TDMR (the module requires 1 GiB alignment).
        base, set_base: u64;
        /// Size of the TDMR in bytes (the module requires a non-zero multiple of 1 GiB).
        size, set_size: u64;
        /// Physical base of the PAMT area for 1 GiB pages.
        pamt_1g_base, set_pamt_1g_base: u64;
        /// Size in bytes of the PAMT area for 1 GiB pages.
        pamt_1g_size, set_pamt_1g_size: u64;
        /// Physical base of the PAMT area for 2 MiB pages.
        pamt_2m_base, set_pamt_2m_base: u64;
        /// Size in bytes of the PAMT area for 2 MiB pages.
        pamt_2m_size, set_pamt_2m_size: u64;
        /// Physical base of the PAMT area for 4 KiB pages.
        pamt_4k_base, set_pamt_4k_base: u64;
        /// Size in bytes of the PAMT area for 4 KiB pages.
        pamt_4k_size, set_pamt_4k_size: u64;
    }

    /// The 1G PAMT area as `(base, size)`.
    #[inline]
    pub const fn pamt_1g(&self) -> (u64, u64) {
        (self.pamt_1g_base(), self.pamt_1g_size())
    }

    /// The 2M PAMT area as `(base, size)`.
    #[inline]
    pub const fn pamt_2m(&self) -> (u64, u64) {
        (self.pamt_2m_base(), self.pamt_2m_size())
    }

    /// The 4K PAMT area as `(base, size)`.
    #[inline]
    pub const fn pamt_4k(&self) -> (u64, u64) {
        (self.pamt_4k_base(), self.pamt_4k_size())
    }

    /// Sets the 1G PAMT area.
    #[inline]
    pub fn set_pamt_1g(&mut self, base: u64, size: u64) {
        self.set_pamt_1g_base(base);
        self.set_pamt_1g_size(size);
    }

    /// Sets the 2M PAMT area.
    #[inline]
    pub fn set_pamt_2m(&mut self, base: u64, size: u64) {
        self.set_pamt_2m_base(base);
        self.set_pamt_2m_size(size);
    }

    /// Sets the 4K PAMT area.
    #[inline]
    pub fn set_pamt_4k(&mut self, base: u64, size: u64) {
        self.set_pamt_4k_base(base);
        self.set_pamt_4k_size(size);
    }

    /// All [`MAX_RESERVED_AREAS`] reserved-area slots, null entries included,
    /// in slot order (what the module walks).
    #[inline]
    pub const fn reserved_area_slots(&self) -> &[ReservedArea; MAX_RESERVED_AREAS] {
        &self.reserved_areas
    }

    /// Slot `index`, or `None` past the last slot.
    #[inline]
    pub fn reserved_area(&self, index: usize) -> Option<ReservedArea> {
        self.reserved_areas.get(index).copied()
    }

    /// The non-null reserved areas, in slot order.
    ///
    /// The module stops at the first null slot and rejects a non-null slot
    /// after it; this iterator simply skips every null slot, so on a
    /// well-formed TDMR_INFO the two views agree.
    pub fn reserved_areas(&self) -> impl Iterator<Item = ReservedArea> + '_ {
        self.reserved_areas
            .iter()
            .copied()
            .filter(|area| !area.is_null())
    }

    /// Writes slot `index` (`size` 0 makes it a null entry).
    ///
    /// # Errors
    ///
    /// [`AbiError::IndexOutOfRange`] if `index >= MAX_RESERVED_AREAS`.
    pub fn set_reserved_area(
        &mut self,
        index: usize,
        offset: u64,
        size: u64,
    ) -> Result<(), AbiError> {
        check_index(index, MAX_RESERVED_AREAS)?;
        self.reserved_areas[index] = ReservedArea::new(offset, size);
        Ok(())
    }

    /// Makes every reserved-area slot null.
    #[inline]
    pub fn clear_reserved_areas(&mut self) {
        self.reserved_areas = [ReservedArea::NULL; MAX_RESERVED_AREAS];
    }
}

impl Default for TdmrInfo {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TdmrInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdmrInfo")
            .field("base", &Hex(self.base()))
            .field("size", &Hex(self.size()))
            .field(
                "pamt_1g",
                &(Hex(self.pamt_1g_base()), Hex(self.pamt_1g_size())),
            )
            .field(
                "pamt_2m",
                &(Hex(self.pamt_2m_base()), Hex(self.pamt_2m_size())),
            )
            .field(
                "pamt_4k",
                &(Hex(self.pamt_4k_base()), Hex(self.pamt_4k_size())),
            )
            .field("reserved_areas", &ReservedList(self))
            .finish()
    }
}

/// `Debug` helper listing only the non-null reserved areas.
struct ReservedList<'a>(&'a TdmrInfo);

impl fmt::Debug for ReservedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.reserved_areas()).finish()
    }
}

// ---------------------------------------------------------------------------
// TDMR_INFO physical-address array (Linux `config_tdx_module` in
// arch/x86/virt/vmx/tdx/tdx.c)
// ---------------------------------------------------------------------------

/// Alignment the module requires of the TDMR address array (RCX of
/// TDH.SYS.CONFIG).
pub const TDMR_INFO_PA_ARRAY_ALIGN: usize = 512;

/// The array of TDMR_INFO physical addresses passed to TDH.SYS.CONFIG:
/// RCX = its physical address, RDX = the number of entries.
///
/// Room for [`MAX_TDMRS`] (64) `u64` entries: 512 bytes, 512-aligned. The
/// module reads exactly RDX entries; each must itself be 512-aligned.
///
/// # Invariants
///
/// The length is the number of leading non-zero entries: [`push`](Self::push)
/// refuses address 0, so a table built here is a run of addresses followed by
/// zeros. A table read from arbitrary bytes is cut at its first zero entry.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(512))]
pub struct TdmrPaArray {
    entries: [U64; MAX_TDMRS],
}

const _: () = assert!(size_of::<TdmrPaArray>() == 512);
const _: () = assert!(align_of::<TdmrPaArray>() == TDMR_INFO_PA_ARRAY_ALIGN);
const _: () = assert!(offset_of!(TdmrPaArray, entries) == 0);

impl TdmrPaArray {
    /// Number of entries the array can hold ([`MAX_TDMRS`]).
    pub const CAPACITY: usize = MAX_TDMRS;

    /// An empty (all-zero) array.
    #[inline]
    pub const fn new() -> Self {
        Self {
            entries: [U64::ZERO; MAX_TDMRS],
        }
    }

    /// Appends the physical address of one TDMR_INFO.
    ///
    /// # Errors
    ///
    /// * [`AbiError::ZeroAddress`] if `pa` is 0 (zero marks the end);
    /// * [`AbiError::Misaligned`] if `pa` is not 512-byte aligned;
    /// * [`AbiError::Full`] if the array already holds 64 entries.
    pub fn push(&mut self, pa: u64) -> Result<(), AbiError> {
        if pa == 0 {
            return Err(AbiError::ZeroAddress);
        }
        if !pa.is_multiple_of(TDMR_INFO_ALIGN as u64) {
            return Err(AbiError::Misaligned {
                addr: pa,
                align: TDMR_INFO_ALIGN as u64,
            });
        }
        let len = self.len();
        let slot = self.entries.get_mut(len).ok_or(AbiError::Full {
            capacity: Self::CAPACITY,
        })?;
        slot.set(pa);
        Ok(())
    }

    /// Number of entries (the value to pass in RDX).
    pub fn len(&self) -> usize {
        self.entries
            .iter()
            .position(|entry| entry.get() == 0)
            .unwrap_or(MAX_TDMRS)
    }

    /// Whether the array holds no entry.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.entries[0].get() == 0
    }

    /// The entries in use, as the little-endian words the module reads.
    #[inline]
    pub fn as_slice(&self) -> &[U64] {
        &self.entries[..self.len()]
    }

    /// Entry `index`, or `None` past the entries in use.
    #[inline]
    pub fn get(&self, index: usize) -> Option<u64> {
        self.as_slice().get(index).map(|entry| entry.get())
    }

    /// The entries in use, as plain addresses.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.as_slice().iter().map(|entry| entry.get())
    }

    /// Removes every entry.
    #[inline]
    pub fn clear(&mut self) {
        self.entries = [U64::ZERO; MAX_TDMRS];
    }

    /// Bytes Linux allocates for an address array of `n` entries:
    /// `n * 8` rounded up to a power of two, at least 512 (its allocator
    /// aligns power-of-two sizes naturally, which gives the 512-byte
    /// alignment). Informative only: for every `n <= 64` this is 512, the
    /// size of this type.
    ///
    /// # Panics
    ///
    /// If `n * 8` rounded up to a power of two overflows `usize`.
    #[inline]
    pub const fn byte_len_linux(n: usize) -> usize {
        let bytes = (n * size_of::<u64>()).next_power_of_two();
        if bytes < TDMR_INFO_PA_ARRAY_ALIGN {
            TDMR_INFO_PA_ARRAY_ALIGN
        } else {
            bytes
        }
    }
}

impl Default for TdmrPaArray {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TdmrPaArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(Hex)).finish()
    }
}

// ---------------------------------------------------------------------------
// CMRs (module `cmr_info_entry_t`, `MAX_CMR` in include/tdx_api_defs.h)
// ---------------------------------------------------------------------------

/// Number of CMR slots the module keeps (`MAX_CMR`).
pub const MAX_CMRS: usize = 32;

/// Alignment of the legacy CMR array that TDH.SYS.INFO filled.
pub const CMR_ARRAY_ALIGN: usize = 512;

/// One Convertible Memory Range: memory the BIOS set up, and MCHECK verified,
/// as usable for TDX. Both fields are 4 KiB aligned; size 0 is an empty slot.
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CmrInfo {
    base: U64,
    size: U64,
}

const _: () = assert!(size_of::<CmrInfo>() == 16);
const _: () = assert!(offset_of!(CmrInfo, base) == 0);
const _: () = assert!(offset_of!(CmrInfo, size) == 8);

impl CmrInfo {
    /// The empty slot.
    pub const EMPTY: Self = Self::new(0, 0);

    /// A CMR of `size` bytes at physical address `base`.
    #[inline]
    pub const fn new(base: u64, size: u64) -> Self {
        Self {
            base: U64::new(base),
            size: U64::new(size),
        }
    }

    /// Physical base address.
    #[inline]
    pub const fn base(&self) -> u64 {
        self.base.get()
    }

    /// Size in bytes; 0 means an empty slot.
    #[inline]
    pub const fn size(&self) -> u64 {
        self.size.get()
    }

    /// Whether the slot is empty (size 0).
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.size() == 0
    }
}

impl fmt::Debug for CmrInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CmrInfo")
            .field("base", &Hex(self.base()))
            .field("size", &Hex(self.size()))
            .finish()
    }
}

/// The legacy CMR table: [`MAX_CMRS`] × [`CmrInfo`], 512 bytes, 512-aligned,
/// as the pre-merge TDH.SYS.INFO filled it (beside [`TdSysInfoLegacy`]).
///
/// Current hosts read CMRs, if at all, through global metadata
/// (NUM_CMRS / CMR_BASE / CMR_SIZE); this type also serves a simulator as its
/// 32-slot CMR table. Empty slots may appear; the module skips them.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(512))]
pub struct CmrArray {
    entries: [CmrInfo; MAX_CMRS],
}

const _: () = assert!(size_of::<CmrArray>() == 512);
const _: () = assert!(align_of::<CmrArray>() == CMR_ARRAY_ALIGN);

impl CmrArray {
    /// A table of empty slots.
    #[inline]
    pub const fn new() -> Self {
        Self {
            entries: [CmrInfo::EMPTY; MAX_CMRS],
        }
    }

    /// All slots, empty ones included.
    #[inline]
    pub const fn slots(&self) -> &[CmrInfo; MAX_CMRS] {
        &self.entries
    }

    /// Slot `index`, or `None` past the last slot.
    #[inline]
    pub fn get(&self, index: usize) -> Option<CmrInfo> {
        self.entries.get(index).copied()
    }

    /// Writes slot `index`.
    ///
    /// # Errors
    ///
    /// [`AbiError::IndexOutOfRange`] if `index >= MAX_CMRS`.
    pub fn set(&mut self, index: usize, cmr: CmrInfo) -> Result<(), AbiError> {
        check_index(index, MAX_CMRS)?;
        self.entries[index] = cmr;
        Ok(())
    }

    /// The non-empty slots, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = CmrInfo> + '_ {
        self.entries.iter().copied().filter(|cmr| !cmr.is_empty())
    }
}

impl Default for CmrArray {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CmrArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

// ---------------------------------------------------------------------------
// CPUID configuration (Linux `tdx_global_metadata.c`, KVM `tdx_arch.h`)
// ---------------------------------------------------------------------------

/// Subleaf value meaning "this leaf has no subleaves" (all ones), both in the
/// CPUID_CONFIG_LEAVES metadata words and in the legacy [`CpuidConfig`].
pub const CPUID_SUBLEAF_NONE: u32 = u32::MAX;

/// A CPUID leaf and optional subleaf, as the module names a configurable
/// CPUID entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuidLeaf {
    /// The leaf (input EAX).
    pub leaf: u32,
    /// The subleaf (input ECX), or `None` for a leaf without subleaves.
    pub subleaf: Option<u32>,
}

impl CpuidLeaf {
    /// Decodes a CPUID_CONFIG_LEAVES metadata word: leaf in bits 31:0,
    /// subleaf in bits 63:32, subleaf [`CPUID_SUBLEAF_NONE`] meaning none.
    #[inline]
    pub const fn from_metadata(raw: u64) -> Self {
        Self::from_parts(raw as u32, (raw >> 32) as u32)
    }

    /// Encodes as a CPUID_CONFIG_LEAVES metadata word.
    ///
    /// `Some(CPUID_SUBLEAF_NONE)` encodes the same as `None`.
    #[inline]
    pub const fn to_metadata(self) -> u64 {
        let subleaf = match self.subleaf {
            Some(subleaf) => subleaf,
            None => CPUID_SUBLEAF_NONE,
        };
        ((subleaf as u64) << 32) | self.leaf as u64
    }

    /// Builds from a raw `(leaf, subleaf)` pair, subleaf
    /// [`CPUID_SUBLEAF_NONE`] meaning none.
    #[inline]
    pub const fn from_parts(leaf: u32, subleaf: u32) -> Self {
        Self {
            leaf,
            subleaf: if subleaf == CPUID_SUBLEAF_NONE {
                None
            } else {
                Some(subleaf)
            },
        }
    }
}

/// The four CPUID output registers of one configurable leaf: one entry of
/// TD_PARAMS' `cpuid_values` (16 bytes: EAX, EBX, ECX, EDX).
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CpuidValues {
    eax: U32,
    ebx: U32,
    ecx: U32,
    edx: U32,
}

const _: () = assert!(size_of::<CpuidValues>() == 16);
const _: () = assert!(offset_of!(CpuidValues, eax) == 0);
const _: () = assert!(offset_of!(CpuidValues, ebx) == 4);
const _: () = assert!(offset_of!(CpuidValues, ecx) == 8);
const _: () = assert!(offset_of!(CpuidValues, edx) == 12);

impl CpuidValues {
    /// All-zero values.
    pub const ZERO: Self = Self::new(0, 0, 0, 0);

    /// Values from the four registers.
    #[inline]
    pub const fn new(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        Self {
            eax: U32::new(eax),
            ebx: U32::new(ebx),
            ecx: U32::new(ecx),
            edx: U32::new(edx),
        }
    }

    /// From the two CPUID_CONFIG_VALUES metadata words of one leaf:
    /// `words[0]` = EBX:EAX (EAX in the low half), `words[1]` = EDX:ECX.
    #[inline]
    pub const fn from_metadata(words: [u64; 2]) -> Self {
        Self::new(
            words[0] as u32,
            (words[0] >> 32) as u32,
            words[1] as u32,
            (words[1] >> 32) as u32,
        )
    }

    /// As the two CPUID_CONFIG_VALUES metadata words (EBX:EAX, EDX:ECX).
    #[inline]
    pub const fn to_metadata(&self) -> [u64; 2] {
        [
            ((self.ebx() as u64) << 32) | self.eax() as u64,
            ((self.edx() as u64) << 32) | self.ecx() as u64,
        ]
    }

    le_accessors! {
        /// EAX.
        eax, set_eax: u32;
        /// EBX.
        ebx, set_ebx: u32;
        /// ECX.
        ecx, set_ecx: u32;
        /// EDX.
        edx, set_edx: u32;
    }
}

impl fmt::Debug for CpuidValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuidValues")
            .field("eax", &Hex(self.eax().into()))
            .field("ebx", &Hex(self.ebx().into()))
            .field("ecx", &Hex(self.ecx().into()))
            .field("edx", &Hex(self.edx().into()))
            .finish()
    }
}

impl CpuidValues {
    /// The four registers in the order TD_PARAMS stores them: EAX, EBX, ECX,
    /// EDX.
    #[inline]
    pub const fn registers(&self) -> [u32; 4] {
        [self.eax(), self.ebx(), self.ecx(), self.edx()]
    }

    /// Each register ANDed with the same register of `mask`.
    #[inline]
    pub const fn and(&self, mask: &Self) -> Self {
        Self::new(
            self.eax() & mask.eax(),
            self.ebx() & mask.ebx(),
            self.ecx() & mask.ecx(),
            self.edx() & mask.edx(),
        )
    }

    /// Each register ORed with the same register of `other`.
    #[inline]
    pub const fn or(&self, other: &Self) -> Self {
        Self::new(
            self.eax() | other.eax(),
            self.ebx() | other.ebx(),
            self.ecx() | other.ecx(),
            self.edx() | other.edx(),
        )
    }
}

/// What a TDX module lets TD_PARAMS configure in one CPUID leaf (the
/// module's `cpuid_configurable_t`): each bit the host may set to 1 is in
/// exactly one of two classes.
///
/// * **CONFIG_DIRECT**: the TD sees the configured value.
/// * **ALLOW_DIRECT**: configured 1, the TD sees the CPU's native value;
///   configured 0, the TD sees 0.
///
/// TDH.MNG.INIT refuses any configured 1 outside both with
/// `TDX_OPERAND_INVALID|CPUID_CONFIG` and RCX = [`Self::leaf_subleaf`]
/// (`read_and_set_cpuid_configurations`,
/// `src/vmm_dispatcher/api_calls/tdh_mng_init.c`). The module's metadata
/// (CPUID_CONFIG_VALUES) reports only the CONFIG_DIRECT bits
/// (`src/common/metadata_handlers/metadata_sys.c`), so a host cannot learn
/// the ALLOW_DIRECT bits from it: [`CPUID_CONFIG_1_5_01`] lists them for
/// module 1.5.01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidConfigRule {
    /// The leaf and subleaf this entry configures.
    pub leaf: CpuidLeaf,
    /// CONFIG_DIRECT bits.
    pub config_direct: CpuidValues,
    /// ALLOW_DIRECT bits.
    pub allow_direct: CpuidValues,
}

impl CpuidConfigRule {
    /// Every bit the host may set to 1 (CONFIG_DIRECT | ALLOW_DIRECT).
    #[inline]
    pub const fn allowed(&self) -> CpuidValues {
        self.config_direct.or(&self.allow_direct)
    }

    /// The first register of `values` (0 = EAX .. 3 = EDX, the order the
    /// module checks them in) with a 1 the module does not allow, and those
    /// bits; `None` if every set bit is allowed.
    pub const fn refused_bits(&self, values: &CpuidValues) -> Option<(usize, u32)> {
        let v = values.registers();
        let a = self.allowed().registers();
        let mut i = 0;
        while i < 4 {
            let bad = v[i] & !a[i];
            if bad != 0 {
                return Some((i, bad));
            }
            i += 1;
        }
        None
    }

    /// The leaf and subleaf as TDH.MNG.INIT reports them in RCX on a CPUID
    /// configuration error (`cpuid_config_leaf_subleaf_t`,
    /// `include/tdx_api_defs.h`): the leaf in bits 31:0, the subleaf in bits
    /// 63:32, `0xFFFF_FFFF` for a leaf without subleaves. The same encoding
    /// as a CPUID_CONFIG_LEAVES metadata word.
    #[inline]
    pub const fn leaf_subleaf(&self) -> u64 {
        self.leaf.to_metadata()
    }
}

/// `MAX_NUM_CPUID_CONFIG` of TDX module 1.5.01, which it also reports as
/// NUM_CPUID_CONFIG: TD_PARAMS carries 12 CPUID entries
/// (`include/auto_gen/cpuid_configurations_defines.h`).
pub const NUM_CPUID_CONFIG_1_5_01: usize = 12;

const fn rule(leaf: u32, subleaf: u32, config: [u32; 4], allow: [u32; 4]) -> CpuidConfigRule {
    CpuidConfigRule {
        leaf: CpuidLeaf::from_parts(leaf, subleaf),
        config_direct: CpuidValues::new(config[0], config[1], config[2], config[3]),
        allow_direct: CpuidValues::new(allow[0], allow[1], allow[2], allow[3]),
    }
}

/// The configurable CPUID leaves of TDX module 1.5.01, in TD_PARAMS entry
/// order (`cpuid_configurable`, `include/auto_gen/cpuid_configurations.c`).
///
/// | entry | leaf | subleaf | CONFIG_DIRECT EAX, EBX, ECX, EDX | ALLOW_DIRECT EAX, EBX, ECX, EDX |
/// |---|---|---|---|---|
/// | 0 | 0x1 | — | 0x0FFF3FFF, 0x00FF0000, 0, 0 | 0, 0, 0x31044D88, 0xB8440000 |
/// | 1-3 | 0x4 | 0-2 | 0xFFFFC3FF, 0xFFFFF000, 0xFFFFFFFF, 0xFFFFFFFB | — |
/// | 4 | 0x4 | 3 | 0xFFFFC3FF, 0xFFFFF000, 0xFFFFFFFF, 0x00000007 | — |
/// | 5 | 0x7 | 0 | — | 0, 0xDC2B9B18, 0x02417F65, 0x0005411C |
/// | 6 | 0x7 | 1 | — | 0x00001D30, 0, 0, 0 |
/// | 7 | 0xA | — | — (nothing configurable) | — |
/// | 8 | 0x1C | — | — | 0x000000FF, 0, 0, 0 |
/// | 9 | 0x80000008 | — | — | 0, 0x00000200, 0, 0 |
/// | 10 | 0x7 | 2 | — | 0, 0, 0, 0x00000028 |
/// | 11 | 0x23 | 0 | — | 0x0000000F, 0, 0, 0 |
///
/// Leaf 1 EAX is the TD's family/model/stepping: 0 means the CPU's own
/// (always accepted); another value must equal the CPU's own for a
/// non-migratable TD, or pass the module's list of older CPU models for a
/// migratable one (`src/common/helpers/cpuid_fms.c`). Leaf 7/0 EBX bits 4
/// (HLE) and 11 (RTM) must end up equal, and may be 1 only if the CPU has
/// IA32_TSX_CTRL. Both depend on the CPU: TDH.MNG.INIT checks them.
pub const CPUID_CONFIG_1_5_01: [CpuidConfigRule; NUM_CPUID_CONFIG_1_5_01] = {
    const NONE: u32 = CPUID_SUBLEAF_NONE;
    const CACHE: [u32; 4] = [0xFFFF_C3FF, 0xFFFF_F000, 0xFFFF_FFFF, 0xFFFF_FFFB];
    [
        rule(
            0x1,
            NONE,
            [0x0FFF_3FFF, 0x00FF_0000, 0, 0],
            [0, 0, 0x3104_4D88, 0xB844_0000],
        ),
        rule(0x4, 0, CACHE, [0; 4]),
        rule(0x4, 1, CACHE, [0; 4]),
        rule(0x4, 2, CACHE, [0; 4]),
        rule(
            0x4,
            3,
            [0xFFFF_C3FF, 0xFFFF_F000, 0xFFFF_FFFF, 0x0000_0007],
            [0; 4],
        ),
        rule(0x7, 0, [0; 4], [0, 0xDC2B_9B18, 0x0241_7F65, 0x0005_411C]),
        rule(0x7, 1, [0; 4], [0x0000_1D30, 0, 0, 0]),
        rule(0xA, NONE, [0; 4], [0; 4]),
        rule(0x1C, NONE, [0; 4], [0x0000_00FF, 0, 0, 0]),
        rule(0x8000_0008, NONE, [0; 4], [0, 0x0000_0200, 0, 0]),
        rule(0x7, 2, [0; 4], [0, 0, 0, 0x0000_0028]),
        rule(0x23, 0, [0; 4], [0x0000_000F, 0, 0, 0]),
    ]
};

/// `MAX_NUM_CPUID_CONFIG` of TDX module 1.5.05, its NUM_CPUID_CONFIG: 18
/// CPUID entries in TD_PARAMS
/// (`include/auto_gen/cpuid_configurations_defines.h` of 1.5.05).
pub const NUM_CPUID_CONFIG_1_5_05: usize = 18;

/// The configurable CPUID leaves of TDX module 1.5.05, in TD_PARAMS entry
/// order (`cpuid_configurable`, `include/auto_gen/cpuid_configurations.c`
/// of the `TDX 1.5.05` source).
///
/// Entries 0-11 are [`CPUID_CONFIG_1_5_01`]'s, except that leaf 7/1
/// (entry 6) also allows EAX bit 26 and EDX bits 4, 5 and 10 (ALLOW_DIRECT
/// EAX `0x04001D30`, EDX `0x00000430`). Entries 12-17 are CPUID(0x1F)
/// sub-leaves 0-5, the TD's topology: CONFIG_DIRECT EAX `0x1F` (the
/// x2APIC ID shift), EBX `0xFFFF` (logical processors at the level), ECX
/// `0xFFFF` (level number and type), nothing in EDX.
///
/// The module checks the entries in the order of its CPUID lookup table,
/// [`CPUID_CONFIG_ORDER_1_5_05`], then the 0x1F entries as a whole: all
/// zero (the CPU's own topology), or levels of increasing type (SMT 1,
/// CORE 2, MODULE 3, TILE 4, DIE 5) including CORE, ended by an INVALID
/// (0) level or the sixth sub-leaf (`check_cpuid_1f`,
/// `src/common/helpers/helpers.c`; `TDX_CPUID_LEAF_1F_FORMAT_UNRECOGNIZED`).
pub const CPUID_CONFIG_1_5_05: [CpuidConfigRule; NUM_CPUID_CONFIG_1_5_05] = {
    let mut t = [CPUID_CONFIG_1_5_01[0]; NUM_CPUID_CONFIG_1_5_05];
    let mut i = 0;
    while i < NUM_CPUID_CONFIG_1_5_01 {
        t[i] = CPUID_CONFIG_1_5_01[i];
        i += 1;
    }
    t[6] = rule(0x7, 1, [0; 4], [0x0400_1D30, 0, 0, 0x0000_0430]);
    let mut sub = 0;
    while sub < 6 {
        t[12 + sub] = rule(0x1F, sub as u32, [0x1F, 0xFFFF, 0xFFFF, 0], [0; 4]);
        sub += 1;
    }
    t
};

/// The order in which TDX module 1.5.05 checks the entries of
/// [`CPUID_CONFIG_1_5_05`]: the order of its CPUID lookup table (lookup
/// indices 0-9, 14, 46-51 and 59), so entry 11 (leaf 0x23) comes after the
/// 0x1F entries. Module 1.5.01 checks its 12 entries in entry order.
pub const CPUID_CONFIG_ORDER_1_5_05: [usize; NUM_CPUID_CONFIG_1_5_05] =
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 11];

/// The IA32_ARCH_CAPABILITIES bits TD_PARAMS may configure in TDX module
/// 1.5.01: SSB_NO (4), RRSBA (19), BHI_NO (20), PBRSB_NO (24)
/// (`IA32_ARCH_CAPABILITIES_CONFIG_MASK`, `src/common/x86_defs/msr_defs.h`;
/// the module reports it as the IA32_ARCH_CAPABILITIES_CONFIG_MASK
/// metadata field). Any other bit set in
/// [`TdParams::ia32_arch_capabilities_config`] is refused, and so is any
/// bit at all unless [`TdParams::MSR_CONFIG_IA32_ARCH_CAPABILITIES`] is set
/// (`init_virt_ia32_arch_capabilities`,
/// `src/common/helpers/virt_msr_helpers.c`). Module 1.5.05 has the same
/// mask.
pub const IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01: u64 =
    (1 << 4) | (1 << 19) | (1 << 20) | (1 << 24);

/// One `cpuid_config` entry of the legacy TDSYSINFO_STRUCT (24 bytes: leaf,
/// subleaf, then the EAX..EDX bits the host may configure).
///
/// Current modules report the same information through the
/// CPUID_CONFIG_LEAVES / CPUID_CONFIG_VALUES metadata fields (see
/// [`CpuidLeaf::from_metadata`] and [`CpuidValues::from_metadata`]).
#[derive(Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CpuidConfig {
    leaf: U32,
    subleaf: U32,
    eax: U32,
    ebx: U32,
    ecx: U32,
    edx: U32,
}

const _: () = assert!(size_of::<CpuidConfig>() == 24);
const _: () = assert!(offset_of!(CpuidConfig, leaf) == 0);
const _: () = assert!(offset_of!(CpuidConfig, subleaf) == 4);
const _: () = assert!(offset_of!(CpuidConfig, eax) == 8);
const _: () = assert!(offset_of!(CpuidConfig, ebx) == 12);
const _: () = assert!(offset_of!(CpuidConfig, ecx) == 16);
const _: () = assert!(offset_of!(CpuidConfig, edx) == 20);

impl CpuidConfig {
    /// An entry for `leaf` with the given configurable bits.
    #[inline]
    pub const fn new(leaf: CpuidLeaf, values: CpuidValues) -> Self {
        let raw = leaf.to_metadata();
        Self {
            leaf: U32::new(raw as u32),
            subleaf: U32::new((raw >> 32) as u32),
            eax: values.eax,
            ebx: values.ebx,
            ecx: values.ecx,
            edx: values.edx,
        }
    }

    /// The leaf and subleaf this entry describes.
    #[inline]
    pub const fn cpuid_leaf(&self) -> CpuidLeaf {
        CpuidLeaf::from_parts(self.leaf.get(), self.subleaf.get())
    }

    /// The configurable-bit masks, as [`CpuidValues`].
    #[inline]
    pub const fn values(&self) -> CpuidValues {
        CpuidValues {
            eax: self.eax,
            ebx: self.ebx,
            ecx: self.ecx,
            edx: self.edx,
        }
    }
}

impl fmt::Debug for CpuidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuidConfig")
            .field("leaf", &self.cpuid_leaf())
            .field("values", &self.values())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// TD_PARAMS (KVM `struct td_params` in arch/x86/kvm/vmx/tdx_arch.h; module
// `td_params_t` in include/tdx_api_defs.h, checked by tdh_mng_init.c)
// ---------------------------------------------------------------------------

/// Size of TD_PARAMS in bytes.
pub const TD_PARAMS_SIZE: usize = 1024;

/// Alignment the module requires of TD_PARAMS (RDX of TDH.MNG.INIT).
pub const TD_PARAMS_ALIGN: usize = 1024;

/// Byte offset of the CPUID area inside TD_PARAMS (entry 0 of
/// `cpuid_config_vals`).
pub const TD_PARAMS_CPUID_OFFSET: usize = 256;

/// Number of [`CpuidValues`] entries the 768-byte CPUID area of TD_PARAMS
/// (bytes 256..1024) can hold: 48. The capacity of the area, not a module
/// limit.
///
/// A module reads only its own number of entries, its
/// `MAX_NUM_CPUID_CONFIG`, which it also reports as the NUM_CPUID_CONFIG
/// metadata field: 12 in TDX module 1.5.01 ([`NUM_CPUID_CONFIG_1_5_01`]).
/// The bytes after them are the module's `reserved_3` (bytes 448..1024 in
/// 1.5.01) and must be zero: TDH.MNG.INIT refuses anything else with
/// `TDX_OPERAND_INVALID|RDX` after it has checked the CPUID entries
/// (`src/vmm_dispatcher/api_calls/tdh_mng_init.c`). [`TdParams`] keeps the
/// whole area addressable as entries, as Linux's `struct td_params` does
/// (a flexible CPUID array over 768 reserved bytes), so that one type
/// serves modules with different counts; the host checks an entry index
/// against the module's NUM_CPUID_CONFIG, not against this constant.
/// Linux accepts a NUM_CPUID_CONFIG up to 128: a module reporting more than
/// 48 configurable leaves could not be configured through this layout.
pub const MAX_CPUID_CONFIGS: usize =
    (TD_PARAMS_SIZE - TD_PARAMS_CPUID_OFFSET) / size_of::<CpuidValues>();

/// TSC frequency unit of TD_PARAMS: 25 MHz.
pub const TSC_FREQUENCY_UNIT_HZ: u64 = 25_000_000;

/// Smallest TD_PARAMS TSC frequency the module accepts (4 × 25 MHz = 100 MHz).
pub const TSC_FREQUENCY_MIN: u16 = 4;

/// Largest TD_PARAMS TSC frequency the module accepts (400 × 25 MHz = 10 GHz).
pub const TSC_FREQUENCY_MAX: u16 = 400;

/// Converts a TSC frequency in Hz to TD_PARAMS units of 25 MHz, rounding down.
///
/// # Errors
///
/// [`AbiError::TscFrequencyOutOfRange`] if the rounded value is outside
/// [`TSC_FREQUENCY_MIN`]`..=`[`TSC_FREQUENCY_MAX`] (the range TDH.MNG.INIT
/// accepts).
#[inline]
pub const fn tsc_frequency_from_hz(hz: u64) -> Result<u16, AbiError> {
    let units = hz / TSC_FREQUENCY_UNIT_HZ;
    if units < TSC_FREQUENCY_MIN as u64 || units > TSC_FREQUENCY_MAX as u64 {
        Err(AbiError::TscFrequencyOutOfRange { hz })
    } else {
        // In range 4..=400, so the cast is exact.
        Ok(units as u16)
    }
}

/// Converts TD_PARAMS TSC units back to Hz (`units × 25 MHz`).
#[inline]
pub const fn tsc_frequency_to_hz(units: u16) -> u64 {
    units as u64 * TSC_FREQUENCY_UNIT_HZ
}

/// Length of the EPT page walk a TD uses (the EPTP page-walk field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EptPageWalk {
    /// 4-level EPT (guest physical addresses up to 48 bits).
    FourLevel,
    /// 5-level EPT (up to 52 bits); the module allows it only when the CPU
    /// supports 5-level EPT (IA32_VMX_EPT_VPID_CAP bit 7) and its physical
    /// address width is at least 49 bits, and requires it when `MAX_GPAW` is
    /// set (`verify_and_set_td_eptp_controls`, `src/common/helpers/helpers.c`).
    FiveLevel,
}

impl EptPageWalk {
    /// The number of paging levels (4 or 5).
    #[inline]
    pub const fn levels(self) -> u8 {
        match self {
            Self::FourLevel => 4,
            Self::FiveLevel => 5,
        }
    }

    /// From a number of paging levels.
    ///
    /// # Errors
    ///
    /// [`AbiError::UnsupportedPageWalkLength`] unless `levels` is 4 or 5.
    #[inline]
    pub const fn from_levels(levels: u8) -> Result<Self, AbiError> {
        match levels {
            4 => Ok(Self::FourLevel),
            5 => Ok(Self::FiveLevel),
            _ => Err(AbiError::UnsupportedPageWalkLength { levels }),
        }
    }
}

/// The `eptp_controls` field of TD_PARAMS: the EPTP bits the host chooses.
///
/// Bits 2:0 hold the EPT paging-structure memory type (must be write-back,
/// 6), bits 5:3 the page-walk length minus one (3 for 4-level, 4 for 5-level);
/// everything else (A/D enable bit 6, supervisor-shadow-stack bit 7, the root
/// address) must be 0 on input: the module fills in the root itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EptpControls(u64);

impl EptpControls {
    /// Memory type write-back.
    pub const MEMORY_TYPE_WB: u8 = 6;
    /// Mask of the memory-type field (bits 2:0).
    pub const MEMORY_TYPE_MASK: u64 = 0b111;
    /// Shift of the page-walk-length field.
    pub const PAGE_WALK_SHIFT: u32 = 3;
    /// Mask of the page-walk-length field (bits 5:3).
    pub const PAGE_WALK_MASK: u64 = 0b111 << Self::PAGE_WALK_SHIFT;

    /// Write-back memory type with the given page-walk length: the only
    /// values the module accepts (0x1e for 4-level, 0x26 for 5-level).
    #[inline]
    pub const fn write_back(walk: EptPageWalk) -> Self {
        Self(Self::MEMORY_TYPE_WB as u64 | (((walk.levels() - 1) as u64) << Self::PAGE_WALK_SHIFT))
    }

    /// Wraps a raw value, unchecked.
    #[inline]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value.
    #[inline]
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The memory-type field (bits 2:0).
    #[inline]
    pub const fn memory_type(self) -> u8 {
        (self.0 & Self::MEMORY_TYPE_MASK) as u8
    }

    /// The page-walk length in levels (field value of bits 5:3, plus one).
    #[inline]
    pub const fn page_walk_levels(self) -> u8 {
        ((self.0 & Self::PAGE_WALK_MASK) >> Self::PAGE_WALK_SHIFT) as u8 + 1
    }
}

impl fmt::Debug for EptpControls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EptpControls").field(&Hex(self.0)).finish()
    }
}

/// TD_PARAMS: the configuration of a TD, read by TDH.MNG.INIT (RDX = its
/// physical address, 1024-aligned). 1024 bytes, little-endian.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | attributes |
/// | 8 | 8 | xfam |
/// | 16 | 2 | max_vcpus |
/// | 18 | 1 | num_l2_vms |
/// | 19 | 1 | msr_config_ctls (bit 0: apply `ia32_arch_capabilities_config`) |
/// | 20 | 4 | reserved_0 (must be 0) |
/// | 24 | 8 | eptp_controls ([`EptpControls`]) |
/// | 32 | 8 | config_flags (`CONFIG_FLAG_*`) |
/// | 40 | 2 | tsc_frequency (units of 25 MHz) |
/// | 42 | 38 | reserved_1 (must be 0) |
/// | 80 | 48 | mrconfigid |
/// | 128 | 48 | mrowner |
/// | 176 | 48 | mrownerconfig |
/// | 224 | 8 | ia32_arch_capabilities_config |
/// | 232 | 24 | reserved_2 (must be 0) |
/// | 256 | 192 | cpuid_config_vals: 12 × [`CpuidValues`] (module 1.5.01) |
/// | 448 | 576 | reserved_3 (must be 0) |
///
/// This is `td_params_t` of TDX module 1.5.01 (`include/tdx_api_defs.h` at
/// tag `TDX_1.5.01` of `intel/tdx-module`): 12 CPUID entries, its
/// `MAX_NUM_CPUID_CONFIG`, and `reserved_3` = 768 − 16 × 12 bytes after
/// them. The type keeps the 768 bytes from offset 256 addressable as
/// [`MAX_CPUID_CONFIGS`] (48) entries, because the number of entries a
/// module reads is that module's NUM_CPUID_CONFIG (see
/// [`MAX_CPUID_CONFIGS`]); entries from NUM_CPUID_CONFIG on are the
/// module's `reserved_3` and must stay zero
/// ([`Self::first_nonzero_cpuid_value`]). Module 1.5.05 reads 18 entries ([`CPUID_CONFIG_1_5_05`]), so its
/// `reserved_3` starts at byte 544.
///
/// Linux's KVM definition (`struct td_params` in
/// `arch/x86/kvm/vmx/tdx_arch.h`) has bytes 18..24 and 224..256 reserved.
/// The module names fields inside them: `num_l2_vms` (u8 at 18),
/// `msr_config_ctls` (u8 at 19) and `ia32_arch_capabilities_config` (u64 at
/// 224), leaving 4 reserved bytes at 20 and 24 at 232. A host that leaves
/// these fields zero builds the same bytes under either description.
///
/// TDH.MNG.INIT checks the fields in this order
/// (`src/vmm_dispatcher/api_calls/tdh_mng_init.c`): attributes, xfam,
/// max_vcpus, num_l2_vms (then the TDCS page count), reserved_0,
/// config_flags, eptp_controls, tsc_frequency, reserved_1,
/// msr_config_ctls bits 7:1, reserved_2, the CPUID entries (in the
/// module's lookup order, which is entry order in 1.5.01), reserved_3,
/// ia32_arch_capabilities_config, and last the migratable/L2 cross-check.
///
/// The CPUID entries carry no leaf numbers: entry `i` configures the `i`-th
/// leaf of the module's CPUID_CONFIG list (metadata CPUID_CONFIG_LEAVES
/// order; [`CPUID_CONFIG_1_5_01`] for module 1.5.01).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(1024))]
pub struct TdParams {
    attributes: U64,
    xfam: U64,
    max_vcpus: U16,
    num_l2_vms: u8,
    msr_config_ctls: u8,
    reserved_0: [u8; 4],
    eptp_controls: U64,
    config_flags: U64,
    tsc_frequency: U16,
    reserved_1: [u8; 38],
    mrconfigid: [u8; 48],
    mrowner: [u8; 48],
    mrownerconfig: [u8; 48],
    ia32_arch_capabilities_config: U64,
    reserved_2: [u8; 24],
    cpuid_values: [CpuidValues; MAX_CPUID_CONFIGS],
}

const _: () = assert!(size_of::<TdParams>() == TD_PARAMS_SIZE);
const _: () = assert!(align_of::<TdParams>() == TD_PARAMS_ALIGN);
const _: () = assert!(MAX_CPUID_CONFIGS == 48);
const _: () = assert!(offset_of!(TdParams, attributes) == 0);
const _: () = assert!(offset_of!(TdParams, xfam) == 8);
const _: () = assert!(offset_of!(TdParams, max_vcpus) == 16);
const _: () = assert!(offset_of!(TdParams, num_l2_vms) == 18);
const _: () = assert!(offset_of!(TdParams, msr_config_ctls) == 19);
const _: () = assert!(offset_of!(TdParams, reserved_0) == 20);
const _: () = assert!(offset_of!(TdParams, eptp_controls) == 24);
const _: () = assert!(offset_of!(TdParams, config_flags) == 32);
const _: () = assert!(offset_of!(TdParams, tsc_frequency) == 40);
const _: () = assert!(offset_of!(TdParams, reserved_1) == 42);
const _: () = assert!(offset_of!(TdParams, mrconfigid) == 80);
const _: () = assert!(offset_of!(TdParams, mrowner) == 128);
const _: () = assert!(offset_of!(TdParams, mrownerconfig) == 176);
const _: () = assert!(offset_of!(TdParams, ia32_arch_capabilities_config) == 224);
const _: () = assert!(offset_of!(TdParams, reserved_2) == 232);
const _: () = assert!(offset_of!(TdParams, cpuid_values) == TD_PARAMS_CPUID_OFFSET);

/// Size of the MRCONFIGID / MROWNER / MROWNERCONFIG fields (a SHA-384 digest).
pub const TD_PARAMS_MEASUREMENT_SIZE: usize = 48;

impl TdParams {
    /// `config_flags` bit 0, MAX_GPAW: the TD's shared bit is GPA bit 51
    /// instead of bit 47 (needs 5-level EPT).
    pub const CONFIG_FLAG_MAX_GPAW: u64 = 1 << 0;
    /// `config_flags` bit 1, FLEXIBLE_PENDING_VE: lets the guest change how
    /// access to a pending page is reported (bit named in the module's
    /// `config_flags_t`; Linux does not set it).
    pub const CONFIG_FLAG_FLEXIBLE_PENDING_VE: u64 = 1 << 1;
    /// `config_flags` bit 2, NO_RBP_MOD: TDG.VP.VMCALL and TDH.VP.ENTER leave
    /// RBP alone. KVM always sets it.
    pub const CONFIG_FLAG_NO_RBP_MOD: u64 = 1 << 2;
    /// `msr_config_ctls` bit 0: apply `ia32_arch_capabilities_config` to the
    /// TD's virtual IA32_ARCH_CAPABILITIES MSR. Bits 7:1 must be 0.
    pub const MSR_CONFIG_IA32_ARCH_CAPABILITIES: u8 = 1 << 0;
    /// Largest `num_l2_vms` the module accepts (1.5).
    pub const MAX_L2_VMS: u8 = 3;

    /// ATTRIBUTES bit 0, DEBUG: the host may read and write the TD's state.
    pub const ATTRIBUTE_DEBUG: u64 = 1 << 0;
    /// ATTRIBUTES bit 28, SEPT_VE_DISABLE: no #VE on access to a pending
    /// page.
    pub const ATTRIBUTE_SEPT_VE_DISABLE: u64 = 1 << 28;
    /// ATTRIBUTES bit 29, MIGRATABLE. TDX module 1.5.01 refuses it together
    /// with [`Self::ATTRIBUTE_DEBUG`] or [`Self::ATTRIBUTE_PERFMON`]
    /// (`verify_td_attributes`, `src/common/helpers/helpers.c`) and with
    /// `num_l2_vms` > 0 (`td_immutable_state_cross_check`, same file).
    pub const ATTRIBUTE_MIGRATABLE: u64 = 1 << 29;
    /// ATTRIBUTES bit 30, PKS: supervisor protection keys.
    pub const ATTRIBUTE_PKS: u64 = 1 << 30;
    /// ATTRIBUTES bit 63, PERFMON: the TD may use the performance counters.
    pub const ATTRIBUTE_PERFMON: u64 = 1 << 63;
    /// The ATTRIBUTES bits TDX module 1.5.01 allows (its ATTRIBUTES_FIXED0,
    /// `TDX_ATTRIBUTES_FIXED0` in
    /// `src/common/data_structures/td_control_structures.h`): DEBUG,
    /// SEPT_VE_DISABLE, MIGRATABLE, PKS, PERFMON. Its ATTRIBUTES_FIXED1 is 0.
    pub const ATTRIBUTES_FIXED0_1_5_01: u64 = Self::ATTRIBUTE_DEBUG
        | Self::ATTRIBUTE_SEPT_VE_DISABLE
        | Self::ATTRIBUTE_MIGRATABLE
        | Self::ATTRIBUTE_PKS
        | Self::ATTRIBUTE_PERFMON;

    /// XFAM bits 1:0, x87 and SSE: always required (XFAM_FIXED1).
    pub const XFAM_FIXED1: u64 = 0b11;
    /// XFAM bit 2, AVX (YMM upper halves).
    pub const XFAM_AVX: u64 = 1 << 2;
    /// XFAM bits 7:5, AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM): all three or
    /// none, and only with [`Self::XFAM_AVX`].
    pub const XFAM_AVX512: u64 = 0b111 << 5;
    /// XFAM bits 12:11, CET user and supervisor state: both or neither.
    pub const XFAM_CET: u64 = 0b11 << 11;
    /// XFAM bits 18:17, AMX TILECFG and TILEDATA: both or neither.
    pub const XFAM_AMX: u64 = 0b11 << 17;
    /// The XFAM bits TDX module 1.5.01 can allow (`TDX_XFAM_FIXED0` in
    /// `src/common/data_structures/td_control_structures.h`): x87, SSE, AVX,
    /// AVX-512, PT, PKRU, CET, ULI, LBR, AMX. The module's XFAM_FIXED0 is
    /// this ANDed with what the CPU supports in XCR0 and IA32_XSS.
    pub const XFAM_FIXED0_1_5_01: u64 = 0x0006_DBE7;

    /// An all-zero TD_PARAMS.
    #[inline]
    pub fn new() -> Self {
        Self::new_zeroed()
    }

    le_accessors! {
        /// The TD's ATTRIBUTES (must respect ATTRIBUTES_FIXED0/1).
        attributes, set_attributes: u64;
        /// The TD's XFAM, in XCR0 / IA32_XSS format (must respect XFAM_FIXED0/1).
        xfam, set_xfam: u64;
        /// Maximum number of vCPUs (the module rejects 0).
        max_vcpus, set_max_vcpus: u16;
        /// Non-measured TD-scope controls (`CONFIG_FLAG_*` bits; others must be 0).
        config_flags, set_config_flags: u64;
        /// Virtual TSC frequency in units of 25 MHz (the module accepts
        /// 4 ..= 400; see [`tsc_frequency_from_hz`]).
        tsc_frequency, set_tsc_frequency: u16;
        /// Value of the TD's virtual IA32_ARCH_CAPABILITIES, used when
        /// `msr_config_ctls` bit 0 is set.
        ia32_arch_capabilities_config, set_ia32_arch_capabilities_config: u64;
    }

    /// Number of L2 VMs (TD partitioning); the module accepts at most
    /// [`Self::MAX_L2_VMS`], and needs `6 + num_l2_vms` TDCS pages.
    #[inline]
    pub const fn num_l2_vms(&self) -> u8 {
        self.num_l2_vms
    }

    /// Sets [`Self::num_l2_vms`].
    #[inline]
    pub fn set_num_l2_vms(&mut self, value: u8) {
        self.num_l2_vms = value;
    }

    /// MSR configuration controls (see [`Self::MSR_CONFIG_IA32_ARCH_CAPABILITIES`]).
    #[inline]
    pub const fn msr_config_ctls(&self) -> u8 {
        self.msr_config_ctls
    }

    /// Sets [`Self::msr_config_ctls`].
    #[inline]
    pub fn set_msr_config_ctls(&mut self, value: u8) {
        self.msr_config_ctls = value;
    }

    /// The EPTP controls.
    #[inline]
    pub const fn eptp_controls(&self) -> EptpControls {
        EptpControls(self.eptp_controls.get())
    }

    /// Sets the EPTP controls.
    #[inline]
    pub fn set_eptp_controls(&mut self, value: EptpControls) {
        self.eptp_controls.set(value.raw());
    }

    /// MRCONFIGID: software-defined ID of the TD's configuration.
    #[inline]
    pub const fn mrconfigid(&self) -> &[u8; TD_PARAMS_MEASUREMENT_SIZE] {
        &self.mrconfigid
    }

    /// Sets [`Self::mrconfigid`].
    #[inline]
    pub fn set_mrconfigid(&mut self, value: &[u8; TD_PARAMS_MEASUREMENT_SIZE]) {
        self.mrconfigid = *value;
    }

    /// MROWNER: software-defined ID of the TD's owner.
    #[inline]
    pub const fn mrowner(&self) -> &[u8; TD_PARAMS_MEASUREMENT_SIZE] {
        &self.mrowner
    }

    /// Sets [`Self::mrowner`].
    #[inline]
    pub fn set_mrowner(&mut self, value: &[u8; TD_PARAMS_MEASUREMENT_SIZE]) {
        self.mrowner = *value;
    }

    /// MROWNERCONFIG: software-defined ID of the owner's configuration.
    #[inline]
    pub const fn mrownerconfig(&self) -> &[u8; TD_PARAMS_MEASUREMENT_SIZE] {
        &self.mrownerconfig
    }

    /// Sets [`Self::mrownerconfig`].
    #[inline]
    pub fn set_mrownerconfig(&mut self, value: &[u8; TD_PARAMS_MEASUREMENT_SIZE]) {
        self.mrownerconfig = *value;
    }

    /// All [`MAX_CPUID_CONFIGS`] entries of the CPUID area (a module reads
    /// the first NUM_CPUID_CONFIG; the rest must be zero).
    #[inline]
    pub const fn cpuid_values(&self) -> &[CpuidValues; MAX_CPUID_CONFIGS] {
        &self.cpuid_values
    }

    /// CPUID entry `index`, or `None` past the last one.
    #[inline]
    pub fn cpuid_value(&self, index: usize) -> Option<CpuidValues> {
        self.cpuid_values.get(index).copied()
    }

    /// Writes CPUID entry `index` (the `index`-th leaf of the module's
    /// CPUID_CONFIG list).
    ///
    /// # Errors
    ///
    /// [`AbiError::IndexOutOfRange`] if `index >= MAX_CPUID_CONFIGS`.
    pub fn set_cpuid_value(&mut self, index: usize, values: CpuidValues) -> Result<(), AbiError> {
        check_index(index, MAX_CPUID_CONFIGS)?;
        self.cpuid_values[index] = values;
        Ok(())
    }

    /// The first CPUID entry at index `from` or later that is not all zero.
    ///
    /// With `from` = the module's NUM_CPUID_CONFIG this finds a nonzero byte
    /// in the module's `reserved_3`, which TDH.MNG.INIT refuses with
    /// `TDX_OPERAND_INVALID|RDX`.
    pub fn first_nonzero_cpuid_value(&self, from: usize) -> Option<usize> {
        (from..MAX_CPUID_CONFIGS).find(|&i| self.cpuid_values[i] != CpuidValues::ZERO)
    }

    /// Whether every reserved byte at a fixed place (`reserved_0`,
    /// `reserved_1`, `reserved_2` and `msr_config_ctls` bits 7:1) is zero,
    /// as TDH.MNG.INIT requires. `reserved_3` depends on the module's
    /// NUM_CPUID_CONFIG: see [`Self::first_nonzero_cpuid_value`].
    pub fn reserved_is_zero(&self) -> bool {
        self.reserved_0.iter().all(|&b| b == 0)
            && self.reserved_1.iter().all(|&b| b == 0)
            && self.reserved_2.iter().all(|&b| b == 0)
            && self.msr_config_ctls & !Self::MSR_CONFIG_IA32_ARCH_CAPABILITIES == 0
    }
}

impl Default for TdParams {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TdParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdParams")
            .field("attributes", &Hex(self.attributes()))
            .field("xfam", &Hex(self.xfam()))
            .field("max_vcpus", &self.max_vcpus())
            .field("num_l2_vms", &self.num_l2_vms())
            .field("msr_config_ctls", &self.msr_config_ctls())
            .field("eptp_controls", &self.eptp_controls())
            .field("config_flags", &Hex(self.config_flags()))
            .field("tsc_frequency", &self.tsc_frequency())
            .field("mrconfigid", &self.mrconfigid())
            .field("mrowner", &self.mrowner())
            .field("mrownerconfig", &self.mrownerconfig())
            .field(
                "ia32_arch_capabilities_config",
                &Hex(self.ia32_arch_capabilities_config()),
            )
            .field("reserved_is_zero", &self.reserved_is_zero())
            .field("cpuid_values", &self.cpuid_values())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// HPA list pages (the 2026 TDX Connect and DICE quoting patch series)
// ---------------------------------------------------------------------------

/// Number of HPA slots in a linked-list node that hold data pages (slots
/// 0..=510); slot 511 links to the next node.
pub const HPA_LINKED_LIST_DATA_SLOTS: usize = 511;

/// Index of the slot of a linked-list node that holds the next node's HPA.
pub const HPA_LINKED_LIST_NEXT_SLOT: usize = 511;

/// Value of an unused linked-list slot (all ones).
pub const HPA_LINKED_LIST_TERMINATOR: u64 = u64::MAX;

/// Number of linked-list nodes needed to list `npages` data pages:
/// `ceil(npages / 511)`.
#[inline]
pub const fn hpa_linked_list_nodes(npages: usize) -> usize {
    npages.div_ceil(HPA_LINKED_LIST_DATA_SLOTS)
}

/// A 4 KiB page of up to 512 `u64` host physical addresses.
///
/// Used as the list page of an HPA_LIST_INFO (TDH.EXT.MEM.ADD; the module
/// reads entries FIRST_ENTRY..=LAST_ENTRY and never keeps the page), as the
/// root page of an HPA_ARRAY_T (TDX Connect) or IOMMU_MT, and as one node of
/// an HPA_LINKED_LIST (Quote buffer: slots 0..=510 data, slot 511 the next
/// node, unused slots [`HPA_LINKED_LIST_TERMINATOR`]).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
pub struct HpaListPage {
    entries: [U64; HpaListPage::MAX_ENTRIES],
}

const _: () = assert!(size_of::<HpaListPage>() == 4096);
const _: () = assert!(align_of::<HpaListPage>() == 4096);

impl HpaListPage {
    /// Number of `u64` slots in the page.
    pub const MAX_ENTRIES: usize = 512;

    /// An all-zero page.
    #[inline]
    pub const fn new() -> Self {
        Self::filled(0)
    }

    /// A page with every slot set to `value`.
    #[inline]
    pub const fn filled(value: u64) -> Self {
        Self {
            entries: [U64::new(value); Self::MAX_ENTRIES],
        }
    }

    /// An empty linked-list node: every slot [`HPA_LINKED_LIST_TERMINATOR`].
    #[inline]
    pub const fn linked_list_node() -> Self {
        Self::filled(HPA_LINKED_LIST_TERMINATOR)
    }

    /// Slot `index`, or `None` past the last slot.
    #[inline]
    pub fn get(&self, index: usize) -> Option<u64> {
        self.entries.get(index).map(|entry| entry.get())
    }

    /// Writes slot `index`.
    ///
    /// # Errors
    ///
    /// [`AbiError::IndexOutOfRange`] if `index >= MAX_ENTRIES`.
    pub fn set(&mut self, index: usize, hpa: u64) -> Result<(), AbiError> {
        check_index(index, Self::MAX_ENTRIES)?;
        self.entries[index].set(hpa);
        Ok(())
    }

    /// As a linked-list node: the next node's HPA (slot 511), or `None` if it
    /// holds the terminator.
    #[inline]
    pub fn linked_next(&self) -> Option<u64> {
        match self.entries[HPA_LINKED_LIST_NEXT_SLOT].get() {
            HPA_LINKED_LIST_TERMINATOR => None,
            hpa => Some(hpa),
        }
    }

    /// As a linked-list node: sets slot 511 to `next`, or to the terminator
    /// for `None`.
    #[inline]
    pub fn set_linked_next(&mut self, next: Option<u64>) {
        self.entries[HPA_LINKED_LIST_NEXT_SLOT].set(next.unwrap_or(HPA_LINKED_LIST_TERMINATOR));
    }

    /// All slots, as the little-endian words the module reads.
    #[inline]
    pub const fn as_slice(&self) -> &[U64; Self::MAX_ENTRIES] {
        &self.entries
    }

    /// All slots, as plain values.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|entry| entry.get())
    }
}

impl Default for HpaListPage {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HpaListPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 512 slots are too many to print; show the slots that hold an address.
        let used = self
            .iter()
            .enumerate()
            .filter(|&(_, v)| v != 0 && v != HPA_LINKED_LIST_TERMINATOR)
            .map(|(i, v)| (i, Hex(v)));
        f.debug_map().entries(used).finish()
    }
}

// ---------------------------------------------------------------------------
// MRTD measurement block (module tdh_mem_page_add.c, tdh_mr_extend.c)
// ---------------------------------------------------------------------------

/// Size of one measurement block.
pub const MEASUREMENT_BLOCK_SIZE: usize = 128;

/// Bytes of TD memory one TDH.MR.EXTEND measures.
pub const MR_EXTEND_CHUNK: usize = 256;

/// TDH.MR.EXTEND calls needed to measure a whole 4 KiB page.
pub const MR_EXTEND_CHUNKS_PER_PAGE: usize = 4096 / MR_EXTEND_CHUNK;

/// One 128-byte block the module feeds into the MRTD SHA-384.
///
/// Layout: the leaf's ASCII name padded with NULs to 16 bytes, the GPA as a
/// little-endian `u64`, then 104 zero bytes.
///
/// * TDH.MEM.PAGE.ADD hashes one block, [`page_add`](Self::page_add), and not
///   the page contents.
/// * TDH.MR.EXTEND hashes [`mr_extend`](Self::mr_extend) for the GPA of a
///   256-byte chunk, followed by the [`MR_EXTEND_CHUNK`] bytes of the chunk
///   (two more 128-byte blocks).
///
/// TDH.MNG.INIT starts the hash and TDH.MR.FINALIZE finishes it, so MRTD is
/// SHA-384 of these blocks (and chunks) in call order.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MeasurementBlock {
    name: [u8; 16],
    gpa: U64,
    zero: [u8; 104],
}

const _: () = assert!(size_of::<MeasurementBlock>() == MEASUREMENT_BLOCK_SIZE);
const _: () = assert!(offset_of!(MeasurementBlock, name) == 0);
const _: () = assert!(offset_of!(MeasurementBlock, gpa) == 16);
const _: () = assert!(offset_of!(MeasurementBlock, zero) == 24);

impl MeasurementBlock {
    /// Name hashed by TDH.MEM.PAGE.ADD.
    pub const PAGE_ADD_NAME: &'static [u8] = b"MEM.PAGE.ADD";
    /// Name hashed by TDH.MR.EXTEND.
    pub const MR_EXTEND_NAME: &'static [u8] = b"MR.EXTEND";

    /// The block with `name` (at most 16 bytes) and `gpa`.
    const fn named(name: &[u8], gpa: u64) -> Self {
        let mut padded = [0u8; 16];
        let mut i = 0;
        while i < name.len() {
            padded[i] = name[i];
            i += 1;
        }
        Self {
            name: padded,
            gpa: U64::new(gpa),
            zero: [0; 104],
        }
    }

    /// The block TDH.MEM.PAGE.ADD hashes for the page at `gpa`.
    #[inline]
    pub const fn page_add(gpa: u64) -> Self {
        Self::named(Self::PAGE_ADD_NAME, gpa)
    }

    /// The block TDH.MR.EXTEND hashes, before the chunk data, for the
    /// 256-byte chunk at `gpa`.
    #[inline]
    pub const fn mr_extend(gpa: u64) -> Self {
        Self::named(Self::MR_EXTEND_NAME, gpa)
    }

    /// The NUL-padded name field.
    #[inline]
    pub const fn name(&self) -> &[u8; 16] {
        &self.name
    }

    /// The GPA field.
    #[inline]
    pub const fn gpa(&self) -> u64 {
        self.gpa.get()
    }

    /// The 128 bytes to hash.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        IntoBytes::as_bytes(self)
    }

    /// The 128 bytes to hash, by value.
    #[inline]
    pub fn to_array(&self) -> [u8; MEASUREMENT_BLOCK_SIZE] {
        let mut out = [0u8; MEASUREMENT_BLOCK_SIZE];
        out.copy_from_slice(IntoBytes::as_bytes(self));
        out
    }
}

impl fmt::Debug for MeasurementBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        let name = core::str::from_utf8(&self.name[..len]).unwrap_or("<not ASCII>");
        f.debug_struct("MeasurementBlock")
            .field("name", &name)
            .field("gpa", &Hex(self.gpa()))
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Legacy TDSYSINFO_STRUCT (module `td_sys_info_t` in include/tdx_api_defs.h)
// ---------------------------------------------------------------------------

/// Size of TDSYSINFO_STRUCT, which is also its required alignment.
pub const TDSYSINFO_SIZE: usize = 1024;

/// Byte offset of the `cpuid_config` array in TDSYSINFO_STRUCT.
const TDSYSINFO_CPUID_OFFSET: usize = 132;

/// Number of 24-byte [`CpuidConfig`] entries that fit in TDSYSINFO_STRUCT
/// after offset 132: `(1024 - 132) / 24` = 37, leaving 4 bytes of padding.
pub const TDSYSINFO_MAX_CPUID_CONFIGS: usize =
    (TDSYSINFO_SIZE - TDSYSINFO_CPUID_OFFSET) / size_of::<CpuidConfig>();

/// TDSYSINFO_STRUCT, as the legacy TDH.SYS.INFO leaf filled it (pre-merge
/// Linux series; current hosts read global metadata with TDH.SYS.RD instead).
/// 1024 bytes, 1024-aligned, little-endian.
///
/// | offset | field |
/// |---|---|
/// | 0 | attributes u32 (bit 31: debug module) |
/// | 4 | vendor_id u32 (0x8086) |
/// | 8 | build_date u32 |
/// | 12 | build_num u16 |
/// | 14 | minor_version u16 |
/// | 16 | major_version u16 |
/// | 18 | sys_rd u8, then reserved to 32 |
/// | 32 | max_tdmrs u16 |
/// | 34 | max_reserved_per_tdmr u16 |
/// | 36 | pamt_entry_size u16, then reserved to 48 |
/// | 48 | tdcs_base_size u16, reserved u16 |
/// | 52 | tdvps_base_size u16 |
/// | 54 | tdvps_xfam_dependent_size u8, then reserved to 64 |
/// | 64, 72 | attributes_fixed0, attributes_fixed1 u64 |
/// | 80, 88 | xfam_fixed0, xfam_fixed1 u64 |
/// | 96 | 32 reserved bytes |
/// | 128 | num_cpuid_config u32 |
/// | 132 | cpuid_config: 37 × [`CpuidConfig`] (24 bytes each) |
/// | 1020 | 4 bytes of padding |
///
/// The module declares its `cpuid_config` array with its own
/// `MAX_NUM_CPUID_CONFIG` entries and pads the rest; 37 is how many the
/// structure could hold.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(1024))]
pub struct TdSysInfoLegacy {
    attributes: U32,
    vendor_id: U32,
    build_date: U32,
    build_num: U16,
    minor_version: U16,
    major_version: U16,
    sys_rd: u8,
    reserved_0: [u8; 13],
    max_tdmrs: U16,
    max_reserved_per_tdmr: U16,
    pamt_entry_size: U16,
    reserved_1: [u8; 10],
    tdcs_base_size: U16,
    reserved_2: [u8; 2],
    tdvps_base_size: U16,
    tdvps_xfam_dependent_size: u8,
    reserved_3: [u8; 9],
    attributes_fixed0: U64,
    attributes_fixed1: U64,
    xfam_fixed0: U64,
    xfam_fixed1: U64,
    reserved_4: [u8; 32],
    num_cpuid_config: U32,
    cpuid_config: [CpuidConfig; TDSYSINFO_MAX_CPUID_CONFIGS],
    reserved_5: [u8; 4],
}

const _: () = assert!(TDSYSINFO_MAX_CPUID_CONFIGS == 37);
const _: () = assert!(size_of::<TdSysInfoLegacy>() == TDSYSINFO_SIZE);
const _: () = assert!(align_of::<TdSysInfoLegacy>() == TDSYSINFO_SIZE);
const _: () = assert!(offset_of!(TdSysInfoLegacy, attributes) == 0);
const _: () = assert!(offset_of!(TdSysInfoLegacy, vendor_id) == 4);
const _: () = assert!(offset_of!(TdSysInfoLegacy, build_date) == 8);
const _: () = assert!(offset_of!(TdSysInfoLegacy, build_num) == 12);
const _: () = assert!(offset_of!(TdSysInfoLegacy, minor_version) == 14);
const _: () = assert!(offset_of!(TdSysInfoLegacy, major_version) == 16);
const _: () = assert!(offset_of!(TdSysInfoLegacy, sys_rd) == 18);
const _: () = assert!(offset_of!(TdSysInfoLegacy, max_tdmrs) == 32);
const _: () = assert!(offset_of!(TdSysInfoLegacy, max_reserved_per_tdmr) == 34);
const _: () = assert!(offset_of!(TdSysInfoLegacy, pamt_entry_size) == 36);
const _: () = assert!(offset_of!(TdSysInfoLegacy, tdcs_base_size) == 48);
const _: () = assert!(offset_of!(TdSysInfoLegacy, tdvps_base_size) == 52);
const _: () = assert!(offset_of!(TdSysInfoLegacy, tdvps_xfam_dependent_size) == 54);
const _: () = assert!(offset_of!(TdSysInfoLegacy, attributes_fixed0) == 64);
const _: () = assert!(offset_of!(TdSysInfoLegacy, attributes_fixed1) == 72);
const _: () = assert!(offset_of!(TdSysInfoLegacy, xfam_fixed0) == 80);
const _: () = assert!(offset_of!(TdSysInfoLegacy, xfam_fixed1) == 88);
const _: () = assert!(offset_of!(TdSysInfoLegacy, reserved_4) == 96);
const _: () = assert!(offset_of!(TdSysInfoLegacy, num_cpuid_config) == 128);
const _: () = assert!(offset_of!(TdSysInfoLegacy, cpuid_config) == TDSYSINFO_CPUID_OFFSET);
const _: () = assert!(offset_of!(TdSysInfoLegacy, reserved_5) == 1020);

impl TdSysInfoLegacy {
    /// `attributes` bit 31: the module is a debug build.
    pub const ATTRIBUTE_DEBUG_MODULE: u32 = 1 << 31;

    /// An all-zero structure.
    #[inline]
    pub fn new() -> Self {
        Self::new_zeroed()
    }

    le_accessors! {
        /// Module attributes (bit 31: debug module).
        attributes, set_attributes: u32;
        /// Vendor ID (0x8086 for Intel).
        vendor_id, set_vendor_id: u32;
        /// Build date.
        build_date, set_build_date: u32;
        /// Build number.
        build_num, set_build_num: u16;
        /// Minor version.
        minor_version, set_minor_version: u16;
        /// Major version.
        major_version, set_major_version: u16;
        /// Maximum number of TDMRs.
        max_tdmrs, set_max_tdmrs: u16;
        /// Maximum number of reserved areas per TDMR.
        max_reserved_per_tdmr, set_max_reserved_per_tdmr: u16;
        /// PAMT entry size in bytes.
        pamt_entry_size, set_pamt_entry_size: u16;
        /// Base size of the TDCS in bytes.
        tdcs_base_size, set_tdcs_base_size: u16;
        /// Base size of the TDVPS in bytes.
        tdvps_base_size, set_tdvps_base_size: u16;
        /// Bits that must be 0 in any TD's ATTRIBUTES where they are 0 here.
        attributes_fixed0, set_attributes_fixed0: u64;
        /// Bits that must be 1 in any TD's ATTRIBUTES.
        attributes_fixed1, set_attributes_fixed1: u64;
        /// Bits that must be 0 in any TD's XFAM where they are 0 here.
        xfam_fixed0, set_xfam_fixed0: u64;
        /// Bits that must be 1 in any TD's XFAM.
        xfam_fixed1, set_xfam_fixed1: u64;
        /// Number of valid `cpuid_config` entries, as reported.
        num_cpuid_config, set_num_cpuid_config: u32;
    }

    /// Whether the module is a debug build (`attributes` bit 31).
    #[inline]
    pub const fn is_debug_module(&self) -> bool {
        self.attributes() & Self::ATTRIBUTE_DEBUG_MODULE != 0
    }

    /// The SYS_RD byte (non-zero when TDH.SYS.RD is available).
    #[inline]
    pub const fn sys_rd(&self) -> u8 {
        self.sys_rd
    }

    /// Sets [`Self::sys_rd`].
    #[inline]
    pub fn set_sys_rd(&mut self, value: u8) {
        self.sys_rd = value;
    }

    /// Whether the TDVPS needs extra space that depends on the TD's XFAM
    /// (non-zero) or its base size already covers every XFAM (zero).
    #[inline]
    pub const fn tdvps_xfam_dependent_size(&self) -> u8 {
        self.tdvps_xfam_dependent_size
    }

    /// Sets [`Self::tdvps_xfam_dependent_size`].
    #[inline]
    pub fn set_tdvps_xfam_dependent_size(&mut self, value: u8) {
        self.tdvps_xfam_dependent_size = value;
    }

    /// The valid `cpuid_config` entries: the first `num_cpuid_config`, capped
    /// at [`TDSYSINFO_MAX_CPUID_CONFIGS`].
    pub fn cpuid_configs(&self) -> &[CpuidConfig] {
        let n = usize::try_from(self.num_cpuid_config()).unwrap_or(usize::MAX);
        &self.cpuid_config[..n.min(TDSYSINFO_MAX_CPUID_CONFIGS)]
    }

    /// Writes `cpuid_config` entry `index` (`num_cpuid_config` is not changed).
    ///
    /// # Errors
    ///
    /// [`AbiError::IndexOutOfRange`] if `index >= TDSYSINFO_MAX_CPUID_CONFIGS`.
    pub fn set_cpuid_config(&mut self, index: usize, config: CpuidConfig) -> Result<(), AbiError> {
        check_index(index, TDSYSINFO_MAX_CPUID_CONFIGS)?;
        self.cpuid_config[index] = config;
        Ok(())
    }
}

impl Default for TdSysInfoLegacy {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TdSysInfoLegacy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdSysInfoLegacy")
            .field("attributes", &Hex(self.attributes().into()))
            .field("vendor_id", &Hex(self.vendor_id().into()))
            .field("build_date", &self.build_date())
            .field("build_num", &self.build_num())
            .field("minor_version", &self.minor_version())
            .field("major_version", &self.major_version())
            .field("sys_rd", &self.sys_rd())
            .field("max_tdmrs", &self.max_tdmrs())
            .field("max_reserved_per_tdmr", &self.max_reserved_per_tdmr())
            .field("pamt_entry_size", &self.pamt_entry_size())
            .field("tdcs_base_size", &self.tdcs_base_size())
            .field("tdvps_base_size", &self.tdvps_base_size())
            .field(
                "tdvps_xfam_dependent_size",
                &self.tdvps_xfam_dependent_size(),
            )
            .field("attributes_fixed0", &Hex(self.attributes_fixed0()))
            .field("attributes_fixed1", &Hex(self.attributes_fixed1()))
            .field("xfam_fixed0", &Hex(self.xfam_fixed0()))
            .field("xfam_fixed1", &Hex(self.xfam_fixed1()))
            .field("cpuid_configs", &self.cpuid_configs())
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Little-endian bytes of `v` at `offset` in `bytes`.
    fn le64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    fn le32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn le16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
    }

    #[test]
    fn stride_matches_linux_rule() {
        assert_eq!(tdmr_info_stride(16), 512);
        assert_eq!(tdmr_info_stride(0), 512);
        assert_eq!(tdmr_info_stride(28), 512); // 64 + 448 = 512 exactly
        assert_eq!(tdmr_info_stride(29), 1024);
        assert_eq!(core::mem::size_of::<[TdmrInfo; 3]>(), 3 * 512);
    }

    #[test]
    fn tdmr_info_bytes_at_each_offset() {
        let mut t = TdmrInfo::new();
        t.set_base(0x1111_1111_4000_0000);
        t.set_size(0x2222_2222_8000_0000);
        t.set_pamt_1g(0x0303_0303_0303_1000, 0x0404_0404_0404_2000);
        t.set_pamt_2m(0x0505_0505_0505_3000, 0x0606_0606_0606_4000);
        t.set_pamt_4k(0x0707_0707_0707_5000, 0x0808_0808_0808_6000);
        for i in 0..MAX_RESERVED_AREAS {
            let n = i as u64;
            t.set_reserved_area(i, 0x1000 * (n + 1), 0x10_0000 + n)
                .unwrap();
        }
        let b = t.as_bytes();
        assert_eq!(b.len(), 512);
        assert_eq!(le64_at(b, 0), 0x1111_1111_4000_0000);
        assert_eq!(le64_at(b, 8), 0x2222_2222_8000_0000);
        assert_eq!(le64_at(b, 16), 0x0303_0303_0303_1000);
        assert_eq!(le64_at(b, 24), 0x0404_0404_0404_2000);
        assert_eq!(le64_at(b, 32), 0x0505_0505_0505_3000);
        assert_eq!(le64_at(b, 40), 0x0606_0606_0606_4000);
        assert_eq!(le64_at(b, 48), 0x0707_0707_0707_5000);
        assert_eq!(le64_at(b, 56), 0x0808_0808_0808_6000);
        // Least significant byte first.
        assert_eq!(&b[0..8], &[0x00, 0x00, 0x00, 0x40, 0x11, 0x11, 0x11, 0x11]);
        for i in 0..MAX_RESERVED_AREAS {
            let n = i as u64;
            assert_eq!(le64_at(b, 64 + 16 * i), 0x1000 * (n + 1));
            assert_eq!(le64_at(b, 72 + 16 * i), 0x10_0000 + n);
        }
        assert!(b[TDMR_INFO_FIELDS_SIZE..].iter().all(|&x| x == 0));

        let back = TdmrInfo::read_from_bytes(b).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.pamt_4k(),
            (0x0707_0707_0707_5000, 0x0808_0808_0808_6000)
        );
    }

    #[test]
    fn reserved_areas_bounds_and_iteration() {
        let mut t = TdmrInfo::with_range(1 << 30, 1 << 30);
        assert_eq!(t.reserved_areas().count(), 0);
        t.set_reserved_area(0, 0x1000, 0x2000).unwrap();
        t.set_reserved_area(2, 0x8000, 0x1000).unwrap();
        let got: [ReservedArea; 2] = {
            let mut it = t.reserved_areas();
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(
            got,
            [
                ReservedArea::new(0x1000, 0x2000),
                ReservedArea::new(0x8000, 0x1000)
            ]
        );
        assert_eq!(
            t.set_reserved_area(16, 0, 0x1000),
            Err(AbiError::IndexOutOfRange {
                index: 16,
                capacity: 16
            })
        );
        assert!(t.reserved_area(1).unwrap().is_null());
        assert_eq!(t.reserved_area(16), None);
        t.clear_reserved_areas();
        assert_eq!(t.reserved_areas().count(), 0);
    }

    #[test]
    fn tdmr_pa_array() {
        let mut a = TdmrPaArray::new();
        assert!(a.is_empty());
        assert_eq!(a.push(0), Err(AbiError::ZeroAddress));
        assert_eq!(
            a.push(0x1100),
            Err(AbiError::Misaligned {
                addr: 0x1100,
                align: 512
            })
        );
        for i in 1..=64u64 {
            a.push(i * 0x200).unwrap();
        }
        assert_eq!(a.len(), 64);
        assert_eq!(a.push(0x10_0000), Err(AbiError::Full { capacity: 64 }));
        assert_eq!(a.get(0), Some(0x200));
        assert_eq!(a.get(63), Some(64 * 0x200));
        assert_eq!(a.get(64), None);
        let b = a.as_bytes();
        assert_eq!(le64_at(b, 0), 0x200);
        assert_eq!(le64_at(b, 8 * 63), 64 * 0x200);
        a.clear();
        a.push(0x4000).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a.as_slice().len(), 1);
        assert_eq!(a.iter().next(), Some(0x4000));

        assert_eq!(TdmrPaArray::byte_len_linux(0), 512);
        assert_eq!(TdmrPaArray::byte_len_linux(1), 512);
        assert_eq!(TdmrPaArray::byte_len_linux(64), 512);
        assert_eq!(TdmrPaArray::byte_len_linux(65), 1024);
    }

    #[test]
    fn cmr_array() {
        let mut c = CmrArray::new();
        c.set(3, CmrInfo::new(0x10_0000, 0x4000_0000)).unwrap();
        assert_eq!(
            c.set(32, CmrInfo::EMPTY),
            Err(AbiError::IndexOutOfRange {
                index: 32,
                capacity: 32
            })
        );
        assert_eq!(c.iter().count(), 1);
        let b = c.as_bytes();
        assert_eq!(le64_at(b, 48), 0x10_0000);
        assert_eq!(le64_at(b, 56), 0x4000_0000);
    }

    #[test]
    fn cpuid_leaf_metadata_words() {
        let none = CpuidLeaf::from_metadata(0xffff_ffff_0000_0001);
        assert_eq!(
            none,
            CpuidLeaf {
                leaf: 1,
                subleaf: None
            }
        );
        assert_eq!(none.to_metadata(), 0xffff_ffff_0000_0001);
        let some = CpuidLeaf::from_metadata(0x0000_0001_0000_0007);
        assert_eq!(
            some,
            CpuidLeaf {
                leaf: 7,
                subleaf: Some(1)
            }
        );
        assert_eq!(some.to_metadata(), 0x0000_0001_0000_0007);

        let v = CpuidValues::from_metadata([0x2222_2222_1111_1111, 0x4444_4444_3333_3333]);
        assert_eq!(
            v,
            CpuidValues::new(0x1111_1111, 0x2222_2222, 0x3333_3333, 0x4444_4444)
        );
        assert_eq!(
            v.to_metadata(),
            [0x2222_2222_1111_1111, 0x4444_4444_3333_3333]
        );

        let c = CpuidConfig::new(none, v);
        let b = c.as_bytes();
        assert_eq!(le32_at(b, 0), 1);
        assert_eq!(le32_at(b, 4), u32::MAX);
        assert_eq!(le32_at(b, 8), 0x1111_1111);
        assert_eq!(le32_at(b, 20), 0x4444_4444);
        assert_eq!(c.cpuid_leaf(), none);
        assert_eq!(c.values(), v);
    }

    #[test]
    fn td_params_bytes_at_each_offset() {
        let mut p = TdParams::new();
        p.set_attributes(0x1000_0000_0000_0001);
        p.set_xfam(0x0000_0000_0006_02e7);
        p.set_max_vcpus(0xabcd);
        p.set_num_l2_vms(2);
        p.set_msr_config_ctls(TdParams::MSR_CONFIG_IA32_ARCH_CAPABILITIES);
        p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FiveLevel));
        p.set_config_flags(TdParams::CONFIG_FLAG_MAX_GPAW | TdParams::CONFIG_FLAG_NO_RBP_MOD);
        p.set_tsc_frequency(tsc_frequency_from_hz(2_100_000_000).unwrap());
        p.set_mrconfigid(&[0xa1; 48]);
        p.set_mrowner(&[0xb2; 48]);
        p.set_mrownerconfig(&[0xc3; 48]);
        p.set_ia32_arch_capabilities_config(0x0123_4567_89ab_cdef);
        for i in 0..MAX_CPUID_CONFIGS {
            let n = i as u32;
            p.set_cpuid_value(i, CpuidValues::new(n, n << 8, n << 16, n << 24))
                .unwrap();
        }
        assert!(p.reserved_is_zero());
        assert_eq!(
            p.set_cpuid_value(48, CpuidValues::ZERO),
            Err(AbiError::IndexOutOfRange {
                index: 48,
                capacity: 48
            })
        );

        let b = p.as_bytes();
        assert_eq!(b.len(), 1024);
        assert_eq!(le64_at(b, 0), 0x1000_0000_0000_0001);
        assert_eq!(le64_at(b, 8), 0x0000_0000_0006_02e7);
        assert_eq!(le16_at(b, 16), 0xabcd);
        assert_eq!(b[18], 2);
        assert_eq!(b[19], 1);
        assert_eq!(&b[20..24], &[0; 4]);
        assert_eq!(le64_at(b, 24), 0x26);
        assert_eq!(le64_at(b, 32), 0b101);
        assert_eq!(le16_at(b, 40), 84);
        assert!(b[42..80].iter().all(|&x| x == 0));
        assert!(b[80..128].iter().all(|&x| x == 0xa1));
        assert!(b[128..176].iter().all(|&x| x == 0xb2));
        assert!(b[176..224].iter().all(|&x| x == 0xc3));
        assert_eq!(le64_at(b, 224), 0x0123_4567_89ab_cdef);
        assert!(b[232..256].iter().all(|&x| x == 0));
        for i in 0..MAX_CPUID_CONFIGS {
            let n = i as u32;
            let o = 256 + 16 * i;
            assert_eq!(le32_at(b, o), n);
            assert_eq!(le32_at(b, o + 4), n << 8);
            assert_eq!(le32_at(b, o + 8), n << 16);
            assert_eq!(le32_at(b, o + 12), n << 24);
        }
        let mut dirty = [0u8; TD_PARAMS_SIZE];
        dirty.copy_from_slice(b);
        dirty[21] = 1; // inside reserved_0 (bytes 20..24)
        assert!(
            !TdParams::read_from_bytes(&dirty)
                .unwrap()
                .reserved_is_zero()
        );
    }

    #[test]
    fn td_params_1_5_01_cpuid_area_and_reserved_3() {
        // 12 entries from 256, then reserved_3 from 448 to the end.
        assert_eq!(
            TD_PARAMS_CPUID_OFFSET + NUM_CPUID_CONFIG_1_5_01 * size_of::<CpuidValues>(),
            448
        );
        let mut p = TdParams::new();
        assert_eq!(p.first_nonzero_cpuid_value(0), None);
        p.set_cpuid_value(11, CpuidValues::new(1, 0, 0, 0)).unwrap();
        assert_eq!(p.first_nonzero_cpuid_value(0), Some(11));
        assert_eq!(p.first_nonzero_cpuid_value(NUM_CPUID_CONFIG_1_5_01), None);
        // Byte 448 is entry 12: reserved_3 on module 1.5.01.
        let mut b = [0u8; TD_PARAMS_SIZE];
        b[448] = 1;
        let q = TdParams::read_from_bytes(&b).unwrap();
        assert_eq!(
            q.first_nonzero_cpuid_value(NUM_CPUID_CONFIG_1_5_01),
            Some(12)
        );
        assert!(q.reserved_is_zero(), "reserved_3 depends on the module");
        b[448] = 0;
        b[1023] = 1;
        let q = TdParams::read_from_bytes(&b).unwrap();
        assert_eq!(q.first_nonzero_cpuid_value(12), Some(47));
    }

    #[test]
    fn cpuid_config_1_5_01_table() {
        let t = &CPUID_CONFIG_1_5_01;
        // RCX encodings of TDH.MNG.INIT's CPUID errors, entry by entry.
        let rcx: [u64; 12] = core::array::from_fn(|i| t[i].leaf_subleaf());
        assert_eq!(
            rcx,
            [
                0xFFFF_FFFF_0000_0001,
                0x0000_0000_0000_0004,
                0x0000_0001_0000_0004,
                0x0000_0002_0000_0004,
                0x0000_0003_0000_0004,
                0x0000_0000_0000_0007,
                0x0000_0001_0000_0007,
                0xFFFF_FFFF_0000_000A,
                0xFFFF_FFFF_0000_001C,
                0xFFFF_FFFF_8000_0008,
                0x0000_0002_0000_0007,
                0x0000_0000_0000_0023,
            ]
        );
        // CONFIG_DIRECT and ALLOW_DIRECT never share a bit.
        for r in t {
            assert_eq!(r.config_direct.and(&r.allow_direct), CpuidValues::ZERO);
        }
        let leaf1 = &t[0];
        assert_eq!(
            leaf1.allowed().registers(),
            [0x0FFF_3FFF, 0x00FF_0000, 0x3104_4D88, 0xB844_0000]
        );
        assert_eq!(
            leaf1.refused_bits(&CpuidValues::new(0x0FFF_3FFF, 0, 0, 0)),
            None
        );
        assert_eq!(
            leaf1.refused_bits(&CpuidValues::new(0x1000_0000, 0x1, 0, 0)),
            Some((0, 0x1000_0000)),
            "EAX is checked before EBX"
        );
        assert_eq!(
            t[4].refused_bits(&CpuidValues::new(0, 0, 0, 0xF)),
            Some((3, 0x8))
        );
        assert_eq!(t[7].allowed(), CpuidValues::ZERO, "leaf 0xA: nothing");
        assert_eq!(IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01, 0x0118_0010);
        assert_eq!(TdParams::ATTRIBUTES_FIXED0_1_5_01, 0x8000_0000_7000_0001);
    }

    #[test]
    fn eptp_and_tsc_helpers() {
        let four = EptpControls::write_back(EptPageWalk::FourLevel);
        assert_eq!(four.raw(), 0x1e);
        assert_eq!(four.memory_type(), 6);
        assert_eq!(four.page_walk_levels(), 4);
        let five = EptpControls::write_back(EptPageWalk::FiveLevel);
        assert_eq!(five.raw(), 0x26);
        assert_eq!(five.page_walk_levels(), 5);
        assert_eq!(EptPageWalk::from_levels(5), Ok(EptPageWalk::FiveLevel));
        assert_eq!(
            EptPageWalk::from_levels(3),
            Err(AbiError::UnsupportedPageWalkLength { levels: 3 })
        );

        assert_eq!(tsc_frequency_from_hz(100_000_000), Ok(4));
        assert_eq!(tsc_frequency_from_hz(10_000_000_000), Ok(400));
        assert_eq!(tsc_frequency_from_hz(2_112_500_000), Ok(84)); // rounds down
        assert_eq!(
            tsc_frequency_from_hz(99_999_999),
            Err(AbiError::TscFrequencyOutOfRange { hz: 99_999_999 })
        );
        assert!(tsc_frequency_from_hz(10_025_000_000).is_err());
        assert_eq!(tsc_frequency_to_hz(84), 2_100_000_000);
    }

    #[test]
    fn measurement_block_layout() {
        let gpa = 0x0011_2233_4455_6000;
        let b = MeasurementBlock::page_add(gpa).to_array();
        assert_eq!(&b[..12], b"MEM.PAGE.ADD");
        assert_eq!(&b[12..16], &[0; 4]);
        assert_eq!(&b[16..24], &gpa.to_le_bytes());
        assert!(b[24..].iter().all(|&x| x == 0));

        let m = MeasurementBlock::mr_extend(0x8100);
        let b = m.as_bytes();
        assert_eq!(b.len(), 128);
        assert_eq!(&b[..9], b"MR.EXTEND");
        assert_eq!(&b[9..16], &[0; 7]);
        assert_eq!(le64_at(b, 16), 0x8100);
        assert!(b[24..].iter().all(|&x| x == 0));
        assert_eq!(m.gpa(), 0x8100);
        assert_eq!(&m.name()[..9], b"MR.EXTEND");
        assert_eq!(MR_EXTEND_CHUNKS_PER_PAGE, 16);
    }

    #[test]
    fn hpa_list_page() {
        let mut p = HpaListPage::linked_list_node();
        assert_eq!(p.linked_next(), None);
        p.set(0, 0x5000).unwrap();
        p.set_linked_next(Some(0x9000));
        assert_eq!(p.linked_next(), Some(0x9000));
        assert_eq!(le64_at(p.as_bytes(), 8 * 511), 0x9000);
        assert_eq!(le64_at(p.as_bytes(), 8), u64::MAX);
        assert_eq!(
            p.set(512, 0),
            Err(AbiError::IndexOutOfRange {
                index: 512,
                capacity: 512
            })
        );
        assert_eq!(hpa_linked_list_nodes(0), 0);
        assert_eq!(hpa_linked_list_nodes(511), 1);
        assert_eq!(hpa_linked_list_nodes(512), 2);
    }

    #[test]
    fn tdsysinfo_offsets() {
        let mut s = TdSysInfoLegacy::new();
        s.set_attributes(TdSysInfoLegacy::ATTRIBUTE_DEBUG_MODULE);
        s.set_vendor_id(0x8086);
        s.set_max_tdmrs(64);
        s.set_max_reserved_per_tdmr(16);
        s.set_pamt_entry_size(16);
        s.set_tdvps_xfam_dependent_size(1);
        s.set_xfam_fixed1(0x3);
        s.set_num_cpuid_config(100);
        s.set_cpuid_config(
            36,
            CpuidConfig::new(
                CpuidLeaf {
                    leaf: 7,
                    subleaf: Some(0),
                },
                CpuidValues::ZERO,
            ),
        )
        .unwrap();
        assert!(s.set_cpuid_config(37, CpuidConfig::default()).is_err());
        assert!(s.is_debug_module());
        assert_eq!(s.cpuid_configs().len(), 37);
        let b = s.as_bytes();
        assert_eq!(le32_at(b, 0), 1 << 31);
        assert_eq!(le32_at(b, 4), 0x8086);
        assert_eq!(le16_at(b, 32), 64);
        assert_eq!(le16_at(b, 34), 16);
        assert_eq!(le16_at(b, 36), 16);
        assert_eq!(b[54], 1);
        assert_eq!(le64_at(b, 88), 3);
        assert_eq!(le32_at(b, 128), 100);
        assert_eq!(le32_at(b, 132 + 36 * 24), 7);
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn tdmr_info_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 512)) {
            let t = TdmrInfo::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(t.as_bytes(), &bytes[..]);
        }

        #[test]
        fn td_params_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1024)) {
            let p = TdParams::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(p.as_bytes(), &bytes[..]);
        }

        #[test]
        fn tdmr_info_fields_round_trip(fields in any::<[u64; 8]>(), area in any::<(u64, u64)>(), slot in 0..MAX_RESERVED_AREAS) {
            let mut t = TdmrInfo::with_range(fields[0], fields[1]);
            t.set_pamt_1g(fields[2], fields[3]);
            t.set_pamt_2m(fields[4], fields[5]);
            t.set_pamt_4k(fields[6], fields[7]);
            t.set_reserved_area(slot, area.0, area.1).unwrap();
            let back = TdmrInfo::read_from_bytes(t.as_bytes()).unwrap();
            prop_assert_eq!(
                [back.base(), back.size(), back.pamt_1g_base(), back.pamt_1g_size(),
                 back.pamt_2m_base(), back.pamt_2m_size(), back.pamt_4k_base(), back.pamt_4k_size()],
                fields
            );
            prop_assert_eq!(back.reserved_area(slot), Some(ReservedArea::new(area.0, area.1)));
            for (i, field) in fields.iter().enumerate() {
                prop_assert_eq!(le64_at(t.as_bytes(), 8 * i), *field);
            }
        }

        #[test]
        fn td_params_fields_round_trip(
            attributes in any::<u64>(), xfam in any::<u64>(), max_vcpus in any::<u16>(),
            config_flags in any::<u64>(), tsc in any::<u16>(), cpuid in any::<(u32, u32, u32, u32)>(),
            index in 0..MAX_CPUID_CONFIGS,
        ) {
            let mut p = TdParams::new();
            p.set_attributes(attributes);
            p.set_xfam(xfam);
            p.set_max_vcpus(max_vcpus);
            p.set_config_flags(config_flags);
            p.set_tsc_frequency(tsc);
            let values = CpuidValues::new(cpuid.0, cpuid.1, cpuid.2, cpuid.3);
            p.set_cpuid_value(index, values).unwrap();
            let back = TdParams::read_from_bytes(p.as_bytes()).unwrap();
            prop_assert_eq!(back, p);
            prop_assert_eq!(back.attributes(), attributes);
            prop_assert_eq!(back.xfam(), xfam);
            prop_assert_eq!(back.max_vcpus(), max_vcpus);
            prop_assert_eq!(back.config_flags(), config_flags);
            prop_assert_eq!(back.tsc_frequency(), tsc);
            prop_assert_eq!(back.cpuid_value(index), Some(values));
            prop_assert_eq!(le32_at(p.as_bytes(), 256 + 16 * index + 12), cpuid.3);
        }
    }
}
