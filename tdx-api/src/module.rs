//! Safe bring-up of the TDX module, as type-states:
//! [`TdxModule<Unconfigured>`] → [`TdxModule<TdmrsSet>`] →
//! [`TdxModule<ExtInited>`].
//!
//! - [`TdxModule::init`]: TDH.SYS.INIT once, TDH.SYS.LP.INIT on every CPU,
//!   the global metadata read into a typed [`SysInfo`] (NO_RBP_MOD
//!   required).
//! - [`TdxModule::configure`]: the TDMR/PAMT plan for the module's limits,
//!   PAMTs allocated exactly where the plan puts them (re-planned around
//!   what the platform cannot give), TDMR_INFOs written, TDH.SYS.CONFIG,
//!   WBINVD, TDH.SYS.KEY.CONFIG once per package, TDH.SYS.TDMR.INIT for
//!   every TDMR until done.
//! - [`TdxModule::init_extensions`]: the extension memory pool
//!   (TDH.EXT.MEM.ADD, in windows of at most 512 pages) when the module asks
//!   for one, TDH.EXT.INIT when EXT_REQUIRED, each decided on its own; a
//!   no-op transition when neither applies.
//!
//! Failures: a step that fails before the module took anything hands the
//! old handle back with the error ([`Refused`]: a [`Failed`] with the handle
//! in `returned`). After TDH.SYS.CONFIG succeeded, a failure flushes every
//! cache (and clears the PAMTs with MOVDIR64B on platforms with the
//! partial-write erratum) before any page returns to the allocator, and
//! what comes back says the module must be reloaded
//! ([`ConfigureLeft::MustReload`]).
//!
//! Policy (what Linux does, bounded): `TDX_RND_NO_ENTROPY` and
//! `TDX_KEY_GENERATION_FAILED` are retried up to [`ENTROPY_RETRIES`] times;
//! busy statuses up to [`BUSY_RETRIES`] times with a yield in between;
//! interrupted-resumable leaves are resumed, yielding between calls, for as
//! long as they make progress: [`NO_PROGRESS_LIMIT`] calls of TDH.EXT.MEM.ADD
//! without it is an error; TDH.EXT.INIT keeps its progress inside the module
//! where the host cannot see it, so it gets [`EXT_INIT_CALL_LIMIT`] calls in
//! all. An interruption from any other leaf is an error, not a success.

// UNSAFETY: bring-up issues the raw leaves of tdx-sys (each an `unsafe fn`)
// and uses the Platform's direct map; every call states which obligation of
// the tdx-sys contract it meets and why.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::{fmt, marker::PhantomData};

use tdx_sys::{Seamcall, leaf};
use tdx_types::{
    ErrorKind, Hpa, Leaf, LeafVersion, Pfn, PfnRun, TdxError, TdxStatus,
    abi::TdmrInfo,
    metadata::{KeyIdPartitionError, MdFieldId, TdxFeatures0, field},
    regs::SysConfigKeyId,
};
use zerocopy::IntoBytes;

use crate::{
    Failed,
    page_array::TdxPageArray,
    plan::{self, Plan, PlanError, PlanInput, Strategy},
    platform::{CpuId, Hardware, PackageId, Placement, Platform, PlatformError},
};

pub use crate::retry::{BUSY_RETRIES, ENTROPY_RETRIES};
/// Calls of TDH.EXT.MEM.ADD in a row without progress before giving up.
pub const NO_PROGRESS_LIMIT: u32 = 64;
/// Interrupted calls of TDH.EXT.INIT before giving up (its progress is not
/// visible to the host).
pub const EXT_INIT_CALL_LIMIT: u32 = NO_PROGRESS_LIMIT * 16;
/// Times bring-up re-plans around PAMT ranges the platform cannot give.
pub const REPLAN_LIMIT: u32 = 8;

mod sealed {
    pub trait Sealed {}
}

/// A bring-up state. Sealed: the three states below are the only ones.
pub trait ModuleState: sealed::Sealed {}

/// TDH.SYS.INIT and TDH.SYS.LP.INIT done, metadata read.
#[derive(Debug)]
pub struct Unconfigured(());
/// TDMRs configured, keys programmed, every TDMR initialized.
#[derive(Debug)]
pub struct TdmrsSet(());
/// Extensions initialized (or not needed): the module is ready for TDs.
#[derive(Debug)]
pub struct ExtInited(());

impl sealed::Sealed for Unconfigured {}
impl sealed::Sealed for TdmrsSet {}
impl sealed::Sealed for ExtInited {}
impl ModuleState for Unconfigured {}
impl ModuleState for TdmrsSet {}
impl ModuleState for ExtInited {}

/// The module's version: MAJOR_VERSION, MINOR_VERSION, UPDATE_VERSION
/// (module 1.5.01 reports 1, 5, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Update version.
    pub update: u16,
}

impl fmt::Display for ModuleVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{:02}", self.major, self.minor, self.update)
    }
}

/// The most vCPUs a TD can have when the module does not report
/// MAX_VCPUS_PER_TD: `MAX_VCPUS` (0xFFFF) of the module's
/// `src/common/data_structures/tdx_tdvps.h`, the range of TD_PARAMS'
/// 16-bit MAX_VCPUS.
pub const ARCH_MAX_VCPUS: u16 = 0xFFFF;

