//! Metadata field identifiers, the values read through them, and the
//! platform numbers that go with module bring-up.
//!
//! This module owns:
//!
//! - [`MdFieldId`], the 64-bit metadata field identifier passed in RDX to
//!   `TDH.SYS.RD` (global scope) and to `TDH.MNG.RD`/`TDH.VP.RD` (TD and vCPU
//!   scope), with its CPUID sub-layout [`CpuidFieldCode`];
//! - [`field`], a named constant for every field ID the host side is known to
//!   use, and the table [`ALL_FIELDS`] that lists them for tools and the
//!   simulator, with [`field_name`] and [`lookup`] to go back from an ID to
//!   its name;
//! - the typed TD- and vCPU-scope fields a VMM reads ([`td_fields`], [`vcpu_fields`]:
//!   [`TdField`]s and [`VcpuField`]s whose value type says how many
//!   elements to read and how they combine), with [`TdOpState`] and
//!   [`TdLifecycle`];
//! - [`TdxFeatures0`], the bits of the `TDX_FEATURES0` field;
//! - [`KeyIdPartition`], the KeyID split reported by MSR
//!   `IA32_MKTME_KEYID_PARTITIONING` (0x87), and its validation;
//! - [`PamtPageType`], the page-type code kept in every PAMT entry;
//! - documented TDX module 1.5 defaults ([`PAMT_ENTRY_SIZE_1_5`],
//!   [`MAX_TDMRS_1_5`], [`MAX_RESERVED_PER_TDMR_1_5`]).
//!
//! It leaves to the caller: issuing the reads (that is `tdx-sys`/`tdx-api`),
//! deciding which features are required (policy), and truncating a value to
//! the width its field ID declares (see [`ElementSize::mask`]).
//!
//! Every field ID and feature bit names its source with a bracketed tag
//! such as `[S-GMD-c-1260]`; the tags are listed under [Sources](#sources).
//! Module-side numbers (field encoding, PAMT page types, the 1.5 limits)
//! come from Intel's TDX module source, `intel/tdx-module` at tag
//! `TDX_1.5.01`, and name the file they are in.
//!
//! Every type here is an open wrapper over its raw integer: an identifier or
//! feature word read back from a newer module survives
//! `from_raw`/`into_raw` (or `from_bits`/`into_bits`) unchanged, reserved and
//! unknown bits included.
//!
//! # Sources
//!
//! Linux (`torvalds/linux`) files at the commit given, and patch series
//! from the kernel mailing lists by subject and date (`NN` after a series
//! tag is the patch number in it):
//!
//! - `S-GMD-c-1260`: `arch/x86/virt/vmx/tdx/tdx_global_metadata.c` at
//!   `1260ed77798502de9c98020040d2995008de10cc`.
//! - `S-GMD-LIST`: "[PATCH 3/6] x86/virt/tdx: Refactor metadata reading
//!   with a clearer for loop" (Xu Yilun, 2025-12-02), which lists every
//!   global field Linux reads.
//! - `S-KVM-ARCH`: `arch/x86/kvm/vmx/tdx_arch.h` at
//!   `aedc8fa5141b2f1058c1bf986c75679dec04cdb6`.
//! - `S-TDXH-43db`: `arch/x86/virt/vmx/tdx/tdx.h` at
//!   `43db1111073049220381944af4a3b8a5400eda71`.
//! - `S-VERSION`: the 2025 patches that read the module's version through
//!   the global metadata.
//! - `S-UPDATE-v8`: the TDX module runtime-update series, v8 (Chao Gao,
//!   2026-04-27); `S-UPDATE-COMPAT`: its 2026 compatibility patches.
//! - `S-OLD-PROTO`: a prototype `tdx.h` with TDH.SYS.INFO, SHUTDOWN, UPDATE
//!   and the P-SEAMLDR structures, of unconfirmed provenance: fields
//!   tagged with it alone are kept for tools, not relied on.
//! - `S-DPAMT-v6`: the "Dynamic PAMT" series, v6 (2026-05-25).
//! - `S-CONNECT-v2`: "PCI/TSM: PCIe Link Encryption Establishment via TDX
//!   platform services", v2 (Xu Yilun, 2026-03-28).
//! - `S-QUOTE-v2`: "Enable DICE-based TDX Quoting Extension", v2
//!   (2026-06-18).
//! - `S-CMR-v4`: "[PATCH v4 8/8] x86/virt/tdx: Reduce TDMR's reserved
//!   areas by using CMRs to find memory holes" (Kai Huang, 2024-09-24), not
//!   merged.
//! - `S-FEAT-HITS`: 2025-2026 patches that name `TDX_FEATURES0` bits for
//!   features not merged yet.
//! - `S-NEWEST-TDXC`: a 2026 `arch/x86/virt/vmx/tdx/tdx.c` with Dynamic
//!   PAMT, runtime update and TDH.SYS.DISABLE, of unconfirmed provenance.
//!
//! Intel's TDX module source, `intel/tdx-module` at tag `TDX_1.5.01`:
//!
//! - `S-MOD-GSF`: `include/auto_gen/global_sys_fields_lookup.h` (global
//!   field IDs) and `src/common/metadata_handlers/metadata_sys.c` (their
//!   values).
//! - `S-MOD-TDF`: `include/auto_gen/tdr_tdcs_fields_lookup.h` (TD field
//!   IDs) and `tdr_tdcs_fields_lookup.c` (sizes, element counts, host read
//!   and write masks).
//! - `S-MOD-TDVPS`: `include/auto_gen/tdvps_fields_lookup.h` and `.c`
//!   (vCPU field IDs and masks).
//! - `S-MOD-1505`: `include/auto_gen/tdr_tdcs_fields_lookup.h` of module
//!   1.5.05 (the `TDX 1.5.05` commit of `intel/tdx-module`'s history):
//!   fields 1.5.01 does not have.
//! - `S-MOD-1516`: `include/auto_gen_1_5/global_sys_fields_lookup.h` and
//!   `.c` and `src/common/metadata_handlers/metadata_sys.c` of Intel TDX
//!   module 1.5.16+ source (the Dynamic PAMT fields; read in the 1.5.25
//!   drop).

use core::fmt;
use core::ops::Range;

use bitfield_struct::bitfield;

// ---------------------------------------------------------------------------
// Element size
// ---------------------------------------------------------------------------

/// Width of one element of a metadata field (`ELEMENT_SIZE_CODE`, bits 33:32
/// of [`MdFieldId`]).
///
/// The two-bit code has exactly four values, so this enum is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ElementSize {
    /// Code 0: 8-bit element.
    Bits8 = 0,
    /// Code 1: 16-bit element.
    Bits16 = 1,
    /// Code 2: 32-bit element.
    Bits32 = 2,
    /// Code 3: 64-bit element.
    Bits64 = 3,
}

impl ElementSize {
    /// Decodes a two-bit `ELEMENT_SIZE_CODE`; bits above bit 1 are ignored.
    #[must_use]
    pub const fn from_code(code: u8) -> Self {
        match code & 0b11 {
            0 => Self::Bits8,
            1 => Self::Bits16,
            2 => Self::Bits32,
            _ => Self::Bits64,
        }
    }

    /// The two-bit code as it appears in bits 33:32 of a field ID.
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// Element width in bytes (1, 2, 4 or 8).
    #[must_use]
    pub const fn bytes(self) -> u8 {
        1 << (self as u8)
    }

    /// Element width in bits (8, 16, 32 or 64).
    #[must_use]
    pub const fn bits(self) -> u32 {
        8 << (self as u32)
    }

    /// Mask of the low [`bits`](Self::bits) bits; the module zero-extends a
    /// value of this width into the 64-bit output register.
    #[must_use]
    pub const fn mask(self) -> u64 {
        u64::MAX >> (64 - self.bits())
    }
}

impl fmt::Display for ElementSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit", self.bits())
    }
}

// ---------------------------------------------------------------------------
// MdFieldId
// ---------------------------------------------------------------------------

/// A metadata field identifier (`MD_FIELD_ID`; `md_field_id_t` in the
/// module's `include/tdx_api_defs.h`).
///
/// | bits  | field                  |
/// |-------|------------------------|
/// | 23:0  | `FIELD_CODE`           |
/// | 31:24 | reserved               |
/// | 33:32 | `ELEMENT_SIZE_CODE`    |
/// | 37:34 | `LAST_ELEMENT_IN_FIELD`|
/// | 46:38 | `LAST_FIELD_IN_SEQUENCE`|
/// | 49:47 | reserved               |
/// | 50    | `INC_SIZE`             |
/// | 51    | `WRITE_MASK_VALID`     |
/// | 54:52 | `CONTEXT_CODE`         |
/// | 55    | reserved               |
/// | 61:56 | `CLASS_CODE`           |
/// | 62    | reserved               |
/// | 63    | `NON_ARCH`             |
///
/// The value is kept whole: [`from_raw`](Self::from_raw) stores every bit,
/// reserved ones included, so an ID the module hands back (for example the
/// next-field ID `TDH.SYS.RD` returns in RDX) round-trips exactly. Equality,
/// ordering and hashing compare all 64 bits.
///
/// An array field is read element by element: element `i` of a field whose
/// base ID is `b` is `b + i`, i.e. `i` added to `FIELD_CODE`
/// ([`element`](Self::element)).
///
/// `Display` prints the field's name when it is one of [`ALL_FIELDS`]
/// (array elements as `CMR_BASE[3]`), otherwise `0x` and 16 hex digits.
/// `Debug` prints the raw value and every decoded part.
///
/// ```
/// use tdx_types::metadata::{field, ElementSize, MdFieldId};
///
/// let id = MdFieldId::from_raw(0x9100_0001_0000_0008);
/// assert_eq!(id, field::MAX_TDMRS);
/// assert_eq!(id.class_code(), 0x11);
/// assert_eq!(id.element_size(), ElementSize::Bits16);
/// assert_eq!(id.field_code(), 8);
/// ```
#[bitfield(u64, debug = false)]
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MdFieldId {
    /// `FIELD_CODE`: the field within its class (array elements are
    /// consecutive codes). TD-scope CPUID fields use the
    /// [`CpuidFieldCode`] sub-layout here.
    #[bits(24)]
    pub field_code: u32,
    // Reserved, bits 31:24.
    #[bits(8)]
    __reserved_31_24: u8,
    /// `ELEMENT_SIZE_CODE`: 0 = 8, 1 = 16, 2 = 32, 3 = 64 bits
    /// (see [`ElementSize`]).
    #[bits(2)]
    pub element_size_code: u8,
    /// `LAST_ELEMENT_IN_FIELD` (meaningful in sequence headers).
    #[bits(4)]
    pub last_element_in_field: u8,
    /// `LAST_FIELD_IN_SEQUENCE` (meaningful in sequence headers).
    #[bits(9)]
    pub last_field_in_sequence: u16,
    // Reserved, bits 49:47.
    #[bits(3)]
    __reserved_49_47: u8,
    /// `INC_SIZE`.
    pub inc_size: bool,
    /// `WRITE_MASK_VALID`.
    pub write_mask_valid: bool,
    /// `CONTEXT_CODE`.
    #[bits(3)]
    pub context_code: u8,
    // Reserved, bit 55.
    #[bits(1)]
    __reserved_55: u8,
    /// `CLASS_CODE`.
    #[bits(6)]
    pub class_code: u8,
    // Reserved, bit 62.
    #[bits(1)]
    __reserved_62: u8,
    /// `NON_ARCH`: the field is not architectural (may change between module
    /// versions).
    pub non_arch: bool,
}

impl MdFieldId {
    /// Mask of `FIELD_CODE` (bits 23:0).
    pub const FIELD_CODE_MASK: u64 = 0x00FF_FFFF;

    /// Mask of the reserved bits: 31:24, 49:47, 55 and 62.
    pub const RESERVED_MASK: u64 = (0xFF << 24) | (0b111 << 47) | (1 << 55) | (1 << 62);

    /// Wraps a raw 64-bit field ID, keeping every bit (same as `from_bits`).
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self::from_bits(raw)
    }

    /// The raw 64-bit field ID, as passed in RDX (same as `into_bits`).
    #[must_use]
    pub const fn into_raw(self) -> u64 {
        self.into_bits()
    }

    /// The decoded `ELEMENT_SIZE_CODE`.
    #[must_use]
    pub const fn element_size(self) -> ElementSize {
        ElementSize::from_code(self.element_size_code())
    }

    /// Width of one element in bytes: 1, 2, 4 or 8.
    #[must_use]
    pub const fn element_size_bytes(self) -> u8 {
        self.element_size().bytes()
    }

    /// The bits of this ID that the layout above (`md_field_id_t`) reserves
    /// (0 for every ID this crate names).
    #[must_use]
    pub const fn reserved_bits(self) -> u64 {
        self.into_raw() & Self::RESERVED_MASK
    }

    /// The ID of element `index` of the array field whose base ID is `self`:
    /// `index` is added to `FIELD_CODE`, the other bits are kept.
    ///
    /// Returns `None` if the sum does not fit the 24-bit `FIELD_CODE`. The
    /// array's own length is not known here; the per-field helpers in
    /// [`field`] (e.g. [`field::cmr_base`]) check it.
    #[must_use]
    pub const fn element(self, index: u32) -> Option<MdFieldId> {
        let code = self.field_code() as u64 + index as u64;
        if code > Self::FIELD_CODE_MASK {
            None
        } else {
            Some(self.with_field_code(code as u32))
        }
    }

    /// The name of this ID if it is exactly one of [`ALL_FIELDS`]
    /// (see [`field_name`]).
    #[must_use]
    pub fn name(self) -> Option<&'static str> {
        field_name(self)
    }

    /// Mask of `CONTEXT_CODE` (bits 54:52).
    pub const CONTEXT_CODE_MASK: u64 = 0b111 << 52;

    /// `CONTEXT_CODE` of global (platform) fields: TDH.SYS.RD.
    pub const CONTEXT_SYS: u8 = 0;
    /// `CONTEXT_CODE` of TD-scope fields (TDR/TDCS): TDH.MNG.RD/WR.
    pub const CONTEXT_TD: u8 = 1;
    /// `CONTEXT_CODE` of vCPU-scope fields (TDVPS, TD VMCS): TDH.VP.RD/WR.
    pub const CONTEXT_VP: u8 = 2;

    /// The null field ID (all ones). A version-1 `TDH.MNG.RD` or
    /// `TDH.VP.RD` of it returns `TDX_METADATA_FIRST_FIELD_ID_IN_CONTEXT`
    /// with the first readable field's ID in RDX; the module also returns
    /// it in RDX when there is no next field.
    pub const NULL: Self = Self::from_raw(u64::MAX);

    /// True if this is a null field ID: every bit set except, possibly,
    /// `CONTEXT_CODE` (`is_null_field_id` in the module's
    /// `src/common/metadata_handlers/metadata_generic.h`).
    #[must_use]
    pub const fn is_null(self) -> bool {
        self.into_raw() | Self::CONTEXT_CODE_MASK == u64::MAX
    }

    /// True if the module accepts this ID for a single-element access
    /// (`md_check_as_single_element_id`,
    /// `src/common/metadata_handlers/metadata_generic.c`): no reserved bit
    /// set, `LAST_ELEMENT_IN_FIELD` and `LAST_FIELD_IN_SEQUENCE` both 0.
    /// `ELEMENT_SIZE_CODE`, `INC_SIZE`, `WRITE_MASK_VALID` and
    /// `CONTEXT_CODE` are not checked. TDH.SYS.RD, TDH.MNG.RD/WR and
    /// TDH.VP.RD/WR answer `TDX_METADATA_FIELD_ID_INCORRECT` otherwise.
    #[must_use]
    pub const fn is_single_element(self) -> bool {
        self.reserved_bits() == 0
            && self.last_element_in_field() == 0
            && self.last_field_in_sequence() == 0
    }

    /// True if `self` and `other` name the same element for the module:
    /// the same `CLASS_CODE` and `FIELD_CODE`. That is all the module's
    /// lookup compares (`md_find_entry_idx`,
    /// `src/common/metadata_handlers/metadata_generic.c`; the context
    /// comes from the leaf), so KVM's short form ([`td_field_id`]) and the
    /// module's own form ([`field::TD_ATTRIBUTES`] and the like) of a
    /// field are the same field. Compare IDs the module hands back (the
    /// next-field ID of a version-1 read) with this, not `==`.
    #[must_use]
    pub const fn same_field(self, other: Self) -> bool {
        self.class_code() == other.class_code() && self.field_code() == other.field_code()
    }
}

