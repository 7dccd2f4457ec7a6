//! `cargo xtask bench`: run the criterion benchmarks and the cluster
//! measurements, and summarize them.
//!
//! After criterion, `cluster_bench` (a binary of `gossipkv-benches`) measures
//! real clusters on loopback UDP and writes `<target>/xtask-bench/cluster.json`
//! (and `propagation.svg`). Then the simulator measures dissemination in
//! clusters of 1,000 and 10,000 nodes with membership given (what
//! `cargo xtask sim --given-only` does, a few seconds), writing
//! `<target>/xtask-sim/sim.json`. The figures of both files (and the
//! formed-membership figures of an earlier full `cargo xtask sim`, kept in
//! `sim.json`) are merged into the top level of `summary.json`. The required
//! figures that are missing are listed at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context};

use crate::cli::{BenchOptions, SimOptions};
use crate::{criterion, sim, summary, workspace};

/// The package holding the criterion benchmarks.
pub(crate) const BENCH_PACKAGE: &str = "gossipkv-benches";

/// Criterion arguments used by `--quick`.
pub(crate) const QUICK_ARGS: &[&str] = &[
    "--warm-up-time",
    "1",
    "--measurement-time",
    "2",
    "--sample-size",
    "10",
];

/// Environment variable setting the key count of the `storage/*_1m` benchmarks.
pub(crate) const KEYS_ENV: &str = "GOSSIPKV_BENCH_KEYS";

/// Key count `--quick` sets through [`KEYS_ENV`] (unless it is already set).
pub(crate) const QUICK_KEYS: &str = "100000";

/// The binary of [`BENCH_PACKAGE`] measuring real clusters.
pub(crate) const CLUSTER_BIN: &str = "cluster_bench";

/// File name of the cluster figures, in `<target>/xtask-bench`.
pub(crate) const CLUSTER_FILE: &str = "cluster.json";

/// Where `cargo xtask sim` writes its figures, relative to the target directory.
pub(crate) const SIM_FILE: &[&str] = &["xtask-sim", "sim.json"];

/// Runs the benchmarks and `cluster_bench` (unless `--summary-only`), prints
/// the summary tables and writes `<target>/xtask-bench/summary.json`.
///
/// A failing `cluster_bench` still gets the summary written (with whatever
/// figures it produced), then fails the command.
pub(crate) fn run(opts: &BenchOptions) -> anyhow::Result<()> {
    let root = workspace::root();
    let target_dir = workspace::target_dir(&root)?;
    let out_dir = target_dir.join("xtask-bench");
    let cluster_file = out_dir.join(CLUSTER_FILE);

    let since = if opts.summary_only {
        None
    } else {
        // Criterion writes results with second-ish precision on some file
        // systems; allow a little slack so this run's results are not skipped.
        let started = SystemTime::now() - std::time::Duration::from_secs(2);
        let args = cargo_bench_args(opts);
        let env = bench_env(opts, std::env::var_os(KEYS_ENV).is_some());
        let env_text: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        println!("$ {env_text}cargo {}", args.join(" "));
        let status = Command::new(workspace::cargo())
            .args(&args)
            .envs(env)
            .current_dir(&root)
            .status()
            .context("failed to run `cargo bench`")?;
        if !status.success() {
            bail!("`cargo bench` failed ({status})");
        }
        Some(started)
    };

    let cluster_failure = if opts.summary_only {
        None
    } else {
        run_cluster_bench(&root, &cluster_file, opts.quick).err()
    };
    let sim_failure = if opts.summary_only {
        None
    } else {
        println!();
        sim::run(&SimOptions {
            given_only: true,
            ..SimOptions::default()
        })
        .err()
    };

    let criterion_dir = target_dir.join("criterion");
    let results = criterion::collect(&criterion_dir, since)?;
    let rows = summary::rows(&results);
    println!();
    print!("{}", summary::table(&rows));

    let mut json = summary::to_json(&rows, summary::NAMED_FIGURES);
    if !opts.summary_only {
        let from_env = std::env::var(KEYS_ENV).ok();
        if let (Some(keys), Some(map)) =
            (store_keys(opts, from_env.as_deref()), json.as_object_mut())
        {
            map.insert(STORE_KEYS_FIGURE.into(), keys.into());
        }
    }
    let sim_file = SIM_FILE.iter().fold(target_dir.clone(), |p, c| p.join(c));
    for file in [&cluster_file, &sim_file] {
        merge_file(&mut json, file)?;
    }

    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_file = out_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&json)?;
    fs::write(&out_file, text + "\n")
        .with_context(|| format!("cannot write {}", out_file.display()))?;

    println!();
    print!("{}", summary::figures_table(&json, summary::REQUIRED_KEYS));
    println!("\nwrote {}", out_file.display());
    let missing = summary::missing_keys(&json, summary::REQUIRED_KEYS);
    if missing.is_empty() {
        println!(
            "all {} required figures present",
            summary::REQUIRED_KEYS.len()
        );
    } else {
        println!(
            "missing required figures ({} of {}): {}",
            missing.len(),
            summary::REQUIRED_KEYS.len(),
            missing.join(", ")
        );
    }
    if let Some(err) = cluster_failure {
        return Err(err.context(format!("`{CLUSTER_BIN}` failed")));
    }
    if let Some(err) = sim_failure {
        return Err(err.context("the simulator failed"));
    }
    Ok(())
}

