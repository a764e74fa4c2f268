//! The bodies of the fuzz targets of `fuzz/` (see `fuzz/README.md`).
//!
//! Each target is one function from arbitrary bytes that panics only when
//! a property fails: the libFuzzer targets call it on whatever the fuzzer
//! makes, and `tests/fuzz_regressions.rs` calls it, on stable, on every
//! input committed under `tests/fuzz/inputs/<target>/`. The bytes are
//! decoded here by hand (no `arbitrary`), so the committed inputs mean the
//! same thing to both.

#![allow(dead_code, unreachable_pub)]

use std::io::{self, Cursor};
use std::sync::OnceLock;

use tdx_api::SysInfo;
use tdx_api::plan::{self, GIB, Limits, MemRange, PAGE, PlanError, PlanInput, Strategy};
use tdx_api::td::{TdConfig, check_params};
use tdx_types::abi::{CpuidValues, EptPageWalk, TdParams};
use tdx_types::leaf::{ALL_LEAVES, LeafVersion};
use tdx_types::status::TdxStatus;
use zerocopy::FromBytes;

/// A target's body: the fuzzer's bytes in, a panic when a property fails.
pub type Body = fn(&[u8]);

/// The fuzz targets, by name: each name is a directory of committed inputs
/// and a target of `fuzz/`.
pub const TARGETS: [(&str, Body); 5] = [
    ("status_decode", status_decode),
    ("planner", planner),
    ("plan_inputs", plan_inputs),
    ("trace_replay", trace_replay),
    ("td_params", td_params),
];

/// Reads fixed-size little-endian numbers off the input; zeros once it is
/// used up, so every input decodes.
pub struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    pub fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.0)
    }
}

// ---------------------------------------------------------------------------
// status_decode
// ---------------------------------------------------------------------------

