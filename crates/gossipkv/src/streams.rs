//! The bulk path's bytes: TCP connections on the gossip port number. The
//! protocol decides what a stream carries and applies what arrives; these
//! tasks only move bytes between a socket and
//! [`Protocol`]'s stream methods, with timeouts so that a silent peer never
//! holds a stream (or its slot) for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gossipkv_core::{NetworkError, Protocol, StreamId, StreamOpen, StreamSend};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::driver::{wall_now, Clock, Reporter};
use crate::sealing::Sealing;
use gossipkv_proto::seal::{Direction, RecordReader, SEALED_STREAM_MAGIC};

/// Longest wait for a connection to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a stream may go without moving a byte before it is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a stream may last, whatever moves: a peer reading a byte now and
/// then cannot hold a serving slot for good (116 MB at 1 MB/s take two
/// minutes).
const MAX_STREAM_TIME: Duration = Duration::from_secs(600);

/// Longest a connection may take to send its whole opening: a peer
/// trickling it a byte at a time cannot hold a serving slot.
const OPENING_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read at a time.
const READ_BUF: usize = 64 << 10;

/// Longest plaintext of a sealed stream record: one write of the serving
/// side (a frame, at most `Limits::max_message` plus its header) with room
/// to spare.
const MAX_RECORD: usize = 4 << 20;

/// What every stream task shares.
#[derive(Clone)]
pub(crate) struct StreamCx {
    pub(crate) protocol: Arc<Mutex<Protocol>>,
    pub(crate) clock: Clock,
    pub(crate) sealing: Arc<Sealing>,
}

/// How the bytes a stream receives are read: in plaintext, or as sealed
/// records; a served stream decides from its first four bytes.
enum Inbound {
    Undecided(Vec<u8>),
    Plain,
    Sealed(RecordReader),
}

impl Inbound {
    /// The plaintext chunks of `bytes`, to feed to the protocol in order;
    /// an error when the stream must be dropped.
    fn open(&mut self, sealing: &Sealing, bytes: &[u8]) -> std::io::Result<Vec<Vec<u8>>> {
        match self {
            Inbound::Plain => Ok(vec![bytes.to_vec()]),
            Inbound::Sealed(reader) => sealing
                .open_records(reader, bytes)
                .map_err(std::io::Error::other),
            Inbound::Undecided(head) => {
                head.extend_from_slice(bytes);
                if head.len() < SEALED_STREAM_MAGIC.len() {
                    return Ok(Vec::new());
                }
                let head = std::mem::take(head);
                if head.starts_with(&SEALED_STREAM_MAGIC) {
                    *self = Inbound::Sealed(RecordReader::new(Direction::Request, MAX_RECORD));
                    self.open(sealing, &head[SEALED_STREAM_MAGIC.len()..])
                } else if sealing.accepts_plain_streams() {
                    *self = Inbound::Plain;
                    Ok(vec![head])
                } else {
                    sealing.refuse_plain_stream();
                    Err(std::io::Error::other(
                        "a stream without a seal, and encryption is required",
                    ))
                }
            }
        }
    }

    /// Feeds the plaintext of `bytes` to the protocol (a plaintext
    /// stream's bytes as they are, without a copy).
    fn feed(&mut self, cx: &StreamCx, id: StreamId, bytes: &[u8]) -> std::io::Result<()> {
        if let Inbound::Plain = self {
            return cx.feed(id, bytes);
        }
        for chunk in self.open(&cx.sealing, bytes)? {
            cx.feed(id, &chunk)?;
        }
        Ok(())
    }

    fn is_sealed(&self) -> bool {
        matches!(self, Inbound::Sealed(_))
    }
}

impl StreamCx {
    /// Hands bytes read on stream `id` to the protocol; an error when it
    /// closed the stream (the connection is then dropped).
    fn feed(&self, id: StreamId, bytes: &[u8]) -> std::io::Result<()> {
        let now = self.clock.now();
        self.protocol
            .lock()
            .handle_stream_data(now, wall_now(), id, bytes)
            .map_err(std::io::Error::other)
    }
}

/// Binds the TCP listener for streams on `addr` (the UDP socket's address:
/// same IP, same port number).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    })
}

/// Reports that the stream listener could not be bound on `addr`: the
/// node runs without streams.
pub(crate) fn report_no_listener(addr: SocketAddr, e: &std::io::Error, reporter: &Reporter) {
    tracing::warn!(%addr, error = %e, "cannot listen for streams on TCP; catching up by datagrams only");
    reporter.report(NetworkError::Io {
        op: "listen",
        source: Arc::new(std::io::Error::new(e.kind(), format!("tcp {addr}: {e}"))),
    });
}

