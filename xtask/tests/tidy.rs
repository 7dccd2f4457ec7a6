//! Workspace hygiene checks, run by `cargo test --workspace`.
//!
//! - dependency direction between the gossipkv crates (via `cargo tree`);
//! - `gossipkv-storage` never reads a clock;
//! - `gossipkv-core` is sans-IO: no I/O crates, no clock reads, no global
//!   random generator, no randomly seeded hash maps, and small files and
//!   functions;
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

#[test]
fn core_has_no_io_dependencies() {
    assert_no_deps(
        "gossipkv-core",
        &[
            "tokio",
            "socket2",
            "mdns-sd",
            "mio",
            "gossipkv-transport",
            "gossipkv",
        ],
    );
    // Its own dependencies: storage, wire format, randomness and logging,
    // plus two small data-only crates (byte buffers, error derives).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(&cargo)
        .args([
            "tree",
            "-p",
            "gossipkv-core",
            "-e",
            "normal",
            "--depth",
            "1",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root())
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success());
    let direct: BTreeSet<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "gossipkv-core")
        .map(str::to_owned)
        .collect();
    let allowed: BTreeSet<String> = [
        "gossipkv-storage",
        "gossipkv-proto",
        "rand",
        // A keyed hash (address-validation tokens); no I/O.
        "siphasher",
        "tracing",
        "bytes",
        "thiserror",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let extra: Vec<&String> = direct.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "gossipkv-core must not depend on {extra:?}"
    );
    println!("checked: gossipkv-core depends directly on {direct:?} only");
}

#[test]
fn simulator_depends_on_the_core_not_the_facade() {
    assert_no_deps("gossipkv-sim", &["gossipkv", "tokio", "socket2", "mdns-sd"]);
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

/// Lines of the `.rs` files under `crates/<krate>/src` (comments aside)
/// that contain one of `forbidden`.
fn find_patterns(krate: &str, forbidden: &[&str]) -> (usize, Vec<String>) {
    let src = root().join("crates").join(krate).join("src");
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
            for pattern in forbidden {
                if line.contains(pattern) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    (files.len(), hits)
}

#[test]
fn storage_reads_no_clock() {
    const FORBIDDEN: &[&str] = &["SystemTime", "Instant::now", "std::time::Instant"];
    let (files, hits) = find_patterns("gossipkv-storage", FORBIDDEN);
    assert!(
        hits.is_empty(),
        "gossipkv-storage must not read clocks (time is passed in by callers); found:\n{}",
        hits.join("\n")
    );
    println!("checked: {files} storage files mention none of {FORBIDDEN:?}");
}

#[test]
fn core_reads_no_clock_uses_no_global_rng_and_no_random_hash_order() {
    const FORBIDDEN: &[&str] = &[
        // Clocks: time is an input.
        "SystemTime",
        "Instant::now",
        "std::time::Instant",
        // Global or OS-seeded randomness: the only generator is seeded from
        // the configuration.
        "thread_rng",
        "rand::rng()",
        "rand::random",
        "from_entropy",
        "from_os_rng",
        "OsRng",
        // Randomly seeded hash maps, whose iteration order would decide
        // what is sent: the core uses ordered maps.
        "HashMap",
        "HashSet",
        "RandomState",
        // No runtime, no sockets.
        "tokio",
        "std::net::UdpSocket",
    ];
    let (files, hits) = find_patterns("gossipkv-core", FORBIDDEN);
    assert!(
        hits.is_empty(),
        "gossipkv-core must stay deterministic and sans-IO; found:\n{}",
        hits.join("\n")
    );
    println!("checked: {files} core files mention none of {FORBIDDEN:?}");
}

/// The functions of `text` longer than `max` lines: (first line, length).
/// A function runs from a line starting with `fn` (after visibility and
/// qualifiers) to the line where its braces balance again; rustfmt's layout
/// makes that exact enough.
fn long_functions(text: &str, max: usize) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let t = t.strip_prefix("const ").unwrap_or(t);
        let t = t.strip_prefix("async ").unwrap_or(t);
        if !t.starts_with("fn ") {
            i += 1;
            continue;
        }
        let start = i;
        let mut depth = 0i32;
        let mut opened = false;
        while i < lines.len() {
            for c in lines[i].chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            // A declaration without a body (a trait method) ends at `;`.
            if !opened && lines[i].trim_end().ends_with(';') {
                break;
            }
            if opened && depth <= 0 {
                break;
            }
            i += 1;
        }
        let len = i - start + 1;
        if len > max {
            long.push((start + 1, len));
        }
        i += 1;
    }
    long
}

#[test]
fn core_files_and_functions_stay_small() {
    const MAX_FILE: usize = 600;
    const MAX_FN: usize = 80;
    let src = root().join("crates/gossipkv-core/src");
    let mut problems = Vec::new();
    for file in rust_files(&src) {
        let text = fs::read_to_string(&file).expect("readable");
        let n = text.lines().count();
        if n > MAX_FILE {
            problems.push(format!(
                "{}: {n} lines (at most {MAX_FILE})",
                file.display()
            ));
        }
        for (line, len) in long_functions(&text, MAX_FN) {
            problems.push(format!(
                "{}:{line}: a function of {len} lines (at most {MAX_FN})",
                file.display()
            ));
        }
    }
    assert!(problems.is_empty(), "split these:\n{}", problems.join("\n"));
}

#[test]
fn the_function_length_check_sees_functions() {
    let text = "fn a() {\n    x();\n}\n\npub(crate) fn b(\n    y: u8,\n) -> u8 {\n    if y > 0 {\n        1\n    } else {\n        2\n    }\n}\n";
    assert_eq!(long_functions(text, 3), vec![(5, 9)]);
    assert!(long_functions(text, 9).is_empty());
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
