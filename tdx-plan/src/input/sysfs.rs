//! The sysfs format: the firmware memory map the kernel exports in
//! `/sys/firmware/memmap`, and the NUMA node of each memory block.
//!
//! - `firmware/memmap/N/{start,end,type}`: one directory per entry of the
//!   firmware map as the kernel received it (before `memmap=` and the like),
//!   `start` and `end` in `0x` hex with `end` inclusive; `type` `System RAM`
//!   is usable RAM, everything else (`Reserved`, `ACPI Tables`,
//!   `ACPI Non-volatile Storage`, `Soft Reserved`, ...) a hole.
//! - `devices/system/node/nodeN/memoryM`: memory block `M` is on node `N`
//!   (a symlink to `../../memory/memoryM` in a real sysfs; any file of that
//!   name will do). Block `M` is the bytes
//!   `[M * size, (M + 1) * size)`, `size` being the hex number in
//!   `devices/system/memory/block_size_bytes`. Without `devices/system/node`
//!   (a kernel without NUMA) there is no NUMA information.
//!
//! Paths are relative to the sysfs mount point (`/sys` on a running
//! machine). Every user may read these files, unlike `/proc/iomem`.
//!
//! The same facts can come as text, a listing made with `grep` and `ls` (see
//! [`InputFormat::SysfsMemmap`]); both are checked by one builder, which
//! names the file, or the line, that is wrong.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use super::{InputError, InputFormat, MemoryMap, merge_ranges, normalize_numa, scan, subtract};

/// Reads the memory map of the machine this runs on, from `/sys`.
///
/// # Errors
///
/// As [`read_sysfs_memmap`].
pub fn read_running_machine() -> Result<MemoryMap, InputError> {
    read_sysfs_memmap(Path::new("/sys"))
}

/// Reads the memory map from a sysfs tree mounted at `sysfs` (`/sys` on a
/// running machine; any directory with the same layout in tests):
/// `firmware/memmap/N/{start,end,type}`, and for NUMA
/// `devices/system/node/nodeN/memoryM` with
/// `devices/system/memory/block_size_bytes`.
///
/// # Errors
///
/// [`InputError::Io`] when a directory or file cannot be read (a missing
/// `firmware/memmap` is an [`InputError::Sysfs`] saying why it may be
/// missing), [`InputError::Sysfs`] for a file holding something
/// unexpected, [`InputError::NoUsableMemory`] when no entry is
/// `System RAM`.
pub fn read_sysfs_memmap(sysfs: &Path) -> Result<MemoryMap, InputError> {
    let mut facts = Facts::default();

    let memmap = sysfs.join("firmware/memmap");
    if !memmap.is_dir() {
        return Err(InputError::Sysfs {
            path: memmap,
            what: "no such directory: the kernel exports no firmware memory map \
                   (CONFIG_FIRMWARE_MEMMAP is off) or this is not a sysfs tree"
                .to_owned(),
        });
    }
    for (name, path) in dir_entries(&memmap)? {
        let Ok(index) = name.parse::<u32>() else {
            continue;
        };
        let entry = facts
            .entries
            .entry(index)
            .or_insert_with(|| MemmapEntry::new(Origin::Path(path.clone())));
        for (field, slot) in [
            ("start", &mut entry.start),
            ("end", &mut entry.end),
            ("type", &mut entry.kind),
        ] {
            let file = path.join(field);
            let value = read_file(&file)?;
            *slot = Some(Field {
                value: value.trim_end_matches(['\n', '\r']).to_owned(),
                origin: Origin::Path(file),
            });
        }
    }

    let nodes = sysfs.join("devices/system/node");
    facts.node_dir = nodes.is_dir();
    if facts.node_dir {
        for (name, path) in dir_entries(&nodes)? {
            let Some(node) = name
                .strip_prefix("node")
                .and_then(|n| digits_only(n)?.parse::<u32>().ok())
            else {
                continue;
            };
            for (name, block_path) in dir_entries(&path)? {
                // `memory_failure`, `memory_side_cache` are not blocks.
                let Some(block) = name.strip_prefix("memory").and_then(digits_only) else {
                    continue;
                };
                let block = block.parse::<u64>().map_err(|_| InputError::Sysfs {
                    path: block_path.clone(),
                    what: "memory block number above 2^64".to_owned(),
                })?;
                facts.blocks.push((node, block, Origin::Path(block_path)));
            }
        }
        if !facts.blocks.is_empty() {
            let file = sysfs.join("devices/system/memory/block_size_bytes");
            let value = read_file(&file)?;
            facts.block_size = Some(Field {
                value: value.trim_end_matches(['\n', '\r']).to_owned(),
                origin: Origin::Path(file),
            });
        }
    }

    facts.build(&format!("sysfs {}", sysfs.display()))
}

