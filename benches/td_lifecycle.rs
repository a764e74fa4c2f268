//! A TD's life on the simulator, timed (wall clock; a rough figure on a
//! shared machine, so each figure is the median of repeated runs with its
//! minimum and maximum):
//!
//! - build: `TdHost::build_td` (TDH.MNG.CREATE, KEY.CONFIG, TDH.MNG.INIT),
//!   one vCPU (`create_vcpu`), `finalize`; and the teardown of that empty
//!   TD;
//! - run loop: a guest asking CPUID of the hypervisor range in a loop, the
//!   host entering (`Vcpu::enter`), decoding the TDVMCALL and replying
//!   (`reply_cpuid`): exits handled per second (each exit is a hand-off
//!   between the host's thread and the simulator's guest thread);
//! - teardown of a TD with 1 Mi 4K pages (4 GiB) mapped: `Td::teardown`,
//!   which reclaims and writes back every page.
//!
//! Run: `cargo bench --bench td_lifecycle`.

// UNSAFETY: hands frames allocated from the simulator to the TD.
#![allow(unsafe_code)]

#[allow(
    dead_code,
    reason = "shared with the mapping benches; this one uses part of it"
)]
mod mapping;

use std::time::{Duration, Instant};

use tdx::{
    api::{CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, X2ApicId, td::TdConfig},
    types::exit::{TdExit, VmcallRegs, VmcallRequest, subfunction},
};

/// RDX, RBX, RSI, RDI, R8-R15, as Linux guests expose them.
const EXPOSE: u64 = 0xFFCC;

fn report(what: &str, mut d: Vec<Duration>, per: Option<(f64, &str)>) {
    d.sort();
    let (min, med, max) = (d[0], d[d.len() / 2], d[d.len() - 1]);
    match per {
        None => println!(
            "{what}: median {med:.2?} (min {min:.2?}, max {max:.2?}, {} runs)",
            d.len()
        ),
        Some((n, unit)) => {
            let rate = |t: Duration| n / t.as_secs_f64();
            println!(
                "{what}: median {:.0} {unit}/s (min {:.0}, max {:.0}, {} runs of {n})",
                rate(med),
                rate(max),
                rate(min),
                d.len()
            )
        }
    }
}

fn main() {
    let sim = mapping::simulator();
    let host = mapping::host(&sim);

    // Build and teardown of an empty TD.
    let (mut build, mut down) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        let td = mapping::finalized(&host);
        build.push(t.elapsed());
        let t = Instant::now();
        let r = td.teardown();
        down.push(t.elapsed());
        assert!(r.is_clean(), "{r:?}");
    }
    report("TD build (create, 1 vCPU, finalize)", build, None);
    report("teardown of an empty TD", down, None);

    // The run loop.
    const EXITS: u64 = 10_000;
    const RUNS: u64 = 7;
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let id = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    sim.set_guest(id.tdvpr, |g| {
        for _ in 0..EXITS * RUNS {
            let regs = VmcallRegs {
                r11: subfunction::CPUID,
                r12: 0x4000_0000,
                ..VmcallRegs::default()
            };
            let r = g.vmcall(EXPOSE, regs).expect("a valid exposure");
            assert_eq!(r.r12, 0x4000_0001);
        }
        g.halt();
    });
    let mut v = td.vcpu(id).unwrap();
    sim.set_lp(0);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut n = 0;
        while n < EXITS {
            match v.enter(CpuId(0)) {
                Ok(TdExit::Vmcall { .. }) => match v.vmcall().unwrap().unwrap() {
                    VmcallRequest::Cpuid { .. } => {
                        v.reply_cpuid([0x4000_0001, 0, 0, 0]).unwrap();
                        n += 1;
                    }
                    other => panic!("unexpected TDVMCALL {other:?}"),
                },
                Ok(TdExit::Async { .. }) => {}
                Ok(other) => panic!("unexpected exit {other:?}"),
                Err(e) if e.is_contention() => {}
                Err(e) => panic!("enter: {e}"),
            }
        }
        runs.push(t.elapsed());
    }
    report(
        "run loop (CPUID TDVMCALL: enter, decode, reply)",
        runs,
        Some((EXITS as f64, "exits")),
    );
    // The halt.
    loop {
        if let Ok(TdExit::Vmcall { .. }) = v.enter(CpuId(0))
            && let Some(Ok(VmcallRequest::Hlt { .. })) = v.vmcall()
        {
            break;
        }
    }
    drop(v);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:?}");

    // Teardown of a TD with 1 Mi 4K pages.
    const PAGES: u64 = 1 << 20;
    let mut down = Vec::new();
    for _ in 0..3 {
        let td = mapping::finalized(&host);
        let frames = sim.alloc_pages(PAGES, 1, Placement::Anywhere).unwrap();
        mapping::map_4k(&td, frames.first(), PAGES);
        let t = Instant::now();
        let r = td.teardown();
        down.push(t.elapsed());
        assert!(r.is_clean(), "{r:?}");
        // SAFETY: the teardown reclaimed and wrote back every page (clean
        // report); they are the bench's again.
        unsafe { sim.free_pages(frames) };
    }
    report("teardown of a TD with 1 Mi 4K pages", down, None);
    sim.check_invariants().unwrap();
}
