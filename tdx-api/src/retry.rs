//! What the library does when the module answers "busy" or "no entropy":
//! the caller's [`RetryPolicy`].
//!
//! The TDX module never waits for a lock: a leaf that meets a conflicting
//! holder returns `TDX_OPERAND_BUSY` (with the operand it could not lock)
//! and changed nothing. Who holds it may be another host thread on the same
//! TD, a vCPU inside the guest (TDG.MEM.PAGE.ACCEPT holds an S-EPT entry),
//! or the module's zero-step mitigation in TDH.VP.ENTER (the S-EPT tree).
//! KVM answers such a BUSY on the fault path by returning to the guest,
//! which faults again; on the zap path it stops vCPUs and retries.
//!
//! A leaf that finds a host interrupt pending before it commits
//! (TDH.MEM.PAGE.DEMOTE and PROMOTE in module 1.5) returns
//! `TDX_INTERRUPTED_RESTARTABLE`, having changed nothing either; the
//! library treats it as BUSY: the same call again, under the same policy.
//!
//! A [`RetryPolicy`] says how often the library calls a leaf again before
//! the BUSY reaches the caller as [`TdError::Busy`],
//! and what happens between calls: nothing ([`Backoff::Spin`], a CPU
//! spin-loop hint, fine in atomic context) or [`Cpus::yield_now`](crate::Cpus::yield_now)
//! ([`Backoff::Yield`], only where the caller may schedule).
//!
//! Where the retries run: never inside a closure given to
//! [`Cpus::on_cpu`](crate::Cpus::on_cpu). A leaf that must run on a given CPU (TDH.VP.INIT,
//! TDH.VP.FLUSH, TDH.MNG.KEY.CONFIG, TDH.PHYMEM.CACHE.WB) is issued once
//! per `on_cpu` call, and the back-off happens in the calling thread
//! between calls, so a platform may run `on_cpu` closures in atomic
//! context (an IPI handler) without the library ever yielding there.

use tdx_types::{ErrorKind, LeafVersion, TdxError, TdxStatus};

use crate::{
    platform::{CpuId, Platform},
    td::{Operand, TdError},
};

/// Retries of a leaf that ran out of entropy (Linux: `RDRAND_RETRY_LOOPS`).
pub const ENTROPY_RETRIES: u32 = 10;
/// Retries of a leaf that found a lock busy, by default.
pub const BUSY_RETRIES: u32 = 1000;

/// What happens between calls of a leaf that answered BUSY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backoff {
    /// No retry: the first BUSY is returned.
    Never,
    /// Up to this many retries, with a spin-loop hint in between: never
    /// sleeps or yields, so it is usable in atomic context.
    Spin(u32),
    /// Up to this many retries, with [`Cpus::yield_now`](crate::Cpus::yield_now) in between
    /// (in the calling thread): only where the caller may schedule.
    Yield(u32),
}

impl Backoff {
    /// The number of retries allowed.
    pub const fn retries(self) -> u32 {
        match self {
            Self::Never => 0,
            Self::Spin(n) | Self::Yield(n) => n,
        }
    }
}

/// How many times a leaf is called again on BUSY and on a lack of entropy,
/// and how the library waits in between. See the [module docs](self).
///
/// # Examples
///
/// A fault path that returns BUSY to the guest at once, while the
/// simulator holds the TD's S-EPT tree lock as another CPU would:
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
/// # td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let mut td = td.finalize().map_err(|f| f.error).unwrap();
/// use tdx_api::{FrameAllocator, Placement, RetryPolicy, td::{GuestFrame, TdError}};
/// use tdx_sim::{LockMode, ModuleLock};
/// use tdx_types::{Gpa, Size4K};
///
/// td.set_map_policy(RetryPolicy::IMMEDIATE); // or RetryPolicy::spin(100)
/// let run = sim.alloc_pages(1, 1, Placement::Anywhere).unwrap();
/// // SAFETY: allocated above for this TD and left alone while it has it.
/// let frame = unsafe { GuestFrame::<Size4K>::new(run.first()) }.unwrap();
///
/// let held = sim.hold(ModuleLock::SeptTree(td.tdr()), LockMode::Exclusive).unwrap();
/// let failed = td.map(Gpa::new(0x1000), frame).unwrap_err();
/// assert!(matches!(failed.error, TdError::Busy { .. }));
/// assert!(failed.error.is_contention()); // the guest faults again
/// drop(held);
/// // The frame came back with the error; the next fault maps it.
/// td.map(Gpa::new(0x1000), failed.returned).map_err(|f| f.error).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// On `TDX_OPERAND_BUSY` and the other busy statuses, and on
    /// `TDX_INTERRUPTED_RESTARTABLE`.
    pub busy: Backoff,
    /// Retries on `TDX_RND_NO_ENTROPY` / `TDX_KEY_GENERATION_FAILED`
    /// (immediately: the RNG refills in microseconds).
    pub entropy: u32,
}

