//! The TD side of a ready module: [`TdHost`], and how a TD reaches it
//! ([`TdHostRef`]).

// UNSAFETY: TDH.MNG.CREATE and TDH.PHYMEM.PAGE.WBINVD are `unsafe fn`s, and
// a refused TDR page goes back to the platform with `free_pages`.
#![allow(unsafe_code)]

use alloc::{boxed::Box, sync::Arc, vec::Vec};
use core::{fmt, marker::PhantomData, mem::ManuallyDrop};

use tdx_sys::{Seamcall, leaf};
use tdx_types::{
    FirmwarePage, Hpa, Leaf, Pfn, PfnRange, PfnRun, Size4K, TdxLevel, TdxStatus,
    abi::TdParams,
    regs::{HpaLevel, KeyedPa},
};

use super::{
    Created, HkidPool, Initialized, Inner, Operand, Shared, Td, TdError,
    heap::BoxSlot,
    mirror::Tree,
    pairs::{PairError, PairTable, Put},
};
use crate::{
    module::{ExtInited, TdxModule},
    platform::{
        CacheMaintenance, Errata, FrameAllocator, FrameDeallocator, NodeId, Placement, Platform,
        PlatformError,
    },
    retry::{Attempts, RetryPolicy, retry},
};

/// Bit 62 of the frame a removal returns with Dynamic PAMT: the range's
/// count reached 0 (module 1.5.16+, `pamt_manager.h`). Advisory; the
/// library keeps its own count.
const PAMT_REMOVAL_HINT: u64 = 1 << 62;

/// The two frames of a pair that starts at `pair` (a frame the platform
/// gave as the first of two, so always `Some`).
fn pair_run(pair: Pfn) -> Option<PfnRun> {
    PfnRun::try_new(pair, 2).ok()
}

