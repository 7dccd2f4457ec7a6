//! Streams against a hostile peer: connections from strangers, more
//! connections than the serving limit, bad openings, and frames from
//! another node than the one asked.

use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_proto::stream::{frame, open};
use gossipkv_proto::{encode, Body, Envelope, Sender, Syn};

use super::protocol::at;
use super::streams::{node, seeded};
use crate::{Protocol, StreamRefused, StreamSend};

/// `a` with `b` as a live member (b's Syn made it one).
fn server_knowing_b() -> (Protocol, SocketAddr, Protocol, SocketAddr) {
    let (mut a, a_addr) = node("a", 7210, vec![]);
    let (mut b, b_addr) = node("b", 7211, vec![a_addr]);
    let (now, wall) = at(0);
    a.trust(b_addr);
    b.handle_timeout(now, wall);
    for t in std::iter::from_fn(|| b.poll_transmit()) {
        a.handle_datagram(now, wall, b_addr, &t.payload);
    }
    assert!(a.peers().iter().any(|(n, _)| n.as_str() == "b"));
    (a, a_addr, b, b_addr)
}

fn hello(cluster: &str, from: &str, body: Body) -> Bytes {
    let env = Envelope::new(
        cluster,
        Sender::new(from, 1, Some("127.0.0.1:7211".parse().unwrap())),
        body,
    );
    open(&encode(&env))
}

fn syn(p: &Protocol) -> Body {
    Body::Syn(Syn {
        digest: p.store().digest(),
        resync_from: None,
        digest_hash: None,
    })
}

#[test]
fn connections_from_strangers_are_refused_before_any_byte_is_read() {
    let (mut a, _, _, _) = server_knowing_b();
    let (now, _) = at(10);
    let stranger: SocketAddr = "10.9.9.9:5000".parse().unwrap();
    assert_eq!(
        a.accept_stream(now, stranger),
        Err(StreamRefused::NotAMember(stranger))
    );
    assert_eq!(a.stats().streams_refused, 1);
    assert_eq!(a.open_streams(), 0);
}

#[test]
fn a_node_serves_at_most_its_limit_at_once() {
    let (mut a, _, _, b_addr) = server_knowing_b();
    let (now, _) = at(10);
    let ids: Vec<_> = (0..crate::DEFAULT_MAX_SERVING_STREAMS)
        .map(|_| a.accept_stream(now, b_addr).expect("within the limit"))
        .collect();
    assert!(matches!(
        a.accept_stream(now, b_addr),
        Err(StreamRefused::Busy(n)) if n == crate::DEFAULT_MAX_SERVING_STREAMS
    ));
    // One closes: one more may open.
    a.handle_stream_closed(now, ids[0]);
    assert!(a.accept_stream(now, b_addr).is_ok());
}

#[test]
fn bad_openings_close_the_stream_and_are_counted() {
    let (mut a, _, b, b_addr) = server_knowing_b();
    let (now, wall) = at(10);
    let cases: Vec<(&str, Bytes)> = vec![
        ("wrong magic", Bytes::from_static(b"HTTP/1.1 GET /\r\n")),
        ("another cluster", hello("other", "b", syn(&b))),
        ("a stranger's id", hello("test", "mallory", syn(&b))),
        ("our own id", hello("test", "a", syn(&b))),
        ("not a Syn", hello("test", "b", Body::Leave)),
        ("garbage frame", {
            let mut v = gossipkv_proto::stream::STREAM_MAGIC.to_vec();
            v.extend_from_slice(&frame(&[0xff; 40]));
            Bytes::from(v)
        }),
        ("a huge length", {
            let mut v = gossipkv_proto::stream::STREAM_MAGIC.to_vec();
            v.extend_from_slice(&u32::MAX.to_be_bytes());
            Bytes::from(v)
        }),
        ("bytes after the opening", {
            let mut v = hello("test", "b", syn(&b)).to_vec();
            v.extend_from_slice(b"more");
            Bytes::from(v)
        }),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let id = a.accept_stream(now, b_addr).expect("accepted");
        assert!(
            a.handle_stream_data(now, wall, id, bytes).is_err(),
            "{what} was accepted"
        );
        assert_eq!(a.open_streams(), 0, "{what} left the stream open");
        assert_eq!(a.stats().streams_refused, i as u64 + 1, "{what}");
        assert_eq!(a.poll_stream_send(now, id), StreamSend::Finished);
    }
    // A good opening still works after all that.
    let id = a.accept_stream(now, b_addr).unwrap();
    a.handle_stream_data(now, wall, id, &hello("test", "b", syn(&b)))
        .unwrap();
    assert!(matches!(a.poll_stream_send(now, id), StreamSend::Data(_)));
}

#[test]
fn a_receiver_refuses_frames_not_from_the_peer_it_asked() {
    let a = seeded(1_000, 0);
    let (mut b, b_addr) = node("b", 7212, vec![a.1]);
    let mut a = a.0;
    a.trust(b_addr);
    let (now, wall) = at(0);
    b.handle_timeout(now, wall);
    for t in std::iter::from_fn(|| b.poll_transmit()) {
        a.handle_datagram(now, wall, b_addr, &t.payload);
    }
    for t in std::iter::from_fn(|| a.poll_transmit()) {
        b.handle_datagram(now, wall, "127.0.0.1:7201".parse().unwrap(), &t.payload);
    }
    let req = b
        .poll_stream_open()
        .expect("far behind: a stream is asked for");
    let before = b.store().len();
    // A frame from another node than the one asked.
    let env = Envelope::new(
        "test",
        Sender::new("mallory", 1, None),
        Body::Ack(gossipkv_proto::Ack {
            delta: a.store().delta_for(&b.store().digest(), 4_000, 0),
        }),
    );
    let err = b
        .handle_stream_data(now, wall, req.id, &frame(&encode(&env)))
        .unwrap_err();
    assert_eq!(err, StreamRefused::Unexpected("frame from another node"));
    assert_eq!(b.store().len(), before, "nothing applied");
    assert_eq!(b.open_streams(), 0);
    assert_eq!(b.stats().streams_cut, 1);
    // Bytes for the closed stream are refused too.
    assert_eq!(
        b.handle_stream_data(now, wall, req.id, b"x"),
        Err(StreamRefused::Unknown)
    );
}
