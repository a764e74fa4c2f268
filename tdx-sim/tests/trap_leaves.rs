//! Every raw leaf function of tdx-sys through the real SEAMCALL instruction
//! (`tdx_sys::Cpu` under `tdx_sim::trap::TrapBackend`), against the same
//! call through the simulator directly, on twin simulators driven through
//! the same scenario.
//!
//! For every SEAMCALL the two runs issue, in order:
//!
//! - the registers the trapped instruction saw (the handler's record)
//!   hold every input register of the call's shape as the leaf function
//!   built it (each input reaches the module);
//! - the status, and the whole register block after the call, are those of
//!   the direct call (each output reaches the caller, and nothing else in
//!   the block changes);
//! - the call ran on the same logical processor;
//! - the module left RBX and R12-R15 as they were in `Ret` and
//!   `NoOutputs` calls (the backend panics otherwise; the record says so);
//!
//! and at the end the traces a `Recorder` wrote of both runs are the same
//! bytes, the page accounting and the per-leaf counts are equal, and the
//! simulators' invariants hold. The scenario runs on module 1.5.01, on
//! 1.5.16 with Dynamic PAMT and on the Extensions profile, and together
//! the three runs call every `pub unsafe fn` of `tdx-sys/src/leaf/`
//! (read from the source, so a new leaf function fails the test until it
//! is added here).
//!
//! The handler scribbles over what the module may change but the shape
//! does not return (RSI, RDI, RBP, XMM0-15, RCX-R11 for `NoOutputs`), so
//! `live_values_survive_each_shape` checks that values the caller keeps
//! across a call survive; `callee_saved_registers_survive_each_shape`
//! checks RBX and R12-R15 across a C-ABI call from assembly;
//! `a_module_changing_callee_saved_registers_is_caught` checks that the
//! handler reports a module that changes them; `a_real_fault_still_kills`
//! checks that a SIGILL that is not a SEAMCALL of the backend is not
//! swallowed.

#![cfg(all(target_os = "linux", target_arch = "x86_64", feature = "trap"))]
// UNSAFETY: the test calls the raw `unsafe fn` leaves on backends that end
// in the simulator (whose memory is simulated), implements `Seamcall` for
// a logging wrapper, and executes a faulting instruction in a child process.
#![allow(unsafe_code)]

mod td_support;

use std::{collections::BTreeSet, hint::black_box, sync::Mutex};

use td_support::*;
use tdx_sim::{
    Guest, MachineDesc, Profile, Recorder, Simulator, TraceMachine, seamcalls_by_name, testkit,
    testkit::BringUpOptions,
    trap::{Trap, TrapBackend, last_trap, traps},
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Gpa, Hpa, Leaf, Pfn, TdxLevel, TdxStatus,
    metadata::{MdFieldId, TdxFeatures0, field},
    regs::{
        HpaArrayT, HpaLevel, HpaListInfo, KeyedPa, ShutdownHandoff, SysConfigKeyId, TdrAndFlags,
    },
};

/// One SEAMCALL as the caller issued it and got it back.
#[derive(Debug, Clone, Copy)]
struct Call {
    rax: u64,
    shape: RegShape,
    input: SeamcallArgs,
    output: SeamcallArgs,
    status: TdxStatus,
    lp: u32,
    /// The handler's record, for a call that trapped.
    trap: Option<Trap>,
}

/// A backend that logs every call it forwards.
struct Log<'s, B> {
    inner: B,
    sim: &'s Simulator,
    calls: Mutex<Vec<Call>>,
}

impl<'s, B> Log<'s, B> {
    fn new(inner: B, sim: &'s Simulator) -> Self {
        Self {
            inner,
            sim,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

// SAFETY: forwards to `B` with the same arguments and returns its status;
// it only copies `args` before and after.
unsafe impl<B: Seamcall> Seamcall for Log<'_, B> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let input = *args;
        let before = traps();
        // SAFETY: the caller's contract, forwarded unchanged.
        let status = unsafe { self.inner.seamcall(rax, args, shape) };
        let trap = (traps() != before).then(|| last_trap().expect("a trap record"));
        self.calls.lock().unwrap().push(Call {
            rax,
            shape,
            input,
            output: *args,
            status,
            lp: self.sim.current_lp(),
            trap,
        });
        status
    }
}

/// A host: the logged backend and the simulator as platform, recorded.
type Host<'a, B> = Recorder<'a, Log<'a, B>, Simulator, Vec<u8>>;

impl<B: Seamcall + Sync> SimHost for Host<'_, B> {
    fn sim(&self) -> &Simulator {
        self.platform()
    }
}

