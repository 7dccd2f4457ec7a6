//! The [`Builder`] of a [`GossipKv`] node and its options.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gossipkv_core::{
    NetworkError, DEFAULT_FANOUT, DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_DRIFT,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_PACKET_SIZE, DEFAULT_TOMBSTONE_RETENTION,
};

use crate::codec::Codec;
use crate::error::{ConfigOption, Error};
use crate::memory::MemoryPolicy;
use crate::persist::Durability;
use crate::sealing::{Encryption, Keyring, DEFAULT_REPLAY_WINDOW};
use crate::GossipKv;

/// Default cluster id.
pub const DEFAULT_CLUSTER_ID: &str = "default";
/// Default time dead or departed members are remembered.
pub const DEFAULT_DEAD_MEMBER_GRACE: Duration = Duration::from_secs(3600);
/// Default interval between seed resolutions.
pub const DEFAULT_SEED_REFRESH: Duration = Duration::from_secs(30);

pub(crate) type ErrorHandler = Arc<dyn Fn(&NetworkError) + Send + Sync>;

/// Configures and starts a [`GossipKv`] node. Start from
/// [`GossipKv::builder`] (default codec) or [`GossipKv::builder_with_codec`];
/// both make `String` keys, and [`key_type`](Builder::key_type) picks
/// another key type.
///
/// With no [`bind_addr`](Builder::bind_addr), the node is a local in-memory
/// store that never touches the network. [`build`](Builder::build) checks
/// every option first and returns [`Error::InvalidConfig`], naming the
/// option, when one cannot work.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), gossipkv::Error> {
/// use std::time::Duration;
/// use gossipkv::{ConfigOption, Error, GossipKv};
///
/// let kv = GossipKv::<String, String>::builder()
///     .node_id("node-a")
///     .cluster_id("prod")
///     .bind_addr("127.0.0.1:0")
///     .gossip_interval(Duration::from_millis(200))
///     .build()
///     .await?;
/// kv.shutdown().await?;
///
/// // Seeds without a bind address cannot work.
/// let err = GossipKv::<String, String>::builder()
///     .seeds(["10.0.0.1:7946"])
///     .build()
///     .await
///     .unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig { option: ConfigOption::Seeds, .. }));
/// # Ok(()) }
/// ```
pub struct Builder<K, V> {
    pub(crate) node_id: Option<String>,
    pub(crate) cluster_id: String,
    pub(crate) bind_addr: Option<String>,
    pub(crate) advertise_addr: Option<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) gossip_interval: Duration,
    pub(crate) fanout: usize,
    pub(crate) packet_size: usize,
    pub(crate) tombstone_retention: Duration,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) error_handler: Option<ErrorHandler>,
    pub(crate) rng_seed: Option<u64>,
    pub(crate) discovery: bool,
    pub(crate) suspect_timeout: Option<Duration>,
    pub(crate) dead_member_grace: Duration,
    pub(crate) ephemeral_grace: Duration,
    pub(crate) seed_refresh: Duration,
    pub(crate) eager_push: bool,
    pub(crate) max_value_size: usize,
    pub(crate) max_clock_drift: Duration,
    pub(crate) streams: bool,
    pub(crate) max_serving_streams: usize,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) durability: Durability,
    // Memory limits (issue 12).
    pub(crate) max_entries: Option<usize>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) memory_policy: MemoryPolicy,
    // Gossip encryption (issue 15).
    pub(crate) keyring: Option<Keyring>,
    pub(crate) encryption: Encryption,
    pub(crate) replay_window: Duration,
    pub(crate) _key: PhantomData<fn() -> K>,
}

impl<K, V> std::fmt::Debug for Builder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("bind_addr", &self.bind_addr)
            .field("seeds", &self.seeds)
            .field("gossip_interval", &self.gossip_interval)
            .field("fanout", &self.fanout)
            .field("packet_size", &self.packet_size)
            .finish_non_exhaustive()
    }
}

