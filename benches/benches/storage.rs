//! Criterion benchmarks of `gossipkv-storage`, group `storage`.
//!
//! Every benchmark declares `Throughput::Elements`, so rates are operations
//! (or records) per second. Keys are 16 bytes (`key-000000000042`), values
//! 64 bytes, and random keys come from a precomputed pattern drawn with a
//! fixed-seed `SmallRng`.
//!
//! | id | one iteration |
//! |----|---------------|
//! | `get_1m` | 1,000 `Store::get` of random existing keys |
//! | `get_1m_2threads` | two threads doing 1,000 `get` each, concurrently (2,000 elements) |
//! | `set_1m` | 1,000 `Store::set` of random existing keys |
//! | `baseline_get_1m`, `baseline_get_1m_2threads`, `baseline_set_1m` | the same on a `parking_lot::RwLock<HashMap<String, Bytes>>` |
//! | `merge` | `Store::merge` of 1,000 fresh records of another origin (newer versions of random existing keys) |
//! | `delta_build_1400`, `delta_build_64k` | one `Store::delta_for` an empty peer from a 100,000-key store, budget 1,400 bytes / 64 KiB (elements: records in the delta) |
//! | `resync_full_20k` | a full re-synchronisation of an empty store from a 20,000-key store, page by page (`Store::page`, then `Store::apply_page`), 1,400-byte pages (elements: records moved) |
//!
//! The `*_1m` stores and `merge`'s store hold one million keys, or
//! `GOSSIPKV_BENCH_KEYS` keys when that variable is set (`cargo xtask bench
//! --quick` sets 100,000); the ids keep the `_1m` suffix. Each store is built
//! once per benchmark function, outside the measurement.
//!
//! Writes leave index entries of superseded versions ("ghosts") that a node
//! collects periodically; `set_1m` and `merge` collect them every few million
//! operations *outside* the timed section, so they measure a steady state
//! whose memory stays bounded, without the cost of collection itself.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use gossipkv_benches::{empty_peer_digest, key_count, Workload, BATCH, NOW_MS, SEED};
use gossipkv_storage::{
    Digest, DigestEntry, Hlc, Origin, Record, Store, Version, HLC_MAX_PHYSICAL_MS,
};
use parking_lot::RwLock;

/// Keys of the store `resync_full_20k` pages through.
const RESYNC_STORE_KEYS: usize = 20_000;
/// Keys of the store `delta_build_*` reads from.
const DELTA_STORE_KEYS: usize = 100_000;
/// Operations after which `set_1m` and `merge` collect ghosts (untimed).
const COLLECT_EVERY_OPS: u64 = 4_000_000;
/// The baseline: one lock around a std `HashMap`.
type Baseline = RwLock<HashMap<String, Bytes>>;

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let keys = key_count();
    eprintln!("storage benchmarks: *_1m and merge use {keys} keys");
    let mut group = criterion.benchmark_group("storage");
    store_benches(&mut group, keys);
    baseline_benches(&mut group, keys);
    merge_bench(&mut group, keys);
    delta_build_benches(&mut group);
    resync_bench(&mut group);
    group.finish();
    criterion.final_summary();
}

/// Runs `iters` batches for `Bencher::iter_custom`: `prepare` (untimed)
/// builds each batch's input, `run` (timed) consumes it.
fn timed_batches<I>(
    iters: u64,
    mut prepare: impl FnMut() -> I,
    mut run: impl FnMut(I),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let input = prepare();
        let start = Instant::now();
        run(input);
        total += start.elapsed();
    }
    total
}

