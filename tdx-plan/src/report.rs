//! The text report: the memory map summary, the chosen plan TDMR by TDMR
//! (with the node of each PAMT, flagged `REMOTE PAMT` with the reason when
//! it is not its TDMR's node, and a `PAMT nodes` line that counts those),
//! and what the other strategy (Linux's construction, by default) does on
//! the same map, each with its check and its fate at TDH.SYS.CONFIG on the
//! simulated module.

use std::fmt::{self, Write as _};

use tdx_api::plan::{GIB, LOW_MEMORY_END, Plan, PlanError, PlannedTdmr, RemoteReason, Strategy};

use crate::analysis::{Analysis, Outcome};

/// A byte count in the largest binary unit it reaches: exact when the unit
/// divides it, else with two decimals.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
        for (unit, shift) in UNITS {
            if self.0 >> shift == 0 {
                continue;
            }
            if self.0.trailing_zeros() >= shift {
                return write!(f, "{} {unit}", self.0 >> shift);
            }
            // Display only: rounding the u64 to f64 does not matter.
            let value = self.0 as f64 / (1u64 << shift) as f64;
            return write!(f, "{value:.2} {unit}");
        }
        write!(f, "{} bytes", self.0)
    }
}

/// `part` as a percentage of `whole`, for display.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        // Display only.
        part as f64 * 100.0 / whole as f64
    }
}

/// Usable RAM per NUMA node, as the planner sees it: `(node, bytes)`,
/// sorted by node.
pub fn node_bytes(a: &Analysis) -> Vec<(u32, u64)> {
    let mut out: Vec<(u32, u64)> = Vec::new();
    for r in &a.input.usable {
        let size = r.end.saturating_sub(r.start);
        match out.iter_mut().find(|(n, _)| *n == r.node) {
            Some((_, bytes)) => *bytes += size,
            None => out.push((r.node, size)),
        }
    }
    out.sort_unstable();
    out
}

/// What a reserved area `[start, end)` of `plan` holds: a hole, the first
/// MiB (RAM that is never TDX memory), PAMTs (naming their TDMRs), or RAM.
pub fn area_contents(a: &Analysis, plan: &Plan, start: u64, end: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    let ram_bytes: u64 = a
        .map
        .usable
        .iter()
        .map(|&(s, e)| e.min(end).saturating_sub(s.max(start)))
        .sum();
    if ram_bytes < end - start {
        parts.push("hole".into());
    }
    let low_ram: u64 = a
        .map
        .usable
        .iter()
        .map(|&(s, e)| e.min(end).min(LOW_MEMORY_END).saturating_sub(s.max(start)))
        .sum();
    if low_ram > 0 {
        parts.push("RAM below 1 MiB".into());
    }
    let owners: Vec<String> = plan
        .tdmrs
        .iter()
        .enumerate()
        .filter(|(_, t)| {
            t.pamt
                .levels()
                .iter()
                .any(|&(b, s)| b < end && b.saturating_add(s) > start)
        })
        .map(|(i, _)| i.to_string())
        .collect();
    if !owners.is_empty() {
        let s = if owners.len() == 1 { "" } else { "s" };
        parts.push(format!("PAMT of TDMR{s} {}", owners.join(", ")));
    }
    if parts.is_empty() {
        parts.push("RAM".into());
    }
    parts.join(" + ")
}

/// The text report.
pub fn text(a: &Analysis) -> String {
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = write_text(&mut out, a);
    out
}

fn write_text(f: &mut String, a: &Analysis) -> fmt::Result {
    write_map(f, a)?;
    writeln!(f)?;
    let chosen = a.chosen();
    match &chosen.plan {
        Ok(plan) => write_plan(f, a, chosen, plan)?,
        Err(e) => {
            writeln!(f, "No plan ({}): {e}", chosen.name())?;
            writeln!(f, "  {}", explain(e, chosen.strategy, a))?;
        }
    }
    writeln!(f)?;
    write_other(f, a)
}

