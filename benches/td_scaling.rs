//! 4K map throughput on one TD with 1 and 2 threads, each thread mapping
//! its own GPAs through the shared `&Td` (the vCPU threads of a VMM taking
//! EPT violations on different pages):
//!
//! - against a backend with no cost of its own (`null::NullSwitch`: every
//!   SEAMCALL answers success at once, CLFLUSH does nothing), so what is
//!   measured is the library alone and its scaling is visible;
//! - against the simulator, where the module model does the work.
//!
//! Each sample maps `PER_THREAD` pages on each thread (timed), then removes
//! them, one batch per thread's range, from the bench's thread (not
//! timed). Run with
//! `cargo bench --bench td_scaling`; the ratio of the 2-thread to the
//! 1-thread throughput is the figure of interest (the machine has 2 cores).

// UNSAFETY: the bench hands frames it allocated to the TD (`GuestFrame::new`).
#![allow(unsafe_code)]

mod null;

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        FrameAllocator, FrameDeallocator, Placement,
        td::{Finalized, GuestFrame, Td, TdHostRef},
    },
};

/// Pages each thread maps per sample.
const PER_THREAD: u64 = 1 << 15;

fn map_range<H: TdHostRef>(td: &Td<Finalized, H>, first: Pfn, from: u64, n: u64) {
    for i in from..from + n {
        // SAFETY: frames allocated for this bench, untouched while mapped.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

fn scaling(c: &mut Criterion) {
    let n = null::NullSwitch::new();
    let host = null::host(&n);
    let td = null::finalized(&host, 2 * PER_THREAD);
    // A second TD: two threads on two TDs share nothing in the library, so
    // they show what this machine's two cores give at best, in this run.
    let other = null::finalized(&host, 2 * PER_THREAD);
    let frames = n
        .sim
        .alloc_pages(2 * PER_THREAD, 1, Placement::Anywhere)
        .unwrap();
    let first = frames.first();
    let delta = first.hpa().as_u64();
    let mut g = c.benchmark_group("map 4K on one TD");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (backend, null) in [("no-cost backend", true), ("simulator", false)] {
        for (threads, tds) in [(1u64, 1), (2, 1), (2, 2)] {
            let what = match (threads, tds) {
                (1, _) => "1 thread".to_string(),
                (_, 1) => format!("{threads} threads, one TD"),
                _ => format!("{threads} threads, one TD each"),
            };
            g.throughput(Throughput::Elements(threads * PER_THREAD));
            g.bench_function(format!("{backend}, {what}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n.set(null, delta);
                        let t = Instant::now();
                        thread::scope(|s| {
                            for k in 0..threads {
                                let td = if tds == 2 && k == 1 { &other } else { &td };
                                s.spawn(move || map_range(td, first, k * PER_THREAD, PER_THREAD));
                            }
                        });
                        total += t.elapsed();
                        // Not timed: the pages come back in one batch per
                        // TD, from this thread.
                        for k in 0..threads {
                            let td = if tds == 2 && k == 1 { &other } else { &td };
                            let start = Gpa::new(k * PER_THREAD * 4096);
                            let r = td.unmap_range(start, PER_THREAD * 4096, &|| {});
                            assert!(r.is_complete(), "{:?}", r.stopped);
                            let _ = black_box(r);
                        }
                        n.set(false, 0);
                    }
                    total
                })
            });
        }
    }
    g.finish();
    for td in [td, other] {
        let report = td.teardown();
        assert!(report.is_clean(), "{report:?}");
    }
    // SAFETY: every page was unmapped; the frames are host memory again.
    unsafe { n.sim.free_pages(frames) };
    n.sim.check_invariants().unwrap();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