/// Runs `iters` batches on each of two threads at once (threads started
/// before, and timed from, a common barrier); `batch(cursor)` does one batch
/// and advances `cursor`. The two cursors persist across calls.
fn two_threads(
    iters: u64,
    cursors: &mut [usize; 2],
    batch: impl Fn(&mut usize) + Sync,
) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        let workers: Vec<_> = cursors
            .iter()
            .map(|&start| {
                let (barrier, batch) = (&barrier, &batch);
                s.spawn(move || {
                    let mut cursor = start;
                    barrier.wait();
                    for _ in 0..iters {
                        batch(&mut cursor);
                    }
                    cursor
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let ends: Vec<usize> = workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread panicked"))
            .collect();
        let elapsed = start.elapsed();
        cursors.copy_from_slice(&ends);
        elapsed
    })
}

/// Removes every ghost (and tombstone) of `store`, whatever its age.
fn collect_ghosts(store: &Store) {
    black_box(store.collect_garbage(HLC_MAX_PHYSICAL_MS, 0));
}

/// `get_1m`, `get_1m_2threads` and `set_1m` on one pre-filled store.
fn store_benches(group: &mut BenchmarkGroup<'_, WallTime>, keys: usize) {
    let w = Workload::new(keys, SEED);
    let store = w.filled_store(Origin::new("a", 1));
    let get_batch = |cursor: &mut usize| {
        for &i in w.batch(cursor) {
            black_box(store.get(&w.keys[i as usize]));
        }
    };

    group.throughput(Throughput::Elements(BATCH as u64));
    let mut cursor = 0;
    group.bench_function("get_1m", |b| b.iter(|| get_batch(&mut cursor)));

    group.throughput(Throughput::Elements(2 * BATCH as u64));
    let mut cursors = [0, w.second_cursor()];
    group.bench_function("get_1m_2threads", |b| {
        b.iter_custom(|iters| two_threads(iters, &mut cursors, get_batch))
    });

    // Last, as it writes: the gets above read the freshly filled store.
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut cursor = 0;
    let mut since_collect = 0;
    group.bench_function("set_1m", |b| {
        b.iter_custom(|iters| {
            timed_batches(
                iters,
                || {
                    if since_collect >= COLLECT_EVERY_OPS {
                        collect_ghosts(&store);
                        since_collect = 0;
                    }
                    since_collect += BATCH as u64;
                    w.batch(&mut cursor)
                },
                |batch| {
                    for &i in batch {
                        let i = i as usize;
                        black_box(store.set(&w.keys[i], w.values[i].clone(), NOW_MS));
                    }
                },
            )
        })
    });
}

/// `baseline_get_1m`, `baseline_get_1m_2threads` and `baseline_set_1m`.
fn baseline_benches(group: &mut BenchmarkGroup<'_, WallTime>, keys: usize) {
    let w = Workload::new(keys, SEED);
    let map: Baseline = RwLock::new(
        w.keys
            .iter()
            .cloned()
            .zip(w.values.iter().cloned())
            .collect(),
    );
    let get_batch = |cursor: &mut usize| {
        for &i in w.batch(cursor) {
            black_box(map.read().get(&w.keys[i as usize]).cloned());
        }
    };

    group.throughput(Throughput::Elements(BATCH as u64));
    let mut cursor = 0;
    group.bench_function("baseline_get_1m", |b| b.iter(|| get_batch(&mut cursor)));

    group.throughput(Throughput::Elements(2 * BATCH as u64));
    let mut cursors = [0, w.second_cursor()];
    group.bench_function("baseline_get_1m_2threads", |b| {
        b.iter_custom(|iters| two_threads(iters, &mut cursors, get_batch))
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    let mut cursor = 0;
    group.bench_function("baseline_set_1m", |b| {
        b.iter_custom(|iters| {
            timed_batches(
                iters,
                || w.batch(&mut cursor),
                |batch| {
                    for &i in batch {
                        let i = i as usize;
                        let value = w.values[i].clone();
                        let mut map = map.write();
                        // Overwrite in place, as the store does, rather than
                        // allocating a new `String` key for every write.
                        match map.get_mut(&w.keys[i]) {
                            Some(slot) => *slot = value,
                            None => {
                                map.insert(w.keys[i].clone(), value);
                            }
                        }
                    }
                },
            )
        })
    });
}

/// `merge`: batches of 1,000 records of origin `b`, each a newer version of
/// a random key of a store filled by origin `a`.
fn merge_bench(group: &mut BenchmarkGroup<'_, WallTime>, keys: usize) {
    let w = Workload::new(keys, SEED ^ 1);
    let store = w.filled_store(Origin::new("a", 1));
    let peer = Origin::new("b", 1);
    // Newer than every write of `a` (all at NOW_MS plus a few logical ticks).
    let base = Hlc::new(NOW_MS + 3_600_000, 0).as_u64();
    let mut seq = 0u64;
    let mut cursor = 0;
    let mut since_collect = 0;

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("merge", |b| {
        b.iter_custom(|iters| {
            timed_batches(
                iters,
                || {
                    if since_collect >= COLLECT_EVERY_OPS {
                        // Merges do not raise watermarks (applying a delta
                        // does); raise `b`'s so its ghosts can be collected.
                        store.raise_watermarks(&Digest {
                            entries: vec![DigestEntry {
                                origin: peer.clone(),
                                watermark: seq,
                            }],
                            ..Digest::default()
                        });
                        collect_ghosts(&store);
                        since_collect = 0;
                    }
                    since_collect += BATCH as u64;
                    w.batch(&mut cursor)
                        .iter()
                        .map(|&i| {
                            seq += 1;
                            let i = i as usize;
                            // A fresh key allocation, as if decoded from the wire.
                            Record {
                                key: w.keys[i].as_str().into(),
                                value: Some(w.values[i].clone()),
                                version: Version::new(Hlc::from_u64(base + seq), &peer, seq),
                                lifetime: gossipkv_storage::Lifetime::FOREVER,
                            }
                        })
                        .collect::<Vec<_>>()
                },
                |records| {
                    for record in records {
                        black_box(store.merge(record));
                    }
                },
            )
        })
    });
}

/// `delta_build_1400` and `delta_build_64k`: a delta for a peer that holds
/// nothing, from a store of [`DELTA_STORE_KEYS`] keys.
fn delta_build_benches(group: &mut BenchmarkGroup<'_, WallTime>) {
    let w = Workload::new(DELTA_STORE_KEYS, SEED);
    let store = w.filled_store(Origin::new("a", 1));
    let peer = empty_peer_digest();
    for (id, budget) in [("delta_build_1400", 1_400), ("delta_build_64k", 64 * 1024)] {
        let records = store.delta_for(&peer, budget, 0).record_count();
        assert!(records > 0, "{id}: empty delta");
        group.throughput(Throughput::Elements(records as u64));
        group.bench_function(id, |b| {
            b.iter(|| store.delta_for(black_box(&peer), black_box(budget), 0))
        });
    }
}

/// `resync_full_20k`: every page of a [`RESYNC_STORE_KEYS`]-key store,
/// built and applied to an empty store, as a joiner's full
/// re-synchronisation does.
fn resync_bench(group: &mut BenchmarkGroup<'_, WallTime>) {
    let w = Workload::new(RESYNC_STORE_KEYS, SEED);
    let from = w.filled_store(Origin::new("a", 1));
    let resync = || {
        let to = Store::new(Origin::new("b", 1));
        let mut start = String::new();
        loop {
            let page = from.page(&start, 1_400, from.digest());
            to.apply_page(&page);
            match page.end {
                Some(end) => start = end,
                None => break,
            }
        }
        to
    };
    assert_eq!(resync().len(), from.len(), "resync_full_20k: incomplete");
    group.throughput(Throughput::Elements(RESYNC_STORE_KEYS as u64));
    group.bench_function("resync_full_20k", |b| b.iter(resync));
}
