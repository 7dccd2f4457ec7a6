//! Criterion benchmarks of `gossipkv-proto`, group `codec`.
//!
//! Every benchmark declares `Throughput::Bytes` (the encoded envelope's
//! length), so rates are bytes per second.
//!
//! | id | one iteration |
//! |----|---------------|
//! | `encode_synack_{200,1400,64k}` | `encode` of a SynAck envelope carrying a delta |
//! | `decode_synack_{200,1400,64k}` | `decode` of the same datagram (default `Limits`) |
//! | `seal_synack_{200,1400,64k}` | `seal_datagram` of the encoded datagram (XChaCha20-Poly1305, one key) |
//! | `open_synack_{200,1400,64k}` | `open_datagram` of the sealed datagram, in place |
//!
//! The delta holds records of 16-byte keys and 64-byte values written by one
//! origin, as many as fit an encoded envelope of at most 200 bytes (a
//! small datagram, as a push of one write or a probe: one record), 1,400
//! bytes (an MTU-sized datagram, about 15 records) or 60 KiB (the "64k"
//! class: a large UDP datagram, below the 65,507-byte limit; about 600
//! records). The exact sizes are printed when the benchmarks start.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use gossipkv_benches::{empty_peer_digest, Workload, SEED};
use gossipkv_proto::seal::{nonce, open_datagram, seal_datagram, Key, Keyring};
use gossipkv_proto::{decode, encode, encoded_len, Body, Envelope, Limits, Reply, Sender, SynAck};
use gossipkv_storage::{Origin, Store};

/// Envelope sizes benchmarked: id suffix and largest encoded length.
const SIZES: [(&str, usize); 3] = [("200", 200), ("1400", 1_400), ("64k", 60 * 1024)];

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    // More records than the largest envelope can carry.
    let w = Workload::new(2_000, SEED);
    let store = w.filled_store(Origin::new("a", 1));
    let datagrams: Vec<(&str, Envelope, Bytes)> = SIZES
        .iter()
        .map(|&(suffix, max_len)| {
            let env = synack_up_to(&store, max_len);
            let bytes = encode(&env);
            let Body::SynAck(SynAck {
                reply: Reply::Delta(delta),
                ..
            }) = &env.body
            else {
                unreachable!("synack_up_to builds a SynAck with a delta");
            };
            eprintln!(
                "codec benchmarks: synack_{suffix} is {} bytes, {} records",
                bytes.len(),
                delta.record_count()
            );
            assert_eq!(decode(&bytes, &Limits::default()).as_ref(), Ok(&env));
            (suffix, env, bytes)
        })
        .collect();

    let limits = Limits::default();
    let mut group = criterion.benchmark_group("codec");
    for (suffix, env, bytes) in &datagrams {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("encode_synack_{suffix}"), |b| {
            b.iter(|| encode(black_box(env)))
        });
    }
    for (suffix, _, bytes) in &datagrams {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("decode_synack_{suffix}"), |b| {
            b.iter(|| decode(black_box(bytes), &limits))
        });
    }
    let ring = Keyring::new(Key::from_bytes([7; 32]));
    for (suffix, _, bytes) in &datagrams {
        let n = nonce(1_767_225_600_000, [9; 16]);
        let sealed = seal_datagram(&ring, "prod", n, bytes);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("seal_synack_{suffix}"), |b| {
            b.iter(|| seal_datagram(&ring, "prod", n, black_box(bytes)))
        });
        let mut buf = sealed.clone();
        group.bench_function(format!("open_synack_{suffix}"), |b| {
            b.iter(|| {
                buf.copy_from_slice(&sealed);
                open_datagram(&ring, "prod", black_box(&mut buf)).expect("opens")
            })
        });
    }
    group.finish();
    criterion.final_summary();
}

/// A SynAck envelope from `store`'s node whose delta carries the first `n`
/// writes of `store` (which must hold at least `n` keys, written once each).
fn synack(store: &Store, n: usize) -> Envelope {
    let mut delta = store.delta_for(&empty_peer_digest(), usize::MAX, 0);
    let chunk = &mut delta.chunks[0];
    chunk.records.truncate(n);
    chunk.to = chunk.records.last().map_or(chunk.from, |r| r.version.seq);
    Envelope::new(
        "prod",
        Sender::new(
            "a",
            1,
            Some("10.0.0.1:7946".parse().expect("valid address")),
        ),
        Body::SynAck(SynAck {
            digest: store.digest(),
            reply: Reply::Delta(delta),
        }),
    )
}

/// The SynAck with the most records whose encoding is at most `max_len` bytes.
fn synack_up_to(store: &Store, max_len: usize) -> Envelope {
    let (mut lo, mut hi) = (1, store.len());
    assert!(
        encoded_len(&synack(store, lo)) <= max_len,
        "one record exceeds {max_len} bytes"
    );
    assert!(
        encoded_len(&synack(store, hi)) > max_len,
        "the store is too small for {max_len} bytes"
    );
    // Invariant: `lo` records fit, `hi` records do not.
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if encoded_len(&synack(store, mid)) <= max_len {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    synack(store, lo)
}
