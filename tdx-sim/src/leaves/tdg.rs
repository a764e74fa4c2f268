//! The guest side of the module: what a guest operation of the guest model
//! ([`crate::guest`]) does while TDH.VP.ENTER has the vCPU in the guest,
//! and the TD exits it makes (`src/td_dispatcher/`,
//! `src/td_transitions/td_exit.c`, Intel TDX module 1.5.01).

use sha2::{Digest, Sha384};
use tdx_sys::SeamcallArgs;
use tdx_types::{
    OperandId, TdxStatus,
    exit::{ExitReason, VmcallRegs},
    regs::SeptState,
};

use super::{
    instr::{self, MsrOutcome},
    pinfo,
};
use crate::{
    dispatch::op,
    guest::{Exception, Pending, Reply, Request, Runner, SharedMapping, VirtualizationException},
    locks::{Busy, Ordering, septe},
    memory::PAGE,
    sept::{is_leaf_state, state_of, target_of, word},
    state::Shared,
    td::{LastExit, Td, VcpuState},
};

/// TD_PARAMS.ATTRIBUTES.SEPT_VE_DISABLE (bit 28): a guest access to a
/// PENDING page exits to the host instead of raising #VE
/// (`src/vmm_dispatcher/api_calls/tdh_mng_init.c`, TD_CTLS.PENDING_VE_DISABLE).
const ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// CONFIG_FLAGS.NO_RBP_MOD (bit 2), TD_PARAMS offset 32.
const CONFIG_NO_RBP_MOD: u64 = 1 << 2;
/// Extended exit qualification types (`src/common/x86_defs/vmcs_defs.h`).
const EEQ_ACCEPT: u64 = 1;
const EEQ_PENDING_EPT_VIOLATION: u64 = 6;
/// EPT-violation exit qualification: data read, data write.
const QUAL_READ: u64 = 1;
const QUAL_WRITE: u64 = 1 << 1;
/// TD exit status NON_RECOVERABLE_VCPU (`tdx_error_codes_defs.h`), in RAX
/// bits 63:32 over the exit reason.
const NON_RECOVERABLE_VCPU: u64 = 0x4000_0001_0000_0000;
/// TD exit statuses NON_RECOVERABLE_TD and NON_RECOVERABLE_TD_NON_ACCESSIBLE
/// (`tdx_error_codes_defs.h`, the fatal bit 61 included).
const NON_RECOVERABLE_TD: u64 = 0x6000_0002_0000_0000;
const NON_RECOVERABLE_TD_NON_ACCESSIBLE: u64 = 0x6000_0005_0000_0000;
/// NOTIFICATION exit qualification bit 0: VM context invalid.
const NOTIFY_VM_CONTEXT_INVALID: u64 = 1;
/// VMX basic exit reason of a triple fault.
const TRIPLE_FAULT: u64 = 2;
/// The interruption information of the kick's exit: valid (bit 31), type
/// external interrupt (0), vector 0xFD (the reschedule IPI a Linux host's
/// kick sends).
pub(crate) const KICK_INTERRUPTION_INFO: u64 = 0x8000_00FD;

/// A TD exit: the registers TDH.VP.ENTER returns and the vCPU's state after.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exit {
    pub(crate) rax: u64,
    rcx: u64,
    rdx: u64,
    r8: u64,
    r9: u64,
    /// A TDG.VP.VMCALL exit: the guest's registers, unexposed ones zero.
    gprs: Option<VmcallRegs>,
    pub(crate) state: VcpuState,
    pub(crate) last: LastExit,
    /// The exit sets TDR.FATAL.
    pub(crate) fatal: bool,
    /// A guest access's EPT violation on a private GPA (logged for the
    /// zero-step filter).
    pub(crate) private_epf: bool,
    /// A NON_ACCESSIBLE exit: the TDVPS is not written and the TLB
    /// refcount not decremented (`td_vmexit_to_vmm`, `is_td_dead`).
    pub(crate) dead: bool,
}

impl Exit {
    /// An asynchronous (fault-like) exit (`async_tdexit_internal`,
    /// `src/td_transitions/td_exit.c`).
    fn fault(reason: ExitReason, qual: u64, eeq: u64, gpa: u64, intr: u64) -> Self {
        Self {
            rax: u64::from(reason.0),
            rcx: qual,
            rdx: eeq,
            r8: gpa,
            r9: intr,
            gprs: None,
            state: VcpuState::Ready,
            last: LastExit::AsyncFault,
            fatal: false,
            private_epf: false,
            dead: false,
        }
    }

    /// The EPT-violation exit of a guest access (`td_ept_violation.c`):
    /// qualification (bits 12:7 cleared), EEQ, GPA with bits 11:0 cleared.
    fn ept(qual: u64, eeq: u64, gpa: u64) -> Self {
        Self::fault(ExitReason::EPT_VIOLATION, qual, eeq, gpa & !0xFFF, 0)
    }

    /// Writes the exit's registers: an asynchronous exit sets RCX, RDX, R8
    /// and R9 and zeroes RBX, RSI, RDI and R10-R15; a TDG.VP.VMCALL exit
    /// passes the exposed registers and zeroes the others.
    pub(crate) fn write(&self, a: &mut SeamcallArgs) {
        a.rcx = self.rcx;
        match self.gprs {
            Some(g) => {
                (a.rdx, a.rbx, a.rsi, a.rdi) = (g.rdx, g.rbx, g.rsi, g.rdi);
                (a.r8, a.r9, a.r10, a.r11) = (g.r8, g.r9, g.r10, g.r11);
                (a.r12, a.r13, a.r14, a.r15) = (g.r12, g.r13, g.r14, g.r15);
            }
            None => {
                (a.rdx, a.r8, a.r9) = (self.rdx, self.r8, self.r9);
                (a.rbx, a.rsi, a.rdi) = (0, 0, 0);
                (a.r10, a.r11, a.r12, a.r13, a.r14, a.r15) = (0, 0, 0, 0, 0, 0);
            }
        }
    }
}

