//! One raw `unsafe fn` per host leaf.
//!
//! Each function puts its typed arguments into the registers the host ABI
//! names for the leaf (as Linux's wrappers in `arch/x86/virt/vmx/tdx/tdx.c`
//! pass them, and as the leaf's handler in Intel's module source reads them:
//! `src/vmm_dispatcher/api_calls/`), issues one SEAMCALL through the
//! backend in the register shape the leaf needs, and returns the raw status,
//! plus the leaf's outputs decoded into types where it has any
//! ([`Completion`]). Nothing is retried and no status is judged: a caller
//! gets `TDX_OPERAND_BUSY`, `TDX_INTERRUPTED_RESUMABLE` or
//! `TDX_KEY_CONFIGURED` exactly as the module returned it.
//!
//! Page operands are [`Pfn`]s (4 KiB aligned by construction); byte
//! addresses with their own alignment rule (TDMR array, TD_PARAMS) are
//! [`Hpa`]s, and GPA|level operands are [`PageInfo`]s. The module checks
//! alignment to the page size, HKID bits and everything else itself; tests
//! that need to send malformed registers use [`Seamcall::seamcall`]
//! directly.
//!
//! Every function is `unsafe`: the caller keeps the contract in the
//! [crate documentation](crate#safety). Each function's `# Safety` section
//! names what that contract means for its operands.
//!
//! Leaves with identifiers in [`Leaf`] but no function here: the migration
//! leaves (TDH.EXPORT.*, TDH.IMPORT.*, TDH.MIG.STREAM.CREATE,
//! TDH.SERVTD.*), TDH.MEM.PAGE.RELOCATE, TDH.MEM.RD/WR, TDH.MEM.SEPT.WR,
//! TDH.SYS.RDALL, TDH.MNG.RDM/WRM, TDH.VP.RDM/WRM, TDH.SYS.S4.END and the
//! TDX Connect SPDM and IDE stream leaves other than TDH.SPDM.MNG: their
//! register ABI is not in the references this crate is built from, and a
//! raw function with guessed registers would be worse than none.
//!
//! [`Pfn`]: tdx_types::Pfn
//! [`Hpa`]: tdx_types::Hpa
//! [`PageInfo`]: tdx_types::regs::PageInfo
//! [`Leaf`]: tdx_types::Leaf

// UNSAFETY: every leaf function is an `unsafe fn`, because a SEAMCALL moves
// memory between the host and the TDX module (crate-level `# Safety`), and
// each calls the backend's `unsafe fn seamcall`.
#![allow(unsafe_code)]

use tdx_types::{LeafVersion, TdxStatus};

pub use crate::args::Completion;
use crate::args::{RegShape, Seamcall, SeamcallArgs};

mod ext;
mod mem;
mod phymem;
mod sys;
mod td;

pub use ext::*;
pub use mem::*;
pub use phymem::*;
pub use sys::*;
pub use td::*;

/// Issues `leaf` with `args` in `shape`.
///
/// # Safety
///
/// The caller keeps the crate-level contract for `leaf` and the operands
/// in `args`.
#[inline(always)]
unsafe fn call<B: Seamcall + ?Sized>(
    b: &B,
    leaf: LeafVersion,
    shape: RegShape,
    args: &mut SeamcallArgs,
) -> TdxStatus {
    // SAFETY: forwarded from this function's own contract.
    unsafe { b.seamcall(leaf.rax(), args, shape) }
}

/// Issues `leaf` with inputs in RCX, RDX, R8-R11 and no outputs.
///
/// # Safety
///
/// As [`call`].
#[inline(always)]
unsafe fn call_no_outputs<B: Seamcall + ?Sized>(
    b: &B,
    leaf: LeafVersion,
    mut args: SeamcallArgs,
) -> TdxStatus {
    // SAFETY: forwarded from this function's own contract.
    unsafe { call(b, leaf, RegShape::NoOutputs, &mut args) }
}

/// Issues `leaf` with inputs and outputs in RCX, RDX, R8-R11.
///
/// # Safety
///
/// As [`call`].
#[inline(always)]
unsafe fn call_ret<B: Seamcall + ?Sized>(
    b: &B,
    leaf: LeafVersion,
    mut args: SeamcallArgs,
) -> (TdxStatus, SeamcallArgs) {
    // SAFETY: forwarded from this function's own contract.
    let status = unsafe { call(b, leaf, RegShape::Ret, &mut args) };
    (status, args)
}
