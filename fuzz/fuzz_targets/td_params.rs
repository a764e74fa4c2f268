//! Fuzz target `td_params`: the body is `bodies::td_params` (shared with the stable
//! regression test `tdx-plan/tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../../tdx-plan/tests/fuzz/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::td_params(data));
