//! The PAMT: one entry per 1 GiB, 2 MiB and 4 KiB page of every configured
//! TDMR, each with its lock (`src/common/memory_handlers/pamt_manager.c`).
//!
//! Entries live in a radix of lazily allocated chunks (a 1 GiB block's 1G
//! entry and 512 2M slots; a 2 MiB block's 2M entry and 512 4K entries), so
//! memory follows the pages a test touches, and a chunk, once allocated,
//! stays where it is: a leaf holds plain references to the lock words it
//! took. Fields are atomics; as in the module, the entry lock (not a
//! simulator mutex) is what keeps two leaves off one entry.
//!
//! Untouched entries read as the module initializes them (`pamt_init`, `src/common/memory_handlers/pamt_manager.c`):
//! 4K entries PT_RSVD inside a reserved area and PT_NDA elsewhere, 2M and
//! 1G entries PT_NDA.

use std::sync::OnceLock;

use tdx_types::metadata::PamtPageType;

use crate::locks::{AtomicU64, Busy, HeldStack, LockMode, LockSide, Ordering, SharexHp};

pub(crate) const GIB: u64 = 1 << 30;
const SPAN: usize = 512;

/// One PAMT entry as a host can observe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PamtEntry {
    /// Page type.
    pub pt: PamtPageType,
    /// Owner TDR frame (0 for a TDR or an unowned page).
    pub owner: u64,
    /// Blocking epoch.
    pub bepoch: u64,
}

impl PamtEntry {
    pub(crate) const NDA: Self = Self {
        pt: PamtPageType::NDA,
        owner: 0,
        bepoch: 0,
    };
    pub(crate) const RSVD: Self = Self {
        pt: PamtPageType::RSVD,
        owner: 0,
        bepoch: 0,
    };
}

/// One PAMT entry in the simulator: the lock and the fields.
///
/// `meta` holds the page type in bits 7:0 and the owner field above. For a
/// TDR page the owner field holds the simulator's index of the TD (the
/// module keeps 0 there and finds the TD by the TDR's address; [`Entry::get`]
/// reports 0).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) lock: SharexHp,
    meta: AtomicU64,
    bepoch: AtomicU64,
}

impl Entry {
    fn new(pt: PamtPageType) -> Self {
        Self {
            lock: SharexHp::new(),
            meta: AtomicU64::new(u64::from(pt.0)),
            bepoch: AtomicU64::new(0),
        }
    }

    pub(crate) fn pt(&self) -> PamtPageType {
        PamtPageType(self.meta.load(Ordering::Relaxed) as u8)
    }

    /// The owner field: the owner TDR's frame, or for a TDR page the TD's
    /// index.
    pub(crate) fn owner_field(&self) -> u64 {
        self.meta.load(Ordering::Relaxed) >> 8
    }

    /// The entry as the module reports it.
    pub(crate) fn get(&self) -> PamtEntry {
        let m = self.meta.load(Ordering::Relaxed);
        let pt = PamtPageType(m as u8);
        PamtEntry {
            pt,
            owner: if pt == PamtPageType::TDR { 0 } else { m >> 8 },
            bepoch: self.bepoch.load(Ordering::Relaxed),
        }
    }

    /// Sets type and owner field, and clears the blocking epoch.
    pub(crate) fn set(&self, pt: PamtPageType, owner_field: u64) {
        self.meta
            .store(u64::from(pt.0) | owner_field << 8, Ordering::Relaxed);
        self.bepoch.store(0, Ordering::Relaxed);
    }

    pub(crate) fn bepoch(&self) -> u64 {
        self.bepoch.load(Ordering::Relaxed)
    }

