//! Command-line parsing for `cargo xtask`.

use anyhow::bail;

/// Usage text printed by `cargo xtask --help` and on argument errors.
pub(crate) const USAGE: &str = "\
Usage: cargo xtask <COMMAND> [OPTIONS]

Commands:
  ci       Run the CI script .ci/run (fmt, clippy, tests, seed sweep, docs,
           cargo-deny)
  bench    Run the criterion benchmarks of gossipkv-benches and summarize them
  sim      Measure dissemination at scale in the simulator (release build)
  sweep    Run the simulator's scenarios once per seed
  crash    Kill a durable node with SIGKILL again and again; check that no
           acknowledged write is lost (release build)
  cluster-test
           Run agents in network namespaces on a bridge: convergence, loss,
           a cut link, SIGKILL and restart (needs root; SKIPPED otherwise)
  fuzz     Run each cargo-fuzz target in turn (nightly), print execs/s and
           findings
  fuzz-corpus
           Regenerate the seed corpora fuzz/corpus/<target>/ from the traffic
           of an in-process cluster
  help     Print this help

Options for `bench`:
  --quick           Shorter warm-up and measurement, fewer samples
  --summary-only    Do not run benchmarks; summarize existing criterion results
  -- <ARGS>...      Extra arguments passed to the criterion benchmark binaries
                    (e.g. a benchmark name filter)

`bench` prints a table and writes <target>/xtask-bench/summary.json.

Options for `sim`:
  --quick               Given membership only (seconds instead of a minute)
  --given-only          The same
  --nodes N             Simulate N nodes (repeatable; default 1,000 and 10,000)
  --max-wall-secs S     Give up a run after S seconds (default 3600)
  -- <ARGS>...          Extra arguments for the gossipkv-sim binary

`sim` prints a table and writes <target>/xtask-sim/sim.json. Every node count
is simulated with membership given (the cluster starts formed, peers drawn
from a shared list of all nodes: seconds for 10,000 nodes), and counts up to
2,000 also with membership formed through gossip (about a minute for 1,000
nodes; each simulated node keeps ~520 B per member, so 10,000 nodes would
need ~50 GB). `bench` runs the given-membership part itself.

Options for `sweep`:
  --seeds A..=B         Seeds to run, inclusive (also `A..B`, or one seed N;
                        default 1..=100)
  --timeout-secs S      Give up one suite run after S seconds (default 300)
  --release             Build the suites in release mode (default: the test
                        profile, which optimizes the simulated crates and
                        reuses what `cargo test --workspace` built)

`sweep` builds the scenario, membership, stream, budget and lifetime suites of
gossipkv-sim and runs each once per seed with GOSSIPKV_SIM_SEED set; it prints
the replay command of every failure and fails if any seed failed.

Options for `crash`:
  --cycles N            Kill-and-restart cycles (default 200; CI runs 12)
  --seed S              Replay one run's random choices

`crash` runs the crash loop of crates/gossipkv/tests/crash.rs: a child process
writes with Durability::Sync and reports each acknowledged write; it is killed
with SIGKILL at random moments (or stops cleanly now and then) and the data
dir is checked for every acknowledged write and for reused sequence numbers.

Options for `cluster-test`:
  --agents N            Agents, one per network namespace (3 to 20; default 5)
  --keep-going          Run the later steps after a failed one

`cluster-test` builds the agent (debug) and starts N agents, each in its own
network namespace on a bridge (10.213.X.0/24), seeded by address; then:
100 keys written and converged; 20% loss (nftables) on two hosts, 100 more
keys, converged; one host's link cut, writes on both sides, link restored,
the host rejoins and every snapshot ends identical; one agent killed with
SIGKILL and restarted from its data dir with its link down (every key must
be there), then healed; about a minute later it takes over its killed
generation's records and every node must hold them under its new
generation. About 70 s. It prints a table of the steps and their times, and
the tails of the agents' logs on failure. Without root or network namespaces it prints SKIPPED and
succeeds; without nft (and when apt-get cannot install it) the loss step is
SKIPPED. Namespaces and links are removed at the end, also on failure or
Ctrl-C.

Options for `fuzz`:
  --seconds N           Fuzz each target for N seconds (default 60)
  --target T            Only target T (repeatable)

