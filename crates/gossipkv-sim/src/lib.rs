//! # gossipkv-sim
//!
//! A deterministic simulator for the gossipkv protocol. It drives many
//! [`Protocol`] state machines with a virtual clock, one seeded random
//! generator and a simulated network that can lose, duplicate, delay and
//! reorder datagrams, partition nodes, and crash and restart them.
//!
//! Nothing here touches a socket or reads a clock: a run is a pure function of
//! its [`SimConfig`] (including the seed) and the calls made on the [`Sim`], so
//! a failing seed can be replayed exactly. [`SeedGuard`] prints the seed of a
//! failing test; `GOSSIPKV_SIM_SEED` overrides the seed of every scenario.
//!
//! Streams (the bulk path a node far behind a peer catches up over, TCP in
//! the real driver) are modelled when [`SimConfig::streams`] is on: each
//! stream is a reliable, ordered connection of fixed bandwidth
//! ([`SimConfig::stream_bytes_per_ms`]) with one latency drawn when it
//! opens. The server is asked for a frame only when the previous one has
//! arrived (a window of one frame), so a stream moves a frame per latency
//! plus transmission time, and what it sends reflects the server's state
//! at that moment. A stream is cut, both sides told, by a partition or a
//! crash of either side and at random per frame ([`SimConfig::stream_cut`]);
//! datagram loss does not touch it. Streams do not compete with each other
//! or with datagrams for bandwidth. Their traffic is counted apart from
//! datagrams, in the `streams_*` and `stream_*` fields of [`NetStats`].
//!
//! What it deliberately does not model: datagram bandwidth and congestion,
//! connection set-up handshakes and timeouts (a stream to a node that is
//! down or unreachable fails after one latency), and the tokio driver (the
//! real driver is exercised by the loopback tests of the `gossipkv` crate).
//!
//! Scheduling costs O(log N) per event: datagrams and stream steps in
//! flight and node timers live in two min-heaps, so thousands of nodes can
//! be simulated (see the [`scale`] module for dissemination measurements).

pub mod scale;

use std::cmp::Ordering;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_core::{
    DetectorConfig, Directory, Event, Instant, Member, MemberEvent, MemberState, NetworkError,
    Protocol, ProtocolConfig, Stats, StreamId, StreamOpen, StreamSend, Transmit, WallTime,
    DEFAULT_MAX_SERVING_STREAMS, DEFAULT_STREAM_FRAME_SIZE, DEFAULT_STREAM_THRESHOLD,
};
use gossipkv_proto::{decode, Body, Limits};
use gossipkv_storage::{
    Lifetime, Limits as MemoryLimits, NodeId, Origin, Record, Store, StoreConfig,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Virtual time at which simulations start (ms since the Unix epoch: 2026-01-01).
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

/// Options of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Gossip interval of every node, ms.
    pub gossip_interval_ms: u64,
    /// Peers per round.
    pub fanout: usize,
    /// Packet size of every node.
    pub packet_size: usize,
    /// Tombstone retention of every node, ms.
    pub tombstone_retention_ms: u64,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Smallest one-way latency, ms.
    pub min_latency_ms: u64,
    /// Largest one-way latency, ms (latencies are uniform in between, so
    /// datagrams are reordered).
    pub max_latency_ms: u64,
    /// Whether nodes push fresh writes eagerly (otherwise anti-entropy only).
    pub push: bool,
    /// How many earlier nodes each node is seeded with (node 0 has none):
    /// always the node just before it, then random earlier ones.
    pub seeds_per_node: usize,
    /// Whether membership events are kept for [`Sim::member_events`]. Large
    /// runs turn this off: N nodes learning of each other make N² events.
    pub record_member_events: bool,
    /// Whether every datagram sent is decoded to count it by kind in
    /// [`NetStats::by_kind`] (costs a decode per datagram).
    pub classify_datagrams: bool,
    /// Failure detector of every node; `None`: the protocol's default for
    /// the gossip interval.
    pub detector: Option<DetectorConfig>,
    /// Membership taken as given: every node draws its gossip and push
    /// peers from one shared list of all nodes
    /// ([`ProtocolConfig::directory`]) instead of its member table, and no
    /// membership is probed or gossiped. The cluster starts formed, and a
    /// simulated node costs no member table, so clusters of 10,000 nodes
    /// fit in memory. Measures dissemination alone; failure scenarios need
    /// real membership (`false`, the default).
    pub given_membership: bool,
    /// Every node's maximum clock drift (see
    /// [`ProtocolConfig::max_clock_drift`]).
    pub max_clock_drift: Duration,
    /// Whether every node uses streams to catch up (see
    /// [`ProtocolConfig::streams`]); off by default.
    pub streams: bool,
    /// Bandwidth of one stream, bytes per ms (10,000: 10 MB/s).
    pub stream_bytes_per_ms: u64,
    /// Probability, per frame, that a stream's connection is cut at that
    /// frame (the frame is lost and both sides are told).
    pub stream_cut: f64,
    /// Every node's [`ProtocolConfig::stream_threshold`].
    pub stream_threshold: u64,
    /// Every node's [`ProtocolConfig::max_serving_streams`].
    pub max_serving_streams: usize,
    /// Every node's [`ProtocolConfig::stream_frame_size`].
    pub stream_frame_size: usize,
    /// Every store's memory limits (default: none). Evictions are not
    /// pushed: anti-entropy carries them.
    pub limits: MemoryLimits,
    /// Every node's [`ProtocolConfig::ephemeral_grace`], in ms.
    pub ephemeral_grace_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            nodes: 3,
            gossip_interval_ms: 1_000,
            fanout: 3,
            packet_size: 1_400,
            tombstone_retention_ms: 3_600_000,
            loss: 0.0,
            duplicate: 0.0,
            min_latency_ms: 1,
            max_latency_ms: 20,
            seeds_per_node: 1,
            push: true,
            record_member_events: true,
            classify_datagrams: false,
            detector: None,
            given_membership: false,
            max_clock_drift: gossipkv_core::DEFAULT_MAX_CLOCK_DRIFT,
            streams: false,
            stream_bytes_per_ms: 10_000,
            stream_cut: 0.0,
            stream_threshold: DEFAULT_STREAM_THRESHOLD,
            max_serving_streams: DEFAULT_MAX_SERVING_STREAMS,
            stream_frame_size: DEFAULT_STREAM_FRAME_SIZE,
            limits: MemoryLimits::default(),
            ephemeral_grace_ms: gossipkv_core::DEFAULT_EPHEMERAL_GRACE.as_millis() as u64,
        }
    }
}

