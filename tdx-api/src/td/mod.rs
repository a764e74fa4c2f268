//! Trust Domains: HKIDs, the TD and vCPU build, PFN-only private memory,
//! and a teardown that gives back every page or says why it cannot.
//!
//! What this module owns:
//!
//! - [`TdHost`]: takes a ready module ([`TdxModule<ExtInited>`]) and owns
//!   the allocator of guest KeyIDs (HKIDs) from the partition's guest
//!   range; TDs borrow it. Only a ready module becomes a `TdHost`, so only
//!   a ready module creates TDs.
//! - [`Td<S>`]: one TD, with its state `S` a type: [`Created`] (TDH.MNG.CREATE)
//!   → [`KeysConfigured`] (TDH.MNG.KEY.CONFIG on one CPU of every package)
//!   → [`TdcsAdded`] (TDH.MNG.ADDCX) → [`Initialized`] (TDH.MNG.INIT with a
//!   [`TdParams`] checked against [`SysInfo`](crate::SysInfo) first; vCPUs,
//!   initial pages with TDH.MEM.PAGE.ADD and optional TDH.MR.EXTEND) →
//!   [`Finalized`] (TDH.MR.FINALIZE; TDH.MEM.PAGE.AUG at 4K/2M, 1G by
//!   AUG + PROMOTE, DEMOTE/PROMOTE, removal, giving back an emptied S-EPT
//!   page with TDH.MEM.SEPT.REMOVE). Each
//!   operation exists only on the state that allows it. Control pages (TDR,
//!   TDCS, TDVPR, TDCX, S-EPT) are [`FirmwarePage`]s held by the TD,
//!   allocated from the [`Platform`] as needed.
//! - vCPUs, on an initialized TD: a [`VcpuBuilder`] goes [`VpCreated`]
//!   (TDH.VP.CREATE) → [`VpTdcxAdded`] (TDH.VP.ADDCX) → a [`VcpuId`]
//!   (TDH.VP.INIT on the vCPU's CPU); it borrows the TD, so the TD cannot
//!   be finalized mid-build. [`Td::create_vcpu`] does all three.
//! - Private memory is given as [`GuestFrame`]s: a `Pfn` or an aligned run,
//!   checked by arithmetic only; the caller's promise is made once, in the
//!   `unsafe` constructor.
//! - [`Td::teardown`], on every state: VP.FLUSH, VPFLUSHDONE,
//!   PHYMEM.CACHE.WB per package, KEY.FREEID, reclaim of every page with the
//!   TDR last, and a [`TeardownReport`] listing what came back and what had
//!   to be leaked, with the reason. Dropping a `Td` runs the teardown too
//!   (the report goes to [`Platform::dropped_td`], leaks to
//!   [`Platform::leak_pages`]).
//!
//! Failing transitions hand the TD back ([`TdFailure`]) so the caller can
//! retry or tear it down. Busy and entropy statuses are retried, bounded
//! ([`BUSY_RETRIES`], [`ENTROPY_RETRIES`]); other failures are
//! [`TdError`]s naming the leaf and the GPA or PFN.
//!
//! TD_PARAMS come from [`TdConfig`] (a typed builder) or are given raw.
//!
//! Not here: TDH.VP.ENTER; TD partitioning (L2 VMs); Dynamic PAMT.
//!
//! What it leaves to the caller: entering vCPUs, and kicking them out of
//! the guest during removal (the `kick` callback of [`Td::unmap`]).

// UNSAFETY: the TD leaves of tdx-sys are `unsafe fn`s; each call says which
// page it hands over or takes back and why that is allowed.
#![allow(unsafe_code)]

mod config;
mod error;
mod frame;
mod hkid;
mod teardown;

use alloc::{boxed::Box, collections::BTreeMap, vec::Vec};
use core::{fmt, marker::PhantomData, mem};

use tdx_sys::{
    Completion, Seamcall,
    leaf::{self, SeptOut},
};
use tdx_types::{
    ErrorKind, FirmwarePage, Gpa, Hpa, Leaf, LeafVersion, PageSize, Pfn, PfnRange, PfnRun, Size4K,
    TdxError, TdxLevel, TdxStatus,
    abi::TdParams,
    regs::{KeyedPa, PageInfo, TdrAndFlags},
};
use zerocopy::IntoBytes;

pub use config::TdConfig;
pub use error::{Operand, ParamsError, TdError, TdFailure};
pub use frame::GuestFrame;
pub use hkid::{Hkid, HkidPool};
pub use teardown::{LeakedPage, PageRole, TeardownReport};

use tdx_types::{Size1G, Size2M};

use crate::{
    module::{BUSY_RETRIES, ENTROPY_RETRIES, ExtInited, TdxModule},
    platform::{CpuId, Placement, Platform},
    sparse::PageMap,
};

mod sealed {
    pub trait Sealed {}
}

/// A TD state. Sealed: the five states below are the only ones.
pub trait TdState: sealed::Sealed {}

/// TDH.MNG.CREATE done: the TD has a TDR and an HKID.
#[derive(Debug)]
pub struct Created(());
/// TDH.MNG.KEY.CONFIG done on every package.
#[derive(Debug)]
pub struct KeysConfigured(());
/// The TDCS pages are added (TDH.MNG.ADDCX).
#[derive(Debug)]
pub struct TdcsAdded(());
/// TDH.MNG.INIT done: vCPUs and initial memory may be added.
#[derive(Debug)]
pub struct Initialized(());
/// TDH.MR.FINALIZE done: the measurement is fixed, the TD may run, and
/// private memory is added with TDH.MEM.PAGE.AUG.
#[derive(Debug)]
pub struct Finalized(());

impl sealed::Sealed for Created {}
impl sealed::Sealed for KeysConfigured {}
impl sealed::Sealed for TdcsAdded {}
impl sealed::Sealed for Initialized {}
impl sealed::Sealed for Finalized {}
impl TdState for Created {}
impl TdState for KeysConfigured {}
impl TdState for TdcsAdded {}
impl TdState for Initialized {}
impl TdState for Finalized {}

/// The states in which private memory can be mapped with TDH.MEM.PAGE.AUG:
/// after TDH.MNG.INIT (module 1.5 allows AUG before finalization; modules
/// that do not answer with a typed error and the frame comes back) and
/// after finalization.
pub trait MayAug: TdState {}
impl MayAug for Initialized {}
impl MayAug for Finalized {}

/// Calls of TDH.PHYMEM.CACHE.WB on one package before giving up (KVM:
/// 10000).
pub const CACHE_WB_LIMIT: u32 = 10_000;

/// The TD side of a ready module: it owns the module (so there is one HKID
/// pool per module) and creates TDs, which borrow it.
pub struct TdHost<B, P> {
    module: TdxModule<ExtInited, B, P>,
    hkids: HkidPool,
    keyid_shift: u32,
}

impl<B, P> fmt::Debug for TdHost<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdHost")
            .field("hkids", &self.hkids)
            .field("keyid_shift", &self.keyid_shift)
            .finish_non_exhaustive()
    }
}

impl<B: Seamcall + Sync, P: Platform + Sync> TdHost<B, P> {
    /// Takes the ready `module`; HKIDs come from the guest KeyID range of the
    /// platform's KeyID partition. Only a ready module
    /// ([`TdxModule<ExtInited>`]) has a `TdHost`, so only a ready module
    /// creates TDs.
    ///
    /// Keyed addresses (TDH.PHYMEM.PAGE.WBINVD) put the HKID at
    /// [`Platform::keyid_shift`]; the shift is checked here, so that the
    /// highest guest HKID over the top frame of TDX memory still makes a
    /// keyed address below bit 52. If it does not, the module comes back
    /// with [`TdError::KeyidShift`].
    pub fn new(module: TdxModule<ExtInited, B, P>) -> Result<Self, Box<TdHostRefused<B, P>>> {
        let guest = module.platform().keyid_partition().guest_keyids();
        let keyid_shift = module.platform().keyid_shift();
        let top = module
            .plan()
            .and_then(|p| p.tdmrs.iter().map(|t| t.base + t.size).max())
            .map_or(0, |end| end.saturating_sub(4096));
        let last = u16::try_from(guest.end.saturating_sub(1)).unwrap_or(u16::MAX);
        if KeyedPa::try_new(Hpa::new(top), last, keyid_shift).is_err() {
            return Err(Box::new(TdHostRefused {
                error: TdError::KeyidShift(keyid_shift),
                module,
            }));
        }
        Ok(Self {
            module,
            hkids: HkidPool::new(guest.start, guest.end),
            keyid_shift,
        })
    }

