//! Cluster membership and failure detection, sans-IO, in the manner of SWIM
//! (Das et al.) with the suspicion mechanism that makes it robust to loss.
//!
//! Failure detection is by probing. Every gossip round the protocol sends its
//! Syn to the next member of a shuffled round-robin order, and the answer is
//! the acknowledgement. A member that does not answer within the probe
//! timeout (half an interval) is *doubted* ([`Membership::doubt`]) and
//! probed through a few others as well; while doubted it is probed directly
//! and through others, and one that still does not answer for an interval is
//! *suspected*. The suspicion spreads as a rumor; the member
//! refutes it by raising its *incarnation* (a counter it raises only for that),
//! which overrides the rumor everywhere. A suspicion nobody refutes in time
//! becomes death, which spreads the same way. A node that shuts down
//! announces it (`left`).
//!
//! Rumors (suspicions, deaths, refutations, departures, restarts) ride on
//! the datagrams the protocol sends anyway, each a bounded number of times
//! (3 log2 n). Every header also carries a fingerprint of the sender's member
//! list (ids and generations); replies to a node whose fingerprint differs
//! carry random members, and the protocol reconciles the two lists bucket by
//! bucket ([`Membership::reconcile`]). That is how joins spread, and how a
//! joining node learns the cluster. In a quiet cluster nothing
//! membership-related travels but the sender's header, so idle traffic does
//! not grow with the number of members.
//!
//! Dead members are still contacted now and then, so a healed partition
//! rejoins by itself, and are forgotten after a grace period. Liveness is
//! kept out of the data digest.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;

use gossipkv_proto::{member_size_hint, Liveness, Sender};
use gossipkv_storage::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::reassembly::message_id;

/// The state of a member, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answers probes (or was vouched for by others).
    Alive,
    /// Did not answer probes, directly or through others; declared dead
    /// unless it refutes the suspicion in time.
    Suspect,
    /// Suspected for too long: considered gone (it is still contacted now
    /// and then, and comes back as soon as it refutes its death).
    Dead,
    /// Announced that it left the cluster.
    Left,
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        })
    }
}

/// A member of the cluster, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's node id.
    pub node_id: NodeId,
    /// Where it can be reached.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// Its generation (changes when it restarts without its state).
    pub generation: u64,
    /// Its incarnation within the generation: the member raises it to refute
    /// a suspicion or death of itself.
    pub incarnation: u64,
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node was heard of for the first time.
    Joined(Member),
    /// A member did not answer probes and is suspected.
    Suspect(Member),
    /// A suspected member refuted the suspicion.
    Alive(Member),
    /// A member is considered dead.
    Dead(Member),
    /// A member announced that it left.
    Left(Member),
    /// A dead or departed member came back, or a member restarted (new generation).
    Rejoined(Member),
    /// A dead or departed member was forgotten after the grace period.
    Forgotten(Member),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Suspect(m)
            | MemberEvent::Alive(m)
            | MemberEvent::Dead(m)
            | MemberEvent::Left(m)
            | MemberEvent::Rejoined(m)
            | MemberEvent::Forgotten(m) => m,
        }
    }
}

/// Tuning of the failure detector.
#[derive(Clone, Debug)]
pub struct DetectorConfig {
    /// How long a probe waits for its answer before the member is doubted
    /// and other members are asked to probe it too, ms.
    pub probe_timeout_ms: u64,
    /// How many members are asked to probe a member that did not answer.
    pub indirect_probes: usize,
    /// How long a doubted member is probed (directly and through others)
    /// before it is suspected, ms: a member that answers meanwhile is never
    /// suspected, so one lost datagram does not raise a suspicion.
    pub confirm_timeout_ms: u64,
    /// How long a member stays suspect before it is declared dead, ms (it is
    /// probed directly meanwhile and told of the suspicion, so that it can
    /// refute it).
    pub suspect_timeout_ms: u64,
    /// How long dead or departed members are remembered, ms.
    pub forget_after_ms: u64,
}

impl DetectorConfig {
    /// Defaults derived from the gossip interval.
    pub fn for_interval(interval_ms: u64) -> Self {
        DetectorConfig {
            probe_timeout_ms: (interval_ms / 2).max(1),
            indirect_probes: 3,
            confirm_timeout_ms: interval_ms.max(1),
            suspect_timeout_ms: (3 * interval_ms).max(1_000),
            forget_after_ms: 3_600_000,
        }
    }
}

/// Builds a [`MemberEvent`] of one kind.
type MakeEvent = fn(Member) -> MemberEvent;

#[derive(Debug, Clone)]
struct Entry {
    addr: SocketAddr,
    /// Length of `addr` as text (what it costs in a member entry).
    addr_len: usize,
    generation: u64,
    incarnation: u64,
    state: MemberState,
    since_ms: u64,
    /// Since when this alive member is doubted (it missed a probe's answer
    /// and is being probed again).
    doubt_since: Option<u64>,
    /// The member-list fingerprint the member last sent us (0: none yet).
    members_hash: u64,
    /// Its [`member_key`].
    key: u64,
}

