//! The best-effort planner ([`Strategy::Best`](super::Strategy::Best),
//! where the algorithm is described).

use alloc::vec::Vec;

use super::{
    GIB, MAX_PA, Normalized, PamtPlacement, Plan, PlanError, PlannedTdmr, RemoteReason,
    ReservedArea, Strategy, intervals,
};

/// Memory below this is scarce on a host (DMA zones, the kernel image);
/// PAMTs go above it when the choice is otherwise equal.
const LOW_4G: u64 = 4 * GIB;

/// Holes and forced bytes, with a prefix count for fast area counting.
struct Holes {
    /// Complement of memory within `[0, MAX_PA)`, sorted.
    holes: Vec<(u64, u64)>,
    /// `forced_before[k]`: holes among `holes[..k]` that contain a forced byte.
    forced_before: Vec<u32>,
    /// Bytes that must be reserved (outside every CMR), normalized.
    forced: Vec<(u64, u64)>,
}

impl Holes {
    fn new(mem: &[(u64, u64)], forced: Vec<(u64, u64)>) -> Self {
        let holes = intervals::subtract(&[(0, MAX_PA)], mem);
        let mut forced_before = Vec::with_capacity(holes.len() + 1);
        let mut n = 0u32;
        forced_before.push(0);
        for &(s, e) in &holes {
            n += u32::from(intervals::intersects(&forced, s, e));
            forced_before.push(n);
        }
        Self {
            holes,
            forced_before,
            forced,
        }
    }

    /// Reserved areas `[a, b)` needs: holes clipped to it with a forced byte.
    fn areas(&self, a: u64, b: u64) -> usize {
        let h = &self.holes;
        let i0 = h.partition_point(|&(_, e)| e <= a);
        let i1 = h.partition_point(|&(s, _)| s < b);
        if i0 >= i1 {
            return 0;
        }
        let clipped = |i: usize| {
            let (s, e) = h[i];
            usize::from(intervals::intersects(&self.forced, s.max(a), e.min(b)))
        };
        let mut n = clipped(i0);
        if i1 - 1 > i0 {
            n += clipped(i1 - 1);
        }
        if i1 - i0 > 2 {
            n += (self.forced_before[i1 - 1] - self.forced_before[i0 + 1]) as usize;
        }
        n
    }
}

struct Ctx<'a> {
    n: &'a Normalized,
    /// Memory, merged across nodes.
    mem: Vec<(u64, u64)>,
    holes: Holes,
    /// Largest TDMR to make (its PAMT must fit in one run of memory).
    cap: u64,
}

