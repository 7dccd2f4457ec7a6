//! Lifetimes of values: expiry (a value past it behaves as the tombstone of
//! its version) and ephemeral values (hidden, shown and removed with their
//! owner).

use std::sync::Arc;

use bytes::Bytes;
use gossipkv_storage::{ChangeCause, Lifetime, Origin, Record, Store, HLC_MAX_PHYSICAL_MS};
use parking_lot::Mutex;

type Seen = Arc<Mutex<Vec<(String, Option<Bytes>, ChangeCause)>>>;

/// A store whose change observer records what it is told.
fn observed(node: &str) -> (Store, Seen) {
    let store = Store::new(Origin::new(node, 1));
    let seen: Seen = Arc::default();
    let s = seen.clone();
    store.set_observer(Arc::new(move |k: &str, v: Option<&Bytes>, c| {
        s.lock().push((k.to_string(), v.cloned(), c));
    }));
    (store, seen)
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn a_value_is_hidden_from_its_expiry_and_becomes_the_tombstone_of_its_version() {
    let (s, seen) = observed("a");
    let r = s.write_with("k", Some(b("v")), Lifetime::expiring(2_000), 1_000);
    assert_eq!(s.get_at("k", 1_999), Some(b("v")));
    assert!(s.contains_at("k", 1_999));
    // From the expiry on, timed reads hide it at once...
    assert_eq!(s.get_at("k", 2_000), None);
    assert!(s.keys_at(2_000).is_empty());
    assert!(s.scan_prefix_at("", 2_000).is_empty());
    // ...and the sweep turns it into the tombstone of the same version.
    assert_eq!(s.next_expiry(), Some(2_000));
    assert_eq!(s.expire(1_999), 0);
    let digest = s.digest();
    assert_eq!(s.expire(2_000), 1);
    assert_eq!(s.len(), 0);
    assert_eq!(s.get("k"), None);
    let held = s.get_record("k").expect("the tombstone is kept");
    assert!(held.is_tombstone());
    assert_eq!(held.version, r.version);
    assert_eq!(held.lifetime, Lifetime::expiring(2_000));
    // Nothing to tell peers: the digest is the same.
    assert_eq!(s.digest(), digest);
    assert_eq!(s.next_expiry(), None);
    let last = seen.lock().last().cloned().unwrap();
    assert_eq!(last, ("k".to_string(), None, ChangeCause::Expired));
}

#[test]
fn refreshing_or_overwriting_replaces_the_expiry() {
    let s = Store::new(Origin::new("a", 1));
    s.write_with("k", Some(b("1")), Lifetime::expiring(2_000), 1_000);
    // Refreshed: the old expiry no longer applies.
    s.write_with("k", Some(b("2")), Lifetime::expiring(5_000), 1_500);
    assert_eq!(s.expire(2_000), 0);
    assert_eq!(s.get_at("k", 4_999), Some(b("2")));
    // Overwritten by a plain write: it lives for good.
    s.set("k", b("3"), 1_600);
    assert_eq!(s.expire(10_000), 0);
    assert_eq!(s.get_at("k", u64::MAX), Some(b("3")));
    assert_eq!(s.next_expiry(), None);
    // A delete of an expiring value leaves nothing to expire either.
    s.write_with("j", Some(b("x")), Lifetime::expiring(3_000), 1_700);
    s.delete("j", 1_800);
    assert_eq!(s.next_expiry(), None);
    assert_eq!(s.get_record("j").unwrap().lifetime, Lifetime::FOREVER);
}

#[test]
fn replicas_expire_the_same_record_the_same_way_with_no_message() {
    let a = Store::new(Origin::new("a", 1));
    let b_ = Store::new(Origin::new("b", 1));
    let r = a.write_with("k", Some(b("v")), Lifetime::expiring(2_000), 1_000);
    b_.merge(r.clone());
    assert_eq!(b_.get_at("k", 1_500), Some(b("v")));
    a.expire(2_000);
    b_.expire(2_000);
    assert_eq!(a.get_record("k"), b_.get_record("k"));
    assert_eq!(a.digest(), b_.digest());
    // A replica that gets the record after its expiry stores the tombstone
    // at once (and never shows the value).
    let (c, seen) = observed("c");
    c.expire(3_000);
    assert!(c.merge(r.clone()));
    assert_eq!(c.get("k"), None);
    assert_eq!(c.len(), 0);
    assert!(c.get_record("k").unwrap().is_tombstone());
    assert!(seen.lock().iter().all(|(_, v, _)| v.is_none()));
    // A newer write of the key beats the expired version everywhere.
    let newer = a.write("k", Some(b("w")), 4_000);
    c.merge(newer);
    assert_eq!(c.get_at("k", 4_000), Some(b("w")));
}

#[test]
fn expiries_at_the_end_of_time_are_kept_at_the_clock_bound() {
    let s = Store::new(Origin::new("a", 1));
    let r = s.write_with("k", Some(b("v")), Lifetime::expiring(u64::MAX), 1_000);
    assert_eq!(r.lifetime.expires_ms, HLC_MAX_PHYSICAL_MS);
    assert_eq!(s.expire(HLC_MAX_PHYSICAL_MS - 1), 0);
    assert_eq!(s.get_at("k", HLC_MAX_PHYSICAL_MS - 1), Some(b("v")));
    assert_eq!(s.expire(u64::MAX), 1);
}

/// An ephemeral value of origin `b` (generation 1) under `key`.
fn owned_by_b(store: &Store, key: &str, seq: u64) -> Record {
    let writer = Store::new(Origin::new("b", 1));
    for i in 1..seq {
        writer.set(&format!("filler-{i}"), b("x"), 1_000);
    }
    let r = writer.write_with(key, Some(b("svc")), Lifetime::FOREVER.owned(), 1_000);
    assert_eq!(r.version.seq, seq);
    store.merge(r.clone());
    r
}

#[test]
fn ephemeral_values_hide_show_and_go_with_their_owner() {
    let (s, seen) = observed("a");
    let b_origin = Origin::new("b", 1);
    owned_by_b(&s, "svc/b", 1);
    assert_eq!(s.owned_len(&b_origin), 1);
    assert_eq!(s.owners(), vec![b_origin.clone()]);
    assert_eq!(s.len(), 1);
    // The owner died: hidden, records unchanged.
    let digest = s.digest();
    assert_eq!(s.hide_owner(&b_origin), 1);
    assert_eq!(s.hide_owner(&b_origin), 0, "hiding twice tells nothing");
    assert_eq!(s.get("svc/b"), None);
    assert_eq!(s.len(), 0);
    assert!(s.keys().is_empty());
    assert_eq!(s.digest(), digest);
    assert!(s.get_record("svc/b").unwrap().value.is_some());
    assert_eq!(
        seen.lock().last().cloned().unwrap(),
        ("svc/b".into(), None, ChangeCause::OwnerGone)
    );
    // It refuted: shown again.
    assert_eq!(s.show_owner(&b_origin), 1);
    assert_eq!(s.get("svc/b"), Some(b("svc")));
    assert_eq!(s.len(), 1);
    assert_eq!(
        seen.lock().last().cloned().unwrap(),
        ("svc/b".into(), Some(b("svc")), ChangeCause::OwnerBack)
    );
    // Dead past the grace: removed for good, as tombstones of their versions.
    s.hide_owner(&b_origin);
    assert_eq!(s.remove_owned(&b_origin), 1);
    assert_eq!(s.owned_len(&b_origin), 0);
    assert!(s.get_record("svc/b").unwrap().is_tombstone());
    assert_eq!(s.show_owner(&b_origin), 0, "nothing left to show");
    assert_eq!(s.get("svc/b"), None);
}

#[test]
fn values_of_a_hidden_owner_that_arrive_later_stay_hidden() {
    let s = Store::new(Origin::new("a", 1));
    let b_origin = Origin::new("b", 1);
    owned_by_b(&s, "svc/1", 1);
    s.hide_owner(&b_origin);
    owned_by_b(&s, "svc/2", 2);
    assert_eq!(s.get("svc/2"), None);
    assert_eq!(s.len(), 0);
    // Its ordinary (not ephemeral) values are not its to take along.
    let writer = Store::new(b_origin.clone());
    for k in ["x", "y"] {
        writer.set(k, b("v"), 1_000);
    }
    let plain = writer.write("config", Some(b("kept")), 1_000);
    s.merge(plain);
    assert_eq!(s.get("config"), Some(b("kept")));
}

#[test]
fn another_writer_takes_ownership_under_last_writer_wins() {
    let s = Store::new(Origin::new("a", 1));
    let b_origin = Origin::new("b", 1);
    owned_by_b(&s, "svc/x", 1);
    // Node c writes the key later, ephemeral: it is c's now.
    let c = Store::new(Origin::new("c", 1));
    c.expire(0);
    let newer = c.write_with("svc/x", Some(b("c")), Lifetime::FOREVER.owned(), 9_000);
    s.merge(newer);
    assert_eq!(s.owned_len(&b_origin), 0);
    assert_eq!(s.owned_len(&Origin::new("c", 1)), 1);
    assert_eq!(s.hide_owner(&b_origin), 0);
    assert_eq!(s.get("svc/x"), Some(b("c")));
    assert_eq!(s.remove_owned(&b_origin), 0);
    assert_eq!(s.get("svc/x"), Some(b("c")));
}

#[test]
fn hiding_an_unknown_owner_adds_no_origin() {
    let s = Store::new(Origin::new("a", 1));
    s.set("k", b("v"), 1_000);
    let before = s.digest();
    assert_eq!(s.hide_owner(&Origin::new("ghost", 7)), 0);
    assert_eq!(s.remove_owned(&Origin::new("ghost", 7)), 0);
    assert_eq!(s.digest(), before);
    assert!(s.owners().is_empty());
}

#[test]
fn an_owner_rewrites_its_values_to_beat_removals_and_deletes_them_to_leave() {
    let a = Store::new(Origin::new("a", 1));
    let peer = Store::new(Origin::new("p", 1));
    let first = a.write_with("svc/a", Some(b("up")), Lifetime::FOREVER.owned(), 1_000);
    a.set("plain", b("v"), 1_000);
    peer.merge(first.clone());
    // The peer removed them after the grace...
    peer.hide_owner(a.local_origin());
    peer.remove_owned(a.local_origin());
    assert_eq!(peer.get("svc/a"), None);
    // ...the owner, back, writes them again with a new version that wins.
    let again = a.rewrite_owned(true, 2_000);
    assert_eq!(again.len(), 1, "only the ephemeral value");
    assert!(again[0].version > first.version);
    assert_eq!(again[0].lifetime, Lifetime::FOREVER.owned());
    peer.show_owner(a.local_origin());
    for r in again {
        peer.merge(r);
    }
    assert_eq!(peer.get("svc/a"), Some(b("up")));
    // Leaving: they are deleted (plain values stay).
    let deletes = a.rewrite_owned(false, 3_000);
    assert_eq!(deletes.len(), 1);
    assert!(deletes[0].is_tombstone());
    for r in deletes {
        peer.merge(r);
    }
    assert_eq!(peer.get("svc/a"), None);
    assert_eq!(a.get("svc/a"), None);
    assert_eq!(a.get("plain"), Some(b("v")));
    assert!(a.rewrite_owned(false, 4_000).is_empty());
}

#[test]
fn an_ephemeral_value_with_a_time_to_live_goes_at_whichever_comes_first() {
    let s = Store::new(Origin::new("a", 1));
    let writer = Store::new(Origin::new("b", 1));
    let r = writer.write_with(
        "svc/b",
        Some(b("v")),
        Lifetime::expiring(5_000).owned(),
        1_000,
    );
    s.merge(r);
    assert_eq!(s.get_at("svc/b", 4_000), Some(b("v")));
    assert_eq!(s.expire(5_000), 1);
    assert_eq!(s.owned_len(&Origin::new("b", 1)), 0);
    assert_eq!(s.hide_owner(&Origin::new("b", 1)), 0);
}

#[test]
fn every_record_that_wins_a_merge_is_told_even_when_nothing_shows() {
    // The change observer tells watchers; the collection observer tells a
    // persister of changes watchers do not see. Between them, every record
    // that wins a merge is told, or it would never reach the disk.
    let (s, seen) = observed("a");
    let quiet: Arc<Mutex<Vec<String>>> = Arc::default();
    let q = quiet.clone();
    s.set_collect_observer(Arc::new(move |k: &str| q.lock().push(k.to_string())));
    let told = |key: &str| {
        seen.lock().iter().filter(|(k, _, _)| k == key).count()
            + quiet.lock().iter().filter(|k| *k == key).count()
    };
    // A newer tombstone over a tombstone.
    let c = Store::new(Origin::new("c", 1));
    s.merge(c.write("gone", None, 1_000));
    s.merge(c.write("gone", None, 2_000));
    assert_eq!(told("gone"), 2);
    // A hidden owner's newer value over its older one.
    owned_by_b(&s, "svc/b", 1);
    s.hide_owner(&Origin::new("b", 1));
    let before = told("svc/b");
    let writer = Store::new(Origin::new("b", 1));
    writer.expire(0);
    writer.set("filler", b("x"), 1_000);
    s.merge(writer.write_with("svc/b", Some(b("v2")), Lifetime::FOREVER.owned(), 5_000));
    assert_eq!(s.get_record("svc/b").unwrap().value, Some(b("v2")));
    assert_eq!(told("svc/b"), before + 1);
}
