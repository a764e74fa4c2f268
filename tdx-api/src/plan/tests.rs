//! Planner tests: synthetic maps built to break naive planners, and
//! property tests over arbitrary maps and limits. Every plan is verified by
//! `check` (each byte-level rule), never assumed. The simulator replays
//! plans in the workspace's integration tests.

extern crate std;

use alloc::{string::ToString, vec, vec::Vec};
use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};

use super::*;

const MIB: u64 = 1 << 20;

fn r(start: u64, end: u64) -> MemRange {
    MemRange {
        start,
        end,
        node: 0,
    }
}

fn both(input: &PlanInput) -> (Result<Plan, PlanError>, Result<Plan, PlanError>) {
    let best = plan(input, Strategy::Best);
    if let Ok(p) = &best {
        check(p, input).expect("best plan passes the check");
    }
    (best, plan(input, Strategy::Linux))
}

/// Fine e820 holes below 4 GiB: 40 holes in the first GiB.
fn fine_holes() -> Vec<MemRange> {
    let mut v = vec![r(0, 0x9f000)];
    let mut a = MIB;
    for _ in 0..40 {
        v.push(r(a, a + 20 * MIB));
        a += 24 * MIB;
    }
    v.push(r(4 * GIB, 8 * GIB));
    v
}

#[test]
fn fine_holes_without_cmrs_name_the_block() {
    let input = PlanInput::new(fine_holes());
    let (best, linux) = both(&input);
    // Each of the 40 holes (plus the tail up to the 1 GiB line) needs an
    // area when only usable memory is convertible.
    assert_eq!(
        best,
        Err(PlanError::TooManyReservedAreas {
            block: 0,
            needed: 41,
            max: 16
        })
    );
    assert!(
        matches!(
            linux,
            Err(PlanError::ReservedAreasExhausted { base: 0, .. })
        ),
        "{linux:?}"
    );
    assert_eq!(
        best.unwrap_err().to_string(),
        "1 GiB block 0x0 needs 41 reserved areas, the module allows 16"
    );
}

#[test]
fn coarse_cmrs_over_fine_holes_need_no_areas() {
    // The CMRs cover the first 2 GiB whole: the e820 holes inside need no
    // reserved area. Linux does not read CMRs and still fails.
    let mut input = PlanInput::new(fine_holes());
    input.cmrs = Some(vec![(0, 2 * GIB), (4 * GIB, 8 * GIB)]);
    let (best, linux) = both(&input);
    let best = best.unwrap();
    assert!(best.max_reserved() <= 2, "{best}");
    assert!(linux.is_err());
}

#[test]
fn many_islands_are_joined_smallest_gap_first() {
    // 80 islands of 1 GiB, each followed by a gap: 70 gaps of 1 GiB and 10 of
    // 4 GiB. With 64 TDMRs allowed, 16 joins are needed; only 1 GiB gaps
    // should be bridged.
    let mut v = Vec::new();
    let mut a = 4 * GIB;
    for i in 0..80 {
        v.push(r(a, a + GIB));
        a += GIB + if i % 8 == 7 { 4 * GIB } else { GIB };
    }
    let input = PlanInput::new(v);
    let (best, linux) = both(&input);
    let best = best.unwrap();
    assert!(best.tdmrs.len() <= 64);
    assert_eq!(
        linux,
        // Linux makes one TDMR per island: the error names all 80, not
        // the 65th where it stops.
        Err(PlanError::TooManyTdmrs {
            needed: 80,
            max: 64
        })
    );
    // Bridged bytes: the TDMRs cover 80 GiB of islands plus 1 GiB gaps only.
    let covered: u64 = best.tdmrs.iter().map(|t| t.size).sum();
    assert_eq!(covered % GIB, 0);
    assert!(covered <= 80 * GIB + 16 * GIB, "covered {}", covered / GIB);
}

#[test]
fn no_plan_when_even_joining_cannot_help() {
    // 70 islands separated by big gaps, one reserved area allowed per TDMR:
    // each island's tail (with its PAMT next to it) takes that area, and a
    // join would need two (the tail-plus-gap hole, and the next tail).
    let mut v = Vec::new();
    for i in 0..70u64 {
        let base = (4 + 8 * i) * GIB;
        v.push(r(base, base + GIB - 4 * MIB));
    }
    let mut input = PlanInput::new(v);
    input.limits.max_reserved_per_tdmr = 1;
    let (best, _) = both(&input);
    assert_eq!(
        best,
        Err(PlanError::TooManyTdmrs {
            needed: 70,
            max: 64
        })
    );
    // With two areas per TDMR, joining across the gaps works: the gap and
    // the tail before it form one hole.
    input.limits.max_reserved_per_tdmr = 2;
    let (best, _) = both(&input);
    assert!(best.unwrap().tdmrs.len() <= 64);
}

