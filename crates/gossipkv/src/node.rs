//! The node: [`GossipKv`] handles and the thin tokio task that drives the protocol.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gossipkv_storage::{record_size_hint, NodeId, Origin, Record, Store, CHUNK_OVERHEAD};
use gossipkv_transport::{Transport, UdpConfig, UdpTransport};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::builder::{
    parse_socket_addr, split_host_port, Builder, ErrorHandler, MAX_PACKET_SIZE,
    MAX_VALUE_SIZE_LIMIT, MIN_PACKET_SIZE,
};
use crate::codec::Codec;
use crate::discovery::{start_mdns, MdnsConfig, MdnsHandle};
use crate::error::{Error, NetworkError};
use crate::membership::{DetectorConfig, Member, MemberEvent, MemberState};
use crate::protocol::{Event, Protocol, ProtocolConfig, Stats};
use crate::watch::{Change, MemberEvents, Watcher};

/// Longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest key accepted, in bytes (networked nodes also need the key to fit
/// a packet with room to spare).
pub const MAX_KEY_LEN: usize = 4000;

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) member_events: broadcast::Sender<MemberEvent>,
    pub(crate) closed_tx: watch::Sender<bool>,
    pub(crate) discovery: Mutex<Option<MdnsHandle>>,
    /// Fresh local writes on their way to the gossip task (for eager push).
    pub(crate) push_tx: Option<mpsc::Sender<Record>>,
}

/// Fresh writes queued for eager push; beyond this, writes still replicate
/// by anti-entropy.
const PUSH_QUEUE: usize = 65_536;

/// Times the gossip task yields, while coalescing a burst of writes, for more
/// writes to fill its datagrams.
const PUSH_YIELDS: usize = 8;

