//! The gossip protocol as a sans-IO state machine.
//!
//! [`Protocol`] never touches a socket, a clock or a global random number
//! generator. Its driver (the tokio task behind [`GossipKv`](crate::GossipKv),
//! or the simulator) follows one contract:
//!
//! * feed every datagram received with [`Protocol::handle_datagram`], and
//!   every record the local store wrote with [`Protocol::push_local`] (in
//!   batches when writes come in bursts);
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
//! far behind); we answer `Ack` with the delta it lacks. When both digests are
//! equal the peer answers in a short form and no `Ack` follows; a node whose
//! digest did not change during the last round sends only its fingerprint,
//! and asks again in full when the answer shows the peer is ahead. Fresh writes
//! are also pushed at once (`Push`), and forwarded by the peers to whom they
//! were new. Peers are known by node id; a node that hears from an unknown
//! peer adds it, so seed lists may be asymmetric.
//!
//! The round's first Syn goes to the next member of a shuffled round-robin
//! order and doubles as a failure-detection probe: its answer is the
//! acknowledgement (SWIM). While the cluster is quiet (digest unchanged, no
//! membership rumors, no re-synchronisation) that is the only Syn of the
//! round; otherwise `fanout - 1` random peers get one too. A probe left
//! unanswered for half an interval makes the target doubted (see
//! `membership`) and is retried through a few other members (`Probe`
//! requests, whose answers vouch for the target).
//! Every header carries the sender's incarnation and member-list fingerprint;
//! membership rumors and, between nodes whose fingerprints differ, member
//! samples ride on the datagrams.
//!
//! A simulator may hand every instance a [`Directory`] of all nodes
//! ([`ProtocolConfig::directory`]): peers are then drawn from it, and
//! membership is neither probed nor gossiped.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_proto::{
    decode, decode_reassembled, encode, encoded_len, envelope_overhead, fragment_piece,
    push_record_len, Ack, Body, Envelope, Fragment, Limits, MemberSync, Probe, Push, Reply, Sender,
    Syn, SynAck, FRAGMENT_OVERHEAD, PROTOCOL_VERSION,
};
use gossipkv_storage::{Delta, DeltaOptions, Digest, NodeId, Origin, Page, Record, Store, Version};
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use tracing::{debug, info, trace, warn};

use crate::error::NetworkError;
use crate::membership::{DetectorConfig, Member, MemberEvent, MemberState, Membership};
use crate::reassembly::{message_id, Outcome, Reassembly};

/// Most (member, origin) watermarks a node keeps for collecting superseded
/// writes early (about 16 MB at most; 512 writers seen by 512 members).
const PEER_MARKS_MAX: usize = 1 << 18;

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
    /// Failure detector tuning.
    pub detector: DetectorConfig,
    /// Push fresh writes to a few peers at once (eager dissemination), in
    /// addition to periodic anti-entropy.
    pub push: bool,
    /// Largest value replicated, in bytes. Values too large for a datagram
    /// travel apart from deltas, as envelopes cut into fragments.
    pub max_value_size: usize,
    /// `None` for a real node. A simulation aid otherwise: gossip and push
    /// peers are drawn from this fixed list of every node instead of the
    /// member table, and membership is neither kept, probed nor gossiped
    /// (the table stays empty, headers carry no member-list fingerprint,
    /// datagrams no member entries). The cluster is taken as formed and
    /// healthy. This lets a simulator run
    /// clusters too large for every simulated node to hold a full member
    /// table, and measure dissemination alone.
    pub directory: Option<Arc<Directory>>,
}

/// A fixed list of every node's address, drawn from uniformly at random (see
/// [`ProtocolConfig::directory`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    addrs: Vec<SocketAddr>,
}

impl Directory {
    /// A directory of these addresses (duplicates are dropped).
    pub fn new(mut addrs: Vec<SocketAddr>) -> Self {
        addrs.sort_unstable();
        addrs.dedup();
        Directory { addrs }
    }

    /// Whether `addr` is listed.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.addrs.binary_search(addr).is_ok()
    }

    /// Number of addresses listed.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether no address is listed.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Up to `n` distinct listed addresses, none of them in `skip`, drawn
    /// uniformly at random. The cost depends on `n` and `skip.len()` only,
    /// not on the length of the list.
    pub fn sample(&self, rng: &mut impl Rng, n: usize, skip: &[SocketAddr]) -> Vec<SocketAddr> {
        let amount = (n + skip.len()).min(self.addrs.len());
        rand::seq::index::sample(rng, self.addrs.len(), amount)
            .into_iter()
            .map(|i| self.addrs[i])
            .filter(|a| !skip.contains(a))
            .take(n)
            .collect()
    }
}

/// Where the pushes of one batch of records go (see `Protocol::push_records`).
enum PushPeers {
    /// Live members, shuffled for each batch.
    Members(Vec<SocketAddr>),
    /// Drawn from the directory, but these addresses.
    Drawn(Arc<Directory>, Vec<SocketAddr>),
}

impl PushPeers {
    fn is_empty(&self) -> bool {
        match self {
            PushPeers::Members(live) => live.is_empty(),
            // `skip` holds distinct listed addresses only.
            PushPeers::Drawn(dir, skip) => dir.len() <= skip.len(),
        }
    }

    /// Up to `n` of them, at random.
    fn draw(&mut self, rng: &mut SmallRng, n: usize) -> Vec<SocketAddr> {
        match self {
            PushPeers::Members(live) => {
                live.shuffle(rng);
                live.iter().take(n).copied().collect()
            }
            PushPeers::Drawn(dir, skip) => dir.sample(rng, n, skip),
        }
    }
}

/// Something the driver should know about.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A problem to report through the error handler.
    Error(NetworkError),
    /// Membership changed.
    Member(MemberEvent),
}

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Encoded envelope (or fragment of one), at most `packet_size` bytes.
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
    /// Index entries of superseded writes collected once every live member
    /// had passed them (before the tombstone retention).
    pub superseded_collected: u64,
    /// Datagrams not sent because they came out larger than the packet size (a bug if ever non-zero).
    pub oversized_dropped: u64,
    /// Push datagrams sent (fresh writes and forwards).
    pub pushes_sent: u64,
    /// Pushed records that were new here.
    pub pushed_records_won: u64,
    /// Syns answered in the short form because both digests were equal.
    pub short_replies: u64,
    /// Syns sent (gossip rounds and suspect probes).
    pub syns_sent: u64,
    /// Syns received.
    pub syns_received: u64,
    /// Syns sent in the hash-only form (our digest had not changed).
    pub hash_only_syns_sent: u64,
    /// Full Syns sent after a hash-only exchange showed the peer has writes we lack.
    pub pulls_sent: u64,
    /// Records too large to travel inline that were sent apart (fragmented).
    pub large_records_sent: u64,
    /// Fragment datagrams sent.
    pub fragments_sent: u64,
    /// Fragment datagrams received.
    pub fragments_received: u64,
    /// Fragmented envelopes put back together.
    pub messages_reassembled: u64,
    /// Fragmented envelopes dropped unfinished (pieces lost; anti-entropy
    /// sends them again).
    pub reassemblies_dropped: u64,
    /// Requests sent to other members to probe a member that did not answer.
    pub probe_requests_sent: u64,
    /// Members probed on behalf of other members.
    pub probes_relayed: u64,
    /// Rumors of our own suspicion or death refuted.
    pub refutations: u64,
    /// Member-list reconciliation messages sent.
    pub member_syncs_sent: u64,
    /// Member entries (rumors, samples, reconciliation) sent in datagrams.
    pub member_entries_sent: u64,
}

/// Progress of a re-synchronisation we receive from one peer.
#[derive(Debug, Clone)]
struct Resync {
    from: NodeId,
    /// The address its pages come from.
    addr: SocketAddr,
    cursor: String,
    /// The sender's watermarks from the first page: what we may raise ours to
    /// once every page has been applied.
    watermarks: Digest,
    /// When the last page of this re-synchronisation arrived.
    progress_ms: u64,
}

