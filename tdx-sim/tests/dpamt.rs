//! Dynamic PAMT (Intel TDX module 1.5.16+): TDH.SYS.CONFIG's enable bit
//! and its limits, TDH.PHYMEM.PAMT.ADD/REMOVE with their checks in the
//! module's order, `TDX_MISSING_PAMT_PAGE_PAIR` from every leaf that hands
//! the module a 4K page, the per-range count and the removal hint, the 2M
//! PAGE.AUG refusal, DEMOTE/PROMOTE with a pair, and the 2M node's lock
//! (contention forced with `Simulator::hold` and `pause_next`). The facts
//! are from the module's source (`tdh_phymem_pamt_add.c`,
//! `tdh_phymem_pamt_remove.c`, `pamt_manager.c`, `helpers.c`,
//! `tdh_sys_config.c`, `tdh_sys_tdmr_init.c`).

// UNSAFETY: DEMOTE and PROMOTE with a pair are called through their raw
// `unsafe fn`s, on the simulator, whose memory is simulated.
#![allow(unsafe_code)]

mod td_support;

use std::thread;
use tdx_api::{Cpus, FrameAllocator, platform::on_each_package};

use td_support::*;
use tdx_api::Placement;
use tdx_sim::{
    LockMode, MachineDesc, ModuleLock, Profile, Simulator, Violation,
    testkit::{self, BringUpOptions},
};
use tdx_sys::{Completion, SeamcallArgs, leaf, leaf::SeptOut};
use tdx_types::{
    Hpa, Leaf, OperandId, Pfn, TdxLevel, TdxStatus,
    abi::TdmrInfo,
    metadata::{MdFieldId, PamtPageType, TdxFeatures0, field},
    regs::{PAMT_REMOVAL_HINT, SeptState, SysConfigKeyId, TdrAndFlags},
};

const RCX: OperandId = OperandId::RCX;
const RDX: OperandId = OperandId::RDX;
const R8: OperandId = OperandId::R8;
const R12: OperandId = OperandId::R12;
const R13: OperandId = OperandId::R13;
const SIZE_2M: u64 = 2 * MIB;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

