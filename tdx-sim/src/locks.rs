//! The TDX module's locks, with the module's own algorithms
//! (`src/common/helpers/tdx_locks.h` in Intel's module source).
//!
//! Every lock is a word that one atomic instruction tries to change; no
//! acquisition ever waits. A failed attempt makes the leaf undo what it took
//! and return `TDX_OPERAND_BUSY` (or `_BUSY_HOST_PRIORITY`) with the operand
//! of the lock; the dispatcher releases the rest when the leaf ends
//! ([`HeldStack`]). Between a successful acquisition and the leaf's end the
//! word says "held", whatever the simulator's own mutexes do, so a leaf
//! running on another thread meets the lock exactly as on the real module.
//!
//! Four kinds:
//!
//! - [`Sharex`]: shared/exclusive; bit 0 exclusive, bits 15:1 the reader
//!   count. The S-EPT tree lock, the TD epoch lock, the KOT lock and the
//!   module's global (TDH.SYS.*) lock.
//! - [`SharexHp`]: shared/exclusive with host priority; bit 0 exclusive,
//!   bit 1 host priority (HP), bits 15:2 readers. Every PAMT entry (so the
//!   TDR and TDVPR pages) and the TDCS op-state lock. A host that fails sets
//!   HP; HP makes guest-side attempts fail with `BUSY_HOST_PRIORITY` until a
//!   host acquisition succeeds (which clears it).
//! - S-EPT entry locks ([`septe`]): bit 11 (TDEL) of the entry, with bit 52
//!   (TDHP) as the host-priority mark.
//! - [`Mutex`]: a plain try-lock byte; the per-package WBT entry lock of
//!   TDH.PHYMEM.CACHE.WB.
//!
//! The quirks are the module's: a failed shared attempt does not undo its
//! reader increment (the exclusive holder's release wipes the count), a
//! release never clears HP, and a host exclusive attempt that finds only HP
//! takes the lock and clears it.
//!
//! # Shared holds in reader slots
//!
//! Every leaf on a TD takes that TD's TDR entry, its PAMT parents, the op
//! state and often the S-EPT tree lock shared. In the module each of those
//! is an atomic add on one word that all LPs write; in a simulator whose
//! leaves take a few hundred nanoseconds, those shared cache lines would
//! serialize leaves the module runs in parallel. So a host's shared hold
//! can instead be recorded in a slot of its LP ([`ReaderSlots`]; the
//! "biased" readers of BRAVO, Dice and Kogan 2019): the reader publishes
//! the lock's address in its own slot, then (after a SeqCst fence) checks
//! that the word admits readers. The word carries two bits of the
//! simulator's beside the module's 16: BIASED (readers may be in slots)
//! and PENDING (an exclusive attempt is checking the slots). An exclusive
//! attempt on a biased word sets PENDING, then (after a SeqCst fence) scans
//! the slots, and takes the word only if no slot names the lock; a reader
//! that sees PENDING takes the module's path. Every outcome is one the
//! module's algorithm gives for some order of the same attempts: a slot
//! reader is a reader the module would count. The fast path is taken only
//! where the module's host-side shared acquire would simply succeed (no
//! exclusive holder, no host-priority mark); everything else, and every
//! guest-side or exclusive acquisition, follows the module's algorithm on
//! the module's 16 bits (with their 16-bit wraparound).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
};

use tdx_types::TdxStatus;

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// Shared with other shared holders.
    Shared,
    /// Alone.
    Exclusive,
}

/// Who takes a lock: the VMM through a SEAMCALL, or a TD through a TDCALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockSide {
    /// A host-side (SEAMCALL) leaf.
    Host,
    /// A guest-side (TDCALL) leaf.
    Guest,
}

/// Why an acquisition failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// `TDX_OPERAND_BUSY`.
    Busy,
    /// `TDX_OPERAND_BUSY_HOST_PRIORITY` (guest side only).
    HostPriority,
}

impl Busy {
    /// The status without an operand.
    pub(crate) fn status(self) -> TdxStatus {
        match self {
            Busy::Busy => TdxStatus::OPERAND_BUSY,
            Busy::HostPriority => TdxStatus::OPERAND_BUSY_HOST_PRIORITY,
        }
    }
}

// ---------------------------------------------------------------------------
// Reader slots
// ---------------------------------------------------------------------------

/// Slots per LP: more shared holds than one leaf takes.
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 16;
/// Under loom, every slot load is a point the model checker branches at:
/// two slots per LP keep the state space small (one is used).
#[cfg(loom)]
pub(crate) const SLOTS: usize = 2;
/// LPs that have slots (the others always take the module's path, so an
/// exclusive attempt scans at most this many LPs' slots).
pub(crate) const SLOT_LPS: usize = 64;

/// One LP's reader slots: the addresses of the lock words it holds shared
/// (0 = free). Only the thread running a SEAMCALL on that LP writes them
/// (the dispatcher runs one SEAMCALL per LP at a time).
#[derive(Debug)]
#[repr(align(64))]
pub(crate) struct LpSlots([AtomicUsize; SLOTS]);

impl LpSlots {
    /// All of the LP's slots.
    pub(crate) fn all(&self) -> &[AtomicUsize] {
        &self.0
    }
}

/// The reader slots of a simulator's LPs.
#[derive(Debug)]
pub(crate) struct ReaderSlots(Box<[LpSlots]>);

impl ReaderSlots {
    pub(crate) fn new(lps: usize) -> Self {
        Self(
            (0..lps.min(SLOT_LPS))
                .map(|_| LpSlots(std::array::from_fn(|_| AtomicUsize::new(0))))
                .collect(),
        )
    }

    /// The slots of `lp`, if it has any.
    pub(crate) fn of(&self, lp: u32) -> Option<&LpSlots> {
        self.0.get(lp as usize)
    }

    /// The first LP with a slot in use, if any.
    pub(crate) fn in_use(&self) -> Option<usize> {
        self.0
            .iter()
            .position(|l| l.0.iter().any(|s| s.load(Ordering::Acquire) != 0))
    }

    /// True if a slot other than `except` names `addr`. An LP's slots in
    /// use are a prefix of its slots (see [`HeldStack`]), so the scan of
    /// an LP stops at its first free slot: a reader that publishes in slot
    /// `n` has filled slots `0..n` before (program order, then its fence),
    /// and it empties them newest first with release stores.
    fn holds(&self, addr: usize, except: Option<&AtomicUsize>) -> bool {
        let except = except.map_or(0, |x| std::ptr::from_ref(x) as usize);
        for lp in &self.0 {
            for s in &lp.0 {
                let v = s.load(Ordering::Acquire);
                if v == 0 {
                    break;
                }
                if v == addr && std::ptr::from_ref(s) as usize != except {
                    return true;
                }
            }
        }
        false
    }
}

