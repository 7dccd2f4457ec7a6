//! `cargo xtask fuzz`: run the cargo-fuzz targets of `fuzz/` one after the
//! other and summarize them; `cargo xtask fuzz-corpus`: regenerate their
//! seed corpora.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::cli::FuzzOptions;
use crate::workspace;

/// The targets, in the order they run (the functions of
/// `crates/gossipkv-fuzz-targets`, the binaries of `fuzz/Cargo.toml`).
pub(crate) const TARGETS: &[&str] = &[
    "envelope",
    "stream_frames",
    "durable_rows",
    "reassembly",
    "protocol",
    "http",
    "sealed",
];

/// How the targets are built (for `build` and `run` alike, or `run`
/// rebuilds): optimized, with debug assertions and overflow checks (an
/// overflow is a finding), without AddressSanitizer (the workspace forbids
/// `unsafe`; ASan would only slow the runs down).
const BUILD_FLAGS: &[&str] = &["--release", "--debug-assertions", "--sanitizer", "none"];

/// One target's run.
struct Outcome {
    target: String,
    seconds: f64,
    execs: Option<u64>,
    findings: usize,
    exit_ok: bool,
}

/// Builds the targets, runs each for `opts.seconds` and prints the table.
/// `Ok(false)` when any target found something (or failed to run).
pub(crate) fn run(opts: &FuzzOptions) -> anyhow::Result<bool> {
    let root = workspace::root();
    let fuzz = root.join("fuzz");
    let targets: Vec<String> = match opts.targets.is_empty() {
        true => TARGETS.iter().map(|t| t.to_string()).collect(),
        false => opts.targets.clone(),
    };
    for t in &targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target `{t}` (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    let status = cargo_fuzz(&fuzz)
        .arg("build")
        .args(BUILD_FLAGS)
        .status()
        .context("failed to run `cargo +nightly fuzz build` (is cargo-fuzz installed?)")?;
    if !status.success() {
        bail!("`cargo +nightly fuzz build` failed: {status}");
    }
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_one(&fuzz, t, opts.seconds)?);
    }
    println!();
    println!(
        "{:<14} {:>8} {:>14} {:>10} {:>9}",
        "target", "seconds", "execs", "execs/s", "findings"
    );
    let mut ok = true;
    for o in &outcomes {
        let (execs, rate) = match o.execs {
            Some(n) => (n.to_string(), format!("{:.0}", n as f64 / o.seconds)),
            None => ("?".into(), "?".into()),
        };
        println!(
            "{:<14} {:>8.0} {:>14} {:>10} {:>9}{}",
            o.target,
            o.seconds,
            execs,
            rate,
            o.findings,
            if o.exit_ok {
                ""
            } else {
                "  (libFuzzer failed)"
            }
        );
        ok &= o.findings == 0 && o.exit_ok;
    }
    println!();
    println!("findings are under fuzz/artifacts/<target>/; replay one with `cargo +nightly fuzz run <target> <file>`");
    Ok(ok)
}

/// `cargo +nightly fuzz` in `fuzz/`, building into
/// `$GOSSIPKV_FUZZ_TARGET_DIR` (default `fuzz/target`), never into the
/// stable workspace's target directory.
fn cargo_fuzz(fuzz: &Path) -> Command {
    let target_dir = std::env::var_os("GOSSIPKV_FUZZ_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz.join("target"));
    // The rustup proxy, not `$CARGO` (a toolchain's own cargo refuses
    // `+nightly`).
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly")
        .arg("fuzz")
        .current_dir(fuzz)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Runs target `t` for `seconds` and reads libFuzzer's final statistics.
fn run_one(fuzz: &Path, t: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let work = fuzz.join("work").join(t);
    let seeds = fuzz.join("corpus").join(t);
    std::fs::create_dir_all(&work)?;
    let log = fuzz.join("work").join(format!("{t}.log"));
    let log_file = std::fs::File::create(&log)?;
    println!("==> fuzzing {t} for {seconds} s (log: {})", log.display());
    let start = Instant::now();
    let status = cargo_fuzz(fuzz)
        .args(["run", t])
        .args(BUILD_FLAGS)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=4096"])
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .with_context(|| format!("failed to run `cargo +nightly fuzz run {t}`"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let execs = final_execs(&text);
    let findings = count_findings(&fuzz.join("artifacts").join(t));
    if !status.success() || findings > 0 {
        eprintln!("--- tail of {} ---", log.display());
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("{line}");
        }
    }
    let run_time = done_seconds(&text).unwrap_or(elapsed);
    Ok(Outcome {
        target: t.to_string(),
        seconds: run_time,
        execs,
        findings,
        exit_ok: status.success(),
    })
}

/// Executions from `stat::number_of_executed_units`, else from the last
/// `#N` status line.
fn final_execs(text: &str) -> Option<u64> {
    stat(text, "stat::number_of_executed_units:").or_else(|| {
        text.lines().rev().find_map(|l| {
            let rest = l.strip_prefix('#')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    })
}

/// The seconds of libFuzzer's last `Done N runs in S second(s)` line (the
/// fuzzing time, without the build).
fn done_seconds(text: &str) -> Option<f64> {
    text.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("Done ")?;
        let (_, secs) = rest.split_once(" runs in ")?;
        let secs: u64 = secs.split_whitespace().next()?.parse().ok()?;
        Some(secs.max(1) as f64)
    })
}

/// The number after `key` on its last line.
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix(key)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Crash, leak, timeout and out-of-memory inputs libFuzzer left in `dir`.
fn count_findings(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            ["crash-", "leak-", "timeout-", "oom-", "slow-unit-"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .count()
}

/// `cargo xtask fuzz-corpus`: runs the generator of
/// `gossipkv-fuzz-targets` into `fuzz/corpus`.
pub(crate) fn corpus() -> anyhow::Result<ExitCode> {
    let root = workspace::root();
    let status = Command::new(workspace::cargo())
        .current_dir(&root)
        .args([
            "run",
            "-p",
            "gossipkv-fuzz-targets",
            "--bin",
            "fuzz-corpus",
            "--",
        ])
        .arg(root.join("fuzz").join("corpus"))
        .status()
        .context("failed to run the corpus generator")?;
    Ok(match status.success() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_stats() {
        let text = "#1024\tpulse  cov: 10 ft: 20\nDone 5000 runs in 2 second(s)\n\
                    stat::number_of_executed_units: 5000\nstat::average_exec_per_sec:     2500\n";
        assert_eq!(final_execs(text), Some(5000));
        assert_eq!(final_execs("#77\tNEW    cov: 1\n"), Some(77));
        assert_eq!(done_seconds(text), Some(2.0));
    }

    #[test]
    fn targets_match_the_fuzz_project() {
        let manifest = std::fs::read_to_string(workspace::root().join("fuzz/Cargo.toml"))
            .expect("fuzz/Cargo.toml");
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} is not a binary of fuzz/Cargo.toml"
            );
            assert!(workspace::root()
                .join(format!("fuzz/fuzz_targets/{t}.rs"))
                .is_file());
        }
    }
}
