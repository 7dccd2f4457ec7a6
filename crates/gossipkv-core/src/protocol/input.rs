//! Datagrams in: decoding, the header's checks, and each body handed to
//! the part that owns its behaviour, after the guards screened it.

use std::net::SocketAddr;

use gossipkv_proto::{
    decode, decode_reassembled, Body, DecodeError, Envelope, Fragment, Push, Reply, Sender, SynAck,
};
use gossipkv_storage::{Delta, Digest, NodeId, Page, Record, Version};
use tracing::{debug, trace};

use super::Protocol;
use crate::address::Standing;
use crate::event::NetworkError;
use crate::exchange::Parts;
use crate::reassembly::Outcome;
use crate::synced;
use crate::time::{Instant, WallTime};
use crate::MessageKind;

impl Protocol {
    /// Handles one datagram received from `from` at `now` (`wall`: the wall
    /// clock, see the driving contract).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        wall: WallTime,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        self.cx.now = now;
        self.cx.wall = wall;
        self.cx.stats.datagrams_received += 1;
        self.cx.stats.bytes_received += bytes.len() as u64;
        let env = match decode(bytes, &self.cx.sizes.limits) {
            Ok(env) => env,
            Err(error) => return self.reject(from, error),
        };
        self.cx.stats.received_by_kind[MessageKind::of(&env.body) as usize].add(bytes.len());
        if env.cluster_id != self.cx.cfg.cluster_id {
            self.cx.stats.foreign_cluster += 1;
            debug!(%from, cluster = %env.cluster_id, "dropping datagram of another cluster");
            self.cx.report(NetworkError::ForeignCluster {
                from,
                cluster_id: env.cluster_id,
            });
            return;
        }
        let cx = &mut self.cx;
        // A stranger that just proved its address was answered within its
        // credit so far: an exchange of our own now gives it the rest at
        // once, not at the next round that picks it.
        let stranger = !cx.peers.is_live_addr(from);
        let proved = cx.addrs.on_datagram(
            (now, &mut cx.rng),
            (from, env.sender.addr),
            bytes.len(),
            (env.addr_token, env.addr_echo),
        );
        if proved {
            cx.stats.addresses_validated += 1;
        }
        // Whatever is sent meanwhile answers `from` (see `address`).
        cx.answering = Some(from);
        cx.answered = false;
        let token = env.addr_token;
        self.handle_envelope(from, env, false);
        self.echo_at_once(from, token);
        self.cx.answering = None;
        if proved && stranger && !self.cx.left {
            let cx = &mut self.cx;
            self.exchange.syn_all(cx, vec![from], &self.resync);
        }
    }

    /// A trusted peer (validated, or a member) that gave us a token gets it
    /// back at once, in an empty Ack when nothing else answered it: it
    /// validates us within this round trip (and makes us a member), not at
    /// our next datagram, so a joiner's stream request that follows finds
    /// it a member.
    fn echo_at_once(&mut self, from: SocketAddr, token: u64) {
        let cx = &mut self.cx;
        if token == 0 || cx.answered || cx.left || !cx.trusted(from) {
            return;
        }
        let delta = Delta::default();
        cx.send(from, Body::Ack(gossipkv_proto::Ack { delta }));
    }

    /// Handles a decoded envelope of our cluster (`inner`: reassembled from
    /// fragments, whose own envelopes already told membership of the
    /// sender; its header may name a record's origin rather than a sender).
    fn handle_envelope(&mut self, from: SocketAddr, env: Envelope, inner: bool) {
        let Envelope {
            sender,
            members,
            body,
            ..
        } = env;
        if !inner && !self.heard_from(from, &sender, &members) {
            return;
        }
        if self.cx.left {
            return;
        }
        match body {
            Body::Syn(syn) => {
                // A peer far ahead of us: ask it for a stream.
                let ahead =
                    (self.cx.cfg.streams && syn.digest_hash.is_none()).then(|| syn.digest.clone());
                let parts = parts!(self);
                self.exchange
                    .on_syn(&mut self.cx, from, &sender, syn, parts);
                if let Some(digest) = ahead {
                    self.consider_stream(from, &sender.node_id, &digest);
                }
            }
            Body::SynAck(ack) => self.on_syn_ack(from, &sender, ack),
            Body::Ack(ack) => {
                self.apply_delta(from, ack.delta);
            }
            Body::Leave => {}
            Body::Push(push) => self.on_push(from, &sender.node_id, push),
            Body::Fragment(f) if !inner => self.on_fragment(from, f),
            Body::Fragment(_) => {}
            Body::Probe(probe) => {
                let cx = &mut self.cx;
                let me = cx.me();
                let actions = cx.peers.on_probe(cx.now, from, probe, &me, &mut cx.stats);
                let syns = cx.run(actions);
                self.exchange.syn_all(cx, syns, &self.resync);
            }
            Body::MemberSync(sync) => {
                if let Some(action) = self.cx.peers.on_member_sync(from, sync) {
                    self.cx.run(vec![action]);
                }
            }
        }
    }

    /// A datagram's header: drops datagrams that claim our own node id
    /// (reporting another generation as a duplicate node id), and otherwise
    /// tells membership the sender is alive and hands it the member entries.
    /// Returns whether the datagram may be handled further.
    fn heard_from(&mut self, from: SocketAddr, sender: &Sender, members: &[Sender]) -> bool {
        let cx = &mut self.cx;
        if sender.node_id == cx.cfg.node_id {
            if sender.generation != cx.cfg.generation {
                cx.stats.duplicate_node_id += 1;
                cx.report(NetworkError::DuplicateNodeId {
                    from,
                    node_id: sender.node_id.to_string(),
                    generation: sender.generation,
                });
            }
            return false;
        }
        // An address that has not shown it receives what we send makes no
        // member and moves none, and its member entries are not taken
        // (unless a known member is there): a spoofed datagram must not
        // turn this node's own rounds and probes toward the address it
        // forges (see `address`). It is still answered, within the limit.
        if cx.addrs.standing(from, cx.now) == Standing::Unvalidated
            && !cx.peers.knows_at(sender, from)
        {
            cx.stats.unvalidated_senders += 1;
            return true;
        }
        let actions = cx
            .peers
            .heard_from(cx.now, from, sender, members, &mut cx.stats);
        let syns = cx.run(actions);
        self.exchange.syn_all(cx, syns, &self.resync);
        true
    }

    fn on_syn_ack(&mut self, from: SocketAddr, sender: &Sender, ack: SynAck) {
        self.marks.note(&self.cx.peers, sender, &ack.digest);
        // The peer's member list differs from ours: reconcile them.
        if let Some(action) = self.cx.peers.on_syn_ack(from, sender.members_hash) {
            self.cx.run(vec![action]);
        }
        // The short form: an empty digest and an empty delta.
        let agreed = ack.digest == Digest::default()
            && matches!(&ack.reply, Reply::Delta(d) if d.is_empty());
        match ack.reply {
            Reply::Delta(delta) => {
                self.apply_delta(from, delta);
            }
            Reply::Page(page) => {
                self.on_page(from, &sender.node_id, &page, false);
            }
        }
        if agreed {
            synced::note_agreement(&mut self.cx, from);
        } else {
            synced::note_digest(&mut self.cx, from, &ack.digest);
        }
        let parts = parts!(self);
        self.exchange
            .after_syn_ack(&mut self.cx, from, &ack.digest, parts);
        self.consider_stream(from, &sender.node_id, &ack.digest);
    }

    /// A re-synchronisation page: screened, applied, and tracked. Returns
    /// whether it was applied whole (a stream's later frames may rely on
    /// it only then).
    pub(super) fn on_page(
        &mut self,
        from: SocketAddr,
        sender: &NodeId,
        page: &Page,
        stream: bool,
    ) -> bool {
        let Some(skipped) = self.guard.screen_page(&mut self.cx, from, page) else {
            return false;
        };
        let stats = self.cx.store.apply_page_skipping(page, &skipped);
        self.cx.stats.pages_applied += 1;
        self.cx.stats.records_won += stats.won as u64;
        self.cx.stats.records_lost += stats.lost as u64;
        if self.resync.on_page(
            &mut self.cx,
            &mut self.guard,
            (from, sender),
            page,
            (stream, !skipped.is_empty()),
        ) {
            self.exchange
                .send_whole_digests(self.cx.now, self.cx.cfg.interval());
        }
        if !stream {
            self.consider_stream(from, sender, &page.watermarks);
        }
        skipped.is_empty()
    }

    /// A delta: screened, then applied (owned: the store keeps the decoded
    /// values as they are). Returns whether nothing of it was dropped (see
    /// `Guard::screen_delta`).
    pub(super) fn apply_delta(&mut self, from: SocketAddr, mut delta: Delta) -> bool {
        if delta.is_empty() {
            return true;
        }
        let whole = self.guard.screen_delta(&mut self.cx, from, &mut delta);
        let stats = self.cx.store.apply_owned(delta);
        self.cx.stats.records_won += stats.won as u64;
        self.cx.stats.records_lost += stats.lost as u64;
        if stats.won > 0 {
            trace!(%from, won = stats.won, lost = stats.lost, "applied delta");
        }
        whole
    }

    /// Pushed records: screened and merged; those new here are forwarded
    /// while hops are left, or held back from anti-entropy when the writer
    /// pushed them to everyone.
    fn on_push(&mut self, from: SocketAddr, sender: &NodeId, push: Push) {
        let records = self.guard.screen_records(&mut self.cx, from, push.records);
        // Records are copied only when they may be forwarded: a copy gives
        // every value a shared header, which the store then keeps.
        match push.hops.checked_sub(1) {
            None => {
                let versions: Vec<Version> = records.iter().map(|r| r.version.clone()).collect();
                let won = self.merge_pushed(records);
                self.push.note(self.cx.now, winners(&versions, &won));
            }
            Some(hops) => {
                let copy = records.clone();
                let won = self.merge_pushed(records);
                let fresh: Vec<Record> = winners(copy, &won).collect();
                if !fresh.is_empty() {
                    self.push
                        .forward(&mut self.cx, &mut self.large, (from, sender), hops, fresh);
                }
            }
        }
    }

    /// Merges pushed records and counts them; returns whether each won.
    fn merge_pushed(&mut self, records: Vec<Record>) -> Vec<bool> {
        let won = self.cx.store.merge_batch(records);
        let n = won.iter().filter(|w| **w).count() as u64;
        self.cx.stats.records_won += n;
        self.cx.stats.pushed_records_won += n;
        self.cx.stats.records_lost += won.len() as u64 - n;
        won
    }

    fn on_fragment(&mut self, from: SocketAddr, f: Fragment) {
        self.cx.stats.fragments_received += 1;
        let bytes = match self.reassembly.insert(f, self.cx.now) {
            Outcome::Pending => return,
            Outcome::Complete(bytes) => bytes,
            Outcome::Rejected(why) => return self.reject(from, DecodeError::Inconsistent(why)),
        };
        let env = match decode_reassembled(&bytes, &self.cx.sizes.limits) {
            Ok(env) if env.cluster_id == self.cx.cfg.cluster_id => env,
            Ok(_) => {
                let why = "reassembled envelope names another cluster";
                return self.reject(from, DecodeError::Inconsistent(why));
            }
            Err(error) => return self.reject(from, error),
        };
        self.cx.stats.messages_reassembled += 1;
        trace!(%from, len = bytes.len(), "reassembled a fragmented envelope");
        self.handle_envelope(from, env, true);
    }

    /// Counts and reports a datagram (or reassembled envelope) that is not valid.
    fn reject(&mut self, from: SocketAddr, error: DecodeError) {
        self.cx.stats.decode_errors += 1;
        debug!(%from, %error, "dropping undecodable message");
        self.cx.report(NetworkError::Decode { from, error });
    }
}

/// The items whose flag in `won` is set (the two go in the same order).
fn winners<'a, T: 'a>(
    items: impl IntoIterator<Item = T> + 'a,
    won: &'a [bool],
) -> impl Iterator<Item = T> + 'a {
    items
        .into_iter()
        .zip(won)
        .filter(|(_, w)| **w)
        .map(|(t, _)| t)
}
