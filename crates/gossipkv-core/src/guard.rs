//! Guards against hostile and broken peers, applied to every record,
//! chunk, ghost and page before it reaches the store.
//!
//! - **Own origin.** Only this node writes its current origin. A record,
//!   chunk or page watermark from outside that claims a write of ours we
//!   never made (a sequence number beyond ours, or a version newer than what
//!   we hold for its key) is refused, counted and reported
//!   ([`NetworkError::OwnOriginClaimed`]); chunks of our own origin are never
//!   applied (an honest peer never sends one: we are never behind on our own
//!   writes). So nobody can make this node reuse or skip a sequence number.
//! - **Clock drift.** A timestamp further ahead of our wall clock than
//!   [`ProtocolConfig::max_clock_drift`](crate::ProtocolConfig::max_clock_drift)
//!   never reaches the store, so it never moves our hybrid logical clock: the
//!   record (or ghost) carrying it is held back and anti-entropy brings it
//!   again later. A delta chunk is cut before it, so no watermark rises over
//!   it; a page holding one is refused whole. Timestamps ahead by more than
//!   [`CLOCK_SKEW_REPORT`] but within the bound are applied. Both are reported
//!   as [`NetworkError::ClockSkew`] (at most once a minute per writer).
//!
//! - **New origins.** A record, chunk or page of an origin this node does
//!   not know is admitted only within the allowances of `newcomers.rs`;
//!   what is not admitted is dropped (then no chunk of that delta raises a
//!   watermark; a page is applied without it and its pass raises nothing)
//!   and counted ([`Stats::origins_refused`](crate::Stats::origins_refused)).
//!
//! Because every remote timestamp is at most the drift bound ahead of local
//! wall time, the clock can only reach the end of its range if the local
//! wall clock does: it never saturates into ties.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_storage::{Delta, Digest, Hlc, Key, NodeId, Origin, OriginChunk, Page, Record};
use tracing::{debug, warn};

use crate::config::CLOCK_SKEW_REPORT;
use crate::context::Context;
use crate::event::NetworkError;
use crate::newcomers::{Admission, Newcomers};
use crate::time::{millis, Instant};

/// Most writers whose skew reports are rate-limited at once.
pub(crate) const MAX_SKEW_REPORTS: usize = 1_024;

/// How often skew is reported per writer.
const SKEW_REPORT_EVERY: Duration = Duration::from_secs(60);

/// What a screen found in one datagram.
#[derive(Debug)]
struct Findings {
    /// Own-origin claims refused.
    forged: u64,
    /// Records and ghosts held back.
    deferred: u64,
    /// Per writer: the furthest timestamp ahead, and whether it was held back.
    ahead: BTreeMap<NodeId, (u64, bool)>,
    /// The origins new here that this message may introduce.
    new: Admission,
}

impl Findings {
    /// Whether records of `origin` may reach the store (see `newcomers.rs`).
    fn admits(&mut self, cx: &Context, origin: &Origin) -> bool {
        self.new.admits(&cx.store, origin, || {
            cx.peers
                .member(&origin.node)
                .is_some_and(|m| m.generation == origin.generation)
        })
    }

    /// Whether a record, ghost or chunk of another origin than ours was
    /// dropped (not admitted, or stamped beyond the drift).
    fn dropped(&self) -> bool {
        self.new.refused > 0 || self.deferred > 0
    }
}

/// The guards' state: when skew was last reported, per writer, and the
/// allowances of new origins.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    reported: BTreeMap<NodeId, Instant>,
    newcomers: Newcomers,
}

/// How a record's timestamp stands against the wall clock.
enum Stamp {
    /// Within the report threshold.
    Fine,
    /// Ahead by this many ms, within the drift bound: applied, reported.
    Ahead(u64),
    /// Ahead by this many ms, beyond the drift bound: held back.
    Beyond(u64),
}