impl<K, V> Builder<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(codec: Arc<dyn Codec<V>>) -> Self {
        Builder {
            node_id: None,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            bind_addr: None,
            advertise_addr: None,
            seeds: Vec::new(),
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            fanout: DEFAULT_FANOUT,
            packet_size: DEFAULT_PACKET_SIZE,
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION,
            codec,
            error_handler: None,
            rng_seed: None,
            discovery: false,
            suspect_timeout: None,
            dead_member_grace: DEFAULT_DEAD_MEMBER_GRACE,
            ephemeral_grace: gossipkv_core::DEFAULT_EPHEMERAL_GRACE,
            seed_refresh: DEFAULT_SEED_REFRESH,
            eager_push: true,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_clock_drift: DEFAULT_MAX_CLOCK_DRIFT,
            streams: true,
            max_serving_streams: gossipkv_core::DEFAULT_MAX_SERVING_STREAMS,
            data_dir: None,
            durability: Durability::Sync,
            max_entries: None,
            max_bytes: None,
            memory_policy: MemoryPolicy::Reject,
            keyring: None,
            encryption: Encryption::Required,
            replay_window: DEFAULT_REPLAY_WINDOW,
            _key: PhantomData,
        }
    }

    /// This node's id (default: `node-` and 16 random hex digits). Must be
    /// unique in the cluster and at most 128 bytes.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Cluster id (default `"default"`): nodes only talk to nodes with the same id.
    pub fn cluster_id(mut self, id: impl Into<String>) -> Self {
        self.cluster_id = id.into();
        self
    }

    /// The UDP address to bind, like `"127.0.0.1:0"` or `"0.0.0.0:7946"`.
    /// Without it the node is local only.
    pub fn bind_addr(mut self, addr: impl Into<String>) -> Self {
        self.bind_addr = Some(addr.into());
        self
    }

    /// The address peers should use to reach this node, when it differs from
    /// the bound address (default: the bound address).
    pub fn advertise_addr(mut self, addr: impl Into<String>) -> Self {
        self.advertise_addr = Some(addr.into());
        self
    }

    /// Addresses (`host:port`; host names are resolved) of nodes to contact first.
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.seeds = seeds.into_iter().map(Into::into).collect();
        self
    }

    /// Time between gossip rounds (default 1 s).
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Peers contacted per round (default 3).
    pub fn fanout(mut self, fanout: usize) -> Self {
        self.fanout = fanout;
        self
    }

    /// Largest datagram sent, in bytes (default 1,400; from 512 to 65,507).
    /// Every node of a cluster should use the same value.
    pub fn packet_size(mut self, bytes: usize) -> Self {
        self.packet_size = bytes;
        self
    }

    /// Largest value [`GossipKv::set`](crate::GossipKv::set) accepts, in
    /// bytes as encoded by the codec (default 1 MiB, at most 64 MiB); larger
    /// ones get [`Error::ValueTooLarge`](crate::Error::ValueTooLarge). Values
    /// too large for one datagram replicate as fragmented envelopes, apart
    /// from the node's other writes. Every node of a cluster should use the
    /// same value: a node drops values above its own maximum.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How long tombstones of deleted keys are kept (default 6 hours). A node
    /// away for longer is re-synchronised in full when it returns.
    pub fn tombstone_retention(mut self, retention: Duration) -> Self {
        self.tombstone_retention = retention;
        self
    }

    /// The value codec (default: [`DefaultCodec`](crate::DefaultCodec) when built
    /// with [`GossipKv::builder`]).
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Called for network, decode and clock-skew problems. It runs on a task of
    /// its own, so a slow handler never stalls the receive path (reports that
    /// arrive while it is busy beyond a queue of 1,024 are dropped and counted).
    /// Without a handler the problems are still kept, by kind, in
    /// [`GossipKv::health`].
    pub fn error_handler(
        mut self,
        handler: impl Fn(&NetworkError) + Send + Sync + 'static,
    ) -> Self {
        self.error_handler = Some(Arc::new(handler));
        self
    }

    /// Finds peers on the local network with mDNS (service
    /// `_gossipkv._udp.local.`), in addition to any seeds. Needs a bind
    /// address. Nodes of other clusters are ignored.
    pub fn discovery(mut self, enabled: bool) -> Self {
        self.discovery = enabled;
        self
    }

    /// How long a member that stopped answering probes stays suspect before
    /// it is declared dead (default three gossip intervals, at least 1 s). It
    /// is probed and told of the suspicion meanwhile, so a live member
    /// refutes it; longer is slower to declare a crash and safer on a lossy
    /// network.
    pub fn suspect_timeout(mut self, timeout: Duration) -> Self {
        self.suspect_timeout = Some(timeout);
        self
    }

    /// How long dead or departed members are remembered before they are
    /// forgotten (default 1 hour). Their data is never forgotten.
    pub fn dead_member_grace(mut self, grace: Duration) -> Self {
        self.dead_member_grace = grace;
        self
    }

    /// How long the ephemeral keys of a member declared dead stay hidden
    /// before they are removed for good (default 1 minute, see
    /// [`GossipKv::set_ephemeral`](crate::GossipKv::set_ephemeral)). A
    /// member that refutes its death within it gets them back as they were;
    /// after it, it writes them again. Meanwhile they cost their memory.
    pub fn ephemeral_grace(mut self, grace: Duration) -> Self {
        self.ephemeral_grace = grace;
        self
    }

    /// How often seed host names are resolved again (default 30 s), so a DNS
    /// name that later points elsewhere is followed.
    pub fn seed_refresh_interval(mut self, interval: Duration) -> Self {
        self.seed_refresh = interval;
        self
    }

    /// Pushes every fresh write at once to every live peer, up to 128 of
    /// them (default on); in a larger cluster to 128 at random, which forward
    /// what was new to them to `fanout` peers each. Off, writes spread only
    /// by the periodic anti-entropy rounds.
    pub fn eager_push(mut self, enabled: bool) -> Self {
        self.eager_push = enabled;
        self
    }

    /// How far a peer's timestamps may lead this node's wall clock (default
    /// one hour, at least one second). A record stamped further ahead (a
    /// peer whose clock is set years ahead, or a forged timestamp) is not
    /// applied, and does not move this node's clock, until the wall clock
    /// comes within the bound; it is counted and reported as
    /// [`NetworkError::ClockSkew`](crate::NetworkError::ClockSkew) with
    /// `deferred: true`. Records ahead by less are applied and reported
    /// once they lead by more than 30 s. Every node should use the same value.
    pub fn max_clock_drift(mut self, drift: Duration) -> Self {
        self.max_clock_drift = drift;
        self
    }

    /// Catches up in bulk over TCP when far behind (default on): a node
    /// that lacks more than a few packets' worth of a peer's writes (it
    /// joined, restarted, was cut off by a partition, or a burst was written
    /// before it was reachable) asks that peer for a stream, served on the
    /// gossip port number over TCP, instead of receiving about one packet of
    /// records per gossip round. Off, the node neither asks for streams nor
    /// listens for them; catch-up then goes by datagrams only. When the TCP
    /// port cannot be bound the node runs without streams and reports it.
    pub fn streams(mut self, enabled: bool) -> Self {
        self.streams = enabled;
        self
    }

    /// Most streams this node serves at once (default 4); peers asking
    /// beyond it are refused and ask again later (or catch up by datagrams
    /// meanwhile). Each costs the serving node one frame of memory at a
    /// time (64 KiB of records; up to `max_value_size` plus 64 KiB for the
    /// frame around a large value) and a share of its upload.
    pub fn max_serving_streams(mut self, n: usize) -> Self {
        self.max_serving_streams = n;
        self
    }

    /// Keeps the node's data in this directory (created if absent), so that
    /// it survives restarts; default none: the data lives in memory only.
    ///
    /// [`build`](Self::build) loads what the directory holds before the
    /// node starts. After a clean [`shutdown`](crate::GossipKv::shutdown)
    /// the node comes back in the same generation, its sequence numbers
    /// going on; after a crash it keeps its data and takes a new
    /// generation. Either way it then catches up by delta on what it
    /// missed. A directory of another cluster or node id, of a newer
    /// version, a damaged one, or one another process uses, is refused
    /// with [`Error::DataDir`](crate::Error::DataDir). Give every node its
    /// own directory, and a fixed [`node_id`](Self::node_id): a random one
    /// differs at every start, and the directory would be refused.
    ///
    /// When writes reach the disk is [`durability`](Self::durability)'s
    /// choice.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// When writes reach the disk of a node with a
    /// [`data_dir`](Self::data_dir) (default [`Durability::Sync`]: `set`
    /// returns once the write is on disk). Ignored without a data dir.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Most keys holding a value on this node (default: no limit; at least
    /// 1); what happens at the limit is the
    /// [`memory_policy`](Builder::memory_policy). Tombstones of deleted keys
    /// are not counted here; they count in [`max_bytes`](Builder::max_bytes).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = Some(n);
        self
    }

    /// Most bytes of entries on this node (default: no limit; at least
    /// [`MIN_MAX_BYTES`](crate::MIN_MAX_BYTES)), counted as
    /// [`GossipKv::memory_usage`](crate::GossipKv::memory_usage) counts
    /// them ([`entry_cost`](crate::entry_cost)): each key and encoded value
    /// plus a fixed overhead per entry, tombstones of deleted keys included. What happens at the limit is the
    /// [`memory_policy`](Builder::memory_policy); an entry larger than the
    /// whole budget is refused under both with
    /// [`Error::TooLargeForBudget`](crate::Error::TooLargeForBudget).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// What a write that would exceed [`max_entries`](Builder::max_entries)
    /// or [`max_bytes`](Builder::max_bytes) does (default
    /// [`MemoryPolicy::Reject`]): fail, or evict the least recently used
    /// keys (replicated deletes). Every node of a cluster should use the
    /// same limits and policy: evictions delete keys everywhere.
    pub fn memory_policy(mut self, policy: MemoryPolicy) -> Self {
        self.memory_policy = policy;
        self
    }

    /// Seals every datagram and stream with `keyring`'s primary key
    /// (XChaCha20-Poly1305) and opens what arrives with any of its keys;
    /// by default nothing is sealed. With a keyring, [`encryption`] is
    /// [`Encryption::Required`] unless set otherwise, and every node of the
    /// cluster needs a key in common. Sealing adds 43 bytes to a datagram
    /// (two more per secondary key), taken from [`packet_size`].
    /// See the README's security section for what it protects.
    ///
    /// [`encryption`]: Builder::encryption
    /// [`packet_size`]: Builder::packet_size
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// How a node with a [`keyring`](Builder::keyring) treats plaintext
    /// (default [`Encryption::Required`]): the permissive settings are the
    /// steps of a migration of a running cluster to encryption.
    pub fn encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }

    /// How old (or how far ahead of this node's clock) a sealed datagram may
    /// be and still be accepted (default 30 s). Every datagram accepted
    /// within it is remembered, and a copy is refused as a replay. The
    /// clocks of a keyed cluster must agree within this window.
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Seeds the random generator that picks gossip peers (default: random),
    /// for reproducible runs.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Checks the options and starts the node: binds the socket and spawns
    /// its gossip task when a bind address was given.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the option that cannot work;
    /// [`Error::NoRuntime`] when a bind address is given but this is not
    /// running inside a tokio runtime (a node without a bind address needs
    /// none; the runtime needs I/O and time enabled, as `#[tokio::main]`
    /// does); [`Error::Bind`] when the socket cannot be bound.
    pub async fn build(self) -> Result<GossipKv<K, V>, Error> {
        crate::start::start(self).await
    }
}

