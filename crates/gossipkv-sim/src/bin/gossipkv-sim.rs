//! Measures dissemination at scale: `gossipkv-sim --nodes 1000 --nodes 10000`.
//!
//! For each node count and each of push off (anti-entropy only) and push on,
//! lets a cluster form (or, with `--membership given`, starts it formed, its
//! nodes drawing peers from a shared directory), writes one key and counts the
//! gossip rounds until every node holds it (see [`gossipkv_sim::scale`]). The push-off and push-on runs
//! of one node count run side by side on two threads. Progress goes to stderr,
//! a table to stdout, and `--json FILE` writes the reports as a JSON array.
//!
//! Runs are bounded in virtual time; `--max-wall-secs` and `--max-rss-mb` also
//! stop a run that would take too long or too much memory (the report then
//! says it gave up, and why).

use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gossipkv_core::DetectorConfig;
use gossipkv_sim::scale::{rounds_to_converge_with, KindRate, Progress, ScaleOptions, ScaleReport};
use gossipkv_sim::SimConfig;

const USAGE: &str = "\
Usage: gossipkv-sim [OPTIONS]

Options:
  --nodes N                 Cluster size; repeat for several (default 1000)
  --push on|off|both        Eager push of fresh writes (default both)
  --membership formed|given|both
                            Let membership form through gossip (formed), or
                            start formed with peers drawn from a shared list
                            of all nodes, no member tables (given; what fits
                            10,000 nodes in memory). Default formed
  --seed S                  Seed (default 1)
  --fanout F                Peers per round (default 3)
  --seeds-per-node K        Earlier nodes each node is seeded with (default 4)
  --max-rounds R            Give up on dissemination after R rounds (default 200)
  --max-membership-rounds R Give up on membership forming after R rounds (default 200)
  --idle-rounds R           Rounds of idle traffic measured (default 5)
  --max-wall-secs S         Give up a run after S seconds of wall time
  --max-rss-mb M            Give up when the process uses more than M MiB
                            (default 12288)
  --sequential              Run push off and push on one after the other
  --lenient-detector        Suspect a member only after 60 silent rounds (no
                            false suspicions, so no suspect probes: rounds
                            then measure the periodic exchanges alone)
  --json FILE               Write the reports as a JSON array";

