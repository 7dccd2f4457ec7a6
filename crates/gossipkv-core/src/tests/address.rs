//! Address validation (see the `address` module): a spoofed source draws at
//! most three times what it sent, a token sent back lifts the limit, a
//! guessed one does not, replies to one source are rate-limited, and the
//! maps stay within their caps.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_proto::{decode, encode, Body, Envelope, Limits, Sender, Syn};
use gossipkv_storage::{Digest, Origin, Store};

use super::protocol::{at, config, sent, WALL};
use crate::address::{AMPLIFICATION, MAX_ADDRESSES, REPLIES_PER_INTERVAL, REPLY_BURST};
use crate::{Protocol, Transmit};

/// A node holding `keys` values of 100 bytes, at 127.0.0.1:7000.
fn loaded(keys: usize) -> Protocol {
    let store = Arc::new(Store::new(Origin::new("me", 1)));
    for i in 0..keys {
        store.set(&format!("key/{i:05}"), Bytes::from(vec![b'v'; 100]), WALL);
    }
    Protocol::new(config(vec![]), store, crate::Instant::from_millis(0))
}

/// The first Syn of a new node `id` at `addr`, unpadded (what a spoofer
/// sends: as small as it can be).
fn first_syn(id: &str, addr: SocketAddr) -> Envelope {
    Envelope::new(
        "test",
        Sender::new(id, 1, Some(addr)),
        Body::Syn(Syn {
            // Complete: it shows it holds nothing.
            digest: Digest {
                complete: true,
                ..Digest::default()
            },
            resync_from: None,
            digest_hash: None,
        }),
    )
}

fn bytes_to(out: &[Transmit], to: SocketAddr) -> usize {
    out.iter()
        .filter(|t| t.to == to)
        .map(|t| t.payload.len())
        .sum()
}

/// The token the answers to `to` carry.
fn token_for(out: &[Transmit], to: SocketAddr) -> u64 {
    out.iter()
        .filter(|t| t.to == to)
        .map(|t| decoded(t).addr_token)
        .find(|t| *t != 0)
        .expect("answers to an unvalidated address carry a token")
}

fn decoded(t: &Transmit) -> Envelope {
    decode(&t.payload, &Limits::default()).expect("our own datagram decodes")
}

#[test]
fn a_spoofed_source_draws_at_most_three_times_what_it_sent() {
    let mut p = loaded(2_000);
    let victim: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    let mut received = 0;
    let mut answered = 0;
    for (i, ms) in (0..50u64).zip((0..).step_by(10)) {
        // A new identity each time, so that every datagram is a join.
        let syn = encode(&first_syn(&format!("spoof{i}"), victim));
        received += syn.len();
        let (now, wall) = at(ms);
        p.handle_datagram(now, wall, victim, &syn);
        let out = sent(&mut p);
        answered += bytes_to(&out, victim);
        assert!(
            answered <= AMPLIFICATION as usize * received,
            "{answered} bytes answered for {received} received"
        );
    }
    assert!(answered > 0, "answers within the credit still go");
    assert_eq!(p.stats().addresses_validated, 0);
}

#[test]
fn a_token_sent_back_validates_and_a_guessed_one_does_not() {
    let mut p = loaded(2_000);
    let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let (now, wall) = at(0);
    p.handle_datagram(now, wall, peer, &encode(&first_syn("peer", peer)));
    let out = sent(&mut p);
    let first = bytes_to(&out, peer);
    let token = token_for(&out, peer);

    // A guess: still limited.
    let mut guess = first_syn("peer", peer);
    guess.addr_echo = token ^ 1;
    let (now, wall) = at(10);
    p.handle_datagram(now, wall, peer, &encode(&guess));
    let _ = sent(&mut p);
    assert_eq!(p.stats().addresses_validated, 0);

    // The token itself: validated, and the answer is a whole datagram.
    let mut proof = first_syn("peer", peer);
    proof.addr_echo = token;
    let (now, wall) = at(20);
    p.handle_datagram(now, wall, peer, &encode(&proof));
    assert_eq!(p.stats().addresses_validated, 1);
    let out = sent(&mut p);
    let syn_ack = out
        .iter()
        .filter(|t| t.to == peer)
        .find(|t| matches!(decoded(t).body, Body::SynAck(_)))
        .expect("a SynAck");
    assert!(
        syn_ack.payload.len() > first.max(3 * 60),
        "validated: {} bytes, before: {first}",
        syn_ack.payload.len()
    );
    assert_eq!(decoded(syn_ack).addr_token, 0, "no token once validated");
}

