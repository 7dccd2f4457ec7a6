//! The caught-up signal, between two protocol instances passing datagrams
//! by hand: a joiner is synced exactly when it holds what its peer vouched
//! for, never before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_proto::{Body, Envelope, Reply, Sender, SynAck};
use gossipkv_storage::{Digest, DigestEntry, Origin, Store};

use super::protocol::{at, deliver, WALL};
use crate::{Event, Instant, Protocol, ProtocolConfig};

fn node(id: &str, port: u16, seeds: Vec<SocketAddr>) -> (Protocol, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cfg = ProtocolConfig::new(id, 1, "test");
    cfg.advertise_addr = Some(addr);
    cfg.seeds = seeds;
    cfg.rng_seed = u64::from(port);
    cfg.gossip_interval = Duration::from_millis(100);
    let store = Arc::new(Store::new(Origin::new(id, 1)));
    (Protocol::new(cfg, store, Instant::from_millis(0)), addr)
}

fn synced_events(p: &mut Protocol) -> usize {
    std::iter::from_fn(|| p.poll_event())
        .filter(|e| matches!(e, Event::Synced))
        .count()
}

#[test]
fn a_joiner_is_synced_exactly_when_it_holds_what_its_peer_vouched_for() {
    const KEYS: usize = 300;
    let (mut a, a_addr) = node("a", 7101, vec![]);
    for i in 0..KEYS {
        a.store()
            .set(&format!("k{i:04}"), Bytes::from(vec![b'v'; 60]), WALL);
    }
    let (mut b, b_addr) = node("b", 7102, vec![a_addr]);
    let mut events = 0;
    let mut synced_at = None;
    // Every 10 ms: timers, then each node's datagrams to the other.
    for step in 0..3_000u64 {
        let ms = step * 10;
        let (now, wall) = at(ms);
        a.handle_timeout(now, wall);
        b.handle_timeout(now, wall);
        for (from, from_addr, to, to_addr) in [(&mut a, a_addr, &mut b, b_addr)] {
            while let Some(t) = from.poll_transmit() {
                assert_eq!(t.to, to_addr);
                to.handle_datagram(now, wall, from_addr, &t.payload);
            }
            while let Some(t) = to.poll_transmit() {
                assert_eq!(t.to, from_addr);
                from.handle_datagram(now, wall, to_addr, &t.payload);
            }
        }
        events += synced_events(&mut b);
        let held = b.store().len();
        if b.is_synced() {
            assert_eq!(held, KEYS, "synced at {ms} ms holding {held} keys");
            synced_at.get_or_insert(ms);
        }
        if synced_at.is_some_and(|t| ms > t + 1_000) {
            break;
        }
    }
    let took = synced_at.unwrap_or_else(|| {
        panic!(
            "the joiner never caught up: it holds {} keys",
            b.store().len()
        )
    });
    assert!(b.stats().synced);
    assert_eq!(events, 1, "one event, however many exchanges followed");
    // The peer holds nothing the joiner lacked: it is synced too.
    assert!(a.is_synced());
    eprintln!("joiner synced after {took} ms");
}

#[test]
fn one_window_is_not_evidence_and_the_short_form_is() {
    let (mut p, _) = node("me", 7103, vec![]);
    let peer: SocketAddr = "127.0.0.1:7104".parse().unwrap();
    let reply = |digest: Digest| {
        let sender = Sender::new("peer", 1, Some(peer));
        let body = Body::SynAck(SynAck {
            digest,
            reply: Reply::Delta(Default::default()),
        });
        Envelope::new("test", sender, body)
    };
    // One window that lists nothing we lack says nothing of the rest.
    let window = Digest {
        entries: vec![DigestEntry {
            origin: Origin::new("peer", 1),
            watermark: 0,
        }],
        complete: false,
        ..Digest::default()
    };
    deliver(&mut p, 0, peer, &reply(window));
    assert!(!p.is_synced());
    // A complete digest listing a write we lack is evidence against.
    let ahead = Digest {
        entries: vec![DigestEntry {
            origin: Origin::new("peer", 1),
            watermark: 3,
        }],
        complete: true,
        ..Digest::default()
    };
    deliver(&mut p, 10, peer, &reply(ahead));
    assert!(!p.is_synced());
    assert_eq!(synced_events(&mut p), 0);
    // The short form: an empty digest and an empty delta.
    deliver(&mut p, 20, peer, &reply(Digest::default()));
    assert!(p.is_synced());
    assert_eq!(synced_events(&mut p), 1);
    p.mark_synced();
    assert_eq!(synced_events(&mut p), 0, "once per instance");
}

