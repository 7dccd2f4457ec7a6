//! Why a datagram could not be decoded.

/// Why [`crate::decode`] rejected a datagram. Decoding never panics: every
/// malformed, oversized or inconsistent input ends up as one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The datagram is longer than [`crate::Limits::max_datagram`]; nothing
    /// was parsed.
    #[error("datagram of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid protobuf `Envelope` (bad wire format,
    /// truncation, invalid UTF-8 in a string field, ...).
    #[error("malformed envelope: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// A field the protocol requires is absent (named `message.field`).
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// The envelope is of a wire format version this crate does not speak.
    #[error("unsupported protocol version {got} (supported: {supported})")]
    UnsupportedVersion {
        /// The envelope's version.
        got: u32,
        /// The version this crate speaks ([`crate::PROTOCOL_VERSION`]).
        supported: u32,
    },
    /// A length or a count is above its bound in [`crate::Limits`].
    #[error("{what} of {len} exceeds the limit of {max}")]
    LimitExceeded {
        /// What was measured (for example `"key length"` or `"records"`).
        what: &'static str,
        /// The length (bytes) or count found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The sender's advertised address is not a socket address (`ip:port`);
    /// carries the text, cut to 64 bytes.
    #[error("invalid advertised address {0:?}")]
    InvalidAddr(String),
    /// A node id (sender, record, digest entry or chunk) is empty.
    #[error("empty node id")]
    EmptyNodeId,
    /// The fields are well-formed but contradict each other: a tombstone
    /// carrying a value, a chunk whose `to` is below its `from`, a ghost
    /// outside its chunk's range, a page end or resync key without its flag.
    #[error("inconsistent envelope: {0}")]
    Inconsistent(&'static str),
}