fn desc(profile: Profile) -> MachineDesc {
    MachineDesc::new(vec![(4 * GIB, 9 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile)
}

fn dyn_layout() -> Vec<TdmrInfo> {
    testkit::simple_layout_dynamic(&[(4 * GIB, 8 * GIB)], 4)
}

/// [`host`]'s machine with module 1.5.16, brought up with Dynamic PAMT.
fn dhost() -> Simulator {
    let sim = Simulator::new(desc(Profile::tdx_1_5_16())).unwrap();
    let r = testkit::bring_up(
        &sim,
        &dyn_layout(),
        BringUpOptions {
            dynamic_pamt: true,
            ..Default::default()
        },
    );
    // 4 GiB at 16 MiB per TDH.SYS.TDMR.INIT.
    assert_eq!(r.tdmr_init_calls, 256);
    assert!(sim.dynamic_pamt());
    sim
}

fn hpa(p: Pfn) -> u64 {
    p.hpa().as_u64()
}

/// The 2 MiB range holding `p`, as PAMT.ADD/REMOVE's RCX (level 1).
fn range_rcx(p: Pfn) -> u64 {
    (hpa(p) & !(SIZE_2M - 1)) | 1
}

fn pamt_add_raw(sim: &Simulator, rcx: u64, p0: u64, p1: u64) -> (TdxStatus, SeamcallArgs) {
    raw(sim, Leaf::PHYMEM_PAMT_ADD.v0(), [rcx, p0, p1, 0, 0, 0])
}

fn pamt_remove_raw(sim: &Simulator, rcx: u64) -> (TdxStatus, SeamcallArgs) {
    raw(sim, Leaf::PHYMEM_PAMT_REMOVE.v0(), [rcx, 0, 0, 0, 0, 0])
}

/// Two fresh host pages for a pair, in one 2 MiB-aligned block of their
/// own (so they never share a range with the pages a test maps).
fn pair_pages(sim: &Simulator) -> [Pfn; 2] {
    let r = sim.alloc_pages(512, 512, Placement::Anywhere).unwrap();
    [r.first(), Pfn::new(r.first().as_u64() + 1)]
}

/// PAMT.ADD of a fresh pair for the range holding `p`; returns the pair.
fn add_pair(sim: &Simulator, p: Pfn) -> [Pfn; 2] {
    let pair = pair_pages(sim);
    let (s, _) = pamt_add_raw(sim, range_rcx(p), hpa(pair[0]), hpa(pair[1]));
    ok("PAMT.ADD", s);
    assert_eq!(sim.pamt_pair(p), Some((pair, 0)));
    pair
}

/// A host page whose 2 MiB range has a pair (added if needed).
fn paired_page(sim: &Simulator) -> Pfn {
    let p = page(sim);
    if sim.pamt_pair(p).is_none() {
        add_pair(sim, p);
    }
    p
}

/// `n` pages aligned to `n`, with their range's pair (4K runs only).
fn paired_run(sim: &Simulator, n: u64) -> Pfn {
    let p = run(sim, n, n).first();
    if n == 1 && sim.pamt_pair(p).is_none() {
        add_pair(sim, p);
    }
    p
}

fn count(sim: &Simulator, p: Pfn) -> u64 {
    sim.pamt_pair(p).map_or(0, |(_, c)| c)
}

/// A TD built with raw leaves on a Dynamic PAMT host, each page's range
/// given a pair first: TDR, 6 TDCS pages, MNG.INIT, one vCPU (TDVPR + 5
/// TDCX) initialized on LP 1 (op state INITIALIZED, not finalized).
struct DTd {
    tdr: Pfn,
    tdvpr: Pfn,
}

impl DTd {
    fn build(sim: &Simulator) -> Self {
        let hkid = td_hkid(sim);
        let tdr = paired_page(sim);
        ok("MNG.CREATE", mng_create(sim, tdr, hkid));
        on_each_package(&sim, &mut |_, _| ok("KEY.CONFIG", mng_key_config(sim, tdr)));
        for _ in 0..6 {
            ok("MNG.ADDCX", mng_addcx(sim, paired_page(sim), tdr));
        }
        let pa = Params::new().write(sim);
        ok("MNG.INIT", mng_init(sim, tdr, pa).status);
        let tdvpr = paired_page(sim);
        ok("VP.CREATE", vp_create(sim, tdvpr, tdr));
        for _ in 0..5 {
            ok("VP.ADDCX", vp_addcx(sim, paired_page(sim), tdvpr));
        }
        ok("VP.INIT", on(sim, 1, || vp_init(sim, tdvpr, 0, 0)));
        Self { tdr, tdvpr }
    }

    /// SEPT.ADD of the S-EPT pages down to the entry at `level` of `gpa`.
    fn map_sept(&self, sim: &Simulator, gpa: u64, level: u8) {
        for l in (level..=3).rev() {
            let aligned = gpa & !((PAGE << (9 * u32::from(l))) - 1);
            let p = paired_page(sim);
            let c = sept_add(
                sim,
                info(aligned, l),
                TdrAndFlags::with_tdr(self.tdr, false),
                p,
            );
            if c.status != TdxStatus::SUCCESS {
                // Already there (EPT_ENTRY_STATE_INCORRECT): give it back.
                free_page(sim, p);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Profiles and TDH.SYS.CONFIG
// ---------------------------------------------------------------------------

#[test]
fn profile_has_dynamic_pamt_and_its_metadata() {
    let p = Profile::by_name("tdx-1.5.16").unwrap();
    assert_eq!(p, Profile::tdx_1_5_16());
    assert!(p.has_dynamic_pamt());
    assert_eq!(p.version, (1, 5, 16));
    assert!(!Profile::tdx_1_5().has_dynamic_pamt());
    assert!(!Profile::tdx_1_5_05().has_dynamic_pamt());
    let sim = dhost();
    let rd = |f: MdFieldId| sys_rd(&sim, f);
    assert!(TdxFeatures0::from_bits(rd(field::TDX_FEATURES0).unwrap()).dynamic_pamt());
    assert_eq!(rd(field::PAMT_PAGE_BITMAP_ENTRY_BITS), Some(1));
    // Linux's ID for the same field (16-bit size code) reads the same
    // value in the module; the simulator serves the module's ID only.
    // MAX_PA 52: at least 4 KeyID bits.
    assert_eq!(rd(field::MIN_DYNAMIC_PAMT_NUM_HKID_BITS), Some(4));
    // 1.5.01 has neither field.
    let old = host();
    assert_eq!(sys_rd(&old, field::PAMT_PAGE_BITMAP_ENTRY_BITS), None);
    sim.check_invariants().unwrap();
}

fn sys_rd(sim: &Simulator, f: MdFieldId) -> Option<u64> {
    let (s, a) = raw(sim, Leaf::SYS_RD.v0(), [0, f.into_raw(), 0, 0, 0, 0]);
    (s == TdxStatus::SUCCESS).then_some(a.r8)
}

/// Brings `sim` to SYSINIT_DONE with every LP initialized and the PAMT
/// frames of `tdmrs` allocated; returns the TDMR_INFO array.
fn before_config(sim: &Simulator, tdmrs: &[TdmrInfo]) -> u64 {
    // SAFETY: the simulator's memory is simulated.
    ok("SYS.INIT", unsafe { leaf::tdh_sys_init(sim) });
    for lp in 0..sim.cpus() {
        ok(
            "LP.INIT",
            on(sim, lp, || {
                // SAFETY: as above.
                unsafe { leaf::tdh_sys_lp_init(sim) }
            }),
        );
    }
    for t in tdmrs {
        for (b, s) in [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()] {
            sim.alloc_pages(s / PAGE, 1, Placement::Exact(Pfn::new(b / PAGE)))
                .unwrap();
        }
    }
    testkit::write_tdmr_infos(sim, tdmrs)
}

fn sys_config(sim: &Simulator, array: u64, n: u64, key: SysConfigKeyId) -> TdxStatus {
    // SAFETY: simulated memory.
    unsafe { leaf::tdh_sys_config(sim, Hpa::new(array), n, key) }
}

#[test]
fn sys_config_bit_16_is_reserved_without_dynamic_pamt() {
    for profile in [Profile::tdx_1_5(), Profile::tdx_1_5_05()] {
        let sim = Simulator::new(desc(profile)).unwrap();
        let tdmrs = dyn_layout();
        let array = before_config(&sim, &tdmrs);
        let key = SysConfigKeyId::new().with_hkid(global_hkid(&sim));
        assert_eq!(
            sys_config(&sim, array, 1, key.with_dynamic_pamt(true)),
            invalid(R8)
        );
        // The bitmap-sized 4K area is too small for a static PAMT.
        assert_eq!(
            sys_config(&sim, array, 1, key),
            TdxStatus::INVALID_PAMT.with_config_detail(0, 0, 0)
        );
        // PAMT.ADD/REMOVE do not exist there.
        assert!(!sim.dynamic_pamt());
    }
}

#[test]
fn sys_config_sizes_the_4k_area_as_the_bitmap() {
    let sim = Simulator::new(desc(Profile::tdx_1_5_16())).unwrap();
    let mut tdmrs = dyn_layout();
    // One page short of TDMR size / 32768 (4 GiB: 128 KiB).
    let (b, s) = tdmrs[0].pamt_4k();
    assert_eq!(s, (4 * GIB) >> 15);
    tdmrs[0].set_pamt_4k(b, s - PAGE);
    let array = before_config(&sim, &tdmrs);
    let key = SysConfigKeyId::new()
        .with_hkid(global_hkid(&sim))
        .with_dynamic_pamt(true);
    assert_eq!(
        sys_config(&sim, array, 1, key),
        TdxStatus::INVALID_PAMT.with_config_detail(0, 0, 0)
    );
    // Bits 63:17 stay reserved.
    assert_eq!(
        sys_config(
            &sim,
            array,
            1,
            SysConfigKeyId::from_bits(key.into_bits() | 1 << 17)
        ),
        invalid(R8)
    );
    // The exact size passes.
    let sim = Simulator::new(desc(Profile::tdx_1_5_16())).unwrap();
    let tdmrs = dyn_layout();
    let array = before_config(&sim, &tdmrs);
    ok("SYS.CONFIG", sys_config(&sim, array, 1, key));
    assert!(sim.dynamic_pamt());
}

#[test]
fn sys_config_refuses_dynamic_pamt_above_hkid_start_bit_48() {
    // 7 + 8 KeyIDs: 4 KeyID bits, start bit 48: accepted.
    let ok_sim = Simulator::new(desc(Profile::tdx_1_5_16()).with_keyids(7, 8)).unwrap();
    assert_eq!(ok_sim.machine().hkid_start_bit(), 48);
    let array = before_config(&ok_sim, &dyn_layout());
    let key = |sim: &Simulator| {
        SysConfigKeyId::new()
            .with_hkid(global_hkid(sim))
            .with_dynamic_pamt(true)
    };
    ok("SYS.CONFIG", sys_config(&ok_sim, array, 1, key(&ok_sim)));
    // 3 + 4 KeyIDs: 3 bits, start bit 49: refused; without bit 16 fine.
    let sim = Simulator::new(desc(Profile::tdx_1_5_16()).with_keyids(3, 4)).unwrap();
    assert_eq!(sim.machine().hkid_start_bit(), 49);
    let array = before_config(&sim, &testkit::simple_layout(&[(4 * GIB, 8 * GIB)], 4));
    assert_eq!(sys_config(&sim, array, 1, key(&sim)), invalid(R8));
    ok(
        "SYS.CONFIG static",
        sys_config(&sim, array, 1, key(&sim).with_dynamic_pamt(false)),
    );
    assert!(!sim.dynamic_pamt());
}

#[test]
fn without_bit_16_the_module_has_a_static_pamt() {
    let sim = host_with(Profile::tdx_1_5_16(), |d| d);
    assert!(!sim.dynamic_pamt());
    // Not enabled: PAMT.ADD/REMOVE are OPERAND_INVALID (operand RAX).
    let p = page(&sim);
    let q = pair_pages(&sim);
    assert_eq!(
        pamt_add_raw(&sim, range_rcx(p), hpa(q[0]), hpa(q[1])).0,
        TdxStatus::OPERAND_INVALID
    );
    assert_eq!(
        pamt_remove_raw(&sim, range_rcx(p)).0,
        TdxStatus::OPERAND_INVALID
    );
    // A TD builds, maps and tears down with no pair.
    let mut td = Td::build(&sim, Stage::Runnable);
    td.aug(&sim, 0, 0);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
    // On 1.5.01 the leaves do not exist at all.
    let old = host();
    assert_eq!(
        pamt_remove_raw(&old, range_rcx(p)).0,
        TdxStatus::OPERAND_INVALID
    );
}

// ---------------------------------------------------------------------------
// PAMT.ADD and PAMT.REMOVE
// ---------------------------------------------------------------------------

#[test]
fn pamt_add_checks_in_the_modules_order() {
    let sim = dhost();
    let target = page(&sim);
    let rcx = range_rcx(target);
    let [p0, p1] = pair_pages(&sim).map(hpa);
    let outside = hpa(outside_page(&sim));
    let hkid_bit = 1u64 << keyid_shift(&sim);
    let reserved = hpa(Pfn::new(dyn_layout()[0].pamt_4k().0 / PAGE));
    let cases: &[([u64; 3], TdxStatus)] = &[
        ([rcx & !7, p0, p1], invalid(RCX)),
        ([rcx | 2, p0, p1], invalid(RCX)),
        ([rcx | 8, p0, p1], invalid(RCX)),
        ([rcx + PAGE, p0, p1], invalid(RCX)),
        ([rcx | hkid_bit, p0, p1], invalid(RCX)),
        ([rcx | 1 << 52, p0, p1], invalid(RCX)),
        ([rcx, p0 | hkid_bit, p1 | hkid_bit], invalid(RDX)),
        ([rcx, p0 + 8, p1], invalid(RDX)),
        (
            [rcx, outside, p1 + 8],
            e(TdxStatus::OPERAND_ADDR_RANGE_ERROR, RDX),
        ),
        ([rcx, p0, p1 + 8], invalid(R8)),
        ([rcx, p0, outside], range_error(R8)),
        ([(OUTSIDE_TDMR) | 1, p0, p1], range_error(RCX)),
        ([rcx, reserved, p1], e(TdxStatus::PAGE_NOT_FREE, RDX)),
        ([rcx, p0, reserved], e(TdxStatus::PAGE_NOT_FREE, R8)),
        ([rcx, p0, p0], e(TdxStatus::PAGE_NOT_FREE, R8)),
    ];
    for &([c, d, r8], want) in cases {
        let (s, a) = pamt_add_raw(&sim, c, d, r8);
        assert_eq!(s, want, "PAMT.ADD {c:#x} {d:#x} {r8:#x}");
        // No output register: RCX, RDX, R8 as given.
        assert_eq!((a.rcx, a.rdx, a.r8), (c, d, r8));
    }
    // The range's 2M entry held shared (an explicit walk below it): BUSY.
    {
        let _g = sim
            .hold(
                ModuleLock::Pamt {
                    pfn: target,
                    level: TdxLevel::L2M,
                },
                LockMode::Shared,
            )
            .unwrap();
        assert_eq!(pamt_add_raw(&sim, rcx, p0, p1).0, busy(RCX));
    }
    // A pair page whose own range's 2M entry another leaf holds X.
    {
        let _g = sim
            .hold(
                ModuleLock::Pamt {
                    pfn: Pfn::new(p0 / PAGE),
                    level: TdxLevel::L2M,
                },
                LockMode::Exclusive,
            )
            .unwrap();
        assert_eq!(pamt_add_raw(&sim, rcx, p0, p1).0, busy(RDX));
    }
    let (s, a) = pamt_add_raw(&sim, rcx, p0, p1);
    ok("PAMT.ADD", s);
    assert_eq!((a.rcx, a.rdx, a.r8), (rcx, p0, p1));
    assert_eq!(
        sim.pamt_pair(target),
        Some(([Pfn::new(p0 / PAGE), Pfn::new(p1 / PAGE)], 0))
    );
    assert_eq!(
        sim.page_state(Pfn::new(p0 / PAGE)),
        Some(tdx_sim::PageState::Module)
    );
    // Again: the range has a pair.
    let [q0, q1] = pair_pages(&sim).map(hpa);
    assert_eq!(
        pamt_add_raw(&sim, rcx, q0, q1).0,
        e(TdxStatus::HPA_RANGE_NOT_FREE, RCX)
    );
    // A page that is a pair page already (bitmap), for another range.
    let other = range_rcx(Pfn::new(target.as_u64() + 512 * 8));
    assert_eq!(
        pamt_add_raw(&sim, other, p1, q1).0,
        e(TdxStatus::PAGE_NOT_FREE, RDX)
    );
    assert_eq!(
        pamt_add_raw(&sim, other, q0, p0).0,
        e(TdxStatus::PAGE_NOT_FREE, R8)
    );
    // A page in use by the module (its range has a pair, its entry is a TDR).
    let tdr = paired_page(&sim);
    ok("MNG.CREATE", mng_create(&sim, tdr, td_hkid(&sim)));
    assert_eq!(
        pamt_add_raw(&sim, other, hpa(tdr), q1).0,
        e(TdxStatus::PAGE_NOT_FREE, RDX)
    );
    // A pair page may lie inside the range it serves.
    let r = run(&sim, 512, 512).first();
    let (s, _) = pamt_add_raw(&sim, range_rcx(r), hpa(r) + 5 * PAGE, hpa(r) + 511 * PAGE);
    ok("PAMT.ADD inside", s);
    // The failed attempts left no bitmap bit behind (q0 and q1 still usable).
    let (s, _) = pamt_add_raw(&sim, other, q0, q1);
    ok("PAMT.ADD other", s);
    sim.check_invariants().unwrap();
}

#[test]
fn pamt_add_of_a_2m_page_range_is_hpa_range_not_free() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 2);
    let big = run(&sim, 512, 512).first();
    ok("AUG 2M", page_aug(&sim, info(0, 1), td.tdr, big).status);
    let [p0, p1] = pair_pages(&sim).map(hpa);
    assert_eq!(
        pamt_add_raw(&sim, range_rcx(big), p0, p1).0,
        e(TdxStatus::HPA_RANGE_NOT_FREE, RCX)
    );
    // A pair page inside a 2M TD page is not free.
    let other = range_rcx(unpaired(&sim));
    assert_eq!(
        pamt_add_raw(&sim, other, hpa(big) + PAGE, p1).0,
        e(TdxStatus::PAGE_NOT_FREE, RDX)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn pamt_remove_checks_in_the_modules_order() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 1);
    let page0 = run(&sim, 512, 512).first();
    let rcx = range_rcx(page0);
    assert_eq!(pamt_remove_raw(&sim, rcx & !7).0, invalid(RCX));
    assert_eq!(pamt_remove_raw(&sim, rcx + PAGE).0, invalid(RCX));
    assert_eq!(pamt_remove_raw(&sim, OUTSIDE_TDMR | 1).0, range_error(RCX));
    assert_eq!(
        pamt_remove_raw(&sim, rcx).0,
        e(TdxStatus::NO_PAMT_PAGE_PAIR, RCX)
    );
    let pair = add_pair(&sim, page0);
    // A page in the first 1 MiB: page 0 of the pair is not empty (operand 0).
    ok("AUG", page_aug(&sim, info(0, 0), td.tdr, page0).status);
    assert_eq!(count(&sim, page0), 1);
    let (s, a) = pamt_remove_raw(&sim, rcx);
    assert_eq!(s, TdxStatus::PAMT_PAGE_NOT_EMPTY.with_operand(OperandId(0)));
    assert_eq!((a.rdx, a.r8), (0, 0), "no pair returned on failure");
    // Only the second half in use: operand 1.
    let hi = Pfn::new(page0.as_u64() + 300);
    ok("AUG", page_aug(&sim, info(PAGE, 0), td.tdr, hi).status);
    ok("REMOVE", page_remove(&sim, info(0, 0), td.tdr).status);
    assert_eq!(
        pamt_remove_raw(&sim, rcx).0,
        TdxStatus::PAMT_PAGE_NOT_EMPTY.with_operand(OperandId(1))
    );
    let c = page_remove(&sim, info(PAGE, 0), td.tdr);
    ok("REMOVE", c.status);
    assert!(c.out.pamt_removal_hint());
    assert_eq!(c.out.removed(), Some(hi));
    // The 2M entry held shared (a walk below it): BUSY.
    {
        let _g = sim
            .hold(
                ModuleLock::Pamt {
                    pfn: page0,
                    level: TdxLevel::L2M,
                },
                LockMode::Shared,
            )
            .unwrap();
        assert_eq!(pamt_remove_raw(&sim, rcx).0, busy(RCX));
    }
    let (s, a) = pamt_remove_raw(&sim, rcx);
    ok("PAMT.REMOVE", s);
    assert_eq!((a.rdx, a.r8), (hpa(pair[0]), hpa(pair[1])));
    assert_eq!(sim.pamt_pair(page0), None);
    assert_eq!(sim.page_state(pair[0]), Some(tdx_sim::PageState::Host));
    // The pages were the module's under the global KeyID: write them back
    // before the host reuses them.
    for p in pair {
        ok("WBINVD pair", wbinvd(&sim, p, global_hkid(&sim)));
    }
    // The returned pages can serve again.
    let (s, _) = pamt_add_raw(&sim, rcx, hpa(pair[1]), hpa(pair[0]));
    ok("PAMT.ADD again", s);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDX_MISSING_PAMT_PAGE_PAIR
// ---------------------------------------------------------------------------

fn missing(o: OperandId) -> TdxStatus {
    e(TdxStatus::MISSING_PAMT_PAGE_PAIR, o)
}

#[test]
fn missing_pair_is_recoverable() {
    let s = TdxStatus::MISSING_PAMT_PAGE_PAIR;
    assert_eq!(s.raw(), 0x8000_0308_0000_0000);
    assert!(s.is_error());
    assert!(!s.is_fatal());
}

/// A fresh page whose 2 MiB range has no pair (a new 2 MiB block).
fn unpaired(sim: &Simulator) -> Pfn {
    let p = run(sim, 512, 512).first();
    assert_eq!(sim.pamt_pair(p), None);
    p
}

#[test]
fn every_leaf_that_takes_a_4k_page_needs_its_ranges_pair() {
    let sim = dhost();
    let hkid = td_hkid(&sim);

    // MNG.CREATE: RDX is checked first, then RCX.
    let tdr = unpaired(&sim);
    assert_eq!(mng_create(&sim, tdr, 0), invalid(RDX));
    let (s, a) = raw(
        &sim,
        Leaf::MNG_CREATE.v0(),
        [hpa(tdr), hkid.into(), 0, 0, 0, 0],
    );
    assert_eq!(s, missing(RCX));
    assert_eq!((a.rcx, a.rdx), (hpa(tdr), hkid.into()));
    assert_eq!(sim.kot_state(hkid), tdx_sim::KotState::Free);
    add_pair(&sim, tdr);
    ok("MNG.CREATE", mng_create(&sim, tdr, hkid));
    assert_eq!(count(&sim, tdr), 1);
    on_each_package(&sim, &mut |_, _| {
        ok("KEY.CONFIG", mng_key_config(&sim, tdr))
    });

    // MNG.ADDCX.
    for _ in 0..6 {
        let p = unpaired(&sim);
        let (s, a) = raw(&sim, Leaf::MNG_ADDCX.v0(), [hpa(p), hpa(tdr), 0, 0, 0, 0]);
        assert_eq!(s, missing(RCX));
        assert_eq!((a.rcx, a.rdx), (hpa(p), hpa(tdr)));
        add_pair(&sim, p);
        ok("MNG.ADDCX", mng_addcx(&sim, p, tdr));
        assert_eq!(count(&sim, p), 1);
    }
    ok(
        "MNG.INIT",
        mng_init(&sim, tdr, Params::new().write(&sim)).status,
    );

    // VP.CREATE, VP.ADDCX.
    let tdvpr = unpaired(&sim);
    let (s, a) = raw(
        &sim,
        Leaf::VP_CREATE.v0(),
        [hpa(tdvpr), hpa(tdr), 0, 0, 0, 0],
    );
    assert_eq!(s, missing(RCX));
    assert_eq!((a.rcx, a.rdx), (hpa(tdvpr), hpa(tdr)));
    add_pair(&sim, tdvpr);
    ok("VP.CREATE", vp_create(&sim, tdvpr, tdr));
    for _ in 0..5 {
        let p = unpaired(&sim);
        let (s, a) = raw(&sim, Leaf::VP_ADDCX.v0(), [hpa(p), hpa(tdvpr), 0, 0, 0, 0]);
        assert_eq!(s, missing(RCX));
        assert_eq!((a.rcx, a.rdx), (hpa(p), hpa(tdvpr)));
        add_pair(&sim, p);
        ok("VP.ADDCX", vp_addcx(&sim, p, tdvpr));
    }
    ok("VP.INIT", on(&sim, 1, || vp_init(&sim, tdvpr, 0, 0)));

    // SEPT.ADD (version 0: RCX/RDX cleared, R8 as given).
    let td = DTd { tdr, tdvpr };
    let sept = unpaired(&sim);
    let (s, a) = raw(
        &sim,
        Leaf::MEM_SEPT_ADD.v0(),
        [pinfo(0, 3), hpa(tdr), hpa(sept), 0, 0, 0],
    );
    assert_eq!(s, missing(R8));
    assert_eq!((a.rcx, a.rdx, a.r8), (0, 0, hpa(sept)));
    // Version 1 writes R8 back with bit 63 clear (not taken).
    let (s, a) = raw(
        &sim,
        Leaf::MEM_SEPT_ADD.v(1),
        [
            pinfo(0, 3),
            hpa(tdr),
            hpa(sept),
            u64::MAX,
            u64::MAX,
            u64::MAX,
        ],
    );
    assert_eq!(s, missing(R8));
    assert_eq!(a.r8, hpa(sept));
    add_pair(&sim, sept);
    ok(
        "SEPT.ADD",
        sept_add(&sim, info(0, 3), TdrAndFlags::with_tdr(tdr, false), sept).status,
    );
    assert_eq!(count(&sim, sept), 1);
    td.map_sept(&sim, 0, 1);

    // PAGE.ADD: after the S-EPT walk and the source check.
    let source = page(&sim);
    let target = unpaired(&sim);
    let (s, a) = raw(
        &sim,
        Leaf::MEM_PAGE_ADD.v0(),
        [0, hpa(tdr), hpa(target), hpa(source) + 8, 0, 0],
    );
    assert_eq!(s, invalid(OperandId::R9));
    assert_eq!((a.rcx, a.rdx), (0, 0));
    let (s, a) = raw(
        &sim,
        Leaf::MEM_PAGE_ADD.v0(),
        [0, hpa(tdr), hpa(target), hpa(source), 0, 0],
    );
    assert_eq!(s, missing(R8));
    assert_eq!((a.rcx, a.rdx, a.r8), (0, 0, hpa(target)));
    add_pair(&sim, target);
    ok(
        "PAGE.ADD",
        page_add(&sim, info(0, 0), tdr, target, source).status,
    );
    assert_eq!(count(&sim, target), 1);

    // PAGE.AUG at 4K: after the entry-state check.
    let aug = unpaired(&sim);
    let c = page_aug(&sim, info(0, 0), tdr, aug);
    assert_eq!(c.status, e(TdxStatus::EPT_ENTRY_STATE_INCORRECT, RCX));
    let (s, a) = raw(
        &sim,
        Leaf::MEM_PAGE_AUG.v0(),
        [pinfo(PAGE, 0), hpa(tdr), hpa(aug), 0, 0, 0],
    );
    assert_eq!(s, missing(R8));
    assert_eq!((a.rcx, a.rdx, a.r8), (0, 0, hpa(aug)));
    add_pair(&sim, aug);
    ok("AUG", page_aug(&sim, info(PAGE, 0), tdr, aug).status);
    assert_eq!(count(&sim, aug), 1);

    // DEMOTE: the new S-EPT page (R8), after the leaf checks.
    td.map_sept(&sim, 4 * MIB, 2);
    let big = run(&sim, 512, 512).first();
    ok("AUG 2M", page_aug(&sim, info(4 * MIB, 1), tdr, big).status);
    let new_sept = unpaired(&sim);
    let pair = pair_pages(&sim);
    let c = demote(&sim, 4 * MIB, tdr, new_sept, pair);
    assert_eq!(c.status, missing(R8));
    assert_eq!(c.out, SeptOut::default());
    add_pair(&sim, new_sept);
    ok("DEMOTE", demote(&sim, 4 * MIB, tdr, new_sept, pair).status);
    assert_eq!(count(&sim, new_sept), 1);
    assert_eq!(sim.pamt_pair(big), Some((pair, 512)));
    assert_eq!(sim.violations(), vec![]);
    sim.check_invariants().unwrap();
}

fn demote(sim: &Simulator, gpa: u64, tdr: Pfn, sept: Pfn, pair: [Pfn; 2]) -> Completion<SeptOut> {
    // SAFETY: simulated memory.
    unsafe { leaf::tdh_mem_page_demote_pair(sim, info(gpa, 1), tdr, sept, pair) }
}

fn promote(sim: &Simulator, gpa: u64, tdr: Pfn) -> Completion<leaf::PromoteOut> {
    // SAFETY: simulated memory.
    unsafe { leaf::tdh_mem_page_promote_pair(sim, info(gpa, 1), tdr) }
}

#[test]
fn wbinvd_and_rdmd_of_pair_and_reserved_pages() {
    let sim = dhost();
    let p = page(&sim);
    let pair = add_pair(&sim, p);
    let g = global_hkid(&sim);
    assert_eq!(wbinvd(&sim, pair[0], g), metadata(RCX));
    let reserved = Pfn::new(dyn_layout()[0].pamt_4k().0 / PAGE);
    assert_eq!(wbinvd(&sim, reserved, g), metadata(RCX));
    // A free page whose range has no pair passes (the walk may end at 2M).
    ok("WBINVD", wbinvd(&sim, unpaired(&sim), g));
    // RDMD: pair and reserved pages read as PT_PAMT.
    assert_eq!(rdmd(&sim, pair[1]).0, PamtPageType::PAMT);
    assert_eq!(rdmd(&sim, reserved).0, PamtPageType::PAMT);
    // A 2M query of the node: PT_PAMT, non-leaf (bit 63), the pair in
    // R10/R11, no owner.
    let (s, a) = raw(
        &sim,
        Leaf::PHYMEM_PAGE_RDMD.v0(),
        [range_rcx(p), 0, 0, 0, 0, 0],
    );
    ok("RDMD 2M", s);
    assert_eq!(a.rcx, 15 | 1 << 63);
    assert_eq!(
        (a.rdx, a.r8, a.r10, a.r11),
        (0, 1, hpa(pair[0]), hpa(pair[1]))
    );
    // A 4K query of a free page in a range without a pair ends at its 2M
    // entry.
    let (s, a) = raw(
        &sim,
        Leaf::PHYMEM_PAGE_RDMD.v0(),
        [hpa(unpaired(&sim)), 0, 0, 0, 0, 0],
    );
    ok("RDMD", s);
    assert_eq!((a.rcx, a.r8), (0, 1));
    // Misaligned for its level.
    let (s, _) = raw(
        &sim,
        Leaf::PHYMEM_PAGE_RDMD.v0(),
        [range_rcx(p) + PAGE, 0, 0, 0, 0, 0],
    );
    assert_eq!(s, invalid(RCX));
    // RECLAIM of a page of a range without a pair: the free 2M entry.
    let c = page_reclaim(&sim, unpaired(&sim));
    assert_eq!(c.status, metadata(RCX));
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Counts and the removal hint
// ---------------------------------------------------------------------------

#[test]
fn counts_and_removal_hints() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 1);
    // Two pages in one fresh range.
    let a = unpaired(&sim);
    let b = Pfn::new(a.as_u64() + 1);
    add_pair(&sim, a);
    ok("AUG a", page_aug(&sim, info(0, 0), td.tdr, a).status);
    ok("AUG b", page_aug(&sim, info(PAGE, 0), td.tdr, b).status);
    assert_eq!(count(&sim, a), 2);
    let c = page_remove(&sim, info(0, 0), td.tdr);
    ok("REMOVE", c.status);
    assert!(!c.out.pamt_removal_hint());
    assert_eq!(c.out.rcx, hpa(a));
    let c = page_remove(&sim, info(PAGE, 0), td.tdr);
    ok("REMOVE", c.status);
    assert_eq!(c.out.rcx, hpa(b) | PAMT_REMOVAL_HINT);
    assert_eq!(c.out.removed(), Some(b));
    assert_eq!(count(&sim, a), 0);
    // SEPT.REMOVE: the last S-EPT page of its range.
    // A fresh level-2 entry (1 GiB) under the level-3 page of GPA 0.
    let gpa = GIB;
    let l2 = unpaired(&sim);
    add_pair(&sim, l2);
    ok(
        "SEPT.ADD",
        sept_add(&sim, info(gpa, 2), TdrAndFlags::with_tdr(td.tdr, false), l2).status,
    );
    let c = sept_remove(&sim, info(gpa, 2), td.tdr);
    ok("SEPT.REMOVE", c.status);
    assert_eq!(c.out.rcx, hpa(l2) | PAMT_REMOVAL_HINT);
    assert_eq!(c.out.removed(), Some(l2));
    // RECLAIM in teardown: R9 carries the hint.
    let solo = unpaired(&sim);
    add_pair(&sim, solo);
    ok(
        "AUG",
        page_aug(&sim, info(2 * PAGE, 0), td.tdr, solo).status,
    );
    teardown_prefix(&sim, &td);
    let c = page_reclaim(&sim, solo);
    ok("RECLAIM", c.status);
    assert!(c.out.pamt_removal_hint);
    let (s, regs) = raw(
        &sim,
        Leaf::PHYMEM_PAGE_RECLAIM.v0(),
        [hpa(td.tdr), 0, 0, 0, 0, 0],
    );
    // The TDR still has children: no reclaim, R9 0.
    assert_eq!(s, TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
    assert_eq!(regs.r9, 0);
    sim.check_invariants().unwrap();
}

/// VP.FLUSH, VPFLUSHDONE, CACHE.WB, KEY.FREEID: the TD in teardown.
fn teardown_prefix(sim: &Simulator, td: &DTd) {
    let tdvpr = td.tdvpr;
    ok("VP.FLUSH", on(sim, 1, || vp_flush(sim, tdvpr)));
    ok("VPFLUSHDONE", mng_vpflushdone(sim, td.tdr));
    Td::cache_wb_all(sim);
    ok("KEY.FREEID", mng_key_freeid(sim, td.tdr));
}

// ---------------------------------------------------------------------------
// 2M PAGE.AUG, DEMOTE and PROMOTE
// ---------------------------------------------------------------------------

#[test]
fn aug_2m_needs_a_range_without_pair_or_pamt_pages() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 2);
    let big = unpaired(&sim);
    let pair = add_pair(&sim, big);
    assert_eq!(page_aug(&sim, info(0, 1), td.tdr, big).status, metadata(R8));
    let (s, _) = pamt_remove_raw(&sim, range_rcx(big));
    ok("PAMT.REMOVE", s);
    // The range hosts another range's pair page.
    let other = unpaired(&sim);
    let (s, _) = pamt_add_raw(&sim, range_rcx(other), hpa(big) + 7 * PAGE, hpa(pair[1]));
    ok("PAMT.ADD", s);
    assert_eq!(page_aug(&sim, info(0, 1), td.tdr, big).status, metadata(R8));
    let (s, _) = pamt_remove_raw(&sim, range_rcx(other));
    ok("PAMT.REMOVE", s);
    // Now free of pairs: the 2M AUG needs none and counts nothing.
    ok("AUG 2M", page_aug(&sim, info(0, 1), td.tdr, big).status);
    assert_eq!(sim.pamt_pair(big), None);
    for p in [Pfn::new(big.as_u64() + 7), pair[0], pair[1]] {
        if sim.page_state(p) == Some(tdx_sim::PageState::Host) {
            ok("WBINVD", wbinvd(&sim, p, global_hkid(&sim)));
        }
    }
    sim.check_invariants().unwrap();
}

#[test]
fn demote_takes_a_pair_and_promote_gives_it_back() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 2);
    let big = unpaired(&sim);
    ok("AUG 2M", page_aug(&sim, info(0, 1), td.tdr, big).status);
    let sept = paired_page(&sim);
    let pair = pair_pages(&sim);
    let outside = outside_page(&sim);
    let busy_page = paired_page(&sim);
    ok("SEPT.ADD", {
        // Make busy_page a module page: an S-EPT page elsewhere.
        sept_add(
            &sim,
            info(GIB, 2),
            TdrAndFlags::with_tdr(td.tdr, false),
            busy_page,
        )
        .status
    });
    let before = count(&sim, sept);
    let cases: [([Pfn; 2], TdxStatus); 6] = [
        ([outside, pair[1]], range_error(R12)),
        ([pair[0], outside], range_error(R13)),
        ([busy_page, pair[1]], e(TdxStatus::PAGE_NOT_FREE, R12)),
        ([pair[0], busy_page], e(TdxStatus::PAGE_NOT_FREE, R13)),
        ([pair[0], pair[0]], e(TdxStatus::PAGE_NOT_FREE, R13)),
        // Inside the demoted range: its 2M entry is held X by the leaf.
        ([Pfn::new(big.as_u64() + 3), pair[1]], busy(R12)),
    ];
    for (p, want) in cases {
        let c = demote(&sim, 0, td.tdr, sept, p);
        assert_eq!(c.status, want, "DEMOTE with {p:?}");
        assert_eq!(sim.pamt_pair(big), None);
    }
    // R12/R13 malformed: OPERAND_INVALID (raw registers), R12 first.
    let saved = |r12: u64, r13: u64| {
        let mut args = SeamcallArgs {
            rcx: pinfo(0, 1),
            rdx: hpa(td.tdr),
            r8: hpa(sept),
            r9: u64::MAX,
            r10: u64::MAX,
            r11: u64::MAX,
            r12,
            r13,
            ..SeamcallArgs::ZERO
        };
        // SAFETY: simulated memory.
        let s = unsafe {
            tdx_sys::Seamcall::seamcall(
                &sim,
                Leaf::MEM_PAGE_DEMOTE.v0().rax(),
                &mut args,
                tdx_sys::RegShape::SavedRet,
            )
        };
        // R8..R13 as given.
        assert_eq!((args.r8, args.r12, args.r13), (hpa(sept), r12, r13));
        s
    };
    let hkid_bit = 1 << keyid_shift(&sim);
    assert_eq!(
        saved(hpa(pair[0]) + 8, hpa(pair[1]) | hkid_bit),
        invalid(R12)
    );
    assert_eq!(saved(hpa(pair[0]), hpa(pair[1]) | hkid_bit), invalid(R13));
    assert_eq!(saved(hpa(pair[0]) | 1 << 60, hpa(pair[1])), invalid(R12));
    // The 2M entry held by another LP: BUSY|RCX before the pair checks.
    {
        let _g = sim
            .hold(
                ModuleLock::Pamt {
                    pfn: big,
                    level: TdxLevel::L2M,
                },
                LockMode::Shared,
            )
            .unwrap();
        assert_eq!(demote(&sim, 0, td.tdr, sept, pair).status, busy(RCX));
    }
    let c = demote(&sim, 0, td.tdr, sept, pair);
    ok("DEMOTE", c.status);
    assert_eq!(sim.pamt_pair(big), Some((pair, 512)));
    assert_eq!(count(&sim, sept), before + 1);
    assert_eq!(
        sept_state(&sim, info(PAGE, 0), td.tdr).0,
        SeptState::PENDING
    );
    // PAMT.REMOVE cannot take it: 512 pages in use.
    assert_eq!(
        pamt_remove_raw(&sim, range_rcx(big)).0,
        TdxStatus::PAMT_PAGE_NOT_EMPTY.with_operand(OperandId(0))
    );
    sim.check_invariants().unwrap();
    // PROMOTE hands the pair back in R12/R13 and frees the S-EPT page.
    let c = promote(&sim, 0, td.tdr);
    ok("PROMOTE", c.status);
    assert_eq!(c.out.pair, Some(pair));
    assert_eq!(c.out.sept.removed(), Some(sept));
    assert_eq!(c.out.sept.pamt_removal_hint(), before == 0);
    assert_eq!(sim.pamt_pair(big), None);
    assert_eq!(count(&sim, sept), before);
    for p in pair {
        assert_eq!(sim.page_state(p), Some(tdx_sim::PageState::Host));
    }
    // A PROMOTE issued in the narrow (RCX-R11) shape would not see R12/R13:
    // the simulator's Ret shape drops them, but a real module writes them,
    // so on the CPU they would change registers the caller keeps values in.
    // That is why tdx-sys issues every PROMOTE in the all-register shape.
    sim.check_invariants().unwrap();
}

fn sept_state(sim: &Simulator, i: tdx_types::regs::PageInfo, tdr: Pfn) -> (SeptState, u64) {
    let c = sept_rd(sim, i, tdr);
    ok("SEPT.RD", c.status);
    (c.out.details().level_state.state(), c.out.rcx)
}

// ---------------------------------------------------------------------------
// Locks: the 2M node, BUSY
// ---------------------------------------------------------------------------

#[test]
fn the_2m_node_is_held_shared_by_4k_walks_and_exclusive_by_add_remove() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 1);
    let p = unpaired(&sim);
    add_pair(&sim, p);
    let node = ModuleLock::Pamt {
        pfn: p,
        level: TdxLevel::L2M,
    };
    // ADD/REMOVE/PROMOTE/DEMOTE hold it X: an explicit 4K check below it
    // is BUSY with its own operand.
    {
        let _g = sim.hold(node, LockMode::Exclusive).unwrap();
        let (s, a) = raw(
            &sim,
            Leaf::MEM_PAGE_AUG.v0(),
            [pinfo(0, 0), hpa(td.tdr), hpa(p), 0, 0, 0],
        );
        assert_eq!(s, busy(R8));
        assert_eq!((a.rcx, a.rdx), (0, 0));
        assert_eq!(mng_create(&sim, p, td_hkid(&sim) + 1), busy(RCX));
    }
    // A leaf whose explicit walk is below it (paused after its checks)
    // holds it S: PAMT.REMOVE is BUSY|RCX, and so is PAMT.ADD of the range.
    let pause = sim.pause_next(Leaf::MEM_PAGE_AUG);
    let tdr = td.tdr;
    thread::scope(|sc| {
        let h = sc.spawn(|| {
            sim.set_lp(2);
            page_aug(&sim, info(0, 0), tdr, p).status
        });
        assert_eq!(pause.wait_entered(), None);
        assert_eq!(pamt_remove_raw(&sim, range_rcx(p)).0, busy(RCX));
        let [q0, q1] = pair_pages(&sim).map(hpa);
        assert_eq!(pamt_add_raw(&sim, range_rcx(p), q0, q1).0, busy(RCX));
        pause.release();
        ok("AUG", h.join().unwrap());
    });
    assert_eq!(count(&sim, p), 1);
    sim.check_invariants().unwrap();
}

