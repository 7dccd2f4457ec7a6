//! Project automation for the gossipkv workspace, run as `cargo xtask <command>`.
//!
//! Commands:
//!
//! - `cargo xtask ci` runs `.ci/run`, the same script CI runs, and exits with its status.
//! - `cargo xtask bench [--quick] [--summary-only] [-- <criterion args>]` runs the criterion
//!   benchmarks of `gossipkv-benches`, prints a summary table and writes
//!   `target/xtask-bench/summary.json`.
//! - `cargo xtask sim [--quick] [--nodes N]...` measures dissemination at 1,000
//!   and 10,000 nodes in the simulator, prints a table and writes
//!   `target/xtask-sim/sim.json`.
//! - `cargo xtask sweep [--seeds A..=B]` runs the simulator's scenario and
//!   membership suites in release mode once per seed.
//! - `cargo xtask crash [--cycles N] [--seed S]` kills a durable node with
//!   SIGKILL N times and checks that no acknowledged write is lost.
//! - `cargo xtask cluster-test [--agents N] [--keep-going]` runs agents in
//!   network namespaces on a bridge (convergence, loss, a cut link, SIGKILL
//!   and restart); SKIPPED without root or namespaces.
//! - `cargo xtask fuzz [--seconds N] [--target T]` runs the cargo-fuzz
//!   targets of `fuzz/` in turn (nightly) and prints execs/s and findings;
//!   `cargo xtask fuzz-corpus` regenerates their seed corpora.
//!
//! The `cargo xtask` alias is defined in `.cargo/config.toml`.

mod bench;
mod ci;
mod cli;
mod cluster_test;
mod crash;
mod criterion;
mod fuzz;
mod sim;
mod summary;
mod sweep;
mod workspace;

use std::process::ExitCode;

use cli::Command;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `args` (without the program name) and runs the selected command.
fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    match cli::parse(args)? {
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ci => ci::run(),
        Command::Bench(opts) => {
            bench::run(&opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(opts) => {
            sim::run(&opts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crash(opts) => crash::run(&opts),
        Command::ClusterTest(opts) => Ok(if cluster_test::run(&opts)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Fuzz(opts) => Ok(if fuzz::run(&opts)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::FuzzCorpus => fuzz::corpus(),
        Command::Sweep(opts) => Ok(if sweep::run(&opts)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    }
}
