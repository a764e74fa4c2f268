//! Trust Domains: HKIDs, the TD and vCPU build, PFN-only private memory
//! that many threads map and unmap at once, and a teardown that gives back
//! every page or says why it cannot.
//!
//! What this module owns:
//!
//! - [`TdHost`]: takes a ready module ([`TdxModule<ExtInited>`](crate::TdxModule)) and owns
//!   the allocator of guest KeyIDs (HKIDs) from the partition's guest
//!   range. Only a ready module becomes a `TdHost`, so only a ready module
//!   creates TDs.
//! - [`Td<S, H>`]: one TD, with its state `S` a type: [`Created`]
//!   (TDH.MNG.CREATE) → [`KeysConfigured`] (TDH.MNG.KEY.CONFIG on one CPU
//!   of every package) → [`TdcsAdded`] (TDH.MNG.ADDCX) → [`Initialized`]
//!   (TDH.MNG.INIT with a [`TdParams`](tdx_types::abi::TdParams) checked against
//!   [`SysInfo`](crate::SysInfo) first; vCPUs, initial pages with
//!   TDH.MEM.PAGE.ADD and optional TDH.MR.EXTEND) → [`Finalized`]
//!   (TDH.MR.FINALIZE; TDH.MEM.PAGE.AUG at 4K/2M, 1G by AUG + PROMOTE,
//!   DEMOTE/PROMOTE, batched removal, giving back an emptied S-EPT page
//!   with TDH.MEM.SEPT.REMOVE). Each operation exists only on the state that
//!   allows it. `H` is how the TD reaches its host: `&TdHost` (borrowed,
//!   zero cost) or `Arc<TdHost>` (owned, so a VMM keeps host and TDs in one
//!   struct and hands TDs to spawned threads); see [`TdHostRef`].
//! - vCPUs, on an initialized TD: a [`VcpuBuilder`] goes [`VpCreated`]
//!   (TDH.VP.CREATE) → [`VpTdcxAdded`] (TDH.VP.ADDCX) → a [`VcpuId`]
//!   (TDH.VP.INIT on the vCPU's CPU, in the version the module takes); it
//!   borrows the TD, so the TD cannot be finalized mid-build.
//!   [`Td::create_vcpu`] does all three.
//! - Running, once finalized: a [`Vcpu`] handle per vCPU, owned by the
//!   thread that runs it ([`Td::vcpu`], or [`Vcpu::new`] with an
//!   `Arc<Td>`); [`Vcpu::enter`] issues TDH.VP.ENTER on a CPU and returns
//!   the exit decoded ([`TdExit`](tdx_types::exit::TdExit)); after a
//!   TDG.VP.VMCALL, [`Vcpu::vmcall`] decodes the request per the GHCI and
//!   the reply methods answer it. A vCPU that moves to another CPU is
//!   flushed on the old one first; the TD records where each vCPU may be
//!   associated, and teardown flushes it there.
//! - Metadata, once initialized ([`HasMetadata`]): [`Td::read`] of a typed
//!   TD field ([`tdx_types::metadata::td_fields`]: attributes, XFAM, vCPU counts,
//!   HKID, op state, TSC frequency, MRCONFIGID/MROWNER/MROWNERCONFIG, ...),
//!   [`Td::mrtd`], [`Td::read_raw`] of any field ID, and
//!   [`Td::vcpu_field`] of a vCPU's ([`tdx_types::metadata::vcpu_fields`]).
//! - Private memory is given as [`GuestFrame`]s: a `Pfn` or an aligned run,
//!   checked by arithmetic only; the caller's promise is made once, in the
//!   `unsafe` constructor.
//! - Removal in batches: a [`Zap`] blocks any number of pages
//!   (TDH.MEM.RANGE.BLOCK), then [`Zap::commit`] issues one TDH.MEM.TRACK,
//!   one kick of the vCPUs and a TDH.MEM.PAGE.REMOVE per page.
//!   [`Td::unmap`] is a batch of one, [`Td::unmap_range`] a batch of every
//!   page in a GPA range (a private-to-shared conversion).
//! - [`Td::teardown`], on every state: VP.FLUSH, VPFLUSHDONE,
//!   PHYMEM.CACHE.WB per package, KEY.FREEID, reclaim of every page with the
//!   TDR last, and a [`TeardownReport`] listing what came back and what had
//!   to be leaked, with the reason. Dropping a `Td` runs the teardown too
//!   (the guest frames go back to the VMM through
//!   [`FrameDeallocator::return_guest_frames`], the report to
//!   [`FrameDeallocator::dropped_td`], leaks to
//!   [`FrameDeallocator::leak_pages`]).
//!
//! Failing transitions hand the TD back ([`TdFailure`], a
//! [`Failed`](crate::Failed) with the TD in `returned`) so the caller can
//! retry or tear it down; a failed mapping hands the frame back the same
//! way. A map that overlaps what is mapped is refused from the TD's own
//! record before any SEAMCALL ([`TdError::Occupied`], saying what is in the
//! way: a page of the same or a larger size, or a table of smaller pages). Busy and
//! entropy statuses are retried as the [`RetryPolicy`] says; other failures
//! are [`TdError`]s naming the leaf and the GPA or PFN.
//!
//! TD_PARAMS come from [`TdConfig`] (a typed builder) or are given raw.
//!
//! Not here: TD partitioning (L2 VMs); the shared EPT (a VMM's ordinary
//! EPT, which it manages as for any VM).
//!
//! # Dynamic PAMT
//!
//! A module configured with Dynamic PAMT
//! ([`TdxModule::uses_dynamic_pamt`](crate::TdxModule::uses_dynamic_pamt))
//! keeps the 4K-level PAMT of a 2 MiB range only while the host has given
//! it a *pair* of pages for that range (Intel TDX module 1.5.16 and later;
//! `tdh_phymem_pamt_add.c`). The library does this for the caller: every
//! call that hands the module a 4K page (TD creation's TDR, TDCS pages,
//! vCPU pages, S-EPT pages, [`add_page`](Td::add_page), 4K
//! [`map`](Td::map), [`demote`](Td::demote)'s new S-EPT page) first takes a
//! reference on the page's range, adding the range's pair
//! (TDH.PHYMEM.PAMT.ADD, two pages from [`FrameAllocator::alloc_pages`], placed
//! on the node the plan keeps the range's TDMR's PAMT on, as
//! [`Plan::pamt_node_hint`](crate::plan::Plan::pamt_node_hint) says) if it
//! has none; every call that takes a 4K page back (removal, teardown's
//! reclaim, the S-EPT page a PROMOTE or SEPT.REMOVE frees) drops it, after
//! the SEAMCALL returned, and the last one removes the pair
//! (TDH.PHYMEM.PAMT.REMOVE), writes its pages back under the global
//! KeyID, clears and frees them. [`demote`](Td::demote) of a 2 MiB page
//! gives the module a new pair with the leaf and [`promote`](Td::promote)
//! of 512 4K pages gets it back; a 2 MiB [`map`](Td::map) needs its range
//! to have no pair (the module refuses one otherwise), and 1 GiB pages
//! none. [`TdHost::pamt_pairs`] counts the pairs; teardown reports the
//! pairs it removes as [`PageRole::Pamt`].
//!
//! Each range's state is one atomic word (its page count, its pair, a busy
//! bit), so pages of different ranges never meet, and a page of a range
//! that has a pair costs one compare-and-swap. The thread that adds or
//! removes a range's pair holds that range busy for the SEAMCALL; another
//! thread needing the same range meanwhile retries under its
//! [`RetryPolicy`] and then gets [`TdError::PamtInProgress`], contention
//! like [`TdError::InProgress`]. (Linux's series holds one global spinlock
//! around every pair's PAMT.ADD and PAMT.REMOVE.) A PAMT.REMOVE the module
//! refuses leaves the pair installed with no page: the next page of the
//! range reuses it, a 2 MiB mapping of the range removes it first, and
//! [`TdHost::release_pairs`] removes what is left (also called by
//! [`TdHost::into_module`]).
//!
//! Dynamic PAMT makes the first 4K page of a range allocate two pages and
//! issue one more SEAMCALL, and the last one issue one more and free two:
//! with it, [`map`](Td::map) at 4K allocates on that path (fallibly: a
//! failure is [`TdError::Platform`] with the frame back).
//!
//! # Threads and locks
//!
//! **What is `Send` and `Sync`.** [`TdHost<B, P>`] is `Send` and `Sync`
//! when the backend and the platform are (every constructor requires
//! `B: Seamcall + Sync` and `P: Platform + Sync`). A [`Td<S, H>`] is `Send`
//! and `Sync` when `H` is (`&TdHost` and `Arc<TdHost>` both are): move it
//! to another thread, or share it with `Arc<Td<..>>`. [`GuestFrame`] and
//! [`TeardownReport`] are plain data. A [`Zap`] borrows its TD and is
//! `Send` (finish it on another thread) but meant for one thread at a
//! time. A [`Vcpu`] is `Send` when the TD is `Sync`: one per vCPU
//! (a second is refused), entered through `&mut self`, so one thread runs
//! a vCPU at a time; it holds the TD (`&Td` or `Arc<Td>`), so the TD
//! cannot be torn down while it exists. Static assertions in this
//! crate's tests pin these.
//!
//! **What may run concurrently with what.** On a finalized TD every
//! runtime operation takes `&self`: [`map`](Td::map), [`map_1g`](Td::map_1g),
//! [`unmap`](Td::unmap), [`unmap_range`](Td::unmap_range), [`zap`](Td::zap),
//! [`demote`](Td::demote), [`promote`](Td::promote),
//! [`remove_table`](Td::remove_table). Any number of threads call them at
//! once. The library keeps no lock of its own for them: the TD's record of
//! its S-EPT is a tree of atomic entries (the shape of the S-EPT itself),
//! and an operation claims the entries it changes with one
//! compare-and-swap each. So operations on different GPAs never wait for
//! each other in the library; two operations on the same entry never both
//! proceed: the second gets [`TdError::InProgress`] at once, changes
//! nothing, and its frame comes back. Building (vCPUs, `add_page`,
//! `finalize`) takes `&mut self` or `self`, as the module requires those
//! leaves to be serialized per TD anyway (PAGE.ADD, MR.EXTEND, MR.FINALIZE
//! and the TD-level build leaves take the TDR exclusively).
//! Teardown takes the TD by value, so it never runs beside a runtime
//! operation on the same TD. Different TDs share the HKID pool (lock-free),
//! the module, and the host's lock around TD-global leaves (creation and
//! teardown only).
//!
//! One more case makes a mapping step aside: while a removal on the TD is
//! retrying TDH.MEM.RANGE.BLOCK against the S-EPT tree lock (which every
//! mapping takes shared), new mappings on that TD answer
//! [`TdError::InProgress`] without issuing their leaf, so the readers
//! drain; KVM's write lock stops its fault path for the same reason.
//!
//! **BUSY.** The module arbitrates between threads itself: each leaf takes
//! the module's locks it needs (TDR, S-EPT tree, S-EPT entry, PAMT entry,
//! TLB epoch, key tables) with one attempt and answers `TDX_OPERAND_BUSY`
//! when another logical processor holds one. A vCPU in the guest can be
//! that other holder (TDG.MEM.PAGE.ACCEPT locks an S-EPT entry; TDH.VP.ENTER
//! holds the TDR shared and, for its zero-step mitigation, the S-EPT tree).
//! The library calls the leaf again as the TD's [`RetryPolicy`] says
//! (default: up to 1000 times with [`Cpus::yield_now`] in between;
//! [`Td::set_map_policy`] with [`RetryPolicy::IMMEDIATE`] for a fault path
//! that returns to the guest, while removals keep retrying)
//! and then returns [`TdError::Busy`] with the frame. [`TdError::is_contention`]
//! tells a VMM that the same call may succeed later: retry the fault, as
//! KVM does with `-EBUSY`. The module's host-priority rule means a host
//! thread that got BUSY on an S-EPT entry should come back to it: until a
//! host leaf locks that entry again, the guest's ACCEPT of it is refused.
//!
//! **The kick.** Removal, DEMOTE, PROMOTE and SEPT.REMOVE need every vCPU
//! that may hold stale translations out of the guest after TDH.MEM.TRACK:
//! the caller's `kick` does that (an IPI to the CPUs running the TD's
//! vCPUs, and wait until each has left the guest at least once). The
//! library calls it holding no lock: the only things held are the claims
//! on the entries being removed, which a vCPU thread never waits for (a
//! fault on such a GPA gets `InProgress`). So a kick that waits for vCPU
//! threads cannot deadlock on the library. A batch ([`Zap`]) costs one
//! TRACK and one kick however many pages it removes; two batches committed
//! at once on one TD may find the TLB-epoch lock busy (TRACK against TRACK),
//! which the retry policy handles.
//!
//! **Compared with KVM** (`arch/x86/kvm/vmx/tdx.c`, `mmu/tdp_mmu.c`): KVM
//! maps (PAGE.AUG, SEPT.ADD) with `mmu_lock` held for read and freezes the
//! mirror SPTE by cmpxchg, which is what the claim on an entry does here;
//! it returns `-EBUSY` on module contention so the fault is retried, as
//! [`RetryPolicy::IMMEDIATE`] does. It takes `mmu_lock` for write around
//! BLOCK/TRACK/kick/REMOVE, serializing every zap of a VM; here zaps of
//! different GPAs proceed in parallel and a batch shares one TRACK and one
//! kick (KVM tracks and kicks once per page). The TD-global leaves
//! (TDH.MNG.CREATE, KEY.CONFIG, VPFLUSHDONE, PHYMEM.CACHE.WB, KEY.FREEID)
//! run one TD at a time per host, as under KVM's global `tdx_lock`: the
//! module would otherwise answer BUSY on its key tables for as long as
//! another TD's cache write-back takes. Should a CACHE.WB still find, on
//! resume, that another caller's CACHE.WB completed under it
//! (`TDX_WBCACHE_RESUME_ERROR`: a caller outside this host), it is started
//! again rather than failing the teardown.
//!
//! **What may block or sleep.** Only [`Cpus::yield_now`], called from
//! the thread that called the library, when the policy is
//! [`Backoff::Yield`](crate::retry::Backoff::Yield). Runtime operations
//! never wait for another thread. Creating, tearing down and dropping a TD
//! wait, yielding, while another TD of the same host is in its TD-global
//! leaves: they need a context that may yield. Closures given to
//! [`Cpus::on_cpu`] issue exactly one SEAMCALL and never yield, so a
//! platform may run them in atomic context.
//!
//! **Allocation.** Two kinds, both fallible on every call below (after
//! [`TdHost::new`]): *pages* from [`FrameAllocator::alloc_pages`] (TDR, TDCS,
//! TDVPR/TDCX, S-EPT pages, the PAGE.ADD staging page, Dynamic PAMT
//! pairs), whose failure is [`TdError::Platform`], and *heap* memory from
//! the global allocator for the library's own records (the TD's record,
//! the nodes of its S-EPT mirror, its page lists, a removal batch's
//! lists), whose failure is [`TdError::Alloc`]. Neither panics or aborts;
//! a failed call gives back what it was given (the TD, the frame: see
//! [`TdFailure`]) and every page it had taken. Heap room is asked for
//! before the SEAMCALL that needs it: a vCPU's slot and TDCX list before
//! TDH.VP.CREATE, a batch's room before each BLOCK, a mirror node before
//! SEPT.ADD or DEMOTE. Frames a removal leaves for teardown (in doubt, or
//! not written back) go on the TD's lists when those can grow, and
//! otherwise stay where the TD already records them (the page's mirror
//! entry, marked "parked": the GPA is refused until teardown; for a freed
//! S-EPT page, its retired mirror node), so those failure paths never
//! need memory. Teardown and drop allocate only for the report's lists;
//! what a list has no room for is counted in the report's `unlisted_`
//! fields ([`TeardownReport::is_complete`]).
//!
//! **Per call.** What each public call may do besides its SEAMCALLs.
//! "Yields" means [`Cpus::yield_now`], only under a
//! [`Backoff::Yield`](crate::retry::Backoff::Yield) policy (a
//! [`RetryPolicy::spin`] or [`RetryPolicy::IMMEDIATE`] policy never
//! yields); "waits" means it may wait, yielding, for another thread of the
//! library; "pages" means [`FrameAllocator::alloc_pages`] and "heap" the global
//! allocator, both always fallibly (see above); "frees" means
//! [`FrameDeallocator::free_pages`]; "kick" means it calls the caller's kick;
//! "other CPUs" means [`Cpus::on_cpu`] or [`Cpus::enter_guest`]. A
//! call whose row has neither "waits" nor "other CPUs" may run in atomic
//! context if its policy does not yield and the platform's `alloc_pages`,
//! `free_pages`, the global allocator (where the row says "heap") and the
//! kick may (a kernel passes atomic-safe allocators there).
//!
//! | call | yields | waits | allocates: pages | allocates: heap | frees | kick | other CPUs |
//! |---|---|---|---|---|---|---|---|
//! | [`TdHost::new`] (bring-up) | | | | the HKID pool, the pair table (may abort: see the crate's *Allocation*) | | | |
//! | [`Td::create`] | yes | yes (TD-global leaves) | the TDR | the TD's record, its mirror's root | on failure | | |
//! | [`Td::configure_keys`] | yes | yes (TD-global leaves) | | | | | KEY.CONFIG on each package |
//! | [`Td::add_tdcs`], [`Td::init`] | yes | | TDCS pages (`add_tdcs`) | the TDCS list (`add_tdcs`) | on failure | | |
//! | [`Td::build`], [`TdHost::build_td`] | as the four rows above, together | | | | | | |
//! | [`Td::create_vcpu`], [`VcpuBuilder`] steps | yes | | TDVPR, TDCX | a vCPU slot and its TDCX list ([`Td::new_vcpu`]) | on failure | | VP.INIT on the vCPU's CPU |
//! | [`Td::add_page`] | yes | | the staging page, S-EPT pages | mirror nodes | on failure | | |
//! | [`Td::finalize`], [`Td::read`], [`Td::mrtd`] | yes | | | | | | |
//! | [`Td::map`] | yes | | S-EPT pages as needed; a Dynamic PAMT pair | mirror nodes as needed | on failure | | |
//! | [`Td::map_1g`] | yes | | S-EPT pages | mirror nodes | the freed S-EPT page | yes (PROMOTE) | |
//! | [`Td::unmap`], [`Td::unmap_range`], [`Zap`] | yes | | | batch lists (not `unmap`); an entry of the TD's lists if a frame must wait for teardown | a removed Dynamic PAMT pair | yes | |
//! | [`Td::demote`] | yes | | the new S-EPT page, a pair | its mirror node | on failure | yes | |
//! | [`Td::promote`], [`Td::remove_table`] | yes | | | an entry of the TD's error list if the freed S-EPT page is not written back | the freed S-EPT page, a pair | yes | |
//! | [`Vcpu::enter`](Vcpu::enter) | only in the flush after a move | | | | | | the entry itself; VP.FLUSH on the old CPU after a move |
//! | [`Vcpu::flush`](Vcpu::flush) | yes | | | | | | VP.FLUSH on the vCPU's CPU |
//! | [`Td::mapping`], [`Td::vcpus`], [`Td::private_pages`] | | | | | | | |
//! | [`Td::teardown`], dropping a [`Td`] | yes | yes (TD-global leaves) | | the report's lists | every page | | VP.FLUSH, CACHE.WB on each package |
//! | [`TdHost::release_pairs`], [`TdHost::into_module`] | | | | | the pairs removed | | |
//!
//! [`Cpus::enter_guest`]: crate::Cpus::enter_guest
//! [`Cpus::on_cpu`]: crate::Cpus::on_cpu
//! [`Cpus::yield_now`]: crate::Cpus::yield_now

