//! Trust Domains through the safe API (`tdx::api::td`) on the simulator:
//!
//! - a whole TD: create, keys on every package, TDCS, init, two vCPUs,
//!   measured and unmeasured initial pages, finalize (MRTD equals the
//!   offline calculator's), runtime mapping at 4K and 2M accepted by the
//!   guest, unmapping, teardown; every page comes back;
//! - teardown from every earlier state, and by dropping, loses nothing;
//! - refusals found by arithmetic or against SysInfo before any SEAMCALL;
//! - faults in teardown leaves: retried when busy, otherwise typed errors
//!   and a report of what was leaked and why, never a panic, and the
//!   simulator's accounting agrees with the report;
//! - BUSY past the TD's retry policy is a typed contention error with the
//!   frame back; a failed 1G mapping says where every 2M part is.
//!
//! Every test ends with the simulator's invariants and no rule violation.

// UNSAFETY: the tests hand frames they allocated from the simulator to TDs
// (`GuestFrame::new`, the caller's promise) and free them afterwards.
#![allow(unsafe_code)]

use std::cell::Cell;

mod td_host;

use td_host::{assert_back_to, calls, frames, give_frames_back};
use tdx::{
    Gpa, Leaf, Pfn, Size1G, Size2M, Size4K, TdxStatus,
    api::{
        ExtInited, InitialRcx, TdxModule, X2ApicId,
        measure::{self, InitialPage},
        plan::{MemRange, PlanInput},
        td::{
            Finalized, GuestFrame, Initialized, Map1gLeft, Operand, PageRole, ParamsError, Td,
            TdError, TdHost, TdHostRef, TeardownReport,
        },
    },
    types::{
        PfnRun,
        abi::{EptPageWalk, EptpControls, TdParams},
    },
};
use tdx_sim::{Fault, MachineDesc, Profile, Simulator, SysState};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

type Module<'s> = TdxModule<ExtInited, &'s Simulator, &'s Simulator>;

fn sim() -> Simulator {
    sim_with(false)
}

/// Two packages of two CPUs, 4 GiB; `pw_mce`: the partial-write erratum.
fn sim_with(pw_mce: bool) -> Simulator {
    let mut d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
        .with_cpus(2, 2)
        .with_profile(td_host::profile(Profile::tdx_1_5()));
    d.errata.tdx_pw_mce = pw_mce;
    Simulator::new(d).unwrap()
}

fn ready(sim: &Simulator) -> Module<'_> {
    ready_on(sim, sim)
}

/// The simulator's module brought up through `backend`.
fn ready_on<'a, B: tdx::sys::Seamcall + Sync + std::fmt::Debug>(
    backend: &'a B,
    sim: &'a Simulator,
) -> TdxModule<ExtInited, &'a B, &'a Simulator> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    TdxModule::init(backend, sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap()
}

type Host<'s> = TdHost<&'s Simulator, &'s Simulator>;

