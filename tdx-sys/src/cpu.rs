//! The real SEAMCALL instruction (`66 0F 01 CF`).
//!
//! Three entry shapes, one per [`RegShape`], each a single `asm!` block:
//!
//! | shape | inputs | outputs | declared clobbers |
//! |---|---|---|---|
//! | `NoOutputs` | RAX, RCX, RDX, R8-R11 | RAX | the SysV caller-saved registers (so RSI and RDI too), all vector, mask and x87 state, flags |
//! | `Ret` | RAX, RCX, RDX, R8-R11 | RAX, RCX, RDX, R8-R11 | the same |
//! | `SavedRet` | RAX and all 13 registers of [`SeamcallArgs`] | the same | every GPR but RSP (RBX and RBP are saved and restored inside the block), and the same state |
//!
//! # Registers, on every target
//!
//! What the module may change (Intel TDX module ABI; Linux relies on the
//! same facts in `arch/x86/virt/vmx/tdx/seamcall.S` and `tdxcall.S`):
//!
//! - RAX (the status) and the leaf's output registers, always;
//! - for TDH.VP.ENTER, every GPR but RSP: RCX, RDX, R8-R15, RBX, RSI and
//!   RDI carry the TD exit's outputs (zero where the exit exposes nothing);
//! - RBP, unless the module reports `NO_RBP_MOD` in TDX_FEATURES0 (Linux
//!   refuses a module without it; this crate does not), so every shape pushes and pops RBP around the
//!   instruction, and a frame pointer survives even before the host has read
//!   that feature bit;
//! - flags (SEAMRET clears CF, ZF and the other arithmetic flags);
//! - vector and extended state, which TDH.VP.ENTER switches to the TD's.
//!
//! For the leaves issued through the `NoOutputs` and `Ret` shapes the
//! module leaves RBX and R12-R15 as they were, which Linux's `__seamcall`
//! and `__seamcall_ret` rely on as well. RSI and RDI are declared clobbered
//! in every shape regardless (some leaves do use them, and TDH.VP.ENTER
//! writes them): a declared clobber costs at most a save, and a missing one
//! is undefined behaviour.
//!
//! The clobber set is spelled `clobber_abi("sysv64")`, the same set on every
//! x86_64 target, and never `clobber_abi("C")`: the C ABI of
//! `x86_64-unknown-uefi` and Windows is win64, whose callee-saved set
//! includes RSI, RDI and XMM6-XMM15, so `"C"` there would not declare
//! registers the TDH.VP.ENTER block writes. With `"sysv64"`, the compiler
//! saves whatever its own ABI requires around the block: on a win64 target
//! a function that issues SEAMCALL saves RSI and RDI itself, and XMM6-15
//! where the target uses SSE (`tests/uefi_asm.rs` checks the code built for
//! `x86_64-unknown-uefi`; `tests/cpu_trap.rs` runs a win64 caller).
//! Soft-float targets (`x86_64-unknown-uefi`, `x86_64-unknown-none`) use no
//! vector register, so the compiler has none to save: code around them
//! (firmware, a kernel) that keeps state in vector registers saves it
//! across TDH.VP.ENTER itself, as Linux's KVM does by switching to the
//! guest's FPU state before entering.
//! RBX, RBP and R12-R15 are callee-saved in both ABIs: the `Ret` and
//! `NoOutputs` shapes rely on the module restoring R12-R15 and RBX (as
//! Linux's `__seamcall` and `__seamcall_ret` do), and `SavedRet` saves RBX
//! and declares R12-R15.
//!
//! # Failures of the instruction
//!
//! - VMfailInvalid (CF = 1 after SEAMCALL: no module loaded, or P-SEAMLDR
//!   busy) becomes [`TdxStatus::SEAMCALL_VMFAILINVALID`] inside the block,
//!   right after the instruction, as Linux does.
//! - VMfailValid (ZF = 1: the CPU refused the call and wrote the reason to
//!   the current VMCS's VM-instruction error field; RAX is unchanged)
//!   becomes [`TdxStatus::SEAMCALL_VMFAILVALID`]. Linux tests CF only; an
//!   unchanged RAX holds the leaf number and version, which would read as a
//!   success-class status (TDH.VP.ENTER is leaf 0, `TDX_SUCCESS`), so this
//!   backend turns it into an error. It does not read the VMCS field
//!   (VMREAD needs a current VMCS, which the caller owns).
//!
//! In both cases the outputs are then whatever the registers held, which
//! is the inputs. Faults (#UD, #GP) are the caller's to handle: see
//! [`Cpu::new`].
//!
//! The `SavedRet` shape ends by zeroing RCX, RDX, R8-R15, RSI and RDI, as
//! Linux does after TDH.VP.ENTER, so guest register values do not linger in
//! registers after the call.

