//! Byte-level verification of a plan: every rule TDH.SYS.CONFIG enforces
//! (`src/vmm_dispatcher/api_calls/tdh_sys_config.c` in Intel's module
//! source, tag `TDX_1.5.01`), and the planner's own goal (every usable
//! byte from 1 MiB up, other than the PAMTs, is TDX memory; PAMTs are host
//! RAM the platform can give).

use alloc::vec::Vec;
use core::fmt;

use super::{GIB, MAX_PA, Normalized, PAGE, Plan, PlanError, PlanInput, intervals};

/// A rule a plan breaks. Indexes are TDMR positions in the plan; levels are
/// 0 = 4K, 1 = 2M, 2 = 1G.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The input itself cannot be planned.
    Input(alloc::boxed::Box<PlanError>),
    /// More TDMRs than MAX_TDMRS.
    TooManyTdmrs {
        /// TDMRs in the plan.
        count: usize,
        /// MAX_TDMRS.
        max: usize,
    },
    /// A TDMR is empty, not 1 GiB aligned or sized, or too high.
    BadTdmr {
        /// TDMR index.
        tdmr: usize,
    },
    /// TDMRs out of order or overlapping.
    TdmrOrder {
        /// TDMR index.
        tdmr: usize,
    },
    /// More reserved areas than MAX_RESERVED_PER_TDMR.
    TooManyReserved {
        /// TDMR index.
        tdmr: usize,
        /// Areas.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A reserved area is empty, misaligned, out of order, overlapping, or
    /// outside its TDMR.
    BadReserved {
        /// TDMR index.
        tdmr: usize,
        /// Area index.
        area: usize,
    },
    /// A PAMT is misaligned or smaller than the module requires.
    BadPamt {
        /// TDMR index.
        tdmr: usize,
        /// Level.
        level: usize,
    },
    /// Two PAMTs overlap, or a PAMT overlaps non-reserved TDMR memory.
    PamtOverlap {
        /// TDMR whose PAMT it is.
        tdmr: usize,
        /// Level.
        level: usize,
        /// What it overlaps (a TDMR index).
        other: usize,
    },
    /// A PAMT is not inside one merged CMR.
    PamtOutsideCmrs {
        /// TDMR index.
        tdmr: usize,
        /// Level.
        level: usize,
    },
    /// A PAMT is not usable RAM the platform can give (outside memory, or
    /// in a range to avoid).
    PamtNotHostMemory {
        /// TDMR index.
        tdmr: usize,
        /// Level.
        level: usize,
    },
    /// A non-reserved part of a TDMR is not inside one merged CMR.
    TdmrOutsideCmrs {
        /// TDMR index.
        tdmr: usize,
        /// Start of the part.
        start: u64,
        /// End of the part.
        end: u64,
    },
    /// Usable memory that is neither TDX memory nor a PAMT.
    NotCovered {
        /// Start.
        start: u64,
        /// End.
        end: u64,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LEVEL: [&str; 3] = ["4K", "2M", "1G"];
        let lv = |l: &usize| LEVEL.get(*l).copied().unwrap_or("?");
        match self {
            Self::Input(e) => write!(f, "input: {e}"),
            Self::TooManyTdmrs { count, max } => {
                write!(f, "{count} TDMRs, the module allows {max}")
            }
            Self::BadTdmr { tdmr } => write!(f, "TDMR {tdmr} is empty, misaligned or too high"),
            Self::TdmrOrder { tdmr } => write!(f, "TDMR {tdmr} is out of order or overlaps"),
            Self::TooManyReserved { tdmr, count, max } => {
                write!(
                    f,
                    "TDMR {tdmr} has {count} reserved areas, the module allows {max}"
                )
            }
            Self::BadReserved { tdmr, area } => {
                write!(f, "TDMR {tdmr} reserved area {area} is malformed")
            }
            Self::BadPamt { tdmr, level } => {
                write!(
                    f,
                    "TDMR {tdmr} {} PAMT is misaligned or too small",
                    lv(level)
                )
            }
            Self::PamtOverlap { tdmr, level, other } => {
                write!(f, "TDMR {tdmr} {} PAMT overlaps TDMR {other}", lv(level))
            }
            Self::PamtOutsideCmrs { tdmr, level } => {
                write!(f, "TDMR {tdmr} {} PAMT is outside the CMRs", lv(level))
            }
            Self::PamtNotHostMemory { tdmr, level } => {
                write!(
                    f,
                    "TDMR {tdmr} {} PAMT is not memory the host can give",
                    lv(level)
                )
            }
            Self::TdmrOutsideCmrs { tdmr, start, end } => {
                write!(
                    f,
                    "TDMR {tdmr}: [{start:#x}, {end:#x}) is not reserved and not convertible"
                )
            }
            Self::NotCovered { start, end } => {
                write!(f, "usable memory [{start:#x}, {end:#x}) is not TDX memory")
            }
        }
    }
}

