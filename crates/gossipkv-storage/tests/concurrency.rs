//! One store shared by several threads.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use common::{live_count, wm_map};
use gossipkv_storage::{Hlc, Origin, Record, Store, Version};

const THREADS: usize = 4;

/// A small deterministic generator (xorshift64*), one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs `f` on another thread and fails if it does not finish in time (a
/// deadlock would otherwise hang the test run).
fn with_deadline<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no progress in {secs} s: deadlock?"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("worker panicked"),
    }
}

#[test]
fn concurrent_local_ops_keep_counts_and_replicate() {
    let store = Arc::new(Store::new(Origin::new("local", 1)));
    let written: Vec<Vec<Record>> = with_deadline(120, {
        let store = store.clone();
        move || {
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let store = store.clone();
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        let mut rng = Rng::new(t as u64 + 1);
                        let mut mine = Vec::new();
                        barrier.wait();
                        for i in 0..3_000u64 {
                            let key = format!("k{}", rng.below(24));
                            match rng.below(10) {
                                0..=3 => {
                                    let v = Bytes::from(format!("t{t}-{i}"));
                                    mine.push(store.write(&key, Some(v), 1_000 + i));
                                }
                                4..=5 => mine.push(store.write(&key, None, 1_000 + i)),
                                _ => {
                                    let _ = store.get(&key);
                                    let _ = store.get_record(&key);
                                    let _ = store.contains(&key);
                                    let _ = store.len();
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        }
    });

    let records = store.records();
    assert_eq!(store.len(), live_count(&records), "live counter drifted");
    assert_eq!(store.keys().len(), store.len());
    assert_eq!(store.len_with_tombstones(), records.len());

    // Every write got its own sequence number, the watermark counts them
    // all, and each key holds its last write (greatest sequence number).
    let all: Vec<&Record> = written.iter().flatten().collect();
    let mut seqs: Vec<u64> = all.iter().map(|r| r.version.seq).collect();
    seqs.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    assert_eq!(store.watermark(store.local_origin()), n);
    for r in &records {
        let last = all
            .iter()
            .filter(|w| w.key == r.key)
            .max_by_key(|w| w.version.seq)
            .unwrap();
        assert_eq!(r, *last);
    }
    // Timestamps grow with sequence numbers.
    let mut by_seq = all.clone();
    by_seq.sort_by_key(|r| r.version.seq);
    assert!(by_seq
        .windows(2)
        .all(|w| w[0].version.hlc < w[1].version.hlc));

    // A delta to an empty store carries everything.
    let copy = Store::new(Origin::new("copy", 1));
    let delta = store.delta_for(&copy.digest(), usize::MAX, 0);
    assert_eq!(delta.record_count(), records.len());
    copy.apply(&delta);
    assert_eq!(copy.records(), records);
    assert_eq!(wm_map(&copy), wm_map(&store));
    assert_eq!(copy.len(), store.len());

    // And so do many small ones.
    let copy2 = Store::new(Origin::new("copy2", 1));
    let mut rounds = 0;
    while wm_map(&copy2) != wm_map(&store) {
        copy2.apply(&store.delta_for(&copy2.digest(), 400, rounds));
        rounds += 1;
        assert!(rounds < 10_000);
    }
    assert_eq!(copy2.records(), records);
}

#[test]
fn concurrent_replication_and_local_writes() {
    // Four threads: two apply deltas from other replicas (interning new
    // origins as they go), one writes locally, one reads and builds deltas.
    let store = Arc::new(Store::new(Origin::new("hub", 1)));
    let sources: Vec<Arc<Store>> = (0..2)
        .map(|t| Arc::new(Store::new(Origin::new(format!("src{t}"), 1))))
        .collect();
    let expected_origins = with_deadline(120, {
        let store = store.clone();
        let sources = sources.clone();
        move || {
            let barrier = Arc::new(Barrier::new(THREADS));
            let mut handles = Vec::new();
            for (t, src) in sources.iter().enumerate() {
                let (store, src, barrier) = (store.clone(), src.clone(), barrier.clone());
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(100 + t as u64);
                    barrier.wait();
                    for i in 0..400u64 {
                        // A delta from a fresh origin every few rounds.
                        if i % 4 == 0 {
                            let x = Store::new(Origin::new(format!("x{t}-{}", i / 4), 1));
                            x.set(
                                &format!("k{}", rng.below(16)),
                                Bytes::from_static(b"x"),
                                500 + i,
                            );
                            store.apply(&x.delta_for(&store.digest(), 1_400, 0));
                        }
                        src.set(
                            &format!("k{}", rng.below(16)),
                            Bytes::from(format!("{t}")),
                            900 + i,
                        );
                        store.apply(&src.delta_for(&store.digest(), 600, i as usize));
                    }
                }));
            }
            {
                let (store, barrier) = (store.clone(), barrier.clone());
                handles.push(thread::spawn(move || {
                    let mut rng = Rng::new(7);
                    barrier.wait();
                    for i in 0..800u64 {
                        let key = format!("k{}", rng.below(16));
                        if rng.below(3) == 0 {
                            store.delete(&key, 100 + i);
                        } else {
                            store.set(&key, Bytes::from_static(b"hub"), 100 + i);
                        }
                    }
                }));
            }
            {
                let (store, barrier) = (store.clone(), barrier.clone());
                handles.push(thread::spawn(move || {
                    let empty = Store::new(Origin::new("reader", 1));
                    barrier.wait();
                    for i in 0..200usize {
                        let _ = store.records();
                        let _ = store.digest();
                        let _ = store.delta_for(&empty.digest(), 1_400, i);
                    }
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
            2 * 100 + 2 + 1
        }
    });
    // Every interned origin shows up once in the digest.
    let wms = wm_map(&store);
    assert_eq!(wms.len(), expected_origins, "{wms:?}");
    let records = store.records();
    assert_eq!(store.len(), live_count(&records));

    // Finish replication single-threaded: hub and sources agree.
    let all: Vec<&Store> = std::iter::once(&*store)
        .chain(sources.iter().map(|s| &**s))
        .collect();
    common::converge(&all, 1_400, 200).unwrap();
    let r0 = store.records();
    for s in &sources {
        assert_eq!(s.records(), r0);
    }
}

/// A local write racing with a merge of a newer record of the same key: the
/// store must end with the greater version, as any replica merging both
/// would. Every round uses a fresh key, so a lost race stays visible; long
/// keys widen the window between the write's clock tick and its insertion
/// (hashing the key), which the merge can fall into.
#[test]
fn local_write_racing_a_merge_keeps_the_greater_version() {
    const ROUNDS: u64 = 3_000;
    let store = Arc::new(Store::new(Origin::new("a", 1)));
    let keys: Arc<Vec<String>> = Arc::new(
        (0..ROUNDS)
            .map(|i| format!("{i:08}{}", "x".repeat(4_096)))
            .collect(),
    );
    let (merged, local) = with_deadline(120, {
        let store = store.clone();
        let keys = keys.clone();
        move || {
            let barrier = Arc::new(Barrier::new(2));
            let merger = {
                let (store, barrier, keys) = (store.clone(), barrier.clone(), keys.clone());
                thread::spawn(move || {
                    let remote = Origin::new("b", 1);
                    (0..ROUNDS)
                        .map(|i| {
                            barrier.wait();
                            // Vary the relative timing from round to round.
                            for _ in 0..(i * 7_919 % 2_000) {
                                std::hint::spin_loop();
                            }
                            let r = Record {
                                key: keys[i as usize].as_str().into(),
                                value: Some(Bytes::from_static(b"remote")),
                                version: Version::new(Hlc::new(1_000_000 + i, 0), &remote, i + 1),
                                lifetime: gossipkv_storage::Lifetime::FOREVER,
                            };
                            store.merge(r.clone());
                            r
                        })
                        .collect::<Vec<_>>()
                })
            };
            let writer = {
                let (store, barrier, keys) = (store.clone(), barrier.clone(), keys.clone());
                thread::spawn(move || {
                    (0..ROUNDS)
                        .map(|i| {
                            barrier.wait();
                            store.write(&keys[i as usize], Some(Bytes::from_static(b"local")), i)
                        })
                        .collect::<Vec<_>>()
                })
            };
            (merger.join().unwrap(), writer.join().unwrap())
        }
    });
    let mut lost = Vec::new();
    for (r, l) in merged.iter().zip(&local) {
        let max = if r.version > l.version { r } else { l };
        let held = store.get_record(&r.key).unwrap();
        if &held != max {
            lost.push((held.version, max.version.clone()));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {ROUNDS} keys kept an older version than one merged (held, greater): {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}

/// Merges that intern new origins, racing with merges of known ones.
#[test]
fn concurrent_merges_of_new_origins_do_not_deadlock() {
    let store = Arc::new(Store::new(Origin::new("a", 1)));
    let s = store.clone();
    with_deadline(60, move || {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let store = s.clone();
                thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let origin = if i % 2 == 0 {
                            Origin::new(format!("t{t}-{i}"), 1)
                        } else {
                            Origin::new("shared", 1)
                        };
                        store.merge(Record {
                            key: format!("k{}", i % 8).into(),
                            value: None,
                            version: Version::new(Hlc::new(i, 0), &origin, i + 1),
                            lifetime: gossipkv_storage::Lifetime::FOREVER,
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    // Keys hold their greatest version: hlc 4999 of some t*-4998 origin... or
    // "shared" at odd i; per key, the greatest i wins, ties by node id.
    for k in 0..8u64 {
        let held = store.get_record(&format!("k{k}")).unwrap();
        let i = (0..5_000u64).filter(|i| i % 8 == k).max().unwrap();
        assert_eq!(held.version.hlc, Hlc::new(i, 0));
    }
}

/// A re-synchronisation page applied while merges intern new origins.
#[test]
fn apply_page_racing_merges_of_new_origins() {
    let src = Store::new(Origin::new("src", 1));
    for i in 0..50u64 {
        src.set(&format!("p{i:02}"), Bytes::from_static(b"v"), 1_000 + i);
    }
    let page = src.page("", usize::MAX, src.digest());
    let store = Arc::new(Store::new(Origin::new("a", 1)));
    let s = store.clone();
    with_deadline(60, move || {
        let done = Arc::new(AtomicBool::new(false));
        let merger = {
            let (store, done) = (s.clone(), done.clone());
            thread::spawn(move || {
                for i in 0..10_000u64 {
                    store.merge(Record {
                        key: format!("m{}", i % 64).into(),
                        value: Some(Bytes::from_static(b"m")),
                        version: Version::new(Hlc::new(i, 0), &Origin::new(format!("o{i}"), 1), 1),
                        lifetime: gossipkv_storage::Lifetime::FOREVER,
                    });
                }
                done.store(true, Ordering::Relaxed);
            })
        };
        while !done.load(Ordering::Relaxed) {
            s.apply_page(&page);
        }
        merger.join().unwrap();
    });
    // The page (of the whole key space) dropped none of the merged records:
    // the sender never saw their origins.
    for i in 0..64u64 {
        assert!(store.contains(&format!("m{i}")), "m{i} was dropped");
    }
    assert_eq!(store.len(), 50 + 64);
}
