//! Teardown: from any state, every page back or reported.
//!
//! The order is Linux's (`tdx_mmu_release_hkid` and `tdx_vm_destroy` in
//! `arch/x86/kvm/vmx/tdx.c`): TDH.VP.FLUSH of each associated vCPU on its
//! CPU, TDH.MNG.VPFLUSHDONE, TDH.PHYMEM.CACHE.WB on one CPU of every
//! package (resumed while interrupted, at most
//! [`CACHE_WB_LIMIT`] calls), TDH.MNG.KEY.FREEID (then the HKID returns to
//! the pool), TDH.PHYMEM.PAGE.RECLAIM of S-EPT pages, private pages, TDCX,
//! TDVPR and TDCS pages, and the TDR last followed by
//! TDH.PHYMEM.PAGE.WBINVD of the TDR with the global KeyID. On platforms
//! with the partial-write erratum every reclaimed page is cleared with
//! MOVDIR64B before it goes back.
//!
//! The TD-global leaves (VPFLUSHDONE, CACHE.WB on every package, FREEID)
//! run under the host's lock for them (`TdHost::global_leaves`), so two
//! teardowns of one host do not meet in the module's key tables. BUSY from
//! another user of the module is retried under the host's [`RetryPolicy`],
//! outside any `on_cpu` closure. A CACHE.WB that was interrupted and then
//! finds on resume that another caller's CACHE.WB ran on that package
//! meanwhile (`TDX_WBCACHE_RESUME_ERROR`: the module keeps one resumable
//! state per package, not per caller, `tdh_phymem_cache_wb.c`) is started
//! again. `TDX_NO_HKID_READY_TO_WBCACHE` is taken as success, as KVM does;
//! it should not occur here, since this TD's HKID stays flushed (and so
//! ready for a write-back) until its FREEID.
//!
//! If the HKID cannot be released (VPFLUSHDONE, CACHE.WB or FREEID fails),
//! nothing can be reclaimed: every page, and the HKID, is leaked and the
//! report says why. A page whose reclaim fails is leaked alone (and then
//! the TDR too, which the module will not give back while it has children).
//!
//! Teardown allocates nothing infallibly: it walks the TD's records (the
//! S-EPT mirror, its lists) and reclaims as it goes, and the report's lists
//! grow fallibly. An entry a list has no room for is counted instead
//! ([`TeardownReport::unlisted_freed`] and the other `unlisted_` fields),
//! so every page is still accounted for.

// UNSAFETY: the teardown leaves are `unsafe fn`s, and pages go back to the
// platform with `free_pages`.
#![allow(unsafe_code)]

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tdx_sys::{Seamcall, leaf};
use tdx_types::{FirmwarePage, Leaf, Pfn, PfnRange, PfnRun, Size4K, TdxStatus};

use super::{
    CACHE_WB_LIMIT, Inner, Operand, TdError, TdHost,
    memory::run_of,
    mirror::{Entry, Park},
    same_code,
    vcpu::{NO_CPU, VcpuSlot},
};
use crate::{
    platform::{CpuId, Platform},
    retry::{RetryPolicy, package_cpus, pause, retry, retry_on_cpu},
};

/// What a page was to the TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PageRole {
    /// The TD root page.
    Tdr,
    /// A TD control structure page.
    Tdcs,
    /// A vCPU root page.
    Tdvpr,
    /// A vCPU control structure page.
    Tdcx,
    /// A secure-EPT page.
    Sept,
    /// Private memory (the caller's frames).
    Guest,
    /// The host page that held PAGE.ADD sources.
    Staging,
    /// A Dynamic PAMT page (one of a pair) of a 2 MiB range whose last
    /// page left the module with this teardown.
    Pamt,
}

/// A page that could not be given back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakedPage {
    /// The frames.
    pub run: PfnRun,
    /// What they were.
    pub role: PageRole,
    /// Why they are leaked.
    pub reason: &'static str,
    /// The error behind it, if a leaf failed.
    pub error: Option<TdError>,
}

