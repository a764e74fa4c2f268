//! Memory stays proportional to the pages touched: a TD with many AUGed 4K
//! pages (nobody writes them) costs the simulator metadata, not the pages.
//!
//! `td_with_65536_pages` (256 MiB of guest memory) takes about a second in
//! a debug build; `td_with_a_million_pages` (4 GiB of guest memory, 2048
//! S-EPT PT pages) about 8 s (under 1 s in release). Both print their figures
//! with `cargo test -p tdx-sim --test td_footprint -- --nocapture`.
//!
//! The measure is `Simulator::footprint_bytes` (page contents stored, range
//! map entries, and the heap bytes of the PAMT and S-EPT maps) and, for the
//! record, the growth of the process's resident set.

mod td_support;

use std::time::Instant;

use td_support::*;
use tdx_sim::{MachineDesc, Profile, Simulator, testkit};
use tdx_types::{Pfn, regs::SeptState};

/// Resident set size of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * PAGE)
}

struct Figures {
    pages: u64,
    sept_pages: u64,
    footprint: u64,
    rss_growth: u64,
    secs: f64,
}

/// AUGs `n` 4K pages (GPA 0 up) into one running TD on a machine with
/// enough TDMR memory, and measures what it cost.
fn aug_pages(n: u64) -> Figures {
    let gib = (n * PAGE).div_ceil(GIB) + 1;
    let memory = (4 * GIB, (4 + gib) * GIB);
    let sim = Simulator::new(
        MachineDesc::new(vec![memory])
            .with_cpus(1, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    testkit::bring_up(
        &sim,
        &testkit::simple_layout(&[memory], gib),
        Default::default(),
    );
    let rss0 = rss_bytes();
    let start = Instant::now();
    let mut td = Td::build(&sim, Stage::Runnable);
    let before_sept = td.runs.len() as u64;
    for gpa in (0..n * PAGE).step_by(2 << 20) {
        td.map_sept(&sim, gpa, 1);
    }
    let sept_pages = td.runs.len() as u64 - before_sept;
    let run = td.run(&sim, n, 1);
    for i in 0..n {
        let c = page_aug(
            &sim,
            info(i * PAGE, 0),
            td.tdr,
            Pfn::new(run.first().as_u64() + i),
        );
        ok("PAGE.AUG", c.status);
    }
    let secs = start.elapsed().as_secs_f64();
    // Spot checks: the last page is PENDING at its GPA and owned by the TD.
    let last = Pfn::new(run.first().as_u64() + n - 1);
    assert_eq!(
        sept_state(&sim, td.tdr, (n - 1) * PAGE, 0),
        (SeptState::PENDING, Some(last.hpa().as_u64()))
    );
    assert_eq!(rdmd(&sim, last).1, td.tdr.hpa().as_u64());
    sim.check_invariants().unwrap();
    Figures {
        pages: n,
        sept_pages,
        footprint: sim.footprint_bytes() as u64,
        rss_growth: rss_bytes().saturating_sub(rss0),
        secs,
    }
}

fn report(f: &Figures) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{} AUGed 4K pages ({:.0} MiB of guest memory), {} S-EPT pages, {:.1} s: \
         footprint_bytes {:.1} MiB ({:.1} bytes/page); RSS grew {:.1} MiB",
        f.pages,
        mib(f.pages * PAGE),
        f.sept_pages,
        f.secs,
        mib(f.footprint),
        f.footprint as f64 / f.pages as f64,
        mib(f.rss_growth),
    );
}

#[test]
fn td_with_65536_pages() {
    let f = aug_pages(1 << 16);
    report(&f);
    assert_eq!(f.sept_pages, 1 + 1 + 128, "PDPT, PD, 128 PTs");
    // 256 MiB of pages; the simulator's share must be a small fraction.
    assert!(f.footprint < 8 << 20, "more than 8 MiB");
}

#[test]
fn td_with_a_million_pages() {
    let f = aug_pages(1 << 20);
    report(&f);
    assert_eq!(f.sept_pages, 1 + 4 + 2048, "PDPT, 4 PDs, 2048 PTs");
    // 4 GiB of pages; the simulator's share is far below: about 56 bytes
    // a page (a 24-byte PAMT entry and a 16-byte S-EPT entry, each with
    // its chunk's share of the unused slots, plus the ownership range map).
    assert!(f.footprint < 96 << 20, "more than 96 MiB");
    assert!(f.rss_growth < 512 << 20, "RSS grew by more than 512 MiB");
}
