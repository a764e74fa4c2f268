//! The TDMR/PAMT planner: from a machine's memory map and the module's
//! limits to TDMRs, reserved areas, and PAMT sizes and placement.
//!
//! The planner is a pure function ([`plan`]): no allocation of physical
//! memory, no SEAMCALL. Bring-up asks the `Platform` for exactly the PAMT
//! ranges of the plan; when it cannot get one, it adds that range to
//! [`PlanInput::avoid`] and plans again.
//!
//! Two strategies share the output type:
//!
//! - [`Strategy::Best`] finds a plan whenever one exists within the limits
//!   (the variant's docs say how), never uses more PAMT memory than Linux's
//!   construction on a map where both succeed, and keeps every PAMT on
//!   its TDMR's NUMA node unless the limits (or that bound) leave no room
//!   there ([`PlannedTdmr::pamt_remote`] says why).
//! - [`Strategy::Linux`] reproduces Linux's construction
//!   (`construct_tdmrs` in `arch/x86/virt/vmx/tdx/tdx.c`),
//!   including its failures, so an operator can see what a TDX kernel
//!   would do on the same map.
//!
//! [`check`] verifies a plan byte by byte against every rule of
//! TDH.SYS.CONFIG (`tdh_sys_config.c` in Intel's module source) and against
//! the coverage goal;
//! the planner runs it on its own output before returning it.
//!
//! # Bounded work
//!
//! The input is untrusted (a memory map from a file, limits from module
//! metadata), so the planner's work is bounded by the input's size,
//! whatever the limits say. With `N` usable ranges, [`plan_with_work`]
//! counts *rounds*: one partition of the memory into TDMRs, one placement
//! of the PAMTs, or (Linux) one TDMR's PAMT allocation and reserved areas.
//! [`work_bound`] is the most rounds, linear in `N`: an area budget above
//! the number of holes (at most `N + 1`) cuts the same TDMRs as that
//! number, so [`Strategy::Best`] starts there, skips budgets that cut the
//! same TDMRs, and halves its largest TDMR at most 23 times; Linux makes at
//! most one TDMR per range. A round walks the ranges, and the PAMT slots
//! (memory clipped to TDMRs, only those large enough for a PAMT) once per
//! TDMR at most: `O(T·S)` steps for `T` TDMRs and `S` slots, where a PAMT
//! that no slot of its node can hold costs no walk. `T` is at most
//! MAX_TDMRS, or, when that limit is larger, the 1 GiB blocks that hold
//! memory: on a module's real limits (64 TDMRs) a round is linear in `N`.
//! MAX_TDMRS and MAX_RESERVED_PER_TDMR up to `usize::MAX` cost no more
//! rounds than limits equal to what the map can use.

use alloc::vec::Vec;
use core::fmt;

use tdx_types::abi::TdmrInfo;

mod best;
mod check;
mod intervals;
mod linux;

pub use check::{CheckError, check};

/// 1 GiB: TDMR granularity.
pub const GIB: u64 = 1 << 30;
/// 4 KiB: page granularity.
pub const PAGE: u64 = 4096;
/// Usable memory below this is never TDX memory (Linux skips the first MiB).
pub const LOW_MEMORY_END: u64 = 1 << 20;
/// One past the highest physical address the module accepts.
pub const MAX_PA: u64 = 1 << 52;

/// A range of usable RAM on a NUMA node: `[start, end)` in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// NUMA node.
    pub node: u32,
}

/// The module's limits, from its global metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// MAX_TDMRS.
    pub max_tdmrs: usize,
    /// MAX_RESERVED_PER_TDMR.
    pub max_reserved_per_tdmr: usize,
    /// PAMT entry sizes in bytes for the 4K, 2M and 1G levels.
    pub pamt_entry_size: [u16; 3],
    /// With Dynamic PAMT: bits per 4 KiB page of the bitmap that replaces
    /// the 4K level (PAMT_PAGE_BITMAP_ENTRY_BITS).
    pub dpamt_bitmap_bits: Option<u8>,
}

