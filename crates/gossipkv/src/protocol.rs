//! The gossip protocol as a sans-IO state machine.
//!
//! [`Protocol`] never touches a socket, a clock or a global random number
//! generator. Its driver (the tokio task behind [`GossipKv`](crate::GossipKv),
//! or the simulator) follows one contract:
//!
//! * feed every datagram received with [`Protocol::handle_datagram`];
//! * call [`Protocol::handle_timeout`] once the time returned by
//!   [`Protocol::poll_timeout`] has come;
//! * after each call, send everything [`Protocol::poll_transmit`] yields and
//!   handle everything [`Protocol::poll_event`] yields.
//!
//! Time is milliseconds since the Unix epoch, passed in by the caller; the
//! random generator is seeded from [`ProtocolConfig::rng_seed`]. Given the same
//! inputs, a protocol instance does the same thing, which is what lets the
//! simulator replay a failing run from its seed.
//!
//! One gossip round: every interval, pick up to `fanout` peers at random and
//! send each a `Syn` with our digest; the peer answers `SynAck` with its
//! digest and the delta we lack (or a re-synchronisation page when we are too
//! far behind); we answer `Ack` with the delta it lacks. Peers are known by
//! node id; a node that hears from an unknown peer adds it, so seed lists may
//! be asymmetric.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_proto::{
    decode, encode, envelope_overhead, Ack, Body, Envelope, Limits, Reply, Sender, Syn, SynAck,
    PROTOCOL_VERSION,
};
use gossipkv_storage::{Delta, Digest, NodeId, Store};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tracing::{debug, trace, warn};

use crate::error::NetworkError;

/// Timestamps further ahead of the local clock than this are reported as clock skew.
pub const CLOCK_SKEW_REPORT_MS: u64 = 30_000;

/// Options of a [`Protocol`] instance.
#[derive(Clone, Debug)]
pub struct ProtocolConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// This incarnation's generation (must match the store's local origin).
    pub generation: u64,
    /// Only datagrams carrying this cluster id are accepted.
    pub cluster_id: String,
    /// The address peers should use to reach us, if known.
    pub advertise_addr: Option<SocketAddr>,
    /// Milliseconds between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Peers contacted per round.
    pub fanout: usize,
    /// Largest datagram sent, in bytes.
    pub packet_size: usize,
    /// How long tombstones are kept, in milliseconds.
    pub tombstone_retention_ms: u64,
    /// Seed addresses, contacted until they answer.
    pub seeds: Vec<SocketAddr>,
    /// Seed of the random generator that picks peers.
    pub rng_seed: u64,
}

/// Something the driver should know about.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A problem to report through the error handler.
    Error(NetworkError),
    /// A peer was heard from for the first time (or at a new address or generation).
    PeerDiscovered {
        /// The peer's node id.
        node_id: NodeId,
        /// Where it was heard from.
        addr: SocketAddr,
    },
}

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Encoded envelope, at most `packet_size` bytes.
    pub payload: Bytes,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Gossip rounds started.
    pub rounds: u64,
    /// Datagrams handed to the driver for sending.
    pub datagrams_sent: u64,
    /// Payload bytes handed to the driver for sending.
    pub bytes_sent: u64,
    /// Datagrams received (valid or not).
    pub datagrams_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Datagrams dropped because they did not decode.
    pub decode_errors: u64,
    /// Datagrams dropped because they came from another cluster.
    pub foreign_cluster: u64,
    /// Datagrams dropped because they claimed our own node id.
    pub duplicate_node_id: u64,
    /// Records that won when merged.
    pub records_won: u64,
    /// Records received that were already known or older.
    pub records_lost: u64,
    /// Re-synchronisation pages applied.
    pub pages_applied: u64,
    /// Re-synchronisations completed.
    pub resyncs_completed: u64,
    /// Tombstones collected.
    pub tombstones_collected: u64,
    /// Datagrams not sent because they came out larger than the packet size (a bug if ever non-zero).
    pub oversized_dropped: u64,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    generation: u64,
    last_seen_ms: u64,
}

