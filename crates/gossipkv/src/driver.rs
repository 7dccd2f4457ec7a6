//! The driver: one tokio task that feeds the protocol with datagrams,
//! timeouts, fresh writes and new addresses, and sends what it produces.
//! Helper tasks run the error handler and re-resolve seed host names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gossipkv_core::{Event, MemberEvent, NetworkError, Protocol, StreamOpen, WallTime};
use gossipkv_storage::Record;
use gossipkv_transport::Transport;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::builder::ErrorHandler;
use crate::health::HealthTracker;
use crate::sealing::Sealing;
use crate::streams::{self, StreamCx};

/// Datagrams sent per turn of the gossip task before it looks at new input.
/// When only fragments of large values are left, the task sends one such
/// batch per timer tick (about 64 datagrams per millisecond, 90 MB/s with the
/// default packet size), so that a receiver never has more than one batch of
/// fragments queued ahead of a small write.
const SEND_BATCH: usize = 64;

/// Times the gossip task yields, while coalescing a burst of writes, for more
/// writes to fill its datagrams.
const PUSH_YIELDS: usize = 8;

/// Largest burst of writes coalesced into one call of `push_local`.
const PUSH_BATCH: usize = 4096;

/// Error reports queued for the handler; beyond this they are dropped and
/// counted.
const REPORT_QUEUE: usize = 1024;

/// Wall-clock time, from the system clock: with [`new_generation`], the
/// only place the facade reads it (for write timestamps and the protocol's
/// wall-time inputs).
pub(crate) fn wall_now() -> WallTime {
    WallTime::from_unix_ms(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    )
}

/// A new generation per start, so that writes of this incarnation never
/// reuse sequence numbers peers saw from an earlier one: the start time in
/// microseconds, and strictly greater than the last one this process handed
/// out, so that two nodes started in the same instant (with the same node
/// id by mistake) are still told apart and reported as duplicates.
pub(crate) fn new_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut next = 0;
    // fetch_update with a closure that always returns Some cannot fail.
    let _ = LAST.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
        next = now_us.max(last.saturating_add(1)).max(1);
        Some(next)
    });
    next
}

/// The protocol's monotonic clock: milliseconds since the node started, on
/// tokio's clock (so paused-time tests drive it too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Now, on the protocol's monotonic clock.
    pub(crate) fn now(&self) -> gossipkv_core::Instant {
        let ms = self.start.elapsed().as_millis();
        gossipkv_core::Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a protocol instant.
    fn to_tokio(self, at: gossipkv_core::Instant) -> Instant {
        self.start + Duration::from_millis(at.as_millis())
    }
}

/// Where reports for the error handler go.
#[derive(Clone)]
pub(crate) struct Reporter {
    tx: Option<mpsc::Sender<NetworkError>>,
    dropped: Arc<AtomicU64>,
    health: Arc<HealthTracker>,
}

