//! Golden files: compare rendered text with a file under `tests/golden/`, or rewrite the file
//! when `FERRY_UPDATE_GOLDEN=1`.

use std::path::{Path, PathBuf};

/// The folder of golden files.
pub fn dir(subdir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(subdir)
}

fn updating() -> bool {
    std::env::var("FERRY_UPDATE_GOLDEN").is_ok_and(|value| value == "1")
}

/// Checks `actual` against the golden file `path`; with `FERRY_UPDATE_GOLDEN=1`, writes it.
/// Returns a message with a unified diff when they differ.
pub fn check(path: &Path, actual: &str) -> Result<(), String> {
    if updating() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| error.to_string())?;
        }
        return std::fs::write(path, actual)
            .map_err(|error| format!("{}: {error}", path.display()));
    }
    let expected = std::fs::read_to_string(path).map_err(|error| {
        format!(
            "{}: {error}; run with FERRY_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    })?;
    if expected == actual {
        return Ok(());
    }
    let diff = similar::TextDiff::from_lines(&expected, actual)
        .unified_diff()
        .context_radius(3)
        .header("golden", "rendered")
        .to_string();
    Err(format!(
        "{} differs from what is rendered now (- golden, + rendered); if the change is intended, \
         rerun with FERRY_UPDATE_GOLDEN=1 and review the diff:\n{diff}",
        path.display()
    ))
}

/// The golden files in `dir` (with extension `extension`) that are not in `expected`: left over
/// from something no longer rendered. With `FERRY_UPDATE_GOLDEN=1` they are deleted.
pub fn stale(dir: &Path, extension: &str, expected: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == extension))
        .filter(|path| !expected.contains(path))
        .collect();
    stale.sort();
    if updating() {
        for path in stale.drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
    stale
}
