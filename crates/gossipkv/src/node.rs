//! The node: [`GossipKv`] handles and what they share.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_core::{Member, MemberEvent, MemberState, Protocol, Stats};
use gossipkv_storage::{record_size_hint, Lifetime, NodeId, Record, Store, CHUNK_OVERHEAD};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::builder::Builder;
use crate::codec::Codec;
use crate::discovery::MdnsHandle;
use crate::driver::wall_now;
use crate::error::{ConfigOption, Error};
use crate::health::{Health, HealthTracker};
use crate::persist::{Persister, Writer};
use crate::watch::{Change, MemberEvents, Watcher};

/// Longest key accepted, in bytes (networked nodes also need the key to fit
/// a packet with room to spare).
pub const MAX_KEY_LEN: usize = 4000;

pub(crate) struct Inner<V> {
    pub(crate) store: Arc<Store>,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) node_id: NodeId,
    pub(crate) local_addr: Option<SocketAddr>,
    /// Largest `record_size_hint` + chunk overhead that fits one datagram body; `None` = local only.
    pub(crate) record_budget: Option<usize>,
    /// Longest value `set` accepts.
    pub(crate) max_value_size: usize,
    pub(crate) closed: AtomicBool,
    pub(crate) protocol: Option<Arc<Mutex<Protocol>>>,
    pub(crate) task: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    pub(crate) errors_dropped: Arc<AtomicU64>,
    pub(crate) health: Arc<HealthTracker>,
    /// Whether the node has seeds or discovery (it expects peers).
    pub(crate) expects_peers: bool,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) member_events: broadcast::Sender<MemberEvent>,
    pub(crate) closed_tx: watch::Sender<bool>,
    /// Whether the node has caught up once (see [`GossipKv::is_synced`]).
    pub(crate) synced: watch::Sender<bool>,
    pub(crate) discovery: Mutex<Option<MdnsHandle>>,
    /// Fresh local writes on their way to the gossip task (for eager push).
    pub(crate) push_tx: Option<mpsc::Sender<Record>>,
    /// The data directory's writer, for a node with one.
    pub(crate) persister: Option<Arc<Persister>>,
    /// Wakes the expiry sweeper of a node without a network (a write with
    /// a time to live may expire before what it waits for).
    pub(crate) expiry_wake: Option<Arc<tokio::sync::Notify>>,
    /// The keyring and what seals and opens with it; `None` for a
    /// local-only node.
    pub(crate) sealing: Option<Arc<crate::sealing::Sealing>>,
}

/// Capacity of the change and member-event queues of watchers; a watcher
/// that falls further behind is told how many events it missed.
pub const WATCH_QUEUE: usize = 4096;

/// A gossipkv node: a key-value map shared with every node of its cluster.
///
/// Reads and writes are local and never wait for the network; writes spread
/// to the other nodes by gossip and are merged last-writer-wins, so every node
/// ends with the same value. Handles are cheap to clone and share one node.
///
/// `K` is the key type (any `From<String> + AsRef<str>`, usually `String`);
/// `V` is the value type, turned into bytes by the node's [`Codec`].
pub struct GossipKv<K = String, V = Bytes> {
    pub(crate) inner: Arc<Inner<V>>,
    pub(crate) _key: PhantomData<fn() -> K>,
}

