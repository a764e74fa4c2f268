//! The TD side of a ready module: [`TdHost`], and how a TD reaches it
//! ([`TdHostRef`]).

// UNSAFETY: TDH.MNG.CREATE and TDH.PHYMEM.PAGE.WBINVD are `unsafe fn`s, and
// a refused TDR page goes back to the platform with `free_pages`.
#![allow(unsafe_code)]

use alloc::{boxed::Box, sync::Arc, vec::Vec};
use core::{fmt, marker::PhantomData, mem::ManuallyDrop};

use tdx_sys::{Seamcall, leaf};
use tdx_types::{
    FirmwarePage, Hpa, Leaf, Pfn, PfnRange, PfnRun, Size4K, TdxStatus, abi::TdParams, regs::KeyedPa,
};

use super::{Created, HkidPool, Initialized, Inner, Operand, Shared, Td, TdError, mirror::Tree};
use crate::{
    module::{ExtInited, TdxModule},
    platform::{Errata, Placement, Platform},
    retry::{RetryPolicy, retry},
};

/// The TD side of a ready module: it owns the module (so there is one HKID
/// pool per module) and creates TDs.
///
/// `Send` and `Sync` when the backend and the platform are: many threads
/// create, run and tear down TDs through one `&TdHost` (or `Arc<TdHost>`)
/// at once.
pub struct TdHost<B, P> {
    module: TdxModule<ExtInited, B, P>,
    hkids: HkidPool,
    keyid_shift: u32,
    /// Read once from the platform (its contract: they do not change).
    errata: Errata,
    policy: RetryPolicy,
    /// Held around the TD-global leaves; see [`TdHost::global_leaves`].
    global: spin::Mutex<()>,
}

impl<B, P> fmt::Debug for TdHost<B, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdHost")
            .field("hkids", &self.hkids)
            .field("keyid_shift", &self.keyid_shift)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// How a [`Td`] reaches its [`TdHost`]: borrowed (`&TdHost`, no cost; the TD
/// cannot outlive the borrow) or shared (`Arc<TdHost>`; the TD owns a
/// reference, so a VMM keeps the host and its TDs in one struct and moves
/// TDs to spawned threads).
///
/// Implemented for those two only (sealed): the library's `unsafe` code
/// relies on getting the same host from every call, which an outside
/// implementation could break in safe code.
pub trait TdHostRef: sealed::Sealed {
    /// The SEAMCALL backend.
    type Backend: Seamcall + Sync;
    /// The host services.
    type Platform: Platform + Sync;
    /// The host (the same one every time).
    fn host(&self) -> &TdHost<Self::Backend, Self::Platform>;
}

mod sealed {
    pub trait Sealed {}
    impl<B, P> Sealed for &super::TdHost<B, P> {}
    impl<B, P> Sealed for alloc::sync::Arc<super::TdHost<B, P>> {}
}

impl<B: Seamcall + Sync, P: Platform + Sync> TdHostRef for &TdHost<B, P> {
    type Backend = B;
    type Platform = P;
    #[inline]
    fn host(&self) -> &TdHost<B, P> {
        self
    }
}

impl<B: Seamcall + Sync, P: Platform + Sync> TdHostRef for Arc<TdHost<B, P>> {
    type Backend = B;
    type Platform = P;
    #[inline]
    fn host(&self) -> &TdHost<B, P> {
        self
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
        let errata = module.platform().errata();
        Ok(Self {
            errata,
            module,
            hkids: HkidPool::new(guest.start, guest.end),
            keyid_shift,
            policy: RetryPolicy::DEFAULT,
            global: spin::Mutex::new(()),
        })
    }