impl Entry {
    /// The entry of a member first heard of, or heard of in a new
    /// generation, from `s` (the sender of a datagram if `direct`).
    fn first(node: &NodeId, s: &Sender, addr: SocketAddr, direct: bool, now_ms: u64) -> Entry {
        Entry {
            addr,
            addr_len: addr_text_len(addr),
            generation: s.generation,
            incarnation: s.incarnation,
            state: if s.left {
                MemberState::Left
            } else {
                MemberState::Alive
            },
            since_ms: now_ms,
            doubt_since: None,
            members_hash: if direct { s.members_hash } else { 0 },
            key: member_key(node, s.generation),
        }
    }
}

/// Buckets a member list is split into for reconciliation.
pub(crate) const BUCKETS: usize = 32;

/// The bucket of a member key.
fn bucket_of(key: u64) -> usize {
    (key >> 59) as usize % BUCKETS
}

/// Whether a member in `state` counts in the member-list fingerprint: live
/// members only, so that nodes that learned of a dead or departed member at
/// different times (or never) still agree.
fn listed(state: MemberState) -> bool {
    matches!(state, MemberState::Alive | MemberState::Suspect)
}

/// Contribution of one node incarnation to a member-list fingerprint.
fn member_key(node: &NodeId, generation: u64) -> u64 {
    let mut bytes = Vec::with_capacity(node.as_str().len() + 8);
    bytes.extend_from_slice(node.as_str().as_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    message_id(&bytes)
}

/// The membership table of one node.
#[derive(Debug)]
pub(crate) struct Membership {
    local: NodeId,
    local_generation: u64,
    cfg: DetectorConfig,
    members: HashMap<NodeId, Entry>,
    /// Members forgotten after their grace period: (generation, incarnation,
    /// when), so that stale gossip does not bring them back.
    forgotten: HashMap<NodeId, (u64, u64, u64)>,
    events: VecDeque<MemberEvent>,
    /// Members with a rumor to spread, in the order they are sent round-robin.
    news: VecDeque<NodeId>,
    /// Transmissions left per member in `news`.
    news_left: HashMap<NodeId, u32>,
    /// Transmissions left of our own entry (after we refuted a rumor).
    self_news: u32,
    /// XOR of [`member_key`] over the known members and ourselves.
    hash: u64,
    /// The same per bucket ([`bucket_of`]).
    buckets: [u64; BUCKETS],
    /// When `hash` last changed (a join, restart or removal).
    hash_changed_ms: u64,
    /// For how long after a change of `hash` first messages carry samples
    /// too (three gossip intervals).
    settle_ms: u64,
    /// Every member's id, for uniform sampling; rebuilt after joins and
    /// removals (`ids_stale`).
    ids: Vec<NodeId>,
    ids_stale: bool,
    /// The member at each known address.
    by_addr: HashMap<SocketAddr, NodeId>,
}

/// A member sample being filled (see [`Membership::sample`]).
struct Picker<'a> {
    members: &'a HashMap<NodeId, Entry>,
    out: Vec<Sender>,
    used: usize,
    limit: usize,
}

impl Picker<'_> {
    /// Adds `node` if known and not picked yet, and its entry keeps the
    /// sample within the limit. Returns `false` only when it did not fit.
    fn offer(&mut self, node: &NodeId) -> bool {
        let Some(e) = self.members.get(node) else {
            return true;
        };
        if self.out.iter().any(|s| &s.node_id == node) {
            return true;
        }
        let cost = member_size_hint(node.as_str().len(), e.addr_len);
        if self.used + cost > self.limit {
            return false;
        }
        self.used += cost;
        self.out.push(Membership::entry(node, e));
        true
    }
}

impl Membership {
    pub(crate) fn new(
        local: NodeId,
        local_generation: u64,
        interval_ms: u64,
        cfg: DetectorConfig,
    ) -> Self {
        let hash = member_key(&local, local_generation);
        let mut buckets = [0; BUCKETS];
        buckets[bucket_of(hash)] = hash;
        Membership {
            buckets,
            local,
            local_generation,
            cfg,
            hash_changed_ms: 0,
            settle_ms: 3 * interval_ms,
            members: HashMap::new(),
            forgotten: HashMap::new(),
            events: VecDeque::new(),
            news: VecDeque::new(),
            news_left: HashMap::new(),
            self_news: 0,
            hash,
            ids: Vec::new(),
            ids_stale: false,
            by_addr: HashMap::new(),
        }
    }

    /// Fingerprint of the member list (ids and generations, ours included).
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// The fingerprints of the buckets of the member list.
    pub(crate) fn buckets(&self) -> Vec<u64> {
        self.buckets.to_vec()
    }

    /// Adds or removes a member key from the fingerprints.
    fn toggle(&mut self, key: u64, now_ms: u64) {
        self.hash ^= key;
        self.buckets[bucket_of(key)] ^= key;
        self.hash_changed_ms = now_ms;
    }