/// The global metadata the host needs, read once with TDH.SYS.RD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysInfo {
    /// MAJOR/MINOR/UPDATE_VERSION, when the module reports them (module
    /// 1.5.01 does).
    pub version: Option<ModuleVersion>,
    /// TDX_FEATURES0.
    pub features0: TdxFeatures0,
    /// MAX_TDMRS.
    pub max_tdmrs: u16,
    /// MAX_RESERVED_PER_TDMR.
    pub max_reserved_per_tdmr: u16,
    /// PAMT entry sizes (4K, 2M, 1G).
    pub pamt_entry_size: [u16; 3],
    /// TDR_BASE_SIZE.
    pub tdr_base_size: u16,
    /// TDCS_BASE_SIZE.
    pub tdcs_base_size: u16,
    /// TDVPS_BASE_SIZE.
    pub tdvps_base_size: u16,
    /// ATTRIBUTES_FIXED0 / FIXED1.
    pub attributes_fixed: (u64, u64),
    /// XFAM_FIXED0 / FIXED1.
    pub xfam_fixed: (u64, u64),
    /// MAX_VCPUS_PER_TD, when the module reports it (module 1.5.01 has no
    /// such field; 1.5.05 reports 576). See [`SysInfo::vcpu_limit`].
    pub max_vcpus_per_td: Option<u16>,
    /// The configurable CPUID leaves and their values (ebx:eax, edx:ecx).
    pub cpuid_config: Vec<(u64, [u64; 2])>,
    /// CMRs `(base, size)` with size > 0, when the module reports them.
    pub cmrs: Option<Vec<(u64, u64)>>,
    /// MEMORY_POOL_REQUIRED_PAGES, when the module has Extensions.
    pub memory_pool_required_pages: u32,
    /// EXT_REQUIRED, when the module has Extensions.
    pub ext_required: bool,
    /// PAMT_PAGE_BITMAP_ENTRY_BITS, when the module has Dynamic PAMT
    /// (TDX_FEATURES0 bit 36): bits per 4K page of the bitmap that takes
    /// the place of the 4K-level PAMT.
    pub dpamt_bitmap_bits: Option<u8>,
}

impl SysInfo {
    /// The most vCPUs a TD may have: MAX_VCPUS_PER_TD when the module
    /// reports it, else the architectural [`ARCH_MAX_VCPUS`].
    pub fn vcpu_limit(&self) -> u16 {
        self.max_vcpus_per_td.unwrap_or(ARCH_MAX_VCPUS)
    }

    /// True if TDH.VP.INIT takes the vCPU's x2APIC ID (version 1, R8): the
    /// module enumerates topology (TDX_FEATURES0.TOPOLOGY_ENUM, bit 20).
    /// Module 1.5.01 does not (its dispatcher refuses TDH.VP.INIT version
    /// 1 and it reports no TOPOLOGY_ENUM); module 1.5.05 does (both in its
    /// source), and so does every module Linux's KVM runs on (KVM requires
    /// the bit and issues version 1).
    pub fn vp_init_takes_x2apic_id(&self) -> bool {
        self.features0.topology_enum()
    }

    /// The planner's limits for this module.
    pub fn limits(&self) -> plan::Limits {
        plan::Limits {
            max_tdmrs: usize::from(self.max_tdmrs),
            max_reserved_per_tdmr: usize::from(self.max_reserved_per_tdmr),
            pamt_entry_size: self.pamt_entry_size,
            dpamt_bitmap_bits: None,
        }
    }
}

/// The bring-up step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Reading MSR 0x87.
    KeyIds,
    /// TDH.SYS.INIT.
    SysInit,
    /// TDH.SYS.LP.INIT on a CPU.
    LpInit(CpuId),
    /// TDH.SYS.RD of a field.
    ReadMetadata(MdFieldId),
    /// Planning TDMRs.
    Plan,
    /// Allocating PAMTs or buffers.
    Allocate,
    /// TDH.SYS.CONFIG.
    Config,
    /// TDH.SYS.KEY.CONFIG on a package.
    KeyConfig(PackageId),
    /// TDH.SYS.TDMR.INIT of the TDMR at this base.
    TdmrInit(u64),
    /// TDH.EXT.MEM.ADD of a window of the pool.
    ExtMemAdd {
        /// First page of the window (index into the pool).
        window: usize,
    },
    /// TDH.EXT.INIT.
    ExtInit,
}

/// Why bring-up failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BringUpError {
    /// A SEAMCALL failed.
    #[error("{step:?}: {error}")]
    Seamcall {
        /// Where.
        step: Step,
        /// The leaf and status.
        error: TdxError,
    },
    /// A resumable leaf stopped making progress.
    #[error("{step:?}: {leaf} made no progress in {calls} calls")]
    NoProgress {
        /// Where.
        step: Step,
        /// The leaf.
        leaf: Leaf,
        /// Calls without progress.
        calls: u32,
    },
    /// The KeyID partition cannot support TDX.
    #[error("KeyID partition: {0}")]
    KeyIds(KeyIdPartitionError),
    /// The module lacks a feature tdx-rs requires.
    #[error("the TDX module lacks {0} (TDX_FEATURES0)")]
    MissingFeature(&'static str),
    /// No plan for this machine and module.
    #[error("planning: {0}")]
    Plan(PlanError),
    /// The platform gave memory the module cannot take (outside every
    /// TDMR, or in a reserved area); nothing was donated.
    #[error("{step:?}: the platform gave frame {pfn:?}, which is not TDX memory")]
    NotTdxMemory {
        /// Where.
        step: Step,
        /// The first such frame.
        pfn: Pfn,
    },
    /// The platform could not provide memory.
    #[error("{step:?}: {error}")]
    Platform {
        /// Where.
        step: Step,
        /// What.
        error: PlatformError,
    },
    /// A metadata field read a value too large for what the ABI says it
    /// holds (a corrupted or unknown module).
    #[error("metadata field {field:?} read {value:#x}, above {max:#x}")]
    MetadataOutOfRange {
        /// The field.
        field: MdFieldId,
        /// What it read.
        value: u64,
        /// The largest value that fits.
        max: u64,
    },
}

/// A bring-up step refused before the module took anything: the handle
/// comes back unchanged in [`Failed::returned`].
pub type Refused<T> = Failed<T, BringUpError>;

/// What a failed [`TdxModule::configure`] hands back.
#[allow(
    clippy::large_enum_variant,
    reason = "configure boxes the whole failure; boxing the handle again would only add an allocation"
)]
pub enum ConfigureLeft<B, P> {
    /// Nothing was handed to the module: the unconfigured handle, as it
    /// was before the call (a retry, perhaps with another input, may
    /// succeed).
    Unchanged(TdxModule<Unconfigured, B, P>),
    /// The module took the configuration (TDH.SYS.CONFIG succeeded) and a
    /// later step failed: the module holds a configuration it cannot
    /// finish and must be reloaded before TDX can be used. Caches were
    /// flushed (and PAMTs cleared where the erratum needs it) before the
    /// PAMT pages went back to the allocator. The backend and platform
    /// come back for the reload.
    MustReload {
        /// The backend.
        backend: B,
        /// The platform.
        platform: P,
    },
}

