//! [`proptest`](https://docs.rs/proptest) strategies for the wire format's types, for tests of this
//! crate and of the crates built on it. Compiled only with the `testing`
//! feature (and in this crate's own unit tests):
//!
//! ```toml
//! [dev-dependencies]
//! gossipkv-proto = { workspace = true, features = ["testing"] }
//! ```
//!
//! Two families:
//!
//! * **Arbitrary** ([`envelope`], [`body`], [`record`], [`delta`], ...):
//!   contents drawn from the whole domain of each field (any characters,
//!   integers biased towards the extremes of their varint encodings), for
//!   the encoding's own tests. Envelopes are of the current
//!   [`PROTOCOL_VERSION`] and within
//!   [`Limits::default`](crate::Limits), so they survive
//!   [`encode`] then [`decode`](crate::decode) unchanged, but
//!   their cluster id, node ids and keys almost never meet those of a real
//!   node.
//! * **Hostile peer** ([`envelope_in`] and the other `*_in` strategies,
//!   given a [`World`]): well-formed envelopes of every body kind that pass
//!   the receiver's cluster-id check and every check of
//!   [`decode`](crate::decode), whose node ids, generations and keys come
//!   mostly from the world's pools, so that they collide with the receiving
//!   node's own origin, its peers and its keys; timestamps, sequence numbers
//!   and watermarks are biased towards edge cases. They are meant for
//!   property tests that feed arbitrary traffic to a protocol state machine.
//!
//! Strategies that take a [`World`] take it by value and keep a copy; clone
//! the world to build several.

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::Bytes;
use gossipkv_storage::{
    Delta, Digest, DigestEntry, Ghost, Hlc, Key, Lifetime, NodeId, Origin, OriginChunk, Page,
    Record, Version, HLC_MAX_PHYSICAL_MS,
};
use proptest::prelude::*;

use crate::{
    encode, fragment, Ack, Body, Envelope, Fragment, Limits, Liveness, MemberSync, Probe, Push,
    Reply, Sender, Syn, SynAck, PROTOCOL_VERSION,
};

// ----- arbitrary -------------------------------------------------------------

/// Any characters (unicode, control characters, NUL), up to `max` of them.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Like [`text`] (up to 4 characters) but padded to a length in `0..pad`
/// bytes, to cross varint boundaries of the length prefixes.
pub fn long_text(pad: usize) -> impl Strategy<Value = String> {
    (text(4), 0..pad).prop_map(|(s, n)| s + &"x".repeat(n))
}

/// A non-empty node id of 1 to 10 arbitrary characters.
pub fn node_id() -> impl Strategy<Value = NodeId> {
    prop::collection::vec(any::<char>(), 1..=10).prop_map(|c| NodeId::from(String::from_iter(c)))
}

/// Integers biased towards the extremes of their varint encodings.
pub fn int() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), 0..300u64, any::<u64>(),]
}

/// An origin with an arbitrary [`node_id`] and an [`int`] generation.
pub fn origin() -> impl Strategy<Value = Origin> {
    (node_id(), int()).prop_map(|(node, generation)| Origin { node, generation })
}

/// A value of up to `max` arbitrary bytes, or a tombstone (`None`), or an
/// empty value.
pub fn value(max: usize) -> impl Strategy<Value = Option<Bytes>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Bytes::new())),
        3 => prop::collection::vec(any::<u8>(), 0..=max).prop_map(|v| Some(Bytes::from(v))),
    ]
}

/// Lifetimes: mostly forever, else an expiry anywhere in the clock's range
/// (its ends included), owned or not.
pub fn lifetime() -> BoxedStrategy<Lifetime> {
    let expiry = prop_oneof![Just(1), Just(HLC_MAX_PHYSICAL_MS), 1..=HLC_MAX_PHYSICAL_MS,];
    prop_oneof![
        3 => Just(Lifetime::FOREVER),
        1 => Just(Lifetime::FOREVER.owned()),
        2 => (expiry, any::<bool>()).prop_map(|(t, owned)| {
            let l = Lifetime::expiring(t);
            if owned { l.owned() } else { l }
        }),
    ]
    .boxed()
}

