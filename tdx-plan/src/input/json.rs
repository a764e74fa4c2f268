//! The JSON format: the shape of the shared memory maps.
//!
//! The document is checked while it is read, so that serde_json can place
//! every error, including the semantic ones (an empty range, a NUMA id list
//! of the wrong length), at a line and column.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{InputError, InputFormat, MemoryMap, merge_ranges, normalize_cmrs, normalize_numa};

/// Reads a JSON memory map.
pub(super) fn parse(text: &str) -> Result<MemoryMap, InputError> {
    let doc = read_document(text, true)?;
    if doc.usable.is_empty() {
        return Err(InputError::NoUsableMemory {
            format: InputFormat::Json,
            what: "\"usable\" lists no ranges".to_owned(),
        });
    }
    let source = match doc.source {
        Some(source) => format!("JSON: {source}"),
        None => "JSON".to_owned(),
    };
    Ok(MemoryMap {
        usable: doc.usable,
        numa: doc.numa,
        cmrs: doc.cmrs,
        source,
    })
}

/// Reads a JSON list of CMRs: `[[start, end], ...]`, or an object with a
/// `cmrs` key (a memory map file).
pub(super) fn parse_cmrs(text: &str) -> Result<Vec<(u64, u64)>, InputError> {
    if text.trim_start().starts_with('{') {
        let doc = read_document(text, false)?;
        return doc.cmrs.ok_or_else(|| InputError::Syntax {
            format: InputFormat::Json,
            line: 1,
            what: "the object has no \"cmrs\" list".to_owned(),
        });
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let cmrs = RangeList {
        key: "cmrs",
        kind: ListKind::Cmrs,
        ids: None,
    }
    .deserialize(&mut de)
    .and_then(|cmrs| de.end().map(|()| cmrs))
    .map_err(|e| syntax(&e))?;
    let cmrs = cmrs.ok_or_else(|| InputError::Syntax {
        format: InputFormat::Json,
        line: 1,
        what: "expected a list of CMRs, found null".to_owned(),
    })?;
    normalize_cmrs(&cmrs).map_err(|(i, what)| InputError::Syntax {
        format: InputFormat::Json,
        line: 1,
        what: format!("cmrs[{i}]: {what}"),
    })
}

/// Reads and checks a memory map object; `usable` may be absent only when
/// `require_usable` is false.
fn read_document(text: &str, require_usable: bool) -> Result<Document, InputError> {
    let mut de = serde_json::Deserializer::from_str(text);
    DocumentVisitor { require_usable }
        .deserialize(&mut de)
        .and_then(|doc| de.end().map(|()| doc))
        .map_err(|e| syntax(&e))
}

/// The [`InputError`] for a serde_json error, at its line.
fn syntax(e: &serde_json::Error) -> InputError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    InputError::Syntax {
        format: InputFormat::Json,
        line: e.line().max(1),
        what: format!("{message} (column {})", e.column()),
    }
}

/// A checked memory map document.
struct Document {
    usable: Vec<(u64, u64)>,
    cmrs: Option<Vec<(u64, u64)>>,
    numa: Vec<(u64, u64, u32)>,
    source: Option<String>,
}

/// Reads a [`Document`].
struct DocumentVisitor {
    require_usable: bool,
}

