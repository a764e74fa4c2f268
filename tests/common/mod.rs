//! Fixtures shared by the integration tests.

use std::path::PathBuf;

/// The shared memory maps (`name`, JSON text), sorted by name: the copies in
/// `tdx-plan/testdata/memmaps`, or `../shared/memmaps` beside the project.
pub(crate) fn maps() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tdx-plan/testdata/memmaps");
    let dir = if dir.exists() {
        dir
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/memmaps")
    };
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("memory maps")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 15, "expected the 15 shared maps in {dir:?}");
    out
}
