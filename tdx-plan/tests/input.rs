//! The input readers on real memory maps, in every format they come in.
//!
//! `testdata/memmaps` holds the shared maps of real machines as JSON and as
//! the original boot log lines, plus a `/proc/iomem` form generated from
//! their e820 lists; `testdata/sysfs` is a small fake sysfs tree. See
//! `testdata/README.md`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use proptest::prelude::*;
use serde_json::Value;
use tdx_plan::input::{
    InputError, InputFormat, MemoryMap, detect, parse, parse_cmrs, read_running_machine,
    read_sysfs_memmap,
};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shared maps: `(name, json text, log text)`.
fn shared_maps() -> Vec<(String, String, String)> {
    let dir = testdata().join("memmaps");
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
            let json = read(&dir.join(format!("{name}.json")));
            let log = read(&dir.join(format!("{name}.txt")));
            (name, json, log)
        })
        .collect()
}

/// Parses `text` as `format` and by detection, checks both agree, and
/// returns the map.
fn parse_both(name: &str, text: &str, format: InputFormat) -> MemoryMap {
    assert_eq!(detect(text), Some(format), "{name}: detected format");
    let explicit = parse(text, Some(format)).unwrap_or_else(|e| panic!("{name} as {format}: {e}"));
    let detected = parse(text, None).unwrap_or_else(|e| panic!("{name} detected: {e}"));
    assert_eq!(explicit, detected, "{name}");
    explicit
}

/// A `[[start, end, node], ...]` or `[[start, end], ...]` list of a JSON map.
fn triples(doc: &Value, key: &str) -> Option<Vec<(u64, u64, u32)>> {
    let list = doc.get(key)?.as_array()?;
    Some(
        list.iter()
            .map(|r| {
                let n = |i: usize| r[i].as_u64().unwrap();
                (n(0), n(1), u32::try_from(n(2)).unwrap())
            })
            .collect(),
    )
}

/// Whether every byte of `[start, end)` is on `node` according to `map`.
fn on_node(map: &MemoryMap, start: u64, end: u64, node: u32) -> bool {
    let mut at = start;
    while at < end {
        let Some(&(_, range_end, n)) = map.numa.iter().find(|&&(s, e, _)| s <= at && at < e) else {
            return false;
        };
        if n != node {
            return false;
        }
        at = range_end;
    }
    true
}

