//! The picture (`--svg FILE`): physical memory with the chosen plan drawn
//! over it, as a hand-written SVG document.
//!
//! Layout, top to bottom: a title with the plan's numbers and the verdicts
//! of both strategies; a legend; an overview of the whole address space on
//! a broken axis (large gaps outside every TDMR are cut to a fixed width);
//! then one row per TDMR, from its base to its end. Every bar has three
//! lanes: the NUMA node of the RAM, the memory itself (usable RAM, holes,
//! PAMTs), and what the TDMR reserves (reserved areas), or in the overview
//! the TDMRs.
//!
//! Within a bar the scale is linear except that no piece (a RAM range, a
//! hole, a reserved area, a PAMT) is drawn narrower than a few pixels, so a
//! 4 KiB hole in a 1 TiB TDMR stays visible; the pieces that are widened
//! take their width from the others. Every rectangle has a `<title>` with
//! its exact range, shown as a tooltip in a browser.
//!
//! Without a plan the picture shows the memory, the error, and for a block
//! that needs too many reserved areas, that block.

use std::fmt::Write as _;

use tdx_api::plan::{GIB, Plan, PlanError, PlannedTdmr};

use crate::{
    analysis::{Analysis, Outcome},
    report::{Bytes, area_contents, percent},
};

const WIDTH: f64 = 1400.0;
/// Left edge of the bars (lane names sit left of it).
const BAR_X: f64 = 70.0;
const BAR_W: f64 = WIDTH - BAR_X - 30.0;
/// Narrowest a piece of a bar is drawn, in pixels.
const MIN_PIECE: f64 = 4.0;
/// Width of a cut gap on the overview's broken axis.
const BREAK_W: f64 = 44.0;
/// Holes outside every TDMR at least this large are cut in the overview.
const BREAK_MIN: u64 = GIB;

const NODE_LANE: f64 = 7.0;
const MEM_LANE: f64 = 24.0;
const LOW_LANE: f64 = 11.0;
const CMR_LANE: f64 = 8.0;

const RAM: &str = "#59a14f";
const PAMT: &str = "#f28e2b";
const CMR: &str = "#17becf";
const RESERVED: &str = "#d62728";
const TDMR_FILL: [&str; 2] = ["#4e79a7", "#a0cbe8"];
const NODES: [&str; 8] = [
    "#8c6bb1", "#2a9d8f", "#e9c46a", "#6a4c93", "#1982c4", "#ff99c8", "#8ac926", "#6d6875",
];

/// A piecewise-linear map from addresses to x coordinates.
#[derive(Debug, Clone)]
struct Scale {
    /// Breakpoints, increasing.
    at: Vec<u64>,
    /// Their x coordinates, increasing.
    x: Vec<f64>,
    /// Pieces drawn at a fixed width (cut gaps): `(start, end)`.
    cut: Vec<(u64, u64)>,
}

/// How wide a piece of a bar is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Width {
    /// In proportion to its size, but at least [`MIN_PIECE`].
    Proportional,
    /// Exactly this many pixels (a cut gap).
    Fixed(f64),
}