fn host(m: Module<'_>) -> Host<'_> {
    TdHost::new(m).unwrap()
}

fn params(max_vcpus: u16) -> TdParams {
    let mut p = TdParams::new();
    p.set_xfam(3);
    p.set_max_vcpus(max_vcpus);
    p.set_eptp_controls(EptpControls::write_back(EptPageWalk::FourLevel));
    p.set_tsc_frequency(100);
    p.set_config_flags(TdParams::CONFIG_FLAG_NO_RBP_MOD);
    p
}

/// A TD built step by step to `Initialized`, reaching its host through `h`
/// (`&TdHost` or `Arc<TdHost>`).
fn initialized<H: TdHostRef>(h: H, max_vcpus: u16) -> Td<Initialized, H> {
    Td::create(h)
        .unwrap()
        .configure_keys()
        .unwrap()
        .add_tdcs()
        .unwrap()
        .init(&params(max_vcpus))
        .unwrap()
}

/// A finalized TD with one vCPU on CPU 0.
fn running<H: TdHostRef>(h: H) -> Td<Finalized, H> {
    let mut td = initialized(h, 1);
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.finalize().unwrap()
}

#[test]
fn build_measure_map_unmap_teardown_returns_every_page() {
    lifecycle(false);
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn with_the_partial_write_erratum_returned_pages_are_cleared() {
    lifecycle(true);
}

fn lifecycle(pw_mce: bool) {
    let sim = sim_with(pw_mce);
    let m = ready(&sim);
    let baseline = sim.accounting();
    assert_eq!(baseline.host, 0);
    assert_eq!(baseline.module + baseline.free, baseline.total);
    let h = host(m);

    let mut td = initialized(&h, 2);
    let v0 = td
        .create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let v1 = td
        .create_vcpu(tdx::api::CpuId(2), InitialRcx(0), X2ApicId(1))
        .unwrap();
    assert_ne!(v0.tdvpr, v1.tdvpr);
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [v0, v1]);

    // Initial memory: two measured pages, one not.
    let contents: Vec<[u8; 4096]> = (0..3u8)
        .map(|k| core::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(k)))
        .collect();
    let initial = frames(&sim, 3, 1);
    let layout = [(0x0u64, true), (0x1000, true), (0x5000, false)];
    for (i, (gpa, extend)) in layout.iter().enumerate() {
        let pfn = Pfn::new(initial.first().as_u64() + i as u64);
        // SAFETY: allocated above for this TD; untouched until returned.
        let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap();
        td.add_page(Gpa::new(*gpa), f, &contents[i], *extend)
            .unwrap();
    }
    let expected =
        measure::mrtd(
            layout
                .iter()
                .enumerate()
                .map(|(i, &(gpa, extend))| InitialPage {
                    gpa,
                    contents: &contents[i],
                    extend,
                }),
        );
    let td = td.finalize().unwrap();
    assert_eq!(sim.mrtd(td.tdr()), Some(expected), "MRTD = offline MRTD");
    assert_eq!(calls(&sim, Leaf::MR_EXTEND), 32);

    // Runtime memory: a 4K page and a 2M page, accepted by the guest.
    let small = frames(&sim, 1, 1);
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f4 = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
    // SAFETY: as above.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(MIB), f4).unwrap();
    td.map(Gpa::new(2 * MIB), f2).unwrap();
    assert_eq!(sim.guest_accept(td.tdr(), MIB, 0), TdxStatus::SUCCESS);
    assert_eq!(sim.guest_accept(td.tdr(), 2 * MIB, 1), TdxStatus::SUCCESS);
    assert_eq!(td.private_pages(), 5);

    // Unmap the 4K page: BLOCK, TRACK, kick, REMOVE, WBINVD.
    let kicks = Cell::new(0);
    let kick = || kicks.set(kicks.get() + 1);
    let back = td.unmap::<Size4K>(Gpa::new(MIB), &kick).unwrap();
    assert_eq!(kicks.get(), 1);
    assert_eq!(back.pfn(), small.first());
    assert_eq!(calls(&sim, Leaf::PHYMEM_PAGE_WBINVD), 1);
    let _ = back.into_range();
    let cleared = sim.stats().movdir64b_pages;
    assert_eq!(cleared, u64::from(pw_mce), "MOVDIR64B clear iff erratum");
    give_frames_back(&sim, &[small]);
    // Asking for the wrong size, or a GPA with nothing, is refused.
    let e = td.unmap::<Size4K>(Gpa::new(2 * MIB), &|| {}).unwrap_err();
    assert_eq!(e, TdError::NotMapped(Gpa::new(2 * MIB)));

    let control = td.control_pages();
    // TDR + 6 TDCS + 2 × (TDVPR + 5 TDCX) + S-EPT (PDPT, PD, PT for GPA 0,
    // PT for 1 MiB shares the 0..2 MiB PT).
    assert_eq!(control, 1 + 6 + 12 + 3);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.freed.len(), control);
    assert_eq!(
        report
            .freed
            .iter()
            .filter(|(_, r)| *r == PageRole::Tdr)
            .count(),
        1
    );
    assert_eq!(report.freed.last().unwrap().1, PageRole::Tdr, "TDR last");
    assert_eq!(report.guest_frames_returned(), 3 + 512);
    assert_eq!(h.hkids().in_use(), 0);
    // With the erratum every page that left the module was cleared.
    let expected_clears = if pw_mce {
        cleared + control as u64 + 3 + 512
    } else {
        0
    };
    assert_eq!(sim.stats().movdir64b_pages, expected_clears);
    give_frames_back(&sim, &report.guest_returned);
    assert_back_to(&sim, &baseline, "full lifecycle");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn teardown_from_every_early_state_loses_nothing() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);

    let check = |r: TeardownReport, pages: usize, label: &str| {
        assert!(r.is_clean(), "{label}: {r:#?}");
        assert_eq!(r.freed.len(), pages, "{label}");
        assert_eq!(h.hkids().in_use(), 0, "{label}");
        assert_back_to(&sim, &baseline, label);
    };
    check(h.create_td().unwrap().teardown(), 1, "created");
    let td = h.create_td().unwrap().configure_keys().unwrap();
    check(td.teardown(), 1, "keys configured");
    let td = h
        .create_td()
        .unwrap()
        .configure_keys()
        .unwrap()
        .add_tdcs()
        .unwrap();
    check(td.teardown(), 7, "TDCS added");
    check(initialized(&h, 1).teardown(), 7, "initialized");
    let mut td = initialized(&h, 1);
    td.create_vcpu(tdx::api::CpuId(1), InitialRcx(0), X2ApicId(0))
        .unwrap();
    check(td.teardown(), 13, "initialized with a vCPU");
    let mut td = initialized(&h, 1);
    td.create_vcpu(tdx::api::CpuId(3), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().unwrap();
    check(td.teardown(), 13, "finalized, no memory");

    // Dropping a TD tears it down too.
    let mut td = initialized(&h, 1);
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    assert!(sim.dropped_td_reports().is_empty(), "explicit teardowns");
    drop(td);
    assert_eq!(h.hkids().in_use(), 0);
    // The platform got the report.
    let reports = sim.dropped_td_reports();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_clean(), "{:#?}", reports[0]);
    assert_eq!(reports[0].freed.len(), 13);
    assert_back_to(&sim, &baseline, "dropped");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_dropped_td_whose_teardown_fails_reports_to_the_platform() {
    let sim = sim();
    let m = ready(&sim);
    let h = host(m);
    let td = running(&h);
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAGE_RECLAIM,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    drop(td);
    let reports = sim.dropped_td_reports();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert!(!r.is_clean());
    assert_eq!(r.errors.len(), 2, "{r:#?}");
    assert_eq!(r.leaked.len(), 2, "the failed page and the TDR");
    // The leaks reached the platform's accounting too.
    assert_eq!(sim.accounting().leaked, r.leaked_frames());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn refusals_before_any_seamcall() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = h
        .create_td()
        .unwrap()
        .configure_keys()
        .unwrap()
        .add_tdcs()
        .unwrap();
    let before = calls(&sim, Leaf::MNG_INIT);
    let f = td.init(&params(0)).unwrap_err();
    // Module 1.5.01 reports no MAX_VCPUS_PER_TD: the limit is 0xFFFF.
    assert_eq!(
        f.error,
        TdError::Params(ParamsError::MaxVcpus {
            asked: 0,
            max: 0xFFFF
        })
    );
    let mut p = params(1);
    p.set_attributes(1 << 5);
    let f = f.returned.init(&p).unwrap_err();
    assert_eq!(f.error, TdError::Params(ParamsError::Attributes(1 << 5)));
    assert_eq!(
        calls(&sim, Leaf::MNG_INIT),
        before,
        "no TDH.MNG.INIT issued"
    );

    // The TD came back and can go on.
    let mut td = f.returned.init(&params(1)).unwrap();
    // A TD without vCPUs cannot be finalized: a typed error, TD back.
    let f = td.finalize().unwrap_err();
    let TdError::Seamcall { error, on } = f.error else {
        panic!("{:?}", f.error)
    };
    assert_eq!(error.leaf(), Leaf::MR_FINALIZE.v0());
    assert_eq!(error.status(), TdxStatus::NO_VCPUS);
    assert_eq!(on, Operand::Tdr);
    td = f.returned;
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().unwrap();

    // A 2M mapping at a GPA that is not 2M aligned: refused by arithmetic,
    // frame back.
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    let aug = calls(&sim, Leaf::MEM_PAGE_AUG);
    let e = td.map(Gpa::new(2 * MIB + 4096), f2).unwrap_err();
    assert!(matches!(e.error, TdError::Gpa { .. }), "{:?}", e.error);
    assert_eq!(e.returned.pfn(), huge.first());
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), aug);
    // A 2M token from a run that is not 2M aligned cannot be made.
    // SAFETY: never used (the constructor refuses it).
    assert!(unsafe { GuestFrame::<Size2M>::new(Pfn::new(huge.first().as_u64() + 1)) }.is_err());
    let _ = e.returned.into_range();
    give_frames_back(&sim, &[huge]);

    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "refusals");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn busy_teardown_leaves_are_retried() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let mut td = initialized(&h, 1);
    td.create_vcpu(tdx::api::CpuId(1), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let busy = TdxStatus::OPERAND_BUSY;
    for leaf in [
        Leaf::VP_FLUSH,
        Leaf::MNG_VPFLUSHDONE,
        Leaf::MNG_KEY_FREEID,
        Leaf::PHYMEM_PAGE_RECLAIM,
    ] {
        sim.inject(Fault::status(leaf, 1, busy));
    }
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(sim.fired_faults().len(), 4, "{:?}", sim.fired_faults());
    assert_back_to(&sim, &baseline, "busy teardown");
}

