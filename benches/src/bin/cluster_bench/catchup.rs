//! The cold paths: `latejoin` (a fourth node joins three that hold 20,000
//! keys) and `coldburst` (2,000 keys written on one of ten nodes started one
//! after another, before the cluster has formed). Both time until the last
//! node holds every key; a run that does not finish within its deadline
//! reports the deadline and a timeout flag, plus how far it got.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::cluster::{sent_between, with_cluster, Cluster, Spec};
use crate::options::Plan;
use crate::report::{progress, Report};
use crate::{Kv, INTERVAL};

/// Keys the three formed nodes hold when the fourth joins, and the size
/// label of the figure.
pub(crate) const JOIN_20K: (usize, &str) = (20_000, "20k");
/// The same with a million keys (116 MB of keys and values).
pub(crate) const JOIN_1M: (usize, &str) = (1_000_000, "1m");
/// Keys written at once before the cluster formed.
const BURST_KEYS: usize = 2_000;
/// Nodes of the cold burst.
const BURST_NODES: usize = 10;
/// Bytes of one key.
const KEY_LEN: usize = 16;
/// Bytes of one value.
const VALUE_LEN: usize = 100;

/// The `i`-th key, [`KEY_LEN`] bytes.
fn key(i: usize) -> String {
    format!("join-{i:011}")
}

/// What the values of a late join look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Values {
    /// `value-000…0i`: compresses about tenfold.
    Repetitive,
    /// 100 characters drawn at random from 64: LZ4 finds nothing to
    /// shorten, the worst case for stream compression.
    Random,
}

/// The `i`-th value of kind `kind`, [`VALUE_LEN`] bytes.
fn value_of(kind: Values, i: usize) -> String {
    match kind {
        Values::Repetitive => value(i),
        Values::Random => {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            (0..VALUE_LEN)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(ALPHABET[(x >> 58) as usize])
                })
                .collect()
        }
    }
}

/// The `i`-th value, [`VALUE_LEN`] bytes.
fn value(i: usize) -> String {
    format!("value-{i:094}")
}

/// How one catch-up went.
#[derive(Debug)]
struct CatchUp {
    /// Until every node held every key, or the deadline.
    ms: f64,
    /// Whether the deadline passed first.
    timed_out: bool,
    /// Keys the poorest node held at the end.
    least: usize,
    /// Bytes all nodes sent meanwhile, over the keys and values delivered.
    bytes_ratio: f64,
}

impl CatchUp {
    fn describe(&self, what: &str, keys: usize) -> String {
        let outcome = if self.timed_out {
            format!(
                "NOT done after {:.0} ms: the poorest node had {}",
                self.ms, self.least
            )
        } else {
            format!("done in {:.1} ms", self.ms)
        };
        format!(
            "{what}: {outcome} of {keys} keys; {:.2}x the keys and values in bytes sent",
            self.bytes_ratio
        )
    }

    /// Records `{what}_ms_{size}` and its companions, the names the
    /// catch-up targets use.
    fn put(&self, report: &mut Report, what: &str, size: &str) {
        report.put(format!("{what}_ms_{size}"), self.ms);
        let timed_out = f64::from(u8::from(self.timed_out));
        report.put(format!("{what}_timed_out_{size}"), timed_out);
        report.put(format!("{what}_keys_held_{size}"), self.least as f64);
        report.put(format!("{what}_bytes_ratio_{size}"), self.bytes_ratio);
    }
}

/// Writes keys `0..n` on `node`.
fn write_keys(node: &Kv, n: usize, kind: Values) -> Result<()> {
    for i in 0..n {
        node.set(key(i), value_of(kind, i))
            .with_context(|| format!("set {}", key(i)))?;
    }
    Ok(())
}