/// The outcome of a teardown: every page the TD held, in one of three
/// lists, or, for an entry a list had no room for (the global allocator
/// failed while the list grew), in the matching `unlisted_` count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "the report says which pages came back and which were leaked"]
pub struct TeardownReport {
    /// Control pages returned to the platform's allocator.
    pub freed: Vec<(Pfn, PageRole)>,
    /// The caller's private frames, host memory again (flushed, and
    /// cleared where the erratum requires).
    pub guest_returned: Vec<PfnRun>,
    /// Pages given up for good (also reported to
    /// [`FrameDeallocator::leak_pages`](crate::FrameDeallocator::leak_pages)).
    pub leaked: Vec<LeakedPage>,
    /// Whether the HKID went back to the pool.
    pub hkid_freed: bool,
    /// Every leaf failure met on the way, in order.
    pub errors: Vec<TdError>,
    /// Control pages returned to the platform's allocator (4 KiB pages)
    /// that `freed` could not list.
    pub unlisted_freed: u64,
    /// The caller's frames returned (4 KiB frames) that `guest_returned`
    /// could not list (the allocator had no room). They are host memory
    /// again, like the listed ones, and went to
    /// [`FrameDeallocator::return_guest_frames`](crate::FrameDeallocator::return_guest_frames),
    /// which names them.
    pub unlisted_guest_frames: u64,
    /// Frames leaked (4 KiB frames) that `leaked` could not list; each was
    /// still reported to [`FrameDeallocator::leak_pages`](crate::FrameDeallocator::leak_pages) with its reason.
    pub unlisted_leaked_frames: u64,
    /// Leaf failures that `errors` could not list (during the teardown,
    /// or kept from an earlier call that still succeeded).
    pub unlisted_errors: u64,
}

impl TeardownReport {
    /// True if every page came back and the HKID was freed.
    pub fn is_clean(&self) -> bool {
        self.leaked.is_empty()
            && self.unlisted_leaked_frames == 0
            && self.hkid_freed
            && self.errors.is_empty()
            && self.unlisted_errors == 0
    }

    /// Pages leaked (4 KiB frames), listed or not.
    pub fn leaked_frames(&self) -> u64 {
        self.leaked.iter().map(|l| l.run.count()).sum::<u64>() + self.unlisted_leaked_frames
    }

    /// The caller's frames returned (4 KiB frames), listed or not.
    pub fn guest_frames_returned(&self) -> u64 {
        self.guest_returned.iter().map(|r| r.count()).sum::<u64>() + self.unlisted_guest_frames
    }

    /// True if every entry is in its list (no `unlisted_` count).
    pub fn is_complete(&self) -> bool {
        self.unlisted_freed == 0
            && self.unlisted_guest_frames == 0
            && self.unlisted_leaked_frames == 0
            && self.unlisted_errors == 0
    }
}

/// Appends `item` to `list` if it has or can get room (never aborts);
/// false if not.
fn try_list<T>(list: &mut Vec<T>, item: T) -> bool {
    if list.try_reserve(1).is_err() {
        return false;
    }
    list.push(item);
    true
}

fn one(pfn: Pfn) -> PfnRun {
    PfnRun::from(PfnRange::<Size4K>::from(pfn))
}

struct Ctx<'a, B, P> {
    host: &'a TdHost<B, P>,
    b: &'a B,
    p: &'a P,
    policy: RetryPolicy,
    tdx_pw_mce: bool,
    report: TeardownReport,
}

