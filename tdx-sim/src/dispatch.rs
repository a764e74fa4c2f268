//! The SEAMCALL dispatcher (`src/vmm_dispatcher/tdx_vmm_dispatcher.c`):
//! register shapes, the gate, call counting, injected faults, and the
//! frame every leaf runs in ([`Call`]): the locks it takes, held until it
//! ends, and the point where a test can pause it.
//!
//! A leaf takes the module's locks through [`Call`]'s methods, each of
//! which is one of the module's checks with its lock (an explicit page
//! check with its PAMT walk, the TDCS check with the op-state lock, the
//! S-EPT walk with the tree lock, an entry lock, ...). Each method returns
//! the status the module returns when that check or lock fails, with the
//! operand the module adds; the leaf stops there (`?`) and the dispatcher
//! releases whatever it took, so a leaf that fails leaves nothing held and
//! nothing changed. A leaf calls [`Call::locked`] once all its checks have
//! passed and before it changes anything: that is where
//! [`Simulator::pause_next`](crate::Simulator::pause_next) stops it.

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use tdx_sys::{RegShape, SeamcallArgs};
use tdx_types::{Leaf, LeafVersion, OperandId, TdxStatus, metadata::PamtPageType};

use crate::{
    faults::FaultAction,
    locks::{AtomicBool, HeldStack, LockMode, LockSide, Ordering},
    pamt::{self, Entry, Tdmr},
    sept::{self, Septe, Slot},
    state::{Shared, SysState},
    td::{Lifecycle, OpState, Td},
    violation::Violation,
};

const MAX_PA: u64 = 1 << 52;

/// What a leaf model returns: `Err` with the status of the check that
/// stopped it (so checks chain with `?`), or `Ok` with the status of a leaf
/// that ran to its end; the dispatcher passes either on.
pub(crate) type LeafResult = Result<TdxStatus, TdxStatus>;

pub(crate) fn op(code: TdxStatus, o: OperandId) -> TdxStatus {
    code.with_operand(o)
}

/// One leaf call: the LP it runs on, the locks it holds, its pause.
#[derive(Debug)]
pub(crate) struct Call<'s> {
    pub(crate) sim: &'s Shared,
    pub(crate) lp: u32,
    pub(crate) leaf: Leaf,
    pub(crate) version: u8,
    /// Units of work an injected interruption allows (resumable leaves).
    pub(crate) stop_early: Option<u32>,
    pub(crate) held: HeldStack<'s>,
    pause: Option<Arc<PauseSlot>>,
}

impl<'s> Call<'s> {
    /// The package of the LP the call runs on.
    pub(crate) fn package(&self) -> u32 {
        self.sim.machine.package_of(self.lp)
    }

    /// The pause point: every check has passed and every lock is held; the
    /// leaf changes things after this.
    #[inline]
    pub(crate) fn locked(&mut self) {
        if let Some(p) = self.pause.take() {
            p.enter(None);
        }
    }

    // ---- PAMT ------------------------------------------------------------

