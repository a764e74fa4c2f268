//! TDH.MNG.RD/WR and TDH.VP.RD/WR as module 1.5.01 has them
//! (`src/vmm_dispatcher/api_calls/tdh_mng_rd_wr.c`, `tdh_vp_rd_wr.c`,
//! `src/common/metadata_handlers/`), and TDH.VP.INIT version 1 of module
//! 1.5.05. Each test issues raw SEAMCALLs and checks RAX and every register
//! the leaf writes (RDX for a version-1 read, R8 always), and that the
//! others come back as given.

mod td_support;

use td_support::*;
use tdx_sim::{Profile, Simulator};
use tdx_sys::SeamcallArgs;
use tdx_types::{
    Leaf, LeafVersion, OperandId, TdxStatus,
    metadata::{MdFieldId, field, td_field_id},
};

const NOT_VALID: TdxStatus = TdxStatus::from_raw(0xC000_0C03_0000_0000);
const WR_MASK_NOT_VALID: TdxStatus = TdxStatus::from_raw(0xC000_0C0A_0000_0000);
const VMCS_NOT_INITIALIZED: TdxStatus = TdxStatus::from_raw(0xC000_0730_0000_0000);
const X2APIC_ID_NOT_UNIQUE: TdxStatus = TdxStatus::from_raw(0xC000_0621_0000_0000);
const NA: u64 = u64::MAX;
/// R10 and R11 as the caller passes them; no metadata leaf writes them.
const R10: u64 = 0xA10;
const R11: u64 = 0xB11;

/// One metadata leaf: RCX = TDR/TDVPR, RDX = field ID, R8 = value, R9 =
/// write mask. Returns the status, RDX and R8, after checking that RCX,
/// R9-R11 came back unchanged.
#[track_caller]
fn md(
    sim: &Simulator,
    lv: LeafVersion,
    rcx: u64,
    rdx: u64,
    r8: u64,
    r9: u64,
) -> (TdxStatus, u64, u64) {
    let (s, a): (TdxStatus, SeamcallArgs) = raw(sim, lv, [rcx, rdx, r8, r9, R10, R11]);
    assert_eq!((a.rcx, a.r9, a.r10, a.r11), (rcx, r9, R10, R11), "{lv}");
    (s, a.rdx, a.r8)
}

fn mng_rd0(sim: &Simulator, td: &Td, id: u64) -> (TdxStatus, u64, u64) {
    md(
        sim,
        Leaf::MNG_RD.v0(),
        td.tdr.hpa().as_u64(),
        id,
        0x88,
        0x99,
    )
}

fn mng_rd1(sim: &Simulator, td: &Td, id: u64) -> (TdxStatus, u64, u64) {
    md(
        sim,
        Leaf::MNG_RD.v(1),
        td.tdr.hpa().as_u64(),
        id,
        0x88,
        0x99,
    )
}

fn mng_wr(sim: &Simulator, td: &Td, id: u64, value: u64, mask: u64) -> (TdxStatus, u64, u64) {
    md(
        sim,
        Leaf::MNG_WR.v0(),
        td.tdr.hpa().as_u64(),
        id,
        value,
        mask,
    )
}

/// A TD_PARAMS image with MRCONFIGID, MROWNER and MROWNERCONFIG filled
/// (byte `i` of each is `base + i`) and `attributes`.
fn params(attributes: u64) -> Params {
    let mut p = Params::new();
    p.u64(0, attributes);
    for (off, base) in [(80, 0x10u8), (128, 0x40), (176, 0x70)] {
        for i in 0..48 {
            p.u8(off + i, base + i as u8);
        }
    }
    p
}

/// A TD initialized with [`params`] and one vCPU ready on [`VCPU_LP`].
fn td_with(sim: &Simulator, attributes: u64) -> Td {
    let mut td = Td::build(sim, Stage::TdcsAdded);
    td.init(sim, &params(attributes));
    td.add_vcpu(sim, VCPU_LP);
    td
}

fn raw_id(id: MdFieldId) -> u64 {
    id.into_raw()
}

/// The element `i` of a 48-byte register [`params`] filled from `base`.
fn mr_element(base: u8, i: u8) -> u64 {
    u64::from_le_bytes(core::array::from_fn(|b| base + 8 * i + b as u8))
}

// ---------------------------------------------------------------------------
// TDH.MNG.RD
// ---------------------------------------------------------------------------

