//! Private memory of a running TD: mapping (TDH.MEM.PAGE.AUG), batched
//! removal ([`Zap`]), split and merge (DEMOTE, PROMOTE), and giving back
//! emptied S-EPT pages (SEPT.REMOVE). Every operation takes `&self` and
//! claims the entries it changes in the TD's tree (see `mirror`), so
//! threads working on different GPAs never wait for each other.

// UNSAFETY: the S-EPT leaves of tdx-sys are `unsafe fn`s that move pages
// between host and module; frames the module gave back are cleared and
// freed through the platform.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::{fmt, ptr::NonNull, sync::atomic::Ordering};

use tdx_sys::{Completion, leaf, leaf::SeptOut};
use tdx_types::{
    Gpa, Leaf, LeafVersion, PageSize, Pfn, PfnRange, PfnRun, Size1G, Size2M, Size4K, TdxLevel,
    TdxStatus,
    regs::{PageInfo, TdrAndFlags},
};

use super::{
    Finalized, GuestFrame, MayAug, Occupant, Operand, PageRole, Td, TdError, TdFailure, TdHostRef,
    TdState,
    mirror::{Entry, FANOUT, Hold, Node, Park, Slot, Stop},
};
use crate::{
    platform::{CacheMaintenance, FrameDeallocator},
    retry::{retry, retry_out},
};

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

/// The error for an operation on a GPA whose entry is parked (see
/// `Td::park`).
fn parked(gpa: Gpa) -> TdError {
    TdError::Gpa {
        gpa,
        why: "a page removed from here waits for teardown (in doubt or not written back, \
              and the TD's list for such pages could not grow)",
    }
}

/// How many times a walk that keeps losing races for an empty table entry
/// starts over before it reports [`TdError::InProgress`].
const WALK_RESTARTS: u32 = 8;

fn page_info(gpa: u64, level: u8) -> Option<PageInfo> {
    PageInfo::try_new(Gpa::new(gpa), TdxLevel::from_u8(level)?).ok()
}

/// The frames of a page of `level` that starts at `first`.
#[inline]
pub(super) fn run_of(first: Pfn, level: u8) -> PfnRun {
    let one = PfnRun::from(PfnRange::<Size4K>::from(first));
    if level == 0 {
        return one;
    }
    PfnRun::try_new(first, 1u64 << (9 * u32::from(level))).unwrap_or(one)
}

/// Stores `to` into a claimed entry when dropped, unless disarmed: how a
/// claim is given back when the operation fails or a platform callback
/// panics before the operation stores the entry's fate itself.
struct Restore<'t> {
    slot: Slot<'t>,
    to: Entry,
}

impl<'t> Restore<'t> {
    #[inline(always)]
    fn new(slot: Slot<'t>, to: Entry) -> Self {
        Self { slot, to }
    }

    /// The caller stores the entry's fate itself.
    #[inline(always)]
    fn disarm(self) {
        core::mem::forget(self);
    }
}

impl Drop for Restore<'_> {
    #[cold]
    fn drop(&mut self) {
        self.slot.store(self.to);
    }
}

/// Where a removed page's frames went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Removed, written back (and cleared where the erratum requires): the
    /// frames are the caller's again.
    Returned,
    /// Still the TD's: the entry stays blocked in the S-EPT (a later
    /// removal of that GPA resumes from there), or, if the BLOCK itself
    /// failed, mapped as before. Teardown gives the frames back otherwise.
    Kept(TdError),
    /// Out of the S-EPT, but not yet safe to reuse: the write-back failed
    /// or the module named another frame as removed. Teardown gives the
    /// frames back (after its cache write-back) or reports them leaked.
    /// The GPA is free again, unless the TD's list for such frames could
    /// not grow (the global allocator failed): then the TD keeps them in
    /// the GPA's own entry and refuses the GPA ([`TdError::Gpa`]) until
    /// teardown.
    Deferred(TdError),
}

/// One page of a removal batch, and what became of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Where it was mapped.
    pub gpa: Gpa,
    /// Its size.
    pub level: TdxLevel,
    /// Its frames.
    pub run: PfnRun,
    /// Where they went.
    pub outcome: Outcome,
}

/// What a committed [`Zap`] did: every page it had blocked, with its
/// outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "the report says which frames came back"]
pub struct ZapReport {
    /// The pages, in the order they were blocked.
    pub pages: Vec<Removed>,
    /// Why blocking stopped before the end of the range, for
    /// [`Td::unmap_range`]: the pages after that point were not touched.
    pub stopped: Option<TdError>,
}

impl ZapReport {
    /// The runs that came back to the caller.
    pub fn returned(&self) -> impl Iterator<Item = PfnRun> + '_ {
        self.pages
            .iter()
            .filter(|r| r.outcome == Outcome::Returned)
            .map(|r| r.run)
    }

    /// True if every page came back and nothing stopped the batch.
    pub fn is_complete(&self) -> bool {
        self.stopped.is_none() && self.pages.iter().all(|r| r.outcome == Outcome::Returned)
    }

    /// 4 KiB frames returned.
    pub fn frames_returned(&self) -> u64 {
        self.returned().map(PfnRun::count).sum()
    }
}

/// A removal batch: pages blocked one by one (TDH.MEM.RANGE.BLOCK), then
/// removed together by [`commit`](Zap::commit) with one TDH.MEM.TRACK and
/// one kick of the vCPUs. Made by [`Td::zap`].
///
/// Each blocked page's entry is claimed by the batch: other threads that
/// touch its GPA get [`TdError::InProgress`] until the batch is committed
/// or dropped. A batch dropped without `commit` leaves its pages blocked
/// in the S-EPT and with the TD (a later removal of each resumes from the
/// block; teardown gives them back).
///
/// # Examples
///
/// Sixteen 4K pages and a 2M page removed with one TRACK and one kick,
/// then the same for a GPA range with [`Td::unmap_range`]:
///
/// ```
/// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
/// # use tdx_sim::{MachineDesc, Simulator};
/// # const GIB: u64 = 1 << 30;
/// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
/// # let sim = Simulator::new(desc.clone()).unwrap();
/// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
/// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
/// # let mut td = host.build_td(&TdConfig::builder().max_vcpus(1).build().to_params()).unwrap();
/// # let vcpu0 = td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
/// # let td = td.finalize().map_err(|f| f.error).unwrap();
/// use std::cell::Cell;
/// use tdx_api::{FrameAllocator, Placement, td::GuestFrame};
/// use tdx_types::{Gpa, Pfn, Size2M, Size4K};
///
/// let run = sim.alloc_pages(1024, 512, Placement::Anywhere).unwrap();
/// let base = run.first().as_u64();
/// // SAFETY: frames allocated above for this TD, left alone while it has them.
/// let big = unsafe { GuestFrame::<Size2M>::new(Pfn::new(base)) }.unwrap();
/// td.map(Gpa::new(0x40_0000), big).map_err(|f| f.error).unwrap();
/// for i in 0..16 {
///     // SAFETY: as above.
///     let f = unsafe { GuestFrame::<Size4K>::new(Pfn::new(base + 512 + i)) }.unwrap();
///     td.map(Gpa::new(i << 12), f).map_err(|f| f.error).unwrap();
/// }
///
/// let kicks = Cell::new(0);
/// let kick = || kicks.set(kicks.get() + 1); // a VMM IPIs the TD's vCPUs
/// let mut zap = td.zap();
/// for i in 0..8 {
///     zap.block::<Size4K>(Gpa::new(i << 12)).unwrap(); // TDH.MEM.RANGE.BLOCK
/// }
/// zap.block::<Size2M>(Gpa::new(0x40_0000)).unwrap();
/// let report = zap.commit(&kick); // TRACK, kick, REMOVE each
/// assert!(report.is_complete());
/// assert_eq!((report.frames_returned(), kicks.get()), (8 + 512, 1));
///
/// // A private-to-shared conversion of [32 KiB, 64 KiB): the other eight.
/// let report = td.unmap_range(Gpa::new(0x8000), 0x8000, &kick);
/// assert!(report.is_complete());
/// assert_eq!((report.frames_returned(), kicks.get()), (8, 2));
/// assert_eq!(td.private_pages(), 0);
/// ```
#[must_use = "blocked pages stay blocked until the batch is committed"]
pub struct Zap<'t, H: TdHostRef> {
    td: &'t Td<Finalized, H>,
    /// Each blocked page's claimed entry and its page info.
    slots: Vec<(Slot<'t>, PageInfo)>,
    pages: Vec<Removed>,
}

impl<H: TdHostRef> fmt::Debug for Zap<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zap")
            .field("td", &self.td.tdr())
            .field("pages", &self.pages)
            .finish()
    }
}

