//! Dynamic PAMT: which 2 MiB ranges of TDX memory have a PAMT page pair,
//! and how many of their 4K pages the module holds.
//!
//! With Dynamic PAMT the module keeps no 4K-level PAMT entries for a 2 MiB
//! range until the host gives it a *pair* of pages for them
//! (TDH.PHYMEM.PAMT.ADD). Every leaf that hands the module a 4K page (TDR,
//! TDCS, TDVPR, TDCX, S-EPT pages, PAGE.ADD, 4K PAGE.AUG, DEMOTE's new
//! S-EPT page) answers `TDX_MISSING_PAMT_PAGE_PAIR` while the page's range
//! has none. The host takes the pair back (TDH.PHYMEM.PAMT.REMOVE) when the
//! last such page has left the module. (Intel TDX module 1.5.16 and later:
//! `tdh_phymem_pamt_add.c`, `tdh_phymem_pamt_remove.c`, `pamt_manager.c`.)
//!
//! [`PairTable`] holds one atomic word per 2 MiB range of every TDMR: the
//! number of the range's 4K pages in the module's hands (0 to 512), whether
//! a pair is installed and its first frame (a pair is two consecutive
//! frames, so one frame number names it), and a busy bit for the thread
//! that is adding or removing the pair. Taking a reference on a range that
//! has a pair is one compare-and-swap and no SEAMCALL; the thread that
//! takes a range from 0 to 1 without a pair claims it (busy), issues
//! PAMT.ADD and publishes the pair; the thread that drops the last
//! reference claims it and issues PAMT.REMOVE. A thread that meets a busy
//! range does not wait: it gets [`PairError::InProgress`] and retries (as
//! on a busy S-EPT entry), so no lock is held across a SEAMCALL and threads
//! working on different ranges never touch the same word.
//!
//! The count covers a page from before the SEAMCALL that gives it to the
//! module until after the one that takes it back has returned. So the
//! count can reach 0, and PAMT.REMOVE run, only when no removal of a page
//! of the range is still inside the module: the module's PAMT.REMOVE reads
//! the range's entries without their locks and treats a non-zero count of
//! its own as a fatal error, so a host that removed a pair while a
//! TDH.MEM.PAGE.REMOVE of the range was in flight could shut the module
//! down (module source, `tdh_phymem_pamt_remove.c` against
//! `tdh_mem_page_remove.c`). Linux's Dynamic PAMT series keeps the same
//! rule with a global lock around the transitions; here the transitions
//! are per range and lock-free.
//!
//! A PAMT.REMOVE the module refuses leaves the pair installed with a count
//! of 0: the next reference reuses it (no PAMT.ADD), and
//! [`PairTable::remove_idle`] retries the removal (before a 2 MiB mapping
//! of the range, which the module refuses while the range has a pair, and
//! when the host goes away). Nothing is lost and nothing is leaked on the
//! way.
//!
//! DEMOTE of a 2 MiB page takes a new pair with it and leaves a count of
//! 512 ([`PairTable::demote`]); PROMOTE of 512 4K pages gives the pair
//! back without PAMT.REMOVE ([`PairTable::promote`]).

use alloc::{boxed::Box, vec::Vec};

#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};

use tdx_types::{Pfn, TdxStatus, addr::MAX_PFN};

/// The 4K pages the module may hold in one range, and the count's bits.
const PAGES: u64 = 512;
const COUNT_MASK: u64 = 0x3FF;
/// A thread is adding, removing or handing over the range's pair.
const BUSY: u64 = 1 << 10;
/// A pair is installed; its first frame is in the bits from `PAIR_SHIFT`.
const PAIR: u64 = 1 << 11;
const PAIR_SHIFT: u32 = 12;

fn pair_of(word: u64) -> Pfn {
    // The frame was stored from a `Pfn`; the mask only bounds it.
    Pfn::new((word >> PAIR_SHIFT) & (MAX_PFN - 1))
}

fn with_pair(pair: Pfn, count: u64) -> u64 {
    PAIR | (pair.as_u64() << PAIR_SHIFT) | count
}

