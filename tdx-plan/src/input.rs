//! Reading a machine's physical memory map, in every format `tdx-plan`
//! accepts, into one [`MemoryMap`].
//!
//! This module owns the parsing and the normalization: every range it hands
//! out is a half-open byte range `[start, end)`, the lists are sorted, usable
//! RAM is merged where ranges touch or overlap, and NUMA ranges are kept as
//! the source gave them (only sorted, with a node's overlapping duplicates
//! merged the way the kernel merges them). It does not judge whether the map
//! suits TDX — alignment, CMR coverage and the like are the planner's
//! business.
//!
//! The formats ([`InputFormat`]):
//!
//! - **JSON** in the shape of the shared memory maps: `usable` as
//!   `[[start, end_exclusive], ...]`, optional `cmrs`, optional
//!   `numa_nodes` + `numa_node_ids` (ids default to `0..n`), optional
//!   `source`; other keys are ignored. Numbers may also be strings
//!   (`"0x1000"` or decimal).
//! - **`/proc/iomem`**: the top-level `System RAM` lines (ends inclusive).
//!   Read by a user other than root, the file shows every address as zero;
//!   that is reported as [`InputError::IomemNeedsRoot`].
//! - **Boot log** (`dmesg`, `journalctl -k`, syslog): the `BIOS-e820:`
//!   lines, wherever they sit in the line, in the `[mem 0xA-0xB] type` form
//!   (ends inclusive) and the pre-3.x `A - B (type)` form (ends exclusive).
//!   NUMA comes from the `Early memory node ranges` lines
//!   (`node   N: [mem A-B]`) when the log has them, else from the ACPI
//!   `SRAT: Node N PXM P [mem A-B]` lines with the kernel's
//!   `NUMA: Node N ... -> [mem A-B]` merges applied. A log without e820
//!   lines takes its usable RAM from the memory node ranges. A log that holds
//!   several boots (`journalctl -k` without `-b`) is read for the last one.
//! - **sysfs**: `/sys/firmware/memmap/N/{start,end,type}` (ends inclusive;
//!   `System RAM` is usable) and the memory blocks listed in
//!   `/sys/devices/system/node/nodeN/memoryM`, read from a directory tree
//!   ([`read_sysfs_memmap`]) or from a text listing of it (see
//!   [`InputFormat::SysfsMemmap`]).
//!
//! Parsing never panics: whatever the text, [`parse`] returns a map or an
//! [`InputError`] naming the line (1-based) and what is wrong with it.

use std::{fmt, io, path::PathBuf};

use crate::report::Bytes;

mod bootlog;
mod cmrs;
mod iomem;
mod json;
mod scan;
mod sysfs;

pub use cmrs::parse_cmrs;
pub use sysfs::{read_running_machine, read_sysfs_memmap};

/// A machine's physical memory, as `tdx-plan` plans for it.
///
/// Every range is a half-open byte range `[start, end)`.
///
/// # Invariants
///
/// As built by this module: `usable` is sorted, its ranges are non-empty and
/// neither overlap nor touch (touching ranges are merged); `numa` is sorted
/// by start and its ranges are non-empty and do not overlap; `cmrs`, when
/// present, is sorted and its ranges are non-empty and do not overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryMap {
    /// Usable RAM.
    pub usable: Vec<(u64, u64)>,
    /// NUMA affinity: `(start, end, node)`. Depending on the source these
    /// are node spans that may include holes (SRAT, JSON) or exactly the RAM
    /// of each node (memory node ranges, sysfs memory blocks); use
    /// [`MemoryMap::node_of`] rather than assuming either. Empty when the
    /// source says nothing about NUMA. Addresses outside every range have no
    /// known node.
    pub numa: Vec<(u64, u64, u32)>,
    /// Convertible memory ranges, when the source gives them (only the JSON
    /// format can; see also [`parse_cmrs`]).
    pub cmrs: Option<Vec<(u64, u64)>>,
    /// Where the map came from and what was taken from it, for humans
    /// (e.g. `boot log: 11 BIOS-e820 entries; NUMA from 5 memory node
    /// ranges`).
    pub source: String,
}

impl MemoryMap {
    /// The NUMA node of physical address `addr`, if the map knows it.
    pub fn node_of(&self, addr: u64) -> Option<u32> {
        // `numa` is sorted and non-overlapping: the candidate is the last
        // range starting at or below `addr`.
        let i = self.numa.partition_point(|&(start, _, _)| start <= addr);
        let &(_, end, node) = self.numa.get(i.checked_sub(1)?)?;
        (addr < end).then_some(node)
    }

