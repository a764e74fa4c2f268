//! `Platform`: the host services tdx-rs needs from the kernel or hypervisor
//! it runs in, as a few small traits.
//!
//! A TDX host library cannot allocate memory, switch CPUs or flush caches by
//! itself; the host does that, in its own way. These traits are the whole
//! of what tdx-rs asks for, in terms a kernel can provide without adapting
//! its memory management: frame numbers and runs of frames ([`PfnRun`]),
//! never page structures, folios or "allocations". Each covers one concern:
//!
//! | Trait | Concern | Required methods |
//! |---|---|---|
//! | [`FrameAllocator`] | page allocation | `alloc_pages` |
//! | [`FrameDeallocator`] | giving frames back | `free_pages`, `leak_pages`, `return_guest_frames` |
//! | [`Cpus`] | CPU placement | `cpus`, `package_of`, `node_of`, `on_cpu`, `yield_now` |
//! | [`DirectMap`] | host access to RAM | `read_phys`, `write_phys`, `direct_map` |
//! | [`CacheMaintenance`] | WBINVD, CLFLUSH, MOVDIR64B | none: the library issues the instructions |
//! | [`HardwareInfo`] | KeyIDs, errata | `hardware`, read once at [`TdxModule::init`](crate::TdxModule::init) |
//!
//! [`Platform`] is all of them together: it has no methods of its own and
//! every type that implements the six is a `Platform`. A library type that
//! needs less asks for less ([`TdxPageArray`](crate::TdxPageArray) takes an
//! allocator, a deallocator and a direct map).
//!
//! The simulator (`tdx-sim`) implements them too, and checks the rules of
//! the ABI that a host breaks through them (touching module-owned memory,
//! freeing a page that may hold private dirty cache lines, ...).
//!
//! # Context: what may block
//!
//! tdx-api calls the platform from the thread that called tdx-api, and from
//! closures given to [`Cpus::on_cpu`]. Those closures issue exactly one
//! SEAMCALL and return: they never call [`yield_now`](Cpus::yield_now),
//! allocate, or call back into the platform, so `on_cpu` may run them in
//! atomic context (an IPI handler, `smp_call_function_single`) as well as
//! in a sleepable one (`smp_call_on_cpu`). Retrying a busy leaf and resuming
//! an interrupted one happen in the calling thread, between `on_cpu` calls.
//! The provided [`wbinvd_all`](CacheMaintenance::wbinvd_all) is the one
//! closure of the library's own that is not a SEAMCALL: one WBINVD on each
//! CPU, which does not block either.
//!
//! The only method tdx-api calls to let other work run is
//! [`yield_now`](Cpus::yield_now), and only when the caller's
//! [`RetryPolicy`](crate::retry::RetryPolicy) says so
//! ([`Backoff::Yield`](crate::retry::Backoff::Yield)) or between calls of a
//! resumable leaf during bring-up and teardown. A caller in atomic context
//! chooses a policy that spins ([`RetryPolicy::spin`](crate::retry::RetryPolicy::spin))
//! or returns BUSY at once ([`RetryPolicy::IMMEDIATE`](crate::retry::RetryPolicy::IMMEDIATE)).
//! The other methods are called from the calling thread and must not sleep
//! if the caller may be in atomic context: `alloc_pages`, `free_pages`,
//! `direct_map` and `clflush_page` are on the TD's mapping path. (On a host
//! without a direct map the provided `clflush_page` is `wbinvd_all`, one
//! `on_cpu` per CPU: such a host's `on_cpu` must then work from that
//! context too, or it overrides `clflush_page`.)
//! [`HardwareInfo::hardware`] is called once, by `TdxModule::init`.
//!
//! Threads: every method takes `&self`, and tdx-api calls them from many
//! threads at once when the caller does (a `Td` shared by vCPU threads), so
//! an implementation is `Sync` and keeps its own state consistent under
//! concurrent calls.
//!
//! What the traits leave to the implementor: how frames are found and
//! reserved, how a closure reaches another CPU, how the direct map is set
//! up, and logging.
//!
//! # Examples
//!
//! A platform that forwards to another and counts the frames tdx-api
//! holds. A kernel's would call its page allocator, run `on_cpu` closures
//! with an IPI or on a pinned thread, and leave cache maintenance to the
//! provided methods (it has a direct map); here the simulator does the
//! work, and models the caches, so the cache methods forward to it:
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//! use core::ptr::NonNull;
//! use tdx_api::{
//!     CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
//!     HardwareInfo, NodeId, PackageId, Placement, PlatformError, TdxModule,
//! };
//! use tdx_sim::{MachineDesc, Simulator};
//! use tdx_types::{Hpa, Pfn, PfnRun};
//!
//! struct Counting<'s> {
//!     sim: &'s Simulator,
//!     frames: AtomicU64,
//! }
//!
//! // SAFETY: the simulator's frames, unchanged: counting changes nothing.
//! unsafe impl FrameAllocator for Counting<'_> {
//!     fn alloc_pages(&self, count: u64, align: u64, at: Placement) -> Result<PfnRun, PlatformError> {
//!         let run = self.sim.alloc_pages(count, align, at)?;
//!         self.frames.fetch_add(count, Relaxed);
//!         Ok(run)
//!     }
//! }
//!
//! // SAFETY: as above.
//! unsafe impl FrameDeallocator for Counting<'_> {
//!     unsafe fn free_pages(&self, run: PfnRun) {
//!         self.frames.fetch_sub(run.count(), Relaxed);
//!         // SAFETY: the caller's promise, passed on.
//!         unsafe { self.sim.free_pages(run) }
//!     }
//!     fn leak_pages(&self, run: PfnRun, reason: &'static str) {
//!         self.sim.leak_pages(run, reason)
//!     }
//!     unsafe fn return_guest_frames(&self, run: PfnRun) {
//!         // SAFETY: the caller's promise, passed on.
//!         unsafe { self.sim.return_guest_frames(run) }
//!     }
//! }
//!
//! // SAFETY: the simulator's CPUs.
//! unsafe impl Cpus for Counting<'_> {
//!     fn cpus(&self) -> u32 { self.sim.cpus() }
//!     fn package_of(&self, cpu: CpuId) -> PackageId { self.sim.package_of(cpu) }
//!     fn node_of(&self, pfn: Pfn) -> Option<NodeId> { self.sim.node_of(pfn) }
//!     fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) { self.sim.on_cpu(cpu, f) }
//!     fn yield_now(&self) { self.sim.yield_now() }
//! }
//!
//! // SAFETY: the simulator's memory; it has no direct map.
//! unsafe impl DirectMap for Counting<'_> {
//!     unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
//!         // SAFETY: the caller's promise, passed on.
//!         unsafe { self.sim.read_phys(pa, buf) }
//!     }
//!     unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
//!         // SAFETY: the caller's promise, passed on.
//!         unsafe { self.sim.write_phys(pa, data) }
//!     }
//!     fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>> {
//!         self.sim.direct_map(pa)
//!     }
//! }
//!
//! // SAFETY: the simulator's caches. (A kernel with a direct map writes
//! // `unsafe impl CacheMaintenance for Kernel {}` and has the instructions.)
//! unsafe impl CacheMaintenance for Counting<'_> {
//!     fn wbinvd_all(&self) { self.sim.wbinvd_all() }
//!     fn clflush_page(&self, pfn: Pfn) { self.sim.clflush_page(pfn) }
//!     unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
//!         // SAFETY: the caller's promise, passed on.
//!         unsafe { self.sim.movdir64b_clear(run) }
//!     }
//! }
//!
//! // SAFETY: the simulated hardware.
//! unsafe impl HardwareInfo for Counting<'_> {
//!     fn hardware(&self) -> Hardware { self.sim.hardware() }
//! }
//!
//! const GIB: u64 = 1 << 30;
//! let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
//! let sim = Simulator::new(desc.clone()).unwrap();
//! let platform = Counting { sim: &sim, frames: AtomicU64::new(0) };
//! // The simulator stays the SEAMCALL backend; the platform is ours (a
//! // `Platform`: it implements the six traits).
//! let module = TdxModule::init(&sim, &platform).map_err(|r| r.error).unwrap();
//! let module = module.configure(&desc.plan_input()).map_err(|e| e.error.clone()).unwrap();
//! // The PAMTs came from our platform.
//! let pamt = module.plan().unwrap().pamt_bytes();
//! assert!(platform.frames.load(Relaxed) >= pamt / 4096);
//! ```

