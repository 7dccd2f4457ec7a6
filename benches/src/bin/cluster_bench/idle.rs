//! Traffic of a cluster nobody writes to.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::cluster::{sent_between, Cluster};
use crate::report::Report;
use crate::INTERVAL;

/// Gossip rounds (per node) over which idle traffic is measured.
pub(crate) const IDLE_ROUNDS: u64 = 20;

/// Traffic of an idle cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// Bytes sent per node and gossip round.
    pub(crate) bytes_per_node_round: f64,
    /// Datagrams sent per node and gossip round.
    pub(crate) datagrams_per_node_round: f64,
}

impl Idle {
    /// A progress line: `idle B bytes, D datagrams per node per round`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "idle {:.1} bytes, {:.2} datagrams per node per round",
            self.bytes_per_node_round, self.datagrams_per_node_round
        )
    }

    /// Records `idle_bytes_per_node_round_{suffix}` and
    /// `idle_datagrams_per_node_round_{suffix}`.
    pub(crate) fn put(&self, report: &mut Report, suffix: &str) {
        report.put(
            format!("idle_bytes_per_node_round_{suffix}"),
            self.bytes_per_node_round,
        );
        report.put(
            format!("idle_datagrams_per_node_round_{suffix}"),
            self.datagrams_per_node_round,
        );
    }
}

/// Measures what the nodes send while nothing is written, over
/// [`IDLE_ROUNDS`] gossip rounds of every node.
pub(crate) async fn idle_traffic(cluster: &Cluster) -> Result<Idle> {
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
            let total_rounds = rounds.iter().sum::<u64>() as f64;
            let (bytes, datagrams) = sent_between(&before, &now);
            return Ok(Idle {
                bytes_per_node_round: bytes as f64 / total_rounds,
                datagrams_per_node_round: datagrams as f64 / total_rounds,
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