impl Ctx<'_> {
    /// First memory byte at or above `pa`, if below `end`.
    fn first_mem(&self, pa: u64, end: u64) -> Option<u64> {
        let i = self.mem.partition_point(|&(_, e)| e <= pa);
        self.mem
            .get(i)
            .map(|&(s, _)| s.max(pa))
            .filter(|&s| s < end)
    }

    /// One past the last memory byte below `pa`, if above `start`.
    fn last_mem_end(&self, start: u64, pa: u64) -> Option<u64> {
        let i = self.mem.partition_point(|&(s, _)| s < pa);
        i.checked_sub(1)
            .map(|i| self.mem[i].1.min(pa))
            .filter(|&e| e > start)
    }

    /// Cuts `[rs, re)` into the fewest TDMRs of at most `cap` bytes whose
    /// areas fit `budget`, trimmed to the blocks that hold memory.
    fn split_run(
        &self,
        rs: u64,
        re: u64,
        budget: usize,
        cap: u64,
    ) -> Result<Vec<(u64, u64)>, PlanError> {
        let mut out = Vec::new();
        let mut a = rs;
        while a < re {
            // Skip leading blocks without memory (only in joined runs).
            let Some(m) = self.first_mem(a, re) else {
                break;
            };
            a = m & !(GIB - 1);
            let one = self.holes.areas(a, a + GIB);
            if one > budget {
                return Err(PlanError::TooManyReservedAreas {
                    block: a,
                    needed: one,
                    max: self.n.limits.max_reserved_per_tdmr,
                });
            }
            // Largest k with areas(a, a + k GiB) <= budget.
            let (mut lo, mut hi) = (1u64, ((re - a) / GIB).min(cap / GIB).max(1));
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if self.holes.areas(a, a + mid * GIB) <= budget {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let mut b = a + lo * GIB;
            // Trim trailing blocks without memory.
            if let Some(last) = self.last_mem_end(a, b) {
                b = last.next_multiple_of(GIB);
            }
            out.push((a, b));
            a = b;
        }
        Ok(out)
    }

    /// TDMRs for every run, joining runs across gaps while there are too
    /// many.
    ///
    /// Also says whether runs were joined (without joins, every budget from
    /// the most areas a TDMR of the result needs up to `budget` gives the
    /// same TDMRs: the greedy cut stops where a TDMR would need one more).
    fn partition(&self, budget: usize) -> Result<(Vec<(u64, u64)>, bool), PlanError> {
        self.n.round();
        // Runs of 1 GiB blocks per NUMA node, so that a page's PAMT entries
        // are on the page's node (each TDMR's PAMT is on the TDMR's node):
        // covers on the same node that overlap or touch share a run; a
        // cover on another node starts a new run, at the end of the current
        // one when it overlaps it (the block where the node changes stays
        // with the run it starts in, as in Linux's `fill_out_tdmrs`).
        // Joining below may still put nodes together when TDMRs run out.
        // In address order of the memory (sorted and disjoint), so a run's
        // node is the node of its first byte, as the TDMR's will be.
        let covers = self
            .n
            .mem
            .iter()
            .map(|r| (r.start & !(GIB - 1), r.end.next_multiple_of(GIB), r.node));
        let mut runs: Vec<(u64, u64)> = Vec::with_capacity(self.n.mem.len());
        // The node of the current run (of its first byte).
        let mut run_node = u32::MAX;
        for (s, e, node) in covers {
            let start = match runs.last_mut() {
                Some(r) if s <= r.1 && node == run_node => {
                    r.1 = r.1.max(e);
                    continue;
                }
                Some(r) => s.max(r.1),
                None => s,
            };
            if start < e {
                runs.push((start, e));
                run_node = node;
            }
        }
        let mut pieces: Vec<Vec<(u64, u64)>> = runs
            .iter()
            .map(|&(s, e)| self.split_run(s, e, budget, self.cap))
            .collect::<Result<_, _>>()?;
        let max = self.n.limits.max_tdmrs;
        let mut total: usize = pieces.iter().map(Vec::len).sum();
        let joined = total > max;
        if joined {
            // Join across gaps, smallest first, while it helps. Runs are
            // kept in a linked list so a join is O(1) besides the re-split.
            let mut next: Vec<usize> = (1..=runs.len()).collect();
            let mut prev: Vec<usize> = (0..runs.len()).map(|i| i.wrapping_sub(1)).collect();
            let mut alive = alloc::vec![true; runs.len()];
            for _pass in 0..2 {
                let mut gaps: Vec<(u64, usize)> = (0..runs.len())
                    .filter(|&i| alive[i] && next[i] < runs.len())
                    .map(|i| (runs[next[i]].0 - runs[i].1, i))
                    .collect();
                gaps.sort_unstable();
                for (_, i) in gaps {
                    if total <= max {
                        break;
                    }
                    if !alive[i] || next[i] >= runs.len() {
                        continue;
                    }
                    let j = next[i];
                    let joined = self.split_run(runs[i].0, runs[j].1, budget, self.cap)?;
                    let before = pieces[i].len() + pieces[j].len();
                    if joined.len() < before {
                        total = total - before + joined.len();
                        runs[i].1 = runs[j].1;
                        pieces[i] = joined;
                        pieces[j].clear();
                        alive[j] = false;
                        next[i] = next[j];
                        if next[j] < runs.len() {
                            prev[next[j]] = i;
                        }
                    }
                }
                if total <= max {
                    break;
                }
            }
            if total > max {
                return Err(PlanError::TooManyTdmrs { needed: total, max });
            }
        }
        Ok((pieces.into_iter().flatten().collect(), joined))
    }
}

