//! The key ownership table (KOT): the state of every private HKID, the KOT
//! lock, and per package the write-back table entry TDH.PHYMEM.CACHE.WB
//! works through (`src/common/data_structures/tdx_global_data.h`).

use std::sync::{Mutex, MutexGuard};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::locks::{self, Sharex};

/// State of a KeyID in the module's key ownership table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KotState {
    /// Free for TDH.MNG.CREATE.
    Free,
    /// Assigned to a TD.
    Assigned,
    /// Flushed (teardown started).
    Flushed,
    /// The global KeyID.
    Reserved,
}

/// What the KOT lock protects.
#[derive(Debug, Default)]
pub(crate) struct KotData {
    /// HKIDs not in the map are free.
    pub(crate) state: HashMap<u16, KotState>,
    /// Per HKID: packages that still have to run CACHE.WB for it
    /// (`wbinvd_bitmap`).
    pub(crate) wbinvd_pending: HashMap<u16, Vec<bool>>,
}

impl KotData {
    pub(crate) fn get(&self, hkid: u16) -> KotState {
        self.state.get(&hkid).copied().unwrap_or(KotState::Free)
    }
}

/// One package's write-back table entry.
#[derive(Debug, Default)]
pub(crate) struct WbtEntry {
    /// The entry's mutex (`wbt_entries[pkg].entry_lock`).
    pub(crate) lock: locks::Mutex,
    pub(crate) state: Mutex<WbtState>,
}

/// Where an interrupted CACHE.WB on a package stands.
#[derive(Debug, Default)]
pub(crate) struct WbtState {
    /// The next step of a write-back that can be resumed (the module's
    /// `intr_point`; `None` where the module has 0: nothing to resume).
    pub(crate) progress: Option<u32>,
    /// The HKIDs that were FLUSHED when the write-back started.
    pub(crate) hkid_flushed: HashSet<u16>,
}

/// The KOT and the write-back table.
#[derive(Debug)]
pub(crate) struct Kot {
    /// The KOT lock.
    pub(crate) lock: Sharex,
    data: Mutex<KotData>,
    /// Per package.
    pub(crate) wbt: Box<[WbtEntry]>,
}

impl Kot {
    pub(crate) fn new(packages: usize) -> Self {
        Self {
            lock: Sharex::new(),
            data: Mutex::default(),
            wbt: (0..packages).map(|_| WbtEntry::default()).collect(),
        }
    }

    /// The table's contents (the simulator's mutex; the module's KOT lock
    /// is the leaf's to take).
    pub(crate) fn data(&self) -> MutexGuard<'_, KotData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WbtEntry {
    pub(crate) fn state(&self) -> MutexGuard<'_, WbtState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