impl Limits {
    /// TDX module 1.5: 64 TDMRs, 16 reserved areas each, 16-byte entries.
    pub const TDX_1_5: Self = Self {
        max_tdmrs: 64,
        max_reserved_per_tdmr: 16,
        pamt_entry_size: [16, 16, 16],
        dpamt_bitmap_bits: None,
    };

    /// PAMT bytes per level (4K, 2M, 1G) for a TDMR of `size` bytes, each
    /// rounded up to 4 KiB (what the module requires, then page aligned),
    /// and at least one page: a level is always a real range of host
    /// memory, even under limits that would make it empty (an entry size
    /// or bitmap width of 0, which no module reports).
    pub fn pamt_sizes(&self, size: u64) -> [u64; 3] {
        self.pamt_required(size)
            .map(|bytes| bytes.next_multiple_of(PAGE).max(PAGE))
    }

    /// The PAMT bytes the module requires (before rounding) per level.
    pub(crate) fn pamt_required(&self, size: u64) -> [u64; 3] {
        let l4k = match self.dpamt_bitmap_bits {
            Some(bits) => ((size >> 12) * u64::from(bits)).div_ceil(8),
            None => (size >> 12) * u64::from(self.pamt_entry_size[0]),
        };
        [
            l4k,
            (size >> 21) * u64::from(self.pamt_entry_size[1]),
            (size >> 30) * u64::from(self.pamt_entry_size[2]),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::TDX_1_5
    }
}

/// What the planner plans for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    /// Usable RAM with NUMA nodes, in any order. The planner normalizes it
    /// as Linux does: sorted; where ranges overlap, the first (lowest start)
    /// keeps the bytes; ranges of one node that touch or overlap merged at
    /// byte precision; then each range rounded inward to whole 4 KiB pages.
    /// So ranges of one node that touch inside a page keep that page, and a
    /// page holding the boundary of two nodes is on neither: it is not TDX
    /// memory (Linux drops it too, see [`Strategy::Linux`]).
    pub usable: Vec<MemRange>,
    /// Convertible memory ranges `[start, end)` in the order the module
    /// reports them. `None`: assume exactly the usable ranges are
    /// convertible, as Linux does.
    ///
    /// The list must be one a module accepts: empty entries (`start ==
    /// end`) are skipped, and the others 4 KiB aligned, sorted by start and
    /// disjoint (they may touch). TDH.SYS.INIT refuses any other list with
    /// TDX_CMR_LIST_INVALID (`check_cmrs` in Intel's
    /// `src/vmm_dispatcher/api_calls/tdh_sys_init.c`), so planning for one
    /// would plan for a machine that cannot exist: [`plan`] answers
    /// [`PlanError::BadCmr`].
    pub cmrs: Option<Vec<(u64, u64)>>,
    /// The module's limits.
    pub limits: Limits,
    /// Ranges the PAMTs must not be placed in (the platform could not give
    /// them last time).
    pub avoid: Vec<(u64, u64)>,
}

impl PlanInput {
    /// Input with the usable ranges and default limits.
    pub fn new(usable: Vec<MemRange>) -> Self {
        Self {
            usable,
            cmrs: None,
            limits: Limits::default(),
            avoid: Vec::new(),
        }
    }
}

