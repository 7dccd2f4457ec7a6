//! Tombstone retention and the lagging-peer rule: a replica that was away
//! while tombstones were collected re-synchronises page by page, deletes
//! stick, and what it wrote while away survives.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use common::{assert_identical, converge, resync, resync_with, snapshot, wm_map, Oracle, Snapshot};
use gossipkv_storage::{Digest, DigestEntry, Hlc, Origin, Record, Store};
use proptest::prelude::*;

/// Tombstone retention used throughout (ms).
const R: u64 = 10_000;

fn val(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn check_all(o: &Oracle, stores: &[(&str, &Store)]) {
    for (name, s) in stores {
        if let Err(e) = o.check_w(name, s) {
            panic!("{e}");
        }
    }
}

fn tombstones(s: &Store) -> Vec<Record> {
    s.records()
        .into_iter()
        .filter(Record::is_tombstone)
        .collect()
}

#[test]
fn away_peer_resyncs_by_pages_and_deletes_stick() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let c = Store::new(Origin::new("c", 1));
    let all = [("a", &a), ("b", &b), ("c", &c)];
    let mut o = Oracle::default();

    for i in 0..10u64 {
        o.record(&a.write(&format!("k{i}"), Some(val(&format!("a{i}"))), 1_000 + i));
    }
    o.record(&b.write("b0", Some(val("b0")), 1_100));
    o.record(&c.write("c0", Some(val("c0")), 1_200));
    o.record(&c.write("k9", Some(val("c-k9")), 1_300));
    converge(&[&a, &b, &c], 300, 50).unwrap();
    assert_identical(&all);
    check_all(&o, &all);

    // C goes away.
    let c_old = c.records();
    for i in 0..4 {
        o.record(&a.write(&format!("k{i}"), None, 2_000 + i));
    }
    o.record(&a.write("k4", Some(val("a4'")), 2_010));
    o.record(&a.write("k5", Some(val("a5'")), 2_020));
    o.record(&b.write("k6", None, 2_030));
    o.record(&b.write("b0", None, 2_040));
    // C writes while away; A and B never see these before C returns.
    o.record(&c.write("c-away", Some(val("c-away")), 2_100));
    o.record(&c.write("k7", Some(val("c-k7")), 2_200));
    o.record(&c.write("k8", None, 2_300));
    converge(&[&a, &b], 300, 50).unwrap();
    assert_identical(&[("a", &a), ("b", &b)]);
    check_all(&o, &all);

    // Retention passes; A and B collect.
    let now = 2_400 + R;
    let (a_before, b_before) = (a.len_with_tombstones(), b.len_with_tombstones());
    let ga = a.collect_garbage(now, R);
    let gb = b.collect_garbage(now, R);
    o.collected(now, R);
    assert_eq!(ga.tombstones, 6, "{ga:?}");
    assert_eq!(gb.tombstones, 6, "{gb:?}");
    assert_eq!(a.len_with_tombstones(), a_before - 6);
    assert_eq!(b.len_with_tombstones(), b_before - 6);
    assert!(tombstones(&a).is_empty());
    assert!(tombstones(&b).is_empty());
    let (oa, ob) = (a.local_origin().clone(), b.local_origin().clone());
    assert_eq!(a.floor(&oa), 14, "A's deletes were its writes 11..=14");
    assert_eq!(b.floor(&ob), 3, "B's deletes were its writes 2..=3");
    assert_eq!(b.floor(&oa), 14);
    check_all(&o, &all);

    // Collecting again finds nothing more.
    assert_eq!(a.collect_garbage(now, R).tombstones, 0);

    // C comes back: too far behind for a delta.
    assert!(a.needs_resync(&c.digest()));
    assert!(b.needs_resync(&c.digest()));
    assert!(!a.needs_resync(&b.digest()));
    assert!(!b.needs_resync(&a.digest()));
    let pages = resync_with(&a, &c, 300, |s| o.check_w("c", s).unwrap());
    assert!(pages > 2, "small pages: {pages}");
    for k in ["k0", "k1", "k2", "k3", "k6", "b0"] {
        assert_eq!(c.get_record(k), None, "{k} survived the resync at C");
    }
    assert_eq!(c.get("c-away"), Some(val("c-away")));
    assert_eq!(c.get("k7"), Some(val("c-k7")));
    assert!(!a.needs_resync(&c.digest()));
    check_all(&o, &all);

    // Then normal deltas.
    converge(&[&a, &b, &c], 300, 50).unwrap();
    assert_identical(&all);
    check_all(&o, &all);
    for (name, s) in all {
        for k in ["k0", "k1", "k2", "k3", "k6", "b0"] {
            assert_eq!(s.get_record(k), None, "{k} came back at {name}");
        }
        assert_eq!(s.get("c-away"), Some(val("c-away")), "at {name}");
        assert_eq!(s.get("k7"), Some(val("c-k7")), "at {name}");
        assert_eq!(s.get("k4"), Some(val("a4'")), "at {name}");
        assert_eq!(s.get("k9"), Some(val("c-k9")), "at {name}");
        assert!(s.get_record("k8").unwrap().is_tombstone(), "at {name}");
        // C's old records of deleted keys are refused everywhere.
        for r in &c_old {
            if s.get_record(&r.key).is_none() {
                assert!(!s.merge(r.clone()), "{name} took back {r:?}");
                assert_eq!(s.get_record(&r.key), None);
            }
        }
    }
    let deleted_old = c_old
        .iter()
        .filter(|r| a.get_record(&r.key).is_none())
        .count();
    assert_eq!(
        deleted_old, 6,
        "k0..k3, k6 and b0 were held by C before it left"
    );

    // Nothing changes any more.
    let before: Vec<Snapshot> = all.iter().map(|(_, s)| snapshot(s)).collect();
    converge(&[&a, &b, &c], 300, 50).unwrap();
    let after: Vec<Snapshot> = all.iter().map(|(_, s)| snapshot(s)).collect();
    assert!(before == after);
}

