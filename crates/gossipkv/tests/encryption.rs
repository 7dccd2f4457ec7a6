//! Gossip encryption against live nodes on loopback: a keyed cluster
//! converges; nodes with another key or none change nothing; a rotation
//! under steady writes loses nothing and suspects nobody; an unkeyed
//! cluster migrates; and a hostile key holder's replays, bit flips, stale
//! and plaintext datagrams are refused before decoding. Every wait polls a
//! condition with a deadline.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossipkv::{
    generate_key, Encryption, GossipKv, Hlc, Key, Keyring, MemberEvent, MemberState, Origin,
    Record, Version, DEFAULT_CLUSTER_ID,
};
use gossipkv_proto::seal::{nonce, seal_datagram};
use gossipkv_proto::{encode, Body, Envelope, Push, Sender};

mod common;

use common::{wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);
const INTERVAL: Duration = Duration::from_millis(50);

async fn keyed(id: &str, seeds: &[&Kv], ring: Option<Keyring>) -> Kv {
    let mut b = GossipKv::<String, String>::builder()
        .node_id(id)
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .seeds(seeds.iter().map(|s| s.local_addr().unwrap().to_string()));
    if let Some(r) = ring {
        b = b.keyring(r);
    }
    b.build().await.expect("node starts")
}

fn ring(key: &Key) -> Option<Keyring> {
    Some(Keyring::new(key.clone()))
}

