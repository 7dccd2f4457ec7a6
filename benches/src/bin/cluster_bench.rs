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
//! `bulk`, `n100`, `maxvalue`, `sweep`) to run a subset.
//!
//! Propagation is the time from `set` on one node until `get` returns the
//! value on every other node; the nodes are polled from the main thread (not
//! a runtime worker) every 100 µs. A sample that does not complete within its
//! deadline counts as the deadline in the percentiles and is reported in
//! `propagation_timeouts_*`. Percentiles are nearest-rank.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gossipkv::storage::{Origin, Store};
use gossipkv::{GossipKv, MemberState, Stats};
use gossipkv_benches::{key, value, KEY_LEN, NOW_MS, VALUE_LEN};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

type Kv = GossipKv<String, String>;

/// Gossip interval of every node.
const INTERVAL: Duration = Duration::from_millis(100);
/// Delay between starting two nodes.
const STAGGER: Duration = Duration::from_millis(3);
/// Pause between two sweeps over the nodes while waiting for a write.
const POLL: Duration = Duration::from_micros(100);
/// Gossip rounds (per node) over which idle traffic is measured.
const IDLE_ROUNDS: u64 = 20;
/// Keys of the bulk and loaded scenarios.
const BULK_KEYS: usize = 10_000;
/// Bytes of one bulk key and of one bulk value.
const BULK_KEY_LEN: usize = 16;
const BULK_VALUE_LEN: usize = 64;
/// Keys inserted for the memory figure.
const MEMORY_KEYS: usize = 1_000_000;
/// Cluster sizes of the push on / push off sweep.
const SWEEP_SIZES: [usize; 5] = [2, 5, 10, 20, 50];
/// Seed of the choice of writers and of the pauses between samples.
const SEED: u64 = 0x6055_1b6b_c105_7e12;

/// Nodes started again because they were bound to a port another node of
/// their cluster already had (see [`Cluster::start`]).
static PORT_COLLISIONS: AtomicUsize = AtomicUsize::new(0);

/// Every scenario, in the order they run.
const SCENARIOS: [&str; 6] = ["memory", "n10", "bulk", "n100", "maxvalue", "sweep"];

/// Command-line options.
#[derive(Debug)]
struct Options {
    out: PathBuf,
    svg: PathBuf,
    quick: bool,
    only: Vec<String>,
}

/// Sample counts and deadlines, by mode.
#[derive(Debug, Clone, Copy)]
struct Plan {
    samples_n10: usize,
    samples_loaded: usize,
    samples_n100: usize,
    samples_sweep: usize,
    /// Longest wait for one write to reach every node.
    sample_deadline: Duration,
    /// Longest wait for one value to reach the other node (max value search).
    replicate_deadline: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                samples_n10: 60,
                samples_loaded: 40,
                samples_n100: 30,
                samples_sweep: 15,
                sample_deadline: Duration::from_secs(5),
                replicate_deadline: Duration::from_secs(2),
            }
        } else {
            Plan {
                samples_n10: 200,
                samples_loaded: 200,
                samples_n100: 100,
                samples_sweep: 50,
                sample_deadline: Duration::from_secs(10),
                replicate_deadline: Duration::from_secs(4),
            }
        }
    }
}

/// Hidden flag: measure [`memory_per_key`] and print it, nothing else.
const MEMORY_PROBE: &str = "--memory-probe";

const USAGE: &str = "usage: cluster_bench --out FILE [--quick] [--svg FILE] [--only SCENARIO,...]";

