//! The real SEAMCALL instruction, served by the simulator: a backend that
//! runs `tdx_sys::Cpu`'s machine code and plays the TDX module from a
//! signal handler (feature `trap`, Linux x86_64 only).
//!
//! A Linux process is not in VMX root operation at CPL 0, so SEAMCALL
//! (`66 0F 01 CF`) faults there: #UD (SIGILL, `ILL_ILLOPN`) on a CPU not
//! in VMX operation, #GP (SIGSEGV, `SI_KERNEL`) where the kernel keeps the
//! CPU in VMX root operation (KVM loaded), as the Intel SDM's SEAMCALL
//! pseudo-code orders the checks. [`TrapBackend`] issues every call through
//! [`Cpu`]'s `asm!` blocks, exactly the code a VMM or kernel runs on a TDX
//! host, and a handler for those two signals serves each trapped SEAMCALL
//! with the [`Simulator`]:
//!
//! 1. it checks that the fault is one the CPU raised (`si_code` above 0) on
//!    the bytes `66 0F 01 CF` at RIP, in a thread that is inside
//!    [`TrapBackend`]'s `seamcall` (a per-thread pointer to the simulator,
//!    set around each call, says so and says which simulator);
//! 2. it reads RAX and the 13 registers of [`SeamcallArgs`] from the
//!    interrupted context (`ucontext_t` `uc_mcontext.gregs`) and hands that
//!    whole register file to the simulator, on the logical processor the
//!    calling thread selected ([`Simulator::set_lp`], `Platform::on_cpu`):
//!    the handler looks the LP up on the trapping thread, where a direct
//!    call would look it up, and the simulator runs the call on a server
//!    thread of the trapping thread's own, with that LP selected, while the
//!    trapping thread waits (so the simulator never runs on the signal
//!    frame's stack: a panic's backtrace from there would walk from the
//!    signal frame into the `asm!` block, whose pushes have no unwind
//!    information, and fault);
//! 3. it writes RAX and the output registers of the call's [`RegShape`]
//!    back into the context (for `Ret`: RCX, RDX, R8-R11; for `SavedRet`:
//!    all 13), or, when the simulator answers VMfailInvalid
//!    (`TDX_SEAMCALL_VMFAILINVALID`) or VMfailValid, leaves the registers
//!    and sets CF or ZF, which [`Cpu`] turns back into those statuses;
//! 4. it scribbles over what the module may change but the shape does not
//!    return (RSI, RDI, RBP, the arithmetic flags, every XMM register, and
//!    RCX-R11 for `NoOutputs`), so code that wrongly keeps a value there
//!    across the call breaks as it would on hardware ([`TrapBackend::scribble`]);
//! 5. it resumes 4 bytes after the instruction.
//!
//! RBX and R12-R15 survive a `Ret` or `NoOutputs` call on hardware (the
//! module restores them; [`Cpu`] relies on it and does not declare them).
//! If the simulator changes one of them in such a call, the handler does
//! not write it back (that would break the caller's registers, as the real
//! module would), records it in [`Trap::clobbered`], and the call panics
//! after it returns: the simulator, or the leaf function's choice of
//! shape, breaks the ABI the `Cpu` backend relies on.
//!
//! Every trap is recorded for the thread that took it ([`last_trap`],
//! [`traps`]): the registers the instruction saw, the simulator's answer,
//! and the LP, so a test can check that each input register reached the
//! module and each output register reached the caller.
//!
//! # Use
//!
//! A VMM or kernel author tests the code that issues SEAMCALL on real
//! hardware, through the real `Cpu` backend, against the simulated module
//! and host: build a [`Simulator`], wrap it in a [`TrapBackend`] and use
//! that wherever the code takes a `Seamcall` backend, with the simulator
//! (or anything forwarding to it) as the platform:
//!
//! ```
//! use tdx_sim::{MachineDesc, Simulator, testkit, trap::TrapBackend};
//! use tdx_sys::leaf;
//! use tdx_types::metadata::field;
//!
//! let sim = Simulator::new(MachineDesc::new(vec![(4 << 30, 6 << 30)])).unwrap();
//! testkit::bring_up(&sim, &testkit::simple_layout(&[(4 << 30, 6 << 30)], 4), Default::default());
//! let cpu = TrapBackend::new(&sim).unwrap();
//! // SAFETY: the simulator's memory is simulated; nothing real changes hands.
//! let c = unsafe { leaf::tdh_sys_rd(&cpu, field::MAX_TDMRS) };
//! assert!(!c.status.is_error());
//! assert_eq!(tdx_sim::trap::last_trap().unwrap().rax, 34); // TDH.SYS.RD
//! ```
//!
//! The simulator's own raw-leaf suites (the tests built on
//! `tests/td_support`) issue their SEAMCALLs through this backend when run
//! with `TDX_SIM_BACKEND=trap`, which CI does; `tests/trap_leaves.rs` and
//! `tests/trap_suites.rs` compare it with the direct path call by call.
//!
//! `tdx-api`'s `TdxModule` and `TdHost` take the backend and the platform
//! separately (`TdxModule<S, TrapBackend, &Simulator>`); code that wants
//! one value for both can put a [`Recorder`](crate::Recorder) over the
//! pair, which also writes a trace to compare with a direct run.
//!
//! # Why the handler may do what it does
//!
//! A signal handler may only call async-signal-safe functions because it
//! can interrupt any code, including code inside `malloc` or holding a
//! lock that the handler would then take again. This handler reads
//! thread-locals, may place the thread on an LP (the simulator's LP
//! selection, a thread-local vector), and sends the call to its server
//! thread and waits for the answer over channels (a mutex, a futex wait,
//! perhaps an allocation); the simulator on the server thread allocates,
//! takes locks and spawns guest threads. None of that is async-signal-safe
//! in general. It is safe here because of when the handler does it:
//!
//! - **Synchronous, at a known instruction.** It acts only on a fault the
//!   kernel reports as raised by the CPU (`si_code` above 0, such as
//!   `ILL_ILLOPN` or `SI_KERNEL`, which `kill`, `sigqueue` and `tgkill`
//!   cannot forge: they set `SI_USER`, `SI_QUEUE` or `SI_TKILL`, all 0 or
//!   below) at the SEAMCALL bytes, in a thread whose per-thread target is
//!   set. That target is set only for the length of [`TrapBackend`]'s
//!   `seamcall` around the `asm!` block of [`Cpu`], whose instructions are
//!   register moves, a push and pop of RBP on a valid stack, and the
//!   SEAMCALL: no allocation, no lock, no libc call. So the interrupted
//!   code is that block, and the thread holds no allocator, stdio or
//!   dynamic-linker lock at that point. Anything else (a fault elsewhere,
//!   a signal sent by a process, a thread not in a call) is passed on
//!   (below) and touches nothing else.
//! - **Same locks as a direct call.** The trapping thread holds exactly
//!   the locks its caller held when it called `seamcall` (for example a
//!   [`Recorder`](crate::Recorder)'s mutex), and waits; the simulator does
//!   the same work with nothing more held than a direct call from that
//!   caller would hold. The simulator never takes a lock of the host's:
//!   the only host code it runs is an `on_cpu` closure, and it calls none
//!   from a SEAMCALL. A SEAMCALL issued from inside the simulator's own
//!   call is not possible: the simulator issues none, and its guest
//!   programs run on their own threads. So the trap adds no lock order and
//!   no deadlock the direct path does not have. (The one state of the
//!   trapping thread the simulator reads is its LP selection, read by the
//!   handler before the hand-over and given to the server explicitly.)
//! - **No re-entry.** The kernel blocks the signal being handled (no
//!   `SA_NODEFER`), so a SIGILL or SIGSEGV raised on the trapping thread
//!   while the handler runs is not delivered to it again: the kernel kills
//!   the process instead (a synchronous fault with its signal blocked gets
//!   the default action), which is a crash, never a second entry. The
//!   server and the guest threads were started outside any handler and
//!   have the ordinary signal mask.
//! - **Thread-local state is static TLS.** The per-thread target and trap
//!   record are `const`-initialized `Cell`s of `Copy` types in this
//!   executable's static TLS block: reading them is a load through the
//!   thread pointer. The server handle is created by the first call, in
//!   ordinary context, before any trap of that thread.
//! - **errno** is saved on entry and restored on exit.
//! - **Panics** of the simulator are caught on the server thread and handed
//!   to the trapping thread, where [`TrapBackend`]'s `seamcall` resumes
//!   them after the instruction returns: a test sees the simulator's panic
//!   as it would on the direct path. Nothing unwinds across the signal
//!   frame.
//!
//! What would break the argument, and is excluded: a SIGILL or SIGSEGV
//! arriving asynchronously (it fails the `si_code` check); a fault in
//! another instruction of the same thread inside the call (the window
//! holds only the `asm!` block); a [`TrapBackend`] call from code that
//! already runs inside the simulator (none exists, see above); a handler
//! installed over this one by other code (that installer's `unsafe`
//! `sigaction` call answers for it; the call then panics, because no trap
//! reached this handler).
//!
//! Signals not served are passed on: the handler puts back the action
//! that was installed before it and, for a fault, returns to the faulting
//! instruction, which faults again under that action (the default
//! action ends the process; Rust's stack-overflow handler does its
//! work); a signal sent by a process is raised again. The handler runs on
//! the thread's own stack (no `SA_ONSTACK`: its hand-over needs more stack
//! than an alternate signal stack may have), so while it is installed a
//! stack overflow ends the process with SIGSEGV without Rust's
//! "has overflowed its stack" message.
//!
//! # Limits
//!
//! - A call through the trap costs two thread hand-overs (a few
//!   microseconds) on top of the simulator's work.
//! - The module sees the whole register file the compiler left, as on
//!   hardware, where a direct call through the simulator passes zeros in
//!   the registers the shape does not load. A leaf function issued in a
//!   shape that does not load the registers its module reads (for example
//!   TDH.MEM.PAGE.DEMOTE without the pair on a module with Dynamic PAMT,
//!   which reads R12/R13) gives the module what the registers held, as
//!   hardware would.

