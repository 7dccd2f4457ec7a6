//! Unit tests that need the generated protobuf types: size bounds and the
//! rejection of invalid fields.

use bytes::Bytes;
use gossipkv_storage::{
    Delta, Digest, DigestEntry, Ghost, Hlc, NodeId, Origin, OriginChunk, Page, Record, Version,
    CHUNK_OVERHEAD, GHOST_OVERHEAD,
};
use proptest::prelude::*;
use prost::Message;

use crate::convert::{
    chunk_to_pb, delta_to_pb, digest_to_pb, envelope_to_pb, page_to_pb, record_to_pb,
};
use crate::testing::{self, World};
use crate::{
    decode, decode_reassembled, encode, encoded_len, envelope_overhead, pb, Ack, Body, DecodeError,
    Envelope, Limits, Reply, Sender, Syn, SynAck, PROTOCOL_VERSION,
};

/// Encoded size of `msg` as a field (tag, length prefix, body) with a
/// one-byte tag, as every message field of the schema has.
fn field_len(msg: &impl Message) -> usize {
    prost::encoding::message::encoded_len(1, msg)
}

fn chunk_hint(c: &OriginChunk) -> usize {
    CHUNK_OVERHEAD
        + c.origin.node.as_str().len()
        + c.records.iter().map(Record::size_hint).sum::<usize>()
        + c.ghosts
            .iter()
            .map(|g| g.key.len() + GHOST_OVERHEAD)
            .sum::<usize>()
}

/// What [`envelope_overhead`] leaves out: the content of the body.
fn body_content(body: &Body) -> usize {
    match body {
        Body::Syn(s) => s.digest.size_hint() + s.resync_from.as_ref().map_or(0, String::len),
        Body::SynAck(s) => {
            s.digest.size_hint()
                + match &s.reply {
                    Reply::Delta(d) => d.size_hint(),
                    Reply::Page(p) => p.size_hint(),
                }
        }
        Body::Ack(a) => a.delta.size_hint(),
        Body::Leave => 0,
        Body::MemberSync(m) => 9 * m.buckets.len() + 8,
        Body::Probe(p) => {
            crate::member_size_hint(p.target.node_id.as_str().len(), p.target.addr_len()) + 8
        }
        Body::Push(p) => p.records.iter().map(|r| r.size_hint()).sum::<usize>() + 8,
        Body::Fragment(f) => f.data.len() + crate::FRAGMENT_OVERHEAD,
    }
}

/// What the member sample adds.
/// Member entries, and the padding (which a sender adds only where there
/// is room: tag 1, length prefix at most 2 below 16 KiB).
fn extras_content(env: &Envelope) -> usize {
    let padding = if env.padding > 0 { env.padding + 3 } else { 0 };
    padding
        + env
            .members
            .iter()
            .map(|m| crate::member_size_hint(m.node_id.as_str().len(), m.addr_len()))
            .sum::<usize>()
}

fn overhead_of(env: &Envelope) -> usize {
    envelope_overhead(
        env.cluster_id.len(),
        env.sender.node_id.as_str().len(),
        env.sender.addr_len(),
    )
}

fn big_chunk() -> impl Strategy<Value = OriginChunk> {
    testing::chunk_of(testing::big_record())
}

fn big_digest() -> impl Strategy<Value = Digest> {
    let entry = (testing::long_text(300), testing::int(), testing::int()).prop_map(|(n, g, w)| {
        DigestEntry {
            origin: Origin::new(n, g),
            watermark: w,
        }
    });
    (prop::collection::vec(entry, 0..200), any::<bool>()).prop_map(|(entries, complete)| Digest {
        entries,
        complete,
        ..Digest::default()
    })
}

fn big_page() -> impl Strategy<Value = Page> {
    (
        testing::long_text(300),
        prop::option::of(testing::long_text(300)),
        prop::collection::vec(testing::big_record(), 0..4),
        big_digest(),
    )
        .prop_map(|(start, end, records, watermarks)| Page {
            start,
            end,
            records,
            watermarks,
        })
}

