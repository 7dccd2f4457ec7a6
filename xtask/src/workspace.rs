//! Locating the workspace, the cargo binary and the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// The workspace root: the parent of this crate's manifest directory.
pub(crate) fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo binary to use: `$CARGO` (set when run through cargo), else `cargo`.
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The workspace's target directory, as reported by `cargo metadata`.
///
/// `cargo metadata` honours `CARGO_TARGET_DIR` and `build.target-dir`. If it
/// cannot be run, falls back to `$CARGO_TARGET_DIR` or `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> anyhow::Result<PathBuf> {
    match target_dir_from_metadata(root) {
        Ok(dir) => Ok(dir),
        Err(err) => {
            eprintln!("warning: {err:#}; guessing the target directory");
            Ok(match std::env::var_os("CARGO_TARGET_DIR") {
                Some(dir) => root.join(dir),
                None => root.join("target"),
            })
        }
    }
}

/// Runs `cargo metadata` and reads its `target_directory` field.
fn target_dir_from_metadata(root: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(root)
        .output()
        .context("failed to run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")?;
    let dir = metadata
        .get("target_directory")
        .and_then(serde_json::Value::as_str)
        .context("`cargo metadata` output has no `target_directory`")?;
    Ok(PathBuf::from(dir))
}
