//! Huge private pages by PFN: map 2 MiB and 1 GiB pages, split one of each
//! (TDH.MEM.PAGE.DEMOTE), take a single page out of the split range, put it
//! back and merge the range again (TDH.MEM.PAGE.PROMOTE), then tear down.
//!
//! ```text
//! cargo run --release --example hugepages
//! ```

// UNSAFETY: the example hands frames it allocated from the simulated host to
// the TD (`GuestFrame::new`) and frees them when the TD gives them back.
#![allow(unsafe_code)]

use std::cell::Cell;

use tdx::{
    Gpa, Size1G, Size2M, Size4K,
    api::{
        CpuId, FrameAllocator, FrameDeallocator, InitialRcx, Placement, TdxModule, X2ApicId,
        plan::{MemRange, PlanInput},
        td::{GuestFrame, TdConfig, TdHost},
    },
    types::PfnRun,
};
use tdx_sim::{MachineDesc, Profile, Simulator};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn main() {
    let sim = Simulator::new(
        MachineDesc::new(vec![(4 * GIB, 12 * GIB)])
            .with_cpus(2, 2)
            .with_profile(Profile::tdx_1_5()),
    )
    .expect("a valid machine");
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 12 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(&sim, &sim)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .expect("bring-up");
    let host = TdHost::new(module).expect("the platform's KeyID shift fits");

    // TD_PARAMS from the typed builder: only max_vcpus is required.
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = host.build_td(&params).expect("TD build");
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .expect("vCPU");
    let td = td.finalize().map_err(|f| f.error).expect("finalize");

    // The kick. PROMOTE (also inside `map_1g`), DEMOTE and removal need
    // every vCPU of this TD out of the guest after TDH.MEM.TRACK: in a real
    // VMM this IPIs the CPUs running this TD's vCPUs and waits until each
    // has left the guest at least once. Here no vCPU runs (this example
    // never enters one), so there is nothing to interrupt: it only
    // counts.
    let kicks = Cell::new(0u32);
    let kick_vcpus = || kicks.set(kicks.get() + 1);

    // One 2 MiB page at GPA 2 MiB and one 1 GiB page at GPA 1 GiB. The frames
    // only need to be aligned and contiguous; the library checks that by
    // arithmetic on the first PFN and the size in the type.
    let run2m = alloc(&sim, 512, 512);
    let run1g = alloc(&sim, 512 * 512, 512 * 512);
    // SAFETY: allocated above for the TD; not touched until given back.
    let f2m = unsafe { GuestFrame::<Size2M>::new(run2m.first()) }.expect("2M aligned");
    // SAFETY: as above.
    let f1g = unsafe { GuestFrame::<Size1G>::new(run1g.first()) }.expect("1G aligned");
    td.map(Gpa::new(2 * MIB), f2m).map_err(|f| f.error).unwrap();
    // The module's PAGE.AUG maps 4K and 2M: a 1G page is 512 2M AUGs and a
    // promotion.
    td.map_1g(Gpa::new(GIB), f1g, &kick_vcpus)
        .map_err(|f| f.error)
        .unwrap();
    println!("mapped: 2 MiB at GPA {:#x}, 1 GiB at GPA {GIB:#x}", 2 * MIB);

    // Split the 2M page and take one 4K page out of it.
    td.demote::<Size2M>(Gpa::new(2 * MIB), &kick_vcpus).unwrap();
    let hole = Gpa::new(2 * MIB + 5 * 4096);
    let page = td.unmap::<Size4K>(hole, &kick_vcpus).unwrap();
    println!(
        "2M page split into 512 4K pages; 4K page at GPA {:#x} (PFN {:#x}) unmapped",
        hole.as_u64(),
        page.pfn().as_u64()
    );
    // Split the 1G page into 2M pages and take one of them out.
    td.demote::<Size1G>(Gpa::new(GIB), &kick_vcpus).unwrap();
    let piece = td
        .unmap::<Size2M>(Gpa::new(GIB + 6 * MIB), &kick_vcpus)
        .unwrap();
    println!(
        "1G page split into 512 2M pages; 2M page at GPA {:#x} unmapped",
        GIB + 6 * MIB
    );
    // Put both back and merge the ranges again.
    td.map(hole, page).map_err(|f| f.error).unwrap();
    td.promote::<Size2M>(Gpa::new(2 * MIB), &kick_vcpus)
        .unwrap();
    td.map(Gpa::new(GIB + 6 * MIB), piece)
        .map_err(|f| f.error)
        .unwrap();
    td.promote::<Size1G>(Gpa::new(GIB), &kick_vcpus).unwrap();
    println!(
        "both ranges merged again; {} private pages mapped, {} vCPU kicks",
        td.private_pages(),
        kicks.get()
    );

    let report = td.teardown();
    for r in &report.guest_returned {
        // SAFETY: the TD gave the frames back, reclaimed and flushed.
        unsafe { sim.free_pages(*r) };
    }
    println!(
        "teardown: {} control pages freed, {} MiB of guest frames returned, {} leaked",
        report.freed.len(),
        (report.guest_frames_returned() * 4096) >> 20,
        report.leaked_frames()
    );
    let a = sim.accounting();
    println!(
        "host pages: {} host, {} leaked; invariants: {:?}",
        a.host,
        a.leaked,
        sim.check_invariants()
    );
}

fn alloc(sim: &Simulator, count: u64, align: u64) -> PfnRun {
    sim.alloc_pages(count, align, Placement::Anywhere)
        .expect("host memory")
}