/// The TD side of a ready module: it owns the module (so there is one HKID
/// pool per module) and creates TDs.
///
/// `Send` and `Sync` when the backend and the platform are: many threads
/// create, run and tear down TDs through one `&TdHost` (or `Arc<TdHost>`)
/// at once.
///
/// # Examples
///
/// ```
/// # use tdx_api::TdxModule;
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// use std::sync::Arc;
/// use tdx_api::td::{Td, TdConfig, TdHost};
///
/// // Only a ready module (`TdxModule<ExtInited>`) becomes a TdHost.
/// let host = Arc::new(TdHost::new(module.init_extensions().unwrap()).unwrap());
/// let params = TdConfig::builder().max_vcpus(1).build().to_params();
/// // A TD that borrows the host (`Td<_, &TdHost>`)...
/// let a = host.build_td(&params).unwrap();
/// // ...and one that holds it (`Td<_, Arc<TdHost>>`), to move elsewhere.
/// let b = Td::build(Arc::clone(&host), &params).unwrap();
/// assert_ne!(a.hkid(), b.hkid());
/// std::thread::scope(|s| {
///     s.spawn(move || assert!(b.teardown().is_clean()));
/// });
/// assert!(a.teardown().is_clean());
/// assert_eq!(host.hkids().in_use(), 0);
/// ```
pub struct TdHost<B, P> {
    module: TdxModule<ExtInited, B, P>,
    hkids: HkidPool,
    keyid_shift: u32,
    /// The module's, read once from the platform at `init`.
    errata: Errata,
    policy: RetryPolicy,
    /// Held around the TD-global leaves; see [`TdHost::global_leaves`].
    global: spin::Mutex<()>,
    /// Dynamic PAMT's per-range state, if the module was configured with
    /// it.
    pairs: Option<PairTable>,
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
    /// [`Hardware::keyid_shift`](crate::Hardware::keyid_shift) (as the
    /// module read it at `init`); the shift is checked here, so that the
    /// highest guest HKID over the top frame of TDX memory still makes a
    /// keyed address below bit 52. If it does not, the module comes back
    /// with [`TdError::KeyidShift`].
    ///
    /// The host's records (the HKID pool's bitmap, the Dynamic PAMT range
    /// table) are allocated fallibly: if the global allocator has no room,
    /// the module comes back with [`TdError::Alloc`]. Only the box of the
    /// refusal itself is allocated infallibly (a few words, at bring-up).
    pub fn new(module: TdxModule<ExtInited, B, P>) -> Result<Self, Box<TdHostRefused<B, P>>> {
        // The facts the module read at `init`: the platform is not asked
        // again.
        let hardware = module.hardware();
        let guest = hardware.keyid_partition.guest_keyids();
        let keyid_shift = hardware.keyid_shift;
        let top = module
            .plan()
            .and_then(|p| p.tdmrs.iter().map(|t| t.base + t.size).max())
            .map_or(0, |end| end.saturating_sub(4096));
        let last = u16::try_from(guest.end.saturating_sub(1)).unwrap_or(u16::MAX);
        if KeyedPa::try_new(Hpa::new(top), last, keyid_shift).is_err() {
            return Err(Box::new(TdHostRefused::new(
                TdError::KeyidShift(keyid_shift),
                module,
            )));
        }
        let errata = hardware.errata;
        let pairs = match module.plan().filter(|_| module.dynamic_pamt()) {
            None => None,
            Some(plan) => match PairTable::new(plan.tdmrs.iter().map(|t| (t.base, t.size))) {
                Some(t) => Some(t),
                None => {
                    return Err(Box::new(TdHostRefused::new(
                        TdError::Alloc {
                            what: "the Dynamic PAMT range table",
                            on: None,
                        },
                        module,
                    )));
                }
            },
        };
        let Some(hkids) = HkidPool::try_new(guest.start, guest.end) else {
            let error = TdError::Alloc {
                what: "the HKID pool",
                on: None,
            };
            return Err(Box::new(TdHostRefused::new(error, module)));
        };
        Ok(Self {
            errata,
            module,
            hkids,
            keyid_shift,
            policy: RetryPolicy::DEFAULT,
            global: spin::Mutex::new(()),
            pairs,
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
    /// The first attempt is inline and its retries out of line, with the
    /// operands passed again rather than captured: on the unmap path that
    /// saves about 15 instructions a page over [`retry`] (measured with
    /// `benches/icount.sh`).
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
            policy,
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

    /// Whether this host's TDs run with Dynamic PAMT (the module was
    /// configured with it): every 4K page the module gets needs a PAMT
    /// page pair for its 2 MiB range, which the library adds and removes.
    pub fn dynamic_pamt(&self) -> bool {
        self.pairs.is_some()
    }

    /// The Dynamic PAMT page pairs installed now (0 without Dynamic PAMT).
    /// Each is two pages the module holds.
    pub fn pamt_pairs(&self) -> usize {
        self.pairs.as_ref().map_or(0, PairTable::installed)
    }

    /// Takes a pair reference on the 2 MiB range of `pfn`, a 4K page about
    /// to be given to the module (TDR, TDCS, TDVPR, TDCX, S-EPT page,
    /// PAGE.ADD, 4K PAGE.AUG): adds the range's pair if it has none
    /// (TDH.PHYMEM.PAMT.ADD, with two pages from the platform). No-op
    /// without Dynamic PAMT. Every success is balanced by
    /// [`pair_put`](Self::pair_put) once the module has given the page
    /// back, or if the leaf that was to take it failed.
    ///
    /// Another thread adding or removing the same range's pair, and a
    /// BUSY PAMT.ADD, are retried under `policy`; past it they are
    /// [`TdError::PamtInProgress`] and [`TdError::Busy`].
    #[inline]
    pub(crate) fn pair_get(&self, pfn: Pfn, policy: &RetryPolicy) -> Result<(), TdError> {
        match &self.pairs {
            None => Ok(()),
            Some(t) if t.get_if_paired(pfn) => Ok(()),
            Some(t) => self.pair_get_in(t, pfn, policy),
        }
    }

    #[cold]
    #[inline(never)]
    fn pair_get_in(&self, t: &PairTable, pfn: Pfn, policy: &RetryPolicy) -> Result<(), TdError> {
        let (b, p) = (self.module.backend(), self.module.platform());
        let range = PairTable::range_of(pfn);
        let mut tries = Attempts::new();
        loop {
            let r = t.get(
                pfn,
                || self.alloc_pair(range),
                |range, pair| {
                    let Ok(rcx) = HpaLevel::try_new(range.hpa(), TdxLevel::L2M) else {
                        return TdxStatus::OPERAND_INVALID;
                    };
                    let second = Pfn::new(pair.as_u64() + 1);
                    // SAFETY: the pair's two frames came from the platform
                    // for this call (the `FrameAllocator` contract: nobody else uses them); on
                    // success the module owns them until PAMT.REMOVE gives
                    // them back (`pair_put`). A failed ADD took nothing.
                    unsafe { leaf::tdh_phymem_pamt_add(b, rcx, pair, second) }
                },
                |pair| {
                    if let Some(run) = pair_run(pair) {
                        // SAFETY: a pair PAMT.ADD did not take (it failed,
                        // or was not issued): ours, from `alloc_pair`,
                        // untouched.
                        unsafe { p.free_pages(run) }
                    }
                },
            );
            let status = match r {
                Ok(_) | Err(PairError::NotTdx) => return Ok(()),
                Err(PairError::InProgress) => None,
                Err(PairError::Module(s)) => Some(s),
                Err(PairError::NoMemory) => {
                    return Err(TdError::Platform(PlatformError::OutOfMemory {
                        count: 2,
                        align: 2,
                        placement: self.pair_placement(range),
                    }));
                }
                Err(PairError::State) => {
                    return Err(TdError::Protocol {
                        leaf: Leaf::PHYMEM_PAMT_ADD.v0(),
                        what: "all 512 4K pages of the range are already the module's",
                        gpa: None,
                    });
                }
            };
            tries.again(
                p,
                *policy,
                Leaf::PHYMEM_PAMT_ADD.v0(),
                Operand::HostPage(range),
                status,
            )?;
        }
    }

    /// Where a pair for `range` comes from: the node the plan keeps the
    /// range's TDMR's PAMT on ([`Plan::pamt_node_hint`](crate::plan::Plan::pamt_node_hint)),
    /// else the range's node if the platform knows it. The module reads
    /// the pair on every access to the range's pages, as it reads a
    /// TDMR's PAMT.
    fn pair_placement(&self, range: Pfn) -> Placement {
        let planned = self
            .module
            .plan()
            .and_then(|p| p.pamt_node_hint(range.hpa().as_u64()))
            .map(NodeId);
        planned
            .or_else(|| self.module.platform().node_of(range))
            .map_or(Placement::Anywhere, Placement::Node)
    }

    /// Two consecutive frames for a pair.
    fn alloc_pair(&self, range: Pfn) -> Option<Pfn> {
        let r = self
            .module
            .platform()
            .alloc_pages(2, 2, self.pair_placement(range))
            .ok()?;
        Some(r.first())
    }

    /// Makes sure the 2 MiB range of `pfn` has no pair, as a 2 MiB
    /// PAGE.AUG of it needs (the module refuses a range with a pair): a
    /// pair left by a refused PAMT.REMOVE is removed now. No-op without
    /// Dynamic PAMT. A range whose 4K pages the module holds is left to
    /// the module to refuse.
    pub(crate) fn pair_clear(&self, pfn: Pfn, policy: &RetryPolicy) -> Result<(), TdError> {
        let Some(t) = &self.pairs else {
            return Ok(());
        };
        let p = self.module.platform();
        let range = PairTable::range_of(pfn);
        let on = Operand::HostPage(range);
        let mut tries = Attempts::new();
        loop {
            let status = match t.remove_idle(pfn, |range| self.pamt_remove(range)) {
                Ok(None) | Err(PairError::NotTdx | PairError::State) => return Ok(()),
                Ok(Some(Put::Kept0(s))) => Some(s),
                Ok(Some(r)) => {
                    let _ = self.pair_done(r);
                    return Ok(());
                }
                Err(PairError::InProgress) => None,
                Err(PairError::Module(s)) => Some(s),
                Err(PairError::NoMemory) => return Ok(()),
            };
            tries.again(p, *policy, Leaf::PHYMEM_PAMT_REMOVE.v0(), on, status)?;
        }
    }

    /// DEMOTE of the 2 MiB page whose first frame is `pfn` into 4K pages:
    /// with Dynamic PAMT the split range needs a pair, which goes to the
    /// module with the leaf (R12/R13; `demote` issues it, with retries, and
    /// gets `Some(pair)`), leaving the range with a pair and 512 pages. A
    /// failed DEMOTE gives the pair back to the platform. Without Dynamic
    /// PAMT `demote` gets `None`.
    pub(crate) fn pair_demote(
        &self,
        pfn: Pfn,
        demote: &mut dyn FnMut(Option<[Pfn; 2]>) -> Result<(), TdError>,
    ) -> Result<(), TdError> {
        let Some(t) = &self.pairs else {
            return demote(None);
        };
        let p = self.module.platform();
        let range = PairTable::range_of(pfn);
        let mut failed = None;
        let r = t.demote(
            pfn,
            || self.alloc_pair(range),
            |pair| match demote(Some([pair, Pfn::new(pair.as_u64() + 1)])) {
                Ok(()) => TdxStatus::SUCCESS,
                Err(e) => {
                    failed = Some(e);
                    TdxStatus::OPERAND_INVALID
                }
            },
            |pair| {
                if let Some(run) = pair_run(pair) {
                    // SAFETY: the DEMOTE that was to take the pair failed
                    // (or was not issued): ours, from `alloc_pair`.
                    unsafe { p.free_pages(run) }
                }
            },
        );
        match r {
            Ok(_) => Ok(()),
            Err(PairError::Module(s)) => Err(failed.unwrap_or(TdError::Seamcall {
                error: tdx_types::TdxError::new(Leaf::MEM_PAGE_DEMOTE.v0(), s),
                on: Operand::HostPage(range),
            })),
            Err(PairError::InProgress) => Err(TdError::PamtInProgress(range)),
            Err(PairError::NoMemory) => Err(TdError::Platform(PlatformError::OutOfMemory {
                count: 2,
                align: 2,
                placement: self.pair_placement(range),
            })),
            // Not in a TDMR: the module refuses the page itself.
            Err(PairError::NotTdx) => demote(None),
            Err(PairError::State) => Err(TdError::Protocol {
                leaf: Leaf::MEM_PAGE_DEMOTE.v0(),
                what: "the 2 MiB range already has a PAMT pair",
                gpa: None,
            }),
        }
    }

    /// After a PROMOTE of 512 4K pages (first frame `pfn`) into a 2 MiB
    /// page succeeded: the module gave the range's pair back (`pair`, R12
    /// and R13) without PAMT.REMOVE; the range has no pair and no pages
    /// now, and the pair is released. A pair other than the one installed
    /// leaves ours leaked (the module may still use it).
    pub(crate) fn pair_promoted(&self, pfn: Pfn, pair: Option<[Pfn; 2]>) {
        let Some(t) = &self.pairs else {
            return;
        };
        let got = pair.map_or((Pfn::ZERO, Pfn::ZERO), |[a, b]| (a, b));
        if let Ok(r) = t.promote(pfn, || Ok(got)) {
            let _ = self.pair_done(r);
        }
    }

    /// Drops the pair reference of the 4K page `pfn`, which the module gave
    /// back (its removal or reclaim returned) or never took (the leaf
    /// failed). The last reference of a range removes its pair
    /// (TDH.PHYMEM.PAMT.REMOVE) and releases it: written back under the
    /// module's global KeyID, cleared, freed. A removal the module refuses
    /// leaves the pair installed for the next page of the range or for
    /// [`release_pairs`](Self::release_pairs); nothing is lost.
    ///
    /// Returns the pair if this removed one: `Ok` released to the platform,
    /// `Err` leaked (already reported to [`FrameDeallocator::leak_pages`])
    /// with why.
    #[inline]
    pub(crate) fn pair_put(&self, pfn: Pfn) -> Option<Result<PfnRun, (PfnRun, &'static str)>> {
        match &self.pairs {
            None => None,
            Some(t) => self.pair_put_in(t, pfn),
        }
    }

    fn pair_put_in(
        &self,
        t: &PairTable,
        pfn: Pfn,
    ) -> Option<Result<PfnRun, (PfnRun, &'static str)>> {
        let r = t.put(pfn, |range| self.pamt_remove(range));
        self.pair_done(r)
    }

    /// TDH.PHYMEM.PAMT.REMOVE of `range`, retried under the host's policy:
    /// the two frames it gave back.
    fn pamt_remove(&self, range: Pfn) -> Result<(Pfn, Pfn), TdxStatus> {
        let b = self.module.backend();
        let rcx = HpaLevel::try_new(range.hpa(), TdxLevel::L2M)
            .map_err(|_| TdxStatus::OPERAND_INVALID)?;
        let mut out = [0; 2];
        retry(
            self.module.platform(),
            &self.policy,
            Leaf::PHYMEM_PAMT_REMOVE.v0(),
            Operand::HostPage(range),
            || {
                // SAFETY: the range's count is 0: no page of it is in the
                // module or on its way out (the count drops only after the
                // removing SEAMCALL returned), so the module can give the
                // pair back; we take the frames over only after checking
                // them against the pair we installed.
                let c = unsafe { leaf::tdh_phymem_pamt_remove(b, rcx) };
                out = c.out;
                c.status
            },
        )
        .map_err(|e| match e {
            TdError::Seamcall { error, .. } | TdError::Busy { error, .. } => error.status(),
            _ => TdxStatus::OPERAND_INVALID,
        })?;
        let frame = |hpa: u64| Pfn::try_from_hpa(Hpa::new(hpa & !PAMT_REMOVAL_HINT)).ok();
        match (frame(out[0]), frame(out[1])) {
            (Some(a), Some(b)) => Ok((a, b)),
            // Not frames at all: never ours.
            _ => Ok((Pfn::ZERO, Pfn::ZERO)),
        }
    }

    /// What a put (or a removal) left to do with a pair: the pair, if one
    /// left the module, released (`Ok`) or leaked (`Err`, with why).
    fn pair_done(&self, r: Put) -> Option<Result<PfnRun, (PfnRun, &'static str)>> {
        match r {
            Put::Kept | Put::Kept0(_) | Put::Unbalanced => None,
            Put::Removed(pair) => pair_run(pair).map(|run| self.release_pair(run)),
            Put::Mismatch { pair } => pair_run(pair).map(|run| {
                let why = "PAMT.REMOVE gave back other pages than the range's pair";
                self.module.platform().leak_pages(run, why);
                Err((run, why))
            }),
        }
    }

    /// A pair the module gave back: each page written back under the
    /// module's global KeyID (the module zeroed the pages under it at
    /// PAMT.ADD, as it writes a TDR, whose page Linux writes back the same
    /// way before reuse; Linux's Dynamic PAMT series frees pairs without
    /// it, which this library does not rely on), cleared, and freed. A
    /// failed write-back or clear leaks the pair.
    fn release_pair(&self, run: PfnRun) -> Result<PfnRun, (PfnRun, &'static str)> {
        let p = self.module.platform();
        let global = self.module.global_keyid();
        for f in run.iter() {
            if self.page_wbinvd(f, global, &self.policy).is_err() {
                let why = "a PAMT pair page could not be written back";
                p.leak_pages(run, why);
                return Err((run, why));
            }
        }
        // SAFETY: the module gave the pair back (PAMT.REMOVE or PROMOTE)
        // and its lines are written back: ours again, from `alloc_pair`.
        if unsafe { p.movdir64b_clear(run) }.is_err() {
            let why = "a PAMT pair could not be cleared with MOVDIR64B (no direct map)";
            p.leak_pages(run, why);
            return Err((run, why));
        }
        // SAFETY: as above.
        unsafe { p.free_pages(run) };
        Ok(run)
    }

    /// Removes the pairs of ranges that hold no page (left by a PAMT.REMOVE
    /// the module refused): what a host does before it goes away
    /// ([`into_module`](Self::into_module) calls it). Pairs of ranges with
    /// pages still in the module (TDs not torn down, or pages a failed
    /// teardown leaked) stay. Returns the pairs still installed.
    pub fn release_pairs(&self) -> usize {
        let Some(t) = &self.pairs else {
            return 0;
        };
        // Each idle pair is removed as the walk meets it: no list, so
        // nothing to allocate (the walk reads each range's word once; the
        // removal claims it with its own compare-and-swap).
        t.for_each_pair(&mut |range, _, count| {
            if count == 0
                && let Ok(Some(r)) = t.remove_idle(range, |range| self.pamt_remove(range))
            {
                let _ = self.pair_done(r);
            }
        });
        t.installed()
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
    /// Waiting here always yields ([`Cpus::yield_now`](crate::Cpus::yield_now)): the holder
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
    ///
    /// With Dynamic PAMT, the pairs of ranges that hold no page any more
    /// (left by a PAMT.REMOVE the module refused) are removed first
    /// ([`release_pairs`](Self::release_pairs)). (A host dropped without this leaves such pairs to the
    /// module: their pages are never freed, which loses memory but nothing
    /// else.)
    pub fn into_module(self) -> TdxModule<ExtInited, B, P> {
        self.release_pairs();
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

    /// [`build_td`](Self::build_td) from a [`TdConfig`](super::TdConfig)
    /// (its [`to_params`](super::TdConfig::to_params)).
    pub fn build_td_from(
        &self,
        config: &super::TdConfig,
    ) -> Result<Td<Initialized, &Self>, TdError> {
        Td::build(self, &config.to_params())
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
        // The TD's own records first (its S-EPT record's root, the room for
        // the rest), so that a failed allocation leaves nothing to undo.
        let no_memory = |what| TdError::Alloc {
            what,
            on: Some(Operand::Tdr),
        };
        let slot = BoxSlot::<Inner>::new().ok_or(no_memory("the TD's record"))?;
        let tree = Tree::new(3).ok_or(no_memory("the TD's S-EPT record"))?;
        let hkid = h.hkids.alloc().ok_or(TdError::NoHkid)?;
        let tdr = match p.alloc_pages(1, 1, Placement::Anywhere) {
            Ok(r) => r.first(),
            Err(e) => {
                h.hkids.free(hkid);
                return Err(TdError::Platform(e));
            }
        };
        p.clflush_page(tdr);
        if let Err(e) = h.pair_get(tdr, &h.policy) {
            // SAFETY: the page never reached the module: ours, allocated
            // above, only CLFLUSHed.
            unsafe { p.free_pages(PfnRun::from(PfnRange::<Size4K>::from(tdr))) };
            h.hkids.free(hkid);
            return Err(e);
        }
        let gate = h.global_leaves();
        let r = retry(
            p,
            &h.policy,
            Leaf::MNG_CREATE.v0(),
            Operand::HostPage(tdr),
            || {
                // SAFETY: `tdr` was just allocated from the platform for us
                // (the `FrameAllocator` contract: nobody else uses it) and flushed; on
                // success the module owns it and we keep it only as a
                // FirmwarePage. The HKID is free: the pool hands each out once.
                unsafe { leaf::tdh_mng_create(h.module.backend(), tdr, hkid.get()) }
            },
        );
        drop(gate);
        if let Err(e) = r {
            h.pair_put(tdr);
            // SAFETY: TDH.MNG.CREATE failed, so the module did not take the
            // page; it is ours, allocated above, and only CLFLUSHed.
            unsafe { p.free_pages(PfnRun::from(PfnRange::<Size4K>::from(tdr))) };
            h.hkids.free(hkid);
            return Err(e);
        }
        let policy = h.policy;
        Ok(Td {
            inner: ManuallyDrop::new(slot.fill(Inner {
                tdr: FirmwarePage::from_pfn(tdr),
                hkid: Some(hkid),
                tdcs: Vec::new(),
                vcpus: Vec::new(),
                tree,
                unflushed: Shared::default(),
                in_doubt: Shared::default(),
                staging: None,
                deferred: Shared::default(),
                deferred_unlisted: core::sync::atomic::AtomicU64::new(0),
                ept_levels: 0,
                max_vcpus: 0,
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
    /// [`FrameDeallocator::dropped_td`]), and returns the error. To keep
    /// the TD for a retry, take the steps one by one.
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

/// [`TdHost::new`] refused the module; it comes back unchanged in
/// `returned`.
pub type TdHostRefused<B, P> = crate::Failed<TdxModule<ExtInited, B, P>, TdError>;
