//! Building a TD: keys, TDCS, TDH.MNG.INIT, initial pages, finalization.

// UNSAFETY: the build leaves of tdx-sys are `unsafe fn`s that take pages,
// and TD_PARAMS and PAGE.ADD sources go through the platform's direct map.
#![allow(unsafe_code)]

use tdx_sys::leaf;
use tdx_types::{
    FirmwarePage, Gpa, Hpa, Leaf, PfnRange, PfnRun, Size4K, TdxLevel,
    abi::{
        CPUID_CONFIG_1_5_01, CPUID_CONFIG_1_5_05, CPUID_CONFIG_ORDER_1_5_05, CPUID_SUBLEAF_NONE,
        CpuidConfigRule, IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01, TSC_FREQUENCY_MAX,
        TSC_FREQUENCY_MIN, TdParams,
    },
};
use zerocopy::IntoBytes;

use super::{
    Created, Finalized, GuestFrame, Initialized, KeysConfigured, Operand, ParamsError, Td, TdError,
    TdFailure, TdHostRef, TdcsAdded, XfamRule, mirror,
};
use crate::{
    platform::{CacheMaintenance, DirectMap, FrameAllocator, FrameDeallocator, Placement},
    retry::{package_cpus, retry, retry_on_cpu},
};

/// A page of zeros: the padding of an image's last page.
static ZEROS: [u8; 4096] = [0; 4096];

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
                    // `pkg` (the `Cpus` contract). A package configured by an
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
                on: Some(Operand::Tdr),
            });
        }
        for _ in self.inner.tdcs.len()..n {
            let page = match self.fresh_page(&self.inner.policy) {
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
    /// Checks `params` against the module's [`SysInfo`](crate::SysInfo)
    /// ([`check_params`]), then TDH.MNG.INIT.
    ///
    /// A parameter error is found before any SEAMCALL; what the host cannot
    /// know (see [`check_params`]) comes back as the module's status.
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
        // it (the `FrameAllocator` contract); a page is 1024-byte aligned as TD_PARAMS
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
                self.inner.max_vcpus = params.max_vcpus();
                // Nothing is mapped yet: the root's entries are of the level
                // below the EPT's top.
                self.inner.tree.set_top(levels - 1);
                Ok(self.into_state())
            }
            Err(e) => self.fail(e),
        }
    }
}