impl Reporter {
    /// A reporter feeding `handler` (run off the async workers), if any,
    /// and the node's health summary.
    pub(crate) fn spawn(handler: Option<ErrorHandler>, health: Arc<HealthTracker>) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(handler) = handler else {
            return Reporter {
                tx: None,
                dropped,
                health,
            };
        };
        let (tx, mut rx) = mpsc::channel::<NetworkError>(REPORT_QUEUE);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let h = handler.clone();
                // The handler is user code: run it where it cannot block the
                // runtime's workers.
                let _ = tokio::task::spawn_blocking(move || h(&e)).await;
            }
        });
        Reporter {
            tx: Some(tx),
            dropped,
            health,
        }
    }

    /// Reports dropped because the handler was too slow.
    pub(crate) fn dropped(&self) -> &Arc<AtomicU64> {
        &self.dropped
    }

    pub(crate) fn report(&self, e: NetworkError) {
        self.health.note(&e);
        if let Some(tx) = &self.tx {
            if tx.try_send(e).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// New addresses to contact, from seed re-resolution or discovery.
#[derive(Debug)]
pub(crate) enum Addrs {
    Seeds(Vec<SocketAddr>),
    Discovered(Vec<SocketAddr>),
}

/// What the driver is given.
pub(crate) struct Driver<T> {
    pub(crate) transport: T,
    pub(crate) protocol: Arc<Mutex<Protocol>>,
    pub(crate) clock: Clock,
    pub(crate) stop: oneshot::Receiver<()>,
    pub(crate) addrs: mpsc::Receiver<Addrs>,
    pub(crate) pushes: mpsc::Receiver<Record>,
    pub(crate) reporter: Reporter,
    pub(crate) member_events: broadcast::Sender<MemberEvent>,
    /// Set when the protocol says this node has caught up.
    pub(crate) synced: watch::Sender<bool>,
    /// Where streams are served (`None`: streams off).
    pub(crate) listener: Option<TcpListener>,
    /// Seals and opens streams.
    pub(crate) sealing: Arc<Sealing>,
}

/// What one turn of the driver took from the protocol.
struct Turn {
    transmits: Vec<gossipkv_core::Transmit>,
    events: Vec<Event>,
    deadline: Option<gossipkv_core::Instant>,
    more: bool,
    urgent: bool,
    /// Streams the protocol asks for.
    opens: Vec<StreamOpen>,
}

impl<T: Transport> Driver<T> {
    /// Runs until told to stop (or until every handle is dropped), then
    /// announces the departure and sends it before it ends.
    pub(crate) async fn run(mut self) {
        let mut buf = vec![0u8; self.transport.max_datagram_size() + 1];
        let mut stopping = false;
        // Stream tasks: aborted when the driver ends.
        let mut streams = JoinSet::new();
        let stream_cx = StreamCx {
            protocol: self.protocol.clone(),
            clock: self.clock,
            sealing: self.sealing.clone(),
        };
        let listener = self.listener.take();
        loop {
            // A bounded batch at a time: between batches, new writes and
            // datagrams are handled, and the protocol puts their replies
            // ahead of the fragments of large values still waiting.
            let turn = self.take();
            for open in turn.opens {
                streams.spawn(streams::receive(stream_cx.clone(), open));
            }
            self.send(turn.transmits).await;
            for ev in turn.events {
                self.event(ev);
            }
            if stopping {
                // Send everything queued (the Leave announcements) first.
                if turn.more {
                    continue;
                }
                break;
            }
            // Only fragments of large values left: the next batch after the
            // timer's next tick (about SEND_BATCH datagrams per millisecond).
            let wake = if turn.more {
                Instant::now() + Duration::from_millis(1)
            } else {
                match turn.deadline {
                    Some(d) => self.clock.to_tokio(d),
                    None => Instant::now() + Duration::from_secs(60),
                }
            };
            tokio::select! {
                _ = &mut self.stop => {
                    self.protocol.lock().leave();
                    stopping = true;
                }
                r = self.transport.recv_from(&mut buf) => self.received(r, &buf).await,
                Some(first) = self.pushes.recv() => self.push(first).await,
                Some(a) = self.addrs.recv() => match a {
                    Addrs::Seeds(s) => self.protocol.lock().set_seeds(s),
                    Addrs::Discovered(d) => self.protocol.lock().set_discovered(d),
                },
                r = accept(listener.as_ref()) => match r {
                    Ok((sock, from)) => {
                        if let Some(id) = streams::accept(&stream_cx, from) {
                            streams.spawn(streams::serve(stream_cx.clone(), id, sock, from));
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "accepting a stream failed");
                        // Do not spin on a persistent error (no descriptors left).
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = streams.join_next(), if !streams.is_empty() => {}
                _ = tokio::time::sleep_until(wake), if !turn.urgent => self.tick(),
                // Replies and small writes to send: go round at once (a zero
                // sleep would wait for the timer's next millisecond tick).
                _ = std::future::ready(()), if turn.urgent => self.tick(),
            }
        }
        debug!("gossip task stopped");
    }

    /// Takes a bounded batch of datagrams, the events and the next deadline.
    fn take(&self) -> Turn {
        let mut p = self.protocol.lock();
        let transmits: Vec<_> = std::iter::from_fn(|| p.poll_transmit())
            .take(SEND_BATCH)
            .collect();
        let events: Vec<_> = std::iter::from_fn(|| p.poll_event()).collect();
        let opens: Vec<_> = std::iter::from_fn(|| p.poll_stream_open()).collect();
        Turn {
            transmits,
            events,
            deadline: p.poll_timeout(),
            more: p.has_transmits(),
            urgent: p.has_urgent_transmits(),
            opens,
        }
    }

    async fn send(&self, transmits: Vec<gossipkv_core::Transmit>) {
        for t in transmits {
            if let Err(e) = self.transport.send_to(&t.payload, t.to).await {
                debug!(to = %t.to, error = %e, "send failed");
                self.reporter.report(NetworkError::Io {
                    op: "send",
                    source: Arc::new(std::io::Error::other(format!("to {}: {e}", t.to))),
                });
            }
        }
    }

    fn event(&self, ev: Event) {
        match ev {
            Event::Error(e) => self.reporter.report(e),
            Event::Member(m) => {
                let _ = self.member_events.send(m);
            }
            Event::Synced => {
                info!("caught up with the cluster");
                self.synced.send_replace(true);
            }
            other => debug!(?other, "unhandled protocol event"),
        }
    }

    async fn received(
        &self,
        r: Result<(usize, SocketAddr), gossipkv_transport::TransportError>,
        buf: &[u8],
    ) {
        match r {
            Ok((n, from)) => {
                let now = self.clock.now();
                self.protocol
                    .lock()
                    .handle_datagram(now, wall_now(), from, &buf[..n]);
            }
            Err(e) => {
                warn!(error = %e, "receive failed");
                self.reporter.report(NetworkError::Io {
                    op: "recv",
                    source: Arc::new(std::io::Error::other(e.to_string())),
                });
                // Do not spin on a persistent error.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Coalesces a burst of writes into packet-sized pushes. When more than
    /// one write came, the writer is busy: yield a few times to let the
    /// burst fill whole datagrams (microseconds).
    async fn push(&mut self, first: Record) {
        let mut batch = vec![first];
        let mut yields = 0;
        while batch.len() < PUSH_BATCH {
            match self.pushes.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) if batch.len() > 1 && yields < PUSH_YIELDS => {
                    yields += 1;
                    tokio::task::yield_now().await;
                }
                Err(_) => break,
            }
        }
        let now = self.clock.now();
        self.protocol.lock().push_local(now, batch);
    }

    /// Runs the protocol's timers if one is due.
    fn tick(&self) {
        let now = self.clock.now();
        let mut p = self.protocol.lock();
        if p.poll_timeout().is_some_and(|d| now >= d) {
            p.handle_timeout(now, wall_now());
        }
    }
}

/// The next connection on `listener`; never, without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves seed host names again every `every`, so a name that later
/// points elsewhere is followed.
pub(crate) async fn refresh_seeds(
    seeds: Vec<String>,
    every: Duration,
    tx: mpsc::Sender<Addrs>,
    reporter: Reporter,
) {
    let mut last = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        let addrs = resolve_seeds(&seeds, &reporter).await;
        if addrs != last {
            debug!(?addrs, "seed addresses changed");
            last = addrs.clone();
            if tx.send(Addrs::Seeds(addrs)).await.is_err() {
                return;
            }
        } else if tx.is_closed() {
            return;
        }
    }
}

/// Resolves seed `host:port`s; those that fail are reported and skipped.
pub(crate) async fn resolve_seeds(seeds: &[String], reporter: &Reporter) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for seed in seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => {
                warn!(seed = %seed, error = %e, "cannot resolve seed");
                reporter.report(NetworkError::SeedResolution {
                    seed: seed.clone(),
                    source: Arc::new(e),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
