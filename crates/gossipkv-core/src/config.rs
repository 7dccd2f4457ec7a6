//! Options of a [`Protocol`](crate::Protocol), their defaults, and the byte
//! budgets derived from them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossipkv_proto::{envelope_overhead, Limits, FRAGMENT_OVERHEAD};
use gossipkv_storage::NodeId;

use crate::peers::Directory;
use crate::swim::DetectorConfig;

/// Largest packet size accepted (the largest UDP payload over IPv4).
pub const MAX_PACKET_SIZE: usize = 65_507;
/// Smallest packet size accepted.
pub const MIN_PACKET_SIZE: usize = 512;
/// Default packet size: safe on real networks.
pub const DEFAULT_PACKET_SIZE: usize = 1_400;
/// Default time between gossip rounds.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_secs(1);
/// Default number of peers contacted per round.
pub const DEFAULT_FANOUT: usize = 3;
/// Default tombstone retention.
pub const DEFAULT_TOMBSTONE_RETENTION: Duration = Duration::from_secs(6 * 3600);
/// Default largest value: 1 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1 << 20;
/// Upper bound of the largest value: 64 MiB.
pub const MAX_VALUE_SIZE_LIMIT: usize = 64 << 20;
/// Longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Default bound on how far a remote timestamp may lead the local wall
/// clock before the record carrying it is held back (see
/// [`ProtocolConfig::max_clock_drift`]): one hour, far beyond real clock
/// errors, far below a clock set years ahead.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_secs(3600);
/// Timestamps further ahead of the local wall clock than this (but within
/// the drift bound) are applied and reported as clock skew.
pub const CLOCK_SKEW_REPORT: Duration = Duration::from_secs(30);
/// Largest number of peers a writer pushes a fresh write to directly.
///
/// Reaching every node directly costs n − 1 datagrams per burst of writes and
/// delivers each write once; rumor mongering needs about n · ln n datagrams to
/// reach every node with high probability, so direct pushes are the cheaper
/// way up to this size, and the fastest.
pub const PUSH_DIRECT_MAX: usize = 128;
/// Room kept, beyond the longest value, for the rest of a fragmented envelope
/// (key, version, header).
pub const MESSAGE_SLACK: usize = 64 << 10;

/// Default [`ProtocolConfig::stream_threshold`]: a few packets' worth of
/// small writes.
pub const DEFAULT_STREAM_THRESHOLD: u64 = 64;
/// Default [`ProtocolConfig::max_serving_streams`].
pub const DEFAULT_MAX_SERVING_STREAMS: usize = 4;
/// Default [`ProtocolConfig::stream_frame_size`]: 64 KiB.
pub const DEFAULT_STREAM_FRAME_SIZE: usize = 64 << 10;
/// Default [`ProtocolConfig::ephemeral_grace`]: one minute.
pub const DEFAULT_EPHEMERAL_GRACE: Duration = Duration::from_secs(60);

/// Longest text form of a socket address ("[v6%scope]:port"), as assumed
/// when cutting fragments.
const MAX_ADDR_TEXT: usize = 64;

/// Share of a datagram always reserved for member entries (one part in
/// ten); a datagram whose body leaves more room may carry more.
const MEMBER_SHARE: usize = 10;

/// Options of a [`Protocol`](crate::Protocol) instance. Start from
/// [`ProtocolConfig::new`], which fills in the defaults, and change the
/// public fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProtocolConfig {
    /// This node's id (at most [`MAX_NODE_ID_LEN`] bytes).
    pub node_id: NodeId,
    /// This incarnation's generation (must match the store's local origin).
    pub generation: u64,
    /// The membership incarnation to start at (default 0). A node that
    /// restarts from its data directory in the same generation starts
    /// above every incarnation it used before (see
    /// [`Protocol::incarnation`](crate::Protocol::incarnation)): its peers
    /// remember it as departed at its last one, and only news of a greater
    /// incarnation brings it back.
    pub incarnation: u64,
    /// Only datagrams carrying this cluster id are accepted.
    pub cluster_id: String,
    /// The address peers should use to reach us, if known.
    pub advertise_addr: Option<SocketAddr>,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Peers contacted per round.
    pub fanout: usize,
    /// Largest datagram sent, in bytes.
    pub packet_size: usize,
    /// How long tombstones are kept.
    pub tombstone_retention: Duration,
    /// Seed addresses, contacted until they answer.
    pub seeds: Vec<SocketAddr>,
    /// Seed of the random generator that picks peers.
    pub rng_seed: u64,
    /// Secret key of the address-validation tokens (see
    /// [`crate::Protocol`]'s notes on amplification). A driver facing a real
    /// network draws it from a cryptographically secure generator; 0 (the
    /// default) derives it from [`rng_seed`](Self::rng_seed), which suits
    /// tests and the simulator only: the peer-picking generator is not
    /// secret.
    pub token_key: u128,
    /// Failure detector tuning.
    pub detector: DetectorConfig,
    /// Push fresh writes to peers at once (eager dissemination), in
    /// addition to periodic anti-entropy.
    pub push: bool,
    /// Largest value replicated, in bytes. Values too large for a datagram
    /// travel apart from deltas, as envelopes cut into fragments.
    pub max_value_size: usize,
    /// How far a remote timestamp may lead the local wall clock. A record
    /// stamped further ahead is not applied (and does not move the local
    /// clock) until local time comes within the bound; it is counted in
    /// [`Stats::records_deferred`](crate::Stats::records_deferred) and
    /// reported as [`NetworkError::ClockSkew`](crate::NetworkError::ClockSkew).
    pub max_clock_drift: Duration,
    /// `None` for a real node. A simulation aid otherwise: gossip and push
    /// peers are drawn from this fixed list of every node instead of the
    /// member table, and membership is neither kept, probed nor gossiped
    /// (headers carry no member-list fingerprint, datagrams no member
    /// entries). The cluster is taken as formed and healthy. This lets a
    /// simulator run clusters too large for every simulated node to hold a
    /// full member table, and measure dissemination alone.
    pub directory: Option<Arc<Directory>>,
    /// Whether this node asks peers for streams when it is far behind, and
    /// serves them (see [`Protocol::poll_stream_open`](crate::Protocol::poll_stream_open)).
    /// Off by default: a driver that can carry streams turns it on.
    pub streams: bool,
    /// How many writes a peer must vouch for that this node lacks (and
    /// that are not reaching it by push) before it asks that peer for a
    /// stream.
    pub stream_threshold: u64,
    /// Most streams served at once; further requests are refused (the
    /// asking peer catches up by datagrams, or asks again later).
    pub max_serving_streams: usize,
    /// Bytes of records per stream frame (a record larger than this gets a
    /// frame of its own).
    pub stream_frame_size: usize,
    /// How long the ephemeral values of a dead member stay hidden before
    /// they are removed for good (each becomes the tombstone of its own
    /// version). Within it, a member that refutes its death gets them back
    /// at no cost; after it, it writes them again. Departed members and
    /// replaced generations lose theirs at once.
    pub ephemeral_grace: Duration,
    /// New origins (writers' node id and generation not known here) one
    /// trusted peer may introduce at once; default
    /// [`SOURCE_BURST`](crate::SOURCE_BURST). A cluster with more active
    /// origins than this brings a joiner the rest as the allowance refills.
    /// Untrusted sources share a smaller, fixed allowance (see
    /// [`STRANGERS_BURST`](crate::STRANGERS_BURST)).
    pub origin_burst: u32,
    /// New origins a trusted peer's allowance regains per gossip interval;
    /// default [`SOURCE_PER_INTERVAL`](crate::SOURCE_PER_INTERVAL).
    pub origins_per_interval: u32,
}

