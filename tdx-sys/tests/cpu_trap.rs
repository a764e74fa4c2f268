//! The `Cpu` backend's machine code, proven end to end without TDX hardware.
//!
//! Outside VMX root operation the SEAMCALL instruction raises #UD (SIGILL
//! in a Linux process; #GP, SIGSEGV, is accepted too). This test installs a
//! signal handler that plays the TDX module: it checks that the faulting
//! instruction is `66 0F 01 CF`, records every general-purpose register the
//! instruction saw, writes the outputs a module would write, scribbles over
//! every register the module is allowed to change (and over RBP, which the
//! backend must protect), and resumes after the instruction. So the test
//! proves, for the real code the compiler emitted:
//!
//! - the opcode, with the leaf and version in RAX;
//! - the register assignment of the raw leaf functions called below
//!   (inputs, and outputs back into their typed results); every other leaf's
//!   layout is checked against a recording backend (`leaf_regs.rs`,
//!   `dpamt_regs.rs`) or by the simulator's tests, which run the leaves;
//! - all three register shapes, including the 13-register TDH.VP.ENTER
//!   entry that has to move RBX through memory;
//! - VMfailInvalid (CF = 1) becoming `TDX_SEAMCALL_VMFAILINVALID`, and
//!   VMfailValid (ZF = 1, RAX unchanged) becoming
//!   `TDX_SEAMCALL_VMFAILVALID` rather than the leaf number read as a status;
//! - that values the caller keeps across the call survive a module that
//!   clobbers what the ABI lets it clobber (this part is strongest in a
//!   release build, where those values live in registers; CI runs both).

#![cfg(all(target_arch = "x86_64", target_os = "linux", feature = "cpu"))]
// UNSAFETY: the test installs a signal handler and edits the interrupted
// register file through the `ucontext_t` the kernel hands it.
#![allow(unsafe_code)]

use std::{
    hint::black_box,
    sync::{
        Mutex, Once,
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    },
};

use tdx_sys::{Cpu, RegShape, Seamcall, SeamcallArgs, leaf};
use tdx_types::{
    Gpa, Hpa, Leaf, Pfn, TdxStatus,
    metadata::{MdFieldId, field},
    regs::{HpaListInfo, KeyedPa, PageInfo, SysConfigKeyId, TdrAndFlags},
};

// Register indices in our record, in `SeamcallArgs` order plus RAX and RBP.
const RCX: usize = 0;
const RDX: usize = 1;
const R8: usize = 2;
const R9: usize = 3;
const R10: usize = 4;
const R11: usize = 5;
const R12: usize = 6;
const R15: usize = 9;
const RBX: usize = 10;
const RDI: usize = 11;
const RSI: usize = 12;
const RAX: usize = 13;
const RBP: usize = 14;
const NREGS: usize = 15;

fn greg(i: usize) -> usize {
    (match i {
        RCX => libc::REG_RCX,
        RDX => libc::REG_RDX,
        R8 => libc::REG_R8,
        R9 => libc::REG_R9,
        R10 => libc::REG_R10,
        R11 => libc::REG_R11,
        6 => libc::REG_R12,
        7 => libc::REG_R13,
        8 => libc::REG_R14,
        R15 => libc::REG_R15,
        RBX => libc::REG_RBX,
        RDI => libc::REG_RDI,
        RSI => libc::REG_RSI,
        RAX => libc::REG_RAX,
        RBP => libc::REG_RBP,
        _ => unreachable!(),
    }) as usize
}

/// What the fake module does on the next trap.
#[derive(Clone, Copy)]
enum Mode {
    /// Return `status`; write outputs into RCX..R11 (input ^ OUT_XOR);
    /// scribble over RSI, RDI and RBP.
    Ret,
    /// Return `status`; scribble over RCX..R11, RSI, RDI and RBP.
    NoOutputs,
    /// Return `status`; every one of the 13 registers becomes input ^
    /// OUT_XOR; scribble over RBP.
    SavedRet,
    /// Set CF and leave every register alone (VMfailInvalid).
    VmFail,
    /// Set ZF and leave every register alone (VMfailValid).
    VmFailValid,
}

const OUT_XOR: u64 = 0x5a5a_0000_0000_5a5a;
const SCRIBBLE: u64 = 0xdead_beef_dead_beef;