/// Asks for a stream: connects, sends the opening, feeds what comes back to
/// the protocol until the peer closes, then reports the stream closed
/// (whatever happened: a cut stream is resumed by the next request).
pub(crate) async fn receive(cx: StreamCx, open: StreamOpen) {
    let _closed = Closed(cx.clone(), open.id);
    let to = open.to;
    let result = within(MAX_STREAM_TIME, receive_inner(&cx, open)).await;
    if let Err(e) = result.and_then(|r| r) {
        debug!(%to, error = %e, "stream ended early");
    }
}

/// Tells the protocol that stream `.1` ended when dropped: at the end of
/// its task, and also when the task panics or is aborted (the driver ends),
/// so that no stream stays open in the protocol without a connection.
struct Closed(StreamCx, StreamId);

impl Drop for Closed {
    fn drop(&mut self) {
        let now = self.0.clock.now();
        self.0.protocol.lock().handle_stream_closed(now, self.1);
    }
}

async fn receive_inner(cx: &StreamCx, open: StreamOpen) -> std::io::Result<()> {
    let mut sock = within(CONNECT_TIMEOUT, TcpStream::connect(open.to)).await??;
    sock.set_nodelay(true)?;
    let sealed = cx.sealing.seals_streams();
    let opening = match sealed
        .then(|| cx.sealing.seal_record(Direction::Request, 0, &open.bytes))
        .flatten()
    {
        Some(record) => [&SEALED_STREAM_MAGIC[..], &record].concat(),
        None => open.bytes.to_vec(),
    };
    within(IDLE_TIMEOUT, sock.write_all(&opening)).await??;
    let mut inbound = match sealed {
        true => Inbound::Sealed(RecordReader::new(Direction::Response, MAX_RECORD)),
        false => Inbound::Plain,
    };
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = within(IDLE_TIMEOUT, sock.read(&mut buf)).await??;
        if n == 0 {
            return Ok(());
        }
        inbound.feed(cx, open.id, &buf[..n])?;
    }
}

/// Serves an accepted stream: reads the peer's opening, then writes the
/// frames the protocol builds, one at a time, as the socket takes them.
pub(crate) async fn serve(cx: StreamCx, id: StreamId, sock: TcpStream, from: SocketAddr) {
    let _closed = Closed(cx.clone(), id);
    let result = within(MAX_STREAM_TIME, serve_inner(&cx, id, sock)).await;
    if let Err(e) = result.and_then(|r| r) {
        debug!(%from, error = %e, "served stream ended early");
    }
}

async fn serve_inner(cx: &StreamCx, id: StreamId, mut sock: TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let opening_by = tokio::time::Instant::now() + OPENING_TIMEOUT;
    let mut inbound = Inbound::Undecided(Vec::new());
    // Records sent so far (a sealed stream answers with sealed records).
    let mut sent = 0u64;
    loop {
        let next = {
            let now = cx.clock.now();
            cx.protocol.lock().poll_stream_send(now, id)
        };
        match next {
            StreamSend::Data(bytes) => {
                let record = inbound
                    .is_sealed()
                    .then(|| cx.sealing.seal_record(Direction::Response, sent, &bytes))
                    .flatten();
                sent += 1;
                let out = record.as_deref().unwrap_or(&bytes);
                within(IDLE_TIMEOUT, sock.write_all(out)).await??
            }
            StreamSend::Finished => {
                // Flush, and let the peer read to the end before closing.
                let _ = within(IDLE_TIMEOUT, sock.shutdown()).await;
                return Ok(());
            }
            StreamSend::Wait => {
                // Only the opening is waited for.
                let n = tokio::time::timeout_at(opening_by, sock.read(&mut buf))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "opening too slow")
                    })??;
                if n == 0 {
                    return Ok(());
                }
                inbound.feed(cx, id, &buf[..n])?;
            }
        }
    }
}

/// Accepts one connection: asks the protocol whether to serve it.
pub(crate) fn accept(cx: &StreamCx, from: SocketAddr) -> Option<StreamId> {
    let now = cx.clock.now();
    match cx.protocol.lock().accept_stream(now, from) {
        Ok(id) => Some(id),
        Err(why) => {
            debug!(%from, %why, "stream refused");
            None
        }
    }
}

/// `fut`, or a timed-out error after `limit`.
async fn within<F: std::future::Future>(limit: Duration, fut: F) -> std::io::Result<F::Output> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stream timed out"))
}