#[test]
fn brand_new_peer_gets_everything_by_pages() {
    let a = Store::new(Origin::new("a", 3));
    let b = Store::new(Origin::new("b", 1));
    let mut o = Oracle::default();
    for i in 0..30u64 {
        o.record(&a.write(&format!("k{i:02}"), Some(val(&format!("v{i}"))), 1_000 + i));
        o.record(&b.write(&format!("j{i:02}"), Some(val(&format!("w{i}"))), 1_000 + i));
    }
    for i in (0..30u64).step_by(3) {
        o.record(&a.write(&format!("k{i:02}"), None, 2_000 + i));
        o.record(&b.write(&format!("j{i:02}"), None, 2_000 + i));
    }
    converge(&[&a, &b], 1_400, 50).unwrap();
    // A recent delete, kept through the collection.
    o.record(&a.write("k01", None, 9_000 + R));
    let stats = a.collect_garbage(5_000 + R, R);
    o.collected(5_000 + R, R);
    assert_eq!(stats.tombstones, 20);
    assert_eq!(tombstones(&a).len(), 1);
    assert!(a.floor(a.local_origin()) > 0);

    let d = Store::new(Origin::new("d", 1));
    assert!(a.needs_resync(&d.digest()));
    let pages = resync_with(&a, &d, 250, |s| o.check_w("d", s).unwrap());
    assert!(pages > 5);
    assert_eq!(d.records(), a.records());
    assert_eq!(wm_map(&d), wm_map(&a));
    assert_eq!(d.len(), a.len());
    assert!(!a.needs_resync(&d.digest()));
    assert!(!d.needs_resync(&a.digest()));
    o.check_w("d", &d).unwrap();

    // A delta exchange afterwards has nothing to add.
    let snap = snapshot(&d);
    d.apply(&a.delta_for(&d.digest(), 1_400, 0));
    assert_eq!(snapshot(&d), snap);
    // D's own writes flow to A by deltas.
    o.record(&d.write("k00", Some(val("from d")), 20_000));
    converge(&[&a, &d], 1_400, 50).unwrap();
    assert_eq!(a.get("k00"), Some(val("from d")));
    assert_identical(&[("a", &a), ("d", &d)]);
    o.check_w("a", &a).unwrap();
}