impl<B, P> fmt::Debug for ConfigureLeft<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unchanged(_) => "Unchanged(..)",
            Self::MustReload { .. } => "MustReload { .. }",
        })
    }
}

/// Why [`TdxModule::configure`] failed, and what it hands back.
pub type ConfigureError<B, P> = Failed<ConfigureLeft<B, P>, BringUpError>;

/// What bring-up did, for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BringUpStats {
    /// SEAMCALLs issued (retries and resumptions included).
    pub seamcalls: u64,
    /// Retries after busy or no-entropy statuses.
    pub retries: u64,
    /// Re-plans around PAMT ranges the platform could not give.
    pub replans: u32,
}

/// The TDX module, in bring-up state `S`, driven through backend `B` on
/// platform `P`.
///
/// # Invariants
///
/// The state parameter matches what the module has done: only this module
/// creates handles, and each transition issues the leaves of its state.
///
/// # Examples
///
/// Bring-up on a simulated host whose module (1.5.16) has Dynamic PAMT
/// (`Simulator` is both the backend and the platform):
///
/// ```
/// use tdx_api::TdxModule;
/// use tdx_sim::{MachineDesc, Profile, Simulator};
///
/// const GIB: u64 = 1 << 30;
/// let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
///     .with_cpus(2, 2)
///     .with_profile(Profile::tdx_1_5_16());
/// let sim = Simulator::new(desc.clone()).unwrap();
///
/// // TDH.SYS.INIT, TDH.SYS.LP.INIT on every CPU, the global metadata.
/// let module = TdxModule::init(&sim, &sim).map_err(|r| r.error).unwrap();
/// assert!(module.uses_dynamic_pamt());
/// // The plan, its PAMTs, TDH.SYS.CONFIG, KEY.CONFIG on each package,
/// // TDMR.INIT until done.
/// let module = module.configure(&desc.plan_input()).map_err(|e| e.error.clone()).unwrap();
/// assert!(module.dynamic_pamt());
/// assert!(module.plan().unwrap().covers(5 * GIB));
/// // The Extensions, if the module asks for them: then it is ready for TDs
/// // (`td::TdHost::new`).
/// let ready = module.init_extensions().map_err(|r| r.error).unwrap();
/// assert!(ready.sysinfo().vcpu_limit() > 0);
/// ```
pub struct TdxModule<S: ModuleState, B, P> {
    backend: B,
    platform: P,
    info: SysInfo,
    /// Read once from the platform, at `init`.
    hardware: Hardware,
    global_keyid: u16,
    plan: Option<Plan>,
    /// PAMT runs, one per TDMR, owned by the module from TDH.SYS.CONFIG on.
    pamts: Vec<PfnRun>,
    /// TDH.SYS.CONFIG turned Dynamic PAMT on.
    dynamic_pamt: bool,
    /// The caller lets `configure` use Dynamic PAMT where the module has it.
    allow_dynamic_pamt: bool,
    /// Extension pool pages donated so far (the module keeps them).
    pool: Vec<PfnRun>,
    /// Pages in an unknown state after a failed TDH.EXT.MEM.ADD: perhaps
    /// the module's, perhaps not. Held for good, never freed.
    lost: Vec<PfnRun>,
    stats: BringUpStats,
    _state: PhantomData<S>,
}

impl<S: ModuleState, B, P> fmt::Debug for TdxModule<S, B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdxModule")
            .field("state", &core::any::type_name::<S>())
            .field("info", &self.info)
            .field("tdmrs", &self.plan.as_ref().map(|p| p.tdmrs.len()))
            .finish_non_exhaustive()
    }
}

impl<S: ModuleState, B, P> TdxModule<S, B, P> {
    /// The global metadata.
    pub fn sysinfo(&self) -> &SysInfo {
        &self.info
    }

    /// The plan the module was configured with (none before `configure`).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Whether TDH.SYS.CONFIG turned Dynamic PAMT on.
    pub fn dynamic_pamt(&self) -> bool {
        self.dynamic_pamt
    }

    /// The machine's KeyID partition, KeyID shift and errata, as the
    /// platform reported them once, at [`init`](TdxModule::init)
    /// ([`HardwareInfo`](crate::HardwareInfo)): nothing asks the platform
    /// again.
    pub fn hardware(&self) -> Hardware {
        self.hardware
    }

    /// The global private KeyID.
    pub fn global_keyid(&self) -> u16 {
        self.global_keyid
    }

