//! The JSON output (`--format json`).
//!
//! A plan:
//!
//! ```json
//! {"tdmrs":[{"base":0,"size":2147483648,"node":0,
//!            "reserved":[{"offset":0,"size":1048576}],
//!            "pamt":{"4k":{"base":N,"size":N},"2m":{"base":N,"size":N},"1g":{"base":N,"size":N}},
//!            "pamt_node":0,"pamt_remote":null}],
//!  "pamt_bytes":N,"remote_pamts":0,"remote_pamt_memory":N,"usable_bytes":N,
//!  "limits":{"max_tdmrs":64,"max_reserved_per_tdmr":16,"pamt_entry_size":[16,16,16]},
//!  "linux":{"status":"ok","tdmrs":N,"max_reserved":N,"pamt_bytes":N,
//!           "remote_pamts":N,"remote_pamt_memory":N}}
//! ```
//!
//! Every number is an integer (addresses and sizes in bytes). `tdmrs`
//! describes the chosen strategy's plan. A TDMR's `node` is the NUMA node
//! of its first usable byte, where its PAMT belongs; `pamt_node` is the
//! node the PAMT is on; `pamt_remote` is `null` when they are the same,
//! else why not: `"no_room"` (no free run on the TDMR's node is large
//! enough) or `"reserved_area_limit"` (every place there needs a reserved
//! area the TDMR does not have; best strategy only). `remote_pamts` counts
//! the TDMRs whose `pamt_remote` is not `null` (0 is the goal, and what
//! every real map the project has gets). `remote_pamt_memory` is the
//! usable bytes whose PAMT entries are on another node than the bytes
//! (the memory of other nodes in a TDMR that crosses a node boundary, and
//! all memory of a TDMR with a remote PAMT; see
//! [`remote_pamt_memory`](crate::analysis::remote_pamt_memory)).
//! `usable_bytes` is all usable RAM of the map. `limits` gains `"dynamic_pamt_bits"` only with
//! `--dynamic-pamt`. `linux.status` is `"ok"` when Linux's construction
//! makes a plan that passes [`check`](tdx_api::plan::check), else the
//! reason: the planner's error text, or `TDH.SYS.CONFIG would refuse it:`
//! and the rule the plan breaks; the five counts are `null` when Linux
//! makes no plan at all.
//!
//! No plan: `{"error": TEXT, "kind": KIND, "strategy": NAME, ...}` with the
//! numbers behind the error under the names of the planner's error fields
//! (`block`, `needed`, `max`, `base`, `end`, `start`, `bytes`). Unreadable
//! input: `{"error": TEXT, "kind": "input", "line": N or null}`.

use serde::Serialize;
use serde_json::Value;
use tdx_api::plan::{CheckError, PlanError, PlannedTdmr, RemoteReason, Strategy};

use crate::{
    analysis::{Analysis, Outcome, strategy_name},
    input::InputError,
};

/// The plan document (fields in the documented order).
#[derive(Debug, Serialize)]
struct PlanDoc {
    tdmrs: Vec<TdmrDoc>,
    pamt_bytes: u64,
    remote_pamts: usize,
    remote_pamt_memory: u64,
    usable_bytes: u64,
    limits: LimitsDoc,
    linux: LinuxDoc,
}