    /// What the host does when the module answers BUSY: for TD-global
    /// leaves (TDH.MNG.CREATE, KEY.CONFIG, VPFLUSHDONE, CACHE.WB,
    /// KEY.FREEID), teardown, and as the starting policy of each new TD.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Sets the host's retry policy (see [`policy`](Self::policy)).
    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = policy;
    }

    /// TDH.PHYMEM.PAGE.WBINVD of the 4K page `pfn` under `keyid` (a TD's
    /// HKID, or the global KeyID for the TDR): writes back the lines of a
    /// page the module no longer owns, retried like any leaf.
    /// `policy` is by reference so that the fast path (success at once)
    /// does not copy it.
    #[inline]
    pub(crate) fn page_wbinvd(
        &self,
        pfn: Pfn,
        keyid: u16,
        policy: &RetryPolicy,
    ) -> Result<(), TdError> {
        let keyed = KeyedPa::try_new(pfn.hpa(), keyid, self.keyid_shift)
            .map_err(|_| TdError::KeyidShift(self.keyid_shift))?;
        // SAFETY: WBINVD of a page the module no longer owns moves nothing;
        // it writes back the lines of `keyid`.
        let s = unsafe { leaf::tdh_phymem_page_wbinvd(self.module.backend(), keyed) };
        if !s.is_error() {
            return Ok(());
        }
        self.page_wbinvd_after(pfn, keyed, policy, s)
    }

    /// The first WBINVD answered `first`: the retries, under `policy`.
    #[cold]
    #[inline(never)]
    fn page_wbinvd_after(
        &self,
        pfn: Pfn,
        keyed: KeyedPa,
        policy: &RetryPolicy,
        first: TdxStatus,
    ) -> Result<(), TdError> {
        let b = self.module.backend();
        let mut first = Some(first);
        retry(
            self.module.platform(),
            *policy,
            Leaf::PHYMEM_PAGE_WBINVD.v0(),
            Operand::HostPage(pfn),
            || {
                first.take().unwrap_or_else(|| {
                    // SAFETY: as in `page_wbinvd`.
                    unsafe { leaf::tdh_phymem_page_wbinvd(b, keyed) }
                })
            },
        )
        .map(|_| ())
    }

    /// Serializes the TD-global leaves of this host's TDs: TDH.MNG.CREATE,
    /// TDH.MNG.KEY.CONFIG, and teardown's TDH.MNG.VPFLUSHDONE,
    /// TDH.PHYMEM.CACHE.WB (every package, resumed until done) and
    /// TDH.MNG.KEY.FREEID. The module serializes them too, through its key
    /// tables (KOT, KET) and per-package write-back state, but it answers
    /// BUSY instead of waiting, for as long as a CACHE.WB takes (a whole
    /// cache flush): two TDs created or torn down at once would spend
    /// their retries against each other, and a resumed CACHE.WB would find
    /// another thread's CACHE.WB completed under it. KVM holds its global
    /// `tdx_lock` around the same leaves (`arch/x86/kvm/vmx/tdx.c`).
    ///
    /// Waiting here always yields ([`Platform::yield_now`]): the holder
    /// runs leaves on other CPUs through `on_cpu` (KEY.CONFIG, CACHE.WB),
    /// which a waiter spinning with preemption off could block. So creating,
    /// tearing down and dropping a TD need a context that may yield; runtime
    /// operations (map, unmap, ...) never take this lock.
    pub(crate) fn global_leaves(&self) -> spin::MutexGuard<'_, ()> {
        loop {
            if let Some(g) = self.global.try_lock() {
                return g;
            }
            self.module.platform().yield_now();
        }
    }

    /// The platform's errata, as read when the host was made.
    pub fn errata(&self) -> Errata {
        self.errata
    }

    /// The module.
    pub fn module(&self) -> &TdxModule<ExtInited, B, P> {
        &self.module
    }

    /// Gives the module back. Every TD holds the host (borrowed or through
    /// an `Arc`), so none is left (each was torn down, or dropped, which
    /// tears it down); HKIDs a failed teardown leaked are forgotten with the
    /// pool (the module still holds them).
    pub fn into_module(self) -> TdxModule<ExtInited, B, P> {
        self.module
    }

    /// The HKID allocator.
    pub fn hkids(&self) -> &HkidPool {
        &self.hkids
    }

    /// Builds a TD up to [`Initialized`] in one call: [`Td::build`] with
    /// this host borrowed.
    pub fn build_td(&self, params: &TdParams) -> Result<Td<Initialized, &Self>, TdError> {
        Td::build(self, params)
    }

    /// Creates a TD that borrows this host: [`Td::create`].
    #[doc(alias = "TDH.MNG.CREATE")]
    pub fn create_td(&self) -> Result<Td<Created, &Self>, TdError> {
        Td::create(self)
    }
}

