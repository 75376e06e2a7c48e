//! Shared helpers for Edgepipe's cross-component tests: where the workspace and the
//! installed tools are, and the two validation layers of the EdgePipeline API.

pub mod api;
pub mod helm;

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Path of a tool the test suite installs (`tests/scripts/install-deps.sh`): looked up in
/// the Python venv, then `tests/.tools/bin`, then `/usr/sbin` and `PATH`.
/// Panics with the install hint when it is missing, so a test never skips silently.
pub fn tool(name: &str) -> PathBuf {
    let root = workspace_root();
    let mut candidates = vec![
        root.join(".venv/bin").join(name),
        root.join("tests/.tools/bin").join(name),
        Path::new("/usr/sbin").join(name),
        Path::new("/usr/bin").join(name),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: run tests/scripts/install-deps.sh"))
}
