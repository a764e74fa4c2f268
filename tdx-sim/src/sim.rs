//! The simulator: a host machine and its TDX module behind the `Seamcall`
//! and `Platform` seams, and the handles tests use to reach inside: the
//! module's locks ([`Simulator::hold`]) and a leaf stopped halfway
//! ([`Simulator::pause_next`]).

// UNSAFETY: the simulator implements the `unsafe trait`s `Seamcall` and
// `Platform`; its methods themselves do nothing memory-unsafe (simulated
// memory is a map of byte arrays).
#![allow(unsafe_code)]

use std::{collections::HashMap, ptr::NonNull, sync::Arc, time::Duration};

use tdx_api::{
    CacheMaintenance, CpuId, Cpus, DirectMap, FrameAllocator, FrameDeallocator, Hardware,
    HardwareInfo, NodeId, PackageId, Placement, PlatformError, td::TeardownReport,
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{
    Gpa, Hpa, Leaf, Pfn, PfnRun, TdxLevel, TdxStatus, metadata::PamtPageType, regs::SeptState,
};

use crate::{
    dispatch::PauseSlot,
    faults::Fault,
    guest::Guest,
    kot::KotState,
    leaves::mem::{guest_accept, td_of},
    locks::{HeldStack, LockMode, LockSide, Ordering, septe},
    machine::{MachineDesc, MachineError},
    memory::{Accounting, CacheLines, PAGE, PageState},
    sept::is_leaf_state,
    state::{HostOp, Shared, Stats, SysState},
    td::{Lifecycle, VcpuState},
    violation::Violation,
};

/// A simulated TDX host: physical memory, CPUs and packages, caches, and a
/// TDX module, reachable through [`Seamcall`] (the module) and [`Platform`](tdx_api::Platform)
/// (the host services).
///
/// All methods take `&self`, and any number of threads may use one
/// simulator at once. Leaves run in parallel as far as the module lets
/// them: each takes the module's locks ([`ModuleLock`]) with the module's
/// algorithms, holds them to its end, and answers `TDX_OPERAND_BUSY` (with
/// the lock's operand) when another leaf holds what it needs, never
/// waiting. The logical processor a SEAMCALL runs on belongs to the calling
/// thread: the one its innermost [`Cpus::on_cpu`] selected, else the
/// one it chose with [`Simulator::set_lp`]. The thread that built the
/// simulator starts on LP 0; any other thread that issues a SEAMCALL
/// without having selected an LP is placed on one, the LPs in turn, as a
/// scheduler would place it, and keeps it. A CPU runs one SEAMCALL at a
/// time: a thread that
/// selects an LP another thread is running a SEAMCALL on (as `on_cpu` does
/// for another CPU's work) waits for that SEAMCALL to end; if that
/// SEAMCALL is TDH.VP.ENTER with its guest running, the wait is an
/// interrupt for the LP and the guest exits (see [`Simulator::kick`]).
#[derive(Debug)]
pub struct Simulator {
    s: Shared,
}

/// One of the TDX module's locks, named for [`Simulator::hold`] and
/// [`Simulator::host_priority`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleLock {
    /// The PAMT entry of the page at `pfn`, at `level` (4K, 2M or 1G). The
    /// 4K entry of a TDR page is the TD's TDR lock; that of a TDVPR page
    /// the vCPU's lock.
    Pamt {
        /// The page (for a 2M or 1G entry, any page of its range).
        pfn: Pfn,
        /// Which entry.
        level: TdxLevel,
    },
    /// The TDR lock of the TD whose TDR is at this frame (its PAMT 4K
    /// entry).
    Tdr(Pfn),
    /// The op-state lock in the TDCS of the TD whose TDR is at this frame.
    OpState(Pfn),
    /// The S-EPT tree lock of the TD whose TDR is at this frame.
    SeptTree(Pfn),
    /// The lock bit of one S-EPT entry of a TD (taken exclusively, whatever
    /// the mode asked).
    SeptEntry {
        /// The TD's TDR.
        tdr: Pfn,
        /// A GPA the entry maps.
        gpa: Gpa,
        /// The entry's level.
        level: TdxLevel,
    },
    /// The TD epoch lock of the TD whose TDR is at this frame.
    Epoch(Pfn),
    /// The key ownership table's lock.
    Kot,
    /// The write-back table entry of a package (TDH.PHYMEM.CACHE.WB's
    /// mutex; taken exclusively, whatever the mode asked).
    Wbt(PackageId),
}

/// A module lock held by a test as another logical processor would hold
/// it, until this guard drops.
#[derive(Debug)]
#[must_use = "the lock is released when the guard drops"]
pub struct HeldLock<'s> {
    /// Released by its own drop.
    _held: HeldStack<'s>,
}

impl HeldLock<'_> {
    /// Releases the lock now.
    pub fn release(self) {}
}

/// A leaf stopped on its calling thread by [`Simulator::pause_next`].
#[derive(Debug)]
#[must_use = "dropping the Pause releases the leaf (or cancels the pause)"]
pub struct Pause {
    slot: Arc<PauseSlot>,
}