impl<B: Seamcall + Sync, P: Platform + Sync> Ctx<'_, B, P> {
    fn leak(&mut self, run: PfnRun, role: PageRole, reason: &'static str, error: Option<TdError>) {
        self.p.leak_pages(run, reason);
        self.list_leaked(LeakedPage {
            run,
            role,
            reason,
            error,
        });
    }

    /// Lists a leaked page (already reported to the platform), or counts
    /// its frames.
    fn list_leaked(&mut self, page: LeakedPage) {
        let frames = page.run.count();
        if !try_list(&mut self.report.leaked, page) {
            self.report.unlisted_leaked_frames += frames;
        }
    }

    /// Lists a freed control page, or counts it.
    fn list_freed(&mut self, pfn: Pfn, role: PageRole) {
        if !try_list(&mut self.report.freed, (pfn, role)) {
            self.report.unlisted_freed += 1;
        }
    }

    /// Lists a leaf failure, or counts it.
    fn error(&mut self, e: TdError) {
        if !try_list(&mut self.report.errors, e) {
            self.report.unlisted_errors += 1;
        }
    }

    /// Guest frames returned that `guest_returned` has no room for: the
    /// platform takes them back (the one place they can go without
    /// memory), and the report counts them.
    fn guest_unlisted(&mut self, run: PfnRun) {
        self.report.unlisted_guest_frames += run.count();
        // SAFETY: called by `give_back` only for guest runs the module let
        // go of, written back and (with the erratum) cleared, which the TD
        // held as the caller's `GuestFrame`s; the report does not list
        // them, so nothing else hands them out.
        unsafe { self.p.return_guest_frames(run) };
    }

    /// The frames left the module (reclaimed or removed and written back):
    /// clear them where the erratum requires, then give them back. Frames
    /// the platform cannot clear are leaked with the reason.
    fn give_back(&mut self, run: PfnRun, role: PageRole) {
        if self.tdx_pw_mce {
            // SAFETY: the module gave the frames back (RECLAIM succeeded, or
            // they were removed and the HKID's caches written back) and the
            // TD held them, for the platform or for the caller.
            if let Err(e) = unsafe { self.p.movdir64b_clear(run) } {
                let why =
                    "could not be cleared with MOVDIR64B (no direct map): not host memory yet";
                self.leak(run, role, why, Some(TdError::Platform(e)));
                return;
            }
        }
        if role == PageRole::Guest {
            if !try_list(&mut self.report.guest_returned, run) {
                self.guest_unlisted(run);
            }
        } else {
            // SAFETY: control pages were allocated from this platform by the
            // TD; the module gave each back (RECLAIM) after the HKID's cache
            // lines were written back on every package (CACHE.WB), which is
            // the flush the ABI requires before host reuse.
            unsafe { self.p.free_pages(run) };
            self.list_freed(run.first(), role);
        }
    }

    /// The module let go of the 4K page `first`: its range's PAMT pair
    /// reference goes, and a pair that leaves with it is reported.
    fn put_pair(&mut self, first: Pfn) {
        match self.host.pair_put(first) {
            Some(Ok(pair)) => {
                for f in pair.iter() {
                    self.list_freed(f, PageRole::Pamt);
                }
            }
            Some(Err((pair, reason))) => self.list_leaked(LeakedPage {
                run: pair,
                role: PageRole::Pamt,
                reason,
                error: None,
            }),
            None => {}
        }
    }

    /// TDH.PHYMEM.PAGE.RECLAIM of the page (of any size) at `first`.
    fn reclaim(&mut self, run: PfnRun, role: PageRole) -> bool {
        let (b, first) = (self.b, run.first());
        let r = retry(
            self.p,
            &self.policy,
            Leaf::PHYMEM_PAGE_RECLAIM.v0(),
            Operand::HostPage(first),
            || {
                // SAFETY: RECLAIM takes a page back from the module; we hand
                // it to the host only through `give_back`.
                unsafe { leaf::tdh_phymem_page_reclaim(b, first) }.status
            },
        );
        match r {
            Ok(_) => {
                // The module let go of the page: its range's PAMT pair
                // reference goes (4K pages only hold one).
                // (The TDR's reference goes after its PAGE.WBINVD, which
                // reads its PAMT entry.)
                if run.count() == 1 && role != PageRole::Tdr {
                    self.put_pair(first);
                }
                if role != PageRole::Tdr {
                    self.give_back(run, role);
                }
                true
            }
            Err(e) => {
                self.error(e);
                self.leak(
                    run,
                    role,
                    "TDH.PHYMEM.PAGE.RECLAIM failed: the module may still own it",
                    Some(e),
                );
                false
            }
        }
    }
}

