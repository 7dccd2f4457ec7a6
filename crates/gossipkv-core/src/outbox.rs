//! The outbox: envelopes built (our header, member entries) and queued as
//! datagrams, with envelopes too large for one datagram cut into fragments
//! lazily, behind every other datagram.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_proto::{
    encode, encoded_len, fragment_piece, Body, Envelope, MemberSync, Sender, PROTOCOL_VERSION,
};
use tracing::warn;

use crate::address::ADDR_FIELDS;
use crate::context::Context;
use crate::event::Transmit;
use crate::hash::stable_hash;
use crate::{MessageKind, Stats};

/// An envelope too large for a datagram, being cut into fragments.
#[derive(Debug)]
struct FragmentJob {
    to: SocketAddr,
    /// Our header; the body is replaced by each fragment in turn.
    header: Envelope,
    payload: Bytes,
    id: u64,
    /// Index of the next piece to send.
    next: usize,
}

/// Datagrams waiting for the driver.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Whole datagrams, sent first.
    transmits: VecDeque<Transmit>,
    /// Envelopes being cut into fragments, one datagram at a time, after
    /// everything in `transmits`.
    fragmenting: VecDeque<FragmentJob>,
    /// Large-value envelopes not cut into fragments yet.
    large: VecDeque<(SocketAddr, Envelope)>,
    packet_size: usize,
    max_message: usize,
    piece: usize,
}

impl Outbox {
    pub(crate) fn new(packet_size: usize, max_message: usize, piece: usize) -> Self {
        Outbox {
            transmits: VecDeque::new(),
            fragmenting: VecDeque::new(),
            large: VecDeque::new(),
            packet_size,
            max_message,
            piece,
        }
    }

    /// Whether datagrams other than fragments of large values wait.
    pub(crate) fn has_urgent(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Whether any datagram waits.
    pub(crate) fn has_any(&self) -> bool {
        !(self.transmits.is_empty() && self.fragmenting.is_empty() && self.large.is_empty())
    }

    /// Queues a large-value envelope, to be cut into fragments once
    /// everything queued before it is out (cutting 1 MiB takes
    /// milliseconds, which small writes should not wait for).
    pub(crate) fn queue_large(&mut self, to: SocketAddr, env: Envelope) {
        self.large.push_back((to, env));
    }

    /// Queues an envelope: as one datagram when it fits the packet size,
    /// otherwise cut into fragments (up to the largest message) that carry
    /// `me` as their header.
    pub(crate) fn queue(&mut self, to: SocketAddr, env: Envelope, me: Sender, stats: &mut Stats) {
        let payload = encode(&env);
        if payload.len() <= self.packet_size {
            stats.datagrams_sent += 1;
            stats.bytes_sent += payload.len() as u64;
            stats.sent_by_kind[MessageKind::of(&env.body) as usize].add(payload.len());
            self.transmits.push_back(Transmit { to, payload });
            return;
        }
        if payload.len() > self.max_message {
            stats.oversized_dropped += 1;
            warn!(
                len = payload.len(),
                max = self.max_message,
                "encoded envelope exceeds the largest message; not sent"
            );
            return;
        }
        // The same bytes get the same id and the same cuts on every node, so
        // pieces of one message from anywhere complete each other: the
        // address token and echo, which differ by sender and receiver, go on
        // the fragments' headers only.
        let (addr_token, addr_echo) = (env.addr_token, env.addr_echo);
        let (env, payload) = if addr_token | addr_echo == 0 {
            (env, payload)
        } else {
            let bare = Envelope {
                addr_token: 0,
                addr_echo: 0,
                padding: 0,
                ..env
            };
            let payload = encode(&bare);
            (bare, payload)
        };
        let id = stable_hash(&payload);
        let header = Envelope {
            members: Vec::new(),
            body: Body::Leave,
            sender: me,
            addr_token,
            addr_echo,
            ..env
        };
        self.fragmenting.push_back(FragmentJob {
            to,
            header,
            payload,
            id,
            next: 0,
        });
    }

    /// The next datagram: whole ones first, then the next fragment, then
    /// (cut on demand, with header `me`) the next large envelope.
    pub(crate) fn poll(&mut self, me: &Sender, stats: &mut Stats) -> Option<Transmit> {
        loop {
            if let Some(t) = self.transmits.pop_front() {
                return Some(t);
            }
            if !self.fragmenting.is_empty() {
                if let Some(t) = self.next_fragment(stats) {
                    return Some(t);
                }
                continue;
            }
            let (to, env) = self.large.pop_front()?;
            self.queue(to, env, me.clone(), stats);
        }
    }

    /// The next fragment of the first envelope being cut, if any is left.
    fn next_fragment(&mut self, stats: &mut Stats) -> Option<Transmit> {
        let mut job = self.fragmenting.pop_front()?;
        let piece = fragment_piece(&job.payload, job.id, self.piece, job.next)?;
        job.next += 1;
        job.header.body = Body::Fragment(piece);
        let datagram = encode(&job.header);
        let to = job.to;
        if job.next * self.piece < job.payload.len() {
            self.fragmenting.push_front(job);
        }
        if datagram.len() > self.packet_size {
            stats.oversized_dropped += 1;
            warn!(
                len = datagram.len(),
                "fragment exceeds the packet size; not sent"
            );
            return None;
        }
        stats.fragments_sent += 1;
        stats.datagrams_sent += 1;
        stats.bytes_sent += datagram.len() as u64;
        stats.sent_by_kind[MessageKind::Fragment as usize].add(datagram.len());
        Some(Transmit {
            to,
            payload: datagram,
        })
    }
}

impl Context {
    /// An envelope from us (no member entries yet).
    pub(crate) fn envelope(&self, body: Body) -> Envelope {
        Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: self.me(),
            members: Vec::new(),
            addr_token: 0,
            addr_echo: 0,
            padding: 0,
            body,
        }
    }