#[derive(Debug, Serialize)]
struct TdmrDoc {
    base: u64,
    size: u64,
    node: u32,
    reserved: Vec<AreaDoc>,
    pamt: PamtDoc,
    pamt_node: u32,
    pamt_remote: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct AreaDoc {
    offset: u64,
    size: u64,
}

#[derive(Debug, Serialize)]
struct PamtDoc {
    #[serde(rename = "4k")]
    l4k: LevelDoc,
    #[serde(rename = "2m")]
    l2m: LevelDoc,
    #[serde(rename = "1g")]
    l1g: LevelDoc,
}

#[derive(Debug, Serialize)]
struct LevelDoc {
    base: u64,
    size: u64,
}

impl From<(u64, u64)> for LevelDoc {
    fn from((base, size): (u64, u64)) -> Self {
        Self { base, size }
    }
}

#[derive(Debug, Serialize)]
struct LimitsDoc {
    max_tdmrs: usize,
    max_reserved_per_tdmr: usize,
    pamt_entry_size: [u16; 3],
    #[serde(skip_serializing_if = "Option::is_none")]
    dynamic_pamt_bits: Option<u8>,
}

#[derive(Debug, Serialize)]
struct LinuxDoc {
    status: String,
    tdmrs: Option<usize>,
    max_reserved: Option<usize>,
    pamt_bytes: Option<u64>,
    remote_pamts: Option<usize>,
    remote_pamt_memory: Option<u64>,
}

/// The plan document for the chosen strategy, or `None` when it has none.
pub fn plan(a: &Analysis) -> Option<String> {
    let p = a.chosen().plan.as_ref().ok()?;
    let l = a.limits();
    let linux = a.linux.plan.as_ref().ok();
    let doc = PlanDoc {
        tdmrs: p.tdmrs.iter().map(tdmr).collect(),
        pamt_bytes: p.pamt_bytes(),
        remote_pamts: p.remote_pamts(),
        remote_pamt_memory: a.chosen().remote_memory.unwrap_or(0),
        usable_bytes: a.map.usable_bytes(),
        limits: LimitsDoc {
            max_tdmrs: l.max_tdmrs,
            max_reserved_per_tdmr: l.max_reserved_per_tdmr,
            pamt_entry_size: l.pamt_entry_size,
            dynamic_pamt_bits: l.dpamt_bitmap_bits,
        },
        linux: LinuxDoc {
            status: linux_status(&a.linux),
            tdmrs: linux.map(|p| p.tdmrs.len()),
            max_reserved: linux.map(|p| p.max_reserved()),
            pamt_bytes: linux.map(|p| p.pamt_bytes()),
            remote_pamts: linux.map(|p| p.remote_pamts()),
            remote_pamt_memory: a.linux.remote_memory,
        },
    };
    Some(pretty(&doc))
}

fn tdmr(t: &PlannedTdmr) -> TdmrDoc {
    TdmrDoc {
        base: t.base,
        size: t.size,
        node: t.node,
        reserved: t
            .reserved
            .iter()
            .map(|r| AreaDoc {
                offset: r.offset,
                size: r.size,
            })
            .collect(),
        pamt: PamtDoc {
            l4k: t.pamt.l4k.into(),
            l2m: t.pamt.l2m.into(),
            l1g: t.pamt.l1g.into(),
        },
        pamt_node: t.pamt_node,
        pamt_remote: t.pamt_remote.map(RemoteReason::kind),
    }
}

/// `"ok"`, or why Linux's construction fails (see the module docs).
pub fn linux_status(o: &Outcome) -> String {
    match (&o.plan, &o.check) {
        (Err(e), _) => e.to_string(),
        (Ok(_), Some(Err(e))) => refusal(e),
        (Ok(_), _) => "ok".to_owned(),
    }
}

/// The text for a plan that [`check`](tdx_api::plan::check) rejects.
pub fn refusal(e: &CheckError) -> String {
    format!("TDH.SYS.CONFIG would refuse it: {e}")
}

/// A JSON object whose keys keep the order they were added in.
#[derive(Debug, Default)]
struct Ordered(Vec<(&'static str, Value)>);

impl Ordered {
    fn put(&mut self, key: &'static str, value: impl Into<Value>) {
        self.0.push((key, value.into()));
    }
}

impl Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// `value` as pretty-printed JSON.
fn pretty(value: &impl Serialize) -> String {
    // Integers, strings, nulls and objects of them always serialize.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// The error document for a strategy that has no plan.
pub fn plan_error(e: &PlanError, strategy: Strategy) -> String {
    let mut m = Ordered::default();
    m.put("error", e.to_string());
    m.put("kind", e.kind());
    m.put("strategy", strategy_name(strategy));
    match *e {
        PlanError::NoMemory => {}
        PlanError::NotConvertible { start, end } => {
            m.put("start", start);
            m.put("end", end);
        }
        PlanError::TooHigh { end } => m.put("end", end),
        PlanError::TooManyReservedAreas { block, needed, max } => {
            m.put("block", block);
            m.put("needed", needed);
            m.put("max", max);
        }
        PlanError::TooManyTdmrs { needed, max } => {
            m.put("needed", needed);
            m.put("max", max);
        }
        PlanError::ReservedAreasExhausted { base, end, max } => {
            m.put("base", base);
            m.put("end", end);
            m.put("max", max);
        }
        PlanError::NoPamtSpace { base, end, bytes } => {
            m.put("base", base);
            m.put("end", end);
            m.put("bytes", bytes);
        }
        PlanError::BadCmr {
            index, start, end, ..
        } => {
            m.put("cmr", index);
            m.put("start", start);
            m.put("end", end);
        }
        PlanError::Internal(ref check) => m.put("check", check.to_string()),
    }
    pretty(&m)
}

/// The error document for a plan that [`check`](tdx_api::plan::check)
/// rejects (Linux's construction, with `--strategy linux`).
pub fn invalid_plan(e: &CheckError, strategy: Strategy) -> String {
    let mut m = Ordered::default();
    m.put("error", refusal(e));
    m.put("kind", "invalid_plan");
    m.put("strategy", strategy_name(strategy));
    pretty(&m)
}

/// The error document for unreadable input.
pub fn input_error(message: &str, e: Option<&InputError>) -> String {
    let mut m = Ordered::default();
    m.put("error", message);
    m.put("kind", "input");
    m.put("line", e.and_then(InputError::line));
    pretty(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn error_documents_keep_their_key_order_and_numbers() {
        let e = PlanError::TooManyReservedAreas {
            block: 1 << 30,
            needed: 20,
            max: 16,
        };
        let text = plan_error(&e, Strategy::Best);
        let keys: Vec<&str> = [
            "\"error\"",
            "\"kind\"",
            "\"strategy\"",
            "\"block\"",
            "\"needed\"",
            "\"max\"",
        ]
        .into_iter()
        .collect();
        let positions: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        let doc = parsed(&text);
        assert_eq!(doc["kind"], "too_many_reserved_areas");
        assert_eq!(doc["block"], 1u64 << 30);
        assert_eq!(doc["needed"], 20);
    }

    #[test]
    fn a_refused_plan_names_the_rule() {
        let e = CheckError::TooManyReserved {
            tdmr: 2,
            count: 17,
            max: 16,
        };
        let doc = parsed(&invalid_plan(&e, Strategy::Linux));
        assert_eq!(doc["kind"], "invalid_plan");
        assert_eq!(doc["strategy"], "linux");
        let message = doc["error"].as_str().unwrap();
        assert!(
            message.starts_with("TDH.SYS.CONFIG would refuse it: "),
            "{message}"
        );
        assert!(
            message.contains("TDMR 2 has 17 reserved areas"),
            "{message}"
        );
    }

    #[test]
    fn input_errors_carry_the_line() {
        let e = InputError::Syntax {
            format: crate::input::InputFormat::Json,
            line: 7,
            what: "bad".into(),
        };
        let doc = parsed(&input_error(&e.to_string(), Some(&e)));
        assert_eq!(doc["kind"], "input");
        assert_eq!(doc["line"], 7);
        let doc = parsed(&input_error("cannot read x", None));
        assert!(doc["line"].is_null());
    }
}
