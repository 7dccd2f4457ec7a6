//! Cluster membership and failure detection, sans-IO.
//!
//! Every node keeps a heartbeat counter that it raises every gossip round and
//! sends in the header of every datagram; every datagram also carries a small,
//! bounded sample of other members as the sender sees them. A member whose
//! heartbeat rises is alive; a phi-accrual detector over the arrival times of
//! rising heartbeats turns silence into suspicion, and suspicion that lasts
//! into death. A node that shuts down announces it (`left`), which spreads the
//! same way. Dead members are still contacted now and then, so a healed
//! partition rejoins by itself, and are forgotten after a grace period.
//!
//! Liveness is kept out of the data digest: heartbeats never make two data
//! digests differ.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;

use gossipkv_proto::{member_size_hint, Sender};
use gossipkv_storage::NodeId;
use rand::Rng;

/// The state of a member, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Heard from recently.
    Alive,
    /// Silent for longer than its usual rhythm; may be dead.
    Suspect,
    /// Silent for so long that it is considered gone (it is still contacted
    /// now and then, and comes back as soon as it is heard from).
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
    /// Its incarnation (changes when it restarts).
    pub generation: u64,
    /// Its last heartbeat seen.
    pub heartbeat: u64,
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberEvent {
    /// A node was heard of for the first time.
    Joined(Member),
    /// A member fell silent and is suspected.
    Suspect(Member),
    /// A suspected member was heard from again.
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
    /// Phi above which a member is suspected (default 8).
    pub phi_threshold: f64,
    /// Silence the detector accepts on top of a member's usual rhythm, ms.
    pub acceptable_pause_ms: u64,
    /// Smallest standard deviation assumed for heartbeat arrivals, ms.
    pub min_std_dev_ms: u64,
    /// How long a member the detector doubts is contacted directly before
    /// it is suspected, ms: a member that answers (or whose heartbeat rises
    /// meanwhile) is never suspected, so watchers do not see suspicions that
    /// one datagram would have refuted.
    pub confirm_timeout_ms: u64,
    /// How long a member stays suspect before it is declared dead, ms
    /// (it is contacted directly meanwhile, so that it can answer).
    pub suspect_timeout_ms: u64,
    /// Silence after which a member is suspected whatever phi says, ms: an
    /// upper bound on detection time when heartbeats arrived irregularly.
    pub max_silence_ms: u64,
    /// How long dead or departed members are remembered, ms.
    pub forget_after_ms: u64,
}

impl DetectorConfig {
    /// Defaults derived from the gossip interval.
    pub fn for_interval(interval_ms: u64) -> Self {
        DetectorConfig {
            phi_threshold: 8.0,
            acceptable_pause_ms: interval_ms.max(500),
            min_std_dev_ms: (interval_ms / 2).max(50),
            confirm_timeout_ms: interval_ms.max(1),
            suspect_timeout_ms: (2 * interval_ms).max(1_000),
            max_silence_ms: (5 * interval_ms).max(3_000),
            forget_after_ms: 3_600_000,
        }
    }
}

/// Phi-accrual failure detector over heartbeat arrival times
/// (Hayashibara et al.; the normal approximation used by Akka and Cassandra).
#[derive(Debug, Clone)]
struct PhiDetector {
    intervals: VecDeque<u64>,
    last_ms: u64,
}

/// Heartbeat gaps remembered per member (a few hundred bytes each).
const WINDOW: usize = 32;

impl PhiDetector {
    fn new(now_ms: u64, first_interval_ms: u64) -> Self {
        // Until real arrivals are known: one interval.
        let mut intervals = VecDeque::new();
        intervals.push_back(first_interval_ms);
        PhiDetector {
            intervals,
            last_ms: now_ms,
        }
    }

    fn heartbeat(&mut self, now_ms: u64) {
        let gap = now_ms.saturating_sub(self.last_ms);
        if self.intervals.len() == WINDOW {
            self.intervals.pop_front();
        }
        self.intervals.push_back(gap);
        self.last_ms = now_ms;
    }

    fn phi(&self, now_ms: u64, cfg: &DetectorConfig) -> f64 {
        let n = self.intervals.len().max(1) as f64;
        let mean = self.intervals.iter().sum::<u64>() as f64 / n;
        let var = self
            .intervals
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let std = var.sqrt().max(cfg.min_std_dev_ms as f64);
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        phi(elapsed, mean + cfg.acceptable_pause_ms as f64, std)
    }
}

/// -log10 of the probability that a heartbeat comes later than `elapsed`,
/// for arrivals distributed normally around `mean` (logistic approximation).
fn phi(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    -p.max(f64::MIN_POSITIVE).log10()
}