// UNSAFETY: the traits are `unsafe trait`s (tdx-api relies on their
// promises to hand memory to the TDX module), the direct-map accessors and
// the frame release are `unsafe fn`s with contracts, and the provided cache
// methods issue WBINVD, CLFLUSH and MOVDIR64B with inline assembly.
#![allow(unsafe_code)]

use core::{fmt, ptr::NonNull};

use tdx_types::{Hpa, Pfn, PfnRun, metadata::KeyIdPartition};

use crate::td::TeardownReport;

/// A logical CPU, numbered densely from 0 by the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(pub u32);

/// A CPU package (socket): the scope of per-package key programming and
/// cache write-back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(pub u32);

/// A NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CPU {}", self.0)
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "package {}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Where an allocation should come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Anywhere.
    Anywhere,
    /// Preferably on this node; elsewhere if the node has no room.
    Node(NodeId),
    /// Exactly these frames (the planner placed a PAMT here).
    Exact(Pfn),
}

/// Why the platform could not provide something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// No run of `count` frames with the requested alignment and placement.
    #[error("no run of {count} contiguous frames (alignment {align} frames) at {placement:?}")]
    OutOfMemory {
        /// Frames asked for.
        count: u64,
        /// Alignment asked for, in frames.
        align: u64,
        /// Where they were asked for.
        placement: Placement,
    },
    /// The provided [`CacheMaintenance::movdir64b_clear`] needs the frame in
    /// the host's direct map, and [`DirectMap::direct_map`] has none for
    /// it: the run was not cleared, so it is not host memory yet (the
    /// caller leaks it instead of freeing it).
    #[error("frame {pfn:?} is not in the host's direct map: MOVDIR64B cannot clear it")]
    NoDirectMap {
        /// The first frame of the run without a mapping.
        pfn: Pfn,
    },
}