#[test]
fn pamt_sits_next_to_a_hole_and_on_its_node() {
    // Two nodes with an unaligned boundary, memory ending below a 1 GiB line.
    let input = PlanInput::new(vec![
        MemRange {
            start: MIB,
            end: 0x7ff0_0000,
            node: 0,
        },
        MemRange {
            start: 4 * GIB,
            end: 6 * GIB + 300 * MIB,
            node: 0,
        },
        MemRange {
            start: 6 * GIB + 300 * MIB,
            end: 12 * GIB - 64 * MIB,
            node: 1,
        },
    ]);
    let (best, linux) = both(&input);
    let best = best.unwrap();
    let linux = linux.unwrap();
    assert!(best.pamt_bytes() <= linux.pamt_bytes());
    for t in &best.tdmrs {
        // Every PAMT block touches a reserved area it is part of: no TDMR
        // has more areas than it has holes needing one.
        assert!(t.reserved.len() <= 3, "{best}");
    }
}

#[test]
fn avoided_ranges_are_not_used() {
    let input = PlanInput::new(vec![r(4 * GIB, 8 * GIB - 2 * MIB)]);
    let first = plan(&input, Strategy::Best).unwrap();
    let (b, s) = (first.tdmrs[0].pamt.l4k.0, first.tdmrs[0].pamt.bytes());
    let mut again = input.clone();
    again.avoid.push((b, b + s));
    let second = plan(&again, Strategy::Best).unwrap();
    check(&second, &again).unwrap();
    let (b2, s2) = (second.tdmrs[0].pamt.l4k.0, second.tdmrs[0].pamt.bytes());
    assert!(b2 + s2 <= b || b2 >= b + s, "re-plan must move the PAMT");
    let linux = plan(&again, Strategy::Linux).unwrap();
    check(&linux, &again).unwrap();
}

#[test]
fn dynamic_pamt_shrinks_the_4k_level() {
    let mut input = PlanInput::new(vec![r(4 * GIB, 68 * GIB)]);
    let full = plan(&input, Strategy::Best).unwrap().pamt_bytes();
    input.limits.dpamt_bitmap_bits = Some(1);
    let dynamic = plan(&input, Strategy::Best).unwrap();
    check(&dynamic, &input).unwrap();
    // 64 GiB: 256 MiB of 4K entries become a 2 MiB bitmap.
    assert!(dynamic.pamt_bytes() * 50 < full);
}

#[test]
fn usable_memory_outside_cmrs_is_refused() {
    let mut input = PlanInput::new(vec![r(4 * GIB, 8 * GIB)]);
    input.cmrs = Some(vec![(4 * GIB, 6 * GIB)]);
    assert_eq!(
        plan(&input, Strategy::Best),
        Err(PlanError::NotConvertible {
            start: 4 * GIB,
            end: 8 * GIB
        })
    );
}

#[test]
fn linux_reproduces_fill_out_tdmrs() {
    // Block B starts inside A's last GiB: Linux starts a new TDMR at A's end.
    let input = PlanInput::new(vec![r(MIB, GIB + 512 * MIB), r(GIB + 768 * MIB, 3 * GIB)]);
    let linux = plan(&input, Strategy::Linux).unwrap();
    let bounds: Vec<(u64, u64)> = linux.tdmrs.iter().map(|t| (t.base, t.end())).collect();
    assert_eq!(bounds, [(0, 2 * GIB), (2 * GIB, 3 * GIB)]);
    // Holes: [0, 1M), [1.5G, 1.75G) in TDMR 0, plus its PAMT; none in TDMR 1
    // but possibly the other PAMT.
    assert_eq!(
        linux.tdmrs[0].reserved[0],
        ReservedArea {
            offset: 0,
            size: MIB
        }
    );
    check(&linux, &input).unwrap();
    let best = plan(&input, Strategy::Best).unwrap();
    assert_eq!(best.tdmrs.len(), 1, "best joins adjacent covers: {best}");
    assert!(best.pamt_bytes() < linux.pamt_bytes());
}

/// Every TDMR's `pamt_node` is the node of the memory its PAMT is in (the
/// whole PAMT), and `pamt_remote` is set exactly when that is not the
/// TDMR's node, which is the node of its first usable byte.
fn pamt_nodes_are_right(p: &Plan, input: &PlanInput) -> bool {
    let n = Normalized::new(input).unwrap();
    p.tdmrs.iter().all(|t| {
        let (b, e) = (t.pamt.l4k.0, t.pamt.l4k.0 + t.pamt.bytes());
        let on_node = n
            .mem
            .iter()
            .any(|r| r.start <= b && e <= r.end && r.node == t.pamt_node);
        on_node && t.node == n.node_at(t.base) && t.pamt_remote.is_some() == (t.pamt_node != t.node)
    })
}

fn node(start: u64, end: u64, node: u32) -> MemRange {
    MemRange { start, end, node }
}

