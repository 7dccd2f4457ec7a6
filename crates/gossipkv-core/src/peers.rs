//! Whom a node talks to: the one seam between the protocol and its source
//! of peers. A real node learns its peers through SWIM membership
//! ([`Swim`]); a simulated one may be given a fixed [`Directory`] of every
//! node instead. Every difference between the two lives in this file.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use gossipkv_proto::{MemberSync, Probe, Sender};
use gossipkv_storage::NodeId;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::ProtocolConfig;
use crate::swim::{add_resync_peer, Action, Member, MemberEvent, Swim};
use crate::time::Instant;
use crate::Stats;

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

/// Where the pushes of one batch of records go.
#[derive(Debug)]
pub(crate) enum PushPeers {
    /// Alive members, shuffled for each draw.
    Members(Vec<SocketAddr>),
    /// Drawn from the directory, but these addresses.
    Drawn(Arc<Directory>, Vec<SocketAddr>),
}

impl PushPeers {
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            PushPeers::Members(live) => live.is_empty(),
            // `skip` holds distinct listed addresses only.
            PushPeers::Drawn(dir, skip) => dir.len() <= skip.len(),
        }
    }

    /// Up to `n` of them, at random.
    pub(crate) fn draw(&mut self, rng: &mut SmallRng, n: usize) -> Vec<SocketAddr> {
        match self {
            PushPeers::Members(live) => {
                live.shuffle(rng);
                live.iter().take(n).copied().collect()
            }
            PushPeers::Drawn(dir, skip) => dir.sample(rng, n, skip),
        }
    }
}

/// The source of peers: SWIM membership, or a given directory.
#[derive(Debug)]
pub(crate) enum Peers {
    /// Peers learned and watched through SWIM.
    Swim(Box<Swim>),
    /// Peers drawn from a fixed directory; no membership is kept, probed or
    /// gossiped, and the cluster is taken as formed and healthy.
    Given {
        /// Every node.
        dir: Arc<Directory>,
        /// Our own address, never drawn.
        own: Option<SocketAddr>,
    },
}

impl Peers {
    pub(crate) fn new(cfg: &ProtocolConfig) -> Self {
        match &cfg.directory {
            Some(dir) => Peers::Given {
                dir: dir.clone(),
                own: cfg.advertise_addr,
            },
            None => Peers::Swim(Box::new(Swim::new(cfg))),
        }
    }

    /// Our incarnation and member-list fingerprint, for our header. A
    /// fingerprint of 0 means none: peers start no reconciliation.
    pub(crate) fn header(&self) -> (u64, u64) {
        match self {
            Peers::Swim(s) => (s.incarnation(), s.members_hash()),
            Peers::Given { .. } => (0, 0),
        }
    }

    /// Whether membership is kept (and datagrams other than pushes carry
    /// member entries).
    pub(crate) fn keeps_membership(&self) -> bool {
        matches!(self, Peers::Swim(_))
    }