// UNSAFETY: this module emits the SEAMCALL instruction with inline
// assembly. It is the only place in tdx-rs that does.
#![allow(unsafe_code)]

use core::arch::asm;

use tdx_types::TdxStatus;

use crate::args::{RegShape, Seamcall, SeamcallArgs};

const VMFAILINVALID: u64 = TdxStatus::SEAMCALL_VMFAILINVALID.raw();
const VMFAILVALID: u64 = TdxStatus::SEAMCALL_VMFAILVALID.raw();

/// The CPU's SEAMCALL instruction as a [`Seamcall`] backend.
///
/// Zero-sized; every call is one inline `asm!` block, so the raw leaf
/// functions compile to the register moves and the instruction.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    _private: (),
}

impl Cpu {
    /// The CPU backend.
    ///
    /// # Safety
    ///
    /// Every SEAMCALL issued through the returned value runs where the
    /// instruction is defined, or where its faults are handled:
    ///
    /// 1. at CPL 0, in VMX root operation, on a CPU of a TDX host (the
    ///    instruction then either reaches the module or fails with
    ///    VMfailInvalid or VMfailValid, which this backend reports as
    ///    statuses), **or**
    /// 2. under a handler for the #UD and #GP the instruction raises
    ///    elsewhere that recognises the instruction by its bytes at the
    ///    faulting RIP (`66 0F 01 CF`), writes the output registers of the
    ///    call's shape, sets RAX to the status to return (Linux returns
    ///    `TDX_SEAMCALL_UD` / `TDX_SEAMCALL_GP`), clears CF and ZF, and
    ///    resumes 4 bytes after the instruction. A trap-and-emulate signal
    ///    handler in user space is one (`tests/cpu_trap.rs`).
    ///
    /// No exception-table entry is emitted, and no symbol marks the
    /// instruction: each call is inlined into its caller, so there is no
    /// single address a kernel could register. Linux's own SEAMCALL stub
    /// does carry an `extable` fixup (a #UD or #GP becomes
    /// `TDX_SW_ERROR | trap number`); a kernel using this backend instead
    /// meets term 1 by construction: it issues SEAMCALL only on a CPU that
    /// has executed VMXON and not VMXOFF (emergency reboot and kexec paths
    /// included: stop SEAMCALLs on every CPU before turning VMX off), only
    /// once it knows TDX is enabled (the `IA32_MKTME_KEYID_PARTITIONING`
    /// and SEAMRR checks Linux does at boot) and the module answered a
    /// first call without VMfailInvalid, and with preemption disabled so
    /// the task cannot move to a CPU in another state. A kernel that wants
    /// to survive a #UD or #GP anyway installs a handler of term 2 in its
    /// #UD and #GP paths, recognising the instruction by its bytes.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }
}

