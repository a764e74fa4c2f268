//! Running vCPUs: a handle a vCPU thread owns, TDH.VP.ENTER with typed
//! exits, the TDG.VP.VMCALL reply path, and migration between CPUs.
//!
//! The module's rules this follows (Intel's TDX module 1.5.01,
//! `src/td_transitions/tdh_vp_enter.c`, `src/common/helpers/helpers.c`
//! association helpers, `src/vmm_dispatcher/api_calls/tdh_vp_flush.c`):
//!
//! - a vCPU is associated with at most one CPU: TDH.VP.INIT associates it
//!   with the CPU it runs on, TDH.VP.ENTER (and TDH.VP.RD/WR) with the
//!   calling CPU if it has none, and only TDH.VP.FLUSH on that CPU ends the
//!   association. TDH.VP.ENTER on another CPU fails with
//!   `TDX_VCPU_ASSOCIATED` until then; an association an entry made
//!   survives the entry's failure;
//! - TDH.MNG.VPFLUSHDONE, the first step of releasing a TD's key, fails
//!   while any vCPU is associated, and then every page of the TD stays with
//!   the module.
//!
//! So [`Vcpu::enter`] on a CPU other than the vCPU's flushes it on its old
//! CPU first (Linux does the same in `tdx_vcpu_load`), the TD records where
//! each vCPU may be associated, and teardown flushes it there.

use core::{
    fmt,
    ops::Deref,
    sync::atomic::{AtomicU32, Ordering},
};

use alloc::sync::Arc;
use tdx_sys::{SeamcallArgs, leaf};
use tdx_types::{
    ErrorKind, Leaf, Pfn, TdxError, TdxStatus,
    exit::{ExitRegs, TdExit, VmcallControl, VmcallError, VmcallRegs, VmcallRequest, VmcallStatus},
    metadata::{FieldValue, VcpuField},
};

use super::teardown::flush_vcpu;
use super::{
    Finalized, Operand, Td, TdError, TdHostRef, VcpuId, sealed,
    vcpu::{NO_CPU, VcpuSlot},
};
use crate::platform::{CpuId, Cpus};

/// A finalized TD a [`Vcpu`] handle can hold: `&Td` (the handle borrows
/// the TD, for scoped threads) or `Arc<Td>` (the handle shares it, for
/// spawned threads). Sealed.
pub trait FinalizedTd: sealed::Sealed + Deref<Target = Td<Finalized, Self::Host>> {
    /// How the TD reaches its host.
    type Host: TdHostRef;
}

impl<H: TdHostRef> sealed::Sealed for &Td<Finalized, H> {}
impl<H: TdHostRef> FinalizedTd for &Td<Finalized, H> {
    type Host = H;
}
impl<H: TdHostRef> sealed::Sealed for Arc<Td<Finalized, H>> {}
impl<H: TdHostRef> FinalizedTd for Arc<Td<Finalized, H>> {
    type Host = H;
}

