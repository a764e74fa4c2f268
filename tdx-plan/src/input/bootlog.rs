//! The boot log format: the kernel's own report of the firmware memory map
//! and of the NUMA layout, in `dmesg`, `journalctl -k` or a syslog file.
//!
//! Lines are recognized by a token anywhere in them, so any prefix (a
//! `[    0.000000]` timestamp, `<6>`, `Jan 12 10:00:01 host kernel: `, a
//! journal's ISO time) is skipped. What is read:
//!
//! | line | since | ends |
//! |---|---|---|
//! | `BIOS-e820: [mem 0xA-0xB] type` | Linux 3.x | inclusive |
//! | `BIOS-e820: A - B (type)` | Linux 2.6 | exclusive |
//! | `node   N: [mem 0xA-0xB]` (after `Early memory node ranges`) | 3.x | inclusive |
//! | `SRAT: Node N PXM P [mem 0xA-0xB]` | 3.x | inclusive |
//! | `NUMA: Node N [mem ..] + [mem ..] -> [mem 0xA-0xB]` | 3.x | inclusive |
//!
//! Only the e820 type `usable` is usable RAM; every other type is a hole,
//! and a hole wins where a firmware table lets the two overlap (as the
//! kernel's e820 sanitizer decides). A line holding `BIOS-e820:`, or having
//! the shape of a memory node range, must parse; SRAT and NUMA lines in
//! older shapes are skipped.
//!
//! Lines starting with `#` are comments (the shared memory maps put their
//! provenance there).
//!
//! A log may hold several boots (`journalctl -k` without `-b`, a syslog
//! kept across reboots). A new boot starts where the lines stop following
//! the order one boot prints them in (e820 map, SRAT, NUMA merges, memory
//! node ranges) or where the e820 or memory node addresses go backwards; the
//! last boot is read.

use super::{InputError, InputFormat, MemoryMap, merge_ranges, normalize_numa, scan, subtract};

/// What a line says, if it says anything this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// `BIOS-provided physical RAM map:`.
    E820Header,
    /// A `BIOS-e820:` entry.
    E820 { range: (u64, u64), usable: bool },
    /// An ACPI SRAT memory affinity entry.
    Srat { range: (u64, u64), node: u32 },
    /// The span the kernel gave a node after merging its SRAT entries.
    NumaMerge { range: (u64, u64), node: u32 },
    /// `Early memory node ranges`.
    MemblockHeader,
    /// A memory node range: RAM the kernel put on a node.
    Memblock { range: (u64, u64), node: u32 },
}

impl Item {
    /// Where the item comes in the order one boot prints them.
    fn phase(self) -> u8 {
        match self {
            Self::E820Header | Self::E820 { .. } => 0,
            Self::Srat { .. } => 1,
            Self::NumaMerge { .. } => 2,
            Self::MemblockHeader | Self::Memblock { .. } => 3,
        }
    }
}

/// A node range and the line it came from.
type NodeRange = (u64, u64, u32, usize);

/// What one boot's lines said.
#[derive(Debug, Default)]
struct Boot {
    first_line: usize,
    phase: u8,
    headers: usize,
    e820: Vec<((u64, u64), bool)>,
    srat: Vec<NodeRange>,
    merges: Vec<NodeRange>,
    memblock_header: bool,
    memblock: Vec<NodeRange>,
}

impl Boot {
    fn is_empty(&self) -> bool {
        self.headers == 0
            && self.e820.is_empty()
            && self.srat.is_empty()
            && self.merges.is_empty()
            && self.memblock.is_empty()
    }

    /// Whether `item` cannot belong to this boot, so starts the next one.
    fn ends_with(&self, item: Item) -> bool {
        if self.is_empty() {
            return false;
        }
        if item.phase() < self.phase {
            return true;
        }
        match item {
            Item::E820Header => true,
            // One boot prints its e820 table and its memory node ranges in
            // address order.
            Item::E820 { range, .. } => {
                self.e820.last().is_some_and(|&(last, _)| range.0 <= last.0)
            }
            Item::MemblockHeader => self.memblock_header || !self.memblock.is_empty(),
            Item::Memblock { range, .. } => {
                self.memblock.last().is_some_and(|last| range.0 <= last.0)
            }
            Item::Srat { .. } | Item::NumaMerge { .. } => false,
        }
    }

