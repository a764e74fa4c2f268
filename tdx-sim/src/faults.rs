//! Fault injection: scripted faults ("on the Nth call of leaf L, return S")
//! and seeded random faults limited to what the real module can return for
//! that leaf.
//!
//! An injected status replaces the call: the leaf does not run, nothing
//! changes in the module, and the output registers are left as they were
//! (callers must not trust outputs after an error anyway). The exception is
//! [`FaultAction::StopEarly`], which lets a resumable leaf make some progress
//! and then report `TDX_INTERRUPTED_RESUMABLE`, as an interrupt would.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tdx_types::{Leaf, OperandId, TdxStatus};

/// What a fault does to the call it hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Return this status without running the leaf.
    Status(TdxStatus),
    /// Run a resumable leaf (TDH.EXT.MEM.ADD, TDH.EXT.INIT) for at most
    /// `after` units of work (list entries, init steps), then return
    /// `TDX_INTERRUPTED_RESUMABLE` with its resume state saved.
    StopEarly {
        /// Units of work done before the interruption.
        after: u32,
    },
    /// Run a resumable leaf for at most `after` units of work, then fail
    /// with `status` instead of being interrupted: the work done stays done
    /// (the module took those pages), as when a real call fails on an entry
    /// in the middle of its list.
    FailAfter {
        /// Units of work done before the failure.
        after: u32,
        /// The error returned.
        status: TdxStatus,
    },
}

/// A scripted fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The leaf it hits.
    pub leaf: Leaf,
    /// Which call of that leaf: 1 = the first call counted. Calls are counted
    /// from the moment the plan holds its first fault (scripted or random).
    pub nth: u64,
    /// What happens.
    pub action: FaultAction,
}

impl Fault {
    /// On the `nth` call of `leaf`, return `status`.
    pub fn status(leaf: Leaf, nth: u64, status: TdxStatus) -> Self {
        Self {
            leaf,
            nth,
            action: FaultAction::Status(status),
        }
    }

    /// On the `nth` call of `leaf`, do `after` units of work, then fail with
    /// `status`.
    pub fn fail_after(leaf: Leaf, nth: u64, after: u32, status: TdxStatus) -> Self {
        Self {
            leaf,
            nth,
            action: FaultAction::FailAfter { after, status },
        }
    }

    /// On the `nth` call of `leaf`, stop after `after` units of work.
    pub fn stop_early(leaf: Leaf, nth: u64, after: u32) -> Self {
        Self {
            leaf,
            nth,
            action: FaultAction::StopEarly { after },
        }
    }
}