fn make_record(
    (key, value, hlc, o, seq): (String, Option<Bytes>, u64, Origin, u64),
    lifetime: Lifetime,
) -> Record {
    Record {
        key: Key::from(key),
        value,
        version: Version {
            hlc: Hlc::from_u64(hlc),
            node: o.node,
            generation: o.generation,
            seq,
        },
        lifetime,
    }
}

/// Small records with arbitrary contents.
pub fn record() -> BoxedStrategy<Record> {
    ((text(12), value(24), int(), origin(), int()), lifetime())
        .prop_map(|(r, l)| make_record(r, l))
        .boxed()
}

/// Records with long keys, values and node ids (sizes, not contents, vary).
pub fn big_record() -> BoxedStrategy<Record> {
    let value = prop_oneof![
        Just(None),
        (0..20_000usize).prop_map(|n| Some(Bytes::from(vec![0xa5; n]))),
    ];
    let origin = (long_text(300), int()).prop_map(|(n, generation)| Origin {
        node: NodeId::from(n),
        generation,
    });
    ((long_text(300), value, int(), origin, int()), lifetime())
        .prop_map(|(r, l)| make_record(r, l))
        .boxed()
}

/// A digest entry with an arbitrary [`origin`] and an [`int`] watermark.
pub fn digest_entry() -> impl Strategy<Value = DigestEntry> {
    (origin(), int()).prop_map(|(origin, watermark)| DigestEntry { origin, watermark })
}