/// A vCPU of a finalized TD, as the thread that runs it holds it.
///
/// At most one handle exists per vCPU ([`Vcpu::new`] refuses a second),
/// and [`enter`](Vcpu::enter) takes `&mut self`: one thread runs a vCPU at
/// a time, as the module requires (a second entry of a running vCPU fails
/// with `TDX_VCPU_STATE_INCORRECT`). The handle is `Send` (a VMM moves it to
/// its vCPU thread) whenever the TD is `Sync`. It holds the TD (`&Td` or
/// `Arc<Td>`), so the TD cannot be torn down while a handle exists.
///
/// The handle keeps the vCPU's register file between entries: after a
/// [`TdExit::Vmcall`], [`vmcall`](Vcpu::vmcall) decodes the request, and
/// the reply methods set what the guest reads back at the next entry
/// (the module copies the registers the guest exposed from the host's
/// TDH.VP.ENTER inputs).
///
/// # Examples
///
/// A vCPU thread's run loop against a simulated guest that asks for a
/// CPUID leaf and halts (the simulator's [guest model] stands in for the
/// guest):
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// # let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
/// # let vcpu0 = td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let td = td.finalize().map_err(|f| f.error).unwrap();
/// use tdx_sim::Guest;
/// use tdx_types::exit::{TdExit, VmcallRequest, VmcallStatus, subfunction};
///
/// // The guest: the GHCI's CPUID TDVMCALL, then HLT.
/// sim.set_guest(vcpu0.tdvpr, |g: &mut Guest| {
///     let (status, r) = g.tdvmcall(subfunction::CPUID, [0x4000_0000, 0, 0, 0]);
///     assert_eq!((status, &r[1..]), (VmcallStatus::SUCCESS, &[0x1234, 0, 0, 0][..]));
///     g.halt();
/// });
/// std::thread::scope(|s| {
///     s.spawn(|| {
///         let mut v = td.vcpu(vcpu0).unwrap();
///         loop {
///             let exit = v.enter(CpuId(0)).unwrap(); // TDH.VP.ENTER
///             assert!(matches!(exit, TdExit::Vmcall { .. }));
///             match v.vmcall() {
///                 Some(Ok(VmcallRequest::Cpuid { .. })) => v.reply_cpuid([0x1234, 0, 0, 0]).unwrap(),
///                 Some(Ok(VmcallRequest::Hlt { .. })) => break,
///                 other => panic!("unexpected {other:?}"),
///             }
///         }
///     });
/// });
/// assert!(td.teardown().is_clean());
/// ```
///
/// [guest model]: https://docs.rs/tdx-sim/latest/tdx_sim/guest/index.html
pub struct Vcpu<T: FinalizedTd> {
    td: T,
    /// Position in the TD's vCPU list.
    slot: usize,
    id: VcpuId,
    /// TDH.VP.ENTER's register file: the last exit's outputs, then the
    /// reply.
    regs: SeamcallArgs,
    /// The last exit was a TDG.VP.VMCALL with this control, and whether the
    /// host answered it.
    vmcall: Option<(VmcallControl, bool)>,
}

impl<T: FinalizedTd> fmt::Debug for Vcpu<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu")
            .field("id", &self.id)
            .field("cpu", &self.cpu())
            .field("vmcall", &self.vmcall)
            .finish_non_exhaustive()
    }
}

impl<T: FinalizedTd> Drop for Vcpu<T> {
    fn drop(&mut self) {
        self.slot().taken.store(false, Ordering::Release);
    }
}

impl<H: TdHostRef> Td<Finalized, H> {
    /// The handle of vCPU `id`, borrowing the TD (see [`Vcpu`]; for an
    /// `Arc<Td>`, use [`Vcpu::new`]).
    pub fn vcpu(&self, id: VcpuId) -> Result<Vcpu<&Self>, TdError> {
        Vcpu::new(self, id)
    }
}

