//! The guest KeyID (HKID) allocator.

use alloc::vec::Vec;
use core::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// Allocates HKIDs from the guest KeyID range `[start, end)` of the KeyID
/// partition. Lock-free: a bitmap of atomic words.
pub struct HkidPool {
    start: u32,
    end: u32,
    used: Vec<AtomicU64>,
}

impl fmt::Debug for HkidPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HkidPool({}..{}, {} in use)",
            self.start,
            self.end,
            self.in_use()
        )
    }
}

/// An HKID taken from a pool. Unique; a TD holds it until KEY.FREEID
/// succeeded, and only then returns it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Hkid(u16);

impl Hkid {
    /// The KeyID.
    pub fn get(&self) -> u16 {
        self.0
    }
}

impl HkidPool {
    /// A pool of the KeyIDs `[start, end)` (capped at 65535).
    ///
    /// # Panics
    ///
    /// If the global allocator has no room for its bitmap (at most 1 KiB);
    /// [`TdHost::new`](super::TdHost::new) makes its pool without panicking.
    pub fn new(start: u32, end: u32) -> Self {
        Self::try_new(start, end).expect("no memory for the HKID bitmap")
    }

    /// [`new`](Self::new), or `None` if the global allocator has no room
    /// for the bitmap.
    pub(crate) fn try_new(start: u32, end: u32) -> Option<Self> {
        let end = end.min(u32::from(u16::MAX) + 1).max(start);
        let words = (end - start).div_ceil(64) as usize;
        let mut used = Vec::new();
        used.try_reserve_exact(words).ok()?;
        used.extend((0..words).map(|_| AtomicU64::new(0)));
        Some(Self { start, end, used })
    }

    /// The number of HKIDs in use.
    pub fn in_use(&self) -> u32 {
        self.used
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones())
            .sum()
    }

    /// The number of HKIDs in the pool.
    pub fn capacity(&self) -> u32 {
        self.end - self.start
    }

    /// Takes the lowest free HKID.
    pub(crate) fn alloc(&self) -> Option<Hkid> {
        for (i, w) in self.used.iter().enumerate() {
            let mut cur = w.load(Ordering::Relaxed);
            loop {
                let bit = (!cur).trailing_zeros();
                let id = self.start + (i as u32) * 64 + bit;
                if bit == 64 || id >= self.end {
                    break;
                }
                match w.compare_exchange_weak(
                    cur,
                    cur | 1 << bit,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Hkid(id as u16)),
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    /// Returns an HKID (after TDH.MNG.KEY.FREEID, or when TDH.MNG.CREATE
    /// never took it).
    pub(crate) fn free(&self, hkid: Hkid) {
        let i = u32::from(hkid.0) - self.start;
        self.used[(i / 64) as usize].fetch_and(!(1 << (i % 64)), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_exhaust() {
        let p = HkidPool::new(5, 70);
        let ids: Vec<Hkid> = (0..65).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(ids[0].get(), 5);
        assert_eq!(ids[64].get(), 69);
        assert!(p.alloc().is_none());
        assert_eq!(p.in_use(), 65);
        let mut ids = ids;
        let h = ids.remove(10);
        p.free(h);
        assert_eq!(p.alloc().unwrap().get(), 15);
    }
}