const MEMORY: (u64, u64) = (4 * GIB, 9 * GIB);

fn machine(profile: &Profile) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![MEMORY])
            .with_cpus(2, 2)
            .with_profile(profile.clone()),
    )
    .unwrap()
}

/// The input registers of `shape`, as (name, value) pairs.
fn inputs(shape: RegShape, a: &SeamcallArgs) -> Vec<(&'static str, u64)> {
    let mut v = vec![
        ("RCX", a.rcx),
        ("RDX", a.rdx),
        ("R8", a.r8),
        ("R9", a.r9),
        ("R10", a.r10),
        ("R11", a.r11),
    ];
    if shape == RegShape::SavedRet {
        v.extend([
            ("R12", a.r12),
            ("R13", a.r13),
            ("R14", a.r14),
            ("R15", a.r15),
            ("RBX", a.rbx),
            ("RDI", a.rdi),
            ("RSI", a.rsi),
        ]);
    }
    v
}

/// Checks the trapped run's calls against the direct run's, call by call.
fn compare_calls(direct: &[Call], trapped: &[Call]) {
    assert_eq!(
        direct.len(),
        trapped.len(),
        "both runs issue the same calls"
    );
    for (i, (d, t)) in direct.iter().zip(trapped).enumerate() {
        let what = format!(
            "call {i}: {} ({:?})",
            Leaf((d.rax & 0xffff) as u16),
            d.shape
        );
        assert!(d.trap.is_none(), "{what}: the direct call trapped");
        assert_eq!(
            (t.rax, t.shape, t.input),
            (d.rax, d.shape, d.input),
            "{what}: the runs diverged before this call"
        );
        let trap = t.trap.unwrap_or_else(|| panic!("{what}: did not trap"));
        assert_eq!(trap.rax, d.rax, "{what}: RAX the instruction saw");
        assert_eq!(trap.shape, d.shape, "{what}: shape");
        for ((name, want), (_, seen)) in inputs(d.shape, &d.input)
            .into_iter()
            .zip(inputs(d.shape, &trap.regs))
        {
            assert_eq!(seen, want, "{what}: input {name} as the module saw it");
        }
        assert_eq!(t.status, d.status, "{what}: status");
        assert_eq!(trap.status, d.status, "{what}: status the handler served");
        assert_eq!(
            t.output, d.output,
            "{what}: registers back in the caller's block"
        );
        assert_eq!((trap.lp, t.lp), (d.lp, d.lp), "{what}: logical processor");
        assert_eq!(trap.clobbered, 0, "{what}: callee-saved registers changed");
    }
}

