//! Building a TD: keys, TDCS, TDH.MNG.INIT, initial pages, finalization.

// UNSAFETY: the build leaves of tdx-sys are `unsafe fn`s that take pages,
// and TD_PARAMS and PAGE.ADD sources go through the platform's direct map.
#![allow(unsafe_code)]

use tdx_sys::leaf;
use tdx_types::{FirmwarePage, Gpa, Leaf, PfnRange, PfnRun, Size4K, TdxLevel, abi::TdParams};
use zerocopy::IntoBytes;

use super::{
    Created, Finalized, GuestFrame, Initialized, KeysConfigured, Operand, ParamsError, Td, TdError,
    TdFailure, TdHostRef, TdcsAdded, mirror,
};
use crate::{
    platform::{Placement, Platform},
    retry::{package_cpus, retry, retry_on_cpu},
};

impl<H: TdHostRef> Td<Created, H> {
    /// TDH.MNG.KEY.CONFIG on one CPU of every package, one package after
    /// the other (the module locks the TDR exclusively for it).
    ///
    /// On failure the TD comes back (keys may be configured on some
    /// packages); tear it down or retry.
    #[doc(alias = "TDH.MNG.KEY.CONFIG")]
    pub fn configure_keys(self) -> Result<Td<KeysConfigured, H>, TdFailure<Self>> {
        let (b, p, tdr) = (self.b(), self.p(), self.tdr());
        let policy = self.host().policy();
        let mut failed = None;
        let gate = self.host().global_leaves();
        for (pkg, cpu) in package_cpus(p) {
            let r = retry_on_cpu(
                p,
                cpu,
                policy,
                Leaf::MNG_KEY_CONFIG.v0(),
                Operand::Package(pkg),
                &mut || {
                    // SAFETY: TDH.MNG.KEY.CONFIG takes no page from the host:
                    // the TDR is the module's already. It runs on a CPU of
                    // `pkg` (Platform contract 2). A package configured by an
                    // earlier attempt answers TDX_KEY_CONFIGURED, a success.
                    unsafe { leaf::tdh_mng_key_config(b, tdr) }
                },
            );
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        drop(gate);
        match failed {
            Some(e) => self.fail(e),
            None => Ok(self.into_state()),
        }
    }
}

impl<H: TdHostRef> Td<KeysConfigured, H> {
    /// Allocates TDCS_BASE_SIZE / 4 KiB pages and adds each (CLFLUSH,
    /// TDH.MNG.ADDCX).
    #[doc(alias = "TDH.MNG.ADDCX")]
    pub fn add_tdcs(mut self) -> Result<Td<TdcsAdded, H>, TdFailure<Self>> {
        let n = usize::from(self.host().module().sysinfo().tdcs_base_size).div_ceil(4096);
        let tdr = self.tdr();
        if self.inner.tdcs.try_reserve(n).is_err() {
            return self.fail(TdError::Alloc {
                what: "the TD's TDCS page list",
            });
        }
        for _ in self.inner.tdcs.len()..n {
            let page = match self.fresh_page() {
                Ok(p) => p,
                Err(e) => return self.fail(e),
            };
            let b = self.b();
            let r = self.retry(Leaf::MNG_ADDCX.v0(), Operand::HostPage(page), || {
                // SAFETY: a fresh, flushed page from the platform; on
                // success the module owns it (kept as a FirmwarePage).
                unsafe { leaf::tdh_mng_addcx(b, page, tdr) }
            });
            if let Err(e) = r {
                self.free_refused(page);
                return self.fail(e);
            }
            self.inner.tdcs.push(FirmwarePage::from_pfn(page));
        }
        Ok(self.into_state())
    }
}

impl<H: TdHostRef> Td<TdcsAdded, H> {
    /// Checks `params` against the module's [`SysInfo`](crate::SysInfo),
    /// then TDH.MNG.INIT.
    ///
    /// A parameter error is found before any SEAMCALL.
    #[doc(alias = "TDH.MNG.INIT")]
    pub fn init(mut self, params: &TdParams) -> Result<Td<Initialized, H>, TdFailure<Self>> {
        let levels = match check_params(self.host().module().sysinfo(), params) {
            Ok(l) => l,
            Err(e) => return self.fail(TdError::Params(e)),
        };
        let (b, p) = (self.b(), self.p());
        let run = match p.alloc_pages(1, 1, Placement::Anywhere) {
            Ok(r) => r,
            Err(e) => return self.fail(TdError::Platform(e)),
        };
        // SAFETY: `run` was just allocated for us and the module does not own
        // it (Platform contract 1); a page is 1024-byte aligned as TD_PARAMS
        // must be.
        unsafe { p.write_phys(run.hpa(), params.as_bytes()) };
        let tdr = self.tdr();
        let r = self.retry(Leaf::MNG_INIT.v0(), Operand::Tdr, || {
            // SAFETY: TD_PARAMS is a host page the module only reads.
            unsafe { leaf::tdh_mng_init(b, tdr, run.hpa()) }.status
        });
        // SAFETY: the module read TD_PARAMS with the host's key and took
        // nothing; the page is ours.
        unsafe { p.free_pages(run) };
        match r {
            Ok(_) => {
                self.inner.ept_levels = levels;
                // Nothing is mapped yet: the root's entries are of the level
                // below the EPT's top.
                self.inner.tree.set_top(levels - 1);
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
    if p.max_vcpus() == 0 || p.max_vcpus() > info.vcpu_limit() {
        return Err(ParamsError::MaxVcpus {
            asked: p.max_vcpus(),
            max: info.vcpu_limit(),
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

impl<H: TdHostRef> Td<Initialized, H> {
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
        let slot = match self.claim(gpa, TdxLevel::L4K) {
            Ok(s) => s,
            Err(e) => return back(e, Some(frame)),
        };
        let (b, p, tdr, target) = (self.b(), self.p(), self.tdr(), frame.pfn());
        // SAFETY: the staging page was allocated for this TD from the
        // platform and the module never owns it (PAGE.ADD only reads it).
        unsafe { p.write_phys(source.hpa(), contents) };
        p.clflush_page(target);
        let r = self.retry(Leaf::MEM_PAGE_ADD.v0(), Operand::Gpa(gpa), || {
            // SAFETY: `target` is a guest frame the caller promised to leave
            // alone (GuestFrame::new); on success the module owns it and the
            // TD records it in its tree. `source` is our host page.
            unsafe { leaf::tdh_mem_page_add(b, info, tdr, target, source) }.status
        });
        if let Err(e) = r {
            slot.store(mirror::Entry::Free);
            return back(e, Some(frame));
        }
        slot.store(mirror::Entry::Leaf(
            frame.into_range().first(),
            mirror::Hold::Idle,
        ));
        if measure {
            for chunk in 0..16u64 {
                let at = Gpa::new(gpa.as_u64() + chunk * 256);
                let r = retry(
                    p,
                    self.inner.policy,
                    Leaf::MR_EXTEND.v0(),
                    Operand::Gpa(at),
                    || {
                        // SAFETY: TDH.MR.EXTEND takes no host page.
                        unsafe { leaf::tdh_mr_extend(b, tdr, at) }.status
                    },
                );
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
    pub fn finalize(mut self) -> Result<Td<Finalized, H>, TdFailure<Self>> {
        let (b, tdr) = (self.b(), self.tdr());
        if let Err(e) = self.retry(Leaf::MR_FINALIZE.v0(), Operand::Tdr, || {
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