/// A used slot that names no lock (a promoted hold's).
const TOMBSTONE: usize = 1;

/// The slots an acquisition may use: all of them (to scan), and some of
/// the acquiring LP's own (to publish in), if it has some. A leaf passes
/// the slots past the ones it has used, which are all free, so the first
/// one is taken without a search.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readers<'s> {
    pub(crate) all: &'s ReaderSlots,
    pub(crate) mine: Option<&'s [AtomicUsize]>,
}

/// How a hold is recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hold<'s> {
    /// Shared, in the module's reader count.
    Counted,
    /// Shared, in a reader slot.
    Slot(&'s AtomicUsize),
    /// Exclusive.
    Exclusive,
}

// ---------------------------------------------------------------------------
// The word shared by both sharex kinds
// ---------------------------------------------------------------------------

/// The module's 16 bits.
const MODULE: u32 = 0xFFFF;
/// Readers may be in slots.
const BIASED: u32 = 1 << 16;
/// An exclusive attempt is scanning the slots.
const PENDING: u32 = 1 << 17;

/// A lock word: the module's 16 bits and the simulator's two.
#[derive(Debug, Default)]
struct Word(AtomicU32);

impl Word {
    fn addr(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    fn load(&self, o: Ordering) -> u32 {
        self.0.load(o)
    }

    /// Adds `delta` to the module's 16 bits, wrapping as a 16-bit word does
    /// (`lock xadd` on the module's `uint16_t`); returns the old word.
    fn add16(&self, delta: u16, o: Ordering) -> u32 {
        self.0
            .fetch_update(o, Ordering::Relaxed, |w| {
                Some((w & !MODULE) | u32::from((w as u16).wrapping_add(delta)))
            })
            .expect("the closure always gives a value")
    }

    /// The biased shared path: `Some(slot)` if the hold is recorded in a
    /// slot of `r.mine`, `None` if the caller must take the module's path
    /// (no slots, no free slot, or the word has a bit of `stop` or PENDING).
    fn try_slot<'s>(&'s self, r: Readers<'s>, stop: u32) -> Option<&'s AtomicUsize> {
        // The caller's first slot, if free (a leaf passes the slots past
        // the ones it uses, all free); else the module's path.
        let slot = r.mine?.first().filter(|s| s.load(Ordering::Relaxed) == 0)?;
        let w = self.load(Ordering::Relaxed);
        if w & (stop | PENDING) != 0 {
            return None;
        }
        if w & BIASED == 0 {
            self.0.fetch_or(BIASED, Ordering::Relaxed);
        }
        slot.store(self.addr(), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let w = self.load(Ordering::Acquire);
        if w & BIASED == 0 || w & (stop | PENDING) != 0 {
            slot.store(0, Ordering::Relaxed);
            return None;
        }
        Some(slot)
    }

    /// [`Word::try_slot`] for several words with one fence: all held in
    /// slots, or none (`None`: the caller takes them one by one).
    fn try_slots<'s, const N: usize>(
        words: [&'s Word; N],
        r: Readers<'s>,
        stop: u32,
    ) -> Option<[&'s AtomicUsize; N]> {
        // The first N of the caller's slots, if they are free (a leaf
        // passes the slots past the ones it uses, all free); else the
        // module's path.
        let mine: &'s [AtomicUsize; N] = r.mine?.get(..N)?.try_into().ok()?;
        if mine.iter().any(|s| s.load(Ordering::Relaxed) != 0) {
            return None;
        }
        let slots: [&'s AtomicUsize; N] = std::array::from_fn(|i| &mine[i]);
        for w in words {
            let v = w.load(Ordering::Relaxed);
            if v & (stop | PENDING) != 0 {
                return None;
            }
            if v & BIASED == 0 {
                w.0.fetch_or(BIASED, Ordering::Relaxed);
            }
        }
        for (s, w) in slots.iter().zip(words) {
            s.store(w.addr(), Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let ok = words.iter().all(|w| {
            let v = w.load(Ordering::Acquire);
            v & BIASED != 0 && v & (stop | PENDING) == 0
        });
        if !ok {
            for s in slots {
                s.store(0, Ordering::Relaxed);
            }
            return None;
        }
        Some(slots)
    }

    /// An exclusive attempt on a word whose module bits were `w & MODULE`
    /// and allow it: takes the word (to `taken`) if no reader holds it.
    /// `Ok(true)` taken; `Ok(false)` readers hold it (the word is back as it
    /// was, PENDING cleared); `Err(())` the word changed before anything was
    /// done (re-evaluate). `except` is the caller's own slot (a promotion).
    fn take(
        &self,
        w: u32,
        taken: u32,
        r: Readers<'_>,
        except: Option<&AtomicUsize>,
    ) -> Result<bool, ()> {
        let cas = |from: u32, to: u32| {
            self.0
                .compare_exchange(from, to, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        };
        if w & BIASED == 0 {
            return if cas(w, taken) { Ok(true) } else { Err(()) };
        }
        if !cas(w, w | PENDING) {
            return Err(());
        }
        fence(Ordering::SeqCst);
        if !r.all.holds(self.addr(), except) && cas(w | PENDING, taken) {
            return Ok(true);
        }
        self.0.fetch_and(!PENDING, Ordering::Release);
        Ok(false)
    }

    /// Waits while another exclusive attempt scans the slots (a few
    /// hundred loads at most).
    fn wait_pending(&self) -> u32 {
        let mut spins = 0u32;
        loop {
            let w = self.load(Ordering::Acquire);
            if w & PENDING == 0 {
                return w;
            }
            spins += 1;
            #[cfg(loom)]
            loom::thread::yield_now();
            #[cfg(not(loom))]
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // The scanning thread may have lost its CPU.
                std::thread::yield_now();
            }
        }
    }

    /// True if anyone holds the word (the module's bits but HP, or a slot).
    fn is_held(&self, keep: u32, r: &ReaderSlots) -> bool {
        self.load(Ordering::Acquire) & MODULE & !keep != 0 || r.holds(self.addr(), None)
    }
}

// ---------------------------------------------------------------------------
// Plain sharex
// ---------------------------------------------------------------------------

/// A shared/exclusive lock without host priority.
#[derive(Debug, Default)]
pub(crate) struct Sharex(Word);

const SX_EXCLUSIVE: u32 = 1;
const SX_READER: u16 = 2;

impl Sharex {
    /// A free lock.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// One attempt (`acquire_sharex_lock`): shared adds a reader and fails
    /// if the exclusive bit was set (the add stays); exclusive succeeds
    /// only on a free word.
    pub(crate) fn acquire<'s>(&'s self, mode: LockMode, r: Readers<'s>) -> Result<Hold<'s>, Busy> {
        let w = &self.0;
        match mode {
            LockMode::Shared => {
                if let Some(slot) = w.try_slot(r, SX_EXCLUSIVE) {
                    return Ok(Hold::Slot(slot));
                }
                let old = w.add16(SX_READER, Ordering::Acquire);
                if old & SX_EXCLUSIVE == 0 {
                    Ok(Hold::Counted)
                } else {
                    Err(Busy::Busy)
                }
            }
            LockMode::Exclusive => loop {
                let cur = w.load(Ordering::Acquire);
                if cur & (MODULE | PENDING) != 0 {
                    return Err(Busy::Busy);
                }
                match w.take(cur, SX_EXCLUSIVE, r, None) {
                    Ok(true) => return Ok(Hold::Exclusive),
                    Ok(false) => return Err(Busy::Busy),
                    Err(()) => continue,
                }
            },
        }
    }

    /// Releases a hold: a reader leaves; the exclusive holder frees the
    /// word (wiping counts of failed shared attempts).
    pub(crate) fn release(&self, hold: Hold<'_>) {
        match hold {
            Hold::Slot(s) => s.store(0, Ordering::Release),
            Hold::Counted => {
                let old = self.0.add16(SX_READER.wrapping_neg(), Ordering::Release);
                debug_assert!(old & SX_EXCLUSIVE == 0, "{old:#x}");
            }
            Hold::Exclusive => {
                let old = self.0.0.swap(0, Ordering::Release);
                debug_assert!(old & SX_EXCLUSIVE != 0, "{old:#x}");
            }
        }
    }

    /// True if anyone holds the lock (or a failed shared attempt's count
    /// waits for the exclusive holder's release).
    pub(crate) fn is_held(&self, r: &ReaderSlots) -> bool {
        self.0.is_held(0, r)
    }

    /// The module's 16 bits (for tests).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> u32 {
        self.0.load(Ordering::Relaxed) & MODULE
    }
}

// ---------------------------------------------------------------------------
// Sharex with host priority
// ---------------------------------------------------------------------------

/// A shared/exclusive lock with host priority.
#[derive(Debug, Default)]
pub(crate) struct SharexHp(Word);

const HP_EXCLUSIVE: u32 = 1;
const HP_FLAG: u32 = 2;
const HP_READER: u16 = 4;

impl SharexHp {
    /// A free lock.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// One attempt (`acquire_sharex_lock_hp`).
    pub(crate) fn acquire<'s>(
        &'s self,
        mode: LockMode,
        side: LockSide,
        r: Readers<'s>,
    ) -> Result<Hold<'s>, Busy> {
        let w = &self.0;
        match (mode, side) {
            (LockMode::Shared, LockSide::Guest) => {
                let old = w.add16(HP_READER, Ordering::Acquire);
                if old & HP_FLAG != 0 {
                    w.add16(HP_READER.wrapping_neg(), Ordering::Relaxed);
                    Err(Busy::HostPriority)
                } else if old & HP_EXCLUSIVE != 0 {
                    Err(Busy::Busy)
                } else {
                    Ok(Hold::Counted)
                }
            }
            (LockMode::Shared, LockSide::Host) => {
                if let Some(slot) = w.try_slot(r, HP_EXCLUSIVE | HP_FLAG) {
                    return Ok(Hold::Slot(slot));
                }
                let old = w.add16(HP_READER, Ordering::Acquire);
                if old & HP_EXCLUSIVE != 0 {
                    w.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                    Err(Busy::Busy)
                } else {
                    if old & HP_FLAG != 0 {
                        w.0.fetch_and(!HP_FLAG, Ordering::Relaxed);
                    }
                    Ok(Hold::Counted)
                }
            }
            (LockMode::Exclusive, side) => loop {
                let cur = w.load(Ordering::Acquire);
                let m = cur & MODULE;
                let host = side == LockSide::Host;
                if cur & PENDING != 0 {
                    // Another exclusive attempt (or a promotion) is in
                    // flight: this one comes second.
                    if host {
                        w.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                    }
                    return Err(Busy::Busy);
                }
                let allowed = m == 0 || (m == HP_FLAG && host);
                if !allowed {
                    if m == HP_FLAG {
                        // A guest on a word marked for a host: the module
                        // says BUSY_HOST_PRIORITY when nobody holds it.
                        let readers = cur & BIASED != 0 && r.all.holds(w.addr(), None);
                        return Err(if readers {
                            Busy::Busy
                        } else {
                            Busy::HostPriority
                        });
                    }
                    if host {
                        w.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                    }
                    return Err(Busy::Busy);
                }
                match w.take(cur, HP_EXCLUSIVE, r, None) {
                    Ok(true) => return Ok(Hold::Exclusive),
                    Ok(false) => {
                        if host {
                            w.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                        }
                        return Err(Busy::Busy);
                    }
                    // The module's second compare-exchange (HP -> X) failed:
                    // BUSY, without marking.
                    Err(()) if m == HP_FLAG => return Err(Busy::Busy),
                    Err(()) => continue,
                }
            },
        }
    }

    /// Host shared holds of all of `locks` at once, in reader slots (one
    /// fence), where the module's algorithm would simply grant each of
    /// them; `None` if that is not so now (the caller takes them one by
    /// one, with the module's algorithm).
    pub(crate) fn try_shared_host<'s, const N: usize>(
        locks: [&'s SharexHp; N],
        r: Readers<'s>,
    ) -> Option<[Hold<'s>; N]> {
        Word::try_slots(locks.map(|l| &l.0), r, HP_EXCLUSIVE | HP_FLAG).map(|s| s.map(Hold::Slot))
    }

    /// Host promotion of the caller's shared `hold` to exclusive
    /// (`promote_sharex_lock_hp`): succeeds only if the caller is the one
    /// reader (with or without HP, which it clears); else sets HP.
    pub(crate) fn promote<'s>(&'s self, hold: Hold<'s>, r: Readers<'s>) -> Result<Hold<'s>, Busy> {
        let w = &self.0;
        let fail = || {
            w.0.fetch_or(HP_FLAG, Ordering::Relaxed);
            Err(Busy::Busy)
        };
        loop {
            let cur = w.wait_pending();
            let m = cur & MODULE;
            let (alone, except) = match hold {
                Hold::Counted => (m & !HP_FLAG == u32::from(HP_READER), None),
                Hold::Slot(s) => (m & !HP_FLAG == 0, Some(s)),
                Hold::Exclusive => unreachable!("promoting an exclusive hold"),
            };
            if !alone {
                return fail();
            }
            match w.take(cur, HP_EXCLUSIVE, r, except) {
                Ok(true) => {
                    // The slot no longer names the lock, but stays used
                    // (slots in use are a prefix); the leaf frees it.
                    if let Some(s) = except {
                        s.store(TOMBSTONE, Ordering::Relaxed);
                    }
                    return Ok(Hold::Exclusive);
                }
                Ok(false) => return fail(),
                Err(()) => continue,
            }
        }
    }