impl Ctx<'_> {
    /// `plan`, made with area budget `budget`, has PAMTs off their TDMR's
    /// node. Smaller TDMRs may bring them home: a TDMR whose node has no
    /// run for its PAMT is cut into pieces whose PAMTs fit the node's
    /// largest run, and, for the area limit, the run is cut again with
    /// fewer areas per TDMR. Each costs PAMT memory (4 KiB and more per
    /// extra TDMR), so a plan with fewer remote PAMTs is taken only within
    /// MAX_TDMRS and without more PAMT than Linux's construction needs on
    /// the map (or than `plan`, if more): locality first, but never more
    /// PAMT than Linux.
    fn more_local(&self, plan: Plan, budget: usize) -> Plan {
        let n = self.n;
        let bound = super::linux::plan(n)
            .map_or(u64::MAX, |l| l.pamt_bytes())
            .max(plan.pamt_bytes());
        let better = |p: &Plan, than: &Plan| {
            p.remote_pamts() < than.remote_pamts() && p.pamt_bytes() <= bound
        };
        let mut best = plan;
        // The largest run of free memory per node, minus ranges to avoid:
        // one pass over the memory (bounded work).
        let mut largest_of: alloc::collections::BTreeMap<u32, u64> = Default::default();
        for r in &n.mem {
            for (s, e) in intervals::subtract(&[(r.start, r.end)], &n.avoid) {
                let l = largest_of.entry(r.node).or_default();
                *l = (*l).max(e - s);
            }
        }
        let largest = |node: u32| largest_of.get(&node).copied().unwrap_or(0);
        // Cut TDMRs without room at home to what their node can hold.
        let mut cut = Vec::with_capacity(best.tdmrs.len());
        let mut changed = false;
        for t in &best.tdmrs {
            if t.pamt_remote != Some(RemoteReason::NoRoom) {
                cut.push((t.base, t.end()));
                continue;
            }
            // The largest k < size in GiB whose PAMT fits the node's
            // largest run (PAMT sizes grow with k: a binary search).
            let room = largest(t.node);
            let fits = |k: u64| n.limits.pamt_sizes(k * GIB).iter().sum::<u64>() <= room;
            let (mut lo, mut hi) = (0u64, t.size / GIB);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) { lo = mid } else { hi = mid }
            }
            if lo == 0 {
                cut.push((t.base, t.end()));
                continue;
            }
            let Ok(pieces) = self.split_run(t.base, t.end(), budget, lo * GIB) else {
                return best;
            };
            changed |= pieces.len() > 1;
            cut.extend(pieces);
        }
        if changed
            && cut.len() <= n.limits.max_tdmrs
            && let Ok(p) = place(self, &cut, Locality::Local)
            && better(&p, &best)
        {
            best = p;
        }
        // Fewer areas per TDMR: room for an area at home. A budget from the
        // most areas a partition's TDMRs need up to the one that made it
        // cuts the same TDMRs (the greedy cut stops where a TDMR would need
        // one more), so those budgets are skipped.
        let most_areas = |tdmrs: &mut dyn Iterator<Item = (u64, u64)>| {
            tdmrs
                .map(|(a, b)| self.holes.areas(a, b))
                .max()
                .unwrap_or(0)
        };
        let mut b = budget.min(most_areas(
            &mut best.tdmrs.iter().map(|t| (t.base, t.end())),
        ));
        while best.remote_pamts() > 0 && b > 1 {
            b -= 1;
            // Fewer areas per TDMR only makes more TDMRs.
            let Ok((tdmrs, _)) = self.partition(b) else {
                break;
            };
            if let Ok(p) = place(self, &tdmrs, Locality::Local)
                && better(&p, &best)
            {
                best = p;
            }
            b = b.min(most_areas(&mut tdmrs.iter().copied()));
        }
        best
    }
}