/// Progress of a re-synchronisation we receive from one peer.
#[derive(Debug, Clone)]
struct Resync {
    from: NodeId,
    cursor: String,
    /// The sender's watermarks from the first page: what we may raise ours to
    /// once every page has been applied.
    watermarks: Digest,
}

/// The gossip protocol state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Protocol {
    cfg: ProtocolConfig,
    store: Arc<Store>,
    limits: Limits,
    rng: SmallRng,
    peers: HashMap<NodeId, Peer>,
    next_round_ms: u64,
    next_gc_ms: u64,
    rotate: usize,
    resync: Option<Resync>,
    skew_reported_ms: HashMap<NodeId, u64>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    budget: usize,
}

impl Protocol {
    /// A protocol instance replicating `store`, starting at `now_ms`.
    /// The first round starts at once.
    pub fn new(cfg: ProtocolConfig, store: Arc<Store>, now_ms: u64) -> Self {
        let addr_len = cfg.advertise_addr.map_or(0, |a| a.to_string().len());
        let overhead =
            envelope_overhead(cfg.cluster_id.len(), cfg.node_id.as_str().len(), addr_len);
        let budget = cfg.packet_size.saturating_sub(overhead);
        let limits = Limits {
            max_datagram: gossipkv_proto::Limits::default().max_datagram,
            ..Limits::default()
        };
        Protocol {
            rng: SmallRng::seed_from_u64(cfg.rng_seed),
            next_round_ms: now_ms,
            next_gc_ms: now_ms + gc_interval(cfg.tombstone_retention_ms),
            cfg,
            store,
            limits,
            peers: HashMap::new(),
            rotate: 0,
            resync: None,
            skew_reported_ms: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            budget,
        }
    }

    /// Bytes available for the body of one datagram (packet size less the envelope).
    pub fn body_budget(&self) -> usize {
        self.budget
    }