impl Pause {
    /// Waits (up to a minute, then panics) until the leaf is stopped, and
    /// says where: `None` after it took all its locks and passed all its
    /// checks, before it changed anything; `Some(status)` at its end (it
    /// returned before reaching that point), with the status it will
    /// return, still holding whatever it took.
    pub fn wait_entered(&self) -> Option<TdxStatus> {
        self.slot
            .wait_entered(Duration::from_secs(60))
            .expect("the paused leaf was not called within a minute")
    }

    /// Lets the leaf go on.
    pub fn release(self) {}
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.slot.release();
    }
}

impl Simulator {
    /// Builds a simulated host from its description.
    pub fn new(desc: MachineDesc) -> Result<Self, MachineError> {
        let s = Shared::new(desc)?;
        crate::lp::set(s.id, 0);
        Ok(Self { s })
    }

    /// The module profile.
    pub fn profile(&self) -> crate::profile::Profile {
        self.s.machine.desc.profile.clone()
    }

    /// The machine description the simulator was built from.
    pub fn machine(&self) -> MachineDesc {
        self.s.machine.desc.clone()
    }

    /// The module-wide state.
    pub fn module_state(&self) -> SysState {
        self.s.sys.state()
    }

    /// True once TDH.SYS.CONFIG enabled Dynamic PAMT (R8 bit 16, on a
    /// profile that has it: [`Profile::tdx_1_5_16`](crate::Profile::tdx_1_5_16)).
    pub fn dynamic_pamt(&self) -> bool {
        self.s.pamt.dynamic()
    }

    /// Dynamic PAMT: the PAMT page pair of the 2 MiB range holding `pfn`
    /// and the module's count of 4K pages in use in it, or `None` if the
    /// range has none (or is outside the initialized TDMRs).
    pub fn pamt_pair(&self, pfn: Pfn) -> Option<([Pfn; 2], u64)> {
        let pa = pfn.as_u64().checked_mul(PAGE)?;
        let t = self.s.pamt.block(pa)?;
        t.has_pair(pa).then(|| {
            let m = t.mid(pa);
            let f = |i: usize| Pfn::new(m.pair[i].load(Ordering::Relaxed));
            ([f(0), f(1)], m.count.load(Ordering::Relaxed))
        })
    }

    /// The state of `hkid` in the module's key ownership table.
    pub fn kot_state(&self, hkid: u16) -> KotState {
        self.s.kot.data().get(hkid)
    }

    /// Pages donated to the extension pool so far, and whether TDH.EXT.INIT
    /// has completed.
    pub fn ext_status(&self) -> (u64, bool) {
        let d = self.s.sys.data();
        (d.ext.pool_pages, d.ext.initialized)
    }

    /// TDG.MEM.PAGE.ACCEPT as a guest would make it, for tests that run no
    /// vCPU: the module's guest ACCEPT ([`Guest::accept`] describes it) on
    /// the TD whose TDR is `tdr`, outside any vCPU. `level` is 0 (4K) or 1
    /// (2M); 1G is `TDX_OPERAND_INVALID|RCX`, as in module 1.5.01. A page
    /// already accepted is `TDX_PAGE_ALREADY_ACCEPTED` with the level of its
    /// leaf; a 2M accept where the host mapped 4K pages is
    /// `TDX_PAGE_SIZE_MISMATCH|1`; an entry whose guest lock a host leaf
    /// holds, or marked with host priority, is `TDX_OPERAND_BUSY|RCX`.
    /// Where the module would make an EPT-violation TD exit (the entry is
    /// not PENDING, or the walk stops above at a missing, blocked or
    /// pending entry), this helper, which has no vCPU to exit, returns
    /// `TDX_EPT_WALK_FAILED|RCX` and changes nothing.
    pub fn guest_accept(&self, tdr: Pfn, gpa: u64, level: u8) -> TdxStatus {
        guest_accept(&self.s, tdr.as_u64(), gpa, level)
    }

    /// Gives the vCPU whose TDVPR is `tdvpr` its guest program: what runs
    /// when the host enters the vCPU with TDH.VP.ENTER. The program starts
    /// at the first entry and stops at each TD exit inside the operation
    /// that exited; the next entry resumes it there ([`crate::guest`] has
    /// the model). A vCPU with no program halts (a GHCI HLT TDVMCALL at
    /// every entry), as does one whose program returned.
    ///
    /// ```
    /// use tdx_sim::{Guest, MachineDesc, Simulator};
    /// use tdx_types::Pfn;
    ///
    /// let sim = Simulator::new(MachineDesc::new(vec![(1 << 32, 1 << 33)])).unwrap();
    /// // A vCPU (TDVPR at this frame) that accepts its first private page,
    /// // writes it, then halts.
    /// sim.set_guest(Pfn::new(0x10_0000), |g: &mut Guest| {
    ///     assert_eq!(g.accept(0, 0), tdx_types::TdxStatus::SUCCESS);
    ///     g.write(0, b"hello").unwrap();
    ///     g.halt();
    /// });
    /// ```
    ///
    /// # Panics
    ///
    /// If the vCPU's guest has started already.
    pub fn set_guest(&self, tdvpr: Pfn, program: impl FnOnce(&mut Guest) + Send + 'static) {
        self.s.guests.set_program(tdvpr.as_u64(), Box::new(program));
    }

