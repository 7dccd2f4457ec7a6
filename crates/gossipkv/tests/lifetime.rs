//! Keys with a time to live and ephemeral keys through the public API: set,
//! refresh, expire, overwrite; an owner killed, shut down, or overwritten by
//! another node; a restart in durable mode after an expiry. Every wait polls
//! a condition with a deadline.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gossipkv::{ChangeKind, Error, GossipKv, WatchEvent, MAX_TTL};

mod common;

use common::{wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(50);

async fn local() -> Kv {
    GossipKv::<String, String>::builder()
        .build()
        .await
        .expect("node starts")
}

async fn node(id: &str, seeds: &[&Kv]) -> Kv {
    common::node_with(id, seeds, INTERVAL).await
}

/// The next event of `w`, within the deadline.
async fn next(w: &mut gossipkv::Watcher<String, String>) -> WatchEvent<String, String> {
    tokio::time::timeout(DEADLINE, w.recv())
        .await
        .expect("an event within the deadline")
        .expect("the node runs")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_key_with_a_ttl_reads_until_it_expires_and_watchers_see_the_expiry() {
    let kv = local().await;
    let mut w = kv.watch("s/");
    let start = Instant::now();
    kv.set_with_ttl("s/1", "a".into(), Duration::from_millis(300))
        .unwrap();
    kv.set("s/plain", "p".into()).unwrap();
    assert_eq!(kv.get("s/1").unwrap().as_deref(), Some("a"));
    assert!(kv.contains_key("s/1"));
    let left = kv.ttl("s/1").expect("an expiry");
    assert!(left <= Duration::from_millis(300) && left > Duration::ZERO);
    assert_eq!(kv.ttl("s/plain"), None);
    assert_eq!(next(&mut w).await.value.as_deref(), Some("a"));
    assert_eq!(next(&mut w).await.value.as_deref(), Some("p"));
    // Nobody reads: the node's own sweep tells the watcher.
    let e = next(&mut w).await;
    // The expiry is the wall clock's millisecond at the write (rounded
    // down) plus the time to live: up to 1 ms before `start` + 300 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(299),
        "expired early"
    );
    assert_eq!(e.key, "s/1");
    assert_eq!(e.kind, ChangeKind::Expired);
    assert!(e.is_expiry() && e.is_gone() && !e.is_delete());
    assert_eq!(kv.get("s/1").unwrap(), None);
    assert!(!kv.contains_key("s/1"));
    assert_eq!(kv.len(), 1);
    assert_eq!(kv.keys(), vec!["s/plain".to_string()]);
    assert_eq!(kv.scan_prefix("s/").unwrap().len(), 1);
}

#[tokio::test]
async fn refreshing_extends_a_ttl_and_a_plain_write_removes_it() {
    let kv = local().await;
    kv.set_with_ttl("k", "1".into(), Duration::from_millis(200))
        .unwrap();
    kv.set_with_ttl("k", "2".into(), Duration::from_secs(3600))
        .unwrap();
    let deadline = unix_ms() + 400;
    wait_until("the first expiry has passed", DEADLINE, || {
        unix_ms() > deadline
    })
    .await;
    assert_eq!(kv.get("k").unwrap().as_deref(), Some("2"));
    assert!(kv.ttl("k").unwrap() > Duration::from_secs(3000));
    kv.set("k", "3".into()).unwrap();
    assert_eq!(kv.ttl("k"), None);
    assert_eq!(kv.len(), 1);
}

#[tokio::test]
async fn bad_ttls_are_refused_and_write_nothing() {
    let kv = local().await;
    for ttl in [
        Duration::ZERO,
        MAX_TTL + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let e = kv.set_with_ttl("k", "v".into(), ttl).unwrap_err();
        assert!(matches!(e, Error::InvalidTtl { .. }), "{e}");
        let e = kv.set_ephemeral_with_ttl("k", "v".into(), ttl).unwrap_err();
        assert!(matches!(e, Error::InvalidTtl { .. }), "{e}");
    }
    assert_eq!(kv.get("k").unwrap(), None);
    assert!(kv.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_key_expires_on_every_node() {
    let a = node("ttl-a", &[]).await;
    let b = node("ttl-b", &[&a]).await;
    let c = node("ttl-c", &[&a]).await;
    // Formed first, and a time to live long enough for the key to reach
    // every node on a loaded machine before it expires.
    wait_until("the cluster forms", DEADLINE, || {
        [&a, &b, &c].iter().all(|n| n.peers().len() == 2)
    })
    .await;
    let mut wc = c.watch("t/");
    a.set_with_ttl("t/k", "v".into(), Duration::from_secs(3))
        .unwrap();
    let e = next(&mut wc).await;
    assert_eq!(e.value.as_deref(), Some("v"));
    wait_until("b has the key", DEADLINE, || b.contains_key("t/k")).await;
    let e = next(&mut wc).await;
    assert_eq!(e.kind, ChangeKind::Expired);
    for n in [&a, &b, &c] {
        assert_eq!(n.get("t/k").unwrap(), None);
    }
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[test]
fn a_killed_owners_ephemeral_keys_vanish_and_its_plain_keys_stay() {
    // The victim runs on its own runtime, dropped without a shutdown.
    let rt = common::runtime();
    let a = rt.block_on(node("eph-a", &[]));
    let b = rt.block_on(node("eph-b", &[&a]));
    let (victim_rt, victim) = common::killable("eph-victim", &a, INTERVAL);
    victim
        .set_ephemeral("svc/victim", "127.0.0.1:9".into())
        .unwrap();
    victim.set("config/victim", "kept".into()).unwrap();
    let mut wb = rt.block_on(async { b.watch("svc/") });
    rt.block_on(async {
        wait_until("the registration spreads", DEADLINE, || {
            [&a, &b]
                .iter()
                .all(|n| n.contains_key("svc/victim") && n.contains_key("config/victim"))
        })
        .await;
    });
    victim_rt.shutdown_background();
    rt.block_on(async {
        let gone = loop {
            let e = next(&mut wb).await;
            if e.key == "svc/victim" && e.value.is_none() {
                break e;
            }
        };
        assert_eq!(gone.kind, ChangeKind::OwnerGone);
        assert!(gone.is_owner_gone());
        wait_until("a hides it too", DEADLINE, || !a.contains_key("svc/victim")).await;
        for n in [&a, &b] {
            assert_eq!(n.get("svc/victim").unwrap(), None);
            assert_eq!(n.scan_prefix("svc/").unwrap(), vec![]);
            assert_eq!(n.get("config/victim").unwrap().as_deref(), Some("kept"));
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn a_shutdown_deletes_the_owners_ephemeral_keys_everywhere() {
    let a = node("leave-a", &[]).await;
    let b = node("leave-b", &[&a]).await;
    b.set_ephemeral("svc/b", "up".into()).unwrap();
    wait_until("a sees b's registration", DEADLINE, || {
        a.contains_key("svc/b")
    })
    .await;
    let mut wa = a.watch("svc/");
    b.shutdown().await.unwrap();
    let e = next(&mut wa).await;
    assert_eq!(e.key, "svc/b");
    assert!(e.is_gone(), "{e:?}");
    assert_eq!(a.get("svc/b").unwrap(), None);
    // A replicated delete: the record is a tombstone.
    let r = a
        .snapshot()
        .into_iter()
        .find(|r| &*r.key == "svc/b")
        .unwrap();
    assert!(r.is_tombstone());
    a.shutdown().await.unwrap();
}

#[test]
fn a_key_overwritten_by_another_node_belongs_to_that_node() {
    let rt = common::runtime();
    let a = rt.block_on(node("own-a", &[]));
    let b = rt.block_on(node("own-b", &[&a]));
    let (victim_rt, first) = common::killable("own-first", &a, INTERVAL);
    first.set_ephemeral("svc/leader", "first".into()).unwrap();
    rt.block_on(async {
        wait_until("b sees the first owner's key", DEADLINE, || {
            b.get("svc/leader").unwrap().as_deref() == Some("first")
        })
        .await;
        b.set_ephemeral("svc/leader", "b".into()).unwrap();
        wait_until("a sees b's write", DEADLINE, || {
            a.get("svc/leader").unwrap().as_deref() == Some("b")
        })
        .await;
    });
    victim_rt.shutdown_background();
    rt.block_on(async {
        wait_until("the first owner is declared dead", DEADLINE, || {
            common::state_of(&a, "own-first") == Some(gossipkv::MemberState::Dead)
        })
        .await;
        // Its death takes nothing it no longer owns.
        assert_eq!(a.get("svc/leader").unwrap().as_deref(), Some("b"));
        assert_eq!(b.get("svc/leader").unwrap().as_deref(), Some("b"));
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
}

#[tokio::test]
async fn a_durable_node_restarting_after_an_expiry_does_not_bring_the_key_back() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        GossipKv::<String, String>::builder()
            .node_id("durable-ttl")
            .data_dir(dir.path())
            .build()
    };
    let kv = open().await.unwrap();
    kv.set_with_ttl("t/short", "gone".into(), Duration::from_millis(200))
        .unwrap();
    kv.set_with_ttl("t/long", "stays".into(), Duration::from_secs(3600))
        .unwrap();
    kv.set_ephemeral("svc/me", "up".into()).unwrap();
    kv.shutdown().await.unwrap();
    let expiry = unix_ms() + 300;
    wait_until(
        "the short key's expiry passes while the node is down",
        DEADLINE,
        || unix_ms() > expiry,
    )
    .await;
    let kv = open().await.unwrap();
    assert_eq!(kv.get("t/short").unwrap(), None);
    assert_eq!(kv.get("t/long").unwrap().as_deref(), Some("stays"));
    assert!(
        kv.ttl("t/long").unwrap() > Duration::from_secs(3000),
        "expiry kept"
    );
    // A clean shutdown deleted the node's ephemeral key, on disk too.
    assert_eq!(kv.get("svc/me").unwrap(), None);
    assert_eq!(kv.len(), 1);
    let short = kv.snapshot().into_iter().find(|r| &*r.key == "t/short");
    assert!(short.is_some_and(|r| r.is_tombstone()));
    kv.shutdown().await.unwrap();
}