/// BUSY past the TD's retry policy is [`TdError::Busy`] naming the leaf
/// and the GPA (contention: the same call may succeed later), with the
/// frame back and nothing mapped. The default policy calls again
/// `BUSY_RETRIES` times with a yield in between; `RetryPolicy::IMMEDIATE`
/// returns the first BUSY without a yield.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn busy_past_the_retry_policy_is_typed_contention_and_the_frame_comes_back() {
    use tdx::api::{RetryPolicy, module::BUSY_RETRIES};
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let mut td = running(&h);
    assert_eq!(td.policy(), RetryPolicy::DEFAULT);
    let run = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(0x1000);
    let busy = TdxStatus::OPERAND_BUSY;
    let tries = u64::from(BUSY_RETRIES) + 1;
    for n in 1..=tries {
        sim.inject(Fault::status(Leaf::MEM_PAGE_AUG, n, busy));
    }
    let yields = sim.stats().yields;
    let e = td.map(gpa, f).unwrap_err();
    assert!(
        matches!(e.error, TdError::Busy { error, on: Operand::Gpa(g) }
            if error.leaf() == Leaf::MEM_PAGE_AUG.v0() && g == gpa),
        "{:?}",
        e.error
    );
    assert!(e.error.is_contention());
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), tries);
    assert_eq!(sim.stats().yields - yields, u64::from(BUSY_RETRIES));
    assert_eq!(e.returned.run(), run, "the frame comes back");
    assert_eq!(td.private_pages(), 0);

    // IMMEDIATE: the first BUSY goes back to the caller, without a yield.
    td.set_policy(RetryPolicy::IMMEDIATE);
    sim.inject(Fault::status(Leaf::MEM_PAGE_AUG, tries + 1, busy));
    let yields = sim.stats().yields;
    let e = td.map(gpa, e.returned).unwrap_err();
    assert!(matches!(e.error, TdError::Busy { .. }), "{:?}", e.error);
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), tries + 1);
    assert_eq!(sim.stats().yields, yields);

    // The contention is gone: the same call succeeds.
    td.map(gpa, e.returned).unwrap();
    let back = td.unmap::<Size4K>(gpa, &|| {}).unwrap();
    assert_eq!(back.run(), run);
    let _ = back.into_range();
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "busy past the policy");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_failed_reclaim_is_reported_and_leaked_not_lost() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    // The first reclaim (a TDCX page: there is no S-EPT and no memory)
    // fails hard.
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAGE_RECLAIM,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    let r = td.teardown();
    assert!(!r.is_clean());
    assert!(r.hkid_freed);
    // The failed page, and the TDR the module keeps while it has a child.
    assert_eq!(r.leaked.len(), 2, "{r:#?}");
    assert_eq!(r.leaked[0].role, PageRole::Tdcx);
    assert_eq!(r.leaked[1].role, PageRole::Tdr);
    let TdError::Seamcall { error, on } = r.errors[0] else {
        panic!("{:?}", r.errors)
    };
    assert_eq!(error.leaf(), Leaf::PHYMEM_PAGE_RECLAIM.v0());
    assert_eq!(on, Operand::HostPage(r.leaked[0].run.first()));
    assert_eq!(r.errors.len(), 2);
    // Every other control page came back.
    assert_eq!(r.freed.len(), 13 - 2);
    let a = sim.accounting();
    assert_eq!(a.leaked, r.leaked_frames(), "{a:?}");
    assert_eq!(a.host, 0, "{a:?}");
    assert_eq!(a.free + a.leaked, baseline.free, "{a:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_failed_hkid_release_leaks_everything_with_a_reason() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    td.map(
        Gpa::new(0),
        unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap(),
    )
    .unwrap();
    let pages = td.control_pages() as u64 + 1;
    // Refused twice: the first refusal makes teardown flush every vCPU on
    // every CPU and ask again (a vCPU associated where the TD did not
    // record it); the second is final.
    for nth in [1, 2] {
        sim.inject(Fault::status(
            Leaf::MNG_VPFLUSHDONE,
            nth,
            TdxStatus::FLUSHVP_NOT_DONE,
        ));
    }
    let r = td.teardown();
    assert!(!r.hkid_freed);
    assert_eq!(h.hkids().in_use(), 1, "the HKID stays taken");
    assert_eq!(r.leaked_frames(), pages, "{r:#?}");
    assert!(r.freed.is_empty() && r.guest_returned.is_empty());
    let TdError::Seamcall { error, .. } = r.errors[0] else {
        panic!("{:?}", r.errors)
    };
    assert_eq!(error.leaf(), Leaf::MNG_VPFLUSHDONE.v0());
    assert!(r.leaked.iter().any(|l| l.role == PageRole::Guest));
    let a = sim.accounting();
    assert_eq!(a.leaked, pages, "{a:?}");
    assert_eq!(a.host, 0, "{a:?}");
    assert_eq!(a.free + a.leaked, baseline.free, "{a:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_failed_key_config_hands_the_td_back_and_teardown_loses_nothing() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = h.create_td().unwrap();
    // Package 0 succeeds, package 1 fails.
    sim.inject(Fault::status(
        Leaf::MNG_KEY_CONFIG,
        2,
        TdxStatus::OPERAND_INVALID,
    ));
    let f = td.configure_keys().unwrap_err();
    let TdError::Seamcall { error, on } = f.error else {
        panic!("{:?}", f.error)
    };
    assert_eq!(error.leaf(), Leaf::MNG_KEY_CONFIG.v0());
    assert_eq!(on, Operand::Package(tdx::api::PackageId(1)));
    let r = f.returned.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "failed key config");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn runtime_faults_keep_every_frame_accounted_for() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 3, 1);
    let token = |i: u64| {
        // SAFETY: allocated above for this TD.
        unsafe { GuestFrame::<Size4K>::new(Pfn::new(run.first().as_u64() + i)) }.unwrap()
    };

    // AUG fails: the frame comes back, nothing mapped; a retry works.
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_AUG,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    let e = td.map(Gpa::new(0), token(0)).unwrap_err();
    assert_eq!(
        e.error,
        TdError::Seamcall {
            error: tdx::TdxError::new(Leaf::MEM_PAGE_AUG.v0(), TdxStatus::OPERAND_INVALID),
            on: Operand::Gpa(Gpa::new(0)),
        }
    );
    td.map(Gpa::new(0), e.returned).unwrap();
    td.map(Gpa::new(0x1000), token(1)).unwrap();
    td.map(Gpa::new(0x2000), token(2)).unwrap();

    // BLOCK fails: the page stays mapped (teardown returns it).
    sim.inject(Fault::status(
        Leaf::MEM_RANGE_BLOCK,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    let e = td.unmap::<Size4K>(Gpa::new(0x1000), &|| {}).unwrap_err();
    assert!(
        matches!(e, TdError::Seamcall { error, on: Operand::Gpa(g) }
            if error.leaf() == Leaf::MEM_RANGE_BLOCK.v0() && g == Gpa::new(0x1000)),
        "{e:?}"
    );
    assert_eq!(td.private_pages(), 3);

    // PAGE.WBINVD fails after REMOVE: the frame may hold lines of the TD's
    // key, so it waits for teardown's CACHE.WB instead of coming back now.
    sim.inject(Fault::status(
        Leaf::PHYMEM_PAGE_WBINVD,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    let e = td.unmap::<Size4K>(Gpa::new(0x2000), &|| {}).unwrap_err();
    assert!(
        matches!(e, TdError::Seamcall { error, .. } if error.leaf() == Leaf::PHYMEM_PAGE_WBINVD.v0()),
        "{e:?}"
    );
    assert_eq!(td.private_pages(), 2);

    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    let mut back: Vec<u64> = r
        .guest_returned
        .iter()
        .map(|r| r.first().as_u64())
        .collect();
    back.sort();
    let want: Vec<u64> = (0..3).map(|i| run.first().as_u64() + i).collect();
    assert_eq!(back, want, "all three frames come back");
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "runtime faults");
}

/// A small lifecycle: two vCPUs, two initial pages, four 4K pages and one
/// 2M page mapped, three of them unmapped, teardown. Returns the report
/// and every frame back from unmapping.
fn small_lifecycle(sim: &Simulator, h: &Host<'_>) -> (TeardownReport, Vec<PfnRun>) {
    let mut td = initialized(h, 2);
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.create_vcpu(tdx::api::CpuId(3), InitialRcx(0), X2ApicId(1))
        .unwrap();
    let initial = frames(sim, 2, 1);
    for i in 0..2u64 {
        // SAFETY: allocated above for this TD.
        let f =
            unsafe { GuestFrame::<Size4K>::new(Pfn::new(initial.first().as_u64() + i)) }.unwrap();
        td.add_page(Gpa::new(i * 4096), f, &[i as u8; 4096], i == 0)
            .unwrap();
    }
    let td = td.finalize().unwrap();
    let small = frames(sim, 4, 1);
    for i in 0..4u64 {
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(small.first().as_u64() + i)) }.unwrap();
        td.map(Gpa::new(MIB + i * 4096), f).unwrap();
    }
    let huge = frames(sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    td.map(Gpa::new(4 * MIB), f).unwrap();
    let mut back = Vec::new();
    for i in 0..2u64 {
        let f = td
            .unmap::<Size4K>(Gpa::new(MIB + i * 4096), &|| {})
            .unwrap();
        back.push(PfnRun::from(f.into_range()));
    }
    let f = td.unmap::<Size2M>(Gpa::new(4 * MIB), &|| {}).unwrap();
    back.push(PfnRun::from(f.into_range()));
    (td.teardown(), back)
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn seeded_transient_faults_everywhere_are_retried_or_resumed() {
    for seed in 1..=6u64 {
        let sim = sim();
        let m = ready(&sim);
        let baseline = sim.accounting();
        let h = host(m);
        // One call in five of every TD leaf that can be busy, out of
        // entropy or interrupted is.
        sim.inject_random(seed, 200_000);
        let (r, back) = small_lifecycle(&sim, &h);
        assert!(r.is_clean(), "seed {seed}: {r:#?}");
        assert_eq!(r.guest_frames_returned(), 2 + 2, "seed {seed}");
        let fired = sim.fired_faults();
        assert!(fired.len() > 10, "seed {seed}: {fired:?}");
        give_frames_back(&sim, &back);
        give_frames_back(&sim, &r.guest_returned);
        assert_back_to(&sim, &baseline, &format!("seed {seed}"));
        // The module is still ready for TDs.
        let _module = h.into_module();
        assert_eq!(sim.module_state(), SysState::Ready, "seed {seed}");
    }
}

#[test]
fn demote_unmap_one_4k_page_remap_and_promote() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    let gpa = Gpa::new(8 * MIB);
    td.map(gpa, f).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    let sept_before = td.control_pages();

    // Split, then take one 4K page out of the middle.
    let kicks = Cell::new(0);
    let kick = || kicks.set(kicks.get() + 1);
    td.demote::<Size2M>(gpa, &kick).unwrap();
    assert_eq!(td.private_pages(), 512);
    assert_eq!(td.control_pages(), sept_before + 1, "one new S-EPT page");
    let hole = Gpa::new(gpa.as_u64() + 7 * 4096);
    let f4 = td.unmap::<Size4K>(hole, &kick).unwrap();
    assert_eq!(f4.pfn().as_u64(), huge.first().as_u64() + 7);
    assert_eq!(kicks.get(), 2);
    // The 2M page is gone as such.
    assert_eq!(
        td.unmap::<Size2M>(gpa, &|| {}).unwrap_err(),
        TdError::NotMapped(gpa)
    );
    // With a hole, promotion is refused by arithmetic, before any SEAMCALL.
    let before = calls(&sim, Leaf::MEM_PAGE_PROMOTE);
    assert!(matches!(
        td.promote::<Size2M>(gpa, &|| {}),
        Err(TdError::NotMapped(_) | TdError::Gpa { .. })
    ));
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_PROMOTE), before);

    // Put the same frame back, accept it, and merge again.
    td.map(hole, f4).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), hole.as_u64(), 0),
        TdxStatus::SUCCESS
    );
    td.promote::<Size2M>(gpa, &kick).unwrap();
    assert_eq!(td.private_pages(), 1);
    assert_eq!(td.control_pages(), sept_before, "the S-EPT page went back");
    let f = td.unmap::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(f.pfn(), huge.first());
    let _ = f.into_range();
    give_frames_back(&sim, &[huge]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "demote/promote");
}

