//! Cluster membership and failure detection in the manner of SWIM (Das et
//! al.) with the suspicion mechanism that makes it robust to loss.
//!
//! - [`member`]: the types users see and the merge rule (how news about a
//!   member changes our view of it), table-tested.
//! - [`table`]: the members known, their states and addresses.
//! - [`rumors`]: changes piggybacked on datagrams, a bounded number of times.
//! - [`reconcile`]: the member-list fingerprint, and bucket-by-bucket
//!   reconciliation of lists that differ (how joins spread).
//! - [`probe`]: probing, doubt, indirect probes.
//!
//! [`Swim`] ties them together for the protocol: it never sends anything
//! itself, but returns [`Action`]s (datagrams to send, Syns to probe with,
//! reconciliations to start) for the protocol to carry out.
//!
//! A suspicion is about a member's *incarnation*, a counter the member
//! raises only to refute a rumor of its own suspicion or death; a suspicion
//! nobody refutes within the suspect timeout becomes death. Dead members are
//! still contacted now and then, so a healed partition rejoins by itself,
//! and are forgotten after a grace period. Liveness is kept out of the data
//! digest, so an idle cluster's exchanges stay in the short form.

pub(crate) mod member;
pub(crate) mod probe;
pub(crate) mod reconcile;
pub(crate) mod rumors;
pub(crate) mod table;

use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{Body, MemberSync, Probe, Sender};
use gossipkv_storage::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;
use tracing::debug;

pub use member::{DetectorConfig, Member, MemberEvent, MemberState};
pub use table::MAX_MEMBERS;

use crate::config::ProtocolConfig;
use crate::time::Instant;
use crate::Stats;
use probe::Prober;
use table::Table;

/// Something SWIM wants done; the protocol carries it out.
#[derive(Debug)]
pub(crate) enum Action {
    /// Send this body to this address.
    Send(SocketAddr, Body),
    /// Send a Syn to this address (it doubles as a probe).
    Syn(SocketAddr),
    /// Send our member-list bucket fingerprints to `to`, with our members
    /// from the buckets that differ from `theirs` when given (nothing is
    /// sent if none differs).
    MemberSync {
        /// Destination.
        to: SocketAddr,
        /// The receiver's bucket fingerprints, when known.
        theirs: Option<Vec<u64>>,
        /// How many more answers the exchange allows.
        ttl: u32,
    },
}

/// One node's SWIM membership: table, prober and own incarnation.
#[derive(Debug)]
pub(crate) struct Swim {
    table: Table,
    prober: Prober,
    /// Our incarnation: raised to refute rumors of our suspicion or death.
    incarnation: u64,
    interval: Duration,
    /// Whether we refuted a rumor of our death since the protocol last
    /// asked (it then writes our ephemeral values again).
    refuted_death: bool,
}

impl Swim {
    pub(crate) fn new(cfg: &ProtocolConfig) -> Self {
        let interval = cfg.interval();
        Swim {
            table: Table::new(
                cfg.node_id.clone(),
                cfg.generation,
                3 * interval,
                cfg.detector.clone(),
            ),
            prober: Prober::default(),
            incarnation: cfg.incarnation,
            interval,
            refuted_death: false,
        }
    }

    /// Whether we refuted a rumor of our death since the last call.
    pub(crate) fn take_refuted_death(&mut self) -> bool {
        std::mem::take(&mut self.refuted_death)
    }

    /// Our incarnation.
    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Fingerprint of our member list.
    pub(crate) fn members_hash(&self) -> u64 {
        self.table.print.hash()
    }

    /// Whether rumors wait to be spread or the member list changed in the
    /// last three intervals: the cluster is not quiet.
    pub(crate) fn unsettled(&self, now: Instant) -> bool {
        self.table.rumors.pending() || self.table.print.recently_changed(now)
    }

    /// A datagram came from `sender` at `from`: it is alive, and answers
    /// the probe we may be waiting on (and those we relay).
    pub(crate) fn heard_from(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: &Sender,
    ) -> Vec<Action> {
        self.table.observe(sender, Some(from), now);
        self.prober.heard_from(from, sender)
    }