#[test]
fn pamt_remove_while_a_removal_runs_is_caught() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 1);
    let p = unpaired(&sim);
    add_pair(&sim, p);
    ok("AUG", page_aug(&sim, info(0, 0), td.tdr, p).status);
    // PAGE.REMOVE holds only the page's 4K entry (no node lock): paused
    // after its checks, PAMT.REMOVE gets past the node lock and meets it.
    let pause = sim.pause_next(Leaf::MEM_PAGE_REMOVE);
    let tdr = td.tdr;
    thread::scope(|sc| {
        let h = sc.spawn(|| {
            sim.set_lp(2);
            page_remove(&sim, info(0, 0), tdr)
        });
        assert_eq!(pause.wait_entered(), None);
        // The benign interleaving: the page still reads in use.
        assert_eq!(
            pamt_remove_raw(&sim, range_rcx(p)).0,
            TdxStatus::PAMT_PAGE_NOT_EMPTY.with_operand(OperandId(0))
        );
        pause.release();
        let c = h.join().unwrap();
        ok("REMOVE", c.status);
        assert!(c.out.pamt_removal_hint());
    });
    assert_eq!(
        sim.violations(),
        vec![Violation::PamtRemoveRacedRemoval {
            range: hpa(p),
            pfn: p.as_u64(),
        }]
    );
}

