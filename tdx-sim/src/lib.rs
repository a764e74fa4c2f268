//! A software model of the Intel TDX module and of the host it runs on.
//!
//! [`Simulator`] is a simulated TDX host built from a [`MachineDesc`]:
//! sparse physical memory with page accounting and a cache model, CPUs in
//! packages, a KeyID partition, and a TDX module that follows
//! `reference/tdx-module-model.md`. It implements `tdx_sys::Seamcall` (the
//! module) and `tdx_api::Platform` (the host services), so every layer of
//! tdx-rs runs on it unchanged, and it records every rule a host breaks
//! instead of letting it pass ([`Violation`]).
//!
//! Modelled so far (part 1): the module-wide leaves (TDH.SYS.INIT, LP.INIT,
//! RD, CONFIG v0/v1, KEY.CONFIG, TDMR.INIT, SHUTDOWN, LP.SHUTDOWN),
//! TDH.PHYMEM.PAGE.RDMD, the Extensions leaves (TDH.EXT.MEM.ADD,
//! TDH.EXT.INIT) on a profile that has them, and the dispatcher gate. The
//! TD leaves are not modelled yet: once the module is ready they answer
//! `TDX_OPERAND_INVALID` (operand RAX), as the model does for leaves it
//! leaves out.
//!
//! Memory use follows what a test touches: page contents are stored only
//! for pages written, and ownership, cache state and PAMT entries are range
//! maps and sparse maps.

#![warn(missing_docs)]

mod faults;
mod lp;
mod machine;
mod memory;
mod module;
mod profile;
mod rangemap;
mod sim;
mod td;
pub mod testkit;
pub mod trace;
mod violation;

pub use faults::{Fault, FaultAction, FaultPlan, transient_statuses};
pub use machine::{MAX_CMRS, MAX_LPS, MachineDesc, MachineError};
pub use memory::{Accounting, PageState};
pub use module::{KotState, PamtEntry, SysState};
pub use profile::{CpuidConfig, Profile};
pub use sim::{InvariantError, Simulator, Stats, seamcalls_by_name};
pub use td::{ARCH_CAPS_CONFIG_MASK, Lifecycle, MRTD_FIELD, OpState};
pub use trace::{Recorder, ReplaySummary, Trace, TraceError, TraceMachine, replay};
pub use violation::Violation;
