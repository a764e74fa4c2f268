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

/// N pages plus a root page of their HPAs. Unique: not `Clone`.
#[must_use = "a page array owns its pages: free, donate or leak them"]
pub struct TdxPageArray {
    /// How the pages were allocated (for freeing).
    runs: Vec<PfnRun>,
    /// The pages, in order.
    pages: Vec<Pfn>,
    /// The root page.
    root: PfnRun,
    /// The window the root page describes: first index and count.
    window: (usize, usize),
}

impl fmt::Debug for TdxPageArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxPageArray")
            .field("pages", &self.pages.len())
            .field("root", &self.root)
            .field("window", &self.window)
            .finish()
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

impl TdxPageArray {
    /// `count` physically contiguous pages (one allocation, as extension
    /// memory wants) and a root page.
    pub fn alloc_contiguous<P: Platform>(
        p: &P,
        count: u64,
        placement: Placement,
    ) -> Result<Self, PlatformError> {
        let root = p.alloc_pages(1, 1, Placement::Anywhere)?;
        match p.alloc_pages(count, 1, placement) {
            Ok(run) => Ok(Self {
                runs: alloc::vec![run],
                pages: run.iter().collect(),
                root,
                window: (0, 0),
            }),
            Err(e) => {
                // SAFETY: the root page was just allocated and never used.
                unsafe { p.free_pages(root) };
                Err(e)
            }
        }
    }

    /// `count` pages, each allocated on its own, and a root page.
    pub fn alloc<P: Platform>(
        p: &P,
        count: u64,
        placement: Placement,
    ) -> Result<Self, PlatformError> {
        let root = p.alloc_pages(1, 1, Placement::Anywhere)?;
        let mut runs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match p.alloc_pages(1, 1, placement) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    for r in runs.iter().chain(core::iter::once(&root)) {
                        // SAFETY: allocated just now, never used.
                        unsafe { p.free_pages(*r) };
                    }
                    return Err(e);
                }
            }
        }
        let pages = runs.iter().map(|r| r.first()).collect();
        Ok(Self {
            runs,
            pages,
            root,
            window: (0, 0),
        })
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
    pub fn populate<P: Platform>(&mut self, p: &P, offset: usize) -> usize {
        let n = self
            .pages
            .len()
            .saturating_sub(offset)
            .min(HPA_LIST_MAX_ENTRIES);
        let bytes: Vec<u8> = self.pages[offset..offset + n]
            .iter()
            .flat_map(|f| f.hpa().as_u64().to_le_bytes())
            .collect();
        // SAFETY: the root page is host memory this array allocated; the
        // module only reads it during a call.
        unsafe { p.write_phys(self.root.hpa(), &bytes) };
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
    pub fn check_release<P: Platform>(
        &self,
        p: &P,
        released: u64,
        hpa: u64,
    ) -> Result<(), ReleaseError> {
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
        // SAFETY: the root page is host memory this array allocated.
        unsafe { p.read_phys(self.root.hpa(), &mut root) };
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
    /// returns those pages (as runs, to record), frees the others and the
    /// root page.
    pub fn split_donated<P: Platform>(self, p: &P, donated: usize) -> Vec<PfnRun> {
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
            // SAFETY: these pages were allocated by this array and never
            // handed to the module.
            unsafe { p.free_pages(PfnRun::try_new(*pfn, 1).expect("one page")) };
        }
        // SAFETY: the root page is host memory this array allocated; the
        // module keeps nothing of it.
        unsafe { p.free_pages(self.root) };
        given
    }

    /// Frees every page and the root page.
    ///
    /// # Safety
    ///
    /// The module does not own any of the pages (they were never given, or
    /// were given back and flushed as the ABI requires).
    pub unsafe fn free<P: Platform>(self, p: &P) {
        for r in self.runs.iter().chain(core::iter::once(&self.root)) {
            // SAFETY: allocated by this array from `p`; the caller promises
            // the module does not own them.
            unsafe { p.free_pages(*r) };
        }
    }

    /// Leaks every page (the module may still own them: after a release
    /// protocol error, for example) and frees the root page.
    pub fn leak<P: Platform>(self, p: &P, reason: &'static str) {
        for r in &self.runs {
            p.leak_pages(*r, reason);
        }
        // SAFETY: the root page is host memory this array allocated; the
        // module only read it.
        unsafe { p.free_pages(self.root) };
    }

    /// The pages as an address list (for reports).
    pub fn hpas(&self) -> impl Iterator<Item = Hpa> + '_ {
        self.pages.iter().map(|p| p.hpa())
    }
}
