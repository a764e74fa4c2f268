//! Everything a simulator holds, and who may touch what.
//!
//! [`Shared`] is split the way the module's data is, so that leaves the
//! module lets run at once also run at once here:
//!
//! - the machine description ([`Machine`]): immutable;
//! - module-global data ([`Sys`]): the system state (an atomic the
//!   dispatcher's gate reads), and behind one mutex what only the
//!   TDH.SYS.* leaves change;
//! - the PAMT ([`crate::pamt`]): a radix of entries with their locks;
//! - the KOT and write-back table ([`crate::kot`]);
//! - TDs and vCPUs ([`crate::td`]), each TD with its own locks and S-EPT;
//! - host memory and the module's ownership of it ([`crate::memory`]),
//!   sharded by 64 MiB slices of physical address;
//! - counters striped by LP, violations, fault plan, pauses.
//!
//! No module lock is a simulator mutex: the module's locks are words a leaf
//! holds from acquisition to its end ([`crate::locks`]); the simulator's
//! mutexes only make single reads and writes whole, and are never held
//! while a leaf waits.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
};

use tdx_api::td::TeardownReport;
use tdx_types::{
    PfnRun,
    metadata::{MdFieldId, TdxFeatures0, field},
};

use crate::{
    dispatch::Pauses,
    faults::FaultPlan,
    kot::Kot,
    locks::{ReaderSlots, Sharex},
    machine::{MachineDesc, MachineError},
    memory::{ModuleUse, PAGE, PageState, PhysMem},
    pamt::Pamt,
    td::{TdTable, VcpuTable},
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
    pub(crate) fn new(desc: MachineDesc) -> Result<(Self, Vec<(u64, u64)>), MachineError> {
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

/// The module-wide state (`sysinit_state_e`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysState {
    /// Before TDH.SYS.INIT.
    SysInitPending,
    /// After TDH.SYS.INIT.
    SysInitDone,
    /// After TDH.SYS.CONFIG.
    SysConfigDone,
    /// After TDH.SYS.KEY.CONFIG on the last package.
    Ready,
    /// After TDH.SYS.SHUTDOWN.
    Shutdown,
}

impl SysState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::SysInitPending,
            1 => Self::SysInitDone,
            2 => Self::SysConfigDone,
            3 => Self::Ready,
            _ => Self::Shutdown,
        }
    }
}

/// Extension state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtState {
    pub(crate) pool_pages: u64,
    pub(crate) init_steps_done: u32,
    pub(crate) initialized: bool,
}

/// Module-global data only the TDH.SYS.* and TDH.EXT.* leaves change.
#[derive(Debug)]
pub(crate) struct SysData {
    pub(crate) lp_init: Vec<bool>,
    pub(crate) num_init_lps: u32,
    pub(crate) pkg_configured: Vec<bool>,
    pub(crate) num_init_pkgs: u32,
    pub(crate) features: TdxFeatures0,
    pub(crate) ext: ExtState,
}

/// The module's global data.
#[derive(Debug)]
pub(crate) struct Sys {
    state: AtomicU8,
    /// The module's global lock (TDH.SYS.INIT, LP.INIT, CONFIG,
    /// KEY.CONFIG, SHUTDOWN).
    pub(crate) lock: Sharex,
    data: Mutex<SysData>,
    /// The global (module) KeyID; `u32::MAX` before TDH.SYS.CONFIG set it.
    global_hkid: AtomicU32,
    /// The TDMR the last TDH.SYS.TDMR.INIT named (where the next call
    /// looks first; a hint, not module state).
    pub(crate) last_tdmr: AtomicUsize,
    /// The host took PAMT memory back (after a failed bring-up): the module
    /// must be reloaded before it is used again.
    abandoned: AtomicBool,
    /// `dynamic_pamt_enabled`: R8 bit 16 of the last TDH.SYS.CONFIG that
    /// got past its R8 checks (kept if that call then failed, as in
    /// `tdh_sys_config.c`).
    pub(crate) dynamic_pamt: AtomicBool,
    /// Metadata fields in walk order, and their index.
    pub(crate) fields: Vec<(MdFieldId, u64)>,
    pub(crate) field_index: HashMap<u64, usize>,
}

