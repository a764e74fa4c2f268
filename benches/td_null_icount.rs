//! The TD API's own instructions per 4K map and unmap, against a backend
//! with no cost of its own (`null::NullSwitch`): the same work through the
//! safe API and as raw leaf calls on that backend, each pass in its own
//! `#[inline(never)]` function. The difference per page is what the
//! library itself adds (its records, claims, checks); the raw pass is the
//! register shuffling of the leaf calls. Run under callgrind by
//! `benches/icount.sh`.

// UNSAFETY: the passes hand frames to the TD and call leaves directly.
#![allow(unsafe_code)]

mod null;
mod ops;

use std::hint::black_box;

use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        CacheMaintenance, CpuId, Cpus, FrameAllocator, FrameDeallocator, HardwareInfo, Placement,
        td::{Finalized, GuestFrame, Td},
    },
    sys::SeamcallArgs,
    types::{
        exit::{ExitRegs, TdExit},
        regs::{KeyedPa, PageInfo},
    },
};
use tdx_sys::leaf;

/// Pages per pass.
const N: u64 = 1 << 16;
/// Pages mapped beside the measured ones for the "large TD" passes (4 GiB).
const BIG: u64 = 1 << 20;

type Tdn<'h, 'n> = Td<Finalized, &'h null::Host<'n>>;

#[inline(never)]
fn measured_null_safe_map(td: &Tdn<'_, '_>, first: Pfn) {
    map_pass(td, first);
}

