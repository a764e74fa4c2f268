//! Not an example to copy: the object `tests/uefi_asm.rs` builds for
//! `x86_64-unknown-uefi` (a win64-ABI target) and reads as assembly, to check
//! that every function issuing SEAMCALL saves the registers that ABI makes
//! callee-saved and the instruction may change. One function per register
//! shape; `extern "efiapi"` is win64 on every x86_64 target, which is also
//! the default ABI on UEFI.

#![no_std]
// UNSAFETY: the probes call the raw leaf functions, which are `unsafe fn`.
#![allow(unsafe_code)]

use tdx_sys::{Cpu, SeamcallArgs, leaf};
use tdx_types::{Pfn, TdxStatus, metadata::MdFieldId};

/// TDH.VP.ENTER: the `SavedRet` shape, which writes every GPR but RSP.
///
/// # Safety
///
/// As [`leaf::tdh_vp_enter`] through a [`Cpu`] made under [`Cpu::new`]'s
/// terms.
#[unsafe(no_mangle)]
pub unsafe extern "efiapi" fn tdx_probe_saved_ret(
    cpu: &Cpu,
    tdvpr: u64,
    regs: &mut SeamcallArgs,
) -> TdxStatus {
    // SAFETY: forwarded to the caller (see `# Safety`).
    unsafe { leaf::tdh_vp_enter(cpu, Pfn::new(tdvpr), regs) }
}

/// TDH.SYS.RD: the `Ret` shape.
///
/// # Safety
///
/// As [`leaf::tdh_sys_rd`] through a [`Cpu`] made under [`Cpu::new`]'s
/// terms.
#[unsafe(no_mangle)]
pub unsafe extern "efiapi" fn tdx_probe_ret(cpu: &Cpu, field: u64) -> u64 {
    // SAFETY: forwarded to the caller (see `# Safety`).
    let c = unsafe { leaf::tdh_sys_rd(cpu, MdFieldId::from_raw(field)) };
    c.out.value ^ c.status.raw()
}

/// TDH.MEM.TRACK: the `NoOutputs` shape.
///
/// # Safety
///
/// As [`leaf::tdh_mem_track`] through a [`Cpu`] made under [`Cpu::new`]'s
/// terms.
#[unsafe(no_mangle)]
pub unsafe extern "efiapi" fn tdx_probe_no_outputs(cpu: &Cpu, tdr: u64) -> TdxStatus {
    // SAFETY: forwarded to the caller (see `# Safety`).
    unsafe { leaf::tdh_mem_track(cpu, Pfn::new(tdr)) }
}
