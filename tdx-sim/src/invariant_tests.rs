//! `check_invariants` is itself tested: each test builds a clean state (a
//! module brought up, a TD with a vCPU and a mapped 4K page, through
//! tdx-api), checks that it passes, corrupts one record the way a bug in
//! the simulator or a broken host would, and checks that the corruption is
//! reported, as the right kind of error.

// UNSAFETY: the setup hands a frame it allocated from the simulator to the
// TD (`GuestFrame::new`).
#![allow(unsafe_code)]

use tdx_api::{
    CpuId, FrameAllocator, InitialRcx, Placement, TdxModule, X2ApicId,
    plan::{MemRange, PlanInput},
    td::{GuestFrame, TdConfig, TdHost},
};
use tdx_types::{Gpa, Pfn, Size4K, TdxLevel, metadata::PamtPageType};

use super::{InvariantError, LockMode, ModuleLock, Simulator, VcpuState, td_of};
use crate::{MachineDesc, PageState, Profile, violation::Violation};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// What the corrupting closure gets: the simulator, the TD's TDR, its
/// vCPU's TDVPR, and the mapped guest frame.
struct World<'s> {
    sim: &'s Simulator,
    tdr: Pfn,
    tdvpr: Pfn,
    guest: Pfn,
}

/// Builds the clean state, checks it passes, runs `corrupt`, and returns
/// what `check_invariants` says then.
fn after(corrupt: impl FnOnce(&World<'_>)) -> InvariantError {
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(1, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .unwrap();
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let m = TdxModule::init(&sim, &sim)
        .unwrap()
        .configure(&input)
        .unwrap()
        .init_extensions()
        .unwrap();
    let host = TdHost::new(m).unwrap();
    let mut td = host
        .build_td(&TdConfig::builder().max_vcpus(1).build().to_params())
        .unwrap();
    let v = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let run = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
    // SAFETY: allocated above for this TD; the test never touches it.
    let f = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
    td.map(Gpa::new(0x1000), f).map_err(|f| f.error).unwrap();
    sim.check_invariants().expect("the clean state passes");
    corrupt(&World {
        sim: &sim,
        tdr: td.tdr(),
        tdvpr: v.tdvpr,
        guest: run.first(),
    });
    let e = sim
        .check_invariants()
        .expect_err("the corruption is reported");
    // The TD is left as it is (its drop would meet the corruption).
    std::mem::forget(td);
    std::mem::forget(host);
    e
}

fn first_free(sim: &Simulator) -> u64 {
    let ram = sim.s.mem.ram().to_vec();
    ram.iter()
        .flat_map(|&(b, e)| sim.s.mem.states(b, e))
        .find(|&(_, _, st)| st == PageState::Free)
        .map(|(s, _, _)| s)
        .expect("a free page")
}

#[test]
fn a_free_page_the_host_marks_module_owned_is_reported() {
    let e = after(|w| {
        let p = first_free(w.sim);
        w.sim.s.mem.set_state(p, p + 1, PageState::Module);
    });
    assert!(
        matches!(
            e,
            InvariantError::Ownership {
                host: PageState::Module,
                module: false,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn a_module_page_the_host_thinks_it_holds_is_reported() {
    let e = after(|w| {
        let g = w.guest.as_u64();
        w.sim.s.mem.set_state(g, g + 1, PageState::Host);
    });
    assert_eq!(
        e,
        InvariantError::Ownership {
            pfn: 0,
            host: PageState::Host,
            module: true
        }
        .with_pfn_of(&e)
    );
}

#[test]
fn a_pamt_entry_that_forgets_a_private_page_is_reported() {
    let e = after(|w| {
        let pa = w.guest.as_u64() * PAGE;
        let t = w.sim.s.pamt.block(pa).expect("a TDMR covers it");
        t.entry(0, pa).set(PamtPageType::NDA, 0);
    });
    let InvariantError::Module(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("child count"), "{why}");
}

#[test]
fn a_child_count_off_by_one_is_reported() {
    let e = after(|w| {
        let td = td_of(&w.sim.s, w.tdr.as_u64()).expect("the TD");
        td.chldcnt.add(0, 1);
    });
    let InvariantError::Module(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("child count"), "{why}");
}

#[test]
fn a_vcpu_left_active_with_no_entry_running_is_reported() {
    let e = after(|w| {
        w.sim
            .s
            .vcpus
            .with(w.tdvpr.as_u64(), |vc| vc.state = VcpuState::Active);
    });
    let InvariantError::Module(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("ACTIVE"), "{why}");
}

#[test]
fn a_module_lock_held_with_no_leaf_running_is_reported() {
    let e = after(|w| {
        let held = w
            .sim
            .hold(
                ModuleLock::Pamt {
                    pfn: w.guest,
                    level: TdxLevel::L4K,
                },
                LockMode::Exclusive,
            )
            .unwrap();
        // Held past the check: the lock stays taken.
        std::mem::forget(held);
    });
    let InvariantError::Module(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("is held"), "{why}");
}

#[test]
fn a_recorded_violation_is_reported() {
    let e = after(|w| {
        w.sim.s.violation(Violation::FreedPageNotAllocated {
            pfn: 1,
            state: PageState::Free,
        });
    });
    assert!(
        matches!(e, InvariantError::Violations(ref v) if v.len() == 1),
        "{e:?}"
    );
}

impl InvariantError {
    /// `self` with the frame of `other` (an `Ownership` error), so that a
    /// test can compare everything but where the scan met it first.
    fn with_pfn_of(mut self, other: &Self) -> Self {
        if let (Self::Ownership { pfn, .. }, Self::Ownership { pfn: at, .. }) = (&mut self, other) {
            *pfn = *at;
        }
        self
    }
}
