//! Page sizes as types, the TDX level encoding, and aligned frame ranges.
//!
//! A TDX mapping is 4 KiB, 2 MiB or 1 GiB. The size is a type parameter
//! ([`Size4K`], [`Size2M`], [`Size1G`], sealed: nothing outside this crate can
//! add a size), so a function that maps a 2 MiB page cannot be handed a 4 KiB
//! one. A huge page is a [`PfnRange`]: a first frame aligned to the size and
//! the implied count of physically contiguous 4 KiB frames. Whether the caller
//! got those frames from one allocation, a folio or a hugetlb pool does not
//! matter and is not asked; the check is arithmetic on frame numbers.

use core::{fmt, hash::Hash, marker::PhantomData};

use crate::addr::{AddrError, Hpa, MAX_PFN, PAGE_SHIFT, Pfn};

mod sealed {
    #[diagnostic::on_unimplemented(
        message = "`{Self}` is not a TDX page size",
        note = "the TDX ABI maps pages of three sizes only: `Size4K`, `Size2M` and `Size1G`"
    )]
    pub trait Sealed {}
}

/// The level of an S-EPT entry or PAMT entry, as the TDX ABI encodes it in
/// the low bits of a GPA|level operand and in extended error information.
///
/// Levels 0..=2 are page sizes (4 KiB, 2 MiB, 1 GiB). Levels 3 and 4 only
/// name non-leaf S-EPT entries (a PML4 entry, and a PML5 entry with 5-level
/// EPT), as `TDH.MEM.SEPT.ADD`/`TDH.MEM.SEPT.REMOVE` and `RANGE.BLOCK` use
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum TdxLevel {
    /// 4 KiB page; a PT entry (Linux `PG_LEVEL_4K` - 1).
    L4K = 0,
    /// 2 MiB page; a PD entry.
    L2M = 1,
    /// 1 GiB page; a PDPT entry.
    L1G = 2,
    /// A PML4 entry (non-leaf only; 512 GiB of GPA space).
    L512G = 3,
    /// A PML5 entry (non-leaf only, 5-level EPT; 256 TiB of GPA space).
    L256T = 4,
}

impl TdxLevel {
    /// The level for an encoding, or `None` for values above 4.
    pub const fn from_u8(level: u8) -> Option<Self> {
        Some(match level {
            0 => Self::L4K,
            1 => Self::L2M,
            2 => Self::L1G,
            3 => Self::L512G,
            4 => Self::L256T,
            _ => return None,
        })
    }

    /// The encoding (0..=4).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Bytes covered by one entry at this level: 4 KiB << (9 * level).
    pub const fn bytes(self) -> u64 {
        1 << (PAGE_SHIFT + 9 * self as u32)
    }

    /// 4 KiB frames covered by one entry at this level: 512^level.
    pub const fn frames(self) -> u64 {
        1 << (9 * self as u32)
    }

    /// True for the levels a page can be mapped at (4K, 2M, 1G).
    pub const fn is_page_size(self) -> bool {
        (self as u8) <= 2
    }
}

impl TryFrom<u8> for TdxLevel {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Self::from_u8(v).ok_or(v)
    }
}

impl fmt::Display for TdxLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::L4K => "4K",
            Self::L2M => "2M",
            Self::L1G => "1G",
            Self::L512G => "512G",
            Self::L256T => "256T",
        })
    }
}

/// A page size a TD mapping can have. Sealed: implemented by [`Size4K`],
/// [`Size2M`] and [`Size1G`] only.
pub trait PageSize:
    sealed::Sealed + Copy + Eq + Ord + Hash + fmt::Debug + Send + Sync + 'static
{
    /// Size in bytes.
    const SIZE: u64;
    /// log2 of [`Self::SIZE`].
    const SHIFT: u32;
    /// Number of 4 KiB frames in one page.
    const FRAMES: u64 = 1 << (Self::SHIFT - PAGE_SHIFT);
    /// The TDX level encoding (4K = 0, 2M = 1, 1G = 2).
    const LEVEL: TdxLevel;
    /// "4K", "2M" or "1G".
    const NAME: &'static str;
}

/// 4 KiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size4K {}
/// 2 MiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size2M {}
/// 1 GiB pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size1G {}

impl sealed::Sealed for Size4K {}
impl sealed::Sealed for Size2M {}
impl sealed::Sealed for Size1G {}