impl<K, V> Clone for GossipKv<K, V> {
    fn clone(&self) -> Self {
        GossipKv {
            inner: self.inner.clone(),
            _key: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for GossipKv<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipKv")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .field("len", &self.inner.store.len())
            .finish()
    }
}

impl<V> GossipKv<String, V>
where
    V: Send + Sync + 'static,
{
    /// A builder of a node with `String` keys, using the
    /// [`DefaultCodec`](crate::DefaultCodec): raw bytes for `String`,
    /// `Vec<u8>` and `Bytes`, JSON for other serde types.
    ///
    /// The key type is fixed here, so `GossipKv::builder()` needs no
    /// turbofish: the value type is inferred from use (or named, as in
    /// `GossipKv::<String, MyType>::builder()`). For another key type, see
    /// [`Builder::key_type`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use gossipkv::{Bytes, GossipKv};
    ///
    /// let kv = GossipKv::builder().build().await?;
    /// kv.set("k", Bytes::from_static(b"v"))?; // V = Bytes
    /// assert_eq!(kv.get("k")?, Some(Bytes::from_static(b"v")));
    /// # Ok(()) }
    /// ```
    pub fn builder() -> Builder<String, V>
    where
        V: serde::Serialize + serde::de::DeserializeOwned,
    {
        Builder::new(Arc::new(crate::codec::DefaultCodec))
    }

    /// A builder of a node with `String` keys and an explicit codec, for
    /// value types without serde support (or another encoding). For
    /// another key type, see [`Builder::key_type`].
    pub fn builder_with_codec(codec: impl Codec<V>) -> Builder<String, V> {
        Builder::new(Arc::new(codec))
    }
}

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// Writes `value` under `key`. Returns once the write is in the local
    /// store; it reaches the other nodes in the background.
    ///
    /// Errors: [`Error::Closed`] after [`shutdown`](Self::shutdown),
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`] when the encoded value
    /// is longer than [`Builder::max_value_size`](crate::Builder::max_value_size),
    /// [`Error::Codec`] (naming the key) when the value does not encode;
    /// with memory limits, [`Error::OverBudget`] (under
    /// [`MemoryPolicy::Reject`](crate::MemoryPolicy::Reject)) and
    /// [`Error::TooLargeForBudget`]. Nothing is written when it fails.
    pub fn set(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        self.set_living(key.as_ref(), value, Lifetime::FOREVER)
    }

    /// [`set`](Self::set) with a [`Lifetime`] (expiry, ownership).
    pub(crate) fn set_living(&self, key: &str, value: V, life: Lifetime) -> Result<(), Error> {
        let bytes = self.checked_value(key, value)?;
        // Begun right before the write: a commit gathering the writers
        // under way does not wait for this one's checks and encoding.
        let writer = self.inner.persister.as_ref().map(|p| p.begin());
        self.write_value(key, bytes, life)?;
        self.durable(writer)
    }

    /// [`set_living`](Self::set_living) without waiting for the disk.
    pub(crate) fn put_living(&self, key: &str, value: V, life: Lifetime) -> Result<(), Error> {
        let bytes = self.checked_value(key, value)?;
        self.write_value(key, bytes, life)
    }

    /// `value` encoded, once the node, the key and the encoded size are
    /// checked.
    fn checked_value(&self, key: &str, value: V) -> Result<Bytes, Error> {
        self.check_writable(key)?;
        let bytes = self
            .inner
            .codec
            .encode_owned(value)
            .map_err(|e| Error::codec(key, e))?;
        if bytes.len() > self.inner.max_value_size {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                max: self.inner.max_value_size,
            });
        }
        Ok(bytes)
    }

    /// Writes an encoded and checked value.
    fn write_value(&self, key: &str, bytes: Bytes, life: Lifetime) -> Result<(), Error> {
        self.write(key, Some(bytes), life)?;
        if life.expires_ms != 0 {
            if let Some(w) = &self.inner.expiry_wake {
                w.notify_one();
            }
        }
        Ok(())
    }

    /// Reads the value of `key` from the local replica.
    ///
    /// Errors: [`Error::Codec`], naming the key, when the stored bytes do
    /// not decode as `V` (for example a value written by a node with another
    /// codec or another value type).
    pub fn get(&self, key: impl AsRef<str>) -> Result<Option<V>, Error> {
        let key = key.as_ref();
        match self.inner.store.get_at(key, now_ms()) {
            Some(bytes) => match self.inner.codec.decode(&bytes) {
                Ok(v) => Ok(Some(v)),
                Err(e) => Err(Error::codec(key, e)),
            },
            None => Ok(None),
        }
    }

    /// The record behind `key`'s value in the local replica, as
    /// [`get`](Self::get) sees it: `None` when `get` would find nothing
    /// (absent, deleted, expired, or gone with its owner). The record holds
    /// the value's encoded bytes (undecoded), its [`Version`](crate::Version)
    /// (who wrote it and when: the last-writer-wins order) and its
    /// [`Lifetime`] (absolute expiry in Unix milliseconds, ephemeral or
    /// not). For tools that show versions, such as the agent's HTTP API.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// let kv = gossipkv::GossipKv::<String, String>::builder()
    ///     .node_id("node-a")
    ///     .build()
    ///     .await?;
    /// kv.set("k", "v".to_string())?;
    /// let record = kv.get_record("k").expect("written");
    /// assert_eq!(record.value.as_deref(), Some(&b"v"[..]));
    /// assert_eq!(record.version.node, "node-a");
    /// kv.delete("k")?;
    /// assert!(kv.get_record("k").is_none());
    /// # Ok(()) }
    /// ```
    pub fn get_record(&self, key: impl AsRef<str>) -> Option<Record> {
        let key = key.as_ref();
        let now = now_ms();
        if !self.inner.store.contains_at(key, now) {
            return None;
        }
        self.inner
            .store
            .get_record(key)
            .filter(|r| r.is_live_at(now))
    }