/// PROMOTE of a range whose first small page is missing, or maps a frame
/// that does not start an aligned run, is refused by arithmetic before any
/// SEAMCALL (as when a later page breaks the run).
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn promote_of_a_range_without_an_aligned_first_page_is_refused_not_a_panic() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    // One 4K page at the second slot of the 2M range at 2 MiB: the range
    // has a page table, its first slot is empty.
    let run = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(2 * MIB);
    td.map(Gpa::new(2 * MIB + 4096), f).unwrap();
    let blocks = calls(&sim, Leaf::MEM_RANGE_BLOCK);
    let e = td.promote::<Size2M>(gpa, &|| {}).unwrap_err();
    assert!(
        matches!(e, TdError::NotMapped(_) | TdError::Gpa { .. }),
        "{e:?}"
    );
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), blocks);
    assert_eq!(td.private_pages(), 1);
    let back = td
        .unmap::<Size4K>(Gpa::new(2 * MIB + 4096), &|| {})
        .unwrap();
    let _ = back.into_range();
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "promote refused");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn hkids_come_from_the_guest_range_and_return_after_teardown() {
    let d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
        .with_cpus(2, 2)
        .with_keyids(15, 3)
        .with_profile(td_host::profile(Profile::tdx_1_5()));
    let guest = d.keyid_partition().guest_keyids();
    let sim = Simulator::new(d).unwrap();
    let m = ready(&sim);
    let global = m.global_keyid();
    let baseline = sim.accounting();
    let h = host(m);
    assert_eq!(h.hkids().capacity(), guest.end - guest.start);
    let a = h.create_td().unwrap();
    let b = h.create_td().unwrap();
    for td in [a.hkid(), b.hkid()] {
        assert!(guest.contains(&u32::from(td)), "{td} in {guest:?}");
        assert_ne!(td, global);
    }
    assert_ne!(a.hkid(), b.hkid());
    let e = h.create_td().unwrap_err();
    assert_eq!(e, TdError::NoHkid);
    let freed = a.hkid();
    assert!(a.teardown().is_clean());
    let c = h.create_td().unwrap();
    assert_eq!(c.hkid(), freed, "the freed HKID is reused");
    assert!(b.teardown().is_clean());
    assert!(c.teardown().is_clean());
    assert_eq!(h.hkids().in_use(), 0);
    assert_back_to(&sim, &baseline, "hkids");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_1g_page_is_built_by_promotion_and_can_be_split_again() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size1G>::new(run.first()) }.unwrap();
    let control = td.control_pages();
    let gpa = Gpa::new(GIB);
    td.map_1g(gpa, f, &|| {}).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), 512);
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_PROMOTE), 1);
    assert_eq!(td.private_pages(), 1);
    // The PDPT came to stay; the PD the 2M parts needed went back.
    assert_eq!(td.control_pages(), control + 1);
    // Module 1.5.01 has no 1G accept: a 1G request is refused, and a 2M
    // one inside the 1G PENDING leaf makes a TD exit (the vCPU-less helper
    // shows it as EPT_WALK_FAILED), on which the host demotes.
    assert_eq!(
        sim.guest_accept(td.tdr(), GIB, 2),
        TdxStatus::OPERAND_INVALID.with_operand(tdx_types::OperandId::RCX)
    );
    assert_eq!(
        sim.guest_accept(td.tdr(), GIB, 1),
        TdxStatus::EPT_WALK_FAILED.with_operand(tdx_types::OperandId::RCX)
    );

    td.demote::<Size1G>(gpa, &|| {}).unwrap();
    assert_eq!(td.private_pages(), 512);
    for i in 0..512 {
        assert_eq!(
            sim.guest_accept(td.tdr(), GIB + i * 2 * MIB, 1),
            TdxStatus::SUCCESS
        );
    }
    let part = Gpa::new(GIB + 10 * MIB);
    let f2 = td.unmap::<Size2M>(part, &|| {}).unwrap();
    assert_eq!(f2.pfn().as_u64(), run.first().as_u64() + 5 * 512);
    td.map(part, f2).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), part.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    td.promote::<Size1G>(gpa, &|| {}).unwrap();
    assert_eq!(td.private_pages(), 1);

    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![run]);
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "1G");
}

/// A 1G mapping that fails part-way (the 300th 2M AUG) removes the parts
/// already mapped and hands the whole frame back; the TD is unchanged and
/// the frame can be mapped again.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_1g_mapping_that_fails_part_way_gives_the_whole_frame_back() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size1G>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(GIB);
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_AUG,
        300,
        TdxStatus::OPERAND_INVALID,
    ));
    let kicks = Cell::new(0);
    let kick = || kicks.set(kicks.get() + 1);
    let e = td.map_1g(gpa, f, &kick).unwrap_err();
    assert!(matches!(e.error, TdError::Seamcall { .. }), "{:?}", e.error);
    let Map1gLeft::Whole(back) = e.returned else {
        panic!("the whole frame comes back: {:?}", e.returned)
    };
    assert_eq!(back.run(), run);
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_REMOVE), 299, "the mapped parts");
    // The parts go in one batch: one TRACK, one kick.
    assert_eq!(calls(&sim, Leaf::MEM_TRACK), 1);
    assert_eq!(kicks.get(), 1);
    assert_eq!(td.private_pages(), 0);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
    // The frame is whole again: map it for real this time.
    td.map_1g(gpa, back, &|| {}).unwrap();
    assert_eq!(td.private_pages(), 1);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.guest_returned, vec![run]);
    give_frames_back(&sim, &r.guest_returned);
    assert_back_to(&sim, &baseline, "1G part-way");
}

