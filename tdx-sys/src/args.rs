//! The SEAMCALL register block and the backend trait.

// UNSAFETY: `Seamcall` is an `unsafe trait` (backends promise the register
// contract that safe code relies on for memory ownership), and references to
// a backend are backends too.
#![allow(unsafe_code)]

use tdx_types::TdxStatus;

/// The general-purpose registers a SEAMCALL can take inputs from and return
/// outputs in, besides RAX (the leaf on input, the status on output).
///
/// Field order is Linux's `struct tdx_module_args` (a software convention,
/// not ABI); the [`cpu`](crate::cpu) backend's all-register entry relies on
/// it, so the layout is `#[repr(C)]` and checked at compile time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct SeamcallArgs {
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// R10.
    pub r10: u64,
    /// R11.
    pub r11: u64,
    /// R12.
    pub r12: u64,
    /// R13.
    pub r13: u64,
    /// R14.
    pub r14: u64,
    /// R15.
    pub r15: u64,
    /// RBX.
    pub rbx: u64,
    /// RDI.
    pub rdi: u64,
    /// RSI.
    pub rsi: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<SeamcallArgs>() == 104);
    assert!(offset_of!(SeamcallArgs, rcx) == 0);
    assert!(offset_of!(SeamcallArgs, r11) == 40);
    assert!(offset_of!(SeamcallArgs, r12) == 48);
    assert!(offset_of!(SeamcallArgs, r15) == 72);
    assert!(offset_of!(SeamcallArgs, rbx) == 80);
    assert!(offset_of!(SeamcallArgs, rdi) == 88);
    assert!(offset_of!(SeamcallArgs, rsi) == 96);
};

impl SeamcallArgs {
    /// All registers zero.
    pub const ZERO: Self = Self {
        rcx: 0,
        rdx: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rbx: 0,
        rdi: 0,
        rsi: 0,
    };

    /// Inputs in RCX, RDX, R8, R9, R10, R11 (the rest zero).
    pub const fn regs6(rcx: u64, rdx: u64, r8: u64, r9: u64, r10: u64, r11: u64) -> Self {
        Self {
            rcx,
            rdx,
            r8,
            r9,
            r10,
            r11,
            ..Self::ZERO
        }
    }
}

/// Which registers a leaf returns outputs in: the three entry shapes of the
/// host ABI (Linux `__seamcall`, `__seamcall_ret`, `__seamcall_saved_ret`).
///
/// All three pass inputs in RCX, RDX, R8, R9, R10 and R11;
/// [`RegShape::SavedRet`] also passes R12-R15, RBX, RDI and RSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegShape {
    /// No outputs besides RAX; `args` is left as it was.
    NoOutputs,
    /// Outputs in RCX, RDX, R8, R9, R10, R11, written back into `args`.
    Ret,
    /// Every register of [`SeamcallArgs`] is an input and an output
    /// (TDH.VP.ENTER).
    SavedRet,
}

/// The outcome of a raw leaf call: the status from RAX and the leaf's typed
/// outputs, read from the output registers whatever the status was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Completion<T> {
    /// RAX.
    pub status: TdxStatus,
    /// The leaf's outputs. After an error they mean only what the leaf's
    /// ABI says they mean on error (often nothing).
    pub out: T,
}

/// A way to execute SEAMCALL: the CPU, a software TDX module, or the CPU
/// under trap-and-emulate.
///
/// # Safety
///
/// Implementors promise that a call behaves, at the register level, as the
/// host ABI of the TDX module describes:
///
/// 1. RAX on input is `rax` as given; the inputs are the registers of
///    `args` that `shape` names as inputs.
/// 2. On return, the registers `shape` names as outputs hold what the
///    module returned (or, for a failure before the module ran, what the
///    hardware left there), `args` is otherwise unchanged, and the returned
///    status is RAX as the module left it, or one of the software statuses
///    of [`TdxStatus`] (`SEAMCALL_VMFAILINVALID`, `SEAMCALL_VMFAILVALID`,
///    `SEAMCALL_GP`, `SEAMCALL_UD`) when the instruction did not reach the
///    module.
/// 3. A successful status means the module did what the leaf defines. Safe
///    code above relies on this to decide who owns memory: for example,
///    after a successful TDH.PHYMEM.PAGE.RECLAIM a page goes back to the
///    host allocator.
pub unsafe trait Seamcall {
    /// Executes SEAMCALL with `rax` (leaf and version, or a P-SEAMLDR call)
    /// and the registers in `args`, in the register shape `shape`.
    ///
    /// # Safety
    ///
    /// The caller keeps the contract in the [crate documentation](crate#safety)
    /// for the leaf in `rax` and the operands in `args`.
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus;
}

// SAFETY: forwarding to an implementation that keeps the contract keeps it.
unsafe impl<T: Seamcall + ?Sized> Seamcall for &T {
    #[inline(always)]
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // SAFETY: the caller keeps the contract for this call; `T` is called
        // with exactly the same arguments.
        unsafe { (**self).seamcall(rax, args, shape) }
    }
}
