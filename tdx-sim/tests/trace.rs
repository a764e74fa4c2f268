//! Traces: recording a bring-up through the `Recorder`, replaying it, the
//! checked-in example traces, every kind of malformed trace, and the
//! `tdx-sim replay` program.
//!
//! `testkit::bring_up` takes a `&Simulator`, so it cannot run through a
//! recorder; `bring_up_through` below issues the same steps with the same
//! raw leaves over any `Seamcall + Platform`, and
//! `recorded_bring_up_does_what_testkit_does` checks that the two leave
//! the simulator in the same state.
//!
//! `traces/bringup-2pkg.jsonl` is regenerated with
//! `TDX_SIM_BLESS=1 cargo test -p tdx-sim --test trace`; review the diff.

// UNSAFETY: the bring-up driver calls the raw `unsafe fn` leaves of tdx-sys
// and the `unsafe` Platform accessors, against the simulator (possibly
// through a recorder), whose memory is simulated.
#![allow(unsafe_code)]

use std::{
    fs,
    io::{self, BufRead, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use proptest::prelude::*;
use serde_json::Value;
use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Placement,
};
use tdx_sim::{
    MachineDesc, MachineError, Profile, Simulator, SysState, testkit,
    trace::{self, Recorder, Reg, Trace, TraceCall, TraceError, TraceMachine, TraceOp},
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{Hpa, Leaf, TdxStatus, metadata::field};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("traces")
}

/// A simulator of `memory` with `packages` x `lps` CPUs and `profile`.
fn sim(memory: (u64, u64), packages: u32, lps: u32, profile: Profile) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![memory])
            .with_cpus(packages, lps)
            .with_profile(profile),
    )
    .unwrap()
}

/// Records a bring-up of a fresh simulator and returns the trace text and
/// the simulator.
fn record_bring_up(
    memory: (u64, u64),
    packages: u32,
    lps: u32,
    profile: Profile,
    max_gib: u64,
) -> (String, Simulator) {
    let s = sim(memory, packages, lps, profile.clone());
    let rec = Recorder::for_simulator(&s, Vec::new()).unwrap();
    let tdmrs = testkit::simple_layout(&[memory], max_gib);
    testkit::bring_up_on(&rec, &profile, &tdmrs, Default::default());
    let bytes = rec.finish().unwrap();
    (String::from_utf8(bytes).unwrap(), s)
}

/// The checked-in example: 1 GiB of memory, two packages of four LPs,
/// module 1.5.
fn record_checked_in() -> String {
    record_bring_up((GIB, 2 * GIB), 2, 4, Profile::tdx_1_5(), 1).0
}

/// Replays `text`, returning the summary and the output lines as JSON.
fn replay_text(text: &str) -> Result<(trace::ReplaySummary, Vec<Value>), TraceError> {
    let mut out = Vec::new();
    let summary = trace::replay(text.as_bytes(), &mut out)?;
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    Ok((summary, lines))
}

fn replay_ok(text: &str) -> (trace::ReplaySummary, Vec<Value>) {
    replay_text(text).unwrap_or_else(|e| panic!("replay failed: {e}"))
}

fn parse_err(text: &[u8]) -> TraceError {
    match Trace::parse(text) {
        Ok(_) => panic!("parsed: {}", String::from_utf8_lossy(text)),
        Err(e) => e,
    }
}

fn status_name(s: TdxStatus) -> Value {
    Value::from(s.name().unwrap())
}

const MACHINE: &str =
    r#"{"op":"machine","memory":[["0x100000000","0x140000000"]],"packages":2,"lps_per_package":2}"#;

// ---------------------------------------------------------------------------
// Recording and replaying a bring-up
// ---------------------------------------------------------------------------

fn assert_round_trip(profile: Profile) {
    let memory = (4 * GIB, 8 * GIB);
    let (text, recorded) = record_bring_up(memory, 2, 2, profile, 2);
    recorded.check_invariants().unwrap();
    assert_eq!(recorded.module_state(), SysState::Ready);

    let trace = Trace::parse(text.as_bytes()).unwrap();
    let replayed = trace.simulator().unwrap();
    let mut out = Vec::new();
    let summary = trace.run(&replayed, &mut out).unwrap();
    let calls = recorded.stats().total_seamcalls();
    assert_eq!(summary.seamcalls, calls);
    assert_eq!(
        summary.checked, calls,
        "the recorder writes `out` for every call"
    );
    assert!(summary.mismatches.is_empty(), "{summary}");
    assert!(summary.passed(), "{summary}");
    assert_eq!(summary.module_state, Some(SysState::Ready));
    assert_eq!(replayed.module_state(), SysState::Ready);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, calls);
    assert!(lines.iter().all(|l| l["match"] == Value::Bool(true)));
    // The module owns the same pages; the host pages of the recording were
    // allocations, which a trace leaves out.
    assert_eq!(replayed.accounting().module, recorded.accounting().module);
    assert_eq!(replayed.stats().seamcalls, recorded.stats().seamcalls);
    assert_eq!(replayed.ext_status(), recorded.ext_status());
}

#[test]
fn bring_up_round_trip() {
    assert_round_trip(Profile::tdx_1_5());
}

#[test]
fn bring_up_with_extensions_round_trip() {
    assert_round_trip(Profile::tdx_1_5_ext());
}

#[test]
fn recording_does_not_change_what_happens() {
    for profile in [Profile::tdx_1_5(), Profile::tdx_1_5_ext()] {
        let memory = (4 * GIB, 8 * GIB);
        let tdmrs = testkit::simple_layout(&[memory], 2);
        let by_testkit = sim(memory, 2, 2, profile.clone());
        testkit::bring_up(&by_testkit, &tdmrs, Default::default());
        let (_, recorded) = record_bring_up(memory, 2, 2, profile, 2);
        assert_eq!(recorded.stats(), by_testkit.stats());
        assert_eq!(recorded.accounting(), by_testkit.accounting());
        assert_eq!(recorded.module_state(), by_testkit.module_state());
        assert_eq!(recorded.ext_status(), by_testkit.ext_status());
    }
}

