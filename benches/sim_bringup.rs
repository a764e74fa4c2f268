//! Bring-up of a simulated 4 TiB, 8-package host through 64 TDMRs: the
//! whole raw-leaf sequence (SYS.INIT, LP.INIT on every LP, SYS.CONFIG,
//! WBINVD, KEY.CONFIG per package, TDMR.INIT over every TDMR at 4 MiB per
//! call, i.e. 2^20 calls) against `tdx-sim`.
//!
//! Targets (issue: tdx-sim part 1): under 100 ms and under 64 MiB of peak
//! heap for the whole bring-up. Criterion measures the time; a counting
//! allocator measures the heap (printed once before the timing runs).

// UNSAFETY: the counting global allocator is an `unsafe impl GlobalAlloc`
// that forwards to the system allocator.
#![allow(unsafe_code)]

mod cpu_time;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::Instant,
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tdx_sim::{MachineDesc, Simulator, SysState, testkit};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System`'s guarantees hold; the counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

fn host() -> (Simulator, Vec<tdx_types::abi::TdmrInfo>) {
    let memory = vec![(4 * GIB, 4 * GIB + 4 * TIB)];
    let desc = MachineDesc::new(memory.clone()).with_cpus(8, 16);
    let sim = Simulator::new(desc).expect("valid machine");
    // 4 TiB in 64 TDMRs of 64 GiB.
    let tdmrs = testkit::simple_layout(&memory, 64);
    assert_eq!(tdmrs.len(), 64);
    (sim, tdmrs)
}

fn bring_up(sim: &Simulator, tdmrs: &[tdx_types::abi::TdmrInfo]) {
    let r = testkit::bring_up(sim, tdmrs, Default::default());
    assert_eq!(r.tdmr_init_calls, 4 * TIB / (4 << 20));
    assert_eq!(sim.module_state(), SysState::Ready);
}

fn report_memory_once() {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let (sim, tdmrs) = host();
    let t = Instant::now();
    let cpu0 = cpu_time::thread_cpu();
    bring_up(&sim, &tdmrs);
    let cpu = cpu_time::thread_cpu() - cpu0;
    let elapsed = t.elapsed();
    sim.check_invariants()
        .expect("a clean bring-up keeps every invariant");
    let peak = PEAK.load(Relaxed) - base;
    let cpu = format!(" ({:.1} ms on the CPU)", cpu.as_secs_f64() * 1e3);
    eprintln!(
        "sim_bringup: 4 TiB, 8 packages x 16 LPs, 64 TDMRs: peak heap {:.2} MiB, \
         footprint {:.2} MiB, one run {:.1} ms{cpu}, {} SEAMCALLs",
        peak as f64 / (1 << 20) as f64,
        sim.footprint_bytes() as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64() * 1e3,
        sim.stats().total_seamcalls(),
    );
}

fn bench(c: &mut Criterion) {
    report_memory_once();
    let mut g = c.benchmark_group("sim");
    g.sample_size(10);
    g.bench_function("bringup_4TiB_8pkg_64tdmrs", |b| {
        b.iter_batched(
            host,
            |(sim, tdmrs)| bring_up(black_box(&sim), &tdmrs),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