/// Reads the text listing of the sysfs files (see
/// [`InputFormat::SysfsMemmap`]).
pub(super) fn parse_listing(text: &str) -> Result<MemoryMap, InputError> {
    let syntax = |line: usize, what: String| InputError::Syntax {
        format: InputFormat::SysfsMemmap,
        line,
        what,
    };
    let mut facts = Facts::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some((_, rest)) = t.split_once("firmware/memmap/") {
            let (digits, rest) = scan::split_digits(rest);
            let index = scan::dec_u32(digits, "memmap entry").map_err(|w| syntax(n, w))?;
            let Some((field, value)) = rest.strip_prefix('/').and_then(|r| r.split_once(':'))
            else {
                return Err(syntax(
                    n,
                    "expected \".../firmware/memmap/N/FIELD:VALUE\" (grep output)".to_owned(),
                ));
            };
            let entry = facts
                .entries
                .entry(index)
                .or_insert_with(|| MemmapEntry::new(Origin::Line(n)));
            let slot = match field {
                "start" => &mut entry.start,
                "end" => &mut entry.end,
                "type" => &mut entry.kind,
                _ => {
                    return Err(syntax(
                        n,
                        format!("unknown memmap field {field:?} (expected start, end or type)"),
                    ));
                }
            };
            if slot.is_some() {
                return Err(syntax(
                    n,
                    format!("memmap entry {index} has a second {field:?}"),
                ));
            }
            *slot = Some(Field {
                value: value.to_owned(),
                origin: Origin::Line(n),
            });
        } else if let Some((_, rest)) = t.split_once("devices/system/memory/block_size_bytes") {
            let Some(value) = rest.strip_prefix(':') else {
                return Err(syntax(
                    n,
                    "expected \".../block_size_bytes:HEX\" (grep output)".to_owned(),
                ));
            };
            if facts.block_size.is_some() {
                return Err(syntax(n, "a second block_size_bytes".to_owned()));
            }
            facts.block_size = Some(Field {
                value: value.to_owned(),
                origin: Origin::Line(n),
            });
        } else if let Some((_, rest)) = t.split_once("devices/system/node/node") {
            facts.node_dir = true;
            let (digits, rest) = scan::split_digits(rest);
            let Some(rest) = rest.strip_prefix("/memory") else {
                continue;
            };
            let (block, after) = scan::split_digits(rest);
            // `ls -l` appends " -> ../../memory/memoryM"; `memory_failure`
            // and the like are not blocks.
            if block.is_empty() || !(after.is_empty() || after.starts_with([' ', ':', '/'])) {
                continue;
            }
            let node = scan::dec_u32(digits, "node").map_err(|w| syntax(n, w))?;
            let block = block
                .parse::<u64>()
                .map_err(|_| syntax(n, format!("memory block number {block} is above 2^64")))?;
            facts.blocks.push((node, block, Origin::Line(n)));
        } else if !t.contains("devices/system/") {
            return Err(syntax(
                n,
                format!(
                    "expected \".../firmware/memmap/N/FIELD:VALUE\", \".../block_size_bytes:HEX\" \
                     or \".../node/nodeN/memoryM\", found {t:?}"
                ),
            ));
        }
    }
    facts.build("sysfs listing")
}

