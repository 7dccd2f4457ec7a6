//! Memory limits through the public API: both policies, the earlier
//! system's failure cases, watchers seeing evictions, and evictions in a
//! cluster on loopback (a replicated delete; nothing fetched back; nothing a
//! peer relies on lost). Every wait polls a condition with a deadline.

use std::time::Duration;

use gossipkv::{Builder, ConfigOption, Error, GossipKv, MemoryPolicy};

mod common;

use common::{wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);

/// `b` as a cache: least recently used evicted, within these limits.
fn evicting(
    b: Builder<String, String>,
    max_entries: Option<usize>,
    max_bytes: Option<usize>,
) -> Builder<String, String> {
    let mut b = b.memory_policy(MemoryPolicy::EvictLru);
    if let Some(n) = max_entries {
        b = b.max_entries(n);
    }
    if let Some(n) = max_bytes {
        b = b.max_bytes(n);
    }
    b
}

/// A local-only cache.
async fn cache(max_entries: Option<usize>, max_bytes: Option<usize>) -> Kv {
    evicting(GossipKv::builder(), max_entries, max_bytes)
        .build()
        .await
        .expect("node starts")
}

/// A networked node; a cache when `limits` (entries, bytes) are given.
async fn member(id: &str, seeds: &[&Kv], limits: Option<(Option<usize>, Option<usize>)>) -> Kv {
    let mut b = GossipKv::<String, String>::builder()
        .node_id(id)
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds(seeds.iter().map(|s| s.local_addr().unwrap().to_string()));
    if let Some((entries, bytes)) = limits {
        b = evicting(b, entries, bytes);
    }
    b.build().await.expect("node starts")
}

#[tokio::test]
async fn memory_options_are_checked() {
    let e = GossipKv::<String, String>::builder()
        .max_entries(0)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                option: ConfigOption::MaxEntries,
                ..
            }
        ),
        "{e}"
    );
    let e = GossipKv::<String, String>::builder()
        .max_bytes(10)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidConfig {
                option: ConfigOption::MaxBytes,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn reject_refuses_with_typed_errors_and_writes_nothing() -> Result<(), Error> {
    let kv = GossipKv::<String, String>::builder()
        .max_entries(2)
        .max_bytes(gossipkv::MIN_MAX_BYTES * 4)
        .build()
        .await?;
    kv.set("a", "1".into())?;
    kv.set("b", "2".into())?;
    let e = kv.set("c", "3".into()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OverBudget {
                max_entries: Some(2),
                ..
            }
        ),
        "{e}"
    );
    assert!(!kv.contains_key("c"));
    let e = kv
        .set("a", "x".repeat(gossipkv::MIN_MAX_BYTES * 4))
        .unwrap_err();
    assert!(matches!(e, Error::TooLargeForBudget { .. }), "{e}");
    assert_eq!(kv.get("a")?.as_deref(), Some("1"));
    let stats = kv.memory_stats();
    assert_eq!((stats.refused, stats.evicted), (2, 0), "{stats:?}");
    assert_eq!(kv.durability(), None, "no data dir");
    let limits = kv.memory_limits();
    assert_eq!(
        (limits.max_entries, limits.max_bytes, limits.policy),
        (
            Some(2),
            Some(gossipkv::MIN_MAX_BYTES * 4),
            MemoryPolicy::Reject
        )
    );
    kv.delete("a")?;
    kv.set("c", "3".into())?;
    assert_eq!(kv.keys(), ["b", "c"]);
    Ok(())
}

#[tokio::test]
async fn a_cache_filled_far_past_its_budget_stays_within_it_and_watchers_see_evictions(
) -> Result<(), Error> {
    let value = "v".repeat(100);
    // Keys of 9 bytes (`key-00000`), values stored as their bytes.
    let per_entry = gossipkv::entry_cost(9, Some(value.len()));
    let budget = 200 * per_entry;
    let kv = cache(None, Some(budget)).await;
    let mut watch = kv.watch("");
    let mut peak = 0;
    for i in 0..2_000 {
        kv.set(format!("key-{i:05}"), value.clone())?;
        peak = peak.max(kv.memory_usage());
    }
    assert!(peak <= budget, "peak {peak} over the budget {budget}");
    assert!(kv.len() >= 150, "kept {} keys", kv.len());
    assert!(kv.contains_key("key-01999"));
    let mut evictions = 0;
    let mut sets = 0;
    // Everything queued (fewer than WATCH_QUEUE changes), then a pause.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), watch.recv()).await {
        if ev.is_eviction() {
            assert!(!ev.is_delete() && ev.value.is_none());
            evictions += 1;
        } else {
            sets += 1;
        }
    }
    assert_eq!(sets, 2_000);
    assert_eq!(evictions, 2_000 - kv.len(), "watchers see every eviction");
    let stats = kv.memory_stats();
    assert_eq!(stats.evicted, evictions as u64, "{stats:?}");
    assert_eq!(stats.refused, 0, "{stats:?}");
    assert_eq!(kv.memory_limits().policy, MemoryPolicy::EvictLru);
    Ok(())
}

