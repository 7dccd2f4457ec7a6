//! Probing: the failure detector's half of SWIM.
//!
//! Every round the first Syn goes to the next member of a shuffled
//! round-robin order, and its answer is the acknowledgement. A member that
//! does not answer within the probe timeout is doubted and a few other
//! members are asked to probe it (`Probe` requests, whose answers vouch for
//! it); doubted and suspected members are also probed directly, twice per
//! interval.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{Body, Probe, Sender};
use gossipkv_storage::NodeId;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use tracing::trace;

use super::member::{Member, MemberState};
use super::table::Table;
use super::Action;
use crate::time::Instant;
use crate::Stats;

/// Most members probed on behalf of others at once.
pub(crate) const MAX_RELAYS: usize = 64;

/// A probe sent and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    sent: Instant,
    /// Whether other members were asked to probe the target too.
    helped: bool,
}

/// A member that asked us to probe another: where to send the answer, and
/// until when.
#[derive(Debug, Clone, Copy)]
struct Relay {
    to: SocketAddr,
    until: Instant,
}

/// The prober's state.
#[derive(Debug, Default)]
pub(crate) struct Prober {
    /// Members probed (sent a Syn) and not heard from since.
    awaiting: BTreeMap<NodeId, Awaiting>,
    /// The round-robin probe order (shuffled again once used up).
    order: Vec<NodeId>,
    /// Members we probe on behalf of others.
    relays: BTreeMap<NodeId, Vec<Relay>>,
    /// When each doubted or suspected member was last probed directly.
    probed: BTreeMap<NodeId, Instant>,
}

impl Prober {
    /// The next member to probe in the shuffled round-robin order; its
    /// answer is awaited from `now`.
    pub(crate) fn next(
        &mut self,
        table: &Table,
        now: Instant,
        rng: &mut impl Rng,
    ) -> Option<Member> {
        for _ in 0..2 {
            while let Some(node) = self.order.pop() {
                if let Some(m) = table.get(&node).filter(|m| m.state.is_live()) {
                    self.expect(&m.node_id, now);
                    return Some(m);
                }
            }
            self.order = table.live().into_iter().map(|m| m.node_id).collect();
            self.order.shuffle(rng);
        }
        None
    }

    /// Starts waiting for `node`'s answer (unless already waiting).
    fn expect(&mut self, node: &NodeId, now: Instant) {
        self.awaiting.entry(node.clone()).or_insert(Awaiting {
            sent: now,
            helped: false,
        });
    }

    /// Probes left unanswered: after the probe timeout the target is
    /// doubted and `indirect` other alive members are asked to probe it
    /// too; a probe is forgotten after an interval. Also drops relay
    /// requests past their deadline.
    pub(crate) fn check(
        &mut self,
        table: &mut Table,
        now: Instant,
        interval: Duration,
        rng: &mut impl Rng,
        stats: &mut Stats,
    ) -> Vec<Action> {
        let timeout = table.cfg.probe_timeout;
        let indirect = table.cfg.indirect_probes;
        let mut ask = Vec::new();
        self.awaiting.retain(|node, a| {
            let waited = now.saturating_since(a.sent);
            if waited >= timeout && !a.helped {
                a.helped = true;
                ask.push(node.clone());
            }
            waited < interval
        });
        for node in &ask {
            table.doubt(node, now);
        }
        let mut actions = Vec::new();
        for node in ask {
            let Some(target) = table.wire_of(&node) else {
                continue;
            };
            let helpers: Vec<SocketAddr> = table
                .in_states(&[MemberState::Alive])
                .into_iter()
                .filter(|m| m.node_id != node)
                .map(|m| m.addr)
                .collect::<Vec<_>>()
                .choose_multiple(rng, indirect)
                .copied()
                .collect();
            for to in helpers {
                let body = Body::Probe(Probe {
                    target: target.clone(),
                    request: true,
                });
                stats.probe_requests_sent += 1;
                actions.push(Action::Send(to, body));
            }
        }
        self.relays.retain(|_, asks| {
            asks.retain(|r| r.until > now);
            !asks.is_empty()
        });
        actions
    }

    /// Doubted and suspected members to probe directly now: each up to
    /// twice per interval, so that a member that is alive but unlucky with
    /// loss answers before it is suspected, or declared dead (and learns
    /// that it is suspected, so that it refutes).
    pub(crate) fn suspects_due(
        &mut self,
        table: &Table,
        now: Instant,
        interval: Duration,
    ) -> Vec<SocketAddr> {
        let suspects = table.to_probe();
        if suspects.is_empty() {
            self.probed.clear();
            return Vec::new();
        }
        let gap = (interval / 2).max(Duration::from_millis(1));
        self.probed
            .retain(|n, _| suspects.iter().any(|m| &m.node_id == n));
        let mut due = Vec::new();
        for m in suspects {
            if self.probed.get(&m.node_id).is_some_and(|&t| now < t + gap) {
                continue;
            }
            self.probed.insert(m.node_id.clone(), now);
            self.expect(&m.node_id, now);
            due.push(m.addr);
        }
        due
    }

    /// A datagram came from `sender` at `from`: the probe we may be waiting
    /// on is answered, and so are the members that asked us to probe it
    /// (the answers to send are returned).
    pub(crate) fn heard_from(&mut self, from: SocketAddr, sender: &Sender) -> Vec<Action> {
        self.awaiting.remove(&sender.node_id);
        let Some(asks) = self.relays.remove(&sender.node_id) else {
            return Vec::new();
        };
        let target = Sender {
            addr: sender.addr.or(Some(from)),
            members_hash: 0,
            ..sender.clone()
        };
        asks.into_iter()
            .map(|r| {
                Action::Send(
                    r.to,
                    Body::Probe(Probe {
                        target: target.clone(),
                        request: false,
                    }),
                )
            })
            .collect()
    }

    /// Another member vouches that `node` answered it: that counts as an
    /// answer to our probe.
    pub(crate) fn vouched(&mut self, node: &NodeId, now: Instant) {
        if let Some(a) = self.awaiting.remove(node) {
            trace!(member = %node, waited = ?now.saturating_since(a.sent), "probe answered indirectly");
        }
    }

    /// A member at `from` asks us to probe `target` (a known member) for it:
    /// returns whether a probe must be sent now (not already under way).
    pub(crate) fn relay(&mut self, target: &NodeId, from: SocketAddr, until: Instant) -> bool {
        let fresh = !self.relays.contains_key(target);
        if fresh && self.relays.len() >= MAX_RELAYS {
            return false;
        }
        let asks = self.relays.entry(target.clone()).or_default();
        if !asks.iter().any(|r| r.to == from) && asks.len() < MAX_RELAYS {
            asks.push(Relay { to: from, until });
        }
        fresh
    }

    /// Sizes of the prober's maps (awaiting, relays, probed), for bound checks.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        (self.awaiting.len(), self.relays.len(), self.probed.len())
    }

    /// Whether `node`'s answer is awaited (for tests).
    #[cfg(test)]
    pub(crate) fn awaits(&self, node: &NodeId) -> bool {
        self.awaiting.contains_key(node)
    }
}