proptest! {
    #[test]
    fn record_encoding_within_size_hint(r in testing::big_record()) {
        prop_assert!(field_len(&record_to_pb(&r)) <= r.size_hint());
    }

    #[test]
    fn chunk_encoding_within_size_hint(c in big_chunk()) {
        prop_assert!(field_len(&chunk_to_pb(&c)) <= chunk_hint(&c));
    }

    #[test]
    fn delta_encoding_within_size_hint(
        chunks in prop::collection::vec(big_chunk(), 0..4),
    ) {
        let d = Delta { chunks, loose: Vec::new() };
        prop_assert!(delta_to_pb(&d).encoded_len() <= d.size_hint());
    }

    #[test]
    fn digest_encoding_within_size_hint(d in big_digest()) {
        prop_assert!(field_len(&digest_to_pb(&d)) <= d.size_hint());
    }

    #[test]
    fn page_encoding_within_size_hint(p in big_page()) {
        prop_assert!(field_len(&page_to_pb(&p)) <= p.size_hint());
    }

    #[test]
    fn envelope_within_overhead_and_hints(env in testing::envelope()) {
        let len = encoded_len(&env);
        prop_assert_eq!(len, encode(&env).len());
        prop_assert!(len <= overhead_of(&env) + body_content(&env.body) + extras_content(&env));
    }

    #[test]
    fn big_envelope_within_overhead_and_hints(
        cluster_id in testing::long_text(300),
        node in testing::long_text(300),
        addr in testing::addr(),
        digest in big_digest(),
        reply in prop_oneof![
            prop::collection::vec(big_chunk(), 0..3)
                .prop_map(|chunks| Reply::Delta(Delta { chunks, loose: Vec::new() })),
            big_page().prop_map(Reply::Page),
        ],
    ) {
        let mut sender = Sender::new(node, u64::MAX, addr);
        sender.incarnation = u64::MAX;
        sender.members_hash = u64::MAX;
        sender.left = true;
        let env = Envelope::new(cluster_id, sender, Body::SynAck(SynAck { digest, reply }));
        prop_assert!(encoded_len(&env) <= overhead_of(&env) + body_content(&env.body));
    }
}

fn record_of(key_len: usize, value: Option<usize>, node_len: usize) -> Record {
    Record {
        key: "k".repeat(key_len).into(),
        value: value.map(|n| Bytes::from(vec![1u8; n])),
        version: Version {
            hlc: Hlc::from_u64(u64::MAX),
            node: NodeId::from("n".repeat(node_len)),
            generation: u64::MAX,
            seq: u64::MAX,
        },
        // The longest lifetime encoding: an expiry and ownership.
        lifetime: gossipkv_storage::Lifetime::expiring(u64::MAX).owned(),
    }
}

#[test]
fn size_hints_hold_at_varint_boundaries() {
    let lens = [0, 1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21];
    for &k in &[0, 127, 128, 16_384] {
        for &v in &lens {
            for &n in &[1, 127, 128] {
                let r = record_of(k, Some(v), n);
                assert!(field_len(&record_to_pb(&r)) <= r.size_hint(), "{k} {v} {n}");
                let t = record_of(k, None, n);
                assert!(field_len(&record_to_pb(&t)) <= t.size_hint());
                let c = OriginChunk {
                    origin: Origin::new("n".repeat(n), u64::MAX),
                    from: u64::MAX - 1,
                    to: u64::MAX,
                    records: vec![r.clone(), t],
                    ghosts: vec![Ghost {
                        seq: u64::MAX,
                        key: "g".repeat(k).into(),
                        hlc: Hlc::from_u64(u64::MAX),
                    }],
                };
                assert!(field_len(&chunk_to_pb(&c)) <= chunk_hint(&c));
                let p = Page {
                    start: "s".repeat(k),
                    end: Some("e".repeat(k)),
                    records: vec![r],
                    watermarks: Digest {
                        entries: vec![DigestEntry {
                            origin: Origin::new("n".repeat(n), u64::MAX),
                            watermark: u64::MAX,
                        }],
                        complete: true,
                        ..Digest::default()
                    },
                };
                assert!(field_len(&page_to_pb(&p)) <= p.size_hint());
            }
        }
    }
}

