//! A concurrent slab whose slots are never deallocated while it lives, so a
//! `&T` it hands out stays valid for the slab's lifetime; freed slots are
//! reused (reset in place). The simulator keeps its TDs and each TD's S-EPT
//! pages in slabs, so a leaf can hold plain references to them (and to the
//! lock words inside them) for its whole duration, and a lookup is a few
//! loads instead of a lock.

use std::sync::{Mutex, OnceLock};

/// Slots in segment 0; segment `k` has `BASE << k`.
const BASE: usize = 8;
const SEGMENTS: usize = 28;

/// One segment: slots, each filled on first use.
type Segment<T> = Box<[OnceLock<Box<T>>]>;

/// See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Slab<T> {
    segments: [OnceLock<Segment<T>>; SEGMENTS],
    /// The next never-used index, and the freed indices.
    alloc: Mutex<(u32, Vec<u32>)>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            segments: [const { OnceLock::new() }; SEGMENTS],
            alloc: Mutex::new((0, Vec::new())),
        }
    }
}

/// Segment and offset of slot `i`.
fn locate(i: u32) -> (usize, usize) {
    let n = i as usize / BASE + 1;
    let k = (usize::BITS - 1 - n.leading_zeros()) as usize;
    (k, i as usize - BASE * ((1 << k) - 1))
}

impl<T> Slab<T> {
    /// The value in slot `i`, if the slot was ever used.
    pub(crate) fn get(&self, i: u32) -> Option<&T> {
        let (k, off) = locate(i);
        self.segments.get(k)?.get()?.get(off)?.get().map(|b| &**b)
    }

    /// A slot for a new value: a freed one, `reset` in place, or a fresh
    /// one made by `make`. Returns its index and the value.
    pub(crate) fn alloc(&self, make: impl FnOnce() -> T, reset: impl FnOnce(&T)) -> (u32, &T) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = a.1.pop() {
            drop(a);
            let v = self.get(i).expect("a freed slot was used");
            reset(v);
            return (i, v);
        }
        let i = a.0;
        a.0 = a.0.checked_add(1).expect("slab full");
        drop(a);
        let (k, off) = locate(i);
        let seg = self.segments[k].get_or_init(|| {
            (0..BASE << k)
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        let v = seg[off].get_or_init(|| Box::new(make()));
        (i, v)
    }

    /// Gives slot `i` back for reuse. Its value stays readable (stale)
    /// until it is reused.
    pub(crate) fn free(&self, i: u32) {
        let mut a = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert!(!a.1.contains(&i), "slot {i} freed twice");
        a.1.push(i);
    }

    /// Every slot ever used, in index order (freed ones included).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &T)> + '_ {
        let n = self.alloc.lock().unwrap_or_else(|e| e.into_inner()).0;
        (0..n).filter_map(|i| self.get(i).map(|v| (i, v)))
    }

    /// The freed slots.
    pub(crate) fn freed(&self) -> Vec<u32> {
        self.alloc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Heap bytes of the slot tables (not of what the values own).
    pub(crate) fn table_bytes(&self) -> usize {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.get().is_some())
            .map(|(k, _)| (BASE << k) * size_of::<OnceLock<Box<T>>>())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_stable_and_reused() {
        let s: Slab<std::sync::atomic::AtomicU32> = Slab::default();
        let mut refs = Vec::new();
        for n in 0..100u32 {
            let (i, v) = s.alloc(|| std::sync::atomic::AtomicU32::new(n), |_| unreachable!());
            assert_eq!(i, n);
            refs.push(v);
        }
        for (n, v) in refs.iter().enumerate() {
            assert_eq!(v.load(std::sync::atomic::Ordering::Relaxed), n as u32);
            assert!(std::ptr::eq(*v, s.get(n as u32).unwrap()));
        }
        s.free(42);
        let (i, v) = s.alloc(
            || unreachable!(),
            |v| v.store(7, std::sync::atomic::Ordering::Relaxed),
        );
        assert_eq!(i, 42);
        assert!(std::ptr::eq(v, refs[42]));
        assert_eq!(s.iter().count(), 100);
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(7), (0, 7));
        assert_eq!(locate(8), (1, 0));
        assert_eq!(locate(23), (1, 15));
        assert_eq!(locate(24), (2, 0));
    }
}
