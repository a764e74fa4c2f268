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
//!
//! Dynamic PAMT (Intel TDX module 1.5.16+, `pamt_manager.c`/`.h`, on when
//! TDH.SYS.CONFIG set R8 bit 16): a 2 MiB range has 4K entries only while
//! its 2M entry is a PT_PAMT node, i.e. while the host gave it a PAMT page
//! pair (TDH.PHYMEM.PAMT.ADD, or DEMOTE of a 2M page). The node records the
//! two pages and a 10-bit count of the 4K module pages in the range,
//! updated with atomics and no lock. The TDMR's 4K PAMT area is a bitmap
//! with one bit per 4K page, set for pair pages and for every page of a
//! reserved area (no 4K entry is PT_RSVD). Here a node's 4K entries are
//! the `Mid`'s `leaves`, reset when a pair is installed and stale (all
//! PT_NDA) while there is none; each `Mid` also holds its range's 512
//! bitmap bits (pair pages; reserved pages' bits are the reserved areas).

use std::{collections::HashMap, sync::OnceLock};

use tdx_types::metadata::PamtPageType;

use crate::memory::{ModuleUse, PAGE, PageState};

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
pub(crate) struct Mid {
    pub(crate) entry: Entry,
    pub(crate) leaves: [Entry; SPAN],
    /// Dynamic PAMT, while `entry` is PT_PAMT: the pair's frames
    /// (`page_hpa0`, `page_hpa1`) and the node's `page_count` (10 bits in
    /// the module; the simulator keeps the whole value to catch a wrap).
    pub(crate) pair: [AtomicU64; 2],
    pub(crate) count: AtomicU64,
    /// Dynamic PAMT: this range's 512 bits of the TDMR's bitmap, set for
    /// pages that serve as pair pages (reserved pages' bits are the
    /// reserved areas), updated with atomic test-and-set as the module's.
    bitmap: [AtomicU64; 8],
}

