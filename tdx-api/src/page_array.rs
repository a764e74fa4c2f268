//! `TdxPageArray`: N pages handed to the module at once, described by one
//! root page of HPAs.
//!
//! The root page is always allocated. The module reads at most 512 entries
//! at a time, so a larger array is fed in windows: [`TdxPageArray::populate`]
//! writes the HPAs of one window into the root page, and
//! [`hpa_list_info`](TdxPageArray::hpa_list_info) /
//! [`hpa_array_t`](TdxPageArray::hpa_array_t) encode that window for the
//! leaf. HPA_ARRAY_T has a single-page form (the data page itself instead
//! of the root page) that the architecture requires for one-page arrays;
//! the encoder picks it, the caller never sees it.
//!
//! Leaves that give pages back report what they released; a release that
//! does not return exactly the window that was given is a protocol error
//! ([`TdxPageArray::check_release`]): the pages must then be leaked and
//! reported, never freed.
//!
//! An array is bound to the platform that allocated it (it borrows it for
//! `'p`): every read, write, free and leak goes to that platform and no
//! other, so no safe call can hand its frames to an allocator that never
//! gave them out. What the array cannot know, whether the module still owns
//! a page, is the caller's promise in the two `unsafe fn`s that free pages
//! ([`free`](TdxPageArray::free), [`split_donated`](TdxPageArray::split_donated)).

// UNSAFETY: a page array writes and reads its root page through the
// Platform's direct map and frees its pages, all `unsafe fn`s of Platform.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::fmt;

use tdx_types::{
    Hpa, Pfn, PfnRun,
    regs::{HPA_LIST_MAX_ENTRIES, HpaArrayT, HpaListInfo},
};

use crate::platform::{Placement, Platform, PlatformError};

/// N pages plus a root page of their HPAs, bound to the platform that
/// allocated them. Unique: not `Clone`.
///
/// # Ownership
///
/// The array borrows its platform for `'p` and uses that platform, and no
/// other, for everything it does to its frames: writing and reading the
/// root page ([`populate`](Self::populate),
/// [`check_release`](Self::check_release)) and giving frames back
/// ([`free`](Self::free), [`split_donated`](Self::split_donated),
/// [`leak`](Self::leak)). None of them takes a platform argument, so frames
/// cannot be freed into an allocator that never handed them out, and the
/// borrow keeps the platform alive for as long as the array holds frames.
///
/// Whether the TDX module owns a page is something only the caller knows
/// (it depends on the answers of the leaves it called with the array), so
/// the two calls that free pages are `unsafe fn`s stating that
/// precondition; [`leak`](Self::leak), which frees only the root page, is
/// safe.
///
/// Dropping an array frees nothing: its pages are leaked silently (sound,
/// but lost), hence `#[must_use]`.
#[must_use = "a page array owns its pages: free, donate or leak them"]
pub struct TdxPageArray<'p, P: Platform + ?Sized> {
    /// The platform the pages came from, and go back to.
    platform: &'p P,
    /// How the pages were allocated (for freeing).
    runs: Vec<PfnRun>,
    /// The pages, in order.
    pages: Vec<Pfn>,
    /// The root page.
    root: PfnRun,
    /// The window the root page describes: first index and count.
    window: (usize, usize),
}

impl<P: Platform + ?Sized> fmt::Debug for TdxPageArray<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxPageArray")
            .field("pages", &self.pages.len())
            .field("root", &self.root)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// Why a release report does not match what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The module released a different number of pages.
    #[error("page release protocol error: {released} pages released, {given} given")]
    Count {
        /// Pages in the window.
        given: usize,
        /// Pages the module reported.
        released: u64,
    },
    /// The reported HPA is not the page (single-page form) or the root page.
    #[error("page release protocol error: released HPA {released:#x}, expected {expected:#x}")]
    Hpa {
        /// What should have come back.
        expected: u64,
        /// What came back.
        released: u64,
    },
    /// A root-page entry no longer names the page given.
    #[error("page release protocol error: entry {index} is {found:#x}, {expected:#x} was given")]
    Entry {
        /// Entry index in the window.
        index: usize,
        /// The page given.
        expected: u64,
        /// What the root page says now.
        found: u64,
    },
}

impl<'p, P: Platform + ?Sized> TdxPageArray<'p, P> {
    /// `count` physically contiguous pages (one allocation, as extension
    /// memory wants) and a root page, from `p`; the array keeps `p`.
    pub fn alloc_contiguous(
        p: &'p P,
        count: u64,
        placement: Placement,
    ) -> Result<Self, PlatformError> {
        let root = p.alloc_pages(1, 1, Placement::Anywhere)?;
        match p.alloc_pages(count, 1, placement) {
            Ok(run) => Ok(Self {
                platform: p,
                runs: alloc::vec![run],
                pages: run.iter().collect(),
                root,
                window: (0, 0),
            }),
            Err(e) => {
                // SAFETY: the root page was just allocated from `p` and
                // never used.
                unsafe { p.free_pages(root) };
                Err(e)
            }
        }
    }

