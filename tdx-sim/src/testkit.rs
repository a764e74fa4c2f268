//! Test fixtures: a raw-leaf bring-up driver and a simple TDMR layout for
//! synthetic machines.
//!
//! These exist so tests and benches of the simulator can reach any module
//! state with a few lines. They are not the planner (that is `tdx-api`'s
//! job) and not the safe bring-up: they issue raw leaves, unwrap what
//! should not fail, and panic with the status when something does.

// UNSAFETY: the driver calls the raw `unsafe fn` leaves of tdx-sys and the
// `unsafe` Platform accessors, against the simulator, whose memory is
// simulated.
#![allow(unsafe_code)]

use tdx_api::{CpuId, Placement, Platform, platform::on_each_package};
use tdx_sys::Seamcall;
use tdx_sys::leaf;
use tdx_types::{
    Hpa, Pfn, PfnRun, TdxStatus,
    abi::TdmrInfo,
    regs::{HpaListInfo, SysConfigKeyId},
};
use zerocopy::IntoBytes;

use crate::{Profile, Simulator};

const GIB: u64 = 1 << 30;
const PAGE: u64 = 4096;

/// PAMT bytes per level (4K, 2M, 1G) for a TDMR of `size` bytes with
/// 16-byte entries, each rounded up to 4 KiB.
pub fn pamt_sizes(size: u64) -> [u64; 3] {
    [12, 21, 30].map(|shift| ((size >> shift) * 16).next_multiple_of(PAGE))
}

/// PAMT bytes per level (4K, 2M, 1G) with Dynamic PAMT: the 4K area is the
/// module's bitmap, one bit per 4K page (`size / 32768` bytes), each
/// rounded up to 4 KiB (`tdh_sys_config.c`, module 1.5.16+).
pub fn pamt_sizes_dynamic(size: u64) -> [u64; 3] {
    let [_, p2m, p1g] = pamt_sizes(size);
    [(size >> 15).next_multiple_of(PAGE), p2m, p1g]
}

/// [`simple_layout`] with PAMT areas sized for Dynamic PAMT
/// ([`pamt_sizes_dynamic`]).
pub fn simple_layout_dynamic(memory: &[(u64, u64)], max_gib: u64) -> Vec<TdmrInfo> {
    layout_with(memory, max_gib, pamt_sizes_dynamic)
}

/// One TDMR per 1 GiB-aligned stretch of `memory` of at most `max_gib` GiB,
/// with its PAMT (4K, 2M, 1G levels back to back, as Linux lays them out)
/// at the top of the TDMR, covered by one reserved area. Memory ranges must
/// be 1 GiB aligned. Returns the TDMR_INFOs; the PAMT frames are not
/// allocated.
pub fn simple_layout(memory: &[(u64, u64)], max_gib: u64) -> Vec<TdmrInfo> {
    layout_with(memory, max_gib, pamt_sizes)
}

fn layout_with(memory: &[(u64, u64)], max_gib: u64, sizes: fn(u64) -> [u64; 3]) -> Vec<TdmrInfo> {
    let mut out = Vec::new();
    for &(s, e) in memory {
        assert!(
            s % GIB == 0 && e % GIB == 0,
            "simple_layout needs 1 GiB-aligned memory"
        );
        let mut base = s;
        while base < e {
            let size = (e - base).min(max_gib * GIB);
            let [p4k, p2m, p1g] = sizes(size);
            let total = p4k + p2m + p1g;
            let pamt = base + size - total;
            let mut t = TdmrInfo::with_range(base, size);
            t.set_pamt_4k(pamt, p4k);
            t.set_pamt_2m(pamt + p4k, p2m);
            t.set_pamt_1g(pamt + p4k + p2m, p1g);
            t.set_reserved_area(0, size - total, total)
                .expect("slot 0 exists");
            out.push(t);
            base += size;
        }
    }
    out
}

/// Options for [`bring_up`].
#[derive(Debug, Clone, Copy)]
pub struct BringUpOptions {
    /// Stop after TDH.SYS.CONFIG (before WBINVD and KEY.CONFIG).
    pub stop_after_config: bool,
    /// Skip the WBINVD before TDH.SYS.KEY.CONFIG (to test the cache rule).
    pub skip_wbinvd: bool,
    /// Initialize the TDMRs (TDH.SYS.TDMR.INIT until done).
    pub init_tdmrs: bool,
    /// Donate the extension pool and run TDH.EXT.INIT when the module has
    /// Extensions.
    pub init_ext: bool,
    /// Enable Dynamic PAMT in TDH.SYS.CONFIG (R8 bit 16; the profile must
    /// have it, e.g. [`Profile::tdx_1_5_16`]).
    pub dynamic_pamt: bool,
}