/// A digest of up to 4 arbitrary entries, complete or not.
pub fn digest() -> impl Strategy<Value = Digest> {
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
pub fn chunk_of(rec: BoxedStrategy<Record>) -> impl Strategy<Value = OriginChunk> {
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
                key: Key::from(key),
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

/// A chunk of small arbitrary [`record`]s (see [`chunk_of`]).
pub fn chunk() -> impl Strategy<Value = OriginChunk> {
    chunk_of(record())
}

/// A delta of up to 3 [`chunk`]s and up to 2 loose [`record`]s.
pub fn delta() -> impl Strategy<Value = Delta> {
    (
        prop::collection::vec(chunk(), 0..4),
        prop::collection::vec(record(), 0..3),
    )
        .prop_map(|(chunks, loose)| Delta { chunks, loose })
}

/// A page with arbitrary bounds, up to 5 [`record`]s and a [`digest`] of
/// watermarks.
pub fn page() -> impl Strategy<Value = Page> {
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

/// No address, or any IPv4 or IPv6 socket address. IPv6 addresses carry no
/// flow information (the wire does not carry it) but any scope id.
pub fn addr() -> impl Strategy<Value = Option<SocketAddr>> {
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

/// A sender (or member entry) with every field arbitrary.
pub fn sender() -> impl Strategy<Value = Sender> {
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

/// Any [`Liveness`].
pub fn liveness() -> impl Strategy<Value = Liveness> {
    prop_oneof![
        Just(Liveness::Alive),
        Just(Liveness::Suspect),
        Just(Liveness::Dead)
    ]
}

/// A body of any kind with arbitrary contents.
pub fn body() -> impl Strategy<Value = Body> {
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

/// Envelopes of the current protocol version, within the default limits,
/// with an arbitrary cluster id, sender, member sample and [`body`].
pub fn envelope() -> impl Strategy<Value = Envelope> {
    (
        text(16),
        sender(),
        proptest::collection::vec(sender(), 0..4),
        address_fields(),
        body(),
    )
        .prop_map(|(cluster_id, sender, members, fields, body)| {
            assembled(cluster_id, sender, members, fields, body)
        })
}

/// Address token, echo and padding length as any peer may send them.
fn address_fields() -> impl Strategy<Value = (u64, u64, usize)> {
    (
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(0usize), 0..600usize],
    )
}

/// An envelope of the current version from its parts.
fn assembled(
    cluster_id: String,
    sender: Sender,
    members: Vec<Sender>,
    (addr_token, addr_echo, padding): (u64, u64, usize),
    body: Body,
) -> Envelope {
    Envelope {
        protocol_version: PROTOCOL_VERSION,
        cluster_id,
        sender,
        members,
        addr_token,
        addr_echo,
        padding,
        body,
    }
}

// ----- hostile peer ----------------------------------------------------------

/// What a hostile peer knows of the cluster it talks to: the strategies
/// ending in `_in` draw the node ids, generations and keys of what they
/// generate mostly from these pools (and sometimes arbitrary ones), so that
/// generated envelopes collide with the receiving node's own origin, its
/// peers' and its keys. Keep the pools small (a handful of entries each) to
/// make collisions, including of whole origins (a node id with a
/// generation), frequent.
///
/// Pool entries that [`decode`](crate::decode) would reject under
/// [`Limits::default`] (empty node ids, node ids longer than 256 bytes, keys
/// longer than 4,096 bytes) are ignored. An empty pool means arbitrary
/// values only. The cluster id is used as is; it must be at most 256 bytes
/// long for the envelopes to decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    /// The cluster id every envelope carries (the receiver's own, so that
    /// envelopes pass its cluster-id check).
    pub cluster_id: String,
    /// Node ids of the cluster: the receiver's own and its peers'.
    pub node_ids: Vec<NodeId>,
    /// Generations in use (for example the receiver's own, and 0 and 1).
    pub generations: Vec<u64>,
    /// Keys the receiver holds or writes.
    pub keys: Vec<String>,
}

impl World {
    /// A world of cluster `cluster_id` with the given pools.
    pub fn new(
        cluster_id: impl Into<String>,
        node_ids: impl IntoIterator<Item = impl Into<NodeId>>,
        generations: impl IntoIterator<Item = u64>,
        keys: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        World {
            cluster_id: cluster_id.into(),
            node_ids: node_ids.into_iter().map(Into::into).collect(),
            generations: generations.into_iter().collect(),
            keys: keys.into_iter().map(Into::into).collect(),
        }
    }

    /// The world with the pool entries that would not decode removed.
    fn valid(&self) -> World {
        let limits = Limits::default();
        World {
            cluster_id: self.cluster_id.clone(),
            node_ids: self
                .node_ids
                .iter()
                .filter(|n| !n.as_str().is_empty() && n.as_str().len() <= limits.max_node_id_len)
                .cloned()
                .collect(),
            generations: self.generations.clone(),
            keys: self
                .keys
                .iter()
                .filter(|k| k.len() <= limits.max_key_len)
                .cloned()
                .collect(),
        }
    }
}

/// Mostly (4 in 5) an entry of `pool`, else one of `other`; only `other`
/// when the pool is empty.
fn pooled<T>(pool: &[T], other: BoxedStrategy<T>) -> BoxedStrategy<T>
where
    T: Clone + Debug + 'static,
{
    if pool.is_empty() {
        other
    } else {
        prop_oneof![4 => prop::sample::select(pool.to_vec()), 1 => other].boxed()
    }
}

/// A hybrid logical clock timestamp in its packed `u64` form, biased towards
/// edge cases: 0, small values, "now-ish" timestamps (physical time around
/// 1.77e12 ms, that is early 2026, some within a few milliseconds of each
/// other so that they tie), the largest physical time (48 bits) and
/// `u64::MAX`, and sometimes any `u64`.
pub fn hlc() -> impl Strategy<Value = u64> {
    const NOW_MS: u64 = 1_770_000_000_000;
    const DAY_MS: u64 = 86_400_000;
    prop_oneof![
        2 => Just(0u64),
        2 => 1..=1_000u64,
        // Now-ish, close together: ties and near-ties between writers.
        3 => (0..8u64, 0..4u16).prop_map(|(ms, l)| Hlc::new(NOW_MS + ms, l).as_u64()),
        // Now-ish, within a few days either way (skewed clocks).
        3 => (NOW_MS - 3 * DAY_MS..NOW_MS + 3 * DAY_MS, any::<u16>())
            .prop_map(|(ms, l)| Hlc::new(ms, l).as_u64()),
        // At and near the largest physical time.
        1 => (0..4u64, any::<u16>())
            .prop_map(|(back, l)| Hlc::new(HLC_MAX_PHYSICAL_MS - back, l).as_u64()),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
}

/// A sequence number, watermark, incarnation or chunk bound, biased towards
/// edge cases: 0, 1, small values, and `u64::MAX`, `u64::MAX - 1` and values
/// within 100 of `u64::MAX`, and sometimes any `u64`.
pub fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => Just(1u64),
        4 => 2..=20u64,
        1 => 21..=10_000u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => u64::MAX - 100..=u64::MAX,
        1 => any::<u64>(),
    ]
}

/// A small count (hops, ttls), biased towards 0, 1 and `u32::MAX`.
fn small_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1u32),
        2..=8u32,
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn node_id_of(w: &World) -> BoxedStrategy<NodeId> {
    pooled(&w.node_ids, node_id().boxed())
}

fn generation_of(w: &World) -> BoxedStrategy<u64> {
    let other = prop_oneof![Just(0u64), Just(1u64), Just(u64::MAX), any::<u64>()].boxed();
    pooled(&w.generations, other)
}

fn origin_of(w: &World) -> BoxedStrategy<Origin> {
    (node_id_of(w), generation_of(w))
        .prop_map(|(node, generation)| Origin { node, generation })
        .boxed()
}

fn key_of(w: &World) -> BoxedStrategy<String> {
    pooled(&w.keys, text(12).boxed())
}

fn record_of(
    w: &World,
    origin: BoxedStrategy<Origin>,
    seq: BoxedStrategy<u64>,
) -> BoxedStrategy<Record> {
    ((key_of(w), value(24), hlc(), origin, seq), lifetime())
        .prop_map(|(r, l)| make_record(r, l))
        .boxed()
}

fn digest_of(w: &World) -> BoxedStrategy<Digest> {
    let entry =
        (origin_of(w), seq()).prop_map(|(origin, watermark)| DigestEntry { origin, watermark });
    (
        prop::collection::vec(entry, 0..6),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(entries, complete, open_start, open_end)| Digest {
            entries,
            complete,
            open_start,
            open_end,
        })
        .boxed()
}

fn chunk_of_world(w: &World) -> BoxedStrategy<OriginChunk> {
    let len = prop_oneof![3 => Just(0u64), 3 => 1..=4u64, 2 => 5..=64u64, 1 => Just(u64::MAX)];
    let w = w.clone();
    (origin_of(&w), seq(), len)
        .prop_flat_map(move |(origin, from, len)| {
            let from = from.min(u64::MAX - len);
            let to = from + len;
            // Inside the chunk's range when there is one.
            let in_range = if len == 0 {
                seq().boxed()
            } else {
                prop_oneof![
                    3 => from + 1..=to,
                    1 => Just(to),
                    1 => seq(),
                ]
                .boxed()
            };
            // Mostly the chunk's own origin, sometimes another.
            let rec_origin = prop_oneof![3 => Just(origin.clone()), 1 => origin_of(&w)].boxed();
            let record = record_of(&w, rec_origin, in_range);
            let ghost = if len == 0 {
                Just(None).boxed()
            } else {
                let ghost_seq = prop_oneof![3 => from + 1..=to, 1 => Just(from + 1), 1 => Just(to)];
                (ghost_seq, key_of(&w), hlc())
                    .prop_map(|(seq, key, hlc)| {
                        Some(Ghost {
                            seq,
                            key: Key::from(key),
                            hlc: Hlc::from_u64(hlc),
                        })
                    })
                    .boxed()
            };
            (
                Just(origin),
                prop::collection::vec(record, 0..4),
                prop::collection::vec(ghost, 0..4),
            )
                .prop_map(move |(origin, records, ghosts)| OriginChunk {
                    origin,
                    from,
                    to,
                    records,
                    ghosts: ghosts.into_iter().flatten().collect(),
                })
        })
        .boxed()
}

fn delta_of(w: &World) -> BoxedStrategy<Delta> {
    (
        prop::collection::vec(chunk_of_world(w), 0..4),
        prop::collection::vec(record_of(w, origin_of(w), seq().boxed()), 0..3),
    )
        .prop_map(|(chunks, loose)| Delta { chunks, loose })
        .boxed()
}

fn page_of(w: &World) -> BoxedStrategy<Page> {
    (
        key_of(w),
        prop::option::of(key_of(w)),
        prop::collection::vec(record_of(w, origin_of(w), seq().boxed()), 0..6),
        digest_of(w),
    )
        .prop_map(|(start, end, records, watermarks)| Page {
            start,
            end,
            records,
            watermarks,
        })
        .boxed()
}

fn addr_of() -> BoxedStrategy<Option<SocketAddr>> {
    prop_oneof![
        2 => Just(None),
        3 => (7946..7950u16)
            .prop_map(|port| Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))),
        2 => addr(),
    ]
    .boxed()
}

