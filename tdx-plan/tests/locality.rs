//! PAMT locality on the real machines' maps (`testdata/memmaps`): every
//! TDMR's PAMT on the TDMR's NUMA node, with both strategies, static and
//! Dynamic PAMT, checked against the map's own NUMA ranges rather than the
//! planner's fields alone; and what keeping them there costs.

use std::{fs, path::Path};

use tdx_api::plan::{self, Limits, Plan, Strategy};
use tdx_plan::{
    analysis::{plan_input, remote_pamt_memory},
    input::{self, MemoryMap},
};

/// The shared maps: `(name, map)`, sorted by name.
fn shared_maps() -> Vec<(String, MemoryMap)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/memmaps");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "the shared memory maps are all there");
    names
        .into_iter()
        .map(|name| {
            let text = fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let map = input::parse(&text, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, map)
        })
        .collect()
}

/// The node of `addr` as the map says (memory without a node is node 0,
/// as the planner's input has it).
fn node(map: &MemoryMap, addr: u64) -> u32 {
    map.node_of(addr).unwrap_or(0)
}

/// The node of the first usable byte at or above `base` (Linux's
/// `tdmr_get_nid`), from the map.
fn tdmr_node(map: &MemoryMap, base: u64) -> u32 {
    let &(start, _) = map
        .usable
        .iter()
        .find(|&&(s, e)| e > base && e > plan::LOW_MEMORY_END && s < e)
        .expect("a TDMR holds usable memory");
    node(map, start.max(base).max(plan::LOW_MEMORY_END))
}

/// Every PAMT of `p` lies on its TDMR's node, byte for byte as far as the
/// map's NUMA ranges go, and the plan's fields say so.
fn assert_all_local(name: &str, map: &MemoryMap, p: &Plan) {
    assert_eq!(p.remote_pamts(), 0, "{name}: {p}");
    for (i, t) in p.tdmrs.iter().enumerate() {
        let want = tdmr_node(map, t.base);
        assert_eq!(t.node, want, "{name} TDMR {i}: its node");
        assert_eq!(t.pamt_node, want, "{name} TDMR {i}: its PAMT's node");
        assert_eq!(t.pamt_remote, None, "{name} TDMR {i}");
        // The whole PAMT (its levels are back to back) in one of the map's
        // NUMA ranges of that node.
        let (b, e) = (t.pamt.l4k.0, t.pamt.l4k.0 + t.pamt.bytes());
        let range = map.numa.iter().find(|&&(s, e, _)| s <= b && b < e);
        assert!(
            range.is_some_and(|&(_, end, n)| e <= end && n == want),
            "{name} TDMR {i}: PAMT [{b:#x}, {e:#x}) in {range:?}, not all on node {want}"
        );
    }
}

#[test]
fn every_multi_node_map_keeps_every_pamt_on_its_node() {
    let mut multi = Vec::new();
    for (name, map) in shared_maps() {
        let nodes: std::collections::BTreeSet<u32> = plan_input(&map, Limits::TDX_1_5)
            .usable
            .iter()
            .map(|r| r.node)
            .collect();
        if nodes.len() < 2 {
            continue;
        }
        multi.push(name.clone());
        for bits in [None, Some(1)] {
            let limits = Limits {
                dpamt_bitmap_bits: bits,
                ..Limits::TDX_1_5
            };
            let input = plan_input(&map, limits);
            for strategy in [Strategy::Best, Strategy::Linux] {
                let p = plan::plan(&input, strategy)
                    .unwrap_or_else(|e| panic!("{name} {strategy:?} {bits:?}: {e}"));
                plan::check(&p, &input).unwrap_or_else(|e| panic!("{name} {strategy:?}: {e}"));
                assert_all_local(&format!("{name} {strategy:?} {bits:?}"), &map, &p);
            }
        }
    }
    assert_eq!(
        multi,
        [
            "01-intel-archercity-spr-2s-cxl",
            "05-lenovo-sr650v2-icx-2s-512g",
            "07-hpe-dl360-gen10plus-icx-2s-128g",
            "09-intel-s4600lh-ivb-4s-256g",
            "33-dell-r410-nehalem-2s-24g",
        ],
        "the multi-node maps"
    );
}