/// What a leaf call returned, by function name, in order.
type Results = Vec<(&'static str, String)>;

/// Calls `leaf::$name(h, args...)` and logs the result under its name.
macro_rules! call {
    ($log:ident, $h:expr, $name:ident($($arg:expr),* $(,)?)) => {{
        // SAFETY: the backend ends in the simulator (directly or through
        // the trap), whose memory is simulated: whatever pages the
        // arguments name, no real memory changes hands.
        let r = unsafe { leaf::$name($h, $($arg),*) };
        $log.push((stringify!($name), format!("{r:?}")));
        r
    }};
}

fn info4k(gpa: u64) -> tdx_types::regs::PageInfo {
    info(gpa, 0)
}

/// The scenario: bring-up, a TD built, run and torn down by raw leaves,
/// then the leaves nothing else in it needs, then shutdown. Statuses are
/// logged, not asserted, except where the td_support helpers assert (the
/// two runs must then both succeed).
fn scenario<B: Seamcall + Sync>(h: &Host<'_, B>, profile: &Profile) -> Results {
    let mut log = Results::new();
    let dynamic = profile.has_dynamic_pamt();
    let tdmrs = if dynamic {
        testkit::simple_layout_dynamic(&[(4 * GIB, 8 * GIB)], 4)
    } else {
        layout()
    };
    testkit::bring_up_on(
        h,
        profile,
        &tdmrs,
        BringUpOptions {
            dynamic_pamt: dynamic,
            ..Default::default()
        },
    );
    // The bring-up leaves once more, now each one's "already done" path.
    call!(log, h, tdh_sys_init());
    on(h, 2, || call!(log, h, tdh_sys_lp_init()));
    let keyid = SysConfigKeyId::new().with_hkid(global_hkid(h));
    let array = Hpa::new(testkit::write_tdmr_infos(h, &tdmrs));
    call!(log, h, tdh_sys_config(array, tdmrs.len() as u64, keyid));
    call!(
        log,
        h,
        tdh_sys_config_v1(array, 1, keyid, TdxFeatures0::from_bits(0), 0)
    );
    call!(log, h, tdh_sys_key_config());
    call!(log, h, tdh_sys_tdmr_init(Hpa::new(4 * GIB)));
    let list = page(h);
    write(h, list.hpa(), &page(h).hpa().as_u64().to_le_bytes());
    call!(
        log,
        h,
        tdh_ext_mem_add(HpaListInfo::try_new(list, 1).unwrap())
    );
    call!(log, h, tdh_ext_init());
    call!(log, h, tdh_sys_rd(field::MAX_TDMRS));
    call!(log, h, tdh_sys_rd(MdFieldId::from_raw(0)));

    if dynamic {
        dynamic_pamt_leaves(&mut log, h);
    } else {
        td_leaves(&mut log, h, profile);
    }

    // Leaves the module models refuse, or that go to the P-SEAMLDR
    // (VMfailInvalid, CF set by the handler).
    let p = page(h);
    call!(log, h, tdh_quote_init());
    call!(
        log,
        h,
        tdh_quote_get(p, leaf::QUOTE_ID_DEFAULT, p.hpa(), 64, p.hpa(), 4096)
    );
    call!(log, h, tdh_iommu_setup(0xfed9_0000, p));
    call!(log, h, tdh_iommu_clear(3, p));
    call!(
        log,
        h,
        tdh_spdm_mng(
            7,
            2,
            Some(p),
            p,
            p,
            Some(HpaArrayT::encode(p, p, 3).unwrap())
        )
    );
    let s = call!(log, h, seamldr_info(p.hpa()));
    assert_eq!(s, TdxStatus::SEAMCALL_VMFAILINVALID, "SEAMLDR.INFO");
    call!(log, h, seamldr_install(p.hpa()));
    call!(
        log,
        h,
        tdh_sys_info(p.hpa(), 1024, Hpa::new(p.hpa().as_u64() + 1024), 32)
    );
    call!(log, h, tdh_sys_update());
    call!(log, h, tdh_sys_update_v1(TdxFeatures0::from_bits(0)));
    call!(log, h, tdh_sys_disable());
    // Shutdown last: every leaf after it fails.
    call!(
        log,
        h,
        tdh_sys_shutdown(ShutdownHandoff::new().with_handoff_version(0))
    );
    call!(log, h, tdh_sys_lp_shutdown());
    call!(log, h, tdh_sys_rd(field::MAX_TDMRS));
    log
}

/// A TD from creation to teardown (static PAMT).
fn td_leaves<B: Seamcall + Sync>(log: &mut Results, h: &Host<'_, B>, profile: &Profile) {
    let mut td = Td::build(h, Stage::VcpuReady);
    let tdr = td.tdr;
    let tdvpr = td.vcpus[0].tdvpr;
    // A vCPU with a second TDCX page set would fail; one more vCPU
    // created with raw leaves, initialized with version 0.
    let v2 = td.page(h);
    call!(log, h, tdh_vp_create(v2, tdr));
    let cx = td.page(h);
    call!(log, h, tdh_vp_addcx(cx, v2));
    on(h, 0, || call!(log, h, tdh_vp_init_v0(v2, 0x55)));
    on(h, 0, || call!(log, h, tdh_vp_init(v2, 0x55, 1)));
    let extra = td.page(h);
    call!(log, h, tdh_mng_addcx(extra, tdr));
    call!(log, h, tdh_mng_create(extra, td_hkid(h)));
    call!(log, h, tdh_mng_key_config(tdr));
    call!(log, h, tdh_mng_init(tdr, Params::new().write(h)));

    // Measured memory before finalization.
    td.add_page(h, 0x10_0000, b"measured");
    call!(log, h, tdh_mr_extend(tdr, Gpa::new(0x10_0000)));
    let source = td.page(h);
    let target = td.page(h);
    call!(
        log,
        h,
        tdh_mem_page_add(info4k(0x10_1000), tdr, target, source)
    );
    call!(log, h, tdh_mr_finalize(tdr));

    // Metadata.
    call!(log, h, tdh_mng_rd(tdr, field::MAX_TDMRS));
    call!(
        log,
        h,
        tdh_mng_rd(tdr, MdFieldId::from_raw(0x9110_0003_0000_0010))
    );
    call!(
        log,
        h,
        tdh_mng_rd_v1(tdr, MdFieldId::from_raw(0x9110_0003_0000_0010))
    );
    call!(
        log,
        h,
        tdh_mng_wr(tdr, MdFieldId::from_raw(0x9110_0003_0000_0010), 1, 1)
    );
    on(h, VCPU_LP, || {
        call!(
            log,
            h,
            tdh_vp_rd(tdvpr, MdFieldId::from_raw(0xA020_0000_0000_0000))
        );
        call!(
            log,
            h,
            tdh_vp_rd_v1(tdvpr, MdFieldId::from_raw(0xA020_0000_0000_0000))
        );
        call!(
            log,
            h,
            tdh_vp_wr(tdvpr, MdFieldId::from_raw(0xA020_0000_0000_0000), 0, 0)
        )
    });

    // Private memory after finalization: 4K and 2M AUG, SEPT.RD, a 2M page
    // demoted and promoted back, a 4K page removed, an S-EPT page removed.
    let p4 = td.aug(h, 0x20_0000, 0);
    assert!(p4.as_u64() != 0);
    call!(log, h, tdh_mem_sept_rd(info4k(0x20_0000), tdr));
    let page2m = td.run(h, 512, 512).first();
    td.map_sept(h, 0x40_0000, 2);
    call!(log, h, tdh_mem_page_aug(info(0x40_0000, 1), tdr, page2m));
    call!(log, h, tdh_mem_range_block(info(0x40_0000, 1), tdr));
    call!(log, h, tdh_mem_track(tdr));
    let demote_sept = td.page(h);
    call!(
        log,
        h,
        tdh_mem_page_demote(info(0x40_0000, 1), tdr, demote_sept)
    );
    call!(log, h, tdh_mem_range_unblock(info(0x40_0000, 1), tdr));
    call!(log, h, tdh_mem_range_block(info(0x40_0000, 1), tdr));
    call!(log, h, tdh_mem_track(tdr));
    call!(log, h, tdh_mem_page_promote(info(0x40_0000, 1), tdr));
    call!(log, h, tdh_mem_range_block(info4k(0x20_0000), tdr));
    call!(log, h, tdh_mem_track(tdr));
    call!(log, h, tdh_mem_page_remove(info4k(0x20_0000), tdr));
    // An S-EPT page for a range that holds nothing: add, block, remove.
    let sept = td.page(h);
    call!(
        log,
        h,
        tdh_mem_sept_add(
            info(0x8000_0000, 1),
            TdrAndFlags::with_tdr(tdr, false),
            sept
        )
    );
    call!(
        log,
        h,
        tdh_mem_sept_add_v1(
            info(0x8000_0000, 1),
            TdrAndFlags::with_tdr(tdr, true),
            [Some(sept), None, None, None],
        )
    );
    call!(log, h, tdh_mem_range_block(info(0x8000_0000, 1), tdr));
    call!(log, h, tdh_mem_track(tdr));
    call!(log, h, tdh_mem_sept_remove(info(0x8000_0000, 1), tdr));

    // TD entry: a guest that makes a TDVMCALL with values in R12-R15 (a
    // TD exit that returns them in the 13-register shape), then halts.
    h.sim().set_guest(tdvpr, |g: &mut Guest| {
        g.tdvmcall(0x1_0001, [0x1212, 0x1313, 0x1414, 0x1515]);
        g.halt();
    });
    on(h, VCPU_LP, || {
        let mut regs = SeamcallArgs {
            rdx: 0xd0d0,
            r12: 0x1200,
            rbx: 0xb0b0,
            rdi: 0xd1d1,
            rsi: 0x5151,
            ..SeamcallArgs::ZERO
        };
        call!(log, h, tdh_vp_enter(tdvpr, &mut regs));
        log.push(("vp_enter regs", format!("{regs:?}")));
        // Resume with the TDVMCALL answered (R10 = 0, success).
        regs.r10 = 0;
        call!(log, h, tdh_vp_enter(tdvpr, &mut regs));
        log.push(("vp_enter regs", format!("{regs:?}")));
    });

    // Teardown.
    on(h, VCPU_LP, || call!(log, h, tdh_vp_flush(tdvpr)));
    td.vcpus[0].lp = None;
    call!(log, h, tdh_mng_vpflushdone(tdr));
    on(h, 0, || call!(log, h, tdh_phymem_cache_wb(false)));
    on(h, 2, || call!(log, h, tdh_phymem_cache_wb(true)));
    call!(log, h, tdh_mng_key_freeid(tdr));
    call!(log, h, tdh_mng_key_reclaimid(tdr));
    call!(log, h, tdh_phymem_page_rdmd(td.tdcs[0]));
    call!(log, h, tdh_phymem_page_reclaim(td.tdcs[0]));
    let shift = keyid_shift_of(h);
    call!(
        log,
        h,
        tdh_phymem_page_wbinvd(KeyedPa::try_new(td.tdcs[0].hpa(), td.hkid, shift).unwrap())
    );
    let _ = profile;
}

/// The Dynamic PAMT leaves on a module brought up with it: a pair added
/// for a 2M range and taken back, and DEMOTE/PROMOTE with a pair (on
/// ranges with no TD: their errors, through the 13-register shape).
fn dynamic_pamt_leaves<B: Seamcall + Sync>(log: &mut Results, h: &Host<'_, B>) {
    let range = run(h, 512, 512);
    let level = HpaLevel::try_new(range.hpa(), TdxLevel::L2M).unwrap();
    let (a, b) = (page(h), page(h));
    call!(log, h, tdh_phymem_pamt_add(level, a, b));
    call!(log, h, tdh_phymem_pamt_remove(level));
    call!(log, h, tdh_phymem_pamt_remove(level));
    let tdr = page(h);
    let sept = page(h);
    call!(
        log,
        h,
        tdh_mem_page_demote_pair(info(0x40_0000, 1), tdr, sept, [a, b])
    );
    call!(log, h, tdh_mem_page_promote_pair(info(0x40_0000, 1), tdr));
}

/// Runs the scenario on twin simulators, once through the trap and once
/// directly; checks every call and the end states; returns the leaf
/// functions called.
fn twin_runs(profile: Profile) -> BTreeSet<&'static str> {
    let (direct_sim, trap_sim) = (machine(&profile), machine(&profile));
    let tm = TraceMachine::from_desc(&direct_sim.machine());
    let direct = Log::new(&direct_sim, &direct_sim);
    let trap = Log::new(TrapBackend::new(&trap_sim).unwrap(), &trap_sim);
    let dh = Recorder::new(&direct, &direct_sim, &tm, Vec::new()).unwrap();
    let th = Recorder::new(&trap, &trap_sim, &tm, Vec::new()).unwrap();
    let traps_before = traps();
    let d = scenario(&dh, &profile);
    let t = scenario(&th, &profile);
    let (dc, tc) = (direct.take(), trap.take());
    assert!(dc.len() > 40, "{}: {} calls", profile.name, dc.len());
    compare_calls(&dc, &tc);
    assert_eq!(
        traps() - traps_before,
        tc.len() as u64,
        "one trap per call of the trapped run, none of the direct run"
    );
    assert_eq!(d, t, "{}: leaf results", profile.name);
    let (dt, tt) = (dh.finish().unwrap(), th.finish().unwrap());
    assert!(dt.len() > 1000);
    assert!(
        dt == tt,
        "{}: the traces differ:\n{}\n---\n{}",
        profile.name,
        String::from_utf8_lossy(&dt),
        String::from_utf8_lossy(&tt)
    );
    assert_eq!(direct_sim.accounting(), trap_sim.accounting());
    assert_eq!(
        seamcalls_by_name(&direct_sim.stats()),
        seamcalls_by_name(&trap_sim.stats())
    );
    direct_sim.check_invariants().unwrap();
    trap_sim.check_invariants().unwrap();
    // Not every call failed: the scenario did real work on both.
    let ok = dc.iter().filter(|c| !c.status.is_error()).count();
    assert!(
        ok * 2 > dc.len(),
        "{}: {ok} of {} calls succeeded",
        profile.name,
        dc.len()
    );
    d.iter().map(|(n, _)| *n).collect()
}

