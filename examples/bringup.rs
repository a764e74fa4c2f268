//! Brings the TDX module up through the safe API on a simulated host built
//! from a real machine's memory map: plan, PAMTs, TDH.SYS.CONFIG, keys,
//! TDMR initialization, and the Extensions, then prints the plan and what it
//! took.
//!
//! ```text
//! cargo run --release --example bringup                  # the largest shared map
//! cargo run --release --example bringup -- MAP.json ext  # another map, with Extensions
//! ```

use std::{path::PathBuf, time::Instant};
use tdx::api::Cpus;

use tdx::api::TdxModule;
use tdx_sim::{MachineDesc, Profile, Simulator};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tdx-plan/testdata/memmaps/05-lenovo-sr650v2-icx-2s-512g.json");
    let path = args.first().map(PathBuf::from).unwrap_or(default);
    let profile = if args.iter().any(|a| a == "ext") {
        Profile::tdx_1_5_ext()
    } else {
        Profile::tdx_1_5()
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(2);
        }
    };
    let desc = match MachineDesc::from_memmap_json(&text) {
        Ok(d) => d.with_cpus(2, 8).with_profile(profile),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(2);
        }
    };
    let input = desc.plan_input();
    let sim = Simulator::new(desc.clone()).unwrap_or_else(|e| {
        eprintln!("cannot build the host: {e}");
        std::process::exit(2);
    });

    let t = Instant::now();
    let module = match TdxModule::init(&sim, &sim) {
        Ok(m) => m,
        Err(r) => fail("init", &r.error, &sim),
    };
    let module = match module.configure(&input) {
        Ok(m) => m,
        Err(e) => fail("configure", &e.error, &sim),
    };
    let module = match module.init_extensions() {
        Ok(m) => m,
        Err(r) => fail("extensions", &r.error, &sim),
    };
    let elapsed = t.elapsed();

    let plan = module.plan().expect("configured");
    println!(
        "host: {} ({} packages x {} LPs, profile {})",
        path.display(),
        desc.packages,
        desc.lps_per_package,
        desc.profile.name
    );
    println!("{plan}");
    let usable: u64 = desc.memory.iter().map(|&(s, e)| e - s).sum();
    println!(
        "TDMRs {}, most reserved areas in one TDMR {}, PAMT {} KiB ({:.3}% of {} GiB usable)",
        plan.tdmrs.len(),
        plan.max_reserved(),
        plan.pamt_bytes() >> 10,
        plan.pamt_bytes() as f64 * 100.0 / usable as f64,
        usable >> 30
    );
    if module.pool_pages() > 0 {
        println!("extension pool: {} pages donated", module.pool_pages());
    }
    let st = module.stats();
    println!(
        "SEAMCALLs {} (retries {}, re-plans {}), WBINVD {}, time {:.1} ms",
        st.seamcalls,
        st.retries,
        st.replans,
        sim.stats().wbinvd,
        elapsed.as_secs_f64() * 1e3
    );
    let a = sim.accounting();
    println!(
        "pages: {} free, {} host, {} module, {} leaked",
        a.free, a.host, a.module, a.leaked
    );
    match sim.check_invariants() {
        Ok(()) => println!("simulator invariants: ok"),
        Err(e) => {
            println!("simulator invariants: {e}");
            std::process::exit(1);
        }
    }
    let _ = sim.cpus();
}

fn fail(step: &str, e: &tdx::api::module::BringUpError, sim: &Simulator) -> ! {
    eprintln!("bring-up failed at {step}: {e}");
    if let Err(v) = sim.check_invariants() {
        eprintln!("simulator: {v}");
    }
    std::process::exit(1);
}
