//! The checked-in replay trace of a whole TD: bring-up, then build (create,
//! keys on both packages, TDCS, init, two vCPUs on LPs of different
//! packages, S-EPT, a measured page), finalize, MRTD read back, runtime
//! (AUG 4K and 2M, BLOCK/TRACK/REMOVE, PAGE.WBINVD), the wrong-order
//! teardown steps the module refuses, and the canonical teardown (VP.FLUSH,
//! VPFLUSHDONE, CACHE.WB, KEY.FREEID, RECLAIM), all through raw leaves driven
//! through `tdx_sim::trace::Recorder`.
//!
//! `traces/td-lifecycle.jsonl` is regenerated with
//! `TDX_SIM_BLESS=1 cargo test -p tdx-sim --test td_trace`; review the diff.

mod td_support;

use std::{
    fs,
    path::{Path, PathBuf},
};
use tdx_api::Cpus;

use serde_json::Value;
use td_support::*;
use tdx_sim::{
    KotState, MachineDesc, Profile, Simulator, SysState, testkit,
    trace::{self, Recorder, Trace},
};
use tdx_types::{Gpa, Leaf, TdxStatus, metadata::MdFieldId, regs::KeyedPa};

const TRACE: &str = "td-lifecycle.jsonl";

fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join(TRACE)
}

/// 1 GiB of RAM at 1 GiB, two packages of two LPs, module 1.5, one TDMR.
fn machine() -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(GIB, 2 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap()
}

