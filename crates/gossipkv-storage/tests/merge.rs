//! Merge is a join: commutative, associative, idempotent; the winner of every
//! key is its greatest version; and a local write always beats what was merged.

use std::collections::BTreeMap;

use bytes::Bytes;
use gossipkv_storage::{Hlc, Origin, Record, Store, Version, HLC_MAX_PHYSICAL_MS};
use proptest::prelude::*;
use proptest::sample::Index;

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// One write before sequence numbers are assigned.
#[derive(Clone, Debug)]
struct RawWrite {
    node: usize,
    generation: u64,
    key: usize,
    value: Option<Vec<u8>>,
    hlc: Hlc,
}

fn hlc() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        // A tiny range, so that equal timestamps are common.
        4 => (0..3u64, 0..2u16).prop_map(|(p, l)| Hlc::new(p, l)),
        1 => (1_000..1_003u64, any::<u16>()).prop_map(|(p, l)| Hlc::new(p, l)),
        // Far in the future (but not the saturated maximum, see below).
        1 => ((1u64 << 47)..HLC_MAX_PHYSICAL_MS, any::<u16>()).prop_map(|(p, l)| Hlc::new(p, l)),
    ]
}

fn raw_write() -> impl Strategy<Value = RawWrite> {
    (
        0..NODES.len(),
        0..2u64,
        0..KEYS.len(),
        proptest::option::weighted(0.75, proptest::collection::vec(any::<u8>(), 0..3)),
        hlc(),
    )
        .prop_map(|(node, generation, key, value, hlc)| RawWrite {
            node,
            generation,
            key,
            value,
            hlc,
        })
}

/// Records with unique versions: sequence numbers are assigned per origin,
/// so that one version never names two different writes.
fn records(max: usize) -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec(raw_write(), 1..max).prop_map(|raw| {
        let mut seqs: BTreeMap<(usize, u64), u64> = BTreeMap::new();
        raw.into_iter()
            .map(|w| {
                let seq = seqs.entry((w.node, w.generation)).or_insert(0);
                *seq += 1;
                let origin = Origin::new(NODES[w.node], w.generation);
                Record {
                    key: KEYS[w.key].into(),
                    value: w.value.map(Bytes::from),
                    version: Version::new(w.hlc, &origin, *seq),
                    lifetime: gossipkv_storage::Lifetime::FOREVER,
                }
            })
            .collect()
    })
}

fn local_store() -> Store {
    // "local" sorts before every "n*" node id, so it would lose every tie.
    Store::new(Origin::new("local", 0))
}

fn merged(recs: impl IntoIterator<Item = Record>) -> Store {
    let s = local_store();
    for r in recs {
        s.merge(r);
    }
    s
}

/// The greatest version of every key.
fn expected(recs: &[Record]) -> Vec<Record> {
    let mut best: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in recs {
        match best.get(&*r.key) {
            Some(b) if b.version >= r.version => {}
            _ => {
                best.insert(&r.key, r);
            }
        }
    }
    best.into_values().cloned().collect()
}

