//! What Dynamic PAMT saves and what it costs, on a simulated 1 TiB host
//! (module 1.5.16, `Profile::tdx_1_5_16`), static and dynamic side by side
//! in one run:
//!
//! 1. PAMT bytes at bring-up: the same host brought up twice, once with the
//!    static PAMT (`set_dynamic_pamt(false)`) and once with Dynamic PAMT.
//! 2. Dynamic PAMT's run-time cost is one page pair (8 KiB) per 2 MiB range
//!    holding any 4K page the module owns: a slice of 16 ranges filled with
//!    4K pages adds as many pairs as 16 ranges holding one 4K page each.
//! 3. PAMT bytes with a TD holding 10%, 50% and 100% of memory at 4K (one
//!    4K page in each 2 MiB range, which costs what filling the range does,
//!    as step 2 measures) and at 2M (no pairs: only the ranges of the
//!    S-EPT and control pages have one).
//! 4. The cost of a 4K map, static and dynamic: nanoseconds, SEAMCALLs
//!    and instructions per map, for contiguous frames (one PAMT.ADD per
//!    512 maps) and for one frame per 2 MiB range (a PAMT.ADD on every
//!    map). The instructions come from a second copy of this program run
//!    under callgrind (`valgrind --tool=callgrind`, if installed) doing the
//!    same passes on a 32 GiB host: the inclusive counts of the four
//!    `measured_*` functions. `--no-icount` skips it.
//!
//! Everything is torn down at the end: every pair removed, every page back,
//! the simulator's invariants checked.
//!
//! ```text
//! cargo run --release --example dpamt                   # a 1 TiB host, about 1 min, 7 GB
//! cargo run --release --example dpamt -- 64             # a 64 GiB host (CI), 30 s
//! cargo run --release --example dpamt -- 64 --no-icount # without callgrind
//! ```

// UNSAFETY: the example hands frames it allocated from the simulated host to
// TDs (`GuestFrame::new`, the caller's promise not to touch them) and frees
// them when the TDs give them back.
#![allow(unsafe_code)]

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use tdx::{
    Gpa, Leaf, PageSize, Pfn, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        td::{AugPageSize, Finalized, GuestFrame, PageRole, Td, TdConfig, TdHost},
    },
    types::PfnRun,
};
use tdx_sim::{Accounting, MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// 4 KiB frames in a 2 MiB range.
const RANGE: u64 = 512;
/// Where the host's memory starts.
const BASE: u64 = 4 * GIB;

type Host<'s> = TdHost<&'s Simulator, &'s Simulator>;
type SimTd<'h, 's> = Td<Finalized, &'h Host<'s>>;

/// One host: its simulator, its TD host and what bring-up left.
struct Side<'s> {
    name: &'static str,
    sim: &'s Simulator,
    host: Host<'s>,
    /// The plan's PAMT bytes per level (4K level or bitmap, 2M, 1G).
    levels: [u64; 3],
    /// Pages the module owned after bring-up (the PAMT).
    module_pages: u64,
    /// The accounting after bring-up, before any TD.
    baseline: Accounting,
}

/// Set in the environment of the copy of this example that runs under
/// callgrind: it runs the measured passes of step 4 only.
const ICOUNT_CHILD: &str = "TDX_DPAMT_ICOUNT_CHILD";
/// The child's host (GiB) and maps per pass.
const ICOUNT_GIB: u64 = 32;
const ICOUNT_N: u64 = 4096;