/// Checks `p` with the rules TDH.MNG.INIT applies, in the module's order,
/// against what the module reports in `info`; returns the EPT levels (4 or
/// 5). [`Td::init`] calls it before any SEAMCALL; a VMM may call it earlier.
///
/// The rules are TDX module 1.5.01's and 1.5.05's (`tdh_mng_init.c` and the
/// helpers it calls, `helpers.c`, `virt_msr_helpers.c`), and the first one
/// broken is the one the module would report:
///
/// 1. ATTRIBUTES within ATTRIBUTES_FIXED0/1; a migratable TD neither DEBUG
///    nor PERFMON.
/// 2. XFAM within XFAM_FIXED0/1 (the module's XFAM_FIXED0 already leaves
///    out what the CPU does not support); AVX-512 only with AVX and its
///    three bits together; CET's two bits together; AMX's two bits
///    together.
/// 3. max_vcpus 1..=MAX_VCPUS_PER_TD.
/// 4. No L2 VMs: the library does not support TD partitioning (the module
///    accepts up to 3, each needing one more TDCS page, and none in a
///    migratable TD).
/// 5. Reserved bytes 20..24 zero; config_flags only GPAW,
///    FLEXIBLE_PENDING_VE, NO_RBP_MOD; EPTP write-back with a 4- or 5-level
///    walk and nothing else, 5 levels if GPAW; TSC frequency 4..=400;
///    reserved bytes 42..80, msr_config_ctls bits 7:1 and bytes 232..256
///    zero.
/// 6. Each CPUID entry only with bits the module lets the host configure,
///    when the module's configurable leaves are module 1.5.01's
///    ([`CPUID_CONFIG_1_5_01`], checked in entry order) or 1.5.05's
///    ([`CPUID_CONFIG_1_5_05`], checked in the module's order,
///    [`CPUID_CONFIG_ORDER_1_5_05`]): the metadata reports only the
///    CONFIG_DIRECT bits of each leaf, not the ALLOW_DIRECT ones, so the
///    library knows the full masks only for those lists. For another list
///    the bits are left to the module.
/// 7. With 1.5.05's list, the CPUID(0x1F) entries all zero or a well-formed
///    topology ([`ParamsError::CpuidTopology`]).
/// 8. Every CPUID entry from the module's NUM_CPUID_CONFIG on zero (the
///    module's `reserved_3`).
/// 9. `ia32_arch_capabilities_config` zero unless msr_config_ctls bit 0 is
///    set; and, with either known CPUID list, only the bits of
///    [`IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01`] (1.5.05 has the same
///    mask).
///
/// Left to the module, because they depend on the CPU and `SysInfo` does
/// not say: whether the CPU has 5-level EPT and a physical address width
/// of at least 49 bits (5-level EPT, GPAW); the CPU's family/model/stepping
/// (leaf 1 EAX must be 0 or the CPU's own for a non-migratable TD, or an
/// older CPU model the module lists for a migratable one); whether HLE and
/// RTM come out equal once the CPU's own TSX bits mask them, and whether
/// the CPU has IA32_TSX_CTRL (`TDX_INCORRECT_MSR_VALUE|0x10A`); the TDCS
/// page count (the library adds TDCS_BASE_SIZE); IA32_TSC_ADJUST and
/// IA32_MISC_ENABLE at the time of the call.
///
/// # Errors
///
/// The first rule broken, as a [`ParamsError`].
pub fn check_params(info: &crate::SysInfo, p: &TdParams) -> Result<u8, ParamsError> {
    let fixed = |v: u64, (f0, f1): (u64, u64)| v & !f0 == 0 && v & f1 == f1;
    let attributes = p.attributes();
    if !fixed(attributes, info.attributes_fixed) {
        return Err(ParamsError::Attributes(attributes));
    }
    if attributes & TdParams::ATTRIBUTE_MIGRATABLE != 0
        && attributes & (TdParams::ATTRIBUTE_DEBUG | TdParams::ATTRIBUTE_PERFMON) != 0
    {
        return Err(ParamsError::MigratableAttributes(attributes));
    }
    let xfam = p.xfam();
    if !fixed(xfam, info.xfam_fixed) || xfam & TdParams::XFAM_FIXED1 != TdParams::XFAM_FIXED1 {
        return Err(ParamsError::Xfam(xfam));
    }
    let all_or_none = |mask: u64| xfam & mask == 0 || xfam & mask == mask;
    // The module's AVX rule is about bit 5 (opmask) only; bits 6/7
    // without AVX and without bit 5 break the "together" rule.
    const XFAM_AVX512_OPMASK: u64 = 1 << 5;
    let rule = if xfam & XFAM_AVX512_OPMASK != 0 && xfam & TdParams::XFAM_AVX == 0 {
        Some(XfamRule::Avx512NeedsAvx)
    } else if !all_or_none(TdParams::XFAM_AVX512) {
        Some(XfamRule::Avx512Together)
    } else if !all_or_none(TdParams::XFAM_CET) {
        Some(XfamRule::CetTogether)
    } else if !all_or_none(TdParams::XFAM_AMX) {
        Some(XfamRule::AmxTogether)
    } else {
        None
    };
    if let Some(rule) = rule {
        return Err(ParamsError::XfamCombination { xfam, rule });
    }
    if p.max_vcpus() == 0 || p.max_vcpus() > info.vcpu_limit() {
        return Err(ParamsError::MaxVcpus {
            asked: p.max_vcpus(),
            max: info.vcpu_limit(),
        });
    }
    if p.num_l2_vms() != 0 {
        return Err(ParamsError::L2Vms(p.num_l2_vms()));
    }
    let bytes = p.as_bytes();
    let reserved = |range: core::ops::Range<usize>| {
        range
            .into_iter()
            .find(|&o| bytes[o] != 0)
            .map_or(Ok(()), |offset| Err(ParamsError::Reserved { offset }))
    };
    reserved(20..24)?;
    let known = TdParams::CONFIG_FLAG_MAX_GPAW
        | TdParams::CONFIG_FLAG_FLEXIBLE_PENDING_VE
        | TdParams::CONFIG_FLAG_NO_RBP_MOD;
    if p.config_flags() & !known != 0 {
        return Err(ParamsError::ConfigFlags(p.config_flags()));
    }
    let eptp = p.eptp_controls().raw();
    let pwl = ((eptp >> 3) & 0b111) as u8;
    let gpaw = p.config_flags() & TdParams::CONFIG_FLAG_MAX_GPAW != 0;
    if eptp & 0b111 != 6 || !(pwl == 3 || pwl == 4) || eptp & !0b11_1111 != 0 || (gpaw && pwl != 4)
    {
        return Err(ParamsError::Eptp(eptp));
    }
    if !(TSC_FREQUENCY_MIN..=TSC_FREQUENCY_MAX).contains(&p.tsc_frequency()) {
        return Err(ParamsError::TscFrequency(p.tsc_frequency()));
    }
    reserved(42..80)?;
    if p.msr_config_ctls() & !TdParams::MSR_CONFIG_IA32_ARCH_CAPABILITIES != 0 {
        return Err(ParamsError::Reserved { offset: 19 });
    }
    reserved(232..256)?;
    let count = info.cpuid_config.len();
    let same_leaves = |table: &[CpuidConfigRule]| {
        count == table.len()
            && info
                .cpuid_config
                .iter()
                .zip(table)
                .all(|(&(leaf, _), rule)| leaf == rule.leaf_subleaf())
    };
    // The module's CPUID table, when the library knows it, and the order
    // the module checks its entries in.
    const ORDER_1_5_01: [usize; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    let known: Option<(&[CpuidConfigRule], &[usize], bool)> = if same_leaves(&CPUID_CONFIG_1_5_01) {
        Some((&CPUID_CONFIG_1_5_01, &ORDER_1_5_01, false))
    } else if same_leaves(&CPUID_CONFIG_1_5_05) {
        Some((&CPUID_CONFIG_1_5_05, &CPUID_CONFIG_ORDER_1_5_05, true))
    } else {
        None
    };
    if let Some((table, order, topology)) = known {
        for &index in order {
            let rule = &table[index];
            let values = p.cpuid_values()[index];
            if let Some((r, bits)) = rule.refused_bits(&values) {
                return Err(ParamsError::CpuidBits {
                    index,
                    leaf: rule.leaf.leaf,
                    subleaf: rule.leaf.subleaf.unwrap_or(CPUID_SUBLEAF_NONE),
                    register: ["EAX", "EBX", "ECX", "EDX"][r],
                    bits,
                });
            }
        }
        if topology {
            let subleaves: [[u32; 4]; 6] =
                core::array::from_fn(|s| p.cpuid_values()[12 + s].registers());
            if let Some(subleaf) = cpuid_1f_error(&subleaves) {
                return Err(ParamsError::CpuidTopology { subleaf });
            }
        }
    }
    if let Some(index) = p.first_nonzero_cpuid_value(count) {
        return Err(ParamsError::CpuidEntryUnused { index, count });
    }
    let arch = p.ia32_arch_capabilities_config();
    if arch != 0 && p.msr_config_ctls() & TdParams::MSR_CONFIG_IA32_ARCH_CAPABILITIES == 0 {
        return Err(ParamsError::ArchCapabilitiesNotEnabled(arch));
    }
    if known.is_some() && arch & !IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01 != 0 {
        return Err(ParamsError::ArchCapabilities {
            config: arch,
            bits: arch & !IA32_ARCH_CAPABILITIES_CONFIG_MASK_1_5_01,
        });
    }
    Ok(pwl + 1)
}

/// Module 1.5.05's check of the six CPUID(0x1F) entries (`check_cpuid_1f`,
/// `src/common/helpers/helpers.c`): `None` if all are zero (the module
/// then takes the CPU's own topology) or they list levels of increasing
/// type (ECX bits 15:8: SMT 1, CORE 2, MODULE 3, TILE 4, DIE 5) including
/// CORE, ended by an INVALID (0) level or the sixth sub-leaf; else the
/// first sub-leaf found wrong. As in the module, a level after an INVALID
/// one is compared with INVALID.
fn cpuid_1f_error(subleaves: &[[u32; 4]; 6]) -> Option<u32> {
    if subleaves[0] == [0; 4] {
        return (1u32..6).find(|&s| subleaves[s as usize] != [0; 4]);
    }
    let (mut prev, mut core) = (0, false);
    for (s, regs) in (0u32..).zip(subleaves) {
        let level = regs[2] >> 8 & 0xFF;
        if level != 0 {
            if level <= prev || level >= 6 {
                return Some(s);
            }
            core |= level == 2;
        } else if s == 0 || !core {
            return Some(s);
        }
        prev = level;
    }
    None
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
        self.add_part(gpa, frame, contents, measure)
    }

    /// Adds a whole image of initial private memory at `gpa`, one 4K page
    /// per frame taken from `frames` in order: [`add_page`](Td::add_page)
    /// of each 4 KiB of `image`, the last page padded with zeros, each
    /// measured with TDH.MR.EXTEND when `measure` is set (the MRTD then
    /// follows [`crate::measure`] page by page).
    ///
    /// Checked before any SEAMCALL, from arithmetic and the TD's own
    /// record: `gpa` is 4K-aligned, `frames` holds at least one frame per
    /// page ([`TdError::ImageFrames`]), and nothing is mapped in the
    /// range ([`TdError::Occupied`]). An empty image adds nothing.
    ///
    /// Frames not used stay in `frames`. On an error during the adds, the
    /// pages added before it stay with the TD (teardown reclaims them),
    /// the error names the GPA where it stopped, and the frame of that
    /// page comes back in `returned` when the module did not take it.
    ///
    /// Needs no stack buffer: the image is copied to the TD's staging page
    /// through the platform's direct map, and the padding comes from a
    /// static page of zeros.
    ///
    /// # Examples
    ///
    /// ```
    /// # use tdx_api::{CpuId, TdxModule, td::{TdConfig, TdHost}};
    /// # use tdx_sim::{MachineDesc, Simulator};
    /// # const GIB: u64 = 1 << 30;
    /// # let desc = MachineDesc::new(vec![(4 * GIB, 8 * GIB)]).with_cpus(1, 2);
    /// # let sim = Simulator::new(desc.clone()).unwrap();
    /// # let module = TdxModule::init(&sim, &sim).unwrap().configure(&desc.plan_input()).unwrap();
    /// # let host = TdHost::new(module.init_extensions().unwrap()).unwrap();
    /// use tdx_api::{FrameAllocator, Placement, td::GuestFrame};
    /// use tdx_types::{Gpa, Size4K};
    ///
    /// let params = TdConfig::builder().max_vcpus(1).build().to_params();
    /// let mut td = host.build_td(&params).unwrap();
    /// // A 10 KiB firmware image: three pages, the last one padded.
    /// let image: Vec<u8> = (0..10 * 1024).map(|i| i as u8).collect();
    /// let run = sim.alloc_pages(3, 1, Placement::Anywhere).unwrap();
    /// let tokens: Vec<GuestFrame<Size4K>> = run
    ///     .iter()
    ///     // SAFETY: allocated above for this TD and left alone.
    ///     .map(|f| unsafe { GuestFrame::<Size4K>::new(f) }.unwrap())
    ///     .collect();
    /// let mut frames = tokens.into_iter();
    /// td.add_image(Gpa::new(0xffd000), &image, &mut frames, true)
    ///     .map_err(|f| f.error)
    ///     .unwrap();
    /// assert_eq!(frames.len(), 0);
    /// # td.create_vcpu(CpuId(0), tdx_api::InitialRcx(0), tdx_api::X2ApicId(0)).unwrap();
    /// # let td = td.finalize().map_err(|f| f.error).unwrap();
    /// # let report = td.teardown();
    /// # assert!(report.is_clean());
    /// ```
    #[doc(alias = "TDH.MEM.PAGE.ADD")]
    #[doc(alias = "TDH.MR.EXTEND")]
    pub fn add_image<I>(
        &mut self,
        gpa: Gpa,
        image: &[u8],
        frames: &mut I,
        measure: bool,
    ) -> Result<(), TdFailure<Option<GuestFrame<Size4K>>>>
    where
        I: ExactSizeIterator<Item = GuestFrame<Size4K>>,
    {
        let pages = image.len().div_ceil(4096);
        if pages > frames.len() {
            let e = TdError::ImageFrames {
                gpa,
                needed: pages,
                given: frames.len(),
            };
            return Err(TdFailure::new(e, None));
        }
        if !gpa.as_u64().is_multiple_of(4096) {
            let why = "an image starts on a 4 KiB boundary";
            return Err(TdFailure::new(TdError::Gpa { gpa, why }, None));
        }
        let at = |i: usize| Gpa::new(gpa.as_u64() + i as u64 * 4096);
        let end = (pages as u64)
            .checked_mul(4096)
            .and_then(|len| gpa.as_u64().checked_add(len));
        if end.is_none() {
            let why = "the image runs past the end of the address space";
            return Err(TdFailure::new(TdError::Gpa { gpa, why }, None));
        }
        for i in 0..pages {
            if let Some(m) = self.mapping(at(i)) {
                let by = super::Occupant::Page {
                    at: m.gpa,
                    size: m.size,
                };
                let e = TdError::Occupied { gpa: at(i), by };
                return Err(TdFailure::new(e, None));
            }
        }
        for (i, chunk) in image.chunks(4096).enumerate() {
            let Some(frame) = frames.next() else {
                // An ExactSizeIterator that gave fewer than its len.
                let e = TdError::ImageFrames {
                    gpa,
                    needed: pages,
                    given: i,
                };
                return Err(TdFailure::new(e, None));
            };
            self.add_part(at(i), frame, chunk, measure)?;
        }
        Ok(())
    }

    /// [`add_page`](Td::add_page) of `contents` (at most 4 KiB), the rest
    /// of the page zeros.
    fn add_part(
        &mut self,
        gpa: Gpa,
        frame: GuestFrame<Size4K>,
        contents: &[u8],
        measure: bool,
    ) -> Result<(), TdFailure<Option<GuestFrame<Size4K>>>> {
        let back = |error, frame| Err(TdFailure::new(error, frame));
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
        // The rest of the page: zeros (nothing for a whole page; callers
        // pass at most 4 KiB).
        let pad = ZEROS.get(contents.len()..).unwrap_or_default();
        let tail = Hpa::new(source.hpa().as_u64() + contents.len() as u64);
        // SAFETY: as above; the padding ends where the page ends.
        unsafe { p.write_phys(tail, pad) };
        if let Err(e) = self.host().pair_get(target, &self.inner.policy) {
            slot.store(mirror::Entry::Free);
            return back(e, Some(frame));
        }
        p.clflush_page(target);
        let r = self.retry(Leaf::MEM_PAGE_ADD.v0(), Operand::Gpa(gpa), || {
            // SAFETY: `target` is a guest frame the caller promised to leave
            // alone (GuestFrame::new); on success the module owns it and the
            // TD records it in its tree. `source` is our host page.
            unsafe { leaf::tdh_mem_page_add(b, info, tdr, target, source) }.status
        });
        if let Err(e) = r {
            self.host().pair_put(target);
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
                    &self.inner.policy,
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

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use tdx_types::{abi::CpuidValues, metadata::TdxFeatures0};
    use zerocopy::FromBytes;

    use super::*;

    /// What a module 1.5.01 on the simulator's default CPU reports (it has
    /// no MAX_VCPUS_PER_TD field).
    fn info() -> crate::SysInfo {
        crate::SysInfo {
            version: None,
            features0: TdxFeatures0::new(),
            max_tdmrs: 64,
            max_reserved_per_tdmr: 16,
            pamt_entry_size: [16; 3],
            tdr_base_size: 4096,
            tdcs_base_size: 6 * 4096,
            tdvps_base_size: 6 * 4096,
            attributes_fixed: (TdParams::ATTRIBUTES_FIXED0_1_5_01, 0),
            xfam_fixed: (0x6_1BE7, 3),
            max_vcpus_per_td: None,
            cpuid_config: CPUID_CONFIG_1_5_01
                .iter()
                .map(|r| (r.leaf_subleaf(), r.config_direct.to_metadata()))
                .collect::<Vec<_>>(),
            cmrs: None,
            memory_pool_required_pages: 0,
            ext_required: false,
            dpamt_bitmap_bits: None,
        }
    }

    fn base() -> TdParams {
        let mut p = TdParams::new();
        p.set_xfam(3);
        p.set_max_vcpus(1);
        p.set_eptp_controls(tdx_types::abi::EptpControls::from_raw(0x1e));
        p.set_tsc_frequency(100);
        p
    }

    /// [`info`] with module 1.5.05's CPUID list and MAX_VCPUS_PER_TD.
    fn info_1_5_05() -> crate::SysInfo {
        crate::SysInfo {
            max_vcpus_per_td: Some(576),
            cpuid_config: CPUID_CONFIG_1_5_05
                .iter()
                .map(|r| (r.leaf_subleaf(), r.config_direct.to_metadata()))
                .collect::<Vec<_>>(),
            ..info()
        }
    }

    fn with_cpuid(mut p: TdParams, entries: &[(usize, [u32; 4])]) -> TdParams {
        for &(i, [a, b, c, d]) in entries {
            p.set_cpuid_value(i, CpuidValues::new(a, b, c, d)).unwrap();
        }
        p
    }

    #[test]
    fn module_1_5_05s_cpuid_rules() {
        let info5 = info_1_5_05();
        let lvl = |n: u32, t: u32| n | t << 8;
        let smt_core = [(12, [1, 2, lvl(0, 1), 0]), (13, [4, 16, lvl(1, 2), 0])];
        // Leaf 7/1 EAX bit 26 and EDX 0x430; a topology in entries 12-13.
        let p = with_cpuid(base(), &[(6, [1 << 26, 0, 0, 0x430])]);
        assert_eq!(check_params(&info5, &with_cpuid(p, &smt_core)), Ok(4));
        // 1.5.01 refuses bit 26 (and entry 12 is reserved there).
        let p = with_cpuid(base(), &[(6, [1 << 26, 0, 0, 0])]);
        assert!(matches!(
            check_params(&info(), &p),
            Err(ParamsError::CpuidBits { index: 6, .. })
        ));
        // Entry 11 (0x23) is checked after the 0x1F entries.
        let p = with_cpuid(base(), &[(11, [0x10, 0, 0, 0]), (14, [0, 0, 0, 1])]);
        assert!(matches!(
            check_params(&info5, &p),
            Err(ParamsError::CpuidBits {
                index: 14,
                leaf: 0x1F,
                subleaf: 2,
                register: "EDX",
                bits: 1
            })
        ));
        // Topologies: SMT alone, CORE then SMT, a gap after a zero
        // sub-leaf 0.
        for (entries, subleaf) in [
            (alloc::vec![(12, [1, 2, lvl(0, 1), 0])], 1),
            (
                alloc::vec![(12, [3, 8, lvl(0, 2), 0]), (13, [4, 16, lvl(1, 1), 0])],
                1,
            ),
            (alloc::vec![(14, [1, 2, lvl(0, 1), 0])], 2),
        ] {
            assert_eq!(
                check_params(&info5, &with_cpuid(base(), &entries)),
                Err(ParamsError::CpuidTopology { subleaf }),
                "{entries:?}"
            );
        }
        // The topology comes before reserved_3 (entry 18).
        let p = with_cpuid(base(), &[(12, [1, 2, lvl(0, 1), 0]), (18, [1, 0, 0, 0])]);
        assert_eq!(
            check_params(&info5, &p),
            Err(ParamsError::CpuidTopology { subleaf: 1 })
        );
        let p = with_cpuid(base(), &[(18, [1, 0, 0, 0])]);
        assert_eq!(
            check_params(&info5, &p),
            Err(ParamsError::CpuidEntryUnused {
                index: 18,
                count: 18
            })
        );
    }

    #[test]
    fn the_vcpu_limit_with_and_without_max_vcpus_per_td() {
        let mut p = base();
        p.set_max_vcpus(0xFFFF);
        assert_eq!(check_params(&info(), &p), Ok(4), "1.5.01: 0xFFFF");
        assert_eq!(
            check_params(&info_1_5_05(), &p),
            Err(ParamsError::MaxVcpus {
                asked: 0xFFFF,
                max: 576
            })
        );
        p.set_max_vcpus(576);
        assert_eq!(check_params(&info_1_5_05(), &p), Ok(4));
    }

    #[test]
    fn the_avx512_labels() {
        for (xfam, rule) in [
            (0x23, XfamRule::Avx512NeedsAvx),
            (0xE3, XfamRule::Avx512NeedsAvx),
            (0x43, XfamRule::Avx512Together),
            (0xC3, XfamRule::Avx512Together),
            (0x67, XfamRule::Avx512Together),
        ] {
            let mut p = base();
            p.set_xfam(xfam);
            assert_eq!(
                check_params(&info(), &p),
                Err(ParamsError::XfamCombination { xfam, rule }),
                "{xfam:#x}"
            );
        }
    }

    #[test]
    fn every_reserved_byte_before_the_cpuid_area() {
        let info = info();
        assert_eq!(check_params(&info, &base()), Ok(4));
        for offset in (20..24).chain(42..80).chain(232..256) {
            let mut b = [0u8; 1024];
            b.copy_from_slice(base().as_bytes());
            b[offset] = 0x40;
            let p = TdParams::read_from_bytes(&b).unwrap();
            assert_eq!(
                check_params(&info, &p),
                Err(ParamsError::Reserved { offset }),
                "byte {offset}"
            );
        }
        for bit in 1..8 {
            let mut p = base();
            p.set_msr_config_ctls(1 << bit);
            assert_eq!(
                check_params(&info, &p),
                Err(ParamsError::Reserved { offset: 19 })
            );
        }
    }

    #[test]
    fn the_module_order_between_rules() {
        let info = info();
        // reserved_0 comes before config_flags, which comes before EPTP,
        // then TSC, then reserved_1.
        let mut b = [0u8; 1024];
        b.copy_from_slice(base().as_bytes());
        b[21] = 1;
        b[50] = 1;
        let mut p = TdParams::read_from_bytes(&b).unwrap();
        p.set_config_flags(1 << 5);
        p.set_eptp_controls(tdx_types::abi::EptpControls::from_raw(0));
        p.set_tsc_frequency(0);
        assert_eq!(
            check_params(&info, &p),
            Err(ParamsError::Reserved { offset: 21 })
        );
        let mut b = [0u8; 1024];
        b.copy_from_slice(p.as_bytes());
        b[21] = 0;
        let mut p = TdParams::read_from_bytes(&b).unwrap();
        assert_eq!(
            check_params(&info, &p),
            Err(ParamsError::ConfigFlags(1 << 5))
        );
        p.set_config_flags(0);
        assert_eq!(check_params(&info, &p), Err(ParamsError::Eptp(0)));
        p.set_eptp_controls(tdx_types::abi::EptpControls::from_raw(0x1e));
        assert_eq!(check_params(&info, &p), Err(ParamsError::TscFrequency(0)));
        p.set_tsc_frequency(4);
        assert_eq!(
            check_params(&info, &p),
            Err(ParamsError::Reserved { offset: 50 })
        );
        // XFAM before MAX_VCPUS; ATTRIBUTES before XFAM.
        let mut p = base();
        p.set_max_vcpus(0);
        p.set_xfam(0x803);
        assert_eq!(
            check_params(&info, &p),
            Err(ParamsError::XfamCombination {
                xfam: 0x803,
                rule: XfamRule::CetTogether
            })
        );
        p.set_attributes(1 << 1);
        assert_eq!(check_params(&info, &p), Err(ParamsError::Attributes(2)));
    }
}
