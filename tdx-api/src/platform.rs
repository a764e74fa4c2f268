//! `Platform`: the host services tdx-rs needs from the kernel or hypervisor
//! it runs in.
//!
//! A TDX host library cannot allocate memory, switch CPUs or flush caches by
//! itself; the host does that, in its own way. This trait is the whole of
//! what tdx-rs asks for, in terms a kernel can provide without adapting its
//! memory management: frame numbers and runs of frames ([`PfnRun`]), never
//! page structures, folios or "allocations".
//!
//! The simulator (`tdx-sim`) implements it too, and checks the rules of the
//! ABI that a host breaks through it (touching module-owned memory, freeing
//! a page that may hold private dirty cache lines, ...).
//!
//! # Context: what may block
//!
//! tdx-api calls the platform from the thread that called tdx-api, and from
//! closures given to [`Platform::on_cpu`]. Those closures issue exactly one
//! SEAMCALL and return: they never call [`yield_now`](Platform::yield_now),
//! allocate, or call back into the platform, so `on_cpu` may run them in
//! atomic context (an IPI handler, `smp_call_function_single`) as well as
//! in a sleepable one (`smp_call_on_cpu`). Retrying a busy leaf and resuming
//! an interrupted one happen in the calling thread, between `on_cpu` calls.
//!
//! The only method tdx-api calls to let other work run is
//! [`yield_now`](Platform::yield_now), and only when the caller's
//! [`RetryPolicy`](crate::retry::RetryPolicy) says so
//! ([`Backoff::Yield`](crate::retry::Backoff::Yield)) or between calls of a
//! resumable leaf during bring-up and teardown. A caller in atomic context
//! chooses a policy that spins ([`RetryPolicy::spin`](crate::retry::RetryPolicy::spin))
//! or returns BUSY at once ([`RetryPolicy::IMMEDIATE`](crate::retry::RetryPolicy::IMMEDIATE)).
//! The other methods are called from the calling thread and must not sleep
//! if the caller may be in atomic context: `alloc_pages`, `free_pages` and
//! `clflush_page` are on the TD's mapping path.
//!
//! Threads: every method takes `&self`, and tdx-api calls them from many
//! threads at once when the caller does (a `Td` shared by vCPU threads), so
//! an implementation is `Sync` and keeps its own state consistent under
//! concurrent calls.
//!
//! What the trait leaves to the implementor: how frames are found and
//! reserved, how a closure reaches another CPU, how the direct map is set
//! up, and logging.

// UNSAFETY: `Platform` is an `unsafe trait` (tdx-api relies on its promises
// to hand memory to the TDX module), and the direct-map accessors and the
// frame release are `unsafe fn`s with contracts.
#![allow(unsafe_code)]

use core::fmt;

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