#[test]
fn checked_in_trace_replays() {
    let text = fs::read_to_string(traces_dir().join("bringup-2pkg.jsonl")).unwrap();
    let (summary, lines) = replay_ok(&text);
    assert!(summary.passed(), "{summary}");
    assert!(summary.seamcalls > 256, "{summary}");
    assert_eq!(summary.checked, summary.seamcalls);
    assert_eq!(summary.module_state, Some(SysState::Ready));
    assert!(lines.iter().all(|l| l["match"] == Value::Bool(true)));
    // It is a two-package machine: KEY.CONFIG ran on LP 0 and LP 4.
    let trace = Trace::parse(text.as_bytes()).unwrap();
    assert_eq!(trace.machine().packages, 2);
    assert!(trace.ops().iter().any(|l| l.op == TraceOp::Cpu { lp: 4 }));
}

#[test]
fn checked_in_trace_is_current() {
    let path = traces_dir().join("bringup-2pkg.jsonl");
    let fresh = record_checked_in();
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

#[test]
fn wrong_expected_value_is_a_mismatch() {
    let text = fs::read_to_string(traces_dir().join("bringup-2pkg.jsonl")).unwrap();
    // Expect TDH.SYS.CONFIG to fail.
    let (idx, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("\"TDH.SYS.CONFIG\""))
        .unwrap();
    let bad = line.replace("\"rax\":\"0x0\"", "\"rax\":\"0xc000050c00000000\"");
    assert_ne!(bad, line);
    let text = text.replacen(line, &bad, 1);
    let (summary, lines) = replay_ok(&text);
    assert_eq!(summary.mismatches, vec![idx + 1]);
    assert!(!summary.passed());
    let l = lines.iter().find(|l| l["line"] == idx + 1).unwrap();
    assert_eq!(l["match"], Value::Bool(false));
    assert_eq!(l["rax"], "0x0");
    assert_eq!(l["expected"]["rax"], "0xc000050c00000000");
    assert_eq!(l["status"], "TDX_SUCCESS");
    assert!(
        summary
            .to_string()
            .contains(&format!("first at line {}", idx + 1))
    );
}

#[test]
fn a_broken_rule_fails_the_replay() {
    // Without the WBINVD, KEY.CONFIG runs over PAMT pages that may hold
    // host dirty lines: every status may match, the replay still fails.
    let text = fs::read_to_string(traces_dir().join("bringup-2pkg.jsonl")).unwrap();
    let text = text.replacen("{\"op\":\"wbinvd\"}\n", "", 1);
    let (summary, _) = replay_ok(&text);
    assert!(summary.mismatches.is_empty(), "{summary}");
    assert!(
        matches!(
            summary.violations[..],
            [tdx_sim::Violation::KeyConfigWithDirtyPamt { .. }]
        ),
        "{:?}",
        summary.violations
    );
    assert!(summary.invariants.is_some());
    assert!(!summary.passed());
    assert!(summary.to_string().contains("invariants FAILED"));
}

#[test]
fn host_write_to_module_memory_fails_the_replay() {
    let text = fs::read_to_string(traces_dir().join("bringup-2pkg.jsonl")).unwrap();
    // The PAMT sits at the top of the TDMR; write into its last page.
    let text = format!(
        "{text}{{\"op\":\"write\",\"pa\":\"{:#x}\",\"hex\":\"ff\"}}\n",
        2 * GIB - PAGE
    );
    let (summary, _) = replay_ok(&text);
    assert!(
        matches!(
            summary.violations[..],
            [tdx_sim::Violation::HostTouchedModulePage { write: true, .. }]
        ),
        "{:?}",
        summary.violations
    );
    assert!(!summary.passed());
}

// ---------------------------------------------------------------------------
// The recorder
// ---------------------------------------------------------------------------

fn lines_of(bytes: Vec<u8>) -> Vec<Value> {
    bytes
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn recorder_writes_what_the_format_has() {
    let s = sim((4 * GIB, 5 * GIB), 2, 2, Profile::tdx_1_5());
    let rec = Recorder::for_simulator(&s, Vec::new()).unwrap();
    let run = rec.alloc_pages(2, 1, Placement::Anywhere).unwrap();
    // SAFETY: allocated above; simulated memory.
    unsafe { rec.write_phys(run.hpa(), &[0xde, 0xad]) };
    let mut buf = [0; 2];
    // SAFETY: as above.
    unsafe { rec.read_phys(run.hpa(), &mut buf) };
    assert_eq!(buf, [0xde, 0xad]);
    rec.clflush_page(run.first());
    rec.wbinvd_all();
    // SAFETY: simulated memory (this holds for every leaf call below).
    unsafe { leaf::tdh_sys_init(&rec) };
    rec.on_cpu(CpuId(3), &mut || {
        // SAFETY: as above.
        unsafe { leaf::tdh_sys_lp_init(&rec) };
        // SAFETY: as above.
        unsafe { leaf::tdh_sys_lp_init(&rec) };
    });
    // Back on LP 0 after `on_cpu`.
    // SAFETY: as above.
    unsafe { leaf::tdh_sys_lp_init(&rec) };
    // SAFETY: as above.
    unsafe { leaf::tdh_sys_rd(&rec, field::MAX_TDMRS) };
    let mut regs = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
    regs.r12 = 12;
    // SAFETY: as above.
    unsafe { rec.seamcall(Leaf::VP_ENTER.v0().rax(), &mut regs, RegShape::SavedRet) };
    // SAFETY: the run was allocated above and the module never had it.
    unsafe { rec.movdir64b_clear(run) }.expect("the simulator clears any run it owns");
    // SAFETY: as above.
    unsafe { rec.free_pages(run) };
    // SAFETY: as above.
    unsafe { leaf::seamldr_info(&rec, Hpa::new(5 * GIB - PAGE)) };
    let bytes = rec.finish().unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let l = lines_of(bytes);
    let ops: Vec<&str> = l.iter().map(|v| v["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            "machine", "write", "clflush", "wbinvd", "seamcall", "cpu", "seamcall", "seamcall",
            "cpu", "seamcall", "seamcall", "seamcall", "write", "clflush", "write", "clflush",
            "seamcall",
        ]
    );
    assert_eq!(l[0]["packages"], 2);
    assert_eq!(l[0]["lps_per_package"], 2);
    assert_eq!(l[0]["profile"], "tdx-1.5");
    assert_eq!(l[1]["hex"], "dead");
    assert_eq!(l[1]["pa"], format!("{:#x}", run.hpa().as_u64()));
    // TDH.SYS.INIT is a no-outputs call: only RAX, and no `in`.
    assert_eq!(l[4]["leaf"], "TDH.SYS.INIT");
    assert_eq!(l[4]["out"], serde_json::json!({"rax": "0x0"}));
    assert!(l[4].get("in").is_none());
    assert_eq!(l[5]["lp"], 3);
    assert_eq!(
        l[7]["out"]["rax"],
        format!("{:#x}", TdxStatus::SYS_LP_INIT_DONE.raw())
    );
    assert_eq!(l[8]["lp"], 0);
    // TDH.SYS.RD returns in the six registers.
    assert_eq!(l[10]["leaf"], "TDH.SYS.RD");
    assert_eq!(l[10]["out"].as_object().unwrap().len(), 7);
    assert_eq!(l[10]["out"]["r8"], "0x40");
    // TDH.VP.ENTER: every register in and out; zero inputs left out.
    assert_eq!(l[11]["leaf"], "TDH.VP.ENTER");
    assert_eq!(l[11]["in"]["r12"], "0xc");
    assert!(l[11]["in"].get("r13").is_none());
    assert_eq!(l[11]["out"].as_object().unwrap().len(), 14);
    // MOVDIR64B: zeros and a flush, page by page.
    assert_eq!(
        l[12]["hex"].as_str().unwrap(),
        "0".repeat(2 * PAGE as usize)
    );
    assert_eq!(l[13]["pa"], l[12]["pa"]);
    // A P-SEAMLDR call is written as its RAX value.
    assert_eq!(l[16]["leaf"], "0x8000000000000000");

    // And it all replays, with the same results.
    let (summary, out) = replay_ok(&text);
    assert!(summary.passed(), "{summary}");
    assert_eq!(summary.seamcalls, 7);
    assert_eq!(out[4]["out"]["r8"], "0x40");
    assert_eq!(out[4]["out"].as_object().unwrap().len(), 6);
    assert_eq!(out[5]["out"].as_object().unwrap().len(), 13);
    assert_eq!(out[6]["status"], "TDX_SEAMCALL_VMFAILINVALID");
}

#[test]
fn recorder_restores_the_lp_when_on_cpu_unwinds() {
    let s = sim((4 * GIB, 5 * GIB), 1, 2, Profile::tdx_1_5());
    let rec = Recorder::for_simulator(&s, Vec::new()).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rec.on_cpu(CpuId(1), &mut || panic!("in the closure"));
    }));
    assert!(r.is_err());
    // SAFETY: simulated memory.
    unsafe { leaf::tdh_sys_init(&rec) };
    let l = lines_of(rec.finish().unwrap());
    assert_eq!(l.len(), 2, "no cpu line: the call ran on LP 0");
}

