//! Change notifications: [`Watcher`] for keys, [`MemberEvents`] for membership.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::codec::{Codec, CodecError};
use gossipkv_core::MemberEvent;

/// A change of one key, as the store applied it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) key: Arc<str>,
    pub(crate) value: Option<Bytes>,
    /// Deleted by this node's memory limits (see [`WatchEvent::evicted`]).
    pub(crate) evicted: bool,
}

/// One change seen by a [`Watcher`].
///
/// Four cases, told apart by `value`, `error` and `evicted`:
///
/// | `value` | `error` | meaning |
/// |---|---|---|
/// | `Some(v)` | `None` | the key was set to `v` |
/// | `None` | `None` | the key was deleted ([`is_delete`](Self::is_delete)), or evicted by this node's memory limits when [`evicted`](Self::evicted) is set ([`is_eviction`](Self::is_eviction)) |
/// | `None` | `Some(e)` | the key was set, but its value does not decode with this node's codec (for example a value written by a node with another value type); `e` says why |
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
    /// ([`MemoryPolicy::EvictLru`](crate::MemoryPolicy::EvictLru)). An
    /// eviction is a delete that replicates: other nodes see it as an
    /// ordinary delete.
    pub evicted: bool,
}

impl<K, V> WatchEvent<K, V> {
    /// Whether this event is a delete (an eviction is not): no value, no
    /// decoding error.
    pub fn is_delete(&self) -> bool {
        self.value.is_none() && self.error.is_none() && !self.evicted
    }

    /// Whether this node evicted the key (see [`WatchEvent::evicted`]).
    pub fn is_eviction(&self) -> bool {
        self.evicted
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
                evicted: c.evicted,
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