/// Whether `line` marks a sysfs listing (for format detection).
pub(super) fn is_listing_line(line: &str) -> bool {
    line.split_once("firmware/memmap/")
        .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Where a fact came from: a line of a listing or a file.
#[derive(Debug, Clone)]
enum Origin {
    Line(usize),
    Path(PathBuf),
}

impl Origin {
    fn error(self, what: String) -> InputError {
        match self {
            Self::Line(line) => InputError::Syntax {
                format: InputFormat::SysfsMemmap,
                line,
                what,
            },
            Self::Path(path) => InputError::Sysfs { path, what },
        }
    }
}

/// A value as read, and where.
#[derive(Debug)]
struct Field {
    value: String,
    origin: Origin,
}

/// One `firmware/memmap/N` entry.
#[derive(Debug)]
struct MemmapEntry {
    origin: Origin,
    start: Option<Field>,
    end: Option<Field>,
    kind: Option<Field>,
}

impl MemmapEntry {
    fn new(origin: Origin) -> Self {
        Self {
            origin,
            start: None,
            end: None,
            kind: None,
        }
    }
}

/// The sysfs facts, before they are checked.
#[derive(Debug, Default)]
struct Facts {
    entries: BTreeMap<u32, MemmapEntry>,
    node_dir: bool,
    block_size: Option<Field>,
    blocks: Vec<(u32, u64, Origin)>,
}

impl Facts {
    fn build(self, root: &str) -> Result<MemoryMap, InputError> {
        let entries = self.entries.len();
        let mut ram = Vec::new();
        let mut holes = Vec::new();
        for (index, entry) in self.entries {
            let field = |f: Option<Field>, name: &str| {
                f.ok_or_else(|| {
                    entry
                        .origin
                        .clone()
                        .error(format!("memmap entry {index} has no {name}"))
                })
            };
            let start = field(entry.start, "start")?;
            let end = field(entry.end, "end")?;
            let kind = field(entry.kind, "type")?;
            let first =
                scan::hex_field(start.value.trim(), "start").map_err(|w| start.origin.error(w))?;
            let last = scan::hex_field(end.value.trim(), "end")
                .map_err(|w| end.origin.clone().error(w))?;
            let range = scan::inclusive(first, last).map_err(|w| end.origin.error(w))?;
            if kind.value.trim() == "System RAM" {
                ram.push(range);
            } else {
                holes.push(range);
            }
        }
        let usable = subtract(&merge_ranges(ram), &merge_ranges(holes));
        if usable.is_empty() {
            return Err(InputError::NoUsableMemory {
                format: InputFormat::SysfsMemmap,
                what: if entries == 0 {
                    "no firmware/memmap entries".to_owned()
                } else {
                    "no firmware/memmap entry is \"System RAM\"".to_owned()
                },
            });
        }

        let numa_source;
        let numa = if self.blocks.is_empty() {
            numa_source = if self.node_dir {
                "no memory blocks listed under devices/system/node".to_owned()
            } else {
                "no NUMA (no devices/system/node)".to_owned()
            };
            Vec::new()
        } else {
            let Some(size) = self.block_size else {
                let origin = self.blocks[0].2.clone();
                return Err(
                    origin.error("memory blocks are listed but block_size_bytes is not".to_owned())
                );
            };
            let bytes = scan::hex_field(size.value.trim(), "block size")
                .and_then(|b| {
                    if b == 0 {
                        Err("block size 0".to_owned())
                    } else {
                        Ok(b)
                    }
                })
                .map_err(|w| size.origin.error(w))?;
            let nodes: std::collections::BTreeSet<u32> = self.blocks.iter().map(|b| b.0).collect();
            numa_source = format!(
                "NUMA from {} memory blocks of {:#x} bytes on {} node(s)",
                self.blocks.len(),
                bytes,
                nodes.len()
            );
            let mut blocks = self.blocks;
            blocks.sort_by_key(|&(node, block, _)| (block, node));
            // Runs of consecutive blocks on one node become one range.
            let mut runs: Vec<(u64, u64, u32, Origin)> = Vec::new();
            for (node, block, origin) in blocks {
                match runs.last_mut() {
                    Some(run) if run.2 == node && run.1.checked_add(1) == Some(block) => {
                        run.1 = block
                    }
                    _ => runs.push((block, block, node, origin)),
                }
            }
            let mut ranges = Vec::with_capacity(runs.len());
            for (first, last, node, origin) in runs {
                let range = first
                    .checked_mul(bytes)
                    .and_then(|start| Some((start, last.checked_add(1)?.checked_mul(bytes)?)));
                let Some((start, end)) = range else {
                    return Err(origin.error(format!(
                        "memory blocks {first}..={last} of {bytes:#x} bytes reach past 2^64"
                    )));
                };
                ranges.push((start, end, node, origin));
            }
            normalize_numa(ranges).map_err(|(origin, what)| origin.error(what))?
        };

        Ok(MemoryMap {
            usable,
            numa,
            cmrs: None,
            source: format!("{root}: {entries} firmware memmap entries; {numa_source}"),
        })
    }
}

/// `text` if it is a non-empty run of ASCII digits.
fn digits_only(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// The entries of directory `dir` with UTF-8 names, as `(name, path)`.
fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, InputError> {
    let io_error = |source: io::Error| InputError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

fn read_file(path: &Path) -> Result<String, InputError> {
    fs::read_to_string(path).map_err(|source| InputError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
/sys/firmware/memmap/0/end:0x9fbff
/sys/firmware/memmap/0/start:0x0
/sys/firmware/memmap/0/type:System RAM
/sys/firmware/memmap/1/end:0xfffff
/sys/firmware/memmap/1/start:0x9fc00
/sys/firmware/memmap/1/type:Reserved
/sys/firmware/memmap/2/end:0xbfffffff
/sys/firmware/memmap/2/start:0x100000
/sys/firmware/memmap/2/type:System RAM
/sys/devices/system/memory/block_size_bytes:8000000
/sys/devices/system/node/node0/memory0
/sys/devices/system/node/node0/memory1
/sys/devices/system/node/node0/memory_failure
lrwxrwxrwx 1 root root 0 Jan 1 00:00 /sys/devices/system/node/node1/memory2 -> ../../memory/memory2
";

    #[test]
    fn reads_a_listing() {
        let map = parse_listing(LISTING).unwrap();
        assert_eq!(map.usable, [(0, 0x9fc00), (0x100000, 0xc000_0000)]);
        assert_eq!(
            map.numa,
            [(0, 0x1000_0000, 0), (0x1000_0000, 0x1800_0000, 1)]
        );
    }

    #[test]
    fn listing_errors_name_the_line() {
        let missing_end = LISTING.replace("/sys/firmware/memmap/2/end:0xbfffffff\n", "");
        let err = parse_listing(&missing_end).unwrap_err();
        assert_eq!(err.line(), Some(7), "{err}");

        let bad_end = LISTING.replace("2/end:0xbfffffff", "2/end:0xbfffzfff");
        let err = parse_listing(&bad_end).unwrap_err();
        assert_eq!(err.line(), Some(7), "{err}");

        let no_size = LISTING.replace("/sys/devices/system/memory/block_size_bytes:8000000\n", "");
        let err = parse_listing(&no_size).unwrap_err();
        assert_eq!(err.line(), Some(10), "{err}");

        let err = parse_listing("/sys/firmware/memmap/0/start:0x0\nhello\n").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
    }
}