impl fmt::Debug for MdFieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("MdFieldId");
        s.field("raw", &format_args!("{:#018x}", self.into_raw()));
        if let Some(r) = lookup(*self) {
            s.field("name", &format_args!("{r}"));
        }
        s.field("class_code", &format_args!("{:#x}", self.class_code()))
            .field("context_code", &self.context_code())
            .field("element_size", &self.element_size())
            .field("field_code", &format_args!("{:#x}", self.field_code()))
            .field("last_element_in_field", &self.last_element_in_field())
            .field("last_field_in_sequence", &self.last_field_in_sequence())
            .field("inc_size", &self.inc_size())
            .field("write_mask_valid", &self.write_mask_valid())
            .field("non_arch", &self.non_arch());
        if self.reserved_bits() != 0 {
            s.field(
                "reserved_bits",
                &format_args!("{:#x}", self.reserved_bits()),
            );
        }
        s.finish()
    }
}

impl fmt::Display for MdFieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match lookup(*self) {
            Some(r) => fmt::Display::fmt(&r, f),
            None => write!(f, "{:#018x}", self.into_raw()),
        }
    }
}

/// Builds a TD- or vCPU-scope field ID the way KVM does:
/// `(non_arch << 63) | (class << 56) | (field & 0xFFFF_FFFF)`
/// ([S-KVM-ARCH]).
///
/// The result has `ELEMENT_SIZE_CODE` = 0 and `CONTEXT_CODE` = 0; KVM passes
/// IDs of this form to `TDH.MNG.RD`/`TDH.VP.RD` as they are. Bits 31:24 of
/// `field` land in the reserved bits 31:24, as in KVM's builder.
///
/// The module finds a field by `CLASS_CODE` and `FIELD_CODE` alone
/// (`md_find_entry_idx` in `src/common/metadata_handlers/metadata_generic.c`):
/// `ELEMENT_SIZE_CODE`, `INC_SIZE`, `WRITE_MASK_VALID`, `NON_ARCH` and
/// `CONTEXT_CODE` (which TDH.MNG.RD/WR and TDH.VP.RD/WR overwrite with
/// their own context) play no part. So an ID built here names the same
/// element as the module's own form of it ([`MdFieldId::same_field`]),
/// and the module reads it the same way, as long as `field` fits the
/// 24-bit `FIELD_CODE`: bits 31:24 of `field` are reserved bits, and an ID
/// with any of them set fails [`MdFieldId::is_single_element`]
/// (`TDX_METADATA_FIELD_ID_INCORRECT`). The value read is masked to the
/// field's real width, whatever `ELEMENT_SIZE_CODE` says.
///
/// # Panics
///
/// If `class` does not fit the 6-bit `CLASS_CODE` (`class > 63`). In a
/// `const` item this is a compile-time error.
#[must_use]
pub const fn td_field_id(non_arch: bool, class: u8, field: u32) -> MdFieldId {
    assert!(class < 64, "CLASS_CODE is 6 bits wide");
    MdFieldId::from_raw(((non_arch as u64) << 63) | ((class as u64) << 56) | field as u64)
}

// ---------------------------------------------------------------------------
// CPUID field-code sub-layout
// ---------------------------------------------------------------------------

/// The `FIELD_CODE` sub-layout of TD-scope CPUID fields (base
/// [`field::TD_CPUID_VALUES`], `0x9410000300000000`), as KVM builds it
/// ([S-KVM-ARCH]).
///
/// | bits  | field                                             |
/// |-------|---------------------------------------------------|
/// | 0     | element: 0 = EBX:EAX, 1 = EDX:ECX                 |
/// | 7:1   | sub-leaf bits 6:0 (all ones when not applicable)  |
/// | 8     | sub-leaf not applicable                           |
/// | 15:9  | leaf bits 6:0                                     |
/// | 16    | leaf bit 31                                       |
/// | 23:17 | reserved, 0                                       |
///
/// Only leaves whose bits 30:7 are 0 and sub-leaves whose bits 31:7 are 0
/// can be expressed ([S-KVM-ARCH]; the "all ones when not applicable" rule is
/// KVM's encoding). The upper bits of the `u32` (31:24) are outside the
/// 24-bit field code and stay 0 in every encoded value.
///
/// ```
/// use tdx_types::metadata::{field, CpuidFieldCode};
///
/// let code = CpuidFieldCode::encode(0x8000_0008, None, 0).unwrap();
/// assert_eq!(code.into_bits(), 0x1_11FE);
/// assert_eq!(code.leaf(), 0x8000_0008);
/// assert_eq!(code.subleaf(), None);
/// let id = field::td_cpuid_value(7, Some(0), 1).unwrap();
/// assert_eq!(id.into_raw(), 0x9410_0003_0000_0E01);
/// ```
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct CpuidFieldCode {
    /// Element index: 0 reads EBX:EAX, 1 reads EDX:ECX.
    #[bits(1)]
    pub element: u8,
    /// Sub-leaf bits 6:0; all ones when [`subleaf_na`](Self::subleaf_na).
    #[bits(7)]
    pub subleaf_lo: u8,
    /// The leaf takes no sub-leaf.
    pub subleaf_na: bool,
    /// Leaf bits 6:0.
    #[bits(7)]
    pub leaf_lo: u8,
    /// Leaf bit 31 (extended leaves `0x8000_00xx`).
    pub leaf_31: bool,
    // Bits 23:17 are reserved in the field code; 31:24 lie outside it.
    #[bits(15)]
    __reserved: u16,
}

impl CpuidFieldCode {
    /// Leaf bits that cannot be expressed (30:7).
    pub const UNREADABLE_LEAF_MASK: u32 = 0x7FFF_FF80;
    /// Sub-leaf bits that cannot be expressed (31:7).
    pub const UNREADABLE_SUBLEAF_MASK: u32 = 0xFFFF_FF80;

    /// Encodes `leaf`/`subleaf`/`element` (`None` sub-leaf = not applicable).
    ///
    /// Returns `None` if the leaf has any of bits 30:7 set, the sub-leaf any
    /// of bits 31:7, or `element > 1`.
    #[must_use]
    pub const fn encode(leaf: u32, subleaf: Option<u32>, element: u8) -> Option<Self> {
        if leaf & Self::UNREADABLE_LEAF_MASK != 0 || element > 1 {
            return None;
        }
        let base = Self::new()
            .with_element(element)
            .with_leaf_lo((leaf & 0x7F) as u8)
            .with_leaf_31(leaf & 0x8000_0000 != 0);
        match subleaf {
            None => Some(base.with_subleaf_na(true).with_subleaf_lo(0x7F)),
            Some(s) if s & Self::UNREADABLE_SUBLEAF_MASK != 0 => None,
            Some(s) => Some(base.with_subleaf_lo(s as u8)),
        }
    }

    /// Decodes a `FIELD_CODE` value.
    ///
    /// Returns `None` unless the code is canonical: bits 31:17 clear and, if
    /// the sub-leaf is marked not applicable, sub-leaf bits all ones. Every
    /// value this returns re-encodes to `code`.
    #[must_use]
    pub const fn from_field_code(code: u32) -> Option<Self> {
        let c = Self::from_bits(code);
        if code >> 17 != 0 || (c.subleaf_na() && c.subleaf_lo() != 0x7F) {
            None
        } else {
            Some(c)
        }
    }

    /// The `FIELD_CODE` value (same as `into_bits`).
    #[must_use]
    pub const fn field_code(self) -> u32 {
        self.into_bits()
    }

    /// The CPUID leaf (EAX input).
    #[must_use]
    pub const fn leaf(self) -> u32 {
        ((self.leaf_31() as u32) << 31) | self.leaf_lo() as u32
    }

    /// The CPUID sub-leaf (ECX input), or `None` if not applicable.
    #[must_use]
    pub const fn subleaf(self) -> Option<u32> {
        if self.subleaf_na() {
            None
        } else {
            Some(self.subleaf_lo() as u32)
        }
    }
}

// ---------------------------------------------------------------------------
// Field table
// ---------------------------------------------------------------------------

/// Which `*.RD` leaf serves a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldScope {
    /// Global (platform) metadata, read with `TDH.SYS.RD`.
    Global,
    /// TD-scope metadata (TDR/TDCS), read with `TDH.MNG.RD`.
    Td,
    /// vCPU-scope metadata (TDVPS), read with `TDH.VP.RD`.
    Vcpu,
}

/// How the elements of a named field are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldShape {
    /// A single element at exactly the named ID.
    Scalar,
    /// `len` elements: element `i` is `base + i`.
    Array {
        /// Number of elements.
        len: u32,
    },
    /// `len` entries of two elements each: `values[i][j]` is
    /// `base + 2i + j`, `j` in `0..2`.
    Pairs {
        /// Number of two-element entries.
        len: u32,
    },
    /// TD-scope CPUID values: `FIELD_CODE` is a [`CpuidFieldCode`].
    Cpuid,
}

/// Where an ID falls inside a named field (see [`lookup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldIndex {
    /// The field is a [`FieldShape::Scalar`].
    Scalar,
    /// Element `i` of a [`FieldShape::Array`].
    Element(u32),
    /// `values[index][half]` of a [`FieldShape::Pairs`].
    Pair {
        /// Entry index `i`.
        index: u32,
        /// Element within the entry, 0 or 1.
        half: u32,
    },
    /// A [`FieldShape::Cpuid`] element.
    Cpuid(CpuidFieldCode),
}

/// One named field ID with what the references say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldInfo {
    /// The field ID (the base ID for arrays).
    pub id: MdFieldId,
    /// The constant's name in [`field`], e.g. `"MAX_TDMRS"`.
    pub name: &'static str,
    /// The Linux `struct.member` (or KVM identifier) that holds the value.
    pub linux: &'static str,
    /// The value type the reference states for the Linux member, or `None`
    /// if it states none. Compare with [`MdFieldId::element_size`]; the
    /// two disagree only where the constant's doc says so.
    pub declared_width: Option<ElementSize>,
    /// Which leaf serves it.
    pub scope: FieldScope,
    /// How its elements are addressed.
    pub shape: FieldShape,
    /// Source tag(s), listed under [Sources](self#sources).
    pub source: &'static str,
}

impl FieldInfo {
    /// Where `id` falls inside this field, if it does.
    ///
    /// A global field matches only its exact ID (element IDs of arrays:
    /// the base ID's upper bits with the element's field code). A TD- or
    /// vCPU-scope field matches as the module's lookup does
    /// (`md_find_entry_idx`, `src/common/metadata_handlers/metadata_generic.c`):
    /// by `CLASS_CODE` and `FIELD_CODE` only, whatever the element size,
    /// `NON_ARCH` or other bits say, so KVM's short form
    /// ([`td_field_id`]) resolves too; an ID whose `CONTEXT_CODE` names
    /// another non-global scope does not.
    #[must_use]
    pub fn index_of(&self, id: MdFieldId) -> Option<FieldIndex> {
        let raw = id.into_raw();
        let base = self.id.into_raw();
        let upper = !MdFieldId::FIELD_CODE_MASK;
        if self.scope == FieldScope::Global {
            if matches!(self.shape, FieldShape::Scalar) {
                return (raw == base).then_some(FieldIndex::Scalar);
            }
            if raw & upper != base & upper {
                return None;
            }
        } else {
            let ctx = id.context_code();
            if id.class_code() != self.id.class_code()
                || (ctx != MdFieldId::CONTEXT_SYS && ctx != self.id.context_code())
            {
                return None;
            }
            if matches!(self.shape, FieldShape::Scalar) {
                return (id.field_code() == self.id.field_code()).then_some(FieldIndex::Scalar);
            }
        }
        let code = id.field_code();
        let off = code.checked_sub(self.id.field_code());
        match (self.shape, off) {
            (FieldShape::Array { len }, Some(off)) if off < len => Some(FieldIndex::Element(off)),
            (FieldShape::Pairs { len }, Some(off)) if off / 2 < len => Some(FieldIndex::Pair {
                index: off / 2,
                half: off % 2,
            }),
            (FieldShape::Cpuid, _) => CpuidFieldCode::from_field_code(code).map(FieldIndex::Cpuid),
            _ => None,
        }
    }
}

/// A field ID resolved against [`ALL_FIELDS`]: the named field and the
/// element within it. `Display` prints `NAME`, `NAME[i]`, `NAME[i][j]` or
/// `NAME[leaf 0x7, subleaf 0x0][1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldRef {
    /// The named field.
    pub info: &'static FieldInfo,
    /// The element within it.
    pub index: FieldIndex,
}

impl fmt::Display for FieldRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.info.name)?;
        match self.index {
            FieldIndex::Scalar => Ok(()),
            FieldIndex::Element(i) => write!(f, "[{i}]"),
            FieldIndex::Pair { index, half } => write!(f, "[{index}][{half}]"),
            FieldIndex::Cpuid(c) => {
                write!(f, "[leaf {:#x}", c.leaf())?;
                if let Some(s) = c.subleaf() {
                    write!(f, ", subleaf {s:#x}")?;
                }
                write!(f, "][{}]", c.element())
            }
        }
    }
}

/// The name of `id` if it is exactly (all 64 bits) one of [`ALL_FIELDS`];
/// array elements other than the base ID give `None` (use [`lookup`]).
#[must_use]
pub fn field_name(id: MdFieldId) -> Option<&'static str> {
    ALL_FIELDS
        .iter()
        .find(|info| info.id == id)
        .map(|info| info.name)
}

/// Resolves `id` to a named field and the element within it, including
/// array elements (`CMR_BASE[3]`, `CPUID_CONFIG_VALUES[2][1]`) and TD-scope
/// CPUID values, with each field's matching rule ([`FieldInfo::index_of`]:
/// exact for global fields, class and field code for TD and vCPU fields).
/// Needs no allocation.
#[must_use]
pub fn lookup(id: MdFieldId) -> Option<FieldRef> {
    ALL_FIELDS
        .iter()
        .find_map(|info| info.index_of(id).map(|index| FieldRef { info, index }))
}

pub use field::ALL_FIELDS;

/// Number of named field IDs in [`field`] (the length of [`ALL_FIELDS`]).
pub const NAMED_FIELD_COUNT: usize = 83;

const _: () = assert!(ALL_FIELDS.len() == NAMED_FIELD_COUNT);

/// Number of `CMR_BASE`/`CMR_SIZE` elements (module `MAX_CMR`; `NUM_CMRS`
/// reads back this array size, not the populated count): `MAX_CMR` in the
/// module's `include/tdx_api_defs.h`.
pub const MAX_CMRS: u32 = 32;

/// Upper bound on `NUM_CPUID_CONFIG` that Linux enforces; also the length of
/// the `CPUID_CONFIG_LEAVES`/`CPUID_CONFIG_VALUES` arrays. [S-GMD-LIST]
pub const MAX_CPUID_CONFIG: u32 = 128;