#[test]
fn a_node_too_small_for_its_pamt_puts_it_remote_and_says_so() {
    // Node 1 holds 2 MiB at 5 GiB: its TDMR [5G, 6G) needs a 4 MiB PAMT
    // (plus the 2M and 1G levels), which cannot fit on node 1.
    let input = PlanInput::new(vec![
        node(MIB, 2 * GIB, 0),
        node(4 * GIB, 5 * GIB, 0),
        node(5 * GIB, 5 * GIB + 2 * MIB, 1),
        node(6 * GIB, 10 * GIB, 0),
    ]);
    let (best, linux) = both(&input);
    for p in [best.unwrap(), linux.unwrap()] {
        check(&p, &input).unwrap();
        assert!(pamt_nodes_are_right(&p, &input), "{p}");
        let t = p
            .tdmrs
            .iter()
            .find(|t| t.node == 1)
            .unwrap_or_else(|| panic!("a node-1 TDMR: {p}"));
        assert_eq!(t.pamt_node, 0, "{p}");
        assert_eq!(t.pamt_remote, Some(RemoteReason::NoRoom), "{p}");
        assert_eq!(p.remote_pamts(), 1, "{p}");
        assert!(
            p.to_string().contains("(remote: its node has no free run"),
            "{p}"
        );
    }
}

#[test]
fn a_tdmr_too_big_for_its_nodes_runs_is_cut_to_keep_its_pamt_home() {
    // Node 0 has 8 MiB at 4 GiB and 8 MiB at 5 GiB; node 1 has 40 MiB in
    // between, in node 0's first block. One TDMR [4G, 6G) needs 8 MiB +
    // 20 KiB of PAMT: no room on node 0. Two TDMRs of 1 GiB need 4 MiB +
    // 12 KiB each, which fit at home, for 4 KiB more PAMT (what Linux's
    // two TDMRs take too).
    let mut input = PlanInput::new(vec![
        node(4 * GIB, 4 * GIB + 8 * MIB, 0),
        node(4 * GIB + 256 * MIB, 4 * GIB + 296 * MIB, 1),
        node(5 * GIB, 5 * GIB + 8 * MIB, 0),
    ]);
    let (best, linux) = both(&input);
    let (best, linux) = (best.unwrap(), linux.unwrap());
    let tdmrs: Vec<(u64, u64, u32)> = best
        .tdmrs
        .iter()
        .map(|t| (t.base, t.end(), t.pamt_node))
        .collect();
    assert_eq!(
        tdmrs,
        [(4 * GIB, 5 * GIB, 0), (5 * GIB, 6 * GIB, 0)],
        "{best}"
    );
    assert_eq!(best.remote_pamts(), 0);
    assert_eq!(best.pamt_bytes(), linux.pamt_bytes());
    // With one TDMR allowed the cut is not possible: remote, and why.
    input.limits.max_tdmrs = 1;
    let (best, _) = both(&input);
    let best = best.unwrap();
    assert_eq!(best.tdmrs.len(), 1, "{best}");
    assert_eq!(best.tdmrs[0].pamt_node, 1, "{best}");
    assert_eq!(best.tdmrs[0].pamt_remote, Some(RemoteReason::NoRoom));
    assert!(pamt_nodes_are_right(&best, &input));
}

#[test]
fn the_area_limit_can_force_a_remote_pamt() {
    // One area per TDMR. Node 0's TDMR [4G, 5G) spends it on its tail,
    // [4G + 908M, 5G), outside the CMRs. The memory next to that tail is a
    // 4 MiB piece, too small for the PAMT (4 MiB + 12 KiB); the big piece
    // before it touches only a hole inside a CMR (no area). So on node 0
    // the PAMT needs a second area. Node 1's TDMR [5G, 6G) ends in a hole
    // that already has an area, with room for both PAMTs next to it.
    let mut input = PlanInput::new(vec![
        node(4 * GIB, 4 * GIB + 900 * MIB, 0),
        node(4 * GIB + 904 * MIB, 4 * GIB + 908 * MIB, 0),
        node(5 * GIB, 6 * GIB - 64 * MIB, 1),
    ]);
    input.cmrs = Some(vec![
        (4 * GIB, 4 * GIB + 908 * MIB),
        (5 * GIB, 6 * GIB - 64 * MIB),
    ]);
    input.limits.max_reserved_per_tdmr = 1;
    let (best, _) = both(&input);
    let best = best.unwrap();
    assert!(pamt_nodes_are_right(&best, &input), "{best}");
    assert_eq!(best.tdmrs.len(), 2, "{best}");
    assert_eq!(best.tdmrs[0].node, 0);
    assert_eq!(best.tdmrs[0].pamt_node, 1, "{best}");
    assert_eq!(
        best.tdmrs[0].pamt_remote,
        Some(RemoteReason::ReservedAreaLimit),
        "{best}"
    );
    assert_eq!(best.tdmrs[1].pamt_remote, None, "{best}");
    assert_eq!(best.remote_pamts(), 1);
    // With two areas per TDMR it comes home, at the cost of an area.
    input.limits.max_reserved_per_tdmr = 2;
    let (best, _) = both(&input);
    let best = best.unwrap();
    assert_eq!(best.remote_pamts(), 0, "{best}");
    assert_eq!(best.tdmrs[0].pamt_node, 0, "{best}");
    assert_eq!(best.tdmrs[0].reserved.len(), 2, "{best}");
}

