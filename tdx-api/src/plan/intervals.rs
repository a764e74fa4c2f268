//! Half-open `[start, end)` interval sets: sorted, disjoint, non-touching
//! vectors of `(u64, u64)`.

use alloc::vec::Vec;

/// Sorts and merges overlapping or touching intervals; drops empty ones.
pub(crate) fn normalize(v: &mut Vec<(u64, u64)>) {
    v.retain(|&(s, e)| s < e);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for &(s, e) in v.iter() {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    *v = out;
}

/// `a` minus `b` (both normalized); the result is normalized.
pub(crate) fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len().min(a.len() * 4));
    // Skip the part of `b` before `a` in one search (a short `a` against a
    // long `b` costs O(log |b| + overlap), not O(|b|)).
    let mut j = a
        .first()
        .map_or(0, |&(s, _)| b.partition_point(|&(_, e)| e <= s));
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// True if the normalized set `set` intersects `[s, e)`.
pub(crate) fn intersects(set: &[(u64, u64)], s: u64, e: u64) -> bool {
    if s >= e {
        return false;
    }
    // First interval ending after s.
    let i = set.partition_point(|&(_, ie)| ie <= s);
    set.get(i).is_some_and(|&(is, _)| is < e)
}

/// True if `[s, e)` lies inside one interval of the normalized set.
pub(crate) fn contains(set: &[(u64, u64)], s: u64, e: u64) -> bool {
    let i = set.partition_point(|&(_, ie)| ie <= s);
    set.get(i).is_some_and(|&(is, ie)| is <= s && e <= ie)
}

/// The module's merged CMRs (`is_area_in_cmr`): a CMR that starts exactly
/// where the previous non-empty one ended extends the same chain. An area
/// is inside the CMRs if it lies inside one chain. The list is one a module
/// accepts (sorted by start, disjoint: checked by `Normalized::new`), so
/// the chains are sorted and disjoint too.
#[derive(Debug, Clone)]
pub(crate) struct Chains {
    /// Chains as `[first start, last end)`, sorted by start.
    pub(crate) list: Vec<(u64, u64)>,
}

impl Chains {
    /// Chains of `cmrs`, sorted and disjoint; empty entries are skipped.
    pub(crate) fn new(cmrs: &[(u64, u64)]) -> Self {
        let mut list: Vec<(u64, u64)> = Vec::new();
        for &(s, e) in cmrs.iter().filter(|&&(s, e)| s < e) {
            match list.last_mut() {
                Some(c) if c.1 == s => c.1 = e,
                _ => list.push((s, e)),
            }
        }
        Self { list }
    }

    /// True if `[s, e)` lies inside one chain.
    pub(crate) fn within_one(&self, s: u64, e: u64) -> bool {
        contains(&self.list, s, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn set_operations() {
        let mut v = vec![(5, 10), (0, 3), (3, 4), (9, 12), (20, 20)];
        normalize(&mut v);
        assert_eq!(v, [(0, 4), (5, 12)]);
        assert_eq!(subtract(&v, &[(2, 6), (8, 9)]), [(0, 2), (6, 8), (9, 12)]);
        assert_eq!(subtract(&v, &[]), v);
        assert!(intersects(&v, 3, 5));
        assert!(!intersects(&v, 4, 5));
        assert!(contains(&v, 6, 12));
        assert!(!contains(&v, 3, 6));
    }

    #[test]
    fn touching_cmrs_chain() {
        // Back to back, with an empty slot between: one chain.
        assert_eq!(
            Chains::new(&[(0, 10), (10, 20), (0, 0), (20, 30)]).list,
            [(0, 30)]
        );
        let c = Chains::new(&[(0, 10), (10, 20), (40, 50)]);
        assert_eq!(c.list, [(0, 20), (40, 50)]);
        assert!(c.within_one(5, 15));
        assert!(!c.within_one(15, 45));
        assert!(!c.within_one(20, 30));
    }
}