/// CPU errata that change what the host must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Errata {
    /// `X86_BUG_TDX_PW_MCE` (Sapphire Rapids-X, Emerald Rapids-X): a partial
    /// write to private memory poisons it, so pages leaving the module are
    /// cleared with MOVDIR64B before the host uses them.
    pub tdx_pw_mce: bool,
    /// `X86_BUG_SEAMRET_INVD_VMCS`: SEAMRET invalidates the current VMCS.
    pub seamret_invd_vmcs: bool,
}

/// The facts about the machine that tdx-api needs: read once, by
/// [`TdxModule::init`](crate::TdxModule::init), and kept by the module
/// ([`TdxModule::hardware`](crate::TdxModule::hardware)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Hardware {
    /// MSR IA32_MKTME_KEYID_PARTITIONING (0x87).
    pub keyid_partition: KeyIdPartition,
    /// The lowest physical-address bit of the KeyID field: MAXPHYADDR
    /// (CPUID 0x80000008 EAX bits 7:0) minus the KeyID bits that TME-MK
    /// takes (IA32_TME_ACTIVATE bits 35:32). Linux has it as
    /// `boot_cpu_data.x86_phys_bits`, already reduced. Keyed addresses
    /// (TDH.PHYMEM.PAGE.WBINVD of a TD's page) carry the HKID there.
    pub keyid_shift: u32,
    /// CPU errata that apply.
    pub errata: Errata,
}

impl Hardware {
    /// The facts, as read from the machine.
    pub const fn new(keyid_partition: KeyIdPartition, keyid_shift: u32, errata: Errata) -> Self {
        Self {
            keyid_partition,
            keyid_shift,
            errata,
        }
    }
}

/// Page allocation (the model is the `x86_64` crate's `FrameAllocator`).
///
/// # Safety
///
/// [`alloc_pages`](FrameAllocator::alloc_pages) returns frames of ordinary
/// RAM that nobody else uses, and nobody will, until they are passed to
/// [`FrameDeallocator::free_pages`] of the same platform; with
/// [`Placement::Exact`] it returns exactly the frames asked for or an
/// error. tdx-api hands such frames to the TDX module.
pub unsafe trait FrameAllocator {
    /// Allocates `count` physically contiguous frames whose first frame is a
    /// multiple of `align` frames (a power of two).
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError>;
}

/// Giving frames back: freed, given up for good, or returned to the VMM
/// that owns them.
///
/// # Safety
///
/// [`free_pages`](FrameDeallocator::free_pages) puts the frames back into
/// the pool [`FrameAllocator::alloc_pages`] takes from, and nothing else;
/// [`leak_pages`](FrameDeallocator::leak_pages) never frees, reads or
/// writes the frames, now or later (the module may still own them).
/// ([`return_guest_frames`](FrameDeallocator::return_guest_frames) is the
/// caller's promise: its frames are the VMM's again.)
pub unsafe trait FrameDeallocator {
    /// Returns frames to the host allocator.
    ///
    /// # Safety
    ///
    /// The run came from [`FrameAllocator::alloc_pages`] (or is part of
    /// such a run), the TDX module does not own any of its frames, and
    /// every cache flush the ABI requires before host reuse has been done.
    unsafe fn free_pages(&self, run: PfnRun);

