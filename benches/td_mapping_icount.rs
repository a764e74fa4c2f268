//! The safe TD API's own cost in instructions, for a noisy machine: 64 Ki
//! 4K pages mapped and unmapped through `Td::map`/`Td::unmap`, and the same
//! work as raw leaf calls (CLFLUSH + AUG; BLOCK + TRACK + REMOVE +
//! PAGE.WBINVD), each pass in its own `#[inline(never)]` function; the
//! same for the 2M, demote, promote and range passes (`ops`), and for vCPU
//! entries (`Vcpu::enter` against TDH.VP.ENTER through the platform's
//! `enter_guest` and the exit decoded).
//!
//! The vCPU's guest program reads a GPA nothing maps: its first entry
//! (before the passes) starts the program's thread, which asks for the
//! read; that entry and every later one exits with an EPT violation, and
//! the simulator retries the read at each entry in the entering thread
//! (a fault-like exit repeats the operation), so the guest's thread does
//! not run during the passes and the count is the same from run to run.
//!
//! Run under callgrind by `benches/icount.sh`, which reads each pass's
//! inclusive instruction count and prints instructions per page and the
//! safe/raw ratios. Run plainly (`cargo bench --bench td_mapping_icount`),
//! it prints each pass's wall time, a rough figure only; the criterion
//! bench `td_mapping` is the one for throughput.

// UNSAFETY: the raw passes call leaves directly (see `mapping`).
#![allow(unsafe_code)]

mod mapping;
mod ops;

use std::time::Instant;

use mapping::{map_4k, raw_map_4k, raw_unmap_4k, unmap_4k};
use std::hint::black_box;
use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        CpuId, Cpus, FrameAllocator, Placement,
        td::{GuestFrame, Vcpu},
    },
    sys::SeamcallArgs,
    types::exit::{ExitRegs, TdExit},
};
use tdx_sys::leaf;

/// Pages per pass.
const N: u64 = 1 << 16;

// The measured passes, by name for callgrind (the warm-up pass calls
// `map_4k` and `unmap_4k` directly).
#[inline(never)]
fn measured_safe_map(td: &mapping::SimTd<'_, '_>, first: Pfn) {
    map_4k(td, first, N);
}

#[inline(never)]
fn measured_safe_unmap(td: &mapping::SimTd<'_, '_>) {
    unmap_4k(td, N);
}

#[inline(never)]
fn measured_raw_map(sim: &tdx_sim::Simulator, tdr: tdx::Pfn, first: tdx::Pfn) {
    raw_map_4k(sim, tdr, first, N);
}

#[inline(never)]
fn measured_raw_unmap(
    sim: &tdx_sim::Simulator,
    tdr: tdx::Pfn,
    first: tdx::Pfn,
    hkid: u16,
    shift: u32,
) {
    raw_unmap_4k(sim, tdr, first, N, hkid, shift);
}

// The 2 MiB, demote/promote and range passes (`ops`), safe and raw.
type SimTd<'h, 's> = mapping::SimTd<'h, 's>;
type Sim = tdx_sim::Simulator;

#[inline(never)]
fn measured_safe_map_2m(td: &SimTd<'_, '_>, first: Pfn) {
    ops::safe_map_2m(td, first);
}

#[inline(never)]
fn measured_safe_unmap_2m(td: &SimTd<'_, '_>) {
    ops::safe_unmap_2m(td);
}

#[inline(never)]
fn measured_safe_demote_2m(td: &SimTd<'_, '_>) {
    ops::safe_demote_2m(td);
}

#[inline(never)]
fn measured_safe_promote_2m(td: &SimTd<'_, '_>) {
    ops::safe_promote_2m(td);
}

#[inline(never)]
fn measured_safe_unmap_range(td: &SimTd<'_, '_>) {
    ops::safe_unmap_range(td, N);
}

#[inline(never)]
fn measured_raw_map_2m(sim: &Sim, tdr: Pfn, first: Pfn) {
    ops::raw_map_2m(sim, tdr, first);
}

#[inline(never)]
fn measured_raw_unmap_2m(sim: &Sim, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    ops::raw_unmap_2m(sim, tdr, first, hkid, shift);
}

#[inline(never)]
fn measured_raw_demote_2m(sim: &Sim, tdr: Pfn, septs: &mut Vec<Pfn>) {
    ops::raw_demote_2m(sim, tdr, septs);
}

#[inline(never)]
fn measured_raw_promote_2m(sim: &Sim, tdr: Pfn, septs: &[Pfn], hkid: u16, shift: u32) {
    ops::raw_promote_2m(sim, tdr, septs, hkid, shift);
}

