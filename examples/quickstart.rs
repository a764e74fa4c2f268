//! The whole of tdx-rs in one run, on a simulated host: bring the TDX
//! module up from a real machine's memory map, build a Trust Domain with two
//! vCPUs and measured initial memory, finalize it, map private memory by PFN
//! at 4K, 2M and 1G, unmap part of it in one batch, tear everything down,
//! and print what happened.
//!
//! With `--dynamic-pamt` the host runs the simulated module 1.5.16
//! (`Profile::tdx_1_5_16`), which has Dynamic PAMT, and bring-up turns it
//! on: the PAMT at bring-up is the 4K-level bitmap and the 2M and 1G
//! levels, and the library adds a PAMT page pair (8 KiB) for each 2 MiB
//! range while the module holds 4K pages of it. The run then also prints
//! the pairs installed while the TD lives and after teardown (none).
//! `examples/dpamt.rs` measures what that saves and costs on a 1 TiB host.
//!
//! ```text
//! cargo run --release --example quickstart                  # a 2-socket, 128 GiB host
//! cargo run --release --example quickstart -- MAP.json      # another memory map
//! cargo run --release --example quickstart -- --dynamic-pamt [MAP.json]
//! ```

// UNSAFETY: the example hands frames it allocated from the simulated host to
// the TD (`GuestFrame::new`, the caller's promise not to touch them) and
// frees them when the TD gives them back.
#![allow(unsafe_code)]

use std::{cell::Cell, path::PathBuf, time::Instant};

use tdx::{
    Gpa, Leaf, PageSize, Size1G, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        measure::{self, InitialPage},
        td::{AugPageSize, Finalized, GuestFrame, PageRole, Td, TdConfig, TdHost},
    },
    types::PfnRun,
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;

/// The TD of this example: finalized, borrowing its host.
type SimTd<'h, 's> = Td<Finalized, &'h TdHost<&'s Simulator, &'s Simulator>>;