    /// TDH.PHYMEM.PAGE.WBINVD of the 4K page `pfn` under `keyid` (a TD's
    /// HKID, or the global KeyID for the TDR): writes back the lines of a
    /// page the module no longer owns, retried like any leaf.
    pub(crate) fn page_wbinvd(&self, pfn: Pfn, keyid: u16) -> Result<(), TdError> {
        let keyed = KeyedPa::try_new(pfn.hpa(), keyid, self.keyid_shift)
            .map_err(|_| TdError::KeyidShift(self.keyid_shift))?;
        let b = self.module.backend();
        retry(
            self.module.platform(),
            Leaf::PHYMEM_PAGE_WBINVD.v0(),
            Operand::HostPage(pfn),
            || {
                // SAFETY: WBINVD of a page the module no longer owns moves
                // nothing; it writes back the lines of `keyid`.
                unsafe { leaf::tdh_phymem_page_wbinvd(b, keyed) }
            },
        )
        .map(|_| ())
    }

    /// The module.
    pub fn module(&self) -> &TdxModule<ExtInited, B, P> {
        &self.module
    }

    /// Gives the module back. Every TD borrows the host, so none is left
    /// (each was torn down, or dropped, which tears it down); HKIDs a
    /// failed teardown leaked are forgotten with the pool (the module still
    /// holds them).
    pub fn into_module(self) -> TdxModule<ExtInited, B, P> {
        self.module
    }

    /// The HKID allocator.
    pub fn hkids(&self) -> &HkidPool {
        &self.hkids
    }

    /// Builds a TD up to [`Initialized`] in one call:
    /// [`create_td`](Self::create_td),
    /// [`configure_keys`](Td::configure_keys), [`add_tdcs`](Td::add_tdcs),
    /// [`init`](Td::init) with `params`.
    ///
    /// A failed step drops the TD, which tears it down (its report goes to
    /// [`Platform::dropped_td`]), and returns the error. To keep the TD for
    /// a retry, take the steps one by one.
    pub fn build_td(&self, params: &TdParams) -> Result<Td<'_, Initialized, B, P>, TdError> {
        self.create_td()?
            .configure_keys()
            .map_err(|f| f.error)?
            .add_tdcs()
            .map_err(|f| f.error)?
            .init(params)
            .map_err(|f| f.error)
    }

    /// Allocates an HKID and a TDR page and issues TDH.MNG.CREATE (after
    /// CLFLUSH of the TDR).
    ///
    /// On failure nothing is left behind: the TDR page goes back to the
    /// platform and the HKID to the pool.
    #[doc(alias = "TDH.MNG.CREATE")]
    pub fn create_td(&self) -> Result<Td<'_, Created, B, P>, TdError> {
        let p = self.module.platform();
        let hkid = self.hkids.alloc().ok_or(TdError::NoHkid)?;
        let tdr = match p.alloc_pages(1, 1, Placement::Anywhere) {
            Ok(r) => r.first(),
            Err(e) => {
                self.hkids.free(hkid);
                return Err(TdError::Platform(e));
            }
        };
        p.clflush_page(tdr);
        let r = retry(p, Leaf::MNG_CREATE.v0(), Operand::HostPage(tdr), || {
            // SAFETY: `tdr` was just allocated from the platform for us
            // (Platform contract 1: nobody else uses it) and flushed; on
            // success the module owns it and we keep it only as a
            // FirmwarePage. The HKID is free: the pool hands each out once.
            unsafe { leaf::tdh_mng_create(self.module.backend(), tdr, hkid.get()) }
        });
        if let Err(e) = r {
            // SAFETY: TDH.MNG.CREATE failed, so the module did not take the
            // page; it is ours, allocated above, and only CLFLUSHed.
            unsafe { p.free_pages(PfnRun::from(PfnRange::<Size4K>::from(tdr))) };
            self.hkids.free(hkid);
            return Err(e);
        }
        Ok(Td {
            host: self,
            inner: Box::new(Inner {
                tdr: Some(FirmwarePage::from_pfn(tdr)),
                hkid: Some(hkid),
                ..Inner::default()
            }),
            _state: PhantomData,
        })
    }
}

/// [`TdHost::new`] refused the module; it comes back unchanged.
pub struct TdHostRefused<B: Seamcall + Sync, P: Platform + Sync> {
    /// Why.
    pub error: TdError,
    /// The module, still ready.
    pub module: TdxModule<ExtInited, B, P>,
}

impl<B: Seamcall + Sync, P: Platform + Sync> fmt::Debug for TdHostRefused<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdHostRefused")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A vCPU of a TD, as the caller names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VcpuId {
    /// The module's VCPU_INDEX: the order of TDH.VP.INIT among this TD's
    /// vCPUs (0, 1, …; vCPUs never initialized take no index).
    pub index: usize,
    /// The TDVPR page (TDH.VP.ENTER's operand).
    pub tdvpr: Pfn,
    /// The CPU the vCPU is associated with (TDH.VP.INIT ran there).
    pub cpu: CpuId,
}

/// The build state of a vCPU (sealed): [`VpCreated`] (TDH.VP.CREATE done),
/// then [`VpTdcxAdded`] (every TDCX page added); TDH.VP.INIT ends the
/// build and yields a [`VcpuId`].
pub trait VcpuState: sealed::Sealed {}

/// TDH.VP.CREATE done: the vCPU has its TDVPR page.
#[derive(Debug)]
pub struct VpCreated(());
/// Every TDCX page added (TDH.VP.ADDCX): the vCPU can be initialized.
#[derive(Debug)]
pub struct VpTdcxAdded(());

impl sealed::Sealed for VpCreated {}
impl sealed::Sealed for VpTdcxAdded {}
impl VcpuState for VpCreated {}
impl VcpuState for VpTdcxAdded {}

/// A vCPU being built, in state `S`; it borrows its TD, which stays
/// [`Initialized`] until the vCPU is done (the module creates vCPUs only
/// there).
///
/// Dropping a builder leaves the half-built vCPU with the TD: its pages are
/// reclaimed at teardown, and it has no [`VcpuId`].
#[must_use = "a half-built vCPU cannot run; finish it with add_tdcx and init"]
pub struct VcpuBuilder<'t, 'h, S: VcpuState, B: Seamcall + Sync, P: Platform + Sync> {
    td: &'t mut Td<'h, Initialized, B, P>,
    /// Position among the TD's vCPUs in creation order (half-built ones
    /// included): what errors name as [`Operand::Vcpu`].
    index: usize,
    _state: PhantomData<S>,
}

impl<S: VcpuState, B: Seamcall + Sync, P: Platform + Sync> fmt::Debug
    for VcpuBuilder<'_, '_, S, B, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.td.inner.vcpus[self.index];
        f.debug_struct("VcpuBuilder")
            .field("state", &core::any::type_name::<S>())
            .field("created", &self.index)
            .field("cpu", &v.cpu)
            .field("tdcx", &v.tdcx.len())
            .finish()
    }
}

impl<'t, 'h, S: VcpuState, B: Seamcall + Sync, P: Platform + Sync> VcpuBuilder<'t, 'h, S, B, P> {
    /// The TDVPR page.
    pub fn tdvpr(&self) -> Pfn {
        self.td.inner.vcpus[self.index]
            .tdvpr
            .as_ref()
            .expect("a built vCPU has a TDVPR")
            .pfn()
    }

    fn to<T: VcpuState>(self) -> VcpuBuilder<'t, 'h, T, B, P> {
        VcpuBuilder {
            td: self.td,
            index: self.index,
            _state: PhantomData,
        }
    }
}

