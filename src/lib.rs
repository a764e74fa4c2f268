//! tdx-rs: a safe host-side interface to Intel TDX.
//!
//! The safety costs little and is measured: against a backend that answers
//! every SEAMCALL at once, the library adds about 140 instructions per 4K
//! map and per 4K unmap over the raw leaf calls (`benches/icount.sh` in the
//! repository).
//!
//! This facade re-exports the workspace's public API:
//!
//! - [`types`] (`tdx-types`): addresses, page sizes, address spaces and
//!   [`FirmwarePage`], status codes and
//!   [`TdxError`], leaf identifiers, packed register
//!   values, ABI structures, metadata field IDs. `no_std`, no unsafe code.
//! - [`sys`] (`tdx-sys`): the SEAMCALL instruction behind the
//!   [`Seamcall`](sys::Seamcall) backend trait, and one raw `unsafe fn` per
//!   host leaf. `no_std`.
//! - [`api`] (`tdx-api`): the safe layer: the `Platform` traits, the TDMR/PAMT
//!   planner, type-state module bring-up (with Dynamic PAMT on a module
//!   that has it), and Trust Domains: build, measured initial memory,
//!   PFN-only private memory that many threads map and unmap at once (see
//!   [Threads and locks](api::td#threads-and-locks)), vCPUs that run
//!   (TDH.VP.ENTER with typed exits and GHCI TDVMCALLs answered), and
//!   teardown with a report. Not covered: L2 VMs (TD partitioning) and
//!   migration.
//!
//! The software TDX module (`tdx-sim`) is a separate crate that tests,
//! examples and tools depend on; nothing in this facade does. A whole run
//! on it, from bring-up to teardown:
//!
//! ```
//! use tdx::api::{
//!     CpuId, FrameAllocator, InitialRcx, Placement, TdxModule, X2ApicId,
//!     plan::{MemRange, PlanInput},
//!     td::{GuestFrame, TdConfig, TdHost},
//! };
//! use tdx::{Gpa, Size4K};
//! use tdx_sim::{MachineDesc, Simulator};
//!
//! const GIB: u64 = 1 << 30;
//! let sim = Simulator::new(MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2)).unwrap();
//! let input = PlanInput::new(vec![MemRange { start: 4 * GIB, end: 8 * GIB, node: 0 }]);
//! let module = TdxModule::init(&sim, &sim).unwrap().configure(&input).unwrap();
//! let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
//! let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
//! td.create_vcpu(CpuId(0), tdx::api::InitialRcx(0), tdx::api::X2ApicId(0)).unwrap(); // TDH.MR.FINALIZE needs a vCPU
//! let td = td.finalize().map_err(|f| f.error).unwrap();
//!
//! // The VMM's memory: here one frame from the simulated host's allocator.
//! let run = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
//! // SAFETY: the frame was allocated above for this TD, and nothing else
//! // reads, writes or frees it until the TD gives it back.
//! let frame = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
//! td.map(Gpa::new(0x10_0000), frame).map_err(|f| f.error).unwrap();
//! let back = td.unmap::<Size4K>(Gpa::new(0x10_0000), &|| {}).unwrap();
//! assert_eq!(back.pfn(), run.first());
//! assert!(td.teardown().is_clean());
//! ```

#![no_std]
#![warn(missing_docs)]

pub use tdx_api as api;
pub use tdx_sys as sys;
pub use tdx_types as types;

pub use tdx_types::{
    ErrorKind, FirmwarePage, Gpa, Hpa, Leaf, LeafVersion, PageSize, Pfn, PfnRange, Size1G, Size2M,
    Size4K, TdxError, TdxLevel, TdxStatus,
};
