//! The TDMR/PAMT planner on real memory maps and on synthetic maps of 1024
//! and 4096 regions, both strategies, each outcome printed once (TDMRs,
//! areas, PAMT, PAMTs off their TDMR's node). Target: a 4096-region map
//! plans in well under a millisecond.

use std::{hint::black_box, path::Path};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tdx::api::plan::{self, MemRange, PlanInput, Strategy};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// `n` regions over two nodes: 16 MiB to 4 GiB of memory each, separated by
/// holes of 4 KiB to 64 MiB (deterministic pseudo-random), starting at 1 MiB.
/// With the default limits neither 64 TDMRs nor 16 areas per TDMR are
/// exceeded by the best plan only when CMRs are coarse, so the maps come
/// with one CMR per 64 GiB, which leaves the holes inside CMRs.
fn synthetic(n: usize) -> PlanInput {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut a = MIB;
    let mut usable = Vec::with_capacity(n);
    for i in 0..n {
        let len = (16 + next() % 4080) * MIB;
        let node = u32::from(i >= n / 2);
        usable.push(MemRange {
            start: a,
            end: a + len,
            node,
        });
        a += len + 4096 * (1 + next() % 16384);
    }
    let top = a.next_multiple_of(64 * GIB);
    let cmrs = (0..top / (64 * GIB))
        .map(|k| (k * 64 * GIB, (k + 1) * 64 * GIB))
        .collect();
    let mut input = PlanInput::new(usable);
    input.cmrs = Some(cmrs);
    input
}

fn real_maps() -> Vec<(String, PlanInput)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tdx-plan/testdata/memmaps");
    let mut maps = Vec::new();
    for e in std::fs::read_dir(dir).expect("memory maps").flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let desc =
            tdx_sim::MachineDesc::from_memmap_json(&std::fs::read_to_string(&p).unwrap()).unwrap();
        // With the map's NUMA nodes, as bring-up plans it.
        let name = p.file_stem().unwrap().to_string_lossy()[..2].to_string();
        maps.push((name, desc.plan_input()));
    }
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    maps
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    for n in [1024, 4096] {
        let input = synthetic(n);
        for (name, s) in [("best", Strategy::Best), ("linux", Strategy::Linux)] {
            // Report the outcome once, so the numbers are read in context.
            match plan::plan(&input, s) {
                Ok(p) => eprintln!(
                    "synthetic {n} regions, {name}: {} TDMRs, max {} areas, PAMT {} MiB, {} remote PAMTs",
                    p.tdmrs.len(),
                    p.max_reserved(),
                    p.pamt_bytes() >> 20,
                    p.remote_pamts()
                ),
                Err(e) => eprintln!("synthetic {n} regions, {name}: {e}"),
            }
            g.bench_with_input(
                BenchmarkId::new(format!("synthetic_{name}"), n),
                &input,
                |b, i| b.iter(|| plan::plan(black_box(i), s)),
            );
        }
    }
    for (name, input) in real_maps() {
        for (sname, s) in [("best", Strategy::Best), ("linux", Strategy::Linux)] {
            match plan::plan(&input, s) {
                Ok(p) => eprintln!(
                    "map {name}, {sname}: {} TDMRs, max {} areas, PAMT {} KiB, {} remote PAMTs",
                    p.tdmrs.len(),
                    p.max_reserved(),
                    p.pamt_bytes() >> 10,
                    p.remote_pamts()
                ),
                Err(e) => eprintln!("map {name}, {sname}: {e}"),
            }
            g.bench_with_input(
                BenchmarkId::new(format!("map_{sname}"), &name),
                &input,
                |b, i| b.iter(|| plan::plan(black_box(i), s)),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
