//! Round trips and robustness of the public encode / decode API.

use bytes::Bytes;
use gossipkv_proto::{
    decode, encode, encoded_len, Ack, Body, DecodeError, Envelope, Limits, Push, Reply, Sender,
    Syn, SynAck, PROTOCOL_VERSION,
};
use gossipkv_storage::{Origin, Store};
use proptest::prelude::*;

mod common;

proptest! {
    #[test]
    fn round_trip(env in common::envelope()) {
        let buf = encode(&env);
        prop_assert_eq!(buf.len(), encoded_len(&env));
        prop_assert_eq!(decode(&buf, &Limits::default()), Ok(env));
    }

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&buf, &Limits::default());
    }

    #[test]
    fn truncations_never_panic(env in common::envelope(), cut in any::<prop::sample::Index>()) {
        let buf = encode(&env);
        let cut = cut.index(buf.len() + 1);
        let res = decode(&buf[..cut], &Limits::default());
        if cut == buf.len() {
            prop_assert_eq!(res, Ok(env));
        }
    }

    #[test]
    fn bit_flips_never_panic(
        env in common::envelope(),
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
        env in common::envelope(),
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