static SEEN: [AtomicU64; NREGS] = [const { AtomicU64::new(0) }; NREGS];
static TRAPS: AtomicU64 = AtomicU64::new(0);
static OPCODE_OK: AtomicBool = AtomicBool::new(false);
static MODE: AtomicU64 = AtomicU64::new(0);
static STATUS: AtomicU64 = AtomicU64::new(0);
static LOCK: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

extern "C" fn fake_module(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid, exclusive `ucontext_t` for the
    // interrupted thread to an SA_SIGINFO handler; nothing else touches it
    // while the handler runs.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let g = &mut uc.uc_mcontext.gregs;
    let rip = g[libc::REG_RIP as usize] as *const u8;
    // SAFETY: RIP points at the instruction that faulted, which is in the
    // test binary's mapped, readable text; SEAMCALL is 4 bytes long.
    let bytes = unsafe { core::ptr::read_unaligned(rip.cast::<[u8; 4]>()) };
    OPCODE_OK.store(bytes == [0x66, 0x0f, 0x01, 0xcf], SeqCst);
    for (i, slot) in SEEN.iter().enumerate() {
        slot.store(g[greg(i)] as u64, SeqCst);
    }
    TRAPS.fetch_add(1, SeqCst);
    let mode = match MODE.load(SeqCst) {
        0 => Mode::Ret,
        1 => Mode::NoOutputs,
        2 => Mode::SavedRet,
        3 => Mode::VmFail,
        _ => Mode::VmFailValid,
    };
    let status = STATUS.load(SeqCst) as i64;
    // SEAMRET is VMsucceed: CF, PF, AF, ZF, SF and OF all clear. VMfailInvalid
    // sets CF and VMfailValid sets ZF, clearing the others (Intel SDM,
    // "Conventions" of the VMX instruction reference).
    const ARITH: i64 = 0x8d5;
    const CF: i64 = 0x1;
    const ZF: i64 = 0x40;
    let flags = &mut g[libc::REG_EFL as usize];
    *flags &= !ARITH;
    match mode {
        Mode::VmFail => *flags |= CF,
        Mode::VmFailValid => *flags |= ZF,
        _ => {}
    }
    match mode {
        Mode::Ret => {
            for r in RCX..=R11 {
                g[greg(r)] ^= OUT_XOR as i64;
            }
            g[greg(RSI)] = SCRIBBLE as i64;
            g[greg(RDI)] = SCRIBBLE as i64;
        }
        Mode::NoOutputs => {
            for r in [RCX, RDX, R8, R9, R10, R11, RSI, RDI] {
                g[greg(r)] = SCRIBBLE as i64;
            }
        }
        Mode::SavedRet => {
            for r in RCX..=RSI {
                g[greg(r)] ^= OUT_XOR as i64;
            }
        }
        Mode::VmFail | Mode::VmFailValid => {}
    }
    if !matches!(mode, Mode::VmFail | Mode::VmFailValid) {
        g[greg(RAX)] = status;
        g[greg(RBP)] = SCRIBBLE as i64;
        // Vector state too (TDH.VP.ENTER switches to the TD's): all 16 XMM
        // registers, so a caller of the win64 ABI (XMM6-15 callee-saved)
        // sees the difference if a function does not save them.
        let fp = uc.uc_mcontext.fpregs;
        if !fp.is_null() {
            // SAFETY: a non-null `fpregs` points into the signal frame's
            // saved FPU state, valid and exclusive while the handler runs;
            // the kernel restores the XMM registers from it on return.
            let xmm = unsafe { &mut (*fp)._xmm };
            for x in xmm.iter_mut() {
                x.element = [0xdead_beef; 4];
            }
        }
    }
    g[libc::REG_RIP as usize] += 4;
}

fn install() {
    INSTALL.call_once(|| {
        for sig in [libc::SIGILL, libc::SIGSEGV] {
            // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask"
            // value; we then set a handler with the SA_SIGINFO signature.
            let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
            sa.sa_sigaction = fake_module as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            // SAFETY: `sa` is a valid action; the old action is not needed.
            let rc = unsafe { libc::sigaction(sig, &sa, core::ptr::null_mut()) };
            assert_eq!(rc, 0, "sigaction failed");
        }
    });
}

