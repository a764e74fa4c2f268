//! A sparse map from `u64` to small values, stored in chunks of 512
//! consecutive keys (one page table's worth).
//!
//! The simulator's PAMT and S-EPT are indexed by frame or GPA number and are
//! touched in runs: a VMM maps a 2M region page by page, a teardown walks a
//! TD's frames in order. A hash map of single entries scatters neighbours
//! over the whole table, so every access is a cache miss once it holds a
//! million entries; here neighbours share a chunk, and the chunk index is
//! small enough to stay in cache. Empty chunks are dropped, so a map that
//! holds nothing costs nothing (a 4 TiB host with no TDs keeps its PAMT in
//! a few entries).

use rustc_hash::FxHashMap;

const BITS: u32 = 9;
const SPAN: usize = 1 << BITS;
const MASK: u64 = (1 << BITS) - 1;

struct Chunk<V> {
    used: u16,
    slots: Box<[Option<V>; SPAN]>,
}

/// A sparse `u64 → V` map in chunks of 512 keys.
pub(crate) struct ChunkedMap<V> {
    chunks: FxHashMap<u64, Chunk<V>>,
}

impl<V> Default for ChunkedMap<V> {
    fn default() -> Self {
        Self {
            chunks: FxHashMap::default(),
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for ChunkedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> ChunkedMap<V> {
    /// Number of keys with a value.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.values().map(|c| usize::from(c.used)).sum()
    }

    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        self.chunks.get(&(key >> BITS))?.slots[(key & MASK) as usize].as_ref()
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.chunks.get_mut(&(key >> BITS))?.slots[(key & MASK) as usize].as_mut()
    }

    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `v`; returns the old value.
    pub(crate) fn insert(&mut self, key: u64, v: V) -> Option<V> {
        let chunk = self.chunks.entry(key >> BITS).or_insert_with(|| Chunk {
            used: 0,
            slots: Box::new([const { None }; SPAN]),
        });
        let old = chunk.slots[(key & MASK) as usize].replace(v);
        if old.is_none() {
            chunk.used += 1;
        }
        old
    }

    /// Removes `key`; returns its value.
    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        let hi = key >> BITS;
        let chunk = self.chunks.get_mut(&hi)?;
        let old = chunk.slots[(key & MASK) as usize].take();
        if old.is_some() {
            chunk.used -= 1;
            if chunk.used == 0 {
                self.chunks.remove(&hi);
            }
        }
        old
    }

    /// True if some key in `[start, end)` has a value for which `pred`
    /// holds. Costs one probe per 512 keys of the range, or one visit per
    /// chunk held, whichever is fewer.
    pub(crate) fn any_in(&self, start: u64, end: u64, mut pred: impl FnMut(&V) -> bool) -> bool {
        if start >= end {
            return false;
        }
        let (lo, hi) = (start >> BITS, (end - 1) >> BITS);
        let mut check = |h: u64, c: &Chunk<V>| {
            let base = h << BITS;
            let from = start.max(base) - base;
            let to = (end - 1).min(base + MASK) - base;
            c.slots[from as usize..=to as usize]
                .iter()
                .flatten()
                .any(&mut pred)
        };
        if hi - lo < self.chunks.len() as u64 {
            (lo..=hi).any(|h| self.chunks.get(&h).is_some_and(|c| check(h, c)))
        } else {
            self.chunks
                .iter()
                .any(|(&h, c)| (lo..=hi).contains(&h) && check(h, c))
        }
    }

    /// Heap bytes held: the chunk index (at its capacity) and the chunks.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * (size_of::<(u64, Chunk<V>)>() + 1)
            + self.chunks.len() * size_of::<[Option<V>; SPAN]>()
    }

    /// Every key and value, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.chunks.iter().flat_map(|(&h, c)| {
            c.slots
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| v.as_ref().map(|v| ((h << BITS) | i as u64, v)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every operation agrees with a `BTreeMap` doing the same.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..4, 0u64..3000, any::<u16>()), 1..400)) {
            let mut m = ChunkedMap::default();
            let mut model = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 | 1 => prop_assert_eq!(m.insert(k, v), model.insert(k, v)),
                    2 => prop_assert_eq!(m.remove(k), model.remove(&k)),
                    _ => {
                        let end = k + u64::from(v % 1500);
                        let want = model.range(k..end).any(|(_, &x)| x % 2 == 0);
                        prop_assert_eq!(m.any_in(k, end, |&x| x % 2 == 0), want);
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                prop_assert_eq!(m.get(k), model.get(&k));
            }
            let mut all: Vec<(u64, u16)> = m.iter().map(|(k, &v)| (k, v)).collect();
            all.sort_unstable();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
            // Empty chunks are dropped.
            prop_assert!(m.chunks.values().all(|c| c.used > 0));
        }
    }
}