    pub(crate) fn set_bepoch(&self, e: u64) {
        self.bepoch.store(e, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Gig {
    entry: Entry,
    mids: [OnceLock<Box<Mid>>; SPAN],
}

#[derive(Debug)]
struct Mid {
    entry: Entry,
    leaves: [Entry; SPAN],
}

/// A configured TDMR and its PAMT.
#[derive(Debug)]
pub(crate) struct Tdmr {
    pub(crate) base: u64,
    pub(crate) size: u64,
    /// Reserved areas as absolute `[start, end)` byte ranges, in order.
    pub(crate) reserved: Vec<(u64, u64)>,
    /// PAMT `(base, size)` per level: index 0 = 4K, 1 = 2M, 2 = 1G.
    pub(crate) pamt: [(u64, u64); 3],
    /// Next address whose PAMT entry is not initialized.
    pub(crate) last_init: AtomicU64,
    /// The TDMR's mutex (TDH.SYS.TDMR.INIT).
    pub(crate) init_lock: crate::locks::Mutex,
    /// Per PAMT level: the frame up to which this TDMR's PAMT was marked
    /// private-dirty, and the cache generation of that marking.
    pub(crate) dirty_mark: std::sync::Mutex<[(u64, u64); 3]>,
    gigs: Box<[OnceLock<Box<Gig>>]>,
}

/// A TDMR as TDH.SYS.CONFIG checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TdmrSpec {
    pub(crate) base: u64,
    pub(crate) size: u64,
    pub(crate) reserved: Vec<(u64, u64)>,
    pub(crate) pamt: [(u64, u64); 3],
}

impl TdmrSpec {
    pub(crate) fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The parts of the TDMR not covered by reserved areas.
    pub(crate) fn non_reserved(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut cur = self.base;
        for &(s, e) in &self.reserved {
            if s > cur {
                out.push((cur, s));
            }
            cur = cur.max(e);
        }
        if cur < self.end() {
            out.push((cur, self.end()));
        }
        out
    }
}

impl Tdmr {
    pub(crate) fn new(s: TdmrSpec) -> Self {
        let gigs = (0..s.size / GIB).map(|_| OnceLock::new()).collect();
        Self {
            last_init: AtomicU64::new(s.base),
            init_lock: crate::locks::Mutex::new(),
            dirty_mark: std::sync::Mutex::new([(0, u64::MAX); 3]),
            gigs,
            base: s.base,
            size: s.size,
            reserved: s.reserved,
            pamt: s.pamt,
        }
    }

    pub(crate) fn end(&self) -> u64 {
        self.base + self.size
    }

    fn in_reserved(&self, pa: u64) -> bool {
        self.reserved.iter().any(|&(s, e)| pa >= s && pa < e)
    }

    fn gig(&self, pa: u64) -> &Gig {
        self.gigs[((pa - self.base) / GIB) as usize].get_or_init(|| {
            Box::new(Gig {
                entry: Entry::new(PamtPageType::NDA),
                mids: [const { OnceLock::new() }; SPAN],
            })
        })
    }

    fn mid(&self, pa: u64) -> &Mid {
        let base_2m = pa & !((2 << 20) - 1);
        self.gig(pa).mids[mid_index(pa)].get_or_init(|| {
            Box::new(Mid {
                entry: Entry::new(PamtPageType::NDA),
                leaves: std::array::from_fn(|i| {
                    let p = base_2m + ((i as u64) << 12);
                    Entry::new(if self.in_reserved(p) {
                        PamtPageType::RSVD
                    } else {
                        PamtPageType::NDA
                    })
                }),
            })
        })
    }

    /// The entry of `pa` at `level` (0 = 4K, 1 = 2M, 2 = 1G), allocating
    /// its chunk if it has none yet.
    pub(crate) fn entry(&self, level: u8, pa: u64) -> &Entry {
        match level {
            2 => &self.gig(pa).entry,
            1 => &self.mid(pa).entry,
            _ => &self.mid(pa).leaves[leaf_index(pa)],
        }
    }

    /// The entry of `pa` at `level` as the module reports it, without
    /// allocating.
    pub(crate) fn peek(&self, level: u8, pa: u64) -> PamtEntry {
        let gig = self.gigs[((pa - self.base) / GIB) as usize].get();
        let e = match (level, gig) {
            (_, None) => None,
            (2, Some(g)) => Some(&g.entry),
            (l, Some(g)) => g.mids[mid_index(pa)].get().map(|m| {
                if l == 1 {
                    &m.entry
                } else {
                    &m.leaves[leaf_index(pa)]
                }
            }),
        };
        match e {
            Some(e) => e.get(),
            None if level == 0 && self.in_reserved(pa) => PamtEntry::RSVD,
            None => PamtEntry::NDA,
        }
    }

    /// `pamt_is_2mb_range_free` plus the reserved-area rule: every 4K
    /// entry of the 2 MiB range at `pa` is NDA (read without locks, as the
    /// module does).
    pub(crate) fn range_2m_free(&self, pa: u64) -> bool {
        if self
            .reserved
            .iter()
            .any(|&(s, e)| s < pa + (2 << 20) && pa < e)
        {
            return false;
        }
        match self.gigs[((pa - self.base) / GIB) as usize]
            .get()
            .and_then(|g| g.mids[mid_index(pa)].get())
        {
            Some(m) => m.leaves.iter().all(|e| e.pt() == PamtPageType::NDA),
            None => true,
        }
    }

    /// Every allocated entry: (level, address, entry).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (u8, u64, &Entry)> + '_ {
        self.gigs.iter().enumerate().flat_map(move |(g, gig)| {
            let gpa = self.base + g as u64 * GIB;
            gig.get().into_iter().flat_map(move |gig| {
                std::iter::once((2, gpa, &gig.entry)).chain(gig.mids.iter().enumerate().flat_map(
                    move |(m, mid)| {
                        let mpa = gpa + ((m as u64) << 21);
                        mid.get().into_iter().flat_map(move |mid| {
                            std::iter::once((1, mpa, &mid.entry)).chain(
                                mid.leaves
                                    .iter()
                                    .enumerate()
                                    .map(move |(i, e)| (0, mpa + ((i as u64) << 12), e)),
                            )
                        })
                    },
                ))
            })
        })
    }

    /// Heap bytes of the allocated chunks.
    pub(crate) fn heap_bytes(&self) -> usize {
        let mut n = self.gigs.len() * size_of::<OnceLock<Box<Gig>>>();
        for g in self.gigs.iter().filter_map(OnceLock::get) {
            n += size_of::<Gig>();
            n += g.mids.iter().filter(|m| m.get().is_some()).count() * size_of::<Mid>();
        }
        n
    }
}

fn mid_index(pa: u64) -> usize {
    ((pa >> 21) & (SPAN as u64 - 1)) as usize
}

fn leaf_index(pa: u64) -> usize {
    ((pa >> 12) & (SPAN as u64 - 1)) as usize
}

/// The PAMT of every TDMR (set once, by a successful TDH.SYS.CONFIG).
#[derive(Debug, Default)]
pub(crate) struct Pamt {
    tdmrs: OnceLock<Box<[Tdmr]>>,
}

impl Pamt {
    /// The TDMRs (none before TDH.SYS.CONFIG succeeds).
    pub(crate) fn tdmrs(&self) -> &[Tdmr] {
        self.tdmrs.get().map_or(&[], |t| t)
    }

