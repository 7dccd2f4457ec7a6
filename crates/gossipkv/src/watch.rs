//! Change notifications: [`Watcher`] for keys, [`MemberEvents`] for membership.

use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::codec::Codec;
use gossipkv_core::MemberEvent;

/// A change of one key, as the store applied it.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) key: Arc<str>,
    pub(crate) value: Option<Bytes>,
}

/// One change seen by a [`Watcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent<K, V> {
    /// The full key.
    pub key: K,
    /// The new value; `None` when the key was deleted.
    pub value: Option<V>,
    /// How many changes (of any key) this watcher missed just before this
    /// one because it fell behind. When non-zero, re-read the keys you care
    /// about (for example with `scan_prefix`).
    pub missed: u64,
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

    /// The next change under the prefix; `None` once the node shut down.
    /// A value that does not decode with the node's codec is skipped (and
    /// logged).
    pub async fn recv(&mut self) -> Option<WatchEvent<K, V>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let change = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.closed.wait_for(|c| *c) => return None,
            };
            match change {
                Ok(c) if c.key.starts_with(&self.prefix) => {
                    let value = match &c.value {
                        Some(b) => match self.codec.decode(b) {
                            Ok(v) => Some(v),
                            Err(e) => {
                                warn!(key = %c.key, error = %e, "watched value does not decode; skipped");
                                continue;
                            }
                        },
                        None => None,
                    };
                    let missed = std::mem::take(&mut self.missed);
                    return Some(WatchEvent {
                        key: K::from(c.key.to_string()),
                        value,
                        missed,
                    });
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
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

    /// The next membership change; `None` once the node shut down.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            let r = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.closed.wait_for(|c| *c) => return None,
            };
            match r {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => self.missed += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// How many events this stream missed so far because it fell behind.
    pub fn missed(&self) -> u64 {
        self.missed
    }
}
