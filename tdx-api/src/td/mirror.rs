//! The TD's record of its Secure EPT: a radix tree shaped like the S-EPT
//! itself, with one atomic word per entry, that many threads change at
//! once without a lock.
//!
//! Each node mirrors one S-EPT page (512 entries; the root mirrors the TD's
//! root table, which the module made at TDH.MNG.INIT). An entry is one of:
//!
//! | state | meaning |
//! |---|---|
//! | free | nothing mapped, no table |
//! | adding | one thread is adding a table or a page here (TDH.MEM.SEPT.ADD, PAGE.AUG, PAGE.ADD) |
//! | leaf | a private page of this entry's size, first frame recorded |
//! | leaf, busy | one thread is changing that page (removal, split, merge) |
//! | leaf, blocked | the module holds the entry blocked: a removal stopped after TDH.MEM.RANGE.BLOCK; the next removal resumes from there |
//! | table | an S-EPT page we added, with the node that mirrors it (a split node, made by a demote, has a tag of its own) |
//! | table, busy | one thread is removing or merging that table |
//! | table, blocked | the table's entry stayed blocked after a failed removal |
//! | parked | a removed page whose frames wait for teardown (in doubt, or not written back), kept here because the TD's list for them could not grow |
//!
//! A thread that wants to change an entry moves it into a busy (or adding)
//! state with one compare-and-swap; only that thread then issues the
//! SEAMCALLs for it, and a final store publishes the result. Another thread
//! that meets a busy entry does not wait: it gets
//! [`TdError::InProgress`](super::TdError::InProgress) and retries later
//! (the way KVM's TDP MMU freezes an SPTE and has other faults retry).
//! Operations on entries of different GPAs never touch the same word,
//! except the walk through the tables above them, which only reads.
//!
//! Nodes that leave the tree (a merged or removed table) are not freed
//! while other threads may still be reading them: they go to a retired list
//! that is freed when the tree is dropped (the TD's teardown), when no other
//! thread can hold a reference.
//!
//! A node made by a split ([`Node::alloc_split`], for `Td::demote`) starts
//! with its entry words unwritten, and allocated without being cleared:
//! an entry whose word is not written yet holds the page of the split it
//! stands for (entry `i`: the next-smaller page at the split page's first
//! frame + `i` × its frames, idle). The first thread that needs the word of
//! such an entry (to change it) writes it: it counts itself in the node's
//! state word, claims the entry's bit in a `claimed` bitmap (one thread
//! wins and writes; the others get `InProgress` until it is done), and sets
//! the entry's bit in a `ready` bitmap with release ordering; readers use a
//! word only after they see its ready bit. A merge (`Td::promote`) freezes
//! the node first (no materialization under way, none after): if no word
//! was ever written, the node still maps the split page exactly, and the
//! merge checks nothing below; else it checks the written entries only.
//! So a split costs no clearing and no 512 stores, and a merge right after
//! one no 512 compare-and-swaps.
//!
//! Both also keep frames that must wait for teardown without allocating:
//! a parked entry keeps a removed page's frames, and a retired node can be
//! marked ([`Park`]) when its S-EPT page, freed by the module, is in doubt
//! or not written back. Teardown finds them in [`Tree::drain`].

// UNSAFETY: nodes are allocated and freed by hand (fallibly, so a failed
// allocation is an error, not an abort), and entries hold tagged node
// pointers in atomic words.
#![allow(unsafe_code)]

use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
use loom::cell::UnsafeCell;
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};

use tdx_types::{Pfn, addr::MAX_PFN};

/// Entries per node: 512 as in the S-EPT (fewer under the loom model
/// checker, whose atomics are expensive; the protocol is the same).
pub(crate) const FANOUT: usize = if cfg!(loom) { 4 } else { 512 };

/// One node: the mirror of one S-EPT page.
///
/// Aligned to 64 bytes, so a node pointer leaves its low 4 bits for the
/// entry's state tag.
#[repr(C, align(64))]
pub(crate) struct Node {
    /// The entries' words: all written at allocation in an ordinary node;
    /// in a split node, each once its bit in `split.ready` is set.
    slots: [Word; FANOUT],
    /// The S-EPT page this node mirrors (`None` for the root, which the
    /// module owns as part of the TD).
    sept: Option<Pfn>,
    /// Next node in the retired list. Atomic: other threads may hold a
    /// reference to the node while it is retired.
    next_retired: AtomicPtr<Node>,
    /// For a retired node: what became of its S-EPT page (0: given back;
    /// else a [`Park`] code, the page waits for teardown).
    park: AtomicU8,
    /// A split node's record of which entry words are written.
    split: Split,
}

/// Words of a split node's bitmaps (one bit an entry).
const BITMAP_WORDS: usize = FANOUT.div_ceil(64);

/// In a split node's state word: a merge froze the node (no entry word is
/// written for the first time any more).
const FROZEN: u32 = 1 << 31;
/// In a split node's state word: some entry word was written (or is being
/// written); the low bits count the threads writing one now.
const TOUCHED: u32 = 1 << 30;

/// What a node made by a split holds beyond the entries.
struct Split {
    /// Frames per entry of the split page's parts; 0 for an ordinary node
    /// (every word written at allocation).
    step: u64,
    /// The split page's first frame: entry `i` stands, until its word is
    /// written, for the part at `first + i × step`.
    first: u64,
    /// [`FROZEN`] | [`TOUCHED`] | count of threads writing a word now.
    state: AtomicU32,
    /// Bit `i`: a thread took entry `i` to write its word (it alone does).
    claimed: [AtomicU64; BITMAP_WORDS],
    /// Bit `i`: entry `i`'s word is written (set with release ordering
    /// after the write).
    ready: [AtomicU64; BITMAP_WORDS],
}