/// Which construction to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Find a plan whenever one exists; node-local PAMTs, then fewest
    /// reserved areas; never more PAMT than Linux.
    ///
    /// Terms: *memory* is usable RAM from 1 MiB up; a *hole* is a maximal gap
    /// between memory; a byte is *forced* if it must be reserved: it is outside
    /// every CMR, or it holds a PAMT. A TDMR needs one reserved area per hole
    /// (clipped to the TDMR) that contains a forced byte: the whole hole can be
    /// reserved as one area, since nobody uses its bytes, and a hole that lies
    /// inside a CMR needs no area at all (CMR-aware).
    ///
    /// 1. **Runs.** The 1 GiB blocks that hold memory form runs of consecutive
    ///    blocks, one NUMA node to a run: where the node changes a new run
    ///    starts, at the next 1 GiB line when the change is inside a block (as
    ///    Linux starts a new TDMR), so each TDMR's memory is on the node its
    ///    PAMT goes on. Each run is cut into TDMRs greedily: every TDMR is as long as
    ///    it can be while its holes fit the reserved-area limit. The count of
    ///    areas in `[a, b)` only grows with `b`, so the greedy cut gives the
    ///    fewest TDMRs, and a 1 GiB block that alone needs too many areas is
    ///    reported as such ("block X needs N areas").
    /// 2. **Too many TDMRs.** Runs are joined across their gaps, smallest gap
    ///    first (the gap becomes reserved, and costs PAMT for its size), as long
    ///    as that lowers the count, until the count fits.
    /// 3. **PAMTs.** Each TDMR's PAMT (4K, 2M, 1G levels back to back) goes on
    ///    the TDMR's own NUMA node (the node of its first usable byte, where
    ///    Linux allocates it): the module reads a page's PAMT entries on every
    ///    SEAMCALL that is handed the page. On that node it is carved from
    ///    memory next to a hole that already needs an area, so the two merge
    ///    and no area is added; only when no such place has room does it take
    ///    a new area, in a TDMR that has one to spare. TDMRs whose node has no
    ///    place are placed last, on other nodes, the same way, and the plan
    ///    says why ([`RemoteReason`]). If a PAMT has no place at all, a
    ///    placement that puts fewest areas first (the node only breaking
    ///    ties) is tried, then step 1 again with one area fewer per TDMR,
    ///    leaving room.
    /// 4. **Bringing PAMTs home.** A plan with remote PAMTs is tried again
    ///    with smaller TDMRs: a TDMR whose node has no run for its PAMT is cut
    ///    into pieces whose PAMTs fit the node's largest run, and step 1 runs
    ///    with fewer areas per TDMR (room for an area at home). A plan with
    ///    fewer remote PAMTs is taken if it stays within MAX_TDMRS and needs
    ///    no more PAMT than Linux's construction on the map (each extra TDMR
    ///    costs at least 4 KiB).
    ///
    /// Runs are only split where the node changes (where Linux's construction
    /// starts a new TDMR too) or the area limit forces it, and only joined
    /// where the TDMR limit forces it, so on a map where Linux's construction
    /// also succeeds the plan of steps 1 to 3 has no more TDMR bytes and no
    /// more TDMRs than Linux's, hence no more PAMT; step 4 keeps that bound.
    Best,
    /// Linux's TDMR construction (`construct_tdmrs` in
    /// `arch/x86/virt/vmx/tdx/tdx.c`), reproduced step by step so an operator
    /// can see what a TDX kernel would do on a map, including how it fails.
    ///
    /// 1. The memory list: every usable range with its node, the first 1 MiB
    ///    cut off (`build_tdx_memlist`).
    /// 2. `fill_out_tdmrs`: one TDMR per 1 GiB-aligned cover of consecutive
    ///    blocks; a block that starts in the previous TDMR's last GiB starts a
    ///    new TDMR at its end ("TDMRs exhausted" past MAX_TDMRS).
    /// 3. PAMTs: one contiguous allocation per TDMR (4K, 2M, 1G levels back to
    ///    back) on the node of the first block that ends above the TDMR base.
    ///    Linux takes it from `alloc_contig_pages`, whose result depends on the
    ///    running kernel; the model here takes the lowest free run of the node
    ///    at or above 4 GiB (ZONE_NORMAL), then below, then other nodes in
    ///    order. Failure is -ENOMEM. A PAMT off the TDMR's node is marked
    ///    [`RemoteReason::NoRoom`].
    /// 4. Reserved areas, per TDMR: one per hole (with Linux's loop exactly,
    ///    including its `end < base` test), then one per PAMT that overlaps the
    ///    TDMR, clipped; no merging; sorted; "reserved areas exhausted" past
    ///    MAX_RESERVED_PER_TDMR.
    ///
    /// Linux does not read CMRs, so its plan may still be refused by
    /// TDH.SYS.CONFIG; [`check`](fn@check) tells.
    Linux,
}

