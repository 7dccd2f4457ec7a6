//! `cluster_bench`: measurements of real gossipkv clusters on loopback UDP.
//!
//! Every node runs in this process, bound to `127.0.0.1:0`, gossiping every
//! 100 ms; nodes are started a few milliseconds apart, each seeded with the
//! first node and the one started before it. Run by `cargo xtask bench`:
//!
//! ```text
//! cargo run --release -p gossipkv-benches --bin cluster_bench -- \
//!     --out target/xtask-bench/cluster.json [--quick] [--svg PATH] [--only LIST]
//! ```
//!
//! It prints progress lines and a table, writes a flat JSON object of numbers
//! to `--out` and an SVG of propagation time against cluster size (eager push
//! on and off) to `--svg` (default: `propagation.svg` beside `--out`).
//! `--only` takes a comma-separated list of scenarios (`memory`, `n10`,
//! `bulk`, `n100`, `maxvalue`, `sweep`, `latejoin`, `coldburst`, `durable`,
//! `lifetime`, ...) to run a
//! subset.
//!
//! Propagation is the time from `set` on one node until `get` returns the
//! value on every other node; the nodes are polled from the main thread (not
//! a runtime worker) every 100 µs. A sample that does not complete within its
//! deadline counts as the deadline in the percentiles and is reported in
//! `propagation_timeouts_*`. Percentiles are nearest-rank.
//!
//! # Modules
//!
//! - [`options`]: command line and the sample counts of each mode.
//! - [`report`]: the figures, progress lines, the JSON file and the table.
//! - [`cluster`]: starting, forming and shutting down loopback clusters.
//! - [`propagation`]: timing single writes; the `n10`, `n100` and `sweep`
//!   scenarios.
//! - [`idle`]: traffic of a cluster nobody writes to.
//! - [`bulk`]: the `bulk` scenario (10,000 keys written on one node).
//! - [`max_value`]: the `maxvalue` scenario (the largest value).
//! - [`catchup`]: the cold paths, `latejoin` and `coldburst`.
//! - [`memory`]: the `memory` scenario, in a subprocess.
//! - [`durable`]: the `durable` scenario: writes with a data dir, restart
//!   with a million keys on disk, disk bytes per key.
//! - [`budget`]: the `budget` scenario (a cache filled past `max_bytes`).
//! - [`lifetime`]: the `lifetime` scenario (TTL and ephemeral keys, in
//!   the simulator).
//! - [`plot`]: the SVG of the sweep.

mod amplify;
mod budget;
mod bulk;
mod catchup;
use catchup::Values;
mod cluster;
mod durable;
mod idle;
mod lifetime;
mod max_value;
mod memory;
mod options;
mod plot;
mod propagation;
mod report;
mod serve;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gossipkv::GossipKv;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::options::{Command, Options, Plan, USAGE};
use crate::report::{progress, Report};

/// The node type of every cluster.
type Kv = GossipKv<String, String>;

/// Gossip interval of every node.
const INTERVAL: Duration = Duration::from_millis(100);
/// Seed of the choice of writers and of the pauses between samples.
const SEED: u64 = 0x6055_1b6b_c105_7e12;

fn main() -> Result<()> {
    let opts = match options::parse_args(std::env::args().skip(1))? {
        Command::Run(opts) => opts,
        Command::MemoryProbe(key_len) => return memory::probe(key_len),
        Command::ServeProbe => return serve::probe(),
        Command::BudgetProbe => return budget::probe(),
        Command::RestartProbe(dir, keys, key) => {
            return durable::restart_probe(&dir, keys, &key);
        }
        Command::Help => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    // The measuring future runs on this thread, outside the two workers that
    // drive the nodes, so its polling sleeps never stall a node.
    runtime.block_on(run(&opts))
}

/// Runs the scenarios `opts` asks for, then writes and prints the figures.
/// Fails, after writing them, if any scenario failed.
async fn run(opts: &Options) -> Result<()> {
    let plan = Plan::new(opts.quick);
    let t0 = Instant::now();
    let mut report = Report::default();
    let mut rng = SmallRng::seed_from_u64(SEED);
    progress(
        t0,
        format!(
            "cluster_bench ({} mode), loopback UDP, gossip every {} ms",
            if opts.quick { "quick" } else { "full" },
            INTERVAL.as_millis()
        ),
    );

    if opts.wants("memory") {
        memory::scenario(&mut report, t0);
    }
    if opts.wants("amplify") {
        let result = amplify::scenario(&mut report, t0).await;
        report.check(t0, "amplify", result);
    }
    if opts.wants("budget") {
        budget::scenario(&mut report, t0).await;
    }
    if opts.wants("n10") {
        let result = propagation::scenario_n10(&mut report, plan, &mut rng, t0).await;
        report.check(t0, "n10", result);
    }
    if opts.wants("n10keyed") {
        let result = propagation::scenario_n10_keyed(&mut report, plan, &mut rng, t0).await;
        report.check(t0, "n10keyed", result);
    }
    if opts.wants("bulk") {
        let result = bulk::scenario(&mut report, plan, &mut rng, t0).await;
        report.check(t0, "bulk", result);
    }
    if opts.wants("n100") {
        let result = propagation::scenario_n100(&mut report, plan, &mut rng, t0).await;
        report.check(t0, "n100", result);
    }
    if opts.wants("maxvalue") {
        let result = max_value::scenario(&mut report, plan, t0).await;
        report.check(t0, "maxvalue", result);
    }
    if opts.wants("sweep") {
        let result = propagation::scenario_sweep(&mut report, plan, &mut rng, t0, &opts.svg).await;
        report.check(t0, "sweep", result);
    }

    if opts.wants("latejoin") {
        for kind in [Values::Repetitive, Values::Random] {
            let result = catchup::late_join(&mut report, plan, t0, catchup::JOIN_20K, kind).await;
            report.check(t0, "latejoin", result);
        }
    }
    // A million keys: in full runs, or when asked for by name.
    if (!opts.quick && opts.wants("latejoin1m")) || opts.only.iter().any(|o| o == "latejoin1m") {
        for kind in [Values::Repetitive, Values::Random] {
            let result = catchup::late_join(&mut report, plan, t0, catchup::JOIN_1M, kind).await;
            report.check(t0, "latejoin1m", result);
        }
    }
    if opts.wants("serve") {
        serve::scenario(&mut report, t0);
    }
    if opts.wants("heal") {
        let result = catchup::heal(&mut report, plan, t0).await;
        report.check(t0, "heal", result);
    }
    if opts.wants("coldburst") {
        let result = catchup::cold_burst(&mut report, plan, t0).await;
        report.check(t0, "coldburst", result);
    }

    if opts.wants("lifetime") {
        let result = lifetime::scenario(&mut report, t0);
        report.check(t0, "lifetime", result);
    }

    if opts.wants("durable") {
        let base = opts
            .out
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("durable-tmp");
        let result = durable::scenario(&mut report, opts.quick, &base, t0).await;
        report.check(t0, "durable", result);
    }

    report.finish(&opts.out, opts.quick, t0)
}
