//! How many origins the network may add (`newcomers.rs`): per-source
//! allowances, the strangers' shared one, and the cap on active origins.
//! Each test fails without the bound it checks.

use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_proto::{Ack, Body, Envelope, Push, Sender};
use gossipkv_storage::{Delta, Ghost, Hlc, Key, Origin, OriginChunk, Page, Record, Version};

use super::protocol::{deliver, protocol, WALL};
use crate::{
    Protocol, MAX_ORIGINS, SOURCE_BURST, SOURCE_PER_INTERVAL, STRANGERS_BURST,
    STRANGERS_PER_INTERVAL,
};

/// The default gossip interval of the tests' protocol, in ms.
const INTERVAL_MS: u64 = 1_000;
/// Records per pushed datagram (well within a datagram).
const PER_PUSH: usize = 300;

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.9:{port}").parse().unwrap()
}

fn record(key: &str, origin: &Origin, seq: u64) -> Record {
    Record {
        key: Key::from(key),
        value: Some(Bytes::from_static(b"v")),
        version: Version::new(Hlc::new(WALL, 0), origin, seq),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    }
}

fn envelope(from: SocketAddr, body: Body) -> Envelope {
    Envelope::new("test", Sender::new("peer", 1, Some(from)), body)
}

/// Pushes one record of each of the origins `tag-first..tag-(first+n)`
/// from `from`, in datagrams of [`PER_PUSH`] records, at `ms`.
fn push_origins(p: &mut Protocol, ms: u64, from: SocketAddr, tag: &str, first: usize, n: usize) {
    let records: Vec<Record> = (first..first + n)
        .map(|i| {
            record(
                &format!("{tag}/{i}"),
                &Origin::new(format!("{tag}-{i}"), 1),
                1,
            )
        })
        .collect();
    for part in records.chunks(PER_PUSH) {
        let body = Body::Push(Push {
            records: part.to_vec(),
            hops: 0,
        });
        deliver(p, ms, from, &envelope(from, body));
    }
}

/// Origins the store knows beyond its own.
fn others(p: &Protocol) -> usize {
    p.store().active_origins() - 1
}

#[test]
fn strangers_share_one_small_allowance_of_new_origins() {
    let mut p = protocol(vec![]);
    let burst = STRANGERS_BURST as usize;
    push_origins(&mut p, 0, addr(1), "a", 0, 3 * burst);
    assert_eq!(others(&p), burst, "the burst and no more");
    assert_eq!(p.store().len(), burst, "records of refused origins dropped");
    assert_eq!(p.stats().origins_refused, 2 * burst as u64);
    // Another address (a spoofer's next one) draws on the same allowance.
    push_origins(&mut p, 0, addr(2), "b", 0, 10);
    assert_eq!(others(&p), burst);
    // Known origins are not charged: their writes keep coming.
    let known = Origin::new("a-0", 1);
    let body = Body::Push(Push {
        records: vec![record("a/0", &known, 2)],
        hops: 0,
    });
    deliver(&mut p, 0, addr(3), &envelope(addr(3), body));
    assert_eq!(p.store().watermark(&known), 2);
    // Time refills it, at its own pace.
    push_origins(&mut p, 2 * INTERVAL_MS, addr(2), "b", 10, 100);
    assert_eq!(others(&p), burst + 2 * STRANGERS_PER_INTERVAL as usize);
}

#[test]
fn a_trusted_source_has_its_own_burst_and_refill() {
    let mut p = protocol(vec![]);
    let (x, y) = (addr(10), addr(11));
    p.trust(x);
    p.trust(y);
    let burst = SOURCE_BURST as usize;
    push_origins(&mut p, 0, x, "x", 0, burst + 500);
    assert_eq!(others(&p), burst);
    assert_eq!(p.stats().origins_refused, 500);
    // Another source is not held back by the first one's spending.
    push_origins(&mut p, 0, y, "y", 0, 100);
    assert_eq!(others(&p), burst + 100);
    // The first regains its allowance interval by interval.
    push_origins(&mut p, 3 * INTERVAL_MS, x, "x", burst, 500);
    let per = SOURCE_PER_INTERVAL as usize;
    assert_eq!(others(&p), burst + 100 + 3 * per);
}