    fn add(&mut self, item: Item, line: usize) {
        if self.is_empty() {
            self.first_line = line;
        }
        self.phase = self.phase.max(item.phase());
        match item {
            Item::E820Header => self.headers += 1,
            Item::E820 { range, usable } => self.e820.push((range, usable)),
            Item::Srat { range, node } => self.srat.push((range.0, range.1, node, line)),
            Item::NumaMerge { range, node } => self.merges.push((range.0, range.1, node, line)),
            Item::MemblockHeader => {
                self.headers += 1;
                self.memblock_header = true;
            }
            Item::Memblock { range, node } => self.memblock.push((range.0, range.1, node, line)),
        }
    }
}

/// Whether `line` marks a boot log (for format detection).
pub(super) fn is_boot_log_line(line: &str) -> bool {
    !line.trim_start().starts_with('#') && line.contains("BIOS-e820:")
        || line.contains("Early memory node ranges")
        || memblock_entry(line).is_some()
}

/// Reads a boot log.
pub(super) fn parse(text: &str) -> Result<MemoryMap, InputError> {
    let syntax = |line: usize, what: String| InputError::Syntax {
        format: InputFormat::E820Log,
        line,
        what,
    };
    let mut boot = Boot::default();
    let mut boots = 0usize;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim_start().starts_with('#') {
            continue;
        }
        let Some(item) = classify(line).map_err(|what| syntax(n, what))? else {
            continue;
        };
        if boot.ends_with(item) {
            boot = Boot::default();
        }
        if boot.is_empty() {
            boots += 1;
        }
        boot.add(item, n);
    }

    let no_memory = |what: &str| InputError::NoUsableMemory {
        format: InputFormat::E820Log,
        what: what.to_owned(),
    };
    let (usable, mut source) = if !boot.e820.is_empty() {
        let (ram, holes): (Vec<_>, Vec<_>) = boot.e820.iter().partition(|&&(_, usable)| usable);
        let ram = merge_ranges(ram.into_iter().map(|&(r, _)| r).collect());
        let holes = merge_ranges(holes.into_iter().map(|&(r, _)| r).collect());
        let usable = subtract(&ram, &holes);
        if usable.is_empty() {
            return Err(no_memory("no BIOS-e820 entry is \"usable\""));
        }
        (
            usable,
            format!("boot log: {} BIOS-e820 entries", boot.e820.len()),
        )
    } else if !boot.memblock.is_empty() {
        let usable = merge_ranges(boot.memblock.iter().map(|&(s, e, _, _)| (s, e)).collect());
        let source = format!(
            "boot log: no BIOS-e820 lines, usable RAM from {} memory node ranges",
            boot.memblock.len()
        );
        (usable, source)
    } else {
        return Err(no_memory(
            "no \"BIOS-e820:\" lines and no \"Early memory node ranges\" (is this a boot log from the start of the boot?)",
        ));
    };

    let (numa, numa_source) = if !boot.memblock.is_empty() {
        let n = boot.memblock.len();
        (boot.memblock, format!("NUMA from {n} memory node ranges"))
    } else if !boot.srat.is_empty() || !boot.merges.is_empty() {
        let source = format!(
            "NUMA from {} SRAT ranges and {} kernel node merges",
            boot.srat.len(),
            boot.merges.len()
        );
        let mut ranges = boot.srat;
        for merge in boot.merges {
            let (start, end, node, _) = merge;
            ranges.retain(|&(s, e, n, _)| !(n == node && start <= s && e <= end));
            ranges.push(merge);
        }
        (ranges, source)
    } else {
        (Vec::new(), "no NUMA lines".to_owned())
    };
    let numa = normalize_numa(numa).map_err(|(line, what)| syntax(line, what))?;

    source.push_str("; ");
    source.push_str(&numa_source);
    if boots > 1 {
        source.push_str(&format!(
            "; the last of {boots} boots in the log, from line {}",
            boot.first_line
        ));
    }
    Ok(MemoryMap {
        usable,
        numa,
        cmrs: None,
        source,
    })
}

