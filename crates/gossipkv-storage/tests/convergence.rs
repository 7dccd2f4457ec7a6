//! The replication model: replicas writing with skewed clocks and exchanging
//! digests and deltas over a network that loses, duplicates and reorders.
//! Invariant W is checked after every step; after a reliable phase every
//! replica holds the same records, which are the last-writer-wins winners.
//! Some scripts send values above a small size apart from their deltas (as
//! a node sends large values), where they can be lost or arrive late.

mod common;

use std::collections::VecDeque;

use bytes::Bytes;
use common::{assert_identical, converge, snapshot, Oracle, Snapshot};
use gossipkv_storage::{Delta, Digest, Origin, Record, Store};
use proptest::prelude::*;
use proptest::sample::Index;

const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];

#[derive(Clone, Debug)]
enum Fate {
    Drop,
    Deliver,
    /// Deliver now and keep a copy in flight (a later duplicate).
    DeliverAndKeep,
    /// Deliver twice in a row.
    DeliverTwice,
}

#[derive(Clone, Debug)]
enum Step {
    Set {
        r: usize,
        key: usize,
        len: usize,
        dt: u64,
    },
    Delete {
        r: usize,
        key: usize,
        dt: u64,
    },
    /// `b` sends its digest to `a`. If `now`, `a` answers at once and the
    /// delta goes in flight; otherwise the digest itself goes in flight and
    /// `a` answers whenever it arrives (against a digest that may be stale).
    /// With `push_pull`, the same happens in the other direction.
    Exchange {
        a: usize,
        b: usize,
        budget: usize,
        rotate: usize,
        now: bool,
        push_pull: bool,
    },
    /// Something in flight reaches its destination (or is lost).
    Deliver {
        pick: Index,
        fate: Fate,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..5usize, 0..KEYS.len(), 0..12usize, 0..40u64)
            .prop_map(|(r, key, len, dt)| Step::Set { r, key, len, dt }),
        2 => (0..5usize, 0..KEYS.len(), 0..40u64).prop_map(|(r, key, dt)| Step::Delete { r, key, dt }),
        3 => (0..5usize, 0..5usize, 100..2000usize, any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, budget, rotate, now, push_pull)| Step::Exchange {
                a, b, budget, rotate, now, push_pull
            }),
        5 => (any::<Index>(), prop_oneof![
                2 => Just(Fate::Drop),
                5 => Just(Fate::Deliver),
                1 => Just(Fate::DeliverAndKeep),
                1 => Just(Fate::DeliverTwice),
            ]).prop_map(|(pick, fate)| Step::Deliver { pick, fate }),
    ]
}

#[derive(Clone, Debug)]
struct Script {
    n: usize,
    generations: Vec<u64>,
    /// Per-replica clock offsets: clocks are skewed by up to 5 s.
    skew: Vec<u64>,
    /// Values longer than this travel apart from their delta.
    inline_max: usize,
    steps: Vec<Step>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        2..=5usize,
        proptest::collection::vec(0..3u64, 5),
        proptest::collection::vec(0..5_000u64, 5),
        prop_oneof![2 => Just(usize::MAX), 1 => Just(3usize), 1 => Just(8usize)],
        proptest::collection::vec(step(), 1..70),
    )
        .prop_map(|(n, generations, skew, inline_max, steps)| Script {
            n,
            generations,
            skew,
            inline_max,
            steps,
        })
}

enum InFlight {
    /// A digest from `from`, to be answered by `to`.
    Request {
        to: usize,
        from: usize,
        digest: Digest,
        budget: usize,
        rotate: usize,
    },
    /// A delta for `to`.
    Delta { to: usize, delta: Delta },
    /// A large record sent apart from its delta, for `to`.
    Record { to: usize, record: Record },
}

struct Net {
    stores: Vec<Store>,
    now: Vec<u64>,
    queue: VecDeque<InFlight>,
    oracle: Oracle,
    inline_max: usize,
}

impl Net {
    fn new(s: &Script) -> Self {
        Net {
            stores: (0..s.n)
                .map(|i| Store::new(Origin::new(format!("n{i}"), s.generations[i])))
                .collect(),
            now: s.skew[..s.n].to_vec(),
            queue: VecDeque::new(),
            oracle: Oracle::default(),
            inline_max: s.inline_max,
        }
    }

    /// `from` answers `digest` (of `to`): the delta and its large records go in flight.
    fn answer(&mut self, from: usize, to: usize, digest: &Digest, budget: usize, rotate: usize) {
        let (delta, large) = self.stores[from].delta_split(digest, budget, rotate, self.inline_max);
        self.queue.push_back(InFlight::Delta { to, delta });
        for record in large {
            self.queue.push_back(InFlight::Record { to, record });
        }
    }

    fn request(&mut self, a: usize, b: usize, budget: usize, rotate: usize, now: bool) {
        let digest = self.stores[b].digest();
        if now {
            self.answer(a, b, &digest, budget, rotate);
        } else {
            self.queue.push_back(InFlight::Request {
                to: a,
                from: b,
                digest,
                budget,
                rotate,
            });
        }
    }

