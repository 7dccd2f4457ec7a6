//! Change notifications: [`Watcher`] for keys, [`MemberEvents`] for membership.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::codec::{Codec, CodecError};
use gossipkv_core::MemberEvent;
use gossipkv_storage::{ChangeCause, Key};

/// A change of one key, as the store applied it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) key: Key,
    pub(crate) value: Option<Bytes>,
    pub(crate) kind: ChangeKind,
}

/// Why a key's value changed, as a [`WatchEvent`] tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A write (set or delete), on this node or another.
    Write,
    /// This node evicted the key to stay within its memory limits
    /// ([`MemoryPolicy::EvictLru`](crate::MemoryPolicy::EvictLru)). An
    /// eviction is a delete that replicates: other nodes see it as an
    /// ordinary delete.
    Evicted,
    /// The key's time to live ran out
    /// ([`GossipKv::set_with_ttl`](crate::GossipKv::set_with_ttl)). Every
    /// node sees this at the same wall-clock time, within clock skew.
    Expired,
    /// The key was ephemeral
    /// ([`GossipKv::set_ephemeral`](crate::GossipKv::set_ephemeral)) and
    /// its owner died, left, or restarted as a new generation.
    OwnerGone,
    /// The key was ephemeral, hidden because its owner was thought dead,
    /// and the owner proved alive: the value is back.
    OwnerBack,
}

impl From<ChangeCause> for ChangeKind {
    fn from(c: ChangeCause) -> Self {
        match c {
            ChangeCause::Expired => ChangeKind::Expired,
            ChangeCause::OwnerGone => ChangeKind::OwnerGone,
            ChangeCause::OwnerBack => ChangeKind::OwnerBack,
            _ => ChangeKind::Write,
        }
    }
}

/// One change seen by a [`Watcher`].
///
/// Told apart by `value`, `error` and `kind`:
///
/// | `value` | `error` | `kind` | meaning |
/// |---|---|---|---|
/// | `Some(v)` | `None` | `Write` | the key was set to `v` |
/// | `Some(v)` | `None` | `OwnerBack` | an ephemeral key whose owner was thought dead is shown again |
/// | `None` | `None` | `Write` | the key was deleted ([`is_delete`](Self::is_delete)) |
/// | `None` | `None` | `Evicted` | evicted by this node's memory limits ([`is_eviction`](Self::is_eviction)) |
/// | `None` | `None` | `Expired` | its time to live ran out ([`is_expiry`](Self::is_expiry)) |
/// | `None` | `None` | `OwnerGone` | an ephemeral key whose owner died or left ([`is_owner_gone`](Self::is_owner_gone)) |
/// | `None` | `Some(e)` | any | the key has a value, but it does not decode with this node's codec (for example a value written by a node with another value type); `e` says why |
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchEvent<K, V> {
    /// The full key.
    pub key: K,
    /// The new value; `None` when the key was deleted, or when the new
    /// value does not decode (then [`error`](Self::error) is set).
    pub value: Option<V>,
    /// Why the new value does not decode; `None` for a decoded value and
    /// for a delete. Undecodable values are delivered with this set, never
    /// skipped.
    pub error: Option<CodecError>,
    /// How many changes (of any key) this watcher missed just before this
    /// one because it fell behind. When non-zero, re-read the keys you care
    /// about (for example with `scan_prefix`).
    pub missed: u64,
    /// Whether this node evicted the key to stay within its memory limits
    /// (the same as `kind == ChangeKind::Evicted`).
    pub evicted: bool,
    /// Why the value changed.
    pub kind: ChangeKind,
}

impl<K, V> WatchEvent<K, V> {
    /// Whether this event is a delete (an eviction, an expiry or an owner
    /// gone is not): no value, no decoding error, a write.
    pub fn is_delete(&self) -> bool {
        self.value.is_none() && self.error.is_none() && self.kind == ChangeKind::Write
    }

    /// Whether this node evicted the key (see [`ChangeKind::Evicted`]).
    pub fn is_eviction(&self) -> bool {
        self.kind == ChangeKind::Evicted
    }

    /// Whether the key expired (see [`ChangeKind::Expired`]).
    pub fn is_expiry(&self) -> bool {
        self.kind == ChangeKind::Expired
    }

    /// Whether the key vanished with its owner (see
    /// [`ChangeKind::OwnerGone`]).
    pub fn is_owner_gone(&self) -> bool {
        self.kind == ChangeKind::OwnerGone
    }

