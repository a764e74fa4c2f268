//! CMR lists (`tdx-plan --cmrs FILE`).

use super::{InputError, json, normalize_cmrs, scan};

/// Reads a list of convertible memory ranges (CMRs) as half-open byte
/// ranges `[start, end)`, sorted by address as a module reports them.
///
/// Accepted forms:
///
/// - JSON: `[[start, end_exclusive], ...]`, or an object with a `cmrs` list
///   in that shape (a memory map file);
/// - one CMR per line, hexadecimal with or without `0x`:
///   `START-END`, `START END`, `[START, END)` (end exclusive) or
///   `[START, END]` (end inclusive). Blank lines and `#` comments are
///   skipped.
///
/// In the `START-END` and `START END` forms, the end is read by the
/// alignment CMRs have (4 KiB): an end one below a 4 KiB boundary
/// (`...fff`) is inclusive, an end on a boundary is exclusive, and any other
/// end is an error.
///
/// # Errors
///
/// [`InputError::Cmrs`] naming the line of a malformed, empty or
/// overlapping CMR.
pub fn parse_cmrs(text: &str) -> Result<Vec<(u64, u64)>, InputError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    let after_bracket = trimmed.strip_prefix('[').map(str::trim_start);
    if trimmed.starts_with('{') || after_bracket.is_some_and(|r| r.starts_with(['[', ']'])) {
        return json::parse_cmrs(text).map_err(|e| match e {
            InputError::Syntax { line, what, .. } => InputError::Cmrs { line, what },
            other => other,
        });
    }
    let syntax = |line: usize, what: String| InputError::Cmrs { line, what };
    let mut cmrs = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.split('#').next().unwrap_or("").trim();
        if t.is_empty() {
            continue;
        }
        cmrs.push(cmr_line(t).map_err(|what| syntax(n, what))?);
        lines.push(n);
    }
    normalize_cmrs(&cmrs).map_err(|(i, what)| syntax(lines[i], what))
}

/// One CMR line.
fn cmr_line(t: &str) -> Result<(u64, u64), String> {
    if let Some(body) = t.strip_prefix('[') {
        let shape = || format!("expected \"[START, END)\" or \"[START, END]\", found {t:?}");
        let (body, inclusive) = if let Some(b) = body.strip_suffix(')') {
            (b, false)
        } else if let Some(b) = body.strip_suffix(']') {
            (b, true)
        } else {
            return Err(shape());
        };
        let (start, end) = body.split_once(',').ok_or_else(shape)?;
        let start = scan::hex_field(start.trim(), "start")?;
        let end = scan::hex_field(end.trim(), "end")?;
        let (start, end) = if inclusive {
            scan::inclusive(start, end)?
        } else {
            (start, end)
        };
        if start >= end {
            return Err(format!("CMR [{start:#x}, {end:#x}) is empty or reversed"));
        }
        return Ok((start, end));
    }
    let (start, end) = t
        .split_once('-')
        .or_else(|| t.split_once(char::is_whitespace))
        .ok_or_else(|| {
            format!("expected \"START-END\" or \"START END\" in hexadecimal, found {t:?}")
        })?;
    let start = scan::hex_field(start.trim(), "start")?;
    let end = scan::hex_field(end.trim(), "end")?;
    let (start, end) = if end & 0xfff == 0xfff {
        scan::inclusive(start, end)?
    } else if end & 0xfff == 0 {
        (start, end)
    } else {
        return Err(format!(
            "end {end:#x} is neither on a 4 KiB boundary (exclusive end) nor one below it (inclusive end)"
        ));
    };
    if start >= end {
        return Err(format!("CMR [{start:#x}, {end:#x}) is empty or reversed"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_forms() {
        let text = "\
# CMRs of a test machine
0x100000-0x77ffffff
100000000 0x1080000000   # exclusive
[0x1080000000, 0x2080000000)
[0x3000000000, 0x3000000fff]
";
        assert_eq!(
            parse_cmrs(text).unwrap(),
            [
                (0x10_0000, 0x7800_0000),
                (0x1_0000_0000, 0x10_8000_0000),
                (0x10_8000_0000, 0x20_8000_0000),
                (0x30_0000_0000, 0x30_0000_1000),
            ]
        );
    }

    #[test]
    fn line_errors() {
        let err = parse_cmrs("0x0-0x1000\n0x2000-0x2800\n").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        let err = parse_cmrs("0x0-0x1000\n\n0x2000\n").unwrap_err();
        assert_eq!(err.line(), Some(3), "{err}");
        let err = parse_cmrs("0x0-0x2000\n0x1000-0x3000\n").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");
        let err = parse_cmrs("0x2000-0x1000\n").unwrap_err();
        assert_eq!(err.line(), Some(1), "{err}");
    }
}
