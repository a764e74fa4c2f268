//! Traces with guests: a run of two vCPUs whose guest programs accept
//! pages, read and write private and shared memory (EPT-violation exits the
//! host answers by mapping), make TDVMCALLs (MapGPA, HLT), extend an RTMR,
//! get a TDREPORT, and take a kick, all recorded through
//! `tdx_sim::trace::Recorder`; then the replay of that trace (the guests
//! are scripts of the recorded operations), the replay recorded again, and
//! what a malformed or diverging guest line does.
//!
//! `traces/td-guest.jsonl` is regenerated with
//! `TDX_SIM_BLESS=1 cargo test -p tdx-sim --test trace_guest`; review the
//! diff.

// UNSAFETY: raw TDH.VP.ENTER calls with chosen registers, on the simulator
// (directly or through a recorder of it) only.
#![allow(unsafe_code)]

mod td_support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
};

use serde_json::Value;
use td_support::*;
use tdx_sim::{
    Guest, Instruction, MachineDesc, Profile, SharedMapping, Simulator, testkit,
    trace::{
        ExpectedOut, GuestOp, KickAt, Recorder, Reg, ReplaySummary, Trace, TraceCall, TraceOp,
    },
};
use tdx_sys::{RegShape, SeamcallArgs};
use tdx_types::{
    Leaf, Pfn, TdxStatus,
    exit::{ExitReason, VmcallRegs, VmcallStatus, subfunction},
};

const TRACE: &str = "td-guest.jsonl";
/// The shared bit of a 4-level (GPAW 48) TD.
const SHARED: u64 = 1 << 47;
/// The external-interrupt exit's interruption information (the kick).
const KICK_INFO: u64 = 0x8000_00FD;

fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join(TRACE)
}

/// 1 GiB of RAM at 1 GiB, two packages of two LPs, module 1.5, not brought
/// up yet (one TDMR: a short bring-up).
fn machine() -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(GIB, 2 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap()
}

/// TDH.VP.ENTER of `tdvpr` on `lp` with the host's registers `a`: RAX and
/// the registers after.
fn enter<H: SimHost + ?Sized>(h: &H, lp: u32, tdvpr: Pfn, a: SeamcallArgs) -> (u64, SeamcallArgs) {
    on(h, lp, || {
        let mut a = a;
        a.rcx = tdvpr.hpa().as_u64();
        // SAFETY: `SimHost`: the simulator's memory is simulated.
        let s = unsafe { h.seamcall(Leaf::VP_ENTER.v0().rax(), &mut a, RegShape::SavedRet) };
        (s.raw(), a)
    })
}

/// The EPT-violation exit of a guest access: RAX 48, R8 the page.
#[track_caller]
fn assert_ept(exit: (u64, SeamcallArgs), gpa: u64) {
    assert_eq!(exit.0, u64::from(ExitReason::EPT_VIOLATION.0), "{exit:?}");
    assert_eq!(exit.1.r8, gpa & !0xFFF, "{exit:?}");
}

/// A TDG.VP.VMCALL exit with sub-function `sub` in R11.
#[track_caller]
fn assert_vmcall(exit: (u64, SeamcallArgs), sub: u64) {
    assert_eq!(exit.0, u64::from(ExitReason::TDCALL.0), "{exit:?}");
    assert_eq!(exit.1.r11, sub, "{exit:?}");
}

