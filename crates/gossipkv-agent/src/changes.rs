//! The agent's change feed: every change its node applies (local or
//! remote, any key), numbered by a per-agent change index, with the most
//! recent ones kept for watch streams that reconnect (`Last-Event-ID`).
//!
//! One task reads a [`Watcher`](gossipkv::Watcher) of every key and, for
//! each change, raises the index, keeps the change in a bounded ring and
//! broadcasts it. Long polls wait on the index; watch streams subscribe to
//! the broadcast.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::api::Node;

/// Most changes kept for resuming streams.
pub const RECENT_CHANGES: usize = 1024;
/// Most value bytes kept for resuming streams.
pub const RECENT_BYTES: usize = 8 << 20;

/// One change, as the feed numbers it.
#[derive(Clone, Debug)]
pub struct Change {
    /// Its number: the change index once it was applied.
    pub id: u64,
    /// Changes the feed missed just before this one (the node's watcher
    /// fell behind); they have no number of their own.
    pub missed: u64,
    /// The key.
    pub key: String,
    /// The entry, as JSON, when the key has a value (a put).
    pub entry: Option<serde_json::Value>,
    /// Why the key has no value (a delete): `deleted`, `expired`,
    /// `evicted`, `owner_gone` or `undecodable`.
    pub reason: &'static str,
}

impl Change {
    fn size(&self) -> usize {
        self.key.len() + self.entry.as_ref().map_or(0, |e| e.to_string().len())
    }
}

/// The feed shared by the API's handlers.
#[derive(Debug)]
pub struct Feed {
    index: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    tx: broadcast::Sender<Arc<Change>>,
    recent: Mutex<Recent>,
    missed: AtomicU64,
}

#[derive(Debug, Default)]
struct Recent {
    changes: VecDeque<Arc<Change>>,
    bytes: usize,
}

/// What a stream resuming after an id gets from the ring.
#[derive(Debug)]
pub enum Resume {
    /// The changes after the id (possibly none): nothing was lost.
    Changes(Vec<Arc<Change>>),
    /// The ring no longer reaches back to the id (or the id is from the
    /// future, such as another agent's): the stream must start with a
    /// reset.
    TooOld,
}

impl Feed {
    /// A feed of `kv`'s changes, fed by a task on the current tokio
    /// runtime (without one, the feed stays empty). The task ends when the
    /// node shuts down; then [`subscribe_closed`](Self::subscribe_closed) says so.
    pub fn start(kv: &Node) -> Arc<Feed> {
        let feed = Arc::new(Feed {
            index: watch::Sender::new(0),
            closed: watch::Sender::new(false),
            tx: broadcast::Sender::new(RECENT_CHANGES),
            recent: Mutex::new(Recent::default()),
            missed: AtomicU64::new(0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut watcher = kv.watch("");
            let kv = kv.clone();
            let f = feed.clone();
            rt.spawn(async move {
                while let Some(ev) = watcher.recv().await {
                    let entry = ev
                        .value
                        .as_ref()
                        .and_then(|_| kv.get_record(&ev.key))
                        .and_then(|r| {
                            serde_json::to_value(crate::api::EntryJson::from_record(&r)).ok()
                        });
                    let reason = match ev.kind {
                        gossipkv::ChangeKind::Evicted => "evicted",
                        gossipkv::ChangeKind::Expired => "expired",
                        gossipkv::ChangeKind::OwnerGone => "owner_gone",
                        _ if ev.error.is_some() => "undecodable",
                        _ => "deleted",
                    };
                    f.push(ev.key, entry, reason, ev.missed);
                }
                f.closed.send_replace(true);
            });
        }
        feed
    }

    fn push(
        &self,
        key: String,
        entry: Option<serde_json::Value>,
        reason: &'static str,
        missed: u64,
    ) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = self.index().saturating_add(1).saturating_add(missed);
        let change = Arc::new(Change {
            id,
            missed,
            key,
            entry,
            reason,
        });
        if missed > 0 {
            self.missed.fetch_add(missed, Ordering::Relaxed);
            // The ring cannot bridge a gap.
            recent.changes.clear();
            recent.bytes = 0;
        }
        recent.bytes += change.size();
        recent.changes.push_back(change.clone());
        while recent.changes.len() > RECENT_CHANGES || recent.bytes > RECENT_BYTES {
            match recent.changes.pop_front() {
                Some(old) => recent.bytes -= old.size(),
                None => break,
            }
        }
        // Under the ring's lock, so that a subscriber that reads the ring
        // and then the broadcast sees every change once.
        self.index.send_replace(id);
        let _ = self.tx.send(change);
    }

    /// The change index now.
    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Changes the feed missed because the node's watcher fell behind.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// A receiver of the index.
    pub fn subscribe_index(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// A receiver of the closed flag.
    pub fn subscribe_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Subscribes to the changes to come and, for a stream resuming after
    /// `after`, returns what it missed from the ring, atomically: no change
    /// is in both or in neither.
    pub fn subscribe(&self, after: Option<u64>) -> (broadcast::Receiver<Arc<Change>>, Resume) {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.tx.subscribe();
        let now = self.index();
        let resume = match after {
            None => Resume::Changes(Vec::new()),
            Some(after) if after == now => Resume::Changes(Vec::new()),
            Some(after) if after > now => Resume::TooOld,
            // The ring holds every change from its first on (a gap the
            // node's watcher left empties it first), so it covers `after`
            // when it starts right after it or earlier.
            Some(after) => match recent.changes.front() {
                Some(first) if first.id <= after.saturating_add(1) => Resume::Changes(
                    recent
                        .changes
                        .iter()
                        .filter(|c| c.id > after)
                        .cloned()
                        .collect(),
                ),
                _ => Resume::TooOld,
            },
        };
        (rx, resume)
    }
}