    /// Counters.
    pub fn stats(&self) -> &BringUpStats {
        &self.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Pages donated to the extension pool.
    pub fn pool_pages(&self) -> u64 {
        self.pool.iter().map(|r| r.count()).sum()
    }

    /// Pages held for good because a failed TDH.EXT.MEM.ADD left their
    /// owner unknown (neither pool nor free).
    pub fn lost_pages(&self) -> &[PfnRun] {
        &self.lost
    }

    fn into_state<T: ModuleState>(self) -> TdxModule<T, B, P> {
        TdxModule {
            backend: self.backend,
            platform: self.platform,
            info: self.info,
            hardware: self.hardware,
            global_keyid: self.global_keyid,
            plan: self.plan,
            pamts: self.pamts,
            dynamic_pamt: self.dynamic_pamt,
            allow_dynamic_pamt: self.allow_dynamic_pamt,
            pool: self.pool,
            lost: self.lost,
            stats: self.stats,
            _state: PhantomData,
        }
    }
}

/// Runs `call` (one SEAMCALL) under the retry policy: entropy and busy
/// statuses are retried, bounded; anything else is returned.
fn with_retries<P: Platform>(
    platform: &P,
    stats: &mut BringUpStats,
    leaf: LeafVersion,
    step: Step,
    mut call: impl FnMut() -> TdxStatus,
) -> Result<TdxStatus, BringUpError> {
    let (mut entropy, mut busy) = (0, 0);
    loop {
        stats.seamcalls += 1;
        let s = call();
        let resumable = matches!(leaf.leaf(), Leaf::EXT_MEM_ADD | Leaf::EXT_INIT);
        match s.kind() {
            None => return Ok(s),
            Some(ErrorKind::Interrupted) if resumable => return Ok(s),
            Some(ErrorKind::NoEntropy) if entropy < ENTROPY_RETRIES => entropy += 1,
            Some(ErrorKind::Busy) if busy < BUSY_RETRIES => {
                busy += 1;
                platform.yield_now();
            }
            _ => {
                return Err(BringUpError::Seamcall {
                    step,
                    error: TdxError::new(leaf, s),
                });
            }
        }
        stats.retries += 1;
    }
}

/// As [`with_retries`], for a leaf that must run on `cpu`: each call is one
/// [`Cpus::on_cpu`](crate::Cpus::on_cpu) with exactly one SEAMCALL in it, and the back-off
/// (a yield) happens in the calling thread between them.
fn with_retries_on<P: Platform>(
    p: &P,
    cpu: CpuId,
    stats: &mut BringUpStats,
    leaf: LeafVersion,
    step: Step,
    call: &mut (dyn FnMut() -> TdxStatus + Send),
) -> Result<TdxStatus, BringUpError> {
    with_retries(p, stats, leaf, step, || {
        let mut s = TdxStatus::SUCCESS;
        p.on_cpu(cpu, &mut || s = call());
        s
    })
}

impl<B: Seamcall + Sync, P: Platform + Sync> TdxModule<Unconfigured, B, P> {
    /// TDH.SYS.INIT, TDH.SYS.LP.INIT on every CPU, and the global metadata.
    ///
    /// On failure the backend and platform come back with the error.
    #[doc(alias = "TDH.SYS.INIT")]
    #[doc(alias = "TDH.SYS.LP.INIT")]
    #[doc(alias = "TDH.SYS.RD")]
    pub fn init(backend: B, platform: P) -> Result<Self, Refused<(B, P)>> {
        let mut stats = BringUpStats::default();
        match Self::init_inner(&backend, &platform, &mut stats) {
            Ok((info, hardware, global_keyid)) => Ok(Self {
                backend,
                platform,
                info,
                hardware,
                global_keyid,
                plan: None,
                pamts: Vec::new(),
                dynamic_pamt: false,
                allow_dynamic_pamt: true,
                pool: Vec::new(),
                lost: Vec::new(),
                stats,
                _state: PhantomData,
            }),
            Err(error) => Err(Failed {
                error,
                returned: (backend, platform),
            }),
        }
    }

    fn init_inner(
        b: &B,
        p: &P,
        stats: &mut BringUpStats,
    ) -> Result<(SysInfo, Hardware, u16), BringUpError> {
        // The one time the platform is asked: the module keeps the answer.
        let hardware = p.hardware();
        let keyids = hardware.keyid_partition;
        keyids.check().map_err(BringUpError::KeyIds)?;
        // A refused `init` may be retried. TDH.SYS.INIT and TDH.SYS.LP.INIT
        // run once per module load, so on a retry the module answers that
        // they are done: that is success here. (If the module went further,
        // to configured, TDH.SYS.CONFIG will say so with a typed error.)
        // Each `on_cpu` closure issues one SEAMCALL; retries and yields
        // happen here, between them (the platform may run closures in
        // atomic context).
        with_retries_on(
            p,
            CpuId(0),
            stats,
            Leaf::SYS_INIT.v0(),
            Step::SysInit,
            &mut || {
                // SAFETY: TDH.SYS.INIT takes no memory operand.
                match unsafe { leaf::tdh_sys_init(b) } {
                    TdxStatus::SYS_INIT_NOT_PENDING => TdxStatus::SUCCESS,
                    s => s,
                }
            },
        )?;
        for c in 0..p.cpus() {
            let cpu = CpuId(c);
            let step = Step::LpInit(cpu);
            with_retries_on(p, cpu, stats, Leaf::SYS_LP_INIT.v0(), step, &mut || {
                // SAFETY: TDH.SYS.LP.INIT takes no memory operand; `on_cpu`
                // runs this on `cpu` (the `Cpus` contract).
                match unsafe { leaf::tdh_sys_lp_init(b) } {
                    TdxStatus::SYS_LP_INIT_DONE => TdxStatus::SUCCESS,
                    s => s,
                }
            })?;
        }
        // TDH.SYS.RD runs on any CPU the module initialized (all of them,
        // now): from the calling thread, not inside `on_cpu`.
        let info = read_sysinfo(b, p, stats)?;
        if !info.features0.no_rbp_mod() {
            return Err(BringUpError::MissingFeature("NO_RBP_MOD"));
        }
        // The global KeyID is an HKID: below MAX_HKIDS (the partition was
        // checked against it), so it fits the ABI's 16 bits.
        let global = u16::try_from(keyids.global_keyid()).map_err(|_| {
            BringUpError::KeyIds(KeyIdPartitionError::AboveMaxHkids {
                last: u64::from(keyids.global_keyid()),
                max: tdx_types::metadata::MAX_HKIDS,
            })
        })?;
        Ok((info, hardware, global))
    }

    /// Whether [`configure`](Self::configure) turns Dynamic PAMT on: the
    /// module has it (TDX_FEATURES0 bit 36; Intel's module 1.5.16 and
    /// later), the caller allows it ([`set_dynamic_pamt`](Self::set_dynamic_pamt),
    /// allowed by default), and the KeyID bits start at bit 48 or below
    /// ([`Hardware::keyid_shift`]): the module keeps a pair's addresses in
    /// 36-bit fields and its TDH.SYS.CONFIG refuses Dynamic PAMT otherwise
    /// (`tdh_sys_config.c`, `pamt_manager.h`; Linux checks the same).
    ///
    /// With it the PAMT's 4K level is a bitmap (1 bit per 4K page instead
    /// of 16 bytes), and the 4K-level entries of a 2 MiB range come as a
    /// pair of pages the library adds while the module holds 4K pages of
    /// the range ([`TdHost::pamt_pairs`](crate::td::TdHost::pamt_pairs)).
    pub fn uses_dynamic_pamt(&self) -> bool {
        self.allow_dynamic_pamt
            && self.info.dpamt_bitmap_bits.is_some()
            && self.hardware.keyid_shift <= 48
    }

