//! Simulated physical memory: contents, page accounting, the host page
//! allocator, the cache model, and which frames the module owns.
//!
//! - **Contents** are sparse 4 KiB pages, materialized on first write;
//!   unwritten pages read as zeros.
//! - **Accounting**: every page of RAM is in exactly one [`PageState`].
//! - **Cache model**: which pages may hold dirty lines, and under which
//!   KeyID. Every page starts "host dirty" (the host may have written it
//!   through KeyID 0); WBINVD clears everything, CLFLUSH one page. Pages the
//!   module writes under a private KeyID become "private dirty" until
//!   flushed; handing such a page out or freeing it is a violation.
//! - **Module ownership**: the frames the module owns and why (PAMT,
//!   extension pool, TD pages), the module's side of the accounting.
//!
//! All of these are range maps or hash maps of touched pages, so memory use
//! follows what the test touches, not the size of the host. They are split
//! into shards by 64 MiB slices of physical address (shard = slice number
//! modulo [`SHARDS`], so 64 shards cover 4 GiB and then repeat), each
//! behind its own mutex. The module has no such lock (it locks PAMT
//! entries, one page at a time): the shards are the simulator's own
//! bookkeeping, fine enough that leaves on frames in different slices do
//! not meet (two vCPU threads whose frames lie 64 MiB or more apart, as
//! most do), and coarse enough that a 4 TiB host has 64 Ki slices. The
//! allocator scans the slices in address order, one allocation at a time.

use std::sync::{Mutex, MutexGuard};

use rustc_hash::FxHashMap as HashMap;

use crate::{
    locks::{AtomicU64, Ordering},
    rangemap::RangeMap,
};

/// Where a page of RAM is, from the host's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageState {
    /// In the host allocator.
    Free,
    /// Allocated by the host (through `FrameAllocator::alloc_pages`, or used
    /// directly by a trace).
    Host,
    /// Owned by the TDX module (PAMT, extension pool, later TD pages).
    Module,
    /// Given up for good by the host (`FrameDeallocator::leak_pages`).
    Leaked,
}

/// What dirty cache lines a page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CacheLines {
    /// Lines the host wrote through KeyID 0.
    HostDirty,
    /// Lines the module wrote under this private KeyID.
    Private(u16),
}

/// Why the module owns a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModuleUse {
    /// Part of the PAMT of a TDMR.
    Pamt(u8),
    /// Donated to the extension memory pool.
    ExtPool,
    /// A Dynamic PAMT page pair page (TDH.PHYMEM.PAMT.ADD, DEMOTE).
    PamtPair,
    /// A TD's control, S-EPT or private page.
    Td,
}

/// Page counts by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accounting {
    /// Pages in the host allocator.
    pub free: u64,
    /// Pages the host allocated.
    pub host: u64,
    /// Pages the module owns.
    pub module: u64,
    /// Pages deliberately leaked.
    pub leaked: u64,
    /// All RAM pages (the sum of the four above).
    pub total: u64,
}

pub(crate) const PAGE: u64 = 4096;

/// Number of shards.
pub(crate) const SHARDS: usize = 64;
/// Frames per shard slice (64 MiB).
const CHUNK: u64 = 1 << 14;

fn shard_of(pfn: u64) -> usize {
    ((pfn / CHUNK) % SHARDS as u64) as usize
}

/// `[start, end)` cut at chunk boundaries.
fn pieces(start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> {
    let mut s = start;
    std::iter::from_fn(move || {
        if s >= end {
            return None;
        }
        let e = end.min((s / CHUNK + 1).saturating_mul(CHUNK));
        let p = (s, e);
        s = e;
        Some(p)
    })
}

/// The part of memory in one shard.
#[derive(Debug)]
pub(crate) struct Shard {
    state: RangeMap<PageState>,
    /// The cache model; read and written through [`Shard::cache`] and
    /// [`Shard::mark`] only.
    cache_map: RangeMap<CacheLines>,
    /// The newest marks not yet written into `cache_map`: one run of
    /// frames marked in address order (TDH.SYS.TDMR.INIT's PAMT pages,
    /// a host writing a buffer), grown in place and written as one range
    /// before anything else reads or changes the cache model.
    pending: Option<(u64, u64, CacheLines)>,
    owned: RangeMap<ModuleUse>,
    contents: HashMap<u64, Box<[u8; PAGE as usize]>>,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            state: RangeMap::new(),
            cache_map: RangeMap::new(),
            pending: None,
            owned: RangeMap::new(),
            contents: HashMap::default(),
        }
    }
}

