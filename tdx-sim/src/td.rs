//! Trust Domains in the module model: TDR/TDCS state, the TD's locks, its
//! S-EPT, and vCPUs (TDVPS).
//!
//! A [`Td`] is one TDR and its TDCS. It lives in a slab slot whose index
//! the TDR's PAMT entry records, so a leaf that has locked the TDR finds
//! the TD without a lookup table. Fields a leaf on one TD reads while other
//! leaves on the same TD run are atomics; what the module changes only
//! under the TDR's exclusive lock sits behind a mutex the simulator takes
//! only for the moment it reads or writes. As in the module, the module's
//! locks (TDR, op state, S-EPT tree and entries, epoch) are what keep
//! leaves apart; the simulator's mutexes only make each read and write
//! whole.

use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering},
};

use rustc_hash::FxHashMap as HashMap;
use sha2::Sha384;

use crate::{
    locks::{Sharex, SharexHp},
    sept::Sept,
    slab::Slab,
};

pub(crate) const MIN_TDCS: u64 = 6;
pub(crate) const MAX_TDCS: u64 = 9;
pub(crate) const MIN_TDVPS: usize = 6;
pub(crate) const MAX_TDVPS: usize = 15;

/// TDR lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// After TDH.MNG.CREATE.
    HkidAssigned,
    /// After TDH.MNG.KEY.CONFIG on every package.
    KeysConfigured,
    /// After TDH.MNG.VPFLUSHDONE.
    Blocked,
    /// After TDH.MNG.KEY.FREEID.
    Teardown,
}

impl Lifecycle {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::HkidAssigned,
            1 => Self::KeysConfigured,
            2 => Self::Blocked,
            _ => Self::Teardown,
        }
    }

    fn to_u8(self) -> u8 {
        self as u8
    }
}

/// TDCS operation state (without migration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// Before TDH.MNG.INIT.
    Uninitialized,
    /// After TDH.MNG.INIT.
    Initialized,
    /// After TDH.MR.FINALIZE.
    Runnable,
}

impl OpState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Uninitialized,
            1 => Self::Initialized,
            _ => Self::Runnable,
        }
    }
}

/// Stripes of a counter that leaves on several LPs change at once.
const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(T);

/// A counter striped by LP, so leaves on different LPs do not write one
/// cache line (the TD's child count under many concurrent AUGs).
#[derive(Debug, Default)]
pub(crate) struct Striped([Padded<AtomicI64>; STRIPES]);

impl Striped {
    pub(crate) fn add(&self, lp: u32, n: i64) {
        self.0[lp as usize % STRIPES]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> i64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }

    fn reset(&self) {
        for p in &self.0 {
            p.0.store(0, Ordering::Relaxed);
        }
    }
}

/// The TD fields the module changes only while it holds the TDR
/// exclusively (or, for the vCPU counts, the vCPU's TDVPR).
#[derive(Debug, Default)]
pub(crate) struct TdCtl {
    pub(crate) pkg_configured: Vec<bool>,
    /// TDCS pages, in the order they were added.
    pub(crate) tdcx: Vec<u64>,
    pub(crate) max_vcpus: u32,
    pub(crate) num_vcpus: u32,
    pub(crate) attributes: u64,
    pub(crate) tsc_offset: u64,
    pub(crate) tsc_multiplier: u64,
    pub(crate) measurement: Option<Sha384>,
    pub(crate) mrtd: Option<[u8; 48]>,
    /// The TD_PARAMS image TDH.MNG.INIT accepted: the TDCS fields copied
    /// from it (XFAM, EPTP controls, TSC frequency, CONFIG_FLAGS,
    /// MRCONFIGID, MROWNER, MROWNERCONFIG) are read from here.
    pub(crate) params: Option<Box<[u8; 1024]>>,
    /// TD metadata fields the host wrote with TDH.MNG.WR, by
    /// `class << 32 | field code` (absent: the field's initial value).
    pub(crate) md_written: HashMap<u64, u64>,
    /// The x2APIC IDs TDH.VP.INIT version 1 recorded, by VCPU_INDEX
    /// (`x2apic_ids` in the TDCS of module 1.5.05).
    pub(crate) x2apic_ids: Vec<u32>,
    /// A TDH.VP.INIT version 0 ran (module 1.5.05 then clears
    /// TOPOLOGY_ENUM_CONFIGURED, which TDH.MNG.INIT set).
    pub(crate) vp_init_v0: bool,
    /// The VMM's shared EPT as tests set it, by 4K GPA (shared bit set):
    /// not the module's, the guest model's.
    pub(crate) shared_ept: HashMap<u64, crate::guest::SharedMapping>,
    /// RTMR0-3 (TDCS measurement fields), extended by TDG.MR.RTMR.EXTEND
    /// (empty: all four zero).
    pub(crate) rtmr: Vec<[u8; 48]>,
}