    /// Our members (any state) in the buckets whose fingerprints differ from
    /// `theirs`, in random order, within `budget` bytes of entries; `None`
    /// when no bucket differs (or `theirs` is not a bucket list).
    pub(crate) fn reconcile(
        &self,
        theirs: &[u64],
        budget: usize,
        rng: &mut impl Rng,
    ) -> Option<Vec<Sender>> {
        if theirs.len() != BUCKETS {
            return None;
        }
        let differs: Vec<bool> = (0..BUCKETS).map(|i| theirs[i] != self.buckets[i]).collect();
        if !differs.iter().any(|&d| d) {
            return None;
        }
        let mut candidates: Vec<(&NodeId, &Entry)> = self
            .members
            .iter()
            .filter(|(_, e)| listed(e.state) && differs[bucket_of(e.key)])
            .collect();
        // Sorted first, so that a seeded run does the same every time.
        candidates.sort_unstable_by(|a, b| a.0.cmp(b.0));
        candidates.shuffle(rng);
        let mut out = Vec::new();
        let mut used = 0;
        for (n, e) in candidates {
            let cost = member_size_hint(n.as_str().len(), e.addr_len);
            if used + cost > budget {
                break;
            }
            used += cost;
            out.push(Self::entry(n, e));
        }
        Some(out)
    }

    /// How many times a rumor is sent: 3 ⌈log2(n + 2)⌉ for n members.
    fn retransmits(&self) -> u32 {
        let n = self.members.len() as u32 + 2;
        3 * (u32::BITS - (n - 1).leading_zeros())
    }

    /// Queues a rumor about `node` (its entry as we see it when sent), or
    /// renews its transmissions if it is queued already.
    fn spread(&mut self, node: &NodeId) {
        let times = self.retransmits();
        match self.news_left.get_mut(node) {
            Some(left) => *left = (*left).max(times),
            None => {
                // Fresh rumors go first; sent ones queue up behind the rest.
                self.news_left.insert(node.clone(), times);
                self.news.push_front(node.clone());
            }
        }
    }

    /// Queues our own entry as a rumor (after a refutation).
    pub(crate) fn spread_self(&mut self) {
        self.self_news = self.retransmits();
    }

    /// Whether rumors are waiting to be spread, or the member list changed
    /// in the last three intervals: the cluster is not quiet.
    pub(crate) fn unsettled(&self, now_ms: u64) -> bool {
        !self.news.is_empty()
            || self.self_news > 0
            || now_ms.saturating_sub(self.hash_changed_ms) < self.settle_ms
    }

    /// The wire entry of a member.
    fn entry(node: &NodeId, e: &Entry) -> Sender {
        Sender {
            node_id: node.clone(),
            generation: e.generation,
            addr: Some(e.addr),
            incarnation: e.incarnation,
            left: e.state == MemberState::Left,
            liveness: match e.state {
                MemberState::Suspect => Liveness::Suspect,
                MemberState::Dead => Liveness::Dead,
                MemberState::Alive | MemberState::Left => Liveness::Alive,
            },
            members_hash: 0,
        }
    }

    /// Member entries for a datagram to `to` (None: a node we know nothing
    /// of), within `budget` bytes: `me` if our own rumor is pending, the
    /// receiver's own entry when we hold it suspect or dead (so that it
    /// refutes), pending rumors (each send counts), then members picked
    /// uniformly at random if the receiver is unknown, or if its member-list
    /// fingerprint differs from ours and either this is a `reply` to a
    /// datagram that carried it or our list changed in the last three
    /// intervals (otherwise the fingerprint we hold may be long stale, and
    /// a settled node would send samples on every first contact). Costs
    /// O(sample), not O(members).
    pub(crate) fn sample(
        &mut self,
        me: &Sender,
        to: Option<&NodeId>,
        reply: bool,
        now_ms: u64,
        budget: usize,
        rng: &mut impl Rng,
    ) -> Vec<Sender> {
        let mut pick = Picker {
            members: &self.members,
            out: Vec::new(),
            used: 0,
            limit: budget,
        };
        if self.self_news > 0 {
            let cost = member_size_hint(me.node_id.as_str().len(), me.addr_len());
            if cost <= budget {
                pick.used += cost;
                pick.out.push(Sender {
                    members_hash: 0,
                    ..me.clone()
                });
                self.self_news -= 1;
            }
        }
        let target = to.and_then(|n| self.members.get(n).map(|e| (n, e)));
        if let Some((n, e)) = target {
            if matches!(e.state, MemberState::Suspect | MemberState::Dead) {
                pick.offer(n);
            }
        }
        for _ in 0..self.news.len() {
            let Some(node) = self.news.pop_front() else {
                break;
            };
            let Some(left) = self.news_left.get_mut(&node) else {
                continue;
            };
            if !pick.offer(&node) {
                self.news.push_front(node);
                break;
            }
            *left -= 1;
            if *left == 0 {
                self.news_left.remove(&node);
            } else {
                self.news.push_back(node);
            }
        }
        let differs = match target {
            None => true,
            Some((_, e)) => {
                e.members_hash != self.hash
                    && (reply || now_ms.saturating_sub(self.hash_changed_ms) < self.settle_ms)
            }
        };
        if differs && !self.members.is_empty() {
            if self.ids_stale {
                self.ids = self.members.keys().cloned().collect();
                self.ids.sort();
                self.ids_stale = false;
            }
            let n = self.ids.len();
            for _ in 0..(2 * n).min(256) {
                if !pick.offer(&self.ids[rng.random_range(0..n)]) {
                    break;
                }
            }
        }
        pick.out
    }

