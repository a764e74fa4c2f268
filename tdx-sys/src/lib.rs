//! The SEAMCALL instruction and one raw function per TDX host leaf.
//!
//! This crate is the lowest layer of tdx-rs. It owns:
//!
//! - [`SeamcallArgs`], the register block a SEAMCALL reads and writes;
//! - [`Seamcall`], the backend seam: "execute leaf L with these registers,
//!   give me RAX and the output registers". The real instruction is
//!   [`cpu::Cpu`]; the software TDX module in `tdx-sim` is another backend;
//! - [`leaf`], one `unsafe fn` per host leaf that puts its typed arguments
//!   into the registers the ABI names and returns the raw status plus typed
//!   outputs.
//!
//! It leaves everything else to the caller: there are no retries, no
//! policy, no allocation, no interpretation of statuses beyond decoding.
//! Warnings (`TDX_KEY_CONFIGURED`, ...) and errors come back as they are.
//! The safe API is `tdx-api`.
//!
//! # Safety
//!
//! Every leaf function is `unsafe` because a SEAMCALL moves memory between
//! the host and the TDX module, and the compiler cannot see that. A caller
//! of any function in [`leaf`], or of [`Seamcall::seamcall`], promises:
//!
//! 1. **Pages handed over.** Every page whose address goes to the module as
//!    a new TDR, TDCS, TDVPR, TDCX, S-EPT, PAMT, extension-pool or TD private
//!    page belongs to the caller, and the host will neither read nor write
//!    it (through any mapping, including the direct map and DMA) until the
//!    module gives it back (TDH.PHYMEM.PAGE.RECLAIM, TDH.MEM.PAGE.REMOVE, ...)
//!    and the cache maintenance the ABI requires is done.
//! 2. **Buffers the module reads or writes** (the TDMR address array and the
//!    TDMR_INFOs, TD_PARAMS, the source page of TDH.MEM.PAGE.ADD, HPA list
//!    pages, metadata output buffers) are host memory that stays valid and
//!    is not written by anyone else for the duration of the call.
//! 3. **Pages the module gives back** are not used as host memory before the
//!    flushes the ABI prescribes (TDH.PHYMEM.PAGE.WBINVD, or WBINVD and
//!    MOVDIR64B clearing on platforms with the partial-write erratum).
//! 4. **CPU affinity.** Leaves that act on "this package" or "this logical
//!    processor" (TDH.SYS.LP.INIT, TDH.SYS.KEY.CONFIG, TDH.MNG.KEY.CONFIG,
//!    TDH.VP.FLUSH, TDH.PHYMEM.CACHE.WB, ...) run on the CPU the caller means,
//!    with migration disabled for the duration of the call.
//!
//! What the backend promises in return is the contract of the `unsafe trait`
//! [`Seamcall`].
//!
//! # Output registers
//!
//! After an error, the module may have left output registers in any state
//! (a few leaves put extended error information there on purpose). The leaf
//! functions return them regardless, because this layer does not judge;
//! callers read them only where the ABI says they mean something.

#![no_std]
#![warn(missing_docs)]

pub mod args;
#[cfg(all(feature = "cpu", target_arch = "x86_64"))]
pub mod cpu;
pub mod leaf;

pub use args::{Completion, RegShape, Seamcall, SeamcallArgs};
#[cfg(all(feature = "cpu", target_arch = "x86_64"))]
pub use cpu::Cpu;

// The real instruction exists on x86_64 only. Other targets can still build
// this crate without the `cpu` feature, to run the software module.
#[cfg(all(feature = "cpu", not(target_arch = "x86_64")))]
compile_error!(
    "tdx-sys: the SEAMCALL instruction exists only on x86_64; build with \
     `default-features = false` to use a software backend such as tdx-sim"
);

pub use tdx_types;
