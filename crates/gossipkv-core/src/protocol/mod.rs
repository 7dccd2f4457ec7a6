//! [`Protocol`]: the state machine, and how its inputs are dispatched to
//! the parts that own each behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossipkv_proto::Body;
use gossipkv_storage::{NodeId, Record, Store};
use tracing::{debug, info, warn};

use crate::config::ProtocolConfig;
use crate::context::Context;
use crate::event::{Event, Transmit};
use crate::exchange::Exchange;
use crate::guard::Guard;
use crate::large::LargeValues;
use crate::marks::PeerMarks;
use crate::owners::Owners;
use crate::push::Pusher;
use crate::reassembly::Reassembly;
use crate::resync::ResyncClient;
use crate::retire::Retirement;
use crate::stream::Streams;
use crate::swim::{Member, MemberEvent, MemberState};
use crate::time::{millis, Instant, WallTime};
use crate::Stats;

/// What the exchange borrows of the other parts of a [`Protocol`] (a macro,
/// so that the borrows stay disjoint from `self.cx` and `self.exchange`).
macro_rules! parts {
    ($p:expr) => {
        Parts {
            resync: &$p.resync,
            push: &$p.push,
            large: &mut $p.large,
            marks: &mut $p.marks,
        }
    };
}

mod input;
mod streams;

/// Most fragmented messages open at once.
const OPEN_MESSAGES: usize = 32;

/// When each periodic task is next due.
#[derive(Debug, Clone, Copy)]
struct Timers {
    /// The next gossip round.
    round: Instant,
    /// The next membership check (a quarter interval apart).
    check: Instant,
    /// The next collection of tombstones and superseded writes.
    gc: Instant,
}

/// The gossip protocol of one node, as a deterministic state machine.
///
/// A `Protocol` never touches a socket, never reads a clock and never asks
/// a global random generator for anything: time, randomness (from
/// [`ProtocolConfig::rng_seed`]) and bytes come in as arguments, and
/// datagrams, timers and events go out through the `poll_*` methods. Given
/// the same inputs it does the same thing, which is what lets the simulator
/// replay a failing run from its seed.
///
/// # Driving it
///
/// Inputs, each with the current time:
/// - [`handle_datagram`](Self::handle_datagram) for every datagram received,
///   with the address it came from;
/// - [`handle_timeout`](Self::handle_timeout) once the instant returned by
///   [`poll_timeout`](Self::poll_timeout) has come (calling it earlier, or
///   more often, is harmless);
/// - [`push_local`](Self::push_local) with every record the local store
///   wrote, in batches when writes come in bursts (they are coalesced into
///   datagrams);
/// - [`set_seeds`](Self::set_seeds), [`set_discovered`](Self::set_discovered)
///   when the addresses to contact change, and [`leave`](Self::leave) once,
///   to shut down gracefully.
///
/// Outputs, polled after every input until they return `None`:
/// - [`poll_transmit`](Self::poll_transmit): datagrams to send. Datagrams
///   of exchanges and pushes come first; fragments of large values after
///   every other datagram. A driver may send a bounded batch at a time and
///   feed new inputs in between (replies then go ahead of the remaining
///   fragments; [`has_urgent_transmits`](Self::has_urgent_transmits) tells
///   whether anything but fragments waits);
/// - [`poll_event`](Self::poll_event): membership changes and problems to
///   report;
/// - [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout`
///   next; `None` once the node has left.
///
/// Time comes in two kinds. `now` is an [`Instant`] on a **monotonic**
/// clock: every timer (rounds, probes, suspicion, collection schedule,
/// hold times) runs on it, so a wall clock stepped back or forward changes
/// none of them. `wall` is the **wall clock** ([`WallTime`], milliseconds
/// since the Unix epoch), used only where wall time belongs: the bound on
/// how far a remote timestamp may lead ours, and the age of tombstones. The
/// local store stamps local writes with the wall time its caller passes.
///
/// What a caller must guarantee: `now` never goes backwards across calls;
/// the store passed to [`new`](Self::new) is the one local writes go to, and
/// its local origin is `(cfg.node_id, cfg.generation)`; only this instance
/// merges remote records into it. What it guarantees in return: no input
/// panics or allocates without bound (every datagram is checked, every map
/// fed by the network has a cap); a bad datagram is dropped whole, counted
/// in [`Stats`] and reported as an [`Event::Error`].
///
/// # Parts
///
/// Each behaviour lives in a module that owns its state: anti-entropy
/// (`exchange`), re-synchronisation (`resync`), eager push (`push`), large
/// values (`large`), collection marks (`marks`), fragment reassembly
/// (`reassembly`), the guards against hostile input (`guard`), membership
/// (`swim`, behind the `peers` seam), and the outbox that builds envelopes.
#[derive(Debug)]
pub struct Protocol {
    cx: Context,
    exchange: Exchange,
    resync: ResyncClient,
    push: Pusher,
    large: LargeValues,
    marks: PeerMarks,
    reassembly: Reassembly,
    guard: Guard,
    streams: Streams,
    owners: Owners,
    retire: Retirement,
    timers: Timers,
}

