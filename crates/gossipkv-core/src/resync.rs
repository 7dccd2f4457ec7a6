//! Re-synchronisation: how a node that fell below a peer's collected floor
//! (it could have missed a delete whose tombstone is gone) catches up by
//! pages instead of deltas, without bringing deleted keys back.
//!
//! The serving side ([`serve_page`]) answers a Syn with a page of its
//! records in key order and a window of its watermarks. The receiving side
//! ([`ResyncClient`]) applies the pages one after another, from one peer,
//! asking for each next page with its own Syn, and raises its watermarks to
//! what every page's window vouched for once the last page is in.

use std::net::SocketAddr;

use gossipkv_proto::{Body, Reply, Syn, SynAck};
use gossipkv_storage::{Digest, DigestEntry, NodeId, Origin, Page};
use rand::Rng;
use tracing::{debug, trace};

use crate::context::Context;
use crate::guard::Guard;
use crate::peers::Peers;
use crate::time::Instant;

/// For how many intervals without a page a re-synchronisation may be taken
/// over by another peer.
const STALE_INTERVALS: u32 = 10;

/// Answers a Syn from a peer that is behind our floor (`behind`: the
/// origins concerned), or that asks for a later page, with a page.
///
/// A page gets the whole datagram: the reply's own digest is the empty one
/// (the initiator is being re-synchronised and has nothing to send back),
/// and the page carries a window of our watermarks small enough to leave
/// room for records. The first page lists first the origins the initiator
/// is below our floor in (they decide which of its stale records it may
/// drop); later pages list the origins the initiator names (those of the
/// first page), so that the pass raises them all.
pub(crate) fn serve_page(
    cx: &mut Context,
    from: SocketAddr,
    syn: Syn,
    mine: &Digest,
    behind: &[Origin],
) {
    let start = syn.resync_from.unwrap_or_default();
    let rotate = cx.rng.random::<u32>() as usize;
    let window = cx.sizes.body / 4;
    let watermarks = match &syn.digest {
        d if !start.is_empty() && !d.complete && !d.entries.is_empty() => {
            restrict(mine, d).page_window(window, 0, &[])
        }
        _ => mine.clone().page_window(window, rotate, behind),
    };
    let page = cx.store.page(&start, cx.sizes.body, watermarks);
    trace!(%from, start = %page.start, records = page.records.len(), "sending resync page");
    cx.send(
        from,
        Body::SynAck(SynAck {
            digest: Digest::default(),
            reply: Reply::Page(page),
        }),
    );
}

/// Progress of a re-synchronisation we receive from one peer.
#[derive(Debug, Clone)]
struct Pass {
    from: NodeId,
    /// The address its pages come from.
    addr: SocketAddr,
    /// The start of the page to ask for next.
    cursor: String,
    /// What we may raise our watermarks to once every page is applied: the
    /// first page's window, lowered to what every later page listed.
    watermarks: Digest,
    /// When the last page of this pass arrived.
    progress: Instant,
    /// Whether its pages come by stream (in order, at the pace of the
    /// connection): datagram pages then leave the pass alone.
    by_stream: bool,
    /// Whether a page of it was applied without some of its records (of
    /// origins new here beyond the sender's allowance): the pass then
    /// raises no watermark, since it cannot tell which writes those records
    /// superseded, and a later pass, with a refilled allowance, does.
    skipped: bool,
}

/// The receiving side of re-synchronisation.
#[derive(Debug, Default)]
pub(crate) struct ResyncClient {
    pass: Option<Pass>,
}

impl ResyncClient {
    /// Whether a pass is under way.
    pub(crate) fn active(&self) -> bool {
        self.pass.is_some()
    }

    /// Where the peer re-synchronising us is reached.
    pub(crate) fn addr(&self, peers: &Peers) -> Option<SocketAddr> {
        let p = self.pass.as_ref()?;
        peers.addr_of(&p.from, p.addr)
    }

    /// The page to ask `to` for, if it is the peer re-synchronising us.
    pub(crate) fn cursor_for(&self, peers: &Peers, to: SocketAddr) -> Option<String> {
        let p = self.pass.as_ref()?;
        (self.addr(peers) == Some(to)).then(|| p.cursor.clone())
    }