/// A reserved area of a TDMR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservedArea {
    /// Offset from the TDMR base.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Where one TDMR's PAMT lives: `(base, size)` per level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PamtPlacement {
    /// The 4K level (or the Dynamic PAMT bitmap).
    pub l4k: (u64, u64),
    /// The 2M level.
    pub l2m: (u64, u64),
    /// The 1G level.
    pub l1g: (u64, u64),
}

impl PamtPlacement {
    /// The three levels laid out back to back from `base` (4K, 2M, 1G, as
    /// Linux lays them out).
    pub fn contiguous(base: u64, sizes: [u64; 3]) -> Self {
        Self {
            l4k: (base, sizes[0]),
            l2m: (base + sizes[0], sizes[1]),
            l1g: (base + sizes[0] + sizes[1], sizes[2]),
        }
    }

    /// Levels as `(base, size)`: 4K, 2M, 1G.
    pub fn levels(&self) -> [(u64, u64); 3] {
        [self.l4k, self.l2m, self.l1g]
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.l4k.1 + self.l2m.1 + self.l1g.1
    }
}

/// Why a TDMR's PAMT is not on the TDMR's own NUMA node.
///
/// The module reads a page's PAMT entries on every SEAMCALL that is handed
/// the page, so a PAMT on another node costs a remote access each time.
/// Both strategies keep each PAMT on its TDMR's node (as Linux allocates
/// it: `alloc_contig_pages` on the node of the TDMR's first memory block)
/// and place it elsewhere only for one of these reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteReason {
    /// The node has no free run of usable memory large enough for the PAMT
    /// (its three levels are one contiguous run, inside one TDMR): the node
    /// is too small or too fragmented, other PAMTs took the room, or the
    /// rest is in ranges to avoid. [`Strategy::Best`] first tries cutting
    /// the TDMR smaller (smaller PAMTs), within MAX_TDMRS and without more
    /// PAMT memory than Linux's construction.
    NoRoom,
    /// The node has room, but every place there would need a reserved area
    /// in a TDMR that has none to spare (MAX_RESERVED_PER_TDMR), also with
    /// fewer areas per TDMR (more TDMRs) within MAX_TDMRS and without more
    /// PAMT memory than Linux's construction. Only [`Strategy::Best`] reports
    /// it (Linux ignores the limit when it places a PAMT, and fails if the
    /// areas run out).
    ReservedAreaLimit,
}

impl RemoteReason {
    /// A short machine-readable name (`"no_room"`, `"reserved_area_limit"`).
    pub fn kind(self) -> &'static str {
        match self {
            Self::NoRoom => "no_room",
            Self::ReservedAreaLimit => "reserved_area_limit",
        }
    }
}

impl fmt::Display for RemoteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoRoom => "its node has no free run of memory large enough",
            Self::ReservedAreaLimit => {
                "every place on its node needs a reserved area the limit does not leave"
            }
        })
    }
}

/// One planned TDMR.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlannedTdmr {
    /// Base (1 GiB aligned).
    pub base: u64,
    /// Size (a multiple of 1 GiB).
    pub size: u64,
    /// NUMA node of its first usable byte (Linux's `tdmr_get_nid`): the
    /// node its PAMT belongs on.
    pub node: u32,
    /// Reserved areas, sorted by offset.
    pub reserved: Vec<ReservedArea>,
    /// Its PAMT.
    pub pamt: PamtPlacement,
    /// The NUMA node of the memory its PAMT is carved from (one node: the
    /// three levels are one run of memory on one node).
    pub pamt_node: u32,
    /// `None` when the PAMT is on the TDMR's node (`pamt_node == node`);
    /// else why it is not.
    pub pamt_remote: Option<RemoteReason>,
}

