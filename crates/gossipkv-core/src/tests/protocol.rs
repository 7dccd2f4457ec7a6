//! The protocol driven by hand: datagrams in, datagrams out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossipkv_proto::{decode, encode, Body, Envelope, Limits, MemberSync, Probe, Sender};
use gossipkv_storage::{NodeId, Origin, Store};

use crate::swim::reconcile::BUCKETS;
use crate::{
    Directory, Event, Instant, MemberState, NetworkError, Protocol, ProtocolConfig, Transmit,
    WallTime,
};

/// The wall clock of these tests (2026-01-01).
pub(crate) const WALL: u64 = 1_767_225_600_000;

pub(crate) fn config(seeds: Vec<SocketAddr>) -> ProtocolConfig {
    let mut cfg = ProtocolConfig::new("me", 1, "test");
    cfg.advertise_addr = Some("127.0.0.1:7000".parse().unwrap());
    cfg.seeds = seeds;
    cfg.rng_seed = 7;
    cfg
}

pub(crate) fn protocol(seeds: Vec<SocketAddr>) -> Protocol {
    let store = Arc::new(Store::new(Origin::new("me", 1)));
    Protocol::new(config(seeds), store, Instant::from_millis(0))
}

/// The monotonic instant `ms` into a test, and the wall clock then.
pub(crate) fn at(ms: u64) -> (Instant, WallTime) {
    (Instant::from_millis(ms), WallTime::from_unix_ms(WALL + ms))
}

pub(crate) fn sent(p: &mut Protocol) -> Vec<Transmit> {
    std::iter::from_fn(|| p.poll_transmit()).collect()
}

fn destinations(p: &mut Protocol) -> Vec<SocketAddr> {
    sent(p).into_iter().map(|t| t.to).collect()
}

pub(crate) fn deliver(p: &mut Protocol, ms: u64, from: SocketAddr, env: &Envelope) {
    let (now, wall) = at(ms);
    p.handle_datagram(now, wall, from, &encode(env));
}

fn timeout(p: &mut Protocol, ms: u64) {
    let (now, wall) = at(ms);
    p.handle_timeout(now, wall);
}

#[test]
fn new_seed_addresses_are_followed() {
    let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:7002".parse().unwrap();
    let mut p = protocol(vec![a]);
    timeout(&mut p, 0);
    assert_eq!(destinations(&mut p), vec![a]);
    // The seed's host name now resolves elsewhere.
    p.set_seeds(vec![b]);
    timeout(&mut p, 1_000);
    assert_eq!(destinations(&mut p), vec![b]);
}

#[test]
fn garbage_is_counted_and_reported_never_applied() {
    let mut p = protocol(vec![]);
    let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (now, wall) = at(0);
    for len in 0..200usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        p.handle_datagram(now, wall, from, &junk);
    }
    let s = p.stats();
    assert_eq!(s.datagrams_received, 200);
    assert!(s.decode_errors >= 190, "{s:?}");
    assert!(p.store().is_empty());
    let reported = std::iter::from_fn(|| p.poll_event())
        .filter(|e| matches!(e, Event::Error(NetworkError::Decode { .. })))
        .count() as u64;
    assert_eq!(reported, s.decode_errors);
}

#[test]
fn a_forged_member_sync_gets_one_bounded_answer() {
    let mut p = protocol(vec![]);
    let from: SocketAddr = "127.0.0.1:7009".parse().unwrap();
    let env = Envelope::new(
        "test",
        Sender::new("peer", 1, Some(from)),
        Body::MemberSync(MemberSync {
            buckets: vec![1; BUCKETS],
            ttl: u32::MAX,
        }),
    );
    deliver(&mut p, 0, from, &env);
    let answers: Vec<Envelope> = sent(&mut p)
        .into_iter()
        .map(|t| decode(&t.payload, &Limits::default()).unwrap())
        .collect();
    assert_eq!(answers.len(), 1);
    match &answers[0].body {
        Body::MemberSync(m) => {
            assert_eq!(m.ttl, 1, "the ttl is capped");
            assert_eq!(m.buckets.len(), BUCKETS);
        }
        other => panic!("unexpected answer {other:?}"),
    }
    assert!(
        p.peers().is_empty(),
        "an address that never sent our token back makes no member"
    );
    // A bucket list of the wrong length is not answered.
    let env = Envelope {
        body: Body::MemberSync(MemberSync {
            buckets: vec![1; 3],
            ttl: 2,
        }),
        ..env
    };
    deliver(&mut p, 1, from, &env);
    assert_eq!(destinations(&mut p), Vec::<SocketAddr>::new());
}

