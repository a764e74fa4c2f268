//! The safe TDX host API (`no_std` + `alloc`).
//!
//! This crate holds:
//!
//! - the [`Platform`] traits: the host services tdx-rs needs from the
//!   kernel or hypervisor it runs in, one small trait per concern
//!   ([`FrameAllocator`], [`FrameDeallocator`], [`Cpus`], [`DirectMap`],
//!   [`CacheMaintenance`], whose instructions the library issues itself,
//!   and [`HardwareInfo`], read once), and what each may do (block, sleep,
//!   run in atomic context);
//! - the TDMR/PAMT [`plan`]ner (best and Linux-equivalent strategies, with
//!   the TDH.SYS.CONFIG rule check);
//! - the type-state module bring-up ([`module`]:
//!   [`TdxModule<Unconfigured>`](TdxModule) → `TdmrsSet` → `ExtInited`),
//!   with Dynamic PAMT on a module that has it (1.5.16 and later);
//! - Trust Domains ([`td`]): HKIDs, TD and vCPU build, measured initial
//!   memory, PFN-only private memory ([`GuestFrame`]) that many threads map
//!   and unmap at once (4K/2M/1G, batched removal with [`td::Zap`],
//!   demote/promote), running vCPUs ([`td::Vcpu`]: TDH.VP.ENTER with typed
//!   exits, GHCI TDVMCALLs decoded and answered, migration between CPUs),
//!   typed TD and vCPU metadata, and a teardown that gives back every page
//!   or says why not;
//! - [`TdxPageArray`], the offline MRTD calculator ([`measure`]), and the
//!   [`retry`] policy for the module's BUSY answers.
//!
//! Not covered: TD partitioning (L2 VMs) and migration.
//!
//! # Allocation
//!
//! The crate allocates in two ways, which its docs keep apart: *pages*
//! from [`FrameAllocator::alloc_pages`] (TDR, TDCS, vCPU and S-EPT pages, PAMTs,
//! Dynamic PAMT pairs), always fallibly, and *heap* memory from the global
//! allocator (`alloc`) for its own records.
//!
//! **After bring-up every heap allocation is fallible.** Every call on a
//! [`TdHost`] and its TDs (building a TD and its vCPUs, initial pages,
//! finalizing, mapping, unmapping and conversions, demote and promote,
//! running a vCPU, teardown and dropping a TD) asks the global allocator
//! with `try_reserve` or its own fallible box, never with `Box::new` or a
//! growing `push`: a failure is [`td::TdError::Alloc`], and the call gives
//! back what it was given (the TD, the guest frame) and every page it had
//! taken. Which of these calls allocate heap memory at all, and what for,
//! is in the per-call table of [`td`](td#threads-and-locks); running a
//! vCPU, finalizing, promote, remove_table and unmapping one page allocate
//! none (promote, remove_table and a failed unmap may add one entry to a
//! list kept for teardown, fallibly, and then keep the page or count the
//! error without it). Teardown and dropping a TD cannot fail back: they
//! allocate only for the report's lists and count what those have no room
//! for ([`td::TeardownReport::is_complete`]). The workspace's
//! `tests/alloc_failure.rs` fails each heap allocation of each of these
//! calls in turn and checks the error and that no page is lost.
//!
//! **Bring-up may allocate infallibly** (an allocation failure aborts, as
//! in `Box::new`): [`TdxModule::init`] (the module's system information),
//! [`configure`](TdxModule::configure) (the TDMR/PAMT [`plan`] and the
//! TDMR array), [`init_extensions`](TdxModule::init_extensions) (the page
//! list of TDH.EXT.MEM.ADD), the planner itself, [`TdxPageArray`], and the
//! boxed refusals of `configure` and [`TdHost::new`] (whose own records
//! are fallible). These run once,
//! when the kernel brings TDX up, before any TD exists: out of memory
//! there means TDX does not come up, with no TD or guest memory to lose,
//! and making the planner's many intermediate lists fallible would cost
//! more than it gives. [`td::TdConfig`] builds TD_PARAMS from lists the
//! caller allocated.
//!
//! The examples in these docs that need a TDX module run on the software
//! one of the `tdx-sim` crate, which implements both [`Platform`] and the
//! SEAMCALL backend; on a TDX machine the same code runs with `tdx_sys::cpu::Cpu`
//! and the kernel's platform. Bring-up to teardown:
//!
//! ```
//! use tdx_api::{
//!     CpuId, InitialRcx, X2ApicId, TdxModule,
//!     plan::{MemRange, PlanInput},
//!     td::{TdConfig, TdHost},
//! };
//! use tdx_sim::{MachineDesc, Simulator};
//!
//! const GIB: u64 = 1 << 30;
//! // A host with 4 GiB of RAM at 4 GiB, one package of two CPUs.
//! let sim = Simulator::new(MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2)).unwrap();
//! let input = PlanInput::new(vec![MemRange { start: 4 * GIB, end: 8 * GIB, node: 0 }]);
//! let module = TdxModule::init(&sim, &sim).unwrap().configure(&input).unwrap();
//! let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
//!
//! let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
//! td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap(); // TDH.MR.FINALIZE needs a vCPU
//! let td = td.finalize().map_err(|f| f.error).unwrap();
//! assert!(td.teardown().is_clean());
//! ```

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod failed;
pub mod measure;
pub mod module;
pub mod page_array;
pub mod plan;
pub mod platform;
pub mod retry;
pub mod td;

pub use failed::Failed;
pub use module::{
    ARCH_MAX_VCPUS, ExtInited, ModuleVersion, SysInfo, TdmrsSet, TdxModule, Unconfigured,
};
pub use page_array::TdxPageArray;
pub use platform::{
    CacheMaintenance, CpuId, Cpus, DirectMap, Errata, FrameAllocator, FrameDeallocator, Hardware,
    HardwareInfo, NodeId, PackageId, Placement, Platform, PlatformError,
};
pub use retry::{Backoff, RetryPolicy};
pub use td::{GuestFrame, InitialRcx, Td, TdHost, TdHostRef, X2ApicId};
pub use tdx_sys as sys;
pub use tdx_types as types;
