//! A backend with no cost of its own, for measuring the library alone.
//!
//! [`NullSwitch`] is both the `Seamcall` backend and the `Platform` of a
//! TD host. Switched off, it forwards everything to the simulator, which
//! brings the module up and builds the TD. Switched on, SEAMCALLs answer
//! TDX_SUCCESS at once (TDH.MEM.PAGE.REMOVE names the frame the bench
//! mapped at that GPA: frame = GPA + a fixed offset; PROMOTE names the
//! S-EPT page DEMOTE of that range was given; TDH.VP.ENTER returns an
//! external-interrupt exit) and CLFLUSH and
//! yields do nothing, so what is left of a map or unmap is the library's
//! own work. Pages mapped while switched on are unmapped while switched
//! on, so the simulator never sees them.

// UNSAFETY: implements the `unsafe trait`s `Seamcall` and the platform's by
// forwarding to the simulator, and hands frames to a TD.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tdx::{
    Gpa, Leaf, Pfn, Size4K, TdxStatus,
    api::{
        CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
        HardwareInfo, InitialRcx, NodeId, PackageId, Placement, Platform, PlatformError, TdxModule,
        X2ApicId,
        plan::{MemRange, PlanInput},
        td::{Finalized, GuestFrame, Td, TdConfig, TdHost, TdHostRef},
    },
    sys::{RegShape, Seamcall, SeamcallArgs},
    types::{Hpa, PfnRun},
};
use tdx_sim::{MachineDesc, Profile, Simulator};

pub(crate) const GIB: u64 = 1 << 30;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct NullSwitch {
    pub(crate) sim: Simulator,
    null: AtomicBool,
    /// HPA minus GPA of every page mapped while switched on.
    delta: AtomicU64,
    /// The S-EPT page each DEMOTE was given, by 2 MiB range (modulo 128),
    /// which PROMOTE of that range names as freed.
    sept: [AtomicU64; 128],
}

impl NullSwitch {
    /// A 2-CPU host with 16 GiB of TDX memory at 4 GiB, switched off.
    pub(crate) fn new() -> Self {
        let sim = Simulator::new(
            MachineDesc::new(vec![(4 * GIB, 20 * GIB)])
                .with_cpus(1, 2)
                .with_profile(Profile::tdx_1_5()),
        )
        .unwrap();
        Self {
            sim,
            null: AtomicBool::new(false),
            delta: AtomicU64::new(0),
            sept: [const { AtomicU64::new(0) }; 128],
        }
    }

    /// Switches the no-cost answers on or off; `delta` is HPA − GPA of the
    /// pages mapped meanwhile.
    pub(crate) fn set(&self, on: bool, delta: u64) {
        self.delta.store(delta, Ordering::Relaxed);
        self.null.store(on, Ordering::SeqCst);
    }

    fn on(&self) -> bool {
        self.null.load(Ordering::Relaxed)
    }
}

// SAFETY: switched off it is the simulator; switched on it answers as a
// module that did what was asked (the bench only maps frames it allocated
// and removes what it mapped), and no real memory changes hands.
unsafe impl Seamcall for NullSwitch {
    #[inline]
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        if !self.on() {
            // SAFETY: forwarded contract.
            return unsafe { self.sim.seamcall(rax, args, shape) };
        }
        let leaf = rax & 0xFFFF;
        if leaf == u64::from(Leaf::VP_ENTER.0) {
            // The guest left at once on an external interrupt (exit reason
            // 1, no TDX error status): the cheapest ordinary exit.
            return TdxStatus::from_raw(1);
        }
        let range = (args.rcx >> 21) as usize % 128;
        if leaf == u64::from(Leaf::MEM_PAGE_REMOVE.0) {
            args.rcx = (args.rcx & !0xFFF) + self.delta.load(Ordering::Relaxed);
        } else if leaf == u64::from(Leaf::MEM_PAGE_DEMOTE.0) {
            self.sept[range].store(args.r8, Ordering::Relaxed);
            args.rcx = 0;
        } else if leaf == u64::from(Leaf::MEM_PAGE_PROMOTE.0) {
            args.rcx = self.sept[range].load(Ordering::Relaxed);
        } else {
            args.rcx = 0;
        }
        args.rdx = 0;
        TdxStatus::SUCCESS
    }
}