    /// `count` pages, each allocated on its own, and a root page, from `p`;
    /// the array keeps `p`.
    pub fn alloc(p: &'p P, count: u64, placement: Placement) -> Result<Self, PlatformError> {
        let root = p.alloc_pages(1, 1, Placement::Anywhere)?;
        let mut runs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match p.alloc_pages(1, 1, placement) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    for r in runs.iter().chain(core::iter::once(&root)) {
                        // SAFETY: allocated from `p` just now, never used.
                        unsafe { p.free_pages(*r) };
                    }
                    return Err(e);
                }
            }
        }
        let pages = runs.iter().map(|r| r.first()).collect();
        Ok(Self {
            platform: p,
            runs,
            pages,
            root,
            window: (0, 0),
        })
    }

    /// The platform the pages came from.
    pub fn platform(&self) -> &'p P {
        self.platform
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True if the array has no pages.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The pages.
    pub fn pages(&self) -> &[Pfn] {
        &self.pages
    }

    /// The root page.
    pub fn root(&self) -> Pfn {
        self.root.first()
    }

    /// Writes the HPAs of the window starting at `offset` (at most 512
    /// entries) into the root page; returns the window's size (0 past the
    /// end).
    pub fn populate(&mut self, offset: usize) -> usize {
        let n = self
            .pages
            .len()
            .saturating_sub(offset)
            .min(HPA_LIST_MAX_ENTRIES);
        let bytes: Vec<u8> = self.pages[offset..offset + n]
            .iter()
            .flat_map(|f| f.hpa().as_u64().to_le_bytes())
            .collect();
        // SAFETY: the root page is host memory this array allocated from
        // `self.platform` and never gives to the module, which only reads it
        // during a leaf call (whose own `unsafe` contract keeps writers out);
        // `&mut self` keeps out every other writer through the array.
        unsafe { self.platform.write_phys(self.root.hpa(), &bytes) };
        self.window = (offset, n);
        n
    }

    /// The current window as HPA_LIST_INFO (FIRST_ENTRY 0).
    pub fn hpa_list_info(&self) -> HpaListInfo {
        HpaListInfo::try_new(self.root(), self.window.1.max(1)).expect("window is 1..=512 entries")
    }

    /// The current window as HPA_ARRAY_T (the single-page form for one page).
    pub fn hpa_array_t(&self) -> HpaArrayT {
        let first = self
            .pages
            .get(self.window.0)
            .copied()
            .unwrap_or(self.root());
        HpaArrayT::encode(self.root(), first, self.window.1.max(1))
            .expect("window is 1..=512 entries")
    }

    /// Checks a release report for the current window: the number of pages
    /// and the HPA the module reports (the page itself for a one-page
    /// window, else the root page, whose entries must still name the pages
    /// given).
    pub fn check_release(&self, released: u64, hpa: u64) -> Result<(), ReleaseError> {
        let (off, n) = self.window;
        if released != n as u64 {
            return Err(ReleaseError::Count { given: n, released });
        }
        if n == 1 {
            let expected = self.pages[off].hpa().as_u64();
            return if hpa == expected {
                Ok(())
            } else {
                Err(ReleaseError::Hpa {
                    expected,
                    released: hpa,
                })
            };
        }
        let expected = self.root.hpa().as_u64();
        if hpa != expected {
            return Err(ReleaseError::Hpa {
                expected,
                released: hpa,
            });
        }
        let mut root = alloc::vec![0u8; n * 8];
        // SAFETY: the root page is host memory this array allocated from
        // `self.platform`; the module never owns it.
        unsafe { self.platform.read_phys(self.root.hpa(), &mut root) };
        for (index, chunk) in root.chunks_exact(8).enumerate() {
            let found = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let expected = self.pages[off + index].hpa().as_u64();
            if found != expected {
                return Err(ReleaseError::Entry {
                    index,
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Splits after the module took the first `donated` pages for good:
    /// returns those pages (as runs, to record; they are no longer the
    /// array's), frees the others and the root page to the array's
    /// platform. A `donated` past the end keeps every page.
    ///
    /// # Safety
    ///
    /// The module does not own any page at index `donated` or later: they
    /// were never given, or were given back and flushed as the ABI
    /// requires. (The same precondition as [`free`](Self::free), for the
    /// pages past `donated`.)
    pub unsafe fn split_donated(self, donated: usize) -> Vec<PfnRun> {
        let donated = donated.min(self.pages.len());
        let mut given = Vec::new();
        for pfn in &self.pages[..donated] {
            match given.last_mut() {
                Some(r) if PfnRun::end(*r) == pfn.as_u64() => {
                    *r = PfnRun::try_new(r.first(), r.count() + 1).expect("contiguous");
                }
                _ => given.push(PfnRun::try_new(*pfn, 1).expect("one page")),
            }
        }
        for pfn in &self.pages[donated..] {
            // SAFETY: each page was allocated by this array from
            // `self.platform` (part of one of its runs), and the caller
            // promises the module does not own it.
            unsafe {
                self.platform
                    .free_pages(PfnRun::try_new(*pfn, 1).expect("one page"))
            };
        }
        // SAFETY: the root page was allocated by this array from
        // `self.platform`; the module only reads it during a call and keeps
        // nothing of it.
        unsafe { self.platform.free_pages(self.root) };
        given
    }

    /// Frees every page and the root page to the array's platform.
    ///
    /// # Safety
    ///
    /// The module does not own any of the pages (they were never given, or
    /// were given back and flushed as the ABI requires).
    pub unsafe fn free(self) {
        for r in self.runs.iter().chain(core::iter::once(&self.root)) {
            // SAFETY: allocated by this array from `self.platform`; the
            // caller promises the module does not own them.
            unsafe { self.platform.free_pages(*r) };
        }
    }

    /// Leaks every page to the array's platform (the module may still own
    /// them: after a release protocol error, for example) and frees the
    /// root page.
    pub fn leak(self, reason: &'static str) {
        for r in &self.runs {
            self.platform.leak_pages(*r, reason);
        }
        // SAFETY: the root page was allocated by this array from
        // `self.platform`; the module only read it during calls.
        unsafe { self.platform.free_pages(self.root) };
    }

    /// The pages as an address list (for reports).
    pub fn hpas(&self) -> impl Iterator<Item = Hpa> + '_ {
        self.pages.iter().map(|p| p.hpa())
    }
}