    /// Allows (the default) or refuses Dynamic PAMT for
    /// [`configure`](Self::configure). Refusing it keeps the static PAMT:
    /// 0.4% of TDX memory at bring-up, and no page pair to add on the
    /// first 4K page of a 2 MiB range.
    pub fn set_dynamic_pamt(&mut self, allow: bool) {
        self.allow_dynamic_pamt = allow;
    }

    /// The plan for `input` with this module's limits (what `configure`
    /// will use), without touching anything.
    pub fn plan_for(&self, input: &PlanInput) -> Result<Plan, PlanError> {
        let mut input = input.clone();
        input.limits = self.info.limits();
        if self.uses_dynamic_pamt() {
            input.limits.dpamt_bitmap_bits = self.info.dpamt_bitmap_bits;
        }
        if input.cmrs.is_none() {
            input.cmrs = self
                .info
                .cmrs
                .as_ref()
                .map(|c| c.iter().map(|&(b, s)| (b, b + s)).collect());
        }
        plan::plan(&input, Strategy::Best)
    }

    /// Configures the TDMRs for `input` (the machine's usable memory) and
    /// initializes them: plan, PAMTs, TDH.SYS.CONFIG, WBINVD,
    /// TDH.SYS.KEY.CONFIG on each package, TDH.SYS.TDMR.INIT until done.
    #[doc(alias = "TDH.SYS.CONFIG")]
    #[doc(alias = "TDH.SYS.KEY.CONFIG")]
    #[doc(alias = "TDH.SYS.TDMR.INIT")]
    pub fn configure(
        mut self,
        input: &PlanInput,
    ) -> Result<TdxModule<TdmrsSet, B, P>, alloc::boxed::Box<ConfigureError<B, P>>> {
        let refused = |m: Self, error| {
            Err(alloc::boxed::Box::new(Failed::new(
                error,
                ConfigureLeft::Unchanged(m),
            )))
        };
        // 1. Plan and get exactly the PAMT ranges; re-plan around refusals.
        let mut input = input.clone();
        // The re-plan budget is per call: a caller retrying after a refusal
        // (perhaps after freeing memory) gets the full budget again.
        let mut replans = 0;
        let (plan, pamts) = loop {
            let plan = match self.plan_for(&input) {
                Ok(p) => p,
                Err(e) => return refused(self, BringUpError::Plan(e)),
            };
            match alloc_pamts(&self.platform, &plan) {
                Ok(runs) => break (plan, runs),
                Err(missing) if replans < REPLAN_LIMIT => {
                    replans += 1;
                    self.stats.replans += 1;
                    input.avoid.push(missing);
                }
                Err((s, e)) => {
                    let error = PlatformError::OutOfMemory {
                        count: (e - s) / 4096,
                        align: 1,
                        placement: Placement::Exact(Pfn::new(s / 4096)),
                    };
                    return refused(
                        self,
                        BringUpError::Platform {
                            step: Step::Allocate,
                            error,
                        },
                    );
                }
            }
        };
        // 2. TDMR_INFOs and their address array in host memory.
        let infos = plan.tdmr_infos();
        let buf = match write_config_buffer(&self.platform, &infos) {
            Ok(b) => b,
            Err(error) => {
                free_runs(&self.platform, &pamts);
                return refused(
                    self,
                    BringUpError::Platform {
                        step: Step::Allocate,
                        error,
                    },
                );
            }
        };
        // 3. TDH.SYS.CONFIG.
        let dynamic = self.uses_dynamic_pamt();
        let keyid = SysConfigKeyId::new()
            .with_hkid(self.global_keyid)
            .with_dynamic_pamt(dynamic);
        let (b, p) = (&self.backend, &self.platform);
        let r = with_retries(
            p,
            &mut self.stats,
            Leaf::SYS_CONFIG.v0(),
            Step::Config,
            || {
                // SAFETY: the array and the TDMR_INFOs are in `buf`, host memory
                // allocated for this call and not touched until it returns; the
                // PAMT runs were allocated for the module and are handed over
                // here (crate-level contract of tdx-sys, points 1 and 2).
                unsafe { leaf::tdh_sys_config(b, buf.hpa(), infos.len() as u64, keyid) }
            },
        );
        // SAFETY: `buf` came from this platform; the module only read it.
        unsafe { p.free_pages(buf) };
        if let Err(error) = r {
            // The module keeps nothing of a refused configuration (it does
            // keep the global KeyID reserved, which a retry reuses).
            free_runs(p, &pamts);
            return refused(self, error);
        }
        self.plan = Some(plan);
        self.pamts = pamts;
        self.dynamic_pamt = dynamic;
        // 4. Keys and TDMRs; from here on a failure means reload.
        match self.program_keys_and_init_tdmrs() {
            Ok(()) => Ok(self.into_state()),
            Err(error) => Err(alloc::boxed::Box::new(self.abandon(error))),
        }
    }

