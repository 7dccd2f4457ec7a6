//! The member-list fingerprint and bucket-by-bucket reconciliation.
//!
//! Every header carries a 64-bit fingerprint of the sender's list of live
//! members (ids and generations, XORed, so the order of arrival does not
//! matter). Two nodes whose fingerprints differ swap the fingerprints of 32
//! buckets of their lists and the members of the buckets that differ
//! (`MemberSync`, at most three messages): that is how joins spread.

use std::collections::BTreeMap;
use std::time::Duration;

use gossipkv_proto::{member_size_hint, Sender};
use gossipkv_storage::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use super::member::MemberState;
use super::table::Entry;
use crate::hash::stable_hash;
use crate::time::Instant;

/// Buckets a member list is split into for reconciliation.
pub(crate) const BUCKETS: usize = 32;

/// The bucket of a member key.
fn bucket_of(key: u64) -> usize {
    (key >> 59) as usize % BUCKETS
}

/// Whether a member in `state` counts in the member-list fingerprint: live
/// members only, so that nodes that learned of a dead or departed member at
/// different times (or never) still agree.
pub(crate) fn listed(state: MemberState) -> bool {
    state.is_live()
}

/// Contribution of one node incarnation to a member-list fingerprint.
pub(crate) fn member_key(node: &NodeId, generation: u64) -> u64 {
    let mut bytes = Vec::with_capacity(node.as_str().len() + 8);
    bytes.extend_from_slice(node.as_str().as_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    stable_hash(&bytes)
}

/// The fingerprint of one node's member list (the node itself included),
/// whole and per bucket.
#[derive(Debug)]
pub(crate) struct Fingerprint {
    hash: u64,
    buckets: [u64; BUCKETS],
    /// When the list last changed (a join, restart or removal); `None`: never.
    changed: Option<Instant>,
    /// For how long after a change first messages carry member samples too.
    settle: Duration,
}

impl Fingerprint {
    /// The fingerprint of a list holding only the local node.
    pub(crate) fn new(local: &NodeId, generation: u64, settle: Duration) -> Self {
        let key = member_key(local, generation);
        let mut buckets = [0; BUCKETS];
        buckets[bucket_of(key)] = key;
        Fingerprint {
            hash: key,
            buckets,
            changed: None,
            settle,
        }
    }

    /// The whole fingerprint.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// The bucket fingerprints.
    pub(crate) fn buckets(&self) -> Vec<u64> {
        self.buckets.to_vec()
    }

    /// Adds or removes a member key.
    pub(crate) fn toggle(&mut self, key: u64, now: Instant) {
        self.hash ^= key;
        self.buckets[bucket_of(key)] ^= key;
        self.changed = Some(now);
    }

    /// Whether the list changed in the last settle period.
    pub(crate) fn recently_changed(&self, now: Instant) -> bool {
        self.changed
            .is_some_and(|at| now.saturating_since(at) < self.settle)
    }

    /// Our live members in the buckets whose fingerprints differ from
    /// `theirs`, in random order, within `budget` bytes of entries; `None`
    /// when no bucket differs (or `theirs` is not a bucket list).
    pub(crate) fn reconcile(
        &self,
        members: &BTreeMap<NodeId, Entry>,
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
        // In id order (the map's), then shuffled by the seeded generator.
        let mut candidates: Vec<(&NodeId, &Entry)> = members
            .iter()
            .filter(|(_, e)| listed(e.state) && differs[bucket_of(e.key)])
            .collect();
        candidates.shuffle(rng);
        let mut out = Vec::new();
        let mut used = 0;
        for (n, e) in candidates {
            let cost = member_size_hint(n.as_str().len(), e.addr_len);
            if used + cost > budget {
                break;
            }
            used += cost;
            out.push(e.wire(n));
        }
        Some(out)
    }
}