fn main() {
    let mut dynamic_pamt = false;
    let mut map = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--dynamic-pamt" => dynamic_pamt = true,
            a if a.starts_with('-') || map.is_some() => {
                eprintln!("usage: quickstart [--dynamic-pamt] [MAP.json]");
                std::process::exit(2);
            }
            a => map = Some(PathBuf::from(a)),
        }
    }
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tdx-plan/testdata/memmaps/07-hpe-dl360-gen10plus-icx-2s-128g.json");
    let path = map.unwrap_or(default);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| die(&path, e));
    // Module 1.5.01 (the default profile) has no Dynamic PAMT; 1.5.16 has.
    let profile = if dynamic_pamt {
        Profile::tdx_1_5_16()
    } else {
        Profile::tdx_1_5()
    };
    let desc = MachineDesc::from_memmap_json(&text)
        .unwrap_or_else(|e| die(&path, e))
        .with_cpus(2, 4)
        .with_profile(profile);
    let input = desc.plan_input();
    let sim = Simulator::new(desc.clone()).unwrap_or_else(|e| die(&path, e));
    let t0 = Instant::now();

    // 1. Bring-up: init -> configure (plan, PAMTs, keys, TDMRs) -> extensions.
    let mut module = TdxModule::init(&sim, &sim)
        .map_err(|r| r.error)
        .unwrap_or_else(|e| die(&path, e));
    // Dynamic PAMT is used when the module has it, unless refused; this
    // example asks for it explicitly only to make the choice visible.
    module.set_dynamic_pamt(dynamic_pamt);
    if dynamic_pamt && !module.uses_dynamic_pamt() {
        die(&path, "the module or platform cannot run Dynamic PAMT");
    }
    let module = module
        .configure(&input)
        .map_err(|e| e.error.clone())
        .unwrap_or_else(|e| die(&path, e));
    let module = module
        .init_extensions()
        .map_err(|r| r.error.clone())
        .unwrap_or_else(|e| die(&path, e));
    let t_bringup = t0.elapsed();
    let plan = module.plan().expect("configured");
    println!(
        "host: {} ({} packages x {} LPs)",
        path.display(),
        desc.packages,
        desc.lps_per_package
    );
    println!(
        "plan: {} TDMRs, PAMT {} MiB; bring-up {:.1} ms",
        plan.tdmrs.len(),
        plan.pamt_bytes() >> 20,
        t_bringup.as_secs_f64() * 1e3
    );
    if module.dynamic_pamt() {
        let [l4k, l2m, l1g] = plan.tdmrs.iter().fold([0u64; 3], |mut acc, t| {
            for (a, (_, size)) in acc.iter_mut().zip(t.pamt.levels()) {
                *a += size;
            }
            acc
        });
        println!(
            "Dynamic PAMT on (module {}): PAMT at bring-up {} KiB = 4K bitmap {} KiB + 2M level {} KiB + 1G level {} KiB; {} KiB of module pages",
            desc.profile.name,
            plan.pamt_bytes() >> 10,
            l4k >> 10,
            l2m >> 10,
            l1g >> 10,
            (sim.accounting().module * 4096) >> 10
        );
    }

    // 2. A TD: create, keys on every package, TDCS, init, two vCPUs.
    let t1 = Instant::now();
    let host = TdHost::new(module).unwrap_or_else(|r| die(&path, r.error));
    // TD_PARAMS from the typed builder: only max_vcpus is required.
    let params = TdConfig::builder().max_vcpus(2).build().to_params();
    let mut td = host.build_td(&params).unwrap_or_else(|e| die(&path, e));
    // Two vCPUs: one in a single call, one step by step (TDH.VP.CREATE,
    // the TDCX pages, TDH.VP.INIT on its CPU); a failed step hands the
    // builder back for a retry, and the TD cannot be finalized mid-build.
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap_or_else(|e| die(&path, e));
    td.new_vcpu(CpuId(4))
        .and_then(|v| v.add_tdcx().map_err(|f| f.error))
        .and_then(|v| v.init(InitialRcx(0), X2ApicId(1)).map_err(|f| f.error))
        .unwrap_or_else(|e| die(&path, e));

    // 3. Initial memory (a 64 KiB "firmware image"), measured.
    let image: Vec<[u8; 4096]> = (0..16u8)
        .map(|k| std::array::from_fn(|i| (i as u8) ^ k))
        .collect();
    let initial = alloc(&sim, image.len() as u64, 1);
    for (i, page) in image.iter().enumerate() {
        let pfn = tdx::Pfn::new(initial.first().as_u64() + i as u64);
        // SAFETY: allocated above for this TD; untouched until returned.
        let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.expect("a 4K frame");
        td.add_page(Gpa::new(0xFFF0_0000 + 4096 * i as u64), f, page, true)
            .map_err(|f| f.error)
            .unwrap_or_else(|e| die(&path, e));
    }
    let expected = measure::mrtd(image.iter().enumerate().map(|(i, contents)| InitialPage {
        gpa: 0xFFF0_0000 + 4096 * i as u64,
        contents,
        extend: true,
    }));
    let td = td
        .finalize()
        .map_err(|f| f.error)
        .unwrap_or_else(|e| die(&path, e));
    // MRTD as a VMM reads it (TDH.MNG.RD of the six MRTD elements).
    let mrtd = td.mrtd().unwrap_or_else(|e| die(&path, e));
    assert_eq!(mrtd, expected, "the offline MRTD matches the module's");
    assert_eq!(sim.mrtd(td.tdr()), Some(mrtd));
    println!(
        "TD: HKID {}, 2 vCPUs, {} initial pages, MRTD {}… (= offline calculator)",
        td.hkid(),
        image.len(),
        mrtd[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );

    // The kick. Removing private memory (and DEMOTE, PROMOTE) needs every
    // vCPU of this TD out of the guest after TDH.MEM.TRACK, so none keeps a
    // stale translation: in a real VMM this IPIs the CPUs running this TD's
    // vCPUs and waits until each has left the guest at least once. The
    // library calls it holding no lock. Here no vCPU runs (this example
    // never enters one), so there is nothing to interrupt: it only
    // counts.
    let kicks = Cell::new(0u64);
    let kick_vcpus = || kicks.set(kicks.get() + 1);

    // 4. Private memory by PFN: 1 GiB at 1G, 256 MiB at 2M, 64 MiB at 4K.
    let t2 = Instant::now();
    let mut runs = Vec::new();
    let mut mapped = 0u64;
    // A 1 GiB page: the module's PAGE.AUG maps 4K and 2M pages, so the
    // library AUGs 512 2M parts and promotes them.
    let run1g = alloc(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated just now for this TD; untouched until given back.
    let f1g = unsafe { GuestFrame::<Size1G>::new(run1g.first()) }.expect("1G aligned");
    td.map_1g(Gpa::new(4 * GIB), f1g, &kick_vcpus)
        .map_err(|f| f.error)
        .unwrap_or_else(|e| die(&path, e));
    runs.push(run1g);
    mapped += GIB;
    mapped += map_all::<Size2M>(&sim, &td, &mut runs, 6 * GIB, 128, &path);
    mapped += map_all::<Size4K>(&sim, &td, &mut runs, 7 * GIB, 16384, &path);
    let t_map = t2.elapsed();
    let kicks_mapping = kicks.get();
    // While the TD holds its pages: a pair for each 2 MiB range holding 4K
    // pages the module owns (control, S-EPT, initial and 4K-mapped pages);
    // the 1G and 2M pages need none.
    let pairs_running = host.pamt_pairs();

    // 5. Unmap half of the 4K and 2M memory while the TD lives, in one
    //    batch: each page is blocked (TDH.MEM.RANGE.BLOCK), then one
    //    TDH.MEM.TRACK and one kick cover them all before the removals.
    //    (`Td::unmap` is a batch of one: a TRACK and a kick per page.)
    let t3 = Instant::now();
    let tracks_before = track_calls(&sim);
    let mut batch = td.zap();
    batch
        .block_range(Gpa::new(6 * GIB), 64 * Size2M::SIZE)
        .unwrap_or_else(|e| die(&path, e));
    batch
        .block_range(Gpa::new(7 * GIB), 8192 * Size4K::SIZE)
        .unwrap_or_else(|e| die(&path, e));
    let pages = batch.len();
    let unmapped = batch.commit(&kick_vcpus);
    if !unmapped.is_complete() {
        die(
            &path,
            format!("unmap batch incomplete: {:?}", unmapped.stopped),
        );
    }
    let returned = unmapped.frames_returned() * 4096;
    for run in unmapped.returned() {
        free(&sim, run);
    }
    let t_unmap = t3.elapsed();
    let tracks = track_calls(&sim) - tracks_before;
    let pairs_unmapped = host.pamt_pairs();

    // 6. Teardown: every page back, or reported.
    let t4 = Instant::now();
    let report = td.teardown();
    let t_teardown = t4.elapsed();
    // The frames of each allocation: the unmapped ones were freed above,
    // the rest come back in the report.
    for r in &report.guest_returned {
        free(&sim, *r);
    }
    let _ = runs;
    println!(
        "mapped {} MiB by PFN in {:.1} ms; vCPU kicks: {} (the 1G page's PROMOTE)",
        mapped >> 20,
        t_map.as_secs_f64() * 1e3,
        kicks_mapping
    );
    println!(
        "unmapped {} MiB ({} pages) in one batch in {:.1} ms; TDH.MEM.TRACK calls: {}, vCPU kicks: {}",
        returned >> 20,
        pages,
        t_unmap.as_secs_f64() * 1e3,
        tracks,
        kicks.get() - kicks_mapping
    );
    println!(
        "teardown in {:.1} ms: {} control pages freed, {} MiB of guest frames returned, {} pages leaked, HKID freed: {}",
        t_teardown.as_secs_f64() * 1e3,
        report.freed.len(),
        (report.guest_frames_returned() * 4096) >> 20,
        report.leaked_frames(),
        report.hkid_freed
    );
    for l in &report.leaked {
        println!("  leaked {:?} ({:?}): {}", l.run, l.role, l.reason);
    }
    if host.dynamic_pamt() {
        let pair_pages = report
            .freed
            .iter()
            .filter(|(_, r)| *r == PageRole::Pamt)
            .count();
        println!(
            "Dynamic PAMT pairs: {} installed while the TD held its pages ({} KiB), {} after the unmap (S-EPT pages stay, among the frames), {} after teardown ({} pair pages freed by it); PAMT.ADD {}, PAMT.REMOVE {}",
            pairs_running,
            pairs_running * 8,
            pairs_unmapped,
            host.pamt_pairs(),
            pair_pages,
            leaf_calls(&sim, Leaf::PHYMEM_PAMT_ADD),
            leaf_calls(&sim, Leaf::PHYMEM_PAMT_REMOVE)
        );
        if host.pamt_pairs() != 0 {
            std::process::exit(1);
        }
    }
    let a = sim.accounting();
    println!(
        "host pages: {} free, {} host, {} module (PAMT), {} leaked; total time {:.1} ms (TD part {:.1} ms)",
        a.free,
        a.host,
        a.module,
        a.leaked,
        t0.elapsed().as_secs_f64() * 1e3,
        t1.elapsed().as_secs_f64() * 1e3
    );
    match sim.check_invariants() {
        Ok(()) if sim.violations().is_empty() => println!("simulator invariants: ok"),
        Ok(()) => {
            println!("rule violations: {:?}", sim.violations());
            std::process::exit(1);
        }
        Err(e) => {
            println!("simulator invariants: {e}");
            std::process::exit(1);
        }
    }
}

/// Allocates `count` pages of size `S` one by one and maps them from `gpa`
/// on; returns the bytes mapped.
fn map_all<S: AugPageSize>(
    sim: &Simulator,
    td: &SimTd<'_, '_>,
    runs: &mut Vec<PfnRun>,
    gpa: u64,
    count: u64,
    path: &std::path::Path,
) -> u64 {
    let frames = S::SIZE / 4096;
    for i in 0..count {
        let run = alloc(sim, frames, frames);
        runs.push(run);
        // SAFETY: allocated just now for this TD; the example does not touch
        // it until the TD gives it back.
        let f = unsafe { GuestFrame::<S>::new(run.first()) }.expect("aligned by the allocator");
        td.map(Gpa::new(gpa + i * S::SIZE), f)
            .map_err(|f| f.error)
            .unwrap_or_else(|e| die(path, e));
    }
    count * S::SIZE
}

/// TDH.MEM.TRACK calls so far.
fn track_calls(sim: &Simulator) -> u64 {
    leaf_calls(sim, Leaf::MEM_TRACK)
}

/// Calls of `leaf` so far.
fn leaf_calls(sim: &Simulator, leaf: Leaf) -> u64 {
    let stats = sim.stats();
    stats.seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

fn alloc(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere)
        .expect("host memory")
}

fn free(sim: &Simulator, run: PfnRun) {
    // SAFETY: the TD gave the frames back (unmapped or reclaimed and
    // flushed); they came from this simulator.
    unsafe { sim.free_pages(run) };
}

fn die(path: &std::path::Path, e: impl std::fmt::Display) -> ! {
    eprintln!("{}: {e}", path.display());
    std::process::exit(1);
}