/// A stretch of memory inside one TDMR that PAMTs can be carved from, with
/// a free window `[lo, hi)` and whether each end touches a hole that already
/// needs an area.
#[derive(Debug, Clone)]
struct Slot {
    tdmr: usize,
    node: u32,
    lo: u64,
    hi: u64,
    lo_anchor: bool,
    hi_anchor: bool,
}

pub(crate) fn plan(n: &Normalized) -> Result<Plan, PlanError> {
    let mut mem: Vec<(u64, u64)> = n.mem.iter().map(|r| (r.start, r.end)).collect();
    intervals::normalize(&mut mem);
    // Bytes outside every CMR chain (sorted, disjoint, never touching).
    let forced = intervals::subtract(&[(0, MAX_PA)], &n.cmr_chains.list);
    // Every 1 GiB block with memory is in a TDMR, and a TDMR's PAMT is at
    // least its size times the bytes per GiB the module requires: when
    // that is more than all the memory there is, no cut helps (answered at
    // once: a huge map with huge PAMT entries would otherwise be cut into
    // millions of TDMRs before failing).
    let free = intervals::subtract(&mem, &n.avoid);
    let mut blocks = 0u64;
    let mut last_block = None;
    for &(s, e) in &mem {
        let (first, last) = (s / GIB, (e - 1) / GIB);
        let first = if last_block == Some(first) {
            first + 1
        } else {
            first
        };
        blocks += (last + 1).saturating_sub(first);
        last_block = Some(last);
    }
    let per_gib: u64 = n.limits.pamt_required(GIB).iter().sum();
    let least = blocks.saturating_mul(per_gib);
    let total_free: u64 = free.iter().map(|&(s, e)| e - s).sum();
    if least > total_free {
        let (base, end) = (
            mem[0].0 & !(GIB - 1),
            mem[mem.len() - 1].1.next_multiple_of(GIB),
        );
        return Err(PlanError::NoPamtSpace {
            base,
            end,
            bytes: least,
        });
    }
    // No TDMR larger than the largest run of memory can give a PAMT to.
    let largest = free.iter().map(|&(s, e)| e - s).max().unwrap_or(0);
    let fits = |gib: u64| n.limits.pamt_sizes(gib * GIB).iter().sum::<u64>() <= largest;
    let (mut lo, mut hi) = (1u64, MAX_PA / GIB);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    let mut ctx = Ctx {
        n,
        holes: Holes::new(&mem, forced),
        mem,
        cap: lo * GIB,
    };

    let max_r = n.limits.max_reserved_per_tdmr;
    let mut last_err = None;
    // No range of addresses needs more areas than there are holes with a
    // forced byte, so every budget from that count up cuts the same TDMRs:
    // start there, whatever the limit says (bounded work).
    let forced_holes = ctx.holes.forced_before.last().map_or(0, |&h| h as usize);
    let mut budget = max_r.min(forced_holes.max(1));
    while budget >= 1 {
        let (tdmrs, joined) = match ctx.partition(budget) {
            Ok(t) => t,
            // With the full budget and no cap, the limit itself is the
            // answer; otherwise the reason is the PAMT that did not fit.
            Err(e) => return Err(last_err.unwrap_or(e)),
        };
        let placed = place(&ctx, &tdmrs, Locality::Local)
            .or_else(|_| place(&ctx, &tdmrs, Locality::Tiebreak));
        match placed {
            Ok(plan) if plan.remote_pamts() == 0 => return Ok(plan),
            Ok(plan) => return Ok(ctx.more_local(plan, budget)),
            Err(e) => {
                // A PAMT with no run of memory big enough anywhere: make
                // TDMRs that large no more (halve it). Otherwise leave room
                // for a new area by lowering the area budget.
                match e {
                    Failed::NoRun { base, end } if end - base > GIB => {
                        ctx.cap = ((end - base) / 2)
                            .next_multiple_of(GIB)
                            .min(end - base - GIB);
                    }
                    // Without joins, budgets down to the most areas a
                    // TDMR needs make the same TDMRs: skip them.
                    _ if !joined => {
                        let most = tdmrs
                            .iter()
                            .map(|&(a, b)| ctx.holes.areas(a, b))
                            .max()
                            .unwrap_or(0);
                        budget = (budget - 1).min(most.saturating_sub(1));
                    }
                    _ => budget -= 1,
                }
                last_err = Some(e.into());
            }
        }
    }
    Err(last_err.unwrap_or(PlanError::TooManyReservedAreas {
        block: ctx.mem.first().map_or(0, |m| m.0 & !(GIB - 1)),
        needed: 1,
        max: max_r,
    }))
}