impl Protocol {
    /// A protocol instance replicating `store`, starting at `now`. The first
    /// round is due at once.
    pub fn new(cfg: ProtocolConfig, store: Arc<Store>, now: Instant) -> Self {
        let interval = cfg.interval();
        let max_message = cfg.max_value_size.saturating_add(crate::MESSAGE_SLACK);
        // Room for four whole messages (a sender's retry may overlap the
        // message it replaces).
        let reassembly = Reassembly::new(
            max_message.saturating_mul(4),
            OPEN_MESSAGES,
            (20 * interval).max(Duration::from_secs(2)),
        );
        let timers = Timers {
            round: now,
            check: now,
            gc: now + gc_interval(cfg.tombstone_retention),
        };
        Protocol {
            exchange: Exchange::default(),
            resync: ResyncClient::default(),
            push: Pusher::new(interval, cfg.push),
            large: LargeValues::new(interval),
            marks: PeerMarks::default(),
            guard: Guard::default(),
            streams: Streams::default(),
            owners: Owners::default(),
            retire: Retirement::default(),
            reassembly,
            timers,
            cx: Context::new(cfg, store, now),
        }
    }

    /// Bytes available for the body of one datagram (packet size less the
    /// envelope and the share reserved for member entries).
    pub fn body_budget(&self) -> usize {
        self.cx.sizes.body
    }

    /// The store being replicated.
    pub fn store(&self) -> &Arc<Store> {
        &self.cx.store
    }

    /// Whether this node has caught up once: it exchanged digests with a
    /// live member and held everything that member vouched for, or its
    /// digest and a member's agreed. Set once ([`Event::Synced`]), never
    /// unset. A digest sent in windows counts once fresh windows of one
    /// peer cover every origin.
    pub fn is_synced(&self) -> bool {
        self.cx.stats.synced
    }

    /// Declares this node caught up without an exchange, for a node that
    /// has nobody to catch up from (no seeds, no discovery). Emits
    /// [`Event::Synced`] unless already synced.
    pub fn mark_synced(&mut self) {
        crate::synced::mark(&mut self.cx, None);
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.cx.stats;
        s.reassemblies_dropped = self.reassembly.dropped;
        s
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.cx.cfg.node_id
    }

    /// Our membership incarnation now (it rises when we refute a rumor of
    /// our suspicion or death). A node that restarts in the same
    /// generation must start above it: see [`ProtocolConfig::incarnation`].
    pub fn incarnation(&self) -> u64 {
        self.cx.peers.header().0
    }

    /// Whether [`leave`](Self::leave) was called.
    pub fn has_left(&self) -> bool {
        self.cx.left
    }

