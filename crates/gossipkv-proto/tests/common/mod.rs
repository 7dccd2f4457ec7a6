//! Proptest strategies shared by the unit tests (included with `#[path]`)
//! and the integration tests. The parent module must import the message
//! types (`Envelope`, `Sender`, `Body`, `Syn`, `SynAck`, `Reply`, `Ack`).
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_storage::{
    Delta, Digest, DigestEntry, Ghost, Hlc, NodeId, Origin, OriginChunk, Page, Record, Version,
};
use proptest::prelude::*;

use super::{
    Ack, Body, Envelope, Fragment, Liveness, MemberSync, Probe, Push, Reply, Sender, Syn, SynAck,
};

/// Any characters (unicode, control characters, NUL), up to `max` of them.
pub(crate) fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Like [`text`] but padded to a length in `0..pad` bytes, to cross varint
/// boundaries of the length prefixes.
pub(crate) fn long_text(pad: usize) -> impl Strategy<Value = String> {
    (text(4), 0..pad).prop_map(|(s, n)| s + &"x".repeat(n))
}

pub(crate) fn node_id() -> impl Strategy<Value = NodeId> {
    prop::collection::vec(any::<char>(), 1..=10).prop_map(|c| NodeId::from(String::from_iter(c)))
}

/// Integers biased towards the extremes of their varint encodings.
pub(crate) fn int() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), 0..300u64, any::<u64>(),]
}

pub(crate) fn origin() -> impl Strategy<Value = Origin> {
    (node_id(), int()).prop_map(|(node, generation)| Origin { node, generation })
}

pub(crate) fn value(max: usize) -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Bytes::new())),
        3 => prop::collection::vec(any::<u8>(), 0..=max).prop_map(|v| Some(Bytes::from(v))),
    ]
}

fn make_record(key: String, value: Option<Bytes>, hlc: u64, o: Origin, seq: u64) -> Record {
    Record {
        key: Arc::from(key),
        value,
        version: Version {
            hlc: Hlc::from_u64(hlc),
            node: o.node,
            generation: o.generation,
            seq,
        },
    }
}

/// Small records with arbitrary contents.
pub(crate) fn record() -> BoxedStrategy<Record> {
    (text(12), value(24), int(), origin(), int())
        .prop_map(|(k, v, h, o, s)| make_record(k, v, h, o, s))
        .boxed()
}

/// Records with long keys, values and node ids (sizes, not contents, vary).
pub(crate) fn big_record() -> BoxedStrategy<Record> {
    let value = prop_oneof![
        Just(None),
        (0..20_000usize).prop_map(|n| Some(Bytes::from(vec![0xa5; n]))),
    ];
    let origin = (long_text(300), int()).prop_map(|(n, generation)| Origin {
        node: NodeId::from(n),
        generation,
    });
    (long_text(300), value, int(), origin, int())
        .prop_map(|(k, v, h, o, s)| make_record(k, v, h, o, s))
        .boxed()
}

pub(crate) fn digest_entry() -> impl Strategy<Value = DigestEntry> {
    (origin(), int()).prop_map(|(origin, watermark)| DigestEntry { origin, watermark })
}

pub(crate) fn digest() -> impl Strategy<Value = Digest> {
    (prop::collection::vec(digest_entry(), 0..5), any::<bool>()).prop_map(|(entries, complete)| {
        Digest {
            entries,
            complete,
            ..Digest::default()
        }
    })
}

/// A chunk with `from <= to` and ghosts inside `(from, to]`, with records
/// drawn from `rec`.
pub(crate) fn chunk_of(rec: BoxedStrategy<Record>) -> impl Strategy<Value = OriginChunk> {
    (origin(), any::<u64>(), 0..50u64).prop_flat_map(move |(origin, from, len)| {
        let from = from.min(u64::MAX - len);
        let ghost_seq = if len == 0 {
            Just(None).boxed()
        } else {
            (1..=len).prop_map(Some).boxed()
        };
        let ghost = (ghost_seq, long_text(3), any::<u64>()).prop_map(move |(off, key, hlc)| {
            off.map(|off| Ghost {
                seq: from + off,
                key: Arc::from(key),
                hlc: Hlc::from_u64(hlc),
            })
        });
        (
            Just(origin),
            prop::collection::vec(rec.clone(), 0..4),
            prop::collection::vec(ghost, 0..4),
        )
            .prop_map(move |(origin, records, ghosts)| OriginChunk {
                origin,
                from,
                to: from + len,
                records,
                ghosts: ghosts.into_iter().flatten().collect(),
            })
    })
}