impl Split {
    fn new(step: u64, first: u64) -> Self {
        Self {
            step,
            first,
            state: AtomicU32::new(0),
            claimed: core::array::from_fn(|_| AtomicU64::new(0)),
            ready: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// All bits of bitmap word `w` that name entries.
fn full_bits(w: usize) -> u64 {
    match FANOUT - w * 64 {
        n @ 0..64 => (1 << n) - 1,
        _ => !0,
    }
}

/// One entry's word, which a split node leaves unwritten until needed.
#[repr(transparent)]
struct Word(UnsafeCell<MaybeUninit<AtomicPtr<Node>>>);

impl Word {
    #[cfg(loom)]
    fn new(v: *mut Node) -> Self {
        Self(UnsafeCell::new(MaybeUninit::new(AtomicPtr::new(v))))
    }

    #[cfg(loom)]
    fn uninit() -> Self {
        Self(UnsafeCell::new(MaybeUninit::uninit()))
    }

    /// The word.
    ///
    /// # Safety
    ///
    /// The word is written, and this thread saw that (an ordinary node's
    /// words are written before the node is published; a split node's
    /// once its ready bit is seen with acquire ordering).
    #[inline(always)]
    unsafe fn get(&self) -> &AtomicPtr<Node> {
        #[cfg(not(loom))]
        {
            // SAFETY: the cell is alive as long as `self`; no thread writes
            // the word once it is written (caller), so a shared reference
            // is sound.
            let w = unsafe { &*self.0.get() };
            // SAFETY: written (caller); from here on it is shared only
            // through the atomic.
            unsafe { w.assume_init_ref() }
        }
        #[cfg(loom)]
        {
            // Loom records the read and checks it happens after the write.
            let p = self.0.with(|p| p);
            // SAFETY: as above.
            let w = unsafe { &*p };
            // SAFETY: as above.
            unsafe { w.assume_init_ref() }
        }
    }

    /// Writes the word for the first time.
    ///
    /// # Safety
    ///
    /// The word is not written yet, this thread alone writes it, and nobody
    /// reads it before this thread publishes it (its ready bit).
    unsafe fn init(&self, v: *mut Node) {
        #[cfg(not(loom))]
        // SAFETY: no other access to the word now (caller).
        unsafe {
            (*self.0.get()).write(AtomicPtr::new(v));
        }
        #[cfg(loom)]
        self.0.with_mut(|p| {
            // SAFETY: as above; loom checks that no access races it.
            unsafe { (*p).write(AtomicPtr::new(v)) };
        });
    }
}

const TAG_MASK: usize = 0xF;
const ADDING: usize = 1;
// An idle leaf and a blocked one differ in bit 0 only, so that the claim of
// a leaf (either) is one masked compare (`Slot::claim_leaf`).
const LEAF: usize = 2;
const LEAF_BLOCKED: usize = 3;
const LEAF_BUSY: usize = 4;
const TABLE: usize = 5;
const TABLE_BUSY: usize = 6;
const TABLE_BLOCKED: usize = 7;
const PARKED_IN_DOUBT: usize = 8;
const PARKED_UNFLUSHED: usize = 9;
// A table whose node was made by a split (`Node::alloc_split`): the walk's
// fast path follows `TABLE` only, whose nodes have every word written.
const SPLIT_TABLE: usize = 10;
const SPLIT_TABLE_BUSY: usize = 11;
const SPLIT_TABLE_BLOCKED: usize = 12;

/// Why frames out of the S-EPT wait for teardown (a parked entry, a marked
/// retired node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// The module named another frame as the one it removed or freed: ours
    /// may still be the module's; teardown reclaims it (TDH.PHYMEM.PAGE.RECLAIM).
    InDoubt,
    /// Removed, but its write-back failed: teardown gives it back after
    /// its cache write-back on every package.
    Unflushed,
}

impl Park {
    fn code(self) -> u8 {
        match self {
            Self::InDoubt => 1,
            Self::Unflushed => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Self::InDoubt),
            2 => Some(Self::Unflushed),
            _ => None,
        }
    }
}

/// The state of a leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Nobody works on it.
    Idle,
    /// One thread works on it.
    Busy,
    /// The module holds it blocked (TDH.MEM.RANGE.BLOCK done, nothing after
    /// it succeeded).
    Blocked,
}

/// One entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Nothing here.
    Free,
    /// A thread is adding a table or a page here.
    Adding,
    /// A private page, by its first frame.
    Leaf(Pfn, Hold),
    /// A table: the node mirroring the S-EPT page. Always a live node (one
    /// read from the tree, or just allocated): encoding reads whether it
    /// was made by a split.
    Table(NonNull<Node>, Hold),
    /// A removed page (first frame) whose frames wait for teardown: the
    /// GPA stays taken until then.
    Parked(Pfn, Park),
}

impl Entry {
    #[inline(always)]
    fn encode(self) -> *mut Node {
        match self {
            Self::Free => ptr::null_mut(),
            Self::Adding => ptr::without_provenance_mut(ADDING),
            Self::Leaf(pfn, hold) => {
                let tag = match hold {
                    Hold::Idle => LEAF,
                    Hold::Busy => LEAF_BUSY,
                    Hold::Blocked => LEAF_BLOCKED,
                };
                // A frame number is below 2^40, so shifted it leaves the
                // low 12 bits for the tag. It is a number, never a pointer:
                // no provenance.
                ptr::without_provenance_mut((pfn.as_u64() << 12) as usize | tag)
            }
            Self::Table(node, hold) => {
                // SAFETY: a table entry names a live node (see the variant):
                // linked and retired nodes are freed only with the tree.
                let split = unsafe { node.as_ref() }.is_split();
                let tag = match (hold, split) {
                    (Hold::Idle, false) => TABLE,
                    (Hold::Busy, false) => TABLE_BUSY,
                    (Hold::Blocked, false) => TABLE_BLOCKED,
                    (Hold::Idle, true) => SPLIT_TABLE,
                    (Hold::Busy, true) => SPLIT_TABLE_BUSY,
                    (Hold::Blocked, true) => SPLIT_TABLE_BLOCKED,
                };
                // The node is 64-byte aligned (`repr(align(64))`), so its
                // low 4 bits are zero and carry the tag.
                node.as_ptr().map_addr(|a| a | tag)
            }
            Self::Parked(pfn, park) => {
                let tag = match park {
                    Park::InDoubt => PARKED_IN_DOUBT,
                    Park::Unflushed => PARKED_UNFLUSHED,
                };
                // As for a leaf: a number, never a pointer.
                ptr::without_provenance_mut((pfn.as_u64() << 12) as usize | tag)
            }
        }
    }

    /// [`decode`](Self::decode) out of line, for the paths a fast path
    /// leaves.
    #[cold]
    #[inline(never)]
    fn decode_cold(raw: *mut Node) -> Self {
        Self::decode(raw)
    }

    #[inline]
    fn decode(raw: *mut Node) -> Self {
        let tag = raw.addr() & TAG_MASK;
        let leaf = |hold| Self::Leaf(Pfn::new((raw.addr() >> 12) as u64 & (MAX_PFN - 1)), hold);
        let table = |hold| {
            let node = raw.map_addr(|a| a & !TAG_MASK);
            // A table tag is only ever stored with a non-null node pointer
            // (`encode`).
            Self::Table(NonNull::new(node).unwrap_or(NonNull::dangling()), hold)
        };
        match tag {
            ADDING => Self::Adding,
            LEAF => leaf(Hold::Idle),
            LEAF_BUSY => leaf(Hold::Busy),
            LEAF_BLOCKED => leaf(Hold::Blocked),
            TABLE | SPLIT_TABLE => table(Hold::Idle),
            TABLE_BUSY | SPLIT_TABLE_BUSY => table(Hold::Busy),
            TABLE_BLOCKED | SPLIT_TABLE_BLOCKED => table(Hold::Blocked),
            0 => Self::Free,
            _ => Self::decode_parked(raw),
        }
    }

    /// A parked entry (or, for a tag never stored, free), out of line: the
    /// failure path of a failure path.
    #[cold]
    #[inline(never)]
    fn decode_parked(raw: *mut Node) -> Self {
        let pfn = Pfn::new((raw.addr() >> 12) as u64 & (MAX_PFN - 1));
        match raw.addr() & TAG_MASK {
            PARKED_IN_DOUBT => Self::Parked(pfn, Park::InDoubt),
            PARKED_UNFLUSHED => Self::Parked(pfn, Park::Unflushed),
            _ => Self::Free,
        }
    }
}

/// One entry of the tree, at a level, for its GPA.
#[derive(Clone, Copy)]
pub(crate) struct Slot<'t> {
    word: &'t AtomicPtr<Node>,
    /// The entry's level (0 = 4K page entry, 1 = 2M, ...).
    pub(crate) level: u8,
}

impl<'t> Slot<'t> {
    /// The entry now.
    #[inline(always)]
    pub(crate) fn load(&self) -> Entry {
        Entry::decode(self.word.load(Ordering::Acquire))
    }

