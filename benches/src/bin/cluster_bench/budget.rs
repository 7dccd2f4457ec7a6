//! The `budget` scenario: a cache node (`max_bytes`, `MemoryPolicy::EvictLru`)
//! under a load of fresh keys ten times its budget.
//!
//! - `max_bytes_peak_over_budget`: the highest `memory_usage()` seen after
//!   any write of a local-only node, minus the budget (target: at most one
//!   value, [`VALUE`] bytes; negative is under the budget). Measured in a
//!   fresh process of this binary, with its resident memory:
//!   `max_bytes_rss_growth_mb` is what the process grew while filling the
//!   cache, for a budget of `max_bytes_budget_mb`.
//! - `max_bytes_peak_over_budget_n2`: the same for a cache with one peer on
//!   loopback, writing as fast as it can (its tombstones wait for the peer's
//!   digests before they may go; live values are evicted to pay for them,
//!   and when none is left writes are refused until they go:
//!   `max_bytes_refused_writes_n2` counts them).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gossipkv::{GossipKv, MemoryPolicy};

use crate::memory::{rss_now, run_probe};
use crate::options::BUDGET_PROBE;
use crate::report::{progress, Report};
use crate::Kv;

/// The byte budget of the cache.
const BUDGET: usize = 8 << 20;
/// Length of each value written.
const VALUE: usize = 1_000;
/// Bytes of keys and values written: ten times the budget.
const LOAD: usize = 10 * BUDGET;

/// Runs the local-only measurement in a fresh process and the two-node one
/// here; failures are recorded in `report`.
pub(crate) async fn scenario(report: &mut Report, t0: Instant) {
    progress(
        t0,
        "budget: a cache filled ten times past max_bytes (fresh process)...",
    );
    match run_probe(BUDGET_PROBE, "budget") {
        Ok(v) => match v[..] {
            [over, rss] => {
                progress(
                    t0,
                    format!(
                        "budget: peak {over:+.0} bytes over a budget of {BUDGET}; RSS grew {:.1} MB",
                        rss / 1e6
                    ),
                );
                report.put("max_bytes_budget_mb", BUDGET as f64 / 1e6);
                report.put("max_bytes_peak_over_budget", over);
                report.put("max_bytes_rss_growth_mb", rss / 1e6);
            }
            _ => report.fail(t0, "budget", anyhow::anyhow!("budget probe printed {v:?}")),
        },
        Err(e) => report.fail(t0, "budget", e),
    }
    let result = two_nodes(report, t0).await;
    report.check(t0, "budget", result);
}

/// A cache node builder with the scenario's budget.
fn cache() -> gossipkv::Builder<String, String> {
    GossipKv::<String, String>::builder()
        .max_bytes(BUDGET)
        .memory_policy(MemoryPolicy::EvictLru)
}

/// Writes fresh keys until [`LOAD`] bytes were written; returns the peak
/// `memory_usage()` minus the budget, and how many writes were refused
/// (a cache with nothing left to evict but tombstones its peer has not
/// seen refuses values until they are collected: the writer retries after
/// a millisecond, for at most a minute in all).
async fn fill(kv: &Kv, yield_every: usize) -> Result<(f64, u64)> {
    let value = "v".repeat(VALUE);
    let mut peak = 0;
    let mut written = 0;
    let mut refused = 0u64;
    let mut i = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while written < LOAD {
        let key = format!("key-{i:011}");
        match kv.set(&key, value.clone()) {
            Ok(()) => {}
            Err(gossipkv::Error::OverBudget { .. }) if Instant::now() < deadline => {
                refused += 1;
                peak = peak.max(kv.memory_usage());
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => return Err(e).context(format!("set {key}")),
        }
        written += key.len() + VALUE;
        peak = peak.max(kv.memory_usage());
        i += 1;
        if yield_every > 0 && i.is_multiple_of(yield_every) {
            tokio::task::yield_now().await;
        }
    }
    ensure!(!kv.is_empty(), "the cache holds nothing");
    Ok((peak as f64 - BUDGET as f64, refused))
}

/// The body of the hidden `--budget-probe` run.
pub(crate) fn probe() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start a runtime")?;
    let before = rss_now()?;
    let over = runtime.block_on(async {
        let kv = cache().build().await?;
        let (over, refused) = fill(&kv, 0).await?;
        ensure!(
            refused == 0,
            "a cache without peers refused {refused} writes"
        );
        anyhow::Ok(over)
    })?;
    let after = rss_now()?;
    println!("{over} {}", after.saturating_sub(before));
    Ok(())
}

/// The cache with one peer on loopback.
async fn two_nodes(report: &mut Report, t0: Instant) -> Result<()> {
    let a = cache()
        .node_id("cache")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(crate::INTERVAL)
        .build()
        .await?;
    let addr = a.local_addr().context("bound")?.to_string();
    let b = GossipKv::<String, String>::builder()
        .node_id("peer")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(crate::INTERVAL)
        .seeds([addr])
        .build()
        .await?;
    let start = Instant::now();
    while a.peers().is_empty() || b.peers().is_empty() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the two nodes never met");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (over, refused) = fill(&a, 100).await?;
    let settled = Instant::now();
    while a.memory_usage() > BUDGET && settled.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress(
        t0,
        format!(
            "budget: with a peer, peak {over:+.0} bytes over ({refused} writes refused while \
             its tombstones waited for the peer); back within the budget after {} ms",
            settled.elapsed().as_millis()
        ),
    );
    report.put("max_bytes_peak_over_budget_n2", over);
    report.put("max_bytes_refused_writes_n2", refused as f64);
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