impl PageSize for Size4K {
    const SIZE: u64 = 1 << 12;
    const SHIFT: u32 = 12;
    const LEVEL: TdxLevel = TdxLevel::L4K;
    const NAME: &'static str = "4K";
}
impl PageSize for Size2M {
    const SIZE: u64 = 1 << 21;
    const SHIFT: u32 = 21;
    const LEVEL: TdxLevel = TdxLevel::L2M;
    const NAME: &'static str = "2M";
}
impl PageSize for Size1G {
    const SIZE: u64 = 1 << 30;
    const SHIFT: u32 = 30;
    const LEVEL: TdxLevel = TdxLevel::L1G;
    const NAME: &'static str = "1G";
}

// The level encoding and the sizes must agree.
const _: () = {
    assert!(Size4K::LEVEL.bytes() == Size4K::SIZE);
    assert!(Size2M::LEVEL.bytes() == Size2M::SIZE);
    assert!(Size1G::LEVEL.bytes() == Size1G::SIZE);
    assert!(Size2M::FRAMES == 512 && Size1G::FRAMES == 512 * 512);
};

/// One page of size `S` as a run of physically contiguous 4 KiB frames:
/// `S::FRAMES` frames starting at a frame aligned to `S`.
///
/// # Invariants
///
/// `first` is a multiple of `S::FRAMES`, and `first + S::FRAMES <= 2^40`, so
/// every frame of the range is a valid [`Pfn`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PfnRange<S: PageSize> {
    first: Pfn,
    _size: PhantomData<S>,
}

impl<S: PageSize> PfnRange<S> {
    /// The page of size `S` starting at `first`, or an error if `first` is
    /// not aligned to `S`.
    #[inline]
    pub const fn try_new(first: Pfn) -> Result<Self, AddrError> {
        if !first.is_aligned(S::FRAMES) {
            return Err(AddrError::Misaligned {
                kind: "PFN",
                value: first.as_u64(),
                align: S::FRAMES,
            });
        }
        // An aligned first frame below 2^40 cannot make the range end above
        // 2^40, since 2^40 is itself a multiple of S::FRAMES.
        debug_assert!(first.as_u64() + S::FRAMES <= MAX_PFN);
        // INVARIANT: aligned (checked above) and in range (Pfn's own
        // invariant plus the alignment argument).
        Ok(Self {
            first,
            _size: PhantomData,
        })
    }

    /// The page of size `S` starting at `first`.
    ///
    /// # Panics
    ///
    /// If `first` is not aligned to `S`.
    #[track_caller]
    #[inline]
    pub const fn new(first: Pfn) -> Self {
        match Self::try_new(first) {
            Ok(r) => r,
            Err(_) => panic!("PFN not aligned to the page size"),
        }
    }

    /// The page of size `S` that starts at `hpa`, which must be aligned to `S`.
    pub const fn try_from_hpa(hpa: Hpa) -> Result<Self, AddrError> {
        if !hpa.is_aligned(S::SIZE) {
            return Err(AddrError::Misaligned {
                kind: "HPA",
                value: hpa.as_u64(),
                align: S::SIZE,
            });
        }
        Self::try_new(hpa.pfn())
    }

    /// The page of size `S` containing `pfn` (rounds down).
    pub const fn containing(pfn: Pfn) -> Self {
        Self {
            first: pfn.align_down(S::FRAMES),
            _size: PhantomData,
        }
    }

    /// The page made of exactly the frames `first .. first + count`: checks
    /// that `count` is `S::FRAMES` and that `first` is aligned. This is the
    /// check a huge mapping needs, done on numbers only.
    pub const fn try_from_run(first: Pfn, count: u64) -> Result<Self, PfnRunError> {
        if count != S::FRAMES {
            return Err(PfnRunError::WrongLength {
                expected: S::FRAMES,
                got: count,
            });
        }
        match Self::try_new(first) {
            Ok(r) => Ok(r),
            Err(e) => Err(PfnRunError::Addr(e)),
        }
    }

    /// The first frame.
    #[inline]
    pub const fn first(self) -> Pfn {
        self.first
    }

    /// The frame just past the last one.
    #[inline]
    pub const fn end(self) -> u64 {
        self.first.as_u64() + S::FRAMES
    }

    /// The number of 4 KiB frames (`S::FRAMES`).
    #[inline]
    pub const fn frames(self) -> u64 {
        S::FRAMES
    }

    /// The physical address of the first byte.
    #[inline]
    pub const fn hpa(self) -> Hpa {
        self.first.hpa()
    }