/// Host services for tdx-rs.
///
/// # Safety
///
/// Implementors promise, and tdx-api relies on it to hand memory to the TDX
/// module without corrupting the host:
///
/// 1. [`alloc_pages`](Platform::alloc_pages) returns frames of ordinary RAM
///    that nobody else uses, and nobody will, until they are passed to
///    [`free_pages`](Platform::free_pages); with [`Placement::Exact`] it
///    returns exactly the frames asked for or an error.
/// 2. [`on_cpu`](Platform::on_cpu) runs the closure to completion on the
///    given CPU, with migration disabled, before it returns; [`cpus`],
///    [`package_of`] describe the machine truthfully and do not change while
///    tdx-api runs.
/// 3. [`wbinvd_all`](Platform::wbinvd_all) has written back and invalidated
///    the caches of every CPU when it returns; [`clflush_page`] has done so
///    for every line of the page; [`movdir64b_clear`] has written zeros over
///    the whole run with MOVDIR64B (or an equivalent direct store that
///    leaves no partial line) followed by a fence.
/// 4. [`keyid_partition`](Platform::keyid_partition),
///    [`keyid_shift`](Platform::keyid_shift) and
///    [`errata`](Platform::errata) report the hardware as it is. A wrong
///    shift would name another KeyID in TDH.PHYMEM.PAGE.WBINVD, which could
///    succeed and leave the TD's dirty lines in a page tdx-api then frees.
/// 5. [`enter_guest`](Platform::enter_guest) runs its closure (one
///    TDH.VP.ENTER) as `on_cpu` does, with the host state around it that
///    the module leaves to the host: what the host keeps in registers the
///    module does not save and restore (extended state beyond what the
///    TD's XFAM covers, debug registers, MSRs the module clears), and
///    interrupts handled so that an interrupt arriving in the guest makes
///    it exit (the kick). The provided method, `on_cpu`, is right for a
///    host with none of that state (the simulator, a test harness); a
///    kernel supplies its own, as KVM does around its TD entry.
///
/// [`cpus`]: Platform::cpus
/// [`package_of`]: Platform::package_of
/// [`clflush_page`]: Platform::clflush_page
/// [`movdir64b_clear`]: Platform::movdir64b_clear
///
/// # Examples
///
/// A platform that forwards to another and counts the frames tdx-api
/// holds. A kernel's would call its page allocator, run `on_cpu` closures
/// with an IPI or on a pinned thread, and issue CLFLUSH, WBINVD and
/// MOVDIR64B itself; here the simulator does the work:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
/// use tdx_api::{CpuId, Errata, NodeId, PackageId, Placement, Platform, PlatformError, TdxModule};
/// use tdx_sim::{MachineDesc, Simulator};
/// use tdx_types::{Hpa, Pfn, PfnRun, metadata::KeyIdPartition};
///
/// struct Counting<P> {
///     inner: P,
///     frames: AtomicU64,
/// }
///
/// // SAFETY: every promise is kept by the inner platform; counting changes
/// // nothing it does.
/// unsafe impl<P: Platform> Platform for Counting<P> {
///     fn alloc_pages(&self, count: u64, align: u64, at: Placement) -> Result<PfnRun, PlatformError> {
///         let run = self.inner.alloc_pages(count, align, at)?;
///         self.frames.fetch_add(count, Relaxed);
///         Ok(run)
///     }
///     unsafe fn free_pages(&self, run: PfnRun) {
///         self.frames.fetch_sub(run.count(), Relaxed);
///         // SAFETY: the caller's promise, passed on.
///         unsafe { self.inner.free_pages(run) }
///     }
///     fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
///         self.inner.on_cpu(cpu, f)
///     }
///     fn clflush_page(&self, pfn: Pfn) {
///         self.inner.clflush_page(pfn)
///     }
///     // ... and the others forward the same way.
/// #   fn leak_pages(&self, run: PfnRun, reason: &'static str) { self.inner.leak_pages(run, reason) }
/// #   unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
/// #       // SAFETY: the caller's promise, passed on.
/// #       unsafe { self.inner.read_phys(pa, buf) }
/// #   }
/// #   unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
/// #       // SAFETY: the caller's promise, passed on.
/// #       unsafe { self.inner.write_phys(pa, data) }
/// #   }
/// #   fn cpus(&self) -> u32 { self.inner.cpus() }
/// #   fn package_of(&self, cpu: CpuId) -> PackageId { self.inner.package_of(cpu) }
/// #   fn node_of(&self, pfn: Pfn) -> Option<NodeId> { self.inner.node_of(pfn) }
/// #   fn wbinvd_all(&self) { self.inner.wbinvd_all() }
/// #   unsafe fn movdir64b_clear(&self, run: PfnRun) {
/// #       // SAFETY: the caller's promise, passed on.
/// #       unsafe { self.inner.movdir64b_clear(run) }
/// #   }
/// #   fn yield_now(&self) { self.inner.yield_now() }
/// #   fn keyid_partition(&self) -> KeyIdPartition { self.inner.keyid_partition() }
/// #   fn keyid_shift(&self) -> u32 { self.inner.keyid_shift() }
/// #   fn errata(&self) -> Errata { self.inner.errata() }
/// }
///
/// const GIB: u64 = 1 << 30;
/// let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// let sim = Simulator::new(desc.clone()).unwrap();
/// let platform = Counting { inner: &sim, frames: AtomicU64::new(0) };
/// // The simulator stays the SEAMCALL backend; the platform is ours.
/// let module = TdxModule::init(&sim, &platform).map_err(|r| r.error).unwrap();
/// let module = module.configure(&desc.plan_input()).map_err(|e| e.error.clone()).unwrap();
/// // The PAMTs came from our platform.
/// let pamt = module.plan().unwrap().pamt_bytes();
/// assert!(platform.frames.load(Relaxed) >= pamt / 4096);
/// ```
pub unsafe trait Platform {
    /// Allocates `count` physically contiguous frames whose first frame is a
    /// multiple of `align` frames (a power of two).
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError>;

    /// Returns frames to the host allocator.
    ///
    /// # Safety
    ///
    /// The run came from [`alloc_pages`](Platform::alloc_pages) (or is part
    /// of such a run), the TDX module does not own any of its frames, and
    /// every cache flush the ABI requires before host reuse has been done.
    unsafe fn free_pages(&self, run: PfnRun);