pub(super) fn run<B: Seamcall + Sync, P: Platform + Sync>(
    host: &TdHost<B, P>,
    mut inner: Inner,
) -> TeardownReport {
    let (b, p) = (host.module().backend(), host.module().platform());
    let mut cx = Ctx {
        host,
        b,
        p,
        policy: host.policy(),
        tdx_pw_mce: host.errata().tdx_pw_mce,
        report: TeardownReport {
            // Failures the TD carried from earlier calls that still
            // succeeded (a promoted range whose freed S-EPT page could not
            // be written back), listed or counted.
            errors: inner.deferred.take(),
            unlisted_errors: inner.deferred_unlisted.load(Ordering::Relaxed),
            ..TeardownReport::default()
        },
    };
    if let Some(s) = inner.staging.take() {
        // SAFETY: the staging page is a host page the module only read.
        unsafe { p.free_pages(one(s)) };
        cx.list_freed(s, PageRole::Staging);
    }
    let tdr = inner.tdr.pfn();

    // 1. VP.FLUSH of each vCPU on the CPU it may be associated with (where
    // TDH.VP.INIT ran, or where it last entered the guest).
    for (i, v) in inner.vcpus.iter().enumerate() {
        let cpu = v.assoc.load(Ordering::Relaxed);
        if cpu == NO_CPU {
            continue;
        }
        if let Err(e) = flush_vcpu(cx.b, cx.p, cx.policy, i, v.tdvpr.pfn(), CpuId(cpu)) {
            cx.error(e);
        }
    }

    // 2.-4. VPFLUSHDONE, CACHE.WB on every package, KEY.FREEID.
    let gate = host.global_leaves();
    let released = release_hkid(&mut cx, tdr, &inner.vcpus);
    drop(gate);
    // What the TD holds besides its control pages: the tree's tables and
    // pages (children before their tables), pages parked in it, S-EPT
    // pages of retired nodes that wait for teardown, and the side lists.
    // Each is handled where it is found: nothing is collected first, so
    // nothing is allocated.
    if let Err(e) = released {
        cx.error(e);
        let reason = "the HKID could not be released, so the module keeps the TD's pages";
        inner.tree.drain(&mut |_, level, entry, page| match entry {
            Entry::Table(..) => {
                if let Some(page) = page {
                    cx.leak(one(page), PageRole::Sept, reason, Some(e));
                }
            }
            Entry::Leaf(first, _) | Entry::Parked(first, _) => {
                cx.leak(run_of(first, level), PageRole::Guest, reason, Some(e));
            }
            // Claims only exist while a call runs; teardown owns the TD.
            Entry::Free | Entry::Adding => {}
        });
        inner
            .tree
            .drain_retired(&mut |page, _| cx.leak(one(page), PageRole::Sept, reason, Some(e)));
        for (run, role) in inner
            .unflushed
            .take()
            .into_iter()
            .chain(inner.in_doubt.take())
        {
            cx.leak(run, role, reason, Some(e));
        }
        for v in &inner.vcpus {
            for t in &v.tdcx {
                cx.leak(one(t.pfn()), PageRole::Tdcx, reason, Some(e));
            }
            cx.leak(one(v.tdvpr.pfn()), PageRole::Tdvpr, reason, Some(e));
        }
        for t in &inner.tdcs {
            cx.leak(one(t.pfn()), PageRole::Tdcs, reason, Some(e));
        }
        cx.leak(one(tdr), PageRole::Tdr, reason, Some(e));
        // The HKID stays taken in the pool (dropping an `Hkid` does not
        // free it): the module still holds it.
        let _leaked_hkid = inner.hkid.take();
        return cx.report;
    }
    if let Some(h) = inner.hkid.take() {
        host.hkids().free(h);
    }
    cx.report.hkid_freed = true;

    // 5. Reclaim the children, then the TDR.
    inner.tree.drain(&mut |_, level, entry, page| match entry {
        Entry::Table(..) => {
            if let Some(page) = page {
                cx.reclaim(one(page), PageRole::Sept);
            }
        }
        // A page parked in doubt is reclaimed as the in-doubt list's are
        // (below); one parked unflushed is given back as theirs are.
        Entry::Leaf(first, _) | Entry::Parked(first, Park::InDoubt) => {
            cx.reclaim(run_of(first, level), PageRole::Guest);
        }
        Entry::Parked(first, Park::Unflushed) => {
            cx.give_back(run_of(first, level), PageRole::Guest)
        }
        Entry::Free | Entry::Adding => {}
    });
    // S-EPT pages the module freed (PROMOTE, SEPT.REMOVE) that could not
    // be given back then.
    inner.tree.drain_retired(&mut |page, park| match park {
        Park::InDoubt => {
            cx.reclaim(one(page), PageRole::Sept);
        }
        Park::Unflushed => cx.give_back(one(page), PageRole::Sept),
    });
    for (r, role) in inner.in_doubt.take() {
        // If the module really freed the page, RECLAIM refuses it and it is
        // leaked with the reason.
        cx.reclaim(r, role);
    }
    for (r, role) in inner.unflushed.take() {
        // Removed (or freed by PROMOTE) earlier; CACHE.WB on every package
        // wrote their lines back.
        cx.give_back(r, role);
    }
    for v in core::mem::take(&mut inner.vcpus) {
        for t in v.tdcx {
            cx.reclaim(one(t.into_range().first()), PageRole::Tdcx);
        }
        cx.reclaim(one(v.tdvpr.into_range().first()), PageRole::Tdvpr);
    }
    for t in core::mem::take(&mut inner.tdcs) {
        cx.reclaim(one(t.into_range().first()), PageRole::Tdcs);
    }
    let tdr = FirmwarePage::into_range(inner.tdr).first();
    if cx.reclaim(one(tdr), PageRole::Tdr) {
        // The module may have written the TDR with the global KeyID.
        let r = host.page_wbinvd(tdr, host.module().global_keyid(), &cx.policy);
        cx.put_pair(tdr);
        match r {
            Ok(_) => cx.give_back(one(tdr), PageRole::Tdr),
            Err(e) => {
                cx.error(e);
                cx.leak(
                    one(tdr),
                    PageRole::Tdr,
                    "TDH.PHYMEM.PAGE.WBINVD of the TDR failed: lines of the global key may remain",
                    Some(e),
                );
            }
        }
    }
    cx.report
}

