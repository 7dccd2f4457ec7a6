//! # gossipkv-fuzz-targets
//!
//! The bodies of gossipkv's fuzz targets, one function per input that
//! crosses a trust boundary. Each takes arbitrary bytes and must never
//! panic: a panic (or a failed assertion inside) is a finding.
//!
//! They live in this ordinary workspace crate so that they build on stable:
//! the cargo-fuzz project in `fuzz/` (nightly, built on demand by
//! `cargo xtask fuzz`) calls them from its `fuzz_targets/*.rs`, and
//! `tests/corpus.rs` replays every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through them under `cargo test`, so the
//! targets and their corpora never rot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_core::{Instant, Protocol, ProtocolConfig, WallTime};
use gossipkv_proto::seal::{
    nonce_time, open_datagram, seal_datagram, Direction, Key, Keyring, RecordReader, ReplayGuard,
};
use gossipkv_proto::stream::{Frame, FrameReader};
use gossipkv_proto::{decode, decode_reassembled, encode, encoded_len, Limits};
use gossipkv_storage::{Origin, Store};

/// A target's body: arbitrary bytes in, a panic for a finding.
pub type Target = fn(&[u8]);

/// Every target by name, with its function, in the order `cargo xtask fuzz`
/// runs them.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("stream_frames", stream_frames),
    ("durable_rows", durable_rows),
    ("reassembly", reassembly),
    ("protocol", protocol),
    ("http", http),
    ("sealed", sealed),
];

/// The cluster id of the node under test in the stateful targets.
pub const CLUSTER: &str = "fuzz-cluster";

/// The start of the wall clock given to the node under test (2026-01-01).
const WALL_START_MS: u64 = 1_767_225_600_000;

/// The key of the keyring the `sealed` target opens with (its seeds are
/// sealed with it, so the fuzzer starts from datagrams that open).
pub const FUZZ_KEY: [u8; 32] = [0x5e; 32];

/// The keyring of the `sealed` target: [`FUZZ_KEY`] and a secondary key.
pub fn fuzz_keyring() -> Keyring {
    let mut ring = Keyring::new(Key::from_bytes(FUZZ_KEY));
    // A second key cannot clash with the first: their ids differ.
    let _ = ring.install(Key::from_bytes([0xa7; 32]));
    ring
}

/// Sealed-datagram opening and sealed stream records, with
/// [`fuzz_keyring`] and cluster [`CLUSTER`]. The first byte picks the mode.
/// Even: `data[1..]` is one datagram, opened in place; what opens must be
/// the bytes it was sealed from (resealed with the same nonce, it is
/// identical), then goes through a [`ReplayGuard`] (a second check is a
/// replay) and envelope decoding. Odd: `data[1..]` is a sealed stream's
/// records, fed to a [`RecordReader`] in chunks of `(head >> 1) * 31 + 1`
/// bytes (the direction from bit 7).
pub fn sealed(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let ring = fuzz_keyring();
    if head & 1 == 0 {
        let mut buf = rest.to_vec();
        let Ok(opened) = open_datagram(&ring, CLUSTER, &mut buf) else {
            return;
        };
        let plain = buf[opened.plaintext.clone()].to_vec();
        if opened.holdings.ids() == fuzz_keyring().holdings().ids() {
            let again = seal_datagram(&ring, CLUSTER, opened.nonce, &plain);
            assert_eq!(again, rest, "resealing what opened gives the same bytes");
        }
        let mut guard = ReplayGuard::new(30_000, 30_000, 4);
        let now = nonce_time(&opened.nonce);
        assert!(
            guard.check(now, &opened.nonce).is_ok(),
            "fresh at its own time"
        );
        assert!(guard.check(now, &opened.nonce).is_err(), "a replay passed");
        let _ = decode(&plain, &Limits::default());
        return;
    }
    let dir = match head & 0x80 {
        0 => Direction::Request,
        _ => Direction::Response,
    };
    let chunk = 1 + usize::from((head >> 1) & 0x3f) * 31;
    let mut reader = RecordReader::new(dir, 64 << 10);
    for piece in rest.chunks(chunk) {
        match reader.push(&ring, CLUSTER, piece) {
            Ok(records) => {
                for r in records {
                    assert!(r.len() <= 64 << 10, "a record above the limit");
                }
            }
            Err(_) => return,
        }
    }
}