impl Guard {
    /// Screens pushed (or loose) records: returns those that may be merged.
    pub(crate) fn screen_records(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        records: Vec<Record>,
    ) -> Vec<Record> {
        let mut f = self.findings(cx, from);
        let kept = keep_records(cx, records, &mut f);
        self.report(cx, from, f);
        kept
    }

    /// Screens a delta in place: chunks of our own origin go, and so do
    /// chunks of origins not admitted; records that claim our origin, are
    /// stamped beyond the drift, or are of origins not admitted go; a chunk
    /// that lost a record or ghost is cut just before it. When anything of
    /// another origin than ours went, no chunk raises a watermark at all:
    /// each keeps its records, not its range nor its ghosts. (The sender
    /// puts each key's current record in the first chunk that needs it, and
    /// a later chunk that relies on it carries nothing for that key: a
    /// record dropped from one chunk can leave a hole in another's range.)
    /// Returns whether nothing of another origin went: later frames of a
    /// stream may rely on this one only then.
    pub(crate) fn screen_delta(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        delta: &mut Delta,
    ) -> bool {
        let mut f = self.findings(cx, from);
        let own = cx.store.local_origin().clone();
        let before = delta.chunks.len();
        delta.chunks.retain(|c| c.origin != own);
        f.forged += (before - delta.chunks.len()) as u64;
        // A chunk of an origin not admitted goes whole.
        delta.chunks.retain(|c| f.admits(cx, &c.origin));
        for chunk in &mut delta.chunks {
            screen_chunk(cx, chunk, &mut f);
        }
        let loose = std::mem::take(&mut delta.loose);
        delta.loose = keep_records(cx, loose, &mut f);
        let dropped = f.dropped();
        if dropped {
            for chunk in &mut delta.chunks {
                chunk.to = chunk.from;
                chunk.ghosts.clear();
            }
        }
        self.report(cx, from, f);
        !dropped
    }

    /// Screens a re-synchronisation page: `None` (refused whole, counted
    /// and reported) when it carries a record stamped beyond the drift, or
    /// claims writes of our own origin we never made (in its records or its
    /// watermarks). A page cannot be cut like a chunk: its drop rule and the
    /// watermarks raised at the end of the pass speak for every key in its
    /// range. Otherwise the keys whose records are of origins new here
    /// beyond the sender's allowance: the page is applied without them,
    /// keeping what we hold of those keys, and its pass raises nothing
    /// (see `resync.rs`). Origins only its watermarks name are screened when
    /// its pass ends ([`Guard::screen_marks`]).
    pub(crate) fn screen_page(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        page: &Page,
    ) -> Option<BTreeSet<Key>> {
        let mut f = self.findings(cx, from);
        let own = cx.store.local_origin();
        let own_mark = cx.store.watermark(own);
        // Every entry, not the first: a digest from outside may name an
        // origin more than once, and the store raises each one it names.
        f.forged += page
            .watermarks
            .entries
            .iter()
            .filter(|e| &e.origin == own && e.watermark > own_mark)
            .count() as u64;
        for r in &page.records {
            if forges_own(cx, r) {
                f.forged += 1;
            }
            match stamp(cx, r.version.hlc) {
                Stamp::Fine => {}
                Stamp::Ahead(ms) => note_ahead(&mut f, &r.version.node, ms, false),
                Stamp::Beyond(ms) => {
                    f.deferred += 1;
                    note_ahead(&mut f, &r.version.node, ms, true);
                }
            }
        }
        let verdict = if f.forged == 0 && f.deferred == 0 {
            let skipped = page
                .records
                .iter()
                .filter(|r| !f.admits(cx, &r.version.origin()))
                .map(|r| r.key.clone())
                .collect();
            Some(skipped)
        } else {
            cx.stats.pages_refused += 1;
            None
        };
        self.report(cx, from, f);
        verdict
    }