impl<'t, 'h, B: Seamcall + Sync, P: Platform + Sync> VcpuBuilder<'t, 'h, VpCreated, B, P> {
    /// Adds the TDCX pages (TDVPS_BASE_SIZE / 4 KiB − 1 of them): CLFLUSH
    /// and TDH.VP.ADDCX each.
    ///
    /// On failure the builder comes back: the pages added so far stay with
    /// the vCPU, the one refused goes back to the platform, and a retry
    /// adds only the pages still missing.
    #[doc(alias = "TDH.VP.ADDCX")]
    pub fn add_tdcx(self) -> Result<VcpuBuilder<'t, 'h, VpTdcxAdded, B, P>, TdFailure<Self>> {
        let n = usize::from(self.td.host.module.sysinfo().tdvps_base_size)
            .div_ceil(4096)
            .saturating_sub(1);
        let (index, tdvpr) = (self.index, self.tdvpr());
        while self.td.inner.vcpus[index].tdcx.len() < n {
            let (b, p) = (self.td.b(), self.td.p());
            let page = match self.td.fresh_page() {
                Ok(page) => page,
                Err(error) => return Err(TdFailure { error, td: self }),
            };
            let r = retry(p, Leaf::VP_ADDCX.v0(), Operand::Vcpu(index), || {
                // SAFETY: a fresh, flushed page; on success the module owns it.
                unsafe { leaf::tdh_vp_addcx(b, page, tdvpr) }
            });
            if let Err(error) = r {
                self.td.free_refused(page);
                return Err(TdFailure { error, td: self });
            }
            self.td.inner.vcpus[index]
                .tdcx
                .push(FirmwarePage::from_pfn(page));
        }
        Ok(self.to())
    }
}

impl<'t, 'h, B: Seamcall + Sync, P: Platform + Sync> VcpuBuilder<'t, 'h, VpTdcxAdded, B, P> {
    /// TDH.VP.INIT on the vCPU's CPU, with the guest's initial RCX and
    /// x2APIC ID: the vCPU becomes associated with that CPU and is done.
    ///
    /// On failure the builder comes back, to retry or drop.
    #[doc(alias = "TDH.VP.INIT")]
    pub fn init(self, initial_rcx: u64, x2apic_id: u32) -> Result<VcpuId, TdFailure<Self>> {
        let (b, p, index, tdvpr) = (self.td.b(), self.td.p(), self.index, self.tdvpr());
        let cpu = self.td.inner.vcpus[index].cpu;
        let mut r = None;
        p.on_cpu(cpu, &mut || {
            r = Some(retry(p, Leaf::VP_INIT.v(1), Operand::Vcpu(index), || {
                // SAFETY: TDH.VP.INIT takes no host page; it runs on `cpu`
                // (Platform contract 2), which the vCPU becomes associated
                // with.
                unsafe { leaf::tdh_vp_init(b, tdvpr, initial_rcx, x2apic_id) }
            }));
        });
        if let Err(error) = r.expect("on_cpu runs the closure") {
            return Err(TdFailure { error, td: self });
        }
        // The module numbers vCPUs in TDH.VP.INIT order (VCPU_INDEX).
        let vcpu_index = self
            .td
            .inner
            .vcpus
            .iter()
            .filter(|v| v.associated())
            .count();
        self.td.inner.vcpus[index].vcpu_index = Some(vcpu_index);
        Ok(VcpuId {
            index: vcpu_index,
            tdvpr,
            cpu,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Vcpu {
    tdvpr: Option<FirmwarePage>,
    tdcx: Vec<FirmwarePage>,
    cpu: CpuId,
    /// The module's VCPU_INDEX, once TDH.VP.INIT succeeded: the vCPU is
    /// then associated with `cpu`.
    vcpu_index: Option<usize>,
}

impl Vcpu {
    /// TDH.VP.INIT succeeded: the vCPU is associated with its CPU.
    pub(crate) fn associated(&self) -> bool {
        self.vcpu_index.is_some()
    }
}

/// A page mapped into the TD: its frames and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mapping {
    first: Pfn,
    level: TdxLevel,
}

/// The TD's private pages: one [`PageMap`] per page size, keyed by the GPA
/// in units of that size, holding the first frame. Mapping and unmapping
/// run at simulator speed (millions a second), where a `BTreeMap` of GPAs
/// cost more than the SEAMCALL it records.
#[derive(Debug, Default)]
pub(crate) struct Private([PageMap<Pfn>; 3]);

impl Private {
    const LEVELS: [TdxLevel; 3] = [TdxLevel::L4K, TdxLevel::L2M, TdxLevel::L1G];

    fn key(gpa: u64, level: TdxLevel) -> Option<u64> {
        gpa.is_multiple_of(level.bytes())
            .then(|| gpa / level.bytes())
    }

    /// The mapping that starts at `gpa`, of any size.
    fn get(&self, gpa: u64) -> Option<Mapping> {
        Self::LEVELS.iter().zip(&self.0).find_map(|(&level, map)| {
            let first = *map.get(Self::key(gpa, level)?)?;
            Some(Mapping { first, level })
        })
    }

    fn contains_key(&self, gpa: u64) -> bool {
        self.get(gpa).is_some()
    }

    /// Records `m` at `gpa` (aligned to its size: the callers checked).
    fn insert(&mut self, gpa: u64, m: Mapping) {
        let i = usize::from(m.level.as_u8());
        let key = Self::key(gpa, m.level).expect("GPA aligned to the page size");
        self.0[i].insert(key, m.first);
    }

    /// Forgets the `level` mapping at `gpa` (aligned to it: the callers
    /// found it there).
    fn remove(&mut self, gpa: u64, level: TdxLevel) {
        if let Some(key) = Self::key(gpa, level) {
            self.0[usize::from(level.as_u8())].remove(key);
        }
    }

    fn len(&self) -> usize {
        self.0.iter().map(PageMap::len).sum()
    }

    /// True if a mapping starts in `[start, end)` (GPAs).
    fn any_in(&self, start: u64, end: u64) -> bool {
        Self::LEVELS.iter().zip(&self.0).any(|(&level, map)| {
            let (a, b) = (start.div_ceil(level.bytes()), end.div_ceil(level.bytes()));
            map.any_in(a, b, |_| true)
        })
    }

    /// Every mapping, by size, then GPA.
    pub(crate) fn values(&self) -> impl Iterator<Item = Mapping> + '_ {
        Self::LEVELS
            .iter()
            .zip(&self.0)
            .flat_map(|(&level, map)| map.iter().map(move |(_, &first)| Mapping { first, level }))
    }

    /// Every mapping, by size, then GPA, leaving none.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Mapping> + '_ {
        Self::LEVELS
            .iter()
            .zip(&mut self.0)
            .flat_map(|(&level, map)| {
                map.drain_values()
                    .map(move |first| Mapping { first, level })
            })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    tdr: Option<FirmwarePage>,
    hkid: Option<Hkid>,
    tdcs: Vec<FirmwarePage>,
    vcpus: Vec<Vcpu>,
    /// S-EPT pages by (level of the entry they hang under, GPA base).
    sept: BTreeMap<(u8, u64), FirmwarePage>,
    /// Private pages by GPA.
    private: Private,
    /// Frames removed from the TD whose PAGE.WBINVD failed: they may hold
    /// dirty lines of the TD's key until the teardown's CACHE.WB.
    unflushed: Vec<(PfnRun, PageRole)>,
    /// Pages the module's answer left in doubt: it named another page as
    /// the one it removed or freed, so ours may still be the module's.
    /// Teardown reclaims them (and leaks any it cannot) instead of
    /// trusting either answer.
    in_doubt: Vec<(PfnRun, PageRole)>,
    /// Host page holding PAGE.ADD sources (before finalization).
    staging: Option<Pfn>,
    /// Errors of calls that still succeeded, for the teardown report.
    deferred: Vec<TdError>,
    /// EPT levels (4 or 5), known after TDH.MNG.INIT.
    ept_levels: u8,
}

/// A Trust Domain in state `S`.
///
/// # Invariants
///
/// `S` matches what the module has done with the TD; the TD holds every
/// page the module took for it (control pages as [`FirmwarePage`]s, private
/// memory as the frames of the [`GuestFrame`]s it was given) until a
/// transition or [`teardown`](Td::teardown) gives them back.
#[must_use = "a TD holds pages; tear it down to get them back with a report"]
pub struct Td<'h, S: TdState, B: Seamcall + Sync, P: Platform + Sync> {
    host: &'h TdHost<B, P>,
    inner: Box<Inner>,
    _state: PhantomData<S>,
}

/// Dropping a TD tears it down; the report goes to
/// [`Platform::dropped_td`] (and leaked pages to [`Platform::leak_pages`]).
/// Prefer [`Td::teardown`], which hands the report to the caller.
impl<S: TdState, B: Seamcall + Sync, P: Platform + Sync> Drop for Td<'_, S, B, P> {
    fn drop(&mut self) {
        if self.inner.tdr.is_some() || self.inner.staging.is_some() {
            let inner = mem::take(&mut self.inner);
            let report = teardown::run(self.host, *inner);
            self.p().dropped_td(&report);
        }
    }
}