    /// The HPA checks of an explicit page operand: aligned to `align`, no
    /// KeyID bits, below 2^52 (`hpa_check_with_pwr_2_alignment`), in an
    /// initialized TDMR block (`pamt_get_block`).
    pub(crate) fn hpa_block(
        &self,
        pa: u64,
        align: u64,
        o: OperandId,
    ) -> Result<&'s Tdmr, TdxStatus> {
        if !pa.is_multiple_of(align) || pa >= MAX_PA || self.sim.machine.has_hkid_bits(pa) {
            return Err(op(TdxStatus::OPERAND_INVALID, o));
        }
        self.sim
            .pamt
            .block(pa)
            .ok_or(op(TdxStatus::OPERAND_ADDR_RANGE_ERROR, o))
    }

    /// The explicit-page check (`check_and_lock_explicit_private_hpa` in
    /// `src/common/helpers/helpers.c`): the HPA checks, the PAMT
    /// walk to `level` taking the leaf entry in `mode` (BUSY|`o`), the walk
    /// ending at `level`, and page type `pt` (PAGE_METADATA_INCORRECT|`o`).
    ///
    /// With Dynamic PAMT (`non_shared_hpa_metadata_check_and_lock`, module
    /// 1.5.16+): a 4K page expected NDA whose range has no pair (the walk
    /// stopped at an NDA 2M entry) is `TDX_MISSING_PAMT_PAGE_PAIR|o`, and an
    /// NDA page whose bitmap bit is set (a pair page or a reserved page) is
    /// PAGE_METADATA_INCORRECT|`o`.
    pub(crate) fn explicit(
        &mut self,
        pa: u64,
        o: OperandId,
        level: u8,
        mode: LockMode,
        pt: PamtPageType,
    ) -> Result<&'s Entry, TdxStatus> {
        self.explicit_walk(pa, o, level, mode, pt, true)
    }

    /// [`Call::explicit`] with the module's `walk_to_target_size`: false
    /// lets the walk end above `level` (at a 2M/1G page, or with Dynamic
    /// PAMT at a range without a pair) and checks the entry it ended at
    /// (TDH.PHYMEM.PAGE.WBINVD).
    pub(crate) fn explicit_walk(
        &mut self,
        pa: u64,
        o: OperandId,
        level: u8,
        mode: LockMode,
        pt: PamtPageType,
        to_target: bool,
    ) -> Result<&'s Entry, TdxStatus> {
        let t = self.hpa_block(pa, crate::memory::PAGE << (9 * u32::from(level)), o)?;
        let target = if to_target { Some(level) } else { None };
        let (e, at) = pamt::walk(t, pa, target, mode, LockSide::Host, &mut self.held)
            .map_err(|b| op(b.status(), o))?;
        if to_target && at != level {
            if t.dynamic && at == 1 && e.pt() == PamtPageType::NDA && pt == PamtPageType::NDA {
                return Err(op(TdxStatus::MISSING_PAMT_PAGE_PAIR, o));
            }
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
        }
        if e.pt() != pt {
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
        }
        if t.dynamic && pt == PamtPageType::NDA && t.bitmap_get(pa) {
            return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
        }
        Ok(e)
    }

    /// Dynamic PAMT: one more (`up`) or one fewer 4K module page in the
    /// range of `pa` (`pamt_inc_nl_page_count` / `pamt_dec_nl_page_count`,
    /// lock-free, in a leaf's commit). Returns the removal hint (the count
    /// went to 0) as [`tdx_types::regs::PAMT_REMOVAL_HINT`] or 0. A no-op
    /// without Dynamic PAMT. The module's fatal error on a wrap is recorded
    /// ([`crate::Violation::ModuleFatalError`]).
    pub(crate) fn pamt_count(&self, pa: u64, up: bool) -> u64 {
        let Some(t) = self.sim.pamt.block(pa) else {
            return 0;
        };
        match t.count_add(pa, up) {
            Ok(true) => tdx_types::regs::PAMT_REMOVAL_HINT,
            Ok(false) => 0,
            Err(pamt::CountFatal(old)) => {
                self.sim.fatal(
                    self.leaf,
                    format!(
                        "the page count of the 2 MiB range at {:#x} {} from {old}",
                        pa & !((2 << 20) - 1),
                        if up { "incremented" } else { "decremented" }
                    ),
                );
                0
            }
        }
    }

    /// `check_and_lock_free_range_hpa`: an NDA page at `level` (4K or 2M)
    /// locked exclusively; for 2M every 4K entry below it NDA too.
    pub(crate) fn free_range(
        &mut self,
        pa: u64,
        o: OperandId,
        level: u8,
    ) -> Result<&'s Entry, TdxStatus> {
        let e = self.explicit(pa, o, level, LockMode::Exclusive, PamtPageType::NDA)?;
        if level == 1 {
            let t = self.sim.pamt.block(pa).expect("checked");
            if !t.range_2m_free(pa) {
                return Err(op(TdxStatus::PAGE_METADATA_INCORRECT, o));
            }
        }
        Ok(e)
    }

    /// TDR_X / TDR_S (`check_lock_and_map_explicit_tdr`, `helpers.c`): the
    /// TDR at `pa` for operand `o`, its PAMT entry taken in `mode`.
    pub(crate) fn tdr(
        &mut self,
        pa: u64,
        o: OperandId,
        mode: LockMode,
    ) -> Result<&'s Td, TdxStatus> {
        let e = self.explicit(pa, o, 0, mode, PamtPageType::TDR)?;
        Ok(self.sim.tds.get(e.owner_field()))
    }

    /// The implicit lock of a page's PAMT entry at `level`, no parents
    /// (`pamt_implicit_get_and_lock`): BUSY|`o`.
    pub(crate) fn implicit(
        &mut self,
        pa: u64,
        level: u8,
        mode: LockMode,
        o: OperandId,
    ) -> Result<&'s Entry, TdxStatus> {
        let t = self
            .sim
            .pamt
            .block(pa)
            .expect("an implicit page is in a TDMR");
        let e = t.entry(level, pa);
        self.held
            .sharex_hp(&e.lock, mode, LockSide::Host)
            .map_err(|b| op(b.status(), o))?;
        Ok(e)
    }

    /// `lock_and_map_implicit_tdr`: the TD whose TDR is at frame `tdr`, its
    /// TDR entry taken in `mode` (BUSY|TDR).
    pub(crate) fn implicit_tdr(&mut self, tdr: u64, mode: LockMode) -> Result<&'s Td, TdxStatus> {
        let e = self.implicit(tdr * crate::memory::PAGE, 0, mode, OperandId::TDR)?;
        Ok(self.sim.tds.get(e.owner_field()))
    }

    // ---- TDCS --------------------------------------------------------------

    /// The TD build-state checks (`check_td_in_correct_build_state`): not
    /// fatal, keys configured, TDCS allocated.
    pub(crate) fn build_state(&self, td: &Td) -> Result<(), TdxStatus> {
        if td.fatal() {
            return Err(TdxStatus::TD_FATAL);
        }
        if td.lifecycle() != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        if td.num_tdcx() < crate::td::MIN_TDCS {
            return Err(TdxStatus::TDCS_NOT_ALLOCATED);
        }
        Ok(())
    }

    /// TDCS(leaf) (`check_state_map_tdcs_and_lock`, `helpers.c`): the build
    /// state, the op-state lock in `oplock` (BUSY|OP_STATE), and an op state
    /// in `allowed`.
    pub(crate) fn tdcs(
        &mut self,
        td: &'s Td,
        oplock: Option<LockMode>,
        allowed: &[OpState],
    ) -> Result<(), TdxStatus> {
        self.build_state(td)?;
        if let Some(mode) = oplock {
            self.held
                .sharex_hp(&td.op_lock, mode, LockSide::Host)
                .map_err(|b| op(b.status(), OperandId::OP_STATE))?;
        }
        if !allowed.contains(&td.op_state()) {
            return Err(TdxStatus::OP_STATE_INCORRECT);
        }
        Ok(())
    }

    // ---- S-EPT -------------------------------------------------------------

    /// SWALK (`lock_sept_check_and_walk_private_gpa`,
    /// `helpers.c`): a private
    /// GPA (INVALID|RCX), the tree lock in `tree` if any (BUSY|SEPT_TREE),
    /// and the walk to `level` (EPT_WALK_FAILED|RCX with the details of the
    /// entry where it stopped in RCX/RDX).
    pub(crate) fn walk(
        &mut self,
        td: &'s Td,
        gpa: u64,
        level: u8,
        tree: Option<LockMode>,
        a: &mut SeamcallArgs,
    ) -> Result<Slot<'s>, TdxStatus> {
        if !td.private_gpa(gpa) {
            return Err(op(TdxStatus::OPERAND_INVALID, OperandId::RCX));
        }
        if let Some(tree) = tree {
            self.held
                .sharex(&td.tree_lock, tree)
                .map_err(|b| op(b.status(), OperandId::SEPT_TREE))?;
        }
        td.sept.walk(td.pwl(), gpa, level).map_err(|s| {
            sept::details(a, td.sept.view(s.value), s.level);
            op(TdxStatus::EPT_WALK_FAILED, OperandId::RCX)
        })
    }

    /// The host lock of the entry a walk reached (`sept_lock_acquire_host`):
    /// BUSY|RCX with the details of the entry as the walk read it. Returns
    /// the entry as read again after locking.
    pub(crate) fn lock_entry(
        &mut self,
        td: &'s Td,
        s: &Slot<'s>,
        a: &mut SeamcallArgs,
    ) -> Result<Option<Septe>, TdxStatus> {
        if self.held.septe(s.word, LockSide::Host).is_err() {
            sept::details(a, td.sept.view(s.value), s.level);
            return Err(op(TdxStatus::OPERAND_BUSY, OperandId::RCX));
        }
        Ok(td.sept.view(s.word.load(Ordering::Acquire)))
    }

    /// Writes `new` into an entry this call locked and lets the entry go
    /// with the same write.
    pub(crate) fn write_entry_unlock(&mut self, word: &'s crate::locks::AtomicU64, new: u64) {
        sept::write_unlocked(word, new);
        self.held.forget_septe(word);
    }

    // ---- other locks ---------------------------------------------------------

    /// The TD epoch lock (BUSY|TD_EPOCH).
    pub(crate) fn epoch(&mut self, td: &'s Td, mode: LockMode) -> Result<(), TdxStatus> {
        self.held
            .sharex(&td.epoch_lock, mode)
            .map_err(|b| op(b.status(), OperandId::TD_EPOCH))
    }

    /// The KOT lock (BUSY|KOT).
    pub(crate) fn kot(&mut self, mode: LockMode) -> Result<(), TdxStatus> {
        self.held
            .sharex(&self.sim.kot.lock, mode)
            .map_err(|b| op(b.status(), OperandId::KOT))
    }

    /// The module's global lock (TDX_SYS_BUSY).
    pub(crate) fn sys_lock(&mut self, mode: LockMode) -> Result<(), TdxStatus> {
        self.held
            .sharex(&self.sim.sys.lock, mode)
            .map_err(|_| TdxStatus::SYS_BUSY)
    }

    /// A try-only mutex (BUSY|`o`).
    pub(crate) fn mutex(
        &mut self,
        m: &'s crate::locks::Mutex,
        o: OperandId,
    ) -> Result<(), TdxStatus> {
        self.held.mutex(m).map_err(|b| op(b.status(), o))
    }
}