#[test]
fn two_nodes_validate_each_other_in_one_exchange_and_stop_sending_tokens() {
    let a_addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let mut a = loaded(50);
    let mut b = {
        let mut cfg = config(vec![a_addr]);
        cfg.node_id = "b".into();
        cfg.advertise_addr = Some(b_addr);
        cfg.rng_seed = 8;
        let store = Arc::new(Store::new(Origin::new("b", 1)));
        Protocol::new(cfg, store, crate::Instant::from_millis(0))
    };
    let (now, wall) = at(0);
    b.handle_timeout(now, wall);
    let first = sent(&mut b);
    assert!(
        first.iter().all(|t| t.payload.len() == 1_400),
        "a first Syn to a seed is padded to a whole datagram: {:?}",
        first.iter().map(|t| t.payload.len()).collect::<Vec<_>>()
    );
    // Rounds of both, each followed by datagrams back and forth until
    // both are quiet.
    let mut pending: Vec<(SocketAddr, Transmit)> = first.into_iter().map(|t| (b_addr, t)).collect();
    for round in 0..30u64 {
        let (now, wall) = at(round * 1_000);
        if round > 0 {
            a.handle_timeout(now, wall);
            b.handle_timeout(now, wall);
            pending.extend(sent(&mut a).into_iter().map(|t| (a_addr, t)));
            pending.extend(sent(&mut b).into_iter().map(|t| (b_addr, t)));
        }
        for _hop in 0..10 {
            let mut next = Vec::new();
            for (from, t) in std::mem::take(&mut pending) {
                let (node, me) = if t.to == a_addr {
                    (&mut a, a_addr)
                } else {
                    (&mut b, b_addr)
                };
                node.handle_datagram(now, wall, from, &t.payload);
                next.extend(sent(node).into_iter().map(|t| (me, t)));
            }
            pending = next;
        }
    }
    assert_eq!(b.store().len(), 50, "b caught up");
    assert!(a.stats().addresses_validated >= 1, "{:?}", a.stats());
    assert!(b.stats().addresses_validated >= 1, "{:?}", b.stats());
    // Both validated: a round's Syns carry no token or padding.
    let (now, wall) = at(40_000);
    b.handle_timeout(now, wall);
    for t in sent(&mut b) {
        let env = decoded(&t);
        assert_eq!((env.addr_token, env.padding), (0, 0), "{env:?}");
    }
}

#[test]
fn replies_to_one_validated_source_are_rate_limited() {
    let mut p = loaded(10);
    let peer: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let (now, wall) = at(0);
    p.handle_datagram(now, wall, peer, &encode(&first_syn("peer", peer)));
    let token = token_for(&sent(&mut p), peer);
    let mut syn = first_syn("peer", peer);
    syn.addr_echo = token;
    let bytes = encode(&syn);
    // A flood within one interval: the burst, then nothing.
    let mut answers = 0;
    for _ in 0..2 * REPLY_BURST {
        p.handle_datagram(now, wall, peer, &bytes);
        answers += sent(&mut p).iter().filter(|t| t.to == peer).count();
    }
    assert!(answers <= REPLY_BURST as usize, "{answers} answers");
    assert!(answers >= REPLY_BURST as usize / 2, "{answers} answers");
    assert!(p.stats().replies_rate_limited > 0);
    // A gossip interval later, the allowance has grown back by its rate.
    let interval = config(vec![]).gossip_interval.as_millis() as u64;
    let (now, wall) = at(interval);
    let mut later = 0;
    for _ in 0..2 * REPLIES_PER_INTERVAL {
        p.handle_datagram(now, wall, peer, &bytes);
        later += sent(&mut p).iter().filter(|t| t.to == peer).count();
    }
    assert!(later <= REPLIES_PER_INTERVAL as usize, "{later} answers");
    assert!(later > 0);
}

#[test]
fn a_flood_of_spoofed_sources_stays_within_the_caps() {
    let mut p = loaded(0);
    let (now, wall) = at(0);
    for i in 0..MAX_ADDRESSES + 500 {
        let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let from = SocketAddr::from((ip, 7000));
        let mut env = first_syn("spoof", from);
        // Tokens to be echoed: the echo map is fed too.
        env.addr_token = i as u64 + 1;
        p.handle_datagram(now, wall, from, &encode(&env));
        let _ = sent(&mut p);
    }
    let [validated, sources, echoes] = p.context().addrs.sizes();
    assert_eq!(validated, 0);
    assert_eq!(sources, MAX_ADDRESSES);
    assert_eq!(echoes, MAX_ADDRESSES);
}

#[test]
fn a_joiner_sends_the_token_back_at_once_and_is_served_a_stream_in_its_first_round() {
    let (mut a, a_addr) = super::streams::seeded(2_000, 0);
    let (mut b, b_addr) = super::streams::node("b", 7230, vec![a_addr]);
    let (now, wall) = at(0);
    b.handle_timeout(now, wall);
    // b's Syn, a's answers (with a token), b's answers (the token back).
    let first = sent(&mut b);
    for t in first {
        a.handle_datagram(now, wall, b_addr, &t.payload);
    }
    assert!(a.accept_stream(now, b_addr).is_err(), "b is no member yet");
    for t in sent(&mut a) {
        b.handle_datagram(now, wall, a_addr, &t.payload);
    }
    let open = b.poll_stream_open().expect("far behind: b asks at once");
    let echoes = sent(&mut b);
    assert!(
        echoes.iter().any(|t| decoded(t).addr_echo != 0),
        "b sends a's token back at once"
    );
    for t in echoes {
        a.handle_datagram(now, wall, b_addr, &t.payload);
    }
    assert_eq!(a.stats().addresses_validated, 1);
    let served = a.accept_stream(now, b_addr).expect("b is a member now");
    a.handle_stream_data(now, wall, served, &open.bytes)
        .expect("the opening is accepted");
}