    /// Changes the entry from `old` to `new` if it is still `old`; else
    /// returns what it is.
    #[inline(always)]
    pub(crate) fn swap_if(&self, old: Entry, new: Entry) -> Result<(), Entry> {
        self.word
            .compare_exchange(
                old.encode(),
                new.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(Entry::decode)
    }

    /// Publishes `new`. Only the thread that holds the entry (moved it to
    /// adding or busy) stores.
    #[inline(always)]
    pub(crate) fn store(&self, new: Entry) {
        self.word.store(new.encode(), Ordering::Release);
    }

    /// Claims a leaf for a change (idle or blocked → busy) with one
    /// compare-and-swap: its first frame and whether it was blocked, or
    /// what the entry holds instead.
    #[inline(always)]
    pub(crate) fn claim_leaf(&self) -> Result<(Pfn, bool), Entry> {
        const { assert!(LEAF | 1 == LEAF_BLOCKED) };
        let raw = self.word.load(Ordering::Acquire);
        let tag = raw.addr() & TAG_MASK;
        if tag & !1 != LEAF {
            return Err(Entry::decode_cold(raw));
        }
        let busy = raw.map_addr(|a| (a & !TAG_MASK) | LEAF_BUSY);
        match self
            .word
            .compare_exchange(raw, busy, Ordering::AcqRel, Ordering::Acquire)
        {
            // The frame was encoded from a `Pfn`: the mask only tells the
            // compiler it is in range.
            Ok(_) => Ok((
                Pfn::new((raw.addr() >> 12) as u64 & (MAX_PFN - 1)),
                tag == LEAF_BLOCKED,
            )),
            Err(now) => Err(Entry::decode_cold(now)),
        }
    }

    /// The node of a table entry, if this is one.
    #[allow(dead_code, reason = "the loom model uses it")]
    pub(crate) fn table(&self) -> Option<&'t Node> {
        match self.load() {
            // SAFETY: a node linked into the tree is freed only when the
            // tree is dropped (retired nodes included), which needs the
            // tree exclusively; `'t` borrows it shared.
            Entry::Table(n, _) => Some(unsafe { n.as_ref() }),
            _ => None,
        }
    }
}

impl Node {
    /// A node with every entry free, or `None` if the allocator has no
    /// memory.
    pub(crate) fn alloc(sept: Option<Pfn>) -> Option<NonNull<Node>> {
        #[cfg(not(loom))]
        {
            let layout = core::alloc::Layout::new::<Node>();
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc::alloc_zeroed(layout) }.cast::<Node>();
            let node = NonNull::new(raw)?;
            // All-zero bytes are valid for the words and atomics (null
            // pointers: free entries, end of list; park 0: nothing parked)
            // and make an ordinary node (`split.step` 0); `Option<Pfn>` has
            // no guaranteed zero value, so that field is written explicitly.
            // SAFETY: `raw` is a fresh, non-null allocation of `Node`'s
            // layout: the field is in bounds (no reference is made).
            let sept_field = unsafe { &raw mut (*raw).sept };
            // SAFETY: an in-bounds, aligned field of our allocation; plain
            // data.
            unsafe { sept_field.write(sept) };
            Some(node)
        }
        #[cfg(loom)]
        {
            let b = alloc::boxed::Box::new(Node {
                slots: core::array::from_fn(|_| Word::new(ptr::null_mut())),
                sept,
                next_retired: AtomicPtr::new(ptr::null_mut()),
                park: AtomicU8::new(0),
                split: Split::new(0, 0),
            });
            NonNull::new(alloc::boxed::Box::into_raw(b))
        }
    }

    /// The node of a page split into parts of `step` frames each (512 of
    /// them): entry `i` maps `first + i × step`, idle. Its entry words are
    /// neither cleared nor written here: each is written when first
    /// needed ([`slot`](Self::slot)). `None` if the allocator has no
    /// memory.
    pub(crate) fn alloc_split(sept: Pfn, first: Pfn, step: u64) -> Option<NonNull<Node>> {
        // A step of 0 would make an ordinary node whose words are not
        // written.
        let step = step.max(1);
        #[cfg(not(loom))]
        {
            let layout = core::alloc::Layout::new::<Node>();
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<Node>();
            let node = NonNull::new(raw)?;
            // `raw` is a fresh, non-null allocation of `Node`'s layout:
            // every field below is in bounds and aligned, and is written
            // through a raw pointer, without a reference to uninitialized
            // memory. The words stay uninitialized (`MaybeUninit`), read
            // only after their ready bit (in `split`, written here) is set.
            // SAFETY: as above (a field pointer, no reference made).
            let sept_field = unsafe { &raw mut (*raw).sept };
            // SAFETY: as above.
            let next_field = unsafe { &raw mut (*raw).next_retired };
            // SAFETY: as above.
            let park_field = unsafe { &raw mut (*raw).park };
            // SAFETY: as above.
            let split_field = unsafe { &raw mut (*raw).split };
            // SAFETY: in bounds and aligned fields of our allocation.
            unsafe { sept_field.write(Some(sept)) };
            // SAFETY: as above.
            unsafe { next_field.write(AtomicPtr::new(ptr::null_mut())) };
            // SAFETY: as above.
            unsafe { park_field.write(AtomicU8::new(0)) };
            // SAFETY: as above.
            unsafe { split_field.write(Split::new(step, first.as_u64())) };
            Some(node)
        }
        #[cfg(loom)]
        {
            let b = alloc::boxed::Box::new(Node {
                slots: core::array::from_fn(|_| Word::uninit()),
                sept: Some(sept),
                next_retired: AtomicPtr::new(ptr::null_mut()),
                park: AtomicU8::new(0),
                split: Split::new(step, first.as_u64()),
            });
            NonNull::new(alloc::boxed::Box::into_raw(b))
        }
    }

    /// Frees a node that is in no tree.
    ///
    /// # Safety
    ///
    /// `node` came from [`Node::alloc`], is not linked into any tree or
    /// retired list, and nobody holds a reference to it.
    pub(crate) unsafe fn free(node: NonNull<Node>) {
        #[cfg(not(loom))]
        // SAFETY: allocated by `alloc_zeroed` with this layout (caller);
        // the atomics need no drop.
        unsafe {
            alloc::alloc::dealloc(node.as_ptr().cast(), core::alloc::Layout::new::<Node>());
        }
        #[cfg(loom)]
        // SAFETY: allocated by `Box::new` under loom (caller).
        drop(unsafe { alloc::boxed::Box::from_raw(node.as_ptr()) });
    }

    /// The S-EPT page this node mirrors.
    pub(crate) fn sept(&self) -> Option<Pfn> {
        self.sept
    }

    /// Whether the node was made by a split ([`alloc_split`](Self::alloc_split)).
    #[inline(always)]
    pub(crate) fn is_split(&self) -> bool {
        self.split.step != 0
    }

    /// What entry `index` of a split node stands for until its word is
    /// written: its part of the split page, idle.
    fn part(&self, index: usize) -> Entry {
        let pfn = self.split.first + index as u64 * self.split.step;
        // The split page's frames are below 2^40 (its first frame came from
        // a `Pfn` and the parts stay inside it).
        Entry::Leaf(Pfn::new(pfn & (MAX_PFN - 1)), Hold::Idle)
    }

    /// The word of entry `index`, if it is written (always, in an ordinary
    /// node).
    #[inline]
    fn word(&self, index: usize) -> Option<&AtomicPtr<Node>> {
        let i = index % FANOUT;
        if self.is_split()
            && self.split.ready[i / 64].load(Ordering::Acquire) & (1 << (i % 64)) == 0
        {
            return None;
        }
        // SAFETY: an ordinary node's words are written at allocation,
        // before the node is published; a split node's once its ready bit
        // is set, with release ordering after the write, and the acquire
        // load above saw the bit.
        Some(unsafe { self.slots[i].get() })
    }

    /// What entry `index` holds now (a read: a split node's unwritten entry
    /// holds its part of the split page).
    #[inline]
    pub(crate) fn entry(&self, index: usize) -> Entry {
        match self.word(index) {
            Some(w) => Entry::decode(w.load(Ordering::Acquire)),
            None => self.part(index),
        }
    }

    /// Entry `index` as a slot to change, its word written first if a
    /// split left it unwritten. `None` if it cannot be written now: a merge
    /// froze the node, or another thread is writing that word this moment
    /// (the caller reports the entry as in progress).
    #[inline]
    pub(crate) fn slot(&self, index: usize, level: u8) -> Option<Slot<'_>> {
        let word = match self.word(index) {
            Some(w) => w,
            None => self.materialize(index % FANOUT)?,
        };
        Some(Slot { word, level })
    }

    /// Writes the word of entry `i` of a split node (its part), unless
    /// another thread does; returns it once written.
    #[cold]
    #[inline(never)]
    fn materialize(&self, i: usize) -> Option<&AtomicPtr<Node>> {
        let s = &self.split;
        // Count this thread in, unless a merge froze the node. A merge
        // freezes only with no thread counted in, so it sees every word
        // written before it (the release below).
        let mut now = s.state.load(Ordering::Relaxed);
        loop {
            if now & FROZEN != 0 {
                return None;
            }
            match s.state.compare_exchange_weak(
                now,
                (now + 1) | TOUCHED,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(n) => now = n,
            }
        }
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if s.claimed[w].fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            // SAFETY: the claim bit was ours to set: no other thread writes
            // this word, and none reads it before the ready bit below.
            unsafe { self.slots[i].init(self.part(i).encode()) };
            s.ready[w].fetch_or(bit, Ordering::Release);
        }
        // Written by this thread, or by another one (`None` if it is not
        // done yet).
        let word = self.word(i);
        s.state.fetch_sub(1, Ordering::Release);
        word
    }

    /// Stops a split node's entry words from being written for the first
    /// time, for a merge that checks the entries: `Ok(false)` if none was
    /// ever written (every entry still holds its part: the node maps the
    /// split page as it was split), `Ok(true)` if some were (check the
    /// written ones; the others hold their parts). `Err(())` if a thread is
    /// writing one this moment. An ordinary node has nothing to freeze:
    /// `Ok(true)`. Only the thread that claimed the node's table entry
    /// freezes it, and [`thaw`](Self::thaw)s it if the merge fails.
    pub(crate) fn freeze(&self) -> Result<bool, ()> {
        if !self.is_split() {
            return Ok(true);
        }
        let state = &self.split.state;
        let now = state.load(Ordering::Relaxed);
        if now & !TOUCHED != 0 {
            return Err(());
        }
        // Acquire: the words and ready bits written by every thread that
        // counted itself out before are visible.
        state
            .compare_exchange(now, now | FROZEN, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| now & TOUCHED != 0)
            .map_err(|_| ())
    }

    /// Undoes [`freeze`](Self::freeze).
    pub(crate) fn thaw(&self) {
        if self.is_split() {
            self.split.state.fetch_and(!FROZEN, Ordering::Release);
        }
    }

    /// The written word of entry `index` of a frozen node (or an ordinary
    /// one), or its part of the split page. Frozen, none gets written.
    pub(crate) fn frozen_slot(&self, index: usize, level: u8) -> Result<Slot<'_>, Entry> {
        match self.word(index) {
            Some(word) => Ok(Slot { word, level }),
            None => Err(self.part(index)),
        }
    }

    /// Every entry as a slot with its index, or `None` for a split node
    /// some of whose entries still hold their part unwritten (pages are
    /// mapped there). Once every word of a split node is written, none is
    /// written again by [`slot`](Self::slot).
    pub(crate) fn slots(&self, level: u8) -> Option<impl Iterator<Item = (usize, Slot<'_>)>> {
        let written = !self.is_split()
            || (0..BITMAP_WORDS)
                .all(|w| self.split.ready[w].load(Ordering::Acquire) == full_bits(w));
        written.then(|| {
            self.slots.iter().enumerate().map(move |(i, w)| {
                // SAFETY: every word is written, and seen to be (the
                // acquire loads above).
                let word = unsafe { w.get() };
                (i, Slot { word, level })
            })
        })
    }
}

