//! Memory limits: the reject and LRU policies, the earlier system's failure
//! cases, merges under a budget, eviction as a replicated delete, and early
//! collection of tombstones.

use bytes::Bytes;
use gossipkv_storage::{
    entry_cost, BudgetError, Limits, Origin, Policy, Record, Store, StoreConfig, ENTRY_OVERHEAD,
};

const NOW: u64 = 1_700_000_000_000;

fn store(id: &str, max_entries: Option<usize>, max_bytes: Option<usize>, policy: Policy) -> Store {
    Store::with_config(
        Origin::new(id, 1),
        StoreConfig {
            limits: Limits {
                max_entries,
                max_bytes,
                policy,
            },
            ..StoreConfig::default()
        },
    )
}

fn v(n: usize) -> Bytes {
    Bytes::from(vec![b'x'; n])
}

/// What an entry of a 1-byte key and an `n`-byte value costs.
fn entry(n: usize) -> usize {
    entry_cost(1, Some(n))
}

fn set(s: &Store, k: &str, n: usize) -> Result<Record, BudgetError> {
    s.try_write(k, Some(v(n)), NOW)
}

#[test]
fn reject_refuses_new_keys_past_max_entries_but_not_updates_or_deletes() {
    let s = store("a", Some(2), None, Policy::Reject);
    set(&s, "a", 1).unwrap();
    set(&s, "b", 1).unwrap();
    let err = set(&s, "c", 1).unwrap_err();
    assert!(
        matches!(err, BudgetError::OverBudget { new_entries: 1, .. }),
        "{err}"
    );
    assert_eq!(s.get("c"), None, "nothing written");
    set(&s, "a", 5).expect("an update adds no entry");
    s.try_write("a", None, NOW)
        .expect("a delete is never refused");
    set(&s, "c", 1).expect("room again once a key is deleted");
    assert_eq!(s.len(), 2);
    assert_eq!(s.budget_stats().refused, 1);
}

#[test]
fn reject_refuses_writes_past_max_bytes_and_values_larger_than_the_budget() {
    let s = store("a", None, Some(2 * entry(100)), Policy::Reject);
    set(&s, "a", 100).unwrap();
    set(&s, "b", 100).unwrap();
    assert_eq!(s.memory_usage(), 2 * entry(100));
    assert!(matches!(
        set(&s, "c", 1),
        Err(BudgetError::OverBudget { .. })
    ));
    assert!(
        matches!(
            set(&s, "a", 101),
            Err(BudgetError::OverBudget { needed: 1, .. })
        ),
        "an update that grows a value over the budget is refused"
    );
    set(&s, "a", 50).expect("an update that shrinks fits");
    let too_large = set(&s, "z", 2 * entry(100)).unwrap_err();
    assert!(
        matches!(too_large, BudgetError::TooLarge { max_bytes, .. } if max_bytes == 2 * entry(100)),
        "{too_large}"
    );
    assert_eq!(s.get("a"), Some(v(50)));
    assert_eq!(s.get("b"), Some(v(100)));
}

#[test]
fn lru_evicts_the_least_recently_read_key_and_get_refreshes_it() {
    let s = store("a", Some(3), None, Policy::EvictLru);
    for k in ["a", "b", "c"] {
        set(&s, k, 1).unwrap();
    }
    assert!(s.get("a").is_some());
    set(&s, "d", 1).unwrap();
    assert_eq!(s.get("b"), None, "b was the least recently used");
    assert!(s.contains("a") && s.contains("c") && s.contains("d"));
    assert_eq!(s.len(), 3);
    // The eviction is a delete with a fresh local version.
    let b = s.get_record("b").expect("a tombstone is held");
    assert!(b.value.is_none());
    assert_eq!(b.version.origin(), Origin::new("a", 1));
    assert_eq!(s.budget_stats().evicted, 1);
}

#[test]
fn contains_keys_and_scans_do_not_refresh_recency() {
    let s = store("a", Some(3), None, Policy::EvictLru);
    for k in ["a", "b", "c"] {
        set(&s, k, 1).unwrap();
    }
    assert!(s.contains("a"));
    assert_eq!(s.keys().len(), 3);
    assert_eq!(s.scan_prefix("").len(), 3);
    assert_eq!(s.records().len(), 3);
    set(&s, "d", 1).unwrap();
    assert!(!s.contains("a"), "a was only looked at, never read");
    assert!(s.contains("b"));
}

#[test]
fn both_limits_hit_at_once_evict_one_key_not_everything() {
    // The earlier system emptied the cache when both limits were hit.
    let s = store("a", Some(4), Some(4 * entry(10)), Policy::EvictLru);
    for k in ["a", "b", "c", "d"] {
        set(&s, k, 10).unwrap();
    }
    assert_eq!(s.memory_usage(), 4 * entry(10));
    set(&s, "e", 10).unwrap();
    assert_eq!(s.len(), 4, "one eviction makes room for both limits");
    assert_eq!(s.keys(), ["b", "c", "d", "e"]);
    assert!(s.memory_usage() <= 4 * entry(10));
}

