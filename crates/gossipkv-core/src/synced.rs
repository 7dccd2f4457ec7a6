//! Whether this node has caught up: it exchanged digests with a live member
//! and held everything that member vouched for. A readiness signal for a
//! node that just joined or restarted, which until then answers reads with
//! less than the cluster holds.
//!
//! It is set once and stays set; a node that falls behind later (a
//! partition, a burst it has not received yet) is not unset. The evidence,
//! any of:
//! - a peer's complete digest, in a Syn or a SynAck, lists no origin ahead
//!   of our watermark (checked after applying what came with it);
//! - a peer answered in the short form, or sent a hash-only Syn whose
//!   fingerprint is ours: our digests are equal;
//! - windows of one peer's digest (a digest too large for half a datagram
//!   body is sent a window at a time), each listing nothing we lack, that
//!   together cover every origin, all received within
//!   [`FRESH_INTERVALS`] gossip intervals. A window that shows us behind
//!   forgets that peer's windows.
//!
//! Like every exchange, the evidence is not authenticated.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use gossipkv_storage::{Digest, Origin};
use tracing::debug;

use crate::context::Context;
use crate::event::Event;
use crate::time::Instant;

/// Most peers whose windows are kept at once (the map is fed by the
/// network: past it, all are forgotten).
pub(crate) const MAX_WINDOW_PEERS: usize = 16;

/// How many gossip intervals a window counts for.
pub(crate) const FRESH_INTERVALS: u32 = 4;

/// The origins one window spoke for: from `lo` to `hi` inclusive, `None`
/// for an open end.
#[derive(Debug, Clone)]
struct Span {
    lo: Option<Origin>,
    hi: Option<Origin>,
    at: Instant,
}

/// Per peer, the windows of its digest that listed nothing we lack.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    by_peer: BTreeMap<SocketAddr, Vec<Span>>,
}

impl Windows {
    /// Number of peers whose windows are kept (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_peer.len()
    }
}

/// Notes a peer's digest, whole or windowed: synced if the whole digest,
/// or fresh windows of it covering every origin, list nothing we lack.
pub(crate) fn note_digest(cx: &mut Context, from: SocketAddr, peer: &Digest) {
    if cx.stats.synced {
        return;
    }
    let behind = peer
        .entries
        .iter()
        .any(|e| !e.is_retired() && cx.store.watermark(&e.origin) < e.watermark);
    if behind {
        cx.windows.by_peer.remove(&from);
        return;
    }
    if peer.complete {
        mark(cx, Some(from));
        return;
    }
    let (Some(first), Some(last)) = (peer.entries.first(), peer.entries.last()) else {
        // An empty window speaks for no origin.
        return;
    };
    let span = Span {
        lo: (!peer.open_start).then(|| first.origin.clone()),
        hi: (!peer.open_end).then(|| last.origin.clone()),
        at: cx.now,
    };
    let fresh = cx.cfg.interval() * FRESH_INTERVALS;
    let now = cx.now;
    let windows = &mut cx.windows.by_peer;
    if !windows.contains_key(&from) && windows.len() >= MAX_WINDOW_PEERS {
        windows.clear();
    }
    let spans = windows.entry(from).or_default();
    spans.retain(|s| now.saturating_since(s.at) <= fresh);
    spans.push(span);
    if covers_everything(spans) {
        mark(cx, Some(from));
    }
}

/// Whether `spans` together cover every origin: sorted by start, each
/// starts within what the ones before covered, from the open start to the
/// open end.
fn covers_everything(spans: &[Span]) -> bool {
    let mut sorted: Vec<&Span> = spans.iter().collect();
    // An open start (`None`) sorts first.
    sorted.sort_by(|a, b| a.lo.cmp(&b.lo));
    // Everything up to `reach` (inclusive) is covered once `started`.
    let mut reach: Option<&Origin> = None;
    let mut started = false;
    for s in sorted {
        let joins = match &s.lo {
            None => true,
            Some(lo) => started && reach.is_some_and(|r| lo <= r),
        };
        if !joins {
            return false;
        }
        started = true;
        match &s.hi {
            None => return true,
            Some(hi) => reach = Some(reach.map_or(hi, |r| r.max(hi))),
        }
    }
    false
}

/// Notes that a peer's digest equals ours.
pub(crate) fn note_agreement(cx: &mut Context, from: SocketAddr) {
    if !cx.stats.synced {
        mark(cx, Some(from));
    }
}

/// Sets the flag and tells the driver, once.
pub(crate) fn mark(cx: &mut Context, from: Option<SocketAddr>) {
    if cx.stats.synced {
        return;
    }
    cx.stats.synced = true;
    cx.windows.by_peer.clear();
    debug!(?from, "caught up");
    cx.events.push_back(Event::Synced);
}
