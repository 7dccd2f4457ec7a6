//! Workspace hygiene checks, run by `cargo test --workspace`.
//!
//! - dependency direction between the gossipkv crates (via `cargo tree`);
//! - `gossipkv-storage` never reads a clock;
//! - every crate's `src/lib.rs` starts with a `//!` crate doc comment.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The set of package names in the normal (non-dev, non-build) dependency tree of `package`.
fn normal_deps(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(&cargo)
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("failed to run `{cargo} tree`: {e}"));
    assert!(
        output.status.success(),
        "`cargo tree -p {package}` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Asserts that `package` depends (transitively, normal edges) on none of `forbidden`.
fn assert_no_deps(package: &str, forbidden: &[&str]) {
    let deps = normal_deps(package);
    assert!(
        deps.contains(package),
        "`cargo tree -p {package}` did not list {package} itself: {deps:?}"
    );
    let found: Vec<&&str> = forbidden.iter().filter(|f| deps.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "{package} must not depend on {found:?} (normal dependencies: {deps:?})"
    );
    println!(
        "checked: {package} ({} normal deps) depends on none of {forbidden:?}",
        deps.len() - 1
    );
}

#[test]
fn storage_has_no_io_or_wire_dependencies() {
    assert_no_deps("gossipkv-storage", &["tokio", "prost", "socket2", "mio"]);
}

#[test]
fn transport_does_not_depend_on_storage_or_wire_format() {
    assert_no_deps("gossipkv-transport", &["gossipkv-storage", "prost"]);
}

#[test]
fn proto_does_not_depend_on_io() {
    assert_no_deps("gossipkv-proto", &["tokio", "socket2"]);
}

/// All `.rs` files under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn storage_reads_no_clock() {
    const FORBIDDEN: &[&str] = &["SystemTime", "Instant::now", "std::time::Instant"];
    let src = root().join("crates/gossipkv-storage/src");
    let files = rust_files(&src);
    assert!(!files.is_empty(), "no .rs files under {}", src.display());
    let mut hits = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for (n, line) in text.lines().enumerate() {
            // Comments may mention clocks (e.g. "never calls `Instant::now`").
            if line.trim_start().starts_with("//") {
                continue;
            }
            for pattern in FORBIDDEN {
                if line.contains(pattern) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "gossipkv-storage must not read clocks (time is passed in by callers); found:\n{}",
        hits.join("\n")
    );
    println!(
        "checked: {} files under {} mention none of {FORBIDDEN:?}",
        files.len(),
        src.display()
    );
}

#[test]
fn every_crate_has_a_crate_doc_comment() {
    let crates_dir = root().join("crates");
    let mut libs: Vec<PathBuf> = fs::read_dir(&crates_dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", crates_dir.display()))
        .map(|entry| entry.expect("directory entry").path().join("src/lib.rs"))
        .filter(|lib| lib.is_file())
        .collect();
    libs.sort();
    assert!(!libs.is_empty(), "no crates/*/src/lib.rs found");
    let mut missing = Vec::new();
    for lib in &libs {
        let text = fs::read_to_string(lib)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", lib.display()));
        let first = text.lines().map(str::trim).find(|line| !line.is_empty());
        if !first.is_some_and(|line| line.starts_with("//!")) {
            missing.push(lib.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "these lib.rs files must start with a `//!` crate doc comment:\n{}",
        missing.join("\n")
    );
    println!("checked: {} lib.rs files start with `//!`", libs.len());
}