/// D was away when A deleted `k`; A (and B) collected the tombstone; C joined
/// afterwards from A's pages, so C never saw the tombstone either. When D
/// comes back and talks to C, C must not hand it a delta that claims D has
/// seen the delete: D would keep `k` forever.
#[test]
fn peer_that_was_resynced_does_not_vouch_for_collected_deletes() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let d = Store::new(Origin::new("d", 1));
    a.set("k", val("old"), 1_000);
    a.set("x", val("x"), 1_001);
    converge(&[&a, &b, &d], 1_400, 20).unwrap();
    // D goes away.
    a.delete("k", 2_000);
    converge(&[&a, &b], 1_400, 20).unwrap();
    a.collect_garbage(3_000 + R, R);
    b.collect_garbage(3_000 + R, R);
    assert_eq!(a.get_record("k"), None);

    let c = Store::new(Origin::new("c", 1));
    assert!(a.needs_resync(&c.digest()));
    resync(&a, &c, 200);
    assert_eq!(c.records(), a.records());

    // D comes back and first meets C.
    assert!(
        c.needs_resync(&d.digest()),
        "C would send D a delta that skips the collected delete of k"
    );
    converge(&[&c, &d], 1_400, 20).unwrap();
    assert_eq!(
        d.get_record("k"),
        None,
        "the delete of k did not stick at D"
    );
    converge(&[&a, &b, &c, &d], 1_400, 20).unwrap();
    assert_identical(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
    assert_eq!(d.get_record("k"), None);
}

/// C saw A's delete of `k` (it holds the tombstone), but missed B's delete
/// of `j`, so it re-synchronises from A, which drops the tombstone of `k`
/// (A has collected it). D missed the delete of `k` but saw the one of `j`.
/// When D then talks to C, C must not vouch for the delete of `k` it dropped.
#[test]
fn tombstone_dropped_by_a_page_still_forces_lagging_peers_to_resync() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let c = Store::new(Origin::new("c", 1));
    let d = Store::new(Origin::new("d", 1));
    a.set("k", val("k"), 1_000);
    b.set("j", val("j"), 1_000);
    converge(&[&a, &b, &c, &d], 1_400, 20).unwrap();
    // D goes away; A deletes k; A, B, C see it; C goes away.
    a.delete("k", 2_000);
    converge(&[&a, &b, &c], 1_400, 20).unwrap();
    assert!(c.get_record("k").unwrap().is_tombstone());
    // B deletes j; D (only) learns of it through a partial digest.
    b.delete("j", 2_100);
    converge(&[&a, &b], 1_400, 20).unwrap();
    let ob = b.local_origin().clone();
    let partial = Digest {
        entries: vec![DigestEntry {
            watermark: d.watermark(&ob),
            origin: ob.clone(),
        }],
        complete: false,
        ..Digest::default()
    };
    d.apply(&b.delta_for(&partial, 1_400, 0));
    assert!(d.get_record("j").unwrap().is_tombstone());
    assert_eq!(d.get("k"), Some(val("k")));

    a.collect_garbage(3_000 + R, R);
    b.collect_garbage(3_000 + R, R);

    // C comes back: it missed the delete of j.
    assert!(a.needs_resync(&c.digest()));
    resync(&a, &c, 1_400);
    assert_eq!(c.get_record("k"), None);
    assert_eq!(c.get_record("j"), None);

    // D comes back and first meets C.
    assert!(
        c.needs_resync(&d.digest()),
        "C would send D a delta that skips the delete of k it dropped"
    );
    converge(&[&c, &d], 1_400, 20).unwrap();
    assert_eq!(
        d.get_record("k"),
        None,
        "the delete of k did not stick at D"
    );
    converge(&[&a, &b, &c, &d], 1_400, 20).unwrap();
    assert_identical(&[("a", &a), ("b", &b), ("c", &c), ("d", &d)]);
}