// UNSAFETY: this module installs a signal handler, edits the interrupted
// thread's registers through the `ucontext_t` the kernel hands it, reads
// the instruction bytes at the faulting RIP, and issues the SEAMCALL
// instruction through `tdx_sys::Cpu` under that handler.
#![allow(unsafe_code)]

use std::{
    any::Any,
    cell::{Cell, OnceCell},
    panic::{self, AssertUnwindSafe},
    ptr,
    sync::{OnceLock, mpsc},
};

use tdx_sys::{Cpu, RegShape, Seamcall, SeamcallArgs};
use tdx_types::TdxStatus;

use crate::Simulator;

/// The SEAMCALL instruction.
const SEAMCALL: [u8; 4] = [0x66, 0x0f, 0x01, 0xcf];
/// The signals the instruction raises in user space.
const SIGNALS: [libc::c_int; 2] = [libc::SIGILL, libc::SIGSEGV];

/// EFLAGS bits: CF, PF, AF, ZF, SF, OF (VMsucceed clears them all;
/// VMfailInvalid sets CF, VMfailValid sets ZF).
const ARITH_FLAGS: i64 = 0x8d5;
const CF: i64 = 0x1;
const ZF: i64 = 0x40;
/// What the handler writes where the module may leave anything.
const SCRIBBLE: u64 = 0xdead_beef_dead_beef;

