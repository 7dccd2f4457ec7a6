//! Memory limits with replication, in virtual time: caches that evict (as
//! replicated deletes) and collect their tombstones early, under loss, end
//! in the state last-writer-wins over every write ever made (sets, deletes
//! and evictions) says: nothing resurrects and nothing a peer relied on is
//! lost. Prints its seed when it fails (replay with GOSSIPKV_SIM_SEED).

use std::collections::BTreeMap;
use std::sync::Arc;

use gossipkv_sim::{seed, SeedGuard, Sim, SimConfig};
use gossipkv_storage::{Limits, Policy, Record, Version, ENTRY_OVERHEAD};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;

/// Keeps, per key, the greatest version written and whether it is a value.
fn note(oracle: &Mutex<BTreeMap<String, (Version, bool)>>, r: &Record) {
    let mut o = oracle.lock().expect("not poisoned");
    let e = o
        .entry(r.key.to_string())
        .or_insert((r.version.clone(), r.value.is_some()));
    if r.version > e.0 {
        *e = (r.version.clone(), r.value.is_some());
    }
}

#[test]
fn caches_that_evict_under_loss_converge_to_the_last_writer_and_nothing_resurrects() {
    let seed = seed(12);
    let _g = SeedGuard::new(
        "caches_that_evict_under_loss_converge_to_the_last_writer_and_nothing_resurrects",
        seed,
    );
    let max_bytes = 100 * (ENTRY_OVERHEAD + 40);
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 4,
        loss: 0.1,
        gossip_interval_ms: 200,
        limits: Limits {
            max_entries: Some(25),
            max_bytes: Some(max_bytes),
            policy: Policy::EvictLru,
        },
        ..SimConfig::default()
    });
    let oracle = Arc::new(Mutex::new(BTreeMap::new()));
    for i in 0..4 {
        let o = oracle.clone();
        sim.store(i)
            .set_eviction_observer(Arc::new(move |r: &Record| note(&o, r)));
    }
    sim.run_for(5 * SEC);
    let mut rng = SmallRng::seed_from_u64(seed);
    for step in 0..600 {
        let node = rng.random_range(0..4);
        let key = format!("k{:03}", rng.random_range(0..120));
        let r = if rng.random_bool(0.15) {
            sim.delete(node, &key)
        } else {
            let value = vec![b'v'; rng.random_range(1..30)];
            sim.set(node, &key, &value)
        };
        note(&oracle, &r);
        // Reads refresh recency on the node that reads.
        let reader = rng.random_range(0..4);
        sim.store(reader).get(&key);
        if step % 5 == 0 {
            sim.run_for(100);
        }
    }
    sim.run_until(10 * MIN, SEC, |s| {
        // Same live contents everywhere (tombstones may be collected early
        // on some nodes and kept on others).
        let first = s.contents(0);
        (1..4).all(|i| s.contents(i) == first)
    })
    .expect("the caches converge");
    // Every node vouches for the same writes in the end.
    sim.run_until(10 * MIN, SEC, |s| s.watermarks_converged())
        .expect("the watermarks converge");
    sim.run_for(10 * SEC);
    let evicted: u64 = (0..4).map(|i| sim.store(i).budget_stats().evicted).sum();
    assert!(evicted > 100, "the caches evicted ({evicted})");
    for i in 0..4 {
        let st = sim.store(i);
        eprintln!(
            "node {i}: usage {} of {max_bytes}, live {}, held {}, {:?}, digest {:?}",
            st.memory_usage(),
            st.len(),
            st.len_with_tombstones(),
            st.budget_stats(),
            st.digest()
                .entries
                .iter()
                .map(|e| e.watermark)
                .collect::<Vec<_>>()
        );
    }
    let early: u64 = (0..4)
        .map(|i| sim.store(i).budget_stats().tombstones_collected_early)
        .sum();
    assert!(early > 0, "tombstones were collected early");
    let oracle = oracle.lock().expect("not poisoned");
    for i in 0..4 {
        let store = sim.store(i);
        assert!(store.len() <= 25, "node {i} holds {}", store.len());
        assert!(!store.is_empty(), "node {i}: the caches keep values");
        for (key, (version, live)) in oracle.iter() {
            match store.get_record(key) {
                Some(r) if r.value.is_some() => {
                    assert!(
                        *live,
                        "node {i}: {key} resurrected ({r:?}, last write {version:?})"
                    );
                    assert_eq!(&r.version, version, "node {i}: {key} holds an older write");
                }
                // Deleted, evicted, or its tombstone collected.
                _ => assert!(
                    !*live,
                    "node {i}: lost the last write of {key} ({version:?})"
                ),
            }
        }
    }
}