impl<S: TdState, B: Seamcall + Sync, P: Platform + Sync> fmt::Debug for Td<'_, S, B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Td")
            .field("state", &core::any::type_name::<S>())
            .field("tdr", &self.inner.tdr)
            .field("hkid", &self.inner.hkid)
            .field("vcpus", &self.inner.vcpus.len())
            .field("private_pages", &self.inner.private.len())
            .finish_non_exhaustive()
    }
}

impl<'h, S: TdState, B: Seamcall + Sync, P: Platform + Sync> Td<'h, S, B, P> {
    /// The TDR page's frame (the TD's name in every leaf).
    pub fn tdr(&self) -> Pfn {
        self.inner.tdr.as_ref().expect("a live TD has a TDR").pfn()
    }

    /// The TD's HKID.
    pub fn hkid(&self) -> u16 {
        self.inner
            .hkid
            .as_ref()
            .expect("a live TD has an HKID")
            .get()
    }

    /// The vCPUs built so far (TDH.VP.INIT done); half-built ones are not
    /// listed.
    pub fn vcpus(&self) -> Vec<VcpuId> {
        self.inner
            .vcpus
            .iter()
            .filter_map(|v| {
                Some(VcpuId {
                    index: v.vcpu_index?,
                    tdvpr: v.tdvpr.as_ref()?.pfn(),
                    cpu: v.cpu,
                })
            })
            .collect()
    }

    /// Control pages (TDR, TDCS, TDVPR, TDCX, S-EPT) the module holds for
    /// this TD.
    pub fn control_pages(&self) -> usize {
        usize::from(self.inner.tdr.is_some())
            + self.inner.tdcs.len()
            + self
                .inner
                .vcpus
                .iter()
                .map(|v| usize::from(v.tdvpr.is_some()) + v.tdcx.len())
                .sum::<usize>()
            + self.inner.sept.len()
    }

    /// Private pages mapped (of any size).
    pub fn private_pages(&self) -> usize {
        self.inner.private.len()
    }

    /// Tears the TD down from whatever state it is in and reports every
    /// page: given back to the platform (control pages), returned to the
    /// caller (private frames), or leaked with the reason.
    #[doc(alias = "TDH.VP.FLUSH")]
    #[doc(alias = "TDH.MNG.VPFLUSHDONE")]
    #[doc(alias = "TDH.PHYMEM.CACHE.WB")]
    #[doc(alias = "TDH.MNG.KEY.FREEID")]
    #[doc(alias = "TDH.PHYMEM.PAGE.RECLAIM")]
    pub fn teardown(mut self) -> TeardownReport {
        let inner = mem::take(&mut self.inner);
        teardown::run(self.host, *inner)
    }

    fn into_state<T: TdState>(mut self) -> Td<'h, T, B, P> {
        Td {
            host: self.host,
            inner: mem::take(&mut self.inner),
            _state: PhantomData,
        }
    }

    fn fail<E>(self, error: TdError) -> Result<E, TdFailure<Self>> {
        Err(TdFailure { error, td: self })
    }

    fn b(&self) -> &'h B {
        self.host.module.backend()
    }

    fn p(&self) -> &'h P {
        self.host.module.platform()
    }

    /// A fresh page from the platform, CLFLUSHed, for the module.
    fn fresh_page(&self) -> Result<Pfn, TdError> {
        let pfn = self
            .p()
            .alloc_pages(1, 1, Placement::Anywhere)
            .map_err(TdError::Platform)?
            .first();
        self.p().clflush_page(pfn);
        Ok(pfn)
    }

    /// Frees a page the module refused (it never took it).
    fn free_refused(&self, pfn: Pfn) {
        // SAFETY: callers pass only pages allocated by `fresh_page` that the
        // module did not take (the leaf that would have taken it failed), so
        // the module does not own it and no private line exists for it.
        unsafe {
            self.p()
                .free_pages(PfnRun::from(PfnRange::<Size4K>::from(pfn)))
        };
    }

    /// S-EPT pages down to the level above `level` for `gpa`, added as
    /// needed (TDH.MEM.SEPT.ADD).
    fn ensure_sept(&mut self, gpa: Gpa, level: TdxLevel) -> Result<(), TdError> {
        let tdr = self.tdr();
        let top = self.inner.ept_levels.max(4) - 1;
        // S-EPT pages are added top down, so when the one right above
        // `level` exists, all above it do: one lookup in the common case.
        let lowest = level.as_u8() + 1;
        if lowest > top {
            return Ok(());
        }
        let below = TdxLevel::from_u8(lowest).expect("level <= 4");
        if self
            .inner
            .sept
            .contains_key(&(lowest, gpa.as_u64() & !(below.bytes() - 1)))
        {
            return Ok(());
        }
        for l in (lowest..=top).rev() {
            let lvl = TdxLevel::from_u8(l).expect("level <= 4");
            let base = gpa.as_u64() & !(lvl.bytes() - 1);
            if self.inner.sept.contains_key(&(l, base)) {
                continue;
            }
            let page = self.fresh_page()?;
            let info = PageInfo::try_new(Gpa::new(base), lvl).map_err(|_| TdError::Gpa {
                gpa,
                why: "not a valid GPA for the S-EPT",
            })?;
            let r = retry(self.p(), Leaf::MEM_SEPT_ADD.v0(), Operand::Gpa(gpa), || {
                // SAFETY: `page` is a fresh, flushed page from the platform;
                // on success the module owns it and we keep it as a
                // FirmwarePage in `sept`; on failure the module did not take
                // it (we do not set allow_existing).
                unsafe {
                    leaf::tdh_mem_sept_add(self.b(), info, TdrAndFlags::with_tdr(tdr, false), page)
                }
                .status
            });
            if let Err(e) = r {
                self.free_refused(page);
                return Err(e);
            }
            self.inner
                .sept
                .insert((l, base), FirmwarePage::from_pfn(page));
        }
        Ok(())
    }

    fn check_gpa<Sz: PageSize>(gpa: Gpa) -> Result<PageInfo, TdError> {
        if !gpa.is_aligned(Sz::LEVEL.bytes()) {
            return Err(TdError::Gpa {
                gpa,
                why: "not aligned to the page size",
            });
        }
        PageInfo::for_page::<Sz>(gpa).map_err(|_| TdError::Gpa {
            gpa,
            why: "not a valid private GPA",
        })
    }
}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, Created, B, P> {
    /// TDH.MNG.KEY.CONFIG on one CPU of every package.
    ///
    /// On failure the TD comes back (keys may be configured on some
    /// packages); tear it down or retry.
    #[doc(alias = "TDH.MNG.KEY.CONFIG")]
    pub fn configure_keys(self) -> Result<Td<'h, KeysConfigured, B, P>, TdFailure<Self>> {
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let mut failed = None;
        p.on_each_package(&mut |pkg, _cpu| {
            if failed.is_some() {
                return;
            }
            let r = retry(p, Leaf::MNG_KEY_CONFIG.v0(), Operand::Package(pkg), || {
                // SAFETY: TDH.MNG.KEY.CONFIG takes no page from the host: the
                // TDR is the module's already. `on_each_package` runs this on
                // a CPU of `pkg` (Platform contract 2).
                unsafe { leaf::tdh_mng_key_config(b, tdr) }
            });
            if let Err(e) = r {
                failed = Some(e);
            }
        });
        match failed {
            Some(e) => self.fail(e),
            None => Ok(self.into_state()),
        }
    }
}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, KeysConfigured, B, P> {
    /// Allocates TDCS_BASE_SIZE / 4 KiB pages and adds each (CLFLUSH,
    /// TDH.MNG.ADDCX).
    #[doc(alias = "TDH.MNG.ADDCX")]
    pub fn add_tdcs(mut self) -> Result<Td<'h, TdcsAdded, B, P>, TdFailure<Self>> {
        let n = usize::from(self.host.module.sysinfo().tdcs_base_size).div_ceil(4096);
        let tdr = self.tdr();
        for _ in self.inner.tdcs.len()..n {
            let page = match self.fresh_page() {
                Ok(p) => p,
                Err(e) => return self.fail(e),
            };
            let r = retry(
                self.p(),
                Leaf::MNG_ADDCX.v0(),
                Operand::HostPage(page),
                || {
                    // SAFETY: a fresh, flushed page from the platform; on
                    // success the module owns it (kept as a FirmwarePage).
                    unsafe { leaf::tdh_mng_addcx(self.b(), page, tdr) }
                },
            );
            if let Err(e) = r {
                self.free_refused(page);
                return self.fail(e);
            }
            self.inner.tdcs.push(FirmwarePage::from_pfn(page));
        }
        Ok(self.into_state())
    }
}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, TdcsAdded, B, P> {
    /// Checks `params` against the module's [`SysInfo`](crate::SysInfo),
    /// then TDH.MNG.INIT.
    ///
    /// A parameter error is found before any SEAMCALL.
    #[doc(alias = "TDH.MNG.INIT")]
    pub fn init(mut self, params: &TdParams) -> Result<Td<'h, Initialized, B, P>, TdFailure<Self>> {
        let levels = match check_params(self.host.module.sysinfo(), params) {
            Ok(l) => l,
            Err(e) => return self.fail(TdError::Params(e)),
        };
        let p = self.p();
        let run = match p.alloc_pages(1, 1, Placement::Anywhere) {
            Ok(r) => r,
            Err(e) => return self.fail(TdError::Platform(e)),
        };
        // SAFETY: `run` was just allocated for us and the module does not own
        // it (Platform contract 1); a page is 1024-byte aligned as TD_PARAMS
        // must be.
        unsafe { p.write_phys(run.hpa(), params.as_bytes()) };
        let tdr = self.tdr();
        let r = retry(p, Leaf::MNG_INIT.v0(), Operand::Tdr, || {
            // SAFETY: TD_PARAMS is a host page the module only reads.
            unsafe { leaf::tdh_mng_init(self.b(), tdr, run.hpa()) }.status
        });
        // SAFETY: the module read TD_PARAMS with the host's key and took
        // nothing; the page is ours.
        unsafe { p.free_pages(run) };
        match r {
            Ok(_) => {
                self.inner.ept_levels = levels;
                Ok(self.into_state())
            }
            Err(e) => self.fail(e),
        }
    }
}