impl<K, V> Builder<K, V> {
    /// Uses `K2` as the key type instead of `String` (the default of
    /// [`GossipKv::builder`]); every option set so far is kept. `K2` is any
    /// type made from a `String` and viewed as a `str`, such as a newtype
    /// around `String` or `Arc<str>`: keys are stored as strings, and `K2`
    /// is what [`keys`](GossipKv::keys), [`scan_prefix`](GossipKv::scan_prefix)
    /// and watchers hand back.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), gossipkv::Error> {
    /// use std::sync::Arc;
    /// use gossipkv::{Bytes, GossipKv};
    ///
    /// let kv = GossipKv::builder().key_type::<Arc<str>>().build().await?;
    /// kv.set("k", Bytes::from_static(b"v"))?;
    /// let keys: Vec<Arc<str>> = kv.keys();
    /// assert_eq!(&*keys[0], "k");
    /// # Ok(()) }
    /// ```
    pub fn key_type<K2>(self) -> Builder<K2, V>
    where
        K2: From<String> + AsRef<str> + Send + Sync + 'static,
    {
        Builder {
            node_id: self.node_id,
            cluster_id: self.cluster_id,
            bind_addr: self.bind_addr,
            advertise_addr: self.advertise_addr,
            seeds: self.seeds,
            gossip_interval: self.gossip_interval,
            fanout: self.fanout,
            packet_size: self.packet_size,
            tombstone_retention: self.tombstone_retention,
            codec: self.codec,
            error_handler: self.error_handler,
            rng_seed: self.rng_seed,
            discovery: self.discovery,
            suspect_timeout: self.suspect_timeout,
            dead_member_grace: self.dead_member_grace,
            ephemeral_grace: self.ephemeral_grace,
            seed_refresh: self.seed_refresh,
            eager_push: self.eager_push,
            max_value_size: self.max_value_size,
            max_clock_drift: self.max_clock_drift,
            streams: self.streams,
            max_serving_streams: self.max_serving_streams,
            data_dir: self.data_dir,
            durability: self.durability,
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            memory_policy: self.memory_policy,
            keyring: self.keyring,
            encryption: self.encryption,
            replay_window: self.replay_window,
            _key: PhantomData,
        }
    }
}

/// Parses a `host:port` string into its parts, with a clear error.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has an invalid port {port:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s:?} has an empty host"));
    }
    Ok((host, port))
}

/// Parses an address that must be an IP address and a port.
pub(crate) fn parse_socket_addr(
    option: ConfigOption,
    what: &str,
    s: &str,
) -> Result<SocketAddr, Error> {
    s.parse().map_err(|_| {
        Error::config(
            option,
            format!("{what} {s:?} is not an ip:port address (host names are not accepted here)"),
        )
    })
}