impl<T: FinalizedTd> Vcpu<T> {
    /// The handle of vCPU `id` of `td`. Refused if `id` is not a built
    /// vCPU of this TD, or if a handle of it exists already.
    pub fn new(td: T, id: VcpuId) -> Result<Self, TdError> {
        let slot = td
            .inner
            .vcpus
            .iter()
            .position(|v| v.tdvpr.pfn() == id.tdvpr && v.associated())
            .ok_or(TdError::UnknownVcpu(id.tdvpr))?;
        if td.inner.vcpus[slot]
            .taken
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Err(TdError::Vcpu {
                tdvpr: id.tdvpr,
                why: "another handle of this vCPU exists",
            });
        }
        Ok(Self {
            td,
            slot,
            id,
            regs: SeamcallArgs::ZERO,
            vmcall: None,
        })
    }

    fn slot(&self) -> &VcpuSlot {
        &self.td.inner.vcpus[self.slot]
    }

    fn assoc(&self) -> &AtomicU32 {
        &self.slot().assoc
    }

    /// The vCPU.
    pub fn id(&self) -> VcpuId {
        self.id
    }

    /// The vCPU's TDVPR page.
    pub fn tdvpr(&self) -> Pfn {
        self.id.tdvpr
    }

    /// The TD.
    pub fn td(&self) -> &Td<Finalized, T::Host> {
        &self.td
    }

    /// The CPU the vCPU may be associated with now: where it last entered
    /// (or was initialized), `None` after a [`flush`](Vcpu::flush).
    pub fn cpu(&self) -> Option<CpuId> {
        match self.assoc().load(Ordering::Relaxed) {
            NO_CPU => None,
            c => Some(CpuId(c)),
        }
    }

    /// TDH.VP.FLUSH on the CPU the vCPU is associated with (run there):
    /// the vCPU is then associated with no CPU and may enter on any. What
    /// a VMM does before it stops running a vCPU on a CPU for a while (a
    /// CPU going offline, say); [`enter`](Vcpu::enter) does it by itself
    /// when the vCPU moves.
    #[doc(alias = "TDH.VP.FLUSH")]
    pub fn flush(&mut self) -> Result<(), TdError> {
        let Some(cpu) = self.cpu() else {
            return Ok(());
        };
        let td = &*self.td;
        // "Not associated with this CPU": nothing to flush (the TD records
        // every association its calls make, so it is associated nowhere).
        flush_vcpu(
            td.b(),
            td.p(),
            td.inner.policy,
            self.slot,
            self.id.tdvpr,
            cpu,
        )?;
        self.assoc().store(NO_CPU, Ordering::Relaxed);
        Ok(())
    }

    /// TDH.VP.ENTER on `cpu`: runs the vCPU until the guest stops, and
    /// returns why ([`TdExit`]).
    ///
    /// If the vCPU is associated with another CPU, it is flushed there
    /// first (TDH.VP.FLUSH, run on that CPU). The entry itself runs through
    /// [`Cpus::enter_guest`](crate::Cpus::enter_guest) on `cpu`, once: a module that answers
    /// BUSY (a concurrent TDH.MEM.TRACK holds the TD's epoch lock, say)
    /// gives [`TdError::Busy`], and the VMM enters again. Nothing in the
    /// guest ran when `enter` returns an error, and the registers the
    /// failed call returned are dropped: a reply given to a pending
    /// TDG.VP.VMCALL stays for the next `enter`.
    ///
    /// After a [`TdExit::Vmcall`] the guest waits for the host's answer:
    /// give it with a reply method before the next `enter`, which refuses
    /// otherwise. A VMCALL that exposes XMM registers is refused for good
    /// (the module would copy the host's XMM registers into the guest at
    /// the next entry, and this library does not manage them): the VMM
    /// should tear the TD down.
    #[doc(alias = "TDH.VP.ENTER")]
    pub fn enter(&mut self, cpu: CpuId) -> Result<TdExit, TdError> {
        let tdvpr = self.id.tdvpr;
        match self.vmcall {
            Some((c, _)) if c.xmms() != 0 => {
                return Err(TdError::Vcpu {
                    tdvpr,
                    why: "the guest's TDG.VP.VMCALL exposes XMM registers, which the host \
                          does not pass to a guest",
                });
            }
            Some((_, false)) => {
                return Err(TdError::Vcpu {
                    tdvpr,
                    why: "the guest's TDG.VP.VMCALL has no reply yet",
                });
            }
            _ => {}
        }
        if cpu.0 >= self.td.p().cpus() {
            return Err(TdError::NoSuchCpu(cpu));
        }
        match self.cpu() {
            Some(old) if old != cpu => self.flush()?,
            _ => {}
        }
        let p = self.td.p();
        // An entry's association survives its failure: from here on the
        // vCPU may be associated with `cpu`.
        self.assoc().store(cpu.0, Ordering::Relaxed);
        let b = self.td.b();
        // The call works on a copy: a failed entry's outputs are not
        // trusted, and the registers it was given (the reply to a pending
        // TDG.VP.VMCALL) stay for the next attempt.
        let mut regs = self.regs;
        let io = &mut regs;
        let mut status = TdxStatus::SUCCESS;
        p.enter_guest(cpu, &mut || {
            // SAFETY: VP.ENTER moves no page; it runs on `cpu` inside
            // `enter_guest`, which does the host-state work the module
            // leaves to the host (the `Cpus` contract).
            status = unsafe { leaf::tdh_vp_enter(b, tdvpr, io) };
        });
        let exit = TdExit::decode(ExitRegs {
            rax: status.raw(),
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            r9: regs.r9,
        });
        match exit {
            Ok(exit) => {
                self.regs = regs;
                self.vmcall = match exit {
                    TdExit::Vmcall { control } => Some((control, false)),
                    _ => None,
                };
                Ok(exit)
            }
            Err(status) => {
                let error = TdxError::new(Leaf::VP_ENTER.v0(), status);
                let on = Operand::Vcpu(self.slot);
                Err(if status.kind() == Some(ErrorKind::Busy) {
                    TdError::Busy { error, on }
                } else {
                    TdError::Seamcall { error, on }
                })
            }
        }
    }

    /// A typed field of the vCPU (TDH.VP.RD, version 0), read where the
    /// vCPU is associated (where it was initialized if it was flushed: the
    /// read associates it there).
    #[doc(alias = "TDH.VP.RD")]
    pub fn field<V: FieldValue>(&self, field: VcpuField<V>) -> Result<V, TdError> {
        self.td.vcpu_field_at(self.slot, field)
    }

    /// The request of the guest's TDG.VP.VMCALL, if the last exit was one
    /// (decoded per the GHCI from the registers the guest exposed).
    pub fn vmcall(&self) -> Option<Result<VmcallRequest, VmcallError>> {
        let (control, _) = self.vmcall?;
        let r = &self.regs;
        Some(VmcallRequest::decode(
            control,
            &VmcallRegs {
                rdx: r.rdx,
                rbx: r.rbx,
                rsi: r.rsi,
                rdi: r.rdi,
                r8: r.r8,
                r9: r.r9,
                r10: r.r10,
                r11: r.r11,
                r12: r.r12,
                r13: r.r13,
                r14: r.r14,
                r15: r.r15,
            },
        ))
    }

    /// Answers the pending TDG.VP.VMCALL with `status` in R10 (the guest's
    /// other exposed registers come back as it left them).
    pub fn reply(&mut self, status: VmcallStatus) -> Result<(), TdError> {
        self.answer(|r| r.r10 = status.0)
    }

    /// Answers with `status` and one output in R11 (MapGPA's next GPA on
    /// RETRY, an input port's or MMIO read's value, RDMSR's EDX:EAX).
    pub fn reply_r11(&mut self, status: VmcallStatus, r11: u64) -> Result<(), TdError> {
        self.answer(|r| (r.r10, r.r11) = (status.0, r11))
    }

    /// Answers a CPUID request: success, with EAX, EBX, ECX and EDX in
    /// R12-R15.
    pub fn reply_cpuid(&mut self, [eax, ebx, ecx, edx]: [u32; 4]) -> Result<(), TdError> {
        self.answer(|r| {
            r.r10 = VmcallStatus::SUCCESS.0;
            (r.r12, r.r13, r.r14, r.r15) = (eax.into(), ebx.into(), ecx.into(), edx.into());
        })
    }

    fn answer(&mut self, f: impl FnOnce(&mut SeamcallArgs)) -> Result<(), TdError> {
        match &mut self.vmcall {
            Some((_, answered)) => {
                f(&mut self.regs);
                *answered = true;
                Ok(())
            }
            None => Err(TdError::Vcpu {
                tdvpr: self.id.tdvpr,
                why: "no TDG.VP.VMCALL is waiting for a reply",
            }),
        }
    }
}