/// The SIGILL/SIGSEGV handler could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tdx-sim trap backend: sigaction for signal {signal} failed (errno {errno})")]
pub struct TrapError {
    /// The signal.
    pub signal: i32,
    /// `errno` after `sigaction`.
    pub errno: i32,
}

/// One trapped SEAMCALL as the handler saw and served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trap {
    /// SIGILL (#UD) or SIGSEGV (#GP).
    pub signal: i32,
    /// RAX as the instruction saw it (leaf and version).
    pub rax: u64,
    /// The 13 registers of [`SeamcallArgs`] as the instruction saw them
    /// (the simulator got all of them).
    pub regs: SeamcallArgs,
    /// RBP and RSP as the instruction saw them.
    pub rbp: u64,
    /// RSP (the handler never writes it).
    pub rsp: u64,
    /// The call's shape, as [`TrapBackend`] issued it.
    pub shape: RegShape,
    /// The status the simulator returned.
    pub status: TdxStatus,
    /// The register file the simulator left (all 13 registers; the
    /// handler wrote back those of `shape` only).
    pub module_out: SeamcallArgs,
    /// The registers the ABI says survive the call's shape (R12-R15 and
    /// RBX in a `Ret` or `NoOutputs` call) that the simulator changed
    /// anyway, as bits 6-10 in [`SeamcallArgs`] field order (R12, R13,
    /// R14, R15, RBX); the handler did not write them back. Always 0 for a
    /// module that keeps the ABI.
    pub clobbered: u16,
    /// The logical processor the call ran on.
    pub lp: u32,
}