/// A Trust Domain: its TDR, TDCS, locks and S-EPT.
#[derive(Debug)]
pub(crate) struct Td {
    /// TDCS op_state_lock.
    pub(crate) op_lock: SharexHp,
    /// TDCS secure_ept_lock.
    pub(crate) tree_lock: Sharex,
    /// The TD epoch lock.
    pub(crate) epoch_lock: Sharex,
    tdr: AtomicU64,
    hkid: AtomicU16,
    lifecycle: AtomicU8,
    fatal: AtomicBool,
    num_tdcx: AtomicU64,
    op_state: AtomicU8,
    /// Secure-EPT levels minus one (3 for 4-level EPT, 4 for 5-level).
    pwl: AtomicU8,
    gpaw: AtomicBool,
    num_l2_vms: AtomicU8,
    td_epoch: AtomicU64,
    /// `refcount[2]` of the TDCS epoch-tracking fields: the number of
    /// entries into the guest (one per LP in TDH.VP.ENTER or the guest)
    /// made in an epoch of each parity and not yet ended by a TD exit
    /// (`src/common/helpers/helpers.h`, `tdcs_epoch_tracking_fields_t`).
    refcount: [AtomicU16; 2],
    num_assoc_vcpus: AtomicU32,
    /// 4K pages charged to the TD (TDR excluded).
    pub(crate) chldcnt: Striped,
    pub(crate) ctl: Mutex<TdCtl>,
    pub(crate) sept: Sept,
}

impl Td {
    fn new() -> Self {
        Self {
            op_lock: SharexHp::new(),
            tree_lock: Sharex::new(),
            epoch_lock: Sharex::new(),
            tdr: AtomicU64::new(0),
            hkid: AtomicU16::new(0),
            lifecycle: AtomicU8::new(0),
            fatal: AtomicBool::new(false),
            num_tdcx: AtomicU64::new(0),
            op_state: AtomicU8::new(0),
            pwl: AtomicU8::new(3),
            gpaw: AtomicBool::new(false),
            num_l2_vms: AtomicU8::new(0),
            td_epoch: AtomicU64::new(0),
            refcount: [AtomicU16::new(0), AtomicU16::new(0)],
            num_assoc_vcpus: AtomicU32::new(0),
            chldcnt: Striped::default(),
            ctl: Mutex::new(TdCtl::default()),
            sept: Sept::default(),
        }
    }

    /// Makes this (fresh or reused) TD the one TDH.MNG.CREATE builds.
    fn reset(&self, tdr: u64, hkid: u16, packages: usize) {
        self.op_lock.reset();
        self.tdr.store(tdr, Ordering::Relaxed);
        self.hkid.store(hkid, Ordering::Relaxed);
        self.lifecycle
            .store(Lifecycle::HkidAssigned.to_u8(), Ordering::Relaxed);
        self.fatal.store(false, Ordering::Relaxed);
        self.num_tdcx.store(0, Ordering::Relaxed);
        self.op_state.store(0, Ordering::Relaxed);
        self.pwl.store(3, Ordering::Relaxed);
        self.gpaw.store(false, Ordering::Relaxed);
        self.num_l2_vms.store(0, Ordering::Relaxed);
        self.td_epoch.store(0, Ordering::Relaxed);
        for r in &self.refcount {
            r.store(0, Ordering::Relaxed);
        }
        self.num_assoc_vcpus.store(0, Ordering::Relaxed);
        self.chldcnt.reset();
        *self.ctl() = TdCtl {
            pkg_configured: vec![false; packages],
            ..TdCtl::default()
        };
        self.sept.reset();
    }