fn main() {
    let mut gib = 1024;
    let mut icount = true;
    for a in std::env::args().skip(1) {
        match (a.as_str(), a.parse()) {
            ("--no-icount", _) => icount = false,
            (_, Ok(g)) if (8..=16384).contains(&g) => gib = g,
            _ => {
                eprintln!(
                    "usage: dpamt [GIB] [--no-icount]   (host memory in GiB, 8..=16384; default 1024)"
                );
                std::process::exit(2);
            }
        }
    }
    if let Ok(which) = std::env::var(ICOUNT_CHILD) {
        icount_child(&which);
        return;
    }
    let t0 = Instant::now();
    let desc = MachineDesc::new(vec![(BASE, BASE + gib * GIB)])
        .with_cpus(2, 2)
        .with_profile(Profile::tdx_1_5_16());
    let static_sim = Simulator::new(desc.clone()).expect("the simulated host");
    let dynamic_sim = Simulator::new(desc.clone()).expect("the simulated host");

    // 1. Bring-up, static and dynamic.
    println!(
        "host: {gib} GiB at {:#x}, {} packages x {} LPs, module {}",
        BASE, desc.packages, desc.lps_per_package, desc.profile.name
    );
    let st = bring_up("static", &static_sim, &desc, false);
    let dy = bring_up("dynamic", &dynamic_sim, &desc, true);
    println!();
    println!("1. PAMT at bring-up (module pages x 4 KiB, = the plan's PAMT bytes)");
    println!(
        "   {:<8} {:>14} {:>14} {:>12} {:>12} {:>9}",
        "", "PAMT bytes", "4K level", "2M level", "1G level", "% of RAM"
    );
    for s in [&st, &dy] {
        let bytes = s.module_pages * 4096;
        println!(
            "   {:<8} {:>14} {:>14} {:>12} {:>12} {:>8.4}%",
            s.name,
            human(bytes),
            human(s.levels[0]),
            human(s.levels[1]),
            human(s.levels[2]),
            bytes as f64 * 100.0 / (gib * GIB) as f64
        );
    }
    println!(
        "   dynamic/static: {:.4} ({}x smaller); the dynamic 4K level is the bitmap, 1 bit per 4K page",
        dy.module_pages as f64 / st.module_pages as f64,
        st.module_pages / dy.module_pages.max(1)
    );

    // 2. Filling a range costs what one page in it costs.
    slice_check(&dy);

    // 3. PAMT bytes with a TD holding X% of memory, at 4K and at 2M.
    let ranges_total = gib * GIB / (2 * MIB);
    let rows4k = hold_4k(&dy, ranges_total);
    let rows2m = hold_2m(&dy, ranges_total);
    let static_bytes = st.module_pages * 4096;
    println!();
    println!(
        "3. PAMT bytes with a TD holding X% of the {ranges_total} 2 MiB ranges (static: the bring-up PAMT, whatever runs)"
    );
    println!(
        "   {:>4} {:>5} {:>10} {:>8} {:>14} {:>14} {:>10} {:>9}",
        "X%", "size", "ranges", "pairs", "static bytes", "dynamic bytes", "dyn/static", "elapsed"
    );
    for (size, rows) in [("4K", &rows4k), ("2M", &rows2m)] {
        for r in rows {
            let dynamic_bytes = dy.module_pages * 4096 + r.pairs * 8192;
            println!(
                "   {:>4} {:>5} {:>10} {:>8} {:>14} {:>14} {:>10.4} {:>8.2}s",
                r.pct,
                size,
                r.ranges,
                r.pairs,
                human(static_bytes),
                human(dynamic_bytes),
                dynamic_bytes as f64 / static_bytes as f64,
                r.time.as_secs_f64()
            );
        }
    }
    println!(
        "   ranges: 2 MiB ranges holding guest memory, in address order: at 4K one 4K page each (a range filled"
    );
    println!(
        "   with 4K pages has the same one pair, step 2), at 2M one 2M page each. 100% is every range the"
    );
    println!(
        "   allocator could still give (the others hold the PAMT, or the control, S-EPT and pair pages)."
    );
    println!(
        "   static bytes: the bring-up PAMT of step 1, which no TD changes (no PAMT.ADD on the static host)."
    );
    println!(
        "   dynamic bytes = bitmap + 2M + 1G levels + pairs x 8 KiB; pairs counted by the library and, range by"
    );
    println!(
        "   range, by the simulated module (equal in every row). elapsed: the maps so far, simulator time."
    );
    if let (Some(r), Some(_)) = (rows4k.last(), rows2m.last()) {
        println!(
            "   at 100% at 4K Dynamic PAMT costs {} against the static {} ({:+.1}%): a host that fills every",
            human(dy.module_pages * 4096 + r.pairs * 8192),
            human(static_bytes),
            ((dy.module_pages * 4096 + r.pairs * 8192) as f64 / static_bytes as f64 - 1.0) * 100.0
        );
        println!(
            "   2 MiB range with 4K pages pays a pair (8 KiB) where the static 4K level is 512 x 16 bytes (8 KiB)."
        );
    }

    // 4. The cost of a 4K map.
    let n = 1 << 16;
    let (sparse_n, rounds) = (n.min(ranges_total / 4), 3);
    let best = map_cost(&[&st, &dy], n, sparse_n, rounds, &[0, 1]);
    println!();
    println!(
        "4. cost per 4K map through Td::map (best of {rounds} rounds, hosts alternating, S-EPT already built)"
    );
    println!(
        "   {:<34} {:>10} {:>10} {:>7} {:>16} {:>16}",
        "", "static", "dynamic", "ratio", "SEAMCALLs/map", "PAMT.ADDs/map"
    );
    for (j, label) in [
        format!("{n} contiguous frames"),
        format!("{sparse_n} frames, one per 2 MiB range"),
    ]
    .iter()
    .enumerate()
    {
        let (s, d) = (best[0][j], best[1][j]);
        println!(
            "   {:<34} {:>7.0} ns {:>7.0} ns {:>7.2} {:>7.3} / {:<6.3} {:>7.3} / {:.3}",
            label,
            s.ns,
            d.ns,
            d.ns / s.ns,
            s.seamcalls,
            d.seamcalls,
            s.pamt_adds,
            d.pamt_adds
        );
    }
    println!(
        "   (SEAMCALLs and PAMT.ADDs: static / dynamic. A PAMT.ADD is the pair's two pages from the host"
    );
    println!(
        "   allocator plus the SEAMCALL; each unmap pass, timed apart, removes the pairs again. Time and"
    );
    println!(
        "   instructions are the library's, the simulated module's and the simulated host allocator's:"
    );
    println!(
        "   on hardware the SEAMCALLs dominate, one per map, two for the first 4K page of a 2 MiB range)"
    );
    if icount {
        print_icount();
    } else {
        println!("   instructions per map: skipped (--no-icount)");
    }

    // 5. Everything back.
    println!();
    let mut ok = true;
    for s in [&st, &dy] {
        let left = s.host.release_pairs();
        let a = s.sim.accounting();
        let invariants = s.sim.check_invariants();
        let clean = left == 0
            && s.host.pamt_pairs() == 0
            && a == s.baseline
            && invariants.is_ok()
            && s.sim.violations().is_empty();
        ok &= clean;
        println!(
            "{}: pairs installed {}, pages free {} host {} module {} leaked {} (as after bring-up: {}), invariants: {}",
            s.name,
            s.host.pamt_pairs(),
            a.free,
            a.host,
            a.module,
            a.leaked,
            a == s.baseline,
            match invariants {
                Ok(()) if s.sim.violations().is_empty() => "ok".to_string(),
                Ok(()) => format!("{:?}", s.sim.violations()),
                Err(e) => e.to_string(),
            }
        );
    }
    println!("total time {:.1} s", t0.elapsed().as_secs_f64());
    if !ok {
        std::process::exit(1);
    }
}

