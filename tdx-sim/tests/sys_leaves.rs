//! The module-wide leaves against Intel's module (`tdx_vmm_dispatcher.c`,
//! `tdh_sys_*.c`): the dispatcher gate, TDH.SYS.INIT, LP.INIT, RD,
//! KEY.CONFIG, TDMR.INIT, SHUTDOWN, LP.SHUTDOWN, TDH.PHYMEM.PAGE.RDMD and the
//! Extensions leaves (TDH.EXT.MEM.ADD, TDH.EXT.INIT), with exact statuses.
//!
//! TDH.SYS.CONFIG's validation is in `sys_config.rs`, fault injection in
//! `faults.rs`.

// UNSAFETY: the tests issue raw leaves (`tdx_sys::leaf`, `Seamcall::seamcall`)
// and write list pages with `DirectMap::write_phys`, all against the
// simulator, whose memory is simulated.
#![allow(unsafe_code)]

use std::collections::BTreeMap;

use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Placement,
    platform::on_each_package,
};
use tdx_sim::{
    MachineDesc, PageState, Profile, Simulator, SysState,
    testkit::{self, BringUpOptions, simple_layout},
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Leaf, OperandId, Pfn, PfnRun, TdxStatus,
    abi::TdmrInfo,
    leaf::ALL_LEAVES,
    metadata::{MdFieldId, PamtPageType, field},
    regs::{HpaListInfo, ShutdownHandoff},
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// 16 GiB of RAM at 4 GiB, two packages of two LPs.
fn machine() -> MachineDesc {
    MachineDesc::new(vec![(4 * GIB, 20 * GIB)]).with_cpus(2, 2)
}

/// 2 GiB of RAM at 4 GiB, two packages of two LPs: small enough that
/// TDMR.INIT loops stay short.
fn small(profile: Profile) -> Simulator {
    let desc = MachineDesc::new(vec![(4 * GIB, 6 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile);
    Simulator::new(desc).unwrap()
}

/// One 2 GiB TDMR [4G, 6G) with its PAMT at its top, in a reserved area.
fn small_layout() -> Vec<TdmrInfo> {
    simple_layout(&[(4 * GIB, 6 * GIB)], 2)
}

/// Issues `rax` with `args` in the `Ret` shape.
fn raw(sim: &Simulator, rax: u64, mut args: SeamcallArgs) -> (TdxStatus, SeamcallArgs) {
    // SAFETY: `Seamcall for Simulator` promises register-level behaviour only;
    // every address in `args` is simulated memory, so no real page changes
    // hands (tdx-sys crate contract, items 1-2, hold trivially).
    let s = unsafe { sim.seamcall(rax, &mut args, RegShape::Ret) };
    (s, args)
}

/// `leaf` v0 with all-zero registers.
fn bare(sim: &Simulator, leaf: Leaf) -> TdxStatus {
    raw(sim, leaf.v0().rax(), SeamcallArgs::ZERO).0
}

fn sys_init(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf takes no memory operand.
    unsafe { leaf::tdh_sys_init(sim) }
}

/// TDH.SYS.LP.INIT on `lp` (through `Cpus::on_cpu`).
fn lp_init(sim: &Simulator, lp: u32) -> TdxStatus {
    let mut s = TdxStatus::SUCCESS;
    sim.on_cpu(CpuId(lp), &mut || {
        // SAFETY: simulated module; `on_cpu` pins the call to `lp` (crate
        // contract item 4).
        s = unsafe { leaf::tdh_sys_lp_init(sim) };
    });
    s
}

/// TDH.SYS.KEY.CONFIG on `lp` (through `Simulator::set_lp`).
fn key_config(sim: &Simulator, lp: u32) -> TdxStatus {
    let prev = sim.current_lp();
    sim.set_lp(lp);
    // SAFETY: simulated module; the LP is selected for the call and packages
    // are configured one at a time (crate contract item 4).
    let s = unsafe { leaf::tdh_sys_key_config(sim) };
    sim.set_lp(prev);
    s
}

fn tdmr_init(sim: &Simulator, base: u64) -> (TdxStatus, u64) {
    let (s, o) = raw(
        sim,
        Leaf::SYS_TDMR_INIT.v0().rax(),
        SeamcallArgs {
            rcx: base,
            ..SeamcallArgs::ZERO
        },
    );
    (s, o.rdx)
}

/// TDH.PHYMEM.PAGE.RDMD with a raw RCX: status, page type, level.
fn rdmd(sim: &Simulator, pa: u64) -> (TdxStatus, PamtPageType, u64) {
    let (s, o) = raw(
        sim,
        Leaf::PHYMEM_PAGE_RDMD.v0().rax(),
        SeamcallArgs {
            rcx: pa,
            ..SeamcallArgs::ZERO
        },
    );
    (s, PamtPageType(o.rcx as u8), o.r8)
}

/// TDH.SYS.RD of `id`: status, value (R8), next (RDX).
fn sys_rd(sim: &Simulator, id: u64) -> (TdxStatus, u64, u64) {
    let (s, o) = raw(
        sim,
        Leaf::SYS_RD.v0().rax(),
        SeamcallArgs {
            rdx: id,
            ..SeamcallArgs::ZERO
        },
    );
    (s, o.r8, o.rdx)
}

fn shutdown(sim: &Simulator, rcx: u64) -> TdxStatus {
    raw(
        sim,
        Leaf::SYS_SHUTDOWN.v0().rax(),
        SeamcallArgs {
            rcx,
            ..SeamcallArgs::ZERO
        },
    )
    .0
}

fn lp_shutdown(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf is a no-op.
    unsafe { leaf::tdh_sys_lp_shutdown(sim) }
}

fn op_invalid(op: OperandId) -> TdxStatus {
    TdxStatus::OPERAND_INVALID.with_operand(op)
}

/// Brings `sim` to SYS_READY with `tdmrs`, initializing them if asked, and
/// leaving the Extensions alone.
fn ready(sim: &Simulator, tdmrs: &[TdmrInfo], init_tdmrs: bool) -> testkit::BringUpReport {
    let r = testkit::bring_up(
        sim,
        tdmrs,
        BringUpOptions {
            init_tdmrs,
            init_ext: false,
            ..Default::default()
        },
    );
    assert_eq!(sim.module_state(), SysState::Ready);
    r
}

/// SYS.INIT and LP.INIT on every LP, then CONFIG with `tdmrs` and a WBINVD
/// (the state KEY.CONFIG needs).
fn configured(sim: &Simulator, tdmrs: &[TdmrInfo]) {
    let opts = BringUpOptions {
        stop_after_config: true,
        ..Default::default()
    };
    testkit::bring_up(sim, tdmrs, opts);
    sim.wbinvd_all();
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
}

/// Leaves that the gate lets through before SYS_READY.
const BEFORE_READY: [Leaf; 9] = [
    Leaf::SYS_INFO,
    Leaf::SYS_RD,
    Leaf::SYS_RDALL,
    Leaf::SYS_INIT,
    Leaf::SYS_LP_INIT,
    Leaf::SYS_CONFIG,
    Leaf::SYS_KEY_CONFIG,
    Leaf::SYS_LP_SHUTDOWN,
    Leaf::SYS_UPDATE,
];

/// Leaf numbers no module knows.
const UNKNOWN_LEAVES: [u16; 4] = [55, 57, 999, 0xFFFF];

// ---------------------------------------------------------------------------
// dispatcher gate
// ---------------------------------------------------------------------------

#[test]
fn gate_rax_reserved_bits_are_operand_invalid_rax_in_every_state() {
    let sim = small(Profile::tdx_1_5());
    let bad_bits = [1u64 << 24, 1 << 40, 1 << 62];
    let check = |sim: &Simulator| {
        for bits in bad_bits {
            for leaf in [
                Leaf::SYS_RD,
                Leaf::SYS_INIT,
                Leaf::SYS_LP_SHUTDOWN,
                Leaf::MNG_CREATE,
            ] {
                let (s, _) = raw(sim, leaf.v0().rax() | bits, SeamcallArgs::ZERO);
                assert_eq!(s, op_invalid(OperandId::RAX), "{leaf} | {bits:#x}");
            }
        }
    };
    // Before SYS.INIT: check 1 comes before check 4 (SYS_NOT_READY).
    check(&sim);
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    ready(&sim, &small_layout(), false);
    check(&sim);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    // After shutdown: check 1 comes before check 3 (SYS_SHUTDOWN), even for
    // LP.SHUTDOWN.
    check(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn gate_version_above_allowed_is_operand_invalid_rax() {
    let sim = small(Profile::tdx_1_5());
    // Check 2 comes before check 4: a non-sys leaf with a version gets
    // OPERAND_INVALID, not SYS_NOT_READY.
    for leaf in [
        Leaf::SYS_INIT,
        Leaf::SYS_RD,
        Leaf::SYS_LP_INIT,
        Leaf::SYS_KEY_CONFIG,
        Leaf::SYS_LP_SHUTDOWN,
        Leaf::SYS_CONFIG,
        Leaf::SYS_TDMR_INIT,
        Leaf::MNG_CREATE,
        Leaf::MEM_PAGE_ADD,
        Leaf::PHYMEM_PAGE_RDMD,
    ] {
        let (s, _) = raw(&sim, leaf.v(1).rax(), SeamcallArgs::ZERO);
        assert_eq!(s, op_invalid(OperandId::RAX), "{leaf} v1");
    }
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    // The leaves 1.5.01 accepts with version 1 pass check 2 and stop at
    // check 4.
    for leaf in [
        Leaf::MEM_PAGE_PROMOTE,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_SEPT_REMOVE,
        Leaf::MNG_RD,
        Leaf::VP_RD,
    ] {
        let (s, _) = raw(&sim, leaf.v(1).rax(), SeamcallArgs::ZERO);
        assert_eq!(s, TdxStatus::SYS_NOT_READY, "{leaf} v1");
    }
    // After shutdown, check 2 still comes before check 3.
    ready(&sim, &small_layout(), false);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    for leaf in [Leaf::SYS_RD, Leaf::SYS_LP_SHUTDOWN, Leaf::SYS_CONFIG] {
        let (s, _) = raw(&sim, leaf.v(1).rax(), SeamcallArgs::ZERO);
        assert_eq!(s, op_invalid(OperandId::RAX), "{leaf} v1 after shutdown");
    }
    sim.check_invariants().unwrap();
}

#[test]
fn gate_sys_config_v1_passes_the_gate_on_the_ext_profile() {
    let sim = small(Profile::tdx_1_5_ext());
    // Before SYS.INIT the leaf itself runs and refuses the state.
    let (s, _) = raw(&sim, Leaf::SYS_CONFIG.v(1).rax(), SeamcallArgs::ZERO);
    assert_eq!(s, TdxStatus::SYS_CONFIG_NOT_PENDING);
    let (s, _) = raw(&sim, Leaf::SYS_CONFIG.v(2).rax(), SeamcallArgs::ZERO);
    assert_eq!(s, op_invalid(OperandId::RAX));
    sim.check_invariants().unwrap();
}

#[test]
fn gate_versioned_leaves_pass_check_2_with_any_version() {
    // "A version above 0 is accepted only for
    // PROMOTE, SEPT.ADD, SEPT.REMOVE, MNG.RD and VP.RD" (SEPT.ADD/REMOVE
    // reject > 1 themselves, after the gate). So version 2 of them reaches
    // check 4 (SYS_NOT_READY) before SYS_READY and check 3 after shutdown.
    let sim = small(Profile::tdx_1_5());
    for leaf in [
        Leaf::MEM_PAGE_PROMOTE,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_SEPT_REMOVE,
        Leaf::MNG_RD,
        Leaf::VP_RD,
    ] {
        let (s, _) = raw(&sim, leaf.v(2).rax(), SeamcallArgs::ZERO);
        assert_eq!(s, TdxStatus::SYS_NOT_READY, "{leaf} v2 before ready");
    }
    ready(&sim, &small_layout(), false);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    for leaf in [Leaf::MEM_SEPT_ADD, Leaf::MNG_RD] {
        let (s, _) = raw(&sim, leaf.v(2).rax(), SeamcallArgs::ZERO);
        assert_eq!(s, TdxStatus::SYS_SHUTDOWN, "{leaf} v2 after shutdown");
    }
    sim.check_invariants().unwrap();
}

/// Sys leaves that pass the gate before SYS_READY and change nothing when
/// issued with all-zero registers (SYS.INFO, RDALL and UPDATE are not
/// modelled: they answer OPERAND_INVALID|RAX once through the gate).
const HARMLESS_BEFORE_READY: [Leaf; 5] = [
    Leaf::SYS_INFO,
    Leaf::SYS_RD,
    Leaf::SYS_RDALL,
    Leaf::SYS_LP_SHUTDOWN,
    Leaf::SYS_UPDATE,
];

/// Asserts the gate's answer before SYS_READY: every leaf but the nine sys
/// leaves gets SYS_NOT_READY, unknown leaf numbers included (check 4 comes
/// before check 5). Of the nine, those that cannot change the state are
/// issued too and must pass the gate; the others have their own tests.
fn assert_not_ready_gate(sim: &Simulator, when: &str) {
    let state = sim.module_state();
    for &leaf in ALL_LEAVES {
        if HARMLESS_BEFORE_READY.contains(&leaf) {
            assert_ne!(bare(sim, leaf), TdxStatus::SYS_NOT_READY, "{leaf} {when}");
        } else if !BEFORE_READY.contains(&leaf) {
            assert_eq!(bare(sim, leaf), TdxStatus::SYS_NOT_READY, "{leaf} {when}");
        }
    }
    assert_eq!(sim.module_state(), state);
    for n in UNKNOWN_LEAVES {
        assert_eq!(
            bare(sim, Leaf(n)),
            TdxStatus::SYS_NOT_READY,
            "leaf {n} {when}"
        );
    }
}

#[test]
fn gate_non_sys_leaves_are_sys_not_ready_until_ready() {
    for profile in [Profile::tdx_1_5(), Profile::tdx_1_5_ext()] {
        let sim = small(profile);
        let tdmrs = small_layout();
        assert_not_ready_gate(&sim, "before SYS.INIT");
        // Bring-up one step at a time; the gate answers the same at each.
        assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
        for lp in 0..4 {
            assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
        }
        assert_not_ready_gate(&sim, "in SYSINIT_DONE");
        sim.check_invariants().unwrap();
        let sim = small(sim.profile());
        configured(&sim, &tdmrs);
        assert_not_ready_gate(&sim, "in SYSCONFIG_DONE");
        assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
        assert_not_ready_gate(&sim, "with one package configured");
        assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
        assert_eq!(sim.module_state(), SysState::Ready);
        sim.check_invariants().unwrap();
    }
}

#[test]
fn gate_unknown_leaf_in_ready_is_operand_invalid_rax() {
    let sim = small(Profile::tdx_1_5());
    ready(&sim, &small_layout(), false);
    for n in UNKNOWN_LEAVES {
        assert_eq!(bare(&sim, Leaf(n)), op_invalid(OperandId::RAX), "leaf {n}");
    }
    // The Extensions leaves do not exist in module 1.5.
    for leaf in [Leaf::EXT_INIT, Leaf::EXT_MEM_ADD] {
        assert_eq!(bare(&sim, leaf), op_invalid(OperandId::RAX), "{leaf}");
    }
    assert_eq!(sim.module_state(), SysState::Ready);
    sim.check_invariants().unwrap();
}

#[test]
fn gate_after_shutdown_everything_but_lp_shutdown_is_sys_shutdown() {
    let sim = small(Profile::tdx_1_5_ext());
    ready(&sim, &small_layout(), true);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Shutdown);
    for &leaf in ALL_LEAVES {
        let s = bare(&sim, leaf);
        if leaf == Leaf::SYS_LP_SHUTDOWN {
            assert_eq!(s, TdxStatus::SUCCESS);
        } else {
            assert_eq!(s, TdxStatus::SYS_SHUTDOWN, "{leaf}");
        }
    }
    // Check 3 comes before check 5.
    for n in UNKNOWN_LEAVES {
        assert_eq!(bare(&sim, Leaf(n)), TdxStatus::SYS_SHUTDOWN, "leaf {n}");
    }
    assert_eq!(sim.module_state(), SysState::Shutdown);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.INIT
// ---------------------------------------------------------------------------

#[test]
fn sys_init_moves_to_sysinit_done_and_clears_outputs() {
    let sim = small(Profile::tdx_1_5());
    let junk = 0xdead_beef;
    let (s, out) = raw(
        &sim,
        Leaf::SYS_INIT.v0().rax(),
        SeamcallArgs::regs6(0, junk, junk, junk, junk, junk),
    );
    assert_eq!(s, TdxStatus::SUCCESS);
    assert_eq!(
        (out.rcx, out.rdx, out.r8, out.r9, out.r10),
        (0, 0, 0, 0, 0),
        "RCX, RDX, R8-R10 are cleared"
    );
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_init_refuses_a_cmr_list_not_sorted_and_disjoint() {
    // `check_cmrs` in tdh_sys_init.c: MCHECK's CMRs must be sorted by base
    // and must not overlap; touching is fine. The module stays
    // SYSINIT_PENDING, so a second SYS.INIT fails the same way.
    let with_cmrs = |cmrs: Vec<(u64, u64)>| {
        let mut desc = MachineDesc::new(vec![(4 * GIB, 6 * GIB)]).with_cpus(2, 2);
        desc.cmrs = Some(cmrs);
        Simulator::new(desc).unwrap()
    };
    for cmrs in [
        vec![(5 * GIB, 6 * GIB), (4 * GIB, 5 * GIB)],
        vec![(4 * GIB, 5 * GIB + PAGE), (5 * GIB, 6 * GIB)],
        vec![(4 * GIB, 6 * GIB), (4 * GIB, 6 * GIB)],
    ] {
        let sim = with_cmrs(cmrs.clone());
        assert_eq!(sys_init(&sim), TdxStatus::CMR_LIST_INVALID, "{cmrs:x?}");
        assert_eq!(sim.module_state(), SysState::SysInitPending);
        assert_eq!(sys_init(&sim), TdxStatus::CMR_LIST_INVALID, "{cmrs:x?}");
        sim.check_invariants().unwrap();
    }
    // Touching, in order: accepted.
    let sim = with_cmrs(vec![(4 * GIB, 5 * GIB), (5 * GIB, 6 * GIB)]);
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
}

#[test]
fn sys_init_rcx_is_checked_before_the_state() {
    let sim = small(Profile::tdx_1_5());
    let with_rcx = |rcx| {
        raw(
            &sim,
            Leaf::SYS_INIT.v0().rax(),
            SeamcallArgs {
                rcx,
                ..SeamcallArgs::ZERO
            },
        )
        .0
    };
    for rcx in [1, 1 << 63] {
        assert_eq!(with_rcx(rcx), op_invalid(OperandId::RCX));
    }
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    assert_eq!(with_rcx(0), TdxStatus::SUCCESS);
    // In the wrong state a non-zero RCX still reports RCX first.
    assert_eq!(with_rcx(1), op_invalid(OperandId::RCX));
    assert_eq!(with_rcx(0), TdxStatus::SYS_INIT_NOT_PENDING);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_init_in_later_states_is_not_pending() {
    let sim = small(Profile::tdx_1_5());
    configured(&sim, &small_layout());
    assert_eq!(sys_init(&sim), TdxStatus::SYS_INIT_NOT_PENDING);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    on_each_package(&sim, &mut |_, _| {
        // SAFETY: simulated module, one package at a time after WBINVD.
        let s = unsafe { leaf::tdh_sys_key_config(&sim) };
        assert_eq!(s, TdxStatus::SUCCESS);
    });
    assert_eq!(sys_init(&sim), TdxStatus::SYS_INIT_NOT_PENDING);
    assert_eq!(sim.module_state(), SysState::Ready);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_init_and_lp_init_check_boot_nt4_and_lp_init_compares_tsc_adjust_with_the_sample() {
    let sim = small(Profile::tdx_1_5());
    let here = sim.current_lp();
    let misc = tdx_sim::HostMsr::MiscEnable.default_value();
    let (nt4, tsc_adjust) = (tdx_sim::HostMsr::MiscEnable, tdx_sim::HostMsr::TscAdjust);
    // IA32_MISC_ENABLE.BOOT_NT4 on the LP: SYS.INIT fails, nothing moves.
    sim.set_host_msr(here, nt4, misc | 1 << 22);
    assert_eq!(sys_init(&sim), TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    sim.set_host_msr(here, nt4, misc);
    // SYS.INIT samples its LP's IA32_TSC_ADJUST (5); LP.INIT compares.
    for lp in 0..4 {
        sim.set_host_msr(lp, tsc_adjust, 5);
    }
    sim.set_host_msr(2, tsc_adjust, 0);
    sim.set_host_msr(3, nt4, misc | 1 << 22);
    sim.set_host_msr(3, tsc_adjust, 0);
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    for lp in 0..2 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    let inconsistent = TdxStatus::from_raw(TdxStatus::INCONSISTENT_MSR.raw() | 0x3B);
    assert_eq!(lp_init(&sim, 2), inconsistent);
    // BOOT_NT4 comes before IA32_TSC_ADJUST.
    assert_eq!(lp_init(&sim, 3), TdxStatus::LIMIT_CPUID_MAXVAL_SET);
    sim.set_host_msr(3, nt4, misc);
    assert_eq!(lp_init(&sim, 3), inconsistent);
    for lp in 2..4 {
        sim.set_host_msr(lp, tsc_adjust, 5);
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.LP.INIT
// ---------------------------------------------------------------------------

#[test]
fn lp_init_before_sys_init_is_not_pending() {
    let sim = small(Profile::tdx_1_5());
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SYS_LP_INIT_NOT_PENDING);
    }
    // Nothing was recorded: after SYS.INIT every LP initializes once.
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    sim.check_invariants().unwrap();
}

#[test]
fn lp_init_once_per_lp_clears_outputs_and_repeat_is_lp_init_done() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    let junk = 0x1234_5678;
    for lp in [2, 0, 3, 1] {
        sim.set_lp(lp);
        let (s, out) = raw(
            &sim,
            Leaf::SYS_LP_INIT.v0().rax(),
            SeamcallArgs::regs6(junk, junk, junk, 0, 0, 0),
        );
        assert_eq!(s, TdxStatus::SUCCESS, "LP {lp}");
        assert_eq!((out.rcx, out.rdx, out.r8), (0, 0, 0), "LP {lp}");
        let (s, _) = raw(&sim, Leaf::SYS_LP_INIT.v0().rax(), SeamcallArgs::ZERO);
        assert_eq!(s, TdxStatus::SYS_LP_INIT_DONE, "LP {lp} again");
    }
    sim.set_lp(0);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

#[test]
fn lp_init_after_config_or_ready_is_not_pending() {
    // The state check comes before the "this LP is done" check.
    let sim = small(Profile::tdx_1_5());
    configured(&sim, &small_layout());
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SYS_LP_INIT_NOT_PENDING);
    }
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SYS_LP_INIT_NOT_PENDING);
    }
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.RD
// ---------------------------------------------------------------------------

#[test]
fn sys_rd_needs_this_lp_initialized() {
    let sim = small(Profile::tdx_1_5());
    let id = field::MAX_TDMRS.into_raw();
    assert_eq!(sys_rd(&sim, id).0, TdxStatus::SYS_LP_INIT_NOT_DONE);
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(sys_rd(&sim, id).0, TdxStatus::SYS_LP_INIT_NOT_DONE);
    assert_eq!(lp_init(&sim, 1), TdxStatus::SUCCESS);
    sim.set_lp(1);
    let (s, value, _) = sys_rd(&sim, id);
    assert_eq!((s, value), (TdxStatus::SUCCESS, 64));
    sim.set_lp(0);
    assert_eq!(sys_rd(&sim, id).0, TdxStatus::SYS_LP_INIT_NOT_DONE);
    sim.check_invariants().unwrap();
}

#[test]
fn sys_rd_null_field_returns_the_first_field_id() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
    let (s, _, first) = sys_rd(&sim, u64::MAX);
    assert_eq!(s, TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT);
    assert_eq!(s.raw(), 0x0000_0C0B_0000_0000);
    assert!(!s.is_error(), "a warning, not an error");
    // The first field is readable.
    assert_eq!(sys_rd(&sim, first).0, TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

/// Walks TDH.SYS.RD from the null ID along "next field ID".
fn walk_fields(sim: &Simulator) -> Vec<(u64, u64)> {
    let (s, _, mut id) = sys_rd(sim, u64::MAX);
    assert_eq!(s, TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT);
    let mut out = Vec::new();
    while id != u64::MAX {
        let (s, value, next) = sys_rd(sim, id);
        assert_eq!(s, TdxStatus::SUCCESS, "field {id:#x}");
        out.push((id, value));
        id = next;
        assert!(out.len() <= 1000, "the walk does not end");
    }
    out
}

#[test]
fn sys_rd_serves_every_field_with_the_spec_values() {
    // Three CMRs (two back to back), as MCHECK would report them.
    let cmrs = [
        (4 * GIB, 12 * GIB),
        (12 * GIB, 16 * GIB),
        (17 * GIB, 20 * GIB),
    ];
    let mut desc = machine();
    desc.cmrs = Some(cmrs.to_vec());
    let sim = Simulator::new(desc).unwrap();
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);

    let walked = walk_fields(&sim);
    let fields: BTreeMap<u64, u64> = walked.iter().copied().collect();
    assert_eq!(fields.len(), walked.len(), "each field once");
    let get = |f: MdFieldId| {
        *fields
            .get(&f.into_raw())
            .unwrap_or_else(|| panic!("field {f:?} missing"))
    };
    // The values the module reports.
    assert_eq!(get(field::MAX_TDMRS), 64);
    assert_eq!(get(field::MAX_RESERVED_PER_TDMR), 16);
    assert_eq!(get(field::PAMT_4K_ENTRY_SIZE), 16);
    assert_eq!(get(field::PAMT_2M_ENTRY_SIZE), 16);
    assert_eq!(get(field::PAMT_1G_ENTRY_SIZE), 16);
    assert_eq!(get(field::NUM_CMRS), 32, "the array size");
    assert_eq!(get(field::TDR_BASE_SIZE), 4096);
    assert_eq!(get(field::TDCS_BASE_SIZE), 6 * 4096);
    assert_eq!(get(field::TDVPS_BASE_SIZE), 6 * 4096);
    for i in 0..32u32 {
        let (b, e) = cmrs.get(i as usize).copied().unwrap_or((0, 0));
        assert_eq!(get(field::cmr_base(i).unwrap()), b, "CMR_BASE[{i}]");
        assert_eq!(get(field::cmr_size(i).unwrap()), e - b, "CMR_SIZE[{i}]");
    }
    // The rest is the profile's.
    let p = sim.profile();
    assert_eq!(get(field::MAJOR_VERSION), u64::from(p.version.0));
    assert_eq!(get(field::MINOR_VERSION), u64::from(p.version.1));
    assert_eq!(get(field::UPDATE_VERSION), u64::from(p.version.2));
    assert_eq!(get(field::TDX_FEATURES0), p.features0.into_bits());
    assert_eq!(get(field::MODULE_HV), u64::from(p.module_hv));
    assert_eq!(get(field::ATTRIBUTES_FIXED0), p.attributes_fixed0);
    assert_eq!(get(field::ATTRIBUTES_FIXED1), p.attributes_fixed1);
    // XFAM_FIXED0: the module's XFAM bits masked by what the CPU supports.
    assert_eq!(get(field::XFAM_FIXED0), sim.machine().xfam_fixed0());
    assert_eq!(get(field::XFAM_FIXED0), 0x6_1BE7);
    assert_eq!(get(field::XFAM_FIXED1), p.xfam_fixed1);
    // Module 1.5.01 has no MAX_VCPUS_PER_TD; it publishes the CONFIG_FLAGS
    // and IA32_ARCH_CAPABILITIES configuration limits.
    assert_eq!(p.max_vcpus_per_td, None);
    assert!(!fields.contains_key(&field::MAX_VCPUS_PER_TD.into_raw()));
    assert_eq!(get(field::CONFIG_FLAGS_FIXED0), 0x7);
    assert_eq!(get(field::CONFIG_FLAGS_FIXED1), 0);
    assert_eq!(
        get(field::IA32_ARCH_CAPABILITIES_CONFIG_MASK),
        tdx_sim::ARCH_CAPS_CONFIG_MASK
    );
    assert_eq!(get(field::NUM_CPUID_CONFIG), p.cpuid_config.len() as u64);
    for (i, c) in p.cpuid_config.iter().enumerate() {
        let i = i as u32;
        let leaf = u64::from(c.leaf) | u64::from(c.subleaf.unwrap_or(u32::MAX)) << 32;
        assert_eq!(get(field::cpuid_config_leaf(i).unwrap()), leaf);
        // CONFIG_DIRECT only (`metadata_sys.c`), not the ALLOW_DIRECT bits.
        let [eax, ebx, ecx, edx] = c.config_direct.map(u64::from);
        assert_eq!(
            get(field::cpuid_config_value(i, 0).unwrap()),
            ebx << 32 | eax
        );
        assert_eq!(
            get(field::cpuid_config_value(i, 1).unwrap()),
            edx << 32 | ecx
        );
    }
    // Nothing else: 21 scalars, the 32-entry CPUID arrays (3 fields per
    // entry), NUM_CMRS and 64 CMR fields.
    assert_eq!(fields.len(), 21 + 3 * 32 + 1 + 64);
    // Each field read on its own gives the walked value, and "next" chains
    // in walk order.
    for (k, &(id, value)) in walked.iter().enumerate() {
        let next = walked.get(k + 1).map_or(u64::MAX, |&(n, _)| n);
        assert_eq!(sys_rd(&sim, id), (TdxStatus::SUCCESS, value, next));
    }
    // No Extensions fields in module 1.5, and no MAX_VCPUS_PER_TD in 1.5.01.
    let (s, _, _) = sys_rd(&sim, field::EXT_MEMORY_POOL_REQUIRED_PAGES.into_raw());
    assert_eq!(s.code(), TdxStatus::METADATA_FIELD_ID_INCORRECT);
    let (s, _, _) = sys_rd(&sim, field::MAX_VCPUS_PER_TD.into_raw());
    assert_eq!(s.code(), TdxStatus::METADATA_FIELD_ID_INCORRECT);
    sim.check_invariants().unwrap();
}

/// CPUID_CONFIG_LEAVES and CPUID_CONFIG_VALUES have 32 entries in modules
/// 1.5.01 and 1.5.05 (`global_sys_fields_lookup.c`); past NUM_CPUID_CONFIG
/// the module answers success, a leaf of all ones and values 0
/// (`metadata_sys.c`). Entry 32 does not exist.
#[test]
fn sys_rd_cpuid_config_entries_past_the_count_read_all_ones_and_zero() {
    for (profile, count) in [(Profile::tdx_1_5(), 12u32), (Profile::tdx_1_5_05(), 18)] {
        let sim = small(profile);
        assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
        assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
        let (s, n, _) = sys_rd(&sim, field::NUM_CPUID_CONFIG.into_raw());
        assert_eq!((s, n), (TdxStatus::SUCCESS, u64::from(count)));
        // The last real entry is a leaf, the next is not.
        let last = sys_rd(
            &sim,
            field::cpuid_config_leaf(count - 1).unwrap().into_raw(),
        );
        assert_eq!(last.0, TdxStatus::SUCCESS);
        assert_ne!(last.1, u64::MAX);
        for i in count..32 {
            let leaf = field::cpuid_config_leaf(i).unwrap().into_raw();
            let (s, v, next) = sys_rd(&sim, leaf);
            assert_eq!((s, v), (TdxStatus::SUCCESS, u64::MAX), "LEAVES[{i}]");
            if i < 31 {
                assert_eq!(next, leaf + 1, "LEAVES[{i}]: next element");
            }
            for j in 0..2 {
                let id = field::cpuid_config_value(i, j).unwrap().into_raw();
                let (s, v, _) = sys_rd(&sim, id);
                assert_eq!((s, v), (TdxStatus::SUCCESS, 0), "VALUES[{i}][{j}]");
            }
        }
        let past = field::cpuid_config_leaf(31).unwrap().into_raw() + 1;
        assert_eq!(
            sys_rd(&sim, past).0.code(),
            TdxStatus::METADATA_FIELD_ID_INCORRECT
        );
        sim.check_invariants().unwrap();
    }
}

#[test]
fn sys_rd_serves_the_extensions_fields_on_the_ext_profile() {
    let sim = small(Profile::tdx_1_5_ext());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
    let pool = field::EXT_MEMORY_POOL_REQUIRED_PAGES.into_raw();
    assert_eq!(sys_rd(&sim, pool).0, TdxStatus::SUCCESS);
    assert_eq!(sys_rd(&sim, pool).1, 1000);
    assert_eq!(sys_rd(&sim, field::EXT_REQUIRED.into_raw()).1, 1);
    let features = sys_rd(&sim, field::TDX_FEATURES0.into_raw()).1;
    assert_ne!(features & 1 << 39, 0, "TDX_FEATURES0.EXT");
    assert!(walk_fields(&sim).iter().any(|&(id, _)| id == pool));
    sim.check_invariants().unwrap();
}

#[test]
fn sys_rd_unknown_field_is_field_id_incorrect() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(lp_init(&sim, 0), TdxStatus::SUCCESS);
    for id in [
        0,
        0x9100_0001_0000_00FF,
        field::cmr_base(31).unwrap().into_raw() + 1,
    ] {
        let (s, _, _) = sys_rd(&sim, id);
        assert_eq!(s.code(), TdxStatus::METADATA_FIELD_ID_INCORRECT, "{id:#x}");
    }
    sim.check_invariants().unwrap();
}

#[test]
fn sys_rd_works_in_every_state_but_shutdown() {
    let sim = small(Profile::tdx_1_5());
    let id = field::MAX_TDMRS.into_raw();
    configured(&sim, &small_layout());
    assert_eq!(sys_rd(&sim, id).1, 64);
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 3), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    for lp in 0..4 {
        sim.set_lp(lp);
        assert_eq!(sys_rd(&sim, id).0, TdxStatus::SUCCESS);
    }
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(sys_rd(&sim, id).0, TdxStatus::SYS_SHUTDOWN);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.KEY.CONFIG
// ---------------------------------------------------------------------------

#[test]
fn key_config_outside_its_window_is_not_pending() {
    let sim = small(Profile::tdx_1_5());
    assert_eq!(key_config(&sim, 0), TdxStatus::SYS_KEY_CONFIG_NOT_PENDING);
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    assert_eq!(key_config(&sim, 0), TdxStatus::SYS_KEY_CONFIG_NOT_PENDING);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_once_per_package_and_ready_after_the_last() {
    let sim = small(Profile::tdx_1_5());
    let tdmrs = small_layout();
    configured(&sim, &tdmrs);
    // Package 0 (LPs 0, 1).
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    assert_eq!(
        tdmr_init(&sim, tdmrs[0].base()).0,
        TdxStatus::SYS_NOT_READY,
        "not ready with one package of two"
    );
    let again = key_config(&sim, 1);
    assert_eq!(again, TdxStatus::KEY_CONFIGURED);
    assert_eq!(again.raw(), 0x0000_0815_0000_0000);
    assert!(!again.is_error(), "KEY_CONFIGURED is not an error");
    assert_eq!(key_config(&sim, 0), TdxStatus::KEY_CONFIGURED);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    // Package 1 (LPs 2, 3) is the last one.
    assert_eq!(key_config(&sim, 3), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    // After SYS_READY the state check comes first, for every package.
    for lp in 0..4 {
        assert_eq!(key_config(&sim, lp), TdxStatus::SYS_KEY_CONFIG_NOT_PENDING);
    }
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_packages_in_any_order() {
    let desc = MachineDesc::new(vec![(4 * GIB, 6 * GIB)]).with_cpus(3, 1);
    let sim = Simulator::new(desc).unwrap();
    configured(&sim, &small_layout());
    assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    assert_eq!(key_config(&sim, 2), TdxStatus::KEY_CONFIGURED);
    assert_eq!(key_config(&sim, 1), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_on_a_one_package_machine_makes_the_module_ready() {
    let desc = MachineDesc::new(vec![(4 * GIB, 6 * GIB)]).with_cpus(1, 2);
    let sim = Simulator::new(desc).unwrap();
    configured(&sim, &small_layout());
    assert_eq!(key_config(&sim, 1), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Ready);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.TDMR.INIT and "usable only in initialized 1 GiB blocks"
// ---------------------------------------------------------------------------

#[test]
fn tdmr_init_rcx_checks() {
    let sim = small(Profile::tdx_1_5());
    let tdmrs = small_layout();
    ready(&sim, &tdmrs, false);
    let base = tdmrs[0].base();
    for (what, rcx) in [
        ("4 KiB past the base", base + PAGE),
        ("2 MiB past the base", base + 2 * MIB),
        ("2^52", 1 << 52),
        ("HKID bit 46", base | 1 << 46),
        ("1 GiB inside the TDMR, not its base", base + GIB),
        ("not in any TDMR", 8 * GIB),
        ("zero", 0),
    ] {
        assert_eq!(tdmr_init(&sim, rcx).0, op_invalid(OperandId::RCX), "{what}");
    }
    // Nothing was initialized by the failed calls.
    assert_eq!(tdmr_init(&sim, base), (TdxStatus::SUCCESS, base));
    sim.check_invariants().unwrap();
}

#[test]
fn tdmr_init_4mib_per_call_rdx_rounded_down_and_blocks_usable_when_complete() {
    // TDMR A = [4G, 6G) (2 GiB), TDMR B = [6G, 7G).
    let desc = MachineDesc::new(vec![(4 * GIB, 7 * GIB)]).with_cpus(2, 2);
    let sim = Simulator::new(desc).unwrap();
    let mut tdmrs = simple_layout(&[(4 * GIB, 6 * GIB)], 2);
    tdmrs.extend(simple_layout(&[(6 * GIB, 7 * GIB)], 1));
    ready(&sim, &tdmrs, false);
    let (a, b) = (4 * GIB, 6 * GIB);
    let range_err = TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX);
    let usable = |pa: u64| rdmd(&sim, pa).0 == TdxStatus::SUCCESS;
    for pa in [a, a + 3 * GIB / 2, b] {
        assert_eq!(rdmd(&sim, pa).0, range_err, "{pa:#x} before any init");
    }
    let calls_per_gib = GIB / (4 * MIB);
    assert_eq!(calls_per_gib, 256);
    for n in 1..=2 * calls_per_gib {
        let (s, rdx) = tdmr_init(&sim, a);
        assert_eq!(s, TdxStatus::SUCCESS, "call {n}");
        // last_initialized = base + n * 4 MiB, rounded down to 1 GiB.
        let expect = (a + n * 4 * MIB) & !(GIB - 1);
        assert_eq!(rdx, expect, "call {n}");
        // A 1 GiB block is usable only once all of it is initialized.
        assert_eq!(usable(a), n >= calls_per_gib, "first block after call {n}");
        assert_eq!(usable(a + GIB - PAGE), n >= calls_per_gib);
        assert_eq!(
            usable(a + GIB),
            n == 2 * calls_per_gib,
            "second block after call {n}"
        );
    }
    assert_eq!(tdmr_init(&sim, a).0, TdxStatus::TDMR_ALREADY_INITIALIZED);
    let done = tdmr_init(&sim, a).0;
    assert_eq!(done, TdxStatus::TDMR_ALREADY_INITIALIZED);
    assert_eq!(done.raw(), 0x0000_0A03_0000_0000);
    assert!(!done.is_error(), "a warning, not an error");
    assert!(usable(a + 2 * GIB - 2 * PAGE));
    // TDMR B is untouched by A's progress.
    assert_eq!(rdmd(&sim, b).0, range_err);
    for n in 1..=calls_per_gib {
        let (s, rdx) = tdmr_init(&sim, b);
        assert_eq!(s, TdxStatus::SUCCESS);
        assert_eq!(rdx, if n == calls_per_gib { b + GIB } else { b });
    }
    assert!(usable(b));
    assert_eq!(tdmr_init(&sim, b).0, TdxStatus::TDMR_ALREADY_INITIALIZED);
    sim.check_invariants().unwrap();
}

#[test]
fn tdmrs_initialize_independently_in_any_order() {
    let sim = small(Profile::tdx_1_5());
    let tdmrs = simple_layout(&[(4 * GIB, 6 * GIB)], 1);
    ready(&sim, &tdmrs, false);
    let (a, b) = (4 * GIB, 5 * GIB);
    // Interleave: B first, then A, alternating.
    for n in 1..=256 {
        assert_eq!(tdmr_init(&sim, b).0, TdxStatus::SUCCESS);
        let (s, rdx) = tdmr_init(&sim, a);
        assert_eq!(s, TdxStatus::SUCCESS);
        assert_eq!(rdx, if n == 256 { a + GIB } else { a });
    }
    assert_eq!(tdmr_init(&sim, a).0, TdxStatus::TDMR_ALREADY_INITIALIZED);
    assert_eq!(tdmr_init(&sim, b).0, TdxStatus::TDMR_ALREADY_INITIALIZED);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.PHYMEM.PAGE.RDMD (the operand checks, and the page types)
// ---------------------------------------------------------------------------

#[test]
fn rdmd_operand_checks() {
    let sim = small(Profile::tdx_1_5());
    ready(&sim, &small_layout(), true);
    let invalid = op_invalid(OperandId::RCX);
    let range_err = TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX);
    for (what, pa, expect) in [
        ("not 4 KiB aligned", 4 * GIB + 8, invalid),
        ("HKID bit 46", (4 * GIB) | 1 << 46, invalid),
        ("2^52", 1 << 52, invalid),
        ("below every TDMR, not RAM", 3 * GIB, range_err),
        ("at the TDMR end", 6 * GIB, range_err),
        ("far above", 1 << 45, range_err),
    ] {
        assert_eq!(rdmd(&sim, pa).0, expect, "{what}");
    }
    sim.check_invariants().unwrap();
}

#[test]
fn rdmd_reports_free_and_reserved_pages() {
    // TDMR [4G, 6G) with a reserved area at [4G + 1G, +2 MiB) besides the
    // PAMT area; a second TDMR [16G, 17G) keeps its PAMT outside every TDMR,
    // at 12G.
    let sim = Simulator::new(machine()).unwrap();
    let mut t0 = simple_layout(&[(4 * GIB, 6 * GIB)], 2)[0];
    let pamt_area = t0.reserved_area(0).unwrap();
    t0.set_reserved_area(0, GIB, 2 * MIB).unwrap();
    t0.set_reserved_area(1, pamt_area.offset(), pamt_area.size())
        .unwrap();
    let mut t1 = TdmrInfo::with_range(16 * GIB, GIB);
    let [p4k, p2m, p1g] = testkit::pamt_sizes(GIB);
    t1.set_pamt_4k(12 * GIB, p4k);
    t1.set_pamt_2m(12 * GIB + p4k, p2m);
    t1.set_pamt_1g(12 * GIB + p4k + p2m, p1g);
    let r = ready(&sim, &[t0, t1], true);
    let ok = |pa| rdmd(&sim, pa);
    let free = (TdxStatus::SUCCESS, PamtPageType::NDA, 0);
    let rsvd = (TdxStatus::SUCCESS, PamtPageType::RSVD, 0);
    assert_eq!(ok(4 * GIB + 16 * MIB), free);
    assert_eq!(ok(5 * GIB - PAGE), free);
    assert_eq!(ok(5 * GIB), rsvd, "custom reserved area");
    assert_eq!(ok(5 * GIB + 2 * MIB - PAGE), rsvd);
    assert_eq!(ok(5 * GIB + 2 * MIB), free, "just past it");
    // PAMT pages of TDMR 0 lie in its reserved area: PT_RSVD.
    let pamt0 = r.pamt_runs[0].first().hpa().as_u64();
    assert_eq!(ok(pamt0), rsvd);
    assert_eq!(
        sim.page_state(Pfn::new(pamt0 / PAGE)),
        Some(PageState::Module)
    );
    assert_eq!(ok(16 * GIB), free);
    // RAM in the gap between the two TDMRs is in no PAMT block.
    assert_eq!(
        ok(8 * GIB).0,
        TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX)
    );
    // PAMT pages outside every TDMR are not in any PAMT block.
    assert_eq!(
        ok(12 * GIB).0,
        TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX)
    );
    assert_eq!(
        sim.page_state(Pfn::new(12 * GIB / PAGE)),
        Some(PageState::Module)
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.SYS.SHUTDOWN and TDH.SYS.LP.SHUTDOWN
// ---------------------------------------------------------------------------

#[test]
fn sys_shutdown_refuses_a_bad_handoff_then_shuts_down() {
    let sim = small(Profile::tdx_1_5());
    ready(&sim, &small_layout(), true);
    // MODULE_HV is 0 on this profile.
    let too_new = ShutdownHandoff::new().with_handoff_version(1).into_bits();
    for (what, rcx) in [
        ("handoff version above MODULE_HV", too_new),
        ("reserved bit 17", 1 << 17),
        ("reserved bit 63", 1 << 63),
    ] {
        assert_eq!(shutdown(&sim, rcx), op_invalid(OperandId::RCX), "{what}");
        assert_eq!(sim.module_state(), SysState::Ready);
    }
    // SAFETY: simulated module; nothing is running.
    let s = unsafe { leaf::tdh_sys_shutdown(&sim, ShutdownHandoff::new()) };
    assert_eq!(s, TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::Shutdown);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SYS_SHUTDOWN);
    sim.check_invariants().unwrap();
}

#[test]
fn lp_shutdown_succeeds_in_every_state_and_changes_nothing() {
    let sim = small(Profile::tdx_1_5());
    let tdmrs = small_layout();
    let check = |sim: &Simulator, state: SysState| {
        for lp in 0..4 {
            sim.set_lp(lp);
            assert_eq!(lp_shutdown(sim), TdxStatus::SUCCESS, "{state:?}, LP {lp}");
        }
        sim.set_lp(0);
        assert_eq!(sim.module_state(), state);
    };
    check(&sim, SysState::SysInitPending);
    // LP.SHUTDOWN before bring-up did not disturb it.
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    check(&sim, SysState::SysInitDone);
    for lp in 0..4 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    // Nor un-initialize an LP: SYS.RD still works.
    check(&sim, SysState::SysInitDone);
    assert_eq!(
        sys_rd(&sim, field::MAX_TDMRS.into_raw()).0,
        TdxStatus::SUCCESS
    );
    sim.check_invariants().unwrap();

    let sim = small(Profile::tdx_1_5());
    configured(&sim, &tdmrs);
    check(&sim, SysState::SysConfigDone);
    assert_eq!(key_config(&sim, 0), TdxStatus::SUCCESS);
    assert_eq!(key_config(&sim, 2), TdxStatus::SUCCESS);
    check(&sim, SysState::Ready);
    assert_eq!(shutdown(&sim, 0), TdxStatus::SUCCESS);
    check(&sim, SysState::Shutdown);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.EXT.MEM.ADD and TDH.EXT.INIT (Profile::tdx_1_5_ext; module 1.5.01 has
// no source for them, only their register ABI is known: the checks are model
// choices and say so)
// ---------------------------------------------------------------------------

/// A ready Extensions module with its one 2 GiB TDMR initialized, the pool
/// (1000 frames) and a list page allocated.
fn ext_ready() -> (Simulator, PfnRun, PfnRun) {
    let sim = small(Profile::tdx_1_5_ext());
    ready(&sim, &small_layout(), true);
    let pool = sim.alloc_pages(1000, 1, Placement::Anywhere).unwrap();
    let list = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
    (sim, pool, list)
}

/// Writes `pages` into the list page and returns the HPA_LIST_INFO.
fn write_list(sim: &Simulator, list: PfnRun, pages: &[u64]) -> HpaListInfo {
    let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    // SAFETY: the list page is host memory this test allocated, and no
    // SEAMCALL is running.
    unsafe { sim.write_phys(list.hpa(), &bytes) };
    HpaListInfo::try_new(list.first(), pages.len()).unwrap()
}

fn ext_mem_add(sim: &Simulator, info: HpaListInfo) -> (TdxStatus, HpaListInfo) {
    // SAFETY: simulated module; the listed pages and the list page are
    // simulator pages allocated for this (crate contract items 1-2).
    let c = unsafe { leaf::tdh_ext_mem_add(sim, info) };
    (c.status, c.out)
}

fn ext_init(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf takes no operand.
    unsafe { leaf::tdh_ext_init(sim) }
}

fn pages_of(run: PfnRun) -> Vec<u64> {
    run.iter().map(|p| p.hpa().as_u64()).collect()
}

#[test]
fn ext_mem_add_donates_each_page_and_ext_init_completes() {
    let (sim, pool, list) = ext_ready();
    let pages = pages_of(pool);
    let module_before = sim.accounting().module;
    assert_eq!(sim.ext_status(), (0, false));
    // Model choice: EXT.INIT before the pool is complete is refused.
    assert_eq!(ext_init(&sim), TdxStatus::SYS_STATE_INCORRECT);
    for (w, window) in pages.chunks(512).enumerate() {
        let info = write_list(&sim, list, window);
        assert_eq!(ext_mem_add(&sim, info).0, TdxStatus::SUCCESS, "window {w}");
        if w == 0 {
            assert_eq!(sim.ext_status(), (512, false));
            assert_eq!(ext_init(&sim), TdxStatus::SYS_STATE_INCORRECT);
        }
    }
    assert_eq!(sim.ext_status(), (1000, false));
    assert_eq!(sim.accounting().module, module_before + 1000);
    for pa in [pages[0], pages[511], pages[512], pages[999]] {
        assert_eq!(sim.page_state(Pfn::new(pa / PAGE)), Some(PageState::Module));
        // Model choice: pool pages read back as PT_RSVD.
        assert_eq!(rdmd(&sim, pa).1, PamtPageType::RSVD);
    }
    assert_eq!(ext_init(&sim), TdxStatus::SUCCESS);
    assert_eq!(sim.ext_status(), (1000, true));
    // Model choice: a second EXT.INIT is a no-op success.
    assert_eq!(ext_init(&sim), TdxStatus::SUCCESS);
    // SAFETY: the list page is host memory this test allocated and no longer
    // uses.
    unsafe { sim.free_pages(list) };
    sim.check_invariants().unwrap();
}

#[test]
fn ext_mem_add_refuses_bad_lists_model_choice() {
    let (sim, pool, list) = ext_ready();
    let pages = pages_of(pool);
    let info = write_list(&sim, list, &pages[..4]);
    let invalid = op_invalid(OperandId::RCX);
    // HPA_LIST_INFO reserved bits (2:0 and 54:52), FIRST_ENTRY > LAST_ENTRY.
    for (what, rcx) in [
        ("bit 0", info.into_bits() | 1),
        ("bit 52", info.into_bits() | 1 << 52),
        (
            "FIRST_ENTRY past LAST_ENTRY",
            info.with_first_entry(4).into_bits(),
        ),
    ] {
        let (s, _) = raw(
            &sim,
            Leaf::EXT_MEM_ADD.v0().rax(),
            SeamcallArgs {
                rcx,
                ..SeamcallArgs::ZERO
            },
        );
        assert_eq!(s, invalid, "{what}");
    }
    // Entry 2 is outside every TDMR: entries 0-1 are donated, and RCX comes
    // back with FIRST_ENTRY at the failing entry.
    let info = write_list(&sim, list, &[pages[0], pages[1], 8 * GIB, pages[3]]);
    let (s, out) = ext_mem_add(&sim, info);
    assert_eq!(
        s,
        TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RCX)
    );
    assert_eq!(out, info.with_first_entry(2));
    assert_eq!(sim.ext_status().0, 2);
    // A page donated twice is no longer free.
    let info = write_list(&sim, list, &[pages[1]]);
    let (s, out) = ext_mem_add(&sim, info);
    assert_eq!(
        s,
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX)
    );
    assert_eq!(out.first_entry(), 0);
    assert_eq!(sim.ext_status().0, 2);
    // The pages not donated are still the host's: give them back.
    let rest = PfnRun::try_new(Pfn::new(pool.first().as_u64() + 2), 998).unwrap();
    // SAFETY: host pages this test allocated and never handed over.
    unsafe { sim.free_pages(rest) };
    sim.check_invariants().unwrap();
}
