//! The command line, and the sample counts and deadlines of each mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Every scenario, in the order they run.
const SCENARIOS: [&str; 16] = [
    "memory",
    "amplify",
    "budget",
    "n10",
    "n10keyed",
    "bulk",
    "n100",
    "maxvalue",
    "sweep",
    "latejoin",
    "coldburst",
    "latejoin1m",
    "heal",
    "serve",
    "durable",
    "lifetime",
];

/// Hidden flag, followed by a key length: measure the memory per entry of
/// keys that long and print it, nothing else (see [`crate::memory`]).
pub(crate) const MEMORY_PROBE: &str = "--memory-probe";

/// Hidden flag: fill a cache node ten times past its byte budget and print
/// the peak over the budget and the RSS growth (see [`crate::budget`]).
pub(crate) const BUDGET_PROBE: &str = "--budget-probe";

/// Hidden flag: measure the serving node's memory while it streams and
/// print it, nothing else (see [`crate::serve`]).
pub(crate) const SERVE_PROBE: &str = "--serve-probe";

/// Hidden flag, followed by a data dir, its key count and one of its keys:
/// start a node from that data dir, time it until it serves that key, and
/// print the time in milliseconds (see [`crate::durable`]: a restart is a
/// new process).
pub(crate) const RESTART_PROBE: &str = "--restart-probe";

/// One-line usage, printed by `--help` and after argument errors.
pub(crate) const USAGE: &str =
    "usage: cluster_bench --out FILE [--quick] [--svg FILE] [--only SCENARIO,...]";

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run the scenarios and write the figures.
    Run(Options),
    /// Internal: the memory probe, run by the `memory` scenario in a fresh
    /// process of this binary, for keys of this length.
    MemoryProbe(usize),
    /// Run the serving-memory probe (see [`SERVE_PROBE`]).
    ServeProbe,
    /// Run the budget probe (see [`BUDGET_PROBE`]).
    BudgetProbe,
    /// Run the restart probe (see [`RESTART_PROBE`]) on this data dir,
    /// which holds this many keys, this one among them.
    RestartProbe(PathBuf, usize, String),
    /// Print [`USAGE`].
    Help,
}

/// Command-line options.
#[derive(Debug)]
pub(crate) struct Options {
    /// Where the JSON figures go.
    pub(crate) out: PathBuf,
    /// Where the SVG of the sweep goes.
    pub(crate) svg: PathBuf,
    /// Fewer samples and shorter deadlines (see [`Plan`]).
    pub(crate) quick: bool,
    /// Scenarios to run; all of them when empty.
    pub(crate) only: Vec<String>,
}

impl Options {
    /// Whether the scenario `name` is to run.
    pub(crate) fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// Sample counts and deadlines, by mode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Single writes timed on ten nodes.
    pub(crate) samples_n10: usize,
    /// Single writes timed on ten nodes holding the bulk keys.
    pub(crate) samples_loaded: usize,
    /// Single writes timed on a hundred nodes.
    pub(crate) samples_n100: usize,
    /// Single writes timed per cluster size and push setting of the sweep.
    pub(crate) samples_sweep: usize,
    /// Longest wait for one write to reach every node.
    pub(crate) sample_deadline: Duration,
    /// Longest wait for one value to reach the other node (max value search).
    pub(crate) replicate_deadline: Duration,
    /// Longest wait for a late joiner or a cold burst to be everywhere.
    pub(crate) catchup_deadline: Duration,
}

impl Plan {
    /// The plan of quick or full mode.
    pub(crate) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                samples_n10: 60,
                samples_loaded: 40,
                samples_n100: 30,
                samples_sweep: 15,
                sample_deadline: Duration::from_secs(5),
                replicate_deadline: Duration::from_secs(2),
                catchup_deadline: Duration::from_secs(20),
            }
        } else {
            Plan {
                samples_n10: 200,
                samples_loaded: 200,
                samples_n100: 100,
                samples_sweep: 50,
                sample_deadline: Duration::from_secs(10),
                replicate_deadline: Duration::from_secs(4),
                catchup_deadline: Duration::from_secs(180),
            }
        }
    }
}

/// Parses the arguments (without the program name). `--memory-probe` and
/// `--help` take effect as soon as they are seen.
pub(crate) fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command> {
    let mut out = None;
    let mut svg = None;
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--svg" => svg = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--quick" => quick = true,
            MEMORY_PROBE => {
                let key_len = args.next().context(USAGE)?.parse().context(USAGE)?;
                return Ok(Command::MemoryProbe(key_len));
            }
            SERVE_PROBE => return Ok(Command::ServeProbe),
            BUDGET_PROBE => return Ok(Command::BudgetProbe),
            RESTART_PROBE => {
                let dir = PathBuf::from(args.next().context(USAGE)?);
                let keys = args.next().context(USAGE)?.parse().context(USAGE)?;
                let key = args.next().context(USAGE)?;
                return Ok(Command::RestartProbe(dir, keys, key));
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
            "--help" | "-h" => return Ok(Command::Help),
            // `cargo bench` passes `--bench` to every target it runs.
            "--bench" => {}
            other => bail!("unexpected argument `{other}`\n{USAGE}"),
        }
    }
    let out: PathBuf = out.context(USAGE)?;
    let svg = svg.unwrap_or_else(|| {
        out.parent()
            .unwrap_or(Path::new("."))
            .join("propagation.svg")
    });
    Ok(Command::Run(Options {
        out,
        svg,
        quick,
        only,
    }))
}
