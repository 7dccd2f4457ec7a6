//! The `maxvalue` scenario: the largest value `set` accepts, whether it
//! replicates, and whether it holds up a small write made just after it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use gossipkv::Error;

use crate::cluster::{with_cluster, Cluster, Spec};
use crate::options::Plan;
use crate::report::{progress, Report};
use crate::Kv;

/// Largest value tried while looking for the limit of `set`.
const LIMIT_SEARCH_CAP: usize = 1 << 30;

/// Two nodes with the default 1,400-byte packets: the largest value `set`
/// accepts, whether it reaches the other node, and how long a small write
/// made just after it takes to get there (a large value must not hold it up).
pub(crate) async fn scenario(report: &mut Report, plan: Plan, t0: Instant) -> Result<()> {
    let accepted = default_limit().await?;
    progress(t0, format!("maxvalue: set accepts up to {accepted} bytes"));
    report.put("max_value_bytes_accepted", accepted as f64);

    let deadline = plan.replicate_deadline;
    with_cluster(Spec::new("maxvalue", 2), t0, async |c: &Cluster| {
        let mut probe = 0usize;
        let mut next_key = || {
            probe += 1;
            format!("maxvalue-{probe:06}")
        };
        let (writer, reader) = (&c.nodes[0], &c.nodes[1]);
        // A small write alone, for comparison.
        let (alone_key, start) = (next_key(), Instant::now());
        writer.set(&alone_key, "small".to_string())?;
        let alone = arrival(reader, &alone_key, "small", start, deadline)?
            .context("a small write did not replicate")?;
        // The largest value, then a small write right after it.
        let (big_key, small_key) = (next_key(), next_key());
        let big = "x".repeat(accepted);
        let start = Instant::now();
        writer.set(&big_key, big.clone())?;
        writer.set(&small_key, "small".to_string())?;
        let small = arrival(reader, &small_key, "small", start, deadline)?
            .context("the small write after the large value did not replicate")?;
        let (best, took) = match arrival(reader, &big_key, &big, start, deadline)? {
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

/// The largest value `set` accepts with the default options, as reported by
/// its error for a larger one. Values of doubling size are set on a
/// local-only node (no bind address: no socket, nothing replicates) until
/// one is refused.
async fn default_limit() -> Result<usize> {
    let node = Kv::builder()
        .node_id("maxvalue-limit")
        .build()
        .await
        .context("cannot start a local-only node")?;
    let mut size = 1024;
    let limit = loop {
        if size > LIMIT_SEARCH_CAP {
            break Err(anyhow!(
                "set accepted every value up to {LIMIT_SEARCH_CAP} bytes"
            ));
        }
        match node.set("maxvalue-limit", "x".repeat(size)) {
            Ok(()) => size *= 2,
            Err(Error::ValueTooLarge { max, .. }) => break Ok(max),
            Err(e) => break Err(e).context(format!("set of a {size}-byte value")),
        }
    };
    if let Err(e) = node.shutdown().await {
        eprintln!("warning: shutting down {} failed: {e}", node.node_id());
    }
    limit
}

/// Polls `reader` until it reads `value` under `key`; how long after `start`
/// it did, or `None` once `deadline` has passed. Blocks this thread.
fn arrival(
    reader: &Kv,
    key: &str,
    value: &str,
    start: Instant,
    deadline: Duration,
) -> Result<Option<Duration>> {
    loop {
        if reader.get(key)?.as_deref() == Some(value) {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