fn write_map(f: &mut String, a: &Analysis) -> fmt::Result {
    let map = &a.map;
    let usable = map.usable_bytes();
    writeln!(f, "Memory map")?;
    writeln!(f, "  source      {}", map.source)?;
    let top = map.usable.last().map_or(0, |r| r.1);
    writeln!(
        f,
        "  usable RAM  {} range{}, {} in all, up to {top:#x} ({})",
        map.usable.len(),
        if map.usable.len() == 1 { "" } else { "s" },
        Bytes(usable),
        Bytes(top)
    )?;
    let nodes = node_bytes(a);
    if map.numa.is_empty() {
        writeln!(f, "  NUMA        none in the input (all memory on node 0)")?;
    } else {
        let list: Vec<String> = nodes
            .iter()
            .map(|&(n, b)| format!("node {n} {}", Bytes(b)))
            .collect();
        let s = if nodes.len() == 1 { "" } else { "s" };
        writeln!(
            f,
            "  NUMA        {} node{s}: {}",
            nodes.len(),
            list.join(", ")
        )?;
    }
    match &map.cmrs {
        None => writeln!(
            f,
            "  CMRs        assumed = usable ranges (the input gives none; Linux assumes the same)"
        )?,
        Some(cmrs) => {
            let list: Vec<String> = cmrs
                .iter()
                .map(|&(s, e)| format!("[{s:#x}, {e:#x})"))
                .collect();
            writeln!(f, "  CMRs        {} given: {}", cmrs.len(), list.join(" "))?;
        }
    }
    let l = a.limits();
    write!(
        f,
        "  limits      {} TDMRs, {} reserved areas per TDMR, PAMT entries {}/{}/{} bytes (4K/2M/1G)",
        l.max_tdmrs,
        l.max_reserved_per_tdmr,
        l.pamt_entry_size[0],
        l.pamt_entry_size[1],
        l.pamt_entry_size[2]
    )?;
    match l.dpamt_bitmap_bits {
        Some(bits) => writeln!(
            f,
            ", Dynamic PAMT ({bits} bit{} per 4 KiB page replaces the 4K level)",
            if bits == 1 { "" } else { "s" }
        ),
        None => writeln!(f),
    }
}

/// One line: TDMRs, largest reserved-area count, PAMT bytes and share.
fn summary(a: &Analysis, plan: &Plan) -> String {
    let usable = a.map.usable_bytes();
    format!(
        "{} TDMR{}, largest reserved-area count {}, PAMT {} = {:.3}% of usable RAM",
        plan.tdmrs.len(),
        if plan.tdmrs.len() == 1 { "" } else { "s" },
        plan.max_reserved(),
        Bytes(plan.pamt_bytes()),
        percent(plan.pamt_bytes(), usable)
    )
}

fn write_plan(f: &mut String, a: &Analysis, o: &Outcome, plan: &Plan) -> fmt::Result {
    let title = match o.strategy {
        Strategy::Best => "Plan (best)",
        Strategy::Linux => "Plan (Linux's construction)",
    };
    writeln!(f, "{title}: {}", summary(a, plan))?;
    for (i, t) in plan.tdmrs.iter().enumerate() {
        write_tdmr(f, a, plan, i, t)?;
    }
    writeln!(f, "  PAMT nodes      {}", pamt_nodes(o, plan))?;
    write_verdicts(f, o)
}