/// Envelope decoding: [`decode`] (and [`decode_reassembled`]) with default
/// limits; what decodes re-encodes to [`encoded_len`] bytes and decodes
/// again to the same envelope.
pub fn envelope(data: &[u8]) {
    let limits = Limits::default();
    let _ = decode_reassembled(data, &limits);
    let Ok(env) = decode(data, &limits) else {
        return;
    };
    let bytes = encode(&env);
    assert_eq!(bytes.len(), encoded_len(&env), "encoded_len");
    let again = decode(&bytes, &limits).expect("a decoded envelope re-encodes to a valid datagram");
    assert_eq!(again, env, "round trip");
}

/// The bulk stream framing: a [`FrameReader`] fed `data[1..]` in chunks.
/// The first byte picks whether the magic is expected (bit 0), the largest
/// frame (bits 1..=4: 2^n bytes, up to 64 KiB) and the chunk length (bits
/// 5..=7). Every whole frame read is re-framed and read back unchanged, and
/// its payload decoded as an envelope.
pub fn stream_frames(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let expect_magic = head & 1 != 0;
    let max_frame = 1usize << ((head >> 1) & 0x0f).max(2);
    let chunk = 1 + usize::from(head >> 5) * 97;
    let mut reader = FrameReader::new(max_frame, expect_magic);
    for piece in rest.chunks(chunk) {
        if reader.push(piece).is_err() {
            return;
        }
        loop {
            match reader.next_frame() {
                Ok(None) | Err(_) => break,
                Ok(Some(Frame::End)) => assert!(reader.ended()),
                Ok(Some(Frame::Data(payload))) => {
                    assert!(payload.len() <= max_frame, "frame over the limit");
                    let mut back = FrameReader::new(max_frame, false);
                    back.push(&gossipkv_proto::stream::frame(&payload))
                        .expect("push");
                    match back.next_frame() {
                        Ok(Some(Frame::Data(p))) => assert_eq!(p, payload, "re-framed"),
                        other => panic!("a re-framed payload reads back as {other:?}"),
                    }
                    let _ = decode_reassembled(&payload, &Limits::default());
                }
            }
        }
    }
}

/// The persisted-state row decoders of the data directory (records,
/// origins, marks, log entries): see
/// [`gossipkv_durable::fuzz_decode_rows`].
pub fn durable_rows(data: &[u8]) {
    gossipkv_durable::fuzz_decode_rows(data);
}

/// A node under test, as the stateful targets drive it.
struct Harness {
    node: Protocol,
    now: Instant,
    wall_ms: u64,
    packet_size: usize,
}

impl Harness {
    fn new() -> Harness {
        let mut cfg = ProtocolConfig::new("fuzz", 1, CLUSTER);
        cfg.seeds = vec![peer(0)];
        let packet_size = cfg.packet_size;
        let store = Arc::new(Store::new(Origin::new("fuzz", 1)));
        let now = Instant::from_millis(0);
        Harness {
            node: Protocol::new(cfg, store, now),
            now,
            wall_ms: WALL_START_MS,
            packet_size,
        }
    }

    fn datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.node
            .handle_datagram(self.now, WallTime::from_unix_ms(self.wall_ms), from, bytes);
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        self.wall_ms += ms;
        if let Some(due) = self.node.poll_timeout() {
            if due <= self.now {
                self.node
                    .handle_timeout(self.now, WallTime::from_unix_ms(self.wall_ms));
            }
        }
        self.drain();
    }

    /// Takes everything the node hands out; every datagram fits a packet.
    fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            assert!(
                t.payload.len() <= self.packet_size,
                "a datagram of {} bytes, over the packet size {}",
                t.payload.len(),
                self.packet_size
            );
        }
        while self.node.poll_event().is_some() {}
        while self.node.poll_stream_open().is_some() {}
    }
}

/// One of four peer addresses.
fn peer(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7001 + u16::from(i % 4)))
}