/// Datagrams sent per turn of the gossip task before it looks at new input.
/// When only fragments of large values are left, the task sends one such
/// batch per timer tick (about 64 datagrams per millisecond, 90 MB/s with the
/// default packet size), so that a receiver never has more than one batch of
/// fragments queued ahead of a small write.
const SEND_BATCH: usize = 64;

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

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// A builder using the [`DefaultCodec`](crate::DefaultCodec): raw bytes for
    /// `String`, `Vec<u8>` and `Bytes`, JSON for other serde types.
    pub fn builder() -> Builder<K, V> {
        Builder::new(Arc::new(crate::codec::DefaultCodec))
    }
}

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// A builder with an explicit codec, for value types without serde support.
    pub fn builder_with_codec(codec: impl Codec<V>) -> Builder<K, V> {
        Builder::new(Arc::new(codec))
    }

    /// Writes `value` under `key`. Returns once the write is in the local
    /// store; it reaches the other nodes in the background.
    ///
    /// Errors: [`Error::Closed`] after [`shutdown`](Self::shutdown),
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`] when the encoded value
    /// is longer than [`Builder::max_value_size`](crate::Builder::max_value_size),
    /// [`Error::Codec`].
    pub fn set(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        let key = key.as_ref();
        self.check_writable(key)?;
        let bytes = self.inner.codec.encode_owned(value)?;
        if bytes.len() > self.inner.max_value_size {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                max: self.inner.max_value_size,
            });
        }
        self.write(key, Some(bytes));
        Ok(())
    }

    /// Reads the value of `key` from the local replica.
    ///
    /// Errors: [`Error::Codec`] when the stored bytes do not decode as `V`
    /// (for example a value written by a node with another codec).
    pub fn get(&self, key: impl AsRef<str>) -> Result<Option<V>, Error> {
        match self.inner.store.get(key.as_ref()) {
            Some(bytes) => Ok(Some(self.inner.codec.decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Deletes `key` everywhere (by writing a tombstone that gossip spreads).
    ///
    /// Errors: [`Error::Closed`] after [`shutdown`](Self::shutdown), [`Error::InvalidKey`].
    pub fn delete(&self, key: impl AsRef<str>) -> Result<(), Error> {
        let key = key.as_ref();
        self.check_writable(key)?;
        self.write(key, None);
        Ok(())
    }

    /// Whether `key` holds a value locally.
    pub fn contains_key(&self, key: impl AsRef<str>) -> bool {
        self.inner.store.contains(key.as_ref())
    }

    /// Number of keys holding a value locally.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether no key holds a value locally.
    pub fn is_empty(&self) -> bool {
        self.inner.store.is_empty()
    }

    /// The keys holding a value locally, sorted.
    pub fn keys(&self) -> Vec<K> {
        self.inner.store.keys().into_iter().map(K::from).collect()
    }

    /// The keys starting with `prefix` and their values, sorted by key.
    /// A value that does not decode is an [`Error::Codec`].
    pub fn scan_prefix(&self, prefix: impl AsRef<str>) -> Result<Vec<(K, V)>, Error> {
        self.inner
            .store
            .scan_prefix(prefix.as_ref())
            .into_iter()
            .map(|(k, b)| Ok((K::from(k), self.inner.codec.decode(&b)?)))
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
    pub fn members(&self) -> Vec<Member> {
        match &self.inner.protocol {
            Some(p) => p.lock().members(),
            None => vec![Member {
                node_id: self.inner.node_id.clone(),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                state: if self.is_closed() {
                    MemberState::Left
                } else {
                    MemberState::Alive
                },
                generation: self.inner.store.local_origin().generation,
                incarnation: 0,
            }],
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

    /// The underlying replicated store (for inspection and tooling).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }
    /// Announces the departure to the cluster, stops gossiping and closes
    /// the socket. Peers mark this node `Left` at once. Writes fail with
    /// [`Error::Closed`] afterwards; reads keep serving the local data;
    /// watchers and member event streams end. Calling it again does nothing.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.closed_tx.send_replace(true);
        let discovery = self.inner.discovery.lock().take();
        if let Some(mut d) = discovery {
            // Unregistering waits for the mDNS daemon (up to a few seconds):
            // keep that off the async workers.
            let _ = tokio::task::spawn_blocking(move || d.shutdown()).await;
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
        Ok(())
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// A local write (a delete for `None`), queued for eager push when the
    /// node pushes; otherwise no record is built for it.
    fn write(&self, key: &str, value: Option<Bytes>) {
        let store = &self.inner.store;
        let Some(tx) = &self.inner.push_tx else {
            match value {
                Some(v) => store.set(key, v, wall_ms()),
                None => store.delete(key, wall_ms()),
            };
            return;
        };
        let record = store.write(key, value, wall_ms());
        // Never block a write: when the queue is full, anti-entropy delivers it.
        let _ = tx.try_send(record);
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

impl<V> Drop for Inner<V> {
    fn drop(&mut self) {
        if let Some((stop, _handle)) = self.task.get_mut().take() {
            let _ = stop.send(());
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidConfig {
        message: message.into(),
    }
}

/// Validates a builder and starts the node.
pub(crate) async fn start<K, V>(b: Builder<K, V>) -> Result<GossipKv<K, V>, Error>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    let node_id = match &b.node_id {
        Some(id) if id.is_empty() => return Err(invalid("node id is empty")),
        Some(id) if id.len() > MAX_NODE_ID_LEN => {
            return Err(invalid(format!(
                "node id is {} bytes, at most {MAX_NODE_ID_LEN}",
                id.len()
            )))
        }
        Some(id) => id.clone(),
        None => format!("node-{:016x}", rand::rng().random::<u64>()),
    };
    if b.cluster_id.is_empty() || b.cluster_id.len() > 128 {
        return Err(invalid("cluster id must be 1 to 128 bytes"));
    }
    if b.gossip_interval.is_zero() {
        return Err(invalid("gossip interval must be greater than zero"));
    }
    if b.fanout == 0 {
        return Err(invalid("fanout must be at least 1"));
    }
    if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&b.packet_size) {
        return Err(invalid(format!(
            "packet size {} is out of range {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE}",
            b.packet_size
        )));
    }
    if !(1..=MAX_VALUE_SIZE_LIMIT).contains(&b.max_value_size) {
        return Err(invalid(format!(
            "max value size {} is out of range 1..={MAX_VALUE_SIZE_LIMIT}",
            b.max_value_size
        )));
    }
    if b.tombstone_retention.is_zero() {
        return Err(invalid("tombstone retention must be greater than zero"));
    }
    if b.suspect_timeout.is_some_and(|t| t.is_zero()) {
        return Err(invalid("suspect timeout must be greater than zero"));
    }
    if b.seed_refresh.is_zero() {
        return Err(invalid("seed refresh interval must be greater than zero"));
    }
    for seed in &b.seeds {
        split_host_port(seed).map_err(|m| invalid(format!("seed {m}")))?;
    }
    let node = NodeId::new(&node_id);
    // A new generation per start: writes of this incarnation never reuse
    // sequence numbers that peers saw from an earlier one.
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1);
    let store = Arc::new(Store::new(Origin::new(node.clone(), generation)));
    let (changes, _) = broadcast::channel::<Change>(WATCH_QUEUE);
    let (member_events, _) = broadcast::channel::<MemberEvent>(WATCH_QUEUE);
    let (closed_tx, _) = watch::channel(false);
    {
        let tx = changes.clone();
        store.set_observer(Arc::new(move |key: &str, value: Option<&Bytes>| {
            if tx.receiver_count() > 0 {
                let _ = tx.send(Change {
                    key: Arc::from(key),
                    value: value.cloned(),
                });
            }
        }));
    }
    let Some(bind) = &b.bind_addr else {
        if !b.seeds.is_empty() {
            return Err(invalid("seeds need a bind address"));
        }
        if b.discovery {
            return Err(invalid("discovery needs a bind address"));
        }
        if b.advertise_addr.is_some() {
            return Err(invalid("an advertise address needs a bind address"));
        }
        debug!(node = %node, "started local-only node");
        return Ok(GossipKv {
            inner: Arc::new(Inner {
                store,
                codec: b.codec,
                node_id: node,
                local_addr: None,
                record_budget: None,
                max_value_size: b.max_value_size,
                closed: AtomicBool::new(false),
                protocol: None,
                task: Mutex::new(None),
                errors_dropped: Arc::new(AtomicU64::new(0)),
                changes,
                member_events,
                closed_tx,
                discovery: Mutex::new(None),
                push_tx: None,
            }),
            _key: PhantomData,
        });
    };
    let bind = parse_socket_addr("bind address", bind)?;
    let advertise = match &b.advertise_addr {
        Some(a) => Some(parse_socket_addr("advertise address", a)?),
        None => None,
    };
    let transport = UdpTransport::bind(bind, UdpConfig::default()).map_err(|e| match e {
        gossipkv_transport::TransportError::Bind { addr, source } => Error::Bind { addr, source },
        other => Error::Bind {
            addr: bind,
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    let local_addr = transport.local_addr();
    let advertise = advertise.unwrap_or(local_addr);

    let (err_tx, errors_dropped) = spawn_error_reporter(b.error_handler.clone());
    let seeds = resolve_seeds(&b.seeds, &err_tx, &errors_dropped).await;

    let cfg = ProtocolConfig {
        node_id: node.clone(),
        generation,
        cluster_id: b.cluster_id.clone(),
        advertise_addr: (!advertise.ip().is_unspecified()).then_some(advertise),
        gossip_interval_ms: b.gossip_interval.as_millis().max(1) as u64,
        fanout: b.fanout,
        packet_size: b.packet_size,
        tombstone_retention_ms: b.tombstone_retention.as_millis() as u64,
        seeds,
        rng_seed: b.rng_seed.unwrap_or_else(|| rand::rng().random()),
        push: b.eager_push,
        max_value_size: b.max_value_size,
        directory: None,
        detector: {
            let defaults =
                DetectorConfig::for_interval(b.gossip_interval.as_millis().max(1) as u64);
            DetectorConfig {
                suspect_timeout_ms: b
                    .suspect_timeout
                    .map_or(defaults.suspect_timeout_ms, |t| t.as_millis() as u64),
                forget_after_ms: b.dead_member_grace.as_millis() as u64,
                ..defaults
            }
        },
    };
    let protocol = Arc::new(Mutex::new(Protocol::new(cfg, store.clone(), wall_ms())));
    let record_budget = Some(protocol.lock().body_budget());
    let (stop_tx, stop_rx) = oneshot::channel();
    let (addrs_tx, addrs_rx) = mpsc::channel::<Addrs>(16);
    let (push_tx, push_rx) = mpsc::channel::<Record>(PUSH_QUEUE);
    let push_tx = b.eager_push.then_some(push_tx);
    if b.seeds.iter().any(|s| s.parse::<SocketAddr>().is_err()) {
        tokio::spawn(refresh_seeds(
            b.seeds.clone(),
            b.seed_refresh,
            addrs_tx.clone(),
            err_tx.clone(),
            errors_dropped.clone(),
        ));
    }
    let discovery = if b.discovery {
        let (disc_tx, mut disc_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
        let handle = start_mdns(
            MdnsConfig {
                node_id: node_id.clone(),
                cluster_id: b.cluster_id.clone(),
                addr: advertise,
            },
            disc_tx,
        )
        .map_err(|m| invalid(format!("cannot start mDNS discovery: {m}")))?;
        let fwd = addrs_tx.clone();
        tokio::spawn(async move {
            while let Some(addrs) = disc_rx.recv().await {
                if fwd.send(Addrs::Discovered(addrs)).await.is_err() {
                    break;
                }
            }
        });
        Some(handle)
    } else {
        None
    };
    drop(addrs_tx);
    let handle = tokio::spawn(drive(
        transport,
        protocol.clone(),
        stop_rx,
        addrs_rx,
        push_rx,
        Outputs {
            err_tx,
            errors_dropped: errors_dropped.clone(),
            member_events: member_events.clone(),
        },
    ));
    info!(node = %node, addr = %local_addr, cluster = %b.cluster_id, "node started");
    Ok(GossipKv {
        inner: Arc::new(Inner {
            store,
            codec: b.codec,
            node_id: node,
            local_addr: Some(local_addr),
            record_budget,
            max_value_size: b.max_value_size,
            closed: AtomicBool::new(false),
            protocol: Some(protocol),
            task: Mutex::new(Some((stop_tx, handle))),
            errors_dropped,
            changes,
            member_events,
            closed_tx,
            discovery: Mutex::new(discovery),
            push_tx,
        }),
        _key: PhantomData,
    })
}

async fn resolve_seeds(
    seeds: &[String],
    err_tx: &Option<mpsc::Sender<NetworkError>>,
    dropped: &AtomicU64,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => {
                warn!(seed = %seed, error = %e, "cannot resolve seed");
                report(
                    err_tx,
                    dropped,
                    NetworkError::SeedResolution {
                        seed: seed.clone(),
                        message: e.to_string(),
                    },
                );
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn spawn_error_reporter(
    handler: Option<ErrorHandler>,
) -> (Option<mpsc::Sender<NetworkError>>, Arc<AtomicU64>) {
    let dropped = Arc::new(AtomicU64::new(0));
    let Some(handler) = handler else {
        return (None, dropped);
    };
    let (tx, mut rx) = mpsc::channel::<NetworkError>(1024);
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let h = handler.clone();
            // The handler is user code: run it where it cannot block the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || h(&e)).await;
        }
    });
    (Some(tx), dropped)
}

fn report(tx: &Option<mpsc::Sender<NetworkError>>, dropped: &AtomicU64, e: NetworkError) {
    if let Some(tx) = tx {
        if tx.try_send(e).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// New addresses to contact, from seed re-resolution or discovery.
#[derive(Debug)]
enum Addrs {
    Seeds(Vec<SocketAddr>),
    Discovered(Vec<SocketAddr>),
}

/// Where the driver sends what the protocol reports.
struct Outputs {
    err_tx: Option<mpsc::Sender<NetworkError>>,
    errors_dropped: Arc<AtomicU64>,
    member_events: broadcast::Sender<MemberEvent>,
}

impl Outputs {
    fn event(&self, ev: Event) {
        match ev {
            Event::Error(e) => report(&self.err_tx, &self.errors_dropped, e),
            Event::Member(m) => {
                let _ = self.member_events.send(m);
            }
        }
    }
}

/// Resolves seed host names again every `every`, so a name that later points
/// elsewhere is followed.
async fn refresh_seeds(
    seeds: Vec<String>,
    every: Duration,
    tx: mpsc::Sender<Addrs>,
    err_tx: Option<mpsc::Sender<NetworkError>>,
    dropped: Arc<AtomicU64>,
) {
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        let addrs = resolve_seeds(&seeds, &err_tx, &dropped).await;
        if addrs != last {
            debug!(?addrs, "seed addresses changed");
            last = addrs.clone();
            if tx.send(Addrs::Seeds(addrs)).await.is_err() {
                return;
            }
        } else if tx.is_closed() {
            return;
        }
    }
}

/// The driver: one task that feeds the protocol with datagrams, timeouts and
/// new addresses, and sends what it produces. When told to stop (or when
/// every handle is dropped) it announces the departure before it ends.
async fn drive<T: Transport>(
    transport: T,
    protocol: Arc<Mutex<Protocol>>,
    mut stop: oneshot::Receiver<()>,
    mut addrs: mpsc::Receiver<Addrs>,
    mut pushes: mpsc::Receiver<Record>,
    out: Outputs,
) {
    let mut buf = vec![0u8; transport.max_datagram_size() + 1];
    let mut stopping = false;
    loop {
        // A bounded batch at a time: between batches, new writes and
        // datagrams are handled, and the protocol puts their replies ahead
        // of the fragments of large values still waiting.
        let (transmits, events, deadline, more, urgent) = {
            let mut p = protocol.lock();
            let transmits: Vec<_> = std::iter::from_fn(|| p.poll_transmit())
                .take(SEND_BATCH)
                .collect();
            let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
            let (more, urgent) = (p.has_transmits(), p.has_urgent_transmits());
            (transmits, events, p.poll_timeout(), more, urgent)
        };
        for t in transmits {
            if let Err(e) = transport.send_to(&t.payload, t.to).await {
                debug!(to = %t.to, error = %e, "send failed");
                report(
                    &out.err_tx,
                    &out.errors_dropped,
                    NetworkError::Io {
                        op: "send",
                        message: format!("to {}: {e}", t.to),
                    },
                );
            }
        }
        for ev in events {
            out.event(ev);
        }
        if stopping {
            // Send everything queued (the Leave announcements) before stopping.
            if more {
                continue;
            }
            break;
        }
        // Only fragments of large values left: the next batch after the
        // timer's next tick (about SEND_BATCH datagrams per millisecond).
        let wait = if more {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(deadline.saturating_sub(wall_ms()).min(60_000))
        };
        tokio::select! {
            _ = &mut stop => {
                protocol.lock().leave();
                stopping = true;
            }
            r = transport.recv_from(&mut buf) => match r {
                Ok((n, from)) => protocol.lock().handle_datagram(wall_ms(), from, &buf[..n]),
                Err(e) => {
                    warn!(error = %e, "receive failed");
                    report(&out.err_tx, &out.errors_dropped, NetworkError::Io { op: "recv", message: e.to_string() });
                    // Do not spin on a persistent error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(first) = pushes.recv() => {
                // Coalesce a burst of writes into packet-sized pushes. When
                // more than one write came, the writer is busy: yield a few
                // times to let the burst fill whole datagrams (microseconds).
                let mut batch = vec![first];
                let mut yields = 0;
                while batch.len() < 4096 {
                    match pushes.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) if batch.len() > 1 && yields < PUSH_YIELDS => {
                            yields += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(_) => break,
                    }
                }
                protocol.lock().push_local(wall_ms(), batch);
            }
            Some(a) = addrs.recv() => match a {
                Addrs::Seeds(s) => protocol.lock().set_seeds(s),
                Addrs::Discovered(d) => protocol.lock().set_discovered(d),
            },
            _ = tokio::time::sleep(wait), if !urgent => {
                let now = wall_ms();
                if now >= deadline {
                    protocol.lock().handle_timeout(now);
                }
            }
            // Replies and small writes to send: go round at once (a zero
            // sleep would wait for the timer's next millisecond tick).
            _ = std::future::ready(()), if urgent => {
                let now = wall_ms();
                if now >= deadline {
                    protocol.lock().handle_timeout(now);
                }
            }
        }
    }
    debug!("gossip task stopped");
}