impl Scale {
    /// A scale for `pieces` (contiguous, increasing, non-empty) over
    /// `[x0, x0 + width]`.
    fn new(pieces: &[(u64, u64, Width)], x0: f64, width: f64) -> Self {
        let fixed: f64 = pieces
            .iter()
            .map(|p| match p.2 {
                Width::Fixed(w) => w,
                Width::Proportional => 0.0,
            })
            .sum();
        let room = (width - fixed).max(0.0);
        let props: Vec<usize> = (0..pieces.len())
            .filter(|&i| pieces[i].2 == Width::Proportional)
            .collect();
        let min = if props.is_empty() {
            0.0
        } else {
            MIN_PIECE.min(room / props.len() as f64)
        };
        // Widen the pieces too small to see, and share what is left among
        // the others in proportion; repeat until no more need widening.
        let mut small = vec![false; pieces.len()];
        let mut widths = vec![0.0; pieces.len()];
        loop {
            let n_small = props.iter().filter(|&&i| small[i]).count();
            let big: f64 = props
                .iter()
                .filter(|&&i| !small[i])
                .map(|&i| (pieces[i].1 - pieces[i].0) as f64)
                .sum();
            let share = (room - min * n_small as f64).max(0.0);
            let mut changed = false;
            for &i in &props {
                if small[i] {
                    widths[i] = min;
                    continue;
                }
                let w = if big > 0.0 {
                    (pieces[i].1 - pieces[i].0) as f64 / big * share
                } else {
                    0.0
                };
                if w < min {
                    small[i] = true;
                    changed = true;
                }
                widths[i] = w;
            }
            if !changed {
                break;
            }
        }
        let mut at = Vec::with_capacity(pieces.len() + 1);
        let mut x = Vec::with_capacity(pieces.len() + 1);
        let mut cut = Vec::new();
        let mut cursor = x0;
        for (i, &(s, e, w)) in pieces.iter().enumerate() {
            at.push(s);
            x.push(cursor);
            cursor += match w {
                Width::Fixed(w) => {
                    cut.push((s, e));
                    w
                }
                Width::Proportional => widths[i],
            };
        }
        if let Some(&(_, end, _)) = pieces.last() {
            at.push(end);
            x.push(cursor);
        }
        Self { at, x, cut }
    }

    /// The x of `addr`, clamped to the scale.
    fn x(&self, addr: u64) -> f64 {
        let (Some(&first), Some(&last)) = (self.at.first(), self.at.last()) else {
            return BAR_X;
        };
        if addr <= first {
            return self.x[0];
        }
        if addr >= last {
            return self.x[self.x.len() - 1];
        }
        let i = self.at.partition_point(|&a| a <= addr) - 1;
        let (a0, a1) = (self.at[i], self.at[i + 1]);
        let (x0, x1) = (self.x[i], self.x[i + 1]);
        x0 + (x1 - x0) * ((addr - a0) as f64 / (a1 - a0) as f64)
    }
}

/// Pieces between the sorted, de-duplicated `cuts` within `[lo, hi)`.
fn pieces(mut cuts: Vec<u64>, lo: u64, hi: u64) -> Vec<(u64, u64)> {
    cuts.retain(|&c| c > lo && c < hi);
    cuts.push(lo);
    cuts.push(hi);
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An address as hex with its position in binary units (`0xc0000000 · 3 GiB`).
fn addr_label(addr: u64) -> String {
    if addr == 0 {
        "0x0".to_owned()
    } else {
        format!("{addr:#x} · {}", Bytes(addr))
    }
}

/// `text` cut into lines of at most about `width` characters, at "; "
/// or spaces (continuation lines indented).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut words = 0;
    for word in text.split(' ') {
        if words > 0 && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, "    ".to_owned()));
            words = 0;
        }
        if words > 0 {
            line.push(' ');
        }
        line.push_str(word);
        words += 1;
    }
    lines.push(line);
    lines
}

/// Where `[s, e)` meets `[lo, hi)`, if it does.
fn clip(s: u64, e: u64, lo: u64, hi: u64) -> Option<(u64, u64)> {
    let (s, e) = (s.max(lo), e.min(hi));
    (s < e).then_some((s, e))
}

/// The SVG being written, with its running height.
struct Doc {
    body: String,
    y: f64,
}

impl Doc {
    fn rect(&mut self, x0: f64, x1: f64, y: f64, h: f64, fill: &str, title: &str) {
        let w = (x1 - x0).max(0.8);
        let _ = writeln!(
            self.body,
            r#"<rect x="{x0:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{fill}"><title>{}</title></rect>"#,
            esc(title)
        );
    }

    fn text(&mut self, x: f64, y: f64, class: &str, anchor: &str, s: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.2}" y="{y:.2}" class="{class}" text-anchor="{anchor}">{}</text>"#,
            esc(s)
        );
    }
}