#[test]
fn recorder_reports_write_errors() {
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let s = sim((4 * GIB, 5 * GIB), 1, 1, Profile::tdx_1_5());
    assert!(matches!(Recorder::for_simulator(&s, Full), Err(e) if e.to_string() == "disk full"));
    // A writer that fails after the machine line.
    struct Once(bool);
    impl Write for Once {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.0 {
                return Err(io::Error::other("disk full"));
            }
            self.0 = b.contains(&b'\n');
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let rec = Recorder::for_simulator(&s, Once(false)).unwrap();
    rec.wbinvd_all();
    // The call still went through.
    assert_eq!(s.stats().wbinvd, 1);
    let Err(e) = rec.finish() else {
        panic!("the write error is lost")
    };
    assert_eq!(e.to_string(), "disk full");
}

// ---------------------------------------------------------------------------
// The format
// ---------------------------------------------------------------------------

#[test]
fn leaf_by_name_number_and_version() {
    let text = format!(
        "{MACHINE}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.INIT\",\"out\":{{\"rax\":0}}}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH_SYS_LP_INIT\",\"out\":{{\"rax\":\"0x0\"}}}}\n\
         {{\"op\":\"seamcall\",\"leaf\":35}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"0x23\"}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"0x10016\"}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"0x1002d\"}}\n\
         {{\"op\":\"seamcall\",\"leaf\":65580}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"0x1000023\"}}\n"
    );
    let (summary, l) = replay_ok(&text);
    assert!(summary.passed(), "{summary}");
    assert_eq!(summary.seamcalls, 8);
    assert_eq!(summary.checked, 2);
    assert_eq!(l[0]["leaf"], "TDH.SYS.INIT");
    assert_eq!(l[1]["leaf"], "TDH.SYS.LP.INIT");
    // The number 35 and the string 0x23 are TDH.SYS.LP.INIT again, on LP 0.
    assert_eq!(l[2]["leaf"], "TDH.SYS.LP.INIT");
    assert_eq!(l[2]["status"], status_name(TdxStatus::SYS_LP_INIT_DONE));
    assert_eq!(l[3]["status"], status_name(TdxStatus::SYS_LP_INIT_DONE));
    assert!(l[3].get("match").is_none());
    // TDH.VP.INIT v1: module 1.5.01's version gate refuses it (before the
    // module-ready check).
    assert_eq!(l[4]["leaf"], "0x10016");
    assert_eq!(l[4]["status"], status_name(TdxStatus::OPERAND_INVALID));
    // TDH.SYS.CONFIG v1: module 1.5 has no v1.
    assert_eq!(l[5]["leaf"], "0x1002d");
    assert_eq!(l[5]["status"], status_name(TdxStatus::OPERAND_INVALID));
    // TDH.SYS.RD v1 (65580 = 0x1002c): the number is RAX, version included.
    assert_eq!(l[6]["leaf"], "0x1002c");
    // Reserved RAX bits are passed on as they are.
    assert_eq!(l[7]["leaf"], "0x1000023");
    assert_eq!(l[7]["status"], status_name(TdxStatus::OPERAND_INVALID));

    // On a module with TDH.SYS.CONFIG v1, the gate lets it through.
    let ext = text.replace(
        "\"lps_per_package\":2}",
        "\"lps_per_package\":2,\"profile\":\"tdx-1.5-ext\"}",
    );
    let (_, l) = replay_ok(&ext);
    assert_eq!(
        l[5]["status"],
        status_name(TdxStatus::SYS_CONFIG_NOT_PENDING)
    );
}

#[test]
fn integers_and_hex_strings_are_the_same_numbers() {
    let hex = format!(
        "{MACHINE}\n\
         {{\"op\":\"write\",\"pa\":\"0x100001000\",\"hex\":\"0102\"}}\n\
         {{\"op\":\"clflush\",\"pa\":\"0x100001000\"}}\n\
         {{\"op\":\"cpu\",\"lp\":\"0x3\"}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"0x22\",\"in\":{{\"rdx\":\"0x{:x}\"}},\"out\":{{\"rax\":\"0x{:x}\"}}}}\n",
        field::MAX_TDMRS.into_raw(),
        TdxStatus::SYS_LP_INIT_NOT_DONE.raw(),
    );
    let int = format!(
        "{{\"op\":\"machine\",\"memory\":[[4294967296,5368709120]],\"packages\":2,\"lps_per_package\":2}}\n\
         {{\"op\":\"write\",\"pa\":4294971392,\"hex\":\"0102\"}}\n\
         {{\"op\":\"clflush\",\"pa\":4294971392}}\n\
         {{\"op\":\"cpu\",\"lp\":3}}\n\
         {{\"op\":\"seamcall\",\"leaf\":34,\"in\":{{\"rdx\":{}}},\"out\":{{\"rax\":{}}}}}\n",
        field::MAX_TDMRS.into_raw(),
        TdxStatus::SYS_LP_INIT_NOT_DONE.raw(),
    );
    let a = Trace::parse(hex.as_bytes()).unwrap();
    let b = Trace::parse(int.as_bytes()).unwrap();
    assert_eq!(a.machine(), b.machine());
    assert_eq!(a.ops(), b.ops());
    let mut out_a = Vec::new();
    let mut out_b = Vec::new();
    let sa = trace::replay(hex.as_bytes(), &mut out_a).unwrap();
    let sb = trace::replay(int.as_bytes(), &mut out_b).unwrap();
    assert!(sa.passed() && sb.passed(), "{sa} / {sb}");
    assert_eq!(out_a, out_b);
    // Upper-case hex is fine too.
    let upper = hex.replace("\"0x100001000\"", "\"0X100001000\"");
    assert_eq!(Trace::parse(upper.as_bytes()).unwrap().ops(), a.ops());
}

#[test]
fn machine_defaults() {
    let text = "{\"op\":\"machine\",\"memory\":[[\"0x100000000\",\"0x140000000\"]]}\n";
    let t = Trace::parse(text.as_bytes()).unwrap();
    assert_eq!(
        *t.machine_desc(),
        MachineDesc::new(vec![(4 * GIB, 5 * GIB)])
    );
    assert_eq!(*t.machine(), TraceMachine::new(vec![(4 * GIB, 5 * GIB)]));
    assert_eq!(t.machine().packages, 1);
    assert_eq!(t.machine().lps_per_package, 1);
    assert_eq!(t.machine().cmrs, None);
    assert_eq!(t.machine().profile, "tdx-1.5");
    // One LP only.
    let e = parse_err(format!("{text}{{\"op\":\"cpu\",\"lp\":1}}\n").as_bytes());
    assert!(
        matches!(
            e,
            TraceError::LpOutOfRange {
                line: 2,
                lp: 1,
                lps: Some(1)
            }
        ),
        "{e}"
    );
    // The CMRs are the memory: the module reports them.
    let rd = |f: tdx_types::metadata::MdFieldId, v: u64| {
        format!(
            "{{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.RD\",\"in\":{{\"rdx\":\"{:#x}\"}},\"out\":{{\"rax\":0,\"r8\":\"{v:#x}\"}}}}\n",
            f.into_raw()
        )
    };
    let text = format!(
        "{text}{{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.INIT\",\"out\":{{\"rax\":0}}}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.LP.INIT\",\"out\":{{\"rax\":0}}}}\n{}{}{}",
        rd(field::cmr_base(0).unwrap(), 4 * GIB),
        rd(field::cmr_size(0).unwrap(), GIB),
        rd(field::cmr_size(1).unwrap(), 0),
    );
    let (summary, _) = replay_ok(&text);
    assert!(summary.passed(), "{summary}");
    assert_eq!(summary.checked, 5);
}

#[test]
fn machine_line_fields() {
    let text = "{\"op\":\"machine\",\"memory\":[[\"0x0\",\"0x80000000\"],[\"0x100000000\",\"0x180000000\"]],\
                \"cmrs\":[[0,2147483648]],\"packages\":4,\"lps_per_package\":3,\
                \"keyids\":{\"mktme\":15,\"tdx\":16},\"profile\":\"tdx-1.5-ext\"}";
    let t = Trace::parse(text.as_bytes()).unwrap();
    let d = t.machine_desc();
    assert_eq!(d.memory, vec![(0, 2 * GIB), (4 * GIB, 6 * GIB)]);
    assert_eq!(d.cmrs, Some(vec![(0, 2 * GIB)]));
    assert_eq!((d.packages, d.lps_per_package), (4, 3));
    assert_eq!((d.mktme_keyids, d.tdx_keyids), (15, 16));
    assert_eq!(d.profile, Profile::tdx_1_5_ext());
    // One KeyID count alone keeps the other's default.
    let t = Trace::parse(
        b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"keyids\":{\"tdx\":8}}" as &[u8],
    )
    .unwrap();
    assert_eq!((t.machine().mktme_keyids, t.machine().tdx_keyids), (31, 8));
    // The written form reads back the same.
    let line = TraceOp::Machine(t.machine().clone()).to_string();
    assert_eq!(
        TraceOp::parse(&line, 1).unwrap(),
        TraceOp::Machine(t.machine().clone())
    );
}

#[test]
fn calls_run_on_lp_0_until_a_cpu_line() {
    let text = format!(
        "{MACHINE}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.INIT\",\"out\":{{\"rax\":0}}}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.LP.INIT\",\"out\":{{\"rax\":0}}}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.LP.INIT\",\"out\":{{\"rax\":\"{:#x}\"}}}}\n\
         {{\"op\":\"cpu\",\"lp\":3}}\n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.LP.INIT\",\"out\":{{\"rax\":0}}}}\n\
         \n\
         {{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.LP.INIT\",\"out\":{{\"rax\":0}}}}\n",
        TdxStatus::SYS_LP_INIT_DONE.raw()
    );
    let (summary, l) = replay_ok(&text);
    // The last call is on LP 3 again: it fails, at line 8 (the blank line
    // counts).
    assert_eq!(summary.mismatches, vec![8]);
    assert_eq!(l[4]["line"], 8);
    assert_eq!(l[4]["status"], status_name(TdxStatus::SYS_LP_INIT_DONE));
}

#[test]
fn replay_shape_follows_the_registers_named() {
    let call = |rax: u64, input: SeamcallArgs, out: Option<Vec<(Reg, u64)>>| TraceCall {
        rax,
        input,
        expected: out.map(|regs| trace::ExpectedOut { rax: None, regs }),
    };
    let six = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
    let mut r12 = SeamcallArgs::ZERO;
    r12.r12 = 1;
    assert_eq!(call(33, six, None).replay_shape(), RegShape::Ret);
    assert_eq!(
        call(0, SeamcallArgs::ZERO, None).replay_shape(),
        RegShape::SavedRet
    );
    assert_eq!(call(33, r12, None).replay_shape(), RegShape::SavedRet);
    assert_eq!(
        call(33, six, Some(vec![(Reg::Rsi, 0)])).replay_shape(),
        RegShape::SavedRet
    );
    assert_eq!(
        call(33, six, Some(vec![(Reg::R11, 0)])).replay_shape(),
        RegShape::Ret
    );
    // Output registers a Ret call does not return keep their inputs under
    // SavedRet: the expectation on R12 holds.
    let text = format!(
        "{MACHINE}\n{{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.INIT\",\"in\":{{\"r12\":7}},\"out\":{{\"r12\":7,\"rax\":0}}}}\n"
    );
    let (summary, l) = replay_ok(&text);
    assert!(summary.passed(), "{summary}");
    assert_eq!(l[0]["out"]["r12"], "0x7");
}

#[test]
fn reg_names_round_trip() {
    for r in Reg::ALL {
        assert_eq!(Reg::from_name(r.name()), Some(r));
        let mut a = SeamcallArgs::ZERO;
        r.set(&mut a, 0x55);
        assert_eq!(r.get(&a), 0x55);
        assert_eq!(Reg::ALL.iter().filter(|o| o.get(&a) != 0).count(), 1);
    }
    assert_eq!(Reg::from_name("rax"), None);
    assert_eq!(Reg::from_name("RCX"), None);
}

// ---------------------------------------------------------------------------
// Malformed traces: every TraceError kind, with its line
// ---------------------------------------------------------------------------

/// Parses `MACHINE` followed by `rest` and returns the error.
fn after_machine(rest: &str) -> TraceError {
    parse_err(format!("{MACHINE}\n{rest}\n").as_bytes())
}

macro_rules! assert_err {
    ($e:expr, $pat:pat, $line:expr) => {{
        let e = $e;
        assert!(matches!(e, $pat), "unexpected error: {e:?} ({e})");
        assert_eq!(e.line(), $line, "{e}");
        // Every error explains itself.
        assert!(!e.to_string().is_empty());
    }};
}

#[test]
fn empty_and_misplaced_machine_lines() {
    assert_err!(parse_err(b""), TraceError::Empty, None);
    assert_err!(parse_err(b"\n  \n\r\n"), TraceError::Empty, None);
    assert_err!(
        parse_err(b"{\"op\":\"wbinvd\"}\n"),
        TraceError::MachineNotFirst { op: "wbinvd", .. },
        Some(1)
    );
    assert_err!(
        parse_err(format!("\n{{\"op\":\"cpu\",\"lp\":0}}\n{MACHINE}\n").as_bytes()),
        TraceError::MachineNotFirst { op: "cpu", .. },
        Some(2)
    );
    assert_err!(
        after_machine(&format!("{{\"op\":\"wbinvd\"}}\n{MACHINE}")),
        TraceError::DuplicateMachine { first: 1, .. },
        Some(3)
    );
}

#[test]
fn bad_lines() {
    assert_err!(
        parse_err(format!("{MACHINE}\n\u{0}\n").as_bytes()),
        TraceError::Json { .. },
        Some(2)
    );
    assert_err!(
        parse_err(format!("{MACHINE}\n{{\"op\":\"wbinvd\"}}\n{{}} {{}}\n").as_bytes()),
        TraceError::Json { .. },
        Some(3)
    );
    let mut bytes = format!("{MACHINE}\n").into_bytes();
    bytes.extend_from_slice(b"{\"op\":\"wbinvd\xff\"}\n");
    assert_err!(parse_err(&bytes), TraceError::NotUtf8 { .. }, Some(2));
    assert_err!(
        after_machine("{\"op\":\"cpu\""),
        TraceError::Json { .. },
        Some(2)
    );
    assert_err!(
        after_machine("[1,2]"),
        TraceError::NotAnObject { .. },
        Some(2)
    );
    assert_err!(
        after_machine("\"op\""),
        TraceError::NotAnObject { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"reboot\"}"),
        TraceError::UnknownOp { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"lp\":1}"),
        TraceError::MissingField { field: "op", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":5}"),
        TraceError::WrongType { .. },
        Some(2)
    );
}

#[test]
fn missing_unknown_and_mistyped_fields() {
    assert_err!(
        after_machine("{\"op\":\"write\",\"hex\":\"00\"}"),
        TraceError::MissingField { field: "pa", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":0}"),
        TraceError::MissingField { field: "hex", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"cpu\"}"),
        TraceError::MissingField { field: "lp", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"clflush\"}"),
        TraceError::MissingField { field: "pa", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"in\":{}}"),
        TraceError::MissingField { field: "leaf", .. },
        Some(2)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"packages\":1}"),
        TraceError::MissingField {
            field: "memory",
            ..
        },
        Some(1)
    );
    assert_err!(
        after_machine("{\"op\":\"wbinvd\",\"all\":true}"),
        TraceError::UnknownField { op: "wbinvd", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"expected\":{}}"),
        TraceError::UnknownField { op: "seamcall", .. },
        Some(2)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"lps\":4}"),
        TraceError::UnknownField { op: "machine", .. },
        Some(1)
    );
    let e = parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"keyids\":{\"sgx\":1}}");
    assert_err!(&e, TraceError::UnknownField { .. }, Some(1));
    assert!(e.to_string().contains("keyids.sgx"), "{e}");
    assert_err!(
        after_machine("{\"op\":\"cpu\",\"lp\":[1]}"),
        TraceError::WrongType { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":0,\"hex\":12}"),
        TraceError::WrongType { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":true}"),
        TraceError::WrongType { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"in\":[1]}"),
        TraceError::WrongType { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"out\":\"0x0\"}"),
        TraceError::WrongType { .. },
        Some(2)
    );
    let e = parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824],[1]]}");
    assert_err!(&e, TraceError::WrongType { .. }, Some(1));
    assert!(e.to_string().contains("memory[1]"), "{e}");
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":{}}"),
        TraceError::WrongType { .. },
        Some(1)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"keyids\":31}"),
        TraceError::WrongType { .. },
        Some(1)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"profile\":15}"),
        TraceError::WrongType { .. },
        Some(1)
    );
}