/// The GPR indices a TDG.VP.VMCALL may expose and the module passes
/// (RDX, RBX, RSI, RDI, R8-R15), with their fields.
fn exposed(control: u64, r: &mut VmcallRegs, from: &VmcallRegs) {
    let on = |i: u32| control & (1 << i) != 0;
    let pairs: [(u32, &mut u64, u64); 12] = [
        (2, &mut r.rdx, from.rdx),
        (3, &mut r.rbx, from.rbx),
        (6, &mut r.rsi, from.rsi),
        (7, &mut r.rdi, from.rdi),
        (8, &mut r.r8, from.r8),
        (9, &mut r.r9, from.r9),
        (10, &mut r.r10, from.r10),
        (11, &mut r.r11, from.r11),
        (12, &mut r.r12, from.r12),
        (13, &mut r.r13, from.r13),
        (14, &mut r.r14, from.r14),
        (15, &mut r.r15, from.r15),
    ];
    for (i, dst, v) in pairs {
        if on(i) {
            *dst = v;
        }
    }
}

fn host_regs(a: &SeamcallArgs) -> VmcallRegs {
    VmcallRegs {
        rdx: a.rdx,
        rbx: a.rbx,
        rsi: a.rsi,
        rdi: a.rdi,
        r8: a.r8,
        r9: a.r9,
        r10: a.r10,
        r11: a.r11,
        r12: a.r12,
        r13: a.r13,
        r14: a.r14,
        r15: a.r15,
    }
}

/// What a guest operation came to.
enum Step {
    /// Completed: the guest goes on with this answer.
    Done(Reply),
    /// A TD exit; the guest resumes as `Pending` says at the next entry.
    Exit(Exit, Pending),
}

/// Runs the guest of the vCPU at TDVPR frame `v` from where it stopped
/// until its next TD exit. `a` holds the host's registers at entry (the
/// reply to a TDG.VP.VMCALL when that was the last exit).
/// `hint` is RCX bit 52 of the entry (HOST_RECOVERABILITY_HINT).
pub(crate) fn run_guest(
    s: &Shared,
    td: &Td,
    v: u64,
    a: &SeamcallArgs,
    last: LastExit,
    hint: bool,
    lp: u32,
) -> Exit {
    let mut runner = s.guests.enter(v, lp);
    crate::trace::guest_entered(s, v);
    let exit = run(s, td, (v, lp), a, (last, hint), &mut runner);
    s.guests.exit(v, runner);
    exit
}

fn run(
    s: &Shared,
    td: &Td,
    (v, lp): (u64, u32),
    a: &SeamcallArgs,
    (last, hint): (LastExit, bool),
    r: &mut Runner,
) -> Exit {
    // The entry: a TDG.VP.VMCALL completes with the host's reply
    // (`tdh_vp_enter.c`, only if the last exit was one); a fault-like exit
    // repeats the operation.
    let mut next = match std::mem::replace(&mut r.pending, Pending::Next) {
        Pending::Reply { control, mut regs } => {
            // Only if the last exit is still the TDVMCALL (a zero-step
            // emulated exit in between makes it ASYNC_FAULT, and the guest
            // then goes on with its own registers).
            if last == LastExit::Tdvmcall {
                exposed(control, &mut regs, &host_regs(a));
            }
            let _ = r.tx.send(Reply::Vmcall(Ok(regs)));
            None
        }
        Pending::Trap(status) => {
            // After a trap-like exit the TDCALL's status gets the host's
            // hint in bit 60 (`tdh_vp_enter.c`).
            let mut raw = status.raw();
            if last == LastExit::AsyncTrap {
                raw = raw & !HINT_BIT | if hint { HINT_BIT } else { 0 };
            }
            let _ = r.tx.send(Reply::Status(TdxStatus::from_raw(raw)));
            None
        }
        Pending::Retry(req) => Some(req),
        Pending::Next => None,
        Pending::Halted => {
            r.pending = Pending::Halted;
            return if s.guests.take_kick(v) {
                crate::trace::guest_kicked(s, v, false);
                kick_exit()
            } else {
                halt_exit()
            };
        }
    };
    loop {
        let (req, new) = match next.take() {
            Some(x) => (x, false),
            None => {
                let req = match r.rx.recv() {
                    Ok(Ok(req)) => req,
                    Ok(Err(msg)) => panic!("tdx-sim: a guest program panicked: {msg}"),
                    Err(_) => Request::End,
                };
                crate::trace::guest_request(s, v, &req);
                (req, true)
            }
        };
        if s.guests.take_kick(v) {
            crate::trace::guest_kicked(s, v, new);
            // The pending interrupt exits before the operation, which runs
            // after the next entry.
            r.pending = Pending::Retry(req);
            return dead_if_fatal(td, kick_exit(), ExitReason::EXTERNAL_INTERRUPT);
        }
        if td.fatal()
            && let Some(reason) = vm_exit_of(s, td, (v, lp), &req)
        {
            // Another vCPU made the TD fatal: this one's next VM exit is
            // NON_ACCESSIBLE (`tdx_td_dispatcher.c`).
            r.pending = Pending::Retry(req);
            return dead_if_fatal(td, Exit::fault(reason, 0, 0, 0, 0), reason);
        }
        match step(s, td, (v, lp), req) {
            Step::Done(reply) => {
                s.vcpus.with(v, |vc| vc.rip += 1);
                let _ = r.tx.send(reply);
            }
            Step::Exit(exit, pending) => {
                if exit.last != LastExit::AsyncFault {
                    // Trap-like: RIP moves past the TDCALL before the exit.
                    s.vcpus.with(v, |vc| vc.rip += 1);
                }
                if exit.private_epf {
                    epf_stepping_log(s, v, exit.r8);
                }
                r.pending = pending;
                return exit;
            }
        }
    }
}

