//! A software model of the Intel TDX module and of the host it runs on.
//!
//! [`Simulator`] is a simulated TDX host built from a [`MachineDesc`]:
//! sparse physical memory with page accounting and a cache model, CPUs in
//! packages, a KeyID partition, and a TDX module that follows Intel's
//! module 1.5 (`intel/tdx-module`, tag `TDX_1.5.01`, the default
//! [`Profile`]; [`Profile::tdx_1_5_05`] and [`Profile::tdx_1_5_16`] model
//! those releases' differences). It implements `tdx_sys::Seamcall` (the
//! module) and `tdx_api::Platform` (the host services), so every layer of
//! tdx-rs runs on it unchanged, and it records every rule a host breaks
//! instead of letting it pass ([`Violation`]).
//!
//! Modelled: the dispatcher gate; the module-wide leaves (TDH.SYS.INIT,
//! LP.INIT, RD, CONFIG v0/v1, KEY.CONFIG, TDMR.INIT, SHUTDOWN,
//! LP.SHUTDOWN); the Extensions leaves (TDH.EXT.MEM.ADD, TDH.EXT.INIT) on a
//! profile that has them; the TD leaves (TDH.MNG.*, TDH.VP.* including
//! ENTER, TDH.MEM.* but RELOCATE and MEM.RD/WR, TDH.MR.*, TDH.PHYMEM.*)
//! with every output register the module writes. TD entry (TDH.VP.ENTER)
//! runs a guest model: a vCPU runs a guest program a test gives it
//! ([`Simulator::set_guest`], [`guest`]): ACCEPT, private and shared
//! accesses, CPUID, MSRs and instructions as the module handles them or
//! turns them into a #VE, TDVMCALLs, TDREPORT and RTMRs, whose operations
//! make the module's TD exits; a running vCPU counts in the TD's TLB epoch
//! until it exits (a [`Simulator::kick`] makes it). The guest side of
//! TDG.MEM.PAGE.ACCEPT is also there for tests that run no vCPU
//! ([`Simulator::guest_accept`]). On the module 1.5.16 profile, Dynamic
//! PAMT: TDH.SYS.CONFIG's enable bit, TDH.PHYMEM.PAMT.ADD/REMOVE, the
//! per-2 MiB PAMT page pairs with their count, `TDX_MISSING_PAMT_PAGE_PAIR`,
//! the removal hint, and DEMOTE and PROMOTE with a pair
//! ([`Simulator::pamt_pair`]). Around the module: fault injection
//! ([`FaultPlan`]), and [`trace`]s: a [`Recorder`] writes what a host did
//! (SEAMCALLs, memory writes, cache operations, and the guests' operations
//! and kicks) and [`replay`] runs it again on the simulator. Not modelled:
//! L2 VMs, migration, service TDs.
//!
//! Concurrency is the module's: any number of threads may call one
//! simulator, each on the logical processor it selected, and leaves run in
//! parallel as far as the module's locks let them. Each leaf takes the
//! module's locks (PAMT entries with host priority, TDCS op state, the
//! S-EPT tree and entry locks, the TD epoch, the KOT, the per-package
//! write-back table, the global lock) with the module's algorithms, holds
//! them to its end, and on a conflict returns `TDX_OPERAND_BUSY` with the
//! module's operand instead of waiting. Tests reach the locks directly
//! ([`Simulator::hold`]) and stop a leaf halfway
//! ([`Simulator::pause_next`]) to interleave leaves exactly.
//!
//! Memory use follows what a test touches: page contents are stored only
//! for pages written, ownership and cache state are range maps, and the
//! PAMT and S-EPTs are radixes of chunks allocated on first use.
//!
//! With the feature `trap` (Linux x86_64), `trap::TrapBackend` runs the
//! real SEAMCALL instruction of `tdx_sys::Cpu` and serves it with the
//! simulator from a signal handler, so code written for the `Cpu` backend
//! runs against the simulated module unchanged.
//!
//! The source is laid out like the module's: [`Simulator`] and the seams
//! in `sim.rs`; the shared state in `state.rs`; the dispatcher in
//! `dispatch.rs`; the lock algorithms in `locks.rs`; the PAMT, S-EPT and
//! KOT in `pamt.rs`, `sept.rs` and `kot.rs`; the leaf handlers by family
//! in `leaves/`.

#![warn(missing_docs)]

mod dispatch;
mod faults;
pub mod guest;
mod kot;
mod leaves;
mod locks;
mod lp;
mod machine;
mod memory;
mod pamt;
mod profile;
mod rangemap;
mod sept;
mod sim;
mod slab;
mod state;
mod td;
pub mod testkit;
pub mod trace;
#[cfg(all(feature = "trap", target_os = "linux", target_arch = "x86_64"))]
pub mod trap;
mod violation;

/// The simulator's handles, as a test or an example names them: a module,
/// a TD host and a TD that use the simulator as backend and platform, the
/// TD borrowing its host.
pub type SimModule<'s, S> = tdx_api::TdxModule<S, &'s Simulator, &'s Simulator>;
/// A [`TdHost`](tdx_api::td::TdHost) on the simulator.
pub type SimHost<'s> = tdx_api::td::TdHost<&'s Simulator, &'s Simulator>;
/// A [`Td`](tdx_api::td::Td) on the simulator in state `S`, borrowing its
/// host.
pub type SimTd<'h, 's, S> = tdx_api::td::Td<S, &'h SimHost<'s>>;

pub use faults::{Fault, FaultAction, FaultPlan, transient_statuses};
pub use guest::{
    Exception, Guest, GuestProgram, Instruction, SharedMapping, VirtualizationException, VpInfo,
};
pub use kot::KotState;
pub use leaves::mng::ARCH_CAPS_CONFIG_MASK;
pub use locks::{LockMode, LockSide};
pub use machine::{HostMsr, MAX_CMRS, MAX_LPS, MachineDesc, MachineError, NativeCpu};
pub use memory::{Accounting, PageState};
pub use pamt::PamtEntry;
pub use profile::{CpuidConfig, MetadataTables, Profile};
pub use sim::{HeldLock, InvariantError, ModuleLock, Pause, Simulator, seamcalls_by_name};
pub use state::{Stats, SysState};
pub use td::{Lifecycle, OpState};
pub use trace::{Recorder, ReplaySummary, Trace, TraceError, TraceMachine, replay};
pub use violation::Violation;
