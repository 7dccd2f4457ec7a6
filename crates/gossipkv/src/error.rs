//! [`Error`]: what the API returns, and [`ConfigOption`]: which builder
//! option a configuration error is about. (What the error handler is given,
//! [`NetworkError`](crate::NetworkError), comes from `gossipkv-core`.)

use std::fmt;
use std::net::SocketAddr;

use crate::codec::CodecError;
pub use gossipkv_durable::OpenError as DataDirError;

/// Errors returned by [`GossipKv`](crate::GossipKv) and its builder.
///
/// Errors that have a cause keep it: [`std::error::Error::source`] returns
/// the I/O error of [`Error::Bind`] and [`Error::Signal`], and the
/// [`CodecError`] of [`Error::Codec`] (which in turn returns the codec's own
/// error, such as a `serde_json::Error`).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder was given options that cannot work; nothing was started.
    /// `option` says which builder method to look at.
    #[error("invalid configuration: {option}: {message}")]
    InvalidConfig {
        /// The option that failed (its `Display` is the builder method's name).
        option: ConfigOption,
        /// What is wrong, in words.
        message: String,
    },
    /// [`Builder::build`](crate::Builder::build) was called for a networked
    /// node (one with a bind address) outside a tokio runtime; nothing was
    /// started. Call it from async code running on a tokio runtime with I/O
    /// and time enabled (`#[tokio::main]` or `Runtime::block_on`). A node
    /// without a bind address needs no runtime.
    #[error(
        "no tokio runtime: a node with a bind address must be built inside a tokio runtime \
         (with I/O and time enabled)"
    )]
    NoRuntime,
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
    /// The write would take the node over
    /// [`max_entries`](crate::Builder::max_entries) or
    /// [`max_bytes`](crate::Builder::max_bytes) under
    /// [`MemoryPolicy::Reject`](crate::MemoryPolicy::Reject); nothing was
    /// written. Delete keys (or wait for deletes from peers) to make room.
    /// Under [`MemoryPolicy::EvictLru`](crate::MemoryPolicy::EvictLru): the
    /// node is over `max_bytes` with nothing left to evict but tombstones
    /// its peers have not seen yet; retry after a gossip round or two.
    #[error(
        "over budget: the write needs {needed} more bytes; {bytes} of {max_bytes:?} bytes \
         and {entries} of {max_entries:?} entries are used"
    )]
    OverBudget {
        /// Bytes the write would add (0 when it is the entry limit).
        needed: usize,
        /// Bytes in use ([`GossipKv::memory_usage`](crate::GossipKv::memory_usage)).
        bytes: usize,
        /// The byte limit.
        max_bytes: Option<usize>,
        /// Keys holding a value.
        entries: usize,
        /// The entry limit.
        max_entries: Option<usize>,
    },
    /// The entry (key, encoded value and the per-entry overhead) is larger
    /// than the node's whole [`max_bytes`](crate::Builder::max_bytes), under
    /// either memory policy; nothing was written.
    #[error("an entry of {size} bytes cannot fit max_bytes of {max_bytes} bytes")]
    TooLargeForBudget {
        /// What the entry would cost, in bytes.
        size: usize,
        /// The byte limit.
        max_bytes: usize,
    },
    /// A key was empty or too long; nothing was written.
    #[error("invalid key: {message}")]
    InvalidKey {
        /// What is wrong, in words.
        message: String,
    },
    /// A time to live was zero, or too long to express (see
    /// [`GossipKv::set_with_ttl`](crate::GossipKv::set_with_ttl)); nothing
    /// was written.
    #[error("invalid time to live: {message}")]
    InvalidTtl {
        /// What is wrong, in words.
        message: String,
    },
    /// The node was shut down; writes are refused.
    #[error("node {node_id} is shut down")]
    Closed {
        /// The node's id.
        node_id: String,
    },
    /// The value of `key` failed to encode (on `set`; nothing was written)
    /// or to decode (on `get`, `scan_prefix_checked`, and in
    /// [`WatchEvent::error`](crate::WatchEvent::error)), for example a value
    /// written by a node with another codec or another value type.
    #[error("codec error for key {key:?}: {source}")]
    Codec {
        /// The key whose value failed.
        key: String,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Listening for termination signals failed
    /// ([`GossipKv::shutdown_on_termination`](crate::GossipKv::shutdown_on_termination));
    /// the node was not shut down.
    #[error("cannot listen for termination signals: {source}")]
    Signal {
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The data directory ([`Builder::data_dir`](crate::Builder::data_dir))
    /// cannot be used: it belongs to another cluster or node, was written
    /// by a newer version, is damaged, is in use by another process, or
    /// cannot be read or created. Nothing was started and nothing on disk
    /// was changed; the source says which.
    #[error("{source}")]
    DataDir {
        /// What is wrong with it.
        #[from]
        source: DataDirError,
    },
    /// A write could not be made durable: committing it to the data
    /// directory failed, or the node stopped first. The write is in the
    /// local store and replicates, but it is not on this node's disk.
    #[error("cannot persist to {path}: {message}")]
    Persist {
        /// The database file.
        path: std::path::PathBuf,
        /// What failed.
        message: String,
    },
    /// The background task ended abnormally (it panicked or was cancelled).
    #[error("background task failed: {message}")]
    Task {
        /// What happened.
        message: String,
    },
    /// A keyring change that would break the keyring (see
    /// [`KeyringError`](crate::KeyringError)), or one made on a node that
    /// cannot take it (a local-only node has no keyring).
    #[error("keyring: {message}")]
    Keyring {
        /// What was refused and why.
        message: String,
    },
}

/// The builder option an [`Error::InvalidConfig`] is about. Its `Display`
/// is the name of the [`Builder`](crate::Builder) method that sets it, such
/// as `bind_addr` or `max_clock_drift`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigOption {
    /// [`Builder::node_id`](crate::Builder::node_id).
    NodeId,
    /// [`Builder::cluster_id`](crate::Builder::cluster_id).
    ClusterId,
    /// [`Builder::bind_addr`](crate::Builder::bind_addr).
    BindAddr,
    /// [`Builder::advertise_addr`](crate::Builder::advertise_addr).
    AdvertiseAddr,
    /// [`Builder::seeds`](crate::Builder::seeds).
    Seeds,
    /// [`Builder::gossip_interval`](crate::Builder::gossip_interval).
    GossipInterval,
    /// [`Builder::fanout`](crate::Builder::fanout).
    Fanout,
    /// [`Builder::packet_size`](crate::Builder::packet_size).
    PacketSize,
    /// [`Builder::max_value_size`](crate::Builder::max_value_size).
    MaxValueSize,
    /// [`Builder::tombstone_retention`](crate::Builder::tombstone_retention).
    TombstoneRetention,
    /// [`Builder::suspect_timeout`](crate::Builder::suspect_timeout).
    SuspectTimeout,
    /// [`Builder::dead_member_grace`](crate::Builder::dead_member_grace).
    DeadMemberGrace,
    /// [`Builder::seed_refresh_interval`](crate::Builder::seed_refresh_interval).
    SeedRefreshInterval,
    /// [`Builder::discovery`](crate::Builder::discovery): also used when the
    /// mDNS daemon cannot start.
    Discovery,
    /// [`Builder::max_clock_drift`](crate::Builder::max_clock_drift).
    MaxClockDrift,
    /// [`Builder::durability`](crate::Builder::durability).
    Durability,
    /// [`Builder::max_entries`](crate::Builder::max_entries).
    MaxEntries,
    /// [`Builder::max_bytes`](crate::Builder::max_bytes).
    MaxBytes,
    /// [`Builder::keyring`](crate::Builder::keyring) and
    /// [`Builder::encryption`](crate::Builder::encryption).
    Keyring,
}

