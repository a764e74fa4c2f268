//! The simulator: a host machine and its TDX module behind the `Seamcall`
//! and `Platform` seams.

// UNSAFETY: the simulator implements the `unsafe trait`s `Seamcall` and
// `Platform`; its methods themselves do nothing memory-unsafe (simulated
// memory is a map of byte arrays).
#![allow(unsafe_code)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
};

use tdx_api::{
    CpuId, Errata, NodeId, PackageId, Placement, Platform, PlatformError, td::TeardownReport,
};
use tdx_sys::{RegShape, Seamcall, SeamcallArgs};
use tdx_types::{Hpa, Leaf, LeafVersion, Pfn, PfnRun, TdxStatus, metadata::KeyIdPartition};

use crate::{
    faults::{Fault, FaultPlan},
    machine::{MachineDesc, MachineError},
    memory::{Accounting, CacheLines, PAGE, PageState, PhysMem},
    module::Module,
    violation::Violation,
};

/// The validated machine.
#[derive(Debug)]
pub(crate) struct Machine {
    pub(crate) desc: MachineDesc,
    pub(crate) cmrs: Vec<(u64, u64)>,
    /// Mask of the KeyID bits of an address.
    pub(crate) hkid_mask: u64,
    pub(crate) hkid_start: u32,
    /// First and last private (TDX) KeyID.
    pub(crate) private_hkids: (u16, u16),
    /// Frame ranges per NUMA node.
    pub(crate) node_frames: BTreeMap<u32, Vec<(u64, u64)>>,
}

impl Machine {
    fn new(desc: MachineDesc) -> Result<(Self, Vec<(u64, u64)>), MachineError> {
        let (memory, cmrs) = desc.validate()?;
        let hkid_start = desc.hkid_start_bit();
        let hkid_mask = ((1u64 << desc.phys_addr_bits) - 1) & !((1u64 << hkid_start) - 1);
        let first = desc.mktme_keyids + 1;
        let last = desc.mktme_keyids + desc.tdx_keyids;
        let mut node_frames: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for &(s, e, n) in &desc.numa {
            node_frames
                .entry(n)
                .or_default()
                .push((s.div_ceil(PAGE), e / PAGE));
        }
        let m = Self {
            cmrs,
            hkid_mask,
            hkid_start,
            private_hkids: (first as u16, last as u16),
            node_frames,
            desc,
        };
        Ok((m, memory))
    }

    /// True if `pa` has any KeyID bit set.
    pub(crate) fn has_hkid_bits(&self, pa: u64) -> bool {
        pa & self.hkid_mask != 0
    }

    /// The KeyID field of `pa`.
    pub(crate) fn hkid_of(&self, pa: u64) -> u64 {
        (pa & self.hkid_mask) >> self.hkid_start
    }

    pub(crate) fn is_private_hkid(&self, hkid: u64) -> bool {
        hkid >= u64::from(self.private_hkids.0) && hkid <= u64::from(self.private_hkids.1)
    }

    /// The shared-HPA check (`shared_hpa_check`): aligned, below 2^52, not
    /// overlapping SEAMRR over `len` bytes, and a KeyID below the first
    /// private one.
    pub(crate) fn shared_hpa_ok(&self, pa: u64, align: u64, len: u64) -> bool {
        if !pa.is_multiple_of(align) || pa >= 1 << 52 {
            return false;
        }
        if let Some((s, e)) = self.desc.seamrr
            && pa < e
            && pa.saturating_add(len) > s
        {
            return false;
        }
        self.hkid_of(pa) < u64::from(self.private_hkids.0)
    }

    pub(crate) fn package_of(&self, lp: u32) -> u32 {
        lp / self.desc.lps_per_package
    }
}

/// Counters the simulator keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// SEAMCALLs issued, by leaf number.
    pub seamcalls: BTreeMap<u16, u64>,
    /// WBINVD on all CPUs.
    pub wbinvd: u64,
    /// CLFLUSHed pages.
    pub clflush_pages: u64,
    /// Pages cleared with MOVDIR64B.
    pub movdir64b_pages: u64,
    /// `yield_now` calls.
    pub yields: u64,
}

