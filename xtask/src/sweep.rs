//! `cargo xtask sweep`: the simulator's scenarios over many seeds.
//!
//! Every scenario of `gossipkv-sim` runs with one fixed seed under
//! `cargo test`; a protocol change that breaks it only for some seeds goes
//! unnoticed there. This command builds the scenario, membership, stream,
//! budget and lifetime suites once (in the test profile, which optimizes the
//! simulated crates and keeps debug assertions, reusing what
//! `cargo test --workspace` built; `--release` on request), then runs each
//! of them once per seed with
//! `GOSSIPKV_SIM_SEED` set, printing one line per seed. A failing run prints
//! the failing tests and the command that replays them, and the command
//! exits with failure once every seed has run.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::cli::SweepOptions;
use crate::workspace;

/// The package whose suites are swept.
const PACKAGE: &str = "gossipkv-sim";

/// The suites swept: integration tests of [`PACKAGE`] whose every scenario
/// takes its seed from `GOSSIPKV_SIM_SEED`. (`scale` is left out: it
/// measures, and takes minutes.)
const SUITES: &[&str] = &["scenarios", "membership", "streams", "budget", "lifetime"];

/// Runs the sweep.
pub(crate) fn run(opts: &SweepOptions) -> anyhow::Result<bool> {
    let binaries = build(opts.release)?;
    let (from, to) = opts.seeds;
    let count = to - from + 1;
    println!(
        "sweeping seeds {from}..={to} ({count} seeds) over {}",
        SUITES.join(", ")
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in from..=to {
        let t = Instant::now();
        let mut failed = Vec::new();
        for (suite, exe) in &binaries {
            if let Some(detail) = run_one(exe, seed, opts.timeout)? {
                println!("seed {seed}: {suite} FAILED\n{detail}");
                let release = if opts.release { " --release" } else { "" };
                println!("  replay: GOSSIPKV_SIM_SEED={seed} cargo test{release} -p {PACKAGE} --test {suite}");
                failed.push(*suite);
            }
        }
        let status = if failed.is_empty() { "ok" } else { "FAILED" };
        println!(
            "seed {seed} ({}/{count}): {status} in {:.1} s",
            seed - from + 1,
            t.elapsed().as_secs_f64()
        );
        failures.extend(failed.into_iter().map(|s| (seed, s)));
    }
    let secs = started.elapsed().as_secs_f64();
    if failures.is_empty() {
        println!("all {count} seeds passed in {secs:.0} s");
        Ok(true)
    } else {
        println!("{} of {count} seeds failed in {secs:.0} s:", failures.len());
        for (seed, suite) in &failures {
            println!("  seed {seed}: {suite}");
        }
        Ok(false)
    }
}

/// Builds the suites (in release mode if `release`); returns each suite's
/// test binary.
fn build(release: bool) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let mut cmd = Command::new(workspace::cargo());
    cmd.args(["test", "--no-run", "--message-format=json"])
        .args(["-p", PACKAGE])
        .current_dir(workspace::root())
        .stderr(Stdio::inherit());
    for suite in SUITES {
        cmd.args(["--test", suite]);
    }
    if release {
        cmd.arg("--release");
    }
    let profile = if release { "release" } else { "test profile" };
    println!("building the {PACKAGE} suites ({profile})");
    let out = cmd.output().context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the {PACKAGE} suites failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    SUITES
        .iter()
        .map(|suite| {
            executable(&text, suite)
                .map(|exe| (*suite, exe))
                .with_context(|| format!("cargo built no test binary for `{suite}`"))
        })
        .collect()
}

/// The executable cargo reported for the test target `suite`, from its JSON
/// messages.
fn executable(messages: &str, suite: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == suite)
        .filter(|m| m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Runs one suite with one seed. `None` when it passed, else what failed.
fn run_one(exe: &PathBuf, seed: u64, timeout: Duration) -> anyhow::Result<Option<String>> {
    let mut child = Command::new(exe)
        .arg("-q")
        .env("GOSSIPKV_SIM_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    // Read both pipes on threads so a chatty run cannot fill one and stall.
    let mut stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok(match status {
        Some(s) if s.success() => None,
        Some(_) => Some(failure_detail(&out, &err)),
        None => Some(format!("  timed out after {} s", timeout.as_secs())),
    })
}

/// The lines of a failed run worth printing: the failing tests, where they
/// panicked and the panic message (the line after).
fn failure_detail(stdout: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    let mut keep = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("FAILED") || l.contains("replay with") {
            keep.push(format!("  {l}"));
        } else if l.contains("panicked at") {
            keep.push(format!("  {l}"));
            if let Some(message) = lines.get(i + 1) {
                keep.push(format!("    {message}"));
            }
        }
    }
    keep.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_test_binary_of_a_suite() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"gossipkv_sim"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"name":"scenarios"},"profile":{"test":true},"executable":"/t/release/deps/scenarios-1"}
{"reason":"compiler-artifact","target":{"name":"membership"},"profile":{"test":true},"executable":"/t/release/deps/membership-2"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable(messages, "scenarios"),
            Some(PathBuf::from("/t/release/deps/scenarios-1"))
        );
        assert_eq!(
            executable(messages, "membership"),
            Some(PathBuf::from("/t/release/deps/membership-2"))
        );
        assert_eq!(executable(messages, "scale"), None);
    }

    #[test]
    fn failure_detail_keeps_the_failing_tests() {
        let out = "running 3 tests\n..F\nfailures:\n    a_test\ntest result: FAILED. 2 passed; 1 failed\n";
        let err = "thread 'a_test' panicked at tests/x.rs:1:1:\nboom\nsimulation a_test failed with seed 9; replay with GOSSIPKV_SIM_SEED=9\n";
        let d = failure_detail(out, err);
        assert!(d.contains("test result: FAILED"), "{d}");
        assert!(d.contains("panicked at tests/x.rs"), "{d}");
        assert!(d.contains("    boom"), "the panic message: {d}");
        assert!(d.contains("replay with"), "{d}");
        assert!(!d.contains("running 3 tests"), "{d}");
    }
}
