//! A hostile peer against live nodes on loopback: well-formed, forged
//! datagrams sent straight to their sockets. Afterwards later writes still
//! win and still spread, no sequence number is skipped, and no clock was
//! pulled forward. Every wait polls a condition with a deadline.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossipkv::{Hlc, Origin, Record, Version, DEFAULT_CLUSTER_ID};
use gossipkv_proto::{encode, Ack, Body, Envelope, Push, Reply, Sender, SynAck};
use gossipkv_storage::{Delta, Digest, DigestEntry, OriginChunk, Page};

mod common;

use common::{wait_until, Kv};

const DEADLINE: Duration = Duration::from_secs(30);

/// 2100-01-01T00:00:00Z: a peer whose clock was set a lifetime ahead.
const YEAR_2100_MS: u64 = 4_102_444_800_000;

/// The key of the honest write sent after the forgeries.
const MARKER: &str = "marker";

async fn node(id: &str, seeds: &[&Kv]) -> Kv {
    common::node_with(id, seeds, Duration::from_millis(50)).await
}

fn get(kv: &Kv, key: &str) -> Option<String> {
    kv.get(key).expect("value decodes")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The version `kv` holds for `key`.
fn version_of(kv: &Kv, key: &str) -> Version {
    kv.snapshot()
        .into_iter()
        .find(|r| &*r.key == key)
        .map(|r| r.version)
        .unwrap_or_else(|| panic!("{} holds {key}", kv.node_id()))
}

fn record(key: &str, value: &str, hlc: Hlc, origin: &Origin, seq: u64) -> Record {
    Record {
        key: key.into(),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        version: Version::new(hlc, origin, seq),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    }
}

/// One forged datagram per attack, each well-formed and of the cluster.
fn forgeries(attacker: SocketAddr, victim: &Origin) -> Vec<(&'static str, Bytes)> {
    let mallory = Origin::new("mallory", 1);
    let broken = Origin::new("broken-clock", 1);
    let end_of_time = Hlc::from_u64(u64::MAX);
    let page = Page {
        start: String::new(),
        end: None,
        records: vec![],
        // The victim's own origin, named twice, far beyond its writes.
        watermarks: Digest {
            entries: vec![
                DigestEntry {
                    origin: victim.clone(),
                    watermark: 1,
                },
                DigestEntry {
                    origin: victim.clone(),
                    watermark: u64::MAX,
                },
            ],
            ..Digest::default()
        },
    };
    let mut bodies = vec![
        (
            "a record stamped at the end of time",
            Body::Push(Push {
                records: vec![record("k", "end of time", end_of_time, &mallory, 1)],
                hops: 0,
            }),
        ),
        (
            "a record from a clock set to the year 2100",
            Body::Push(Push {
                records: vec![record(
                    "k",
                    "from 2100",
                    Hlc::new(YEAR_2100_MS, 0),
                    &broken,
                    1,
                )],
                hops: 0,
            }),
        ),
        (
            "a chunk claiming the victim's origin to the end of sequence space",
            Body::Ack(Ack {
                delta: Delta {
                    chunks: vec![OriginChunk {
                        origin: victim.clone(),
                        from: 0,
                        to: u64::MAX,
                        records: vec![record(
                            "k",
                            "forged",
                            Hlc::new(now_ms(), 0),
                            victim,
                            u64::MAX,
                        )],
                        ghosts: vec![],
                    }],
                    loose: vec![],
                },
            }),
        ),
        (
            "a page naming the victim's origin twice",
            Body::SynAck(SynAck {
                digest: Digest::default(),
                reply: Reply::Page(page),
            }),
        ),
    ];
    // Last, an honest write: once it is applied, so is everything before it
    // (one socket to another on loopback, handled in order).
    bodies.push((
        "an honest write after the forgeries",
        Body::Push(Push {
            records: vec![record(MARKER, "1", Hlc::new(now_ms(), 0), &mallory, 1)],
            hops: 0,
        }),
    ));
    bodies
        .into_iter()
        .map(|(what, body)| {
            let sender = Sender::new("mallory", 1, Some(attacker));
            (
                what,
                encode(&Envelope::new(DEFAULT_CLUSTER_ID, sender, body)),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_datagrams_do_not_stop_later_writes_from_winning_and_spreading() {
    let a = node("victim-a", &[]).await;
    let b = node("peer-b", &[&a]).await;
    a.set("k", "v1".to_string()).unwrap();
    wait_until("b holds a's first write", DEADLINE, || {
        get(&b, "k").as_deref() == Some("v1")
    })
    .await;
    let first = version_of(&a, "k");
    let victim = first.origin();

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let attacker_addr = attacker.local_addr().unwrap();
    let target = a.local_addr().unwrap();
    for (what, datagram) in forgeries(attacker_addr, &victim) {
        let sent = attacker.send_to(&datagram, target).unwrap();
        assert_eq!(sent, datagram.len(), "{what}: sent whole");
    }
    wait_until("the victim handled every datagram", DEADLINE, || {
        get(&a, MARKER).is_some()
    })
    .await;
    assert_eq!(
        get(&a, "k").as_deref(),
        Some("v1"),
        "nothing forged applied"
    );

    // A later write on the victim wins everywhere, with the next sequence
    // number and a timestamp of now, not of the end of time.
    a.set("k", "v2".to_string()).unwrap();
    wait_until("b holds the victim's later write", DEADLINE, || {
        get(&b, "k").as_deref() == Some("v2")
    })
    .await;
    let second = version_of(&b, "k");
    assert_eq!(second.origin(), victim);
    assert_eq!(second.seq, first.seq + 1, "no sequence number skipped");
    let drift = second.hlc.physical_ms().abs_diff(now_ms());
    assert!(drift < 60_000, "stamped {drift} ms from now");

    // More writes on the victim spread; the peer's writes win back.
    for i in 0..20 {
        a.set(format!("n{i}"), format!("{i}")).unwrap();
    }
    wait_until("b holds the victim's next 20 writes", DEADLINE, || {
        (0..20).all(|i| get(&b, &format!("n{i}")) == Some(i.to_string()))
    })
    .await;
    assert_eq!(version_of(&a, "n19").seq, first.seq + 21);
    b.set("k", "v3".to_string()).unwrap();
    wait_until("the victim takes the peer's later write", DEADLINE, || {
        get(&a, "k").as_deref() == Some("v3")
    })
    .await;
    // Each forgery was seen and refused, or held back, by its guard.
    let s = a.stats();
    assert_eq!(s.records_deferred, 2, "end of time and 2100: {s:?}");
    assert_eq!(s.own_origin_refused, 2, "the chunk and the page: {s:?}");
    assert_eq!(s.pages_refused, 1, "{s:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A hostile peer that never sends its validation token back (as a spoofer
/// cannot: the token goes to the address it forges) draws, at the address
/// it sends from, at most three times the bytes it sent, however much data
/// the node holds, and becomes no member (the node's own rounds and probes
/// would otherwise go to the address it names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_sends_its_token_back_draws_at_most_three_times_its_bytes() {
    let a = node("loaded", &[]).await;
    for i in 0..300 {
        a.set(format!("key/{i:03}"), "v".repeat(100)).unwrap();
    }
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
    let claimed = elsewhere.local_addr().unwrap();
    let target = a.local_addr().unwrap();
    let mut sent = 0;
    for i in 0..40 {
        // A new node each time, showing a complete, empty digest: each one
        // asks for everything.
        let syn = Envelope::new(
            DEFAULT_CLUSTER_ID,
            Sender::new(format!("joiner-{i}"), 1, Some(claimed)),
            Body::Syn(gossipkv_proto::Syn {
                digest: Digest {
                    complete: true,
                    ..Digest::default()
                },
                resync_from: None,
                digest_hash: None,
            }),
        );
        let bytes = encode(&syn);
        sent += attacker.send_to(&bytes, target).unwrap();
    }
    wait_until("the node handled every Syn", DEADLINE, || {
        a.stats().syns_received >= 40
    })
    .await;
    // The node has no member and no seed: every datagram it sent went to
    // the attacker. Take them all (the count is final once the Syns are
    // handled: answers are queued while handling them).
    let expected = a.stats().datagrams_sent;
    attacker.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answered = 0;
    let mut buf = [0u8; 65_536];
    for i in 0..expected {
        let (n, _) = attacker
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {expected} not received: {e}"));
        answered += n;
    }
    assert!(answered > 0, "answers within the limit still come");
    assert!(
        answered <= 3 * sent,
        "{answered} bytes answered for {sent} sent"
    );
    let s = a.stats();
    assert_eq!(s.addresses_validated, 0, "{s:?}");
    // None of them became a member: the node's own rounds and probes do not
    // go to the address they named either.
    assert_eq!(s.unvalidated_senders, 40, "{s:?}");
    assert_eq!(a.members().len(), 1, "{:?}", a.members());
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_naming_a_thousand_writers_adds_only_its_allowance_of_them() {
    let a = node("a", &[]).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let from = attacker.local_addr().unwrap();
    let target = a.local_addr().unwrap();
    let started = std::time::Instant::now();
    let hlc = Hlc::new(now_ms(), 0);
    let mut datagrams = 0;
    for part in 0..10 {
        let records = (0..100)
            .map(|i| {
                let n = part * 100 + i;
                record(
                    &format!("forged/{n}"),
                    "x",
                    hlc,
                    &Origin::new(format!("w{n}"), 1),
                    1,
                )
            })
            .collect();
        let push = Envelope::new(
            DEFAULT_CLUSTER_ID,
            Sender::new("stranger", 1, Some(from)),
            Body::Push(Push { records, hops: 0 }),
        );
        attacker.send_to(&encode(&push), target).unwrap();
        datagrams += 1;
    }
    wait_until("the node handled every push", DEADLINE, || {
        a.stats().datagrams_received >= datagrams
    })
    .await;
    // 64 at once for every stranger together, then 4 per 50 ms interval.
    let intervals = started.elapsed().as_millis() as usize / 50 + 1;
    let bound = 64 + 4 * intervals;
    let taken = a.len();
    assert!(
        (64..=bound).contains(&taken),
        "{taken} forged writers taken, bound {bound}"
    );
    assert!(a.stats().origins_refused >= (1_000 - bound) as u64);
    // An honest member's writes still arrive: its allowance is its own.
    let b = node("b", &[&a]).await;
    b.set("honest", "yes".to_string()).unwrap();
    wait_until("b's write reaches a", DEADLINE, || {
        get(&a, "honest").as_deref() == Some("yes")
    })
    .await;
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}
