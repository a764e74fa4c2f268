//! Small text scanners shared by the line-based formats.

/// A hexadecimal number with an optional `0x`/`0X` prefix: digits only, no
/// sign, no spaces, at most `u64::MAX`.
pub(super) fn hex(text: &str) -> Option<u64> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// Like [`hex`], with a message naming `what` on failure.
pub(super) fn hex_field(text: &str, what: &str) -> Result<u64, String> {
    hex(text).ok_or_else(|| {
        if text.is_empty() {
            format!("missing {what}")
        } else {
            format!("{what} {text:?} is not a hexadecimal number below 2^64")
        }
    })
}

/// A decimal number of at most `u32::MAX`, digits only.
pub(super) fn dec_u32(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a decimal number"));
    }
    text.parse()
        .map_err(|_| format!("{what} {text} is larger than {}", u32::MAX))
}

/// The leading ASCII digits of `text` and the rest.
pub(super) fn split_digits(text: &str) -> (&str, &str) {
    let n = text.bytes().take_while(u8::is_ascii_digit).count();
    text.split_at(n)
}

/// The half-open range for the inclusive range `first..=last`.
pub(super) fn inclusive(first: u64, last: u64) -> Result<(u64, u64), String> {
    if last < first {
        return Err(format!("end {last:#x} is below start {first:#x}"));
    }
    let end = last.checked_add(1).ok_or_else(|| {
        format!("range {first:#x}-{last:#x} reaches the top of the address space")
    })?;
    Ok((first, end))
}

/// Reads `[mem A-B]` (inclusive, hexadecimal) at the start of `text`;
/// returns the half-open range and the text after `]`.
pub(super) fn mem_range(text: &str) -> Result<((u64, u64), &str), String> {
    let body = text
        .strip_prefix("[mem ")
        .ok_or_else(|| "expected \"[mem START-END]\"".to_owned())?;
    let (inner, rest) = body
        .split_once(']')
        .ok_or_else(|| "\"[mem\" without a closing \"]\"".to_owned())?;
    let (first, last) = inner
        .split_once('-')
        .ok_or_else(|| format!("expected START-END in \"[mem {inner}]\""))?;
    let first = hex_field(first.trim(), "start")?;
    let last = hex_field(last.trim(), "end")?;
    Ok((inclusive(first, last)?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_accepts_prefix_and_rejects_junk() {
        assert_eq!(hex("0x1f"), Some(0x1f));
        assert_eq!(hex("1F"), Some(0x1f));
        assert_eq!(hex("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex("10000000000000000"), None);
        assert_eq!(hex("+1"), None);
        assert_eq!(hex("0x"), None);
        assert_eq!(hex(""), None);
        assert_eq!(hex("1 "), None);
    }

    #[test]
    fn mem_range_is_inclusive() {
        let (range, rest) =
            mem_range("[mem 0x0000000000000000-0x000000000009efff] usable").unwrap();
        assert_eq!(range, (0, 0x9f000));
        assert_eq!(rest, " usable");
        assert!(mem_range("[mem 0x10-0x0f]").is_err());
        assert!(mem_range("[mem 0x0-0xffffffffffffffff]").is_err());
        assert!(mem_range("[mem 0x0-0x1").is_err());
        assert!(mem_range("[mem 0x0 0x1]").is_err());
        assert!(mem_range("[mem 0x0-]").is_err());
    }
}
