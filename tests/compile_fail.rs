//! Compile-fail tests: each file in `tests/ui/` is something the types must
//! refuse, with a header comment naming the guarantee it guards. The
//! expected compiler output (`.stderr`) is kept for the toolchain the
//! project builds with (Rust 1.95); regenerate with `TRYBUILD=overwrite`
//! and review the diff.

#[test]
#[cfg_attr(miri, ignore = "trybuild starts rustc; Miri cannot start processes")]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