#[test]
fn overhead_constant_covers_the_largest_header() {
    // Longest address text, every integer at its largest.
    let addr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
        .parse()
        .unwrap();
    let sender = Sender::new("n".repeat(300), u64::MAX, Some(addr));
    for body in [
        Body::Syn(Syn {
            digest: Digest::default(),
            resync_from: Some("r".repeat(200)),
            digest_hash: None,
        }),
        Body::SynAck(SynAck {
            digest: Digest::default(),
            reply: Reply::Delta(Delta::default()),
        }),
        Body::Ack(Ack {
            delta: Delta::default(),
        }),
    ] {
        let mut env = Envelope::new("c".repeat(300), sender.clone(), body);
        env.protocol_version = u32::MAX;
        assert!(encoded_len(&env) <= overhead_of(&env) + body_content(&env.body));
    }
}

// ----- rejection of invalid fields -------------------------------------------

fn valid_pb() -> pb::Envelope {
    let record = Record {
        key: "k".into(),
        value: Some(Bytes::from_static(b"v")),
        version: Version {
            hlc: Hlc::new(1_000, 0),
            node: NodeId::from("a"),
            generation: 1,
            seq: 1,
        },
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    };
    let env = Envelope::new(
        "c",
        Sender::new("a", 1, Some("127.0.0.1:7000".parse().unwrap())),
        Body::SynAck(SynAck {
            digest: Digest::default(),
            reply: Reply::Delta(Delta {
                loose: Vec::new(),
                chunks: vec![OriginChunk {
                    origin: Origin::new("a", 1),
                    from: 0,
                    to: 2,
                    records: vec![record],
                    ghosts: vec![Ghost {
                        seq: 2,
                        key: "g".into(),
                        hlc: Hlc::new(900, 0),
                    }],
                }],
            }),
        }),
    );
    envelope_to_pb(&env)
}

fn decode_pb(m: &pb::Envelope) -> Result<Envelope, DecodeError> {
    decode(&m.encode_to_vec(), &Limits::default())
}

fn with_chunk(f: impl FnOnce(&mut pb::OriginChunk)) -> pb::Envelope {
    let mut m = valid_pb();
    let Some(pb::envelope::Body::SynAck(s)) = &mut m.body else {
        unreachable!()
    };
    let Some(pb::syn_ack::Reply::Delta(d)) = &mut s.reply else {
        unreachable!()
    };
    f(&mut d.chunks[0]);
    m
}

#[test]
fn valid_fixture_decodes() {
    assert!(decode_pb(&valid_pb()).is_ok());
}

#[test]
fn rejects_oversized_datagram_before_parsing() {
    let buf = vec![0xffu8; 65_508];
    assert_eq!(
        decode(&buf, &Limits::default()),
        Err(DecodeError::TooLarge {
            len: 65_508,
            max: 65_507
        })
    );
    let small = Limits {
        max_datagram: 10,
        ..Limits::default()
    };
    let buf = valid_pb().encode_to_vec();
    assert!(matches!(
        decode(&buf, &small),
        Err(DecodeError::TooLarge { max: 10, .. })
    ));
}