#[test]
fn no_new_origin_is_taken_past_the_cap() {
    let mut p = protocol(vec![]);
    let burst = SOURCE_BURST as usize;
    let sources = MAX_ORIGINS.div_ceil(burst) + 1;
    for s in 0..sources {
        let from = addr(100 + s as u16);
        p.trust(from);
        push_origins(&mut p, 0, from, &format!("s{s}"), 0, burst);
    }
    assert_eq!(p.store().active_origins(), MAX_ORIGINS);
    assert_eq!(
        p.stats().origins_refused,
        (sources * burst + 1 - MAX_ORIGINS) as u64
    );
    // Retiring origins makes room again.
    let gone: Vec<Origin> = (0..10).map(|i| Origin::new(format!("s0-{i}"), 1)).collect();
    for o in &gone {
        let key = format!("s0/{}", o.node.as_str().trim_start_matches("s0-"));
        p.store().delete(&key, WALL + 1);
    }
    assert_eq!(p.store().retire_origins(&gone).len(), 10);
    let late = addr(99);
    p.trust(late);
    push_origins(&mut p, 0, late, "late", 0, 20);
    assert_eq!(p.store().active_origins(), MAX_ORIGINS);
    assert_eq!(p.store().len(), MAX_ORIGINS - 1 - 10 + 10);
}

/// A delta from a stranger whose allowance is spent: a chunk of a known
/// origin `a` whose write 2 was superseded by a record of a new origin,
/// and a chunk of another new origin.
fn spent_stranger_delta(p: &mut Protocol) -> (Origin, Origin, Origin) {
    push_origins(p, 0, addr(1), "spend", 0, STRANGERS_BURST as usize);
    let a = Origin::new("spend-0", 1);
    let newer = Origin::new("newer", 1);
    let other = Origin::new("other", 1);
    let chunk_a = OriginChunk {
        origin: a.clone(),
        from: 1,
        to: 3,
        records: vec![record("k3", &a, 3), record("k2", &newer, 1)],
        ghosts: vec![Ghost {
            key: Key::from("k2"),
            seq: 2,
            hlc: Hlc::new(WALL, 0),
        }],
    };
    let chunk_other = OriginChunk {
        origin: other.clone(),
        from: 0,
        to: 1,
        records: vec![record("o", &other, 1)],
        ghosts: vec![],
    };
    let body = Body::Ack(Ack {
        delta: Delta {
            chunks: vec![chunk_a, chunk_other],
            loose: vec![],
        },
    });
    deliver(p, 0, addr(2), &envelope(addr(2), body));
    (a, newer, other)
}

#[test]
fn a_delta_loses_only_what_new_origins_bring_and_no_watermark_rises_over_it() {
    let mut p = protocol(vec![]);
    let (a, newer, other) = spent_stranger_delta(&mut p);
    let store = p.store().clone();
    assert!(!store.knows_origin(&newer) && !store.knows_origin(&other));
    assert_eq!(store.get("o"), None, "the new origin's chunk went whole");
    assert_eq!(store.get("k2"), None, "the new origin's record went");
    // Write 2 of `a` is vouched for only by the record that went: the
    // chunk stops before it, so `a`'s watermark stays at 1.
    assert_eq!(store.watermark(&a), 1);
    assert_eq!(p.stats().origins_refused, 2);
}