/// A node's store, with the configured memory limits.
fn new_store(origin: Origin, limits: MemoryLimits) -> Store {
    let config = StoreConfig {
        limits,
        ..StoreConfig::default()
    };
    Store::with_config(origin, config)
}

struct SimNode {
    id: NodeId,
    addr: SocketAddr,
    seeds: Vec<SocketAddr>,
    generation: u64,
    skew_ms: i64,
    store: Arc<Store>,
    proto: Option<Protocol>,
    /// Bumped every time the node's protocol starts: a stream belongs to
    /// one instance, never to the one that replaced it.
    incarnation: u64,
}

/// Something on its way: a datagram or a stream's next step. Ordered by
/// delivery time, then by send order, so simultaneous deliveries happen in
/// the order they were sent.
struct InFlight {
    at_ms: u64,
    order: u64,
    what: Delivery,
}

enum Delivery {
    Datagram {
        to: usize,
        from: SocketAddr,
        /// Shared with the sender's buffer (and the duplicate, if any): no copy.
        payload: Bytes,
    },
    /// The next step of stream `key` of [`Sim::streams`] (stale once the
    /// stream is gone: each stream has one step scheduled at a time).
    Stream(u64),
}

/// A stream between two nodes, as the simulated network carries it.
struct SimStream {
    client: usize,
    client_inc: u64,
    client_id: StreamId,
    /// The server, unless the address is no node's.
    server: Option<usize>,
    server_inc: u64,
    /// The server's id of the stream, once it accepted it.
    server_id: Option<StreamId>,
    /// One-way latency of the connection, ms.
    latency_ms: u64,
    step: StreamStep,
}

/// What a stream's scheduled step does.
enum StreamStep {
    /// The connection reaches the server, with the client's opening.
    Connect(Bytes),
    /// The frame arrives at the client; then the server is asked for the
    /// next one.
    Frame(Bytes),
    /// The client learns that the connection failed or was refused.
    Fail,
}

impl InFlight {
    fn key(&self) -> (u64, u64) {
        (self.at_ms, self.order)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A node's next timer, in simulation time: (deadline, node, epoch). Ties go
/// to the lower node index. An entry is stale, and skipped when popped, once
/// the node's epoch has moved on (every call into a node re-arms its timer
/// with a new epoch).
type TimerEntry = (u64, usize, u64);

/// Network-wide counters of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    /// Datagrams sent by nodes.
    pub sent: u64,
    /// Datagrams delivered (duplicates included).
    pub delivered: u64,
    /// Datagrams lost by the loss probability.
    pub lost: u64,
    /// Datagrams dropped by a partition or a crashed receiver.
    pub cut: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// The largest datagram sent, bytes.
    pub largest: u64,
    /// Streams asked for by nodes.
    pub streams_opened: u64,
    /// Streams that reached the end the server sent.
    pub streams_finished: u64,
    /// Streams that could not connect: the server was down or unreachable.
    pub streams_unreachable: u64,
    /// Streams the server refused, at connection or at the opening.
    pub streams_refused: u64,
    /// Streams cut by the network: at random, by a partition, or by a
    /// crash of either side.
    pub streams_cut: u64,
    /// Streams the client's protocol closed on a frame it rejected.
    pub streams_rejected: u64,
    /// Streams whose server waited for more of the opening, which the
    /// simulator always delivers whole (closed; should stay 0).
    pub streams_stalled: u64,
    /// Stream frames delivered.
    pub stream_frames: u64,
    /// Stream bytes delivered (openings and frames).
    pub stream_bytes: u64,
    /// The largest stream frame delivered, bytes.
    pub stream_largest_frame: u64,
    /// Datagrams and payload bytes sent, by kind (only with
    /// [`SimConfig::classify_datagrams`]).
    pub by_kind: [KindStats; DatagramKind::COUNT],
}

/// The kinds of datagram, for [`NetStats::by_kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramKind {
    /// First message of an exchange: a digest.
    Syn,
    /// Second message: digest and delta (or resync page).
    SynAck,
    /// Third message: delta.
    Ack,
    /// Fresh writes pushed eagerly.
    Push,
    /// Departure announcement.
    Leave,
    /// Piece of a large message.
    Fragment,
    /// Indirect probe request or answer.
    Probe,
    /// Member-list reconciliation.
    MemberSync,
    /// Did not decode.
    Invalid,
}

