//! A plan at TDH.SYS.CONFIG on the simulated TDX module (`tdx-sim`).
//!
//! [`sys_config`] builds a simulated host from the memory map (usable RAM,
//! the CMRs when the map has them, the NUMA nodes) with a module whose
//! limits are the planner's, runs TDH.SYS.INIT and TDH.SYS.LP.INIT, takes
//! the PAMT frames exactly where the plan puts them, writes the TDMR_INFOs
//! and issues TDH.SYS.CONFIG (with Dynamic PAMT, R8 bit 16, on a module
//! that has it, when the plan sizes the 4K level as the Dynamic PAMT
//! bitmap). It reports the module's raw status; it never
//! panics, and it does not go on to key configuration or TDMR
//! initialization (the plan's fate is decided at TDH.SYS.CONFIG).

// UNSAFETY: the raw leaves of tdx-sys are `unsafe fn`s; here they are
// issued against the simulator, whose memory is simulated.
#![allow(unsafe_code)]

use std::fmt;

use tdx_api::{
    CpuId, Cpus, FrameAllocator, HardwareInfo, Placement,
    plan::{Limits, Plan},
};
use tdx_sim::{MAX_CMRS, MachineDesc, Profile, Simulator};
use tdx_sys::leaf;
use tdx_types::{
    Hpa, Pfn, TdxStatus,
    abi::{MAX_RESERVED_AREAS, TdmrInfo},
    regs::SysConfigKeyId,
};
use zerocopy::IntoBytes;

use crate::input::MemoryMap;

const PAGE: u64 = 4096;
/// Bytes one TDMR_INFO takes in the array the module reads (its required
/// alignment).
const TDMR_INFO_STRIDE: u64 = 512;

/// What the simulated module said to a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysConfig {
    /// TDH.SYS.CONFIG succeeded; the status as the module returned it.
    Accepted(String),
    /// A leaf failed: which, and its raw status.
    Refused {
        /// The leaf that failed (`TDH.SYS.CONFIG`, or an earlier one).
        leaf: &'static str,
        /// Its status, decoded.
        status: String,
    },
    /// The host could not give the PAMT frames where the plan puts them.
    PamtNotFree {
        /// TDMR index.
        tdmr: usize,
        /// `(base, size)` of the PAMT level.
        range: (u64, u64),
    },
    /// The plan could not be tried: the reason.
    NotRun(String),
}

impl SysConfig {
    /// Whether the module accepted the plan.
    pub fn accepted(&self) -> bool {
        matches!(self, Self::Accepted(_))
    }
}

impl fmt::Display for SysConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted(status) => write!(f, "accepted ({status})"),
            Self::Refused { leaf, status } => write!(f, "refused: {leaf} returned {status}"),
            Self::PamtNotFree { tdmr, range } => write!(
                f,
                "not tried: TDMR {tdmr}'s PAMT [{:#x}, {:#x}) is not free host RAM",
                range.0,
                range.0.saturating_add(range.1)
            ),
            Self::NotRun(why) => write!(f, "not simulated: {why}"),
        }
    }
}