/// `alive`: whether the liveness is mostly [`Liveness::Alive`] (as in an
/// envelope's sender) rather than any.
fn sender_of(w: &World, alive: bool) -> BoxedStrategy<Sender> {
    let liveness = if alive {
        prop_oneof![4 => Just(Liveness::Alive), 1 => liveness()].boxed()
    } else {
        liveness().boxed()
    };
    let members_hash = prop_oneof![Just(0u64), any::<u64>()];
    (
        (node_id_of(w), generation_of(w), addr_of()),
        (seq(), prop::bool::weighted(0.2), liveness, members_hash),
    )
        .prop_map(
            |((node_id, generation, addr), (incarnation, left, liveness, members_hash))| Sender {
                node_id,
                generation,
                addr,
                incarnation,
                left,
                liveness,
                members_hash,
            },
        )
        .boxed()
}

fn fragment_of() -> BoxedStrategy<Fragment> {
    let max_message = Limits::default().max_message as u32;
    // Few message ids, so that pieces of different messages meet.
    let message_id = prop_oneof![3 => 0..4u64, 1 => any::<u64>()];
    (
        message_id,
        prop_oneof![3 => 2..=8u32, 1 => 9..=1_000u32],
        1..=64usize,
    )
        .prop_flat_map(move |(message_id, count, len)| {
            let least = count.max(len as u32);
            let total_len = prop_oneof![
                Just(least),
                least..=least + 1_000,
                least..=max_message,
                Just(max_message),
            ];
            (0..count, prop::collection::vec(any::<u8>(), len), total_len).prop_map(
                move |(index, data, total_len)| Fragment {
                    message_id,
                    index,
                    count,
                    total_len,
                    data: data.into(),
                },
            )
        })
        .boxed()
}