fn write_tdmr(f: &mut String, a: &Analysis, plan: &Plan, i: usize, t: &PlannedTdmr) -> fmt::Result {
    let n = t.reserved.len();
    writeln!(
        f,
        "  TDMR {i}  [{:#x}, {:#x})  {}  node {}  {n} reserved area{}",
        t.base,
        t.end(),
        Bytes(t.size),
        t.node,
        if n == 1 { "" } else { "s" }
    )?;
    for r in &t.reserved {
        let (s, e) = (t.base + r.offset, t.base + r.offset + r.size);
        writeln!(
            f,
            "      reserved  [{s:#x}, {e:#x})  {}  {}",
            Bytes(r.size),
            area_contents(a, plan, s, e)
        )?;
    }
    let levels: Vec<String> = ["4K", "2M", "1G"]
        .iter()
        .zip(t.pamt.levels())
        .map(|(name, (b, s))| format!("{name} [{b:#x}, {:#x}) {}", b + s, Bytes(s)))
        .collect();
    let base = t.pamt.l4k.0;
    let place = plan
        .tdmrs
        .iter()
        .position(|d| d.base <= base && base < d.end())
        .map_or_else(
            || "outside every TDMR".to_owned(),
            |k| format!("in TDMR {k}"),
        );
    writeln!(
        f,
        "      PAMT      {}  ({}; {place}, node {})",
        levels.join(" | "),
        Bytes(t.pamt.bytes()),
        t.pamt_node
    )?;
    if let Some(why) = t.pamt_remote {
        writeln!(f, "      {}", remote_note(t, why))?;
    }
    Ok(())
}

/// The flag under a TDMR whose PAMT is on another node.
fn remote_note(t: &PlannedTdmr, why: RemoteReason) -> String {
    format!(
        "REMOTE PAMT: on node {}, the TDMR is on node {}: {why} ({})",
        t.pamt_node,
        t.node,
        why.kind()
    )
}

/// The line that counts PAMTs off their TDMR's node, and memory off its
/// PAMT's node.
fn pamt_nodes(o: &Outcome, plan: &Plan) -> String {
    let memory = match o.remote_memory {
        Some(0) | None => "; all memory has its PAMT on its own node".to_owned(),
        Some(b) => format!(
            "; {} of memory has its PAMT on another node (TDMRs that cross a node boundary)",
            Bytes(b)
        ),
    };
    format!("{}{memory}", pamt_count(plan))
}

/// How many PAMTs are off their TDMR's node, and which.
fn pamt_count(plan: &Plan) -> String {
    let remote: Vec<String> = plan
        .tdmrs
        .iter()
        .enumerate()
        .filter(|(_, t)| t.pamt_remote.is_some())
        .map(|(i, _)| i.to_string())
        .collect();
    let all = plan.tdmrs.len();
    if remote.is_empty() {
        format!("0 remote: every PAMT on its TDMR's node ({all} of {all})")
    } else {
        let s = if remote.len() == 1 { "" } else { "s" };
        format!(
            "{} remote: {} of {all} PAMTs on another node than their TDMR's (TDMR{s} {})",
            remote.len(),
            remote.len(),
            remote.join(", ")
        )
    }
}

fn write_verdicts(f: &mut String, o: &Outcome) -> fmt::Result {
    match &o.check {
        Some(Ok(())) => writeln!(
            f,
            "  plan check      passes every TDH.SYS.CONFIG rule; all usable RAM from 1 MiB up is TDX memory or PAMT"
        )?,
        Some(Err(e)) => writeln!(
            f,
            "  plan check      FAILS: {e} (TDH.SYS.CONFIG would refuse this plan)"
        )?,
        None => {}
    }
    if let Some(s) = &o.sys_config {
        writeln!(f, "  TDH.SYS.CONFIG  {s}  [simulated module]")?;
    }
    Ok(())
}