/// A [`Seamcall`] backend that executes the real SEAMCALL instruction
/// ([`Cpu`]) and serves it with a [`Simulator`] from the SIGILL/SIGSEGV
/// handler (see the [module documentation](self)).
///
/// It is `Send` and `Sync`: any number of threads may call through one
/// value at once, each trapping on its own and reaching the simulator on
/// its own LP.
#[derive(Debug, Clone, Copy)]
pub struct TrapBackend<'s> {
    sim: &'s Simulator,
    cpu: Cpu,
    scribble: bool,
}

/// What the handler needs of the call in progress on its thread.
#[derive(Clone, Copy)]
struct Target {
    sim: *const Simulator,
    server: *const Server,
    shape: RegShape,
    scribble: bool,
}

/// One SEAMCALL for a [`Server`]: the simulator, the LP the trapping
/// thread is on, RAX and the register file.
struct Request {
    sim: *const Simulator,
    lp: u32,
    rax: u64,
    regs: SeamcallArgs,
}

// SAFETY: `Simulator` is `Sync`, so its address may go to another thread;
// the pointer stays valid because the requesting thread waits for the
// reply inside `TrapBackend::seamcall`, which borrows the simulator.
unsafe impl Send for Request {}

/// The status and register file the simulator left, or its panic.
type Reply = Result<(TdxStatus, SeamcallArgs), Box<dyn Any + Send>>;

/// A thread that runs the simulator's side of one trapping thread's
/// SEAMCALLs, so that the simulator never runs on the signal frame's
/// stack: a panic's backtrace there would walk from the signal frame into
/// the `asm!` block, whose pushes have no unwind information, and fault.
struct Server {
    requests: mpsc::SyncSender<Request>,
    replies: mpsc::Receiver<Reply>,
}

impl Server {
    /// Starts the server thread (it ends when the `Server` is dropped,
    /// with the thread that owns it).
    fn spawn() -> Self {
        let (requests, incoming) = mpsc::sync_channel::<Request>(1);
        let (outgoing, replies) = mpsc::sync_channel::<Reply>(1);
        std::thread::Builder::new()
            .name("tdx-sim trap server".into())
            .spawn(move || {
                for r in incoming {
                    let reply = panic::catch_unwind(AssertUnwindSafe(|| {
                        // SAFETY: `Request`'s `Send` argument: the
                        // simulator outlives the request.
                        let sim = unsafe { &*r.sim };
                        sim.set_lp(r.lp);
                        let mut regs = r.regs;
                        // SAFETY: the simulator's memory is simulated:
                        // whatever the registers name, no real memory
                        // changes hands. The module sees the whole
                        // register file, as hardware's does.
                        let status = unsafe { sim.seamcall(r.rax, &mut regs, RegShape::SavedRet) };
                        (status, regs)
                    }));
                    if outgoing.send(reply).is_err() {
                        break;
                    }
                }
            })
            .expect("tdx-sim trap: a thread to serve SEAMCALLs");
        Self { requests, replies }
    }