fn get(kv: &Kv, key: &str) -> Option<String> {
    kv.get(key).expect("value decodes")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn alive(kv: &Kv, others: usize) -> bool {
    kv.members()
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
        == others + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_cluster_converges_and_nodes_with_another_key_or_none_change_nothing() {
    let k = generate_key();
    let a = keyed("a", &[], ring(&k)).await;
    let b = keyed("b", &[&a], ring(&k)).await;
    let c = keyed("c", &[&a], ring(&k)).await;
    a.set("from-a", "1".into()).unwrap();
    c.set("from-c", "3".into()).unwrap();
    wait_until("the keyed cluster converges", DEADLINE, || {
        [&a, &b, &c]
            .iter()
            .all(|n| get(n, "from-a").is_some() && get(n, "from-c").is_some() && alive(n, 2))
    })
    .await;
    assert!(a.keyring_status().stats.sealed > 0);
    assert!(b.keyring_status().stats.opened > 0);

    // Another key, and no key: both seed to a and write.
    let other = keyed("other-key", &[&a], ring(&generate_key())).await;
    let plain = keyed("no-key", &[&a], None).await;
    other.set("forged-1", "x".into()).unwrap();
    plain.set("forged-2", "y".into()).unwrap();
    wait_until("a refuses both", DEADLINE, || {
        let s = a.keyring_status().stats;
        s.refused_unknown_key > 0 && s.refused_plaintext > 0
    })
    .await;
    // A write after the refusals still spreads, and the outsiders' did not.
    b.set("marker", "m".into()).unwrap();
    wait_until("the marker reaches c", DEADLINE, || {
        get(&c, "marker").is_some()
    })
    .await;
    for n in [&a, &b, &c] {
        assert_eq!(get(n, "forged-1"), None);
        assert_eq!(get(n, "forged-2"), None);
        assert!(
            n.members()
                .iter()
                .all(|m| m.node_id != "other-key" && m.node_id != "no-key"),
            "{} lists an outsider: {:?}",
            n.node_id(),
            n.members()
        );
    }
    // And the outsiders learned nothing.
    assert_eq!(get(&other, "from-a"), None);
    assert_eq!(get(&plain, "from-a"), None);
    let health = a.health();
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.kind == gossipkv::ProblemKind::Unopened),
        "{health}"
    );
    for n in [a, b, c, other, plain] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_steady_writes_loses_nothing_and_kills_nobody() {
    let k1 = generate_key();
    let k2 = generate_key();
    let a = keyed("a", &[], ring(&k1)).await;
    let b = keyed("b", &[&a], ring(&k1)).await;
    let c = keyed("c", &[&a], ring(&k1)).await;
    let nodes = [a.clone(), b.clone(), c.clone()];
    wait_until("the cluster forms", DEADLINE, || {
        nodes.iter().all(|n| alive(n, 2))
    })
    .await;
    // Every death any node sees during the rotation. (A brief suspicion
    // can come from a scheduling stall on a loaded machine, at a 50 ms
    // interval; that the rotation drops no datagram is checked below by
    // the refusal counters.)
    let deaths = Arc::new(parking_lot::Mutex::new(Vec::new()));
    for n in &nodes {
        let mut ev = n.member_events();
        let (seen, id) = (deaths.clone(), n.node_id().to_string());
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                if matches!(e, MemberEvent::Dead(_)) {
                    seen.lock().push(format!("{id} saw {e:?}"));
                }
            }
        });
    }

    // A writer on every node, bounded in count, all through the rotation.
    let writers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    n.set(format!("{}/{i}", n.node_id()), format!("{i}"))
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();

    for n in &nodes {
        n.install_key(k2.clone()).unwrap();
    }
    wait_until("every member is seen holding k2", DEADLINE, || {
        nodes.iter().all(|n| {
            let s = n.keyring_status();
            s.members == 2
                && s.keys
                    .iter()
                    .any(|k| k.id == k2.id() && k.members_holding == 2)
        })
    })
    .await;
    for n in &nodes {
        n.use_key(k2.id()).unwrap();
    }
    wait_until("every member seals with k2", DEADLINE, || {
        nodes.iter().all(|n| {
            let s = n.keyring_status();
            s.keys
                .iter()
                .any(|k| k.id == k2.id() && k.primary && k.members_sealing == 2)
        })
    })
    .await;
    for n in &nodes {
        n.remove_key(k1.id()).unwrap();
        assert_eq!(n.keyring_status().keys.len(), 1);
    }
    for w in writers {
        w.await.unwrap();
    }
    wait_until("every write everywhere", DEADLINE, || {
        nodes.iter().all(|n| n.len() == 900)
    })
    .await;
    assert_eq!(*deaths.lock(), Vec::<String>::new());
    for n in &nodes {
        let s = n.keyring_status().stats;
        assert_eq!(s.refused_unknown_key + s.refused_forged, 0, "{s:?}");
    }
    // The removed key opens nothing any more: a node still on k1 is out.
    let stale = keyed("still-k1", &[&a], ring(&k1)).await;
    stale.set("late", "x".into()).unwrap();
    wait_until("a refuses k1", DEADLINE, || {
        a.keyring_status().stats.refused_unknown_key > 0
    })
    .await;
    assert_eq!(get(&a, "late"), None);
    for n in nodes.into_iter().chain([stale]) {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unkeyed_cluster_migrates_to_encryption_while_it_replicates() {
    let a = keyed("a", &[], None).await;
    let b = keyed("b", &[&a], None).await;
    let nodes = [a.clone(), b.clone()];
    let k = generate_key();
    let step = |tag: &'static str| {
        let (a, b) = (a.clone(), b.clone());
        async move {
            a.set(format!("{tag}-a"), tag.to_string()).unwrap();
            b.set(format!("{tag}-b"), tag.to_string()).unwrap();
            wait_until(tag, DEADLINE, || {
                get(&a, &format!("{tag}-b")).is_some() && get(&b, &format!("{tag}-a")).is_some()
            })
            .await;
        }
    };
    step("plain").await;
    // 1: the key everywhere, nothing sealed yet.
    for n in &nodes {
        n.install_key(k.clone()).unwrap();
        assert_eq!(
            n.keyring_status().encryption,
            Some(Encryption::Permissive {
                seal_outgoing: false
            })
        );
    }
    step("installed").await;
    // 2: everyone seals, plaintext still accepted.
    for n in &nodes {
        n.set_encryption(Encryption::Permissive {
            seal_outgoing: true,
        })
        .unwrap();
    }
    step("sealing").await;
    // 3: sealed only.
    for n in &nodes {
        n.set_encryption(Encryption::Required).unwrap();
    }
    step("required").await;
    let s = a.keyring_status().stats;
    assert!(s.opened > 0 && s.plaintext_accepted > 0, "{s:?}");
    // A node without the key is now shut out.
    let outsider = keyed("outsider", &[&a], None).await;
    outsider.set("outsider", "x".into()).unwrap();
    wait_until("a refuses plaintext", DEADLINE, || {
        a.keyring_status().stats.refused_plaintext > 0
    })
    .await;
    assert_eq!(get(&a, "outsider"), None);
    // A local-only node has no keyring to change.
    let local = GossipKv::<String, String>::builder().build().await.unwrap();
    assert!(local.install_key(k.clone()).is_err());
    assert!(local.keyring_status().encryption.is_none());
    for n in [a, b, outsider, local] {
        n.shutdown().await.unwrap();
    }
}

