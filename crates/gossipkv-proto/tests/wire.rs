//! Round trips and robustness of the public encode / decode API.

use bytes::Bytes;
use gossipkv_proto::testing;
use gossipkv_proto::{
    decode, decode_reassembled, encode, encoded_len, fragment, Ack, Body, DecodeError, Envelope,
    Fragment, Limits, Push, Reply, Sender, Syn, SynAck, PROTOCOL_VERSION,
};
use gossipkv_storage::{Origin, Store};
use proptest::prelude::*;

proptest! {
    #[test]
    fn round_trip(env in testing::envelope()) {
        let buf = encode(&env);
        prop_assert_eq!(buf.len(), encoded_len(&env));
        prop_assert_eq!(decode(&buf, &Limits::default()), Ok(env));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&buf, &Limits::default());
    }

    #[test]
    fn truncations_never_panic(env in testing::envelope(), cut in any::<prop::sample::Index>()) {
        let buf = encode(&env);
        let cut = cut.index(buf.len() + 1);
        let res = decode(&buf[..cut], &Limits::default());
        if cut == buf.len() {
            prop_assert_eq!(res, Ok(env));
        }
    }

    #[test]
    fn bit_flips_never_panic(
        env in testing::envelope(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
    ) {
        let mut buf = encode(&env).to_vec();
        for (i, bit) in flips {
            let i = i.index(buf.len());
            buf[i] ^= 1 << bit;
        }
        let _ = decode(&buf, &Limits::default());
    }

    #[test]
    fn tight_limits_never_panic(
        env in testing::envelope(),
        max in 0..8usize,
    ) {
        let limits = Limits {
            max_key_len: max,
            max_node_id_len: max + 1,
            max_cluster_id_len: max,
            max_value_len: max,
            max_records: max,
            max_entries: max,
            ..Limits::default()
        };
        let _ = decode(&encode(&env), &limits);
    }
}

#[test]
fn store_exchange_round_trips() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 7));
    a.set("color", Bytes::from_static(b"blue"), 1_000);
    a.set("shape", Bytes::new(), 1_001);
    a.delete("color", 1_002);
    b.set("size", Bytes::from_static(b"xl"), 1_003);
    let limits = Limits::default();
    let sender_a = Sender::new("a", 1, Some("127.0.0.1:7000".parse().unwrap()));
    let sender_b = Sender::new("b", 7, None);

    let syn = Envelope::new(
        "c",
        sender_b.clone(),
        Body::Syn(Syn {
            digest: b.digest(),
            resync_from: None,
            digest_hash: None,
        }),
    );
    let Body::Syn(syn) = decode(&encode(&syn), &limits).unwrap().body else {
        panic!("not a syn")
    };
    let syn_ack = Envelope::new(
        "c",
        sender_a,
        Body::SynAck(SynAck {
            digest: a.digest(),
            reply: Reply::Delta(a.delta_for(&syn.digest, 1_400, 0)),
        }),
    );
    let Body::SynAck(syn_ack) = decode(&encode(&syn_ack), &limits).unwrap().body else {
        panic!("not a syn-ack")
    };
    let Reply::Delta(delta) = &syn_ack.reply else {
        panic!("not a delta")
    };
    b.apply(delta);
    let ack = Envelope::new(
        "c",
        sender_b,
        Body::Ack(Ack {
            delta: b.delta_for(&syn_ack.digest, 1_400, 0),
        }),
    );
    let Body::Ack(ack) = decode(&encode(&ack), &limits).unwrap().body else {
        panic!("not an ack")
    };
    a.apply(&ack.delta);
    assert_eq!(a.digest().entries.len(), 2);
    assert_eq!(a.records(), b.records());
    assert_eq!(b.get("shape"), Some(Bytes::new()));
    assert!(b.get_record("color").unwrap().is_tombstone());
}

#[test]
fn wrong_version_is_rejected() {
    let mut env = Envelope::new(
        "c",
        Sender::new("a", 1, None),
        Body::Ack(Ack {
            delta: Default::default(),
        }),
    );
    env.protocol_version = PROTOCOL_VERSION + 1;
    assert_eq!(
        decode(&encode(&env), &Limits::default()),
        Err(DecodeError::UnsupportedVersion {
            got: PROTOCOL_VERSION + 1,
            supported: PROTOCOL_VERSION
        })
    );
}

#[test]
fn empty_node_id_is_rejected() {
    let env = Envelope::new(
        "c",
        Sender::new("", 1, None),
        Body::Ack(Ack {
            delta: Default::default(),
        }),
    );
    assert_eq!(
        decode(&encode(&env), &Limits::default()),
        Err(DecodeError::EmptyNodeId)
    );
}

