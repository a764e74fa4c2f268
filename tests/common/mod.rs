//! Fixtures shared by the integration tests.

use std::path::PathBuf;

/// The real machines' memory maps kept in `tdx-plan/testdata/memmaps`
/// (`name`, JSON text), sorted by name.
pub(crate) fn maps() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tdx-plan/testdata/memmaps");
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
    assert!(out.len() >= 15, "expected the 15 memory maps in {dir:?}");
    out
}
