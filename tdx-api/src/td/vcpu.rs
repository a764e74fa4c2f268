//! vCPUs: built in three steps on an initialized TD.

// UNSAFETY: TDH.VP.CREATE, ADDCX and INIT are `unsafe fn`s that take pages.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::{
    fmt,
    marker::PhantomData,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
};

use tdx_sys::leaf;
use tdx_types::{FirmwarePage, Leaf, Pfn};

use super::{Initialized, Operand, Td, TdError, TdFailure, TdHostRef, sealed};
use crate::{platform::CpuId, retry::retry_on_cpu};

/// A vCPU of a TD, as the caller names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VcpuId {
    /// The module's VCPU_INDEX (TDH.VP.RD after TDH.VP.INIT): the order of
    /// TDH.VP.INIT among this TD's vCPUs (0, 1, …).
    pub index: usize,
    /// The TDVPR page (TDH.VP.ENTER's operand).
    pub tdvpr: Pfn,
    /// The CPU the vCPU is associated with (TDH.VP.INIT ran there).
    pub cpu: CpuId,
}

/// The value a vCPU starts with in RCX (and R8), given to TDH.VP.INIT.
///
/// The TD's firmware reads it as it chooses; KVM passes what the VMM gives
/// it (`KVM_TDX_INIT_VCPU`), which TDVF takes as the address of its hand-off
/// block list. A named type so that it cannot be swapped with the
/// [`X2ApicId`] beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InitialRcx(pub u64);

/// A vCPU's x2APIC ID, given to TDH.VP.INIT version 1 on a module with
/// topology enumeration; unique among the TD's vCPUs there, and consistent
/// with the CPUID(0x1F) topology of TD_PARAMS. Not used by module 1.5.01
/// (see [`VcpuBuilder::init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct X2ApicId(pub u32);

impl fmt::Display for X2ApicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "x2APIC ID {}", self.0)
    }
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

/// A vCPU's pages, as the TD holds them.
#[derive(Debug)]
pub(crate) struct VcpuSlot {
    pub(super) tdvpr: FirmwarePage,
    pub(super) tdcx: Vec<FirmwarePage>,
    pub(super) cpu: CpuId,
    /// The module's VCPU_INDEX, once TDH.VP.INIT succeeded: the vCPU is
    /// then associated with `cpu`.
    pub(super) vcpu_index: Option<usize>,
    /// The CPU the vCPU may be associated with now ([`NO_CPU`]: none):
    /// `cpu` after TDH.VP.INIT, then the CPU of its last TDH.VP.ENTER
    /// attempt (an entry's association survives the entry's failure), none
    /// after a TDH.VP.FLUSH. The vCPU's [`Vcpu`](super::Vcpu) handle
    /// changes it; teardown flushes there.
    pub(super) assoc: AtomicU32,
    /// A [`Vcpu`](super::Vcpu) handle exists for it.
    pub(super) taken: AtomicBool,
}

/// [`VcpuSlot::assoc`] when the vCPU is associated with no CPU.
pub(super) const NO_CPU: u32 = u32::MAX;

impl VcpuSlot {
    /// TDH.VP.INIT succeeded: the vCPU is associated with its CPU.
    pub(crate) fn associated(&self) -> bool {
        self.vcpu_index.is_some()
    }

    /// The caller's name for a built vCPU.
    pub(super) fn id(&self) -> Option<VcpuId> {
        Some(VcpuId {
            index: self.vcpu_index?,
            tdvpr: self.tdvpr.pfn(),
            cpu: self.cpu,
        })
    }

    /// Pages the module holds for it.
    pub(super) fn pages(&self) -> usize {
        1 + self.tdcx.len()
    }
}

/// A vCPU being built, in state `S`; it borrows its TD, which stays
/// [`Initialized`] until the vCPU is done (the module creates vCPUs only
/// there).
///
/// Dropping a builder leaves the half-built vCPU with the TD: its pages are
/// reclaimed at teardown, and it has no [`VcpuId`].
#[must_use = "a half-built vCPU cannot run; finish it with add_tdcx and init"]
pub struct VcpuBuilder<'t, S: VcpuState, H: TdHostRef> {
    td: &'t mut Td<Initialized, H>,
    /// Position among the TD's vCPUs in creation order (half-built ones
    /// included): what errors name as [`Operand::Vcpu`].
    index: usize,
    _state: PhantomData<S>,
}

impl<S: VcpuState, H: TdHostRef> fmt::Debug for VcpuBuilder<'_, S, H> {
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