/// D wrote `k` while away; A deleted `k` later (by the clocks) without
/// having seen D's write, and everyone collected the tombstone before D came
/// back. The page rule keeps D's write (A never saw it), so `k` comes back
/// with D's older value. That is the documented rule; at least every replica
/// agrees, when they all collect in step.
#[test]
fn page_windows_list_the_origins_a_peer_is_behind_in_first() {
    let origins: Vec<Origin> = (0..24)
        .map(|i| Origin::new(format!("w-{i:02}"), 1))
        .collect();
    let digest = Digest {
        entries: origins
            .iter()
            .map(|o| DigestEntry {
                origin: o.clone(),
                watermark: 2,
            })
            .collect(),
        complete: true,
        open_start: false,
        open_end: false,
    };
    let max = digest.size_hint() / 4;
    let behind = [origins[0].clone(), origins[1].clone(), origins[23].clone()];
    let w = digest.clone().page_window(max, 20, &behind);
    assert!(w.size_hint() <= max);
    assert!(!w.complete && !w.open_start && !w.open_end);
    for o in &behind {
        assert_eq!(w.watermark(o), Some(2), "{o:?} is listed");
    }
    // The rest are taken from the rotation point on, wrapping around; an
    // unlisted origin inside the range reads as 0, never as the sender's.
    assert!(w.entries.len() > behind.len());
    assert!(w.entries.windows(2).all(|p| p[0].origin < p[1].origin));
    for o in &origins {
        let listed = w.entries.iter().any(|e| &e.origin == o);
        assert_eq!(w.watermark(o).unwrap_or(0), if listed { 2 } else { 0 });
    }
    // A digest that fits is returned whole.
    assert_eq!(digest.clone().page_window(usize::MAX, 3, &behind), digest);
}

#[test]
fn unseen_write_older_than_a_collected_delete_comes_back_everywhere() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let d = Store::new(Origin::new("d", 1));
    let old = d.write("k", Some(val("d")), 1_000);
    a.delete("k", 2_000);
    converge(&[&a, &b], 1_400, 20).unwrap();
    for s in [&a, &b, &d] {
        s.collect_garbage(3_000 + R, R);
    }
    converge(&[&a, &b, &d], 1_400, 20).unwrap();
    assert_identical(&[("a", &a), ("b", &b), ("d", &d)]);
    assert_eq!(a.get_record("k"), Some(old));
}

// ----- property test ---------------------------------------------------------

const KEYS: [&str; 6] = ["k0", "k1", "k2", "k3", "k4", "k5"];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
struct Op {
    who: usize,
    key: usize,
    delete: bool,
    len: usize,
    dt: u64,
}