#[test]
fn an_update_that_grows_a_value_evicts_others_never_itself() {
    // The earlier system never evicted on update.
    let s = store("a", None, Some(3 * entry(100)), Policy::EvictLru);
    for k in ["a", "b", "c"] {
        set(&s, k, 100).unwrap();
    }
    set(&s, "c", 250).unwrap();
    assert_eq!(s.get("c"), Some(v(250)), "the updated key stays");
    assert!(!s.contains("a"), "the least recently used key went");
    assert!(s.memory_usage() <= 3 * entry(100), "{}", s.memory_usage());
    let err = set(&s, "c", 3 * entry(100)).unwrap_err();
    assert!(matches!(err, BudgetError::TooLarge { .. }), "{err}");
    assert_eq!(s.get("c"), Some(v(250)), "a refused update changes nothing");
}

#[test]
fn a_write_load_ten_times_the_budget_never_exceeds_it_without_peers() {
    let budget = 100 * entry(64);
    let s = store("a", None, Some(budget), Policy::EvictLru);
    let mut peak = 0;
    for i in 0..1_000 {
        s.try_write(&format!("k{i:05}"), Some(v(64)), NOW).unwrap();
        peak = peak.max(s.memory_usage());
    }
    assert!(peak <= budget, "peak {peak} over {budget}");
    // Without peers, tombstones of evicted keys are collected at once.
    let stats = s.budget_stats();
    assert!(stats.evicted >= 900, "{stats:?}");
    assert!(stats.tombstones_collected_early > 0, "{stats:?}");
    assert!(
        s.len_with_tombstones() <= 100 + 100,
        "{}",
        s.len_with_tombstones()
    );
}

