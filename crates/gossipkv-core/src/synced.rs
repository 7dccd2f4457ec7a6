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
//!   fingerprint is ours: our digests are equal.
//!
//! A windowed digest (one too large for half a datagram body) is not
//! evidence: origins outside its window are unknown. In a cluster whose
//! digest is always windowed the signal waits for an exchange in which the
//! two digests agree. Like every exchange, the evidence is not
//! authenticated.

use std::net::SocketAddr;

use gossipkv_storage::Digest;
use tracing::debug;

use crate::context::Context;
use crate::event::Event;

/// Notes a peer's digest: synced if it is complete and lists nothing we
/// lack.
pub(crate) fn note_digest(cx: &mut Context, from: SocketAddr, peer: &Digest) {
    if cx.stats.synced || !peer.complete {
        return;
    }
    let holds_all = peer
        .entries
        .iter()
        .all(|e| cx.store.watermark(&e.origin) >= e.watermark);
    if holds_all {
        mark(cx, Some(from));
    }
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
    debug!(?from, "caught up");
    cx.events.push_back(Event::Synced);
}
