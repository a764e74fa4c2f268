//! The `tdx-plan` program, run as a user runs it: on this machine, on the
//! shared memory maps in each format, on maps with no plan, on malformed
//! input, with `--cmrs`, `--strategy linux` and `--svg`. Every JSON plan it
//! prints for a shared map is rebuilt from the JSON alone and checked
//! again: by the planner's byte-level check and by TDH.SYS.CONFIG on the
//! simulated module.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use tdx_api::plan::{
    self, Limits, PamtPlacement, Plan, PlannedTdmr, RemoteReason, ReservedArea, Strategy,
};
use tdx_plan::{analysis::plan_input, input};
use tdx_sim::{MachineDesc, Simulator, SysState, testkit};

const GIB: u64 = 1 << 30;

fn memmaps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/memmaps")
}

/// A scratch directory for files the tests write.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tdx-plan-cli");
    fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `tdx-plan` with `args`.
fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_tdx-plan"))
        .args(args)
        .output()
        .expect("tdx-plan runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "tdx-plan panicked: {stderr}");
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `tdx-plan --format json` with `args`; returns the exit code and
/// the document.
fn run_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let doc = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", stdout(&out)));
    (out.status.code().expect("exit code"), doc)
}

/// The shared maps' names (without extension), sorted.
fn shared_maps() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(memmaps())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert_eq!(names.len(), 15, "the shared memory maps are all there");
    names
}

