//! `TdxPageArray` encode and release check for 1, 512 and 4096 pages: per
//! array, every window is populated (its HPAs written into the root page)
//! and encoded (HPA_ARRAY_T and HPA_LIST_INFO), and checked against the
//! release a module that gave back exactly that window would report. The
//! platform is the simulator, whose `write_phys`/`read_phys` copy into its
//! simulated memory (a kernel's direct map would be a plain copy).
//!
//! Run: `cargo bench --bench page_array`.

// UNSAFETY: the arrays are freed after the bench (`TdxPageArray::free`).
#![allow(unsafe_code)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tdx::api::{Placement, TdxPageArray};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;

fn page_array(c: &mut Criterion) {
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(1, 1)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let mut g = c.benchmark_group("page_array");
    for pages in [1u64, 512, 4096] {
        let mut array = TdxPageArray::alloc(&sim, pages, Placement::Anywhere).unwrap();
        g.throughput(Throughput::Elements(pages));
        g.bench_function(BenchmarkId::new("encode", pages), |b| {
            b.iter(|| {
                let mut offset = 0;
                loop {
                    let n = array.populate(offset);
                    if n == 0 {
                        break;
                    }
                    black_box((array.hpa_array_t(), array.hpa_list_info()));
                    offset += n;
                }
            })
        });
        // The release a module reports for each window: the count, and the
        // page itself (one page) or the root page.
        g.bench_function(BenchmarkId::new("encode+release", pages), |b| {
            b.iter(|| {
                let mut offset = 0;
                loop {
                    let n = array.populate(offset);
                    if n == 0 {
                        break;
                    }
                    let hpa = if n == 1 {
                        array.pages()[offset].hpa().as_u64()
                    } else {
                        array.root().hpa().as_u64()
                    };
                    array.check_release(n as u64, hpa).unwrap();
                    offset += n;
                }
            })
        });
        // SAFETY: never given to a module.
        unsafe { array.free() };
    }
    g.finish();
}

criterion_group!(benches, page_array);
criterion_main!(benches);
