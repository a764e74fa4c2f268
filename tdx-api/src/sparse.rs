//! [`PageMap`]: a sparse map from page numbers to small values, stored in
//! chunks of 512 consecutive keys (one page table's worth).
//!
//! Page numbers (frame numbers, or GPAs shifted by a page size) are touched
//! in runs: a VMM maps a 2M region page by page, a teardown walks a TD's
//! frames in order. A hash map of single entries scatters neighbours over
//! the whole table, so every access is a cache miss once it holds a million
//! entries, and a `BTreeMap` walks a dozen nodes; here neighbours share a
//! chunk, and the chunk index is small enough to stay in cache. Empty
//! chunks are dropped, so a map costs what it holds (each chunk in use
//! costs 512 slots). The TD keeps its private pages in one per page size;
//! `tdx-sim` keeps its PAMT and S-EPT in them.

use alloc::{boxed::Box, vec::Vec};
use core::fmt;

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;

const BITS: u32 = 9;
const SPAN: usize = 1 << BITS;
const MASK: u64 = (1 << BITS) - 1;

struct Chunk<V> {
    used: u16,
    slots: Box<[Option<V>; SPAN]>,
}

/// A sparse `u64 → V` map for page numbers, in chunks of 512 keys; see
/// the [module documentation](self).
///
/// Iteration is in key order.
pub struct PageMap<V> {
    chunks: HashMap<u64, Chunk<V>, FxBuildHasher>,
    len: usize,
}

impl<V> Default for PageMap<V> {
    fn default() -> Self {
        Self {
            chunks: HashMap::default(),
            len: 0,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for PageMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> PageMap<V> {
    /// An empty map.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with a value.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no key has a value.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: u64) -> Option<&V> {
        self.chunks.get(&(key >> BITS))?.slots[(key & MASK) as usize].as_ref()
    }

    /// The value of `key`, to change in place.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        self.chunks.get_mut(&(key >> BITS))?.slots[(key & MASK) as usize].as_mut()
    }

    /// True if `key` has a value.
    #[must_use]
    pub fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `v`; returns the old value.
    pub fn insert(&mut self, key: u64, v: V) -> Option<V> {
        let chunk = self.chunks.entry(key >> BITS).or_insert_with(|| Chunk {
            used: 0,
            slots: Box::new([const { None }; SPAN]),
        });
        let old = chunk.slots[(key & MASK) as usize].replace(v);
        if old.is_none() {
            chunk.used += 1;
            self.len += 1;
        }
        old
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let hi = key >> BITS;
        let chunk = self.chunks.get_mut(&hi)?;
        let old = chunk.slots[(key & MASK) as usize].take();
        if old.is_some() {
            chunk.used -= 1;
            self.len -= 1;
            if chunk.used == 0 {
                self.chunks.remove(&hi);
            }
        }
        old
    }

    /// True if some key in `[start, end)` has a value for which `pred`
    /// holds. Costs one probe per 512 keys of the range, or one visit per
    /// chunk held, whichever is fewer.
    pub fn any_in(&self, start: u64, end: u64, mut pred: impl FnMut(&V) -> bool) -> bool {
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

    /// Heap bytes held: the chunk index's table and the chunks.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.chunks.allocation_size() + self.chunks.len() * size_of::<[Option<V>; SPAN]>()
    }

    /// Chunk numbers in order.
    fn chunk_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self.chunks.keys().copied().collect();
        keys.sort_unstable();
        keys
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        self.chunk_keys().into_iter().flat_map(move |h| {
            self.chunks[&h]
                .slots
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| v.as_ref().map(|v| ((h << BITS) | i as u64, v)))
        })
    }

    /// Every value, in key order, leaving the map empty.
    pub fn drain_values(&mut self) -> impl Iterator<Item = V> + '_ {
        self.len = 0;
        let keys = self.chunk_keys();
        let mut chunks = core::mem::take(&mut self.chunks);
        keys.into_iter().flat_map(move |h| {
            let c = chunks.remove(&h).expect("key listed");
            c.slots.into_iter().flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::{collections::BTreeMap, vec::Vec};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Every operation agrees with a `BTreeMap` doing the same.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..4, 0u64..3000, any::<u16>()), 1..400)) {
            let mut m = PageMap::default();
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
            let all: Vec<(u64, u16)> = m.iter().map(|(k, &v)| (k, v)).collect();
            prop_assert_eq!(&all, &model.clone().into_iter().collect::<Vec<_>>());
            // Empty chunks are dropped.
            prop_assert!(m.chunks.values().all(|c| c.used > 0));
            let values: Vec<u16> = m.drain_values().collect();
            prop_assert_eq!(values, model.into_values().collect::<Vec<_>>());
            prop_assert!(m.is_empty() && m.chunks.is_empty());
        }
    }
}
