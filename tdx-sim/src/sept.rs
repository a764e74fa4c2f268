//! One TD's Secure EPT (`src/common/memory_handlers/sept_manager.c`).
//!
//! A tree of S-EPT pages as in the module: each page holds 512 entries of
//! one level, the root page holds entries of level `pwl`. An entry is one
//! 64-bit word: the state in bits 7:0, the entry lock TDEL in bit 11 and
//! the host-priority mark TDHP in bit 52 ([`crate::locks::septe`]), and in
//! bits 51:12 the frame of a leaf, or for a non-leaf entry the simulator's
//! index of the child page (whose frame the page records). A FREE entry is
//! 0 apart from its lock bits.
//!
//! Walks only load entries, and the entry lock is the word's own bit, so
//! leaves on different GPAs of one TD touch different words; what keeps
//! leaves apart is the module's tree and entry locks, as in the module.

use tdx_sys::SeamcallArgs;
use tdx_types::regs::SeptState;

use crate::{
    locks::{AtomicU64, Ordering, septe},
    slab::Slab,
};

const ENTRIES: usize = 512;
const TARGET_MASK: u64 = ((1 << 40) - 1) << 12;

/// One S-EPT page: 512 entries and the frame it lives in.
#[derive(Debug)]
pub(crate) struct SeptPage {
    pub(crate) e: [AtomicU64; ENTRIES],
    pfn: AtomicU64,
}

impl SeptPage {
    fn new() -> Self {
        Self {
            e: std::array::from_fn(|_| AtomicU64::new(0)),
            pfn: AtomicU64::new(0),
        }
    }

    fn clear(&self) {
        for e in self.e.iter() {
            e.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn pfn(&self) -> u64 {
        self.pfn.load(Ordering::Relaxed)
    }
}

/// An entry's word for `state` pointing at `target` (a frame, or a child
/// page's index), unlocked.
pub(crate) fn word(state: SeptState, target: u64) -> u64 {
    u64::from(state.0) | (target << 12 & TARGET_MASK)
}

/// The state of an entry word.
pub(crate) fn state_of(w: u64) -> SeptState {
    SeptState(w as u8)
}

/// The frame or child index of an entry word.
pub(crate) fn target_of(w: u64) -> u64 {
    (w & TARGET_MASK) >> 12
}

fn is_non_leaf(s: SeptState) -> bool {
    matches!(s, SeptState::NL_MAPPED | SeptState::NL_BLOCKED)
}

/// An entry as the leaves reason about it (absent = FREE): its state and
/// the frame it points to (a private page, or for a non-leaf entry the
/// S-EPT page below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Septe {
    pub(crate) state: SeptState,
    pub(crate) pfn: u64,
}

/// Where a walk ended: the entry word, its level, and its value when read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot<'s> {
    pub(crate) word: &'s AtomicU64,
    pub(crate) level: u8,
    pub(crate) value: u64,
}

/// The S-EPT of one TD: the root page (in the TDCS, never freed) and the
/// pages below it.
#[derive(Debug)]
pub(crate) struct Sept {
    root: SeptPage,
    pages: Slab<SeptPage>,
}

impl Default for Sept {
    fn default() -> Self {
        Self {
            root: SeptPage::new(),
            pages: Slab::default(),
        }
    }
}

impl Sept {
    fn page(&self, i: u32) -> &SeptPage {
        self.pages
            .get(i)
            .expect("an S-EPT page index from an entry")
    }

    /// The child page of a non-leaf entry word.
    pub(crate) fn child(&self, w: u64) -> &SeptPage {
        self.page(target_of(w) as u32)
    }

    /// The entry view of a word.
    pub(crate) fn view(&self, w: u64) -> Option<Septe> {
        let state = state_of(w);
        if state == SeptState::FREE {
            return None;
        }
        let pfn = if is_non_leaf(state) {
            self.child(w).pfn()
        } else {
            target_of(w)
        };
        Some(Septe { state, pfn })
    }

    /// Walks from the root (level `pwl`) towards `level` for `gpa`
    /// (`secure_ept_walk`): stops at `level`, or earlier at an entry that
    /// is not NL_MAPPED. `Ok` at `level`; `Err` with where it stopped.
    pub(crate) fn walk(&self, pwl: u8, gpa: u64, level: u8) -> Result<Slot<'_>, Slot<'_>> {
        let mut page = &self.root;
        let mut l = pwl;
        loop {
            let word = &page.e[index(gpa, l)];
            let value = word.load(Ordering::Acquire);
            let slot = Slot {
                word,
                level: l,
                value,
            };
            if l == level {
                return Ok(slot);
            }
            if state_of(value) != SeptState::NL_MAPPED || l == 0 {
                return Err(slot);
            }
            page = self.child(value);
            l -= 1;
        }
    }