    /// Records that frames are given up for good: the module may still own
    /// them, or their state is unknown. They are never freed. The platform
    /// may log or count them; `reason` says why.
    fn leak_pages(&self, run: PfnRun, reason: &'static str);

    /// Guest frames of a TD dropped without [`Td::teardown`](crate::td::Td::teardown)
    /// come back here: the caller's [`GuestFrame`](crate::GuestFrame)
    /// tokens, which the TD held, given back, one call per run of the
    /// report's [`guest_returned`](crate::td::TeardownReport::guest_returned).
    ///
    /// They never came from [`FrameAllocator::alloc_pages`] as far as
    /// tdx-api knows (the VMM made the `GuestFrame`s), so tdx-api never
    /// frees them: the VMM takes them back here, into whatever pool they
    /// came from, as it does with the frames of an unmap. Required, so
    /// that a VMM cannot lose its frames by forgetting a hook; a TD that
    /// is torn down with `teardown` returns them in its report instead,
    /// and this is not called.
    ///
    /// # Safety
    ///
    /// The run is the caller's to give: frames the VMM made into
    /// `GuestFrame`s and that are host memory again, as after
    /// [`Td::unmap`](crate::td::Td::unmap): the module let go of them,
    /// their lines of the TD's key are written back, on a machine with the
    /// partial-write erratum they are cleared with MOVDIR64B, and nothing
    /// else holds them. (An implementation may free them on the strength
    /// of this.)
    unsafe fn return_guest_frames(&self, run: PfnRun);

    /// A TD was dropped instead of torn down with
    /// [`Td::teardown`](crate::td::Td::teardown): `drop` ran the teardown,
    /// and this is its report. Pages it leaked have also gone to
    /// [`leak_pages`](FrameDeallocator::leak_pages), and its guest frames
    /// to [`return_guest_frames`](FrameDeallocator::return_guest_frames),
    /// before this call. The default does nothing; a kernel would log a
    /// report that is not [clean](crate::td::TeardownReport::is_clean).
    fn dropped_td(&self, report: &TeardownReport) {
        let _ = report;
    }
}

/// CPU placement: which CPUs there are, running a closure on one of them,
/// and yielding.
///
/// # Safety
///
/// [`on_cpu`](Cpus::on_cpu) runs the closure to completion on the given
/// CPU, with migration disabled, before it returns; [`cpus`](Cpus::cpus)
/// and [`package_of`](Cpus::package_of) describe the machine truthfully and
/// do not change while tdx-api runs. (Leaves that must run on each package,
/// or on the CPU a vCPU is associated with, are correct only if they do.)
///
/// [`enter_guest`](Cpus::enter_guest) runs its closure (one TDH.VP.ENTER)
/// as `on_cpu` does, with the host state around it that the module leaves
/// to the host: what the host keeps in registers the module does not save
/// and restore (extended state beyond what the TD's XFAM covers, debug
/// registers, MSRs the module clears), and interrupts handled so that an
/// interrupt arriving in the guest makes it exit (the kick). The provided
/// method, `on_cpu`, is right for a host with none of that state (the
/// simulator, a test harness); a kernel supplies its own, as KVM does
/// around its TD entry.
pub unsafe trait Cpus {
    /// Number of logical CPUs (numbered `0..cpus()`).
    fn cpus(&self) -> u32;

    /// The package of a CPU.
    fn package_of(&self, cpu: CpuId) -> PackageId;

    /// The NUMA node of a frame, if the platform knows it.
    fn node_of(&self, pfn: Pfn) -> Option<NodeId>;

    /// Runs `f` on `cpu` and waits for it to finish. tdx-api's closures
    /// issue one SEAMCALL each (or one WBINVD, for the provided
    /// [`CacheMaintenance::wbinvd_all`]) and never block: they may run in
    /// atomic context (see the [module docs](self#context-what-may-block)).
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send));

    /// Runs `f`, which issues one TDH.VP.ENTER and returns when the guest
    /// exits, on `cpu` (see the trait's Safety section). The guest runs
    /// for as long as it does: until an exit of its own, or an interrupt
    /// (the VMM's kick).
    fn enter_guest(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        self.on_cpu(cpu, f)
    }

    /// Gives other work a chance: between calls of a resumable leaf, and
    /// between retries of a busy one when the caller's retry policy is
    /// [`Backoff::Yield`](crate::retry::Backoff::Yield). Called only from
    /// the thread that called tdx-api, never inside an `on_cpu` closure.
    fn yield_now(&self);
}

/// The first CPU of each package, in the order their first CPU appears:
/// where per-package leaves (TDH.SYS.KEY.CONFIG, TDH.MNG.KEY.CONFIG,
/// TDH.PHYMEM.CACHE.WB) run.
pub fn package_cpus<C: Cpus + ?Sized>(c: &C) -> impl Iterator<Item = (PackageId, CpuId)> + '_ {
    // The quadratic scan needs no allocation and is nothing next to a
    // SEAMCALL per package.
    (0..c.cpus()).filter_map(move |i| {
        let pkg = c.package_of(CpuId(i));
        (0..i)
            .all(|earlier| c.package_of(CpuId(earlier)) != pkg)
            .then_some((pkg, CpuId(i)))
    })
}

/// Runs `f` through [`Cpus::on_cpu`] on the first CPU of each package
/// ([`package_cpus`]), one package after the other.
pub fn on_each_package<C: Cpus + ?Sized>(c: &C, f: &mut (dyn FnMut(PackageId, CpuId) + Send)) {
    for (pkg, cpu) in package_cpus(c) {
        c.on_cpu(cpu, &mut || f(pkg, cpu));
    }
}