impl ConfigOption {
    /// The name of the builder method that sets this option.
    pub fn method_name(self) -> &'static str {
        match self {
            ConfigOption::NodeId => "node_id",
            ConfigOption::ClusterId => "cluster_id",
            ConfigOption::BindAddr => "bind_addr",
            ConfigOption::AdvertiseAddr => "advertise_addr",
            ConfigOption::Seeds => "seeds",
            ConfigOption::GossipInterval => "gossip_interval",
            ConfigOption::Fanout => "fanout",
            ConfigOption::PacketSize => "packet_size",
            ConfigOption::MaxValueSize => "max_value_size",
            ConfigOption::TombstoneRetention => "tombstone_retention",
            ConfigOption::SuspectTimeout => "suspect_timeout",
            ConfigOption::DeadMemberGrace => "dead_member_grace",
            ConfigOption::SeedRefreshInterval => "seed_refresh_interval",
            ConfigOption::Discovery => "discovery",
            ConfigOption::MaxClockDrift => "max_clock_drift",
            ConfigOption::Durability => "durability",
            ConfigOption::MaxEntries => "max_entries",
            ConfigOption::MaxBytes => "max_bytes",
            ConfigOption::Keyring => "keyring",
        }
    }
}

impl fmt::Display for ConfigOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.method_name())
    }
}

impl Error {
    /// A configuration error about `option`.
    pub(crate) fn config(option: ConfigOption, message: impl Into<String>) -> Self {
        Error::InvalidConfig {
            option,
            message: message.into(),
        }
    }

    /// A codec error about the value of `key`.
    pub(crate) fn codec(key: &str, source: CodecError) -> Self {
        Error::Codec {
            key: key.to_string(),
            source,
        }
    }
}

/// An error and its sources on one line (`a: b: c`), for logs.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn config_options_display_as_builder_methods() {
        assert_eq!(ConfigOption::BindAddr.to_string(), "bind_addr");
        assert_eq!(ConfigOption::MaxClockDrift.to_string(), "max_clock_drift");
        assert_eq!(
            ConfigOption::SeedRefreshInterval.to_string(),
            "seed_refresh_interval"
        );
        let e = Error::config(ConfigOption::Fanout, "fanout must be at least 1");
        assert_eq!(
            e.to_string(),
            "invalid configuration: fanout: fanout must be at least 1"
        );
    }

    #[test]
    fn codec_errors_name_the_key_and_keep_the_chain() {
        let json = serde_json::from_slice::<u32>(b"x").unwrap_err();
        let e = Error::codec("cfg/a", CodecError::with_source("not JSON", json));
        assert!(e.to_string().contains("\"cfg/a\""), "{e}");
        let codec = e.source().unwrap();
        assert!(codec.downcast_ref::<CodecError>().is_some());
        assert!(codec
            .source()
            .unwrap()
            .downcast_ref::<serde_json::Error>()
            .is_some());
        let line = chain(&e);
        assert!(
            line.starts_with("codec error for key \"cfg/a\": not JSON"),
            "{line}"
        );
        assert!(line.contains("expected value"), "{line}");
    }
}
