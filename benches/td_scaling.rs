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
//!
//! Wall time on a loaded machine measures the load as much as the library,
//! so the bench then prints, for the same three shapes, each thread's own
//! CPU time per map and unmap (`CLOCK_THREAD_CPUTIME_ID`: time the thread
//! ran, not time it waited for a core), and how far the threads really ran
//! side by side. Contention between threads (a shared lock,
//! a cache line written by both, compare-and-swap retries) makes that
//! figure grow with the second thread; two TDs, which share nothing in the
//! library, are the baseline measured in the same run.

// UNSAFETY: the bench hands frames it allocated to the TD (`GuestFrame::new`).
#![allow(unsafe_code)]

mod cpu_time;
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
        td::{Finalized, GuestFrame, Outcome, Td, TdHostRef},
    },
};

/// Maps the 4K pages `from..from + n` (GPA = frame offset), retrying
/// contention (another thread's removal holding the S-EPT tree,
/// [`TdError::is_contention`](tdx::api::td::TdError::is_contention)) as a
/// VMM retries the fault; returns the retries.
fn map_range_retrying<H: TdHostRef>(td: &Td<Finalized, H>, first: Pfn, from: u64, n: u64) -> u64 {
    let mut retries = 0;
    for i in from..from + n {
        // SAFETY: frames allocated for this bench, untouched while mapped.
        let mut f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        while let Err(e) = td.map(Gpa::new(i * 4096), f) {
            assert!(e.error.is_contention(), "{e:?}");
            retries += 1;
            f = e.returned;
            std::hint::spin_loop();
        }
    }
    retries
}

/// Removes the 4K pages `from..from + n` with `unmap_range`, again while
/// the module's S-EPT tree lock (another thread's map or removal) stops the
/// batch or keeps a page blocked: the next pass resumes from the block.
/// Returns the passes that had to be repeated.
fn unmap_range_retrying<H: TdHostRef>(td: &Td<Finalized, H>, from: u64, n: u64) -> u64 {
    let mut retries = 0;
    loop {
        let r = td.unmap_range(Gpa::new(from * 4096), n * 4096, &|| {});
        let mut again = false;
        for p in &r.pages {
            match &p.outcome {
                Outcome::Returned => {}
                Outcome::Kept(e) if e.is_contention() => again = true,
                o => panic!("{:?}: {o:?}", p.gpa),
            }
        }
        match r.stopped {
            None if !again => return retries,
            Some(e) if !e.is_contention() => panic!("{e:?}"),
            _ => retries += 1,
        }
    }
}

/// Pages each thread maps per sample.
const PER_THREAD: u64 = 1 << 15;

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
    // Thread `k`'s TD: the second thread of the two-TD shape has its own.
    let td_of = |tds: u64, k: u64| if tds == 2 && k == 1 { &other } else { &td };
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
                                let td = td_of(tds, k);
                                s.spawn(move || {
                                    map_range_retrying(td, first, k * PER_THREAD, PER_THREAD)
                                });
                            }
                        });
                        total += t.elapsed();
                        // Not timed: the pages come back in one batch per
                        // TD, from this thread.
                        for k in 0..threads {
                            let td = td_of(tds, k);
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

    // CPU time per map+unmap, per thread: median of ROUNDS rounds for each
    // shape. In a round each thread maps its own 32 768 pages and removes
    // them again (`unmap_range`, its own range), `reps` times, starting
    // together at a barrier; calls stopped by the module's S-EPT tree lock
    // (the other thread's removal) are retried and counted. `parallel` is the threads' CPU time over the
    // round's wall time: 2.0 when both ran side by side all along, 1.0 when
    // they only took turns (contention is measured only as far as they
    // overlapped, so it is printed with the figure).
    const ROUNDS: usize = 11;
    println!(
        "\nCPU time per 4K map + unmap, each thread's own CPU clock \
         (median of {ROUNDS} rounds, min-max; parallel = CPU time / wall time):"
    );
    for (backend, null, reps) in [("no-cost backend", true, 16), ("simulator", false, 2)] {
        for (threads, tds) in [(1u64, 1), (2, 1), (2, 2)] {
            let mut per_op = Vec::new();
            let mut parallel = Vec::new();
            let mut retried = 0u64;
            for _ in 0..ROUNDS {
                n.set(null, delta);
                let barrier = std::sync::Barrier::new(threads as usize);
                let wall = Instant::now();
                let cpu: Duration = thread::scope(|s| {
                    let hs: Vec<_> = (0..threads)
                        .map(|k| {
                            let td = td_of(tds, k);
                            let barrier = &barrier;
                            s.spawn(move || {
                                barrier.wait();
                                let t = cpu_time::thread_cpu();
                                let mut retries = 0;
                                for _ in 0..reps {
                                    retries +=
                                        map_range_retrying(td, first, k * PER_THREAD, PER_THREAD);
                                    retries += unmap_range_retrying(td, k * PER_THREAD, PER_THREAD);
                                }
                                (cpu_time::thread_cpu() - t, retries)
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap())
                        .fold(Duration::ZERO, |cpu, (c, r)| {
                            retried += r;
                            cpu + c
                        })
                });
                let wall = wall.elapsed();
                n.set(false, 0);
                per_op.push(cpu.as_nanos() as f64 / (threads * PER_THREAD * reps) as f64);
                parallel.push(cpu.as_secs_f64() / wall.as_secs_f64());
            }
            per_op.sort_by(f64::total_cmp);
            parallel.sort_by(f64::total_cmp);
            println!(
                "  {backend:16} {threads} thread(s) on {tds} TD(s): {:8.1} ns ({:.1}-{:.1}), \
                 parallel {:.2} ({:.2}-{:.2}), {retried} calls retried",
                per_op[ROUNDS / 2],
                per_op[0],
                per_op[ROUNDS - 1],
                parallel[ROUNDS / 2],
                parallel[0],
                parallel[ROUNDS - 1]
            );
        }
    }

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