#[derive(Clone, Debug)]
enum Step {
    Op(Op),
    /// One delta from `from` to `to` (indices into the replicas allowed to talk).
    Sync {
        from: usize,
        to: usize,
        budget: usize,
        rotate: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let who = prop_oneof![3 => Just(A), 3 => Just(B), 2 => Just(C), 2 => Just(D)];
    (
        who,
        0..KEYS.len(),
        proptest::bool::weighted(0.5),
        0..6usize,
        0..300u64,
    )
        .prop_map(|(who, key, delete, len, dt)| Op {
            who,
            key,
            delete,
            len,
            dt,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => op().prop_map(Step::Op),
        2 => (0..3usize, 0..3usize, 150..1_000usize, any::<usize>())
            .prop_map(|(from, to, budget, rotate)| Step::Sync { from, to, budget, rotate }),
    ]
}

#[derive(Clone, Debug)]
struct Script {
    skew: Vec<u64>,
    /// All four replicas connected.
    pre: Vec<Op>,
    /// D away: A, B and C talk.
    mid: Vec<Step>,
    /// C and D away: A and B talk.
    late: Vec<Step>,
    /// Where the collection cutoff falls, in percent of the time span of the writes.
    cutoff_pct: u64,
    page_budget: usize,
    /// Whether D meets C (resynchronised from A) before anyone else.
    d_meets_c_first: bool,
}

fn script() -> impl Strategy<Value = Script> {
    (
        proptest::collection::vec(0..2_000u64, 4),
        proptest::collection::vec(op(), 0..12),
        proptest::collection::vec(step(), 0..16),
        proptest::collection::vec(step(), 0..24),
        0..=100u64,
        150..700usize,
        any::<bool>(),
    )
        .prop_map(
            |(skew, pre, mid, late, cutoff_pct, page_budget, d_meets_c_first)| Script {
                skew,
                pre,
                mid,
                late,
                cutoff_pct,
                page_budget,
                d_meets_c_first,
            },
        )
}

struct World {
    stores: Vec<Store>,
    now: Vec<u64>,
    oracle: Oracle,
    /// Replicas currently away: their writes are held back (see `deferred`).
    away: Vec<usize>,
    /// Writes of away replicas, made (in order) once the collection cutoff
    /// is known, with their clocks at or past it.
    deferred: Vec<Op>,
}

impl World {
    fn named(&self) -> Vec<(&'static str, &Store)> {
        NAMES.iter().copied().zip(self.stores.iter()).collect()
    }

    fn check(&self, when: &str) -> Result<(), TestCaseError> {
        for (name, s) in self.named() {
            self.oracle
                .check_w(name, s)
                .map_err(|e| TestCaseError::fail(format!("{when}: {e}")))?;
        }
        Ok(())
    }

    fn op(&mut self, op: &Op) {
        let w = op.who;
        self.now[w] += op.dt;
        let key = KEYS[op.key];
        let r = if op.delete {
            self.stores[w].write(key, None, self.now[w])
        } else {
            self.stores[w].write(
                key,
                Some(Bytes::from(vec![b'a' + w as u8; op.len])),
                self.now[w],
            )
        };
        self.oracle.record(&r);
    }

    /// An operation of an away replica is deferred (see [`World::deferred`]).
    fn op_or_defer(&mut self, op: &Op) {
        if self.away.contains(&op.who) {
            self.deferred.push(op.clone());
        } else {
            self.op(op);
        }
    }

    /// Runs `steps`; syncs only between `talking` replicas.
    fn run(&mut self, steps: &[Step], talking: &[usize], phase: &str) -> Result<(), TestCaseError> {
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Op(op) => self.op_or_defer(op),
                Step::Sync {
                    from,
                    to,
                    budget,
                    rotate,
                } => {
                    let (from, to) = (talking[from % talking.len()], talking[to % talking.len()]);
                    if from != to {
                        let (f, t) = (&self.stores[from], &self.stores[to]);
                        // No garbage has been collected yet: deltas only.
                        prop_assert!(!f.needs_resync(&t.digest()));
                        t.apply(&f.delta_for(&t.digest(), *budget, *rotate));
                    }
                }
            }
            self.check(&format!("{phase} step {i} {step:?}"))?;
        }
        Ok(())
    }

    fn converge(&self, who: &[usize], budget: usize) -> Result<(), TestCaseError> {
        let stores: Vec<&Store> = who.iter().map(|&i| &self.stores[i]).collect();
        converge(&stores, budget, 200).map_err(TestCaseError::fail)?;
        Ok(())
    }
}

