//! `cargo xtask sim`: dissemination at scale in the deterministic simulator.
//!
//! Builds and runs the `gossipkv-sim` binary of `gossipkv-sim` in release mode
//! for 1,000 and 10,000 nodes (`--quick`: 1,000 only), with eager push off
//! (anti-entropy only, "pull") and on. Each run lets the cluster form, writes
//! one key and counts the rounds until every node holds it. Prints a table and
//! writes `<target>/xtask-sim/sim.json` (figures of earlier runs for other
//! node counts are kept), whose top-level `sim_*` keys `cargo xtask bench`
//! merges into its summary.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{Map, Value};

use crate::cli::SimOptions;
use crate::workspace;

/// The package and binary that run the measurements.
pub(crate) const SIM_PACKAGE: &str = "gossipkv-sim";
/// See [`SIM_PACKAGE`].
pub(crate) const SIM_BIN: &str = "gossipkv-sim";

/// Node counts of a full run, and of `--quick`.
pub(crate) const FULL_NODES: &[usize] = &[1_000, 10_000];
/// See [`FULL_NODES`].
pub(crate) const QUICK_NODES: &[usize] = &[1_000];

/// Wall-clock limit of one run (one node count, push on or off), seconds,
/// unless `--max-wall-secs` says otherwise. The protocol's work per datagram
/// grows with the membership, so big clusters are slow to simulate; a run
/// that hits the limit is reported as given up.
pub(crate) const DEFAULT_MAX_WALL_SECS: u64 = 3_600;

/// Runs the simulations, prints the table and writes `sim.json`.
pub(crate) fn run(opts: &SimOptions) -> anyhow::Result<()> {
    let root = workspace::root();
    let target_dir = workspace::target_dir(&root)?;
    let out_dir = target_dir.join("xtask-sim");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let runs_file = out_dir.join("runs.json");
    let _ = fs::remove_file(&runs_file);

    let args = cargo_args(opts, &runs_file);
    println!("$ cargo {}", args.join(" "));
    let status = Command::new(workspace::cargo())
        .args(&args)
        .current_dir(&root)
        .status()
        .context("failed to run the simulator")?;
    if !status.success() {
        bail!("`{SIM_BIN}` failed ({status})");
    }
    let text = fs::read_to_string(&runs_file)
        .with_context(|| format!("cannot read {}", runs_file.display()))?;
    let runs: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array", runs_file.display()))?;

    println!();
    print!("{}", table(&runs));

    let sim_file = out_dir.join("sim.json");
    let mut figures = match fs::read_to_string(&sim_file) {
        Ok(old) => match serde_json::from_str::<Value>(&old) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        },
        Err(_) => Map::new(),
    };
    merge_figures(&mut figures, &runs);
    let text = serde_json::to_string_pretty(&Value::Object(figures))?;
    fs::write(&sim_file, text + "\n")
        .with_context(|| format!("cannot write {}", sim_file.display()))?;
    println!("\nwrote {}", sim_file.display());
    Ok(())
}

/// The node counts to simulate.
pub(crate) fn node_counts(opts: &SimOptions) -> Vec<usize> {
    if !opts.nodes.is_empty() {
        opts.nodes.clone()
    } else if opts.quick {
        QUICK_NODES.to_vec()
    } else {
        FULL_NODES.to_vec()
    }
}

/// Arguments for `cargo`: `run --release -p gossipkv-sim --bin gossipkv-sim --
/// --nodes N... --max-wall-secs S --json FILE [extra...]`.
pub(crate) fn cargo_args(opts: &SimOptions, json: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--release",
        "-p",
        SIM_PACKAGE,
        "--bin",
        SIM_BIN,
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in node_counts(opts) {
        args.push("--nodes".into());
        args.push(n.to_string());
    }
    args.push("--max-wall-secs".into());
    args.push(
        opts.max_wall_secs
            .unwrap_or(DEFAULT_MAX_WALL_SECS)
            .to_string(),
    );
    args.push("--json".into());
    args.push(json.display().to_string());
    args.extend(opts.extra.iter().cloned());
    args
}

fn mode(run: &Value) -> &'static str {
    if run.get("push").and_then(Value::as_bool).unwrap_or(false) {
        "push"
    } else {
        "pull"
    }
}

