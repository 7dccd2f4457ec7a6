//! The membership table: every member this node knows, its state and
//! address, and the changes to report.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use gossipkv_proto::{Liveness, Sender};
use gossipkv_storage::NodeId;

use super::member::{merge, DetectorConfig, Member, MemberEvent, MemberState, News, Verdict};
use super::reconcile::{listed, member_key, Fingerprint};
use super::rumors::Rumors;
use crate::time::Instant;

/// Most members a table holds; news of further nodes is ignored until some
/// are forgotten. Member entries come from the network, so the table needs
/// a bound (about 520 B per member: some 8.5 MB at most).
pub const MAX_MEMBERS: usize = 16_384;

/// What the table knows of one member.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) addr: SocketAddr,
    /// Length of `addr` as text (what it costs in a member entry).
    pub(crate) addr_len: usize,
    pub(crate) generation: u64,
    pub(crate) incarnation: u64,
    pub(crate) state: MemberState,
    /// Since when it is in `state` (or since its latest suspicion).
    pub(crate) since: Instant,
    /// Since when this alive member is doubted (it missed a probe's answer
    /// and is being probed again).
    pub(crate) doubt_since: Option<Instant>,
    /// The member-list fingerprint the member last sent us (0: none yet).
    pub(crate) members_hash: u64,
    /// Its [`member_key`].
    pub(crate) key: u64,
}

impl Entry {
    /// The entry of a member first heard of, or heard of in a new
    /// generation, from `s` (the sender of a datagram if `direct`).
    fn first(node: &NodeId, s: &Sender, addr: SocketAddr, direct: bool, now: Instant) -> Entry {
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
            since: now,
            doubt_since: None,
            members_hash: if direct { s.members_hash } else { 0 },
            key: member_key(node, s.generation),
        }
    }

    /// The member as reported to users.
    pub(crate) fn member(&self, node: &NodeId) -> Member {
        Member::new(
            node.clone(),
            self.addr,
            self.state,
            self.generation,
            self.incarnation,
        )
    }

    /// The member's wire entry (a rumor about it).
    pub(crate) fn wire(&self, node: &NodeId) -> Sender {
        Sender {
            node_id: node.clone(),
            generation: self.generation,
            addr: Some(self.addr),
            incarnation: self.incarnation,
            left: self.state == MemberState::Left,
            liveness: match self.state {
                MemberState::Suspect => Liveness::Suspect,
                MemberState::Dead => Liveness::Dead,
                MemberState::Alive | MemberState::Left => Liveness::Alive,
            },
            members_hash: 0,
        }
    }
}

/// A member forgotten after its grace period, remembered so that stale
/// gossip does not bring it back.
#[derive(Debug, Clone, Copy)]
struct Forgotten {
    generation: u64,
    incarnation: u64,
    at: Instant,
}

/// The membership table of one node.
#[derive(Debug)]
pub(crate) struct Table {
    local: NodeId,
    local_generation: u64,
    pub(crate) cfg: DetectorConfig,
    pub(crate) members: BTreeMap<NodeId, Entry>,
    forgotten: BTreeMap<NodeId, Forgotten>,
    events: VecDeque<MemberEvent>,
    pub(crate) rumors: Rumors,
    pub(crate) print: Fingerprint,
    /// The member at each known address.
    by_addr: BTreeMap<SocketAddr, NodeId>,
}