/// A 1G mapping that fails part-way and whose clean-up fails too (the
/// REMOVE of the fifth part): the failure says exactly which 2M part stays
/// mapped (blocked, so a later unmap resumes without a new BLOCK) and hands
/// back every other part.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_1g_mapping_whose_clean_up_fails_says_which_parts_stay_mapped() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size1G>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(GIB);
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_AUG,
        300,
        TdxStatus::OPERAND_INVALID,
    ));
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_REMOVE,
        5,
        TdxStatus::OPERAND_INVALID,
    ));
    let kicks = Cell::new(0);
    let kick = || kicks.set(kicks.get() + 1);
    let e = td.map_1g(gpa, f, &kick).unwrap_err();
    assert!(
        matches!(e.error, TdError::Seamcall { error, .. } if error.leaf() == Leaf::MEM_PAGE_AUG.v0()),
        "{:?}",
        e.error
    );
    let Map1gLeft::Parts(parts) = e.returned else {
        panic!("a part stays mapped: {:?}", e.returned)
    };
    let part = |i: u64| Gpa::new(GIB + i * 2 * MIB);
    assert_eq!(parts.kept().collect::<Vec<_>>(), [part(4)]);
    let returned: Vec<PfnRun> = parts.into_returned().map(|f| f.run()).collect();
    assert_eq!(returned.len(), 511);
    let expect: Vec<PfnRun> = (0..512)
        .filter(|&i| i != 4)
        .map(|i| part_of(run, i))
        .collect();
    assert_eq!(returned, expect, "every other part, in order");
    // One batch: one TRACK, one kick; the 299 mapped parts were blocked.
    assert_eq!(calls(&sim, Leaf::MEM_TRACK), 1);
    assert_eq!(kicks.get(), 1);
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), 299);
    assert_eq!(td.private_pages(), 1, "the kept part");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();

    // The kept part is still blocked: its removal resumes without a BLOCK.
    let back = td.unmap::<Size2M>(part(4), &kick).unwrap();
    assert_eq!(back.run(), part_of(run, 4));
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), 299);
    assert_eq!(kicks.get(), 2);
    assert_eq!(td.private_pages(), 0);
    let _ = back.into_range();
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "1G clean-up failure");
}

/// The `i`-th 2M part of the 1G run `run`.
fn part_of(run: PfnRun, i: u64) -> PfnRun {
    PfnRun::try_new(Pfn::new(run.first().as_u64() + i * 512), 512).unwrap()
}

/// DEMOTE and PROMOTE that fail after the range was blocked leave it
/// unblocked and usable: the same split and merge then succeed, and the
/// page can be unmapped.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_failed_demote_or_promote_unblocks_the_range() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(2 * MIB);
    td.map(gpa, f).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_DEMOTE,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    td.demote::<Size2M>(gpa, &|| {}).unwrap_err();
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_UNBLOCK), 1);
    td.demote::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(td.private_pages(), 512);
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_PROMOTE,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    td.promote::<Size2M>(gpa, &|| {}).unwrap_err();
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_UNBLOCK), 2);
    assert_eq!(td.private_pages(), 512);
    td.promote::<Size2M>(gpa, &|| {}).unwrap();
    let back = td.unmap::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(back.run(), run);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "demote/promote failures");
}

/// TDH.MEM.PAGE.DEMOTE and PROMOTE return `TDX_INTERRUPTED_RESTARTABLE`
/// when a host interrupt is pending before they commit, having changed
/// nothing and restored RCX/RDX (`tdh_mem_page_demote.c`,
/// `tdh_mem_page_promote.c` in module 1.5): the library issues the same
/// call again, without unblocking the range in between, and succeeds.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_interrupted_demote_or_promote_is_issued_again() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let run = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(2 * MIB);
    td.map(gpa, f).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    let (demotes, promotes, unblocks) = (
        calls(&sim, Leaf::MEM_PAGE_DEMOTE),
        calls(&sim, Leaf::MEM_PAGE_PROMOTE),
        calls(&sim, Leaf::MEM_RANGE_UNBLOCK),
    );
    sim.inject(Fault::status(
        Leaf::MEM_PAGE_DEMOTE,
        1,
        TdxStatus::INTERRUPTED_RESTARTABLE,
    ));
    td.demote::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_DEMOTE), demotes + 2);
    assert_eq!(td.private_pages(), 512);
    // Twice in a row (calls are counted from the first fault planned).
    for nth in [1, 2] {
        sim.inject(Fault::status(
            Leaf::MEM_PAGE_PROMOTE,
            nth,
            TdxStatus::INTERRUPTED_RESTARTABLE,
        ));
    }
    td.promote::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_PROMOTE), promotes + 3);
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_UNBLOCK), unblocks);
    assert_eq!(td.private_pages(), 1);
    assert_eq!(sim.fired_faults().len(), 3);
    let back = td.unmap::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(back.run(), run);
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "interrupted demote/promote");
}

/// Module 1.5 lets TDH.MEM.PAGE.AUG run before finalization: `map` exists
/// on an initialized TD, the page is not measured, and it unmaps normally
/// once the TD runs. A profile without that permission answers with a
/// typed error and the frame comes back.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn private_memory_can_be_mapped_before_finalization_where_the_module_allows() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let mut td = initialized(&h, 1);
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let run = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(64 * MIB);
    td.map(gpa, f).unwrap();
    assert_eq!(td.private_pages(), 1);
    let td = td.finalize().unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 0),
        TdxStatus::SUCCESS
    );
    let back = td.unmap::<Size4K>(gpa, &|| {}).unwrap();
    assert_eq!(back.run(), run);
    give_frames_back(&sim, &[run]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "AUG before finalize");

    let mut profile = Profile::tdx_1_5();
    profile.aug_before_finalize = false;
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(td_host::profile(profile)),
    )
    .unwrap();
    let m = ready(&sim);
    let h = host(m);
    let td = initialized(&h, 1);
    let run = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    let e = td.map(gpa, f).unwrap_err();
    assert!(matches!(e.error, TdError::Seamcall { .. }), "{:?}", e.error);
    assert_eq!(e.returned.run(), run, "the frame comes back");
    give_frames_back(&sim, &[run]);
    assert!(td.teardown().is_clean());
}

/// One hard failure (`TDX_OPERAND_INVALID`) injected into each leaf of a
/// whole lifecycle, first and second call: build (create, keys, TDCS,
/// init, vCPU, initial pages with measurement, finalize), runtime (AUG 4K
/// and 2M, demote, promote, unmap) and teardown. Whatever step fails, the
/// result is a typed error or a teardown report, never a panic; every
/// frame the caller handed over comes back exactly once or is reported
/// leaked as a guest page; the accounting matches the reports; no cache or
/// ownership rule is broken.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_hard_failure_in_any_td_leaf_loses_nothing() {
    let leaves = [
        Leaf::MNG_CREATE,
        Leaf::MNG_KEY_CONFIG,
        Leaf::MNG_ADDCX,
        Leaf::MNG_INIT,
        Leaf::VP_CREATE,
        Leaf::VP_ADDCX,
        Leaf::VP_INIT,
        Leaf::MEM_SEPT_ADD,
        Leaf::MEM_PAGE_ADD,
        Leaf::MR_EXTEND,
        Leaf::MR_FINALIZE,
        Leaf::MEM_PAGE_AUG,
        Leaf::MEM_RANGE_BLOCK,
        Leaf::MEM_TRACK,
        Leaf::MEM_PAGE_DEMOTE,
        Leaf::MEM_PAGE_PROMOTE,
        Leaf::MEM_PAGE_REMOVE,
        Leaf::MEM_SEPT_REMOVE,
        Leaf::PHYMEM_PAGE_WBINVD,
        Leaf::VP_FLUSH,
        Leaf::MNG_VPFLUSHDONE,
        Leaf::PHYMEM_CACHE_WB,
        Leaf::MNG_KEY_FREEID,
        Leaf::PHYMEM_PAGE_RECLAIM,
    ];
    for leaf in leaves {
        for nth in [1, 2] {
            faulted_lifecycle(leaf, nth);
        }
    }
}