impl Sys {
    fn new(m: &Machine) -> Self {
        let mut fields = m.desc.profile.global_fields();
        // XFAM_FIXED0 is the module's XFAM bits masked by what the CPU
        // supports (metadata_sys.c).
        for f in fields.iter_mut().filter(|f| f.0 == field::XFAM_FIXED0) {
            f.1 = m.desc.xfam_fixed0();
        }
        // ATTRIBUTES_FIXED0 loses LASS on a CPU without it (1.5.05's
        // `tdh_sys_init.c`).
        for f in fields
            .iter_mut()
            .filter(|f| f.0 == field::ATTRIBUTES_FIXED0)
        {
            f.1 = m.desc.attributes_fixed0();
        }
        // MIN_DYNAMIC_PAMT_NUM_HKID_BITS = max(MAX_PA - 48, 0)
        // (`metadata_sys.c`, module 1.5.16+).
        for f in fields
            .iter_mut()
            .filter(|f| f.0 == field::MIN_DYNAMIC_PAMT_NUM_HKID_BITS)
        {
            f.1 = u64::from(m.desc.phys_addr_bits.saturating_sub(48));
        }
        // The CMR array: NUM_CMRS is the array size (32), as module 1.5 reports it.
        fields.push((field::NUM_CMRS, crate::machine::MAX_CMRS as u64));
        for i in 0..crate::machine::MAX_CMRS as u32 {
            let (b, e) = m.cmrs.get(i as usize).copied().unwrap_or((0, 0));
            fields.push((field::cmr_base(i).expect("32 CMRs"), b));
            fields.push((field::cmr_size(i).expect("32 CMRs"), e - b));
        }
        let field_index = fields
            .iter()
            .enumerate()
            .map(|(i, (f, _))| (f.into_raw(), i))
            .collect();
        let lps = m.desc.lps() as usize;
        Self {
            state: AtomicU8::new(SysState::SysInitPending as u8),
            lock: Sharex::new(),
            data: Mutex::new(SysData {
                lp_init: vec![false; lps],
                num_init_lps: 0,
                pkg_configured: vec![false; m.desc.packages as usize],
                num_init_pkgs: 0,
                features: TdxFeatures0::new(),
                ext: ExtState::default(),
            }),
            global_hkid: AtomicU32::new(u32::MAX),
            last_tdmr: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            dynamic_pamt: AtomicBool::new(false),
            fields,
            field_index,
        }
    }

    pub(crate) fn state(&self) -> SysState {
        SysState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn set_state(&self, s: SysState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn data(&self) -> MutexGuard<'_, SysData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn global_hkid(&self) -> Option<u16> {
        let v = self.global_hkid.load(Ordering::Relaxed);
        (v != u32::MAX).then_some(v as u16)
    }

    pub(crate) fn set_global_hkid(&self, h: u16) {
        self.global_hkid.store(u32::from(h), Ordering::Relaxed);
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
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

const STRIPES: usize = 8;

/// One stripe of the host-service counters.
#[derive(Debug)]
#[repr(align(64))]
struct Stripe {
    wbinvd: AtomicU64,
    clflush_pages: AtomicU64,
    movdir64b_pages: AtomicU64,
    yields: AtomicU64,
}

/// Which host service a counter counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HostOp {
    Wbinvd,
    Clflush,
    Movdir64b,
    Yield,
}

/// SEAMCALLs per leaf number below 256 on one LP.
#[derive(Debug)]
#[repr(align(64))]
struct LpCalls([AtomicU64; 256]);

/// [`Stats`]: SEAMCALLs counted by the LP they ran on, host services in
/// stripes by LP, so threads on different LPs do not write one cache line.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Per LP. Only a SEAMCALL running on the LP writes its row, and it
    /// holds the LP while it does (`Shared::lp_busy`, taken with Acquire
    /// and let go with Release), so a count is a plain load and store, not
    /// a read-modify-write.
    calls: Box<[LpCalls]>,
    stripes: Box<[Stripe]>,
    /// Leaf numbers of 256 and above.
    big: Mutex<BTreeMap<u16, u64>>,
}

impl Counters {
    pub(crate) fn new(lps: u32) -> Self {
        Self {
            calls: (0..lps.max(1))
                .map(|_| LpCalls([const { AtomicU64::new(0) }; 256]))
                .collect(),
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    wbinvd: AtomicU64::new(0),
                    clflush_pages: AtomicU64::new(0),
                    movdir64b_pages: AtomicU64::new(0),
                    yields: AtomicU64::new(0),
                })
                .collect(),
            big: Mutex::default(),
        }
    }

    /// Counts a SEAMCALL of `leaf` on `lp`; the caller holds the LP.
    pub(crate) fn leaf(&self, lp: u32, leaf: u16) {
        let row = &self.calls[lp as usize % self.calls.len()];
        match row.0.get(usize::from(leaf)) {
            Some(c) => c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
            None => {
                *self
                    .big
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(leaf)
                    .or_insert(0) += 1;
            }
        }
    }

    pub(crate) fn host(&self, lp: u32, op: HostOp, n: u64) {
        let s = &self.stripes[lp as usize % STRIPES];
        let c = match op {
            HostOp::Wbinvd => &s.wbinvd,
            HostOp::Clflush => &s.clflush_pages,
            HostOp::Movdir64b => &s.movdir64b_pages,
            HostOp::Yield => &s.yields,
        };
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut st = Stats {
            seamcalls: self.big.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            ..Stats::default()
        };
        for row in self.calls.iter() {
            for (leaf, c) in row.0.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    *st.seamcalls.entry(leaf as u16).or_insert(0) += n;
                }
            }
        }
        for s in self.stripes.iter() {
            st.wbinvd += s.wbinvd.load(Ordering::Relaxed);
            st.clflush_pages += s.clflush_pages.load(Ordering::Relaxed);
            st.movdir64b_pages += s.movdir64b_pages.load(Ordering::Relaxed);
            st.yields += s.yields.load(Ordering::Relaxed);
        }
        st
    }
}