    /// Kicks the vCPU whose TDVPR is `tdvpr`, as an IPI to the LP running
    /// it would: if the vCPU is in the guest (inside TDH.VP.ENTER), it
    /// leaves at its next operation with an external-interrupt TD exit
    /// (RAX = 1, R9 = interruption information 0x800000FD), which ends its
    /// count in the TD's TLB epoch. Returns whether the vCPU was in the
    /// guest; a kick of a vCPU outside the guest does nothing (the next
    /// entry is not affected).
    pub fn kick(&self, tdvpr: Pfn) -> bool {
        self.s.guests.kick(tdvpr.as_u64())
    }

    /// Sets how the VMM's shared EPT of the TD whose TDR is `tdr` maps the
    /// shared 4K page at `gpa` (the shared bit set, as the guest uses it):
    /// `None` unmaps it. Only the guest model reads it ([`crate::guest`]);
    /// the module has no part in the shared EPT.
    ///
    /// # Panics
    ///
    /// If `tdr` is not a TD's TDR.
    pub fn map_shared(&self, tdr: Pfn, gpa: u64, m: Option<crate::guest::SharedMapping>) {
        let td = td_of(&self.s, tdr.as_u64()).expect("a TD's TDR");
        let mut ctl = td.ctl();
        match m {
            Some(m) => ctl.shared_ept.insert(gpa & !0xFFF, m),
            None => ctl.shared_ept.remove(&(gpa & !0xFFF)),
        };
        drop(ctl);
        crate::trace::host_map_shared(&self.s, tdr.as_u64(), gpa, m);
    }

    /// The simulated TSC: one clock for every LP, 0 when the simulator is
    /// built, moved only by [`Simulator::set_tsc`]. TDH.VP.ENTER refuses a
    /// vCPU whose last TD exit is later than now (`TDX_TSC_ROLLBACK`); a
    /// guest TDCALL that keeps meeting a host-priority lock for
    /// [`HP_LOCK_TIMEOUT`](crate::guest::HP_LOCK_TIMEOUT) ticks makes the
    /// host-priority timeout exit.
    pub fn tsc(&self) -> u64 {
        self.s.tsc.load(Ordering::Acquire)
    }

    /// Sets the simulated TSC (backwards too, to test TSC rollback).
    pub fn set_tsc(&self, tsc: u64) {
        self.s.tsc.store(tsc, Ordering::Release);
        crate::trace::host_tsc(&self.s, tsc);
    }

    /// The module's state, for the trace module's replay.
    pub(crate) fn shared(&self) -> &Shared {
        &self.s
    }

    /// Sets host MSR `msr` of LP `lp` (the simulated CPU's, which the
    /// module reads; see [`HostMsr`](crate::HostMsr)). `false`, and nothing
    /// set, if the machine has no LP `lp`.
    pub fn set_host_msr(&self, lp: u32, msr: crate::HostMsr, value: u64) -> bool {
        if lp >= self.s.machine.desc.lps() {
            return false;
        }
        let mut m = self.s.host_msrs.lock().unwrap_or_else(|e| e.into_inner());
        m.insert((lp, msr.index()), value);
        true
    }

    /// Test hook for the interruptible 2M TDG.MEM.PAGE.ACCEPT: the next 2M
    /// ACCEPT of the vCPU at `tdvpr` that zeroes a chunk finds an interrupt
    /// pending (the vCPU is kicked) once it has zeroed `chunks` more 4K
    /// chunks (at least 1: the module checks after each chunk but the
    /// last). The accept stops there, keeps its ACCEPT_COUNTER, and the
    /// vCPU makes the kick's external-interrupt exit. Nothing happens if
    /// no vCPU has its TDVPR at `tdvpr`.
    pub fn kick_during_accept(&self, tdvpr: Pfn, chunks: u32) {
        self.s.vcpus.try_with(tdvpr.as_u64(), |vc| {
            vc.accept_kick_after = Some(chunks.max(1));
        });
    }

    /// True while the vCPU whose TDVPR is `tdvpr` is in the guest (inside
    /// TDH.VP.ENTER).
    pub fn in_guest(&self, tdvpr: Pfn) -> bool {
        self.s.guests.in_guest(tdvpr.as_u64())
    }

    /// The MRTD of the TD whose TDR is `tdr`, once finalized.
    pub fn mrtd(&self, tdr: Pfn) -> Option<[u8; 48]> {
        td_of(&self.s, tdr.as_u64()).and_then(|t| t.ctl().mrtd)
    }

    /// Adds a scripted fault.
    pub fn inject(&self, fault: Fault) {
        self.s.faults().push(fault);
        self.s.arm_faults();
    }

    /// Turns on seeded random faults (see [`FaultPlan::random`](crate::FaultPlan::random)).
    pub fn inject_random(&self, seed: u64, per_million: u32) {
        self.s.faults().random(seed, per_million);
        self.s.arm_faults();
    }

    /// The faults that fired so far.
    pub fn fired_faults(&self) -> Vec<(Leaf, u64, crate::faults::FaultAction)> {
        self.s.faults().fired().to_vec()
    }