    /// Releases a hold; HP stays as it is.
    pub(crate) fn release(&self, hold: Hold<'_>) {
        match hold {
            Hold::Slot(s) => s.store(0, Ordering::Release),
            Hold::Counted => {
                let old = self.0.add16(HP_READER.wrapping_neg(), Ordering::Release);
                debug_assert!(old & HP_EXCLUSIVE == 0, "{old:#x}");
            }
            Hold::Exclusive => {
                let old = self.0.0.fetch_and(HP_FLAG, Ordering::Release);
                debug_assert!(old & HP_EXCLUSIVE != 0, "{old:#x}");
            }
        }
    }

    /// True if the host-priority flag is set.
    pub(crate) fn host_priority(&self) -> bool {
        self.0.load(Ordering::Relaxed) & HP_FLAG != 0
    }

    /// True if anyone holds the lock (a reader or the exclusive holder). A
    /// failed shared attempt that met an exclusive holder counts until that
    /// holder releases, as in the module.
    pub(crate) fn is_held(&self, r: &ReaderSlots) -> bool {
        self.0.is_held(HP_FLAG, r)
    }

    /// Resets the word (a freshly initialized PAMT entry or TDCS).
    pub(crate) fn reset(&self) {
        self.0.0.store(0, Ordering::Relaxed);
    }