#[test]
fn bad_numbers() {
    for pa in [
        "\"4096\"",
        "-1",
        "1.5",
        "1e3",
        "\"0x\"",
        "\"0x1g\"",
        "\"0x+1\"",
        "\" 0x1\"",
        "\"0x10000000000000000\"",
        "18446744073709551616",
    ] {
        let e = after_machine(&format!("{{\"op\":\"clflush\",\"pa\":{pa}}}"));
        assert_err!(&e, TraceError::BadNumber { .. }, Some(2));
    }
    let e = after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"in\":{\"rcx\":\"12\"}}");
    assert_err!(&e, TraceError::BadNumber { .. }, Some(2));
    assert!(e.to_string().contains("in.rcx"), "{e}");
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":\"0xz\"}"),
        TraceError::BadNumber { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":-33}"),
        TraceError::BadNumber { .. },
        Some(2)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":[[0,1073741824]],\"packages\":4294967296}"),
        TraceError::BadNumber { .. },
        Some(1)
    );
    assert_err!(
        parse_err(b"{\"op\":\"machine\",\"memory\":[[0,\"1GiB\"]]}"),
        TraceError::BadNumber { .. },
        Some(1)
    );
    // Largest values are fine.
    let t = Trace::parse(
        format!(
            "{MACHINE}\n{{\"op\":\"seamcall\",\"leaf\":33,\"in\":{{\"rcx\":\"0xffffffffffffffff\",\"rdx\":18446744073709551615}}}}\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let TraceOp::Seamcall(c) = &t.ops()[0].op else {
        panic!()
    };
    assert_eq!((c.input.rcx, c.input.rdx), (u64::MAX, u64::MAX));
}