impl<H: TdHostRef> Drop for Zap<'_, H> {
    fn drop(&mut self) {
        // Not committed: the pages stay blocked and the TD's.
        for ((slot, _), r) in self.slots.drain(..).zip(&self.pages) {
            slot.store(Entry::Leaf(r.run.first(), Hold::Blocked));
        }
    }
}

impl<'t, H: TdHostRef> Zap<'t, H> {
    /// Blocks the `S`-sized page at `gpa` (TDH.MEM.RANGE.BLOCK) for this
    /// batch. A page a failed removal left blocked joins without a new
    /// BLOCK.
    #[doc(alias = "TDH.MEM.RANGE.BLOCK")]
    pub fn block<S: PageSize>(&mut self, gpa: Gpa) -> Result<(), TdError> {
        let info = Td::<Finalized, H>::check_gpa::<S>(gpa)?;
        let slot = self.td.find(gpa, S::LEVEL)?;
        self.block_slot(info, gpa, slot)
    }

    /// Blocks every page mapped in `[start, start + len)` for this batch,
    /// in GPA order, whatever its size. A page that straddles either end
    /// of the range stops it (split it with [`Td::demote`] first), as does
    /// a page another thread is working on or a failed BLOCK: the pages
    /// blocked before stay in the batch, the error is returned.
    pub fn block_range(&mut self, start: Gpa, len: u64) -> Result<(), TdError> {
        let (a, b) = (start.as_u64(), start.as_u64().saturating_add(len));
        // Room for the range's 4K pages up front (at most a 2 MiB range's
        // worth): one allocation instead of a growing list. If it fails,
        // each page asks again.
        let want = usize::try_from(len / 4096).unwrap_or(usize::MAX).min(512);
        let _ = self.slots.try_reserve(want);
        let _ = self.pages.try_reserve(want);
        let td = self.td;
        td.inner.tree.visit_range(a, b, &mut |gpa, level, slot| {
            let size = 1u64 << (12 + 9 * u32::from(level));
            let at = Gpa::new(gpa);
            if gpa < a || gpa + size > b {
                return Err(TdError::Gpa {
                    gpa: at,
                    why: "a page straddles the end of the range; demote it first",
                });
            }
            let info = page_info(gpa, level).ok_or(TdError::Gpa {
                gpa: at,
                why: "not a valid private GPA",
            })?;
            // A split left the entry's word unwritten and another thread
            // holds it (a merge, or the write itself).
            let Some(slot) = slot else {
                return Err(TdError::InProgress(at));
            };
            match slot.load() {
                Entry::Leaf(..) => self.block_slot(info, at, slot),
                Entry::Table(_, Hold::Blocked) => Err(TdError::Gpa {
                    gpa: at,
                    why: "a table in the range is blocked after a failed merge or removal \
                          (remove_table or promote of that table resumes it)",
                }),
                Entry::Table(..) | Entry::Adding => Err(TdError::InProgress(at)),
                // Out of the S-EPT already; its frames wait for teardown.
                Entry::Free | Entry::Parked(..) => Ok(()),
            }
        })
    }

    fn block_slot(&mut self, info: PageInfo, gpa: Gpa, slot: Slot<'t>) -> Result<(), TdError> {
        // Room for a 2 MiB range of 4K pages at once: conversions come in
        // such units.
        // Both lists must have room before the BLOCK: a push after it must
        // not allocate (and so cannot fail).
        let more = self.pages.len().clamp(1, 512);
        let full = |len: usize, cap: usize| len == cap;
        if (full(self.slots.len(), self.slots.capacity()) && self.slots.try_reserve(more).is_err())
            || (full(self.pages.len(), self.pages.capacity())
                && self.pages.try_reserve(more).is_err())
        {
            return Err(TdError::Alloc {
                what: "a removal batch",
                on: Some(Operand::Gpa(gpa)),
            });
        }
        let first = self.td.block_entry(info, gpa, slot)?;
        let level = TdxLevel::from_u8(slot.level).unwrap_or(TdxLevel::L4K);
        self.slots.push((slot, info));
        self.pages.push(Removed {
            gpa,
            level,
            run: run_of(first, slot.level),
            outcome: Outcome::Returned,
        });
        Ok(())
    }

    /// Pages blocked so far.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True if nothing is blocked.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Removes every blocked page: one TDH.MEM.TRACK, one `kick` (the
    /// caller makes every vCPU of the TD leave the guest at least once, so
    /// none runs with a translation from before the block), then for each
    /// page TDH.MEM.PAGE.REMOVE, TDH.PHYMEM.PAGE.WBINVD of every 4 KiB
    /// frame with the TD's HKID, and on platforms with the partial-write
    /// erratum a MOVDIR64B clear. `kick` runs with no lock of the library
    /// held.
    ///
    /// Every page is in the report with its [`Outcome`]. Nothing is
    /// blocked or kicked for an empty batch.
    #[doc(alias = "TDH.MEM.TRACK")]
    #[doc(alias = "TDH.MEM.PAGE.REMOVE")]
    #[doc(alias = "TDH.PHYMEM.PAGE.WBINVD")]
    pub fn commit(mut self, kick: &dyn Fn()) -> ZapReport {
        if self.pages.is_empty() {
            return ZapReport::default();
        }
        // Until an entry's fate is stored, it stays in `slots`: if the kick
        // or a platform callback panics, `Drop` marks what is left blocked.
        let tracked = self.td.track(kick);
        if tracked.is_ok() {
            kick();
        }
        while let Some((slot, info)) = self.slots.pop() {
            let r = &mut self.pages[self.slots.len()];
            r.outcome = match tracked {
                Ok(()) => self.td.remove_entry(info, r.gpa, slot, r.run.first()),
                Err(e) => {
                    slot.store(Entry::Leaf(r.run.first(), Hold::Blocked));
                    Outcome::Kept(e)
                }
            };
        }
        ZapReport {
            pages: core::mem::take(&mut self.pages),
            stopped: None,
        }
    }
}

/// Entry `i` of a node whose entry words are all written: an ordinary
/// node, or a split one whose every entry was written (`map_1g` reuses only
/// such a table, found with `Node::slots`).
fn written(node: &Node, i: usize, level: u8) -> Slot<'_> {
    node.slot(i, level)
        .unwrap_or_else(|| unreachable!("a node with every entry word written"))
}