impl Stats {
    /// Total SEAMCALLs.
    pub fn total_seamcalls(&self) -> u64 {
        self.seamcalls.values().sum()
    }
}

/// Everything behind the simulator's lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) machine: Machine,
    pub(crate) mem: PhysMem,
    pub(crate) module: Module,
    pub(crate) faults: FaultPlan,
    pub(crate) tds: crate::td::TdWorld,
    pub(crate) violations: Vec<Violation>,
    /// Reports of TDs torn down by `Drop` (`Platform::dropped_td`).
    dropped_tds: Vec<TeardownReport>,
    /// The LP of the SEAMCALL running now (the calling thread's, set on
    /// entry).
    pub(crate) lp: u32,
    pub(crate) stats: Stats,
    /// SEAMCALLs per leaf number below 256 (the hot counter; folded into
    /// `stats` when read).
    pub(crate) calls: Box<[u64; 256]>,
}

/// A simulated TDX host: physical memory, CPUs and packages, caches, and a
/// TDX module, reachable through [`Seamcall`] (the module) and [`Platform`]
/// (the host services).
///
/// All methods take `&self`; the state sits behind a mutex, and SEAMCALLs
/// run one at a time. The logical processor a SEAMCALL runs on belongs to
/// the calling thread: the one its innermost [`Platform::on_cpu`] selected,
/// else the one it chose with [`Simulator::set_lp`]. The thread that built
/// the simulator starts on LP 0; a SEAMCALL from any other thread that has
/// selected no LP panics.
#[derive(Debug)]
pub struct Simulator {
    /// Keys this simulator's LP selections in each thread.
    id: u64,
    state: Mutex<State>,
}