/// A body of any kind but [`Body::Fragment`].
fn whole_body_of(w: &World) -> BoxedStrategy<Body> {
    let syn = (digest_of(w), prop::option::of(key_of(w))).prop_map(|(digest, resync_from)| {
        Body::Syn(Syn {
            digest,
            resync_from,
            digest_hash: None,
        })
    });
    let hash_only =
        prop_oneof![Just(Digest::default().fingerprint()), any::<u64>()].prop_map(|h| {
            Body::Syn(Syn {
                digest: Digest::default(),
                resync_from: None,
                digest_hash: Some(h),
            })
        });
    let reply = prop_oneof![
        delta_of(w).prop_map(Reply::Delta),
        page_of(w).prop_map(Reply::Page)
    ];
    let buckets = prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(prop_oneof![Just(0u64), any::<u64>()], 32),
        prop::collection::vec(any::<u64>(), 0..40),
    ];
    // A push's records: mostly of one origin, as real pushes are.
    let push_records = origin_of(w).prop_flat_map({
        let w = w.clone();
        move |o| {
            let origin = prop_oneof![3 => Just(o), 1 => origin_of(&w)].boxed();
            prop::collection::vec(record_of(&w, origin, seq().boxed()), 0..5)
        }
    });
    prop_oneof![
        2 => syn,
        1 => hash_only,
        3 => (digest_of(w), reply).prop_map(|(digest, reply)| Body::SynAck(SynAck { digest, reply })),
        2 => delta_of(w).prop_map(|delta| Body::Ack(Ack { delta })),
        1 => Just(Body::Leave),
        2 => (push_records, small_u32()).prop_map(|(records, hops)| Body::Push(Push { records, hops })),
        1 => (sender_of(w, false), any::<bool>())
            .prop_map(|(target, request)| Body::Probe(Probe { target, request })),
        1 => (buckets, small_u32())
            .prop_map(|(buckets, ttl)| Body::MemberSync(MemberSync { buckets, ttl })),
    ]
    .boxed()
}