impl RetryPolicy {
    /// [`BUSY_RETRIES`] retries with a yield in between, and
    /// [`ENTROPY_RETRIES`]: for callers in thread context (a VMM, a
    /// kernel's process context).
    pub const DEFAULT: Self = Self {
        busy: Backoff::Yield(BUSY_RETRIES),
        entropy: ENTROPY_RETRIES,
    };

    /// BUSY goes straight back to the caller (the fault path of a VMM that
    /// returns to the guest and lets it fault again, as KVM does);
    /// [`ENTROPY_RETRIES`] on a lack of entropy.
    pub const IMMEDIATE: Self = Self {
        busy: Backoff::Never,
        entropy: ENTROPY_RETRIES,
    };

    /// Up to `n` retries with a spin-loop hint in between; usable in atomic
    /// context.
    pub const fn spin(n: u32) -> Self {
        Self {
            busy: Backoff::Spin(n),
            entropy: ENTROPY_RETRIES,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What one call's status means under a policy.
enum Next {
    Done(TdxStatus),
    Again,
    Fail(TdError),
}

pub(crate) struct Attempts {
    busy: u32,
    entropy: u32,
}

impl Attempts {
    /// After a failed attempt of `leaf` on `on`: `Ok` to try again (after
    /// the policy's back-off), or the error to return. `status` is the
    /// module's answer, or `None` for contention inside the library
    /// (another thread adding or removing the PAMT pair of the range
    /// `on` names), which counts against the busy budget and ends in
    /// [`TdError::PamtInProgress`].
    pub(crate) fn again<P: Platform + ?Sized>(
        &mut self,
        p: &P,
        policy: RetryPolicy,
        leaf: LeafVersion,
        on: Operand,
        status: Option<TdxStatus>,
    ) -> Result<(), TdError> {
        let Some(s) = status else {
            if self.busy >= policy.busy.retries() {
                return Err(match on {
                    Operand::HostPage(range) => TdError::PamtInProgress(range),
                    _ => TdError::Protocol {
                        leaf,
                        what: "contention on something other than a PAMT range",
                        gpa: None,
                    },
                });
            }
            self.busy += 1;
            match policy.busy {
                Backoff::Yield(_) => p.yield_now(),
                _ => core::hint::spin_loop(),
            }
            return Ok(());
        };
        match self.judge(p, policy, leaf, on, s) {
            Next::Done(_) | Next::Again => Ok(()),
            Next::Fail(e) => Err(e),
        }
    }

    pub(crate) const fn new() -> Self {
        Self {
            busy: 0,
            entropy: 0,
        }
    }

    fn judge<P: Platform + ?Sized>(
        &mut self,
        p: &P,
        policy: RetryPolicy,
        leaf: LeafVersion,
        on: Operand,
        s: TdxStatus,
    ) -> Next {
        // TDX_INTERRUPTED_RESTARTABLE (DEMOTE, PROMOTE: a host interrupt
        // was pending) changed nothing, like BUSY: the same call again,
        // under the same budget and back-off.
        let kind = match s.kind() {
            Some(ErrorKind::Interrupted) if s.is(TdxStatus::INTERRUPTED_RESTARTABLE) => {
                Some(ErrorKind::Busy)
            }
            k => k,
        };
        match kind {
            None => Next::Done(s),
            Some(ErrorKind::NoEntropy) if self.entropy < policy.entropy => {
                self.entropy += 1;
                Next::Again
            }
            Some(ErrorKind::Busy) if self.busy < policy.busy.retries() => {
                self.busy += 1;
                match policy.busy {
                    Backoff::Yield(_) => p.yield_now(),
                    _ => core::hint::spin_loop(),
                }
                Next::Again
            }
            Some(ErrorKind::Busy) => Next::Fail(TdError::Busy {
                error: TdxError::new(leaf, s),
                on,
            }),
            _ => Next::Fail(TdError::Seamcall {
                error: TdxError::new(leaf, s),
                on,
            }),
        }
    }
}

/// Calls `call` (one SEAMCALL of `leaf`) under `policy`. Non-zero success
/// statuses are `Ok`; BUSY past the policy is [`TdError::Busy`]; other
/// errors are [`TdError::Seamcall`], naming the leaf and `on`. The policy
/// is by reference so that the common case (success at once) does not
/// copy it out of the caller's record around the SEAMCALL.
#[inline(always)]
pub(crate) fn retry<P: Platform + ?Sized>(
    p: &P,
    policy: &RetryPolicy,
    leaf: LeafVersion,
    on: Operand,
    mut call: impl FnMut() -> TdxStatus,
) -> Result<TdxStatus, TdError> {
    let s = call();
    // The common case, success on the first call, stays small and inline;
    // the loop is out of line.
    if !s.is_error() {
        return Ok(s);
    }
    retry_after(p, *policy, leaf, on, s, call)
}

/// As [`retry`], for a leaf whose outputs the caller needs: `call` returns
/// the status and the outputs, and the outputs of the call that succeeded
/// come back with its status.
#[inline(always)]
pub(crate) fn retry_out<P: Platform + ?Sized, T>(
    p: &P,
    policy: &RetryPolicy,
    leaf: LeafVersion,
    on: Operand,
    mut call: impl FnMut() -> (TdxStatus, T),
) -> Result<(TdxStatus, T), TdError> {
    let (s, out) = call();
    if !s.is_error() {
        return Ok((s, out));
    }
    retry_out_after(p, *policy, leaf, on, s, call)
}

#[cold]
#[inline(never)]
fn retry_out_after<P: Platform + ?Sized, T>(
    p: &P,
    policy: RetryPolicy,
    leaf: LeafVersion,
    on: Operand,
    mut s: TdxStatus,
    mut call: impl FnMut() -> (TdxStatus, T),
) -> Result<(TdxStatus, T), TdError> {
    let mut tries = Attempts::new();
    loop {
        match tries.judge(p, policy, leaf, on, s) {
            Next::Done(_) | Next::Again => {
                let (next, out) = call();
                if !next.is_error() {
                    return Ok((next, out));
                }
                s = next;
            }
            Next::Fail(e) => return Err(e),
        }
    }
}

/// The rest of [`retry`] after a first call that failed with `s`.
#[cold]
#[inline(never)]
fn retry_after<P: Platform + ?Sized>(
    p: &P,
    policy: RetryPolicy,
    leaf: LeafVersion,
    on: Operand,
    mut s: TdxStatus,
    mut call: impl FnMut() -> TdxStatus,
) -> Result<TdxStatus, TdError> {
    let mut tries = Attempts::new();
    loop {
        match tries.judge(p, policy, leaf, on, s) {
            Next::Done(s) => return Ok(s),
            Next::Fail(e) => return Err(e),
            Next::Again => s = call(),
        }
    }
}

/// As [`retry`], for a leaf that must run on `cpu`: each call is one
/// [`Cpus::on_cpu`](crate::Cpus::on_cpu) with exactly one SEAMCALL in it, and the back-off
/// happens here, in the calling thread, between them.
pub(crate) fn retry_on_cpu<P: Platform + ?Sized>(
    p: &P,
    cpu: CpuId,
    policy: RetryPolicy,
    leaf: LeafVersion,
    on: Operand,
    call: &mut (dyn FnMut() -> TdxStatus + Send),
) -> Result<TdxStatus, TdError> {
    let mut tries = Attempts::new();
    loop {
        let mut s = TdxStatus::SUCCESS;
        p.on_cpu(cpu, &mut || s = call());
        match tries.judge(p, policy, leaf, on, s) {
            Next::Done(s) => return Ok(s),
            Next::Fail(e) => return Err(e),
            Next::Again => {}
        }
    }
}

/// Between calls of a resumable leaf: a yield if the policy allows one,
/// else a spin-loop hint.
pub(crate) fn pause<P: Platform + ?Sized>(p: &P, policy: RetryPolicy) {
    match policy.busy {
        Backoff::Yield(_) => p.yield_now(),
        Backoff::Never | Backoff::Spin(_) => core::hint::spin_loop(),
    }
}

pub(crate) use crate::platform::package_cpus;