fn faulted_lifecycle(leaf: Leaf, nth: u64) {
    let label = format!("{leaf} call {nth}");
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    sim.inject(Fault::status(leaf, nth, TdxStatus::OPERAND_INVALID));
    let initial = frames(&sim, 2, 1);
    let small = frames(&sim, 1, 1);
    let huge = frames(&sim, 512, 512);
    // Frames handed to the TD, and frames that came back from it.
    let mut handed: Vec<PfnRun> = Vec::new();
    let mut back: Vec<PfnRun> = Vec::new();
    let mut errors = 0usize;
    let report = (|| {
        macro_rules! step {
            ($r:expr) => {
                match $r {
                    Ok(td) => td,
                    Err(f) => {
                        errors += 1;
                        return Some(f.returned.teardown());
                    }
                }
            };
        }
        let td = match h.create_td() {
            Ok(td) => td,
            Err(_) => {
                errors += 1;
                return None;
            }
        };
        let td = step!(td.configure_keys());
        let td = step!(td.add_tdcs());
        let mut td = step!(td.init(&params(1)));
        if td
            .create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
            .is_err()
        {
            errors += 1;
            return Some(td.teardown());
        }
        for i in 0..2u64 {
            let pfn = Pfn::new(initial.first().as_u64() + i);
            // SAFETY: allocated above for this TD.
            let f = unsafe { GuestFrame::<Size4K>::new(pfn) }.unwrap();
            handed.push(f.run());
            if let Err(f) = td.add_page(Gpa::new(i * 4096), f, &[i as u8; 4096], i == 0) {
                errors += 1;
                back.extend(f.returned.map(|f| f.run()));
            }
        }
        let td = step!(td.finalize());
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
        handed.push(f.run());
        let small_at = Gpa::new(64 * MIB);
        if let Err(f) = td.map(small_at, f) {
            errors += 1;
            back.push(f.returned.run());
        }
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
        handed.push(f.run());
        let huge_at = Gpa::new(2 * MIB);
        match td.map(huge_at, f) {
            Ok(()) => {
                let _ = sim.guest_accept(td.tdr(), huge_at.as_u64(), 1);
                let split = td.demote::<Size2M>(huge_at, &|| {});
                if split.is_err() || td.promote::<Size2M>(huge_at, &|| {}).is_err() {
                    errors += 1;
                }
            }
            Err(f) => {
                errors += 1;
                back.push(f.returned.run());
            }
        }
        match td.unmap::<Size4K>(small_at, &|| {}) {
            Ok(f) => back.push(f.run()),
            Err(_) => errors += 1,
        }
        // The emptied PT page under the 4K page's 2M entry goes back.
        if td.remove_table::<Size2M>(small_at, &|| {}).is_err() {
            errors += 1;
        }
        Some(td.teardown())
    })();
    let fired = !sim.fired_faults().is_empty();
    let report_errors = report.as_ref().map_or(0, |r| r.errors.len());
    assert!(
        !fired || errors + report_errors > 0,
        "{label}: a fault fired but nothing reported it"
    );
    if nth == 1 {
        assert!(fired, "{label}: the lifecycle calls this leaf");
    }
    let mut leaked_guest = Vec::new();
    let mut leaked = 0;
    if let Some(r) = &report {
        back.extend(&r.guest_returned);
        for l in &r.leaked {
            leaked += l.run.count();
            if l.role == PageRole::Guest {
                leaked_guest.push(l.run);
            }
        }
    }
    // Every frame handed over comes back once, or is reported leaked.
    let mut seen: Vec<u64> = back
        .iter()
        .chain(&leaked_guest)
        .flat_map(|r| r.first().as_u64()..r.end())
        .collect();
    seen.sort_unstable();
    let mut expect: Vec<u64> = handed
        .iter()
        .flat_map(|r| r.first().as_u64()..r.end())
        .collect();
    expect.sort_unstable();
    assert!(
        seen == expect,
        "{label}: every frame handed over comes back once or is reported leaked"
    );
    // Frames never handed over are still the caller's.
    let kept: Vec<PfnRun> = [initial, small, huge]
        .into_iter()
        .flat_map(|r| {
            (r.first().as_u64()..r.end()).map(|p| PfnRun::try_new(Pfn::new(p), 1).unwrap())
        })
        .filter(|r| !expect.contains(&r.first().as_u64()))
        .collect();
    give_frames_back(&sim, &back);
    give_frames_back(&sim, &kept);
    let a = sim.accounting();
    assert_eq!(a.host, 0, "{label}: {a:?}");
    assert_eq!(a.module, baseline.module, "{label}: {a:?}");
    assert_eq!(a.leaked, leaked, "{label}: leaks match the report");
    assert_eq!(a.free + a.leaked, baseline.free, "{label}: {a:?}");
    assert!(
        sim.violations().is_empty(),
        "{label}: {:?}",
        sim.violations()
    );
    sim.check_invariants()
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_vcpu_is_built_in_three_steps_and_failed_steps_can_be_retried() {
    use tdx::api::CpuId;
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let tdcx_per_vcpu = usize::from(h.module().sysinfo().tdvps_base_size).div_ceil(4096) - 1;
    let mut td = initialized(&h, 3);

    // Step by step; nothing is listed until TDH.VP.INIT.
    let v = td.new_vcpu(CpuId(1)).unwrap();
    let tdvpr = v.tdvpr();
    let v = v.add_tdcx().unwrap();
    let id = v.init(InitialRcx(0x1000), X2ApicId(7)).unwrap();
    assert_eq!((id.index, id.tdvpr, id.cpu), (0, tdvpr, CpuId(1)));
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [id]);

    // TDH.VP.ADDCX fails hard on the third page: the builder comes back
    // with two pages added, and the retry adds only the rest.
    let v = td.new_vcpu(CpuId(2)).unwrap();
    sim.inject(Fault::status(Leaf::VP_ADDCX, 3, TdxStatus::OPERAND_INVALID));
    let f = v.add_tdcx().unwrap_err();
    let TdError::Seamcall { error, on } = f.error else {
        panic!("{:?}", f.error)
    };
    assert_eq!(error.leaf(), Leaf::VP_ADDCX.v0());
    assert_eq!(on, Operand::Vcpu(1));
    let addcx = calls(&sim, Leaf::VP_ADDCX);
    let v = f.returned.add_tdcx().unwrap();
    assert_eq!(
        calls(&sim, Leaf::VP_ADDCX) - addcx,
        tdcx_per_vcpu as u64 - 2,
        "the retry adds the missing pages only"
    );
    // TDH.VP.INIT fails hard: the builder comes back; the retry works.
    sim.inject(Fault::status(Leaf::VP_INIT, 1, TdxStatus::OPERAND_INVALID));
    let f = v.init(InitialRcx(0), X2ApicId(8)).unwrap_err();
    assert!(matches!(f.error, TdError::Seamcall { .. }), "{:?}", f.error);
    let id2 = f.returned.init(InitialRcx(0), X2ApicId(8)).unwrap();
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [id, id2]);
    // 1 TDR + TDCS, and 1 TDVPR + TDCX per vCPU.
    let tdcs = td.control_pages() - 2 * (1 + tdcx_per_vcpu);

    assert_eq!(id2.index, 1);
    // A builder dropped half way leaves its pages with the TD, unlisted;
    // it takes no VCPU_INDEX (the module numbers vCPUs at TDH.VP.INIT).
    let v = td.new_vcpu(CpuId(3)).unwrap();
    drop(v);
    assert_eq!(td.vcpus().count(), 2);
    assert_eq!(td.control_pages(), tdcs + 2 * (1 + tdcx_per_vcpu) + 1);
    let id3 = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(9))
        .unwrap();
    assert_eq!(id3.index, 2);
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [id, id2, id3]);
    let td = td.finalize().unwrap();

    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.freed.len(), tdcs + 3 * (1 + tdcx_per_vcpu) + 1);
    assert_back_to(&sim, &baseline, "vCPU steps");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_half_built_vcpu_does_not_stop_finalization_or_teardown() {
    use tdx::api::CpuId;
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let mut td = initialized(&h, 2);
    let v0 = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    // Created and filled, never initialized.
    let v = td.new_vcpu(CpuId(1)).unwrap().add_tdcx().unwrap();
    drop(v);
    let td = td.finalize().unwrap();
    assert_eq!(td.vcpus().collect::<Vec<_>>(), [v0]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "half-built vCPU");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_emptied_table_is_removed_so_a_2m_page_fits_again() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let gpa = Gpa::new(16 * MIB);
    // Four 4K pages under one 2M entry: the mapping adds a PT page there.
    let small = frames(&sim, 4, 1);
    for i in 0..4 {
        // SAFETY: allocated above for this TD.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(small.first().as_u64() + i)) };
        td.map(Gpa::new(gpa.as_u64() + i * 4096), f.unwrap())
            .unwrap();
    }
    let tables = td.control_pages();
    let removes = calls(&sim, Leaf::MEM_SEPT_REMOVE);
    // Refused by bookkeeping while pages are mapped under it, or where no
    // table is: no SEAMCALL.
    assert!(matches!(
        td.remove_table::<Size2M>(gpa, &|| {}),
        Err(TdError::Gpa { .. })
    ));
    assert_eq!(
        td.remove_table::<Size2M>(Gpa::new(64 * MIB), &|| {}),
        Err(TdError::NotMapped(Gpa::new(64 * MIB)))
    );
    // With the table in place, a 2M page there is refused: the TD's
    // record of its S-EPT has the table, so no AUG is issued.
    let huge = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f2 = unsafe { GuestFrame::<Size2M>::new(huge.first()) }.unwrap();
    let augs = calls(&sim, Leaf::MEM_PAGE_AUG);
    let e = td.map(gpa, f2).unwrap_err();
    assert!(
        matches!(
            e.error,
            TdError::Occupied {
                by: tdx::api::td::Occupant::Table { .. },
                ..
            }
        ),
        "{:?}",
        e.error
    );
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_AUG), augs);
    let f2 = e.returned;
    for i in 0..4 {
        let f = td
            .unmap::<Size4K>(Gpa::new(gpa.as_u64() + i * 4096), &|| {})
            .unwrap();
        let _ = f.into_range();
    }
    assert_eq!(calls(&sim, Leaf::MEM_SEPT_REMOVE), removes);

    // A failed SEPT.REMOVE leaves the entry unblocked and the table there.
    sim.inject(Fault::status(
        Leaf::MEM_SEPT_REMOVE,
        1,
        TdxStatus::OPERAND_INVALID,
    ));
    let unblocks = calls(&sim, Leaf::MEM_RANGE_UNBLOCK);
    assert!(matches!(
        td.remove_table::<Size2M>(gpa, &|| {}),
        Err(TdError::Seamcall { .. })
    ));
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_UNBLOCK), unblocks + 1);
    assert_eq!(td.control_pages(), tables);

    let kicks = Cell::new(0);
    let kick = || kicks.set(kicks.get() + 1);
    td.remove_table::<Size2M>(gpa, &kick).unwrap();
    assert_eq!(kicks.get(), 1);
    assert_eq!(td.control_pages(), tables - 1, "the PT page went back");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    // Now the 2M page maps.
    td.map(gpa, f2).unwrap();
    assert_eq!(
        sim.guest_accept(td.tdr(), gpa.as_u64(), 1),
        TdxStatus::SUCCESS
    );
    let f = td.unmap::<Size2M>(gpa, &|| {}).unwrap();
    let _ = f.into_range();
    give_frames_back(&sim, &[small, huge]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "table removal");
}