/// Runs `f` with the fake module in `mode`, returning `f`'s result and the
/// registers the instruction saw.
fn with_module<R>(mode: Mode, status: TdxStatus, f: impl FnOnce(&Cpu) -> R) -> (R, [u64; NREGS]) {
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install();
    MODE.store(
        match mode {
            Mode::Ret => 0,
            Mode::NoOutputs => 1,
            Mode::SavedRet => 2,
            Mode::VmFail => 3,
            Mode::VmFailValid => 4,
        },
        SeqCst,
    );
    STATUS.store(status.raw(), SeqCst);
    OPCODE_OK.store(false, SeqCst);
    let before = TRAPS.load(SeqCst);
    // SAFETY: every SEAMCALL in `f` raises #UD in this process, which the
    // handler installed above serves and resumes 4 bytes later with RAX set
    // and CF cleared (or set, for VMfailInvalid): term 2 of `Cpu::new`.
    let cpu = unsafe { Cpu::new() };
    let r = f(&cpu);
    assert_eq!(
        TRAPS.load(SeqCst),
        before + 1,
        "exactly one SEAMCALL expected"
    );
    assert!(
        OPCODE_OK.load(SeqCst),
        "the trapping instruction is not 66 0F 01 CF"
    );
    let regs = core::array::from_fn(|i| SEEN[i].load(SeqCst));
    (r, regs)
}

fn pfn(v: u64) -> Pfn {
    Pfn::new(v)
}

#[test]
fn no_output_leaf_registers() {
    let (st, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: the "module" is the test's signal handler; no memory moves.
        unsafe { leaf::tdh_mng_addcx(c, pfn(0x1234), pfn(0x5678)) }
    });
    assert_eq!(st, TdxStatus::SUCCESS);
    assert_eq!(r[RAX], 1);
    assert_eq!(r[RCX], 0x123_4000);
    assert_eq!(r[RDX], 0x567_8000);

    let (st, r) = with_module(Mode::NoOutputs, TdxStatus::KEY_CONFIGURED, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_mng_create(c, pfn(0x42), 33) }
    });
    assert_eq!(st, TdxStatus::KEY_CONFIGURED);
    assert_eq!((r[RAX], r[RCX], r[RDX]), (9, 0x42_000, 33));

    // Version 1 in RAX bits 23:16, x2APIC ID in R8.
    let (_, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_vp_init(c, pfn(0x99), 0xfeed, 7) }
    });
    assert_eq!(
        (r[RAX], r[RCX], r[RDX], r[R8]),
        (0x1_0016, 0x99_000, 0xfeed, 7)
    );

    let keyid = SysConfigKeyId::new().with_hkid(32);
    let (_, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_sys_config(c, Hpa::new(0x10_0000), 3, keyid) }
    });
    assert_eq!((r[RAX], r[RCX], r[RDX], r[R8]), (45, 0x10_0000, 3, 32));

    let (_, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe {
            leaf::tdh_sys_config_v1(
                c,
                Hpa::new(0x20_0000),
                1,
                keyid,
                tdx_types::metadata::TdxFeatures0::from_bits(1 << 39),
                77,
            )
        }
    });
    assert_eq!(
        (r[RAX], r[RCX], r[RDX], r[R8], r[R9], r[R11]),
        (0x1_002D, 0x20_0000, 1, 32, 1 << 39, 77)
    );

    let keyed = KeyedPa::try_new(Hpa::new(0x7000), 5, 46).unwrap();
    let (_, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_page_wbinvd(c, keyed) }
    });
    assert_eq!((r[RAX], r[RCX]), (41, (5 << 46) | 0x7000));

    let (_, r) = with_module(Mode::NoOutputs, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_cache_wb(c, true) }
    });
    assert_eq!((r[RAX], r[RCX]), (40, 1));
}