/// What [`Td::init`] checks before TDH.MNG.INIT; returns the EPT levels.
fn check_params(info: &crate::SysInfo, p: &TdParams) -> Result<u8, ParamsError> {
    let fixed = |v: u64, (f0, f1): (u64, u64)| v & !f0 == 0 && v & f1 == f1;
    if !fixed(p.attributes(), info.attributes_fixed) {
        return Err(ParamsError::Attributes(p.attributes()));
    }
    if !fixed(p.xfam(), info.xfam_fixed) {
        return Err(ParamsError::Xfam(p.xfam()));
    }
    if p.max_vcpus() == 0 || p.max_vcpus() > info.max_vcpus_per_td {
        return Err(ParamsError::MaxVcpus {
            asked: p.max_vcpus(),
            max: info.max_vcpus_per_td,
        });
    }
    if !(4..=400).contains(&p.tsc_frequency()) {
        return Err(ParamsError::TscFrequency(p.tsc_frequency()));
    }
    let known = TdParams::CONFIG_FLAG_MAX_GPAW
        | TdParams::CONFIG_FLAG_FLEXIBLE_PENDING_VE
        | TdParams::CONFIG_FLAG_NO_RBP_MOD;
    if p.config_flags() & !known != 0 {
        return Err(ParamsError::ConfigFlags(p.config_flags()));
    }
    if p.num_l2_vms() != 0 {
        return Err(ParamsError::L2Vms(p.num_l2_vms()));
    }
    let eptp = p.eptp_controls().raw();
    let pwl = ((eptp >> 3) & 0b111) as u8;
    let gpaw = p.config_flags() & TdParams::CONFIG_FLAG_MAX_GPAW != 0;
    if eptp & 0b111 != 6 || !(pwl == 3 || pwl == 4) || eptp & !0b11_1111 != 0 || (gpaw && pwl != 4)
    {
        return Err(ParamsError::Eptp(eptp));
    }
    Ok(pwl + 1)
}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, Initialized, B, P> {
    /// Creates, fills and initializes a vCPU associated with `cpu` in one
    /// call: [`new_vcpu`](Td::new_vcpu), [`add_tdcx`](VcpuBuilder::add_tdcx),
    /// [`init`](VcpuBuilder::init).
    ///
    /// On failure the pages the module took stay with the TD (teardown
    /// reclaims them); the others go back to the platform. To retry a
    /// failed step, use the three steps.
    #[doc(alias = "TDH.VP.CREATE")]
    #[doc(alias = "TDH.VP.ADDCX")]
    #[doc(alias = "TDH.VP.INIT")]
    pub fn create_vcpu(
        &mut self,
        cpu: CpuId,
        initial_rcx: u64,
        x2apic_id: u32,
    ) -> Result<VcpuId, TdError> {
        self.new_vcpu(cpu)?
            .add_tdcx()
            .map_err(|f| f.error)?
            .init(initial_rcx, x2apic_id)
            .map_err(|f| f.error)
    }

    /// Starts a vCPU to be associated with `cpu`: CLFLUSH and
    /// TDH.VP.CREATE of its TDVPR page. The vCPU is built by the returned
    /// [`VcpuBuilder`], which borrows the TD, so the TD cannot be finalized
    /// (nor another vCPU started) while a vCPU is half built.
    ///
    /// On failure the TDVPR page goes back to the platform.
    #[doc(alias = "TDH.VP.CREATE")]
    pub fn new_vcpu(
        &mut self,
        cpu: CpuId,
    ) -> Result<VcpuBuilder<'_, 'h, VpCreated, B, P>, TdError> {
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        if cpu.0 >= p.cpus() {
            return Err(TdError::NoSuchCpu(cpu));
        }
        let index = self.inner.vcpus.len();
        let tdvpr = self.fresh_page()?;
        retry(p, Leaf::VP_CREATE.v0(), Operand::Vcpu(index), || {
            // SAFETY: a fresh, flushed page; on success the module owns it.
            unsafe { leaf::tdh_vp_create(b, tdvpr, tdr) }
        })
        .inspect_err(|_| self.free_refused(tdvpr))?;
        self.inner.vcpus.push(Vcpu {
            tdvpr: Some(FirmwarePage::from_pfn(tdvpr)),
            tdcx: Vec::new(),
            cpu,
            vcpu_index: None,
        });
        Ok(VcpuBuilder {
            td: self,
            index,
            _state: PhantomData,
        })
    }

    /// Adds an initial private page at `gpa` with `contents`
    /// (TDH.MEM.SEPT.ADD as needed, CLFLUSH, TDH.MEM.PAGE.ADD), and measures
    /// it with 16 × TDH.MR.EXTEND when `measure` is set. The MRTD follows
    /// [`crate::measure`].
    ///
    /// On error the frame comes back when the module did not take it
    /// (`frame` in the error); otherwise it stays with the TD.
    #[doc(alias = "TDH.MEM.PAGE.ADD")]
    #[doc(alias = "TDH.MR.EXTEND")]
    pub fn add_page(
        &mut self,
        gpa: Gpa,
        frame: GuestFrame<Size4K>,
        contents: &[u8; 4096],
        measure: bool,
    ) -> Result<(), TdFailure<Option<GuestFrame<Size4K>>>> {
        let back = |error, frame| Err(TdFailure { error, td: frame });
        let info = match Self::check_gpa::<Size4K>(gpa) {
            Ok(i) => i,
            Err(e) => return back(e, Some(frame)),
        };
        if self.inner.private.contains_key(gpa.as_u64()) {
            return back(TdError::Mapped(gpa), Some(frame));
        }
        if let Err(e) = self.ensure_sept(gpa, TdxLevel::L4K) {
            return back(e, Some(frame));
        }
        let source = match self.inner.staging {
            Some(s) => s,
            None => match self.p().alloc_pages(1, 1, Placement::Anywhere) {
                Ok(r) => {
                    self.inner.staging = Some(r.first());
                    r.first()
                }
                Err(e) => return back(TdError::Platform(e), Some(frame)),
            },
        };
        let (b, p, tdr, target) = (self.b(), self.p(), self.tdr(), frame.pfn());
        // SAFETY: the staging page was allocated for this TD from the
        // platform and the module never owns it (PAGE.ADD only reads it).
        unsafe { p.write_phys(source.hpa(), contents) };
        p.clflush_page(target);
        let r = retry(p, Leaf::MEM_PAGE_ADD.v0(), Operand::Gpa(gpa), || {
            // SAFETY: `target` is a guest frame the caller promised to leave
            // alone (GuestFrame::new); on success the module owns it and the
            // TD records it in `private`. `source` is our host page.
            unsafe { leaf::tdh_mem_page_add(b, info, tdr, target, source) }.status
        });
        if let Err(e) = r {
            return back(e, Some(frame));
        }
        self.inner.private.insert(
            gpa.as_u64(),
            Mapping {
                first: frame.into_range().first(),
                level: TdxLevel::L4K,
            },
        );
        if measure {
            for chunk in 0..16u64 {
                let at = Gpa::new(gpa.as_u64() + chunk * 256);
                let r = retry(p, Leaf::MR_EXTEND.v0(), Operand::Gpa(at), || {
                    // SAFETY: TDH.MR.EXTEND takes no host page.
                    unsafe { leaf::tdh_mr_extend(b, tdr, at) }.status
                });
                if let Err(e) = r {
                    return back(e, None);
                }
            }
        }
        Ok(())
    }

    /// TDH.MR.FINALIZE: the measurement is fixed. The module refuses a TD
    /// without vCPUs.
    #[doc(alias = "TDH.MR.FINALIZE")]
    pub fn finalize(mut self) -> Result<Td<'h, Finalized, B, P>, TdFailure<Self>> {
        let (b, tdr) = (self.b(), self.tdr());
        if let Err(e) = retry(self.p(), Leaf::MR_FINALIZE.v0(), Operand::Tdr, || {
            // SAFETY: TDH.MR.FINALIZE takes no host page.
            unsafe { leaf::tdh_mr_finalize(b, tdr) }
        }) {
            return self.fail(e);
        }
        if let Some(s) = self.inner.staging.take() {
            // SAFETY: the staging page is a host page the module only read.
            unsafe {
                self.p()
                    .free_pages(PfnRun::from(PfnRange::<Size4K>::from(s)))
            };
        }
        Ok(self.into_state())
    }
}

