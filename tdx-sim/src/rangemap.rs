//! A map from disjoint half-open ranges of `u64` to values, with adjacent
//! ranges of equal value merged. The simulator keeps page ownership and
//! cache state in these, so a 4 TiB host costs a handful of entries, not
//! a billion.

use std::collections::BTreeMap;

/// Disjoint `[start, end)` ranges with a value each; adjacent ranges with
/// equal values are merged, so the map is canonical.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RangeMap<V> {
    /// start -> (end, value)
    map: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy + Eq> RangeMap<V> {
    pub(crate) fn new() -> Self {
        Self {
            map: BTreeMap::new(),
        }
    }

    /// The value at `key`.
    pub(crate) fn get(&self, key: u64) -> Option<V> {
        let (_, &(end, v)) = self.map.range(..=key).next_back()?;
        (key < end).then_some(v)
    }

    /// Removes `[start, end)` from the map (splitting ranges at the edges).
    pub(crate) fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // Nothing to do if the last range starting before `end` ends by
        // `start` (one lookup: the common case of a page not in the map).
        // And one range holding all of [start, end) is cut directly.
        match self.map.range(..end).next_back() {
            None => return,
            Some((&s, &(e, _))) if s < start && e <= start => return,
            Some((&s, &(e, v))) if s <= start && e >= end => {
                if s < start {
                    self.map.get_mut(&s).expect("just found").0 = start;
                } else {
                    self.map.remove(&s);
                }
                if e > end {
                    self.map.insert(end, (e, v));
                }
                return;
            }
            _ => {}
        }
        // A range starting before `start` that reaches into it.
        if let Some((&s, &(e, v))) = self.map.range(..start).next_back()
            && e > start
        {
            self.map.insert(s, (start, v));
            if e > end {
                self.map.insert(end, (e, v));
                return;
            }
        }
        // Ranges starting inside [start, end).
        while let Some((&s, &(e, v))) = self.map.range(start..end).next() {
            self.map.remove(&s);
            if e > end {
                self.map.insert(end, (e, v));
            }
        }
    }

    /// Sets `[start, end)` to `v`, replacing whatever was there.
    pub(crate) fn insert(&mut self, start: u64, end: u64, v: V) {
        if start >= end {
            return;
        }
        // One lookup decides most of it: the last range starting at or
        // before `end`, and, if that one starts right at `end` (a right
        // neighbour), the last range starting before `end`. If the latter
        // starts before `start`, nothing starts inside.
        let mut it = self.map.range_mut(..=end);
        let mut last = it.next_back();
        let right = match last {
            Some((&k, &mut (re, rv))) if k == end => {
                last = it.next_back();
                Some((re, rv))
            }
            _ => None,
        };
        let Some((&ls, lref)) = last else {
            self.put_beside(start, end, v, None, right);
            return;
        };
        let (le, lv) = *lref;
        if ls < start {
            if lv == v && le >= start {
                // An equal range reaching `start` (a host writing or the
                // module initializing memory in address order): it grows
                // to `end`, and takes in an equal right neighbour.
                if le >= end {
                    return; // already so
                }
                match right {
                    Some((re, rv)) if rv == v => {
                        lref.0 = re;
                        self.map.remove(&end);
                    }
                    _ => lref.0 = end,
                }
                return;
            }
            if le > end {
                // Inside a range of another value: split it in three.
                lref.0 = start;
                self.map.insert(start, (end, v));
                self.map.insert(end, (le, lv));
                return;
            }
            if le > start {
                lref.0 = start;
            }
            self.put_beside(start, end, v, None, right);
            return;
        }
        // Ranges start inside [start, end); the last of them is (ls, le).
        let left = match self.map.range(..start).next_back() {
            Some((&ps, &(pe, pv))) if pe >= start => {
                if pv == v {
                    Some(ps)
                } else {
                    if pe > start {
                        self.map.get_mut(&ps).expect("just found").0 = start;
                    }
                    None
                }
            }
            _ => None,
        };
        if ls == start {
            self.map.remove(&ls);
        } else {
            let inside: Vec<u64> = self.map.range(start..end).map(|(&k, _)| k).collect();
            for k in inside {
                self.map.remove(&k);
            }
        }
        if le > end {
            // The rest of the last range, past `end`.
            if lv == v {
                self.set_end(start, le, v, left);
            } else {
                self.map.insert(end, (le, lv));
                self.set_end(start, end, v, left);
            }
        } else {
            self.put(start, end, v, left);
        }
    }

    /// Writes `[start, end)` = `v` where no range overlaps it, merging with
    /// an equal range starting at `end` and with `left` (the start of an
    /// equal range ending at `start`), if any.
    fn put(&mut self, start: u64, end: u64, v: V, left: Option<u64>) {
        let right = self.map.get(&end).copied();
        self.put_beside(start, end, v, left, right);
    }

    /// [`RangeMap::put`] where the caller looked up the range starting at
    /// `end` (`right`: its end and value).
    fn put_beside(
        &mut self,
        start: u64,
        end: u64,
        v: V,
        left: Option<u64>,
        right: Option<(u64, V)>,
    ) {
        let mut e = end;
        if let Some((re, rv)) = right
            && rv == v
        {
            self.map.remove(&end);
            e = re;
        }
        self.set_end(start, e, v, left);
    }

    /// Writes `[start, end)` = `v`, as part of the range starting at `left`
    /// if there is one.
    fn set_end(&mut self, start: u64, end: u64, v: V, left: Option<u64>) {
        match left {
            Some(ls) => self.map.get_mut(&ls).expect("the left neighbour").0 = end,
            None => {
                self.map.insert(start, (end, v));
            }
        }
    }

    /// Every range that intersects `[start, end)`, clipped to it.
    pub(crate) fn overlapping(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(_, (e, _))| *e > start)
            .map(|(&s, &(e, v))| (s, e, v));
        first
            .into_iter()
            .chain(self.map.range(start..end).map(|(&s, &(e, v))| (s, e, v)))
            .filter(move |_| start < end)
            .map(move |(s, e, v)| (s.max(start), e.min(end), v))
    }

    /// Replaces the value of every key of `[start, end)` that has one by
    /// `f(value)`, removing the key where `f` gives `None`; keys without a
    /// value stay without.
    pub(crate) fn update(&mut self, start: u64, end: u64, f: impl Fn(V) -> Option<V>) {
        let set = |m: &mut Self, s, e, v: Option<V>| match v {
            Some(v) => m.insert(s, e, v),
            None => m.remove(s, e),
        };
        // The common case, one range holding all of [start, end), needs no
        // list of the parts.
        if start >= end {
            return;
        }
        if let Some((&s, &(e, v))) = self.map.range(..=start).next_back()
            && s <= start
            && e >= end
        {
            set(self, start, end, f(v));
            return;
        }
        let parts: Vec<(u64, u64, V)> = self.overlapping(start, end).collect();
        for (s, e, v) in parts {
            set(self, s, e, f(v));
        }
    }

    /// True if every key of `[start, end)` is in the map with a value for
    /// which `pred` holds.
    pub(crate) fn all_in(&self, start: u64, end: u64, pred: impl Fn(V) -> bool) -> bool {
        let mut next = start;
        for (s, e, v) in self.overlapping(start, end) {
            if s != next || !pred(v) {
                return false;
            }
            next = e;
        }
        next >= end
    }

    /// Every range, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        self.map.iter().map(|(&s, &(e, v))| (s, e, v))
    }

    /// Number of ranges.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merge_and_split() {
        let mut m = RangeMap::new();
        m.insert(0, 10, 'a');
        m.insert(10, 20, 'a');
        assert_eq!(m.len(), 1);
        m.insert(5, 7, 'b');
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(0, 5, 'a'), (5, 7, 'b'), (7, 20, 'a')]
        );
        m.insert(5, 7, 'a');
        assert_eq!(m.len(), 1);
        m.remove(3, 4);
        assert_eq!(m.get(3), None);
        assert_eq!(m.get(4), Some('a'));
        assert!(m.all_in(4, 20, |v| v == 'a'));
        assert!(!m.all_in(2, 20, |v| v == 'a'));
        assert_eq!(
            m.overlapping(2, 6).collect::<Vec<_>>(),
            [(2, 3, 'a'), (4, 6, 'a')]
        );
    }

    proptest! {

        #![proptest_config(proptest::test_runner::Config {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..Default::default()
        })]
        /// The map agrees with a plain array under random inserts/removes.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u64..64, 0u64..64, 0u8..4, 0u8..3), 1..60)) {
            let mut m = RangeMap::new();
            let mut model = [None::<u8>; 64];
            for (a, b, v, kind) in ops {
                let (s, e) = (a.min(b), a.max(b));
                // Insert, remove, or update: values equal to `v` go, others
                // become `v + 1`.
                let f = |x: u8| (x != v).then_some(v + 1);
                match kind {
                    0 => m.insert(s, e, v),
                    1 => m.remove(s, e),
                    _ => m.update(s, e, f),
                }
                for k in s..e {
                    let slot = &mut model[k as usize];
                    *slot = match kind {
                        0 => Some(v),
                        1 => None,
                        _ => slot.and_then(f),
                    };
                }
                for k in 0..64 { prop_assert_eq!(m.get(k), model[k as usize]); }
                // Canonical: no two adjacent ranges with the same value.
                let r: Vec<_> = m.iter().collect();
                for w in r.windows(2) {
                    prop_assert!(w[0].1 <= w[1].0);
                    prop_assert!(!(w[0].1 == w[1].0 && w[0].2 == w[1].2));
                }
            }
        }
    }
}