    /// Screens the watermarks a completed re-synchronisation pass from
    /// `from` raises: those of origins new here beyond its allowance go (a
    /// later pass raises them).
    pub(crate) fn screen_marks(&mut self, cx: &mut Context, from: SocketAddr, marks: &mut Digest) {
        let mut f = self.findings(cx, from);
        let before = marks.entries.len();
        // A retired origin's marker raises nothing: it is not charged.
        marks
            .entries
            .retain(|e| e.is_retired() || f.admits(cx, &e.origin));
        if marks.entries.len() < before {
            marks.complete = false;
        }
        self.report(cx, from, f);
    }

    /// The findings of a screen of a message from `from`, not yet any.
    fn findings(&mut self, cx: &Context, from: SocketAddr) -> Findings {
        let trusted = cx.trusted(from);
        let new = self
            .newcomers
            .open(&cx.store, &cx.cfg, (from, trusted), cx.now);
        Findings {
            forged: 0,
            deferred: 0,
            ahead: BTreeMap::new(),
            new,
        }
    }

    /// Counts and reports what a screen found, and charges the origins it
    /// admitted.
    fn report(&mut self, cx: &mut Context, from: SocketAddr, f: Findings) {
        self.newcomers.close(&f.new, &cx.cfg, cx.now, &mut cx.rng);
        if f.new.refused > 0 {
            cx.stats.origins_refused += u64::from(f.new.refused);
            debug!(%from, refused = f.new.refused, "new origins beyond the sender's allowance dropped");
        }
        if f.forged > 0 {
            cx.stats.own_origin_refused += f.forged;
            warn!(%from, count = f.forged, "refused writes claiming this node's own origin");
            cx.report(NetworkError::OwnOriginClaimed {
                from,
                count: f.forged,
            });
        }
        cx.stats.records_deferred += f.deferred;
        for (node, (skew_ms, deferred)) in f.ahead {
            self.report_skew(cx, from, node, skew_ms, deferred);
        }
    }

    /// Reports that `node`'s records are `skew_ms` ahead, at most once a
    /// minute per writer.
    fn report_skew(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        node: NodeId,
        skew_ms: u64,
        deferred: bool,
    ) {
        let now = cx.now;
        if self
            .reported
            .get(&node)
            .is_some_and(|&t| now.saturating_since(t) < SKEW_REPORT_EVERY)
        {
            return;
        }
        if !self.reported.contains_key(&node) && self.reported.len() >= MAX_SKEW_REPORTS {
            self.reported
                .retain(|_, t| now.saturating_since(*t) < SKEW_REPORT_EVERY);
            if self.reported.len() >= MAX_SKEW_REPORTS {
                return;
            }
        }
        self.reported.insert(node.clone(), now);
        warn!(node = %node, skew_ms, deferred, "clock skew: records ahead of local clock");
        cx.report(NetworkError::ClockSkew {
            from,
            node_id: node.to_string(),
            skew_ms,
            deferred,
        });
    }

    /// Number of writers whose reports are rate-limited (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.reported.len()
    }

    /// Number of sources with an allowance of new origins of their own
    /// (for bound checks).
    #[cfg(test)]
    pub(crate) fn sources(&self) -> usize {
        self.newcomers.len()
    }
}

/// How `hlc` stands against our wall clock.
fn stamp(cx: &Context, hlc: Hlc) -> Stamp {
    let wall = cx.wall.as_unix_ms();
    let t = hlc.physical_ms();
    if t <= wall.saturating_add(millis(CLOCK_SKEW_REPORT)) {
        return Stamp::Fine;
    }
    let ahead = t - wall;
    if ahead > millis(cx.cfg.max_clock_drift) {
        Stamp::Beyond(ahead)
    } else {
        Stamp::Ahead(ahead)
    }
}

fn note_ahead(f: &mut Findings, node: &NodeId, ms: u64, deferred: bool) {
    let e = f.ahead.entry(node.clone()).or_insert((0, false));
    e.0 = e.0.max(ms);
    e.1 |= deferred;
}

