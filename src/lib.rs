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
//! - [`api`] (`tdx-api`): the safe layer: the `Platform` trait, the TDMR/PAMT
//!   planner, type-state module bring-up, and Trust Domains whose runtime
//!   memory operations many threads call at once (see
//!   [Threads and locks](api::td#threads-and-locks)). Not covered yet:
//!   TDH.VP.ENTER, L2 VMs, Dynamic PAMT.
//!
//! The software TDX module (`tdx-sim`) is a separate crate that tests,
//! examples and tools depend on; nothing in this facade does.

#![no_std]
#![warn(missing_docs)]

pub use tdx_api as api;
pub use tdx_sys as sys;
pub use tdx_types as types;

pub use tdx_types::{
    ErrorKind, FirmwarePage, Gpa, Hpa, Leaf, LeafVersion, PageSize, Pfn, PfnRange, Size1G, Size2M,
    Size4K, TdxError, TdxLevel, TdxStatus,
};