    /// Member entries for a datagram to `to`, within `budget` bytes.
    pub(crate) fn sample(
        &mut self,
        me: &Sender,
        to: SocketAddr,
        reply: bool,
        now: Instant,
        budget: usize,
        rng: &mut SmallRng,
    ) -> Vec<Sender> {
        match self {
            Peers::Swim(s) => s.sample(me, to, reply, now, budget, rng),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// A datagram's header: its sender is alive; the member entries it
    /// carries are rumors.
    pub(crate) fn heard_from(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: &Sender,
        members: &[Sender],
        stats: &mut Stats,
    ) -> Vec<Action> {
        match self {
            Peers::Swim(s) => {
                let actions = s.heard_from(now, from, sender);
                for m in members {
                    s.rumor(now, m, stats);
                }
                actions
            }
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// Whether `addr` is the address of a live member (listed, with a given
    /// directory).
    pub(crate) fn is_live_addr(&self, addr: SocketAddr) -> bool {
        match self {
            Peers::Swim(s) => s.is_live_addr(addr),
            Peers::Given { dir, .. } => dir.contains(&addr),
        }
    }

    /// Whether `sender` is a member known at `from`, in its generation
    /// (always, with a given directory: nobody joins through datagrams).
    pub(crate) fn knows_at(&self, sender: &Sender, from: SocketAddr) -> bool {
        match self {
            Peers::Swim(s) => s
                .get(&sender.node_id)
                .is_some_and(|m| m.addr == from && m.generation == sender.generation),
            Peers::Given { .. } => true,
        }
    }

    /// The periodic membership check.
    pub(crate) fn timeout(
        &mut self,
        now: Instant,
        rng: &mut SmallRng,
        stats: &mut Stats,
    ) -> Vec<Action> {
        match self {
            Peers::Swim(s) => s.timeout(now, rng, stats),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// A probe request or answer.
    pub(crate) fn on_probe(
        &mut self,
        now: Instant,
        from: SocketAddr,
        probe: Probe,
        me: &Sender,
        stats: &mut Stats,
    ) -> Vec<Action> {
        match self {
            Peers::Swim(s) => s.on_probe(now, from, probe, me, stats),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// A member-list reconciliation message.
    pub(crate) fn on_member_sync(&self, from: SocketAddr, sync: MemberSync) -> Option<Action> {
        match self {
            Peers::Swim(s) => s.on_member_sync(from, sync),
            Peers::Given { .. } => None,
        }
    }

    /// A SynAck's sender fingerprint: reconcile if it differs from ours.
    pub(crate) fn on_syn_ack(&self, from: SocketAddr, members_hash: u64) -> Option<Action> {
        match self {
            Peers::Swim(s) => s.on_syn_ack(from, members_hash),
            Peers::Given { .. } => None,
        }
    }

    /// Our bucket fingerprints, and our members of the buckets that differ
    /// from `theirs` within `room` bytes (see [`Swim::reconcile`]).
    pub(crate) fn reconcile(
        &self,
        theirs: Option<&[u64]>,
        room: usize,
        rng: &mut SmallRng,
    ) -> Option<(Vec<u64>, Vec<Sender>)> {
        let Peers::Swim(s) = self else {
            return None;
        };
        match theirs {
            None => Some((s.buckets(), Vec::new())),
            Some(theirs) => s.reconcile(theirs, room, rng).map(|m| (s.buckets(), m)),
        }
    }

    /// This round's Syn targets. With SWIM see [`Swim::round_targets`];
    /// with a directory, one random node while the cluster is `quiet`,
    /// `fanout` otherwise. Either way the peer re-synchronising us
    /// (`resync`) is among them, and never our own address.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn round_targets(
        &mut self,
        now: Instant,
        rng: &mut SmallRng,
        quiet: bool,
        fanout: usize,
        resync: Option<SocketAddr>,
        own: Option<SocketAddr>,
        unknown: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        match self {
            Peers::Swim(s) => {
                let mut unknown: Vec<SocketAddr> = unknown
                    .iter()
                    .copied()
                    .filter(|a| Some(*a) != own)
                    .collect();
                unknown.sort();
                unknown.dedup();
                s.round_targets(now, rng, quiet, fanout, resync, &unknown)
            }
            Peers::Given { dir, own } => {
                let n = if quiet { 1 } else { fanout };
                let own: Vec<SocketAddr> = own.iter().copied().collect();
                let mut targets = dir.sample(rng, n, &own);
                add_resync_peer(&mut targets, resync);
                targets.sort();
                targets.dedup();
                targets
            }
        }
    }

    /// Where pushes may go: alive members but `exclude`, or every listed
    /// node but us and `exclude`.
    pub(crate) fn push_peers(&self, exclude: Option<(&NodeId, SocketAddr)>) -> PushPeers {
        match self {
            Peers::Swim(s) => PushPeers::Members(s.alive_addrs(exclude.map(|(id, _)| id))),
            Peers::Given { dir, own } => {
                let mut skip: Vec<SocketAddr> = own
                    .iter()
                    .copied()
                    .chain(exclude.map(|(_, addr)| addr))
                    .filter(|a| dir.contains(a))
                    .collect();
                skip.dedup();
                PushPeers::Drawn(dir.clone(), skip)
            }
        }
    }

    /// How many peers a fresh write should reach.
    pub(crate) fn alive_count(&self) -> usize {
        match self {
            Peers::Swim(s) => s.alive_count(),
            Peers::Given { dir, .. } => dir.len().saturating_sub(1),
        }
    }

    /// Where to announce our departure.
    pub(crate) fn leave_targets(&self) -> Vec<SocketAddr> {
        match self {
            Peers::Swim(s) => s.live().into_iter().map(|m| m.addr).collect(),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// Where the peer `node`, whose pages come from `pages_from`, is
    /// reached: its member address (it may have moved), or with a directory
    /// the address its pages came from.
    pub(crate) fn addr_of(&self, node: &NodeId, pages_from: SocketAddr) -> Option<SocketAddr> {
        match self {
            Peers::Swim(s) => s.get(node).map(|m| m.addr),
            Peers::Given { .. } => Some(pages_from),
        }
    }

    /// Whether `node` is a live member reached at `addr` (with a directory:
    /// whether `addr` is listed): a peer we may ask for a stream.
    pub(crate) fn is_live_at(&self, node: &NodeId, addr: SocketAddr) -> bool {
        match self {
            Peers::Swim(s) => s
                .get(node)
                .is_some_and(|m| m.state.is_live() && m.addr == addr),
            Peers::Given { dir, .. } => dir.contains(&addr),
        }
    }

    /// Whether `node` is a live member whose address has the IP `ip` (with
    /// a directory: whether a listed address has it): a peer we may serve a
    /// stream to over a connection from `ip`.
    pub(crate) fn is_live_from(&self, node: &NodeId, ip: IpAddr) -> bool {
        match self {
            Peers::Swim(s) => s
                .get(node)
                .is_some_and(|m| m.state.is_live() && m.addr.ip() == ip),
            Peers::Given { dir, .. } => dir.addrs.iter().any(|a| a.ip() == ip),
        }
    }

    /// Whether some live member's address has the IP `ip` (with a
    /// directory: some listed address): a connection we may accept.
    pub(crate) fn any_live_from(&self, ip: IpAddr) -> bool {
        match self {
            Peers::Swim(s) => s.live().iter().any(|m| m.addr.ip() == ip),
            Peers::Given { dir, .. } => dir.addrs.iter().any(|a| a.ip() == ip),
        }
    }

    /// The live members whose digests decide early collection of
    /// superseded writes; `None` when membership is not kept (nothing is
    /// collected early then).
    pub(crate) fn live_for_collection(&self) -> Option<Vec<Member>> {
        match self {
            Peers::Swim(s) => Some(s.live()),
            Peers::Given { .. } => None,
        }
    }

    /// The members alive or suspect: node id and address.
    pub(crate) fn live(&self) -> Vec<Member> {
        match self {
            Peers::Swim(s) => s.live(),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// The member with id `node`, if membership is kept and it is known.
    pub(crate) fn member(&self, node: &NodeId) -> Option<Member> {
        match self {
            Peers::Swim(s) => s.get(node),
            Peers::Given { .. } => None,
        }
    }

    /// Whether we refuted a rumor of our own death since the last call.
    pub(crate) fn take_refuted_death(&mut self) -> bool {
        match self {
            Peers::Swim(s) => s.take_refuted_death(),
            Peers::Given { .. } => false,
        }
    }

    /// Every member known.
    pub(crate) fn all(&self) -> Vec<Member> {
        match self {
            Peers::Swim(s) => s.all(),
            Peers::Given { .. } => Vec::new(),
        }
    }

    /// The next membership event.
    pub(crate) fn poll_event(&mut self) -> Option<MemberEvent> {
        match self {
            Peers::Swim(s) => s.poll_event(),
            Peers::Given { .. } => None,
        }
    }

    /// Sizes of the maps membership keeps (all zero with a directory).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> [usize; 7] {
        match self {
            Peers::Swim(s) => s.sizes(),
            Peers::Given { .. } => [0; 7],
        }
    }

    /// SWIM's state, for tests.
    #[cfg(test)]
    pub(crate) fn swim(&self) -> Option<&Swim> {
        match self {
            Peers::Swim(s) => Some(s),
            Peers::Given { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
}