/// Why a placement attempt failed.
enum Failed {
    /// No run of free memory is big enough for this TDMR's PAMT.
    NoRun { base: u64, end: u64 },
    /// Runs are big enough, but each would need a reserved area in a TDMR
    /// that has none left.
    NoArea { base: u64, end: u64, bytes: u64 },
    /// Anything else.
    Plan(PlanError),
}

impl From<Failed> for PlanError {
    fn from(f: Failed) -> Self {
        match f {
            Failed::NoRun { base, end } => PlanError::NoPamtSpace {
                base,
                end,
                bytes: 0,
            },
            Failed::NoArea { base, end, bytes } => PlanError::NoPamtSpace { base, end, bytes },
            Failed::Plan(e) => e,
        }
    }
}

impl From<PlanError> for Failed {
    fn from(e: PlanError) -> Self {
        Failed::Plan(e)
    }
}

/// How [`place`] treats each TDMR's NUMA node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    /// Every PAMT on its TDMR's node if there is any place for it there,
    /// even one that costs a reserved area a remote place would not.
    Local,
    /// Fewest reserved areas first, the node only breaks ties: when
    /// `Local` finds no plan, this one still does whenever it exists.
    Tiebreak,
}

/// A pass of [`place`]: which slots a TDMR's PAMT may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Slots on the TDMR's node.
    Own,
    /// Slots on other nodes.
    Other,
    /// Any slot.
    Any,
}

