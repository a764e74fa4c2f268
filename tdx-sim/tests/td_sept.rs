//! Raw-leaf tests of the Secure-EPT and private-memory leaves against the
//! simulator: TDH.MEM.SEPT.ADD (v0 and v1), SEPT.REMOVE, SEPT.RD,
//! PAGE.ADD, PAGE.AUG (4K and 2M), RANGE.BLOCK, TRACK, RANGE.UNBLOCK,
//! PAGE.REMOVE, PAGE.DEMOTE and PAGE.PROMOTE
//! (`src/vmm_dispatcher/api_calls/tdh_mem_*.c` in Intel's module): every
//! error path at least once, in the module's order, with the exact status,
//! operand, and the S-EPT details in RCX/RDX where the module returns them
//! (RDX = level | state << 8 of the entry where the walk stopped; RCX = the
//! architectural entry of `set_arch_septe_details_in_vmm_regs` in
//! `src/common/memory_handlers/sept_manager.c`: bit 63 alone for FREE,
//! frame | 0x80000000000000F7 for MAPPED, frame | 0x80000000000000F0 for
//! the other leaves, 0x7 / 0x0 for NL_MAPPED / NL_BLOCKED, never the S-EPT
//! page below a non-leaf entry). The versioned leaves (SEPT.ADD,
//! SEPT.REMOVE, PROMOTE) are checked on every output register, R8..R11
//! included, on every path.

mod td_support;

use td_support::*;
use tdx_sim::PageState;
use tdx_sys::SeamcallArgs;
use tdx_types::{
    Leaf, OperandId, Pfn, TdxStatus,
    metadata::PamtPageType,
    regs::{SeptState, TdrAndFlags},
};

const RCX: OperandId = OperandId::RCX;
const RDX: OperandId = OperandId::RDX;
const R8: OperandId = OperandId::R8;
const R9: OperandId = OperandId::R9;

fn flags(td: &Td, allow_existing: bool) -> TdrAndFlags {
    TdrAndFlags::with_tdr(td.tdr, allow_existing)
}

fn tdr(td: &Td) -> u64 {
    td.tdr.hpa().as_u64()
}

fn pa(p: Pfn) -> u64 {
    p.hpa().as_u64()
}

/// "No page" in a page operand (NULL_PA).
const NONE: u64 = u64::MAX;

/// One raw call whose outputs must be RCX = RDX = 0 (cleared when the
/// leaf starts, no details written) and R8..R11 as given; returns the
/// status.
#[track_caller]
fn zraw(sim: &tdx_sim::Simulator, lv: tdx_types::LeafVersion, regs: [u64; 6]) -> TdxStatus {
    let (s, out) = raw(sim, lv, regs);
    assert_eq!(
        out6(&out),
        [0, 0, regs[2], regs[3], regs[4], regs[5]],
        "{lv:?} {s}: RCX/RDX cleared, R8..R11 as given"
    );
    s
}

/// RCX, RDX and R8..R11 after a call, to compare whole.
fn out6(a: &SeamcallArgs) -> [u64; 6] {
    [a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11]
}

/// The S-EPT page a non-leaf entry points to: the one the test added
/// there (SEPT.RD does not show it: a non-leaf entry's RCX is its RWX bits
/// only).
fn child(sim: &tdx_sim::Simulator, td: &Td, gpa: u64, level: u8) -> Pfn {
    let (st, frame) = sept_state(sim, td.tdr, gpa, level);
    assert_eq!(st, SeptState::NL_MAPPED, "entry {gpa:#x}/{level}");
    assert_eq!(frame, None, "no frame for a non-leaf entry");
    td.sept_page(gpa, level)
}

// ---------------------------------------------------------------------------
// TDH.MEM.SEPT.ADD
// ---------------------------------------------------------------------------

