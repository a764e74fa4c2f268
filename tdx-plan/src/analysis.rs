//! Running the planner on a [`MemoryMap`]: both strategies, the byte-level
//! check of each plan, and each plan's fate at TDH.SYS.CONFIG on the
//! simulated module.
//!
//! This module owns the translation from the map to the planner's input
//! ([`plan_input`]) and collects every verdict in one [`Analysis`], which
//! the text, JSON and SVG outputs only render. It decides nothing about
//! exit statuses or formats.

use tdx_api::plan::{self, CheckError, Limits, MemRange, Plan, PlanError, PlanInput, Strategy};

use crate::{
    input::MemoryMap,
    simulate::{self, SysConfig},
};

/// The planner's input for `map` under `limits`.
///
/// Each usable range is cut where its NUMA node changes; memory the map
/// gives no node is on node 0 (as Linux without NUMA, and the simulator,
/// put it). The CMRs are the map's, or `None` (the planner then assumes
/// the usable ranges are convertible, as Linux does).
pub fn plan_input(map: &MemoryMap, limits: Limits) -> PlanInput {
    let mut usable = Vec::with_capacity(map.usable.len() + map.numa.len());
    for &(start, end) in &map.usable {
        let mut at = start;
        // `numa` is sorted and disjoint: start at the first range ending
        // above `start`.
        let first = map.numa.partition_point(|&(_, e, _)| e <= start);
        for &(node_start, node_end, node) in &map.numa[first..] {
            if node_start >= end {
                break;
            }
            if node_start > at {
                usable.push(MemRange {
                    start: at,
                    end: node_start,
                    node: 0,
                });
            }
            let piece_end = node_end.min(end);
            let piece_start = node_start.max(at);
            if piece_start < piece_end {
                usable.push(MemRange {
                    start: piece_start,
                    end: piece_end,
                    node,
                });
            }
            at = at.max(piece_end);
        }
        if at < end {
            usable.push(MemRange {
                start: at,
                end,
                node: 0,
            });
        }
    }
    PlanInput {
        usable,
        cmrs: map.cmrs.clone(),
        limits,
        avoid: Vec::new(),
    }
}

/// Usable RAM that no NUMA range of `map` covers, in bytes of whole 4 KiB
/// pages (each stretch on no node rounded inward to pages, as Linux counts
/// it); 0 when the map says nothing about NUMA.
pub fn ram_on_no_node(map: &MemoryMap) -> u64 {
    if map.numa.is_empty() {
        return 0;
    }
    let pages = |s: u64, e: u64| {
        let s = s.checked_next_multiple_of(plan::PAGE).unwrap_or(u64::MAX);
        (e & !(plan::PAGE - 1)).saturating_sub(s)
    };
    let mut bytes = 0u64;
    for &(start, end) in &map.usable {
        let mut at = start;
        let first = map.numa.partition_point(|&(_, e, _)| e <= start);
        for &(node_start, node_end, _) in &map.numa[first..] {
            if node_start >= end {
                break;
            }
            if node_start > at {
                bytes = bytes.saturating_add(pages(at, node_start));
            }
            at = at.max(node_end);
        }
        if at < end {
            bytes = bytes.saturating_add(pages(at, end));
        }
    }
    bytes
}

/// True when Linux would drop `map`'s NUMA description and put all RAM on
/// node 0: its NUMA ranges leave 1 MiB or more of RAM on no node
/// (`memblock_validate_numa_coverage(SZ_1M)` in `mm/memblock.c`, called
/// from `numa_register_meminfo` in `mm/numa_memblks.c`; x86's `numa_init`
/// in `arch/x86/mm/numa.c` then falls back to `dummy_numa_init`, one node
/// with all memory).
pub fn linux_drops_numa(map: &MemoryMap) -> bool {
    ram_on_no_node(map) >= 1 << 20
}