/// Builds a [`MemberEvent`] of one kind.
type MakeEvent = fn(Member) -> MemberEvent;

#[derive(Debug, Clone)]
struct Entry {
    addr: SocketAddr,
    /// Length of `addr` as text (what it costs in a member sample).
    addr_len: usize,
    generation: u64,
    heartbeat: u64,
    state: MemberState,
    since_ms: u64,
    /// Since when the detector doubts this alive member (it is being probed).
    doubt_since: Option<u64>,
    detector: PhiDetector,
}

/// The membership table of one node.
#[derive(Debug)]
pub(crate) struct Membership {
    local: NodeId,
    cfg: DetectorConfig,
    interval_ms: u64,
    members: HashMap<NodeId, Entry>,
    /// Members forgotten after their grace period: (generation, heartbeat),
    /// so that stale gossip does not bring them back.
    forgotten: HashMap<NodeId, (u64, u64, u64)>,
    events: VecDeque<MemberEvent>,
    /// Members in the order their heartbeat last rose or their state
    /// changed, most recent last (stale duplicates are skipped when read).
    recent: VecDeque<NodeId>,
    /// Every member's id, for uniform sampling; rebuilt after joins and
    /// removals (`ids_stale`).
    ids: Vec<NodeId>,
    ids_stale: bool,
}

/// A member sample being filled (see [`Membership::sample`]).
struct Picker<'a> {
    members: &'a HashMap<NodeId, Entry>,
    states: &'a [MemberState],
    out: Vec<Sender>,
    used: usize,
}

impl Picker<'_> {
    /// Adds `node` if it is in one of the states and not picked yet, and
    /// its entry keeps the sample within `limit` bytes. Returns `false` only
    /// when it did not fit.
    fn offer(&mut self, node: &NodeId, limit: usize) -> bool {
        let Some(e) = self.members.get(node) else {
            return true;
        };
        if !self.states.contains(&e.state) || self.out.iter().any(|s| &s.node_id == node) {
            return true;
        }
        let cost = member_size_hint(node.as_str().len(), e.addr_len);
        if self.used + cost > limit {
            return false;
        }
        self.used += cost;
        self.out.push(Sender {
            node_id: node.clone(),
            generation: e.generation,
            addr: Some(e.addr),
            heartbeat: e.heartbeat,
            left: e.state == MemberState::Left,
        });
        true
    }
}

impl Membership {
    pub(crate) fn new(local: NodeId, interval_ms: u64, cfg: DetectorConfig) -> Self {
        Membership {
            local,
            cfg,
            interval_ms,
            members: HashMap::new(),
            forgotten: HashMap::new(),
            events: VecDeque::new(),
            recent: VecDeque::new(),
            ids: Vec::new(),
            ids_stale: false,
        }
    }

    /// Notes that `node` has news (a rising heartbeat or a new state).
    fn touch(&mut self, node: &NodeId) {
        self.recent.push_back(node.clone());
        let cap = 4 * self.members.len() + 64;
        while self.recent.len() > cap {
            self.recent.pop_front();
        }
    }

