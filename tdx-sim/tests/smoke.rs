//! End-to-end bring-up of the simulated module with raw leaves.

#![allow(unsafe_code)] // UNSAFETY: raw leaf calls against the simulator.

use tdx_sim::{MachineDesc, PageState, Profile, Simulator, SysState, testkit};
use tdx_sys::leaf;
use tdx_types::{Pfn, TdxStatus, metadata::PamtPageType};

const GIB: u64 = 1 << 30;

fn machine(profile: Profile) -> Simulator {
    let desc = MachineDesc::new(vec![(4 * GIB, 20 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile);
    Simulator::new(desc).unwrap()
}

#[test]
fn bring_up_default_profile() {
    let sim = machine(Profile::tdx_1_5());
    let tdmrs = testkit::simple_layout(&[(4 * GIB, 20 * GIB)], 8);
    assert_eq!(tdmrs.len(), 2);
    let r = testkit::bring_up(&sim, &tdmrs, Default::default());
    assert_eq!(sim.module_state(), SysState::Ready);
    // 16 GiB at 4 MiB a call, plus nothing extra: the last call reaches the end.
    assert_eq!(r.tdmr_init_calls, 16 * 256);
    // PAMT frames are module-owned and read back as reserved.
    let pamt = r.pamt_runs[0].first();
    assert_eq!(sim.page_state(pamt), Some(PageState::Module));
    // SAFETY: RDMD only reads metadata.
    let c = unsafe { leaf::tdh_phymem_page_rdmd(&sim, pamt) };
    assert_eq!(c.status, TdxStatus::SUCCESS);
    assert_eq!(c.out.page_type, PamtPageType::RSVD);
    // SAFETY: as above.
    let c = unsafe { leaf::tdh_phymem_page_rdmd(&sim, Pfn::new(5 * GIB / 4096)) };
    assert_eq!(
        (c.status, c.out.page_type),
        (TdxStatus::SUCCESS, PamtPageType::NDA)
    );
    sim.check_invariants().unwrap();
}

#[test]
fn bring_up_with_extensions() {
    let sim = machine(Profile::tdx_1_5_ext());
    let tdmrs = testkit::simple_layout(&[(4 * GIB, 20 * GIB)], 16);
    let r = testkit::bring_up(&sim, &tdmrs, Default::default());
    assert_eq!(sim.ext_status(), (1000, true));
    let pool = r.pool.unwrap();
    assert_eq!(pool.count(), 1000);
    assert!(
        pool.iter()
            .all(|p| sim.page_state(p) == Some(PageState::Module))
    );
    let acc = sim.accounting();
    assert_eq!(
        acc.module,
        1000 + r.pamt_runs.iter().map(|r| r.count()).sum::<u64>()
    );
    sim.check_invariants().unwrap();
}

#[test]
fn missing_wbinvd_is_caught() {
    let sim = machine(Profile::tdx_1_5());
    let tdmrs = testkit::simple_layout(&[(4 * GIB, 20 * GIB)], 16);
    testkit::bring_up(
        &sim,
        &tdmrs,
        testkit::BringUpOptions {
            skip_wbinvd: true,
            ..Default::default()
        },
    );
    let v = sim.violations();
    assert!(
        matches!(v[..], [tdx_sim::Violation::KeyConfigWithDirtyPamt { .. }]),
        "{v:?}"
    );
    assert!(sim.check_invariants().is_err());
}