impl DatagramKind {
    /// Number of kinds.
    pub const COUNT: usize = 9;
    /// Every kind, in [`NetStats::by_kind`] order.
    pub const ALL: [DatagramKind; Self::COUNT] = [
        DatagramKind::Syn,
        DatagramKind::SynAck,
        DatagramKind::Ack,
        DatagramKind::Push,
        DatagramKind::Leave,
        DatagramKind::Fragment,
        DatagramKind::Probe,
        DatagramKind::MemberSync,
        DatagramKind::Invalid,
    ];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        match self {
            DatagramKind::Syn => "syn",
            DatagramKind::SynAck => "synack",
            DatagramKind::Ack => "ack",
            DatagramKind::Push => "push",
            DatagramKind::Leave => "leave",
            DatagramKind::Fragment => "fragment",
            DatagramKind::Probe => "probe",
            DatagramKind::MemberSync => "membersync",
            DatagramKind::Invalid => "invalid",
        }
    }

    fn of(payload: &[u8]) -> Self {
        match decode(payload, &Limits::default()).map(|e| e.body) {
            Ok(Body::Syn(_)) => DatagramKind::Syn,
            Ok(Body::SynAck(_)) => DatagramKind::SynAck,
            Ok(Body::Ack(_)) => DatagramKind::Ack,
            Ok(Body::Push(_)) => DatagramKind::Push,
            Ok(Body::Leave) => DatagramKind::Leave,
            Ok(Body::Fragment(_)) => DatagramKind::Fragment,
            Ok(Body::Probe(_)) => DatagramKind::Probe,
            Ok(Body::MemberSync(_)) => DatagramKind::MemberSync,
            Err(_) => DatagramKind::Invalid,
        }
    }
}

/// Datagrams and bytes of one [`DatagramKind`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Payload bytes sent.
    pub bytes: u64,
}

impl NetStats {
    /// The counters of one kind.
    pub fn kind(&self, k: DatagramKind) -> KindStats {
        self.by_kind[k as usize]
    }
}

/// A running simulation.
pub struct Sim {
    cfg: SimConfig,
    now_ms: u64,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    /// Current timer epoch of each node (see [`TimerEntry`]).
    epochs: Vec<u64>,
    /// Deadline of each node's live heap entry, if it has one.
    armed: Vec<Option<u64>>,
    /// Reused buffer for the datagrams a node hands out.
    scratch: Vec<Transmit>,
    /// Group of each node; datagrams only flow inside a group.
    group: Vec<usize>,
    isolated: Vec<bool>,
    /// Node pairs (lower index first) whose datagrams are dropped.
    cut: HashSet<(usize, usize)>,
    net: NetStats,
    errors: Vec<(usize, NetworkError)>,
    member_events: Vec<(usize, u64, MemberEvent)>,
    member_counts: MemberEventCounts,
    /// Every node's address, when membership is given.
    directory: Option<Arc<Directory>>,
    /// Streams open (connecting, carrying frames, or failing), by key.
    streams: BTreeMap<u64, SimStream>,
    next_stream: u64,
    /// Reused buffer for the streams a node asks for.
    stream_scratch: Vec<StreamOpen>,
}

/// Membership events seen by all nodes, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemberEventCounts {
    /// A node was heard of for the first time.
    pub joined: u64,
    /// A member was suspected.
    pub suspect: u64,
    /// A suspected member was heard from again.
    pub alive: u64,
    /// A member was declared dead.
    pub dead: u64,
    /// A member announced that it left.
    pub left: u64,
    /// A member came back or restarted.
    pub rejoined: u64,
    /// A member was forgotten.
    pub forgotten: u64,
}

impl MemberEventCounts {
    fn count(&mut self, e: &MemberEvent) {
        let c = match e {
            MemberEvent::Joined(_) => &mut self.joined,
            MemberEvent::Suspect(_) => &mut self.suspect,
            MemberEvent::Alive(_) => &mut self.alive,
            MemberEvent::Dead(_) => &mut self.dead,
            MemberEvent::Left(_) => &mut self.left,
            MemberEvent::Rejoined(_) => &mut self.rejoined,
            MemberEvent::Forgotten(_) => &mut self.forgotten,
            _ => return,
        };
        *c += 1;
    }
}