// UNSAFETY: the TD leaves of tdx-sys are `unsafe fn`s; each call says which
// page it hands over or takes back and why that is allowed.
#![allow(unsafe_code)]

mod build;
mod config;
mod error;
mod frame;
mod heap;
mod hkid;
mod host;
mod memory;
mod mirror;
mod pairs;
mod run;
mod teardown;
mod vcpu;

use alloc::{boxed::Box, vec::Vec};
use core::{fmt, marker::PhantomData, mem::ManuallyDrop};

use tdx_sys::leaf;
use tdx_types::{
    FirmwarePage, Gpa, Leaf, LeafVersion, PageSize, Pfn, PfnRange, PfnRun, Size4K, TdxLevel,
    TdxStatus,
    metadata::{FieldValue, MAX_FIELD_ELEMENTS, MdFieldId, Sha384Digest, TdField, VcpuField},
    regs::PageInfo,
};

pub use build::check_params;
pub use config::TdConfig;
pub use error::{Occupant, Operand, ParamsError, TdError, TdFailure, XfamRule};
pub use frame::GuestFrame;
pub use hkid::{Hkid, HkidPool};
pub use host::{TdHost, TdHostRef, TdHostRefused};
pub use memory::{
    AugPageSize, HugePageSize, Map1gFailure, Map1gLeft, Map1gParts, Outcome, Removed, Zap,
    ZapReport,
};
pub use run::{FinalizedTd, Vcpu};
pub use teardown::{LeakedPage, PageRole, TeardownReport};
pub use vcpu::{InitialRcx, VcpuBuilder, VcpuId, VcpuState, VpCreated, VpTdcxAdded, X2ApicId};

