//! Retired origins: an origin none of whose writes is held any more leaves
//! digests, and takes nothing more.

use bytes::Bytes;
use gossipkv_storage::{Digest, DigestEntry, Origin, Record, Store, RETIRED_WATERMARK};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn listed(store: &Store, origin: &Origin) -> Option<u64> {
    store
        .digest()
        .entries
        .iter()
        .find(|e| e.origin == *origin)
        .map(|e| e.watermark)
}

/// `me` holds two writes of `old` (the first generation of node "a"); the
/// second generation overwrote the first, not the second.
fn with_old_generation() -> (Store, Store, Origin) {
    let old = Store::new(Origin::new("a", 1));
    old.set("x", b("1"), 1_000);
    old.set("y", b("2"), 1_001);
    let me = Store::new(Origin::new("me", 1));
    me.apply(&old.delta_for(&me.digest(), 1 << 20, 0));
    let new = Store::new(Origin::new("a", 2));
    me.merge(new.write("x", Some(b("1b")), 2_000));
    (me, new, Origin::new("a", 1))
}

#[test]
fn an_origin_with_a_held_write_is_not_retired_until_that_write_is_superseded() {
    let (me, new, old) = with_old_generation();
    assert_eq!(me.retire_origins(std::slice::from_ref(&old)), vec![]);
    assert_eq!(listed(&me, &old), Some(2));
    // The local origin and unknown ones are never retired.
    let local = me.local_origin().clone();
    assert_eq!(me.retire_origins(&[local, Origin::new("zz", 9)]), vec![]);

    me.merge(new.write("y", None, 2_001));
    assert_eq!(
        me.retire_origins(std::slice::from_ref(&old)),
        vec![old.clone()]
    );
    assert!(me.is_retired(&old));
    // Advertised first, then silent: gone from the digest.
    assert_eq!(listed(&me, &old), Some(RETIRED_WATERMARK));
    assert!(me.set_origin_silent(&old, true));
    assert_eq!(listed(&me, &old), None);
    assert_eq!(me.retired_origins(), vec![(old.clone(), true)]);
    // Retiring again changes nothing.
    assert_eq!(me.retire_origins(std::slice::from_ref(&old)), vec![]);
}

#[test]
fn a_retired_origin_refuses_its_old_writes_even_where_the_tombstone_was_collected() {
    let (me, new, old) = with_old_generation();
    // A stale copy of the old generation's "y", kept by a peer that lagged.
    let stale = Record {
        key: "y".into(),
        value: Some(b("2")),
        version: gossipkv_storage::Version::new(gossipkv_storage::Hlc::new(1_001, 0), &old, 2),
        lifetime: Default::default(),
    };
    me.merge(new.write("y", None, 2_001));
    // The tombstone is collected (retention 0 at a late time).
    me.collect_garbage(10_000_000, 0);
    assert!(me.get_record("y").is_none());
    assert_eq!(
        me.retire_origins(std::slice::from_ref(&old)),
        vec![old.clone()]
    );
    me.set_origin_silent(&old, true);
    assert!(!me.merge(stale.clone()));
    assert_eq!(me.get("y"), None);
    assert_eq!(me.retired_refused(), 1);
    // Also inside a delta's chunk: refused, and no watermark is raised.
    let peer = Store::new(Origin::new("peer", 1));
    let src = Store::new(old.clone());
    src.set("x", b("1"), 1_000);
    src.set("y", b("2"), 1_001);
    peer.apply(&src.delta_for(&peer.digest(), 1 << 20, 0));
    assert_eq!(peer.get_record("y").map(|r| r.version), Some(stale.version));
    let delta = peer.delta_for(&me.digest(), 1 << 20, 0);
    assert!(!delta.chunks.is_empty(), "the peer sends what it holds");
    me.apply(&delta);
    assert_eq!(me.get("y"), None);
    assert_eq!(listed(&me, &old), None);
    assert!(me.retired_refused() >= 2);
}

#[test]
fn a_peer_sends_nothing_of_an_origin_a_digest_lists_as_retired_and_does_not_resync_for_it() {
    let (me, new, old) = with_old_generation();
    me.merge(new.write("y", None, 2_001));
    me.collect_garbage(10_000_000, 0);
    me.retire_origins(std::slice::from_ref(&old));
    // A peer that still holds the old generation's writes, with a floor.
    let peer = Store::new(Origin::new("peer", 1));
    let src = Store::new(old.clone());
    src.set("x", b("1"), 1_000);
    src.set("y", b("2"), 1_001);
    src.delete("y", 1_002);
    peer.apply(&src.delta_for(&peer.digest(), 1 << 20, 0));
    peer.collect_garbage(10_000_000, 0);
    assert!(peer.floor(&old) > 0);
    let digest = me.digest();
    assert!(peer
        .delta_for(&digest, 1 << 20, 0)
        .chunks
        .iter()
        .all(|c| c.origin != old));
    assert!(!peer.needs_resync(&digest));
    // Absent instead (silent), the same digest reads as watermark 0: the
    // peer would re-synchronise us. That is why an origin stays advertised
    // until every live member retired it.
    me.set_origin_silent(&old, true);
    assert!(peer.needs_resync(&me.digest()));
}