/// Brings the module up with or without Dynamic PAMT.
fn bring_up<'s>(
    name: &'static str,
    sim: &'s Simulator,
    desc: &MachineDesc,
    dynamic: bool,
) -> Side<'s> {
    let t = Instant::now();
    let mut module = TdxModule::init(sim, sim)
        .map_err(|r| r.error)
        .unwrap_or_else(|e| die("TDX module init", e));
    assert!(module.uses_dynamic_pamt(), "module 1.5.16 has Dynamic PAMT");
    module.set_dynamic_pamt(dynamic);
    let module = module
        .configure(&desc.plan_input())
        .map_err(|e| e.error.clone())
        .unwrap_or_else(|e| die("configure", e))
        .init_extensions()
        .map_err(|r| r.error.clone())
        .unwrap_or_else(|e| die("init_extensions", e));
    assert_eq!(module.dynamic_pamt(), dynamic);
    let plan = module.plan().expect("configured");
    let mut levels = [0u64; 3];
    for tdmr in &plan.tdmrs {
        for (l, (_, size)) in tdmr.pamt.levels().into_iter().enumerate() {
            levels[l] += size;
        }
    }
    let plan_bytes = plan.pamt_bytes();
    let tdmrs = plan.tdmrs.len();
    let module_pages = sim.accounting().module;
    assert_eq!(
        module_pages * 4096,
        plan_bytes,
        "{name}: the module holds the PAMT only"
    );
    let host = TdHost::new(module).unwrap_or_else(|r| die("TdHost", r.error));
    assert_eq!(host.dynamic_pamt(), dynamic);
    println!(
        "bring-up {name}: {tdmrs} TDMRs, PAMT {}, {:.0} ms",
        human(plan_bytes),
        t.elapsed().as_secs_f64() * 1e3
    );
    Side {
        name,
        sim,
        host,
        levels,
        module_pages,
        baseline: sim.accounting(),
    }
}