// ---------------------------------------------------------------------------
// Pauses
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseState {
    /// Waiting for a call of the leaf.
    Armed,
    /// A call took it and has not reached its pause point yet.
    Claimed,
    /// The call is stopped: at its pause point (`None`) or at its end with
    /// this status.
    Entered(Option<TdxStatus>),
    /// Let go (by [`crate::Pause::release`] or by dropping the `Pause`).
    Released,
}

/// One requested pause.
#[derive(Debug)]
pub(crate) struct PauseSlot {
    leaf: Leaf,
    lp: Option<u32>,
    state: Mutex<PauseState>,
    cv: Condvar,
}

impl PauseSlot {
    fn state(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calling leaf stops here until released.
    fn enter(&self, at_end: Option<TdxStatus>) {
        let mut s = self.state();
        if *s == PauseState::Released {
            return;
        }
        *s = PauseState::Entered(at_end);
        self.cv.notify_all();
        while matches!(*s, PauseState::Entered(_)) {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until the leaf is stopped; `None` at its pause point,
    /// `Some(status)` at its end.
    pub(crate) fn wait_entered(&self, timeout: Duration) -> Option<Option<TdxStatus>> {
        let s = self.state();
        let (s, _) = self
            .cv
            .wait_timeout_while(s, timeout, |s| {
                matches!(*s, PauseState::Armed | PauseState::Claimed)
            })
            .unwrap_or_else(|e| e.into_inner());
        match *s {
            PauseState::Entered(x) => Some(x),
            _ => None,
        }
    }

    pub(crate) fn release(&self) {
        *self.state() = PauseState::Released;
        self.cv.notify_all();
    }
}

/// The pauses tests asked for.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    armed: AtomicBool,
    list: Mutex<Vec<Arc<PauseSlot>>>,
}

impl Pauses {
    fn list(&self) -> MutexGuard<'_, Vec<Arc<PauseSlot>>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms a pause of the next call of `leaf` (on `lp` if given).
    pub(crate) fn arm(&self, leaf: Leaf, lp: Option<u32>) -> Arc<PauseSlot> {
        let slot = Arc::new(PauseSlot {
            leaf,
            lp,
            state: Mutex::new(PauseState::Armed),
            cv: Condvar::new(),
        });
        let mut l = self.list();
        l.push(slot.clone());
        self.armed.store(true, Ordering::Release);
        slot
    }

    /// The armed pause a call of `leaf` on `lp` takes, if any.
    #[inline]
    fn claim(&self, leaf: Leaf, lp: u32) -> Option<Arc<PauseSlot>> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        self.claim_armed(leaf, lp)
    }

    /// [`Pauses::claim`] once a pause is armed.
    #[cold]
    fn claim_armed(&self, leaf: Leaf, lp: u32) -> Option<Arc<PauseSlot>> {
        let mut l = self.list();
        l.retain(|p| *p.state() == PauseState::Armed);
        let i = l
            .iter()
            .position(|p| p.leaf == leaf && p.lp.is_none_or(|x| x == lp));
        let slot = i.map(|i| l.remove(i));
        if let Some(s) = &slot {
            *s.state() = PauseState::Claimed;
        }
        self.armed.store(!l.is_empty(), Ordering::Release);
        slot
    }
}

// ---------------------------------------------------------------------------
// The dispatcher
// ---------------------------------------------------------------------------

/// Leaves the dispatcher lets run before the module is ready (`tdx_vmm_dispatcher.c`).
const BEFORE_READY: [Leaf; 9] = [
    Leaf::SYS_INFO,
    Leaf::SYS_RD,
    Leaf::SYS_RDALL,
    Leaf::SYS_INIT,
    Leaf::SYS_LP_INIT,
    Leaf::SYS_CONFIG,
    Leaf::SYS_KEY_CONFIG,
    Leaf::SYS_LP_SHUTDOWN,
    Leaf::SYS_UPDATE,
];

/// A token for the calling thread (never 0).
fn thread_token() -> u64 {
    thread_local! {
        static TOKEN: u64 = {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        };
    }
    TOKEN.with(|t| *t)
}

impl Shared {
    /// A SEAMCALL on LP `lp`: register shapes, then the dispatcher.
    pub(crate) fn seamcall(
        &self,
        lp: u32,
        rax: u64,
        args: &mut SeamcallArgs,
        shape: RegShape,
    ) -> TdxStatus {
        // P-SEAMLDR calls (bit 63) go to a different firmware, which the
        // simulator does not have: the CPU reports VMfailInvalid.
        if rax >> 63 != 0 {
            return TdxStatus::SEAMCALL_VMFAILINVALID;
        }
        // One SEAMCALL at a time per LP, as on a CPU: a thread that borrows
        // another thread's LP (an on_cpu "IPI") waits for that thread's
        // SEAMCALL to end.
        let me = thread_token();
        let busy = &self.lp_busy[lp as usize].0;
        let mut since: Option<std::time::Instant> = None;
        while let Err(other) = busy.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            assert_ne!(
                other, me,
                "tdx-sim: a SEAMCALL on LP {lp} inside another SEAMCALL of the same thread"
            );
            // The LP may be in a guest (TDH.VP.ENTER): the wait is an
            // interrupt for it, which makes the guest exit.
            self.guests.kick_lp(lp);
            let t0 = *since.get_or_insert_with(std::time::Instant::now);
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "tdx-sim: LP {lp} has run another thread's SEAMCALL for a minute \
                 (is it paused, waiting for this thread?)"
            );
            std::thread::yield_now();
        }
        struct Free<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Free<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let _free = Free(busy);
        // The entry points of the Ret and NoOutputs shapes load only RCX,
        // RDX and R8-R11; the module sees nothing meaningful elsewhere.
        let mut out = match shape {
            RegShape::SavedRet => *args,
            RegShape::Ret | RegShape::NoOutputs => {
                SeamcallArgs::regs6(args.rcx, args.rdx, args.r8, args.r9, args.r10, args.r11)
            }
        };
        let status = self.dispatch(lp, rax, &mut out);
        match shape {
            RegShape::NoOutputs => {}
            RegShape::Ret => {
                args.rcx = out.rcx;
                args.rdx = out.rdx;
                args.r8 = out.r8;
                args.r9 = out.r9;
                args.r10 = out.r10;
                args.r11 = out.r11;
            }
            RegShape::SavedRet => *args = out,
        }
        status
    }

    fn dispatch(&self, lp: u32, rax: u64, a: &mut SeamcallArgs) -> TdxStatus {
        let Ok(lv) = LeafVersion::from_rax(rax) else {
            return TdxStatus::OPERAND_INVALID; // |RAX (operand 0)
        };
        let leaf = lv.leaf();
        self.counters.leaf(lp, leaf.0);
        // The gate of tdx_vmm_dispatcher.c, in order.
        let profile = &self.machine.desc.profile;
        if lv.version() > 0 && !profile.versioned(leaf) {
            return TdxStatus::OPERAND_INVALID;
        }
        let state = self.sys.state();
        if state == SysState::Shutdown && leaf != Leaf::SYS_LP_SHUTDOWN {
            return TdxStatus::SYS_SHUTDOWN;
        }
        if state != SysState::Ready && !BEFORE_READY.contains(&leaf) {
            return TdxStatus::SYS_NOT_READY;
        }
        if !crate::leaves::implements(profile, leaf) {
            return TdxStatus::OPERAND_INVALID;
        }
        // Versioned leaves check their own highest version, after writing
        // the registers each one sets when it starts.
        if lv.version() > 0 && lv.version() > profile.max_version(leaf) {
            own_version_rejected(leaf, a);
            return TdxStatus::OPERAND_INVALID;
        }
        if self.sys.abandoned() {
            self.violation(Violation::ModuleUsedAfterAbandon { leaf: leaf.0 });
        }
        let fault = if self.faults_armed() {
            self.faults().on_call(leaf)
        } else {
            None
        };
        let stop_early = match fault {
            Some(FaultAction::Status(s)) => return s,
            Some(FaultAction::StopEarly { after } | FaultAction::FailAfter { after, .. }) => {
                Some(after)
            }
            None => None,
        };
        let pause = self.pauses.claim(leaf, lp);
        let mut call = Call {
            sim: self,
            lp,
            leaf,
            version: lv.version(),
            stop_early,
            held: HeldStack::new(&self.readers, self.readers.of(lp)),
            pause,
        };
        let status = crate::leaves::run(&mut call, a).unwrap_or_else(|s| s);
        if let Some(p) = call.pause.take() {
            p.enter(Some(status));
        }
        call.held.release_all();
        match fault {
            Some(FaultAction::FailAfter { status: s, .. })
                if status == TdxStatus::INTERRUPTED_RESUMABLE =>
            {
                s
            }
            _ => status,
        }
    }
}