#[test]
fn every_shared_map_reads_the_same_in_every_format() {
    let dir = testdata().join("memmaps");
    let mut iomem_forms = 0;
    for (name, json_text, log_text) in shared_maps() {
        let doc: Value = serde_json::from_str(&json_text).unwrap();
        let json = parse_both(&name, &json_text, InputFormat::Json);
        let log = parse_both(&name, &log_text, InputFormat::E820Log);

        // Usable RAM: exactly the JSON's `usable`.
        let expected: Vec<(u64, u64)> = doc["usable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
            .collect();
        assert_eq!(json.usable, expected, "{name}: JSON usable");
        assert_eq!(log.usable, expected, "{name}: boot log usable");

        // NUMA from the log: the memory node ranges when the log has them.
        let memblock = triples(&doc, "memblock_ranges");
        match &memblock {
            Some(ranges) if !ranges.is_empty() => {
                assert_eq!(&log.numa, ranges, "{name}: memblock NUMA")
            }
            _ => {}
        }
        // Where the JSON has NUMA nodes (from SRAT): the log's node for every
        // range agrees with them, and the SRAT lines alone (with the
        // kernel's merges) give exactly the JSON's nodes.
        if !json.numa.is_empty() {
            for &(start, end, node) in &log.numa {
                assert!(
                    on_node(&json, start, end, node),
                    "{name}: log node {node} [{start:#x}, {end:#x}) vs JSON {:x?}",
                    json.numa
                );
            }
            let srat_only: String = log_text
                .lines()
                .filter(|l| !l.contains("node ranges") && !l.contains("  node "))
                .map(|l| format!("{l}\n"))
                .collect();
            let srat = parse(&srat_only, Some(InputFormat::E820Log)).unwrap();
            assert_eq!(srat.usable, expected, "{name}: SRAT-only log usable");
            assert_eq!(
                srat.numa, json.numa,
                "{name}: SRAT NUMA equals the JSON numa_nodes"
            );
        } else if memblock.is_none_or(|m| m.is_empty()) {
            assert!(log.numa.is_empty(), "{name}: no NUMA lines, no NUMA");
        }

        // /proc/iomem, where generated: the same usable RAM, no NUMA.
        let iomem_path = dir.join(format!("{name}.iomem"));
        if iomem_path.exists() {
            iomem_forms += 1;
            let iomem = parse_both(&name, &read(&iomem_path), InputFormat::Iomem);
            assert_eq!(iomem.usable, expected, "{name}: iomem usable");
            assert!(iomem.numa.is_empty());
        }

        // The normalized map survives a round trip through JSON.
        for map in [&json, &log] {
            let again = parse(&map.to_json(), None).unwrap();
            assert_eq!(&again.usable, &map.usable);
            assert_eq!(&again.numa, &map.numa);
            assert_eq!(again.source, format!("JSON: {}", map.source));
        }
    }
    assert!(iomem_forms >= 5, "only {iomem_forms} iomem forms");
}

/// The 41 excerpt has no e820 lines: its usable RAM is its memory node
/// ranges, as its JSON's `usable_origin` says.
#[test]
fn a_log_without_e820_lines_uses_the_memory_node_ranges() {
    let maps = shared_maps();
    let (_, json_text, log_text) = maps.iter().find(|m| m.0.starts_with("41-")).unwrap();
    let doc: Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(doc["usable_origin"], "memblock-node-ranges");
    let log = parse(log_text, None).unwrap();
    assert!(
        log.source.contains("usable RAM from 3 memory node ranges"),
        "{}",
        log.source
    );
}

/// Rewrites every line of a `[    0.000000] message` log with another
/// prefix.
fn with_prefix(log: &str, prefix: impl Fn(&str) -> String, eol: &str) -> String {
    log.lines()
        .map(|line| {
            let message = line.split_once("] ").map_or(line, |(_, m)| m);
            if line.starts_with('#') {
                format!("{line}{eol}")
            } else {
                format!("{}{message}{eol}", prefix(line))
            }
        })
        .collect()
}

#[test]
fn log_prefixes_do_not_matter() {
    for (name, _, log_text) in shared_maps() {
        let plain = parse(&log_text, None).unwrap();
        let timestamp = |l: &str| {
            l.split_once("] ")
                .map_or(String::new(), |(t, _)| format!("{t}] "))
        };
        let variants = [
            ("bare", with_prefix(&log_text, |_| String::new(), "\n")),
            (
                "priority",
                with_prefix(&log_text, |l| format!("<6>{}", timestamp(l)), "\n"),
            ),
            (
                "syslog",
                with_prefix(
                    &log_text,
                    |_| "Jan 12 10:00:01 host kernel: ".to_owned(),
                    "\n",
                ),
            ),
            (
                "syslog with timestamp",
                with_prefix(
                    &log_text,
                    |l| format!("Jan 12 10:00:01 host kernel: {}", timestamp(l)),
                    "\n",
                ),
            ),
            (
                "journalctl -o short-iso",
                with_prefix(
                    &log_text,
                    |_| "2024-01-12T10:00:01+0100 host kernel: ".to_owned(),
                    "\n",
                ),
            ),
            (
                "journalctl -o short-monotonic",
                with_prefix(
                    &log_text,
                    |l| format!("{}host kernel: ", timestamp(l)),
                    "\n",
                ),
            ),
            (
                "dmesg -T",
                with_prefix(
                    &log_text,
                    |_| "[Fri Jan 12 10:00:01 2024] ".to_owned(),
                    "\n",
                ),
            ),
            ("CRLF", with_prefix(&log_text, timestamp, "\r\n")),
        ];
        for (what, text) in variants {
            let map = parse(&text, None).unwrap_or_else(|e| panic!("{name} {what}: {e}"));
            assert_eq!(map.usable, plain.usable, "{name} {what}");
            assert_eq!(map.numa, plain.numa, "{name} {what}");
        }
    }
}

#[test]
fn a_journal_of_several_boots_reads_the_last() {
    let maps = shared_maps();
    let first = &maps.iter().find(|m| m.0.starts_with("33-")).unwrap().2;
    let last = &maps.iter().find(|m| m.0.starts_with("01-")).unwrap().2;
    let journal = format!(
        "-- Logs begin at Mon 2024-01-01 00:00:00 UTC. --\n{first}-- Boot 5f0c0ab5e3c54d5a --\n{last}"
    );
    let map = parse(&journal, None).unwrap();
    let expected = parse(last, None).unwrap();
    assert_eq!(map.usable, expected.usable);
    assert_eq!(map.numa, expected.numa);
    assert!(map.source.contains("the last of 2 boots"), "{}", map.source);
}

#[test]
fn iomem_read_without_root_says_so() {
    let text = read(&testdata().join("nonroot.iomem"));
    assert_eq!(detect(&text), Some(InputFormat::Iomem));
    for format in [None, Some(InputFormat::Iomem)] {
        let err = parse(&text, format).unwrap_err();
        assert!(matches!(err, InputError::IomemNeedsRoot), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("root"), "{message}");
        assert!(message.contains("without an input file"), "{message}");
        assert!(message.contains("/sys/firmware/memmap"), "{message}");
    }
}

#[test]
fn unknown_input_asks_for_the_format() {
    for text in ["", "hello\nworld\n", "   \n\n", "[1, 2, 3]"] {
        assert_eq!(detect(text), None, "{text:?}");
        let err = parse(text, None).unwrap_err();
        assert!(matches!(err, InputError::UnknownFormat));
        assert!(err.to_string().contains("--input-format"));
    }
}

/// Replaces line `n` (1-based) of `text` with `f(line)`.
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

fn error_line(text: &str, format: InputFormat) -> Option<usize> {
    let err = parse(text, Some(format)).expect_err(text);
    let line = err.line();
    assert!(
        err.to_string()
            .contains(&format!("line {}", line.unwrap_or(0))),
        "{err}"
    );
    line
}

#[test]
fn malformed_input_names_the_line() {
    let dir = testdata().join("memmaps");
    let log = read(&dir.join("05-lenovo-sr650v2-icx-2s-512g.txt"));
    // Line 5 is the third BIOS-e820 line.
    assert!(
        log.lines()
            .nth(4)
            .unwrap()
            .contains("BIOS-e820: [mem 0x000000000003f000-")
    );
    for (what, broken) in [
        (
            "bad digit",
            edit_line(&log, 5, |l| {
                l.replacen("0x000000000003f000", "0x00000000000g3f000", 1)
            }),
        ),
        (
            "reversed",
            edit_line(&log, 5, |l| {
                l.replacen("0x000000000003f000", "0x000000000013f000", 1)
            }),
        ),
        (
            "no type",
            edit_line(&log, 5, |l| l.replace("] usable", "]")),
        ),
        ("no bracket", edit_line(&log, 5, |l| l.replace(']', ""))),
        ("truncated", edit_line(&log, 5, |l| l[..40].to_owned())),
    ] {
        assert_eq!(error_line(&broken, InputFormat::E820Log), Some(5), "{what}");
    }
    // Line 29 is a memory node range.
    assert!(log.lines().nth(28).unwrap().contains("node   1: [mem"));
    let broken = edit_line(&log, 29, |l| l.replace("-0x", "_0x"));
    assert_eq!(error_line(&broken, InputFormat::E820Log), Some(29));
    let broken = edit_line(&log, 29, |l| l.replace("-0x", "-0xz"));
    assert_eq!(error_line(&broken, InputFormat::E820Log), Some(29));

    let iomem = read(&dir.join("05-lenovo-sr650v2-icx-2s-512g.iomem"));
    let broken = edit_line(&iomem, 4, |l| l.replace(" : ", " "));
    assert_eq!(error_line(&broken, InputFormat::Iomem), Some(4));
    assert_eq!(
        iomem.lines().nth(3).unwrap(),
        "000a0000-000fffff : Reserved"
    );
    let broken = edit_line(&iomem, 4, |l| l.replacen('0', "x", 1));
    assert_eq!(error_line(&broken, InputFormat::Iomem), Some(4));

    let json = read(&dir.join("05-lenovo-sr650v2-icx-2s-512g.json"));
    // Lines 10-11 are usable[1], closed on line 12.
    assert_eq!(json.lines().nth(9).unwrap().trim(), "258048,");
    let broken = edit_line(&json, 11, |l| l.replace("655360", "1"));
    assert_eq!(error_line(&broken, InputFormat::Json), Some(12));
    let broken = edit_line(&json, 11, |l| l.replace("655360", "655360, 7"));
    assert_eq!(error_line(&broken, InputFormat::Json), Some(12));
    let broken = edit_line(&json, 11, |l| l.replace("655360", "-655360"));
    assert_eq!(error_line(&broken, InputFormat::Json), Some(11));
    let broken = edit_line(&json, 11, |l| l.replace("655360", "655360,"));
    assert_eq!(error_line(&broken, InputFormat::Json), Some(12));

    let cmrs =
        "0x100000-0x80000000\n# comment\n0x100000000 0x2080000000\n0x2080000000-0x2080000123\n";
    let err = parse_cmrs(cmrs).unwrap_err();
    assert_eq!(err.line(), Some(4), "{err}");
    assert_eq!(
        parse_cmrs(&cmrs.replace("0x2080000123", "0x2090000000"))
            .unwrap()
            .len(),
        3
    );
}

/// The grep/ls listing of a sysfs tree, as `InputFormat::SysfsMemmap`
/// documents it.
fn listing(root: &Path) -> String {
    let mut out = String::new();
    let mut entries: Vec<_> = fs::read_dir(root.join("firmware/memmap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for entry in entries {
        for field in ["end", "start", "type"] {
            let value = read(&entry.join(field));
            out += &format!(
                "/sys/firmware/memmap/{}/{field}:{}",
                entry.file_name().unwrap().to_str().unwrap(),
                value
            );
        }
    }
    out += &format!(
        "/sys/devices/system/memory/block_size_bytes:{}",
        read(&root.join("devices/system/memory/block_size_bytes"))
    );
    for node in ["node0", "node1"] {
        let mut blocks: Vec<_> = fs::read_dir(root.join("devices/system/node").join(node))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("memory"))
            .collect();
        blocks.sort();
        for block in blocks {
            out += &format!("/sys/devices/system/node/{node}/{block}\n");
        }
    }
    out
}

const SYSFS_USABLE: [(u64, u64); 3] = [
    (0, 0x9fc00),
    (0x10_0000, 0x7ffe_0000),
    (0x1_0000_0000, 0x1_8000_0000),
];
const SYSFS_NUMA: [(u64, u64, u32); 3] = [
    (0, 0x8000_0000, 0),
    (0x1_0000_0000, 0x1_4000_0000, 0),
    (0x1_4000_0000, 0x1_8000_0000, 1),
];

#[test]
fn the_fake_sysfs_tree() {
    let root = testdata().join("sysfs");
    let map = read_sysfs_memmap(&root).unwrap();
    assert_eq!(map.usable, SYSFS_USABLE);
    assert_eq!(map.numa, SYSFS_NUMA);
    assert_eq!(map.cmrs, None);
    assert!(
        map.source.contains("11 firmware memmap entries"),
        "{}",
        map.source
    );

    let text = listing(&root);
    let listed = parse_both("sysfs listing", &text, InputFormat::SysfsMemmap);
    assert_eq!(listed.usable, SYSFS_USABLE);
    assert_eq!(listed.numa, SYSFS_NUMA);
}

/// A scratch copy of the fake sysfs tree, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tdx-plan-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        copy_tree(&testdata().join("sysfs"), &dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[cfg(unix)]
#[test]
fn sysfs_memory_blocks_may_be_symlinks() {
    let scratch = Scratch::new("symlinks");
    let node1 = scratch.0.join("devices/system/node/node1");
    for block in 40..48 {
        let link = node1.join(format!("memory{block}"));
        fs::remove_file(&link).unwrap();
        let target = scratch
            .0
            .join(format!("devices/system/memory/memory{block}"));
        fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(format!("../../memory/memory{block}"), &link).unwrap();
    }
    let map = read_sysfs_memmap(&scratch.0).unwrap();
    assert_eq!(map.numa, SYSFS_NUMA);
}

#[test]
fn sysfs_without_nodes_has_no_numa() {
    let scratch = Scratch::new("no-nodes");
    fs::remove_dir_all(scratch.0.join("devices/system/node")).unwrap();
    let map = read_sysfs_memmap(&scratch.0).unwrap();
    assert_eq!(map.usable, SYSFS_USABLE);
    assert!(map.numa.is_empty());
}

#[test]
fn sysfs_errors_name_the_file() {
    let scratch = Scratch::new("bad-end");
    let end = scratch.0.join("firmware/memmap/3/end");
    fs::write(&end, "0x7ffdfffg\n").unwrap();
    match read_sysfs_memmap(&scratch.0).unwrap_err() {
        InputError::Sysfs { path, what } => {
            assert_eq!(path, end);
            assert!(what.contains("0x7ffdfffg"), "{what}");
        }
        other => panic!("{other:?}"),
    }

    let scratch = Scratch::new("no-type");
    fs::remove_file(scratch.0.join("firmware/memmap/9/type")).unwrap();
    assert!(matches!(
        read_sysfs_memmap(&scratch.0),
        Err(InputError::Io { .. })
    ));

    let scratch = Scratch::new("no-block-size");
    fs::remove_file(scratch.0.join("devices/system/memory/block_size_bytes")).unwrap();
    assert!(matches!(
        read_sysfs_memmap(&scratch.0),
        Err(InputError::Io { .. })
    ));

    let missing = testdata().join("no-such-sysfs");
    match read_sysfs_memmap(&missing).unwrap_err() {
        InputError::Sysfs { path, what } => {
            assert_eq!(path, missing.join("firmware/memmap"));
            assert!(what.contains("CONFIG_FIRMWARE_MEMMAP"), "{what}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_running_machine() {
    if !Path::new("/sys/firmware/memmap").is_dir() {
        eprintln!("skipped: this machine has no /sys/firmware/memmap");
        return;
    }
    let map = read_running_machine().unwrap();
    assert!(!map.usable.is_empty(), "{map}");
    assert!(map.usable.windows(2).all(|w| w[0].1 < w[1].0));
    assert!(map.source.starts_with("sysfs /sys"), "{}", map.source);
}

/// Valid inputs of every format, to mutate.
fn samples() -> Vec<String> {
    let dir = testdata().join("memmaps");
    let mut out = vec![];
    for name in [
        "01-intel-archercity-spr-2s-cxl",
        "33-dell-r410-nehalem-2s-24g",
        "41-kontron-tigerlake-sbl-16g",
    ] {
        for ext in ["json", "txt", "iomem"] {
            let path = dir.join(format!("{name}.{ext}"));
            if path.exists() {
                out.push(read(&path));
            }
        }
    }
    out.push(read(&testdata().join("nonroot.iomem")));
    out.push(listing(&testdata().join("sysfs")));
    out.push("0x100000-0x7fffffff\n[0x100000000, 0x2080000000)\n100 200\n".to_owned());
    out.push("[[1048576, 2147483648], [\"0x100000000\", \"0x2080000000\"]]".to_owned());
    out
}

/// One edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    /// Deletes `len` bytes at a position (a fraction of the length).
    Delete(f64, usize),
    /// Inserts a string.
    Insert(f64, String),
    /// Replaces one byte with another.
    Replace(f64, u8),
    /// Duplicates a line.
    DuplicateLine(f64),
    /// Swaps a line with the next.
    SwapLines(f64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let tokens = prop::sample::select(vec![
        "0x",
        "-",
        "]",
        "[mem ",
        " : ",
        "BIOS-e820: ",
        "node 0: ",
        "\n",
        "{",
        "[",
        ",",
        "ffffffffffffffff",
        "System RAM",
        "usable",
        "SRAT: Node 4294967296 PXM 0 [mem ",
        "NUMA: Node 1 [mem 0x0-0x1] -> ",
        "/memory",
        "firmware/memmap/7/",
        ":",
        "-1",
        "1e400",
        "\u{feff}",
        "\u{1F600}",
    ]);
    prop_oneof![
        (0.0..1.0f64, 1..20usize).prop_map(|(at, len)| Edit::Delete(at, len)),
        (
            0.0..1.0f64,
            prop_oneof![tokens.prop_map(str::to_owned), "\\PC{0,8}"]
        )
            .prop_map(|(at, s)| Edit::Insert(at, s)),
        (0.0..1.0f64, any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (0.0..1.0f64).prop_map(Edit::DuplicateLine),
        (0.0..1.0f64).prop_map(Edit::SwapLines),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    for edit in edits {
        match edit {
            Edit::Delete(f, n) => {
                let start = at(*f, bytes.len());
                let end = (start + n).min(bytes.len());
                bytes.drain(start..end);
            }
            Edit::Insert(f, s) => {
                let i = at(*f, bytes.len());
                bytes.splice(i..i, s.bytes());
            }
            Edit::Replace(f, b) => {
                if !bytes.is_empty() {
                    let i = at(*f, bytes.len() - 1);
                    bytes[i] = *b;
                }
            }
            Edit::DuplicateLine(f) | Edit::SwapLines(f) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let i = at(*f, lines.len() - 1);
                    if matches!(edit, Edit::DuplicateLine(_)) {
                        lines.insert(i, lines[i]);
                    } else if i + 1 < lines.len() {
                        lines.swap(i, i + 1);
                    }
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Every reader, on `text`: each must return, never panic.
fn read_every_way(text: &str) {
    let _ = detect(text);
    let _ = parse(text, None);
    for format in InputFormat::ALL {
        if let Ok(map) = parse(text, Some(format)) {
            // What the readers return keeps the invariants.
            assert!(!map.usable.is_empty());
            assert!(map.usable.iter().all(|&(s, e)| s < e));
            assert!(map.usable.windows(2).all(|w| w[0].1 < w[1].0));
            assert!(map.numa.iter().all(|&(s, e, _)| s < e));
            assert!(map.numa.windows(2).all(|w| w[0].1 <= w[1].0));
        }
    }
    if let Ok(cmrs) = parse_cmrs(text) {
        // CMRs keep the order they were given in (the module sees them as
        // the firmware lists them) but never overlap and are never empty.
        assert!(cmrs.iter().all(|&(s, e)| s < e));
        let mut sorted = cmrs.clone();
        sorted.sort_unstable();
        assert!(sorted.windows(2).all(|w| w[0].1 <= w[1].0));
    }
}

proptest! {
    // 512 cases unless PROPTEST_CASES says otherwise.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        read_every_way(&text);
    }

    #[test]
    fn arbitrary_lines_never_panic(text in "([ -~]{0,40}\n){0,12}") {
        read_every_way(&text);
    }

    #[test]
    fn mutated_inputs_never_panic(
        sample in prop::sample::select(samples()),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        read_every_way(&apply(&sample, &edits));
    }
}