/// Host access to RAM by physical address.
///
/// # Safety
///
/// [`read_phys`](DirectMap::read_phys) and [`write_phys`](DirectMap::write_phys)
/// read and write exactly the bytes asked for, with write-back caching, and
/// nothing else. [`direct_map`](DirectMap::direct_map) returns `Some` only
/// for an address of RAM whose whole 4 KiB frame is mapped write-back,
/// readable and writable, for as long as the platform lives, and the
/// pointer keeps `pa`'s offset in its page (`va % 4096 == pa % 4096`, so a
/// frame's pointer is page-aligned); never for MMIO or unmapped addresses.
/// The provided [`CacheMaintenance`] methods flush and clear through it.
pub unsafe trait DirectMap {
    /// Reads host memory through the direct map.
    ///
    /// # Safety
    ///
    /// `[pa, pa + buf.len())` is RAM the caller owns (allocated through this
    /// platform) and the TDX module does not own.
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]);

    /// Writes host memory through the direct map.
    ///
    /// # Safety
    ///
    /// As [`read_phys`](DirectMap::read_phys), and nobody else reads or
    /// writes those bytes concurrently.
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]);

    /// The host-virtual address of `pa` in a write-back mapping of all RAM
    /// (Linux's `__va`), or `None` if the host has none (the simulator).
    /// A pointer is not a licence to touch the memory: the `unsafe` cache
    /// methods and the accessors above say when that is allowed.
    fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>>;
}

/// Cache maintenance: every method is provided and issues the instruction
/// itself (x86_64), so a host with a direct map writes
/// `unsafe impl CacheMaintenance for Host {}`. A host overrides a method
/// when it has a better way (a kernel's own `wbinvd_on_all_cpus`) or
/// models the caches (the simulator).
///
/// # Safety
///
/// An implementation that overrides a method keeps its promise:
/// [`wbinvd_all`](CacheMaintenance::wbinvd_all) has written back and
/// invalidated the caches of every CPU when it returns;
/// [`clflush_page`](CacheMaintenance::clflush_page) has done so for every
/// line of the page (the whole cache hierarchy, every CPU);
/// [`movdir64b_clear`](CacheMaintenance::movdir64b_clear), when it returns
/// `Ok`, has written zeros over the whole run with MOVDIR64B (or an
/// equivalent direct store that leaves no partial line) followed by a
/// fence. tdx-api frees pages, and hands them back to the VMM, on the
/// strength of these.
pub unsafe trait CacheMaintenance: Cpus + DirectMap {
    /// Writes back and invalidates the caches of every CPU.
    ///
    /// The provided method runs WBINVD on each CPU through
    /// [`Cpus::on_cpu`]. WBINVD is privileged (it faults outside ring 0),
    /// so the provided method is for hosts that run in ring 0 (a kernel, a
    /// hypervisor); it can take milliseconds per CPU.
    #[cfg(target_arch = "x86_64")]
    fn wbinvd_all(&self) {
        for c in 0..self.cpus() {
            self.on_cpu(CpuId(c), &mut || x86::wbinvd());
        }
    }

    /// Writes back and invalidates the caches of every CPU.
    #[cfg(not(target_arch = "x86_64"))]
    fn wbinvd_all(&self);

    /// Flushes every cache line of one page (CLFLUSH over 4 KiB).
    ///
    /// The provided method issues CLFLUSH on the 64 lines of the page
    /// through [`DirectMap::direct_map`], then MFENCE: CLFLUSH is
    /// unprivileged and reaches every cache of the coherence domain. On a
    /// host without a direct map (`direct_map` returns `None`) it calls
    /// [`wbinvd_all`](CacheMaintenance::wbinvd_all) instead, which is
    /// sound and much slower.
    #[cfg(target_arch = "x86_64")]
    fn clflush_page(&self, pfn: Pfn) {
        match self.direct_map(pfn.hpa()) {
            // SAFETY: `direct_map` returned a pointer for the page-aligned
            // address of a frame, valid for the whole 4 KiB frame (the
            // trait's promise); CLFLUSH reads nothing the program can see
            // and writes no byte.
            Some(va) => unsafe { x86::clflush_page(va) },
            None => self.wbinvd_all(),
        }
    }

    /// Flushes every cache line of one page (CLFLUSH over 4 KiB).
    #[cfg(not(target_arch = "x86_64"))]
    fn clflush_page(&self, pfn: Pfn);