#[test]
fn sept_add_builds_the_tree_one_level_at_a_time() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let owner = tdr(&td);
    for level in [3u8, 2, 1] {
        let p = td.page(&sim);
        let c = sept_add(&sim, info(0, level), flags(&td, false), p);
        ok("SEPT.ADD", c.status);
        assert_eq!((c.out.rcx, c.out.rdx), (0, 0), "RCX/RDX cleared");
        assert_eq!(rdmd(&sim, p), (PamtPageType::EPT, owner, 0, 0));
        assert_eq!(
            sept_state(&sim, td.tdr, 0, level),
            (SeptState::NL_MAPPED, None)
        );
        assert_eq!(sim.page_state(p), Some(PageState::Module));
    }
    // The level-0 entry below is now reachable (and FREE).
    assert_eq!(sept_state(&sim, td.tdr, 0, 0), (SeptState::FREE, None));
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_with_five_level_ept_starts_at_level_4() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(24, 0x26);
    td.init(&sim, &p);
    assert_eq!(td.pwl, 4);
    td.map_sept(&sim, 0, 1); // levels 4, 3, 2, 1
    td.add_vcpu(&sim, 0);
    td.add_page(&sim, 0x3000, &[9; 4096]);
    // A 4-level TD has no level 4.
    let mut four = Td::build_with(&sim, td.hkid + 1, Stage::Initialized);
    let q = four.page(&sim);
    let c = sept_add(&sim, info(0, 4), flags(&four, false), q);
    assert_eq!(c.status, invalid(RCX));
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_rdx_and_version_checks_come_first() {
    let sim = host();
    let td = Td::build(&sim, Stage::Initialized);
    let p = page(&sim).hpa().as_u64();
    let t = tdr(&td);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    // Reserved bits 11:1 and 63:52 of RDX, even with a bad page_info.
    for rdx in [t | 0x2, t | 0x800, t | 1 << 52, t | 1 << 63] {
        assert_eq!(
            zraw(&sim, lv, [pinfo(0, 3), rdx, p, 0, 0, 0]),
            invalid(RDX),
            "{rdx:#x}"
        );
        assert_eq!(
            zraw(&sim, lv, [pinfo(0, 0) | 8, rdx, p, 0, 0, 0]),
            invalid(RDX)
        );
    }
    // TDR_S(RDX bits 51:12).
    assert_eq!(zraw(&sim, lv, [pinfo(0, 3), p, p, 0, 0, 0]), metadata(RDX));
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 3), OUTSIDE_TDMR, p, 0, 0, 0]),
        range_error(RDX)
    );
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 3), with_hkid(&sim, t, 1), p, 0, 0, 0]),
        invalid(RDX)
    );
    // Version 2: refused before any other check, after RCX/RDX were
    // cleared; R8..R11 untouched (tdh_mem_sept_add.c: the version check
    // skips the exit that writes them).
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_ADD.v(2),
        [pinfo(0, 3), t, p, 9, 10, 11],
    );
    assert_eq!(s, invalid(OperandId::RAX));
    assert_eq!(out6(&out), [0, 0, p, 9, 10, 11]);
    // RDX bit 0 (allow_existing) is not reserved.
    ok("SEPT.ADD", zraw(&sim, lv, [pinfo(0, 3), t | 1, p, 0, 0, 0]));
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_tdcs_checks() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let created = Td::build_with(&sim, hkid, Stage::Created);
    let keys = Td::build_with(&sim, hkid + 1, Stage::KeysConfigured);
    let uninit = Td::build_with(&sim, hkid + 2, Stage::TdcsAdded);
    let mut runnable = Td::build_with(&sim, hkid + 3, Stage::Runnable);
    let p = page(&sim);
    for (td, want) in [
        (&created, TdxStatus::TD_KEYS_NOT_CONFIGURED),
        (&keys, TdxStatus::TDCS_NOT_ALLOCATED),
        (&uninit, TdxStatus::OP_STATE_INCORRECT),
    ] {
        assert_eq!(sept_add(&sim, info(0, 3), flags(td, false), p).status, want);
    }
    // RUNNABLE allows SEPT.ADD.
    runnable.map_sept(&sim, 0, 1);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_page_info_and_gpa_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::Initialized);
    let p = page(&sim).hpa().as_u64();
    let t = tdr(&td);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    for (rcx, what) in [
        (pinfo(0, 0), "level 0 (SEPT.ADD needs 1..=pwl)"),
        (pinfo(0, 4), "level 4 with 4-level EPT"),
        (pinfo(0, 7), "level 7"),
        (pinfo(0, 3) | 1 << 3, "reserved bit 3"),
        (pinfo(0, 3) | 1 << 11, "reserved bit 11"),
        (pinfo(0, 3) | 1 << 52, "reserved bit 52"),
        (pinfo(0x1000, 1), "GPA not 2 MiB aligned at level 1"),
        (pinfo(0x20_0000, 2), "GPA not 1 GiB aligned at level 2"),
        (pinfo(1 << 47, 3), "shared GPA (bit 47, GPAW 0)"),
        (pinfo(1 << 48, 3), "GPA bit 48 with GPAW 0"),
    ] {
        assert_eq!(zraw(&sim, lv, [rcx, t, p, 0, 0, 0]), invalid(RCX), "{what}");
    }
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_with_gpaw_the_shared_bit_is_51() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut params = Params::new();
    params.u64(24, 0x26).u64(32, 1);
    td.init(&sim, &params);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let p = td.page(&sim).hpa().as_u64();
    assert_eq!(
        zraw(&sim, lv, [pinfo(1 << 51, 4), tdr(&td), p, 0, 0, 0]),
        invalid(RCX)
    );
    // Bit 47 is an ordinary private GPA bit with GPAW 1; bit 48 too.
    td.map_sept(&sim, 1 << 47 | 1 << 48, 1);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_walk_failed_reports_where_the_walk_stopped() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.page(&sim);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let t = tdr(&td);
    let pa = p.hpa().as_u64();
    // Nothing below the root: the walk stops at the FREE level-3 entry.
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, pa, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 3, SeptState::FREE, None);
    // A PDPT page but no PD: stops at level 2.
    td.map_sept(&sim, 0, 3);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, pa, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    // A blocked non-leaf stops the walk (RWX = 0).
    td.map_sept(&sim, 0, 2);
    child(&sim, &td, 0, 2);
    ok("BLOCK", range_block(&sim, info(0, 2), td.tdr).status);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, pa, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::NL_BLOCKED, None);
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA, "R8 was not used");
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_on_an_existing_entry() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    child(&sim, &td, 0, 1);
    let p = td.page(&sim);
    // Without allow_existing: STATE_INCORRECT with the entry's details
    // (a non-leaf entry shows RWX only: 0x7, no frame).
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), tdr(&td), pa(p), 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(out6(&out), [0x7, 0x8401, pa(p), 9, 10, 11]);
    // With it: success, R8 unused, nothing written but RCX/RDX (v0).
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), tdr(&td) | 1, pa(p), 9, 10, 11]);
    ok("SEPT.ADD allow_existing", s);
    assert_eq!(out6(&out), [0, 0, pa(p), 9, 10, 11]);
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
    assert_eq!(sim.page_state(p), Some(PageState::Host));
    // R8 = -1 in v0 is an operand error even where the entry exists and
    // allow_existing is set: process_l1_page (tdh_mem_sept_add.c) refuses
    // it before it looks at the entry's state.
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), tdr(&td) | 1, NONE, 9, 10, 11]);
    assert_eq!(s, invalid(R8));
    assert_eq!(out6(&out), [0, 0, NONE, 9, 10, 11]);
    // A blocked entry is not NL_MAPPED: refused even with allow_existing,
    // and (the state check comes first) even with R8 = -1 in v0.
    ok("BLOCK", range_block(&sim, info(0, 1), td.tdr).status);
    let c = sept_add(&sim, info(0, 1), flags(&td, true), p);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 1, SeptState::NL_BLOCKED, None);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), tdr(&td) | 1, NONE, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!((out.rcx, out.rdx), (0, 0x8101));
    // A leaf (a 2 MiB page) at the target level.
    let big = td.aug(&sim, 2 * MIB, 1);
    let c = sept_add(&sim, info(2 * MIB, 1), flags(&td, true), p);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 1, SeptState::PENDING, Some(big));
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_new_page_checks() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let t = tdr(&td);
    let p = td.page(&sim).hpa().as_u64();
    // v0 with R8 = -1 for a FREE entry.
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 3), t, u64::MAX, 0, 0, 0]),
        invalid(R8)
    );
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 3), t | 1, u64::MAX, 0, 0, 0]),
        invalid(R8)
    );
    // EXPL(R8, PT_NDA).
    for (r8, want) in [
        (p + 0x200, invalid(R8)),
        (with_hkid(&sim, p, td.hkid), invalid(R8)),
        (OUTSIDE_TDMR, range_error(R8)),
        (0x1000, range_error(R8)),
        // The TDR itself: this leaf holds its PAMT entry already (RDX), so
        // the exclusive walk of R8 finds it locked, as in the module.
        (t, busy(R8)),
        (td.tdcs[3].hpa().as_u64(), metadata(R8)),
        (pamt_page().hpa().as_u64(), metadata(R8)),
    ] {
        assert_eq!(
            zraw(&sim, lv, [pinfo(0, 3), t, r8, 0, 0, 0]),
            want,
            "R8 {r8:#x}"
        );
    }
    // Bit 63 of R8 is cleared on input (a flagged output passed back).
    ok(
        "SEPT.ADD with R8 bit 63",
        zraw(&sim, lv, [pinfo(0, 3), t, p | 1 << 63, 0, 0, 0]),
    );
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::EPT);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_v1_adds_the_l1_page_and_accepts_r8_minus_one_for_an_existing_entry() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let lv = Leaf::MEM_SEPT_ADD.v(1);
    let p = td.page(&sim).hpa().as_u64();
    // The page taken comes back as -1 (the add "nullifies" it,
    // tdh_mem_sept_add.c); "none" stays -1; RCX/RDX cleared.
    let (s, out) = raw(&sim, lv, [pinfo(0, 3), tdr(&td), p, NONE, NONE, NONE]);
    ok("SEPT.ADD v1", s);
    assert_eq!(out6(&out), [0, 0, NONE, NONE, NONE, NONE]);
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::EPT);
    // Bit 63 of an input page is ignored: taken, -1.
    let q = td.page(&sim).hpa().as_u64();
    let (s, out) = raw(
        &sim,
        lv,
        [pinfo(0, 2), tdr(&td), q | 1 << 63, NONE, NONE, NONE],
    );
    ok("SEPT.ADD v1 with bit 63", s);
    assert_eq!(out6(&out), [0, 0, NONE, NONE, NONE, NONE]);
    assert_eq!(rdmd(&sim, Pfn::new(q / PAGE)).0, PamtPageType::EPT);
    // No L1 page where the entry is NL_MAPPED: fine in v1, with or
    // without allow_existing.
    for rdx in [tdr(&td), tdr(&td) | 1] {
        let (s, out) = raw(&sim, lv, [pinfo(0, 3), rdx, NONE, NONE, NONE, NONE]);
        ok("SEPT.ADD v1 R8 = -1 on NL_MAPPED", s);
        assert_eq!(out6(&out), [0, 0, NONE, NONE, NONE, NONE]);
    }
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_v1_r8_minus_one_needs_an_existing_entry() {
    let sim = host();
    let td = Td::build(&sim, Stage::Initialized);
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_ADD.v(1),
        [pinfo(0, 3), tdr(&td), NONE, NONE, NONE, NONE],
    );
    // process_l1_page: no page and the entry is not NL_MAPPED: the FREE
    // entry's details.
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(out6(&out), [1 << 63, 0x3, NONE, NONE, NONE, NONE]);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_add_v1_flags_an_unused_page_in_r8() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 3);
    let p = td.page(&sim).hpa().as_u64();
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_ADD.v(1),
        [pinfo(0, 3), tdr(&td) | 1, p, NONE, NONE, NONE],
    );
    ok("SEPT.ADD v1 allow_existing", s);
    // Bit 63 only here: "not used, the entry already existed".
    assert_eq!(out6(&out), [0, 0, p | 1 << 63, NONE, NONE, NONE]);
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

/// Every error of version 1 writes R8..R11 back with bit 63 cleared (the
/// module flags a page only when allow_existing made it unneeded, and
/// nullifies one it took): a caller tells an unused page from a taken one
/// by -1, not by bit 63 (tdh_mem_sept_add.c, its EXIT).
#[test]
fn sept_add_v1_errors_return_the_pages_with_bit_63_clear() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 2);
    let lv = Leaf::MEM_SEPT_ADD.v(1);
    let t = tdr(&td);
    let p = td.page(&sim).hpa().as_u64();
    let l2 = td.page(&sim).hpa().as_u64();
    let b = 1u64 << 63;
    let (r8, r9) = (p | b, l2 | b);
    let big = td.aug(&sim, 4 * MIB, 1);
    for (what, rcx, rdx, r8, want, rcx_rdx) in [
        (
            "RDX reserved bit",
            pinfo(0, 1),
            t | 2,
            r8,
            invalid(RDX),
            (0, 0),
        ),
        ("not a TDR", pinfo(0, 1), p, r8, metadata(RDX), (0, 0)),
        ("page info", pinfo(0, 0), t, r8, invalid(RCX), (0, 0)),
        (
            "walk",
            pinfo(GIB, 1),
            t,
            r8,
            e(TdxStatus::EPT_WALK_FAILED, RCX),
            (1 << 63, 0x2),
        ),
        (
            "a leaf there",
            pinfo(4 * MIB, 1),
            t,
            r8,
            e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
            (pa(big) | 0x8000_0000_0000_00F0, 0x201),
        ),
        (
            "existing, no allow_existing",
            pinfo(0, 2),
            t,
            r8,
            e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
            (0x7, 0x8402),
        ),
        ("R8 not NDA", pinfo(0, 1), t, t | b, busy(R8), (0, 0)),
        // The L1 page passed every check, then an L2 page for an L2 VM the
        // TD does not have.
        ("R9 without L2 VMs", pinfo(0, 1), t, r8, invalid(R9), (0, 0)),
    ] {
        let (s, out) = raw(&sim, lv, [rcx, rdx, r8, r9, NONE, NONE]);
        assert_eq!(s, want, "{what}");
        assert_eq!(
            out6(&out),
            [rcx_rdx.0, rcx_rdx.1, r8 & !b, l2, NONE, NONE],
            "{what}"
        );
    }
    assert_eq!(rdmd(&sim, Pfn::new(p / PAGE)).0, PamtPageType::NDA);
    assert_eq!(sept_state(&sim, td.tdr, 0, 1), (SeptState::FREE, None));
    sim.check_invariants().unwrap();
}

/// Version 1 on an entry that is already NL_MAPPED still goes on to the L2
/// pages (process_l2_pages in tdh_mem_sept_add.c): without L2 VMs, the
/// first L2 page given is refused on its register, and R8 comes back
/// flagged (allow_existing) or -1 (none given).
#[test]
fn sept_add_v1_on_an_existing_entry_still_checks_the_l2_pages() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let lv = Leaf::MEM_SEPT_ADD.v(1);
    let t = tdr(&td);
    let p = td.page(&sim).hpa().as_u64();
    let l2 = td.page(&sim).hpa().as_u64();
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t | 1, p, l2, NONE, NONE]);
    assert_eq!(s, invalid(R9));
    assert_eq!(out6(&out), [0, 0, p | 1 << 63, l2, NONE, NONE]);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, NONE, NONE, l2 | 1 << 63, NONE]);
    assert_eq!(s, invalid(OperandId::R10));
    assert_eq!(out6(&out), [0, 0, NONE, NONE, l2, NONE]);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, NONE, NONE, NONE, l2]);
    assert_eq!(s, invalid(OperandId::R11));
    assert_eq!(out6(&out), [0, 0, NONE, NONE, NONE, l2]);
    for q in [p, l2] {
        assert_eq!(rdmd(&sim, Pfn::new(q / PAGE)).0, PamtPageType::NDA);
    }
    sim.check_invariants().unwrap();
}

