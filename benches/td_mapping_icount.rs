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
use tdx::api::{Placement, Platform};

/// Pages per pass.
const N: u64 = 1 << 16;

// The measured passes, by name for callgrind (the warm-up pass calls
// `map_4k` and `unmap_4k` directly).
#[inline(never)]
fn measured_safe_map(td: &mapping::SimTd<'_, '_>, first: tdx::Pfn) {
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
}