/// A backend that forwards to the simulator but, once armed, reports a
/// different frame than the one TDH.MEM.PAGE.REMOVE removed (a module bug
/// or a corrupted register): the API must not trust either frame.
#[derive(Debug)]
struct MisreportsRemove<'s> {
    sim: &'s Simulator,
    armed: std::sync::atomic::AtomicBool,
}

// SAFETY: a test double. It forwards every call unchanged except one
// output register of an armed TDH.MEM.PAGE.REMOVE, which breaks promise 2
// on purpose; the test checks that tdx-api does not free either frame on
// the strength of it.
unsafe impl tdx::sys::Seamcall for MisreportsRemove<'_> {
    unsafe fn seamcall(
        &self,
        rax: u64,
        args: &mut tdx::sys::SeamcallArgs,
        shape: tdx::sys::RegShape,
    ) -> TdxStatus {
        // SAFETY: forwarded as given.
        let s = unsafe { tdx::sys::Seamcall::seamcall(self.sim, rax, args, shape) };
        let remove =
            tdx::LeafVersion::from_rax(rax).is_ok_and(|l| l.leaf() == Leaf::MEM_PAGE_REMOVE);
        if remove && self.armed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            args.rcx += 4096;
        }
        s
    }
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_module_that_names_another_frame_is_not_trusted_with_either() {
    let sim = sim();
    let lying = MisreportsRemove {
        sim: &sim,
        armed: false.into(),
    };
    let m = ready_on(&lying, &sim);
    let baseline = sim.accounting();
    let h = TdHost::new(m).unwrap();
    let td = running(&h);
    let frame = frames(&sim, 1, 1);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(frame.first()) }.unwrap();
    td.map(Gpa::new(0x1000), f).unwrap();
    lying
        .armed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let e = td.unmap::<Size4K>(Gpa::new(0x1000), &|| {}).unwrap_err();
    assert!(
        matches!(e, TdError::Protocol { leaf, .. } if leaf == Leaf::MEM_PAGE_REMOVE.v0()),
        "{e:?}"
    );
    // The frame did not come back; teardown asks the module with RECLAIM.
    // This module really removed it, so RECLAIM refuses and the frame is
    // leaked with the reason, but the TDR still comes back.
    let r = td.teardown();
    assert!(r.hkid_freed);
    assert_eq!(r.leaked.len(), 1, "{r:#?}");
    assert_eq!(r.leaked[0].role, PageRole::Guest);
    assert_eq!(r.leaked[0].run, frame);
    assert!(
        r.freed.iter().any(|(_, role)| *role == PageRole::Tdr),
        "{r:#?}"
    );
    let a = sim.accounting();
    assert_eq!(a.leaked, 1, "{a:?}");
    assert_eq!(a.free + a.leaked, baseline.free, "{a:?}");
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn an_emptied_1g_table_is_removed_after_the_tables_below_it() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = running(&h);
    let gpa = Gpa::new(GIB);
    // One 4K page adds a PDPT (the TD has no S-EPT page yet), a PD under
    // the 1G entry and a PT under a 2M entry.
    let small = frames(&sim, 1, 1);
    let tables = td.control_pages();
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size4K>::new(small.first()) }.unwrap();
    td.map(Gpa::new(GIB + 6 * MIB), f).unwrap();
    assert_eq!(td.control_pages(), tables + 3);
    let f = td.unmap::<Size4K>(Gpa::new(GIB + 6 * MIB), &|| {}).unwrap();
    let _ = f.into_range();
    // The PD still holds the PT: refused without a SEAMCALL.
    let removes = calls(&sim, Leaf::MEM_SEPT_REMOVE);
    assert!(matches!(
        td.remove_table::<Size1G>(gpa, &|| {}),
        Err(TdError::Gpa { .. })
    ));
    assert_eq!(calls(&sim, Leaf::MEM_SEPT_REMOVE), removes);
    td.remove_table::<Size2M>(Gpa::new(GIB + 6 * MIB), &|| {})
        .unwrap();
    td.remove_table::<Size1G>(gpa, &|| {}).unwrap();
    assert_eq!(td.control_pages(), tables + 1, "the PDPT stays");
    // A 1G page maps there again (its 2M parts bring a PD back, which the
    // promotion frees).
    let huge = frames(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size1G>::new(huge.first()) }.unwrap();
    td.map_1g(gpa, f, &|| {}).unwrap();
    assert_eq!(td.control_pages(), tables + 1);
    let f = td.unmap::<Size1G>(gpa, &|| {}).unwrap();
    let _ = f.into_range();
    give_frames_back(&sim, &[small, huge]);
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    assert_back_to(&sim, &baseline, "1G table removal");
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_keyid_shift_that_cannot_key_the_top_frame_is_refused_with_the_module_back() {
    // The platform reports a shift that leaves no room for the HKIDs
    // below bit 52 (a platform bug): TdHost refuses before any TD exists.
    for shift in [51, 12, 30] {
        let mut d = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(2, 2)
            .with_profile(td_host::profile(Profile::tdx_1_5()));
        d.reported_keyid_shift = Some(shift);
        let sim = Simulator::new(d).unwrap();
        let m = ready(&sim);
        let r = TdHost::new(m).unwrap_err();
        assert_eq!(r.error, TdError::KeyidShift(shift), "shift {shift}");
        // The module comes back ready, and with the true shift a host works.
        assert_eq!(sim.module_state(), SysState::Ready, "shift {shift}");
    }
    let sim = sim();
    let h = host(ready(&sim));
    assert!(running(&h).teardown().is_clean());
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn build_td_takes_the_four_steps_and_a_failure_loses_nothing() {
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let td = h.build_td(&params(1)).unwrap();
    assert_eq!(td.control_pages(), 7, "TDR and TDCS");
    assert!(td.teardown().is_clean());
    // TDH.MNG.INIT fails: the half-built TD is torn down on the way out.
    sim.inject(Fault::status(Leaf::MNG_INIT, 1, TdxStatus::OPERAND_INVALID));
    let e = h.build_td(&params(1)).unwrap_err();
    let TdError::Seamcall { error, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(error.leaf(), Leaf::MNG_INIT.v0());
    let reports = sim.dropped_td_reports();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_clean(), "{:#?}", reports[0]);
    assert_eq!(h.hkids().in_use(), 0);
    assert_back_to(&sim, &baseline, "build_td");
}

/// A whole image in one call: 2.5 pages, measured, the last page padded
/// with zeros (the MRTD equals the offline calculator's over the padded
/// pages); refusals before any SEAMCALL (too few frames, a misaligned
/// GPA, a page already there) leave every frame with the caller.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn add_image_adds_and_measures_a_padded_image_and_refuses_before_any_seamcall() {
    let sim = sim();
    let h = host(ready(&sim));
    let mut td = initialized(&h, 1);
    let image: Vec<u8> = (0..10 * 1024u32).map(|i| (i * 13 % 251) as u8).collect();
    let run = frames(&sim, 4, 1);
    let tokens = || {
        run.iter()
            // SAFETY: allocated above for this TD; untouched until returned.
            .map(|f| unsafe { GuestFrame::<Size4K>::new(f) }.unwrap())
            .collect::<Vec<_>>()
    };
    let seamcalls = || sim.stats().seamcalls.values().sum::<u64>();
    let before = seamcalls();

    // Two frames for three pages: refused, both frames still the caller's.
    let mut two = tokens().into_iter().take(2).collect::<Vec<_>>().into_iter();
    let e = td
        .add_image(Gpa::new(0x10_0000), &image, &mut two, true)
        .unwrap_err();
    assert_eq!(
        e.error,
        TdError::ImageFrames {
            gpa: Gpa::new(0x10_0000),
            needed: 3,
            given: 2
        }
    );
    assert!(e.returned.is_none());
    assert_eq!(two.len(), 2);
    two.for_each(|f| {
        let _ = f.into_range();
    });
    // Misaligned.
    let mut all = tokens().into_iter();
    let e = td
        .add_image(Gpa::new(0x10_0800), &image, &mut all, true)
        .unwrap_err();
    assert!(matches!(e.error, TdError::Gpa { .. }), "{:?}", e.error);
    assert_eq!(all.len(), 4);
    assert_eq!(seamcalls(), before, "no SEAMCALL for a refusal");

    // The image: three pages from the first three frames, measured.
    td.add_image(Gpa::new(0x10_0000), &image, &mut all, true)
        .unwrap();
    assert_eq!(all.len(), 1, "one frame left over");
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_ADD), 3);
    assert_eq!(calls(&sim, Leaf::MR_EXTEND), 48);
    // Over it again: refused from the TD's record, before any SEAMCALL.
    let after = seamcalls();
    let e = td
        .add_image(Gpa::new(0x10_1000), &image[..4096], &mut all, false)
        .unwrap_err();
    assert!(
        matches!(e.error, TdError::Occupied { gpa, .. } if gpa == Gpa::new(0x10_1000)),
        "{:?}",
        e.error
    );
    assert_eq!(seamcalls(), after);
    assert_eq!(all.len(), 1);
    all.for_each(|f| {
        let _ = f.into_range();
    });

    let pages: Vec<[u8; 4096]> = image
        .chunks(4096)
        .map(|c| core::array::from_fn(|i| c.get(i).copied().unwrap_or(0)))
        .collect();
    let expected = measure::mrtd(pages.iter().enumerate().map(|(i, contents)| InitialPage {
        gpa: 0x10_0000 + i as u64 * 4096,
        contents,
        extend: true,
    }));
    td.create_vcpu(tdx::api::CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().unwrap();
    assert_eq!(
        sim.mrtd(td.tdr()),
        Some(expected),
        "MRTD over the padded pages"
    );
    let report = td.teardown();
    assert!(report.is_clean(), "{report:#?}");
    assert_eq!(report.guest_frames_returned(), 3);
    give_frames_back(&sim, &[run]);
    sim.check_invariants().unwrap();
}

