//! Linux's TDMR construction ([`Strategy::Linux`](super::Strategy::Linux),
//! where the steps are described).

use alloc::vec::Vec;

use super::{
    GIB, Normalized, PAGE, PamtPlacement, Plan, PlanError, PlannedTdmr, RemoteReason, ReservedArea,
    Strategy, intervals,
};

/// The lowest address of ZONE_NORMAL on x86_64.
const ZONE_NORMAL_START: u64 = 4 * GIB;

pub(crate) fn plan(n: &Normalized) -> Result<Plan, PlanError> {
    let max_tdmrs = n.limits.max_tdmrs;
    // fill_out_tdmrs
    let mut tdmrs: Vec<(u64, u64)> = Vec::new();
    for b in &n.mem {
        let mut start = b.start & !(GIB - 1);
        let end = b.end.next_multiple_of(GIB);
        if let Some(&(_, last_end)) = tdmrs.last() {
            if end <= last_end {
                continue;
            }
            if start < last_end {
                start = last_end;
            }
        }
        tdmrs.push((start, end));
    }
    // Linux stops at the first TDMR past the limit ("TDMRs exhausted");
    // the error names how many the map would need (the whole walk above).
    if tdmrs.is_empty() || tdmrs.len() > max_tdmrs {
        return Err(PlanError::TooManyTdmrs {
            needed: tdmrs.len().max(1),
            max: max_tdmrs,
        });
    }

    // PAMT allocation, TDMR by TDMR, from free usable memory tagged with
    // its node.
    let mut free: Vec<(u64, u64, u32)> = Vec::with_capacity(n.mem.len());
    for r in &n.mem {
        for (s, e) in intervals::subtract(&[(r.start, r.end)], &n.avoid) {
            free.push((s, e, r.node));
        }
    }
    let mut pamts: Vec<PamtPlacement> = Vec::with_capacity(tdmrs.len());
    let mut nodes = Vec::with_capacity(tdmrs.len());
    let mut pamt_nodes = Vec::with_capacity(tdmrs.len());
    for &(base, end) in &tdmrs {
        n.round();
        let node = n.node_at(base);
        nodes.push(node);
        let sizes = n.limits.pamt_sizes(end - base);
        let total: u64 = sizes.iter().sum();
        let Some((idx, at)) = alloc_contig(&free, total, node) else {
            return Err(PlanError::NoPamtSpace {
                base,
                end,
                bytes: total,
            });
        };
        // Carve [at, at + total) out of free range `idx`.
        let (s, e, nd) = free[idx];
        pamt_nodes.push(nd);
        free.remove(idx);
        if at + total < e {
            free.insert(idx, (at + total, e, nd));
        }
        if s < at {
            free.insert(idx, (s, at, nd));
        }
        pamts.push(PamtPlacement::contiguous(at, sizes));
    }

    // Reserved areas.
    let max_rsvd = n.limits.max_reserved_per_tdmr;
    let mut out = Vec::with_capacity(tdmrs.len());
    for (i, &(base, end)) in tdmrs.iter().enumerate() {
        let mut areas: Vec<ReservedArea> = Vec::new();
        let mut add = |s: u64, e: u64| -> Result<(), PlanError> {
            if areas.len() >= max_rsvd {
                return Err(PlanError::ReservedAreasExhausted {
                    base,
                    end,
                    max: max_rsvd,
                });
            }
            areas.push(ReservedArea {
                offset: s - base,
                size: e - s,
            });
            Ok(())
        };
        let mut prev_end = base;
        for b in &n.mem {
            if b.start >= end {
                break;
            }
            if b.end < base {
                continue;
            }
            if b.start <= prev_end {
                prev_end = b.end;
                continue;
            }
            add(prev_end, b.start)?;
            prev_end = b.end;
        }
        if prev_end < end {
            add(prev_end, end)?;
        }
        for p in &pamts {
            let (pb, pe) = (p.l4k.0, p.l4k.0 + p.bytes());
            if pe <= base || pb >= end {
                continue;
            }
            add(pb.max(base), pe.min(end))?;
        }
        areas.sort_by_key(|a| a.offset);
        out.push(PlannedTdmr {
            base,
            size: end - base,
            node: nodes[i],
            reserved: areas,
            pamt: pamts[i],
            pamt_node: pamt_nodes[i],
            // alloc_contig_pages falls back to other nodes only when the
            // TDMR's node has no run large enough.
            pamt_remote: (pamt_nodes[i] != nodes[i]).then_some(RemoteReason::NoRoom),
        });
    }
    Ok(Plan {
        tdmrs: out,
        strategy: Strategy::Linux,
        usable_bytes: n.usable_bytes,
    })
}

/// The model of `alloc_contig_pages(nr, GFP_KERNEL, nid, ...)`: the lowest
/// free run of `bytes` on `node` in ZONE_NORMAL, then below 4 GiB, then on
/// the other nodes (in node order) the same way. Returns the index of the
/// free range and the address.
fn alloc_contig(free: &[(u64, u64, u32)], bytes: u64, node: u32) -> Option<(usize, u64)> {
    // One pass (bounded work): the best candidate by (another node, node
    // number, below ZONE_NORMAL, address); `free` is in address order.
    let mut best: Option<((bool, u32, bool), usize, u64)> = None;
    for (i, &(s, e, rn)) in free.iter().enumerate() {
        for (low, (zlo, zhi)) in [
            (false, (ZONE_NORMAL_START, u64::MAX)),
            (true, (0, ZONE_NORMAL_START)),
        ] {
            let lo = s.max(zlo).next_multiple_of(PAGE);
            let hi = e.min(zhi);
            if lo < hi && hi - lo >= bytes {
                let key = (rn != node, rn, low);
                if best.is_none_or(|(k, _, _)| key < k) {
                    best = Some((key, i, lo));
                }
            }
        }
    }
    best.map(|(_, i, at)| (i, at))
}
