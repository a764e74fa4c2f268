//! The safe TDX host API (`no_std` + `alloc`).
//!
//! This crate holds the [`Platform`] trait (the host services tdx-rs needs
//! from the kernel or hypervisor it runs in), the TDMR/PAMT [`plan`]ner, the
//! type-state module bring-up ([`module`]), page arrays, the offline MRTD
//! calculator ([`measure`]), Trust Domains ([`td`]: HKIDs, TD and vCPU
//! build, PFN-only private memory that many threads map at once, teardown
//! with a report), and the [`retry`] policy for the module's BUSY answers.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod measure;
pub mod module;
pub mod page_array;
pub mod plan;
pub mod platform;
pub mod retry;
pub mod td;

pub use module::{
    ARCH_MAX_VCPUS, ExtInited, ModuleVersion, SysInfo, TdmrsSet, TdxModule, Unconfigured,
};
pub use page_array::TdxPageArray;
pub use platform::{CpuId, Errata, NodeId, PackageId, Placement, Platform, PlatformError};
pub use retry::{Backoff, RetryPolicy};
pub use td::{GuestFrame, Td, TdHost, TdHostRef};
pub use tdx_sys as sys;
pub use tdx_types as types;