/// Adds the `sim_*` figures of `runs` to `figures`: per node count N and mode
/// (`pull` = anti-entropy only, `push` = eager push too), rounds to converge
/// (null when the run gave up), bytes per node per round while disseminating
/// and idle, membership formation rounds and wall time; the yardstick per N;
/// and the raw reports under `sim_runs`.
pub(crate) fn merge_figures(figures: &mut Map<String, Value>, runs: &[Value]) {
    let mut kept: Vec<Value> = match figures.get("sim_runs") {
        Some(Value::Array(old)) => old
            .iter()
            .filter(|o| {
                !runs
                    .iter()
                    .any(|r| r.get("nodes") == o.get("nodes") && r.get("push") == o.get("push"))
            })
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    for run in runs {
        let Some(n) = run.get("nodes").and_then(Value::as_u64) else {
            continue;
        };
        let m = mode(run);
        let get = |k: &str| run.get(k).cloned().unwrap_or(Value::Null);
        for (key, field) in [
            (format!("sim_rounds_n{n}_{m}"), "rounds"),
            (
                format!("sim_bytes_per_node_round_n{n}_{m}"),
                "bytes_per_node_per_round",
            ),
            (
                format!("sim_idle_bytes_per_node_round_n{n}_{m}"),
                "idle_bytes_per_node_per_round",
            ),
            (
                format!("sim_membership_rounds_n{n}_{m}"),
                "membership_rounds",
            ),
            (
                format!("sim_idle_suspicions_per_node_round_n{n}_{m}"),
                "idle_suspicions_per_node_per_round",
            ),
            (format!("sim_wall_secs_n{n}_{m}"), "wall_secs"),
            (format!("sim_gave_up_n{n}_{m}"), "gave_up"),
        ] {
            figures.insert(key, get(field));
        }
        figures.insert(format!("sim_yardstick_n{n}"), get("yardstick"));
        kept.push(run.clone());
    }
    figures.insert("sim_runs".into(), Value::Array(kept));
}

fn cell(v: Option<&Value>, decimals: usize) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".into(),
    }
}

/// The table printed at the end: one row per run.
pub(crate) fn table(runs: &[Value]) -> String {
    let mut out = format!(
        "{:>7} {:>5} {:>10} {:>9} {:>10} {:>13} {:>13} {:>9}\n",
        "nodes",
        "push",
        "rounds",
        "yardstick",
        "membership",
        "B/node/round",
        "idle B/n/r",
        "wall s"
    );
    for r in runs {
        let rounds = match r.get("rounds").and_then(Value::as_f64) {
            Some(x) => format!("{x:.2}"),
            None => "gave up".into(),
        };
        out.push_str(&format!(
            "{:>7} {:>5} {:>10} {:>9} {:>10} {:>13} {:>13} {:>9}\n",
            r.get("nodes").and_then(Value::as_u64).unwrap_or(0),
            if mode(r) == "push" { "on" } else { "off" },
            rounds,
            cell(r.get("yardstick"), 2),
            cell(r.get("membership_rounds"), 0),
            cell(r.get("bytes_per_node_per_round"), 0),
            cell(r.get("idle_bytes_per_node_per_round"), 0),
            cell(r.get("wall_secs"), 1),
        ));
        if let Some(why) = r.get("gave_up").and_then(Value::as_str) {
            out.push_str(&format!("        gave up: {why}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(nodes: u64, push: bool, rounds: Option<f64>) -> Value {
        serde_json::json!({
            "nodes": nodes, "push": push, "rounds": rounds, "yardstick": 8.2,
            "bytes_per_node_per_round": 100.0, "idle_bytes_per_node_per_round": 90.0,
            "membership_rounds": 20.0, "wall_secs": 1.5, "gave_up": null,
        })
    }

    #[test]
    fn figures_are_keyed_by_nodes_and_mode() {
        let mut f = Map::new();
        merge_figures(
            &mut f,
            &[run(1000, false, Some(1.5)), run(1000, true, Some(0.4))],
        );
        assert_eq!(f["sim_rounds_n1000_pull"], 1.5);
        assert_eq!(f["sim_rounds_n1000_push"], 0.4);
        assert_eq!(f["sim_yardstick_n1000"], 8.2);
        assert_eq!(f["sim_idle_bytes_per_node_round_n1000_pull"], 90.0);
        // A later run for another size keeps these, and a gave-up run is null.
        merge_figures(&mut f, &[run(10000, false, None)]);
        assert_eq!(f["sim_rounds_n1000_pull"], 1.5);
        assert!(f["sim_rounds_n10000_pull"].is_null());
        assert_eq!(f["sim_runs"].as_array().unwrap().len(), 3);
        let t = table(&[run(10000, false, None)]);
        assert!(t.contains("gave up"), "{t}");
    }

    #[test]
    fn quick_runs_one_thousand_nodes() {
        let quick = SimOptions {
            quick: true,
            ..SimOptions::default()
        };
        assert_eq!(node_counts(&quick), vec![1_000]);
        assert_eq!(node_counts(&SimOptions::default()), vec![1_000, 10_000]);
        let args = cargo_args(&quick, Path::new("/t/runs.json"));
        assert!(args.windows(2).any(|w| w == ["--nodes", "1000"]));
        assert!(args.windows(2).any(|w| w == ["--json", "/t/runs.json"]));
    }
}
