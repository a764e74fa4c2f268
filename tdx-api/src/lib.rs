//! The safe TDX host API (`no_std` + `alloc`).
//!
//! Today this crate holds the [`Platform`] trait (the host services tdx-rs
//! needs from the kernel or hypervisor it runs in) and the TDMR/PAMT
//! [`plan`]ner. The type-state module bring-up, Trust Domain and vCPU
//! lifecycles, PFN-only memory mapping, page arrays and teardown (see the
//! project's design document) are not written yet.

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod measure;
pub mod module;
pub mod page_array;
pub mod plan;
pub mod platform;

pub use module::{ExtInited, SysInfo, TdmrsSet, TdxModule, Unconfigured};
pub use page_array::TdxPageArray;
pub use platform::{CpuId, Errata, NodeId, PackageId, Placement, Platform, PlatformError};
pub use tdx_sys as sys;
pub use tdx_types as types;