/// Why a range's pair could not be had or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairError {
    /// Another thread is adding or removing this range's pair: retry.
    InProgress,
    /// The platform had no two pages for a pair.
    NoMemory,
    /// TDH.PHYMEM.PAMT.ADD (or the leaf that takes the pair) failed with
    /// this status; the pair went back to the platform.
    Module(TdxStatus),
    /// The range is not in a TDMR: the module has no PAMT for it (it will
    /// refuse the page itself).
    NotTdx,
    /// The range's state does not allow the change (a DEMOTE into a range
    /// that has a pair, a PROMOTE of a range that does not hold 512 pages,
    /// a 2 MiB mapping of a range whose 4K pages the module holds).
    State,
}

/// What dropping a reference did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Other pages of the range are still in the module: nothing else.
    Kept,
    /// The last page is gone and PAMT.REMOVE gave back the pair, which
    /// starts at this frame; the caller releases its two frames.
    Removed(Pfn),
    /// The last page is gone; PAMT.REMOVE failed with this status. The pair
    /// stays installed with no pages ([`PairTable::remove_idle`] retries).
    Kept0(TdxStatus),
    /// PAMT.REMOVE succeeded but gave back other frames than the pair
    /// installed (starting at `pair`): the module may still hold ours.
    Mismatch { pair: Pfn },
    /// The range is not in a TDMR or had no reference to drop (a bug in
    /// the caller's accounting; nothing changed).
    Unbalanced,
}

/// One TDMR's ranges.
struct Region {
    /// First frame of the region (2 MiB aligned).
    first: u64,
    words: Box<[AtomicU64]>,
}

/// The per-range state of Dynamic PAMT: one word per 2 MiB of every TDMR.
pub(crate) struct PairTable {
    /// Sorted by `first`, disjoint.
    regions: Vec<Region>,
}

impl core::fmt::Debug for PairTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PairTable")
            .field("regions", &self.regions.len())
            .field("pairs", &self.installed())
            .finish()
    }
}

impl PairTable {
    /// A table for the TDMRs `(base, size)` in bytes (2 MiB aligned, as the
    /// module requires of TDMRs, 1 GiB aligned in fact), or `None` if the
    /// allocator has no memory for it (8 bytes per 2 MiB).
    pub(crate) fn new(tdmrs: impl Iterator<Item = (u64, u64)>) -> Option<Self> {
        let mut regions: Vec<Region> = Vec::new();
        for (base, size) in tdmrs {
            let n = usize::try_from(size >> 21).ok()?;
            let mut words = Vec::new();
            words.try_reserve_exact(n).ok()?;
            words.extend((0..n).map(|_| AtomicU64::new(0)));
            regions.try_reserve(1).ok()?;
            regions.push(Region {
                first: (base >> 12) & !(PAGES - 1),
                words: words.into_boxed_slice(),
            });
        }
        regions.sort_unstable_by_key(|r| r.first);
        Some(Self { regions })
    }

    /// The word of the range of `pfn`.
    #[inline]
    fn word(&self, pfn: Pfn) -> Option<&AtomicU64> {
        let pfn = pfn.as_u64();
        // Few TDMRs (the module allows 64 at most): the region is the last
        // one that starts at or below the frame.
        let i = self.regions.partition_point(|r| r.first <= pfn);
        let r = self.regions.get(i.checked_sub(1)?)?;
        let idx = usize::try_from((pfn - r.first) / PAGES).ok()?;
        r.words.get(idx)
    }

    /// The first frame of the range of `pfn`.
    pub(crate) fn range_of(pfn: Pfn) -> Pfn {
        Pfn::new(pfn.as_u64() & !(PAGES - 1))
    }