/// TDH.VP.FLUSH of vCPU `i` (TDVPR `tdvpr`) on `cpu`. "Not associated
/// with this CPU" is success: the vCPU has nothing to flush there.
pub(super) fn flush_vcpu<B: Seamcall + Sync + ?Sized, P: Platform + ?Sized>(
    b: &B,
    p: &P,
    policy: RetryPolicy,
    i: usize,
    tdvpr: Pfn,
    cpu: CpuId,
) -> Result<(), TdError> {
    retry_on_cpu(
        p,
        cpu,
        policy,
        Leaf::VP_FLUSH.v0(),
        Operand::Vcpu(i),
        &mut || {
            // SAFETY: VP.FLUSH moves no page; it runs on `cpu` (the `Cpus`
            // contract).
            match unsafe { leaf::tdh_vp_flush(b, tdvpr) } {
                s if same_code(s, TdxStatus::VCPU_NOT_ASSOCIATED) => TdxStatus::SUCCESS,
                s => s,
            }
        },
    )
    .map(|_| ())
}

/// VPFLUSHDONE, CACHE.WB on every package (resumable), KEY.FREEID.
fn release_hkid<B: Seamcall + Sync, P: Platform + Sync>(
    cx: &mut Ctx<'_, B, P>,
    tdr: Pfn,
    vcpus: &[VcpuSlot],
) -> Result<(), TdError> {
    let (b, p, policy) = (cx.b, cx.p, cx.policy);
    let flushdone = || {
        retry(p, &policy, Leaf::MNG_VPFLUSHDONE.v0(), Operand::Tdr, || {
            // SAFETY: VPFLUSHDONE moves no page.
            unsafe { leaf::tdh_mng_vpflushdone(b, tdr) }
        })
    };
    match flushdone() {
        Err(TdError::Seamcall { error, .. })
            if same_code(error.status(), TdxStatus::FLUSHVP_NOT_DONE) =>
        {
            // A vCPU is still associated with a CPU the TD did not record
            // (its association was moved by raw leaf calls): flush every
            // vCPU on every CPU once (the module answers "not associated"
            // everywhere else), then try again. Without this the HKID, and
            // so every page of the TD, would stay with the module.
            for cpu in 0..p.cpus() {
                for (i, v) in vcpus.iter().enumerate() {
                    flush_vcpu(cx.b, cx.p, cx.policy, i, v.tdvpr.pfn(), CpuId(cpu))?;
                }
            }
            flushdone()?;
        }
        r => {
            r?;
        }
    }
    for (pkg, cpu) in package_cpus(p) {
        cache_wb(p, b, policy, pkg, cpu)?;
    }
    retry(p, &policy, Leaf::MNG_KEY_FREEID.v0(), Operand::Tdr, || {
        // SAFETY: FREEID moves no page.
        unsafe { leaf::tdh_mng_key_freeid(b, tdr) }
    })?;
    Ok(())
}