#[test]
fn tombstones_are_kept_until_the_bounds_cover_them() {
    let budget = 10 * entry(64) + 10;
    let s = store("a", None, Some(budget), Policy::EvictLru);
    // A peer that has seen nothing of this node.
    s.set_early_collection(Some(&[]));
    let mut refused = 0;
    for i in 0..40 {
        match s.try_write(&format!("k{i:05}"), Some(v(64)), NOW) {
            Ok(_) => {}
            Err(BudgetError::OverBudget { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        // Never more than the budget and one entry, whatever the peer lags.
        assert!(
            s.memory_usage() <= budget + entry(64) + 5,
            "{} over {budget}",
            s.memory_usage()
        );
    }
    assert_eq!(s.budget_stats().tombstones_collected_early, 0);
    assert!(refused > 0, "nothing left to evict, yet nothing refused");
    assert_eq!(s.budget_stats().refused, refused);
    let tombs_before = s.len_with_tombstones() - s.len();
    assert!(tombs_before >= 5, "{tombs_before}");
    assert!(
        s.try_write("k00000", None, NOW).is_ok(),
        "a delete is never refused"
    );
    // The peer now holds everything up to the current watermark.
    let w = s.watermark(&Origin::new("a", 1));
    s.set_early_collection(Some(&[(Origin::new("a", 1), w)]));
    s.try_write("more", Some(v(64)), NOW)
        .expect("room again once the tombstones are collected");
    assert!(s.budget_stats().tombstones_collected_early > 0);
    assert!(s.memory_usage() <= budget, "{}", s.memory_usage());
    // Collecting raised the floor no higher than the bound.
    assert!(s.floor(&Origin::new("a", 1)) <= w);
}

#[test]
fn merges_are_applied_over_a_reject_budget_and_local_writes_wait() {
    let s = store("a", Some(2), None, Policy::Reject);
    let peer = Store::new(Origin::new("p", 1));
    for k in ["x", "y", "z"] {
        peer.set(k, v(1), NOW);
    }
    s.apply(&peer.delta_for(&s.digest(), 64 * 1024, 0));
    assert_eq!(s.len(), 3, "a peer's writes are never refused");
    assert!(s.is_over_budget());
    assert!(matches!(
        set(&s, "mine", 1),
        Err(BudgetError::OverBudget { .. })
    ));
    s.try_write("x", None, NOW).unwrap();
    s.try_write("y", None, NOW).unwrap();
    set(&s, "mine", 1).expect("room again");
}

#[test]
fn merges_evict_under_lru() {
    let s = store("a", Some(2), None, Policy::EvictLru);
    let peer = Store::new(Origin::new("p", 1));
    for k in ["x", "y", "z", "w"] {
        peer.set(k, v(1), NOW);
    }
    s.apply(&peer.delta_for(&s.digest(), 64 * 1024, 0));
    assert_eq!(s.len(), 2);
    assert_eq!(s.budget_stats().evicted, 2);
}

#[test]
fn an_eviction_replicates_as_a_delete_and_nothing_comes_back() {
    let cache = store("cache", Some(2), None, Policy::EvictLru);
    let peer = Store::new(Origin::new("peer", 1));
    let sync = |from: &Store, to: &Store| to.apply(&from.delta_for(&to.digest(), 64 * 1024, 0));
    peer.set("a", v(1), NOW);
    peer.set("b", v(1), NOW);
    sync(&peer, &cache);
    assert_eq!(cache.len(), 2);
    set(&cache, "c", 1).unwrap();
    assert_eq!(cache.len(), 2);
    let evicted: Vec<String> = ["a", "b"]
        .into_iter()
        .filter(|k| !cache.contains(k))
        .map(String::from)
        .collect();
    assert_eq!(evicted.len(), 1);
    for _ in 0..3 {
        sync(&cache, &peer);
        sync(&peer, &cache);
    }
    assert!(
        !peer.contains(&evicted[0]),
        "the eviction deleted it everywhere"
    );
    assert!(!cache.contains(&evicted[0]), "and it was not fetched back");
    let sorted = |s: &Store| {
        let mut d = s.digest().entries;
        d.sort_by(|a, b| a.origin.cmp(&b.origin));
        d
    };
    assert_eq!(sorted(&peer), sorted(&cache));
    assert_eq!(peer.records(), cache.records());
    assert_eq!(cache.budget_stats().evicted, 1);
}

/// What the store's records cost, counted from scratch.
fn counted(s: &Store) -> usize {
    s.records()
        .iter()
        .map(|r| entry_cost(r.key.len(), r.value.as_ref().map(Bytes::len)))
        .sum()
}

mod accounting {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, usize),
        Delete(u8),
        Get(u8),
        FromPeer,
        ToPeer,
        PeerSet(u8, usize),
        PeerDelete(u8),
        Collect,
        Page,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, 0usize..300).prop_map(|(k, n)| Op::Set(k, n)),
            (0u8..12).prop_map(Op::Delete),
            (0u8..12).prop_map(Op::Get),
            Just(Op::FromPeer),
            Just(Op::ToPeer),
            (0u8..12, 0usize..300).prop_map(|(k, n)| Op::PeerSet(k, n)),
            (0u8..12).prop_map(Op::PeerDelete),
            Just(Op::Collect),
            Just(Op::Page),
        ]
    }

    proptest! {
        /// `memory_usage` is exactly what the records held cost, after any
        /// mix of local writes, merges, pages and collection; under the LRU
        /// policy without peers, the store is never over its byte budget
        /// after a write, and under both policies `len` never exceeds
        /// `max_entries` after a local write.
        #[test]
        fn memory_usage_counts_every_entry_and_limits_hold(
            ops in proptest::collection::vec(op(), 1..80),
            lru in any::<bool>(),
        ) {
            let policy = if lru { Policy::EvictLru } else { Policy::Reject };
            let budget = 5 * (ENTRY_OVERHEAD + 100);
            let s = store("s", Some(4), Some(budget), policy);
            let peer = Store::new(Origin::new("peer", 1));
            let mut now = NOW;
            for op in ops {
                now += 1;
                let key = |k: u8| format!("k{k}");
                match op {
                    Op::Set(k, n) => {
                        let r = s.try_write(&key(k), Some(v(n)), now);
                        if r.is_ok() && !s.is_over_budget() {
                            prop_assert!(s.len() <= 4);
                        }
                        if lru && r.is_ok() && s.budget_stats().over_after_eviction == 0 {
                            prop_assert!(s.memory_usage() <= budget);
                        }
                    }
                    Op::Delete(k) => {
                        s.try_write(&key(k), None, now).unwrap();
                    }
                    Op::Get(k) => {
                        s.get(&key(k));
                    }
                    Op::FromPeer => {
                        s.apply(&peer.delta_for(&s.digest(), 4096, 0));
                    }
                    Op::ToPeer => {
                        peer.apply(&s.delta_for(&peer.digest(), 4096, 0));
                    }
                    Op::PeerSet(k, n) => {
                        peer.set(&key(k), v(n), now);
                    }
                    Op::PeerDelete(k) => {
                        peer.delete(&key(k), now);
                    }
                    Op::Collect => {
                        s.collect_garbage(now, 3);
                    }
                    Op::Page => {
                        let page = peer.page("", 1 << 20, peer.digest());
                        s.apply_page(&page);
                    }
                }
                prop_assert_eq!(s.memory_usage(), counted(&s));
                prop_assert_eq!(
                    s.len(),
                    s.records().iter().filter(|r| r.value.is_some()).count()
                );
            }
        }
    }
}

#[test]
fn merges_in_small_batches_evict_down_to_the_limit() {
    let s = store("a", Some(20), None, Policy::EvictLru);
    let peer = Store::new(Origin::new("p", 1));
    let mut i = 0usize;
    for batch in [1, 2, 5, 11, 40, 3, 70] {
        let mut records = Vec::new();
        for _ in 0..batch {
            records.push(peer.write(&format!("k{i:03}"), Some(v(3)), NOW + i as u64));
            i += 1;
        }
        s.merge_batch(records);
        assert!(
            s.len() <= 20,
            "{} after {i} records: {:?}",
            s.len(),
            s.budget_stats()
        );
    }
    s.apply(&peer.delta_for(&s.digest(), 64 * 1024, 0));
    assert_eq!(s.len(), 20, "{:?}", s.budget_stats());
}