// SAFETY: each shape executes SEAMCALL with RAX = `rax` and the input
// registers its `RegShape` names, taken from `args`; it writes back exactly
// the output registers of that shape (none, RCX/RDX/R8-R11, or all 13) and
// returns RAX, or TDX_SEAMCALL_VMFAILINVALID when CF was set, or
// TDX_SEAMCALL_VMFAILVALID when ZF was set. Whatever the
// status, it is what the hardware or module produced (contract points 1-3
// of `Seamcall`); a faulting instruction is handled as `Cpu::new` requires.
unsafe impl Seamcall for Cpu {
    #[inline(always)]
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // In every arm: the caller of `Seamcall::seamcall` keeps the
        // crate-level contract for this leaf and its operands, and the
        // creator of `self` established where the instruction may run
        // (`Cpu::new`); that is the whole contract of the three entries.
        let raw = match shape {
            // SAFETY: see above.
            RegShape::NoOutputs => unsafe { seamcall_no_outputs(rax, args) },
            // SAFETY: see above.
            RegShape::Ret => unsafe { seamcall_ret(rax, args) },
            // SAFETY: see above.
            RegShape::SavedRet => unsafe { seamcall_saved_ret(rax, args) },
        };
        TdxStatus::from_raw(raw)
    }
}

/// SEAMCALL with inputs in RCX, RDX, R8-R11 and no outputs but RAX.
///
/// # Safety
///
/// As [`Seamcall::seamcall`] for a `Cpu` created under [`Cpu::new`]'s terms.
#[inline(always)]
unsafe fn seamcall_no_outputs(rax: u64, a: &SeamcallArgs) -> u64 {
    let status: u64;
    // Registers: RAX, RCX, RDX, R8-R11 are declared inputs; the module may
    // change them, and `clobber_abi("sysv64")` declares them with RSI, RDI,
    // all vector state and flags (no `preserves_flags`) on every target
    // (module docs). RBX and R12-R15 the module restores. RBP is saved on
    // the stack around the instruction (no `nostack`), so it is unchanged
    // when the block ends. CF and ZF are consumed right after the
    // instruction: POP does not change flags.
    // SAFETY: memory effects are the caller's contract (crate docs); every
    // register the instruction may change is declared or restored (above).
    unsafe {
        asm!(
            "push rbp",
            ".byte 0x66, 0x0f, 0x01, 0xcf",
            "pop rbp",
            "jc 3f",
            "jnz 2f",
            "mov rax, {vmfail_valid}",
            "jmp 2f",
            "3:",
            "mov rax, {vmfail_invalid}",
            "2:",
            vmfail_invalid = const VMFAILINVALID,
            vmfail_valid = const VMFAILVALID,
            inout("rax") rax => status,
            in("rcx") a.rcx,
            in("rdx") a.rdx,
            in("r8") a.r8,
            in("r9") a.r9,
            in("r10") a.r10,
            in("r11") a.r11,
            clobber_abi("sysv64"),
        );
    }
    status
}

/// SEAMCALL with inputs and outputs in RCX, RDX, R8-R11.
///
/// # Safety
///
/// As [`Seamcall::seamcall`] for a `Cpu` created under [`Cpu::new`]'s terms.
#[inline(always)]
unsafe fn seamcall_ret(rax: u64, a: &mut SeamcallArgs) -> u64 {
    let status: u64;
    // SAFETY: as in `seamcall_no_outputs`; RCX, RDX and R8-R11 are now
    // input-output operands written back into `a`, which the caller lent
    // mutably for that purpose.
    unsafe {
        asm!(
            "push rbp",
            ".byte 0x66, 0x0f, 0x01, 0xcf",
            "pop rbp",
            "jc 3f",
            "jnz 2f",
            "mov rax, {vmfail_valid}",
            "jmp 2f",
            "3:",
            "mov rax, {vmfail_invalid}",
            "2:",
            vmfail_invalid = const VMFAILINVALID,
            vmfail_valid = const VMFAILVALID,
            inout("rax") rax => status,
            inout("rcx") a.rcx,
            inout("rdx") a.rdx,
            inout("r8") a.r8,
            inout("r9") a.r9,
            inout("r10") a.r10,
            inout("r11") a.r11,
            clobber_abi("sysv64"),
        );
    }
    status
}