#[test]
fn when_local_first_finds_no_plan_fewest_areas_first_does() {
    // One area per TDMR. Node 0: TDMR [4G, 5G), no hole, and PAMTs may
    // only go in its first 10 MiB (the rest is to be avoided). Node 1:
    // TDMR [6G, 8G), its tail hole has the area, and PAMTs may only go in
    // the 5 MiB before it. Node 0's PAMT (4 MiB + 12 KiB) fits both
    // places, node 1's (8 MiB + 20 KiB) only node 0's, where both do not
    // fit. Node 0's PAMT at home takes node 0's only area and leaves node
    // 1's nowhere; the only plan swaps them.
    let mut input = PlanInput::new(vec![
        node(4 * GIB, 5 * GIB, 0),
        node(6 * GIB, 8 * GIB - 6 * MIB, 1),
    ]);
    input.avoid = vec![(4 * GIB + 10 * MIB, 5 * GIB), (6 * GIB, 8 * GIB - 11 * MIB)];
    input.limits.max_reserved_per_tdmr = 1;
    input.limits.max_tdmrs = 2;
    let (best, _) = both(&input);
    let best = best.unwrap();
    assert!(pamt_nodes_are_right(&best, &input), "{best}");
    let nodes: Vec<(u32, u32)> = best.tdmrs.iter().map(|t| (t.node, t.pamt_node)).collect();
    assert_eq!(nodes, [(0, 1), (1, 0)], "{best}");
    assert_eq!(best.remote_pamts(), 2);
    // With a third TDMR allowed, node 1's is cut in two: 1 GiB's PAMT
    // fits its 5 MiB, and only the other half's PAMT is remote (Linux has
    // no plan here: no PAMT cost bound).
    input.limits.max_tdmrs = 64;
    let (best, linux) = both(&input);
    let best = best.unwrap();
    assert!(linux.is_err());
    assert!(pamt_nodes_are_right(&best, &input), "{best}");
    let nodes: Vec<(u32, u32)> = best.tdmrs.iter().map(|t| (t.node, t.pamt_node)).collect();
    assert_eq!(nodes, [(0, 0), (1, 1), (1, 0)], "{best}");
    assert_eq!(best.tdmrs[2].pamt_remote, Some(RemoteReason::NoRoom));
}

#[test]
fn a_pamt_stays_local_even_when_remote_saves_an_area() {
    // The shape of the two-socket maps: node 0 is [1M, 2G) and [4G, 8G),
    // node 1 follows at 8 GiB and ends below a 1 GiB line (a hole that
    // already needs an area). Node 0's high memory touches no hole that
    // needs one: a PAMT there costs an area, next to node 1's tail it
    // costs none. Node-local wins.
    let input = PlanInput::new(vec![
        node(MIB, 2 * GIB, 0),
        node(4 * GIB, 8 * GIB, 0),
        node(8 * GIB, 16 * GIB - 256 * MIB, 1),
    ]);
    let (best, linux) = both(&input);
    let (best, linux) = (best.unwrap(), linux.unwrap());
    for p in [&best, &linux] {
        assert_eq!(p.remote_pamts(), 0, "{p}");
        assert!(pamt_nodes_are_right(p, &input), "{p}");
        assert!(p.tdmrs.iter().all(|t| t.pamt_node == t.node), "{p}");
    }
    assert!(best.pamt_bytes() <= linux.pamt_bytes());
}

#[test]
fn a_node_change_inside_a_block_starts_a_tdmr_at_the_next_gib() {
    // Node 1 from 0 to 12.75 GiB, node 0 from there to 24 GiB (the shape
    // of the two-socket Dell R410 map): one TDMR over both would put the
    // PAMT entries of 11.25 GiB of node-0 memory on node 1. Like Linux,
    // the block where the node changes stays with node 1's TDMR and node
    // 0's starts at 13 GiB.
    let input = PlanInput::new(vec![
        node(MIB, 12 * GIB + 768 * MIB, 1),
        node(12 * GIB + 768 * MIB, 24 * GIB, 0),
    ]);
    let (best, linux) = both(&input);
    let (best, linux) = (best.unwrap(), linux.unwrap());
    let bounds: Vec<(u64, u64, u32, u32)> = best
        .tdmrs
        .iter()
        .map(|t| (t.base, t.end(), t.node, t.pamt_node))
        .collect();
    assert_eq!(bounds, [(0, 13 * GIB, 1, 1), (13 * GIB, 24 * GIB, 0, 0)]);
    assert!(best.pamt_bytes() <= linux.pamt_bytes());
    // Aligned node changes split too; same-node ranges touching join.
    let input = PlanInput::new(vec![
        node(4 * GIB, 6 * GIB, 0),
        node(6 * GIB, 8 * GIB, 0),
        node(8 * GIB, 10 * GIB, 1),
    ]);
    let best = plan(&input, Strategy::Best).unwrap();
    let bounds: Vec<(u64, u64)> = best.tdmrs.iter().map(|t| (t.base, t.end())).collect();
    assert_eq!(bounds, [(4 * GIB, 8 * GIB), (8 * GIB, 10 * GIB)]);
    assert_eq!(best.remote_pamts(), 0);
}