#[test]
fn bad_leaves_and_registers() {
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.REBOOT\"}"),
        TraceError::UnknownLeaf { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":\"33\"}"),
        TraceError::UnknownLeaf { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":\"tdh.sys.init\"}"),
        TraceError::UnknownLeaf { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"in\":{\"rax\":33}}"),
        TraceError::UnknownRegister { field: "in", .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"seamcall\",\"leaf\":33,\"out\":{\"rbp\":0}}"),
        TraceError::UnknownRegister { field: "out", .. },
        Some(2)
    );
}

#[test]
fn bad_machines() {
    let bad = |body: &str| parse_err(format!("{{\"op\":\"machine\",{body}}}\n").as_bytes());
    let e = bad("\"memory\":[[0,1073741824]],\"profile\":\"tdx-9\"");
    assert_err!(
        &e,
        TraceError::Machine {
            source: MachineError::UnknownProfile(_),
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[]"),
        TraceError::Machine {
            source: MachineError::NoMemory,
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[2147483648,3221225472],[0,1073741824]]"),
        TraceError::Machine {
            source: MachineError::MemoryNotSorted { .. },
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"cmrs\":[[1,4096]]"),
        TraceError::Machine {
            source: MachineError::BadCmr { .. },
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"packages\":0"),
        TraceError::Machine {
            source: MachineError::NoCpus,
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"keyids\":{\"tdx\":1}"),
        TraceError::Machine {
            source: MachineError::KeyIds(_),
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,\"0xffffffffffffffff\"]]"),
        TraceError::Machine {
            source: MachineError::MemoryTooHigh { .. },
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"packages\":65536,\"lps_per_package\":2"),
        TraceError::TooManyLps {
            packages: 65536,
            lps_per_package: 2,
            ..
        },
        Some(1)
    );
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"packages\":4294967295,\"lps_per_package\":4294967295"),
        TraceError::TooManyLps { .. },
        Some(1)
    );
    // 0 x huge is no CPU at all, not too many.
    assert_err!(
        bad("\"memory\":[[0,1073741824]],\"packages\":0,\"lps_per_package\":4294967295"),
        TraceError::Machine {
            source: MachineError::NoCpus,
            ..
        },
        Some(1)
    );
}

