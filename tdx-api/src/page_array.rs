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
// platform's direct map and frees its pages, all `unsafe fn`s of the
// platform traits.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::fmt;

use tdx_types::{
    Hpa, Pfn, PfnRun,
    regs::{HPA_LIST_MAX_ENTRIES, HpaArrayT, HpaListInfo},
};

use crate::platform::{DirectMap, FrameAllocator, FrameDeallocator, Placement, PlatformError};

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
pub struct TdxPageArray<'p, P: FrameAllocator + FrameDeallocator + DirectMap + ?Sized> {
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

impl<P: FrameAllocator + FrameDeallocator + DirectMap + ?Sized> fmt::Debug for TdxPageArray<'_, P> {
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

impl<'p, P: FrameAllocator + FrameDeallocator + DirectMap + ?Sized> TdxPageArray<'p, P> {
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
        // Through a buffer on the stack, 64 entries (512 bytes) at a time:
        // no heap allocation, so this cannot fail.
        const CHUNK: usize = 64;
        let mut buf = [0u8; CHUNK * 8];
        for (i, chunk) in self.pages[offset..offset + n].chunks(CHUNK).enumerate() {
            for (slot, f) in buf.chunks_exact_mut(8).zip(chunk) {
                slot.copy_from_slice(&f.hpa().as_u64().to_le_bytes());
            }
            let at = Hpa::new(self.root.hpa().as_u64() + (i * CHUNK * 8) as u64);
            // SAFETY: the root page is host memory this array allocated
            // from `self.platform` and never gives to the module, which
            // only reads it during a leaf call (whose own `unsafe` contract
            // keeps writers out); `&mut self` keeps out every other writer
            // through the array. The chunk lies inside the root page: at
            // most 512 entries of 8 bytes from its start.
            unsafe { self.platform.write_phys(at, &buf[..chunk.len() * 8]) };
        }
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

#[cfg(test)]
mod tests {
    //! The operations against a platform that records every call, so each
    //! test sees exactly which platform was asked to do what.

    extern crate std;

    use std::{
        collections::{BTreeMap, BTreeSet},
        vec::Vec,
    };

    use spin::Mutex;

    use super::*;

    /// A bump allocator over frames from `base`, with byte-addressed memory
    /// and a record of frees and leaks.
    struct Recording {
        next: Mutex<u64>,
        /// Pages allocated and not yet freed or leaked.
        live: Mutex<BTreeSet<u64>>,
        freed: Mutex<Vec<PfnRun>>,
        leaked: Mutex<Vec<(PfnRun, &'static str)>>,
        mem: Mutex<BTreeMap<u64, u8>>,
        /// Allocations left before `alloc_pages` fails.
        budget: Mutex<u64>,
    }

    impl Recording {
        fn new(base: u64) -> Self {
            Self {
                next: Mutex::new(base),
                live: Mutex::new(BTreeSet::new()),
                freed: Mutex::new(Vec::new()),
                leaked: Mutex::new(Vec::new()),
                mem: Mutex::new(BTreeMap::new()),
                budget: Mutex::new(u64::MAX),
            }
        }
        fn live(&self) -> usize {
            self.live.lock().len()
        }
        fn freed_pages(&self) -> u64 {
            self.freed.lock().iter().map(|r| r.count()).sum()
        }
        fn leaked_pages(&self) -> u64 {
            self.leaked.lock().iter().map(|(r, _)| r.count()).sum()
        }
        fn word(&self, pa: u64) -> u64 {
            let mem = self.mem.lock();
            let b: Vec<u8> = (pa..pa + 8)
                .map(|a| mem.get(&a).copied().unwrap_or(0))
                .collect();
            u64::from_le_bytes(b.try_into().unwrap())
        }
        fn owns(&self, pa: u64, len: usize) -> bool {
            let live = self.live.lock();
            (pa / 4096..(pa + len as u64).div_ceil(4096)).all(|f| live.contains(&f))
        }
    }