/// Version 0 reads only R8 and writes none of R8..R11, whatever happens.
#[test]
fn sept_add_v0_leaves_r8_to_r11_as_given() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let lv = Leaf::MEM_SEPT_ADD.v0();
    let p = td.page(&sim).hpa().as_u64();
    let (s, out) = raw(&sim, lv, [pinfo(0, 3), tdr(&td), p, 9, 10, 11]);
    ok("SEPT.ADD v0", s);
    assert_eq!(out6(&out), [0, 0, p, 9, 10, 11]);
    let (s, out) = raw(&sim, lv, [pinfo(0, 3), tdr(&td), p, 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(out6(&out), [0x7, 0x8403, p, 9, 10, 11]);
    let (s, out) = raw(&sim, lv, [pinfo(0, 0), tdr(&td), p, 9, 10, 11]);
    assert_eq!(s, invalid(RCX));
    assert_eq!(out6(&out), [0, 0, p, 9, 10, 11]);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.SEPT.REMOVE
// ---------------------------------------------------------------------------

#[test]
fn sept_remove_in_initialized_takes_an_empty_page_back() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let pt = child(&sim, &td, 0, 1);
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_REMOVE.v0(),
        [pinfo(0, 1), tdr(&td), 8, 9, 10, 11],
    );
    ok("SEPT.REMOVE", s);
    // RCX: the removed page; RDX 0; R8..R11 as given (version 0).
    assert_eq!(out6(&out), [pa(pt), 0, 8, 9, 10, 11]);
    td.forget_sept(0, 1);
    assert_eq!(rdmd(&sim, pt).0, PamtPageType::NDA);
    assert_eq!(sim.page_state(pt), Some(PageState::Host));
    assert_eq!(sept_state(&sim, td.tdr, 0, 1), (SeptState::FREE, None));
    // A removed S-EPT page cannot be reclaimed (it is NDA).
    assert_eq!(page_reclaim(&sim, pt).status, metadata(RCX));
    // It can be added again.
    td.map_sept(&sim, 0, 1);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_remove_needs_an_empty_child_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.add_page(&sim, 0, &[1; 4096]);
    // EPT_PAGE_NOT_FREE with the details of the entry being removed (the
    // parent, NL_MAPPED: RCX 0x7), not of the entry below that is in use
    // (tdh_mem_sept_remove.c).
    for level in [1u8, 2, 3] {
        let (s, out) = raw(
            &sim,
            Leaf::MEM_SEPT_REMOVE.v0(),
            [pinfo(0, level), tdr(&td), 8, 9, 10, 11],
        );
        assert_eq!(s, e(TdxStatus::EPT_PAGE_NOT_FREE, RCX), "level {level}");
        assert_eq!(
            out6(&out),
            [0x7, 0x8400 | u64::from(level), 8, 9, 10, 11],
            "level {level}"
        );
    }
    // Empty it (direct removal before finalize), then unwind the tree.
    ok("PAGE.REMOVE", page_remove(&sim, info(0, 0), td.tdr).status);
    for level in [1u8, 2, 3] {
        ok(
            "SEPT.REMOVE",
            sept_remove(&sim, info(0, level), td.tdr).status,
        );
        td.forget_sept(0, level);
    }
    sim.check_invariants().unwrap();
}

/// Every check of SEPT.REMOVE in the module's order, each in version 0
/// (R8..R11 as given) and version 1 (R9..R11 = -1 on every path, written
/// when the leaf starts: tdh_mem_sept_remove.c); RCX/RDX cleared, or the
/// S-EPT details.
#[test]
fn sept_remove_checks() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let pt = td.sept_page(0, 1);
    let big = td.aug(&sim, 2 * MIB, 1);
    let t = tdr(&td);
    let p = page(&sim).hpa().as_u64();
    let uninit = Td::build_with(&sim, td.hkid + 1, Stage::TdcsAdded);
    let big_rcx = pa(big) | 0x8000_0000_0000_00F0;
    let cases: &[(&str, u64, u64, TdxStatus, [u64; 2])] = &[
        ("TDR_S(RDX)", pinfo(0, 1), p, metadata(RDX), [0, 0]),
        (
            "op state",
            pinfo(0, 1),
            tdr(&uninit),
            TdxStatus::OP_STATE_INCORRECT,
            [0, 0],
        ),
        ("PINFO level 0", pinfo(0, 0), t, invalid(RCX), [0, 0]),
        ("PINFO level 4", pinfo(0, 4), t, invalid(RCX), [0, 0]),
        ("PINFO alignment", pinfo(0x1000, 1), t, invalid(RCX), [0, 0]),
        (
            "PINFO reserved",
            pinfo(0, 1) | 0x10,
            t,
            invalid(RCX),
            [0, 0],
        ),
        (
            "walk",
            pinfo(GIB, 1),
            t,
            e(TdxStatus::EPT_WALK_FAILED, RCX),
            [1 << 63, 0x2],
        ),
        (
            "FREE",
            pinfo(4 * MIB, 1),
            t,
            e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
            [1 << 63, 0x1],
        ),
        (
            "a leaf",
            pinfo(2 * MIB, 1),
            t,
            e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
            [big_rcx, 0x201],
        ),
        (
            "not empty",
            pinfo(0, 2),
            t,
            e(TdxStatus::EPT_PAGE_NOT_FREE, RCX),
            [0x7, 0x8402],
        ),
    ];
    for &(what, rcx, rdx, want, [out_rcx, out_rdx]) in cases {
        let (s, out) = raw(&sim, Leaf::MEM_SEPT_REMOVE.v0(), [rcx, rdx, 8, 9, 10, 11]);
        assert_eq!(s, want, "v0 {what}");
        assert_eq!(out6(&out), [out_rcx, out_rdx, 8, 9, 10, 11], "v0 {what}");
        let (s, out) = raw(&sim, Leaf::MEM_SEPT_REMOVE.v(1), [rcx, rdx, 8, 9, 10, 11]);
        assert_eq!(s, want, "v1 {what}");
        assert_eq!(
            out6(&out),
            [out_rcx, out_rdx, 8, NONE, NONE, NONE],
            "v1 {what}"
        );
    }
    // Version 2: refused by the leaf after the same register writes.
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_REMOVE.v(2),
        [pinfo(0, 1), t, 8, 9, 10, 11],
    );
    assert_eq!(s, invalid(OperandId::RAX));
    assert_eq!(out6(&out), [0, 0, 8, NONE, NONE, NONE]);
    // Version 1 removes like version 0: RCX the page, RDX 0, R9..R11 -1
    // (no L2 VM has an alias of it).
    let (s, out) = raw(
        &sim,
        Leaf::MEM_SEPT_REMOVE.v(1),
        [pinfo(0, 1), t, 8, 9, 10, 11],
    );
    ok("SEPT.REMOVE v1", s);
    assert_eq!(out6(&out), [pa(pt), 0, 8, NONE, NONE, NONE]);
    td.forget_sept(0, 1);
    sim.check_invariants().unwrap();
}