    pub(crate) fn ctl(&self) -> MutexGuard<'_, TdCtl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn tdr(&self) -> u64 {
        self.tdr.load(Ordering::Relaxed)
    }

    pub(crate) fn hkid(&self) -> u16 {
        self.hkid.load(Ordering::Relaxed)
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.lifecycle.load(Ordering::Acquire))
    }

    pub(crate) fn set_lifecycle(&self, l: Lifecycle) {
        self.lifecycle.store(l.to_u8(), Ordering::Release);
    }

    pub(crate) fn fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    /// Sets TDR.FATAL (a NON_RECOVERABLE_TD exit).
    pub(crate) fn set_fatal(&self) {
        self.fatal.store(true, Ordering::Relaxed);
    }

    pub(crate) fn num_tdcx(&self) -> u64 {
        self.num_tdcx.load(Ordering::Acquire)
    }

    pub(crate) fn set_num_tdcx(&self, n: u64) {
        self.num_tdcx.store(n, Ordering::Release);
    }

    pub(crate) fn op_state(&self) -> OpState {
        OpState::from_u8(self.op_state.load(Ordering::Acquire))
    }

    pub(crate) fn set_op_state(&self, s: OpState) {
        self.op_state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn pwl(&self) -> u8 {
        self.pwl.load(Ordering::Relaxed)
    }

    pub(crate) fn gpaw(&self) -> bool {
        self.gpaw.load(Ordering::Relaxed)
    }

    pub(crate) fn num_l2_vms(&self) -> u8 {
        self.num_l2_vms.load(Ordering::Relaxed)
    }

    /// Sets what TDH.MNG.INIT takes from TD_PARAMS for the S-EPT.
    pub(crate) fn set_ept(&self, pwl: u8, gpaw: bool, num_l2_vms: u8) {
        self.pwl.store(pwl, Ordering::Relaxed);
        self.gpaw.store(gpaw, Ordering::Relaxed);
        self.num_l2_vms.store(num_l2_vms, Ordering::Relaxed);
    }

    pub(crate) fn td_epoch(&self) -> u64 {
        self.td_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn set_td_epoch(&self, e: u64) {
        self.td_epoch.store(e, Ordering::Release);
    }

    /// `refcount[parity]`: guest entries of epochs of that parity still in
    /// the guest.
    pub(crate) fn refcount(&self, parity: u64) -> u16 {
        self.refcount[(parity & 1) as usize].load(Ordering::Acquire)
    }

    /// TDH.VP.ENTER's epoch step (`src/common/helpers/helpers.c`, under
    /// the epoch lock shared): counts one entry in the current epoch and
    /// returns that epoch.
    pub(crate) fn enter_epoch(&self) -> u64 {
        let e = self.td_epoch();
        self.refcount[(e & 1) as usize].fetch_add(1, Ordering::AcqRel);
        e
    }

    /// The TD-exit step (`src/td_transitions/td_exit.c`): the entry made
    /// in `vcpu_epoch` has left the guest.
    pub(crate) fn exit_epoch(&self, vcpu_epoch: u64) {
        self.refcount[(vcpu_epoch & 1) as usize].fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn num_assoc_vcpus(&self) -> u32 {
        self.num_assoc_vcpus.load(Ordering::Acquire)
    }

    pub(crate) fn add_assoc_vcpus(&self, n: i32) {
        self.num_assoc_vcpus.fetch_add(n as u32, Ordering::AcqRel);
    }

    pub(crate) fn set_num_assoc_vcpus(&self, n: u32) {
        self.num_assoc_vcpus.store(n, Ordering::Release);
    }

    /// The private-GPA rule: shared bit clear, and bits 51:48 clear with a
    /// 4-level GPA width (`check_gpa_validity`).
    pub(crate) fn private_gpa(&self, gpa: u64) -> bool {
        let gpaw = self.gpaw();
        let shared = if gpaw { 51 } else { 47 };
        gpa & (1 << shared) == 0 && (gpaw || gpa >> 48 == 0) && gpa >> 52 == 0
    }
}

/// Every TD the module has built, by slot (the TDR's PAMT entry names the
/// slot of its TD). A reclaimed TD's slot is reused by a later
/// TDH.MNG.CREATE.
#[derive(Debug, Default)]
pub(crate) struct TdTable {
    slab: Slab<Td>,
}

impl TdTable {
    /// A new TD for the TDR at frame `tdr`: its slot and the TD.
    pub(crate) fn create(&self, tdr: u64, hkid: u16, packages: usize) -> (u32, &Td) {
        let (i, td) = self.slab.alloc(Td::new, |_| {});
        td.reset(tdr, hkid, packages);
        (i, td)
    }

    pub(crate) fn get(&self, slot: u64) -> &Td {
        self.slab
            .get(slot as u32)
            .expect("a TDR's PAMT entry names a TD slot")
    }

    /// Gives a reclaimed TD's slot back.
    pub(crate) fn free(&self, slot: u64) {
        self.slab.free(slot as u32);
    }

    /// Every slot ever used (live or reclaimed).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &Td)> + '_ {
        self.slab.iter()
    }

    pub(crate) fn freed(&self) -> Vec<u32> {
        self.slab.freed()
    }
}

/// TDVPS `state` (`src/common/data_structures/tdx_tdvps.h`: UNINITIALIZED
/// 0x0, READY 0x2, ACTIVE 0x4, DISABLED 0x8; IMPORT is migration's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VcpuState {
    /// Created, TDH.VP.INIT not done.
    Uninitialized = 0,
    /// Initialized and not in the guest: TDH.VP.ENTER may enter it.
    Ready = 2,
    /// Inside TDH.VP.ENTER or the guest.
    Active = 4,
    /// After a NON_RECOVERABLE_VCPU exit: never enters again.
    Disabled = 8,
}

