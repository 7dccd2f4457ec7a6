//! Collection marks: the highest watermark per origin each live member's
//! digests showed, so that a node can drop the index entries of superseded
//! writes ("ghosts") every live member has passed, long before the
//! tombstone retention.

use std::collections::{BTreeMap, VecDeque};

use gossipkv_proto::Sender;
use gossipkv_storage::{NodeId, Origin, RETIRED_WATERMARK};
use tracing::debug;

use crate::context::Context;
use crate::peers::Peers;
use crate::retire::{seen_mark, Seen};
use crate::swim::{Member, MAX_MEMBERS};

/// Most (member, origin) watermarks kept (about 16 MB at most; 512 writers
/// seen by 512 members).
pub(crate) const MARKS_MAX: usize = 1 << 18;

/// Rounds of early-collection bounds kept waiting for this node to hold
/// what the members' digests showed then.
const EARLY_ROUNDS: usize = 16;

/// Bounds for early collection computed at one round, and the highest mark
/// per origin then.
type EarlyBounds = (Vec<(Origin, u64)>, BTreeMap<Origin, u64>);

/// One member's marks, for one generation of it.
#[derive(Debug)]
struct Marks {
    generation: u64,
    watermarks: BTreeMap<Origin, u64>,
}

/// Every live member's marks.
#[derive(Debug)]
pub(crate) struct PeerMarks {
    members: BTreeMap<NodeId, Marks>,
    /// (member, origin) pairs held, and how many may be.
    len: usize,
    max: usize,
    /// The bounds for early collection of tombstones computed at the last
    /// rounds (oldest first, at most [`EARLY_ROUNDS`]), each with the
    /// highest mark per origin then (see [`PeerMarks::share_early_bounds`]).
    early_pending: VecDeque<EarlyBounds>,
    /// The last bounds validated.
    early_valid: Vec<(Origin, u64)>,
}

impl Default for PeerMarks {
    fn default() -> Self {
        PeerMarks {
            members: BTreeMap::new(),
            len: 0,
            max: MARKS_MAX,
            early_pending: VecDeque::new(),
            early_valid: Vec::new(),
        }
    }
}

impl PeerMarks {
    /// Remembers the watermarks `digest` shows for `sender` (they only grow
    /// within one generation). At most `max` (member, origin) pairs are
    /// kept, so that a cluster of thousands of writers does not cost every
    /// node millions of entries: past it, new pairs are not recorded, and
    /// their origins are left to the retention collection. Nothing is kept
    /// when membership is not (a given directory).
    pub(crate) fn note(
        &mut self,
        peers: &Peers,
        sender: &Sender,
        digest: &gossipkv_storage::Digest,
    ) {
        if !peers.keeps_membership() || digest.entries.is_empty() {
            return;
        }
        if !self.members.contains_key(&sender.node_id) && self.members.len() >= MAX_MEMBERS {
            return;
        }
        let marks = self
            .members
            .entry(sender.node_id.clone())
            .or_insert_with(|| Marks {
                generation: sender.generation,
                watermarks: BTreeMap::new(),
            });
        if marks.generation != sender.generation {
            self.len -= marks.watermarks.len();
            *marks = Marks {
                generation: sender.generation,
                watermarks: BTreeMap::new(),
            };
        }
        if digest.complete {
            // A complete digest says what the member lists now: an origin
            // left out (retired there, see the `retire` module) is dropped,
            // and a retired marker replaces a watermark and back (watermarks
            // themselves only rise).
            let before = marks.watermarks.len();
            marks
                .watermarks
                .retain(|o, _| digest.entries.iter().any(|e| e.origin == *o));
            for e in &digest.entries {
                if let Some(m) = marks.watermarks.get_mut(&e.origin) {
                    if (*m == RETIRED_WATERMARK) != e.is_retired() {
                        *m = e.watermark;
                    }
                }
            }
            self.len -= before - marks.watermarks.len();
        }
        for e in &digest.entries {
            match marks.watermarks.get_mut(&e.origin) {
                Some(m) => *m = (*m).max(e.watermark),
                None if self.len < self.max => {
                    marks.watermarks.insert(e.origin.clone(), e.watermark);
                    self.len += 1;
                }
                None => {}
            }
        }
    }