#[test]
fn sept_remove_when_runnable_needs_block_and_track() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, 0, 1);
    td.map_sept(&sim, 2 * MIB, 1);
    td.aug(&sim, 0, 0);
    let pt = child(&sim, &td, 2 * MIB, 1);
    // Not blocked: the details of the NL_MAPPED entry.
    let c = sept_remove(&sim, info(2 * MIB, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_details(c.out, 1, SeptState::NL_MAPPED, None);
    assert_eq!((c.out.rcx, c.out.rdx), (0x7, 0x8401));
    // The TLB rule comes before the emptiness check.
    let c = sept_remove(&sim, info(0, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_eq!((c.out.rcx, c.out.rdx), (0x7, 0x8401));
    // Blocked, not tracked: no details.
    ok("BLOCK", range_block(&sim, info(2 * MIB, 1), td.tdr).status);
    assert_eq!(
        rdmd(&sim, pt).3,
        1,
        "bepoch stamped on the child S-EPT page"
    );
    let c = sept_remove(&sim, info(2 * MIB, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    ok("TRACK", track(&sim, td.tdr));
    let c = sept_remove(&sim, info(2 * MIB, 1), td.tdr);
    ok("SEPT.REMOVE", c.status);
    assert_eq!(c.out.removed(), Some(pt));
    td.forget_sept(2 * MIB, 1);
    // Blocked and tracked but not empty: the blocked parent's details
    // (NL_BLOCKED shows RCX 0).
    ok("BLOCK", range_block(&sim, info(0, 1), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let c = sept_remove(&sim, info(0, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_PAGE_NOT_FREE, RCX));
    assert_details(c.out, 1, SeptState::NL_BLOCKED, None);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0x8101));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.SEPT.RD
// ---------------------------------------------------------------------------

/// SEPT.RD of every state the simulator has, at 4K and 2M: RCX the
/// architectural entry (`set_arch_septe_details_in_vmm_regs`, Intel's
/// `sept_manager.c`), RDX level | state << 8, R8..R11 untouched.
#[test]
fn sept_rd_reports_each_state() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let added = td.add_page(&sim, 0, &[1; 4096]);
    let pending = td.aug(&sim, 0x1000, 0);
    let blocked = td.add_page(&sim, 0x2000, &[2; 4096]);
    ok("BLOCK", range_block(&sim, info(0x2000, 0), td.tdr).status);
    let pending_blocked = td.aug(&sim, 0x3000, 0);
    ok("BLOCK", range_block(&sim, info(0x3000, 0), td.tdr).status);
    let big = td.aug(&sim, 2 * MIB, 1);
    let mapped_big = td.aug(&sim, 4 * MIB, 1);
    ok("accept", sim.guest_accept(td.tdr, 4 * MIB, 1));
    td.map_sept(&sim, 6 * MIB, 1);
    ok("BLOCK", range_block(&sim, info(6 * MIB, 1), td.tdr).status);
    let lv = Leaf::MEM_SEPT_RD.v0();
    let leaf = 0x8000_0000_0000_00F0u64;
    for (gpa, level, rcx, rdx) in [
        (0, 1, 0x7, 0x8401),
        (0, 2, 0x7, 0x8402),
        (0, 3, 0x7, 0x8403),
        (0, 0, pa(added) | leaf | 7, 0x400),
        (0x1000, 0, pa(pending) | leaf, 0x200),
        (0x2000, 0, pa(blocked) | leaf, 0x100),
        (0x3000, 0, pa(pending_blocked) | leaf, 0x300),
        (0x4000, 0, 1 << 63, 0),
        (2 * MIB, 1, pa(big) | leaf, 0x201),
        (4 * MIB, 1, pa(mapped_big) | leaf | 7, 0x401),
        (6 * MIB, 1, 0, 0x8101),
        (8 * MIB, 1, 1 << 63, 0x1),
    ] {
        let (s, out) = raw(&sim, lv, [pinfo(gpa, level), tdr(&td), 8, 9, 10, 11]);
        ok("SEPT.RD", s);
        assert_eq!(out6(&out), [rcx, rdx, 8, 9, 10, 11], "{gpa:#x}/{level}");
    }
    // The walk stops where the tree ends, or at a leaf or a blocked
    // non-leaf above the level asked for: the details of that entry.
    for (gpa, level, rcx, rdx) in [
        (GIB, 0, 1 << 63, 0x2),
        (2 * MIB + PAGE, 0, pa(big) | leaf, 0x201),
        (6 * MIB, 0, 0, 0x8101),
    ] {
        let (s, out) = raw(&sim, lv, [pinfo(gpa, level), tdr(&td), 8, 9, 10, 11]);
        assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX), "{gpa:#x}/{level}");
        assert_eq!(out6(&out), [rcx, rdx, 8, 9, 10, 11], "{gpa:#x}/{level}");
    }
    let (s, out) = raw(&sim, lv, [pinfo(0, 0) | 8, tdr(&td), 8, 9, 10, 11]);
    assert_eq!(s, invalid(RCX));
    assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    sim.check_invariants().unwrap();
}

/// RDX bit 0 of SEPT.RD asks for the L2 attributes and is not part of the
/// TDR's address (tdh_mem_sept_rd.c): the TDR and TDCS checks run on
/// RDX & ~1, then a TD that is not DEBUG refuses the flag with
/// OPERAND_INVALID|RDX; a DEBUG TD reads the entry and R8 = its L2
/// attributes (0: no L2 VM has an alias).
#[test]
fn sept_rd_rdx_bit_0_reads_l2_attributes_of_a_debug_td_only() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.aug(&sim, 0x1000, 0);
    let lv = Leaf::MEM_SEPT_RD.v0();
    let t = tdr(&td);
    let q = page(&sim).hpa().as_u64();
    let uninit = Td::build_with(&sim, td.hkid + 1, Stage::TdcsAdded);
    // The TDR check, then the TDCS check, come first.
    let (s, out) = raw(&sim, lv, [pinfo(0x1000, 0), q | 1, 8, 9, 10, 11]);
    assert_eq!(s, metadata(RDX));
    assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    let (s, out) = raw(&sim, lv, [pinfo(0x1000, 0), tdr(&uninit) | 1, 8, 9, 10, 11]);
    assert_eq!(s, TdxStatus::OP_STATE_INCORRECT);
    assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    // Not a DEBUG TD: refused, before the page info is looked at.
    for rcx in [pinfo(0x1000, 0), pinfo(0x1000, 0) | 8] {
        let (s, out) = raw(&sim, lv, [rcx, t | 1, 8, 9, 10, 11]);
        assert_eq!(s, invalid(RDX));
        assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    }
    // Other low bits are still the TDR's alignment.
    let (s, _) = raw(&sim, lv, [pinfo(0x1000, 0), t | 2, 8, 9, 10, 11]);
    assert_eq!(s, invalid(RDX));
    // A DEBUG TD.
    let mut dbg = Td::build_with(&sim, td.hkid + 2, Stage::TdcsAdded);
    let mut params = Params::new();
    params.u64(0, 1);
    dbg.init(&sim, &params);
    let d = dbg.aug(&sim, 0x1000, 0);
    let (s, out) = raw(&sim, lv, [pinfo(0x1000, 0), tdr(&dbg) | 1, 8, 9, 10, 11]);
    ok("SEPT.RD L2 attributes", s);
    assert_eq!(
        out6(&out),
        [pa(d) | 0x8000_0000_0000_00F0, 0x200, 0, 9, 10, 11]
    );
    // Without the flag, R8 is left alone.
    let (s, out) = raw(&sim, lv, [pinfo(0x1000, 0), tdr(&dbg), 8, 9, 10, 11]);
    ok("SEPT.RD", s);
    assert_eq!(
        out6(&out),
        [pa(d) | 0x8000_0000_0000_00F0, 0x200, 8, 9, 10, 11]
    );
    // A walk failure with the flag on a DEBUG TD: details, R8 untouched.
    let (s, out) = raw(&sim, lv, [pinfo(GIB, 0), tdr(&dbg) | 1, 8, 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_eq!(out6(&out), [1 << 63, 0x2, 8, 9, 10, 11]);
    assert_eq!(sept_state(&sim, td.tdr, 0x1000, 0).1, Some(pa(p)));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.PAGE.ADD
// ---------------------------------------------------------------------------

#[test]
fn page_add_copies_the_source_and_maps_it() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    let target = td.add_page(&sim, 0x5000, &data);
    let mut back = vec![0; 4096];
    sim.peek(target.hpa().as_u64(), &mut back);
    assert_eq!(back, data);
    assert_eq!(rdmd(&sim, target), (PamtPageType::REG, tdr(&td), 0, 0));
    assert_eq!(
        sept_state(&sim, td.tdr, 0x5000, 0),
        (SeptState::MAPPED, Some(target.hpa().as_u64()))
    );
    sim.check_invariants().unwrap();
}

#[test]
fn page_add_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let mapped = td.add_page(&sim, 0, &[1; 4096]);
    let big = td.aug(&sim, 2 * MIB, 1);
    let lv = Leaf::MEM_PAGE_ADD.v0();
    let t = tdr(&td);
    let target = td.page(&sim).hpa().as_u64();
    let source = td.page(&sim).hpa().as_u64();
    let call = |rcx: u64, rdx: u64, r8: u64, r9: u64| raw(&sim, lv, [rcx, rdx, r8, r9, 0, 0]);
    let zcall = |rcx: u64, rdx: u64, r8: u64, r9: u64| zraw(&sim, lv, [rcx, rdx, r8, r9, 0, 0]);
    // 1. TDR_X(RDX).
    assert_eq!(
        zcall(pinfo(0x1000, 0), target, target, source),
        metadata(RDX)
    );
    assert_eq!(zcall(pinfo(0x1000, 0), t + 8, target, source), invalid(RDX));
    // 3. PINFO(0, 0).
    for rcx in [
        pinfo(0, 1),
        pinfo(0x1000, 0) | 0x8,
        pinfo(0x1000, 0) | 1 << 60,
    ] {
        assert_eq!(zcall(rcx, t, target, source), invalid(RCX), "{rcx:#x}");
    }
    // 4. private GPA.
    assert_eq!(zcall(pinfo(1 << 47, 0), t, target, source), invalid(RCX));
    // 5. walk: no PT at 1 GiB (stops at the FREE level-2 entry), and a
    // 4K GPA under a 2 MiB leaf (stops at the leaf); with a bad source too.
    let (s, out) = call(pinfo(GIB, 0), t, target, 1);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    let (s, out) = call(pinfo(2 * MIB + 0x3000, 0), t, target, source);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 1, SeptState::PENDING, Some(big));
    // 6. the entry is not FREE.
    let (s, out) = call(pinfo(0, 0), t, target, 1);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(sept_out(out), 0, SeptState::MAPPED, Some(mapped));
    // 7. the source is a shared HPA, 4 KiB aligned (before the target).
    for r9 in [
        source + 0x10,
        with_hkid(&sim, source, td.hkid),
        with_hkid(&sim, source, global_hkid(&sim)),
        1 << 52,
    ] {
        assert_eq!(zcall(pinfo(0x1000, 0), t, t, r9), invalid(R9), "R9 {r9:#x}");
    }
    // 8. EXPL(R8, PT_NDA).
    for (r8, want) in [
        (target + 0x800, invalid(R8)),
        (OUTSIDE_TDMR, range_error(R8)),
        // The TDR itself: this leaf holds its PAMT entry already (RDX), so
        // the exclusive walk of R8 finds it locked, as in the module.
        (t, busy(R8)),
        (mapped.hpa().as_u64(), metadata(R8)),
        (big.hpa().as_u64() + 7 * PAGE, metadata(R8)),
        (pamt_page().hpa().as_u64(), metadata(R8)),
    ] {
        assert_eq!(zcall(pinfo(0x1000, 0), t, r8, source), want, "R8 {r8:#x}");
    }
    // A source through an MKTME KeyID is shared memory: accepted.
    let (s, out) = call(pinfo(0x1000, 0), t, target, with_hkid(&sim, source, 7));
    ok("PAGE.ADD", s);
    assert_eq!((out.rcx, out.rdx), (0, 0));
    sim.check_invariants().unwrap();
}

#[test]
fn page_add_only_while_initialized() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let uninit = Td::build_with(&sim, hkid, Stage::TdcsAdded);
    let mut td = Td::build_with(&sim, hkid + 1, Stage::VcpuReady);
    td.map_sept(&sim, 0, 1);
    let (t, s) = (td.page(&sim), td.page(&sim));
    let c = page_add(&sim, info(0, 0), uninit.tdr, t, s);
    assert_eq!(c.status, TdxStatus::OP_STATE_INCORRECT);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let c = page_add(&sim, info(0, 0), td.tdr, t, s);
    assert_eq!(c.status, TdxStatus::OP_STATE_INCORRECT);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    assert_eq!(rdmd(&sim, t).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.PAGE.AUG
// ---------------------------------------------------------------------------

#[test]
fn page_aug_4k_and_2m_are_pending_until_accepted() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let small = td.aug(&sim, 0x1000, 0);
    let big = td.aug(&sim, 2 * MIB, 1);
    let owner = tdr(&td);
    assert_eq!(rdmd(&sim, small), (PamtPageType::REG, owner, 0, 0));
    // A 2 MiB page is one 2M PAMT entry; its 4K pages report that entry.
    assert_eq!(rdmd(&sim, big), (PamtPageType::REG, owner, 1, 0));
    assert_eq!(
        rdmd(&sim, Pfn::new(big.as_u64() + 100)),
        (PamtPageType::REG, owner, 1, 0)
    );
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::PENDING, Some(big.hpa().as_u64()))
    );
    assert_eq!(
        sim.page_state(Pfn::new(big.as_u64() + 511)),
        Some(PageState::Module)
    );
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB, 1));
    assert_eq!(sept_state(&sim, td.tdr, 2 * MIB, 1).0, SeptState::MAPPED);
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_before_finalize_is_allowed_in_1_5() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.aug(&sim, 0x1000, 0);
    td.aug(&sim, 4 * MIB, 1);
    let uninit = Td::build_with(&sim, td.hkid + 1, Stage::TdcsAdded);
    let p = page(&sim);
    let c = page_aug(&sim, info(0, 0), uninit.tdr, p);
    assert_eq!(c.status, TdxStatus::OP_STATE_INCORRECT);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_checks_in_order() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, 0, 1);
    let pending = td.aug(&sim, 0x1000, 0);
    let big = td.aug(&sim, 2 * MIB, 1);
    child(&sim, &td, 0, 1);
    let lv = Leaf::MEM_PAGE_AUG.v0();
    let t = tdr(&td);
    let p = td.page(&sim).hpa().as_u64();
    let huge_run = td.run(&sim, 512, 512);
    let h = huge_run.hpa().as_u64();
    // TDR_S(RDX).
    assert_eq!(
        zraw(&sim, lv, [pinfo(0x2000, 0), p, p, 0, 0, 0]),
        metadata(RDX)
    );
    // PINFO(0, 1).
    for rcx in [pinfo(0x1000, 1), pinfo(0x2000, 0) | 0x100, pinfo(0, 5)] {
        assert_eq!(
            zraw(&sim, lv, [rcx, t, p, 0, 0, 0]),
            invalid(RCX),
            "{rcx:#x}"
        );
    }
    assert_eq!(
        zraw(&sim, lv, [pinfo(1 << 47, 0), t, p, 0, 0, 0]),
        invalid(RCX)
    );
    // SWALK: no PT; under a 2M leaf.
    let (s, out) = raw(&sim, lv, [pinfo(GIB + 0x1000, 0), t, p, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    let (s, out) = raw(&sim, lv, [pinfo(2 * MIB + PAGE, 0), t, p, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 1, SeptState::PENDING, Some(big));
    // The entry must be FREE (or REMOVED): not PENDING, not NL_MAPPED.
    let (s, out) = raw(&sim, lv, [pinfo(0x1000, 0), t, p, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(sept_out(out), 0, SeptState::PENDING, Some(pending));
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, h, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(sept_out(out), 1, SeptState::NL_MAPPED, None);
    // The free-range check on R8.
    for (rcx, r8, want) in [
        (pinfo(0x2000, 0), p + 0x100, invalid(R8)),
        (pinfo(0x2000, 0), OUTSIDE_TDMR, range_error(R8)),
        // The TDR itself: this leaf holds its PAMT entry already (RDX), so
        // the exclusive walk of R8 finds it locked, as in the module.
        (pinfo(0x2000, 0), t, busy(R8)),
        (pinfo(0x2000, 0), pending.hpa().as_u64(), metadata(R8)),
        // A 4K page inside a 2M private page (the walk ends at 2M).
        (
            pinfo(0x2000, 0),
            big.hpa().as_u64() + 3 * PAGE,
            metadata(R8),
        ),
        (pinfo(4 * MIB, 1), h + PAGE, invalid(R8)),
        (pinfo(4 * MIB, 1), big.hpa().as_u64(), metadata(R8)),
        // A 2M range that holds PAMT pages (PT_RSVD).
        (
            pinfo(4 * MIB, 1),
            pamt_page().hpa().as_u64() & !(2 * MIB - 1),
            metadata(R8),
        ),
    ] {
        assert_eq!(
            zraw(&sim, lv, [rcx, t, r8, 0, 0, 0]),
            want,
            "{rcx:#x} R8 {r8:#x}"
        );
    }
    ok(
        "PAGE.AUG 2M",
        zraw(&sim, lv, [pinfo(4 * MIB, 1), t, h, 0, 0, 0]),
    );
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_2m_with_a_busy_4k_child_is_metadata_incorrect() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, 2 * MIB, 2);
    let huge = td.run(&sim, 512, 512);
    // One 4K page of the range becomes another TD's TDR.
    let busy = Pfn::new(huge.first().as_u64() + 37);
    ok("MNG.CREATE", mng_create(&sim, busy, td.hkid + 1));
    let c = page_aug(&sim, info(2 * MIB, 1), td.tdr, huge.first());
    assert_eq!(c.status, metadata(R8));
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::FREE, None)
    );
    assert_eq!(rdmd(&sim, huge.first()).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

#[test]
fn page_aug_1g_is_operand_invalid() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.map_sept(&sim, GIB, 3);
    let run = td.run(&sim, 1 << 18, 1 << 18);
    let c = page_aug(&sim, info(GIB, 2), td.tdr, run.first());
    assert_eq!(c.status, invalid(RCX));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.RANGE.BLOCK, TRACK, RANGE.UNBLOCK
// ---------------------------------------------------------------------------

#[test]
fn block_and_unblock_while_initialized_need_no_tracking() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.add_page(&sim, 0, &[4; 4096]);
    let c = range_block(&sim, info(0, 0), td.tdr);
    ok("BLOCK", c.status);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    assert_eq!(sept_state(&sim, td.tdr, 0, 0).0, SeptState::BLOCKED);
    assert_eq!(
        rdmd(&sim, p).3,
        1,
        "bepoch = td_epoch, which MNG.INIT set to 1"
    );
    // Blocking again is a warning with the entry's details.
    let c = range_block(&sim, info(0, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, RCX));
    assert!(!c.status.is_error());
    assert_details(c.out, 0, SeptState::BLOCKED, Some(p));
    let c = range_unblock(&sim, info(0, 0), td.tdr);
    ok("UNBLOCK", c.status);
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    assert_eq!(sept_state(&sim, td.tdr, 0, 0).0, SeptState::MAPPED);
    sim.check_invariants().unwrap();
}

#[test]
fn block_moves_each_blockable_state_and_refuses_the_rest() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let pending = td.aug(&sim, 0x1000, 0);
    let pt = child(&sim, &td, 0, 1);
    // PENDING -> PENDING_BLOCKED, NL_MAPPED -> NL_BLOCKED.
    ok(
        "BLOCK pending",
        range_block(&sim, info(0x1000, 0), td.tdr).status,
    );
    assert_eq!(
        sept_state(&sim, td.tdr, 0x1000, 0).0,
        SeptState::PENDING_BLOCKED
    );
    let c = range_block(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, RCX));
    assert_details(c.out, 0, SeptState::PENDING_BLOCKED, Some(pending));
    ok(
        "BLOCK non-leaf",
        range_block(&sim, info(0, 1), td.tdr).status,
    );
    assert_eq!(sept_state(&sim, td.tdr, 0, 1).0, SeptState::NL_BLOCKED);
    assert_eq!(
        rdmd(&sim, pt).3,
        1,
        "the child S-EPT page carries the epoch"
    );
    let c = range_block(&sim, info(0, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_ALREADY_BLOCKED, RCX));
    assert_details(c.out, 1, SeptState::NL_BLOCKED, None);
    // Below a blocked non-leaf the walk fails.
    let c = range_block(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(c.out, 1, SeptState::NL_BLOCKED, None);
    // A FREE entry cannot be blocked.
    let c = range_block(&sim, info(2 * MIB, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 1, SeptState::FREE, None);
    sim.check_invariants().unwrap();
}

#[test]
fn block_checks() {
    let sim = host();
    let td = Td::build(&sim, Stage::Initialized);
    let uninit = Td::build_with(&sim, td.hkid + 1, Stage::TdcsAdded);
    let lv = Leaf::MEM_RANGE_BLOCK.v0();
    let p = page(&sim).hpa().as_u64();
    assert_eq!(zraw(&sim, lv, [pinfo(0, 3), p, 0, 0, 0, 0]), metadata(RDX));
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 3), tdr(&uninit), 0, 0, 0, 0]),
        TdxStatus::OP_STATE_INCORRECT
    );
    for rcx in [
        pinfo(0, 4),
        pinfo(0x1000, 1),
        pinfo(0, 0) | 0x40,
        pinfo(1 << 47, 0),
    ] {
        assert_eq!(
            zraw(&sim, lv, [rcx, tdr(&td), 0, 0, 0, 0]),
            invalid(RCX),
            "{rcx:#x}"
        );
    }
    let (s, out) = raw(&sim, lv, [pinfo(0, 0), tdr(&td), 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 3, SeptState::FREE, None);
    sim.check_invariants().unwrap();
}

