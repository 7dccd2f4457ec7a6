//! `cargo xtask crash`: the crash loop of `crates/gossipkv/tests/crash.rs`
//! with more cycles than `cargo test` runs, in release mode.

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;

use crate::cli::CrashOptions;
use crate::workspace;

/// Runs the crash loop; fails when a write was lost or a sequence number
/// reused (the test prints the seed that replays it).
pub(crate) fn run(opts: &CrashOptions) -> anyhow::Result<ExitCode> {
    println!(
        "crash loop: {} cycles of a durable node killed with SIGKILL (release build)",
        opts.cycles
    );
    let started = Instant::now();
    let mut cmd = Command::new(workspace::cargo());
    cmd.current_dir(workspace::root())
        .args([
            "test",
            "--release",
            "-p",
            "gossipkv",
            "--test",
            "crash",
            "--",
            "acknowledged_writes_survive_sigkill",
            "--exact",
            "--nocapture",
        ])
        .env("GOSSIPKV_CRASH_CYCLES", opts.cycles.to_string());
    if let Some(seed) = opts.seed {
        cmd.env("GOSSIPKV_CRASH_SEED", seed.to_string());
    }
    let status = cmd.status().context("cannot run cargo test")?;
    println!(
        "crash loop {} in {:.0} s",
        if status.success() { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