/// Checks `plan` against every TDH.SYS.CONFIG rule and against the coverage
/// goal for `input`.
pub fn check(plan: &Plan, input: &PlanInput) -> Result<(), CheckError> {
    let n = Normalized::new(input).map_err(|e| CheckError::Input(alloc::boxed::Box::new(e)))?;
    check_normalized(plan, &n)
}

/// [`check`] on an input the planner has already normalized.
pub(crate) fn check_normalized(plan: &Plan, n: &Normalized) -> Result<(), CheckError> {
    let lim = &n.limits;
    let t = &plan.tdmrs;
    if t.len() > lim.max_tdmrs {
        return Err(CheckError::TooManyTdmrs {
            count: t.len(),
            max: lim.max_tdmrs,
        });
    }
    let mut free_parts: Vec<Vec<(u64, u64)>> = Vec::with_capacity(t.len());
    for (i, d) in t.iter().enumerate() {
        let end = d.base.checked_add(d.size);
        if d.size == 0 || d.base % GIB != 0 || d.size % GIB != 0 || end.is_none_or(|e| e > MAX_PA) {
            return Err(CheckError::BadTdmr { tdmr: i });
        }
        if i > 0 && d.base < t[i - 1].end() {
            return Err(CheckError::TdmrOrder { tdmr: i });
        }
        if d.reserved.len() > lim.max_reserved_per_tdmr {
            return Err(CheckError::TooManyReserved {
                tdmr: i,
                count: d.reserved.len(),
                max: lim.max_reserved_per_tdmr,
            });
        }
        let mut prev_end = 0;
        let mut reserved = Vec::with_capacity(d.reserved.len());
        for (j, r) in d.reserved.iter().enumerate() {
            let bad = r.size == 0
                || r.offset % PAGE != 0
                || r.size % PAGE != 0
                || r.offset < prev_end
                || r.offset.checked_add(r.size).is_none_or(|e| e > d.size);
            if bad {
                return Err(CheckError::BadReserved { tdmr: i, area: j });
            }
            prev_end = r.offset + r.size;
            reserved.push((d.base + r.offset, d.base + r.offset + r.size));
        }
        intervals::normalize(&mut reserved);
        free_parts.push(intervals::subtract(&[(d.base, d.end())], &reserved));
        let required = lim.pamt_required(d.size);
        for (l, &(b, s)) in d.pamt.levels().iter().enumerate() {
            if b % PAGE != 0
                || s % PAGE != 0
                || s < required[l]
                || b.checked_add(s).is_none_or(|e| e > MAX_PA)
            {
                return Err(CheckError::BadPamt { tdmr: i, level: l });
            }
        }
    }
    // PAMT vs PAMT, and vs non-reserved memory of every TDMR.
    let pamts: Vec<(usize, usize, u64, u64)> = t
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            d.pamt
                .levels()
                .into_iter()
                .enumerate()
                .map(move |(l, (b, s))| (i, l, b, b + s))
        })
        .collect();
    let mut sorted = pamts.clone();
    sorted.sort_by_key(|p| p.2);
    for w in sorted.windows(2) {
        if w[1].2 < w[0].3 {
            return Err(CheckError::PamtOverlap {
                tdmr: w[1].0,
                level: w[1].1,
                other: w[0].0,
            });
        }
    }
    let mut mem: Vec<(u64, u64)> = n.mem.iter().map(|r| (r.start, r.end)).collect();
    intervals::normalize(&mut mem);
    for &(i, l, b, e) in &pamts {
        for (k, parts) in free_parts.iter().enumerate() {
            if intervals::intersects(parts, b, e) {
                return Err(CheckError::PamtOverlap {
                    tdmr: i,
                    level: l,
                    other: k,
                });
            }
        }
        if !n.cmr_chains.within_one(b, e) {
            return Err(CheckError::PamtOutsideCmrs { tdmr: i, level: l });
        }
        if !intervals::contains(&mem, b, e) || intervals::intersects(&n.avoid, b, e) {
            return Err(CheckError::PamtNotHostMemory { tdmr: i, level: l });
        }
    }
    // Non-reserved parts in one merged CMR each.
    for (i, parts) in free_parts.iter().enumerate() {
        for &(s, e) in parts {
            if !n.cmr_chains.within_one(s, e) {
                return Err(CheckError::TdmrOutsideCmrs {
                    tdmr: i,
                    start: s,
                    end: e,
                });
            }
        }
    }
    // Coverage: memory minus PAMTs is TDX memory.
    let mut pamt_set: Vec<(u64, u64)> = pamts.iter().map(|p| (p.2, p.3)).collect();
    intervals::normalize(&mut pamt_set);
    let mut tdx: Vec<(u64, u64)> = free_parts.into_iter().flatten().collect();
    intervals::normalize(&mut tdx);
    let need = intervals::subtract(&mem, &pamt_set);
    if let Some(&(s, e)) = intervals::subtract(&need, &tdx).first() {
        return Err(CheckError::NotCovered { start: s, end: e });
    }
    Ok(())
}