/// Every `pub unsafe fn` in tdx-sys's leaf modules.
fn leaf_functions() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tdx-sys/src/leaf");
    let mut names = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let src = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in src.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("pub unsafe fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn every_raw_leaf_through_the_trap_matches_the_direct_call() {
    let mut called = BTreeSet::new();
    for profile in [
        Profile::tdx_1_5(),
        Profile::tdx_1_5_16(),
        Profile::tdx_1_5_ext(),
    ] {
        called.extend(twin_runs(profile));
    }
    let all = leaf_functions();
    assert!(all.len() >= 60, "{} leaf functions found", all.len());
    let missing: Vec<_> = all
        .iter()
        .filter(|n| !called.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "leaf functions never called: {missing:?}"
    );
}

/// Values the caller keeps across a call survive the handler's scribbling
/// (RSI, RDI, RBP, XMM0-15, and RCX-R11 for a call without outputs): the
/// `Cpu` backend's clobber lists and the compiler's register allocation
/// around them are right. Strongest in a release build, where the values
/// live in registers.
#[test]
fn live_values_survive_each_shape() {
    let sim = host();
    let cpu = TrapBackend::new(&sim).unwrap();
    for (rax, shape) in [
        (Leaf::SYS_LP_INIT.v0().rax(), RegShape::NoOutputs),
        (Leaf::SYS_RD.v0().rax(), RegShape::Ret),
        (Leaf::VP_ENTER.v0().rax(), RegShape::SavedRet),
    ] {
        let vals: [u64; 12] = core::array::from_fn(|i| black_box(0x1111 * (i as u64 + 1)));
        let floats: [f64; 4] = core::array::from_fn(|i| black_box(1.5 + i as f64));
        let expected: u64 = vals.iter().fold(0u64, |a, v| a.rotate_left(7) ^ v);
        let expected_f: f64 = floats.iter().sum();
        let mut args = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
        let [a, b, c, d, e, f, g, hh, i, j, k, l] = vals;
        let [x, y, z, w] = floats;
        let before = traps();
        // SAFETY: the simulator's memory is simulated.
        let st = unsafe { cpu.seamcall(rax, &mut args, shape) };
        assert_eq!(traps(), before + 1, "{shape:?}: trapped");
        let got = [a, b, c, d, e, f, g, hh, i, j, k, l]
            .iter()
            .fold(0u64, |acc, v| acc.rotate_left(7) ^ v);
        assert_eq!(got, expected, "{shape:?}: a live integer was clobbered");
        assert_eq!(
            x + y + z + w,
            expected_f,
            "{shape:?}: a live float was clobbered"
        );
        let t = last_trap().unwrap();
        assert_eq!(t.status, st);
        assert_ne!(
            t.rbp, 0xdead_beef_dead_beef,
            "RBP as seen, not as scribbled"
        );
        black_box(st);
    }
}

