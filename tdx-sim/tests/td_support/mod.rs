//! Fixtures shared by the TD-leaf tests (`tests/td_*.rs`): a simulated host
//! in SYS_READY, one safe wrapper per raw `tdx_sys` leaf, raw SEAMCALLs with
//! exact registers (for inputs the typed leaves cannot express), TD_PARAMS,
//! and a TD builder that drives the raw leaves, through the simulator or a
//! trace recorder around it, to a given stage and through the canonical
//! teardown (VP.FLUSH, VPFLUSHDONE, CACHE.WB, KEY.FREEID, RECLAIM).
//!
//! Everything here issues raw leaves and asserts the statuses the model
//! gives; nothing retries except where a helper says so.

// UNSAFETY: the wrappers below call the raw `unsafe fn` leaves of tdx-sys
// and the `unsafe` Platform accessors, only on backends that end in the
// simulator (`SimHost`), whose memory is simulated.
#![allow(unsafe_code)]
// Each test crate uses a different part of the fixtures.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
};

use tdx_api::{CpuId, Placement, Platform, platform::on_each_package};
use tdx_sim::{MachineDesc, Profile, Recorder, Simulator, testkit};
use tdx_sys::{
    Completion, RegShape, Seamcall, SeamcallArgs, leaf,
    leaf::{PageMetadata, SeptOut},
};
use tdx_types::{
    Gpa, Hpa, LeafVersion, OperandId, Pfn, PfnRun, TdxLevel, TdxStatus,
    metadata::{MdFieldId, PamtPageType},
    regs::{KeyedPa, PageInfo, SeptDetails, SeptState, TdrAndFlags},
};

pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const PAGE: u64 = 4096;
/// First byte of RAM that no TDMR covers in [`host`].
pub(crate) const OUTSIDE_TDMR: u64 = 8 * GIB;

// ---------------------------------------------------------------------------
// Hosts
// ---------------------------------------------------------------------------

/// A backend whose SEAMCALLs and host services end in the simulator,
/// directly or through a trace recorder. The simulator's memory is a map of
/// byte arrays: whatever the registers name, no real memory is read,
/// written or handed over, which is what every `// SAFETY:` below relies on.
pub(crate) trait SimHost: Seamcall + Platform + Sync {
    /// The simulator behind the host.
    fn sim(&self) -> &Simulator;

    /// The backend the leaf wrappers below issue their SEAMCALLs through
    /// instead of the host itself, if any: the real SEAMCALL instruction
    /// served by the simulator ([`via_trap`]).
    #[cfg(all(feature = "trap", target_os = "linux", target_arch = "x86_64"))]
    fn trap(&self) -> Option<tdx_sim::trap::TrapBackend<'_>> {
        None
    }
}

/// Whether this run issues the leaf wrappers' and [`raw`]'s SEAMCALLs on
/// the simulator itself through the real instruction
/// (`tdx_sim::trap::TrapBackend`): with the feature `trap`, when the
/// environment has `TDX_SIM_BACKEND=trap`. The tests' expectations (exact
/// statuses, registers, accounting) are then checked through the `Cpu`
/// backend's machine code.
pub(crate) fn via_trap() -> bool {
    cfg!(all(
        feature = "trap",
        target_os = "linux",
        target_arch = "x86_64"
    )) && std::env::var("TDX_SIM_BACKEND").as_deref() == Ok("trap")
}

impl SimHost for Simulator {
    fn sim(&self) -> &Simulator {
        self
    }

    #[cfg(all(feature = "trap", target_os = "linux", target_arch = "x86_64"))]
    fn trap(&self) -> Option<tdx_sim::trap::TrapBackend<'_>> {
        via_trap().then(|| tdx_sim::trap::TrapBackend::new(self).expect("the trap handler"))
    }
}

impl<W: Write + Send> SimHost for Recorder<'_, Simulator, Simulator, W> {
    fn sim(&self) -> &Simulator {
        self.backend()
    }
}

/// RAM [4 GiB, 9 GiB), one 4 GiB TDMR [4 GiB, 8 GiB) with its PAMT at its
/// top (a reserved area), two packages of two LPs (LPs 0-1 on package 0,
/// 2-3 on package 1), module 1.5, brought up to SYS_READY with every TDMR
/// block initialized. [`OUTSIDE_TDMR`] starts 1 GiB of RAM outside any TDMR.
pub(crate) fn host() -> Simulator {
    host_with(Profile::tdx_1_5(), |d| d)
}