/// TDVPS `last_td_exit` (`tdx_tdvps.h`: ASYNC_FAULT 0, ASYNC_TRAP 1,
/// TDVMCALL 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum LastExit {
    /// A fault-like asynchronous exit (or none yet): the guest repeats
    /// what it was doing.
    #[default]
    AsyncFault = 0,
    /// A trap-like asynchronous exit (the host-priority timeout).
    AsyncTrap = 1,
    /// TDG.VP.VMCALL: the next entry copies the host's reply in.
    Tdvmcall = 2,
}

/// A vCPU's TDVPS.
#[derive(Debug)]
pub(crate) struct Vcpu {
    pub(crate) pages: Vec<u64>,
    pub(crate) state: VcpuState,
    pub(crate) last_exit: LastExit,
    /// The TD epoch of the vCPU's last entry (`vcpu_epoch`).
    pub(crate) vcpu_epoch: u64,
    /// The TSC at the last TD exit (LAST_EXIT_TSC).
    pub(crate) last_exit_tsc: u64,
    /// When a guest TDCALL first met a host-priority lock, if the last
    /// one did (`hp_lock_busy`, `hp_lock_busy_start`).
    pub(crate) hp_busy_since: Option<u64>,
    /// The guest's "RIP": operations it has completed.
    pub(crate) rip: u64,
    /// The RIP at the last entry (`guest_rip_on_tdentry`).
    pub(crate) rip_on_entry: u64,
    /// Private-GPA EPT violations at one RIP (`possibly_epf_stepping`)
    /// and, past the threshold, their GPAs (`last_epf_gpa_list`).
    pub(crate) epf_count: u8,
    pub(crate) epf_gpas: Vec<u64>,
    /// VCPU_INDEX, given by TDH.VP.INIT.
    pub(crate) index: u32,
    pub(crate) assoc_lp: Option<u32>,
    /// Values of the TDVPS and TD VMCS fields VP.WR wrote, by
    /// `class << 32 | field code` (absent: the field's initial value).
    pub(crate) fields: HashMap<u64, u64>,
    /// VE_INFO while valid (`ve_info.valid`): from a #VE until the guest's
    /// TDG.VP.VEINFO.GET.
    pub(crate) ve_info: Option<crate::guest::VirtualizationException>,
    /// The guest's MSR values the model keeps (direct accesses and the
    /// module's emulated writes; absent: the initial value).
    pub(crate) msrs: HashMap<u32, u64>,
    /// Test hook: the vCPU's next 2M TDG.MEM.PAGE.ACCEPT finds an
    /// interrupt pending once it has zeroed this many more 4K chunks
    /// ([`crate::Simulator::kick_during_accept`]).
    pub(crate) accept_kick_after: Option<u32>,
    /// TDG.VP.CPUIDVE.SET's flags (`cpuid_supervisor_ve`,
    /// `cpuid_user_ve`): every CPUID at that CPL is a #VE.
    pub(crate) cpuid_ve: (bool, bool),
}