/// Why a walk stopped above the level it was going to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop<'t> {
    /// No table at this entry: the caller may add one.
    Missing(Slot<'t>),
    /// Another thread is changing an entry on the way.
    Busy,
    /// A table on the way is blocked.
    Blocked,
    /// A page of a larger size covers the GPA.
    Leaf,
}

impl core::fmt::Debug for Slot<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Slot")
            .field("level", &self.level)
            .field("entry", &self.load())
            .finish()
    }
}

impl PartialEq for Slot<'_> {
    fn eq(&self, other: &Self) -> bool {
        ptr::eq(self.word, other.word)
    }
}
impl Eq for Slot<'_> {}

/// The tree of one TD.
pub(crate) struct Tree {
    root: NonNull<Node>,
    /// The level of the root's entries: 3 for a 4-level EPT, 4 for 5-level.
    top: u8,
    /// Nodes that left the tree, freed with it.
    retired: AtomicPtr<Node>,
}

// SAFETY: the tree owns its nodes (heap memory no other tree references),
// and every shared access to them goes through atomics; nodes are freed
// only with `&mut Tree` or by `Drop`.
unsafe impl Send for Tree {}
// SAFETY: as above: `&Tree` gives only atomic access to entries and
// read-only access to the nodes' immutable fields.
unsafe impl Sync for Tree {}

impl core::fmt::Debug for Tree {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tree")
            .field("top", &self.top)
            .finish_non_exhaustive()
    }
}

impl Tree {
    /// An empty tree whose root holds entries of level `top`; `None` if the
    /// allocator has no memory.
    pub(crate) fn new(top: u8) -> Option<Self> {
        Some(Self {
            root: Node::alloc(None)?,
            top,
            retired: AtomicPtr::new(ptr::null_mut()),
        })
    }

    /// Sets the level of the root's entries (once the EPT depth is known,
    /// before anything is mapped).
    pub(crate) fn set_top(&mut self, top: u8) {
        self.top = top;
    }

    #[inline]
    fn root(&self) -> &Node {
        // SAFETY: the root lives as long as the tree.
        unsafe { self.root.as_ref() }
    }

    /// Walks from the root to the entry of `gpa` at `level`, through
    /// tables only.
    #[inline]
    pub(crate) fn walk(&self, gpa: u64, level: u8) -> Result<Slot<'_>, Stop<'_>> {
        let mut node = self.root();
        let mut l = self.top;
        // The shift of the entry index at level `l`, kept in step with it.
        let mut shift = 12 + 9 * u32::from(l);
        while l > level {
            // SAFETY: the root and every node followed here (a `TABLE`
            // tag, not a split one) are ordinary nodes: all words written
            // before they were published.
            let word = unsafe { node.slots[(gpa >> shift) as usize & (FANOUT - 1)].get() };
            let raw = word.load(Ordering::Acquire);
            if raw.addr() & TAG_MASK == TABLE {
                // The common case: an idle table; follow it.
                // SAFETY: see `Slot::table`: linked nodes outlive `&self`,
                // and a table tag is stored only with a node pointer.
                node = unsafe { &*raw.map_addr(|a| a & !TAG_MASK) };
                l -= 1;
                shift -= 9;
                continue;
            }
            return Self::walk_on(word, raw, l, gpa, level);
        }
        // SAFETY: as above.
        let word = unsafe { node.slots[(gpa >> shift) as usize & (FANOUT - 1)].get() };
        Ok(Slot { word, level: l })
    }

