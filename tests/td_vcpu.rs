//! vCPU handles (`tdx::api::td::Vcpu`): one per vCPU, `Send`, holding the
//! TD; association tracking, flushes, and teardown of a TD whose vCPUs were
//! associated with CPUs other than the one of TDH.VP.INIT.

// UNSAFETY: one test moves a vCPU's association behind the library's back
// with raw leaf calls (which move no page).
#![allow(unsafe_code)]

mod td_host;

use std::sync::Arc;

use td_host::{Host, host, sim};
use tdx::{
    Leaf, TdxStatus,
    api::{
        CpuId, Cpus, InitialRcx, X2ApicId,
        td::{Finalized, Td, TdConfig, TdError, Vcpu, VcpuId},
    },
    sys::leaf,
    types::metadata::vcpu_fields,
};
use tdx_sim::Simulator;

/// A finalized TD with two vCPUs, initialized on CPUs 0 and 2.
fn td<'h>(host: &'h Host<'_>) -> (Td<Finalized, &'h Host<'h>>, [VcpuId; 2]) {
    let params = TdConfig::builder().max_vcpus(2).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    let a = td
        .create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let b = td
        .create_vcpu(CpuId(2), InitialRcx(0), X2ApicId(1))
        .unwrap();
    (td.finalize().map_err(|f| f.error).unwrap(), [a, b])
}

#[test]
fn handles_are_send_and_tie_down_the_td() {
    fn send<T: Send>() {}
    send::<Vcpu<&'static Td<Finalized, &'static Host<'static>>>>();
    send::<Vcpu<Arc<Td<Finalized, Arc<Host<'static>>>>>>();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn one_handle_per_vcpu() {
    let sim = sim();
    let host = host(&sim);
    let base = sim.accounting();
    let (td, [a, b]) = td(&host);
    let va = td.vcpu(a).unwrap();
    assert_eq!(va.id(), a);
    assert_eq!(va.cpu(), Some(CpuId(0)), "associated where TDH.VP.INIT ran");
    // A second handle of the same vCPU is refused; another vCPU's is not.
    assert!(matches!(td.vcpu(a), Err(TdError::Vcpu { tdvpr, .. }) if tdvpr == a.tdvpr));
    let vb = td.vcpu(b).unwrap();
    assert_eq!(vb.cpu(), Some(CpuId(2)));
    // Dropping a handle makes room for a new one.
    drop(va);
    let va = td.vcpu(a).unwrap();
    // A VcpuId of another TD is not this TD's vCPU.
    let fake = VcpuId {
        tdvpr: tdx::Pfn::new(1),
        ..a
    };
    assert!(matches!(td.vcpu(fake), Err(TdError::UnknownVcpu(_))));
    drop((va, vb));
    assert!(td.teardown().is_clean());
    assert_eq!(sim.accounting(), base);
    sim.check_invariants().unwrap();
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn fields_go_through_the_handle_while_it_exists() {
    let sim = sim();
    let host = host(&sim);
    let (td, [a, _]) = td(&host);
    assert_eq!(td.vcpu_field(a, vcpu_fields::VCPU_INDEX).unwrap(), 0);
    let v = td.vcpu(a).unwrap();
    assert!(matches!(
        td.vcpu_field(a, vcpu_fields::VCPU_INDEX),
        Err(TdError::Vcpu { .. })
    ));
    assert_eq!(v.field(vcpu_fields::VCPU_INDEX).unwrap(), 0);
    drop(v);
    assert!(td.teardown().is_clean());
}

#[test]
fn a_flushed_vcpu_is_associated_nowhere_until_used_again() {
    let sim = sim();
    let host = host(&sim);
    let (td, [a, b]) = td(&host);
    let mut v = td.vcpu(b).unwrap();
    let flushes = calls(&sim, Leaf::VP_FLUSH);
    v.flush().unwrap();
    assert_eq!(calls(&sim, Leaf::VP_FLUSH), flushes + 1);
    assert_eq!(v.cpu(), None);
    // A flush of a vCPU associated nowhere issues nothing.
    v.flush().unwrap();
    assert_eq!(calls(&sim, Leaf::VP_FLUSH), flushes + 1);
    // Reading a field associates it again, where it was initialized.
    assert_eq!(v.field(vcpu_fields::VCPU_INDEX).unwrap(), 1);
    assert_eq!(v.cpu(), Some(CpuId(2)));
    drop(v);
    // Teardown flushes each vCPU where it is associated: both succeed, and
    // VPFLUSHDONE then finds none associated.
    let before = calls(&sim, Leaf::VP_FLUSH);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(calls(&sim, Leaf::VP_FLUSH), before + 2);
    let _ = a;
}

/// A vCPU associated with a CPU the TD did not record (raw leaf calls moved
/// it): teardown's first VPFLUSHDONE fails with TDX_FLUSHVP_NOT_DONE, it
/// flushes every vCPU on every CPU, and the TD still comes back whole.
#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn teardown_finds_a_vcpu_associated_behind_its_back() {
    let sim = sim();
    let host = host(&sim);
    let base = sim.accounting();
    let (td, [a, _]) = td(&host);
    // Move vCPU `a` from CPU 0 to CPU 3 with raw leaves: flush on 0, then a
    // TDH.VP.RD on 3 associates it there.
    let mut s = TdxStatus::SUCCESS;
    sim.on_cpu(CpuId(0), &mut || {
        // SAFETY: VP.FLUSH moves no page; it runs on the vCPU's CPU.
        s = unsafe { leaf::tdh_vp_flush(&sim, a.tdvpr) };
    });
    assert!(!s.is_error(), "{s}");
    sim.on_cpu(CpuId(3), &mut || {
        // SAFETY: VP.RD takes no host memory.
        s = unsafe { leaf::tdh_vp_rd(&sim, a.tdvpr, vcpu_fields::VCPU_INDEX.id()) }.status;
    });
    assert!(!s.is_error(), "{s}");
    let flushdone = calls(&sim, Leaf::MNG_VPFLUSHDONE);
    let report = td.teardown();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.hkid_freed);
    assert_eq!(
        calls(&sim, Leaf::MNG_VPFLUSHDONE),
        flushdone + 2,
        "refused once (FLUSHVP_NOT_DONE), then done after the search"
    );
    assert_eq!(sim.accounting(), base);
    sim.check_invariants().unwrap();
}

fn calls(sim: &Simulator, leaf: Leaf) -> u64 {
    sim.stats().seamcalls.get(&leaf.0).copied().unwrap_or(0)
}

#[test]
#[cfg_attr(miri, ignore = "slow under Miri; miri.sh runs one test of each area")]
fn a_vcpu_past_max_vcpus_is_refused_before_any_page_moves() {
    let sim = sim();
    let host = host(&sim);
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let before = (sim.accounting(), sim.stats().seamcalls.clone());
    assert_eq!(
        td.create_vcpu(CpuId(1), InitialRcx(0), X2ApicId(1)),
        Err(TdError::TooManyVcpus { max: 1 })
    );
    // Nothing happened: no page left the allocator, no SEAMCALL was made.
    assert_eq!((sim.accounting(), sim.stats().seamcalls.clone()), before);
    let td = td.finalize().map_err(|f| f.error).unwrap();
    assert!(td.teardown().is_clean());
    sim.check_invariants().unwrap();
}