/// The planner's input for [`Strategy::Linux`]: [`plan_input`], except that
/// when Linux would drop the map's NUMA description ([`linux_drops_numa`])
/// all RAM is on node 0, as the kernel sees it. [`Strategy::Best`] keeps the
/// nodes the map gives ([`plan_input`]): a NUMA description that misses
/// some RAM is still right about the RAM it covers, and that is where each
/// PAMT's memory should be; only the RAM it misses is on node 0.
pub fn linux_plan_input(map: &MemoryMap, limits: Limits) -> PlanInput {
    let mut input = plan_input(map, limits);
    if linux_drops_numa(map) {
        for r in &mut input.usable {
            r.node = 0;
        }
    }
    input
}

/// Usable bytes from 1 MiB up whose PAMT entries are on another NUMA node
/// than the bytes themselves: memory of a TDMR whose PAMT is on another
/// node. A TDMR's PAMT is on one node, so this is the memory of other nodes
/// in TDMRs that cross a node boundary (inside a 1 GiB block, or joined to
/// fit MAX_TDMRS), plus the memory of TDMRs with a remote PAMT. The module
/// reads a page's PAMT entries on every SEAMCALL handed the page.
pub fn remote_pamt_memory(input: &PlanInput, plan: &Plan) -> u64 {
    let mut bytes = 0;
    for r in &input.usable {
        let (start, end) = (r.start.max(plan::LOW_MEMORY_END), r.end);
        let first = plan.tdmrs.partition_point(|t| t.end() <= start);
        for t in plan.tdmrs[first..].iter().take_while(|t| t.base < end) {
            if t.pamt_node != r.node {
                bytes += end.min(t.end()).saturating_sub(start.max(t.base));
            }
        }
    }
    bytes
}

/// What one strategy does on the map.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The strategy.
    pub strategy: Strategy,
    /// Its plan, or why it has none.
    pub plan: Result<Plan, PlanError>,
    /// [`remote_pamt_memory`] of the plan: `None` when there is no plan.
    pub remote_memory: Option<u64>,
    /// [`plan::check`] on the plan: `None` when there is no plan.
    pub check: Option<Result<(), CheckError>>,
    /// TDH.SYS.CONFIG with the plan on the simulated module: `None` when
    /// there is no plan.
    pub sys_config: Option<SysConfig>,
}

impl Outcome {
    /// Runs `strategy` on `input` (made from `map` by [`plan_input`]),
    /// checks the plan and tries it on the simulated module.
    pub fn run(map: &MemoryMap, input: &PlanInput, strategy: Strategy) -> Self {
        let plan = plan::plan(input, strategy);
        let check = plan.as_ref().ok().map(|p| plan::check(p, input));
        let remote_memory = plan.as_ref().ok().map(|p| remote_pamt_memory(input, p));
        let sys_config = plan
            .as_ref()
            .ok()
            .map(|p| simulate::sys_config(map, p, &input.limits));
        Self {
            strategy,
            plan,
            remote_memory,
            check,
            sys_config,
        }
    }

    /// The strategy's name on the command line.
    pub fn name(&self) -> &'static str {
        strategy_name(self.strategy)
    }
}

/// The name of `strategy` on the command line (`best`, `linux`).
pub fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Best => "best",
        Strategy::Linux => "linux",
    }
}

/// Everything `tdx-plan` reports about a map.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// The map.
    pub map: MemoryMap,
    /// The planner's input made from it ([`plan_input`]), the one
    /// [`Strategy::Best`] plans for.
    pub input: PlanInput,
    /// The input [`Strategy::Linux`] plans for ([`linux_plan_input`]):
    /// `input`, or all RAM on node 0 when Linux drops the map's NUMA
    /// description.
    pub linux_input: PlanInput,
    /// The strategy the user asked for.
    pub chosen: Strategy,
    /// The best-effort planner's outcome.
    pub best: Outcome,
    /// Linux's construction's outcome.
    pub linux: Outcome,
}