    fn deliver(&mut self, item: &InFlight, times: usize) {
        for _ in 0..times {
            match item {
                InFlight::Request {
                    to,
                    from,
                    digest,
                    budget,
                    rotate,
                } => {
                    self.answer(*to, *from, digest, *budget, *rotate);
                }
                InFlight::Delta { to, delta } => {
                    self.stores[*to].apply(delta);
                }
                InFlight::Record { to, record } => {
                    self.stores[*to].merge(record.clone());
                }
            }
        }
    }

    fn run(&mut self, step: &Step) {
        let n = self.stores.len();
        match *step {
            Step::Set { r, key, len, dt } => {
                let r = r % n;
                self.now[r] += dt;
                let value = Bytes::from(vec![b'v'; len]);
                let w = self.stores[r].write(KEYS[key], Some(value), self.now[r]);
                self.oracle.record(&w);
            }
            Step::Delete { r, key, dt } => {
                let r = r % n;
                self.now[r] += dt;
                let w = self.stores[r].write(KEYS[key], None, self.now[r]);
                self.oracle.record(&w);
            }
            Step::Exchange {
                a,
                b,
                budget,
                rotate,
                now,
                push_pull,
            } => {
                let (a, b) = (a % n, b % n);
                if a == b {
                    return;
                }
                self.request(a, b, budget, rotate, now);
                if push_pull {
                    self.request(b, a, budget, rotate.wrapping_add(1), now);
                }
            }
            Step::Deliver { pick, ref fate } => {
                if self.queue.is_empty() {
                    return;
                }
                let i = pick.index(self.queue.len());
                let item = self.queue.remove(i).expect("index in range");
                match fate {
                    Fate::Drop => {}
                    Fate::Deliver => self.deliver(&item, 1),
                    Fate::DeliverTwice => self.deliver(&item, 2),
                    Fate::DeliverAndKeep => {
                        self.deliver(&item, 1);
                        self.queue.push_back(item);
                    }
                }
            }
        }
    }

    fn check_w(&self) -> Result<(), String> {
        for (i, s) in self.stores.iter().enumerate() {
            self.oracle.check_w(&format!("n{i}"), s)?;
        }
        Ok(())
    }
}

fn run_script(script: &Script) -> Result<(), TestCaseError> {
    let mut net = Net::new(script);
    for (i, step) in script.steps.iter().enumerate() {
        net.run(step);
        if let Err(e) = net.check_w() {
            return Err(TestCaseError::fail(format!("after step {i} {step:?}: {e}")));
        }
    }

    // Reliable phase: full exchanges between all pairs until nothing changes.
    let refs: Vec<&Store> = net.stores.iter().collect();
    let rounds = converge(&refs, 1_400, 200).map_err(TestCaseError::fail)?;
    prop_assert!(rounds < 200);
    net.check_w().map_err(TestCaseError::fail)?;
    let named: Vec<(String, &Store)> = net
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("n{i}"), s))
        .collect();
    let named: Vec<(&str, &Store)> = named.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    assert_identical(&named);
    let d0 = common::wm_map(&net.stores[0]);
    for s in &net.stores {
        prop_assert_eq!(common::wm_map(s), d0.clone());
        // Every origin's watermark is its number of writes.
        for (i, other) in net.stores.iter().enumerate() {
            let o = other.local_origin();
            let writes = net
                .oracle
                .writes
                .iter()
                .filter(|w| &w.version.origin() == o)
                .count() as u64;
            prop_assert_eq!(s.watermark(o), writes, "watermark for n{}", i);
        }
    }

    // The converged state is the last-writer-wins winner of every key.
    let want: Vec<_> = net.oracle.expected().into_values().collect();
    let got = net.stores[0].records();
    prop_assert_eq!(&got, &want);
    for s in &net.stores {
        prop_assert_eq!(s.len(), common::live_count(&want));
        prop_assert_eq!(s.len_with_tombstones(), want.len());
    }

    // Whatever is still in flight is stale now and changes nothing.
    let before: Vec<Snapshot> = net.stores.iter().map(snapshot).collect();
    while let Some(item) = net.queue.pop_front() {
        if let InFlight::Delta { .. } | InFlight::Record { .. } = item {
            net.deliver(&item, 1);
        }
    }
    let after: Vec<Snapshot> = net.stores.iter().map(snapshot).collect();
    prop_assert!(before == after, "a stale delta changed a converged replica");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn replicas_converge_and_keep_invariant_w(s in script()) {
        run_script(&s)?;
    }
}