    /// The logical processor the calling thread's SEAMCALLs run on now.
    ///
    /// # Panics
    ///
    /// If the calling thread selected none (it is not the thread that built
    /// the simulator and called neither [`Simulator::set_lp`] nor
    /// [`Cpus::on_cpu`]).
    pub fn current_lp(&self) -> u32 {
        self.thread_lp()
    }

    /// Selects the logical processor for the calling thread's following
    /// SEAMCALLs (what [`Cpus::on_cpu`] does for the length of its
    /// closure). Inside an `on_cpu` closure it changes that closure's LP
    /// until the closure ends.
    pub fn set_lp(&self, lp: u32) {
        assert!(lp < self.s.machine.desc.lps(), "LP {lp} does not exist");
        crate::lp::set(self.s.id, lp);
    }

    /// The calling thread's LP (placed on one, the LPs in turn, if it
    /// selected none: see the `lp` module).
    fn thread_lp(&self) -> u32 {
        crate::lp::current_or_place(self.s.id, || self.s.machine.desc.lps())
    }

    /// The LP whose counters a host service call goes to.
    fn stat_lp(&self) -> u32 {
        crate::lp::current(self.s.id).unwrap_or(0)
    }

    /// Page counts by state.
    pub fn accounting(&self) -> Accounting {
        self.s.mem.accounting()
    }

    /// The state of a frame, or `None` if it is not RAM.
    pub fn page_state(&self, pfn: Pfn) -> Option<PageState> {
        self.s.mem.state(pfn.as_u64())
    }