`fuzz` builds the cargo-fuzz project fuzz/ with `cargo +nightly fuzz build`
(optimized, debug assertions and overflow checks on, no sanitizer),
then runs `cargo +nightly fuzz run <T> fuzz/work/<T> fuzz/corpus/<T>` for
each target (new inputs go to fuzz/work, not to the committed seeds) and
prints a table: target, seconds, execs, execs/s, findings (files in
fuzz/artifacts/<T>/). It fails if there is any finding. Its nightly build
goes to $GOSSIPKV_FUZZ_TARGET_DIR, default fuzz/target.";

/// A parsed `cargo xtask` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Print usage.
    Help,
    /// Run `.ci/run`.
    Ci,
    /// Run benchmarks and summarize them.
    Bench(BenchOptions),
    /// Run the simulator at scale.
    Sim(SimOptions),
    /// Run the simulator's scenarios over many seeds.
    Sweep(SweepOptions),
    /// Run the crash loop.
    Crash(CrashOptions),
    /// Run the multi-host test in network namespaces.
    ClusterTest(ClusterTestOptions),
    /// Run the fuzz targets.
    Fuzz(FuzzOptions),
    /// Regenerate the fuzz seed corpora.
    FuzzCorpus,
}

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FuzzOptions {
    /// Seconds per target.
    pub(crate) seconds: u64,
    /// Targets to run (empty: all).
    pub(crate) targets: Vec<String>,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        FuzzOptions {
            seconds: 60,
            targets: Vec::new(),
        }
    }
}

/// Options of `cargo xtask cluster-test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterTestOptions {
    /// Agents, one per namespace.
    pub(crate) agents: usize,
    /// Run the later steps after a failed one.
    pub(crate) keep_going: bool,
}

impl Default for ClusterTestOptions {
    fn default() -> Self {
        ClusterTestOptions {
            agents: 5,
            keep_going: false,
        }
    }
}

/// Options of `cargo xtask crash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CrashOptions {
    /// Kill-and-restart cycles.
    pub(crate) cycles: u64,
    /// Seed of the run's random choices (`None`: random).
    pub(crate) seed: Option<u64>,
}

/// Options of `cargo xtask sweep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SweepOptions {
    /// First and last seed, inclusive.
    pub(crate) seeds: (u64, u64),
    /// Limit of one suite run.
    pub(crate) timeout: std::time::Duration,
    /// Build in release mode rather than the test profile.
    pub(crate) release: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            seeds: (1, 100),
            timeout: std::time::Duration::from_secs(300),
            release: false,
        }
    }
}

/// Options of `cargo xtask sim`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SimOptions {
    /// Given membership only.
    pub(crate) quick: bool,
    /// Given membership only (what `bench` runs).
    pub(crate) given_only: bool,
    /// Node counts (empty: the defaults).
    pub(crate) nodes: Vec<usize>,
    /// Wall-clock limit of one run, seconds.
    pub(crate) max_wall_secs: Option<u64>,
    /// Extra arguments for the simulator binary.
    pub(crate) extra: Vec<String>,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BenchOptions {
    /// Shorten criterion's warm-up and measurement phases.
    pub(crate) quick: bool,
    /// Skip running the benchmarks and only summarize existing results.
    pub(crate) summary_only: bool,
    /// Extra arguments for the criterion benchmark binaries.
    pub(crate) criterion_args: Vec<String>,
}

/// Parses the arguments after `cargo xtask`.
pub(crate) fn parse(args: &[String]) -> anyhow::Result<Command> {
    let Some((command, rest)) = args.split_first() else {
        bail!("no command given\n\n{USAGE}");
    };
    match command.as_str() {
        "help" | "--help" | "-h" => Ok(Command::Help),
        "ci" => {
            if rest.iter().any(|a| a == "--help" || a == "-h") {
                return Ok(Command::Help);
            }
            if let Some(arg) = rest.first() {
                bail!("unexpected argument `{arg}` for `ci`\n\n{USAGE}");
            }
            Ok(Command::Ci)
        }
        "bench" => parse_bench(rest),
        "sim" => parse_sim(rest),
        "sweep" => parse_sweep(rest),
        "crash" => parse_crash(rest),
        "cluster-test" => parse_cluster_test(rest),
        "fuzz" => parse_fuzz(rest),
        "fuzz-corpus" => match rest.first() {
            None => Ok(Command::FuzzCorpus),
            Some(a) if a == "--help" || a == "-h" => Ok(Command::Help),
            Some(a) => bail!("unexpected argument `{a}` for `fuzz-corpus`\n\n{USAGE}"),
        },
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

/// Parses the arguments after `cargo xtask bench`.
fn parse_bench(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = BenchOptions::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--summary-only" => opts.summary_only = true,
            "--help" | "-h" => return Ok(Command::Help),
            "--" => {
                opts.criterion_args.extend(iter.by_ref().cloned());
            }
            other => bail!("unexpected argument `{other}` for `bench`\n\n{USAGE}"),
        }
    }
    Ok(Command::Bench(opts))
}