impl<S: TdState, H: TdHostRef> Td<S, H> {
    /// Walks to the entry of `gpa` at `level`, adding the S-EPT pages
    /// above it that are missing (TDH.MEM.SEPT.ADD), and claims the entry
    /// (free → adding) for the caller, who then stores what it put there.
    pub(super) fn claim(&self, gpa: Gpa, level: TdxLevel) -> Result<Slot<'_>, TdError> {
        let (g, l) = (gpa.as_u64(), level.as_u8());
        // A removal is waiting for the S-EPT tree lock that this mapping
        // would take shared: step aside (see `retry_tree_exclusive`).
        if self.inner.zaps_waiting.load(Ordering::Relaxed) != 0 {
            return Err(TdError::InProgress(gpa));
        }
        for _ in 0..WALK_RESTARTS {
            match self.inner.tree.walk(g, l) {
                Ok(slot) => match slot.swap_if(Entry::Free, Entry::Adding) {
                    Ok(()) => return Ok(slot),
                    Err(Entry::Free) => {}
                    Err(Entry::Leaf(_, Hold::Idle | Hold::Blocked)) => {
                        return Err(self.occupied(gpa));
                    }
                    Err(Entry::Table(_, Hold::Idle | Hold::Blocked)) => {
                        let at = Gpa::new(g & !(level.bytes() - 1));
                        let by = Occupant::Table { at, size: level };
                        return Err(TdError::Occupied { gpa, by });
                    }
                    Err(Entry::Parked(..)) => return Err(parked(gpa)),
                    Err(_) => return Err(TdError::InProgress(gpa)),
                },
                Err(Stop::Missing(slot)) => {
                    if slot.swap_if(Entry::Free, Entry::Adding).is_ok() {
                        self.add_table(g, slot)?;
                    }
                }
                Err(Stop::Busy) => return Err(TdError::InProgress(gpa)),
                Err(Stop::Leaf) => return Err(self.occupied(gpa)),
                Err(Stop::Blocked) => {
                    return Err(TdError::Gpa {
                        gpa,
                        why: "the S-EPT table above it is blocked",
                    });
                }
            }
        }
        Err(TdError::InProgress(gpa))
    }

    /// The error for a GPA that a page covers (found by `claim`); out of
    /// line, off the mapping path. If the page went away meanwhile, the
    /// entry is changing: [`TdError::InProgress`].
    #[cold]
    #[inline(never)]
    fn occupied(&self, gpa: Gpa) -> TdError {
        match self.mapping(gpa) {
            // Not a contention: it stays until teardown.
            Some(m) if m.state == super::MappingState::Parked => parked(gpa),
            Some(m) => TdError::Occupied {
                gpa,
                by: Occupant::Page {
                    at: m.gpa,
                    size: m.size,
                },
            },
            None => TdError::InProgress(gpa),
        }
    }

    /// Adds the S-EPT page for the claimed table entry `slot` on the way to
    /// `gpa` (TDH.MEM.SEPT.ADD at the entry's level) and links its node.
    /// On failure the entry is free again and nothing is left behind.
    fn add_table(&self, gpa: u64, slot: Slot<'_>) -> Result<(), TdError> {
        let level = slot.level;
        let base = gpa & !((1u64 << (12 + 9 * u32::from(level))) - 1);
        let fail = |e| {
            slot.store(Entry::Free);
            Err(e)
        };
        let Some(info) = page_info(base, level) else {
            return fail(TdError::Gpa {
                gpa: Gpa::new(gpa),
                why: "not a valid GPA for the S-EPT",
            });
        };
        match self.new_table(info, Gpa::new(gpa)) {
            Ok(node) => {
                slot.store(Entry::Table(node, Hold::Idle));
                Ok(())
            }
            Err(e) => fail(e),
        }
    }

    /// A fresh S-EPT page added under the claimed entry `info` (of `gpa`)
    /// with TDH.MEM.SEPT.ADD, and its node, not yet published. On failure
    /// the page is back with the platform and nothing is left behind.
    fn new_table(&self, info: PageInfo, gpa: Gpa) -> Result<NonNull<Node>, TdError> {
        let page = self.fresh_page(&self.inner.map_policy)?;
        let Some(node) = Node::alloc(Some(page)) else {
            self.free_refused(page);
            return Err(TdError::Alloc {
                what: "a node of the TD's S-EPT record",
                on: Some(Operand::Gpa(gpa)),
            });
        };
        let (b, tdr) = (self.b(), self.tdr());
        let on = Operand::Gpa(gpa);
        let r = retry(
            self.p(),
            &self.inner.map_policy,
            Leaf::MEM_SEPT_ADD.v0(),
            on,
            || {
                // SAFETY: a fresh, flushed page from the platform; on success
                // the module owns it and the TD keeps it in the node; on
                // failure the module did not take it (we do not set
                // allow_existing).
                unsafe { leaf::tdh_mem_sept_add(b, info, TdrAndFlags::with_tdr(tdr, false), page) }
                    .status
            },
        );
        if let Err(e) = r {
            // SAFETY: never published; nobody else saw it.
            unsafe { Node::free(node) };
            self.free_refused(page);
            return Err(e);
        }
        Ok(node)
    }

    /// The entry of `gpa` at `level`, for an operation on what is there.
    fn find(&self, gpa: Gpa, level: TdxLevel) -> Result<Slot<'_>, TdError> {
        match self.inner.tree.walk(gpa.as_u64(), level.as_u8()) {
            Ok(slot) => Ok(slot),
            Err(Stop::Busy) => Err(TdError::InProgress(gpa)),
            Err(Stop::Blocked) => Err(TdError::Gpa {
                gpa,
                why: "a table above it is blocked after a failed merge or removal \
                      (remove_table or promote of that table resumes it)",
            }),
            Err(Stop::Missing(_) | Stop::Leaf) => Err(TdError::NotMapped(gpa)),
        }
    }
}

impl<S: MayAug, H: TdHostRef> Td<S, H> {
    /// Maps `frame` at `gpa` as pending private memory (TDH.MEM.SEPT.ADD as
    /// needed, CLFLUSH, TDH.MEM.PAGE.AUG at the level of `Sz`). The guest
    /// accepts it with TDG.MEM.PAGE.ACCEPT. Available once the TD is
    /// initialized ([`MayAug`]): module 1.5 maps before finalization too.
    ///
    /// `Sz` is 4K or 2M: the module maps nothing larger with AUG (a 1G page
    /// is built by promotion: [`Td::map_1g`]).
    ///
    /// Callable from many threads at once. On error the frame comes back
    /// (the module did not take it): [`TdError::InProgress`] if another
    /// thread is changing that GPA or a table above it,
    /// [`TdError::Busy`] if the module's locks stayed busy past the TD's
    /// [`map_policy`](Td::map_policy); both mean "try again".
    #[doc(alias = "TDH.MEM.PAGE.AUG")]
    pub fn map<Sz: AugPageSize>(
        &self,
        gpa: Gpa,
        frame: GuestFrame<Sz>,
    ) -> Result<(), TdFailure<GuestFrame<Sz>>> {
        let back = |error, frame| Err(TdFailure::new(error, frame));
        let info = match Self::check_gpa::<Sz>(gpa) {
            Ok(i) => i,
            Err(e) => return back(e, frame),
        };
        let slot = match self.claim(gpa, Sz::LEVEL) {
            Ok(s) => s,
            Err(e) => return back(e, frame),
        };
        let (b, p, tdr, first) = (self.b(), self.p(), self.tdr(), frame.pfn());
        // Dynamic PAMT: a 4K page's range needs a pair, a 2 MiB page's range
        // must have none.
        let pair = if Sz::LEVEL == TdxLevel::L4K {
            self.host().pair_get(first, &self.inner.map_policy)
        } else {
            self.host().pair_clear(first, &self.inner.map_policy)
        };
        if let Err(e) = pair {
            slot.store(Entry::Free);
            return back(e, frame);
        }
        for f in frame.range().iter() {
            p.clflush_page(f);
        }
        let r = retry(
            p,
            &self.inner.map_policy,
            Leaf::MEM_PAGE_AUG.v0(),
            Operand::Gpa(gpa),
            || {
                // SAFETY: the frames are guest frames the caller promised to
                // leave alone (GuestFrame::new), flushed above; on success
                // the module owns them and the TD records them in its tree.
                unsafe { leaf::tdh_mem_page_aug(b, info, tdr, first) }.status
            },
        );
        if let Err(e) = r {
            if Sz::LEVEL == TdxLevel::L4K {
                self.host().pair_put(first);
            }
            slot.store(Entry::Free);
            return back(e, frame);
        }
        slot.store(Entry::Leaf(frame.into_range().first(), Hold::Idle));
        Ok(())
    }
}

/// What comes back from a failed [`Td::map_1g`].
#[derive(Debug)]
pub enum Map1gLeft {
    /// Nothing stays with the TD: the whole frame comes back.
    Whole(GuestFrame<Size1G>),
    /// Some 2 MiB parts stay mapped in the TD (their removal failed too);
    /// the others come back.
    Parts(Map1gParts),
    /// All 512 parts stay mapped as 2 MiB pages (PROMOTE failed): unmap
    /// them, promote again (which resumes a merge whose entry stayed
    /// blocked), or tear down.
    Mapped,
    /// The 1 GiB page is mapped (the merge stood); the error concerns the
    /// S-EPT page PROMOTE freed (the module named another page: it is kept
    /// for teardown to reclaim).
    Merged,
}

/// A 1 GiB frame split by a failed [`Td::map_1g`]: which 2 MiB parts stay
/// mapped in the TD, and the others, which come back.
#[derive(Debug)]
pub struct Map1gParts {
    gpa: Gpa,
    range: PfnRange<Size1G>,
    /// Bit `i`: part `i` stays mapped.
    kept: [u64; 8],
}

impl Map1gParts {
    fn is_kept(&self, i: usize) -> bool {
        self.kept[i / 64] & (1 << (i % 64)) != 0
    }

    /// The GPAs of the parts that stay with the TD: mapped, left blocked by
    /// a failed removal, or removed but waiting for teardown's write-back
    /// (teardown returns or reports them).
    pub fn kept(&self) -> impl Iterator<Item = Gpa> + '_ {
        (0..512)
            .filter(|&i| self.is_kept(i))
            .map(|i| Gpa::new(self.gpa.as_u64() + i as u64 * Size2M::SIZE))
    }

    /// The parts that came back, as tokens.
    pub fn into_returned(self) -> impl Iterator<Item = GuestFrame<Size2M>> {
        let parts = self.range.split::<Size2M>();
        parts
            .into_iter()
            .flatten()
            .enumerate()
            .filter(move |&(i, _)| !self.is_kept(i))
            .map(|(_, r)| GuestFrame::returned(r))
    }
}

/// A failed [`Td::map_1g`]: the error, and where the frame is
/// ([`Map1gLeft`] in `returned`).
pub type Map1gFailure = crate::Failed<Map1gLeft, TdError>;