impl PlannedTdmr {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// The TDMR_INFO the module reads.
    pub fn tdmr_info(&self) -> TdmrInfo {
        let mut t = TdmrInfo::with_range(self.base, self.size);
        t.set_pamt_4k(self.pamt.l4k.0, self.pamt.l4k.1);
        t.set_pamt_2m(self.pamt.l2m.0, self.pamt.l2m.1);
        t.set_pamt_1g(self.pamt.l1g.0, self.pamt.l1g.1);
        for (i, r) in self.reserved.iter().enumerate() {
            // The planner never makes more areas than the TDMR_INFO holds;
            // `check` verifies the count against the module's limit.
            let _ = t.set_reserved_area(i, r.offset, r.size);
        }
        t
    }
}

/// A plan: TDMRs with their reserved areas and PAMTs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Plan {
    /// TDMRs, sorted by base.
    pub tdmrs: Vec<PlannedTdmr>,
    /// How it was made.
    pub strategy: Strategy,
    /// Usable bytes from 1 MiB up (after 4 KiB rounding).
    pub usable_bytes: u64,
}

impl Plan {
    /// The TDMR whose range `[base, end)` holds `pa` (reserved or not), in
    /// O(log n).
    pub fn tdmr_at(&self, pa: u64) -> Option<&PlannedTdmr> {
        let i = self.tdmrs.partition_point(|t| t.end() <= pa);
        self.tdmrs.get(i).filter(|t| t.base <= pa)
    }

    /// The NUMA node whose memory should back the PAMT of the page at `pa`:
    /// the node of the TDMR that holds it (the node its static PAMT belongs on,
    /// and the placement hint for Dynamic PAMT page pairs of its 2 MiB
    /// ranges), or `None` outside every TDMR. O(log n).
    pub fn pamt_node_hint(&self, pa: u64) -> Option<u32> {
        self.tdmr_at(pa).map(|t| t.node)
    }

    /// True if the byte at `pa` is TDX memory under this plan: inside a
    /// TDMR and outside its reserved areas.
    pub fn covers(&self, pa: u64) -> bool {
        self.tdmr_at(pa).is_some_and(|t| {
            !t.reserved
                .iter()
                .any(|r| (t.base + r.offset..t.base + r.offset + r.size).contains(&pa))
        })
    }

    /// How many TDMRs have their PAMT on another NUMA node than their own
    /// (0 on every real memory map the project has).
    pub fn remote_pamts(&self) -> usize {
        self.tdmrs
            .iter()
            .filter(|t| t.pamt_remote.is_some())
            .count()
    }

    /// Total PAMT bytes.
    pub fn pamt_bytes(&self) -> u64 {
        self.tdmrs.iter().map(|t| t.pamt.bytes()).sum()
    }

    /// The largest number of reserved areas in one TDMR.
    pub fn max_reserved(&self) -> usize {
        self.tdmrs
            .iter()
            .map(|t| t.reserved.len())
            .max()
            .unwrap_or(0)
    }

    /// The TDMR_INFOs, in order.
    pub fn tdmr_infos(&self) -> Vec<TdmrInfo> {
        self.tdmrs.iter().map(PlannedTdmr::tdmr_info).collect()
    }

    /// Every PAMT range, `(base, size)`, per TDMR and level.
    pub fn pamt_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.tdmrs.iter().flat_map(|t| t.pamt.levels())
    }
}

