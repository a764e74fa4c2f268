//! Shared by the icount benches: 2 MiB map and unmap, demote and promote
//! of 2 MiB pages, and range unmap, each through the safe API and as the
//! raw leaf calls that do the same work, generic over the backend (the
//! simulator, or the no-cost one of `null`). The bench binaries wrap each
//! pass in an `#[inline(never)]` function of their own, which callgrind
//! counts.

// UNSAFETY: the passes hand frames allocated for the bench to the TD
// (`GuestFrame::new`) and call the leaves directly (the raw passes).
#![allow(unsafe_code)]

use std::hint::black_box;

use tdx::{
    Gpa, Pfn, Size2M, Size4K,
    api::{
        CacheMaintenance, FrameAllocator, FrameDeallocator, Placement,
        td::{Finalized, GuestFrame, Td, TdHostRef},
    },
    sys::Seamcall,
    types::{
        PfnRun,
        regs::{KeyedPa, PageInfo},
    },
};
use tdx_sys::leaf;

/// GPA of the first 2 MiB page of the 2M passes: above the 4K passes (and
/// the no-cost bench's 4 GiB filler), in a 1 GiB region of its own.
pub(crate) const BASE_2M: u64 = 8 << 30;
/// 2 MiB pages per pass.
pub(crate) const M: u64 = 64;

pub(crate) fn gpa_2m(j: u64) -> Gpa {
    Gpa::new(BASE_2M + (j << 21))
}

fn info_2m(j: u64) -> PageInfo {
    PageInfo::for_page::<Size2M>(gpa_2m(j)).unwrap()
}

fn keyed(pfn: Pfn, hkid: u16, shift: u32) -> KeyedPa {
    KeyedPa::try_new(pfn.hpa(), hkid, shift).unwrap()
}

/// `Td::map` of `M` 2 MiB pages from `first` (512-aligned).
#[inline(always)]
pub(crate) fn safe_map_2m<H: TdHostRef>(td: &Td<Finalized, H>, first: Pfn) {
    for j in 0..M {
        let pfn = Pfn::new(first.as_u64() + j * 512);
        // SAFETY: frames allocated for this bench, untouched while mapped.
        let f = unsafe { GuestFrame::<Size2M>::new(pfn) }.unwrap();
        td.map(gpa_2m(j), f).unwrap();
    }
}

/// `Td::unmap::<Size2M>` of the `M` pages.
#[inline(always)]
pub(crate) fn safe_unmap_2m<H: TdHostRef>(td: &Td<Finalized, H>) {
    for j in 0..M {
        let f = td.unmap::<Size2M>(gpa_2m(j), &|| {}).unwrap();
        black_box(f.into_range());
    }
}

/// `Td::demote::<Size2M>` of the `M` pages.
#[inline(always)]
pub(crate) fn safe_demote_2m<H: TdHostRef>(td: &Td<Finalized, H>) {
    for j in 0..M {
        td.demote::<Size2M>(gpa_2m(j), &|| {}).unwrap();
    }
}

/// `Td::promote::<Size2M>` of the `M` ranges.
#[inline(always)]
pub(crate) fn safe_promote_2m<H: TdHostRef>(td: &Td<Finalized, H>) {
    for j in 0..M {
        td.promote::<Size2M>(gpa_2m(j), &|| {}).unwrap();
    }
}

/// `Td::unmap_range` of the 4K pages at GPA `[0, n × 4 KiB)`, one 2 MiB
/// range a call.
#[inline(always)]
pub(crate) fn safe_unmap_range<H: TdHostRef>(td: &Td<Finalized, H>, n: u64) {
    for r in 0..n / 512 {
        let report = td.unmap_range(Gpa::new(r << 21), 2 << 20, &|| {});
        assert_eq!(report.pages.len(), 512);
        let _ = black_box(report);
    }
}

/// The raw equivalent of `safe_map_2m`: CLFLUSH of the 512 frames and
/// TDH.MEM.PAGE.AUG at 2M.
#[inline(always)]
pub(crate) fn raw_map_2m<B: Seamcall + CacheMaintenance>(b: &B, tdr: Pfn, first: Pfn) {
    for j in 0..M {
        let pfn = Pfn::new(first.as_u64() + j * 512);
        for k in 0..512 {
            b.clflush_page(Pfn::new(pfn.as_u64() + k));
        }
        // SAFETY: frames allocated for this bench, untouched; the S-EPT
        // table for these GPAs exists (the warm-up made it).
        let c = unsafe { leaf::tdh_mem_page_aug(b, info_2m(j), tdr, pfn) };
        assert!(!c.status.is_error(), "{}", c.status);
    }
}