/// A delta cut to a budget smaller than one record carries nothing and
/// advances nothing; the receiver's invariant still holds.
#[test]
fn tiny_budget_makes_no_false_progress() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let mut oracle = Oracle::default();
    for i in 0..5 {
        oracle.record(&a.write(&format!("k{i}"), Some(Bytes::from_static(b"v")), 100 + i));
    }
    for budget in [0, 10, 60, 100] {
        let d = a.delta_for(&b.digest(), budget, 0);
        b.apply(&d);
        oracle.check_w("b", &b).unwrap();
    }
    // A budget of one record at a time still gets everything across.
    let mut rounds = 0;
    while b.watermark(a.local_origin()) < 5 {
        b.apply(&a.delta_for(&b.digest(), 200, rounds));
        oracle.check_w("b", &b).unwrap();
        rounds += 1;
        assert!(rounds < 20);
    }
    assert_eq!(a.records(), b.records());
}

/// A large value travels apart; the writes after it arrive loose and are
/// visible at once, and the watermark rises over all of them only once the
/// large record is merged.
#[test]
fn large_records_travel_apart_without_holding_up_later_writes() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let mut oracle = Oracle::default();
    oracle.record(&a.write("small0", Some(Bytes::from_static(b"s")), 100));
    oracle.record(&a.write("big", Some(Bytes::from(vec![7u8; 10_000])), 101));
    for i in 1..4 {
        oracle.record(&a.write(
            &format!("small{i}"),
            Some(Bytes::from_static(b"s")),
            101 + i,
        ));
    }
    let (delta, large) = a.delta_split(&b.digest(), 1_000, 0, 100);
    assert_eq!(large.len(), 1);
    assert_eq!(&*large[0].key, "big");
    assert_eq!(delta.chunks.len(), 1);
    assert_eq!(
        delta.chunks[0].to, 1,
        "the chunk stops before the large write"
    );
    assert_eq!(delta.loose.len(), 3);
    b.apply(&delta);
    oracle.check_w("b", &b).unwrap();
    assert_eq!(b.watermark(a.local_origin()), 1);
    for i in 0..4 {
        assert!(b.contains(&format!("small{i}")));
    }
    // Asked again, only the large record (and nothing inline) is missing.
    let (again, large_again) = a.delta_split(&b.digest(), 1_000, 0, 100);
    assert_eq!(large_again, large);
    assert!(again.chunks.is_empty());
    b.merge(large[0].clone());
    oracle.check_w("b", &b).unwrap();
    assert_eq!(b.watermark(a.local_origin()), 5);
    assert_eq!(a.records(), b.records());
}

/// A peer far behind gets the newest writes first (as loose records) while
/// the chunks fill in the history in order; its invariant holds throughout.
#[test]
fn a_far_behind_peer_gets_the_newest_writes_first() {
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let mut oracle = Oracle::default();
    for i in 0..500u64 {
        oracle.record(&a.write(&format!("k{i:03}"), Some(Bytes::from_static(b"v")), 100 + i));
    }
    let delta = a.delta_for(&b.digest(), 1_400, 0);
    assert!(
        delta.chunks[0].to < 500,
        "one datagram does not hold 500 writes"
    );
    assert!(
        delta.loose.iter().any(|r| &*r.key == "k499"),
        "the newest write comes first"
    );
    b.apply(&delta);
    oracle.check_w("b", &b).unwrap();
    assert!(b.contains("k499") && b.contains("k000"));
    let mut rounds = 0;
    while b.watermark(a.local_origin()) < 500 {
        b.apply(&a.delta_for(&b.digest(), 1_400, 0));
        oracle.check_w("b", &b).unwrap();
        rounds += 1;
        assert!(rounds < 100);
    }
    assert_eq!(a.records(), b.records());
}

/// Writes held back (being pushed) are left out of a delta, which stops its
/// chunk before them; once released, they follow.
#[test]
fn held_writes_wait_and_follow() {
    use gossipkv_storage::DeltaOptions;
    let a = Store::new(Origin::new("a", 1));
    let b = Store::new(Origin::new("b", 1));
    let mut oracle = Oracle::default();
    for i in 0..10u64 {
        oracle.record(&a.write(&format!("k{i}"), Some(Bytes::from_static(b"v")), 100 + i));
    }
    let a_origin = a.local_origin().clone();
    let hold = move |o: &Origin| if *o == a_origin { 7 } else { u64::MAX };
    let opts = DeltaOptions {
        budget: 10_000,
        rotate: 0,
        inline_max: usize::MAX,
        hold: &hold,
        newest_first: true,
        max_items: usize::MAX,
    };
    let (delta, large) = a.delta_with(&b.digest(), &opts);
    assert!(large.is_empty());
    assert_eq!(delta.chunks[0].to, 6);
    assert!(delta.loose.is_empty());
    b.apply(&delta);
    oracle.check_w("b", &b).unwrap();
    assert_eq!(b.watermark(a.local_origin()), 6);
    assert!(!b.contains("k6"));
    b.apply(&a.delta_for(&b.digest(), 10_000, 0));
    assert_eq!(b.watermark(a.local_origin()), 10);
    assert_eq!(a.records(), b.records());
}