#[test]
fn pamt_node_hint_finds_the_tdmr() {
    let input = PlanInput::new(vec![node(MIB, 2 * GIB, 0), node(4 * GIB, 8 * GIB, 1)]);
    let p = plan(&input, Strategy::Best).unwrap();
    assert_eq!(p.pamt_node_hint(0), Some(0));
    assert_eq!(p.pamt_node_hint(2 * GIB - 1), Some(0));
    assert_eq!(p.pamt_node_hint(3 * GIB), None);
    assert_eq!(p.pamt_node_hint(4 * GIB), Some(1));
    assert_eq!(p.pamt_node_hint(8 * GIB - 1), Some(1));
    assert_eq!(p.pamt_node_hint(8 * GIB), None);
    assert_eq!(p.pamt_node_hint(u64::MAX), None);
    assert_eq!(p.tdmr_at(5 * GIB).map(|t| t.base), Some(4 * GIB));
}

/// A generated map: usable ranges, limits, and optional CMRs.
type ArbMap = (Vec<MemRange>, Limits, Option<Vec<(u64, u64)>>);

fn arb_map() -> impl proptest::strategy::Strategy<Value = ArbMap> {
    let ranges = proptest::collection::vec((0u64..200, 1u64..40, 0u32..3), 1..40);
    let limits = (1usize..70, 0usize..20, proptest::option::of(1u8..4));
    let coarse = any::<bool>();
    proptest::strategy::Strategy::prop_map(
        (ranges, limits, coarse),
        |(rs, (mt, mr, dp), coarse)| {
            // Ranges in units of 64 MiB, with holes; some unaligned to 4 KiB.
            let mut a = 0u64;
            let mut v = Vec::new();
            for (gap, len, node) in rs {
                let start = a + gap * 64 * MIB + (gap % 3) * 1234;
                let end = start + len * 64 * MIB - (len % 2) * 4321;
                v.push(MemRange { start, end, node });
                a = end;
            }
            let limits = Limits {
                max_tdmrs: mt,
                max_reserved_per_tdmr: mr,
                pamt_entry_size: [16, 16, 16],
                dpamt_bitmap_bits: dp,
            };
            let cmrs = coarse.then(|| {
                let top = v.last().map_or(0, |m| m.end).next_multiple_of(GIB);
                vec![(0, top)]
            });
            (v, limits, cmrs)
        },
    )
}

/// A map of small ranges (4 to 64 MiB) with gaps, on up to four nodes, two
/// of which have only 4 MiB ranges: a TDMR's PAMT (4 MiB and more per GiB,
/// in one run) often finds no room on its node, and the area limit is
/// often tight.
fn arb_small_nodes() -> impl proptest::strategy::Strategy<Value = ArbMap> {
    let ranges = proptest::collection::vec((0u64..48, 1u64..16, 0u32..4), 1..80);
    let limits = (1usize..70, 1usize..8, proptest::option::of(1u8..4));
    proptest::strategy::Strategy::prop_map(
        (ranges, limits, any::<bool>()),
        |(rs, (mt, mr, dp), coarse)| {
            let mut a = 4 * GIB;
            let mut v = Vec::new();
            for (gap, len, node) in rs {
                // Nodes 2 and 3 only ever have 4 MiB ranges: too small for
                // any PAMT.
                let len = if node >= 2 { 1 } else { len };
                let start = a + gap * 16 * MIB;
                let end = start + len * 4 * MIB;
                v.push(MemRange { start, end, node });
                a = end;
            }
            let limits = Limits {
                max_tdmrs: mt,
                max_reserved_per_tdmr: mr,
                pamt_entry_size: [16, 16, 16],
                dpamt_bitmap_bits: dp,
            };
            let cmrs = coarse.then(|| vec![(0, a.next_multiple_of(GIB))]);
            (v, limits, cmrs)
        },
    )
}