/// The registers a versioned leaf writes before it rejects a version above
/// its highest (`TDX_OPERAND_INVALID|RAX`), as module 1.5.01 does
/// (`src/vmm_dispatcher/api_calls/`):
///
/// - TDH.MEM.SEPT.ADD clears RCX and RDX (`tdh_mem_sept_add.c`);
/// - TDH.MEM.SEPT.REMOVE and TDH.MEM.PAGE.PROMOTE set R9-R11 to -1 (no L2
///   S-EPT page) and clear RCX and RDX (`tdh_mem_sept_remove.c`,
///   `tdh_mem_page_promote.c`);
/// - TDH.MNG.RD and TDH.VP.RD set RDX to -1 (no next field) and clear R8
///   (`tdh_mng_rd_wr.c`, `tdh_vp_rd_wr.c`).
///
/// Other leaves the dispatcher lets through with a version (those of a
/// profile's later module) write nothing first.
fn own_version_rejected(leaf: Leaf, a: &mut SeamcallArgs) {
    match leaf {
        Leaf::MEM_SEPT_ADD => (a.rcx, a.rdx) = (0, 0),
        Leaf::MEM_SEPT_REMOVE | Leaf::MEM_PAGE_PROMOTE => {
            (a.r9, a.r10, a.r11) = (u64::MAX, u64::MAX, u64::MAX);
            (a.rcx, a.rdx) = (0, 0);
        }
        Leaf::MNG_RD | Leaf::VP_RD => (a.rdx, a.r8) = (u64::MAX, 0),
        _ => {}
    }
}