    /// Clears a run with MOVDIR64B stores and a fence (the partial-write
    /// erratum's way to turn private memory back into host memory).
    ///
    /// The provided method writes zeros over every 64-byte line of each
    /// frame through [`DirectMap::direct_map`] with MOVDIR64B (which the
    /// CPU has: the erratum's CPUs do), then SFENCE. Without a direct map
    /// there is nothing to store through, and no sound fallback: it returns
    /// [`PlatformError::NoDirectMap`] before it writes anything, and the
    /// caller leaks the run.
    ///
    /// # Safety
    ///
    /// The module does not own the run any more, and the caller owns it
    /// (nobody reads or writes it concurrently).
    #[cfg(target_arch = "x86_64")]
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // Every frame is looked up first, so a run is cleared whole or not
        // at all.
        for pfn in run.iter() {
            if self.direct_map(pfn.hpa()).is_none() {
                return Err(PlatformError::NoDirectMap { pfn });
            }
        }
        for pfn in run.iter() {
            let Some(va) = self.direct_map(pfn.hpa()) else {
                return Err(PlatformError::NoDirectMap { pfn });
            };
            // SAFETY: the pointer is valid for writes of the whole frame
            // (DirectMap's promise), and the caller owns the frame and
            // nobody else touches it (this method's contract).
            unsafe { x86::movdir64b_zero_page(va) };
        }
        x86::sfence();
        Ok(())
    }

    /// Clears a run with MOVDIR64B stores and a fence.
    ///
    /// # Safety
    ///
    /// The module does not own the run any more, and the caller owns it.
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError>;
}

/// Hardware facts: read once, at [`TdxModule::init`](crate::TdxModule::init).
///
/// # Safety
///
/// [`hardware`](HardwareInfo::hardware) reports the machine as it is. A
/// wrong [`keyid_shift`](Hardware::keyid_shift) would name another KeyID in
/// TDH.PHYMEM.PAGE.WBINVD, which could succeed and leave the TD's dirty
/// lines in a page tdx-api then frees; a missing erratum would hand
/// poisoned memory back to the host.
pub unsafe trait HardwareInfo {
    /// The machine's KeyID partition, KeyID shift and errata.
    fn hardware(&self) -> Hardware;
}

/// Host services for tdx-rs: all the small traits together. It has no
/// methods of its own, and every type that implements them is a
/// `Platform` (there is nothing else to implement). See the
/// [module docs](self) for what each part is for and an example.
pub trait Platform:
    FrameAllocator + FrameDeallocator + Cpus + DirectMap + CacheMaintenance + HardwareInfo
{
}

impl<T> Platform for T where
    T: FrameAllocator
        + FrameDeallocator
        + Cpus
        + DirectMap
        + CacheMaintenance
        + HardwareInfo
        + ?Sized
{
}

// A reference to a platform is a platform: every method forwards unchanged,
// overrides of provided methods included (the simulator's cache model must
// not be replaced by the instructions).

// SAFETY: forwards unchanged to a `FrameAllocator`.
unsafe impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        (**self).alloc_pages(count, align, placement)
    }
}

// SAFETY: forwards unchanged to a `FrameDeallocator`.
unsafe impl<T: FrameDeallocator + ?Sized> FrameDeallocator for &T {
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { (**self).free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        (**self).leak_pages(run, reason)
    }
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).return_guest_frames(run) }
    }
    fn dropped_td(&self, report: &TeardownReport) {
        (**self).dropped_td(report)
    }
}

// SAFETY: forwards unchanged to a `Cpus`.
unsafe impl<T: Cpus + ?Sized> Cpus for &T {
    fn cpus(&self) -> u32 {
        (**self).cpus()
    }
    fn package_of(&self, cpu: CpuId) -> PackageId {
        (**self).package_of(cpu)
    }
    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        (**self).node_of(pfn)
    }
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        (**self).on_cpu(cpu, f)
    }
    fn enter_guest(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        (**self).enter_guest(cpu, f)
    }
    fn yield_now(&self) {
        (**self).yield_now()
    }
}

// SAFETY: forwards unchanged to a `DirectMap`.
unsafe impl<T: DirectMap + ?Sized> DirectMap for &T {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).write_phys(pa, data) }
    }
    fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>> {
        (**self).direct_map(pa)
    }
}

// SAFETY: forwards unchanged to a `CacheMaintenance`.
unsafe impl<T: CacheMaintenance + ?Sized> CacheMaintenance for &T {
    fn wbinvd_all(&self) {
        (**self).wbinvd_all()
    }
    fn clflush_page(&self, pfn: Pfn) {
        (**self).clflush_page(pfn)
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        // SAFETY: forwarded contract.
        unsafe { (**self).movdir64b_clear(run) }
    }
}

// SAFETY: forwards unchanged to a `HardwareInfo`.
unsafe impl<T: HardwareInfo + ?Sized> HardwareInfo for &T {
    fn hardware(&self) -> Hardware {
        (**self).hardware()
    }
}