#[test]
fn bad_operands() {
    assert_err!(
        after_machine("{\"op\":\"cpu\",\"lp\":4}"),
        TraceError::LpOutOfRange {
            lp: 4,
            lps: Some(4),
            ..
        },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"cpu\",\"lp\":\"0xffffffffff\"}"),
        TraceError::LpOutOfRange { lps: None, .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":0,\"hex\":\"abc\"}"),
        TraceError::OddHex { len: 3, .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":0,\"hex\":\"0x00\"}"),
        TraceError::BadHex {
            offset: 1,
            ch: 'x',
            ..
        },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":0,\"hex\":\"00é\"}"),
        TraceError::BadHex {
            offset: 2,
            ch: 'é',
            ..
        },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"write\",\"pa\":\"0xffffffffffffffff\",\"hex\":\"0001\"}"),
        TraceError::AddressOverflow { len: 2, .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"clflush\",\"pa\":\"0x100001001\"}"),
        TraceError::BadPageAddress { .. },
        Some(2)
    );
    assert_err!(
        after_machine("{\"op\":\"clflush\",\"pa\":\"0x10000000000000\"}"),
        TraceError::BadPageAddress { .. },
        Some(2)
    );
    // An empty write and a write past RAM parse; the latter is a rule break.
    let text = format!(
        "{MACHINE}\n{{\"op\":\"write\",\"pa\":0,\"hex\":\"\"}}\n{{\"op\":\"write\",\"pa\":\"0xfffffffffffff000\",\"hex\":\"0001\"}}\n"
    );
    let (summary, _) = replay_ok(&text);
    assert!(
        matches!(
            summary.violations[..],
            [tdx_sim::Violation::HostTouchedNonRam { len: 2, .. }]
        ),
        "{:?}",
        summary.violations
    );
}