/// A finalized TD with one vCPU.
fn new_td<'h, 's>(host: &'h Host<'s>) -> SimTd<'h, 's> {
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host
        .build_td(&params)
        .unwrap_or_else(|e| die("TD build", e));
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap_or_else(|e| die("vCPU", e));
    td.finalize()
        .map_err(|f| f.error)
        .unwrap_or_else(|e| die("finalize", e))
}

/// Tears `td` down, checks the report (clean, every pair page listed as
/// PAMT, no pair left) and frees the frames the example allocated.
fn finish(side: &Side<'_>, td: SimTd<'_, '_>, held: &[PfnRun], mapped_frames: u64) -> usize {
    let pairs = side.host.pamt_pairs();
    let report = td.teardown();
    if !report.is_clean() {
        die("teardown", format!("{report:#?}"));
    }
    assert_eq!(
        report.guest_frames_returned(),
        mapped_frames,
        "every mapped frame comes back"
    );
    let pamt_pages = report
        .freed
        .iter()
        .filter(|(_, r)| *r == PageRole::Pamt)
        .count();
    assert_eq!(pamt_pages, 2 * pairs, "the report lists every pair's pages");
    assert_eq!(side.host.pamt_pairs(), 0, "teardown removes every pair");
    for run in held {
        // SAFETY: allocated by this example from this simulator; the TD
        // gave every frame back (the report above).
        unsafe { side.sim.free_pages(*run) };
    }
    pairs
}

fn map_one<S: AugPageSize>(td: &SimTd<'_, '_>, gpa: u64, pfn: Pfn) {
    // SAFETY: every caller passes a frame it allocated for this TD and does
    // not touch until the TD gives it back.
    let f = unsafe { GuestFrame::<S>::new(pfn) }.expect("an aligned frame");
    td.map(Gpa::new(gpa), f)
        .map_err(|f| f.error)
        .unwrap_or_else(|e| die("map", e));
}

/// Pairs the simulated module has installed, counted range by range over
/// the host's memory (independent of the library's count).
fn module_pairs(sim: &Simulator) -> u64 {
    let ram = sim.machine().memory;
    let mut n = 0;
    for (start, end) in ram {
        let mut pfn = start / 4096;
        while pfn < end / 4096 {
            n += u64::from(sim.pamt_pair(Pfn::new(pfn)).is_some());
            pfn += RANGE;
        }
    }
    n
}

