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

/// "Suppress #VE", bit 63 of every entry the module writes (`SVE`).
const SVE: u64 = 1 << 63;
/// R, W and X (bits 2:0).
const RWX: u64 = 0b111;
/// What every L1 leaf holds besides its frame and permissions: SVE,
/// memory type WB (6 in bits 5:3), IPAT (bit 6) and PS (bit 7), which is
/// part of every leaf state's encoding, 4K leaves included
/// (`sept_set_leaf_no_lock_internal` in `sept_manager.c`; the state
/// encodings in `sept_manager.h`).
const LEAF_ATTRIBUTES: u64 = SVE | 6 << 3 | 1 << 6 | 1 << 7;
/// `SEPT_ARCH_ENTRY_LEAF_MASK` (`sept_manager.h`): RWX, MT, IPAT, PS, the
/// frame (51:12) and SVE. The lock bits (11, 52) and the state bits of the
/// module's encoding (D, TDEX..TDP) are not part of it.
const ARCH_LEAF_MASK: u64 = 0x800F_FFFF_FFFF_F0FF;
/// `SEPT_ARCH_ENTRY_NON_LEAF_MASK` (`sept_manager.h`): RWX and PS only; the
/// frame of the S-EPT page below a non-leaf entry is not shown.
const ARCH_NON_LEAF_MASK: u64 = RWX | 1 << 7;

/// The entry as the module holds it, without its lock bits and the state
/// bits outside both architectural masks: a leaf as
/// `sept_set_leaf_no_lock_internal` writes it (RWX cleared by
/// RANGE.BLOCK and never set for PENDING), a non-leaf as
/// `sept_set_mapped_non_leaf` writes it (RWX cleared by RANGE.BLOCK), and
/// REMOVED as `SEPT_STATE_REMOVED_MASK | SVE` (`sept_manager.h`).
fn module_entry(e: Septe) -> u64 {
    let frame = e.pfn << 12 & TARGET_MASK;
    match e.state {
        SeptState::MAPPED => frame | LEAF_ATTRIBUTES | RWX,
        SeptState::BLOCKED | SeptState::PENDING | SeptState::PENDING_BLOCKED => {
            frame | LEAF_ATTRIBUTES
        }
        SeptState::NL_MAPPED => SVE | frame | RWX,
        SeptState::NL_BLOCKED => SVE | frame,
        // REMOVED, and any state the simulator does not write.
        _ => SVE,
    }
}

/// The architectural view of an S-EPT entry that extended error
/// information and TDH.MEM.SEPT.RD report in RCX
/// (`set_arch_septe_details_in_vmm_regs` in `sept_manager.c`): FREE shows
/// only SVE (`0x8000000000000000`); otherwise the entry is masked by its PS
/// bit. A leaf (PS = 1, every leaf state and every size, 4K included) shows
/// `frame | 0x80000000000000F7` when MAPPED and `frame | 0x80000000000000F0`
/// when PENDING, BLOCKED or PENDING_BLOCKED. A non-leaf entry (PS = 0;
/// REMOVED too) shows RWX and PS only: NL_MAPPED `0x7`, NL_BLOCKED and
/// REMOVED `0`, without the frame of the page below. The level does not
/// enter it. (The module reports a 2M PENDING leaf's ACCEPT_COUNTER in
/// bits 20:12 when a guest's accept was interrupted half-way; the
/// simulator's guest accepts a page at once, so the counter is always 0.)
pub(crate) fn septe_arch(e: Option<Septe>) -> u64 {
    let Some(e) = e else {
        return SVE;
    };
    let raw = module_entry(e);
    if raw & 1 << 7 != 0 {
        raw & ARCH_LEAF_MASK
    } else {
        raw & ARCH_NON_LEAF_MASK
    }
}

/// Writes the S-EPT details of `e` at `level` into RCX/RDX
/// (`set_arch_septe_details_in_vmm_regs`, `sept_manager.c`): RCX as
/// [`septe_arch`], RDX = `level` in bits 2:0 and the public state
/// (`sept_get_arch_state`: FREE 0, BLOCKED 1, PENDING 2, PENDING_BLOCKED 3,
/// MAPPED 4, REMOVED 5, NL_BLOCKED 0x81, NL_MAPPED 0x84) in bits 15:8;
/// bits 17:16 (the L2 VM) are 0 for L1 entries.
pub(crate) fn details(a: &mut SeamcallArgs, e: Option<Septe>, level: u8) {
    a.rcx = septe_arch(e);
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