/// The callee-saved registers of the SysV ABI (RBX, R12-R15; RBP and RSP
/// too, which the `asm!` below relies on to return at all) survive a
/// function that issues a trapped SEAMCALL of each shape: the caller is
/// assembly that puts known values in them, calls the function, and reads
/// them back, so the check does not depend on optimization (a `Ret` or
/// `NoOutputs` call whose module changed R12, say, would leave the
/// function's R12 changed, because `Cpu` does not declare it).
#[test]
fn callee_saved_registers_survive_each_shape() {
    extern "C" fn trapped_call(cpu: &TrapBackend<'_>, shape: u64) -> u64 {
        let (rax, shape) = match shape {
            0 => (Leaf::SYS_LP_INIT.v0().rax(), RegShape::NoOutputs),
            1 => (Leaf::SYS_RD.v0().rax(), RegShape::Ret),
            _ => (Leaf::VP_ENTER.v0().rax(), RegShape::SavedRet),
        };
        let mut args = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
        // SAFETY: the simulator's memory is simulated.
        unsafe { cpu.seamcall(rax, &mut args, shape) }.raw()
    }

    let sim = host();
    let cpu = TrapBackend::new(&sim).unwrap();
    for shape in 0..3u64 {
        let want: [u64; 5] = core::array::from_fn(|i| 0x5eed_0000_0000_0b00 + i as u64);
        let [mut r12, mut r13, mut r14, mut r15, rbx_in] = want;
        let rbx_out: u64;
        let before = traps();
        // The block saves RBX (not an operand: LLVM reserves it), loads the
        // value under test, keeps RSP 16-byte aligned for the call, and
        // reads RBX back after it. R12-R15 are in-out operands; everything
        // the C ABI lets the callee change is declared.
        // SAFETY: a C-ABI call of `trapped_call` with a valid reference.
        unsafe {
            core::arch::asm!(
                "push rbx",
                "sub rsp, 8",
                "mov rbx, rax",
                "call {f}",
                "mov rax, rbx",
                "add rsp, 8",
                "pop rbx",
                f = sym trapped_call,
                inout("rax") rbx_in => rbx_out,
                in("rdi") &cpu,
                in("rsi") shape,
                inout("r12") r12,
                inout("r13") r13,
                inout("r14") r14,
                inout("r15") r15,
                clobber_abi("C"),
            );
        }
        assert_eq!(traps(), before + 1, "shape {shape}: trapped");
        assert_eq!(
            [r12, r13, r14, r15, rbx_out],
            want,
            "shape {shape}: R12-R15, RBX across the call"
        );
    }
}