impl<'t, S: VcpuState, H: TdHostRef> VcpuBuilder<'t, S, H> {
    /// The TDVPR page.
    pub fn tdvpr(&self) -> Pfn {
        self.td.inner.vcpus[self.index].tdvpr.pfn()
    }

    fn to<T: VcpuState>(self) -> VcpuBuilder<'t, T, H> {
        VcpuBuilder {
            td: self.td,
            index: self.index,
            _state: PhantomData,
        }
    }
}

/// TDCX pages per vCPU: TDVPS_BASE_SIZE / 4 KiB − 1 (the TDVPR is the
/// first page of the TDVPS).
fn tdcx_pages<S: super::TdState, H: TdHostRef>(td: &Td<S, H>) -> usize {
    usize::from(td.host().module().sysinfo().tdvps_base_size)
        .div_ceil(4096)
        .saturating_sub(1)
}

impl<'t, H: TdHostRef> VcpuBuilder<'t, VpCreated, H> {
    /// Adds the TDCX pages (TDVPS_BASE_SIZE / 4 KiB − 1 of them): CLFLUSH
    /// and TDH.VP.ADDCX each.
    ///
    /// On failure the builder comes back: the pages added so far stay with
    /// the vCPU, the one refused goes back to the platform, and a retry
    /// adds only the pages still missing.
    #[doc(alias = "TDH.VP.ADDCX")]
    pub fn add_tdcx(self) -> Result<VcpuBuilder<'t, VpTdcxAdded, H>, TdFailure<Self>> {
        let n = tdcx_pages(self.td);
        let (index, tdvpr) = (self.index, self.tdvpr());
        while self.td.inner.vcpus[index].tdcx.len() < n {
            let fail = |error, td| Err(TdFailure::new(error, td));
            // `new_vcpu` made room for all of them: this allocates nothing
            // (but stays fallible, whatever the list holds).
            if self.td.inner.vcpus[index].tdcx.try_reserve(1).is_err() {
                return fail(
                    TdError::Alloc {
                        what: "a vCPU's page list",
                        on: Some(Operand::Vcpu(index)),
                    },
                    self,
                );
            }
            let page = match self.td.fresh_page(&self.td.inner.policy) {
                Ok(page) => page,
                Err(error) => return fail(error, self),
            };
            let b = self.td.b();
            let r = self
                .td
                .retry(Leaf::VP_ADDCX.v0(), Operand::Vcpu(index), || {
                    // SAFETY: a fresh, flushed page; on success the module
                    // owns it.
                    unsafe { leaf::tdh_vp_addcx(b, page, tdvpr) }
                });
            if let Err(error) = r {
                self.td.free_refused(page);
                return fail(error, self);
            }
            self.td.inner.vcpus[index]
                .tdcx
                .push(FirmwarePage::from_pfn(page));
        }
        Ok(self.to())
    }
}