impl Analysis {
    /// Plans `map` under `limits` with both strategies; `chosen` is the one
    /// the outputs describe in detail.
    pub fn new(map: MemoryMap, limits: Limits, chosen: Strategy) -> Self {
        let input = plan_input(&map, limits);
        let linux_input = linux_plan_input(&map, limits);
        let best = Outcome::run(&map, &input, Strategy::Best);
        let linux = Outcome::run(&map, &linux_input, Strategy::Linux);
        Self {
            map,
            input,
            linux_input,
            chosen,
            best,
            linux,
        }
    }

    /// The outcome of the chosen strategy.
    pub fn chosen(&self) -> &Outcome {
        match self.chosen {
            Strategy::Best => &self.best,
            Strategy::Linux => &self.linux,
        }
    }

    /// The outcome of the other strategy.
    pub fn other(&self) -> &Outcome {
        match self.chosen {
            Strategy::Best => &self.linux,
            Strategy::Linux => &self.best,
        }
    }

    /// The module's limits.
    pub fn limits(&self) -> &Limits {
        &self.input.limits
    }

    /// The NUMA node the planner gives usable byte `addr`, or `None` when
    /// `addr` is not usable RAM.
    pub fn node_at(&self, addr: u64) -> Option<u32> {
        self.input
            .usable
            .iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map(|r| r.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(usable: Vec<(u64, u64)>, numa: Vec<(u64, u64, u32)>) -> MemoryMap {
        MemoryMap {
            usable,
            numa,
            cmrs: None,
            source: String::new(),
        }
    }

    fn triples(input: &PlanInput) -> Vec<(u64, u64, u32)> {
        input
            .usable
            .iter()
            .map(|r| (r.start, r.end, r.node))
            .collect()
    }

    #[test]
    fn usable_ranges_are_cut_at_node_boundaries() {
        let m = map(
            vec![(0, 0x100), (0x200, 0x1000)],
            vec![(0, 0x300, 1), (0x300, 0x800, 2), (0x900, 0xa00, 3)],
        );
        let input = plan_input(&m, Limits::default());
        assert_eq!(
            triples(&input),
            [
                (0, 0x100, 1),
                (0x200, 0x300, 1),
                (0x300, 0x800, 2),
                (0x800, 0x900, 0),
                (0x900, 0xa00, 3),
                (0xa00, 0x1000, 0),
            ]
        );
    }

    #[test]
    fn remote_pamt_memory_counts_memory_off_its_pamts_node() {
        const GIB: u64 = 1 << 30;
        // Node 1 up to 12.75 GiB, node 0 above: the block [12G, 13G) holds
        // 256 MiB of node 0 in node 1's TDMR, in both strategies.
        let m = map(
            vec![(0, 0x9f000), (0x10_0000, 24 * GIB)],
            vec![
                (0, 12 * GIB + 768 * (1 << 20), 1),
                (12 * GIB + 768 * (1 << 20), 24 * GIB, 0),
            ],
        );
        let input = plan_input(&m, Limits::default());
        for s in [Strategy::Best, Strategy::Linux] {
            let p = plan::plan(&input, s).unwrap();
            assert_eq!(remote_pamt_memory(&input, &p), 256 << 20, "{s:?}: {p}");
        }
        // Every node-0 byte of a TDMR whose PAMT is on node 1 counts; the
        // first MiB never does.
        let mut p = plan::plan(&input, Strategy::Best).unwrap();
        for t in &mut p.tdmrs {
            t.pamt_node = 1;
        }
        assert_eq!(
            remote_pamt_memory(&input, &p),
            24 * GIB - (12 * GIB + 768 * (1 << 20))
        );
        for t in &mut p.tdmrs {
            t.pamt_node = 2;
        }
        assert_eq!(remote_pamt_memory(&input, &p), 24 * GIB - (1 << 20));
    }

    #[test]
    fn without_numa_everything_is_node_0() {
        let m = map(vec![(0, 0x100), (0x200, 0x1000)], vec![]);
        let input = plan_input(&m, Limits::default());
        assert_eq!(triples(&input), [(0, 0x100, 0), (0x200, 0x1000, 0)]);
        assert_eq!(input.cmrs, None);
    }
}
