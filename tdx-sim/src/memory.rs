//! Simulated physical memory: contents, page accounting, the host page
//! allocator, and the cache model.
//!
//! - **Contents** are sparse 4 KiB pages, materialized on first write;
//!   unwritten pages read as zeros.
//! - **Accounting**: every page of RAM is in exactly one [`PageState`].
//! - **Cache model**: which pages may hold dirty lines, and under which
//!   KeyID. Every page starts "host dirty" (the host may have written it
//!   through KeyID 0); WBINVD clears everything, CLFLUSH one page. Pages the
//!   module writes under a private KeyID become "private dirty" until
//!   flushed; handing such a page out or freeing it is a violation.
//!
//! All three are range maps or hash maps of touched pages, so memory use
//! follows what the test touches, not the size of the host.

use rustc_hash::FxHashMap as HashMap;

use crate::rangemap::RangeMap;

/// Where a page of RAM is, from the host's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageState {
    /// In the host allocator.
    Free,
    /// Allocated by the host (through `Platform::alloc_pages`, or used
    /// directly by a trace).
    Host,
    /// Owned by the TDX module (PAMT, extension pool, later TD pages).
    Module,
    /// Given up for good by the host (`Platform::leak_pages`).
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

/// Physical memory of the simulated host.
#[derive(Debug)]
pub(crate) struct PhysMem {
    /// RAM as sorted, disjoint frame ranges.
    ram: Vec<(u64, u64)>,
    state: RangeMap<PageState>,
    contents: HashMap<u64, Box<[u8; PAGE as usize]>>,
    cache: RangeMap<CacheLines>,
    /// Bumped by every flush, so callers can remember "I marked this range
    /// dirty" and skip re-marking it until the next flush.
    cache_generation: u64,
}

impl PhysMem {
    /// RAM from byte ranges (4 KiB aligned, sorted, disjoint).
    pub(crate) fn new(ram_bytes: &[(u64, u64)]) -> Self {
        let ram: Vec<(u64, u64)> = ram_bytes
            .iter()
            .map(|&(s, e)| (s / PAGE, e / PAGE))
            .collect();
        let mut state = RangeMap::new();
        let mut cache = RangeMap::new();
        for &(s, e) in &ram {
            state.insert(s, e, PageState::Free);
            cache.insert(s, e, CacheLines::HostDirty);
        }
        Self {
            ram,
            state,
            contents: HashMap::default(),
            cache,
            cache_generation: 0,
        }
    }

    /// True if every frame of `[start, end)` is RAM.
    pub(crate) fn is_ram(&self, start: u64, end: u64) -> bool {
        self.state.all_in(start, end, |_| true)
    }

    /// RAM frame ranges.
    pub(crate) fn ram(&self) -> &[(u64, u64)] {
        &self.ram
    }

    pub(crate) fn state(&self, pfn: u64) -> Option<PageState> {
        self.state.get(pfn)
    }