#[test]
fn a_silent_member_is_probed_through_others_then_doubted() {
    let mut p = protocol(vec![]);
    let peers: Vec<SocketAddr> = (1..=4)
        .map(|i| format!("127.0.0.1:710{i}").parse().unwrap())
        .collect();
    for (i, a) in peers.iter().enumerate() {
        // A probe answer from each: it only says the sender is alive.
        let sender = Sender::new(format!("p{i}"), 1, Some(*a));
        let body = Body::Probe(Probe {
            target: sender.clone(),
            request: false,
        });
        deliver(&mut p, 0, *a, &Envelope::new("test", sender, body));
    }
    let _ = destinations(&mut p);
    // A round: Syns to `fanout` peers (the member list just changed), the
    // first to the next member in the probe order, whose answer is awaited.
    timeout(&mut p, 0);
    let first = destinations(&mut p);
    assert_eq!(first.len(), 3);
    let swim = p.context().peers.swim().unwrap();
    let awaited: Vec<NodeId> = (0..4)
        .map(|i| NodeId::new(format!("p{i}")))
        .filter(|n| swim.prober().awaits(n))
        .collect();
    assert_eq!(awaited.len(), 1);
    let target = swim.table().get(&awaited[0]).unwrap().addr;
    assert!(first.contains(&target));
    // Nobody answers: after half an interval three others are asked to
    // probe it, and it is probed directly again.
    timeout(&mut p, 500);
    let out: Vec<(SocketAddr, Envelope)> = sent(&mut p)
        .into_iter()
        .map(|t| (t.to, decode(&t.payload, &Limits::default()).unwrap()))
        .collect();
    let requests: Vec<SocketAddr> = out
        .iter()
        .filter(|(_, e)| matches!(&e.body, Body::Probe(r) if r.request))
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(requests.len(), 3, "{out:?}");
    assert!(!requests.contains(&target));
    assert!(out
        .iter()
        .any(|(to, e)| *to == target && matches!(e.body, Body::Syn(_))));
    let doubted = p.context().peers.swim().unwrap().table().to_probe();
    assert_eq!(doubted.len(), 1);
    assert_eq!(doubted[0].addr, target);
    // Still silent an interval later: suspected.
    timeout(&mut p, 1_500);
    let suspect = p
        .context()
        .peers
        .swim()
        .unwrap()
        .table()
        .get(&doubted[0].node_id)
        .unwrap();
    assert_eq!(suspect.state, MemberState::Suspect);
}

#[test]
fn with_a_directory_peers_come_from_it_and_no_membership_travels() {
    let own: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let others: Vec<SocketAddr> = (1..=30)
        .map(|i| SocketAddr::from(([127, 0, 0, 2], 7000 + i)))
        .collect();
    let mut cfg = config(vec![]);
    cfg.directory = Some(Arc::new(Directory::new(
        [vec![own], others.clone()].concat(),
    )));
    let store = Arc::new(Store::new(Origin::new("me", 1)));
    let mut p = Protocol::new(cfg, store, Instant::from_millis(0));
    let mut rounds = Vec::new();
    for r in 0..6 {
        timeout(&mut p, r * 1_000);
        let out = sent(&mut p);
        for t in &out {
            assert!(others.contains(&t.to), "{} is not in the directory", t.to);
            let env = decode(&t.payload, &Limits::default()).expect("decodes");
            assert_eq!(env.sender.members_hash, 0);
            assert!(env.members.is_empty());
        }
        rounds.push(out.len());
    }
    // The first round is not quiet: `fanout` Syns; once the digest is
    // unchanged, one per round. No probes, so no member is doubted.
    assert_eq!(rounds[0], 3, "{rounds:?}");
    assert_eq!(rounds[5], 1, "{rounds:?}");
    assert!(p.context().peers.swim().is_none());
    assert_eq!(p.stats().probe_requests_sent, 0);
}

