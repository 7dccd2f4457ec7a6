//! Error types: [`Error`] for the API, [`NetworkError`] for the error handler.

use std::net::SocketAddr;

use gossipkv_proto::DecodeError;

/// Errors returned by [`GossipKv`](crate::GossipKv) and its builder.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given options that cannot work together; nothing was started.
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        /// What is wrong, in words.
        message: String,
    },
    /// The encoded value is longer than the node's maximum
    /// ([`Builder::max_value_size`](crate::Builder::max_value_size));
    /// nothing was written.
    #[error("value too large: {size} bytes, at most {max} bytes (max_value_size)")]
    ValueTooLarge {
        /// Encoded value size in bytes.
        size: usize,
        /// The largest encoded value size accepted.
        max: usize,
    },
    /// A key was empty or too long; nothing was written.
    #[error("invalid key: {message}")]
    InvalidKey {
        /// What is wrong, in words.
        message: String,
    },
    /// The node was shut down; writes are refused.
    #[error("node {node_id} is shut down")]
    Closed {
        /// The node's id.
        node_id: String,
    },
    /// The value codec failed to encode or decode a value.
    #[error("codec error: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The background task ended abnormally (it panicked or was cancelled).
    #[error("background task failed: {message}")]
    Task {
        /// What happened.
        message: String,
    },
}

/// Problems seen while running, reported through the error handler set with
/// [`Builder::error_handler`](crate::Builder::error_handler). None of them
/// stops the node: the offending datagram is dropped and counted.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetworkError {
    /// A datagram could not be decoded (malformed, truncated, oversized or from another protocol version).
    #[error("undecodable datagram from {from}: {error}")]
    Decode {
        /// Where it came from.
        from: SocketAddr,
        /// Why decoding failed.
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
    /// A datagram that claims to come from this node's own id with another generation
    /// (two nodes configured with the same id).
    #[error("datagram from {from} uses our own node id {node_id} (generation {generation})")]
    DuplicateNodeId {
        /// Where it came from.
        from: SocketAddr,
        /// The id.
        node_id: String,
        /// The generation it carried.
        generation: u64,
    },
    /// A peer's records carry timestamps far ahead of our clock. They are accepted
    /// (rejecting them would split the cluster), but one of the clocks is wrong.
    #[error("clock skew: records from {node_id} (via {from}) are {skew_ms} ms ahead of our clock")]
    ClockSkew {
        /// Where they came from.
        from: SocketAddr,
        /// The writer whose records are ahead.
        node_id: String,
        /// How far ahead, in milliseconds.
        skew_ms: u64,
    },
    /// Sending or receiving failed.
    #[error("i/o error on {op}: {message}")]
    Io {
        /// "send" or "recv".
        op: &'static str,
        /// The error text.
        message: String,
    },
    /// A seed could not be resolved.
    #[error("cannot resolve seed {seed:?}: {message}")]
    SeedResolution {
        /// The seed as configured.
        seed: String,
        /// Why.
        message: String,
    },
}