    // A test double with only what a page array asks for (no CPUs, caches
    // or hardware facts): it hands out each frame once and checks every
    // free, read and write against what it handed out (panicking on a
    // frame it does not own).

    // SAFETY: each frame is handed out once; they are made-up numbers
    // nobody dereferences (memory is a map of bytes, and there is no
    // module).
    unsafe impl FrameAllocator for Recording {
        fn alloc_pages(
            &self,
            count: u64,
            align: u64,
            placement: Placement,
        ) -> Result<PfnRun, PlatformError> {
            let mut budget = self.budget.lock();
            if *budget == 0 {
                return Err(PlatformError::OutOfMemory {
                    count,
                    align,
                    placement,
                });
            }
            *budget -= 1;
            let mut next = self.next.lock();
            let run = PfnRun::try_new(Pfn::new(*next), count).unwrap();
            *next += count;
            let mut live = self.live.lock();
            for f in run.iter() {
                live.insert(f.as_u64());
            }
            Ok(run)
        }
    }

    // SAFETY: frees and leaks only update the records.
    unsafe impl FrameDeallocator for Recording {
        unsafe fn free_pages(&self, run: PfnRun) {
            let mut live = self.live.lock();
            for f in run.iter() {
                assert!(
                    live.remove(&f.as_u64()),
                    "freed {f:?}, which this platform did not hand out"
                );
            }
            self.freed.lock().push(run);
        }
        fn leak_pages(&self, run: PfnRun, reason: &'static str) {
            let mut live = self.live.lock();
            for f in run.iter() {
                assert!(live.remove(&f.as_u64()), "leaked {f:?}");
            }
            self.leaked.lock().push((run, reason));
        }
        unsafe fn return_guest_frames(&self, run: PfnRun) {
            unreachable!("a page array never holds guest frames: {run:?}");
        }
    }

