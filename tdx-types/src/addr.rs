//! Physical and guest-physical addresses, and page frame numbers.
//!
//! [`Hpa`], [`Gpa`] and [`Pfn`] are plain numbers: `Copy`, validated on
//! construction, never pointers. There is no way to dereference one. Whether
//! the host may touch the memory an address names is a question of
//! ownership, which the address types do not answer; see [`crate::space`].
//!
//! Width: the TDX module checks every HPA and GPA operand against the constant
//! 52 (`MAX_PA` in the module source), not against the platform's real
//! physical-address width, so these types do the same. The HKID bits that sit
//! just below bit 52 on a real platform are a property of the platform, not
//! of the address type; they are checked where the KeyID partition is known.
//!
//! Constructor ladder (after `x86_64::PhysAddr`): `try_new` checks and returns
//! an error, `new` checks and panics (usable in `const` context), `new_truncate`
//! drops the bits above 52, and rounding is explicit (`align_down`,
//! `align_up`). There is no unchecked constructor: a wrong address is not a
//! memory-safety matter in this crate, so nothing here needs `unsafe`.

use core::fmt;

/// Width of a physical or guest-physical address as the TDX module checks it.
pub const MAX_PA_BITS: u32 = 52;
/// One past the largest address the TDX module accepts (`1 << 52`).
pub const MAX_PA: u64 = 1 << MAX_PA_BITS;
/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size, 4 KiB.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Width of a page frame number: 52 - 12 bits.
pub const PFN_BITS: u32 = MAX_PA_BITS - PAGE_SHIFT;
/// One past the largest page frame number.
pub const MAX_PFN: u64 = 1 << PFN_BITS;

/// Why an address or frame number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AddrError {
    /// The value does not fit in 52 bits (40 bits for a frame number).
    #[error("{kind} {value:#x} does not fit in {bits} bits")]
    TooWide {
        /// Which kind of value was refused ("HPA", "GPA", "PFN").
        kind: &'static str,
        /// The refused value.
        value: u64,
        /// The width it had to fit in.
        bits: u32,
    },
    /// The value is not a multiple of the alignment the operation requires.
    #[error("{kind} {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// Which kind of value was refused.
        kind: &'static str,
        /// The refused value.
        value: u64,
        /// The required alignment in bytes (a power of two).
        align: u64,
    },
    /// Adding to the value left the 52-bit range.
    #[error("{kind} {value:#x} + {offset:#x} leaves the 52-bit range")]
    Overflow {
        /// Which kind of value overflowed.
        kind: &'static str,
        /// The base value.
        value: u64,
        /// The offset that was added.
        offset: u64,
    },
}