/// Why there is no plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No usable memory from 1 MiB up.
    #[error("no usable memory above 1 MiB")]
    NoMemory,
    /// Usable memory outside every convertible memory range.
    #[error("usable memory [{start:#x}, {end:#x}) is not inside one convertible memory range")]
    NotConvertible {
        /// Start of the offending memory.
        start: u64,
        /// End.
        end: u64,
    },
    /// Memory above what a TDMR can describe.
    #[error("usable memory reaches {end:#x}, above the 52-bit physical address limit")]
    TooHigh {
        /// End of the highest range.
        end: u64,
    },
    /// A single 1 GiB block needs more reserved areas than a TDMR may have.
    #[error("1 GiB block {block:#x} needs {needed} reserved areas, the module allows {max}")]
    TooManyReservedAreas {
        /// Base of the block.
        block: u64,
        /// Areas it needs.
        needed: usize,
        /// MAX_RESERVED_PER_TDMR.
        max: usize,
    },
    /// More TDMRs needed than the module allows.
    #[error("the map needs {needed} TDMRs, the module allows {max}")]
    TooManyTdmrs {
        /// TDMRs needed.
        needed: usize,
        /// MAX_TDMRS.
        max: usize,
    },
    /// Linux's construction ran out of reserved areas in a TDMR.
    #[error("TDMR [{base:#x}, {end:#x}): reserved areas exhausted (needs more than {max})")]
    ReservedAreasExhausted {
        /// TDMR base.
        base: u64,
        /// TDMR end.
        end: u64,
        /// MAX_RESERVED_PER_TDMR.
        max: usize,
    },
    /// No room for a PAMT.
    #[error("no room for the {bytes}-byte PAMT of TDMR [{base:#x}, {end:#x})")]
    NoPamtSpace {
        /// TDMR base.
        base: u64,
        /// TDMR end.
        end: u64,
        /// PAMT bytes.
        bytes: u64,
    },
    /// A CMR list no module accepts (see [`PlanInput::cmrs`]).
    #[error("CMR {index} [{start:#x}, {end:#x}) {problem}")]
    BadCmr {
        /// Index of the offending CMR in the list.
        index: usize,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
        /// What is wrong with it.
        problem: CmrProblem,
    },
    /// The plan failed the planner's own check (a planner bug; the plan is
    /// not returned).
    #[error("internal error: the plan breaks a rule: {0}")]
    Internal(CheckError),
}

impl PlanError {
    /// A short machine-readable kind (`"too_many_reserved_areas"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoMemory => "no_memory",
            Self::NotConvertible { .. } => "not_convertible",
            Self::TooHigh { .. } => "too_high",
            Self::TooManyReservedAreas { .. } | Self::ReservedAreasExhausted { .. } => {
                "too_many_reserved_areas"
            }
            Self::TooManyTdmrs { .. } => "too_many_tdmrs",
            Self::NoPamtSpace { .. } => "no_pamt_space",
            Self::BadCmr { .. } => "bad_cmr",
            Self::Internal(_) => "internal",
        }
    }
}

/// What is wrong with a CMR in [`PlanError::BadCmr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmrProblem {
    /// The end is below the start.
    #[error("ends before it starts")]
    Inverted,
    /// Start or end is not 4 KiB aligned.
    #[error("is not 4 KiB aligned")]
    Unaligned,
    /// It starts before an earlier non-empty CMR ends (out of order or
    /// overlapping).
    #[error("starts before CMR {earlier} ends (CMRs must be sorted and disjoint)")]
    Overlaps {
        /// Index of the earlier CMR.
        earlier: usize,
    },
}

/// Plans TDMRs and PAMTs for `input` with `strategy`.
///
/// # Examples
///
/// ```
/// use tdx_api::plan::{MemRange, PlanInput, Strategy, check, plan};
///
/// const GIB: u64 = 1 << 30;
/// // Two NUMA nodes, with the usual hole below 4 GiB.
/// let input = PlanInput::new(vec![
///     MemRange { start: 0, end: 2 * GIB, node: 0 },
///     MemRange { start: 4 * GIB, end: 18 * GIB, node: 0 },
///     MemRange { start: 18 * GIB, end: 34 * GIB, node: 1 },
/// ]);
/// let best = plan(&input, Strategy::Best).unwrap();
/// check(&best, &input).unwrap(); // every TDH.SYS.CONFIG rule, byte by byte
/// assert_eq!(best.remote_pamts(), 0); // each PAMT on its TDMR's node
/// for t in &best.tdmrs {
///     println!("TDMR [{:#x}, {:#x}) node {}: PAMT {} bytes", t.base, t.end(), t.node, t.pamt.bytes());
/// }
/// // Linux's construction, for comparison: never less PAMT than the best.
/// let linux = plan(&input, Strategy::Linux).unwrap();
/// assert!(best.pamt_bytes() <= linux.pamt_bytes());
/// ```
pub fn plan(input: &PlanInput, strategy: Strategy) -> Result<Plan, PlanError> {
    plan_with_work(input, strategy).0
}