#[test]
fn mng_rd_reads_the_tds_fields_by_the_modules_ids() {
    let sim = host();
    let td = td_with(&sim, 0);
    let shift = keyid_shift(&sim);
    let tdcx_pa = |i: usize| td.tdcs[i].hpa().as_u64() | u64::from(td.hkid) << shift;
    let expect = [
        (field::TD_FATAL, 0),
        (field::TD_NUM_TDCX, 6),
        (field::TD_LIFECYCLE_STATE, 1),
        (field::TD_TDCX_PA, tdcx_pa(0)),
        (field::TD_TDCX_PA.element(5).unwrap(), tdcx_pa(5)),
        (field::TD_TDCX_PA.element(6).unwrap(), 0),
        (field::TD_HKID, u64::from(td.hkid)),
        (field::TD_PKG_CONFIG_BITMAP, 0b11),
        (field::TD_NUM_VCPUS, 1),
        (field::TD_NUM_ASSOC_VCPUS, 1),
        (field::TD_OP_STATE, 1),
        (field::TD_NUM_L2_VMS, 0),
        (field::TD_ATTRIBUTES, 0),
        (field::TD_XFAM, 3),
        (field::TD_MAX_VCPUS, 4),
        (field::TD_GPAW, 0),
        // The EPTP controls with the S-EPT root (TDCS page 3, no KeyID).
        (field::TD_EPTP, 0x1e | td.tdcs[3].hpa().as_u64()),
        (field::TSC_OFFSET, 0),
        (field::TD_TSC_FREQUENCY, 100),
        (field::TD_NUM_CPUID_VALUES, 64),
        (field::TD_HP_LOCK_TIMEOUT, 1_000_000),
        (field::TD_CONFIG_FLAGS, 0),
        (field::TD_EPOCH, 1),
        (field::TD_MRTD, 0),
        (field::TD_MRCONFIGID, mr_element(0x10, 0)),
        (field::TD_MROWNER.element(3).unwrap(), mr_element(0x40, 3)),
        (
            field::TD_MROWNERCONFIG.element(5).unwrap(),
            mr_element(0x70, 5),
        ),
    ];
    for (id, value) in expect {
        // Version 0: RDX comes back as given.
        assert_eq!(
            mng_rd0(&sim, &td, raw_id(id)),
            (TdxStatus::SUCCESS, raw_id(id), value),
            "{id}"
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_finds_a_field_by_class_and_field_code_only() {
    let sim = host();
    let td = td_with(&sim, 0);
    let xfam = 3;
    // KVM's short form, another element size, NON_ARCH, the vCPU context
    // code, INC_SIZE and WRITE_MASK_VALID: all name TDCS XFAM.
    let short = td_field_id(false, 17, 1).into_raw();
    for id in [
        short,
        short | 1 << 32,
        short | 1 << 63,
        short | 2 << 52,
        short | 1 << 50 | 1 << 51,
    ] {
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::SUCCESS, id, xfam),
            "{id:#x}"
        );
    }
    // The value is masked to the field's width, not the ID's: HKID is 16
    // bits whatever size code the ID carries.
    let hkid8 = field::TD_HKID.with_element_size_code(0).into_raw();
    assert_eq!(
        mng_rd0(&sim, &td, hkid8),
        (TdxStatus::SUCCESS, hkid8, u64::from(td.hkid))
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_refuses_ids_that_are_not_single_elements() {
    let sim = host();
    let td = td_with(&sim, 0);
    let attributes = raw_id(field::TD_ATTRIBUTES);
    // Reserved bits 31:24, 49:47, 55, 62; LAST_ELEMENT_IN_FIELD;
    // LAST_FIELD_IN_SEQUENCE.
    for bit in [24, 31, 47, 49, 55, 62, 34, 38] {
        let id = attributes | 1 << bit;
        let want = TdxStatus::METADATA_FIELD_ID_INCORRECT;
        assert_eq!(mng_rd0(&sim, &td, id), (want, id, 0), "bit {bit}");
        assert_eq!(mng_rd1(&sim, &td, id), (want, NA, 0), "bit {bit}, v1");
        assert_eq!(mng_wr(&sim, &td, id, 1, 1), (want, id, 0), "bit {bit}, WR");
    }
    // No such field: MRTD has six elements, class 19 code 6 is nothing.
    let id = attributes + 0x1F;
    let seventh = raw_id(field::TD_MRTD) + 6;
    for id in [id, seventh, raw_id(td_field_id(false, 63, 0))] {
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::METADATA_FIELD_ID_INCORRECT, id, 0),
            "{id:#x}"
        );
    }
    // The null ID is not a single element for version 0.
    assert_eq!(
        mng_rd0(&sim, &td, NA),
        (TdxStatus::METADATA_FIELD_ID_INCORRECT, NA, 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_clears_r8_and_sets_rdx_before_the_tdr_and_tdcs_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::TdcsAdded);
    let id = raw_id(field::TD_ATTRIBUTES);
    let other = page(&sim).hpa().as_u64();
    let rcx_bad = md(&sim, Leaf::MNG_RD.v0(), other, id, 0x88, 0);
    assert_eq!(rcx_bad, (metadata(OperandId::RCX), id, 0));
    let rcx_bad = md(&sim, Leaf::MNG_RD.v(1), other, id, 0x88, 0);
    assert_eq!(rcx_bad, (metadata(OperandId::RCX), NA, 0));
    let rcx_bad = md(&sim, Leaf::MNG_WR.v0(), other, id, 0x88, 1);
    assert_eq!(rcx_bad, (metadata(OperandId::RCX), id, 0));
    // Before TDH.MNG.INIT.
    assert_eq!(
        mng_rd1(&sim, &td, id),
        (TdxStatus::OP_STATE_INCORRECT, NA, 0)
    );
    assert_eq!(
        mng_wr(&sim, &td, id, 0x88, 1),
        (TdxStatus::OP_STATE_INCORRECT, id, 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn mrtd_reads_zero_until_finalize_then_the_measurement() {
    let sim = host();
    let td = td_with(&sim, 0);
    for e in 0..6 {
        let id = raw_id(field::TD_MRTD) + e;
        assert_eq!(mng_rd0(&sim, &td, id), (TdxStatus::SUCCESS, id, 0));
    }
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let m = sim.mrtd(td.tdr).unwrap();
    for e in 0..6usize {
        let id = raw_id(field::TD_MRTD) + e as u64;
        let want = u64::from_le_bytes(m[8 * e..8 * e + 8].try_into().unwrap());
        assert_eq!(mng_rd0(&sim, &td, id), (TdxStatus::SUCCESS, id, want));
    }
    // OP_STATE is RUNNABLE now.
    let op = raw_id(field::TD_OP_STATE);
    assert_eq!(mng_rd0(&sim, &td, op), (TdxStatus::SUCCESS, op, 2));
    sim.check_invariants().unwrap();
}

#[test]
fn unreadable_fields_of_a_production_td_are_readable_in_a_debug_td() {
    let sim = host();
    let prod = td_with(&sim, 0);
    let dbg = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::TdcsAdded);
    let mut dbg = dbg;
    dbg.init(&sim, &params(1));
    // RTMRs, TD_CTLS, NOTIFY_ENABLES, CPUID_VALID, the S-EPT root: the
    // debug masks only. VIRTUAL_TSC: no single-element read at all.
    let rtmr = raw_id(field::td_rtmr(2, 3).unwrap());
    let ctls = raw_id(field::TD_CTLS);
    let notify = 0x9110_0003_0000_0010;
    let cpuid_valid = 0x9110_0000_0000_0080;
    let sept_root = 0x2110_0003_0000_0000;
    for id in [rtmr, ctls, notify, cpuid_valid, sept_root] {
        let nr = TdxStatus::METADATA_FIELD_NOT_READABLE;
        assert_eq!(mng_rd0(&sim, &prod, id), (nr, id, 0), "{id:#x}");
        assert_eq!(mng_rd1(&sim, &prod, id), (nr, NA, 0), "{id:#x}");
        assert_eq!(mng_rd0(&sim, &dbg, id).0, TdxStatus::SUCCESS, "{id:#x}");
    }
    // CPUID_VALID[0] (leaf 1) is set by TDH.MNG.INIT.
    assert_eq!(mng_rd0(&sim, &dbg, cpuid_valid).2, 1);
    let vtsc = 0x1110_0003_0000_000D;
    for td in [&prod, &dbg] {
        assert_eq!(
            mng_rd0(&sim, td, vtsc),
            (TdxStatus::METADATA_FIELD_NOT_READABLE, vtsc, 0)
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn cpuid_values_resolve_by_leaf_and_subleaf() {
    let sim = host();
    let td = td_with(&sim, 0);
    let leaf1 = raw_id(field::td_cpuid_value(1, None, 0).unwrap());
    assert_eq!(leaf1, 0x9410_0003_0000_03FE);
    // A valid leaf reads the TD's values, as the guest's CPUID has them
    // without the dynamic fixups: leaf 1 element 0 is EAX (the CPU's
    // F/M/S) and EBX, element 1 ECX (FIXED1 bit 31) and EDX (FIXED1 bit 9).
    let fms = u64::from(tdx_sim::NativeCpu::default().fms);
    assert_eq!(mng_rd0(&sim, &td, leaf1), (TdxStatus::SUCCESS, leaf1, fms));
    assert_eq!(
        mng_rd0(&sim, &td, leaf1 + 1),
        (TdxStatus::SUCCESS, leaf1 + 1, 1 << 31 | 1 << 41)
    );
    // The sub-leaf bits do not matter when "not applicable" is set.
    assert_eq!(
        mng_rd0(&sim, &td, 0x9410_0003_0000_0300).0,
        TdxStatus::SUCCESS
    );
    // A faulting leaf (6) is not readable; a leaf outside the module's
    // lookup (9) and reserved field-code bits 23:17 are not fields.
    let leaf6 = raw_id(field::td_cpuid_value(6, None, 1).unwrap());
    assert_eq!(
        mng_rd0(&sim, &td, leaf6),
        (TdxStatus::METADATA_FIELD_NOT_READABLE, leaf6, 0)
    );
    let leaf9 = raw_id(field::td_cpuid_value(9, None, 0).unwrap());
    let reserved = leaf1 | 1 << 17;
    for id in [leaf9, reserved] {
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::METADATA_FIELD_ID_INCORRECT, id, 0),
            "{id:#x}"
        );
    }
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.RD version 1: the next field ID
// ---------------------------------------------------------------------------

#[test]
fn mng_rd_v1_null_id_answers_the_first_readable_field() {
    let sim = host();
    let td = td_with(&sim, 0);
    // All ones, and all ones but the context code: both null.
    for id in [NA, NA & !(0b111 << 52), NA & !(1 << 53)] {
        assert_eq!(
            mng_rd1(&sim, &td, id),
            (
                TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT,
                raw_id(field::TD_FATAL),
                0
            ),
            "{id:#x}"
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn mng_rd_v1_walks_elements_then_fields_skipping_unreadable_ones() {
    let sim = host();
    let td = td_with(&sim, 0);
    let ok_next = |id: u64, next: u64, value: u64| {
        assert_eq!(
            mng_rd1(&sim, &td, id),
            (TdxStatus::SUCCESS, next, value),
            "{id:#x}"
        );
    };
    // Field to field: the next field's own ID.
    ok_next(raw_id(field::TD_ATTRIBUTES), raw_id(field::TD_XFAM), 0);
    // KVM's short form of ATTRIBUTES: the next field is named the module's
    // way all the same.
    ok_next(
        td_field_id(false, 17, 0).into_raw(),
        raw_id(field::TD_XFAM),
        0,
    );
    // Within a field: the caller's ID, context set to TD, advanced.
    ok_next(0x1300_0000_0000_0000, 0x1310_0000_0000_0001, 0);
    ok_next(raw_id(field::TD_MRTD) + 4, raw_id(field::TD_MRTD) + 5, 0);
    ok_next(raw_id(field::TD_MRTD) + 5, raw_id(field::TD_MRCONFIGID), 0);
    // After MROWNERCONFIG come the RTMRs, which a production TD cannot
    // read: the next readable element is CPUID leaf 1's first.
    ok_next(
        raw_id(field::TD_MROWNERCONFIG) + 5,
        0x9410_0003_0000_03FE,
        mr_element(0x70, 5),
    );
    // CPUID: element 1 of a leaf, then the next leaf of the module's
    // lookup (leaf 4, sub-leaf 0), element 0.
    let fms = u64::from(tdx_sim::NativeCpu::default().fms);
    ok_next(0x9410_0003_0000_03FE, 0x9410_0003_0000_03FF, fms);
    ok_next(
        0x9410_0003_0000_03FF,
        0x9410_0003_0000_0800,
        1 << 31 | 1 << 41,
    );
    // The last lookup entry (leaf 5) leads past the virtual MSR values (a
    // debug TD's only) to the migration fields.
    let leaf5 = raw_id(field::td_cpuid_value(5, None, 1).unwrap());
    ok_next(leaf5, 0x9810_0000_0000_0001, 0);
    // The last readable element: no next (MSR bitmaps and S-EPT root are
    // a debug TD's).
    ok_next(0x9A10_0003_0000_0000 + 511, NA, 0);
    // A debug TD reads the RTMRs, so they are next there.
    let dbg = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::TdcsAdded);
    let mut dbg = dbg;
    dbg.init(&sim, &params(1));
    assert_eq!(
        mng_rd1(&sim, &dbg, raw_id(field::TD_MROWNERCONFIG) + 5),
        (
            TdxStatus::SUCCESS,
            raw_id(field::TD_RTMR),
            mr_element(0x70, 5)
        )
    );
    assert_eq!(
        mng_rd1(&sim, &dbg, 0x9A10_0003_0000_0000 + 511),
        (TdxStatus::SUCCESS, 0x2010_0003_0000_0000, 0)
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MNG.WR
// ---------------------------------------------------------------------------

#[test]
fn mng_wr_needs_a_writable_bit_and_leaves_the_others_unchanged() {
    let sim = host();
    let td = td_with(&sim, 0);
    let nw = TdxStatus::METADATA_FIELD_NOT_WRITABLE;
    // Read-only fields.
    for id in [field::TD_ATTRIBUTES, field::TD_MRTD, field::TSC_OFFSET] {
        let id = raw_id(id);
        assert_eq!(mng_wr(&sim, &td, id, 5, u64::MAX), (nw, id, 0), "{id:#x}");
    }
    // VM_CTLS[1]: bit 0 writable. A mask without bit 0 writes nothing.
    let vm_ctls = raw_id(field::TD_VM_CTLS) + 1;
    assert_eq!(mng_wr(&sim, &td, vm_ctls, 2, 2), (nw, vm_ctls, 0));
    // Bit 0 with bit 1 in the mask: allowed while bit 1 keeps its value...
    assert_eq!(
        mng_wr(&sim, &td, vm_ctls, 1, 3),
        (TdxStatus::SUCCESS, vm_ctls, 0)
    );
    // ... refused when it would change it.
    assert_eq!(mng_wr(&sim, &td, vm_ctls, 3, 3), (NOT_VALID, vm_ctls, 0));
    // Success returns the old value; the new one reads back.
    assert_eq!(
        mng_wr(&sim, &td, vm_ctls, 0, 1),
        (TdxStatus::SUCCESS, vm_ctls, 1)
    );
    assert_eq!(
        mng_rd0(&sim, &td, vm_ctls),
        (TdxStatus::SUCCESS, vm_ctls, 0)
    );
    // NOTIFY_ENABLES is a debug TD's.
    let notify = 0x9110_0003_0000_0010;
    assert_eq!(mng_wr(&sim, &td, notify, 1, 1), (nw, notify, 0));
    sim.check_invariants().unwrap();
}

#[test]
fn hp_lock_timeout_is_written_whole_and_in_range() {
    let sim = host();
    let td = td_with(&sim, 0);
    let id = raw_id(field::TD_HP_LOCK_TIMEOUT);
    assert_eq!(
        mng_wr(&sim, &td, id, 50_000, 0xFFFF),
        (WR_MASK_NOT_VALID, id, 0)
    );
    for bad in [9_999, 100_000_001] {
        assert_eq!(
            mng_wr(&sim, &td, id, bad, u64::MAX),
            (NOT_VALID, id, 0),
            "{bad}"
        );
    }
    assert_eq!(
        mng_wr(&sim, &td, id, 50_000, u64::MAX),
        (TdxStatus::SUCCESS, id, 1_000_000)
    );
    assert_eq!(mng_rd0(&sim, &td, id), (TdxStatus::SUCCESS, id, 50_000));
    sim.check_invariants().unwrap();
}

#[test]
fn a_debug_td_lets_the_host_write_notify_enables() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    td.init(&sim, &params(1));
    let notify = 0x9110_0003_0000_0010;
    assert_eq!(
        mng_wr(&sim, &td, notify, 1, 1),
        (TdxStatus::SUCCESS, notify, 0)
    );
    assert_eq!(mng_rd0(&sim, &td, notify), (TdxStatus::SUCCESS, notify, 1));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.VP.RD / TDH.VP.WR
// ---------------------------------------------------------------------------

fn vp(
    sim: &Simulator,
    lp: u32,
    lv: LeafVersion,
    tdvpr: tdx_types::Pfn,
    id: u64,
    value: u64,
    mask: u64,
) -> (TdxStatus, u64, u64) {
    on(sim, lp, || {
        md(sim, lv, tdvpr.hpa().as_u64(), id, value, mask)
    })
}

fn vp_rd0(sim: &Simulator, lp: u32, tdvpr: tdx_types::Pfn, id: u64) -> (TdxStatus, u64, u64) {
    vp(sim, lp, Leaf::VP_RD.v0(), tdvpr, id, 0x88, 0x99)
}

fn vp_rd1(sim: &Simulator, lp: u32, tdvpr: tdx_types::Pfn, id: u64) -> (TdxStatus, u64, u64) {
    vp(sim, lp, Leaf::VP_RD.v(1), tdvpr, id, 0x88, 0x99)
}

fn vp_wr(
    sim: &Simulator,
    lp: u32,
    tdvpr: tdx_types::Pfn,
    id: u64,
    value: u64,
    mask: u64,
) -> (TdxStatus, u64, u64) {
    vp(sim, lp, Leaf::VP_WR.v0(), tdvpr, id, value, mask)
}

#[test]
fn vp_rd_reads_the_vcpus_fields() {
    let sim = host();
    let td = td_with(&sim, 0);
    let v = &td.vcpus[0];
    let shift = keyid_shift(&sim);
    let pa = |p: tdx_types::Pfn| p.hpa().as_u64() | u64::from(td.hkid) << shift;
    for (id, want) in [
        (field::VP_VCPU_INDEX, 0),
        (field::VP_NUM_TDVPS_PAGES, 6),
        (field::VP_ASSOC_LPID, u64::from(VCPU_LP)),
        (field::VP_XFAM, 3),
        (field::VP_TDVPS_PAGE_PA, pa(v.tdvpr)),
        (field::VP_TDVPS_PAGE_PA.element(5).unwrap(), pa(v.tdcx[4])),
        (field::PEND_NMI, 0),
        (field::VCPU_STATE_DETAILS, 0),
    ] {
        let id = raw_id(id);
        assert_eq!(
            vp_rd0(&sim, VCPU_LP, v.tdvpr, id),
            (TdxStatus::SUCCESS, id, want),
            "{id:#x}"
        );
    }
    // VCPU_STATE is a debug TD's; a VMCS field's "high" half and an
    // encoding the TD VMCS does not have are not fields.
    let state = raw_id(field::VP_VCPU_STATE);
    assert_eq!(
        vp_rd0(&sim, VCPU_LP, v.tdvpr, state),
        (TdxStatus::METADATA_FIELD_NOT_READABLE, state, 0)
    );
    for id in [0x2017, 0x2FFE] {
        assert_eq!(
            vp_rd0(&sim, VCPU_LP, v.tdvpr, id),
            (TdxStatus::METADATA_FIELD_ID_INCORRECT, id, 0),
            "{id:#x}"
        );
    }
    // Guest RIP (0x681E): a debug TD's.
    assert_eq!(
        vp_rd1(&sim, VCPU_LP, v.tdvpr, 0x681E),
        (TdxStatus::METADATA_FIELD_NOT_READABLE, NA, 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn vp_rd_checks_pages_then_state_then_association() {
    let sim = host();
    let mut td = td_with(&sim, 0);
    let id = raw_id(field::VP_VCPU_INDEX);
    // Five TDVPS pages of six: map_tdvps fails.
    let short = td.create_vcpu(&sim, 4);
    let t = td.vcpus[short].tdvpr;
    assert_eq!(
        vp_rd0(&sim, 0, t, id),
        (TdxStatus::TDCX_NUM_INCORRECT, id, 0)
    );
    assert_eq!(
        vp_rd1(&sim, 0, t, id),
        (TdxStatus::TDCX_NUM_INCORRECT, NA, 0)
    );
    // Six pages, not initialized.
    let p = td.page(&sim);
    ok("VP.ADDCX", vp_addcx(&sim, p, t));
    assert_eq!(
        vp_rd0(&sim, 0, t, id),
        (TdxStatus::VCPU_STATE_INCORRECT, id, 0)
    );
    assert_eq!(
        vp_wr(&sim, 0, t, raw_id(field::PEND_NMI), 1, 1),
        (TdxStatus::VCPU_STATE_INCORRECT, raw_id(field::PEND_NMI), 0)
    );
    // Initialized on LP 1: another LP gets VCPU_ASSOCIATED.
    let t0 = td.vcpus[0].tdvpr;
    assert_eq!(vp_rd1(&sim, 2, t0, id), (TdxStatus::VCPU_ASSOCIATED, NA, 0));
    assert_eq!(vp_rd0(&sim, VCPU_LP, t0, id), (TdxStatus::SUCCESS, id, 0));
    // After TDH.MR.FINALIZE the op state still allows both.
    ok("VP.INIT", on(&sim, 0, || vp_init(&sim, t, 0, 1)));
    td.vcpus[short].lp = Some(0);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    assert_eq!(vp_rd0(&sim, 0, t, id), (TdxStatus::SUCCESS, id, 1));
    sim.check_invariants().unwrap();
}

#[test]
fn vp_rd_associates_the_vcpu_even_when_the_field_is_refused() {
    let sim = host();
    let mut td = td_with(&sim, 0);
    let t = td.vcpus[0].tdvpr;
    td.flush_vcpus(&sim);
    let assoc = raw_id(field::TD_NUM_ASSOC_VCPUS);
    assert_eq!(mng_rd0(&sim, &td, assoc), (TdxStatus::SUCCESS, assoc, 0));
    // A read of no field, from LP 2: refused, and the vCPU is now LP 2's.
    let bad = raw_id(field::VP_VCPU_INDEX) | 1 << 24;
    assert_eq!(
        vp_rd0(&sim, 2, t, bad),
        (TdxStatus::METADATA_FIELD_ID_INCORRECT, bad, 0)
    );
    assert_eq!(mng_rd0(&sim, &td, assoc), (TdxStatus::SUCCESS, assoc, 1));
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    assert_eq!(
        on(&sim, VCPU_LP, || vp_flush(&sim, t)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    assert_eq!(
        vp_rd0(&sim, 2, t, raw_id(field::VP_ASSOC_LPID)),
        (TdxStatus::SUCCESS, raw_id(field::VP_ASSOC_LPID), 2)
    );
    td.vcpus[0].lp = Some(2);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_rd_v1_walks_the_td_vmcs_then_the_tdvps() {
    let sim = host();
    let td = td_with(&sim, 0);
    let t = td.vcpus[0].tdvpr;
    // Null: the first readable element is the posted-interrupt vector
    // (TD VMCS), which reads as not set yet.
    assert_eq!(
        vp_rd1(&sim, VCPU_LP, t, NA),
        (
            TdxStatus::METADATA_FIRST_FIELD_ID_IN_CONTEXT,
            0x0024_0001_0000_0002,
            0
        )
    );
    assert_eq!(
        vp_rd0(&sim, VCPU_LP, t, NA),
        (TdxStatus::METADATA_FIELD_ID_INCORRECT, NA, 0)
    );
    assert_eq!(
        vp_rd1(&sim, VCPU_LP, t, 0x0024_0001_0000_0002),
        (TdxStatus::SUCCESS, 0x0024_0003_0000_2004, 0xFFFF)
    );
    // The TD VMCS's last readable field (TD HKID) leads to the TDVPS's
    // first (VCPU_STATE_DETAILS).
    assert_eq!(
        vp_rd1(&sim, VCPU_LP, t, 0x4026),
        (
            TdxStatus::SUCCESS,
            raw_id(field::VCPU_STATE_DETAILS),
            u64::from(td.hkid)
        )
    );
    assert_eq!(
        vp_rd1(&sim, VCPU_LP, t, raw_id(field::VP_VCPU_INDEX)),
        (TdxStatus::SUCCESS, raw_id(field::VP_NUM_TDVPS_PAGES), 0)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn vp_wr_follows_the_write_mask_and_the_posted_interrupt_rules() {
    let sim = host();
    let td = td_with(&sim, 0);
    let t = td.vcpus[0].tdvpr;
    let wr = |id: u64, v: u64, m: u64| vp_wr(&sim, VCPU_LP, t, id, v, m);
    let nmi = raw_id(field::PEND_NMI);
    assert_eq!(wr(nmi, 0x81, 0xFF), (TdxStatus::SUCCESS, nmi, 0));
    assert_eq!(wr(nmi, 0x100, 0x1FF), (NOT_VALID, nmi, 0));
    assert_eq!(
        wr(nmi, 0, 0x100),
        (TdxStatus::METADATA_FIELD_NOT_WRITABLE, nmi, 0)
    );
    assert_eq!(wr(nmi, 0, 1), (TdxStatus::SUCCESS, nmi, 0x81));
    assert_eq!(
        vp_rd0(&sim, VCPU_LP, t, nmi),
        (TdxStatus::SUCCESS, nmi, 0x80)
    );
    // Posted interrupts need the vector and the descriptor first.
    let (nv, pid, pin) = (0x0002, 0x2016, 0x4000);
    let e = |code: TdxStatus, o: u32| code.with_operand(OperandId(o));
    assert_eq!(
        wr(pin, 1 << 7, 1 << 7),
        (e(VMCS_NOT_INITIALIZED, 0x0002), pin, 0)
    );
    assert_eq!(wr(nv, 0x100, 0xFFFF), (NOT_VALID, nv, 0));
    assert_eq!(wr(nv, 0xF2, u64::MAX), (TdxStatus::SUCCESS, nv, 0xFFFF));
    assert_eq!(
        wr(pin, 1 << 7, 1 << 7),
        (e(VMCS_NOT_INITIALIZED, 0x2016), pin, 0)
    );
    // The descriptor: 64-byte aligned (its low bits are not writable), a
    // shared address (no private KeyID).
    let private = with_hkid(&sim, 0x1234_5000, td.hkid);
    assert_eq!(wr(pid, 0x1234_5008, u64::MAX), (NOT_VALID, pid, 0));
    assert_eq!(wr(pid, private, u64::MAX), (NOT_VALID, pid, 0));
    // The old value is what was there, NULL_PA (-1), read-masked.
    assert_eq!(
        wr(pid, 0x1234_5000, u64::MAX),
        (TdxStatus::SUCCESS, pid, u64::MAX)
    );
    assert_eq!(wr(pin, 1 << 7, 1 << 7), (TdxStatus::SUCCESS, pin, 0));
    assert_eq!(
        vp_rd0(&sim, VCPU_LP, t, pin),
        (TdxStatus::SUCCESS, pin, 0x80)
    );
    // Only bit 7 of the pin-based controls is the host's.
    assert_eq!(
        wr(pin, 1, 1),
        (TdxStatus::METADATA_FIELD_NOT_WRITABLE, pin, 0)
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Module 1.5.05: TDH.VP.INIT version 1 and its TD fields
// ---------------------------------------------------------------------------

fn host_1_5_05() -> Simulator {
    host_with(Profile::tdx_1_5_05(), |d| d)
}

fn vp_init_raw(
    sim: &Simulator,
    lp: u32,
    lv: LeafVersion,
    tdvpr: tdx_types::Pfn,
    r8: u64,
) -> TdxStatus {
    let regs = [tdvpr.hpa().as_u64(), 0, r8, 0, 0, 0];
    let (s, a) = on(sim, lp, || raw(sim, lv, regs));
    assert_eq!(
        [a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11],
        regs,
        "VP.INIT writes nothing"
    );
    s
}

#[test]
fn module_1_5_05_serves_topology_enum_and_max_vcpus_per_td() {
    let sim = host_1_5_05();
    let p = sim.profile();
    assert_eq!(p.version, (1, 5, 5));
    assert!(p.features0.topology_enum());
    let rd = |f: MdFieldId| {
        let (s, a) = raw(&sim, Leaf::SYS_RD.v0(), [0, f.into_raw(), 0, 0, 0, 0]);
        assert_eq!(s, TdxStatus::SUCCESS, "{f}");
        a.r8
    };
    assert_eq!(rd(field::MAX_VCPUS_PER_TD), 576);
    assert_eq!(rd(field::UPDATE_VERSION), 5);
    assert_eq!(rd(field::TDX_FEATURES0) >> 20 & 1, 1);
    // Module 1.5.01 reports no topology enumeration.
    assert!(!Profile::tdx_1_5().features0.topology_enum());
    assert_eq!(Profile::tdx_1_5().version, (1, 5, 1));
}

#[test]
fn vp_init_v1_takes_unique_x2apic_ids() {
    let sim = host_1_5_05();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u16(16, 8);
    td.init(&sim, &p);
    let v: Vec<_> = (0..4).map(|_| td.create_vcpu(&sim, 5)).collect();
    let t: Vec<_> = v.iter().map(|&i| td.vcpus[i].tdvpr).collect();
    let lv1 = Leaf::VP_INIT.v(1);
    let num_vcpus = raw_id(field::TD_NUM_VCPUS);
    ok("VP.INIT v1", vp_init_raw(&sim, 0, lv1, t[0], 7));
    td.vcpus[v[0]].lp = Some(0);
    // An x2APIC ID above 32 bits: refused, the index given back.
    assert_eq!(
        vp_init_raw(&sim, 1, lv1, t[1], 1 << 32),
        invalid(OperandId::R8)
    );
    assert_eq!(mng_rd0(&sim, &td, num_vcpus).2, 1);
    // A duplicate: refused with the ID as operand, and module 1.5.05 keeps
    // the index it took (NUM_VCPUS counts it).
    assert_eq!(
        vp_init_raw(&sim, 1, lv1, t[1], 7),
        X2APIC_ID_NOT_UNIQUE.with_operand(OperandId(7))
    );
    assert_eq!(mng_rd0(&sim, &td, num_vcpus).2, 2);
    // The refused vCPU stays uninitialized.
    assert_eq!(
        vp_rd0(&sim, 1, t[1], raw_id(field::VP_VCPU_INDEX)).0,
        TdxStatus::VCPU_STATE_INCORRECT
    );
    // The lost index holds x2APIC ID 0, so 0 is taken now.
    assert_eq!(
        vp_init_raw(&sim, 1, lv1, t[1], 0),
        X2APIC_ID_NOT_UNIQUE.with_operand(OperandId(0))
    );
    ok("VP.INIT v1", vp_init_raw(&sim, 1, lv1, t[1], 9));
    td.vcpus[v[1]].lp = Some(1);
    assert_eq!(
        vp_rd0(&sim, 1, t[1], raw_id(field::VP_VCPU_INDEX)).2,
        3,
        "two indexes were lost to duplicates"
    );
    // The TD's x2APIC IDs, by index, and topology enumeration configured.
    let ids = 0x9C10_0002_0000_0000u64;
    for (i, want) in [7, 0, 0, 9].into_iter().enumerate() {
        assert_eq!(
            mng_rd0(&sim, &td, ids + i as u64).2,
            want,
            "X2APIC_IDS[{i}]"
        );
    }
    let topo = 0x9110_0000_0000_0019;
    assert_eq!(mng_rd0(&sim, &td, topo), (TdxStatus::SUCCESS, topo, 1));
    // Version 2 is the leaf's to refuse, before anything and writing nothing.
    assert_eq!(
        vp_init_raw(&sim, 2, Leaf::VP_INIT.v(2), t[2], 5),
        invalid(OperandId::RAX)
    );
    // A version-0 TDH.VP.INIT unsets TOPOLOGY_ENUM_CONFIGURED.
    ok(
        "VP.INIT v0",
        vp_init_raw(&sim, 2, Leaf::VP_INIT.v0(), t[2], 5),
    );
    td.vcpus[v[2]].lp = Some(2);
    assert_eq!(mng_rd0(&sim, &td, topo), (TdxStatus::SUCCESS, topo, 0));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn module_1_5_05_td_table_has_its_own_ids() {
    let sim = host_1_5_05();
    let td = td_with(&sim, 0);
    // VM_CTLS[3] is followed by CONFIG_FLAGS, a non-architectural field in
    // 1.5.05 (0x1110... in 1.5.01).
    let vm_ctls3 = raw_id(field::TD_VM_CTLS) + 3;
    assert_eq!(
        mng_rd1(&sim, &td, vm_ctls3),
        (TdxStatus::SUCCESS, 0x9110_0003_0000_0016, 0)
    );
    // 1.5.01 has neither X2APIC_IDS nor TOPOLOGY_ENUM_CONFIGURED.
    let old = host();
    let td0 = td_with(&old, 0);
    for id in [0x9C10_0002_0000_0000, 0x9110_0000_0000_0019] {
        assert_eq!(
            mng_rd0(&old, &td0, id),
            (TdxStatus::METADATA_FIELD_ID_INCORRECT, id, 0)
        );
    }
    assert_eq!(
        mng_rd1(&old, &td0, vm_ctls3),
        (TdxStatus::SUCCESS, raw_id(field::TD_CONFIG_FLAGS), 0)
    );
}

// ---------------------------------------------------------------------------
// Module 1.5.05: its 68-entry CPUID lookup (`cpuid_lookup`,
// include/auto_gen/cpuid_configurations.c of 1.5.05)
// ---------------------------------------------------------------------------

#[test]
fn module_1_5_05_serves_its_68_cpuid_leaves() {
    let cpuid = |leaf, sub, e| raw_id(field::td_cpuid_value(leaf, sub, e).unwrap());
    let leaf_1f_0 = cpuid(0x1F, Some(0), 0);
    assert_eq!(leaf_1f_0, 0x9410_0003_0000_3E00);
    let new_leaves = [
        cpuid(0xB, Some(0), 0),
        cpuid(0xB, Some(1), 1),
        cpuid(0xB, Some(2), 0),
        cpuid(0x1A, None, 0),
    ];
    let cpuid_valid = |i: u64| 0x9110_0000_0000_0080 + i;

    // Module 1.5.05: 68 values; CPUID(0x1F) sub-leaves 0-5 read, and so do
    // 0xB/0-2 and 0x1A (the model keeps no CPUID values: 0).
    let sim = host_1_5_05();
    let td = td_with(&sim, 0);
    assert_eq!(mng_rd0(&sim, &td, raw_id(field::TD_NUM_CPUID_VALUES)).2, 68);
    for sub in 0..6 {
        let id = cpuid(0x1F, Some(sub), 1);
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::SUCCESS, id, 0),
            "0x1F/{sub}"
        );
    }
    for id in new_leaves {
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::SUCCESS, id, 0),
            "{id:#x}"
        );
    }
    let leaf_1f_6 = cpuid(0x1F, Some(6), 0);
    assert_eq!(
        mng_rd0(&sim, &td, leaf_1f_6),
        (TdxStatus::METADATA_FIELD_ID_INCORRECT, leaf_1f_6, 0)
    );
    // The walk: after leaf 5 (index 63) come 0xB/0..2 and 0x1A, then the
    // migration fields.
    let leaf5 = cpuid(5, None, 1);
    assert_eq!(
        mng_rd1(&sim, &td, leaf5),
        (TdxStatus::SUCCESS, cpuid(0xB, Some(0), 0), 0)
    );
    assert_eq!(
        mng_rd1(&sim, &td, cpuid(0x1A, None, 1)),
        (TdxStatus::SUCCESS, 0x9810_0000_0000_0001, 0)
    );
    // CPUID_VALID (a debug TD's): 0x1F/0 (46) and 0x1A (67) valid.
    let mut dbg = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::TdcsAdded);
    dbg.init(&sim, &params(1));
    for i in [46, 67] {
        assert_eq!(mng_rd0(&sim, &dbg, cpuid_valid(i)).2, 1, "CPUID_VALID[{i}]");
    }
    sim.check_invariants().unwrap();

    // Module 1.5.01: 64 values; 0x1F faults, the new leaves are not fields.
    let sim = host();
    let td = td_with(&sim, 0);
    assert_eq!(mng_rd0(&sim, &td, raw_id(field::TD_NUM_CPUID_VALUES)).2, 64);
    assert_eq!(
        mng_rd0(&sim, &td, leaf_1f_0),
        (TdxStatus::METADATA_FIELD_NOT_READABLE, leaf_1f_0, 0)
    );
    for id in new_leaves {
        assert_eq!(
            mng_rd0(&sim, &td, id),
            (TdxStatus::METADATA_FIELD_ID_INCORRECT, id, 0),
            "{id:#x}"
        );
    }
    let mut dbg = Td::build_with(&sim, td_hkid(&sim) + 1, Stage::TdcsAdded);
    dbg.init(&sim, &params(1));
    for i in [46, 67] {
        assert_eq!(mng_rd0(&sim, &dbg, cpuid_valid(i)).2, 0, "CPUID_VALID[{i}]");
    }
    sim.check_invariants().unwrap();
}
