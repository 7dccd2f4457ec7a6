//! The bulk path's inputs and outputs (see [`crate::stream`]): the driver
//! opens, feeds, drains and closes byte streams; the protocol decides what
//! they carry and applies what arrives through the datagram path's checks.

use std::net::SocketAddr;

use gossipkv_proto::{Body, Reply};

use super::Protocol;
use crate::stream::{
    self, Received, Serve, Stream, StreamId, StreamOpen, StreamRefused, StreamSend,
};
use crate::synced;
use crate::time::{Instant, WallTime};

impl Protocol {
    /// A stream this node asks a peer for, to be opened by the driver (see
    /// [`StreamOpen`]). Polled like [`poll_transmit`](Self::poll_transmit),
    /// after every input; at most one is asked for at a time, and only when
    /// [`ProtocolConfig::streams`](crate::ProtocolConfig::streams) is on.
    ///
    /// A driver that cannot open it (no route, refused connection) calls
    /// [`handle_stream_closed`](Self::handle_stream_closed) at once: the
    /// datagram path carries on alone, and the peer is asked again only
    /// after a back-off.
    pub fn poll_stream_open(&mut self) -> Option<StreamOpen> {
        self.streams.poll_open()
    }

    /// A connection from `from` asks to be served a stream. Returns the
    /// stream's id, or why it is refused (the driver then closes the
    /// connection): streams off or node left, already serving
    /// [`ProtocolConfig::max_serving_streams`](crate::ProtocolConfig::max_serving_streams),
    /// or no live member has `from`'s IP address. The opening that follows
    /// is checked again in [`handle_stream_data`](Self::handle_stream_data).
    pub fn accept_stream(
        &mut self,
        now: Instant,
        from: SocketAddr,
    ) -> Result<StreamId, StreamRefused> {
        self.cx.now = now;
        let cx = &mut self.cx;
        let refused = if !cx.cfg.streams || cx.left {
            Some(StreamRefused::Disabled)
        } else if self.streams.serving() >= cx.cfg.max_serving_streams {
            Some(StreamRefused::Busy(self.streams.serving()))
        } else if !cx.peers.any_live_from(from.ip()) {
            Some(StreamRefused::NotAMember(from))
        } else {
            None
        };
        if let Some(why) = refused {
            cx.stats.streams_refused += 1;
            tracing::debug!(%from, %why, "stream refused");
            return Err(why);
        }
        Ok(self.streams.accept(from, cx.sizes.limits.max_message))
    }

    /// Bytes received on stream `id`, in order. On a stream this node asked
    /// for, every whole frame is applied as it arrives. On a served stream,
    /// the peer's opening is read (nothing may follow it). An error means
    /// the stream was closed by the protocol: the driver drops the
    /// connection (and need not report it closed).
    pub fn handle_stream_data(
        &mut self,
        now: Instant,
        wall: WallTime,
        id: StreamId,
        bytes: &[u8],
    ) -> Result<(), StreamRefused> {
        self.cx.now = now;
        self.cx.wall = wall;
        let result = self.stream_data(id, bytes);
        if let Err(why) = &result {
            if !matches!(why, StreamRefused::Unknown) {
                let peer = match self.streams.open.get(&id) {
                    Some(Stream::Client(c)) => Some(c.to),
                    Some(Stream::Server(s)) => Some(s.from),
                    None => None,
                };
                tracing::debug!(?peer, %why, "closing a stream");
                if matches!(self.streams.open.get(&id), Some(Stream::Server(_))) {
                    self.cx.stats.streams_refused += 1;
                }
                if self.streams.close(&mut self.cx, id) {
                    self.resync.stream_closed();
                }
            }
        }
        result
    }

    fn stream_data(&mut self, id: StreamId, bytes: &[u8]) -> Result<(), StreamRefused> {
        let cx = &mut self.cx;
        match self.streams.open.get_mut(&id) {
            None => Err(StreamRefused::Unknown),
            Some(Stream::Server(s)) => {
                if !matches!(s.state, Serve::Hello) {
                    return match bytes.is_empty() {
                        true => Ok(()),
                        false => Err(StreamRefused::Unexpected("bytes after the opening")),
                    };
                }
                s.reader.push(bytes)?;
                if let Some(state) = stream::take_hello(cx, s)? {
                    if s.reader.buffered() > 0 {
                        return Err(StreamRefused::Unexpected("bytes after the opening"));
                    }
                    s.state = state;
                }
                Ok(())
            }
            Some(Stream::Client(c)) => {
                cx.stats.stream_bytes_received += bytes.len() as u64;
                c.reader.push(bytes)?;
                let (to, peer) = (c.to, c.peer.clone());
                let frames = stream::take_frames(cx, c)?;
                for frame in frames {
                    let Received::Body(body) = frame else {
                        continue;
                    };
                    self.cx.stats.stream_frames_received += 1;
                    let whole = match body {
                        Body::Ack(ack) => self.apply_delta(to, ack.delta),
                        Body::SynAck(ack) => {
                            let whole = match ack.reply {
                                Reply::Page(page) => self.on_page(to, &peer, &page, true),
                                Reply::Delta(delta) => self.apply_delta(to, delta),
                            };
                            if whole && (!ack.digest.entries.is_empty() || ack.digest.complete) {
                                synced::note_digest(&mut self.cx, to, &ack.digest);
                            }
                            whole
                        }
                        _ => true,
                    };
                    if !whole {
                        // Later frames may rely on what this one lost (the
                        // server sends each record once per stream): stop.
                        return Err(StreamRefused::Screened);
                    }
                }
                Ok(())
            }
        }
    }

    /// What served stream `id` has to send next: bytes to write (ask again
    /// once they are written: frames are built one at a time, as the
    /// connection takes them), [`StreamSend::Wait`] until the peer's
    /// opening is in, or [`StreamSend::Finished`] (also for a stream the
    /// protocol does not know).
    pub fn poll_stream_send(&mut self, now: Instant, id: StreamId) -> StreamSend {
        self.cx.now = now;
        match self.streams.open.get_mut(&id) {
            Some(Stream::Server(s)) => stream::next_frame(&mut self.cx, s),
            _ => StreamSend::Finished,
        }
    }

    /// Stream `id`'s connection ended (closed by either side, cut, timed
    /// out, or never opened). A stream this node asked for that did not
    /// reach its end marker counts as cut; its peer is asked again only
    /// after a back-off. Unknown ids are ignored.
    pub fn handle_stream_closed(&mut self, now: Instant, id: StreamId) {
        self.cx.now = now;
        if self.streams.close(&mut self.cx, id) {
            self.resync.stream_closed();
        }
    }

    /// Streams open now (asked for or served).
    pub fn open_streams(&self) -> usize {
        self.streams.open.len()
    }

    /// Considers asking `from` (member `sender`) for a stream, from a digest
    /// it sent (see [`crate::stream`]).
    pub(super) fn consider_stream(
        &mut self,
        from: SocketAddr,
        sender: &gossipkv_storage::NodeId,
        theirs: &gossipkv_storage::Digest,
    ) {
        if !self.cx.cfg.streams {
            return;
        }
        let resume = self.resync.cursor_for(&self.cx.peers, from);
        self.streams
            .consider(&mut self.cx, &self.push, from, sender, theirs, resume);
    }
}