#[test]
fn a_node_alone_is_synced_when_its_driver_says_so() {
    let (mut p, _) = node("alone", 7105, vec![]);
    let (now, wall) = at(0);
    p.handle_timeout(now, wall);
    assert!(!p.is_synced(), "not by itself");
    p.mark_synced();
    assert!(p.is_synced() && p.stats().synced);
    assert_eq!(synced_events(&mut p), 1);
}

/// A window of `peer`'s digest listing `origins` (all at watermark 0).
fn window(origins: &[&str], open_start: bool, open_end: bool) -> Digest {
    Digest {
        entries: origins
            .iter()
            .map(|o| DigestEntry {
                origin: Origin::new(*o, 1),
                watermark: 0,
            })
            .collect(),
        complete: false,
        open_start,
        open_end,
    }
}

fn syn_ack_from(peer: SocketAddr, digest: Digest) -> Envelope {
    let body = Body::SynAck(SynAck {
        digest,
        reply: Reply::Delta(Default::default()),
    });
    Envelope::new("test", Sender::new("peer", 1, Some(peer)), body)
}

#[test]
fn fresh_windows_of_one_peer_covering_every_origin_are_evidence() {
    let peer: SocketAddr = "127.0.0.1:7110".parse().unwrap();
    let other: SocketAddr = "127.0.0.1:7111".parse().unwrap();
    let start = || window(&["a", "c"], true, false);
    let end = || window(&["c", "e"], false, true);
    // Overlapping windows from the open start to the open end.
    let (mut p, _) = node("me", 7112, vec![]);
    deliver(&mut p, 0, peer, &syn_ack_from(peer, start()));
    assert!(!p.is_synced());
    deliver(&mut p, 10, peer, &syn_ack_from(peer, end()));
    assert!(p.is_synced());
    assert_eq!(synced_events(&mut p), 1);

    // A gap between two windows: origins in it are unknown.
    let (mut p, _) = node("me", 7113, vec![]);
    deliver(&mut p, 0, peer, &syn_ack_from(peer, start()));
    deliver(
        &mut p,
        10,
        peer,
        &syn_ack_from(peer, window(&["d", "e"], false, true)),
    );
    assert!(
        !p.is_synced(),
        "nothing spoke for the origins between c and d"
    );

    // Windows of two different peers do not add up.
    let (mut p, _) = node("me", 7114, vec![]);
    deliver(&mut p, 0, peer, &syn_ack_from(peer, start()));
    deliver(&mut p, 10, other, &syn_ack_from(other, end()));
    assert!(!p.is_synced());

    // A window older than the freshness bound no longer counts.
    let (mut p, _) = node("me", 7115, vec![]);
    deliver(&mut p, 0, peer, &syn_ack_from(peer, start()));
    deliver(&mut p, 500, peer, &syn_ack_from(peer, end()));
    assert!(!p.is_synced(), "the first window is five intervals old");

    // A window that shows us behind forgets what that peer showed before.
    let (mut p, _) = node("me", 7116, vec![]);
    deliver(&mut p, 0, peer, &syn_ack_from(peer, start()));
    let mut ahead = window(&["b"], false, false);
    ahead.entries[0].watermark = 5;
    deliver(&mut p, 10, peer, &syn_ack_from(peer, ahead));
    deliver(&mut p, 20, peer, &syn_ack_from(peer, end()));
    assert!(!p.is_synced());
}

#[test]
fn windows_are_kept_for_a_bounded_number_of_peers() {
    let (mut p, _) = node("me", 7117, vec![]);
    let cap = crate::synced::MAX_WINDOW_PEERS;
    for i in 0..(3 * cap) {
        let peer: SocketAddr = format!("127.0.0.2:{}", 1000 + i).parse().unwrap();
        deliver(
            &mut p,
            0,
            peer,
            &syn_ack_from(peer, window(&["a"], true, false)),
        );
        let held = p
            .state_sizes()
            .into_iter()
            .find(|(name, _)| *name == "sync windows")
            .map(|(_, n)| n)
            .unwrap();
        assert!(held <= cap, "{held} peers' windows kept");
    }
    assert!(!p.is_synced());
}