/// Step 2: 16 ranges filled with 4K pages against 16 ranges holding one 4K
/// page each, in one TD on the dynamic host.
fn slice_check(dy: &Side<'_>) {
    const SLICE: u64 = 16;
    let (sim, host) = (dy.sim, &dy.host);
    let td = new_td(host);
    let after_build = host.pamt_pairs();
    let full = alloc(sim, SLICE * RANGE, RANGE);
    let sparse = alloc(sim, SLICE * RANGE, RANGE);
    let ranges = |run: PfnRun| (0..SLICE).map(move |r| Pfn::new(run.first().as_u64() + r * RANGE));

    let before = host.pamt_pairs();
    for i in 0..SLICE * RANGE {
        map_one::<Size4K>(&td, i * 4096, Pfn::new(full.first().as_u64() + i));
    }
    let added_full = host.pamt_pairs() - before;
    let counts_full: Vec<u64> = ranges(full)
        .map(|p| sim.pamt_pair(p).map_or(0, |(_, c)| c))
        .collect();

    let before = host.pamt_pairs();
    for r in 0..SLICE {
        map_one::<Size4K>(
            &td,
            GIB + r * 4096,
            Pfn::new(sparse.first().as_u64() + r * RANGE),
        );
    }
    let added_sparse = host.pamt_pairs() - before;
    let counts_sparse: Vec<u64> = ranges(sparse)
        .map(|p| sim.pamt_pair(p).map_or(0, |(_, c)| c))
        .collect();

    println!();
    println!(
        "2. {SLICE} ranges filled with 4K pages vs {SLICE} ranges holding one 4K page each (one TD, dynamic host)"
    );
    println!("   TD build (TDR, TDCS, TDVPR, TDCX, S-EPT root): {after_build} pair(s)");
    println!(
        "   filled:   {} 4K maps, pairs added {added_full}, module's 4K count per range: {}",
        SLICE * RANGE,
        dedup(&counts_full).join(", ")
    );
    println!(
        "   one each: {SLICE} 4K maps, pairs added {added_sparse}, module's 4K count per range: {}",
        dedup(&counts_sparse).join(", ")
    );
    let with_pair = |c: &[u64]| c.iter().filter(|&&c| c > 0).count() as u64;
    assert_eq!(with_pair(&counts_full), SLICE);
    assert_eq!(with_pair(&counts_sparse), SLICE);
    let extra = (added_full + added_sparse).saturating_sub(2 * SLICE as usize);
    if extra == 0 {
        println!(
            "   every one of the {SLICE} ranges has one pair either way, and no other pair was added"
        );
    } else {
        println!(
            "   every one of the {SLICE} ranges has one pair either way; the other {extra} are for ranges of new S-EPT pages"
        );
    }
    finish(dy, td, &[full, sparse], SLICE * RANGE + SLICE);
}

/// Runs of equal values, as `value x count`.
fn dedup(v: &[u64]) -> Vec<String> {
    let mut out: Vec<(u64, usize)> = Vec::new();
    for &x in v {
        match out.last_mut() {
            Some((y, n)) if *y == x => *n += 1,
            _ => out.push((x, 1)),
        }
    }
    out.into_iter().map(|(x, n)| format!("{x} x{n}")).collect()
}

/// A row of step 3.
struct Row {
    pct: u64,
    ranges: u64,
    pairs: u64,
    time: Duration,
}

/// Step 3 at 4K: one TD maps the last 4K frame of each 2 MiB range, in
/// address order, until it holds 10%, 50% and 100% of the ranges. The
/// frames are taken one by one from the allocator at their exact address
/// (`Placement::Exact`); a range whose frame is taken is skipped (it holds
/// the PAMT, or pages the library took for S-EPT pages and pairs).
fn hold_4k(dy: &Side<'_>, ranges_total: u64) -> Vec<Row> {
    let (sim, host) = (dy.sim, &dy.host);
    let td = new_td(host);
    let first = BASE / 4096;
    let mut held = Vec::new();
    let mut next = 0;
    let mut rows = Vec::new();
    let t = Instant::now();
    for pct in [10, 50, 100] {
        let target = ranges_total * pct / 100;
        while (held.len() as u64) < target && next < ranges_total {
            let pfn = Pfn::new(first + next * RANGE + RANGE - 1);
            next += 1;
            let Ok(run) = sim.alloc_pages(1, 1, Placement::Exact(pfn)) else {
                continue;
            };
            map_one::<Size4K>(&td, held.len() as u64 * 4096, pfn);
            held.push(run);
        }
        let pairs = host.pamt_pairs() as u64;
        assert_eq!(
            module_pairs(sim),
            pairs,
            "the library's pairs are the module's"
        );
        rows.push(Row {
            pct,
            ranges: held.len() as u64,
            pairs,
            time: t.elapsed(),
        });
    }
    let n = held.len() as u64;
    finish(dy, td, &held, n);
    rows
}