impl Sim {
    /// Builds the nodes (all started at once) and seeds each with earlier nodes.
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let addrs: Vec<SocketAddr> = (0..cfg.nodes).map(addr_of).collect();
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let mut seeds = Vec::new();
            if i > 0 && cfg.seeds_per_node > 0 {
                seeds.push(addrs[i - 1]);
            }
            for _ in 1..cfg.seeds_per_node.min(i) {
                seeds.push(addrs[rng.random_range(0..i)]);
            }
            seeds.sort();
            seeds.dedup();
            let id = NodeId::new(format!("sim-{i:05}"));
            let store = Arc::new(new_store(Origin::new(id.clone(), 1), cfg.limits));
            nodes.push(SimNode {
                id,
                addr: addrs[i],
                seeds,
                generation: 1,
                skew_ms: 0,
                store,
                proto: None,
                incarnation: 0,
            });
        }
        let cfg_nodes = cfg.nodes;
        let directory = cfg
            .given_membership
            .then(|| Arc::new(Directory::new(addrs.clone())));
        let mut sim = Sim {
            directory,
            now_ms: SIM_EPOCH_MS,
            group: vec![0; cfg.nodes],
            rng,
            cfg,
            nodes,
            queue: BinaryHeap::new(),
            order: 0,
            timers: BinaryHeap::with_capacity(2 * cfg_nodes),
            epochs: vec![0; cfg_nodes],
            armed: vec![None; cfg_nodes],
            scratch: Vec::new(),
            isolated: vec![false; cfg_nodes],
            cut: HashSet::new(),
            net: NetStats::default(),
            errors: Vec::new(),
            member_events: Vec::new(),
            member_counts: MemberEventCounts::default(),
            streams: BTreeMap::new(),
            next_stream: 0,
            stream_scratch: Vec::new(),
        };
        for i in 0..sim.nodes.len() {
            sim.start_protocol(i);
        }
        sim
    }

    fn start_protocol(&mut self, i: usize) {
        let rng_seed = self.rng.random();
        let interval = Duration::from_millis(self.cfg.gossip_interval_ms);
        let n = &mut self.nodes[i];
        let mut cfg = ProtocolConfig::new(n.id.clone(), n.generation, "sim");
        cfg.advertise_addr = Some(n.addr);
        cfg.gossip_interval = interval;
        cfg.fanout = self.cfg.fanout;
        cfg.packet_size = self.cfg.packet_size;
        cfg.tombstone_retention = Duration::from_millis(self.cfg.tombstone_retention_ms);
        cfg.seeds = n.seeds.clone();
        cfg.rng_seed = rng_seed;
        cfg.detector = self
            .cfg
            .detector
            .clone()
            .unwrap_or_else(|| DetectorConfig::for_interval(interval));
        cfg.push = self.cfg.push;
        cfg.max_clock_drift = self.cfg.max_clock_drift;
        cfg.directory = self.directory.clone();
        cfg.streams = self.cfg.streams;
        cfg.stream_threshold = self.cfg.stream_threshold;
        cfg.max_serving_streams = self.cfg.max_serving_streams;
        cfg.stream_frame_size = self.cfg.stream_frame_size;
        cfg.ephemeral_grace = Duration::from_millis(self.cfg.ephemeral_grace_ms);
        n.incarnation += 1;
        // Stagger first rounds across one interval, like nodes started at different times.
        let offset = self.rng.random_range(0..self.cfg.gossip_interval_ms.max(1));
        n.proto = Some(Protocol::new(
            cfg,
            n.store.clone(),
            Instant::from_millis(self.now_ms + offset),
        ));
        self.rearm(i);
    }

    /// Re-reads node `i`'s next timer after a call into it. When the deadline
    /// moved, the previous heap entry goes stale and a fresh one is pushed.
    fn rearm(&mut self, i: usize) {
        let at = self.nodes[i]
            .proto
            .as_ref()
            .and_then(|p| p.poll_timeout())
            .map(Instant::as_millis);
        if at == self.armed[i] {
            return;
        }
        self.epochs[i] += 1;
        self.armed[i] = at;
        if let Some(at) = at {
            self.timers.push(Reverse((at, i, self.epochs[i])));
        }
    }

    /// Forgets node `i`'s timer (it crashed or left).
    fn disarm(&mut self, i: usize) {
        self.epochs[i] += 1;
        self.armed[i] = None;
    }

    /// The next live timer (deadline, node), dropping stale entries on the way.
    fn next_timer(&mut self) -> Option<(u64, usize)> {
        while let Some(&Reverse((at, i, epoch))) = self.timers.peek() {
            if epoch == self.epochs[i] {
                return Some((at, i));
            }
            self.timers.pop();
        }
        None
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Virtual time elapsed since the start, ms.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_ms - SIM_EPOCH_MS
    }

    /// Number of nodes (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> &Arc<Store> {
        &self.nodes[i].store
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> &NodeId {
        &self.nodes[i].id
    }

    /// Node `i`'s protocol counters (default when crashed).
    pub fn stats(&self, i: usize) -> Stats {
        self.nodes[i]
            .proto
            .as_ref()
            .map(|p| p.stats())
            .unwrap_or_default()
    }

    /// Network counters.
    pub fn net_stats(&self) -> NetStats {
        self.net
    }

    /// Errors reported by nodes so far: (node, error).
    pub fn errors(&self) -> &[(usize, NetworkError)] {
        &self.errors
    }
    /// How many membership events of each kind all nodes have seen so far
    /// (counted even when [`SimConfig::record_member_events`] is off).
    pub fn member_event_counts(&self) -> MemberEventCounts {
        self.member_counts
    }

    /// Membership events seen so far: (observer node, virtual ms since start, event).
    pub fn member_events(&self) -> &[(usize, u64, MemberEvent)] {
        &self.member_events
    }

    /// Node `i`'s view of the cluster (empty when crashed).
    pub fn members(&self, i: usize) -> Vec<Member> {
        self.nodes[i]
            .proto
            .as_ref()
            .map(|p| p.members())
            .unwrap_or_default()
    }

    /// The state node `observer` sees node `target` in (`None` if unknown).
    pub fn state_seen(&self, observer: usize, target: usize) -> Option<MemberState> {
        let id = &self.nodes[target].id;
        self.members(observer)
            .into_iter()
            .find(|m| &m.node_id == id)
            .map(|m| m.state)
    }

    /// Stops node `i` gracefully: it announces its departure, then stops.
    pub fn leave(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.leave();
        }
        self.drain(i);
        self.nodes[i].proto = None;
        self.disarm(i);
        self.drop_streams_of(i);
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].proto.is_some()
    }

    /// Node `i`'s wall clock, in ms since the epoch (virtual time shifted
    /// by its skew).
    fn local_ms(&self, i: usize) -> u64 {
        self.now_ms.saturating_add_signed(self.nodes[i].skew_ms)
    }

    /// Node `i`'s clocks: the monotonic one (virtual time; skew never
    /// touches it) and its wall clock.
    fn clocks(&self, i: usize) -> (Instant, WallTime) {
        (
            Instant::from_millis(self.now_ms),
            WallTime::from_unix_ms(self.local_ms(i)),
        )
    }

    /// Writes a value on node `i` at its local time.
    pub fn set(&mut self, i: usize, key: &str, value: &[u8]) -> Record {
        let t = self.local_ms(i);
        let r = self.nodes[i]
            .store
            .write(key, Some(Bytes::copy_from_slice(value)), t);
        self.pushed(i, r.clone());
        r
    }

    /// Writes a value with a [`Lifetime`] on node `i` at its local time
    /// (an expiry in `lifetime` is on that node's wall clock).
    pub fn set_with(&mut self, i: usize, key: &str, value: &[u8], lifetime: Lifetime) -> Record {
        let t = self.local_ms(i);
        let r =
            self.nodes[i]
                .store
                .write_with(key, Some(Bytes::copy_from_slice(value)), lifetime, t);
        self.pushed(i, r.clone());
        r
    }

    /// Node `i`'s wall-clock time now (virtual time plus its skew).
    pub fn wall_ms(&self, i: usize) -> u64 {
        self.local_ms(i)
    }

    /// What node `i` shows for `key` now, as an application reading it
    /// would see it (expired values and those of owners gone hidden).
    pub fn shown(&self, i: usize, key: &str) -> Option<Bytes> {
        self.nodes[i].store.get_at(key, self.local_ms(i))
    }

    fn pushed(&mut self, i: usize, r: Record) {
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.push_local(Instant::from_millis(self.now_ms), vec![r]);
        }
        self.drain(i);
    }

    /// Deletes a key on node `i` at its local time.
    pub fn delete(&mut self, i: usize, key: &str) -> Record {
        let t = self.local_ms(i);
        let r = self.nodes[i].store.write(key, None, t);
        self.pushed(i, r.clone());
        r
    }

    /// Sets the loss probability.
    pub fn set_loss(&mut self, p: f64) {
        self.cfg.loss = p;
    }

    /// Shifts node `i`'s wall clock by `skew_ms` (positive: ahead). Its
    /// monotonic clock, which drives its timers, is not affected.
    pub fn set_clock_skew(&mut self, i: usize, skew_ms: i64) {
        self.nodes[i].skew_ms = skew_ms;
    }

    /// Crashes node `i`: it stops at once, without a goodbye, and loses its state.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].proto = None;
        self.disarm(i);
        self.drop_streams_of(i);
    }

    /// Restarts crashed node `i` with the same id, fresh state and a new generation.
    pub fn restart(&mut self, i: usize) {
        // A node restarted while running crashes first.
        self.crash(i);
        let n = &mut self.nodes[i];
        n.generation += 1;
        n.store = Arc::new(new_store(
            Origin::new(n.id.clone(), n.generation),
            self.cfg.limits,
        ));
        self.start_protocol(i);
    }

    /// Splits the nodes into groups that cannot reach each other; nodes not
    /// listed form one more group.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        self.group = vec![usize::MAX; self.nodes.len()];
        for (g, members) in groups.iter().enumerate() {
            for &m in *members {
                self.group[m] = g;
            }
        }
        self.cut_disconnected_streams();
    }

    /// Cuts node `i` off from everyone (its state and timers keep running).
    pub fn isolate(&mut self, i: usize) {
        self.isolated[i] = true;
        self.cut_disconnected_streams();
    }

    /// Drops every datagram between nodes `a` and `b`, both ways, until
    /// [`Sim::heal`] (both still reach everyone else).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
        self.cut_disconnected_streams();
    }

    /// Ends every partition, isolation and cut.
    pub fn heal(&mut self) {
        self.group = vec![0; self.nodes.len()];
        self.isolated.fill(false);
        self.cut.clear();
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        !self.isolated[a]
            && !self.isolated[b]
            && self.group[a] == self.group[b]
            && !self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// Runs the simulation for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        self.run_to(end);
    }

    /// Runs until `done` holds (checked every `check_every_ms` of virtual
    /// time) or `max_ms` pass. Returns the virtual time it took, or `None`.
    pub fn run_until(
        &mut self,
        max_ms: u64,
        check_every_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now_ms;
        loop {
            if done(self) {
                return Some(self.now_ms - start);
            }
            if self.now_ms - start >= max_ms {
                return None;
            }
            let step = check_every_ms.max(1).min(max_ms - (self.now_ms - start));
            self.run_to(self.now_ms + step);
        }
    }

    fn run_to(&mut self, end_ms: u64) {
        loop {
            let next_msg = self.queue.peek().map(|Reverse(m)| m.at_ms);
            let next_timer = self.next_timer();
            // A datagram or stream step due at the same time as a timer comes first.
            let (next, is_msg) = match (next_msg, next_timer) {
                (Some(m), Some((t, _))) => (m.min(t), m <= t),
                (Some(m), None) => (m, true),
                (None, Some((t, _))) => (t, false),
                (None, None) => (end_ms, false),
            };
            if next > end_ms || (next_msg.is_none() && next_timer.is_none()) {
                self.now_ms = self.now_ms.max(end_ms);
                return;
            }
            self.now_ms = self.now_ms.max(next);
            if is_msg {
                let Reverse(m) = self.queue.pop().expect("peeked");
                match m.what {
                    Delivery::Datagram { to, from, payload } => self.deliver(to, from, &payload),
                    Delivery::Stream(key) => self.stream_step(key),
                }
            } else if let Some((_, i)) = next_timer {
                // The entry is used up: whatever the node's next deadline is,
                // it gets a fresh entry.
                self.timers.pop();
                self.disarm(i);
                let (now, wall) = self.clocks(i);
                if let Some(p) = self.nodes[i].proto.as_mut() {
                    p.handle_timeout(now, wall);
                }
                self.drain(i);
            }
        }
    }

    fn deliver(&mut self, to: usize, from: SocketAddr, payload: &[u8]) {
        let (now, wall) = self.clocks(to);
        let Some(p) = self.nodes[to].proto.as_mut() else {
            self.net.cut += 1;
            return;
        };
        self.net.delivered += 1;
        p.handle_datagram(now, wall, from, payload);
        self.drain(to);
    }

    /// Collects what node `i` wants to send and report after a call into it,
    /// puts its datagrams on the network, opens the streams it asks for and
    /// re-arms its timer.
    fn drain(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.scratch);
        let mut opens = std::mem::take(&mut self.stream_scratch);
        if let Some(p) = self.nodes[i].proto.as_mut() {
            while let Some(t) = p.poll_transmit() {
                out.push(t);
            }
            while let Some(o) = p.poll_stream_open() {
                opens.push(o);
            }
            while let Some(ev) = p.poll_event() {
                match ev {
                    Event::Error(e) => self.errors.push((i, e)),
                    Event::Member(m) => {
                        self.member_counts.count(&m);
                        if self.cfg.record_member_events {
                            self.member_events.push((i, self.now_ms - SIM_EPOCH_MS, m));
                        }
                    }
                    _ => {}
                }
            }
        }
        let from = self.nodes[i].addr;
        for t in out.drain(..) {
            self.send(i, from, t);
        }
        self.scratch = out;
        for o in opens.drain(..) {
            self.open_stream(i, o);
        }
        self.stream_scratch = opens;
        self.rearm(i);
    }

    fn send(&mut self, i: usize, from: SocketAddr, t: Transmit) {
        self.net.sent += 1;
        self.net.bytes += t.payload.len() as u64;
        self.net.largest = self.net.largest.max(t.payload.len() as u64);
        if self.cfg.classify_datagrams {
            let k = &mut self.net.by_kind[DatagramKind::of(&t.payload) as usize];
            k.sent += 1;
            k.bytes += t.payload.len() as u64;
        }
        let Some(to) = index_of(t.to).filter(|&j| j < self.nodes.len()) else {
            self.net.cut += 1;
            return;
        };
        if !self.connected(i, to) {
            self.net.cut += 1;
            return;
        }
        if self.rng.random_bool(self.cfg.loss.clamp(0.0, 1.0)) {
            self.net.lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.cfg.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lat = self.rng.random_range(
                self.cfg.min_latency_ms..=self.cfg.max_latency_ms.max(self.cfg.min_latency_ms),
            );
            self.order += 1;
            self.queue.push(Reverse(InFlight {
                at_ms: self.now_ms + lat,
                order: self.order,
                what: Delivery::Datagram {
                    to,
                    from,
                    payload: t.payload.clone(),
                },
            }));
        }
    }

    /// Streams open now (connecting, carrying frames, or failing).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The streams carried now (connecting or carrying frames), as
    /// (client, server) node pairs.
    pub fn stream_pairs(&self) -> Vec<(usize, usize)> {
        self.streams
            .values()
            .filter_map(|s| Some((s.client, Self::carried(s)?)))
            .collect()
    }

    /// A one-way latency drawn from the configured range.
    fn latency(&mut self) -> u64 {
        self.rng.random_range(
            self.cfg.min_latency_ms..=self.cfg.max_latency_ms.max(self.cfg.min_latency_ms),
        )
    }

    /// Schedules stream `key`'s next step at `at_ms`.
    fn schedule_stream(&mut self, key: u64, at_ms: u64) {
        self.order += 1;
        self.queue.push(Reverse(InFlight {
            at_ms,
            order: self.order,
            what: Delivery::Stream(key),
        }));
    }

    /// Node `client` asks for a stream: the connection reaches the server
    /// after a latency, or the client learns after one that it failed.
    fn open_stream(&mut self, client: usize, o: StreamOpen) {
        self.net.streams_opened += 1;
        self.net.stream_bytes += o.bytes.len() as u64;
        let latency_ms = self.latency();
        let server = index_of(o.to).filter(|&j| j < self.nodes.len() && j != client);
        let reachable = server.is_some_and(|j| self.is_up(j) && self.connected(client, j));
        let step = match reachable {
            true => StreamStep::Connect(o.bytes),
            false => {
                self.net.streams_unreachable += 1;
                StreamStep::Fail
            }
        };
        let key = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(
            key,
            SimStream {
                client,
                client_inc: self.nodes[client].incarnation,
                client_id: o.id,
                server,
                server_inc: server.map_or(0, |j| self.nodes[j].incarnation),
                server_id: None,
                latency_ms,
                step,
            },
        );
        self.schedule_stream(key, self.now_ms + latency_ms);
    }

    /// Whether node `i` still runs the protocol instance `inc`.
    fn runs(&self, i: usize, inc: u64) -> bool {
        self.nodes[i].proto.is_some() && self.nodes[i].incarnation == inc
    }

    /// Tells node `i`, if it still runs instance `inc`, that its stream
    /// `id` closed.
    fn close_side(&mut self, i: usize, inc: u64, id: StreamId) {
        if !self.runs(i, inc) {
            return;
        }
        let now = Instant::from_millis(self.now_ms);
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.handle_stream_closed(now, id);
        }
        self.drain(i);
    }

    /// Forgets stream `key` and tells both sides (the server only if it
    /// accepted it) that the connection closed.
    fn close_stream(&mut self, key: u64) {
        let Some(s) = self.streams.remove(&key) else {
            return;
        };
        if let (Some(server), Some(id)) = (s.server, s.server_id) {
            self.close_side(server, s.server_inc, id);
        }
        self.close_side(s.client, s.client_inc, s.client_id);
    }

    /// Whether stream `s` is carried between its two sides (connecting or
    /// carrying frames), as opposed to failing.
    fn carried(s: &SimStream) -> Option<usize> {
        match s.step {
            StreamStep::Fail => None,
            StreamStep::Connect(_) | StreamStep::Frame(_) => s.server,
        }
    }

    /// Node `i` stopped or restarts: its streams are cut, the other side of
    /// each told at once. Its protocol instance never hears of them again.
    fn drop_streams_of(&mut self, i: usize) {
        let keys: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.client == i || Self::carried(s) == Some(i))
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.net.streams_cut += 1;
            self.close_stream(key);
        }
    }

    /// The network changed: streams whose sides can no longer reach each
    /// other are cut, both sides told at once.
    fn cut_disconnected_streams(&mut self) {
        let keys: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| Self::carried(s).is_some_and(|j| !self.connected(s.client, j)))
            .map(|(&k, _)| k)
            .collect();
        for key in keys {
            self.net.streams_cut += 1;
            self.close_stream(key);
        }
    }

    /// Stream `key`'s scheduled step (nothing when the stream is gone).
    fn stream_step(&mut self, key: u64) {
        let Some(s) = self.streams.get_mut(&key) else {
            return;
        };
        let step = std::mem::replace(&mut s.step, StreamStep::Fail);
        let (client, client_inc, client_id) = (s.client, s.client_inc, s.client_id);
        let server = s.server.map(|j| (j, s.server_inc));
        let live = |sim: &Sim| {
            sim.runs(client, client_inc)
                && server.is_some_and(|(j, inc)| sim.runs(j, inc) && sim.connected(client, j))
        };
        match step {
            StreamStep::Fail => self.close_stream(key),
            // Crashes and partitions cut streams when they happen; this
            // only guards against a change that did not.
            _ if !live(self) => {
                self.net.streams_cut += 1;
                self.close_stream(key);
            }
            StreamStep::Connect(opening) => {
                let (j, _) = server.expect("live");
                self.connect_stream(key, client, j, &opening);
            }
            StreamStep::Frame(frame) => {
                if self.rng.random_bool(self.cfg.stream_cut.clamp(0.0, 1.0)) {
                    self.net.streams_cut += 1;
                    self.close_stream(key);
                    return;
                }
                self.net.stream_frames += 1;
                self.net.stream_bytes += frame.len() as u64;
                self.net.stream_largest_frame =
                    self.net.stream_largest_frame.max(frame.len() as u64);
                let (now, wall) = self.clocks(client);
                let p = self.nodes[client].proto.as_mut().expect("live");
                let taken = p.handle_stream_data(now, wall, client_id, &frame);
                self.drain(client);
                match taken {
                    Ok(()) => self.pull_frame(key),
                    Err(_) => {
                        self.net.streams_rejected += 1;
                        self.close_stream(key);
                    }
                }
            }
        }
    }

    /// The connection of stream `key` reaches node `server`: it accepts it
    /// (or not) and reads the opening; the first frame follows.
    fn connect_stream(&mut self, key: u64, client: usize, server: usize, opening: &[u8]) {
        let (now, wall) = self.clocks(server);
        let from = self.nodes[client].addr;
        let p = self.nodes[server].proto.as_mut().expect("live");
        let (id, read) = match p.accept_stream(now, from) {
            Ok(id) => (Some(id), p.handle_stream_data(now, wall, id, opening)),
            Err(e) => (None, Err(e)),
        };
        self.drain(server);
        let s = self.streams.get_mut(&key).expect("stream of this step");
        // Told when the stream closes, even when it refused the opening
        // (a no-op for the protocol, as for the real driver).
        s.server_id = id;
        match read {
            Ok(()) => self.pull_frame(key),
            Err(_) => {
                // The refusal reaches the client a latency later.
                self.net.streams_refused += 1;
                let at = self.now_ms + s.latency_ms;
                self.schedule_stream(key, at);
            }
        }
    }
    /// Asks the server of stream `key` for its next frame, which reaches the
    /// client after its transmission time and the connection's latency; or
    /// closes the stream when the server has finished.
    fn pull_frame(&mut self, key: u64) {
        let s = &self.streams[&key];
        let (server, id) = match (s.server, s.server_id) {
            (Some(j), Some(id)) => (j, id),
            _ => unreachable!("only accepted streams carry frames"),
        };
        let now = Instant::from_millis(self.now_ms);
        let p = self.nodes[server].proto.as_mut().expect("live");
        let next = p.poll_stream_send(now, id);
        self.drain(server);
        match next {
            StreamSend::Data(frame) => {
                let s = self.streams.get_mut(&key).expect("stream of this step");
                let sending = (frame.len() as u64).div_ceil(self.cfg.stream_bytes_per_ms.max(1));
                let at = self.now_ms + sending + s.latency_ms;
                s.step = StreamStep::Frame(frame);
                self.schedule_stream(key, at);
            }
            StreamSend::Finished => {
                self.net.streams_finished += 1;
                self.close_stream(key);
            }
            StreamSend::Wait => {
                self.net.streams_stalled += 1;
                self.close_stream(key);
            }
        }
    }

    /// Node `i`'s keys holding values, with their values.
    pub fn contents(&self, i: usize) -> BTreeMap<String, Bytes> {
        self.nodes[i]
            .store
            .records()
            .into_iter()
            .filter_map(|r| Some((r.key.to_string(), r.value?)))
            .collect()
    }

    /// Whether every running node holds exactly the same records (tombstones
    /// and versions included).
    pub fn converged(&self) -> bool {
        self.converged_among(&(0..self.nodes.len()).collect::<Vec<_>>())
    }

    /// Whether the running nodes among `nodes` hold the same records.
    pub fn converged_among(&self, nodes: &[usize]) -> bool {
        let mut up = nodes.iter().copied().filter(|&i| self.is_up(i));
        let Some(first) = up.next() else {
            return true;
        };
        let reference = self.nodes[first].store.records();
        up.all(|i| self.nodes[i].store.records() == reference)
    }

    /// Whether every running node has the same watermarks: it vouches for
    /// the same writes of every origin, not only holds the same records (a
    /// node may hold them all and still ask for them until its watermarks
    /// are raised, as after a re-synchronisation).
    pub fn watermarks_converged(&self) -> bool {
        let digest = |i: usize| {
            let mut d: Vec<(Origin, u64)> = self.nodes[i]
                .store
                .digest()
                .entries
                .into_iter()
                .filter(|e| e.watermark > 0)
                .map(|e| (e.origin, e.watermark))
                .collect();
            d.sort();
            d
        };
        let mut up = (0..self.nodes.len()).filter(|&i| self.is_up(i));
        let Some(first) = up.next() else {
            return true;
        };
        let reference = digest(first);
        up.all(|i| digest(i) == reference)
    }

    /// Entries for any of `origins` in the digests of the running nodes
    /// among `nodes`, summed (0 once they retired them all and went
    /// silent; see `Store::retire_origins`).
    pub fn digest_entries_of(&self, nodes: &[usize], origins: &[Origin]) -> usize {
        nodes
            .iter()
            .filter(|&&i| self.is_up(i))
            .map(|&i| {
                let digest = self.nodes[i].store.digest();
                digest
                    .entries
                    .iter()
                    .filter(|e| origins.contains(&e.origin))
                    .count()
            })
            .sum()
    }

    /// Whether every running node among `nodes` shows `value` for `key`
    /// (see [`Sim::shown`]).
    pub fn all_show(&self, nodes: &[usize], key: &str, value: Option<&[u8]>) -> bool {
        nodes
            .iter()
            .filter(|&&i| self.is_up(i))
            .all(|&i| self.shown(i, key).as_deref() == value)
    }

    /// Whether every running node returns `value` for `key`.
    pub fn all_have(&self, key: &str, value: Option<&[u8]>) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.proto.is_some())
            .all(|n| n.store.get(key).as_deref() == value)
    }
}

fn addr_of(i: usize) -> SocketAddr {
    // Virtual addresses: no socket is ever bound to them.
    let ip = Ipv4Addr::new(10, 200, (i >> 8) as u8, (i & 0xff) as u8);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

fn index_of(a: SocketAddr) -> Option<usize> {
    match a.ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 10 && o[1] == 200).then(|| (usize::from(o[2]) << 8) | usize::from(o[3]))
        }
        IpAddr::V6(_) => None,
    }
}

/// The seed to use: `GOSSIPKV_SIM_SEED` if set, else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("GOSSIPKV_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Prints the seed of a scenario if the test panics while it is alive, so the
/// failure can be replayed with `GOSSIPKV_SIM_SEED=<seed>`.
#[derive(Debug)]
pub struct SeedGuard {
    name: &'static str,
    seed: u64,
}

impl SeedGuard {
    /// Guards scenario `name` run with `seed`.
    pub fn new(name: &'static str, seed: u64) -> Self {
        SeedGuard { name, seed }
    }
}

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation {} failed with seed {}; replay with GOSSIPKV_SIM_SEED={} cargo test -p gossipkv-sim {}",
                self.name, self.seed, self.seed, self.name
            );
        }
    }
}