/// The raw equivalent of `safe_unmap_2m`: BLOCK, TRACK, REMOVE, and
/// TDH.PHYMEM.PAGE.WBINVD of each of the 512 frames.
#[inline(always)]
pub(crate) fn raw_unmap_2m<B: Seamcall>(b: &B, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    for j in 0..M {
        let info = info_2m(j);
        // SAFETY (the calls): the page was mapped by `raw_map_2m`; BLOCK,
        // TRACK and REMOVE hand it back, WBINVD writes back the TD's lines.
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(b, tdr) },
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_page_remove(b, info, tdr) }.status,
        ];
        assert!(s.iter().all(|s| !s.is_error()), "{s:?}");
        for k in 0..512 {
            let pfn = Pfn::new(first.as_u64() + j * 512 + k);
            // SAFETY: as above.
            let s = unsafe { leaf::tdh_phymem_page_wbinvd(b, keyed(pfn, hkid, shift)) };
            assert!(!s.is_error(), "{s}");
        }
    }
}

/// The raw equivalent of `safe_demote_2m`: a new S-EPT page from the
/// platform, BLOCK, TRACK, TDH.MEM.PAGE.DEMOTE. The S-EPT pages go to
/// `septs` (room for `M` reserved by the caller).
#[inline(always)]
pub(crate) fn raw_demote_2m<B: Seamcall + FrameAllocator>(b: &B, tdr: Pfn, septs: &mut Vec<Pfn>) {
    for j in 0..M {
        let info = info_2m(j);
        let sept = b.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
        // SAFETY (the calls): the 2M page was mapped by `raw_map_2m`; the
        // new S-EPT page is handed to the module, which gives it back on
        // PROMOTE (`raw_promote_2m`).
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(b, tdr) },
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_page_demote(b, info, tdr, sept) }.status,
        ];
        assert!(s.iter().all(|s| !s.is_error()), "{s:?}");
        septs.push(sept);
    }
}

/// The raw equivalent of `safe_promote_2m`: BLOCK, TRACK,
/// TDH.MEM.PAGE.PROMOTE, TDH.PHYMEM.PAGE.WBINVD of the S-EPT page it frees,
/// which goes back to the platform.
#[inline(always)]
pub(crate) fn raw_promote_2m<B: Seamcall + FrameDeallocator>(
    b: &B,
    tdr: Pfn,
    septs: &[Pfn],
    hkid: u16,
    shift: u32,
) {
    for (j, &sept) in (0..M).zip(septs) {
        let info = info_2m(j);
        // SAFETY (the calls): the range was demoted by `raw_demote_2m`;
        // PROMOTE gives `sept` back, taken over after its write-back.
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(b, tdr) },
        ];
        assert!(s.iter().all(|s| !s.is_error()), "{s:?}");
        // SAFETY: as above.
        let c = unsafe { leaf::tdh_mem_page_promote(b, info, tdr) };
        assert!(!c.status.is_error(), "{}", c.status);
        assert_eq!(c.out.removed(), Some(sept));
        // SAFETY: as above.
        let s = unsafe { leaf::tdh_phymem_page_wbinvd(b, keyed(sept, hkid, shift)) };
        assert!(!s.is_error(), "{s}");
        // SAFETY: freed by the module and written back.
        unsafe { b.free_pages(PfnRun::try_new(sept, 1).unwrap()) };
    }
}

/// The raw equivalent of `safe_unmap_range`: per 2 MiB range, BLOCK of the
/// 512 pages, one TRACK, REMOVE and WBINVD of each.
#[inline(always)]
pub(crate) fn raw_unmap_range<B: Seamcall>(
    b: &B,
    tdr: Pfn,
    first: Pfn,
    n: u64,
    hkid: u16,
    shift: u32,
) {
    let info = |i: u64| PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
    for r in 0..n / 512 {
        for i in r * 512..(r + 1) * 512 {
            // SAFETY: mapped by the bench; blocked, then removed below.
            let s = unsafe { leaf::tdh_mem_range_block(b, info(i), tdr) }.status;
            assert!(!s.is_error(), "{s}");
        }
        // SAFETY: as above.
        let s = unsafe { leaf::tdh_mem_track(b, tdr) };
        assert!(!s.is_error(), "{s}");
        for i in r * 512..(r + 1) * 512 {
            // SAFETY: blocked and tracked above; the frame comes back after
            // its write-back.
            let c = unsafe { leaf::tdh_mem_page_remove(b, info(i), tdr) };
            assert!(!c.status.is_error(), "{}", c.status);
            let pfn = Pfn::new(first.as_u64() + i);
            // SAFETY: as above.
            let s = unsafe { leaf::tdh_phymem_page_wbinvd(b, keyed(pfn, hkid, shift)) };
            assert!(!s.is_error(), "{s}");
        }
    }
}