impl Simulator {
    /// Builds a simulated host from its description.
    pub fn new(desc: MachineDesc) -> Result<Self, MachineError> {
        let (machine, memory) = Machine::new(desc)?;
        let module = Module::new(&machine);
        let state = State {
            mem: PhysMem::new(&memory),
            module,
            faults: FaultPlan::default(),
            tds: crate::td::TdWorld::default(),
            violations: Vec::new(),
            dropped_tds: Vec::new(),
            lp: 0,
            stats: Stats::default(),
            calls: Box::new([0; 256]),
            machine,
        };
        let id = crate::lp::new_sim_id();
        crate::lp::set(id, 0);
        Ok(Self {
            id,
            state: Mutex::new(state),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a bug in the simulator) must not
        // hide the state from the test that is reporting it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The module profile.
    pub fn profile(&self) -> crate::profile::Profile {
        self.lock().machine.desc.profile.clone()
    }

    /// The machine description the simulator was built from.
    pub fn machine(&self) -> MachineDesc {
        self.lock().machine.desc.clone()
    }

    /// The module-wide state.
    pub fn module_state(&self) -> crate::module::SysState {
        self.lock().module.state
    }

    /// The state of `hkid` in the module's key ownership table.
    pub fn kot_state(&self, hkid: u16) -> crate::module::KotState {
        self.lock()
            .module
            .kot
            .get(&hkid)
            .copied()
            .unwrap_or(crate::module::KotState::Free)
    }

    /// Pages donated to the extension pool so far, and whether TDH.EXT.INIT
    /// has completed.
    pub fn ext_status(&self) -> (u64, bool) {
        let s = self.lock();
        (s.module.ext.pool_pages, s.module.ext.initialized)
    }

    /// The guest side of TDG.MEM.PAGE.ACCEPT, for tests: the PENDING page at
    /// `gpa` (`level` 0 = 4K, 1 = 2M, 2 = 1G) of the TD whose TDR is `tdr`
    /// becomes MAPPED. The walk to it fails (`TDX_EPT_WALK_FAILED`) where an
    /// entry above is missing or blocked.
    pub fn guest_accept(&self, tdr: Pfn, gpa: u64, level: u8) -> TdxStatus {
        self.lock().guest_accept(tdr.as_u64(), gpa, level)
    }

    /// The MRTD of the TD whose TDR is `tdr`, once finalized.
    pub fn mrtd(&self, tdr: Pfn) -> Option<[u8; 48]> {
        self.lock().tds.tds.get(&tdr.as_u64()).and_then(|t| t.mrtd)
    }

    /// Adds a scripted fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Turns on seeded random faults (see [`FaultPlan::random`]).
    pub fn inject_random(&self, seed: u64, per_million: u32) {
        self.lock().faults.random(seed, per_million);
    }

    /// The faults that fired so far.
    pub fn fired_faults(&self) -> Vec<(Leaf, u64, crate::faults::FaultAction)> {
        self.lock().faults.fired().to_vec()
    }

    /// The logical processor the calling thread's SEAMCALLs run on now.
    ///
    /// # Panics
    ///
    /// If the calling thread selected none (it is not the thread that built
    /// the simulator and called neither [`Simulator::set_lp`] nor
    /// [`Platform::on_cpu`]).
    pub fn current_lp(&self) -> u32 {
        self.thread_lp()
    }

    /// Selects the logical processor for the calling thread's following
    /// SEAMCALLs (what [`Platform::on_cpu`] does for the length of its
    /// closure). Inside an `on_cpu` closure it changes that closure's LP
    /// until the closure ends.
    pub fn set_lp(&self, lp: u32) {
        assert!(
            lp < self.lock().machine.desc.lps(),
            "LP {lp} does not exist"
        );
        crate::lp::set(self.id, lp);
    }

    /// The calling thread's LP (placed on one, the LPs in turn, if it
    /// selected none: see the `lp` module).
    fn thread_lp(&self) -> u32 {
        crate::lp::current_or_place(self.id, || self.lock().machine.desc.lps())
    }

    /// Page counts by state.
    pub fn accounting(&self) -> Accounting {
        self.lock().mem.accounting()
    }

    /// The state of a frame, or `None` if it is not RAM.
    pub fn page_state(&self, pfn: Pfn) -> Option<PageState> {
        self.lock().mem.state(pfn.as_u64())
    }

    /// Rule breaks recorded so far.
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// The teardown reports of TDs that were dropped instead of torn down
    /// (what [`Platform::dropped_td`] received), oldest first.
    pub fn dropped_td_reports(&self) -> Vec<TeardownReport> {
        self.lock().dropped_tds.clone()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let s = self.lock();
        let mut stats = s.stats.clone();
        for (leaf, &n) in s.calls.iter().enumerate() {
            if n > 0 {
                *stats.seamcalls.entry(leaf as u16).or_insert(0) += n;
            }
        }
        stats
    }

    /// Writes physical memory as a trace or a test sets it up: no ownership
    /// check beyond recording a write to module-owned or non-RAM memory.
    pub fn poke(&self, pa: u64, data: &[u8]) {
        let mut s = self.lock();
        if s.host_access(pa, data.len(), true) {
            s.mem.write(pa, data);
            // host_access checked that the range does not overflow.
            let (a, b) = (pa / PAGE, (pa + data.len() as u64).div_ceil(PAGE));
            s.mem.mark_cache(a, b, CacheLines::HostDirty);
        }
    }

    /// Reads physical memory the way the module sees it (no checks).
    pub fn peek(&self, pa: u64, buf: &mut [u8]) {
        self.lock().mem.read(pa, buf);
    }

    /// Checks the simulator's invariants: the page accounting balances, the
    /// pages the module owns are exactly the ones the host sees as
    /// module-owned (or leaked), and no violation was recorded. Every test
    /// that uses the simulator ends with this.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        let s = self.lock();
        let a = s.mem.accounting();
        let ram: u64 = s.mem.ram().iter().map(|&(b, e)| e - b).sum();
        if a.free + a.host + a.module + a.leaked != a.total || a.total != ram {
            return Err(InvariantError::Accounting(a, ram));
        }
        // Module-owned (module's view) => Module or Leaked (host's view).
        for (start, end, _) in s.module.owned.iter() {
            for (ps, _, st) in s.mem.states(start, end) {
                if !matches!(st, PageState::Module | PageState::Leaked) {
                    return Err(InvariantError::Ownership {
                        pfn: ps,
                        host: st,
                        module: true,
                    });
                }
            }
        }
        // Module (host's view) => owned by the module.
        for (start, end, st) in s.mem.states(0, u64::MAX) {
            if st == PageState::Module && !s.module.owned.all_in(start, end, |_| true) {
                let pfn = (start..end)
                    .find(|&p| s.module.owned.get(p).is_none())
                    .unwrap_or(start);
                return Err(InvariantError::Ownership {
                    pfn,
                    host: st,
                    module: false,
                });
            }
        }
        if !s.violations.is_empty() {
            return Err(InvariantError::Violations(s.violations.clone()));
        }
        Ok(())
    }

    /// Approximate bytes of host memory the simulator's own state uses
    /// beyond its fixed size, for benches: page contents stored, range-map
    /// entries (an estimate of 48 bytes each), and the PAMT and every TD's
    /// S-EPT (exact heap bytes of their chunked maps).
    pub fn footprint_bytes(&self) -> usize {
        let s = self.lock();
        s.mem.materialized_pages() * PAGE as usize
            + (s.mem.cache_ranges() + s.module.owned.len()) * 48
            + s.module.pamt_heap_bytes()
            + s.tds
                .tds
                .values()
                .map(|t| t.sept.heap_bytes())
                .sum::<usize>()
    }
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
}

impl State {
    /// Taking a PAMT back (freeing or clearing it) abandons the module:
    /// legitimate after a failed bring-up, but the module must be reloaded
    /// before any other SEAMCALL, which the simulator then records as a
    /// violation.
    fn take_back_pamt(&mut self, a: u64, b: u64) {
        let pamt_only = self
            .module
            .owned
            .all_in(a, b, |u| matches!(u, crate::module::ModuleUse::Pamt(_)));
        if pamt_only && self.mem.is_ram(a, b) {
            self.module.abandoned = true;
            self.module.owned.remove(a, b);
            self.mem.set_state(a, b, PageState::Host);
        }
    }

