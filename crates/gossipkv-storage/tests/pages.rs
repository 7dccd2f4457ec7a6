//! Re-synchronisation pages walk the key space in order: every page holds
//! the next keys from its start, none skipped, and applying a page touches
//! only its range. Pages are built from each shard's ordered keys, so a
//! shard cut too early or a range read wrongly shows up here as a gap.

use std::collections::BTreeMap;

use bytes::Bytes;
use gossipkv_storage::{Digest, Origin, Page, Record, Store};
use proptest::prelude::*;

const NOW: u64 = 1_000_000;

/// A store holding `keys` (a `None` value: written, then deleted).
fn store_of(keys: &BTreeMap<String, Option<usize>>) -> Store {
    let s = Store::new(Origin::new("a", 1));
    for (i, (k, v)) in keys.iter().enumerate() {
        s.set(k, Bytes::from(vec![b'v'; v.unwrap_or(1)]), NOW + i as u64);
        if v.is_none() {
            s.delete(k, NOW + i as u64);
        }
    }
    s
}

fn keys_of(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.key.to_string()).collect()
}

fn key() -> impl Strategy<Value = String> {
    // A small alphabet so that prefixes and neighbours collide.
    "[ab]{0,4}[a-c]{1,3}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_page_holds_the_next_keys_from_its_start_and_the_walk_misses_none(
        keys in prop::collection::btree_map(key(), prop::option::weighted(0.8, 0usize..300), 0..120),
        start in key(),
        budget in 60usize..2_000,
    ) {
        let s = store_of(&keys);
        let all = s.records();
        // One page from an arbitrary start: the next keys, in order.
        let page = s.page(&start, budget, s.digest());
        let from_start: Vec<String> =
            keys_of(&all).into_iter().filter(|k| *k >= start).collect();
        let got = keys_of(&page.records);
        prop_assert_eq!(&got[..], &from_start[..got.len()]);
        match &page.end {
            None => prop_assert_eq!(got.len(), from_start.len(), "cut without an end"),
            Some(end) => {
                prop_assert!(!got.is_empty(), "a page always makes progress");
                prop_assert_eq!(end, &format!("{}\0", got[got.len() - 1]));
            }
        }
        // The whole walk visits every key once, in order.
        let mut cursor = String::new();
        let mut walked = Vec::new();
        for _ in 0..=all.len() {
            let page = s.page(&cursor, budget, s.digest());
            walked.extend(keys_of(&page.records));
            match page.end {
                Some(end) => cursor = end,
                None => break,
            }
        }
        prop_assert_eq!(walked, keys_of(&all));
    }

    #[test]
    fn applying_a_page_drops_only_keys_in_its_range(
        keys in prop::collection::btree_map(key(), prop::option::of(0usize..50), 1..80),
        start in key(),
        end in prop::option::of(key()),
    ) {
        let s = store_of(&keys);
        // A page from a peer that holds nothing in the range, but vouches
        // for every write of ours: every key of ours in [start, end) goes.
        let page = Page {
            start: start.clone(),
            end: end.clone(),
            records: vec![],
            watermarks: s.digest(),
        };
        let before = keys_of(&s.records());
        s.apply_page(&page);
        let in_range = |k: &String| *k >= start && end.as_ref().is_none_or(|e| k < e);
        let kept: Vec<String> = before.into_iter().filter(|k| !in_range(k)).collect();
        prop_assert_eq!(keys_of(&s.records()), kept);
    }
}

#[test]
fn a_page_whose_range_ends_before_it_starts_drops_nothing() {
    let keys: BTreeMap<String, Option<usize>> = [("a", Some(1)), ("m", Some(1)), ("z", None)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let s = store_of(&keys);
    let page = Page {
        start: "n".into(),
        end: Some("b".into()),
        records: vec![],
        watermarks: s.digest(),
    };
    s.apply_page(&page);
    assert_eq!(keys_of(&s.records()), ["a", "m", "z"]);
    let empty = Page {
        start: "m".into(),
        end: Some("m".into()),
        records: vec![],
        watermarks: Digest::default(),
    };
    s.apply_page(&empty);
    assert_eq!(s.len_with_tombstones(), 3);
}