#[test]
fn ret_leaf_registers_and_outputs() {
    // TDH.SYS.RD: RDX in; R8 (value) and RDX (next field) out.
    let (c, r) = with_module(Mode::Ret, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_sys_rd(c, field::MAX_TDMRS) }
    });
    assert_eq!((r[RAX], r[RDX]), (34, field::MAX_TDMRS.into_raw()));
    assert_eq!(c.status, TdxStatus::SUCCESS);
    // The fake module answers input ^ OUT_XOR in every output register.
    assert_eq!(c.out.value, OUT_XOR);
    assert_eq!(
        c.out.next,
        MdFieldId::from_raw(field::MAX_TDMRS.into_raw() ^ OUT_XOR)
    );

    // TDH.MEM.PAGE.ADD: RCX = GPA, RDX = TDR, R8 = page, R9 = source.
    let info = PageInfo::for_page::<tdx_types::Size4K>(Gpa::new(0x8000_0000)).unwrap();
    let (c, r) = with_module(Mode::Ret, TdxStatus::EPT_WALK_FAILED, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_mem_page_add(c, info, pfn(1), pfn(2), pfn(3)) }
    });
    assert_eq!(
        (r[RAX], r[RCX], r[RDX], r[R8], r[R9]),
        (2, 0x8000_0000, 0x1000, 0x2000, 0x3000)
    );
    assert_eq!(c.status, TdxStatus::EPT_WALK_FAILED);
    assert_eq!(c.out.rcx, 0x8000_0000 ^ OUT_XOR);
    assert_eq!(c.out.rdx, 0x1000 ^ OUT_XOR);

    // TDH.MEM.SEPT.ADD: RDX = TDR | allow_existing.
    let info = PageInfo::for_page::<tdx_types::Size2M>(Gpa::new(0x4020_0000)).unwrap();
    let (_, r) = with_module(Mode::Ret, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_mem_sept_add(c, info, TdrAndFlags::with_tdr(pfn(5), true), pfn(6)) }
    });
    assert_eq!(
        (r[RAX], r[RCX], r[RDX], r[R8]),
        (3, 0x4020_0001, 0x5001, 0x6000)
    );

    // TDH.SYS.TDMR.INIT: RCX in, RDX out.
    let (c, r) = with_module(Mode::Ret, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_sys_tdmr_init(c, Hpa::new(0x4000_0000)) }
    });
    assert_eq!((r[RAX], r[RCX]), (36, 0x4000_0000));
    assert_eq!(c.out, OUT_XOR);

    // TDH.EXT.MEM.ADD: RCX in and out (resume state).
    let list = HpaListInfo::try_new(pfn(0x77), 512).unwrap();
    let (c, r) = with_module(Mode::Ret, TdxStatus::INTERRUPTED_RESUMABLE, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_ext_mem_add(c, list) }
    });
    assert_eq!((r[RAX], r[RCX]), (61, list.into_bits()));
    assert_eq!(c.status, TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(c.out.into_bits(), list.into_bits() ^ OUT_XOR);

    // TDH.PHYMEM.PAGE.RECLAIM: RCX in; RCX, RDX, R8 out.
    let (c, r) = with_module(Mode::Ret, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_phymem_page_reclaim(c, pfn(0xabc)) }
    });
    assert_eq!((r[RAX], r[RCX]), (28, 0xabc_000));
    assert_eq!(c.out.raw_type, 0xabc_000 ^ OUT_XOR);
    assert_eq!(c.out.owner, OUT_XOR);
    assert_eq!(c.out.level, OUT_XOR);

    // TDH.MEM.SEPT.ADD v1: four pages in R8-R11, -1 for "none".
    let (c, r) = with_module(Mode::Ret, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe {
            leaf::tdh_mem_sept_add_v1(
                c,
                info,
                TdrAndFlags::with_tdr(pfn(5), false),
                [Some(pfn(6)), None, Some(pfn(8)), None],
            )
        }
    });
    assert_eq!(
        (r[RAX], r[R8], r[R9], r[R10], r[R11]),
        (0x1_0003, 0x6000, u64::MAX, 0x8000, u64::MAX)
    );
    assert_eq!(c.out.pages[1], u64::MAX ^ OUT_XOR);
}

