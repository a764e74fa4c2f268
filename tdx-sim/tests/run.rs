//! Running a TD: TDH.VP.ENTER's checks and TD exits, the guest model, TLB
//! epochs with vCPUs in the guest, kicks, association and migration, at
//! the raw-leaf level, every output register asserted. Concurrency is
//! forced with channels between the test and the guest program (which
//! stops in the guest until the test lets it go), never with sleeps.

// UNSAFETY: raw SEAMCALLs with chosen registers, on the simulator only.
#![allow(unsafe_code)]

mod td_support;

use std::sync::mpsc;

use td_support::*;
use tdx_sim::{Guest, LockMode, ModuleLock, Simulator};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{
    Gpa, Leaf, OperandId, Pfn, TdxLevel, TdxStatus,
    exit::{ExitReason, ExitRegs, TdExit, VmcallRegs, subfunction},
    regs::SeptState,
};

const RCX: OperandId = OperandId::RCX;
/// TDG.VP.VMCALL exposure of R10-R12 (a GHCI call with one argument).
const R10_R12: u64 = 0x1C00;
/// The shared bit of a 4-level (GPAW 48) TD.
const SHARED: u64 = 1 << 47;
/// ATTRIBUTES.SEPT_VE_DISABLE.
const SEPT_VE_DISABLE: u64 = 1 << 28;

/// Registers a caller passes in: recognizable values in every GPR.
fn marked() -> SeamcallArgs {
    SeamcallArgs {
        rcx: 0,
        rdx: 0xD0,
        r8: 0x80,
        r9: 0x90,
        r10: 0x100,
        r11: 0x110,
        r12: 0x120,
        r13: 0x130,
        r14: 0x140,
        r15: 0x150,
        rbx: 0xB0,
        rdi: 0xD1,
        rsi: 0x51,
    }
}

/// TDH.VP.ENTER of `tdvpr` with `rcx_flags` ORed into RCX and leaf
/// version `version`, on the calling thread's LP, registers `a`.
fn enter_raw(
    sim: &Simulator,
    version: u8,
    tdvpr: Pfn,
    rcx_flags: u64,
    a: &mut SeamcallArgs,
) -> u64 {
    a.rcx = tdvpr.hpa().as_u64() | rcx_flags;
    // SAFETY: the simulator's memory is simulated.
    let s = unsafe { sim.seamcall(Leaf::VP_ENTER.v(version).rax(), a, RegShape::SavedRet) };
    s.raw()
}

/// TDH.VP.ENTER on `lp` with `a` as the host's registers: RAX and every
/// register after.
fn enter_on(sim: &Simulator, lp: u32, tdvpr: Pfn, a: SeamcallArgs) -> (u64, SeamcallArgs) {
    on(sim, lp, || {
        let mut a = a;
        let rax = enter_raw(sim, 0, tdvpr, 0, &mut a);
        (rax, a)
    })
}

/// TDH.VP.ENTER on `lp` with zeroed registers.
fn enter(sim: &Simulator, lp: u32, tdvpr: Pfn) -> (u64, SeamcallArgs) {
    enter_on(sim, lp, tdvpr, SeamcallArgs::default())
}

/// An entry that fails: RAX is `want` and no other register changed.
#[track_caller]
fn enter_fails(sim: &Simulator, lp: u32, tdvpr: Pfn, flags: u64, want: TdxStatus) {
    let (rax, a) = on(sim, lp, || {
        let mut a = marked();
        (enter_raw(sim, 0, tdvpr, flags, &mut a), a)
    });
    assert_eq!(TdxStatus::from_raw(rax), want);
    let mut expect = marked();
    expect.rcx = tdvpr.hpa().as_u64() | flags;
    assert_eq!(a, expect, "a failed entry changes only RAX");
}

/// The registers of an asynchronous exit: RCX, RDX, R8, R9 as given, the
/// others zero.
fn async_regs(rcx: u64, rdx: u64, r8: u64, r9: u64) -> SeamcallArgs {
    SeamcallArgs {
        rcx,
        rdx,
        r8,
        r9,
        ..SeamcallArgs::default()
    }
}

/// The GHCI HLT exit of a halting guest.
fn halt_regs() -> SeamcallArgs {
    SeamcallArgs {
        rcx: R10_R12,
        r11: subfunction::HLT,
        ..SeamcallArgs::default()
    }
}

fn exit_regs(rax: u64, a: &SeamcallArgs) -> ExitRegs {
    ExitRegs {
        rax,
        rcx: a.rcx,
        rdx: a.rdx,
        r8: a.r8,
        r9: a.r9,
    }
}