/// Declares the named field IDs and builds [`ALL_FIELDS`] from the same list,
/// so the two cannot drift apart.
macro_rules! md_fields {
    ($(
        $(#[$attr:meta])*
        $name:ident = $id:expr => ($linux:literal, $width:expr, $scope:ident, $shape:expr, $source:literal);
    )*) => {
        $(
            $(#[$attr])*
            pub const $name: MdFieldId = $id;
        )*

        /// Every named field ID of this module, in declaration order, with
        /// its name, Linux member, declared width, scope, shape and source.
        pub const ALL_FIELDS: &[FieldInfo] = &[
            $(
                FieldInfo {
                    id: $name,
                    name: stringify!($name),
                    linux: $linux,
                    declared_width: $width,
                    scope: FieldScope::$scope,
                    shape: $shape,
                    source: $source,
                },
            )*
        ];
    };
}

/// Named metadata field IDs, as [`MdFieldId`] constants, plus the class
/// codes and element helpers that go with them. Each names its source
/// ([Sources](super#sources)).
///
/// Array constants (`CPUID_CONFIG_LEAVES`, `CPUID_CONFIG_VALUES`,
/// `CMR_BASE`, `CMR_SIZE`) are base IDs: element `i` is `base + i`, and for
/// `CPUID_CONFIG_VALUES` entry `values[i][j]` is `base + 2i + j`. Use the
/// helper functions here, which also check the array length.
///
/// Not named here (L2 VMs are out of scope): `TDCS_SIZE_PER_L2_VM` and
/// `TDVPS_SIZE_PER_L2_VM`, which the module serves (4096 and 3 × 4096
/// bytes, `src/common/metadata_handlers/metadata_sys.c`) at the IDs its
/// `include/auto_gen/global_sys_fields_lookup.h` lists.
pub mod field {
    use super::{
        CpuidFieldCode, ElementSize, FieldInfo, FieldScope, FieldShape, MAX_CMRS, MAX_CPUID_CONFIG,
        MdFieldId, td_field_id,
    };

    const U8: Option<ElementSize> = Some(ElementSize::Bits8);
    const U16: Option<ElementSize> = Some(ElementSize::Bits16);
    const U32: Option<ElementSize> = Some(ElementSize::Bits32);
    const U64: Option<ElementSize> = Some(ElementSize::Bits64);
    const UNSTATED: Option<ElementSize> = None;
    const SCALAR: FieldShape = FieldShape::Scalar;

    // --- Class codes (TD and vCPU scope), [S-KVM-ARCH] -------------------

    /// TDCS class "execution controls" (17); holds `TSC_OFFSET`,
    /// `TSC_MULTIPLIER`. [S-KVM-ARCH]
    pub const TD_CLASS_EXECUTION_CONTROLS: u8 = 17;
    /// TDVPS class "VMCS" (0): field = the VMCS field encoding. [S-KVM-ARCH]
    pub const TDVPS_CLASS_VMCS: u8 = 0;
    /// TDVPS class "guest GPR state" (16). [S-KVM-ARCH]
    pub const TDVPS_CLASS_GUEST_GPR: u8 = 16;
    /// TDVPS class "other guest state" (17); holds `VCPU_STATE_DETAILS`.
    /// [S-KVM-ARCH]
    pub const TDVPS_CLASS_OTHER_GUEST: u8 = 17;
    /// TDVPS class "management" (32); holds `PEND_NMI`. [S-KVM-ARCH]
    pub const TDVPS_CLASS_MANAGEMENT: u8 = 32;

    md_fields! {
        // --- Mainline Linux global metadata ---------------------------------

        /// `features.tdx_features0` (u64): feature bits, see
        /// [`TdxFeatures0`](super::TdxFeatures0). [S-GMD-c-1260]
        TDX_FEATURES0 = MdFieldId::from_raw(0x0A00_0003_0000_0008)
            => ("features.tdx_features0", U64, Global, SCALAR, "S-GMD-c-1260");
        /// `tdmr.max_tdmrs` (u16): most TDMRs TDH.SYS.CONFIG accepts. [S-GMD-c-1260]
        MAX_TDMRS = MdFieldId::from_raw(0x9100_0001_0000_0008)
            => ("tdmr.max_tdmrs", U16, Global, SCALAR, "S-GMD-c-1260");
        /// `tdmr.max_reserved_per_tdmr` (u16): reserved areas per TDMR. [S-GMD-c-1260]
        MAX_RESERVED_PER_TDMR = MdFieldId::from_raw(0x9100_0001_0000_0009)
            => ("tdmr.max_reserved_per_tdmr", U16, Global, SCALAR, "S-GMD-c-1260");
        /// `tdmr.pamt_4k_entry_size` (u16): bytes per 4K PAMT entry. [S-GMD-c-1260]
        PAMT_4K_ENTRY_SIZE = MdFieldId::from_raw(0x9100_0001_0000_0010)
            => ("tdmr.pamt_4k_entry_size", U16, Global, SCALAR, "S-GMD-c-1260");
        /// `tdmr.pamt_2m_entry_size` (u16): bytes per 2M PAMT entry. [S-GMD-c-1260]
        PAMT_2M_ENTRY_SIZE = MdFieldId::from_raw(0x9100_0001_0000_0011)
            => ("tdmr.pamt_2m_entry_size", U16, Global, SCALAR, "S-GMD-c-1260");
        /// `tdmr.pamt_1g_entry_size` (u16): bytes per 1G PAMT entry. [S-GMD-c-1260]
        PAMT_1G_ENTRY_SIZE = MdFieldId::from_raw(0x9100_0001_0000_0012)
            => ("tdmr.pamt_1g_entry_size", U16, Global, SCALAR, "S-GMD-c-1260");
        /// `td_ctrl.tdr_base_size` (u16): TDR size in bytes. [S-GMD-LIST]
        TDR_BASE_SIZE = MdFieldId::from_raw(0x9800_0001_0000_0000)
            => ("td_ctrl.tdr_base_size", U16, Global, SCALAR, "S-GMD-LIST");
        /// `td_ctrl.tdcs_base_size` (u16): TDCS size in bytes. [S-GMD-LIST]
        TDCS_BASE_SIZE = MdFieldId::from_raw(0x9800_0001_0000_0100)
            => ("td_ctrl.tdcs_base_size", U16, Global, SCALAR, "S-GMD-LIST");
        /// `td_ctrl.tdvps_base_size` (u16): TDVPS size in bytes. [S-GMD-LIST]
        TDVPS_BASE_SIZE = MdFieldId::from_raw(0x9800_0001_0000_0200)
            => ("td_ctrl.tdvps_base_size", U16, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.attributes_fixed0` (u64): TD attribute bits that must be 0 where this is 0. [S-GMD-LIST]
        ATTRIBUTES_FIXED0 = MdFieldId::from_raw(0x1900_0003_0000_0000)
            => ("td_conf.attributes_fixed0", U64, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.attributes_fixed1` (u64): TD attribute bits that must be 1. [S-GMD-LIST]
        ATTRIBUTES_FIXED1 = MdFieldId::from_raw(0x1900_0003_0000_0001)
            => ("td_conf.attributes_fixed1", U64, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.xfam_fixed0` (u64): XFAM bits that must be 0 where this is 0. [S-GMD-LIST]
        XFAM_FIXED0 = MdFieldId::from_raw(0x1900_0003_0000_0002)
            => ("td_conf.xfam_fixed0", U64, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.xfam_fixed1` (u64): XFAM bits that must be 1. [S-GMD-LIST]
        XFAM_FIXED1 = MdFieldId::from_raw(0x1900_0003_0000_0003)
            => ("td_conf.xfam_fixed1", U64, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.num_cpuid_config` (u16, Linux requires ≤ [`MAX_CPUID_CONFIG`]). [S-GMD-LIST]
        NUM_CPUID_CONFIG = MdFieldId::from_raw(0x9900_0001_0000_0004)
            => ("td_conf.num_cpuid_config", U16, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.max_vcpus_per_td` (u16). [S-GMD-LIST]
        ///
        /// Not served by module 1.5.01 (its `global_sys_fields_lookup.h`
        /// has no such field: TDH.SYS.RD answers
        /// `TDX_METADATA_FIELD_ID_INCORRECT`); there the only limit is the
        /// architectural one, 0xFFFF vCPUs (`MAX_VCPUS` in the module's
        /// `src/common/data_structures/tdx_tdvps.h`).
        MAX_VCPUS_PER_TD = MdFieldId::from_raw(0x9900_0001_0000_0008)
            => ("td_conf.max_vcpus_per_td", U16, Global, SCALAR, "S-GMD-LIST");
        /// `td_conf.cpuid_config_leaves[i]` (u64: leaf in bits 31:0, sub-leaf in 63:32, sub-leaf `!0` = none); array base, element `i` = base + i ([`cpuid_config_leaf`]). [S-GMD-LIST]
        CPUID_CONFIG_LEAVES = MdFieldId::from_raw(0x9900_0003_0000_0400)
            => ("td_conf.cpuid_config_leaves", U64, Global,
                FieldShape::Array { len: MAX_CPUID_CONFIG }, "S-GMD-LIST");
        /// `td_conf.cpuid_config_values[i][j]` (u64 × 2: EBX:EAX, EDX:ECX); array base, `values[i][j]` = base + 2i + j ([`cpuid_config_value`]). [S-GMD-LIST]
        CPUID_CONFIG_VALUES = MdFieldId::from_raw(0x9900_0003_0000_0500)
            => ("td_conf.cpuid_config_values", U64, Global,
                FieldShape::Pairs { len: MAX_CPUID_CONFIG }, "S-GMD-LIST");

        // --- 2025–2026 additions ---------------------------------------------

        /// `version.minor_version` (u16): module minor version. [S-VERSION]
        MINOR_VERSION = MdFieldId::from_raw(0x0800_0001_0000_0003)
            => ("version.minor_version", U16, Global, SCALAR, "S-VERSION");
        /// `version.major_version` (u16): module major version. [S-VERSION]
        MAJOR_VERSION = MdFieldId::from_raw(0x0800_0001_0000_0004)
            => ("version.major_version", U16, Global, SCALAR, "S-VERSION");
        /// `version.update_version` (u16): module update version. [S-VERSION]
        UPDATE_VERSION = MdFieldId::from_raw(0x0800_0001_0000_0005)
            => ("version.update_version", U16, Global, SCALAR, "S-VERSION");
        /// `handoff.module_hv` (u16): handoff version; read only if `TD_PRESERVING` is set. [S-UPDATE-v8; S-OLD-PROTO]
        MODULE_HV = MdFieldId::from_raw(0x8900_0001_0000_0000)
            => ("handoff.module_hv", U16, Global, SCALAR, "S-UPDATE-v8; S-OLD-PROTO");
        /// `min_update_hv` (type not stated; the ID encodes 16 bits): prototype only. [S-OLD-PROTO]
        MIN_UPDATE_HV = MdFieldId::from_raw(0x8900_0001_0000_0001)
            => ("min_update_hv", UNSTATED, Global, SCALAR, "S-OLD-PROTO");
        /// `no_downgrade` (u8): prototype only. [S-OLD-PROTO]
        NO_DOWNGRADE = MdFieldId::from_raw(0x8900_0000_0000_0002)
            => ("no_downgrade", U8, Global, SCALAR, "S-OLD-PROTO");
        /// `tdmr.pamt_page_bitmap_entry_bits` (u8, Dynamic PAMT only): bits per 4K page in the PAMT bitmap (1). [S-MOD-1516; S-DPAMT-v6]
        ///
        /// The module's own ID (8-bit element). Linux v6 reads it as
        /// `0x9100000100000013` (a 16-bit size code); TDH.SYS.RD ignores
        /// the element-size bits and matches class and field code only
        /// (`metadata_generic.c`), so both read the same value.
        PAMT_PAGE_BITMAP_ENTRY_BITS = MdFieldId::from_raw(0x9100_0000_0000_0013)
            => ("tdmr.pamt_page_bitmap_entry_bits", U8, Global, SCALAR, "S-MOD-1516; S-DPAMT-v6");
        /// `tdmr.min_dynamic_pamt_num_hkid_bits` (u8, Dynamic PAMT only): the fewest MK-TME KeyID bits with which TDH.SYS.CONFIG accepts Dynamic PAMT, `max(MAX_PA - 48, 0)`. [S-MOD-1516]
        MIN_DYNAMIC_PAMT_NUM_HKID_BITS = MdFieldId::from_raw(0x9100_0000_0000_0014)
            => ("tdmr.min_dynamic_pamt_num_hkid_bits", U8, Global, SCALAR, "S-MOD-1516");
        /// `ext.memory_pool_required_pages` (u32), **Jun 2026** ID: pages the module extensions need. [S-QUOTE-v2 04]
        EXT_MEMORY_POOL_REQUIRED_PAGES = MdFieldId::from_raw(0x3100_0002_0000_0000)
            => ("ext.memory_pool_required_pages", U32, Global, SCALAR, "S-QUOTE-v2 04");
        /// `ext.memory_pool_required_pages` (u16), **Mar 2026** ID, superseded by [`EXT_MEMORY_POOL_REQUIRED_PAGES`]. [S-CONNECT-v2 06]
        EXT_MEMORY_POOL_REQUIRED_PAGES_MAR2026 = MdFieldId::from_raw(0x3100_0001_0000_0000)
            => ("ext.memory_pool_required_pages", U16, Global, SCALAR, "S-CONNECT-v2 06");
        /// `ext.ext_required` (u8, boolean), **Jun 2026** ID; valid only after TDH.SYS.CONFIG. [S-QUOTE-v2 04]
        EXT_REQUIRED = MdFieldId::from_raw(0x3100_0000_0000_0001)
            => ("ext.ext_required", U8, Global, SCALAR, "S-QUOTE-v2 04");
        /// `ext.ext_required` (type not stated; the ID encodes 16 bits), **Mar 2026** ID, superseded by [`EXT_REQUIRED`]. [S-CONNECT-v2 06]
        EXT_REQUIRED_MAR2026 = MdFieldId::from_raw(0x3100_0001_0000_0001)
            => ("ext.ext_required", UNSTATED, Global, SCALAR, "S-CONNECT-v2 06");
        /// `quote.max_quote_size` (u32): valid only after TDH.QUOTE.INIT. [S-QUOTE-v2 08]
        MAX_QUOTE_SIZE = MdFieldId::from_raw(0x2300_0002_0000_0002)
            => ("quote.max_quote_size", U32, Global, SCALAR, "S-QUOTE-v2 08");
        /// `connect.ide_mt_page_count` (u16): TDX Connect IDE metadata pages. [S-CONNECT-v2 06]
        IDE_MT_PAGE_COUNT = MdFieldId::from_raw(0x3000_0001_0000_0001)
            => ("connect.ide_mt_page_count", U16, Global, SCALAR, "S-CONNECT-v2 06");
        /// `connect.spdm_mt_page_count` (u16): TDX Connect SPDM metadata pages. [S-CONNECT-v2 06]
        SPDM_MT_PAGE_COUNT = MdFieldId::from_raw(0x3000_0001_0000_0002)
            => ("connect.spdm_mt_page_count", U16, Global, SCALAR, "S-CONNECT-v2 06");
        /// `connect.iommu_mt_page_count` (u16): TDX Connect IOMMU metadata pages. [S-CONNECT-v2 06]
        IOMMU_MT_PAGE_COUNT = MdFieldId::from_raw(0x3000_0001_0000_0003)
            => ("connect.iommu_mt_page_count", U16, Global, SCALAR, "S-CONNECT-v2 06");
        /// `connect.spdm_max_dev_info_pages` (u16): TDX Connect SPDM device-info pages. [S-CONNECT-v2 06]
        SPDM_MAX_DEV_INFO_PAGES = MdFieldId::from_raw(0x3000_0001_0000_0007)
            => ("connect.spdm_max_dev_info_pages", U16, Global, SCALAR, "S-CONNECT-v2 06");

        // --- CMRs (proposed, not read by mainline Linux) ----------------------

        /// `NUM_CMRS` (u16, proposed series, not mainline): the module serves [`MAX_CMRS`] (= 32, the array size). [S-CMR-v4]
        NUM_CMRS = MdFieldId::from_raw(0x9000_0001_0000_0000)
            => ("NUM_CMRS (proposed)", U16, Global, SCALAR, "S-CMR-v4");
        /// `CMR_BASE[i]` (u64, proposed series): array base, element `i` = base + i, `i` < 32 ([`cmr_base`]); empty CMRs have size 0. [S-CMR-v4]
        CMR_BASE = MdFieldId::from_raw(0x9000_0003_0000_0080)
            => ("CMR_BASE (proposed)", U64, Global,
                FieldShape::Array { len: MAX_CMRS }, "S-CMR-v4");
        /// `CMR_SIZE[i]` (u64, proposed series): array base, element `i` = base + i, `i` < 32 ([`cmr_size`]). [S-CMR-v4]
        CMR_SIZE = MdFieldId::from_raw(0x9000_0003_0000_0100)
            => ("CMR_SIZE (proposed)", U64, Global,
                FieldShape::Array { len: MAX_CMRS }, "S-CMR-v4");

        // --- Global metadata of module 1.5.01 that Linux does not read ----

        /// `CONFIG_FLAGS_FIXED0` (u64): TD_PARAMS.CONFIG_FLAGS bits that may be 1 (1.5.01: 0x7, GPAW, FLEXIBLE_PENDING_VE, NO_RBP_MOD). [S-MOD-GSF]
        CONFIG_FLAGS_FIXED0 = MdFieldId::from_raw(0x9900_0003_0000_0006)
            => ("CONFIG_FLAGS_FIXED0 (module)", U64, Global, SCALAR, "S-MOD-GSF");
        /// `CONFIG_FLAGS_FIXED1` (u64): TD_PARAMS.CONFIG_FLAGS bits that must be 1 (1.5.01: 0). [S-MOD-GSF]
        CONFIG_FLAGS_FIXED1 = MdFieldId::from_raw(0x9900_0003_0000_0007)
            => ("CONFIG_FLAGS_FIXED1 (module)", U64, Global, SCALAR, "S-MOD-GSF");
        /// `IA32_ARCH_CAPABILITIES_CONFIG_MASK` (u64): the IA32_ARCH_CAPABILITIES bits TD_PARAMS may configure (1.5.01: 0x1180010). [S-MOD-GSF]
        IA32_ARCH_CAPABILITIES_CONFIG_MASK = MdFieldId::from_raw(0x9900_0003_0000_0600)
            => ("IA32_ARCH_CAPABILITIES_CONFIG_MASK (module)", U64, Global, SCALAR, "S-MOD-GSF");

        // --- TD scope (TDH.MNG.RD/WR), the module's own IDs -------------------
        //
        // Each is the module's full field ID (`MD_TDR_*`/`MD_TDCS_*_FIELD_ID`
        // in `include/auto_gen/tdr_tdcs_fields_lookup.h` of module 1.5.01):
        // CONTEXT_CODE 1 and the element size of the field. What a host may
        // read or write is per field, in the module's
        // `include/auto_gen/tdr_tdcs_fields_lookup.c`; "readable" below is
        // the production (non-debug) TD's read mask.

        /// TDR `FATAL` (u8, readable): the TD is in a fatal state. [S-MOD-TDF]
        TD_FATAL = MdFieldId::from_raw(0x8010_0000_0000_0001)
            => ("tdr.management_fields.fatal", U8, Td, SCALAR, "S-MOD-TDF");
        /// TDR `NUM_TDCX` (u32, readable): TDCS pages added. [S-MOD-TDF]
        TD_NUM_TDCX = MdFieldId::from_raw(0x8010_0002_0000_0002)
            => ("tdr.management_fields.num_tdcx", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDR `CHLDCNT` (u64, readable): 4K pages charged to the TD. [S-MOD-TDF]
        TD_CHLDCNT = MdFieldId::from_raw(0x8010_0003_0000_0004)
            => ("tdr.management_fields.chldcnt", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDR `LIFECYCLE_STATE` (u32, readable): see [`TdLifecycle`](super::TdLifecycle). [S-MOD-TDF]
        TD_LIFECYCLE_STATE = MdFieldId::from_raw(0x8010_0002_0000_0005)
            => ("tdr.management_fields.lifecycle_state", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDR `TDCX_PA[i]` (u64 × 9, readable): TDCS page `i` with the TD's HKID in its KeyID bits, 0 if not added. [S-MOD-TDF]
        TD_TDCX_PA = MdFieldId::from_raw(0x8010_0003_0000_0010)
            => ("tdr.management_fields.tdcx_pa", U64, Td, FieldShape::Array { len: 9 }, "S-MOD-TDF");
        /// TDR `TD_UUID` (u64 × 4, readable). [S-MOD-TDF]
        TD_UUID = MdFieldId::from_raw(0x8010_0003_0000_0020)
            => ("tdr.management_fields.td_uuid", U64, Td, FieldShape::Array { len: 4 }, "S-MOD-TDF");
        /// TDR `HKID` (u16, readable): the TD's private KeyID. [S-MOD-TDF]
        TD_HKID = MdFieldId::from_raw(0x8110_0001_0000_0001)
            => ("tdr.key_management_fields.hkid", U16, Td, SCALAR, "S-MOD-TDF");
        /// TDR `PKG_CONFIG_BITMAP` (u64, readable): packages where TDH.MNG.KEY.CONFIG ran. [S-MOD-TDF]
        TD_PKG_CONFIG_BITMAP = MdFieldId::from_raw(0x8110_0003_0000_0002)
            => ("tdr.key_management_fields.pkg_config_bitmap", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `NUM_VCPUS` (u32, readable): vCPUs TDH.VP.INIT numbered so far. [S-MOD-TDF]
        TD_NUM_VCPUS = MdFieldId::from_raw(0x9010_0002_0000_0001)
            => ("tdcs.management_fields.num_vcpus", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `NUM_ASSOC_VCPUS` (u32, readable): vCPUs associated with some logical processor. [S-MOD-TDF]
        TD_NUM_ASSOC_VCPUS = MdFieldId::from_raw(0x9010_0002_0000_0002)
            => ("tdcs.management_fields.num_assoc_vcpus", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `OP_STATE` (u32, readable): see [`TdOpState`](super::TdOpState). [S-MOD-TDF]
        TD_OP_STATE = MdFieldId::from_raw(0x9010_0002_0000_0004)
            => ("tdcs.management_fields.op_state", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `NUM_L2_VMS` (u16, readable). [S-MOD-TDF]
        TD_NUM_L2_VMS = MdFieldId::from_raw(0x9010_0001_0000_0005)
            => ("tdcs.management_fields.num_l2_vms", U16, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `ATTRIBUTES` (u64, readable): TD_PARAMS.ATTRIBUTES. [S-MOD-TDF]
        TD_ATTRIBUTES = MdFieldId::from_raw(0x1110_0003_0000_0000)
            => ("tdcs.executions_ctl_fields.attributes", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `XFAM` (u64, readable): TD_PARAMS.XFAM. [S-MOD-TDF]
        TD_XFAM = MdFieldId::from_raw(0x1110_0003_0000_0001)
            => ("tdcs.executions_ctl_fields.xfam", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `MAX_VCPUS` (u32, readable): TD_PARAMS.MAX_VCPUS. [S-MOD-TDF]
        TD_MAX_VCPUS = MdFieldId::from_raw(0x1110_0002_0000_0002)
            => ("tdcs.executions_ctl_fields.max_vcpus", U32, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `GPAW` (u8, readable): 1 for a 52-bit guest physical address width. [S-MOD-TDF]
        TD_GPAW = MdFieldId::from_raw(0x1110_0000_0000_0003)
            => ("tdcs.executions_ctl_fields.gpaw", U8, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `EPTP` (u64, readable): TD_PARAMS.EPTP_CONTROLS with the S-EPT root (TDCS page 3) in bits 51:12. [S-MOD-TDF]
        TD_EPTP = MdFieldId::from_raw(0x1110_0003_0000_0004)
            => ("tdcs.executions_ctl_fields.eptp", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `TSC_OFFSET` (u64, readable). KVM's `TD_TDCS_EXEC_TSC_OFFSET` is the short form of this field ([`td_field_id`]`(false, 17, 10)`). [S-MOD-TDF; S-KVM-ARCH]
        TSC_OFFSET = MdFieldId::from_raw(0x1110_0003_0000_000A)
            => ("tdcs.executions_ctl_fields.tsc_offset", U64, Td, SCALAR, "S-MOD-TDF; S-KVM-ARCH");
        /// TDCS `TSC_MULTIPLIER` (u64, readable). KVM's `TD_TDCS_EXEC_TSC_MULTIPLIER` is the short form ([`td_field_id`]`(false, 17, 11)`). [S-MOD-TDF; S-KVM-ARCH]
        TSC_MULTIPLIER = MdFieldId::from_raw(0x1110_0003_0000_000B)
            => ("tdcs.executions_ctl_fields.tsc_multiplier", U64, Td, SCALAR, "S-MOD-TDF; S-KVM-ARCH");
        /// TDCS `TSC_FREQUENCY` (u16, readable): TD_PARAMS.TSC_FREQUENCY, in units of 25 MHz. [S-MOD-TDF]
        TD_TSC_FREQUENCY = MdFieldId::from_raw(0x1110_0001_0000_000C)
            => ("tdcs.executions_ctl_fields.tsc_frequency", U16, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `NUM_CPUID_VALUES` (u16, readable): entries of the CPUID value table (64 in 1.5.01). [S-MOD-TDF]
        TD_NUM_CPUID_VALUES = MdFieldId::from_raw(0x9110_0001_0000_000E)
            => ("tdcs.executions_ctl_fields.num_cpuid_values", U16, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `HP_LOCK_TIMEOUT` (u64, in µs, readable and host-writable with a full write mask, 10 000 to 100 000 000). [S-MOD-TDF]
        TD_HP_LOCK_TIMEOUT = MdFieldId::from_raw(0x9110_0003_0000_0011)
            => ("tdcs.executions_ctl_fields.hp_lock_timeout", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `VM_CTLS[i]` (u64 × 4, readable; bit 0 host-writable). [S-MOD-TDF]
        TD_VM_CTLS = MdFieldId::from_raw(0x9110_0003_0000_0012)
            => ("tdcs.executions_ctl_fields.vm_ctls", U64, Td, FieldShape::Array { len: 4 }, "S-MOD-TDF");
        /// TDCS `CONFIG_FLAGS` (u64, readable): TD_PARAMS.CONFIG_FLAGS. [S-MOD-TDF]
        TD_CONFIG_FLAGS = MdFieldId::from_raw(0x1110_0003_0000_0016)
            => ("tdcs.executions_ctl_fields.config_flags", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `TD_CTLS` (u64, readable in debug TDs only). [S-MOD-TDF]
        TD_CTLS = MdFieldId::from_raw(0x1110_0003_0000_0017)
            => ("tdcs.executions_ctl_fields.td_ctls", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `TD_EPOCH` (u64, readable): the TLB-tracking epoch. [S-MOD-TDF]
        TD_EPOCH = MdFieldId::from_raw(0x9210_0003_0000_0000)
            => ("tdcs.epoch_tracking.epoch_and_refcount.td_epoch", U64, Td, SCALAR, "S-MOD-TDF");
        /// TDCS `MRTD[e]` (u64 × 6, readable): the SHA-384 build measurement, little-endian 8-byte elements; all zero before TDH.MR.FINALIZE. [S-MOD-TDF]
        TD_MRTD = MdFieldId::from_raw(0x1310_0003_0000_0000)
            => ("tdcs.measurement_fields.mr_td", U64, Td, FieldShape::Array { len: 6 }, "S-MOD-TDF");
        /// TDCS `MRCONFIGID[e]` (u64 × 6, readable): TD_PARAMS.MRCONFIGID. [S-MOD-TDF]
        TD_MRCONFIGID = MdFieldId::from_raw(0x1310_0003_0000_0010)
            => ("tdcs.measurement_fields.mr_config_id", U64, Td, FieldShape::Array { len: 6 }, "S-MOD-TDF");
        /// TDCS `MROWNER[e]` (u64 × 6, readable): TD_PARAMS.MROWNER. [S-MOD-TDF]
        TD_MROWNER = MdFieldId::from_raw(0x1310_0003_0000_0018)
            => ("tdcs.measurement_fields.mr_owner", U64, Td, FieldShape::Array { len: 6 }, "S-MOD-TDF");
        /// TDCS `MROWNERCONFIG[e]` (u64 × 6, readable): TD_PARAMS.MROWNERCONFIG. [S-MOD-TDF]
        TD_MROWNERCONFIG = MdFieldId::from_raw(0x1310_0003_0000_0020)
            => ("tdcs.measurement_fields.mr_owner_config", U64, Td, FieldShape::Array { len: 6 }, "S-MOD-TDF");
        /// TDCS `RTMR[n][e]` (u64, 4 registers × 6 elements at base + 6n + e, [`td_rtmr`]): readable in debug TDs only (production TDs: `TDX_METADATA_FIELD_NOT_READABLE`). [S-MOD-TDF]
        TD_RTMR = MdFieldId::from_raw(0x1310_0003_0000_0040)
            => ("tdcs.measurement_fields.rtmr", U64, Td, FieldShape::Array { len: 24 }, "S-MOD-TDF");
        /// TDCS `CPUID_VALUES` (u64 × 2 per leaf: EBX:EAX, EDX:ECX, readable for valid, non-faulting leaves); base of the CPUID values, `FIELD_CODE` is a [`CpuidFieldCode`] ([`td_cpuid_value`]). KVM's `TD_MD_FIELD_ID_CPUID_VALUES` has the same value. [S-MOD-TDF; S-KVM-ARCH]
        TD_CPUID_VALUES = MdFieldId::from_raw(0x9410_0003_0000_0000)
            => ("tdcs.cpuid_config_vals", U64, Td, FieldShape::Cpuid, "S-MOD-TDF; S-KVM-ARCH");

        /// TDCS `TOPOLOGY_ENUM_CONFIGURED` (u8, readable), module 1.5.05 and later: 1 while every TDH.VP.INIT gave an x2APIC ID (version 1). [S-MOD-1505]
        TD_TOPOLOGY_ENUM_CONFIGURED = MdFieldId::from_raw(0x9110_0000_0000_0019)
            => ("tdcs.executions_ctl_fields.topology_enum_configured", U8, Td, SCALAR, "S-MOD-1505");
        /// TDCS `X2APIC_IDS[i]` (u32 × 576, readable), module 1.5.05 and later: the x2APIC ID TDH.VP.INIT version 1 gave VCPU_INDEX `i` (0 where none was given). [S-MOD-1505]
        TD_X2APIC_IDS = MdFieldId::from_raw(0x9C10_0002_0000_0000)
            => ("tdcs.x2apic_ids", U32, Td, FieldShape::Array { len: 576 }, "S-MOD-1505");

        // --- vCPU scope (TDH.VP.RD/WR), the module's own IDs -------------------
        //
        // `MD_TDVPS_*_FIELD_ID` of `include/auto_gen/tdvps_fields_lookup.{h,c}`
        // (module 1.5.01): CONTEXT_CODE 2. TD VMCS fields are class 0 with the
        // VMCS encoding as field code ([`tdvps_vmcs`]).

        /// TDVPS `VCPU_STATE` (u8; readable in debug TDs only): 0 uninitialized, 2 ready, 8 disabled. [S-MOD-TDVPS]
        VP_VCPU_STATE = MdFieldId::from_raw(0xA020_0000_0000_0000)
            => ("tdvps.management.state", U8, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `VCPU_INDEX` (u32, readable): the index TDH.VP.INIT gave the vCPU. [S-MOD-TDVPS]
        VP_VCPU_INDEX = MdFieldId::from_raw(0xA020_0002_0000_0002)
            => ("tdvps.management.vcpu_index", U32, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `NUM_TDVPS_PAGES` (u8, readable). [S-MOD-TDVPS]
        VP_NUM_TDVPS_PAGES = MdFieldId::from_raw(0xA020_0000_0000_0003)
            => ("tdvps.management.num_tdvps_pages", U8, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `ASSOC_LPID` (u32, readable): the logical processor the vCPU is associated with, `0xFFFF_FFFF` if none. [S-MOD-TDVPS]
        VP_ASSOC_LPID = MdFieldId::from_raw(0xA020_0002_0000_0004)
            => ("tdvps.management.assoc_lpid", U32, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `VCPU_EPOCH` (u64, readable). [S-MOD-TDVPS]
        VP_VCPU_EPOCH = MdFieldId::from_raw(0xA020_0003_0000_0006)
            => ("tdvps.management.vcpu_epoch", U64, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `PEND_NMI` (u8, readable and host-writable, mask 0xFF). KVM's `TD_VCPU_PEND_NMI` is the short form ([`td_field_id`]`(false, 32, 11)`). [S-MOD-TDVPS; S-KVM-ARCH]
        PEND_NMI = MdFieldId::from_raw(0x2020_0000_0000_000B)
            => ("tdvps.management.pend_nmi", U8, Vcpu, SCALAR, "S-MOD-TDVPS; S-KVM-ARCH");
        /// TDVPS `XFAM` (u64, readable): the TD's XFAM as the vCPU holds it. [S-MOD-TDVPS]
        VP_XFAM = MdFieldId::from_raw(0x2020_0003_0000_000C)
            => ("tdvps.management.xfam", U64, Vcpu, SCALAR, "S-MOD-TDVPS");
        /// TDVPS `TDVPS_PAGE_PA[i]` (u64 × 15, readable): the vCPU's pages. [S-MOD-TDVPS]
        VP_TDVPS_PAGE_PA = MdFieldId::from_raw(0xA020_0003_0000_0010)
            => ("tdvps.management.tdvps_pa", U64, Vcpu, FieldShape::Array { len: 15 }, "S-MOD-TDVPS");
        /// TDVPS `VCPU_STATE_DETAILS` (u64, readable; bit 0: a virtual interrupt is pending). KVM's `TD_VCPU_STATE_DETAILS_NON_ARCH` is the short form ([`td_field_id`]`(true, 17, 0x100)`). [S-MOD-TDVPS; S-KVM-ARCH]
        VCPU_STATE_DETAILS = MdFieldId::from_raw(0x9120_0003_0000_0100)
            => ("tdvps.guest_state.vcpu_state_details", U64, Vcpu, SCALAR, "S-MOD-TDVPS; S-KVM-ARCH");
    }

    /// `CPUID_CONFIG_LEAVES[i]`, or `None` if `i >= MAX_CPUID_CONFIG` (128).
    #[must_use]
    pub const fn cpuid_config_leaf(i: u32) -> Option<MdFieldId> {
        if i >= MAX_CPUID_CONFIG {
            return None;
        }
        CPUID_CONFIG_LEAVES.element(i)
    }

    /// `CPUID_CONFIG_VALUES[i][j]` = base + 2i + j (`j` = 0: EBX:EAX,
    /// 1: EDX:ECX), or `None` if `i >= 128` or `j > 1`.
    #[must_use]
    pub const fn cpuid_config_value(i: u32, j: u32) -> Option<MdFieldId> {
        if i >= MAX_CPUID_CONFIG || j > 1 {
            return None;
        }
        CPUID_CONFIG_VALUES.element(2 * i + j)
    }

    /// `CMR_BASE[i]`, or `None` if `i >= MAX_CMRS` (32).
    #[must_use]
    pub const fn cmr_base(i: u32) -> Option<MdFieldId> {
        if i >= MAX_CMRS {
            return None;
        }
        CMR_BASE.element(i)
    }

    /// `CMR_SIZE[i]`, or `None` if `i >= MAX_CMRS` (32).
    #[must_use]
    pub const fn cmr_size(i: u32) -> Option<MdFieldId> {
        if i >= MAX_CMRS {
            return None;
        }
        CMR_SIZE.element(i)
    }

    /// The TD-scope CPUID value ID for `leaf`/`subleaf` (`None` = sub-leaf
    /// not applicable), `element` 0 = EBX:EAX, 1 = EDX:ECX; `None` if the
    /// leaf or sub-leaf cannot be expressed (see [`CpuidFieldCode::encode`]).
    #[must_use]
    pub const fn td_cpuid_value(leaf: u32, subleaf: Option<u32>, element: u8) -> Option<MdFieldId> {
        match CpuidFieldCode::encode(leaf, subleaf, element) {
            Some(code) => Some(TD_CPUID_VALUES.with_field_code(code.field_code())),
            None => None,
        }
    }

    /// `TD_RTMR[n][e]` = [`TD_RTMR`] + 6n + e (`n` < 4, `e` < 6), or `None`
    /// past the array.
    #[must_use]
    pub const fn td_rtmr(n: u32, e: u32) -> Option<MdFieldId> {
        if n >= 4 || e >= 6 {
            return None;
        }
        TD_RTMR.element(6 * n + e)
    }

    /// A TDVPS VMCS-class field ID for VMCS field `encoding`, built with
    /// KVM's rule (`ELEMENT_SIZE_CODE` 0). [S-KVM-ARCH]
    #[must_use]
    pub const fn tdvps_vmcs(encoding: u32) -> MdFieldId {
        td_field_id(false, TDVPS_CLASS_VMCS, encoding)
    }
}

// ---------------------------------------------------------------------------
// Typed TD and vCPU fields
// ---------------------------------------------------------------------------

/// The TD operation state: TDCS `OP_STATE` ([`field::TD_OP_STATE`]),
/// `op_state_e` in the module's `include/auto_gen/op_state_lookup.h`.
///
/// An open newtype: a value with no name here is kept as read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TdOpState(pub u32);

impl TdOpState {
    /// Before TDH.MNG.INIT (TDH.MNG.RD is refused in this state).
    pub const UNINITIALIZED: Self = Self(0);
    /// After TDH.MNG.INIT: vCPUs and initial memory are added.
    pub const INITIALIZED: Self = Self(1);
    /// After TDH.MR.FINALIZE: the TD may run.
    pub const RUNNABLE: Self = Self(2);
    /// Migration: live export.
    pub const LIVE_EXPORT: Self = Self(3);
    /// Migration: paused export.
    pub const PAUSED_EXPORT: Self = Self(4);
    /// Migration: post export.
    pub const POST_EXPORT: Self = Self(5);
    /// Migration: memory import.
    pub const MEMORY_IMPORT: Self = Self(6);
    /// Migration: state import.
    pub const STATE_IMPORT: Self = Self(7);
    /// Migration: post import.
    pub const POST_IMPORT: Self = Self(8);
    /// Migration: live import.
    pub const LIVE_IMPORT: Self = Self(9);
    /// Migration: failed import.
    pub const FAILED_IMPORT: Self = Self(10);

    /// The module's name for this state (`"RUNNABLE"`), or `None`.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "UNINITIALIZED",
            1 => "INITIALIZED",
            2 => "RUNNABLE",
            3 => "LIVE_EXPORT",
            4 => "PAUSED_EXPORT",
            5 => "POST_EXPORT",
            6 => "MEMORY_IMPORT",
            7 => "STATE_IMPORT",
            8 => "POST_IMPORT",
            9 => "LIVE_IMPORT",
            10 => "FAILED_IMPORT",
            _ => return None,
        })
    }
}

impl fmt::Debug for TdOpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "TdOpState({n})"),
            None => write!(f, "TdOpState({})", self.0),
        }
    }
}

/// The TD lifecycle state: TDR `LIFECYCLE_STATE`
/// ([`field::TD_LIFECYCLE_STATE`]), `lifecycle_state_e` in the module's
/// `src/common/data_structures/td_control_structures.h`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TdLifecycle(pub u32);

impl TdLifecycle {
    /// After TDH.MNG.CREATE.
    pub const HKID_ASSIGNED: Self = Self(0);
    /// After TDH.MNG.KEY.CONFIG on every package.
    pub const KEYS_CONFIGURED: Self = Self(1);
    /// After TDH.MNG.VPFLUSHDONE.
    pub const BLOCKED: Self = Self(2);
    /// After TDH.MNG.KEY.FREEID.
    pub const TEARDOWN: Self = Self(3);

    /// The module's name for this state (`"TD_KEYS_CONFIGURED"`), or `None`.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "TD_HKID_ASSIGNED",
            1 => "TD_KEYS_CONFIGURED",
            2 => "TD_BLOCKED",
            3 => "TD_TEARDOWN",
            _ => return None,
        })
    }
}

impl fmt::Debug for TdLifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "TdLifecycle({n})"),
            None => write!(f, "TdLifecycle({})", self.0),
        }
    }
}

/// A SHA-384 digest as the module keeps it (MRTD, MRCONFIGID, MROWNER,
/// MROWNERCONFIG, RTMRs): 48 bytes, read as six little-endian 8-byte
/// elements.
pub type Sha384Digest = [u8; 48];

/// The most elements a [`FieldValue`] may span (the largest field a host
/// reads whole, a measurement register, has six).
pub const MAX_FIELD_ELEMENTS: u32 = 8;

/// A Rust value that one metadata field reads as: the elements it spans
/// and how they combine.
pub trait FieldValue: Sized {
    /// Elements the value spans, 1 to [`MAX_FIELD_ELEMENTS`]: element `i`
    /// is read with the field's base ID + `i` ([`MdFieldId::element`]).
    /// tdx-api's typed reads refuse another count when they are built (a
    /// `const` assertion: `cargo build` reports it, `cargo check` does not),
    /// never by a panic at run time.
    const ELEMENTS: u32;

    /// The value from its elements as the module returned them (each
    /// already masked to the field's width); `elements.len()` is
    /// [`ELEMENTS`](Self::ELEMENTS).
    fn from_elements(elements: &[u64]) -> Self;
}

macro_rules! scalar_field_value {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            const ELEMENTS: u32 = 1;
            fn from_elements(elements: &[u64]) -> Self {
                // The module masks the value to the field's width, which
                // is this type's for every field typed with it.
                elements[0] as $t
            }
        }
    )*};
}
scalar_field_value!(u8, u16, u32, u64);

impl FieldValue for bool {
    const ELEMENTS: u32 = 1;
    fn from_elements(elements: &[u64]) -> Self {
        elements[0] != 0
    }
}

impl FieldValue for TdOpState {
    const ELEMENTS: u32 = 1;
    fn from_elements(elements: &[u64]) -> Self {
        Self(elements[0] as u32)
    }
}

impl FieldValue for TdLifecycle {
    const ELEMENTS: u32 = 1;
    fn from_elements(elements: &[u64]) -> Self {
        Self(elements[0] as u32)
    }
}

impl FieldValue for Sha384Digest {
    const ELEMENTS: u32 = 6;
    fn from_elements(elements: &[u64]) -> Self {
        let mut out = [0; 48];
        for (chunk, e) in out.chunks_exact_mut(8).zip(elements) {
            chunk.copy_from_slice(&e.to_le_bytes());
        }
        out
    }
}

mod context {
    pub trait Sealed {}
}

/// The context of a [`TypedField`] (sealed): [`TdContext`] or
/// [`VcpuContext`].
pub trait FieldContext: context::Sealed {
    /// Which leaf reads fields of this context.
    const SCOPE: FieldScope;
}

/// TD-scope fields (TDR/TDCS), read with TDH.MNG.RD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdContext {}

/// vCPU-scope fields (TDVPS, TD VMCS), read with TDH.VP.RD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuContext {}

impl context::Sealed for TdContext {}
impl context::Sealed for VcpuContext {}
impl FieldContext for TdContext {
    const SCOPE: FieldScope = FieldScope::Td;
}
impl FieldContext for VcpuContext {
    const SCOPE: FieldScope = FieldScope::Vcpu;
}

/// A field of context `C` whose value reads as `T`: its base ID, and,
/// through `T`, how many elements make the value. The constants are in
/// [`td_fields`] ([`TdField`]s, TDH.MNG.RD) and [`vcpu_fields`] ([`VcpuField`]s,
/// TDH.VP.RD); the context in the type keeps a vCPU field from being read
/// with the TD leaf.
///
/// ```
/// use tdx_types::metadata::{field, td_fields, FieldScope, FieldValue};
///
/// assert_eq!(td_fields::MRTD.id(), field::TD_MRTD);
/// assert_eq!(td_fields::MRTD.scope(), FieldScope::Td);
/// let ids: Vec<_> = td_fields::MRTD.element_ids().collect();
/// assert_eq!(ids.len(), 6);
/// assert_eq!(ids[5].into_raw(), 0x1310_0003_0000_0005);
/// let digest = <[u8; 48]>::from_elements(&[1, 0, 0, 0, 0, 1 << 56]);
/// assert_eq!((digest[0], digest[47]), (1, 1));
/// ```
pub struct TypedField<C, T> {
    id: MdFieldId,
    _kind: core::marker::PhantomData<FieldKind<C, T>>,
}

/// What [`TypedField`] carries in its type only (covariant, `Send` and
/// `Sync` whatever `C` and `T` are).
type FieldKind<C, T> = (fn() -> C, fn() -> T);

/// A typed TD-scope field.
pub type TdField<T> = TypedField<TdContext, T>;
/// A typed vCPU-scope field.
pub type VcpuField<T> = TypedField<VcpuContext, T>;

impl<C, T> Clone for TypedField<C, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C, T> Copy for TypedField<C, T> {}

impl<C, T> PartialEq for TypedField<C, T> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<C, T> Eq for TypedField<C, T> {}

impl<C: FieldContext, T> fmt::Debug for TypedField<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedField")
            .field("id", &self.id)
            .field("scope", &C::SCOPE)
            .field("value", &core::any::type_name::<T>())
            .finish()
    }
}

impl<C: FieldContext, T: FieldValue> TypedField<C, T> {
    /// A typed field at `id` (its element 0). The caller vouches that
    /// `id` is a field of context `C` whose elements `T` decodes.
    #[must_use]
    pub const fn new(id: MdFieldId) -> Self {
        Self {
            id,
            _kind: core::marker::PhantomData,
        }
    }

    /// The field's base ID (its element 0).
    #[must_use]
    pub const fn id(self) -> MdFieldId {
        self.id
    }

    /// Which leaf reads it: [`FieldScope::Td`] (TDH.MNG.RD) or
    /// [`FieldScope::Vcpu`] (TDH.VP.RD).
    #[must_use]
    pub const fn scope(self) -> FieldScope {
        C::SCOPE
    }

    /// The IDs of the elements that make the value, in order.
    pub fn element_ids(self) -> impl Iterator<Item = MdFieldId> {
        (0..T::ELEMENTS).filter_map(move |i| self.id.element(i))
    }
}

/// Typed TD-scope fields, read with TDH.MNG.RD (module 1.5.01 IDs; see
/// [`field`] for each one's doc and width). Every one of them is readable
/// by the host in any TD once TDH.MNG.INIT has run.
pub mod td_fields {
    use super::{Sha384Digest, TdField, TdLifecycle, TdOpState, field};

    const fn t<T: super::FieldValue>(id: super::MdFieldId) -> TdField<T> {
        TdField::new(id)
    }

    /// TDR `FATAL`.
    pub const FATAL: TdField<bool> = t(field::TD_FATAL);
    /// TDR `NUM_TDCX`.
    pub const NUM_TDCX: TdField<u32> = t(field::TD_NUM_TDCX);
    /// TDR `CHLDCNT`.
    pub const CHLDCNT: TdField<u64> = t(field::TD_CHLDCNT);
    /// TDR `LIFECYCLE_STATE`.
    pub const LIFECYCLE: TdField<TdLifecycle> = t(field::TD_LIFECYCLE_STATE);
    /// TDR `HKID`.
    pub const HKID: TdField<u16> = t(field::TD_HKID);
    /// TDR `PKG_CONFIG_BITMAP`.
    pub const PKG_CONFIG_BITMAP: TdField<u64> = t(field::TD_PKG_CONFIG_BITMAP);
    /// TDCS `NUM_VCPUS`.
    pub const NUM_VCPUS: TdField<u32> = t(field::TD_NUM_VCPUS);
    /// TDCS `NUM_ASSOC_VCPUS`.
    pub const NUM_ASSOC_VCPUS: TdField<u32> = t(field::TD_NUM_ASSOC_VCPUS);
    /// TDCS `OP_STATE`.
    pub const OP_STATE: TdField<TdOpState> = t(field::TD_OP_STATE);
    /// TDCS `NUM_L2_VMS`.
    pub const NUM_L2_VMS: TdField<u16> = t(field::TD_NUM_L2_VMS);
    /// TDCS `ATTRIBUTES`.
    pub const ATTRIBUTES: TdField<u64> = t(field::TD_ATTRIBUTES);
    /// TDCS `XFAM`.
    pub const XFAM: TdField<u64> = t(field::TD_XFAM);
    /// TDCS `MAX_VCPUS`.
    pub const MAX_VCPUS: TdField<u32> = t(field::TD_MAX_VCPUS);
    /// TDCS `GPAW` (true: 52-bit guest physical addresses).
    pub const GPAW: TdField<bool> = t(field::TD_GPAW);
    /// TDCS `EPTP`.
    pub const EPTP: TdField<u64> = t(field::TD_EPTP);
    /// TDCS `TSC_OFFSET`.
    pub const TSC_OFFSET: TdField<u64> = t(field::TSC_OFFSET);
    /// TDCS `TSC_MULTIPLIER`.
    pub const TSC_MULTIPLIER: TdField<u64> = t(field::TSC_MULTIPLIER);
    /// TDCS `TSC_FREQUENCY`, in units of 25 MHz.
    pub const TSC_FREQUENCY: TdField<u16> = t(field::TD_TSC_FREQUENCY);
    /// TDCS `HP_LOCK_TIMEOUT`, in microseconds.
    pub const HP_LOCK_TIMEOUT: TdField<u64> = t(field::TD_HP_LOCK_TIMEOUT);
    /// TDCS `CONFIG_FLAGS`.
    pub const CONFIG_FLAGS: TdField<u64> = t(field::TD_CONFIG_FLAGS);
    /// TDCS `TD_EPOCH`.
    pub const TD_EPOCH: TdField<u64> = t(field::TD_EPOCH);
    /// TDCS `MRTD`: zero until TDH.MR.FINALIZE.
    pub const MRTD: TdField<Sha384Digest> = t(field::TD_MRTD);
    /// TDCS `MRCONFIGID`.
    pub const MRCONFIGID: TdField<Sha384Digest> = t(field::TD_MRCONFIGID);
    /// TDCS `MROWNER`.
    pub const MROWNER: TdField<Sha384Digest> = t(field::TD_MROWNER);
    /// TDCS `MROWNERCONFIG`.
    pub const MROWNERCONFIG: TdField<Sha384Digest> = t(field::TD_MROWNERCONFIG);
}

/// Typed vCPU-scope fields, read with TDH.VP.RD (module 1.5.01 IDs; see
/// [`field`]). Every one of them is readable by the host in any TD once
/// the vCPU is initialized (TDH.VP.INIT).
pub mod vcpu_fields {
    use super::{VcpuField, field};

    const fn t<T: super::FieldValue>(id: super::MdFieldId) -> VcpuField<T> {
        VcpuField::new(id)
    }

    /// TDVPS `VCPU_INDEX`.
    pub const VCPU_INDEX: VcpuField<u32> = t(field::VP_VCPU_INDEX);
    /// TDVPS `NUM_TDVPS_PAGES`.
    pub const NUM_TDVPS_PAGES: VcpuField<u8> = t(field::VP_NUM_TDVPS_PAGES);
    /// TDVPS `ASSOC_LPID` (`0xFFFF_FFFF`: not associated).
    pub const ASSOC_LPID: VcpuField<u32> = t(field::VP_ASSOC_LPID);
    /// TDVPS `VCPU_EPOCH`.
    pub const VCPU_EPOCH: VcpuField<u64> = t(field::VP_VCPU_EPOCH);
    /// TDVPS `PEND_NMI`.
    pub const PEND_NMI: VcpuField<u8> = t(field::PEND_NMI);
    /// TDVPS `XFAM`.
    pub const XFAM: VcpuField<u64> = t(field::VP_XFAM);
    /// TDVPS `VCPU_STATE_DETAILS`.
    pub const VCPU_STATE_DETAILS: VcpuField<u64> = t(field::VCPU_STATE_DETAILS);
}

// ---------------------------------------------------------------------------
// TDX_FEATURES0
// ---------------------------------------------------------------------------

/// The `TDX_FEATURES0` metadata value ([`field::TDX_FEATURES0`]); each
/// bit names its source ([Sources](self#sources)).
///
/// Only the bits Linux refers to are named; every other bit is kept as read
/// (`from_bits(x).into_bits() == x`) and reported by
/// [`unknown_bits`](Self::unknown_bits). Which bits are required is the
/// caller's policy (Linux requires `NO_RBP_MOD`; KVM requires
/// `TOPOLOGY_ENUM`).
#[bitfield(u64, debug = false)]
#[derive(PartialEq, Eq, Hash)]
pub struct TdxFeatures0 {
    #[bits(1)]
    __bit_0: u8,
    /// Bit 1, `TD_PRESERVING`: runtime module update supported.
    /// [S-UPDATE-v8; S-OLD-PROTO]
    pub td_preserving: bool,
    #[bits(4)]
    __bits_5_2: u8,
    /// Bit 6, `TDXCONNECT`. [S-CONNECT-v2 06]
    pub tdxconnect: bool,
    #[bits(11)]
    __bits_17_7: u16,
    /// Bit 18, `NO_RBP_MOD` (Linux requires it). [S-TDXH-43db]
    pub no_rbp_mod: bool,
    #[bits(1)]
    __bit_19: u8,
    /// Bit 20, `TOPOLOGY_ENUM` (KVM requires it). [S-KVM-ARCH]
    pub topology_enum: bool,
    #[bits(2)]
    __bits_22_21: u8,
    /// Bit 23, `CLFLUSH_BEFORE_ALLOC` (proposed use). [S-FEAT-HITS]
    pub clflush_before_alloc: bool,
    #[bits(12)]
    __bits_35_24: u16,
    /// Bit 36, `DYNAMIC_PAMT` (Intel TDX module 1.5.16+, `tdx_features_enum0_t`). [S-FEAT-HITS; S-NEWEST-TDXC; S-MOD-1516]
    pub dynamic_pamt: bool,
    #[bits(2)]
    __bits_38_37: u8,
    /// Bit 39, `EXT`: module extensions. [S-CONNECT-v2 06; S-QUOTE-v2 03]
    pub ext: bool,
    #[bits(7)]
    __bits_46_40: u8,
    /// Bit 47, `UPDATE_COMPATIBILITY`. [S-UPDATE-COMPAT]
    pub update_compatibility: bool,
    #[bits(2)]
    __bits_49_48: u8,
    /// Bit 50, `QUOTE`: DICE quoting extension. [S-QUOTE-v2 07]
    pub quote: bool,
    #[bits(13)]
    __bits_63_51: u16,
}

impl TdxFeatures0 {
    /// The named bits, `(bit number, name)`, in bit order.
    pub const NAMED_BITS: &'static [(u32, &'static str)] = &[
        (1, "TD_PRESERVING"),
        (6, "TDXCONNECT"),
        (18, "NO_RBP_MOD"),
        (20, "TOPOLOGY_ENUM"),
        (23, "CLFLUSH_BEFORE_ALLOC"),
        (36, "DYNAMIC_PAMT"),
        (39, "EXT"),
        (47, "UPDATE_COMPATIBILITY"),
        (50, "QUOTE"),
    ];

    /// Mask of all named bits.
    pub const KNOWN_MASK: u64 = {
        let mut mask = 0;
        let mut i = 0;
        while i < Self::NAMED_BITS.len() {
            mask |= 1 << Self::NAMED_BITS[i].0;
            i += 1;
        }
        mask
    };

    /// `TD_PRESERVING` alone.
    pub const TD_PRESERVING: Self = Self::new().with_td_preserving(true);
    /// `TDXCONNECT` alone.
    pub const TDXCONNECT: Self = Self::new().with_tdxconnect(true);
    /// `NO_RBP_MOD` alone.
    pub const NO_RBP_MOD: Self = Self::new().with_no_rbp_mod(true);
    /// `TOPOLOGY_ENUM` alone.
    pub const TOPOLOGY_ENUM: Self = Self::new().with_topology_enum(true);
    /// `CLFLUSH_BEFORE_ALLOC` alone.
    pub const CLFLUSH_BEFORE_ALLOC: Self = Self::new().with_clflush_before_alloc(true);
    /// `DYNAMIC_PAMT` alone.
    pub const DYNAMIC_PAMT: Self = Self::new().with_dynamic_pamt(true);
    /// `EXT` alone.
    pub const EXT: Self = Self::new().with_ext(true);
    /// `UPDATE_COMPATIBILITY` alone.
    pub const UPDATE_COMPATIBILITY: Self = Self::new().with_update_compatibility(true);
    /// `QUOTE` alone.
    pub const QUOTE: Self = Self::new().with_quote(true);

    /// Whether every bit set in `required` is also set in `self`.
    #[must_use]
    pub const fn contains(self, required: Self) -> bool {
        self.into_bits() & required.into_bits() == required.into_bits()
    }

    /// The bits of `required` that `self` lacks.
    #[must_use]
    pub const fn missing(self, required: Self) -> Self {
        Self::from_bits(required.into_bits() & !self.into_bits())
    }

    /// Set bits this crate has no name for (kept, never dropped).
    #[must_use]
    pub const fn unknown_bits(self) -> u64 {
        self.into_bits() & !Self::KNOWN_MASK
    }
}

/// Lists the names of the named bits set in a feature word.
struct FeatureNames(u64);

/// A name that `Debug` prints without quotes.
struct Bare(&'static str);

impl fmt::Debug for Bare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for FeatureNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                TdxFeatures0::NAMED_BITS
                    .iter()
                    .filter(|(bit, _)| self.0 & (1 << bit) != 0)
                    .map(|&(_, name)| Bare(name)),
            )
            .finish()
    }
}

impl fmt::Debug for TdxFeatures0 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("TdxFeatures0");
        s.field("raw", &format_args!("{:#018x}", self.into_bits()))
            .field("set", &FeatureNames(self.into_bits()));
        if self.unknown_bits() != 0 {
            s.field("unknown", &format_args!("{:#x}", self.unknown_bits()));
        }
        s.finish()
    }
}

// ---------------------------------------------------------------------------
// KeyID partitioning
// ---------------------------------------------------------------------------

/// MSR number of `IA32_MKTME_KEYID_PARTITIONING` (Linux
/// `arch/x86/virt/vmx/tdx/tdx.c`; the module's `tdh_sys_init.c` reads it
/// too).
pub const MSR_IA32_MKTME_KEYID_PARTITIONING: u32 = 0x87;

/// The module's limit on HKIDs: the private (TDX) KeyID range must stay
/// below this (`MAX_HKIDS` in the module's
/// `src/common/data_structures/tdx_global_data.h`; `tdh_sys_init.c`
/// refuses a partition that reaches it).
pub const MAX_HKIDS: u32 = 2048;

/// MSR `IA32_MKTME_KEYID_PARTITIONING` (0x87): how the hardware KeyIDs are
/// split between MKTME (shared) and TDX (private), as Linux reads it in
/// `arch/x86/virt/vmx/tdx/tdx.c`.
///
/// KeyID 0 is the no-key default; KeyIDs `1..=nr_mktme_keyids` are MKTME
/// KeyIDs; the next `nr_tdx_keyids` are TDX private KeyIDs. The host uses the
/// first private KeyID as the global KeyID (for PAMT and module data) and
/// hands out the rest to TDs.
///
/// The accessors below compute with saturating arithmetic and are meaningful
/// only for a value that passes [`check`](Self::check).
///
/// ```
/// use tdx_types::metadata::KeyIdPartition;
///
/// let p = KeyIdPartition::from_bits((16 << 32) | 31);
/// assert_eq!(p.check(), Ok(()));
/// assert_eq!(p.global_keyid(), 32);
/// assert_eq!(p.guest_keyids(), 33..48);
/// ```
#[doc(alias = "IA32_MKTME_KEYID_PARTITIONING")]
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct KeyIdPartition {
    /// Bits 31:0: number of MKTME KeyIDs.
    pub nr_mktme_keyids: u32,
    /// Bits 63:32: number of TDX private KeyIDs.
    pub nr_tdx_keyids: u32,
}

/// Why a [`KeyIdPartition`] cannot be used for TDX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdPartitionError {
    /// No TDX private KeyIDs (bits 63:32 are 0): TDX is not enabled.
    #[error("no TDX private KeyIDs are partitioned (MSR 0x87 bits 63:32 are 0)")]
    NoTdxKeyIds,
    /// Only one TDX KeyID: Linux needs one global KeyID and at least one
    /// for guests.
    #[error("only {nr_tdx} TDX private KeyID; at least 2 are needed (1 global + guests)")]
    TooFewTdxKeyIds {
        /// The number of TDX KeyIDs found.
        nr_tdx: u32,
    },
    /// The last private KeyID is not below [`MAX_HKIDS`]; the module
    /// rejects this partition.
    #[error("last TDX private KeyID {last} is not below MAX_HKIDS ({max})")]
    AboveMaxHkids {
        /// The last private KeyID, `nr_mktme + nr_tdx`.
        last: u64,
        /// [`MAX_HKIDS`].
        max: u32,
    },
}

impl KeyIdPartition {
    /// The MSR this value is read from.
    pub const MSR: u32 = MSR_IA32_MKTME_KEYID_PARTITIONING;

    /// First TDX private KeyID: `nr_mktme_keyids + 1`.
    #[must_use]
    pub const fn tdx_keyid_start(self) -> u32 {
        self.nr_mktme_keyids().saturating_add(1)
    }

    /// The global KeyID Linux uses (for PAMTs and TDH.SYS.CONFIG's R8): the
    /// first private KeyID.
    #[must_use]
    pub const fn global_keyid(self) -> u32 {
        self.tdx_keyid_start()
    }

    /// All TDX private KeyIDs: `[start, start + nr_tdx)`.
    #[must_use]
    pub const fn private_keyids(self) -> Range<u32> {
        let start = self.tdx_keyid_start();
        start..start.saturating_add(self.nr_tdx_keyids())
    }

    /// The KeyIDs available to TDs: `[start + 1, start + nr_tdx)`, i.e.
    /// `nr_tdx - 1` KeyIDs (empty if `nr_tdx` < 2).
    #[must_use]
    pub const fn guest_keyids(self) -> Range<u32> {
        let start = self.tdx_keyid_start();
        let first = start.saturating_add(1);
        let end = start.saturating_add(self.nr_tdx_keyids());
        first..if end > first { end } else { first }
    }

    /// Checks the partition as Linux and the module do, in this order: at
    /// least one TDX KeyID; at least two (Linux, `arch/x86/virt/vmx/tdx/tdx.c`);
    /// the last private KeyID below [`MAX_HKIDS`] (the module's
    /// `tdh_sys_init.c`).
    ///
    /// # Errors
    ///
    /// The first rule that fails, as a [`KeyIdPartitionError`].
    pub const fn check(self) -> Result<(), KeyIdPartitionError> {
        let nr_tdx = self.nr_tdx_keyids();
        if nr_tdx == 0 {
            return Err(KeyIdPartitionError::NoTdxKeyIds);
        }
        if nr_tdx < 2 {
            return Err(KeyIdPartitionError::TooFewTdxKeyIds { nr_tdx });
        }
        let last = self.nr_mktme_keyids() as u64 + nr_tdx as u64;
        if last >= MAX_HKIDS as u64 {
            return Err(KeyIdPartitionError::AboveMaxHkids {
                last,
                max: MAX_HKIDS,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// PAMT page types and module 1.5 defaults
// ---------------------------------------------------------------------------

/// The page type kept in a PAMT entry (`pt`; the `PT_*` values in the
/// module's `src/common/memory_handlers/pamt_manager.h`).
///
/// An open newtype: module 2.0 adds values (TDX Connect types 9–13) that
/// have no name here. The field is 8 bits in module 1.5 and 5 bits in 2.0.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    zerocopy::IntoBytes,
    zerocopy::FromBytes,
    zerocopy::Immutable,
    zerocopy::KnownLayout,
)]
#[repr(transparent)]
pub struct PamtPageType(pub u8);

impl PamtPageType {
    /// `PT_NDA` (0): not assigned, i.e. free.
    pub const NDA: Self = Self(0);
    /// `PT_RSVD` (1): reserved area; PAMT pages themselves also read back
    /// as this.
    pub const RSVD: Self = Self(1);
    /// `PT_REG` (3): a TD private page (the only type that can be a 2M/1G
    /// leaf).
    pub const REG: Self = Self(3);
    /// `PT_TDR` (4): a TD root page.
    pub const TDR: Self = Self(4);
    /// `PT_TDCX` (5): a TDCS page or an extra TDVPS page.
    pub const TDCX: Self = Self(5);
    /// `PT_TDVPR` (6): a TDVPS root page.
    pub const TDVPR: Self = Self(6);
    /// `PT_EPT` (8): a Secure-EPT page.
    pub const EPT: Self = Self(8);
    /// `PT_PAMT` (15), Dynamic PAMT (Intel TDX module 1.5.16+, not
    /// 1.5.01): a 2M entry whose 4K entries live in a PAMT page pair
    /// (`page_type_t`, `src/common/memory_handlers/pamt_manager.h`).
    /// TDH.PHYMEM.PAGE.RDMD also reports a pair page, and with Dynamic PAMT
    /// a reserved-area page, as this type.
    pub const PAMT: Self = Self(15);

    /// The module's name for this type (`"PT_TDR"`), or `None`.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "PT_NDA",
            1 => "PT_RSVD",
            3 => "PT_REG",
            4 => "PT_TDR",
            5 => "PT_TDCX",
            6 => "PT_TDVPR",
            8 => "PT_EPT",
            15 => "PT_PAMT",
            _ => return None,
        })
    }
}

impl fmt::Debug for PamtPageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "PamtPageType({name})"),
            None => write!(f, "PamtPageType({})", self.0),
        }
    }
}

