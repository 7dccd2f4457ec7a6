//! Datagram transports for gossipkv.
//!
//! This crate moves opaque byte buffers between [`SocketAddr`]s. It provides:
//!
//! * the [`Transport`] trait: an unreliable, unordered, bounded-size datagram
//!   transport with async `send_to` / `recv_from`;
//! * [`UdpTransport`]: a real UDP socket (configured through `socket2`,
//!   driven by `tokio`), IPv4 or IPv6;
//! * [`MemoryNetwork`] / [`MemoryTransport`]: an in-process network for tests
//!   and simulations, with seeded (reproducible) loss, duplication and
//!   partitions, so real async code can be exercised without sockets.
//!
//! # What this crate deliberately does not do
//!
//! It knows bytes and socket addresses and nothing else. It does not know
//! about gossip, membership, protobuf or any message format; it does not
//! frame, fragment, encrypt, authenticate, retransmit, order or deduplicate
//! datagrams. A datagram larger than [`Transport::max_datagram_size`] is
//! rejected with [`TransportError::DatagramTooLarge`], never split. Those
//! concerns belong to the crates above this one.
//!
//! # Example
//!
//! ```
//! use gossipkv_transport::{MemoryNetwork, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gossipkv_transport::TransportError> {
//! let net = MemoryNetwork::new(7);
//! let a = net.bind("10.0.0.1:0".parse().unwrap())?;
//! let b = net.bind("10.0.0.2:0".parse().unwrap())?;
//! a.send_to(b"ping", b.local_addr()).await?;
//! let mut buf = vec![0; b.max_datagram_size()];
//! let (len, from) = b.recv_from(&mut buf).await?;
//! assert_eq!((&buf[..len], from), (&b"ping"[..], a.local_addr()));
//! # Ok(())
//! # }
//! ```
//!
//! # Cancel safety
//!
//! The `send_to` and `recv_from` futures of both implementations in this
//! crate are cancel-safe: dropping a `recv_from` future before it completes
//! never loses a datagram, and dropping a `send_to` future either sent the
//! datagram or did not.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

mod memory;
mod udp;

pub use memory::{MemoryConfig, MemoryNetwork, MemoryTransport, NetworkStats};
pub use udp::{UdpConfig, UdpTransport};

/// Largest UDP payload that fits in a single IPv4 datagram
/// (65 535 − 20 byte IP header − 8 byte UDP header). Default maximum
/// datagram size for every transport in this crate.
pub const DEFAULT_MAX_DATAGRAM_SIZE: usize = 65_507;

/// Errors from transports.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding a socket (or an in-memory address) failed.
    ///
    /// For [`MemoryNetwork::bind`] the source has kind
    /// [`std::io::ErrorKind::AddrInUse`] when the address is already bound,
    /// or [`std::io::ErrorKind::AddrNotAvailable`] when no free port is left
    /// on that IP.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address that was being bound.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The datagram is larger than the transport's maximum datagram size;
    /// nothing was sent.
    #[error("datagram of {len} bytes exceeds maximum datagram size of {max} bytes")]
    DatagramTooLarge {
        /// Length of the rejected datagram.
        len: usize,
        /// The transport's [`Transport::max_datagram_size`].
        max: usize,
    },
    /// Another I/O error while sending or receiving.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The in-memory endpoint or network is closed (see
    /// [`MemoryNetwork::close`]).
    #[error("transport is closed")]
    Closed,
    /// A configuration value is unusable (for example a maximum datagram
    /// size of zero, or a queue capacity of zero).
    #[error("invalid transport configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with the configuration.
        reason: &'static str,
    },
}

/// A datagram transport: unreliable, unordered, bounded-size messages.
///
/// Datagrams may be lost, duplicated or reordered; a successful
/// [`send_to`](Transport::send_to) only means the datagram was handed to the
/// network. Implementations are shared between tasks by reference (or via
/// [`Arc`], which also implements this trait), so one task may receive while
/// others send.
pub trait Transport: Send + Sync + 'static {
    /// The address this transport is bound to, with the actual (non-zero)
    /// port when port 0 was requested.
    fn local_addr(&self) -> SocketAddr;

    /// The largest datagram, in bytes, that [`send_to`](Transport::send_to)
    /// accepts.
    fn max_datagram_size(&self) -> usize;

    /// Send one datagram to `target`.
    ///
    /// Never blocks for long. Fails with
    /// [`TransportError::DatagramTooLarge`] (sending nothing) if
    /// `buf.len() > self.max_datagram_size()`. Sending to an address nobody
    /// listens on is not an error.
    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Receive one datagram into `buf`, returning `(len, source)`.
    ///
    /// Callers should pass a buffer of at least
    /// [`max_datagram_size`](Transport::max_datagram_size) bytes; if `buf`
    /// is smaller, the datagram is truncated to `buf.len()` (the rest is
    /// discarded, as with UDP) and the truncated length is returned.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(usize, SocketAddr), TransportError>> + Send;
}

impl<T: Transport> Transport for Arc<T> {
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }

    fn max_datagram_size(&self) -> usize {
        (**self).max_datagram_size()
    }

    fn send_to(
        &self,
        buf: &[u8],
        target: SocketAddr,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        (**self).send_to(buf, target)
    }

    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(usize, SocketAddr), TransportError>> + Send {
        (**self).recv_from(buf)
    }
}

/// Returns `Err(DatagramTooLarge)` when `len > max`.
fn check_size(len: usize, max: usize) -> Result<(), TransportError> {
    if len > max {
        Err(TransportError::DatagramTooLarge { len, max })
    } else {
        Ok(())
    }
}