/// The VM exit a guest operation makes, if any: a TDCALL's (77) or
/// triple fault's, and an access's EPT violation; an access that
/// translates makes none.
fn vm_exit_of(s: &Shared, td: &Td, (v, lp): (u64, u32), req: &Request) -> Option<ExitReason> {
    match req {
        Request::Cpuid { .. } => Some(ExitReason(instr::EXIT_CPUID as u16)),
        Request::Instruction(k) => Some(ExitReason(k.exit_reason() as u16)),
        Request::Rdmsr { msr } | Request::Wrmsr { msr, .. } => {
            let (wr, value) = match *req {
                Request::Wrmsr { value, .. } => (true, value),
                _ => (false, 0),
            };
            let reason = if wr {
                instr::EXIT_WRMSR
            } else {
                instr::EXIT_RDMSR
            };
            (msr_outcome(s, td, (v, lp), *msr, wr, value) != MsrOutcome::Direct)
                .then_some(ExitReason(reason as u16))
        }
        Request::Read { gpa, .. } | Request::Write { gpa, .. } => {
            // A PENDING page's #VE comes from the module, after an EPT
            // violation VM exit (every S-EPT entry suppresses #VE); the
            // CPU delivers an MMIO page's #VE without one while VE_INFO
            // is free.
            let write = matches!(req, Request::Write { .. });
            let exits = match access(td, *gpa, write) {
                Access::Mapped(_) => false,
                Access::HwVe(_) => s.vcpus.with(v, |vc| vc.ve_info.is_some()),
                Access::Ve(_) | Access::Exit(_) => true,
            };
            exits.then_some(ExitReason::EPT_VIOLATION)
        }
        Request::TripleFault => Some(ExitReason(TRIPLE_FAULT as u16)),
        Request::End => None,
        _ => Some(ExitReason::TDCALL),
    }
}

/// `exit` as it leaves a TD that is fatal by now: NON_ACCESSIBLE over
/// `reason`, the qualification and interruption information kept, the
/// TDVPS untouched (`tdx_td_dispatcher.c`, `td_exit.c`).
fn dead_if_fatal(td: &Td, exit: Exit, reason: ExitReason) -> Exit {
    if !td.fatal() {
        return exit;
    }
    Exit {
        rax: NON_RECOVERABLE_TD_NON_ACCESSIBLE | u64::from(reason.0),
        rcx: exit.rcx,
        r9: exit.r9,
        dead: true,
        ..Exit::fault(ExitReason(0), 0, 0, 0, 0)
    }
}

/// The external-interrupt exit of a kick (`tdx_td_dispatcher.c`).
fn kick_exit() -> Exit {
    Exit::fault(
        ExitReason::EXTERNAL_INTERRUPT,
        0,
        0,
        0,
        KICK_INTERRUPTION_INFO,
    )
}

/// A TDG.VP.VMCALL exit (`tdg_vp_vmcall.c`): RAX = 77, RCX = the control's
/// GPR and XMM masks, the exposed registers; trap-like.
fn vmcall_exit(control: u64, regs: &VmcallRegs) -> Exit {
    let mut shown = VmcallRegs::default();
    exposed(control, &mut shown, regs);
    Exit {
        rax: u64::from(ExitReason::TDCALL.0),
        rcx: control & 0xFFFF_FFFF,
        rdx: 0,
        r8: 0,
        r9: 0,
        gprs: Some(shown),
        state: VcpuState::Ready,
        last: LastExit::Tdvmcall,
        fatal: false,
        private_epf: false,
        dead: false,
    }
}

/// The HLT TDVMCALL a guest whose program ended makes at every entry.
fn halt_exit() -> Exit {
    let regs = VmcallRegs {
        r11: tdx_types::exit::subfunction::HLT,
        ..VmcallRegs::default()
    };
    vmcall_exit(0x1C00, &regs)
}

/// Bit 60 of a status: the host-recoverability hint.
const HINT_BIT: u64 = 1 << 60;
/// The TD-exit status of the host-priority timeout (RAX, reason 0).
const HOST_PRIORITY_BUSY_TIMEOUT: u64 = 0x9000_0205_0000_0000;

/// The host-priority rule of the TD dispatcher (`tdx_td_dispatcher.c`) for
/// a TDCALL that met a lock a host marked: the guest sees
/// `TDX_OPERAND_BUSY|RCX`; the first time starts the vCPU's timer, and one
/// at least [`crate::guest::HP_LOCK_TIMEOUT`] TSC ticks later makes the
/// trap-like exit with `TDX_HOST_PRIORITY_BUSY_TIMEOUT` (the TDCALL then
/// completes with BUSY at the next entry).
fn host_priority(s: &Shared, v: u64) -> Step {
    let busy = op(TdxStatus::OPERAND_BUSY, OperandId::RCX);
    let now = s.tsc.load(Ordering::Acquire);
    let timed_out = s.vcpus.with(v, |vc| match vc.hp_busy_since {
        None => {
            vc.hp_busy_since = Some(now);
            false
        }
        Some(t) if now.wrapping_sub(t) >= crate::guest::HP_LOCK_TIMEOUT => {
            vc.hp_busy_since = None;
            true
        }
        Some(_) => false,
    });
    if !timed_out {
        return Step::Done(Reply::Status(busy));
    }
    Step::Exit(
        Exit {
            rax: HOST_PRIORITY_BUSY_TIMEOUT,
            last: LastExit::AsyncTrap,
            ..Exit::fault(ExitReason(0), 0, 0, 0, 0)
        },
        Pending::Trap(busy),
    )
}