/// Step 3 at 2M: one TD maps whole 2 MiB ranges as 2M pages, in address
/// order, until it holds 10%, 50% and 100% of the ranges.
fn hold_2m(dy: &Side<'_>, ranges_total: u64) -> Vec<Row> {
    let (sim, host) = (dy.sim, &dy.host);
    let td = new_td(host);
    let first = BASE / 4096;
    let mut held = Vec::new();
    let mut next = 0;
    let mut rows = Vec::new();
    let t = Instant::now();
    for pct in [10, 50, 100] {
        let target = ranges_total * pct / 100;
        while (held.len() as u64) < target && next < ranges_total {
            let pfn = Pfn::new(first + next * RANGE);
            next += 1;
            let Ok(run) = sim.alloc_pages(RANGE, RANGE, Placement::Exact(pfn)) else {
                continue;
            };
            map_one::<Size2M>(&td, held.len() as u64 * Size2M::SIZE, pfn);
            held.push(run);
        }
        let pairs = host.pamt_pairs() as u64;
        assert_eq!(
            module_pairs(sim),
            pairs,
            "the library's pairs are the module's"
        );
        rows.push(Row {
            pct,
            ranges: held.len() as u64,
            pairs,
            time: t.elapsed(),
        });
    }
    let n = held.len() as u64 * RANGE;
    finish(dy, td, &held, n);
    rows
}

/// A measured pass's result.
#[derive(Default, Clone, Copy)]
struct Cost {
    ns: f64,
    seamcalls: f64,
    pamt_adds: f64,
}

// The measured passes, one function each so callgrind can count them
// (each names itself, so the linker cannot fold the four into one).
#[inline(never)]
fn measured_static_dense(td: &SimTd<'_, '_>, frames: &[Pfn]) {
    black_box("static_dense");
    map_pass(td, frames);
}
#[inline(never)]
fn measured_dynamic_dense(td: &SimTd<'_, '_>, frames: &[Pfn]) {
    black_box("dynamic_dense");
    map_pass(td, frames);
}
#[inline(never)]
fn measured_static_sparse(td: &SimTd<'_, '_>, frames: &[Pfn]) {
    black_box("static_sparse");
    map_pass(td, frames);
}
#[inline(never)]
fn measured_dynamic_sparse(td: &SimTd<'_, '_>, frames: &[Pfn]) {
    black_box("dynamic_sparse");
    map_pass(td, frames);
}

/// Maps `frames` at 4K at GPAs 0, 4K, 8K, ...
fn map_pass(td: &SimTd<'_, '_>, frames: &[Pfn]) {
    for (i, &pfn) in frames.iter().enumerate() {
        map_one::<Size4K>(td, i as u64 * 4096, pfn);
    }
}

fn unmap_pass(td: &SimTd<'_, '_>, n: usize) {
    for i in 0..n as u64 {
        let f = td
            .unmap::<Size4K>(Gpa::new(i * 4096), &|| {})
            .unwrap_or_else(|e| die("unmap", e));
        let _ = f.into_range();
    }
}

fn seamcalls(sim: &Simulator) -> (u64, u64) {
    let s = sim.stats();
    let adds = s
        .seamcalls
        .get(&Leaf::PHYMEM_PAMT_ADD.0)
        .copied()
        .unwrap_or(0);
    (s.total_seamcalls(), adds)
}

/// The measured pass of `side` (static or dynamic host), dense or sparse.
fn measured(side: &Side<'_>, sparse: bool) -> (fn(&SimTd<'_, '_>, &[Pfn]), &'static str) {
    match (side.host.dynamic_pamt(), sparse) {
        (false, false) => (measured_static_dense, "measured_static_dense"),
        (false, true) => (measured_static_sparse, "measured_static_sparse"),
        (true, false) => (measured_dynamic_dense, "measured_dynamic_dense"),
        (true, true) => (measured_dynamic_sparse, "measured_dynamic_sparse"),
    }
}