    /// Runs one request on the server thread and waits for its reply.
    fn run(&self, r: Request) -> Reply {
        let gone =
            || -> Box<dyn Any + Send> { Box::new("tdx-sim trap: the server thread is gone") };
        self.requests.send(r).map_err(|_| gone())?;
        self.replies.recv().map_err(|_| gone())?
    }
}

thread_local! {
    /// The call in progress on this thread, set only while
    /// [`TrapBackend::seamcall`] runs.
    static TARGET: Cell<Option<Target>> = const { Cell::new(None) };
    /// This thread's server, started by its first call.
    static SERVER: OnceCell<Server> = const { OnceCell::new() };
    /// The last trap this thread took.
    static LAST: Cell<Option<Trap>> = const { Cell::new(None) };
    /// Traps this thread took.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    /// A panic of the simulator's side of the call, for the caller.
    static PANIC: Cell<Option<Box<dyn Any + Send>>> = const { Cell::new(None) };
}

/// The last SEAMCALL the calling thread trapped, if any.
pub fn last_trap() -> Option<Trap> {
    LAST.with(Cell::get)
}

/// How many SEAMCALLs the calling thread trapped so far.
pub fn traps() -> u64 {
    COUNT.with(Cell::get)
}

/// The actions that were installed before the handler, per signal of
/// [`SIGNALS`], or the error of installing it.
static PREVIOUS: OnceLock<Result<[libc::sigaction; 2], TrapError>> = OnceLock::new();

fn install() -> Result<(), TrapError> {
    let r = PREVIOUS.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (no handler,
        // empty mask, no flags); both are overwritten below or by the
        // kernel.
        let mut prev: [libc::sigaction; 2] = unsafe { core::mem::zeroed() };
        for (i, &signal) in SIGNALS.iter().enumerate() {
            // SAFETY: as above.
            let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
            sa.sa_sigaction = on_fault as *const () as usize;
            // The handler's own signal stays blocked while it runs (no
            // SA_NODEFER); it runs on the thread's stack (no SA_ONSTACK).
            sa.sa_flags = libc::SA_SIGINFO;
            // SAFETY: `sa` is a valid action whose handler has the
            // SA_SIGINFO signature; `prev[i]` is valid for the old action.
            let rc = unsafe { libc::sigaction(signal, &sa, &mut prev[i]) };
            if rc != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                return Err(TrapError { signal, errno });
            }
        }
        Ok(prev)
    });
    r.as_ref().map(|_| ()).map_err(|e| *e)
}

impl<'s> TrapBackend<'s> {
    /// A backend whose SEAMCALLs trap into `sim`. Installs the process's
    /// SIGILL and SIGSEGV handler the first time (see the module
    /// documentation for what it passes on to the handler that was there
    /// before). Scribbling is on.
    pub fn new(sim: &'s Simulator) -> Result<Self, TrapError> {
        install()?;
        Ok(Self {
            sim,
            // SAFETY: term 2 of `Cpu::new`: every SEAMCALL through this
            // value runs inside `TrapBackend::seamcall`, with the handler
            // installed above serving its #UD or #GP: it recognises the
            // instruction by its bytes at RIP, writes the outputs of the
            // call's shape and RAX, sets CF/ZF only for the VMfail
            // statuses, and resumes 4 bytes later.
            cpu: unsafe { Cpu::new() },
            scribble: true,
        })
    }

    /// Whether the handler overwrites, after each call, what the module
    /// may change but the call's shape does not return (RSI, RDI, RBP,
    /// XMM0-15, and RCX-R11 for `NoOutputs`). On by default; off, the
    /// registers keep the values the instruction saw, as a module that
    /// changes nothing it need not would leave them.
    pub fn scribble(mut self, on: bool) -> Self {
        self.scribble = on;
        self
    }

    /// The simulator behind the trap.
    pub fn simulator(&self) -> &'s Simulator {
        self.sim
    }
}

/// Puts the previous target back when the call ends.
struct Restore(Option<Target>);