impl<'de> DeserializeSeed<'de> for DocumentVisitor {
    type Value = Document;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Document, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a memory map object with a \"usable\" list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut usable: Option<Vec<(u64, u64)>> = None;
        let mut cmrs: Option<Option<Vec<(u64, u64)>>> = None;
        let mut nodes: Option<Option<Vec<(u64, u64)>>> = None;
        let mut ids: Option<Option<Vec<u32>>> = None;
        let mut source: Option<Option<String>> = None;
        while let Some(key) = map.next_key::<String>()? {
            let seen = match key.as_str() {
                "usable" => usable.is_some(),
                "cmrs" => cmrs.is_some(),
                "numa_nodes" => nodes.is_some(),
                "numa_node_ids" => ids.is_some(),
                "source" => source.is_some(),
                _ => false,
            };
            if seen {
                return Err(de::Error::custom(format!("duplicate key \"{key}\"")));
            }
            match key.as_str() {
                "usable" => {
                    let list = map.next_value_seed(RangeList {
                        key: "usable",
                        kind: ListKind::Usable,
                        ids: None,
                    })?;
                    let list = list.ok_or_else(|| {
                        de::Error::custom(
                            "\"usable\" is null; expected a list of [start, end] ranges",
                        )
                    })?;
                    usable = Some(merge_ranges(list));
                }
                "cmrs" => {
                    cmrs = Some(map.next_value_seed(RangeList {
                        key: "cmrs",
                        kind: ListKind::Cmrs,
                        ids: None,
                    })?);
                }
                "numa_nodes" => {
                    let ids = ids
                        .as_ref()
                        .and_then(|ids: &Option<Vec<u32>>| ids.as_ref().map(Vec::len));
                    nodes = Some(map.next_value_seed(RangeList {
                        key: "numa_nodes",
                        kind: ListKind::Numa,
                        ids,
                    })?);
                }
                "numa_node_ids" => {
                    let nodes = nodes
                        .as_ref()
                        .and_then(|nodes: &Option<Vec<(u64, u64)>>| nodes.as_ref().map(Vec::len));
                    ids = Some(map.next_value_seed(IdList { nodes })?);
                }
                "source" => {
                    let value = map.next_value::<serde_json::Value>()?;
                    source = Some(value.as_str().map(str::to_owned));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let usable = match usable {
            Some(usable) => usable,
            None if self.require_usable => return Err(de::Error::missing_field("usable")),
            None => Vec::new(),
        };
        let numa = match (nodes.flatten(), ids.flatten()) {
            (None, None) => Vec::new(),
            (None, Some(_)) => {
                return Err(de::Error::custom(
                    "\"numa_node_ids\" without \"numa_nodes\"",
                ));
            }
            (Some(nodes), ids) => {
                let ids = ids.unwrap_or_else(|| (0..).take(nodes.len()).collect());
                let ranges = nodes
                    .iter()
                    .zip(ids)
                    .enumerate()
                    .map(|(i, (&(start, end), id))| (start, end, id, i))
                    .collect();
                normalize_numa(ranges)
                    .map_err(|(i, what)| de::Error::custom(format!("numa_nodes[{i}]: {what}")))?
            }
        };
        let cmrs = match cmrs.flatten() {
            None => None,
            Some(list) => Some(
                normalize_cmrs(&list)
                    .map_err(|(i, what)| de::Error::custom(format!("cmrs[{i}]: {what}")))?,
            ),
        };
        Ok(Document {
            usable,
            cmrs,
            numa,
            source: source.flatten(),
        })
    }
}

/// Which list a [`RangeList`] reads, for its messages.
#[derive(Clone, Copy)]
enum ListKind {
    Usable,
    Cmrs,
    Numa,
}

/// The error for NUMA lists of different lengths.
fn numa_mismatch<E: de::Error>(nodes: usize, ids: usize) -> E {
    E::custom(format!(
        "\"numa_nodes\" has {nodes} ranges but \"numa_node_ids\" has {ids} ids"
    ))
}

/// A nullable list of `[start, end]` ranges, each checked to be non-empty;
/// for `numa_nodes` read after `numa_node_ids`, checked to have `ids`
/// ranges.
struct RangeList {
    key: &'static str,
    kind: ListKind,
    ids: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for RangeList {
    type Value = Option<Vec<(u64, u64)>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for RangeList {
    type Value = Option<Vec<(u64, u64)>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ListKind::Usable => "usable RAM",
            ListKind::Cmrs => "CMRs",
            ListKind::Numa => "NUMA node ranges",
        };
        write!(f, "a list of [start, end_exclusive] ranges ({what})")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(range) = seq.next_element_seed(Pair {
            key: self.key,
            index: out.len(),
        })? {
            out.push(range);
        }
        if let Some(ids) = self.ids
            && ids != out.len()
        {
            return Err(numa_mismatch(out.len(), ids));
        }
        Ok(Some(out))
    }
}

/// A nullable `numa_node_ids` list; when read after `numa_nodes`, checked to
/// have `nodes` ids.
struct IdList {
    nodes: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for IdList {
    type Value = Option<Vec<u32>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for IdList {
    type Value = Option<Vec<u32>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of NUMA node ids (integers below 2^32)")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(id) = seq.next_element::<u32>()? {
            out.push(id);
        }
        if let Some(nodes) = self.nodes
            && nodes != out.len()
        {
            return Err(numa_mismatch(nodes, out.len()));
        }
        Ok(Some(out))
    }
}

/// `[start, end]`, element `index` of list `key`, checked to be non-empty
/// (here, so that serde_json places an error at the range's own line).
struct Pair {
    key: &'static str,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Pair {
    type Value = (u64, u64);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(u64, u64), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Pair {
    type Value = (u64, u64);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a range [start, end_exclusive]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(u64, u64), A::Error> {
        let Some(Addr(start)) = seq.next_element()? else {
            return Err(de::Error::invalid_length(0, &self));
        };
        let Some(Addr(end)) = seq.next_element()? else {
            return Err(de::Error::invalid_length(1, &self));
        };
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "{}[{}]: a range has exactly two numbers, [start, end_exclusive]",
                self.key, self.index
            )));
        }
        if start >= end {
            return Err(de::Error::custom(format!(
                "{}[{}]: [{start:#x}, {end:#x}) is empty or reversed (ranges are [start, end_exclusive])",
                self.key, self.index
            )));
        }
        Ok((start, end))
    }
}

