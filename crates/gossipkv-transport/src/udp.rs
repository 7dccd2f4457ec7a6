//! UDP transport built on `socket2` + `tokio`.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{check_size, Transport, TransportError, DEFAULT_MAX_DATAGRAM_SIZE};

/// Largest datagram size [`UdpConfig::max_datagram_size`] may be set to
/// (the IPv6 UDP payload limit without jumbograms). The kernel may still
/// reject sends above 65 507 bytes on IPv4 with an I/O error.
const MAX_UDP_PAYLOAD: usize = 65_527;

/// Configuration for [`UdpTransport::bind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Largest datagram accepted by `send_to`, in bytes. Default
    /// [`DEFAULT_MAX_DATAGRAM_SIZE`] (65 507). Must be in `1..=65_527`.
    pub max_datagram_size: usize,
    /// Requested `SO_RCVBUF` size in bytes. Default 4 MiB. The kernel may
    /// grant less (capped by `net.core.rmem_max` on Linux); that is logged
    /// at debug level, not treated as an error.
    pub recv_buffer_size: usize,
    /// Requested `SO_SNDBUF` size in bytes. Default 1 MiB. The kernel may
    /// grant less; that is logged at debug level, not treated as an error.
    pub send_buffer_size: usize,
    /// Set `SO_REUSEADDR` before binding. Default `false`: for UDP on Linux
    /// it lets every socket that also sets it bind the very same address,
    /// and the kernel may then hand out a port that is already in use even
    /// for port 0, so two nodes would silently share a port. Turn it on only
    /// to rebind a fixed port quickly after a restart, on a port you own.
    pub reuse_address: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            recv_buffer_size: 4 * 1024 * 1024,
            send_buffer_size: 1024 * 1024,
            reuse_address: false,
        }
    }
}

/// A [`Transport`] over a real, non-blocking UDP socket (IPv4 or IPv6).
///
/// `recv_from` never returns `ConnectionRefused` / `ConnectionReset`
/// errors (which some platforms report after sending to a closed port): a
/// peer going away is normal, so those errors are logged at trace level
/// and skipped.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
    local_addr: SocketAddr,
    max_datagram_size: usize,
    recv_buffer_size: usize,
    send_buffer_size: usize,
}

impl UdpTransport {
    /// Bind a UDP socket to `addr` (use port 0 for an ephemeral port).
    ///
    /// The socket is created with `socket2` in the domain of `addr`; for
    /// IPv6 it tries to clear `IPV6_V6ONLY` (ignoring failure), sets
    /// `SO_REUSEADDR` when configured, requests the configured buffer sizes,
    /// and is registered with tokio in non-blocking mode.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidConfig`] for an unusable
    /// `max_datagram_size`, otherwise [`TransportError::Bind`] if any step
    /// of creating or binding the socket fails.
    ///
    /// # Panics
    ///
    /// Must be called from within a tokio runtime (with the I/O driver
    /// enabled); panics otherwise.
    pub fn bind(addr: SocketAddr, config: UdpConfig) -> Result<Self, TransportError> {
        if config.max_datagram_size == 0 || config.max_datagram_size > MAX_UDP_PAYLOAD {
            return Err(TransportError::InvalidConfig {
                reason: "UdpConfig::max_datagram_size must be in 1..=65527",
            });
        }
        let bind_err = |source: io::Error| TransportError::Bind { addr, source };

        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        if addr.is_ipv6() {
            if let Err(e) = socket.set_only_v6(false) {
                tracing::debug!(%addr, error = %e, "could not clear IPV6_V6ONLY; continuing");
            }
        }
        if config.reuse_address {
            socket.set_reuse_address(true).map_err(bind_err)?;
        }
        if let Err(e) = socket.set_recv_buffer_size(config.recv_buffer_size) {
            tracing::debug!(%addr, error = %e, "could not set SO_RCVBUF; continuing");
        }
        if let Err(e) = socket.set_send_buffer_size(config.send_buffer_size) {
            tracing::debug!(%addr, error = %e, "could not set SO_SNDBUF; continuing");
        }
        let recv_buffer_size = socket.recv_buffer_size().map_err(bind_err)?;
        let send_buffer_size = socket.send_buffer_size().map_err(bind_err)?;
        tracing::debug!(
            %addr,
            recv_requested = config.recv_buffer_size,
            recv_granted = recv_buffer_size,
            send_requested = config.send_buffer_size,
            send_granted = send_buffer_size,
            "UDP socket buffer sizes",
        );
        socket.set_nonblocking(true).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;

        let socket = UdpSocket::from_std(socket.into()).map_err(bind_err)?;
        let local_addr = socket.local_addr().map_err(bind_err)?;
        tracing::debug!(%local_addr, "UDP transport bound");
        Ok(Self {
            socket,
            local_addr,
            max_datagram_size: config.max_datagram_size,
            recv_buffer_size,
            send_buffer_size,
        })
    }

    /// Receive buffer size (`SO_RCVBUF`) the kernel reported right after it
    /// was configured at bind time. On Linux this is twice the granted
    /// value, as the kernel reports it.
    pub fn recv_buffer_size(&self) -> usize {
        self.recv_buffer_size
    }

    /// Send buffer size (`SO_SNDBUF`) the kernel reported right after it
    /// was configured at bind time. On Linux this is twice the granted
    /// value, as the kernel reports it.
    pub fn send_buffer_size(&self) -> usize {
        self.send_buffer_size
    }
}

/// Errors caused by an ICMP "port unreachable" for an earlier datagram:
/// they describe some previous send (possibly to another peer), not the
/// current operation.
fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// How many times `send_to` retries after a stale "peer gone" error. Such
/// an error is consumed by the failed call, so one retry normally suffices.
const SEND_ATTEMPTS: usize = 3;

impl Transport for UdpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn max_datagram_size(&self) -> usize {
        self.max_datagram_size
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<(), TransportError> {
        check_size(buf.len(), self.max_datagram_size)?;
        let mut attempt = 1;
        loop {
            match self.socket.send_to(buf, target).await {
                Ok(_) => return Ok(()),
                Err(e) if is_peer_gone(&e) && attempt < SEND_ATTEMPTS => {
                    tracing::trace!(%target, error = %e, "stale ICMP error on send; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), TransportError> {
        loop {
            match self.socket.recv_from(buf).await {
                Ok(received) => return Ok(received),
                Err(e) if is_peer_gone(&e) => {
                    tracing::trace!(local = %self.local_addr, error = %e, "ignoring ICMP error on recv");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