fn step(s: &Shared, td: &Td, (v, lp): (u64, u32), req: Request) -> Step {
    if !matches!(req, Request::Accept { .. }) {
        // Only ACCEPT meets host-priority locks in the model; any other
        // TDCALL result clears the timer too, and so do accesses (model
        // choice: they stand for the guest moving on).
        s.vcpus.with(v, |vc| vc.hp_busy_since = None);
    }
    match req {
        Request::Accept { gpa, level } => match accept(s, td, gpa, level, Some(v)) {
            Accept::HostPriority => host_priority(s, v),
            // "Interrupted" (`tdx_td_dispatcher.c`): RAX and RIP stay, the
            // guest is entered again and the pending interrupt exits at
            // once; the ACCEPT runs again after the next entry and goes on
            // from the entry's ACCEPT_COUNTER.
            Accept::Interrupted => {
                // TDX_SUCCESS for the dispatcher: the host-priority timer
                // stops.
                s.vcpus.with(v, |vc| vc.hp_busy_since = None);
                s.guests.take_kick(v);
                let exit = dead_if_fatal(td, kick_exit(), ExitReason::EXTERNAL_INTERRUPT);
                Step::Exit(exit, Pending::Retry(Request::Accept { gpa, level }))
            }
            Accept::Status(st) => {
                s.vcpus.with(v, |vc| vc.hp_busy_since = None);
                Step::Done(Reply::Status(st))
            }
            Accept::Exit { qual, eeq } => Step::Exit(
                Exit::ept(qual, eeq, gpa),
                Pending::Retry(Request::Accept { gpa, level }),
            ),
        },
        Request::Read { gpa, len } => match resolve(s, v, access(td, gpa, false)) {
            Resolved::Mapped(hpa) => {
                let mut buf = vec![0; len];
                s.mem.read(hpa, &mut buf);
                Step::Done(Reply::Read(Ok(buf)))
            }
            Resolved::Fault(e) => Step::Done(Reply::Read(Err(e))),
            Resolved::Exit(exit) => Step::Exit(exit, Pending::Retry(Request::Read { gpa, len })),
        },
        Request::Write { gpa, data } => match resolve(s, v, access(td, gpa, true)) {
            Resolved::Mapped(hpa) => {
                s.mem.write(hpa, &data);
                Step::Done(Reply::Write(Ok(())))
            }
            Resolved::Fault(e) => Step::Done(Reply::Write(Err(e))),
            Resolved::Exit(exit) => Step::Exit(exit, Pending::Retry(Request::Write { gpa, data })),
        },
        Request::Vmcall { control, regs } => {
            // `tdg_vp_vmcall.c`: RAX, RCX and RSP (and RBP under
            // NO_RBP_MOD) may not be exposed; bits 63:32 are reserved.
            let no_rbp_mod = config_flags(td) & CONFIG_NO_RBP_MOD != 0;
            let forbidden = 0b1_0011 | if no_rbp_mod { 1 << 5 } else { 0 };
            if control >> 32 != 0 || control & forbidden != 0 {
                return Step::Done(Reply::Vmcall(Err(op(
                    TdxStatus::OPERAND_INVALID,
                    OperandId::RCX,
                ))));
            }
            Step::Exit(
                vmcall_exit(control, &regs),
                Pending::Reply { control, regs },
            )
        }
        Request::VpInfo => {
            let index = s.vcpus.with(v, |vc| vc.index);
            let ctl = td.ctl();
            let info = crate::guest::VpInfo {
                rcx: if td.gpaw() { 52 } else { 48 },
                rdx: ctl.attributes,
                r8: u64::from(ctl.num_vcpus) | u64::from(ctl.max_vcpus) << 32,
                r9: u64::from(index),
                r10: 1,
                r11: 0,
            };
            Step::Done(Reply::VpInfo(info))
        }
        Request::RtmrExtend { gpa, index } => tdcall_step(
            s,
            v,
            rtmr_extend(s, td, gpa, index),
            Request::RtmrExtend { gpa, index },
        ),
        Request::MrReport {
            report,
            data,
            subtype,
        } => tdcall_step(
            s,
            v,
            mr_report(s, td, report, data, subtype),
            Request::MrReport {
                report,
                data,
                subtype,
            },
        ),
        Request::FatalTdEvent => Step::Exit(
            Exit {
                rax: NON_RECOVERABLE_TD | u64::from(ExitReason::NOTIFICATION.0),
                rcx: NOTIFY_VM_CONTEXT_INVALID,
                // State and last exit stay as they are (ACTIVE).
                state: VcpuState::Active,
                fatal: true,
                ..Exit::fault(ExitReason(0), 0, 0, 0, 0)
            },
            Pending::Halted,
        ),
        Request::TripleFault => Step::Exit(
            Exit {
                rax: NON_RECOVERABLE_VCPU | TRIPLE_FAULT,
                state: VcpuState::Disabled,
                ..Exit::fault(ExitReason(0), 0, 0, 0, 0)
            },
            Pending::Halted,
        ),
        Request::Cpuid { leaf, subleaf } => {
            // The guest model runs at CPL 0: the supervisor flag counts.
            let (index, all_ve) = s.vcpus.with(v, |vc| (vc.index, vc.cpuid_ve.0));
            let r = instr::guest_cpuid(s, td, index, leaf, subleaf)
                .filter(|_| !all_ve)
                .ok_or_else(|| {
                    // CPUID is 0F A2.
                    inject_ve(s, v, instruction_ve(instr::EXIT_CPUID, 0, 2))
                });
            Step::Done(Reply::Cpuid(r))
        }
        Request::Rdmsr { msr } => Step::Done(Reply::Msr(msr_step(s, td, (v, lp), msr, None))),
        Request::Wrmsr { msr, value } => {
            Step::Done(Reply::Msr(msr_step(s, td, (v, lp), msr, Some(value))))
        }
        Request::Instruction(k) => {
            let ve = instruction_ve(k.exit_reason(), k.qualification(), k.length());
            Step::Done(Reply::Exception(inject_ve(s, v, ve)))
        }
        Request::CpuidveSet { control } => {
            let st = if control >> 2 != 0 {
                op(TdxStatus::OPERAND_INVALID, OperandId::RCX)
            } else {
                s.vcpus.with(v, |vc| {
                    vc.cpuid_ve = (control & 1 != 0, control & 2 != 0);
                });
                TdxStatus::SUCCESS
            };
            Step::Done(Reply::Status(st))
        }
        // `tdg_vp_veinfo_get.c`: the registers are zeroed first, then
        // NO_VALID_VE_INFO or VE_INFO's contents and VALID := 0.
        Request::VeinfoGet => {
            let r = s.vcpus.with(v, |vc| vc.ve_info.take());
            Step::Done(Reply::VeInfo(r.ok_or(TdxStatus::NO_VALID_VE_INFO)))
        }
        Request::End => Step::Exit(halt_exit(), Pending::Halted),
    }
}

/// The VE_INFO of an instruction's #VE: reason, VMX qualification and
/// instruction length (`td_generic_ve_exit`, `tdx_inject_ve`).
fn instruction_ve(reason: u32, qualification: u64, len: u32) -> VirtualizationException {
    VirtualizationException {
        reason,
        qualification,
        instruction_length: len,
        ..VirtualizationException::default()
    }
}