/// [`host`] with a changed profile or machine description.
pub(crate) fn host_with(profile: Profile, f: impl FnOnce(MachineDesc) -> MachineDesc) -> Simulator {
    let desc = f(MachineDesc::new(vec![(4 * GIB, 9 * GIB)])
        .with_cpus(2, 2)
        .with_profile(profile));
    let sim = Simulator::new(desc).unwrap();
    testkit::bring_up(&sim, &layout(), Default::default());
    sim
}

/// The TDMR layout of [`host`].
pub(crate) fn layout() -> Vec<tdx_types::abi::TdmrInfo> {
    testkit::simple_layout(&[(4 * GIB, 8 * GIB)], 4)
}

/// A page of the PAMT of [`host`]'s TDMR (PT_RSVD in the PAMT).
pub(crate) fn pamt_page() -> Pfn {
    Pfn::new(layout()[0].pamt_4k().0 / PAGE)
}

/// The global (module) KeyID.
pub(crate) fn global_hkid<H: Platform + ?Sized>(h: &H) -> u16 {
    h.hardware().keyid_partition.global_keyid() as u16
}

/// The first private KeyID after the global one (free on a fresh host).
pub(crate) fn td_hkid<H: Platform + ?Sized>(h: &H) -> u16 {
    global_hkid(h) + 1
}

/// The KeyID shift of [`host`]'s machine.
pub(crate) fn keyid_shift(sim: &Simulator) -> u32 {
    sim.machine().hkid_start_bit()
}

/// `pa` with `hkid` in its KeyID bits.
pub(crate) fn with_hkid(sim: &Simulator, pa: u64, hkid: u16) -> u64 {
    pa | u64::from(hkid) << keyid_shift(sim)
}

/// One host page.
pub(crate) fn page<H: Platform + ?Sized>(h: &H) -> Pfn {
    h.alloc_pages(1, 1, Placement::Anywhere).unwrap().first()
}

/// `count` contiguous host pages aligned to `align` pages.
pub(crate) fn run<H: Platform + ?Sized>(h: &H, count: u64, align: u64) -> PfnRun {
    h.alloc_pages(count, align, Placement::Anywhere).unwrap()
}

/// A host page of RAM outside every TDMR.
pub(crate) fn outside_page<H: Platform + ?Sized>(h: &H) -> Pfn {
    let p = Pfn::new(OUTSIDE_TDMR / PAGE);
    h.alloc_pages(1, 1, Placement::Exact(p)).unwrap().first()
}

/// Writes `data` at `pa` through the host's direct map.
pub(crate) fn write<H: SimHost + ?Sized>(h: &H, pa: Hpa, data: &[u8]) {
    // SAFETY: `SimHost`: simulated memory; callers write host pages they
    // allocated (a write to module memory is recorded as a violation).
    unsafe { h.write_phys(pa, data) }
}

/// Gives `run` back to the host allocator.
pub(crate) fn free<H: SimHost + ?Sized>(h: &H, run: PfnRun) {
    // SAFETY: `SimHost`: simulated memory; a free that breaks the rules is
    // recorded as a violation, which is what some tests check.
    unsafe { h.free_pages(run) }
}

/// Frees one page.
pub(crate) fn free_page<H: SimHost + ?Sized>(h: &H, p: Pfn) {
    free(h, PfnRun::try_new(p, 1).unwrap());
}

/// Runs `f` on logical processor `lp` and returns what it returned.
pub(crate) fn on<H: Platform + ?Sized, T: Send>(h: &H, lp: u32, f: impl FnMut() -> T + Send) -> T {
    let mut f = f;
    let mut out = None;
    h.on_cpu(CpuId(lp), &mut || out = Some(f()));
    out.expect("on_cpu runs the closure")
}

// ---------------------------------------------------------------------------
// Statuses
// ---------------------------------------------------------------------------

/// `code` with operand `o` (`E|X` in the model).
pub(crate) fn e(code: TdxStatus, o: OperandId) -> TdxStatus {
    code.with_operand(o)
}

/// `TDX_OPERAND_INVALID|o`.
pub(crate) fn invalid(o: OperandId) -> TdxStatus {
    e(TdxStatus::OPERAND_INVALID, o)
}

/// `TDX_PAGE_METADATA_INCORRECT|o`.
pub(crate) fn metadata(o: OperandId) -> TdxStatus {
    e(TdxStatus::PAGE_METADATA_INCORRECT, o)
}

/// `TDX_OPERAND_ADDR_RANGE_ERROR|o`.
pub(crate) fn range_error(o: OperandId) -> TdxStatus {
    e(TdxStatus::OPERAND_ADDR_RANGE_ERROR, o)
}

/// `TDX_OPERAND_BUSY|o`.
pub(crate) fn busy(o: OperandId) -> TdxStatus {
    e(TdxStatus::OPERAND_BUSY, o)
}

