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

/// What one strategy does on the map.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The strategy.
    pub strategy: Strategy,
    /// Its plan, or why it has none.
    pub plan: Result<Plan, PlanError>,
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
        let sys_config = plan
            .as_ref()
            .ok()
            .map(|p| simulate::sys_config(map, p, &input.limits));
        Self {
            strategy,
            plan,
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
    /// The planner's input made from it.
    pub input: PlanInput,
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
        let best = Outcome::run(&map, &input, Strategy::Best);
        let linux = Outcome::run(&map, &input, Strategy::Linux);
        Self {
            map,
            input,
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
    fn without_numa_everything_is_node_0() {
        let m = map(vec![(0, 0x100), (0x200, 0x1000)], vec![]);
        let input = plan_input(&m, Limits::default());
        assert_eq!(triples(&input), [(0, 0x100, 0), (0x200, 0x1000, 0)]);
        assert_eq!(input.cmrs, None);
    }
}