/// What a guest RDMSR or WRMSR (`value` 0 for a read) of `msr` comes to
/// ([`instr::msr_access`]) for this TD, vCPU and LP.
fn msr_outcome(
    s: &Shared,
    td: &Td,
    (v, lp): (u64, u32),
    msr: u32,
    wr: bool,
    value: u64,
) -> MsrOutcome {
    let flags = instr::cpuid_flags(s, td);
    let (attributes, xfam) = {
        let ctl = td.ctl();
        let xfam = ctl.params.as_ref().map_or(0, |p| {
            u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"))
        });
        (ctl.attributes, xfam)
    };
    let msrs = s.vcpus.with(v, |vc| vc.msrs.clone());
    let current = |m: u32| {
        msrs.get(&m)
            .copied()
            .unwrap_or_else(|| instr::initial_msr(m))
    };
    let ctx = instr::MsrCtx {
        attributes,
        xfam,
        flags,
        xss_supported: s.machine.desc.cpu.xss_supported,
        host_misc_enable: s.host_msr(lp, crate::HostMsr::MiscEnable),
        arch_capabilities: s.machine.desc.cpu.arch_capabilities,
        current: &current,
    };
    instr::msr_access(&ctx, msr, wr, value)
}

/// A guest RDMSR (`write` `None`) or WRMSR: the value read (0 for a
/// write) or the exception. A direct access reads and writes the vCPU's
/// value the model keeps (IA32_TSC reads the simulated TSC, IA32_MISC_ENABLE
/// the LP's; writes to the read-only IA32_ARCH_CAPABILITIES and
/// IA32_XAPIC_DISABLE_STATUS are the CPU's #GP).
fn msr_step(
    s: &Shared,
    td: &Td,
    (v, lp): (u64, u32),
    msr: u32,
    write: Option<u64>,
) -> Result<u64, Exception> {
    let wr = write.is_some();
    let value = write.unwrap_or(0);
    match msr_outcome(s, td, (v, lp), msr, wr, value) {
        MsrOutcome::Direct if wr => {
            if matches!(
                msr,
                instr::IA32_ARCH_CAPABILITIES | instr::IA32_XAPIC_DISABLE_STATUS
            ) {
                return Err(Exception::GeneralProtection);
            }
            s.vcpus.with(v, |vc| vc.msrs.insert(msr, value));
            Ok(0)
        }
        MsrOutcome::Direct => Ok(match msr {
            instr::IA32_TSC => s.tsc.load(Ordering::Acquire),
            instr::IA32_MISC_ENABLE => s.host_msr(lp, crate::HostMsr::MiscEnable),
            _ => s.vcpus.with(v, |vc| {
                vc.msrs
                    .get(&msr)
                    .copied()
                    .unwrap_or_else(|| instr::initial_msr(msr))
            }),
        }),
        MsrOutcome::Handled(x) if wr => {
            s.vcpus.with(v, |vc| vc.msrs.insert(msr, x));
            Ok(0)
        }
        MsrOutcome::Handled(x) => Ok(x),
        MsrOutcome::Gp => Err(Exception::GeneralProtection),
        MsrOutcome::Ve => {
            // RDMSR is 0F 32, WRMSR 0F 30.
            let reason = if wr {
                instr::EXIT_WRMSR
            } else {
                instr::EXIT_RDMSR
            };
            Err(inject_ve(s, v, instruction_ve(reason, 0, 2)))
        }
    }
}

fn config_flags(td: &Td) -> u64 {
    td.ctl().params.as_ref().map_or(0, |p| {
        u64::from_le_bytes(p[32..40].try_into().expect("8 bytes"))
    })
}

/// `STEPPING_EPF_THRESHOLD` and `EPF_GPA_LIST_SIZE`
/// (`src/td_transitions/td_exit_stepping.h`, `tdx_tdvps.h`).
const EPF_THRESHOLD: u8 = 6;
const EPF_GPA_LIST_SIZE: usize = 32;

/// `td_exit_epf_stepping_log` (`src/td_transitions/td_exit_stepping.c`):
/// a private-GPA EPT violation exit at the RIP of the last entry counts;
/// past the threshold its GPA joins the list the next entry checks. RIP
/// moved since the entry: the count and list start over.
fn epf_stepping_log(s: &Shared, v: u64, gpa: u64) {
    s.vcpus.with(v, |vc| {
        if vc.rip != vc.rip_on_entry {
            vc.epf_count = 0;
            vc.epf_gpas.clear();
        }
        if vc.epf_count < EPF_THRESHOLD {
            vc.epf_count += 1;
        } else if vc.epf_gpas.len() < EPF_GPA_LIST_SIZE && !vc.epf_gpas.contains(&gpa) {
            vc.epf_gpas.push(gpa);
        }
    });
}

/// `is_epf_expected`: a GPA of the zero-step list still does not
/// translate (no MAPPED leaf maps it).
pub(crate) fn epf_expected(td: &Td, gpa: u64) -> bool {
    let slot = match td.sept.walk(td.pwl(), gpa, 0) {
        Ok(s) | Err(s) => s,
    };
    state_of(slot.value) != SeptState::MAPPED
}

/// The EPT-violation exit VP.ENTER emulates when the zero-step filter
/// finds a listed GPA that still faults (`emulate_ept_violation_td_exit`,
/// `tdh_vp_enter.c`): RCX = data write, R8 = the GPA, the rest 0.
pub(crate) fn zero_step_exit(gpa: u64) -> Exit {
    Exit::ept(QUAL_WRITE, 0, gpa)
}

/// What a guest access to a GPA meets.
enum Access {
    /// A page mapped and accepted (private), or mapped by the VMM's
    /// shared EPT (shared), at this HPA.
    Mapped(u64),
    /// A #VE the module injects (`tdx_inject_ve`): a PENDING page.
    Ve(VirtualizationException),
    /// A #VE the CPU delivers itself (a shared EPT entry with suppress-#VE
    /// clear), if VE_INFO is free ([`hardware_ve`]).
    HwVe(VirtualizationException),
    /// A TD exit.
    Exit(Exit),
}

/// `tdx_inject_ve` (`src/td_dispatcher/vm_exits/td_other_exits.c`): with
/// VE_INFO free, VE_INFO := `ve` (valid) and a #VE; with VE_INFO still
/// valid, a #DF and VE_INFO unchanged.
pub(crate) fn inject_ve(s: &Shared, v: u64, ve: VirtualizationException) -> Exception {
    s.vcpus.with(v, |vc| {
        if vc.ve_info.is_some() {
            Exception::DoubleFault
        } else {
            vc.ve_info = Some(ve);
            Exception::Ve(ve)
        }
    })
}

