//! Raw TDH.MEM.PAGE.AUG (4K) throughput on one and two threads, each on
//! its own LP:
//!
//! - `two_tds`: thread `i` AUGs into TD `i` (with one thread: TD 0 only);
//! - `one_td`: thread `i` AUGs into its own 256 MiB GPA region of one TD
//!   (with one thread: region 0 only).
//!
//! Each thread maps `PAGES` pages per sample from frames of its own, so the
//! module's locks the threads share are the TD-wide ones (TDR, op state,
//! S-EPT tree: all shared) and nothing else. Throughput counts the pages of
//! all threads, so "2 threads / 1 thread" is the speed-up. The pages are
//! removed again after each sample (BLOCK, TRACK, REMOVE, PAGE.WBINVD),
//! untimed; the S-EPT pages stay.
//!
//! Run: `cargo bench -p tdx-sim --bench aug_parallel`.

// UNSAFETY: the bench issues raw leaves (tdx_sys::leaf) on the simulator,
// whose memory is simulated, and hands frames to the TD API.
#![allow(unsafe_code)]

use std::{
    sync::Barrier,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tdx_api::{
    CpuId, Cpus, FrameAllocator, InitialRcx, Placement, TdxModule, X2ApicId,
    plan::{MemRange, PlanInput},
    td::{Finalized, GuestFrame, Td, TdConfig, TdHost},
};
use tdx_sim::{MachineDesc, Profile, Simulator};
use tdx_sys::leaf;
use tdx_types::{
    Gpa, Pfn, Size4K,
    regs::{KeyedPa, PageInfo},
};

const GIB: u64 = 1 << 30;
/// Pages each thread maps per sample.
const PAGES: u64 = 1 << 16;
/// GPA region of thread `i` in the one-TD case: `i * REGION`.
const REGION: u64 = PAGES * 4096;

type Sim<'s> = &'s Simulator;
type FinalTd<'h, 's> = Td<Finalized, &'h TdHost<Sim<'s>, Sim<'s>>>;

/// What one thread maps: a TD, its first GPA, its frames.
#[derive(Clone, Copy)]
struct Lane {
    tdr: Pfn,
    hkid: u16,
    gpa: u64,
    frames: Pfn,
}

fn aug_lane(sim: &Simulator, l: Lane) {
    for i in 0..PAGES {
        let info = PageInfo::for_page::<Size4K>(Gpa::new(l.gpa + i * 4096)).unwrap();
        let pfn = Pfn::new(l.frames.as_u64() + i);
        // SAFETY: the frames were allocated for this lane and are not
        // touched; the S-EPT pages above these GPAs exist.
        let c = unsafe { leaf::tdh_mem_page_aug(sim, info, l.tdr, pfn) };
        assert!(!c.status.is_error(), "AUG: {}", c.status);
    }
}

fn remove_lane(sim: &Simulator, l: Lane, shift: u32) {
    let info = |i: u64| PageInfo::for_page::<Size4K>(Gpa::new(l.gpa + i * 4096)).unwrap();
    for i in 0..PAGES {
        // SAFETY: the page was mapped by `aug_lane`.
        let s = unsafe { leaf::tdh_mem_range_block(sim, info(i), l.tdr) }.status;
        assert!(!s.is_error(), "BLOCK: {s}");
    }
    // SAFETY: no vCPU runs; TRACK only bumps the epoch.
    let s = unsafe { leaf::tdh_mem_track(sim, l.tdr) };
    assert!(!s.is_error(), "TRACK: {s}");
    for i in 0..PAGES {
        // SAFETY: blocked and tracked above; the frame goes back to the
        // host after the WBINVD below.
        let s = unsafe { leaf::tdh_mem_page_remove(sim, info(i), l.tdr) }.status;
        assert!(!s.is_error(), "REMOVE: {s}");
        let keyed = KeyedPa::try_new(Pfn::new(l.frames.as_u64() + i).hpa(), l.hkid, shift).unwrap();
        // SAFETY: the page is no longer the TD's.
        let s = unsafe { leaf::tdh_phymem_page_wbinvd(sim, keyed) };
        assert!(!s.is_error(), "WBINVD: {s}");
    }
}

/// CPU time the calling thread has used, in ns (Linux:
/// `/proc/thread-self/schedstat`; 0 elsewhere).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs each lane on its own thread (thread `i` on LP `i`) and returns the
/// wall time from the common start to the last thread's end, and the CPU
/// time the threads spent mapping.
fn timed(sim: &Simulator, lanes: &[Lane]) -> (Duration, u64) {
    let start = Barrier::new(lanes.len());
    let took: Vec<(Instant, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let start = &start;
                s.spawn(move || {
                    let mut t = None;
                    sim.on_cpu(CpuId(i as u32), &mut || {
                        start.wait();
                        let (t0, c0) = (Instant::now(), thread_cpu_ns());
                        aug_lane(sim, l);
                        t = Some((t0, thread_cpu_ns() - c0));
                    });
                    t.unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let end = Instant::now();
    let wall = took.iter().map(|&(t, _)| end - t).max().unwrap();
    (wall, took.iter().map(|&(_, c)| c).sum())
}

fn simulator() -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 20 * GIB)])
            .with_cpus(1, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap()
}

fn host(sim: &Simulator) -> TdHost<Sim<'_>, Sim<'_>> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 20 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(sim, sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .unwrap();
    TdHost::new(module).unwrap()
}

/// A finalized TD whose S-EPT covers `regions` GPA regions of `REGION`
/// bytes from 0 (built by mapping and unmapping one page per 2 MiB through
/// the TD API, which keeps the S-EPT pages).
fn td<'h, 's>(
    sim: &'s Simulator,
    host: &'h TdHost<Sim<'s>, Sim<'s>>,
    regions: u64,
) -> FinalTd<'h, 's> {
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let f = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
    for gpa in (0..regions * REGION).step_by(2 << 20) {
        // SAFETY: a fresh frame, untouched.
        let frame = unsafe { GuestFrame::<Size4K>::new(f) }.unwrap();
        td.map(Gpa::new(gpa), frame).unwrap();
        let back = td.unmap::<Size4K>(Gpa::new(gpa), &|| {}).unwrap();
        assert_eq!(back.pfn(), f);
    }
    td
}

fn bench(c: &mut Criterion) {
    let sim = simulator();
    let host = host(&sim);
    let shift = sim.machine().hkid_start_bit();
    let td0 = td(&sim, &host, 2);
    let td1 = td(&sim, &host, 1);
    // Frames of each lane: 1 GiB apart, so their PAMT and memory shards differ.
    let frames: Vec<Pfn> = (0..2)
        .map(|_| {
            sim.alloc_pages(GIB / 4096, GIB / 4096, Placement::Anywhere)
                .unwrap()
                .first()
        })
        .collect();
    let lane = |td: &FinalTd<'_, '_>, region: u64, f: usize| Lane {
        tdr: td.tdr(),
        hkid: td.hkid(),
        gpa: region * REGION,
        frames: frames[f],
    };
    let cases: [(&str, Vec<Lane>); 4] = [
        ("two_tds/1_thread", vec![lane(&td0, 0, 0)]),
        (
            "two_tds/2_threads",
            vec![lane(&td0, 0, 0), lane(&td1, 0, 1)],
        ),
        ("one_td/1_thread", vec![lane(&td0, 0, 0)]),
        ("one_td/2_threads", vec![lane(&td0, 0, 0), lane(&td0, 1, 1)]),
    ];
    let mut g = c.benchmark_group("aug_parallel");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    // Pages per second and CPU ns per page of every timed pass, per case,
    // for the summary.
    let passes: Vec<std::sync::Mutex<Vec<(f64, f64)>>> =
        cases.iter().map(|_| Default::default()).collect();
    for ((name, lanes), passes) in cases.iter().zip(&passes) {
        let pages = PAGES * lanes.len() as u64;
        g.throughput(Throughput::Elements(pages));
        g.bench_function(*name, |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    let (t, cpu) = timed(&sim, lanes);
                    passes
                        .lock()
                        .unwrap()
                        .push((pages as f64 / t.as_secs_f64(), cpu as f64 / pages as f64));
                    total += t;
                    for &l in lanes {
                        remove_lane(&sim, l, shift);
                    }
                }
                total
            })
        });
    }
    g.finish();
    // The speed-ups, from the same run: median pass of each case, and best
    // pass (on a shared machine whose CPUs change speed, the best passes
    // may come from different speeds: the medians are the figure to
    // quote), and the CPU time each AUG took (median): when two threads
    // take no more CPU per AUG than one, they scale as far as the machine
    // gives them CPUs.
    let stat = |i: usize| {
        let v = passes[i].lock().unwrap();
        let mut rate: Vec<f64> = v.iter().map(|p| p.0).collect();
        let mut cpu: Vec<f64> = v.iter().map(|p| p.1).collect();
        rate.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        (
            rate[rate.len() - 1],
            rate[rate.len() / 2],
            cpu[cpu.len() / 2],
        )
    };
    for (case, one, two) in [("two_tds", 0, 1), ("one_td", 2, 3)] {
        let ((b1, m1, c1), (b2, m2, c2)) = (stat(one), stat(two));
        println!(
            "aug_parallel/{case}: median pass: 1 thread {:.2} M AUG/s, 2 threads {:.2} M AUG/s: \
             2 threads / 1 thread = {:.2} (best passes {:.2} / {:.2} = {:.2}); \
             CPU per AUG {c1:.0} ns (1 thread), {c2:.0} ns (2 threads)",
            m1 / 1e6,
            m2 / 1e6,
            m2 / m1,
            b2 / 1e6,
            b1 / 1e6,
            b2 / b1
        );
    }
    for td in [td0, td1] {
        let report = td.teardown();
        assert!(report.is_clean(), "{report:?}");
    }
    sim.check_invariants().unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