/// Places the PAMTs of `tdmrs` and builds the plan.
fn place(ctx: &Ctx<'_>, tdmrs: &[(u64, u64)], locality: Locality) -> Result<Plan, Failed> {
    let n = ctx.n;
    n.round();
    let max_r = n.limits.max_reserved_per_tdmr;
    let forced = &ctx.holes.forced;
    let sizes: Vec<[u64; 3]> = tdmrs
        .iter()
        .map(|&(a, b)| n.limits.pamt_sizes(b - a))
        .collect();
    let min_need = sizes
        .iter()
        .map(|s| s.iter().sum::<u64>())
        .min()
        .unwrap_or(0);
    // Slots: memory clipped to each TDMR, minus the ranges to avoid; only
    // those big enough for the smallest PAMT. Neighbours in the (sorted)
    // memory list tell whether an end touches a hole.
    let mut slots: Vec<Slot> = Vec::new();
    for (t, &(a, b)) in tdmrs.iter().enumerate() {
        let i0 = n.mem.partition_point(|r| r.end <= a);
        for (k, r) in n
            .mem
            .iter()
            .enumerate()
            .skip(i0)
            .take_while(|(_, r)| r.start < b)
        {
            let prev_end = k.checked_sub(1).map_or(0, |j| n.mem[j].end);
            let next_start = n.mem.get(k + 1).map_or(MAX_PA, |m| m.start);
            let clipped = (r.start.max(a), r.end.min(b));
            let split;
            let pieces: &[(u64, u64)] = if intervals::intersects(&n.avoid, clipped.0, clipped.1) {
                split = intervals::subtract(&[clipped], &n.avoid);
                &split
            } else {
                core::slice::from_ref(&clipped)
            };
            for &(lo, hi) in pieces {
                if hi - lo < min_need {
                    continue;
                }
                // A piece end that is not the range end was cut by the TDMR
                // edge or an avoided range: memory, not a hole, is there.
                let lo_anchor = lo == r.start
                    && lo > a
                    && prev_end < lo
                    && intervals::intersects(forced, prev_end.max(a), lo);
                let hi_anchor = hi == r.end
                    && hi < b
                    && next_start > hi
                    && intervals::intersects(forced, hi, next_start.min(b));
                slots.push(Slot {
                    tdmr: t,
                    node: r.node,
                    lo,
                    hi,
                    lo_anchor,
                    hi_anchor,
                });
            }
        }
    }
    let mut used: Vec<usize> = tdmrs.iter().map(|&(a, b)| ctx.holes.areas(a, b)).collect();
    let nodes: Vec<u32> = tdmrs.iter().map(|&(a, _)| n.node_at(a)).collect();
    let mut order: Vec<usize> = (0..tdmrs.len()).collect();
    order.sort_by_key(|&t| (core::cmp::Reverse(sizes[t].iter().sum::<u64>()), t));
    let mut pamt = alloc::vec![PamtPlacement::default(); tdmrs.len()];
    // Slots that touch a hole needing an area (few); slots per TDMR.
    let mut anchored: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].lo_anchor || slots[i].hi_anchor)
        .collect();
    let mut own: Vec<(usize, usize)> = alloc::vec![(0, 0); tdmrs.len()];
    for (i, sl) in slots.iter().enumerate() {
        let r = &mut own[sl.tdmr];
        if r.1 == 0 {
            r.0 = i;
        }
        r.1 = i + 1;
    }
    let mut pamt_node = alloc::vec![0u32; tdmrs.len()];
    let mut remote: Vec<Option<RemoteReason>> = alloc::vec![None; tdmrs.len()];
    // Local: every TDMR on its own node first, then the ones that found no
    // place there on other nodes (so a remote PAMT never takes the room a
    // later TDMR of that node needed). Tiebreak: one pass, the node only
    // breaks ties.
    let phases: &[Phase] = match locality {
        Locality::Local => &[Phase::Own, Phase::Other],
        Locality::Tiebreak => &[Phase::Any],
    };
    // The largest slot per node, and of all, before any PAMT is placed
    // (slots only shrink): a PAMT larger than that finds no slot there
    // without a scan of the slots (bounded work).
    let mut room_of: alloc::collections::BTreeMap<u32, u64> = Default::default();
    for sl in &slots {
        let r = room_of.entry(sl.node).or_default();
        *r = (*r).max(sl.hi - sl.lo);
    }
    let room_any = room_of.values().copied().max().unwrap_or(0);
    let room = |node: u32| room_of.get(&node).copied().unwrap_or(0);
    let mut pending = order;
    for &phase in phases {
        let mut deferred = Vec::new();
        for t in pending {
            let need: u64 = sizes[t].iter().sum();
            let nd = nodes[t];
            let fits = |s: &Slot| s.hi - s.lo >= need;
            let allowed = |s: &Slot| match phase {
                Phase::Own => s.node == nd,
                Phase::Other => s.node != nd,
                Phase::Any => true,
            };
            // Why a PAMT cannot be on its node: no run there is big enough,
            // or each needs an area its TDMR does not have.
            let why_not_local = || {
                if room(nd) >= need && slots.iter().any(|s| s.node == nd && fits(s)) {
                    RemoteReason::ReservedAreaLimit
                } else {
                    RemoteReason::NoRoom
                }
            };
            // Next to a hole that already has an area (no new area), on the
            // TDMR's node, in the TDMR itself, with the most room.
            let free_pick = |high_only: bool| {
                anchored
                    .iter()
                    .map(|&i| (i, &slots[i]))
                    .filter(|(_, s)| allowed(s) && fits(s) && (!high_only || s.hi > LOW_4G))
                    .min_by_key(|(_, s)| {
                        (s.node != nd, s.tdmr != t, core::cmp::Reverse(s.hi - s.lo))
                    })
                    .map(|(i, _)| i)
            };
            // A new area in a TDMR that has `spare` or more areas left after
            // it: the TDMR's own memory first, the same node first; stop at
            // the first ideal.
            let new_area_pick = |spare: usize, high_only: bool| {
                let mut best: Option<(usize, (bool, bool))> = None;
                let own_range = own[t].0..own[t].1;
                for i in own_range
                    .clone()
                    .chain((0..slots.len()).filter(|i| !own_range.contains(i)))
                {
                    let s = &slots[i];
                    if !allowed(s)
                        || !fits(s)
                        || used[s.tdmr] + 1 + spare > max_r
                        || (high_only && s.hi <= LOW_4G)
                    {
                        continue;
                    }
                    let k = (s.node != nd, s.tdmr != t);
                    if best.is_none_or(|(_, bk)| k < bk) {
                        best = Some((i, k));
                        if k == (false, false) {
                            break;
                        }
                    }
                }
                best.map(|(i, _)| i)
            };
            // Memory below 4 GiB is what a host can spare least: stay above
            // it while that costs nothing, or one area in a TDMR that keeps
            // one to spare; take it (and every last area) only when nothing
            // else fits.
            let may_fit = match phase {
                Phase::Own => room(nd) >= need,
                Phase::Other | Phase::Any => room_any >= need,
            };
            let pick = if may_fit {
                free_pick(true)
                    .or_else(|| new_area_pick(1, true))
                    .or_else(|| free_pick(false))
                    .or_else(|| new_area_pick(0, false))
            } else {
                None
            };
            let Some(i) = pick else {
                if phase == Phase::Own {
                    remote[t] = Some(why_not_local());
                    deferred.push(t);
                    continue;
                }
                let (base, end) = tdmrs[t];
                // No run big enough at all (only smaller TDMRs help), or runs
                // whose TDMRs have no area to spare (a lower budget helps).
                return Err(
                    if room_any >= need && slots.iter().any(|s| s.hi - s.lo >= need) {
                        Failed::NoArea {
                            base,
                            end,
                            bytes: need,
                        }
                    } else {
                        Failed::NoRun { base, end }
                    },
                );
            };
            if phase == Phase::Any && slots[i].node != nd {
                // Only reached when the local placement found no plan at
                // all: with room on the node, it was the areas that ran out.
                remote[t] = Some(why_not_local());
            }
            let s = &mut slots[i];
            let at = if s.hi_anchor || !s.lo_anchor {
                if !(s.hi_anchor || s.lo_anchor) {
                    used[s.tdmr] += 1;
                    anchored.push(i);
                }
                s.hi -= need;
                s.hi_anchor = true;
                s.hi
            } else {
                let at = s.lo;
                s.lo += need;
                at
            };
            pamt[t] = PamtPlacement::contiguous(at, sizes[t]);
            pamt_node[t] = s.node;
        }
        pending = deferred;
    }

    // Reserved areas from the final picture: holes (memory minus PAMTs)
    // clipped to each TDMR, where they hold a forced byte or a PAMT.
    let mut pamt_set: Vec<(u64, u64)> = pamt
        .iter()
        .map(|p| (p.l4k.0, p.l4k.0 + p.bytes()))
        .collect();
    intervals::normalize(&mut pamt_set);
    let mem_left = intervals::subtract(&ctx.mem, &pamt_set);
    let mut must: Vec<(u64, u64)> = forced
        .iter()
        .copied()
        .chain(pamt_set.iter().copied())
        .collect();
    intervals::normalize(&mut must);
    let mut out = Vec::with_capacity(tdmrs.len());
    for (t, &(a, b)) in tdmrs.iter().enumerate() {
        let holes = intervals::subtract(&[(a, b)], &mem_left);
        let reserved: Vec<ReservedArea> = holes
            .iter()
            .filter(|&&(s, e)| intervals::intersects(&must, s, e))
            .map(|&(s, e)| ReservedArea {
                offset: s - a,
                size: e - s,
            })
            .collect();
        if reserved.len() > max_r {
            return Err(Failed::Plan(PlanError::ReservedAreasExhausted {
                base: a,
                end: b,
                max: max_r,
            }));
        }
        out.push(PlannedTdmr {
            base: a,
            size: b - a,
            node: nodes[t],
            reserved,
            pamt: pamt[t],
            pamt_node: pamt_node[t],
            pamt_remote: remote[t],
        });
    }
    Ok(Plan {
        tdmrs: out,
        strategy: Strategy::Best,
        usable_bytes: n.usable_bytes,
    })
}