fn records_and_shuffle(max: usize) -> impl Strategy<Value = (Vec<Record>, Vec<Record>)> {
    records(max).prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Any order, with duplicates anywhere, gives the same records, and the
    /// winner of every key is its maximum version.
    #[test]
    fn merge_is_commutative_and_idempotent(
        (recs, shuffled) in records_and_shuffle(24),
        dups in proptest::collection::vec((any::<Index>(), any::<Index>()), 0..12),
    ) {
        let mut with_dups = shuffled.clone();
        for (which, at) in &dups {
            let r = recs[which.index(recs.len())].clone();
            with_dups.insert(at.index(with_dups.len() + 1), r);
        }
        let a = merged(recs.iter().cloned());
        let b = merged(shuffled.iter().cloned());
        let c = merged(with_dups);
        let want = expected(&recs);
        prop_assert_eq!(a.records(), want.clone());
        prop_assert_eq!(b.records(), want.clone());
        prop_assert_eq!(c.records(), want.clone());
        prop_assert_eq!(a.len(), want.iter().filter(|r| !r.is_tombstone()).count());
        prop_assert_eq!(a.len_with_tombstones(), want.len());

        // Merging everything again changes nothing and never wins.
        for r in &shuffled {
            prop_assert!(!a.merge(r.clone()), "re-merging {:?} won", r);
        }
        for r in a.records() {
            prop_assert!(!a.merge(r));
        }
        prop_assert_eq!(a.records(), want);
    }

    /// `merge` reports exactly whether the record is greater than what the
    /// key held, and `get` / `get_record` agree with the winner.
    #[test]
    fn merge_keeps_the_maximum_version(recs in records(24)) {
        let s = local_store();
        let mut model: BTreeMap<String, Version> = BTreeMap::new();
        for r in &recs {
            let want_win = model.get(&*r.key).is_none_or(|cur| &r.version > cur);
            prop_assert_eq!(s.merge(r.clone()), want_win, "merge({:?})", r);
            if want_win {
                model.insert(r.key.to_string(), r.version.clone());
            }
            let held = s.get_record(&r.key).expect("key is held");
            prop_assert_eq!(&held.version, &model[&*r.key]);
        }
        for w in expected(&recs) {
            prop_assert_eq!(s.get_record(&w.key), Some(w.clone()));
            prop_assert_eq!(s.get(&w.key), w.value.clone());
            prop_assert_eq!(s.contains(&w.key), w.value.is_some());
        }
    }

    /// Any grouping: merge groups into different stores, then transfer one
    /// store's records into another, in various orders.
    #[test]
    fn merge_is_associative(
        recs in records(24),
        groups in proptest::collection::vec(0..3u8, 24),
        order in any::<u64>(),
    ) {
        let group = |g: u8| -> Vec<Record> {
            recs.iter()
                .zip(&groups)
                .filter(|(_, &x)| x == g)
                .map(|(r, _)| r.clone())
                .collect()
        };
        let (x, y, z) = (merged(group(0)), merged(group(1)), merged(group(2)));
        let want = expected(&recs);

        // (x . y) . z, transferring records in reverse key order.
        let xy = merged(x.records());
        for r in y.records().into_iter().rev() {
            xy.merge(r);
        }
        let xy_z = merged(z.records());
        for r in xy.records() {
            xy_z.merge(r);
        }
        prop_assert_eq!(xy_z.records(), want.clone());

        // x . (y . z), the transfer rotated by `order`.
        let yz = merged(y.records());
        let mut zr = z.records();
        if !zr.is_empty() {
            let k = (order as usize) % zr.len();
            zr.rotate_left(k);
        }
        for r in zr {
            yz.merge(r);
        }
        let x_yz = merged(yz.records());
        for r in x.records().into_iter().chain(yz.records()) {
            x_yz.merge(r);
        }
        prop_assert_eq!(x_yz.records(), want.clone());

        // Transferring into a store that already has part of it.
        for r in xy.records() {
            z.merge(r);
        }
        prop_assert_eq!(z.records(), want);
    }

    /// Guarantee 2: a local write after merging anything wins, even over
    /// versions far in the future with a local clock far behind; and it wins
    /// at every other replica that merged the same records.
    #[test]
    fn local_write_after_merge_always_wins(
        recs in records(24),
        shuffled_seed in any::<u64>(),
        writes in proptest::collection::vec((0..KEYS.len(), any::<bool>(), 0..5u64), 1..6),
    ) {
        let s = merged(recs.iter().cloned());
        let mut other_order = recs.clone();
        if !other_order.is_empty() {
            let k = (shuffled_seed as usize) % other_order.len();
            other_order.rotate_left(k);
            other_order.reverse();
        }
        let other = Store::new(Origin::new("zz-other", 7));
        for r in other_order {
            other.merge(r);
        }
        let max_seen = recs.iter().map(|r| r.version.hlc).max().unwrap_or(Hlc::ZERO);
        let mut last = Hlc::ZERO;
        for (key, delete, now_ms) in writes {
            let key = KEYS[key];
            let before = s.get_record(key);
            let w = if delete {
                s.write(key, None, now_ms)
            } else {
                s.write(key, Some(Bytes::from_static(b"local")), now_ms)
            };
            prop_assert!(w.version.hlc > max_seen, "{:?} does not beat {:?}", w.version, max_seen);
            prop_assert!(w.version.hlc > last);
            last = w.version.hlc;
            if let Some(b) = before {
                prop_assert!(w.version > b.version);
            }
            prop_assert_eq!(s.get_record(key), Some(w.clone()));
            prop_assert_eq!(s.get(key), w.value.clone());
            // Old records merged again do not undo it.
            for r in &recs {
                s.merge(r.clone());
            }
            prop_assert_eq!(s.get_record(key), Some(w.clone()));
            // And it wins elsewhere.
            prop_assert!(other.merge(w.clone()), "{:?} lost at another replica", w);
            prop_assert_eq!(other.get_record(key), Some(w));
        }
    }
}

/// Equal timestamps are ordered by node id, then generation.
#[test]
fn equal_hlc_ties_break_by_node_then_generation() {
    let hlc = Hlc::new(5, 0);
    let r = |node: &str, generation: u64, v: &'static [u8]| Record {
        key: "k".into(),
        value: Some(Bytes::from_static(v)),
        version: Version::new(hlc, &Origin::new(node, generation), 1),
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    };
    let all = [
        r("a", 2, b"a2"),
        r("b", 1, b"b1"),
        r("a", 9, b"a9"),
        r("b", 0, b"b0"),
    ];
    for rot in 0..all.len() {
        let mut order = all.to_vec();
        order.rotate_left(rot);
        let s = merged(order);
        assert_eq!(s.get("k"), Some(Bytes::from_static(b"b1")));
    }
}