    /// The 512 entries of the page below the non-leaf entry word `w`.
    pub(crate) fn children(&self, w: u64) -> &[AtomicU64] {
        &self.child(w).e
    }

    /// A new S-EPT page in frame `pfn`, all FREE; returns its index (for
    /// the parent entry's word).
    pub(crate) fn add_page(&self, pfn: u64) -> u64 {
        let (i, p) = self.pages.alloc(SeptPage::new, SeptPage::clear);
        p.pfn.store(pfn, Ordering::Relaxed);
        u64::from(i)
    }

    /// Frees the page below the non-leaf entry word `w`.
    pub(crate) fn free_page(&self, w: u64) {
        let i = target_of(w) as u32;
        self.page(i).clear();
        self.pages.free(i);
    }

    /// Empties the tree (a TD slot about to be reused).
    pub(crate) fn reset(&self) {
        self.root.clear();
        let freed: std::collections::HashSet<u32> = self.pages.freed().into_iter().collect();
        for (i, p) in self.pages.iter() {
            p.clear();
            if !freed.contains(&i) {
                self.pages.free(i);
            }
        }
    }

    /// Every entry in use: (level, GPA, word), walking the tree.
    pub(crate) fn entries(&self, pwl: u8) -> Vec<(u8, u64, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(&self.root, pwl, 0u64)];
        while let Some((page, l, base)) = stack.pop() {
            for (i, e) in page.e.iter().enumerate() {
                let w = e.load(Ordering::Relaxed);
                if w == 0 {
                    continue;
                }
                let gpa = base + ((i as u64) << (12 + 9 * u32::from(l)));
                out.push((l, gpa, w));
                if is_non_leaf(state_of(w)) && l > 0 {
                    stack.push((self.child(w), l - 1, gpa));
                }
            }
        }
        out
    }

    /// Heap bytes of the pages in use and the slot tables.
    pub(crate) fn heap_bytes(&self) -> usize {
        let pages = 1 + self.pages.iter().count() - self.pages.freed().len();
        self.pages.table_bytes() + pages * size_of::<SeptPage>()
    }
}

/// The index of `gpa`'s entry in a page of level `level`.
pub(crate) fn index(gpa: u64, level: u8) -> usize {
    ((gpa >> (12 + 9 * u32::from(level))) & (ENTRIES as u64 - 1)) as usize
}

/// Architectural view of an S-EPT entry for extended error information:
/// FREE shows only "suppress #VE" (bit 63); present entries show their
/// frame and RWX; blocked or pending ones their frame without permissions.
/// The lock bits are not part of it.
pub(crate) fn septe_arch(e: Option<Septe>, level: u8) -> u64 {
    match e {
        None => 1 << 63,
        Some(e) => {
            let rwx = match e.state {
                SeptState::MAPPED | SeptState::NL_MAPPED => 0b111,
                _ => 0,
            };
            let large = if level > 0 && !is_non_leaf(e.state) {
                1 << 7
            } else {
                0
            };
            (e.pfn << 12) | rwx | large
        }
    }
}

/// Writes the S-EPT details of `e` at `level` into RCX/RDX
/// (`set_arch_septe_details_in_vmm_regs`).
pub(crate) fn details(a: &mut SeamcallArgs, e: Option<Septe>, level: u8) {
    a.rcx = septe_arch(e, level);
    let state = e.map_or(SeptState::FREE, |e| e.state);
    a.rdx = u64::from(level) | u64::from(state.0) << 8;
}

/// True for the leaf states the model has.
pub(crate) fn is_leaf_state(s: SeptState) -> bool {
    matches!(
        s,
        SeptState::MAPPED | SeptState::BLOCKED | SeptState::PENDING | SeptState::PENDING_BLOCKED
    )
}

/// Writes `new` into an entry the caller has locked, keeping it locked
/// (the leaf's end releases the lock). The write clears TDHP, as the
/// module's whole-entry writes do.
pub(crate) fn write_locked(e: &AtomicU64, new: u64) {
    debug_assert!(e.load(Ordering::Relaxed) & septe::LOCK != 0);
    e.store(new | septe::LOCK, Ordering::Release);
}

/// Writes `new` into an entry the caller has locked and releases the lock
/// with the same write (`sept_set_leaf_and_release_locks`); the caller
/// forgets its record of the lock.
pub(crate) fn write_unlocked(e: &AtomicU64, new: u64) {
    debug_assert!(e.load(Ordering::Relaxed) & septe::LOCK != 0);
    e.store(new & !(septe::LOCK | septe::HP), Ordering::Release);
}
