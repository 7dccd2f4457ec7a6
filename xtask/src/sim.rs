//! `cargo xtask sim`: dissemination at scale in the deterministic simulator.
//!
//! Builds and runs the `gossipkv-sim` binary of `gossipkv-sim` in release mode.
//! Each run writes one key on one node of a cluster and counts the rounds
//! until every node holds it, with eager push off (anti-entropy only, "pull")
//! and on. Two kinds of runs:
//!
//! - **given membership**, for 1,000 and 10,000 nodes: the cluster starts
//!   formed and its nodes draw peers from a shared list of all nodes (a
//!   simulated node then costs no member table; seconds per run). Their
//!   figures are the `sim_*` keys, e.g. `sim_rounds_n10000_pull`.
//! - **formed membership**, for up to [`FORMED_MAX_NODES`] nodes (not with
//!   `--quick`): the cluster first forms through gossip, failure detector
//!   and all (about a minute for 1,000 nodes; each simulated node keeps
//!   about 520 B per member, so 10,000 nodes would need ~50 GB). Their
//!   figures are the `sim_formed_*` keys.
//!
//! Prints a table and writes `<target>/xtask-sim/sim.json` (figures of earlier
//! runs for other node counts are kept), whose top-level `sim_*` keys
//! `cargo xtask bench` merges into its summary. `cargo xtask bench` runs the
//! given-membership part itself.

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

/// Node counts simulated unless `--nodes` says otherwise.
pub(crate) const DEFAULT_NODES: &[usize] = &[1_000, 10_000];

/// Largest node count simulated with formed membership (larger ones are
/// skipped: see the module documentation).
pub(crate) const FORMED_MAX_NODES: usize = 2_000;

/// Wall-clock limit of one run (one node count, push on or off), seconds,
/// unless `--max-wall-secs` says otherwise. The protocol's work per datagram
/// grows with the membership, so big clusters are slow to simulate; a run
/// that hits the limit is reported as given up.
pub(crate) const DEFAULT_MAX_WALL_SECS: u64 = 3_600;

/// How membership is simulated (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Membership {
    Given,
    Formed,
}

impl Membership {
    fn arg(self) -> &'static str {
        match self {
            Membership::Given => "given",
            Membership::Formed => "formed",
        }
    }
}

