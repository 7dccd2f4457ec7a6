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
//! What it deliberately does not model: bandwidth limits, and the tokio driver
//! (the real driver is exercised by the loopback tests of the `gossipkv` crate).
//!
//! Scheduling costs O(log N) per event: datagrams in flight and node timers
//! live in two min-heaps, so thousands of nodes can be simulated (see the
//! [`scale`] module for dissemination measurements).

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
    Protocol, ProtocolConfig, Stats, Transmit, WallTime,
};
use gossipkv_proto::{decode, Body, Limits};
use gossipkv_storage::{NodeId, Origin, Record, Store};
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
        }
    }
}

struct SimNode {
    id: NodeId,
    addr: SocketAddr,
    seeds: Vec<SocketAddr>,
    generation: u64,
    skew_ms: i64,
    store: Arc<Store>,
    proto: Option<Protocol>,
}

/// A datagram on its way. Ordered by delivery time, then by send order, so
/// simultaneous deliveries happen in the order they were sent.
struct InFlight {
    at_ms: u64,
    order: u64,
    to: usize,
    from: SocketAddr,
    /// Shared with the sender's buffer (and the duplicate, if any): no copy.
    payload: Bytes,
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
            let store = Arc::new(Store::new(Origin::new(id.clone(), 1)));
            nodes.push(SimNode {
                id,
                addr: addrs[i],
                seeds,
                generation: 1,
                skew_ms: 0,
                store,
                proto: None,
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
    }

    /// Restarts crashed node `i` with the same id, fresh state and a new generation.
    pub fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.generation += 1;
        n.store = Arc::new(Store::new(Origin::new(n.id.clone(), n.generation)));
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
    }

    /// Cuts node `i` off from everyone (its state and timers keep running).
    pub fn isolate(&mut self, i: usize) {
        self.isolated[i] = true;
    }

    /// Drops every datagram between nodes `a` and `b`, both ways, until
    /// [`Sim::heal`] (both still reach everyone else).
    pub fn cut(&mut self, a: usize, b: usize) {
        self.cut.insert((a.min(b), a.max(b)));
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
            // A datagram due at the same time as a timer is delivered first.
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
                self.deliver(m);
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

    fn deliver(&mut self, m: InFlight) {
        let (now, wall) = self.clocks(m.to);
        let Some(p) = self.nodes[m.to].proto.as_mut() else {
            self.net.cut += 1;
            return;
        };
        self.net.delivered += 1;
        p.handle_datagram(now, wall, m.from, &m.payload);
        self.drain(m.to);
    }

    /// Collects what node `i` wants to send and report after a call into it,
    /// puts its datagrams on the network and re-arms its timer.
    fn drain(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.scratch);
        if let Some(p) = self.nodes[i].proto.as_mut() {
            while let Some(t) = p.poll_transmit() {
                out.push(t);
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
                to,
                from,
                payload: t.payload.clone(),
            }));
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