    /// The level encoding of `S`.
    #[inline]
    pub const fn level(self) -> TdxLevel {
        S::LEVEL
    }

    /// True if `pfn` is one of the frames of this page.
    #[inline]
    pub const fn contains(self, pfn: Pfn) -> bool {
        pfn.as_u64() >= self.first.as_u64() && pfn.as_u64() < self.end()
    }

    /// Every 4 KiB frame, in order.
    #[inline]
    pub fn iter(self) -> impl DoubleEndedIterator<Item = Pfn> + Clone {
        // Every value in the range is < 2^40 by the type invariant, so
        // `Pfn::new` cannot panic.
        (self.first.as_u64()..self.end()).map(Pfn::new)
    }

    /// The 512 pages of the next smaller size `T` that make up this page
    /// (`T::FRAMES * 512 == S::FRAMES`), or `None` if `T` is not one size
    /// below `S`.
    pub fn split<T: PageSize>(self) -> Option<impl ExactSizeIterator<Item = PfnRange<T>>> {
        if T::FRAMES * 512 != S::FRAMES {
            return None;
        }
        let first = self.first.as_u64();
        // Each start is aligned to T (first is aligned to S, a multiple of T)
        // and below 2^40 (inside this range).
        Some((0..512u32).map(move |i| PfnRange::<T>::new(Pfn::new(first + i as u64 * T::FRAMES))))
    }
}

impl<S: PageSize> fmt::Debug for PfnRange<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PfnRange<{}>({:#x}..{:#x})",
            S::NAME,
            self.first.as_u64(),
            self.end()
        )
    }
}

impl From<Pfn> for PfnRange<Size4K> {
    fn from(p: Pfn) -> Self {
        // Every frame is 4 KiB aligned.
        Self {
            first: p,
            _size: PhantomData,
        }
    }
}

/// A run of physically contiguous 4 KiB frames of any length: what a page
/// allocator hands out and takes back. Not to be confused with
/// [`PfnRange`], which is exactly one page of a TDX page size.
///
/// # Invariants
///
/// `count >= 1` and `first + count <= 2^40`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PfnRun {
    first: Pfn,
    count: u64,
}

impl PfnRun {
    /// The run of `count` frames from `first`, or an error if it is empty or
    /// leaves the 40-bit frame space.
    #[inline]
    pub const fn try_new(first: Pfn, count: u64) -> Result<Self, AddrError> {
        if count == 0 {
            return Err(AddrError::Overflow {
                kind: "PFN",
                value: first.as_u64(),
                offset: 0,
            });
        }
        match first.as_u64().checked_add(count) {
            // INVARIANT: non-empty (checked above) and ends within 2^40.
            Some(end) if end <= MAX_PFN => Ok(Self { first, count }),
            _ => Err(AddrError::Overflow {
                kind: "PFN",
                value: first.as_u64(),
                offset: count,
            }),
        }
    }

    /// The frames `[start, end)`.
    pub const fn from_bounds(start: Pfn, end: Pfn) -> Result<Self, AddrError> {
        Self::try_new(start, end.as_u64().saturating_sub(start.as_u64()))
    }

    /// The first frame.
    #[inline]
    pub const fn first(self) -> Pfn {
        self.first
    }

    /// Number of frames (at least 1).
    #[inline]
    pub const fn count(self) -> u64 {
        self.count
    }

    /// The frame number just past the run.
    #[inline]
    pub const fn end(self) -> u64 {
        self.first.as_u64() + self.count
    }

    /// Size in bytes.
    #[inline]
    pub const fn bytes(self) -> u64 {
        self.count << PAGE_SHIFT
    }

    /// Physical address of the first byte.
    #[inline]
    pub const fn hpa(self) -> Hpa {
        self.first.hpa()
    }

    /// True if `pfn` is in the run.
    #[inline]
    pub const fn contains(self, pfn: Pfn) -> bool {
        pfn.as_u64() >= self.first.as_u64() && pfn.as_u64() < self.end()
    }

    /// True if the two runs share a frame.
    #[inline]
    pub const fn overlaps(self, other: PfnRun) -> bool {
        self.first.as_u64() < other.end() && other.first.as_u64() < self.end()
    }

    /// Every frame, in order.
    #[inline]
    pub fn iter(self) -> impl DoubleEndedIterator<Item = Pfn> + Clone {
        // In range by the type invariant.
        (self.first.as_u64()..self.end()).map(Pfn::new)
    }
}