fn run_gc_script(s: &Script) -> Result<(), TestCaseError> {
    let mut w = World {
        stores: NAMES
            .iter()
            .map(|n| Store::new(Origin::new(*n, 1)))
            .collect(),
        now: s.skew.iter().map(|x| 1_000 + x).collect(),
        oracle: Oracle::default(),
        away: Vec::new(),
        deferred: Vec::new(),
    };

    for op in &s.pre {
        w.op(op);
    }
    w.converge(&[A, B, C, D], 1_400)?;
    w.check("after first convergence")?;

    // D goes away (its writes stay local); A, B, C talk.
    let d_old = w.stores[D].records();
    w.away.push(D);
    w.run(&s.mid, &[A, B, C], "mid")?;
    w.converge(&[A, B, C], 1_400)?;
    w.check("after A, B, C converge")?;

    // C goes away too; A and B talk.
    let c_old = w.stores[C].records();
    w.away.push(C);
    w.run(&s.late, &[A, B], "late")?;
    w.converge(&[A, B], 1_400)?;
    w.check("after A, B converge")?;

    // Time passes; A and B collect.
    // The cutoff falls anywhere in the span of the writes' timestamps, or a
    // little past the last one.
    let phys = w.oracle.writes.iter().map(|x| x.version.hlc.physical_ms());
    let (lo, hi) = (
        phys.clone().min().unwrap_or(1_000),
        phys.max().unwrap_or(1_000) + 100,
    );
    let cutoff_ms = lo + (hi - lo) * s.cutoff_pct / 100;
    let gc_now = cutoff_ms + R;
    let cutoff = Hlc::new(cutoff_ms, 0);
    let a_tomb_before = tombstones(&w.stores[A]);
    for x in [A, B] {
        let before = w.stores[x].len_with_tombstones();
        let stats = w.stores[x].collect_garbage(gc_now, R);
        prop_assert_eq!(w.stores[x].len_with_tombstones(), before - stats.tombstones);
    }
    w.oracle.collected(gc_now, R);
    let a = &w.stores[A];
    let collected: Vec<Record> = a_tomb_before
        .iter()
        .filter(|t| a.get_record(&t.key).is_none())
        .cloned()
        .collect();
    for t in &a_tomb_before {
        let gone = a.get_record(&t.key).is_none();
        prop_assert_eq!(
            gone,
            t.version.hlc < cutoff,
            "tombstone {:?}, cutoff {:?}",
            t,
            cutoff
        );
    }
    for t in &collected {
        prop_assert!(a.floor(&t.version.origin()) >= t.version.seq);
    }
    prop_assert_eq!(
        w.stores[A].records(),
        w.stores[B].records(),
        "A and B collect alike"
    );
    w.check("after collection")?;
    let a_gc: BTreeMap<String, Record> = a
        .records()
        .into_iter()
        .map(|r| (r.key.to_string(), r))
        .collect();
    let a_wm_gc = wm_map(a);

    // What C and D wrote while away. Their clocks are at or past the cutoff:
    // a write that stays unpropagated for longer than the retention is
    // outside what the protocol can promise. (If it is older than a collected
    // tombstone of its key, the page rule keeps it, and a replica that still
    // holds the tombstone when the write reaches it keeps the tombstone, then
    // collects it, and never takes the write again: the replicas diverge.
    // See `unseen_write_older_than_a_collected_delete_comes_back_everywhere`
    // for the case where collections are in step.)
    for x in [C, D] {
        w.now[x] = w.now[x].max(cutoff_ms);
    }
    for op in std::mem::take(&mut w.deferred) {
        w.op(&op);
        w.check(&format!("away write {op:?}"))?;
    }

    // What each away replica missed of the collected deletes.
    let missed = |x: usize| {
        collected
            .iter()
            .any(|t| w.stores[x].watermark(&t.version.origin()) < t.version.seq)
    };

    // C comes back and asks A.
    if missed(C) {
        prop_assert!(w.stores[A].needs_resync(&w.stores[C].digest()));
    }
    if w.stores[A].needs_resync(&w.stores[C].digest()) {
        let mut err = None;
        resync_with(&w.stores[A], &w.stores[C], s.page_budget, |c| {
            if err.is_none() {
                err = w.oracle.check_w("c", c).err();
            }
        });
        if let Some(e) = err {
            return Err(TestCaseError::fail(format!("during C's resync: {e}")));
        }
    }
    w.check("after C's resync")?;
    w.converge(&[A, B, C], 600)?;
    w.check("after C is back")?;

    // D comes back, and meets C or A first.
    let first = if s.d_meets_c_first { C } else { A };
    for t in &collected {
        let peer = &w.stores[first];
        let peer_has = peer
            .get_record(&t.key)
            .is_some_and(|r| r.version >= t.version);
        if !peer_has && w.stores[D].watermark(&t.version.origin()) < t.version.seq {
            prop_assert!(
                peer.needs_resync(&w.stores[D].digest()),
                "{} would let D skip the collected {:?}",
                NAMES[first],
                t
            );
        }
    }
    w.converge(&[first, D], 600)?;
    w.check("after D meets its first peer")?;
    w.converge(&[A, B, C, D], 600)?;
    w.check("after D is back")?;

    // Everyone collects with the same cutoff: all identical.
    for x in [A, B, C, D] {
        w.stores[x].collect_garbage(gc_now, R);
    }
    w.check("after the last collection")?;
    assert_identical(&w.named());

    // Expected: what A held after its collection, and the writes A had
    // not seen by then (written by C and D while away), by last writer wins;
    // then without tombstones older than the cutoff.
    let mut expected = a_gc.clone();
    for wr in &w.oracle.writes {
        let seen = a_wm_gc.get(&wr.version.origin()).copied().unwrap_or(0);
        if wr.version.seq > seen {
            match expected.get(&wr.key) {
                Some(r) if r.version >= wr.version => {}
                _ => {
                    expected.insert(wr.key.clone(), wr.record.clone());
                }
            }
        }
    }
    let expected: Vec<Record> = expected
        .into_values()
        .filter(|r| !(r.is_tombstone() && r.version.hlc < cutoff))
        .collect();
    prop_assert_eq!(&w.stores[A].records(), &expected);

    // Deleted keys never come back: collected deletes of keys nobody wrote
    // unseen stay absent, and old records of them are refused everywhere.
    for t in &collected {
        let rewritten = expected.iter().any(|r| r.key == t.key);
        if !rewritten {
            for (name, st) in w.named() {
                prop_assert!(
                    st.get_record(&t.key).is_none(),
                    "{} came back at {}",
                    t.key,
                    name
                );
            }
        }
    }
    for (name, st) in w.named() {
        for r in c_old.iter().chain(&d_old) {
            if st.get_record(&r.key).is_none() {
                prop_assert!(!st.merge(r.clone()), "{} took back {:?}", name, r);
                prop_assert!(st.get_record(&r.key).is_none());
            }
        }
    }
    let before: Vec<Snapshot> = w.stores.iter().map(snapshot).collect();
    w.converge(&[A, B, C, D], 600)?;
    let after: Vec<Snapshot> = w.stores.iter().map(snapshot).collect();
    prop_assert!(before == after, "a converged cluster changed");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn away_replicas_resync_and_deletes_stick(s in script()) {
        run_gc_script(&s)?;
    }
}

