//! The handle's API as a service author meets it: type inference, errors
//! that name what failed, undecodable values, the ends of watchers and event
//! streams, health, leaving on a signal, and drops that never block.
//! Networked tests bind 127.0.0.1 port 0; every wait polls a condition with
//! a deadline.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gossipkv::{
    Bytes, Codec, CodecError, Error, GossipKv, MemberEvent, MemberState, NodeId, ProblemKind,
    StringCodec,
};

mod common;

use common::{state_of, wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(50);

async fn node(id: &str, seeds: &[&Kv]) -> Kv {
    common::node_with(id, seeds, INTERVAL).await
}

/// Polls a future once, with a waker that does nothing and no runtime.
fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
    let mut f = std::pin::pin!(f);
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

/// A `String` codec that refuses to decode values starting with "bad".
struct Picky;

impl Codec<String> for Picky {
    fn encode(&self, value: &String) -> Result<Bytes, CodecError> {
        StringCodec.encode(value)
    }

    fn decode(&self, bytes: &Bytes) -> Result<String, CodecError> {
        if bytes.starts_with(b"bad") {
            return Err(CodecError::new("picky: refuses values starting with bad"));
        }
        StringCodec.decode(bytes)
    }
}

#[tokio::test]
async fn the_builder_needs_no_turbofish() -> Result<(), Error> {
    // K is fixed to String by `builder`; V is inferred from `set`.
    let kv = GossipKv::builder().build().await?;
    kv.set("k", Bytes::from_static(b"v"))?;
    assert_eq!(kv.get("k")?, Some(Bytes::from_static(b"v")));
    let keys: Vec<String> = kv.keys();
    assert_eq!(keys, ["k"]);

    // With a codec, V comes from the codec.
    let kv = GossipKv::builder_with_codec(StringCodec).build().await?;
    kv.set("k", "text".to_string())?;

    // Another key type, chosen on the builder; the options set stay.
    let kv = GossipKv::<String, String>::builder()
        .node_id("keyed")
        .key_type::<Arc<str>>()
        .build()
        .await?;
    kv.set("a", "1".to_string())?;
    let keys: Vec<Arc<str>> = kv.keys();
    assert_eq!(&*keys[0], "a");
    assert_eq!(kv.node_id(), "keyed");
    Ok(())
}

#[tokio::test]
async fn member_node_ids_compare_with_strings() -> Result<(), Error> {
    let kv = GossipKv::<String, String>::builder()
        .node_id("me")
        .build()
        .await?;
    let m = &kv.members()[0];
    assert!(m.node_id == "me");
    assert!("me" == m.node_id);
    let owned: String = kv.node_id().to_string();
    assert!(m.node_id == owned);
    let id: &NodeId = &m.node_id;
    assert!(*id != "you");
    Ok(())
}

#[test]
fn build_outside_a_runtime_is_an_error_not_a_panic() {
    // No tokio runtime anywhere on this thread.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let networked = GossipKv::<String, String>::builder()
        .bind_addr("127.0.0.1:0")
        .build();
    match poll_once(networked) {
        Poll::Ready(Err(Error::NoRuntime)) => {}
        other => panic!("expected Ready(Err(NoRuntime)), got {other:?}"),
    }
    // Option errors still come first.
    let bad = GossipKv::<String, String>::builder()
        .bind_addr("127.0.0.1:0")
        .fanout(0)
        .build();
    assert!(matches!(
        poll_once(bad),
        Poll::Ready(Err(Error::InvalidConfig { .. }))
    ));
    // A local-only node needs no runtime at all.
    let local = GossipKv::<String, String>::builder().build();
    let Poll::Ready(Ok(kv)) = poll_once(local) else {
        panic!("a local node builds without a runtime");
    };
    kv.set("k", "v".to_string()).unwrap();
    assert_eq!(kv.get("k").unwrap().as_deref(), Some("v"));
    assert!(matches!(poll_once(kv.shutdown()), Poll::Ready(Ok(()))));
}

#[tokio::test]
async fn codec_errors_name_the_key_and_keep_their_source() {
    use std::error::Error as _;
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Flag {
        on: bool,
    }
    // A value that does not encode: JSON maps need string keys.
    let kv = GossipKv::<String, std::collections::HashMap<Vec<u8>, u8>>::builder()
        .build()
        .await
        .unwrap();
    let mut map = std::collections::HashMap::new();
    map.insert(vec![1u8], 1u8);
    match kv.set("maps/1", map) {
        Err(Error::Codec { key, source }) => {
            assert_eq!(key, "maps/1");
            assert!(source
                .source()
                .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert!(!kv.contains_key("maps/1"), "nothing written");

    // Values that do not decode: the picky codec writes "bad..." but
    // refuses to read it back.
    let kv = GossipKv::builder_with_codec(Picky).build().await.unwrap();
    kv.set("cfg/a", "good".to_string()).unwrap();
    kv.set("cfg/b", "bad value".to_string()).unwrap();
    kv.set("cfg/c", "fine".to_string()).unwrap();
    match kv.get("cfg/b") {
        Err(e @ Error::Codec { .. }) => {
            assert!(e.to_string().contains("\"cfg/b\""), "{e}");
            assert!(e.to_string().contains("picky"), "{e}");
        }
        other => panic!("expected a codec error, got {other:?}"),
    }

    // scan_prefix leaves out the bad entry and keeps the others...
    let scanned = kv.scan_prefix("cfg/").unwrap();
    assert_eq!(
        scanned,
        vec![
            ("cfg/a".to_string(), "good".to_string()),
            ("cfg/c".to_string(), "fine".to_string()),
        ]
    );
    // ...and scan_prefix_checked shows every entry, the bad one with its error.
    let checked = kv.scan_prefix_checked("cfg/");
    assert_eq!(checked.len(), 3);
    assert_eq!(checked[0].0, "cfg/a");
    assert_eq!(checked[0].1.as_deref().ok(), Some("good"));
    match &checked[1] {
        (k, Err(Error::Codec { key, source })) => {
            assert_eq!((k.as_str(), key.as_str()), ("cfg/b", "cfg/b"));
            assert!(source.message().contains("picky"));
        }
        other => panic!("expected cfg/b's codec error, got {other:?}"),
    }
    assert_eq!(checked[2].1.as_deref().ok(), Some("fine"));

    // Across nodes with different value types: serde's error is the source.
    let a = GossipKv::<String, String>::builder()
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .build()
        .await
        .unwrap();
    let b = GossipKv::<String, Flag>::builder()
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .seeds([a.local_addr().unwrap().to_string()])
        .build()
        .await
        .unwrap();
    a.set("flags/x", "not json".to_string()).unwrap();
    wait_until("b holds flags/x", DEADLINE, || b.contains_key("flags/x")).await;
    match b.get("flags/x") {
        Err(Error::Codec { key, source }) => {
            assert_eq!(key, "flags/x");
            assert!(source
                .source()
                .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert!(b.scan_prefix("flags/").unwrap().is_empty());
    assert!(b.scan_prefix_checked("flags/")[0].1.is_err());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn watchers_deliver_undecodable_values_with_their_error() {
    let kv = GossipKv::builder_with_codec(Picky).build().await.unwrap();
    let mut w = kv.watch("cfg/");
    kv.set("cfg/a", "bad".to_string()).unwrap();
    kv.set("cfg/a", "good".to_string()).unwrap();
    kv.delete("cfg/a").unwrap();

    let bad = w.recv().await.unwrap();
    assert_eq!(bad.key, "cfg/a");
    assert_eq!(bad.value, None);
    let err = bad.error.as_ref().expect("the decoding error");
    assert!(err.message().contains("picky"), "{err}");
    assert!(!bad.is_delete(), "an undecodable value is not a delete");

    let good = w.recv().await.unwrap();
    assert_eq!(
        (good.value.as_deref(), good.error.is_none()),
        (Some("good"), true)
    );
    assert!(!good.is_delete());

    let deleted = w.recv().await.unwrap();
    assert!(deleted.value.is_none() && deleted.error.is_none());
    assert!(deleted.is_delete());
}

#[tokio::test]
async fn a_watcher_delivers_what_was_queued_before_it_ends() {
    let kv = GossipKv::<String, String>::builder().build().await.unwrap();
    let mut w = kv.watch("cfg/");
    kv.set("cfg/a", "1".to_string()).unwrap();
    kv.set("other", "x".to_string()).unwrap();
    kv.set("cfg/b", "2".to_string()).unwrap();
    kv.delete("cfg/a").unwrap();
    // Nothing was read before the shutdown.
    kv.shutdown().await.unwrap();
    let mut seen = Vec::new();
    while let Some(ev) = tokio::time::timeout(DEADLINE, w.recv())
        .await
        .expect("recv returns")
    {
        seen.push((ev.key, ev.value));
    }
    assert_eq!(
        seen,
        vec![
            ("cfg/a".to_string(), Some("1".to_string())),
            ("cfg/b".to_string(), Some("2".to_string())),
            ("cfg/a".to_string(), None),
        ]
    );
    // Ended for good.
    assert!(w.recv().await.is_none());
    // Dropping the last handle ends a watcher the same way.
    let kv = GossipKv::<String, String>::builder().build().await.unwrap();
    let mut w = kv.watch("");
    kv.set("k", "v".to_string()).unwrap();
    drop(kv);
    assert_eq!(w.recv().await.map(|e| e.key).as_deref(), Some("k"));
    assert!(w.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_deliver_what_was_queued_before_they_end() {
    let a = node("drain-a", &[]).await;
    let mut events = a.member_events();
    let b = node("drain-b", &[&a]).await;
    wait_until("a lists b as alive", DEADLINE, || {
        state_of(&a, "drain-b") == Some(MemberState::Alive)
    })
    .await;
    // Nothing was read before the shutdown: b's Joined is still queued.
    a.shutdown().await.unwrap();
    let mut joined = Vec::new();
    while let Some(ev) = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("recv returns")
    {
        if let MemberEvent::Joined(m) = ev {
            joined.push(m.node_id.to_string());
        }
    }
    assert_eq!(joined, ["drain-b"]);
    assert!(events.recv().await.is_none());
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_node_ids_and_foreign_clusters_show_in_health_without_a_handler() {
    let a = node("twin", &[]).await;
    let addr = a.local_addr().unwrap().to_string();
    assert!(a.health().is_healthy(), "{}", a.health());
    // Same node id, another incarnation (started right after a, maybe in the
    // same millisecond): no error handler anywhere.
    let twin = GossipKv::<String, String>::builder()
        .node_id("twin")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .seeds([addr.clone()])
        .build()
        .await
        .unwrap();
    // A node of another cluster.
    let stranger = GossipKv::<String, String>::builder()
        .node_id("stranger")
        .cluster_id("elsewhere")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .seeds([addr])
        .build()
        .await
        .unwrap();
    let has = |kv: &Kv, kind: ProblemKind| kv.health().problems.iter().any(|p| p.kind == kind);
    wait_until(
        "a's health shows the duplicate id and the foreign cluster",
        DEADLINE,
        || has(&a, ProblemKind::DuplicateNodeId) && has(&a, ProblemKind::ForeignCluster),
    )
    .await;
    let health = a.health();
    assert!(!health.is_healthy(), "{health}");
    let text = health.to_string();
    assert!(text.starts_with("UNHEALTHY"), "{text}");
    assert!(text.contains("elsewhere"), "{text}");
    // Serious problems come first, each with a count and the latest report.
    assert!(health.problems[0].kind.is_serious());
    assert!(health.problems.iter().all(|p| p.count >= 1));
    // The twin and the stranger hear from nobody: their health says so.
    for kv in [&twin, &stranger] {
        let h = kv.health();
        assert!(
            h.expects_peers && h.live_peers == 0 && !h.is_healthy(),
            "{h}"
        );
        assert!(h.to_string().contains("no peer answers"), "{h}");
    }
    for kv in [a, twin, stranger] {
        kv.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pair_reports_healthy() {
    let a = node("fine-a", &[]).await;
    let b = node("fine-b", &[&a]).await;
    wait_until("both see a live peer", DEADLINE, || {
        a.health().live_peers == 1 && b.health().live_peers == 1
    })
    .await;
    for kv in [&a, &b] {
        let h = kv.health();
        assert!(h.is_healthy(), "{h}");
        assert!(h.problems.iter().all(|p| !p.kind.is_serious()), "{h}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_on_a_signal_leaves_the_cluster() {
    let a = node("sig-a", &[]).await;
    let b = node("sig-b", &[&a]).await;
    wait_until("a lists b as alive", DEADLINE, || {
        state_of(&a, "sig-b") == Some(MemberState::Alive)
    })
    .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let leave = tokio::spawn(b.shutdown_on(async move {
        let _ = stopped.await;
    }));
    assert!(!b.is_closed(), "nothing happens before the signal");
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, leave)
        .await
        .expect("shutdown_on returns")
        .unwrap()
        .unwrap();
    assert!(b.is_closed());
    wait_until("a sees b as left", DEADLINE, || {
        state_of(&a, "sig-b") == Some(MemberState::Left)
    })
    .await;

    // The future holds no handle: dropping the node's last handle ends it,
    // and so does a shutdown made elsewhere.
    let c = node("sig-c", &[]).await;
    let waiting = tokio::spawn(c.shutdown_on(std::future::pending::<()>()));
    drop(c);
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("shutdown_on ends when the node is dropped")
        .unwrap()
        .unwrap();
    let waiting = tokio::spawn(a.shutdown_on(std::future::pending::<()>()));
    a.shutdown().await.unwrap();
    tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("shutdown_on ends when the node is shut down")
        .unwrap()
        .unwrap();
}

#[test]
fn dropping_the_last_handle_never_blocks_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = node("drop-a", &[]).await;
        let b = node("drop-b", &[&a]).await;
        wait_until("a lists b as alive", DEADLINE, || {
            state_of(&a, "drop-b") == Some(MemberState::Alive)
        })
        .await;
        // A timer on the same (only) thread of the runtime.
        let timer = tokio::spawn(async {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            start.elapsed()
        });
        let start = Instant::now();
        drop(b);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(200), "drop took {took:?}");
        let slept = tokio::time::timeout(Duration::from_secs(5), timer)
            .await
            .expect("the timer task still completes")
            .unwrap();
        assert!(slept < Duration::from_secs(5), "timer took {slept:?}");
        // The dropped node's gossip task still said goodbye.
        wait_until("a sees the dropped node leave", DEADLINE, || {
            state_of(&a, "drop-b") == Some(MemberState::Left)
        })
        .await;
        a.shutdown().await.unwrap();
    });
}