macro_rules! phys_addr_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address 0.
            pub const ZERO: Self = Self(0);

            #[doc = concat!("Checks that `addr` fits in 52 bits and makes it a ", $kind, ".")]
            #[inline]
            pub const fn try_new(addr: u64) -> Result<Self, AddrError> {
                if addr < MAX_PA {
                    Ok(Self(addr))
                } else {
                    Err(AddrError::TooWide { kind: $kind, value: addr, bits: MAX_PA_BITS })
                }
            }

            #[doc = concat!("Makes a ", $kind, " from `addr`.")]
            ///
            /// # Panics
            ///
            /// If `addr` does not fit in 52 bits. In `const` context this is
            /// a compile error.
            #[track_caller]
            #[inline]
            pub const fn new(addr: u64) -> Self {
                match Self::try_new(addr) {
                    Ok(a) => a,
                    Err(_) => panic!(concat!($kind, " wider than 52 bits")),
                }
            }

            /// Makes an address from the low 52 bits of `addr`, dropping the
            /// rest (for example KeyID bits a caller did not strip).
            pub const fn new_truncate(addr: u64) -> Self {
                Self(addr & (MAX_PA - 1))
            }

            /// Checks that `addr` fits in 52 bits and is a multiple of
            /// `align` (a power of two).
            #[inline]
            pub const fn try_new_aligned(addr: u64, align: u64) -> Result<Self, AddrError> {
                match Self::try_new(addr) {
                    Ok(a) => a.check_aligned(align),
                    Err(e) => Err(e),
                }
            }

            /// The raw value.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// True if the address is a multiple of `align` (a power of two).
            #[inline]
            pub const fn is_aligned(self, align: u64) -> bool {
                debug_assert!(align.is_power_of_two());
                self.0 & (align - 1) == 0
            }

            /// Returns `self` if it is a multiple of `align`, else an error.
            pub const fn check_aligned(self, align: u64) -> Result<Self, AddrError> {
                if self.is_aligned(align) {
                    Ok(self)
                } else {
                    Err(AddrError::Misaligned { kind: $kind, value: self.0, align })
                }
            }

            /// Rounds down to a multiple of `align` (a power of two).
            #[inline]
            pub const fn align_down(self, align: u64) -> Self {
                debug_assert!(align.is_power_of_two());
                Self(self.0 & !(align - 1))
            }

            /// Rounds up to a multiple of `align` (a power of two), or `None`
            /// if the result would not fit in 52 bits.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                debug_assert!(align.is_power_of_two());
                match self.0.checked_add(align - 1) {
                    Some(v) => match Self::try_new(v & !(align - 1)) {
                        Ok(a) => Some(a),
                        Err(_) => None,
                    },
                    None => None,
                }
            }

            /// The offset of the address inside its 4 KiB page.
            #[inline]
            pub const fn page_offset(self) -> u64 {
                self.0 & (PAGE_SIZE - 1)
            }

            /// `self + offset`, or an error if it leaves the 52-bit range.
            pub const fn checked_add(self, offset: u64) -> Result<Self, AddrError> {
                match self.0.checked_add(offset) {
                    Some(v) if v < MAX_PA => Ok(Self(v)),
                    _ => Err(AddrError::Overflow { kind: $kind, value: self.0, offset }),
                }
            }

            /// `self - offset`, or `None` below zero.
            pub const fn checked_sub(self, offset: u64) -> Option<Self> {
                match self.0.checked_sub(offset) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }

        impl fmt::UpperHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::UpperHex::fmt(&self.0, f)
            }
        }

        impl TryFrom<u64> for $name {
            type Error = AddrError;
            fn try_from(addr: u64) -> Result<Self, AddrError> {
                Self::try_new(addr)
            }
        }

        impl From<$name> for u64 {
            fn from(a: $name) -> u64 {
                a.0
            }
        }
    };
}

phys_addr_type!(
    /// A host physical address (52 bits, any alignment).
    ///
    /// What the TDX module calls an HPA: the value a host puts in a register
    /// to name physical memory. It carries no KeyID bits; a keyed address
    /// (`TDH.PHYMEM.PAGE.WBINVD`) is [`crate::regs::KeyedPa`].
    Hpa,
    "HPA"
);

phys_addr_type!(
    /// A guest physical address of a Trust Domain (52 bits, any alignment).
    ///
    /// Whether a GPA is private or shared depends on the TD's GPAW (the
    /// shared bit is 47 or 51); that check belongs to the TD, not to the
    /// address. See [`Gpa::shared_bit`].
    Gpa,
    "GPA"
);

impl Hpa {
    /// The frame number of the 4 KiB page containing this address (rounds
    /// down; use [`Pfn::try_from_hpa`] to insist on alignment).
    #[inline]
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 >> PAGE_SHIFT)
    }
}

impl Gpa {
    /// The bit that marks a GPA as shared: 51 when the TD was initialized
    /// with `MAX_GPAW` (5-level EPT), 47 otherwise.
    pub const fn shared_bit(max_gpaw: bool) -> u32 {
        if max_gpaw { 51 } else { 47 }
    }

    /// True if the shared bit for the given GPAW is set.
    pub const fn is_shared(self, max_gpaw: bool) -> bool {
        self.0 & (1 << Self::shared_bit(max_gpaw)) != 0
    }

