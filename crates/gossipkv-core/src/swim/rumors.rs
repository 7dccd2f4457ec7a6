//! Rumors: membership changes piggybacked on the datagrams an exchange
//! sends anyway, each a bounded number of times, and the member samples
//! that go to nodes whose member list differs from ours.

use std::collections::{BTreeMap, VecDeque};

use gossipkv_proto::{member_size_hint, Sender};
use gossipkv_storage::NodeId;
use rand::Rng;

use super::member::MemberState;
use super::reconcile::Fingerprint;
use super::table::Entry;
use crate::time::Instant;

/// The rumors waiting to be spread.
#[derive(Debug, Default)]
pub(crate) struct Rumors {
    /// Members with a rumor to spread, in the order they are sent round-robin.
    news: VecDeque<NodeId>,
    /// Transmissions left per member in `news`.
    left: BTreeMap<NodeId, u32>,
    /// Transmissions left of our own entry (after we refuted a rumor).
    self_news: u32,
    /// Every member's id, for uniform sampling; rebuilt after joins and
    /// removals (`ids_stale`).
    ids: Vec<NodeId>,
    ids_stale: bool,
}

/// How many times a rumor is sent: 3 ⌈log2(n + 2)⌉ for n members.
pub(crate) fn retransmits(members: usize) -> u32 {
    let n = u32::try_from(members).unwrap_or(u32::MAX - 2) + 2;
    3 * (u32::BITS - (n - 1).leading_zeros())
}

/// A member sample being filled (see [`Rumors::sample`]).
struct Picker<'a> {
    members: &'a BTreeMap<NodeId, Entry>,
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
        self.out.push(e.wire(node));
        true
    }
}

impl Rumors {
    /// Queues a rumor about `node` (its entry as we see it when sent), or
    /// renews its transmissions if it is queued already.
    pub(crate) fn spread(&mut self, node: &NodeId, members: usize) {
        let times = retransmits(members);
        match self.left.get_mut(node) {
            Some(left) => *left = (*left).max(times),
            None => {
                // Fresh rumors go first; sent ones queue up behind the rest.
                self.left.insert(node.clone(), times);
                self.news.push_front(node.clone());
            }
        }
    }

    /// Queues our own entry as a rumor (after a refutation).
    pub(crate) fn spread_self(&mut self, members: usize) {
        self.self_news = retransmits(members);
    }

    /// Drops the rumors about a member that was forgotten.
    pub(crate) fn forget(&mut self, node: &NodeId) {
        self.left.remove(node);
    }

    /// The member list changed: the id list for sampling is rebuilt when
    /// next needed.
    pub(crate) fn members_changed(&mut self) {
        self.ids_stale = true;
    }

    /// Whether rumors are waiting to be spread.
    pub(crate) fn pending(&self) -> bool {
        !self.news.is_empty() || self.self_news > 0
    }

    /// Member entries for a datagram to `to` (None: a node we know nothing
    /// of), within `budget` bytes: `me` if our own rumor is pending, the
    /// receiver's own entry when we hold it suspect or dead (so that it
    /// refutes), pending rumors (each send counts), then members picked
    /// uniformly at random if the receiver is unknown, or if its member-list
    /// fingerprint differs from ours and either this is a `reply` to a
    /// datagram that carried it or our list changed recently (otherwise the
    /// fingerprint we hold may be long stale, and a settled node would send
    /// samples on every first contact). Costs O(sample), not O(members).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sample(
        &mut self,
        members: &BTreeMap<NodeId, Entry>,
        print: &Fingerprint,
        me: &Sender,
        to: Option<&NodeId>,
        reply: bool,
        now: Instant,
        budget: usize,
        rng: &mut impl Rng,
    ) -> Vec<Sender> {
        let mut pick = Picker {
            members,
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
        let target = to.and_then(|n| members.get(n).map(|e| (n, e)));
        if let Some((n, e)) = target {
            if matches!(e.state, MemberState::Suspect | MemberState::Dead) {
                pick.offer(n);
            }
        }
        self.take_news(&mut pick);
        let differs = match target {
            None => true,
            Some((_, e)) => {
                e.members_hash != print.hash() && (reply || print.recently_changed(now))
            }
        };
        if differs && !members.is_empty() {
            if self.ids_stale || self.ids.len() != members.len() {
                self.ids = members.keys().cloned().collect();
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

    /// Offers pending rumors round-robin; each one sent counts against its
    /// budget of transmissions.
    fn take_news(&mut self, pick: &mut Picker<'_>) {
        for _ in 0..self.news.len() {
            let Some(node) = self.news.pop_front() else {
                break;
            };
            let Some(left) = self.left.get_mut(&node) else {
                continue;
            };
            if !pick.offer(&node) {
                self.news.push_front(node);
                break;
            }
            *left -= 1;
            if *left == 0 {
                self.left.remove(&node);
            } else {
                self.news.push_back(node);
            }
        }
    }

    /// Number of members with rumors queued (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.news.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rumors_are_sent_three_log2_n_times() {
        assert_eq!(retransmits(0), 3);
        assert_eq!(retransmits(2), 6);
        assert_eq!(retransmits(6), 9);
        assert_eq!(retransmits(1000), 30);
        assert!(retransmits(usize::MAX) <= 96, "no overflow");
    }
}