/// The whole lifecycle on `h` (the recorder). Asserts every status as it
/// goes, so the recording is the run the tests describe.
fn lifecycle<H: SimHost + ?Sized>(h: &H) {
    let profile = Profile::tdx_1_5();
    testkit::bring_up_on(
        h,
        &profile,
        &testkit::simple_layout(&[(GIB, 2 * GIB)], 1),
        Default::default(),
    );
    // Build.
    let mut td = Td::build(h, Stage::VcpuReady);
    td.add_vcpu(h, 2);
    let contents: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    td.add_page(h, 0, &contents);
    for chunk in 0..16 {
        ok(
            "MR.EXTEND",
            mr_extend(h, td.tdr, Gpa::new(chunk * 256)).status,
        );
    }
    ok("MR.FINALIZE", mr_finalize(h, td.tdr));
    for i in 0..6 {
        let id = MdFieldId::from_raw(tdx_types::metadata::field::TD_MRTD.into_raw() + i);
        ok("MNG.RD MRTD", mng_rd(h, td.tdr, id).status);
    }
    // Run: map and unmap.
    td.aug(h, 0x1000, 0);
    td.aug(h, 2 * MIB, 1);
    let c = page_remove(h, info(0x1000, 0), td.tdr);
    assert_eq!(
        c.status,
        e(TdxStatus::GPA_RANGE_NOT_BLOCKED, tdx_types::OperandId::RCX)
    );
    let removed = td.block_track_remove(h, 0x1000, 0);
    let shift = keyid_shift_of(h);
    ok(
        "PAGE.WBINVD",
        page_wbinvd(h, KeyedPa::try_new(removed.hpa(), td.hkid, shift).unwrap()),
    );
    // Teardown out of order: refused.
    assert_eq!(mng_vpflushdone(h, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    let t0 = td.vcpus[0].tdvpr;
    assert_eq!(on(h, 3, || vp_flush(h, t0)), TdxStatus::VCPU_NOT_ASSOCIATED);
    assert_eq!(
        page_reclaim(h, td.tdcs[0]).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    td.flush_vcpus(h);
    ok("VPFLUSHDONE", mng_vpflushdone(h, td.tdr));
    assert_eq!(mng_key_freeid(h, td.tdr), TdxStatus::WBCACHE_NOT_COMPLETE);
    Td::cache_wb_all(h);
    assert_eq!(
        page_reclaim(h, td.tdr).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    ok("KEY.FREEID", mng_key_freeid(h, td.tdr));
    assert_eq!(
        page_reclaim(h, td.tdr).status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    // The canonical rest: every child, the TDR last, WBINVD of the TDR
    // with the global KeyID.
    td.reclaim_children(h);
    ok("RECLAIM TDR", page_reclaim(h, td.tdr).status);
    td.free_all(h);
}

/// Records the lifecycle on a fresh machine; returns the trace and the
/// simulator it ran on.
fn record() -> (String, Simulator) {
    let sim = machine();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    lifecycle(&rec);
    let bytes = rec.finish().unwrap();
    (String::from_utf8(bytes).unwrap(), sim)
}

#[test]
fn recording_the_lifecycle_leaves_the_machine_clean() {
    let (text, sim) = record();
    sim.check_invariants().unwrap();
    let a = sim.accounting();
    // Only the PAMT is left with the module; the TD's HKID is free again.
    assert_eq!(
        a.module,
        testkit::pamt_sizes(GIB).iter().sum::<u64>() / PAGE
    );
    assert_eq!(sim.kot_state(td_hkid(&sim)), KotState::Free);
    // The trace names every TD leaf the lifecycle used (VP.INIT in the
    // version module 1.5.01 takes, 0).
    for lv in [
        Leaf::MNG_CREATE.v0(),
        Leaf::MNG_KEY_CONFIG.v0(),
        Leaf::MNG_ADDCX.v0(),
        Leaf::MNG_INIT.v0(),
        Leaf::VP_CREATE.v0(),
        Leaf::VP_ADDCX.v0(),
        Leaf::VP_INIT.v0(),
        Leaf::MEM_SEPT_ADD.v0(),
        Leaf::MEM_PAGE_ADD.v0(),
        Leaf::MR_EXTEND.v0(),
        Leaf::MR_FINALIZE.v0(),
        Leaf::MNG_RD.v0(),
        Leaf::MEM_PAGE_AUG.v0(),
        Leaf::MEM_RANGE_BLOCK.v0(),
        Leaf::MEM_TRACK.v0(),
        Leaf::MEM_PAGE_REMOVE.v0(),
        Leaf::PHYMEM_PAGE_WBINVD.v0(),
        Leaf::VP_FLUSH.v0(),
        Leaf::MNG_VPFLUSHDONE.v0(),
        Leaf::PHYMEM_CACHE_WB.v0(),
        Leaf::MNG_KEY_FREEID.v0(),
        Leaf::PHYMEM_PAGE_RECLAIM.v0(),
    ] {
        let needle = format!("\"leaf\":\"{}\"", trace::leaf_text(lv.rax()));
        assert!(text.contains(&needle), "{needle} missing from the trace");
    }
}

#[test]
fn checked_in_td_trace_is_current() {
    let path = trace_path();
    let (fresh, _) = record();
    if std::env::var_os("TDX_SIM_BLESS").is_some() {
        fs::write(&path, &fresh).unwrap();
    }
    let file = fs::read_to_string(&path).unwrap();
    assert!(
        file == fresh,
        "{} differs from a fresh recording: rerun with TDX_SIM_BLESS=1 and review the diff",
        path.display()
    );
}

fn replay(text: &str) -> (trace::ReplaySummary, Vec<Value>, Simulator) {
    let t = Trace::parse(text.as_bytes()).unwrap();
    let sim = t.simulator().unwrap();
    let mut out = Vec::new();
    let summary = t.run(&sim, &mut out).unwrap();
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, lines, sim)
}

#[test]
fn checked_in_td_trace_replays_with_every_expectation_matching() {
    let text = fs::read_to_string(trace_path()).unwrap();
    let (summary, lines, sim) = replay(&text);
    assert!(summary.passed(), "{summary}");
    assert!(summary.mismatches.is_empty());
    assert_eq!(
        summary.checked, summary.seamcalls,
        "every call has expectations"
    );
    assert_eq!(summary.module_state, Some(SysState::Ready));
    assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    assert!(lines.iter().all(|l| l["match"] == Value::Bool(true)));
    // Refused steps are in it, with their statuses.
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    for s in [
        "TDX_GPA_RANGE_NOT_BLOCKED",
        "TDX_FLUSHVP_NOT_DONE",
        "TDX_VCPU_NOT_ASSOCIATED",
        "TDX_LIFECYCLE_STATE_INCORRECT",
        "TDX_WBCACHE_NOT_COMPLETE",
        "TDX_TD_ASSOCIATED_PAGES_EXIST",
    ] {
        assert!(statuses.contains(&s), "{s} not in the trace");
    }
    // The replayed machine ends where the recorded one did.
    let (_, recorded) = record();
    assert_eq!(sim.accounting().module, recorded.accounting().module);
    assert_eq!(sim.kot_state(td_hkid(&sim)), KotState::Free);
    sim.check_invariants().unwrap();
}

#[test]
fn replaying_the_td_trace_without_cache_wb_fails() {
    // The same trace with the CACHE.WB calls taken out: KEY.FREEID no
    // longer succeeds where the trace expects it to, and neither does
    // anything after it.
    let text = fs::read_to_string(trace_path()).unwrap();
    let cut: String = text
        .lines()
        .filter(|l| !l.contains(&format!("\"leaf\":\"{}\"", Leaf::PHYMEM_CACHE_WB)))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(cut.len() < text.len());
    let (summary, lines, _) = replay(&cut);
    assert!(!summary.passed());
    let first = summary.mismatches[0];
    let bad = lines.iter().find(|l| l["line"] == first).unwrap();
    assert_eq!(bad["leaf"], "TDH.MNG.KEY.FREEID");
    assert_eq!(bad["status"], "TDX_WBCACHE_NOT_COMPLETE");
}

#[test]
fn the_trace_was_recorded_on_both_packages() {
    let text = fs::read_to_string(trace_path()).unwrap();
    let t = Trace::parse(text.as_bytes()).unwrap();
    assert_eq!(t.machine().packages, 2);
    let sim = machine();
    assert_eq!(sim.cpus(), 4);
    // KEY.CONFIG, VP.INIT, VP.FLUSH and CACHE.WB ran on LPs of package 1.
    assert!(text.contains("{\"op\":\"cpu\",\"lp\":2}"));
    assert!(text.contains("{\"op\":\"cpu\",\"lp\":3}"));
}