    /// The store being replicated.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.cfg.node_id
    }

    /// The peers heard from so far: node id and the address last heard from.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut v: Vec<_> = self
            .peers
            .iter()
            .map(|(n, p)| (n.clone(), p.addr))
            .collect();
        v.sort();
        v
    }

    /// Replaces the seed addresses (for example after resolving host names again).
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.cfg.seeds = seeds;
    }

    /// When [`Protocol::handle_timeout`] should next be called (ms since the epoch).
    pub fn poll_timeout(&self) -> u64 {
        self.next_round_ms.min(self.next_gc_ms)
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Runs whatever is due at `now_ms`: a gossip round, tombstone collection.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms >= self.next_gc_ms {
            self.next_gc_ms = now_ms + gc_interval(self.cfg.tombstone_retention_ms);
            let gc = self
                .store
                .collect_garbage(now_ms, self.cfg.tombstone_retention_ms);
            self.stats.tombstones_collected += gc.tombstones as u64;
            if gc.tombstones + gc.ghosts > 0 {
                debug!(
                    tombstones = gc.tombstones,
                    ghosts = gc.ghosts,
                    "collected garbage"
                );
            }
        }
        if now_ms >= self.next_round_ms {
            self.next_round_ms = now_ms + self.cfg.gossip_interval_ms.max(1);
            self.round(now_ms);
        }
    }

    fn round(&mut self, _now_ms: u64) {
        self.stats.rounds += 1;
        let targets = self.pick_targets();
        if targets.is_empty() {
            return;
        }
        let digest = self.digest_for_syn();
        for to in targets {
            let resync_from = match &self.resync {
                Some(r) if self.peers.get(&r.from).is_some_and(|p| p.addr == to) => {
                    Some(r.cursor.clone())
                }
                _ => None,
            };
            let syn = Syn {
                digest: digest.clone(),
                resync_from,
            };
            self.send(to, Body::Syn(syn));
        }
    }

    fn pick_targets(&mut self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        peers.sort();
        peers.shuffle(&mut self.rng);
        let mut targets: Vec<SocketAddr> = peers.into_iter().take(self.cfg.fanout.max(1)).collect();
        if let Some(r) = &self.resync {
            if let Some(p) = self.peers.get(&r.from) {
                if !targets.contains(&p.addr) {
                    targets.pop();
                    targets.push(p.addr);
                }
            }
        }
        // Seeds nobody answered from yet: keep trying one per round, or all of
        // them while we know no peer at all.
        let own = self.cfg.advertise_addr;
        let mut unknown: Vec<SocketAddr> = self
            .cfg
            .seeds
            .iter()
            .copied()
            .filter(|s| Some(*s) != own && !self.peers.values().any(|p| p.addr == *s))
            .collect();
        if self.peers.is_empty() {
            targets.append(&mut unknown);
        } else if !unknown.is_empty() {
            let i = self.rng.random_range(0..unknown.len());
            targets.push(unknown[i]);
        }
        targets.dedup();
        targets
    }

    /// Our digest, or a rotating part of it when the whole does not fit half a packet.
    fn digest_for_syn(&mut self) -> Digest {
        let digest = self.store.digest();
        self.fit_digest(digest, self.budget / 2)
    }

    fn fit_digest(&mut self, digest: Digest, max: usize) -> Digest {
        let rotate = self.rotate;
        self.rotate = self.rotate.wrapping_add(1);
        digest.window(max, rotate)
    }

    /// Handles one datagram received from `from` at `now_ms`.
    pub fn handle_datagram(&mut self, now_ms: u64, from: SocketAddr, bytes: &[u8]) {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let env = match decode(bytes, &self.limits) {
            Ok(env) => env,
            Err(error) => {
                self.stats.decode_errors += 1;
                debug!(%from, %error, "dropping undecodable datagram");
                self.events
                    .push_back(Event::Error(NetworkError::Decode { from, error }));
                return;
            }
        };
        if env.cluster_id != self.cfg.cluster_id {
            self.stats.foreign_cluster += 1;
            debug!(%from, cluster = %env.cluster_id, "dropping datagram of another cluster");
            self.events
                .push_back(Event::Error(NetworkError::ForeignCluster {
                    from,
                    cluster_id: env.cluster_id,
                }));
            return;
        }
        let sender = env.sender;
        if sender.node_id == self.cfg.node_id {
            if sender.generation != self.cfg.generation {
                self.stats.duplicate_node_id += 1;
                self.events
                    .push_back(Event::Error(NetworkError::DuplicateNodeId {
                        from,
                        node_id: sender.node_id.to_string(),
                        generation: sender.generation,
                    }));
            }
            return;
        }
        self.observe_peer(&sender, from, now_ms);
        match env.body {
            Body::Syn(syn) => self.on_syn(now_ms, from, syn),
            Body::SynAck(ack) => self.on_syn_ack(now_ms, from, &sender, ack),
            Body::Ack(ack) => self.apply_delta(now_ms, from, &ack.delta),
        }
    }

    fn observe_peer(&mut self, sender: &Sender, from: SocketAddr, now_ms: u64) {
        match self.peers.get_mut(&sender.node_id) {
            Some(p) if p.addr == from && p.generation == sender.generation => {
                p.last_seen_ms = now_ms;
            }
            _ => {
                debug!(peer = %sender.node_id, %from, generation = sender.generation, "peer discovered");
                self.peers.insert(
                    sender.node_id.clone(),
                    Peer {
                        addr: from,
                        generation: sender.generation,
                        last_seen_ms: now_ms,
                    },
                );
                self.events.push_back(Event::PeerDiscovered {
                    node_id: sender.node_id.clone(),
                    addr: from,
                });
            }
        }
    }

    fn on_syn(&mut self, _now_ms: u64, from: SocketAddr, syn: Syn) {
        let mine = self.store.digest();
        let mine = self.fit_digest(mine, self.budget / 2);
        let room = self.budget.saturating_sub(mine.size_hint());
        let reply = if syn.resync_from.is_some() || self.store.needs_resync(&syn.digest) {
            let start = syn.resync_from.unwrap_or_default();
            let page = self.store.page(&start, room);
            trace!(%from, start = %page.start, records = page.records.len(), "sending resync page");
            Reply::Page(page)
        } else {
            let delta = self.delta_for(&syn.digest, room);
            Reply::Delta(delta)
        };
        self.send(
            from,
            Body::SynAck(SynAck {
                digest: mine,
                reply,
            }),
        );
    }

    fn on_syn_ack(&mut self, now_ms: u64, from: SocketAddr, sender: &Sender, ack: SynAck) {
        match &ack.reply {
            Reply::Delta(delta) => self.apply_delta(now_ms, from, delta),
            Reply::Page(page) => {
                let stats = self.store.apply_page(page);
                self.stats.pages_applied += 1;
                self.stats.records_won += stats.won as u64;
                self.stats.records_lost += stats.lost as u64;
                let continues = matches!(&self.resync, Some(r) if r.from == sender.node_id && r.cursor == page.start);
                if page.start.is_empty() {
                    self.resync = Some(Resync {
                        from: sender.node_id.clone(),
                        cursor: String::new(),
                        watermarks: page.watermarks.clone(),
                    });
                } else if !continues {
                    // A page out of sequence: its records were merged safely, but it
                    // does not count towards completing a re-synchronisation.
                    return self.answer_ack(from, &ack.digest);
                }
                match &page.end {
                    Some(end) => {
                        if let Some(r) = &mut self.resync {
                            r.cursor = end.clone();
                        }
                    }
                    None => {
                        if let Some(r) = self.resync.take() {
                            let raised = self.store.raise_watermarks(&r.watermarks);
                            self.stats.resyncs_completed += 1;
                            debug!(peer = %r.from, raised, "re-synchronisation complete");
                        }
                    }
                }
            }
        }
        self.answer_ack(from, &ack.digest);
    }

    fn answer_ack(&mut self, to: SocketAddr, peer_digest: &Digest) {
        if self.store.needs_resync(peer_digest) {
            // The peer gets pages when it asks with its own Syn.
            return;
        }
        let delta = self.delta_for(peer_digest, self.budget);
        if !delta.is_empty() {
            self.send(to, Body::Ack(Ack { delta }));
        }
    }

    fn delta_for(&mut self, peer: &Digest, budget: usize) -> Delta {
        let rotate = self.rng.random::<u32>() as usize;
        self.store.delta_for(peer, budget, rotate)
    }

    fn apply_delta(&mut self, now_ms: u64, from: SocketAddr, delta: &Delta) {
        if delta.is_empty() {
            return;
        }
        let horizon = now_ms.saturating_add(CLOCK_SKEW_REPORT_MS);
        for chunk in &delta.chunks {
            if let Some(ahead) = chunk
                .records
                .iter()
                .map(|r| r.version.hlc.physical_ms())
                .filter(|&t| t > horizon)
                .max()
            {
                let node = &chunk.origin.node;
                let last = self.skew_reported_ms.get(node).copied();
                if last.is_none_or(|t| now_ms >= t + 60_000) {
                    self.skew_reported_ms.insert(node.clone(), now_ms);
                    let skew_ms = ahead - now_ms;
                    warn!(node = %node, skew_ms, "clock skew: records ahead of local clock");
                    self.events.push_back(Event::Error(NetworkError::ClockSkew {
                        from,
                        node_id: node.to_string(),
                        skew_ms,
                    }));
                }
            }
        }
        let stats = self.store.apply(delta);
        self.stats.records_won += stats.won as u64;
        self.stats.records_lost += stats.lost as u64;
        if stats.won > 0 {
            trace!(%from, won = stats.won, lost = stats.lost, "applied delta");
        }
    }

    fn send(&mut self, to: SocketAddr, body: Body) {
        let env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: Sender {
                node_id: self.cfg.node_id.clone(),
                generation: self.cfg.generation,
                addr: self.cfg.advertise_addr,
            },
            body,
        };
        let payload = encode(&env);
        if payload.len() > self.cfg.packet_size {
            self.stats.oversized_dropped += 1;
            warn!(
                len = payload.len(),
                max = self.cfg.packet_size,
                "encoded datagram exceeds the packet size; not sent"
            );
            return;
        }
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        self.transmits.push_back(Transmit { to, payload });
    }
}

/// How often tombstones are collected: a tenth of the retention, between 1 s and 1 min.
fn gc_interval(retention_ms: u64) -> u64 {
    (retention_ms / 10).clamp(1_000, 60_000)
}