    /// Deletes `key` everywhere (by writing a tombstone that gossip spreads).
    ///
    /// Errors: [`Error::Closed`] after [`shutdown`](Self::shutdown), [`Error::InvalidKey`].
    pub fn delete(&self, key: impl AsRef<str>) -> Result<(), Error> {
        let key = key.as_ref();
        self.check_writable(key)?;
        let writer = self.inner.persister.as_ref().map(|p| p.begin());
        self.write(key, None, Lifetime::FOREVER)?;
        self.durable(writer)
    }

    /// [`delete`](Self::delete) without waiting for the disk.
    pub(crate) fn put_delete(&self, key: &str) -> Result<(), Error> {
        self.check_writable(key)?;
        self.write(key, None, Lifetime::FOREVER)
    }

    /// Whether `key` holds a value locally (not expired, not gone with
    /// its owner).
    pub fn contains_key(&self, key: impl AsRef<str>) -> bool {
        self.inner.store.contains_at(key.as_ref(), now_ms())
    }

    /// Number of keys holding a value locally (expired keys and those of
    /// owners gone excluded).
    pub fn len(&self) -> usize {
        // Values due to expire are swept first, so that they are not counted.
        self.inner.store.expire(now_ms());
        self.inner.store.len()
    }

    /// Bytes this node's entries take, as
    /// [`max_bytes`](crate::Builder::max_bytes) counts them: each key and
    /// encoded value plus a fixed per-entry overhead (the measured average
    /// cost of an entry in the store's maps and index), tombstones of
    /// deleted keys included. Counted with or without limits.
    pub fn memory_usage(&self) -> usize {
        self.inner.store.memory_usage()
    }

    /// Counters of the node's memory limits: keys evicted, tombstones
    /// collected early, writes refused (all zero without
    /// [`max_entries`](crate::Builder::max_entries) or
    /// [`max_bytes`](crate::Builder::max_bytes)).
    pub fn memory_stats(&self) -> crate::MemoryStats {
        self.inner.store.budget_stats().into()
    }

    /// The memory limits and policy this node was built with.
    pub fn memory_limits(&self) -> crate::MemoryLimits {
        self.inner.store.limits().into()
    }

    /// Whether no key holds a value locally.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys holding a value locally, sorted.
    pub fn keys(&self) -> Vec<K> {
        let keys = self.inner.store.keys_at(now_ms());
        keys.into_iter().map(K::from).collect()
    }

    /// The keys starting with `prefix` and their values, sorted by key (an
    /// empty prefix scans everything).
    ///
    /// One bad value does not fail the scan: an entry whose value does not
    /// decode as `V` is left out, and a `warn!` log (target `gossipkv::node`)
    /// names its key and the codec's error. Use
    /// [`scan_prefix_checked`](Self::scan_prefix_checked) to see every entry,
    /// the undecodable ones included. The `Result` is kept for errors to
    /// come; today this never fails.
    pub fn scan_prefix(&self, prefix: impl AsRef<str>) -> Result<Vec<(K, V)>, Error> {
        Ok(self
            .inner
            .store
            .scan_prefix_at(prefix.as_ref(), now_ms())
            .into_iter()
            .filter_map(|(k, b)| match self.inner.codec.decode(&b) {
                Ok(v) => Some((K::from(k), v)),
                Err(e) => {
                    warn!(
                        key = %k,
                        error = %crate::error::chain(&e),
                        "scan_prefix: value does not decode; left out (scan_prefix_checked shows it)"
                    );
                    None
                }
            })
            .collect())
    }

