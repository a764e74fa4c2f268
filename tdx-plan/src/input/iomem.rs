//! The `/proc/iomem` format.
//!
//! Every line is `START-END : name` with inclusive hexadecimal ends, indented
//! two spaces per nesting level. Usable RAM is the top-level (unindented)
//! `System RAM` entries; nested entries (kernel code, ROMs, device BARs, RAM
//! that a driver hot-added inside another entry) and other names are not.

use super::{InputError, InputFormat, MemoryMap, merge_ranges, scan};

/// One line: its indentation, `[start, last]` (inclusive) and name.
pub(super) struct Entry<'a> {
    nested: bool,
    first: u64,
    last: u64,
    name: &'a str,
}

/// Reads one line of `/proc/iomem`, or `None` when it does not have the
/// shape `HEX-HEX : name`.
pub(super) fn entry(line: &str) -> Option<Entry<'_>> {
    let body = line.trim_start_matches([' ', '\t']);
    let nested = body.len() != line.len();
    let (range, name) = body.split_once(" : ")?;
    let (first, last) = range.split_once('-')?;
    // The kernel prints bare hex digits (no `0x`).
    let bare = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !bare(first) || !bare(last) {
        return None;
    }
    Some(Entry {
        nested,
        first: scan::hex(first)?,
        last: scan::hex(last)?,
        name: name.trim_end(),
    })
}

/// Reads `/proc/iomem`.
pub(super) fn parse(text: &str) -> Result<MemoryMap, InputError> {
    let syntax = |line: usize, what: String| InputError::Syntax {
        format: InputFormat::Iomem,
        line,
        what,
    };
    let mut usable = Vec::new();
    let mut entries = 0usize;
    let mut all_zero = true;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some(e) = entry(line) else {
            return Err(syntax(
                n,
                format!(
                    "expected \"START-END : name\" (hexadecimal, as /proc/iomem prints), found {line:?}"
                ),
            ));
        };
        if e.last < e.first {
            return Err(syntax(
                n,
                format!("end {:#x} is below start {:#x}", e.last, e.first),
            ));
        }
        entries += 1;
        all_zero &= e.first == 0 && e.last == 0;
        if !e.nested && e.name == "System RAM" {
            usable.push(scan::inclusive(e.first, e.last).map_err(|what| syntax(n, what))?);
        }
    }
    if entries > 0 && all_zero {
        return Err(InputError::IomemNeedsRoot);
    }
    let count = usable.len();
    let usable = merge_ranges(usable);
    if usable.is_empty() {
        return Err(InputError::NoUsableMemory {
            format: InputFormat::Iomem,
            what: "no top-level \"System RAM\" lines".to_owned(),
        });
    }
    Ok(MemoryMap {
        usable,
        numa: Vec::new(),
        cmrs: None,
        source: format!("/proc/iomem: {count} top-level System RAM entries; no NUMA information"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-bfffffff : System RAM
  01000000-02206447 : Kernel code
c0001000-eebfffff : PCI Bus 0000:00
fec00000-fec003ff : IOAPIC 0
100000000-63fffffff : System RAM
4000000000-7fffffffff : PCI Bus 0000:00
  4000000000-400007ffff : 0000:00:01.0
";

    #[test]
    fn reads_top_level_system_ram() {
        let map = parse(SAMPLE).unwrap();
        assert_eq!(
            map.usable,
            [
                (0x1000, 0x9fc00),
                (0x100000, 0xc000_0000),
                (0x1_0000_0000, 0x6_4000_0000)
            ]
        );
        assert!(map.numa.is_empty());
    }

    #[test]
    fn nested_system_ram_is_not_usable() {
        let text = "100000000-13fffffff : Soft Reserved\n  100000000-13fffffff : System RAM (kmem)\n  100000000-10fffffff : System RAM\n00100000-001fffff : System RAM\n";
        assert_eq!(parse(text).unwrap().usable, [(0x100000, 0x200000)]);
    }

    #[test]
    fn all_zero_means_not_root() {
        let zeroed: String = SAMPLE
            .lines()
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                let name = l.split_once(" : ").unwrap().1;
                format!("{}00000000-00000000 : {name}\n", &l[..indent])
            })
            .collect();
        assert!(matches!(parse(&zeroed), Err(InputError::IomemNeedsRoot)));
    }

    #[test]
    fn malformed_lines_name_their_number() {
        let err =
            parse("00000000-00000fff : Reserved\n\n00001000-0009fbff System RAM\n").unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
        let err = parse("00001000-00000fff : System RAM\n").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
        let err = parse("0-ffffffffffffffff : System RAM\n").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
    }
}