    pub(crate) fn configure(&self, tdmrs: Vec<TdmrSpec>) {
        let built: Box<[Tdmr]> = tdmrs.into_iter().map(Tdmr::new).collect();
        assert!(self.tdmrs.set(built).is_ok(), "configured twice");
    }

    /// `pamt_get_block`: the TDMR whose initialized part covers `pa`.
    pub(crate) fn block(&self, pa: u64) -> Option<&Tdmr> {
        let tdmrs = self.tdmrs();
        let i = tdmrs.partition_point(|t| t.base <= pa).checked_sub(1)?;
        let t = &tdmrs[i];
        (pa < t.end() && pa < t.last_init.load(Ordering::Acquire) & !(GIB - 1)).then_some(t)
    }
}

/// `pamt_walk`: takes the 1G entry shared, then (unless the walk ends
/// there) the 2M entry shared, then the 4K entry in `mode`; a walk ends at
/// the first PT_REG entry or at `target` if given, promoting that entry's
/// shared lock to exclusive when `mode` asks for it. Each lock taken is
/// pushed on `held` (so the leaf's end releases it, as `pamt_unwalk` does).
/// Returns the entry and its level.
pub(crate) fn walk<'s>(
    t: &'s Tdmr,
    pa: u64,
    target: Option<u8>,
    mode: LockMode,
    side: LockSide,
    held: &mut HeldStack<'s>,
) -> Result<(&'s Entry, u8), Busy> {
    let take =
        |e: &'s Entry, m: LockMode, held: &mut HeldStack<'s>| held.sharex_hp(&e.lock, m, side);
    let promote = |held: &mut HeldStack<'s>| -> Result<(), Busy> {
        if mode == LockMode::Exclusive {
            held.promote_last()?;
        }
        Ok(())
    };
    let g = t.gig(pa);
    // The common walk, a host's to a 4K entry below no huge page: its
    // shared holds taken at once (one fence), as `take` would take them
    // in turn.
    if side == LockSide::Host && matches!(target, None | Some(0)) {
        let m = t.mid(pa);
        let l = &m.leaves[leaf_index(pa)];
        let small = || g.entry.pt() != PamtPageType::REG && m.entry.pt() != PamtPageType::REG;
        if small() {
            // The leaf's own shared hold goes in a slot only for the pages
            // every leaf on a TD or vCPU takes shared (its TDR, its TDVPR):
            // a slot hold makes the next exclusive attempt on the word scan
            // the slots, and a TD's private pages are taken exclusively
            // more often than shared. (The page type read here is a hint:
            // either way the hold is the one the module's algorithm gives.)
            let hot = mode == LockMode::Shared
                && matches!(l.pt(), PamtPageType::TDR | PamtPageType::TDVPR);
            let mark = held.mark();
            let taken = if hot {
                held.try_shared_host([&g.entry.lock, &m.entry.lock, &l.lock])
            } else {
                held.try_shared_host([&g.entry.lock, &m.entry.lock])
            };
            if taken && small() {
                if !hot {
                    held.sharex_hp_counted(&l.lock, mode, side)?;
                }
                return Ok((l, 0));
            }
            held.release_to(mark);
        }
    }
    take(&g.entry, LockMode::Shared, held)?;
    if g.entry.pt() == PamtPageType::REG || target == Some(2) {
        promote(held)?;
        return Ok((&g.entry, 2));
    }
    let m = t.mid(pa);
    take(&m.entry, LockMode::Shared, held)?;
    if m.entry.pt() == PamtPageType::REG || target == Some(1) {
        promote(held)?;
        return Ok((&m.entry, 1));
    }
    let l = &m.leaves[leaf_index(pa)];
    take(l, mode, held)?;
    Ok((l, 0))
}