/// A private page the TD maps ([`Td::mapping`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// Its first GPA (aligned to its size).
    pub gpa: Gpa,
    /// Its size.
    pub size: TdxLevel,
    /// Its first frame.
    pub first: Pfn,
    /// What is happening to it.
    pub state: MappingState,
}

/// The state of a mapped page ([`Mapping::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MappingState {
    /// Mapped; nobody is changing it.
    Mapped,
    /// An operation on another thread holds it (removal, split, merge).
    InProgress,
    /// A removal that failed after TDH.MEM.RANGE.BLOCK left it blocked:
    /// the guest cannot use it; the next removal resumes from there.
    Blocked,
    /// Removed from the S-EPT, but its frames wait for teardown (in doubt,
    /// or not written back) and the TD's list for such frames could not
    /// grow, so the entry holds them: the GPA is refused until teardown,
    /// which gives the frames back.
    Parked,
}

use crate::{
    platform::{CacheMaintenance, FrameAllocator, FrameDeallocator, Placement},
    retry::{RetryPolicy, retry, retry_on_cpu, retry_out},
};

mod sealed {
    pub trait Sealed {}
}

/// A TD state. Sealed: the five states below are the only ones.
pub trait TdState: sealed::Sealed {}

/// TDH.MNG.CREATE done: the TD has a TDR and an HKID.
#[derive(Debug)]
pub struct Created(());
/// TDH.MNG.KEY.CONFIG done on every package.
#[derive(Debug)]
pub struct KeysConfigured(());
/// The TDCS pages are added (TDH.MNG.ADDCX).
#[derive(Debug)]
pub struct TdcsAdded(());
/// TDH.MNG.INIT done: vCPUs and initial memory may be added.
#[derive(Debug)]
pub struct Initialized(());
/// TDH.MR.FINALIZE done: the measurement is fixed, the TD may run, and
/// private memory is added with TDH.MEM.PAGE.AUG.
#[derive(Debug)]
pub struct Finalized(());