/// Indexes large enough for the per-origin index to take its slow paths:
/// more than a thousand entries arriving newest first (kept apart, then
/// merged into the sorted run), and thousands of superseded entries collected
/// (holes, then compaction). Invariant W holds throughout, and a fresh
/// replica still gets everything.
#[test]
fn large_indexes_merge_late_entries_and_compact_collected_ones() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let c = Store::new(Origin::new("c", 1));
    let mut o = Oracle::default();
    // 2,000 keys written twice: the first writes become superseded entries.
    let mut written = Vec::new();
    for round in 0..2u64 {
        for i in 0..2_000u64 {
            let r = a.write(
                &format!("k{i:04}"),
                Some(val(&format!("v{round}-{i}"))),
                1_000 + round * 2_000 + i,
            );
            o.record(&r);
            written.push(r);
        }
    }
    // B gets every write newest first: each lands below the last one.
    for r in written.iter().rev() {
        b.merge(r.clone());
    }
    check_all(&o, &[("a", &a), ("b", &b)]);
    assert_eq!(b.watermark(a.local_origin()), 4_000);
    assert_eq!(b.records(), a.records());

    // Collect the 2,000 superseded entries at A.
    let now = 5_000 + R;
    let stats = a.collect_garbage(now, R);
    o.collected(now, R);
    assert_eq!(stats.ghosts, 2_000, "{stats:?}");
    check_all(&o, &[("a", &a), ("b", &b)]);

    // A fresh replica is re-synchronised, and everything still matches.
    converge(&[&a, &b, &c], 1_400, 200).unwrap();
    assert_identical(&[("a", &a), ("b", &b), ("c", &c)]);
    check_all(&o, &[("a", &a), ("b", &b), ("c", &c)]);
    // A's live writes are all still indexed: a delta from scratch lists
    // them, in order.
    let delta = a.delta_for(
        &Digest {
            complete: true,
            ..Digest::default()
        },
        usize::MAX / 2,
        0,
    );
    let seqs: Vec<u64> = delta
        .chunks
        .iter()
        .flat_map(|ch| ch.records.iter().map(|r| r.version.seq))
        .collect();
    assert_eq!(seqs, (2_001..=4_000).collect::<Vec<u64>>());
}