#[inline(never)]
fn measured_raw_unmap_range(sim: &Sim, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    ops::raw_unmap_range(sim, tdr, first, N, hkid, shift);
}

/// vCPU entries a pass.
const V: u64 = 1 << 12;
/// The GPA the vCPU's guest reads: nothing maps it (above the 4K passes,
/// below the 2M ones).
const UNMAPPED: u64 = 3 << 30;

/// `Vcpu::enter` (TDH.VP.ENTER through the platform's `enter_guest`, the
/// exit decoded): the guest's read exits with an EPT violation each time.
#[inline(never)]
fn measured_safe_vcpu_enter(v: &mut Vcpu<&SimTd<'_, '_>>) {
    for _ in 0..V {
        let exit = v.enter(CpuId(0)).unwrap();
        black_box(exit);
    }
}

/// The raw equivalent: TDH.VP.ENTER through the platform's `enter_guest`,
/// and the exit decoded.
#[inline(never)]
fn measured_raw_vcpu_enter(sim: &Sim, tdvpr: Pfn) {
    let mut regs = SeamcallArgs::ZERO;
    for _ in 0..V {
        let mut status = tdx::TdxStatus::SUCCESS;
        sim.enter_guest(CpuId(0), &mut || {
            // SAFETY: the vCPU was entered through `Vcpu::enter` before
            // (associated with CPU 0, finalized TD); its guest only reads.
            status = unsafe { leaf::tdh_vp_enter(sim, tdvpr, &mut regs) };
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

/// Not measured: the guest accepts the 2 MiB pages (PROMOTE merges
/// accepted pages).
#[inline(never)]
fn accept_2m(sim: &Sim, tdr: Pfn) {
    for j in 0..ops::M {
        let s = sim.guest_accept(tdr, ops::gpa_2m(j).as_u64(), 1);
        assert_eq!(s, tdx::TdxStatus::SUCCESS);
    }
}

/// Not measured: builds the S-EPT table the 2M passes map into.
#[inline(never)]
fn warm_up_2m(td: &SimTd<'_, '_>, sim: &Sim, first: Pfn) {
    for j in (0..ops::M).rev() {
        let pfn = Pfn::new(first.as_u64() + j * 512);
        // SAFETY: allocated for this TD, untouched.
        let f = unsafe { GuestFrame::<tdx::Size2M>::new(pfn) }.unwrap();
        td.map(ops::gpa_2m(j), f).unwrap();
    }
    // All split, then all merged: the simulator makes its record of an
    // S-EPT page on first use of a slot of its own and reuses freed slots,
    // so without this the first measured pass (the safe one) would pay for
    // `M` new records and the raw pass reuse them.
    accept_2m(sim, td.tdr());
    for j in (0..ops::M).rev() {
        td.demote::<tdx::Size2M>(ops::gpa_2m(j), &mapping::kick_vcpus)
            .unwrap();
    }
    for j in (0..ops::M).rev() {
        td.promote::<tdx::Size2M>(ops::gpa_2m(j), &mapping::kick_vcpus)
            .unwrap();
    }
    for j in 0..ops::M {
        let f = td
            .unmap::<tdx::Size2M>(ops::gpa_2m(j), &mapping::kick_vcpus)
            .unwrap();
        std::hint::black_box(f.into_range());
    }
}

// With Dynamic PAMT (module 1.5.16): the same safe passes; the first page
// of each 2 MiB range adds its pair (PAMT.ADD), the last one out removes it.
// Top down, so that the linker does not fold them into the passes above.
#[inline(never)]
fn measured_dpamt_map(td: &mapping::SimTd<'_, '_>, first: tdx::Pfn) {
    for i in (0..N).rev() {
        // SAFETY: the frames were allocated for this TD and are not touched.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

#[inline(never)]
fn measured_dpamt_unmap(td: &mapping::SimTd<'_, '_>) {
    for i in (0..N).rev() {
        let f = td
            .unmap::<Size4K>(Gpa::new(i * 4096), &mapping::kick_vcpus)
            .unwrap();
        std::hint::black_box(f.into_range());
    }
}

fn main() {
    let sim = mapping::simulator();
    let host = mapping::host(&sim);
    let td = mapping::finalized(&host);
    let frames = sim.alloc_pages(N, 1, Placement::Anywhere).unwrap();
    // A first pass builds the S-EPT (kept afterwards), so the measured
    // passes do the same work safe and raw.
    map_4k(&td, frames.first(), N);
    unmap_4k(&td, N);
    let (tdr, hkid, shift) = (td.tdr(), td.hkid(), sim.machine().hkid_start_bit());
    // benches/icount.sh reads these lines: "op <name> <safe function>
    // <raw function> <operations a pass>".
    println!("pages per pass: {N}");
    let m = ops::M;
    println!("op map-4K measured_safe_map measured_raw_map {N}");
    println!("op unmap-4K measured_safe_unmap measured_raw_unmap {N}");
    println!("op map-2M measured_safe_map_2m measured_raw_map_2m {m}");
    println!("op unmap-2M measured_safe_unmap_2m measured_raw_unmap_2m {m}");
    println!("op unmap_range-per-4K measured_safe_unmap_range measured_raw_unmap_range {N}");
    println!("op demote-2M measured_safe_demote_2m measured_raw_demote_2m {m}");
    println!("op promote-2M measured_safe_promote_2m measured_raw_promote_2m {m}");
    println!("op vcpu-enter+exit measured_safe_vcpu_enter measured_raw_vcpu_enter {V}");
    let time = |name: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        println!(
            "{name}: {:.1} ns/page",
            t.elapsed().as_nanos() as f64 / N as f64
        );
    };
    time("safe map", &mut || measured_safe_map(&td, frames.first()));
    time("safe unmap", &mut || measured_safe_unmap(&td));
    time("raw map", &mut || {
        measured_raw_map(&sim, tdr, frames.first())
    });
    time("raw unmap", &mut || {
        measured_raw_unmap(&sim, tdr, frames.first(), hkid, shift);
    });
    // 2 MiB pages: map, demote, promote, unmap, safe then raw.
    let frames_2m = sim
        .alloc_pages(ops::M * 512, 512, Placement::Anywhere)
        .unwrap();
    let f2 = frames_2m.first();
    warm_up_2m(&td, &sim, f2);
    measured_safe_map_2m(&td, f2);
    accept_2m(&sim, tdr);
    measured_safe_demote_2m(&td);
    measured_safe_promote_2m(&td);
    measured_safe_unmap_2m(&td);
    let mut septs = Vec::with_capacity(ops::M as usize);
    measured_raw_map_2m(&sim, tdr, f2);
    accept_2m(&sim, tdr);
    measured_raw_demote_2m(&sim, tdr, &mut septs);
    measured_raw_promote_2m(&sim, tdr, &septs, hkid, shift);
    measured_raw_unmap_2m(&sim, tdr, f2, hkid, shift);
    // vCPU entries: a first one (not measured) starts the guest program,
    // whose read of an unmapped GPA then exits at every entry.
    let id = td.vcpus().next().unwrap();
    sim.set_guest(id.tdvpr, |g| {
        let _ = g.read(UNMAPPED, 8);
    });
    let mut v = td.vcpu(id).unwrap();
    let first_exit = v.enter(CpuId(0)).unwrap();
    assert!(
        matches!(first_exit, TdExit::EptViolation { .. }),
        "{first_exit:?}"
    );
    measured_safe_vcpu_enter(&mut v);
    drop(v);
    measured_raw_vcpu_enter(&sim, id.tdvpr);
    // Range unmap of the 4K pages, in 2 MiB batches.
    map_4k(&td, frames.first(), N);
    measured_safe_unmap_range(&td);
    raw_map_4k(&sim, tdr, frames.first(), N);
    measured_raw_unmap_range(&sim, tdr, frames.first(), hkid, shift);
    assert_eq!(td.private_pages(), 0);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    sim.check_invariants().unwrap();

    // Dynamic PAMT, same work. The warm-up leaves the S-EPT (and the pairs
    // of its pages' ranges) in place; the measured map pass adds the pair
    // of each of the N / 512 ranges its frames fill, the unmap pass
    // removes them.
    let dsim = mapping::simulator_dpamt();
    let dhost = mapping::host(&dsim);
    assert!(dhost.dynamic_pamt());
    let dtd = mapping::finalized(&dhost);
    let dframes = dsim.alloc_pages(N, 512, Placement::Anywhere).unwrap();
    map_4k(&dtd, dframes.first(), N);
    unmap_4k(&dtd, N);
    let pairs = dhost.pamt_pairs();
    time("Dynamic PAMT map", &mut || {
        measured_dpamt_map(&dtd, dframes.first())
    });
    assert_eq!(dhost.pamt_pairs(), pairs + (N / 512) as usize);
    time("Dynamic PAMT unmap", &mut || measured_dpamt_unmap(&dtd));
    assert_eq!(dhost.pamt_pairs(), pairs);
    let report = dtd.teardown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(dhost.pamt_pairs(), 0);
    dsim.check_invariants().unwrap();
}