    /// The digest to ask for a later page with: our watermarks for exactly
    /// the origins the first page listed, so that the sender lists the same
    /// ones on every page and the pass raises them all. `None` when the
    /// first page listed every origin (then the whole digest is sent).
    pub(crate) fn later_page_digest(&self, digest: &Digest) -> Option<Digest> {
        let p = self.pass.as_ref()?;
        (!p.watermarks.complete).then(|| restrict(digest, &p.watermarks))
    }

    /// Tracks a page from `sender` at `from`: pages from one peer, in key
    /// order, from the first key to the last. Pages from anyone else, or
    /// out of order, were merged (that is always safe) but do not advance
    /// the pass. A first page that comes by stream (`stream`) takes the pass
    /// over whoever held it: its pages follow in order. While such a pass
    /// runs, datagram pages leave it alone (a datagram page from the first
    /// key would restart it, cut to another end). Returns whether the pass
    /// completed (the watermarks were raised).
    pub(crate) fn on_page(
        &mut self,
        cx: &mut Context,
        guard: &mut Guard,
        (from, sender): (SocketAddr, &NodeId),
        page: &Page,
        (stream, skipped): (bool, bool),
    ) -> bool {
        let stale_after = STALE_INTERVALS * cx.cfg.interval();
        let stale = self
            .pass
            .as_ref()
            .is_some_and(|p| cx.now.saturating_since(p.progress) > stale_after);
        if !stream && self.pass.as_ref().is_some_and(|p| p.by_stream) && !stale {
            return false;
        }
        let ours = self.pass.as_ref().is_none_or(|p| &p.from == sender);
        if page.start.is_empty() && (ours || stale || stream) {
            self.pass = Some(Pass {
                from: sender.clone(),
                addr: from,
                cursor: String::new(),
                watermarks: page.watermarks.clone(),
                progress: cx.now,
                by_stream: stream,
                skipped: false,
            });
        }
        let Some(p) = &mut self.pass else {
            return false;
        };
        if &p.from != sender || p.cursor != page.start {
            return false;
        }
        // A stream resuming a pass started by datagrams carries it on.
        p.by_stream |= stream;
        p.skipped |= skipped;
        p.progress = cx.now;
        // Raise at the end only what every page's drop rule covered.
        if !page.start.is_empty() {
            p.watermarks = intersect(&p.watermarks, &page.watermarks);
        }
        if let Some(end) = &page.end {
            p.cursor = end.clone();
            return false;
        }
        let Some(mut p) = self.pass.take() else {
            return false;
        };
        if p.skipped {
            debug!(peer = %p.from, "re-synchronisation pass ended with records skipped: nothing raised");
            return false;
        }
        // Origins new here are raised within the sender's allowance only;
        // the others stay behind, and a later pass raises them.
        guard.screen_marks(cx, p.addr, &mut p.watermarks);
        let raised = cx.store.raise_watermarks(&p.watermarks);
        cx.stats.resyncs_completed += 1;
        debug!(peer = %p.from, raised, "re-synchronisation complete");
        true
    }
}

impl ResyncClient {
    /// The stream carrying the pass ended (finished or cut): datagram pages
    /// may carry it on from where it stands.
    pub(crate) fn stream_closed(&mut self) {
        if let Some(p) = &mut self.pass {
            p.by_stream = false;
        }
    }
}

/// `digest`'s watermarks (0 where it has none) for exactly the origins `to`
/// lists: what a node asking for a later page of a re-synchronisation sends.
fn restrict(digest: &Digest, to: &Digest) -> Digest {
    subset(to.entries.iter().map(|e| DigestEntry {
        origin: e.origin.clone(),
        watermark: digest.watermark(&e.origin).unwrap_or(0),
    }))
}

/// The origins both digests speak for, at the lower of their watermarks (a
/// partial result: it says nothing of other origins).
fn intersect(a: &Digest, b: &Digest) -> Digest {
    subset(a.entries.iter().filter_map(|e| {
        b.watermark(&e.origin).map(|w| DigestEntry {
            origin: e.origin.clone(),
            watermark: w.min(e.watermark),
        })
    }))
}

/// A digest listing just `entries` (unlisted origins inside their range read
/// as watermark 0).
fn subset(entries: impl Iterator<Item = DigestEntry>) -> Digest {
    Digest {
        entries: entries.collect(),
        complete: false,
        open_start: false,
        open_end: false,
    }
}