/// An address: a non-negative integer, or a string holding `0x` hex or
/// decimal.
struct Addr(u64);

impl<'de> de::Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AddrVisitor)
    }
}

struct AddrVisitor;

impl Visitor<'_> for AddrVisitor {
    type Value = Addr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address: an integer from 0 to 2^64-1, or a string \"0x...\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Addr, E> {
        Ok(Addr(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Addr, E> {
        u64::try_from(v)
            .map(Addr)
            .map_err(|_| E::custom(format!("negative address {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
        let t = v.trim();
        let parsed = if t.starts_with("0x") || t.starts_with("0X") {
            super::scan::hex(t)
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        };
        parsed.map(Addr).ok_or_else(|| {
            E::custom(format!(
                "address {v:?} is neither 0x-prefixed hex nor decimal below 2^64"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shape() {
        let map = parse(
            r#"{"source": "test", "usable": [[4096, 8192], [0, 4096], ["0x10000", "131072"]],
               "numa_nodes": [[65536, 131072], [0, 65536]], "extra": {"a": [1, 2]}}"#,
        )
        .unwrap();
        assert_eq!(map.usable, [(0, 8192), (0x10000, 0x20000)]);
        assert_eq!(map.numa, [(0, 0x10000, 1), (0x10000, 0x20000, 0)]);
        assert_eq!(map.cmrs, None);
        assert_eq!(map.source, "JSON: test");
    }

    #[test]
    fn errors_carry_the_line() {
        let text = "{\n \"usable\": [\n  [0, 4096],\n  [8192, 4096]\n ]\n}";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line(), Some(4), "{err}");
        assert!(err.to_string().contains("usable[1]"), "{err}");

        let text = "{\n \"usable\": [[0, 4096]],\n \"numa_nodes\": [[0, 4096]],\n \"numa_node_ids\": [0, 1]\n}";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line(), Some(4), "{err}");

        let err = parse("{\n \"usable\": [[0, -1]]\n}").unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");

        let err = parse("{\n \"numa_nodes\": null\n}").unwrap_err();
        assert!(err.to_string().contains("missing field `usable`"), "{err}");
    }

    #[test]
    fn empty_usable_is_no_memory() {
        assert!(matches!(
            parse(r#"{"usable": []}"#),
            Err(InputError::NoUsableMemory { .. })
        ));
    }

    #[test]
    fn cmrs_as_list_or_object() {
        // Sorted by address, the only order a module accepts.
        assert_eq!(
            parse_cmrs("[[4096, 8192], [0, 4096]]").unwrap(),
            [(0, 4096), (4096, 8192)]
        );
        assert_eq!(
            parse_cmrs(r#"{"usable": [[0, 4096]], "cmrs": [[0, 4096]]}"#).unwrap(),
            [(0, 4096)]
        );
        assert_eq!(parse_cmrs(r#"{"cmrs": [[0, 4096]]}"#).unwrap(), [(0, 4096)]);
        assert!(parse_cmrs("[[0, 8192], [4096, 12288]]").is_err());
        assert!(parse_cmrs(r#"{"usable": [[0, 4096]]}"#).is_err());
    }
}