/// A 1 MiB value does not fit a datagram: its envelope is cut into
/// fragments that each decode alone, and the pieces put back together decode
/// to the original envelope.
#[test]
fn a_large_envelope_round_trips_through_fragments() {
    let store = Store::new(Origin::new("a", 1));
    let record = store.write("big", Some(Bytes::from(vec![0x5a; 1 << 20])), 1_000);
    let env = Envelope::new(
        "c",
        Sender::new("a", 1, Some("127.0.0.1:7000".parse().unwrap())),
        Body::Push(Push {
            records: vec![record],
            hops: 0,
        }),
    );
    let encoded = encode(&env);
    let limits = Limits::default();
    assert!(matches!(
        decode(&encoded, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
    let pieces = fragment(&encoded, 42, 60_000);
    assert_eq!(pieces.len(), encoded.len().div_ceil(60_000));
    let mut whole = Vec::new();
    for p in &pieces {
        let datagram = encode(&Envelope::new(
            "c",
            env.sender.clone(),
            Body::Fragment(p.clone()),
        ));
        assert!(datagram.len() <= limits.max_datagram);
        let Ok(Envelope {
            body: Body::Fragment(back),
            ..
        }) = decode(&datagram, &limits)
        else {
            panic!("fragment {} did not decode", p.index);
        };
        assert_eq!(&back, p);
        whole.extend_from_slice(&back.data);
    }
    assert_eq!(decode_reassembled(&whole, &limits), Ok(env));
}

#[test]
fn inconsistent_fragments_are_rejected() {
    let limits = Limits::default();
    let sender = Sender::new("a", 1, None);
    let good = Fragment {
        message_id: 1,
        index: 0,
        count: 2,
        total_len: 10,
        data: Bytes::from_static(b"12345"),
    };
    let bad = [
        Fragment {
            index: 2,
            ..good.clone()
        },
        Fragment {
            count: 1,
            index: 0,
            ..good.clone()
        },
        Fragment {
            data: Bytes::new(),
            ..good.clone()
        },
        Fragment {
            total_len: 4,
            ..good.clone()
        },
        Fragment {
            total_len: limits.max_message as u32 + 1,
            ..good.clone()
        },
    ];
    let env = |f: Fragment| encode(&Envelope::new("c", sender.clone(), Body::Fragment(f)));
    assert!(decode(&env(good.clone()), &limits).is_ok());
    for f in bad {
        assert!(decode(&env(f.clone()), &limits).is_err(), "{f:?} accepted");
    }
    // A reassembled envelope may not be a fragment itself.
    assert!(matches!(
        decode_reassembled(&env(good), &limits),
        Err(DecodeError::Inconsistent(_))
    ));
}

/// Records of a push's or a chunk's own origin do not repeat its node id
/// and generation on the wire, and come back whole.
#[test]
fn records_of_the_enclosing_origin_omit_it() {
    let store = Store::new(Origin::new("writer-with-a-long-node-id", 7));
    let other = Store::new(Origin::new("other", 1));
    let records: Vec<_> = (0..10)
        .map(|i| store.write(&format!("k{i}"), Some(Bytes::from_static(b"v")), 1_000 + i))
        .chain([other.write("x", Some(Bytes::from_static(b"y")), 5)])
        .collect();
    let push = |records: Vec<gossipkv_storage::Record>| {
        Envelope::new(
            "c",
            Sender::new("s", 1, None),
            Body::Push(Push { records, hops: 0 }),
        )
    };
    let env = push(records.clone());
    let limits = Limits::default();
    assert_eq!(decode(&encode(&env), &limits), Ok(env.clone()));
    // Ten records of one writer name it once; as loose records of a delta
    // (no enclosing origin) each names it.
    let same = records[..10].to_vec();
    let pushed = encode(&push(same.clone())).len();
    let loose = encode(&Envelope::new(
        "c",
        Sender::new("s", 1, None),
        Body::Ack(Ack {
            delta: gossipkv_storage::Delta {
                chunks: Vec::new(),
                loose: same,
            },
        }),
    ))
    .len();
    assert!(
        pushed + 9 * "writer-with-a-long-node-id".len() <= loose,
        "push {pushed} bytes, loose {loose} bytes"
    );
    // Push sizes add up: header plus each record's push_record_len, plus at
    // most two bytes as the push's own length prefix grows.
    let header = encode(&push(records[..1].to_vec())).len()
        - gossipkv_proto::push_record_len(&records[0], &records[0]);
    let sum: usize = records
        .iter()
        .map(|r| gossipkv_proto::push_record_len(r, &records[0]))
        .sum();
    let len = encode(&env).len();
    assert!(
        (header + sum..=header + sum + 2).contains(&len),
        "{len} vs {header} + {sum}"
    );
    // A chunk's records of its own origin round trip too.
    let delta = store.delta_for(&other.digest(), 10_000, 0);
    let ack = Envelope::new("c", Sender::new("s", 1, None), Body::Ack(Ack { delta }));
    assert_eq!(decode(&encode(&ack), &limits), Ok(ack));
}