/// Step 4: `n` 4K maps on each host of `sides` of contiguous frames
/// (pass 0), and `sparse_n` of one frame per 2 MiB range (pass 1), the
/// passes in `passes`, after a first pass that built the S-EPT (so the
/// measured passes do the same work on both hosts but for the pairs).
/// Rounds alternate between the hosts; each figure is the best of the
/// rounds. Returns `[dense, sparse]` per host.
fn map_cost(
    sides: &[&Side<'_>],
    n: u64,
    sparse_n: u64,
    rounds: usize,
    passes: &[usize],
) -> Vec<[Cost; 2]> {
    // Per host: the TD, the frames (contiguous, one per range) and the runs.
    let setups: Vec<_> = sides
        .iter()
        .map(|s| {
            let td = new_td(&s.host);
            // The pairs' and S-EPT pages' room: the simulator's allocator is
            // first fit, scanning from the lowest address one 64 MiB slice
            // at a time, so pages freed below the frames are found at once
            // (a real host's page allocator does not scan).
            let room = alloc(
                s.sim,
                (2 * sparse_n + 2 * n / RANGE + 4096).next_multiple_of(RANGE),
                RANGE,
            );
            let dense_run = alloc(s.sim, n, RANGE);
            let sparse_run = alloc(s.sim, sparse_n * RANGE, RANGE);
            // SAFETY: allocated just above, never given to a TD.
            unsafe { s.sim.free_pages(room) };
            let dense: Vec<Pfn> = (0..n)
                .map(|i| Pfn::new(dense_run.first().as_u64() + i))
                .collect();
            let sparse: Vec<Pfn> = (0..sparse_n)
                .map(|i| Pfn::new(sparse_run.first().as_u64() + i * RANGE))
                .collect();
            // Warm-up: the S-EPT for GPAs [0, n x 4K) stays afterwards,
            // and so do the simulator's PAMT entries of every range the
            // passes use (it builds a range's 4K-level entries on first use;
            // a real module's static PAMT is initialized at bring-up).
            for frames in [&dense, &sparse] {
                map_pass(&td, frames);
                unmap_pass(&td, frames.len());
            }
            (td, [dense, sparse], [dense_run, sparse_run])
        })
        .collect();
    let mut best = vec![
        [Cost {
            ns: f64::MAX,
            ..Cost::default()
        }; 2];
        sides.len()
    ];
    for _ in 0..rounds {
        for (k, (s, (td, frames, _))) in sides.iter().zip(&setups).enumerate() {
            for &j in passes {
                let (pass, _) = measured(s, j == 1);
                let frames = &frames[j];
                let (calls0, adds0) = seamcalls(s.sim);
                let t = Instant::now();
                pass(td, frames);
                let ns = t.elapsed().as_nanos() as f64 / frames.len() as f64;
                let (calls1, adds1) = seamcalls(s.sim);
                unmap_pass(td, frames.len());
                let n = frames.len() as f64;
                let c = &mut best[k][j];
                c.ns = c.ns.min(ns);
                c.seamcalls = (calls1 - calls0) as f64 / n;
                c.pamt_adds = (adds1 - adds0) as f64 / n;
            }
        }
    }
    for (s, (td, _, runs)) in sides.iter().zip(setups) {
        finish(s, td, &runs, 0);
    }
    best
}

/// The copy of this example under callgrind: one of step 4's passes
/// (`which`: host 0 static or 1 dynamic, pass 0 dense or 1 sparse), once,
/// on a small host.
fn icount_child(which: &str) {
    let (dynamic, pass) = match which.as_bytes() {
        [k @ b'0'..=b'1', j @ b'0'..=b'1'] => (*k == b'1', usize::from(*j - b'0')),
        _ => die("icount child", format!("bad pass {which:?}")),
    };
    let desc = MachineDesc::new(vec![(BASE, BASE + ICOUNT_GIB * GIB)])
        .with_cpus(2, 2)
        .with_profile(Profile::tdx_1_5_16());
    let sim = Simulator::new(desc.clone()).expect("the simulated host");
    let side = bring_up(
        if dynamic { "dynamic" } else { "static" },
        &sim,
        &desc,
        dynamic,
    );
    map_cost(&[&side], ICOUNT_N, ICOUNT_N, 1, &[pass]);
    assert_eq!(side.host.pamt_pairs(), 0);
    sim.check_invariants().expect("simulator invariants");
}

/// Instructions per map: runs this example again under callgrind (if
/// valgrind is installed), once per pass, in the child mode, counting only
/// inside that pass's `measured_*` function, and reads its inclusive count
/// and the part spent in the simulator (SEAMCALLs, and the host services
/// the library calls: page allocator, CLFLUSH, MOVDIR64B).
fn print_icount() {
    let n = ICOUNT_N;
    let skip = |why: String| {
        println!("   instructions per map: {why}; benches/icount.sh counts them too");
    };
    let Ok(exe) = std::env::current_exe() else {
        return skip("no path to this program".into());
    };
    let t = Instant::now();
    // [dense, sparse] x [static, dynamic]: (all, library).
    let mut counts = [[(0.0, 0.0); 2]; 2];
    for (j, row) in counts.iter_mut().enumerate() {
        for (k, cell) in row.iter_mut().enumerate() {
            match icount_pass(&exe, k, j) {
                Ok((all, sim)) => {
                    *cell = (
                        all as f64 / n as f64,
                        all.saturating_sub(sim) as f64 / n as f64,
                    )
                }
                Err(why) => return skip(why),
            }
        }
    }
    println!(
        "   instructions per 4K map (callgrind, the same passes on a {ICOUNT_GIB} GiB host, {n} maps a pass, {:.0} s):",
        t.elapsed().as_secs_f64()
    );
    println!(
        "   {:<34} {:>10} {:>10} {:>7}   the library's own (static / dynamic)",
        "", "static", "dynamic", "ratio"
    );
    let labels = [
        format!("{n} contiguous frames"),
        format!("{n} frames, one per 2 MiB range"),
    ];
    for (label, [(s, sl), (d, dl)]) in labels.iter().zip(counts) {
        println!(
            "   {label:<34} {s:>10.0} {d:>10.0} {:>7.2}   {sl:.0} / {dl:.0}",
            d / s
        );
    }
    println!(
        "   (the rest is the simulator: its module's leaves, PAMT.ADD included, and its page allocator)"
    );
}

/// One pass under callgrind: its inclusive instructions, and the part of
/// them in the simulator.
fn icount_pass(exe: &std::path::Path, host: usize, pass: usize) -> Result<(u64, u64), String> {
    let name = [
        "measured_static_dense",
        "measured_static_sparse",
        "measured_dynamic_dense",
        "measured_dynamic_sparse",
    ][host * 2 + pass];
    let out = std::env::temp_dir().join(format!("dpamt-callgrind.{}.{name}", std::process::id()));
    let run = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect=dpamt::{name}"))
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe)
        .env(ICOUNT_CHILD, format!("{host}{pass}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("valgrind not run ({e}); install valgrind to count them"))?;
    if !run.status.success() {
        let _ = std::fs::remove_file(&out);
        return Err(format!(
            "the callgrind run failed: {}",
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let annotate = std::process::Command::new("callgrind_annotate")
        .args(["--threshold=100", "--inclusive=yes"])
        .arg(&out)
        .output();
    let _ = std::fs::remove_file(&out);
    let annotate = annotate.map_err(|e| format!("callgrind_annotate not run ({e})"))?;
    let text = String::from_utf8_lossy(&annotate.stdout);
    // callgrind_annotate prints "1,234,567 (12.3%)  file:function [object]".
    let lines = || {
        text.lines().filter_map(|l| {
            let count = l
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse::<u64>()
                .ok()?;
            Some((count, l))
        })
    };
    let all = lines()
        .find(|(_, l)| l.contains(&format!("dpamt::{name} ")))
        .map(|(c, _)| c)
        .ok_or("the measured function is not in the callgrind profile")?;
    let sim = lines()
        .filter(|(_, l)| {
            l.contains("<tdx_sim::sim::Simulator as tdx_sys::args::Seamcall>::seamcall")
                || l.contains("<tdx_sim::sim::Simulator as tdx_api::platform::Platform>::")
        })
        .map(|(c, _)| c)
        .sum();
    Ok((all, sim))
}

fn alloc(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere)
        .expect("host memory")
}

fn human(bytes: u64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.2} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

fn die(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("dpamt: {what}: {e}");
    std::process::exit(1);
}