/// Digest fingerprints ignore entry order and zero watermarks, and change
/// with any watermark.
#[test]
fn digest_fingerprints_compare_contents() {
    use gossipkv_storage::{Digest, DigestEntry};
    let entry = |n: &str, g: u64, w: u64| DigestEntry {
        origin: Origin::new(n, g),
        watermark: w,
    };
    let digest = |entries: Vec<DigestEntry>| Digest {
        entries,
        complete: true,
        open_start: false,
        open_end: false,
    };
    let a = digest(vec![entry("a", 1, 5), entry("b", 2, 7)]);
    let b = digest(vec![entry("b", 2, 7), entry("c", 1, 0), entry("a", 1, 5)]);
    assert_eq!(a.fingerprint(), b.fingerprint());
    for other in [
        digest(vec![entry("a", 1, 5), entry("b", 2, 8)]),
        digest(vec![entry("a", 1, 5), entry("b", 3, 7)]),
        digest(vec![entry("a", 1, 5)]),
        digest(vec![entry("ab", 1, 5), entry("", 2, 7)]),
    ] {
        assert_ne!(a.fingerprint(), other.fingerprint(), "{other:?}");
    }
}

/// `set` and `delete` return the version they wrote, and leave the same state
/// as `write`, which returns the whole record.
#[test]
fn set_and_delete_return_the_version_written_and_match_write() {
    let s = Store::new(Origin::new("a", 1));
    let t = Store::new(Origin::new("a", 1));
    let v = s.set("k", Bytes::from_static(b"one"), 1_000);
    let r = t.write("k", Some(Bytes::from_static(b"one")), 1_000);
    assert_eq!(s.get_record("k").map(|r| r.version), Some(v.clone()));
    assert_eq!(r.version, v);
    assert_eq!(s.records(), t.records());
    let d = s.delete("k", 1_001);
    let rd = t.write("k", None, 1_001);
    assert!(d > v);
    assert_eq!(s.get_record("k").map(|r| r.version), Some(d.clone()));
    assert_eq!(rd.version, d);
    assert!(rd.is_tombstone() && s.get("k").is_none());
    assert_eq!(s.records(), t.records());
    assert_eq!(s.digest(), t.digest());
}

proptest! {
    /// Merging in batches (runs of one origin share a lock) wins and loses
    /// exactly as merging one record at a time, and leaves the same state.
    #[test]
    fn batches_merge_like_single_records(recs in records(40), cuts in proptest::collection::vec(1usize..8, 1..10)) {
        let one = local_store();
        let single: Vec<bool> = recs.iter().map(|r| one.merge(r.clone())).collect();
        let batched_store = local_store();
        let mut batched = Vec::new();
        let mut rest = recs.as_slice();
        for c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*c).min(rest.len()));
            batched.extend(batched_store.merge_batch(now.to_vec()));
            rest = later;
        }
        prop_assert_eq!(batched, single);
        prop_assert_eq!(batched_store.records(), one.records());
        prop_assert_eq!(batched_store.digest().fingerprint(), one.digest().fingerprint());
        prop_assert_eq!(batched_store.clock().last(), one.clock().last());
    }

    /// A batch indexes its writes together, in sequence order, after
    /// merging them: with records in no order and repeated (a page or a
    /// stream comes in key order), it still wins and loses as single
    /// records do, raises the watermarks as far, and offers a peer the
    /// same delta (the same writes and ghosts).
    #[test]
    fn batches_in_no_order_and_repeated_index_like_single_records(
        recs in records(60).prop_shuffle(),
        repeats in proptest::collection::vec(any::<Index>(), 0..12),
        at in any::<Index>(),
    ) {
        let mut all = recs.clone();
        for i in &repeats {
            let r = recs[i.index(recs.len())].clone();
            all.insert(at.index(all.len() + 1), r);
        }
        let one = local_store();
        let single: Vec<bool> = all.iter().map(|r| one.merge(r.clone())).collect();
        let batched_store = local_store();
        prop_assert_eq!(batched_store.merge_batch(all), single);
        prop_assert_eq!(batched_store.records(), one.records());
        prop_assert_eq!(batched_store.digest(), one.digest());
        let peer = local_store().digest();
        prop_assert_eq!(
            batched_store.delta_for(&peer, 1 << 20, 0),
            one.delta_for(&peer, 1 << 20, 0)
        );
    }
}
