//! In-process datagram network for tests and simulations.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::{check_size, Transport, TransportError, DEFAULT_MAX_DATAGRAM_SIZE};

/// First port handed out for port-0 binds (start of the IANA ephemeral range).
const EPHEMERAL_START: u16 = 49_152;

/// Configuration for a [`MemoryNetwork`], shared by all its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Largest datagram accepted by `send_to`, in bytes. Default
    /// [`DEFAULT_MAX_DATAGRAM_SIZE`] (65 507). Must be non-zero.
    pub max_datagram_size: usize,
    /// Capacity, in datagrams, of each endpoint's receive queue. A datagram
    /// arriving at a full queue is dropped (like UDP) and counted in
    /// [`NetworkStats::dropped_queue_full`]. Default 1024. Must be non-zero.
    pub queue_capacity: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_datagram_size: DEFAULT_MAX_DATAGRAM_SIZE,
            queue_capacity: 1024,
        }
    }
}

/// Counters of a [`MemoryNetwork`].
///
/// Every datagram accepted by `send_to` is counted in `sent`. Duplication
/// adds one extra copy (counted in `duplicated`). Each copy is then either
/// delivered to a receive queue or dropped, so
/// `sent + duplicated == delivered + dropped` always holds, and `dropped`
/// is the sum of the `dropped_*` breakdown counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams accepted by `send_to` (rejected oversize datagrams are not
    /// counted anywhere).
    pub sent: u64,
    /// Datagram copies placed into a receiver's queue.
    pub delivered: u64,
    /// Datagram copies dropped for any reason (sum of the `dropped_*`
    /// fields).
    pub dropped: u64,
    /// Extra copies created by [`MemoryNetwork::set_duplicate`].
    pub duplicated: u64,
    /// Dropped by random loss ([`MemoryNetwork::set_loss`]).
    pub dropped_loss: u64,
    /// Dropped because sender and receiver are partitioned
    /// ([`MemoryNetwork::cut`] / [`MemoryNetwork::isolate`]).
    pub dropped_partition: u64,
    /// Dropped because nothing is bound at the target address.
    pub dropped_unbound: u64,
    /// Dropped because the receiver's queue was full.
    pub dropped_queue_full: u64,
}

type Datagram = (Bytes, SocketAddr);

struct Endpoint {
    id: u64,
    tx: mpsc::Sender<Datagram>,
}

struct State {
    rng: SmallRng,
    loss: f64,
    duplicate: f64,
    closed: bool,
    next_id: u64,
    endpoints: HashMap<SocketAddr, Endpoint>,
    /// Next port to try for port-0 binds, per IP.
    next_port: HashMap<IpAddr, u16>,
    /// Cut links, stored as `(min, max)`.
    cuts: HashSet<(SocketAddr, SocketAddr)>,
    isolated: HashSet<SocketAddr>,
    stats: NetworkStats,
}

impl State {
    fn partitioned(&self, from: SocketAddr, to: SocketAddr) -> bool {
        if from == to {
            return false;
        }
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.cuts.contains(&link(from, to))
    }

    fn drop_copy(&mut self, counter: fn(&mut NetworkStats) -> &mut u64) {
        self.stats.dropped += 1;
        *counter(&mut self.stats) += 1;
    }

    fn allocate_port(&mut self, ip: IpAddr) -> Option<u16> {
        let span = u32::from(u16::MAX - EPHEMERAL_START) + 1;
        let mut port = *self.next_port.get(&ip).unwrap_or(&EPHEMERAL_START);
        for _ in 0..span {
            let candidate = port;
            port = if port == u16::MAX {
                EPHEMERAL_START
            } else {
                port + 1
            };
            if !self.endpoints.contains_key(&SocketAddr::new(ip, candidate)) {
                self.next_port.insert(ip, port);
                return Some(candidate);
            }
        }
        None
    }
}

fn link(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

struct Inner {
    config: MemoryConfig,
    state: Mutex<State>,
}

/// An in-process datagram network: endpoints bound on it exchange datagrams
/// through bounded in-memory queues, with optional faults.
///
/// Cloning is cheap and yields a handle to the same network. Faults (loss,
/// duplication) are drawn from a `SmallRng` seeded by [`MemoryNetwork::new`],
/// so a run is reproducible as long as the sequence of `send_to` calls is
/// the same. Delivery happens synchronously inside `send_to`, in FIFO order
/// per receiver; there is no simulated latency.
///
/// Addresses are taken literally: an endpoint bound on `10.0.0.1:7000` is
/// reached only by sending to exactly `10.0.0.1:7000` (there is no wildcard
/// matching for unspecified addresses).
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<Inner>,
}

impl fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("MemoryNetwork")
            .field("config", &self.inner.config)
            .field("endpoints", &state.endpoints.len())
            .field("loss", &state.loss)
            .field("duplicate", &state.duplicate)
            .field("cuts", &state.cuts.len())
            .field("isolated", &state.isolated.len())
            .field("closed", &state.closed)
            .field("stats", &state.stats)
            .finish()
    }
}