fn path_of(name: &str, ext: &str) -> String {
    memmaps()
        .join(format!("{name}.{ext}"))
        .to_string_lossy()
        .into_owned()
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(k: &[&'a str]) -> BTreeSet<&'a str> {
    k.iter().copied().collect()
}

/// A JSON map whose first GiB has 40 holes of 4 KiB (41 with the first
/// MiB): more than 16 reserved areas in one 1 GiB block, so no plan.
fn fine_holes_map() -> PathBuf {
    let mut usable = vec![[0u64, 0x9f000]];
    let mut start = 0x10_0000;
    for _ in 0..40 {
        let end = start + 0x100_0000 - 0x1000;
        usable.push([start, end]);
        start = end + 0x1000;
    }
    usable.push([start, 4 * GIB]);
    // Tests run in parallel and two of them use this map: each writes its
    // own copy and renames it into place, so none reads a half-written file.
    let path = scratch("fine-holes.json");
    let mine = scratch(&format!(
        "fine-holes.{:?}.json",
        std::thread::current().id()
    ));
    fs::write(&mine, serde_json::json!({ "usable": usable }).to_string()).unwrap();
    fs::rename(&mine, &path).unwrap();
    path
}

#[test]
fn no_argument_plans_this_machine() {
    let out = run::<&str>(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Memory map"), "{text}");
    assert!(text.contains("TDMR 0"), "{text}");
    assert!(text.contains("Linux's construction"), "{text}");
    assert!(text.contains("TDH.SYS.CONFIG"), "{text}");

    let (code, doc) = run_json(&[]);
    assert_eq!(code, 0);
    assert!(!doc["tdmrs"].as_array().unwrap().is_empty());
}

#[test]
fn every_shared_map_in_every_format_gives_the_same_best_plan() {
    let mut iomem_forms = 0;
    for name in shared_maps() {
        let (code, json) = run_json(&[&path_of(&name, "json")]);
        assert_eq!(code, 0, "{name}.json: {json}");
        let (code, log) = run_json(&[&path_of(&name, "txt")]);
        assert_eq!(code, 0, "{name}.txt: {log}");
        assert_eq!(json, log, "{name}: the JSON and the boot log disagree");
        // Forced formats read the same.
        let (_, forced) = run_json(&["--input-format", "e820-log", &path_of(&name, "txt")]);
        assert_eq!(forced, log, "{name}: --input-format e820-log");

        let iomem = path_of(&name, "iomem");
        if !Path::new(&iomem).exists() {
            continue;
        }
        iomem_forms += 1;
        let (code, from_iomem) = run_json(&[&iomem]);
        assert_eq!(code, 0, "{name}.iomem: {from_iomem}");
        let map_doc: Value =
            serde_json::from_str(&fs::read_to_string(path_of(&name, "json")).unwrap()).unwrap();
        if map_doc["numa_nodes"].is_null() {
            assert_eq!(from_iomem, json, "{name}: /proc/iomem and JSON disagree");
        } else {
            // /proc/iomem has no NUMA nodes: everything is node 0. The best
            // plan keeps TDMRs within a node where it can, so the TDMRs (and
            // by 4 KiB per TDMR, the 1G-level PAMT) may differ; the memory,
            // the limits and the total TDMR coverage may not.
            let covered = |d: &Value| -> u64 {
                d["tdmrs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| u64_of(&t["size"]))
                    .sum()
            };
            assert_eq!(
                covered(&from_iomem),
                covered(&json),
                "{name}: iomem TDMR bytes"
            );
            for k in ["usable_bytes", "limits"] {
                assert_eq!(from_iomem[k], json[k], "{name}: iomem {k}");
            }
            let tdmrs = |d: &Value| d["tdmrs"].as_array().unwrap().len() as u64;
            let pamt_diff = u64_of(&json["pamt_bytes"]).abs_diff(u64_of(&from_iomem["pamt_bytes"]));
            assert!(
                pamt_diff <= 4096 * tdmrs(&json).max(tdmrs(&from_iomem)),
                "{name}: iomem PAMT differs by {pamt_diff} bytes"
            );
        }
    }
    assert!(iomem_forms >= 14, "only {iomem_forms} iomem forms");
}

/// Checks `doc` has exactly the documented keys, all numbers integers.
fn assert_plan_shape(name: &str, doc: &Value) {
    assert_eq!(
        keys(doc),
        set(&[
            "tdmrs",
            "pamt_bytes",
            "remote_pamts",
            "remote_pamt_memory",
            "usable_bytes",
            "limits",
            "linux"
        ]),
        "{name}"
    );
    let tdmrs = doc["tdmrs"].as_array().unwrap();
    assert!(!tdmrs.is_empty(), "{name}");
    let mut pamt_sum = 0;
    let mut remote = 0;
    for t in tdmrs {
        assert_eq!(
            keys(t),
            set(&[
                "base",
                "size",
                "node",
                "reserved",
                "pamt",
                "pamt_node",
                "pamt_remote"
            ]),
            "{name}"
        );
        u64_of(&t["base"]);
        u64_of(&t["size"]);
        u64_of(&t["node"]);
        u64_of(&t["pamt_node"]);
        if remote_reason(&t["pamt_remote"]).is_some() {
            remote += 1;
            assert_ne!(t["pamt_node"], t["node"], "{name}");
        } else {
            assert_eq!(t["pamt_node"], t["node"], "{name}");
        }
        for r in t["reserved"].as_array().unwrap() {
            assert_eq!(keys(r), set(&["offset", "size"]), "{name}");
            u64_of(&r["offset"]);
            u64_of(&r["size"]);
        }
        assert_eq!(keys(&t["pamt"]), set(&["4k", "2m", "1g"]), "{name}");
        for level in ["4k", "2m", "1g"] {
            let l = &t["pamt"][level];
            assert_eq!(keys(l), set(&["base", "size"]), "{name}");
            u64_of(&l["base"]);
            pamt_sum += u64_of(&l["size"]);
        }
    }
    assert_eq!(u64_of(&doc["pamt_bytes"]), pamt_sum, "{name}");
    assert_eq!(u64_of(&doc["remote_pamts"]), remote, "{name}");
    assert!(u64_of(&doc["usable_bytes"]) > 0, "{name}");
    assert_eq!(
        doc["limits"],
        serde_json::json!({"max_tdmrs": 64, "max_reserved_per_tdmr": 16, "pamt_entry_size": [16, 16, 16]}),
        "{name}"
    );
    let linux = &doc["linux"];
    assert_eq!(
        keys(linux),
        set(&[
            "status",
            "tdmrs",
            "max_reserved",
            "pamt_bytes",
            "remote_pamts",
            "remote_pamt_memory"
        ]),
        "{name}"
    );
    assert!(linux["status"].is_string(), "{name}");
    if linux["status"] == "ok" {
        u64_of(&linux["tdmrs"]);
        u64_of(&linux["max_reserved"]);
        u64_of(&linux["pamt_bytes"]);
        u64_of(&linux["remote_pamts"]);
        u64_of(&linux["remote_pamt_memory"]);
    }
    u64_of(&doc["remote_pamt_memory"]);
}

#[test]
fn the_json_has_exactly_the_documented_shape() {
    for name in shared_maps() {
        for strategy in ["best", "linux"] {
            let (code, doc) = run_json(&["--strategy", strategy, &path_of(&name, "json")]);
            assert_eq!(code, 0, "{name} {strategy}: {doc}");
            assert_plan_shape(&format!("{name} {strategy}"), &doc);
        }
    }
    // This machine too.
    let (_, doc) = run_json(&[]);
    assert_plan_shape("this machine", &doc);
}

#[test]
fn strategy_linux_describes_linuxs_plan() {
    for name in shared_maps() {
        let (_, best) = run_json(&[&path_of(&name, "json")]);
        let (code, linux) = run_json(&["--strategy", "linux", &path_of(&name, "json")]);
        assert_eq!(code, 0, "{name}: {linux}");
        // The `linux` summary is the same in both documents, and with
        // --strategy linux it describes the TDMRs shown.
        assert_eq!(best["linux"], linux["linux"], "{name}");
        let tdmrs = linux["tdmrs"].as_array().unwrap();
        assert_eq!(linux["linux"]["status"], "ok", "{name}");
        assert_eq!(
            u64_of(&linux["linux"]["tdmrs"]),
            tdmrs.len() as u64,
            "{name}"
        );
        assert_eq!(linux["linux"]["pamt_bytes"], linux["pamt_bytes"], "{name}");
        let max_reserved = tdmrs
            .iter()
            .map(|t| t["reserved"].as_array().unwrap().len())
            .max()
            .unwrap();
        assert_eq!(
            u64_of(&linux["linux"]["max_reserved"]),
            max_reserved as u64,
            "{name}"
        );
        // Linux's construction never needs less PAMT than the best plan.
        assert!(
            u64_of(&best["pamt_bytes"]) <= u64_of(&linux["pamt_bytes"]),
            "{name}"
        );
    }
}

#[test]
fn a_map_with_no_plan_exits_1_with_the_numbers() {
    let map = fine_holes_map();
    let map = map.to_str().unwrap();
    let (code, doc) = run_json(&["--max-reserved", "16", map]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["kind"], "too_many_reserved_areas", "{doc}");
    assert_eq!(doc["strategy"], "best");
    assert_eq!(u64_of(&doc["block"]), 0);
    assert_eq!(u64_of(&doc["needed"]), 41);
    assert_eq!(u64_of(&doc["max"]), 16);
    assert!(doc["error"].as_str().unwrap().contains("41"), "{doc}");

    // Linux's construction fails too, with its own error.
    let (code, doc) = run_json(&["--strategy", "linux", map]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["kind"], "too_many_reserved_areas", "{doc}");
    assert_eq!(doc["strategy"], "linux");
    assert_eq!(u64_of(&doc["base"]), 0);
    assert_eq!(u64_of(&doc["end"]), GIB);
    assert_eq!(u64_of(&doc["max"]), 16);

    // Text: the same status, the reason on stdout and stderr.
    let out = run(&[map]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("No plan (best)"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("needs 41 reserved areas"),
        "{}",
        stderr(&out)
    );

    // With room for 41 areas per TDMR there is a plan.
    let (code, doc) = run_json(&["--max-reserved", "41", map]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(u64_of(&doc["limits"]["max_reserved_per_tdmr"]), 41);
}

#[test]
fn too_many_tdmrs_exits_1_with_the_numbers() {
    let (code, doc) = run_json(&[
        "--max-tdmrs",
        "1",
        &path_of("01-intel-archercity-spr-2s-cxl", "json"),
    ]);
    // Joining the two runs across the 2 GiB gap gives one TDMR: a plan.
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["tdmrs"].as_array().unwrap().len(), 1);
    // Linux's status names every TDMR its construction makes on the map
    // (not the limit plus one).
    let map = input::parse(
        &std::fs::read_to_string(path_of("01-intel-archercity-spr-2s-cxl", "json")).unwrap(),
        None,
    )
    .unwrap();
    let mut unlimited = Limits::TDX_1_5;
    unlimited.max_tdmrs = usize::MAX;
    let needed = plan::plan(&plan_input(&map, unlimited), Strategy::Linux)
        .unwrap()
        .tdmrs
        .len();
    assert!(needed > 2, "{needed}");
    assert_eq!(
        doc["linux"]["status"],
        format!("the map needs {needed} TDMRs, the module allows 1")
    );
    assert!(doc["linux"]["tdmrs"].is_null());

    let (code, doc) = run_json(&[
        "--max-tdmrs",
        "0",
        &path_of("01-intel-archercity-spr-2s-cxl", "json"),
    ]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["kind"], "too_many_tdmrs");
    assert_eq!(u64_of(&doc["max"]), 0);
    u64_of(&doc["needed"]);
}

/// Replaces line `n` (1-based) of `text`.
fn edit_line(text: &str, n: usize, f: impl Fn(&str) -> String) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            if i + 1 == n {
                f(l) + "\n"
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

#[test]
fn malformed_input_exits_2_with_the_line() {
    let log = fs::read_to_string(path_of("05-lenovo-sr650v2-icx-2s-512g", "txt")).unwrap();
    assert!(
        log.lines()
            .nth(4)
            .unwrap()
            .contains("BIOS-e820: [mem 0x000000000003f000-")
    );
    let broken = edit_line(&log, 5, |l| {
        l.replacen("0x000000000003f000", "0x00000000000g3f000", 1)
    });
    let path = scratch("broken.txt");
    fs::write(&path, broken).unwrap();
    let path = path.to_str().unwrap();

    let out = run(&[path]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("line 5"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    let (code, doc) = run_json(&[path]);
    assert_eq!(code, 2);
    assert_eq!(doc["kind"], "input");
    assert_eq!(u64_of(&doc["line"]), 5);
    assert!(doc["error"].as_str().unwrap().contains("line 5"), "{doc}");

    // Broken JSON, a broken CMR list, a missing file, unknown text.
    let json = scratch("broken.json");
    fs::write(&json, "{\n  \"usable\": [[0, 4096],\n  [8192, x]]\n}\n").unwrap();
    let (code, doc) = run_json(&[json.to_str().unwrap()]);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(u64_of(&doc["line"]), 3, "{doc}");

    let cmrs = scratch("broken-cmrs.txt");
    fs::write(&cmrs, "0-ffffffff\nzz-1000\n").unwrap();
    let (code, doc) = run_json(&[
        "--cmrs",
        cmrs.to_str().unwrap(),
        &path_of("04-lenovo-sr950-skx-8s", "json"),
    ]);
    assert_eq!(code, 2, "{doc}");
    assert_eq!(u64_of(&doc["line"]), 2, "{doc}");

    let (code, doc) = run_json(&["/nonexistent/memmap"]);
    assert_eq!(code, 2);
    assert!(doc["line"].is_null());

    let unknown = scratch("unknown.txt");
    fs::write(&unknown, "hello\nworld\n").unwrap();
    let out = run(&[unknown.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--input-format"), "{}", stderr(&out));

    // Usage errors are status 2 as well (clap's convention).
    assert_eq!(run(&["--pamt-entry-size", "16,16"]).status.code(), Some(2));
    assert_eq!(run(&["--strategy", "fastest"]).status.code(), Some(2));
}

/// A small well-formedness check: tags nest and close, attributes are
/// quoted, text holds no raw `<` or `&` other than entities.
fn assert_well_formed_xml(svg: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let text = &rest[..open];
        for (i, _) in text.match_indices('&') {
            let entity = &text[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;"]
                    .iter()
                    .any(|e| entity.starts_with(e)),
                "bare & in {text:?}"
            );
        }
        let close = rest[open..].find('>').expect("tag closes") + open;
        let tag = &rest[open + 1..close];
        assert_eq!(
            tag.matches('"').count() % 2,
            0,
            "unbalanced quotes in <{tag}>"
        );
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(name.trim()), "closing </{name}>");
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            let name = tag.split_whitespace().next().expect("tag name");
            stack.push(name);
        }
        rest = &rest[close + 1..];
    }
    assert!(rest.trim().is_empty());
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[test]
fn svg_draws_every_tdmr() {
    for (name, args) in [
        ("this machine", vec![]),
        (
            "01",
            vec![path_of("01-intel-archercity-spr-2s-cxl", "json")],
        ),
        ("33", vec![path_of("33-dell-r410-nehalem-2s-24g", "txt")]),
        (
            "41 linux",
            vec![
                path_of("41-kontron-tigerlake-sbl-16g", "json"),
                "--strategy".into(),
                "linux".into(),
            ],
        ),
    ] {
        let svg_path = scratch(&format!("{}.svg", name.replace(' ', "-")));
        let mut all = args.clone();
        all.extend([
            "--format".into(),
            "json".into(),
            "--svg".into(),
            svg_path.to_string_lossy().into_owned(),
        ]);
        let out = run(&all);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let svg = fs::read_to_string(&svg_path).unwrap();
        assert!(svg.starts_with("<svg"), "{name}");
        assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        assert_well_formed_xml(&svg);
        let tdmrs = doc["tdmrs"].as_array().unwrap();
        for (i, t) in tdmrs.iter().enumerate() {
            let (base, size) = (u64_of(&t["base"]), u64_of(&t["size"]));
            let title = format!("<title>TDMR {i}: [{base:#x}, {:#x})", base + size);
            let rect = svg
                .match_indices(&title)
                .filter(|(at, _)| {
                    svg[..*at]
                        .rfind('<')
                        .is_some_and(|r| svg[r..].starts_with("<rect"))
                })
                .count();
            assert_eq!(rect, 1, "{name}: a <rect> for TDMR {i}");
            assert!(
                svg.contains(&format!(">TDMR {i} ")),
                "{name}: a row for TDMR {i}"
            );
            for r in t["reserved"].as_array().unwrap() {
                let s = base + u64_of(&r["offset"]);
                let e = s + u64_of(&r["size"]);
                assert!(
                    svg.contains(&format!(": [{s:#x}, {e:#x})")),
                    "{name}: reserved area"
                );
            }
        }
        for word in [
            "usable RAM",
            "hole (not RAM)",
            "reserved area",
            "PAMT",
            "node 0",
        ] {
            assert!(svg.contains(word), "{name}: legend {word}");
        }
    }

    // Without a plan the picture still shows the map and the block.
    let svg_path = scratch("no-plan.svg");
    let out = run(&[
        fine_holes_map().to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let svg = fs::read_to_string(&svg_path).unwrap();
    assert_well_formed_xml(&svg);
    assert!(svg.contains("41 holes to reserve"), "{svg}");
}

#[test]
fn cmrs_make_a_fine_holes_map_plannable() {
    let map = fine_holes_map();
    let map = map.to_str().unwrap();
    let (code, _) = run_json(&[map]);
    assert_eq!(code, 1);

    // The module's CMRs are coarse: one CMR over the first 4 GiB covers
    // the holes, which then need no reserved areas.
    let cmrs = scratch("coarse-cmrs.txt");
    fs::write(&cmrs, "# one CMR\n0-100000000\n").unwrap();
    let (code, doc) = run_json(&["--cmrs", cmrs.to_str().unwrap(), map]);
    assert_eq!(code, 0, "{doc}");
    let tdmrs = doc["tdmrs"].as_array().unwrap();
    assert_eq!(tdmrs.len(), 1);
    assert!(tdmrs[0]["reserved"].as_array().unwrap().len() <= 1, "{doc}");
    // Linux does not read CMRs: its construction still fails.
    assert!(
        doc["linux"]["status"]
            .as_str()
            .unwrap()
            .contains("reserved areas exhausted"),
        "{doc}"
    );

    // The text says where the CMRs came from, and the module accepts it.
    let out = run(&["--cmrs", cmrs.to_str().unwrap(), map]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("CMRs        1 given"), "{text}");
    assert!(text.contains("TDH.SYS.CONFIG  accepted"), "{text}");

    // CMRs that leave usable memory out make the map unplannable.
    let narrow = scratch("narrow-cmrs.json");
    fs::write(&narrow, "[[0, 2147483648]]").unwrap();
    let (code, doc) = run_json(&["--cmrs", narrow.to_str().unwrap(), map]);
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["kind"], "not_convertible", "{doc}");
    u64_of(&doc["start"]);
    u64_of(&doc["end"]);
}

/// A TDMR's `pamt_remote` as the planner's reason.
fn remote_reason(v: &Value) -> Option<RemoteReason> {
    match v.as_str() {
        None => {
            assert!(v.is_null(), "pamt_remote: {v}");
            None
        }
        Some("no_room") => Some(RemoteReason::NoRoom),
        Some("reserved_area_limit") => Some(RemoteReason::ReservedAreaLimit),
        Some(other) => panic!("pamt_remote: {other}"),
    }
}

/// The plan a JSON document describes.
fn plan_from_json(doc: &Value, strategy: Strategy) -> Plan {
    let level = |v: &Value| (u64_of(&v["base"]), u64_of(&v["size"]));
    let tdmrs = doc["tdmrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| PlannedTdmr {
            base: u64_of(&t["base"]),
            size: u64_of(&t["size"]),
            node: u32::try_from(u64_of(&t["node"])).unwrap(),
            reserved: t["reserved"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| ReservedArea {
                    offset: u64_of(&r["offset"]),
                    size: u64_of(&r["size"]),
                })
                .collect(),
            pamt: PamtPlacement {
                l4k: level(&t["pamt"]["4k"]),
                l2m: level(&t["pamt"]["2m"]),
                l1g: level(&t["pamt"]["1g"]),
            },
            pamt_node: u32::try_from(u64_of(&t["pamt_node"])).unwrap(),
            pamt_remote: remote_reason(&t["pamt_remote"]),
        })
        .collect();
    Plan {
        tdmrs,
        strategy,
        usable_bytes: u64_of(&doc["usable_bytes"]),
    }
}

#[test]
fn every_json_plan_passes_the_check_and_tdh_sys_config() {
    for name in shared_maps() {
        let text = fs::read_to_string(path_of(&name, "json")).unwrap();
        let map = input::parse(&text, None).unwrap();
        for (strategy, arg) in [(Strategy::Best, "best"), (Strategy::Linux, "linux")] {
            let (code, doc) = run_json(&["--strategy", arg, &path_of(&name, "json")]);
            assert_eq!(code, 0, "{name} {arg}: {doc}");
            let plan = plan_from_json(&doc, strategy);
            let input = plan_input(&map, Limits::TDX_1_5);
            plan::check(&plan, &input).unwrap_or_else(|e| panic!("{name} {arg}: {e}"));

            // TDH.SYS.CONFIG on a simulated host with this map: testkit
            // panics with the status if the module refuses.
            let mut desc = MachineDesc::from_memmap_json(&text).unwrap();
            desc.numa.clone_from(&map.numa);
            let sim = Simulator::new(desc).unwrap();
            testkit::bring_up(
                &sim,
                &plan.tdmr_infos(),
                testkit::BringUpOptions {
                    init_tdmrs: false,
                    ..Default::default()
                },
            );
            assert_eq!(sim.module_state(), SysState::Ready, "{name} {arg}");

            // The program's own report says the same.
            let out = run(&["--strategy", arg, &path_of(&name, "json")]);
            let report = stdout(&out);
            assert_eq!(
                report
                    .matches("TDH.SYS.CONFIG  accepted (TDX_SUCCESS")
                    .count(),
                2,
                "{name} {arg}: {report}"
            );
            assert_eq!(
                report.matches("plan check      passes").count(),
                2,
                "{name}"
            );
        }
    }
}

#[test]
fn dynamic_pamt_shrinks_the_4k_level() {
    let map = path_of("05-lenovo-sr650v2-icx-2s-512g", "json");
    let (_, plain) = run_json(&[&map]);
    let (code, dynamic) = run_json(&["--dynamic-pamt", &map]);
    assert_eq!(code, 0, "{dynamic}");
    assert_eq!(u64_of(&dynamic["limits"]["dynamic_pamt_bits"]), 1);
    assert!(u64_of(&dynamic["pamt_bytes"]) * 16 < u64_of(&plain["pamt_bytes"]));
    let (_, two) = run_json(&["--dynamic-pamt=2", &map]);
    assert_eq!(u64_of(&two["limits"]["dynamic_pamt_bits"]), 2);
    assert!(u64_of(&two["pamt_bytes"]) > u64_of(&dynamic["pamt_bytes"]));
    // The simulated module (1.5.16+) runs TDH.SYS.CONFIG with Dynamic PAMT
    // and accepts the bitmap-sized 4K level.
    let out = run(&["--dynamic-pamt", &map]);
    assert!(stdout(&out).contains("accepted"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("not simulated"), "{}", stdout(&out));
}

#[test]
fn limits_reach_the_planner_and_the_module() {
    let map = path_of("01-intel-archercity-spr-2s-cxl", "json");
    let (code, doc) = run_json(&["--pamt-entry-size", "8,16,32", "--max-reserved", "8", &map]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        doc["limits"],
        serde_json::json!({"max_tdmrs": 64, "max_reserved_per_tdmr": 8, "pamt_entry_size": [8, 16, 32]})
    );
    let (_, plain) = run_json(&[&map]);
    assert!(u64_of(&doc["pamt_bytes"]) < u64_of(&plain["pamt_bytes"]));
    let out = run(&["--pamt-entry-size", "8,16,32", &map]);
    assert_eq!(
        stdout(&out).matches("TDH.SYS.CONFIG  accepted").count(),
        2,
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_report_says_which_node_each_pamt_is_on() {
    // A four-node map: every PAMT on its TDMR's node, both strategies.
    let map = path_of("09-intel-s4600lh-ivb-4s-256g", "json");
    for strategy in ["best", "linux"] {
        let (code, doc) = run_json(&["--strategy", strategy, &map]);
        assert_eq!(code, 0, "{doc}");
        assert_eq!(u64_of(&doc["remote_pamts"]), 0, "{strategy}: {doc}");
        assert_eq!(u64_of(&doc["linux"]["remote_pamts"]), 0, "{doc}");
        assert_eq!(u64_of(&doc["remote_pamt_memory"]), 0, "{doc}");
        assert_eq!(u64_of(&doc["linux"]["remote_pamt_memory"]), 0, "{doc}");
        let nodes: BTreeSet<u64> = doc["tdmrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| u64_of(&t["pamt_node"]))
            .collect();
        assert_eq!(nodes, BTreeSet::from([0, 1, 2, 3]), "{strategy}: {doc}");
        let text = stdout(&run(&["--strategy", strategy, &map]));
        // The plan and the other strategy's summary.
        assert_eq!(
            text.matches(
                "PAMT nodes      0 remote: every PAMT on its TDMR's node (5 of 5); \
                 all memory has its PAMT on its own node"
            )
            .count(),
            2,
            "{text}"
        );
        assert!(!text.contains("REMOTE"), "{text}");
    }
}

#[test]
fn a_node_too_small_for_its_pamt_is_flagged() {
    // Node 1 has 2 MiB at 5 GiB: its TDMR's 4 MiB PAMT cannot be there.
    let path = scratch("small-node.json");
    fs::write(
        &path,
        serde_json::json!({
            "usable": [[0x10_0000u64, 2 * GIB], [4 * GIB, 5 * GIB],
                       [5 * GIB, 5 * GIB + 0x20_0000], [6 * GIB, 10 * GIB]],
            "numa_nodes": [[0, 5 * GIB], [5 * GIB, 6 * GIB], [6 * GIB, 10 * GIB]],
            "numa_node_ids": [0, 1, 0],
        })
        .to_string(),
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for strategy in ["best", "linux"] {
        let (code, doc) = run_json(&["--strategy", strategy, path]);
        assert_eq!(code, 0, "{strategy}: {doc}");
        assert_plan_shape(strategy, &doc);
        assert_eq!(u64_of(&doc["remote_pamts"]), 1, "{strategy}: {doc}");
        let remote: Vec<&Value> = doc["tdmrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !t["pamt_remote"].is_null())
            .collect();
        assert_eq!(remote.len(), 1, "{doc}");
        assert_eq!(remote[0]["pamt_remote"], "no_room", "{doc}");
        assert_eq!(u64_of(&remote[0]["node"]), 1, "{doc}");
        assert_eq!(u64_of(&remote[0]["pamt_node"]), 0, "{doc}");
        assert_eq!(u64_of(&remote[0]["base"]), 5 * GIB, "{doc}");
        // The 2 MiB of node 1 has its PAMT on node 0.
        assert_eq!(u64_of(&doc["remote_pamt_memory"]), 0x20_0000, "{doc}");

        let text = stdout(&run(&["--strategy", strategy, path]));
        assert!(
            text.contains(
                "REMOTE PAMT: on node 0, the TDMR is on node 1: its node has no free run of \
                 memory large enough (no_room)"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("PAMT nodes      1 remote: 1 of ").count(),
            2,
            "{text}"
        );
        // Still a plan the module accepts.
        assert_eq!(
            text.matches("TDH.SYS.CONFIG  accepted (TDX_SUCCESS")
                .count(),
            2,
            "{text}"
        );
    }
}
