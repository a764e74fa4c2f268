//! Raw-leaf tests of the TD build leaves against the simulator: the happy
//! path and every error path of Intel's `tdh_mng_*.c`, `tdh_vp_*.c` and
//! `tdh_mr_*.c` (`src/vmm_dispatcher/api_calls/`) with exact statuses and
//! operand ids (TDH.MNG.CREATE,
//! KEY.CONFIG, ADDCX, INIT with each TD_PARAMS check in order, MNG.RD,
//! TDH.VP.CREATE/ADDCX/INIT/FLUSH, TDH.MR.EXTEND/FINALIZE), and MRTD
//! vectors: fixed PAGE.ADD/MR.EXTEND sequences whose SHA-384 the test
//! computes itself and also pins as constants computed outside Rust.
//!
//! The S-EPT and private-memory leaves are in `td_sept.rs`, teardown in
//! `td_teardown.rs`, fault injection in `td_faults.rs`.
//!
//! Not reachable from the host, so not tested: TDR.fatal (no host leaf sets
//! it), TDH.MNG.INIT's platform checks (LIMIT_CPUID_MAXVAL,
//! TSC_ADJUST; the model assumes they pass).

mod td_support;

use sha2::{Digest, Sha384};
use td_support::*;
use tdx_sim::{KotState, PageState, Profile};
use tdx_types::{
    Gpa, Leaf, OperandId, Pfn, TdxStatus,
    metadata::{MdFieldId, PamtPageType, field},
    regs::SeptState,
};

const RCX: OperandId = OperandId::RCX;
const RDX: OperandId = OperandId::RDX;

/// A change to a TD_PARAMS image.
type Edit = fn(&mut Params);

// ---------------------------------------------------------------------------
// TDH.MNG.CREATE
// ---------------------------------------------------------------------------