    /// A member entry from a datagram: a rumor about us is refuted by taking
    /// a greater incarnation (every header carries it, and it spreads as a
    /// rumor of our own); any other goes to the table.
    pub(crate) fn rumor(&mut self, now: Instant, m: &Sender, stats: &mut Stats) {
        if let Some(incarnation) = self.table.refutes(m, self.incarnation) {
            debug!(incarnation, liveness = ?m.liveness, "refuting a rumor about this node");
            stats.refutations += 1;
            self.incarnation = incarnation;
            self.refuted_death |= m.liveness == gossipkv_proto::Liveness::Dead;
            self.table.rumors.spread_self(self.table.members.len());
            return;
        }
        self.table.observe(m, None, now);
    }

    /// The periodic check: unanswered probes, suspicion and death timeouts,
    /// direct probes of doubted and suspected members.
    pub(crate) fn timeout(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        stats: &mut Stats,
    ) -> Vec<Action> {
        let mut actions = self
            .prober
            .check(&mut self.table, now, self.interval, rng, stats);
        self.table.check(now);
        let due = self.prober.suspects_due(&self.table, now, self.interval);
        actions.extend(due.into_iter().map(Action::Syn));
        actions
    }

    /// Failure detection help: probe a member for a peer that could not
    /// reach it, or take a peer's word that a member answered it.
    pub(crate) fn on_probe(
        &mut self,
        now: Instant,
        from: SocketAddr,
        probe: Probe,
        me: &Sender,
        stats: &mut Stats,
    ) -> Vec<Action> {
        if !probe.request {
            // Vouched for: it answered the peer, which counts as an answer.
            self.prober.vouched(&probe.target.node_id, now);
            self.table.vouch(&probe.target.node_id);
            self.rumor(now, &probe.target, stats);
            return Vec::new();
        }
        if probe.target.node_id == me.node_id {
            // We are the target: answering directly proves it best.
            let target = Sender {
                members_hash: 0,
                ..me.clone()
            };
            return vec![Action::Send(
                from,
                Body::Probe(Probe {
                    target,
                    request: false,
                }),
            )];
        }
        let Some(target) = self.table.get(&probe.target.node_id) else {
            return Vec::new();
        };
        if self
            .prober
            .relay(&target.node_id, from, now + self.interval)
        {
            stats.probes_relayed += 1;
            return vec![Action::Syn(target.addr)];
        }
        Vec::new()
    }

    /// Answers a member-list reconciliation: while `ttl` allows, our bucket
    /// fingerprints and our members from the buckets that differ.
    pub(crate) fn on_member_sync(&self, from: SocketAddr, sync: MemberSync) -> Option<Action> {
        // We start exchanges with a ttl of 2; a greater one from the network
        // is capped, so a forged one cannot keep two nodes answering each
        // other.
        (sync.ttl > 0).then(|| Action::MemberSync {
            to: from,
            theirs: Some(sync.buckets),
            ttl: sync.ttl.min(2) - 1,
        })
    }

    /// A SynAck's sender has another member list: start a reconciliation.
    pub(crate) fn on_syn_ack(&self, from: SocketAddr, members_hash: u64) -> Option<Action> {
        (members_hash != 0 && members_hash != self.members_hash()).then_some(Action::MemberSync {
            to: from,
            theirs: None,
            ttl: 2,
        })
    }

    /// Our bucket fingerprints.
    pub(crate) fn buckets(&self) -> Vec<u64> {
        self.table.print.buckets()
    }

    /// Our live members in the buckets that differ from `theirs`, within
    /// `room` bytes; `None` when none differs.
    pub(crate) fn reconcile(
        &self,
        theirs: &[u64],
        room: usize,
        rng: &mut impl Rng,
    ) -> Option<Vec<Sender>> {
        self.table
            .print
            .reconcile(&self.table.members, theirs, room, rng)
    }