/// A demote whose TRACK meets contention leaves the page blocked (its
/// BLOCK stands, the retry of TRACK failed too, so it cannot be unblocked
/// safely), and says so with a contention error; the next `demote` resumes
/// from the block: TRACK, kick, DEMOTE, no second BLOCK. (Found by the
/// soak: it used to refuse the blocked page for good.)
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_demote_left_blocked_by_contention_resumes_from_the_block() {
    use tdx::{
        TdxLevel,
        api::{
            RetryPolicy,
            td::{MappingState, TdError},
        },
    };
    let sim = sim();
    let m = ready(&sim);
    let baseline = sim.accounting();
    let h = host(m);
    let mut td = running(&h);
    td.set_policy(RetryPolicy::IMMEDIATE);
    let run = frames(&sim, 512, 512);
    // SAFETY: allocated above for this TD.
    let f = unsafe { GuestFrame::<Size2M>::new(run.first()) }.unwrap();
    let gpa = Gpa::new(2 * MIB);
    td.map(gpa, f).unwrap();
    let busy = TdxStatus::OPERAND_BUSY;
    sim.inject(Fault::status(Leaf::MEM_TRACK, 1, busy));
    sim.inject(Fault::status(Leaf::MEM_TRACK, 2, busy));
    let e = td.demote::<Size2M>(gpa, &|| {}).unwrap_err();
    assert!(e.is_contention(), "{e:?}");
    assert_eq!(td.mapping(gpa).unwrap().state, MappingState::Blocked);
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), 1);

    td.demote::<Size2M>(gpa, &|| {}).unwrap();
    assert_eq!(calls(&sim, Leaf::MEM_RANGE_BLOCK), 1, "no second BLOCK");
    assert_eq!(calls(&sim, Leaf::MEM_PAGE_DEMOTE), 1);
    let part = td.mapping(Gpa::new(2 * MIB + 4096)).unwrap();
    assert_eq!(
        (part.size, part.state),
        (TdxLevel::L4K, MappingState::Mapped)
    );
    assert!(!matches!(e, TdError::Gpa { .. }));
    let r = td.teardown();
    assert!(r.is_clean(), "{r:#?}");
    give_frames_back(&sim, &[run]);
    assert_back_to(&sim, &baseline, "demote resumed");
}