/// A #VE the CPU delivers for a convertible EPT violation: an EPT
/// violation converts to a #VE only while the VE information area's
/// valid word (VE_INFO.VALID) is 0 (Intel SDM Vol. 3, "Virtualization
/// Exceptions"); otherwise it is an EPT-violation VM exit, which for a
/// shared GPA the module turns into an EPT-violation TD exit
/// (`td_ept_violation.c`).
fn hardware_ve(s: &Shared, v: u64, ve: VirtualizationException) -> Resolved {
    let delivered = s.vcpus.with(v, |vc| {
        let free = vc.ve_info.is_none();
        if free {
            vc.ve_info = Some(ve);
        }
        free
    });
    if delivered {
        Resolved::Fault(Exception::Ve(ve))
    } else {
        Resolved::Exit(Exit::ept(ve.qualification, 0, ve.gpa))
    }
}

/// A guest access's outcome with its #VE delivered.
enum Resolved {
    Mapped(u64),
    Fault(Exception),
    Exit(Exit),
}

fn resolve(s: &Shared, v: u64, a: Access) -> Resolved {
    match a {
        Access::Mapped(hpa) => Resolved::Mapped(hpa),
        Access::Ve(ve) => Resolved::Fault(inject_ve(s, v, ve)),
        Access::HwVe(ve) => hardware_ve(s, v, ve),
        Access::Exit(x) => Resolved::Exit(x),
    }
}

/// A guest read or write of `gpa` (`td_ept_violation.c`): for a private
/// GPA an unlocked walk of the S-EPT to the leaf; for a shared one the
/// VMM's shared EPT as the test set it ([`crate::Simulator::map_shared`]).
fn access(td: &Td, gpa: u64, write: bool) -> Access {
    let qual = if write { QUAL_WRITE } else { QUAL_READ };
    let info = VirtualizationException {
        reason: u32::from(ExitReason::EPT_VIOLATION.0),
        qualification: qual,
        gpa,
        ..VirtualizationException::default()
    };
    let ve = || Access::Ve(info);
    if !td.private_gpa(gpa) {
        let m = td.ctl().shared_ept.get(&(gpa & !0xFFF)).copied();
        return match m {
            Some(SharedMapping::Memory(hpa)) => Access::Mapped(hpa.as_u64() + (gpa & 0xFFF)),
            // KVM's MMIO entries leave suppress-#VE clear: a #VE, which
            // the guest's handler turns into TDG.VP.VMCALL<#VE.RequestMMIO>.
            Some(SharedMapping::Mmio) => Access::HwVe(info),
            None => Access::Exit(Exit::ept(qual, 0, gpa)),
        };
    }
    let slot = match td.sept.walk(td.pwl(), gpa, 0) {
        Ok(s) | Err(s) => s,
    };
    let e = td.sept.view(slot.value);
    match e {
        Some(e) if e.state == SeptState::MAPPED => {
            let size = PAGE << (9 * u32::from(slot.level));
            Access::Mapped(e.pfn * PAGE + (gpa & (size - 1)))
        }
        Some(e) if e.state == SeptState::PENDING => {
            if td.ctl().attributes & ATTR_SEPT_VE_DISABLE != 0 {
                Access::Exit(Exit {
                    private_epf: true,
                    ..Exit::ept(qual, EEQ_PENDING_EPT_VIOLATION, gpa)
                })
            } else {
                ve()
            }
        }
        _ => Access::Exit(Exit {
            private_epf: true,
            ..Exit::ept(qual, 0, gpa)
        }),
    }
}

/// What TDG.MEM.PAGE.ACCEPT comes to.
pub(crate) enum Accept {
    /// The TDCALL's status.
    Status(TdxStatus),
    /// The entry's lock is marked for a host (host priority): the TD
    /// dispatcher's rule decides ([`host_priority`]).
    HostPriority,
    /// An EPT-violation TD exit with an ACCEPT extended exit
    /// qualification; the TDCALL runs again after the next entry.
    Exit { qual: u64, eeq: u64 },
    /// A 2M accept stopped between chunks for a pending interrupt: the
    /// entry is still PENDING with its ACCEPT_COUNTER saved.
    Interrupted,
}

/// ACCEPT_COUNTER of a 2M PENDING entry: the next 4K chunk to zero. The
/// module keeps it in the entry's bits 20:12 (`ia32e_sept_t`,
/// `src/common/x86_defs/x86_defs.h`); the model's entry word keeps the
/// frame there, so the counter lives in bits 61:53, which the model's
/// host leaves, writing whole entries, reset as the module's BLOCK,
/// REMOVE, DEMOTE and PROMOTE do (`sept_cleanup_if_pending`,
/// `src/common/memory_handlers/sept_manager.h`).
const ACCEPT_COUNTER_SHIFT: u32 = 53;
const ACCEPT_COUNTER_MASK: u64 = 0x1FF << ACCEPT_COUNTER_SHIFT;

/// The entry word's ACCEPT_COUNTER.
pub(crate) fn accept_counter(w: u64) -> u64 {
    (w & ACCEPT_COUNTER_MASK) >> ACCEPT_COUNTER_SHIFT
}

/// `is_interrupt_pending_guest_side`: a kick of the vCPU is pending. The
/// test hook ([`crate::Simulator::kick_during_accept`]) counts down one
/// per check and kicks the vCPU when it reaches 0.
fn interrupt_pending(s: &Shared, v: u64) -> bool {
    let fire = s.vcpus.with(v, |vc| match vc.accept_kick_after {
        Some(n) if n <= 1 => {
            vc.accept_kick_after = None;
            true
        }
        Some(n) => {
            vc.accept_kick_after = Some(n - 1);
            false
        }
        None => false,
    });
    if fire {
        s.guests.kick(v);
    }
    s.guests.kick_pending(v)
}

