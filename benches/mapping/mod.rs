//! Shared by the mapping benches: a simulated host with one finalized TD,
//! and 4K map/unmap passes through the safe API and as raw leaf calls.

// UNSAFETY: the passes hand frames allocated from the simulator to the TD
// (`GuestFrame::new`) and call the leaves directly (the raw passes).
#![allow(unsafe_code)]

use std::hint::black_box;

use tdx::{
    Gpa, Pfn, Size4K,
    api::{
        CacheMaintenance, CpuId, InitialRcx, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdConfig, TdHost},
    },
    types::regs::{KeyedPa, PageInfo},
};
use tdx_sim::{MachineDesc, Profile, Simulator};
use tdx_sys::leaf;

pub(crate) const GIB: u64 = 1 << 30;

pub(crate) type Sim<'s> = &'s Simulator;
/// The TD host of a simulator.
pub(crate) type SimHost<'s> = TdHost<Sim<'s>, Sim<'s>>;
/// A finalized TD borrowing its host.
pub(crate) type SimTd<'h, 's> = Td<Finalized, &'h SimHost<'s>>;

/// The kick the removals need: in a real VMM it IPIs the CPUs running this
/// TD's vCPUs and waits until each has left the guest at least once, so no
/// vCPU keeps a translation from before the TDH.MEM.TRACK. The simulator
/// runs no vCPU, so there is nothing to interrupt.
pub(crate) fn kick_vcpus() {}

#[inline(never)]
pub(crate) fn map_4k(td: &SimTd<'_, '_>, first: Pfn, n: u64) {
    for i in 0..n {
        // SAFETY: the frames were allocated for this TD and are not touched.
        let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(first.as_u64() + i)) }.unwrap();
        td.map(Gpa::new(i * 4096), f).unwrap();
    }
}

#[inline(never)]
pub(crate) fn unmap_4k(td: &SimTd<'_, '_>, n: u64) {
    for i in 0..n {
        let f = td.unmap::<Size4K>(Gpa::new(i * 4096), &kick_vcpus).unwrap();
        black_box(f.into_range());
    }
}

/// The raw-leaf equivalent of `map_4k`: CLFLUSH and TDH.MEM.PAGE.AUG per
/// page, no bookkeeping.
#[inline(never)]
pub(crate) fn raw_map_4k(sim: &Simulator, tdr: Pfn, first: Pfn, n: u64) {
    for i in 0..n {
        let pfn = Pfn::new(first.as_u64() + i);
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        sim.clflush_page(pfn);
        // SAFETY: frames allocated for this TD, untouched; S-EPT pages for
        // these GPAs exist (the safe pass made them).
        let c = unsafe { leaf::tdh_mem_page_aug(sim, info, tdr, pfn) };
        assert!(!c.status.is_error(), "{}", c.status);
    }
}

/// The raw-leaf equivalent of `unmap_4k`.
#[inline(never)]
pub(crate) fn raw_unmap_4k(sim: &Simulator, tdr: Pfn, first: Pfn, n: u64, hkid: u16, shift: u32) {
    for i in 0..n {
        let info = PageInfo::for_page::<Size4K>(Gpa::new(i * 4096)).unwrap();
        let keyed = KeyedPa::try_new(Pfn::new(first.as_u64() + i).hpa(), hkid, shift).unwrap();
        // SAFETY (the four calls): the page was mapped by `raw_map_4k`;
        // BLOCK, TRACK and REMOVE hand it back, WBINVD writes back the TD's
        // lines.
        let s = [
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_range_block(sim, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_track(sim, tdr) },
            // SAFETY: as above.
            unsafe { leaf::tdh_mem_page_remove(sim, info, tdr) }.status,
            // SAFETY: as above.
            unsafe { leaf::tdh_phymem_page_wbinvd(sim, keyed) },
        ];
        assert!(s.iter().all(|s| !s.is_error()), "{s:?}");
    }
}

/// A 2-CPU host with 16 GiB of TDX memory at 4 GiB, module 1.5.01.
pub(crate) fn simulator() -> Simulator {
    simulator_with(Profile::tdx_1_5())
}

/// The same host with module 1.5.16, which `host` brings up with Dynamic
/// PAMT.
#[allow(dead_code)]
pub(crate) fn simulator_dpamt() -> Simulator {
    simulator_with(Profile::tdx_1_5_16())
}

fn simulator_with(profile: Profile) -> Simulator {
    Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 20 * GIB)])
            .with_cpus(1, 2)
            .with_profile(profile),
    )
    .unwrap()
}

/// The TD host of `sim`'s ready module.
pub(crate) fn host(sim: &Simulator) -> SimHost<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 20 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(sim, sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .unwrap();
    TdHost::new(module).unwrap()
}

/// A finalized TD with one vCPU.
pub(crate) fn finalized<'h, 's>(host: &'h SimHost<'s>) -> SimTd<'h, 's> {
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    td.finalize().map_err(|f| f.error).unwrap()
}