/// A runnable TD with one vCPU initialized on [`VCPU_LP`], attributes
/// `attributes`.
fn runnable(sim: &Simulator, attributes: u64) -> Td {
    let mut td = Td::build(sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(0, attributes);
    td.init(sim, &p);
    td.add_vcpu(sim, VCPU_LP);
    ok("MR.FINALIZE", mr_finalize(sim, td.tdr));
    td
}

fn ept_exit(qual: u64, eeq: u64, gpa: u64) -> SeamcallArgs {
    async_regs(qual, eeq, gpa, 0)
}

/// The ACCEPT extended exit qualification: type 1, requested level, level
/// where the walk stopped, that entry's state, leaf.
fn eeq_accept(req: u8, at: u8, state: SeptState, leaf: bool) -> u64 {
    1 | (u64::from(req) | u64::from(at) << 3 | u64::from(state.0) << 6 | u64::from(leaf) << 14)
        << 32
}

// ---------------------------------------------------------------------------
// TDH.VP.ENTER error paths
// ---------------------------------------------------------------------------

#[test]
fn enter_checks_fail_in_the_modules_order_and_change_only_rax() {
    let sim = host();
    // Not finalized: OP_STATE_INCORRECT.
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let v0 = td.vcpus[0].tdvpr;
    // A vCPU with too few TDVPS pages, and one never initialized.
    let short = td.create_vcpu(&sim, 2);
    let uninit = td.create_vcpu(&sim, 5);
    let (short, uninit) = (td.vcpus[short].tdvpr, td.vcpus[uninit].tdvpr);
    enter_fails(&sim, VCPU_LP, v0, 0, TdxStatus::OP_STATE_INCORRECT);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));

    // Leaf version 1: the dispatcher refuses it (operand RAX = 0).
    let (rax, a) = on(&sim, VCPU_LP, || {
        let mut a = marked();
        (enter_raw(&sim, 1, v0, 0, &mut a), a)
    });
    assert_eq!(TdxStatus::from_raw(rax), TdxStatus::OPERAND_INVALID);
    assert_eq!(a.rdx, marked().rdx);
    // RCX reserved bits 11:0 and 63:54.
    enter_fails(&sim, VCPU_LP, v0, 1, invalid(RCX));
    enter_fails(&sim, VCPU_LP, v0, 1 << 54, invalid(RCX));
    // Not a TDVPR page.
    enter_fails(&sim, VCPU_LP, td.tdr, 0, metadata(RCX));
    // The TDR, op state and epoch locks.
    {
        let _l = sim
            .hold(ModuleLock::Tdr(td.tdr), LockMode::Exclusive)
            .unwrap();
        enter_fails(&sim, VCPU_LP, v0, 0, busy(OperandId::TDR));
    }
    {
        let _l = sim
            .hold(ModuleLock::OpState(td.tdr), LockMode::Exclusive)
            .unwrap();
        enter_fails(&sim, VCPU_LP, v0, 0, busy(OperandId::OP_STATE));
    }
    {
        let _l = sim
            .hold(ModuleLock::Epoch(td.tdr), LockMode::Exclusive)
            .unwrap();
        enter_fails(&sim, VCPU_LP, v0, 0, busy(OperandId::TD_EPOCH));
    }
    // TDVPS pages before the vCPU state; the state before association.
    enter_fails(&sim, 2, short, 0, TdxStatus::TDCX_NUM_INCORRECT);
    enter_fails(&sim, 2, uninit, 0, TdxStatus::VCPU_STATE_INCORRECT);
    // Associated with LP 1 (VP.INIT): another LP is refused.
    enter_fails(&sim, 2, v0, 0, TdxStatus::VCPU_ASSOCIATED);
    // The host-recoverability hint needs a trap-like last exit; RESUME_L1
    // an L2 VM.
    enter_fails(&sim, VCPU_LP, v0, 1 << 52, invalid(RCX));
    enter_fails(&sim, VCPU_LP, v0, 1 << 53, invalid(RCX));
    // None of that ran the guest: the first entry halts (no program).
    let (rax, a) = enter(&sim, VCPU_LP, v0);
    assert_eq!(rax, u64::from(ExitReason::TDCALL.0));
    assert_eq!(a, halt_regs());
    sim.check_invariants().unwrap();

    // After VPFLUSHDONE the keys are not configured any more.
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, v0)));
    td.vcpus[0].lp = None;
    ok("VPFLUSHDONE", mng_vpflushdone(&sim, td.tdr));
    enter_fails(&sim, VCPU_LP, v0, 0, TdxStatus::TD_KEYS_NOT_CONFIGURED);
    Td::cache_wb_all(&sim);
    ok("KEY.FREEID", mng_key_freeid(&sim, td.tdr));
    td.reclaim_children(&sim);
    ok("RECLAIM TDR", page_reclaim(&sim, td.tdr).status);
    td.free_all(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_failed_entry_after_the_association_keeps_it() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::VcpuReady);
    let i = td.create_vcpu(&sim, 5);
    let v = td.vcpus[i].tdvpr;
    // VP.INIT on LP 1 associates; flush it so the vCPU is free.
    td.init_vcpu(&sim, i, VCPU_LP);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, v)));
    // On LP 2 the hint fails after step 8: the vCPU is now LP 2's.
    enter_fails(&sim, 2, v, 1 << 52, invalid(RCX));
    enter_fails(&sim, VCPU_LP, v, 0, TdxStatus::VCPU_ASSOCIATED);
    assert_eq!(
        on(&sim, VCPU_LP, || vp_flush(&sim, v)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    td.vcpus[i].lp = Some(2);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDG.VP.VMCALL
// ---------------------------------------------------------------------------

#[test]
fn vmcall_exits_with_the_exposed_registers_and_the_reply_comes_back() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let (tx, rx) = mpsc::channel();
    // RDX, RBX, R10-R15 exposed (and XMM0, which the module allows).
    let control = (1 << 2) | (1 << 3) | 0xFC00 | (1 << 16);
    sim.set_guest(v, move |g: &mut Guest| {
        // The module refuses RCX (and RAX, RSP) in the control and
        // reserved bits: no exit.
        tx.send(g.vmcall(1 << 1, VmcallRegs::default())).unwrap();
        tx.send(g.vmcall(1 << 32, VmcallRegs::default())).unwrap();
        let regs = VmcallRegs {
            rdx: 1,
            rbx: 2,
            rsi: 3,
            r8: 8,
            r10: 0,
            r11: subfunction::GET_TD_VM_CALL_INFO,
            r12: 12,
            r13: 13,
            r14: 14,
            r15: 15,
            ..VmcallRegs::default()
        };
        tx.send(g.vmcall(control, regs)).unwrap();
        g.halt();
    });
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!(rax, 77);
    assert_eq!(
        a,
        SeamcallArgs {
            rcx: control,
            rdx: 1,
            rbx: 2,
            r10: 0,
            r11: subfunction::GET_TD_VM_CALL_INFO,
            r12: 12,
            r13: 13,
            r14: 14,
            r15: 15,
            ..SeamcallArgs::default()
        },
        "RSI and R8 were not exposed"
    );
    assert!(matches!(
        TdExit::decode(exit_regs(rax, &a)),
        Ok(TdExit::Vmcall { .. })
    ));
    assert_eq!(rx.recv().unwrap(), Err(invalid(RCX)));
    assert_eq!(rx.recv().unwrap(), Err(invalid(RCX)));
    // The host's reply: every register set, only the exposed ones reach
    // the guest.
    let reply = SeamcallArgs {
        rdx: 0x1D,
        rbx: 0x1B,
        rsi: 0x15,
        rdi: 0x17,
        r8: 0x18,
        r9: 0x19,
        r10: 0,
        r11: 0x111,
        r12: 0x112,
        r13: 0x113,
        r14: 0x114,
        r15: 0x115,
        ..SeamcallArgs::default()
    };
    let (rax, a) = enter_on(&sim, VCPU_LP, v, reply);
    assert_eq!(rax, 77);
    assert_eq!(a, halt_regs());
    let got = rx.recv().unwrap().unwrap();
    assert_eq!(
        got,
        VmcallRegs {
            rdx: 0x1D,
            rbx: 0x1B,
            rsi: 3,
            rdi: 0,
            r8: 8,
            r9: 0,
            r10: 0,
            r11: 0x111,
            r12: 0x112,
            r13: 0x113,
            r14: 0x114,
            r15: 0x115,
        }
    );
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_failed_entry_keeps_the_reply_for_the_next_one() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        let r = g.vmcall(R10_R12, VmcallRegs::default()).unwrap();
        tx.send(r.r11).unwrap();
        g.halt();
    });
    assert_eq!(enter(&sim, VCPU_LP, v).0, 77);
    // This entry fails before the copy: nothing reaches the guest.
    {
        let _l = sim
            .hold(ModuleLock::Epoch(td.tdr), LockMode::Exclusive)
            .unwrap();
        let reply = SeamcallArgs {
            r11: 1,
            ..SeamcallArgs::default()
        };
        let (rax, _) = enter_on(&sim, VCPU_LP, v, reply);
        assert_eq!(TdxStatus::from_raw(rax), busy(OperandId::TD_EPOCH));
    }
    let reply = SeamcallArgs {
        r11: 2,
        ..SeamcallArgs::default()
    };
    let (rax, a) = enter_on(&sim, VCPU_LP, v, reply);
    assert_eq!((rax, a), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), 2);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn report_fatal_error_repeats_at_every_entry() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    sim.set_guest(v, |g: &mut Guest| g.report_fatal_error(0xBAD));
    let want = SeamcallArgs {
        rcx: R10_R12,
        r11: subfunction::REPORT_FATAL_ERROR,
        r12: 0xBAD,
        ..SeamcallArgs::default()
    };
    for _ in 0..3 {
        assert_eq!(enter(&sim, VCPU_LP, v), (77, want));
    }
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_triple_fault_disables_the_vcpu() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    sim.set_guest(v, |g: &mut Guest| g.triple_fault());
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!(rax, 0x4000_0001_0000_0002);
    assert_eq!(a, SeamcallArgs::default());
    assert!(matches!(
        TdExit::decode(exit_regs(rax, &a)),
        Ok(TdExit::Unrecoverable { .. })
    ));
    enter_fails(&sim, VCPU_LP, v, 0, TdxStatus::VCPU_STATE_INCORRECT);
    // VP.FLUSH works on a disabled vCPU (teardown flushes it).
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// EPT violations and TDG.MEM.PAGE.ACCEPT
// ---------------------------------------------------------------------------