impl sealed::Sealed for Created {}
impl sealed::Sealed for KeysConfigured {}
impl sealed::Sealed for TdcsAdded {}
impl sealed::Sealed for Initialized {}
impl sealed::Sealed for Finalized {}
impl TdState for Created {}
impl TdState for KeysConfigured {}
impl TdState for TdcsAdded {}
impl TdState for Initialized {}
impl TdState for Finalized {}

/// The states in which private memory can be mapped with TDH.MEM.PAGE.AUG:
/// after TDH.MNG.INIT (module 1.5 allows AUG before finalization; modules
/// that do not answer with a typed error and the frame comes back) and
/// after finalization.
pub trait MayAug: TdState {}
impl MayAug for Initialized {}
impl MayAug for Finalized {}

/// The states in which the TD's metadata can be read (TDH.MNG.RD and
/// TDH.VP.RD need TDH.MNG.INIT done): [`Initialized`] and [`Finalized`].
pub trait HasMetadata: TdState {}
impl HasMetadata for Initialized {}
impl HasMetadata for Finalized {}

/// Calls of TDH.PHYMEM.CACHE.WB on one package before giving up (KVM:
/// 10000).
pub const CACHE_WB_LIMIT: u32 = 10_000;

use heap::Shared;

/// What a TD holds, behind the type-state.
pub(crate) struct Inner {
    tdr: FirmwarePage,
    hkid: Option<Hkid>,
    tdcs: Vec<FirmwarePage>,
    vcpus: Vec<vcpu::VcpuSlot>,
    /// The S-EPT pages and private pages, as a tree shaped like the S-EPT.
    tree: mirror::Tree,
    /// Frames removed from the TD whose PAGE.WBINVD failed: they may hold
    /// dirty lines of the TD's key until the teardown's CACHE.WB.
    unflushed: Shared<(PfnRun, PageRole)>,
    /// Pages the module's answer left in doubt: it named another page as
    /// the one it removed or freed, so ours may still be the module's.
    /// Teardown reclaims them (and leaks any it cannot) instead of
    /// trusting either answer.
    in_doubt: Shared<(PfnRun, PageRole)>,
    /// Host page holding PAGE.ADD sources (before finalization).
    staging: Option<Pfn>,
    /// Errors of calls that still succeeded, for the teardown report.
    deferred: Shared<TdError>,
    /// Errors of calls that still succeeded that `deferred` had no room
    /// for (the allocator failed): counted for the teardown report.
    deferred_unlisted: core::sync::atomic::AtomicU64,
    /// EPT levels (4 or 5), known after TDH.MNG.INIT.
    ept_levels: u8,
    /// TD_PARAMS MAX_VCPUS, known after TDH.MNG.INIT (0 before).
    max_vcpus: u16,
    /// What operations other than mapping do on BUSY.
    policy: RetryPolicy,
    /// What mapping (PAGE.AUG, SEPT.ADD) does on BUSY.
    map_policy: RetryPolicy,
    /// Removals now waiting for the S-EPT tree lock: new mappings step
    /// aside while it is not 0 (`memory::retry_tree_exclusive`).
    zaps_waiting: core::sync::atomic::AtomicU32,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("tdr", &self.tdr)
            .field("hkid", &self.hkid)
            .field("vcpus", &self.vcpus.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A Trust Domain in state `S`, reaching its host through `H`
/// (`&TdHost<B, P>` or `Arc<TdHost<B, P>>`: [`TdHostRef`]).
///
/// `Send` and `Sync` when `H` is; see [Threads and locks](self#threads-and-locks)
/// for what may run concurrently.
///
/// # Invariants
///
/// `S` matches what the module has done with the TD; the TD holds every
/// page the module took for it (control pages as [`FirmwarePage`]s, private
/// memory as the frames of the [`GuestFrame`]s it was given) until a
/// transition or [`teardown`](Td::teardown) gives them back.
///
/// # Examples
///
/// Each step of the build, measured initial memory, finalization, then a
/// 2 MiB page mapped and unmapped at run time:
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// use tdx_api::{FrameAllocator, Placement, td::GuestFrame};
/// use tdx_types::{Gpa, Pfn, Size2M, Size4K};
///
/// let td = host.create_td().unwrap(); // TDH.MNG.CREATE
/// let td = td.configure_keys().map_err(|f| f.error).unwrap(); // KEY.CONFIG per package
/// let td = td.add_tdcs().map_err(|f| f.error).unwrap(); // TDH.MNG.ADDCX
/// let params = TdConfig::builder().max_vcpus(1).build().to_params();
/// let mut td = td.init(&params).map_err(|f| f.error).unwrap(); // TDH.MNG.INIT
/// td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
///
/// // The VMM's memory: frames from any allocator; only their numbers matter.
/// let run = sim.alloc_pages(1024, 512, Placement::Anywhere).unwrap();
/// let base = run.first().as_u64();
/// // SAFETY: the frames were allocated above for this TD; the host leaves
/// // them alone until the TD gives them back.
/// let boot = unsafe { GuestFrame::<Size4K>::new(Pfn::new(base + 512)) }.unwrap();
/// let page = [0x90u8; 4096];
/// td.add_page(Gpa::new(0xff_f000), boot, &page, true).map_err(|f| f.error).unwrap();
/// let td = td.finalize().map_err(|f| f.error).unwrap(); // TDH.MR.FINALIZE
///
/// // SAFETY: as above; a 2M frame starts on a multiple of 512 frames.
/// let big = unsafe { GuestFrame::<Size2M>::new(Pfn::new(base)) }.unwrap();
/// td.map(Gpa::new(0x20_0000), big).map_err(|f| f.error).unwrap();
/// assert_eq!(td.private_pages(), 2);
/// // The kick makes every vCPU leave the guest; none runs here.
/// let big = td.unmap::<Size2M>(Gpa::new(0x20_0000), &|| {}).unwrap();
/// assert_eq!(big.pfn().as_u64(), base);
///
/// let report = td.teardown();
/// assert!(report.is_clean());
/// assert_eq!(report.guest_frames_returned(), 1); // the initial page
/// ```
#[must_use = "a TD holds pages; tear it down to get them back with a report"]
pub struct Td<S: TdState, H: TdHostRef> {
    host: H,
    /// Taken out exactly once: by `teardown`, a state change
    /// (`into_parts`) or `Drop`.
    inner: ManuallyDrop<Box<Inner>>,
    _state: PhantomData<S>,
}

/// Dropping a TD tears it down; its guest frames go back to the VMM
/// through [`FrameDeallocator::return_guest_frames`], leaked pages to
/// [`FrameDeallocator::leak_pages`], and the report to
/// [`FrameDeallocator::dropped_td`]. Prefer [`Td::teardown`], which hands
/// the frames and the report to the caller.
impl<S: TdState, H: TdHostRef> Drop for Td<S, H> {
    fn drop(&mut self) {
        // `teardown` and state changes take the fields out without running
        // this (they wrap the whole TD in `ManuallyDrop`), so this is a TD
        // nobody tore down.
        // SAFETY: `inner` is taken once, here, and not used again.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        let host = self.host.host();
        let report = teardown::run(host, *inner);
        let p = host.module().platform();
        // Nobody else will take the guest frames back: the platform does.
        for run in &report.guest_returned {
            // SAFETY: the TD held these frames as the caller's
            // `GuestFrame`s, and teardown lists a run as returned only
            // after the module let go of it, its lines were written back
            // (CACHE.WB) and, with the erratum, it was cleared; the report
            // is dropped here, so nothing else hands them out.
            unsafe { p.return_guest_frames(*run) };
        }
        p.dropped_td(&report);
    }
}

impl<S: TdState, H: TdHostRef> fmt::Debug for Td<S, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Td")
            .field("state", &core::any::type_name::<S>())
            .field("tdr", &self.inner.tdr)
            .field("hkid", &self.inner.hkid)
            .field("vcpus", &self.inner.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl<S: TdState, H: TdHostRef> Td<S, H> {
    /// The TDR page's frame (the TD's name in every leaf).
    pub fn tdr(&self) -> Pfn {
        self.inner.tdr.pfn()
    }

    /// The TD's HKID.
    pub fn hkid(&self) -> u16 {
        self.inner.hkid.as_ref().map_or(0, Hkid::get)
    }

    /// The host.
    pub fn host(&self) -> &TdHost<H::Backend, H::Platform> {
        self.host.host()
    }

    /// What the TD's operations do when the module answers BUSY (copied
    /// from the host's [`TdHost::policy`] when the TD was created), except
    /// mapping, which follows [`map_policy`](Td::map_policy).
    pub fn policy(&self) -> RetryPolicy {
        self.inner.policy
    }

    /// What [`map`](Td::map) does when the module answers BUSY (for its
    /// TDH.MEM.PAGE.AUG and TDH.MEM.SEPT.ADD): the fault path, which a VMM
    /// may want to return to the guest at once
    /// ([`RetryPolicy::IMMEDIATE`]) while removals keep retrying.
    pub fn map_policy(&self) -> RetryPolicy {
        self.inner.map_policy
    }

    /// Sets the policy of every operation, mapping included.
    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.inner.policy = policy;
        self.inner.map_policy = policy;
    }

    /// Sets the policy of mapping only (see [`map_policy`](Td::map_policy)).
    pub fn set_map_policy(&mut self, policy: RetryPolicy) {
        self.inner.map_policy = policy;
    }

    /// The vCPUs built so far (TDH.VP.INIT done); half-built ones are not
    /// listed.
    pub fn vcpus(&self) -> impl Iterator<Item = VcpuId> + '_ {
        self.inner.vcpus.iter().filter_map(vcpu::VcpuSlot::id)
    }

    /// Control pages (TDR, TDCS, TDVPR, TDCX, S-EPT) the module holds for
    /// this TD. Walks the TD's S-EPT record (a diagnostic, not a fast path).
    pub fn control_pages(&self) -> usize {
        let mut sept = 0;
        self.inner.tree.for_each(&mut |_, _, e| {
            sept += usize::from(matches!(e, mirror::Entry::Table(..)));
        });
        1 + self.inner.tdcs.len()
            + self
                .inner
                .vcpus
                .iter()
                .map(vcpu::VcpuSlot::pages)
                .sum::<usize>()
            + sept
    }

    /// What the TD maps at `gpa`, as its record of the S-EPT says now:
    /// the page (its size, first GPA and first frame, and whether an
    /// operation holds it or a failed removal left it blocked), or `None`
    /// if nothing is mapped there (or a table there is being changed). A
    /// read that claims nothing: another thread may change it right after.
    pub fn mapping(&self, gpa: Gpa) -> Option<Mapping> {
        let (level, e) = self.inner.tree.lookup(gpa.as_u64());
        let (first, state) = match e {
            mirror::Entry::Leaf(first, hold) => (
                first,
                match hold {
                    mirror::Hold::Idle => MappingState::Mapped,
                    mirror::Hold::Busy => MappingState::InProgress,
                    mirror::Hold::Blocked => MappingState::Blocked,
                },
            ),
            mirror::Entry::Parked(first, _) => (first, MappingState::Parked),
            _ => return None,
        };
        let size = match level {
            0 => TdxLevel::L4K,
            1 => TdxLevel::L2M,
            _ => TdxLevel::L1G,
        };
        Some(Mapping {
            gpa: Gpa::new(gpa.as_u64() & !(size.bytes() - 1)),
            size,
            first,
            state,
        })
    }

    /// Private pages mapped (of any size). Walks the TD's S-EPT record (a
    /// diagnostic, not a fast path).
    pub fn private_pages(&self) -> usize {
        let mut n = 0;
        self.inner.tree.for_each(&mut |_, _, e| {
            n += usize::from(matches!(e, mirror::Entry::Leaf(..)));
        });
        n
    }

    /// Entries of the TD's S-EPT record that an operation holds now (an
    /// entry being mapped, removed, split or merged, a table being added):
    /// 0 whenever no operation on the TD is running. A diagnostic: a GPA
    /// whose operations keep answering [`TdError::InProgress`] while this
    /// is 0 would be a bug.
    pub fn entries_in_flight(&self) -> usize {
        let mut n = 0;
        self.inner.tree.for_each(&mut |_, _, e| {
            n += usize::from(matches!(
                e,
                mirror::Entry::Adding
                    | mirror::Entry::Leaf(_, mirror::Hold::Busy)
                    | mirror::Entry::Table(_, mirror::Hold::Busy)
            ));
        });
        n
    }

    /// Tears the TD down from whatever state it is in and reports every
    /// page: given back to the platform (control pages), returned to the
    /// caller (private frames), or leaked with the reason.
    #[doc(alias = "TDH.VP.FLUSH")]
    #[doc(alias = "TDH.MNG.VPFLUSHDONE")]
    #[doc(alias = "TDH.PHYMEM.CACHE.WB")]
    #[doc(alias = "TDH.MNG.KEY.FREEID")]
    #[doc(alias = "TDH.PHYMEM.PAGE.RECLAIM")]
    pub fn teardown(self) -> TeardownReport {
        let (host, inner) = self.into_parts();
        teardown::run(host.host(), *inner)
    }

    /// Takes the TD apart without running `Drop`.
    fn into_parts(self) -> (H, Box<Inner>) {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used again nor dropped (ManuallyDrop), so
        // each field is moved out exactly once.
        let host = unsafe { core::ptr::read(&this.host) };
        // SAFETY: as above; `inner` was not taken before (only `Drop` takes
        // it, and it does not run for `this`).
        let inner = unsafe { core::ptr::read(&this.inner) };
        (host, ManuallyDrop::into_inner(inner))
    }

    fn into_state<T: TdState>(self) -> Td<T, H> {
        let (host, inner) = self.into_parts();
        Td {
            host,
            inner: ManuallyDrop::new(inner),
            _state: PhantomData,
        }
    }

    fn fail<E>(self, error: TdError) -> Result<E, TdFailure<Self>> {
        Err(TdFailure::new(error, self))
    }

    fn b(&self) -> &H::Backend {
        self.host.host().module().backend()
    }

    fn p(&self) -> &H::Platform {
        self.host.host().module().platform()
    }

    /// A fresh page from the platform, CLFLUSHed, for the module.
    fn fresh_page(&self, policy: &RetryPolicy) -> Result<Pfn, TdError> {
        let pfn = self
            .p()
            .alloc_pages(1, 1, Placement::Anywhere)
            .map_err(TdError::Platform)?
            .first();
        self.p().clflush_page(pfn);
        // With Dynamic PAMT the page's 2 MiB range needs a pair before the
        // module takes it; `free_refused` or the page's removal gives the
        // reference back.
        if let Err(e) = self.host().pair_get(pfn, policy) {
            // SAFETY: allocated above, only CLFLUSHed: ours.
            unsafe {
                self.p()
                    .free_pages(PfnRun::from(PfnRange::<Size4K>::from(pfn)))
            };
            return Err(e);
        }
        Ok(pfn)
    }

    /// Keeps the error of a call that still succeeded for the teardown
    /// report ([`TeardownReport::errors`]); if that list cannot grow (the
    /// allocator failed), counts it
    /// ([`TeardownReport::unlisted_errors`]). Never allocates infallibly.
    fn defer(&self, e: TdError) {
        if self.inner.deferred.try_push(e).is_err() {
            self.inner
                .deferred_unlisted
                .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Frees a page the module refused (it never took it).
    fn free_refused(&self, pfn: Pfn) {
        self.host().pair_put(pfn);
        // SAFETY: callers pass only pages allocated by `fresh_page` that the
        // module did not take (the leaf that would have taken it failed), so
        // the module does not own it and no private line exists for it.
        unsafe {
            self.p()
                .free_pages(PfnRun::from(PfnRange::<Size4K>::from(pfn)))
        };
    }

    /// Runs one leaf under the TD's retry policy.
    fn retry(
        &self,
        leaf: LeafVersion,
        on: Operand,
        call: impl FnMut() -> TdxStatus,
    ) -> Result<TdxStatus, TdError> {
        retry(self.p(), &self.inner.policy, leaf, on, call)
    }

    fn check_gpa<Sz: PageSize>(gpa: Gpa) -> Result<PageInfo, TdError> {
        if !gpa.is_aligned(Sz::LEVEL.bytes()) {
            return Err(TdError::Gpa {
                gpa,
                why: "not aligned to the page size",
            });
        }
        PageInfo::for_page::<Sz>(gpa).map_err(|_| TdError::Gpa {
            gpa,
            why: "not a valid private GPA",
        })
    }
}

/// Metadata reads: TDH.MNG.RD of TD-scope fields, TDH.VP.RD of a vCPU's.
///
/// The field descriptors are [`tdx_types::metadata::td_fields`] and
/// [`tdx_types::metadata::vcpu_fields`]: each says which leaf reads it and what
/// its elements make ([`TdField`], [`VcpuField`]). The IDs are the
/// module's own (module 1.5.01's lookup tables), so the reads work alike on
/// the simulator and on a real module; busy answers are retried as the
/// TD's [`RetryPolicy`] says, and any other failure is
/// [`TdError::Seamcall`] naming the leaf.
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// # let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
/// # td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let td = td.finalize().map_err(|f| f.error).unwrap();
/// # (|| -> Result<(), tdx_api::td::TdError> {
/// use tdx_types::metadata::{td_fields, TdOpState};
///
/// let mrtd: [u8; 48] = td.mrtd()?;
/// let attributes: u64 = td.read(td_fields::ATTRIBUTES)?;
/// assert_eq!(td.read(td_fields::OP_STATE)?, TdOpState::RUNNABLE);
/// # let _ = (mrtd, attributes);
/// # Ok(()) })().unwrap();
/// ```
impl<S: HasMetadata, H: TdHostRef> Td<S, H> {
    /// One TD-scope element with TDH.MNG.RD (version 0): its value, masked
    /// to the field's width. `id` may be any form of the field's ID (the
    /// module matches class and field code); a field the host may not read
    /// in this TD fails with `TDX_METADATA_FIELD_NOT_READABLE`.
    #[doc(alias = "TDH.MNG.RD")]
    pub fn read_raw(&self, id: MdFieldId) -> Result<u64, TdError> {
        let (b, tdr) = (self.b(), self.tdr());
        let (_, value) = retry_out(
            self.p(),
            &self.inner.policy,
            Leaf::MNG_RD.v0(),
            Operand::Tdr,
            || {
                // SAFETY: TDH.MNG.RD takes no host memory.
                let c = unsafe { leaf::tdh_mng_rd(b, tdr, id) };
                (c.status, c.out)
            },
        )?;
        Ok(value)
    }

    /// A typed TD-scope field: one TDH.MNG.RD per element of its value
    /// (six for a measurement register).
    #[doc(alias = "TDH.MNG.RD")]
    pub fn read<T: FieldValue>(&self, field: TdField<T>) -> Result<T, TdError> {
        read_elements(field.element_ids(), |id| self.read_raw(id))
    }

    /// MRTD, the TD's build measurement (SHA-384, the six elements of
    /// TDCS `MRTD`): all zero until TDH.MR.FINALIZE, then what
    /// [`crate::measure`] computes for the pages added and extended.
    #[doc(alias = "TDH.MNG.RD")]
    pub fn mrtd(&self) -> Result<Sha384Digest, TdError> {
        self.read(tdx_types::metadata::td_fields::MRTD)
    }

    /// A typed field of one of this TD's vCPUs, with TDH.VP.RD (version 0)
    /// on the vCPU's CPU: the module associates the vCPU with the CPU that
    /// reads it (and refuses a vCPU associated with another one), so the
    /// read runs where the vCPU is associated. Refused while a
    /// [`Vcpu`] handle of it exists: read through
    /// [`Vcpu::field`](Vcpu::field), on the thread that runs it.
    #[doc(alias = "TDH.VP.RD")]
    pub fn vcpu_field<T: FieldValue>(
        &self,
        vcpu: VcpuId,
        field: VcpuField<T>,
    ) -> Result<T, TdError> {
        let index = self
            .inner
            .vcpus
            .iter()
            .position(|v| v.tdvpr.pfn() == vcpu.tdvpr && v.associated())
            .ok_or(TdError::UnknownVcpu(vcpu.tdvpr))?;
        if self.inner.vcpus[index]
            .taken
            .load(core::sync::atomic::Ordering::Acquire)
        {
            return Err(TdError::Vcpu {
                tdvpr: vcpu.tdvpr,
                why: "a Vcpu handle runs it: read the field through the handle",
            });
        }
        self.vcpu_field_at(index, field)
    }

    /// [`vcpu_field`](Td::vcpu_field) of the vCPU at `index`.
    pub(super) fn vcpu_field_at<T: FieldValue>(
        &self,
        index: usize,
        field: VcpuField<T>,
    ) -> Result<T, TdError> {
        read_elements(field.element_ids(), |id| self.vp_read(index, id))
    }
}

impl<S: TdState, H: TdHostRef> Td<S, H> {
    /// TDH.VP.RD (version 0) of element `id` of vCPU `index` (creation
    /// order), on the vCPU's CPU.
    fn vp_read(&self, index: usize, id: MdFieldId) -> Result<u64, TdError> {
        use core::sync::atomic::Ordering::Relaxed;
        let (b, v) = (self.b(), &self.inner.vcpus[index]);
        let tdvpr = v.tdvpr.pfn();
        // Where it is associated; after a flush, where it was initialized
        // (TDH.VP.RD then associates it there).
        let cpu = match v.assoc.load(Relaxed) {
            vcpu::NO_CPU => v.cpu,
            c => crate::platform::CpuId(c),
        };
        v.assoc.store(cpu.0, Relaxed);
        let mut value = 0;
        retry_on_cpu(
            self.p(),
            cpu,
            self.inner.policy,
            Leaf::VP_RD.v0(),
            Operand::Vcpu(index),
            &mut || {
                // SAFETY: TDH.VP.RD takes no host memory; it runs on the
                // vCPU's CPU, with which the vCPU is (or becomes)
                // associated.
                let c = unsafe { leaf::tdh_vp_rd(b, tdvpr, id) };
                value = c.out;
                c.status
            },
        )?;
        Ok(value)
    }
}

/// A typed field value from its elements, each read with `read`: at most
/// [`MAX_FIELD_ELEMENTS`] of them, checked when the caller is built.
fn read_elements<T: FieldValue>(
    ids: impl Iterator<Item = MdFieldId>,
    mut read: impl FnMut(MdFieldId) -> Result<u64, TdError>,
) -> Result<T, TdError> {
    const { assert!(T::ELEMENTS >= 1 && T::ELEMENTS <= MAX_FIELD_ELEMENTS) };
    let mut elements = [0u64; MAX_FIELD_ELEMENTS as usize];
    let n = T::ELEMENTS as usize;
    for (slot, id) in elements[..n].iter_mut().zip(ids) {
        *slot = read(id)?;
    }
    Ok(T::from_elements(&elements[..n]))
}

/// True if `s` has the class and code of `c` (operand detail ignored).
pub(crate) fn same_code(s: TdxStatus, c: TdxStatus) -> bool {
    s.raw() >> 32 == c.raw() >> 32
}