    fn program_keys_and_init_tdmrs(&mut self) -> Result<(), BringUpError> {
        let (b, p) = (&self.backend, &self.platform);
        let stats = &mut self.stats;
        // PAMT lines dirtied under KeyID 0 must not be written back over
        // what the module writes under the global KeyID.
        p.wbinvd_all();
        for (pkg, cpu) in crate::retry::package_cpus(p) {
            let step = Step::KeyConfig(pkg);
            with_retries_on(p, cpu, stats, Leaf::SYS_KEY_CONFIG.v0(), step, &mut || {
                // SAFETY: no memory operand; runs on a CPU of `pkg`.
                unsafe { leaf::tdh_sys_key_config(b) }
            })?;
        }
        let bases: Vec<(u64, u64)> = self.plan.as_ref().map_or(Vec::new(), |pl| {
            pl.tdmrs.iter().map(|t| (t.base, t.end())).collect()
        });
        for (base, end) in bases {
            let step = Step::TdmrInit(base);
            let mut last = 0;
            let mut stalled = 0;
            loop {
                let mut out = 0;
                let s = with_retries(p, stats, Leaf::SYS_TDMR_INIT.v0(), step, || {
                    // SAFETY: the module writes the TDMR's PAMT, which it
                    // owns since TDH.SYS.CONFIG.
                    let c = unsafe { leaf::tdh_sys_tdmr_init(b, Hpa::new(base)) };
                    out = c.out;
                    c.status
                })?;
                if s == TdxStatus::TDMR_ALREADY_INITIALIZED || out >= end {
                    break;
                }
                // Progress is reported at 1 GiB granularity: many calls in
                // a row may return the same value.
                if out > last {
                    last = out;
                    stalled = 0;
                } else {
                    stalled += 1;
                    if stalled > (1 << 30) / (4 << 10) {
                        return Err(BringUpError::NoProgress {
                            step,
                            leaf: Leaf::SYS_TDMR_INIT,
                            calls: stalled,
                        });
                    }
                }
                p.yield_now();
            }
        }
        Ok(())
    }

    /// After a failure past TDH.SYS.CONFIG: flush every cache, clear the
    /// PAMTs where the erratum needs it, give the PAMT pages back. A PAMT
    /// the platform cannot clear ([`PlatformError::NoDirectMap`]) is leaked
    /// with the reason instead of freed.
    fn abandon(self, error: BringUpError) -> ConfigureError<B, P> {
        let p = &self.platform;
        p.wbinvd_all();
        for r in &self.pamts {
            if self.hardware.errata.tdx_pw_mce {
                // SAFETY: the module is being abandoned (it must be reloaded
                // before any further SEAMCALL), so the PAMT is ours again.
                if unsafe { p.movdir64b_clear(*r) }.is_err() {
                    p.leak_pages(
                        *r,
                        "a PAMT could not be cleared with MOVDIR64B (no direct map)",
                    );
                    continue;
                }
            }
            free_runs(p, core::slice::from_ref(r));
        }
        Failed::new(
            error,
            ConfigureLeft::MustReload {
                backend: self.backend,
                platform: self.platform,
            },
        )
    }
}

impl<B: Seamcall + Sync, P: Platform + Sync> TdxModule<TdmrsSet, B, P> {
    /// Initializes the module Extensions: TDH.EXT.MEM.ADD of the pool the
    /// module asks for (when MEMORY_POOL_REQUIRED_PAGES > 0) and
    /// TDH.EXT.INIT (when EXT_REQUIRED), each decided on its own. A no-op
    /// transition for a module without Extensions.
    ///
    /// Pool pages are donated for good. On failure the handle comes back
    /// (pages donated so far stay donated and are counted; a retry donates
    /// only what is still missing).
    #[doc(alias = "TDH.EXT.MEM.ADD")]
    #[doc(alias = "TDH.EXT.INIT")]
    pub fn init_extensions(
        mut self,
    ) -> Result<TdxModule<ExtInited, B, P>, alloc::boxed::Box<Refused<Self>>> {
        if !self.info.features0.ext() {
            return Ok(self.into_state());
        }
        match self.init_extensions_inner() {
            Ok(()) => Ok(self.into_state()),
            Err(error) => Err(alloc::boxed::Box::new(Failed {
                error,
                returned: self,
            })),
        }
    }

    fn init_extensions_inner(&mut self) -> Result<(), BringUpError> {
        let need =
            u64::from(self.info.memory_pool_required_pages).saturating_sub(self.pool_pages());
        if need > 0 {
            self.donate_pool(need)?;
        }
        if self.info.ext_required {
            let (b, p) = (&self.backend, &self.platform);
            let stats = &mut self.stats;
            let mut calls_without_end = 0;
            loop {
                let s = with_retries(p, stats, Leaf::EXT_INIT.v0(), Step::ExtInit, || {
                    // SAFETY: TDH.EXT.INIT takes no memory operand.
                    unsafe { leaf::tdh_ext_init(b) }
                })?;
                if s != TdxStatus::INTERRUPTED_RESUMABLE {
                    break;
                }
                // The leaf keeps its progress inside the module; bound the
                // number of resumptions.
                calls_without_end += 1;
                if calls_without_end > EXT_INIT_CALL_LIMIT {
                    return Err(BringUpError::NoProgress {
                        step: Step::ExtInit,
                        leaf: Leaf::EXT_INIT,
                        calls: calls_without_end,
                    });
                }
                p.yield_now();
            }
        }
        Ok(())
    }