/// With scribbling off, the handler writes back only what the shape
/// returns: the caller's block is the direct call's either way, so the
/// same call gives the same answer (and the backend can be used both ways).
#[test]
fn scribbling_does_not_change_answers() {
    let sim = host();
    for scribble in [true, false] {
        let cpu = TrapBackend::new(&sim).unwrap().scribble(scribble);
        // SAFETY: the simulator's memory is simulated.
        let c = unsafe { leaf::tdh_sys_rd(&cpu, field::MAX_TDMRS) };
        // SAFETY: as above.
        let d = unsafe { leaf::tdh_sys_rd(&sim, field::MAX_TDMRS) };
        assert_eq!(c, d, "scribble {scribble}");
        assert!(!c.status.is_error());
    }
}

/// Several threads trapping at once each reach their own simulator, on
/// the LP each selected.
#[test]
fn threads_trap_into_their_own_simulators() {
    let sims: Vec<Simulator> = (0..4).map(|_| host()).collect();
    std::thread::scope(|s| {
        for (n, sim) in sims.iter().enumerate() {
            s.spawn(move || {
                let cpu = TrapBackend::new(sim).unwrap();
                sim.set_lp(n as u32);
                for _ in 0..200 {
                    // SAFETY: the simulator's memory is simulated.
                    let c = unsafe { leaf::tdh_sys_rd(&cpu, field::MAX_TDMRS) };
                    assert!(!c.status.is_error());
                    let t = last_trap().unwrap();
                    assert_eq!(t.lp, n as u32, "thread {n}'s LP");
                }
            });
        }
    });
    for (n, sim) in sims.iter().enumerate() {
        let by = seamcalls_by_name(&sim.stats());
        let rd = by.get("TDH.SYS.RD").copied().unwrap_or(0);
        assert_eq!(rd, 200, "simulator {n} served its own thread's calls");
    }
}

