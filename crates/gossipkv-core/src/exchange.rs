//! Anti-entropy: the Syn / SynAck / Ack exchange.
//!
//! Every round a node sends a `Syn` with its digest to a few peers; a peer
//! answers `SynAck` with its own digest and the delta the initiator lacks (or
//! a re-synchronisation page, see [`crate::resync`]); the initiator answers
//! `Ack` with the delta the peer lacks. When both digests are equal the peer
//! answers in the short form (empty digest, empty delta) and no `Ack`
//! follows. A node whose digest did not change during the last round sends
//! only its fingerprint (hash-only Syn), and asks again in full (a pull) when
//! the answer shows the peer is ahead. When a digest does not fit half a
//! datagram's body, a rotating window of it is sent.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{Ack, Body, Reply, Sender, Syn, SynAck};
use gossipkv_storage::{Delta, DeltaOptions, Digest};
use rand::Rng;

use crate::context::Context;
use crate::large::LargeValues;
use crate::marks::PeerMarks;
use crate::push::Pusher;
use crate::resync::{self, ResyncClient};
use crate::synced;
use crate::time::Instant;

/// For how many intervals rounds send whole digests after an exchange
/// showed we are not in step with a peer.
const WHOLE_DIGEST_ROUNDS: u32 = 5;

/// The state of our side of anti-entropy.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Whether our digest did not change during the last round (Syns are
    /// then hash-only while it stays the same).
    quiet: bool,
    last_fingerprint: Option<u64>,
    /// Until when rounds send whole digests (not quiet): set after a
    /// re-synchronisation completes and when a peer answers a hash-only Syn
    /// with a different digest.
    whole_digests_until: Option<Instant>,
    /// Peers sent a hash-only Syn this round, not answered yet.
    hash_only_to: BTreeSet<SocketAddr>,
    /// Where the next digest window starts.
    rotate: usize,
}

/// What the exchange needs of the other parts of the protocol.
pub(crate) struct Parts<'a> {
    pub(crate) resync: &'a ResyncClient,
    pub(crate) push: &'a Pusher,
    pub(crate) large: &'a mut LargeValues,
    pub(crate) marks: &'a mut PeerMarks,
}

impl Exchange {
    /// Starts a round: notes whether our digest changed since the last one
    /// and returns it. Just after a re-synchronisation we may still be
    /// behind in origins its pages did not vouch for, and after a peer
    /// answered with a different digest we are not in step: rounds then
    /// keep sending whole digests for a while.
    pub(crate) fn begin_round(&mut self, cx: &Context) -> Digest {
        let digest = cx.store.digest();
        let fingerprint = digest.fingerprint();
        self.quiet = self.last_fingerprint == Some(fingerprint)
            && self.whole_digests_until.is_none_or(|t| cx.now >= t);
        self.last_fingerprint = Some(fingerprint);
        digest
    }

    /// Whether this round is quiet (digest unchanged).
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// Answers to last round's hash-only Syns that never came are forgotten.
    pub(crate) fn new_round(&mut self) {
        self.hash_only_to.clear();
    }

    /// Makes the next rounds send whole digests to `fanout` peers.
    pub(crate) fn send_whole_digests(&mut self, now: Instant, interval: Duration) {
        self.whole_digests_until = Some(now + WHOLE_DIGEST_ROUNDS * interval);
    }

    /// A Syn: hash-only when our digest did not change during the last round
    /// and is still the same, otherwise our digest (or a window of it), or
    /// the request for a later page of a re-synchronisation.
    pub(crate) fn make_syn(
        &mut self,
        cx: &Context,
        digest: &Digest,
        resync_from: Option<String>,
        resync: &ResyncClient,
    ) -> Syn {
        let fingerprint = digest.fingerprint();
        if resync_from.is_none() && self.quiet && self.last_fingerprint == Some(fingerprint) {
            return Syn {
                digest: Digest::default(),
                resync_from: None,
                digest_hash: Some(fingerprint),
            };
        }
        if let (Some(_), Some(restricted)) = (&resync_from, resync.later_page_digest(digest)) {
            return Syn {
                digest: restricted,
                resync_from,
                digest_hash: None,
            };
        }
        Syn {
            digest: self.fit_digest(digest.clone(), cx.sizes.body / 2),
            resync_from,
            digest_hash: None,
        }
    }

    /// Sends a Syn. Any Syn to the peer re-synchronising us asks for the
    /// next page: a plain one (a probe, a pull) would be answered with the
    /// first page again and restart the re-synchronisation.
    pub(crate) fn send_syn(
        &mut self,
        cx: &mut Context,
        to: SocketAddr,
        mut syn: Syn,
        resync: &ResyncClient,
    ) {
        if syn.resync_from.is_none() {
            if let Some(cursor) = resync.cursor_for(&cx.peers, to) {
                let digest = cx.store.digest();
                syn = self.make_syn(cx, &digest, Some(cursor), resync);
            }
        }
        cx.stats.syns_sent += 1;
        if syn.digest_hash.is_some() {
            cx.stats.hash_only_syns_sent += 1;
            self.hash_only_to.insert(to);
        }
        cx.send(to, Body::Syn(syn));
    }

    /// Sends one Syn, built from our current digest, to each of `targets`
    /// (probes of suspects, probes on behalf of others).
    pub(crate) fn syn_all(
        &mut self,
        cx: &mut Context,
        targets: Vec<SocketAddr>,
        resync: &ResyncClient,
    ) {
        if targets.is_empty() {
            return;
        }
        let digest = cx.store.digest();
        let syn = self.make_syn(cx, &digest, None, resync);
        for to in targets {
            self.send_syn(cx, to, syn.clone(), resync);
        }
    }