#[test]
fn io_errors() {
    /// Yields the machine line, then fails.
    struct Failing(&'static [u8]);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let machine: &'static str = Box::leak(format!("{MACHINE}\n").into_boxed_str());
    let e = Trace::parse(io::BufReader::new(Failing(machine.as_bytes()))).unwrap_err();
    assert_err!(e, TraceError::Io { .. }, Some(2));

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let text = format!("{MACHINE}\n{{\"op\":\"wbinvd\"}}\n{{\"op\":\"seamcall\",\"leaf\":33}}\n");
    let e = trace::replay(text.as_bytes(), &mut Closed).unwrap_err();
    assert_err!(e, TraceError::Output { .. }, Some(3));

    // Running on a simulator that is not the trace's machine.
    let t = Trace::parse(format!("{MACHINE}\n{{\"op\":\"cpu\",\"lp\":3}}\n").as_bytes()).unwrap();
    let small = sim((4 * GIB, 5 * GIB), 1, 1, Profile::tdx_1_5());
    let e = t.run(&small, &mut io::sink()).unwrap_err();
    assert_err!(e, TraceError::LpOutOfRange { lps: Some(1), .. }, Some(2));
}

// ---------------------------------------------------------------------------
// Parsing never panics
// ---------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("\"0x\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"TDH.SYS.INIT\"".to_owned()),
        Just("\"TDH.VP.ENTER\"".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("\"{n:#x}\"")),
        (0u64..64).prop_map(|n| n.to_string()),
        "[0-9a-fA-Fx\"]{0,9}".prop_map(|s| format!("\"{s}\"")),
        "\"[0-9a-f]{0,9}\"",
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("op"),
        Just("memory"),
        Just("cmrs"),
        Just("packages"),
        Just("lps_per_package"),
        Just("keyids"),
        Just("mktme"),
        Just("tdx"),
        Just("profile"),
        Just("pa"),
        Just("hex"),
        Just("lp"),
        Just("leaf"),
        Just("in"),
        Just("out"),
        Just("rax"),
        Just("rcx"),
        Just("rdx"),
        Just("r8"),
        Just("r9"),
        Just("r12"),
        Just("rsi"),
        Just("bogus"),
    ]
    .prop_map(str::to_owned)
}

/// A line that is usually an object with a plausible `op`.
fn fuzz_line() -> impl Strategy<Value = String> {
    let op = prop_oneof![
        Just("machine"),
        Just("write"),
        Just("cpu"),
        Just("wbinvd"),
        Just("clflush"),
        Just("seamcall"),
        Just("seamcall"),
        Just("seamcall"),
        Just("nope"),
    ];
    prop_oneof![
        8 => (op, prop::collection::vec((key(), json_value()), 0..5)).prop_map(|(op, kv)| {
            let mut body = vec![format!("\"op\":\"{op}\"")];
            body.extend(kv.into_iter().filter(|(k, _)| k != "op").map(|(k, v)| format!("\"{k}\":{v}")));
            format!("{{{}}}", body.join(","))
        }),
        1 => json_value(),
        1 => ".{0,40}",
    ]
}

/// Seamcall lines with random leaves (mostly the modelled ones) and
/// registers, which parse, for running against the model.
fn seamcall_line() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => 0u64..72,
        1 => (0u64..72).prop_map(|l| l | 1 << 16),
        1 => any::<u64>(),
    ];
    let reg_value = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        (0u64..64),
        (0u64..(8 * GIB)).prop_map(|a| a & !0xfff),
        any::<u64>(),
    ];
    (leaf, prop::collection::vec((0usize..13, reg_value), 0..4)).prop_map(|(leaf, regs)| {
        let body: Vec<String> = regs
            .into_iter()
            .map(|(r, v)| format!("\"{}\":\"{v:#x}\"", Reg::ALL[r].name()))
            .collect();
        format!(
            "{{\"op\":\"seamcall\",\"leaf\":{leaf},\"in\":{{{}}}}}",
            body.join(",")
        )
    })
}