    /// Rule breaks recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.s.violations().clone()
    }

    /// The guest frames of TDs that were dropped instead of torn down (what
    /// [`FrameDeallocator::return_guest_frames`] received), oldest first,
    /// taken out of the record: the caller owns them again and frees them
    /// as it frees the frames of an unmap or a teardown report.
    pub fn take_returned_guest_frames(&self) -> Vec<PfnRun> {
        core::mem::take(
            &mut *self
                .s
                .returned_guest_frames
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// The teardown reports of TDs that were dropped instead of torn down
    /// (what [`FrameDeallocator::dropped_td`] received), oldest first.
    pub fn dropped_td_reports(&self) -> Vec<TeardownReport> {
        self.s
            .dropped_tds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.s.counters.stats()
    }

    /// Writes physical memory as a trace or a test sets it up: no ownership
    /// check beyond recording a write to module-owned or non-RAM memory.
    pub fn poke(&self, pa: u64, data: &[u8]) {
        self.host_write(pa, data);
    }

    fn host_write(&self, pa: u64, data: &[u8]) {
        if self.s.host_access(pa, data.len(), true) {
            self.s.mem.write(pa, data);
            // host_access checked that the range does not overflow.
            let (a, b) = (pa / PAGE, (pa + data.len() as u64).div_ceil(PAGE));
            self.s.mem.mark_cache(a, b, CacheLines::HostDirty);
        }
    }

    /// Reads physical memory the way the module sees it (no checks).
    pub fn peek(&self, pa: u64, buf: &mut [u8]) {
        self.s.mem.read(pa, buf);
    }

    // ---- the module's locks, for tests ----------------------------------

    /// Takes `lock` in `mode` as a host-side leaf on another logical
    /// processor would (with the module's algorithm: one attempt, no
    /// waiting), and holds it until the returned guard drops. While it is
    /// held, the simulator's leaves that need it answer
    /// `TDX_OPERAND_BUSY` with the lock's operand, exactly as when another
    /// LP's leaf holds it.
    ///
    /// `Err` with `TDX_OPERAND_BUSY` (no operand) if the lock cannot be
    /// taken now (as a host, a failed attempt marks a host-priority lock
    /// for host priority, as the module does), or `TDX_OPERAND_INVALID` if
    /// there is no such lock (no TD at that TDR, a page outside the
    /// initialized TDMRs, an S-EPT entry the walk does not reach, a package
    /// that does not exist).
    pub fn hold(&self, lock: ModuleLock, mode: LockMode) -> Result<HeldLock<'_>, TdxStatus> {
        self.hold_as(lock, mode, LockSide::Host)
    }

    /// [`Simulator::hold`] as a host or as a guest (a TDCALL leaf): a guest
    /// attempt on a lock marked for host priority fails with
    /// `TDX_OPERAND_BUSY_HOST_PRIORITY` and does not mark it.
    pub fn hold_as(
        &self,
        lock: ModuleLock,
        mode: LockMode,
        side: LockSide,
    ) -> Result<HeldLock<'_>, TdxStatus> {
        let mut held = HeldStack::new(&self.s.readers, None);
        let busy = |b: crate::locks::Busy| b.status();
        match self.word(lock)? {
            Word::Hp(l) => held.sharex_hp(l, mode, side).map_err(busy)?,
            Word::Plain(l) => held.sharex(l, mode).map_err(busy)?,
            Word::Septe(e) => held.septe(e, side).map_err(busy)?,
            Word::Mutex(m) => held.mutex(m).map_err(busy)?,
        }
        Ok(HeldLock { _held: held })
    }

    /// True if `lock` is marked for host priority (a host failed on it
    /// since a host last took it). Locks without host priority (tree,
    /// epoch, KOT, write-back table) answer false.
    pub fn host_priority(&self, lock: ModuleLock) -> bool {
        match self.word(lock) {
            Ok(Word::Hp(l)) => l.host_priority(),
            Ok(Word::Septe(e)) => e.load(Ordering::Relaxed) & septe::HP != 0,
            _ => false,
        }
    }

    /// The word of a module lock.
    fn word(&self, lock: ModuleLock) -> Result<Word<'_>, TdxStatus> {
        let s = &self.s;
        let invalid = TdxStatus::OPERAND_INVALID;
        let td = |tdr: Pfn| td_of(s, tdr.as_u64()).ok_or(invalid);
        Ok(match lock {
            ModuleLock::Pamt { pfn, level } => {
                let pa = pfn.hpa().as_u64();
                let l = level as u8;
                if l > 2 {
                    return Err(invalid);
                }
                let t = s.pamt.block(pa).ok_or(invalid)?;
                Word::Hp(&t.entry(l, pa).lock)
            }
            ModuleLock::Tdr(tdr) => {
                td(tdr)?;
                let pa = tdr.hpa().as_u64();
                Word::Hp(&s.pamt.block(pa).ok_or(invalid)?.entry(0, pa).lock)
            }
            ModuleLock::OpState(tdr) => Word::Hp(&td(tdr)?.op_lock),
            ModuleLock::SeptTree(tdr) => Word::Plain(&td(tdr)?.tree_lock),
            ModuleLock::Epoch(tdr) => Word::Plain(&td(tdr)?.epoch_lock),
            ModuleLock::SeptEntry { tdr, gpa, level } => {
                let td = td(tdr)?;
                let slot = td
                    .sept
                    .walk(td.pwl(), gpa.as_u64(), level as u8)
                    .map_err(|_| invalid)?;
                Word::Septe(slot.word)
            }
            ModuleLock::Kot => Word::Plain(&s.kot.lock),
            ModuleLock::Wbt(PackageId(p)) => {
                Word::Mutex(&s.kot.wbt.get(p as usize).ok_or(invalid)?.lock)
            }
        })
    }

    /// Stops the next call of `leaf` (on any thread) once it has taken all
    /// its locks and passed all its checks, before it changes anything;
    /// a call that returns before that point stops at its end instead,
    /// still holding what it took. The leaf's thread waits there until the
    /// returned [`Pause`] is released or dropped. Use it to interleave two
    /// leaves exactly: start the paused one on another thread, wait for it
    /// with [`Pause::wait_entered`], run the other one, release.
    pub fn pause_next(&self, leaf: Leaf) -> Pause {
        Pause {
            slot: self.s.pauses.arm(leaf, None),
        }
    }

    /// [`Simulator::pause_next`] for a call of `leaf` on logical processor
    /// `lp` only.
    pub fn pause_next_on(&self, leaf: Leaf, lp: u32) -> Pause {
        Pause {
            slot: self.s.pauses.arm(leaf, Some(lp)),
        }
    }

    // ---- invariants -----------------------------------------------------

    /// Checks the simulator's invariants: the page accounting balances, the
    /// pages the module owns are exactly the ones the host sees as
    /// module-owned (or leaked), the module's own records agree (no module lock is held, every TD's
    /// child count is the number of pages the PAMT gives it, every S-EPT
    /// entry points to a page the PAMT gives that TD, and the other way
    /// round), and no violation was recorded. Every test that uses the
    /// simulator ends with this, with no leaf running and no [`HeldLock`]
    /// alive.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        self.check_memory()?;
        self.check_module().map_err(InvariantError::Module)?;
        let v = self.s.violations();
        if !v.is_empty() {
            return Err(InvariantError::Violations(v.clone()));
        }
        Ok(())
    }

    fn check_memory(&self) -> Result<(), InvariantError> {
        let mem = &self.s.mem;
        let shards = mem.lock_all();
        let mut a = Accounting::default();
        for sh in &shards {
            for (s, e, st) in sh.states() {
                let n = e - s;
                a.total += n;
                match st {
                    PageState::Free => a.free += n,
                    PageState::Host => a.host += n,
                    PageState::Module => a.module += n,
                    PageState::Leaked => a.leaked += n,
                }
            }
        }
        let ram: u64 = mem.ram().iter().map(|&(b, e)| e - b).sum();
        if a.free + a.host + a.module + a.leaked != a.total || a.total != ram {
            return Err(InvariantError::Accounting(a, ram));
        }
        for sh in &shards {
            // Module-owned (module's view) => Module or Leaked (host's view).
            for (start, end, _) in sh.owned() {
                for (ps, _, st) in sh.states_in(start, end) {
                    if !matches!(st, PageState::Module | PageState::Leaked) {
                        return Err(InvariantError::Ownership {
                            pfn: ps.max(start),
                            host: st,
                            module: true,
                        });
                    }
                }
            }
            // Module (host's view) => owned by the module.
            for (start, end, st) in sh.states() {
                if st == PageState::Module && !sh.owned_all_in(start, end) {
                    let pfn = (start..end)
                        .find(|&p| sh.owned_at(p).is_none())
                        .unwrap_or(start);
                    return Err(InvariantError::Ownership {
                        pfn,
                        host: st,
                        module: false,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_module(&self) -> Result<(), String> {
        let s = &self.s;
        let r = &s.readers;
        if s.kot.lock.is_held(r) || s.sys.lock.is_held(r) {
            return Err("the KOT or global lock is held with no leaf running".into());
        }
        if let Some(lp) = r.in_use() {
            return Err(format!(
                "LP {lp} holds a lock in a reader slot with no leaf running"
            ));
        }
        for (pkg, w) in s.kot.wbt.iter().enumerate() {
            if w.lock.is_held() {
                return Err(format!("package {pkg}'s write-back table entry is held"));
            }
        }
        // Pages the PAMT gives each TD (by TDR frame), in 4K pages, and the
        // REG/EPT pages among them by (level, frame).
        let mut charged: HashMap<u64, i64> = HashMap::new();
        let mut given: HashMap<(u8, u64), (PamtPageType, u64)> = HashMap::new();
        for t in s.pamt.tdmrs() {
            for (level, pa, e) in t.entries() {
                if e.lock.is_held(r) {
                    return Err(format!("the PAMT entry of {pa:#x} (level {level}) is held"));
                }
                let pe = e.get();
                match pe.pt {
                    PamtPageType::REG | PamtPageType::EPT => {
                        *charged.entry(pe.owner).or_default() += 1 << (9 * level);
                        given.insert((level, pa / PAGE), (pe.pt, pe.owner));
                    }
                    PamtPageType::TDCX | PamtPageType::TDVPR => {
                        *charged.entry(pe.owner).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
        // vCPUs: none in the guest (no leaf runs), and the associated ones
        // of each TD (by TDR frame, the TDVPR's PAMT owner).
        // A fatal TD's vCPUs may stay ACTIVE (NON_RECOVERABLE_TD exits
        // leave the state as it was) and its refcounts nonzero (a
        // NON_ACCESSIBLE exit does not decrement them).
        let mut associated: HashMap<u64, u32> = HashMap::new();
        let mut active: HashMap<u64, u64> = HashMap::new();
        s.vcpus.for_each(|tdvpr, v| {
            let owner = s
                .pamt
                .block(tdvpr * PAGE)
                .map_or(0, |t| t.peek(0, tdvpr * PAGE).owner);
            if v.state == VcpuState::Active {
                active.insert(owner, tdvpr);
            }
            if v.assoc_lp.is_some() {
                *associated.entry(owner).or_default() += 1;
            }
        });
        let freed: std::collections::HashSet<u32> = s.tds.freed().into_iter().collect();
        for (slot, td) in s.tds.iter() {
            if freed.contains(&slot) {
                continue;
            }
            let tdr = td.tdr();
            if td.op_lock.is_held(r) || td.tree_lock.is_held(r) || td.epoch_lock.is_held(r) {
                return Err(format!("a lock of TD {tdr:#x} is held"));
            }
            if !td.fatal()
                && let Some(v) = active.get(&tdr)
            {
                return Err(format!(
                    "the vCPU at frame {v:#x} is ACTIVE with no TDH.VP.ENTER running"
                ));
            }
            if !td.fatal() && (td.refcount(0) != 0 || td.refcount(1) != 0) {
                return Err(format!(
                    "TD {tdr:#x}: TLB refcounts {} and {} with no vCPU in the guest",
                    td.refcount(0),
                    td.refcount(1)
                ));
            }
            let assoc = associated.remove(&tdr).unwrap_or(0);
            if assoc != td.num_assoc_vcpus() {
                return Err(format!(
                    "TD {tdr:#x}: {assoc} vCPUs associated, NUM_ASSOC_VCPUS {}",
                    td.num_assoc_vcpus()
                ));
            }
            let cnt = td.chldcnt.sum();
            let pamt = charged.remove(&tdr).unwrap_or(0);
            if cnt != pamt {
                return Err(format!(
                    "TD {tdr:#x}: child count {cnt}, but the PAMT gives it {pamt} pages"
                ));
            }
            if td.lifecycle() == Lifecycle::Teardown {
                // Reclaim frees pages without touching the S-EPT.
                continue;
            }
            let mut mapped = 0usize;
            for (level, gpa, w) in td.sept.entries(td.pwl()) {
                if w & septe::LOCK != 0 {
                    return Err(format!(
                        "TD {tdr:#x}: S-EPT entry {gpa:#x} (level {level}) is locked"
                    ));
                }
                let Some(e) = td.sept.view(w) else { continue };
                let want = if is_leaf_state(e.state) {
                    (level, PamtPageType::REG)
                } else if matches!(e.state, SeptState::NL_MAPPED | SeptState::NL_BLOCKED) {
                    (0, PamtPageType::EPT)
                } else {
                    continue;
                };
                match given.get(&(want.0, e.pfn)) {
                    Some(&(pt, owner)) if pt == want.1 && owner == tdr => mapped += 1,
                    other => {
                        return Err(format!(
                            "TD {tdr:#x}: S-EPT entry {gpa:#x} (level {level}, {:?}) points to \
                             frame {:#x}, which the PAMT records as {other:?}",
                            e.state, e.pfn
                        ));
                    }
                }
            }
            let owned = given.values().filter(|&&(_, o)| o == tdr).count();
            if owned != mapped {
                return Err(format!(
                    "TD {tdr:#x}: the PAMT gives it {owned} private and S-EPT pages, its S-EPT \
                     maps {mapped}"
                ));
            }
        }
        if let Some((tdr, n)) = charged.into_iter().find(|&(_, n)| n != 0) {
            return Err(format!("{n} pages are charged to {tdr:#x}, which is no TD"));
        }
        s.check_pamt_pairs()
    }

    /// Approximate bytes of host memory the simulator's own state uses
    /// beyond its fixed size, for benches: page contents stored, range-map
    /// entries (an estimate of 48 bytes each), and the PAMT and every TD's
    /// S-EPT (exact heap bytes of their chunks and pages).
    pub fn footprint_bytes(&self) -> usize {
        let s = &self.s;
        let freed: std::collections::HashSet<u32> = s.tds.freed().into_iter().collect();
        s.mem.materialized_pages() * PAGE as usize
            + (s.mem.cache_ranges() + s.mem.owned_ranges()) * 48
            + s.pamt.tdmrs().iter().map(|t| t.heap_bytes()).sum::<usize>()
            + s.tds
                .iter()
                .filter(|(i, _)| !freed.contains(i))
                .map(|(_, t)| t.sept.heap_bytes())
                .sum::<usize>()
    }
}

/// A module lock's word.
enum Word<'s> {
    Hp(&'s crate::locks::SharexHp),
    Plain(&'s crate::locks::Sharex),
    Septe(&'s crate::locks::AtomicU64),
    Mutex(&'s crate::locks::Mutex),
}

/// Why [`Simulator::check_invariants`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// Page counts do not add up.
    #[error("page accounting does not balance: {0:?}, RAM frames {1}")]
    Accounting(Accounting, u64),
    /// The host's and the module's views of a page disagree.
    #[error("frame {pfn:#x}: host sees {host:?}, module {} it", if *module { "owns" } else { "does not own" })]
    Ownership {
        /// The frame.
        pfn: u64,
        /// The host's view.
        host: PageState,
        /// Whether the module owns it.
        module: bool,
    },
    /// Rule breaks were recorded.
    #[error("{} violation(s), first: {}", .0.len(), .0[0])]
    Violations(Vec<Violation>),
    /// The module's own records disagree: a lock held with no leaf running,
    /// a child count that is not the number of pages the PAMT gives a TD,
    /// or an S-EPT entry and the PAMT that do not match.
    #[error("module records: {0}")]
    Module(String),
}

// SAFETY: the simulator behaves as the module's register ABI says: it reads
// the inputs of `shape`, writes back exactly the outputs of `shape`
// (`Shared::seamcall`), and returns the status its model of the module
// produced. Its "memory" is simulated, so no real memory changes hands.
unsafe impl Seamcall for Simulator {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let lp = self.thread_lp();
        self.s.seamcall(lp, rax, args, shape)
    }
}

// The platform traits. The simulator's "memory" is its own map, so none of
// them touches real memory.

// SAFETY: allocations never overlap: the accounting map has one state per
// frame, and allocation takes frames out of the free index under its lock.
unsafe impl FrameAllocator for Simulator {
    fn alloc_pages(
        &self,
        count: u64,
        align: u64,
        placement: Placement,
    ) -> Result<PfnRun, PlatformError> {
        let err = PlatformError::OutOfMemory {
            count,
            align,
            placement,
        };
        let s = &self.s;
        let align = align.max(1);
        if count == 0 || !align.is_power_of_two() {
            return Err(err);
        }
        let start = match placement {
            Placement::Exact(pfn) => {
                let p = pfn.as_u64();
                if p % align != 0 || !s.mem.alloc_exact(p, p + count) {
                    return Err(err);
                }
                p
            }
            Placement::Node(NodeId(n)) => {
                let within = s.machine.node_frames.get(&n).cloned();
                s.mem
                    .alloc(count, align, within.as_deref())
                    .or_else(|| s.mem.alloc(count, align, None))
                    .ok_or(err)?
            }
            Placement::Anywhere => s.mem.alloc(count, align, None).ok_or(err)?,
        };
        if let Some((pfn, keyid)) = s.mem.private_lines(start, start + count) {
            s.violation(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "allocated",
            });
        }
        PfnRun::try_new(Pfn::new(start), count).map_err(|_| err)
    }
}

// SAFETY: a free puts frames back in the free index and nothing else; a
// leak or a return of guest frames only records them.
unsafe impl FrameDeallocator for Simulator {
    unsafe fn free_pages(&self, run: PfnRun) {
        let s = &self.s;
        let (a, b) = (run.first().as_u64(), run.end());
        s.take_back_pamt(a, b);
        let bad: Vec<(u64, PageState)> = s
            .mem
            .states(a, b)
            .into_iter()
            .filter(|&(_, _, st)| st != PageState::Host)
            .map(|(p, _, st)| (p, st))
            .collect();
        if !s.mem.is_ram(a, b) || !bad.is_empty() {
            for (pfn, state) in bad {
                s.violation(Violation::FreedPageNotAllocated { pfn, state });
            }
            return;
        }
        if let Some((pfn, keyid)) = s.mem.private_lines(a, b) {
            s.violation(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "freed",
            });
        }
        s.mem.release(a, b);
    }

    fn leak_pages(&self, run: PfnRun, _reason: &'static str) {
        let s = &self.s;
        let (a, b) = (run.first().as_u64(), run.end());
        let bad: Vec<(u64, PageState)> = s
            .mem
            .states(a, b)
            .into_iter()
            .filter(|&(_, _, st)| !matches!(st, PageState::Host | PageState::Module))
            .map(|(p, _, st)| (p, st))
            .collect();
        for (pfn, state) in bad {
            s.violation(Violation::LeakedPageNotOwned { pfn, state });
        }
        s.mem.leak(a, b);
    }

    /// Records the run for [`Simulator::take_returned_guest_frames`] and
    /// checks that it is host memory with no private line left; frees
    /// nothing (the test that made the frames frees them, as a VMM would).
    unsafe fn return_guest_frames(&self, run: PfnRun) {
        let s = &self.s;
        let (a, b) = (run.first().as_u64(), run.end());
        for (pfn, _, state) in s.mem.states(a, b) {
            if state != PageState::Host {
                s.violation(Violation::ReturnedGuestFrameNotHost { pfn, state });
            }
        }
        if let Some((pfn, keyid)) = s.mem.private_lines(a, b) {
            s.violation(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "returned to the VMM",
            });
        }
        s.returned_guest_frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(run);
    }

    fn dropped_td(&self, report: &TeardownReport) {
        self.s
            .dropped_tds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(report.clone());
    }
}

// SAFETY: reads and writes reach the simulated memory only (checked
// against the module's ownership); there is no direct map to hand out.
unsafe impl DirectMap for Simulator {
    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        if self.s.host_access(pa.as_u64(), buf.len(), false) {
            self.s.mem.read(pa.as_u64(), buf);
        } else {
            // Ciphertext or poison, as far as the host can tell.
            buf.fill(0xFF);
        }
    }

    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        self.host_write(pa.as_u64(), data);
    }

    fn direct_map(&self, _: Hpa) -> Option<NonNull<u8>> {
        None
    }
}

// SAFETY: `on_cpu` runs the closure synchronously with the LP selected, and
// the machine description does not change.
unsafe impl Cpus for Simulator {
    fn cpus(&self) -> u32 {
        self.s.machine.desc.lps()
    }

    fn package_of(&self, cpu: CpuId) -> PackageId {
        PackageId(self.s.machine.package_of(cpu.0))
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        Some(NodeId(self.s.machine.desc.node_of(pfn.hpa().as_u64())))
    }

    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        assert!(cpu.0 < self.s.machine.desc.lps(), "{cpu} does not exist");
        crate::lp::scoped(self.s.id, cpu.0, f);
    }

    fn yield_now(&self) {
        self.s.counters.host(self.stat_lp(), HostOp::Yield, 1);
    }
}

// SAFETY: each operation updates the cache model before it returns (the
// simulator models the caches, so it overrides every provided method).
unsafe impl CacheMaintenance for Simulator {
    fn wbinvd_all(&self) {
        self.s.counters.host(self.stat_lp(), HostOp::Wbinvd, 1);
        self.s.mem.flush_all();
    }

    fn clflush_page(&self, pfn: Pfn) {
        self.s.counters.host(self.stat_lp(), HostOp::Clflush, 1);
        let p = pfn.as_u64();
        self.s.mem.flush_range(p, p + 1);
    }

    unsafe fn movdir64b_clear(&self, run: PfnRun) -> Result<(), PlatformError> {
        let s = &self.s;
        let (a, b) = (run.first().as_u64(), run.end());
        // Clearing a PAMT after a failed configuration (the partial-write
        // erratum) takes it back, as freeing it would.
        s.take_back_pamt(a, b);
        if !s.host_access(a * PAGE, (run.bytes()) as usize, true) {
            // Recorded as a violation; a real host would have written
            // module memory.
            return Ok(());
        }
        if let Some((pfn, keyid)) = s.mem.private_lines(a, b) {
            // A dirty private line written back later would land on the
            // freshly cleared memory: flush first.
            s.violation(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "cleared with MOVDIR64B",
            });
        }
        s.counters
            .host(self.stat_lp(), HostOp::Movdir64b, run.count());
        s.mem.zero(a, b);
        // Direct stores of whole lines: nothing dirty stays behind.
        s.mem.flush_range(a, b);
        Ok(())
    }
}

// SAFETY: the machine description's facts (a test may set
// `reported_keyid_shift` to make them false on purpose).
unsafe impl HardwareInfo for Simulator {
    fn hardware(&self) -> Hardware {
        let desc = &self.s.machine.desc;
        let keyid_shift = desc
            .reported_keyid_shift
            .unwrap_or_else(|| desc.hkid_start_bit());
        Hardware::new(desc.keyid_partition(), keyid_shift, desc.errata)
    }
}

/// Per-leaf call counts by name, for reports.
pub fn seamcalls_by_name(stats: &Stats) -> HashMap<String, u64> {
    stats
        .seamcalls
        .iter()
        .map(|(&l, &n)| (Leaf(l).to_string(), n))
        .collect()
}

#[cfg(test)]
#[path = "invariant_tests.rs"]
mod invariant_tests;

#[cfg(test)]
#[path = "tdmr_init_tests.rs"]
mod tdmr_init_tests;