// The platform traits forward to the simulator, which keeps their
// contracts.

// SAFETY: forwards to the simulator.
unsafe impl FrameAllocator for NullSwitch {
    fn alloc_pages(&self, n: u64, a: u64, p: Placement) -> Result<PfnRun, PlatformError> {
        self.sim.alloc_pages(n, a, p)
    }
}

// SAFETY: forwards to the simulator.
unsafe impl FrameDeallocator for NullSwitch {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        self.sim.leak_pages(run, reason)
    }
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.sim.return_guest_frames(run) }
    }
}

// SAFETY: forwards to the simulator.
unsafe impl Cpus for NullSwitch {
    fn cpus(&self) -> u32 {
        self.sim.cpus()
    }
    fn package_of(&self, cpu: CpuId) -> PackageId {
        self.sim.package_of(cpu)
    }
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        self.sim.node_of(pfn)
    }
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        self.sim.on_cpu(cpu, f)
    }
    fn yield_now(&self) {
        if !self.on() {
            self.sim.yield_now()
        }
    }
}

// SAFETY: forwards to the simulator.
unsafe impl DirectMap for NullSwitch {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { self.sim.write_phys(pa, data) }
    }
    fn direct_map(&self, pa: Hpa) -> Option<core::ptr::NonNull<u8>> {
        self.sim.direct_map(pa)
    }
}

// SAFETY: forwards to the simulator; switched on, CLFLUSH is skipped for
// frames the simulator never sees mapped.
unsafe impl CacheMaintenance for NullSwitch {
    fn wbinvd_all(&self) {
        self.sim.wbinvd_all()
    }
    #[inline]
    fn clflush_page(&self, pfn: Pfn) {
        if !self.on() {
            self.sim.clflush_page(pfn)
        }
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: forwarded contract.
        unsafe { self.sim.movdir64b_clear(run) }
    }
}

// SAFETY: forwards to the simulator.
unsafe impl HardwareInfo for NullSwitch {
    fn hardware(&self) -> Hardware {
        self.sim.hardware()
    }
}

pub(crate) type Host<'n> = TdHost<&'n NullSwitch, &'n NullSwitch>;

/// The TD host of `n`'s simulator, brought up switched off.
pub(crate) fn host(n: &NullSwitch) -> Host<'_> {
    let input = PlanInput::new(vec![MemRange {
        start: 4 * GIB,
        end: 20 * GIB,
        node: 0,
    }]);
    let module = TdxModule::init(n, n)
        .map_err(|r| r.error)
        .and_then(|m| m.configure(&input).map_err(|e| e.error.clone()))
        .and_then(|m| m.init_extensions().map_err(|r| r.error.clone()))
        .unwrap();
    TdHost::new(module).unwrap()
}

/// A finalized TD with one vCPU, and the S-EPT tables for GPAs
/// `[0, pages × 4 KiB)` (one page mapped and unmapped in each 2 MiB
/// region, on the simulator).
pub(crate) fn finalized<H: TdHostRef>(host: H, pages: u64) -> Td<Finalized, H>
where
    H::Platform: Platform,
{
    let params = TdConfig::builder().max_vcpus(1).build().to_params();
    let mut td = Td::build(host, &params).unwrap();
    td.create_vcpu(CpuId(0), InitialRcx(0), X2ApicId(0))
        .unwrap();
    let td = td.finalize().map_err(|f| f.error).unwrap();
    let p = td.host().module().platform();
    let frame = p.alloc_pages(1, 1, Placement::Anywhere).unwrap().first();
    for region in 0..pages.div_ceil(512) {
        let gpa = Gpa::new(region << 21);
        // SAFETY: allocated above, not touched while mapped.
        let f = unsafe { GuestFrame::<Size4K>::new(frame) }.unwrap();
        td.map(gpa, f).unwrap();
        let _ = td.unmap::<Size4K>(gpa, &|| {}).unwrap();
    }
    // SAFETY: unmapped above, written back.
    unsafe { p.free_pages(PfnRun::try_new(frame, 1).unwrap()) };
    td
}