#[test]
fn unblock_in_runnable_needs_tracking_and_reports_sept_tree() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let p = td.aug(&sim, 0x1000, 0);
    // Not blocked: nothing to unblock.
    let c = range_unblock(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 0, SeptState::PENDING, Some(p));
    let c = range_unblock(&sim, info(0x2000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 0, SeptState::FREE, None);
    ok("BLOCK", range_block(&sim, info(0x1000, 0), td.tdr).status);
    // Not tracked: the operand is SEPT_TREE, not RCX.
    let c = range_unblock(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(
        c.status,
        e(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::SEPT_TREE)
    );
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0), "no details");
    ok("TRACK", track(&sim, td.tdr));
    ok(
        "UNBLOCK",
        range_unblock(&sim, info(0x1000, 0), td.tdr).status,
    );
    assert_eq!(sept_state(&sim, td.tdr, 0x1000, 0).0, SeptState::PENDING);
    // A non-leaf too.
    child(&sim, &td, 0, 1);
    ok("BLOCK", range_block(&sim, info(0, 1), td.tdr).status);
    let c = range_unblock(&sim, info(0, 1), td.tdr);
    assert_eq!(
        c.status,
        e(TdxStatus::TLB_TRACKING_NOT_DONE, OperandId::SEPT_TREE)
    );
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0), "no details");
    ok("TRACK", track(&sim, td.tdr));
    ok("UNBLOCK", range_unblock(&sim, info(0, 1), td.tdr).status);
    assert_eq!(sept_state(&sim, td.tdr, 0, 1), (SeptState::NL_MAPPED, None));
    // Walk and page-info errors.
    let lv = Leaf::MEM_RANGE_UNBLOCK.v0();
    let (s, out) = raw(&sim, lv, [pinfo(GIB, 0), tdr(&td), 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    assert_eq!(
        zraw(&sim, lv, [pinfo(0, 4), tdr(&td), 0, 0, 0, 0]),
        invalid(RCX)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn track_advances_the_epoch_blocks_are_stamped_with() {
    let sim = host();
    let hkid = td_hkid(&sim);
    let mut td = Td::build_with(&sim, hkid, Stage::Runnable);
    let a = td.aug(&sim, 0x1000, 0);
    let b = td.aug(&sim, 0x2000, 0);
    ok("BLOCK a", range_block(&sim, info(0x1000, 0), td.tdr).status);
    assert_eq!(rdmd(&sim, a).3, 1);
    ok("TRACK", track(&sim, td.tdr));
    ok("TRACK", track(&sim, td.tdr));
    ok("BLOCK b", range_block(&sim, info(0x2000, 0), td.tdr).status);
    assert_eq!(rdmd(&sim, b).3, 3);
    // a (epoch 1 < 3 - 1) is tracked; b (epoch 3) is not until one TRACK.
    ok(
        "REMOVE a",
        page_remove(&sim, info(0x1000, 0), td.tdr).status,
    );
    let c = page_remove(&sim, info(0x2000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0), "no details");
    ok("TRACK", track(&sim, td.tdr));
    ok(
        "REMOVE b",
        page_remove(&sim, info(0x2000, 0), td.tdr).status,
    );
    // TRACK's own checks.
    let uninit = Td::build_with(&sim, hkid + 1, Stage::TdcsAdded);
    let created = Td::build_with(&sim, hkid + 2, Stage::Created);
    let init = Td::build_with(&sim, hkid + 3, Stage::Initialized);
    assert_eq!(track(&sim, uninit.tdr), TdxStatus::OP_STATE_INCORRECT);
    assert_eq!(track(&sim, created.tdr), TdxStatus::TD_KEYS_NOT_CONFIGURED);
    assert_eq!(track(&sim, init.tdcs[0]), metadata(RCX));
    ok("TRACK while INITIALIZED", track(&sim, init.tdr));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.PAGE.REMOVE
// ---------------------------------------------------------------------------

#[test]
fn page_remove_before_finalize_needs_no_block() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let p = td.add_page(&sim, 0x4000, &[5; 4096]);
    let c = page_remove(&sim, info(0x4000, 0), td.tdr);
    ok("PAGE.REMOVE", c.status);
    assert_eq!(c.out.removed(), Some(p));
    assert_eq!(c.out.rdx, 0);
    assert_eq!(rdmd(&sim, p).0, PamtPageType::NDA);
    assert_eq!(sim.page_state(p), Some(PageState::Host));
    assert_eq!(sept_state(&sim, td.tdr, 0x4000, 0), (SeptState::FREE, None));
    // A blocked page is removable too.
    td.add_page(&sim, 0x5000, &[6; 4096]);
    ok("BLOCK", range_block(&sim, info(0x5000, 0), td.tdr).status);
    ok(
        "PAGE.REMOVE blocked",
        page_remove(&sim, info(0x5000, 0), td.tdr).status,
    );
    // The GPA can be used again.
    td.add_page(&sim, 0x4000, &[7; 4096]);
    sim.check_invariants().unwrap();
}

#[test]
fn page_remove_when_runnable_needs_block_then_track() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let p = td.aug(&sim, 0x1000, 0);
    let c = page_remove(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_details(c.out, 0, SeptState::PENDING, Some(p));
    ok("accept", sim.guest_accept(td.tdr, 0x1000, 0));
    let c = page_remove(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_details(c.out, 0, SeptState::MAPPED, Some(p));
    ok("BLOCK", range_block(&sim, info(0x1000, 0), td.tdr).status);
    let c = page_remove(&sim, info(0x1000, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
    assert_eq!(sept_state(&sim, td.tdr, 0x1000, 0).0, SeptState::BLOCKED);
    ok("TRACK", track(&sim, td.tdr));
    let c = page_remove(&sim, info(0x1000, 0), td.tdr);
    ok("PAGE.REMOVE", c.status);
    assert_eq!(c.out.removed(), Some(p));
    // The removed page still holds the TD's lines: WBINVD with its KeyID.
    ok("PAGE.WBINVD", wbinvd(&sim, p, td.hkid));
    sim.check_invariants().unwrap();
}

#[test]
fn page_remove_a_2m_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let big = td.aug(&sim, 2 * MIB, 1);
    // Removing a 4K page inside it: the walk stops at the 2M leaf.
    let c = page_remove(&sim, info(2 * MIB + PAGE, 0), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(c.out, 1, SeptState::PENDING, Some(big));
    let removed = td.block_track_remove(&sim, 2 * MIB, 1);
    assert_eq!(removed, big);
    assert_eq!(rdmd(&sim, big).0, PamtPageType::NDA);
    assert_eq!(
        sim.page_state(Pfn::new(big.as_u64() + 511)),
        Some(PageState::Host)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn page_remove_checks() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    child(&sim, &td, 0, 1);
    let lv = Leaf::MEM_PAGE_REMOVE.v0();
    let t = tdr(&td);
    let p = page(&sim).hpa().as_u64();
    assert_eq!(zraw(&sim, lv, [pinfo(0, 0), p, 0, 0, 0, 0]), metadata(RDX));
    for rcx in [
        pinfo(0, 3),
        pinfo(0x1000, 1),
        pinfo(0, 0) | 0x800,
        pinfo(1 << 47, 0),
    ] {
        assert_eq!(
            zraw(&sim, lv, [rcx, t, 0, 0, 0, 0]),
            invalid(RCX),
            "{rcx:#x}"
        );
    }
    // FREE leaf, a non-leaf, no PT.
    let (s, out) = raw(&sim, lv, [pinfo(0, 0), t, 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(sept_out(out), 0, SeptState::FREE, None);
    let (s, out) = raw(&sim, lv, [pinfo(0, 1), t, 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(sept_out(out), 1, SeptState::NL_MAPPED, None);
    let (s, out) = raw(&sim, lv, [pinfo(GIB, 0), t, 0, 0, 0, 0]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_details(sept_out(out), 2, SeptState::FREE, None);
    let uninit = Td::build_with(&sim, td.hkid + 1, Stage::TdcsAdded);
    assert_eq!(
        page_remove(&sim, info(0, 0), uninit.tdr).status,
        TdxStatus::OP_STATE_INCORRECT
    );
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDH.MEM.PAGE.DEMOTE / PROMOTE (tdh_mem_page_demote.c,
// tdh_mem_page_promote.c: the blocking and tracking rules of REMOVE)
// ---------------------------------------------------------------------------

#[test]
fn demote_a_running_2m_page_then_remove_one_4k_page() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    let big = td.aug(&sim, 2 * MIB, 1);
    let sept = td.page(&sim);
    let c = page_demote(&sim, info(2 * MIB, 1), td.tdr, sept);
    assert_eq!(c.status, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_details(c.out, 1, SeptState::PENDING, Some(big));
    ok("BLOCK", range_block(&sim, info(2 * MIB, 1), td.tdr).status);
    let c = page_demote(&sim, info(2 * MIB, 1), td.tdr, sept);
    assert_eq!(c.status, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    ok("TRACK", track(&sim, td.tdr));
    // The new S-EPT page is checked like any page handed over.
    let c = page_demote(&sim, info(2 * MIB, 1), td.tdr, td.tdcs[0]);
    assert_eq!(c.status, metadata(R8));
    // The TDR itself: this leaf holds its PAMT entry shared (RDX), so the
    // exclusive walk of R8 finds it locked, as in the module.
    let c = page_demote(&sim, info(2 * MIB, 1), td.tdr, td.tdr);
    assert_eq!(c.status, busy(R8));
    ok(
        "DEMOTE",
        page_demote(&sim, info(2 * MIB, 1), td.tdr, sept).status,
    );
    // Now a PT page with 512 pending 4K pages.
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::NL_MAPPED, None)
    );
    assert_eq!(rdmd(&sim, sept), (PamtPageType::EPT, tdr(&td), 0, 0));
    let fifth = Pfn::new(big.as_u64() + 5);
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB + 5 * PAGE, 0),
        (SeptState::PENDING, Some(fifth.hpa().as_u64()))
    );
    assert_eq!(rdmd(&sim, fifth), (PamtPageType::REG, tdr(&td), 0, 0));
    // One 4K page goes; the rest stay.
    let removed = td.block_track_remove(&sim, 2 * MIB + 5 * PAGE, 0);
    assert_eq!(removed, fifth);
    assert_eq!(sim.page_state(fifth), Some(PageState::Host));
    assert_eq!(rdmd(&sim, Pfn::new(big.as_u64() + 6)).0, PamtPageType::REG);
    ok("PAGE.WBINVD", wbinvd(&sim, fifth, td.hkid));
    // With a hole, the range cannot be promoted back: the merge check's
    // status, with the details of the (blocked) parent entry.
    ok("BLOCK", range_block(&sim, info(2 * MIB, 1), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let c = page_promote(&sim, info(2 * MIB, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX));
    assert_details(c.out, 1, SeptState::NL_BLOCKED, None);
    sim.check_invariants().unwrap();
    // Teardown reclaims the 511 remaining 4K pages one by one.
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn demote_and_promote_round_trip_before_finalize() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let big = td.aug(&sim, 2 * MIB, 1);
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB, 1));
    let sept = td.page(&sim);
    ok(
        "DEMOTE",
        page_demote(&sim, info(2 * MIB, 1), td.tdr, sept).status,
    );
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB + PAGE, 0).0,
        SeptState::MAPPED
    );
    let c = page_promote(&sim, info(2 * MIB, 1), td.tdr);
    ok("PROMOTE", c.status);
    assert_eq!(
        c.out.removed(),
        Some(sept),
        "the freed S-EPT page comes back in RCX"
    );
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::MAPPED, Some(big.hpa().as_u64()))
    );
    assert_eq!(rdmd(&sim, big), (PamtPageType::REG, tdr(&td), 1, 0));
    assert_eq!(rdmd(&sim, sept).0, PamtPageType::NDA);
    assert_eq!(sim.page_state(sept), Some(PageState::Host));
    sim.check_invariants().unwrap();
}

#[test]
fn demote_and_promote_checks() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let sept = td.page(&sim);
    // DEMOTE: levels 1..=2 only; a non-leaf cannot be demoted.
    let c = page_demote(&sim, info(0, 0), td.tdr, sept);
    assert_eq!(c.status, invalid(RCX));
    assert_eq!((c.out.rcx, c.out.rdx), (0, 0));
    let c = page_demote(&sim, info(0, 1), td.tdr, sept);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 1, SeptState::NL_MAPPED, None);
    // PROMOTE: a FREE entry (no page table there).
    let c = page_promote(&sim, info(2 * MIB, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_details(c.out, 1, SeptState::FREE, None);
    // A page table whose first entry is FREE: the merge check.
    let c = page_promote(&sim, info(0, 1), td.tdr);
    assert_eq!(c.status, e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX));
    assert_details(c.out, 1, SeptState::NL_MAPPED, None);
    assert_eq!(rdmd(&sim, sept).0, PamtPageType::NDA);
    sim.check_invariants().unwrap();
}

/// DEMOTE's RDX is `td_handle_and_flags_t` (tdh_mem_page_demote.c): the
/// TDR in bits 51:12, bit 0 `l2_sept_add_mode` (a flag, not part of the
/// address), bits 11:1 and 63:52 reserved and checked first. RCX/RDX are
/// cleared on every path and R8..R11 keep their inputs (the module writes
/// R9..R11 back as given when the TD has no L2 VMs).
#[test]
fn demote_rdx_bit_0_is_a_flag_and_the_other_low_bits_are_reserved() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let big = td.aug(&sim, 2 * MIB, 1);
    let sept = td.page(&sim);
    let lv = Leaf::MEM_PAGE_DEMOTE.v0();
    let t = tdr(&td);
    let q = page(&sim).hpa().as_u64();
    for (what, rdx, want) in [
        ("bit 1", t | 2, invalid(RDX)),
        ("bit 11", t | 0x800, invalid(RDX)),
        ("bit 52", t | 1 << 52, invalid(RDX)),
        // Reserved bits come before the TDR check.
        ("bit 1 and no TDR", q | 2, invalid(RDX)),
        ("no TDR, bit 0", q | 1, metadata(RDX)),
    ] {
        let (s, out) = raw(&sim, lv, [pinfo(2 * MIB, 1), rdx, pa(sept), 9, 10, 11]);
        assert_eq!(s, want, "{what}");
        assert_eq!(out6(&out), [0, 0, pa(sept), 9, 10, 11], "{what}");
    }
    // Walk failure and a state error with bit 0 set: details as usual.
    let (s, out) = raw(&sim, lv, [pinfo(GIB, 1), t | 1, pa(sept), 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_WALK_FAILED, RCX));
    assert_eq!(out6(&out), [1 << 63, 0x2, pa(sept), 9, 10, 11]);
    let (s, out) = raw(&sim, lv, [pinfo(4 * MIB, 1), t | 1, pa(sept), 9, 10, 11]);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(out6(&out), [1 << 63, 0x1, pa(sept), 9, 10, 11]);
    // Bit 0 set: the split goes ahead.
    let (s, out) = raw(&sim, lv, [pinfo(2 * MIB, 1), t | 1, pa(sept), 9, 10, 11]);
    ok("DEMOTE with l2_sept_add_mode", s);
    assert_eq!(out6(&out), [0, 0, pa(sept), 9, 10, 11]);
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB + 3 * PAGE, 0),
        (SeptState::PENDING, Some(pa(big) + 3 * PAGE))
    );
    assert_eq!(rdmd(&sim, sept).0, PamtPageType::EPT);
    sim.check_invariants().unwrap();
}

/// An INITIALIZED TD with a page table at 2 MiB holding 512 PENDING 4K
/// pages (a 2M AUG, demoted): returns the TD, the 2M frame and the table.
fn demoted_2m(sim: &tdx_sim::Simulator) -> (Td, Pfn, Pfn) {
    let mut td = Td::build(sim, Stage::Initialized);
    let big = td.aug(sim, 2 * MIB, 1);
    let sept = td.page(sim);
    ok(
        "DEMOTE",
        page_demote(sim, info(2 * MIB, 1), td.tdr, sept).status,
    );
    (td, big, sept)
}

/// PROMOTE over a page table with nothing in it, in the module's order
/// (tdh_mem_page_promote.c): the entry's state, the table page's PAMT lock,
/// the TLB rule while RUNNABLE, then the merge check, whose failure is
/// EPT_INVALID_PROMOTE_CONDITIONS|RCX with the details of the parent entry
/// (child 0 is FREE: its frame, 0, is aligned; its state is not MAPPED or
/// PENDING). RCX/RDX otherwise cleared; R8..R11 as given (version 0).
#[test]
fn promote_over_an_empty_page_table() {
    let sim = host();
    let lv = Leaf::MEM_PAGE_PROMOTE.v0();
    // INITIALIZED: no TLB rule; the merge check answers.
    let mut td = Td::build(&sim, Stage::Initialized);
    td.map_sept(&sim, 0, 1);
    let pt = td.sept_page(0, 1);
    let call =
        |td: &Td, gpa: u64, level: u8| raw(&sim, lv, [pinfo(gpa, level), tdr(td), 8, 9, 10, 11]);
    let (s, out) = call(&td, 0, 1);
    assert_eq!(s, e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX));
    assert_eq!(out6(&out), [0x7, 0x8401, 8, 9, 10, 11]);
    // 1G over an empty level-1 table (the table under the 1G entry holds
    // one non-leaf entry and FREE ones): the same, at level 2.
    let (s, out) = call(&td, 0, 2);
    assert_eq!(s, e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX));
    assert_eq!(out6(&out), [0x7, 0x8402, 8, 9, 10, 11]);
    // The table page's PAMT entry is taken before the merge check.
    let held = sim
        .hold(
            tdx_sim::ModuleLock::Pamt {
                pfn: pt,
                level: tdx_types::TdxLevel::L4K,
            },
            tdx_sim::LockMode::Shared,
        )
        .unwrap();
    let (s, out) = call(&td, 0, 1);
    drop(held);
    assert_eq!(s, busy(RCX));
    assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    // A FREE entry, and a leaf, where the table would be: the state check.
    let (s, out) = call(&td, 4 * MIB, 1);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(out6(&out), [1 << 63, 0x1, 8, 9, 10, 11]);
    let big = td.aug(&sim, 2 * MIB, 1);
    let (s, out) = call(&td, 2 * MIB, 1);
    assert_eq!(s, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    assert_eq!(
        out6(&out),
        [pa(big) | 0x8000_0000_0000_00F0, 0x201, 8, 9, 10, 11]
    );
    // RUNNABLE: not blocked, then blocked but not tracked, then the merge
    // check on the blocked entry (RCX 0).
    let mut run = Td::build_with(&sim, td.hkid + 1, Stage::Runnable);
    run.map_sept(&sim, 0, 1);
    let (s, out) = call(&run, 0, 1);
    assert_eq!(s, e(TdxStatus::GPA_RANGE_NOT_BLOCKED, RCX));
    assert_eq!(out6(&out), [0x7, 0x8401, 8, 9, 10, 11]);
    ok("BLOCK", range_block(&sim, info(0, 1), run.tdr).status);
    let (s, out) = call(&run, 0, 1);
    assert_eq!(s, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
    assert_eq!(out6(&out), [0, 0, 8, 9, 10, 11]);
    ok("TRACK", track(&sim, run.tdr));
    let (s, out) = call(&run, 0, 1);
    assert_eq!(s, e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX));
    assert_eq!(out6(&out), [0, 0x8101, 8, 9, 10, 11]);
    // Nothing changed: the table is still there, blocked.
    assert_eq!(
        sept_state(&sim, run.tdr, 0, 1),
        (SeptState::NL_BLOCKED, None)
    );
    assert_eq!(rdmd(&sim, pt).0, PamtPageType::EPT);
    sim.check_invariants().unwrap();
}

/// Each way the 512 entries below can fail the merge check
/// (`is_sept_page_valid_for_merge`): child 0 not MAPPED or PENDING, child
/// 0's frame not aligned to 2M, a later child in another state, a later
/// child that is not the next frame; each gives
/// EPT_INVALID_PROMOTE_CONDITIONS|RCX with the parent's details, and
/// leaves every entry as it was and unlocked (the same PROMOTE succeeds
/// once the run is whole again).
#[test]
fn promote_merge_check_failures_report_the_parent() {
    let sim = host();
    let lv = Leaf::MEM_PAGE_PROMOTE.v0();
    let (mut td, big, sept) = demoted_2m(&sim);
    let t = tdr(&td);
    let promote = || raw(&sim, lv, [pinfo(2 * MIB, 1), t, 8, 9, 10, 11]);
    let refused = |what: &str| {
        let (s, out) = promote();
        assert_eq!(
            s,
            e(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS, RCX),
            "{what}"
        );
        assert_eq!(out6(&out), [0x7, 0x8401, 8, 9, 10, 11], "{what}");
    };
    let nth = |i: u64| Pfn::new(big.as_u64() + i);
    // Child 0 blocked (PENDING_BLOCKED).
    ok("BLOCK", range_block(&sim, info(2 * MIB, 0), td.tdr).status);
    refused("child 0 PENDING_BLOCKED");
    ok(
        "UNBLOCK",
        range_unblock(&sim, info(2 * MIB, 0), td.tdr).status,
    );
    // Child 7 in another state (accepted: MAPPED among PENDING ones).
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB + 7 * PAGE, 0));
    refused("child 7 MAPPED, child 0 PENDING");
    // Child 0 MAPPED, child 7 too, the rest PENDING: child 1 differs.
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB, 0));
    refused("child 1 PENDING, child 0 MAPPED");
    // Accept the rest: the run is whole and MAPPED.
    for i in 1..512u64 {
        if i != 7 {
            ok("accept", sim.guest_accept(td.tdr, 2 * MIB + i * PAGE, 0));
        }
    }
    // Child 9 maps another frame.
    let nine = page_remove(&sim, info(2 * MIB + 9 * PAGE, 0), td.tdr);
    ok("PAGE.REMOVE", nine.status);
    assert_eq!(nine.out.removed(), Some(nth(9)));
    let other = td.page(&sim);
    let c = page_aug(&sim, info(2 * MIB + 9 * PAGE, 0), td.tdr, other);
    ok("AUG", c.status);
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB + 9 * PAGE, 0));
    refused("child 9 not the next frame");
    let c = page_remove(&sim, info(2 * MIB + 9 * PAGE, 0), td.tdr);
    assert_eq!(c.out.removed(), Some(other));
    // A hole at child 9.
    refused("child 9 FREE");
    ok(
        "AUG",
        page_aug(&sim, info(2 * MIB + 9 * PAGE, 0), td.tdr, nth(9)).status,
    );
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB + 9 * PAGE, 0));
    // Child 0 maps a frame that does not start a 2M run (the rest as
    // before): not aligned.
    let c = page_remove(&sim, info(2 * MIB, 0), td.tdr);
    assert_eq!(c.out.removed(), Some(big));
    let unaligned = td.page(&sim);
    assert!(!unaligned.as_u64().is_multiple_of(512));
    ok(
        "AUG",
        page_aug(&sim, info(2 * MIB, 0), td.tdr, unaligned).status,
    );
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB, 0));
    refused("child 0 not aligned");
    ok("REMOVE", page_remove(&sim, info(2 * MIB, 0), td.tdr).status);
    ok("AUG", page_aug(&sim, info(2 * MIB, 0), td.tdr, big).status);
    ok("accept", sim.guest_accept(td.tdr, 2 * MIB, 0));
    // Whole again: the same call merges (every child lock was let go).
    let (s, out) = promote();
    ok("PROMOTE", s);
    assert_eq!(out6(&out), [pa(sept), 0, 8, 9, 10, 11]);
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::MAPPED, Some(pa(big)))
    );
    sim.check_invariants().unwrap();
}