#[test]
fn rejects_garbage_as_malformed() {
    assert!(matches!(
        decode(&[0xff, 0xff, 0xff], &Limits::default()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn rejects_invalid_utf8_as_malformed() {
    // Envelope.cluster_id (field 2) = [0xff].
    let buf = [0x08, 0x01, 0x12, 0x01, 0xff];
    assert!(matches!(
        decode(&buf, &Limits::default()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn rejects_other_protocol_versions() {
    let mut m = valid_pb();
    m.protocol_version = 2;
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::UnsupportedVersion {
            got: 2,
            supported: PROTOCOL_VERSION
        })
    );
    m.protocol_version = 0;
    assert!(matches!(
        decode_pb(&m),
        Err(DecodeError::UnsupportedVersion { got: 0, .. })
    ));
}

#[test]
fn rejects_missing_fields() {
    let mut m = valid_pb();
    m.sender = None;
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::MissingField("Envelope.sender"))
    );

    let mut m = valid_pb();
    m.body = None;
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::MissingField("Envelope.body"))
    );

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.reply = None;
    }
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::MissingField("SynAck.reply"))
    );

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.digest = None;
    }
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::MissingField("SynAck.digest"))
    );

    let mut m = valid_pb();
    m.body = Some(pb::envelope::Body::Syn(pb::Syn::default()));
    assert_eq!(decode_pb(&m), Err(DecodeError::MissingField("Syn.digest")));

    let mut m = valid_pb();
    m.body = Some(pb::envelope::Body::Ack(pb::Ack::default()));
    assert_eq!(decode_pb(&m), Err(DecodeError::MissingField("Ack.delta")));

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.reply = Some(pb::syn_ack::Reply::Page(pb::Page::default()));
    }
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::MissingField("Page.watermarks"))
    );
}

#[test]
fn rejects_empty_node_ids() {
    let mut m = valid_pb();
    m.sender.as_mut().unwrap().node_id.clear();
    assert_eq!(decode_pb(&m), Err(DecodeError::EmptyNodeId));

    let m = with_chunk(|c| c.node_id.clear());
    assert_eq!(decode_pb(&m), Err(DecodeError::EmptyNodeId));

    // Inside a chunk, an empty record node id means the chunk's origin, and
    // the record then carries no generation of its own.
    let m = with_chunk(|c| {
        c.records[0].node_id.clear();
        c.records[0].generation = 5;
    });
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    let m = with_chunk(|c| {
        c.records[0].node_id.clear();
        c.records[0].generation = 0;
    });
    assert!(decode_pb(&m).is_ok());
    // Loose records have no enclosing origin: they must name theirs.
    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        if let Some(pb::syn_ack::Reply::Delta(d)) = &mut s.reply {
            let mut r = d.chunks[0].records[0].clone();
            r.node_id.clear();
            r.generation = 0;
            d.loose.push(r);
        }
    }
    assert_eq!(decode_pb(&m), Err(DecodeError::EmptyNodeId));

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.digest.as_mut().unwrap().entries.push(pb::Watermark {
            node_id: String::new(),
            generation: 1,
            seq: 1,
        });
    }
    assert_eq!(decode_pb(&m), Err(DecodeError::EmptyNodeId));
}

#[test]
fn rejects_bad_addresses() {
    for bad in ["localhost:80", "1.2.3.4", "1.2.3.4:99999", "[::1]", "é"] {
        let mut m = valid_pb();
        m.sender.as_mut().unwrap().addr = bad.to_owned();
        assert_eq!(decode_pb(&m), Err(DecodeError::InvalidAddr(bad.to_owned())));
    }
    // The quoted text is cut, on a character boundary.
    let mut m = valid_pb();
    m.sender.as_mut().unwrap().addr = "é".repeat(100);
    assert_eq!(decode_pb(&m), Err(DecodeError::InvalidAddr("é".repeat(32))));
}

