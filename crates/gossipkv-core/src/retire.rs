//! Retiring origins: a generation that is gone for good, none of whose
//! writes this node holds any more, leaves our digests (the store's side is
//! in `gossipkv_storage`'s `store/retire.rs`).
//!
//! At every collection pass, with the member table:
//!
//! | the origin | what this node does |
//! |---|---|
//! | gone for good (left, replaced by a newer generation, our own older generation), nothing of it held, no live member's digest ahead of our watermark for it | retires it: refuses its writes, lists it as retired |
//! | retired, and every live member's digests list it as retired or not at all | makes it silent: left out of digests |
//! | retired, and a live member's digest shows writes of it beyond our watermark | takes it back (unretires) |
//! | an older generation of this node, of which records are held | writes them again as ours, same timestamps (`Store::adopt_older_generations`), so that it holds nothing and retires |
//!
//! Why each condition:
//! - *gone for good*: such an origin writes nothing more (a dead member may
//!   come back, so death is not enough; a member dead until the table
//!   forgot it counts as gone, as for its ephemeral values);
//! - *nothing held*: every write of it we had is superseded, so refusing its
//!   writes from now on refuses only stale copies (which the watermark
//!   refused too);
//! - *no live member ahead*: a write of it we never had would be refused for
//!   good; a member that shows one later (it was away) makes us take the
//!   origin back, which is safe because its watermark was kept;
//! - *silent only once every live member agrees*: a peer that still lists
//!   the origin reads its absence from our complete digest as watermark 0
//!   and would send all it holds of it, or re-synchronise us; the retired
//!   marker tells it to send nothing instead.
//!
//! Where it is not done: with a given member list (no member table, so no
//! verdict), and for a member dead but not yet forgotten (it may come
//! back; one that comes back after it was forgotten shows writes beyond our
//! watermark and is taken back, refused meanwhile). A
//! member that was away, holds old copies only, and comes back after we went
//! silent is sent our newer records as any lagging peer is, but we refuse
//! what it sends of the retired origin, every round, until it retires the
//! origin in turn (the retired counter shows it).

use std::collections::{BTreeMap, BTreeSet};

use gossipkv_storage::{NodeId, Origin, RETIRED_WATERMARK};
use tracing::{debug, info};

use crate::context::Context;
use crate::marks::PeerMarks;
use crate::owners::{verdict, Verdict};
use crate::swim::Member;

/// What one live member's digests said of an origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// No digest of that member yet.
    Nothing,
    /// Its digests did not list the origin.
    Unlisted,
    /// Listed as retired.
    Retired,
    /// Listed with this watermark.
    At(u64),
}

/// Origins seen gone for good, remembered after their member is forgotten
/// (a departed member is forgotten long before its tombstones are
/// collected). Bounded by the origins the store knows.
#[derive(Debug, Default)]
pub(crate) struct Retirement {
    departed: BTreeSet<Origin>,
    /// Origins whose member the table lists dead: once it is forgotten
    /// (`forget_after` later), it is gone for good as far as we know.
    dead: BTreeSet<Origin>,
}

impl Retirement {
    /// One collection pass of origin retirement (see the module docs).
    pub(crate) fn check(&mut self, cx: &mut Context, marks: &PeerMarks) {
        let Some(live) = cx.peers.live_for_collection() else {
            return;
        };
        for (origin, silent) in cx.store.retired_origins() {
            let views = marks.seen(&live, &origin);
            let mine = cx.store.watermark(&origin);
            if views.iter().any(|v| matches!(v, Seen::At(w) if *w > mine)) {
                debug!(node = %origin.node, generation = origin.generation,
                    "a member holds writes of a retired origin we lack: taking it back");
                cx.store.unretire_origin(&origin);
                cx.stats.origins_unretired += 1;
                continue;
            }
            let agreed = views
                .iter()
                .all(|v| matches!(v, Seen::Retired | Seen::Unlisted));
            if agreed != silent && cx.store.set_origin_silent(&origin, agreed) && agreed {
                cx.stats.origins_silenced += 1;
            }
        }
        let adopted = cx.store.adopt_older_generations().len();
        if adopted > 0 {
            // Plain local writes: anti-entropy (or a stream) carries them.
            info!(
                records = adopted,
                "took over the records of our older generations"
            );
            cx.stats.records_adopted += adopted as u64;
        }
        let candidates = self.candidates(cx, &live, marks);
        if candidates.is_empty() {
            return;
        }
        let retired = cx.store.retire_origins(&candidates);
        for origin in &retired {
            debug!(node = %origin.node, generation = origin.generation, "retired an origin");
            self.departed.remove(origin);
        }
        cx.stats.origins_retired += retired.len() as u64;
    }

    /// Origins gone for good, not retired, that no live member shows ahead
    /// of our watermark (whether any write of them is held, the store
    /// checks). Gone for good: the member table says so now or said so
    /// before, or the store holds writes of a newer generation of the node.
    fn candidates(&mut self, cx: &Context, live: &[Member], marks: &PeerMarks) -> Vec<Origin> {
        let me = cx.store.local_origin();
        let known = cx.store.marks();
        let newest: BTreeMap<&NodeId, u64> =
            known.iter().fold(BTreeMap::new(), |mut m, (o, _, _)| {
                let g = m.entry(&o.node).or_insert(0);
                *g = (*g).max(o.generation);
                m
            });
        let mut out = Vec::new();
        let mut departed = BTreeSet::new();
        let mut dead = BTreeSet::new();
        for (origin, watermark, _) in &known {
            if origin == me || cx.store.is_retired(origin) {
                continue;
            }
            let said = verdict(&cx.peers, me, origin);
            if said == Verdict::Dead {
                dead.insert(origin.clone());
            }
            let gone = self.departed.contains(origin)
                || said == Verdict::Gone
                || (said == Verdict::Unknown && self.dead.contains(origin))
                || newest
                    .get(&origin.node)
                    .is_some_and(|g| *g > origin.generation);
            if !gone {
                continue;
            }
            departed.insert(origin.clone());
            let nobody_ahead = marks.seen(live, origin).iter().all(|v| match v {
                Seen::Nothing => false,
                Seen::At(w) => w <= watermark,
                Seen::Unlisted | Seen::Retired => true,
            });
            if nobody_ahead {
                out.push(origin.clone());
            }
        }
        self.departed = departed;
        self.dead = dead;
        out
    }

    /// Origins remembered as gone or dead (for the bounded-state tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.departed.len() + self.dead.len()
    }
}

/// What a mark (a member's highest listed watermark) says.
pub(crate) fn seen_mark(mark: Option<u64>) -> Seen {
    match mark {
        None => Seen::Unlisted,
        Some(RETIRED_WATERMARK) => Seen::Retired,
        Some(w) => Seen::At(w),
    }
}