impl<'h, S: MayAug, B: Seamcall + Sync, P: Platform + Sync> Td<'h, S, B, P> {
    /// Maps `frame` at `gpa` as pending private memory (TDH.MEM.SEPT.ADD as
    /// needed, CLFLUSH, TDH.MEM.PAGE.AUG at the level of `Sz`). The guest
    /// accepts it with TDG.MEM.PAGE.ACCEPT. Available once the TD is
    /// initialized ([`MayAug`]): module 1.5 maps before finalization too.
    ///
    /// `Sz` is 4K or 2M: the module maps nothing larger with AUG (a 1G page
    /// is built by promotion: [`Td::map_1g`]).
    ///
    /// On error the frame comes back (the module did not take it).
    #[doc(alias = "TDH.MEM.PAGE.AUG")]
    pub fn map<Sz: AugPageSize>(
        &mut self,
        gpa: Gpa,
        frame: GuestFrame<Sz>,
    ) -> Result<(), TdFailure<GuestFrame<Sz>>> {
        let back = |error, frame| Err(TdFailure { error, td: frame });
        let info = match Self::check_gpa::<Sz>(gpa) {
            Ok(i) => i,
            Err(e) => return back(e, frame),
        };
        if self.inner.private.contains_key(gpa.as_u64()) {
            return back(TdError::Mapped(gpa), frame);
        }
        if let Err(e) = self.ensure_sept(gpa, Sz::LEVEL) {
            return back(e, frame);
        }
        let (b, p, tdr, first) = (self.b(), self.p(), self.tdr(), frame.pfn());
        for f in frame.range().iter() {
            p.clflush_page(f);
        }
        let r = retry(p, Leaf::MEM_PAGE_AUG.v0(), Operand::Gpa(gpa), || {
            // SAFETY: the frames are guest frames the caller promised to
            // leave alone (GuestFrame::new), flushed above; on success the
            // module owns them and the TD records them in `private`.
            unsafe { leaf::tdh_mem_page_aug(b, info, tdr, first) }.status
        });
        if let Err(e) = r {
            return back(e, frame);
        }
        self.inner.private.insert(
            gpa.as_u64(),
            Mapping {
                first: frame.into_range().first(),
                level: Sz::LEVEL,
            },
        );
        Ok(())
    }
}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, Finalized, B, P> {
    /// Maps a 1 GiB page: TDH.MEM.PAGE.AUG of its 512 2 MiB parts, then
    /// [`promote`](Td::promote) (BLOCK, TRACK, `kick`, TDH.MEM.PAGE.PROMOTE;
    /// the S-EPT page it frees goes back to the platform). The module's
    /// PAGE.AUG maps 4K and 2M pages only.
    ///
    /// If an AUG fails, the parts already mapped are removed again and the
    /// whole frame comes back (`Some`); only if one of those removals fails
    /// does the frame stay with the TD (`None`: unmap the 2M parts one by
    /// one, or tear down). If the PROMOTE fails, the 512 parts stay mapped
    /// as 2M pages (`None`).
    #[doc(alias = "TDH.MEM.PAGE.AUG")]
    #[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
    pub fn map_1g(
        &mut self,
        gpa: Gpa,
        frame: GuestFrame<Size1G>,
        kick: &mut dyn FnMut(),
    ) -> Result<(), TdFailure<Option<GuestFrame<Size1G>>>> {
        if let Err(e) = Self::check_gpa::<Size1G>(gpa) {
            return Err(TdFailure {
                error: e,
                td: Some(frame),
            });
        }
        let range = frame.into_range();
        for (i, part) in range
            .split::<Size2M>()
            .expect("a 1G range splits into 2M ranges")
            .enumerate()
        {
            let at = Gpa::new(gpa.as_u64() + i as u64 * Size2M::SIZE);
            if let Err(f) = self.map(at, GuestFrame::returned(part)) {
                // Take the parts already mapped back (they are PENDING, never
                // accepted), so the caller gets the whole frame; a part that
                // cannot be removed stays with the TD and the frame does not
                // come back.
                let mut whole = true;
                for j in 0..i {
                    let at = Gpa::new(gpa.as_u64() + j as u64 * Size2M::SIZE);
                    whole &= self.unmap::<Size2M>(at, kick).is_ok();
                }
                let td = whole.then(|| GuestFrame::returned(range));
                return Err(TdFailure { error: f.error, td });
            }
        }
        self.promote::<Size1G>(gpa, kick)
            .map_err(|error| TdFailure { error, td: None })
    }

    /// Removes the `S`-sized private page at `gpa` from the running TD and
    /// gives its frames back: TDH.MEM.RANGE.BLOCK, TDH.MEM.TRACK, `kick`
    /// (the caller makes every vCPU leave the guest, so none runs with the
    /// old TLB epoch), TDH.MEM.PAGE.REMOVE, TDH.PHYMEM.PAGE.WBINVD of every
    /// 4 KiB frame with the TD's HKID, and on platforms with the
    /// partial-write erratum a MOVDIR64B clear.
    ///
    /// On error the page stays with the TD (teardown gives it back).
    #[doc(alias = "TDH.MEM.RANGE.BLOCK")]
    #[doc(alias = "TDH.MEM.TRACK")]
    #[doc(alias = "TDH.MEM.PAGE.REMOVE")]
    #[doc(alias = "TDH.PHYMEM.PAGE.WBINVD")]
    pub fn unmap<S: PageSize>(
        &mut self,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
    ) -> Result<GuestFrame<S>, TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let m = match self.inner.private.get(gpa.as_u64()) {
            Some(m) if m.level == S::LEVEL => m,
            _ => return Err(TdError::NotMapped(gpa)),
        };
        self.block_track(info, gpa, kick)?;
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let mut removed = None;
        retry(p, Leaf::MEM_PAGE_REMOVE.v0(), Operand::Gpa(gpa), || {
            // SAFETY: REMOVE gives the page back to the host; we take it
            // over below only after the flushes the ABI requires.
            let c = unsafe { leaf::tdh_mem_page_remove(b, info, tdr) };
            removed = c.out.removed();
            c.status
        })?;
        self.inner.private.remove(gpa.as_u64(), S::LEVEL);
        let range = PfnRange::<S>::new(m.first);
        if removed.is_some_and(|r| r != m.first) {
            // The module removed a frame we did not map there: ours may
            // still be mapped; teardown reclaims it rather than trust
            // either answer.
            self.inner.in_doubt.push((range.into(), PageRole::Guest));
            return Err(TdError::Protocol {
                leaf: Leaf::MEM_PAGE_REMOVE.v0(),
                what: "removed a frame other than the one mapped at the GPA",
                gpa: Some(gpa),
            });
        }
        let hkid = self.hkid();
        for f in range.iter() {
            if let Err(e) = self.host.page_wbinvd(f, hkid) {
                // Lines of the TD's key may remain: the frames wait for the
                // teardown's CACHE.WB on every package.
                self.inner.unflushed.push((range.into(), PageRole::Guest));
                return Err(e);
            }
        }
        if p.errata().tdx_pw_mce {
            // SAFETY: removed and written back above; the TD held the
            // frames for the caller, who owns them.
            unsafe { p.movdir64b_clear(range.into()) };
        }
        Ok(GuestFrame::returned(range))
    }
}