#[test]
fn rejects_lengths_above_limits() {
    let limits = Limits::default();
    let m = with_chunk(|c| c.records[0].key = "k".repeat(4_097));
    assert_eq!(
        decode_pb(&m),
        Err(DecodeError::LimitExceeded {
            what: "key length",
            len: 4_097,
            max: limits.max_key_len
        })
    );
    let m = with_chunk(|c| c.records[0].key = "k".repeat(4_096));
    assert!(decode_pb(&m).is_ok());

    let m = with_chunk(|c| c.ghosts[0].key = "k".repeat(4_097));
    assert!(matches!(
        decode_pb(&m),
        Err(DecodeError::LimitExceeded {
            what: "key length",
            ..
        })
    ));

    let mut m = valid_pb();
    m.sender.as_mut().unwrap().node_id = "n".repeat(257);
    assert!(matches!(
        decode_pb(&m),
        Err(DecodeError::LimitExceeded {
            what: "node id length",
            len: 257,
            max: 256
        })
    ));

    let mut m = valid_pb();
    m.cluster_id = "c".repeat(257);
    assert!(matches!(
        decode_pb(&m),
        Err(DecodeError::LimitExceeded {
            what: "cluster id length",
            ..
        })
    ));

    let m = with_chunk(|c| c.records[0].value = Bytes::from(vec![0u8; 100]));
    let small = Limits {
        max_value_len: 99,
        ..Limits::default()
    };
    assert_eq!(
        decode(&m.encode_to_vec(), &small),
        Err(DecodeError::LimitExceeded {
            what: "value length",
            len: 100,
            max: 99
        })
    );

    let mut m = valid_pb();
    m.body = Some(pb::envelope::Body::Syn(pb::Syn {
        digest: Some(pb::Digest::default()),
        resync_from: "k".repeat(4_097),
        resyncing: true,
        ..pb::Syn::default()
    }));
    assert!(matches!(
        decode_pb(&m),
        Err(DecodeError::LimitExceeded {
            what: "key length",
            ..
        })
    ));
}

#[test]
fn rejects_counts_above_limits() {
    let limits = Limits {
        max_records: 3,
        max_entries: 2,
        ..Limits::default()
    };
    // Records are counted over all chunks.
    let mut m = with_chunk(|c| {
        let r = c.records[0].clone();
        c.records.push(r.clone());
    });
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        if let Some(pb::syn_ack::Reply::Delta(d)) = &mut s.reply {
            let c = d.chunks[0].clone();
            d.chunks.push(c);
        }
    }
    assert_eq!(
        decode(&m.encode_to_vec(), &limits),
        Err(DecodeError::LimitExceeded {
            what: "records",
            len: 4,
            max: 3
        })
    );

    let m = with_chunk(|c| {
        let g = c.ghosts[0].clone();
        c.ghosts.extend([g.clone(), g]);
    });
    assert_eq!(
        decode(&m.encode_to_vec(), &limits),
        Err(DecodeError::LimitExceeded {
            what: "ghosts",
            len: 3,
            max: 2
        })
    );

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.digest.as_mut().unwrap().entries = vec![
            pb::Watermark {
                node_id: "a".into(),
                generation: 1,
                seq: 1,
            };
            3
        ];
    }
    assert_eq!(
        decode(&m.encode_to_vec(), &limits),
        Err(DecodeError::LimitExceeded {
            what: "digest entries",
            len: 3,
            max: 2
        })
    );

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.reply = Some(pb::syn_ack::Reply::Delta(pb::Delta {
            chunks: vec![pb::OriginChunk::default(); 3],
            loose: Vec::new(),
        }));
    }
    assert!(matches!(
        decode(&m.encode_to_vec(), &limits),
        Err(DecodeError::LimitExceeded {
            what: "delta chunks",
            ..
        })
    ));

    // A page's records count too.
    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.reply = Some(pb::syn_ack::Reply::Page(pb::Page {
            records: vec![with_record(); 4],
            watermarks: Some(pb::Digest::default()),
            ..pb::Page::default()
        }));
    }
    assert!(matches!(
        decode(&m.encode_to_vec(), &limits),
        Err(DecodeError::LimitExceeded {
            what: "records",
            ..
        })
    ));
}

#[test]
fn expiries_past_the_clocks_range_decode_at_its_end() {
    for (sent, got) in [
        (u64::MAX, gossipkv_storage::HLC_MAX_PHYSICAL_MS),
        (
            gossipkv_storage::HLC_MAX_PHYSICAL_MS + 1,
            gossipkv_storage::HLC_MAX_PHYSICAL_MS,
        ),
        (1, 1),
        (0, 0),
    ] {
        let m = with_chunk(|c| {
            c.records[0].expires_ms = sent;
            c.records[0].ephemeral = true;
        });
        let Ok(Envelope {
            body:
                Body::SynAck(SynAck {
                    reply: Reply::Delta(d),
                    ..
                }),
            ..
        }) = decode_pb(&m)
        else {
            panic!("a record with expiry {sent} rejected")
        };
        let l = d.chunks[0].records[0].lifetime;
        assert_eq!((l.expires_ms, l.ephemeral), (got, true), "sent {sent}");
    }
}