    /// The members that are alive or suspect: node id and address.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.cx
            .peers
            .live()
            .into_iter()
            .map(|m| (m.node_id, m.addr))
            .collect()
    }

    /// Every member known, the local node first (always alive, or left once
    /// [`leave`](Self::leave) was called; its address is the advertised
    /// one, or `0.0.0.0:0` when there is none).
    pub fn members(&self) -> Vec<Member> {
        let cfg = &self.cx.cfg;
        let me = Member::new(
            cfg.node_id.clone(),
            cfg.advertise_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            if self.cx.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            cfg.generation,
            self.cx.peers.header().0,
        );
        let mut v = vec![me];
        v.extend(self.cx.peers.all());
        v
    }

    /// Replaces the addresses found by discovery (mDNS); they are contacted
    /// like seeds.
    pub fn set_discovered(&mut self, addrs: Vec<SocketAddr>) {
        self.cx.discovered = addrs;
    }

    /// Replaces the seed addresses (for example after resolving host names
    /// again).
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.cx.cfg.seeds = seeds;
    }

    /// Adds seed addresses (kept with the others, duplicates dropped): they
    /// are contacted like seeds, from the next round on.
    pub fn add_seeds(&mut self, seeds: impl IntoIterator<Item = SocketAddr>) {
        let all = &mut self.cx.cfg.seeds;
        all.extend(seeds);
        all.sort_unstable();
        all.dedup();
    }

    /// Announces that this node leaves: queues a `Leave` to every member that
    /// is alive or suspect (twice, against loss). Afterwards the node sends
    /// nothing more of its own accord, and [`poll_timeout`](Self::poll_timeout)
    /// returns `None`.
    pub fn leave(&mut self) {
        if self.cx.left {
            return;
        }
        // Our ephemeral values go with us: deleted (and pushed) first.
        let cx = &mut self.cx;
        let deletes = cx.store.rewrite_owned(false, cx.wall.as_unix_ms());
        if !deletes.is_empty() {
            debug!(
                values = deletes.len(),
                "deleting ephemeral values before leaving"
            );
            self.push.push_local(cx, &mut self.large, deletes);
        }
        self.cx.left = true;
        let targets = self.cx.peers.leave_targets();
        debug!(members = targets.len(), "announcing departure");
        for _ in 0..2 {
            for &to in &targets {
                self.cx.send(to, Body::Leave);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called,
    /// on the monotonic clock; `None` once the node has left.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.cx.left {
            return None;
        }
        let t = self.timers;
        Some(t.round.min(t.check).min(t.gc).min(self.expiry_due()))
    }

    /// When the store's next expiry comes, on the monotonic clock (the
    /// wall clock's distance to it, from the last input's times).
    fn expiry_due(&self) -> Instant {
        let cx = &self.cx;
        match cx.store.next_expiry() {
            Some(at) => {
                let wait = at.saturating_sub(cx.wall.as_unix_ms());
                cx.now + Duration::from_millis(wait)
            }
            None => self.timers.round,
        }
    }

    /// The next datagram to send, if any (see the driving contract above).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let cx = &mut self.cx;
        if !cx.out.has_any() {
            return None;
        }
        let me = cx.me();
        cx.out.poll(&me, &mut cx.stats)
    }

    /// Whether datagrams other than fragments of large values wait to be
    /// sent. A driver sends those at once and may pace fragments, so that a
    /// receiver's socket never holds a long queue of fragments ahead of a
    /// small write.
    pub fn has_urgent_transmits(&self) -> bool {
        self.cx.out.has_urgent()
    }

    /// Whether datagrams wait to be sent.
    pub fn has_transmits(&self) -> bool {
        self.cx.out.has_any()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.cx.peers.poll_event() {
            log_member_event(&e);
            return Some(Event::Member(e));
        }
        self.cx.events.pop_front()
    }

    /// Runs whatever is due at `now`: membership checks, collection, a
    /// gossip round. `wall` is the wall-clock time (see the driving
    /// contract).
    pub fn handle_timeout(&mut self, now: Instant, wall: WallTime) {
        self.cx.now = now;
        self.cx.wall = wall;
        if self.cx.left {
            return;
        }
        let expired = self.cx.store.expire(wall.as_unix_ms());
        self.cx.stats.values_expired += expired as u64;
        let interval = self.cx.cfg.interval();
        if now >= self.timers.check {
            self.timers.check = now + (interval / 4).max(Duration::from_millis(1));
            self.check(now);
        }
        if now >= self.timers.gc {
            self.timers.gc = now + gc_interval(self.cx.cfg.tombstone_retention);
            self.collect(wall);
        }
        if now >= self.timers.round {
            self.timers.round = now + interval;
            self.round();
        }
    }

    /// The periodic check: membership (probes, suspicion), owners of
    /// ephemeral values, expiries.
    fn check(&mut self, now: Instant) {
        let cx = &mut self.cx;
        let actions = cx.peers.timeout(now, &mut cx.rng, &mut cx.stats);
        let syns = cx.run(actions);
        self.exchange.syn_all(cx, syns, &self.resync);
        self.check_owners(now);
        if self.reassembly.expire(now) > 0 {
            debug!("dropped unfinished fragmented envelopes");
        }
        self.large.expire(now);
        self.push.expire(now);
    }

    /// Ephemeral values: hidden, shown or removed as their owners' members
    /// say (see the `owners` module); ours written again once we refuted a
    /// rumor of our death (a node may have removed them meanwhile).
    fn check_owners(&mut self, now: Instant) {
        let cx = &mut self.cx;
        let me = cx.store.local_origin().clone();
        let grace = cx.cfg.ephemeral_grace;
        self.owners
            .check(&cx.store, &cx.peers, &me, now, grace, &mut cx.stats);
        if cx.peers.take_refuted_death() {
            let again = cx.store.rewrite_owned(true, cx.wall.as_unix_ms());
            if !again.is_empty() {
                info!(
                    values = again.len(),
                    "rewrote ephemeral values after refuting our death"
                );
                cx.stats.owned_rewritten += again.len() as u64;
                self.push.push_local(cx, &mut self.large, again);
            }
        }
    }

    /// Collects tombstones past the retention, and the superseded writes
    /// every live member has passed.
    fn collect(&mut self, wall: WallTime) {
        let retention = millis(self.cx.cfg.tombstone_retention);
        let gc = self.cx.store.collect_garbage(wall.as_unix_ms(), retention);
        self.cx.stats.tombstones_collected += gc.tombstones as u64;
        self.marks.collect(&mut self.cx);
        self.retire.check(&mut self.cx, &self.marks);
        if gc.tombstones + gc.ghosts > 0 {
            debug!(
                tombstones = gc.tombstones,
                ghosts = gc.ghosts,
                "collected garbage"
            );
        }
    }

    /// A gossip round: a Syn to each of this round's targets.
    fn round(&mut self) {
        self.marks.share_early_bounds(&self.cx);
        let cx = &mut self.cx;
        cx.stats.rounds += 1;
        let digest = self.exchange.begin_round(cx);
        let quiet = self.exchange.quiet() && !self.resync.active();
        let resync = self.resync.addr(&cx.peers);
        let unknown: Vec<SocketAddr> = cx.cfg.seeds.iter().chain(&cx.discovered).copied().collect();
        let fanout = cx.cfg.fanout();
        let own = cx.cfg.advertise_addr;
        let targets =
            cx.peers
                .round_targets(cx.now, &mut cx.rng, quiet, fanout, resync, own, &unknown);
        if targets.is_empty() {
            return;
        }
        self.exchange.new_round();
        for to in targets {
            let cursor = self.resync.cursor_for(&cx.peers, to);
            let syn = self.exchange.make_syn(cx, &digest, cursor, &self.resync);
            self.exchange.send_syn(cx, to, syn, &self.resync);
        }
    }

    /// Pushes fresh local writes to peers at once, in packet-sized batches
    /// (see the `push` module). Call it with every record the local store
    /// wrote (several at a time when writes come in bursts: they are
    /// coalesced).
    pub fn push_local(&mut self, now: Instant, records: Vec<Record>) {
        self.cx.now = now;
        self.push.push_local(&mut self.cx, &mut self.large, records);
    }

    /// Sizes of every map and queue the protocol keeps, for tests that
    /// check state stays bounded whatever the network sends.
    #[cfg(test)]
    pub(crate) fn state_sizes(&self) -> Vec<(&'static str, usize)> {
        let [members, forgotten, by_addr, awaiting, relays, probed, rumors] = self.cx.peers.sizes();
        vec![
            ("members", members),
            ("forgotten", forgotten),
            ("by_addr", by_addr),
            ("awaiting", awaiting),
            ("relays", relays),
            ("probed", probed),
            ("rumors", rumors),
            ("pushed origins", self.push.len()),
            ("large sends", self.large.len()),
            ("peer marks", self.marks.len()),
            ("skew reports", self.guard.len()),
            ("origin allowances", self.guard.sources()),
            ("store origins", self.cx.store.active_origins()),
            ("hash-only syns", self.exchange.pending()),
            ("reassembly bytes", self.reassembly.held_bytes()),
            ("sync windows", self.cx.windows.len()),
            ("streams", self.streams.open.len()),
            ("stream back-offs", self.streams.backoff_len()),
            ("events", self.cx.events.len()),
            ("dead owners", self.owners.len()),
            ("departed origins", self.retire.len()),
            ("validated addresses", self.cx.addrs.sizes()[0]),
            ("address sources", self.cx.addrs.sizes()[1]),
            ("address echoes", self.cx.addrs.sizes()[2]),
        ]
    }

    /// Takes `addr` as validated (as if it had sent our token back), for
    /// tests about something else than validation.
    #[cfg(test)]
    pub(crate) fn trust(&mut self, addr: SocketAddr) {
        self.cx.addrs.validate(addr, self.cx.now);
    }

    /// The parts, for the crate's tests.
    #[cfg(test)]
    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }
}

fn log_member_event(e: &MemberEvent) {
    let m = e.member();
    match e {
        MemberEvent::Joined(_) => info!(member = %m.node_id, addr = %m.addr, "member joined"),
        MemberEvent::Rejoined(_) => info!(member = %m.node_id, addr = %m.addr, "member rejoined"),
        MemberEvent::Left(_) => info!(member = %m.node_id, "member left"),
        MemberEvent::Dead(_) => warn!(member = %m.node_id, "member declared dead"),
        MemberEvent::Suspect(_) => debug!(member = %m.node_id, "member suspected"),
        MemberEvent::Alive(_) => debug!(member = %m.node_id, "suspected member is alive"),
        MemberEvent::Forgotten(_) => debug!(member = %m.node_id, "member forgotten"),
    }
}

/// How often tombstones are collected: a tenth of the retention, between
/// 1 s and 1 min.
fn gc_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