proptest! {
    // 400 cases by default; PROPTEST_CASES=N for a longer hunt.
    // Under Miri: 2 cases and no failure file (its isolation has no file
    // system).
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) {
            2
        } else {
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
        },
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    /// Any map and limits: a plan that passes every check, or a typed
    /// error; never a panic. Best never uses more PAMT than Linux when both
    /// succeed, and succeeds whenever Linux does.
    #[test]
    fn plans_are_valid_or_typed_errors((usable, limits, cmrs) in arb_map()) {
        let input = PlanInput { usable, cmrs, limits, avoid: Vec::new() };
        let best = plan(&input, Strategy::Best);
        let linux = plan(&input, Strategy::Linux);
        if let Ok(p) = &best {
            prop_assert!(check(p, &input).is_ok(), "{:?}", check(p, &input));
        }
        if let (Ok(b), Ok(l)) = (&best, &linux) {
            prop_assert!(b.pamt_bytes() <= l.pamt_bytes(), "best {} > linux {}", b.pamt_bytes(), l.pamt_bytes());
        }
        for p in best.iter().chain(linux.iter()) {
            prop_assert!(pamt_nodes_are_right(p, &input), "{p}");
        }
        if let (Ok(b), Ok(l)) = (&best, &linux) {
            // Linux places a PAMT remotely only when the node has no room
            // (ignoring the area limit); a valid Linux plan shows the
            // limits allow as many local PAMTs.
            if check(l, &input).is_ok() {
                prop_assert!(b.remote_pamts() <= l.remote_pamts(), "best {b}\nlinux {l}");
            }
        }
        if let (Err(e), Ok(l)) = (&best, &linux) {
            // Linux may "succeed" with a plan the module would refuse (it
            // ignores CMRs); a valid Linux plan means best must succeed.
            prop_assert!(check(l, &input).is_err(), "linux found a valid plan, best failed: {e}");
        }
    }

    /// Maps where PAMTs often cannot stay on their node: the same
    /// guarantees, and every remote PAMT says why, truthfully.
    #[test]
    fn remote_pamts_are_valid_and_explained((usable, limits, cmrs) in arb_small_nodes()) {
        let input = PlanInput { usable, cmrs, limits, avoid: Vec::new() };
        let best = plan(&input, Strategy::Best);
        let linux = plan(&input, Strategy::Linux);
        if let Ok(p) = &best {
            prop_assert!(check(p, &input).is_ok(), "{:?}", check(p, &input));
            prop_assert!(pamt_nodes_are_right(p, &input), "{p}");
            // NoRoom: no run of the TDMR's node is as large as its PAMT
            // (even before the other PAMTs were carved out).
            let n = Normalized::new(&input).unwrap();
            for t in &p.tdmrs {
                if t.pamt_remote == Some(RemoteReason::NoRoom) {
                    let need = t.pamt.bytes();
                    // A PAMT lies inside one TDMR (in its reserved areas).
                    let room = n.mem.iter().any(|r| {
                        r.node == t.node
                            && p.tdmrs.iter().any(|d| {
                                let clipped = (r.start.max(d.base), r.end.min(d.end()));
                                clipped.0 < clipped.1
                                    && intervals::subtract(&[clipped], &n.avoid)
                                        .iter()
                                        .any(|&(s, e)| e - s >= need)
                            })
                    });
                    // Room may have existed and been taken by other PAMTs
                    // of the node; then some PAMT of the node is there.
                    prop_assert!(
                        !room || p.tdmrs.iter().any(|o| o.pamt_node == t.node),
                        "{p}"
                    );
                }
            }
        }
        if let Ok(l) = &linux {
            prop_assert!(pamt_nodes_are_right(l, &input), "{l}");
        }
        if let (Ok(b), Ok(l)) = (&best, &linux) {
            prop_assert!(b.pamt_bytes() <= l.pamt_bytes());
            // The best plan keeps each PAMT inside one TDMR; Linux's may
            // cross a TDMR boundary (with an area on each side), which can
            // keep it on a node whose only room crosses a 1 GiB line.
            let straddles = l.tdmrs.iter().any(|t| {
                let (s, e) = (t.pamt.l4k.0, t.pamt.l4k.0 + t.pamt.bytes());
                l.tdmrs.iter().any(|d| s < d.base && d.base < e)
            });
            if check(l, &input).is_ok() && !straddles {
                prop_assert!(b.remote_pamts() <= l.remote_pamts(), "best {b}\nlinux {l}");
            }
        }
        if let (Err(e), Ok(l)) = (&best, &linux) {
            prop_assert!(check(l, &input).is_err(), "linux found a valid plan, best failed: {e}");
        }
    }
}

#[test]
fn a_block_shared_by_three_nodes_goes_to_the_first() {
    // [5G, 6G) holds node 2 (first), then node 0, and node 0 runs on past
    // 6 GiB. Node 2's TDMR is [5G, 6G), node 0's starts at 6 GiB: each
    // PAMT on its TDMR's node (a proptest found the best plan joining the
    // block to node 0's run, with node 2's TDMR and a remote PAMT).
    let mut input = PlanInput::new(vec![
        node(4 * GIB + 64 * MIB, 4 * GIB + 88 * MIB, 1),
        node(5 * GIB + 8 * MIB, 5 * GIB + 16 * MIB, 2),
        node(5 * GIB + 304 * MIB, 5 * GIB + 316 * MIB, 0),
        node(6 * GIB - 4 * MIB, 6 * GIB + 4 * MIB, 0),
    ]);
    input.limits.max_tdmrs = 3;
    input.limits.max_reserved_per_tdmr = 5;
    let (best, linux) = both(&input);
    let (best, linux) = (best.unwrap(), linux.unwrap());
    for p in [&best, &linux] {
        let tdmrs: Vec<(u64, u64, u32, u32)> = p
            .tdmrs
            .iter()
            .map(|t| (t.base, t.end(), t.node, t.pamt_node))
            .collect();
        assert_eq!(
            tdmrs,
            [
                (4 * GIB, 5 * GIB, 1, 1),
                (5 * GIB, 6 * GIB, 2, 2),
                (6 * GIB, 7 * GIB, 0, 0)
            ],
            "{p}"
        );
    }
}

