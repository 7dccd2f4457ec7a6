//! The `bulk` scenario: 10,000 keys written on one node of ten, then idle
//! traffic and propagation with those keys stored everywhere.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rand::rngs::SmallRng;

use crate::cluster::{sent_between, with_cluster, Cluster, Spec};
use crate::idle::idle_traffic;
use crate::options::Plan;
use crate::propagation::propagation;
use crate::report::{progress, Report};
use crate::Kv;

/// Keys of the bulk and loaded scenarios.
const BULK_KEYS: usize = 10_000;
/// Bytes of one bulk key.
const BULK_KEY_LEN: usize = 16;
/// Bytes of one bulk value.
const BULK_VALUE_LEN: usize = 64;
/// Longest wait for the bulk keys to reach every node.
const BULK_DEADLINE: Duration = Duration::from_secs(120);

/// Ten nodes: [`BULK_KEYS`] keys written on one node, then idle traffic and
/// propagation with those keys stored everywhere.
pub(crate) async fn scenario(
    report: &mut Report,
    plan: Plan,
    rng: &mut SmallRng,
    t0: Instant,
) -> Result<()> {
    with_cluster(Spec::new("bulk", 10), t0, async |c: &Cluster| {
        progress(t0, format!("bulk: writing {BULK_KEYS} keys on one node..."));
        let bulk = bulk_write(c).await?;
        progress(t0, bulk.describe());
        bulk.put(report);

        let label = format!("n=10, {BULK_KEYS} keys");
        progress(t0, format!("{label}: idle traffic..."));
        let idle = idle_traffic(c).await?;
        progress(t0, format!("{label}: {}", idle.describe()));
        idle.put(report, "n10_10k_keys");

        let samples = plan.samples_loaded;
        progress(t0, format!("{label}: {samples} single writes..."));
        let prop = propagation(c, "loaded", samples, plan.sample_deadline, rng).await?;
        progress(t0, format!("{label}: {}", prop.describe()));
        prop.put(report, "n10_loaded", true);
        Ok(())
    })
    .await
}

/// Bytes of the bulk keys and values that each of the 9 other nodes must receive.
fn bulk_payload() -> f64 {
    (9 * BULK_KEYS * (BULK_KEY_LEN + BULK_VALUE_LEN)) as f64
}

/// What writing the bulk keys took.
#[derive(Debug)]
struct Bulk {
    /// Time to `set` every key on the writer.
    write_ms: f64,
    /// Time until every node held every key.
    total_ms: f64,
    /// Bytes all nodes sent meanwhile.
    bytes: u64,
    /// Datagrams all nodes sent meanwhile.
    datagrams: u64,
}

impl Bulk {
    /// A progress line.
    fn describe(&self) -> String {
        format!(
            "bulk: written in {:.1} ms, on all 10 nodes after {:.1} ms, {} bytes sent \
             ({:.2}x the 9 x {BULK_KEYS} x 80 payload)",
            self.write_ms,
            self.total_ms,
            self.bytes,
            self.bytes as f64 / bulk_payload()
        )
    }

    /// Records the `bulk_10k_keys_n10_*` figures.
    fn put(&self, report: &mut Report) {
        report.put("bulk_10k_keys_n10_ms", self.total_ms);
        report.put("bulk_10k_keys_n10_bytes", self.bytes as f64);
        report.put("bulk_10k_keys_n10_datagrams", self.datagrams as f64);
        report.put(
            "bulk_10k_keys_n10_bytes_ratio",
            self.bytes as f64 / bulk_payload(),
        );
        report.put("bulk_10k_keys_n10_write_ms", self.write_ms);
    }
}

/// The `i`-th bulk key, [`BULK_KEY_LEN`] bytes.
fn bulk_key(i: usize) -> String {
    format!("bulk-{i:011}")
}

/// The `i`-th bulk value, [`BULK_VALUE_LEN`] bytes.
fn bulk_value(i: usize) -> String {
    format!("value-{i:058}")
}

/// Writes [`BULK_KEYS`] fresh keys on node 0 as fast as possible and waits
/// until every node holds all of them.
async fn bulk_write(c: &Cluster) -> Result<Bulk> {
    let keys: Vec<String> = (0..BULK_KEYS).map(bulk_key).collect();
    let values: Vec<String> = (0..BULK_KEYS).map(bulk_value).collect();
    let base: Vec<usize> = c.nodes.iter().map(Kv::len).collect();
    let before = c.stats();
    let start = Instant::now();
    for (k, v) in keys.iter().zip(&values) {
        c.nodes[0]
            .set(k, v.clone())
            .with_context(|| format!("set {k}"))?;
    }
    let write_ms = start.elapsed().as_secs_f64() * 1e3;
    wait_everywhere(c, &base, start)?;
    let elapsed = start.elapsed();
    let (bytes, datagrams) = sent_between(&before, &c.stats());
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

/// Waits until every node holds [`BULK_KEYS`] more keys than `base` (its
/// count before the bulk write started at `start`), polling this thread.
fn wait_everywhere(c: &Cluster, base: &[usize], start: Instant) -> Result<()> {
    let gained = || {
        c.nodes
            .iter()
            .zip(base)
            .map(|(node, &b)| node.len().saturating_sub(b))
    };
    loop {
        if gained().all(|g| g >= BULK_KEYS) {
            return Ok(());
        }
        if start.elapsed() > BULK_DEADLINE {
            let least = gained().min().unwrap_or(0);
            bail!(
                "bulk keys not everywhere within {BULK_DEADLINE:?}: the poorest node has {least}"
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_keys_and_values_have_the_advertised_size() {
        assert_eq!(bulk_key(9_999).len(), BULK_KEY_LEN);
        assert_eq!(bulk_value(9_999).len(), BULK_VALUE_LEN);
    }
}