/// Whether `r` claims a write of our own origin that we never made: a
/// sequence number beyond ours, or a version newer than what we hold for
/// its key. (A record of ours for a key we no longer hold may be an old
/// copy of a write whose delete we collected: not counted, but never
/// applied either.)
fn forges_own(cx: &Context, r: &Record) -> bool {
    let own = cx.store.local_origin();
    if r.version.node != own.node || r.version.generation != own.generation {
        return false;
    }
    r.version.seq > cx.store.watermark(own)
        || cx
            .store
            .get_record(&r.key)
            .is_some_and(|held| held.version < r.version)
}

/// Whether `r` is of our own origin.
fn is_own(cx: &Context, r: &Record) -> bool {
    let own = cx.store.local_origin();
    r.version.generation == own.generation && r.version.node == own.node
}

/// What to do with one record from outside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// Merge it.
    Merge,
    /// A write of ours that we hold, or something newer for its key: there
    /// is nothing to merge, and nothing is lost by dropping it.
    Held,
    /// Drop it: it claims our origin, or is stamped beyond the drift.
    Refuse,
}

/// The records that may be merged: not of our own origin (counting the
/// forged ones), not stamped beyond the drift (counting those, and noting
/// every writer ahead of our clock).
fn keep_records(cx: &Context, records: Vec<Record>, f: &mut Findings) -> Vec<Record> {
    records
        .into_iter()
        .filter(|r| admit(cx, r, f) == Admit::Merge)
        .collect()
}

/// What to do with one record (see [`keep_records`]).
fn admit(cx: &Context, r: &Record, f: &mut Findings) -> Admit {
    if is_own(cx, r) {
        let held = cx
            .store
            .get_record(&r.key)
            .is_some_and(|h| h.version >= r.version);
        if held {
            return Admit::Held;
        }
        f.forged += u64::from(forges_own(cx, r));
        return Admit::Refuse;
    }
    let stamp = stamp(cx, r.version.hlc);
    if let Stamp::Beyond(ms) = stamp {
        note_ahead(f, &r.version.node, ms, true);
        f.deferred += 1;
        return Admit::Refuse;
    }
    if !f.admits(cx, &r.version.origin()) {
        return Admit::Refuse;
    }
    if let Stamp::Ahead(ms) = stamp {
        note_ahead(f, &r.version.node, ms, false);
    }
    Admit::Merge
}

/// Screens one chunk of another origin. Records that may not be merged
/// are dropped; so are ghosts stamped beyond the drift, and ghosts whose
/// newer record was dropped (the receiver would not hold what they vouch
/// for). The chunk's range then ends just before the first write it no
/// longer accounts for, so the receiver's watermark never rises over it.
fn screen_chunk(cx: &Context, chunk: &mut OriginChunk, f: &mut Findings) {
    let mut cut: Option<u64> = None;
    let mut lost_keys: BTreeSet<Key> = BTreeSet::new();
    let origin = chunk.origin.clone();
    chunk.records.retain(|r| {
        match admit(cx, r, f) {
            Admit::Merge => return true,
            Admit::Held => return false,
            Admit::Refuse => {}
        }
        if r.version.generation == origin.generation && r.version.node == origin.node {
            cut = Some(cut.map_or(r.version.seq, |c| c.min(r.version.seq)));
        } else {
            lost_keys.insert(r.key.clone());
        }
        false
    });
    chunk.ghosts.retain(|g| {
        let beyond = matches!(stamp(cx, g.hlc), Stamp::Beyond(_));
        if !beyond && !lost_keys.contains(&g.key) {
            return true;
        }
        if beyond {
            f.deferred += 1;
            note_ahead(
                f,
                &origin.node,
                g.hlc.physical_ms() - cx.wall.as_unix_ms(),
                true,
            );
        }
        cut = Some(cut.map_or(g.seq, |c| c.min(g.seq)));
        false
    });
    if let Some(cut) = cut {
        // `cut` lies in (from, to], so the chunk still starts where it did.
        chunk.to = chunk.to.min(cut.saturating_sub(1)).max(chunk.from);
    }
}
