//! End-to-end tests over real UDP sockets on loopback (port 0 everywhere).
//! Every wait polls a condition with a deadline; nothing sleeps and hopes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gossipkv::{Error, GossipKv, NetworkError};

mod common;

use common::{wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);

async fn node(id: &str, seeds: &[&Kv]) -> Kv {
    common::node_with(id, seeds, Duration::from_millis(50)).await
}

fn get(kv: &Kv, key: &str) -> Option<String> {
    kv.get(key).expect("value decodes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_works() -> Result<(), Error> {
    let a = GossipKv::<String, String>::builder()
        .node_id("node-a")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(100))
        .build()
        .await?;
    let b = GossipKv::<String, String>::builder()
        .node_id("node-b")
        .cluster_id("default")
        .bind_addr("127.0.0.1:0")
        .seeds([a.local_addr().unwrap().to_string()])
        .build()
        .await?;
    a.set("version", "v1.0.1".to_string())?;
    wait_until("b sees version", DEADLINE, || {
        get(&b, "version").as_deref() == Some("v1.0.1")
    })
    .await;
    b.delete("version")?;
    wait_until("a sees the delete", DEADLINE, || {
        get(&a, "version").is_none()
    })
    .await;
    let (n, empty, keys): (usize, bool, Vec<String>) = (a.len(), a.is_empty(), a.keys());
    assert_eq!((n, empty, keys), (0, true, Vec::<String>::new()));
    let local = GossipKv::<String, String>::builder().build().await?;
    assert!(local.local_addr().is_none());
    local.set("k", "v".to_string())?;
    assert_eq!(get(&local, "k").as_deref(), Some("v"));
    assert!(matches!(
        a.set("x", "y".repeat(64 << 20)),
        Err(Error::ValueTooLarge { .. })
    ));
    a.shutdown().await?;
    a.shutdown().await?;
    assert!(matches!(
        a.set("k", "v".to_string()),
        Err(Error::Closed { .. })
    ));
    assert!(matches!(a.delete("k"), Err(Error::Closed { .. })));
    b.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chained_by_asymmetric_seeds_converge_both_ways() {
    let a = node("chain-a", &[]).await;
    let b = node("chain-b", &[&a]).await;
    let c = node("chain-c", &[&b]).await;
    a.set("from-a", "1".to_string()).unwrap();
    c.set("from-c", "3".to_string()).unwrap();
    wait_until("every node holds both keys", DEADLINE, || {
        [&a, &b, &c].iter().all(|n| {
            get(n, "from-a").as_deref() == Some("1") && get(n, "from-c").as_deref() == Some("3")
        })
    })
    .await;
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_eager_push_writes_and_deletes_spread_by_anti_entropy() {
    // Nodes that do not push write through `Store::set`, which builds no
    // record: the periodic exchanges alone must carry everything.
    let quiet = |id: &'static str, seeds: Vec<String>| {
        GossipKv::<String, String>::builder()
            .node_id(id)
            .bind_addr("127.0.0.1:0")
            .gossip_interval(Duration::from_millis(50))
            .eager_push(false)
            .seeds(seeds)
            .build()
    };
    let a = quiet("nopush-a", vec![]).await.unwrap();
    let b = quiet("nopush-b", vec![a.local_addr().unwrap().to_string()])
        .await
        .unwrap();
    for i in 0..50 {
        a.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    wait_until("b holds a's writes", DEADLINE, || b.len() == 50).await;
    // b has seen k7 now, so its delete is newer than a's write.
    b.delete("k7").unwrap();
    b.set("from-b", "b".to_string()).unwrap();
    wait_until("both nodes hold the same keys", DEADLINE, || {
        [&a, &b].iter().all(|n| {
            get(n, "k49").as_deref() == Some("v49")
                && get(n, "from-b").as_deref() == Some("b")
                && n.len() == 50
        }) && get(&a, "k7").is_none()
    })
    .await;
    assert_eq!(a.stats().pushes_sent + b.stats().pushes_sent, 0);
    for n in [a, b] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_receive_2000_keys_then_a_delete() {
    let first = node("bulk-0", &[]).await;
    let mut nodes = vec![first.clone()];
    for i in 1..10 {
        let seed = nodes[i - 1].clone();
        nodes.push(node(&format!("bulk-{i}"), &[&seed]).await);
    }
    for k in 0..2000 {
        first
            .set(format!("key-{k:04}"), format!("value-{k}"))
            .unwrap();
    }
    wait_until(
        "all 10 nodes hold 2,000 keys",
        Duration::from_secs(90),
        || nodes.iter().all(|n| n.len() == 2000),
    )
    .await;
    for n in &nodes {
        assert_eq!(get(n, "key-1234").as_deref(), Some("value-1234"));
    }
    first.delete("key-0042").unwrap();
    wait_until("the delete reaches all nodes", DEADLINE, || {
        nodes
            .iter()
            .all(|n| n.len() == 1999 && get(n, "key-0042").is_none())
    })
    .await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_agree_on_one_winner_and_a_later_write_wins() {
    let a = node("race-a", &[]).await;
    let b = node("race-b", &[&a]).await;
    let c = node("race-c", &[&a]).await;
    let nodes = [&a, &b, &c];
    for round in 0..20 {
        for (i, n) in nodes.iter().enumerate() {
            n.set(format!("k{}", round % 5), format!("{}-{round}", i))
                .unwrap();
        }
    }
    wait_until("all nodes agree on every key", DEADLINE, || {
        (0..5).all(|k| {
            let key = format!("k{k}");
            let va = get(&a, &key);
            va.is_some() && va == get(&b, &key) && va == get(&c, &key)
        })
    })
    .await;
    // Full records (versions included) are identical too.
    wait_until("identical records", DEADLINE, || {
        let r = a.snapshot();
        r == b.snapshot() && r == c.snapshot()
    })
    .await;
    // A write made after seeing the winner wins everywhere.
    b.set("k3", "later".to_string()).unwrap();
    wait_until("the later write wins everywhere", DEADLINE, || {
        nodes
            .iter()
            .all(|n| get(n, "k3").as_deref() == Some("later"))
    })
    .await;
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_the_same_id_is_heard_again() {
    let a = node("restart-a", &[]).await;
    let b = node("restart-b", &[&a]).await;
    b.set("before", "1".to_string()).unwrap();
    a.set("old", "x".to_string()).unwrap();
    wait_until("a has b's write", DEADLINE, || get(&a, "before").is_some()).await;
    b.shutdown().await.unwrap();

    // Same node id, fresh state, new port.
    let b2 = node("restart-b", &[&a]).await;
    wait_until("restarted b receives the old keys", DEADLINE, || {
        get(&b2, "old").as_deref() == Some("x") && get(&b2, "before").as_deref() == Some("1")
    })
    .await;
    // Its new writes are not mistaken for the old incarnation's.
    b2.set("after", "2".to_string()).unwrap();
    b2.set("before", "overwritten".to_string()).unwrap();
    wait_until("a hears the restarted node", DEADLINE, || {
        get(&a, "after").as_deref() == Some("2")
            && get(&a, "before").as_deref() == Some("overwritten")
    })
    .await;
    a.shutdown().await.unwrap();
    b2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_foreign_clusters_change_nothing() {
    let reports = Arc::new(AtomicUsize::new(0));
    let foreign_reports = Arc::new(AtomicUsize::new(0));
    let (r, f) = (reports.clone(), foreign_reports.clone());
    let a = GossipKv::<String, String>::builder()
        .node_id("victim")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .error_handler(move |e| {
            r.fetch_add(1, Ordering::Relaxed);
            if matches!(e, NetworkError::ForeignCluster { .. }) {
                f.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .await
        .unwrap();
    let addr = a.local_addr().unwrap();
    a.set("keep", "me".to_string()).unwrap();
    let before = a.snapshot();

    // A node of another cluster that seeds itself with `a` and writes keys.
    let stranger = GossipKv::<String, String>::builder()
        .node_id("stranger")
        .cluster_id("other")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds([addr.to_string()])
        .build()
        .await
        .unwrap();
    stranger.set("intruder", "x".to_string()).unwrap();

    // Thousands of random and truncated datagrams.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng_state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    // A real datagram to truncate: capture one from a helper node of the same cluster.
    let probe = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let helper = GossipKv::<String, String>::builder()
        .node_id("helper")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds([probe.local_addr().unwrap().to_string()])
        .build()
        .await
        .unwrap();
    helper.set("helper-key", "h".to_string()).unwrap();
    let mut real = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(DEADLINE, probe.recv_from(&mut real))
        .await
        .expect("helper sends a syn")
        .unwrap();
    real.truncate(n);
    helper.shutdown().await.unwrap();

    let sent = 3000;
    for i in 0..sent {
        let dgram: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 1500) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            // Truncated (and sometimes bit-flipped) real datagram.
            let cut = (next() as usize) % real.len();
            let mut d = real[..cut].to_vec();
            if !d.is_empty() && i % 3 == 0 {
                let j = (next() as usize) % d.len();
                d[j] ^= 0x5a;
            }
            d
        };
        sock.send_to(&dgram, addr).await.unwrap();
        if i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_until("garbage is counted", DEADLINE, || {
        let s = a.stats();
        s.decode_errors >= 1000 && s.foreign_cluster >= 1
    })
    .await;
    wait_until("errors reported through the handler", DEADLINE, || {
        reports.load(Ordering::Relaxed) >= 1000 && foreign_reports.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(get(&a, "intruder").is_none(), "foreign cluster data leaked");
    assert!(
        !a.peers().iter().any(|(id, _)| id == "stranger"),
        "foreign node became a peer"
    );
    // Bit-flipped datagrams may decode into valid-but-different messages from
    // "helper"; nothing of ours may be lost or changed.
    let after = a.snapshot();
    for r in &before {
        assert!(after.contains(r), "record {r:?} changed");
    }
    assert_eq!(get(&a, "keep").as_deref(), Some("me"));

    // And the node still works.
    let b = node("after-garbage", &[&a]).await;
    wait_until("b syncs with a", DEADLINE, || {
        get(&b, "keep").as_deref() == Some("me")
    })
    .await;
    for n in [a, b, stranger] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn bad_configuration_is_rejected_naming_the_option() {
    use gossipkv::ConfigOption as O;
    async fn err(b: gossipkv::Builder<String, String>) -> (O, String) {
        match b.build().await {
            Err(Error::InvalidConfig { option, message }) => (option, message),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }
    let b = || GossipKv::<String, String>::builder();
    let cases: Vec<(gossipkv::Builder<String, String>, O, &str)> = vec![
        (b().seeds(["127.0.0.1:1"]), O::Seeds, "bind address"),
        (
            b().bind_addr("not an address"),
            O::BindAddr,
            "not an ip:port",
        ),
        (
            b().bind_addr("127.0.0.1:0").advertise_addr("nope"),
            O::AdvertiseAddr,
            "not an ip:port",
        ),
        (
            b().advertise_addr("127.0.0.1:1"),
            O::AdvertiseAddr,
            "bind address",
        ),
        (
            b().bind_addr("127.0.0.1:0").seeds(["no-port"]),
            O::Seeds,
            "seed",
        ),
        (
            b().gossip_interval(Duration::ZERO),
            O::GossipInterval,
            "interval",
        ),
        (b().node_id(""), O::NodeId, "node id"),
        (b().node_id("n".repeat(129)), O::NodeId, "node id"),
        (b().cluster_id(""), O::ClusterId, "cluster id"),
        (b().packet_size(100), O::PacketSize, "packet size"),
        (b().packet_size(70_000), O::PacketSize, "packet size"),
        (b().fanout(0), O::Fanout, "fanout"),
        (b().max_value_size(0), O::MaxValueSize, "max value size"),
        (
            b().max_value_size(65 << 20),
            O::MaxValueSize,
            "max value size",
        ),
        (
            b().tombstone_retention(Duration::ZERO),
            O::TombstoneRetention,
            "retention",
        ),
        (
            b().suspect_timeout(Duration::ZERO),
            O::SuspectTimeout,
            "suspect timeout",
        ),
        (
            b().seed_refresh_interval(Duration::ZERO),
            O::SeedRefreshInterval,
            "refresh",
        ),
        (
            b().max_clock_drift(Duration::from_millis(10)),
            O::MaxClockDrift,
            "drift",
        ),
        (b().discovery(true), O::Discovery, "bind address"),
    ];
    for (builder, option, words) in cases {
        let (got, message) = err(builder).await;
        assert_eq!(got, option, "{message}");
        assert!(message.contains(words), "{option}: {message:?}");
    }
    // The error's text names the builder method.
    let e = b().fanout(0).build().await.unwrap_err();
    assert!(e.to_string().contains("fanout"), "{e}");
    let e = b().bind_addr("x").build().await.unwrap_err();
    assert!(e.to_string().contains("bind_addr"), "{e}");
}

#[tokio::test]
async fn local_node_errors_and_values() {
    let kv = GossipKv::<String, String>::builder().build().await.unwrap();
    assert!(matches!(
        kv.set("", "v".to_string()),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        kv.set("k".repeat(4001), "v".to_string()),
        Err(Error::InvalidKey { .. })
    ));
    // Values up to the maximum (1 MiB by default) are kept.
    kv.set("big", "y".repeat(1 << 20)).unwrap();
    assert_eq!(kv.get("big").unwrap().map(|v| v.len()), Some(1 << 20));
    kv.set("cfg/a", "1".to_string()).unwrap();
    kv.set("cfg/b", "2".to_string()).unwrap();
    let scanned = kv.scan_prefix("cfg/").unwrap();
    assert_eq!(
        scanned,
        vec![
            ("cfg/a".to_string(), "1".to_string()),
            ("cfg/b".to_string(), "2".to_string())
        ]
    );
    assert!(kv.contains_key("cfg/a"));
    kv.delete("cfg/a").unwrap();
    assert!(!kv.contains_key("cfg/a"));
    assert_eq!(kv.len(), 2);
    kv.shutdown().await.unwrap();
    assert!(matches!(
        kv.set("k", "v".to_string()),
        Err(Error::Closed { .. })
    ));
    // Reads keep serving local data after shutdown.
    assert_eq!(kv.get("cfg/b").unwrap().as_deref(), Some("2"));
}

/// A 1 MiB value travels as fragments, apart from the writer's other
/// writes: small writes made after it replicate too, with eager push and
/// with anti-entropy alone. Values above the maximum are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mib_value_and_small_writes_after_it_all_replicate() {
    for push in [true, false] {
        let build = |id: &str, seeds: Vec<String>| {
            GossipKv::<String, String>::builder()
                .node_id(id)
                .bind_addr("127.0.0.1:0")
                .gossip_interval(Duration::from_millis(50))
                .eager_push(push)
                .seeds(seeds)
                .build()
        };
        let a = build("big-a", vec![]).await.unwrap();
        let seed = vec![a.local_addr().unwrap().to_string()];
        let b = build("big-b", seed.clone()).await.unwrap();
        let c = build("big-c", seed).await.unwrap();
        let nodes = [&a, &b, &c];
        wait_until("the three nodes know each other", DEADLINE, || {
            nodes.iter().all(|n| n.peers().len() == 2)
        })
        .await;
        let big: String = (0..(1usize << 20))
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        a.set("big", big.clone()).unwrap();
        for i in 0..20 {
            a.set(format!("small/{i}"), i.to_string()).unwrap();
        }
        wait_until(
            &format!("every node holds the big value and the small writes (push {push})"),
            DEADLINE,
            || {
                nodes.iter().all(|n| {
                    get(n, "big").as_deref() == Some(big.as_str())
                        && (0..20).all(|i| get(n, &format!("small/{i}")) == Some(i.to_string()))
                })
            },
        )
        .await;
        let sent: u64 = a.stats().large_records_sent;
        assert!(sent >= 1, "the big value went apart from the deltas");
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    }
}

#[tokio::test]
async fn values_above_the_maximum_are_refused_and_not_stored() {
    let kv = GossipKv::<String, String>::builder()
        .max_value_size(1000)
        .build()
        .await
        .unwrap();
    kv.set("fits", "v".repeat(1000)).unwrap();
    match kv.set("too-big", "v".repeat(1001)) {
        Err(Error::ValueTooLarge { size, max }) => assert_eq!((size, max), (1001, 1000)),
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert!(
        !kv.contains_key("too-big"),
        "a rejected write must not be stored"
    );
    // The default maximum is 1 MiB.
    let kv = GossipKv::<String, String>::builder().build().await.unwrap();
    kv.set("max", "v".repeat(1 << 20)).unwrap();
    assert!(matches!(
        kv.set("over", "v".repeat((1 << 20) + 1)),
        Err(Error::ValueTooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serde_values_and_byte_values_replicate() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug, Clone)]
    struct Flag {
        enabled: bool,
        rollout: u8,
    }
    let a = GossipKv::<String, Flag>::builder()
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let b = GossipKv::<String, Flag>::builder()
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds([a.local_addr().unwrap().to_string()])
        .build()
        .await
        .unwrap();
    let flag = Flag {
        enabled: true,
        rollout: 25,
    };
    a.set("flags/new-ui", flag.clone()).unwrap();
    wait_until("b decodes the flag", DEADLINE, || {
        b.get("flags/new-ui").unwrap() == Some(flag.clone())
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_travel_are_rejected_even_for_deletes() {
    let kv = node("long-keys", &[]).await;
    let long = "k".repeat(1000);
    assert!(matches!(
        kv.set(&long, String::new()),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(kv.delete(&long), Err(Error::InvalidKey { .. })));
    assert!(!kv.contains_key(&long));
    kv.set("k".repeat(200), "fits".to_string()).unwrap();
    kv.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_is_synced_once_it_holds_what_its_seed_held() {
    const KEYS: usize = 200;
    let a = node("sync-a", &[]).await;
    assert!(a.is_synced(), "no seeds: nobody to catch up from");
    assert!(a.stats().synced);
    for i in 0..KEYS {
        a.set(format!("k{i:03}"), format!("{i}")).unwrap();
    }
    // Without streams (they would bring 200 keys at once): anti-entropy
    // moves about one packet of records per exchange, 200 keys take many
    // rounds, so the joiner cannot be synced yet.
    let b = GossipKv::<String, String>::builder()
        .node_id("sync-b")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds([a.local_addr().unwrap().to_string()])
        .streams(false)
        .build()
        .await
        .unwrap();
    assert!(!b.is_synced(), "synced before any exchange");
    tokio::time::timeout(DEADLINE, b.synced())
        .await
        .expect("the joiner catches up within the deadline")
        .expect("the node is running");
    assert!(b.is_synced() && b.stats().synced);
    // Synced means it holds what the seed vouched for: every key.
    for i in 0..KEYS {
        assert_eq!(get(&b, &format!("k{i:03}")), Some(i.to_string()));
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_sync_ends_with_closed_when_the_node_shuts_down_first() {
    // A seed that never answers: a socket nobody reads.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = GossipKv::<String, String>::builder()
        .node_id("sync-lonely")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(50))
        .seeds([silent.local_addr().unwrap().to_string()])
        .build()
        .await
        .unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.synced().await })
    };
    assert!(!b.is_synced());
    b.shutdown().await.unwrap();
    let result = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the waiter ends")
        .unwrap();
    assert!(matches!(result, Err(Error::Closed { .. })), "{result:?}");
    let local = GossipKv::<String, String>::builder().build().await.unwrap();
    assert!(
        local.is_synced(),
        "a local-only node has nobody to wait for"
    );
    local.synced().await.unwrap();
}