impl<'t, H: TdHostRef> VcpuBuilder<'t, VpTdcxAdded, H> {
    /// TDH.VP.INIT on the vCPU's CPU, with the guest's initial RCX (the
    /// guest finds it in RCX and R8) and x2APIC ID: the vCPU becomes
    /// associated with that CPU and is done.
    ///
    /// The leaf's version follows what the module reported at bring-up
    /// ([`SysInfo::vp_init_takes_x2apic_id`](crate::SysInfo::vp_init_takes_x2apic_id)):
    /// on a module with topology enumeration (TDX_FEATURES0.TOPOLOGY_ENUM;
    /// module 1.5.05 and later), version 1 with `x2apic_id` in R8, as Linux
    /// issues it; there the IDs of a TD's vCPUs must differ (the module
    /// answers `TDX_X2APIC_ID_NOT_UNIQUE`). On a module without it (1.5.01,
    /// whose dispatcher refuses version 1), version 0: the module does not
    /// take an x2APIC ID and `x2apic_id` is not used.
    ///
    /// On failure the builder comes back, to retry or drop.
    #[doc(alias = "TDH.VP.INIT")]
    pub fn init(
        self,
        initial_rcx: InitialRcx,
        x2apic_id: X2ApicId,
    ) -> Result<VcpuId, TdFailure<Self>> {
        let (InitialRcx(initial_rcx), X2ApicId(x2apic_id)) = (initial_rcx, x2apic_id);
        let (b, p, index, tdvpr) = (self.td.b(), self.td.p(), self.index, self.tdvpr());
        let cpu = self.td.inner.vcpus[index].cpu;
        let v1 = self.td.host().module().sysinfo().vp_init_takes_x2apic_id();
        let lv = if v1 {
            Leaf::VP_INIT.v(1)
        } else {
            Leaf::VP_INIT.v0()
        };
        let r = retry_on_cpu(
            p,
            cpu,
            self.td.inner.policy,
            lv,
            Operand::Vcpu(index),
            &mut || {
                if v1 {
                    // SAFETY: TDH.VP.INIT takes no host page; it runs on
                    // `cpu` (the `Cpus` contract), which the vCPU becomes
                    // associated with.
                    unsafe { leaf::tdh_vp_init(b, tdvpr, initial_rcx, x2apic_id) }
                } else {
                    // SAFETY: as above.
                    unsafe { leaf::tdh_vp_init_v0(b, tdvpr, initial_rcx) }
                }
            },
        );
        if let Err(error) = r {
            return Err(TdFailure::new(error, self));
        }
        // The module's VCPU_INDEX, read back (TDH.VP.RD on the vCPU's CPU,
        // where it is associated now). Counting the vCPUs initialized before
        // gives the same number unless a TDH.VP.INIT failed after taking an
        // index (IA32_TSC_ADJUST changed; module 1.5.05's duplicate x2APIC
        // ID): the count is only the fallback, its read error kept for the
        // teardown report.
        let counted = self
            .td
            .inner
            .vcpus
            .iter()
            .filter(|v| v.associated())
            .count();
        let vcpu_index = match self
            .td
            .vp_read(index, tdx_types::metadata::field::VP_VCPU_INDEX)
        {
            Ok(i) => i as usize,
            Err(e) => {
                self.td.defer(e);
                counted
            }
        };
        self.td.inner.vcpus[index].vcpu_index = Some(vcpu_index);
        self.td.inner.vcpus[index]
            .assoc
            .store(cpu.0, Ordering::Relaxed);
        Ok(VcpuId {
            index: vcpu_index,
            tdvpr,
            cpu,
        })
    }
}

impl<H: TdHostRef> Td<Initialized, H> {
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
        initial_rcx: InitialRcx,
        x2apic_id: X2ApicId,
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
    pub fn new_vcpu(&mut self, cpu: CpuId) -> Result<VcpuBuilder<'_, VpCreated, H>, TdError> {
        use crate::platform::Cpus;
        if cpu.0 >= self.p().cpus() {
            return Err(TdError::NoSuchCpu(cpu));
        }
        // The module refuses a vCPU past MAX_VCPUS only at TDH.VP.INIT,
        // after its TDVPR and TDCX pages went in: refuse it before any
        // page moves. The module numbers vCPUs at TDH.VP.INIT, so the
        // built ones count (a half-built one takes no number).
        if self.vcpus().count() >= usize::from(self.inner.max_vcpus) {
            return Err(TdError::TooManyVcpus {
                max: self.inner.max_vcpus,
            });
        }
        // Room for the vCPU's records before any page moves: its slot and
        // the list of its TDCX pages, so that no later step allocates and a
        // failed allocation leaves nothing behind.
        let on = Some(Operand::Vcpu(self.inner.vcpus.len()));
        let no_memory = |what| TdError::Alloc { what, on };
        if self.inner.vcpus.try_reserve(1).is_err() {
            return Err(no_memory("the TD's vCPU list"));
        }
        let mut tdcx = Vec::new();
        if tdcx.try_reserve_exact(tdcx_pages(self)).is_err() {
            return Err(no_memory("a vCPU's page list"));
        }
        let (b, tdr) = (self.b(), self.tdr());
        let index = self.inner.vcpus.len();
        let tdvpr = self.fresh_page(&self.inner.policy)?;
        self.retry(Leaf::VP_CREATE.v0(), Operand::Vcpu(index), || {
            // SAFETY: a fresh, flushed page; on success the module owns it.
            unsafe { leaf::tdh_vp_create(b, tdvpr, tdr) }
        })
        .inspect_err(|_| self.free_refused(tdvpr))?;
        self.inner.vcpus.push(VcpuSlot {
            tdvpr: FirmwarePage::from_pfn(tdvpr),
            tdcx,
            cpu,
            vcpu_index: None,
            assoc: AtomicU32::new(NO_CPU),
            taken: AtomicBool::new(false),
        });
        Ok(VcpuBuilder {
            td: self,
            index,
            _state: PhantomData,
        })
    }
}
