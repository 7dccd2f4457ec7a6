//! Values that die with their owner (ephemeral values), kept in step with
//! the membership.
//!
//! The store holds ephemeral values with their owner's origin (node id and
//! generation) and can hide, show and remove them; this module decides
//! when, from the member table, at every membership check:
//!
//! | the owner's member | its ephemeral values |
//! |---|---|
//! | alive or suspect, same generation | shown |
//! | dead, same generation | hidden; removed for good after [`ProtocolConfig::ephemeral_grace`](crate::ProtocolConfig::ephemeral_grace) |
//! | left, same generation | removed at once |
//! | a newer generation (alive or not), or this node's own older generation | removed at once (a generation never comes back) |
//! | forgotten after it was seen dead | removed at once |
//! | unknown (not heard of yet) | left as they are |
//!
//! Removing turns each value into the tombstone of its own version, on each
//! node by itself: no message. A member that refutes its death before the
//! grace gets its values back where they were only hidden; after it, the
//! owner writes them again ([`Protocol`](crate::Protocol) calls
//! [`Store::rewrite_owned`](gossipkv_storage::Store::rewrite_owned) when it
//! refutes a rumor of its death), and the new versions beat the tombstones.
//!
//! State: when each hidden owner was first seen dead, one entry per owner
//! holding ephemeral values, so bounded by the origins the store holds.

use std::collections::BTreeMap;
use std::time::Duration;

use gossipkv_storage::{Origin, Store};
use tracing::debug;

use crate::peers::Peers;
use crate::swim::MemberState;
use crate::time::Instant;
use crate::Stats;

/// What the membership says of an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Shown.
    Live,
    /// Hidden, and removed once dead for the grace period.
    Dead,
    /// Removed at once.
    Gone,
    /// Nothing known: leave as is.
    Unknown,
}

/// Ephemeral values' owners: when each was first seen dead.
#[derive(Debug, Default)]
pub(crate) struct Owners {
    dead_since: BTreeMap<Origin, Instant>,
}

impl Owners {
    /// Brings the ephemeral values of every owner in step with `peers`
    /// (see the module docs). `me` is this node's origin.
    pub(crate) fn check(
        &mut self,
        store: &Store,
        peers: &Peers,
        me: &Origin,
        now: Instant,
        grace: Duration,
        stats: &mut Stats,
    ) {
        let owners = store.owners();
        self.dead_since.retain(|o, _| owners.contains(o));
        for origin in owners {
            if origin == *me {
                continue;
            }
            match verdict(peers, me, &origin) {
                Verdict::Live => {
                    self.dead_since.remove(&origin);
                    stats.owned_shown += store.show_owner(&origin) as u64;
                }
                Verdict::Dead => {
                    let since = *self.dead_since.entry(origin.clone()).or_insert(now);
                    stats.owned_hidden += store.hide_owner(&origin) as u64;
                    if now.saturating_since(since) >= grace {
                        remove(store, &origin, "dead past the grace period", stats);
                    }
                }
                Verdict::Gone => {
                    self.dead_since.remove(&origin);
                    stats.owned_hidden += store.hide_owner(&origin) as u64;
                    remove(store, &origin, "left or replaced", stats);
                }
                Verdict::Unknown if self.dead_since.remove(&origin).is_some() => {
                    // Dead, then forgotten before the grace ran out.
                    remove(store, &origin, "dead and forgotten", stats);
                    store.forget_owner(&origin);
                }
                Verdict::Unknown => {
                    if store.owned_len(&origin) == 0 {
                        store.forget_owner(&origin);
                    }
                }
            }
        }
    }

    /// Owners tracked (for the bounded-state tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.dead_since.len()
    }
}

fn remove(store: &Store, origin: &Origin, why: &str, stats: &mut Stats) {
    let removed = store.remove_owned(origin);
    if removed > 0 {
        debug!(owner = %origin.node, generation = origin.generation, removed, why,
            "removed ephemeral values");
        stats.owned_removed += removed as u64;
    }
}

/// What the membership (and this node's own identity) says of `origin`.
pub(crate) fn verdict(peers: &Peers, me: &Origin, origin: &Origin) -> Verdict {
    if origin.node == me.node {
        // Our own older generation (a newer one is a forgery that the
        // guards refuse; it is not ours to judge).
        return if origin.generation < me.generation {
            Verdict::Gone
        } else {
            Verdict::Unknown
        };
    }
    let Some(m) = peers.member(&origin.node) else {
        return Verdict::Unknown;
    };
    match m.generation.cmp(&origin.generation) {
        std::cmp::Ordering::Greater => Verdict::Gone,
        // Writes of a generation the member table has not met yet: it runs.
        std::cmp::Ordering::Less => Verdict::Live,
        std::cmp::Ordering::Equal => match m.state {
            MemberState::Alive | MemberState::Suspect => Verdict::Live,
            MemberState::Dead => Verdict::Dead,
            MemberState::Left => Verdict::Gone,
        },
    }
}
