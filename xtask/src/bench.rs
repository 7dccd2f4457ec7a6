//! `cargo xtask bench`: run the criterion benchmarks and summarize them.

use std::fs;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, Context};

use crate::cli::BenchOptions;
use crate::{criterion, summary, workspace};

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

/// Runs the benchmarks (unless `--summary-only`), prints the summary table and
/// writes `<target>/xtask-bench/summary.json`.
pub(crate) fn run(opts: &BenchOptions) -> anyhow::Result<()> {
    let root = workspace::root();
    let target_dir = workspace::target_dir(&root)?;

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

    let criterion_dir = target_dir.join("criterion");
    let results = criterion::collect(&criterion_dir, since)?;
    let rows = summary::rows(&results);
    println!();
    print!("{}", summary::table(&rows));

    let json = summary::to_json(&rows, summary::NAMED_FIGURES);
    let out_dir = target_dir.join("xtask-bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_file = out_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&json)?;
    fs::write(&out_file, text + "\n")
        .with_context(|| format!("cannot write {}", out_file.display()))?;
    println!("\nwrote {}", out_file.display());
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
