//! `tdx-plan`: plans TDX memory — the TDMRs that cover a machine's RAM and
//! the PAMTs that back them — for a machine's physical memory map, without
//! a TDX machine.
//!
//! Design principles:
//!
//! 1. One input type. Every source of a memory map (a JSON file, a boot
//!    log, `/proc/iomem`, sysfs) is read into [`input::MemoryMap`], whose
//!    ranges are half-open byte ranges `[start, end)`, sorted and
//!    normalized, so the planner never sees a format.
//! 2. Input is untrusted text. Readers never panic; every error names the
//!    line (1-based) or the file and says what is wrong.
//! 3. Real layouts first. The readers are tested on the memory maps of real
//!    machines (`testdata/memmaps`), in each format they come in.
//! 4. Verdicts, not opinions. A plan is reported with the planner's own
//!    byte-level check and with the status the simulated TDX module returns
//!    at TDH.SYS.CONFIG, for the best plan and for Linux's construction
//!    alike ([`analysis`], [`simulate`]); the outputs ([`report`], [`json`],
//!    [`svg`]) only render what [`analysis::Analysis`] holds.

pub mod analysis;
pub mod input;
pub mod json;
pub mod report;
pub mod simulate;
pub mod svg;
