//! Loopback clusters: starting the nodes, waiting for the cluster to form,
//! reading their counters, shutting them down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gossipkv::{MemberState, Stats};

use crate::report::progress;
use crate::{Kv, INTERVAL};

/// Delay between starting two nodes.
const STAGGER: Duration = Duration::from_millis(3);

/// Nodes of one cluster, all in this process.
pub(crate) struct Cluster {
    /// The nodes, in the order they were started.
    pub(crate) nodes: Vec<Kv>,
}

/// How to build the nodes of a cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec<'a> {
    /// Cluster id and node id prefix; unique per scenario.
    pub(crate) name: &'a str,
    /// Number of nodes.
    pub(crate) nodes: usize,
    /// Whether writers push eagerly (else writes travel by gossip rounds only).
    pub(crate) push: bool,
    /// Whether every node seals its datagrams with one shared key.
    pub(crate) keyed: bool,
}

impl Spec<'_> {
    /// `nodes` nodes named after `name`, eager push on.
    pub(crate) fn new(name: &str, nodes: usize) -> Spec<'_> {
        Spec {
            name,
            nodes,
            push: true,
            keyed: false,
        }
    }
}

impl Cluster {
    /// Starts the nodes a few milliseconds apart. Nodes already started are
    /// shut down if one fails to start.
    ///
    /// Every node binds `127.0.0.1:0`. The transport leaves `SO_REUSEADDR`
    /// off, so the kernel hands each node a port no other socket has.
    pub(crate) async fn start(spec: Spec<'_>) -> Result<Cluster> {
        let mut cluster = Cluster { nodes: Vec::new() };
        for i in 0..spec.nodes {
            match cluster.start_node(spec, i).await {
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

    /// Starts node `i`, seeded with the first node and the one before it.
    pub(crate) async fn start_node(&self, spec: Spec<'_>, i: usize) -> Result<Kv> {
        let mut seeds = Vec::new();
        if let Some(first) = self.nodes.first() {
            seeds.push(addr(first)?);
        }
        if i >= 2 {
            seeds.push(addr(&self.nodes[i - 1])?);
        }
        let mut b = Kv::builder();
        if spec.keyed {
            b = b.keyring(gossipkv::Keyring::new(gossipkv::Key::from_bytes(
                [0x6b; 32],
            )));
        }
        b.cluster_id(spec.name)
            .node_id(format!("{}-{i:03}", spec.name))
            .bind_addr("127.0.0.1:0")
            .gossip_interval(INTERVAL)
            .eager_push(spec.push)
            .seeds(seeds)
            .build()
            .await
            .with_context(|| format!("cannot start node {i} of {}", spec.name))
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
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
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for other in &self.nodes {
            let view = other
                .members()
                .into_iter()
                .find(|m| m.node_id.as_str() == node.node_id());
            if let Some(m) = view {
                *seen.entry(m.state.to_string()).or_default() += 1;
            }
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

    /// The counters of every node, in node order.
    pub(crate) fn stats(&self) -> Vec<Stats> {
        self.nodes.iter().map(Kv::stats).collect()
    }

    /// Shuts every node down, reporting (not returning) errors.
    pub(crate) async fn shutdown(self) {
        for node in &self.nodes {
            if let Err(e) = node.shutdown().await {
                eprintln!("warning: shutting down {} failed: {e}", node.node_id());
            }
        }
    }
}

/// Bytes and datagrams all nodes sent between two [`Cluster::stats`] readings.
pub(crate) fn sent_between(before: &[Stats], after: &[Stats]) -> (u64, u64) {
    after
        .iter()
        .zip(before)
        .fold((0, 0), |(bytes, datagrams), (a, b)| {
            (
                // Datagrams and streams alike (payload bytes).
                bytes + (a.bytes_sent + a.stream_bytes_sent - b.bytes_sent - b.stream_bytes_sent),
                datagrams + (a.datagrams_sent - b.datagrams_sent),
            )
        })
}

/// The address other nodes reach `node` at, as a seed.
fn addr(node: &Kv) -> Result<String> {
    Ok(node
        .local_addr()
        .context("a bound node has a local address")?
        .to_string())
}

/// Runs `body` on a freshly started and formed cluster, then shuts it down
/// whatever `body` returned.
pub(crate) async fn with_cluster<T>(
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

/// `on` or `off`, for labels and figure names.
pub(crate) fn on_off(push: bool) -> &'static str {
    if push {
        "on"
    } else {
        "off"
    }
}