/// The whole run on `h` (a recorder of a fresh [`machine`]): bring-up, a
/// TD with two vCPUs on LPs of different packages, both guests run to
/// their end, teardown. Asserts every exit as it goes, so the recording is
/// the run this file describes. Returns the shared page's final contents.
fn run_guests<H: SimHost + ?Sized>(h: &H) -> Vec<u8> {
    let sim = h.sim();
    testkit::bring_up_on(
        h,
        &Profile::tdx_1_5(),
        &testkit::simple_layout(&[(GIB, 2 * GIB)], 1),
        Default::default(),
    );
    let mut td = Td::build(h, Stage::Initialized);
    let i0 = td.add_vcpu(h, 1);
    let i1 = td.add_vcpu(h, 2);
    let (v0, v1) = (td.vcpus[i0].tdvpr, td.vcpus[i1].tdvpr);
    ok("MR.FINALIZE", mr_finalize(h, td.tdr));
    td.aug(h, 0x1000, 0);
    let shared = page(h);
    write(
        h,
        tdx_types::Hpa::new(shared.hpa().as_u64() + 0x100),
        b"from the host",
    );
    sim.set_tsc(1_000);

    let (tx, rx) = mpsc::channel();
    sim.set_guest(v0, move |g: &mut Guest| {
        assert_eq!(g.accept(0x1000, 0), TdxStatus::SUCCESS);
        g.write(0x1010, b"private hello").unwrap();
        tx.send(g.read(0x1010, 13).unwrap()).unwrap();
        // Not mapped yet: the host AUGs it at the exit.
        assert_eq!(g.accept(0x2000, 0), TdxStatus::SUCCESS);
        // Shared, not mapped yet: the host maps it at the exit.
        g.write(SHARED | 0x3000, b"shared hello").unwrap();
        tx.send(g.read(SHARED | 0x3100, 13).unwrap()).unwrap();
        // MMIO: a #VE, no exit.
        assert!(g.read(SHARED | 0x5000, 4).is_err());
        assert!(g.veinfo_get().is_ok());
        // Instructions the module answers or turns into a #VE: no exit.
        assert!(g.cpuid(1, 0).is_ok());
        let _ = g.rdmsr(0xC000_0080);
        let _ = g.wrmsr(0x1B, 0);
        let _ = g.instruction(Instruction::Io {
            port: 0xCF8,
            size: 4,
            input: false,
        });
        let _ = g.veinfo_get();
        assert_eq!(g.cpuidve_set(0), TdxStatus::SUCCESS);
        let (st, _) = g.tdvmcall(subfunction::MAP_GPA, [SHARED | 0x4000, 0x1000, 0, 0]);
        assert_eq!(st, VmcallStatus::SUCCESS);
        assert_eq!(g.rtmr_extend(0x1000, 2), Ok(TdxStatus::SUCCESS));
        assert_eq!(g.mr_report(0x2000, 0x1000, 0), Ok(TdxStatus::SUCCESS));
        tx.send(g.read(0x2000, 8).unwrap()).unwrap();
        assert_eq!(g.vp_info().r9, 0, "vCPU index 0");
        assert_eq!(g.halt(), VmcallStatus::SUCCESS);
    });
    let (parked_tx, parked) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    sim.set_guest(v1, move |g: &mut Guest| {
        assert_eq!(g.read(0x1010, 7).unwrap(), b"private");
        parked_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        // The kick is pending: this write exits first, then runs.
        g.write(0x1010, b"PRIVATE").unwrap();
        let r = g.vmcall(
            0xFC00,
            VmcallRegs {
                r11: subfunction::GET_TD_VM_CALL_INFO,
                ..VmcallRegs::default()
            },
        );
        assert_eq!(r.map(|r| r.r10), Ok(0));
        g.halt();
    });

    // vCPU 0.
    let none = SeamcallArgs::default();
    assert_ept(enter(h, 1, v0, none), 0x2000);
    assert_eq!(rx.recv().unwrap(), b"private hello");
    td.aug(h, 0x2000, 0);
    assert_ept(enter(h, 1, v0, none), SHARED | 0x3000);
    sim.map_shared(
        td.tdr,
        SHARED | 0x3000,
        Some(SharedMapping::Memory(shared.hpa())),
    );
    sim.map_shared(td.tdr, SHARED | 0x5000, Some(SharedMapping::Mmio));
    assert_vmcall(enter(h, 1, v0, none), subfunction::MAP_GPA);
    assert_eq!(rx.recv().unwrap(), b"from the host");
    // The TSC went back: the entry is refused, and goes after the TSC
    // moves on.
    sim.set_tsc(10);
    let (rax, _) = enter(h, 1, v0, none);
    assert_eq!(TdxStatus::from_raw(rax), TdxStatus::TSC_ROLLBACK);
    sim.set_tsc(2_000);
    assert_vmcall(enter(h, 1, v0, none), subfunction::HLT);
    let report = rx.recv().unwrap();
    assert_eq!(report[0], 0x81, "REPORTTYPE TDX");
    // The program ends: the vCPU halts from then on.
    assert_vmcall(enter(h, 1, v0, none), subfunction::HLT);

    // vCPU 1, kicked while in the guest.
    std::thread::scope(|s| {
        let j = s.spawn(|| enter(h, 2, v1, none));
        parked.recv().unwrap();
        assert!(sim.kick(v1));
        go.send(()).unwrap();
        let (rax, a) = j.join().unwrap();
        assert_eq!(rax, u64::from(ExitReason::EXTERNAL_INTERRUPT.0));
        assert_eq!(a.r9, KICK_INFO);
    });
    let exit = enter(h, 2, v1, none);
    assert_vmcall(exit, subfunction::GET_TD_VM_CALL_INFO);
    // The reply: R10 = 0, R11 = 0 (no extra TDVMCALLs).
    assert_vmcall(enter(h, 2, v1, none), subfunction::HLT);
    assert_vmcall(enter(h, 2, v1, none), subfunction::HLT);

    sim.map_shared(td.tdr, SHARED | 0x3000, None);
    let mut contents = vec![0; 16];
    // SAFETY: `SimHost`: simulated memory, a host page.
    unsafe { h.read_phys(shared.hpa(), &mut contents) };
    td.teardown(h);
    free_page(h, shared);
    contents
}