/// A push of one record, sealed by a key holder: the positive control for
/// the refusals.
fn push(key: &str, value: &str, seq: u64) -> Bytes {
    let origin = Origin::new("mallory", 1);
    let record = Record {
        key: key.into(),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        version: Version::new(Hlc::from_u64(now_ms() << 16), &origin, seq),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    };
    encode(&Envelope::new(
        DEFAULT_CLUSTER_ID,
        Sender::new("mallory", 1, None),
        Body::Push(Push {
            records: vec![record],
            hops: 0,
        }),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_bit_flips_stale_future_and_plaintext_datagrams_change_nothing() {
    let k = generate_key();
    let ring = Keyring::new(k.clone());
    let victim = keyed("victim", &[], Some(ring.clone())).await;
    let to = victim.local_addr().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let seal = |plain: &[u8], t: u64, r: u8| {
        seal_datagram(&ring, DEFAULT_CLUSTER_ID, nonce(t, [r; 16]), plain)
    };

    // The control: a well-sealed push applies.
    let good = seal(&push("good", "1", 1), now_ms(), 1);
    sock.send_to(&good, to).unwrap();
    wait_until("the sealed push applies", DEADLINE, || {
        get(&victim, "good").is_some()
    })
    .await;
    let before = victim.keyring_status().stats;
    assert_eq!(before.opened, 1);

    // The same datagram again; every one-bit flip of another; one sealed
    // a minute ago, one a minute ahead; and the plaintext.
    sock.send_to(&good, to).unwrap();
    let fresh = seal(&push("flipped", "2", 2), now_ms(), 2);
    let mut flips = 0;
    for bit in (0..fresh.len() * 8).step_by(7) {
        let mut b = fresh.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        sock.send_to(&b, to).unwrap();
        flips += 1;
    }
    sock.send_to(&seal(&push("stale", "3", 3), now_ms() - 120_000, 3), to)
        .unwrap();
    sock.send_to(&seal(&push("ahead", "4", 4), now_ms() + 60_000, 4), to)
        .unwrap();
    sock.send_to(&seal(&push("end", "5", 5), u64::MAX, 5), to)
        .unwrap();
    sock.send_to(&push("plain", "6", 6), to).unwrap();
    let other = Keyring::new(generate_key());
    sock.send_to(
        &seal_datagram(
            &other,
            DEFAULT_CLUSTER_ID,
            nonce(now_ms(), [6; 16]),
            &push("other", "7", 7),
        ),
        to,
    )
    .unwrap();
    let foreign = seal_datagram(
        &ring,
        "another-cluster",
        nonce(now_ms(), [8; 16]),
        &push("foreign", "8", 8),
    );
    sock.send_to(&foreign, to).unwrap();

    let refused = |s: &gossipkv::SealStats| {
        s.refused_replayed
            + s.refused_forged
            + s.refused_unknown_key
            + s.refused_plaintext
            + s.refused_stale
            + s.refused_future
    };
    let want = 1 + flips + 3 + 1 + 1 + 1;
    let deadline = std::time::Instant::now() + DEADLINE;
    while refused(&victim.keyring_status().stats) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{want} refusals expected: {:?}",
            victim.keyring_status().stats
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = victim.keyring_status().stats;
    assert_eq!(s.refused_replayed, 1, "{s:?}");
    assert_eq!(s.refused_stale, 1, "{s:?}");
    assert_eq!(s.refused_future, 2, "{s:?}");
    // The plaintext, and flips of the magic byte.
    assert!(s.refused_plaintext >= 1, "{s:?}");
    assert_eq!(s.opened, 1, "nothing else opened: {s:?}");
    for key in [
        "flipped", "stale", "ahead", "end", "plain", "other", "foreign",
    ] {
        assert_eq!(get(&victim, key), None, "{key} applied");
    }
    // The victim still works: a fresh sealed push applies.
    sock.send_to(&seal(&push("after", "9", 9), now_ms(), 9), to)
        .unwrap();
    wait_until("a later push applies", DEADLINE, || {
        get(&victim, "after").is_some()
    })
    .await;
    victim.shutdown().await.unwrap();
}