/// A shard and its flush generation, alone in their cache lines (two
/// leaves on neighbouring slices do not share a line).
#[derive(Debug, Default)]
#[repr(align(128))]
struct ShardCell {
    m: Mutex<Shard>,
    /// Bumped by every flush in the shard and every host write to it, so
    /// callers can remember "I marked this page private-dirty" and skip
    /// re-marking it until then.
    generation: AtomicU64,
}

/// Physical memory of the simulated host.
#[derive(Debug)]
pub(crate) struct PhysMem {
    /// RAM as sorted, disjoint frame ranges.
    ram: Vec<(u64, u64)>,
    shards: Box<[ShardCell]>,
    /// Allocations take it, so two never pick the same free frames.
    alloc_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard (a bug in the simulator) must not hide
    // the state from the test that is reporting it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PhysMem {
    /// RAM from byte ranges (4 KiB aligned, sorted, disjoint).
    pub(crate) fn new(ram_bytes: &[(u64, u64)]) -> Self {
        let ram: Vec<(u64, u64)> = ram_bytes
            .iter()
            .map(|&(s, e)| (s / PAGE, e / PAGE))
            .collect();
        let mem = Self {
            shards: (0..SHARDS).map(|_| ShardCell::default()).collect(),
            alloc_lock: Mutex::new(()),
            ram,
        };
        for &(s, e) in &mem.ram {
            for (a, b) in pieces(s, e) {
                let mut sh = lock(&mem.shards[shard_of(a)].m);
                sh.state.insert(a, b, PageState::Free);
                sh.cache().insert(a, b, CacheLines::HostDirty);
            }
        }
        mem
    }

