//! Durable mode: a node with a data dir keeps its data across restarts,
//! keeps its generation after a clean stop and takes a new one after a
//! crash, catches up by delta, and refuses a data dir that is not its own.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{wait_until, Kv};
use gossipkv::{ConfigOption, DataDirError, Durability, Error, GossipKv, MemberState, Record};
use gossipkv_durable::{Batch, DataDir, Identity};
use gossipkv_storage::{Hlc, Origin, Version};

const DEADLINE: Duration = Duration::from_secs(20);

async fn durable(dir: &Path, id: &str, mode: Durability) -> Result<Kv, Error> {
    GossipKv::<String, String>::builder()
        .node_id(id)
        .cluster_id("prod")
        .data_dir(dir)
        .durability(mode)
        .build()
        .await
}

/// The version of `key` as `kv` holds it.
fn version_of(kv: &Kv, key: &str) -> Version {
    kv.snapshot()
        .into_iter()
        .find(|r| &*r.key == key)
        .unwrap_or_else(|| panic!("{key} is held"))
        .version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_data_generation_and_sequence() {
    for mode in [
        Durability::Sync,
        Durability::Interval(Duration::from_millis(50)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let kv = durable(tmp.path(), "a", mode).await.unwrap();
        assert_eq!(kv.durability(), Some(mode));
        let generation = kv.generation();
        for i in 0..100 {
            kv.set(format!("k{i:03}"), format!("v{i}")).unwrap();
        }
        kv.set("k000", "new".to_string()).unwrap();
        kv.delete("k001").unwrap();
        let last = version_of(&kv, "k001").seq;
        assert_eq!(last, 102, "{mode:?}");
        kv.shutdown().await.unwrap();
        drop(kv);

        let kv = durable(tmp.path(), "a", mode).await.unwrap();
        assert_eq!(kv.generation(), generation, "{mode:?}: generation kept");
        assert_eq!(kv.len(), 99, "{mode:?}");
        assert_eq!(kv.get("k000").unwrap().as_deref(), Some("new"));
        assert_eq!(kv.get("k001").unwrap(), None, "{mode:?}: the delete stuck");
        assert_eq!(kv.get("k099").unwrap().as_deref(), Some("v99"));
        kv.set("after", "restart".to_string()).unwrap();
        assert_eq!(
            version_of(&kv, "after").seq,
            last + 1,
            "{mode:?}: sequence numbers go on, none reused"
        );
        assert!(version_of(&kv, "after") > version_of(&kv, "k001"));
        kv.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_crashed_run_keeps_its_data_under_a_new_generation() {
    let tmp = tempfile::tempdir().unwrap();
    // What a run of generation 5 that crashed leaves: its start recorded,
    // one committed batch, no clean stop.
    let old = Origin::new("a", 5);
    let hlc = Hlc::new(1_700_000_000_000, 0);
    let record = |key: &str, seq| Record {
        key: key.into(),
        value: Some(key.as_bytes().to_vec().into()),
        version: Version::new(hlc, &old, seq),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    };
    {
        let mut data = DataDir::open(tmp.path(), &Identity::new("prod", "a")).unwrap();
        data.start(5).unwrap();
        data.persist(&Batch {
            records: vec![record("x", 1), record("y", 2)],
            marks: vec![(old.clone(), 2, 0)],
            ..Batch::default()
        })
        .unwrap();
    }
    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    assert!(kv.generation() > 5, "a new generation: {}", kv.generation());
    assert_eq!(kv.get("x").unwrap().as_deref(), Some("x"));
    assert_eq!(kv.get("y").unwrap().as_deref(), Some("y"));
    kv.set("x", "again".to_string()).unwrap();
    let v = version_of(&kv, "x");
    assert_eq!((v.generation, v.seq), (kv.generation(), 1));
    kv.shutdown().await.unwrap();
}

/// Writers in `Sync` mode at once share commits (group commit), and each
/// write that returned is on disk: a restart finds every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_at_once_share_commits_and_every_write_is_kept() {
    const THREADS: usize = 4;
    const WRITES: usize = 50;
    let tmp = tempfile::tempdir().unwrap();
    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    let before = kv.durable_stats().unwrap().commits;
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (kv, start) = (kv.clone(), &start);
            s.spawn(move || {
                start.wait();
                for i in 0..WRITES {
                    kv.set(format!("t{t}/{i}"), format!("v{i}")).unwrap();
                }
            });
        }
    });
    let commits = kv.durable_stats().unwrap().commits - before;
    let writes = (THREADS * WRITES) as u64;
    assert!(
        commits < writes,
        "{commits} commits for {writes} writes from {THREADS} threads: none shared"
    );
    kv.shutdown().await.unwrap();

    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    for t in 0..THREADS {
        for i in 0..WRITES {
            assert_eq!(kv.get(format!("t{t}/{i}")).unwrap(), Some(format!("v{i}")));
        }
    }
    kv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_once_for_the_disk_and_keeps_every_write() {
    const KEYS: usize = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    kv.set("gone", "soon".to_string()).unwrap();
    let before = kv.durable_stats().unwrap();
    let started = std::time::Instant::now();
    let written = kv
        .batch(|b| {
            for i in 0..KEYS {
                b.set(format!("bulk/{i:04}"), format!("v{i}"))?;
            }
            b.set_with_ttl("bulk/ttl", "later".into(), Duration::from_secs(3600))?;
            b.delete("gone")?;
            Ok(KEYS + 1)
        })
        .unwrap();
    let took = started.elapsed();
    assert_eq!(written, KEYS + 1);
    let after = kv.durable_stats().unwrap();
    assert_eq!(after.pending, 0, "on disk when the batch returns");
    let commits = after.commits - before.commits;
    // One wait at the end; the background sweep (every 10 ms) may commit
    // some of the batch meanwhile. Writing one by one is 1,002 commits.
    let bound = took.as_millis() as u64 / 10 + 3;
    assert!(
        commits <= bound.min(written as u64 - 1),
        "{commits} commits for {written} writes in {took:?}"
    );

    // A batch whose closure fails: the writes before the failure stay and
    // are waited for; the closure's error comes back.
    let e = kv
        .batch(|b| {
            b.set("partial/1", "kept".into())?;
            b.set("", "no key".into())?;
            b.set("partial/2", "never".into())
        })
        .unwrap_err();
    assert!(matches!(e, Error::InvalidKey { .. }), "{e}");
    assert_eq!(kv.durable_stats().unwrap().pending, 0);
    kv.shutdown().await.unwrap();

    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    assert_eq!(kv.len(), KEYS + 2, "the bulk keys, bulk/ttl and partial/1");
    assert_eq!(kv.get("bulk/0999").unwrap().as_deref(), Some("v999"));
    assert!(kv
        .ttl("bulk/ttl")
        .is_some_and(|t| t > Duration::from_secs(3000)));
    assert_eq!(kv.get("gone").unwrap(), None);
    assert_eq!(kv.get("partial/1").unwrap().as_deref(), Some("kept"));
    assert_eq!(kv.get("partial/2").unwrap(), None);
    kv.shutdown().await.unwrap();
    // After shutdown a batch's first write fails with `Closed`; with no
    // write made, the batch does not wait for the disk.
    let e = kv.batch(|b| b.set("late", "x".into())).unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
}

#[tokio::test]
async fn unusable_data_dirs_are_refused_at_build() {
    let tmp = tempfile::tempdir().unwrap();
    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    kv.set("k", "v".to_string()).unwrap();
    match durable(tmp.path(), "a", Durability::Sync).await {
        Err(Error::DataDir {
            source: DataDirError::InUse { .. },
        }) => {}
        other => panic!("a directory in use: {other:?}"),
    }
    kv.shutdown().await.unwrap();
    drop(kv);
    match durable(tmp.path(), "b", Durability::Sync).await {
        Err(Error::DataDir {
            source: DataDirError::OtherNode { found, .. },
        }) => assert_eq!(found, "a"),
        other => panic!("another node's directory: {other:?}"),
    }
    let other_cluster = GossipKv::<String, String>::builder()
        .node_id("a")
        .cluster_id("staging")
        .data_dir(tmp.path())
        .build()
        .await;
    assert!(
        matches!(
            other_cluster,
            Err(Error::DataDir {
                source: DataDirError::OtherCluster { .. }
            })
        ),
        "{other_cluster:?}"
    );
    // Still intact after the refusals.
    let kv = durable(tmp.path(), "a", Durability::Sync).await.unwrap();
    assert_eq!(kv.get("k").unwrap().as_deref(), Some("v"));
    kv.shutdown().await.unwrap();

    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(
        garbage.path().join(gossipkv_durable::FILE_NAME),
        [7u8; 4096],
    )
    .unwrap();
    let err = durable(garbage.path(), "a", Durability::Sync)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DataDir {
                source: DataDirError::Corrupt { .. }
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");

    let no_id = GossipKv::<String, String>::builder()
        .data_dir(tmp.path())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            no_id,
            Error::InvalidConfig {
                option: ConfigOption::NodeId,
                ..
            }
        ),
        "{no_id:?}"
    );
    let zero = GossipKv::<String, String>::builder()
        .node_id("a")
        .data_dir(tmp.path())
        .durability(Durability::Interval(Duration::ZERO))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(
        zero,
        Error::InvalidConfig {
            option: ConfigOption::Durability,
            ..
        }
    ));
}