fn on(node: u32, start: u64, end: u64) -> MemRange {
    MemRange { start, end, node }
}

#[test]
fn ranges_of_one_node_touching_inside_a_page_keep_the_page() {
    // [4 GiB, 4 GiB + 0x1800) and [4 GiB + 0x1800, 8 GiB) on one node: the
    // page at 4 GiB + 0x1000 is RAM throughout (memblock merges the two
    // before TDX rounds to pages), so it is TDX memory.
    let split = 4 * GIB + 0x1800;
    let input = PlanInput::new(vec![on(0, 4 * GIB, split), on(0, split, 8 * GIB)]);
    for strategy in [Strategy::Best, Strategy::Linux] {
        let p = plan(&input, strategy).unwrap();
        check(&p, &input).unwrap();
        assert_eq!(p.usable_bytes, 4 * GIB, "{strategy:?}");
        let page = 4 * GIB + 0x1000;
        let in_pamt = p.pamt_ranges().any(|(b, s)| (b..b + s).contains(&page));
        assert!(p.covers(page) || in_pamt, "{strategy:?}: {p}");
    }
}

#[test]
fn a_node_boundary_inside_a_page_drops_that_page() {
    // Node 0 up to 6 GiB + 0x800, node 1 from there: the page at 6 GiB is
    // on both nodes, and neither takes it (Linux rounds each node's region
    // inward to pages). Both plans agree, and the page is no TDX memory.
    let boundary = 6 * GIB + 0x800;
    let input = PlanInput::new(vec![on(0, 4 * GIB, boundary), on(1, boundary, 8 * GIB)]);
    for strategy in [Strategy::Best, Strategy::Linux] {
        let p = plan(&input, strategy).unwrap();
        check(&p, &input).unwrap();
        assert_eq!(p.usable_bytes, 4 * GIB - PAGE, "{strategy:?}");
        assert!(!p.covers(6 * GIB), "{strategy:?}: {p}");
        // Its neighbours are memory: TDX memory or a PAMT.
        for pa in [6 * GIB - PAGE, 6 * GIB + PAGE] {
            let in_pamt = p.pamt_ranges().any(|(b, s)| (b..b + s).contains(&pa));
            assert!(p.covers(pa) || in_pamt, "{strategy:?} {pa:#x}: {p}");
        }
    }
    // Overlapping ranges of one node merge at byte precision too.
    let input = PlanInput::new(vec![
        on(0, 4 * GIB + 0x800, 4 * GIB + 0x1800),
        on(0, 4 * GIB + 0x1000, 8 * GIB),
    ]);
    let p = plan(&input, Strategy::Best).unwrap();
    assert_eq!(p.usable_bytes, 4 * GIB - PAGE);
}

#[test]
fn ranges_near_the_top_of_the_address_space_are_typed_errors() {
    // Rounding a start up past u64::MAX, an avoid range ending there.
    let mut input = PlanInput::new(vec![on(0, u64::MAX - 10, u64::MAX), r(4 * GIB, 8 * GIB)]);
    input.avoid = vec![(u64::MAX - PAGE, u64::MAX)];
    for strategy in [Strategy::Best, Strategy::Linux] {
        let p = plan(&input, strategy).unwrap();
        assert_eq!(p.usable_bytes, 4 * GIB);
    }
    let input = PlanInput::new(vec![on(0, 4 * GIB, u64::MAX)]);
    assert_eq!(
        plan(&input, Strategy::Best),
        Err(PlanError::TooHigh { end: !(PAGE - 1) })
    );
}

/// Worst shapes for the planner's work: `n` one-page islands on a second
/// node that can hold no PAMT (every plan has a remote PAMT, so the
/// locality pass tries every area budget), with the largest limits.
fn islands(n: u64, max_reserved: usize, max_tdmrs: usize) -> PlanInput {
    let mut v = vec![on(0, 4 * GIB, 8 * GIB)];
    for i in 0..n {
        let a = (8 + i) * GIB + PAGE;
        v.push(on(1, a, a + PAGE));
    }
    let mut input = PlanInput::new(v);
    input.limits.max_reserved_per_tdmr = max_reserved;
    input.limits.max_tdmrs = max_tdmrs;
    input
}

#[test]
fn work_is_bounded_by_the_input_not_the_limits() {
    for n in [1u64, 10, 100, 400] {
        for strategy in [Strategy::Best, Strategy::Linux] {
            let huge = islands(n, usize::MAX, usize::MAX);
            let (result, work) = plan_with_work(&huge, strategy);
            if let (Strategy::Best, Ok(p)) = (strategy, &result) {
                // The islands' node holds no PAMT: the locality pass runs.
                assert!(p.remote_pamts() > 0, "{p}");
            }
            let bound = work_bound(&huge);
            assert!(work <= bound, "{strategy:?} n={n}: {work} > {bound}");
            assert!(work > 0);
            // A limit above what the map can use changes neither the plan
            // nor the work.
            let exact = islands(n, n as usize + 2, n as usize + 2);
            let (same, same_work) = plan_with_work(&exact, strategy);
            assert_eq!(result.map(|p| p.tdmrs), same.map(|p| p.tdmrs));
            assert_eq!(work, same_work, "{strategy:?} n={n}");
        }
        // Linear: one more range costs at most a constant number of rounds.
        assert!(work_bound(&islands(n, 16, 64)) <= 8 * (n + 2) + 3 * CAP_HALVINGS);
    }
}