/// A count update the module treats as a fatal error
/// (`pamt_inc_nl_page_count` from 512, `pamt_dec_nl_page_count` from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CountFatal(pub(crate) u64);

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
    /// Per PAMT level: the frame up to which TDH.SYS.TDMR.INIT marked this
    /// TDMR's PAMT private-dirty, and the cache generation of the shard of
    /// the last frame marked ([`crate::memory::PhysMem::generation_of`])
    /// when it was. Only a call holding `init_lock` reads or writes them.
    pub(crate) dirty_mark: [[AtomicU64; 2]; 3],
    /// Dynamic PAMT is on (TDH.SYS.CONFIG R8 bit 16).
    pub(crate) dynamic: bool,
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
    pub(crate) fn new(s: TdmrSpec, dynamic: bool) -> Self {
        let gigs = (0..s.size / GIB).map(|_| OnceLock::new()).collect();
        Self {
            last_init: AtomicU64::new(s.base),
            init_lock: crate::locks::Mutex::new(),
            dirty_mark: std::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            dynamic,
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

    /// The 2 MiB block of `pa`: its 2M entry and the 4K entries below.
    pub(crate) fn mid(&self, pa: u64) -> &Mid {
        let base_2m = pa & !((2 << 20) - 1);
        self.gig(pa).mids[mid_index(pa)].get_or_init(|| {
            Box::new(Mid {
                entry: Entry::new(PamtPageType::NDA),
                leaves: std::array::from_fn(|i| {
                    let p = base_2m + ((i as u64) << 12);
                    // Dynamic PAMT has no PT_RSVD 4K entries: the bitmap
                    // marks reserved pages (`pamt_init`).
                    Entry::new(if !self.dynamic && self.in_reserved(p) {
                        PamtPageType::RSVD
                    } else {
                        PamtPageType::NDA
                    })
                }),
                pair: [AtomicU64::new(0), AtomicU64::new(0)],
                count: AtomicU64::new(0),
                bitmap: std::array::from_fn(|_| AtomicU64::new(0)),
            })
        })
    }

    /// The allocated 2 MiB block of `pa`, if any (no allocation).
    fn mid_peek(&self, pa: u64) -> Option<&Mid> {
        self.gigs[((pa - self.base) / GIB) as usize]
            .get()
            .and_then(|g| g.mids[mid_index(pa)].get().map(|m| &**m))
    }

    /// True if the 2M entry of `pa`'s range is a PT_PAMT node.
    pub(crate) fn has_pair(&self, pa: u64) -> bool {
        self.mid_peek(pa)
            .is_some_and(|m| m.entry.pt() == PamtPageType::PAMT)
    }

    /// Whether the walk stops at a 2M entry of type `pt`: a 2M page in
    /// either mode; with Dynamic PAMT, anything but a PT_PAMT node
    /// (`pamt_walk`).
    fn stops_at_2m(&self, pt: PamtPageType) -> bool {
        if self.dynamic {
            pt != PamtPageType::PAMT
        } else {
            pt == PamtPageType::REG
        }
    }

    // ---- Dynamic PAMT: the bitmap ----------------------------------------

    /// `dynamic_pamt_4k_bitmap_get`: the page at `pa` is a pair page or in
    /// a reserved area.
    pub(crate) fn bitmap_get(&self, pa: u64) -> bool {
        let (w, b) = bit_of(pa);
        self.in_reserved(pa)
            || self
                .mid_peek(pa)
                .is_some_and(|m| m.bitmap[w].load(Ordering::Acquire) & b != 0)
    }

    /// `dynamic_pamt_4k_bitmap_set`: atomically sets the bit of `pa`;
    /// false if it was set already.
    pub(crate) fn bitmap_set(&self, pa: u64) -> bool {
        let (w, b) = bit_of(pa);
        !self.in_reserved(pa) && self.mid(pa).bitmap[w].fetch_or(b, Ordering::AcqRel) & b == 0
    }

    /// `dynamic_pamt_4k_bitmap_clear`.
    pub(crate) fn bitmap_clear(&self, pa: u64) {
        let (w, b) = bit_of(pa);
        self.mid(pa).bitmap[w].fetch_and(!b, Ordering::AcqRel);
    }

    /// Any bit set in the 2 MiB range at `pa` (`pamt_is_2mb_range_free`'s
    /// bitmap test for a 2M PAGE.AUG: its 8 qwords all 0).
    fn bitmap_any_2m(&self, pa: u64) -> bool {
        self.reserved
            .iter()
            .any(|&(s, e)| s < pa + (2 << 20) && pa < e)
            || self
                .mid_peek(pa)
                .is_some_and(|m| m.bitmap.iter().any(|w| w.load(Ordering::Acquire) != 0))
    }

    /// The frames whose bit is set as pair pages.
    pub(crate) fn bitmap_frames(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (g, gig) in self.gigs.iter().enumerate() {
            let Some(gig) = gig.get() else { continue };
            for (m, mid) in gig.mids.iter().enumerate() {
                let Some(mid) = mid.get() else { continue };
                let first = (self.base + g as u64 * GIB + ((m as u64) << 21)) / crate::memory::PAGE;
                for (w, word) in mid.bitmap.iter().enumerate() {
                    let v = word.load(Ordering::Acquire);
                    out.extend(
                        (0..64)
                            .filter(|i| v >> i & 1 != 0)
                            .map(|i| first + w as u64 * 64 + i),
                    );
                }
            }
        }
        out
    }

    // ---- Dynamic PAMT: the node's count ----------------------------------

    /// `pamt_inc_nl_page_count` / `pamt_dec_nl_page_count` for the 4K page
    /// at `pa`: a no-op unless Dynamic PAMT is on and the range's node is
    /// PT_PAMT. `Ok(true)` when a decrement took the count to 0 (the
    /// removal hint); `Err` on the module's fatal error (an increment from
    /// 512 or a decrement from 0).
    pub(crate) fn count_add(&self, pa: u64, up: bool) -> Result<bool, CountFatal> {
        if !self.dynamic {
            return Ok(false);
        }
        let m = self.mid(pa);
        if m.entry.pt() != PamtPageType::PAMT {
            return Ok(false);
        }
        if up {
            let old = m.count.fetch_add(1, Ordering::AcqRel);
            if old >= SPAN as u64 {
                return Err(CountFatal(old));
            }
            Ok(false)
        } else {
            let old = m.count.fetch_sub(1, Ordering::AcqRel);
            if old == 0 || old > SPAN as u64 {
                return Err(CountFatal(old));
            }
            Ok(old == 1)
        }
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
        if self.dynamic && level == 0 && !self.has_pair(pa) {
            return PamtEntry::NDA;
        }
        match e {
            Some(e) => e.get(),
            None if level == 0 && !self.dynamic && self.in_reserved(pa) => PamtEntry::RSVD,
            None => PamtEntry::NDA,
        }
    }

    /// `pamt_is_2mb_range_free` plus the reserved-area rule: every 4K
    /// entry of the 2 MiB range at `pa` is NDA (read without locks, as the
    /// module does).
    pub(crate) fn range_2m_free(&self, pa: u64) -> bool {
        if self.dynamic {
            // No 4K entries without a pair (the caller found the 2M entry
            // NDA): the range must hold no pair page and no reserved page
            // (`pamt_is_2mb_range_free`, 8 bitmap qwords all 0).
            return !self.bitmap_any_2m(pa);
        }
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
                            // With Dynamic PAMT a range without a pair has no
                            // 4K entries (the array holds stale NDA ones).
                            let n = if self.dynamic && mid.entry.pt() != PamtPageType::PAMT {
                                0
                            } else {
                                SPAN
                            };
                            std::iter::once((1, mpa, &mid.entry)).chain(
                                mid.leaves[..n]
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

/// The word and bit of `pa` in its range's 512 bitmap bits.
fn bit_of(pa: u64) -> (usize, u64) {
    let i = leaf_index(pa);
    (i / 64, 1 << (i % 64))
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

    /// Every 2M node that is PT_PAMT: (TDMR, range address, node).
    pub(crate) fn pamt_nodes(&self) -> Vec<(&Tdmr, u64, &Mid)> {
        let mut out = Vec::new();
        for t in self.tdmrs().iter().filter(|t| t.dynamic) {
            for (g, gig) in t.gigs.iter().enumerate() {
                let Some(gig) = gig.get() else { continue };
                for (m, mid) in gig.mids.iter().enumerate() {
                    if let Some(mid) = mid.get()
                        && mid.entry.pt() == PamtPageType::PAMT
                    {
                        out.push((t, t.base + g as u64 * GIB + ((m as u64) << 21), &**mid));
                    }
                }
            }
        }
        out
    }

    /// True if Dynamic PAMT is on (TDH.SYS.CONFIG succeeded with it).
    pub(crate) fn dynamic(&self) -> bool {
        self.tdmrs().first().is_some_and(|t| t.dynamic)
    }

    pub(crate) fn configure(&self, tdmrs: Vec<TdmrSpec>, dynamic: bool) {
        let built: Box<[Tdmr]> = tdmrs.into_iter().map(|s| Tdmr::new(s, dynamic)).collect();
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
/// the first PT_REG entry (with Dynamic PAMT: at a 2M entry that is not a
/// PT_PAMT node) or at `target` if given, promoting that entry's
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
        let small = || g.entry.pt() != PamtPageType::REG && !t.stops_at_2m(m.entry.pt());
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
    if t.stops_at_2m(m.entry.pt()) || target == Some(1) {
        promote(held)?;
        return Ok((&m.entry, 1));
    }
    let l = &m.leaves[leaf_index(pa)];
    take(l, mode, held)?;
    Ok((l, 0))
}

impl crate::state::Shared {
    /// Dynamic PAMT: each PT_PAMT node's pair pages serve that range only,
    /// have their bitmap bit set, are free in the PAMT and owned by the
    /// module as pair pages; the node's count is the number of 4K pages in
    /// use below it; every bitmap bit set (reserved pages aside) and every
    /// frame the module owns as a pair page is one of those pair pages.
    pub(crate) fn check_pamt_pairs(&self) -> Result<(), String> {
        let s = self;
        let mut pair_of: HashMap<u64, u64> = HashMap::new();
        for (_, range, mid) in s.pamt.pamt_nodes() {
            for i in 0..2 {
                let f = mid.pair[i].load(Ordering::Relaxed);
                if let Some(other) = pair_of.insert(f, range) {
                    return Err(format!(
                        "pair page {f:#x} serves the 2 MiB ranges at {other:#x} and {range:#x}"
                    ));
                }
                let pa = f * PAGE;
                let Some(pt) = s.pamt.block(pa) else {
                    return Err(format!("pair page {f:#x} of {range:#x} is in no TDMR"));
                };
                if !pt.bitmap_get(pa) {
                    return Err(format!("pair page {f:#x} of {range:#x}: bitmap bit clear"));
                }
                let own = pt.peek(0, pa).pt;
                if own != PamtPageType::NDA
                    || pt.peek(1, pa).pt == PamtPageType::REG
                    || pt.peek(2, pa).pt == PamtPageType::REG
                {
                    return Err(format!(
                        "pair page {f:#x} of {range:#x} is also in use ({own:?} or a large page)"
                    ));
                }
                if !s.mem.owned_all(f, f + 1, |u| u == ModuleUse::PamtPair)
                    || s.mem.state(f) != Some(PageState::Module)
                {
                    return Err(format!(
                        "pair page {f:#x} of {range:#x} is not the module's ({:?})",
                        s.mem.state(f)
                    ));
                }
            }
            let used = mid
                .leaves
                .iter()
                .filter(|e| e.pt() != PamtPageType::NDA)
                .count() as u64;
            let count = mid.count.load(Ordering::Relaxed);
            if count != used {
                return Err(format!(
                    "the 2 MiB range at {range:#x}: count {count}, {used} pages in use"
                ));
            }
        }
        for t in s.pamt.tdmrs() {
            if let Some(f) = t
                .bitmap_frames()
                .into_iter()
                .find(|f| !pair_of.contains_key(f))
            {
                return Err(format!(
                    "bitmap bit of frame {f:#x} set, but it is no pair page"
                ));
            }
        }
        for sh in s.mem.lock_all() {
            for (a, b, u) in sh.owned() {
                if u == ModuleUse::PamtPair
                    && let Some(f) = (a..b).find(|f| !pair_of.contains_key(f))
                {
                    return Err(format!("frame {f:#x} is owned as a pair page of no range"));
                }
            }
        }
        Ok(())
    }
}