impl ProtocolConfig {
    /// The defaults for node `node_id` of generation `generation` in
    /// cluster `cluster_id`: no address, no seeds, the `DEFAULT_*`
    /// constants, eager push on, random seed 0, no directory, streams off.
    pub fn new(node_id: impl Into<NodeId>, generation: u64, cluster_id: impl Into<String>) -> Self {
        ProtocolConfig {
            node_id: node_id.into(),
            generation,
            incarnation: 0,
            cluster_id: cluster_id.into(),
            advertise_addr: None,
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            fanout: DEFAULT_FANOUT,
            packet_size: DEFAULT_PACKET_SIZE,
            tombstone_retention: DEFAULT_TOMBSTONE_RETENTION,
            seeds: Vec::new(),
            rng_seed: 0,
            token_key: 0,
            detector: DetectorConfig::for_interval(DEFAULT_GOSSIP_INTERVAL),
            push: true,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            max_clock_drift: DEFAULT_MAX_CLOCK_DRIFT,
            directory: None,
            streams: false,
            stream_threshold: DEFAULT_STREAM_THRESHOLD,
            max_serving_streams: DEFAULT_MAX_SERVING_STREAMS,
            stream_frame_size: DEFAULT_STREAM_FRAME_SIZE,
            ephemeral_grace: DEFAULT_EPHEMERAL_GRACE,
            origin_burst: crate::SOURCE_BURST,
            origins_per_interval: crate::SOURCE_PER_INTERVAL,
        }
    }

    /// The gossip interval, at least one millisecond.
    pub(crate) fn interval(&self) -> Duration {
        self.gossip_interval.max(Duration::from_millis(1))
    }

    /// `fanout`, at least one.
    pub(crate) fn fanout(&self) -> usize {
        self.fanout.max(1)
    }
}

/// Byte budgets derived from a configuration, fixed for the life of a
/// protocol instance.
#[derive(Clone, Debug)]
pub(crate) struct Sizes {
    /// Bytes for the body of one datagram (packet size less the envelope
    /// and the share reserved for member entries).
    pub(crate) body: usize,
    /// Bytes always left for member entries.
    pub(crate) members: usize,
    /// Values longer than this travel apart from deltas and pushes.
    pub(crate) inline_max: usize,
    /// Length of the pieces fragmented envelopes are cut into: the same on
    /// every node of the cluster (it assumes the longest node id and address).
    pub(crate) piece: usize,
    /// What incoming datagrams are checked against.
    pub(crate) limits: Limits,
}

impl Sizes {
    pub(crate) fn new(cfg: &ProtocolConfig) -> Self {
        let addr_len = cfg.advertise_addr.map_or(0, |a| a.to_string().len());
        let overhead =
            envelope_overhead(cfg.cluster_id.len(), cfg.node_id.as_str().len(), addr_len);
        let members = cfg.packet_size / MEMBER_SHARE;
        let body = cfg.packet_size.saturating_sub(overhead + members);
        let piece = cfg
            .packet_size
            .saturating_sub(
                envelope_overhead(cfg.cluster_id.len(), MAX_NODE_ID_LEN, MAX_ADDR_TEXT)
                    + FRAGMENT_OVERHEAD,
            )
            .max(1);
        let limits = Limits {
            max_value_len: cfg.max_value_size,
            max_message: cfg.max_value_size.saturating_add(MESSAGE_SLACK),
            ..Limits::default()
        };
        Sizes {
            body,
            members,
            inline_max: body / 4,
            piece,
            limits,
        }
    }
}