impl Default for BringUpOptions {
    fn default() -> Self {
        Self {
            stop_after_config: false,
            skip_wbinvd: false,
            init_tdmrs: true,
            init_ext: true,
            dynamic_pamt: false,
        }
    }
}

/// What [`bring_up`] did.
#[derive(Debug, Clone, Default)]
pub struct BringUpReport {
    /// Physical address the TDMR_INFO array page had (freed again after
    /// TDH.SYS.CONFIG).
    pub tdmr_array: u64,
    /// The TDMRs configured.
    pub tdmrs: Vec<TdmrInfo>,
    /// The frames allocated for PAMTs.
    pub pamt_runs: Vec<PfnRun>,
    /// The extension-pool frames donated.
    pub pool: Option<PfnRun>,
    /// TDH.SYS.TDMR.INIT calls.
    pub tdmr_init_calls: u64,
}

fn ok(what: &str, s: TdxStatus) {
    assert!(!s.is_error(), "{what}: {s}");
}

/// Writes `tdmrs` into freshly allocated host pages and returns the PA of
/// the array of their addresses.
pub fn write_tdmr_infos<P: Platform + ?Sized>(sim: &P, tdmrs: &[TdmrInfo]) -> u64 {
    let pages = (tdmrs.len() as u64 * 512).div_ceil(PAGE) + 1;
    let run = sim
        .alloc_pages(pages, 1, Placement::Anywhere)
        .expect("room for TDMR_INFOs");
    let array = run.hpa().as_u64();
    let infos = array + PAGE;
    for (i, t) in tdmrs.iter().enumerate() {
        let pa = infos + 512 * i as u64;
        // SAFETY: the run was just allocated from the simulator for us.
        unsafe { sim.write_phys(Hpa::new(pa), t.as_bytes()) };
        // SAFETY: as above.
        unsafe { sim.write_phys(Hpa::new(array + 8 * i as u64), &pa.to_le_bytes()) };
    }
    array
}

/// Brings the simulated module up with raw leaves: SYS.INIT, LP.INIT on
/// every LP, SYS.CONFIG with `tdmrs` (PAMT frames allocated exactly where
/// the TDMR_INFOs put them), WBINVD, KEY.CONFIG per package, TDMR.INIT until
/// done, and the Extensions steps. Panics with the status on any error.
pub fn bring_up(sim: &Simulator, tdmrs: &[TdmrInfo], opts: BringUpOptions) -> BringUpReport {
    bring_up_on(sim, &sim.profile(), tdmrs, opts)
}