/// What `line` says, `Ok(None)` if nothing this reader uses, or what is
/// wrong with a line that has a recognized shape.
fn classify(line: &str) -> Result<Option<Item>, String> {
    if let Some((_, rest)) = line.split_once("BIOS-e820:") {
        return e820(rest);
    }
    if line.contains("BIOS-provided physical RAM map") {
        return Ok(Some(Item::E820Header));
    }
    if line.contains("Early memory node ranges") {
        return Ok(Some(Item::MemblockHeader));
    }
    if let Some((node, rest)) = memblock_entry(line) {
        let node = scan::dec_u32(node, "node")?;
        let (range, _) = scan::mem_range(rest)?;
        return Ok(Some(Item::Memblock { range, node }));
    }
    if let Some((_, rest)) = line.split_once("SRAT: Node ") {
        let (node, rest) = scan::split_digits(rest);
        let Some(rest) = rest.strip_prefix(" PXM ") else {
            return Ok(None);
        };
        let (pxm, rest) = scan::split_digits(rest);
        let rest = rest.trim_start();
        if node.is_empty() || pxm.is_empty() || !rest.starts_with("[mem") {
            return Ok(None);
        }
        let node = scan::dec_u32(node, "node")?;
        let (range, _) = scan::mem_range(rest)?;
        return Ok(Some(Item::Srat { range, node }));
    }
    if let Some((_, rest)) = line.split_once("NUMA: Node ") {
        let (node, rest) = scan::split_digits(rest);
        let Some((_, merged)) = rest.split_once("->") else {
            return Ok(None);
        };
        let merged = merged.trim_start();
        if node.is_empty() || !rest.starts_with(" [mem") || !merged.starts_with("[mem") {
            return Ok(None);
        }
        let node = scan::dec_u32(node, "node")?;
        let (range, _) = scan::mem_range(merged)?;
        return Ok(Some(Item::NumaMerge { range, node }));
    }
    Ok(None)
}

/// A `BIOS-e820:` entry, from the text after the token. `Ok(None)` for an
/// empty entry in the 2.6 shape (which states the end exclusively).
fn e820(rest: &str) -> Result<Option<Item>, String> {
    let rest = rest.trim_start();
    if rest.starts_with("[mem") {
        let (range, kind) = scan::mem_range(rest)?;
        let kind = kind.trim();
        if kind.is_empty() {
            return Err("BIOS-e820 entry without a type after \"]\"".to_owned());
        }
        return Ok(Some(Item::E820 {
            range,
            usable: kind == "usable",
        }));
    }
    // Linux 2.6: "0000000000000000 - 000000000009f800 (usable)".
    let shape = || {
        "expected \"[mem 0xSTART-0xEND] type\" (or \"START - END (type)\") after BIOS-e820:"
            .to_owned()
    };
    let (start, rest) = rest.split_once('-').ok_or_else(shape)?;
    let (end, kind) = rest
        .trim_start()
        .split_once(char::is_whitespace)
        .ok_or_else(shape)?;
    let kind = kind
        .trim()
        .strip_prefix('(')
        .and_then(|k| k.strip_suffix(')'))
        .ok_or_else(shape)?;
    let start = scan::hex_field(start.trim(), "start")?;
    let end = scan::hex_field(end, "end")?;
    if end < start {
        return Err(format!("end {end:#x} is below start {start:#x}"));
    }
    Ok((start < end).then_some(Item::E820 {
        range: (start, end),
        usable: kind == "usable",
    }))
}