fn envelope_with(w: &World, body: BoxedStrategy<Body>) -> BoxedStrategy<Envelope> {
    let cluster_id = w.cluster_id.clone();
    (
        sender_of(w, true),
        prop::collection::vec(sender_of(w, false), 0..4),
        address_fields(),
        body,
    )
        .prop_map(move |(sender, members, fields, body)| {
            assembled(cluster_id.clone(), sender, members, fields, body)
        })
        .boxed()
}

/// A node id: mostly one of `world.node_ids`, sometimes an arbitrary
/// [`node_id`].
pub fn node_id_in(world: World) -> impl Strategy<Value = NodeId> {
    node_id_of(&world.valid())
}

/// A generation: mostly one of `world.generations`, sometimes 0, 1,
/// `u64::MAX` or any.
pub fn generation_in(world: World) -> impl Strategy<Value = u64> {
    generation_of(&world.valid())
}

/// An origin of a [`node_id_in`] and a [`generation_in`].
pub fn origin_in(world: World) -> impl Strategy<Value = Origin> {
    origin_of(&world.valid())
}

/// A key: mostly one of `world.keys`, sometimes arbitrary (up to 12
/// characters, possibly empty).
pub fn key_in(world: World) -> impl Strategy<Value = String> {
    key_of(&world.valid())
}

/// A record of an [`origin_in`] with a [`key_in`], a small value, an empty
/// value or a tombstone, an [`hlc`] timestamp and a [`seq`] sequence number.
pub fn record_in(world: World) -> impl Strategy<Value = Record> {
    let w = world.valid();
    record_of(&w, origin_of(&w), seq().boxed())
}

/// A digest of up to 5 entries ([`origin_in`], [`seq`] watermark), with any
/// `complete`, `open_start` and `open_end` flags.
pub fn digest_in(world: World) -> impl Strategy<Value = Digest> {
    digest_of(&world.valid())
}

/// A chunk of an [`origin_in`], with `from` a [`seq`], `from <= to` (the
/// range often empty or short, sometimes reaching `u64::MAX`), up to 3
/// records (mostly of the chunk's origin and inside its range) and up to 3
/// ghosts inside `(from, to]`.
pub fn chunk_in(world: World) -> impl Strategy<Value = OriginChunk> {
    chunk_of_world(&world.valid())
}

/// A delta of up to 3 [`chunk_in`]s and up to 2 loose [`record_in`]s.
pub fn delta_in(world: World) -> impl Strategy<Value = Delta> {
    delta_of(&world.valid())
}