/// [`bring_up`] on any backend and platform (for example a trace recorder
/// wrapping the simulator), for a module with `profile`.
pub fn bring_up_on<H>(
    sim: &H,
    profile: &Profile,
    tdmrs: &[TdmrInfo],
    opts: BringUpOptions,
) -> BringUpReport
where
    H: Seamcall + Platform + Sync + ?Sized,
{
    let mut report = BringUpReport {
        tdmrs: tdmrs.to_vec(),
        ..Default::default()
    };
    // SAFETY: the simulator's memory is simulated (this holds for every leaf call below);
    // the pages handed to it were allocated from it for this purpose.
    ok("TDH.SYS.INIT", unsafe { leaf::tdh_sys_init(sim) });
    for lp in 0..sim.cpus() {
        sim.on_cpu(CpuId(lp), &mut || {
            // SAFETY: simulated memory; the pages handed over were allocated from the simulator for this.
            ok("TDH.SYS.LP.INIT", unsafe { leaf::tdh_sys_lp_init(sim) })
        });
    }
    for t in tdmrs {
        for (b, s) in [t.pamt_4k(), t.pamt_2m(), t.pamt_1g()] {
            let run = sim
                .alloc_pages(s / PAGE, 1, Placement::Exact(Pfn::new(b / PAGE)))
                .expect("PAMT frames free");
            report.pamt_runs.push(run);
        }
    }
    report.tdmr_array = write_tdmr_infos(sim, tdmrs);
    let keyid = sim.hardware().keyid_partition.global_keyid() as u16;
    // SAFETY: simulated memory; the pages handed over were allocated from the simulator for this.
    ok("TDH.SYS.CONFIG", unsafe {
        leaf::tdh_sys_config(
            sim,
            Hpa::new(report.tdmr_array),
            tdmrs.len() as u64,
            SysConfigKeyId::new()
                .with_hkid(keyid)
                .with_dynamic_pamt(opts.dynamic_pamt),
        )
    });
    // The module keeps nothing of the TDMR_INFO pages: they go back.
    let info_pages = (tdmrs.len() as u64 * 512).div_ceil(PAGE) + 1;
    let info_run = PfnRun::try_new(Pfn::new(report.tdmr_array / PAGE), info_pages).expect("valid");
    // SAFETY: the pages were allocated by `write_tdmr_infos` and the module
    // only read them during TDH.SYS.CONFIG.
    unsafe { sim.free_pages(info_run) };
    if opts.stop_after_config {
        return report;
    }
    if !opts.skip_wbinvd {
        sim.wbinvd_all();
    }
    on_each_package(sim, &mut |_, _| {
        // SAFETY: simulated memory; the pages handed over were allocated from the simulator for this.
        ok("TDH.SYS.KEY.CONFIG", unsafe {
            leaf::tdh_sys_key_config(sim)
        });
    });
    if opts.init_tdmrs {
        for t in tdmrs {
            loop {
                // SAFETY: simulated memory; the pages handed over were allocated from the simulator for this.
                let c = unsafe { leaf::tdh_sys_tdmr_init(sim, Hpa::new(t.base())) };
                report.tdmr_init_calls += 1;
                if c.status == TdxStatus::TDMR_ALREADY_INITIALIZED {
                    break;
                }
                ok("TDH.SYS.TDMR.INIT", c.status);
                if c.out >= t.base() + t.size() {
                    break;
                }
            }
        }
    }
    if opts.init_ext && opts.init_tdmrs {
        report.pool = init_ext_on(sim, profile);
    }
    report
}

/// Donates the pool (in windows of 512 pages) and runs TDH.EXT.INIT, if the
/// module has Extensions. Returns the pool frames.
pub fn init_ext(sim: &Simulator) -> Option<PfnRun> {
    init_ext_on(sim, &sim.profile())
}

/// [`init_ext`] on any backend and platform, for a module with `profile`.
pub fn init_ext_on<H>(sim: &H, profile: &Profile) -> Option<PfnRun>
where
    H: Seamcall + Platform + Sync + ?Sized,
{
    if !profile.has_ext() {
        return None;
    }
    let need = u64::from(profile.memory_pool_required_pages);
    let mut pool = None;
    if need > 0 {
        let run = sim
            .alloc_pages(need, 1, Placement::Anywhere)
            .expect("room for the pool");
        let list = sim
            .alloc_pages(1, 1, Placement::Anywhere)
            .expect("room for a list page");
        for (w, chunk) in run.iter().collect::<Vec<_>>().chunks(512).enumerate() {
            let bytes: Vec<u8> = chunk
                .iter()
                .flat_map(|p| p.hpa().as_u64().to_le_bytes())
                .collect();
            // SAFETY: the list page was allocated from the simulator for us.
            unsafe { sim.write_phys(list.hpa(), &bytes) };
            let mut info = HpaListInfo::try_new(list.first(), chunk.len()).expect("1..=512");
            loop {
                // SAFETY: as in `bring_up`.
                let c = unsafe { leaf::tdh_ext_mem_add(sim, info) };
                if c.status == TdxStatus::INTERRUPTED_RESUMABLE {
                    info = c.out;
                    continue;
                }
                ok(&format!("TDH.EXT.MEM.ADD window {w}"), c.status);
                break;
            }
        }
        // SAFETY: the list page is host memory we allocated and no longer use.
        unsafe { sim.free_pages(list) };
        pool = Some(run);
    }
    loop {
        // SAFETY: as in `bring_up`.
        let s = unsafe { leaf::tdh_ext_init(sim) };
        if s != TdxStatus::INTERRUPTED_RESUMABLE {
            ok("TDH.EXT.INIT", s);
            break;
        }
    }
    pool
}