#[test]
fn a_wall_clock_stepped_back_an_hour_stops_no_timer() {
    let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut cfg = config(vec![a]);
    cfg.tombstone_retention = Duration::from_secs(10);
    let store = Arc::new(Store::new(Origin::new("me", 1)));
    let mut p = Protocol::new(cfg, store.clone(), Instant::from_millis(0));
    let wall0 = WALL;
    store.set("k", bytes::Bytes::from_static(b"v"), wall0);
    store.delete("k", wall0 + 1);
    let mut rounds = Vec::new();
    for s in 0..40u64 {
        let now = Instant::from_millis(s * 1_000);
        // The wall clock jumps back an hour after 5 s, then runs on.
        let wall = if s < 5 {
            wall0 + s * 1_000
        } else {
            wall0 + s * 1_000 - 3_600_000 + 3_600_000.min(s * 100_000)
        };
        p.handle_timeout(now, WallTime::from_unix_ms(wall));
        let _ = sent(&mut p);
        rounds.push(p.stats().rounds);
        let next = p.poll_timeout().unwrap();
        assert!(
            next > now && next <= now + Duration::from_secs(1),
            "{next:?} after {now:?}"
        );
    }
    assert_eq!(p.stats().rounds, 40, "one round per interval: {rounds:?}");
    // Once the wall clock is back past the tombstone's age, it is collected.
    assert_eq!(p.stats().tombstones_collected, 1);
}

#[test]
fn after_leave_nothing_is_due() {
    let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut p = protocol(vec![a]);
    assert!(p.poll_timeout().is_some());
    p.leave();
    assert!(p.has_left());
    assert_eq!(p.poll_timeout(), None);
    timeout(&mut p, 10_000);
    assert!(sent(&mut p).is_empty());
}

#[test]
fn a_hash_only_syn_answered_by_a_peer_ahead_pulls() {
    use gossipkv_proto::{Reply, SynAck};
    use gossipkv_storage::{Delta, Digest, DigestEntry};
    let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut p = protocol(vec![peer]);
    // Two rounds: the first sends a whole digest, the second (digest
    // unchanged) only its fingerprint.
    timeout(&mut p, 0);
    let _ = sent(&mut p);
    timeout(&mut p, 1_000);
    assert_eq!(p.stats().hash_only_syns_sent, 1);
    let _ = sent(&mut p);
    let answer = |watermark| {
        let digest = Digest {
            entries: vec![DigestEntry {
                origin: Origin::new("peer", 1),
                watermark,
            }],
            complete: true,
            ..Digest::default()
        };
        Envelope::new(
            "test",
            Sender::new("peer", 1, Some(peer)),
            Body::SynAck(SynAck {
                digest,
                reply: Reply::Delta(Delta::default()),
            }),
        )
    };
    // The peer holds writes we lack: we ask again with our whole digest.
    deliver(&mut p, 1_010, peer, &answer(5));
    assert_eq!(p.stats().pulls_sent, 1);
    let pulled: Vec<Envelope> = sent(&mut p)
        .into_iter()
        .map(|t| decode(&t.payload, &Limits::default()).unwrap())
        .filter(|e| matches!(&e.body, Body::Syn(s) if s.digest_hash.is_none()))
        .collect();
    assert_eq!(pulled.len(), 1, "one full Syn to the peer");
    // Only once per hash-only Syn: a second answer does not pull again.
    deliver(&mut p, 1_020, peer, &answer(5));
    assert_eq!(p.stats().pulls_sent, 1);
    // A peer that is not ahead is not pulled from.
    timeout(&mut p, 2_000);
    let _ = sent(&mut p);
    let before = p.stats().pulls_sent;
    deliver(&mut p, 2_010, peer, &answer(0));
    assert_eq!(p.stats().pulls_sent, before);
}