pub(crate) fn chunk() -> impl Strategy<Value = OriginChunk> {
    chunk_of(record())
}

pub(crate) fn delta() -> impl Strategy<Value = Delta> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop::collection::vec(record(), 0..3),
    )
        .prop_map(|(chunks, loose)| Delta { chunks, loose })
}

pub(crate) fn page() -> impl Strategy<Value = Page> {
    (
        text(12),
        prop::option::of(text(12)),
        prop::collection::vec(record(), 0..6),
        digest(),
    )
        .prop_map(|(start, end, records, watermarks)| Page {
            start,
            end,
            records,
            watermarks,
        })
}

pub(crate) fn addr() -> impl Strategy<Value = Option<SocketAddr>> {
    prop_oneof![
        Just(None),
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())),
        // The flow information is not carried; the scope id is.
        (any::<u128>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| Some(
            SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope).into()
        )),
    ]
}

pub(crate) fn sender() -> impl Strategy<Value = Sender> {
    (
        (node_id(), int(), addr(), int(), any::<bool>()),
        (liveness(), any::<u64>()),
    )
        .prop_map(
            |((node_id, generation, addr, incarnation, left), (liveness, members_hash))| Sender {
                node_id,
                generation,
                addr,
                incarnation,
                left,
                liveness,
                members_hash,
            },
        )
}

pub(crate) fn liveness() -> impl Strategy<Value = Liveness> {
    prop_oneof![
        Just(Liveness::Alive),
        Just(Liveness::Suspect),
        Just(Liveness::Dead)
    ]
}

pub(crate) fn body() -> impl Strategy<Value = Body> {
    let reply = prop_oneof![delta().prop_map(Reply::Delta), page().prop_map(Reply::Page)];
    prop_oneof![
        (digest(), prop::option::of(text(12))).prop_map(|(digest, resync_from)| Body::Syn(Syn {
            digest,
            resync_from,
            digest_hash: None,
        })),
        any::<u64>().prop_map(|h| Body::Syn(Syn {
            digest: Digest::default(),
            resync_from: None,
            digest_hash: Some(h),
        })),
        (digest(), reply).prop_map(|(digest, reply)| Body::SynAck(SynAck { digest, reply })),
        delta().prop_map(|delta| Body::Ack(Ack { delta })),
        Just(Body::Leave),
        (sender(), any::<bool>())
            .prop_map(|(target, request)| Body::Probe(Probe { target, request })),
        (proptest::collection::vec(any::<u64>(), 0..40), any::<u32>())
            .prop_map(|(buckets, ttl)| Body::MemberSync(MemberSync { buckets, ttl })),
        (proptest::collection::vec(record(), 0..4), any::<u32>())
            .prop_map(|(records, hops)| Body::Push(Push { records, hops })),
        (any::<u64>(), 2..100u32, 1..64usize).prop_flat_map(|(message_id, count, len)| {
            (0..count, prop::collection::vec(any::<u8>(), len)).prop_map(move |(index, data)| {
                Body::Fragment(Fragment {
                    message_id,
                    index,
                    count,
                    total_len: count * 64,
                    data: data.into(),
                })
            })
        }),
    ]
}

/// Envelopes of the current protocol version, within the default limits.
pub(crate) fn envelope() -> impl Strategy<Value = Envelope> {
    (
        text(16),
        sender(),
        proptest::collection::vec(sender(), 0..4),
        body(),
    )
        .prop_map(|(cluster_id, sender, members, body)| Envelope {
            protocol_version: super::PROTOCOL_VERSION,
            cluster_id,
            sender,
            members,
            body,
        })
}
