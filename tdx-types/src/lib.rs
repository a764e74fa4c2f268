//! Intel TDX host ABI types.
//!
//! This crate owns the vocabulary every other tdx-rs crate speaks: physical and
//! guest-physical addresses, page sizes, the inert
//! [`FirmwarePage`] handle, SEAMCALL leaf identifiers, status codes and the
//! [`TdxError`] built from them, the packed register values of the host ABI,
//! the in-memory ABI structures, and the metadata field IDs.
//!
//! Design principles:
//!
//! - **No unsafe code.** Nothing here touches memory or executes an
//!   instruction; everything is a number with rules. The rules are checked
//!   by constructors, so a value of one of these types is always well formed.
//! - **`no_std`, no allocation.** Kernels use this crate as is.
//! - **Numbers carry over, nothing else does.** Every constant comes from the
//!   host ABI as Intel's TDX module source (`intel/tdx-module`, tag
//!   `TDX_1.5.01`) and Linux (`arch/x86/virt/vmx/tdx/`,
//!   `arch/x86/kvm/vmx/`) define it, and names its source; where Linux and
//!   the module disagree, the module wins and the item says so.
//! - **Open enums for what the firmware may extend.** Status codes, leaves,
//!   operand IDs and field IDs are newtypes over their raw integer with named
//!   constants, never closed `enum`s: a module newer than this crate returns
//!   values we have no name for, and they must survive a round trip.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abi;
pub mod addr;
pub mod exit;
pub mod leaf;
pub mod metadata;
pub mod page;
pub mod regs;
pub mod space;
pub mod status;

pub use addr::{AddrError, Gpa, Hpa, Pfn};
pub use leaf::{Leaf, LeafVersion};
pub use page::{PageSize, PfnRange, PfnRun, Size1G, Size2M, Size4K, TdxLevel};
pub use space::FirmwarePage;
pub use status::{ErrorKind, OperandId, StatusDetail, TdxError, TdxStatus};

/// The property tests' configuration: the default, except under Miri, which
/// runs a few cases (it interprets every instruction) and keeps no failure
/// file (its isolation has no file system).
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    let default = proptest::test_runner::Config::default();
    if cfg!(miri) {
        proptest::test_runner::Config {
            cases: 4,
            failure_persistence: None,
            ..default
        }
    } else {
        default
    }
}