    /// The guest frame number of the 4 KiB page containing this GPA.
    #[inline]
    pub const fn gfn(self) -> u64 {
        self.0 >> PAGE_SHIFT
    }
}

/// A host page frame number: an [`Hpa`] divided by 4 KiB (40 bits).
///
/// A `Pfn` is a number, never a pointer, and says nothing about who owns the
/// page. Huge pages are [`crate::PfnRange`]s of 512 or 262144 frames.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct Pfn(u64);

impl Pfn {
    /// Frame 0.
    pub const ZERO: Self = Self(0);

    /// Checks that `pfn` fits in 40 bits.
    #[inline]
    pub const fn try_new(pfn: u64) -> Result<Self, AddrError> {
        if pfn < MAX_PFN {
            Ok(Self(pfn))
        } else {
            Err(AddrError::TooWide {
                kind: "PFN",
                value: pfn,
                bits: PFN_BITS,
            })
        }
    }

    /// Makes a frame number from `pfn`.
    ///
    /// # Panics
    ///
    /// If `pfn` does not fit in 40 bits (a compile error in `const` context).
    #[track_caller]
    #[inline]
    pub const fn new(pfn: u64) -> Self {
        match Self::try_new(pfn) {
            Ok(p) => p,
            Err(_) => panic!("PFN wider than 40 bits"),
        }
    }

    /// The frame of a 4 KiB-aligned address, or an error if `hpa` is not
    /// aligned.
    pub const fn try_from_hpa(hpa: Hpa) -> Result<Self, AddrError> {
        if hpa.is_aligned(PAGE_SIZE) {
            Ok(Self(hpa.as_u64() >> PAGE_SHIFT))
        } else {
            Err(AddrError::Misaligned {
                kind: "HPA",
                value: hpa.as_u64(),
                align: PAGE_SIZE,
            })
        }
    }

    /// The frame containing `hpa` (rounds down).
    #[inline]
    pub const fn containing(hpa: Hpa) -> Self {
        hpa.pfn()
    }

    /// The raw frame number.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The address of the first byte of the frame.
    #[inline]
    pub const fn hpa(self) -> Hpa {
        // Cannot exceed 52 bits: self.0 < 2^40.
        Hpa(self.0 << PAGE_SHIFT)
    }

    /// True if the frame number is a multiple of `frames` (a power of two),
    /// i.e. the frame can start a page of `frames` 4 KiB frames.
    #[inline]
    pub const fn is_aligned(self, frames: u64) -> bool {
        debug_assert!(frames.is_power_of_two());
        self.0 & (frames - 1) == 0
    }

    /// Rounds down to a multiple of `frames` (a power of two).
    #[inline]
    pub const fn align_down(self, frames: u64) -> Self {
        debug_assert!(frames.is_power_of_two());
        Self(self.0 & !(frames - 1))
    }