impl Table {
    pub(crate) fn new(
        local: NodeId,
        local_generation: u64,
        settle: std::time::Duration,
        cfg: DetectorConfig,
    ) -> Self {
        Table {
            print: Fingerprint::new(&local, local_generation, settle),
            local,
            local_generation,
            cfg,
            members: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            events: VecDeque::new(),
            rumors: Rumors::default(),
            by_addr: BTreeMap::new(),
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
    pub(crate) fn observe(&mut self, s: &Sender, direct: Option<SocketAddr>, now: Instant) {
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
            self.join(&node, s, addr, direct.is_some(), liveness, now);
            return;
        };
        if s.generation < e.generation {
            return;
        }
        if direct.is_some() {
            e.doubt_since = None;
            e.members_hash = s.members_hash;
            if e.addr != addr {
                let old = std::mem::replace(&mut e.addr, addr);
                e.addr_len = addr_text_len(addr);
                if self.by_addr.get(&old) == Some(&node) {
                    self.by_addr.remove(&old);
                }
            }
            // Heard from there: it is this node's address now, whoever was
            // known there before (see `claim_addr`).
            self.by_addr.insert(addr, node.clone());
        }
        if s.generation > self.members[&node].generation {
            if liveness == Liveness::Alive {
                self.restart(&node, s, addr, direct.is_some(), now);
            }
            return;
        }
        let news = News {
            liveness,
            left: s.left,
            incarnation: s.incarnation,
        };
        self.apply(&node, news, now);
    }

    /// A node not in the table: it joins, unless the news is of its
    /// suspicion or death (nothing worth keeping), it was forgotten and the
    /// news is stale, or the table is full.
    fn join(
        &mut self,
        node: &NodeId,
        s: &Sender,
        addr: SocketAddr,
        direct: bool,
        liveness: Liveness,
        now: Instant,
    ) {
        if liveness != Liveness::Alive || self.members.len() >= MAX_MEMBERS {
            return;
        }
        if let Some(f) = self.forgotten.get(node) {
            if (s.generation, s.incarnation) <= (f.generation, f.incarnation) && !direct {
                return;
            }
            self.forgotten.remove(node);
        }
        let e = Entry::first(node, s, addr, direct, now);
        if listed(e.state) {
            self.print.toggle(e.key, now);
        }
        let m = e.member(node);
        self.members.insert(node.clone(), e);
        self.rumors.members_changed();
        self.claim_addr(addr, node, direct);
        self.events.push_back(MemberEvent::Joined(m));
        // A join is not rumored: it changes member-list fingerprints, and
        // reconciliation carries it to nodes that lack it.
    }

    /// A known member heard of in a newer generation: it restarted.
    fn restart(&mut self, node: &NodeId, s: &Sender, addr: SocketAddr, direct: bool, now: Instant) {
        let Some(e) = self.members.get_mut(node) else {
            return;
        };
        let old_addr = e.addr;
        let old = listed(e.state).then_some(e.key);
        *e = Entry::first(node, s, addr, direct, now);
        let new = listed(e.state).then_some(e.key);
        let m = e.member(node);
        if self.by_addr.get(&old_addr) == Some(node) {
            self.by_addr.remove(&old_addr);
        }
        self.claim_addr(addr, node, direct);
        for key in [old, new].into_iter().flatten() {
            self.print.toggle(key, now);
        }
        self.events.push_back(MemberEvent::Rejoined(m));
        self.rumors.spread(node, self.members.len());
    }

    /// Applies the merge rule to news about a known member of the same
    /// generation.
    fn apply(&mut self, node: &NodeId, news: News, now: Instant) {
        let Some(e) = self.members.get_mut(node) else {
            return;
        };
        match merge(e.state, e.incarnation, news) {
            Verdict::Keep => {}
            Verdict::Adopt(incarnation) => e.incarnation = incarnation,
            Verdict::Renew(incarnation) => {
                e.incarnation = incarnation;
                e.since = now;
            }
            Verdict::Become(state, incarnation) => {
                e.incarnation = incarnation;
                self.change(node, state, now);
            }
            Verdict::Spread => self.rumors.spread(node, self.members.len()),
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

    /// Moves `node` to `state` at `now`, reports the change and spreads it.
    fn change(&mut self, node: &NodeId, state: MemberState, now: Instant) {
        let Some(e) = self.members.get_mut(node) else {
            return;
        };
        let toggles = listed(e.state) != listed(state);
        let from = std::mem::replace(&mut e.state, state);
        e.since = now;
        e.doubt_since = None;
        let (m, key) = (e.member(node), e.key);
        if toggles {
            self.print.toggle(key, now);
        }
        self.events
            .push_back(MemberEvent::of_change(from, state, m));
        self.rumors.spread(node, self.members.len());
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
    pub(crate) fn doubt(&mut self, node: &NodeId, now: Instant) {
        if let Some(e) = self.members.get_mut(node) {
            if e.state == MemberState::Alive && e.doubt_since.is_none() {
                e.doubt_since = Some(now);
            }
        }
    }

    /// Re-evaluates every member's state at `now`: lasting doubts become
    /// suspicions, lasting suspicions deaths, and dead or departed members
    /// past their grace period are forgotten. Members are visited in id
    /// order, so a seeded run does the same every time.
    pub(crate) fn check(&mut self, now: Instant) {
        let cfg = &self.cfg;
        let mut changed: Vec<(NodeId, MemberState)> = Vec::new();
        let mut forget = Vec::new();
        for (node, e) in &self.members {
            let waited = now.saturating_since(e.since);
            match e.state {
                MemberState::Alive => {
                    if e.doubt_since
                        .is_some_and(|t| now.saturating_since(t) >= cfg.confirm_timeout)
                    {
                        changed.push((node.clone(), MemberState::Suspect));
                    }
                }
                MemberState::Suspect if waited >= cfg.suspect_timeout => {
                    changed.push((node.clone(), MemberState::Dead));
                }
                MemberState::Dead | MemberState::Left if waited >= cfg.forget_after => {
                    forget.push(node.clone());
                }
                MemberState::Suspect | MemberState::Dead | MemberState::Left => {}
            }
        }
        for (node, state) in changed {
            self.change(&node, state, now);
        }
        for node in forget {
            self.forget(&node, now);
        }
        let keep = self.cfg.forget_after;
        self.forgotten
            .retain(|_, f| now.saturating_since(f.at) < keep);
    }

    /// Removes a dead or departed member, remembering its last incarnation.
    fn forget(&mut self, node: &NodeId, now: Instant) {
        let Some(e) = self.members.remove(node) else {
            return;
        };
        self.rumors.members_changed();
        if listed(e.state) {
            self.print.toggle(e.key, now);
        }
        self.rumors.forget(node);
        if self.by_addr.get(&e.addr) == Some(node) {
            self.by_addr.remove(&e.addr);
        }
        if self.forgotten.len() >= MAX_MEMBERS {
            // The oldest memory goes first.
            let oldest = self
                .forgotten
                .iter()
                .min_by_key(|(_, f)| f.at)
                .map(|(n, _)| n.clone());
            if let Some(oldest) = oldest {
                self.forgotten.remove(&oldest);
            }
        }
        self.forgotten.insert(
            node.clone(),
            Forgotten {
                generation: e.generation,
                incarnation: e.incarnation,
                at: now,
            },
        );
        self.events
            .push_back(MemberEvent::Forgotten(e.member(node)));
    }

    /// Members in the given states, in id order.
    pub(crate) fn in_states(&self, states: &[MemberState]) -> Vec<Member> {
        self.members
            .iter()
            .filter(|(_, e)| states.contains(&e.state))
            .map(|(n, e)| e.member(n))
            .collect()
    }

    /// Live (alive or suspect) members, in id order.
    pub(crate) fn live(&self) -> Vec<Member> {
        self.in_states(&[MemberState::Alive, MemberState::Suspect])
    }

    /// Doubted and suspected members: the members to probe directly.
    pub(crate) fn to_probe(&self) -> Vec<Member> {
        self.members
            .iter()
            .filter(|(_, e)| e.state == MemberState::Suspect || e.doubt_since.is_some())
            .map(|(n, e)| e.member(n))
            .collect()
    }

    /// Every member known (not the local node), in id order.
    pub(crate) fn all(&self) -> Vec<Member> {
        self.members.iter().map(|(n, e)| e.member(n)).collect()
    }

    /// Number of members in the given states.
    pub(crate) fn count_in(&self, states: &[MemberState]) -> usize {
        self.members
            .values()
            .filter(|e| states.contains(&e.state))
            .count()
    }

    /// The member with id `node`, if known.
    pub(crate) fn get(&self, node: &NodeId) -> Option<Member> {
        self.members.get(node).map(|e| e.member(node))
    }

    /// The wire entry of the member with id `node`, if known.
    pub(crate) fn wire_of(&self, node: &NodeId) -> Option<Sender> {
        self.members.get(node).map(|e| e.wire(node))
    }

    /// The id of the member at `addr`, if any.
    pub(crate) fn id_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(&addr).cloned()
    }

    /// Whether `addr` belongs to a known member that is alive or suspect.
    pub(crate) fn is_live_addr(&self, addr: SocketAddr) -> bool {
        self.by_addr
            .get(&addr)
            .and_then(|node| self.members.get(node))
            .is_some_and(|e| e.state.is_live())
    }

    /// Sizes of the table's maps (members, forgotten, by address), for
    /// bound checks.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (self.members.len(), self.forgotten.len(), self.by_addr.len())
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
