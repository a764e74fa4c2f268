//! Private-memory mapping throughput through the safe TD API on `tdx-sim`:
//! 1 Mi 4K TDH.MEM.PAGE.AUGs, 4096 2M AUGs, and removing the same pages
//! (BLOCK, TRACK, kick, REMOVE, PAGE.WBINVD per 4K frame).
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
    types::abi::{EptPageWalk, EptpControls, TdParams},
};
use tdx_sim::{MachineDesc, Profile, Simulator};

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
    let mut params = TdParams::new();
    params.set_xfam(3);
    params.set_max_vcpus(1);
    params.set_eptp_controls(EptpControls::write_back(EptPageWalk::FourLevel));
    params.set_tsc_frequency(100);
    params.set_config_flags(TdParams::CONFIG_FLAG_NO_RBP_MOD);
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