/// Finds a memory node range `node N: [mem ...` in `line`; returns the node
/// digits and the text from `[mem`.
fn memblock_entry(line: &str) -> Option<(&str, &str)> {
    line.match_indices("node ").find_map(|(at, _)| {
        let after = line[at + "node ".len()..].trim_start_matches(' ');
        let (digits, rest) = scan::split_digits(after);
        let rest = rest.strip_prefix(':')?.trim_start_matches(' ');
        (!digits.is_empty() && rest.starts_with("[mem")).then_some((digits, rest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_with_any_prefix() {
        let e = Item::E820 {
            range: (0, 0xa0000),
            usable: true,
        };
        for line in [
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            "[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            "<6>[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            "Jan 12 10:00:01 host kernel: BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            "Jan 12 10:00:01 host kernel: [    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable\r",
            "2024-01-12T10:00:01+0100 host kernel: BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            "[Fri Jan 12 10:00:01 2024] BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable",
            " BIOS-e820: 0000000000000000 - 00000000000a0000 (usable)",
        ] {
            assert_eq!(classify(line), Ok(Some(e)), "{line}");
        }
        assert_eq!(
            classify("[    0.016656]   node   1: [mem 0x0000001080000000-0x000000207fffffff]"),
            Ok(Some(Item::Memblock {
                range: (0x10_8000_0000, 0x20_8000_0000),
                node: 1
            }))
        );
        assert_eq!(
            classify(
                "[    0.015920] ACPI: SRAT: Node 2 PXM 3 [mem 0x100000000-0x107fffffff] hotplug"
            ),
            Ok(Some(Item::Srat {
                range: (0x1_0000_0000, 0x10_8000_0000),
                node: 2
            }))
        );
        assert_eq!(
            classify(
                "NUMA: Node 0 [mem 0x00000000-0x7fffffff] + [mem 0x100000000-0x107fffffff] -> [mem 0x00000000-0x107fffffff]"
            ),
            Ok(Some(Item::NumaMerge {
                range: (0, 0x10_8000_0000),
                node: 0
            }))
        );
        for ignored in [
            "Initmem setup node 0 [mem 0x0000000000001000-0x000000107fffffff]",
            "NUMA: Initialized distance table, cnt=2",
            "SRAT: PXM 0 -> APIC 0x00 -> Node 0",
            "SRAT: Node 0 PXM 0 0-a0000",
            "e820: update [mem 0x00000000-0x00000fff] usable ==> reserved",
            "On node 0, zone DMA: 1 pages in unavailable ranges",
        ] {
            assert_eq!(classify(ignored), Ok(None), "{ignored}");
        }
    }

    #[test]
    fn malformed_recognized_lines_are_errors() {
        for bad in [
            "BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff]",
            "BIOS-e820: [mem 0x0000000000100000-0x000000000009ffff] usable",
            "BIOS-e820: [mem 0x00000000000z0000-0x000000000009ffff] usable",
            "BIOS-e820: [mem 0x0000000000000000-0xffffffffffffffff] reserved",
            "BIOS-e820: junk",
            "BIOS-e820: 0000000000000000 - 000000000009f800 usable",
            "  node   0: [mem 0x0000000000001000-]",
            "  node   99999999999: [mem 0x0000000000001000-0x2000]",
            "SRAT: Node 0 PXM 0 [mem 0x00000000-0x7fffffff",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_the_last_boot() {
        let one = "\
[    0.000000] BIOS-provided physical RAM map:
[    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable
[    0.000000] BIOS-e820: [mem 0x0000000000100000-0x000000007fffffff] usable
[    0.010000] Early memory node ranges
[    0.010000]   node   0: [mem 0x0000000000001000-0x000000000009ffff]
[    0.010000]   node   0: [mem 0x0000000000100000-0x000000007fffffff]
";
        let two = one.replace("0x000000007fffffff", "0x00000000bfffffff");
        let log = format!("-- Boot 1 --\n{one}-- Boot 2 --\n{two}");
        let map = parse(&log).unwrap();
        assert_eq!(map.usable, [(0, 0xa0000), (0x100000, 0xc000_0000)]);
        assert_eq!(map.numa, [(0x1000, 0xa0000, 0), (0x100000, 0xc000_0000, 0)]);
        assert!(map.source.contains("the last of 2 boots"), "{}", map.source);

        // Without the header lines, the addresses going back split the boots.
        let bare: String = log
            .lines()
            .filter(|l| l.contains("[mem"))
            .map(|l| format!("{l}\n"))
            .collect();
        let map = parse(&bare).unwrap();
        assert_eq!(map.usable, [(0, 0xa0000), (0x100000, 0xc000_0000)]);
        assert!(map.source.contains("the last of 2 boots"), "{}", map.source);
    }

    #[test]
    fn srat_with_kernel_merges() {
        let log = "\
BIOS-e820: [mem 0x0000000000000000-0x000000007fffffff] usable
BIOS-e820: [mem 0x0000000100000000-0x000000027fffffff] usable
ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x7fffffff]
ACPI: SRAT: Node 0 PXM 0 [mem 0x100000000-0x17fffffff]
ACPI: SRAT: Node 1 PXM 1 [mem 0x180000000-0x27fffffff]
NUMA: Node 0 [mem 0x00000000-0x7fffffff] + [mem 0x100000000-0x17fffffff] -> [mem 0x00000000-0x17fffffff]
";
        let map = parse(log).unwrap();
        assert_eq!(
            map.numa,
            [(0, 0x1_8000_0000, 0), (0x1_8000_0000, 0x2_8000_0000, 1)]
        );
        assert_eq!(
            map.usable,
            [(0, 0x8000_0000), (0x1_0000_0000, 0x2_8000_0000)]
        );
    }

    #[test]
    fn holes_win_over_usable() {
        let log = "\
BIOS-e820: [mem 0x0000000000000000-0x00000000000fffff] usable
BIOS-e820: [mem 0x0000000000080000-0x000000000008ffff] reserved
";
        assert_eq!(
            parse(log).unwrap().usable,
            [(0, 0x80000), (0x90000, 0x100000)]
        );
    }

    #[test]
    fn overlapping_nodes_are_an_error_at_the_line() {
        let log = "\
BIOS-e820: [mem 0x0000000000000000-0x000000007fffffff] usable
SRAT: Node 0 PXM 0 [mem 0x00000000-0x7fffffff]
SRAT: Node 1 PXM 1 [mem 0x40000000-0xbfffffff]
";
        let err = parse(log).unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
    }
}