/// A value alone in its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Padded<T>(pub(crate) T);

/// Everything a simulator holds.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Keys this simulator's LP selections in each thread.
    pub(crate) id: u64,
    pub(crate) machine: Machine,
    pub(crate) mem: PhysMem,
    pub(crate) sys: Sys,
    pub(crate) pamt: Pamt,
    pub(crate) kot: Kot,
    pub(crate) tds: TdTable,
    pub(crate) vcpus: VcpuTable,
    /// The guest programs of vCPUs and their runs ([`crate::guest`]).
    pub(crate) guests: crate::guest::Guests,
    /// The simulated TSC (the same on every LP), which tests set.
    pub(crate) tsc: AtomicU64,
    /// What a trace recorder takes from the guests and the host's guest
    /// actions, and what a replay arms ([`crate::trace`]).
    pub(crate) guest_log: crate::trace::GuestLog,
    /// Host MSR values tests set per LP (`Simulator::set_host_msr`), by
    /// `(lp, msr)`; absent: [`crate::HostMsr::default_value`].
    pub(crate) host_msrs: Mutex<HashMap<(u32, u32), u64>>,
    /// IA32_TSC_ADJUST as TDH.SYS.INIT sampled it on its LP
    /// (`plt_common_config.ia32_tsc_adjust`).
    pub(crate) tsc_adjust_sample: AtomicU64,
    faults: Mutex<FaultPlan>,
    faults_armed: AtomicBool,
    violations: Mutex<Vec<Violation>>,
    pub(crate) dropped_tds: Mutex<Vec<TeardownReport>>,
    /// Guest frames of dropped TDs, as `return_guest_frames` received them.
    pub(crate) returned_guest_frames: Mutex<Vec<PfnRun>>,
    pub(crate) counters: Counters,
    /// Per LP: the thread running a SEAMCALL on it (0 = none).
    pub(crate) lp_busy: Box<[Padded<AtomicU64>]>,
    /// The LPs' reader slots (shared holds, see `locks`).
    pub(crate) readers: ReaderSlots,
    pub(crate) pauses: Pauses,
}