/// The statuses the module 1.5 source can return from `leaf` that a host
/// must be ready for without being wrong (busy, interrupted, entropy), and
/// whether the leaf is resumable. Random faults pick only from these.
pub fn transient_statuses(leaf: Leaf) -> (&'static [TdxStatus], bool) {
    const SYS_BUSY: &[TdxStatus] = &[TdxStatus::SYS_BUSY];
    const KEY_CONFIG: &[TdxStatus] = &[
        TdxStatus::SYS_BUSY,
        TdxStatus::KEY_GENERATION_FAILED,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::KET),
    ];
    const BUSY_RCX: &[TdxStatus] = &[TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX)];
    const BUSY: TdxStatus = TdxStatus::OPERAND_BUSY;
    const MNG_CREATE: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::KOT),
        TdxStatus::RND_NO_ENTROPY,
    ];
    const MNG_KEY_CONFIG: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::KET),
        TdxStatus::KEY_GENERATION_FAILED,
    ];
    const MNG_ADDCX: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::RDX),
        TdxStatus::RND_NO_ENTROPY,
    ];
    const BUSY_TDR_RCX: &[TdxStatus] = &[BUSY.with_operand(OperandId::RCX)];
    // The locks each leaf takes, in the module's order.
    const VP_CREATE: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::RCX),
    ];
    const VP_ADDCX: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::TDR),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::RCX),
    ];
    const VP_INIT: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::TDR),
        BUSY.with_operand(OperandId::OP_STATE),
    ];
    const VP_FLUSH: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::TDR),
    ];
    const SEPT_ADD_AUG: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::SEPT_TREE),
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::R8),
    ];
    const BUSY_SEPT: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::SEPT_TREE),
        BUSY.with_operand(OperandId::RCX),
    ];
    // DEMOTE and PROMOTE also stop, without a change, when a host
    // interrupt is pending (`tdh_mem_page_demote.c`,
    // `tdh_mem_page_promote.c`: TDX_INTERRUPTED_RESTARTABLE).
    const DEMOTE_PROMOTE: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::SEPT_TREE),
        BUSY.with_operand(OperandId::RCX),
        TdxStatus::INTERRUPTED_RESTARTABLE,
    ];
    // PAGE.ADD: TDR_X(RDX) and EXPL(R8); no tree or op-state lock.
    const PAGE_ADD: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::R8),
    ];
    const TRACK: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::OP_STATE),
        BUSY.with_operand(OperandId::TD_EPOCH),
        TdxStatus::PREVIOUS_TLB_EPOCH_BUSY,
    ];
    const BUSY_TDR_RDX: &[TdxStatus] = &[BUSY.with_operand(OperandId::RDX)];
    const BUSY_KOT: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::KOT),
    ];
    const CACHE_WB: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::WBCACHE),
        BUSY.with_operand(OperandId::KOT),
    ];
    const RECLAIM: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::TDR),
    ];
    // Dynamic PAMT (module 1.5.16+, `tdh_phymem_pamt_add.c`,
    // `tdh_phymem_pamt_remove.c`): the range's 2M entry, then the pair
    // pages' walks.
    const PAMT_ADD: &[TdxStatus] = &[
        BUSY.with_operand(OperandId::RCX),
        BUSY.with_operand(OperandId::RDX),
        BUSY.with_operand(OperandId::R8),
    ];
    match leaf {
        Leaf::PHYMEM_PAMT_ADD => (PAMT_ADD, false),
        Leaf::PHYMEM_PAMT_REMOVE => (BUSY_RCX, false),
        Leaf::SYS_INIT | Leaf::SYS_LP_INIT | Leaf::SYS_CONFIG | Leaf::SYS_SHUTDOWN => {
            (SYS_BUSY, false)
        }
        Leaf::SYS_KEY_CONFIG => (KEY_CONFIG, false),
        Leaf::SYS_TDMR_INIT | Leaf::PHYMEM_PAGE_RDMD | Leaf::PHYMEM_PAGE_WBINVD => {
            (BUSY_RCX, false)
        }
        Leaf::PHYMEM_PAGE_RECLAIM => (RECLAIM, false),
        Leaf::EXT_MEM_ADD | Leaf::EXT_INIT => (&[], true),
        Leaf::PHYMEM_CACHE_WB => (CACHE_WB, true),
        // The locks each TD leaf takes, and key generation.
        Leaf::MNG_CREATE => (MNG_CREATE, false),
        Leaf::MNG_KEY_CONFIG => (MNG_KEY_CONFIG, false),
        Leaf::MNG_ADDCX => (MNG_ADDCX, false),
        Leaf::MNG_INIT | Leaf::MR_FINALIZE => (BUSY_TDR_RCX, false),
        Leaf::MR_EXTEND => (BUSY_TDR_RDX, false),
        Leaf::VP_CREATE => (VP_CREATE, false),
        Leaf::VP_ADDCX => (VP_ADDCX, false),
        Leaf::VP_INIT => (VP_INIT, false),
        Leaf::VP_FLUSH => (VP_FLUSH, false),
        Leaf::MEM_SEPT_ADD | Leaf::MEM_PAGE_AUG => (SEPT_ADD_AUG, false),
        Leaf::MEM_PAGE_ADD => (PAGE_ADD, false),
        Leaf::MEM_SEPT_REMOVE
        | Leaf::MEM_RANGE_BLOCK
        | Leaf::MEM_RANGE_UNBLOCK
        | Leaf::MEM_PAGE_REMOVE => (BUSY_SEPT, false),
        Leaf::MEM_PAGE_DEMOTE | Leaf::MEM_PAGE_PROMOTE => (DEMOTE_PROMOTE, false),
        Leaf::MEM_TRACK => (TRACK, false),
        Leaf::MNG_VPFLUSHDONE | Leaf::MNG_KEY_FREEID => (BUSY_KOT, false),
        _ => (&[], false),
    }
}

/// The fault plan of a simulator.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    scripted: Vec<Fault>,
    random: Option<RandomFaults>,
    /// Calls seen per leaf number.
    calls: std::collections::BTreeMap<u16, u64>,
    /// Faults that fired, in order.
    fired: Vec<(Leaf, u64, FaultAction)>,
}

#[derive(Debug, Clone)]
struct RandomFaults {
    rng: ChaCha8Rng,
    per_million: u32,
}

impl FaultPlan {
    /// Adds a scripted fault.
    pub fn push(&mut self, f: Fault) {
        self.scripted.push(f);
    }

    /// Random faults: each call of a leaf that has transient statuses fails
    /// with probability `per_million` / 1 000 000, reproducibly for `seed`.
    pub fn random(&mut self, seed: u64, per_million: u32) {
        self.random = Some(RandomFaults {
            rng: ChaCha8Rng::seed_from_u64(seed),
            per_million,
        });
    }

    /// Counts a call of `leaf` and returns the fault it hits, if any.
    pub(crate) fn on_call(&mut self, leaf: Leaf) -> Option<FaultAction> {
        if self.scripted.is_empty() && self.random.is_none() {
            return None;
        }
        let n = self.calls.entry(leaf.0).or_insert(0);
        *n += 1;
        let nth = *n;
        let mut hit = self
            .scripted
            .iter()
            .find(|f| f.leaf == leaf && f.nth == nth)
            .map(|f| f.action);
        if hit.is_none()
            && let Some(r) = &mut self.random
        {
            let (statuses, resumable) = transient_statuses(leaf);
            let n_choices = statuses.len() + usize::from(resumable);
            if n_choices > 0 && r.rng.next_u32() % 1_000_000 < r.per_million {
                let pick = r.rng.next_u32() as usize % n_choices;
                hit = Some(match statuses.get(pick) {
                    Some(&s) => FaultAction::Status(s),
                    None => FaultAction::StopEarly {
                        after: r.rng.next_u32() % 4,
                    },
                });
            }
        }
        if let Some(a) = hit {
            self.fired.push((leaf, nth, a));
        }
        hit
    }

    /// The faults that fired so far: leaf, call number, action.
    pub fn fired(&self) -> &[(Leaf, u64, FaultAction)] {
        &self.fired
    }

    /// Calls of `leaf` seen since the first fault was planned (calls made
    /// while no fault was planned are not counted).
    pub fn calls(&self, leaf: Leaf) -> u64 {
        self.calls.get(&leaf.0).copied().unwrap_or(0)
    }
}