#[test]
fn private_access_unmapped_then_pending_ve_then_accepted() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let gpa = 0x20_3000;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        // Unmapped: an exit, then (the host AUGed) a #VE: pending.
        let ve = g.read(gpa + 8, 8).unwrap_err();
        // The #VE handler reads VE_INFO: the same as the #VE's.
        assert_eq!(Some(&g.veinfo_get().unwrap()), ve.ve());
        tx.send(Some(ve)).unwrap();
        assert_eq!(g.accept(gpa, 0), TdxStatus::SUCCESS);
        g.write(gpa + 8, b"private!").unwrap();
        let data = g.read(gpa + 8, 8).unwrap();
        assert_eq!(data, b"private!");
        // Writing a GPA with no S-EPT page at all: an exit; the host
        // AUGs, so the retry meets a pending page (#VE); accept, write.
        tx.send(g.write(0x4000_0000, b"x").err()).unwrap();
        assert_eq!(g.accept(0x4000_0000, 0), TdxStatus::SUCCESS);
        g.write(0x4000_0000, b"x").unwrap();
        g.halt();
    });
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!((rax, a), (48, ept_exit(1, 0, gpa)));
    assert!(matches!(
        TdExit::decode(exit_regs(rax, &a)),
        Ok(TdExit::EptViolation { gpa: g, .. }) if g == gpa
    ));
    let page = td.aug(&sim, gpa, 0);
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!((rax, a), (48, ept_exit(2, 0, 0x4000_0000)));
    let ve = *rx.recv().unwrap().unwrap().ve().unwrap();
    assert_eq!((ve.reason, ve.qualification, ve.gpa), (48, 1, gpa + 8));
    // The guest's data is in the page the host gave.
    assert_eq!(sept_state(&sim, td.tdr, gpa, 0).0, SeptState::MAPPED);
    let mut buf = [0u8; 8];
    sim.peek(page.hpa().as_u64() + 8, &mut buf);
    assert_eq!(&buf, b"private!");
    // The host maps the page the guest writes.
    td.aug(&sim, 0x4000_0000, 0);
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    let ve = *rx.recv().unwrap().unwrap().ve().unwrap();
    assert_eq!((ve.qualification, ve.gpa), (2, 0x4000_0000));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_pending_page_exits_with_eeq_6_under_sept_ve_disable() {
    let sim = host();
    let mut td = runnable(&sim, SEPT_VE_DISABLE);
    let v = td.vcpus[0].tdvpr;
    let gpa = 0x5000;
    td.aug(&sim, gpa, 0);
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.read(gpa, 4)).unwrap();
        g.halt();
    });
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(1, 6, gpa)));
    // Nothing changed: the same exit again.
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(1, 6, gpa)));
    assert_eq!(sim.guest_accept(td.tdr, gpa, 0), TdxStatus::SUCCESS);
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), Ok(vec![0; 4]));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn shared_accesses_go_through_the_vmms_shared_ept() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        g.write(SHARED | 0x1234, b"shared").unwrap();
        tx.send(g.read(SHARED | 0x1234, 6)).unwrap();
        // An MMIO page: a #VE, no exit.
        tx.send(g.read(SHARED | 0x5000, 4)).unwrap();
        g.halt();
    });
    // Not mapped in the shared EPT: an exit with the shared GPA, again and
    // again until the VMM maps it.
    for _ in 0..2 {
        assert_eq!(
            enter(&sim, VCPU_LP, v),
            (48, ept_exit(2, 0, SHARED | 0x1000))
        );
    }
    let buf = page(&sim);
    sim.map_shared(
        td.tdr,
        SHARED | 0x1000,
        Some(tdx_sim::SharedMapping::Memory(buf.hpa())),
    );
    sim.map_shared(td.tdr, SHARED | 0x5000, Some(tdx_sim::SharedMapping::Mmio));
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), Ok(b"shared".to_vec()));
    let ve = *rx.recv().unwrap().unwrap_err().ve().unwrap();
    assert_eq!(
        (ve.reason, ve.qualification, ve.gpa),
        (48, 1, SHARED | 0x5000)
    );
    // The host sees what the guest wrote.
    let mut got = [0u8; 6];
    sim.peek(buf.hpa().as_u64() + 0x234, &mut got);
    assert_eq!(&got, b"shared");
    free_page(&sim, buf);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn accept_statuses_and_accept_exits() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    // 2M PENDING at 2M; 4K pages at 4M (so the 2M entry there is a table).
    td.aug(&sim, 2 * MIB, 1);
    td.aug(&sim, 4 * MIB, 0);
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        let mut r = vec![
            // 1G: refused in 1.5.01.
            g.accept(0, 2),
            // Misaligned 2M.
            g.accept(2 * MIB + 0x1000, 1),
            // Shared GPA.
            g.accept(SHARED, 0),
            // A 2M accept where the host mapped 4K pages.
            g.accept(4 * MIB, 1),
        ];
        // The 4K pages: accepted, then already accepted.
        r.push(g.accept(4 * MIB, 0));
        r.push(g.accept(4 * MIB, 0));
        tx.send(r).unwrap();
        // A 4K request inside the PENDING 2M leaf exits; the test then
        // accepts the whole 2M (through the vCPU-less helper), so the
        // retry finds an accepted 2M leaf.
        tx.send(vec![g.accept(2 * MIB + 0x5000, 0)]).unwrap();
        // A FREE 4K entry under a mapped table: an exit.
        tx.send(vec![g.accept(4 * MIB + 0x1000, 0)]).unwrap();
        g.halt();
    });
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!(
        (rax, a),
        (
            48,
            ept_exit(
                2,
                eeq_accept(0, 1, SeptState::PENDING, true),
                2 * MIB + 0x5000
            )
        )
    );
    assert_eq!(
        rx.recv().unwrap(),
        vec![
            invalid(RCX),
            invalid(RCX),
            invalid(RCX),
            TdxStatus::PAGE_SIZE_MISMATCH.with_operand(OperandId(1)),
            TdxStatus::SUCCESS,
            TdxStatus::PAGE_ALREADY_ACCEPTED,
        ]
    );
    // The host-side helper accepts the 2M page; the retried 4K accept
    // then meets a 2M accepted leaf.
    assert_eq!(sim.guest_accept(td.tdr, 2 * MIB, 1), TdxStatus::SUCCESS);
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!(
        rx.recv().unwrap(),
        vec![TdxStatus::PAGE_ALREADY_ACCEPTED.with_operand(OperandId(1))]
    );
    assert_eq!(
        (rax, a),
        (
            48,
            ept_exit(
                2,
                eeq_accept(0, 0, SeptState::FREE, false),
                4 * MIB + 0x1000
            )
        )
    );
    // The host AUGs it; the retry accepts.
    td.aug(&sim, 4 * MIB + 0x1000, 0);
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), vec![TdxStatus::SUCCESS]);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn accept_meets_the_host_on_the_entry_lock() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    td.aug(&sim, 0x7000, 0);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.accept(0x7000, 0)).unwrap();
        go_rx.recv().unwrap();
        tx.send(g.accept(0x7000, 0)).unwrap();
        g.halt();
    });
    let lock = ModuleLock::SeptEntry {
        tdr: td.tdr,
        gpa: Gpa::new(0x7000),
        level: TdxLevel::L4K,
    };
    let held = sim.hold(lock, LockMode::Exclusive).unwrap();
    // The guest's first ACCEPT meets the host's lock (BUSY, no exit); the
    // second, after the host let go, succeeds.
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        assert_eq!(rx.recv().unwrap(), busy(RCX));
        drop(held);
        go_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), TdxStatus::SUCCESS);
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// vCPUs in the guest: TLB epochs, kicks, concurrent host leaves
// ---------------------------------------------------------------------------