#[test]
fn saved_ret_moves_all_thirteen_registers() {
    let mut regs = SeamcallArgs {
        rcx: 0, // replaced by the TDVPR
        rdx: 0x0202,
        r8: 0x0808,
        r9: 0x0909,
        r10: 0x1010,
        r11: 0x1111,
        r12: 0x1212,
        r13: 0x1313,
        r14: 0x1414,
        r15: 0x1515,
        rbx: 0xb0b0,
        rdi: 0xd1d1,
        rsi: 0x5151,
    };
    let (st, r) = with_module(Mode::SavedRet, TdxStatus::from_raw(0x30), |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_vp_enter(c, pfn(0x321), &mut regs) }
    });
    assert_eq!(st, TdxStatus::from_raw(0x30));
    assert_eq!(r[RAX], 0);
    let inputs = [
        0x32_1000, 0x0202, 0x0808, 0x0909, 0x1010, 0x1111, 0x1212, 0x1313, 0x1414, 0x1515, 0xb0b0,
        0xd1d1, 0x5151,
    ];
    assert_eq!(
        &r[RCX..=RSI],
        &inputs[..],
        "inputs in RCX, RDX, R8-R15, RBX, RDI, RSI"
    );
    let out = [
        regs.rcx, regs.rdx, regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14,
        regs.r15, regs.rbx, regs.rdi, regs.rsi,
    ];
    let expected: Vec<u64> = inputs.iter().map(|v| v ^ OUT_XOR).collect();
    assert_eq!(&out[..], &expected[..], "outputs back in the same fields");
    assert!(r[R12] != 0 && r[R15] != 0 && r[RBX] != 0);
}

#[test]
fn vmfailinvalid_is_reported_in_every_shape() {
    for shape in [RegShape::NoOutputs, RegShape::Ret, RegShape::SavedRet] {
        let mut args = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
        let (st, r) = with_module(Mode::VmFail, TdxStatus::SUCCESS, |c| {
            // SAFETY: as above.
            unsafe { c.seamcall(Leaf::SYS_INIT.v0().rax(), &mut args, shape) }
        });
        assert_eq!(st, TdxStatus::SEAMCALL_VMFAILINVALID, "{shape:?}");
        assert_eq!(r[RAX], 33);
        // CF=1 leaves the registers as they were.
        assert_eq!((args.rcx, args.r11), (1, 6), "{shape:?}");
    }
}

#[test]
fn vmfailvalid_is_reported_in_every_shape() {
    // TDH.VP.ENTER is leaf 0: an unchanged RAX would read as TDX_SUCCESS.
    for (rax, shape) in [
        (Leaf::MEM_TRACK.v0().rax(), RegShape::NoOutputs),
        (Leaf::SYS_RD.v0().rax(), RegShape::Ret),
        (Leaf::VP_ENTER.v0().rax(), RegShape::SavedRet),
    ] {
        let mut args = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
        let (st, r) = with_module(Mode::VmFailValid, TdxStatus::SUCCESS, |c| {
            // SAFETY: as above.
            unsafe { c.seamcall(rax, &mut args, shape) }
        });
        assert_eq!(st, TdxStatus::SEAMCALL_VMFAILVALID, "{shape:?}");
        assert!(st.is_error(), "{shape:?}");
        assert_eq!(r[RAX], rax);
        assert_eq!((args.rcx, args.r11), (1, 6), "{shape:?}");
    }
    // And through a typed leaf.
    let mut regs = SeamcallArgs::ZERO;
    let (st, _) = with_module(Mode::VmFailValid, TdxStatus::SUCCESS, |c| {
        // SAFETY: as above.
        unsafe { leaf::tdh_vp_enter(c, pfn(0x321), &mut regs) }
    });
    assert_eq!(st, TdxStatus::SEAMCALL_VMFAILVALID);
}

/// Values the caller holds across the call must survive a module that
/// changes everything the ABI lets it change (and RBP, which the backend
/// saves itself). A wrong clobber list shows up as a wrong sum.
#[test]
fn caller_values_survive_the_call() {
    for (mode, shape) in [
        (Mode::NoOutputs, RegShape::NoOutputs),
        (Mode::Ret, RegShape::Ret),
        (Mode::SavedRet, RegShape::SavedRet),
    ] {
        let vals: [u64; 12] = core::array::from_fn(|i| black_box(0x1111 * (i as u64 + 1)));
        let expected: u64 = vals.iter().fold(0u64, |a, v| a.rotate_left(7) ^ v);
        let (_, _) = with_module(mode, TdxStatus::SUCCESS, |c| {
            let mut args = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
            // Keep the values live in the caller across the asm block.
            let [a, b, d, e, f, g, h, i, j, k, l, m] = vals;
            // SAFETY: as above.
            let st = unsafe { c.seamcall(Leaf::SYS_LP_INIT.v0().rax(), &mut args, shape) };
            let got = [a, b, d, e, f, g, h, i, j, k, l, m]
                .iter()
                .fold(0u64, |acc, v| acc.rotate_left(7) ^ v);
            assert_eq!(got, expected, "{shape:?}: a live value was clobbered");
            black_box(st)
        });
    }
}