#[test]
fn mng_create_makes_a_tdr_and_assigns_the_hkid() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let tdr = page(&sim);
    let before = sim.accounting();
    ok("MNG.CREATE", mng_create(&sim, tdr, hkid));
    assert_eq!(rdmd(&sim, tdr), (PamtPageType::TDR, 0, 0, 0));
    assert_eq!(sim.kot_state(hkid), KotState::Assigned);
    assert_eq!(sim.page_state(tdr), Some(PageState::Module));
    assert_eq!(sim.accounting().module, before.module + 1);
    // HKID_ASSIGNED: the TD's keys are not configured yet.
    let p = page(&sim);
    assert_eq!(mng_addcx(&sim, p, tdr), TdxStatus::TD_KEYS_NOT_CONFIGURED);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_create_rdx_is_checked_first() {
    let sim = host();
    let tdr = page(&sim).hpa().as_u64();
    let lv = Leaf::MNG_CREATE.v0();
    let first_private = u64::from(global_hkid(&sim));
    let last_private = first_private + 31;
    for rdx in [
        td_hkid(&sim) as u64 | 1 << 16, // reserved bits 63:16
        1 << 63,
        0,                 // KeyID 0 (TME)
        first_private - 1, // an MKTME KeyID
        last_private + 1,  // past the TDX KeyIDs
        0xFFFF,
    ] {
        assert_eq!(
            raw(&sim, lv, [tdr, rdx, 0, 0, 0, 0]).0,
            invalid(RDX),
            "RDX {rdx:#x}"
        );
        // RDX comes before the TDR: a bad TDR does not change the answer.
        assert_eq!(raw(&sim, lv, [tdr + 8, rdx, 0, 0, 0, 0]).0, invalid(RDX));
    }
    // The last private KeyID is fine.
    let (s, _) = raw(&sim, lv, [tdr, last_private, 0, 0, 0, 0]);
    ok("MNG.CREATE with the last KeyID", s);
    assert_eq!(sim.kot_state(last_private as u16), KotState::Assigned);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_create_tdr_explicit_page_checks() {
    let sim = host();
    let hkid = td_hkid(&sim) as u64;
    let lv = Leaf::MNG_CREATE.v0();
    let p = page(&sim).hpa().as_u64();
    let outside = outside_page(&sim).hpa().as_u64();
    // A TD with a 2 MiB private page, for "a 4K page inside a 2M page".
    let mut other = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::Runnable);
    let huge = other.aug(&sim, 2 * MIB, 1);
    let cases = [
        (p + 0x800, invalid(RCX), "not 4 KiB aligned"),
        (with_hkid(&sim, p, 3), invalid(RCX), "KeyID bits set"),
        (1 << 52, invalid(RCX), "beyond 2^52"),
        (0x1000, range_error(RCX), "not RAM, outside every TDMR"),
        (outside, range_error(RCX), "RAM outside every TDMR"),
        (pamt_page().hpa().as_u64(), metadata(RCX), "PT_RSVD (PAMT)"),
        (other.tdr.hpa().as_u64(), metadata(RCX), "already a TDR"),
        (other.tdcs[0].hpa().as_u64(), metadata(RCX), "a TDCS page"),
        (
            huge.hpa().as_u64() + 5 * PAGE,
            metadata(RCX),
            "inside a 2 MiB private page",
        ),
    ];
    for (rcx, want, what) in cases {
        assert_eq!(raw(&sim, lv, [rcx, hkid, 0, 0, 0, 0]).0, want, "{what}");
    }
    assert_eq!(
        sim.kot_state(hkid as u16),
        KotState::Free,
        "nothing was assigned"
    );
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

/// A TDMR's 1 GiB block is usable only once its PAMT is fully
/// initialized; before that every explicit page in it is out of range.
#[test]
fn mng_create_in_a_block_not_yet_initialized_is_addr_range_error() {
    let sim = tdx_sim::Simulator::new(
        tdx_sim::MachineDesc::new(vec![(4 * GIB, 9 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let opts = tdx_sim::testkit::BringUpOptions {
        init_tdmrs: false,
        ..Default::default()
    };
    tdx_sim::testkit::bring_up(&sim, &layout(), opts);
    let hkid = td_hkid(&sim);
    let tdr = page(&sim);
    assert!(tdr.hpa().as_u64() < 5 * GIB, "in the first 1 GiB block");
    // 255 of the 256 4 MiB steps of the first block.
    for _ in 0..255 {
        let (s, out) = raw(&sim, Leaf::SYS_TDMR_INIT.v0(), [4 * GIB, 0, 0, 0, 0, 0]);
        ok("TDMR.INIT", s);
        assert_eq!(out.rdx, 4 * GIB);
    }
    assert_eq!(mng_create(&sim, tdr, hkid), range_error(RCX));
    let (s, out) = raw(&sim, Leaf::SYS_TDMR_INIT.v0(), [4 * GIB, 0, 0, 0, 0, 0]);
    ok("TDMR.INIT", s);
    assert_eq!(out.rdx, 5 * GIB);
    ok("MNG.CREATE", mng_create(&sim, tdr, hkid));
    sim.check_invariants().unwrap();
}

#[test]
fn mng_create_hkid_in_use_or_global_is_not_free() {
    let sim = host();
    let td = Td::build(&sim, Stage::Created);
    let p = page(&sim);
    assert_eq!(mng_create(&sim, p, td.hkid), TdxStatus::HKID_NOT_FREE);
    // The global KeyID is RESERVED for good.
    let global = global_hkid(&sim);
    assert_eq!(sim.kot_state(global), KotState::Reserved);
    assert_eq!(mng_create(&sim, p, global), TdxStatus::HKID_NOT_FREE);
    // The TDR check (step 2) comes before the KOT (step 4).
    assert_eq!(mng_create(&sim, td.tdr, td.hkid), metadata(RCX));
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA, "the page stayed free");
    // Another free KeyID works with the same page.
    ok("MNG.CREATE", mng_create(&sim, p, td.hkid + 1));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.KEY.CONFIG
// ---------------------------------------------------------------------------

#[test]
fn key_config_once_per_package_then_keys_configured() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Created);
    ok(
        "KEY.CONFIG pkg 0",
        on(&sim, 0, || mng_key_config(&sim, td.tdr)),
    );
    // Package 0 again (another LP of it): a warning, not an error.
    let again = on(&sim, 1, || mng_key_config(&sim, td.tdr));
    assert_eq!(again, TdxStatus::KEY_CONFIGURED);
    assert!(!again.is_error());
    // Not every package yet: still HKID_ASSIGNED.
    let p = td.page(&sim);
    assert_eq!(
        mng_addcx(&sim, p, td.tdr),
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    ok(
        "KEY.CONFIG pkg 1",
        on(&sim, 3, || mng_key_config(&sim, td.tdr)),
    );
    // KEYS_CONFIGURED: ADDCX now works, KEY.CONFIG is out of its state.
    ok("MNG.ADDCX", mng_addcx(&sim, p, td.tdr));
    for lp in 0..4 {
        assert_eq!(
            on(&sim, lp, || mng_key_config(&sim, td.tdr)),
            TdxStatus::LIFECYCLE_STATE_INCORRECT,
            "LP {lp}"
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_packages_in_any_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Created);
    for lp in [2, 0] {
        ok("KEY.CONFIG", on(&sim, lp, || mng_key_config(&sim, td.tdr)));
    }
    td.add_tdcs(&sim, 6);
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_tdr_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::TdcsAdded);
    let lv = Leaf::MNG_KEY_CONFIG.v0();
    let p = page(&sim).hpa().as_u64();
    let tdr = td.tdr.hpa().as_u64();
    let outside = outside_page(&sim).hpa().as_u64();
    let cases = [
        (tdr + 0x10, invalid(RCX)),
        (with_hkid(&sim, tdr, td.hkid), invalid(RCX)),
        (outside, range_error(RCX)),
        (p, metadata(RCX)),
        (td.tdcs[0].hpa().as_u64(), metadata(RCX)),
    ];
    for (rcx, want) in cases {
        assert_eq!(raw(&sim, lv, [rcx, 0, 0, 0, 0, 0]).0, want, "RCX {rcx:#x}");
    }
    sim.check_invariants().unwrap();
}

#[test]
fn key_config_after_vpflushdone_is_lifecycle_incorrect() {
    let sim = host();
    let td = Td::build(&sim, Stage::Created);
    // VPFLUSHDONE works on a TD whose keys were never configured.
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(
        mng_key_config(&sim, td.tdr),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.ADDCX
// ---------------------------------------------------------------------------

#[test]
fn addcx_takes_up_to_nine_pages_then_tdcx_num_incorrect() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::KeysConfigured);
    td.add_tdcs(&sim, 9);
    for &p in &td.tdcs {
        assert_eq!(
            rdmd(&sim, p),
            (PamtPageType::TDCX, td.tdr.hpa().as_u64(), 0, 0)
        );
    }
    let p = td.page(&sim);
    assert_eq!(mng_addcx(&sim, p, td.tdr), TdxStatus::TDCX_NUM_INCORRECT);
    // The count comes before the page check (step 4 before 5).
    let (s, _) = raw(
        &sim,
        Leaf::MNG_ADDCX.v0(),
        [p.hpa().as_u64() + 1, td.tdr.hpa().as_u64(), 0, 0, 0, 0],
    );
    assert_eq!(s, TdxStatus::TDCX_NUM_INCORRECT);
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
    // Nine pages (three for L2 VMs) still initialize a TD without L2 VMs.
    td.init(&sim, &Params::new());
    sim.check_invariants().unwrap();
}

#[test]
fn addcx_checks_in_order() {
    let sim = host();
    let created = Td::build_with(&sim, td_hkid(&sim), Stage::Created);
    let mut td = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::KeysConfigured);
    td.add_tdcs(&sim, 1);
    let lv = Leaf::MNG_ADDCX.v0();
    let p = page(&sim).hpa().as_u64();
    let tdr = td.tdr.hpa().as_u64();
    let outside = outside_page(&sim).hpa().as_u64();
    // Step 1: TDR_X(RDX).
    assert_eq!(raw(&sim, lv, [p, p, 0, 0, 0, 0]).0, metadata(RDX));
    assert_eq!(raw(&sim, lv, [p, tdr + 4, 0, 0, 0, 0]).0, invalid(RDX));
    assert_eq!(raw(&sim, lv, [p, outside, 0, 0, 0, 0]).0, range_error(RDX));
    // Step 3: keys not configured, before the page is looked at.
    let ctdr = created.tdr.hpa().as_u64();
    assert_eq!(
        raw(&sim, lv, [p, ctdr, 0, 0, 0, 0]).0,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        raw(&sim, lv, [p + 1, ctdr, 0, 0, 0, 0]).0,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    // Step 5: EXPL(RCX, PT_NDA).
    let cases = [
        (p + 0x800, invalid(RCX)),
        (with_hkid(&sim, p, 1), invalid(RCX)),
        (outside, range_error(RCX)),
        // The TDR itself: this leaf holds its PAMT entry already (TDR_X on
        // RDX), so the walk of RCX finds it locked, as in the module.
        (tdr, busy(RCX)),
        (td.tdcs[0].hpa().as_u64(), metadata(RCX)),
        (pamt_page().hpa().as_u64(), metadata(RCX)),
    ];
    for (rcx, want) in cases {
        assert_eq!(
            raw(&sim, lv, [rcx, tdr, 0, 0, 0, 0]).0,
            want,
            "RCX {rcx:#x}"
        );
    }
    ok("MNG.ADDCX", raw(&sim, lv, [p, tdr, 0, 0, 0, 0]).0);
    sim.check_invariants().unwrap();
}

#[test]
fn addcx_after_init_is_op_state_incorrect() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.page(&sim);
    assert_eq!(mng_addcx(&sim, p, td.tdr), TdxStatus::OP_STATE_INCORRECT);
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
    assert_eq!(sim.page_state(p), Some(PageState::Host));
    // The page check (step 5) comes before the op state (step 6).
    let (s, _) = raw(
        &sim,
        Leaf::MNG_ADDCX.v0(),
        [p.hpa().as_u64() + 8, td.tdr.hpa().as_u64(), 0, 0, 0, 0],
    );
    assert_eq!(s, invalid(RCX));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.INIT
// ---------------------------------------------------------------------------

#[test]
fn mng_init_moves_to_initialized_and_clears_rcx() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    td.init(&sim, &Params::new()); // asserts RCX = 0
    // INITIALIZED: a second INIT is refused, VP.CREATE is allowed.
    let c = td.try_init(&sim, &Params::new());
    assert_eq!(c.status, TdxStatus::OP_STATE_INCORRECT);
    td.create_vcpu(&sim, 5);
    let c = mng_rd(&sim, td.tdr, field::TSC_OFFSET);
    ok("MNG.RD", c.status);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_tdr_and_tdcs_checks() {
    let sim = host();
    let params = Params::new().write(&sim);
    let hkid = td_hkid(&sim);
    let created = Td::build_with(&sim, hkid, Stage::Created);
    let keys = Td::build_with(&sim, hkid + 1, Stage::KeysConfigured);
    let mut five = Td::build_with(&sim, hkid + 2, Stage::KeysConfigured);
    five.add_tdcs(&sim, 5);
    let p = page(&sim);
    assert_eq!(mng_init(&sim, p, params).status, metadata(RCX));
    assert_eq!(mng_init(&sim, five.tdcs[0], params).status, metadata(RCX));
    assert_eq!(
        mng_init(&sim, created.tdr, params).status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        mng_init(&sim, keys.tdr, params).status,
        TdxStatus::TDCS_NOT_ALLOCATED
    );
    assert_eq!(
        mng_init(&sim, five.tdr, params).status,
        TdxStatus::TDCS_NOT_ALLOCATED
    );
    // TDCS() (step 3) comes before the TD_PARAMS address (step 4).
    let (s, _) = raw(
        &sim,
        Leaf::MNG_INIT.v0(),
        [created.tdr.hpa().as_u64(), params.as_u64() + 1, 0, 0, 0, 0],
    );
    assert_eq!(s, TdxStatus::TD_KEYS_NOT_CONFIGURED);
    five.add_tdcs(&sim, 1);
    ok("MNG.INIT", mng_init(&sim, five.tdr, params).status);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_td_params_address_is_a_shared_hpa() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let pg = td.page(&sim).hpa().as_u64();
    // The structure 1 KiB into a page: 1 KiB aligned is enough.
    write(&sim, tdx_types::Hpa::new(pg + 0x400), &Params::new().0);
    let tdr = td.tdr.hpa().as_u64();
    let lv = Leaf::MNG_INIT.v0();
    let private = td.hkid;
    for (rdx, what) in [
        (pg + 0x200, "512 B aligned only"),
        (pg + 0x408, "8 B past 1 KiB"),
        (with_hkid(&sim, pg + 0x400, private), "a private KeyID"),
        (
            with_hkid(&sim, pg + 0x400, global_hkid(&sim)),
            "the global KeyID",
        ),
        (1 << 52, "beyond 2^52"),
    ] {
        assert_eq!(
            raw(&sim, lv, [tdr, rdx, 0, 0, 0, 0]).0,
            invalid(RDX),
            "{what}"
        );
    }
    // An MKTME (shared) KeyID in the address is allowed: same memory.
    let (s, out) = raw(&sim, lv, [tdr, with_hkid(&sim, pg + 0x400, 5), 0, 0, 0, 0]);
    ok("MNG.INIT through KeyID 5", s);
    assert_eq!(out.rcx, 0);
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_td_params_must_not_overlap_seamrr() {
    // SEAMRR at [3 GiB, 3 GiB + 64 MiB), below RAM.
    let sim = host_with(Profile::tdx_1_5(), |mut d| {
        d.seamrr = Some((3 * GIB, 3 * GIB + 64 * MIB));
        d
    });
    let td = Td::build(&sim, Stage::TdcsAdded);
    let (s, _) = raw(
        &sim,
        Leaf::MNG_INIT.v0(),
        [td.tdr.hpa().as_u64(), 3 * GIB + 0x400, 0, 0, 0, 0],
    );
    assert_eq!(s, invalid(RDX));
    sim.check_invariants().unwrap();
}

/// Every TD_PARAMS field broken at once, then fixed one at a time in the
/// model's order: each call reports the first field still
/// broken, and the TD stays UNINITIALIZED until the last fix succeeds.
#[test]
fn mng_init_td_params_fields_are_checked_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(0, 1 << 1) // ATTRIBUTES: a bit FIXED0 does not allow
        .u64(8, 0) // XFAM: FIXED1 (x87, SSE) missing
        .u16(16, 0) // MAX_VCPUS = 0
        .u8(18, 4) // NUM_L2_VMS > 3
        .u8(21, 1) // reserved_0
        .u64(32, 1 << 3) // CONFIG_FLAGS: a reserved bit
        .u64(24, 0x18) // EPTP: memory type UC
        .u16(40, 401) // TSC_FREQUENCY above 400
        .u8(50, 1) // reserved_1
        .u8(19, 2) // MSR_CONFIG_CTLS reserved bit
        .u8(240, 1) // reserved_2
        .u32(256, 1 << 28); // CPUID_CONFIG[0] (leaf 1).EAX bit 28: not configurable
    let steps: [(TdxStatus, Edit); 13] = [
        (invalid(OperandId::ATTRIBUTES), |p| {
            p.u64(0, 0);
        }),
        (invalid(OperandId::XFAM), |p| {
            p.u64(8, 3);
        }),
        (invalid(OperandId::MAX_VCPUS), |p| {
            p.u16(16, 1);
        }),
        (invalid(OperandId::NUM_L2_VMS), |p| {
            p.u8(18, 1);
        }),
        // One L2 VM needs a seventh TDCS page.
        (TdxStatus::TDCS_NOT_ALLOCATED, |p| {
            p.u8(18, 0);
        }),
        (invalid(RDX), |p| {
            p.u8(21, 0);
        }),
        (invalid(OperandId::EXEC_CONTROLS), |p| {
            p.u64(32, 0);
        }),
        (invalid(OperandId::EPTP_CONTROLS), |p| {
            p.u64(24, 0x1e);
        }),
        (invalid(OperandId::TSC_FREQUENCY), |p| {
            p.u16(40, 400);
        }),
        (invalid(RDX), |p| {
            p.u8(50, 0);
        }),
        (invalid(RDX), |p| {
            p.u8(19, 0);
        }),
        (invalid(RDX), |p| {
            p.u8(240, 0);
        }),
        (invalid(OperandId::CPUID_CONFIG), |p| {
            p.u32(256, 0);
        }),
    ];
    for (i, (want, fix)) in steps.into_iter().enumerate() {
        let c = td.try_init(&sim, &p);
        assert_eq!(c.status, want, "step {i}");
        fix(&mut p);
    }
    td.init(&sim, &p);
    sim.check_invariants().unwrap();
}

/// The value rules of each TD_PARAMS field, one TD per accepted value.
#[test]
fn mng_init_td_params_value_rules() {
    let sim = host();
    let mut hkid = td_hkid(&sim);
    let mut fresh = || {
        let td = Td::build_with(&sim, hkid, Stage::TdcsAdded);
        hkid += 1;
        td
    };
    let mut td = fresh();
    let refused: [(&str, Edit, TdxStatus); 12] = [
        (
            "XFAM bit 3 (MPX)",
            |p| {
                p.u64(8, 0b1011);
            },
            invalid(OperandId::XFAM),
        ),
        (
            "EPTP 3 levels",
            |p| {
                p.u64(24, 0x16);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "EPTP 6 levels",
            |p| {
                p.u64(24, 0x2e);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "EPTP A/D bits",
            |p| {
                p.u64(24, 0x5e);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "EPTP SSS",
            |p| {
                p.u64(24, 0x9e);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "EPTP base PA",
            |p| {
                p.u64(24, 0x1000 | 0x1e);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "GPAW with 4-level EPT",
            |p| {
                p.u64(32, 1);
            },
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            "TSC 3",
            |p| {
                p.u16(40, 3);
            },
            invalid(OperandId::TSC_FREQUENCY),
        ),
        (
            "TSC 0",
            |p| {
                p.u16(40, 0);
            },
            invalid(OperandId::TSC_FREQUENCY),
        ),
        (
            "reserved_1 last byte",
            |p| {
                p.u8(79, 0x80);
            },
            invalid(RDX),
        ),
        (
            "reserved_2 first byte",
            |p| {
                p.u8(232, 1);
            },
            invalid(RDX),
        ),
        // Entry 47 is past module 1.5.01's 12 CPUID entries: reserved_3
        // (tdh_mng_init.c).
        (
            "CPUID_CONFIG[47]",
            |p| {
                p.u32(256 + 47 * 16 + 12, 1);
            },
            invalid(RDX),
        ),
    ];
    for (what, f, want) in refused {
        let mut p = Params::new();
        f(&mut p);
        assert_eq!(td.try_init(&sim, &p).status, want, "{what}");
    }
    let accepted: [(&str, Edit); 8] = [
        ("ATTRIBUTES DEBUG | SEPT_VE_DISABLE", |p| {
            p.u64(0, 1 | 1 << 28);
        }),
        ("XFAM with AVX-512", |p| {
            p.u64(8, 0xE7);
        }),
        ("TSC 4 (100 MHz)", |p| {
            p.u16(40, 4);
        }),
        ("TSC 400 (10 GHz)", |p| {
            p.u16(40, 400);
        }),
        ("5-level EPT", |p| {
            p.u64(24, 0x26);
        }),
        ("GPAW with 5-level EPT", |p| {
            p.u64(24, 0x26).u64(32, 1);
        }),
        ("MSR_CONFIG_CTLS bit 0", |p| {
            p.u8(19, 1);
        }),
        ("a configurable CPUID bit (leaf 1 EBX 23:16)", |p| {
            p.u32(256 + 4, 0x00FF_0000);
        }),
    ];
    for (what, f) in accepted {
        let mut p = Params::new();
        f(&mut p);
        let c = td.try_init(&sim, &p);
        assert_eq!(c.status, TdxStatus::SUCCESS, "{what}");
        td = fresh();
    }
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_arch_capabilities_config_is_checked() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(224, u64::MAX);
    assert_eq!(
        td.try_init(&sim, &p).status,
        invalid(OperandId::IA32_ARCH_CAPABILITIES_CONFIG)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mng_init_with_one_l2_vm_needs_seven_tdcs_pages_and_nine_tdvps_pages() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u8(18, 1);
    assert_eq!(td.try_init(&sim, &p).status, TdxStatus::TDCS_NOT_ALLOCATED);
    td.add_tdcs(&sim, 1);
    td.init(&sim, &p);
    // VP.INIT needs 6 + 3 TDVPS pages with one L2 VM.
    let i = td.create_vcpu(&sim, 5);
    let tdvpr = td.vcpus[i].tdvpr;
    assert_eq!(vp_init(&sim, tdvpr, 0, 0), TdxStatus::TDCX_NUM_INCORRECT);
    for _ in 0..3 {
        let p = td.page(&sim);
        ok("VP.ADDCX", vp_addcx(&sim, p, tdvpr));
    }
    ok("VP.INIT", vp_init(&sim, tdvpr, 0, 0));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.RD (the fields the model serves)
// ---------------------------------------------------------------------------

#[test]
fn mng_rd_serves_tsc_fields_and_mrtd() {
    let sim = host();
    let td = Td::build(&sim, Stage::VcpuReady);
    let off = mng_rd(&sim, td.tdr, field::TSC_OFFSET);
    ok("TSC_OFFSET", off.status);
    assert_eq!(off.out, 0);
    let mul = mng_rd(&sim, td.tdr, field::TSC_MULTIPLIER);
    ok("TSC_MULTIPLIER", mul.status);
    assert_ne!(mul.out, 0);
    // MRTD reads as zero until finalized.
    let c = mng_rd(&sim, td.tdr, field::TD_MRTD);
    assert_eq!((c.status, c.out), (TdxStatus::SUCCESS, 0));
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let mrtd = read_mrtd(&sim, td.tdr);
    assert_eq!(Some(mrtd), sim.mrtd(td.tdr));
    assert_eq!(mrtd.to_vec(), Sha384::digest(b"").to_vec());
    // Past the sixth element, and an unknown field.
    let seventh = MdFieldId::from_raw(field::TD_MRTD.into_raw() + 6);
    assert_eq!(
        mng_rd(&sim, td.tdr, seventh).status,
        TdxStatus::METADATA_FIELD_ID_INCORRECT
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_checks_the_tdr_and_the_tdcs() {
    let sim = host();
    let td = Td::build(&sim, Stage::KeysConfigured);
    let p = page(&sim);
    assert_eq!(mng_rd(&sim, p, field::TSC_OFFSET).status, metadata(RCX));
    assert_eq!(
        mng_rd(&sim, td.tdr, field::TSC_OFFSET).status,
        TdxStatus::TDCS_NOT_ALLOCATED
    );
    sim.check_invariants().unwrap();
}

/// The six MRTD elements through TDH.MNG.RD.
fn read_mrtd(sim: &tdx_sim::Simulator, tdr: Pfn) -> [u8; 48] {
    let mut out = [0; 48];
    for i in 0..6 {
        let c = mng_rd(
            sim,
            tdr,
            MdFieldId::from_raw(field::TD_MRTD.into_raw() + i as u64),
        );
        ok("MNG.RD MRTD", c.status);
        out[8 * i..8 * i + 8].copy_from_slice(&c.out.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------
// TDH.VP.CREATE
// ---------------------------------------------------------------------------

#[test]
fn vp_create_makes_a_tdvpr() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let tdvpr = td.page(&sim);
    ok("VP.CREATE", vp_create(&sim, tdvpr, td.tdr));
    assert_eq!(
        rdmd(&sim, tdvpr),
        (PamtPageType::TDVPR, td.tdr.hpa().as_u64(), 0, 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn vp_create_checks_in_order() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let created = Td::build_with(&sim, hkid, Stage::Created);
    let keys = Td::build_with(&sim, hkid + 1, Stage::KeysConfigured);
    let uninit = Td::build_with(&sim, hkid + 2, Stage::TdcsAdded);
    let runnable = Td::build_with(&sim, hkid + 3, Stage::Runnable);
    let init = Td::build_with(&sim, hkid + 4, Stage::Initialized);
    let lv = Leaf::VP_CREATE.v0();
    let p = page(&sim).hpa().as_u64();
    let tdr = init.tdr.hpa().as_u64();
    // TDR_S(RDX).
    assert_eq!(raw(&sim, lv, [p, p, 0, 0, 0, 0]).0, metadata(RDX));
    assert_eq!(
        raw(&sim, lv, [p, init.tdcs[0].hpa().as_u64(), 0, 0, 0, 0]).0,
        metadata(RDX)
    );
    assert_eq!(raw(&sim, lv, [p, tdr | 0x800, 0, 0, 0, 0]).0, invalid(RDX));
    // TDCS(), before the TDVPR page (also with a bad page).
    for (td, want) in [
        (&created, TdxStatus::TD_KEYS_NOT_CONFIGURED),
        (&keys, TdxStatus::TDCS_NOT_ALLOCATED),
        (&uninit, TdxStatus::OP_STATE_INCORRECT),
        (&runnable, TdxStatus::OP_STATE_INCORRECT),
    ] {
        let t = td.tdr.hpa().as_u64();
        assert_eq!(raw(&sim, lv, [p, t, 0, 0, 0, 0]).0, want);
        assert_eq!(raw(&sim, lv, [p + 1, t, 0, 0, 0, 0]).0, want);
    }
    // EXPL(RCX, PT_NDA).
    let outside = outside_page(&sim).hpa().as_u64();
    for (rcx, want) in [
        (p + 0x100, invalid(RCX)),
        (with_hkid(&sim, p, 2), invalid(RCX)),
        (outside, range_error(RCX)),
        // The TDR itself: this leaf holds its PAMT entry shared (TDR_S on
        // RDX), so the exclusive walk of RCX fails, as in the module.
        (tdr, busy(RCX)),
        (init.tdcs[5].hpa().as_u64(), metadata(RCX)),
        (pamt_page().hpa().as_u64(), metadata(RCX)),
    ] {
        assert_eq!(
            raw(&sim, lv, [rcx, tdr, 0, 0, 0, 0]).0,
            want,
            "RCX {rcx:#x}"
        );
    }
    ok("VP.CREATE", raw(&sim, lv, [p, tdr, 0, 0, 0, 0]).0);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.VP.ADDCX
// ---------------------------------------------------------------------------

#[test]
fn vp_addcx_takes_up_to_fifteen_tdvps_pages() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let i = td.create_vcpu(&sim, 14);
    let tdvpr = td.vcpus[i].tdvpr;
    for &p in &td.vcpus[i].tdcx {
        assert_eq!(
            rdmd(&sim, p),
            (PamtPageType::TDCX, td.tdr.hpa().as_u64(), 0, 0)
        );
    }
    let p = td.page(&sim);
    assert_eq!(vp_addcx(&sim, p, tdvpr), TdxStatus::TDCX_NUM_INCORRECT);
    // The count comes before the new page's check.
    let (s, _) = raw(
        &sim,
        Leaf::VP_ADDCX.v0(),
        [p.hpa().as_u64() + 1, tdvpr.hpa().as_u64(), 0, 0, 0, 0],
    );
    assert_eq!(s, TdxStatus::TDCX_NUM_INCORRECT);
    // Fifteen pages are more than VP.INIT needs.
    td.init_vcpu(&sim, i, 0);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_addcx_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let fresh = td.create_vcpu(&sim, 0);
    let inited = td.vcpus[0].tdvpr;
    let tdvpr = td.vcpus[fresh].tdvpr.hpa().as_u64();
    let lv = Leaf::VP_ADDCX.v0();
    let p = page(&sim).hpa().as_u64();
    // EXPL(RDX, PT_TDVPR).
    for (rdx, want) in [
        (p, metadata(RDX)),
        (td.tdr.hpa().as_u64(), metadata(RDX)),
        (td.vcpus[0].tdcx[0].hpa().as_u64(), metadata(RDX)),
        (tdvpr + 0x40, invalid(RDX)),
    ] {
        assert_eq!(raw(&sim, lv, [p, rdx, 0, 0, 0, 0]).0, want, "RDX {rdx:#x}");
    }
    // vCPU state: after VP.INIT, whatever the page.
    let i = inited.hpa().as_u64();
    assert_eq!(
        raw(&sim, lv, [p, i, 0, 0, 0, 0]).0,
        TdxStatus::VCPU_STATE_INCORRECT
    );
    assert_eq!(
        raw(&sim, lv, [p + 1, i, 0, 0, 0, 0]).0,
        TdxStatus::VCPU_STATE_INCORRECT
    );
    // EXPL(RCX, PT_NDA).
    for (rcx, want) in [
        (p + 0x10, invalid(RCX)),
        (OUTSIDE_TDMR + 4 * PAGE, range_error(RCX)),
        (inited.hpa().as_u64(), metadata(RCX)),
        (pamt_page().hpa().as_u64(), metadata(RCX)),
    ] {
        assert_eq!(
            raw(&sim, lv, [rcx, tdvpr, 0, 0, 0, 0]).0,
            want,
            "RCX {rcx:#x}"
        );
    }
    // After finalize (TDCS op state) the uninitialized vCPU takes no page.
    // (It has fewer than 6 pages, so it cannot be initialized either.)
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    assert_eq!(
        raw(&sim, lv, [p, tdvpr, 0, 0, 0, 0]).0,
        TdxStatus::OP_STATE_INCORRECT
    );
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.VP.INIT
// ---------------------------------------------------------------------------

#[test]
fn vp_init_v0_associates_the_vcpu_with_the_calling_lp_and_v1_is_refused() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let a = td.create_vcpu(&sim, 5);
    let b = td.create_vcpu(&sim, 5);
    let (ta, tb) = (td.vcpus[a].tdvpr, td.vcpus[b].tdvpr);
    // Version 1 (the x2APIC ID in R8, as Linux issues it): module 1.5.01's
    // dispatcher refuses it, writing nothing.
    let regs = [ta.hpa().as_u64(), 0x1234, 7, 0, 0, 0];
    let (s, out) = on(&sim, 2, || raw(&sim, Leaf::VP_INIT.v(1), regs));
    assert_eq!(s, invalid(OperandId::RAX));
    assert_eq!([out.rcx, out.rdx, out.r8, out.r9, out.r10, out.r11], regs);
    ok("VP.INIT v0", on(&sim, 2, || vp_init_v0(&sim, ta, 0x1234)));
    ok("VP.INIT v0", on(&sim, 3, || vp_init_v0(&sim, tb, 0)));
    // Each is associated with the LP it was initialized on.
    assert_eq!(
        on(&sim, 3, || vp_flush(&sim, ta)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    ok("VP.FLUSH a", on(&sim, 2, || vp_flush(&sim, ta)));
    ok("VP.FLUSH b", on(&sim, 3, || vp_flush(&sim, tb)));
    // A version above 1 is refused (|RAX, operand 0).
    let (s, _) = raw(&sim, Leaf::VP_INIT.v(2), [ta.hpa().as_u64(), 0, 0, 0, 0, 0]);
    assert_eq!(s, invalid(OperandId::RAX));
    sim.check_invariants().unwrap();
}

#[test]
fn vp_init_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let short = td.create_vcpu(&sim, 4);
    let lv = Leaf::VP_INIT.v0();
    let p = page(&sim).hpa().as_u64();
    // EXPL(RCX, PT_TDVPR).
    for (rcx, want) in [
        (p, metadata(RCX)),
        (td.tdr.hpa().as_u64(), metadata(RCX)),
        (td.vcpus[0].tdcx[2].hpa().as_u64(), metadata(RCX)),
        (td.vcpus[0].tdvpr.hpa().as_u64() + 8, invalid(RCX)),
    ] {
        assert_eq!(raw(&sim, lv, [rcx, 0, 0, 0, 0, 0]).0, want, "RCX {rcx:#x}");
    }
    // Five TDVPS pages are one short.
    let tshort = td.vcpus[short].tdvpr;
    assert_eq!(vp_init(&sim, tshort, 0, 1), TdxStatus::TDCX_NUM_INCORRECT);
    // Already initialized.
    let t0 = td.vcpus[0].tdvpr;
    assert_eq!(
        on(&sim, VCPU_LP, || vp_init(&sim, t0, 0, 0)),
        TdxStatus::VCPU_STATE_INCORRECT
    );
    // After finalize, op state first (even for the short vCPU).
    let p2 = td.page(&sim);
    ok("VP.ADDCX", vp_addcx(&sim, p2, tshort));
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    assert_eq!(vp_init(&sim, tshort, 0, 1), TdxStatus::OP_STATE_INCORRECT);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_init_beyond_max_vcpus_is_refused_and_undone() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u16(16, 1);
    td.init(&sim, &p);
    td.add_vcpu(&sim, 0);
    let second = td.create_vcpu(&sim, 5);
    let t = td.vcpus[second].tdvpr;
    assert_eq!(vp_init(&sim, t, 0, 1), TdxStatus::MAX_VCPUS_EXCEEDED);
    // Undone: the vCPU is still UNINITIALIZED (ADDCX takes pages) and not
    // associated anywhere.
    let extra = td.page(&sim);
    ok("VP.ADDCX after the refusal", vp_addcx(&sim, extra, t));
    for lp in 0..4 {
        assert_eq!(
            on(&sim, lp, || vp_flush(&sim, t)),
            TdxStatus::VCPU_NOT_ASSOCIATED
        );
    }
    assert_eq!(vp_init(&sim, t, 0, 1), TdxStatus::MAX_VCPUS_EXCEEDED);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.VP.FLUSH
// ---------------------------------------------------------------------------

#[test]
fn vp_flush_runs_only_on_the_associated_lp() {
    let sim = host();
    let td = Td::build(&sim, Stage::Runnable);
    let t = td.vcpus[0].tdvpr;
    for lp in [0, 2, 3] {
        assert_eq!(
            on(&sim, lp, || vp_flush(&sim, t)),
            TdxStatus::VCPU_NOT_ASSOCIATED,
            "LP {lp}"
        );
    }
    assert!(!TdxStatus::VCPU_NOT_ASSOCIATED.is_fatal());
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, t)));
    // Dissociated: a second flush, even on the same LP, finds nothing.
    assert_eq!(
        on(&sim, VCPU_LP, || vp_flush(&sim, t)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    sim.check_invariants().unwrap();
}

#[test]
fn vp_flush_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let short = td.create_vcpu(&sim, 2);
    let never = td.create_vcpu(&sim, 5);
    let lv = Leaf::VP_FLUSH.v0();
    // EXPL(RCX, PT_TDVPR).
    for (rcx, want) in [
        (td.tdr.hpa().as_u64(), metadata(RCX)),
        (td.vcpus[never].tdcx[0].hpa().as_u64(), metadata(RCX)),
        (page(&sim).hpa().as_u64(), metadata(RCX)),
        (td.vcpus[never].tdvpr.hpa().as_u64() | 0x20, invalid(RCX)),
    ] {
        assert_eq!(raw(&sim, lv, [rcx, 0, 0, 0, 0, 0]).0, want, "RCX {rcx:#x}");
    }
    // Too few TDVPS pages comes before the association.
    let ts = td.vcpus[short].tdvpr;
    assert_eq!(vp_flush(&sim, ts), TdxStatus::TDCX_NUM_INCORRECT);
    // Never associated (assoc_lpid = -1).
    let tn = td.vcpus[never].tdvpr;
    assert_eq!(vp_flush(&sim, tn), TdxStatus::VCPU_NOT_ASSOCIATED);
    // After VPFLUSHDONE the TD's keys are no longer configured.
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    assert_eq!(vp_flush(&sim, tn), TdxStatus::TD_KEYS_NOT_CONFIGURED);
    assert_eq!(vp_flush(&sim, ts), TdxStatus::TD_KEYS_NOT_CONFIGURED);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MR.EXTEND
// ---------------------------------------------------------------------------

#[test]
fn mr_extend_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.add_page(&sim, 0, &[1; 4096]);
    let pending = 0x2000;
    let pending_page = td.aug(&sim, pending, 0);
    let pending_2m = 2 * MIB;
    let pending_big = td.aug(&sim, pending_2m, 1);
    let lv = Leaf::MR_EXTEND.v0();
    let tdr = td.tdr.hpa().as_u64();
    let p = page(&sim).hpa().as_u64();
    // TDR_X(RDX).
    assert_eq!(raw(&sim, lv, [0, p, 0, 0, 0, 0]).0, metadata(RDX));
    assert_eq!(raw(&sim, lv, [0, tdr + 1, 0, 0, 0, 0]).0, invalid(RDX));
    // RCX: 256-byte alignment, then the private-GPA rule.
    for rcx in [0x80, 0x1, 0xFFF, 1 << 47, 1 << 48, 1 << 51, 1 << 52] {
        assert_eq!(
            raw(&sim, lv, [rcx, tdr, 0, 0, 0, 0]).0,
            invalid(RCX),
            "GPA {rcx:#x}"
        );
    }
    // Nothing mapped: NOT_PRESENT|RCX with the entry where the walk stopped.
    let c = mr_extend(&sim, td.tdr, Gpa::new(0x1000));
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    let (s, out) = raw(&sim, lv, [0x1000, tdr, 8, 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    assert_details(sept_out(out), 0, SeptState::FREE, None);
    assert_eq!((out.r8, out.r9, out.r10, out.r11), (8, 9, 10, 11));
    let (s, out) = raw(&sim, lv, [GIB, tdr, 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    // A PENDING leaf (AUG before finalize) has RWX = 0, so the walk to the
    // leaf fails (check_and_walk_private_gpa_to_leaf in helpers.c): the
    // same NOT_PRESENT|RCX with the leaf's details, at 4K and at 2M
    // (tdh_mr_extend.c). The bare TDX_EPT_ENTRY_NOT_PRESENT is for a leaf
    // with permissions that is not MAPPED (migration states only).
    let (s, out) = raw(&sim, lv, [pending, tdr, 8, 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    assert_eq!(
        (out.rcx, out.rdx),
        (pending_page.hpa().as_u64() | 0x8000_0000_0000_00F0, 0x200)
    );
    assert_eq!((out.r8, out.r9, out.r10, out.r11), (8, 9, 10, 11));
    let (s, out) = raw(&sim, lv, [pending_2m + 0x1100, tdr, 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    assert_eq!(
        (out.rcx, out.rdx),
        (pending_big.hpa().as_u64() | 0x8000_0000_0000_00F0, 0x201)
    );
    // The happy path clears RCX/RDX and leaves R8..R11.
    let (s, out) = raw(&sim, lv, [0x300, tdr, 8, 9, 10, 11]);
    ok("MR.EXTEND", s);
    assert_eq!(
        (out.rcx, out.rdx, out.r8, out.r9, out.r10, out.r11),
        (0, 0, 8, 9, 10, 11)
    );
    sim.check_invariants().unwrap();
}

#[test]
/// The walk must reach a leaf with RWX != 0, else
/// `TDX_EPT_ENTRY_NOT_PRESENT|RCX` with details; the "no operand" answer is
/// for a leaf that has permissions but is not MAPPED. RANGE.BLOCK clears a
/// leaf's permissions, so a BLOCKED leaf fails the walk (operand RCX).
fn mr_extend_on_a_blocked_leaf_fails_the_walk() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let page0 = td.add_page(&sim, 0, &[1; 4096]);
    ok("RANGE.BLOCK", range_block(&sim, info(0, 0), td.tdr).status);
    let c = mr_extend(&sim, td.tdr, Gpa::new(0));
    assert_eq!(
        c.status,
        TdxStatus::EPT_ENTRY_NOT_PRESENT.with_operand(OperandId::RCX)
    );
    assert_eq!(
        c.out.level_state.state(),
        tdx_types::regs::SeptState::BLOCKED,
        "the walk's details name the blocked leaf"
    );
    let (s, out) = raw(
        &sim,
        Leaf::MR_EXTEND.v0(),
        [0, td.tdr.hpa().as_u64(), 0, 0, 0, 0],
    );
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_NOT_PRESENT, RCX));
    assert_details(sept_out(out), 0, SeptState::BLOCKED, Some(page0));
    sim.check_invariants().unwrap();
}

#[test]
fn mr_extend_and_finalize_only_in_initialized() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let uninit = Td::build_with(&sim, hkid, Stage::TdcsAdded);
    let created = Td::build_with(&sim, hkid + 1, Stage::Created);
    let mut td = Td::build_with(&sim, hkid + 2, Stage::VcpuReady);
    td.add_page(&sim, 0, &[2; 4096]);
    assert_eq!(
        mr_extend(&sim, uninit.tdr, Gpa::new(0)).status,
        TdxStatus::OP_STATE_INCORRECT
    );
    assert_eq!(mr_finalize(&sim, uninit.tdr), TdxStatus::OP_STATE_INCORRECT);
    assert_eq!(
        mr_extend(&sim, created.tdr, Gpa::new(0)).status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        mr_finalize(&sim, created.tdr),
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    assert_eq!(
        mr_extend(&sim, td.tdr, Gpa::new(0)).status,
        TdxStatus::OP_STATE_INCORRECT
    );
    assert_eq!(mr_finalize(&sim, td.tdr), TdxStatus::OP_STATE_INCORRECT);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MR.FINALIZE
// ---------------------------------------------------------------------------

#[test]
fn mr_finalize_needs_an_initialized_vcpu() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = page(&sim);
    assert_eq!(mr_finalize(&sim, p), metadata(RCX));
    assert_eq!(mr_finalize(&sim, td.tdcs[1]), metadata(RCX));
    assert_eq!(mr_finalize(&sim, td.tdr), TdxStatus::NO_VCPUS);
    // Created but not initialized does not count.
    let i = td.create_vcpu(&sim, 5);
    assert_eq!(mr_finalize(&sim, td.tdr), TdxStatus::NO_VCPUS);
    td.init_vcpu(&sim, i, 0);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    // RUNNABLE: build leaves are refused.
    let q = td.page(&sim);
    assert_eq!(vp_create(&sim, q, td.tdr), TdxStatus::OP_STATE_INCORRECT);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// MRTD vectors
// ---------------------------------------------------------------------------

/// A measurement block: 16-byte name, GPA little-endian, 104 zero bytes.
fn block(name: &str, gpa: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[16..24].copy_from_slice(&gpa.to_le_bytes());
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn finalized_mrtd(sim: &tdx_sim::Simulator, td: &Td) -> [u8; 48] {
    ok("MR.FINALIZE", mr_finalize(sim, td.tdr));
    let m = read_mrtd(sim, td.tdr);
    assert_eq!(Some(m), sim.mrtd(td.tdr));
    m
}

// Pinned with Python's hashlib (OpenSSL), not with the sha2 crate.
const MRTD_EMPTY: &str = "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b";
const MRTD_ONE_PAGE: &str = "8f3e9a8aca6784eab874f7aa4dda5d49104a88047f1f86695ef2a88f5691a90e34aac48ce45ffa1f5a23c7d62980d570";
const MRTD_SEQUENCE: &str = "fa352d171e8b3bc0c0e5033448433426889ee4ecf31437aeb5fa4245baf32a865175d873dbe85567adcf6a9ce74be638";

#[test]
fn mrtd_of_a_td_without_pages_is_sha384_of_nothing() {
    let sim = host();
    let td = Td::build(&sim, Stage::VcpuReady);
    let m = finalized_mrtd(&sim, &td);
    assert_eq!(hex(&m), MRTD_EMPTY);
    assert_eq!(m.to_vec(), Sha384::digest(b"").to_vec());
    sim.check_invariants().unwrap();
}

#[test]
fn mrtd_of_one_page_add_measures_the_gpa_not_the_contents() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let mut a = Td::build_with(&sim, hkid, Stage::VcpuReady);
    let mut b = Td::build_with(&sim, hkid + 1, Stage::VcpuReady);
    a.add_page(&sim, 0, &[0; 4096]);
    b.add_page(&sim, 0, &[0xEE; 4096]);
    let (ma, mb) = (finalized_mrtd(&sim, &a), finalized_mrtd(&sim, &b));
    assert_eq!(ma, mb, "PAGE.ADD does not measure contents");
    assert_eq!(hex(&ma), MRTD_ONE_PAGE);
    assert_eq!(
        ma.to_vec(),
        Sha384::digest(block("MEM.PAGE.ADD", 0)).to_vec()
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mrtd_of_a_fixed_add_and_extend_sequence() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let p0: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let p1: Vec<u8> = (0..4096u32).map(|i| ((i * 13 + 5) % 256) as u8).collect();
    let p2 = vec![0xA5u8; 4096];
    let zero = [0u8; 256];
    let mut h = Sha384::new();
    let extend = |td: &Td, h: &mut Sha384, gpa: u64, data: &[u8]| {
        ok("MR.EXTEND", mr_extend(&sim, td.tdr, Gpa::new(gpa)).status);
        h.update(block("MR.EXTEND", gpa));
        h.update(&data[..256]);
    };
    td.add_page(&sim, 0, &p0);
    h.update(block("MEM.PAGE.ADD", 0));
    td.add_page(&sim, 0x1000, &p1);
    h.update(block("MEM.PAGE.ADD", 0x1000));
    for k in 0..16 {
        extend(&td, &mut h, 0x1000 + k * 256, &p1[k as usize * 256..]);
    }
    extend(&td, &mut h, 0, &p0);
    extend(&td, &mut h, 0xF00, &p0[0xF00..]);
    td.add_page(&sim, 0x20_0000, &[0; 4096]);
    h.update(block("MEM.PAGE.ADD", 0x20_0000));
    extend(&td, &mut h, 0x20_0100, &zero);
    td.add_page(&sim, 0x7FFF_F000, &p2);
    h.update(block("MEM.PAGE.ADD", 0x7FFF_F000));
    extend(&td, &mut h, 0x7FFF_FE00, &p2);
    // A 2 MiB page AUGed before finalize and accepted by the guest: not
    // measured by AUG; MR.EXTEND reads it at its offset.
    td.aug(&sim, 0x40_0000, 1);
    ok("accept", sim.guest_accept(td.tdr, 0x40_0000, 1));
    extend(&td, &mut h, 0x5F_FF00, &zero);
    let m = finalized_mrtd(&sim, &td);
    assert_eq!(m.to_vec(), h.finalize().to_vec());
    assert_eq!(hex(&m), MRTD_SEQUENCE);
    sim.check_invariants().unwrap();
}

#[test]
fn failed_calls_do_not_extend_mrtd() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    td.add_page(&sim, 0, &[3; 4096]);
    // A refused PAGE.ADD (already mapped) and a refused MR.EXTEND.
    let (t, s) = (td.page(&sim), td.page(&sim));
    assert!(page_add(&sim, info(0, 0), td.tdr, t, s).status.is_error());
    assert!(mr_extend(&sim, td.tdr, Gpa::new(0x1000)).status.is_error());
    let m = finalized_mrtd(&sim, &td);
    assert_eq!(hex(&m), MRTD_ONE_PAGE);
    sim.check_invariants().unwrap();
}