impl Vcpu {
    pub(crate) fn new(tdvpr: u64) -> Self {
        Self {
            pages: vec![tdvpr],
            state: VcpuState::Uninitialized,
            last_exit: LastExit::AsyncFault,
            vcpu_epoch: 0,
            last_exit_tsc: 0,
            hp_busy_since: None,
            rip: 0,
            rip_on_entry: 0,
            epf_count: 0,
            epf_gpas: Vec::new(),
            index: 0,
            assoc_lp: None,
            fields: HashMap::default(),
            ve_info: None,
            msrs: HashMap::default(),
            accept_kick_after: None,
            cpuid_ve: (false, false),
        }
    }

    /// TDH.VP.INIT has run.
    pub(crate) fn initialized(&self) -> bool {
        self.state != VcpuState::Uninitialized
    }
}

const VCPU_SHARDS: usize = 16;

/// vCPUs by TDVPR frame. VP leaves hold the TDVPR's PAMT lock while they
/// use a vCPU; the shard mutex only makes each access whole.
#[derive(Debug)]
pub(crate) struct VcpuTable {
    shards: Box<[Mutex<HashMap<u64, Vcpu>>]>,
}

impl Default for VcpuTable {
    fn default() -> Self {
        Self {
            shards: (0..VCPU_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl VcpuTable {
    fn shard(&self, tdvpr: u64) -> MutexGuard<'_, HashMap<u64, Vcpu>> {
        self.shards[(tdvpr as usize) % VCPU_SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, tdvpr: u64, v: Vcpu) {
        self.shard(tdvpr).insert(tdvpr, v);
    }

    pub(crate) fn remove(&self, tdvpr: u64) {
        self.shard(tdvpr).remove(&tdvpr);
    }

    /// Runs `f` on every vCPU (for the simulator's own checks).
    pub(crate) fn for_each(&self, mut f: impl FnMut(u64, &Vcpu)) {
        for sh in &self.shards {
            let sh = sh.lock().unwrap_or_else(|e| e.into_inner());
            for (&k, v) in sh.iter() {
                f(k, v);
            }
        }
    }

    /// Runs `f` on the vCPU at `tdvpr` if there is one (for test hooks
    /// that name any frame).
    pub(crate) fn try_with<T>(&self, tdvpr: u64, f: impl FnOnce(&mut Vcpu) -> T) -> Option<T> {
        self.shard(tdvpr).get_mut(&tdvpr).map(f)
    }

    /// Runs `f` on the vCPU at `tdvpr` (which the caller has locked).
    pub(crate) fn with<T>(&self, tdvpr: u64, f: impl FnOnce(&mut Vcpu) -> T) -> T {
        f(self
            .shard(tdvpr)
            .get_mut(&tdvpr)
            .expect("a PT_TDVPR page has a vCPU"))
    }
}