/// Collecting superseded writes up to a bound keeps every live write and
/// tombstone, raises the floor, and sends a peer below it to pages; a peer
/// at the bound still gets deltas, and invariant W holds everywhere.
#[test]
fn superseded_writes_are_collected_up_to_a_bound() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let mut o = Oracle::default();
    for round in 0..5u64 {
        for k in 0..4u64 {
            o.record(&a.write(
                &format!("k{k}"),
                Some(val(&format!("{round}"))),
                1_000 + round * 10 + k,
            ));
        }
    }
    o.record(&a.write("k3", None, 2_000));
    // 21 writes: k0-k2 live at seqs 17-19, k3's tombstone at 21.
    converge(&[&a, &b], 1_400, 20).unwrap();
    assert_eq!(a.index_len(), 21);
    let bound = 18;
    let removed = a.collect_superseded(&[(a.local_origin().clone(), bound)]);
    // Superseded and at most 18: seqs 1-16 (k3's write at 20 is above the
    // bound). Live k0 (17) and k1 (18) stay.
    assert_eq!(removed, 16);
    assert_eq!(a.index_len(), 5);
    assert_eq!(a.floor(a.local_origin()), 16);
    check_all(&o, &[("a", &a), ("b", &b)]);
    // B is past the floor: deltas still work. A new peer is not: pages.
    assert!(!a.needs_resync(&b.digest()));
    let c = Store::new(Origin::new("c", 1));
    assert!(a.needs_resync(&c.digest()));
    converge(&[&a, &b, &c], 1_400, 40).unwrap();
    assert_identical(&[("a", &a), ("b", &b), ("c", &c)]);
    check_all(&o, &[("a", &a), ("b", &b), ("c", &c)]);
}

/// A write indexed here whose key was deleted since (by a newer tombstone,
/// then collected) is refused when it comes again: alone, one record at a
/// time after a write that fills the gap below it, or in one batch with
/// that write (a batch raises the watermark only at its end).
#[test]
fn a_write_whose_key_was_deleted_and_collected_does_not_come_back() {
    let o = Store::new(Origin::new("o", 1));
    let p = Store::new(Origin::new("p", 1));
    let j = o.write("j", Some(val("1")), 1_000);
    let k = o.write("k", Some(val("2")), 1_001);
    let kill = p.write("k", None, 2_000);
    for how in ["alone", "singly", "batched"] {
        let s = Store::new(Origin::new("s", 1));
        // O's second write arrives before its first: O's watermark stays 0.
        assert!(s.merge(k.clone()));
        assert!(s.merge(kill.clone()));
        assert_eq!(s.collect_garbage(2_001 + R, R).tombstones, 1, "{how}");
        assert!(s.get_record("k").is_none(), "{how}: collected");
        let won = match how {
            "alone" => vec![s.merge(k.clone())],
            "singly" => vec![s.merge(j.clone()), s.merge(k.clone())],
            _ => s.merge_batch(vec![j.clone(), k.clone()]),
        };
        assert_eq!(won.last(), Some(&false), "{how}");
        assert!(
            s.get_record("k").is_none(),
            "{how}: the deleted key came back"
        );
        if how != "alone" {
            assert_eq!(s.get("j"), Some(val("1")), "{how}");
            assert_eq!(s.watermark(&Origin::new("o", 1)), 2, "{how}");
        }
    }
}