    // SAFETY: reads and writes go to the map of bytes; there is no direct
    // map to hand out.
    unsafe impl DirectMap for Recording {
        unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
            assert!(self.owns(pa.as_u64(), buf.len()), "read of {pa:?}");
            let mem = self.mem.lock();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = mem.get(&(pa.as_u64() + i as u64)).copied().unwrap_or(0);
            }
        }
        unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
            assert!(self.owns(pa.as_u64(), data.len()), "write of {pa:?}");
            let mut mem = self.mem.lock();
            for (i, b) in data.iter().enumerate() {
                mem.insert(pa.as_u64() + i as u64, *b);
            }
        }
        fn direct_map(&self, _: Hpa) -> Option<core::ptr::NonNull<u8>> {
            None
        }
    }

    #[test]
    fn populate_writes_the_window_through_the_array_platform() {
        let p = Recording::new(0x1000);
        let mut a = TdxPageArray::alloc(&p, 600, Placement::Anywhere).unwrap();
        assert!(core::ptr::eq(a.platform(), &p));
        let root = a.root().hpa().as_u64();
        assert_eq!(a.populate(0), 512);
        for i in 0..512 {
            assert_eq!(p.word(root + i * 8), a.pages()[i as usize].hpa().as_u64());
        }
        assert_eq!(a.populate(512), 88);
        for i in 0..88 {
            let want = a.pages()[512 + i as usize].hpa().as_u64();
            assert_eq!(p.word(root + i * 8), want, "entry {i}");
        }
        // Past the window: the first pass's entries, untouched.
        assert_eq!(p.word(root + 88 * 8), a.pages()[88].hpa().as_u64());
        assert_eq!(a.populate(600), 0);
        // SAFETY: nothing was given to a module.
        unsafe { a.free() };
        assert_eq!(p.live(), 0);
    }

    #[test]
    fn check_release_reads_the_array_platform() {
        let p = Recording::new(0x1000);
        let mut a = TdxPageArray::alloc_contiguous(&p, 3, Placement::Anywhere).unwrap();
        let root = a.root().hpa().as_u64();
        a.populate(0);
        assert_eq!(a.check_release(3, root), Ok(()));
        // What the platform's memory says is what the check sees.
        // SAFETY: the root page is this test's (allocated from `p`).
        unsafe { p.write_phys(Hpa::new(root + 8), &7u64.to_le_bytes()) };
        assert_eq!(
            a.check_release(3, root),
            Err(ReleaseError::Entry {
                index: 1,
                expected: a.pages()[1].hpa().as_u64(),
                found: 7
            })
        );
        a.leak("test");
        assert_eq!((p.live(), p.leaked_pages(), p.freed_pages()), (0, 3, 1));
    }

    #[test]
    fn split_donated_frees_the_rest_and_the_root_to_the_array_platform() {
        for donated in [0, 1, 4, 5, 99] {
            let p = Recording::new(0x1000);
            let a = TdxPageArray::alloc(&p, 5, Placement::Anywhere).unwrap();
            let pages = a.pages().to_vec();
            // SAFETY: nothing was given to a module.
            let kept = unsafe { a.split_donated(donated) };
            let kept_pages: Vec<Pfn> = kept.iter().flat_map(|r| r.iter()).collect();
            let n = donated.min(5);
            assert_eq!(kept_pages, pages[..n]);
            // The pages past `donated` and the root went back; the kept
            // ones are still allocated (the caller records them).
            assert_eq!(p.freed_pages(), (5 - n) as u64 + 1, "donated {donated}");
            assert_eq!(p.live(), n, "donated {donated}");
        }
    }

    #[test]
    fn leak_leaks_the_pages_and_frees_only_the_root() {
        let p = Recording::new(0x1000);
        let a = TdxPageArray::alloc_contiguous(&p, 8, Placement::Anywhere).unwrap();
        let root = a.root();
        a.leak("release protocol error");
        assert_eq!(
            p.freed.lock().as_slice(),
            &[PfnRun::try_new(root, 1).unwrap()]
        );
        assert_eq!(p.leaked_pages(), 8);
        assert_eq!(p.leaked.lock()[0].1, "release protocol error");
        assert_eq!(p.live(), 0);
    }

    #[test]
    fn a_failed_allocation_gives_back_what_it_got_to_the_same_platform() {
        let p = Recording::new(0x1000);
        *p.budget.lock() = 4; // the root page and 3 pages
        let err = TdxPageArray::alloc(&p, 10, Placement::Anywhere).unwrap_err();
        assert!(matches!(err, PlatformError::OutOfMemory { count: 1, .. }));
        assert_eq!((p.live(), p.freed_pages()), (0, 4));
        let p = Recording::new(0x1000);
        *p.budget.lock() = 1; // the root page only
        assert!(TdxPageArray::alloc_contiguous(&p, 10, Placement::Anywhere).is_err());
        assert_eq!((p.live(), p.freed_pages()), (0, 1));
    }

    #[test]
    fn two_platforms_each_get_back_only_their_own_frames() {
        // Same frame numbers on both: a free into the wrong one would
        // succeed silently on a real allocator; here it would show up in
        // `b`'s record (or panic if `b` had not handed the frames out).
        let a = Recording::new(0x1000);
        let b = Recording::new(0x1000);
        let held_by_b = b.alloc_pages(64, 1, Placement::Anywhere).unwrap();
        let mut arr = TdxPageArray::alloc(&a, 10, Placement::Anywhere).unwrap();
        arr.populate(0);
        // SAFETY: nothing was given to a module.
        let kept = unsafe { arr.split_donated(4) };
        assert_eq!(kept.iter().map(|r| r.count()).sum::<u64>(), 4);
        assert_eq!(a.freed_pages(), 7);
        assert_eq!((b.freed_pages(), b.leaked_pages(), b.live()), (0, 0, 64));
        assert!(b.mem.lock().is_empty(), "nothing written through b");
        // SAFETY: `b` handed this run to the test, which never gave it away.
        unsafe { b.free_pages(held_by_b) };
    }
}