    /// Total bytes of usable RAM.
    pub fn usable_bytes(&self) -> u64 {
        self.usable.iter().fold(0u64, |sum, &(start, end)| {
            sum.saturating_add(end.saturating_sub(start))
        })
    }

    /// The map in the JSON input shape (`usable`, `numa_nodes`,
    /// `numa_node_ids`, `cmrs`, `source`), pretty-printed. Parsing it back
    /// with [`InputFormat::Json`] gives the same ranges (and a `source`
    /// prefixed with `JSON: `).
    pub fn to_json(&self) -> String {
        let pairs =
            |v: &[(u64, u64)]| -> Vec<[u64; 2]> { v.iter().map(|&(s, e)| [s, e]).collect() };
        let numa_nodes: Vec<[u64; 2]> = self.numa.iter().map(|&(s, e, _)| [s, e]).collect();
        let numa_node_ids: Vec<u32> = self.numa.iter().map(|&(_, _, n)| n).collect();
        let value = serde_json::json!({
            "source": self.source,
            "usable": pairs(&self.usable),
            "numa_nodes": numa_nodes,
            "numa_node_ids": numa_node_ids,
            "cmrs": self.cmrs.as_deref().map(pairs),
        });
        // A `Value` built from integers and strings always serializes.
        serde_json::to_string_pretty(&value).unwrap_or_default()
    }
}

impl fmt::Display for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "source: {}", self.source)?;
        writeln!(
            f,
            "usable: {} ranges, {}",
            self.usable.len(),
            Bytes(self.usable_bytes())
        )?;
        for &(start, end) in &self.usable {
            writeln!(
                f,
                "  [{start:#014x}, {end:#014x})  {}",
                Bytes(end.saturating_sub(start))
            )?;
        }
        if self.numa.is_empty() {
            writeln!(f, "numa: none")?;
        } else {
            writeln!(f, "numa: {} ranges", self.numa.len())?;
            for &(start, end, node) in &self.numa {
                writeln!(f, "  node {node:<3} [{start:#014x}, {end:#014x})")?;
            }
        }
        match &self.cmrs {
            None => writeln!(f, "cmrs: none"),
            Some(cmrs) => {
                writeln!(f, "cmrs: {}", cmrs.len())?;
                for &(start, end) in cmrs {
                    writeln!(f, "  [{start:#014x}, {end:#014x})")?;
                }
                Ok(())
            }
        }
    }
}

/// The text formats [`parse`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum InputFormat {
    /// The JSON shape of the shared memory maps (`usable`, optional `cmrs`,
    /// `numa_nodes`, `numa_node_ids`).
    #[value(
        name = "json",
        help = "JSON: usable, optional cmrs, numa_nodes, numa_node_ids"
    )]
    Json,
    /// `/proc/iomem`, read as root.
    #[value(name = "iomem", help = "/proc/iomem, read as root")]
    Iomem,
    /// A boot log holding the kernel's `BIOS-e820:` lines: `dmesg`,
    /// `journalctl -k`, `/var/log/syslog`, `/var/log/messages`.
    #[value(
        name = "e820-log",
        alias = "dmesg",
        help = "a boot log with BIOS-e820 lines: dmesg, journalctl -k, syslog"
    )]
    E820Log,
    /// `/sys/firmware/memmap` and the NUMA memory blocks. As a directory
    /// tree see [`read_sysfs_memmap`]; as text, [`parse`] reads a listing
    /// made on the machine with
    ///
    /// ```sh
    /// grep . /sys/firmware/memmap/*/* /sys/devices/system/memory/block_size_bytes
    /// ls -d /sys/devices/system/node/node*/memory[0-9]*
    /// ```
    ///
    /// that is, lines `.../firmware/memmap/N/FIELD:VALUE`,
    /// `.../devices/system/memory/block_size_bytes:HEX` and
    /// `.../devices/system/node/nodeN/memoryM`.
    #[value(
        name = "sysfs-memmap",
        alias = "sysfs",
        help = "grep . /sys/firmware/memmap/*/* (see the documentation)"
    )]
    SysfsMemmap,
}

