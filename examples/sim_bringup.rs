//! Brings the TDX module up on a simulated host with raw leaves, and prints
//! what it took: TDMRs, PAMT memory, SEAMCALLs by leaf, page accounting.
//!
//! ```text
//! cargo run --release --example sim_bringup            # 2 packages, 256 GiB
//! cargo run --release --example sim_bringup -- 4096 8  # 4 TiB, 8 packages
//! cargo run --release --example sim_bringup -- 64 2 ext  # with Extensions
//! ```
//!
//! The safe bring-up API (`tdx-api`) and the planner for real memory maps
//! are not written yet; this drives the simulator through `tdx-sys`'s raw
//! leaf functions with the simulator's test fixture, on a synthetic host
//! whose memory is one 1 GiB-aligned range.

#[path = "../benches/cpu_time/mod.rs"]
mod cpu_time;

use std::time::Instant;

use tdx_sim::{MachineDesc, Profile, Simulator, seamcalls_by_name, testkit};

const GIB: u64 = 1 << 30;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gib: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let packages: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let profile = match args.get(2).map(String::as_str) {
        Some("ext") => Profile::tdx_1_5_ext(),
        _ => Profile::tdx_1_5(),
    };
    let memory = vec![(4 * GIB, (4 + gib) * GIB)];
    let desc = MachineDesc::new(memory.clone())
        .with_cpus(packages, 4)
        .with_profile(profile);
    let profile_name = desc.profile.name;
    let sim = match Simulator::new(desc) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot build the host: {e}");
            std::process::exit(2);
        }
    };
    let tdmrs = testkit::simple_layout(&memory, 64);
    let t = Instant::now();
    let cpu0 = cpu_time::thread_cpu();
    let report = testkit::bring_up(&sim, &tdmrs, Default::default());
    let cpu = cpu_time::thread_cpu() - cpu0;
    let elapsed = t.elapsed();

    println!(
        "host: {gib} GiB at 4 GiB, {packages} packages x 4 LPs, module profile {profile_name}"
    );
    println!("TDMRs: {}", tdmrs.len());
    for (i, t) in tdmrs.iter().enumerate().take(4) {
        let pamt: u64 = [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()]
            .iter()
            .map(|p| p.1)
            .sum();
        println!(
            "  TDMR {i}: [{:#x}, {:#x}) PAMT {} KiB at {:#x}, {} reserved area(s)",
            t.base(),
            t.base() + t.size(),
            pamt >> 10,
            t.pamt_4k().0,
            t.reserved_areas().count()
        );
    }
    if tdmrs.len() > 4 {
        println!("  ... {} more", tdmrs.len() - 4);
    }
    let pamt_pages: u64 = report.pamt_runs.iter().map(|r| r.count()).sum();
    println!(
        "PAMT: {} MiB ({:.3}% of memory)",
        (pamt_pages * 4096) >> 20,
        (pamt_pages * 4096) as f64 * 100.0 / (gib * GIB) as f64
    );
    if let Some(pool) = report.pool {
        println!("extension pool: {} pages donated", pool.count());
    }
    let stats = sim.stats();
    let mut calls: Vec<_> = seamcalls_by_name(&stats).into_iter().collect();
    calls.sort();
    println!("SEAMCALLs: {}", stats.total_seamcalls());
    for (leaf, n) in calls {
        println!("  {leaf}: {n}");
    }
    let a = sim.accounting();
    println!(
        "pages: {} free, {} host, {} module, {} leaked (of {})",
        a.free, a.host, a.module, a.leaked, a.total
    );
    let cpu = format!(" ({:.1} ms on the CPU)", cpu.as_secs_f64() * 1e3);
    println!(
        "module state: {:?}, time {:.1} ms{cpu}",
        sim.module_state(),
        elapsed.as_secs_f64() * 1e3
    );
    match sim.check_invariants() {
        Ok(()) => println!("invariants: ok"),
        Err(e) => {
            println!("invariants: {e}");
            std::process::exit(1);
        }
    }
}