// ---------------------------------------------------------------------------
// Invariants
// ---------------------------------------------------------------------------

#[test]
fn invariants_hold_through_a_mixed_run() {
    let sim = dhost();
    let td = DTd::build(&sim);
    td.map_sept(&sim, 0, 1);
    let mut pages = Vec::new();
    for i in 0..20 {
        let p = paired_run(&sim, 1);
        pages.push((p, count(&sim, p)));
        ok("AUG", page_aug(&sim, info(i * PAGE, 0), td.tdr, p).status);
    }
    // Ten more in a range of their own.
    let own = unpaired(&sim);
    add_pair(&sim, own);
    for i in 0..10 {
        let p = Pfn::new(own.as_u64() + i);
        ok(
            "AUG",
            page_aug(&sim, info((20 + i) * PAGE, 0), td.tdr, p).status,
        );
    }
    assert_eq!(count(&sim, own), 10);
    sim.check_invariants().unwrap();
    let mut hints = 0;
    for i in 0..30 {
        let c = page_remove(&sim, info(i * PAGE, 0), td.tdr);
        ok("REMOVE", c.status);
        hints += u32::from(c.out.pamt_removal_hint());
    }
    // Only the range of its own went to 0 (the others hold TD pages).
    assert_eq!(hints, 1);
    assert_eq!(count(&sim, own), 0);
    let (p, before) = pages[0];
    assert_eq!(count(&sim, p), before);
    sim.check_invariants().unwrap();
}