    /// Collects the superseded writes every live member has passed, by the
    /// watermarks their digests showed: none of them needs re-synchronising
    /// for it, and overwrites stop costing index memory for the whole
    /// tombstone retention. Members we have no watermark from count as 0, so
    /// nothing of that origin is collected early. Forgets the marks of
    /// members no longer live.
    pub(crate) fn collect(&mut self, cx: &mut Context) {
        let Some(live) = cx.peers.live_for_collection() else {
            return;
        };
        self.retain_live(&live);
        if live.is_empty() {
            return;
        }
        let bounds = lowest(&self.live_marks(&live), &cx.store.digest());
        let removed = cx.store.collect_superseded(&bounds);
        cx.stats.superseded_collected += removed as u64;
        if removed > 0 {
            debug!(removed, "collected superseded index entries");
        }
    }

    /// Tells a store with memory limits up to where it may collect
    /// tombstones early (see `Store::set_early_collection`): per origin, the
    /// lowest watermark every live member's digests showed at the previous
    /// round (or one of the rounds before it, up to [`EARLY_ROUNDS`]), once
    /// this node holds every write any of those digests showed then. A tombstone under such a bound was applied by every live
    /// member before that round, so every write older than it that a member
    /// had is here too, and cannot arrive after the collection and come back
    /// here alone. (Comparing with the marks of the round before, not the
    /// current ones, lets this hold under a steady load from many writers,
    /// when a node rarely holds everything its peers showed a moment ago;
    /// keeping several rounds lets it hold under loss, when a lost push
    /// waits a round or two for anti-entropy.)
    /// Bounds once validated stay until newer ones are. With no live member,
    /// everything; with membership given (no marks), nothing.
    pub(crate) fn share_early_bounds(&mut self, cx: &Context) {
        if cx.store.limits().is_unlimited() {
            return;
        }
        let live = match cx.peers.live_for_collection() {
            None => return cx.store.set_early_collection(Some(&[])),
            Some(live) => live,
        };
        if live.is_empty() {
            self.early_pending.clear();
            return cx.store.set_early_collection(None);
        }
        let own = cx.store.digest();
        // The newest earlier round whose marks this node now holds.
        let held = self
            .early_pending
            .iter()
            .rposition(|(_, highest)| holds(&own, highest));
        if let Some(i) = held {
            let rounds: Vec<EarlyBounds> = self.early_pending.drain(..=i).collect();
            if let Some((bounds, _)) = rounds.into_iter().next_back() {
                self.early_valid = bounds;
            }
        }
        if self.early_pending.len() == EARLY_ROUNDS {
            self.early_pending.pop_front();
        }
        self.early_pending.push_back(self.early_bounds(&live, &own));
        cx.store.set_early_collection(Some(&self.early_valid));
    }

    /// For `live` members: per origin of this node's `own` digest, the lowest
    /// watermark their digests showed (0 for a member that showed none), and
    /// per origin the highest.
    fn early_bounds(
        &self,
        live: &[Member],
        own: &gossipkv_storage::Digest,
    ) -> (Vec<(Origin, u64)>, BTreeMap<Origin, u64>) {
        let marks = self.live_marks(live);
        let mut highest: BTreeMap<Origin, u64> = BTreeMap::new();
        let listed = marks.iter().flatten().flat_map(|m| m.iter());
        // A retired mark says "send me nothing", not "I hold this much".
        for (o, w) in listed.filter(|(_, w)| **w != RETIRED_WATERMARK) {
            let h = highest.entry(o.clone()).or_insert(0);
            *h = (*h).max(*w);
        }
        (lowest(&marks, own), highest)
    }

    /// Each live member's marks, of its current generation (`None`: none).
    fn live_marks(&self, live: &[Member]) -> Vec<Option<&BTreeMap<Origin, u64>>> {
        live.iter()
            .map(|m| {
                self.members
                    .get(&m.node_id)
                    .filter(|k| k.generation == m.generation)
                    .map(|k| &k.watermarks)
            })
            .collect()
    }

    /// Forgets the marks of members not in `live`.
    fn retain_live(&mut self, live: &[Member]) {
        let mut kept = 0;
        self.members.retain(|id, marks| {
            let keep = live.iter().any(|m| &m.node_id == id);
            kept += if keep { marks.watermarks.len() } else { 0 };
            keep
        });
        self.len = kept;
    }

    /// What each of `live`'s digests said of `origin` (see
    /// [`Seen`]): the highest watermark listed, of its current generation.
    pub(crate) fn seen(&self, live: &[Member], origin: &Origin) -> Vec<Seen> {
        self.live_marks(live)
            .into_iter()
            .map(|m| m.map_or(Seen::Nothing, |m| seen_mark(m.get(origin).copied())))
            .collect()
    }