async fn networked(dir: &Path, seeds: &[String]) -> Kv {
    GossipKv::<String, String>::builder()
        .node_id("a")
        .cluster_id("prod")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds(seeds.iter().cloned())
        .data_dir(dir)
        .build()
        .await
        .expect("durable node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_by_delta_and_rejoins() {
    let tmp = tempfile::tempdir().unwrap();
    let b = GossipKv::<String, String>::builder()
        .node_id("b")
        .cluster_id("prod")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let seeds = vec![b.local_addr().unwrap().to_string()];
    let a = networked(tmp.path(), &seeds).await;
    let generation = a.generation();
    for i in 0..200 {
        a.set(format!("a{i:03}"), "1".to_string()).unwrap();
    }
    wait_until("b has a's writes", DEADLINE, || b.len() == 200).await;
    a.shutdown().await.unwrap();
    drop(a);
    wait_until("b sees a leave", DEADLINE, || {
        common::state_of(&b, "a") == Some(MemberState::Left)
    })
    .await;
    // Missed while a is away: new keys, overwrites and deletes.
    for i in 0..300 {
        b.set(format!("b{i:03}"), "2".to_string()).unwrap();
    }
    for i in 0..50 {
        b.delete(format!("a{i:03}")).unwrap();
    }

    // Its own data is on disk: the 200 keys, none of b's changes. (Once
    // built, the node gossips at once, so its `len` may already include
    // what b sends.)
    let loaded = DataDir::open(tmp.path(), &Identity::new("prod", "a"))
        .unwrap()
        .load()
        .unwrap();
    let on_disk = loaded.records.iter().filter(|r| r.value.is_some()).count();
    assert_eq!(on_disk, 200, "its own data is on disk");
    let a = networked(tmp.path(), &seeds).await;
    assert_eq!(a.generation(), generation, "the directory was loaded");
    assert!(a.len() >= 150, "{} keys", a.len());
    wait_until("a caught up", DEADLINE, || a.len() == 450).await;
    assert_eq!(
        a.get("a000").unwrap(),
        None,
        "deletes made while away stick"
    );
    assert_eq!(
        a.stats().pages_applied,
        0,
        "caught up by delta, not by re-synchronisation"
    );
    wait_until("b sees a back", DEADLINE, || {
        common::state_of(&b, "a") == Some(MemberState::Alive)
    })
    .await;
    a.set("fresh", "3".to_string()).unwrap();
    assert_eq!(version_of(&a, "fresh").seq, 201);
    wait_until("a's new write reaches b", DEADLINE, || {
        b.get("fresh").unwrap().is_some()
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_tombstones_leave_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let kv = GossipKv::<String, String>::builder()
        .node_id("a")
        .cluster_id("prod")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(20))
        .tombstone_retention(Duration::from_millis(100))
        .data_dir(tmp.path())
        .build()
        .await
        .unwrap();
    kv.set("gone", "x".to_string()).unwrap();
    kv.set("kept", "y".to_string()).unwrap();
    kv.delete("gone").unwrap();
    wait_until("the tombstone is collected", DEADLINE, || {
        kv.stats().tombstones_collected >= 1
    })
    .await;
    kv.shutdown().await.unwrap();
    drop(kv);
    let data = DataDir::open(tmp.path(), &Identity::new("prod", "a")).unwrap();
    let keys: Vec<String> = data
        .load()
        .unwrap()
        .records
        .iter()
        .map(|r| r.key.to_string())
        .collect();
    assert_eq!(keys, vec!["kept".to_string()]);
}

#[tokio::test]
async fn a_cache_with_a_data_dir_stays_in_budget_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = |max_entries| {
        GossipKv::<String, String>::builder()
            .node_id("cache")
            .cluster_id("prod")
            .data_dir(tmp.path())
            .durability(Durability::Interval(Duration::from_millis(20)))
            .max_entries(max_entries)
            .memory_policy(gossipkv::MemoryPolicy::EvictLru)
            .build()
    };
    let kv = cache(100).await.unwrap();
    for i in 0..500 {
        kv.set(format!("k{i:03}"), "v".to_string()).unwrap();
    }
    assert_eq!(kv.len(), 100);
    kv.shutdown().await.unwrap();
    drop(kv);

    // The evictions reached the disk: the same 100 keys come back.
    let kv = cache(100).await.unwrap();
    assert_eq!(kv.len(), 100);
    assert_eq!(kv.get("k499").unwrap().as_deref(), Some("v"));
    assert_eq!(kv.get("k000").unwrap(), None);
    kv.shutdown().await.unwrap();
    drop(kv);

    // A smaller budget evicts while loading, and those evictions are
    // stored too: the next start finds 40 keys, not 100.
    let kv = cache(40).await.unwrap();
    assert_eq!(kv.len(), 40);
    kv.shutdown().await.unwrap();
    drop(kv);
    let kv = cache(1_000).await.unwrap();
    assert_eq!(kv.len(), 40, "the evictions at load were persisted");
    kv.shutdown().await.unwrap();
}

/// Hostile or damaged contents of a well-formed data dir: a record stamped
/// far in the future is refused at build (it would move the clock, as a
/// forged datagram may not), and a local watermark at the end of the
/// sequence space makes the node take a new generation instead of
/// running out of sequence numbers.
#[tokio::test]
async fn a_data_dir_stamped_far_ahead_or_at_the_last_sequence_number_is_handled() {
    let future = tempfile::tempdir().unwrap();
    {
        let mut data = DataDir::open(future.path(), &Identity::new("prod", "a")).unwrap();
        data.start(5).unwrap();
        let origin = Origin::new("b", 1);
        data.persist(&Batch {
            records: vec![Record {
                key: "k".into(),
                value: Some(b"v".to_vec().into()),
                // The year 2200.
                version: Version::new(Hlc::new(7_258_118_400_000, 0), &origin, 1),
                lifetime: gossipkv_storage::Lifetime::FOREVER,
            }],
            marks: vec![(origin, 1, 0)],
            ..Batch::default()
        })
        .unwrap();
    }
    let err = durable(future.path(), "a", Durability::Sync)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DataDir {
                source: DataDirError::Corrupt { message, .. }
            } if message.contains("max_clock_drift")
        ),
        "{err:?}"
    );

    let exhausted = tempfile::tempdir().unwrap();
    {
        let mut data = DataDir::open(exhausted.path(), &Identity::new("prod", "a")).unwrap();
        data.start(5).unwrap();
        data.persist(&Batch {
            marks: vec![(Origin::new("a", 5), u64::MAX, 0)],
            ..Batch::default()
        })
        .unwrap();
        data.stop_clean(0, 0).unwrap();
    }
    let kv = durable(exhausted.path(), "a", Durability::Sync)
        .await
        .unwrap();
    assert_ne!(
        kv.generation(),
        5,
        "no sequence number left in generation 5"
    );
    kv.set("k", "v".to_string()).unwrap();
    assert_eq!(version_of(&kv, "k").seq, 1);
    kv.shutdown().await.unwrap();
}

