//! TDH.SYS.CONFIG (v0 and v1) against Intel's `tdh_sys_config.c`: every
//! global check and every per-TDMR check, in the module's order, with the
//! exact status and detail bytes, plus the quirk
//! that a failed CONFIG keeps the global HKID reserved.
//!
//! Each per-TDMR test breaks exactly one rule of TDMR 1 (so detail byte 0
//! is 1, not a default 0) on top of a valid TDMR 0, and where the model
//! states an order, a second test breaks two rules and checks that the
//! earlier one is reported.

// UNSAFETY: the tests issue raw leaves (`tdx_sys::leaf`, `Seamcall::seamcall`)
// and write TDMR arrays with `DirectMap::write_phys`, all against the
// simulator, whose memory is simulated.
#![allow(unsafe_code)]

use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, HardwareInfo, Placement,
    platform::on_each_package,
};
use tdx_sim::{
    Fault, KotState, MachineDesc, PageState, Profile, Simulator, SysState,
    testkit::{self, pamt_sizes, simple_layout, write_tdmr_infos},
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Hpa, Leaf, LeafVersion, OperandId, Pfn, TdxStatus, abi::TdmrInfo, metadata::TdxFeatures0,
    regs::SysConfigKeyId,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// The default test machine: 16 GiB of RAM at 4 GiB (CMRs = RAM), two
/// packages of two LPs, 31 MKTME + 32 TDX KeyIDs (HKID bits 51:46).
fn machine() -> MachineDesc {
    MachineDesc::new(vec![(4 * GIB, 20 * GIB)]).with_cpus(2, 2)
}

/// The default machine with explicit CMRs, in array order.
fn machine_with_cmrs(cmrs: &[(u64, u64)]) -> MachineDesc {
    let mut d = machine();
    d.cmrs = Some(cmrs.to_vec());
    d
}

/// Issues `rax` with `args` in the `Ret` shape.
fn raw(sim: &Simulator, rax: u64, mut args: SeamcallArgs) -> (TdxStatus, SeamcallArgs) {
    // SAFETY: `Seamcall for Simulator` promises register-level behaviour only;
    // every address in `args` is simulated memory, so no real page changes
    // hands (tdx-sys crate contract, items 1-2, hold trivially).
    let s = unsafe { sim.seamcall(rax, &mut args, RegShape::Ret) };
    (s, args)
}

/// TDH.SYS.CONFIG v0 with raw RCX, RDX, R8.
fn config_raw(sim: &Simulator, rcx: u64, rdx: u64, r8: u64) -> TdxStatus {
    raw(
        sim,
        Leaf::SYS_CONFIG.v0().rax(),
        SeamcallArgs::regs6(rcx, rdx, r8, 0, 0, 0),
    )
    .0
}

/// TDH.SYS.INIT.
fn sys_init(sim: &Simulator) -> TdxStatus {
    // SAFETY: simulated module; the leaf takes no memory operand.
    unsafe { leaf::tdh_sys_init(sim) }
}

/// TDH.SYS.LP.INIT on `lp`.
fn lp_init(sim: &Simulator, lp: u32) -> TdxStatus {
    let mut s = TdxStatus::SUCCESS;
    sim.on_cpu(CpuId(lp), &mut || {
        // SAFETY: simulated module; `on_cpu` pins the call to `lp` (crate
        // contract item 4).
        s = unsafe { leaf::tdh_sys_lp_init(sim) };
    });
    s
}

/// SYS.INIT and LP.INIT on every LP.
fn init_lps(sim: &Simulator) {
    assert_eq!(sys_init(sim), TdxStatus::SUCCESS);
    for lp in 0..sim.cpus() {
        assert_eq!(lp_init(sim, lp), TdxStatus::SUCCESS, "LP {lp}");
    }
}

/// The global KeyID Linux would pick (the first private one).
fn global_keyid(sim: &Simulator) -> u16 {
    sim.hardware().keyid_partition.global_keyid() as u16
}

/// Allocates the PAMT frames of `tdmrs` where they are free RAM, so the
/// TDMR_INFO pages never land on them. Best effort: overlapping, non-RAM
/// or malformed PAMTs (the point of many tests) are skipped.
fn alloc_pamts(sim: &Simulator, tdmrs: &[TdmrInfo]) {
    for t in tdmrs {
        for (b, s) in [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()] {
            if b % PAGE != 0 || s % PAGE != 0 || s == 0 || s > 64 * GIB {
                continue;
            }
            if let Ok(pfn) = Pfn::try_new(b / PAGE) {
                let _ = sim.alloc_pages(s / PAGE, 1, Placement::Exact(pfn));
            }
        }
    }
}

/// Writes `tdmrs` and issues TDH.SYS.CONFIG v0 with them and the global
/// KeyID. The caller has run SYS.INIT and LP.INIT.
fn config(sim: &Simulator, tdmrs: &[TdmrInfo]) -> TdxStatus {
    alloc_pamts(sim, tdmrs);
    let array = write_tdmr_infos(sim, tdmrs);
    let key = SysConfigKeyId::new().with_hkid(global_keyid(sim));
    // SAFETY: simulated module; the array, the TDMR_INFOs and the PAMT frames
    // are simulator pages allocated for this call (crate contract items 1-2).
    unsafe { leaf::tdh_sys_config(sim, Hpa::new(array), tdmrs.len() as u64, key) }
}

/// Builds a simulator on `desc`, brings it to SYSINIT_DONE with every LP
/// initialized, and issues CONFIG with `tdmrs`; asserts `expected`.
///
/// After a failure it also asserts what the module leaves after every failure
/// past check 7: the state stays SYSINIT_DONE and the global HKID stays
/// RESERVED. After a success, the state is SYSCONFIG_DONE.
fn expect_config_on(desc: MachineDesc, tdmrs: &[TdmrInfo], expected: TdxStatus) -> Simulator {
    let sim = Simulator::new(desc).unwrap();
    init_lps(&sim);
    let s = config(&sim, tdmrs);
    assert_eq!(s, expected, "TDMRs: {tdmrs:#?}");
    let hkid = global_keyid(&sim);
    if expected.is_error() {
        assert_eq!(sim.module_state(), SysState::SysInitDone);
        assert_eq!(
            sim.kot_state(hkid),
            KotState::Reserved,
            "quirk: stays reserved"
        );
    } else {
        assert_eq!(sim.module_state(), SysState::SysConfigDone);
        assert_eq!(sim.kot_state(hkid), KotState::Reserved);
    }
    sim.check_invariants().unwrap();
    sim
}

fn expect_config(tdmrs: &[TdmrInfo], expected: TdxStatus) -> Simulator {
    expect_config_on(machine(), tdmrs, expected)
}

/// A TDMR `[base, base + size)` with its three PAMTs of exactly the
/// required size back to back at `pamt` (4K, then 2M, then 1G), and no
/// reserved areas.
fn tdmr(base: u64, size: u64, pamt: u64) -> TdmrInfo {
    let [p4k, p2m, p1g] = pamt_sizes(size);
    let mut t = TdmrInfo::with_range(base, size);
    t.set_pamt_4k(pamt, p4k);
    t.set_pamt_2m(pamt + p4k, p2m);
    t.set_pamt_1g(pamt + p4k + p2m, p1g);
    t
}

/// Two valid 1 GiB TDMRs, [4G, 5G) and [5G, 6G), each with its PAMT at its
/// top inside a reserved area (slot 0).
fn good_pair() -> Vec<TdmrInfo> {
    simple_layout(&[(4 * GIB, 6 * GIB)], 1)
}

/// TDMR 0 of [`good_pair`] and a TDMR 1 = [5G, 6G) whose PAMT sits at
/// 16 GiB, outside every TDMR, leaving all 16 reserved slots free.
fn pair_far_pamt() -> Vec<TdmrInfo> {
    vec![good_pair()[0], tdmr(5 * GIB, GIB, 16 * GIB)]
}

fn tdmr_status(code: TdxStatus, i: u8) -> TdxStatus {
    code.with_config_detail(i, 0, 0)
}

// ---------------------------------------------------------------------------
// Valid layouts
// ---------------------------------------------------------------------------

#[test]
fn valid_layout_is_accepted_and_pamts_become_module_pages() {
    let tdmrs = good_pair();
    let sim = expect_config(&tdmrs, TdxStatus::SUCCESS);
    for t in &tdmrs {
        for (b, s) in [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()] {
            for pa in [b, b + s - PAGE] {
                assert_eq!(sim.page_state(Pfn::new(pa / PAGE)), Some(PageState::Module));
            }
        }
    }
}

#[test]
fn sixty_four_tdmrs_are_accepted() {
    // RDX = 64 = MAX_TDMRS is the largest accepted count.
    let desc = MachineDesc::new(vec![(4 * GIB, 68 * GIB)]).with_cpus(2, 2);
    let tdmrs = simple_layout(&[(4 * GIB, 68 * GIB)], 1);
    assert_eq!(tdmrs.len(), 64);
    expect_config_on(desc, &tdmrs, TdxStatus::SUCCESS);
}

#[test]
fn tdmrs_separated_by_a_gap_are_accepted() {
    // "TDMRs may be separated by any gap".
    let mut tdmrs = simple_layout(&[(4 * GIB, 5 * GIB)], 1);
    tdmrs.extend(simple_layout(&[(10 * GIB, 12 * GIB)], 2));
    expect_config(&tdmrs, TdxStatus::SUCCESS);
}

#[test]
fn config_v1_is_refused_by_the_dispatcher_on_the_default_profile() {
    // SYS.CONFIG is not a versioned leaf in 1.5.01 (the dispatcher's check).
    let sim = Simulator::new(machine()).unwrap();
    init_lps(&sim);
    let array = write_tdmr_infos(&sim, &good_pair());
    let hkid = global_keyid(&sim);
    // SAFETY: simulated module and simulator-allocated array (crate contract 1-2).
    let s = unsafe {
        leaf::tdh_sys_config_v1(
            &sim,
            Hpa::new(array),
            2,
            SysConfigKeyId::new().with_hkid(hkid),
            TdxFeatures0::EXT,
            0,
        )
    };
    assert_eq!(s, TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX));
    // The leaf did not run: no side effect on the KOT.
    assert_eq!(sim.kot_state(hkid), KotState::Free);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

/// TDH.SYS.CONFIG v1 on the Extensions profile with `features` in R9.
fn config_v1_ext(features: u64) -> (Simulator, TdxStatus) {
    let sim = Simulator::new(machine().with_profile(Profile::tdx_1_5_ext())).unwrap();
    init_lps(&sim);
    let tdmrs = good_pair();
    alloc_pamts(&sim, &tdmrs);
    let array = write_tdmr_infos(&sim, &tdmrs);
    let r8 = u64::from(global_keyid(&sim));
    let (s, _) = raw(
        &sim,
        Leaf::SYS_CONFIG.v(1).rax(),
        SeamcallArgs::regs6(array, 2, r8, features, 0, 0),
    );
    (sim, s)
}

#[test]
fn config_v1_is_accepted_on_the_ext_profile() {
    for features in [TdxFeatures0::EXT.into_bits(), 0] {
        let (sim, s) = config_v1_ext(features);
        assert_eq!(s, TdxStatus::SUCCESS, "R9 = {features:#x}");
        assert_eq!(sim.module_state(), SysState::SysConfigDone);
        sim.check_invariants().unwrap();
    }
}

#[test]
fn config_v1_feature_not_configurable_is_r9_model_choice() {
    // Model choice (tdx-sim module.rs): R9 may only enable configurable
    // features. NO_RBP_MOD is a feature the module has but does not let the
    // host switch.
    let (sim, s) = config_v1_ext(TdxFeatures0::NO_RBP_MOD.into_bits());
    assert_eq!(s, TdxStatus::OPERAND_INVALID.with_operand(OperandId::R9));
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    sim.check_invariants().unwrap();
}

#[test]
fn config_v2_is_refused_on_the_ext_profile() {
    let sim = Simulator::new(machine().with_profile(Profile::tdx_1_5_ext())).unwrap();
    init_lps(&sim);
    let array = write_tdmr_infos(&sim, &good_pair());
    let (s, _) = raw(
        &sim,
        LeafVersion::new(Leaf::SYS_CONFIG, 2).rax(),
        SeamcallArgs::regs6(array, 2, u64::from(global_keyid(&sim)), 0, 0, 0),
    );
    assert_eq!(s, TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// global checks, in order
// ---------------------------------------------------------------------------

#[test]
fn g1_sys_busy_injected_changes_nothing() {
    // Check 1 (global lock) cannot fail in a single-threaded model; it is
    // injected. The leaf does not run: no KOT side effect.
    let sim = Simulator::new(machine()).unwrap();
    init_lps(&sim);
    sim.inject(Fault::status(Leaf::SYS_CONFIG, 1, TdxStatus::SYS_BUSY));
    let tdmrs = good_pair();
    assert_eq!(config(&sim, &tdmrs), TdxStatus::SYS_BUSY);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    assert_eq!(sim.kot_state(global_keyid(&sim)), KotState::Free);
    assert_eq!(config(&sim, &tdmrs), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn g2_config_before_sys_init_is_not_pending() {
    let sim = Simulator::new(machine()).unwrap();
    assert_eq!(
        config(&sim, &good_pair()),
        TdxStatus::SYS_CONFIG_NOT_PENDING
    );
    assert_eq!(sim.module_state(), SysState::SysInitPending);
    assert_eq!(sim.kot_state(global_keyid(&sim)), KotState::Free);
    sim.check_invariants().unwrap();
}

#[test]
fn g2_config_after_config_and_after_ready_is_not_pending() {
    let sim = Simulator::new(machine()).unwrap();
    let tdmrs = good_pair();
    let opts = testkit::BringUpOptions {
        stop_after_config: true,
        ..Default::default()
    };
    testkit::bring_up(&sim, &tdmrs, opts);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    let array = write_tdmr_infos(&sim, &tdmrs);
    let r8 = u64::from(global_keyid(&sim));
    assert_eq!(
        config_raw(&sim, array, 2, r8),
        TdxStatus::SYS_CONFIG_NOT_PENDING
    );
    sim.wbinvd_all();
    on_each_package(&sim, &mut |_, _| {
        // SAFETY: simulated module, one package at a time after WBINVD.
        let s = unsafe { leaf::tdh_sys_key_config(&sim) };
        assert_eq!(s, TdxStatus::SUCCESS);
    });
    assert_eq!(sim.module_state(), SysState::Ready);
    assert_eq!(
        config_raw(&sim, array, 2, r8),
        TdxStatus::SYS_CONFIG_NOT_PENDING
    );
    sim.check_invariants().unwrap();
}

#[test]
fn g3_config_before_every_lp_init_is_not_pending() {
    let sim = Simulator::new(machine()).unwrap();
    assert_eq!(sys_init(&sim), TdxStatus::SUCCESS);
    for lp in 0..3 {
        assert_eq!(lp_init(&sim, lp), TdxStatus::SUCCESS);
    }
    let tdmrs = good_pair();
    assert_eq!(config(&sim, &tdmrs), TdxStatus::SYS_CONFIG_NOT_PENDING);
    // Check 3 comes before check 4: a bad RCX still reports NOT_PENDING.
    assert_eq!(
        config_raw(&sim, 4 * GIB + 8, 2, 32),
        TdxStatus::SYS_CONFIG_NOT_PENDING
    );
    assert_eq!(sim.kot_state(global_keyid(&sim)), KotState::Free);
    assert_eq!(lp_init(&sim, 3), TdxStatus::SUCCESS);
    assert_eq!(config(&sim, &tdmrs), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

/// A simulator in SYSINIT_DONE with every LP initialized and the valid pair
/// written; returns it with the array PA.
fn ready_to_config(desc: MachineDesc) -> (Simulator, u64) {
    let sim = Simulator::new(desc).unwrap();
    init_lps(&sim);
    let tdmrs = good_pair();
    alloc_pamts(&sim, &tdmrs);
    let array = write_tdmr_infos(&sim, &tdmrs);
    (sim, array)
}

#[test]
fn g4_rcx_must_be_a_shared_512_aligned_address() {
    let rcx_invalid = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX);
    let mut desc = machine();
    desc.seamrr = Some((3 * GIB, 3 * GIB + 64 * MIB));
    let (sim, array) = ready_to_config(desc);
    let first_private = 32u64;
    for (what, rcx) in [
        ("not 512-byte aligned", array + 256),
        ("at 2^52", 1 << 52),
        ("private HKID in bits 51:46", array | first_private << 46),
        ("inside SEAMRR", 3 * GIB),
    ] {
        assert_eq!(config_raw(&sim, rcx, 2, 32), rcx_invalid, "{what}");
    }
    // Check 4 comes before checks 5-7.
    assert_eq!(config_raw(&sim, array + 8, 0, 0), rcx_invalid);
    // An MKTME (shared) KeyID in RCX passes check 4: RDX = 0 then fails
    // check 6 (stopping there keeps the module from reading the array).
    assert_eq!(
        config_raw(&sim, array | (first_private - 1) << 46, 0, 32),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    // No side effect yet.
    assert_eq!(sim.kot_state(32), KotState::Free);
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    assert_eq!(config_raw(&sim, array, 2, 32), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn g5_g6_rdx_must_be_1_to_64() {
    let rdx_invalid = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX);
    let (sim, array) = ready_to_config(machine());
    assert_eq!(config_raw(&sim, array, 65, 32), rdx_invalid);
    assert_eq!(config_raw(&sim, array, u64::MAX, 32), rdx_invalid);
    assert_eq!(config_raw(&sim, array, 0, 32), rdx_invalid);
    // Checks 5 and 6 come before check 7.
    assert_eq!(config_raw(&sim, array, 65, 0), rdx_invalid);
    assert_eq!(config_raw(&sim, array, 0, 0), rdx_invalid);
    assert_eq!(sim.kot_state(32), KotState::Free);
    assert_eq!(config_raw(&sim, array, 2, 32), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn g7_r8_must_be_a_private_hkid_with_bits_63_16_clear() {
    let r8_invalid = TdxStatus::OPERAND_INVALID.with_operand(OperandId::R8);
    let (sim, array) = ready_to_config(machine());
    // Private KeyIDs of the default machine: 32..=63.
    for (what, r8) in [
        ("KeyID 0", 0),
        ("MKTME KeyID 31", 31),
        ("past the last private KeyID", 64),
        ("bit 16 (Dynamic PAMT, 2.0 only)", 32 | 1 << 16),
        ("bit 63", 32 | 1 << 63),
    ] {
        assert_eq!(config_raw(&sim, array, 2, r8), r8_invalid, "{what}");
    }
    // The side effect comes after check 7: nothing was reserved.
    for hkid in [0, 31, 32, 64] {
        assert_eq!(sim.kot_state(hkid), KotState::Free, "HKID {hkid}");
    }
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    // The last private KeyID is a valid global KeyID.
    assert_eq!(config_raw(&sim, array, 2, 63), TdxStatus::SUCCESS);
    assert_eq!(sim.kot_state(63), KotState::Reserved);
    sim.check_invariants().unwrap();
}

/// Overwrites entry `i` of the TDMR address array at `array`.
fn set_entry(sim: &Simulator, array: u64, i: u64, pa: u64) {
    // SAFETY: the array page is host memory the test allocated
    // (write_tdmr_infos) and no SEAMCALL is running.
    unsafe { sim.write_phys(Hpa::new(array + 8 * i), &pa.to_le_bytes()) };
}

/// Reads entry `i` of the TDMR address array at `array`.
fn entry(sim: &Simulator, array: u64, i: u64) -> u64 {
    let mut b = [0; 8];
    // SAFETY: as in `set_entry`.
    unsafe { sim.read_phys(Hpa::new(array + 8 * i), &mut b) };
    u64::from_le_bytes(b)
}

#[test]
fn g8_every_array_entry_must_be_a_shared_512_aligned_address() {
    let rcx_invalid = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX);
    let mut desc = machine();
    desc.seamrr = Some((3 * GIB, 3 * GIB + 64 * MIB));
    let (sim, array) = ready_to_config(desc);
    let good = entry(&sim, array, 1);
    for (what, pa) in [
        ("not 512-byte aligned", good + 64),
        ("at 2^52", 1 << 52),
        ("private HKID", good | 40 << 46),
        ("inside SEAMRR", 3 * GIB + 512),
    ] {
        set_entry(&sim, array, 1, pa);
        assert_eq!(config_raw(&sim, array, 2, 32), rcx_invalid, "{what}");
        // Check 8 is past the side effect: the HKID is reserved, the state
        // unchanged.
        assert_eq!(sim.kot_state(32), KotState::Reserved, "{what}");
        assert_eq!(sim.module_state(), SysState::SysInitDone);
    }
    set_entry(&sim, array, 1, good);
    assert_eq!(config_raw(&sim, array, 2, 32), TdxStatus::SUCCESS);
    sim.check_invariants().unwrap();
}

#[test]
fn g8_all_entries_are_checked_before_any_tdmr() {
    // Entry 0 points at a TDMR that breaks rule 4, entry 1 is misaligned:
    // check 8 (all entries) comes before check 9 (TDMR 0).
    let sim = Simulator::new(machine()).unwrap();
    init_lps(&sim);
    let mut tdmrs = good_pair();
    tdmrs[0].set_base(4 * GIB + 2 * MIB);
    let array = write_tdmr_infos(&sim, &tdmrs);
    let e1 = entry(&sim, array, 1);
    set_entry(&sim, array, 1, e1 + 8);
    assert_eq!(
        config_raw(&sim, array, 2, 32),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX)
    );
    set_entry(&sim, array, 1, e1);
    assert_eq!(
        config_raw(&sim, array, 2, 32),
        tdmr_status(TdxStatus::INVALID_TDMR, 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn failed_config_keeps_hkid_reserved_and_a_corrected_retry_succeeds() {
    let sim = Simulator::new(machine()).unwrap();
    init_lps(&sim);
    let hkid = global_keyid(&sim);
    let mut bad = good_pair();
    bad[1].set_size(0);
    assert_eq!(config(&sim, &bad), tdmr_status(TdxStatus::INVALID_TDMR, 1));
    assert_eq!(sim.module_state(), SysState::SysInitDone);
    assert_eq!(sim.kot_state(hkid), KotState::Reserved);
    // Nothing of TDMR 0 (checked and accepted before TDMR 1 failed) was
    // kept: its PAMT frames are still the host's.
    let p0 = bad[0].pamt_4k().0;
    assert_eq!(sim.page_state(Pfn::new(p0 / PAGE)), Some(PageState::Host));
    let good = good_pair();
    assert_eq!(config(&sim, &good), TdxStatus::SUCCESS);
    assert_eq!(sim.module_state(), SysState::SysConfigDone);
    assert_eq!(sim.kot_state(hkid), KotState::Reserved);
    assert_eq!(sim.page_state(Pfn::new(p0 / PAGE)), Some(PageState::Module));
    sim.check_invariants().unwrap();
}

#[test]
fn failed_config_with_another_hkid_leaves_both_reserved() {
    // TDH.SYS.CONFIG: the RESERVED mark of a failed try is not undone, even when the
    // retry uses another global KeyID.
    let sim = Simulator::new(machine()).unwrap();
    init_lps(&sim);
    let tdmrs = good_pair();
    alloc_pamts(&sim, &tdmrs);
    let array = write_tdmr_infos(&sim, &tdmrs);
    let e1 = entry(&sim, array, 1);
    set_entry(&sim, array, 1, e1 + 64);
    assert_eq!(
        config_raw(&sim, array, 2, 40),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX)
    );
    set_entry(&sim, array, 1, e1);
    assert_eq!(config_raw(&sim, array, 2, 32), TdxStatus::SUCCESS);
    assert_eq!(sim.kot_state(40), KotState::Reserved);
    assert_eq!(sim.kot_state(32), KotState::Reserved);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// per-TDMR checks, rules 1-6 (the TDMR range)
// ---------------------------------------------------------------------------

#[test]
fn r1_base_plus_size_overflow_is_invalid_tdmr() {
    let mut t = good_pair();
    t[1].set_size(!(GIB - 1));
    expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
}

#[test]
fn r1_comes_before_r2() {
    // TDMR 1 overflows and starts below TDMR 0.
    let mut t = good_pair();
    t[1] = TdmrInfo::with_range(2 * GIB, !(GIB - 1));
    expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
}

#[test]
fn r2_base_below_previous_base_is_non_ordered() {
    let t = vec![
        simple_layout(&[(5 * GIB, 6 * GIB)], 1)[0],
        simple_layout(&[(4 * GIB, 5 * GIB)], 1)[0],
    ];
    expect_config(&t, tdmr_status(TdxStatus::NON_ORDERED_TDMR, 1));
}

#[test]
fn r2_comes_before_r4() {
    // TDMR 1 is below TDMR 0 and not 1 GiB aligned.
    let mut t = vec![
        simple_layout(&[(5 * GIB, 6 * GIB)], 1)[0],
        simple_layout(&[(4 * GIB, 5 * GIB)], 1)[0],
    ];
    t[1].set_base(4 * GIB + 2 * MIB);
    expect_config(&t, tdmr_status(TdxStatus::NON_ORDERED_TDMR, 1));
}

#[test]
fn r3_overlap_with_previous_is_non_ordered() {
    let mut t = simple_layout(&[(4 * GIB, 6 * GIB)], 2);
    t.push(simple_layout(&[(5 * GIB, 6 * GIB)], 1)[0]);
    expect_config(&t, tdmr_status(TdxStatus::NON_ORDERED_TDMR, 1));
    // Same base as the previous TDMR: not below it (rule 2) but overlapping.
    let mut t = good_pair();
    t[1] = tdmr(4 * GIB, GIB, 16 * GIB);
    expect_config(&t, tdmr_status(TdxStatus::NON_ORDERED_TDMR, 1));
}

#[test]
fn r4_base_alignment_size_alignment_and_zero_size() {
    for (what, base, size) in [
        ("base not 1 GiB aligned", 5 * GIB + 2 * MIB, GIB),
        ("size not a multiple of 1 GiB", 5 * GIB, GIB + PAGE),
        ("size 0", 5 * GIB, 0),
    ] {
        let mut t = pair_far_pamt();
        t[1].set_base(base);
        t[1].set_size(size);
        eprintln!("case: {what}");
        expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
    }
}

#[test]
fn r4_comes_before_r8() {
    // Misaligned base and a PAMT far too small: rule 4 is reported.
    let mut t = pair_far_pamt();
    t[1].set_base(5 * GIB + 2 * MIB);
    t[1].set_pamt_4k(16 * GIB, 0);
    expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
}

#[test]
fn r5_base_at_2_52_or_with_hkid_bits() {
    for (what, base) in [
        ("base = 2^52", 1u64 << 52),
        ("base has HKID bit 46", 1 << 46),
    ] {
        let mut t = pair_far_pamt();
        t[1].set_base(base);
        eprintln!("case: {what}");
        expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
    }
}

#[test]
fn r5_comes_before_r7() {
    let mut t = pair_far_pamt();
    t[1].set_base(1 << 46);
    t[1].set_reserved_area(0, 100, PAGE).unwrap();
    expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
}

#[test]
fn r6_last_byte_at_or_above_2_52_or_with_hkid_bits() {
    for (what, base, size) in [
        // Base 2^45 has no HKID bit (they start at 46).
        ("last byte >= 2^52", 1u64 << 45, 1u64 << 52),
        ("last byte has HKID bit 46", (1 << 46) - GIB, 2 * GIB),
    ] {
        let mut t = pair_far_pamt();
        t[1].set_base(base);
        t[1].set_size(size);
        eprintln!("case: {what}");
        expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
    }
}

#[test]
fn r6_comes_before_r7() {
    let mut t = pair_far_pamt();
    t[1].set_base((1 << 46) - GIB);
    t[1].set_size(2 * GIB);
    t[1].set_reserved_area(0, 0, 100).unwrap();
    expect_config(&t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
}

#[test]
fn r5_r6_hkid_bits_follow_the_machine_keyid_layout() {
    // 1000 MKTME + 1000 TDX KeyIDs need 11 bits: HKID bits are 51:41, so
    // 2 TiB is an HKID bit there but a plain address on the default machine
    // (HKID bits 51:46).
    let many = machine().with_keyids(1000, 1000);
    assert_eq!(many.hkid_start_bit(), 41);
    assert_eq!(machine().hkid_start_bit(), 46);
    for (base, size) in [(1u64 << 41, GIB), ((1 << 41) - GIB, 2 * GIB)] {
        let mut t = pair_far_pamt();
        t[1].set_base(base);
        t[1].set_size(size);
        let [p4k, p2m, p1g] = pamt_sizes(size);
        t[1].set_pamt_4k(16 * GIB, p4k);
        t[1].set_pamt_2m(16 * GIB + p4k, p2m);
        t[1].set_pamt_1g(16 * GIB + p4k + p2m, p1g);
        expect_config_on(many.clone(), &t, tdmr_status(TdxStatus::INVALID_TDMR, 1));
        // On the default machine the same TDMR passes rules 5 and 6 and
        // fails only at rule 12 (its memory is in no CMR).
        expect_config(&t, tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 1));
    }
}

// ---------------------------------------------------------------------------
// rule 7: reserved areas
// ---------------------------------------------------------------------------

fn reserved(slots: &[(usize, u64, u64)]) -> Vec<TdmrInfo> {
    let mut t = pair_far_pamt();
    for &(j, off, size) in slots {
        t[1].set_reserved_area(j, off, size).unwrap();
    }
    t
}

fn rsvd_status(code: TdxStatus, i: u8, j: u8) -> TdxStatus {
    code.with_config_detail(i, j, 0)
}

#[test]
fn r7_null_entry_followed_by_non_null_is_non_ordered() {
    // Slot 0 null (with an offset, which is ignored), slot 1 used.
    expect_config(
        &reserved(&[(0, 0x5000, 0), (1, 0, PAGE)]),
        rsvd_status(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, 1, 0),
    );
    // Slots 0-1 used, 2 null, 3 used.
    expect_config(
        &reserved(&[(0, 0, PAGE), (1, PAGE, PAGE), (3, 4 * PAGE, PAGE)]),
        rsvd_status(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, 1, 2),
    );
}

#[test]
fn r7_offsets_of_null_entries_are_ignored() {
    let mut t = reserved(&[(0, 0, PAGE)]);
    for j in 1..16 {
        t[1].set_reserved_area(j, 0xdead_b000 + j as u64, 0)
            .unwrap();
    }
    expect_config(&t, TdxStatus::SUCCESS);
}

#[test]
fn r7a_offset_plus_size_overflow_is_invalid_reserved() {
    expect_config(
        &reserved(&[(0, 0, PAGE), (1, !(PAGE - 1), 2 * PAGE)]),
        rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7a_comes_before_r7b() {
    // Slot 1 starts below slot 0 and overflows: overflow is reported.
    expect_config(
        &reserved(&[(0, 2 * PAGE, PAGE), (1, PAGE, u64::MAX - 0x800)]),
        rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7b_offset_below_previous_is_non_ordered() {
    expect_config(
        &reserved(&[(0, 2 * PAGE, PAGE), (1, 0, PAGE)]),
        rsvd_status(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7c_overlap_with_previous_is_non_ordered() {
    expect_config(
        &reserved(&[(0, 0, 2 * PAGE), (1, PAGE, PAGE)]),
        rsvd_status(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7c_comes_before_r7d() {
    // Slot 1 overlaps slot 0 and is not 4 KiB aligned.
    expect_config(
        &reserved(&[(0, 0, 2 * PAGE), (1, PAGE + 0x100, 0x100)]),
        rsvd_status(TdxStatus::NON_ORDERED_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7d_offset_or_size_not_4k_aligned_is_invalid_reserved() {
    expect_config(
        &reserved(&[(0, 0x100, PAGE)]),
        rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 0),
    );
    expect_config(
        &reserved(&[(0, 0, PAGE), (1, PAGE, 0x100)]),
        rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 1),
    );
}

#[test]
fn r7e_area_past_the_tdmr_or_address_overflow_is_invalid_reserved() {
    let base = 5 * GIB;
    for (what, off, size) in [
        ("ends past the TDMR end", GIB - PAGE, 2 * PAGE),
        ("starts at the TDMR end", GIB, PAGE),
        // offset + size fits in 64 bits, base + offset does not.
        ("base + offset overflows", 0u64.wrapping_sub(2 * PAGE), PAGE),
        // base + offset fits, base + offset + size does not.
        (
            "base + offset + size overflows",
            0u64.wrapping_sub(base + PAGE),
            2 * PAGE,
        ),
    ] {
        eprintln!("case: {what}");
        expect_config(
            &reserved(&[(0, off, size)]),
            rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 0),
        );
    }
}

#[test]
fn r7_touching_areas_and_an_area_up_to_the_tdmr_end_are_accepted() {
    expect_config(
        &reserved(&[(0, 0, PAGE), (1, PAGE, PAGE), (2, 2 * PAGE, GIB - 2 * PAGE)]),
        TdxStatus::SUCCESS,
    );
}

#[test]
fn r7_reserved_area_covering_the_whole_tdmr_is_accepted() {
    // And the TDMR has no non-reserved memory left for rule 12 to check.
    expect_config(&reserved(&[(0, 0, GIB)]), TdxStatus::SUCCESS);
    // Even in a CMR hole, and as two touching areas.
    let desc = machine_with_cmrs(&[(4 * GIB, 5 * GIB), (6 * GIB, 20 * GIB)]);
    expect_config_on(desc.clone(), &reserved(&[(0, 0, GIB)]), TdxStatus::SUCCESS);
    let halves = reserved(&[(0, 0, GIB / 2), (1, GIB / 2, GIB / 2)]);
    expect_config_on(desc, &halves, TdxStatus::SUCCESS);
}

#[test]
fn r7_all_sixteen_slots_used_is_accepted() {
    let slots: Vec<(usize, u64, u64)> = (0..16).map(|j| (j, 2 * PAGE * j as u64, PAGE)).collect();
    expect_config(&reserved(&slots), TdxStatus::SUCCESS);
}

#[test]
fn r7_comes_before_r8() {
    let mut t = reserved(&[(0, 0x100, PAGE)]);
    t[1].set_pamt_4k(16 * GIB, 0);
    expect_config(&t, rsvd_status(TdxStatus::INVALID_RESERVED_IN_TDMR, 1, 0));
}

// ---------------------------------------------------------------------------
// rule 8: PAMT addresses and sizes (1G, then 2M, then 4K)
// ---------------------------------------------------------------------------

fn pamt_status(code: TdxStatus, i: u8, level: u8) -> TdxStatus {
    code.with_config_detail(i, level, 0)
}

const L4K: u8 = 0;
const L2M: u8 = 1;
const L1G: u8 = 2;

#[test]
fn r8_pamt_of_exactly_the_required_size_is_accepted() {
    // 1 GiB: 4K level 4 MiB, 2M level 8 KiB, 1G level 16 B -> 4 KiB.
    assert_eq!(pamt_sizes(GIB), [4 * MIB, 8 * 1024, PAGE]);
    expect_config(&pair_far_pamt(), TdxStatus::SUCCESS);
    // 2 GiB: 8 MiB, 16 KiB, 32 B -> 4 KiB.
    let t = vec![good_pair()[0], tdmr(5 * GIB, 2 * GIB, 16 * GIB)];
    expect_config(&t, TdxStatus::SUCCESS);
}

#[test]
fn r8_pamt_larger_than_required_is_accepted() {
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(16 * GIB, 8 * MIB);
    t[1].set_pamt_2m(16 * GIB + 8 * MIB, 64 * 1024);
    t[1].set_pamt_1g(16 * GIB + 9 * MIB, 2 * PAGE);
    expect_config(&t, TdxStatus::SUCCESS);
}

#[test]
fn r8_pamt_one_page_short_is_invalid_pamt_at_each_level() {
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(16 * GIB, 4 * MIB - PAGE);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L4K));

    let mut t = pair_far_pamt();
    let (b, _) = t[1].pamt_2m();
    t[1].set_pamt_2m(b, PAGE);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L2M));

    let mut t = pair_far_pamt();
    let (b, _) = t[1].pamt_1g();
    t[1].set_pamt_1g(b, 0);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L1G));

    // 2 GiB TDMR: the 2M level needs 16 KiB; 12 KiB is one page short.
    let mut t = vec![good_pair()[0], tdmr(5 * GIB, 2 * GIB, 16 * GIB)];
    let (b, _) = t[1].pamt_2m();
    t[1].set_pamt_2m(b, 3 * PAGE);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L2M));
}

#[test]
fn r8_levels_are_checked_1g_then_2m_then_4k() {
    // All three too small: 1G is reported.
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(16 * GIB, 0);
    t[1].set_pamt_2m(17 * GIB, 0);
    t[1].set_pamt_1g(18 * GIB, 0);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L1G));
    // 2M and 4K too small: 2M is reported.
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(16 * GIB, PAGE);
    t[1].set_pamt_2m(17 * GIB, 0);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L2M));
}

#[test]
fn r8_pamt_address_rules() {
    let far = 16 * GIB;
    type Set = fn(&mut TdmrInfo, u64, u64);
    let levels: [(u8, Set, u64); 3] = [
        (L4K, TdmrInfo::set_pamt_4k, 4 * MIB),
        (L2M, TdmrInfo::set_pamt_2m, 8 * 1024),
        (L1G, TdmrInfo::set_pamt_1g, PAGE),
    ];
    for (level, set, need) in levels {
        for (what, base, size) in [
            ("base + size overflows", !(PAGE - 1), need),
            ("base not 4 KiB aligned", far + 0x200, need),
            ("size not 4 KiB aligned", far, need + 0x200),
            ("base = 2^52", 1 << 52, need),
            ("base has HKID bit 46", 1 << 46, need),
            // Base 2^45 has no HKID bit; the size is a 4 KiB multiple.
            ("last byte >= 2^52", 1 << 45, 1 << 52),
            (
                "last byte has HKID bit 46",
                (1 << 46) - PAGE,
                need.max(2 * PAGE),
            ),
        ] {
            let mut t = pair_far_pamt();
            set(&mut t[1], base, size);
            eprintln!("case: level {level}, {what}");
            expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, level));
        }
    }
}

#[test]
fn r8_comes_before_r9() {
    // The 4K PAMT is one page short and overlaps the 2M PAMT.
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(16 * GIB, 4 * MIB - PAGE);
    t[1].set_pamt_2m(16 * GIB + 4 * MIB - 2 * PAGE, 8 * 1024);
    expect_config(&t, pamt_status(TdxStatus::INVALID_PAMT, 1, L4K));
}

// ---------------------------------------------------------------------------
// rule 9: PAMT vs PAMT
// ---------------------------------------------------------------------------

fn overlap(i: u8, level: u8, k: u8) -> TdxStatus {
    TdxStatus::PAMT_OVERLAP.with_config_detail(i, level, k)
}

#[test]
fn r9_pamts_of_one_tdmr_overlapping() {
    let far = 16 * GIB;
    // 4K vs 2M.
    let mut t = pair_far_pamt();
    t[1].set_pamt_2m(far + 4 * MIB - PAGE, 8 * 1024);
    expect_config(&t, overlap(1, L4K, 1));
    // 4K vs 1G.
    let mut t = pair_far_pamt();
    t[1].set_pamt_1g(far, PAGE);
    expect_config(&t, overlap(1, L4K, 1));
    // 2M vs 1G.
    let mut t = pair_far_pamt();
    let (b2m, _) = t[1].pamt_2m();
    t[1].set_pamt_1g(b2m + PAGE, PAGE);
    expect_config(&t, overlap(1, L2M, 1));
}

#[test]
fn r9_pamt_overlapping_an_earlier_tdmrs_pamt() {
    // TDMR 1's PAMTs are put on TDMR 0's (inside TDMR 0's reserved area, so
    // rule 10 would not object): (i, level of i's PAMT, k).
    let t0 = good_pair()[0];
    for (level, my, theirs) in [
        (L4K, 0usize, t0.pamt_4k().0),
        (L2M, 1, t0.pamt_4k().0),
        (L1G, 2, t0.pamt_2m().0),
    ] {
        let mut t = pair_far_pamt();
        match my {
            0 => t[1].set_pamt_4k(theirs, 4 * MIB),
            1 => t[1].set_pamt_2m(theirs, 8 * 1024),
            _ => t[1].set_pamt_1g(theirs, PAGE),
        }
        expect_config(&t, overlap(1, level, 0));
    }
}

#[test]
fn r9_earlier_tdmrs_are_the_outer_loop() {
    // TDMR 2's 1G PAMT overlaps TDMR 0's PAMT, its 4K PAMT overlaps TDMR
    // 1's: k = 0 is checked (all levels) before k = 1.
    let mut t = simple_layout(&[(4 * GIB, 7 * GIB)], 1);
    let (t0_1g, t1_4k) = (t[0].pamt_1g().0, t[1].pamt_4k().0);
    t[2] = tdmr(6 * GIB, GIB, 16 * GIB);
    t[2].set_pamt_1g(t0_1g, PAGE);
    t[2].set_pamt_4k(t1_4k, 4 * MIB);
    expect_config(&t, overlap(2, L1G, 0));
}

#[test]
fn r9_earlier_tdmrs_come_before_the_tdmrs_own_pamts() {
    // TDMR 1's 2M PAMT overlaps TDMR 0's 4K PAMT, and its 1G PAMT lies
    // inside its own 4K PAMT.
    let mut t = pair_far_pamt();
    let t0_4k = t[0].pamt_4k().0;
    t[1].set_pamt_2m(t0_4k, 8 * 1024);
    t[1].set_pamt_1g(16 * GIB + 4 * MIB - PAGE, PAGE);
    expect_config(&t, overlap(1, L2M, 0));
}

#[test]
fn r9_comes_before_r10() {
    // TDMR 1's 2M PAMT overlaps TDMR 0's PAMT (rule 9 -> (1,1,0)) and its
    // 4K PAMT lies on TDMR 0's ordinary memory (rule 10 -> (1,0,0)).
    let mut t = pair_far_pamt();
    let t0_4k = t[0].pamt_4k().0;
    t[1].set_pamt_4k(4 * GIB + 256 * MIB, 4 * MIB);
    t[1].set_pamt_2m(t0_4k, 8 * 1024);
    expect_config(&t, overlap(1, L2M, 0));
}

// ---------------------------------------------------------------------------
// rule 10: PAMT vs non-reserved TDMR memory
// ---------------------------------------------------------------------------

#[test]
fn r10_pamt_on_its_own_tdmrs_memory() {
    let t = vec![good_pair()[0], tdmr(5 * GIB, GIB, 5 * GIB + 512 * MIB)];
    expect_config(&t, overlap(1, L4K, 1));
    // Only the 1G PAMT inside: the level byte says 1G.
    let mut t = pair_far_pamt();
    t[1].set_pamt_1g(5 * GIB + 512 * MIB, PAGE);
    expect_config(&t, overlap(1, L1G, 1));
}

#[test]
fn r10_pamt_on_an_earlier_tdmrs_memory_is_i_l_k() {
    let t = vec![good_pair()[0], tdmr(5 * GIB, GIB, 4 * GIB + 256 * MIB)];
    expect_config(&t, overlap(1, L4K, 0));
}

#[test]
fn r10_earlier_pamt_on_a_later_tdmrs_memory_is_k_l_i() {
    // TDMR 0's PAMT lies outside TDMR 0 (fine when TDMR 0 is checked) but on
    // TDMR 1's memory: reported when TDMR 1 is checked, as (k, L, i).
    let t = vec![
        tdmr(4 * GIB, GIB, 5 * GIB + 256 * MIB),
        tdmr(5 * GIB, GIB, 16 * GIB),
    ];
    expect_config(&t, overlap(0, L4K, 1));
    // Only TDMR 0's 1G PAMT there: the level byte is that PAMT's level.
    let mut t = good_pair();
    t[0].set_pamt_1g(5 * GIB + 256 * MIB, PAGE);
    t[1] = tdmr(5 * GIB, GIB, 16 * GIB);
    expect_config(&t, overlap(0, L1G, 1));
}

#[test]
fn r10_i_l_k_comes_before_k_l_i() {
    // Each TDMR's PAMT lies on the other's memory.
    let t = vec![
        tdmr(4 * GIB, GIB, 5 * GIB + 256 * MIB),
        tdmr(5 * GIB, GIB, 4 * GIB + 256 * MIB),
    ];
    expect_config(&t, overlap(1, L4K, 0));
}

#[test]
fn r10_k_is_the_outer_loop() {
    // At i = 2: k = 0 gives (0,0,2) (TDMR 0's PAMT on TDMR 2's memory)
    // before k = 1 gives (2,0,1) (TDMR 2's PAMT on TDMR 1's memory).
    let t = vec![
        tdmr(4 * GIB, GIB, 6 * GIB + 256 * MIB),
        simple_layout(&[(5 * GIB, 6 * GIB)], 1)[0],
        tdmr(6 * GIB, GIB, 5 * GIB + 256 * MIB),
    ];
    expect_config(&t, overlap(0, L4K, 2));
}

#[test]
fn r10_pamt_inside_another_tdmrs_reserved_area_is_accepted() {
    // TDMR 0 reserves its upper half; both PAMTs live there.
    let mut t0 = tdmr(4 * GIB, GIB, 4 * GIB + 512 * MIB);
    t0.set_reserved_area(0, 512 * MIB, 512 * MIB).unwrap();
    let t1 = tdmr(5 * GIB, GIB, 4 * GIB + 768 * MIB);
    expect_config(&[t0, t1], TdxStatus::SUCCESS);
}

#[test]
fn r10_pamt_outside_every_tdmr_is_accepted() {
    let t = vec![tdmr(4 * GIB, GIB, 12 * GIB), tdmr(5 * GIB, GIB, 16 * GIB)];
    expect_config(&t, TdxStatus::SUCCESS);
}

// ---------------------------------------------------------------------------
// rule 11: PAMT in a merged CMR (1G, then 2M, then 4K)
// ---------------------------------------------------------------------------

/// CMRs with a hole at [12G, 16G) (RAM, but not convertible).
fn holed() -> MachineDesc {
    machine_with_cmrs(&[(4 * GIB, 12 * GIB), (16 * GIB, 20 * GIB)])
}

fn pamt_out(i: u8, level: u8) -> TdxStatus {
    TdxStatus::PAMT_OUTSIDE_CMRS.with_config_detail(i, level, 0)
}

#[test]
fn r11_pamt_outside_cmrs_reports_1g_then_2m_then_4k() {
    // All three in the hole: 1G is reported.
    let t = vec![good_pair()[0], tdmr(5 * GIB, GIB, 13 * GIB)];
    expect_config_on(holed(), &t, pamt_out(1, L1G));
    // 2M and 4K in the hole: 2M.
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(13 * GIB, 4 * MIB);
    t[1].set_pamt_2m(14 * GIB, 8 * 1024);
    expect_config_on(holed(), &t, pamt_out(1, L2M));
    // Only 4K.
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(13 * GIB, 4 * MIB);
    expect_config_on(holed(), &t, pamt_out(1, L4K));
}

#[test]
fn r11_pamt_straddling_a_cmr_end_is_outside() {
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(12 * GIB - 2 * MIB, 4 * MIB);
    expect_config_on(holed(), &t, pamt_out(1, L4K));
}

#[test]
fn r11_pamt_across_back_to_back_cmrs_is_inside() {
    // Slots 0 and 1 touch at 8G: one merged CMR.
    let desc = machine_with_cmrs(&[
        (4 * GIB, 8 * GIB),
        (8 * GIB, 12 * GIB),
        (12 * GIB, 20 * GIB),
    ]);
    let mut t = pair_far_pamt();
    t[1].set_pamt_4k(8 * GIB - 2 * MIB, 4 * MIB);
    expect_config_on(desc, &t, TdxStatus::SUCCESS);
}

#[test]
fn r11_cmrs_touching_in_address_but_not_in_array_order_never_reach_config() {
    // [4G,8G) is slot 0, [8G,12G) is slot 2: slot 1 sits between them.
    // `is_area_in_cmr` would not merge them, but the list is not sorted,
    // so TDH.SYS.INIT already refuses it (`check_cmrs`): no SYS.CONFIG
    // ever sees CMRs out of array order.
    let desc = machine_with_cmrs(&[
        (4 * GIB, 8 * GIB),
        (12 * GIB, 20 * GIB),
        (8 * GIB, 12 * GIB),
    ]);
    let sim = Simulator::new(desc).unwrap();
    assert_eq!(sys_init(&sim), TdxStatus::CMR_LIST_INVALID);
}

#[test]
fn r11_comes_before_r12() {
    // TDMR 1 and its PAMT both in the hole.
    let t = vec![good_pair()[0], tdmr(13 * GIB, GIB, 14 * GIB)];
    expect_config_on(holed(), &t, pamt_out(1, L1G));
}

// ---------------------------------------------------------------------------
// rule 12: non-reserved TDMR memory in a merged CMR
// ---------------------------------------------------------------------------

#[test]
fn r12_tdmr_memory_outside_cmrs() {
    let t = vec![good_pair()[0], tdmr(12 * GIB, GIB, 16 * GIB)];
    expect_config_on(holed(), &t, tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 1));
}

#[test]
fn r12_cmr_hole_covered_by_a_reserved_area_is_accepted() {
    // Hole at the tail of TDMR 1 = [12G, 13G): [12.5G, 13G).
    let tail = machine_with_cmrs(&[(4 * GIB, 12 * GIB + 512 * MIB), (13 * GIB, 20 * GIB)]);
    let mut t = vec![good_pair()[0], tdmr(12 * GIB, GIB, 16 * GIB)];
    expect_config_on(
        tail.clone(),
        &t,
        tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 1),
    );
    t[1].set_reserved_area(0, 512 * MIB, 512 * MIB).unwrap();
    expect_config_on(tail.clone(), &t, TdxStatus::SUCCESS);
    // Covering only part of the hole is not enough.
    t[1].set_reserved_area(0, 768 * MIB, 256 * MIB).unwrap();
    expect_config_on(tail, &t, tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 1));

    // Hole at the head: [12G, 12.25G); and a hole between two reserved areas.
    let head = machine_with_cmrs(&[(4 * GIB, 12 * GIB), (12 * GIB + 256 * MIB, 20 * GIB)]);
    let mut t = vec![good_pair()[0], tdmr(12 * GIB, GIB, 16 * GIB)];
    expect_config_on(
        head.clone(),
        &t,
        tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 1),
    );
    t[1].set_reserved_area(0, 0, 256 * MIB).unwrap();
    expect_config_on(head, &t, TdxStatus::SUCCESS);
}

#[test]
fn r12_tdmr_across_a_chain_of_back_to_back_cmrs_is_inside() {
    // Three CMRs in a row cut TDMR 1 in three pieces: they chain.
    let desc = machine_with_cmrs(&[
        (4 * GIB, 5 * GIB + MIB),
        (5 * GIB + MIB, 5 * GIB + 3 * MIB),
        (5 * GIB + 3 * MIB, 20 * GIB),
    ]);
    expect_config_on(desc, &good_pair(), TdxStatus::SUCCESS);
}

#[test]
fn r12_cmrs_adjacent_in_address_chain() {
    let split = 5 * GIB + 512 * MIB;
    // Slot 0 ends where slot 2 starts, slot 1 elsewhere: TDH.SYS.INIT
    // refuses the list (not sorted), so rule 12 never sees it unchained.
    let apart = machine_with_cmrs(&[(4 * GIB, split), (6 * GIB, 20 * GIB), (split, 6 * GIB)]);
    let sim = Simulator::new(apart).unwrap();
    assert_eq!(sys_init(&sim), TdxStatus::CMR_LIST_INVALID);
    // The same CMRs in address order chain: TDMR 1 spans two of them.
    let chained = machine_with_cmrs(&[(4 * GIB, split), (split, 6 * GIB), (6 * GIB, 20 * GIB)]);
    expect_config_on(chained, &good_pair(), TdxStatus::SUCCESS);
}

#[test]
fn tdmr_i_is_checked_completely_before_tdmr_i_plus_1() {
    // TDMR 0 fails rule 12, TDMR 1 fails rule 1: TDMR 0's failure wins.
    let desc = machine_with_cmrs(&[
        (4 * GIB, 4 * GIB + 256 * MIB),
        (4 * GIB + 512 * MIB, 20 * GIB),
    ]);
    let mut t = good_pair();
    t[1].set_size(!(GIB - 1));
    expect_config_on(desc, &t, tdmr_status(TdxStatus::TDMR_OUTSIDE_CMRS, 0));
}