/// What the best plan of each real map costs, pinned: PAMT bytes, TDMRs,
/// the largest and the total reserved-area count. Keeping PAMTs on their
/// nodes added reserved areas on the four maps where the best plan used to
/// put node-0 (and on 09 node-2 and node-3) PAMTs on node 1 next to node
/// 1's last hole: 01, 05 and 07 went from 4, 4 and 6 areas to 5, 5 and 7,
/// and 09 from 6 to 9, still fewer than Linux's construction and within
/// the limit of 16; their PAMT bytes and TDMRs did not change. On 33 the
/// best plan used to be one TDMR over both nodes (node 1 ends inside a
/// 1 GiB block), which put the PAMT of 12 GiB of node-0 memory on node 1;
/// it is now two TDMRs split where Linux splits, for 4 KiB more PAMT
/// (105,066,496 bytes before; Linux's three TDMRs take 105,074,688) and a
/// largest area count of 5 instead of 6. No other map changed.
const BEST: [(&str, u64, usize, usize, usize); 15] = [
    ("01-intel-archercity-spr-2s-cxl", 537_931_776, 3, 3, 5),
    ("04-lenovo-sr950-skx-8s", 100_868_096, 2, 5, 6),
    ("05-lenovo-sr650v2-icx-2s-512g", 2_151_690_240, 3, 3, 5),
    ("07-hpe-dl360-gen10plus-icx-2s-128g", 537_931_776, 3, 5, 7),
    ("09-intel-s4600lh-ivb-4s-256g", 1_075_859_456, 5, 5, 9),
    ("10-dell-r815-opteron-4s-512g", 2_155_892_736, 1, 3, 3),
    (
        "13-hpe-dl385-gen10plus-epyc-2s-512g",
        2_151_690_240,
        2,
        4,
        6,
    ),
    ("17-supermicro-h11ssl-epyc-1s-192g", 811_089_920, 2, 5, 7),
    ("21-fujitsu-cx2550m2-bdw-2s-256g", 1_075_847_168, 2, 4, 5),
    ("23-asus-aio-m3400wua-ryzen-8g", 37_826_560, 1, 6, 6),
    ("26-asrockrack-w680d4u-adl-1s-64g", 268_967_936, 2, 3, 4),
    (
        "29-hpe-microserver-gen10-opteron-x3000-16g",
        67_244_032,
        1,
        5,
        5,
    ),
    ("33-dell-r410-nehalem-2s-24g", 105_070_592, 2, 5, 6),
    ("36-intel-s5000psl-core2-xeon-5g", 21_020_672, 2, 6, 7),
    ("41-kontron-tigerlake-sbl-16g", 71_450_624, 2, 2, 3),
];

#[test]
fn locality_costs_no_pamt_on_any_real_map() {
    println!(
        "{:44} {:>8} {:>14} {:>5} {:>4} {:>5} {:>6} {:>12}",
        "map", "strategy", "PAMT bytes", "TDMRs", "max", "areas", "remote", "off-node MiB"
    );
    for ((name, map), &(want_name, pamt, tdmrs, max, areas)) in shared_maps().iter().zip(&BEST) {
        assert_eq!(name, want_name);
        let input = plan_input(map, Limits::TDX_1_5);
        let best = plan::plan(&input, Strategy::Best).unwrap();
        let linux = plan::plan(&input, Strategy::Linux).unwrap();
        let total = |p: &Plan| p.tdmrs.iter().map(|t| t.reserved.len()).sum::<usize>();
        for (s, p) in [("best", &best), ("linux", &linux)] {
            println!(
                "{name:44} {s:>8} {:>14} {:>5} {:>4} {:>5} {:>6} {:>12}",
                p.pamt_bytes(),
                p.tdmrs.len(),
                p.max_reserved(),
                total(p),
                p.remote_pamts(),
                remote_pamt_memory(&input, p) >> 20
            );
        }
        // Memory whose PAMT entries are on another node: none, but for
        // the block of 33 where node 1 ends (256 MiB of node 0 in node 1's
        // TDMR, as in Linux's plan).
        let off = if name.starts_with("33-") {
            256 << 20
        } else {
            0
        };
        assert_eq!(remote_pamt_memory(&input, &best), off, "{name}: {best}");
        assert_eq!(remote_pamt_memory(&input, &linux), off, "{name}: {linux}");
        assert_eq!(
            (
                best.pamt_bytes(),
                best.tdmrs.len(),
                best.max_reserved(),
                total(&best)
            ),
            (pamt, tdmrs, max, areas),
            "{name}: {best}"
        );
        assert_eq!(best.remote_pamts(), 0, "{name}: {best}");
        assert_eq!(linux.remote_pamts(), 0, "{name}: {linux}");
        assert!(best.pamt_bytes() <= linux.pamt_bytes(), "{name}");
        assert!(best.tdmrs.len() <= linux.tdmrs.len(), "{name}");
        assert!(total(&best) <= total(&linux), "{name}");
    }
}
