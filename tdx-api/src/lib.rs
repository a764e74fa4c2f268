//! The safe TDX host API (`no_std` + `alloc`).
//!
//! This crate will hold the type-state module bring-up, the TDMR/PAMT
//! planner, Trust Domain and vCPU lifecycles, PFN-only memory mapping, page
//! arrays, teardown and reclaim, and the `Platform` traits a kernel or VMM
//! implements (see the project's design document). None of that exists yet:
//! today the crate only re-exports the layers below it, so the workspace
//! has its final shape.

#![no_std]
#![warn(missing_docs)]

pub use tdx_sys as sys;
pub use tdx_types as types;