/// The child-process half of `a_real_fault_still_kills`.
const CHILD: &str = "TDX_SIM_TRAP_CHILD";

/// A SIGILL that is not a SEAMCALL of the backend (an `ud2`, inside a call
/// or not; a SIGILL sent with `raise`) is passed on and still ends the
/// process with SIGILL, with the trap handler installed.
#[test]
fn a_real_fault_still_kills() {
    use std::os::unix::process::ExitStatusExt;

    if let Ok(mode) = std::env::var(CHILD) {
        let sim = host();
        let _cpu = TrapBackend::new(&sim).unwrap();
        match mode.as_str() {
            // SAFETY: `ud2` raises #UD; the process is meant to die.
            "ud2" => unsafe { core::arch::asm!("ud2") },
            // SAFETY: raising a signal at ourselves is what is tested.
            "raise" => unsafe {
                libc::raise(libc::SIGILL);
            },
            _ => {}
        }
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    for mode in ["ud2", "raise", "none"] {
        let st = std::process::Command::new(&exe)
            .args(["--exact", "a_real_fault_still_kills", "--nocapture"])
            .env(CHILD, mode)
            .output()
            .unwrap()
            .status;
        if mode == "none" {
            assert!(
                st.success(),
                "the child runs cleanly without a fault: {st:?}"
            );
        } else {
            assert_eq!(st.signal(), Some(libc::SIGILL), "{mode}: {st:?}");
        }
    }
}

/// A panic of the simulator inside the handler reaches the caller as a
/// panic of the call, and the thread goes on trapping afterwards (here:
/// TDH.VP.ENTER of a vCPU whose guest program panics, which the simulator
/// reports by panicking).
#[test]
fn a_simulator_panic_reaches_the_caller() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let tdvpr = td.vcpus[0].tdvpr;
    sim.set_guest(tdvpr, |_: &mut Guest| panic!("guest boom"));
    let cpu = TrapBackend::new(&sim).unwrap();
    let r = on(&sim, VCPU_LP, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut regs = SeamcallArgs::ZERO;
            // SAFETY: the simulator's memory is simulated.
            unsafe { leaf::tdh_vp_enter(&cpu, tdvpr, &mut regs) }
        }))
    });
    let msg = r
        .expect_err("the simulator's panic reaches the caller")
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(msg.contains("guest boom"), "{msg}");
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_sys_rd(&cpu, field::MAX_TDMRS) };
    assert!(!c.status.is_error(), "the next call traps as before");
    let _ = Pfn::new(0);
}