/// Arguments for `cargo`: `run --release -p gossipkv-benches --bin cluster_bench
/// -- --out <out> [--quick]`.
pub(crate) fn cluster_bench_args(out: &Path, quick: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--release",
        "-p",
        BENCH_PACKAGE,
        "--bin",
        CLUSTER_BIN,
        "--",
        "--out",
    ]
    .map(String::from)
    .to_vec();
    args.push(out.display().to_string());
    if quick {
        args.push("--quick".to_owned());
    }
    args
}

/// Builds and runs `cluster_bench` in release mode, writing `out`. A previous
/// `out` is removed first, so that a failed run never leaves stale figures.
fn run_cluster_bench(root: &Path, out: &Path, quick: bool) -> anyhow::Result<()> {
    match fs::remove_file(out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", out.display())),
    }
    let args = cluster_bench_args(out, quick);
    println!("\n$ cargo {}", args.join(" "));
    let status = Command::new(workspace::cargo())
        .args(&args)
        .current_dir(root)
        .status()
        .context("failed to run `cargo run` for the cluster benchmark")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Merges the figures of `file` into `summary` when the file exists.
fn merge_file(summary: &mut serde_json::Value, file: &PathBuf) -> anyhow::Result<()> {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("(no {}; nothing merged from it)", file.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let figures: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", file.display()))?;
    let age = fs::metadata(file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map_or_else(String::new, |age| {
            format!(", written {} s ago", age.as_secs())
        });
    let merged = summary::merge_figures(summary, &figures, &file.display().to_string());
    println!("merged {merged} figures from {}{age}", file.display());
    Ok(())
}

/// Arguments for `cargo`: `bench -p gossipkv-benches --bench '*' [-- <criterion args>]`.
///
/// `--bench '*'` selects only the bench targets: the library's libtest harness
/// would reject criterion's options.
pub(crate) fn cargo_bench_args(opts: &BenchOptions) -> Vec<String> {
    let mut args: Vec<String> = ["bench", "-p", BENCH_PACKAGE, "--bench", "*"]
        .map(String::from)
        .to_vec();
    let mut extra: Vec<String> = Vec::new();
    if opts.quick {
        extra.extend(QUICK_ARGS.iter().map(|s| s.to_string()));
    }
    extra.extend(opts.criterion_args.iter().cloned());
    if !extra.is_empty() {
        args.push("--".to_owned());
        args.extend(extra);
    }
    args
}

/// Summary key recording how many keys the `storage/*_1m` benchmarks used.
pub(crate) const STORE_KEYS_FIGURE: &str = "store_bench_keys";

/// How many keys the `storage/*_1m` benchmarks of this run use: `from_env`
/// (the caller's [`KEYS_ENV`]) if it is a number, else [`QUICK_KEYS`] with
/// `--quick` and one million without.
pub(crate) fn store_keys(opts: &BenchOptions, from_env: Option<&str>) -> Option<u64> {
    let parse = |t: &str| t.trim().replace('_', "").parse::<u64>().ok();
    match from_env {
        Some(text) => parse(text),
        None if opts.quick => parse(QUICK_KEYS),
        None => Some(1_000_000),
    }
}

/// Environment variables for the `cargo bench` process: `--quick` sets
/// [`KEYS_ENV`] to [`QUICK_KEYS`] unless the caller's environment has it.
pub(crate) fn bench_env(
    opts: &BenchOptions,
    keys_env_set: bool,
) -> Vec<(&'static str, &'static str)> {
    if opts.quick && !keys_env_set {
        vec![(KEYS_ENV, QUICK_KEYS)]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_key_count_is_recorded() {
        let quick = BenchOptions {
            quick: true,
            ..BenchOptions::default()
        };
        assert_eq!(store_keys(&quick, None), Some(100_000));
        assert_eq!(store_keys(&BenchOptions::default(), None), Some(1_000_000));
        assert_eq!(store_keys(&quick, Some("2_000")), Some(2_000));
        assert_eq!(store_keys(&quick, Some("many")), None);
    }

    #[test]
    fn quick_passes_criterion_flags() {
        let args = cargo_bench_args(&BenchOptions {
            quick: true,
            summary_only: false,
            criterion_args: vec!["storage".into()],
        });
        assert_eq!(
            args.join(" "),
            "bench -p gossipkv-benches --bench * -- --warm-up-time 1 --measurement-time 2 \
             --sample-size 10 storage"
        );
        let args = cargo_bench_args(&BenchOptions::default());
        assert_eq!(args.join(" "), "bench -p gossipkv-benches --bench *");
    }

    #[test]
    fn cluster_bench_runs_in_release() {
        let out = Path::new("/t/xtask-bench/cluster.json");
        assert_eq!(
            cluster_bench_args(out, true).join(" "),
            "run --release -p gossipkv-benches --bin cluster_bench -- --out \
             /t/xtask-bench/cluster.json --quick"
        );
        assert!(!cluster_bench_args(out, false).contains(&"--quick".to_owned()));
    }

    #[test]
    fn quick_shrinks_the_stores_unless_told_otherwise() {
        let quick = BenchOptions {
            quick: true,
            ..BenchOptions::default()
        };
        assert_eq!(bench_env(&quick, false), vec![(KEYS_ENV, QUICK_KEYS)]);
        assert!(bench_env(&quick, true).is_empty());
        assert!(bench_env(&BenchOptions::default(), false).is_empty());
    }
}