    /// This round's Syn targets: the next member to probe, `fanout - 1`
    /// random live members too unless the cluster is `quiet`, the peer
    /// re-synchronising us, a dead member now and then (so a healed
    /// partition finds itself again), and `unknown` addresses (seeds and
    /// discovered ones) nobody answered from yet: one per round, or all of
    /// them while we know no live member.
    pub(crate) fn round_targets(
        &mut self,
        now: Instant,
        rng: &mut impl Rng,
        quiet: bool,
        fanout: usize,
        resync: Option<SocketAddr>,
        unknown: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = Vec::new();
        // The probe order holds every live member: none means none is live.
        let no_live = match self.prober.next(&self.table, now, rng) {
            Some(m) => {
                targets.push(m.addr);
                false
            }
            None => true,
        };
        if !quiet || self.unsettled(now) {
            let mut peers: Vec<SocketAddr> = self
                .table
                .live()
                .iter()
                .map(|m| m.addr)
                .filter(|a| !targets.contains(a))
                .collect();
            peers.shuffle(rng);
            targets.extend(peers.into_iter().take(fanout - 1));
        }
        add_resync_peer(&mut targets, resync);
        let dead = self.table.in_states(&[MemberState::Dead]);
        if !dead.is_empty() && rng.random_bool(0.25) {
            targets.push(dead[rng.random_range(0..dead.len())].addr);
        }
        let unknown: Vec<SocketAddr> = unknown
            .iter()
            .copied()
            .filter(|a| !self.table.is_live_addr(*a))
            .collect();
        if no_live {
            targets.extend(unknown);
        } else if !unknown.is_empty() {
            targets.push(unknown[rng.random_range(0..unknown.len())]);
        }
        targets.sort();
        targets.dedup();
        targets
    }

    /// Addresses of alive members but `exclude`.
    pub(crate) fn alive_addrs(&self, exclude: Option<&NodeId>) -> Vec<SocketAddr> {
        self.table
            .in_states(&[MemberState::Alive])
            .into_iter()
            .filter(|m| Some(&m.node_id) != exclude)
            .map(|m| m.addr)
            .collect()
    }

    /// Number of alive members.
    pub(crate) fn alive_count(&self) -> usize {
        self.table.count_in(&[MemberState::Alive])
    }

    /// Live (alive or suspect) members, in id order.
    pub(crate) fn live(&self) -> Vec<Member> {
        self.table.live()
    }

    /// Every member known, in id order.
    pub(crate) fn all(&self) -> Vec<Member> {
        self.table.all()
    }

    /// The member with id `node`, if known.
    pub(crate) fn get(&self, node: &NodeId) -> Option<Member> {
        self.table.get(node)
    }

    /// Member entries for a datagram to `to` (see [`rumors::Rumors::sample`]).
    pub(crate) fn sample(
        &mut self,
        me: &Sender,
        to: SocketAddr,
        reply: bool,
        now: Instant,
        budget: usize,
        rng: &mut impl Rng,
    ) -> Vec<Sender> {
        let to = self.table.id_at(to);
        let t = &mut self.table;
        t.rumors.sample(
            &t.members,
            &t.print,
            me,
            to.as_ref(),
            reply,
            now,
            budget,
            rng,
        )
    }

    /// The next membership event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<MemberEvent> {
        self.table.poll_event()
    }

    /// Sizes of every map SWIM keeps, for bound checks.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> [usize; 7] {
        let (members, forgotten, by_addr) = self.table.sizes();
        let (awaiting, relays, probed) = self.prober.sizes();
        [
            members,
            forgotten,
            by_addr,
            awaiting,
            relays,
            probed,
            self.table.rumors.len(),
        ]
    }

    /// Whether `addr` is a live member's address.
    pub(crate) fn is_live_addr(&self, addr: SocketAddr) -> bool {
        self.table.is_live_addr(addr)
    }

    /// The table, for tests.
    #[cfg(test)]
    pub(crate) fn table(&self) -> &Table {
        &self.table
    }

    /// The prober, for tests.
    #[cfg(test)]
    pub(crate) fn prober(&self) -> &Prober {
        &self.prober
    }
}

/// Makes sure the peer re-synchronising us gets a Syn this round (in place
/// of the last random target when there are several).
pub(crate) fn add_resync_peer(targets: &mut Vec<SocketAddr>, resync: Option<SocketAddr>) {
    let Some(addr) = resync else {
        return;
    };
    if !targets.contains(&addr) {
        if targets.len() > 1 {
            targets.pop();
        }
        targets.push(addr);
    }
}

#[cfg(test)]
mod tests;