/// A networked durable node alone, with collection passes every second.
async fn collecting(dir: &Path) -> Kv {
    GossipKv::<String, String>::builder()
        .node_id("a")
        .cluster_id("prod")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .tombstone_retention(Duration::from_secs(5))
        .data_dir(dir)
        .build()
        .await
        .expect("durable node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runs_generation_is_adopted_then_retired_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    // What a run of generation 5 that crashed leaves.
    let old = Origin::new("a", 5);
    let hlc = Hlc::new(1_700_000_000_000, 0);
    {
        let mut data = DataDir::open(tmp.path(), &Identity::new("prod", "a")).unwrap();
        data.start(5).unwrap();
        let record = |key: &str, seq| Record {
            key: key.into(),
            value: Some(key.as_bytes().to_vec().into()),
            version: Version::new(hlc, &old, seq),
            lifetime: gossipkv_storage::Lifetime::FOREVER,
        };
        data.persist(&Batch {
            records: vec![record("x", 1), record("y", 2)],
            marks: vec![(old.clone(), 2, 0)],
            ..Batch::default()
        })
        .unwrap();
    }
    let kv = collecting(tmp.path()).await;
    let generation = kv.generation();
    assert!(generation > 5);
    wait_until("generation 5 is adopted and retired", DEADLINE, || {
        let s = kv.stats();
        s.records_adopted == 2 && s.origins_retired == 1
    })
    .await;
    for key in ["x", "y"] {
        assert_eq!(kv.get(key).unwrap().as_deref(), Some(key));
        let v = version_of(&kv, key);
        assert_eq!(
            v.generation, generation,
            "{key} is the running generation's"
        );
        assert_eq!(v.hlc, hlc, "{key} keeps its timestamp");
    }
    kv.shutdown().await.unwrap();
    drop(kv);
    // On disk: the records as adopted, generation 5 marked retired.
    let loaded = DataDir::open(tmp.path(), &Identity::new("prod", "a"))
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(loaded.retired, vec![old.clone()]);
    assert!(loaded
        .records
        .iter()
        .all(|r| r.version.generation == generation));
    // A clean restart keeps it retired: nothing to adopt or retire again.
    let kv = collecting(tmp.path()).await;
    assert_eq!(kv.generation(), generation);
    assert_eq!(kv.get("x").unwrap().as_deref(), Some("x"));
    kv.set("z", "z".to_string()).unwrap();
    assert_eq!(
        version_of(&kv, "z").seq,
        3,
        "sequence numbers go on after the adopted"
    );
    assert_eq!(kv.stats().records_adopted, 0);
    kv.shutdown().await.unwrap();
}