#[test]
fn datagrams_are_counted_by_kind() {
    use crate::MessageKind;
    let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut p = protocol(vec![peer]);
    timeout(&mut p, 0);
    let out = sent(&mut p);
    let s = p.stats();
    // Every datagram handed out is counted once, under the kind it is.
    let mut expect = [0u64; MessageKind::COUNT];
    for t in &out {
        let env = decode(&t.payload, &Limits::default()).unwrap();
        expect[MessageKind::of(&env.body) as usize] += 1;
    }
    assert!(expect[MessageKind::Syn as usize] >= 1, "{expect:?}");
    assert_eq!(s.sent_by_kind.map(|k| k.datagrams), expect);
    let bytes: u64 = out.iter().map(|t| t.payload.len() as u64).sum();
    assert_eq!(s.sent_by_kind.iter().map(|k| k.bytes).sum::<u64>(), bytes);
    // Received: a Leave counts as one; garbage only as a decode error.
    let leave = Envelope::new("test", Sender::new("peer", 1, Some(peer)), Body::Leave);
    deliver(&mut p, 10, peer, &leave);
    let (now, wall) = at(20);
    p.handle_datagram(now, wall, peer, b"not an envelope");
    let s = p.stats();
    let leaves = s.received_by_kind[MessageKind::Leave as usize];
    assert_eq!(leaves.datagrams, 1);
    assert_eq!(leaves.bytes, encode(&leave).len() as u64);
    assert_eq!(
        s.received_by_kind.iter().map(|k| k.datagrams).sum::<u64>(),
        1
    );
    assert_eq!((s.datagrams_received, s.decode_errors), (2, 1));
}

#[test]
fn a_peer_digest_of_retired_markers_raises_nothing_and_takes_nothing_away() {
    use gossipkv_proto::{Reply, SynAck};
    use gossipkv_storage::{Delta, Digest, DigestEntry, RETIRED_WATERMARK};
    let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let store = Arc::new(Store::new(Origin::new("me", 1)));
    let mut p = Protocol::new(config(vec![peer]), store.clone(), Instant::from_millis(0));
    // We hold a write of another origin, "x".
    let x = Store::new(Origin::new("x", 1));
    store.merge(x.write("k", Some(bytes::Bytes::from_static(b"v")), WALL));
    timeout(&mut p, 0);
    let _ = sent(&mut p);
    // A peer claims every origin retired: ours, x's, and one never heard of.
    let marker = |node: &str| DigestEntry {
        origin: Origin::new(node, 1),
        watermark: RETIRED_WATERMARK,
    };
    let digest = Digest {
        entries: vec![marker("me"), marker("x"), marker("ghost")],
        complete: true,
        ..Digest::default()
    };
    let answer = Envelope::new(
        "test",
        Sender::new("peer", 1, Some(peer)),
        Body::SynAck(SynAck {
            digest,
            reply: Reply::Delta(Delta::default()),
        }),
    );
    deliver(&mut p, 10, peer, &answer);
    // A marker is not "ahead": the caught-up flag is not held back by it.
    assert!(p.is_synced());
    // Nothing is raised to the marker, nothing unknown is interned, and
    // what we hold stays (retiring needs our own verdict and no record held).
    for pass in 1..=5 {
        timeout(&mut p, pass * 61_000);
    }
    assert_eq!(store.watermark(&Origin::new("x", 1)), 1);
    assert_eq!(store.watermark(&Origin::new("ghost", 1)), 0);
    assert!(!store.is_retired(&Origin::new("x", 1)));
    assert_eq!(store.get("k"), Some(bytes::Bytes::from_static(b"v")));
    assert_eq!(p.stats().origins_retired, 0);
    let listed: Vec<u64> = store.digest().entries.iter().map(|e| e.watermark).collect();
    assert!(listed.iter().all(|w| *w != RETIRED_WATERMARK), "{listed:?}");
}