/// Parses the arguments after `cargo xtask sim`.
fn parse_sim(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = SimOptions::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--quick" => opts.quick = true,
            "--given-only" => opts.given_only = true,
            "--nodes" | "--max-wall-secs" => {
                let Some(v) = iter.next().and_then(|v| v.parse::<u64>().ok()) else {
                    bail!("`{arg}` needs a number\n\n{USAGE}");
                };
                match arg.as_str() {
                    "--nodes" => opts.nodes.push(v as usize),
                    _ => opts.max_wall_secs = Some(v),
                }
            }
            "--help" | "-h" => return Ok(Command::Help),
            "--" => opts.extra.extend(iter.by_ref().cloned()),
            other => bail!("unexpected argument `{other}` for `sim`\n\n{USAGE}"),
        }
    }
    Ok(Command::Sim(opts))
}

/// Parses the arguments after `cargo xtask crash`.
fn parse_crash(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = CrashOptions {
        cycles: 200,
        seed: None,
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--cycles" | "--seed" => {
                let Some(v) = iter.next().and_then(|v| v.parse::<u64>().ok()) else {
                    bail!("`{arg}` needs a number\n\n{USAGE}");
                };
                match arg.as_str() {
                    "--cycles" => opts.cycles = v,
                    _ => opts.seed = Some(v),
                }
            }
            "--help" | "-h" => return Ok(Command::Help),
            other => bail!("unexpected argument `{other}` for `crash`\n\n{USAGE}"),
        }
    }
    Ok(Command::Crash(opts))
}

/// Parses the arguments after `cargo xtask fuzz`.
fn parse_fuzz(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = FuzzOptions::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                let Some(v) = iter.next().and_then(|v| v.parse::<u64>().ok()) else {
                    bail!("`--seconds` needs a number\n\n{USAGE}");
                };
                opts.seconds = v.max(1);
            }
            "--target" => {
                let Some(t) = iter.next() else {
                    bail!("`--target` needs a target name\n\n{USAGE}");
                };
                opts.targets.push(t.clone());
            }
            "--help" | "-h" => return Ok(Command::Help),
            other => bail!("unexpected argument `{other}` for `fuzz`\n\n{USAGE}"),
        }
    }
    Ok(Command::Fuzz(opts))
}

/// Parses the arguments after `cargo xtask cluster-test`.
fn parse_cluster_test(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = ClusterTestOptions::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--agents" => {
                let Some(v) = iter
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|v| (3..=20).contains(v))
                else {
                    bail!("`--agents` needs a number from 3 to 20\n\n{USAGE}");
                };
                opts.agents = v;
            }
            "--keep-going" => opts.keep_going = true,
            "--help" | "-h" => return Ok(Command::Help),
            other => bail!("unexpected argument `{other}` for `cluster-test`\n\n{USAGE}"),
        }
    }
    Ok(Command::ClusterTest(opts))
}

/// Parses the arguments after `cargo xtask sweep`.
fn parse_sweep(args: &[String]) -> anyhow::Result<Command> {
    let mut opts = SweepOptions::default();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seeds" => {
                let Some(range) = iter.next().and_then(|v| seed_range(v)) else {
                    bail!("`--seeds` needs a range such as 1..=40, 1..41 or 7\n\n{USAGE}");
                };
                opts.seeds = range;
            }
            "--timeout-secs" => {
                let Some(v) = iter.next().and_then(|v| v.parse::<u64>().ok()) else {
                    bail!("`--timeout-secs` needs a number\n\n{USAGE}");
                };
                opts.timeout = std::time::Duration::from_secs(v);
            }
            "--release" => opts.release = true,
            "--help" | "-h" => return Ok(Command::Help),
            other => bail!("unexpected argument `{other}` for `sweep`\n\n{USAGE}"),
        }
    }
    Ok(Command::Sweep(opts))
}