struct Args {
    nodes: Vec<usize>,
    push: Vec<bool>,
    given: Vec<bool>,
    seed: u64,
    fanout: usize,
    seeds_per_node: usize,
    opts: ScaleOptions,
    max_wall: Option<Duration>,
    max_rss_mb: u64,
    sequential: bool,
    lenient_detector: bool,
    json: Option<String>,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut a = Args {
        nodes: Vec::new(),
        push: vec![false, true],
        given: vec![false],
        seed: 1,
        fanout: 3,
        seeds_per_node: 4,
        opts: ScaleOptions::default(),
        max_wall: None,
        max_rss_mb: 12 * 1024,
        sequential: false,
        lenient_detector: false,
        json: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("bad value `{v}` for {name}"))
        }
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--nodes" => a.nodes.push(num("--nodes", value("--nodes")?)?),
            "--push" => {
                a.push = match value("--push")?.as_str() {
                    "on" => vec![true],
                    "off" => vec![false],
                    "both" => vec![false, true],
                    other => return Err(format!("bad value `{other}` for --push")),
                }
            }
            "--membership" => {
                a.given = match value("--membership")?.as_str() {
                    "formed" => vec![false],
                    "given" => vec![true],
                    "both" => vec![false, true],
                    other => return Err(format!("bad value `{other}` for --membership")),
                }
            }
            "--seed" => a.seed = num("--seed", value("--seed")?)?,
            "--fanout" => a.fanout = num("--fanout", value("--fanout")?)?,
            "--seeds-per-node" => {
                a.seeds_per_node = num("--seeds-per-node", value("--seeds-per-node")?)?
            }
            "--max-rounds" => a.opts.max_rounds = num("--max-rounds", value("--max-rounds")?)?,
            "--max-membership-rounds" => {
                a.opts.max_membership_rounds =
                    num("--max-membership-rounds", value("--max-membership-rounds")?)?
            }
            "--idle-rounds" => a.opts.idle_rounds = num("--idle-rounds", value("--idle-rounds")?)?,
            "--max-wall-secs" => {
                a.max_wall = Some(Duration::from_secs(num(
                    "--max-wall-secs",
                    value("--max-wall-secs")?,
                )?))
            }
            "--max-rss-mb" => a.max_rss_mb = num("--max-rss-mb", value("--max-rss-mb")?)?,
            "--sequential" => a.sequential = true,
            "--lenient-detector" => a.lenient_detector = true,
            "--json" => a.json = Some(value("--json")?),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    if a.nodes.is_empty() {
        a.nodes.push(1000);
    }
    Ok(Some(a))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = match parse(&args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let mut reports = Vec::new();
    let sizes: Vec<(usize, bool)> = a
        .nodes
        .iter()
        .flat_map(|&n| a.given.iter().map(move |&g| (n, g)))
        .collect();
    for (nodes, given_membership) in sizes {
        let run = |push: bool| {
            let cfg = SimConfig {
                seed: a.seed,
                nodes,
                given_membership,
                fanout: a.fanout,
                seeds_per_node: a.seeds_per_node,
                push,
                detector: a
                    .lenient_detector
                    .then(|| lenient_detector(SimConfig::default().gossip_interval_ms)),
                ..SimConfig::default()
            };
            run_one(cfg, &a)
        };
        if a.sequential || a.push.len() < 2 {
            reports.extend(a.push.iter().map(|&p| run(p)));
        } else {
            let run = &run;
            let done: Vec<ScaleReport> = std::thread::scope(|s| {
                let handles: Vec<_> = a.push.iter().map(|&p| s.spawn(move || run(p))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("simulation thread panicked"))
                    .collect()
            });
            reports.extend(done);
        }
    }
    print!("{}", table(&reports));
    for r in &reports {
        let kinds = |v: &[KindRate]| {
            v.iter()
                .map(|k| format!("{} {:.1} ({:.0} B)", k.kind.name(), k.datagrams, k.bytes))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "n={} push={}: datagrams/node/round while disseminating: {}; idle: {}; \
             idle false suspicions/node/round {:.2}, false deaths {}",
            r.nodes,
            on_off(r.push),
            kinds(&r.by_kind),
            kinds(&r.idle_by_kind),
            r.idle_suspicions_per_node_per_round,
            r.false_deaths
        );
    }
    if let Some(path) = &a.json {
        if let Err(e) = std::fs::write(path, json(&reports)) {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// One measurement, with progress on stderr and the wall-clock and memory limits.
fn run_one(cfg: SimConfig, a: &Args) -> ScaleReport {
    let label = format!(
        "n={} push={} membership={}",
        cfg.nodes,
        on_off(cfg.push),
        membership(cfg.given_membership)
    );
    eprintln!("[sim] {label}: starting");
    let start = Instant::now();
    let mut last = Instant::now();
    let report = rounds_to_converge_with(cfg, &a.opts, |p: &Progress| {
        // Phase ends always; otherwise at most one line every 5 s.
        if let Some(detail) = &p.detail {
            if p.done || last.elapsed() >= Duration::from_secs(5) {
                last = Instant::now();
                eprintln!(
                    "[sim] {label} {:>7.1}s  {} round {:.1}: {}",
                    start.elapsed().as_secs_f64(),
                    p.phase,
                    p.rounds,
                    detail
                );
            }
        }
        if let Some(max) = a.max_wall {
            if start.elapsed() >= max {
                return ControlFlow::Break(format!("wall-clock limit of {} s", max.as_secs()));
            }
        }
        match rss_mb() {
            Some(mb) if mb > a.max_rss_mb => {
                ControlFlow::Break(format!("memory limit: {mb} MiB > {} MiB", a.max_rss_mb))
            }
            _ => ControlFlow::Continue(()),
        }
    });
    eprintln!(
        "[sim] {label}: done in {:.1}s wall{}",
        start.elapsed().as_secs_f64(),
        report
            .gave_up
            .as_ref()
            .map_or_else(String::new, |g| format!(", gave up: {g}"))
    );
    report
}

/// A failure detector that suspects a member only after 60 unanswered
/// intervals.
fn lenient_detector(interval_ms: u64) -> DetectorConfig {
    let interval = std::time::Duration::from_millis(interval_ms);
    let mut d = DetectorConfig::for_interval(interval);
    d.confirm_timeout = 60 * interval;
    d
}

/// Resident memory of this process, MiB (Linux only).
fn rss_mb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096 / (1024 * 1024))
}

fn membership(given: bool) -> &'static str {
    if given {
        "given"
    } else {
        "formed"
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "gave up".to_string(), |r| format!("{r:.2}"))
}