#[tokio::test]
async fn get_refreshes_recency_contains_keys_and_scans_do_not() -> Result<(), Error> {
    let kv = cache(Some(3), None).await;
    for k in ["a", "b", "c"] {
        kv.set(k, k.to_string())?;
    }
    kv.get("a")?;
    assert!(kv.contains_key("b"));
    kv.keys();
    kv.scan_prefix("")?;
    kv.set("d", "d".into())?;
    assert_eq!(kv.keys(), ["a", "c", "d"], "b was the least recently read");
    Ok(())
}

/// The live keys and values of a node.
fn live(kv: &Kv) -> Vec<(String, String)> {
    kv.scan_prefix("").expect("scan")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_is_a_delete_everywhere_and_nothing_comes_back() -> Result<(), Error> {
    let a = member("cache-a", &[], Some((Some(20), None))).await;
    let b = member("writer-b", &[&a], None).await;
    let c = member("reader-c", &[&a, &b], None).await;
    wait_until("a cluster of three", DEADLINE, || {
        a.peers().len() == 2 && b.peers().len() == 2 && c.peers().len() == 2
    })
    .await;
    for i in 0..60 {
        b.set(format!("k{i:02}"), format!("v{i}"))?;
    }
    // The cache holds 20 keys; its 40 evictions are deletes on every node.
    let mut polls = 0;
    wait_until("every node holds the cache's 20 keys", DEADLINE, || {
        polls += 1;
        if polls % 300 == 0 {
            eprintln!(
                "a {} b {} c {}; a records {} b records {}",
                live(&a).len(),
                live(&b).len(),
                live(&c).len(),
                a.snapshot().len(),
                b.snapshot().len()
            );
        }
        let l = live(&a);
        l.len() == 20 && live(&b) == l && live(&c) == l
    })
    .await;
    let kept = live(&a);
    // Nothing is fetched back: a few dozen rounds later, the same 20 keys.
    let rounds_before = a.stats().rounds;
    wait_until("twenty more rounds", DEADLINE, || {
        a.stats().rounds >= rounds_before + 20
    })
    .await;
    assert_eq!(live(&a), kept);
    assert_eq!(live(&b), kept);
    assert_eq!(live(&c), kept);
    // Nothing a peer relies on is lost: the three replicas hold the same
    // records (the deletes included), so no write was dropped silently.
    wait_until("identical snapshots", DEADLINE, || {
        let s = a.snapshot();
        b.snapshot() == s && c.snapshot() == s
    })
    .await;
    let evicted_by_a = a
        .snapshot()
        .into_iter()
        .filter(|r| r.value.is_none() && r.version.node == "cache-a")
        .count();
    assert_eq!(
        evicted_by_a, 40,
        "each eviction is a delete of the cache's own"
    );
    // A later write still reaches every node.
    b.set("late", "write".into())?;
    wait_until("the late write everywhere", DEADLINE, || {
        [&a, &b, &c].iter().all(|n| n.contains_key("late"))
    })
    .await;
    // A merge lands before the eviction pass that follows it, so the cache
    // may hold 21 keys for a moment; then it evicts one, and that delete
    // too reaches every node.
    wait_until(
        "the cache back to 20 keys, the same everywhere",
        DEADLINE,
        || {
            let l = live(&a);
            l.len() == 20 && live(&b) == l && live(&c) == l
        },
    )
    .await;
    assert!(
        a.contains_key("late"),
        "the newest key is not the one evicted"
    );
    for n in [a, b, c] {
        n.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_under_load_in_a_cluster_collects_its_tombstones_early() -> Result<(), Error> {
    let value = "v".repeat(200);
    // Keys of 5 bytes (`k0000`), values stored as their bytes.
    let per_entry = gossipkv::entry_cost(5, Some(value.len()));
    let budget = 100 * per_entry;
    let a = member("cache-a", &[], Some((None, Some(budget)))).await;
    let b = member("peer-b", &[&a], None).await;
    wait_until("two members", DEADLINE, || {
        a.peers().len() == 1 && b.peers().len() == 1
    })
    .await;
    let mut peak = 0;
    let mut refused = 0;
    let start = std::time::Instant::now();
    for i in 0..1_000 {
        // With nothing left to evict but tombstones b has not seen yet, a
        // refuses values until b's digests let them go: retry.
        loop {
            match a.set(format!("k{i:04}"), value.clone()) {
                Ok(()) => break,
                Err(Error::OverBudget { .. }) if start.elapsed() < DEADLINE => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e),
            }
        }
        peak = peak.max(a.memory_usage());
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Never over the budget by more than one entry, whatever b lags.
    assert!(
        peak <= budget + per_entry,
        "peak {peak} for a budget of {budget} ({refused} writes refused)"
    );
    // Once b's digests cover the evictions, their tombstones go early (the
    // retention is six hours) and the cache is back within its budget.
    let mut polls = 0;
    wait_until("the cache within its budget", DEADLINE, || {
        polls += 1;
        if polls % 300 == 0 {
            eprintln!(
                "usage {} of {budget}; a live {} records {}; b live {} records {}",
                a.memory_usage(),
                live(&a).len(),
                a.snapshot().len(),
                live(&b).len(),
                b.snapshot().len()
            );
        }
        a.memory_usage() <= budget && live(&b) == live(&a)
    })
    .await;
    let held = a.snapshot().len();
    assert!(
        held < 1_000,
        "{held} records held: tombstones were not collected early"
    );
    println!(
        "peak {peak} bytes for a budget of {budget}; {refused} writes refused; \
         {held} records held at the end"
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}