/// A guest that tells the test it is in the guest, waits for the test's
/// word, then makes one operation (a read of a mapped page) and halts.
fn parked(sim: &Simulator, v: Pfn, gpa: u64) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (in_tx, in_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    sim.set_guest(v, move |g: &mut Guest| {
        assert_eq!(g.accept(gpa, 0), TdxStatus::SUCCESS);
        in_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        g.read(gpa, 1).unwrap();
        g.halt();
    });
    (in_rx, go_tx)
}

#[test]
fn a_kick_that_does_nothing_is_caught_by_tlb_tracking() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let victim = 0x9000;
    td.aug(&sim, 0x8000, 0);
    td.aug(&sim, victim, 0);
    let (in_rx, go) = parked(&sim, v, 0x8000);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        in_rx.recv().unwrap();
        assert!(sim.in_guest(v));
        // The host zaps a page while the vCPU is in the guest.
        ok("BLOCK", range_block(&sim, info(victim, 0), td.tdr).status);
        ok("TRACK", track(&sim, td.tdr));
        // A "kick" that made nobody exit: REMOVE sees the old epoch busy.
        let c = page_remove(&sim, info(victim, 0), td.tdr);
        assert_eq!(c.status, e(TdxStatus::TLB_TRACKING_NOT_DONE, RCX));
        assert_eq!(
            track(&sim, td.tdr),
            TdxStatus::PREVIOUS_TLB_EPOCH_BUSY,
            "a second TRACK before the vCPU left"
        );
        // Also while the vCPU is in the guest: its flush and VPFLUSHDONE
        // meet the locks VP.ENTER holds, and a second entry its state.
        assert_eq!(vp_flush(&sim, v), busy(RCX));
        assert_eq!(mng_vpflushdone(&sim, td.tdr), busy(RCX));
        enter_fails(&sim, 2, v, 0, TdxStatus::VCPU_STATE_INCORRECT);
        // The real kick: the guest leaves at its next operation.
        assert!(sim.kick(v));
        go.send(()).unwrap();
        let (rax, a) = h.join().unwrap();
        assert_eq!((rax, a), (1, async_regs(0, 0, 0, 0x8000_00FD)));
        assert!(matches!(
            TdExit::decode(exit_regs(rax, &a)),
            Ok(TdExit::Async {
                reason: ExitReason::EXTERNAL_INTERRUPT,
                ..
            })
        ));
    });
    assert!(!sim.in_guest(v));
    assert!(!sim.kick(v), "a vCPU outside the guest is not kicked");
    let c = page_remove(&sim, info(victim, 0), td.tdr);
    ok("PAGE.REMOVE", c.status);
    ok("TRACK", track(&sim, td.tdr));
    // The interrupted read runs after the next entry.
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn a_vcpu_that_entered_after_the_track_does_not_block_it() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let victim = 0x9000;
    td.aug(&sim, 0x8000, 0);
    td.aug(&sim, victim, 0);
    ok("BLOCK", range_block(&sim, info(victim, 0), td.tdr).status);
    ok("TRACK", track(&sim, td.tdr));
    let (in_rx, go) = parked(&sim, v, 0x8000);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        in_rx.recv().unwrap();
        ok(
            "PAGE.REMOVE",
            page_remove(&sim, info(victim, 0), td.tdr).status,
        );
        go.send(()).unwrap();
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// Association and migration
// ---------------------------------------------------------------------------