impl<H: super::TdHostRef> Td<Created, H> {
    /// Allocates an HKID and a TDR page and issues TDH.MNG.CREATE (after
    /// CLFLUSH of the TDR); the TD holds `host` (`&TdHost` or
    /// `Arc<TdHost>`).
    ///
    /// On failure nothing is left behind: the TDR page goes back to the
    /// platform and the HKID to the pool.
    #[doc(alias = "TDH.MNG.CREATE")]
    pub fn create(host: H) -> Result<Self, TdError> {
        let h = host.host();
        let p = h.module.platform();
        let tree = Tree::new(3).ok_or(TdError::Alloc {
            what: "the TD's S-EPT record",
        })?;
        let hkid = h.hkids.alloc().ok_or(TdError::NoHkid)?;
        let tdr = match p.alloc_pages(1, 1, Placement::Anywhere) {
            Ok(r) => r.first(),
            Err(e) => {
                h.hkids.free(hkid);
                return Err(TdError::Platform(e));
            }
        };
        p.clflush_page(tdr);
        let gate = h.global_leaves();
        let r = retry(
            p,
            h.policy,
            Leaf::MNG_CREATE.v0(),
            Operand::HostPage(tdr),
            || {
                // SAFETY: `tdr` was just allocated from the platform for us
                // (Platform contract 1: nobody else uses it) and flushed; on
                // success the module owns it and we keep it only as a
                // FirmwarePage. The HKID is free: the pool hands each out once.
                unsafe { leaf::tdh_mng_create(h.module.backend(), tdr, hkid.get()) }
            },
        );
        drop(gate);
        if let Err(e) = r {
            // SAFETY: TDH.MNG.CREATE failed, so the module did not take the
            // page; it is ours, allocated above, and only CLFLUSHed.
            unsafe { p.free_pages(PfnRun::from(PfnRange::<Size4K>::from(tdr))) };
            h.hkids.free(hkid);
            return Err(e);
        }
        let policy = h.policy;
        Ok(Td {
            inner: ManuallyDrop::new(Box::new(Inner {
                tdr: FirmwarePage::from_pfn(tdr),
                hkid: Some(hkid),
                tdcs: Vec::new(),
                vcpus: Vec::new(),
                tree,
                unflushed: Shared::default(),
                in_doubt: Shared::default(),
                staging: None,
                deferred: Shared::default(),
                ept_levels: 0,
                policy,
                map_policy: policy,
                zaps_waiting: core::sync::atomic::AtomicU32::new(0),
            })),
            host,
            _state: PhantomData,
        })
    }
}

impl<H: super::TdHostRef> Td<Initialized, H> {
    /// Builds a TD up to [`Initialized`] in one call: [`create`](Td::create),
    /// [`configure_keys`](Td::configure_keys), [`add_tdcs`](Td::add_tdcs),
    /// [`init`](Td::init) with `params`.
    ///
    /// A failed step drops the TD, which tears it down (its report goes to
    /// [`Platform::dropped_td`]), and returns the error. To keep the TD for
    /// a retry, take the steps one by one.
    pub fn build(host: H, params: &TdParams) -> Result<Self, TdError> {
        Td::create(host)?
            .configure_keys()
            .map_err(|f| f.error)?
            .add_tdcs()
            .map_err(|f| f.error)?
            .init(params)
            .map_err(|f| f.error)
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
