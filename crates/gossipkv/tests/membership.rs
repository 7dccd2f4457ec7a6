//! Membership, failure detection and watch tests over real UDP on loopback.
//! Every wait polls a condition with a deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gossipkv::{GossipKv, MemberEvent, MemberEvents, MemberState};

mod common;

use common::{state_of, wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(100);

async fn node(id: &str, seeds: &[&Kv]) -> Kv {
    common::node_with(id, seeds, INTERVAL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_chained_nodes_each_list_all_four_alive_at_their_bound_addresses() {
    let a = node("m-a", &[]).await;
    let b = node("m-b", &[&a]).await;
    let c = node("m-c", &[&b]).await;
    let d = node("m-d", &[&c]).await;
    let nodes = [&a, &b, &c, &d];
    let expected: Vec<(String, std::net::SocketAddr)> = nodes
        .iter()
        .map(|n| (n.node_id().to_string(), n.local_addr().unwrap()))
        .collect();
    wait_until("every node lists all four as alive", DEADLINE, || {
        nodes.iter().all(|n| {
            let mut seen: Vec<(String, std::net::SocketAddr)> = n
                .members()
                .into_iter()
                .filter(|m| m.state == MemberState::Alive)
                .map(|m| (m.node_id.to_string(), m.addr))
                .collect();
            seen.sort();
            seen == expected
        })
    })
    .await;
    // The local node comes first in its own list.
    assert_eq!(d.members()[0].node_id.to_string(), "m-d");
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_is_seen_as_left_not_dead() {
    let a = node("l-a", &[]).await;
    let b = node("l-b", &[&a]).await;
    let c = node("l-c", &[&a]).await;
    wait_until("cluster formed", DEADLINE, || {
        [&a, &b, &c].iter().all(|n| {
            n.members()
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count()
                == 3
        })
    })
    .await;
    let mut events = a.member_events();
    let start = Instant::now();
    c.shutdown().await.unwrap();
    // Left, not Dead: only c's announcement says so (failure detection
    // would say Dead), so no timing bound is needed to show it was sent.
    wait_until("a and b see c as left", DEADLINE, || {
        state_of(&a, "l-c") == Some(MemberState::Left)
            && state_of(&b, "l-c") == Some(MemberState::Left)
    })
    .await;
    eprintln!(
        "seen as left {:?} after the shutdown began",
        start.elapsed()
    );
    let ev = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Some(MemberEvent::Left(m)) => break m,
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("a Left event");
    assert_eq!(ev.node_id.as_str(), "l-c");
    assert_eq!(
        state_of(&c, "l-c"),
        Some(MemberState::Left),
        "the node sees itself as left"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[test]
fn a_killed_node_is_declared_dead_and_its_data_stays() {
    // The victim runs on its own runtime, which is dropped without a
    // shutdown: its task dies mid-flight and says no goodbye.
    let rt = common::runtime();
    let a = rt.block_on(node("k-a", &[]));
    let b = rt.block_on(node("k-b", &[&a]));
    let (victim_rt, victim) = common::killable("k-victim", &a, INTERVAL);
    victim.set("victim-key", "still here".to_string()).unwrap();
    rt.block_on(async {
        wait_until("the victim's data and membership spread", DEADLINE, || {
            [&a, &b].iter().all(|n| {
                n.get("victim-key").unwrap().is_some()
                    && state_of(n, "k-victim") == Some(MemberState::Alive)
            })
        })
        .await;
    });
    victim_rt.shutdown_background();
    rt.block_on(async {
        wait_until("both declare the victim dead", DEADLINE, || {
            state_of(&a, "k-victim") == Some(MemberState::Dead)
                && state_of(&b, "k-victim") == Some(MemberState::Dead)
        })
        .await;
        // Healthy nodes were never declared dead (a brief suspicion from a
        // scheduling stall on a loaded machine is no death).
        assert_ne!(state_of(&a, "k-b"), Some(MemberState::Dead));
        assert_ne!(state_of(&b, "k-a"), Some(MemberState::Dead));
        for n in [&a, &b] {
            assert_eq!(n.get("victim-key").unwrap().as_deref(), Some("still here"));
        }
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    });
}

/// Forwards a node's member events into a shared log while the node runs.
fn collect(mut events: MemberEvents) -> Arc<Mutex<Vec<MemberEvent>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            sink.lock().unwrap().push(e);
        }
    });
    log
}

/// The node ids of the events of one kind in a log.
fn ids(log: &Mutex<Vec<MemberEvent>>, kind: fn(&MemberEvent) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| kind(e))
        .map(|e| e.member().node_id.to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_nodes_are_never_declared_dead() {
    // Each node's events are collected from before the others join, while
    // the cluster runs.
    let a = node("h-a", &[]).await;
    let log_a = collect(a.member_events());
    let b = node("h-b", &[&a]).await;
    let log_b = collect(b.member_events());
    let c = node("h-c", &[&b]).await;
    let log_c = collect(c.member_events());
    let logs = [("h-a", &log_a), ("h-b", &log_b), ("h-c", &log_c)];
    let joined = |e: &MemberEvent| matches!(e, MemberEvent::Joined(_));
    let dead = |e: &MemberEvent| matches!(e, MemberEvent::Dead(_));
    // The stream really delivers: every node's Joined events of the other
    // two arrive while the cluster runs.
    wait_until(
        "every node's stream delivered the other two's Joined",
        DEADLINE,
        || {
            logs.iter().all(|(me, log)| {
                let mut others: Vec<String> = ["h-a", "h-b", "h-c"]
                    .iter()
                    .filter(|n| *n != me)
                    .map(|n| n.to_string())
                    .collect();
                others.sort();
                ids(log, joined) == others
            })
        },
    )
    .await;
    // Keep writing for 40 gossip intervals; no event may be a death.
    let end = Instant::now() + INTERVAL * 40;
    let mut i = 0;
    while Instant::now() < end {
        a.set(format!("k{}", i % 10), format!("{i}")).unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        for (me, log) in &logs {
            assert_eq!(
                ids(log, dead),
                Vec::<String>::new(),
                "{me} declared a healthy node dead"
            );
        }
    }
    for (me, log) in &logs {
        assert_eq!(
            ids(log, dead),
            Vec::<String>::new(),
            "{me} declared a healthy node dead"
        );
        let count = log.lock().unwrap().len();
        assert!(count >= 2, "{me} saw {count} events");
    }
    for n in [&a, &b, &c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_remote_sets_and_deletes_under_its_prefix_only() {
    let a = node("w-a", &[]).await;
    let b = node("w-b", &[&a]).await;
    let mut w = b.watch("cfg/");
    a.set("other/x", "ignored".to_string()).unwrap();
    a.set("cfg/color", "blue".to_string()).unwrap();
    let ev = tokio::time::timeout(DEADLINE, w.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.key, "cfg/color");
    assert_eq!(ev.value.as_deref(), Some("blue"));
    assert_eq!(ev.missed, 0);
    a.delete("cfg/color").unwrap();
    let ev = tokio::time::timeout(DEADLINE, w.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.key, "cfg/color");
    assert_eq!(ev.value, None);
    // "other/x" did arrive at b, but the watcher never saw it.
    wait_until("b has other/x", DEADLINE, || {
        b.get("other/x").unwrap().is_some()
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(
        w.recv().await.is_none(),
        "a watcher ends when its node shuts down"
    );
}

#[tokio::test]
async fn local_writes_are_seen_by_local_watchers_and_slow_watchers_are_told_what_they_missed() {
    let kv = GossipKv::<String, String>::builder().build().await.unwrap();
    let mut w = kv.watch("cfg/");
    kv.set("cfg/a", "1".to_string()).unwrap();
    kv.set("nope", "x".to_string()).unwrap();
    kv.delete("cfg/a").unwrap();
    let e1 = w.recv().await.unwrap();
    assert_eq!((e1.key.as_str(), e1.value.as_deref()), ("cfg/a", Some("1")));
    let e2 = w.recv().await.unwrap();
    assert_eq!((e2.key.as_str(), e2.value), ("cfg/a", None));

    // A watcher that does not read while many writes happen never blocks them...
    let mut slow = kv.watch("bulk/");
    let n = gossipkv::WATCH_QUEUE * 2;
    for i in 0..n {
        kv.set(format!("bulk/{i}"), "v".to_string()).unwrap();
    }
    // ...and is told how many events it missed.
    let ev = slow.recv().await.unwrap();
    assert!(ev.missed > 0, "missed {}", ev.missed);
    assert_eq!(kv.len(), n + 1, "every write was applied (plus \"nope\")");
    kv.shutdown().await.unwrap();
    // What was still queued is delivered after the shutdown, then the end:
    // every write was either delivered or counted as missed.
    let mut delivered = 1;
    while let Some(ev) = slow.recv().await {
        assert_eq!(ev.missed, 0);
        delivered += 1;
    }
    assert_eq!(ev.missed as usize + delivered, n);
    assert!(slow.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_given_as_host_names_are_resolved() {
    let a = node("dns-a", &[]).await;
    let port = a.local_addr().unwrap().port();
    let b = GossipKv::<String, String>::builder()
        .node_id("dns-b")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .seeds([format!("localhost:{port}")])
        .seed_refresh_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    a.set("via-dns", "yes".to_string()).unwrap();
    wait_until("b joins through a host-name seed", DEADLINE, || {
        b.get("via-dns").unwrap().as_deref() == Some("yes")
            && state_of(&a, "dns-b") == Some(MemberState::Alive)
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