    /// Whether the key no longer shows a value, for any reason: deleted,
    /// evicted, expired or gone with its owner (a value that does not
    /// decode is not gone).
    pub fn is_gone(&self) -> bool {
        self.value.is_none() && self.error.is_none() && self.kind != ChangeKind::OwnerBack
    }
}

/// Changes of the keys under a prefix, local and remote; see
/// [`GossipKv::watch`](crate::GossipKv::watch).
pub struct Watcher<K, V> {
    rx: broadcast::Receiver<Change>,
    closed: watch::Receiver<bool>,
    prefix: String,
    codec: Arc<dyn Codec<V>>,
    missed: u64,
    _key: PhantomData<fn() -> K>,
}

impl<K, V> std::fmt::Debug for Watcher<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("prefix", &self.prefix)
            .field("missed", &self.missed)
            .finish()
    }
}

/// Whether the node behind `closed` shut down (or is gone).
fn is_closed(closed: &watch::Receiver<bool>) -> bool {
    *closed.borrow() || closed.has_changed().is_err()
}

/// Receives the next item of `rx`; once `closed` says the node shut down,
/// delivers what is still queued, then `None`.
async fn next<T: Clone>(
    rx: &mut broadcast::Receiver<T>,
    closed: &mut watch::Receiver<bool>,
    missed: &mut u64,
) -> Option<T> {
    loop {
        // What is queued first, even after shutdown.
        match rx.try_recv() {
            Ok(item) => return Some(item),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                *missed += n;
                continue;
            }
            Err(broadcast::error::TryRecvError::Closed) => return None,
            Err(broadcast::error::TryRecvError::Empty) => {}
        }
        if is_closed(closed) {
            return None;
        }
        tokio::select! {
            biased;
            r = rx.recv() => match r {
                Ok(item) => return Some(item),
                Err(broadcast::error::RecvError::Lagged(n)) => *missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            // Shut down: go round to drain the queue.
            _ = closed.wait_for(|c| *c) => {}
        }
    }
}

impl<K: From<String>, V: 'static> Watcher<K, V> {
    pub(crate) fn new(
        rx: broadcast::Receiver<Change>,
        closed: watch::Receiver<bool>,
        prefix: String,
        codec: Arc<dyn Codec<V>>,
    ) -> Self {
        Watcher {
            rx,
            closed,
            prefix,
            codec,
            missed: 0,
            _key: PhantomData,
        }
    }

    /// The prefix watched.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next change under the prefix. After the node shut down (or its
    /// last handle was dropped), the changes already queued are still
    /// delivered, then `None`.
    ///
    /// A value that does not decode with the node's codec is delivered
    /// too, with `value: None` and [`WatchEvent::error`] set (and logged
    /// with `warn!`).
    pub async fn recv(&mut self) -> Option<WatchEvent<K, V>> {
        loop {
            let c = next(&mut self.rx, &mut self.closed, &mut self.missed).await?;
            if !c.key.starts_with(&self.prefix) {
                continue;
            }
            let (value, error) = match &c.value {
                Some(b) => match self.codec.decode(b) {
                    Ok(v) => (Some(v), None),
                    Err(e) => {
                        warn!(
                            key = %c.key,
                            error = %crate::error::chain(&e),
                            "watched value does not decode; delivered with WatchEvent::error"
                        );
                        (None, Some(e))
                    }
                },
                None => (None, None),
            };
            let missed = std::mem::take(&mut self.missed);
            return Some(WatchEvent {
                key: K::from(c.key.to_string()),
                value,
                error,
                missed,
                evicted: c.kind == ChangeKind::Evicted,
                kind: c.kind,
            });
        }
    }
}

/// Membership changes; see [`GossipKv::member_events`](crate::GossipKv::member_events).
#[derive(Debug)]
pub struct MemberEvents {
    rx: broadcast::Receiver<MemberEvent>,
    closed: watch::Receiver<bool>,
    missed: u64,
}

impl MemberEvents {
    pub(crate) fn new(rx: broadcast::Receiver<MemberEvent>, closed: watch::Receiver<bool>) -> Self {
        MemberEvents {
            rx,
            closed,
            missed: 0,
        }
    }

    /// The next membership change. After the node shut down (or its last
    /// handle was dropped), the events already queued are still delivered,
    /// then `None`.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        next(&mut self.rx, &mut self.closed, &mut self.missed).await
    }

    /// How many events this stream missed so far because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}
