//! The guards against hostile and broken peers, one forged datagram at a
//! time. Each test fails without its guard.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_proto::{Ack, Body, Envelope, Push, Reply, Sender, SynAck};
use gossipkv_storage::{
    Delta, Digest, DigestEntry, Ghost, Hlc, Key, Origin, OriginChunk, Page, Record, Store, Version,
    HLC_MAX_PHYSICAL_MS,
};

use super::protocol::{at, deliver, protocol, WALL};
use crate::{Event, NetworkError, Protocol};

fn evil() -> SocketAddr {
    "127.0.0.1:6666".parse().unwrap()
}

fn from_evil(body: Body) -> Envelope {
    Envelope::new("test", Sender::new("evil", 1, Some(evil())), body)
}

fn record(key: &str, value: &str, hlc: Hlc, origin: &Origin, seq: u64) -> Record {
    Record {
        key: Key::from(key),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        version: Version::new(hlc, origin, seq),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    }
}

fn push(records: Vec<Record>) -> Body {
    Body::Push(Push { records, hops: 0 })
}

fn ack(chunks: Vec<OriginChunk>, loose: Vec<Record>) -> Body {
    Body::Ack(Ack {
        delta: Delta { chunks, loose },
    })
}

fn reports(p: &mut Protocol) -> Vec<NetworkError> {
    std::iter::from_fn(|| p.poll_event())
        .filter_map(|e| match e {
            Event::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// A timestamp `ms` after the tests' wall clock.
fn ahead(ms: u64) -> Hlc {
    Hlc::new(WALL + ms, 0)
}

const END_OF_TIME: Hlc = Hlc::from_u64(u64::MAX);

#[test]
fn a_record_stamped_at_the_end_of_time_never_moves_the_clock() {
    let mut p = protocol(vec![]);
    let writer = Origin::new("w", 1);
    deliver(
        &mut p,
        0,
        evil(),
        &from_evil(push(vec![record("k", "evil", END_OF_TIME, &writer, 1)])),
    );
    let store = p.store().clone();
    assert_eq!(store.get("k"), None, "held back, not applied");
    assert!(
        store.clock().last() < ahead(1_000),
        "the clock did not move"
    );
    assert_eq!(p.stats().records_deferred, 1);
    assert!(reports(&mut p).iter().any(|e| matches!(
        e,
        NetworkError::ClockSkew { deferred: true, node_id, .. } if node_id == "w"
    )));
    // Later writes keep distinct, increasing timestamps at wall time.
    let a = store.set("k", Bytes::from_static(b"1"), WALL + 10);
    let b = store.set("k", Bytes::from_static(b"2"), WALL + 10);
    assert!(a.hlc < b.hlc && b.hlc < ahead(1_000));
    assert_eq!(store.get("k").as_deref(), Some(&b"2"[..]));
}

#[test]
fn a_peer_with_a_clock_in_the_year_2100_is_held_back_and_reported() {
    let mut p = protocol(vec![]);
    let year_2100 = Hlc::new(4_102_444_800_000, 0);
    let writer = Origin::new("broken", 7);
    let chunk = OriginChunk {
        origin: writer.clone(),
        from: 0,
        to: 2,
        records: vec![
            record("a", "now", ahead(0), &writer, 1),
            record("b", "2100", year_2100, &writer, 2),
        ],
        ghosts: vec![],
    };
    deliver(&mut p, 0, evil(), &from_evil(ack(vec![chunk], vec![])));
    let store = p.store().clone();
    assert_eq!(store.get("a").as_deref(), Some(&b"now"[..]));
    assert_eq!(store.get("b"), None);
    // The chunk was cut before the record held back: the watermark vouches
    // only for write 1, so anti-entropy brings write 2 again later.
    assert_eq!(store.watermark(&writer), 1);
    assert!(store.clock().last() < ahead(1_000));
    // Ten minutes ahead is within the default drift (one hour): applied, reported.
    let near = Origin::new("skewed", 1);
    deliver(
        &mut p,
        1,
        evil(),
        &from_evil(push(vec![record("c", "soon", ahead(600_000), &near, 1)])),
    );
    assert_eq!(store.get("c").as_deref(), Some(&b"soon"[..]));
    let skew: Vec<(String, bool)> = reports(&mut p)
        .into_iter()
        .filter_map(|e| match e {
            NetworkError::ClockSkew {
                node_id, deferred, ..
            } => Some((node_id, deferred)),
            _ => None,
        })
        .collect();
    assert_eq!(
        skew,
        vec![("broken".to_string(), true), ("skewed".to_string(), false)]
    );
}

#[test]
fn a_held_back_record_is_applied_once_the_wall_clock_comes_within_the_drift() {
    let mut p = protocol(vec![]);
    let writer = Origin::new("w", 1);
    let two_hours = 2 * 3_600_000;
    let r = record("k", "v", ahead(two_hours), &writer, 1);
    deliver(&mut p, 0, evil(), &from_evil(push(vec![r.clone()])));
    assert_eq!(p.store().get("k"), None);
    // An hour and a minute later (monotonic and wall), the same record is
    // within the one-hour bound.
    let later = 3_660_000;
    deliver(&mut p, later, evil(), &from_evil(push(vec![r])));
    assert_eq!(p.store().get("k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn ghosts_stamped_beyond_the_drift_cut_their_chunk() {
    let mut p = protocol(vec![]);
    let writer = Origin::new("w", 1);
    let chunk = OriginChunk {
        origin: writer.clone(),
        from: 0,
        to: 3,
        records: vec![
            record("a", "1", ahead(0), &writer, 1),
            record("c", "3", ahead(0), &writer, 3),
        ],
        ghosts: vec![Ghost {
            seq: 2,
            key: Key::from("b"),
            hlc: END_OF_TIME,
        }],
    };
    deliver(&mut p, 0, evil(), &from_evil(ack(vec![chunk], vec![])));
    let store = p.store().clone();
    assert_eq!(store.watermark(&writer), 1, "no watermark over the ghost");
    assert_eq!(
        store.get("c").as_deref(),
        Some(&b"3"[..]),
        "later records still merge"
    );
    assert!(store.clock().last() < ahead(1_000));
}

#[test]
fn a_chunk_claiming_our_own_origin_to_the_end_of_sequence_space_is_refused() {
    let mut p = protocol(vec![]);
    let store = p.store().clone();
    let own = store.local_origin().clone();
    store.set("mine", Bytes::from_static(b"1"), WALL);
    let forged = OriginChunk {
        origin: own.clone(),
        from: 0,
        to: u64::MAX,
        records: vec![],
        ghosts: vec![],
    };
    deliver(&mut p, 0, evil(), &from_evil(ack(vec![forged], vec![])));
    assert_eq!(store.watermark(&own), 1, "our watermark is ours alone");
    assert_eq!(p.stats().own_origin_refused, 1);
    assert!(reports(&mut p)
        .iter()
        .any(|e| matches!(e, NetworkError::OwnOriginClaimed { count: 1, .. })));
    // Our next write takes the next sequence number, and peers see it.
    let v = store.set("mine", Bytes::from_static(b"2"), WALL + 1);
    assert_eq!(v.seq, 2);
    let peer = Store::new(Origin::new("peer", 1));
    peer.apply(&store.delta_for(&peer.digest(), 1_400, 0));
    assert_eq!(peer.get("mine").as_deref(), Some(&b"2"[..]));
}

#[test]
fn records_of_our_own_origin_from_outside_are_never_applied() {
    let mut p = protocol(vec![]);
    let store = p.store().clone();
    let own = store.local_origin().clone();
    let v1 = store.set("k", Bytes::from_static(b"ours"), WALL);
    // A forged newer version of our own write, a forged write far beyond
    // our sequence, and an honest echo of our write (not counted).
    let forged_newer = record("k", "forged", ahead(5), &own, v1.seq);
    let forged_far = record("x", "forged", ahead(5), &own, u64::MAX);
    let echo = Record {
        key: Key::from("k"),
        value: Some(Bytes::from_static(b"ours")),
        version: v1.clone(),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    };
    deliver(
        &mut p,
        0,
        evil(),
        &from_evil(push(vec![forged_newer, forged_far, echo])),
    );
    assert_eq!(store.get("k").as_deref(), Some(&b"ours"[..]));
    assert_eq!(store.get("x"), None);
    assert_eq!(store.watermark(&own), 1);
    assert_eq!(p.stats().own_origin_refused, 2);
    let next = store.set("y", Bytes::from_static(b"next"), WALL + 1);
    assert_eq!(next.seq, 2, "no sequence number skipped or reused");
}

#[test]
fn a_page_claiming_our_own_origin_is_refused_whole() {
    let mut p = protocol(vec![]);
    let store = p.store().clone();
    let own = store.local_origin().clone();
    store.set("keep", Bytes::from_static(b"1"), WALL);
    let page = Page {
        start: String::new(),
        end: None,
        records: vec![],
        watermarks: Digest {
            entries: vec![DigestEntry {
                origin: own.clone(),
                watermark: u64::MAX,
            }],
            complete: true,
            ..Digest::default()
        },
    };
    let body = Body::SynAck(SynAck {
        digest: Digest::default(),
        reply: Reply::Page(page),
    });
    deliver(&mut p, 0, evil(), &from_evil(body));
    assert_eq!(
        store.get("keep").as_deref(),
        Some(&b"1"[..]),
        "nothing dropped"
    );
    assert_eq!(store.watermark(&own), 1, "nothing raised");
    assert_eq!(p.stats().pages_refused, 1);
    assert_eq!(p.stats().pages_applied, 0);
}

/// Found by `hostile_traffic_breaks_no_invariant` in CI: the guard read
/// only the first entry for our origin, the store raised every entry.
#[test]
fn a_page_naming_our_origin_twice_is_refused_whole() {
    let mut p = protocol(vec![]);
    let store = p.store().clone();
    let own = store.local_origin().clone();
    store.set("keep", Bytes::from_static(b"1"), WALL);
    let entry = |watermark| DigestEntry {
        origin: own.clone(),
        watermark,
    };
    let page = Page {
        start: String::new(),
        end: None,
        records: vec![],
        watermarks: Digest {
            entries: vec![entry(1), entry(2)],
            ..Digest::default()
        },
    };
    let body = Body::SynAck(SynAck {
        digest: Digest::default(),
        reply: Reply::Page(page),
    });
    deliver(&mut p, 0, evil(), &from_evil(body));
    assert_eq!(store.watermark(&own), 1, "nothing raised");
    assert_eq!(p.stats().pages_refused, 1);
    assert_eq!(p.stats().own_origin_refused, 1);
    let next = store.set("y", Bytes::from_static(b"next"), WALL + 1);
    assert_eq!(next.seq, 2, "no sequence number skipped or reused");
}

#[test]
fn forged_sequence_numbers_near_the_end_of_the_space_do_not_panic() {
    let mut p = protocol(vec![]);
    let other = Origin::new("o", 1);
    let chunk = OriginChunk {
        origin: other.clone(),
        from: 0,
        to: u64::MAX,
        records: vec![record("a", "1", ahead(0), &other, u64::MAX)],
        ghosts: vec![],
    };
    deliver(&mut p, 0, evil(), &from_evil(ack(vec![chunk], vec![])));
    deliver(
        &mut p,
        1,
        evil(),
        &from_evil(push(vec![record("b", "2", ahead(0), &other, u64::MAX - 1)])),
    );
    let store = p.store().clone();
    assert_eq!(store.watermark(&other), u64::MAX);
    // Later local writes are unaffected.
    let v = store.set("mine", Bytes::from_static(b"x"), WALL);
    assert_eq!(v.seq, 1);
    let (now, wall) = at(2_000);
    p.handle_timeout(now, wall);
    assert!(p.poll_timeout().is_some());
    let _ = Duration::ZERO;
    let _ = HLC_MAX_PHYSICAL_MS;
}

/// Skew is reported at most once a minute per writer, and the writers
/// remembered for that are capped.
#[test]
fn skew_reports_are_rate_limited_per_writer_and_capped() {
    let mut p = protocol(vec![]);
    // Over a thousand writers: more origins than a stranger may introduce.
    p.trust(evil());
    let skewed = |p: &mut Protocol, ms: u64, writer: &str, seq: u64| {
        let origin = Origin::new(writer, 1);
        // A minute ahead: within the drift bound, over the report threshold.
        let hlc = Hlc::new(WALL + ms + 60_000, 0);
        let key = format!("{writer}-{seq}");
        let body = push(vec![record(&key, "v", hlc, &origin, seq)]);
        deliver(p, ms, evil(), &from_evil(body));
        reports(p)
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    NetworkError::ClockSkew {
                        deferred: false,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(skewed(&mut p, 0, "w", 1), 1, "first report");
    assert_eq!(skewed(&mut p, 30_000, "w", 2), 0, "within the minute");
    assert_eq!(skewed(&mut p, 30_000, "x", 1), 1, "another writer");
    assert_eq!(skewed(&mut p, 61_000, "w", 3), 1, "a minute later");
    assert_eq!(p.store().len(), 4, "all applied: within the drift bound");
    // Many writers at once: reports stop at the cap, memory with them.
    let mut reported = 0;
    for i in 0..1_100 {
        reported += skewed(&mut p, 62_000, &format!("many-{i}"), 1);
    }
    let cap = crate::guard::MAX_SKEW_REPORTS;
    assert_eq!(reported, cap - 2, "w and x hold two places");
    let held = p
        .state_sizes()
        .into_iter()
        .find(|(name, _)| *name == "skew reports")
        .map(|(_, n)| n);
    assert_eq!(held, Some(cap));
}