    /// A sample of members in `states` that fits `budget` bytes of member
    /// entries: the freshest news first (up to half the budget), then
    /// members picked uniformly at random. Costs O(sample), not O(members).
    pub(crate) fn sample(
        &mut self,
        states: &[MemberState],
        budget: usize,
        rng: &mut impl Rng,
    ) -> Vec<Sender> {
        if self.ids_stale {
            self.ids = self.members.keys().cloned().collect();
            self.ids.sort();
            self.ids_stale = false;
        }
        let mut pick = Picker {
            members: &self.members,
            states,
            out: Vec::new(),
            used: 0,
        };
        for node in self.recent.iter().rev() {
            if !pick.offer(node, budget / 2) {
                break;
            }
        }
        // Random picks until the budget is full, or after a bounded number
        // of tries (members already picked or in other states are skipped).
        let n = self.ids.len();
        for _ in 0..(2 * n).min(256) {
            if !pick.offer(&self.ids[rng.random_range(0..n)], budget) {
                break;
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
            heartbeat: e.heartbeat,
        }
    }

    fn emit(&mut self, node: &NodeId, make: MakeEvent) {
        if let Some(e) = self.members.get(node) {
            let m = Self::member(node, e);
            self.events.push_back(make(m));
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<MemberEvent> {
        self.events.pop_front()
    }

    /// Takes news about a node: the sender of a datagram (`direct`, with the
    /// address it came from) or an entry of a member sample.
    pub(crate) fn observe(&mut self, s: &Sender, direct: Option<SocketAddr>, now_ms: u64) {
        if s.node_id == self.local {
            return;
        }
        let Some(addr) = direct.or(s.addr) else {
            return;
        };
        if let Some(&(g, hb, _)) = self.forgotten.get(&s.node_id) {
            if (s.generation, s.heartbeat) <= (g, hb) {
                return;
            }
            self.forgotten.remove(&s.node_id);
        }
        let fresh = |state| Entry {
            addr,
            addr_len: addr_text_len(addr),
            generation: s.generation,
            heartbeat: s.heartbeat,
            state,
            since_ms: now_ms,
            doubt_since: None,
            detector: PhiDetector::new(now_ms, self.interval_ms),
        };
        let node = s.node_id.clone();
        let Some(e) = self.members.get_mut(&node) else {
            let state = if s.left {
                MemberState::Left
            } else {
                MemberState::Alive
            };
            self.members.insert(node.clone(), fresh(state));
            self.ids_stale = true;
            self.touch(&node);
            self.emit(&node, MemberEvent::Joined);
            return;
        };
        if s.generation < e.generation {
            return;
        }
        if s.generation > e.generation {
            let state = if s.left {
                MemberState::Left
            } else {
                MemberState::Alive
            };
            *e = fresh(state);
            self.touch(&node);
            self.emit(&node, MemberEvent::Rejoined);
            return;
        }
        if direct.is_some() && e.addr != addr {
            e.addr = addr;
            e.addr_len = addr_text_len(addr);
        }
        if s.left {
            if e.state != MemberState::Left {
                e.state = MemberState::Left;
                e.since_ms = now_ms;
                e.heartbeat = e.heartbeat.max(s.heartbeat);
                self.touch(&node);
                self.emit(&node, MemberEvent::Left);
            }
            return;
        }
        if e.state == MemberState::Left {
            return;
        }
        if s.heartbeat <= e.heartbeat {
            // No news, but a reply to a probe of a doubted member is
            // evidence of life all the same.
            if direct.is_some() && e.doubt_since.take().is_some() {
                e.detector.heartbeat(now_ms);
            }
            return;
        }
        e.heartbeat = s.heartbeat;
        e.doubt_since = None;
        e.detector.heartbeat(now_ms);
        let state = e.state;
        self.touch(&node);
        let Some(e) = self.members.get_mut(&node) else {
            return;
        };
        match state {
            MemberState::Alive | MemberState::Left => {}
            MemberState::Suspect => {
                e.state = MemberState::Alive;
                e.since_ms = now_ms;
                self.emit(&node, MemberEvent::Alive);
            }
            MemberState::Dead => {
                e.state = MemberState::Alive;
                e.since_ms = now_ms;
                self.emit(&node, MemberEvent::Rejoined);
            }
        }
    }

    /// Re-evaluates every member's state at `now_ms`.
    pub(crate) fn check(&mut self, now_ms: u64) {
        let mut changed: Vec<(NodeId, MakeEvent)> = Vec::new();
        let mut forget = Vec::new();
        for (node, e) in self.members.iter_mut() {
            match e.state {
                MemberState::Alive => {
                    let silent = now_ms.saturating_sub(e.detector.last_ms);
                    let doubtful = silent >= self.cfg.max_silence_ms
                        || e.detector.phi(now_ms, &self.cfg) > self.cfg.phi_threshold;
                    match e.doubt_since {
                        _ if !doubtful => e.doubt_since = None,
                        None => e.doubt_since = Some(now_ms),
                        Some(t) if now_ms.saturating_sub(t) >= self.cfg.confirm_timeout_ms => {
                            e.doubt_since = None;
                            e.state = MemberState::Suspect;
                            e.since_ms = now_ms;
                            changed.push((node.clone(), MemberEvent::Suspect));
                        }
                        Some(_) => {}
                    }
                }
                MemberState::Suspect => {
                    if now_ms.saturating_sub(e.since_ms) >= self.cfg.suspect_timeout_ms {
                        e.state = MemberState::Dead;
                        e.since_ms = now_ms;
                        changed.push((node.clone(), MemberEvent::Dead));
                    }
                }
                MemberState::Dead | MemberState::Left => {
                    if now_ms.saturating_sub(e.since_ms) >= self.cfg.forget_after_ms {
                        forget.push(node.clone());
                    }
                }
            }
        }
        for (node, make) in changed {
            self.touch(&node);
            self.emit(&node, make);
        }
        for node in forget {
            if let Some(e) = self.members.remove(&node) {
                self.ids_stale = true;
                self.forgotten
                    .insert(node.clone(), (e.generation, e.heartbeat, now_ms));
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
    /// Alive members the detector doubts, and suspects: the members to
    /// contact directly.
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

    /// Whether `addr` belongs to a known member that is not dead or gone.
    pub(crate) fn is_live_addr(&self, addr: SocketAddr) -> bool {
        self.members
            .values()
            .any(|e| e.addr == addr && matches!(e.state, MemberState::Alive | MemberState::Suspect))
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

    fn sender(id: &str, generation: u64, heartbeat: u64, left: bool) -> Sender {
        let mut s = Sender::new(id, generation, Some("127.0.0.1:9000".parse().unwrap()));
        s.heartbeat = heartbeat;
        s.left = left;
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

    #[test]
    fn phi_grows_with_silence() {
        let cfg = DetectorConfig::for_interval(1000);
        let mut d = PhiDetector::new(0, 1000);
        for t in 1..=20 {
            d.heartbeat(t * 1000);
        }
        let p1 = d.phi(21_000, &cfg);
        let p2 = d.phi(24_000, &cfg);
        let p3 = d.phi(27_000, &cfg);
        assert!(p1 < 1.0, "{p1}");
        assert!(p2 > p1 && p3 > p2, "{p1} {p2} {p3}");
        assert!(p3 > 8.0, "{p3}");
    }

    #[test]
    fn silence_leads_to_suspect_then_dead_and_a_heartbeat_revives() {
        let mut m = Membership::new("me".into(), 1000, DetectorConfig::for_interval(1000));
        for hb in 1..=10 {
            m.observe(&sender("x", 1, hb, false), None, hb * 1000);
        }
        m.check(10_500);
        assert_eq!(kinds(&mut m), vec!["joined"]);
        let mut t = 10_000;
        while m.get(&"x".into()).unwrap().state == MemberState::Alive {
            t += 100;
            m.check(t);
            assert!(t < 20_000, "never suspected");
        }
        let suspect_at = t;
        while m.get(&"x".into()).unwrap().state == MemberState::Suspect {
            t += 100;
            m.check(t);
        }
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Dead);
        assert!(
            t - 10_000 <= 8_000,
            "declared dead {} ms after the last heartbeat",
            t - 10_000
        );
        assert!(suspect_at - 10_000 >= 2_000, "suspected too early");
        assert_eq!(kinds(&mut m), vec!["suspect", "dead"]);
        // A stale heartbeat changes nothing; a fresh one revives.
        m.observe(&sender("x", 1, 10, false), None, t);
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Dead);
        m.observe(&sender("x", 1, 11, false), None, t);
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Alive);
        assert_eq!(kinds(&mut m), vec!["rejoined"]);
    }

    #[test]
    fn a_doubted_member_that_answers_a_probe_is_never_suspected() {
        let mut m = Membership::new("me".into(), 1000, DetectorConfig::for_interval(1000));
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for hb in 1..=10 {
            m.observe(&sender("x", 1, hb, false), None, hb * 1000);
        }
        let mut t = 10_000;
        while m.to_probe().is_empty() {
            t += 100;
            m.check(t);
            assert!(t < 20_000, "never doubted");
        }
        // The probe's answer carries the same heartbeat (no gossip news).
        m.observe(&sender("x", 1, 10, false), Some(addr), t + 10);
        assert!(m.to_probe().is_empty());
        for _ in 0..5 {
            t += 100;
            m.check(t);
        }
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Alive);
        assert_eq!(kinds(&mut m), vec!["joined"]);
    }

    #[test]
    fn leave_sticks_for_the_generation_and_a_restart_rejoins() {
        let mut m = Membership::new("me".into(), 1000, DetectorConfig::for_interval(1000));
        m.observe(&sender("x", 1, 5, false), None, 0);
        m.observe(&sender("x", 1, 6, true), None, 100);
        m.observe(&sender("x", 1, 7, false), None, 200);
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Left);
        m.observe(&sender("x", 2, 1, false), None, 300);
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Alive);
        assert_eq!(kinds(&mut m), vec!["joined", "left", "rejoined"]);
    }

    #[test]
    fn forgotten_members_are_not_revived_by_stale_gossip() {
        let mut cfg = DetectorConfig::for_interval(1000);
        cfg.forget_after_ms = 10_000;
        let mut m = Membership::new("me".into(), 1000, cfg);
        m.observe(&sender("x", 1, 5, true), None, 0);
        m.check(20_000);
        assert!(m.get(&"x".into()).is_none());
        m.observe(&sender("x", 1, 5, false), None, 20_100);
        assert!(m.get(&"x".into()).is_none());
        m.observe(&sender("x", 1, 6, false), None, 20_200);
        assert_eq!(m.get(&"x".into()).unwrap().state, MemberState::Alive);
        m.observe(&sender("me", 1, 6, false), None, 20_200);
        assert!(
            m.get(&"me".into()).is_none(),
            "the local node is never a member of its own table"
        );
    }
}