    /// The module's 16 bits (for tests).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> u32 {
        self.0.load(Ordering::Relaxed) & MODULE
    }
}

// ---------------------------------------------------------------------------
// S-EPT entry locks
// ---------------------------------------------------------------------------

/// The lock bits of an S-EPT entry (`sept_lock_acquire_host`,
/// `sept_lock_acquire_guest`, `sept_lock_release`).
pub(crate) mod septe {
    use super::{AtomicU64, Busy, Ordering};

    /// TDEL, the entry lock (bit 11).
    pub(crate) const LOCK: u64 = 1 << 11;
    /// TDHP, the host-priority mark (bit 52).
    pub(crate) const HP: u64 = 1 << 52;

    /// Host side: test-and-set TDEL; if it was set, set TDHP and fail; if
    /// acquired, clear TDHP.
    pub(crate) fn lock_host(e: &AtomicU64) -> Result<(), Busy> {
        let old = e.fetch_or(LOCK, Ordering::Acquire);
        if old & LOCK != 0 {
            e.fetch_or(HP, Ordering::Relaxed);
            return Err(Busy::Busy);
        }
        // The module clears TDHP unconditionally; a mark set by a host that
        // failed after this acquisition may as well have come after that
        // clear, so only a mark that was there before is cleared.
        if old & HP != 0 {
            e.fetch_and(!HP, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Guest side: test-and-set TDEL; fail if it was set; if acquired but
    /// TDHP is set, release and fail with host priority.
    pub(crate) fn lock_guest(e: &AtomicU64) -> Result<(), Busy> {
        let old = e.fetch_or(LOCK, Ordering::Acquire);
        if old & LOCK != 0 {
            return Err(Busy::Busy);
        }
        if e.load(Ordering::Relaxed) & HP != 0 {
            e.fetch_and(!LOCK, Ordering::Release);
            return Err(Busy::HostPriority);
        }
        Ok(())
    }

    /// Clears TDEL only.
    pub(crate) fn unlock(e: &AtomicU64) {
        let old = e.fetch_and(!LOCK, Ordering::Release);
        debug_assert!(old & LOCK != 0, "{old:#x}");
    }
}

// ---------------------------------------------------------------------------
// Mutex
// ---------------------------------------------------------------------------

/// A try-only mutex (`acquire_mutex_lock`).
#[derive(Debug, Default)]
pub(crate) struct Mutex(AtomicBool);

impl Mutex {
    /// A free mutex.
    pub(crate) fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// One attempt.
    pub(crate) fn acquire(&self) -> Result<(), Busy> {
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map(drop)
            .map_err(|_| Busy::Busy)
    }

    /// Releases the mutex.
    pub(crate) fn release(&self) {
        if cfg!(debug_assertions) {
            let was = self.0.swap(false, Ordering::Release);
            debug_assert!(was);
        } else {
            // The holder lets go: a store, no read-modify-write.
            self.0.store(false, Ordering::Release);
        }
    }

    /// True if someone holds the mutex.
    pub(crate) fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// What a leaf holds
// ---------------------------------------------------------------------------

/// One lock a leaf (or a [`HeldLock`](crate::HeldLock)) holds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held<'s> {
    Sharex(&'s Sharex, Hold<'s>),
    SharexHp(&'s SharexHp, Hold<'s>),
    Septe(&'s AtomicU64),
    Mutex(&'s Mutex),
    /// Released or forgotten already.
    Gone,
}

impl Held<'_> {
    fn release(self) {
        match self {
            Held::Sharex(l, h) => l.release(h),
            Held::SharexHp(l, h) => l.release(h),
            Held::Septe(e) => septe::unlock(e),
            Held::Mutex(m) => m.release(),
            Held::Gone => {}
        }
    }
}

/// A point in a [`HeldStack`] to release back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    records: usize,
    slot: usize,
}

/// The locks one leaf holds, in acquisition order, and the reader slots it
/// may use; everything is released in reverse order when the leaf ends.
/// Acquisitions go through it. The first few records live inline, so a
/// leaf does not allocate.
///
/// The leaf's reader slots fill up in order and empty newest first, so the
/// slots in use are always a prefix: those below `next_slot` are in use
/// (a promoted hold's slot keeps a tombstone until a release goes back
/// below it), those from `next_slot` on are free. Exclusive attempts rely
/// on that to stop scanning an LP at its first free slot.
#[derive(Debug)]
pub(crate) struct HeldStack<'s> {
    all: &'s ReaderSlots,
    slots: Option<&'s LpSlots>,
    next_slot: usize,
    /// A promotion left a tombstone in a slot.
    tombstones: bool,
    inline: [Held<'s>; INLINE],
    len: usize,
    spill: Vec<Held<'s>>,
}

const INLINE: usize = 10;

impl<'s> HeldStack<'s> {
    /// A leaf's stack, publishing its shared holds in `slots` (those of the
    /// LP it runs on, which runs nothing else meanwhile; `None`: the
    /// module's reader counts only).
    pub(crate) fn new(all: &'s ReaderSlots, slots: Option<&'s LpSlots>) -> Self {
        Self {
            all,
            slots,
            next_slot: 0,
            tombstones: false,
            inline: [Held::Gone; INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    /// The slots the next acquisition may publish in.
    fn readers(&self) -> Readers<'s> {
        Readers {
            all: self.all,
            mine: self.slots.map(|l| &l.all()[self.next_slot..]),
        }
    }

    /// Records a hold.
    fn push(&mut self, h: Held<'s>) {
        if self.len < INLINE {
            self.inline[self.len] = h;
            self.len += 1;
        } else {
            self.spill.push(h);
        }
    }

    /// A hold in a slot took the first one the leaf passed.
    fn took(&mut self, h: Hold<'_>) {
        if matches!(h, Hold::Slot(_)) {
            self.next_slot += 1;
        }
    }

    fn last_mut(&mut self) -> &mut Held<'s> {
        match self.spill.last_mut() {
            Some(h) => h,
            None => &mut self.inline[self.len - 1],
        }
    }

    /// Takes `l` in `mode`.
    pub(crate) fn sharex(&mut self, l: &'s Sharex, mode: LockMode) -> Result<(), Busy> {
        let h = l.acquire(mode, self.readers())?;
        self.took(h);
        self.push(Held::Sharex(l, h));
        Ok(())
    }

    /// Takes `l` in `mode` on `side`.
    pub(crate) fn sharex_hp(
        &mut self,
        l: &'s SharexHp,
        mode: LockMode,
        side: LockSide,
    ) -> Result<(), Busy> {
        let h = l.acquire(mode, side, self.readers())?;
        self.took(h);
        self.push(Held::SharexHp(l, h));
        Ok(())
    }

    /// Takes `l` in `mode` on `side` with the module's reader count only,
    /// never a slot (a word more often taken exclusively than shared: a
    /// slot hold would make the next exclusive attempt scan the slots).
    pub(crate) fn sharex_hp_counted(
        &mut self,
        l: &'s SharexHp,
        mode: LockMode,
        side: LockSide,
    ) -> Result<(), Busy> {
        let r = Readers {
            all: self.all,
            mine: None,
        };
        let h = l.acquire(mode, side, r)?;
        self.push(Held::SharexHp(l, h));
        Ok(())
    }

    /// Host shared holds of all of `locks` at once, if the reader slots can
    /// take them (see [`SharexHp::try_shared_host`]); false if the caller
    /// must take them one by one.
    pub(crate) fn try_shared_host<const N: usize>(&mut self, locks: [&'s SharexHp; N]) -> bool {
        match SharexHp::try_shared_host(locks, self.readers()) {
            Some(holds) => {
                self.next_slot += N;
                for (l, h) in locks.into_iter().zip(holds) {
                    self.push(Held::SharexHp(l, h));
                }
                true
            }
            None => false,
        }
    }

    /// Promotes the newest record, a shared hold of a [`SharexHp`], to
    /// exclusive (a host's PAMT walk ending at a 2M or 1G entry).
    pub(crate) fn promote_last(&mut self) -> Result<(), Busy> {
        let readers = self.readers();
        let last = self.last_mut();
        let Held::SharexHp(l, hold) = *last else {
            unreachable!("promoting {last:?}")
        };
        *last = Held::SharexHp(l, l.promote(hold, readers)?);
        self.tombstones |= matches!(hold, Hold::Slot(_));
        Ok(())
    }

    /// Takes the lock bit of the S-EPT entry `e` on `side`.
    pub(crate) fn septe(&mut self, e: &'s AtomicU64, side: LockSide) -> Result<(), Busy> {
        match side {
            LockSide::Host => septe::lock_host(e)?,
            LockSide::Guest => septe::lock_guest(e)?,
        }
        self.push(Held::Septe(e));
        Ok(())
    }

    /// Takes the mutex `m`.
    pub(crate) fn mutex(&mut self, m: &'s Mutex) -> Result<(), Busy> {
        m.acquire()?;
        self.push(Held::Mutex(m));
        Ok(())
    }

    /// Drops the record of the entry lock on `e` (released by the write
    /// that changed the entry).
    pub(crate) fn forget_septe(&mut self, e: &AtomicU64) {
        let is = |h: &Held<'_>| matches!(h, Held::Septe(x) if std::ptr::eq(*x, e));
        if let Some(i) = self.spill.iter().rposition(is) {
            self.spill.remove(i);
            return;
        }
        for slot in self.inline[..self.len].iter_mut().rev() {
            if is(slot) {
                *slot = Held::Gone;
                return;
            }
        }
        debug_assert!(false, "no record of that entry lock");
    }

    /// Drops the records of the `n` newest locks without releasing them
    /// (their words went away with what they locked).
    pub(crate) fn forget_last(&mut self, mut n: usize) {
        while n > 0 {
            if self.spill.pop().is_none() {
                self.len -= 1;
                self.inline[self.len] = Held::Gone;
            }
            n -= 1;
        }
    }

    /// The current point (for [`HeldStack::release_to`]).
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            records: self.len + self.spill.len(),
            slot: self.next_slot,
        }
    }

    /// Releases the locks taken since `mark`, newest first.
    #[inline]
    pub(crate) fn release_to(&mut self, mark: Mark) {
        // Nothing taken since (a leaf's end after its explicit release).
        if self.len + self.spill.len() <= mark.records && self.next_slot == mark.slot {
            return;
        }
        self.release_taken(mark);
    }

    /// [`HeldStack::release_to`] with something to release.
    fn release_taken(&mut self, mark: Mark) {
        let keep_spill = mark.records.saturating_sub(INLINE);
        while self.spill.len() > keep_spill {
            if let Some(h) = self.spill.pop() {
                h.release();
            }
        }
        let keep = mark.records.min(INLINE);
        if self.len > keep {
            for h in self.inline[keep..self.len].iter_mut().rev() {
                std::mem::replace(h, Held::Gone).release();
            }
            self.len = keep;
        }
        // Every slot taken since `mark` was released with its record but
        // those of promoted holds: they go now (the newest first, keeping
        // the slots in use a prefix).
        if let (true, Some(l)) = (self.tombstones, self.slots) {
            for s in l.all()[mark.slot..self.next_slot].iter().rev() {
                if s.load(Ordering::Relaxed) != 0 {
                    s.store(0, Ordering::Release);
                }
            }
        }
        self.next_slot = mark.slot;
    }

    /// Releases everything, newest first.
    pub(crate) fn release_all(&mut self) {
        self.release_to(Mark {
            records: 0,
            slot: 0,
        });
    }
}

impl Drop for HeldStack<'_> {
    fn drop(&mut self) {
        // A leaf that panicked (a simulator bug) still lets go.
        self.release_all();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    use LockMode::{Exclusive as X, Shared as S};
    use LockSide::{Guest, Host};

    /// Readers with no slots: the module's own algorithm.
    fn counted(all: &ReaderSlots) -> Readers<'_> {
        Readers { all, mine: None }
    }

    #[test]
    fn sharex_follows_the_module() {
        let all = ReaderSlots::new(0);
        let r = counted(&all);
        let l = Sharex::new();
        let a = l.acquire(S, r).unwrap();
        let b = l.acquire(S, r).unwrap();
        assert_eq!(l.acquire(X, r).unwrap_err(), Busy::Busy);
        l.release(a);
        l.release(b);
        let x = l.acquire(X, r).unwrap();
        // A failed shared attempt leaves its count; the release wipes it.
        assert_eq!(l.acquire(S, r).unwrap_err(), Busy::Busy);
        assert_eq!(l.raw(), SX_EXCLUSIVE | u32::from(SX_READER));
        l.release(x);
        assert_eq!(l.raw(), 0);
    }

    #[test]
    fn host_priority_rules() {
        let all = ReaderSlots::new(0);
        let r = counted(&all);
        let l = SharexHp::new();
        let x = l.acquire(X, Host, r).unwrap();
        // A host meeting the exclusive holder sets HP (its count stays).
        assert_eq!(l.acquire(S, Host, r).unwrap_err(), Busy::Busy);
        assert!(l.host_priority());
        // HP is set now: a guest backs off with BUSY_HOST_PRIORITY (and
        // takes its count back).
        assert_eq!(l.acquire(S, Guest, r).unwrap_err(), Busy::HostPriority);
        assert_eq!(l.raw(), HP_EXCLUSIVE | HP_FLAG | u32::from(HP_READER));
        l.release(x);
        // The release keeps HP only.
        assert_eq!(l.raw(), HP_FLAG);
        assert_eq!(l.acquire(S, Guest, r).unwrap_err(), Busy::HostPriority);
        assert_eq!(l.acquire(X, Guest, r).unwrap_err(), Busy::HostPriority);
        assert_eq!(l.raw(), HP_FLAG);
        // A successful host acquisition clears HP.
        let s1 = l.acquire(S, Host, r).unwrap();
        assert!(!l.host_priority());
        let s2 = l.acquire(S, Guest, r).unwrap();
        l.release(s2);
        // Host exclusive over readers: BUSY and HP.
        assert_eq!(l.acquire(X, Host, r).unwrap_err(), Busy::Busy);
        assert!(l.host_priority());
        l.release(s1);
        // Host exclusive over HP alone: taken, HP cleared.
        let x = l.acquire(X, Host, r).unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        l.release(x);
    }

    #[test]
    fn promotion() {
        let all = ReaderSlots::new(0);
        let r = counted(&all);
        let l = SharexHp::new();
        let s = l.acquire(S, Host, r).unwrap();
        let x = l.promote(s, r).unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        l.release(x);
        let a = l.acquire(S, Host, r).unwrap();
        let b = l.acquire(S, Host, r).unwrap();
        assert_eq!(l.promote(a, r).unwrap_err(), Busy::Busy);
        assert!(l.host_priority());
        l.release(b);
        // One reader with HP: promoted, HP cleared.
        let x = l.promote(a, r).unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        l.release(x);
    }

    #[test]
    fn slot_readers_are_readers() {
        let all = ReaderSlots::new(2);
        let r0 = Readers {
            all: &all,
            mine: all.of(0).map(LpSlots::all),
        };
        let r1 = Readers {
            all: &all,
            mine: all.of(1).map(LpSlots::all),
        };
        let l = SharexHp::new();
        let a = l.acquire(S, Host, r0).unwrap();
        assert!(matches!(a, Hold::Slot(_)), "{a:?}");
        let b = l.acquire(S, Host, r1).unwrap();
        assert_eq!(l.raw(), 0, "no count in the module's bits");
        // An exclusive attempt finds them, marks HP, and changes nothing
        // else.
        assert_eq!(l.acquire(X, Host, r1).unwrap_err(), Busy::Busy);
        assert!(l.host_priority());
        l.release(b);
        // A reader alone (in a slot) promotes.
        let x = l.promote(a, r0).unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        // Readers meeting the holder: the module's path (count left, HP).
        assert_eq!(l.acquire(S, Host, r1).unwrap_err(), Busy::Busy);
        l.release(x);
        assert_eq!(l.raw(), HP_FLAG);
        // With HP set, the first host reader takes the module's path and
        // clears it; the next one uses its slot again.
        let c = l.acquire(S, Host, r0).unwrap();
        assert!(matches!(c, Hold::Counted));
        let d = l.acquire(S, Host, r1).unwrap();
        assert!(matches!(d, Hold::Slot(_)));
        l.release(c);
        l.release(d);
        assert!(!l.is_held(&all));
        // The promoted hold's slot keeps a tombstone (a leaf's end frees
        // it), so LP 0's slots in use stay a prefix.
        let s0 = &all.of(0).unwrap().0[0];
        assert_eq!(s0.load(Ordering::Relaxed), TOMBSTONE);
        s0.store(0, Ordering::Relaxed);
        // Plain sharex: the same.
        let t = Sharex::new();
        let a = t.acquire(S, r0).unwrap();
        assert!(matches!(a, Hold::Slot(_)), "{a:?}");
        assert_eq!(t.acquire(X, r1).unwrap_err(), Busy::Busy);
        t.release(a);
        let x = t.acquire(X, r1).unwrap();
        assert_eq!(t.acquire(S, r0).unwrap_err(), Busy::Busy);
        t.release(x);
        assert!(!t.is_held(&all));
    }

    /// A leaf's slots: taken in order, a promoted hold's slot tombstoned
    /// (an exclusive attempt scans past it to the holds above), all free
    /// again at the leaf's end.
    #[test]
    fn a_leafs_slots_stay_a_prefix() {
        let all = ReaderSlots::new(2);
        let (l1, l2, l3) = (SharexHp::new(), SharexHp::new(), Sharex::new());
        let mut held = HeldStack::new(&all, all.of(0));
        held.sharex_hp(&l1, S, Host).unwrap();
        held.promote_last().unwrap();
        let mark = held.mark();
        held.sharex_hp(&l2, S, Host).unwrap();
        held.sharex(&l3, S).unwrap();
        let slots: Vec<usize> = all.of(0).unwrap().0[..4]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect();
        assert_eq!(slots, [TOMBSTONE, l2.0.addr(), l3.0.addr(), 0]);
        let other = Readers {
            all: &all,
            mine: all.of(1).map(LpSlots::all),
        };
        assert_eq!(l2.acquire(X, Host, other).unwrap_err(), Busy::Busy);
        assert_eq!(l3.acquire(X, other).unwrap_err(), Busy::Busy);
        assert_eq!(l1.acquire(S, Host, other).unwrap_err(), Busy::Busy);
        // Back to the mark: l2 and l3 go, the tombstone stays.
        held.release_to(mark);
        assert_eq!(all.in_use(), Some(0));
        let x = l3.acquire(X, other).unwrap();
        l3.release(x);
        held.release_all();
        assert_eq!(all.in_use(), None);
        assert!(!l1.is_held(&all) && !l2.is_held(&all));
    }

    #[test]
    fn septe_bits() {
        let e = AtomicU64::new(0x1234_5000);
        septe::lock_host(&e).unwrap();
        assert_eq!(septe::lock_host(&e), Err(Busy::Busy));
        assert_ne!(e.load(Ordering::Relaxed) & septe::HP, 0);
        assert_eq!(septe::lock_guest(&e), Err(Busy::Busy));
        septe::unlock(&e);
        // HP survives the release and turns the guest away...
        assert_eq!(septe::lock_guest(&e), Err(Busy::HostPriority));
        assert_eq!(e.load(Ordering::Relaxed) & septe::LOCK, 0);
        // ...until a host takes the entry.
        septe::lock_host(&e).unwrap();
        septe::unlock(&e);
        septe::lock_guest(&e).unwrap();
        septe::unlock(&e);
        assert_eq!(e.load(Ordering::Relaxed), 0x1234_5000);
    }
}

/// Model checks of the lock algorithms: every interleaving of two or three
/// threads (each an LP with its reader slots, or none), with loom checking
/// that what a lock admits never races.
/// Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p tdx-sim
/// --lib --release loom` (the preemption bound keeps the three-thread
/// models to minutes).
// UNSAFETY: the data a lock protects is loom's `UnsafeCell`, reached
// through raw pointers; that the lock makes those accesses sound is what
// loom checks.
#[cfg(all(test, loom))]
#[allow(unsafe_code)]
mod loom_tests {
    use loom::{cell::UnsafeCell, sync::Arc, thread};

    use super::*;

    use LockMode::{Exclusive as X, Shared as S};
    use LockSide::{Guest, Host};

    /// Data a lock protects: shared holders read it, the exclusive holder
    /// writes it; loom fails the test if two accesses race.
    struct Guarded<L> {
        lock: L,
        slots: ReaderSlots,
        data: UnsafeCell<u64>,
    }

    // SAFETY: `data` is touched only while `lock` admits it (that is what
    // the tests check, with loom's race detector).
    unsafe impl<L: Sync> Sync for Guarded<L> {}
    // SAFETY: as above.
    unsafe impl<L: Send> Send for Guarded<L> {}

    fn guarded<L>(lock: L) -> Arc<Guarded<L>> {
        Arc::new(Guarded {
            lock,
            slots: ReaderSlots::new(3),
            data: UnsafeCell::new(0),
        })
    }

    /// The readers of LP `lp`, with (`slots`) or without its slots.
    fn readers<L>(g: &Guarded<L>, lp: u32, slots: bool) -> Readers<'_> {
        Readers {
            all: &g.slots,
            mine: if slots {
                g.slots.of(lp).map(LpSlots::all)
            } else {
                None
            },
        }
    }

    fn access<L>(g: &Guarded<L>, mode: LockMode) {
        match mode {
            S => g.data.with(|p| {
                // SAFETY: a shared hold of `g.lock` (checked by loom).
                let _ = unsafe { *p };
            }),
            X => g.data.with_mut(|p| {
                // SAFETY: the exclusive hold of `g.lock` (checked by loom).
                unsafe { *p += 1 };
            }),
        }
    }

    #[test]
    fn loom_sharex_admits_readers_or_one_writer() {
        loom::model(|| {
            let g = guarded(Sharex::new());
            // A slot reader, a writer, a counted reader.
            let threads: Vec<_> = [(S, true), (X, false), (S, false)]
                .into_iter()
                .enumerate()
                .map(|(lp, (mode, slots))| {
                    let g = g.clone();
                    thread::spawn(move || {
                        let r = readers(&g, lp as u32, slots);
                        if let Ok(h) = g.lock.acquire(mode, r) {
                            access(&g, mode);
                            g.lock.release(h);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!g.lock.is_held(&g.slots));
            assert_eq!(g.lock.0.load(Ordering::Relaxed) & PENDING, 0);
        });
    }

    /// Runs one host-priority lock through `who` at once (mode, side, with
    /// slots) and returns the module bits left when all have released, and
    /// who got the lock.
    fn hp_round(who: [(LockMode, LockSide, bool); 3]) -> (u32, Vec<bool>) {
        let g = guarded(SharexHp::new());
        let threads: Vec<_> = who
            .into_iter()
            .enumerate()
            .map(|(lp, (mode, side, slots))| {
                let g = g.clone();
                thread::spawn(move || {
                    let r = readers(&g, lp as u32, slots);
                    match g.lock.acquire(mode, side, r) {
                        Ok(h) => {
                            access(&g, mode);
                            g.lock.release(h);
                            true
                        }
                        Err(_) => false,
                    }
                })
            })
            .collect();
        let ok = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(!g.lock.is_held(&g.slots));
        (g.lock.raw(), ok)
    }

    #[test]
    fn loom_sharex_hp_admits_readers_or_one_writer() {
        loom::model(|| {
            let (w, ok) = hp_round([(S, Host, true), (X, Host, false), (S, Host, false)]);
            // All released: at most the host-priority mark is left, and
            // only if a host failed.
            assert!(w == 0 || w == HP_FLAG, "{w:#x}");
            if w == HP_FLAG {
                assert!(ok.contains(&false), "HP without a failed host");
            }
        });
    }

    /// The module's guest-side shared acquire takes its reader count back
    /// with a second atomic subtraction when it meets the host-priority
    /// mark (`acquire_sharex_lock_hp_sh`), and the exclusive release keeps
    /// only that mark (`release_sharex_lock_hp_ex`). If the exclusive
    /// holder releases between the guest's add and its subtraction, the
    /// reader count wraps (word 0xFFFE: HP and 0x3FFF readers). The
    /// simulator keeps the module's algorithm, so it has the same race;
    /// loom finds it. (No leaf of the simulator takes a host-priority lock
    /// on the guest side; only `Simulator::hold_as` can.) What holds on
    /// every interleaving is exclusion: loom's race detector never fires.
    #[test]
    fn loom_sharex_hp_guest_undo_races_the_exclusive_release() {
        static WRAPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        loom::model(|| {
            let g = guarded(SharexHp::new());
            let who = [(S, Guest), (X, Host), (S, Host)];
            let threads: Vec<_> = who
                .into_iter()
                .enumerate()
                .map(|(lp, (mode, side))| {
                    let g = g.clone();
                    thread::spawn(move || {
                        let r = readers(&g, lp as u32, false);
                        match g.lock.acquire(mode, side, r) {
                            Ok(h) => {
                                access(&g, mode);
                                g.lock.release(h);
                                true
                            }
                            Err(_) => false,
                        }
                    })
                })
                .collect();
            let ok: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let w = g.lock.raw();
            match w {
                0 => {}
                HP_FLAG => assert!(ok.contains(&false), "HP without a failed host"),
                0xFFFE => {
                    assert!(!ok[0] && !ok[2] && ok[1], "{ok:?}");
                    WRAPPED.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                _ => panic!("{w:#x}"),
            }
        });
        assert!(WRAPPED.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn loom_promotion_is_exclusive() {
        loom::model(|| {
            let g = guarded(SharexHp::new());
            // Two readers each try to promote: one in a slot, one counted.
            let threads: Vec<_> = [true, false]
                .into_iter()
                .enumerate()
                .map(|(lp, slots)| {
                    let g = g.clone();
                    thread::spawn(move || {
                        let r = readers(&g, lp as u32, slots);
                        let Ok(h) = g.lock.acquire(S, Host, r) else {
                            return;
                        };
                        access(&g, S);
                        match g.lock.promote(h, r) {
                            Ok(x) => {
                                access(&g, X);
                                g.lock.release(x);
                            }
                            Err(_) => g.lock.release(h),
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!g.lock.is_held(&g.slots));
            let w = g.lock.raw();
            assert!(w == 0 || w == HP_FLAG, "{w:#x}");
        });
    }

    #[test]
    fn loom_batched_slot_readers_exclude_a_writer() {
        loom::model(|| {
            let a = guarded(SharexHp::new());
            let b = Arc::new(Guarded {
                lock: SharexHp::new(),
                slots: ReaderSlots::new(0),
                data: UnsafeCell::new(0),
            });
            let reader = {
                let (a, b) = (a.clone(), b.clone());
                thread::spawn(move || {
                    let r = readers(&a, 0, true);
                    if let Some(h) = SharexHp::try_shared_host([&a.lock, &b.lock], r) {
                        access(&a, S);
                        access(&b, S);
                        a.lock.release(h[0]);
                        b.lock.release(h[1]);
                    }
                })
            };
            // A writer on the second lock (scanning the first one's slots,
            // where the reader publishes both).
            let writer = {
                let (a, b) = (a.clone(), b.clone());
                thread::spawn(move || {
                    let r = readers(&a, 1, false);
                    if let Ok(h) = b.lock.acquire(X, Host, r) {
                        access(&b, X);
                        b.lock.release(h);
                    }
                })
            };
            reader.join().unwrap();
            writer.join().unwrap();
            assert!(!a.lock.is_held(&a.slots) && !b.lock.is_held(&a.slots));
        });
    }

    /// An exclusive attempt stops scanning an LP at its first free slot: a
    /// leaf holding two locks in its first two slots (the second one the
    /// writer's) is still found on every interleaving.
    #[test]
    fn loom_scan_stops_at_the_first_free_slot() {
        loom::model(|| {
            let a = guarded(SharexHp::new());
            let b = Arc::new(Guarded {
                lock: Sharex::new(),
                slots: ReaderSlots::new(0),
                data: UnsafeCell::new(0),
            });
            let reader = {
                let (a, b) = (a.clone(), b.clone());
                thread::spawn(move || {
                    let mut held = HeldStack::new(&a.slots, a.slots.of(0));
                    if held.sharex_hp(&a.lock, S, Host).is_ok() && held.sharex(&b.lock, S).is_ok() {
                        access(&b, S);
                    }
                    held.release_all();
                })
            };
            let writer = {
                let (a, b) = (a.clone(), b.clone());
                thread::spawn(move || {
                    let r = readers(&a, 1, false);
                    if let Ok(h) = b.lock.acquire(X, r) {
                        access(&b, X);
                        b.lock.release(h);
                    }
                })
            };
            reader.join().unwrap();
            writer.join().unwrap();
            assert!(!b.lock.is_held(&a.slots));
            assert_eq!(a.slots.in_use(), None);
        });
    }

    #[test]
    fn loom_septe_lock_is_exclusive_and_marks_for_the_host() {
        loom::model(|| {
            let g = Arc::new(Guarded {
                lock: AtomicU64::new(0x1000),
                slots: ReaderSlots::new(0),
                data: UnsafeCell::new(0),
            });
            let threads: Vec<_> = [Host, Host, Guest]
                .into_iter()
                .map(|side| {
                    let g = g.clone();
                    thread::spawn(move || {
                        let r = match side {
                            Host => septe::lock_host(&g.lock),
                            Guest => septe::lock_guest(&g.lock),
                        };
                        if r.is_ok() {
                            access(&g, X);
                            septe::unlock(&g.lock);
                        }
                        r
                    })
                })
                .collect();
            let r: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let w = g.lock.load(Ordering::Relaxed);
            assert_eq!(
                w & !(septe::LOCK | septe::HP),
                0x1000,
                "the entry is intact"
            );
            assert_eq!(w & septe::LOCK, 0, "released");
            // A guest never marks; only a host that failed does.
            if r[0].is_ok() && r[1].is_ok() {
                assert_eq!(w & septe::HP, 0);
            }
            assert!(r[2] != Err(Busy::HostPriority) || r[0].is_err() || r[1].is_err());
        });
    }
}