/// Reassembly of fragmented envelopes, through [`Protocol::handle_datagram`].
/// The first byte picks the mode. Even: the rest is a sequence of fragments,
/// each `[message id][index][count][total_len: u16 LE][len][data; len]`,
/// wrapped in envelopes of this cluster from one peer (bit 7 of the id
/// byte also advances time by 100 ms). Odd: the rest is taken as a whole
/// encoded envelope, cut by [`gossipkv_proto::fragment`] into pieces of
/// `1 + data[1]` bytes and delivered in order, reversed, or with repeats
/// (bits 1..=2 of the first byte).
pub fn reassembly(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut h = Harness::new();
    let sender = gossipkv_proto::Sender::new("peer", 1, Some(peer(1)));
    let wrap = |f: gossipkv_proto::Fragment| {
        encode(&gossipkv_proto::Envelope::new(
            CLUSTER,
            sender.clone(),
            gossipkv_proto::Body::Fragment(f),
        ))
    };
    if mode & 1 == 0 {
        let mut n = 0;
        while let [id, index, count, t0, t1, len, tail @ ..] = rest {
            let len = usize::from(*len).min(tail.len());
            let (piece, tail) = tail.split_at(len);
            rest = tail;
            let f = gossipkv_proto::Fragment {
                message_id: u64::from(id & 0x7f),
                index: u32::from(*index),
                count: u32::from(*count),
                total_len: u32::from(u16::from_le_bytes([*t0, *t1])),
                data: Bytes::copy_from_slice(piece),
            };
            h.datagram(peer(1), &wrap(f));
            if id & 0x80 != 0 {
                h.advance(100);
            }
            n += 1;
            if n == 256 {
                break;
            }
        }
        h.advance(60_000);
        return;
    }
    let Some((&piece_len, whole)) = rest.split_first() else {
        return;
    };
    let whole = Bytes::copy_from_slice(whole);
    let mut pieces = gossipkv_proto::fragment(&whole, 7, 1 + usize::from(piece_len));
    if pieces.len() > 512 {
        return;
    }
    match (mode >> 1) & 3 {
        1 => pieces.reverse(),
        2 => {
            let copy = pieces.clone();
            pieces.extend(copy);
        }
        3 if !pieces.is_empty() => pieces.rotate_left(1),
        _ => {}
    }
    for f in pieces {
        h.datagram(peer(1), &wrap(f));
    }
    h.advance(60_000);
}

/// The protocol state machine fed a sequence of datagrams and timeouts.
/// The input is a sequence of steps, each one op byte: with bit 7 set,
/// time advances by `(op & 0x7f) * 50` ms and due timers run; else a
/// datagram of `u16 LE` length follows, from peer `op % 4`, and with bit 6
/// set it is first decoded and re-encoded with this node's cluster id (so
/// that mutated traffic of any cluster reaches the state machine). Every
/// datagram the node hands out must fit its packet size.
pub fn protocol(data: &[u8]) {
    let mut h = Harness::new();
    h.advance(0);
    let mut rest = data;
    let mut steps = 0;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        steps += 1;
        if steps > 256 {
            break;
        }
        if op & 0x80 != 0 {
            h.advance(u64::from(op & 0x7f) * 50);
            continue;
        }
        let [l0, l1, tail @ ..] = rest else {
            h.datagram(peer(op), rest);
            break;
        };
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        if op & 0x40 != 0 {
            if let Ok(mut env) = decode(bytes, &Limits::default()) {
                env.cluster_id = CLUSTER.into();
                h.datagram(peer(op), &encode(&env));
                continue;
            }
        }
        h.datagram(peer(op), bytes);
    }
    h.advance(10_000);
}

pub mod corpus;
mod http;
pub use http::http;

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated seeds reach the state machine: fed node `a`'s
    /// received traffic, the node under test learns records and members.
    #[test]
    fn real_traffic_reaches_the_node_under_test() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/protocol");
        let mut records = 0;
        let mut members = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            let mut h = Harness::new();
            let mut rest = &data[..];
            while let Some((&op, tail)) = rest.split_first() {
                rest = tail;
                if op & 0x80 != 0 {
                    h.advance(u64::from(op & 0x7f) * 50);
                    continue;
                }
                let [l0, l1, tail @ ..] = rest else { break };
                let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
                h.datagram(peer(op), &tail[..len]);
                rest = &tail[len..];
            }
            records += h.node.store().len();
            members += h.node.members().len();
        }
        assert!(records > 0, "no record reached the node");
        assert!(members > 0, "no member reached the node");
    }
}