fn with_record() -> pb::Record {
    let mut out = None;
    with_chunk(|c| out = Some(c.records[0].clone()));
    out.unwrap()
}

#[test]
fn rejects_inconsistent_fields() {
    let m = with_chunk(|c| c.records[0].deleted = true);
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    // A tombstone without a value is fine.
    let m = with_chunk(|c| {
        c.records[0].deleted = true;
        c.records[0].value = Bytes::new();
    });
    let Ok(Envelope {
        body: Body::SynAck(SynAck {
            reply: Reply::Delta(d),
            ..
        }),
        ..
    }) = decode_pb(&m)
    else {
        panic!("tombstone rejected")
    };
    assert!(d.chunks[0].records[0].is_tombstone());

    let m = with_chunk(|c| {
        c.from = 3;
        c.to = 2;
    });
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    let m = with_chunk(|c| c.ghosts[0].seq = 0);
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    let m = with_chunk(|c| c.ghosts[0].seq = 3);
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));

    let mut m = valid_pb();
    m.body = Some(pb::envelope::Body::Syn(pb::Syn {
        digest: Some(pb::Digest::default()),
        resync_from: "k".into(),
        resyncing: false,
        ..pb::Syn::default()
    }));
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));

    // A hash-only Syn carries no digest entries and no resync request.
    for (entries, resyncing) in [(1, false), (0, true)] {
        let mut m = valid_pb();
        m.body = Some(pb::envelope::Body::Syn(pb::Syn {
            digest: Some(pb::Digest {
                entries: vec![
                    pb::Watermark {
                        node_id: "a".into(),
                        generation: 1,
                        seq: 1
                    };
                    entries
                ],
                ..pb::Digest::default()
            }),
            resyncing,
            hash_only: true,
            digest_hash: 7,
            ..pb::Syn::default()
        }));
        assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    }

    let mut m = valid_pb();
    if let Some(pb::envelope::Body::SynAck(s)) = &mut m.body {
        s.reply = Some(pb::syn_ack::Reply::Page(pb::Page {
            end: "z".into(),
            has_end: false,
            watermarks: Some(pb::Digest::default()),
            ..pb::Page::default()
        }));
    }
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
}

#[test]
fn empty_strings_and_flags_round_trip() {
    // An empty resync key and an empty page end are distinct from none.
    let sender = Sender::new("a", 0, None);
    for body in [
        Body::Syn(Syn {
            digest: Digest::default(),
            resync_from: Some(String::new()),
            digest_hash: None,
        }),
        Body::SynAck(SynAck {
            digest: Digest::default(),
            reply: Reply::Page(Page {
                start: String::new(),
                end: Some(String::new()),
                records: vec![],
                watermarks: Digest::default(),
            }),
        }),
    ] {
        let env = Envelope::new("", sender.clone(), body);
        assert_eq!(decode(&encode(&env), &Limits::default()), Ok(env));
    }
}

#[test]
fn timestamp_deltas_only_inside_pushes_with_a_base() {
    // Outside a push: a delta is refused.
    let m = with_chunk(|c| c.records[0].hlc_delta = 3);
    assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    // A push with a delta but no base, or with both a timestamp and a delta.
    let record = pb::Record {
        hlc: 0,
        hlc_delta: 2,
        ..with_record()
    };
    for (base, hlc) in [(0, 0), (1_000, 5)] {
        let mut m = valid_pb();
        m.body = Some(pb::envelope::Body::Push(pb::Push {
            records: vec![pb::Record {
                hlc,
                ..record.clone()
            }],
            base_hlc: base,
            ..pb::Push::default()
        }));
        assert!(matches!(decode_pb(&m), Err(DecodeError::Inconsistent(_))));
    }
    // With a base, the delta counts from it.
    let mut m = valid_pb();
    m.body = Some(pb::envelope::Body::Push(pb::Push {
        records: vec![record],
        base_hlc: 1_000,
        ..pb::Push::default()
    }));
    let Ok(Envelope {
        body: Body::Push(p),
        ..
    }) = decode_pb(&m)
    else {
        panic!("push with a base did not decode");
    };
    assert_eq!(p.records[0].version.hlc.as_u64(), 1_002);
}