/// Polls `nodes` from this thread until each holds `keys` keys, or until
/// `deadline` after `start`; `delivered` is how many key-and-value copies
/// had to travel, for the byte ratio.
fn wait_all(
    nodes: &[&Kv],
    keys: usize,
    start: Instant,
    deadline: Duration,
    bytes: impl Fn() -> u64,
    delivered: usize,
) -> CatchUp {
    let least = || nodes.iter().map(|n| n.len()).min().unwrap_or(0);
    let timed_out = loop {
        if least() >= keys {
            break false;
        }
        if start.elapsed() > deadline {
            break true;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    CatchUp {
        ms,
        timed_out,
        least: least(),
        bytes_ratio: bytes() as f64 / (delivered * (KEY_LEN + VALUE_LEN)) as f64,
    }
}

/// Checks every key's value on `node`.
fn verify(node: &Kv, keys: usize, kind: Values) -> Result<()> {
    for i in 0..keys {
        ensure!(
            node.get(key(i))?.as_deref() == Some(value_of(kind, i).as_str()),
            "{} has a wrong value for {}",
            node.node_id(),
            key(i)
        );
    }
    Ok(())
}

/// Keys each half of the healed cluster writes apart.
const HEAL_KEYS: usize = 50_000;
/// Nodes per half.
const HEAL_HALF: usize = 5;

/// `heal_ms_100k` and companions: two halves of [`HEAL_HALF`] nodes of one
/// cluster, which have not heard of each other, each write [`HEAL_KEYS`]
/// keys (spread over their nodes) and share them within the half; then one
/// node of the first half joins a node of the second, and every node must
/// hold all keys. (Like a partition that heals, each side holds writes the
/// other lacks; unlike one, no member was declared dead meanwhile.)
pub(crate) async fn heal(report: &mut Report, plan: Plan, t0: Instant) -> Result<()> {
    progress(
        t0,
        format!("heal: two halves of {HEAL_HALF} nodes, {HEAL_KEYS} keys written apart in each..."),
    );
    let mut nodes: Vec<Kv> = Vec::new();
    let result = async {
        for half in 0..2 {
            let first = nodes.len();
            for i in 0..HEAL_HALF {
                let seeds: Vec<String> = nodes[first..]
                    .first()
                    .map(|n| n.local_addr().map(|a| a.to_string()))
                    .into_iter()
                    .flatten()
                    .collect();
                let node = Kv::builder()
                    .cluster_id("heal")
                    .node_id(format!("heal-{half}-{i}"))
                    .bind_addr("127.0.0.1:0")
                    .gossip_interval(INTERVAL)
                    .seeds(seeds)
                    .build()
                    .await
                    .context("cannot start a node")?;
                nodes.push(node);
            }
            let per_node = HEAL_KEYS / HEAL_HALF;
            for (i, node) in nodes[first..].iter().enumerate() {
                let base = half * HEAL_KEYS + i * per_node;
                for k in base..base + per_node {
                    node.set(key(k), value(k))?;
                }
            }
            let members: Vec<&Kv> = nodes[first..].iter().collect();
            let shared = wait_all(
                &members,
                HEAL_KEYS,
                Instant::now(),
                plan.catchup_deadline,
                || 0,
                1,
            );
            ensure!(
                !shared.timed_out,
                "half {half} did not share its keys: {shared:?}"
            );
        }
        let all: Vec<&Kv> = nodes.iter().collect();
        let stats = |nodes: &[Kv]| nodes.iter().map(Kv::stats).collect::<Vec<_>>();
        let before = stats(&nodes);
        let start = Instant::now();
        let bridge = nodes[HEAL_HALF].local_addr().context("bound")?.to_string();
        nodes[0].join([bridge]).await?;
        let healed = wait_all(
            &all,
            2 * HEAL_KEYS,
            start,
            plan.catchup_deadline,
            || sent_between(&before, &stats(&nodes)).0,
            2 * HEAL_HALF * HEAL_KEYS,
        );
        progress(t0, healed.describe("heal", 2 * HEAL_KEYS));
        healed.put(report, "heal", "100k");
        if !healed.timed_out {
            for n in [&nodes[0], &nodes[2 * HEAL_HALF - 1]] {
                verify(n, 2 * HEAL_KEYS, Values::Repetitive)?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    for n in &nodes {
        if let Err(e) = n.shutdown().await {
            eprintln!("warning: shutting down {} failed: {e}", n.node_id());
        }
    }
    result
}

/// `late_join_ms_20k` (or `_1m`) and companions: three formed nodes hold `keys` keys written on
/// the first; a fourth node starts with the first as its one seed.
pub(crate) async fn late_join(
    report: &mut Report,
    plan: Plan,
    t0: Instant,
    (keys, size): (usize, &str),
    kind: Values,
) -> Result<()> {
    let size = match kind {
        Values::Repetitive => size.to_string(),
        Values::Random => format!("{size}_random"),
    };
    let size = size.as_str();
    let name = format!("latejoin{size}");
    let spec = Spec::new(&name, 3);
    with_cluster(spec, t0, async |c: &Cluster| {
        progress(
            t0,
            format!("latejoin: writing {keys} keys ({kind:?} values) on one of 3 nodes..."),
        );
        write_keys(&c.nodes[0], keys, kind)?;
        let holders: Vec<&Kv> = c.nodes.iter().collect();
        let spread = wait_all(
            &holders,
            keys,
            Instant::now(),
            plan.catchup_deadline,
            || 0,
            1,
        );
        ensure!(
            !spread.timed_out,
            "the 3 formed nodes did not share the keys: {spread:?}"
        );
        let before = c.stats();
        let start = Instant::now();
        let seed = c.nodes[0].local_addr().context("bound")?.to_string();
        let joiner = Kv::builder()
            .cluster_id(spec.name)
            .node_id("latejoin-joiner")
            .bind_addr("127.0.0.1:0")
            .gossip_interval(INTERVAL)
            .seeds([seed])
            .build()
            .await
            .context("cannot start the joiner")?;
        let bytes = || {
            let (sent, _) = sent_between(&before, &c.stats());
            let j = joiner.stats();
            sent + j.bytes_sent + j.stream_bytes_sent
        };
        let join = wait_all(&[&joiner], keys, start, plan.catchup_deadline, bytes, keys);
        let j = joiner.stats();
        progress(
            t0,
            format!(
                "{}; the joiner asked for {} streams: {} completed, {} cut",
                join.describe(&format!("latejoin ({kind:?} values)"), keys),
                j.streams_requested,
                j.streams_completed,
                j.streams_cut
            ),
        );
        let checked = if join.timed_out {
            Ok(())
        } else {
            verify(&joiner, keys, kind)
        };
        join.put(report, "late_join", size);
        if let Err(e) = joiner.shutdown().await {
            eprintln!("warning: shutting down the joiner failed: {e}");
        }
        checked
    })
    .await
}

/// `cold_burst_ms_2k` and companions: [`BURST_NODES`] nodes started one
/// after another, and [`BURST_KEYS`] keys written on the last the moment it
/// has started, before it has heard from any peer.
pub(crate) async fn cold_burst(report: &mut Report, plan: Plan, t0: Instant) -> Result<()> {
    let spec = Spec::new("coldburst", BURST_NODES);
    progress(
        t0,
        format!("coldburst: starting {BURST_NODES} nodes, writing {BURST_KEYS} keys on the last at once..."),
    );
    let mut c = Cluster::start(Spec::new("coldburst", BURST_NODES - 1)).await?;
    let result = async {
        let before = c.stats();
        let start = Instant::now();
        let writer = c.start_node(spec, BURST_NODES - 1).await?;
        write_keys(&writer, BURST_KEYS, Values::Repetitive)?;
        let write_ms = start.elapsed().as_secs_f64() * 1e3;
        c.nodes.push(writer);
        let nodes: Vec<&Kv> = c.nodes.iter().collect();
        // The writer started after `before`: all it sent counts.
        let bytes = || {
            let stats = c.stats();
            let w = &stats[BURST_NODES - 1];
            sent_between(&before, &stats).0 + w.bytes_sent + w.stream_bytes_sent
        };
        let delivered = (BURST_NODES - 1) * BURST_KEYS;
        let burst = wait_all(
            &nodes,
            BURST_KEYS,
            start,
            plan.catchup_deadline,
            bytes,
            delivered,
        );
        progress(
            t0,
            format!(
                "{} (writer started and written in {write_ms:.1} ms)",
                burst.describe("coldburst", BURST_KEYS)
            ),
        );
        burst.put(report, "cold_burst", "2k");
        if !burst.timed_out {
            verify(&c.nodes[0], BURST_KEYS, Values::Repetitive)?;
        }
        anyhow::Ok(())
    }
    .await;
    c.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_the_advertised_size() {
        assert_eq!(key(JOIN_1M.0).len(), KEY_LEN);
        assert_eq!(value(JOIN_1M.0).len(), VALUE_LEN);
        assert_eq!(value_of(Values::Random, 7).len(), VALUE_LEN);
        assert_ne!(value_of(Values::Random, 7), value_of(Values::Random, 8));
    }
}
