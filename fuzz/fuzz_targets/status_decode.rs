//! Fuzz target `status_decode`: the body is `bodies::status_decode` (shared with the stable
//! regression test `tdx-plan/tests/fuzz_regressions.rs`).
#![no_main]

#[path = "../../tdx-plan/tests/fuzz/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::status_decode(data));