    /// `self + n`, or an error if the result is not a valid frame number.
    pub const fn checked_add(self, n: u64) -> Result<Self, AddrError> {
        match self.0.checked_add(n) {
            Some(v) if v < MAX_PFN => Ok(Self(v)),
            _ => Err(AddrError::Overflow {
                kind: "PFN",
                value: self.0,
                offset: n,
            }),
        }
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl TryFrom<u64> for Pfn {
    type Error = AddrError;
    fn try_from(pfn: u64) -> Result<Self, AddrError> {
        Self::try_new(pfn)
    }
}

impl From<Pfn> for Hpa {
    fn from(p: Pfn) -> Hpa {
        p.hpa()
    }
}

impl From<Pfn> for u64 {
    fn from(p: Pfn) -> u64 {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn width_is_checked() {
        assert_eq!(Hpa::try_new(MAX_PA - 1).unwrap().as_u64(), MAX_PA - 1);
        assert_eq!(
            Hpa::try_new(MAX_PA),
            Err(AddrError::TooWide {
                kind: "HPA",
                value: MAX_PA,
                bits: 52
            })
        );
        assert!(Gpa::try_new(u64::MAX).is_err());
        assert!(Pfn::try_new(MAX_PFN).is_err());
        assert_eq!(
            Pfn::try_new(MAX_PFN - 1).unwrap().hpa().as_u64(),
            MAX_PA - PAGE_SIZE
        );
    }

    #[test]
    #[should_panic(expected = "wider than 52 bits")]
    fn new_panics_on_wide_address() {
        let _ = Hpa::new(1 << 52);
    }

    #[test]
    fn truncate_drops_keyid_bits() {
        let keyed = (5u64 << 46) | 0x1000;
        // 5 << 46 keeps bits 46..48, which are below 52: nothing dropped.
        assert_eq!(Hpa::new_truncate(keyed).as_u64(), keyed);
        assert_eq!(Hpa::new_truncate((1 << 60) | 0x2000).as_u64(), 0x2000);
    }

    #[test]
    fn alignment_and_rounding() {
        let a = Hpa::new(0x20_1234);
        assert!(!a.is_aligned(0x1000));
        assert_eq!(a.align_down(0x1000), Hpa::new(0x20_1000));
        assert_eq!(a.align_up(0x20_0000), Some(Hpa::new(0x40_0000)));
        assert_eq!(Hpa::new(MAX_PA - 1).align_up(0x1000), None);
        assert_eq!(a.page_offset(), 0x234);
        assert_eq!(
            Hpa::try_new_aligned(0x1800, 0x1000),
            Err(AddrError::Misaligned {
                kind: "HPA",
                value: 0x1800,
                align: 0x1000
            })
        );
        assert_eq!(Pfn::try_from_hpa(Hpa::new(0x5000)), Ok(Pfn::new(5)));
        assert!(Pfn::try_from_hpa(Hpa::new(0x5008)).is_err());
        assert_eq!(Pfn::containing(Hpa::new(0x5008)), Pfn::new(5));
        assert!(Pfn::new(0x200).is_aligned(512));
        assert!(!Pfn::new(0x201).is_aligned(512));
    }

    #[test]
    fn overflow_is_an_error() {
        assert!(Hpa::new(MAX_PA - 0x1000).checked_add(0x1000).is_err());
        assert_eq!(Hpa::new(0x1000).checked_add(0x1000), Ok(Hpa::new(0x2000)));
        assert!(Pfn::new(MAX_PFN - 1).checked_add(1).is_err());
    }

    #[test]
    fn debug_is_hex() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{:?}", Hpa::new(0x1000)), "HPA(0x1000)");
        assert_eq!(format!("{:?}", Gpa::new(0xfee0_0000)), "GPA(0xfee00000)");
        assert_eq!(format!("{:?}", Pfn::new(0x10)), "Pfn(0x10)");
        assert_eq!(format!("{}", Hpa::new(0x10)), "0x10");
    }

    #[test]
    fn shared_bit_follows_gpaw() {
        assert!(Gpa::new(1 << 47).is_shared(false));
        assert!(!Gpa::new(1 << 47).is_shared(true));
        assert!(Gpa::new(1 << 51).is_shared(true));
    }

    proptest! {

        #![proptest_config(crate::proptest_config())]
        #[test]
        fn hpa_pfn_round_trip(pfn in 0u64..MAX_PFN) {
            let p = Pfn::new(pfn);
            prop_assert_eq!(Pfn::try_from_hpa(p.hpa()), Ok(p));
        }

        #[test]
        fn try_new_accepts_exactly_52_bits(v: u64) {
            prop_assert_eq!(Hpa::try_new(v).is_ok(), v < MAX_PA);
            prop_assert_eq!(Gpa::try_new(v).is_ok(), v < MAX_PA);
        }

        #[test]
        fn align_down_up_bracket(v in 0u64..MAX_PA, shift in 0u32..40) {
            let align = 1u64 << shift;
            let a = Hpa::new(v);
            let down = a.align_down(align);
            prop_assert!(down <= a && down.is_aligned(align));
            if let Some(up) = a.align_up(align) {
                prop_assert!(up >= a && up.is_aligned(align));
                prop_assert!(up.as_u64() - down.as_u64() <= align);
            }
        }
    }
}
