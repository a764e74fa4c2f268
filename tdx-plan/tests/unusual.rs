//! Legal but unusual memory maps: a NUMA description that leaves RAM on no
//! node, and Linux running out of TDMRs on a real map.

use std::path::PathBuf;

use tdx_api::plan::{self, GIB, Limits, PlanError, Strategy};
use tdx_plan::{
    analysis::{Analysis, linux_drops_numa, linux_plan_input, plan_input, ram_on_no_node},
    input::{self, MemoryMap},
    report,
};

const MIB: u64 = 1 << 20;

/// Two nodes with `gap` bytes of RAM at 8 GiB on neither.
fn two_nodes_with_a_gap(gap: u64) -> MemoryMap {
    MemoryMap {
        usable: vec![(0, 0x9f000), (MIB, 2 * GIB), (4 * GIB, 16 * GIB)],
        numa: vec![(0, 8 * GIB, 0), (8 * GIB + gap, 16 * GIB, 1)],
        cmrs: None,
        source: "test".into(),
    }
}

#[test]
fn numa_leaving_a_mib_of_ram_on_no_node_is_dropped_by_linux() {
    let map = two_nodes_with_a_gap(2 * MIB);
    assert_eq!(ram_on_no_node(&map), 2 * MIB);
    assert!(linux_drops_numa(&map));
    let a = Analysis::new(map.clone(), Limits::TDX_1_5, Strategy::Linux);
    // Linux: one node, everything on node 0 (and planned as such).
    assert!(a.linux_input.usable.iter().all(|r| r.node == 0));
    let linux = a.linux.plan.as_ref().unwrap();
    assert!(linux.tdmrs.iter().all(|t| t.node == 0 && t.pamt_node == 0));
    assert_eq!(a.linux_input, linux_plan_input(&map, Limits::TDX_1_5));
    // Best keeps the nodes the map gives; the gap alone is on node 0.
    assert_eq!(a.input, plan_input(&map, Limits::TDX_1_5));
    let best = a.best.plan.as_ref().unwrap();
    assert!(best.tdmrs.iter().any(|t| t.node == 1), "{best}");
    assert_eq!(a.node_at(8 * GIB + MIB), Some(0));
    assert_eq!(a.node_at(8 * GIB + 2 * MIB), Some(1));
    assert_eq!(best.remote_pamts(), 0);
}

#[test]
fn numa_leaving_less_than_a_mib_on_no_node_is_kept() {
    // Linux allows less than 1 MiB of slack: the nodes stay.
    let map = two_nodes_with_a_gap(MIB - 0x1000);
    assert_eq!(ram_on_no_node(&map), MIB - 0x1000);
    assert!(!linux_drops_numa(&map));
    let a = Analysis::new(map, Limits::TDX_1_5, Strategy::Linux);
    assert_eq!(a.linux_input, a.input);
    let linux = a.linux.plan.as_ref().unwrap();
    assert!(linux.tdmrs.iter().any(|t| t.node == 1), "{linux}");
}

#[test]
fn ram_on_no_node_counts_whole_pages_only() {
    // A gap of 0x1800 bytes starting mid-page holds one whole page.
    let mut map = two_nodes_with_a_gap(0);
    map.numa = vec![(0, 8 * GIB + 0x800, 0), (8 * GIB + 0x2000, 16 * GIB, 1)];
    assert_eq!(ram_on_no_node(&map), 0x1000);
    // No NUMA at all: nothing is dropped (there is nothing to drop).
    map.numa.clear();
    assert_eq!(ram_on_no_node(&map), 0);
    assert!(!linux_drops_numa(&map));
}

fn memmap(name: &str) -> MemoryMap {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "testdata", "memmaps", name]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path).unwrap();
    input::parse(&text, None).unwrap()
}

#[test]
fn linux_out_of_tdmrs_names_how_many_the_map_needs() {
    let map = memmap("09-intel-s4600lh-ivb-4s-256g.json");
    // Without a limit, Linux's construction shows how many TDMRs it makes.
    let mut unlimited = Limits::TDX_1_5;
    unlimited.max_tdmrs = usize::MAX;
    let input = linux_plan_input(&map, unlimited);
    let needed = plan::plan(&input, Strategy::Linux).unwrap().tdmrs.len();
    assert!(needed >= 4, "the map makes {needed} TDMRs");
    // Two fewer allowed: the error names them all, not the limit plus one.
    let mut limits = Limits::TDX_1_5;
    limits.max_tdmrs = needed - 2;
    let a = Analysis::new(map, limits, Strategy::Linux);
    let err = a.linux.plan.as_ref().unwrap_err();
    assert_eq!(
        *err,
        PlanError::TooManyTdmrs {
            needed,
            max: needed - 2
        }
    );
    let text = report::explain(err, Strategy::Linux, &a);
    assert!(
        text.contains(&format!("the map needs {needed} TDMRs")),
        "{text}"
    );
}
