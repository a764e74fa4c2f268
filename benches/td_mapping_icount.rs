//! The safe TD API's own cost in instructions, for a noisy machine: 64 Ki
//! 4K pages mapped and unmapped through `Td::map`/`Td::unmap`, and the same
//! work as raw leaf calls (CLFLUSH + AUG; BLOCK + TRACK + REMOVE +
//! PAGE.WBINVD), each pass in its own `#[inline(never)]` function.
//!
//! Run under callgrind by `benches/icount.sh`, which reads each pass's
//! inclusive instruction count and prints instructions per page and the
//! safe/raw ratios. Run plainly (`cargo bench --bench td_mapping_icount`),
//! it prints each pass's wall time, a rough figure only; the criterion
//! bench `td_mapping` is the one for throughput.

// UNSAFETY: the raw passes call leaves directly (see `mapping`).
#![allow(unsafe_code)]

mod mapping;

use std::time::Instant;

use mapping::{map_4k, raw_map_4k, raw_unmap_4k, unmap_4k};
use tdx::{
    Gpa, Pfn, Size4K,
    api::{FrameAllocator, Placement, td::GuestFrame},
};

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
    // benches/icount.sh reads this line.
    println!("pages per pass: {N}");
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