/// The gossip protocol state machine; see the [module docs](self).
#[derive(Debug)]
pub struct Protocol {
    cfg: ProtocolConfig,
    store: Arc<Store>,
    limits: Limits,
    rng: SmallRng,
    membership: Membership,
    /// Our incarnation: raised to refute rumors of our suspicion or death.
    incarnation: u64,
    left: bool,
    /// Members probed (sent a Syn) and not heard from since: when, and
    /// whether others were asked to probe them too.
    awaiting: HashMap<NodeId, (u64, bool)>,
    /// The round-robin probe order (shuffled again once used up).
    probe_order: Vec<NodeId>,
    /// Members we probe on behalf of others: who asked, until when.
    relays: HashMap<NodeId, Vec<(SocketAddr, u64)>>,
    /// The time of the latest input (ms since the epoch).
    now_ms: u64,
    /// Until when rounds send whole digests (not quiet): set after a
    /// re-synchronisation completes and when a peer answers a hash-only Syn
    /// with a different digest.
    whole_digests_until_ms: u64,
    discovered: Vec<SocketAddr>,
    next_round_ms: u64,
    next_check_ms: u64,
    next_gc_ms: u64,
    rotate: usize,
    resync: Option<Resync>,
    skew_reported_ms: HashMap<NodeId, u64>,
    /// Per member: its generation and the highest watermark per origin its
    /// digests showed (see `collect_superseded`).
    peer_marks: HashMap<NodeId, (u64, HashMap<Origin, u64>)>,
    /// Pairs in `peer_marks`, and how many it may hold.
    peer_marks_len: usize,
    peer_marks_max: usize,
    probed_ms: HashMap<NodeId, u64>,
    transmits: VecDeque<Transmit>,
    /// Envelopes being cut into fragments, one datagram at a time, after
    /// everything in `transmits`.
    fragmenting: VecDeque<FragmentJob>,
    /// Large-value envelopes not cut into fragments yet.
    large_jobs: VecDeque<(SocketAddr, Envelope)>,
    events: VecDeque<Event>,
    stats: Stats,
    budget: usize,
    member_budget: usize,
    /// Values longer than this travel apart from deltas and pushes.
    inline_max: usize,
    /// Length of the pieces fragmented envelopes are cut into: the same on
    /// every node of the cluster (it assumes the longest node id and address).
    piece_len: usize,
    reassembly: Reassembly,
    /// Whether our digest did not change during the last round (Syns are
    /// then hash-only while it stays the same).
    quiet: bool,
    last_fingerprint: Option<u64>,
    /// Peers sent a hash-only Syn this round, not answered yet.
    hash_only_to: std::collections::HashSet<SocketAddr>,
    /// Per origin, recent pushes: (time slot start, lowest seq in the slot).
    pushed: HashMap<Origin, VecDeque<(u64, u64)>>,
    /// When a large record (origin, generation, seq) was last sent to a peer.
    large_sent: HashMap<(SocketAddr, NodeId, u64, u64), u64>,
}

/// Longest text form of a socket address ("[v6%scope]:port"), as assumed
/// when cutting fragments.
const MAX_ADDR_TEXT: usize = 64;

/// Room kept, beyond the longest value, for the rest of a fragmented envelope
/// (key, version, header).
pub const MESSAGE_SLACK: usize = 64 << 10;

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

/// Largest number of peers a writer pushes a fresh write to directly.
///
/// Reaching every node directly costs n − 1 datagrams per burst of writes and
/// delivers each write once; rumor mongering needs about n · ln n datagrams to
/// reach every node with high probability, so direct pushes are the cheaper
/// way up to this size, and the fastest.
pub const PUSH_DIRECT_MAX: usize = 128;

/// Share of a datagram always reserved for member entries (one part in
/// ten); a datagram whose body leaves more room may carry more.
const MEMBER_SHARE: usize = 10;