/// The picture of `a`.
pub fn render(a: &Analysis) -> String {
    let mut d = Doc {
        body: String::new(),
        y: 0.0,
    };
    header(&mut d, a);
    legend(&mut d, a);
    let chosen = a.chosen();
    let plan = chosen.plan.as_ref().ok();
    overview(&mut d, a, plan);
    match &chosen.plan {
        Ok(p) => {
            for (i, t) in p.tdmrs.iter().enumerate() {
                tdmr_row(&mut d, a, p, i, t);
            }
        }
        Err(PlanError::TooManyReservedAreas { block, needed, .. }) => {
            block_row(&mut d, a, *block, *needed);
        }
        Err(_) => {}
    }
    let height = d.y + 20.0;
    let mut out = String::with_capacity(d.body.len() + 1024);
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    out.push_str(
        r##"<style>
.title { font-size: 18px; font-weight: bold; fill: #222; }
.sub { font-size: 12px; fill: #333; }
.bad { font-size: 12px; fill: #b00; font-weight: bold; }
.row { font-size: 13px; font-weight: bold; fill: #222; }
.rowsub { font-size: 12px; fill: #444; }
.lane { font-size: 10px; fill: #666; }
.addr { font-size: 10px; fill: #333; }
.in { font-size: 10px; fill: #fff; font-weight: bold; }
.inp { font-size: 10px; fill: #222; font-weight: bold; }
.small { font-size: 9px; fill: #fff; }
.legend { font-size: 12px; fill: #222; }
</style>
<defs>
<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="6" height="6" fill="#e3e3e3"/><line x1="0" y1="0" x2="0" y2="6" stroke="#bdbdbd" stroke-width="2"/>
</pattern>
</defs>
<rect width="100%" height="100%" fill="#ffffff"/>
"##,
    );
    out.push_str(&d.body);
    out.push_str("</svg>\n");
    out
}

fn verdict(o: &Outcome) -> String {
    match (&o.plan, &o.sys_config) {
        (Err(e), _) => format!("no plan: {e}"),
        (Ok(p), sim) => {
            let mut s = format!(
                "{} TDMR{}, largest reserved-area count {}, PAMT {}",
                p.tdmrs.len(),
                if p.tdmrs.len() == 1 { "" } else { "s" },
                p.max_reserved(),
                Bytes(p.pamt_bytes())
            );
            if let Some(Err(e)) = &o.check {
                let _ = write!(s, "; breaks a rule: {e}");
            }
            if let Some(sim) = sim {
                let _ = write!(s, "; TDH.SYS.CONFIG (simulated): {sim}");
            }
            s
        }
    }
}

fn header(d: &mut Doc, a: &Analysis) {
    let chosen = a.chosen();
    let usable = a.map.usable_bytes();
    let title = match &chosen.plan {
        Ok(p) => format!(
            "tdx-plan: {} plan: {} TDMR{}, PAMT {} = {:.3}% of {} usable RAM",
            chosen.name(),
            p.tdmrs.len(),
            if p.tdmrs.len() == 1 { "" } else { "s" },
            Bytes(p.pamt_bytes()),
            percent(p.pamt_bytes(), usable),
            Bytes(usable)
        ),
        Err(e) => format!("tdx-plan: no {} plan: {e}", chosen.name()),
    };
    d.text(20.0, 28.0, "title", "start", &title);
    let mut source = a.map.source.clone();
    if source.chars().count() > 170 {
        source = source.chars().take(167).collect::<String>() + "...";
    }
    d.text(20.0, 48.0, "sub", "start", &format!("map: {source}"));
    let cmrs = match &a.map.cmrs {
        Some(c) => format!(
            "{} CMR{} given",
            c.len(),
            if c.len() == 1 { "" } else { "s" }
        ),
        None => "CMRs assumed = usable ranges".to_owned(),
    };
    let l = a.limits();
    d.text(
        20.0,
        66.0,
        "sub",
        "start",
        &format!(
            "{} usable range{}, {}; {cmrs}; limits: {} TDMRs, {} reserved areas per TDMR, PAMT entries {}/{}/{} bytes{}",
            a.map.usable.len(),
            if a.map.usable.len() == 1 { "" } else { "s" },
            Bytes(usable),
            l.max_tdmrs,
            l.max_reserved_per_tdmr,
            l.pamt_entry_size[0],
            l.pamt_entry_size[1],
            l.pamt_entry_size[2],
            l.dpamt_bitmap_bits
                .map_or(String::new(), |b| format!(", Dynamic PAMT {b} bit/page"))
        ),
    );
    let mut y = 84.0;
    for o in [&a.best, &a.linux] {
        let line = format!("{}: {}", o.name(), verdict(o));
        let ok = o.plan.is_ok()
            && matches!(o.check, Some(Ok(())))
            && o.sys_config.as_ref().is_none_or(|s| s.accepted());
        for part in wrap(&line, 180) {
            d.text(20.0, y, if ok { "sub" } else { "bad" }, "start", &part);
            y += 18.0;
        }
    }
    d.y = y;
}

fn legend(d: &mut Doc, a: &Analysis) {
    let y = d.y + 4.0;
    let mut x = 20.0;
    let mut items: Vec<(&str, &str)> = vec![
        (RAM, "usable RAM"),
        ("url(#hatch)", "hole (not RAM)"),
        (PAMT, "PAMT (label: its TDMR)"),
        (RESERVED, "reserved area"),
        (TDMR_FILL[0], "TDMR (overview)"),
    ];
    if a.map.cmrs.is_some() {
        items.push((CMR, "CMR"));
    }
    for (fill, label) in items {
        let _ = writeln!(
            d.body,
            r##"<rect x="{x}" y="{y}" width="22" height="13" fill="{fill}" stroke="#888" stroke-width="0.5"/>"##
        );
        d.text(x + 28.0, y + 11.0, "legend", "start", label);
        x += 44.0 + label.len() as f64 * 6.6;
    }
    let mut nodes: Vec<u32> = a.input.usable.iter().map(|r| r.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    for n in nodes {
        let _ = writeln!(
            d.body,
            r#"<rect x="{x}" y="{}" width="22" height="7" fill="{}"/>"#,
            y + 3.0,
            node_color(n)
        );
        d.text(x + 28.0, y + 11.0, "legend", "start", &format!("node {n}"));
        x += 90.0;
    }
    d.text(
        20.0,
        y + 32.0,
        "lane",
        "start",
        "Bars are linear except that no piece is narrower than 4 px (so small holes and areas stay visible); \
         gaps of 1 GiB or more outside every TDMR are cut (//) in the overview. Hover for exact ranges.",
    );
    d.y = y + 44.0;
}

fn node_color(n: u32) -> &'static str {
    NODES[n as usize % NODES.len()]
}

/// The memory lane, node lane and address ticks of `[lo, hi)` on `scale`,
/// starting at `y` (the node lane). PAMTs of `plan` are drawn with their
/// TDMR's index.
fn memory_lanes(
    d: &mut Doc,
    a: &Analysis,
    plan: Option<&Plan>,
    scale: &Scale,
    lo: u64,
    hi: u64,
    y: f64,
) {
    let mem_y = y + NODE_LANE + 1.0;
    let (x0, x1) = (scale.x(lo), scale.x(hi));
    let _ = writeln!(
        d.body,
        r#"<rect x="{x0:.2}" y="{mem_y:.2}" width="{:.2}" height="{MEM_LANE}" fill="url(#hatch)"/>"#,
        x1 - x0
    );
    for r in &a.input.usable {
        if let Some((s, e)) = clip(r.start, r.end, lo, hi) {
            let title = format!("node {}: [{s:#x}, {e:#x}) {}", r.node, Bytes(e - s));
            d.rect(
                scale.x(s),
                scale.x(e),
                y,
                NODE_LANE,
                node_color(r.node),
                &title,
            );
        }
    }
    for &(s, e) in &a.map.usable {
        if let Some((s, e)) = clip(s, e, lo, hi) {
            let title = format!("usable RAM [{s:#x}, {e:#x}) {}", Bytes(e - s));
            d.rect(scale.x(s), scale.x(e), mem_y, MEM_LANE, RAM, &title);
        }
    }
    if let Some(p) = plan {
        for (i, t) in p.tdmrs.iter().enumerate() {
            let (b, e) = (t.pamt.l4k.0, t.pamt.l4k.0 + t.pamt.bytes());
            // The levels are usually back to back; draw each, label once.
            for (name, (lb, ls)) in ["4K", "2M", "1G"].iter().zip(t.pamt.levels()) {
                if let Some((s, e)) = clip(lb, lb + ls, lo, hi) {
                    let title =
                        format!("PAMT {name} of TDMR {i}: [{s:#x}, {e:#x}) {}", Bytes(e - s));
                    d.rect(scale.x(s), scale.x(e), mem_y, MEM_LANE, PAMT, &title);
                }
            }
            if let Some((s, e)) = clip(b, e, lo, hi) {
                let (xs, xe) = (scale.x(s), scale.x(e));
                let label = if xe - xs > 70.0 {
                    format!("PAMT T{i}")
                } else {
                    format!("T{i}")
                };
                if xe - xs > 7.0 * label.len() as f64 {
                    d.text((xs + xe) / 2.0, mem_y + 16.0, "inp", "middle", &label);
                }
            }
        }
    }
    // Cut gaps: a break mark over the lanes and the gap's size.
    for &(s, e) in &scale.cut {
        let (xs, xe) = (scale.x(s), scale.x(e));
        let _ = writeln!(
            d.body,
            r##"<rect x="{xs:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#ffffff"/>"##,
            y - 1.0,
            xe - xs,
            NODE_LANE + MEM_LANE + LOW_LANE + 4.0
        );
        let mid = (xs + xe) / 2.0;
        let marks: &[f64] = if xe - xs >= 16.0 {
            &[-5.0, 3.0]
        } else {
            &[-1.0]
        };
        for &dx in marks {
            let _ = writeln!(
                d.body,
                r##"<line x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#555" stroke-width="1.5"/>"##,
                mid + dx - 3.0,
                mem_y + MEM_LANE + 2.0,
                mid + dx + 3.0,
                mem_y - 2.0
            );
        }
        let size = Bytes(e - s).to_string();
        if xe - xs >= size.len() as f64 * 5.6 {
            d.text(
                mid,
                mem_y + MEM_LANE + LOW_LANE - 1.0,
                "lane",
                "middle",
                &size,
            );
        }
    }
}

/// Address labels under a bar at height `y`: the ends always, the `marks`
/// inside where they do not crowd.
fn addr_ticks(d: &mut Doc, scale: &Scale, marks: &[u64], lo: u64, hi: u64, y: f64) {
    let mut placed: Vec<(f64, f64)> = Vec::new();
    let mut put = |d: &mut Doc, addr: u64, anchor: &str| {
        let x = scale.x(addr);
        let label = addr_label(addr);
        let w = label.len() as f64 * 5.6;
        let (l, r) = match anchor {
            "start" => (x, x + w),
            "end" => (x - w, x),
            _ => (x - w / 2.0, x + w / 2.0),
        };
        if placed.iter().any(|&(pl, pr)| l < pr + 8.0 && r > pl - 8.0) {
            return;
        }
        placed.push((l, r));
        let _ = writeln!(
            d.body,
            r##"<line x1="{x:.2}" y1="{:.2}" x2="{x:.2}" y2="{:.2}" stroke="#555" stroke-width="0.8"/>"##,
            y - 4.0,
            y + 1.0
        );
        d.text(x, y + 11.0, "addr", anchor, &label);
    };
    put(d, lo, "start");
    put(d, hi, "end");
    for &m in marks {
        if m > lo && m < hi {
            put(d, m, "middle");
        }
    }
}

fn lane_names(d: &mut Doc, y: f64, low: &str) {
    d.text(BAR_X - 6.0, y + NODE_LANE - 0.5, "lane", "end", "node");
    d.text(
        BAR_X - 6.0,
        y + NODE_LANE + 1.0 + MEM_LANE / 2.0 + 4.0,
        "lane",
        "end",
        "memory",
    );
    d.text(
        BAR_X - 6.0,
        y + NODE_LANE + MEM_LANE + 2.0 + LOW_LANE - 1.5,
        "lane",
        "end",
        low,
    );
}

fn overview(d: &mut Doc, a: &Analysis, plan: Option<&Plan>) {
    let tdmrs: Vec<(u64, u64)> = plan
        .map(|p| p.tdmrs.iter().map(|t| (t.base, t.end())).collect())
        .unwrap_or_default();
    let top = a
        .map
        .usable
        .last()
        .map_or(0, |r| r.1)
        .max(tdmrs.last().map_or(0, |t| t.1));
    let (lo, hi) = (0, top);
    if lo >= hi {
        return;
    }
    let mut cuts: Vec<u64> = a.map.usable.iter().flat_map(|&(s, e)| [s, e]).collect();
    cuts.extend(tdmrs.iter().flat_map(|&(s, e)| [s, e]));
    cuts.extend(a.map.cmrs.iter().flatten().flat_map(|&(s, e)| [s, e]));
    let in_tdmr = |s: u64, e: u64| tdmrs.iter().any(|&(b, t)| s < t && e > b);
    let in_ram = |s: u64, e: u64| a.map.usable.iter().any(|&(b, t)| s < t && e > b);
    let all = pieces(cuts, lo, hi);
    let is_cut = |s: u64, e: u64| e - s >= BREAK_MIN && !in_tdmr(s, e) && !in_ram(s, e);
    // Cut gaps take at most a third of the bar.
    let n_cut = all.iter().filter(|&&(s, e)| is_cut(s, e)).count();
    let break_w = BREAK_W.min(BAR_W / 3.0 / n_cut.max(1) as f64);
    let ps: Vec<(u64, u64, Width)> = all
        .into_iter()
        .map(|(s, e)| {
            let cut = is_cut(s, e);
            (
                s,
                e,
                if cut {
                    Width::Fixed(break_w)
                } else {
                    Width::Proportional
                },
            )
        })
        .collect();
    let scale = Scale::new(&ps, BAR_X, BAR_W);
    let y = d.y + 6.0;
    d.text(
        20.0,
        y + 8.0,
        "row",
        "start",
        &format!(
            "Physical memory [{lo:#x}, {hi:#x}) ({} of address space, {} usable)",
            Bytes(hi - lo),
            Bytes(a.map.usable_bytes())
        ),
    );
    let mut bar_y = y + 18.0;
    if let Some(cmrs) = &a.map.cmrs {
        d.text(BAR_X - 6.0, bar_y + CMR_LANE - 0.5, "lane", "end", "CMRs");
        for (k, &(s, e)) in cmrs.iter().enumerate() {
            if let Some((s, e)) = clip(s, e, lo, hi) {
                let title = format!("CMR {k}: [{s:#x}, {e:#x}) {}", Bytes(e - s));
                d.rect(scale.x(s), scale.x(e) - 1.0, bar_y, CMR_LANE, CMR, &title);
            }
        }
        bar_y += CMR_LANE + 4.0;
    }
    lane_names(d, bar_y, "TDMRs");
    memory_lanes(d, a, plan, &scale, lo, hi, bar_y);
    let low_y = bar_y + NODE_LANE + MEM_LANE + 2.0;
    for (i, &(b, e)) in tdmrs.iter().enumerate() {
        let (xs, xe) = (scale.x(b), scale.x(e));
        d.rect(
            xs,
            xe,
            low_y,
            LOW_LANE,
            TDMR_FILL[i % 2],
            &format!("TDMR {i}: [{b:#x}, {e:#x}) {}", Bytes(e - b)),
        );
        if xe - xs > 24.0 {
            let class = if i % 2 == 0 { "in" } else { "inp" };
            d.text(
                (xs + xe) / 2.0,
                low_y + 9.0,
                class,
                "middle",
                &format!("T{i}"),
            );
        }
    }
    let marks: Vec<u64> = tdmrs.iter().flat_map(|&(s, e)| [s, e]).collect();
    addr_ticks(d, &scale, &marks, lo, hi, low_y + LOW_LANE + 4.0);
    d.y = low_y + LOW_LANE + 40.0;
}

/// One row: TDMR `i` from its base to its end.
fn tdmr_row(d: &mut Doc, a: &Analysis, plan: &Plan, i: usize, t: &PlannedTdmr) {
    let (lo, hi) = (t.base, t.end());
    let mut cuts: Vec<u64> = a.map.usable.iter().flat_map(|&(s, e)| [s, e]).collect();
    cuts.extend(a.input.usable.iter().flat_map(|r| [r.start, r.end]));
    cuts.extend(plan.pamt_ranges().flat_map(|(b, s)| [b, b + s]));
    cuts.extend(
        t.reserved
            .iter()
            .flat_map(|r| [t.base + r.offset, t.base + r.offset + r.size]),
    );
    let ps: Vec<(u64, u64, Width)> = pieces(cuts, lo, hi)
        .into_iter()
        .map(|(s, e)| (s, e, Width::Proportional))
        .collect();
    let scale = Scale::new(&ps, BAR_X, BAR_W);
    let y = d.y;
    let n = t.reserved.len();
    let max = a.limits().max_reserved_per_tdmr;
    d.text(
        20.0,
        y + 12.0,
        "row",
        "start",
        &format!(
            "TDMR {i}   [{lo:#x}, {hi:#x})   {} → {}   ({})",
            Bytes(lo).to_string().replace("0 bytes", "0"),
            Bytes(hi),
            Bytes(t.size)
        ),
    );
    let pamt_home = plan
        .tdmrs
        .iter()
        .position(|d| d.base <= t.pamt.l4k.0 && t.pamt.l4k.0 < d.end())
        .map_or_else(
            || "outside every TDMR".to_owned(),
            |k| format!("in TDMR {k}"),
        );
    let pamt_home = match t.pamt_remote {
        None => format!("{pamt_home}, node {}", t.pamt_node),
        Some(why) => format!(
            "{pamt_home}, REMOTE on node {}: {}",
            t.pamt_node,
            why.kind()
        ),
    };
    d.text(
        WIDTH - 30.0,
        y + 12.0,
        "rowsub",
        "end",
        &format!(
            "node {}  ·  {n} of {max} reserved area{}  ·  PAMT {} at {:#x} ({pamt_home})",
            t.node,
            if max == 1 { "" } else { "s" },
            Bytes(t.pamt.bytes()),
            t.pamt.l4k.0
        ),
    );
    let bar_y = y + 20.0;
    lane_names(d, bar_y, "reserved");
    memory_lanes(d, a, Some(plan), &scale, lo, hi, bar_y);
    let low_y = bar_y + NODE_LANE + MEM_LANE + 2.0;
    let _ = writeln!(
        d.body,
        r##"<rect x="{BAR_X}" y="{low_y:.2}" width="{BAR_W}" height="{LOW_LANE}" fill="#f6f6f6"/>"##
    );
    let mut marks = Vec::new();
    for (k, r) in t.reserved.iter().enumerate() {
        let (s, e) = (t.base + r.offset, t.base + r.offset + r.size);
        marks.extend([s, e]);
        let what = area_contents(a, plan, s, e);
        let (xs, xe) = (scale.x(s), scale.x(e));
        d.rect(
            xs,
            xe,
            low_y,
            LOW_LANE,
            RESERVED,
            &format!(
                "reserved area {k}: [{s:#x}, {e:#x}) {} ({what})",
                Bytes(r.size)
            ),
        );
        let long = format!("{k}: {what}");
        let label = if xe - xs > long.len() as f64 * 5.8 + 6.0 {
            long
        } else {
            k.to_string()
        };
        if xe - xs > label.len() as f64 * 5.8 + 4.0 {
            d.text((xs + xe) / 2.0, low_y + 9.0, "small", "middle", &label);
        }
    }
    // A frame around the TDMR.
    let _ = writeln!(
        d.body,
        r##"<rect x="{BAR_X}" y="{:.2}" width="{BAR_W}" height="{:.2}" fill="none" stroke="#4e79a7" stroke-width="1.2"/>"##,
        bar_y - 1.0,
        NODE_LANE + MEM_LANE + LOW_LANE + 4.0
    );
    addr_ticks(d, &scale, &marks, lo, hi, low_y + LOW_LANE + 4.0);
    d.y = low_y + LOW_LANE + 28.0;
}

/// The 1 GiB block that needs too many reserved areas, when there is no
/// plan.
fn block_row(d: &mut Doc, a: &Analysis, block: u64, needed: usize) {
    let (lo, hi) = (block, block.saturating_add(GIB));
    let cuts: Vec<u64> = a.map.usable.iter().flat_map(|&(s, e)| [s, e]).collect();
    let ps: Vec<(u64, u64, Width)> = pieces(cuts.clone(), lo, hi)
        .into_iter()
        .map(|(s, e)| (s, e, Width::Proportional))
        .collect();
    let scale = Scale::new(&ps, BAR_X, BAR_W);
    let y = d.y;
    d.text(
        20.0,
        y + 12.0,
        "row",
        "start",
        &format!(
            "1 GiB block [{lo:#x}, {hi:#x}): {needed} holes to reserve, the module allows {} per TDMR",
            a.limits().max_reserved_per_tdmr
        ),
    );
    let bar_y = y + 20.0;
    lane_names(d, bar_y, "");
    memory_lanes(d, a, None, &scale, lo, hi, bar_y);
    let low_y = bar_y + NODE_LANE + MEM_LANE + 2.0;
    addr_ticks(d, &scale, &cuts, lo, hi, low_y + 4.0);
    d.y = low_y + 34.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pieces_stay_visible() {
        let ps = [
            (0, 1 << 40, Width::Proportional),
            ((1 << 40), (1 << 40) + 4096, Width::Proportional),
            ((1 << 40) + 4096, 2 << 40, Width::Proportional),
        ];
        let s = Scale::new(&ps, 0.0, 1000.0);
        let w = s.x((1 << 40) + 4096) - s.x(1 << 40);
        assert!((w - MIN_PIECE).abs() < 1e-9, "{w}");
        assert!((s.x(2 << 40) - 1000.0).abs() < 1e-9);
        assert!((s.x(1 << 40) - 498.0).abs() < 1e-3);
    }

    #[test]
    fn fixed_pieces_keep_their_width() {
        let ps = [
            (0, 10, Width::Proportional),
            (10, 1000, Width::Fixed(50.0)),
            (1000, 1010, Width::Proportional),
        ];
        let s = Scale::new(&ps, 10.0, 150.0);
        assert!((s.x(10) - 60.0).abs() < 1e-9);
        assert!((s.x(1000) - 110.0).abs() < 1e-9);
        assert!((s.x(1010) - 160.0).abs() < 1e-9);
        assert_eq!(s.cut, [(10, 1000)]);
    }

    #[test]
    fn too_many_pieces_share_the_width() {
        let ps: Vec<(u64, u64, Width)> =
            (0..1000).map(|i| (i, i + 1, Width::Proportional)).collect();
        let s = Scale::new(&ps, 0.0, 100.0);
        assert!((s.x(1000) - 100.0).abs() < 1e-6);
    }

    #[test]
    fn long_lines_wrap() {
        assert_eq!(wrap("short", 10), ["short"]);
        assert_eq!(
            wrap("aaa bbb ccc ddd", 8),
            ["aaa bbb", "    ccc", "    ddd"]
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