fn parse_args() -> Result<Options> {
    let mut out = None;
    let mut svg = None;
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--svg" => svg = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--quick" => quick = true,
            MEMORY_PROBE => {
                // Internal: run by `run` in a fresh process (see `memory_in_subprocess`).
                let (per_key, rss_growth) = memory_per_key()?;
                println!("{per_key} {rss_growth}");
                std::process::exit(0);
            }
            "--only" => {
                for name in args.next().context(USAGE)?.split(',') {
                    ensure!(
                        SCENARIOS.contains(&name),
                        "unknown scenario `{name}` (known: {})",
                        SCENARIOS.join(", ")
                    );
                    only.push(name.to_owned());
                }
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench` to every target it runs.
            "--bench" => {}
            other => bail!("unexpected argument `{other}`\n{USAGE}"),
        }
    }
    let out = out.context(USAGE)?;
    let svg = svg.unwrap_or_else(|| {
        out.parent()
            .unwrap_or(Path::new("."))
            .join("propagation.svg")
    });
    Ok(Options {
        out,
        svg,
        quick,
        only,
    })
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    // The measuring future runs on this thread, outside the two workers that
    // drive the nodes, so its polling sleeps never stall a node.
    runtime.block_on(run(&opts))
}

/// The numbers measured so far, and the scenarios that failed.
#[derive(Debug, Default)]
struct Report {
    figures: BTreeMap<String, f64>,
    failures: Vec<String>,
}

impl Report {
    fn put(&mut self, key: impl Into<String>, value: f64) {
        self.figures.insert(key.into(), value);
    }
}

/// Seconds since the start of the run, for progress lines.
fn progress(start: Instant, line: impl AsRef<str>) {
    println!(
        "[{:>6.1}s] {}",
        start.elapsed().as_secs_f64(),
        line.as_ref()
    );
}

async fn run(opts: &Options) -> Result<()> {
    let plan = Plan::new(opts.quick);
    let t0 = Instant::now();
    let mut report = Report::default();
    let mut rng = SmallRng::seed_from_u64(SEED);
    let wanted = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == name);
    progress(
        t0,
        format!(
            "cluster_bench ({} mode), loopback UDP, gossip every {} ms",
            if opts.quick { "quick" } else { "full" },
            INTERVAL.as_millis()
        ),
    );

    if wanted("memory") {
        progress(
            t0,
            format!("memory: inserting {MEMORY_KEYS} keys into a Store (in a fresh process)..."),
        );
        match memory_in_subprocess() {
            Ok((per_key, rss_growth)) => {
                progress(
                    t0,
                    format!(
                        "memory: RSS grew {:.1} MB: {per_key:.1} bytes per entry beyond its 80",
                        rss_growth / 1e6
                    ),
                );
                report.put("bytes_per_key_1m", per_key);
            }
            Err(e) => fail(&mut report, t0, "memory", e),
        }
    }
    if wanted("n10") {
        if let Err(e) = scenario_n10(&mut report, plan, &mut rng, t0).await {
            fail(&mut report, t0, "n10", e);
        }
    }
    if wanted("bulk") {
        if let Err(e) = scenario_bulk(&mut report, plan, &mut rng, t0).await {
            fail(&mut report, t0, "bulk", e);
        }
    }
    if wanted("n100") {
        if let Err(e) = scenario_n100(&mut report, plan, &mut rng, t0).await {
            fail(&mut report, t0, "n100", e);
        }
    }
    if wanted("maxvalue") {
        if let Err(e) = scenario_max_value(&mut report, plan, t0).await {
            fail(&mut report, t0, "maxvalue", e);
        }
    }
    if wanted("sweep") {
        if let Err(e) = scenario_sweep(&mut report, plan, &mut rng, t0, &opts.svg).await {
            fail(&mut report, t0, "sweep", e);
        }
    }

    report.put(
        "port_collisions_restarted",
        PORT_COLLISIONS.load(Ordering::Relaxed) as f64,
    );
    let mut map = Map::new();
    for (key, value) in &report.figures {
        map.insert(key.clone(), json!(value));
    }
    map.insert("cluster_bench_quick".to_owned(), json!(opts.quick));
    map.insert(
        "cluster_bench_seconds".to_owned(),
        json!(t0.elapsed().as_secs_f64()),
    );
    if let Some(dir) = opts.out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&Value::Object(map))?;
    fs::write(&opts.out, text + "\n")
        .with_context(|| format!("cannot write {}", opts.out.display()))?;

    println!();
    print!("{}", table(&report.figures));
    println!(
        "\nwrote {} in {:.1} s",
        opts.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if !report.failures.is_empty() {
        bail!("scenarios failed: {}", report.failures.join(", "));
    }
    Ok(())
}

fn fail(report: &mut Report, t0: Instant, scenario: &str, err: anyhow::Error) {
    progress(t0, format!("{scenario}: FAILED: {err:#}"));
    report.failures.push(scenario.to_owned());
}

/// Renders the figures as an aligned two-column table.
fn table(figures: &BTreeMap<String, f64>) -> String {
    let width = figures.keys().map(String::len).max().unwrap_or(0).max(6);
    let mut out = format!("{:<width$}  {:>14}\n", "figure", "value");
    out.push_str(&format!("{}  {}\n", "-".repeat(width), "-".repeat(14)));
    for (key, value) in figures {
        let text = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        out.push_str(&format!("{key:<width$}  {text:>14}\n"));
    }
    out
}

// ---------------------------------------------------------------------------
// Memory

/// Resident set size of this process, in bytes, from `/proc/self/statm`.
fn rss_bytes(page_size: u64) -> Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm").context("cannot read /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("/proc/self/statm has no resident field")?
        .parse()
        .context("/proc/self/statm resident field is not a number")?;
    Ok(pages * page_size)
}

/// The kernel page size, from the first `KernelPageSize:` line of
/// `/proc/self/smaps` (4096 if absent).
fn page_size() -> u64 {
    fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(4096, |kb| kb * 1024)
}

/// Runs [`memory_per_key`] in a fresh process of this binary, so that the
/// RSS growth is not blurred by memory freed by other scenarios (which the
/// allocator would reuse) and the million keys leave no footprint here.
fn memory_in_subprocess() -> Result<(f64, f64)> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let output = std::process::Command::new(&exe)
        .arg(MEMORY_PROBE)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "memory probe failed ({}): {}{}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let numbers: Vec<f64> = stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("memory probe printed {stdout:?}"))?;
    match numbers[..] {
        [per_key, rss_growth] => Ok((per_key, rss_growth)),
        _ => bail!("memory probe printed {stdout:?}"),
    }
}

/// Bytes of resident memory per entry of a [`Store`] of one million 16-byte
/// keys with 64-byte values, minus those 80 bytes; and the RSS growth in bytes.
fn memory_per_key() -> Result<(f64, f64)> {
    let page = page_size();
    let before = rss_bytes(page)?;
    let store = Store::new(Origin::new("memory", 1));
    for i in 0..MEMORY_KEYS {
        // `value(i)` is a fresh 64-byte allocation, owned by the store from here on.
        store.set(&key(i), value(i), NOW_MS);
    }
    ensure!(store.len() == MEMORY_KEYS, "the store lost keys");
    let after = rss_bytes(page)?;
    drop(store);
    let growth = after.saturating_sub(before) as f64;
    let per_entry = growth / MEMORY_KEYS as f64;
    Ok((per_entry - (KEY_LEN + VALUE_LEN) as f64, growth))
}

// ---------------------------------------------------------------------------
// Clusters

/// Nodes of one cluster, all in this process.
struct Cluster {
    nodes: Vec<Kv>,
}

/// How to build the nodes of a cluster.
#[derive(Debug, Clone, Copy)]
struct Spec<'a> {
    /// Cluster id and node id prefix; unique per scenario.
    name: &'a str,
    nodes: usize,
    push: bool,
    packet_size: Option<usize>,
}

impl Spec<'_> {
    fn new(name: &str, nodes: usize) -> Spec<'_> {
        Spec {
            name,
            nodes,
            push: true,
            packet_size: None,
        }
    }
}

impl Cluster {
    /// Starts the nodes a few milliseconds apart. Nodes already started are
    /// shut down if one fails to start.
    ///
    /// The transport sets `SO_REUSEADDR`, with which Linux may hand a socket
    /// bound to port 0 a port that another live socket of this process
    /// already has; the two then share its datagrams and the cluster cannot
    /// form. A node that got a port already in use is shut down and started
    /// again under another id (counted in [`PORT_COLLISIONS`]).
    async fn start(spec: Spec<'_>) -> Result<Cluster> {
        let mut cluster = Cluster { nodes: Vec::new() };
        for i in 0..spec.nodes {
            match cluster.start_unique_node(spec, i).await {
                Ok(node) => cluster.nodes.push(node),
                Err(e) => {
                    cluster.shutdown().await;
                    return Err(e);
                }
            }
            tokio::time::sleep(STAGGER).await;
        }
        Ok(cluster)
    }

    /// Starts node `i`, again while its port is one another node already has.
    async fn start_unique_node(&self, spec: Spec<'_>, i: usize) -> Result<Kv> {
        const ATTEMPTS: usize = 5;
        for attempt in 0..ATTEMPTS {
            let node = self.start_node(spec, i, attempt).await?;
            let clash = self
                .nodes
                .iter()
                .find(|other| other.local_addr() == node.local_addr());
            let Some(other) = clash else {
                return Ok(node);
            };
            PORT_COLLISIONS.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "warning: {} was bound to {:?}, the port of {}; starting it again",
                node.node_id(),
                node.local_addr(),
                other.node_id()
            );
            if let Err(e) = node.shutdown().await {
                eprintln!("warning: shutting down {} failed: {e}", node.node_id());
            }
        }
        bail!(
            "node {i} of {} got a port already in use {ATTEMPTS} times",
            spec.name
        )
    }

    async fn start_node(&self, spec: Spec<'_>, i: usize, attempt: usize) -> Result<Kv> {
        let mut seeds = Vec::new();
        if let Some(first) = self.nodes.first() {
            seeds.push(addr(first)?);
        }
        if i >= 2 {
            seeds.push(addr(&self.nodes[i - 1])?);
        }
        let mut builder = Kv::builder()
            .cluster_id(spec.name)
            .node_id(if attempt == 0 {
                format!("{}-{i:03}", spec.name)
            } else {
                format!("{}-{i:03}-retry{attempt}", spec.name)
            })
            .bind_addr("127.0.0.1:0")
            .gossip_interval(INTERVAL)
            .eager_push(spec.push)
            .seeds(seeds);
        if let Some(size) = spec.packet_size {
            builder = builder.packet_size(size);
        }
        builder
            .build()
            .await
            .with_context(|| format!("cannot start node {i} of {}", spec.name))
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Waits until every node lists every member as alive; returns how long it took.
    async fn wait_formed(&self, deadline: Duration) -> Result<Duration> {
        let start = Instant::now();
        let n = self.len();
        loop {
            let alive: Vec<usize> = self
                .nodes
                .iter()
                .map(|node| {
                    node.members()
                        .iter()
                        .filter(|m| m.state == MemberState::Alive)
                        .count()
                })
                .collect();
            if alive.iter().all(|&a| a == n) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                let complete = alive.iter().filter(|&&a| a == n).count();
                let worst = (0..n).min_by_key(|&i| alive[i]).unwrap_or(0);
                bail!(
                    "cluster of {n} not formed within {deadline:?}: {complete} nodes see all \
                     {n} alive; the worst, {}",
                    self.describe_view(worst)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How node `i` sees the cluster, and how the cluster sees it, for errors.
    fn describe_view(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let members = node.members();
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for m in &members {
            *states.entry(m.state.to_string()).or_default() += 1;
        }
        let seen_as: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|other| {
                other
                    .members()
                    .into_iter()
                    .find(|m| m.node_id.as_str() == node.node_id())
                    .map(|m| m.state.to_string())
            })
            .collect();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for state in seen_as {
            *seen.entry(state).or_default() += 1;
        }
        let stats = node.stats();
        format!(
            "{} ({:?}), knows {} members {states:?}; the nodes list it as {seen:?}; it sent {} \
             and received {} datagrams in {} rounds",
            node.node_id(),
            node.local_addr(),
            members.len(),
            stats.datagrams_sent,
            stats.datagrams_received,
            stats.rounds
        )
    }

    fn stats(&self) -> Vec<Stats> {
        self.nodes.iter().map(Kv::stats).collect()
    }

    /// Shuts every node down, reporting (not returning) errors.
    async fn shutdown(self) {
        for node in &self.nodes {
            if let Err(e) = node.shutdown().await {
                eprintln!("warning: shutting down {} failed: {e}", node.node_id());
            }
        }
    }
}

fn addr(node: &Kv) -> Result<String> {
    Ok(node
        .local_addr()
        .context("a bound node has a local address")?
        .to_string())
}

/// Runs `body` on a freshly started and formed cluster, then shuts it down
/// whatever `body` returned.
async fn with_cluster<T>(
    spec: Spec<'_>,
    t0: Instant,
    body: impl AsyncFnOnce(&Cluster) -> Result<T>,
) -> Result<T> {
    let label = format!(
        "{} (n={}, push {})",
        spec.name,
        spec.nodes,
        on_off(spec.push)
    );
    progress(t0, format!("{label}: forming cluster..."));
    let cluster = Cluster::start(spec).await?;
    let deadline = Duration::from_secs(20 + spec.nodes as u64 / 2);
    let result = match cluster.wait_formed(deadline).await {
        Ok(took) => {
            progress(t0, format!("{label}: formed in {} ms", took.as_millis()));
            body(&cluster).await
        }
        Err(e) => Err(e),
    };
    progress(t0, format!("{label}: shutting down"));
    cluster.shutdown().await;
    result
}

fn on_off(push: bool) -> &'static str {
    if push {
        "on"
    } else {
        "off"
    }
}

/// Traffic of an idle cluster.
#[derive(Debug, Clone, Copy)]
struct Idle {
    bytes_per_node_round: f64,
    datagrams_per_node_round: f64,
}

/// Measures what the nodes send while nothing is written, over
/// [`IDLE_ROUNDS`] gossip rounds of every node.
async fn idle_traffic(cluster: &Cluster) -> Result<Idle> {
    // Let anything still in flight settle first.
    tokio::time::sleep(INTERVAL * 3).await;
    let before = cluster.stats();
    let start = Instant::now();
    let deadline = INTERVAL * (IDLE_ROUNDS as u32) * 5;
    loop {
        tokio::time::sleep(INTERVAL / 4).await;
        let now = cluster.stats();
        let rounds: Vec<u64> = now
            .iter()
            .zip(&before)
            .map(|(a, b)| a.rounds - b.rounds)
            .collect();
        if rounds.iter().all(|&r| r >= IDLE_ROUNDS) {
            let total_rounds: u64 = rounds.iter().sum();
            let bytes: u64 = now
                .iter()
                .zip(&before)
                .map(|(a, b)| a.bytes_sent - b.bytes_sent)
                .sum();
            let datagrams: u64 = now
                .iter()
                .zip(&before)
                .map(|(a, b)| a.datagrams_sent - b.datagrams_sent)
                .sum();
            return Ok(Idle {
                bytes_per_node_round: bytes as f64 / total_rounds as f64,
                datagrams_per_node_round: datagrams as f64 / total_rounds as f64,
            });
        }
        if start.elapsed() > deadline {
            bail!(
                "nodes did not run {IDLE_ROUNDS} rounds within {deadline:?} (fewest: {})",
                rounds.iter().min().copied().unwrap_or(0)
            );
        }
    }
}

/// Propagation times of a series of writes, in milliseconds.
#[derive(Debug, Clone, Default)]
struct Propagation {
    /// One entry per sample; timed-out samples count as the deadline.
    ms: Vec<f64>,
    timeouts: usize,
}

impl Propagation {
    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.ms, p)
    }

    /// Fraction of the samples slower than `ms` (with eager push on, about
    /// the writes that the push did not bring to every node).
    fn share_over(&self, ms: f64) -> f64 {
        if self.ms.is_empty() {
            return 0.0;
        }
        self.ms.iter().filter(|&&t| t > ms).count() as f64 / self.ms.len() as f64
    }
}

/// Nearest-rank percentile of `values` (`p` in 0..=1); NaN if empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Writes `samples` fresh keys one at a time, each from a random node, and
/// times each until every other node reads it. Between samples it pauses a
/// random fraction of the gossip interval, so writes land at every phase of
/// the gossip rounds. Stops early after three timeouts.
async fn propagation(
    cluster: &Cluster,
    tag: &str,
    samples: usize,
    deadline: Duration,
    rng: &mut SmallRng,
) -> Result<Propagation> {
    let n = cluster.len();
    ensure!(n >= 2, "propagation needs two nodes");
    let mut result = Propagation::default();
    for s in 0..samples {
        let pause = rng.random_range(0..INTERVAL.as_micros() as u64);
        tokio::time::sleep(Duration::from_micros(pause)).await;
        let writer = rng.random_range(0..n);
        let key = format!("{tag}-{s:06}");
        let value = format!("value-{s}");
        match propagate_once(cluster, writer, &key, &value, deadline)? {
            Some(took) => result.ms.push(took.as_secs_f64() * 1e3),
            None => {
                result.ms.push(deadline.as_secs_f64() * 1e3);
                result.timeouts += 1;
                if result.timeouts >= 3 {
                    eprintln!(
                        "warning: {tag}: three writes timed out; stopping after {} samples",
                        s + 1
                    );
                    break;
                }
            }
        }
    }
    Ok(result)
}

/// Sets `key` on `writer` and polls the other nodes until all read `value`;
/// `None` on timeout. Blocks this thread between sweeps (see [`POLL`]).
fn propagate_once(
    cluster: &Cluster,
    writer: usize,
    key: &str,
    value: &str,
    deadline: Duration,
) -> Result<Option<Duration>> {
    let start = Instant::now();
    cluster.nodes[writer]
        .set(key, value.to_owned())
        .with_context(|| format!("set {key} on node {writer}"))?;
    let mut pending: Vec<usize> = (0..cluster.len()).filter(|&i| i != writer).collect();
    loop {
        let mut err = None;
        pending.retain(|&i| match cluster.nodes[i].get(key) {
            Ok(got) => got.as_deref() != Some(value),
            Err(e) => {
                err = Some(e);
                true
            }
        });
        if let Some(e) = err {
            return Err(e).context(format!("get {key}"));
        }
        if pending.is_empty() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

fn put_propagation(report: &mut Report, suffix: &str, p: &Propagation, p99: bool) {
    report.put(format!("propagation_p50_ms_{suffix}"), p.percentile(0.5));
    if p99 {
        report.put(format!("propagation_p90_ms_{suffix}"), p.percentile(0.9));
        report.put(
            format!("propagation_share_over_10ms_{suffix}"),
            p.share_over(10.0),
        );
        report.put(format!("propagation_p99_ms_{suffix}"), p.percentile(0.99));
    }
    report.put(format!("propagation_samples_{suffix}"), p.ms.len() as f64);
    report.put(format!("propagation_timeouts_{suffix}"), p.timeouts as f64);
}

fn describe(p: &Propagation) -> String {
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} writes ({} timed \
         out); {:.0}% took over 10 ms",
        p.percentile(0.5),
        p.percentile(0.9),
        p.percentile(0.99),
        p.percentile(1.0),
        p.ms.len(),
        p.timeouts,
        p.share_over(10.0) * 100.0
    )
}

// ---------------------------------------------------------------------------
// Scenarios

/// Ten nodes: idle traffic, then propagation of single writes.
async fn scenario_n10(
    report: &mut Report,
    plan: Plan,
    rng: &mut SmallRng,
    t0: Instant,
) -> Result<()> {
    let (idle, prop) = with_cluster(Spec::new("n10", 10), t0, async |c: &Cluster| {
        progress(
            t0,
            format!("n=10: idle traffic over {IDLE_ROUNDS} rounds..."),
        );
        let idle = idle_traffic(c).await?;
        progress(
            t0,
            format!(
                "n=10: idle {:.1} bytes, {:.2} datagrams per node per round",
                idle.bytes_per_node_round, idle.datagrams_per_node_round
            ),
        );
        progress(t0, format!("n=10: {} single writes...", plan.samples_n10));
        let prop = propagation(c, "n10", plan.samples_n10, plan.sample_deadline, rng).await?;
        progress(t0, format!("n=10: {}", describe(&prop)));
        Ok((idle, prop))
    })
    .await?;
    report.put("idle_bytes_per_node_round_n10", idle.bytes_per_node_round);
    report.put(
        "idle_datagrams_per_node_round_n10",
        idle.datagrams_per_node_round,
    );
    put_propagation(report, "n10", &prop, true);
    Ok(())
}

/// Ten nodes: 10,000 keys written on one node, then idle traffic and
/// propagation with those keys stored everywhere.
async fn scenario_bulk(
    report: &mut Report,
    plan: Plan,
    rng: &mut SmallRng,
    t0: Instant,
) -> Result<()> {
    with_cluster(Spec::new("bulk", 10), t0, async |c: &Cluster| {
        progress(t0, format!("bulk: writing {BULK_KEYS} keys on one node..."));
        let bulk = bulk_write(c).await?;
        progress(
            t0,
            format!(
                "bulk: written in {:.1} ms, on all 10 nodes after {:.1} ms, {} bytes sent \
                 ({:.2}x the 9 x {BULK_KEYS} x 80 payload)",
                bulk.write_ms,
                bulk.total_ms,
                bulk.bytes,
                bulk.bytes as f64 / bulk_payload()
            ),
        );
        report.put("bulk_10k_keys_n10_ms", bulk.total_ms);
        report.put("bulk_10k_keys_n10_bytes", bulk.bytes as f64);
        report.put("bulk_10k_keys_n10_datagrams", bulk.datagrams as f64);
        report.put(
            "bulk_10k_keys_n10_bytes_ratio",
            bulk.bytes as f64 / bulk_payload(),
        );
        report.put("bulk_10k_keys_n10_write_ms", bulk.write_ms);

        progress(t0, format!("n=10, {BULK_KEYS} keys: idle traffic..."));
        let idle = idle_traffic(c).await?;
        progress(
            t0,
            format!(
                "n=10, {BULK_KEYS} keys: idle {:.1} bytes, {:.2} datagrams per node per round",
                idle.bytes_per_node_round, idle.datagrams_per_node_round
            ),
        );
        report.put(
            "idle_bytes_per_node_round_n10_10k_keys",
            idle.bytes_per_node_round,
        );
        report.put(
            "idle_datagrams_per_node_round_n10_10k_keys",
            idle.datagrams_per_node_round,
        );

        progress(
            t0,
            format!(
                "n=10, {BULK_KEYS} keys: {} single writes...",
                plan.samples_loaded
            ),
        );
        let prop = propagation(c, "loaded", plan.samples_loaded, plan.sample_deadline, rng).await?;
        progress(t0, format!("n=10, {BULK_KEYS} keys: {}", describe(&prop)));
        put_propagation(report, "n10_loaded", &prop, true);
        Ok(())
    })
    .await
}

/// Bytes of the bulk keys and values that each of the 9 other nodes must receive.
fn bulk_payload() -> f64 {
    (9 * BULK_KEYS * (BULK_KEY_LEN + BULK_VALUE_LEN)) as f64
}

#[derive(Debug)]
struct Bulk {
    write_ms: f64,
    total_ms: f64,
    bytes: u64,
    datagrams: u64,
}

/// Writes [`BULK_KEYS`] fresh keys on node 0 as fast as possible and waits
/// until every node holds all of them.
async fn bulk_write(c: &Cluster) -> Result<Bulk> {
    let keys: Vec<String> = (0..BULK_KEYS).map(|i| format!("bulk-{i:011}")).collect();
    let values: Vec<String> = (0..BULK_KEYS).map(|i| format!("value-{i:058}")).collect();
    debug_assert!(keys.iter().all(|k| k.len() == BULK_KEY_LEN));
    debug_assert!(values.iter().all(|v| v.len() == BULK_VALUE_LEN));
    let base: Vec<usize> = c.nodes.iter().map(Kv::len).collect();
    let before = c.stats();
    let start = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        c.nodes[0]
            .set(k, v.clone())
            .with_context(|| format!("set {k}"))?;
    }
    let write_ms = start.elapsed().as_secs_f64() * 1e3;
    let deadline = Duration::from_secs(120);
    loop {
        let done = c
            .nodes
            .iter()
            .zip(&base)
            .all(|(node, &b)| node.len() >= b + BULK_KEYS);
        if done {
            break;
        }
        if start.elapsed() > deadline {
            let least = c
                .nodes
                .iter()
                .zip(&base)
                .map(|(node, &b)| node.len().saturating_sub(b))
                .min()
                .unwrap_or(0);
            bail!("bulk keys not everywhere within {deadline:?}: the poorest node has {least}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = start.elapsed();
    let after = c.stats();
    let bytes = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.bytes_sent - b.bytes_sent)
        .sum();
    let datagrams = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.datagrams_sent - b.datagrams_sent)
        .sum();
    for (i, node) in c.nodes.iter().enumerate() {
        for (k, v) in keys.iter().zip(&values) {
            ensure!(
                node.get(k)?.as_deref() == Some(v.as_str()),
                "node {i} has a wrong value for {k}"
            );
        }
    }
    Ok(Bulk {
        write_ms,
        total_ms: elapsed.as_secs_f64() * 1e3,
        bytes,
        datagrams,
    })
}

/// A hundred nodes: formation, idle traffic, propagation.
async fn scenario_n100(
    report: &mut Report,
    plan: Plan,
    rng: &mut SmallRng,
    t0: Instant,
) -> Result<()> {
    let formed_at = Instant::now();
    let (formed_ms, idle, prop) = with_cluster(Spec::new("n100", 100), t0, async |c: &Cluster| {
        let formed_ms = formed_at.elapsed().as_secs_f64() * 1e3;
        progress(
            t0,
            format!("n=100: idle traffic over {IDLE_ROUNDS} rounds..."),
        );
        let idle = idle_traffic(c).await?;
        progress(
            t0,
            format!(
                "n=100: idle {:.1} bytes, {:.2} datagrams per node per round",
                idle.bytes_per_node_round, idle.datagrams_per_node_round
            ),
        );
        progress(t0, format!("n=100: {} single writes...", plan.samples_n100));
        let prop = propagation(c, "n100", plan.samples_n100, plan.sample_deadline, rng).await?;
        progress(t0, format!("n=100: {}", describe(&prop)));
        Ok((formed_ms, idle, prop))
    })
    .await?;
    report.put("cluster_start_and_form_ms_n100", formed_ms);
    report.put("idle_bytes_per_node_round_n100", idle.bytes_per_node_round);
    report.put(
        "idle_datagrams_per_node_round_n100",
        idle.datagrams_per_node_round,
    );
    put_propagation(report, "n100", &prop, true);
    Ok(())
}

/// Two nodes with the default 1,400-byte packets: the largest value `set`
/// accepts, whether it reaches the other node, and how long a small write
/// made just after it takes to get there (a large value must not hold it up).
async fn scenario_max_value(report: &mut Report, plan: Plan, t0: Instant) -> Result<()> {
    let spec = Spec::new("maxvalue", 2);
    with_cluster(spec, t0, async |c: &Cluster| {
        let mut probe = 0usize;
        let mut next_key = || {
            probe += 1;
            format!("maxvalue-{probe:06}")
        };
        // The limit `set` enforces, as reported by its error.
        let too_big = gossipkv::DEFAULT_MAX_VALUE_SIZE + 1;
        let accepted = match c.nodes[0].set(next_key(), "x".repeat(too_big)) {
            Err(gossipkv::Error::ValueTooLarge { max, .. }) => max,
            Err(e) => return Err(e).context("set of an oversized value"),
            Ok(()) => bail!("set accepted a value above the default maximum"),
        };
        progress(t0, format!("maxvalue: set accepts up to {accepted} bytes"));
        report.put("max_value_bytes_accepted", accepted as f64);

        let deadline = plan.replicate_deadline;
        let arrival = |key: &str, value: &str, start: Instant| -> Result<Option<Duration>> {
            loop {
                if c.nodes[1].get(key)?.as_deref() == Some(value) {
                    return Ok(Some(start.elapsed()));
                }
                if start.elapsed() > deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        // A small write alone, for comparison.
        let (alone_key, start) = (next_key(), Instant::now());
        c.nodes[0].set(&alone_key, "small".to_string())?;
        let alone =
            arrival(&alone_key, "small", start)?.context("a small write did not replicate")?;
        // The largest value, then a small write right after it.
        let (big_key, small_key) = (next_key(), next_key());
        let big = "x".repeat(accepted);
        let start = Instant::now();
        c.nodes[0].set(&big_key, big.clone())?;
        c.nodes[0].set(&small_key, "small".to_string())?;
        let small = arrival(&small_key, "small", start)?
            .context("the small write after the large value did not replicate")?;
        let (best, took) = match arrival(&big_key, &big, start)? {
            Some(took) => (accepted, took),
            None => (0, deadline),
        };
        progress(
            t0,
            format!(
                "maxvalue: {best} bytes replicated in {:.1} ms; a small write after it in {:.2} ms \
                 (alone {:.2} ms)",
                took.as_secs_f64() * 1e3,
                small.as_secs_f64() * 1e3,
                alone.as_secs_f64() * 1e3,
            ),
        );
        report.put("max_value_bytes_replicated", best as f64);
        report.put("max_value_replication_ms", took.as_secs_f64() * 1e3);
        report.put("max_value_small_write_after_ms", small.as_secs_f64() * 1e3);
        report.put("max_value_small_write_alone_ms", alone.as_secs_f64() * 1e3);
        let dropped: u64 = c.stats().iter().map(|s| s.oversized_dropped).sum();
        report.put("max_value_oversized_dropped", dropped as f64);
        Ok(())
    })
    .await
}

/// Propagation against cluster size, eager push on and off, and its SVG.
async fn scenario_sweep(
    report: &mut Report,
    plan: Plan,
    rng: &mut SmallRng,
    t0: Instant,
    svg: &Path,
) -> Result<()> {
    let mut points: [Vec<(usize, f64)>; 2] = [Vec::new(), Vec::new()];
    for push in [true, false] {
        for n in SWEEP_SIZES {
            let name = format!("sweep-{}-{n}", on_off(push));
            let spec = Spec {
                push,
                ..Spec::new(&name, n)
            };
            let result = with_cluster(spec, t0, async |c: &Cluster| {
                let prop =
                    propagation(c, &name, plan.samples_sweep, plan.sample_deadline, rng).await?;
                progress(
                    t0,
                    format!("n={n}, push {}: {}", on_off(push), describe(&prop)),
                );
                Ok(prop)
            })
            .await;
            // One failed cluster size leaves a gap in the plot, not an empty plot.
            let prop = match result {
                Ok(prop) => prop,
                Err(e) => {
                    fail(report, t0, &name, e);
                    continue;
                }
            };
            let suffix = format!("push_{}_n{n}", on_off(push));
            put_propagation(report, &suffix, &prop, false);
            points[usize::from(!push)].push((n, prop.percentile(0.5)));
        }
    }
    plot(svg, &points[0], &points[1])?;
    progress(t0, format!("sweep: wrote {}", svg.display()));
    Ok(())
}

/// Draws p50 propagation against cluster size, push on and off, on a log scale.
fn plot(path: &Path, on: &[(usize, f64)], off: &[(usize, f64)]) -> Result<()> {
    use plotters::prelude::*;

    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let all = on.iter().chain(off).map(|&(_, y)| y).filter(|y| *y > 0.0);
    let y_min = all.clone().fold(f64::INFINITY, f64::min);
    let y_max = all.fold(0.0, f64::max);
    let (y_min, y_max) = if y_min.is_finite() {
        (y_min / 2.0, y_max * 2.0)
    } else {
        (0.01, 1000.0)
    };
    let x_max = SWEEP_SIZES.iter().max().copied().unwrap_or(50) as u32 + 5;
    let point = |&(x, y): &(usize, f64)| (x as u32, y.max(y_min));

    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "gossipkv: p50 propagation on loopback (gossip every 100 ms)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..x_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("cluster size (nodes)")
        .y_desc("p50 propagation (ms, log scale)")
        .draw()?;
    for (points, color, label) in [(on, BLUE, "eager push on"), (off, RED, "eager push off")] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(point),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(point(p), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn bulk_keys_and_values_have_the_advertised_size() {
        assert_eq!(format!("bulk-{:011}", 9_999).len(), BULK_KEY_LEN);
        assert_eq!(format!("value-{:058}", 9_999).len(), BULK_VALUE_LEN);
    }
}