/// A page size that splits into 512 pages of a smaller size (2M into 4K,
/// 1G into 2M): what [`Td::demote`] and [`Td::promote`] work on.
pub trait HugePageSize: PageSize {
    /// The size one level down.
    type Smaller: PageSize;
}

impl HugePageSize for Size2M {
    type Smaller = Size4K;
}

impl HugePageSize for Size1G {
    type Smaller = Size2M;
}

/// A page size TDH.MEM.PAGE.AUG maps directly: 4K or 2M (module 1.5).
/// Implemented here only, for the two sizes.
pub trait AugPageSize: PageSize {}

impl AugPageSize for Size4K {}
impl AugPageSize for Size2M {}

impl<'h, B: Seamcall + Sync, P: Platform + Sync> Td<'h, Finalized, B, P> {
    /// BLOCK, TRACK and `kick` for the entry at `gpa`/`level`.
    fn block_track(
        &mut self,
        info: PageInfo,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
    ) -> Result<(), TdError> {
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        retry(p, Leaf::MEM_RANGE_BLOCK.v0(), Operand::Gpa(gpa), || {
            // SAFETY: BLOCK moves no page between host and module.
            unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status
        })?;
        let track = || {
            retry(p, Leaf::MEM_TRACK.v0(), Operand::Gpa(gpa), || {
                // SAFETY: TRACK moves no page.
                unsafe { leaf::tdh_mem_track(b, tdr) }
            })
        };
        if let Err(e) = track() {
            // The range is blocked but the block is not tracked: try once
            // more to track it, kick, and unblock, so the range stays usable.
            if track().is_ok() {
                kick();
                self.unblock(info, gpa);
            }
            return Err(e);
        }
        kick();
        Ok(())
    }

    /// TDH.MEM.RANGE.UNBLOCK after a DEMOTE or PROMOTE that failed once the
    /// range was blocked and tracked: the range is usable again. If the
    /// unblock fails too, the range stays blocked (teardown still gives it
    /// back).
    fn unblock(&mut self, info: PageInfo, gpa: Gpa) {
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let _ = retry(p, Leaf::MEM_RANGE_UNBLOCK.v0(), Operand::Gpa(gpa), || {
            // SAFETY: UNBLOCK moves no page between host and module.
            unsafe { leaf::tdh_mem_range_unblock(b, info, tdr) }.status
        });
    }