    fn shard(&self, pfn: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[shard_of(pfn)].m)
    }

    /// Runs `f` on each chunk piece of `[start, end)` with its shard locked.
    fn each(&self, start: u64, end: u64, mut f: impl FnMut(&mut Shard, u64, u64)) {
        for (a, b) in pieces(start, end) {
            f(&mut self.shard(a), a, b);
        }
    }

    /// True if every frame of `[start, end)` is RAM.
    pub(crate) fn is_ram(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ram.partition_point(|&(_, e)| e <= start);
        // RAM ranges are disjoint and sorted, but may touch.
        let mut cur = start;
        for &(s, e) in &self.ram[i..] {
            if s > cur {
                return false;
            }
            cur = cur.max(e);
            if cur >= end {
                return true;
            }
        }
        false
    }

    /// RAM frame ranges.
    pub(crate) fn ram(&self) -> &[(u64, u64)] {
        &self.ram
    }

    pub(crate) fn state(&self, pfn: u64) -> Option<PageState> {
        self.shard(pfn).state.get(pfn)
    }

    /// Every state range overlapping `[start, end)`, clipped to it.
    pub(crate) fn states(&self, start: u64, end: u64) -> Vec<(u64, u64, PageState)> {
        let mut out = Vec::new();
        self.each(start, end, |sh, a, b| {
            out.extend(
                sh.state
                    .overlapping(a, b)
                    .map(|(s, e, st)| (s.max(a), e.min(b), st)),
            );
        });
        out
    }

    /// True if some frame of `[start, end)` is in state `st`.
    pub(crate) fn any_state(&self, start: u64, end: u64, st: PageState) -> bool {
        pieces(start, end).any(|(a, b)| {
            self.shard(a)
                .state
                .overlapping(a, b)
                .any(|(_, _, s)| s == st)
        })
    }

    /// Sets the state of the RAM frames in `[start, end)` (non-RAM frames
    /// are left out).
    pub(crate) fn set_state(&self, start: u64, end: u64, st: PageState) {
        self.each(start, end, |sh, a, b| sh.state.update(a, b, |_| Some(st)));
    }

    pub(crate) fn accounting(&self) -> Accounting {
        let mut a = Accounting::default();
        for sh in self.shards.iter() {
            for (s, e, st) in lock(&sh.m).state.iter() {
                let n = e - s;
                a.total += n;
                match st {
                    PageState::Free => a.free += n,
                    PageState::Host => a.host += n,
                    PageState::Module => a.module += n,
                    PageState::Leaked => a.leaked += n,
                }
            }
        }
        a
    }

    /// Reads physical memory as the module or the hardware sees it, with no
    /// ownership check. Non-RAM reads as all ones.
    pub(crate) fn read(&self, pa: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let addr = pa.wrapping_add(done as u64);
            let (pfn, off) = (addr / PAGE, (addr % PAGE) as usize);
            let n = (PAGE as usize - off).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            let sh = self.shard(pfn);
            match sh.contents.get(&pfn) {
                Some(page) => dst.copy_from_slice(&page[off..off + n]),
                None if sh.state.get(pfn).is_some() => dst.fill(0),
                None => dst.fill(0xFF),
            }
            done += n;
        }
    }

    /// Writes physical memory with no ownership check. Writes to non-RAM are
    /// dropped.
    pub(crate) fn write(&self, pa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let addr = pa.wrapping_add(done as u64);
            let (pfn, off) = (addr / PAGE, (addr % PAGE) as usize);
            let n = (PAGE as usize - off).min(data.len() - done);
            let mut sh = self.shard(pfn);
            if sh.state.get(pfn).is_some() {
                let src = &data[done..done + n];
                if src.iter().all(|&b| b == 0) && !sh.contents.contains_key(&pfn) {
                    // Writing zeros to a page nobody wrote changes nothing.
                } else {
                    let page = sh
                        .contents
                        .entry(pfn)
                        .or_insert_with(|| Box::new([0; PAGE as usize]));
                    page[off..off + n].copy_from_slice(src);
                }
            }
            done += n;
        }
    }

    /// Forgets the contents of `[start, end)` (they read as zeros again).
    pub(crate) fn zero(&self, start: u64, end: u64) {
        self.each(start, end, zero_in);
    }

    /// Number of pages with stored contents.
    pub(crate) fn materialized_pages(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.m).contents.len()).sum()
    }

    // ---- module ownership ----

    /// The module takes `[start, end)` for `why`: owned, host state Module,
    /// contents zeroed if `zero`, cache lines private to `keyid`. One shard
    /// visit per 64 MiB slice.
    pub(crate) fn give_to_module(
        &self,
        start: u64,
        end: u64,
        why: ModuleUse,
        keyid: u16,
        zero: bool,
    ) {
        self.each(start, end, |sh, a, b| {
            sh.owned.insert(a, b, why);
            sh.state.update(a, b, |_| Some(PageState::Module));
            sh.cache().insert(a, b, CacheLines::Private(keyid));
            if zero {
                zero_in(sh, a, b);
            }
        });
    }

    /// The module gives `[start, end)` back to the host (host state Host).
    pub(crate) fn take_from_module(&self, start: u64, end: u64) {
        self.each(start, end, |sh, a, b| {
            sh.owned.remove(a, b);
            sh.state.update(a, b, |_| Some(PageState::Host));
        });
    }

    /// Marks `[start, end)` module-owned for `why` in the module's records
    /// only (the host state is set separately).
    pub(crate) fn set_owned(&self, start: u64, end: u64, why: ModuleUse) {
        self.each(start, end, |sh, a, b| sh.owned.insert(a, b, why));
    }

    /// True if every frame of `[start, end)` is module-owned with a use
    /// matching `pred`.
    pub(crate) fn owned_all(&self, start: u64, end: u64, pred: impl Fn(ModuleUse) -> bool) -> bool {
        pieces(start, end).all(|(a, b)| self.shard(a).owned.all_in(a, b, &pred))
    }

    /// Number of module-owned range entries (for footprints).
    pub(crate) fn owned_ranges(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.m).owned.len()).sum()
    }

    // ---- cache model ----

    /// Marks `[start, end)` as holding `lines`. Host lines also change the
    /// generation of their shards ([`PhysMem::generation_of`]): they may
    /// replace lines a caller marked private.
    pub(crate) fn mark_cache(&self, start: u64, end: u64, lines: CacheLines) {
        self.each(start, end, |sh, a, b| sh.mark(a, b, lines));
        if lines == CacheLines::HostDirty {
            for (a, _) in pieces(start, end) {
                self.bump(a);
            }
        }
    }

    fn bump(&self, pfn: u64) {
        self.shards[shard_of(pfn)]
            .generation
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn flush_all(&self) {
        for sh in self.shards.iter() {
            lock(&sh.m).cache().clear();
            sh.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn flush_range(&self, start: u64, end: u64) {
        self.each(start, end, |sh, a, b| {
            sh.cache().remove(a, b);
        });
        for (a, _) in pieces(start, end) {
            self.bump(a);
        }
    }

    /// Drops every line of private KeyID `keyid` (TDH.PHYMEM.CACHE.WB on
    /// every package).
    pub(crate) fn flush_keyid(&self, keyid: u16) {
        let line = CacheLines::Private(keyid);
        for sh in self.shards.iter() {
            lock(&sh.m)
                .cache()
                .update(0, u64::MAX, |l| (l != line).then_some(l));
            sh.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops the lines of `keyid` in `[start, end)` (TDH.PHYMEM.PAGE.WBINVD).
    pub(crate) fn flush_keyid_range(&self, start: u64, end: u64, keyid: u16) {
        let line = CacheLines::Private(keyid);
        self.each(start, end, |sh, a, b| {
            sh.cache().update(a, b, |l| (l != line).then_some(l));
        });
        for (a, _) in pieces(start, end) {
            self.bump(a);
        }
    }

    /// The cache generation of the shard of frame `pfn`: it changes
    /// whenever lines of the shard may have been flushed or overwritten by
    /// the host, so a caller that marked a page private at one generation
    /// knows the mark still holds while the generation is the same.
    #[inline]
    pub(crate) fn generation_of(&self, pfn: u64) -> u64 {
        self.shards[shard_of(pfn)]
            .generation
            .load(Ordering::Acquire)
    }

    /// The first page of `[start, end)` that may hold private dirty lines,
    /// and their KeyID.
    pub(crate) fn private_lines(&self, start: u64, end: u64) -> Option<(u64, u16)> {
        pieces(start, end).find_map(|(a, b)| {
            self.shard(a)
                .cache()
                .overlapping(a, b)
                .find_map(|(s, _, l)| match l {
                    CacheLines::Private(k) => Some((s.max(a), k)),
                    CacheLines::HostDirty => None,
                })
        })
    }

    /// The first page of `[start, end)` that may hold host dirty lines.
    pub(crate) fn host_dirty(&self, start: u64, end: u64) -> Option<u64> {
        pieces(start, end).find_map(|(a, b)| {
            self.shard(a)
                .cache()
                .overlapping(a, b)
                .find_map(|(s, _, l)| (l == CacheLines::HostDirty).then_some(s.max(a)))
        })
    }

    pub(crate) fn cache_ranges(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.m).cache().len()).sum()
    }

    // ---- allocator ----

    /// The free runs of RAM in address order (adjacent free frames in
    /// different shards joined), passed to `f` until it returns `Some`.
    fn first_free_run<T>(&self, mut f: impl FnMut(u64, u64) -> Option<T>) -> Option<T> {
        let mut run: Option<(u64, u64)> = None;
        for &(rs, re) in &self.ram {
            for (a, b) in pieces(rs, re) {
                let sh = self.shard(a);
                for (s, e, st) in sh.state.overlapping(a, b) {
                    let (s, e) = (s.max(a), e.min(b));
                    match (st, run) {
                        (PageState::Free, Some((r0, r1))) if r1 == s => run = Some((r0, e)),
                        (PageState::Free, _) => {
                            if let Some((r0, r1)) = run.take()
                                && let Some(x) = f(r0, r1)
                            {
                                return Some(x);
                            }
                            run = Some((s, e));
                        }
                        _ => {
                            if let Some((r0, r1)) = run.take()
                                && let Some(x) = f(r0, r1)
                            {
                                return Some(x);
                            }
                        }
                    }
                }
            }
        }
        run.and_then(|(r0, r1)| f(r0, r1))
    }

    /// First fit: the lowest `count` free frames starting at a multiple of
    /// `align`, at or above 1 MiB, inside one of the frame ranges `within`
    /// if given (a NUMA node), else anywhere; taken for the host.
    pub(crate) fn alloc(
        &self,
        count: u64,
        align: u64,
        within: Option<&[(u64, u64)]>,
    ) -> Option<u64> {
        const LOW: u64 = 0x100; // never below 1 MiB
        let _one_at_a_time = lock(&self.alloc_lock);
        let all = [(0, u64::MAX)];
        let windows = within.unwrap_or(&all);
        let found = self.first_free_run(|s, e| {
            if e <= LOW {
                return None;
            }
            windows.iter().find_map(|&(ws, we)| {
                let (lo, hi) = (s.max(LOW).max(ws), e.min(we));
                let start = lo.next_multiple_of(align);
                (start < hi && hi - start >= count).then_some(start)
            })
        })?;
        self.set_state(found, found + count, PageState::Host);
        Some(found)
    }

    /// Allocates exactly `[start, end)` if every frame of it is free.
    pub(crate) fn alloc_exact(&self, start: u64, end: u64) -> bool {
        let _one_at_a_time = lock(&self.alloc_lock);
        if !self.is_ram(start, end)
            || self
                .states(start, end)
                .iter()
                .any(|&(_, _, st)| st != PageState::Free)
        {
            return false;
        }
        self.set_state(start, end, PageState::Host);
        true
    }

    /// Puts `[start, end)` back into the allocator.
    pub(crate) fn release(&self, start: u64, end: u64) {
        self.each(start, end, |sh, a, b| {
            sh.state.update(a, b, |_| Some(PageState::Free));
        });
    }

    /// Gives `[start, end)` up for good (host state Leaked).
    pub(crate) fn leak(&self, start: u64, end: u64) {
        self.set_state(start, end, PageState::Leaked);
    }

    /// Every shard locked at once (in index order), for consistent checks.
    pub(crate) fn lock_all(&self) -> Vec<MutexGuard<'_, Shard>> {
        self.shards.iter().map(|s| lock(&s.m)).collect()
    }
}

fn zero_in(sh: &mut Shard, start: u64, end: u64) {
    if (end - start) as usize > sh.contents.len() {
        sh.contents.retain(|&p, _| p < start || p >= end);
    } else {
        for p in start..end {
            sh.contents.remove(&p);
        }
    }
}

impl Shard {
    /// The cache model, with the pending run of marks written into it.
    fn cache(&mut self) -> &mut RangeMap<CacheLines> {
        if let Some((s, e, l)) = self.pending.take() {
            self.cache_map.insert(s, e, l);
        }
        &mut self.cache_map
    }

    /// Marks `[start, end)` as holding `lines`: the pending run grows if
    /// this continues it with the same lines (setting the run and then
    /// this range is setting their union, an interval), else the run is
    /// written into the map and this range becomes the pending run.
    fn mark(&mut self, start: u64, end: u64, lines: CacheLines) {
        match &mut self.pending {
            Some((ps, pe, pl)) if *pl == lines && *ps <= start && start <= *pe => {
                *pe = (*pe).max(end);
            }
            _ => {
                self.cache();
                self.pending = Some((start, end, lines));
            }
        }
    }

    /// The host states in this shard.
    pub(crate) fn states(&self) -> impl Iterator<Item = (u64, u64, PageState)> + '_ {
        self.state.iter()
    }

    /// The module-owned ranges in this shard.
    pub(crate) fn owned(&self) -> impl Iterator<Item = (u64, u64, ModuleUse)> + '_ {
        self.owned.iter()
    }

    /// True if every frame of `[start, end)` (inside this shard) is owned.
    pub(crate) fn owned_all_in(&self, start: u64, end: u64) -> bool {
        self.owned.all_in(start, end, |_| true)
    }

    /// The host states overlapping `[start, end)`.
    pub(crate) fn states_in(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, PageState)> + '_ {
        self.state.overlapping(start, end)
    }

    /// The owned use of `pfn`.
    pub(crate) fn owned_at(&self, pfn: u64) -> Option<ModuleUse> {
        self.owned.get(pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames under test: 128 across the boundary of two shards.
    const BASE: u64 = CHUNK - 64;
    const N: u64 = 128;

    /// Maximal runs of equal lines, cut at shard boundaries (each shard
    /// has its own map).
    fn runs(model: &[Option<CacheLines>]) -> usize {
        let mut n = 0;
        for (i, l) in model.iter().enumerate() {
            let p = BASE + i as u64;
            if l.is_some() && (i == 0 || p.is_multiple_of(CHUNK) || model[i - 1] != *l) {
                n += 1;
            }
        }
        n
    }

    proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..Default::default()
        })]
        /// The cache model (with its pending run of marks) agrees with a
        /// plain array under marks in and out of address order, flushes
        /// and KeyID flushes, read after some of them, and its maps stay
        /// canonical.
        #[test]
        fn cache_marks_match_a_model(ops in proptest::collection::vec((0u8..6, 0u64..N, 1u64..9, 1u16..3, any::<bool>()), 1..80)) {
            let mem = PhysMem::new(&[(BASE * PAGE, (BASE + N) * PAGE)]);
            let mut model = vec![Some(CacheLines::HostDirty); N as usize];
            let mut cursor = 0;
            let last = ops.len() - 1;
            for (i, (kind, at, len, k, check)) in ops.into_iter().enumerate() {
                // Kind 4 and 5 continue from the end of the last mark, as a
                // run of marks in address order does.
                let s = if kind >= 4 { cursor } else { at };
                let e = (s + len).min(N);
                let set = match kind {
                    0 | 4 => Some(Some(CacheLines::HostDirty)),
                    1 | 5 => Some(Some(CacheLines::Private(k))),
                    _ => None,
                };
                match (kind, set) {
                    (_, Some(v)) => {
                        mem.mark_cache(BASE + s, BASE + e, v.expect("a mark"));
                        model[s as usize..e as usize].fill(v);
                        cursor = e % N;
                    }
                    (2, None) => {
                        mem.flush_range(BASE + s, BASE + e);
                        model[s as usize..e as usize].fill(None);
                    }
                    _ => {
                        mem.flush_keyid_range(BASE + s, BASE + e, k);
                        for m in &mut model[s as usize..e as usize] {
                            if *m == Some(CacheLines::Private(k)) {
                                *m = None;
                            }
                        }
                    }
                }
                // Reading settles the pending run: some ops are followed
                // by no read, so runs grow over several marks.
                if !check && i != last {
                    continue;
                }
                for (j, want) in model.iter().enumerate() {
                    let p = BASE + j as u64;
                    let got = match (mem.private_lines(p, p + 1), mem.host_dirty(p, p + 1)) {
                        (Some((q, k)), None) if q == p => Some(CacheLines::Private(k)),
                        (None, Some(q)) if q == p => Some(CacheLines::HostDirty),
                        (None, None) => None,
                        other => panic!("frame {p:#x}: {other:?}"),
                    };
                    prop_assert_eq!(got, *want, "frame {:#x}", p);
                }
                prop_assert_eq!(mem.cache_ranges(), runs(&model));
            }
        }
    }
}
