//! Private-memory mapping throughput through the safe TD API on `tdx-sim`:
//! 1 Mi 4K TDH.MEM.PAGE.AUGs, 4096 2M AUGs, and removing the same pages
//! (BLOCK, TRACK, kick, REMOVE, PAGE.WBINVD per 4K frame).
//!
//! Beside each safe 4K path runs the same work as raw tdx-sys leaf calls
//! (`raw_*`: CLFLUSH + AUG; BLOCK + TRACK + REMOVE + PAGE.WBINVD), on the
//! same GPAs and frames in the same run, so the API's own cost is the
//! ratio of the two.
//!
//! Target (issue 7): at least 1 M 4K mappings per second per core. Each
//! sample maps (or unmaps) the whole set once; the other half of the cycle
//! runs untimed, so every sample starts from the same TD state. S-EPT pages
//! are created by the first mapping pass and kept.

// UNSAFETY: the bench hands frames it allocated from the simulator to the
// TD (`GuestFrame::new`).
#![allow(unsafe_code)]

mod mapping;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mapping::{GIB, SimTd, kick_vcpus, map_4k, raw_map_4k, raw_unmap_4k, unmap_4k};
use tdx::{
    Gpa, Pfn, Size2M,
    api::{FrameAllocator, Placement, td::GuestFrame},
};

const N4K: u64 = 1 << 20;
const N2M: u64 = 4096;
const BASE_2M: u64 = 8 * GIB;

fn map_2m(td: &SimTd<'_, '_>, first: Pfn) {
    for i in 0..N2M {
        // SAFETY: the frames were allocated for this TD and are not touched.
        let f = unsafe { GuestFrame::<Size2M>::new(Pfn::new(first.as_u64() + i * 512)) }.unwrap();
        td.map(Gpa::new(BASE_2M + i * (2 << 20)), f).unwrap();
    }
}

fn unmap_2m(td: &SimTd<'_, '_>) {
    for i in 0..N2M {
        let f = td
            .unmap::<Size2M>(Gpa::new(BASE_2M + i * (2 << 20)), &kick_vcpus)
            .unwrap();
        black_box(f.into_range());
    }
}

fn bench(c: &mut Criterion) {
    let sim = mapping::simulator();
    let host = mapping::host(&sim);
    let td = mapping::finalized(&host);
    let small = sim.alloc_pages(N4K, 1, Placement::Anywhere).unwrap();
    let huge = sim
        .alloc_pages(N2M * 512, 512, Placement::Anywhere)
        .unwrap();

    let mut g = c.benchmark_group("td_mapping");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let timed = |td: &SimTd<'_, '_>,
                 iters: u64,
                 measure_map: bool,
                 map: &dyn Fn(&SimTd<'_, '_>),
                 unmap: &dyn Fn(&SimTd<'_, '_>)| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            map(td);
            if measure_map {
                total += t.elapsed();
            }
            let t = Instant::now();
            unmap(td);
            if !measure_map {
                total += t.elapsed();
            }
        }
        total
    };
    g.throughput(Throughput::Elements(N4K));
    g.bench_function("page_aug_4k_x1Mi", |b| {
        b.iter_custom(|n| {
            timed(&td, n, true, &|td| map_4k(td, small.first(), N4K), &|td| {
                unmap_4k(td, N4K)
            })
        })
    });
    g.bench_function("remove_4k_x1Mi", |b| {
        b.iter_custom(|n| {
            timed(&td, n, false, &|td| map_4k(td, small.first(), N4K), &|td| {
                unmap_4k(td, N4K)
            })
        })
    });
    // The same 4K work as raw leaf calls, on the same GPAs (the safe passes
    // above left their S-EPT pages in place) and frames.
    let (tdr, hkid, shift) = (td.tdr(), td.hkid(), sim.machine().hkid_start_bit());
    let raw = |iters: u64, measure_map: bool| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            raw_map_4k(&sim, tdr, small.first(), N4K);
            if measure_map {
                total += t.elapsed();
            }
            let t = Instant::now();
            raw_unmap_4k(&sim, tdr, small.first(), N4K, hkid, shift);
            if !measure_map {
                total += t.elapsed();
            }
        }
        total
    };
    g.bench_function("raw_page_aug_4k_x1Mi", |b| b.iter_custom(|n| raw(n, true)));
    g.bench_function("raw_remove_4k_x1Mi", |b| b.iter_custom(|n| raw(n, false)));
    g.throughput(Throughput::Elements(N2M));
    g.bench_function("page_aug_2m_x4096", |b| {
        b.iter_custom(|n| {
            timed(&td, n, true, &|td| map_2m(td, huge.first()), &|td| {
                unmap_2m(td)
            })
        })
    });
    g.bench_function("remove_2m_x4096", |b| {
        b.iter_custom(|n| {
            timed(&td, n, false, &|td| map_2m(td, huge.first()), &|td| {
                unmap_2m(td)
            })
        })
    });
    g.finish();
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
}

criterion_group!(benches, bench);
criterion_main!(benches);