/// A module that changes registers the call's shape says survive is
/// caught: TDH.VP.ENTER issued in the `Ret` shape (which does not return
/// R12-R15) to a guest whose TDVMCALL exposes R12-R15 to the host. The
/// handler does not write them back (the caller's registers stay sound),
/// records them, and the call panics with what happened.
#[test]
fn a_module_changing_callee_saved_registers_is_caught() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let tdvpr = td.vcpus[0].tdvpr;
    sim.set_guest(tdvpr, |g: &mut Guest| {
        g.tdvmcall(0x1_0001, [0x1212, 0x1313, 0x1414, 0x1515]);
        g.halt();
    });
    let cpu = TrapBackend::new(&sim).unwrap();
    let r = on(&sim, VCPU_LP, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut a = SeamcallArgs {
                rcx: tdvpr.hpa().as_u64(),
                ..SeamcallArgs::ZERO
            };
            // SAFETY: the simulator's memory is simulated; the handler
            // writes back only what the `Ret` shape returns.
            unsafe { cpu.seamcall(Leaf::VP_ENTER.v0().rax(), &mut a, RegShape::Ret) }
        }))
    });
    let msg = r
        .expect_err("the clobber is reported")
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        msg.contains("TDH.VP.ENTER (Ret shape) changed registers the ABI says survive"),
        "{msg}"
    );
    let t = last_trap().unwrap();
    assert_eq!(t.status.raw() & 0xffff_ffff, 77, "a TDVMCALL exit");
    assert_eq!(
        (
            t.module_out.r12,
            t.module_out.r13,
            t.module_out.r14,
            t.module_out.r15
        ),
        (0x1212, 0x1313, 0x1414, 0x1515)
    );
    assert_eq!(t.clobbered & 0x3c0, 0x3c0, "R12-R15: {:#x}", t.clobbered);
}
