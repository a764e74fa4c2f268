//! PFN-only private memory, for a VMM author: what the caller promises,
//! what the library checks, and what comes back.
//!
//! ```text
//! cargo run --release --example pfn_mapping
//! ```
//!
//! The library never asks how guest memory was allocated: no page objects,
//! no folios, no "one allocation". A mapping is a frame number (4K) or the
//! first frame of an aligned, contiguous run (2M, 1G), and the size is in
//! the type. The one thing it cannot check is that the host leaves the
//! frames alone while the TD owns them; the caller says so once, in the
//! `unsafe` constructor of `GuestFrame`.

// UNSAFETY: `GuestFrame::new` is where this example makes the caller's
// promise; frames are freed to the simulated host when the TD returns them.
#![allow(unsafe_code)]

use std::cell::Cell;

use tdx::{
    Gpa, Pfn, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{GuestFrame, TdConfig, TdError, TdHost},
    },
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn main() {
    // A simulated host and a ready module (see examples/bringup.rs).
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
            .with_cpus(1, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .expect("machine");
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 8 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(&sim, &sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .expect("bring-up");
    // Only a ready module becomes a TdHost; it owns the HKID pool.
    let host = TdHost::new(module).expect("the platform's KeyID shift fits");
    // TD_PARAMS from the typed builder: only max_vcpus is required.
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).expect("TD");
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .expect("vCPU");
    let td = td.finalize().map_err(|f| f.error).expect("finalize");

    // The VMM's memory: here, frames from the host allocator. Any frames
    // would do (a hugetlb pool, a memfd, a reserved region): only their
    // numbers matter.
    let run = sim
        .alloc_pages(1024, 512, Placement::Anywhere)
        .expect("memory");
    let base = run.first().as_u64();

    // 1. The promise. `GuestFrame::new` is `unsafe`: from here until the TD
    //    gives the frames back, the host does not read, write or free them.
    //    The only check is arithmetic: a 2M frame must start on a 2M
    //    boundary (a multiple of 512 frames).
    // SAFETY: frames base..base+512 were allocated above for this TD and
    // nothing else in this program touches them.
    let two_mib = unsafe { GuestFrame::<Size2M>::new(Pfn::new(base)) }.expect("2M aligned");
    // SAFETY: never created: the constructor refuses a misaligned start.
    let misaligned = unsafe { GuestFrame::<Size2M>::new(Pfn::new(base + 1)) };
    println!("2M frame at PFN {:#x}+1: {:?}", base, misaligned.err());
    // SAFETY: frame base+512 was allocated above for this TD.
    let four_kib = unsafe { GuestFrame::<Size4K>::new(Pfn::new(base + 512)) }.expect("4K");

    // 2. Mapping: the GPA must be aligned to the size in the type (checked
    //    before any SEAMCALL); the frames are CLFLUSHed and AUGed; S-EPT
    //    pages come from the Platform as needed.
    let e = td.map(Gpa::new(2 * MIB + 4096), two_mib).unwrap_err();
    println!("2M page at a 4K-aligned GPA: {}", e.error);
    let two_mib = e.returned; // the frame comes back with the error
    td.map(Gpa::new(2 * MIB), two_mib)
        .map_err(|f| f.error)
        .unwrap();
    td.map(Gpa::new(8 * MIB), four_kib)
        .map_err(|f| f.error)
        .unwrap();
    println!("mapped 2M at GPA 0x200000 and 4K at GPA 0x800000");

    // 3. Unmapping: BLOCK, TRACK, the caller's kick (make every vCPU leave
    //    the guest), REMOVE, PAGE.WBINVD with the TD's HKID, and MOVDIR64B on
    //    platforms with the partial-write erratum. The token comes back: the
    //    frames are host memory again.
    //    The kick is the VMM's: in a real VMM it IPIs the CPUs running this
    //    TD's vCPUs and waits until each has left the guest at least once.
    //    Here no vCPU runs (this example never enters one), so there is
    //    nothing to interrupt: it only counts. (To remove many pages with
    //    one TRACK and one kick, use `Td::zap` or `Td::unmap_range`.)
    let kicks = Cell::new(0u32);
    let kick_vcpus = || kicks.set(kicks.get() + 1);
    let back = td.unmap::<Size4K>(Gpa::new(8 * MIB), &kick_vcpus).unwrap();
    println!(
        "unmapped 4K at GPA 0x800000: PFN {:#x} back ({} kick)",
        back.pfn().as_u64(),
        kicks.get()
    );
    // Asking for a size that is not mapped there is a typed error, found
    // before any SEAMCALL (and without a kick).
    match td.unmap::<Size4K>(Gpa::new(2 * MIB), &kick_vcpus) {
        Err(TdError::NotMapped(g)) => println!("no 4K page at {g}: refused"),
        other => println!("unexpected: {other:?}"),
    }

    // 4. Teardown returns whatever is still mapped, in the report.
    let report = td.teardown();
    println!(
        "teardown: {} frames returned to the caller, {} control pages freed, clean: {}",
        report.guest_frames_returned(),
        report.freed.len(),
        report.is_clean()
    );
    let _ = back.into_range();
    // SAFETY: every frame of `run` is back: one by unmap, the rest in the
    // report; the TD flushed them.
    unsafe { sim.free_pages(run) };
    let a = sim.accounting();
    println!(
        "host: {} pages allocated, {} leaked; invariants {:?}",
        a.host,
        a.leaked,
        sim.check_invariants()
    );
}