#[test]
fn migration_needs_a_flush_on_the_old_cpu() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    // Without the flush: every entry on LP 3 is refused.
    for _ in 0..2 {
        enter_fails(&sim, 3, v, 0, TdxStatus::VCPU_ASSOCIATED);
    }
    assert_eq!(
        on(&sim, 3, || vp_flush(&sim, v)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    // VPFLUSHDONE sees the association.
    assert_eq!(mng_vpflushdone(&sim, td.tdr), TdxStatus::FLUSHVP_NOT_DONE);
    // With the flush on the old LP, the vCPU enters on the new one.
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, v)));
    assert_eq!(enter(&sim, 3, v), (77, halt_regs()));
    enter_fails(&sim, VCPU_LP, v, 0, TdxStatus::VCPU_ASSOCIATED);
    // Teardown must flush where it last ran.
    assert_eq!(
        on(&sim, VCPU_LP, || vp_flush(&sim, v)),
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    td.vcpus[0].lp = Some(3);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn two_threads_entering_one_vcpu() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    td.aug(&sim, 0x8000, 0);
    let (in_rx, go) = parked(&sim, v, 0x8000);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        in_rx.recv().unwrap();
        // The second thread, on another LP, while the first is in the guest.
        let second = s.spawn(|| {
            on(&sim, 2, || {
                let mut a = marked();
                (enter_raw(&sim, 0, v, 0, &mut a), a)
            })
        });
        let (rax, _) = second.join().unwrap();
        assert_eq!(TdxStatus::from_raw(rax), TdxStatus::VCPU_STATE_INCORRECT);
        go.send(()).unwrap();
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The simulated TSC: rollback and the host-priority timeout
// ---------------------------------------------------------------------------

#[test]
fn an_entry_with_the_tsc_before_the_last_exit_is_refused() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    sim.set_tsc(1000);
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    sim.set_tsc(999);
    enter_fails(&sim, VCPU_LP, v, 0, TdxStatus::TSC_ROLLBACK);
    sim.set_tsc(1000);
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(sim.tsc(), 1000);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn accept_against_a_host_priority_mark_times_out_to_the_host() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let gpa = 0x7000;
    td.aug(&sim, gpa, 0);
    let lock = ModuleLock::SeptEntry {
        tdr: td.tdr,
        gpa: Gpa::new(gpa),
        level: TdxLevel::L4K,
    };
    // A host leaf fails on the entry while a guest holds it: the entry is
    // marked for the host.
    {
        let _g = sim
            .hold_as(lock, LockMode::Exclusive, tdx_sim::LockSide::Guest)
            .unwrap();
        let c = range_block(&sim, info(gpa, 0), td.tdr);
        assert_eq!(c.status, busy(RCX));
    }
    assert!(sim.host_priority(lock));
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    sim.set_guest(v, move |g: &mut Guest| {
        loop {
            let s = g.accept(gpa, 0);
            tx.send(s).unwrap();
            if s == TdxStatus::SUCCESS {
                break;
            }
            go_rx.recv().unwrap();
        }
        g.halt();
    });
    sim.set_tsc(10);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        // The guest sees BUSY (not BUSY_HOST_PRIORITY); the timer starts.
        assert_eq!(rx.recv().unwrap(), busy(RCX));
        sim.set_tsc(10 + tdx_sim::guest::HP_LOCK_TIMEOUT - 1);
        go_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), busy(RCX), "not timed out yet");
        sim.set_tsc(10 + tdx_sim::guest::HP_LOCK_TIMEOUT);
        go_tx.send(()).unwrap();
        // Timed out: the trap-like exit, every register zero.
        let (rax, a) = h.join().unwrap();
        assert_eq!((rax, a), (0x9000_0205_0000_0000, SeamcallArgs::default()));
        assert!(matches!(
            TdExit::decode(exit_regs(rax, &a)),
            Ok(TdExit::HostPriorityBusyTimeout)
        ));
    });
    // The host finishes on the entry (any leaf that takes its lock clears
    // the mark), then enters with the host-recoverability hint, which the
    // guest's BUSY status carries in bit 60.
    assert_eq!(sept_state(&sim, td.tdr, gpa, 0).0, SeptState::PENDING);
    assert!(!sim.host_priority(lock));
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            on(&sim, VCPU_LP, || {
                let mut a = SeamcallArgs::default();
                (enter_raw(&sim, 0, v, 1 << 52, &mut a), a)
            })
        });
        assert_eq!(
            rx.recv().unwrap(),
            TdxStatus::from_raw(busy(RCX).raw() | 1 << 60)
        );
        go_tx.send(()).unwrap();
        assert_eq!(rx.recv().unwrap(), TdxStatus::SUCCESS);
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// The zero-step filter
// ---------------------------------------------------------------------------