    /// Donates `count` pages in windows of at most 512.
    fn donate_pool(&mut self, count: u64) -> Result<(), BringUpError> {
        let step = Step::ExtMemAdd { window: 0 };
        let mut array = TdxPageArray::alloc_contiguous(&self.platform, count, Placement::Anywhere)
            .map_err(|error| BringUpError::Platform { step, error })?;
        // The module takes only TDX memory (in a TDMR, outside its reserved
        // areas); a platform with other RAM (CXL, hot-added) may hand some
        // out. Refuse before donating rather than fail mid-window.
        if let Some(plan) = &self.plan
            && let Some(pfn) = array
                .pages()
                .iter()
                .copied()
                .find(|f| !plan.covers(f.as_u64() * 4096))
        {
            // SAFETY: nothing was handed to the module yet.
            unsafe { array.free() };
            return Err(BringUpError::NotTdxMemory { step, pfn });
        }
        let (b, p) = (&self.backend, &self.platform);
        let mut donated = 0usize;
        let mut lost = 0usize;
        let mut result = Ok(());
        let mut offset = 0;
        'windows: while offset < array.len() {
            let n = array.populate(offset);
            let step = Step::ExtMemAdd { window: offset };
            let mut info = array.hpa_list_info();
            let mut stalled = 0;
            loop {
                let mut out = info;
                let r = with_retries(p, &mut self.stats, Leaf::EXT_MEM_ADD.v0(), step, || {
                    // SAFETY: the window's pages belong to `array` (allocated
                    // for the module) and are handed over for good; the root
                    // page is host memory the module reads during the call.
                    let c = unsafe { leaf::tdh_ext_mem_add(b, info) };
                    out = c.out;
                    c.status
                });
                match r {
                    Ok(TdxStatus::INTERRUPTED_RESUMABLE) => {
                        let progress = out.first_entry() > info.first_entry();
                        if progress {
                            stalled = 0;
                        } else {
                            stalled += 1;
                            if stalled >= NO_PROGRESS_LIMIT {
                                result = Err(BringUpError::NoProgress {
                                    step,
                                    leaf: Leaf::EXT_MEM_ADD,
                                    calls: stalled,
                                });
                                donated = offset + usize::from(out.first_entry());
                                break 'windows;
                            }
                        }
                        info = out;
                        p.yield_now();
                    }
                    Ok(_) => {
                        offset += n;
                        donated = offset;
                        break;
                    }
                    Err(e) => {
                        // Outputs of a failed call are not to be trusted, so
                        // how much of this window the module took is unknown:
                        // the whole window is lost (never freed, never
                        // counted as pool), as Linux does with pool memory.
                        donated = offset;
                        lost = n;
                        result = Err(e);
                        break 'windows;
                    }
                }
            }
        }
        // SAFETY: the module took the first `donated` pages for good and
        // may own some of the next `lost` (the window of a failed call,
        // leaked below); it was never given a page past those (windows are
        // given in order and the loop stopped at the failing one), or it
        // reported it did not take it (an interrupted call's FIRST_ENTRY).
        let mut given = unsafe { array.split_donated(donated + lost) };
        let lost_runs = split_runs_at(&mut given, donated as u64);
        self.pool.extend(given);
        for r in &lost_runs {
            p.leak_pages(
                *r,
                "TDH.EXT.MEM.ADD failed: the module may own some of these",
            );
        }
        self.lost.extend(lost_runs);
        result
    }
}

/// Splits `runs` after its first `pages` pages; returns the rest.
fn split_runs_at(runs: &mut Vec<PfnRun>, pages: u64) -> Vec<PfnRun> {
    let mut left = pages;
    let mut at = runs.len();
    for (i, r) in runs.iter().enumerate() {
        if left < r.count() {
            at = i;
            break;
        }
        left -= r.count();
    }
    let mut rest = runs.split_off(at);
    if left > 0
        && let Some(first) = rest.first_mut()
    {
        let head = PfnRun::try_new(first.first(), left).expect("shorter than the run");
        let tail = PfnRun::try_new(
            Pfn::new(first.first().as_u64() + left),
            first.count() - left,
        )
        .expect("non-empty rest");
        runs.push(head);
        *first = tail;
    }
    rest
}

/// Allocates every TDMR's PAMT exactly where the plan puts it. On failure
/// frees what it got and returns the range it could not get.
fn alloc_pamts<P: Platform>(p: &P, plan: &Plan) -> Result<Vec<PfnRun>, (u64, u64)> {
    let mut runs = Vec::with_capacity(plan.tdmrs.len());
    for t in &plan.tdmrs {
        let (base, bytes) = (t.pamt.l4k.0, t.pamt.bytes());
        match p.alloc_pages(bytes / 4096, 1, Placement::Exact(Pfn::new(base / 4096))) {
            Ok(r) => runs.push(r),
            Err(_) => {
                free_runs(p, &runs);
                return Err((base, base + bytes));
            }
        }
    }
    Ok(runs)
}

fn free_runs<P: Platform>(p: &P, runs: &[PfnRun]) {
    for r in runs {
        // SAFETY: every run came from `alloc_pamts` on this platform, and
        // callers only free runs the module does not (or no longer) own,
        // after the flushes the ABI requires.
        unsafe { p.free_pages(*r) };
    }
}

/// Writes the TDMR_INFOs and the array of their addresses into fresh host
/// pages: page 0 holds the array (512-byte aligned), the TDMR_INFOs follow
/// at 512-byte strides.
fn write_config_buffer<P: Platform>(p: &P, infos: &[TdmrInfo]) -> Result<PfnRun, PlatformError> {
    let pages = (infos.len() as u64 * 512).div_ceil(4096) + 1;
    let run = p.alloc_pages(pages, 1, Placement::Anywhere)?;
    let base = run.hpa().as_u64();
    let mut array = Vec::with_capacity(infos.len() * 8);
    for (i, t) in infos.iter().enumerate() {
        let pa = base + 4096 + 512 * i as u64;
        array.extend_from_slice(&pa.to_le_bytes());
        // SAFETY: `run` was just allocated from this platform for us.
        unsafe { p.write_phys(Hpa::new(pa), t.as_bytes()) };
    }
    // SAFETY: as above.
    unsafe { p.write_phys(run.hpa(), &array) };
    Ok(run)
}

/// A TDH.SYS.RD result for a field some modules lack: `None` when the
/// module answers TDX_METADATA_FIELD_ID_INCORRECT (no such field), the
/// error for any other failure.
fn optional(r: Result<u64, BringUpError>) -> Result<Option<u64>, BringUpError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(BringUpError::Seamcall { error, .. })
            if error.status().code() == TdxStatus::METADATA_FIELD_ID_INCORRECT =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads [`SysInfo`] with TDH.SYS.RD.
/// `value` of `field`, which the ABI says fits in 16 bits: a larger one is
/// an error, not silently cut.
fn fit16(field: MdFieldId, value: u64) -> Result<u16, BringUpError> {
    u16::try_from(value).map_err(|_| BringUpError::MetadataOutOfRange {
        field,
        value,
        max: u64::from(u16::MAX),
    })
}

/// As [`fit16`], for 32 bits.
fn fit32(field: MdFieldId, value: u64) -> Result<u32, BringUpError> {
    u32::try_from(value).map_err(|_| BringUpError::MetadataOutOfRange {
        field,
        value,
        max: u64::from(u32::MAX),
    })
}