/// PROMOTE version 1 sets R9..R11 to -1 when it starts, on every path
/// (tdh_mem_page_promote.c; on success they would carry freed L2 S-EPT
/// pages, and no L2 VM has an alias here); version 0 leaves them; neither
/// writes R8.
#[test]
fn promote_v1_sets_r9_to_r11_on_every_path() {
    let sim = host();
    let (td, big, sept) = demoted_2m(&sim);
    let t = tdr(&td);
    let q = page(&sim).hpa().as_u64();
    let in6 = |rcx: u64, rdx: u64| [rcx, rdx, 8, 9, 10, 11];
    let cases: &[(&str, [u64; 6], TdxStatus, [u64; 2])] = &[
        ("TDR", in6(pinfo(2 * MIB, 1), q), metadata(RDX), [0, 0]),
        ("PINFO", in6(pinfo(2 * MIB, 0), t), invalid(RCX), [0, 0]),
        (
            "walk",
            in6(pinfo(GIB, 1), t),
            e(TdxStatus::EPT_WALK_FAILED, RCX),
            [1 << 63, 0x2],
        ),
        (
            "state",
            in6(pinfo(4 * MIB, 1), t),
            e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX),
            [1 << 63, 0x1],
        ),
    ];
    for &(what, regs, want, [rcx, rdx]) in cases {
        let (s, out) = raw(&sim, Leaf::MEM_PAGE_PROMOTE.v0(), regs);
        assert_eq!(s, want, "v0 {what}");
        assert_eq!(out6(&out), [rcx, rdx, 8, 9, 10, 11], "v0 {what}");
        let (s, out) = raw(&sim, Leaf::MEM_PAGE_PROMOTE.v(1), regs);
        assert_eq!(s, want, "v1 {what}");
        assert_eq!(out6(&out), [rcx, rdx, 8, NONE, NONE, NONE], "v1 {what}");
    }
    // Version 2.
    let (s, out) = raw(&sim, Leaf::MEM_PAGE_PROMOTE.v(2), in6(pinfo(2 * MIB, 1), t));
    assert_eq!(s, invalid(OperandId::RAX));
    assert_eq!(out6(&out), [0, 0, 8, NONE, NONE, NONE]);
    // Success in version 1: RCX the freed table, RDX 0, R9..R11 -1.
    let (s, out) = raw(&sim, Leaf::MEM_PAGE_PROMOTE.v(1), in6(pinfo(2 * MIB, 1), t));
    ok("PROMOTE v1", s);
    assert_eq!(out6(&out), [pa(sept), 0, 8, NONE, NONE, NONE]);
    assert_eq!(
        sept_state(&sim, td.tdr, 2 * MIB, 1),
        (SeptState::PENDING, Some(pa(big)))
    );
    sim.check_invariants().unwrap();
}