    /// Number of members in the given states.
    pub(crate) fn count_in(&self, states: &[MemberState]) -> usize {
        self.members
            .values()
            .filter(|e| states.contains(&e.state))
            .count()
    }

    fn member(node: &NodeId, e: &Entry) -> Member {
        Member {
            node_id: node.clone(),
            addr: e.addr,
            state: e.state,
            generation: e.generation,
            incarnation: e.incarnation,
        }
    }

    /// Moves `node` to `state` at `now_ms`, reports the change and spreads it.
    fn change(&mut self, node: &NodeId, state: MemberState, now_ms: u64, make: MakeEvent) {
        if let Some(e) = self.members.get_mut(node) {
            let toggles = listed(e.state) != listed(state);
            e.state = state;
            e.since_ms = now_ms;
            e.doubt_since = None;
            let (m, key) = (Self::member(node, e), e.key);
            if toggles {
                self.toggle(key, now_ms);
            }
            self.events.push_back(make(m));
            self.spread(node);
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// A rumor about ourselves: returns the incarnation to take if it must be
    /// refuted (a suspicion or death of our generation at an incarnation at
    /// least ours).
    pub(crate) fn refutes(&self, s: &Sender, incarnation: u64) -> Option<u64> {
        (s.node_id == self.local
            && s.generation == self.local_generation
            && !s.left
            && s.liveness != Liveness::Alive
            && s.incarnation >= incarnation)
            .then(|| s.incarnation.checked_add(1))
            .flatten()
    }

    /// Takes news about a node: the sender of a datagram (`direct`, with the
    /// address it came from: evidence that it is alive) or a member entry
    /// (a rumor).
    pub(crate) fn observe(&mut self, s: &Sender, direct: Option<SocketAddr>, now_ms: u64) {
        if s.node_id == self.local {
            return;
        }
        let Some(addr) = direct.or(s.addr) else {
            return;
        };
        // A direct sender is alive whatever it says of itself.
        let liveness = if direct.is_some() {
            Liveness::Alive
        } else {
            s.liveness
        };
        let node = s.node_id.clone();
        let Some(e) = self.members.get_mut(&node) else {
            // Rumors of a suspicion or death of a member we do not know
            // teach nothing worth keeping.
            if liveness != Liveness::Alive {
                return;
            }
            if let Some(&(g, inc, _)) = self.forgotten.get(&node) {
                if (s.generation, s.incarnation) <= (g, inc) && direct.is_none() {
                    return;
                }
                self.forgotten.remove(&node);
            }
            let e = Entry::first(&node, s, addr, direct.is_some(), now_ms);
            if listed(e.state) {
                self.toggle(e.key, now_ms);
            }
            let m = Self::member(&node, &e);
            self.members.insert(node.clone(), e);
            self.ids_stale = true;
            self.claim_addr(addr, &node, direct.is_some());
            self.events.push_back(MemberEvent::Joined(m));
            // A join is not rumored: it changes member-list fingerprints,
            // and reconciliation carries it to nodes that lack it.
            return;
        };
        if s.generation < e.generation {
            return;
        }
        if direct.is_some() {
            e.doubt_since = None;
            e.members_hash = s.members_hash;
            if e.addr != addr {
                if self.by_addr.get(&e.addr) == Some(&node) {
                    self.by_addr.remove(&e.addr);
                }
                e.addr = addr;
                e.addr_len = addr_text_len(addr);
            }
            // Heard from there: it is this node's address now, whoever was
            // known there before (see `claim_addr`).
            self.by_addr.insert(addr, node.clone());
        }
        if s.generation > e.generation {
            if liveness != Liveness::Alive {
                return;
            }
            let old_addr = e.addr;
            let old = listed(e.state).then_some(e.key);
            *e = Entry::first(&node, s, addr, direct.is_some(), now_ms);
            let new = listed(e.state).then_some(e.key);
            let m = Self::member(&node, e);
            if self.by_addr.get(&old_addr) == Some(&node) {
                self.by_addr.remove(&old_addr);
            }
            self.claim_addr(addr, &node, direct.is_some());
            for key in [old, new].into_iter().flatten() {
                self.toggle(key, now_ms);
            }
            self.events.push_back(MemberEvent::Rejoined(m));
            self.spread(&node);
            return;
        }
        if e.state == MemberState::Left {
            return;
        }
        if s.left {
            e.incarnation = e.incarnation.max(s.incarnation);
            self.change(&node, MemberState::Left, now_ms, MemberEvent::Left);
            return;
        }
        let newer = s.incarnation > e.incarnation;
        let at_least = s.incarnation >= e.incarnation;
        match (liveness, e.state) {
            (Liveness::Alive, MemberState::Alive) => {
                if newer {
                    e.incarnation = s.incarnation;
                }
            }
            (Liveness::Alive, MemberState::Suspect) => {
                if newer {
                    e.incarnation = s.incarnation;
                    self.change(&node, MemberState::Alive, now_ms, MemberEvent::Alive);
                }
            }
            (Liveness::Alive, MemberState::Dead) => {
                if newer {
                    e.incarnation = s.incarnation;
                    self.change(&node, MemberState::Alive, now_ms, MemberEvent::Rejoined);
                }
            }
            (Liveness::Suspect, MemberState::Alive) => {
                if at_least {
                    e.incarnation = s.incarnation;
                    self.change(&node, MemberState::Suspect, now_ms, MemberEvent::Suspect);
                } else {
                    // We know a refutation the sender does not: spread it.
                    self.spread(&node);
                }
            }
            (Liveness::Suspect, MemberState::Suspect) => {
                if newer {
                    // A new suspicion: the member gets the whole timeout
                    // again to refute it.
                    e.incarnation = s.incarnation;
                    e.since_ms = now_ms;
                }
            }
            (Liveness::Dead, MemberState::Alive | MemberState::Suspect) => {
                if at_least {
                    e.incarnation = s.incarnation;
                    self.change(&node, MemberState::Dead, now_ms, MemberEvent::Dead);
                } else if e.state == MemberState::Alive {
                    self.spread(&node);
                }
            }
            (Liveness::Suspect | Liveness::Dead, MemberState::Dead) => {
                if newer {
                    e.incarnation = s.incarnation;
                }
            }
            (_, MemberState::Left) => {}
        }
    }

    /// Records that `node` is at `addr`: certainly when we heard from it
    /// there (`direct`), whoever was known there before; from a rumor, only
    /// if no other member is known there (the rumor may be stale).
    fn claim_addr(&mut self, addr: SocketAddr, node: &NodeId, direct: bool) {
        if direct {
            self.by_addr.insert(addr, node.clone());
        } else {
            self.by_addr.entry(addr).or_insert_with(|| node.clone());
        }
    }

    /// Notes that another member reports `node` answered its probe: any
    /// doubt ends (a suspicion needs a greater incarnation to end).
    pub(crate) fn vouch(&mut self, node: &NodeId) {
        if let Some(e) = self.members.get_mut(node) {
            e.doubt_since = None;
        }
    }

    /// Notes that `node` missed a probe's answer: it is doubted (probed
    /// directly and through others) and suspected if that lasts.
    pub(crate) fn doubt(&mut self, node: &NodeId, now_ms: u64) {
        if let Some(e) = self.members.get_mut(node) {
            if e.state == MemberState::Alive && e.doubt_since.is_none() {
                e.doubt_since = Some(now_ms);
            }
        }
    }

    /// Re-evaluates every member's state at `now_ms`.
    pub(crate) fn check(&mut self, now_ms: u64) {
        let mut changed: Vec<(NodeId, MemberState, MakeEvent)> = Vec::new();
        let mut forget = Vec::new();
        for (node, e) in self.members.iter() {
            match e.state {
                MemberState::Alive => {
                    if e.doubt_since
                        .is_some_and(|t| now_ms.saturating_sub(t) >= self.cfg.confirm_timeout_ms)
                    {
                        changed.push((node.clone(), MemberState::Suspect, MemberEvent::Suspect));
                    }
                }
                MemberState::Suspect => {
                    if now_ms.saturating_sub(e.since_ms) >= self.cfg.suspect_timeout_ms {
                        changed.push((node.clone(), MemberState::Dead, MemberEvent::Dead));
                    }
                }
                MemberState::Dead | MemberState::Left => {
                    if now_ms.saturating_sub(e.since_ms) >= self.cfg.forget_after_ms {
                        forget.push(node.clone());
                    }
                }
            }
        }
        // In id order, so that a seeded run does the same every time.
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        forget.sort_unstable();
        for (node, state, make) in changed {
            self.change(&node, state, now_ms, make);
        }
        for node in forget {
            if let Some(e) = self.members.remove(&node) {
                self.ids_stale = true;
                if listed(e.state) {
                    self.toggle(e.key, now_ms);
                }
                self.news_left.remove(&node);
                if self.by_addr.get(&e.addr) == Some(&node) {
                    self.by_addr.remove(&e.addr);
                }
                self.forgotten
                    .insert(node.clone(), (e.generation, e.incarnation, now_ms));
                self.events
                    .push_back(MemberEvent::Forgotten(Self::member(&node, &e)));
            }
        }
        let keep = self.cfg.forget_after_ms;
        self.forgotten
            .retain(|_, &mut (_, _, at)| now_ms.saturating_sub(at) < keep);
    }

    /// Members in the given states.
    pub(crate) fn in_states(&self, states: &[MemberState]) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .members
            .iter()
            .filter(|(_, e)| states.contains(&e.state))
            .map(|(n, e)| Self::member(n, e))
            .collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Doubted and suspected members: the members to probe directly.
    pub(crate) fn to_probe(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Suspect || e.doubt_since.is_some())
            .map(|(n, e)| Self::member(n, e))
            .collect();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        v
    }

    /// Every member known (not the local node).
    pub(crate) fn all(&self) -> Vec<Member> {
        self.in_states(&[
            MemberState::Alive,
            MemberState::Suspect,
            MemberState::Dead,
            MemberState::Left,
        ])
    }

    /// The member with id `node`, if known.
    pub(crate) fn get(&self, node: &NodeId) -> Option<Member> {
        self.members.get(node).map(|e| Self::member(node, e))
    }

    /// The wire entry of the member with id `node`, if known.
    pub(crate) fn entry_of(&self, node: &NodeId) -> Option<Sender> {
        self.members.get(node).map(|e| Self::entry(node, e))
    }

    /// The id of the member at `addr`, if any.
    pub(crate) fn id_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(&addr).cloned()
    }