    /// Every state range overlapping `[start, end)`.
    pub(crate) fn states(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, PageState)> + '_ {
        self.state.overlapping(start, end)
    }

    /// Sets the state of the RAM frames in `[start, end)` (non-RAM frames
    /// are left out).
    pub(crate) fn set_state(&mut self, start: u64, end: u64, st: PageState) {
        self.state.update(start, end, |_| Some(st));
    }

    pub(crate) fn accounting(&self) -> Accounting {
        let mut a = Accounting::default();
        for (s, e, st) in self.state.iter() {
            let n = e - s;
            a.total += n;
            match st {
                PageState::Free => a.free += n,
                PageState::Host => a.host += n,
                PageState::Module => a.module += n,
                PageState::Leaked => a.leaked += n,
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
            match self.contents.get(&pfn) {
                Some(page) => dst.copy_from_slice(&page[off..off + n]),
                None if self.state.get(pfn).is_some() => dst.fill(0),
                None => dst.fill(0xFF),
            }
            done += n;
        }
    }

    /// Writes physical memory with no ownership check. Writes to non-RAM are
    /// dropped.
    pub(crate) fn write(&mut self, pa: u64, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let addr = pa.wrapping_add(done as u64);
            let (pfn, off) = (addr / PAGE, (addr % PAGE) as usize);
            let n = (PAGE as usize - off).min(data.len() - done);
            if self.state.get(pfn).is_some() {
                let src = &data[done..done + n];
                if src.iter().all(|&b| b == 0) && !self.contents.contains_key(&pfn) {
                    // Writing zeros to a page nobody wrote changes nothing.
                } else {
                    let page = self
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
    pub(crate) fn zero(&mut self, start: u64, end: u64) {
        if (end - start) as usize > self.contents.len() {
            self.contents.retain(|&p, _| p < start || p >= end);
        } else {
            for p in start..end {
                self.contents.remove(&p);
            }
        }
    }

    /// Number of pages with stored contents.
    pub(crate) fn materialized_pages(&self) -> usize {
        self.contents.len()
    }

    // ---- cache model ----

    pub(crate) fn mark_cache(&mut self, start: u64, end: u64, lines: CacheLines) {
        self.cache.insert(start, end, lines);
    }

    pub(crate) fn flush_all(&mut self) {
        self.cache.clear();
        self.cache_generation += 1;
    }

    pub(crate) fn flush_range(&mut self, start: u64, end: u64) {
        self.cache.remove(start, end);
        self.cache_generation += 1;
    }

    /// Drops every line of private KeyID `keyid` (TDH.PHYMEM.CACHE.WB on
    /// every package).
    pub(crate) fn flush_keyid(&mut self, keyid: u16) {
        self.flush_keyid_range(0, u64::MAX, keyid);
    }

    /// Drops the lines of `keyid` in `[start, end)` (TDH.PHYMEM.PAGE.WBINVD).
    pub(crate) fn flush_keyid_range(&mut self, start: u64, end: u64, keyid: u16) {
        let line = CacheLines::Private(keyid);
        self.cache.update(start, end, |l| (l != line).then_some(l));
        self.cache_generation += 1;
    }

    /// Changes whenever lines may have been flushed.
    pub(crate) fn cache_generation(&self) -> u64 {
        self.cache_generation
    }

    /// The first page of `[start, end)` that may hold private dirty lines,
    /// and their KeyID.
    pub(crate) fn private_lines(&self, start: u64, end: u64) -> Option<(u64, u16)> {
        self.cache
            .overlapping(start, end)
            .find_map(|(s, _, l)| match l {
                CacheLines::Private(k) => Some((s, k)),
                CacheLines::HostDirty => None,
            })
    }

    /// The first page of `[start, end)` that may hold host dirty lines.
    pub(crate) fn host_dirty(&self, start: u64, end: u64) -> Option<u64> {
        self.cache
            .overlapping(start, end)
            .find_map(|(s, _, l)| (l == CacheLines::HostDirty).then_some(s))
    }

    pub(crate) fn cache_ranges(&self) -> usize {
        self.cache.len()
    }

    // ---- allocator ----

    /// First fit: the lowest `count` free frames starting at a multiple of
    /// `align`, at or above 1 MiB, inside one of the frame ranges `within`
    /// if given (a NUMA node), else anywhere.
    pub(crate) fn find_free(
        &self,
        count: u64,
        align: u64,
        within: Option<&[(u64, u64)]>,
    ) -> Option<u64> {
        const LOW: u64 = 0x100; // never below 1 MiB
        let all = [(0, u64::MAX)];
        let windows = within.unwrap_or(&all);
        for (s, e, st) in self.state.iter() {
            if st != PageState::Free || e <= LOW {
                continue;
            }
            for &(ws, we) in windows {
                let (lo, hi) = (s.max(LOW).max(ws), e.min(we));
                let start = lo.next_multiple_of(align);
                if start < hi && hi - start >= count {
                    return Some(start);
                }
            }
        }
        None
    }
}