#[test]
fn the_guest_cannot_accept_under_a_blocked_table() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Runnable);
    td.aug(&sim, 0x1000, 0);
    td.aug(&sim, 0x2000, 0);
    // Block the 2M entry that points to the PT holding both pages.
    ok("BLOCK", range_block(&sim, info(0, 1), td.tdr).status);
    assert_eq!(
        sim.guest_accept(td.tdr, 0x1000, 0),
        e(TdxStatus::EPT_WALK_FAILED, RCX)
    );
    ok("UNBLOCK", {
        ok("TRACK", track(&sim, td.tdr));
        range_unblock(&sim, info(0, 1), td.tdr).status
    });
    // Still pending: the failed walk changed nothing.
    assert_eq!(sept_state(&sim, td.tdr, 0x1000, 0).0, SeptState::PENDING);
    ok("accept", sim.guest_accept(td.tdr, 0x1000, 0));
    // Accepting twice is the warning PAGE_ALREADY_ACCEPTED with the level;
    // where nothing is pending the module makes a TD exit, which the
    // vCPU-less helper shows as EPT_WALK_FAILED.
    assert_eq!(
        sim.guest_accept(td.tdr, 0x1000, 0),
        TdxStatus::PAGE_ALREADY_ACCEPTED
    );
    assert_eq!(
        sim.guest_accept(td.tdr, 0x3000, 0),
        e(TdxStatus::EPT_WALK_FAILED, RCX)
    );
    sim.check_invariants().unwrap();
}