    /// Records a violation for a host access to `[pa, pa+len)` if it touches
    /// module-owned memory or non-RAM. Returns true if the access is allowed.
    pub(crate) fn host_access(&mut self, pa: u64, len: usize, write: bool) -> bool {
        let Some(end) = pa.checked_add(len as u64) else {
            self.violations
                .push(Violation::HostTouchedNonRam { pa, len, write });
            return false;
        };
        let (a, b) = (pa / PAGE, end.div_ceil(PAGE));
        if !self.mem.is_ram(a, b) {
            self.violations
                .push(Violation::HostTouchedNonRam { pa, len, write });
            return false;
        }
        if self
            .mem
            .states(a, b)
            .any(|(_, _, st)| st == PageState::Module)
        {
            self.violations
                .push(Violation::HostTouchedModulePage { pa, len, write });
            return false;
        }
        true
    }

    /// The dispatcher: gate, fault injection, then the leaf.
    fn seamcall(&mut self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        // P-SEAMLDR calls (bit 63) go to a different firmware, which the
        // simulator does not have: the CPU reports VMfailInvalid.
        if rax >> 63 != 0 {
            return TdxStatus::SEAMCALL_VMFAILINVALID;
        }
        // The entry points of the Ret and NoOutputs shapes load only RCX,
        // RDX and R8-R11; the module sees nothing meaningful elsewhere.
        let mut out = match shape {
            RegShape::SavedRet => *args,
            RegShape::Ret | RegShape::NoOutputs => {
                SeamcallArgs::regs6(args.rcx, args.rdx, args.r8, args.r9, args.r10, args.r11)
            }
        };
        let status = self.dispatch(rax, &mut out);
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

    fn dispatch(&mut self, rax: u64, a: &mut SeamcallArgs) -> TdxStatus {
        use crate::module::SysState;
        let Ok(lv) = LeafVersion::from_rax(rax) else {
            return TdxStatus::OPERAND_INVALID; // |RAX (operand 0)
        };
        let leaf = lv.leaf();
        match self.calls.get_mut(usize::from(leaf.0)) {
            Some(n) => *n += 1,
            None => *self.stats.seamcalls.entry(leaf.0).or_insert(0) += 1,
        }
        // §1.2 gate, in order.
        if lv.version() > 0 && !self.machine.desc.profile.versioned(leaf) {
            return TdxStatus::OPERAND_INVALID;
        }
        if self.module.state == SysState::Shutdown && leaf != Leaf::SYS_LP_SHUTDOWN {
            return TdxStatus::SYS_SHUTDOWN;
        }
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
        if self.module.state != SysState::Ready && !BEFORE_READY.contains(&leaf) {
            return TdxStatus::SYS_NOT_READY;
        }
        if !self.implements(leaf) {
            return TdxStatus::OPERAND_INVALID;
        }
        // Versioned leaves check their own highest version (SEPT.ADD and
        // SEPT.REMOVE do so in the module; the model does it for all).
        if lv.version() > self.machine.desc.profile.max_version(leaf) {
            return TdxStatus::OPERAND_INVALID;
        }
        if self.module.abandoned {
            self.violations
                .push(Violation::ModuleUsedAfterAbandon { leaf: leaf.0 });
        }
        let fault = self.faults.on_call(leaf);
        use crate::faults::FaultAction;
        match fault {
            Some(FaultAction::Status(s)) => s,
            Some(FaultAction::StopEarly { after }) => self.run_leaf(lv, a, Some(after)),
            Some(FaultAction::FailAfter { after, status }) => {
                match self.run_leaf(lv, a, Some(after)) {
                    TdxStatus::INTERRUPTED_RESUMABLE => status,
                    s => s,
                }
            }
            None => self.run_leaf(lv, a, None),
        }
    }
}

// SAFETY: the simulator behaves as the module's register ABI says: it reads
// the inputs of `shape`, writes back exactly the outputs of `shape`
// (`State::seamcall`), and returns the status its model of the module
// produced. Its "memory" is simulated, so no real memory changes hands.
unsafe impl Seamcall for Simulator {
    unsafe fn seamcall(&self, rax: u64, args: &mut SeamcallArgs, shape: RegShape) -> TdxStatus {
        let lp = self.thread_lp();
        let mut s = self.lock();
        s.lp = lp;
        s.seamcall(rax, args, shape)
    }
}

// SAFETY: the simulator's "memory" is its own map: allocations never overlap
// (the accounting map has one state per frame), `on_cpu` runs the closure
// synchronously with the LP selected, and cache operations update the cache
// model before returning. None of it touches real memory.
unsafe impl Platform for Simulator {
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
        let mut s = self.lock();
        let align = align.max(1);
        if count == 0 || !align.is_power_of_two() {
            return Err(err);
        }
        let start = match placement {
            Placement::Exact(pfn) => {
                let p = pfn.as_u64();
                let free = p % align == 0
                    && s.mem.is_ram(p, p + count)
                    && s.mem
                        .states(p, p + count)
                        .all(|(_, _, st)| st == PageState::Free);
                if !free {
                    return Err(err);
                }
                p
            }
            Placement::Node(NodeId(n)) => {
                let within = s.machine.node_frames.get(&n).cloned();
                s.mem
                    .find_free(count, align, within.as_deref())
                    .or_else(|| s.mem.find_free(count, align, None))
                    .ok_or(err)?
            }
            Placement::Anywhere => s.mem.find_free(count, align, None).ok_or(err)?,
        };
        if let Some((pfn, keyid)) = s.mem.private_lines(start, start + count) {
            s.violations.push(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "allocated",
            });
        }
        s.mem.set_state(start, start + count, PageState::Host);
        PfnRun::try_new(Pfn::new(start), count).map_err(|_| err)
    }