impl Drop for Restore {
    fn drop(&mut self) {
        TARGET.with(|t| t.set(self.0));
    }
}

// SAFETY: the call executes the real instruction through `Cpu`, whose
// register contract holds under term 2 of `Cpu::new` (see `new`): the
// handler gives the simulator RAX and the input registers as the
// instruction saw them (a superset of the shape's inputs, as hardware
// does), writes back exactly the outputs of `shape` and RAX, and sets CF or
// ZF only for the VMfail statuses, which `Cpu` reports as such. The status
// is the simulator's; its memory is simulated, so no real memory changes
// hands (contract points 1-3 hold because they hold for `Simulator`).
unsafe impl Seamcall for TrapBackend<'_> {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let before = COUNT.with(Cell::get);
        let server: *const Server = SERVER.with(|s| s.get_or_init(Server::spawn) as *const Server);
        let target = Target {
            sim: self.sim,
            server,
            shape,
            scribble: self.scribble,
        };
        let restore = Restore(TARGET.with(|t| t.replace(Some(target))));
        // SAFETY: the caller keeps the crate-level contract for this leaf
        // and its operands; `self.cpu` was created under term 2 of
        // `Cpu::new`, and this thread's TARGET now names the simulator
        // the handler serves the trap with.
        let status = unsafe { issue(&self.cpu, rax, args, shape) };
        drop(restore);
        if let Some(p) = PANIC.with(Cell::take) {
            panic::resume_unwind(p);
        }
        let trap = LAST.with(Cell::get);
        assert!(
            COUNT.with(Cell::get) == before + 1,
            "tdx-sim trap: the SEAMCALL did not trap into this backend's handler \
             (was another SIGILL/SIGSEGV handler installed over it?)"
        );
        if let Some(t) = trap
            && t.clobbered != 0
        {
            panic!(
                "tdx-sim trap: {} ({:?} shape) changed registers the ABI says survive \
                 (mask {:#x}: bits 6-10 are R12-R15, RBX); on hardware this corrupts \
                 the caller",
                tdx_types::Leaf((t.rax & 0xffff) as u16),
                t.shape,
                t.clobbered
            );
        }
        status
    }
}

/// Issues the call through a function of its own per shape, so that each
/// function holds one `asm!` block with that shape's clobbers, as the raw
/// leaf functions (a constant shape each) compile on hardware: a function
/// holding all three blocks would save RBX and R12-R15 around any of them
/// and hide a module that changes them in a `Ret` call.
///
/// # Safety
///
/// As [`Seamcall::seamcall`] on `cpu`.
unsafe fn issue(cpu: &Cpu, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
    #[inline(never)]
    unsafe fn no_outputs(cpu: &Cpu, rax: u64, args: &mut SeamcallArgs) -> TdxStatus {
        // SAFETY: the caller's contract.
        unsafe { cpu.seamcall(rax, args, RegShape::NoOutputs) }
    }
    #[inline(never)]
    unsafe fn ret(cpu: &Cpu, rax: u64, args: &mut SeamcallArgs) -> TdxStatus {
        // SAFETY: the caller's contract.
        unsafe { cpu.seamcall(rax, args, RegShape::Ret) }
    }
    #[inline(never)]
    unsafe fn saved_ret(cpu: &Cpu, rax: u64, args: &mut SeamcallArgs) -> TdxStatus {
        // SAFETY: the caller's contract.
        unsafe { cpu.seamcall(rax, args, RegShape::SavedRet) }
    }
    // SAFETY (each arm): the caller's contract, for the shape it names.
    match shape {
        // SAFETY: see above.
        RegShape::NoOutputs => unsafe { no_outputs(cpu, rax, args) },
        // SAFETY: see above.
        RegShape::Ret => unsafe { ret(cpu, rax, args) },
        // SAFETY: see above.
        RegShape::SavedRet => unsafe { saved_ret(cpu, rax, args) },
    }
}

/// `gregs` index of each register of [`SeamcallArgs`], in field order.
const GREGS: [libc::c_int; 13] = [
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
    libc::REG_RBX,
    libc::REG_RDI,
    libc::REG_RSI,
];