impl<S: PageSize> From<PfnRange<S>> for PfnRun {
    fn from(r: PfnRange<S>) -> Self {
        Self {
            first: r.first(),
            count: S::FRAMES,
        }
    }
}

impl fmt::Debug for PfnRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PfnRun({:#x}..{:#x})", self.first.as_u64(), self.end())
    }
}

/// Why a run of frames is not one page of the requested size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PfnRunError {
    /// The run has the wrong number of frames for the size.
    #[error("a page of this size is {expected} frames, the run has {got}")]
    WrongLength {
        /// Frames in one page of the requested size.
        expected: u64,
        /// Frames in the run.
        got: u64,
    },
    /// The first frame is not aligned, or not a valid frame.
    #[error(transparent)]
    Addr(#[from] AddrError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_encoding() {
        assert_eq!(Size4K::LEVEL.as_u8(), 0);
        assert_eq!(Size2M::LEVEL.as_u8(), 1);
        assert_eq!(Size1G::LEVEL.as_u8(), 2);
        assert_eq!(TdxLevel::from_u8(4), Some(TdxLevel::L256T));
        assert_eq!(TdxLevel::from_u8(5), None);
        assert_eq!(TdxLevel::L1G.frames(), 262_144);
        assert!(!TdxLevel::L512G.is_page_size());
    }

    #[test]
    fn huge_ranges_are_aligned() {
        assert!(PfnRange::<Size2M>::try_new(Pfn::new(512)).is_ok());
        assert_eq!(
            PfnRange::<Size2M>::try_new(Pfn::new(513)),
            Err(AddrError::Misaligned {
                kind: "PFN",
                value: 513,
                align: 512
            })
        );
        assert!(PfnRange::<Size1G>::try_new(Pfn::new(512)).is_err());
        assert!(PfnRange::<Size1G>::try_from_hpa(Hpa::new(0x4000_0000)).is_ok());
        assert!(PfnRange::<Size1G>::try_from_hpa(Hpa::new(0x4000_1000)).is_err());
        let r = PfnRange::<Size2M>::containing(Pfn::new(0x3ff));
        assert_eq!(r.first(), Pfn::new(0x200));
        assert!(r.contains(Pfn::new(0x3ff)) && !r.contains(Pfn::new(0x400)));
    }

    #[test]
    fn runs_must_match_the_size() {
        assert!(PfnRange::<Size2M>::try_from_run(Pfn::new(1024), 512).is_ok());
        assert_eq!(
            PfnRange::<Size2M>::try_from_run(Pfn::new(1024), 511),
            Err(PfnRunError::WrongLength {
                expected: 512,
                got: 511
            })
        );
        assert!(PfnRange::<Size2M>::try_from_run(Pfn::new(1), 512).is_err());
    }

    #[test]
    fn the_last_huge_page_fits() {
        let last = MAX_PFN - Size1G::FRAMES;
        let r = PfnRange::<Size1G>::new(Pfn::new(last));
        assert_eq!(r.end(), MAX_PFN);
        assert_eq!(r.iter().count() as u64, Size1G::FRAMES);
        assert_eq!(r.iter().next_back(), Some(Pfn::new(MAX_PFN - 1)));
    }

    #[test]
    fn runs() {
        let r = PfnRun::try_new(Pfn::new(10), 5).unwrap();
        assert_eq!((r.end(), r.bytes()), (15, 5 * 4096));
        assert!(r.contains(Pfn::new(14)) && !r.contains(Pfn::new(15)));
        assert!(r.overlaps(PfnRun::try_new(Pfn::new(14), 1).unwrap()));
        assert!(!r.overlaps(PfnRun::try_new(Pfn::new(15), 1).unwrap()));
        assert!(PfnRun::try_new(Pfn::new(1), 0).is_err());
        assert!(PfnRun::try_new(Pfn::new(MAX_PFN - 1), 2).is_err());
        assert_eq!(
            PfnRun::from(PfnRange::<Size2M>::new(Pfn::new(512))).count(),
            512
        );
    }

    #[test]
    fn split_goes_one_size_down() {
        let r = PfnRange::<Size1G>::new(Pfn::new(0x40000));
        let parts: usize = r.split::<Size2M>().unwrap().count();
        assert_eq!(parts, 512);
        let last = r.split::<Size2M>().unwrap().last().unwrap();
        assert_eq!(last.end(), r.end());
        assert!(r.split::<Size4K>().is_none());
        assert!(
            PfnRange::<Size2M>::new(Pfn::new(0))
                .split::<Size4K>()
                .is_some()
        );
    }
}
