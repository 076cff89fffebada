//! Where the golden vectors are, for every test crate (included with `#[path]`): the
//! repository's `tests/golden` (required: a clone without it fails) and `$JIT_GOLDEN_DIR`
//! (extra sets, when set).

use std::path::PathBuf;

/// The golden folders, the repository's first; panics when one is missing.
pub fn golden_dirs() -> Vec<PathBuf> {
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let mut dirs = vec![shipped];
    dirs.extend(std::env::var_os("JIT_GOLDEN_DIR").map(PathBuf::from));
    for dir in &dirs {
        assert!(dir.is_dir(), "golden folder {} is missing (the repository ships tests/golden)", dir.display());
    }
    dirs
}

/// The files of every golden folder whose name ends with `suffix`, sorted; panics when there
/// are none.
pub fn golden_files(suffix: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in golden_dirs() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("golden folder {}: {e}", dir.display()));
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(suffix)))
            .collect();
        found.sort();
        files.extend(found);
    }
    assert!(!files.is_empty(), "no golden *{suffix} files in {:?}", golden_dirs());
    files
}