    /// Number of (member, origin) pairs held (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Per origin of this node's `own` digest, the lowest watermark the
/// members' `marks` show (a member without marks counts as 0), at most
/// `own`'s; origins whose bound is 0 are left out.
fn lowest(
    marks: &[Option<&BTreeMap<Origin, u64>>],
    own: &gossipkv_storage::Digest,
) -> Vec<(Origin, u64)> {
    own.entries
        .iter()
        .map(|e| {
            let lowest = marks
                .iter()
                .map(|m| m.and_then(|m| m.get(&e.origin).copied()).unwrap_or(0))
                .min()
                .unwrap_or(0);
            (e.origin.clone(), lowest.min(e.watermark))
        })
        .filter(|(_, bound)| *bound > 0)
        .collect()
}

/// Whether `own` holds every write `highest` shows, origin by origin.
fn holds(own: &gossipkv_storage::Digest, highest: &BTreeMap<Origin, u64>) -> bool {
    let mine: BTreeMap<&Origin, u64> = own
        .entries
        .iter()
        .map(|e| (&e.origin, e.watermark))
        .collect();
    highest
        .iter()
        .all(|(o, w)| mine.get(o).copied().unwrap_or(0) >= *w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProtocolConfig;
    use gossipkv_storage::{Digest, DigestEntry};

    #[test]
    fn peer_watermarks_are_kept_up_to_a_bound_and_forgotten_with_members() {
        let peers = Peers::new(&ProtocolConfig::new("me", 1, "test"));
        let mut p = PeerMarks {
            max: 10,
            ..PeerMarks::default()
        };
        let sender = |id: &str, generation: u64| Sender::new(id, generation, None);
        let digest = |n: u64, w: u64| Digest {
            entries: (0..n)
                .map(|i| DigestEntry {
                    origin: Origin::new(format!("o{i}"), 1),
                    watermark: w,
                })
                .collect(),
            complete: true,
            ..Digest::default()
        };
        p.note(&peers, &sender("a", 1), &digest(6, 5));
        p.note(&peers, &sender("b", 1), &digest(6, 7));
        // Ten pairs at most: b got four of its six.
        assert_eq!(p.len, 10);
        assert_eq!(p.members[&NodeId::new("b")].watermarks.len(), 4);
        // Known pairs still rise; a lower watermark does not lower them.
        p.note(&peers, &sender("a", 1), &digest(6, 9));
        p.note(&peers, &sender("a", 1), &digest(6, 2));
        assert!(p.members[&NodeId::new("a")]
            .watermarks
            .values()
            .all(|w| *w == 9));
        // A new generation starts afresh.
        p.note(&peers, &sender("a", 2), &digest(1, 1));
        assert_eq!(p.members[&NodeId::new("a")].watermarks.len(), 1);
        assert_eq!(p.len, 5);
        // Neither is a member: the collection pass forgets both.
        p.retain_live(&[]);
        assert!(p.members.is_empty());
        assert_eq!(p.len, 0);
    }

    #[test]
    fn early_bounds_are_the_lowest_mark_and_held_once_every_mark_is_held() {
        use crate::swim::MemberState;
        let peers = Peers::new(&ProtocolConfig::new("me", 1, "test"));
        let mut p = PeerMarks::default();
        let o = |n: &str| Origin::new(n, 1);
        let digest = |ws: &[(&str, u64)]| Digest {
            entries: ws
                .iter()
                .map(|(n, w)| DigestEntry {
                    origin: o(n),
                    watermark: *w,
                })
                .collect(),
            complete: true,
            ..Digest::default()
        };
        let member = |id: &str| {
            Member::new(
                NodeId::new(id),
                "127.0.0.1:1".parse().unwrap(),
                MemberState::Alive,
                1,
                0,
            )
        };
        p.note(
            &peers,
            &Sender::new("a", 1, None),
            &digest(&[("me", 7), ("x", 3)]),
        );
        p.note(
            &peers,
            &Sender::new("b", 1, None),
            &digest(&[("me", 5), ("x", 3)]),
        );
        let live = [member("a"), member("b")];
        let own = digest(&[("me", 9), ("x", 3)]);
        let (bounds, highest) = p.early_bounds(&live, &own);
        assert_eq!(bounds, vec![(o("me"), 5), (o("x"), 3)]);
        assert!(holds(&own, &highest));
        // A live member that showed no digest yet: nothing.
        let with_c = [member("a"), member("b"), member("c")];
        assert!(p.early_bounds(&with_c, &own).0.is_empty());
        // b has a write of x we lack.
        p.note(
            &peers,
            &Sender::new("b", 1, None),
            &digest(&[("me", 5), ("x", 4)]),
        );
        let (_, highest) = p.early_bounds(&live, &own);
        assert!(!holds(&own, &highest));
        assert!(holds(&digest(&[("me", 9), ("x", 4)]), &highest));
    }
}
