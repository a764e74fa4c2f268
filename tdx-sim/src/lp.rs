//! Which logical processor the calling thread runs on.
//!
//! A CPU is a property of the thread that issues a SEAMCALL, not of the
//! simulator: [`Cpus::on_cpu`](tdx_api::Cpus::on_cpu) selects an LP
//! for the calling thread for the length of its closure, and
//! [`Simulator::set_lp`](crate::Simulator::set_lp) selects one for the
//! calling thread until changed. Both act on a thread-local stack of
//! selections keyed by the simulator's id, so nested `on_cpu` calls, several
//! simulators in one thread, and many threads on one simulator each see
//! their own LP.
//!
//! The thread that builds a simulator starts on LP 0 (as if it had called
//! `set_lp(0)`). Any other thread that issues a SEAMCALL without having
//! selected an LP is placed on one the way a scheduler would place it: the
//! LPs in turn, one per new thread, kept for that thread (as if it had
//! called `set_lp`). A VMM's vCPU threads map memory from whatever CPU they
//! run on; leaves that must run on a given CPU go through `on_cpu`.

use std::{
    cell::RefCell,
    sync::atomic::{AtomicU64, Ordering},
};

/// One selection on a thread's stack.
#[derive(Debug, Clone, Copy)]
struct Selection {
    /// The simulator it applies to.
    sim: u64,
    lp: u32,
    /// Pushed by an `on_cpu` (popped when the closure ends) rather than by
    /// `set_lp` (kept).
    scoped: bool,
}

thread_local! {
    static SELECTIONS: RefCell<Vec<Selection>> = const { RefCell::new(Vec::new()) };
}

/// A fresh simulator id (never reused in a process).
pub(crate) fn new_sim_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The LP the calling thread selected for simulator `sim`, if any.
pub(crate) fn current(sim: u64) -> Option<u32> {
    SELECTIONS.with(|s| {
        s.borrow()
            .iter()
            .rev()
            .find(|sel| sel.sim == sim)
            .map(|sel| sel.lp)
    })
}

/// The LP the calling thread selected for `sim`, or, if it selected none,
/// the next of `lps` LPs in turn, which becomes its lasting selection.
pub(crate) fn current_or_place(sim: u64, lps: impl FnOnce() -> u32) -> u32 {
    if let Some(lp) = current(sim) {
        return lp;
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let lp = (NEXT.fetch_add(1, Ordering::Relaxed) % u64::from(lps().max(1))) as u32;
    set(sim, lp);
    lp
}

/// Selects `lp` for the calling thread: the innermost `on_cpu` scope of
/// `sim` if the thread is inside one (the scope's end restores what was
/// selected before it), else the thread's lasting selection.
pub(crate) fn set(sim: u64, lp: u32) {
    SELECTIONS.with(|s| {
        let mut s = s.borrow_mut();
        match s.iter_mut().rev().find(|sel| sel.sim == sim) {
            Some(sel) => sel.lp = lp,
            None => s.push(Selection {
                sim,
                lp,
                scoped: false,
            }),
        }
    });
}

/// Runs `f` with `lp` selected for `sim` on the calling thread; the
/// previous selection comes back when `f` returns or unwinds.
pub(crate) fn scoped<T>(sim: u64, lp: u32, f: impl FnOnce() -> T) -> T {
    struct Pop {
        sim: u64,
        depth: usize,
    }
    impl Drop for Pop {
        fn drop(&mut self) {
            SELECTIONS.with(|s| {
                let mut s = s.borrow_mut();
                debug_assert!(s.len() > self.depth, "on_cpu scopes nest");
                let top = s.remove(self.depth);
                debug_assert!(top.sim == self.sim && top.scoped);
            });
        }
    }
    let depth = SELECTIONS.with(|s| {
        let mut s = s.borrow_mut();
        s.push(Selection {
            sim,
            lp,
            scoped: true,
        });
        s.len() - 1
    });
    let _pop = Pop { sim, depth };
    f()
}