fn check_probability(probability: f64, what: &str) {
    assert!(
        (0.0..=1.0).contains(&probability),
        "{what} probability must be within [0.0, 1.0], got {probability}"
    );
}

impl MemoryNetwork {
    /// Create a network with the default [`MemoryConfig`] whose faults are
    /// drawn from a random generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::build(seed, MemoryConfig::default())
    }

    /// Create a network with a custom configuration.
    ///
    /// # Errors
    ///
    /// [`TransportError::InvalidConfig`] if `max_datagram_size` or
    /// `queue_capacity` is zero.
    pub fn with_config(seed: u64, config: MemoryConfig) -> Result<Self, TransportError> {
        if config.max_datagram_size == 0 {
            return Err(TransportError::InvalidConfig {
                reason: "MemoryConfig::max_datagram_size must be non-zero",
            });
        }
        if config.queue_capacity == 0 {
            return Err(TransportError::InvalidConfig {
                reason: "MemoryConfig::queue_capacity must be non-zero",
            });
        }
        Ok(Self::build(seed, config))
    }

    fn build(seed: u64, config: MemoryConfig) -> Self {
        let state = State {
            rng: SmallRng::seed_from_u64(seed),
            loss: 0.0,
            duplicate: 0.0,
            closed: false,
            next_id: 0,
            endpoints: HashMap::new(),
            next_port: HashMap::new(),
            cuts: HashSet::new(),
            isolated: HashSet::new(),
            stats: NetworkStats::default(),
        };
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The network's configuration.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// Bind an endpoint at `addr`. Port 0 allocates a port on that IP that
    /// is not currently bound (counting up from 49152 and wrapping), so
    /// consecutive port-0 binds get distinct addresses.
    ///
    /// # Errors
    ///
    /// [`TransportError::Bind`] with an [`io::ErrorKind::AddrInUse`] source
    /// if `addr` is already bound (or `AddrNotAvailable` if every ephemeral
    /// port on the IP is taken); [`TransportError::Closed`] after
    /// [`MemoryNetwork::close`].
    pub fn bind(&self, addr: SocketAddr) -> Result<MemoryTransport, TransportError> {
        let mut state = self.inner.state.lock();
        if state.closed {
            return Err(TransportError::Closed);
        }
        let local_addr = if addr.port() == 0 {
            let port = state
                .allocate_port(addr.ip())
                .ok_or_else(|| TransportError::Bind {
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::AddrNotAvailable,
                        "no free ephemeral port left on this IP in the memory network",
                    ),
                })?;
            SocketAddr::new(addr.ip(), port)
        } else {
            if state.endpoints.contains_key(&addr) {
                return Err(TransportError::Bind {
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "address already bound in the memory network",
                    ),
                });
            }
            addr
        };
        let (tx, rx) = mpsc::channel(self.inner.config.queue_capacity);
        let id = state.next_id;
        state.next_id += 1;
        state.endpoints.insert(local_addr, Endpoint { id, tx });
        drop(state);
        tracing::trace!(%local_addr, "memory transport bound");
        Ok(MemoryTransport {
            network: self.clone(),
            id,
            local_addr,
            rx: tokio::sync::Mutex::new(rx),
        })
    }

    /// Drop each datagram independently with `probability` (0.0 disables).
    ///
    /// # Panics
    ///
    /// If `probability` is not within `[0.0, 1.0]` (including NaN).
    pub fn set_loss(&self, probability: f64) {
        check_probability(probability, "loss");
        self.inner.state.lock().loss = probability;
    }

    /// Deliver each (not lost) datagram twice with `probability`
    /// (0.0 disables).
    ///
    /// # Panics
    ///
    /// If `probability` is not within `[0.0, 1.0]` (including NaN).
    pub fn set_duplicate(&self, probability: f64) {
        check_probability(probability, "duplicate");
        self.inner.state.lock().duplicate = probability;
    }

    /// Partition `a` and `b`: datagrams in both directions are dropped
    /// until [`heal`](Self::heal) or [`heal_all`](Self::heal_all). The
    /// addresses need not be bound.
    pub fn cut(&self, a: SocketAddr, b: SocketAddr) {
        self.inner.state.lock().cuts.insert(link(a, b));
    }

    /// Undo [`cut`](Self::cut) between `a` and `b` (in both directions).
    /// Does not undo an [`isolate`](Self::isolate) of either address.
    pub fn heal(&self, a: SocketAddr, b: SocketAddr) {
        self.inner.state.lock().cuts.remove(&link(a, b));
    }

    /// Cut `a` from every other address, in both directions, until
    /// [`recover`](Self::recover) or [`heal_all`](Self::heal_all).
    /// Datagrams `a` sends to itself are still delivered.
    pub fn isolate(&self, a: SocketAddr) {
        self.inner.state.lock().isolated.insert(a);
    }

    /// Undo [`isolate`](Self::isolate) of `a`. Individual
    /// [`cut`](Self::cut)s involving `a` stay in place.
    pub fn recover(&self, a: SocketAddr) {
        self.inner.state.lock().isolated.remove(&a);
    }

    /// Remove every cut and isolation. Loss and duplication settings are
    /// left unchanged.
    pub fn heal_all(&self) {
        let mut state = self.inner.state.lock();
        state.cuts.clear();
        state.isolated.clear();
    }

    /// A snapshot of the network's counters.
    pub fn stats(&self) -> NetworkStats {
        self.inner.state.lock().stats
    }

    /// Whether an endpoint is currently bound at `addr`.
    pub fn is_bound(&self, addr: SocketAddr) -> bool {
        self.inner.state.lock().endpoints.contains_key(&addr)
    }

    /// Shut the network down: every endpoint is unbound, later `bind` and
    /// `send_to` calls fail with [`TransportError::Closed`], and `recv_from`
    /// returns the datagrams already queued and then
    /// [`TransportError::Closed`].
    pub fn close(&self) {
        let mut state = self.inner.state.lock();
        state.closed = true;
        state.endpoints.clear();
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    fn deliver(&self, from: SocketAddr, buf: &[u8], to: SocketAddr) -> Result<(), TransportError> {
        check_size(buf.len(), self.inner.config.max_datagram_size)?;
        let mut guard = self.inner.state.lock();
        let state = &mut *guard;
        if state.closed {
            return Err(TransportError::Closed);
        }
        state.stats.sent += 1;

        if state.partitioned(from, to) {
            tracing::trace!(%from, %to, "memory network: dropped by partition");
            state.drop_copy(|s| &mut s.dropped_partition);
            return Ok(());
        }
        if state.loss > 0.0 && state.rng.random_bool(state.loss) {
            tracing::trace!(%from, %to, "memory network: dropped by loss");
            state.drop_copy(|s| &mut s.dropped_loss);
            return Ok(());
        }
        let copies = if state.duplicate > 0.0 && state.rng.random_bool(state.duplicate) {
            state.stats.duplicated += 1;
            2
        } else {
            1
        };

        let datagram = Bytes::copy_from_slice(buf);
        for _ in 0..copies {
            let Some(endpoint) = state.endpoints.get(&to) else {
                tracing::trace!(%from, %to, "memory network: dropped, target unbound");
                state.drop_copy(|s| &mut s.dropped_unbound);
                continue;
            };
            match endpoint.tx.try_send((datagram.clone(), from)) {
                Ok(()) => state.stats.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::trace!(%from, %to, "memory network: dropped, queue full");
                    state.drop_copy(|s| &mut s.dropped_queue_full);
                }
                // The receiver half lives in the bound `MemoryTransport`,
                // which removes its entry before its receiver is dropped; be
                // defensive anyway.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    state.drop_copy(|s| &mut s.dropped_unbound);
                }
            }
        }
        Ok(())
    }

    fn unbind(&self, addr: SocketAddr, id: u64) {
        let mut state = self.inner.state.lock();
        if state.endpoints.get(&addr).is_some_and(|e| e.id == id) {
            state.endpoints.remove(&addr);
            tracing::trace!(%addr, "memory transport unbound");
        }
    }
}