#[test]
fn teardown_returns_every_pair() {
    let sim = dhost();
    let before = sim.accounting();
    let hkid = td_hkid(&sim);
    // Every 4K page handed to the module, and every pair added.
    let mut module_pages: Vec<Pfn> = Vec::new();
    let mut pairs: Vec<(Pfn, [Pfn; 2])> = Vec::new();
    let give = |sim: &Simulator, pairs: &mut Vec<(Pfn, [Pfn; 2])>| {
        let p = page(sim);
        if sim.pamt_pair(p).is_none() {
            pairs.push((p, add_pair(sim, p)));
        }
        p
    };
    let tdr = give(&sim, &mut pairs);
    ok("MNG.CREATE", mng_create(&sim, tdr, hkid));
    on_each_package(&sim, &mut |_, _| {
        ok("KEY.CONFIG", mng_key_config(&sim, tdr))
    });
    for _ in 0..6 {
        let p = give(&sim, &mut pairs);
        ok("MNG.ADDCX", mng_addcx(&sim, p, tdr));
        module_pages.push(p);
    }
    ok(
        "MNG.INIT",
        mng_init(&sim, tdr, Params::new().write(&sim)).status,
    );
    let tdvpr = give(&sim, &mut pairs);
    ok("VP.CREATE", vp_create(&sim, tdvpr, tdr));
    module_pages.push(tdvpr);
    for _ in 0..5 {
        let p = give(&sim, &mut pairs);
        ok("VP.ADDCX", vp_addcx(&sim, p, tdvpr));
        module_pages.push(p);
    }
    ok("VP.INIT", on(&sim, 1, || vp_init(&sim, tdvpr, 0, 0)));
    for (gpa, level) in [(0, 3), (0, 2), (0, 1), (2 * MIB, 1)] {
        let p = give(&sim, &mut pairs);
        let c = sept_add(&sim, info(gpa, level), TdrAndFlags::with_tdr(tdr, false), p);
        ok("SEPT.ADD", c.status);
        module_pages.push(p);
    }
    // 4K pages in a range of their own, and a 2M page demoted with a pair.
    let own = unpaired(&sim);
    pairs.push((own, add_pair(&sim, own)));
    for i in 0..8 {
        let p = Pfn::new(own.as_u64() + i);
        ok("AUG", page_aug(&sim, info(i * PAGE, 0), tdr, p).status);
        module_pages.push(p);
    }
    let big = unpaired(&sim);
    ok("AUG 2M", page_aug(&sim, info(4 * MIB, 1), tdr, big).status);
    let sept = give(&sim, &mut pairs);
    let demote_pair = pair_pages(&sim);
    ok(
        "DEMOTE",
        demote(&sim, 4 * MIB, tdr, sept, demote_pair).status,
    );
    module_pages.push(sept);
    pairs.push((big, demote_pair));
    module_pages.extend((0..512).map(|i| Pfn::new(big.as_u64() + i)));
    sim.check_invariants().unwrap();

    // Teardown: every page reclaimed, each range's last one with the hint.
    ok("VP.FLUSH", on(&sim, 1, || vp_flush(&sim, tdvpr)));
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, tdr));
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, tdr));
    let mut hinted = std::collections::BTreeSet::new();
    for &p in module_pages.iter().chain([&tdr]) {
        let c = page_reclaim(&sim, p);
        ok("RECLAIM", c.status);
        if c.out.pamt_removal_hint {
            assert!(hinted.insert(p.as_u64() >> 9), "two hints for one range");
        }
    }
    // Every range with a pair is empty now, and got exactly one hint.
    for &(p, pair) in &pairs {
        assert_eq!(sim.pamt_pair(p), Some((pair, 0)));
        assert!(hinted.contains(&(p.as_u64() >> 9)), "no hint for {p:?}");
    }
    assert_eq!(hinted.len(), pairs.len());
    let g = global_hkid(&sim);
    for &(p, pair) in &pairs {
        let (s, a) = pamt_remove_raw(&sim, range_rcx(p));
        ok("PAMT.REMOVE", s);
        assert_eq!((a.rdx, a.r8), (hpa(pair[0]), hpa(pair[1])));
        for q in pair {
            ok("WBINVD pair", wbinvd(&sim, q, g));
        }
    }
    ok("WBINVD TDR", wbinvd(&sim, tdr, g));
    assert_eq!(sim.accounting().module, before.module);
    sim.check_invariants().unwrap();
}

