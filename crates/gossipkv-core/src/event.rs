//! What a [`Protocol`](crate::Protocol) hands back to its driver: datagrams
//! to send ([`Transmit`]) and things to report ([`Event`], [`NetworkError`]).

use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_proto::DecodeError;

use crate::swim::MemberEvent;

/// A datagram to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Encoded envelope (or fragment of one), at most `packet_size` bytes.
    pub payload: Bytes,
}

/// Something the driver should know about.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A problem to report (the node carries on).
    Error(NetworkError),
    /// Membership changed.
    Member(MemberEvent),
    /// This node has caught up (once per instance; see
    /// [`Protocol::is_synced`](crate::Protocol::is_synced)).
    Synced,
}

/// Problems seen while running. None of them stops the node: the offending
/// datagram (or the part of it concerned) is dropped and counted in
/// [`Stats`](crate::Stats). The protocol reports the first five; a driver
/// reports [`NetworkError::Io`] and [`NetworkError::SeedResolution`].
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetworkError {
    /// A datagram could not be decoded (malformed, truncated, oversized or
    /// from another protocol version).
    #[error("undecodable datagram from {from}: {error}")]
    Decode {
        /// Where it came from.
        from: SocketAddr,
        /// Why decoding failed.
        #[source]
        error: DecodeError,
    },
    /// A datagram from a node of another cluster.
    #[error("datagram from {from} belongs to cluster {cluster_id:?}, not ours")]
    ForeignCluster {
        /// Where it came from.
        from: SocketAddr,
        /// The cluster id it carried.
        cluster_id: String,
    },
    /// A datagram that claims to come from this node's own id with another
    /// generation: two nodes were configured with the same id.
    #[error("datagram from {from} uses our own node id {node_id} (generation {generation})")]
    DuplicateNodeId {
        /// Where it came from.
        from: SocketAddr,
        /// The id.
        node_id: String,
        /// The generation it carried.
        generation: u64,
    },
    /// A peer's records carry timestamps far ahead of our wall clock. Within
    /// the maximum clock drift they are applied anyway (rejecting them would
    /// split the cluster), but one of the clocks is wrong; beyond it they
    /// are held back (`deferred`) until our clock comes within the bound.
    #[error(
        "clock skew: records from {node_id} (via {from}) are {skew_ms} ms ahead of our clock{}",
        if *deferred { "; held back until our clock is within the maximum drift" } else { "" }
    )]
    ClockSkew {
        /// Where they came from.
        from: SocketAddr,
        /// The writer whose records are ahead.
        node_id: String,
        /// How far ahead, in milliseconds.
        skew_ms: u64,
        /// Whether the records were held back (beyond the maximum drift).
        deferred: bool,
    },
    /// A datagram spoke for this node's own current origin: records,
    /// chunks or watermarks of writes this node never made. Only this node
    /// writes its origin, so they were refused (a forged or corrupt peer).
    #[error("datagram from {from} claims {count} writes of this node's own origin; refused")]
    OwnOriginClaimed {
        /// Where it came from.
        from: SocketAddr,
        /// How many records, chunks or watermarks were refused.
        count: u64,
    },
    /// A datagram or stream refused before decoding by a node with a
    /// keyring: not sealed (when sealing is required), sealed with a key
    /// this node does not hold, forged or altered, stale, from the future,
    /// or replayed. Reported by the driver, which seals and opens.
    #[error("datagram from {from} refused before decoding: {reason}")]
    Unopened {
        /// Where it came from.
        from: SocketAddr,
        /// Why (for example "sealed with key 3f2a, which this node does not
        /// hold", "authentication failed", "replayed").
        reason: String,
    },
    /// Sending or receiving failed.
    #[error("i/o error on {op}: {source}")]
    Io {
        /// "send" or "recv".
        op: &'static str,
        /// The error.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// A seed could not be resolved.
    #[error("cannot resolve seed {seed:?}: {source}")]
    SeedResolution {
        /// The seed as configured.
        seed: String,
        /// Why.
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}