impl fmt::Display for PamtPageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "PT_UNKNOWN({})", self.0),
        }
    }
}

/// PAMT entry size in bytes at every level in module 1.5.01
/// (`PAMT_ENTRY_SIZE_IN_BYTES`); also what its `PAMT_*_ENTRY_SIZE` fields
/// read. A default only: read the real sizes from metadata. Module
/// `src/common/memory_handlers/pamt_manager.h`.
pub const PAMT_ENTRY_SIZE_1_5: u16 = 16;

/// `MAX_TDMRS` in module 1.5.01 (what [`field::MAX_TDMRS`] reads):
/// `src/common/data_structures/tdx_global_data.h`.
pub const MAX_TDMRS_1_5: u16 = 64;

/// `MAX_RESERVED_PER_TDMR` in module 1.5.01 (what
/// [`field::MAX_RESERVED_PER_TDMR`] reads): `MAX_RESERVED_AREAS` in
/// `include/tdx_api_defs.h`.
pub const MAX_RESERVED_PER_TDMR_1_5: u16 = 16;

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::field::*;
    use super::*;
    use proptest::prelude::*;

    extern crate std;
    use std::format;
    use std::string::ToString;
    use std::vec::Vec;

    // The known disagreements between the reference's stated Linux type and
    // the element size encoded in the ID. Kept as the reference gives them.
    const WIDTH_DISAGREEMENTS: &[MdFieldId] = &[];

    #[test]
    fn decode_max_tdmrs() {
        let id = MdFieldId::from_raw(0x9100_0001_0000_0008);
        assert_eq!(id.class_code(), 0x11);
        assert_eq!(id.context_code(), 0);
        assert_eq!(id.element_size_code(), 1);
        assert_eq!(id.element_size_bytes(), 2);
        assert_eq!(id.field_code(), 8);
        assert!(id.non_arch());
        assert!(!id.inc_size());
        assert!(!id.write_mask_valid());
        assert_eq!(id.last_element_in_field(), 0);
        assert_eq!(id.last_field_in_sequence(), 0);
        assert_eq!(id.reserved_bits(), 0);
        assert_eq!(id, MAX_TDMRS);
    }

    #[test]
    fn decode_cpuid_config_leaves() {
        let id = MdFieldId::from_raw(0x9900_0003_0000_0400);
        assert_eq!(id.class_code(), 0x19);
        assert_eq!(id.context_code(), 0);
        assert_eq!(id.element_size(), ElementSize::Bits64);
        assert_eq!(id.element_size_bytes(), 8);
        assert_eq!(id.field_code(), 0x400);
        assert!(id.non_arch());
        assert_eq!(id, CPUID_CONFIG_LEAVES);
    }

    #[test]
    fn decode_other_vectors() {
        assert_eq!(TDX_FEATURES0.class_code(), 0x0A);
        assert!(!TDX_FEATURES0.non_arch());
        assert_eq!(TD_CPUID_VALUES.class_code(), 0x14);
        assert_eq!(TD_CPUID_VALUES.context_code(), 1);
        assert_eq!(TD_CPUID_VALUES.element_size(), ElementSize::Bits64);
        assert_eq!(EXT_REQUIRED.element_size(), ElementSize::Bits8);
        assert_eq!(
            EXT_MEMORY_POOL_REQUIRED_PAGES.element_size(),
            ElementSize::Bits32
        );
    }

    #[test]
    fn builder_matches_kvm_rule() {
        // KVM's short forms ...
        let kvm = [
            (
                td_field_id(false, 17, 10),
                0x1100_0000_0000_000A,
                TSC_OFFSET,
            ),
            (
                td_field_id(false, 17, 11),
                0x1100_0000_0000_000B,
                TSC_MULTIPLIER,
            ),
            (td_field_id(false, 32, 11), 0x2000_0000_0000_000B, PEND_NMI),
            (
                td_field_id(true, 17, 0x100),
                0x9100_0000_0000_0100,
                VCPU_STATE_DETAILS,
            ),
        ];
        for (short, raw, module) in kvm {
            assert_eq!(short.into_raw(), raw);
            assert_eq!(short.element_size_code(), 0, "KVM form has size code 0");
            assert!(short.is_single_element());
            // ... name the module's fields (class and field code).
            assert!(short.same_field(module), "{module}");
            assert_ne!(short, module);
            assert_eq!(lookup(short).unwrap().info.id, module);
        }
        // The module's own forms (tdr_tdcs_fields_lookup.h,
        // tdvps_fields_lookup.h).
        assert_eq!(TSC_OFFSET.into_raw(), 0x1110_0003_0000_000A);
        assert_eq!(TSC_MULTIPLIER.into_raw(), 0x1110_0003_0000_000B);
        assert_eq!(PEND_NMI.into_raw(), 0x2020_0000_0000_000B);
        assert_eq!(VCPU_STATE_DETAILS.into_raw(), 0x9120_0003_0000_0100);
        assert_eq!(tdvps_vmcs(0x2010).into_raw(), 0x2010);
        assert_eq!(
            td_field_id(true, 63, u32::MAX).into_raw(),
            0xBF00_0000_FFFF_FFFF
        );
        // A field code wider than 24 bits lands in reserved bits.
        assert!(!td_field_id(false, 19, 1 << 24).is_single_element());
    }

    #[test]
    fn td_and_vcpu_ids_are_the_modules() {
        for (id, raw, class, size) in [
            (TD_FATAL, 0x8010_0000_0000_0001, 0, ElementSize::Bits8),
            (TD_HKID, 0x8110_0001_0000_0001, 1, ElementSize::Bits16),
            (TD_NUM_VCPUS, 0x9010_0002_0000_0001, 16, ElementSize::Bits32),
            (TD_OP_STATE, 0x9010_0002_0000_0004, 16, ElementSize::Bits32),
            (
                TD_ATTRIBUTES,
                0x1110_0003_0000_0000,
                17,
                ElementSize::Bits64,
            ),
            (TD_XFAM, 0x1110_0003_0000_0001, 17, ElementSize::Bits64),
            (TD_MAX_VCPUS, 0x1110_0002_0000_0002, 17, ElementSize::Bits32),
            (TD_EPTP, 0x1110_0003_0000_0004, 17, ElementSize::Bits64),
            (
                TD_TSC_FREQUENCY,
                0x1110_0001_0000_000C,
                17,
                ElementSize::Bits16,
            ),
            (TD_MRTD, 0x1310_0003_0000_0000, 19, ElementSize::Bits64),
            (
                TD_MRCONFIGID,
                0x1310_0003_0000_0010,
                19,
                ElementSize::Bits64,
            ),
            (TD_MROWNER, 0x1310_0003_0000_0018, 19, ElementSize::Bits64),
            (
                TD_MROWNERCONFIG,
                0x1310_0003_0000_0020,
                19,
                ElementSize::Bits64,
            ),
            (
                VP_VCPU_INDEX,
                0xA020_0002_0000_0002,
                32,
                ElementSize::Bits32,
            ),
        ] {
            assert_eq!(id.into_raw(), raw, "{id}");
            assert_eq!(id.class_code(), class, "{id}");
            assert_eq!(id.element_size(), size, "{id}");
            assert!(id.is_single_element(), "{id}");
        }
        for f in ALL_FIELDS.iter().filter(|f| f.scope != FieldScope::Global) {
            let want = if f.scope == FieldScope::Td { 1 } else { 2 };
            assert_eq!(f.id.context_code(), want, "{}", f.name);
        }
        assert_eq!(td_rtmr(0, 0), Some(TD_RTMR));
        assert_eq!(td_rtmr(3, 5).unwrap().into_raw(), 0x1310_0003_0000_0057);
        assert_eq!(td_rtmr(4, 0), None);
        assert_eq!(td_rtmr(0, 6), None);
        // Element IDs of the TD arrays resolve, by the module's rule.
        let r = lookup(MdFieldId::from_raw(0x1310_0000_0000_0005)).unwrap();
        assert_eq!((r.info.id, r.index), (TD_MRTD, FieldIndex::Element(5)));
        assert_eq!(r.to_string(), "TD_MRTD[5]");
        assert!(lookup(TD_MRTD.element(6).unwrap()).is_none());
        // A vCPU context code does not name a TD field.
        assert!(lookup(TD_ATTRIBUTES.with_context_code(2)).is_none());
    }

    #[test]
    fn null_and_single_element_ids() {
        assert!(MdFieldId::NULL.is_null());
        assert!(MdFieldId::from_raw(!MdFieldId::CONTEXT_CODE_MASK).is_null());
        assert!(MdFieldId::from_raw(!(1 << 52)).is_null());
        assert!(!MdFieldId::from_raw(u64::MAX - 1).is_null());
        assert!(!MdFieldId::NULL.is_single_element());
        for bit in [24, 31, 47, 49, 55, 62] {
            assert!(!MdFieldId::from_raw(1 << bit).is_single_element(), "{bit}");
        }
        for bit in [34, 37, 38, 46] {
            assert!(!MdFieldId::from_raw(1 << bit).is_single_element(), "{bit}");
        }
        for bit in [32, 33, 50, 51, 52, 53, 54, 63] {
            assert!(MdFieldId::from_raw(1 << bit).is_single_element(), "{bit}");
        }
        assert!(TD_ATTRIBUTES.same_field(td_field_id(false, 17, 0)));
        assert!(!TD_ATTRIBUTES.same_field(TD_XFAM));
        assert!(TD_ATTRIBUTES.same_field(TD_ATTRIBUTES.with_non_arch(true)));
    }

    #[test]
    fn typed_fields() {
        assert_eq!(td_fields::ATTRIBUTES.id(), TD_ATTRIBUTES);
        assert_eq!(td_fields::HKID.scope(), FieldScope::Td);
        assert_eq!(vcpu_fields::VCPU_INDEX.scope(), FieldScope::Vcpu);
        assert_eq!(td_fields::MRTD.element_ids().count(), 6);
        assert_eq!(td_fields::ATTRIBUTES.element_ids().count(), 1);
        assert_eq!(
            td_fields::MROWNER.element_ids().last(),
            TD_MROWNER.element(5)
        );
        assert!(bool::from_elements(&[1]));
        assert_eq!(u16::from_elements(&[0x1234]), 0x1234);
        assert_eq!(TdOpState::from_elements(&[2]), TdOpState::RUNNABLE);
        assert_eq!(
            TdLifecycle::from_elements(&[1]),
            TdLifecycle::KEYS_CONFIGURED
        );
        let d = Sha384Digest::from_elements(&[0x0807_0605_0403_0201, 0, 0, 0, 0, 0]);
        assert_eq!(&d[..9], &[1, 2, 3, 4, 5, 6, 7, 8, 0]);
        assert_eq!(format!("{:?}", TdOpState::RUNNABLE), "TdOpState(RUNNABLE)");
        assert_eq!(format!("{:?}", TdOpState(11)), "TdOpState(11)");
        assert_eq!(TdLifecycle::TEARDOWN.name(), Some("TD_TEARDOWN"));
        assert_eq!(TdLifecycle(4).name(), None);
        assert_eq!(td_fields::MRTD, td_fields::MRTD);
        assert!(format!("{:?}", td_fields::MRTD).contains("TD_MRTD"));
    }

    #[test]
    #[should_panic(expected = "CLASS_CODE")]
    fn builder_rejects_wide_class() {
        let _ = td_field_id(false, 64, 0);
    }

    #[test]
    fn element_addressing() {
        assert_eq!(
            CMR_BASE.element(3).unwrap().into_raw(),
            0x9000_0003_0000_0083
        );
        assert_eq!(cmr_size(31).unwrap().into_raw(), 0x9000_0003_0000_011F);
        assert_eq!(cmr_base(32), None);
        assert_eq!(
            cpuid_config_leaf(127).unwrap().into_raw(),
            0x9900_0003_0000_047F
        );
        assert_eq!(cpuid_config_leaf(128), None);
        assert_eq!(
            cpuid_config_value(3, 1).unwrap().into_raw(),
            0x9900_0003_0000_0507
        );
        assert_eq!(cpuid_config_value(0, 2), None);
        assert_eq!(cpuid_config_value(128, 0), None);
        let top = MdFieldId::from_raw(0x00FF_FFFF);
        assert_eq!(top.element(0), Some(top));
        assert_eq!(top.element(1), None);
        assert_eq!(MdFieldId::new().element(u32::MAX), None);
    }

    #[test]
    fn cpuid_field_code_vectors() {
        let c = CpuidFieldCode::encode(0x8000_0008, None, 0).unwrap();
        assert_eq!(c.field_code(), 0x1_11FE);
        assert_eq!(c.leaf(), 0x8000_0008);
        assert_eq!(c.subleaf(), None);
        let c = CpuidFieldCode::encode(7, Some(0), 1).unwrap();
        assert_eq!(c.field_code(), 0xE01);
        assert_eq!(CpuidFieldCode::from_field_code(0xE01), Some(c));
        assert_eq!(
            td_cpuid_value(7, Some(0), 1).unwrap().into_raw(),
            0x9410_0003_0000_0E01
        );
        assert_eq!(td_cpuid_value(0, Some(0), 0), Some(TD_CPUID_VALUES));
        // Not expressible.
        assert_eq!(CpuidFieldCode::encode(0x80, None, 0), None);
        assert_eq!(CpuidFieldCode::encode(0x4000_0000, None, 0), None);
        assert_eq!(CpuidFieldCode::encode(0xD, Some(0x80), 0), None);
        assert_eq!(CpuidFieldCode::encode(0xD, Some(1), 2), None);
        // Not canonical.
        assert_eq!(CpuidFieldCode::from_field_code(1 << 17), None);
        assert_eq!(CpuidFieldCode::from_field_code(0x100), None);
    }

    #[test]
    fn named_field_count() {
        assert_eq!(ALL_FIELDS.len(), 83);
        assert_eq!(NAMED_FIELD_COUNT, 83);
        let count = |scope| ALL_FIELDS.iter().filter(|f| f.scope == scope).count();
        assert_eq!(count(FieldScope::Global), 40);
        assert_eq!(count(FieldScope::Td), 34);
        assert_eq!(count(FieldScope::Vcpu), 9);
    }

    #[test]
    fn ids_and_names_are_unique_and_clean() {
        for (i, a) in ALL_FIELDS.iter().enumerate() {
            assert_eq!(a.id.reserved_bits(), 0, "{}", a.name);
            for b in &ALL_FIELDS[i + 1..] {
                assert_ne!(a.id, b.id, "{} / {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
    }

    /// The element size encoded in each ID must match the Linux type the
    /// reference states, except for the listed, documented disagreements.
    #[test]
    fn element_size_matches_declared_width() {
        for f in ALL_FIELDS {
            let Some(declared) = f.declared_width else {
                continue;
            };
            if WIDTH_DISAGREEMENTS.contains(&f.id) {
                assert_ne!(f.id.element_size(), declared, "{} now agrees", f.name);
            } else {
                assert_eq!(f.id.element_size(), declared, "{}", f.name);
            }
        }
        // Every global field with a stated type is checked.
        let checked = ALL_FIELDS
            .iter()
            .filter(|f| f.scope == FieldScope::Global && f.declared_width.is_some())
            .count();
        assert_eq!(checked, 38);
        assert_eq!(
            PAMT_PAGE_BITMAP_ENTRY_BITS.element_size(),
            ElementSize::Bits8
        );
    }

    #[test]
    fn name_lookup() {
        for f in ALL_FIELDS {
            assert_eq!(field_name(f.id), Some(f.name));
            assert_eq!(f.id.name(), Some(f.name));
            let r = lookup(f.id).unwrap();
            assert_eq!(r.info.name, f.name);
        }
        assert_eq!(field_name(MAX_TDMRS), Some("MAX_TDMRS"));
        assert_eq!(field_name(CMR_BASE.element(1).unwrap()), None);
        assert_eq!(field_name(MdFieldId::from_raw(0xDEAD)), None);
        assert_eq!(MAX_TDMRS.to_string(), "MAX_TDMRS");
        assert_eq!(cmr_base(3).unwrap().to_string(), "CMR_BASE[3]");
        assert_eq!(CMR_BASE.to_string(), "CMR_BASE[0]");
        assert_eq!(
            cpuid_config_value(2, 1).unwrap().to_string(),
            "CPUID_CONFIG_VALUES[2][1]"
        );
        assert_eq!(
            td_cpuid_value(7, Some(0), 1).unwrap().to_string(),
            "TD_CPUID_VALUES[leaf 0x7, subleaf 0x0][1]"
        );
        assert_eq!(
            td_cpuid_value(0x8000_0008, None, 0).unwrap().to_string(),
            "TD_CPUID_VALUES[leaf 0x80000008][0]"
        );
        assert_eq!(
            MdFieldId::from_raw(0xDEAD).to_string(),
            "0x000000000000dead"
        );
        // Past the end of an array is not a name.
        assert!(lookup(CMR_BASE.element(MAX_CMRS).unwrap()).is_none());
        // (The 128 entries Linux allows for end where the module's
        // IA32_ARCH_CAPABILITIES_CONFIG_MASK begins.)
        assert_eq!(
            lookup(CPUID_CONFIG_VALUES.element(2 * MAX_CPUID_CONFIG).unwrap())
                .unwrap()
                .info
                .id,
            IA32_ARCH_CAPABILITIES_CONFIG_MASK
        );
        assert!(lookup(CPUID_CONFIG_LEAVES.element(MAX_CPUID_CONFIG).unwrap()).is_none());
        let dbg = format!("{MAX_TDMRS:?}");
        assert!(dbg.contains("0x9100000100000008"), "{dbg}");
        assert!(dbg.contains("MAX_TDMRS"), "{dbg}");
        assert!(dbg.contains("class_code: 0x11"), "{dbg}");
    }

    #[test]
    fn every_array_element_resolves_to_its_field() {
        let mut seen = Vec::new();
        for i in 0..MAX_CMRS {
            for (base, f) in [(CMR_BASE, cmr_base(i)), (CMR_SIZE, cmr_size(i))] {
                let r = lookup(f.unwrap()).unwrap();
                assert_eq!(r.info.id, base);
                assert_eq!(r.index, FieldIndex::Element(i));
                seen.push(f.unwrap());
            }
        }
        for i in 0..MAX_CPUID_CONFIG {
            let r = lookup(cpuid_config_leaf(i).unwrap()).unwrap();
            assert_eq!(r.index, FieldIndex::Element(i));
            seen.push(cpuid_config_leaf(i).unwrap());
            for j in 0..2 {
                let id = cpuid_config_value(i, j).unwrap();
                let r = lookup(id).unwrap();
                assert_eq!(r.info.id, CPUID_CONFIG_VALUES);
                assert_eq!(r.index, FieldIndex::Pair { index: i, half: j });
                seen.push(id);
            }
        }
        // No array element collides with another named field.
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), (2 * MAX_CMRS + 3 * MAX_CPUID_CONFIG) as usize);
        for f in ALL_FIELDS.iter().filter(|f| f.shape == FieldShape::Scalar) {
            assert!(seen.binary_search(&f.id).is_err(), "{}", f.name);
        }
    }

    #[test]
    fn keyid_partition_examples() {
        let p = KeyIdPartition::from_bits((16 << 32) | 31);
        assert_eq!(p.nr_mktme_keyids(), 31);
        assert_eq!(p.nr_tdx_keyids(), 16);
        assert_eq!(p.tdx_keyid_start(), 32);
        assert_eq!(p.global_keyid(), 32);
        assert_eq!(p.guest_keyids(), 33..48);
        assert_eq!(p.guest_keyids().len(), 15);
        assert_eq!(p.private_keyids(), 32..48);
        assert_eq!(p.check(), Ok(()));
        assert_eq!(KeyIdPartition::MSR, 0x87);

        let none = KeyIdPartition::new().with_nr_mktme_keyids(63);
        assert_eq!(none.check(), Err(KeyIdPartitionError::NoTdxKeyIds));
        assert!(none.guest_keyids().is_empty());
        let one = none.with_nr_tdx_keyids(1);
        assert_eq!(
            one.check(),
            Err(KeyIdPartitionError::TooFewTdxKeyIds { nr_tdx: 1 })
        );
        assert!(one.guest_keyids().is_empty());
        // Last private KeyID 2047 is fine, 2048 is not.
        let edge = KeyIdPartition::new()
            .with_nr_mktme_keyids(2047 - 64)
            .with_nr_tdx_keyids(64);
        assert_eq!(edge.check(), Ok(()));
        let over = edge.with_nr_mktme_keyids(2048 - 64);
        assert_eq!(
            over.check(),
            Err(KeyIdPartitionError::AboveMaxHkids {
                last: 2048,
                max: 2048
            })
        );
        let huge = KeyIdPartition::from_bits(u64::MAX);
        assert!(huge.check().is_err());
        assert_eq!(huge.tdx_keyid_start(), u32::MAX);
    }

    #[test]
    fn feature_bits() {
        let f = TdxFeatures0::from_bits((1 << 1) | (1 << 18) | (1 << 20) | (1 << 36) | (1 << 63));
        assert!(f.td_preserving());
        assert!(f.no_rbp_mod());
        assert!(f.topology_enum());
        assert!(f.dynamic_pamt());
        assert!(!f.tdxconnect());
        assert!(!f.ext());
        assert!(!f.quote());
        assert_eq!(f.unknown_bits(), 1 << 63);
        assert!(f.contains(TdxFeatures0::NO_RBP_MOD));
        assert!(!f.contains(TdxFeatures0::QUOTE));
        assert_eq!(
            f.missing(TdxFeatures0::from_bits(
                TdxFeatures0::NO_RBP_MOD.into_bits() | TdxFeatures0::EXT.into_bits()
            )),
            TdxFeatures0::EXT
        );
        let bits = [
            (TdxFeatures0::TD_PRESERVING, 1),
            (TdxFeatures0::TDXCONNECT, 6),
            (TdxFeatures0::NO_RBP_MOD, 18),
            (TdxFeatures0::TOPOLOGY_ENUM, 20),
            (TdxFeatures0::CLFLUSH_BEFORE_ALLOC, 23),
            (TdxFeatures0::DYNAMIC_PAMT, 36),
            (TdxFeatures0::EXT, 39),
            (TdxFeatures0::UPDATE_COMPATIBILITY, 47),
            (TdxFeatures0::QUOTE, 50),
        ];
        let mut mask = 0;
        for (i, (v, bit)) in bits.iter().enumerate() {
            assert_eq!(v.into_bits(), 1 << bit);
            assert_eq!(TdxFeatures0::NAMED_BITS[i].0, *bit);
            mask |= 1 << bit;
        }
        assert_eq!(TdxFeatures0::KNOWN_MASK, mask);
        let dbg = format!("{f:?}");
        assert!(
            dbg.contains("TD_PRESERVING") && dbg.contains("unknown"),
            "{dbg}"
        );
    }

    #[test]
    fn pamt_page_types() {
        assert_eq!(PamtPageType::TDR.to_string(), "PT_TDR");
        assert_eq!(format!("{:?}", PamtPageType::EPT), "PamtPageType(PT_EPT)");
        assert_eq!(PamtPageType(9).name(), None);
        assert_eq!(PamtPageType(9).to_string(), "PT_UNKNOWN(9)");
        let named = [
            (PamtPageType::NDA, 0),
            (PamtPageType::RSVD, 1),
            (PamtPageType::REG, 3),
            (PamtPageType::TDR, 4),
            (PamtPageType::TDCX, 5),
            (PamtPageType::TDVPR, 6),
            (PamtPageType::EPT, 8),
            (PamtPageType::PAMT, 15),
        ];
        for (t, v) in named {
            assert_eq!(t.0, v);
            assert!(t.name().unwrap().starts_with("PT_"));
        }
        assert_eq!(PamtPageType::default(), PamtPageType::NDA);
    }

    #[test]
    fn module_1_5_defaults() {
        assert_eq!(PAMT_ENTRY_SIZE_1_5, 16);
        assert_eq!(MAX_TDMRS_1_5, 64);
        assert_eq!(MAX_RESERVED_PER_TDMR_1_5, 16);
        assert_eq!(MAX_CMRS, 32);
    }

    #[test]
    fn element_size_helpers() {
        for (code, bytes, mask) in [
            (0u8, 1u8, 0xFFu64),
            (1, 2, 0xFFFF),
            (2, 4, 0xFFFF_FFFF),
            (3, 8, u64::MAX),
        ] {
            let s = ElementSize::from_code(code);
            assert_eq!(s.code(), code);
            assert_eq!(s.bytes(), bytes);
            assert_eq!(s.bits(), u32::from(bytes) * 8);
            assert_eq!(s.mask(), mask);
        }
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        /// Any ID (reserved bits included) read back from the module
        /// round-trips unchanged.
        #[test]
        fn md_field_id_round_trip(raw in any::<u64>()) {
            let id = MdFieldId::from_raw(raw);
            prop_assert_eq!(id.into_raw(), raw);
            prop_assert_eq!(MdFieldId::from_bits(raw).into_bits(), raw);
            prop_assert_eq!(u64::from(MdFieldId::from(raw)), raw);
            // Re-assembling from the decoded parts plus the reserved bits
            // gives the same value.
            let rebuilt = MdFieldId::new()
                .with_field_code(id.field_code())
                .with_element_size_code(id.element_size_code())
                .with_last_element_in_field(id.last_element_in_field())
                .with_last_field_in_sequence(id.last_field_in_sequence())
                .with_inc_size(id.inc_size())
                .with_write_mask_valid(id.write_mask_valid())
                .with_context_code(id.context_code())
                .with_class_code(id.class_code())
                .with_non_arch(id.non_arch());
            prop_assert_eq!(rebuilt.into_raw() | id.reserved_bits(), raw);
            // Setters leave reserved bits alone.
            prop_assert_eq!(id.with_class_code(0).reserved_bits(), id.reserved_bits());
            // Formatting never fails.
            let _ = format!("{id} {id:?}");
        }

        #[test]
        fn md_field_id_element(raw in any::<u64>(), index in any::<u32>()) {
            let base = MdFieldId::from_raw(raw);
            let fits = u64::from(base.field_code()) + u64::from(index) <= MdFieldId::FIELD_CODE_MASK;
            match base.element(index) {
                Some(e) => {
                    prop_assert!(fits);
                    prop_assert_eq!(e.into_raw(), raw + u64::from(index));
                }
                None => prop_assert!(!fits),
            }
        }

        #[test]
        fn keyid_partition_round_trip(raw in any::<u64>()) {
            let p = KeyIdPartition::from_bits(raw);
            prop_assert_eq!(p.into_bits(), raw);
            prop_assert_eq!(u64::from(p.nr_tdx_keyids()) << 32 | u64::from(p.nr_mktme_keyids()), raw);
        }

        #[test]
        fn keyid_partition_valid(mktme in 0u32..2048, tdx in 0u32..2048) {
            let p = KeyIdPartition::new().with_nr_mktme_keyids(mktme).with_nr_tdx_keyids(tdx);
            let ok = tdx >= 2 && mktme + tdx < MAX_HKIDS;
            prop_assert_eq!(p.check().is_ok(), ok);
            if ok {
                let g = p.guest_keyids();
                prop_assert_eq!(g.len() as u32, tdx - 1);
                prop_assert_eq!(p.global_keyid(), mktme + 1);
                prop_assert!(!g.contains(&p.global_keyid()));
                prop_assert!(g.start > mktme);
                prop_assert!(g.end <= MAX_HKIDS);
                prop_assert_eq!(p.private_keyids().end, g.end);
            }
        }

        /// Unknown feature bits are kept.
        #[test]
        fn tdx_features0_round_trip(raw in any::<u64>()) {
            let f = TdxFeatures0::from_bits(raw);
            prop_assert_eq!(f.into_bits(), raw);
            let named = TdxFeatures0::new()
                .with_td_preserving(f.td_preserving())
                .with_tdxconnect(f.tdxconnect())
                .with_no_rbp_mod(f.no_rbp_mod())
                .with_topology_enum(f.topology_enum())
                .with_clflush_before_alloc(f.clflush_before_alloc())
                .with_dynamic_pamt(f.dynamic_pamt())
                .with_ext(f.ext())
                .with_update_compatibility(f.update_compatibility())
                .with_quote(f.quote());
            prop_assert_eq!(named.into_bits(), raw & TdxFeatures0::KNOWN_MASK);
            prop_assert_eq!(named.into_bits() | f.unknown_bits(), raw);
            prop_assert!(f.contains(named));
        }

        #[test]
        fn cpuid_field_code_encode_decode(
            leaf_lo in 0u32..128,
            leaf_31 in any::<bool>(),
            subleaf in proptest::option::of(0u32..128),
            element in 0u8..2,
        ) {
            let leaf = leaf_lo | if leaf_31 { 0x8000_0000 } else { 0 };
            let c = CpuidFieldCode::encode(leaf, subleaf, element).unwrap();
            prop_assert_eq!(c.leaf(), leaf);
            prop_assert_eq!(c.subleaf(), subleaf);
            prop_assert_eq!(c.element(), element);
            prop_assert!(c.field_code() <= 0x1_FFFF);
            prop_assert_eq!(CpuidFieldCode::from_field_code(c.field_code()), Some(c));
        }

        #[test]
        fn cpuid_field_code_decode_is_canonical(code in any::<u32>()) {
            if let Some(c) = CpuidFieldCode::from_field_code(code) {
                prop_assert_eq!(CpuidFieldCode::encode(c.leaf(), c.subleaf(), c.element()), Some(c));
                prop_assert_eq!(c.field_code(), code);
            }
        }
    }
}