/// A page between [`key_in`] bounds, with up to 5 [`record_in`]s and a
/// [`digest_in`] of watermarks.
pub fn page_in(world: World) -> impl Strategy<Value = Page> {
    page_of(&world.valid())
}

/// A sender or member entry: a [`node_id_in`] and [`generation_in`], no
/// address, a loopback one or any, a [`seq`] incarnation, any liveness, and
/// a member-list fingerprint 0 or any.
pub fn sender_in(world: World) -> impl Strategy<Value = Sender> {
    sender_of(&world.valid(), false)
}

/// A body of any kind, drawn from the world: `Syn` (with a [`digest_in`],
/// possibly resynchronising from a [`key_in`], or hash-only), `SynAck` (with
/// a [`delta_in`] or a [`page_in`]), `Ack`, `Leave`, `Push` (up to 4
/// [`record_in`]s, mostly of one origin), `Probe` (of a [`sender_in`]),
/// `MemberSync` (no buckets, 32 or any number up to 39), and `Fragment`
/// (a piece that passes decoding but belongs to no real envelope, with few
/// distinct message ids; see [`fragmented_in`] for the pieces of a real
/// one).
pub fn body_in(world: World) -> impl Strategy<Value = Body> {
    let w = world.valid();
    prop_oneof![
        12 => whole_body_of(&w),
        1 => fragment_of().prop_map(Body::Fragment),
    ]
}

/// An envelope a hostile peer could send: current protocol version,
/// `world.cluster_id`, a [`sender_in`] (mostly alive), up to 3
/// [`sender_in`] member entries and a [`body_in`]. It passes every check of
/// [`decode`](crate::decode) under [`Limits::default`]: it survives
/// [`encode`] then [`decode`](crate::decode) unchanged (if the world's
/// cluster id is at most 256 bytes long). With pool entries of at most 32
/// bytes, its encoding stays under 8 KiB (usually well under 2 KiB).
pub fn envelope_in(world: World) -> impl Strategy<Value = Envelope> {
    let w = world.valid();
    envelope_with(&w, body_in(w.clone()).boxed())
}

/// The pieces of one envelope cut into fragments, as a peer sends them: an
/// [`envelope_in`] (with a body other than a fragment) is encoded, cut with
/// [`fragment`] into pieces of 64 to 512 bytes (at least two, padding the
/// envelope's member sample when it is too short to be cut), and each piece
/// is wrapped in an envelope of `world.cluster_id` from a [`sender_in`].
/// The pieces come in a shuffled order. `message_id` computes the message id
/// of the encoded envelope (for example the receiver's own hash, which it
/// checks when the message is complete).
///
/// Concatenated in index order, the pieces' data is the encoded envelope,
/// which [`decode_reassembled`](crate::decode_reassembled) decodes.
pub fn fragmented_in(
    world: World,
    message_id: fn(&[u8]) -> u64,
) -> impl Strategy<Value = Vec<Envelope>> {
    let w = world.valid();
    let inner = envelope_with(&w, whole_body_of(&w));
    let w2 = w.clone();
    (inner, 64..=512usize, sender_of(&w, true))
        .prop_map(move |(mut env, piece_len, sender)| {
            // At least two pieces.
            let filler = Sender::new("filler", 0, None);
            while encode(&env).len() <= piece_len {
                env.members.push(filler.clone());
            }
            let encoded = encode(&env);
            fragment(&encoded, message_id(&encoded), piece_len)
                .into_iter()
                .map(|f| Envelope {
                    protocol_version: PROTOCOL_VERSION,
                    cluster_id: w2.cluster_id.clone(),
                    sender: sender.clone(),
                    members: Vec::new(),
                    addr_token: 0,
                    addr_echo: 0,
                    padding: 0,
                    body: Body::Fragment(f),
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}