impl Protocol {
    /// A protocol instance replicating `store`, starting at `now_ms`.
    /// The first round starts at once.
    pub fn new(cfg: ProtocolConfig, store: Arc<Store>, now_ms: u64) -> Self {
        let addr_len = cfg.advertise_addr.map_or(0, |a| a.to_string().len());
        let overhead =
            envelope_overhead(cfg.cluster_id.len(), cfg.node_id.as_str().len(), addr_len);
        let member_budget = cfg.packet_size / MEMBER_SHARE;
        let budget = cfg.packet_size.saturating_sub(overhead + member_budget);
        let max_message = cfg.max_value_size.saturating_add(MESSAGE_SLACK);
        let piece_len = cfg
            .packet_size
            .saturating_sub(
                envelope_overhead(cfg.cluster_id.len(), crate::MAX_NODE_ID_LEN, MAX_ADDR_TEXT)
                    + FRAGMENT_OVERHEAD,
            )
            .max(1);
        let limits = Limits {
            max_value_len: cfg.max_value_size,
            max_message,
            ..Limits::default()
        };
        // Room for two whole messages (one may be replaced by its retry).
        let reassembly = Reassembly::new(
            max_message.saturating_mul(4),
            32,
            (20 * cfg.gossip_interval_ms).max(2_000),
        );
        let membership = Membership::new(
            cfg.node_id.clone(),
            cfg.generation,
            cfg.gossip_interval_ms,
            cfg.detector.clone(),
        );
        Protocol {
            rng: SmallRng::seed_from_u64(cfg.rng_seed),
            membership,
            incarnation: 0,
            left: false,
            awaiting: HashMap::new(),
            probe_order: Vec::new(),
            relays: HashMap::new(),
            now_ms,
            whole_digests_until_ms: 0,
            discovered: Vec::new(),
            next_round_ms: now_ms,
            next_check_ms: now_ms,
            next_gc_ms: now_ms + gc_interval(cfg.tombstone_retention_ms),
            cfg,
            store,
            limits,
            rotate: 0,
            resync: None,
            skew_reported_ms: HashMap::new(),
            peer_marks: HashMap::new(),
            peer_marks_len: 0,
            peer_marks_max: PEER_MARKS_MAX,
            probed_ms: HashMap::new(),
            transmits: VecDeque::new(),
            fragmenting: VecDeque::new(),
            large_jobs: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            budget,
            member_budget,
            inline_max: budget / 4,
            piece_len,
            reassembly,
            large_sent: HashMap::new(),
            pushed: HashMap::new(),
            quiet: false,
            last_fingerprint: None,
            hash_only_to: std::collections::HashSet::new(),
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
    /// The members that are alive or suspect: node id and address.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        self.membership
            .in_states(&[MemberState::Alive, MemberState::Suspect])
            .into_iter()
            .map(|m| (m.node_id, m.addr))
            .collect()
    }

    /// Every member known, the local node first (always alive, or left once
    /// [`Protocol::leave`] was called).
    pub fn members(&self) -> Vec<Member> {
        let me = Member {
            node_id: self.cfg.node_id.clone(),
            addr: self
                .cfg
                .advertise_addr
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            state: if self.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            generation: self.cfg.generation,
            incarnation: self.incarnation,
        };
        let mut v = vec![me];
        v.extend(self.membership.all());
        v
    }

    /// Replaces the addresses found by discovery (mDNS); they are contacted like seeds.
    pub fn set_discovered(&mut self, addrs: Vec<SocketAddr>) {
        self.discovered = addrs;
    }

    /// Announces that this node leaves: queues a `Leave` to every member that
    /// is alive or suspect (twice, against loss). Afterwards the node sends
    /// nothing more of its own accord.
    pub fn leave(&mut self) {
        if self.left {
            return;
        }
        self.left = true;
        let targets: Vec<SocketAddr> = self
            .membership
            .in_states(&[MemberState::Alive, MemberState::Suspect])
            .into_iter()
            .map(|m| m.addr)
            .collect();
        debug!(members = targets.len(), "announcing departure");
        for _ in 0..2 {
            for &to in &targets {
                self.send(to, Body::Leave);
            }
        }
    }

    /// Replaces the seed addresses (for example after resolving host names again).
    pub fn set_seeds(&mut self, seeds: Vec<SocketAddr>) {
        self.cfg.seeds = seeds;
    }

    /// When [`Protocol::handle_timeout`] should next be called (ms since the epoch).
    pub fn poll_timeout(&self) -> u64 {
        self.next_round_ms
            .min(self.next_gc_ms)
            .min(self.next_check_ms)
    }

    /// The next datagram to send, if any. Fragments of large values come
    /// after every other datagram queued, so that they never delay a small
    /// write or an exchange: a driver that sends a few at a time and feeds
    /// new input in between keeps small messages fast.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        loop {
            if let Some(t) = self.transmits.pop_front() {
                return Some(t);
            }
            if !self.fragmenting.is_empty() {
                if let Some(t) = self.next_fragment() {
                    return Some(t);
                }
                continue;
            }
            let (to, env) = self.large_jobs.pop_front()?;
            self.send_envelope(to, env);
        }
    }

    /// Whether datagrams other than fragments of large values are waiting
    /// to be sent. A driver sends those at once, and paces fragments (see
    /// `drive` in the facade), so that a receiver's socket never holds a long
    /// queue of fragments ahead of a small write.
    pub fn has_urgent_transmits(&self) -> bool {
        !self.transmits.is_empty()
    }

    /// Whether datagrams are waiting to be sent.
    pub fn has_transmits(&self) -> bool {
        !(self.transmits.is_empty() && self.fragmenting.is_empty() && self.large_jobs.is_empty())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.membership.poll_event() {
            log_member_event(&e);
            return Some(Event::Member(e));
        }
        self.events.pop_front()
    }

    /// Runs whatever is due at `now_ms`: a gossip round, tombstone collection.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if self.left {
            self.next_round_ms = u64::MAX;
            self.next_gc_ms = u64::MAX;
            self.next_check_ms = u64::MAX;
            return;
        }
        if now_ms >= self.next_check_ms {
            self.next_check_ms = now_ms + (self.cfg.gossip_interval_ms / 4).max(1);
            self.check_probes(now_ms);
            self.membership.check(now_ms);
            self.probe_suspects(now_ms);
            if self.reassembly.expire(now_ms) > 0 {
                debug!("dropped unfinished fragmented envelopes");
            }
            self.stats.reassemblies_dropped = self.reassembly.dropped;
            let resend = self.large_resend_ms();
            self.large_sent
                .retain(|_, t| now_ms.saturating_sub(*t) < resend);
        }
        if now_ms >= self.next_gc_ms {
            self.next_gc_ms = now_ms + gc_interval(self.cfg.tombstone_retention_ms);
            let gc = self
                .store
                .collect_garbage(now_ms, self.cfg.tombstone_retention_ms);
            self.stats.tombstones_collected += gc.tombstones as u64;
            self.collect_superseded();
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
    /// Probes left unanswered: after the probe timeout the target is doubted
    /// (see `membership`) and a few other live members are asked to probe it
    /// too; a probe is forgotten after an interval. Also drops relay
    /// requests past their deadline.
    fn check_probes(&mut self, now_ms: u64) {
        let timeout = self.cfg.detector.probe_timeout_ms;
        let period = self.cfg.gossip_interval_ms.max(1);
        let mut ask = Vec::new();
        let mut expired = Vec::new();
        for (node, (sent, helped)) in self.awaiting.iter_mut() {
            let waited = now_ms.saturating_sub(*sent);
            if waited >= timeout && !*helped {
                *helped = true;
                ask.push(node.clone());
            }
            if waited >= period {
                expired.push(node.clone());
            }
        }
        for node in expired {
            self.awaiting.remove(&node);
        }
        ask.sort_unstable();
        for node in &ask {
            self.membership.doubt(node, now_ms);
        }
        for node in ask {
            let Some(target) = self.membership.entry_of(&node) else {
                continue;
            };
            let helpers: Vec<SocketAddr> = self
                .membership
                .in_states(&[MemberState::Alive])
                .into_iter()
                .filter(|m| m.node_id != node)
                .map(|m| m.addr)
                .collect::<Vec<_>>()
                .choose_multiple(&mut self.rng, self.cfg.detector.indirect_probes)
                .copied()
                .collect();
            for to in helpers {
                self.stats.probe_requests_sent += 1;
                self.send(
                    to,
                    Body::Probe(Probe {
                        target: target.clone(),
                        request: true,
                    }),
                );
            }
        }
        self.relays.retain(|_, asks| {
            asks.retain(|&(_, until)| until > now_ms);
            !asks.is_empty()
        });
    }

    /// Contacts doubted and suspected members directly, up to twice per
    /// interval each, so that a member that is alive but unlucky with loss
    /// answers before it is suspected, or declared dead (and learns that it
    /// is suspected, so that it refutes).
    fn probe_suspects(&mut self, now_ms: u64) {
        let suspects = self.membership.to_probe();
        if suspects.is_empty() {
            self.probed_ms.clear();
            return;
        }
        let gap = (self.cfg.gossip_interval_ms / 2).max(1);
        self.probed_ms
            .retain(|n, _| suspects.iter().any(|m| &m.node_id == n));
        let mut syn = None;
        for m in suspects {
            if self
                .probed_ms
                .get(&m.node_id)
                .is_some_and(|&t| now_ms < t + gap)
            {
                continue;
            }
            self.probed_ms.insert(m.node_id.clone(), now_ms);
            self.awaiting
                .entry(m.node_id.clone())
                .or_insert((now_ms, false));
            let s = match &syn {
                Some(s) => Clone::clone(s),
                None => {
                    let digest = self.store.digest();
                    let s = self.make_syn(&digest, None);
                    syn = Some(s.clone());
                    s
                }
            };
            self.send_syn(m.addr, s);
        }
    }

    /// A Syn: hash-only when our digest did not change during the last round
    /// and is still the same, otherwise our digest (or a window of it).
    fn make_syn(&mut self, digest: &Digest, resync_from: Option<String>) -> Syn {
        let fingerprint = digest.fingerprint();
        if resync_from.is_none() && self.quiet && self.last_fingerprint == Some(fingerprint) {
            return Syn {
                digest: Digest::default(),
                resync_from: None,
                digest_hash: Some(fingerprint),
            };
        }
        // Asking for a later page of a re-synchronisation: our watermarks
        // for exactly the origins the first page listed, so that the sender
        // lists the same ones on every page and the pass raises them all.
        if let (Some(_), Some(r)) = (&resync_from, &self.resync) {
            if !r.watermarks.complete {
                return Syn {
                    digest: restrict(digest, &r.watermarks),
                    resync_from,
                    digest_hash: None,
                };
            }
        }
        Syn {
            digest: self.fit_digest(digest.clone(), self.budget / 2),
            resync_from,
            digest_hash: None,
        }
    }

    fn send_syn(&mut self, to: SocketAddr, mut syn: Syn) {
        // Any Syn to the peer re-synchronising us asks for the next page: a
        // plain one (a probe, a pull) would be answered with the first page
        // again and restart the re-synchronisation.
        if syn.resync_from.is_none() {
            if let Some(cursor) = self.resync_cursor_for(to) {
                let digest = self.store.digest();
                syn = self.make_syn(&digest, Some(cursor));
            }
        }
        self.stats.syns_sent += 1;
        if syn.digest_hash.is_some() {
            self.stats.hash_only_syns_sent += 1;
            self.hash_only_to.insert(to);
        }
        self.send(to, Body::Syn(syn));
    }

    fn round(&mut self, now_ms: u64) {
        self.stats.rounds += 1;
        let digest = self.store.digest();
        let fingerprint = digest.fingerprint();
        // Just after a re-synchronisation we may still be behind in origins
        // its pages did not vouch for, and after a peer answered with a
        // different digest we are not in step: keep sending whole digests
        // (windows of them, rotating) to `fanout` peers for a few rounds, so
        // that a peer notices what we lack.
        self.quiet =
            self.last_fingerprint == Some(fingerprint) && now_ms >= self.whole_digests_until_ms;
        self.last_fingerprint = Some(fingerprint);
        let targets = self.pick_targets(now_ms);
        if targets.is_empty() {
            return;
        }
        // Answers to last round's hash-only Syns that never came are forgotten.
        self.hash_only_to.clear();
        for to in targets {
            let resync_from = self.resync_cursor_for(to);
            let syn = self.make_syn(&digest, resync_from);
            self.send_syn(to, syn);
        }
    }
    /// The next member to probe in the shuffled round-robin order.
    fn next_probe(&mut self) -> Option<Member> {
        for _ in 0..2 {
            while let Some(node) = self.probe_order.pop() {
                if let Some(m) = self.membership.get(&node) {
                    if matches!(m.state, MemberState::Alive | MemberState::Suspect) {
                        return Some(m);
                    }
                }
            }
            self.probe_order = self
                .membership
                .in_states(&[MemberState::Alive, MemberState::Suspect])
                .into_iter()
                .map(|m| m.node_id)
                .collect();
            self.probe_order.shuffle(&mut self.rng);
        }
        None
    }

    /// This round's Syn targets: the next member to probe, `fanout - 1`
    /// random live members too unless the cluster is quiet, a dead member
    /// now and then, and seeds nobody answered from yet.
    fn pick_targets(&mut self, now_ms: u64) -> Vec<SocketAddr> {
        if let Some(dir) = self.cfg.directory.clone() {
            return self.pick_from_directory(&dir);
        }
        let mut targets: Vec<SocketAddr> = Vec::new();
        // The probe order holds every live member: none means none is live.
        let no_live = match self.next_probe() {
            Some(m) => {
                targets.push(m.addr);
                self.awaiting.entry(m.node_id).or_insert((now_ms, false));
                false
            }
            None => true,
        };
        let quiet = self.quiet && self.resync.is_none() && !self.membership.unsettled(now_ms);
        if !quiet {
            let mut peers: Vec<SocketAddr> = self
                .membership
                .in_states(&[MemberState::Alive, MemberState::Suspect])
                .iter()
                .map(|m| m.addr)
                .filter(|a| !targets.contains(a))
                .collect();
            peers.shuffle(&mut self.rng);
            targets.extend(peers.into_iter().take(self.cfg.fanout.max(1) - 1));
        }
        self.add_resync_peer(&mut targets);
        // Dead members are contacted now and then, so that a healed
        // partition finds itself again.
        let dead = self.membership.in_states(&[MemberState::Dead]);
        if !dead.is_empty() && self.rng.random_bool(0.25) {
            targets.push(dead[self.rng.random_range(0..dead.len())].addr);
        }
        // Seeds and discovered addresses nobody answered from yet: keep trying
        // one per round, or all of them while we know no live member at all.
        let own = self.cfg.advertise_addr;
        let mut unknown: Vec<SocketAddr> = self
            .cfg
            .seeds
            .iter()
            .chain(self.discovered.iter())
            .copied()
            .filter(|s| Some(*s) != own && !self.membership.is_live_addr(*s))
            .collect();
        unknown.sort();
        unknown.dedup();
        if no_live {
            targets.append(&mut unknown);
        } else if !unknown.is_empty() {
            let i = self.rng.random_range(0..unknown.len());
            targets.push(unknown[i]);
        }
        targets.sort();
        targets.dedup();
        targets
    }

    /// This round's Syn targets with a [`Directory`]: one random node while
    /// the cluster is quiet, `fanout` otherwise; no probes.
    fn pick_from_directory(&mut self, dir: &Directory) -> Vec<SocketAddr> {
        let quiet = self.quiet && self.resync.is_none();
        let n = if quiet { 1 } else { self.cfg.fanout.max(1) };
        let own: Vec<SocketAddr> = self.cfg.advertise_addr.into_iter().collect();
        let mut targets = dir.sample(&mut self.rng, n, &own);
        self.add_resync_peer(&mut targets);
        targets.sort();
        targets.dedup();
        targets
    }

    /// Makes sure the peer re-synchronising us gets a Syn this round (in
    /// place of the last random target when there are several).
    fn add_resync_peer(&self, targets: &mut Vec<SocketAddr>) {
        let Some(addr) = self.resync_addr() else {
            return;
        };
        if !targets.contains(&addr) {
            if targets.len() > 1 {
                targets.pop();
            }
            targets.push(addr);
        }
    }

    /// The page to ask `to` for, if it is the peer re-synchronising us.
    fn resync_cursor_for(&self, to: SocketAddr) -> Option<String> {
        let r = self.resync.as_ref()?;
        (self.resync_addr() == Some(to)).then(|| r.cursor.clone())
    }

    /// Where the peer re-synchronising us is: its member entry's address
    /// while it is a member, or, with a [`Directory`] (no member table), the
    /// address its pages came from.
    fn resync_addr(&self) -> Option<SocketAddr> {
        let r = self.resync.as_ref()?;
        if self.cfg.directory.is_some() {
            return Some(r.addr);
        }
        self.membership.get(&r.from).map(|p| p.addr)
    }

    fn fit_digest(&mut self, digest: Digest, max: usize) -> Digest {
        let rotate = self.rotate;
        self.rotate = self.rotate.wrapping_add(1);
        digest.window(max, rotate)
    }

    /// Handles one datagram received from `from` at `now_ms`.
    pub fn handle_datagram(&mut self, now_ms: u64, from: SocketAddr, bytes: &[u8]) {
        self.now_ms = now_ms;
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let env = match decode(bytes, &self.limits) {
            Ok(env) => env,
            Err(error) => {
                self.reject(from, error);
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
        self.handle_envelope(now_ms, from, env, false);
    }

    /// Handles a decoded envelope of our cluster (`inner`: reassembled from
    /// fragments, whose own envelopes already told membership of the sender).
    fn handle_envelope(&mut self, now_ms: u64, from: SocketAddr, env: Envelope, inner: bool) {
        let sender = env.sender;
        // A reassembled envelope's header may name a record's origin (see
        // `send_large`); its fragments already told membership who sent it.
        if !inner {
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
            self.heard_from(now_ms, from, &sender);
            for m in &env.members {
                self.rumor(now_ms, m);
            }
        }
        if self.left {
            return;
        }
        match env.body {
            Body::Syn(syn) => {
                self.stats.syns_received += 1;
                self.on_syn(now_ms, from, &sender, syn)
            }
            Body::SynAck(ack) => {
                self.note_digest(&sender, &ack.digest);
                self.on_syn_ack(now_ms, from, &sender, ack)
            }
            Body::Ack(ack) => self.apply_delta(now_ms, from, ack.delta),
            Body::Leave => {}
            Body::Push(push) => self.on_push(now_ms, from, &sender.node_id, push),
            Body::Fragment(f) if !inner => self.on_fragment(now_ms, from, f),
            Body::Fragment(_) => {}
            Body::Probe(p) => self.on_probe(now_ms, from, p),
            Body::MemberSync(m) => self.on_member_sync(from, m),
        }
    }

    /// Remembers the watermarks `digest` shows for `sender` (they only grow
    /// within one generation), for `collect_superseded`.
    ///
    /// At most `peer_marks_max` (member, origin) pairs are kept, so that a
    /// cluster of thousands of writers does not cost every node millions of
    /// entries: past it, new pairs are not recorded, and their origins are
    /// left to the retention collection.
    fn note_digest(&mut self, sender: &Sender, digest: &Digest) {
        if self.cfg.directory.is_some() || digest.entries.is_empty() {
            return;
        }
        let marks = self
            .peer_marks
            .entry(sender.node_id.clone())
            .or_insert_with(|| (sender.generation, HashMap::new()));
        if marks.0 != sender.generation {
            self.peer_marks_len -= marks.1.len();
            *marks = (sender.generation, HashMap::new());
        }
        for e in &digest.entries {
            match marks.1.get_mut(&e.origin) {
                Some(m) => *m = (*m).max(e.watermark),
                None if self.peer_marks_len < self.peer_marks_max => {
                    marks.1.insert(e.origin.clone(), e.watermark);
                    self.peer_marks_len += 1;
                }
                None => {}
            }
        }
    }

    /// Collects the superseded writes ("ghosts") that every live member has
    /// passed, by the watermarks their digests showed: none of them needs
    /// re-synchronising for it, and overwrites stop costing index memory
    /// for the whole tombstone retention. Members we have no watermark from
    /// count as 0, so nothing of that origin is collected early.
    fn collect_superseded(&mut self) {
        if self.cfg.directory.is_some() {
            return;
        }
        let live: Vec<Member> = self
            .membership
            .in_states(&[MemberState::Alive, MemberState::Suspect]);
        let mut kept = 0;
        self.peer_marks.retain(|id, (_, marks)| {
            let keep = live.iter().any(|m| &m.node_id == id);
            kept += if keep { marks.len() } else { 0 };
            keep
        });
        self.peer_marks_len = kept;
        if live.is_empty() {
            return;
        }
        // Each live member's marks, of its current generation (`None`: none).
        let marks: Vec<Option<&HashMap<Origin, u64>>> = live
            .iter()
            .map(|m| {
                self.peer_marks
                    .get(&m.node_id)
                    .filter(|(generation, _)| *generation == m.generation)
                    .map(|(_, marks)| marks)
            })
            .collect();
        let bounds: Vec<(Origin, u64)> = self
            .store
            .digest()
            .entries
            .into_iter()
            .map(|e| {
                let lowest = marks
                    .iter()
                    .map(|m| m.and_then(|m| m.get(&e.origin).copied()).unwrap_or(0))
                    .min()
                    .unwrap_or(0);
                (e.origin, lowest.min(e.watermark))
            })
            .filter(|(_, bound)| *bound > 0)
            .collect();
        let removed = self.store.collect_superseded(&bounds);
        self.stats.superseded_collected += removed as u64;
        if removed > 0 {
            debug!(removed, "collected superseded index entries");
        }
    }

    /// Answers a member-list reconciliation: while `ttl` allows and some
    /// bucket still differs (the entries it carried were taken already), our
    /// bucket fingerprints and our members from the differing buckets.
    fn on_member_sync(&mut self, from: SocketAddr, sync: MemberSync) {
        if sync.ttl == 0 {
            return;
        }
        // We start exchanges with a ttl of 2; a greater one from the network
        // is capped, so a forged one cannot keep two nodes answering each
        // other.
        self.send_member_sync(from, Some(&sync.buckets), sync.ttl.min(2) - 1);
    }

    /// Sends our bucket fingerprints to `to`, with our members from the
    /// buckets that differ from `theirs` (when known; nothing is sent if
    /// none differs).
    fn send_member_sync(&mut self, to: SocketAddr, theirs: Option<&[u64]>, ttl: u32) {
        let buckets = self.membership.buckets();
        let mut env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: self.me(),
            members: Vec::new(),
            body: Body::MemberSync(MemberSync { buckets, ttl }),
        };
        if let Some(theirs) = theirs {
            let room = self.cfg.packet_size.saturating_sub(encoded_len(&env));
            match self.membership.reconcile(theirs, room, &mut self.rng) {
                Some(members) => env.members = members,
                None => return,
            }
        }
        self.stats.member_syncs_sent += 1;
        self.stats.member_entries_sent += env.members.len() as u64;
        self.send_envelope(to, env);
    }

    /// A datagram came from `sender` at `from`: it is alive. Answers the
    /// probe we may be waiting on, and relays that to members that asked us
    /// to probe it.
    fn heard_from(&mut self, now_ms: u64, from: SocketAddr, sender: &Sender) {
        // With a directory there is no member table to keep.
        if self.cfg.directory.is_none() {
            self.membership.observe(sender, Some(from), now_ms);
        }
        self.awaiting.remove(&sender.node_id);
        if let Some(asks) = self.relays.remove(&sender.node_id) {
            let target = Sender {
                addr: sender.addr.or(Some(from)),
                members_hash: 0,
                ..sender.clone()
            };
            for (to, _) in asks {
                self.send(
                    to,
                    Body::Probe(Probe {
                        target: target.clone(),
                        request: false,
                    }),
                );
            }
        }
    }

    /// A member entry from a datagram: a rumor about us is refuted by taking
    /// a greater incarnation (every header carries it, and it spreads as a
    /// rumor of our own); any other goes to the membership table.
    fn rumor(&mut self, now_ms: u64, m: &Sender) {
        if let Some(incarnation) = self.membership.refutes(m, self.incarnation) {
            debug!(
                incarnation,
                liveness = ?m.liveness,
                "refuting a rumor about this node"
            );
            self.stats.refutations += 1;
            self.incarnation = incarnation;
            self.membership.spread_self();
            return;
        }
        if self.cfg.directory.is_none() {
            self.membership.observe(m, None, now_ms);
        }
    }

    /// Failure detection help: probe a member for a peer that could not
    /// reach it, or take a peer's word that a member answered it.
    fn on_probe(&mut self, now_ms: u64, from: SocketAddr, probe: Probe) {
        if !probe.request {
            // Vouched for: it answered the peer, which counts as an answer.
            if let Some((sent, _)) = self.awaiting.remove(&probe.target.node_id) {
                trace!(member = %probe.target.node_id, waited = now_ms.saturating_sub(sent), "probe answered indirectly");
            }
            self.membership.vouch(&probe.target.node_id);
            self.rumor(now_ms, &probe.target);
            return;
        }
        if probe.target.node_id == self.cfg.node_id {
            // We are the target: answering directly proves it best.
            let me = self.me();
            self.send(
                from,
                Body::Probe(Probe {
                    target: Sender {
                        members_hash: 0,
                        ..me
                    },
                    request: false,
                }),
            );
            return;
        }
        let Some(target) = self.membership.get(&probe.target.node_id) else {
            return;
        };
        const MAX_RELAYS: usize = 64;
        let until = now_ms + self.cfg.gossip_interval_ms.max(1);
        let fresh = !self.relays.contains_key(&target.node_id);
        if fresh && self.relays.len() >= MAX_RELAYS {
            return;
        }
        let asks = self.relays.entry(target.node_id.clone()).or_default();
        if !asks.iter().any(|&(a, _)| a == from) {
            asks.push((from, until));
        }
        if fresh {
            self.stats.probes_relayed += 1;
            let digest = self.store.digest();
            let syn = self.make_syn(&digest, None);
            self.send_syn(target.addr, syn);
        }
    }

    fn on_fragment(&mut self, now_ms: u64, from: SocketAddr, f: Fragment) {
        self.stats.fragments_received += 1;
        let bytes = match self.reassembly.insert(f, now_ms) {
            Outcome::Pending => return,
            Outcome::Complete(bytes) => bytes,
            Outcome::Rejected(why) => {
                self.reject(from, gossipkv_proto::DecodeError::Inconsistent(why));
                return;
            }
        };
        let env = match decode_reassembled(&bytes, &self.limits) {
            Ok(env) if env.cluster_id == self.cfg.cluster_id => env,
            Ok(_) => {
                self.reject(
                    from,
                    gossipkv_proto::DecodeError::Inconsistent(
                        "reassembled envelope names another cluster",
                    ),
                );
                return;
            }
            Err(error) => {
                self.reject(from, error);
                return;
            }
        };
        self.stats.messages_reassembled += 1;
        trace!(%from, len = bytes.len(), "reassembled a fragmented envelope");
        self.handle_envelope(now_ms, from, env, true);
    }

    /// Counts and reports a datagram (or reassembled envelope) that is not valid.
    fn reject(&mut self, from: SocketAddr, error: gossipkv_proto::DecodeError) {
        self.stats.decode_errors += 1;
        debug!(%from, %error, "dropping undecodable message");
        self.events
            .push_back(Event::Error(NetworkError::Decode { from, error }));
    }

    fn on_syn(&mut self, now_ms: u64, from: SocketAddr, sender: &Sender, syn: Syn) {
        let mine = self.store.digest();
        if let Some(theirs) = syn.digest_hash {
            // A hash-only Syn: the short form when the fingerprints agree,
            // else our digest, from which the initiator sees what we lack
            // (and, if we have writes it lacks, asks again in full).
            let reply_digest = if mine.fingerprint() == theirs {
                self.stats.short_replies += 1;
                // Its watermarks are ours.
                self.note_digest(sender, &mine);
                Digest::default()
            } else {
                self.fit_digest(mine, self.budget / 2)
            };
            self.send(
                from,
                Body::SynAck(SynAck {
                    digest: reply_digest,
                    reply: Reply::Delta(Delta::default()),
                }),
            );
            return;
        }
        self.note_digest(sender, &syn.digest);
        if syn.resync_from.is_none() && same_digest(&syn.digest, &mine) {
            // Nothing to exchange: answer in the short form, an empty digest
            // that covers no origin, so the initiator has nothing to send back.
            self.stats.short_replies += 1;
            self.send(
                from,
                Body::SynAck(SynAck {
                    digest: Digest::default(),
                    reply: Reply::Delta(Delta::default()),
                }),
            );
            return;
        }
        let behind = self.store.resync_origins(&syn.digest);
        if syn.resync_from.is_some() || !behind.is_empty() {
            // A page gets the whole datagram: the reply's own digest is the
            // empty one (the initiator is being re-synchronised and has
            // nothing to send back), and the page carries a window of our
            // watermarks small enough to leave room for records.
            let start = syn.resync_from.unwrap_or_default();
            let rotate = self.rng.random::<u32>() as usize;
            // The first page lists the origins the initiator is below our
            // floor in first (they decide which of its stale records it may
            // drop); later pages list the origins the initiator names (those
            // of the first page), so that the pass raises them all.
            let watermarks = match &syn.digest {
                d if !start.is_empty() && !d.complete && !d.entries.is_empty() => {
                    restrict(&mine, d).page_window(self.budget / 4, 0, &[])
                }
                _ => mine.page_window(self.budget / 4, rotate, &behind),
            };
            let page = self.store.page(&start, self.budget, watermarks);
            trace!(%from, start = %page.start, records = page.records.len(), "sending resync page");
            self.send(
                from,
                Body::SynAck(SynAck {
                    digest: Digest::default(),
                    reply: Reply::Page(page),
                }),
            );
            return;
        }
        let mine = self.fit_digest(mine, self.budget / 2);
        let room = self.budget.saturating_sub(mine.size_hint());
        let reply = {
            let delta = self.delta_for(now_ms, from, &syn.digest, room);
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
        // The peer's member list differs from ours: reconcile them.
        if sender.members_hash != 0 && sender.members_hash != self.membership.hash() {
            self.send_member_sync(from, None, 2);
        }
        match ack.reply {
            Reply::Delta(delta) => self.apply_delta(now_ms, from, delta),
            Reply::Page(page) => {
                let stats = self.store.apply_page(&page);
                self.stats.pages_applied += 1;
                self.stats.records_won += stats.won as u64;
                self.stats.records_lost += stats.lost as u64;
                self.on_page(now_ms, from, &sender.node_id, &page);
            }
        }
        self.answer_ack(now_ms, from, &ack.digest);
        // The answer to a hash-only Syn carries no delta: if the peer has
        // writes we lack, ask again with our full digest (once per Syn).
        let hash_only = self.hash_only_to.remove(&from);
        if hash_only && !ack.digest.entries.is_empty() {
            // The fingerprints differ: until they agree again, send whole
            // digests (a window of ours may not show what the peer must see,
            // for example that we fell below its floor in some origin).
            self.send_whole_digests(now_ms);
        }
        if hash_only && self.peer_is_ahead(&ack.digest) {
            self.stats.pulls_sent += 1;
            let syn = Syn {
                digest: self.fit_digest(self.store.digest(), self.budget / 2),
                resync_from: None,
                digest_hash: None,
            };
            self.send_syn(from, syn);
        }
    }

    /// Makes the next five rounds send whole digests to `fanout` peers.
    fn send_whole_digests(&mut self, now_ms: u64) {
        self.whole_digests_until_ms = now_ms + 5 * self.cfg.gossip_interval_ms;
    }

    /// Whether `peer` lists a watermark above ours for some origin.
    fn peer_is_ahead(&self, peer: &Digest) -> bool {
        peer.entries
            .iter()
            .any(|e| e.watermark > self.store.watermark(&e.origin))
    }

    /// Tracks a re-synchronisation: pages from one peer, in key order, from
    /// the first key to the last. Pages from anyone else, or out of order,
    /// are merged (that is always safe) but do not advance it.
    fn on_page(&mut self, now_ms: u64, from: SocketAddr, sender: &NodeId, page: &Page) {
        let stale = self.resync.as_ref().is_some_and(|r| {
            now_ms.saturating_sub(r.progress_ms) > 10 * self.cfg.gossip_interval_ms
        });
        let ours = match &self.resync {
            Some(r) => &r.from == sender,
            None => true,
        };
        if page.start.is_empty() && (ours || stale) {
            self.resync = Some(Resync {
                from: sender.clone(),
                addr: from,
                cursor: String::new(),
                watermarks: page.watermarks.clone(),
                progress_ms: now_ms,
            });
        }
        let Some(r) = &mut self.resync else {
            return;
        };
        if &r.from != sender || r.cursor != page.start {
            return;
        }
        r.progress_ms = now_ms;
        // Raise at the end only what every page's drop rule covered.
        if !page.start.is_empty() {
            r.watermarks = intersect(&r.watermarks, &page.watermarks);
        }
        match &page.end {
            Some(end) => r.cursor = end.clone(),
            None => {
                if let Some(r) = self.resync.take() {
                    let raised = self.store.raise_watermarks(&r.watermarks);
                    self.stats.resyncs_completed += 1;
                    self.send_whole_digests(now_ms);
                    debug!(peer = %r.from, raised, "re-synchronisation complete");
                }
            }
        }
    }

    /// Pushes fresh local writes to a few live peers at once, in
    /// packet-sized batches. Call it with every record the local store wrote
    /// (several at a time when writes come in bursts: they are coalesced).
    ///
    /// In a cluster of up to [`PUSH_DIRECT_MAX`] live peers the writer pushes
    /// to every one of them and nobody forwards (each node gets each write
    /// once); in a larger one it pushes to that many at random and they
    /// forward what was new to them to `fanout` peers each, hop-limited.
    ///
    /// Records whose value is too large for a datagram go to the same peers,
    /// each as its own fragmented envelope, and are not forwarded (peers
    /// that miss them get them by anti-entropy).
    pub fn push_local(&mut self, now_ms: u64, records: Vec<Record>) {
        let live = match &self.cfg.directory {
            Some(dir) => dir.len().saturating_sub(1),
            None => self.membership.count_in(&[MemberState::Alive]),
        };
        let hops = if live <= PUSH_DIRECT_MAX {
            0
        } else {
            push_hops(live.div_ceil(PUSH_DIRECT_MAX), self.push_fanout()) + 1
        };
        if hops == 0 {
            // Every live peer gets these directly.
            self.note_pushed(now_ms, records.iter().map(|r| &r.version));
        }
        self.push_records(now_ms, records, hops, None, PUSH_DIRECT_MAX);
    }

    /// Bytes a push datagram whose first record is `first` has for records.
    fn push_room(&self, first: &Record) -> usize {
        let stand_in = Record {
            key: first.key.clone(),
            value: None,
            version: first.version.clone(),
        };
        let env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: self.me(),
            members: Vec::new(),
            body: Body::Push(Push {
                records: vec![stand_in.clone()],
                hops: u32::MAX,
            }),
        };
        // The header with the push's origin fields, less the stand-in; a
        // few bytes spare for an incarnation that grows meanwhile.
        let header = encoded_len(&env).saturating_sub(push_record_len(&stand_in, &stand_in));
        self.cfg.packet_size.saturating_sub(header + 8)
    }

    fn push_fanout(&self) -> usize {
        self.cfg.fanout.max(1)
    }

    fn push_records(
        &mut self,
        now_ms: u64,
        records: Vec<Record>,
        hops: u32,
        exclude: Option<(&NodeId, SocketAddr)>,
        fanout: usize,
    ) {
        if !self.cfg.push || self.left || records.is_empty() {
            return;
        }
        let mut peers = self.push_peers(exclude);
        if peers.is_empty() {
            return;
        }
        // Pushes carry no member sample: the whole packet but the header
        // (which names the records' origin once) is for records, sized
        // exactly.
        let mut batch: Vec<Record> = Vec::new();
        let mut used = 0;
        let mut room = 0;
        let mut batches = Vec::new();
        let mut large = Vec::new();
        for r in records {
            if r.value.as_ref().is_some_and(|v| v.len() > self.inline_max) {
                large.push(r);
                continue;
            }
            if batch.is_empty() {
                room = self.push_room(&r);
            }
            let mut cost = push_record_len(&r, batch.first().unwrap_or(&r));
            if used + cost > room && !batch.is_empty() {
                batches.push(std::mem::take(&mut batch));
                used = 0;
                room = self.push_room(&r);
                cost = push_record_len(&r, &r);
            }
            if cost > room {
                // Too large for a push datagram after all: send it apart.
                large.push(r);
                continue;
            }
            used += cost;
            batch.push(r);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for records in batches {
            for to in peers.draw(&mut self.rng, fanout) {
                self.stats.pushes_sent += 1;
                self.send(
                    to,
                    Body::Push(Push {
                        records: records.clone(),
                        hops,
                    }),
                );
            }
        }
        // Large values last, so that they never delay the small writes of
        // the same burst.
        for r in large {
            for to in peers.draw(&mut self.rng, fanout) {
                self.send_large(now_ms, to, r.clone(), 0);
            }
        }
    }

    /// Where pushes may go: live members but `exclude`, or, with a
    /// [`Directory`], every node but us and `exclude`.
    fn push_peers(&self, exclude: Option<(&NodeId, SocketAddr)>) -> PushPeers {
        match &self.cfg.directory {
            Some(dir) => {
                let mut skip: Vec<SocketAddr> = self
                    .cfg
                    .advertise_addr
                    .into_iter()
                    .chain(exclude.map(|(_, addr)| addr))
                    .filter(|a| dir.contains(a))
                    .collect();
                skip.dedup();
                PushPeers::Drawn(dir.clone(), skip)
            }
            None => PushPeers::Members(
                self.membership
                    .in_states(&[MemberState::Alive])
                    .into_iter()
                    .filter(|m| Some(&m.node_id) != exclude.map(|(id, _)| id))
                    .map(|m| m.addr)
                    .collect(),
            ),
        }
    }

    fn on_push(&mut self, now_ms: u64, from: SocketAddr, sender: &NodeId, push: Push) {
        self.check_skew(now_ms, from, &push.records);
        // Records are copied only when they may be forwarded: a copy gives
        // every value a shared header, which the store then keeps.
        match push.hops.checked_sub(1) {
            None => {
                // Pushed with no forwarding: the writer sent them to every
                // live member directly (the cluster is small enough).
                let versions: Vec<Version> =
                    push.records.iter().map(|r| r.version.clone()).collect();
                let won = self.merge_pushed(push.records);
                self.note_pushed(now_ms, winners(&versions, &won));
            }
            Some(hops) => {
                let copy = push.records.clone();
                let won = self.merge_pushed(push.records);
                let fresh: Vec<Record> = winners(copy, &won).collect();
                if !fresh.is_empty() {
                    let fanout = self.push_fanout();
                    self.push_records(now_ms, fresh, hops, Some((sender, from)), fanout);
                }
            }
        }
    }

    /// Merges pushed records and counts them; returns whether each won.
    fn merge_pushed(&mut self, records: Vec<Record>) -> Vec<bool> {
        let won = self.store.merge_batch(records);
        let n = won.iter().filter(|w| **w).count() as u64;
        self.stats.records_won += n;
        self.stats.pushed_records_won += n;
        self.stats.records_lost += won.len() as u64 - n;
        won
    }

    fn answer_ack(&mut self, now_ms: u64, to: SocketAddr, peer_digest: &Digest) {
        if self.store.needs_resync(peer_digest) {
            // The peer gets pages when it asks with its own Syn.
            return;
        }
        let delta = self.delta_for(now_ms, to, peer_digest, self.budget);
        if !delta.is_empty() {
            self.send(to, Body::Ack(Ack { delta }));
        }
    }

    /// The delta for a peer at `to` with digest `peer`; records too large to
    /// travel inline are sent to it apart.
    fn delta_for(&mut self, now_ms: u64, to: SocketAddr, peer: &Digest, budget: usize) -> Delta {
        let rotate = self.rng.random::<u32>() as usize;
        let horizon = now_ms.saturating_sub(self.push_hold_ms());
        let pushed = &self.pushed;
        // Writes pushed (or received by push) within the hold time are still
        // reaching their peers by push: anti-entropy leaves them alone.
        let hold = |o: &Origin| {
            pushed.get(o).map_or(u64::MAX, |w| {
                w.iter()
                    .filter(|&&(at, _)| at >= horizon)
                    .map(|&(_, seq)| seq)
                    .min()
                    .unwrap_or(u64::MAX)
            })
        };
        let (delta, large) = self.store.delta_with(
            peer,
            &DeltaOptions {
                budget,
                rotate,
                inline_max: self.inline_max,
                hold: &hold,
            },
        );
        for record in large {
            self.send_large(now_ms, to, record, 0);
        }
        delta
    }

    /// How long writes that travel by push are left out of anti-entropy.
    fn push_hold_ms(&self) -> u64 {
        2 * self.cfg.gossip_interval_ms.max(1)
    }

    /// Notes that writes of their origins went out (or came in) by a push
    /// that reaches every live member directly, at `now_ms`: per origin, time
    /// slots of a quarter interval with the lowest sequence number seen in
    /// each, for as long as the hold time. (Forwarded pushes may miss nodes,
    /// so anti-entropy does not wait for them.)
    fn note_pushed<'a>(&mut self, now_ms: u64, versions: impl IntoIterator<Item = &'a Version>) {
        if !self.cfg.push {
            return;
        }
        let slot = (self.cfg.gossip_interval_ms / 4).max(1);
        let horizon = now_ms.saturating_sub(self.push_hold_ms());
        for v in versions {
            let w = self.pushed.entry(v.origin()).or_default();
            while w.front().is_some_and(|&(at, _)| at < horizon) {
                w.pop_front();
            }
            match w.back_mut() {
                Some((at, seq)) if now_ms < *at + slot => *seq = (*seq).min(v.seq),
                _ => w.push_back((now_ms, v.seq)),
            }
        }
    }

    /// How long before the same large record is sent to the same peer again.
    fn large_resend_ms(&self) -> u64 {
        3 * self.cfg.gossip_interval_ms.max(1)
    }

    /// Sends one record whose value is too large for a datagram, as a push
    /// envelope cut into fragments, unless it went to `to` a moment ago.
    ///
    /// The envelope is the same whoever sends the record and whenever (its
    /// header names the record's origin, with no address or incarnation), so
    /// at the receiver pieces of a retry, or from another node, fill the
    /// holes of an earlier attempt.
    fn send_large(&mut self, now_ms: u64, to: SocketAddr, record: Record, hops: u32) {
        let key = (
            to,
            record.version.node.clone(),
            record.version.generation,
            record.version.seq,
        );
        if self
            .large_sent
            .get(&key)
            .is_some_and(|&t| now_ms.saturating_sub(t) < self.large_resend_ms())
        {
            return;
        }
        self.large_sent.insert(key, now_ms);
        self.stats.large_records_sent += 1;
        let env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: Sender::new(record.version.node.clone(), record.version.generation, None),
            members: Vec::new(),
            body: Body::Push(Push {
                records: vec![record],
                hops,
            }),
        };
        if encoded_len(&env) <= self.cfg.packet_size {
            // It fits after all: an ordinary push, under our own name.
            self.send(to, env.body);
            return;
        }
        // Cut into fragments only once everything queued so far is out
        // (see `poll_transmit`): cutting 1 MiB takes milliseconds, which the
        // small writes of the same burst should not wait for.
        self.large_jobs.push_back((to, env));
    }

    fn apply_delta(&mut self, now_ms: u64, from: SocketAddr, delta: Delta) {
        if delta.is_empty() {
            return;
        }
        for chunk in &delta.chunks {
            self.check_skew(now_ms, from, &chunk.records);
        }
        // Owned: the store keeps the decoded values as they are.
        let stats = self.store.apply_owned(delta);
        self.stats.records_won += stats.won as u64;
        self.stats.records_lost += stats.lost as u64;
        if stats.won > 0 {
            trace!(%from, won = stats.won, lost = stats.lost, "applied delta");
        }
    }

    /// Reports records whose timestamps are far ahead of our clock (at most
    /// once a minute per writer).
    fn check_skew(&mut self, now_ms: u64, from: SocketAddr, records: &[Record]) {
        let horizon = now_ms.saturating_add(CLOCK_SKEW_REPORT_MS);
        let mut ahead: HashMap<&NodeId, u64> = HashMap::new();
        for r in records {
            let t = r.version.hlc.physical_ms();
            if t > horizon {
                let e = ahead.entry(&r.version.node).or_default();
                *e = (*e).max(t);
            }
        }
        for (node, ahead) in ahead {
            {
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
    }

    /// Our own header entry: incarnation and member-list fingerprint.
    fn me(&self) -> Sender {
        Sender {
            node_id: self.cfg.node_id.clone(),
            generation: self.cfg.generation,
            addr: self.cfg.advertise_addr,
            incarnation: self.incarnation,
            left: self.left,
            liveness: gossipkv_proto::Liveness::Alive,
            // 0: no fingerprint, so peers start no member-list reconciliation.
            members_hash: if self.cfg.directory.is_some() {
                0
            } else {
                self.membership.hash()
            },
        }
    }

    fn send(&mut self, to: SocketAddr, body: Body) {
        let mut env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id.clone(),
            sender: self.me(),
            members: Vec::new(),
            body,
        };
        let len = encoded_len(&env);
        // Pushes carry data only: membership spreads with the exchanges,
        // which happen anyway.
        // So do datagrams of nodes that gossip with a directory.
        let carries_members = !matches!(env.body, Body::Push(_)) && self.cfg.directory.is_none();
        if carries_members && len <= self.cfg.packet_size {
            let room = (self.cfg.packet_size - len).max(self.member_budget);
            let me = env.sender.clone();
            let to_id = self.membership.id_at(to);
            let reply = !matches!(env.body, Body::Syn(_));
            env.members = self.membership.sample(
                &me,
                to_id.as_ref(),
                reply,
                self.now_ms,
                room,
                &mut self.rng,
            );
            self.stats.member_entries_sent += env.members.len() as u64;
        }
        self.send_envelope(to, env);
    }

    /// Queues an envelope: as one datagram when it fits the packet size,
    /// otherwise cut into fragments (up to the largest message).
    fn send_envelope(&mut self, to: SocketAddr, env: Envelope) {
        let payload = encode(&env);
        if payload.len() <= self.cfg.packet_size {
            self.queue_datagram(to, payload);
            return;
        }
        if payload.len() > self.limits.max_message {
            self.stats.oversized_dropped += 1;
            warn!(
                len = payload.len(),
                max = self.limits.max_message,
                "encoded envelope exceeds the largest message; not sent"
            );
            return;
        }
        // The same bytes get the same id and the same cuts on every node, so
        // pieces of one message from anywhere complete each other.
        let id = message_id(&payload);
        let header = Envelope {
            members: Vec::new(),
            body: Body::Leave,
            sender: self.me(),
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

    /// The next fragment of the first envelope being cut, if any is left.
    fn next_fragment(&mut self) -> Option<Transmit> {
        let mut job = self.fragmenting.pop_front()?;
        let piece = fragment_piece(&job.payload, job.id, self.piece_len, job.next)?;
        job.next += 1;
        job.header.body = Body::Fragment(piece);
        let datagram = encode(&job.header);
        let to = job.to;
        if job.next * self.piece_len < job.payload.len() {
            self.fragmenting.push_front(job);
        }
        if datagram.len() > self.cfg.packet_size {
            self.stats.oversized_dropped += 1;
            warn!(
                len = datagram.len(),
                "fragment exceeds the packet size; not sent"
            );
            return None;
        }
        self.stats.fragments_sent += 1;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += datagram.len() as u64;
        Some(Transmit {
            to,
            payload: datagram,
        })
    }

    fn queue_datagram(&mut self, to: SocketAddr, payload: Bytes) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        self.transmits.push_back(Transmit { to, payload });
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

/// `digest`'s watermarks (0 where it has none) for exactly the origins `to`
/// lists: what a node asking for a later page of a re-synchronisation sends.
fn restrict(digest: &Digest, to: &Digest) -> Digest {
    subset(to.entries.iter().map(|e| gossipkv_storage::DigestEntry {
        origin: e.origin.clone(),
        watermark: digest.watermark(&e.origin).unwrap_or(0),
    }))
}

/// The origins both digests speak for, at the lower of their watermarks (a
/// partial result: it says nothing of other origins).
fn intersect(a: &Digest, b: &Digest) -> Digest {
    subset(a.entries.iter().filter_map(|e| {
        b.watermark(&e.origin)
            .map(|w| gossipkv_storage::DigestEntry {
                origin: e.origin.clone(),
                watermark: w.min(e.watermark),
            })
    }))
}

/// A digest listing just `entries` (unlisted origins inside their range read
/// as watermark 0).
fn subset(entries: impl Iterator<Item = gossipkv_storage::DigestEntry>) -> Digest {
    Digest {
        entries: entries.collect(),
        complete: false,
        open_start: false,
        open_end: false,
    }
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

/// How many times a fresh write may be forwarded: enough hops for `fanout`
/// pushes per hop to cover `n` nodes, plus one.
fn push_hops(n: usize, fanout: usize) -> u32 {
    let f = fanout.max(2) as f64;
    ((n.max(2) as f64).ln() / f.ln()).ceil() as u32 + 1
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

/// How often tombstones are collected: a tenth of the retention, between 1 s and 1 min.
fn gc_interval(retention_ms: u64) -> u64 {
    (retention_ms / 10).clamp(1_000, 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(seeds: Vec<SocketAddr>) -> Protocol {
        let cfg = ProtocolConfig {
            node_id: "me".into(),
            generation: 1,
            cluster_id: "test".into(),
            advertise_addr: Some("127.0.0.1:7000".parse().unwrap()),
            gossip_interval_ms: 1_000,
            fanout: 3,
            packet_size: 1_400,
            tombstone_retention_ms: 3_600_000,
            seeds,
            rng_seed: 7,
            detector: DetectorConfig::for_interval(1_000),
            push: true,
            max_value_size: 1 << 20,
            directory: None,
        };
        let store = Arc::new(Store::new(Origin::new("me", 1)));
        Protocol::new(cfg, store, 1_000_000)
    }

    fn destinations(p: &mut Protocol) -> Vec<SocketAddr> {
        std::iter::from_fn(|| p.poll_transmit())
            .map(|t| t.to)
            .collect()
    }

    #[test]
    fn new_seed_addresses_are_followed() {
        let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let mut p = protocol(vec![a]);
        p.handle_timeout(1_000_000);
        assert_eq!(destinations(&mut p), vec![a]);
        // The seed's host name now resolves elsewhere.
        p.set_seeds(vec![b]);
        p.handle_timeout(1_001_000);
        assert_eq!(destinations(&mut p), vec![b]);
    }

    #[test]
    fn garbage_is_counted_and_reported_never_applied() {
        let mut p = protocol(vec![]);
        let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for len in 0..200usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            p.handle_datagram(1_000_000, from, &junk);
        }
        let s = p.stats();
        assert_eq!(s.datagrams_received, 200);
        assert!(s.decode_errors >= 190, "{s:?}");
        assert!(p.store().is_empty());
        let reported = std::iter::from_fn(|| p.poll_event())
            .filter(|e| matches!(e, Event::Error(NetworkError::Decode { .. })))
            .count() as u64;
        assert_eq!(reported, s.decode_errors);
    }

    #[test]
    fn a_forged_member_sync_gets_one_bounded_answer() {
        let mut p = protocol(vec![]);
        let from: SocketAddr = "127.0.0.1:7009".parse().unwrap();
        let env = Envelope::new(
            "test",
            Sender::new("peer", 1, Some(from)),
            Body::MemberSync(MemberSync {
                buckets: vec![1; crate::membership::BUCKETS],
                ttl: u32::MAX,
            }),
        );
        p.handle_datagram(1_000_000, from, &encode(&env));
        let answers: Vec<Envelope> = std::iter::from_fn(|| p.poll_transmit())
            .map(|t| decode(&t.payload, &Limits::default()).unwrap())
            .collect();
        assert_eq!(answers.len(), 1);
        match &answers[0].body {
            Body::MemberSync(m) => {
                assert_eq!(m.ttl, 1, "the ttl is capped");
                assert_eq!(m.buckets.len(), crate::membership::BUCKETS);
            }
            other => panic!("unexpected answer {other:?}"),
        }
        assert!(
            answers[0]
                .members
                .iter()
                .any(|m| m.node_id.as_str() == "peer"),
            "the answer carries the members of the differing buckets"
        );
        // A bucket list of the wrong length is not answered.
        let env = Envelope {
            body: Body::MemberSync(MemberSync {
                buckets: vec![1; 3],
                ttl: 2,
            }),
            ..env
        };
        p.handle_datagram(1_000_001, from, &encode(&env));
        assert_eq!(destinations(&mut p), Vec::<SocketAddr>::new());
    }

    #[test]
    fn a_silent_member_is_probed_through_others_then_doubted() {
        let mut p = protocol(vec![]);
        let peers: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("127.0.0.1:710{i}").parse().unwrap())
            .collect();
        for (i, a) in peers.iter().enumerate() {
            // A probe answer from each: it only says the sender is alive.
            let sender = Sender::new(format!("p{i}"), 1, Some(*a));
            let body = Body::Probe(Probe {
                target: sender.clone(),
                request: false,
            });
            p.handle_datagram(1_000_000, *a, &encode(&Envelope::new("test", sender, body)));
        }
        let _ = destinations(&mut p);
        // A round: Syns to `fanout` peers (the member list just changed), the
        // first to the next member in the probe order, whose answer is awaited.
        p.handle_timeout(1_000_000);
        let first = destinations(&mut p);
        assert_eq!(first.len(), 3);
        let awaited: Vec<&NodeId> = p.awaiting.keys().collect();
        assert_eq!(awaited.len(), 1);
        let target = p.membership.get(awaited[0]).unwrap().addr;
        assert!(first.contains(&target));
        // Nobody answers: after half an interval three others are asked to
        // probe it, and it is probed directly again.
        p.handle_timeout(1_000_500);
        let sent: Vec<(SocketAddr, Envelope)> = std::iter::from_fn(|| p.poll_transmit())
            .map(|t| (t.to, decode(&t.payload, &Limits::default()).unwrap()))
            .collect();
        let requests: Vec<SocketAddr> = sent
            .iter()
            .filter(|(_, e)| matches!(&e.body, Body::Probe(r) if r.request))
            .map(|(to, _)| *to)
            .collect();
        assert_eq!(requests.len(), 3, "{sent:?}");
        assert!(!requests.contains(&target));
        assert!(sent
            .iter()
            .any(|(to, e)| *to == target && matches!(e.body, Body::Syn(_))));
        let doubted = p.membership.to_probe();
        assert_eq!(doubted.len(), 1);
        assert_eq!(doubted[0].addr, target);
        // Still silent an interval later: suspected.
        p.handle_timeout(1_001_500);
        let suspect = p.membership.get(&doubted[0].node_id).unwrap();
        assert_eq!(suspect.state, MemberState::Suspect);
    }

    #[test]
    fn a_directory_sample_is_distinct_skips_and_is_bounded() {
        let addrs: Vec<SocketAddr> = (1..=20)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 7000)))
            .collect();
        let dir = Directory::new([addrs.clone(), addrs.clone()].concat());
        assert_eq!(dir.len(), 20);
        let mut rng = SmallRng::seed_from_u64(3);
        for n in [0, 1, 3, 19, 25] {
            let skip = &addrs[..2];
            let got = dir.sample(&mut rng, n, skip);
            assert_eq!(got.len(), n.min(18), "n = {n}");
            assert!(got.iter().all(|a| addrs.contains(a) && !skip.contains(a)));
            let mut uniq = got.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), got.len(), "distinct");
        }
        assert!(Directory::default().sample(&mut rng, 3, &[]).is_empty());
    }

    #[test]
    fn with_a_directory_peers_come_from_it_and_no_membership_travels() {
        let own: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let others: Vec<SocketAddr> = (1..=30)
            .map(|i| SocketAddr::from(([127, 0, 0, 2], 7000 + i)))
            .collect();
        let dir = Arc::new(Directory::new([vec![own], others.clone()].concat()));
        let mut p = protocol(vec![]);
        p.cfg.directory = Some(dir);
        let mut rounds = Vec::new();
        for r in 0..6 {
            p.handle_timeout(1_000_000 + r * 1_000);
            let sent: Vec<Transmit> = std::iter::from_fn(|| p.poll_transmit()).collect();
            for t in &sent {
                assert!(others.contains(&t.to), "{} is not in the directory", t.to);
                let env = decode(&t.payload, &Limits::default()).expect("decodes");
                assert_eq!(env.sender.members_hash, 0);
                assert!(env.members.is_empty());
            }
            rounds.push(sent.len());
        }
        // The first round is not quiet: `fanout` Syns; once the digest is
        // unchanged, one per round. No probes, so no member is doubted.
        assert_eq!(rounds[0], 3, "{rounds:?}");
        assert_eq!(rounds[5], 1, "{rounds:?}");
        assert!(p.membership.to_probe().is_empty());
        assert_eq!(p.stats.probe_requests_sent, 0);
    }

    #[test]
    fn peer_watermarks_are_kept_up_to_a_bound_and_forgotten_with_members() {
        let mut p = protocol(vec![]);
        p.peer_marks_max = 10;
        let sender = |id: &str, generation: u64| Sender {
            node_id: id.into(),
            generation,
            addr: None,
            incarnation: 0,
            left: false,
            liveness: gossipkv_proto::Liveness::Alive,
            members_hash: 0,
        };
        let digest = |n: u64, w: u64| Digest {
            entries: (0..n)
                .map(|i| gossipkv_storage::DigestEntry {
                    origin: Origin::new(format!("o{i}"), 1),
                    watermark: w,
                })
                .collect(),
            complete: true,
            ..Digest::default()
        };
        p.note_digest(&sender("a", 1), &digest(6, 5));
        p.note_digest(&sender("b", 1), &digest(6, 7));
        // Ten pairs at most: b got four of its six.
        assert_eq!(p.peer_marks_len, 10);
        assert_eq!(p.peer_marks[&NodeId::new("b")].1.len(), 4);
        // Known pairs still rise; a lower watermark does not lower them.
        p.note_digest(&sender("a", 1), &digest(6, 9));
        p.note_digest(&sender("a", 1), &digest(6, 2));
        assert!(p.peer_marks[&NodeId::new("a")].1.values().all(|w| *w == 9));
        // A new generation starts afresh.
        p.note_digest(&sender("a", 2), &digest(1, 1));
        assert_eq!(p.peer_marks[&NodeId::new("a")].1.len(), 1);
        assert_eq!(p.peer_marks_len, 5);
        // Neither is a member: the collection pass forgets both.
        p.collect_superseded();
        assert!(p.peer_marks.is_empty());
        assert_eq!(p.peer_marks_len, 0);
    }

    #[test]
    fn push_hops_cover_the_cluster() {
        assert_eq!(push_hops(2, 3), 2);
        assert!(push_hops(10, 3) >= 3);
        assert!(push_hops(10_000, 3) >= 9);
    }
}