/// Records [`run_guests`] on a fresh machine: the trace and the machine.
fn record() -> (String, Simulator) {
    let sim = machine();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    let contents = run_guests(&rec);
    assert_eq!(&contents[..12], b"shared hello");
    let bytes = rec.finish().unwrap();
    (String::from_utf8(bytes).unwrap(), sim)
}

fn replay(text: &str) -> (ReplaySummary, Vec<Value>) {
    let t = Trace::parse(text.as_bytes()).unwrap();
    let sim = t.simulator().unwrap();
    let mut out = Vec::new();
    let summary = t.run(&sim, &mut out).unwrap();
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (summary, lines)
}

/// Replays `text` through a recorder: the summary and the new recording.
fn replay_recorded(text: &str) -> (ReplaySummary, String) {
    let t = Trace::parse(text.as_bytes()).unwrap();
    let sim = t.simulator().unwrap();
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    let summary = t.run_recorded(&rec, &mut std::io::sink()).unwrap();
    let bytes = rec.finish().unwrap();
    (summary, String::from_utf8(bytes).unwrap())
}

fn guest_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["op"] == "guest")
        .collect()
}

#[test]
fn recording_writes_the_guests_operations_and_the_hosts_guest_actions() {
    let (text, sim) = record();
    sim.check_invariants().unwrap();
    let ops = guest_lines(&text);
    let dos: Vec<&str> = ops.iter().map(|v| v["do"].as_str().unwrap()).collect();
    for d in [
        "accept",
        "read",
        "write",
        "vmcall",
        "vp_info",
        "rtmr_extend",
        "mr_report",
        "veinfo_get",
        "cpuid",
        "rdmsr",
        "wrmsr",
        "instruction",
        "cpuidve_set",
        "end",
    ] {
        assert!(dos.contains(&d), "no guest {d} in the trace");
    }
    // Two vCPUs, each op once (the repeats after exits are not written):
    // vCPU 0 has 20 operations and its end, vCPU 1 four and its end.
    let vcpus: std::collections::BTreeSet<&str> =
        ops.iter().map(|v| v["vcpu"].as_str().unwrap()).collect();
    assert_eq!(vcpus.len(), 2);
    assert_eq!(ops.len(), 21 + 5, "{dos:?}");
    for needle in [
        "\"op\":\"kick\"",
        "\"at\":\"op\"",
        "\"to\":\"mmio\"",
        "\"to\":null",
        "{\"op\":\"tsc\",\"value\":\"0x3e8\"}",
        "{\"op\":\"tsc\",\"value\":\"0xa\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from the trace");
    }
    // Each guest line comes before the entry it ran in: the kick right
    // before the write it stopped, both before the entry's line (and the
    // `cpu` line that selects its LP).
    let lines: Vec<&str> = text.lines().collect();
    let kick = lines.iter().position(|l| l.contains("\"kick\"")).unwrap();
    assert!(lines[kick + 1].contains("\"do\":\"write\""));
    assert_eq!(lines[kick + 2], "{\"op\":\"cpu\",\"lp\":2}");
    assert!(lines[kick + 3].contains("TDH.VP.ENTER"));
}