    /// The fast path of [`get`](Self::get): takes a reference if the range
    /// of `pfn` has a pair and nobody is changing it, with no SEAMCALL.
    /// False if the caller needs `get`.
    #[inline]
    pub(crate) fn get_if_paired(&self, pfn: Pfn) -> bool {
        let Some(w) = self.word(pfn) else {
            return false;
        };
        let cur = w.load(Ordering::Acquire);
        cur & (PAIR | BUSY) == PAIR
            && cur & COUNT_MASK < PAGES
            && w.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Takes a reference on the range of `pfn` for a 4K page about to be
    /// given to the module. If the range has no pair, `alloc` gives two
    /// consecutive frames, `add` runs TDH.PHYMEM.PAMT.ADD of the range with
    /// them, and `free` takes them back if the pair is not needed after all
    /// (another thread added one first, or `add` failed). True if this call
    /// added the pair.
    pub(crate) fn get(
        &self,
        pfn: Pfn,
        alloc: impl FnOnce() -> Option<Pfn>,
        add: impl FnOnce(Pfn, Pfn) -> TdxStatus,
        free: impl FnOnce(Pfn),
    ) -> Result<bool, PairError> {
        let w = self.word(pfn).ok_or(PairError::NotTdx)?;
        let mut cur = w.load(Ordering::Acquire);
        // The common case: a pair, and a count below the maximum.
        loop {
            if cur & BUSY != 0 {
                return Err(PairError::InProgress);
            }
            if cur & PAIR == 0 {
                break;
            }
            if cur & COUNT_MASK >= PAGES {
                // 512 pages of one range are already in the module: one
                // more is an accounting bug the module would refuse too.
                return Err(PairError::State);
            }
            match w.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(false),
                Err(now) => cur = now,
            }
        }
        self.add_pair(w, pfn, alloc, add, free)
    }

    /// [`get`](Self::get) on a range without a pair.
    #[cold]
    #[inline(never)]
    fn add_pair(
        &self,
        w: &AtomicU64,
        pfn: Pfn,
        alloc: impl FnOnce() -> Option<Pfn>,
        add: impl FnOnce(Pfn, Pfn) -> TdxStatus,
        free: impl FnOnce(Pfn),
    ) -> Result<bool, PairError> {
        // The pages come before the claim, so no other thread waits on the
        // allocator (which may sleep) through the busy bit.
        let pair = alloc().ok_or(PairError::NoMemory)?;
        if w.compare_exchange(0, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // Another thread added a pair (or is adding one) first.
            free(pair);
            return Err(PairError::InProgress);
        }
        let s = add(Self::range_of(pfn), pair);
        if s.is_error() {
            w.store(0, Ordering::Release);
            free(pair);
            return Err(PairError::Module(s));
        }
        w.store(with_pair(pair, 1), Ordering::Release);
        Ok(true)
    }