#[test]
fn a_removed_pair_must_be_written_back_before_reuse() {
    let sim = dhost();
    let p = unpaired(&sim);
    let pair = add_pair(&sim, p);
    let (s, _) = pamt_remove_raw(&sim, range_rcx(p));
    ok("PAMT.REMOVE", s);
    // pair[0] flushed with the global KeyID, pair[1] freed as it is.
    ok("WBINVD", wbinvd(&sim, pair[0], global_hkid(&sim)));
    free_page(&sim, pair[0]);
    assert_eq!(sim.violations(), vec![]);
    free_page(&sim, pair[1]);
    assert!(matches!(
        sim.violations()[..],
        [Violation::PrivateLinesReachedHost { pfn, .. }] if pfn == pair[1].as_u64()
    ));
}

#[test]
fn racing_pamt_adds_of_one_range_install_one_pair() {
    for round in 0..20 {
        let sim = dhost();
        let target = unpaired(&sim);
        let rcx = range_rcx(target);
        let pairs: Vec<[Pfn; 2]> = (0..4).map(|_| pair_pages(&sim)).collect();
        let results: Vec<TdxStatus> = thread::scope(|sc| {
            let hs: Vec<_> = pairs
                .iter()
                .enumerate()
                .map(|(i, &[p0, p1])| {
                    let sim = &sim;
                    sc.spawn(move || {
                        sim.set_lp(i as u32);
                        loop {
                            let (s, _) = pamt_add_raw(sim, rcx, hpa(p0), hpa(p1));
                            if s != busy(RCX) {
                                return s;
                            }
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..4)
            .filter(|&i| results[i] == TdxStatus::SUCCESS)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for (i, s) in results.iter().enumerate() {
            if i != won[0] {
                assert_eq!(*s, e(TdxStatus::HPA_RANGE_NOT_FREE, RCX));
                assert_eq!(sim.page_state(pairs[i][0]), Some(tdx_sim::PageState::Host));
            }
        }
        assert_eq!(sim.pamt_pair(target), Some((pairs[won[0]], 0)));
        sim.check_invariants().unwrap();
    }
}

#[test]
fn injected_pamt_faults_change_nothing() {
    let sim = dhost();
    let p = unpaired(&sim);
    let [q0, q1] = pair_pages(&sim);
    let (transient, resumable) = tdx_sim::transient_statuses(Leaf::PHYMEM_PAMT_ADD);
    assert!(!resumable);
    assert!(transient.contains(&busy(R8)));
    sim.inject(tdx_sim::Fault::status(Leaf::PHYMEM_PAMT_ADD, 1, busy(RCX)));
    assert_eq!(
        pamt_add_raw(&sim, range_rcx(p), hpa(q0), hpa(q1)).0,
        busy(RCX)
    );
    assert_eq!(sim.pamt_pair(p), None);
    assert_eq!(sim.page_state(q0), Some(tdx_sim::PageState::Host));
    ok(
        "PAMT.ADD",
        pamt_add_raw(&sim, range_rcx(p), hpa(q0), hpa(q1)).0,
    );
    sim.inject(tdx_sim::Fault::status(
        Leaf::PHYMEM_PAMT_REMOVE,
        1,
        busy(RCX),
    ));
    let (s, a) = pamt_remove_raw(&sim, range_rcx(p));
    assert_eq!((s, a.rdx, a.r8), (busy(RCX), 0, 0));
    assert_eq!(sim.pamt_pair(p), Some(([q0, q1], 0)));
    sim.check_invariants().unwrap();
}

#[test]
fn a_dynamic_pamt_trace_replays() {
    let s = Simulator::new(desc(Profile::tdx_1_5_16())).unwrap();
    let rec = tdx_sim::Recorder::for_simulator(&s, Vec::new()).unwrap();
    testkit::bring_up_on(
        &rec,
        &Profile::tdx_1_5_16(),
        &dyn_layout(),
        BringUpOptions {
            dynamic_pamt: true,
            ..Default::default()
        },
    );
    let range = rec
        .alloc_pages(512, 512, Placement::Anywhere)
        .unwrap()
        .first();
    let pair = rec.alloc_pages(2, 1, Placement::Anywhere).unwrap().first();
    let args = |rcx, rdx, r8| SeamcallArgs::regs6(rcx, rdx, r8, 0, 0, 0);
    let mut a = args(range_rcx(range), hpa(pair), hpa(pair) + PAGE);
    // SAFETY: the recorder ends in the simulator; simulated memory.
    let st = unsafe {
        tdx_sys::Seamcall::seamcall(
            &rec,
            Leaf::PHYMEM_PAMT_ADD.v0().rax(),
            &mut a,
            tdx_sys::RegShape::NoOutputs,
        )
    };
    ok("PAMT.ADD", st);
    let mut a = args(range_rcx(range), 0, 0);
    // SAFETY: as above.
    let st = unsafe {
        tdx_sys::Seamcall::seamcall(
            &rec,
            Leaf::PHYMEM_PAMT_REMOVE.v0().rax(),
            &mut a,
            tdx_sys::RegShape::Ret,
        )
    };
    ok("PAMT.REMOVE", st);
    assert_eq!((a.rdx, a.r8), (hpa(pair), hpa(pair) + PAGE));
    let text = rec.finish().unwrap();
    let trace = tdx_sim::Trace::parse(text.as_slice()).unwrap();
    let replayed = trace.simulator().unwrap();
    let summary = trace.run(&replayed, &mut Vec::new()).unwrap();
    assert!(summary.passed(), "{summary}");
    assert!(replayed.dynamic_pamt());
    assert_eq!(replayed.stats().seamcalls, s.stats().seamcalls);
}