#[test]
fn checked_in_guest_trace_is_current() {
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

#[test]
fn the_guest_trace_replays_with_every_expectation_matching() {
    let (text, _) = record();
    let (summary, lines) = replay(&text);
    assert!(summary.passed(), "{summary}");
    assert!(summary.violations.is_empty(), "{:?}", summary.violations);
    assert_eq!(summary.checked, summary.seamcalls);
    let calls = text.lines().filter(|l| l.contains("\"seamcall\"")).count();
    assert_eq!(lines.len(), calls);
    assert!(lines.iter().all(|l| l["match"] == Value::Bool(true)));
    // The exits are there: EPT violations, TDVMCALLs, the kick's
    // interrupt, and the refused entry.
    let enters: Vec<&Value> = lines
        .iter()
        .filter(|l| l["leaf"] == "TDH.VP.ENTER")
        .collect();
    assert_eq!(enters.len(), 10);
    for rax in ["0x30", "0x4d", "0x1"] {
        assert!(enters.iter().any(|l| l["rax"] == rax), "no exit {rax}");
    }
    assert!(enters.iter().any(|l| l["status"] == "TDX_TSC_ROLLBACK"));
}

#[test]
fn a_recorded_replay_is_the_same_trace() {
    let (text, _) = record();
    let (summary, again) = replay_recorded(&text);
    assert!(summary.passed(), "{summary}");
    assert!(again == text, "the replay recorded other lines");
}

#[test]
fn the_program_replays_the_guest_trace() {
    let out = Command::new(env!("CARGO_BIN_EXE_tdx-sim"))
        .arg("replay")
        .arg(trace_path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("all matched"), "{stderr}");
}

/// The recorded trace with a kick at the entry after vCPU 0's last one:
/// that entry of a halted vCPU exits with the interrupt.
fn with_kick_at_entry(text: &str) -> String {
    let first = guest_lines(text)[0]["vcpu"].as_str().unwrap().to_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines
        .iter()
        .rposition(|l| l.contains("TDH.VP.ENTER") && l.contains(&format!("\"rcx\":\"{first}\"")))
        .unwrap();
    let vcpu = u64::from_str_radix(first.trim_start_matches("0x"), 16).unwrap();
    let kick = TraceOp::Kick {
        vcpu,
        at: KickAt::Entry,
    };
    let input = SeamcallArgs {
        rcx: vcpu,
        ..SeamcallArgs::default()
    };
    let exit = TraceOp::Seamcall(TraceCall {
        rax: Leaf::VP_ENTER.v0().rax(),
        input,
        expected: Some(ExpectedOut {
            rax: Some(1),
            regs: Reg::ALL
                .iter()
                .map(|&r| (r, if r == Reg::R9 { KICK_INFO } else { 0 }))
                .collect(),
        }),
    });
    lines.insert(last + 1, exit.to_string());
    lines.insert(last + 1, kick.to_string());
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn a_kick_at_entry_replays_and_records_back() {
    let (text, _) = record();
    let edited = with_kick_at_entry(&text);
    let (summary, lines) = replay(&edited);
    assert!(summary.passed(), "{summary}");
    assert_eq!(lines.iter().filter(|l| l["rax"] == "0x1").count(), 2);
    let (summary, again) = replay_recorded(&edited);
    assert!(summary.passed(), "{summary}");
    assert!(again == edited, "the replay recorded other lines");
}

#[test]
fn a_diverging_guest_reports_mismatches() {
    let (text, _) = record();
    // vCPU 0 accepts a page the host never AUGs: it stays in that ACCEPT.
    let edited = text.replacen(
        "\"do\":\"accept\",\"gpa\":\"0x1000\"",
        "\"do\":\"accept\",\"gpa\":\"0x7000\"",
        1,
    );
    assert_ne!(edited, text);
    let (summary, lines) = replay(&edited);
    assert!(!summary.passed());
    let bad = lines
        .iter()
        .find(|l| l["match"] == Value::Bool(false) && l["leaf"].is_string())
        .unwrap();
    assert_eq!(bad["leaf"], "TDH.VP.ENTER", "{bad}");
    assert!(
        summary
            .mismatches
            .contains(&bad["line"].as_u64().unwrap().try_into().unwrap())
    );
    // The operations it never reached are reported too.
    assert!(
        lines
            .iter()
            .any(|l| l["op"] == "guest" && l["match"] == Value::Bool(false))
    );

    // vCPU 1 without its GetTdVmCallInfo: its script is one short.
    let edited: String = text
        .lines()
        .filter(|l| !l.contains("\"r11\":\"0x10000\"") || !l.contains("\"op\":\"guest\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(edited.len() < text.len());
    let (summary, _) = replay(&edited);
    assert!(!summary.passed());
    assert!(!summary.mismatches.is_empty());
}

#[test]
fn a_map_shared_of_no_td_is_a_mismatch() {
    let text = "{\"op\":\"machine\",\"memory\":[[\"0x100000000\",\"0x140000000\"]]}\n\
                {\"op\":\"map_shared\",\"tdr\":\"0x100000000\",\"gpa\":\"0x0\",\"to\":null}\n\
                {\"op\":\"tsc\",\"value\":5}\n\
                {\"op\":\"kick\",\"vcpu\":\"0x100001000\",\"at\":\"entry\"}\n\
                {\"op\":\"guest\",\"vcpu\":\"0x100001000\",\"do\":\"end\"}\n";
    let (summary, lines) = replay(text);
    // Line 2 (no TD) and line 5 (no vCPU ever ran it).
    assert_eq!(summary.mismatches, vec![2, 5]);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["op"], "map_shared");
    assert_eq!(lines[1]["op"], "guest");
}

#[test]
fn guest_lines_round_trip() {
    let vcpu = 0x1234_5000;
    let ops = [
        GuestOp::Accept {
            gpa: 0x2000,
            level: 1,
        },
        GuestOp::Read {
            gpa: SHARED | 0xFF8,
            len: 8,
        },
        GuestOp::Write {
            gpa: 0x10,
            data: vec![0, 0xAB, 0xFF],
        },
        GuestOp::Vmcall {
            control: 0xFC00,
            regs: VmcallRegs {
                rdx: 1,
                r11: 12,
                r15: u64::MAX,
                ..VmcallRegs::default()
            },
        },
        GuestOp::Vmcall {
            control: 0,
            regs: VmcallRegs::default(),
        },
        GuestOp::VpInfo,
        GuestOp::RtmrExtend {
            gpa: 0x40,
            index: 3,
        },
        GuestOp::MrReport {
            report: 0x400,
            data: 0x40,
            subtype: 0,
        },
        GuestOp::TripleFault,
        GuestOp::FatalTdEvent,
        GuestOp::Cpuid {
            leaf: 0x8000_0001,
            subleaf: 0,
        },
        GuestOp::Rdmsr { msr: 0xC000_0080 },
        GuestOp::Wrmsr {
            msr: 0x1B,
            value: u64::MAX,
        },
        GuestOp::Instruction(Instruction::Hlt),
        GuestOp::Instruction(Instruction::Io {
            port: 0xCF8,
            size: 4,
            input: true,
        }),
        GuestOp::Instruction(Instruction::Pconfig),
        GuestOp::VeinfoGet,
        GuestOp::CpuidveSet { control: 3 },
        GuestOp::End,
    ];
    let mut lines: Vec<TraceOp> = ops
        .into_iter()
        .map(|op| TraceOp::Guest { vcpu, op })
        .collect();
    lines.extend([
        TraceOp::Kick {
            vcpu,
            at: KickAt::Op,
        },
        TraceOp::Kick {
            vcpu,
            at: KickAt::Entry,
        },
        TraceOp::MapShared {
            tdr: 0x5000,
            gpa: SHARED | 0x3000,
            to: Some(SharedMapping::Memory(tdx_types::Hpa::new(0x9000))),
        },
        TraceOp::MapShared {
            tdr: 0x5000,
            gpa: SHARED,
            to: Some(SharedMapping::Mmio),
        },
        TraceOp::MapShared {
            tdr: 0x5000,
            gpa: SHARED,
            to: None,
        },
        TraceOp::Tsc { value: u64::MAX },
    ]);
    for op in lines {
        let text = op.to_string();
        assert_eq!(TraceOp::parse(&text, 1).unwrap(), op, "{text}");
    }
}

#[test]
fn malformed_guest_lines_are_errors_naming_the_line() {
    let machine = "{\"op\":\"machine\",\"memory\":[[\"0x100000000\",\"0x140000000\"]]}";
    let v = "\"vcpu\":\"0x100001000\"";
    let bad = [
        format!("{{\"op\":\"guest\",{v},\"do\":\"cpuid\"}}"),
        format!("{{\"op\":\"guest\",{v}}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":7}}"),
        "{\"op\":\"guest\",\"do\":\"end\"}".to_owned(),
        "{\"op\":\"guest\",\"vcpu\":\"0x100001001\",\"do\":\"end\"}".to_owned(),
        "{\"op\":\"guest\",\"vcpu\":\"0x10000000000000\",\"do\":\"end\"}".to_owned(),
        format!("{{\"op\":\"guest\",{v},\"do\":\"end\",\"gpa\":0}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"accept\",\"gpa\":0}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"accept\",\"gpa\":0,\"level\":256}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"accept\",\"gpa\":-1,\"level\":0}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"read\",\"gpa\":\"0xFFF\",\"len\":2}}"),
        format!(
            "{{\"op\":\"guest\",{v},\"do\":\"read\",\"gpa\":0,\"len\":\"0xFFFFFFFFFFFFFFFF\"}}"
        ),
        format!("{{\"op\":\"guest\",{v},\"do\":\"write\",\"gpa\":\"0xFFF\",\"hex\":\"0011\"}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"write\",\"gpa\":0,\"hex\":\"0\"}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"vmcall\",\"control\":0,\"regs\":{{\"rcx\":1}}}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"vmcall\",\"control\":0,\"regs\":[]}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"vmcall\",\"regs\":{{}}}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"mr_report\",\"report\":0,\"data\":0}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"cpuid\",\"leaf\":\"0x100000000\",\"subleaf\":0}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"wrmsr\",\"msr\":1}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"instruction\",\"kind\":\"rdtsc\"}}"),
        format!("{{\"op\":\"guest\",{v},\"do\":\"instruction\",\"kind\":\"hlt\",\"port\":1}}"),
        format!(
            "{{\"op\":\"guest\",{v},\"do\":\"instruction\",\"kind\":\"io\",\"port\":1,\"size\":3,\"input\":true}}"
        ),
        format!(
            "{{\"op\":\"guest\",{v},\"do\":\"instruction\",\"kind\":\"io\",\"port\":\"0x10000\",\"size\":1,\"input\":true}}"
        ),
        format!(
            "{{\"op\":\"guest\",{v},\"do\":\"instruction\",\"kind\":\"io\",\"port\":1,\"size\":1,\"input\":1}}"
        ),
        format!("{{\"op\":\"kick\",{v}}}"),
        format!("{{\"op\":\"kick\",{v},\"at\":\"later\"}}"),
        format!("{{\"op\":\"kick\",{v},\"at\":\"op\",\"lp\":1}}"),
        "{\"op\":\"map_shared\",\"tdr\":\"0x5000\",\"gpa\":0}".to_owned(),
        "{\"op\":\"map_shared\",\"tdr\":\"0x5000\",\"gpa\":0,\"to\":\"io\"}".to_owned(),
        "{\"op\":\"map_shared\",\"tdr\":\"0x5000\",\"gpa\":0,\"to\":\"0x10000000000000\"}"
            .to_owned(),
        "{\"op\":\"map_shared\",\"tdr\":\"0x5001\",\"gpa\":0,\"to\":null}".to_owned(),
        "{\"op\":\"tsc\"}".to_owned(),
        "{\"op\":\"tsc\",\"value\":\"12\"}".to_owned(),
        "{\"op\":\"tsc\",\"value\":1,\"lp\":0}".to_owned(),
    ];
    for line in bad {
        let text = format!("{machine}\n\n{line}\n");
        let err = Trace::parse(text.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{line} parsed"));
        assert_eq!(err.line(), Some(3), "{line}: {err}");
        // And the whole replay refuses it before running anything.
        let mut out = Vec::new();
        assert!(tdx_sim::replay(text.as_bytes(), &mut out).is_err());
        assert!(out.is_empty());
    }
}

/// The recorded trace with `line` inserted before vCPU 0's first guest
/// line.
fn with_first_op(text: &str, line: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains("\"op\":\"guest\""))
        .unwrap();
    lines.insert(first, line);
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn wild_guest_operands_replay_without_panicking() {
    let (text, _) = record();
    let vcpu = guest_lines(&text)[0]["vcpu"].as_str().unwrap().to_owned();
    let v = format!("\"vcpu\":\"{vcpu}\"");
    let max = "\"0xffffffffffffffff\"";
    for op in [
        "\"do\":\"accept\",\"gpa\":\"0xfffffffffffff000\",\"level\":0".to_owned(),
        "\"do\":\"accept\",\"gpa\":\"0x0\",\"level\":255".to_owned(),
        format!("\"do\":\"accept\",\"gpa\":{max},\"level\":1"),
        "\"do\":\"read\",\"gpa\":\"0xfffffffffffffff8\",\"len\":8".to_owned(),
        "\"do\":\"read\",\"gpa\":\"0x7ffffffff000\",\"len\":4096".to_owned(),
        "\"do\":\"read\",\"gpa\":\"0x1000\",\"len\":0".to_owned(),
        "\"do\":\"write\",\"gpa\":\"0xfffffffffffff000\",\"hex\":\"00\"".to_owned(),
        format!("\"do\":\"vmcall\",\"control\":{max},\"regs\":{{\"r15\":{max}}}"),
        "\"do\":\"vmcall\",\"control\":\"0x2\"".to_owned(),
        format!("\"do\":\"rtmr_extend\",\"gpa\":\"0xffffffffffffffc0\",\"index\":{max}"),
        format!("\"do\":\"rtmr_extend\",\"gpa\":\"0x1000\",\"index\":{max}"),
        format!(
            "\"do\":\"mr_report\",\"report\":\"0xfffffffffffffc00\",\"data\":\"0xffffffffffffffc0\",\"subtype\":{max}"
        ),
        "\"do\":\"mr_report\",\"report\":\"0x800000000000\",\"data\":\"0x0\",\"subtype\":0"
            .to_owned(),
        "\"do\":\"vp_info\"".to_owned(),
        "\"do\":\"triple_fault\"".to_owned(),
        "\"do\":\"fatal_td_event\"".to_owned(),
        "\"do\":\"end\"".to_owned(),
    ] {
        let line = format!("{{\"op\":\"guest\",{v},{op}}}");
        let edited = with_first_op(&text, &line);
        let t = Trace::parse(edited.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        let sim = t.simulator().unwrap();
        let summary = t.run(&sim, &mut std::io::sink()).unwrap();
        // Whatever it came to, the run ended and said so.
        assert!(summary.seamcalls > 0, "{line}");
    }
}

#[test]
fn dropping_any_guest_or_kick_line_replays_without_panicking() {
    let (text, _) = record();
    let lines: Vec<&str> = text.lines().collect();
    let mut diverged = 0;
    for (i, l) in lines.iter().enumerate() {
        if !l.contains("\"op\":\"guest\"") && !l.contains("\"op\":\"kick\"") {
            continue;
        }
        let edited: String = lines
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let t = Trace::parse(edited.as_bytes()).unwrap();
        let sim = t.simulator().unwrap();
        let summary = t.run(&sim, &mut std::io::sink()).unwrap();
        if !summary.passed() {
            diverged += 1;
        }
    }
    // The operations that make exits show (the accept the host maps, the
    // shared write, the TDVMCALLs, the kick); the host cannot tell the
    // others apart (a read, a write of accepted memory, an `end` the
    // script reaches anyway).
    assert!(diverged >= 5, "{diverged}");
}

#[test]
fn only_a_recorder_of_the_simulator_writes_guest_lines_while_it_exists() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let (v, lp) = (td.vcpus[0].tdvpr, VCPU_LP);
    sim.set_guest(v, |g: &mut Guest| {
        for _ in 0..3 {
            g.halt();
        }
    });
    let none = SeamcallArgs::default();
    // A recorder of any backend: SEAMCALLs only.
    let m = tdx_sim::TraceMachine::from_desc(&sim.machine());
    let rec = Recorder::new(&sim, &sim, &m, Vec::new()).unwrap();
    assert_vmcall(enter(&rec, lp, v, none), subfunction::HLT);
    sim.set_tsc(5);
    let text = String::from_utf8(rec.finish().unwrap()).unwrap();
    assert!(!text.contains("\"guest\"") && !text.contains("\"tsc\""));
    // A recorder of the simulator: the guest's operation, and what the
    // host did to it before the entry.
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    sim.set_tsc(6);
    assert_vmcall(enter(&rec, lp, v, none), subfunction::HLT);
    let text = String::from_utf8(rec.finish().unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[1], "{\"op\":\"tsc\",\"value\":\"0x6\"}");
    assert!(lines[2].contains("\"do\":\"vmcall\""), "{text}");
    assert_eq!(lines[3], "{\"op\":\"cpu\",\"lp\":1}");
    assert!(lines[4].contains("TDH.VP.ENTER"), "{text}");
    // Gone, it keeps nothing for the next one.
    sim.set_tsc(7);
    let rec = Recorder::for_simulator(&sim, Vec::new()).unwrap();
    let text = String::from_utf8(rec.finish().unwrap()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