    /// The rest of a [`walk`](Self::walk) from an entry at level `l` that
    /// is not an ordinary idle table (`raw`, read from `word`): through
    /// split nodes (writing the word of the entry the walk ends at, if a
    /// split left it unwritten), or where it stops.
    #[cold]
    #[inline(never)]
    fn walk_on<'s>(
        mut word: &'s AtomicPtr<Node>,
        mut raw: *mut Node,
        mut l: u8,
        gpa: u64,
        level: u8,
    ) -> Result<Slot<'s>, Stop<'s>> {
        loop {
            let tag = raw.addr() & TAG_MASK;
            if tag != TABLE && tag != SPLIT_TABLE {
                let slot = Slot { word, level: l };
                return Err(match Entry::decode(raw) {
                    Entry::Free => Stop::Missing(slot),
                    Entry::Table(_, Hold::Blocked) => Stop::Blocked,
                    // A parked page still takes its GPA range, like a page.
                    Entry::Leaf(_, Hold::Idle | Hold::Blocked) | Entry::Parked(..) => Stop::Leaf,
                    // Idle tables are followed; the rest is held.
                    _ => Stop::Busy,
                });
            }
            // SAFETY: see `Slot::table`: linked nodes outlive the tree's
            // borrow, and a table tag is stored only with a node pointer.
            let node: &'s Node = unsafe { &*raw.map_addr(|a| a & !TAG_MASK) };
            l -= 1;
            let i = (gpa >> (12 + 9 * u32::from(l))) as usize & (FANOUT - 1);
            word = match node.word(i) {
                Some(w) => w,
                None if l == level => return node.slot(i, l).ok_or(Stop::Busy),
                // A split node's unwritten entry: its part, a page.
                None => return Err(Stop::Leaf),
            };
            if l == level {
                return Ok(Slot { word, level: l });
            }
            raw = word.load(Ordering::Acquire);
        }
    }

    /// The deepest entry on the way to `gpa` that is not an idle table:
    /// its level and what it holds (a leaf, a free entry, or a table held
    /// by an operation). A read: it claims nothing.
    pub(crate) fn lookup(&self, gpa: u64) -> (u8, Entry) {
        let mut node = self.root();
        let mut level = self.top;
        loop {
            let shift = 12 + 9 * u32::from(level);
            let e = node.entry((gpa >> shift) as usize & (FANOUT - 1));
            match e {
                Entry::Table(n, Hold::Idle) if level > 0 => {
                    // SAFETY: see `Slot::table`: linked nodes outlive
                    // `&self`.
                    node = unsafe { n.as_ref() };
                    level -= 1;
                }
                _ => return (level, e),
            }
        }
    }

    /// [`retire`](Self::retire), marking the node's S-EPT page as waiting
    /// for teardown ([`drain`](Self::drain) reports it): the module freed
    /// it, but it is in doubt or not written back. Allocates nothing.
    pub(crate) fn retire_parked(&self, node: NonNull<Node>, park: Park) {
        // SAFETY: the node is alive (retired nodes are freed only with the
        // tree); the field is atomic. The store is published by `retire`'s
        // release, and read only by `drain` (`&mut self`).
        unsafe { node.as_ref() }
            .park
            .store(park.code(), Ordering::Relaxed);
        self.retire(node);
    }

    /// Puts a node that left the tree on the retired list. Its memory stays
    /// valid until the tree is dropped, for threads that still read it.
    pub(crate) fn retire(&self, node: NonNull<Node>) {
        let mut head = self.retired.load(Ordering::Relaxed);
        loop {
            // SAFETY: the node is alive (retired nodes are freed only with
            // the tree); the field is atomic, as other threads may still
            // hold a reference to the node. Only this thread links it (the
            // caller moved it out of the tree with a compare-and-swap).
            unsafe { node.as_ref() }
                .next_retired
                .store(head, Ordering::Relaxed);
            match self.retired.compare_exchange_weak(
                head,
                node.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// Visits every entry that holds something, children before the
    /// table that holds them, and frees the nodes: the tree is empty
    /// afterwards. `f` gets the GPA, the level and the entry (a table's
    /// entry names its S-EPT page through [`Node::sept`], read before the
    /// node is freed: it is passed as `Some(page)`). Allocates nothing.
    /// Retired nodes stay until [`drain_retired`](Self::drain_retired).
    pub(crate) fn drain(&mut self, f: &mut dyn FnMut(u64, u8, Entry, Option<Pfn>)) {
        let top = self.top;
        // SAFETY: `&mut self`: nobody else reads the tree; every node
        // reached from the root was allocated by `Node::alloc` and is
        // unlinked (entry set free) before it is freed, once.
        unsafe { drain_node(self.root.as_ptr(), top, 0, f) };
    }

    /// Frees the retired nodes; `parked` gets the S-EPT page of each one
    /// marked by [`retire_parked`](Self::retire_parked). Allocates nothing.
    pub(crate) fn drain_retired(&mut self, parked: &mut dyn FnMut(Pfn, Park)) {
        let mut n = self.retired.load(Ordering::Relaxed);
        while let Some(node) = NonNull::new(n) {
            // SAFETY: a retired node stays allocated until `free_retired`.
            let node = unsafe { node.as_ref() };
            if let (Some(page), Some(park)) = (
                node.sept,
                Park::from_code(node.park.load(Ordering::Relaxed)),
            ) {
                parked(page, park);
            }
            n = node.next_retired.load(Ordering::Relaxed);
        }
        self.free_retired();
    }

    fn free_retired(&mut self) {
        // `&mut self`: no other thread; relaxed is enough.
        let mut n = self.retired.swap(ptr::null_mut(), Ordering::Relaxed);
        while let Some(node) = NonNull::new(n) {
            // SAFETY: a retired node stays allocated until freed below.
            n = unsafe { node.as_ref() }
                .next_retired
                .load(Ordering::Relaxed);
            // SAFETY: retired nodes are in no tree (they were unlinked
            // before `retire`), `&mut self` means no reader is left, and
            // each is on the list once.
            unsafe { Node::free(node) };
        }
    }

    /// Calls `f` for every entry that holds something other than an idle
    /// table and covers part of `[start, end)` (GPAs), in GPA order,
    /// descending into idle tables; stops at the first error. `f` gets the
    /// GPA, the level and the entry's slot, or `None` if a split left its
    /// word unwritten and it cannot be written now (another thread holds
    /// it: a merge, or the write itself).
    pub(crate) fn visit_range<'s, E>(
        &'s self,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u8, Option<Slot<'s>>) -> Result<(), E>,
    ) -> Result<(), E> {
        fn go<'t, E>(
            node: &'t Node,
            level: u8,
            base: u64,
            (start, end): (u64, u64),
            f: &mut dyn FnMut(u64, u8, Option<Slot<'t>>) -> Result<(), E>,
        ) -> Result<(), E> {
            let span = 1u64 << (12 + 9 * u32::from(level));
            let lo = (start.saturating_sub(base) / span) as usize;
            let hi = (end.saturating_sub(base).div_ceil(span) as usize).min(FANOUT);
            for i in lo..hi {
                let gpa = base + i as u64 * span;
                // A split node's unwritten entry is its part, a page: its
                // word is written for `f`, if it can be now.
                let Some(word) = node.word(i) else {
                    f(gpa, level, node.slot(i, level))?;
                    continue;
                };
                // By tag, without decoding: free, an idle table (ordinary or
                // split) to descend into, or something for `f`.
                let raw = word.load(Ordering::Acquire);
                let tag = raw.addr() & TAG_MASK;
                if tag == 0 {
                    continue;
                }
                if level > 0 && (tag == TABLE || tag == SPLIT_TABLE) {
                    // SAFETY: see `Slot::table`; a table tag is stored only
                    // with a node pointer.
                    let n = unsafe { &*raw.map_addr(|a| a & !TAG_MASK) };
                    go(n, level - 1, gpa, (start, end), f)?;
                    continue;
                }
                f(gpa, level, Some(Slot { word, level }))?;
            }
            Ok(())
        }
        if start >= end {
            return Ok(());
        }
        go(self.root(), self.top, 0, (start, end), f)
    }

    /// Every entry that holds something, children before their table,
    /// without changing anything.
    pub(crate) fn for_each(&self, f: &mut dyn FnMut(u64, u8, Entry)) {
        fn visit(node: &Node, level: u8, base: u64, f: &mut dyn FnMut(u64, u8, Entry)) {
            for i in 0..FANOUT {
                let gpa = base | ((i as u64) << (12 + 9 * u32::from(level)));
                let e = node.entry(i);
                if let Entry::Table(child, _) = e
                    && level > 0
                {
                    // SAFETY: see `Slot::table`.
                    visit(unsafe { child.as_ref() }, level - 1, gpa, f);
                }
                if e != Entry::Free {
                    f(gpa, level, e);
                }
            }
        }
        visit(self.root(), self.top, 0, f);
    }
}