/// TDH.VP.ENTER issued by a function of the win64 ABI (UEFI's and
/// Windows'), where RSI, RDI, R12-R15 and XMM6-15 are callee-saved (with RBX
/// and RBP). The fake module changes every GPR and every XMM register; the
/// caller, written in assembly so that nothing depends on the register
/// allocator, puts known values in those registers, calls the function as
/// the win64 ABI says, and reads them back. On Linux a clobber list spelled
/// as the target's C ABI happens to be right, so this catches a list
/// spelled for win64 or one missing RSI; `uefi_asm.rs` checks the code
/// built for the UEFI target itself.
#[test]
fn win64_callee_saved_registers_survive_vp_enter() {
    extern "win64" fn vp_enter_win64(regs: &mut SeamcallArgs) -> u64 {
        // SAFETY: called only inside `with_module`, whose handler serves
        // the trap (term 2 of `Cpu::new`); the "module" moves no memory.
        let cpu = unsafe { Cpu::new() };
        // SAFETY: as above.
        unsafe { leaf::tdh_vp_enter(&cpu, pfn(0x321), regs) }.raw()
    }

    let gpr_in: [u64; 6] = core::array::from_fn(|i| 0x5eed_0000_0000_0001 + i as u64);
    let xmm_in: [f64; 10] = core::array::from_fn(|i| 1.25 + i as f64);
    let mut gpr = gpr_in;
    let mut xmm = xmm_in;
    let mut regs = SeamcallArgs::regs6(1, 2, 3, 4, 5, 6);
    let (st, _) = with_module(Mode::SavedRet, TdxStatus::from_raw(0x30), |_| {
        let st: u64;
        let p: *mut SeamcallArgs = &mut regs;
        // The block entry has RSP aligned for a call (no `nostack`); it
        // reserves the 32-byte shadow space the win64 ABI gives the callee
        // and gives it back. Every register the win64 ABI lets the callee
        // change is declared by `clobber_abi("win64")`; the callee-saved
        // ones under test are in-out operands, so a change to them shows.
        // SAFETY: a win64 call of `vp_enter_win64` with RCX = a valid,
        // exclusive `&mut SeamcallArgs`, under the ABI as said above.
        unsafe {
            core::arch::asm!(
                "sub rsp, 32",
                "call {f}",
                "add rsp, 32",
                f = sym vp_enter_win64,
                in("rcx") p,
                lateout("rax") st,
                inout("rsi") gpr[0],
                inout("rdi") gpr[1],
                inout("r12") gpr[2],
                inout("r13") gpr[3],
                inout("r14") gpr[4],
                inout("r15") gpr[5],
                inout("xmm6") xmm[0],
                inout("xmm7") xmm[1],
                inout("xmm8") xmm[2],
                inout("xmm9") xmm[3],
                inout("xmm10") xmm[4],
                inout("xmm11") xmm[5],
                inout("xmm12") xmm[6],
                inout("xmm13") xmm[7],
                inout("xmm14") xmm[8],
                inout("xmm15") xmm[9],
                clobber_abi("win64"),
            );
        }
        st
    });
    assert_eq!(st, 0x30);
    assert_eq!(regs.rcx, 0x32_1000 ^ OUT_XOR, "the call went through");
    assert_eq!(gpr, gpr_in, "RSI, RDI, R12-R15 across a win64 call");
    assert_eq!(xmm, xmm_in, "XMM6-15 across a win64 call");
}

#[test]
fn nothing_but_the_status_changes_with_no_outputs() {
    let mut args = SeamcallArgs::regs6(11, 22, 33, 44, 55, 66);
    let before = args;
    let (st, _) = with_module(Mode::NoOutputs, TdxStatus::SYS_NOT_READY, |c| {
        // SAFETY: as above.
        unsafe { c.seamcall(Leaf::MEM_TRACK.v0().rax(), &mut args, RegShape::NoOutputs) }
    });
    assert_eq!(st, TdxStatus::SYS_NOT_READY);
    assert_eq!(args, before);
}