/// Cases per property; raise it locally to search harder.
const CASES: u32 = 256;

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Trace::parse(bytes.as_slice());
        let mut with_machine = format!("{MACHINE}\n").into_bytes();
        with_machine.extend_from_slice(&bytes);
        let _ = Trace::parse(with_machine.as_slice());
    }

    #[test]
    fn random_lines_never_panic(lines in prop::collection::vec(fuzz_line(), 0..6)) {
        let text = lines.join("\n");
        let _ = Trace::parse(text.as_bytes());
        let text = format!("{MACHINE}\n{text}");
        if let Ok(t) = Trace::parse(text.as_bytes()) {
            let sim = t.simulator().unwrap();
            let _ = t.run(&sim, &mut io::sink()).unwrap();
        }
    }

    /// Random calls, on a fresh module or after the checked-in bring-up:
    /// replay reports what the model answers and never panics.
    #[test]
    fn random_calls_replay(
        after_bring_up in any::<bool>(),
        lines in prop::collection::vec(seamcall_line(), 1..8),
    ) {
        let prefix = if after_bring_up {
            fs::read_to_string(traces_dir().join("bringup-2pkg.jsonl")).unwrap()
        } else {
            format!("{MACHINE}\n")
        };
        let text = format!("{prefix}{}\n", lines.join("\n"));
        let t = Trace::parse(text.as_bytes()).unwrap();
        let sim = t.simulator().unwrap();
        let before = t.ops().iter().filter(|l| matches!(l.op, TraceOp::Seamcall(_))).count();
        let summary = t.run(&sim, &mut io::sink()).unwrap();
        prop_assert_eq!(summary.seamcalls, before as u64);
    }

    #[test]
    fn written_lines_parse_back(
        pa in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..16),
        lp in any::<u32>(),
        page in 0u64..(1 << 40),
        rax in any::<u64>(),
        regs in prop::array::uniform13(prop_oneof![Just(0u64), any::<u64>()]),
        out in prop::option::of((prop::option::of(any::<u64>()), prop::collection::btree_map(0usize..13, any::<u64>(), 0..4))),
    ) {
        let mut input = SeamcallArgs::ZERO;
        for (r, v) in Reg::ALL.iter().zip(regs) {
            r.set(&mut input, v);
        }
        let expected = out.map(|(rax, m)| trace::ExpectedOut {
            rax,
            regs: m.into_iter().map(|(i, v)| (Reg::ALL[i], v)).collect(),
        });
        let data_len = data.len() as u64;
        let mut ops = vec![
            TraceOp::Cpu { lp },
            TraceOp::Wbinvd,
            TraceOp::Clflush { pa: page * PAGE },
            TraceOp::Seamcall(TraceCall { rax, input, expected }),
        ];
        if pa.checked_add(data_len).is_some() {
            ops.push(TraceOp::Write { pa, data });
        }
        for op in ops {
            let text = op.to_string();
            prop_assert_eq!(TraceOp::parse(&text, 1).unwrap(), op);
        }
    }
}

// ---------------------------------------------------------------------------
// The program
// ---------------------------------------------------------------------------

fn program() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tdx-sim"))
}

#[test]
fn program_replays_the_checked_in_trace() {
    let path = traces_dir().join("bringup-2pkg.jsonl");
    let out = program().arg("replay").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let calls = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"op\":\"seamcall\""))
        .count();
    assert_eq!(lines.len(), calls);
    assert!(lines.iter().all(|l| l["match"] == Value::Bool(true)));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("all matched") && stderr.contains("Ready"),
        "{stderr}"
    );

    let quiet = program()
        .args(["replay", "--quiet"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0));
    assert!(quiet.stderr.is_empty());
    assert_eq!(quiet.stdout, out.stdout);
}

#[test]
fn program_reads_stdin() {
    let mut child = program()
        .args(["replay", "-q", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let text = format!(
        "{MACHINE}\n{{\"op\":\"seamcall\",\"leaf\":\"TDH.SYS.INIT\",\"out\":{{\"rax\":0}}}}\n"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let line: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(
        line,
        serde_json::json!({
            "line": 2, "leaf": "TDH.SYS.INIT", "rax": "0x0", "status": "TDX_SUCCESS",
            "out": {"rcx": "0x0", "rdx": "0x0", "r8": "0x0", "r9": "0x0", "r10": "0x0", "r11": "0x0"},
            "match": true
        })
    );
}

#[test]
fn program_exit_codes() {
    let dir = traces_dir();
    let malformed = program()
        .arg("replay")
        .arg(dir.join("malformed-odd-hex.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&malformed.stderr);
    assert_eq!(malformed.status.code(), Some(2), "{stderr}");
    assert!(malformed.stdout.is_empty(), "nothing runs");
    assert!(
        stderr.contains("line 3") && stderr.contains("odd"),
        "{stderr}"
    );

    let mismatch = program()
        .arg("replay")
        .arg(dir.join("mismatch-status.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert_eq!(mismatch.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 mismatched (first at line 4)"),
        "{stderr}"
    );
    let lines: Vec<Value> = mismatch
        .stdout
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(lines[1]["match"], Value::Bool(true));
    assert_eq!(lines[2]["match"], Value::Bool(false));

    let missing = program()
        .arg("replay")
        .arg(dir.join("no-such-trace.jsonl"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));

    let usage = program().arg("replay").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn small_checked_in_traces_are_what_the_tests_say() {
    let e = Trace::parse(
        fs::read(traces_dir().join("malformed-odd-hex.jsonl"))
            .unwrap()
            .as_slice(),
    )
    .unwrap_err();
    assert_err!(e, TraceError::OddHex { .. }, Some(3));
    let (summary, _) =
        replay_ok(&fs::read_to_string(traces_dir().join("mismatch-status.jsonl")).unwrap());
    assert_eq!(summary.mismatches, vec![4]);
}