/// The EEQ-ACCEPT exit (`async_tdexit_ept_violation`,
/// `td_other_exits.c`): qualification = data write plus the entry's R/W/X
/// (none for the entries that stop an ACCEPT); EEQ = type 1, info =
/// requested level (2:0), level where the walk stopped (5:3), that entry's
/// state (13:6), is-leaf (14).
fn accept_exit(req: u8, at: u8, e: u64) -> Accept {
    let state = state_of(e);
    let leaf = u64::from(is_leaf_state(state));
    let info = u64::from(req) | u64::from(at) << 3 | u64::from(state.0) << 6 | leaf << 14;
    Accept::Exit {
        qual: QUAL_WRITE,
        eeq: EEQ_ACCEPT | info << 32,
    }
}

/// TDG.MEM.PAGE.ACCEPT (`tdg_mem_page_accept.c`), in the module's order:
/// page info (reserved bits, level 4K or 2M, alignment) and a private GPA
/// (`OPERAND_INVALID|RCX`); an unlocked walk that stops above the
/// requested level at an accepted leaf (`PAGE_ALREADY_ACCEPTED` with that
/// level, a warning) or at anything else (exit); the entry's guest lock
/// (`OPERAND_BUSY|RCX`, also when a host marked it with host priority:
/// the TD dispatcher shows BUSY_HOST_PRIORITY as BUSY); a non-free
/// non-leaf entry (`PAGE_SIZE_MISMATCH` with the level); an accepted leaf
/// (`PAGE_ALREADY_ACCEPTED`); anything not PENDING (exit). A PENDING page
/// is zeroed (2M: 4K chunks from ACCEPT_COUNTER, interruptible when
/// `vcpu` has an interrupt pending, see [`Accept::Interrupted`]) and
/// becomes MAPPED; the whole entry is written back, which clears a
/// host-priority mark set meanwhile. `vcpu` is `None` for the test helper
/// outside a vCPU, which no interrupt stops.
pub(crate) fn accept(s: &Shared, td: &Td, gpa: u64, level: u8, vcpu: Option<u64>) -> Accept {
    let rcx = gpa | u64::from(level);
    if gpa & 0xFFF != 0 || level > 7 {
        return Accept::Status(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    // 1G is refused: module 1.5.01 accepts 4K and 2M only.
    if let Err(st) = pinfo(rcx, 0, 1) {
        return Accept::Status(st);
    }
    if !td.private_gpa(gpa) {
        return Accept::Status(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let slot = match td.sept.walk(td.pwl(), gpa, level) {
        Ok(slot) => slot,
        Err(stop) => {
            if state_of(stop.value) == SeptState::MAPPED {
                return Accept::Status(op(
                    TdxStatus::PAGE_ALREADY_ACCEPTED,
                    OperandId(u32::from(stop.level)),
                ));
            }
            return accept_exit(level, stop.level, stop.value);
        }
    };
    match septe::lock_guest(slot.word) {
        Ok(()) => {}
        Err(Busy::Busy) => return Accept::Status(op(TdxStatus::OPERAND_BUSY, OperandId::RCX)),
        Err(Busy::HostPriority) => return Accept::HostPriority,
    }
    let cur = slot.word.load(Ordering::Acquire);
    let state = state_of(cur);
    let out = if state != SeptState::FREE && !is_leaf_state(state) {
        Accept::Status(op(
            TdxStatus::PAGE_SIZE_MISMATCH,
            OperandId(u32::from(level)),
        ))
    } else if state == SeptState::MAPPED {
        Accept::Status(op(
            TdxStatus::PAGE_ALREADY_ACCEPTED,
            OperandId(u32::from(level)),
        ))
    } else if state != SeptState::PENDING {
        accept_exit(level, level, cur)
    } else {
        let pfn = target_of(cur);
        if level == 0 {
            s.mem.zero(pfn, pfn + 1);
        } else {
            // 2M: 4K chunks from ACCEPT_COUNTER; after each but the last,
            // an interrupt pending stops the accept with the counter
            // saved in the entry, still PENDING (`tdg_mem_page_accept.c`).
            let mut counter = accept_counter(cur);
            loop {
                s.mem.zero(pfn + counter, pfn + counter + 1);
                if counter == 511 {
                    break;
                }
                counter += 1;
                if vcpu.is_some_and(|v| interrupt_pending(s, v)) {
                    slot.word.store(
                        word(SeptState::PENDING, pfn)
                            | counter << ACCEPT_COUNTER_SHIFT
                            | septe::LOCK,
                        Ordering::Release,
                    );
                    septe::unlock(slot.word);
                    return Accept::Interrupted;
                }
            }
        }
        slot.word.store(
            word(SeptState::MAPPED, pfn) | septe::LOCK,
            Ordering::Release,
        );
        Accept::Status(TdxStatus::SUCCESS)
    };
    septe::unlock(slot.word);
    out
}

/// A TDCALL's memory operand that did not map
/// (`check_walk_and_map_guest_side_gpa`, `src/common/helpers/helpers.c`).
enum Operand {
    /// Not a valid GPA for the leaf: the leaf's `TDX_OPERAND_INVALID`.
    Invalid,
    /// A #VE for the guest (the TDCALL does not complete).
    Ve(VirtualizationException),
    /// An EPT-violation TD exit (the TDCALL runs again after the entry).
    Exit(Box<Exit>),
}

/// Maps a TDCALL's memory operand at `gpa` for reading (or reading and
/// writing): a private GPA through the S-EPT (PENDING: #VE or an exit with
/// EEQ type 6; anything but MAPPED: an exit), a shared one through the
/// VMM's shared EPT (MMIO: #VE; unmapped: an exit); `private_only`
/// refuses shared GPAs. The exit's qualification is the missing access
/// (read, and write for a read-write mapping). No zero-step logging.
fn map_operand(td: &Td, gpa: u64, write: bool, private_only: bool) -> Result<u64, Operand> {
    let private = td.private_gpa(gpa);
    let width = if td.gpaw() { 52 } else { 48 };
    if (private_only && !private) || gpa >> width != 0 {
        return Err(Operand::Invalid);
    }
    let qual = if write {
        QUAL_READ | QUAL_WRITE
    } else {
        QUAL_READ
    };
    let ve = VirtualizationException {
        reason: u32::from(ExitReason::EPT_VIOLATION.0),
        qualification: qual,
        gpa,
        ..VirtualizationException::default()
    };
    if !private {
        let m = td.ctl().shared_ept.get(&(gpa & !0xFFF)).copied();
        return match m {
            Some(SharedMapping::Memory(hpa)) => Ok(hpa.as_u64() + (gpa & 0xFFF)),
            Some(SharedMapping::Mmio) => Err(Operand::Ve(ve)),
            None => Err(Operand::Exit(Box::new(Exit::ept(qual, 0, gpa)))),
        };
    }
    let slot = match td.sept.walk(td.pwl(), gpa, 0) {
        Ok(s) | Err(s) => s,
    };
    match td.sept.view(slot.value) {
        Some(e) if e.state == SeptState::MAPPED => {
            let size = PAGE << (9 * u32::from(slot.level));
            Ok(e.pfn * PAGE + (gpa & (size - 1)))
        }
        Some(e) if e.state == SeptState::PENDING => {
            if td.ctl().attributes & ATTR_SEPT_VE_DISABLE != 0 {
                let x = Exit::ept(qual, EEQ_PENDING_EPT_VIOLATION, gpa);
                Err(Operand::Exit(Box::new(x)))
            } else {
                Err(Operand::Ve(ve))
            }
        }
        _ => Err(Operand::Exit(Box::new(Exit::ept(qual, 0, gpa)))),
    }
}

/// What a TDCALL with memory operands came to.
enum Tdcall {
    Done(TdxStatus),
    Ve(VirtualizationException),
    Exit(Box<Exit>),
}

/// The operand check's outcome for operand `o` (`TDX_OPERAND_INVALID|o`).
fn operand(r: Result<u64, Operand>, o: OperandId) -> Result<u64, Tdcall> {
    r.map_err(|e| match e {
        Operand::Invalid => Tdcall::Done(op(TdxStatus::OPERAND_INVALID, o)),
        Operand::Ve(ve) => Tdcall::Ve(ve),
        Operand::Exit(x) => Tdcall::Exit(x),
    })
}

fn tdcall_step(s: &Shared, v: u64, r: Result<TdxStatus, Tdcall>, again: Request) -> Step {
    match r {
        Ok(st) | Err(Tdcall::Done(st)) => Step::Done(Reply::Tdcall(Ok(st))),
        // The module maps the operand and injects the #VE itself
        // (`check_walk_and_map_guest_side_gpa`), for a shared GPA too.
        Err(Tdcall::Ve(ve)) => Step::Done(Reply::Tdcall(Err(inject_ve(s, v, ve)))),
        Err(Tdcall::Exit(x)) => Step::Exit(*x, Pending::Retry(again)),
    }
}

/// TDG.MR.RTMR.EXTEND (`tdg_mr_rtmr_extend.c`): the GPA's alignment
/// (64, `|RCX`), its mapping (private only, `|RCX`), the index (`|RDX`);
/// the RTMR lock is not modelled (each guest operation is whole).
fn rtmr_extend(s: &Shared, td: &Td, gpa: u64, index: u64) -> Result<TdxStatus, Tdcall> {
    if !gpa.is_multiple_of(64) {
        return Ok(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    let hpa = operand(map_operand(td, gpa, false, true), OperandId::RCX)?;
    if index >= 4 {
        return Ok(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let mut data = [0u8; 48];
    s.mem.read(hpa, &mut data);
    let mut ctl = td.ctl();
    ctl.rtmr.resize(4, [0; 48]);
    let rtmr = &mut ctl.rtmr[index as usize];
    let mut h = Sha384::new();
    h.update(*rtmr);
    h.update(data);
    rtmr.copy_from_slice(&h.finalize());
    Ok(TdxStatus::SUCCESS)
}

/// TDG.MR.REPORT (`tdg_mr_report.c`), in the module's order: the report
/// GPA's alignment (1024, `|RCX`), REPORTDATA's (64, `|RDX`), REPORTDATA
/// mapped read-only (`|RDX`), the subtype (`|R8`), then the report mapped
/// read-write (`|RCX`) and written. Layout: `include/tdx_api_defs.h`
/// (TDREPORT_STRUCT); TDINFO from the TDCS (`get_tdinfo_and_teeinfohash`,
/// `src/common/helpers/helpers.c`), the rest as [`crate::Guest::mr_report`]
/// says.
fn mr_report(
    s: &Shared,
    td: &Td,
    report: u64,
    data: u64,
    subtype: u64,
) -> Result<TdxStatus, Tdcall> {
    if !report.is_multiple_of(1024) {
        return Ok(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
    }
    if !data.is_multiple_of(64) {
        return Ok(op(TdxStatus::OPERAND_INVALID, OperandId::RDX));
    }
    let data_hpa = operand(map_operand(td, data, false, false), OperandId::RDX)?;
    if subtype != 0 {
        return Ok(op(TdxStatus::OPERAND_INVALID, OperandId::R8));
    }
    let mut r = [0u8; 1024];
    // REPORTTYPE: TDX (0x81), subtype 0, version 0 (no service TDs).
    r[0] = 0x81;
    s.mem.read(data_hpa, &mut r[128..192]);
    {
        let ctl = td.ctl();
        let params = ctl.params.as_deref();
        let param = |off: usize| -> [u8; 48] {
            params.map_or([0; 48], |p| p[off..off + 48].try_into().expect("48 bytes"))
        };
        r[512..520].copy_from_slice(&ctl.attributes.to_le_bytes());
        if let Some(p) = params {
            r[520..528].copy_from_slice(&p[8..16]);
        }
        r[528..576].copy_from_slice(&ctl.mrtd.unwrap_or([0; 48]));
        r[576..624].copy_from_slice(&param(80));
        r[624..672].copy_from_slice(&param(128));
        r[672..720].copy_from_slice(&param(176));
        for (i, m) in ctl.rtmr.iter().enumerate() {
            r[720 + 48 * i..768 + 48 * i].copy_from_slice(m);
        }
    }
    let tee_tcb_hash = Sha384::digest(&r[256..512]);
    r[32..80].copy_from_slice(&tee_tcb_hash);
    let tee_info_hash = Sha384::digest(&r[512..1024]);
    r[80..128].copy_from_slice(&tee_info_hash);
    let mac = Sha384::digest(&r[..224]);
    r[224..256].copy_from_slice(&mac[..32]);
    let report_hpa = operand(map_operand(td, report, true, false), OperandId::RCX)?;
    s.mem.write(report_hpa, &r);
    Ok(TdxStatus::SUCCESS)
}