// ----- the hostile-peer strategies of `testing` -------------------------------

/// A world like a test of the protocol would use: a few short node ids,
/// generations and keys.
fn small_world() -> World {
    World::new("prod", ["a", "b", "c"], [1, 2], ["k", "key", ""])
}

/// Worlds with odd pools: empty or long node ids and keys (invalid ones are
/// to be ignored), any generations, possibly empty pools.
fn odd_world() -> impl Strategy<Value = World> {
    (
        testing::text(8),
        prop::collection::vec(
            prop_oneof![testing::text(4), Just(String::new()), Just("n".repeat(257))],
            0..4,
        ),
        prop::collection::vec(testing::int(), 0..3),
        prop::collection::vec(
            prop_oneof![
                testing::text(4),
                Just("k".repeat(4_097)),
                Just("k".repeat(4_096))
            ],
            0..4,
        ),
    )
        .prop_map(|(cluster_id, node_ids, generations, keys)| {
            World::new(cluster_id, node_ids, generations, keys)
        })
}

/// Checks an envelope of [`testing::envelope_in`]`(world)`; `small`: the
/// world's pool entries are short, so the encoding must stay under 8 KiB.
fn check_hostile(world: &World, env: &Envelope, small: bool) -> Result<(), TestCaseError> {
    prop_assert_eq!(&env.cluster_id, &world.cluster_id);
    prop_assert_eq!(env.protocol_version, PROTOCOL_VERSION);
    let buf = encode(env);
    prop_assert_eq!(buf.len(), encoded_len(env));
    prop_assert!(!small || buf.len() < 8 << 10, "{} bytes", buf.len());
    prop_assert!(buf.len() <= overhead_of(env) + body_content(&env.body) + extras_content(env));
    let limits = Limits::default();
    if buf.len() <= limits.max_datagram {
        prop_assert_eq!(decode(&buf, &limits), Ok(env.clone()));
    } else {
        // Too big for one datagram (an odd world's 4 KiB keys add up): a
        // datagram this long is refused before parsing, and the same bytes
        // sent as fragments decode once reassembled.
        prop_assert_eq!(
            decode(&buf, &limits),
            Err(DecodeError::TooLarge {
                len: buf.len(),
                max: limits.max_datagram,
            })
        );
        if !matches!(env.body, Body::Fragment(_)) {
            prop_assert_eq!(decode_reassembled(&buf, &limits), Ok(env.clone()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn hostile_envelopes_round_trip(env in testing::envelope_in(small_world())) {
        check_hostile(&small_world(), &env, true)?;
    }

    #[test]
    fn hostile_envelopes_of_odd_worlds_round_trip(
        (world, env) in odd_world().prop_flat_map(|w| (Just(w.clone()), testing::envelope_in(w))),
    ) {
        check_hostile(&world, &env, false)?;
    }
}

/// The message id [`fragmented_in`](testing::fragmented_in) is given in the
/// tests: the length and the first bytes.
fn test_message_id(encoded: &[u8]) -> u64 {
    let mut head = [0u8; 4];
    let n = encoded.len().min(4);
    head[..n].copy_from_slice(&encoded[..n]);
    ((encoded.len() as u64) << 32) | u64::from(u32::from_le_bytes(head))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn hostile_fragments_reassemble(
        pieces in testing::fragmented_in(small_world(), test_message_id),
    ) {
        prop_assert!(pieces.len() >= 2);
        let mut frags = Vec::new();
        for env in &pieces {
            check_hostile(&small_world(), env, true)?;
            prop_assert_eq!(&env.sender, &pieces[0].sender);
            let Body::Fragment(f) = &env.body else {
                return Err(TestCaseError::fail("a piece is not a fragment"));
            };
            frags.push(f.clone());
        }
        frags.sort_by_key(|f| f.index);
        let count = frags.len();
        let mut whole = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            prop_assert_eq!(f.index as usize, i);
            prop_assert_eq!(f.count as usize, count);
            whole.extend_from_slice(&f.data);
        }
        prop_assert_eq!(frags[0].total_len as usize, whole.len());
        prop_assert_eq!(frags[0].message_id, test_message_id(&whole));
        let inner = crate::decode_reassembled(&whole, &Limits::default());
        prop_assert!(inner.is_ok(), "{:?}", inner);
        let inner = inner.unwrap();
        prop_assert_eq!(&inner.cluster_id, &small_world().cluster_id);
        let reencoded = encode(&inner);
        prop_assert_eq!(&reencoded[..], &whole[..]);
    }
}

/// Over many envelopes of [`testing::envelope_in`]: every body kind shows
/// up, and node ids, origins and keys mostly come from the world's pools.
#[test]
fn hostile_envelopes_cover_kinds_and_collide_with_the_world() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let world = small_world();
    let own = Origin::new("a", 1);
    let strategy = testing::envelope_in(world.clone());
    let mut runner = TestRunner::deterministic();
    let mut kinds = std::collections::BTreeSet::new();
    let (mut senders, mut own_senders, mut pooled_keys, mut keys, mut own_records) =
        (0, 0, 0, 0, 0);
    let mut max_len = 0;
    for _ in 0..3_000 {
        let env = strategy.new_tree(&mut runner).unwrap().current();
        max_len = max_len.max(encode(&env).len());
        senders += 1;
        own_senders += usize::from(env.sender.origin() == own);
        let mut records: Vec<&Record> = Vec::new();
        let kind = match &env.body {
            Body::Syn(s) if s.digest_hash.is_some() => "syn hash-only",
            Body::Syn(s) if s.resync_from.is_some() => "syn resync",
            Body::Syn(_) => "syn",
            Body::SynAck(SynAck {
                reply: Reply::Delta(d),
                ..
            })
            | Body::Ack(Ack { delta: d }) => {
                records.extend(d.loose.iter());
                records.extend(d.chunks.iter().flat_map(|c| &c.records));
                if d.chunks.iter().any(|c| !c.ghosts.is_empty()) {
                    kinds.insert("ghosts");
                }
                if matches!(env.body, Body::Ack(_)) {
                    "ack"
                } else {
                    "synack delta"
                }
            }
            Body::SynAck(SynAck {
                reply: Reply::Page(p),
                ..
            }) => {
                records.extend(p.records.iter());
                "synack page"
            }
            Body::Leave => "leave",
            Body::Push(p) => {
                records.extend(p.records.iter());
                "push"
            }
            Body::Fragment(_) => "fragment",
            Body::Probe(_) => "probe",
            Body::MemberSync(_) => "member sync",
        };
        kinds.insert(kind);
        for r in records {
            keys += 1;
            pooled_keys += usize::from(world.keys.iter().any(|k| **k == *r.key));
            own_records += usize::from(r.version.node == own.node && r.version.generation == 1);
            if r.value.is_none() {
                kinds.insert("tombstone");
            }
        }
    }
    let expected = [
        "ack",
        "fragment",
        "ghosts",
        "leave",
        "member sync",
        "probe",
        "push",
        "syn",
        "syn hash-only",
        "syn resync",
        "synack delta",
        "synack page",
        "tombstone",
    ];
    assert_eq!(kinds, expected.into_iter().collect(), "kinds seen");
    // 4/5 of node ids and generations from pools of 3 and 2: about 1/9 of
    // senders are the receiver's own origin.
    assert!(own_senders * 20 > senders, "{own_senders} of {senders}");
    assert!(pooled_keys * 10 > keys * 7, "{pooled_keys} of {keys}");
    assert!(own_records * 20 > keys, "{own_records} of {keys}");
    assert!(max_len < 8 << 10, "{max_len}");
    println!("largest encoding: {max_len} bytes");
}