#[track_caller]
pub(crate) fn ok(what: &str, s: TdxStatus) {
    assert_eq!(s, TdxStatus::SUCCESS, "{what}: {s}");
}

/// S-EPT details as RDX carries them: level in bits 2:0, state in 15:8.
pub(crate) fn level_state(level: u8, state: SeptState) -> u64 {
    u64::from(level) | u64::from(state.0) << 8
}

/// The architectural S-EPT entry the module reports in RCX
/// (`set_arch_septe_details_in_vmm_regs` in Intel's
/// `src/common/memory_handlers/sept_manager.c`): FREE shows only bit 63
/// (SVE); a leaf of any size is masked with `0x800FFFFFFFFFF0FF`, so it
/// shows its frame, SVE, MT = WB, IPAT and PS, plus RWX when MAPPED; a
/// non-leaf entry is masked with `0x87`, so it shows RWX only (NL_MAPPED
/// `0x7`, NL_BLOCKED `0x0`) and never the S-EPT page below.
pub(crate) fn arch_entry(state: SeptState, frame: Option<Pfn>) -> u64 {
    let leaf = |rwx: u64| {
        let f = frame.unwrap_or_else(|| panic!("a {state:?} leaf has a frame"));
        f.hpa().as_u64() | 0x8000_0000_0000_00F0 | rwx
    };
    let no_frame = |v: u64| {
        assert!(frame.is_none(), "RCX shows no frame for {state:?}");
        v
    };
    match state {
        SeptState::FREE => no_frame(1 << 63),
        SeptState::MAPPED => leaf(0x7),
        SeptState::PENDING | SeptState::BLOCKED | SeptState::PENDING_BLOCKED => leaf(0),
        SeptState::NL_MAPPED => no_frame(0x7),
        SeptState::NL_BLOCKED | SeptState::REMOVED => no_frame(0),
        other => panic!("no architectural entry for {other:?} in the tests"),
    }
}

/// Checks S-EPT details: RDX exactly (level, public state), and RCX
/// exactly ([`arch_entry`]; `frame` is the page a leaf maps, `None` for
/// FREE and non-leaf entries).
#[track_caller]
pub(crate) fn assert_details(out: SeptOut, level: u8, state: SeptState, frame: Option<Pfn>) {
    let d = SeptDetails::from_regs(out.rcx, out.rdx);
    assert_eq!(
        out.rdx,
        level_state(level, state),
        "RDX: level/state (got {:?})",
        d.level_state
    );
    assert_eq!(
        out.rcx,
        arch_entry(state, frame),
        "RCX: the architectural entry of {state:?} (got {:#x})",
        out.rcx
    );
}

// ---------------------------------------------------------------------------
// Raw calls
// ---------------------------------------------------------------------------

/// One SEAMCALL with exactly these RCX, RDX, R8-R11 (Ret shape): the
/// status and every output register.
pub(crate) fn raw(sim: &Simulator, lv: LeafVersion, regs: [u64; 6]) -> (TdxStatus, SeamcallArgs) {
    let [rcx, rdx, r8, r9, r10, r11] = regs;
    let mut args = SeamcallArgs::regs6(rcx, rdx, r8, r9, r10, r11);
    #[cfg(all(feature = "trap", target_os = "linux", target_arch = "x86_64"))]
    if let Some(t) = sim.trap() {
        // SAFETY: as below: the trap ends in the simulator.
        let s = unsafe { t.seamcall(lv.rax(), &mut args, RegShape::Ret) };
        return (s, args);
    }
    // SAFETY: the simulator's memory is simulated; any register values keep
    // the `Seamcall` contract.
    let s = unsafe { sim.seamcall(lv.rax(), &mut args, RegShape::Ret) };
    (s, args)
}

/// RCX/RDX of a raw call, as the TDH.MEM.* leaves return them.
pub(crate) fn sept_out(a: SeamcallArgs) -> SeptOut {
    SeptOut {
        rcx: a.rcx,
        rdx: a.rdx,
    }
}

/// `PageInfo` for `gpa` at `level` (0 = 4K, 1 = 2M, ...), as raw bits.
pub(crate) fn pinfo(gpa: u64, level: u8) -> u64 {
    gpa | u64::from(level)
}