#[test]
fn many_tiny_ranges_with_huge_limits_finish() {
    // 2000 one-page ranges, each in its own GiB on its own node, with
    // every limit at its maximum: Linux makes one TDMR per range.
    let mut v = vec![on(0, 4 * GIB, 8 * GIB)];
    for i in 0..2000u64 {
        let a = (8 + i) * GIB;
        v.push(on(1 + i as u32, a, a + PAGE));
    }
    let mut input = PlanInput::new(v);
    input.limits.max_tdmrs = usize::MAX;
    input.limits.max_reserved_per_tdmr = usize::MAX;
    for strategy in [Strategy::Best, Strategy::Linux] {
        let t0 = std::time::Instant::now();
        let (result, work) = plan_with_work(&input, strategy);
        std::eprintln!(
            "TIMING {strategy:?} {work} {:?} {:?}",
            t0.elapsed(),
            result.as_ref().map(|p| p.tdmrs.len())
        );
        assert!(work <= work_bound(&input), "{strategy:?}: {work}");
        if let Ok(p) = result {
            check(&p, &input).unwrap();
        }
    }
}

#[test]
fn pamts_larger_than_all_memory_fail_at_once() {
    // 65535-byte entries: every GiB needs 16 GiB of PAMT, more than the
    // memory there is, whatever the cut. Best says so before any round.
    let mut input = PlanInput::new(vec![on(0, 4 * GIB, 1 << 50)]);
    input.limits.pamt_entry_size = [u16::MAX; 3];
    input.limits.max_tdmrs = usize::MAX;
    let (result, work) = plan_with_work(&input, Strategy::Best);
    let blocks = (1u64 << 50) / GIB - 4;
    let per_gib: u64 = input.limits.pamt_required(GIB).iter().sum();
    assert_eq!(
        result,
        Err(PlanError::NoPamtSpace {
            base: 4 * GIB,
            end: 1 << 50,
            bytes: blocks * per_gib
        })
    );
    assert_eq!(work, 0);
}

#[test]
fn cmr_lists_no_module_accepts_are_refused_before_planning() {
    // Two nodes' memory meets at `b`; with the CMR array out of order the
    // module's merged CMRs would be two chains meeting there, and before
    // this check Best answered `Internal` when node 0 was too small for a
    // PAMT to cover the boundary. TDH.SYS.INIT refuses such a list
    // (TDX_CMR_LIST_INVALID), so the planner does too, naming the CMR.
    let b = 4 * GIB + MIB;
    let mut input = PlanInput::new(vec![node(4 * GIB, b, 0), node(b, 6 * GIB, 1)]);
    let refused = |cmrs: Vec<(u64, u64)>, index: usize, problem: CmrProblem| {
        let mut input = input.clone();
        let (start, end) = cmrs[index];
        input.cmrs = Some(cmrs);
        for st in [Strategy::Best, Strategy::Linux] {
            assert_eq!(
                plan(&input, st),
                Err(PlanError::BadCmr {
                    index,
                    start,
                    end,
                    problem
                }),
                "{st:?}"
            );
        }
    };
    refused(
        vec![(b, 6 * GIB), (4 * GIB, b)],
        1,
        CmrProblem::Overlaps { earlier: 0 },
    );
    refused(
        vec![(4 * GIB, b + MIB), (0, 0), (b, 6 * GIB)],
        2,
        CmrProblem::Overlaps { earlier: 0 },
    );
    refused(vec![(4 * GIB, 3 * GIB)], 0, CmrProblem::Inverted);
    refused(vec![(4 * GIB, 6 * GIB - 1)], 0, CmrProblem::Unaligned);
    refused(vec![(4 * GIB + 1, 6 * GIB)], 0, CmrProblem::Unaligned);
    let e = PlanError::BadCmr {
        index: 1,
        start: 4 * GIB,
        end: b,
        problem: CmrProblem::Overlaps { earlier: 0 },
    };
    assert_eq!(e.kind(), "bad_cmr");
    assert_eq!(
        e.to_string(),
        "CMR 1 [0x100000000, 0x100100000) starts before CMR 0 ends \
         (CMRs must be sorted and disjoint)"
    );
    // The same CMRs in the module's order, touching, with empty slots
    // between: one chain, and both strategies plan it.
    input.cmrs = Some(vec![(4 * GIB, b), (0, 0), (b, 6 * GIB)]);
    let (best, linux) = both(&input);
    best.unwrap();
    check(&linux.unwrap(), &input).unwrap();
}