fn to_array(a: &SeamcallArgs) -> [u64; 13] {
    [
        a.rcx, a.rdx, a.r8, a.r9, a.r10, a.r11, a.r12, a.r13, a.r14, a.r15, a.rbx, a.rdi, a.rsi,
    ]
}

fn from_array(v: [u64; 13]) -> SeamcallArgs {
    let [
        rcx,
        rdx,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rbx,
        rdi,
        rsi,
    ] = v;
    SeamcallArgs {
        rcx,
        rdx,
        r8,
        r9,
        r10,
        r11,
        r12,
        r13,
        r14,
        r15,
        rbx,
        rdi,
        rsi,
    }
}

/// The SA_SIGINFO handler for SIGILL and SIGSEGV.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: `__errno_location` returns this thread's errno, valid for
    // the thread's lifetime.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: the kernel passes a valid `siginfo_t` and `ucontext_t` for
    // this thread to an SA_SIGINFO handler; `serve` checks them before use.
    let served = unsafe { serve(signal, info, ctx) };
    if !served {
        // SAFETY: `info` is the kernel's, valid or null (checked).
        unsafe { pass_on(signal, info) };
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// Puts back the action installed before ours for `signal` and, for a
/// signal a process sent, raises it again (it is delivered under that
/// action when the handler returns). A fault returns to the faulting
/// instruction, which faults again under that action.
///
/// # Safety
///
/// `info` is null or the `siginfo_t` the kernel passed to the handler.
unsafe fn pass_on(signal: libc::c_int, info: *const libc::siginfo_t) {
    let i = SIGNALS.iter().position(|&s| s == signal).unwrap_or(0);
    let prev = match PREVIOUS.get() {
        Some(Ok(prev)) => prev[i],
        // Not installed by us yet (cannot happen: the handler is
        // installed inside `get_or_init`): the default action.
        _ => {
            // SAFETY: all-zero is SIG_DFL with an empty mask.
            unsafe { core::mem::zeroed() }
        }
    };
    // SAFETY: `prev` is an action the kernel gave us (or SIG_DFL);
    // `sigaction` is async-signal-safe.
    unsafe { libc::sigaction(signal, &prev, ptr::null_mut()) };
    // SAFETY: `info` is null or valid (caller).
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    if sent {
        // SAFETY: `raise` is async-signal-safe; the signal stays pending
        // until the handler returns.
        unsafe { libc::raise(signal) };
    }
}

/// Serves the fault if it is a SEAMCALL of a [`TrapBackend`] call on this
/// thread; returns whether it did.
///
/// # Safety
///
/// The arguments are those the kernel passed to the SA_SIGINFO handler.
unsafe fn serve(signal: libc::c_int, info: *const libc::siginfo_t, ctx: *mut libc::c_void) -> bool {
    if info.is_null() || ctx.is_null() {
        return false;
    }
    // SAFETY: non-null, from the kernel.
    let code = unsafe { (*info).si_code };
    // Codes above 0 are the kernel's (a fault: ILL_ILLOPN for #UD,
    // SI_KERNEL for #GP); a process's `kill`, `sigqueue` or `tgkill` gives
    // SI_USER (0) or a negative code.
    if code <= 0 {
        return false;
    }
    let Some(target) = TARGET.with(Cell::get) else {
        return false;
    };
    // SAFETY: the kernel's `ucontext_t` for this thread, exclusive to the
    // handler while it runs; the kernel restores the registers from it.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    let rip = uc.uc_mcontext.gregs[libc::REG_RIP as usize] as usize as *const u8;
    // Byte i is read only after bytes 0..i matched: each is then part of
    // the instruction the CPU decoded at RIP (a 66 prefix is followed by
    // an opcode, 0F by a second opcode byte, 0F 01 by a ModRM byte), which
    // it fetched, so it is mapped; the thread is inside `Cpu`'s `asm!`
    // block (TARGET is set), whose code is this executable's text.
    for (i, &want) in SEAMCALL.iter().enumerate() {
        let at = rip.wrapping_add(i);
        // SAFETY: see above.
        let got = unsafe { at.read_volatile() };
        if got != want {
            return false;
        }
    }
    let Target {
        sim,
        server,
        shape,
        scribble,
    } = target;
    let g = &mut uc.uc_mcontext.gregs;
    let rax = g[libc::REG_RAX as usize] as u64;
    let (rbp, rsp) = (
        g[libc::REG_RBP as usize] as u64,
        g[libc::REG_RSP as usize] as u64,
    );
    let seen = from_array(GREGS.map(|r| g[r as usize] as u64));
    // SAFETY: TARGET is set only by `TrapBackend::seamcall`, from a
    // `&Simulator` that outlives that call and from this thread's server
    // (thread-local, alive as long as the thread), and reset before it
    // returns; the call is on this thread's stack below the signal frame.
    let sim_ref = unsafe { &*sim };
    // SAFETY: as above.
    let server = unsafe { &*server };
    // The LP this thread selected (or is placed on), as a direct call
    // would find it.
    let lp = panic::catch_unwind(AssertUnwindSafe(|| sim_ref.current_lp()));
    let answer = lp.and_then(|lp| {
        server
            .run(Request {
                sim,
                lp,
                rax,
                regs: seen,
            })
            .map(|(status, regs)| (status, regs, lp))
    });
    let (status, regs, lp) = match answer {
        Ok(a) => a,
        Err(p) => {
            PANIC.with(|c| c.set(Some(p)));
            g[libc::REG_RAX as usize] = TdxStatus::SEAMCALL_UD.raw() as i64;
            g[libc::REG_EFL as usize] &= !ARITH_FLAGS;
            g[libc::REG_RIP as usize] += SEAMCALL.len() as i64;
            COUNT.with(|c| c.set(c.get() + 1));
            return true;
        }
    };
    let flags = &mut g[libc::REG_EFL as usize];
    *flags &= !ARITH_FLAGS;
    let vmfail = if status == TdxStatus::SEAMCALL_VMFAILINVALID {
        *flags |= CF;
        true
    } else if status == TdxStatus::SEAMCALL_VMFAILVALID {
        *flags |= ZF;
        true
    } else {
        false
    };
    let (seen_a, out_a) = (to_array(&seen), to_array(&regs));
    let mut clobbered = 0u16;
    if !vmfail {
        g[libc::REG_RAX as usize] = status.raw() as i64;
        // Registers 0-5 are RCX..R11, 6-10 R12-R15 and RBX, 11-12 RDI, RSI.
        for i in 0..13 {
            let returned = match shape {
                RegShape::SavedRet => true,
                RegShape::Ret => i < 6,
                RegShape::NoOutputs => false,
            };
            if returned {
                g[GREGS[i] as usize] = out_a[i] as i64;
            } else if (6..11).contains(&i) {
                // Callee-saved across this shape: never written back.
                if out_a[i] != seen_a[i] {
                    clobbered |= 1 << i;
                }
            } else if scribble {
                g[GREGS[i] as usize] = SCRIBBLE as i64;
            }
        }
        if scribble {
            g[libc::REG_RBP as usize] = SCRIBBLE as i64;
            let fp = uc.uc_mcontext.fpregs;
            if !fp.is_null() {
                // SAFETY: a non-null `fpregs` points to the signal frame's
                // saved FPU state, valid and exclusive while the handler
                // runs; the kernel restores XMM0-15 from it on return.
                let xmm = unsafe { &mut (*fp)._xmm };
                for x in xmm.iter_mut() {
                    x.element = [0xdead_beef; 4];
                }
            }
        }
    }
    uc.uc_mcontext.gregs[libc::REG_RIP as usize] += SEAMCALL.len() as i64;
    LAST.with(|l| {
        l.set(Some(Trap {
            signal,
            rax,
            regs: seen,
            rbp,
            rsp,
            shape,
            status,
            module_out: regs,
            clobbered,
            lp,
        }))
    });
    COUNT.with(|c| c.set(c.get() + 1));
    true
}