/// Runs the simulations, prints the table and writes `sim.json`.
pub(crate) fn run(opts: &SimOptions) -> anyhow::Result<()> {
    let root = workspace::root();
    let target_dir = workspace::target_dir(&root)?;
    let out_dir = target_dir.join("xtask-sim");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;

    let mut runs: Vec<Value> = Vec::new();
    for (membership, nodes) in plan(opts) {
        if nodes.is_empty() {
            continue;
        }
        let runs_file = out_dir.join(format!("runs-{}.json", membership.arg()));
        let _ = fs::remove_file(&runs_file);
        let args = cargo_args(opts, membership, &nodes, &runs_file);
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
        let mut these: Vec<Value> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array", runs_file.display()))?;
        runs.append(&mut these);
    }

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

/// The node counts to simulate with each kind of membership: given for
/// every count; formed for those up to [`FORMED_MAX_NODES`], and not with
/// `--quick` or `--given-only`.
pub(crate) fn plan(opts: &SimOptions) -> Vec<(Membership, Vec<usize>)> {
    let nodes = if opts.nodes.is_empty() {
        DEFAULT_NODES.to_vec()
    } else {
        opts.nodes.clone()
    };
    let formed: Vec<usize> = if opts.quick || opts.given_only {
        Vec::new()
    } else {
        let (small, big): (Vec<usize>, Vec<usize>) =
            nodes.iter().partition(|&&n| n <= FORMED_MAX_NODES);
        for n in big {
            println!(
                "(formed membership at {n} nodes skipped: each simulated node keeps \
                 ~520 B per member, ~{} GB in all; given membership covers it)",
                n * n * 520 / 1_000_000_000
            );
        }
        small
    };
    vec![(Membership::Given, nodes), (Membership::Formed, formed)]
}

/// Arguments for `cargo`: `run --release -p gossipkv-sim --bin gossipkv-sim --
/// --membership M --nodes N... --max-wall-secs S --json FILE [extra...]`.
pub(crate) fn cargo_args(
    opts: &SimOptions,
    membership: Membership,
    nodes: &[usize],
    json: &Path,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--release",
        "-p",
        SIM_PACKAGE,
        "--bin",
        SIM_BIN,
        "--",
        "--membership",
        membership.arg(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in nodes {
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

/// How a run's membership came about: `"given"` or `"formed"` (runs written
/// before the simulator had given membership say nothing, and were formed).
fn membership(run: &Value) -> &str {
    run.get("membership")
        .and_then(Value::as_str)
        .unwrap_or("formed")
}

/// Whether a run's membership was formed (its keys get a `formed_` prefix).
fn formed(run: &Value) -> bool {
    membership(run) == "formed"
}

/// Figures of formed runs written before they had their own prefix.
const LEGACY_PREFIXES: &[&str] = &[
    "sim_membership_rounds_n",
    "sim_idle_suspicions_per_node_round_n",
];

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
/// and idle, and wall time; for formed membership (keys `sim_formed_*`) also
/// membership formation rounds and false suspicions; the yardstick per N;
/// and the raw reports under `sim_runs`.
pub(crate) fn merge_figures(figures: &mut Map<String, Value>, runs: &[Value]) {
    figures.retain(|k, _| !LEGACY_PREFIXES.iter().any(|p| k.starts_with(p)));
    let same = |a: &Value, b: &Value| {
        a.get("nodes") == b.get("nodes")
            && a.get("push") == b.get("push")
            && membership(a) == membership(b)
    };
    let mut kept: Vec<Value> = match figures.get("sim_runs") {
        Some(Value::Array(old)) => old
            .iter()
            .filter(|o| !runs.iter().any(|r| same(r, o)))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    for run in runs {
        let Some(n) = run.get("nodes").and_then(Value::as_u64) else {
            continue;
        };
        let m = mode(run);
        let p = if formed(run) { "sim_formed" } else { "sim" };
        let get = |k: &str| run.get(k).cloned().unwrap_or(Value::Null);
        let mut fields = vec![
            ("rounds", "rounds"),
            ("bytes_per_node_round", "bytes_per_node_per_round"),
            ("idle_bytes_per_node_round", "idle_bytes_per_node_per_round"),
            ("wall_secs", "wall_secs"),
            ("gave_up", "gave_up"),
        ];
        if formed(run) {
            fields.push(("membership_rounds", "membership_rounds"));
            fields.push((
                "idle_suspicions_per_node_round",
                "idle_suspicions_per_node_per_round",
            ));
        }
        for (name, field) in fields {
            figures.insert(format!("{p}_{name}_n{n}_{m}"), get(field));
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
            if formed(r) {
                cell(r.get("membership_rounds"), 0)
            } else {
                "given".into()
            },
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

    fn run(nodes: u64, push: bool, membership: &str, rounds: Option<f64>) -> Value {
        serde_json::json!({
            "nodes": nodes, "push": push, "membership": membership, "rounds": rounds,
            "yardstick": 8.2, "bytes_per_node_per_round": 100.0,
            "idle_bytes_per_node_per_round": 90.0, "membership_rounds": 20.0,
            "idle_suspicions_per_node_per_round": 0.0, "wall_secs": 1.5, "gave_up": null,
        })
    }

    #[test]
    fn figures_are_keyed_by_nodes_mode_and_membership() {
        let mut f = Map::new();
        merge_figures(
            &mut f,
            &[
                run(1000, false, "given", Some(1.5)),
                run(1000, true, "given", Some(0.4)),
                run(1000, false, "formed", Some(1.7)),
            ],
        );
        assert_eq!(f["sim_rounds_n1000_pull"], 1.5);
        assert_eq!(f["sim_rounds_n1000_push"], 0.4);
        assert_eq!(f["sim_formed_rounds_n1000_pull"], 1.7);
        assert_eq!(f["sim_formed_membership_rounds_n1000_pull"], 20.0);
        assert!(!f.contains_key("sim_membership_rounds_n1000_pull"));
        assert_eq!(f["sim_yardstick_n1000"], 8.2);
        assert_eq!(f["sim_idle_bytes_per_node_round_n1000_pull"], 90.0);
        // A later run for another size keeps these, and a gave-up run is null.
        merge_figures(&mut f, &[run(10000, false, "given", None)]);
        assert_eq!(f["sim_rounds_n1000_pull"], 1.5);
        assert!(f["sim_rounds_n10000_pull"].is_null());
        assert_eq!(f["sim_runs"].as_array().unwrap().len(), 4);
        // A new run replaces the old one of the same kind only.
        merge_figures(&mut f, &[run(1000, false, "given", Some(1.2))]);
        assert_eq!(f["sim_rounds_n1000_pull"], 1.2);
        assert_eq!(f["sim_formed_rounds_n1000_pull"], 1.7);
        assert_eq!(f["sim_runs"].as_array().unwrap().len(), 4);
        let t = table(&[run(10000, false, "given", None)]);
        assert!(t.contains("gave up"), "{t}");
    }

    #[test]
    fn runs_from_before_given_membership_count_as_formed() {
        let mut legacy = run(1000, false, "formed", Some(3.5));
        legacy.as_object_mut().unwrap().remove("membership");
        let mut f = Map::new();
        f.insert("sim_runs".into(), Value::Array(vec![legacy]));
        f.insert("sim_membership_rounds_n1000_pull".into(), 41.into());
        f.insert(
            "sim_idle_suspicions_per_node_round_n1000_pull".into(),
            0.into(),
        );
        merge_figures(&mut f, &[run(1000, false, "formed", Some(3.6))]);
        assert_eq!(f["sim_runs"].as_array().unwrap().len(), 1, "replaced");
        assert!(!f.contains_key("sim_membership_rounds_n1000_pull"));
        assert!(!f.contains_key("sim_idle_suspicions_per_node_round_n1000_pull"));
        assert_eq!(f["sim_formed_rounds_n1000_pull"], 3.6);
    }

    #[test]
    fn quick_and_given_only_skip_formed_membership() {
        let quick = SimOptions {
            quick: true,
            ..SimOptions::default()
        };
        assert_eq!(
            plan(&quick),
            vec![
                (Membership::Given, vec![1_000, 10_000]),
                (Membership::Formed, vec![])
            ]
        );
        assert_eq!(
            plan(&SimOptions::default()),
            vec![
                (Membership::Given, vec![1_000, 10_000]),
                (Membership::Formed, vec![1_000])
            ]
        );
        let given_only = SimOptions {
            given_only: true,
            nodes: vec![500],
            ..SimOptions::default()
        };
        assert_eq!(plan(&given_only)[1], (Membership::Formed, vec![]));
        let args = cargo_args(
            &quick,
            Membership::Given,
            &[1_000],
            Path::new("/t/runs.json"),
        );
        assert!(args.windows(2).any(|w| w == ["--nodes", "1000"]));
        assert!(args.windows(2).any(|w| w == ["--membership", "given"]));
        assert!(args.windows(2).any(|w| w == ["--json", "/t/runs.json"]));
    }
}