fn write_other(f: &mut String, a: &Analysis) -> fmt::Result {
    let o = a.other();
    let title = match o.strategy {
        Strategy::Linux => "Linux's construction on the same map",
        Strategy::Best => "The best plan on the same map",
    };
    match &o.plan {
        Err(e) => {
            writeln!(f, "{title}: fails: {e}")?;
            writeln!(f, "  {}", explain(e, o.strategy, a))
        }
        Ok(plan) => {
            write!(f, "{title}: {}", summary(a, plan))?;
            if let Ok(chosen) = &a.chosen().plan {
                let (mine, theirs) = (chosen.pamt_bytes(), plan.pamt_bytes());
                let cmp = match theirs.cmp(&mine) {
                    std::cmp::Ordering::Equal => " (same PAMT)".to_owned(),
                    std::cmp::Ordering::Greater => format!(" ({} more PAMT)", Bytes(theirs - mine)),
                    std::cmp::Ordering::Less => format!(" ({} less PAMT)", Bytes(mine - theirs)),
                };
                f.push_str(&cmp);
            }
            writeln!(f)?;
            if o.strategy == Strategy::Linux {
                for (i, t) in plan.tdmrs.iter().enumerate() {
                    writeln!(
                        f,
                        "  TDMR {i}  [{:#x}, {:#x})  {}  node {}  {} reserved  PAMT {} at {:#x} node {}",
                        t.base,
                        t.end(),
                        Bytes(t.size),
                        t.node,
                        t.reserved.len(),
                        Bytes(t.pamt.bytes()),
                        t.pamt.l4k.0,
                        t.pamt_node
                    )?;
                    if let Some(why) = t.pamt_remote {
                        writeln!(f, "      {}", remote_note(t, why))?;
                    }
                }
            }
            writeln!(f, "  PAMT nodes      {}", pamt_nodes(o, plan))?;
            write_verdicts(f, o)
        }
    }
}

/// What a planning error of `strategy` means for the operator.
pub fn explain(e: &PlanError, strategy: Strategy, a: &Analysis) -> String {
    let linux = strategy == Strategy::Linux;
    match e {
        PlanError::TooManyReservedAreas { block, needed, max } => format!(
            "the 1 GiB block [{block:#x}, {:#x}) alone holds {needed} holes that must be reserved; \
             a TDMR may have {max} reserved areas, and every TDMR is 1 GiB aligned, so no cut helps",
            block + GIB
        ),
        PlanError::ReservedAreasExhausted { max, .. } => format!(
            "Linux gives every hole, and every PAMT inside the TDMR, its own reserved area \
             and never splits a TDMR to make room; this TDMR needs more than {max}"
        ),
        PlanError::TooManyTdmrs { needed, max } if linux => format!(
            "Linux makes a TDMR for every run of memory blocks (per NUMA node) and never \
             joins runs across gaps; the map needs {needed} TDMRs, the module allows {max}"
        ),
        PlanError::TooManyTdmrs { needed, max } => format!(
            "the memory needs {needed} 1 GiB-aligned TDMRs even after joining runs across \
             gaps; the module allows {max}"
        ),
        PlanError::NotConvertible { .. } => {
            let cmrs = match &a.map.cmrs {
                Some(c) => format!("the {} CMRs given", c.len()),
                None => "the CMRs".to_owned(),
            };
            format!("every usable range must lie inside one convertible memory range; check {cmrs}")
        }
        PlanError::NoPamtSpace { .. } if linux => {
            "Linux allocates each TDMR's PAMT as one contiguous run of free RAM (on the TDMR's \
             node first) and finds none large enough"
                .to_owned()
        }
        PlanError::NoPamtSpace { .. } => {
            "no free usable RAM large enough for this PAMT (each level is physically contiguous)"
                .to_owned()
        }
        PlanError::TooHigh { .. } => "a TDMR cannot describe memory above 2^52".to_owned(),
        PlanError::NoMemory => "nothing to plan".to_owned(),
        PlanError::BadCmr { .. } => "the TDX module refuses a CMR list that is not 4 KiB aligned, \
             sorted by address and free of overlaps (TDX_CMR_LIST_INVALID at TDH.SYS.INIT): \
             no machine reports such a list"
            .to_owned(),
        PlanError::Internal(_) => "a planner bug: please report it with the input".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_pick_the_unit() {
        assert_eq!(Bytes(0x9f000).to_string(), "636 KiB");
        assert_eq!(Bytes(1 << 30).to_string(), "1 GiB");
        assert_eq!(Bytes(0x98c00).to_string(), "611 KiB");
        assert_eq!(Bytes(0x71c90000).to_string(), "1.78 GiB");
        assert_eq!(Bytes(100).to_string(), "100 bytes");
    }

    #[test]
    fn percent_of_nothing_is_zero() {
        assert_eq!(percent(1, 0), 0.0);
        assert_eq!(percent(1, 4), 25.0);
    }
}