/// `A..=B`, `A..B` (B exclusive) or `N`, as an inclusive, non-empty range.
fn seed_range(text: &str) -> Option<(u64, u64)> {
    let (from, to) = if let Some((a, b)) = text.split_once("..=") {
        (a.parse().ok()?, b.parse().ok()?)
    } else if let Some((a, b)) = text.split_once("..") {
        (a.parse().ok()?, b.parse::<u64>().ok()?.checked_sub(1)?)
    } else {
        let n = text.parse().ok()?;
        (n, n)
    };
    (from <= to).then_some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse(&args(&["ci"])).unwrap(), Command::Ci);
        assert_eq!(parse(&args(&["--help"])).unwrap(), Command::Help);
        assert_eq!(parse(&args(&["help"])).unwrap(), Command::Help);
        assert_eq!(
            parse(&args(&["bench"])).unwrap(),
            Command::Bench(BenchOptions::default())
        );
        assert_eq!(
            parse(&args(&["bench", "--quick", "--", "storage", "--exact"])).unwrap(),
            Command::Bench(BenchOptions {
                quick: true,
                summary_only: false,
                criterion_args: args(&["storage", "--exact"]),
            })
        );
    }

    #[test]
    fn parses_sim() {
        assert_eq!(
            parse(&args(&["sim", "--quick"])).unwrap(),
            Command::Sim(SimOptions {
                quick: true,
                ..SimOptions::default()
            })
        );
        assert_eq!(
            parse(&args(&[
                "sim", "--nodes", "300", "--nodes", "2000", "--", "--seed", "7"
            ]))
            .unwrap(),
            Command::Sim(SimOptions {
                nodes: vec![300, 2000],
                extra: args(&["--seed", "7"]),
                ..SimOptions::default()
            })
        );
    }

    #[test]
    fn parses_sweep() {
        let seeds = |s: &str| match parse(&args(&["sweep", "--seeds", s])) {
            Ok(Command::Sweep(o)) => Some(o.seeds),
            _ => None,
        };
        assert_eq!(seeds("1..=40"), Some((1, 40)));
        assert_eq!(seeds("5..10"), Some((5, 9)));
        assert_eq!(seeds("7"), Some((7, 7)));
        assert_eq!(seeds("10..=1"), None);
        assert_eq!(seeds("3..3"), None);
        assert_eq!(seeds("0..0"), None);
        assert_eq!(seeds("x..=3"), None);
        assert_eq!(
            parse(&args(&["sweep"])).unwrap(),
            Command::Sweep(SweepOptions::default())
        );
        assert!(parse(&args(&["sweep", "--seeds"])).is_err());
        match parse(&args(&["sweep", "--release"])).unwrap() {
            Command::Sweep(o) => assert!(o.release),
            other => panic!("{other:?}"),
        }
        assert!(parse(&args(&["sweep", "--timeout-secs", "soon"])).is_err());
    }

    #[test]
    fn parses_cluster_test() {
        assert_eq!(
            parse(&args(&["cluster-test"])).unwrap(),
            Command::ClusterTest(ClusterTestOptions::default())
        );
        assert_eq!(
            parse(&args(&["cluster-test", "--agents", "3", "--keep-going"])).unwrap(),
            Command::ClusterTest(ClusterTestOptions {
                agents: 3,
                keep_going: true
            })
        );
        assert!(parse(&args(&["cluster-test", "--agents", "2"])).is_err());
        assert!(parse(&args(&["cluster-test", "--agents"])).is_err());
        assert!(parse(&args(&["cluster-test", "--fast"])).is_err());
    }

    #[test]
    fn rejects_unknown_input() {
        let err = parse(&args(&["frobnicate"])).unwrap_err().to_string();
        assert!(err.contains("unknown command `frobnicate`"), "{err}");
        assert!(err.contains("Usage:"), "{err}");
        assert!(parse(&[]).is_err());
        assert!(parse(&args(&["bench", "--slow"])).is_err());
        assert!(parse(&args(&["ci", "extra"])).is_err());
        assert!(parse(&args(&["sim", "--nodes"])).is_err());
        assert!(parse(&args(&["sim", "--nodes", "many"])).is_err());
    }
}