    unsafe fn free_pages(&self, run: PfnRun) {
        let mut s = self.lock();
        let (a, b) = (run.first().as_u64(), run.end());
        s.take_back_pamt(a, b);
        let bad: Vec<(u64, PageState)> = s
            .mem
            .states(a, b)
            .filter(|&(_, _, st)| st != PageState::Host)
            .map(|(p, _, st)| (p, st))
            .collect();
        if !s.mem.is_ram(a, b) || !bad.is_empty() {
            for (pfn, state) in bad {
                s.violations
                    .push(Violation::FreedPageNotAllocated { pfn, state });
            }
            return;
        }
        if let Some((pfn, keyid)) = s.mem.private_lines(a, b) {
            s.violations.push(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "freed",
            });
        }
        s.mem.set_state(a, b, PageState::Free);
    }

    fn leak_pages(&self, run: PfnRun, _reason: &'static str) {
        let mut s = self.lock();
        let (a, b) = (run.first().as_u64(), run.end());
        let bad: Vec<(u64, PageState)> = s
            .mem
            .states(a, b)
            .filter(|&(_, _, st)| !matches!(st, PageState::Host | PageState::Module))
            .map(|(p, _, st)| (p, st))
            .collect();
        for (pfn, state) in bad {
            s.violations
                .push(Violation::LeakedPageNotOwned { pfn, state });
        }
        s.mem.set_state(a, b, PageState::Leaked);
    }

    unsafe fn read_phys(&self, pa: Hpa, buf: &mut [u8]) {
        let mut s = self.lock();
        if s.host_access(pa.as_u64(), buf.len(), false) {
            s.mem.read(pa.as_u64(), buf);
        } else {
            // Ciphertext or poison, as far as the host can tell.
            buf.fill(0xFF);
        }
    }

    unsafe fn write_phys(&self, pa: Hpa, data: &[u8]) {
        let mut s = self.lock();
        let pa = pa.as_u64();
        if s.host_access(pa, data.len(), true) {
            s.mem.write(pa, data);
            // host_access checked that the range does not overflow.
            let (a, b) = (pa / PAGE, (pa + data.len() as u64).div_ceil(PAGE));
            s.mem.mark_cache(a, b, CacheLines::HostDirty);
        }
    }

    fn cpus(&self) -> u32 {
        self.lock().machine.desc.lps()
    }

    fn package_of(&self, cpu: CpuId) -> PackageId {
        PackageId(self.lock().machine.package_of(cpu.0))
    }

    fn node_of(&self, pfn: Pfn) -> Option<NodeId> {
        Some(NodeId(self.lock().machine.desc.node_of(pfn.hpa().as_u64())))
    }

    fn on_cpu(&self, cpu: CpuId, f: &mut (dyn FnMut() + Send)) {
        assert!(
            cpu.0 < self.lock().machine.desc.lps(),
            "{cpu} does not exist"
        );
        crate::lp::scoped(self.id, cpu.0, f);
    }

    fn wbinvd_all(&self) {
        let mut s = self.lock();
        s.stats.wbinvd += 1;
        s.mem.flush_all();
    }

    fn clflush_page(&self, pfn: Pfn) {
        let mut s = self.lock();
        s.stats.clflush_pages += 1;
        let p = pfn.as_u64();
        s.mem.flush_range(p, p + 1);
    }

    unsafe fn movdir64b_clear(&self, run: PfnRun) {
        let mut s = self.lock();
        let (a, b) = (run.first().as_u64(), run.end());
        // Clearing a PAMT after a failed configuration (the partial-write
        // erratum) takes it back, as freeing it would.
        s.take_back_pamt(a, b);
        if !s.host_access(a * PAGE, (run.bytes()) as usize, true) {
            return;
        }
        if let Some((pfn, keyid)) = s.mem.private_lines(a, b) {
            // A dirty private line written back later would land on the
            // freshly cleared memory: flush first.
            s.violations.push(Violation::PrivateLinesReachedHost {
                pfn,
                keyid,
                how: "cleared with MOVDIR64B",
            });
        }
        s.stats.movdir64b_pages += run.count();
        s.mem.zero(a, b);
        // Direct stores of whole lines: nothing dirty stays behind.
        s.mem.flush_range(a, b);
    }

    fn yield_now(&self) {
        self.lock().stats.yields += 1;
    }

    fn keyid_partition(&self) -> KeyIdPartition {
        self.lock().machine.desc.keyid_partition()
    }

    fn keyid_shift(&self) -> u32 {
        let s = self.lock();
        let desc = &s.machine.desc;
        desc.reported_keyid_shift
            .unwrap_or_else(|| desc.hkid_start_bit())
    }

    fn dropped_td(&self, report: &TeardownReport) {
        self.lock().dropped_tds.push(report.clone());
    }

    fn errata(&self) -> Errata {
        self.lock().machine.desc.errata
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