fn read_sysinfo<B: Seamcall, P: Platform>(
    b: &B,
    p: &P,
    stats: &mut BringUpStats,
) -> Result<SysInfo, BringUpError> {
    let mut rd = |f: MdFieldId| -> Result<u64, BringUpError> {
        let mut value = 0;
        with_retries(p, stats, Leaf::SYS_RD.v0(), Step::ReadMetadata(f), || {
            // SAFETY: TDH.SYS.RD takes no memory operand.
            let c = unsafe { leaf::tdh_sys_rd(b, f) };
            value = c.out.value;
            c.status
        })?;
        Ok(value)
    };
    let features0 = TdxFeatures0::from_bits(rd(field::TDX_FEATURES0)?);
    // Optional fields: a module without them answers
    // TDX_METADATA_FIELD_ID_INCORRECT (module 1.5.01 for MAX_VCPUS_PER_TD),
    // which is the only error that means "absent"; any other is an error.
    let version = match (
        optional(rd(field::MAJOR_VERSION))?,
        optional(rd(field::MINOR_VERSION))?,
        optional(rd(field::UPDATE_VERSION))?,
    ) {
        (Some(major), Some(minor), Some(update)) => Some(ModuleVersion {
            major: fit16(field::MAJOR_VERSION, major)?,
            minor: fit16(field::MINOR_VERSION, minor)?,
            update: fit16(field::UPDATE_VERSION, update)?,
        }),
        _ => None,
    };
    let max_vcpus_per_td = match optional(rd(field::MAX_VCPUS_PER_TD))? {
        Some(v) => Some(fit16(field::MAX_VCPUS_PER_TD, v)?),
        None => None,
    };
    let n = fit32(field::NUM_CPUID_CONFIG, rd(field::NUM_CPUID_CONFIG)?)?;
    let mut cpuid_config = Vec::with_capacity(n as usize);
    for i in 0..n.min(128) {
        let id = |f: Option<MdFieldId>| f.ok_or(BringUpError::MissingFeature("CPUID_CONFIG index"));
        let leaf = rd(id(field::cpuid_config_leaf(i))?)?;
        let v0 = rd(id(field::cpuid_config_value(i, 0))?)?;
        let v1 = rd(id(field::cpuid_config_value(i, 1))?)?;
        cpuid_config.push((leaf, [v0, v1]));
    }
    // CMRs: optional (fields from a proposed series; absent on some modules).
    let cmrs = match optional(rd(field::NUM_CMRS))? {
        Some(n) => {
            // At most 32 CMRs (the module's MAX_CMRS), each inside the
            // 52-bit physical address space: a module reporting more, or a
            // range past the end, is refused here rather than overflowing
            // the planner's arithmetic.
            const MAX_CMRS: u64 = 32;
            const PA_END: u64 = 1 << 52;
            if n > MAX_CMRS {
                return Err(BringUpError::MetadataOutOfRange {
                    field: field::NUM_CMRS,
                    value: n,
                    max: MAX_CMRS,
                });
            }
            let mut v = Vec::new();
            for i in 0..n as u32 {
                let (Some(bf), Some(sf)) = (field::cmr_base(i), field::cmr_size(i)) else {
                    break;
                };
                let (base, size) = (rd(bf)?, rd(sf)?);
                if base > PA_END {
                    return Err(BringUpError::MetadataOutOfRange {
                        field: bf,
                        value: base,
                        max: PA_END,
                    });
                }
                if size > PA_END - base {
                    return Err(BringUpError::MetadataOutOfRange {
                        field: sf,
                        value: size,
                        max: PA_END - base,
                    });
                }
                if size > 0 {
                    v.push((base, size));
                }
            }
            Some(v)
        }
        None => None,
    };
    // Dynamic PAMT (module 1.5.16 and later): the bitmap's entry size.
    let dpamt_bitmap_bits = if features0.dynamic_pamt() {
        let bits = rd(field::PAMT_PAGE_BITMAP_ENTRY_BITS)?;
        Some(
            u8::try_from(bits).map_err(|_| BringUpError::MetadataOutOfRange {
                field: field::PAMT_PAGE_BITMAP_ENTRY_BITS,
                value: bits,
                max: u64::from(u8::MAX),
            })?,
        )
    } else {
        None
    };
    let (pool, ext_required) = if features0.ext() {
        (
            fit32(
                field::EXT_MEMORY_POOL_REQUIRED_PAGES,
                rd(field::EXT_MEMORY_POOL_REQUIRED_PAGES)?,
            )?,
            rd(field::EXT_REQUIRED)? != 0,
        )
    } else {
        (0, false)
    };
    Ok(SysInfo {
        version,
        features0,
        max_tdmrs: fit16(field::MAX_TDMRS, rd(field::MAX_TDMRS)?)?,
        max_reserved_per_tdmr: fit16(
            field::MAX_RESERVED_PER_TDMR,
            rd(field::MAX_RESERVED_PER_TDMR)?,
        )?,
        pamt_entry_size: [
            fit16(field::PAMT_4K_ENTRY_SIZE, rd(field::PAMT_4K_ENTRY_SIZE)?)?,
            fit16(field::PAMT_2M_ENTRY_SIZE, rd(field::PAMT_2M_ENTRY_SIZE)?)?,
            fit16(field::PAMT_1G_ENTRY_SIZE, rd(field::PAMT_1G_ENTRY_SIZE)?)?,
        ],
        tdr_base_size: fit16(field::TDR_BASE_SIZE, rd(field::TDR_BASE_SIZE)?)?,
        tdcs_base_size: fit16(field::TDCS_BASE_SIZE, rd(field::TDCS_BASE_SIZE)?)?,
        tdvps_base_size: fit16(field::TDVPS_BASE_SIZE, rd(field::TDVPS_BASE_SIZE)?)?,
        attributes_fixed: (rd(field::ATTRIBUTES_FIXED0)?, rd(field::ATTRIBUTES_FIXED1)?),
        xfam_fixed: (rd(field::XFAM_FIXED0)?, rd(field::XFAM_FIXED1)?),
        max_vcpus_per_td,
        cpuid_config,
        cmrs,
        memory_pool_required_pages: pool,
        ext_required,
        dpamt_bitmap_bits,
    })
}