fn table(reports: &[ScaleReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>7} {:>5} {:>11} {:>8} {:>10} {:>13} {:>10} {:>8}",
        "nodes",
        "push",
        "membership",
        "rounds",
        "yardstick",
        "B/node/round",
        "idle B/n/r",
        "wall s"
    );
    for r in reports {
        let _ = writeln!(
            s,
            "{:>7} {:>5} {:>11} {:>8} {:>10.2} {:>13} {:>10} {:>8.1}",
            r.nodes,
            on_off(r.push),
            if r.given_membership {
                "given".to_string()
            } else {
                opt(r.membership_rounds)
            },
            opt(r.rounds),
            r.yardstick,
            whole(r.bytes_per_node_per_round),
            whole(r.idle_bytes_per_node_per_round),
            r.wall_secs
        );
        if let Some(why) = &r.gave_up {
            let _ = writeln!(s, "        gave up: {why}");
        }
    }
    s
}

/// `x` rounded, or `-` when it was not measured.
fn whole(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.0}")
    } else {
        "-".to_string()
    }
}

fn jnum(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_string(),
    }
}

fn json(reports: &[ScaleReport]) -> String {
    let items: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                concat!(
                    "  {{\"nodes\": {}, \"push\": {}, \"membership\": \"{}\", ",
                    "\"seed\": {}, \"fanout\": {}, ",
                    "\"membership_rounds\": {}, \"membership_alive_share\": {}, ",
                    "\"membership_suspect_share\": {}, ",
                    "\"rounds\": {}, \"reached_share\": {}, \"yardstick\": {}, ",
                    "\"push_yardstick\": {}, \"bytes_per_node_per_round\": {}, ",
                    "\"datagrams_per_node_per_round\": {}, ",
                    "\"idle_bytes_per_node_per_round\": {}, ",
                    "\"idle_datagrams_per_node_per_round\": {}, ",
                    "\"idle_suspicions_per_node_per_round\": {}, \"false_deaths\": {}, ",
                    "\"wall_secs\": {}, ",
                    "\"gave_up\": {}}}"
                ),
                r.nodes,
                r.push,
                membership(r.given_membership),
                r.seed,
                r.fanout,
                jnum(r.membership_rounds),
                jnum(Some(r.membership_alive_share)),
                jnum(Some(r.membership_suspect_share)),
                jnum(r.rounds),
                jnum(Some(r.reached_share)),
                jnum(Some(r.yardstick)),
                jnum(Some(r.push_yardstick)),
                jnum(Some(r.bytes_per_node_per_round)),
                jnum(Some(r.datagrams_per_node_per_round)),
                jnum(Some(r.idle_bytes_per_node_per_round)),
                jnum(Some(r.idle_datagrams_per_node_per_round)),
                jnum(Some(r.idle_suspicions_per_node_per_round)),
                r.false_deaths,
                jnum(Some(r.wall_secs)),
                r.gave_up
                    .as_ref()
                    .map_or_else(|| "null".to_string(), |g| format!("{g:?}")),
            )
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}