impl<H: TdHostRef> Td<Finalized, H> {
    /// Maps a 1 GiB page: TDH.MEM.SEPT.ADD of the S-EPT page under the 1 GiB
    /// entry, TDH.MEM.PAGE.AUG of its 512 2 MiB parts, then BLOCK, TRACK,
    /// `kick`, TDH.MEM.PAGE.PROMOTE (the S-EPT page it frees goes back to
    /// the platform). The module's PAGE.AUG maps 4K and 2M pages only.
    ///
    /// The 1 GiB entry is claimed for the whole call, so no other thread
    /// maps, removes or merges anything under it meanwhile (they get
    /// [`TdError::InProgress`]). It must be free, or an empty table (as a
    /// failed `map_1g` leaves it); a table that still maps something is
    /// refused.
    ///
    /// If an AUG fails, the parts already mapped are removed again in one
    /// batch (one TRACK, one kick) and every frame is accounted for in
    /// `returned` ([`Map1gLeft`]): the whole frame back, or (if a removal failed
    /// too) the parts that stay with the TD and the parts that came back.
    /// The S-EPT page under the entry stays (an empty table, which the next
    /// `map_1g` there reuses and `remove_table::<Size1G>` frees). If the
    /// PROMOTE fails, the 512 parts stay mapped as 2M pages.
    #[doc(alias = "TDH.MEM.PAGE.AUG")]
    #[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
    #[allow(
        clippy::result_large_err,
        reason = "a rare failure that must say where each of 512 parts is, without allocating"
    )]
    pub fn map_1g(
        &self,
        gpa: Gpa,
        frame: GuestFrame<Size1G>,
        kick: &dyn Fn(),
    ) -> Result<(), Map1gFailure> {
        let whole = |error, frame| Err(Map1gFailure::new(error, Map1gLeft::Whole(frame)));
        let info = match Self::check_gpa::<Size1G>(gpa) {
            Ok(i) => i,
            Err(e) => return whole(e, frame),
        };
        let Some(table_info) = page_info(gpa.as_u64(), TdxLevel::L1G.as_u8()) else {
            return whole(
                TdError::Gpa {
                    gpa,
                    why: "not a valid private GPA",
                },
                frame,
            );
        };
        // The 1 GiB entry, claimed until this call ends: free → adding, with
        // a new S-EPT page under it, or an empty table (a failed map_1g or
        // removals left it) → busy, with each entry below reserved.
        let (slot, node, reused) = match self.claim_1g(gpa, table_info) {
            Ok(c) => c,
            Err(e) => return whole(e, frame),
        };
        // SAFETY: a claimed table's node stays alive until this call
        // publishes or retires it; a new one is ours alone until then.
        let parts_node = unsafe { node.as_ref() };
        // Entries below that no part took: free again (a reused table's
        // were reserved).
        let release_rest = |from: usize| {
            if reused {
                for (_, child) in parts_node
                    .slots(TdxLevel::L2M.as_u8())
                    .into_iter()
                    .flatten()
                    .skip(from)
                {
                    child.store(Entry::Free);
                }
            }
        };
        let range = frame.into_range();
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        for i in 0..512u64 {
            let at = gpa.as_u64() + i * Size2M::SIZE;
            let first = Pfn::new(range.first().as_u64() + i * Size2M::FRAMES);
            let Some(part_info) = page_info(at, TdxLevel::L2M.as_u8()) else {
                unreachable!("a 1 GiB-aligned private GPA has valid 2M parts")
            };
            for f in first.as_u64()..first.as_u64() + Size2M::FRAMES {
                p.clflush_page(Pfn::new(f));
            }
            let on = Operand::Gpa(Gpa::new(at));
            // Dynamic PAMT: a 2 MiB part's range must have no pair.
            let r = self
                .host()
                .pair_clear(first, &self.inner.map_policy)
                .and_then(|()| {
                    retry(
                        p,
                        &self.inner.map_policy,
                        Leaf::MEM_PAGE_AUG.v0(),
                        on,
                        || {
                            // SAFETY: the part's frames belong to the caller's
                            // guest frame (GuestFrame::new), flushed above; on
                            // success the module owns them and the TD records
                            // them in the node.
                            unsafe { leaf::tdh_mem_page_aug(b, part_info, tdr, first) }.status
                        },
                    )
                });
            if let Err(error) = r {
                let left = self.roll_back_1g(gpa, range, parts_node, i as usize, kick);
                release_rest(i as usize);
                slot.store(Entry::Table(node, Hold::Idle));
                return Err(Map1gFailure::new(error, left));
            }
            written(parts_node, i as usize, TdxLevel::L2M.as_u8())
                .store(Entry::Leaf(first, Hold::Idle));
        }
        let freed = self.blocked_sept_free(
            gpa,
            TdxLevel::L1G.as_u8(),
            false,
            kick,
            Leaf::MEM_PAGE_PROMOTE.v0(),
            &|b, tdr| {
                // SAFETY: PROMOTE gives the S-EPT page back to the host; we
                // take it over only after the flushes the ABI requires.
                unsafe { leaf::tdh_mem_page_promote(b, info, tdr) }
            },
        );
        match freed {
            Ok(freed) => {
                slot.store(Entry::Leaf(range.first(), Hold::Idle));
                self.take_freed_sept(node, freed, Leaf::MEM_PAGE_PROMOTE.v0(), gpa)
                    .map_err(|error| Map1gFailure::new(error, Map1gLeft::Merged))
            }
            Err((error, blocked)) => {
                let held = if blocked { Hold::Blocked } else { Hold::Idle };
                slot.store(Entry::Table(node, held));
                Err(Map1gFailure::new(error, Map1gLeft::Mapped))
            }
        }
    }

    /// Claims the 1 GiB entry of `gpa` for [`map_1g`](Td::map_1g): a free
    /// entry gets a new S-EPT page and node (`false`); an idle table whose
    /// 512 entries are all free is reused, its entries reserved (`true`).
    fn claim_1g(
        &self,
        gpa: Gpa,
        info: PageInfo,
    ) -> Result<(Slot<'_>, NonNull<Node>, bool), TdError> {
        let level = TdxLevel::L1G.as_u8();
        if let Ok(slot) = self.inner.tree.walk(gpa.as_u64(), level)
            && let Entry::Table(_, Hold::Idle) = slot.load()
        {
            let (node, _) = self.claim_table(gpa, slot)?;
            // SAFETY: claimed: alive until this call publishes it again.
            let children = unsafe { node.as_ref() };
            let mut reserved = 0;
            // `None`: a split node with parts still unwritten, so mapped.
            for (_, child) in children.slots(level - 1).into_iter().flatten() {
                if child.swap_if(Entry::Free, Entry::Adding).is_err() {
                    break;
                }
                reserved += 1;
            }
            if reserved < 512 {
                for (_, child) in children
                    .slots(level - 1)
                    .into_iter()
                    .flatten()
                    .take(reserved)
                {
                    child.store(Entry::Free);
                }
                slot.store(Entry::Table(node, Hold::Idle));
                // A child that was not free: a page, a table, or an
                // entry another thread is changing.
                let by = Occupant::Table {
                    at: gpa,
                    size: TdxLevel::L1G,
                };
                return Err(TdError::Occupied { gpa, by });
            }
            return Ok((slot, node, true));
        }
        let slot = self.claim(gpa, TdxLevel::L1G)?;
        match self.new_table(info, gpa) {
            Ok(node) => Ok((slot, node, false)),
            Err(e) => {
                slot.store(Entry::Free);
                Err(e)
            }
        }
    }

    /// Takes the first `n` 2M parts of a failed `map_1g` back in one batch
    /// (BLOCK each, one TRACK, one kick, REMOVE each). The parts are in the
    /// private `node` (nobody else reaches them: the 1 GiB entry is
    /// claimed); those whose removal fails stay in it.
    fn roll_back_1g(
        &self,
        gpa: Gpa,
        range: PfnRange<Size1G>,
        node: &Node,
        n: usize,
        kick: &dyn Fn(),
    ) -> Map1gLeft {
        let level = TdxLevel::L2M.as_u8();
        let mut kept = [0u64; 8];
        let mut blocked = [0u64; 8];
        let mark = |set: &mut [u64; 8], i: usize| set[i / 64] |= 1 << (i % 64);
        let has = |set: &[u64; 8], i: usize| set[i / 64] & (1 << (i % 64)) != 0;
        let part = |i: usize| {
            let at = gpa.as_u64() + i as u64 * Size2M::SIZE;
            let first = Pfn::new(range.first().as_u64() + i as u64 * Size2M::FRAMES);
            (Gpa::new(at), page_info(at, level), first)
        };
        for i in 0..n {
            let (at, info, first) = part(i);
            let slot = written(node, i, level);
            match info.map(|info| self.block(info, at)) {
                Some(Ok(())) => {
                    slot.store(Entry::Leaf(first, Hold::Busy));
                    mark(&mut blocked, i);
                }
                _ => mark(&mut kept, i),
            }
        }
        if blocked.iter().any(|&w| w != 0) {
            let tracked = self.track(kick);
            if tracked.is_ok() {
                kick();
            }
            for i in (0..n).filter(|&i| has(&blocked, i)) {
                let (at, info, first) = part(i);
                let slot = written(node, i, level);
                let outcome = match (tracked, info) {
                    (Ok(()), Some(info)) => self.remove_entry(info, at, slot, first),
                    (Err(e), _) => {
                        slot.store(Entry::Leaf(first, Hold::Blocked));
                        Outcome::Kept(e)
                    }
                    (Ok(()), None) => {
                        slot.store(Entry::Leaf(first, Hold::Blocked));
                        Outcome::Kept(TdError::NotMapped(at))
                    }
                };
                if outcome != Outcome::Returned {
                    // Kept or deferred: the TD's until a removal or
                    // teardown returns or reports it.
                    mark(&mut kept, i);
                }
            }
        }
        if kept.iter().all(|&w| w == 0) {
            Map1gLeft::Whole(GuestFrame::returned(range))
        } else {
            Map1gLeft::Parts(Map1gParts { gpa, range, kept })
        }
    }

    /// A removal batch; see [`Zap`].
    pub fn zap(&self) -> Zap<'_, H> {
        Zap {
            td: self,
            slots: Vec::new(),
            pages: Vec::new(),
        }
    }

    /// Removes the `S`-sized private page at `gpa` from the running TD and
    /// gives its frames back: TDH.MEM.RANGE.BLOCK, TDH.MEM.TRACK, `kick`
    /// (the caller makes every vCPU leave the guest, so none runs with the
    /// old TLB epoch), TDH.MEM.PAGE.REMOVE, TDH.PHYMEM.PAGE.WBINVD of every
    /// 4 KiB frame with the TD's HKID, and on platforms with the
    /// partial-write erratum a MOVDIR64B clear. A batch of one: to remove
    /// many pages with one TRACK and one kick, use [`zap`](Td::zap) or
    /// [`unmap_range`](Td::unmap_range).
    ///
    /// On error the page stays with the TD (teardown gives it back), or, if
    /// the removal itself succeeded, waits for teardown (see
    /// [`Outcome::Deferred`]).
    #[doc(alias = "TDH.MEM.RANGE.BLOCK")]
    #[doc(alias = "TDH.MEM.TRACK")]
    #[doc(alias = "TDH.MEM.PAGE.REMOVE")]
    #[doc(alias = "TDH.PHYMEM.PAGE.WBINVD")]
    pub fn unmap<S: PageSize>(&self, gpa: Gpa, kick: &dyn Fn()) -> Result<GuestFrame<S>, TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let slot = self.find(gpa, S::LEVEL)?;
        let first = self.block_entry(info, gpa, slot)?;
        // Blocked now: if TRACK fails, or the kick or a callback panics, the
        // entry stays blocked and the TD's, for a later removal.
        let undo = Restore::new(slot, Entry::Leaf(first, Hold::Blocked));
        self.track(kick)?;
        kick();
        undo.disarm();
        match self.remove_entry(info, gpa, slot, first) {
            Outcome::Returned => Ok(GuestFrame::returned(PfnRange::new(first))),
            Outcome::Kept(e) | Outcome::Deferred(e) => Err(e),
        }
    }

    /// Removes every page mapped in `[start, start + len)` (any sizes) in
    /// one batch: BLOCK each, one TRACK, one `kick`, REMOVE each. The
    /// private-to-shared conversion of a range, for any length, with one
    /// kick. A huge page that straddles either end stops the blocking
    /// ([`ZapReport::stopped`]; split it with [`demote`](Td::demote) first);
    /// the pages blocked before that are still removed.
    pub fn unmap_range(&self, start: Gpa, len: u64, kick: &dyn Fn()) -> ZapReport {
        let mut zap = self.zap();
        let stopped = zap.block_range(start, len).err();
        let mut report = zap.commit(kick);
        report.stopped = stopped;
        report
    }

    /// Claims the leaf at `slot` for a removal and blocks it
    /// (TDH.MEM.RANGE.BLOCK; not again if a failed removal left it
    /// blocked). Returns its first frame; the entry is busy until the
    /// caller stores its fate.
    #[inline]
    fn block_entry(&self, info: PageInfo, gpa: Gpa, slot: Slot<'_>) -> Result<Pfn, TdError> {
        let (first, blocked) = match slot.claim_leaf() {
            Ok(claimed) => claimed,
            Err(Entry::Free | Entry::Table(_, Hold::Idle | Hold::Blocked)) => {
                return Err(TdError::NotMapped(gpa));
            }
            Err(Entry::Parked(..)) => return Err(parked(gpa)),
            // Held by another thread (or changed under us: the same).
            Err(_) => return Err(TdError::InProgress(gpa)),
        };
        if !blocked {
            let (b, tdr) = (self.b(), self.tdr());
            // SAFETY: BLOCK moves no page between host and module.
            let s = unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status;
            if s.is_error() {
                self.block_after(info, gpa, slot, first, s)?;
            }
        }
        Ok(first)
    }

    /// BLOCK's first attempt failed: its retries, under the TD's policy.
    /// They may call the platform (yields), so a panic there gives the
    /// claim back (the last attempt failed: the entry is not blocked).
    #[cold]
    #[inline(never)]
    fn block_after(
        &self,
        info: PageInfo,
        gpa: Gpa,
        slot: Slot<'_>,
        first: Pfn,
        status: TdxStatus,
    ) -> Result<(), TdError> {
        let undo = Restore::new(slot, Entry::Leaf(first, Hold::Idle));
        let (b, tdr) = (self.b(), self.tdr());
        self.retry_tree_exclusive_after(
            Leaf::MEM_RANGE_BLOCK.v0(),
            Operand::Gpa(gpa),
            status,
            &mut || {
                // SAFETY: BLOCK moves no page between host and module.
                unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status
            },
        )?;
        undo.disarm();
        Ok(())
    }

    /// TDH.MEM.RANGE.BLOCK of the entry `info` (of `gpa`).
    fn block(&self, info: PageInfo, gpa: Gpa) -> Result<(), TdError> {
        let (b, tdr) = (self.b(), self.tdr());
        self.retry_tree_exclusive(Leaf::MEM_RANGE_BLOCK.v0(), Operand::Gpa(gpa), &mut || {
            // SAFETY: BLOCK moves no page between host and module.
            unsafe { leaf::tdh_mem_range_block(b, info, tdr) }.status
        })
        .map(|_| ())
    }

    /// Runs a leaf that takes the S-EPT tree lock exclusively (BLOCK,
    /// UNBLOCK, SEPT.REMOVE) under the TD's retry policy. Every mapping
    /// (PAGE.AUG, SEPT.ADD) takes that lock shared, so under a stream of
    /// faults the exclusive leaf could find it held at every try; while it
    /// meets the tree held (BUSY|SEPT_TREE), new mappings on this TD step
    /// aside with [`TdError::InProgress`] instead of issuing their leaf,
    /// and the readers drain. KVM gets the same effect by taking its
    /// `mmu_lock` for write around BLOCK/TRACK/REMOVE, which stops its
    /// fault path; here nothing waits.
    #[inline(always)]
    fn retry_tree_exclusive(
        &self,
        leaf: LeafVersion,
        on: Operand,
        call: &mut dyn FnMut() -> TdxStatus,
    ) -> Result<TdxStatus, TdError> {
        let s = call();
        if !s.is_error() {
            return Ok(s);
        }
        self.retry_tree_exclusive_after(leaf, on, s, call)
    }

    #[cold]
    #[inline(never)]
    fn retry_tree_exclusive_after(
        &self,
        leaf: LeafVersion,
        on: Operand,
        first: TdxStatus,
        call: &mut dyn FnMut() -> TdxStatus,
    ) -> Result<TdxStatus, TdError> {
        /// Counts this removal among those waiting for the tree until it
        /// is dropped, even by a panic in a platform callback.
        struct Waiting<'a>(&'a core::sync::atomic::AtomicU32, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        let mut first = Some(first);
        let mut waiting = Waiting(&self.inner.zaps_waiting, false);
        self.retry(leaf, on, || {
            let s = first.take().unwrap_or_else(&mut *call);
            if !waiting.1
                && s.kind() == Some(tdx_types::ErrorKind::Busy)
                && s.operand() == Some(tdx_types::OperandId::SEPT_TREE)
            {
                waiting.1 = true;
                waiting.0.fetch_add(1, Ordering::Relaxed);
            }
            s
        })
    }

    /// TDH.MEM.TRACK. `TDX_PREVIOUS_TLB_EPOCH_BUSY` means vCPUs that
    /// entered the guest before the last TRACK are still there (that
    /// TRACK's kick did not make them leave, or a removal stopped after it):
    /// no number of retries changes that, a kick does. So the first such
    /// answer calls `kick` before the retries.
    #[inline]
    fn track(&self, kick: &dyn Fn()) -> Result<(), TdError> {
        let (b, tdr) = (self.b(), self.tdr());
        // SAFETY: TRACK moves no page.
        let first = unsafe { leaf::tdh_mem_track(b, tdr) };
        if !first.is_error() {
            return Ok(());
        }
        self.track_after(first, kick)
    }

    /// TRACK's first attempt failed: the kick if vCPUs of the last epoch
    /// are still in the guest, then the retries, which judge the first
    /// answer too (a hard failure stays one).
    #[cold]
    #[inline(never)]
    fn track_after(&self, first: TdxStatus, kick: &dyn Fn()) -> Result<(), TdError> {
        if super::same_code(first, TdxStatus::PREVIOUS_TLB_EPOCH_BUSY) {
            kick();
        }
        let (b, tdr) = (self.b(), self.tdr());
        let mut first = Some(first);
        self.retry(Leaf::MEM_TRACK.v0(), Operand::Tdr, || {
            first.take().unwrap_or_else(|| {
                // SAFETY: TRACK moves no page.
                unsafe { leaf::tdh_mem_track(b, tdr) }
            })
        })
        .map(|_| ())
    }

    /// TDH.MEM.RANGE.UNBLOCK after a split or merge that failed once the
    /// entry was blocked and tracked. True if the entry is usable again.
    fn unblock(&self, gpa: Gpa, level: u8) -> bool {
        let Some(info) = page_info(gpa.as_u64(), level) else {
            return false;
        };
        let (b, tdr) = (self.b(), self.tdr());
        self.retry_tree_exclusive(Leaf::MEM_RANGE_UNBLOCK.v0(), Operand::Gpa(gpa), &mut || {
            // SAFETY: UNBLOCK moves no page between host and module.
            unsafe { leaf::tdh_mem_range_unblock(b, info, tdr) }.status
        })
        .is_ok()
    }

    /// TDH.MEM.PAGE.REMOVE of the blocked, tracked leaf at `slot` (held
    /// busy by the caller), then the write-back and clear of its frames;
    /// stores the entry's fate.
    #[inline]
    fn remove_entry(&self, info: PageInfo, gpa: Gpa, slot: Slot<'_>, first: Pfn) -> Outcome {
        let (b, tdr) = (self.b(), self.tdr());
        // SAFETY: REMOVE gives the page back to the host; we take it over
        // below only after the flushes the ABI requires.
        let c = unsafe { leaf::tdh_mem_page_remove(b, info, tdr) };
        let removed = if c.status.is_error() {
            match self.remove_after(info, gpa, c.status) {
                Ok(removed) => removed,
                Err(e) => {
                    slot.store(Entry::Leaf(first, Hold::Blocked));
                    return Outcome::Kept(e);
                }
            }
        } else {
            c.out.removed()
        };
        // The module's entry is free now; ours says so once the frames are
        // accounted for (returned, or on a list teardown reads): a panic in
        // a platform callback before that leaves the entry busy, and
        // teardown reclaims the frames or reports them.
        let run = run_of(first, slot.level);
        if removed.is_some_and(|r| r != first) {
            return self.removed_other(run, gpa, slot);
        }
        let hkid = self.hkid();
        // A 4K page (the common case) is one write-back.
        let frames = if slot.level == 0 {
            first.as_u64()..first.as_u64() + 1
        } else {
            first.as_u64()..run.end()
        };
        for f in frames {
            if let Err(e) = self
                .host()
                .page_wbinvd(Pfn::new(f), hkid, &self.inner.policy)
            {
                if slot.level == 0 {
                    self.host().pair_put(first);
                }
                return self.not_written_back(run, e, slot);
            }
        }
        // The module is done with the page (PAGE.WBINVD reads its PAMT
        // entry, which lives in the range's pair): its pair reference goes.
        if slot.level == 0 {
            self.host().pair_put(first);
        }
        if self.host().errata().tdx_pw_mce {
            // SAFETY: removed and written back above; the TD held the
            // frames for the caller, who owns them.
            if let Err(e) = unsafe { self.p().movdir64b_clear(run) } {
                // Not host memory until cleared: teardown tries again and
                // leaks them with the reason if it cannot.
                return self.not_written_back(run, TdError::Platform(e), slot);
            }
        }
        slot.store(Entry::Free);
        Outcome::Returned
    }

    /// REMOVE's first attempt answered `first`: the retries, under the
    /// TD's policy; the frame the module says it removed.
    #[cold]
    #[inline(never)]
    fn remove_after(
        &self,
        info: PageInfo,
        gpa: Gpa,
        first: TdxStatus,
    ) -> Result<Option<Pfn>, TdError> {
        let (b, tdr) = (self.b(), self.tdr());
        let mut first = Some(first);
        retry_out(
            self.p(),
            &self.inner.policy,
            Leaf::MEM_PAGE_REMOVE.v0(),
            Operand::Gpa(gpa),
            || match first.take() {
                // The outputs of a failed call are not read.
                Some(s) => (s, None),
                None => {
                    // SAFETY: as in `remove_entry`.
                    let c = unsafe { leaf::tdh_mem_page_remove(b, info, tdr) };
                    (c.status, c.out.removed())
                }
            },
        )
        .map(|(_, removed)| removed)
    }

    /// The module removed a frame we did not map at `gpa`: ours may still
    /// be mapped; teardown reclaims it rather than trust either answer.
    /// Stores the fate of the page's entry (`slot`, held by the caller).
    #[cold]
    #[inline(never)]
    fn removed_other(&self, run: PfnRun, gpa: Gpa, slot: Slot<'_>) -> Outcome {
        slot.store(self.park(&self.inner.in_doubt, run, Park::InDoubt));
        Outcome::Deferred(TdError::Protocol {
            leaf: Leaf::MEM_PAGE_REMOVE.v0(),
            what: "removed a frame other than the one mapped at the GPA",
            gpa: Some(gpa),
        })
    }

    /// Removed frames whose write-back failed: lines of the TD's key may
    /// remain, so they wait for the teardown's CACHE.WB on every package.
    /// Stores the fate of the page's entry (`slot`, held by the caller).
    #[cold]
    #[inline(never)]
    fn not_written_back(&self, run: PfnRun, e: TdError, slot: Slot<'_>) -> Outcome {
        slot.store(self.park(&self.inner.unflushed, run, Park::Unflushed));
        Outcome::Deferred(e)
    }

    /// Frames out of the S-EPT that wait for teardown go on the TD's
    /// `list` (the GPA is free again: `Entry::Free`). If the list cannot
    /// grow (the allocator failed), they stay in the page's own entry,
    /// parked: nothing is allocated and nothing lost, and the GPA stays
    /// taken until teardown, which finds them there.
    fn park(&self, list: &super::Shared<(PfnRun, PageRole)>, run: PfnRun, why: Park) -> Entry {
        match list.try_push((run, PageRole::Guest)) {
            Ok(()) => Entry::Free,
            Err(_) => Entry::Parked(run.first(), why),
        }
    }

    /// BLOCK, TRACK and `kick` for the entry of `gpa` at `level`, for a
    /// split or merge. On error, says whether the entry is still blocked.
    fn block_track(&self, gpa: Gpa, level: u8, kick: &dyn Fn()) -> Result<(), (TdError, bool)> {
        let info = page_info(gpa.as_u64(), level).ok_or((
            TdError::Gpa {
                gpa,
                why: "not a valid private GPA",
            },
            false,
        ))?;
        self.block(info, gpa).map_err(|e| (e, false))?;
        if let Err(e) = self.track(kick) {
            // The entry is blocked but the block is not tracked: try once
            // more to track it, kick, and unblock, so it stays usable.
            let blocked = !(self.track(kick).is_ok() && {
                kick();
                self.unblock(gpa, level)
            });
            return Err((e, blocked));
        }
        kick();
        Ok(())
    }

    /// Splits the `S`-sized page at `gpa` into 512 pages of the next size
    /// down (BLOCK, TRACK, `kick`, TDH.MEM.PAGE.DEMOTE with a new S-EPT page
    /// from the platform), so that part of it can be unmapped.
    ///
    /// If DEMOTE fails after BLOCK, the range is unblocked again and stays
    /// mapped as it was. Only if that unblock fails too (or the TRACK after
    /// the BLOCK met contention) does it stay blocked: the guest cannot
    /// use it, and the next `demote` of it resumes from the block (TRACK,
    /// kick, DEMOTE), as a removal would.
    #[doc(alias = "TDH.MEM.PAGE.DEMOTE")]
    pub fn demote<S: HugePageSize>(&self, gpa: Gpa, kick: &dyn Fn()) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let slot = self.find(gpa, S::LEVEL)?;
        // A page left blocked (a demote whose TRACK met contention, or a
        // failed removal) is split from where it stopped: DEMOTE takes a
        // blocked entry, so only TRACK and the kick are done again.
        let (first, was_blocked) = match slot.load() {
            Entry::Leaf(first, Hold::Idle) => (first, false),
            Entry::Leaf(first, Hold::Blocked) => (first, true),
            Entry::Free | Entry::Table(_, Hold::Idle | Hold::Blocked) => {
                return Err(TdError::NotMapped(gpa));
            }
            Entry::Parked(..) => return Err(parked(gpa)),
            _ => return Err(TdError::InProgress(gpa)),
        };
        let hold = if was_blocked {
            Hold::Blocked
        } else {
            Hold::Idle
        };
        let idle = Entry::Leaf(first, hold);
        slot.swap_if(idle, Entry::Leaf(first, Hold::Busy))
            .map_err(|_| TdError::InProgress(gpa))?;
        let restore = |e| {
            slot.store(idle);
            Err(e)
        };
        // The new S-EPT page and its node first: a failed allocation then
        // leaves the page untouched.
        let sept = match self.fresh_page(&self.inner.policy) {
            Ok(p) => p,
            Err(e) => return restore(e),
        };
        // Entry `i` of the node stands for the `i`th smaller page of the
        // split, until its word is written (`mirror`'s split nodes): no
        // clearing, no 512 stores.
        let step = <S::Smaller as PageSize>::LEVEL.frames();
        let Some(node) = Node::alloc_split(sept, first, step) else {
            self.free_refused(sept);
            return restore(TdError::Alloc {
                what: "a node of the TD's S-EPT record",
                on: Some(Operand::Gpa(gpa)),
            });
        };
        let discard = |node| {
            // SAFETY: the node was never linked; nobody else saw it.
            unsafe { Node::free(node) };
            self.free_refused(sept);
        };
        let tracked = if was_blocked {
            self.track(kick).map(|()| kick()).map_err(|e| (e, true))
        } else {
            self.block_track(gpa, S::LEVEL.as_u8(), kick)
        };
        if let Err((e, blocked)) = tracked {
            discard(node);
            slot.store(Entry::Leaf(
                first,
                if blocked { Hold::Blocked } else { Hold::Idle },
            ));
            return Err(e);
        }
        let (b, tdr) = (self.b(), self.tdr());
        let mut demote = |pair: Option<[Pfn; 2]>| {
            self.retry(Leaf::MEM_PAGE_DEMOTE.v0(), Operand::Gpa(gpa), || {
                match pair {
                    // SAFETY: as below; the pair's pages come from the
                    // platform for this call (`TdHost::pair_demote`), and
                    // on success the module owns them.
                    Some(pair) => unsafe {
                        leaf::tdh_mem_page_demote_pair(b, info, tdr, sept, pair)
                    },
                    // SAFETY: `sept` is a fresh, flushed page from the
                    // platform; on success the module owns it and the TD
                    // keeps it in the node.
                    None => unsafe { leaf::tdh_mem_page_demote(b, info, tdr, sept) },
                }
                .status
            })
            .map(|_| ())
        };
        // With Dynamic PAMT a 2 MiB page split into 4K pages takes a pair
        // for its range with it; a 1 GiB split needs none.
        let r = if S::LEVEL == TdxLevel::L2M {
            self.host().pair_demote(first, &mut demote)
        } else {
            demote(None)
        };
        if let Err(e) = r {
            discard(node);
            let usable = self.unblock(gpa, S::LEVEL.as_u8());
            slot.store(Entry::Leaf(
                first,
                if usable { Hold::Idle } else { Hold::Blocked },
            ));
            return Err(e);
        }
        slot.store(Entry::Table(node, Hold::Idle));
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
    /// returns `Ok`; an `Err` after a successful PROMOTE comes only from a
    /// module that freed a different S-EPT page than the one under `gpa`
    /// ([`TdError::Protocol`]), and then the merge stands too.
    #[doc(alias = "TDH.MEM.PAGE.PROMOTE")]
    pub fn promote<S: HugePageSize>(&self, gpa: Gpa, kick: &dyn Fn()) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let slot = self.find(gpa, S::LEVEL)?;
        let (node, was_blocked) = self.claim_table(gpa, slot)?;
        let held = if was_blocked {
            Hold::Blocked
        } else {
            Hold::Idle
        };
        // SAFETY: a claimed table's node stays linked (and so alive) until
        // this call retires it.
        let children = unsafe { node.as_ref() };
        let step = <S::Smaller as PageSize>::LEVEL.frames();
        let level = S::LEVEL.as_u8() - 1;
        let not_a_run = TdError::Gpa {
            gpa,
            why: "the pages below are not one aligned, contiguous run",
        };
        // A split node is frozen first: no entry word of it gets written
        // for the first time while the merge checks and holds them, and
        // unwritten ones keep their parts of the split page.
        let Ok(touched) = children.freeze() else {
            slot.store(Entry::Table(node, held));
            return Err(TdError::InProgress(gpa));
        };
        let first = match children.entry(0) {
            Entry::Leaf(f, Hold::Idle) if f.is_aligned(S::LEVEL.frames()) => Ok(f),
            Entry::Leaf(_, Hold::Busy) | Entry::Adding | Entry::Table(_, Hold::Busy) => {
                Err(TdError::InProgress(gpa))
            }
            _ => Err(not_a_run),
        };
        let first = match first {
            Ok(f) => f,
            Err(e) => {
                children.thaw();
                slot.store(Entry::Table(node, held));
                return Err(e);
            }
        };
        // Claim all 512 pages below: each must map the next frames of the
        // aligned run (which stays below 2^40: `first` is aligned to it). A
        // page another thread holds stops the merge. A split node none of
        // whose words was ever written maps the split page's run as it was
        // split, and frozen nobody changes it: nothing to check or claim.
        // Of a split node that was written to, the unwritten entries hold
        // their parts, held by the freeze.
        let nth = |i: usize| Pfn::new(first.as_u64() + i as u64 * step);
        let mut claimed = if touched { 0 } else { FANOUT };
        let mut why = None;
        while claimed < FANOUT {
            let i = claimed;
            let r = match children.frozen_slot(i, level) {
                Ok(child) => child.swap_if(
                    Entry::Leaf(nth(i), Hold::Idle),
                    Entry::Leaf(nth(i), Hold::Busy),
                ),
                Err(part) if part == Entry::Leaf(nth(i), Hold::Idle) => Ok(()),
                Err(part) => Err(part),
            };
            match r {
                Ok(()) => claimed += 1,
                Err(Entry::Leaf(_, Hold::Busy) | Entry::Adding | Entry::Table(_, Hold::Busy)) => {
                    why = Some(TdError::InProgress(gpa));
                    break;
                }
                Err(_) => {
                    why = Some(not_a_run);
                    break;
                }
            }
        }
        let release = |held: Hold| {
            if touched {
                for i in 0..claimed {
                    if let Ok(child) = children.frozen_slot(i, level) {
                        child.store(Entry::Leaf(nth(i), Hold::Idle));
                    }
                }
            }
            children.thaw();
            slot.store(Entry::Table(node, held));
        };
        if let Some(e) = why {
            release(held);
            return Err(e);
        }
        // With Dynamic PAMT a 4K→2M merge gives the range's pair back in
        // R12/R13 (the all-register form reads them).
        let pairs = S::LEVEL == TdxLevel::L2M && self.host().dynamic_pamt();
        let pair = core::cell::Cell::new(None);
        let freed = self.blocked_sept_free(
            gpa,
            S::LEVEL.as_u8(),
            was_blocked,
            kick,
            Leaf::MEM_PAGE_PROMOTE.v0(),
            &|b, tdr| {
                if pairs {
                    // SAFETY: as below; the pair the module returns comes
                    // back to the host through `TdHost::pair_promoted`.
                    let c = unsafe { leaf::tdh_mem_page_promote_pair(b, info, tdr) };
                    pair.set(c.out.pair);
                    Completion {
                        status: c.status,
                        out: c.out.sept,
                    }
                } else {
                    // SAFETY: PROMOTE gives an S-EPT page back to the host;
                    // we take it over only after the flushes the ABI
                    // requires.
                    unsafe { leaf::tdh_mem_page_promote(b, info, tdr) }
                }
            },
        );
        match freed {
            Ok(freed) => {
                if pairs {
                    self.host().pair_promoted(first, pair.get());
                }
                slot.store(Entry::Leaf(first, Hold::Idle));
                self.take_freed_sept(node, freed, Leaf::MEM_PAGE_PROMOTE.v0(), gpa)
            }
            Err((e, blocked)) => {
                release(if blocked { Hold::Blocked } else { Hold::Idle });
                Err(e)
            }
        }
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
    /// something under it is still mapped (or being mapped). If SEPT.REMOVE
    /// fails, the entry is unblocked again and the table stays.
    #[doc(alias = "TDH.MEM.SEPT.REMOVE")]
    pub fn remove_table<S: HugePageSize>(&self, gpa: Gpa, kick: &dyn Fn()) -> Result<(), TdError> {
        let info = Self::check_gpa::<S>(gpa)?;
        let slot = self.find(gpa, S::LEVEL)?;
        let (node, was_blocked) = self.claim_table(gpa, slot)?;
        let held = if was_blocked {
            Hold::Blocked
        } else {
            Hold::Idle
        };
        // SAFETY: a claimed table's node stays linked until retired here.
        let children = unsafe { node.as_ref() };
        let level = S::LEVEL.as_u8() - 1;
        // Reserve every entry below, so no thread maps into the table while
        // it goes: each must be free.
        let mut claimed = 0;
        // A split node with parts still unwritten maps them.
        let all = children.slots(level);
        let mut why = all.is_none().then_some(TdError::Gpa {
            gpa,
            why: "the table still maps pages or tables",
        });
        for (_, child) in all.into_iter().flatten() {
            match child.swap_if(Entry::Free, Entry::Adding) {
                Ok(()) => claimed += 1,
                Err(Entry::Adding | Entry::Leaf(_, Hold::Busy) | Entry::Table(_, Hold::Busy)) => {
                    why = Some(TdError::InProgress(gpa));
                    break;
                }
                Err(_) => {
                    why = Some(TdError::Gpa {
                        gpa,
                        why: "the table still maps pages or tables",
                    });
                    break;
                }
            }
        }
        let release = |held: Hold| {
            for (_, child) in children.slots(level).into_iter().flatten().take(claimed) {
                child.store(Entry::Free);
            }
            slot.store(Entry::Table(node, held));
        };
        if let Some(e) = why {
            release(held);
            return Err(e);
        }
        let freed = self.blocked_sept_free(
            gpa,
            S::LEVEL.as_u8(),
            was_blocked,
            kick,
            Leaf::MEM_SEPT_REMOVE.v0(),
            &|b, tdr| {
                // SAFETY: SEPT.REMOVE gives an S-EPT page back to the host; we
                // take it over only after the flushes the ABI requires.
                unsafe { leaf::tdh_mem_sept_remove(b, info, tdr) }
            },
        );
        match freed {
            Ok(freed) => {
                slot.store(Entry::Free);
                self.take_freed_sept(node, freed, Leaf::MEM_SEPT_REMOVE.v0(), gpa)
            }
            Err((e, blocked)) => {
                release(if blocked { Hold::Blocked } else { Hold::Idle });
                Err(e)
            }
        }
    }

    /// Claims the table entry at `slot` (idle or blocked → busy) and
    /// returns its node.
    /// A table whose entry a failed merge or removal left blocked is
    /// claimed too (`true`): the caller resumes after the BLOCK.
    fn claim_table(&self, gpa: Gpa, slot: Slot<'_>) -> Result<(NonNull<Node>, bool), TdError> {
        match slot.load() {
            Entry::Table(node, held @ (Hold::Idle | Hold::Blocked)) => slot
                .swap_if(Entry::Table(node, held), Entry::Table(node, Hold::Busy))
                .map(|()| (node, held == Hold::Blocked))
                .map_err(|_| TdError::InProgress(gpa)),
            Entry::Free | Entry::Leaf(_, Hold::Idle | Hold::Blocked) => {
                Err(TdError::NotMapped(gpa))
            }
            Entry::Parked(..) => Err(parked(gpa)),
            _ => Err(TdError::InProgress(gpa)),
        }
    }

    /// BLOCK (unless `already_blocked`) and TRACK the entry of `gpa` at
    /// `level`, `kick`, then `call` a
    /// leaf that frees an S-EPT page (PROMOTE, SEPT.REMOVE); if it fails,
    /// the entry is unblocked again (`false` in the error) or stays blocked
    /// (`true`). Returns the page the module says it freed.
    fn blocked_sept_free(
        &self,
        gpa: Gpa,
        level: u8,
        already_blocked: bool,
        kick: &dyn Fn(),
        leaf: LeafVersion,
        call: &dyn Fn(&H::Backend, Pfn) -> Completion<SeptOut>,
    ) -> Result<Option<Pfn>, (TdError, bool)> {
        if already_blocked {
            // A failed merge or removal left the entry blocked: TRACK and
            // kick, then resume.
            self.track(kick).map_err(|e| (e, true))?;
            kick();
        } else {
            self.block_track(gpa, level, kick)?;
        }
        let (b, tdr) = (self.b(), self.tdr());
        let mut freed = None;
        let mut once = || {
            let c = call(b, tdr);
            freed = c.out.removed();
            c.status
        };
        // SEPT.REMOVE takes the tree exclusively, PROMOTE shared.
        let r = if leaf.leaf() == Leaf::MEM_SEPT_REMOVE {
            self.retry_tree_exclusive(leaf, Operand::Gpa(gpa), &mut once)
        } else {
            self.retry(leaf, Operand::Gpa(gpa), once)
        };
        match r {
            Ok(_) => Ok(freed),
            Err(e) => Err((e, !self.unblock(gpa, level))),
        }
    }

    /// After `leaf` freed the S-EPT page of `node` (the module says it
    /// freed `freed`): the node leaves the tree for good, and the page goes
    /// back to the platform (written back, cleared where the erratum
    /// requires). If the module named another page, ours is kept in doubt
    /// for teardown to reclaim.
    fn take_freed_sept(
        &self,
        node: NonNull<Node>,
        freed: Option<Pfn>,
        leaf: LeafVersion,
        gpa: Gpa,
    ) -> Result<(), TdError> {
        // SAFETY: the node is alive until retired (below).
        let page = unsafe { node.as_ref() }.sept();
        let Some(pfn) = page else {
            self.inner.tree.retire(node);
            return Ok(());
        };
        let run = PfnRun::from(PfnRange::<Size4K>::from(pfn));
        // A page that must wait for teardown stays named by its retired
        // node, marked: no list to grow, so nothing to allocate.
        if freed.is_some_and(|f| f != pfn) {
            self.inner.tree.retire_parked(node, Park::InDoubt);
            return Err(TdError::Protocol {
                leaf,
                what: "freed an S-EPT page other than the one under the GPA",
                gpa: Some(gpa),
            });
        }
        let p = self.p();
        let written = self
            .host()
            .page_wbinvd(pfn, self.hkid(), &self.inner.policy)
            .and_then(|()| {
                if !self.host().errata().tdx_pw_mce {
                    return Ok(());
                }
                // SAFETY: freed by the module and written back just above;
                // ours.
                unsafe { p.movdir64b_clear(run) }.map_err(TdError::Platform)
            });
        if written.is_err() {
            self.inner.tree.retire_parked(node, Park::Unflushed);
        } else {
            self.inner.tree.retire(node);
        }
        // The module is done with the page (PAGE.WBINVD reads its PAMT
        // entry, in the pair): its range's pair reference goes.
        self.host().pair_put(pfn);
        if let Err(e) = written {
            // The merge or removal stands; only the freed S-EPT page could
            // not be written back (or cleared, where the erratum needs it).
            // It waits for teardown, which writes back every package's
            // caches and tries the clear again (leaking the page with the
            // reason if it still cannot), and the error shows in the
            // teardown report.
            self.defer(e);
            return Ok(());
        }
        // SAFETY: allocated from this platform by `add_table`/`demote`,
        // freed by the module (PROMOTE or SEPT.REMOVE) and written back
        // with the TD's key.
        unsafe { p.free_pages(run) };
        Ok(())
    }
}