#[test]
fn a_gpa_that_keeps_faulting_at_one_rip_is_caught_by_the_zero_step_filter() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let gpa = 0x30_0000;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.read(gpa, 4)).unwrap();
        g.halt();
    });
    // Six faults count; the seventh lists the GPA; all are real exits.
    for _ in 0..7 {
        assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(1, 0, gpa)));
    }
    // From now on each entry takes the S-EPT tree lock exclusively first.
    {
        let _t = sim
            .hold(ModuleLock::SeptTree(td.tdr), LockMode::Shared)
            .unwrap();
        enter_fails(&sim, VCPU_LP, v, 0, busy(OperandId::SEPT_TREE));
    }
    // The listed GPA still faults: an emulated exit (a write, whatever
    // the access was), the guest not entered; registers other than RCX
    // and R8 zero.
    let (rax, a) = on(&sim, VCPU_LP, || {
        let mut a = marked();
        (enter_raw(&sim, 0, v, 0, &mut a), a)
    });
    assert_eq!((rax, a), (48, ept_exit(2, 0, gpa)));
    // Pending is not enough (it does not translate either).
    td.aug(&sim, gpa, 0);
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(2, 0, gpa)));
    // Mapped (accepted): the guest runs again and the read completes.
    ok("accept", sim.guest_accept(td.tdr, gpa, 0));
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), Ok(vec![0; 4]));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn progress_before_any_exit_resets_the_zero_step_count() {
    // The module runs `vmexit_stepping_filter` on every VM exit
    // (`tdx_td_dispatcher.c`): RIP moved since the entry resets the
    // EPT-violation count, not only at the next EPT violation. Five faults
    // at one RIP, then progress ending in a TDG.VP.VMCALL exit: the faults
    // at the next GPA count from zero again (six real exits, the seventh
    // lists it), where a count carried over would list it at the second.
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let (first, second) = (0x30_0000, 0x31_0000);
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.read(first, 4)).unwrap();
        g.vmcall(R10_R12, VmcallRegs::default()).unwrap();
        tx.send(g.read(second, 4)).unwrap();
        g.halt();
    });
    for _ in 0..5 {
        assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(1, 0, first)));
    }
    td.aug(&sim, first, 0);
    ok("accept", sim.guest_accept(td.tdr, first, 0));
    assert_eq!(enter(&sim, VCPU_LP, v).0, 77);
    assert_eq!(rx.recv().unwrap(), Ok(vec![0; 4]));
    // Real exits (the read's qualification), not the filter's emulated
    // write exit.
    for i in 0..7 {
        assert_eq!(
            enter(&sim, VCPU_LP, v),
            (48, ept_exit(1, 0, second)),
            "fault {i} at the second GPA"
        );
    }
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(2, 0, second)));
    td.aug(&sim, second, 0);
    ok("accept", sim.guest_accept(td.tdr, second, 0));
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    assert_eq!(rx.recv().unwrap(), Ok(vec![0; 4]));
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn two_entries_of_an_unassociated_vcpu_race_on_the_association() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    ok("VP.FLUSH", on(&sim, VCPU_LP, || vp_flush(&sim, v)));
    // The first entry, on LP 2, stops after all its checks: it has
    // associated the vCPU and holds the epoch lock shared.
    let pause = sim.pause_next_on(Leaf::VP_ENTER, 2);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, 2, v));
        assert_eq!(pause.wait_entered(), None);
        // The second, on LP 3, passes the state check (the vCPU is still
        // READY) and loses the compare-exchange.
        enter_fails(&sim, 3, v, 0, TdxStatus::VCPU_ASSOCIATED);
        // TRACK meets the epoch lock; VP.FLUSH the TDVPR.
        assert_eq!(track(&sim, td.tdr), busy(OperandId::TD_EPOCH));
        assert_eq!(on(&sim, 3, || vp_flush(&sim, v)), busy(RCX));
        pause.release();
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    td.vcpus[0].lp = Some(2);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// A fatal TD
// ---------------------------------------------------------------------------

#[test]
fn a_fatal_td_event_stops_every_vcpu_of_the_td() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::Initialized);
    let a_i = td.add_vcpu(&sim, VCPU_LP);
    let b_i = td.add_vcpu(&sim, 2);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let (va, vb) = (td.vcpus[a_i].tdvpr, td.vcpus[b_i].tdvpr);
    td.aug(&sim, 0x8000, 0);
    sim.set_guest(va, |g: &mut Guest| g.fatal_td_event());
    let (in_rx, go) = parked(&sim, vb, 0x8000);
    std::thread::scope(|s| {
        let hb = s.spawn(|| enter(&sim, 2, vb));
        in_rx.recv().unwrap();
        // vCPU A makes the TD fatal.
        let (rax, a) = enter(&sim, VCPU_LP, va);
        assert_eq!((rax, a), (0x6000_0002_0000_004B, async_regs(1, 0, 0, 0)));
        assert!(matches!(
            TdExit::decode(exit_regs(rax, &a)),
            Ok(TdExit::Unrecoverable { .. })
        ));
        // vCPU B, in the guest meanwhile: its read of a mapped page makes
        // no VM exit; its HLT TDVMCALL does, and is NON_ACCESSIBLE.
        go.send(()).unwrap();
        let (rax, a) = hb.join().unwrap();
        assert_eq!((rax, a), (0x6000_0005_0000_004D, SeamcallArgs::default()));
    });
    enter_fails(&sim, VCPU_LP, va, 0, TdxStatus::TD_FATAL);
    enter_fails(&sim, 2, vb, 0, TdxStatus::TD_FATAL);
    // The host leaves that check the TD's state see it too.
    assert_eq!(track(&sim, td.tdr), TdxStatus::TD_FATAL);
    // Teardown still works (VP.FLUSH checks no state).
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_info_tells_the_guest_its_td() {
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(0, SEPT_VE_DISABLE);
    td.init(&sim, &p);
    td.add_vcpu(&sim, VCPU_LP);
    let i = td.add_vcpu(&sim, 2);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let v = td.vcpus[i].tdvpr;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.vp_info()).unwrap();
        g.halt();
    });
    assert_eq!(enter(&sim, 2, v), (77, halt_regs()));
    assert_eq!(
        rx.recv().unwrap(),
        tdx_sim::VpInfo {
            rcx: 48,
            rdx: SEPT_VE_DISABLE,
            r8: 2 | 4 << 32,
            r9: 1,
            r10: 1,
            r11: 0,
        }
    );
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