    /// Records that frames are given up for good: the module may still own
    /// them, or their state is unknown. They are never freed. The platform
    /// may log or count them; `reason` says why.
    fn leak_pages(&self, run: PfnRun, reason: &'static str);

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
    /// As [`read_phys`](Platform::read_phys), and nobody else reads or writes
    /// those bytes concurrently.
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]);

    /// Number of logical CPUs (numbered `0..cpus()`).
    fn cpus(&self) -> u32;

    /// The package of a CPU.
    fn package_of(&self, cpu: CpuId) -> PackageId;

    /// The NUMA node of a frame, if the platform knows it.
    fn node_of(&self, pfn: Pfn) -> Option<NodeId>;

    /// Runs `f` on `cpu` and waits for it to finish. tdx-api's closures
    /// issue one SEAMCALL each and never block: they may run in atomic
    /// context (see the [module docs](self#context-what-may-block)).
    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send));

    /// Runs `f`, which issues one TDH.VP.ENTER and returns when the guest
    /// exits, on `cpu` (contract 5). The guest runs for as long as it does:
    /// until an exit of its own, or an interrupt (the VMM's kick).
    fn enter_guest(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        self.on_cpu(cpu, f)
    }

    /// Writes back and invalidates the caches of every CPU.
    fn wbinvd_all(&self);

    /// Flushes every cache line of one page (CLFLUSH over 4 KiB).
    fn clflush_page(&self, pfn: Pfn);

    /// Clears a run with MOVDIR64B stores and a fence (the partial-write
    /// erratum's way to turn private memory back into host memory).
    ///
    /// # Safety
    ///
    /// The module does not own the run any more, and the caller owns it.
    unsafe fn movdir64b_clear(&self, run: PfnRun);

    /// Gives other work a chance: between calls of a resumable leaf, and
    /// between retries of a busy one when the caller's retry policy is
    /// [`Backoff::Yield`](crate::retry::Backoff::Yield). Called only from
    /// the thread that called tdx-api, never inside an `on_cpu` closure.
    fn yield_now(&self);

    /// MSR IA32_MKTME_KEYID_PARTITIONING (0x87).
    fn keyid_partition(&self) -> KeyIdPartition;

    /// The lowest physical-address bit of the KeyID field: MAXPHYADDR
    /// (CPUID 0x80000008 EAX bits 7:0) minus the KeyID bits that TME-MK
    /// takes (IA32_TME_ACTIVATE bits 35:32). Linux has it as
    /// `boot_cpu_data.x86_phys_bits`, already reduced. Keyed addresses
    /// (TDH.PHYMEM.PAGE.WBINVD of a TD's page) carry the HKID there.
    fn keyid_shift(&self) -> u32;

    /// A TD was dropped instead of torn down with
    /// [`Td::teardown`](crate::td::Td::teardown): `drop` ran the teardown,
    /// and this is its report. Pages it leaked have also gone to
    /// [`leak_pages`](Platform::leak_pages). The default does nothing; a
    /// kernel would log a report that is not
    /// [clean](crate::td::TeardownReport::is_clean).
    fn dropped_td(&self, report: &TeardownReport) {
        let _ = report;
    }

    /// CPU errata that apply.
    fn errata(&self) -> Errata;

    /// Runs `f` once on each CPU, one CPU after the other.
    fn on_each_cpu(&self, f: &mut (dyn FnMut(CpuId) + Send)) {
        for c in 0..self.cpus() {
            let cpu = CpuId(c);
            self.on_cpu(cpu, &mut || f(cpu));
        }
    }

    /// Runs `f` on the first CPU of each package, one package after the
    /// other (the way TDH.SYS.KEY.CONFIG and TDH.PHYMEM.CACHE.WB must run).
    fn on_each_package(&self, f: &mut (dyn FnMut(PackageId, CpuId) + Send)) {
        // Packages are visited in the order their first CPU appears. The
        // quadratic scan needs no allocation and is nothing next to a
        // SEAMCALL per package.
        for c in 0..self.cpus() {
            let cpu = CpuId(c);
            let pkg = self.package_of(cpu);
            if (0..c).all(|earlier| self.package_of(CpuId(earlier)) != pkg) {
                self.on_cpu(cpu, &mut || f(pkg, cpu));
            }
        }
    }
}

// SAFETY: a reference to a platform that keeps the contract keeps it: every
// method forwards unchanged.
unsafe impl<T: Platform + ?Sized> Platform for &T {
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        (**self).alloc_pages(count, align, placement)
    }
    unsafe fn free_pages(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { (**self).free_pages(run) }
    }
    fn leak_pages(&self, run: PfnRun, reason: &'static str) {
        (**self).leak_pages(run, reason)
    }
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).read_phys(pa, buf) }
    }
    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        // SAFETY: forwarded contract.
        unsafe { (**self).write_phys(pa, data) }
    }
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
    fn wbinvd_all(&self) {
        (**self).wbinvd_all()
    }
    fn clflush_page(&self, pfn: Pfn) {
        (**self).clflush_page(pfn)
    }
    unsafe fn movdir64b_clear(&self, run: PfnRun) {
        // SAFETY: forwarded contract.
        unsafe { (**self).movdir64b_clear(run) }
    }
    fn yield_now(&self) {
        (**self).yield_now()
    }
    fn keyid_partition(&self) -> KeyIdPartition {
        (**self).keyid_partition()
    }
    fn keyid_shift(&self) -> u32 {
        (**self).keyid_shift()
    }
    fn dropped_td(&self, report: &TeardownReport) {
        (**self).dropped_td(report)
    }
    fn errata(&self) -> Errata {
        (**self).errata()
    }
    fn on_each_cpu(&self, f: &mut (dyn FnMut(CpuId) + Send)) {
        (**self).on_each_cpu(f)
    }
    fn on_each_package(&self, f: &mut (dyn FnMut(PackageId, CpuId) + Send)) {
        (**self).on_each_package(f)
    }
}