    /// The id of the live (alive or suspect) member at `addr`, if any.
    pub(crate) fn live_at(&self, addr: SocketAddr) -> Option<NodeId> {
        let node = self.by_addr.get(&addr)?;
        let e = self.members.get(node)?;
        matches!(e.state, MemberState::Alive | MemberState::Suspect).then(|| node.clone())
    }

    /// Whether `addr` belongs to a known member that is not dead or gone.
    pub(crate) fn is_live_addr(&self, addr: SocketAddr) -> bool {
        self.live_at(addr).is_some()
    }
}

/// Length of an address's text form, without allocating.
fn addr_text_len(addr: SocketAddr) -> usize {
    use std::io::Write;
    let mut buf = [0u8; 64];
    let mut w = &mut buf[..];
    match write!(w, "{addr}") {
        Ok(()) => 64 - w.len(),
        Err(_) => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn rumor(id: &str, generation: u64, incarnation: u64, liveness: Liveness) -> Sender {
        let mut s = Sender::new(id, generation, Some("127.0.0.1:9000".parse().unwrap()));
        s.incarnation = incarnation;
        s.liveness = liveness;
        s
    }

    fn left(id: &str, generation: u64, incarnation: u64) -> Sender {
        let mut s = rumor(id, generation, incarnation, Liveness::Alive);
        s.left = true;
        s
    }

    fn kinds(m: &mut Membership) -> Vec<&'static str> {
        std::iter::from_fn(|| m.poll_event())
            .map(|e| match e {
                MemberEvent::Joined(_) => "joined",
                MemberEvent::Suspect(_) => "suspect",
                MemberEvent::Alive(_) => "alive",
                MemberEvent::Dead(_) => "dead",
                MemberEvent::Left(_) => "left",
                MemberEvent::Rejoined(_) => "rejoined",
                MemberEvent::Forgotten(_) => "forgotten",
            })
            .collect()
    }

    fn table() -> Membership {
        Membership::new("me".into(), 1, 1000, DetectorConfig::for_interval(1000))
    }

    fn state(m: &Membership, id: &str) -> Option<MemberState> {
        m.get(&id.into()).map(|m| m.state)
    }

    #[test]
    fn a_doubt_that_lasts_becomes_suspicion_then_death() {
        let mut m = table();
        m.observe(&rumor("x", 1, 0, Liveness::Alive), None, 0);
        m.doubt(&"x".into(), 1_000);
        m.check(1_500);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        assert_eq!(m.to_probe().len(), 1, "a doubted member is probed");
        m.check(2_000);
        assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
        m.check(4_999);
        assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
        m.check(5_000);
        assert_eq!(state(&m, "x"), Some(MemberState::Dead));
        assert_eq!(kinds(&mut m), vec!["joined", "suspect", "dead"]);
    }

    #[test]
    fn an_answer_clears_a_doubt_before_it_becomes_suspicion() {
        let mut m = table();
        m.observe(&rumor("x", 1, 0, Liveness::Alive), None, 0);
        m.doubt(&"x".into(), 1_000);
        let from = "127.0.0.1:9".parse().unwrap();
        m.observe(&rumor("x", 1, 0, Liveness::Alive), Some(from), 1_200);
        m.check(5_000);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        assert!(m.to_probe().is_empty());
        assert_eq!(
            m.get(&"x".into()).unwrap().addr,
            from,
            "direct address wins"
        );
    }

    #[test]
    fn suspicion_is_overridden_only_by_a_greater_incarnation() {
        let mut m = table();
        m.observe(&rumor("x", 1, 3, Liveness::Alive), None, 0);
        // A stale suspicion (older incarnation) changes nothing.
        m.observe(&rumor("x", 1, 2, Liveness::Suspect), None, 10);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        m.observe(&rumor("x", 1, 3, Liveness::Suspect), None, 20);
        assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
        // The same incarnation, even heard directly, does not refute.
        let from = "127.0.0.1:9000".parse().unwrap();
        m.observe(&rumor("x", 1, 3, Liveness::Alive), Some(from), 30);
        assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
        m.observe(&rumor("x", 1, 4, Liveness::Alive), None, 40);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        // Death at an older incarnation is stale too; at the current one it sticks
        // until refuted.
        m.observe(&rumor("x", 1, 3, Liveness::Dead), None, 50);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        m.observe(&rumor("x", 1, 4, Liveness::Dead), None, 60);
        assert_eq!(state(&m, "x"), Some(MemberState::Dead));
        m.observe(&rumor("x", 1, 5, Liveness::Alive), None, 70);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        assert_eq!(
            kinds(&mut m),
            vec!["joined", "suspect", "alive", "dead", "rejoined"]
        );
    }

    #[test]
    fn rumors_about_ourselves_are_refuted_with_a_greater_incarnation() {
        let m = table();
        assert_eq!(m.refutes(&rumor("me", 1, 4, Liveness::Suspect), 4), Some(5));
        assert_eq!(m.refutes(&rumor("me", 1, 4, Liveness::Dead), 2), Some(5));
        assert_eq!(m.refutes(&rumor("me", 1, 3, Liveness::Suspect), 4), None);
        assert_eq!(m.refutes(&rumor("me", 1, 9, Liveness::Alive), 4), None);
        assert_eq!(m.refutes(&rumor("me", 2, 9, Liveness::Dead), 4), None);
        assert_eq!(m.refutes(&rumor("x", 1, 9, Liveness::Dead), 4), None);
    }

    #[test]
    fn rumors_spread_a_bounded_number_of_times_and_quiet_tables_send_nothing() {
        let mut m = table();
        let me = Sender::new("me", 1, None);
        let mut rng = SmallRng::seed_from_u64(1);
        m.observe(&rumor("x", 1, 0, Liveness::Alive), None, 0);
        assert!(
            !m.unsettled(10_000),
            "a join is not rumored (reconciliation carries it)"
        );
        m.observe(&rumor("y", 1, 0, Liveness::Alive), None, 0);
        m.observe(&rumor("y", 1, 0, Liveness::Suspect), None, 0);
        let x: NodeId = "x".into();
        let mut sent = 0;
        while !m.sample(&me, None, false, 0, 1_000, &mut rng).is_empty() && sent < 100 {
            sent += 1;
            if !m.unsettled(10_000) {
                break;
            }
        }
        assert_eq!(
            sent,
            m.retransmits() as usize,
            "a suspicion is sent 3 log2 n times"
        );
        // A peer that agrees on the member list gets no entries.
        let from = "127.0.0.1:9000".parse().unwrap();
        let mut s = rumor("x", 1, 0, Liveness::Alive);
        s.members_hash = m.hash();
        m.observe(&s, Some(from), 10);
        assert!(m
            .sample(&me, Some(&x), true, 10, 1_000, &mut rng)
            .is_empty());
        // One that does not gets a random sample in replies, and in first
        // messages only while our list changed recently; so does an unknown
        // node.
        s.members_hash = 1;
        m.observe(&s, Some(from), 20);
        assert!(!m
            .sample(&me, Some(&x), false, 20, 1_000, &mut rng)
            .is_empty());
        assert!(m
            .sample(&me, Some(&x), false, 3_000, 1_000, &mut rng)
            .is_empty());
        assert!(!m
            .sample(&me, Some(&x), true, 3_000, 1_000, &mut rng)
            .is_empty());
        assert!(!m
            .sample(&me, None, false, 3_000, 1_000, &mut rng)
            .is_empty());
    }

    #[test]
    fn fingerprints_agree_on_the_same_members_whatever_the_order() {
        let mut a = Membership::new("a".into(), 1, 1000, DetectorConfig::for_interval(1000));
        let mut b = Membership::new("b".into(), 1, 1000, DetectorConfig::for_interval(1000));
        a.observe(&rumor("b", 1, 0, Liveness::Alive), None, 0);
        a.observe(&rumor("c", 7, 0, Liveness::Alive), None, 0);
        b.observe(&rumor("c", 7, 0, Liveness::Alive), None, 0);
        b.observe(&rumor("a", 1, 0, Liveness::Alive), None, 0);
        assert_eq!(a.hash(), b.hash());
        b.observe(&rumor("c", 8, 0, Liveness::Alive), None, 0);
        assert_ne!(a.hash(), b.hash(), "a restart changes the fingerprint");
    }

    #[test]
    fn an_overflowing_incarnation_is_not_refuted_and_does_not_panic() {
        let m = table();
        let forged = rumor("me", 1, u64::MAX, Liveness::Dead);
        assert_eq!(m.refutes(&forged, 0), None);
    }

    #[test]
    fn dead_and_departed_members_stay_out_of_the_fingerprint() {
        let mut a = Membership::new("a".into(), 1, 1000, DetectorConfig::for_interval(1000));
        let mut b = Membership::new("b".into(), 1, 1000, DetectorConfig::for_interval(1000));
        a.observe(&rumor("b", 1, 0, Liveness::Alive), None, 0);
        b.observe(&rumor("a", 1, 0, Liveness::Alive), None, 0);
        assert_eq!(a.hash(), b.hash());
        // `a` knew `d` and `l` before one died and the other left; `b` never
        // heard of them (rumors of their end teach it nothing).
        a.observe(&rumor("d", 1, 0, Liveness::Alive), None, 0);
        a.observe(&rumor("l", 1, 0, Liveness::Alive), None, 0);
        assert_ne!(a.hash(), b.hash());
        a.observe(&rumor("d", 1, 0, Liveness::Dead), None, 10);
        a.observe(&left("l", 1, 0), None, 10);
        b.observe(&rumor("d", 1, 0, Liveness::Dead), None, 10);
        assert_eq!(a.hash(), b.hash(), "the lists agree on the live members");
        assert!(a
            .reconcile(&b.buckets(), 10_000, &mut SmallRng::seed_from_u64(1))
            .is_none());
        // A member that comes back counts again.
        a.observe(&rumor("d", 1, 1, Liveness::Alive), None, 20);
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn a_rumor_does_not_take_an_address_from_a_known_member() {
        let mut m = table();
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        m.observe(&rumor("y", 1, 0, Liveness::Alive), Some(addr), 0);
        // A stale rumor puts `x` at the same address.
        m.observe(&rumor("x", 1, 0, Liveness::Alive), None, 10);
        assert_eq!(m.id_at(addr), Some("y".into()));
        // `x` restarts elsewhere: `y` keeps its address.
        let elsewhere: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        m.observe(&rumor("x", 2, 0, Liveness::Alive), Some(elsewhere), 20);
        assert_eq!(m.id_at(addr), Some("y".into()));
        assert_eq!(m.id_at(elsewhere), Some("x".into()));
        // Direct contact from a new node at `y`'s address: it is there now.
        m.observe(&rumor("z", 1, 0, Liveness::Alive), Some(addr), 30);
        assert_eq!(m.id_at(addr), Some("z".into()));
    }

    #[test]
    fn a_newer_suspicion_gets_the_whole_timeout() {
        let mut m = table();
        m.observe(&rumor("x", 1, 0, Liveness::Alive), None, 0);
        m.observe(&rumor("x", 1, 0, Liveness::Suspect), None, 0);
        // The refutation was missed; a new suspicion at the new incarnation
        // arrives just before the first would have turned into death.
        m.observe(&rumor("x", 1, 1, Liveness::Suspect), None, 2_900);
        m.check(3_000);
        assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
        m.check(5_900);
        assert_eq!(state(&m, "x"), Some(MemberState::Dead));
    }

    #[test]
    fn leave_sticks_for_the_generation_and_a_restart_rejoins() {
        let mut m = table();
        m.observe(&rumor("x", 1, 5, Liveness::Alive), None, 0);
        m.observe(&left("x", 1, 5), None, 100);
        m.observe(&rumor("x", 1, 7, Liveness::Alive), None, 200);
        assert_eq!(state(&m, "x"), Some(MemberState::Left));
        m.observe(&rumor("x", 2, 0, Liveness::Alive), None, 300);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        assert_eq!(kinds(&mut m), vec!["joined", "left", "rejoined"]);
    }

    #[test]
    fn forgotten_members_are_not_revived_by_stale_gossip() {
        let mut cfg = DetectorConfig::for_interval(1000);
        cfg.forget_after_ms = 10_000;
        let mut m = Membership::new("me".into(), 1, 1000, cfg);
        let before = m.hash();
        m.observe(&left("x", 1, 5), None, 0);
        m.check(20_000);
        assert!(m.get(&"x".into()).is_none());
        assert_eq!(
            m.hash(),
            before,
            "a forgotten member leaves the fingerprint"
        );
        m.observe(&rumor("x", 1, 5, Liveness::Alive), None, 20_100);
        assert!(m.get(&"x".into()).is_none());
        m.observe(&rumor("x", 1, 6, Liveness::Alive), None, 20_200);
        assert_eq!(state(&m, "x"), Some(MemberState::Alive));
        m.observe(&rumor("me", 1, 6, Liveness::Alive), None, 20_200);
        assert!(
            m.get(&"me".into()).is_none(),
            "the local node is never a member of its own table"
        );
    }
}