// ---------------------------------------------------------------------------
// TDG.MR.RTMR.EXTEND and TDG.MR.REPORT
// ---------------------------------------------------------------------------

#[test]
fn the_guests_tdreport_has_the_tds_measurements() {
    use sha2::{Digest, Sha384};
    let sim = host();
    let mut td = Td::build(&sim, Stage::TdcsAdded);
    let mut p = Params::new();
    p.u64(0, SEPT_VE_DISABLE)
        .u8(80, 0xC1)
        .u8(128, 0x0E)
        .u8(176, 0x0C);
    td.init(&sim, &p);
    td.add_vcpu(&sim, VCPU_LP);
    ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
    let v = td.vcpus[0].tdvpr;
    td.aug(&sim, 0x1000, 0);
    td.aug(&sim, 0x2000, 0);
    let (tx, rx) = mpsc::channel();
    let (rep_tx, rep_rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        assert_eq!(g.accept(0x1000, 0), TdxStatus::SUCCESS);
        assert_eq!(g.accept(0x2000, 0), TdxStatus::SUCCESS);
        g.write(0x2000, &[0x5A; 64]).unwrap();
        g.write(0x2040, &[0xE7; 48]).unwrap();
        let refused = vec![
            g.mr_report(0x1200, 0x2000, 0),
            g.mr_report(0x1000, 0x2020, 0),
            g.mr_report(0x1000, 0x2000, 1),
            g.rtmr_extend(0x2040, 4),
            g.rtmr_extend(0x2020, 2),
            g.rtmr_extend(SHARED | 0x2040, 2),
        ];
        tx.send(refused).unwrap();
        assert_eq!(g.rtmr_extend(0x2040, 2), Ok(TdxStatus::SUCCESS));
        assert_eq!(g.mr_report(0x1000, 0x2000, 0), Ok(TdxStatus::SUCCESS));
        tx.send(vec![]).unwrap();
        let r = g.read(0x1000, 1024).unwrap();
        // The report to a GPA the host has not mapped: an exit, then the
        // call again.
        assert_eq!(g.mr_report(0x40_0000, 0x2000, 0), Ok(TdxStatus::SUCCESS));
        let again = g.read(0x40_0000, 1024).unwrap();
        assert_eq!(again[512..], r[512..]);
        rep_tx.send(r).unwrap();
        g.halt();
    });
    // The exit of the unmapped report page (read and write missing).
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(3, 0, 0x40_0000)));
    let refused = rx.recv().unwrap();
    assert_eq!(
        refused,
        vec![
            Ok(invalid(RCX)),
            Ok(invalid(OperandId::RDX)),
            Ok(invalid(OperandId::R8)),
            Ok(invalid(OperandId::RDX)),
            Ok(invalid(RCX)),
            Ok(invalid(RCX)),
        ]
    );
    assert!(rx.recv().unwrap().is_empty());
    td.aug(&sim, 0x40_0000, 0);
    // Pending, with SEPT_VE_DISABLE: an exit with EEQ type 6.
    assert_eq!(enter(&sim, VCPU_LP, v), (48, ept_exit(3, 6, 0x40_0000)));
    ok("accept", sim.guest_accept(td.tdr, 0x40_0000, 0));
    assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
    let r = rep_rx.recv().unwrap();
    assert_eq!(r[..4], [0x81, 0, 0, 0], "REPORTTYPE");
    assert_eq!(r[128..192], [0x5A; 64], "REPORTDATA");
    assert_eq!(r[512..520], SEPT_VE_DISABLE.to_le_bytes(), "ATTRIBUTES");
    assert_eq!(r[520..528], 3u64.to_le_bytes(), "XFAM");
    assert_eq!(r[528..576], sim.mrtd(td.tdr).unwrap(), "MRTD");
    assert_eq!((r[576], r[624], r[672]), (0xC1, 0x0E, 0x0C));
    let mut rtmr2 = Sha384::new();
    rtmr2.update([0u8; 48]);
    rtmr2.update([0xE7u8; 48]);
    assert_eq!(r[720..816], [0; 96], "RTMR0-1");
    assert_eq!(r[816..864], rtmr2.finalize()[..], "RTMR2");
    assert_eq!(r[864..1024], [0; 160], "RTMR3, SERVTD_HASH, reserved");
    assert_eq!(
        r[80..128],
        Sha384::digest(&r[512..1024])[..],
        "TEE_INFO_HASH"
    );
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn vp_rd_wr_check_the_vcpu_state_before_the_association() {
    use tdx_types::metadata::field;
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    td.aug(&sim, 0x8000, 0);
    let index = field::VP_VCPU_INDEX.into_raw();
    let nmi = field::PEND_NMI.into_raw();
    let rd = |lp| {
        on(&sim, lp, || {
            raw(
                &sim,
                Leaf::VP_RD.v0(),
                [v.hpa().as_u64(), index, 0, 0, 0, 0],
            )
            .0
        })
    };
    let wr = |lp| {
        on(&sim, lp, || {
            raw(&sim, Leaf::VP_WR.v0(), [v.hpa().as_u64(), nmi, 1, 1, 0, 0]).0
        })
    };
    let (in_rx, go) = parked(&sim, v, 0x8000);
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        in_rx.recv().unwrap();
        // In the guest on LP 1: ACTIVE, refused before the association.
        assert_eq!(rd(2), TdxStatus::VCPU_STATE_INCORRECT);
        assert_eq!(wr(2), TdxStatus::VCPU_STATE_INCORRECT);
        go.send(()).unwrap();
        assert_eq!(h.join().unwrap(), (77, halt_regs()));
    });
    // Out of the guest: associated with LP 1.
    assert_eq!(rd(2), TdxStatus::VCPU_ASSOCIATED);
    ok("VP.RD", rd(VCPU_LP));
    td.teardown(&sim);
    sim.check_invariants().unwrap();

    // A disabled vCPU can be read, not written.
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    sim.set_guest(v, |g: &mut Guest| g.triple_fault());
    assert_eq!(enter(&sim, VCPU_LP, v).0, 0x4000_0001_0000_0002);
    let rd = on(&sim, VCPU_LP, || {
        raw(
            &sim,
            Leaf::VP_RD.v0(),
            [v.hpa().as_u64(), index, 0, 0, 0, 0],
        )
        .0
    });
    let wr = on(&sim, VCPU_LP, || {
        raw(&sim, Leaf::VP_WR.v0(), [v.hpa().as_u64(), nmi, 1, 1, 0, 0]).0
    });
    ok("VP.RD of a disabled vCPU", rd);
    assert_eq!(wr, TdxStatus::VCPU_STATE_INCORRECT);
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn rbp_may_be_exposed_unless_no_rbp_mod() {
    for (flags, want) in [(0u64, true), (1 << 2, false)] {
        let sim = host();
        let mut td = Td::build(&sim, Stage::TdcsAdded);
        let mut p = Params::new();
        p.u64(32, flags);
        td.init(&sim, &p);
        td.add_vcpu(&sim, VCPU_LP);
        ok("MR.FINALIZE", mr_finalize(&sim, td.tdr));
        let v = td.vcpus[0].tdvpr;
        let (tx, rx) = mpsc::channel();
        sim.set_guest(v, move |g: &mut Guest| {
            tx.send(g.vmcall(R10_R12 | 1 << 5, VmcallRegs::default()))
                .unwrap();
            g.halt();
        });
        let (rax, a) = enter(&sim, VCPU_LP, v);
        if want {
            // RBP is not modelled: the exit shows the control only.
            assert_eq!(
                (rax, a),
                (
                    77,
                    SeamcallArgs {
                        rcx: R10_R12 | 1 << 5,
                        ..SeamcallArgs::default()
                    }
                )
            );
            assert_eq!(enter(&sim, VCPU_LP, v), (77, halt_regs()));
            assert!(rx.recv().unwrap().is_ok());
        } else {
            assert_eq!((rax, a), (77, halt_regs()));
            assert_eq!(rx.recv().unwrap(), Err(invalid(RCX)));
        }
        td.teardown(&sim);
        sim.check_invariants().unwrap();
    }
}

