//! The fuzz targets of `fuzz/` on stable: each target's body
//! (`tests/fuzz/bodies.rs`, the same function the libFuzzer target calls)
//! over every input committed under `tests/fuzz/inputs/<target>/`: the
//! crashes fuzzing found (fixed since) and corpus entries that reach deep
//! into the code. `fuzz/README.md` says how to add one.

#[path = "fuzz/bodies.rs"]
mod bodies;

use std::{fs, panic, path::PathBuf};

/// Runs target `name` over its committed inputs; names the input that fails.
fn run(name: &str) {
    let body = bodies::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, f)| f)
        .expect("a target of bodies.rs");
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fuzz", "inputs", name]
        .iter()
        .collect();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    let mut failed = Vec::new();
    for f in &files {
        let data = fs::read(f).unwrap();
        if panic::catch_unwind(|| body(&data)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{name} fails on {failed:#?}");
}

#[test]
fn status_decode() {
    run("status_decode");
}

#[test]
fn planner() {
    run("planner");
}

#[test]
fn plan_inputs() {
    run("plan_inputs");
}

#[test]
fn trace_replay() {
    run("trace_replay");
}

#[test]
fn td_params() {
    run("td_params");
}

#[test]
fn every_target_has_a_test() {
    let names: Vec<&str> = bodies::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "status_decode",
            "planner",
            "plan_inputs",
            "trace_replay",
            "td_params"
        ]
    );
}