    /// Every key starting with `prefix`, sorted, each with its decoded value
    /// or the [`Error::Codec`] (naming the key) its value gave: for callers
    /// that must see every entry, such as a migration or a consistency
    /// check. Nothing is logged.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use gossipkv::{Error, GossipKv};
    ///
    /// let kv = GossipKv::<String, u32>::builder().build().await?;
    /// kv.set("n/1", 1)?;
    /// for (key, value) in kv.scan_prefix_checked("n/") {
    ///     match value {
    ///         Ok(n) => println!("{key} = {n}"),
    ///         Err(Error::Codec { source, .. }) => println!("{key} does not decode: {source}"),
    ///         Err(e) => return Err(e),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan_prefix_checked(&self, prefix: impl AsRef<str>) -> Vec<(K, Result<V, Error>)> {
        self.inner
            .store
            .scan_prefix_at(prefix.as_ref(), now_ms())
            .into_iter()
            .map(|(k, b)| {
                let value = self.inner.codec.decode(&b).map_err(|e| Error::codec(&k, e));
                (K::from(k), value)
            })
            .collect()
    }

    /// The UDP address this node is bound to; `None` for a local-only node.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.inner.node_id.as_str()
    }

    /// This run's generation: the origin of its writes is the node id and
    /// the generation. It changes at every start, except when a node with
    /// a [`data_dir`](crate::Builder::data_dir) restarts after a clean
    /// [`shutdown`](Self::shutdown): then it stays, and the node's sequence
    /// numbers go on.
    pub fn generation(&self) -> u64 {
        self.inner.store.local_origin().generation
    }

    /// Counters of the node's data directory; `None` without one.
    pub fn durable_stats(&self) -> Option<crate::DurableStats> {
        self.inner.persister.as_ref().map(|p| p.stats())
    }

    /// When this node's writes reach its disk; `None` without a data
    /// directory.
    pub fn durability(&self) -> Option<crate::Durability> {
        self.inner.persister.as_ref().map(|p| p.mode())
    }

    /// Protocol counters (all zero for a local-only node).
    pub fn stats(&self) -> Stats {
        self.inner
            .protocol
            .as_ref()
            .map(|p| p.lock().stats())
            .unwrap_or_default()
    }

    /// The peers this node has heard from: node id and address.
    pub fn peers(&self) -> Vec<(String, SocketAddr)> {
        self.inner
            .protocol
            .as_ref()
            .map(|p| {
                p.lock()
                    .peers()
                    .into_iter()
                    .map(|(n, a)| (n.to_string(), a))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every member of the cluster as this node sees it, the local node first.
    /// A local-only node lists itself, at `0.0.0.0:0`.
    pub fn members(&self) -> Vec<Member> {
        match &self.inner.protocol {
            Some(p) => p.lock().members(),
            None => vec![Member::new(
                self.inner.node_id.clone(),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                if self.is_closed() {
                    MemberState::Left
                } else {
                    MemberState::Alive
                },
                self.inner.store.local_origin().generation,
                0,
            )],
        }
    }

    /// Changes of the keys starting with `prefix`, local and remote, as they
    /// are applied here. A watcher that falls behind by more than
    /// [`WATCH_QUEUE`] events is told how many it missed (see
    /// [`WatchEvent::missed`](crate::WatchEvent::missed)); it never slows the node.
    pub fn watch(&self, prefix: impl Into<String>) -> Watcher<K, V> {
        Watcher::new(
            self.inner.changes.subscribe(),
            self.inner.closed_tx.subscribe(),
            prefix.into(),
            self.inner.codec.clone(),
        )
    }

    /// Membership changes (joined, suspect, alive, dead, left, rejoined,
    /// forgotten) as this node sees them.
    pub fn member_events(&self) -> MemberEvents {
        MemberEvents::new(
            self.inner.member_events.subscribe(),
            self.inner.closed_tx.subscribe(),
        )
    }

    /// Error reports dropped because the error handler was too slow.
    pub fn errors_dropped(&self) -> u64 {
        self.inner.errors_dropped.load(Ordering::Relaxed)
    }

    /// Every record this node holds, tombstones included, sorted by key,
    /// each with its version: for inspection, tooling and tests (two
    /// converged nodes return equal snapshots).
    pub fn snapshot(&self) -> Vec<Record> {
        self.inner.store.records()
    }

    /// This node's health: live peers, and the problems it saw (a duplicate
    /// node id, another cluster on the network, forged writes, clock skew,
    /// undecodable datagrams, I/O errors), whether or not an error handler
    /// is set. See [`Health::is_healthy`]: a duplicate node id, a foreign
    /// cluster or forged writes seen in the last
    /// [`HEALTH_WINDOW`](crate::HEALTH_WINDOW), or no live peer while seeds
    /// or discovery are configured, make a node unhealthy. Cheap enough for
    /// a readiness probe; its `Display` is one line for a log or a status
    /// page.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use gossipkv::{GossipKv, ProblemKind};
    ///
    /// let kv = GossipKv::<String, String>::builder().build().await?;
    /// let health = kv.health();
    /// if !health.is_healthy() {
    ///     eprintln!("gossipkv: {health}");
    /// }
    /// let duplicate = health
    ///     .problems
    ///     .iter()
    ///     .any(|p| p.kind == ProblemKind::DuplicateNodeId);
    /// assert!(!duplicate);
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> Health {
        let live_peers = self
            .inner
            .protocol
            .as_ref()
            .map_or(0, |p| p.lock().peers().len());
        Health {
            live_peers,
            expects_peers: self.inner.expects_peers,
            problems: self.inner.health.problems(),
            errors_dropped: self.errors_dropped(),
        }
    }

    /// Announces the departure to the cluster, stops gossiping and closes
    /// the socket. Peers mark this node `Left` at once. Writes fail with
    /// [`Error::Closed`] afterwards; reads keep serving the local data;
    /// watchers and member event streams deliver what was already queued,
    /// then end. Calling it again does nothing.
    ///
    /// A process that exits without it (killed, or stopped by a signal it
    /// does not handle) is seen by its peers as `Suspect`, then `Dead`,
    /// never `Left`; see [`shutdown_on_termination`](Self::shutdown_on_termination).
    /// Dropping the last handle also announces the departure, from the
    /// gossip task, provided the runtime keeps running long enough; only
    /// `shutdown().await` waits until it is sent.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.closed_tx.send_replace(true);
        let discovery = self.inner.discovery.lock().take();
        if let Some(mut d) = discovery {
            // Unregistering waits for the mDNS daemon (up to a few seconds):
            // keep that off the async workers.
            let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
        }
        if self.inner.protocol.is_none() {
            // No network to announce a departure on (a networked node's
            // protocol deletes them before its Leave): this node's
            // ephemeral keys end with its run all the same.
            self.inner.store.rewrite_owned(false, now_ms());
        }
        let task = self.inner.task.lock().take();
        if let Some((stop, handle)) = task {
            let _ = stop.send(());
            if let Err(e) = handle.await {
                if !e.is_cancelled() {
                    return Err(Error::Task {
                        message: e.to_string(),
                    });
                }
            }
            info!(node = %self.inner.node_id, "node shut down");
        }
        self.close_data_dir().await
    }

    /// Commits what is left to the data directory, if any, and records a
    /// clean stop. Runs once the gossip task is gone: nothing changes after.
    async fn close_data_dir(&self) -> Result<(), Error> {
        let Some(p) = self.inner.persister.clone() else {
            return Ok(());
        };
        let incarnation = self.inner.incarnation();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(move || p.stop(incarnation))
                .await
                .map_err(|e| Error::Task {
                    message: format!("closing the data dir: {e}"),
                }),
            Err(_) => {
                p.stop(incarnation);
                Ok(())
            }
        }
    }

    /// Waits for `signal`, then [`shutdown`](Self::shutdown)s the node, so
    /// that its peers see it leave (`Left`) at once instead of suspecting
    /// it and declaring it dead a few seconds later.
    ///
    /// The returned future holds no handle: spawning it does not keep the
    /// node alive. It returns `Ok(())` early, without waiting for `signal`,
    /// once the node is shut down by other means or its last handle is
    /// dropped. For SIGINT and SIGTERM, see
    /// [`shutdown_on_termination`](Self::shutdown_on_termination).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use gossipkv::GossipKv;
    ///
    /// let kv = GossipKv::<String, String>::builder().build().await?;
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let leave = tokio::spawn(kv.shutdown_on(async move {
    ///     let _ = stopped.await;
    /// }));
    /// // ... serve ...
    /// stop.send(()).unwrap();
    /// leave.await.unwrap()?;
    /// assert!(kv.is_closed());
    /// # Ok(()) }
    /// ```
    pub fn shutdown_on<F>(
        &self,
        signal: F,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static
    where
        F: std::future::Future + Send + 'static,
    {
        self.leave_when(async move {
            signal.await;
            Ok(())
        })
    }

    /// Shuts the node down when `signal` returns `Ok`; returns its error
    /// otherwise (the node is left running). Holds no handle, and returns
    /// `Ok` early once the node is shut down or dropped.
    fn leave_when<F>(
        &self,
        signal: F,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static
    where
        F: std::future::Future<Output = Result<(), Error>> + Send + 'static,
    {
        let weak = Arc::downgrade(&self.inner);
        let mut closed = self.inner.closed_tx.subscribe();
        async move {
            tokio::select! {
                r = signal => r?,
                // Shut down already, or every handle dropped.
                _ = closed.wait_for(|c| *c) => return Ok(()),
            }
            match weak.upgrade() {
                Some(inner) => {
                    GossipKv::<K, V> {
                        inner,
                        _key: PhantomData,
                    }
                    .shutdown()
                    .await
                }
                None => Ok(()),
            }
        }
    }

    /// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM (what `kill`,
    /// systemd, Docker and Kubernetes send to stop a process), then
    /// [`shutdown`](Self::shutdown)s the node so that its peers see it
    /// leave. A process that dies on SIGTERM without this is only noticed
    /// when it stops answering probes: peers suspect it, then declare it
    /// `Dead` after the suspect timeout; it never shows as `Left`.
    ///
    /// Once the handlers are installed, these signals no longer end the
    /// process by themselves: return from `main` (or exit) after this
    /// returns. The handlers are installed when the future is first polled,
    /// so await or spawn it early. Like [`shutdown_on`](Self::shutdown_on),
    /// it holds no handle, and returns early if the node is shut down by
    /// other means.
    ///
    /// Errors: [`Error::Signal`] when the handlers cannot be installed (the
    /// node is left running); those of [`shutdown`](Self::shutdown).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), gossipkv::Error> {
    /// use gossipkv::GossipKv;
    ///
    /// let kv = GossipKv::<String, String>::builder()
    ///     .bind_addr("0.0.0.0:7946")
    ///     .build()
    ///     .await?;
    /// // Run the service on other tasks; leave the cluster on SIGINT/SIGTERM.
    /// kv.shutdown_on_termination().await?;
    /// # Ok(()) }
    /// ```
    pub fn shutdown_on_termination(
        &self,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static {
        self.leave_when(async {
            termination()
                .await
                .map_err(|source| Error::Signal { source })
        })
    }

    /// Whether this node has caught up with the cluster at least once: it
    /// exchanged digests with a live member and held everything that member
    /// vouched for (or their digests agreed). Until then a joined or
    /// restarted node answers reads with less than the cluster holds. A
    /// node without seeds or discovery, or without a network, has nobody to
    /// catch up from and is synced from the start.
    ///
    /// Set once, never unset: a node that falls behind later (a partition,
    /// writes still on their way) stays synced. Two nodes that start empty
    /// at the same time count each other as caught up, so restart nodes one
    /// at a time, each after the previous one is synced. Also in
    /// [`Stats::synced`].
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Waits until this node [is synced](Self::is_synced); at once if it
    /// is. A readiness signal: serve traffic, or report ready, after it.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the node is shut down first.
    pub async fn synced(&self) -> Result<(), Error> {
        let mut synced = self.inner.synced.subscribe();
        let mut closed = self.inner.closed_tx.subscribe();
        loop {
            if *synced.borrow_and_update() {
                return Ok(());
            }
            if *closed.borrow_and_update() || self.is_closed() {
                return Err(Error::Closed {
                    node_id: self.node_id().to_string(),
                });
            }
            tokio::select! {
                _ = synced.changed() => {}
                _ = closed.changed() => {}
            }
        }
    }

    /// Contacts these addresses (`host:port`, resolved now) until they
    /// answer, as if they had been given as seeds: joins a cluster, or
    /// merges two groups that have never heard of each other (each side
    /// then catches up on the other's writes, in bulk when far behind).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a node without a network (no bind
    /// address) or when an address is not `host:port` or resolves to
    /// nothing; [`Error::Closed`] after [`shutdown`](Self::shutdown).
    pub async fn join<S: AsRef<str>>(
        &self,
        addrs: impl IntoIterator<Item = S>,
    ) -> Result<(), Error> {
        let Some(protocol) = &self.inner.protocol else {
            return Err(Error::config(
                ConfigOption::Seeds,
                "a node without a bind address cannot join",
            ));
        };
        if self.is_closed() {
            return Err(Error::Closed {
                node_id: self.node_id().to_string(),
            });
        }
        let mut found = Vec::new();
        for a in addrs {
            let a = a.as_ref();
            crate::builder::split_host_port(a)
                .map_err(|m| Error::config(ConfigOption::Seeds, format!("address {m}")))?;
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host(a)
                .await
                .map_err(|e| {
                    Error::config(ConfigOption::Seeds, format!("cannot resolve {a:?}: {e}"))
                })?
                .collect();
            if resolved.is_empty() {
                return Err(Error::config(
                    ConfigOption::Seeds,
                    format!("{a:?} resolves to no address"),
                ));
            }
            found.extend(resolved);
        }
        protocol.lock().add_seeds(found);
        Ok(())
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// A local write (a delete for `None`) within the memory limits,
    /// queued for eager push when the node pushes; otherwise no record is
    /// built for it.
    fn write(&self, key: &str, value: Option<Bytes>, life: Lifetime) -> Result<(), Error> {
        let store = &self.inner.store;
        let now = wall_now().as_unix_ms();
        let Some(tx) = &self.inner.push_tx else {
            if life.is_forever() {
                store
                    .try_set(key, value, now)
                    .map_err(crate::memory::budget_error)?;
            } else {
                store
                    .try_write_with(key, value, life, now)
                    .map_err(crate::memory::budget_error)?;
            }
            return Ok(());
        };
        let record = store
            .try_write_with(key, value, life, now)
            .map_err(crate::memory::budget_error)?;
        // Never block a write: when the queue is full, anti-entropy delivers it.
        let _ = tx.try_send(record);
        Ok(())
    }

    /// Waits, in [`Durability::Sync`](crate::Durability::Sync) mode, until
    /// every write made so far is on disk (without a writer begun before
    /// them: a commit under way does not wait for this caller).
    pub(crate) fn durable_now(&self) -> Result<(), Error> {
        match &self.inner.persister {
            Some(p) => p.wait_durable(p.begin()),
            None => Ok(()),
        }
    }

    /// Waits, in [`Durability::Sync`](crate::Durability::Sync) mode, until
    /// the write of `writer` (begun before the write) is on disk.
    fn durable(&self, writer: Option<Writer<'_>>) -> Result<(), Error> {
        match (&self.inner.persister, writer) {
            (Some(p), Some(w)) => p.wait_durable(w),
            _ => Ok(()),
        }
    }

    fn check_writable(&self, key: &str) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed {
                node_id: self.inner.node_id.to_string(),
            });
        }
        if key.is_empty() {
            return Err(Error::InvalidKey {
                message: "key is empty".into(),
            });
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidKey {
                message: format!("key is {} bytes, at most {MAX_KEY_LEN}", key.len()),
            });
        }
        if let Some(budget) = self.inner.record_budget {
            // Even a tombstone of this key must fit a packet, or it could
            // never travel and would hold up every later write of this node.
            let node_len = self.inner.node_id.as_str().len();
            let fixed = record_size_hint(key.len(), 0, node_len) + CHUNK_OVERHEAD + node_len;
            if fixed > budget / 2 {
                return Err(Error::InvalidKey {
                    message: format!(
                        "key is {} bytes, too long for packets of this node's size",
                        key.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The wall-clock time now, in Unix milliseconds.
fn now_ms() -> u64 {
    wall_now().as_unix_ms()
}

/// Waits for SIGINT or (on Unix) SIGTERM.
async fn termination() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => debug!("SIGTERM received: leaving the cluster"),
            _ = int.recv() => debug!("SIGINT received: leaving the cluster"),
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        debug!("Ctrl-C received: leaving the cluster");
        Ok(())
    }
}

/// Dropping the last handle never blocks: it tells the gossip task to
/// announce the departure and stop (the task does so on its own, if its
/// runtime keeps running), and the mDNS daemon, if any, is shut down on a
/// thread of its own.
impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        if let Some((stop, _handle)) = self.task.get_mut().take() {
            let _ = stop.send(());
        }
        if let Some(p) = &self.persister {
            // Its thread commits the rest and stops cleanly, if the process
            // lives long enough; `shutdown().await` waits for it.
            p.stop_soon(self.incarnation());
        }
    }
}

impl<V> Inner<V> {
    /// The node's membership incarnation now (0 for a local-only node).
    pub(crate) fn incarnation(&self) -> u64 {
        self.protocol.as_ref().map_or(0, |p| p.lock().incarnation())
    }
}