#[test]
fn a_page_is_applied_without_records_of_new_origins_past_the_allowance() {
    let mut p = protocol(vec![]);
    push_origins(&mut p, 0, addr(1), "spend", 0, STRANGERS_BURST as usize);
    let known = Origin::new("spend-0", 1);
    let fresh = Origin::new("fresh", 1);
    // We hold an older version of "p2"; the page's newer one is of a new
    // origin: it is skipped, and ours is kept, not dropped.
    let body = Body::Push(Push {
        records: vec![record("p2", &known, 2)],
        hops: 0,
    });
    deliver(&mut p, 0, addr(1), &envelope(addr(1), body));
    let watermarks = gossipkv_storage::Digest {
        entries: vec![
            gossipkv_storage::DigestEntry {
                origin: known.clone(),
                watermark: 9,
            },
            gossipkv_storage::DigestEntry {
                origin: fresh.clone(),
                watermark: 1,
            },
        ],
        ..Default::default()
    };
    let page = Page {
        start: String::new(),
        end: None,
        records: vec![record("p1", &known, 3), record("p2", &fresh, 1)],
        watermarks,
    };
    let body = Body::SynAck(gossipkv_proto::SynAck {
        digest: Default::default(),
        reply: gossipkv_proto::Reply::Page(page),
    });
    deliver(&mut p, 0, addr(2), &envelope(addr(2), body));
    let store = p.store().clone();
    assert_eq!(p.stats().pages_refused, 0);
    assert!(store.contains("p1"), "the rest of the page applied");
    assert!(!store.knows_origin(&fresh));
    let held = store.get_record("p2").expect("kept, not dropped");
    assert_eq!(held.version.origin(), known);
    // The pass (one page) ended with a record skipped: nothing raised to
    // the page's watermarks (9); write 3 merged, and only that.
    assert_eq!(store.watermark(&known), 3);
    assert_eq!(p.stats().resyncs_completed, 0);
    assert_eq!(p.stats().origins_refused, 1);
}

/// The sender of a delta puts each key's current record in the first chunk
/// that needs it: here the chunk of a new origin `n`, whose write to "k"
/// the known origin `a` superseded with its write 2. The chunk of `a` then
/// carries nothing for write 2. With `n`'s chunk dropped, `a`'s chunk must
/// not raise `a`'s watermark over write 2, which this node does not hold.
#[test]
fn a_chunk_that_relied_on_a_dropped_one_raises_nothing() {
    let mut p = protocol(vec![]);
    push_origins(&mut p, 0, addr(1), "spend", 0, STRANGERS_BURST as usize);
    let a = Origin::new("spend-0", 1);
    let n = Origin::new("n", 1);
    assert_eq!(p.store().watermark(&a), 1);
    let chunk_n = OriginChunk {
        origin: n.clone(),
        from: 0,
        to: 1,
        records: vec![record("k", &a, 2)],
        ghosts: vec![Ghost {
            key: Key::from("k"),
            seq: 1,
            hlc: Hlc::new(WALL, 0),
        }],
    };
    let chunk_a = OriginChunk {
        origin: a.clone(),
        from: 1,
        to: 2,
        records: vec![],
        ghosts: vec![],
    };
    let body = Body::Ack(Ack {
        delta: Delta {
            chunks: vec![chunk_n, chunk_a],
            loose: vec![],
        },
    });
    deliver(&mut p, 0, addr(2), &envelope(addr(2), body));
    assert!(!p.store().knows_origin(&n));
    assert_eq!(p.store().get("k"), None);
    assert_eq!(p.store().watermark(&a), 1, "no hole under a's watermark");
}

/// A member's current generation is admitted whatever the allowances: a
/// table filled with made-up origins must not shut out a node that joins.
#[test]
fn a_members_origin_is_admitted_past_a_spent_allowance() {
    let mut p = protocol(vec![]);
    push_origins(&mut p, 0, addr(1), "spend", 0, STRANGERS_BURST as usize);
    let m = addr(50);
    p.trust(m);
    let hello = Body::Push(Push {
        records: vec![],
        hops: 0,
    });
    deliver(
        &mut p,
        0,
        m,
        &Envelope::new("test", Sender::new("m", 3, Some(m)), hello),
    );
    assert!(p.members().iter().any(|x| x.node_id.as_str() == "m"));
    let push = |origin: &Origin, key: &str| {
        Body::Push(Push {
            records: vec![record(key, origin, 1)],
            hops: 0,
        })
    };
    // From a stranger whose allowance is spent: the member's generation
    // gets in, another generation of the same node does not.
    deliver(
        &mut p,
        0,
        addr(2),
        &envelope(addr(2), push(&Origin::new("m", 3), "m3")),
    );
    deliver(
        &mut p,
        0,
        addr(2),
        &envelope(addr(2), push(&Origin::new("m", 2), "m2")),
    );
    assert!(p.store().contains("m3"));
    assert!(!p.store().contains("m2"));
}