    /// Answers a Syn from `sender` at `from`.
    pub(crate) fn on_syn(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        sender: &Sender,
        syn: Syn,
        parts: Parts<'_>,
    ) {
        cx.stats.syns_received += 1;
        let mine = cx.store.digest();
        if let Some(theirs) = syn.digest_hash {
            // A hash-only Syn: the short form when the fingerprints agree,
            // else our digest, from which the initiator sees what we lack
            // (and, if we have writes it lacks, asks again in full).
            let reply = if mine.fingerprint() == theirs {
                cx.stats.short_replies += 1;
                synced::note_agreement(cx, from);
                // Its watermarks are ours.
                parts.marks.note(&cx.peers, sender, &mine);
                Digest::default()
            } else {
                self.fit_digest(mine, cx.answer_body(from) / 2)
            };
            send_syn_ack(cx, from, reply, Reply::Delta(Delta::default()));
            return;
        }
        parts.marks.note(&cx.peers, sender, &syn.digest);
        synced::note_digest(cx, from, &syn.digest);
        if syn.resync_from.is_none() && same_digest(&syn.digest, &mine) {
            // Nothing to exchange: an empty digest that covers no origin, so
            // the initiator has nothing to send back.
            cx.stats.short_replies += 1;
            send_syn_ack(cx, from, Digest::default(), Reply::Delta(Delta::default()));
            return;
        }
        let behind = cx.store.resync_origins(&syn.digest);
        if syn.resync_from.is_some() || !behind.is_empty() {
            resync::serve_page(cx, from, syn, &cx.store.page_digest(), &behind);
            return;
        }
        // Less than a datagram to an address that has not shown it
        // receives what we send (see `address`).
        let body = cx.answer_body(from);
        let mine = self.fit_digest(mine, body / 2);
        let room = body.saturating_sub(mine.size_hint());
        let delta = delta_for(cx, from, &syn.digest, room, parts.push, parts.large);
        send_syn_ack(cx, from, mine, Reply::Delta(delta));
    }

    /// After a SynAck's delta or page is applied: send the peer what it
    /// lacks, and if this answered a hash-only Syn that showed the peer is
    /// ahead, ask again with our whole digest (once per Syn).
    pub(crate) fn after_syn_ack(
        &mut self,
        cx: &mut Context,
        from: SocketAddr,
        peer: &Digest,
        parts: Parts<'_>,
    ) {
        if !cx.store.needs_resync(peer) {
            // (A peer that needs pages gets them when it asks with its own Syn.)
            let body = cx.answer_body(from);
            let delta = delta_for(cx, from, peer, body, parts.push, parts.large);
            if !delta.is_empty() {
                cx.send(from, Body::Ack(Ack { delta }));
            }
        }
        let hash_only = self.hash_only_to.remove(&from);
        if hash_only && !peer.entries.is_empty() {
            // The fingerprints differ: until they agree again, send whole
            // digests (a window of ours may not show what the peer must see,
            // for example that we fell below its floor in some origin).
            self.send_whole_digests(cx.now, cx.cfg.interval());
        }
        let ahead = peer
            .entries
            .iter()
            .any(|e| e.watermark > cx.store.watermark(&e.origin));
        if hash_only && ahead {
            cx.stats.pulls_sent += 1;
            let syn = Syn {
                digest: self.fit_digest(cx.store.digest(), cx.sizes.body / 2),
                resync_from: None,
                digest_hash: None,
            };
            self.send_syn(cx, from, syn, parts.resync);
        }
    }

    /// `digest`, or a window of it that fits `max` bytes, rotating.
    fn fit_digest(&mut self, digest: Digest, max: usize) -> Digest {
        let rotate = self.rotate;
        self.rotate = self.rotate.wrapping_add(1);
        digest.window(max, rotate)
    }

    /// Number of unanswered hash-only Syns (for bound checks).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.hash_only_to.len()
    }
}

fn send_syn_ack(cx: &mut Context, to: SocketAddr, digest: Digest, reply: Reply) {
    cx.send(to, Body::SynAck(SynAck { digest, reply }));
}

/// The delta for a peer at `to` with digest `peer`, within `budget`;
/// records too large to travel inline are sent to it apart. Writes still
/// reaching their peers by push are left out (see [`Pusher::hold`]), and
/// so are newest-first loose records for a peer far enough behind to catch
/// up by stream (see [`crate::stream::far_behind`]).
pub(crate) fn delta_for(
    cx: &mut Context,
    to: SocketAddr,
    peer: &Digest,
    budget: usize,
    push: &Pusher,
    large: &mut LargeValues,
) -> Delta {
    let rotate = cx.rng.random::<u32>() as usize;
    let now = cx.now;
    let hold = |o: &gossipkv_storage::Origin| push.hold(o, now);
    let newest_first = !crate::stream::far_behind(cx, peer);
    let (delta, apart) = cx.store.delta_with(
        peer,
        &DeltaOptions {
            budget,
            rotate,
            inline_max: cx.sizes.inline_max,
            hold: &hold,
            newest_first,
            max_items: cx.sizes.limits.max_records.min(cx.sizes.limits.max_entries),
        },
    );
    for record in apart {
        large.send(cx, to, record, 0);
    }
    delta
}

/// Whether two complete digests list the same watermark for every origin.
fn same_digest(a: &Digest, b: &Digest) -> bool {
    a.complete
        && b.complete
        && a.entries.len() == b.entries.len()
        && a.entries
            .iter()
            .all(|e| b.watermark(&e.origin) == Some(e.watermark))
}