#[inline(always)]
fn map_pass(td: &Tdn<'_, '_>, first: Pfn) {
    for i in 0..N {
        // SAFETY: frames allocated for this bench, untouched while mapped.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

/// Maps the pages again (in reverse order, so the linker cannot fold it
/// into the measured map pass), for the batched unmap. Not measured.
#[inline(never)]
fn map_again(td: &Tdn<'_, '_>, first: Pfn) {
    for i in (0..N).rev() {
        // SAFETY: as in the measured pass.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

/// One map and unmap pass before the measured ones, under another name.
#[inline(never)]
fn warm_up(td: &Tdn<'_, '_>, first: Pfn) {
    for i in 0..N {
        // SAFETY: as in the measured pass.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
    let report = td.unmap_range(Gpa::new(0), N * 4096, &|| {});
    assert!(report.is_complete());
}

#[inline(never)]
fn measured_null_safe_unmap(td: &Tdn<'_, '_>) {
    for i in 0..N {
        let f = td.unmap::<Size4K>(Gpa::new(i * 4096), &|| {}).unwrap();
        black_box(f.into_range());
    }
}

#[inline(never)]
fn measured_null_safe_unmap_batched(td: &Tdn<'_, '_>) {
    ops::safe_unmap_range(td, N);
}

/// The map and unmap passes again with `BIG` other pages mapped in the TD:
/// the cost per page does not grow with the TD.
#[inline(never)]
fn measured_null_big_td_map(td: &Tdn<'_, '_>, first: Pfn) {
    // Top down, so the linker does not fold it into the other map pass.
    for i in (0..N).rev() {
        // SAFETY: as in the measured pass.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

#[inline(never)]
fn measured_null_big_td_unmap(td: &Tdn<'_, '_>) {
    for i in (0..N).rev() {
        let f = td.unmap::<Size4K>(Gpa::new(i * 4096), &|| {}).unwrap();
        black_box(f.into_range());
    }
}

/// Maps `BIG` pages above the measured ones (frames: the measured run's,
/// again: the backend is switched to its no-cost answers, so nothing
/// changes hands; only the TD's records grow).
#[inline(never)]
fn fill(td: &Tdn<'_, '_>, first: Pfn) {
    for i in N..N + BIG {
        let pfn = Pfn::new(first.as_u64() + i % N);
        // SAFETY: as in the measured pass; no frame reaches a module.
        let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

#[inline(never)]
fn measured_null_raw_map(n: &null::NullSwitch, tdr: Pfn, first: Pfn) {
    for i in 0..N {
        let pfn = Pfn::new(first.as_u64() + i);
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        n.clflush_page(pfn);
        // SAFETY: the backend is switched to its no-cost answers: nothing
        // changes hands.
        let c = unsafe { leaf::tdh_mem_page_aug(n, info, tdr, pfn) };
        assert!(!c.status.is_error());
    }
}

#[inline(never)]
fn measured_null_raw_unmap(n: &null::NullSwitch, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    for i in 0..N {
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        let keyed = KeyedPa::try_new(Pfn::new(first.as_u64() + i).hpa(), hkid, shift).unwrap();
        // SAFETY (the four calls): the backend is switched to its no-cost
        // answers: nothing changes hands.
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(n, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(n, tdr) },
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_page_remove(n, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_phymem_page_wbinvd(n, keyed) },
        ];
        assert!(s.iter().all(|s| !s.is_error()));
    }
}

// The 2 MiB, demote/promote and range passes (`ops`), safe and raw.
#[inline(never)]
fn measured_null_safe_map_2m(td: &Tdn<'_, '_>, first: Pfn) {
    ops::safe_map_2m(td, first);
}

#[inline(never)]
fn measured_null_safe_unmap_2m(td: &Tdn<'_, '_>) {
    ops::safe_unmap_2m(td);
}

#[inline(never)]
fn measured_null_safe_demote_2m(td: &Tdn<'_, '_>) {
    ops::safe_demote_2m(td);
}

#[inline(never)]
fn measured_null_safe_promote_2m(td: &Tdn<'_, '_>) {
    ops::safe_promote_2m(td);
}

#[inline(never)]
fn measured_null_raw_map_2m(n: &null::NullSwitch, tdr: Pfn, first: Pfn) {
    ops::raw_map_2m(n, tdr, first);
}

#[inline(never)]
fn measured_null_raw_unmap_2m(n: &null::NullSwitch, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    ops::raw_unmap_2m(n, tdr, first, hkid, shift);
}

#[inline(never)]
fn measured_null_raw_demote_2m(n: &null::NullSwitch, tdr: Pfn, septs: &mut Vec<Pfn>) {
    ops::raw_demote_2m(n, tdr, septs);
}

#[inline(never)]
fn measured_null_raw_promote_2m(
    n: &null::NullSwitch,
    tdr: Pfn,
    septs: &[Pfn],
    hkid: u16,
    shift: u32,
) {
    ops::raw_promote_2m(n, tdr, septs, hkid, shift);
}

#[inline(never)]
fn measured_null_raw_unmap_range(
    n: &null::NullSwitch,
    tdr: Pfn,
    first: Pfn,
    hkid: u16,
    shift: u32,
) {
    ops::raw_unmap_range(n, tdr, first, N, hkid, shift);
}

/// vCPU entries and exits a pass.
const V: u64 = 1 << 16;

/// `Vcpu::enter`: TDH.VP.ENTER through the platform's `enter_guest`, and
/// the exit decoded.
#[inline(never)]
fn measured_null_safe_vcpu_enter(v: &mut tdx::api::td::Vcpu<&Tdn<'_, '_>>) {
    for _ in 0..V {
        let exit = v.enter(CpuId(0)).unwrap();
        black_box(exit);
    }
}

/// The raw equivalent: TDH.VP.ENTER through the platform's `enter_guest`,
/// and the exit decoded.
#[inline(never)]
fn measured_null_raw_vcpu_enter(n: &null::NullSwitch, tdvpr: Pfn) {
    let mut regs = SeamcallArgs::ZERO;
    for _ in 0..V {
        let mut status = tdx::TdxStatus::SUCCESS;
        n.enter_guest(CpuId(0), &mut || {
            // SAFETY: the backend is switched to its no-cost answers:
            // nothing runs, nothing changes hands.
            status = unsafe { leaf::tdh_vp_enter(n, tdvpr, &mut regs) };
        });
        let exit = TdExit::decode(ExitRegs {
            rax: status.raw(),
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            r9: regs.r9,
        });
        black_box(exit.unwrap());
    }
}

fn main() {
    let n = null::NullSwitch::new();
    let host = null::host(&n);
    let td = null::finalized(&host, N + BIG);
    let frames = n.sim.alloc_pages(N, 1, Placement::Anywhere).unwrap();
    let first = frames.first();
    println!("pages per pass: {N}");
    // benches/icount.sh reads these lines: "op <name> <safe function>
    // <raw function> <operations a pass>".
    let m = ops::M;
    println!("op map-4K measured_null_safe_map measured_null_raw_map {N}");
    println!("op unmap-4K measured_null_safe_unmap measured_null_raw_unmap {N}");
    println!("op map-2M measured_null_safe_map_2m measured_null_raw_map_2m {m}");
    println!("op unmap-2M measured_null_safe_unmap_2m measured_null_raw_unmap_2m {m}");
    println!(
        "op unmap_range-per-4K measured_null_safe_unmap_batched measured_null_raw_unmap_range {N}"
    );
    println!("op demote-2M measured_null_safe_demote_2m measured_null_raw_demote_2m {m}");
    println!("op promote-2M measured_null_safe_promote_2m measured_null_raw_promote_2m {m}");
    println!("op vcpu-enter+exit measured_null_safe_vcpu_enter measured_null_raw_vcpu_enter {V}");
    n.set(true, first.hpa().as_u64());
    let (tdr, hkid, shift) = (td.tdr(), td.hkid(), n.sim.hardware().keyid_shift);
    warm_up(&td, first);
    // Each measured pass once: callgrind's inclusive count of the function
    // is one pass of N pages.
    measured_null_safe_map(&td, first);
    measured_null_safe_unmap(&td);
    map_again(&td, first);
    measured_null_safe_unmap_batched(&td);
    measured_null_raw_map(&n, tdr, first);
    measured_null_raw_unmap(&n, tdr, first, hkid, shift);
    measured_null_raw_map(&n, tdr, first);
    measured_null_raw_unmap_range(&n, tdr, first, hkid, shift);
    // 2 MiB pages at GPA ops::BASE_2M. Its S-EPT table is built on the
    // simulator first (one 2 MiB page mapped and unmapped, switched off),
    // so that teardown finds it there.
    let frames_2m = n
        .sim
        .alloc_pages(ops::M * 512, 512, Placement::Anywhere)
        .unwrap();
    let f2 = frames_2m.first();
    n.set(false, 0);
    // SAFETY: allocated above, untouched.
    let f = unsafe { GuestFrame::<tdx::Size2M>::new(f2) }.unwrap();
    td.map(ops::gpa_2m(0), f).unwrap();
    let f = td.unmap::<tdx::Size2M>(ops::gpa_2m(0), &|| {}).unwrap();
    black_box(f.into_range());
    n.set(true, f2.hpa().as_u64() - ops::BASE_2M);
    measured_null_safe_map_2m(&td, f2);
    measured_null_safe_demote_2m(&td);
    measured_null_safe_promote_2m(&td);
    measured_null_safe_unmap_2m(&td);
    let mut septs = Vec::with_capacity(ops::M as usize);
    measured_null_raw_map_2m(&n, tdr, f2);
    measured_null_raw_demote_2m(&n, tdr, &mut septs);
    measured_null_raw_promote_2m(&n, tdr, &septs, hkid, shift);
    measured_null_raw_unmap_2m(&n, tdr, f2, hkid, shift);
    n.set(true, first.hpa().as_u64());
    // The same with a TD 16 times larger. REMOVE answers frame = GPA +
    // delta, so the filler's pages are removed below with their own delta.
    fill(&td, first);
    measured_null_big_td_map(&td, first);
    measured_null_big_td_unmap(&td);
    for k in 1..=BIG / N {
        n.set(true, first.hpa().as_u64() - k * N * 4096);
        let start = Gpa::new(k * N * 4096);
        let r = td.unmap_range(start, N * 4096, &|| {});
        assert!(r.is_complete(), "{r:?}");
    }
    // vCPU entry and exit.
    let id = td.vcpus().next().unwrap();
    let mut v = td.vcpu(id).unwrap();
    measured_null_safe_vcpu_enter(&mut v);
    drop(v);
    measured_null_raw_vcpu_enter(&n, id.tdvpr);
    n.set(false, 0);
    assert_eq!(td.private_pages(), 0);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    // SAFETY: never mapped in the simulator; host memory.
    unsafe { n.sim.free_pages(frames) };
    // SAFETY: as above.
    unsafe { n.sim.free_pages(frames_2m) };
    n.sim.check_invariants().unwrap();
}
