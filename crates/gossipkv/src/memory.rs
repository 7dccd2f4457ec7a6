//! Memory limits in the facade: the builder's options checked and turned
//! into the store's [`Limits`], evictions shown to watchers and pushed to
//! peers, and budget errors turned into [`Error`]s. The policies themselves
//! live in `gossipkv-storage` (`store/budget.rs`).

use std::sync::Arc;

use gossipkv_storage::{entry_cost, BudgetError, Limits, Policy, Record, Store};
use tokio::sync::{broadcast, mpsc};

use crate::error::{ConfigOption, Error};
use crate::watch::{Change, ChangeKind};

/// What a node does when a write would take it over
/// [`max_entries`](crate::Builder::max_entries) or
/// [`max_bytes`](crate::Builder::max_bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryPolicy {
    /// A local write that would exceed a limit fails with
    /// [`Error::OverBudget`] and writes nothing (right for configuration).
    /// Writes replicated from peers are always applied, since refusing them
    /// would leave the replicas different for good: a node can go over its
    /// limits by what its peers write, and its own writes are refused until
    /// deletes bring it back within them. Deletes are never refused.
    #[default]
    Reject,
    /// The least recently used keys are evicted until the node is within
    /// its limits again (right for a cache); writes replicated from peers
    /// evict too. An eviction is a delete: it replicates, so in a cluster an
    /// eviction on one node deletes the key on every node. Its tombstone
    /// counts toward `max_bytes` until the peers have it; when only such
    /// tombstones are left to pay for a new value, the write fails with
    /// [`Error::OverBudget`] until they are collected (a round or two), so
    /// the node never goes over `max_bytes` by more than one entry.
    EvictLru,
}

/// The memory limits a node was built with
/// ([`GossipKv::memory_limits`](crate::GossipKv::memory_limits)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryLimits {
    /// [`Builder::max_entries`](crate::Builder::max_entries) (`None`: no
    /// limit).
    pub max_entries: Option<usize>,
    /// [`Builder::max_bytes`](crate::Builder::max_bytes) (`None`: no limit).
    pub max_bytes: Option<usize>,
    /// [`Builder::memory_policy`](crate::Builder::memory_policy).
    pub policy: MemoryPolicy,
}

impl From<Limits> for MemoryLimits {
    fn from(l: Limits) -> Self {
        MemoryLimits {
            max_entries: l.max_entries,
            max_bytes: l.max_bytes,
            // The store has no policy but the two the builder gives it.
            policy: if l.policy == Policy::EvictLru {
                MemoryPolicy::EvictLru
            } else {
                MemoryPolicy::Reject
            },
        }
    }
}

/// Counters of a node's memory limits
/// ([`GossipKv::memory_stats`](crate::GossipKv::memory_stats)); all zero
/// without limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Keys this node evicted ([`MemoryPolicy::EvictLru`]), each a delete
    /// that replicates.
    pub evicted: u64,
    /// Tombstones collected before their retention to stay within
    /// `max_bytes` (once every live peer has them).
    pub tombstones_collected_early: u64,
    /// Local writes refused with [`Error::OverBudget`] or
    /// [`Error::TooLargeForBudget`].
    pub refused: u64,
    /// Times an eviction pass ended with the node still over its budget:
    /// nothing left to evict but tombstones its peers have not passed yet
    /// (what peers write is applied all the same).
    pub over_after_eviction: u64,
}

impl From<gossipkv_storage::BudgetStats> for MemoryStats {
    fn from(s: gossipkv_storage::BudgetStats) -> Self {
        MemoryStats {
            evicted: s.evicted,
            tombstones_collected_early: s.tombstones_collected_early,
            refused: s.refused,
            over_after_eviction: s.over_after_eviction,
        }
    }
}

/// The smallest `max_bytes` accepted: room for one entry of a short key
/// and a short value.
pub const MIN_MAX_BYTES: usize = entry_cost(16, Some(64));

/// The store's limits from the builder's options, checked.
pub(crate) fn limits(
    max_entries: Option<usize>,
    max_bytes: Option<usize>,
    policy: MemoryPolicy,
) -> Result<Limits, Error> {
    if max_entries == Some(0) {
        return Err(Error::config(
            ConfigOption::MaxEntries,
            "max entries must be at least 1",
        ));
    }
    if let Some(b) = max_bytes.filter(|b| *b < MIN_MAX_BYTES) {
        return Err(Error::config(
            ConfigOption::MaxBytes,
            format!("max bytes is {b}, at least {MIN_MAX_BYTES} (what an entry of a 16-byte key and a 64-byte value costs; see `entry_cost`)"),
        ));
    }
    Ok(Limits {
        max_entries,
        max_bytes,
        policy: match policy {
            MemoryPolicy::Reject => Policy::Reject,
            MemoryPolicy::EvictLru => Policy::EvictLru,
        },
    })
}

/// Shows evictions to watchers (as their own kind of change) and sends
/// their tombstones to the gossip task for eager push. Runs under the
/// store's shard lock: a broadcast send and a `try_send` only.
pub(crate) fn observe_evictions(
    store: &Store,
    changes: broadcast::Sender<Change>,
    push: Option<mpsc::Sender<Record>>,
) {
    if store.limits().is_unlimited() {
        return;
    }
    store.set_eviction_observer(Arc::new(move |record: &Record| {
        if changes.receiver_count() > 0 {
            let _ = changes.send(Change {
                key: record.key.clone(),
                value: None,
                kind: ChangeKind::Evicted,
            });
        }
        if let Some(tx) = &push {
            // Never block: anti-entropy delivers what the queue cannot take.
            let _ = tx.try_send(record.clone());
        }
    }));
}

/// The API's error for a write the budget refused.
pub(crate) fn budget_error(e: BudgetError) -> Error {
    match e {
        BudgetError::TooLarge { size, max_bytes } => Error::TooLargeForBudget { size, max_bytes },
        BudgetError::OverBudget {
            needed,
            bytes,
            max_bytes,
            entries,
            max_entries,
            ..
        } => Error::OverBudget {
            needed,
            bytes,
            max_bytes,
            entries,
            max_entries,
        },
        // A future kind of refusal: still typed as over budget.
        _ => Error::OverBudget {
            needed: 0,
            bytes: 0,
            max_bytes: None,
            entries: 0,
            max_entries: None,
        },
    }
}