/// TDH.PHYMEM.CACHE.WB on `cpu` of `pkg` until it completes: resumed while
/// interrupted, started again when another caller's CACHE.WB ran on the
/// package in between (the resume then answers
/// `TDX_WBCACHE_RESUME_ERROR`); at most [`CACHE_WB_LIMIT`] calls.
fn cache_wb<B: Seamcall + Sync, P: Platform + Sync>(
    p: &P,
    b: &B,
    policy: RetryPolicy,
    pkg: crate::platform::PackageId,
    cpu: crate::platform::CpuId,
) -> Result<(), TdError> {
    let mut resume = false;
    for _ in 0..CACHE_WB_LIMIT {
        let r = retry_on_cpu(
            p,
            cpu,
            policy,
            Leaf::PHYMEM_CACHE_WB.v0(),
            Operand::Package(pkg),
            &mut || {
                // SAFETY: CACHE.WB moves no page; it runs on a CPU of `pkg`.
                match unsafe { leaf::tdh_phymem_cache_wb(b, resume) } {
                    // No HKID waits for a write-back on this package (not
                    // expected while ours does; success, as for KVM).
                    s if same_code(s, TdxStatus::NO_HKID_READY_TO_WBCACHE) => TdxStatus::SUCCESS,
                    s => s,
                }
            },
        );
        match r {
            Ok(s) if same_code(s, TdxStatus::INTERRUPTED_RESUMABLE) => resume = true,
            Err(TdError::Seamcall { error, .. })
                if same_code(error.status(), TdxStatus::INTERRUPTED_RESUMABLE) =>
            {
                resume = true;
            }
            Err(TdError::Seamcall { error, .. })
                if resume && same_code(error.status(), TdxStatus::WBCACHE_RESUME_ERROR) =>
            {
                // Another caller's CACHE.WB started and completed on this
                // package after ours was interrupted: start again.
                resume = false;
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
        if resume {
            pause(p, policy);
        }
    }
    Err(TdError::Protocol {
        leaf: Leaf::PHYMEM_CACHE_WB.v0(),
        what: "still interrupted after CACHE_WB_LIMIT calls",
        gpa: None,
    })
}