    /// Splits the `S`-sized page at `gpa` into 512 pages of the next size
    /// down (BLOCK, TRACK, `kick`, TDH.MEM.PAGE.DEMOTE with a new S-EPT page
    /// from the platform), so that part of it can be unmapped.
    ///
    /// If DEMOTE fails after BLOCK, the range is unblocked again and stays
    /// mapped as it was (only if that unblock fails too does it stay
    /// blocked, for teardown to give back).
    #[doc(alias = "TDH.MEM.PAGE.DEMOTE")]
    pub fn demote<S: HugePageSize>(
        &mut self,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
    ) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let m = match self.inner.private.get(gpa.as_u64()) {
            Some(m) if m.level == S::LEVEL => m,
            _ => return Err(TdError::NotMapped(gpa)),
        };
        // The new S-EPT page first: a failed allocation then leaves the
        // range untouched.
        let sept = self.fresh_page()?;
        if let Err(e) = self.block_track(info, gpa, kick) {
            self.free_refused(sept);
            return Err(e);
        }
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let r = retry(p, Leaf::MEM_PAGE_DEMOTE.v0(), Operand::Gpa(gpa), || {
            // SAFETY: `sept` is a fresh, flushed page from the platform; on
            // success the module owns it and we keep it in `sept`.
            unsafe { leaf::tdh_mem_page_demote(b, info, tdr, sept) }.status
        });
        if let Err(e) = r {
            self.free_refused(sept);
            self.unblock(info, gpa);
            return Err(e);
        }
        self.inner.sept.insert(
            (S::LEVEL.as_u8(), gpa.as_u64()),
            FirmwarePage::from_pfn(sept),
        );
        self.inner.private.remove(gpa.as_u64(), S::LEVEL);
        let small = <S::Smaller as PageSize>::LEVEL;
        for i in 0..512u64 {
            self.inner.private.insert(
                gpa.as_u64() + i * small.bytes(),
                Mapping {
                    first: Pfn::new(m.first.as_u64() + i * small.frames()),
                    level: small,
                },
            );
        }
        Ok(())
    }

    /// Merges the 512 pages of the next size down under the `S`-sized,
    /// `S`-aligned range at `gpa` into one `S` page, when they map one
    /// aligned, contiguous run of frames (checked here by arithmetic):
    /// BLOCK, TRACK, `kick`, TDH.MEM.PAGE.PROMOTE. The S-EPT page the
    /// module frees is written back with the TD's HKID
    /// (TDH.PHYMEM.PAGE.WBINVD), cleared where the erratum requires, and
    /// returned to the platform. If PROMOTE fails, the range is unblocked
    /// again and stays as it was. Once PROMOTE succeeded the merge stands:
    /// if the freed S-EPT page cannot be written back, it stays with the TD
    /// until teardown (whose report lists the error) and `promote` still
    /// returns `Ok`;
    /// an `Err` after a successful PROMOTE comes only from a module that
    /// freed a different S-EPT page than the one under `gpa`
    /// ([`TdError::Protocol`]), and then the merge stands too.
    #[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
    pub fn promote<S: HugePageSize>(
        &mut self,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
    ) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let small = <S::Smaller as PageSize>::LEVEL;
        let first = match self.inner.private.get(gpa.as_u64()) {
            Some(m) if m.level == small && m.first.is_aligned(S::LEVEL.frames()) => m.first,
            _ => return Err(TdError::NotMapped(gpa)),
        };
        let contiguous = (0..512u64).all(|i| {
            self.inner.private.get(gpa.as_u64() + i * small.bytes())
                == Some(Mapping {
                    first: Pfn::new(first.as_u64() + i * small.frames()),
                    level: small,
                })
        });
        if !contiguous {
            return Err(TdError::Gpa {
                gpa,
                why: "the pages below are not one aligned, contiguous run",
            });
        }
        let key = (S::LEVEL.as_u8(), gpa.as_u64());
        if !self.inner.sept.contains_key(&key) {
            return Err(TdError::NotMapped(gpa));
        }
        let freed =
            self.blocked_sept_free(info, gpa, kick, Leaf::MEM_PAGE_PROMOTE.v0(), |b, tdr| {
                // SAFETY: PROMOTE gives an S-EPT page back to the host; we take
                // it over only after the flushes the ABI requires.
                unsafe { leaf::tdh_mem_page_promote(b, info, tdr) }
            })?;
        for i in 0..512u64 {
            self.inner
                .private
                .remove(gpa.as_u64() + i * small.bytes(), small);
        }
        self.inner.private.insert(
            gpa.as_u64(),
            Mapping {
                first,
                level: S::LEVEL,
            },
        );
        self.take_freed_sept(key, freed, Leaf::MEM_PAGE_PROMOTE.v0(), gpa)
    }

    /// Gives the S-EPT page back to the platform under `gpa` whose
    /// `S`-sized entry points to a table of smaller pages that maps nothing
    /// any more (after [`demote`](Td::demote) and unmapping all 512 parts,
    /// say): BLOCK that entry, TRACK, `kick`, TDH.MEM.SEPT.REMOVE, then
    /// TDH.PHYMEM.PAGE.WBINVD with the TD's HKID and the erratum clear, as
    /// for any page the module frees. The entry is then free, so an
    /// `S`-sized page can be mapped there.
    ///
    /// Refused without a SEAMCALL when the TD holds no such table or
    /// something under it is still mapped. If SEPT.REMOVE fails, the entry
    /// is unblocked again and the table stays.
    #[doc(alias = "TDH.MEM.SEPT.REMOVE")]
    pub fn remove_table<S: HugePageSize>(
        &mut self,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
    ) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let key = (S::LEVEL.as_u8(), gpa.as_u64());
        if !self.inner.sept.contains_key(&key) {
            return Err(TdError::NotMapped(gpa));
        }
        let (start, end) = (gpa.as_u64(), gpa.as_u64() + S::LEVEL.bytes());
        let tables_below = (1..S::LEVEL.as_u8())
            .any(|l| self.inner.sept.range((l, start)..(l, end)).next().is_some());
        if tables_below || self.inner.private.any_in(start, end) {
            return Err(TdError::Gpa {
                gpa,
                why: "the table still maps pages or tables",
            });
        }
        let freed =
            self.blocked_sept_free(info, gpa, kick, Leaf::MEM_SEPT_REMOVE.v0(), |b, tdr| {
                // SAFETY: SEPT.REMOVE gives an S-EPT page back to the host; we
                // take it over only after the flushes the ABI requires.
                unsafe { leaf::tdh_mem_sept_remove(b, info, tdr) }
            })?;
        self.take_freed_sept(key, freed, Leaf::MEM_SEPT_REMOVE.v0(), gpa)
    }

    /// BLOCK and TRACK the entry at `info`, `kick`, then `call` a leaf that
    /// frees an S-EPT page (PROMOTE, SEPT.REMOVE); if it fails, the entry
    /// is unblocked again. Returns the page the module says it freed.
    fn blocked_sept_free(
        &mut self,
        info: PageInfo,
        gpa: Gpa,
        kick: &mut dyn FnMut(),
        leaf: LeafVersion,
        mut call: impl FnMut(&B, Pfn) -> Completion<SeptOut>,
    ) -> Result<Option<Pfn>, TdError> {
        self.block_track(info, gpa, kick)?;
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let mut freed = None;
        let r = retry(p, leaf, Operand::Gpa(gpa), || {
            let c = call(b, tdr);
            freed = c.out.removed();
            c.status
        });
        if let Err(e) = r {
            self.unblock(info, gpa);
            return Err(e);
        }
        Ok(freed)
    }

    /// After `leaf` freed the S-EPT page recorded at `key` (the module
    /// says it freed `freed`): the page goes back to the platform through
    /// [`return_freed_sept`](Self::return_freed_sept). If the module named
    /// another page, ours is kept in doubt for teardown to reclaim.
    fn take_freed_sept(
        &mut self,
        key: (u8, u64),
        freed: Option<Pfn>,
        leaf: LeafVersion,
        gpa: Gpa,
    ) -> Result<(), TdError> {
        let page = self
            .inner
            .sept
            .remove(&key)
            .expect("callers checked the key");
        let pfn = page.into_range().first();
        if freed.is_some_and(|f| f != pfn) {
            self.inner
                .in_doubt
                .push((PfnRun::from(PfnRange::<Size4K>::from(pfn)), PageRole::Sept));
            return Err(TdError::Protocol {
                leaf,
                what: "freed an S-EPT page other than the one under the GPA",
                gpa: Some(gpa),
            });
        }
        self.return_freed_sept(pfn);
        Ok(())
    }

    /// An S-EPT page the module freed (PROMOTE, SEPT.REMOVE): written back
    /// with the TD's key, cleared where the erratum requires, and given to
    /// the platform. If the write-back fails, the page waits for
    /// teardown's CACHE.WB and the error goes into the teardown report.
    fn return_freed_sept(&mut self, pfn: Pfn) {
        let p = self.p();
        let run = PfnRun::from(PfnRange::<Size4K>::from(pfn));
        if let Err(e) = self.host.page_wbinvd(pfn, self.hkid()) {
            // The merge or removal stands; only the freed S-EPT page could
            // not be written back. It waits for teardown's CACHE.WB, and the
            // error shows in the teardown report, instead of the page
            // returning to the platform now.
            self.inner.unflushed.push((run, PageRole::Sept));
            self.inner.deferred.push(e);
            return;
        }
        if p.errata().tdx_pw_mce {
            // SAFETY: freed by the module and written back above; ours.
            unsafe { p.movdir64b_clear(run) };
        }
        // SAFETY: allocated from this platform by `ensure_sept`/`demote`,
        // freed by the module (PROMOTE or SEPT.REMOVE) and written back
        // with the TD's key.
        unsafe { p.free_pages(run) };
    }
}

/// Runs `call` under the retry policy: entropy and busy statuses are
/// retried, bounded (with a yield between busy retries); other errors are
/// returned with the leaf and the operand. Non-zero success statuses are
/// returned as `Ok`.
pub(crate) fn retry<P: Platform + ?Sized>(
    platform: &P,
    leaf: LeafVersion,
    on: Operand,
    mut call: impl FnMut() -> TdxStatus,
) -> Result<TdxStatus, TdError> {
    let (mut entropy, mut busy) = (0, 0);
    loop {
        let s = call();
        match s.kind() {
            None => return Ok(s),
            Some(ErrorKind::NoEntropy) if entropy < ENTROPY_RETRIES => entropy += 1,
            Some(ErrorKind::Busy) if busy < BUSY_RETRIES => {
                busy += 1;
                platform.yield_now();
            }
            _ => {
                return Err(TdError::Seamcall {
                    error: TdxError::new(leaf, s),
                    on,
                });
            }
        }
    }
}

/// True if `s` has the class and code of `c` (operand detail ignored).
pub(crate) fn same_code(s: TdxStatus, c: TdxStatus) -> bool {
    s.raw() >> 32 == c.raw() >> 32
}