impl InputFormat {
    /// Every format, in the order [`detect`] tries them.
    pub const ALL: [Self; 4] = [Self::Json, Self::E820Log, Self::SysfsMemmap, Self::Iomem];

    /// The name on the command line (`--input-format NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Iomem => "iomem",
            Self::E820Log => "e820-log",
            Self::SysfsMemmap => "sysfs-memmap",
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "JSON memory map",
            Self::Iomem => "/proc/iomem",
            Self::E820Log => "boot log",
            Self::SysfsMemmap => "sysfs memmap listing",
        })
    }
}

/// Why a memory map cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// [`detect`] could not tell the format.
    #[error(
        "cannot tell the input format; use --input-format \
         (json, iomem, e820-log or sysfs-memmap)"
    )]
    UnknownFormat,
    /// A line of the input is malformed.
    #[error("{format}, line {line}: {what}")]
    Syntax {
        /// The format the input was read as.
        format: InputFormat,
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// A line of a CMR list ([`parse_cmrs`]) is malformed, or a CMR is empty
    /// or overlaps another.
    #[error("CMR list, line {line}: {what}")]
    Cmrs {
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// `/proc/iomem` was read by a user other than root.
    #[error(
        "/proc/iomem shows every address as 0: the kernel hides the addresses \
         from users other than root. Read it as root (sudo cat /proc/iomem), \
         or run tdx-plan without an input file to read /sys/firmware/memmap, \
         which every user may read"
    )]
    IomemNeedsRoot,
    /// The input was read but holds no usable RAM.
    #[error("{format}: {what}")]
    NoUsableMemory {
        /// The format the input was read as.
        format: InputFormat,
        /// What was found instead.
        what: String,
    },
    /// A sysfs file or directory holds something unexpected.
    #[error("{}: {what}", path.display())]
    Sysfs {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl InputError {
    /// The line (counting from 1) the error is about, if it is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Syntax { line, .. } | Self::Cmrs { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// Reads a memory map from `text` in `format`, or in the format [`detect`]
/// finds when `format` is `None`.
///
/// # Errors
///
/// [`InputError::UnknownFormat`] when `format` is `None` and detection fails;
/// otherwise whatever the format's reader finds wrong (see [`InputError`]).
pub fn parse(text: &str, format: Option<InputFormat>) -> Result<MemoryMap, InputError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let format = match format {
        Some(format) => format,
        None => detect(text).ok_or(InputError::UnknownFormat)?,
    };
    match format {
        InputFormat::Json => json::parse(text),
        InputFormat::Iomem => iomem::parse(text),
        InputFormat::E820Log => bootlog::parse(text),
        InputFormat::SysfsMemmap => sysfs::parse_listing(text),
    }
}

/// Tells the format of `text`, or `None` when it looks like none of them.
///
/// In order: JSON if the first non-blank character is `{`; a boot log if a
/// line holds `BIOS-e820:`, `Early memory node ranges` or a memory node
/// range (`node N: [mem ...]`); a sysfs listing if a line holds
/// `firmware/memmap/N/`; `/proc/iomem` if the first non-blank line has the
/// shape `HEX-HEX : name`.
pub fn detect(text: &str) -> Option<InputFormat> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('{') {
        return Some(InputFormat::Json);
    }
    if text.lines().any(bootlog::is_boot_log_line) {
        return Some(InputFormat::E820Log);
    }
    if text.lines().any(sysfs::is_listing_line) {
        return Some(InputFormat::SysfsMemmap);
    }
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    iomem::entry(first).is_some().then_some(InputFormat::Iomem)
}

/// Sorts `ranges`, drops empty ones and merges those that overlap or touch.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|&(start, end)| start < end);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// `ranges` minus `holes`; both sorted and merged ([`merge_ranges`]).
fn subtract(ranges: &[(u64, u64)], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut holes = holes.iter().peekable();
    for &(mut start, end) in ranges {
        while let Some(&&(hole_start, hole_end)) = holes.peek() {
            if hole_end <= start {
                holes.next();
                continue;
            }
            if hole_start >= end {
                break;
            }
            if hole_start > start {
                out.push((start, hole_start));
            }
            start = start.max(hole_end);
            if hole_end >= end {
                break;
            }
            holes.next();
        }
        if start < end {
            out.push((start, end));
        }
    }
    out
}

/// `(start, end, node)`.
type NodeRange = (u64, u64, u32);

