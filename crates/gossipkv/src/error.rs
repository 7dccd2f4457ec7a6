//! [`Error`]: what the API returns. (What the error handler is given,
//! [`NetworkError`](crate::NetworkError), comes from `gossipkv-core`.)

use std::net::SocketAddr;

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
