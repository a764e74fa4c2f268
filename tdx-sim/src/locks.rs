//! The TDX module's locks, with the module's own algorithms
//! (`src/common/helpers/tdx_locks.h` in Intel's module source).
//!
//! Every lock is a word that one atomic instruction tries to change; no
//! acquisition ever waits. A failed attempt makes the leaf undo what it took
//! and return `TDX_OPERAND_BUSY` (or `_BUSY_HOST_PRIORITY`) with the operand
//! of the lock; the dispatcher releases the rest when the leaf ends
//! ([`Held`]). Between a successful acquisition and the leaf's end the word
//! says "held", whatever the simulator's own mutexes do, so a leaf running on
//! another thread meets the lock exactly as on the real module.
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

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

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
// Plain sharex
// ---------------------------------------------------------------------------

/// A shared/exclusive lock without host priority.
#[derive(Debug, Default)]
pub(crate) struct Sharex(AtomicU16);

const SX_EXCLUSIVE: u16 = 1;
const SX_READER: u16 = 2;

impl Sharex {
    /// A free lock.
    pub(crate) fn new() -> Self {
        Self(AtomicU16::new(0))
    }

    /// One attempt: shared adds a reader and fails if the exclusive bit was
    /// set (the add stays); exclusive succeeds only on a free word.
    pub(crate) fn acquire(&self, mode: LockMode) -> Result<(), Busy> {
        match mode {
            LockMode::Shared => {
                let old = self.0.fetch_add(SX_READER, Ordering::Acquire);
                if old & SX_EXCLUSIVE == 0 {
                    Ok(())
                } else {
                    Err(Busy::Busy)
                }
            }
            LockMode::Exclusive => self
                .0
                .compare_exchange(0, SX_EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
                .map(drop)
                .map_err(|_| Busy::Busy),
        }
    }

    /// Releases a hold of `mode`: a reader leaves; the exclusive holder
    /// frees the word (wiping counts of failed shared attempts).
    pub(crate) fn release(&self, mode: LockMode) {
        match mode {
            LockMode::Shared => {
                let old = self.0.fetch_sub(SX_READER, Ordering::Release);
                debug_assert!(old & SX_EXCLUSIVE == 0 && old >= SX_READER, "{old:#x}");
            }
            LockMode::Exclusive => {
                let old = self.0.swap(0, Ordering::Release);
                debug_assert!(old & SX_EXCLUSIVE != 0, "{old:#x}");
            }
        }
    }

    /// True if anyone holds the lock (or a failed shared attempt's count
    /// waits for the exclusive holder's release).
    pub(crate) fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// The raw word (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> u16 {
        self.0.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// Sharex with host priority
// ---------------------------------------------------------------------------

/// A shared/exclusive lock with host priority.
#[derive(Debug, Default)]
pub(crate) struct SharexHp(AtomicU16);

const HP_EXCLUSIVE: u16 = 1;
const HP_FLAG: u16 = 2;
const HP_READER: u16 = 4;

impl SharexHp {
    /// A free lock.
    pub(crate) fn new() -> Self {
        Self(AtomicU16::new(0))
    }

    /// One attempt (`acquire_sharex_lock_hp`).
    pub(crate) fn acquire(&self, mode: LockMode, side: LockSide) -> Result<(), Busy> {
        match (mode, side) {
            (LockMode::Shared, LockSide::Guest) => {
                let old = self.0.fetch_add(HP_READER, Ordering::Acquire);
                if old & HP_FLAG != 0 {
                    self.0.fetch_sub(HP_READER, Ordering::Relaxed);
                    Err(Busy::HostPriority)
                } else if old & HP_EXCLUSIVE != 0 {
                    Err(Busy::Busy)
                } else {
                    Ok(())
                }
            }
            (LockMode::Shared, LockSide::Host) => {
                let old = self.0.fetch_add(HP_READER, Ordering::Acquire);
                if old & HP_EXCLUSIVE != 0 {
                    self.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                    Err(Busy::Busy)
                } else {
                    if old & HP_FLAG != 0 {
                        self.0.fetch_and(!HP_FLAG, Ordering::Relaxed);
                    }
                    Ok(())
                }
            }
            (LockMode::Exclusive, side) => {
                match self
                    .0
                    .compare_exchange(0, HP_EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => Ok(()),
                    Err(HP_FLAG) if side == LockSide::Guest => Err(Busy::HostPriority),
                    Err(HP_FLAG) => self
                        .0
                        .compare_exchange(
                            HP_FLAG,
                            HP_EXCLUSIVE,
                            Ordering::Acquire,
                            Ordering::Relaxed,
                        )
                        .map(drop)
                        .map_err(|_| Busy::Busy),
                    Err(_) if side == LockSide::Guest => Err(Busy::Busy),
                    Err(_) => {
                        self.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                        Err(Busy::Busy)
                    }
                }
            }
        }
    }

    /// Host promotion of the caller's shared hold to exclusive
    /// (`promote_sharex_lock_hp`): succeeds only if the caller is the one
    /// reader (with or without HP, which it clears); else sets HP.
    pub(crate) fn promote(&self) -> Result<(), Busy> {
        match self.0.compare_exchange(
            HP_READER,
            HP_EXCLUSIVE,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(old) if old == HP_READER | HP_FLAG => self
                .0
                .compare_exchange(
                    HP_READER | HP_FLAG,
                    HP_EXCLUSIVE,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .map(drop)
                .map_err(|_| Busy::Busy),
            Err(old) => {
                debug_assert!(old & HP_EXCLUSIVE == 0 && old >= HP_READER, "{old:#x}");
                self.0.fetch_or(HP_FLAG, Ordering::Relaxed);
                Err(Busy::Busy)
            }
        }
    }

    /// Releases a hold of `mode`; HP stays as it is.
    pub(crate) fn release(&self, mode: LockMode) {
        match mode {
            LockMode::Shared => {
                let old = self.0.fetch_sub(HP_READER, Ordering::Release);
                debug_assert!(old & HP_EXCLUSIVE == 0 && old >= HP_READER, "{old:#x}");
            }
            LockMode::Exclusive => {
                let old = self.0.fetch_and(HP_FLAG, Ordering::Release);
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
    pub(crate) fn is_held(&self) -> bool {
        self.0.load(Ordering::Relaxed) & !HP_FLAG != 0
    }

    /// Resets the word (a freshly initialized PAMT entry or TDCS).
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The raw word (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> u16 {
        self.0.load(Ordering::Relaxed)
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
        if e.fetch_or(LOCK, Ordering::Acquire) & LOCK != 0 {
            e.fetch_or(HP, Ordering::Relaxed);
            return Err(Busy::Busy);
        }
        e.fetch_and(!HP, Ordering::Relaxed);
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
        let was = self.0.swap(false, Ordering::Release);
        debug_assert!(was);
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
    Sharex(&'s Sharex, LockMode),
    SharexHp(&'s SharexHp, LockMode),
    Septe(&'s AtomicU64),
    Mutex(&'s Mutex),
}

impl Held<'_> {
    pub(crate) fn release(self) {
        match self {
            Held::Sharex(l, m) => l.release(m),
            Held::SharexHp(l, m) => l.release(m),
            Held::Septe(e) => septe::unlock(e),
            Held::Mutex(m) => m.release(),
        }
    }
}

/// The locks one leaf holds, in acquisition order; released in reverse
/// order when the leaf ends. The first few live inline, so a leaf does not
/// allocate.
#[derive(Debug)]
pub(crate) struct HeldStack<'s> {
    inline: [Option<Held<'s>>; INLINE],
    len: usize,
    spill: Vec<Held<'s>>,
}

const INLINE: usize = 14;

impl<'s> HeldStack<'s> {
    pub(crate) fn new() -> Self {
        Self {
            inline: [None; INLINE],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, h: Held<'s>) {
        if self.len < INLINE {
            self.inline[self.len] = Some(h);
            self.len += 1;
        } else {
            self.spill.push(h);
        }
    }

    /// Turns the newest record, a shared hold of a [`SharexHp`] that was
    /// just promoted, into an exclusive one.
    pub(crate) fn upgrade_last(&mut self) {
        let last = match self.spill.last_mut() {
            Some(h) => h,
            None => self.inline[self.len - 1]
                .as_mut()
                .expect("a lock was pushed"),
        };
        match last {
            Held::SharexHp(_, m) => *m = LockMode::Exclusive,
            other => unreachable!("promoted {other:?}"),
        }
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
            if slot.as_ref().is_some_and(is) {
                *slot = None;
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
                self.inline[self.len] = None;
            }
            n -= 1;
        }
    }

    /// Number of records (for [`HeldStack::release_to`]).
    pub(crate) fn mark(&self) -> usize {
        self.len + self.spill.len()
    }

    /// Releases the locks taken since `mark`, newest first.
    pub(crate) fn release_to(&mut self, mark: usize) {
        while self.mark() > mark {
            match self.spill.pop() {
                Some(h) => h.release(),
                None => {
                    self.len -= 1;
                    if let Some(h) = self.inline[self.len].take() {
                        h.release();
                    }
                }
            }
        }
    }

    /// Releases everything, newest first.
    pub(crate) fn release_all(&mut self) {
        while let Some(h) = self.spill.pop() {
            h.release();
        }
        while self.len > 0 {
            self.len -= 1;
            if let Some(h) = self.inline[self.len].take() {
                h.release();
            }
        }
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

    #[test]
    fn sharex_follows_the_module() {
        let l = Sharex::new();
        l.acquire(S).unwrap();
        l.acquire(S).unwrap();
        assert_eq!(l.acquire(X), Err(Busy::Busy));
        l.release(S);
        l.release(S);
        l.acquire(X).unwrap();
        // A failed shared attempt leaves its count; the release wipes it.
        assert_eq!(l.acquire(S), Err(Busy::Busy));
        assert_eq!(l.raw(), SX_EXCLUSIVE | SX_READER);
        l.release(X);
        assert_eq!(l.raw(), 0);
    }

    #[test]
    fn host_priority_rules() {
        let l = SharexHp::new();
        l.acquire(X, Host).unwrap();
        // A host meeting the exclusive holder sets HP (its count stays).
        assert_eq!(l.acquire(S, Host), Err(Busy::Busy));
        assert!(l.host_priority());
        // HP is set now: a guest backs off with BUSY_HOST_PRIORITY (and
        // takes its count back).
        assert_eq!(l.acquire(S, Guest), Err(Busy::HostPriority));
        assert_eq!(l.raw(), HP_EXCLUSIVE | HP_FLAG | HP_READER);
        l.release(X);
        // The release keeps HP only.
        assert_eq!(l.raw(), HP_FLAG);
        assert_eq!(l.acquire(S, Guest), Err(Busy::HostPriority));
        assert_eq!(l.acquire(X, Guest), Err(Busy::HostPriority));
        assert_eq!(l.raw(), HP_FLAG);
        // A successful host acquisition clears HP.
        l.acquire(S, Host).unwrap();
        assert!(!l.host_priority());
        l.acquire(S, Guest).unwrap();
        l.release(S);
        // Host exclusive over readers: BUSY and HP.
        assert_eq!(l.acquire(X, Host), Err(Busy::Busy));
        assert!(l.host_priority());
        l.release(S);
        // Host exclusive over HP alone: taken, HP cleared.
        l.acquire(X, Host).unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        l.release(X);
    }

    #[test]
    fn promotion() {
        let l = SharexHp::new();
        l.acquire(S, Host).unwrap();
        l.promote().unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
        l.release(X);
        l.acquire(S, Host).unwrap();
        l.acquire(S, Host).unwrap();
        assert_eq!(l.promote(), Err(Busy::Busy));
        assert!(l.host_priority());
        l.release(S);
        // One reader with HP: promoted, HP cleared.
        l.promote().unwrap();
        assert_eq!(l.raw(), HP_EXCLUSIVE);
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
/// threads, with loom checking that what a lock admits never races.
/// Run: `RUSTFLAGS="--cfg loom" cargo test -p tdx-sim --lib --release loom`.
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
        data: UnsafeCell<u64>,
    }

    // SAFETY: `data` is touched only while `lock` admits it (that is what
    // the tests check, with loom's race detector).
    unsafe impl<L: Sync> Sync for Guarded<L> {}

    fn read<L>(g: &Guarded<L>) {
        g.data.with(|p| {
            // SAFETY: a shared hold of `g.lock` (checked by loom).
            let _ = unsafe { *p };
        });
    }

    fn write<L>(g: &Guarded<L>) {
        g.data.with_mut(|p| {
            // SAFETY: the exclusive hold of `g.lock` (checked by loom).
            unsafe { *p += 1 };
        });
    }

    #[test]
    fn loom_sharex_admits_readers_or_one_writer() {
        loom::model(|| {
            let g = Arc::new(Guarded {
                lock: Sharex::new(),
                data: UnsafeCell::new(0),
            });
            let threads: Vec<_> = [S, X, X]
                .into_iter()
                .map(|mode| {
                    let g = g.clone();
                    thread::spawn(move || {
                        if g.lock.acquire(mode).is_ok() {
                            match mode {
                                S => read(&g),
                                X => write(&g),
                            }
                            g.lock.release(mode);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            // Failed shared attempts' counts are wiped by the releases.
            assert_eq!(g.lock.raw() & !SX_EXCLUSIVE, g.lock.raw());
        });
    }

    /// Runs one host-priority lock through `sides` at once and returns the
    /// word left when all have released, with who got the lock.
    fn hp_round(sides: &[(LockMode, LockSide)]) -> (u16, Vec<bool>) {
        let g = Arc::new(Guarded {
            lock: SharexHp::new(),
            data: UnsafeCell::new(0),
        });
        let threads: Vec<_> = sides
            .iter()
            .map(|&(mode, side)| {
                let g = g.clone();
                thread::spawn(move || {
                    if g.lock.acquire(mode, side).is_ok() {
                        match mode {
                            S => read(&g),
                            X => write(&g),
                        }
                        g.lock.release(mode);
                        true
                    } else {
                        false
                    }
                })
            })
            .collect();
        let ok = threads.into_iter().map(|t| t.join().unwrap()).collect();
        (g.lock.raw(), ok)
    }

    #[test]
    fn loom_sharex_hp_admits_readers_or_one_writer() {
        loom::model(|| {
            let (w, ok) = hp_round(&[(S, Host), (X, Host), (S, Host)]);
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
            let (w, ok) = hp_round(&[(S, Guest), (X, Host), (S, Host)]);
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
            let g = Arc::new(Guarded {
                lock: SharexHp::new(),
                data: UnsafeCell::new(0),
            });
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let g = g.clone();
                    thread::spawn(move || {
                        if g.lock.acquire(S, Host).is_err() {
                            return;
                        }
                        read(&g);
                        if g.lock.promote().is_ok() {
                            write(&g);
                            g.lock.release(X);
                        } else {
                            g.lock.release(S);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let w = g.lock.raw();
            assert!(w == 0 || w == HP_FLAG, "{w:#x}");
        });
    }

    #[test]
    fn loom_septe_lock_is_exclusive_and_marks_for_the_host() {
        loom::model(|| {
            let g = Arc::new(Guarded {
                lock: AtomicU64::new(0x1000),
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
                            write(&g);
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
            // A guest never marks; a host that failed does.
            if r[0].is_ok() && r[1].is_ok() {
                assert_eq!(w & septe::HP, 0);
            }
            assert!(r[2] != Err(Busy::HostPriority) || r[0].is_err() || r[1].is_err());
        });
    }
}
