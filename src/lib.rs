//! tdx-rs: a safe, zero-cost host-side interface to Intel TDX.
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
//! - [`api`] (`tdx-api`): the safe layer (bring-up, planner, Trust Domains);
//!   being built.
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
