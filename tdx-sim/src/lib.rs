//! A software model of the Intel TDX module and of the host it runs on.
//!
//! The simulator will implement `tdx_sys::Seamcall`, so every layer of
//! tdx-rs can run and be tested without TDX hardware. It is not written
//! yet; this crate exists so the workspace has its final shape.

#![warn(missing_docs)]