/// [`plan`], and the rounds of work it took (see the module documentation,
/// *Bounded work*): never more than [`work_bound`] of the input.
pub fn plan_with_work(input: &PlanInput, strategy: Strategy) -> (Result<Plan, PlanError>, u64) {
    let norm = match Normalized::new(input) {
        Ok(n) => n,
        Err(e) => return (Err(e), 0),
    };
    let plan = match strategy {
        Strategy::Best => best::plan(&norm),
        Strategy::Linux => linux::plan(&norm),
    };
    let plan = plan.and_then(|plan| {
        if strategy == Strategy::Best {
            check::check_normalized(&plan, &norm).map_err(PlanError::Internal)?;
        }
        Ok(plan)
    });
    (plan, norm.work.get())
}

/// The most rounds of work [`plan`] does on `input`, whatever its limits:
/// linear in the number of usable ranges (module documentation, *Bounded
/// work*).
pub fn work_bound(input: &PlanInput) -> u64 {
    let ranges = input.usable.len() as u64;
    // Best: (areas budget + TDMR-size halvings) rounds of one partition
    // and two placements, then the locality pass (a partition and a
    // placement per budget, and Linux's construction); Linux: one round
    // per TDMR, at most one TDMR per range.
    let budget = ranges + 1;
    3 * (budget + CAP_HALVINGS) + (2 * budget + 1) + ranges + ranges
}

/// The most times [`Strategy::Best`] halves its largest TDMR (from
/// `MAX_PA`, 2^22 GiB, down to 1 GiB).
pub(crate) const CAP_HALVINGS: u64 = 23;

/// The input after normalization, shared by both strategies.
#[derive(Debug, Clone)]
pub(crate) struct Normalized {
    /// Usable RAM from 1 MiB up, 4 KiB aligned, sorted, disjoint; adjacent
    /// ranges on the same node merged.
    pub(crate) mem: Vec<MemRange>,
    /// Convertible memory as the module sees it: the merged CMR chains,
    /// sorted (`[start, end)`).
    pub(crate) cmr_chains: intervals::Chains,
    pub(crate) limits: Limits,
    pub(crate) avoid: Vec<(u64, u64)>,
    pub(crate) usable_bytes: u64,
    /// Rounds of work done so far ([`plan_with_work`]).
    pub(crate) work: core::cell::Cell<u64>,
}

/// The module's own check of its CMR list, in its order: each non-empty
/// CMR aligned, then not starting before the previous non-empty one ends.
fn check_cmrs(cmrs: &[(u64, u64)]) -> Result<(), PlanError> {
    let mut prev: Option<(usize, u64)> = None;
    for (index, &(start, end)) in cmrs.iter().enumerate() {
        let bad = |problem| PlanError::BadCmr {
            index,
            start,
            end,
            problem,
        };
        if start == end {
            continue;
        }
        if end < start {
            return Err(bad(CmrProblem::Inverted));
        }
        if start % PAGE != 0 || end % PAGE != 0 {
            return Err(bad(CmrProblem::Unaligned));
        }
        if let Some((earlier, prev_end)) = prev
            && start < prev_end
        {
            return Err(bad(CmrProblem::Overlaps { earlier }));
        }
        prev = Some((index, end));
    }
    Ok(())
}