/// An endpoint bound on a [`MemoryNetwork`]; implements [`Transport`].
///
/// Dropping it unbinds its address (datagrams still queued are discarded).
/// `recv_from` truncates a datagram to the caller's buffer, like UDP, and
/// returns the truncated length.
pub struct MemoryTransport {
    network: MemoryNetwork,
    id: u64,
    local_addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::Receiver<Datagram>>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// A handle to the network this endpoint is bound on.
    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }

    /// Receive a datagram if one is queued, without waiting.
    ///
    /// Returns `Ok(None)` when the queue is empty (or another task is
    /// currently receiving). Truncates like [`Transport::recv_from`].
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] once the network is closed and the queue
    /// is drained.
    pub fn try_recv_from(
        &self,
        buf: &mut [u8],
    ) -> Result<Option<(usize, SocketAddr)>, TransportError> {
        let Ok(mut rx) = self.rx.try_lock() else {
            return Ok(None);
        };
        match rx.try_recv() {
            Ok(datagram) => Ok(Some(copy_out(datagram, buf))),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(TransportError::Closed),
        }
    }
}

fn copy_out((data, from): Datagram, buf: &mut [u8]) -> (usize, SocketAddr) {
    let len = data.len().min(buf.len());
    buf[..len].copy_from_slice(&data[..len]);
    (len, from)
}

impl Transport for MemoryTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn max_datagram_size(&self) -> usize {
        self.network.inner.config.max_datagram_size
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<(), TransportError> {
        self.network.deliver(self.local_addr, buf, target)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), TransportError> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(datagram) => Ok(copy_out(datagram, buf)),
            None => Err(TransportError::Closed),
        }
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.network.unbind(self.local_addr, self.id);
    }
}