    /// Sends `body` to `to` under our header. Datagrams other than pushes
    /// also carry member entries (rumors, samples) in the room left, at
    /// least the share reserved for them: membership spreads with the
    /// exchanges, which happen anyway.
    pub(crate) fn send(&mut self, to: SocketAddr, body: Body) {
        let mut env = self.envelope(body);
        let len = encoded_len(&env);
        let carries = !matches!(env.body, Body::Push(_)) && self.peers.keeps_membership();
        if carries && len <= self.cfg.packet_size {
            // An answer to an unvalidated address carries what its credit
            // leaves (the address fields cost at most ADDR_FIELDS).
            let credit = self.answer_room(to).saturating_sub(len + ADDR_FIELDS);
            let room = (self.cfg.packet_size - len)
                .max(self.sizes.members)
                .min(credit);
            let reply = !matches!(env.body, Body::Syn(_));
            env.members = self
                .peers
                .sample(&env.sender, to, reply, self.now, room, &mut self.rng);
            self.stats.member_entries_sent += env.members.len() as u64;
        }
        self.send_envelope(to, env);
    }

    /// Queues an envelope as it is (with its address fields), if address
    /// validation lets it go to `to`.
    pub(crate) fn send_envelope(&mut self, to: SocketAddr, mut env: Envelope) {
        if !self.admit(to, &mut env) {
            return;
        }
        let me = self.me();
        self.out.queue(to, env, me, &mut self.stats);
    }

    /// Sends our bucket fingerprints to `to`, with our members from the
    /// buckets that differ from `theirs` (when known; nothing is sent if
    /// none differs).
    pub(crate) fn send_member_sync(&mut self, to: SocketAddr, theirs: Option<&[u64]>, ttl: u32) {
        let Some((buckets, _)) = self.peers.reconcile(None, 0, &mut self.rng) else {
            return;
        };
        let mut env = self.envelope(Body::MemberSync(MemberSync { buckets, ttl }));
        if theirs.is_some() {
            let len = encoded_len(&env);
            let credit = self.answer_room(to).saturating_sub(len + ADDR_FIELDS);
            let room = self.cfg.packet_size.saturating_sub(len).min(credit);
            match self.peers.reconcile(theirs, room, &mut self.rng) {
                Some((_, members)) => env.members = members,
                None => return,
            }
        }
        self.stats.member_syncs_sent += 1;
        self.stats.member_entries_sent += env.members.len() as u64;
        self.send_envelope(to, env);
    }
}