/// `PageInfo` for `gpa` at `level`.
pub(crate) fn info(gpa: u64, level: u8) -> PageInfo {
    PageInfo::try_new(Gpa::new(gpa), TdxLevel::from_u8(level).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// One safe wrapper per raw leaf (the SAFETY argument is `SimHost`'s)
// ---------------------------------------------------------------------------

macro_rules! sim_leaf {
    ($(#[$m:meta])* $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty => $leaf:path) => {
        $(#[$m])*
        pub(crate) fn $name<H: SimHost + ?Sized>(h: &H, $($arg: $ty),*) -> $ret {
            #[cfg(all(feature = "trap", target_os = "linux", target_arch = "x86_64"))]
            if let Some(t) = h.trap() {
                // SAFETY: as below: the trap ends in the simulator.
                return unsafe { $leaf(&t, $($arg),*) };
            }
            // SAFETY: `SimHost`: the call ends in the simulator, whose memory
            // is simulated, so whatever pages the arguments name, no real
            // memory changes hands.
            unsafe { $leaf(h, $($arg),*) }
        }
    };
}

sim_leaf!(mng_create(tdr: Pfn, hkid: u16) -> TdxStatus => leaf::tdh_mng_create);
sim_leaf!(mng_key_config(tdr: Pfn) -> TdxStatus => leaf::tdh_mng_key_config);
sim_leaf!(mng_addcx(page: Pfn, tdr: Pfn) -> TdxStatus => leaf::tdh_mng_addcx);
sim_leaf!(mng_init(tdr: Pfn, params: Hpa) -> Completion<u64> => leaf::tdh_mng_init);
sim_leaf!(mng_rd(tdr: Pfn, field: MdFieldId) -> Completion<u64> => leaf::tdh_mng_rd);
sim_leaf!(mng_vpflushdone(tdr: Pfn) -> TdxStatus => leaf::tdh_mng_vpflushdone);
sim_leaf!(mng_key_freeid(tdr: Pfn) -> TdxStatus => leaf::tdh_mng_key_freeid);
sim_leaf!(mng_key_reclaimid(tdr: Pfn) -> TdxStatus => leaf::tdh_mng_key_reclaimid);
sim_leaf!(vp_create(tdvpr: Pfn, tdr: Pfn) -> TdxStatus => leaf::tdh_vp_create);
sim_leaf!(vp_addcx(page: Pfn, tdvpr: Pfn) -> TdxStatus => leaf::tdh_vp_addcx);
sim_leaf!(
    /// TDH.VP.INIT version 1 (x2APIC ID in R8).
    vp_init_v1(tdvpr: Pfn, rcx: u64, x2apic: u32) -> TdxStatus => leaf::tdh_vp_init
);

/// TDH.VP.INIT as the host's module takes it: version 1 with the x2APIC
/// ID in R8 where the profile lists it (module 1.5.05), else version 0
/// (module 1.5.01 refuses version 1; the x2APIC ID is then not passed).
pub(crate) fn vp_init<H: SimHost + ?Sized>(h: &H, tdvpr: Pfn, rcx: u64, x2apic: u32) -> TdxStatus {
    if h.sim().profile().max_version(tdx_types::Leaf::VP_INIT) >= 1 {
        vp_init_v1(h, tdvpr, rcx, x2apic)
    } else {
        vp_init_v0(h, tdvpr, rcx)
    }
}
sim_leaf!(vp_init_v0(tdvpr: Pfn, rcx: u64) -> TdxStatus => leaf::tdh_vp_init_v0);
sim_leaf!(vp_flush(tdvpr: Pfn) -> TdxStatus => leaf::tdh_vp_flush);
sim_leaf!(mr_extend(tdr: Pfn, gpa: Gpa) -> Completion<SeptDetails> => leaf::tdh_mr_extend);
sim_leaf!(mr_finalize(tdr: Pfn) -> TdxStatus => leaf::tdh_mr_finalize);
sim_leaf!(sept_add(info: PageInfo, tdr: TdrAndFlags, page: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_sept_add);
sim_leaf!(sept_remove(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_sept_remove);
sim_leaf!(sept_rd(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_sept_rd);
sim_leaf!(page_add(info: PageInfo, tdr: Pfn, page: Pfn, source: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_page_add);
sim_leaf!(page_aug(info: PageInfo, tdr: Pfn, page: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_page_aug);
sim_leaf!(range_block(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_range_block);
sim_leaf!(range_unblock(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_range_unblock);
sim_leaf!(track(tdr: Pfn) -> TdxStatus => leaf::tdh_mem_track);
sim_leaf!(page_remove(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_page_remove);
sim_leaf!(page_demote(info: PageInfo, tdr: Pfn, sept: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_page_demote);
sim_leaf!(page_promote(info: PageInfo, tdr: Pfn) -> Completion<SeptOut> => leaf::tdh_mem_page_promote);
sim_leaf!(cache_wb(resume: bool) -> TdxStatus => leaf::tdh_phymem_cache_wb);
sim_leaf!(page_reclaim(page: Pfn) -> Completion<PageMetadata> => leaf::tdh_phymem_page_reclaim);
sim_leaf!(page_wbinvd(page: KeyedPa) -> TdxStatus => leaf::tdh_phymem_page_wbinvd);
sim_leaf!(page_rdmd(page: Pfn) -> Completion<PageMetadata> => leaf::tdh_phymem_page_rdmd);

/// TDH.PHYMEM.PAGE.WBINVD of `p` under `hkid`.
pub(crate) fn wbinvd(sim: &Simulator, p: Pfn, hkid: u16) -> TdxStatus {
    page_wbinvd(
        sim,
        KeyedPa::try_new(p.hpa(), hkid, keyid_shift(sim)).unwrap(),
    )
}

/// The PAMT entry of `p` as TDH.PHYMEM.PAGE.RDMD reports it: type, owner
/// PA, level, and (the simulator's R9) the blocking epoch.
pub(crate) fn rdmd(sim: &Simulator, p: Pfn) -> (PamtPageType, u64, u64, u64) {
    let (s, a) = raw(
        sim,
        tdx_types::Leaf::PHYMEM_PAGE_RDMD.v0(),
        [p.hpa().as_u64(), 0, 0, 0, 0, 0],
    );
    ok("RDMD", s);
    (PamtPageType(a.rcx as u8), a.rdx, a.r8, a.r9)
}

/// The S-EPT entry at `gpa`/`level` as TDH.MEM.SEPT.RD reports it: the
/// state, and the frame a leaf maps (None for FREE and for non-leaf
/// entries, whose RCX shows no frame: see [`arch_entry`]). RCX is checked
/// against [`arch_entry`].
pub(crate) fn sept_state(
    sim: &Simulator,
    tdr: Pfn,
    gpa: u64,
    level: u8,
) -> (SeptState, Option<u64>) {
    let c = sept_rd(sim, info(gpa, level), tdr);
    ok("SEPT.RD", c.status);
    let st = SeptState((c.out.rdx >> 8) as u8);
    // PS (bit 7): a leaf, whose RCX carries its frame.
    let frame = (c.out.rcx & 1 << 7 != 0).then_some(c.out.rcx & 0x000F_FFFF_FFFF_F000);
    assert_eq!(
        c.out.rcx,
        arch_entry(st, frame.map(|f| Pfn::new(f / PAGE))),
        "SEPT.RD {gpa:#x}/{level}: RCX of {st:?}"
    );
    (st, frame)
}

// ---------------------------------------------------------------------------
// TD_PARAMS
// ---------------------------------------------------------------------------

/// A TD_PARAMS image (1024 bytes, `td_params_t` of Intel's module with the 1.5
/// field split: NUM_L2_VMS at 18, MSR_CONFIG_CTLS at 19, reserved_0 20..24,
/// IA32_ARCH_CAPABILITIES_CONFIG at 224, reserved_2 232..256).
#[derive(Clone)]
pub(crate) struct Params(pub(crate) [u8; 1024]);

impl Params {
    /// XFAM x87|SSE, 4 vCPUs, EPTP WB with 4 levels, 2.5 GHz TSC.
    pub(crate) fn new() -> Self {
        let mut p = Self([0; 1024]);
        p.u64(8, 3).u16(16, 4).u64(24, 0x1e).u16(40, 100);
        p
    }

    pub(crate) fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u8(&mut self, off: usize, v: u8) -> &mut Self {
        self.0[off] = v;
        self
    }

    /// Writes the image into a fresh host page and returns its address.
    pub(crate) fn write<H: SimHost + ?Sized>(&self, h: &H) -> Hpa {
        let p = page(h).hpa();
        write(h, p, &self.0);
        p
    }
}

// ---------------------------------------------------------------------------
// A TD driven by raw leaves
// ---------------------------------------------------------------------------

/// How far [`Td::build`] takes a TD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// TDH.MNG.CREATE (HKID assigned).
    Created,
    /// TDH.MNG.KEY.CONFIG on every package.
    KeysConfigured,
    /// Six TDH.MNG.ADDCX.
    TdcsAdded,
    /// TDH.MNG.INIT with [`Params::new`].
    Initialized,
    /// One vCPU (TDVPR + 5 TDCX) initialized on LP 1.
    VcpuReady,
    /// TDH.MR.FINALIZE.
    Runnable,
}

/// A vCPU.
#[derive(Debug, Clone)]
pub(crate) struct Vcpu {
    pub(crate) tdvpr: Pfn,
    pub(crate) tdcx: Vec<Pfn>,
    /// The LP it was initialized on (associated with), if it was.
    pub(crate) lp: Option<u32>,
}

/// A TD and every host page allocated for it.
#[derive(Debug, Clone)]
pub(crate) struct Td {
    pub(crate) tdr: Pfn,
    pub(crate) hkid: u16,
    pub(crate) tdcs: Vec<Pfn>,
    pub(crate) vcpus: Vec<Vcpu>,
    /// S-EPT levels minus one (3 for 4-level EPT).
    pub(crate) pwl: u8,
    /// Every host allocation made for this TD (given to the module or not).
    pub(crate) runs: Vec<PfnRun>,
    /// S-EPT entries this TD has a page under, (level, GPA index at
    /// level), and that page (SEPT.RD does not show it: see
    /// [`arch_entry`]).
    sept: BTreeMap<(u8, u64), Pfn>,
}

/// The LP [`Stage::VcpuReady`] initializes the first vCPU on.
pub(crate) const VCPU_LP: u32 = 1;

impl Td {
    /// TDH.MNG.CREATE of a fresh TDR with `hkid`.
    pub(crate) fn create<H: SimHost + ?Sized>(h: &H, hkid: u16) -> Self {
        let td = Self::unassigned(h, hkid);
        ok("MNG.CREATE", mng_create(h, td.tdr, hkid));
        td
    }

    /// A TD whose TDR page is allocated but not given to the module yet
    /// (the caller issues TDH.MNG.CREATE).
    pub(crate) fn unassigned<H: Platform + ?Sized>(h: &H, hkid: u16) -> Self {
        let mut td = Self {
            tdr: Pfn::new(0),
            hkid,
            tdcs: Vec::new(),
            vcpus: Vec::new(),
            pwl: 3,
            runs: Vec::new(),
            sept: BTreeMap::new(),
        };
        td.tdr = td.page(h);
        td
    }

    /// A TD with [`td_hkid`] taken to `stage`.
    pub(crate) fn build<H: SimHost + ?Sized>(h: &H, stage: Stage) -> Self {
        Self::build_with(h, td_hkid(h), stage)
    }

    /// A TD with `hkid` taken to `stage`.
    pub(crate) fn build_with<H: SimHost + ?Sized>(h: &H, hkid: u16, stage: Stage) -> Self {
        let mut td = Self::create(h, hkid);
        if stage >= Stage::KeysConfigured {
            td.configure_keys(h);
        }
        if stage >= Stage::TdcsAdded {
            td.add_tdcs(h, 6);
        }
        if stage >= Stage::Initialized {
            td.init(h, &Params::new());
        }
        if stage >= Stage::VcpuReady {
            td.add_vcpu(h, VCPU_LP);
        }
        if stage >= Stage::Runnable {
            ok("MR.FINALIZE", mr_finalize(h, td.tdr));
        }
        td
    }

    /// A host page for this TD.
    pub(crate) fn page<H: Platform + ?Sized>(&mut self, h: &H) -> Pfn {
        let r = run(h, 1, 1);
        self.runs.push(r);
        r.first()
    }

    /// `count` contiguous host pages aligned to `align` pages for this TD.
    pub(crate) fn run<H: Platform + ?Sized>(&mut self, h: &H, count: u64, align: u64) -> PfnRun {
        let r = run(h, count, align);
        self.runs.push(r);
        r
    }

    /// TDH.MNG.KEY.CONFIG on one LP of every package.
    pub(crate) fn configure_keys<H: SimHost + ?Sized>(&self, h: &H) {
        let tdr = self.tdr;
        on_each_package(&h, &mut |_, _| ok("MNG.KEY.CONFIG", mng_key_config(h, tdr)));
    }

    /// `n` TDH.MNG.ADDCX.
    pub(crate) fn add_tdcs<H: SimHost + ?Sized>(&mut self, h: &H, n: usize) {
        for _ in 0..n {
            let p = self.page(h);
            ok("MNG.ADDCX", mng_addcx(h, p, self.tdr));
            self.tdcs.push(p);
        }
    }

    /// TDH.MNG.INIT with `params` written to a fresh page, whatever the
    /// outcome.
    pub(crate) fn try_init<H: SimHost + ?Sized>(
        &mut self,
        h: &H,
        params: &Params,
    ) -> Completion<u64> {
        let pa = params.write(h);
        self.runs
            .push(PfnRun::try_new(Pfn::containing(pa), 1).unwrap());
        mng_init(h, self.tdr, pa)
    }

    /// TDH.MNG.INIT with `params` (must succeed; RCX comes back 0).
    pub(crate) fn init<H: SimHost + ?Sized>(&mut self, h: &H, params: &Params) {
        let c = self.try_init(h, params);
        ok("MNG.INIT", c.status);
        assert_eq!(c.out, 0, "MNG.INIT clears RCX");
        self.pwl = ((u64::from_le_bytes(params.0[24..32].try_into().unwrap()) >> 3) & 7) as u8;
    }

    /// TDH.VP.CREATE and `tdcx` TDH.VP.ADDCX; returns the vCPU's index.
    pub(crate) fn create_vcpu<H: SimHost + ?Sized>(&mut self, h: &H, tdcx: usize) -> usize {
        let tdvpr = self.page(h);
        ok("VP.CREATE", vp_create(h, tdvpr, self.tdr));
        let mut v = Vcpu {
            tdvpr,
            tdcx: Vec::new(),
            lp: None,
        };
        for _ in 0..tdcx {
            let p = self.page(h);
            ok("VP.ADDCX", vp_addcx(h, p, tdvpr));
            v.tdcx.push(p);
        }
        self.vcpus.push(v);
        self.vcpus.len() - 1
    }

    /// TDH.VP.INIT of vCPU `i` on `lp` ([`vp_init`], x2APIC ID `i`).
    pub(crate) fn init_vcpu<H: SimHost + ?Sized>(&mut self, h: &H, i: usize, lp: u32) {
        let tdvpr = self.vcpus[i].tdvpr;
        ok("VP.INIT", on(h, lp, || vp_init(h, tdvpr, 0, i as u32)));
        self.vcpus[i].lp = Some(lp);
    }

    /// A whole vCPU (TDVPR + 5 TDCX) initialized on `lp`.
    pub(crate) fn add_vcpu<H: SimHost + ?Sized>(&mut self, h: &H, lp: u32) -> usize {
        let i = self.create_vcpu(h, 5);
        self.init_vcpu(h, i, lp);
        i
    }

    /// Makes sure the S-EPT entries at levels `pwl` down to `level` for
    /// `gpa` point to S-EPT pages (SEPT.ADD for each one that does not), so
    /// that the entry at `level - 1` is reachable.
    pub(crate) fn map_sept<H: SimHost + ?Sized>(&mut self, h: &H, gpa: u64, level: u8) {
        for l in (level..=self.pwl).rev() {
            let key = (l, gpa >> (12 + 9 * u32::from(l)));
            if self.sept.contains_key(&key) {
                continue;
            }
            let aligned = gpa & !((PAGE << (9 * u32::from(l))) - 1);
            let p = self.page(h);
            let c = sept_add(
                h,
                info(aligned, l),
                TdrAndFlags::with_tdr(self.tdr, false),
                p,
            );
            ok("SEPT.ADD", c.status);
            self.sept.insert(key, p);
        }
    }

    /// The S-EPT page [`map_sept`](Self::map_sept) added under the entry of
    /// `gpa` at `level`.
    #[track_caller]
    pub(crate) fn sept_page(&self, gpa: u64, level: u8) -> Pfn {
        *self
            .sept
            .get(&(level, gpa >> (12 + 9 * u32::from(level))))
            .unwrap_or_else(|| panic!("no S-EPT page under {gpa:#x}/{level}"))
    }

    /// Forgets that the S-EPT page under `gpa`/`level` exists (after a test
    /// removed it).
    pub(crate) fn forget_sept(&mut self, gpa: u64, level: u8) {
        self.sept
            .remove(&(level, gpa >> (12 + 9 * u32::from(level))));
    }

    /// TDH.MEM.PAGE.ADD of a page holding `contents` at `gpa` (the S-EPT
    /// path is added first). Returns the private page.
    pub(crate) fn add_page<H: SimHost + ?Sized>(
        &mut self,
        h: &H,
        gpa: u64,
        contents: &[u8],
    ) -> Pfn {
        self.map_sept(h, gpa, 1);
        let source = self.page(h);
        write(h, source.hpa(), contents);
        let target = self.page(h);
        let c = page_add(h, info(gpa, 0), self.tdr, target, source);
        ok("PAGE.ADD", c.status);
        assert_eq!(c.out, SeptOut::default(), "PAGE.ADD clears RCX/RDX");
        target
    }

    /// TDH.MEM.PAGE.AUG of a fresh page (4K at level 0, 2M at level 1) at
    /// `gpa`. Returns the page.
    pub(crate) fn aug<H: SimHost + ?Sized>(&mut self, h: &H, gpa: u64, level: u8) -> Pfn {
        self.map_sept(h, gpa, level + 1);
        let n = 1u64 << (9 * u32::from(level));
        let p = self.run(h, n, n).first();
        let c = page_aug(h, info(gpa, level), self.tdr, p);
        ok("PAGE.AUG", c.status);
        p
    }

    /// BLOCK, TRACK, REMOVE of the leaf at `gpa`/`level` (a running TD's
    /// removal); returns the removed page.
    pub(crate) fn block_track_remove<H: SimHost + ?Sized>(
        &self,
        h: &H,
        gpa: u64,
        level: u8,
    ) -> Pfn {
        ok(
            "RANGE.BLOCK",
            range_block(h, info(gpa, level), self.tdr).status,
        );
        ok("MEM.TRACK", track(h, self.tdr));
        let c = page_remove(h, info(gpa, level), self.tdr);
        ok("PAGE.REMOVE", c.status);
        c.out.removed().unwrap()
    }

    /// VP.FLUSH of every associated vCPU on its LP.
    pub(crate) fn flush_vcpus<H: SimHost + ?Sized>(&mut self, h: &H) {
        for v in &mut self.vcpus {
            if let Some(lp) = v.lp.take() {
                let tdvpr = v.tdvpr;
                ok("VP.FLUSH", on(h, lp, || vp_flush(h, tdvpr)));
            }
        }
    }

    /// TDH.PHYMEM.CACHE.WB on one LP of every package, resuming while it is
    /// interrupted.
    pub(crate) fn cache_wb_all<H: SimHost + ?Sized>(h: &H) {
        on_each_package(&h, &mut |_, _| {
            let mut s = cache_wb(h, false);
            while s == TdxStatus::INTERRUPTED_RESUMABLE {
                s = cache_wb(h, true);
            }
            assert!(
                s == TdxStatus::SUCCESS || s == TdxStatus::NO_HKID_READY_TO_WBCACHE,
                "CACHE.WB: {s}"
            );
        });
    }

    /// Reclaims every page of this TD but the TDR (found with RDMD among
    /// the TD's allocations; a huge page once, at its base, skipping the
    /// rest of it).
    pub(crate) fn reclaim_children<H: SimHost + ?Sized>(&self, h: &H) {
        let owner = self.tdr.hpa().as_u64();
        let mut done = BTreeSet::new();
        for r in &self.runs {
            let mut p = r.first();
            while p.as_u64() < r.end() {
                let size = if p == self.tdr {
                    1
                } else {
                    let m = page_rdmd(h, p);
                    ok("RDMD", m.status);
                    let md = m.out;
                    let ours = !matches!(md.page_type, PamtPageType::NDA | PamtPageType::RSVD)
                        && md.owner == owner;
                    let pages = 1u64 << (9 * md.level);
                    let base = p.align_down(pages);
                    if ours && done.insert(base) {
                        ok("PAGE.RECLAIM", page_reclaim(h, base).status);
                    }
                    if ours {
                        base.as_u64() + pages - p.as_u64()
                    } else {
                        1
                    }
                };
                p = Pfn::new(p.as_u64() + size);
            }
        }
    }

    /// The canonical teardown: VP.FLUSH on each vCPU's LP,
    /// VPFLUSHDONE, CACHE.WB on every package, KEY.FREEID, RECLAIM of every
    /// page with the TDR last, WBINVD of the TDR with the global KeyID; then
    /// every host page of the TD goes back to the allocator.
    pub(crate) fn teardown<H: SimHost + ?Sized>(mut self, h: &H) {
        self.flush_vcpus(h);
        ok("VPFLUSHDONE", mng_vpflushdone(h, self.tdr));
        Self::cache_wb_all(h);
        ok("KEY.FREEID", mng_key_freeid(h, self.tdr));
        self.reclaim_children(h);
        ok("RECLAIM TDR", page_reclaim(h, self.tdr).status);
        self.free_all(h);
    }

    /// WBINVD of the TDR with the global KeyID, then frees every host page
    /// of the TD (all must be back with the host).
    pub(crate) fn free_all<H: SimHost + ?Sized>(self, h: &H) {
        let global = global_hkid(h);
        let shift = keyid_shift_of(h);
        ok(
            "WBINVD TDR",
            page_wbinvd(h, KeyedPa::try_new(self.tdr.hpa(), global, shift).unwrap()),
        );
        for r in self.runs {
            free(h, r);
        }
    }
}

/// The KeyID shift seen through `Platform` (52 - KeyID bits, as
/// [`MachineDesc::hkid_start_bit`] computes it for 52-bit machines).
pub(crate) fn keyid_shift_of<H: Platform + ?Sized>(h: &H) -> u32 {
    let k = h.hardware().keyid_partition;
    let total = u64::from(k.nr_mktme_keyids()) + u64::from(k.nr_tdx_keyids()) + 1;
    52 - (64 - (total - 1).leading_zeros())
}