    /// Drops the reference of a 4K page that the module gave back (the
    /// SEAMCALL that took it has returned). The last one runs `remove`
    /// (TDH.PHYMEM.PAMT.REMOVE of the range: the two frames it gave back,
    /// or its status).
    pub(crate) fn put(
        &self,
        pfn: Pfn,
        remove: impl FnOnce(Pfn) -> Result<(Pfn, Pfn), TdxStatus>,
    ) -> Put {
        let Some(w) = self.word(pfn) else {
            return Put::Unbalanced;
        };
        let mut cur = w.load(Ordering::Acquire);
        loop {
            let count = cur & COUNT_MASK;
            // A reference is held, so nobody else can have the range busy:
            // the busy states are entered only from a count of 0 or by the
            // holder of the last reference.
            if cur & BUSY != 0 || cur & PAIR == 0 || count == 0 {
                return Put::Unbalanced;
            }
            if count > 1 {
                match w.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Put::Kept,
                    Err(now) => cur = now,
                }
                continue;
            }
            // The last page: claim the range (count 0, busy) for the removal.
            match w.compare_exchange_weak(
                cur,
                (cur - 1) | BUSY,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Self::remove_claimed(w, cur - 1, Self::range_of(pfn), remove),
                Err(now) => cur = now,
            }
        }
    }

    /// PAMT.REMOVE of `range`, claimed busy with a pair and no pages
    /// (`idle` is its word without the busy bit).
    fn remove_claimed(
        w: &AtomicU64,
        idle: u64,
        range: Pfn,
        remove: impl FnOnce(Pfn) -> Result<(Pfn, Pfn), TdxStatus>,
    ) -> Put {
        let pair = pair_of(idle);
        match remove(range) {
            Ok((a, b)) if a == pair && b.as_u64() == pair.as_u64() + 1 => {
                w.store(0, Ordering::Release);
                Put::Removed(pair)
            }
            Ok(_) => {
                // The module says the range has no pair now; ours is not
                // what it gave back, so it may still use it: the caller
                // reports it leaked.
                w.store(0, Ordering::Release);
                Put::Mismatch { pair }
            }
            Err(s) => {
                w.store(idle, Ordering::Release);
                Put::Kept0(s)
            }
        }
    }

    /// Removes the pair of the range of `pfn` if it has one and no pages
    /// (a removal that failed before), as a 2 MiB mapping of the range
    /// needs. `Ok` if the range has no pair (now or before); `Put` says
    /// what the removal did.
    pub(crate) fn remove_idle(
        &self,
        pfn: Pfn,
        remove: impl FnOnce(Pfn) -> Result<(Pfn, Pfn), TdxStatus>,
    ) -> Result<Option<Put>, PairError> {
        let w = self.word(pfn).ok_or(PairError::NotTdx)?;
        let cur = w.load(Ordering::Acquire);
        if cur == 0 {
            return Ok(None);
        }
        if cur & BUSY != 0 {
            return Err(PairError::InProgress);
        }
        if cur & COUNT_MASK != 0 {
            return Err(PairError::State);
        }
        w.compare_exchange(cur, cur | BUSY, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| PairError::InProgress)?;
        Ok(Some(Self::remove_claimed(
            w,
            cur,
            Self::range_of(pfn),
            remove,
        )))
    }

    /// DEMOTE of the 2 MiB page at `pfn` to 4K pages: the range must have
    /// no pair; `demote` runs the leaf with the new pair from `alloc`;
    /// success leaves the pair installed with 512 pages, failure gives the
    /// pair to `free`.
    pub(crate) fn demote(
        &self,
        pfn: Pfn,
        alloc: impl FnOnce() -> Option<Pfn>,
        demote: impl FnOnce(Pfn) -> TdxStatus,
        free: impl FnOnce(Pfn),
    ) -> Result<TdxStatus, PairError> {
        let w = self.word(pfn).ok_or(PairError::NotTdx)?;
        let pair = alloc().ok_or(PairError::NoMemory)?;
        if let Err(now) = w.compare_exchange(0, BUSY, Ordering::AcqRel, Ordering::Acquire) {
            free(pair);
            return Err(if now & BUSY != 0 {
                PairError::InProgress
            } else {
                PairError::State
            });
        }
        let s = demote(pair);
        if s.is_error() {
            w.store(0, Ordering::Release);
            free(pair);
            return Err(PairError::Module(s));
        }
        w.store(with_pair(pair, PAGES), Ordering::Release);
        Ok(s)
    }

    /// PROMOTE of the 512 4K pages of the range at `pfn` to one 2 MiB page:
    /// `promote` runs the leaf and returns the pair the module gave back.
    /// Success leaves the range without a pair: [`Put::Removed`] with the
    /// pair for the caller to release, or [`Put::Mismatch`] if the module
    /// gave back other frames (ours may still be in use: the caller reports
    /// them leaked). Failure restores the range.
    pub(crate) fn promote(
        &self,
        pfn: Pfn,
        promote: impl FnOnce() -> Result<(Pfn, Pfn), TdxStatus>,
    ) -> Result<Put, PairError> {
        let w = self.word(pfn).ok_or(PairError::NotTdx)?;
        let cur = w.load(Ordering::Acquire);
        if cur & BUSY != 0 {
            return Err(PairError::InProgress);
        }
        if cur & PAIR == 0 || cur & COUNT_MASK != PAGES {
            return Err(PairError::State);
        }
        w.compare_exchange(cur, cur | BUSY, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| PairError::InProgress)?;
        let pair = pair_of(cur);
        match promote() {
            Ok((a, b)) => {
                w.store(0, Ordering::Release);
                Ok(if a == pair && b.as_u64() == pair.as_u64() + 1 {
                    Put::Removed(pair)
                } else {
                    Put::Mismatch { pair }
                })
            }
            Err(s) => {
                w.store(cur, Ordering::Release);
                Err(PairError::Module(s))
            }
        }
    }

    /// The number of installed pairs.
    pub(crate) fn installed(&self) -> usize {
        self.regions
            .iter()
            .flat_map(|r| r.words.iter())
            .filter(|w| w.load(Ordering::Relaxed) & PAIR != 0)
            .count()
    }

    /// Every range with a pair: its first frame, the pair's first frame,
    /// and the count of pages. For teardown and reports; not atomic as a
    /// whole.
    pub(crate) fn for_each_pair(&self, f: &mut dyn FnMut(Pfn, Pfn, u64)) {
        for r in &self.regions {
            for (i, w) in r.words.iter().enumerate() {
                let cur = w.load(Ordering::Acquire);
                if cur & PAIR != 0 {
                    let range = Pfn::new((r.first + i as u64 * PAGES) & (MAX_PFN - 1));
                    f(range, pair_of(cur), cur & COUNT_MASK);
                }
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use core::cell::Cell;

    use super::*;

    const OK: TdxStatus = TdxStatus::SUCCESS;
    const GIB: u64 = 1 << 30;

    fn table() -> PairTable {
        // Two TDMRs, given out of order: [4 GiB, 5 GiB) and [1 GiB, 2 GiB).
        PairTable::new([(4 * GIB, GIB), (GIB, GIB)].into_iter()).unwrap()
    }

    fn pfn(addr: u64) -> Pfn {
        Pfn::new(addr >> 12)
    }

    #[test]
    fn first_page_adds_the_pair_and_the_last_removes_it() {
        let t = table();
        let adds = Cell::new(0);
        let p = pfn(GIB + 0x1000);
        for i in 0..3 {
            let added = t
                .get(
                    Pfn::new(p.as_u64() + i),
                    || Some(Pfn::new(0x10)),
                    |range, pair| {
                        assert_eq!((range, pair), (pfn(GIB), Pfn::new(0x10)));
                        adds.set(adds.get() + 1);
                        OK
                    },
                    |_| panic!("nothing to free"),
                )
                .unwrap();
            assert_eq!(added, i == 0);
        }
        assert_eq!(adds.get(), 1);
        assert_eq!(t.installed(), 1);
        let remove = |range: Pfn| {
            assert_eq!(range, pfn(GIB));
            Ok((Pfn::new(0x10), Pfn::new(0x11)))
        };
        assert_eq!(t.put(p, remove), Put::Kept);
        assert_eq!(t.put(p, remove), Put::Kept);
        assert_eq!(t.put(p, remove), Put::Removed(Pfn::new(0x10)));
        assert_eq!(t.installed(), 0);
        // Nothing left to drop.
        assert_eq!(t.put(p, remove), Put::Unbalanced);
    }

    #[test]
    fn outside_every_tdmr_is_refused_and_unbalanced() {
        let t = table();
        let never = |_: Pfn, _: Pfn| -> TdxStatus { unreachable!() };
        for a in [0, 2 * GIB, 3 * GIB, 5 * GIB] {
            assert_eq!(
                t.get(pfn(a), || None, never, |_| ()),
                Err(PairError::NotTdx)
            );
            assert_eq!(t.put(pfn(a), |_| unreachable!()), Put::Unbalanced);
        }
        // The last range of each TDMR is in it.
        assert!(t.word(pfn(2 * GIB - 4096)).is_some());
        assert!(t.word(pfn(5 * GIB - 4096)).is_some());
    }

    #[test]
    fn a_failed_add_frees_the_pair_and_leaves_no_state() {
        let t = table();
        let freed = Cell::new(None);
        let busy = TdxStatus::from_raw(0x8000_0200_0000_0001);
        let r = t.get(
            pfn(GIB),
            || Some(Pfn::new(0x20)),
            |_, _| busy,
            |p| freed.set(Some(p)),
        );
        assert_eq!(r, Err(PairError::Module(busy)));
        assert_eq!(freed.get(), Some(Pfn::new(0x20)));
        assert_eq!(t.installed(), 0);
        // No memory: nothing claimed either.
        let r = t.get(pfn(GIB), || None, |_, _| unreachable!(), |_| ());
        assert_eq!(r, Err(PairError::NoMemory));
        assert_eq!(t.word(pfn(GIB)).unwrap().load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_failed_remove_keeps_the_pair_for_reuse_and_for_remove_idle() {
        let t = table();
        let p = pfn(4 * GIB + (6 << 20));
        let add = |_: Pfn, _: Pfn| OK;
        t.get(p, || Some(Pfn::new(0x30)), add, |_| ()).unwrap();
        let busy = TdxStatus::from_raw(0x8000_0200_0000_0001);
        assert_eq!(t.put(p, |_| Err(busy)), Put::Kept0(busy));
        assert_eq!(t.installed(), 1);
        // The next page reuses the pair: no allocation, no PAMT.ADD.
        let added = t
            .get(p, || unreachable!(), |_, _| unreachable!(), |_| ())
            .unwrap();
        assert!(!added);
        // A range with pages cannot be emptied of its pair.
        assert_eq!(t.remove_idle(p, |_| unreachable!()), Err(PairError::State));
        assert_eq!(t.put(p, |_| Err(busy)), Put::Kept0(busy));
        let got = t.remove_idle(p, |range| {
            assert_eq!(range, pfn(4 * GIB + (6 << 20)));
            Ok((Pfn::new(0x30), Pfn::new(0x31)))
        });
        assert_eq!(got, Ok(Some(Put::Removed(Pfn::new(0x30)))));
        assert_eq!(t.remove_idle(p, |_| unreachable!()), Ok(None));
    }

    #[test]
    fn a_module_that_gives_back_other_frames_is_a_mismatch() {
        let t = table();
        let p = pfn(GIB);
        t.get(p, || Some(Pfn::new(0x40)), |_, _| OK, |_| ())
            .unwrap();
        assert_eq!(
            t.put(p, |_| Ok((Pfn::new(0x40), Pfn::new(0x99)))),
            Put::Mismatch {
                pair: Pfn::new(0x40)
            }
        );
        assert_eq!(t.installed(), 0);
    }

    #[test]
    fn demote_installs_512_and_promote_takes_them_back() {
        let t = table();
        let p = pfn(GIB + (2 << 20));
        let s = t
            .demote(
                p,
                || Some(Pfn::new(0x50)),
                |pair| {
                    assert_eq!(pair, Pfn::new(0x50));
                    OK
                },
                |_| unreachable!(),
            )
            .unwrap();
        assert_eq!(s, OK);
        // 512 pages: one more is refused.
        assert_eq!(
            t.get(p, || None, |_, _| unreachable!(), |_| ()),
            Err(PairError::State)
        );
        // A second demote into a range with a pair is refused, its pair freed.
        let freed = Cell::new(false);
        assert_eq!(
            t.demote(
                p,
                || Some(Pfn::new(0x60)),
                |_| unreachable!(),
                |_| freed.set(true)
            ),
            Err(PairError::State)
        );
        assert!(freed.get());
        // Promote after one page left: refused (not 512 pages).
        assert_eq!(t.put(p, |_| unreachable!()), Put::Kept);
        assert_eq!(t.promote(p, || unreachable!()), Err(PairError::State));
        t.get(p, || None, |_, _| unreachable!(), |_| ()).unwrap();
        // A failed promote restores the range.
        let busy = TdxStatus::from_raw(0x8000_0200_0000_0001);
        assert_eq!(t.promote(p, || Err(busy)), Err(PairError::Module(busy)));
        assert_eq!(
            t.promote(p, || Ok((Pfn::new(0x50), Pfn::new(0x51)))),
            Ok(Put::Removed(Pfn::new(0x50)))
        );
        assert_eq!(t.installed(), 0);
    }

    #[test]
    fn a_busy_range_is_in_progress_for_others() {
        let t = table();
        let p = pfn(GIB);
        // While this thread's PAMT.ADD runs, another get, demote or
        // remove_idle of the range is refused with InProgress.
        t.get(
            p,
            || Some(Pfn::new(0x70)),
            |_, _| {
                assert_eq!(
                    t.get(p, || Some(Pfn::new(0x80)), |_, _| unreachable!(), |_| ()),
                    Err(PairError::InProgress)
                );
                assert_eq!(
                    t.remove_idle(p, |_| unreachable!()),
                    Err(PairError::InProgress)
                );
                assert_eq!(t.promote(p, || unreachable!()), Err(PairError::InProgress));
                OK
            },
            |_| unreachable!(),
        )
        .unwrap();
        let mut seen = Vec::new();
        t.for_each_pair(&mut |range, pair, count| seen.push((range, pair, count)));
        assert_eq!(seen, [(pfn(GIB), Pfn::new(0x70), 1)]);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use alloc::sync::Arc;

    use loom::{sync::atomic::AtomicUsize, thread};

    use super::*;

    /// A model of the module's side of one range: whether a pair is
    /// installed and how many pages of the range it holds. PAMT.REMOVE
    /// with pages inside would be the module's fatal error; PAMT.ADD onto
    /// a pair would be refused.
    #[derive(Default)]
    struct Module {
        pairs: AtomicUsize,
        pages: AtomicUsize,
        adds: AtomicUsize,
        allocs: AtomicUsize,
        frees: AtomicUsize,
    }

    impl Module {
        fn add(&self) -> TdxStatus {
            assert_eq!(self.pairs.fetch_add(1, Ordering::SeqCst), 0, "two pairs");
            self.adds.fetch_add(1, Ordering::SeqCst);
            TdxStatus::SUCCESS
        }
        fn remove(&self, pair: Pfn) -> Result<(Pfn, Pfn), TdxStatus> {
            assert_eq!(
                self.pages.load(Ordering::SeqCst),
                0,
                "PAMT.REMOVE with pages in the range"
            );
            assert_eq!(self.pairs.fetch_sub(1, Ordering::SeqCst), 1);
            Ok((pair, Pfn::new(pair.as_u64() + 1)))
        }
        /// A page handed over with a reference held: the module's count
        /// needs a pair.
        fn hand(&self) {
            assert_eq!(self.pairs.load(Ordering::SeqCst), 1, "page without a pair");
            self.pages.fetch_add(1, Ordering::SeqCst);
        }
        fn take(&self) {
            self.pages.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn one_range() -> PairTable {
        PairTable::new([(1 << 30, 2 << 20)].into_iter()).unwrap()
    }

    const PAGE: u64 = (1 << 30) >> 12;

    /// One thread's use of a page: get (retrying while the range is busy),
    /// hand the page to the module, take it back, put.
    fn use_page(t: &PairTable, m: &Module, pair: u64) {
        loop {
            match t.get(
                Pfn::new(PAGE),
                || {
                    m.allocs.fetch_add(1, Ordering::SeqCst);
                    Some(Pfn::new(pair))
                },
                |_, _| m.add(),
                |_| {
                    m.frees.fetch_add(1, Ordering::SeqCst);
                },
            ) {
                Ok(_) => break,
                Err(PairError::InProgress) => thread::yield_now(),
                Err(e) => panic!("{e:?}"),
            }
        }
        m.hand();
        m.take();
        match t.put(Pfn::new(PAGE), |_| {
            let cur = t.word(Pfn::new(PAGE)).unwrap().load(Ordering::SeqCst);
            m.remove(pair_of(cur))
        }) {
            Put::Kept => {}
            Put::Removed(_) => {
                m.frees.fetch_add(1, Ordering::SeqCst);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Two threads each map and unmap one page of the same range: never two
    /// pairs, never a page without a pair, never PAMT.REMOVE with a page
    /// inside; at the end no pair, and every pair allocated was freed once.
    #[test]
    fn concurrent_get_put_keep_one_pair() {
        loom::model(|| {
            let t = Arc::new(one_range());
            let m = Arc::new(Module::default());
            let (t2, m2) = (Arc::clone(&t), Arc::clone(&m));
            let h = thread::spawn(move || use_page(&t2, &m2, 0x100));
            use_page(&t, &m, 0x200);
            h.join().unwrap();
            assert_eq!(m.pairs.load(Ordering::SeqCst), 0);
            assert_eq!(t.installed(), 0);
            // Each pair allocated was freed exactly once: after a lost
            // race, or after its removal.
            assert_eq!(
                m.allocs.load(Ordering::SeqCst),
                m.frees.load(Ordering::SeqCst)
            );
            let adds = m.adds.load(Ordering::SeqCst);
            assert!((1..=2).contains(&adds));
        });
    }

    /// A thread drops the last page while another takes a reference: the
    /// taker either reuses the pair (no removal) or adds a new one after
    /// the removal, never in between.
    #[test]
    fn last_put_races_a_get() {
        loom::model(|| {
            let t = Arc::new(one_range());
            let m = Arc::new(Module::default());
            t.get(
                Pfn::new(PAGE),
                || Some(Pfn::new(0x100)),
                |_, _| m.add(),
                |_| (),
            )
            .unwrap();
            m.hand();
            let (t2, m2) = (Arc::clone(&t), Arc::clone(&m));
            let h = thread::spawn(move || {
                m2.take();
                let r = t2.put(Pfn::new(PAGE), |_| m2.remove(Pfn::new(0x100)));
                assert!(matches!(r, Put::Kept | Put::Removed(_)), "{r:?}");
            });
            use_page(&t, &m, 0x200);
            h.join().unwrap();
            assert_eq!(m.pairs.load(Ordering::SeqCst), 0);
            assert_eq!(t.installed(), 0);
        });
    }
}