/// Sorts NUMA ranges by start, merges a node's overlapping ranges (as the
/// kernel does, with a warning, in `numa_cleanup_meminfo`) and rejects
/// ranges of different nodes that overlap. Touching ranges stay separate.
///
/// Each range carries where it came from (`T`); the error names the later
/// of two overlapping ranges and says what it overlaps.
fn normalize_numa<T>(mut ranges: Vec<(u64, u64, u32, T)>) -> Result<Vec<NodeRange>, (T, String)> {
    ranges.sort_by_key(|&(start, end, node, _)| (start, end, node));
    let mut out: Vec<NodeRange> = Vec::with_capacity(ranges.len());
    for (start, end, node, origin) in ranges {
        match out.last_mut() {
            Some(last) if start < last.1 => {
                if last.2 != node {
                    return Err((
                        origin,
                        format!(
                            "node {node} range [{start:#x}, {end:#x}) overlaps node {} range [{:#x}, {:#x})",
                            last.2, last.0, last.1
                        ),
                    ));
                }
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end, node)),
        }
    }
    Ok(out)
}

/// Rejects overlapping CMRs and returns the rest sorted by address: the
/// only order a module reports them in (TDH.SYS.INIT refuses any other list
/// with TDX_CMR_LIST_INVALID, `check_cmrs` in Intel's `tdh_sys_init.c`), so
/// a file listing them otherwise was reordered by hand. The error names the
/// index (in input order) of a CMR that overlaps another, and says which.
fn normalize_cmrs(cmrs: &[(u64, u64)]) -> Result<Vec<(u64, u64)>, (usize, String)> {
    let mut sorted: Vec<(u64, u64, usize)> = cmrs
        .iter()
        .enumerate()
        .map(|(i, &(s, e))| (s, e, i))
        .collect();
    sorted.sort_unstable();
    for pair in sorted.windows(2) {
        let ((s0, e0, _), (s1, e1, i1)) = (pair[0], pair[1]);
        if s1 < e0 {
            return Err((
                i1,
                format!("CMR [{s1:#x}, {e1:#x}) overlaps CMR [{s0:#x}, {e0:#x})"),
            ));
        }
    }
    Ok(sorted.into_iter().map(|(s, e, _)| (s, e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_and_joins_touching_and_overlapping() {
        let merged = merge_ranges(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 40), (35, 36)]);
        assert_eq!(merged, [(0, 8), (10, 30), (35, 36)]);
    }

    #[test]
    fn subtract_cuts_holes() {
        let ranges = [(0, 100), (200, 300)];
        assert_eq!(subtract(&ranges, &[]), ranges);
        assert_eq!(
            subtract(&ranges, &[(50, 60)]),
            [(0, 50), (60, 100), (200, 300)]
        );
        assert_eq!(subtract(&ranges, &[(90, 210)]), [(0, 90), (210, 300)]);
        assert_eq!(subtract(&ranges, &[(0, 100), (250, 400)]), [(200, 250)]);
        assert_eq!(
            subtract(&ranges, &[(10, 20), (30, 40), (220, 230)]),
            [(0, 10), (20, 30), (40, 100), (200, 220), (230, 300)]
        );
    }

    #[test]
    fn numa_merges_a_node_and_rejects_two_nodes() {
        let ok = normalize_numa(vec![
            (100, 200, 1, ()),
            (0, 100, 0, ()),
            (150, 250, 1, ()),
            (0, 100, 0, ()),
        ]);
        assert_eq!(ok.unwrap(), [(0, 100, 0), (100, 250, 1)]);
        let err = normalize_numa(vec![(0, 100, 0, 'a'), (50, 150, 1, 'b')]).unwrap_err();
        assert_eq!(err.0, 'b');
    }

    #[test]
    fn node_of_looks_up_ranges() {
        let map = MemoryMap {
            usable: vec![(0, 0x1000)],
            numa: vec![(0, 0x100, 3), (0x200, 0x300, 1)],
            cmrs: None,
            source: String::new(),
        };
        assert_eq!(map.node_of(0), Some(3));
        assert_eq!(map.node_of(0xff), Some(3));
        assert_eq!(map.node_of(0x100), None);
        assert_eq!(map.node_of(0x2ff), Some(1));
        assert_eq!(map.node_of(0x300), None);
        assert_eq!(map.node_of(u64::MAX), None);
    }
}