#[test]
fn retired_watermarks_raise_nothing_and_pages_carry_the_real_watermark() {
    let (me, new, old) = with_old_generation();
    me.merge(new.write("y", None, 2_001));
    me.retire_origins(std::slice::from_ref(&old));
    let page = me.page_digest();
    assert_eq!(page.watermark(&old), Some(2));
    let other = Store::new(Origin::new("other", 1));
    let raised = other.raise_watermarks(&Digest {
        entries: vec![DigestEntry {
            origin: old.clone(),
            watermark: RETIRED_WATERMARK,
        }],
        complete: true,
        ..Digest::default()
    });
    assert_eq!(raised, 0);
    assert_eq!(other.watermark(&old), 0);
    // Nor do restored marks touch a retired origin.
    me.restore_marks(&[(old.clone(), 50, 50)]);
    assert_eq!(me.watermark(&old), 2);
}

#[test]
fn unretiring_takes_writes_again_from_the_same_watermark() {
    let (me, new, old) = with_old_generation();
    me.merge(new.write("y", None, 2_001));
    me.retire_origins(std::slice::from_ref(&old));
    // The old generation's third write, which we never had (a member that
    // was away shows it): refused while retired...
    let src = Store::new(old.clone());
    src.set("x", b("1"), 1_000);
    src.set("y", b("2"), 1_001);
    let third = src.write("z", Some(b("3")), 1_002);
    assert!(!me.merge(third.clone()));
    // ...and taken once unretired; the watermark goes on from 2.
    assert!(me.unretire_origin(&old));
    assert_eq!(listed(&me, &old), Some(2));
    assert!(me.merge(third));
    assert_eq!(me.get("z"), Some(b("3")));
    assert_eq!(me.watermark(&old), 3);
    assert!(!me.unretire_origin(&old));
}

#[test]
fn an_older_generation_of_this_node_is_adopted_with_its_timestamps_then_retires() {
    // Generation 1 of "me" wrote x, y (deleted later) and an ephemeral z.
    let old = Origin::new("me", 1);
    let gen1 = Store::new(old.clone());
    gen1.set("x", b("1"), 1_000);
    gen1.set("y", b("2"), 1_001);
    gen1.delete("y", 1_002);
    gen1.write_with(
        "z",
        Some(b("3")),
        gossipkv_storage::Lifetime::FOREVER.owned(),
        1_003,
    );
    // Another node overwrote x later than generation 1 wrote it...
    let other = Store::new(Origin::new("other", 1));
    let newer = other.write("x", Some(b("other")), 5_000);
    // ...which generation 2 has not heard of yet.
    let me = Store::new(Origin::new("me", 2));
    me.apply(&gen1.delta_for(&me.digest(), 1 << 20, 0));
    let adopted = me.adopt_older_generations();
    let keys: Vec<&str> = adopted.iter().map(|r| &*r.key).collect();
    // The live ephemeral value is not adopted (it died with generation 1).
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&"x") && keys.contains(&"y"));
    for r in &adopted {
        let original = gen1.get_record(&r.key).unwrap();
        assert_eq!(r.version.hlc, original.version.hlc, "same timestamp");
        assert_eq!(r.value, original.value);
        assert!(r.version > original.version, "beats the original");
        assert_eq!(r.version.origin(), *me.local_origin());
    }
    // The newer write by another node still wins over the adopted x.
    assert!(me.merge(newer.clone()));
    assert_eq!(me.get("x"), Some(b("other")));
    // A copy of the original arriving late loses to the adopted record.
    let peer = Store::new(Origin::new("peer", 1));
    peer.apply(&gen1.delta_for(&peer.digest(), 1 << 20, 0));
    for r in &adopted {
        peer.merge(r.clone());
    }
    assert_eq!(
        peer.get_record("y").unwrap().version.origin(),
        *me.local_origin()
    );
    // Once z is gone too (the protocol removes an older generation's
    // ephemeral values), generation 1 holds nothing here and retires.
    assert_eq!(me.retire_origins(std::slice::from_ref(&old)), vec![]);
    me.remove_owned(&old);
    let tomb = me.adopt_older_generations();
    assert_eq!(tomb.len(), 1);
    assert!(tomb[0].is_tombstone());
    assert_eq!(
        me.retire_origins(std::slice::from_ref(&old)),
        vec![old.clone()]
    );
    // Nothing left to adopt: no pass over the keys.
    assert!(me.adopt_older_generations().is_empty());
    // Another node's generations are never adopted.
    let src = Store::new(Origin::new("other", 0));
    me.merge(src.write("w", Some(b("w")), 900));
    assert!(me.adopt_older_generations().is_empty());
}

#[test]
fn active_origins_leave_the_count_when_retired_and_come_back_when_unretired() {
    let (me, new, old) = with_old_generation();
    // me, a/1, a/2.
    assert_eq!(me.active_origins(), 3);
    assert!(me.knows_origin(&old) && !me.knows_origin(&Origin::new("zz", 1)));
    me.merge(new.write("y", None, 2_001));
    assert_eq!(me.retire_origins(std::slice::from_ref(&old)).len(), 1);
    assert_eq!(me.active_origins(), 2);
    assert!(me.knows_origin(&old), "a retired origin is still known");
    // Retiring twice, or unretiring one that is not retired, counts nothing.
    assert!(me.retire_origins(std::slice::from_ref(&old)).is_empty());
    assert!(!me.unretire_origin(&Origin::new("a", 2)));
    assert_eq!(me.active_origins(), 2);
    assert!(me.unretire_origin(&old));
    assert_eq!(me.active_origins(), 3);
}