/// Every 8 bytes are a status, and the next byte picks the leaf it is
/// reported for: decoding never panics, and the decodings agree with each
/// other.
pub fn status_decode(data: &[u8]) {
    let mut b = Bytes::new(data);
    while !b.is_empty() {
        let raw = b.u64();
        let leaf = ALL_LEAVES[usize::from(b.u8()) % ALL_LEAVES.len()];
        let s = TdxStatus::from_raw(raw);
        assert_eq!(u64::from(s), raw);
        let _ = (s.name(), s.to_string(), format!("{s:?}"));
        let detail = s.detail();
        let _ = detail.to_string();
        let kind = s.kind();
        assert_eq!(kind.is_some(), s.is_error(), "{s:?}");
        assert!(!(s.is_success() && s.is_error()));
        assert_eq!(s.code().code(), s.code(), "code() is idempotent");
        assert!(s.is(s.code()));
        match s.into_result(LeafVersion::new(leaf, b.u8() & 3)) {
            Ok(ok) => {
                assert!(!s.is_error());
                assert_eq!(ok, s);
            }
            Err(e) => {
                assert!(s.is_error());
                assert_eq!(e.status(), s);
                assert_eq!(Some(e.kind()), kind);
                assert_eq!(e.operand(), s.operand());
                assert_eq!(e.detail(), detail);
                let _ = e.to_string();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// planner
// ---------------------------------------------------------------------------

/// A count or limit: ordinary small values mostly, and the extremes.
fn extreme(b: &mut Bytes<'_>) -> usize {
    match b.u8() {
        0 => 0,
        1 => usize::MAX,
        2 => u32::MAX as usize,
        3 => usize::MAX / 2,
        4 => 1 << 20,
        v => usize::from(v % 80),
    }
}

/// An address: most often a few GiB and pages, sometimes not page aligned,
/// sometimes anything at all.
fn address(b: &mut Bytes<'_>, tag: u8) -> u64 {
    if tag & 0x80 != 0 {
        return b.u64();
    }
    let gib = u64::from(b.u8() % 72) * GIB;
    let pages = u64::from(b.u16()) % (GIB / PAGE) * PAGE;
    let sub = if tag & 0x40 != 0 {
        u64::from(b.u16()) % PAGE
    } else {
        0
    };
    gib + pages + sub
}

/// The planner's input from bytes: limits, then ranges of usable memory
/// (with nodes), optional CMRs and ranges to avoid.
pub fn plan_input_from(data: &[u8]) -> PlanInput {
    let mut b = Bytes::new(data);
    let limits = Limits {
        max_tdmrs: extreme(&mut b),
        max_reserved_per_tdmr: extreme(&mut b),
        pamt_entry_size: match b.u8() % 4 {
            0 => [16, 16, 16],
            1 => [0, 0, 0],
            2 => [u16::MAX, u16::MAX, u16::MAX],
            _ => [b.u16(), b.u16(), b.u16()],
        },
        dpamt_bitmap_bits: match b.u8() {
            0..=200 => None,
            v => Some(v.wrapping_mul(7)),
        },
    };
    let flags = b.u8();
    let mut usable = Vec::new();
    let mut cmrs = Vec::new();
    let mut avoid = Vec::new();
    while !b.is_empty() {
        let tag = b.u8();
        let start = address(&mut b, tag);
        let end = if tag & 0x20 != 0 {
            address(&mut b, tag)
        } else {
            // A length in pages, or in MiB.
            let unit = if tag & 0x10 != 0 { 1 << 20 } else { PAGE };
            start.saturating_add(u64::from(b.u16()) * unit)
        };
        let node = u32::from(tag & 0x07);
        match tag & 0x18 {
            0x18 if flags & 1 != 0 => cmrs.push((start, end)),
            0x08 if flags & 2 != 0 => avoid.push((start, end)),
            _ => usable.push(MemRange { start, end, node }),
        }
    }
    if flags & 4 != 0 {
        // A list shaped as a module reports it (page aligned, sorted,
        // disjoint), so the planner runs on it rather than refusing it
        // with `PlanError::BadCmr`.
        cmrs = module_shaped(cmrs);
    }
    PlanInput {
        usable,
        cmrs: (flags & 1 != 0).then_some(cmrs),
        limits,
        avoid,
    }
}

/// `cmrs` page aligned outwards, sorted and clipped so none overlaps an
/// earlier one.
fn module_shaped(mut cmrs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    for c in &mut cmrs {
        c.0 &= !(PAGE - 1);
        c.1 = c.1.checked_next_multiple_of(PAGE).unwrap_or(!(PAGE - 1));
    }
    cmrs.retain(|&(s, e)| s < e);
    cmrs.sort_unstable();
    let mut reach = 0;
    let mut out = Vec::with_capacity(cmrs.len());
    for (s, e) in cmrs {
        let s = s.max(reach);
        if s < e {
            out.push((s, e));
            reach = e;
        }
    }
    out
}

/// Both strategies on an arbitrary input: every plan passes the rule check
/// (Linux's only when it is handed no CMRs: it does not read them), every
/// failure is a typed error other than `Internal`, and the work is bounded
/// by the input's size whatever the limits say.
pub fn planner(data: &[u8]) {
    let input = plan_input_from(data);
    for strategy in [Strategy::Best, Strategy::Linux] {
        let (result, work) = plan::plan_with_work(&input, strategy);
        let bound = plan::work_bound(&input);
        assert!(
            work <= bound,
            "{strategy:?}: {work} rounds of work, the bound for {} ranges is {bound}",
            input.usable.len()
        );
        match result {
            Ok(p) => {
                let checked = plan::check(&p, &input);
                if strategy == Strategy::Best || input.cmrs.is_none() {
                    assert_eq!(checked, Ok(()), "{strategy:?} plan breaks a rule:\n{p}");
                }
                assert!(p.tdmrs.len() <= input.limits.max_tdmrs);
                let _ = p.to_string();
            }
            Err(PlanError::Internal(e)) => panic!("{strategy:?}: internal error {e}"),
            Err(e) => {
                let _ = (e.to_string(), e.kind());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// plan_inputs
// ---------------------------------------------------------------------------

/// Every `tdx-plan` input parser on arbitrary text: no panic; a map it reads
/// keeps the documented invariants and survives its JSON round trip.
pub fn plan_inputs(data: &[u8]) {
    use tdx_plan::input::{InputFormat, MemoryMap, detect, parse, parse_cmrs};
    let text = String::from_utf8_lossy(data);
    let _ = detect(&text);
    let check_map = |map: &MemoryMap| {
        for w in map.usable.windows(2) {
            assert!(w[0].1 < w[1].0, "usable ranges sorted, apart: {w:?}");
        }
        assert!(map.usable.iter().all(|&(s, e)| s < e));
        for w in map.numa.windows(2) {
            assert!(w[0].1 <= w[1].0, "NUMA ranges sorted, disjoint: {w:?}");
        }
        assert!(map.numa.iter().all(|&(s, e, _)| s < e));
        if let Some(c) = &map.cmrs {
            assert!(c.iter().all(|&(s, e)| s < e));
            assert!(
                c.windows(2).all(|w| w[0].1 <= w[1].0),
                "CMRs sorted, disjoint"
            );
        }
        let again = parse(&map.to_json(), Some(InputFormat::Json))
            .unwrap_or_else(|e| panic!("JSON round trip fails: {e}"));
        assert_eq!(again.usable, map.usable);
        assert_eq!(again.numa, map.numa);
        assert_eq!(again.cmrs, map.cmrs);
        let input = tdx_plan::analysis::plan_input(map, Limits::default());
        let covered: u64 = input.usable.iter().map(|r| r.end - r.start).sum();
        assert_eq!(covered, map.usable_bytes(), "every usable byte on a node");
    };
    for format in [None]
        .into_iter()
        .chain(InputFormat::ALL.into_iter().map(Some))
    {
        if let Ok(map) = parse(&text, format) {
            check_map(&map);
        }
    }
    if let Ok(cmrs) = parse_cmrs(&text) {
        assert!(cmrs.iter().all(|&(s, e)| s < e));
        assert!(
            cmrs.windows(2).all(|w| w[0].1 <= w[1].0),
            "sorted, disjoint"
        );
    }
}

// ---------------------------------------------------------------------------
// trace_replay
// ---------------------------------------------------------------------------

/// Arbitrary trace text through `tdx_sim::trace`: parse, build the machine,
/// replay. Never a panic; whatever fails is a `TraceError`.
pub fn trace_replay(data: &[u8]) {
    if let Ok(summary) = tdx_sim::trace::replay(Cursor::new(data), &mut io::sink()) {
        let _ = summary.to_string();
    }
}

// ---------------------------------------------------------------------------
// td_params
// ---------------------------------------------------------------------------

/// The `SysInfo` of a simulated module 1.5.01, read once.
fn sysinfo() -> &'static SysInfo {
    static INFO: OnceLock<SysInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        use tdx_api::TdxModule;
        use tdx_sim::{MachineDesc, Profile, Simulator};
        let sim = Simulator::new(
            MachineDesc::new(vec![(4 * GIB, 8 * GIB)])
                .with_cpus(1, 2)
                .with_profile(Profile::tdx_1_5()),
        )
        .expect("a small simulated machine");
        let input = PlanInput::new(vec![MemRange {
            start: 4 * GIB,
            end: 8 * GIB,
            node: 0,
        }]);
        let module = TdxModule::init(&sim, &sim)
            .expect("TDH.SYS.INIT")
            .configure(&input)
            .expect("configure")
            .init_extensions()
            .expect("extensions");
        module.sysinfo().clone()
    })
}

/// First byte even: a `TdConfig` built from the bytes, turned into TD_PARAMS
/// and checked. Odd: the rest as raw TD_PARAMS bytes, checked. Never a
/// panic; the builder's fields land where they belong.
pub fn td_params(data: &[u8]) {
    let info = sysinfo();
    let mut b = Bytes::new(data);
    if b.u8() & 1 == 1 {
        let mut raw = [0u8; size_of::<TdParams>()];
        let rest = b.rest();
        let n = rest.len().min(raw.len());
        raw[..n].copy_from_slice(&rest[..n]);
        let Ok(p) = TdParams::read_from_bytes(&raw[..]) else {
            panic!("any 1024 bytes are TD_PARAMS");
        };
        if check_params(info, &p).is_ok() {
            assert!(p.max_vcpus() >= 1);
            assert!((4..=400).contains(&p.tsc_frequency()));
        }
        return;
    }
    let max_vcpus = b.u16();
    let attributes = b.u64();
    let xfam = b.u64();
    let ept = if b.bool() {
        EptPageWalk::FiveLevel
    } else {
        EptPageWalk::FourLevel
    };
    let max_gpaw = b.bool();
    let flexible_pending_ve = b.bool();
    let tsc_frequency_mhz = b.u32();
    let mut mr = [[0u8; 48]; 3];
    for m in &mut mr {
        m.fill(b.u8());
    }
    let mut cpuid = Vec::new();
    for _ in 0..b.u8() % 64 {
        let index = usize::from(b.u8());
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&b.u64().to_le_bytes());
        v[8..].copy_from_slice(&b.u64().to_le_bytes());
        let Ok(values) = CpuidValues::read_from_bytes(&v[..]) else {
            panic!("any 16 bytes are CPUID values");
        };
        cpuid.push((index, values));
    }
    let arch_caps = b.bool().then(|| b.u64());
    let builder = TdConfig::builder()
        .max_vcpus(max_vcpus)
        .attributes(attributes)
        .xfam(xfam)
        .ept(ept)
        .max_gpaw(max_gpaw)
        .flexible_pending_ve(flexible_pending_ve)
        .tsc_frequency_mhz(tsc_frequency_mhz)
        .mr_config_id(mr[0])
        .mr_owner(mr[1])
        .mr_owner_config(mr[2])
        .cpuid(cpuid);
    let config = match arch_caps {
        Some(v) => builder.ia32_arch_capabilities(v).build(),
        None => builder.build(),
    };
    let p = config.to_params();
    assert_eq!(p.max_vcpus(), max_vcpus);
    assert_eq!(p.attributes(), attributes);
    assert_eq!(p.xfam(), xfam);
    let _ = config.check_cpuid();
    if check_params(info, &p).is_ok() {
        assert!(max_vcpus >= 1);
        assert!((100..=10_000).contains(&tsc_frequency_mhz));
    }
}
