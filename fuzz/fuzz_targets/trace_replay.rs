//! Fuzz target `trace_replay`: the body is `bodies::trace_replay` (shared with the stable
//! regression test `tdx-plan/tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../../tdx-plan/tests/fuzz/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::trace_replay(data));