/// # Safety
///
/// `node` and everything below it is owned by the caller (no other
/// reference), allocated by [`Node::alloc`].
unsafe fn drain_node(
    node: *mut Node,
    level: u8,
    base: u64,
    f: &mut dyn FnMut(u64, u8, Entry, Option<Pfn>),
) {
    for i in 0..FANOUT {
        let gpa = base | ((i as u64) << (12 + 9 * u32::from(level)));
        // SAFETY: the caller owns the node exclusively (no other
        // reference; the atomics are used as plain memory).
        let n = unsafe { &*node };
        // A split node's unwritten entry holds its part.
        let e = match n.word(i) {
            Some(word) => Entry::decode(word.swap(ptr::null_mut(), Ordering::Relaxed)),
            None => n.part(i),
        };
        match e {
            Entry::Free => {}
            Entry::Table(child, _) => {
                // SAFETY: a linked child is owned through its parent.
                let sept = unsafe { child.as_ref() }.sept;
                if level > 0 {
                    // SAFETY: as for `node`.
                    unsafe { drain_node(child.as_ptr(), level - 1, gpa, f) };
                }
                f(gpa, level, e, sept);
                // SAFETY: unlinked above (the parent's entry is free now)
                // and drained; nobody else holds it.
                unsafe { Node::free(child) };
            }
            e => f(gpa, level, e, None),
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // A tree dropped with entries in it (a teardown drains it first)
        // frees its memory; what the entries named is the caller's to
        // account for.
        self.drain(&mut |_, _, _, _| {});
        self.drain_retired(&mut |_, _| {});
        // SAFETY: the root was allocated by `Node::alloc` and is in no
        // other tree.
        unsafe { Node::free(self.root) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let node = Node::alloc(Some(Pfn::new(7))).unwrap();
        let entries = [
            Entry::Free,
            Entry::Adding,
            Entry::Leaf(Pfn::new(0), Hold::Idle),
            Entry::Leaf(Pfn::new((1 << 40) - 1), Hold::Busy),
            Entry::Leaf(Pfn::new(12345), Hold::Blocked),
            Entry::Table(node, Hold::Idle),
            Entry::Table(node, Hold::Busy),
            Entry::Table(node, Hold::Blocked),
            Entry::Parked(Pfn::new(99), Park::InDoubt),
            Entry::Parked(Pfn::new((1 << 40) - 1), Park::Unflushed),
        ];
        for e in entries {
            assert_eq!(Entry::decode(e.encode()), e);
        }
        // SAFETY: allocated above, in no tree.
        unsafe { Node::free(node) };
    }

    #[test]
    fn a_split_node_holds_its_parts_until_written_and_drains_them() {
        // A 2M page at frame 0x1000 split into 4K parts under root entry 0
        // of a two-level tree; its tag round-trips as a split table.
        let mut t = Tree::new(1).unwrap();
        let node = Node::alloc_split(Pfn::new(7), Pfn::new(0x1000), 1).unwrap();
        for hold in [Hold::Idle, Hold::Busy, Hold::Blocked] {
            let e = Entry::Table(node, hold);
            assert_eq!(
                e.encode().addr() & TAG_MASK,
                SPLIT_TABLE + (TABLE_BUSY - TABLE) * hold as usize
            );
            assert_eq!(Entry::decode(e.encode()), e);
        }
        t.walk(0, 1).unwrap().store(Entry::Table(node, Hold::Idle));
        // SAFETY: linked above; alive as long as the tree.
        let n = unsafe { node.as_ref() };
        assert!(n.slots(0).is_none(), "parts unwritten");
        // Reads see the parts, without writing anything.
        assert_eq!(
            t.lookup(5 << 12),
            (0, Entry::Leaf(Pfn::new(0x1005), Hold::Idle))
        );
        assert!(n.word(5).is_none());
        // A walk to an entry writes its word with its part; change it.
        let s = t.walk(5 << 12, 0).unwrap();
        assert!(n.word(5).is_some());
        assert_eq!(s.claim_leaf(), Ok((Pfn::new(0x1005), false)));
        s.store(Entry::Free);
        assert_eq!(t.lookup(5 << 12), (0, Entry::Free));
        // Freeze: written before, so `true`; no word is written while
        // frozen; thawed, it is again.
        assert_eq!(n.freeze(), Ok(true));
        assert_eq!(n.freeze(), Err(()), "frozen already");
        assert!(matches!(t.walk(6 << 12, 0), Err(Stop::Busy)));
        assert_eq!(
            n.frozen_slot(6, 0).unwrap_err(),
            Entry::Leaf(Pfn::new(0x1006), Hold::Idle)
        );
        n.thaw();
        assert!(t.walk(6 << 12, 0).is_ok());
        // Every entry written: `slots` lists them all.
        for i in 0..FANOUT {
            assert!(n.slot(i, 0).is_some());
        }
        assert_eq!(n.slots(0).unwrap().count(), FANOUT);
        assert_eq!(
            n.entry(FANOUT - 1),
            Entry::Leaf(Pfn::new(0x1000 + FANOUT as u64 - 1), Hold::Idle)
        );
        // Drain reports every part but the freed one, then the table.
        let mut drained = alloc::vec::Vec::new();
        t.drain(&mut |g, l, e, sept| drained.push((g, l, e, sept)));
        assert_eq!(drained.len(), FANOUT);
        assert_eq!(
            drained[FANOUT - 1],
            (0, 1, drained[FANOUT - 1].2, Some(Pfn::new(7)))
        );
        assert!(drained[..FANOUT - 1].iter().enumerate().all(|(k, d)| {
            let i = if k < 5 { k } else { k + 1 } as u64;
            *d == (
                i << 12,
                0,
                Entry::Leaf(Pfn::new(0x1000 + i), Hold::Idle),
                None,
            )
        }));

        // A split node never written: drained as its parts; a merge's
        // freeze says so (`false`).
        let node = Node::alloc_split(Pfn::new(8), Pfn::new(0x2000), 1).unwrap();
        t.walk(0, 1).unwrap().store(Entry::Table(node, Hold::Idle));
        // SAFETY: as above.
        assert_eq!(unsafe { node.as_ref() }.freeze(), Ok(false));
        let mut parts = 0;
        t.drain(&mut |g, l, e, _| {
            if l == 0 {
                assert_eq!(e, Entry::Leaf(Pfn::new(0x2000 + (g >> 12)), Hold::Idle));
                parts += 1;
            }
        });
        assert_eq!(parts, FANOUT);
    }

    #[test]
    fn a_walk_stops_where_the_tree_ends_and_drain_sees_children_first() {
        let mut t = Tree::new(3).unwrap();
        let gpa = 0x4020_3000;
        let Err(Stop::Missing(s)) = t.walk(gpa, 0) else {
            panic!("an empty tree has no table")
        };
        assert_eq!(s.level, 3);
        // Link tables down to level 1, then a 4K leaf.
        for l in (1..=3).rev() {
            let Err(Stop::Missing(s)) = t.walk(gpa, 0) else {
                panic!("missing at {l}")
            };
            assert_eq!(s.level, l);
            s.swap_if(Entry::Free, Entry::Adding).unwrap();
            let n = Node::alloc(Some(Pfn::new(100 + u64::from(l)))).unwrap();
            s.store(Entry::Table(n, Hold::Idle));
        }
        let leaf = t.walk(gpa, 0).unwrap();
        leaf.swap_if(Entry::Free, Entry::Leaf(Pfn::new(9), Hold::Idle))
            .unwrap();
        assert_eq!(
            leaf.swap_if(Entry::Free, Entry::Adding),
            Err(Entry::Leaf(Pfn::new(9), Hold::Idle))
        );
        // A 2M walk here meets a table, a 4K walk under a 2M leaf meets it.
        assert!(matches!(
            t.walk(gpa & !0x1f_ffff, 1).unwrap().load(),
            Entry::Table(..)
        ));
        let mut seen = alloc::vec::Vec::new();
        t.for_each(&mut |g, l, _| seen.push((g, l)));
        assert_eq!(
            seen,
            [
                (gpa, 0),
                (gpa & !0x1f_ffff, 1),
                (gpa & !0x3fff_ffff, 2),
                (0, 3)
            ]
        );
        // A parked page next to the leaf is drained like one; retired
        // nodes are reported only when marked.
        let parked = t.walk(gpa + 4096, 0).unwrap();
        parked.store(Entry::Parked(Pfn::new(11), Park::Unflushed));
        t.retire(Node::alloc(Some(Pfn::new(200))).unwrap());
        t.retire_parked(Node::alloc(Some(Pfn::new(201))).unwrap(), Park::InDoubt);
        t.retire_parked(Node::alloc(Some(Pfn::new(202))).unwrap(), Park::Unflushed);
        let mut drained = alloc::vec::Vec::new();
        let mut retired = alloc::vec::Vec::new();
        t.drain(&mut |g, l, e, sept| drained.push((g, l, e, sept)));
        t.drain_retired(&mut |page, park| retired.push((page, park)));
        let table = |d: &(u64, u8, Entry, Option<Pfn>)| (d.0, d.1, d.3);
        assert_eq!(
            drained[0],
            (gpa, 0, Entry::Leaf(Pfn::new(9), Hold::Idle), None)
        );
        assert_eq!(
            drained[1],
            (
                gpa + 4096,
                0,
                Entry::Parked(Pfn::new(11), Park::Unflushed),
                None
            )
        );
        assert_eq!(
            drained[2..]
                .iter()
                .map(table)
                .collect::<alloc::vec::Vec<_>>(),
            [
                (gpa & !0x1f_ffff, 1, Some(Pfn::new(101))),
                (gpa & !0x3fff_ffff, 2, Some(Pfn::new(102))),
                (0, 3, Some(Pfn::new(103))),
            ]
        );
        retired.sort_by_key(|r| r.0);
        assert_eq!(
            retired,
            [
                (Pfn::new(201), Park::InDoubt),
                (Pfn::new(202), Park::Unflushed)
            ]
        );
        assert!(matches!(t.walk(gpa, 0), Err(Stop::Missing(_))));
    }
}

/// The claim protocol under the loom model checker, which runs every
/// interleaving of the threads (within its bounds). Run with
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p tdx-api --lib --release loom_tests`.
#[cfg(all(test, loom))]
mod loom_tests {
    use alloc::sync::Arc;

    use loom::thread;

    use super::*;

    /// A tree of two levels (root entries of level 1) with a table linked
    /// at index 0, so level-0 entries 0..FANOUT exist.
    fn small_tree() -> Tree {
        let t = Tree::new(1).unwrap();
        let s = t.walk(0, 1).unwrap();
        s.store(Entry::Table(
            Node::alloc(Some(Pfn::new(1))).unwrap(),
            Hold::Idle,
        ));
        t
    }

    /// Two threads claim the same free entry: exactly one gets it.
    #[test]
    fn one_claim_wins() {
        loom::model(|| {
            let t = Arc::new(small_tree());
            let claim = |t: Arc<Tree>| {
                let s = t.walk(0x1000, 0).unwrap();
                let won = s.swap_if(Entry::Free, Entry::Adding).is_ok();
                if won {
                    s.store(Entry::Leaf(Pfn::new(7), Hold::Idle));
                }
                won
            };
            let t2 = Arc::clone(&t);
            let h = thread::spawn(move || claim(t2));
            let a = claim(Arc::clone(&t));
            let b = h.join().unwrap();
            assert!(a ^ b, "exactly one claim wins");
            assert_eq!(
                t.walk(0x1000, 0).unwrap().load(),
                Entry::Leaf(Pfn::new(7), Hold::Idle)
            );
        });
    }

    /// Two threads add the table above the same GPA: one links it, the
    /// other sees the entry being added (and backs off) or walks through
    /// the linked table; never two tables.
    #[test]
    fn one_table_is_linked() {
        loom::model(|| {
            let t = Arc::new(Tree::new(1).unwrap());
            let add = |t: Arc<Tree>| -> bool {
                match t.walk(0, 0) {
                    Err(Stop::Missing(s)) => {
                        if s.swap_if(Entry::Free, Entry::Adding).is_ok() {
                            let n = Node::alloc(Some(Pfn::new(9))).unwrap();
                            s.store(Entry::Table(n, Hold::Idle));
                            true
                        } else {
                            false
                        }
                    }
                    Ok(_) | Err(Stop::Busy) => false,
                    Err(e) => panic!("unexpected {e:?}"),
                }
            };
            let t2 = Arc::clone(&t);
            let h = thread::spawn(move || add(t2));
            let a = add(Arc::clone(&t));
            let b = h.join().unwrap();
            assert!(!(a && b), "two tables linked");
            assert!(a || b, "no table linked");
            assert!(t.walk(0, 0).is_ok());
        });
    }

    /// A merge (the table's entry and every entry below it claimed, then
    /// the table replaced by a leaf and its node retired) against a
    /// removal of one page below: never both proceed, and a thread that
    /// read the old node pointer reads live memory (the node is retired,
    /// not freed, until the tree is dropped).
    #[test]
    fn merge_and_removal_exclude_each_other() {
        loom::model(|| {
            let t = Arc::new(small_tree());
            let table = t.walk(0, 1).unwrap();
            let Some(node) = table.table() else { panic!() };
            for (i, s) in node.slots(0).unwrap() {
                s.store(Entry::Leaf(Pfn::new(64 + i as u64), Hold::Idle));
            }
            let t2 = Arc::clone(&t);
            // The removal of the page at index 2.
            let h = thread::spawn(move || {
                let Ok(s) = t2.walk(2 << 12, 0) else {
                    return false;
                };
                match s.claim_leaf() {
                    Ok((pfn, blocked)) => {
                        assert_eq!((pfn, blocked), (Pfn::new(66), false));
                        s.store(Entry::Free);
                        true
                    }
                    Err(_) => false,
                }
            });
            // The merge.
            let merged = (|| {
                let Entry::Table(n, Hold::Idle) = table.load() else {
                    return false;
                };
                if table
                    .swap_if(Entry::Table(n, Hold::Idle), Entry::Table(n, Hold::Busy))
                    .is_err()
                {
                    return false;
                }
                // SAFETY: linked, so alive.
                let children = unsafe { n.as_ref() };
                let mut claimed = 0;
                for (i, s) in children.slots(0).unwrap() {
                    let pfn = Pfn::new(64 + i as u64);
                    if s.swap_if(Entry::Leaf(pfn, Hold::Idle), Entry::Leaf(pfn, Hold::Busy))
                        .is_err()
                    {
                        break;
                    }
                    claimed += 1;
                }
                if claimed < FANOUT {
                    for (i, s) in children.slots(0).unwrap().take(claimed) {
                        s.store(Entry::Leaf(Pfn::new(64 + i as u64), Hold::Idle));
                    }
                    table.store(Entry::Table(n, Hold::Idle));
                    return false;
                }
                table.store(Entry::Leaf(Pfn::new(64), Hold::Idle));
                t.retire(n);
                true
            })();
            let removed = h.join().unwrap();
            assert!(
                !(merged && removed),
                "a page was removed from a merged range"
            );
            match t.walk(0, 1).unwrap().load() {
                Entry::Leaf(..) => assert!(merged),
                Entry::Table(..) => assert!(!merged),
                e => panic!("entry left {e:?}"),
            }
        });
    }

    /// A tree of two levels whose root entry 0 is a split node (a 2M page
    /// at frame 512 split into 4K parts), as `Td::demote` links it.
    fn split_tree() -> Tree {
        let t = Tree::new(1).unwrap();
        let s = t.walk(0, 1).unwrap();
        s.store(Entry::Table(
            Node::alloc_split(Pfn::new(1), Pfn::new(512), 1).unwrap(),
            Hold::Idle,
        ));
        t
    }

    /// Two threads remove the same unwritten part of a split node (walk,
    /// which writes its word, then claim): at most one removes it, the
    /// word is written once (loom checks the write against every read of
    /// it), and a thread that lost the write race sees the entry busy.
    #[test]
    fn one_thread_writes_a_split_entry() {
        loom::model(|| {
            let t = Arc::new(split_tree());
            let remove = |t: Arc<Tree>| -> bool {
                let Ok(s) = t.walk(2 << 12, 0) else {
                    return false;
                };
                match s.claim_leaf() {
                    Ok((pfn, blocked)) => {
                        assert_eq!((pfn, blocked), (Pfn::new(514), false));
                        s.store(Entry::Free);
                        true
                    }
                    Err(_) => false,
                }
            };
            let t2 = Arc::clone(&t);
            let h = thread::spawn(move || remove(t2));
            let a = remove(Arc::clone(&t));
            let b = h.join().unwrap();
            // A thread that loses the race to write the word backs off
            // (busy) while the winner goes on; one that comes after the
            // removal finds the entry free.
            assert!(a ^ b, "the page was removed twice or not at all");
            assert_eq!(t.lookup(2 << 12), (0, Entry::Free));
            // The neighbours still hold their parts.
            assert_eq!(t.lookup(3 << 12).1, Entry::Leaf(Pfn::new(515), Hold::Idle));
        });
    }

    /// A merge of a split node (its table entry claimed, the node frozen,
    /// the written entries claimed) against the removal of one part: never
    /// both. A merge that finds no word written checks nothing below, so
    /// this is the race that the freeze must close.
    #[test]
    fn a_merge_and_a_removal_in_a_split_node_exclude_each_other() {
        loom::model(|| {
            let t = Arc::new(split_tree());
            let table = t.walk(0, 1).unwrap();
            let t2 = Arc::clone(&t);
            let h = thread::spawn(move || {
                let Ok(s) = t2.walk(1 << 12, 0) else {
                    return false;
                };
                match s.claim_leaf() {
                    Ok(_) => {
                        s.store(Entry::Free);
                        true
                    }
                    Err(_) => false,
                }
            });
            let merged = (|| {
                let Entry::Table(n, Hold::Idle) = table.load() else {
                    return false;
                };
                if table
                    .swap_if(Entry::Table(n, Hold::Idle), Entry::Table(n, Hold::Busy))
                    .is_err()
                {
                    return false;
                }
                // SAFETY: linked, so alive.
                let children = unsafe { n.as_ref() };
                let Ok(touched) = children.freeze() else {
                    table.store(Entry::Table(n, Hold::Idle));
                    return false;
                };
                let nth = |i: usize| Entry::Leaf(Pfn::new(512 + i as u64), Hold::Idle);
                let busy = |i: usize| Entry::Leaf(Pfn::new(512 + i as u64), Hold::Busy);
                let mut claimed = if touched { 0 } else { FANOUT };
                while claimed < FANOUT {
                    let ok = match children.frozen_slot(claimed, 0) {
                        Ok(s) => s.swap_if(nth(claimed), busy(claimed)).is_ok(),
                        Err(part) => part == nth(claimed),
                    };
                    if !ok {
                        break;
                    }
                    claimed += 1;
                }
                if claimed < FANOUT {
                    for i in 0..claimed {
                        if let Ok(s) = children.frozen_slot(i, 0) {
                            s.store(nth(i));
                        }
                    }
                    children.thaw();
                    table.store(Entry::Table(n, Hold::Idle));
                    return false;
                }
                table.store(Entry::Leaf(Pfn::new(512), Hold::Idle));
                t.retire(n);
                true
            })();
            let removed = h.join().unwrap();
            assert!(
                !(merged && removed),
                "a page was removed from a merged range"
            );
            match t.walk(0, 1).unwrap().load() {
                Entry::Leaf(..) => assert!(merged),
                Entry::Table(..) => {
                    assert!(!merged);
                    let e = t.lookup(1 << 12).1;
                    if removed {
                        assert_eq!(e, Entry::Free);
                    } else {
                        assert_eq!(e, Entry::Leaf(Pfn::new(513), Hold::Idle));
                    }
                }
                e => panic!("entry left {e:?}"),
            }
        });
    }

    /// A reader (`lookup`, as `Td::mapping` does) while another thread
    /// writes a split entry's word: it sees the part, before and after,
    /// and never reads the word before it is written.
    #[test]
    fn a_read_of_a_split_entry_sees_its_part_while_it_is_written() {
        loom::model(|| {
            let t = Arc::new(split_tree());
            let t2 = Arc::clone(&t);
            let h = thread::spawn(move || t2.walk(3 << 12, 0).map(|s| s.load()).ok());
            let read = t.lookup(3 << 12);
            let written = h.join().unwrap();
            assert_eq!(read, (0, Entry::Leaf(Pfn::new(515), Hold::Idle)));
            if let Some(e) = written {
                assert_eq!(e, Entry::Leaf(Pfn::new(515), Hold::Idle));
            }
        });
    }
}