/// SEAMCALL with all 13 registers of `SeamcallArgs` as inputs and outputs.
///
/// RBX and RBP cannot be `asm!` operands, so the block takes a pointer to
/// `a` in RDI, saves RBX, RBP and the pointer on the stack, loads every
/// register from memory (RDI last), and stores them back after the
/// instruction.
///
/// # Safety
///
/// As [`Seamcall::seamcall`] for a `Cpu` created under [`Cpu::new`]'s terms.
#[inline(always)]
unsafe fn seamcall_saved_ret(rax: u64, a: &mut SeamcallArgs) -> u64 {
    let status: u64;
    let ptr: *mut SeamcallArgs = a;
    // Memory: `ptr` comes from a live `&mut SeamcallArgs`, so the 104 bytes
    // read and written at offsets 0..=96 (the `#[repr(C)]` layout asserted
    // in `args.rs`) are valid and not aliased during the block. Registers:
    // RBX and RBP are pushed first and popped last; the pointer's stack slot
    // is popped before them, so RSP is balanced. Every other GPR is
    // declared: RAX and RDI as operands, R12-R15 and RSI as outputs, the
    // rest by `clobber_abi("sysv64")`, which also covers flags and vector
    // state on every target (module docs: `"C"` would leave RSI and
    // XMM6-15 undeclared on win64 targets). CF and ZF are tested right
    // after the instruction, before anything that writes flags.
    // SAFETY: the block touches only `*ptr` (valid, exclusive) and restores
    // or declares every register it changes (above); the module's memory
    // effects are the caller's contract.
    unsafe {
        asm!(
            "push rbp",
            "push rbx",
            "push rdi",
            "mov rcx, [rdi]",
            "mov rdx, [rdi + 8]",
            "mov r8, [rdi + 16]",
            "mov r9, [rdi + 24]",
            "mov r10, [rdi + 32]",
            "mov r11, [rdi + 40]",
            "mov r12, [rdi + 48]",
            "mov r13, [rdi + 56]",
            "mov r14, [rdi + 64]",
            "mov r15, [rdi + 72]",
            "mov rbx, [rdi + 80]",
            "mov rsi, [rdi + 96]",
            "mov rdi, [rdi + 88]",
            ".byte 0x66, 0x0f, 0x01, 0xcf",
            "jc 3f",
            "jnz 2f",
            "mov rax, {vmfail_valid}",
            "jmp 2f",
            "3:",
            "mov rax, {vmfail_invalid}",
            "2:",
            "push rdi",
            "mov rdi, [rsp + 8]",
            "mov [rdi], rcx",
            "mov [rdi + 8], rdx",
            "mov [rdi + 16], r8",
            "mov [rdi + 24], r9",
            "mov [rdi + 32], r10",
            "mov [rdi + 40], r11",
            "mov [rdi + 48], r12",
            "mov [rdi + 56], r13",
            "mov [rdi + 64], r14",
            "mov [rdi + 72], r15",
            "mov [rdi + 80], rbx",
            "mov [rdi + 96], rsi",
            "pop rsi",
            "mov [rdi + 88], rsi",
            "pop rdi",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r11d, r11d",
            "xor r12d, r12d",
            "xor r13d, r13d",
            "xor r14d, r14d",
            "xor r15d, r15d",
            "xor esi, esi",
            "xor edi, edi",
            "pop rbx",
            "pop rbp",
            vmfail_invalid = const VMFAILINVALID,
            vmfail_valid = const VMFAILVALID,
            inout("rax") rax => status,
            inout("rdi") ptr => _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            out("rsi") _,
            clobber_abi("sysv64"),
        );
    }
    status
}