#[test]
fn ghci_calls_decode_as_the_library_decodes_them() {
    let sim = host();
    let td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    let (tx, rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        tx.send(g.tdvmcall(subfunction::MAP_GPA, [SHARED | 0x20_0000, 0x4000, 0, 0]))
            .unwrap();
        g.halt();
    });
    let (rax, a) = enter(&sim, VCPU_LP, v);
    assert_eq!(rax, 77);
    let Ok(TdExit::Vmcall { control }) = TdExit::decode(exit_regs(rax, &a)) else {
        panic!("{a:?}");
    };
    assert_eq!(control.gprs(), 0xFC00);
    let regs = VmcallRegs {
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
    };
    assert_eq!(
        tdx_types::exit::VmcallRequest::decode(control, &regs),
        Ok(tdx_types::exit::VmcallRequest::MapGpa {
            gpa: SHARED | 0x20_0000,
            size: 0x4000
        })
    );
    // RETRY with the GPA to go on from in R11.
    let reply = SeamcallArgs {
        r10: 1,
        r11: SHARED | 0x20_2000,
        ..SeamcallArgs::default()
    };
    assert_eq!(enter_on(&sim, VCPU_LP, v, reply), (77, halt_regs()));
    assert_eq!(
        rx.recv().unwrap(),
        (
            tdx_types::exit::VmcallStatus::RETRY,
            // Every exposed register is the host's: R12-R15 too.
            [SHARED | 0x20_2000, 0, 0, 0, 0]
        )
    );
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}

#[test]
fn work_sent_to_the_cpu_of_a_running_guest_makes_it_exit() {
    let sim = host();
    let mut td = runnable(&sim, 0);
    let v = td.vcpus[0].tdvpr;
    td.aug(&sim, 0x8000, 0);
    let (in_tx, in_rx) = mpsc::channel();
    sim.set_guest(v, move |g: &mut Guest| {
        assert_eq!(g.accept(0x8000, 0), TdxStatus::SUCCESS);
        in_tx.send(()).unwrap();
        // Busy forever: only an interrupt makes this vCPU exit.
        loop {
            g.read(0x8000, 1).unwrap();
        }
    });
    std::thread::scope(|s| {
        let h = s.spawn(|| enter(&sim, VCPU_LP, v));
        in_rx.recv().unwrap();
        // A SEAMCALL on the guest's LP (an on_cpu "IPI") kicks it, then
        // runs once the LP is free.
        let tdr = td.tdr;
        assert_eq!(on(&sim, VCPU_LP, || track(&sim, tdr)), TdxStatus::SUCCESS);
        assert_eq!(h.join().unwrap(), (1, async_regs(0, 0, 0, 0x8000_00FD)));
    });
    td.teardown(&sim);
    sim.check_invariants().unwrap();
}
