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

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tdx::{
    Gpa, Pfn, Size2M, Size4K,
    api::{
        CpuId, Placement, Platform, TdxModule,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdHost},
    },
    types::regs::{KeyedPa, PageInfo},
};
use tdx_api::td::TdConfig;
use tdx_sim::{MachineDesc, Profile, Simulator};
use tdx_sys::leaf;

const GIB: u64 = 1 << 30;
const N4K: u64 = 1 << 20;
const N2M: u64 = 4096;
const BASE_2M: u64 = 8 * GIB;

type Sim<'s> = &'s Simulator;

fn map_4k(td: &mut Td<'_, Finalized, Sim<'_>, Sim<'_>>, first: Pfn) {
    for i in 0..N4K {
        // SAFETY: the frames were allocated for this TD and are not touched.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

fn unmap_4k(td: &mut Td<'_, Finalized, Sim<'_>, Sim<'_>>) {
    for i in 0..N4K {
        let f = td.unmap::<Size4K>(Gpa::new(i * 4096), &mut || {}).unwrap();
        black_box(f.into_range());
    }
}

/// The raw-leaf equivalent of `map_4k`: CLFLUSH and TDH.MEM.PAGE.AUG per
/// page, no bookkeeping.
fn raw_map_4k(sim: &Simulator, tdr: Pfn, first: Pfn) {
    for i in 0..N4K {
        let pfn = Pfn::new(first.as_u64() + i);
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        sim.clflush_page(pfn);
        // SAFETY: frames allocated for this TD, untouched; S-EPT pages for
        // these GPAs exist (the safe pass made them).
        let c = unsafe { leaf::tdh_mem_page_aug(sim, info, tdr, pfn) };
        assert!(!c.status.is_error(), "{}", c.status);
    }
}

/// The raw-leaf equivalent of `unmap_4k`.
fn raw_unmap_4k(sim: &Simulator, tdr: Pfn, first: Pfn, hkid: u16, shift: u32) {
    for i in 0..N4K {
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        let keyed = KeyedPa::try_new(Pfn::new(first.as_u64() + i).hpa(), hkid, shift).unwrap();
        // SAFETY (the four calls): the page was mapped by `raw_map_4k`;
        // BLOCK, TRACK and REMOVE hand it back, WBINVD writes back the TD's
        // lines.
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(sim, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(sim, tdr) },
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_page_remove(sim, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_phymem_page_wbinvd(sim, keyed) },
        ];
        assert!(s.iter().all(|s| !s.is_error()), "{s:?}");
    }
}

fn map_2m(td: &mut Td<'_, Finalized, Sim<'_>, Sim<'_>>, first: Pfn) {
    for i in 0..N2M {
        // SAFETY: as above.
        let f = unsafe { GuestFrame::<Size2M>::new(Pfn::new(first.as_u64() + i * 512)) }.unwrap();
        td.map(Gpa::new(BASE_2M + i * (2 << 20)), f).unwrap();
    }
}

fn unmap_2m(td: &mut Td<'_, Finalized, Sim<'_>, Sim<'_>>) {
    for i in 0..N2M {
        let f = td
            .unmap::<Size2M>(Gpa::new(BASE_2M + i * (2 << 20)), &mut || {})
            .unwrap();
        black_box(f.into_range());
    }
}

fn bench(c: &mut Criterion) {
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 20 * GIB)])
            .with_cpus(1, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 20 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(&sim, &sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error().clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .unwrap();
    let host = TdHost::new(module, sim.machine().hkid_start_bit());
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host
        .create_td()
        .and_then(|td| td.configure_keys().map_err(|f| f.error))
        .and_then(|td| td.add_tdcs().map_err(|f| f.error))
        .and_then(|td| td.init(&params).map_err(|f| f.error))
        .unwrap();
    td.create_vcpu(CpuId(0), 0, 0).unwrap();
    let mut td = td.finalize().map_err(|f| f.error).unwrap();
    let small = sim.alloc_pages(N4K, 1, Placement::Anywhere).unwrap();
    let huge = sim
        .alloc_pages(N2M * 512, 512, Placement::Anywhere)
        .unwrap();

    let mut g = c.benchmark_group("td_mapping");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    let timed = |td: &mut Td<'_, Finalized, Sim<'_>, Sim<'_>>,
                 iters: u64,
                 measure_map: bool,
                 map: &dyn Fn(&mut Td<'_, Finalized, Sim<'_>, Sim<'_>>),
                 unmap: &dyn Fn(&mut Td<'_, Finalized, Sim<'_>, Sim<'_>>)| {
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
            timed(&mut td, n, true, &|td| map_4k(td, small.first()), &|td| {
                unmap_4k(td)
            })
        })
    });
    g.bench_function("remove_4k_x1Mi", |b| {
        b.iter_custom(|n| {
            timed(&mut td, n, false, &|td| map_4k(td, small.first()), &|td| {
                unmap_4k(td)
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
            raw_map_4k(&sim, tdr, small.first());
            if measure_map {
                total += t.elapsed();
            }
            let t = Instant::now();
            raw_unmap_4k(&sim, tdr, small.first(), hkid, shift);
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
            timed(&mut td, n, true, &|td| map_2m(td, huge.first()), &|td| {
                unmap_2m(td)
            })
        })
    });
    g.bench_function("remove_2m_x4096", |b| {
        b.iter_custom(|n| {
            timed(&mut td, n, false, &|td| map_2m(td, huge.first()), &|td| {
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