/// Issues TDH.SYS.CONFIG with `plan` on a simulated host built from `map`,
/// with a module whose limits are `limits`.
pub fn sys_config(map: &MemoryMap, plan: &Plan, limits: &Limits) -> SysConfig {
    let sim = match simulator(map, limits) {
        Ok(sim) => sim,
        Err(why) => return SysConfig::NotRun(why),
    };
    let refused = |leaf, status: TdxStatus| SysConfig::Refused {
        leaf,
        status: status.to_string(),
    };
    // SAFETY: `sim` is a simulator: the leaf reaches simulated memory only
    // (this holds for every leaf call below).
    let status = unsafe { leaf::tdh_sys_init(&sim) };
    if status.is_error() {
        return refused("TDH.SYS.INIT", status);
    }
    let mut lp_status = Vec::new();
    for lp in 0..sim.cpus() {
        sim.on_cpu(CpuId(lp), &mut || {
            // SAFETY: simulated memory; `on_cpu` runs the call on `lp`.
            lp_status.push(unsafe { leaf::tdh_sys_lp_init(&sim) });
        });
    }
    if let Some(&status) = lp_status.iter().find(|s| s.is_error()) {
        return refused("TDH.SYS.LP.INIT", status);
    }
    for (i, t) in plan.tdmrs.iter().enumerate() {
        for (base, size) in t.pamt.levels() {
            let exact = Placement::Exact(Pfn::new(base / PAGE));
            let taken = base % PAGE == 0
                && size % PAGE == 0
                && size > 0
                && sim.alloc_pages(size / PAGE, 1, exact).is_ok();
            if !taken {
                return SysConfig::PamtNotFree {
                    tdmr: i,
                    range: (base, size),
                };
            }
        }
    }
    let infos = plan.tdmr_infos();
    let Some(array) = write_tdmr_infos(&sim, &infos) else {
        return SysConfig::NotRun("no host memory left for the TDMR_INFO array".into());
    };
    let Ok(keyid) = u16::try_from(sim.hardware().keyid_partition.global_keyid()) else {
        return SysConfig::NotRun("the global KeyID does not fit 16 bits".into());
    };
    // SAFETY: simulated memory; the array and the TDMR_INFOs were written
    // to pages allocated from the simulator for them, and the PAMT frames
    // were allocated where the TDMR_INFOs say.
    let status = unsafe {
        leaf::tdh_sys_config(
            &sim,
            Hpa::new(array),
            infos.len() as u64,
            SysConfigKeyId::new()
                .with_hkid(keyid)
                .with_dynamic_pamt(limits.dpamt_bitmap_bits.is_some()),
        )
    };
    if status.is_error() {
        refused("TDH.SYS.CONFIG", status)
    } else {
        SysConfig::Accepted(status.to_string())
    }
}

/// The simulated host for `map`, with the planner's limits in the module's
/// metadata.
fn simulator(map: &MemoryMap, limits: &Limits) -> Result<Simulator, String> {
    if limits.max_reserved_per_tdmr > MAX_RESERVED_AREAS {
        return Err(format!(
            "a TDMR_INFO holds {MAX_RESERVED_AREAS} reserved areas, not {}",
            limits.max_reserved_per_tdmr
        ));
    }
    let max_tdmrs = u16::try_from(limits.max_tdmrs)
        .ok()
        .filter(|&n| u64::from(n) <= PAGE / 8)
        .ok_or_else(|| {
            format!(
                "{} TDMRs do not fit the one-page TDMR address array",
                limits.max_tdmrs
            )
        })?;
    if map.cmrs.is_none() && map.usable.len() > MAX_CMRS {
        return Err(format!(
            "the map has {} usable ranges and no CMRs, and a TDX module reports at most \
             {MAX_CMRS} CMRs; give the machine's CMRs with --cmrs",
            map.usable.len()
        ));
    }
    // Dynamic PAMT: module 1.5.16+, whose 4K PAMT area is a bitmap of one
    // bit per page (the planner may size more bits; the module takes any
    // area at least that large).
    let mut profile = if limits.dpamt_bitmap_bits.is_some() {
        Profile::tdx_1_5_16()
    } else {
        Profile::tdx_1_5()
    };
    profile.max_tdmrs = max_tdmrs;
    // Checked against MAX_RESERVED_AREAS (16) above.
    profile.max_reserved_per_tdmr = limits.max_reserved_per_tdmr as u16;
    profile.pamt_entry_size = limits.pamt_entry_size;
    let mut desc = MachineDesc::new(map.usable.clone()).with_profile(profile);
    desc.cmrs.clone_from(&map.cmrs);
    desc.numa.clone_from(&map.numa);
    Simulator::new(desc).map_err(|e| format!("cannot model the machine: {e}"))
}

/// Writes `infos` into freshly allocated host pages: the array of their
/// addresses in the first page, the TDMR_INFOs from the second. Returns the
/// array's address, or `None` when the host has no room.
fn write_tdmr_infos(sim: &Simulator, infos: &[TdmrInfo]) -> Option<u64> {
    let pages = (infos.len() as u64 * TDMR_INFO_STRIDE).div_ceil(PAGE) + 1;
    let run = sim.alloc_pages(pages, 1, Placement::Anywhere).ok()?;
    let array = run.hpa().as_u64();
    let first = array + PAGE;
    for (i, t) in infos.iter().enumerate() {
        let pa = first + TDMR_INFO_STRIDE * i as u64;
        sim.poke(pa, t.as_bytes());
        sim.poke(array + 8 * i as u64, &pa.to_le_bytes());
    }
    Some(array)
}