/// The instructions behind the provided [`CacheMaintenance`] methods
/// (Intel SDM vol. 2: WBINVD, CLFLUSH, MOVDIR64B, SFENCE, MFENCE).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::{arch::asm, ptr::NonNull};

    /// Bytes in a cache line (and in one MOVDIR64B store).
    const LINE: usize = 64;
    /// Bytes in a frame.
    const PAGE: usize = 4096;

    /// The 64 bytes of zeros MOVDIR64B copies.
    #[repr(C, align(64))]
    struct Line([u8; LINE]);
    static ZERO_LINE: Line = Line([0; LINE]);

    /// WBINVD on this CPU. Faults outside ring 0.
    pub(super) fn wbinvd() {
        // SAFETY: WBINVD writes modified lines back before it invalidates
        // them, so no memory the program can see changes; it touches no
        // register or flag. (Outside ring 0 it raises #GP, which the host
        // turns into a signal or an oops: not undefined behaviour.)
        unsafe { asm!("wbinvd", options(nostack, preserves_flags)) };
    }

    /// CLFLUSH over the 64 lines of the page at `va`, then MFENCE, which
    /// orders the flushes before any later load or store.
    ///
    /// # Safety
    ///
    /// `va` is page-aligned and maps 4 KiB of memory.
    pub(super) unsafe fn clflush_page(va: NonNull<u8>) {
        let base = va.as_ptr();
        for off in (0..PAGE).step_by(LINE) {
            // SAFETY: `base + off` is inside the mapped page (the caller's
            // promise); CLFLUSH writes a modified line back and drops it,
            // changing no byte of memory.
            unsafe {
                asm!("clflush byte ptr [{0}]", in(reg) base.wrapping_add(off), options(nostack, preserves_flags))
            };
        }
        // SAFETY: MFENCE only orders memory accesses.
        unsafe { asm!("mfence", options(nostack, preserves_flags)) };
    }

    /// MOVDIR64B of zeros over the 64 lines of the page at `va` (no fence;
    /// see [`sfence`]).
    ///
    /// # Safety
    ///
    /// `va` is page-aligned, maps 4 KiB of memory the caller owns, and
    /// nobody else reads or writes it until the fence; the CPU has
    /// MOVDIR64B (CPUID.(EAX=7,ECX=0):ECX bit 28), or the store raises #UD.
    pub(super) unsafe fn movdir64b_zero_page(va: NonNull<u8>) {
        let base = va.as_ptr();
        let src = ZERO_LINE.0.as_ptr();
        for off in (0..PAGE).step_by(LINE) {
            // SAFETY: the destination line is 64-byte aligned (the page
            // is) and inside memory the caller owns exclusively; the source
            // is 64 readable bytes of a static. MOVDIR64B writes exactly
            // those 64 bytes.
            unsafe {
                asm!(
                    "movdir64b {dst}, zmmword ptr [{src}]",
                    dst = in(reg) base.wrapping_add(off),
                    src = in(reg) src,
                    options(nostack, preserves_flags),
                )
            };
        }
    }

    /// SFENCE: MOVDIR64B stores are weakly ordered; this makes them
    /// globally visible before any later store.
    pub(super) fn sfence() {
        // SAFETY: SFENCE only orders stores.
        unsafe { asm!("sfence", options(nostack, preserves_flags)) };
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    //! The provided cache methods, run for real where a test process can:
    //! CLFLUSH is unprivileged, MOVDIR64B too (where the CPU has it);
    //! WBINVD is not, so the test platforms override `wbinvd_all` and count.

    extern crate std;

    use core::{
        cell::UnsafeCell,
        sync::atomic::{AtomicU32, Ordering},
    };
    use std::{boxed::Box, println, vec::Vec};

    use spin::Mutex;

    use super::*;

    /// Frames of the test's memory start here.
    const BASE: u64 = 0x10_0000;
    const PAGES: usize = 3;

    #[repr(C, align(4096))]
    struct Memory(UnsafeCell<[u8; PAGES * 4096]>);

    /// Three frames of heap memory at `BASE`, a direct map into them (or
    /// none), and counters.
    struct Heap {
        mem: Box<Memory>,
        mapped: bool,
        wbinvds: AtomicU32,
        lookups: Mutex<Vec<u64>>,
    }

    impl Heap {
        fn new(mapped: bool, fill: u8) -> Self {
            Self {
                mem: Box::new(Memory(UnsafeCell::new([fill; PAGES * 4096]))),
                mapped,
                wbinvds: AtomicU32::new(0),
                lookups: Mutex::new(Vec::new()),
            }
        }
        fn bytes(&self) -> &[u8] {
            // SAFETY: read after the method under test returned; nothing
            // else writes.
            unsafe { &*self.mem.0.get() }
        }
    }

    // SAFETY: one CPU; `on_cpu` runs the closure on the calling thread.
    unsafe impl Cpus for Heap {
        fn cpus(&self) -> u32 {
            1
        }
        fn package_of(&self, _: CpuId) -> PackageId {
            PackageId(0)
        }
        fn node_of(&self, _: Pfn) -> Option<NodeId> {
            None
        }
        fn on_cpu(&self, _: CpuId, f: &mut (dyn FnMut() + Send)) {
            f()
        }
        fn yield_now(&self) {}
    }

    // SAFETY: `direct_map` hands out pointers into the heap buffer only,
    // page-aligned for each of its frames and `None` for anything else;
    // the accessors are not used.
    unsafe impl DirectMap for Heap {
        unsafe fn read_phys(&self, _: Hpa, _: &mut [u8]) {
            unreachable!("the cache tests do not read through the platform")
        }
        unsafe fn write_phys(&self, _: Hpa, _: &[u8]) {
            unreachable!("the cache tests do not write through the platform")
        }
        fn direct_map(&self, pa: Hpa) -> Option<NonNull<u8>> {
            self.lookups.lock().push(pa.as_u64());
            let off = usize::try_from(pa.as_u64().checked_sub(BASE)?).ok()?;
            if !self.mapped || off >= PAGES * 4096 {
                return None;
            }
            NonNull::new(self.mem.0.get().cast::<u8>().wrapping_add(off))
        }
    }

    // SAFETY: the provided CLFLUSH and MOVDIR64B; WBINVD is privileged, so
    // it is only counted (no test relies on the caches being written back).
    unsafe impl CacheMaintenance for Heap {
        fn wbinvd_all(&self) {
            self.wbinvds.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn frame(i: u64) -> Pfn {
        Pfn::new(BASE / 4096 + i)
    }

    #[test]
    #[cfg_attr(miri, ignore = "runs CLFLUSH/MOVDIR64B, which Miri cannot interpret")]
    fn clflush_page_flushes_through_the_direct_map_and_changes_no_byte() {
        let h = Heap::new(true, 0);
        // SAFETY: the test owns the buffer; nothing else touches it.
        let all = unsafe { &mut *h.mem.0.get() };
        for (i, b) in all.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        h.clflush_page(frame(1));
        assert_eq!(*h.lookups.lock(), [BASE + 4096], "the page's address");
        assert_eq!(h.wbinvds.load(Ordering::Relaxed), 0, "no fallback");
        for (i, b) in h.bytes().iter().enumerate() {
            assert_eq!(*b, (i % 251) as u8, "byte {i} changed");
        }
    }

    #[test]
    fn clflush_page_without_a_direct_map_falls_back_to_wbinvd_all() {
        let h = Heap::new(false, 0xAA);
        h.clflush_page(frame(0));
        h.clflush_page(frame(2));
        assert_eq!(h.wbinvds.load(Ordering::Relaxed), 2);
        assert!(h.bytes().iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn movdir64b_clear_without_a_direct_map_is_an_error_and_writes_nothing() {
        let h = Heap::new(false, 0xAA);
        let run = PfnRun::try_new(frame(0), 2).unwrap();
        // SAFETY: the test owns the frames (and nothing is written).
        let r = unsafe { h.movdir64b_clear(run) };
        assert_eq!(r, Err(PlatformError::NoDirectMap { pfn: frame(0) }));
        assert!(h.bytes().iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn movdir64b_clear_of_a_partly_mapped_run_writes_nothing() {
        // Frames 1 and 2 are mapped, frame 3 is past the buffer.
        let h = Heap::new(true, 0xAA);
        let run = PfnRun::try_new(frame(1), 3).unwrap();
        // SAFETY: as above; the check comes before any store.
        let r = unsafe { h.movdir64b_clear(run) };
        assert_eq!(r, Err(PlatformError::NoDirectMap { pfn: frame(3) }));
        assert!(h.bytes().iter().all(|&b| b == 0xAA));
    }

    /// CPUID.(EAX=7,ECX=0):ECX bit 28.
    fn has_movdir64b() -> bool {
        let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
        leaf7.ecx & (1 << 28) != 0
    }

    #[test]
    #[cfg_attr(miri, ignore = "runs CLFLUSH/MOVDIR64B, which Miri cannot interpret")]
    fn movdir64b_clear_zeroes_exactly_the_run() {
        if !has_movdir64b() {
            println!("skipped: this CPU has no MOVDIR64B (CPUID.7.0:ECX[28] clear)");
            return;
        }
        let h = Heap::new(true, 0xAA);
        let run = PfnRun::try_new(frame(1), 1).unwrap();
        // SAFETY: the test owns the frame; nobody else touches it.
        unsafe { h.movdir64b_clear(run) }.unwrap();
        let bytes = h.bytes();
        assert!(bytes[..4096].iter().all(|&b| b == 0xAA), "page 0 kept");
        assert!(bytes[4096..8192].iter().all(|&b| b == 0), "page 1 zeroed");
        assert!(bytes[8192..].iter().all(|&b| b == 0xAA), "page 2 kept");
        assert_eq!(h.wbinvds.load(Ordering::Relaxed), 0);
    }
}