impl Normalized {
    pub(crate) fn new(input: &PlanInput) -> Result<Self, PlanError> {
        // Linux's order (`mm/memblock.c`): memblock merges regions of one
        // node that touch or overlap, at byte precision; TDX then takes
        // each region's whole pages (`for_each_mem_pfn_range`: PFN_UP of
        // the start, PFN_DOWN of the end, in `build_tdx_memlist`). So
        // ranges that touch inside a page keep that page, and a page that
        // holds the boundary of two nodes is TDX memory on neither.
        let mut raw: Vec<MemRange> = input
            .usable
            .iter()
            .copied()
            .filter(|r| r.start < r.end)
            .collect();
        raw.sort();
        // Overlaps: keep the first claimant of each byte.
        let mut merged: Vec<MemRange> = Vec::with_capacity(raw.len());
        for r in raw {
            match merged.last_mut() {
                Some(l) if r.start <= l.end && r.node == l.node => l.end = l.end.max(r.end),
                Some(l) if r.start < l.end => {
                    if r.end > l.end {
                        let rest = MemRange {
                            start: l.end,
                            end: r.end,
                            node: r.node,
                        };
                        merged.push(rest);
                    }
                }
                _ => merged.push(r),
            }
        }
        let all: Vec<MemRange> = merged
            .iter()
            .filter_map(|r| {
                let start = r.start.checked_next_multiple_of(PAGE)?;
                let end = r.end & !(PAGE - 1);
                (start < end).then_some(MemRange { start, end, ..*r })
            })
            .collect();
        if let Some(top) = all.last()
            && top.end > MAX_PA
        {
            return Err(PlanError::TooHigh { end: top.end });
        }
        let mem: Vec<MemRange> = all
            .iter()
            .filter(|r| r.end > LOW_MEMORY_END)
            .map(|r| MemRange {
                start: r.start.max(LOW_MEMORY_END),
                ..*r
            })
            .collect();
        if mem.is_empty() {
            return Err(PlanError::NoMemory);
        }
        let cmrs: Vec<(u64, u64)> = match &input.cmrs {
            Some(c) => {
                check_cmrs(c)?;
                c.clone()
            }
            None => all.iter().map(|r| (r.start, r.end)).collect(),
        };
        let cmr_chains = intervals::Chains::new(&cmrs);
        for r in &mem {
            if !cmr_chains.within_one(r.start, r.end) {
                return Err(PlanError::NotConvertible {
                    start: r.start,
                    end: r.end,
                });
            }
        }
        let mut avoid: Vec<(u64, u64)> = input
            .avoid
            .iter()
            .map(|&(s, e)| {
                let e = e.checked_next_multiple_of(PAGE).unwrap_or(!(PAGE - 1));
                (s & !(PAGE - 1), e)
            })
            .collect();
        intervals::normalize(&mut avoid);
        let usable_bytes = mem.iter().map(|r| r.end - r.start).sum();
        Ok(Self {
            mem,
            cmr_chains,
            limits: input.limits,
            avoid,
            usable_bytes,
            work: core::cell::Cell::new(0),
        })
    }

    /// Counts one round of work.
    pub(crate) fn round(&self) {
        self.work.set(self.work.get() + 1);
    }

    /// The node of the first usable byte at or above `pa` (Linux: the first
    /// block whose end is above `pa`), or 0.
    pub(crate) fn node_at(&self, pa: u64) -> u32 {
        let i = self.mem.partition_point(|r| r.end <= pa);
        self.mem.get(i).map_or(0, |r| r.node)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.tdmrs.iter().enumerate() {
            write!(
                f,
                "TDMR {i}: [{:#x}, {:#x}) node {} reserved {} PAMT {} KiB at {:#x} node {}",
                t.base,
                t.end(),
                t.node,
                t.reserved.len(),
                t.pamt.bytes() >> 10,
                t.pamt.l4k.0,
                t.pamt_node
            )?;
            match t.pamt_remote {
                Some(why) => writeln!(f, " (remote: {why})")?,
                None => writeln!(f)?,
            }
        }
        write!(f, "PAMT total {} KiB", self.pamt_bytes() >> 10)
    }
}

#[cfg(test)]
mod tests;