impl Shared {
    /// Host MSR `msr` of LP `lp` ([`crate::Simulator::set_host_msr`]).
    pub(crate) fn host_msr(&self, lp: u32, msr: crate::HostMsr) -> u64 {
        let m = self.host_msrs.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&(lp, msr.index()))
            .copied()
            .unwrap_or_else(|| msr.default_value())
    }

    pub(crate) fn new(desc: MachineDesc) -> Result<Self, MachineError> {
        let (machine, memory) = Machine::new(desc)?;
        let lps = machine.desc.lps() as usize;
        Ok(Self {
            id: crate::lp::new_sim_id(),
            mem: PhysMem::new(&memory),
            sys: Sys::new(&machine),
            pamt: Pamt::default(),
            kot: Kot::new(machine.desc.packages as usize),
            tds: TdTable::default(),
            vcpus: VcpuTable::default(),
            guests: crate::guest::Guests::default(),
            tsc: AtomicU64::new(0),
            guest_log: crate::trace::GuestLog::default(),
            host_msrs: Mutex::default(),
            tsc_adjust_sample: AtomicU64::new(0),
            faults: Mutex::default(),
            faults_armed: AtomicBool::new(false),
            violations: Mutex::default(),
            dropped_tds: Mutex::default(),
            returned_guest_frames: Mutex::default(),
            counters: Counters::new(lps as u32),
            lp_busy: (0..lps).map(|_| Padded(AtomicU64::new(0))).collect(),
            readers: ReaderSlots::new(lps),
            pauses: Pauses::default(),
            machine,
        })
    }

    /// Records a rule break.
    pub(crate) fn violation(&self, v: Violation) {
        self.violations().push(v);
    }

    /// The module's fatal error: recorded, and the module shuts down (every
    /// later SEAMCALL but TDH.SYS.LP.SHUTDOWN is `TDX_SYS_SHUTDOWN`).
    pub(crate) fn fatal(&self, leaf: tdx_types::Leaf, what: String) {
        self.violation(Violation::ModuleFatalError { leaf: leaf.0, what });
        self.sys.set_state(SysState::Shutdown);
    }

    pub(crate) fn violations(&self) -> MutexGuard<'_, Vec<Violation>> {
        self.violations.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultPlan> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the fault plan (the dispatcher consults it from now on).
    pub(crate) fn arm_faults(&self) {
        self.faults_armed.store(true, Ordering::Release);
    }

    pub(crate) fn faults_armed(&self) -> bool {
        self.faults_armed.load(Ordering::Acquire)
    }

    /// Records a violation for a host access to `[pa, pa+len)` if it touches
    /// module-owned memory or non-RAM. Returns true if the access is allowed.
    pub(crate) fn host_access(&self, pa: u64, len: usize, write: bool) -> bool {
        let Some(end) = pa.checked_add(len as u64) else {
            self.violation(Violation::HostTouchedNonRam { pa, len, write });
            return false;
        };
        let (a, b) = (pa / PAGE, end.div_ceil(PAGE));
        if !self.mem.is_ram(a, b) {
            self.violation(Violation::HostTouchedNonRam { pa, len, write });
            return false;
        }
        if self.mem.any_state(a, b, PageState::Module) {
            self.violation(Violation::HostTouchedModulePage { pa, len, write });
            return false;
        }
        true
    }

    /// Reads guest-visible memory for the module, recording a violation if
    /// it is not RAM.
    pub(crate) fn module_read(&self, pa: u64, buf: &mut [u8], leaf: &'static str) {
        // A shared address may carry an MKTME KeyID: same memory, other key.
        let pa = pa & !self.machine.hkid_mask;
        let (a, b) = (
            pa / PAGE,
            pa.saturating_add(buf.len() as u64).div_ceil(PAGE),
        );
        if !self.mem.is_ram(a, b) {
            self.violation(Violation::ModuleReadNonRam { pa, leaf });
        }
        self.mem.read(pa, buf);
    }

    pub(crate) fn module_read_u64(&self, pa: u64, leaf: &'static str) -> u64 {
        let mut b = [0; 8];
        self.module_read(pa, &mut b, leaf);
        u64::from_le_bytes(b)
    }

    /// Taking a PAMT back (freeing or clearing it) abandons the module:
    /// legitimate after a failed bring-up, but the module must be reloaded
    /// before any other SEAMCALL, which the simulator then records as a
    /// violation.
    pub(crate) fn take_back_pamt(&self, a: u64, b: u64) {
        let pamt_only = self
            .mem
            .owned_all(a, b, |u| matches!(u, ModuleUse::Pamt(_)));
        if pamt_only && self.mem.is_ram(a, b) {
            self.sys.abandoned.store(true, Ordering::Relaxed);
            self.mem.take_from_module(a, b);
        }
    }
}
