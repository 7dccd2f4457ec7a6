//! The bulk path: a node far behind a peer catches up over a byte stream
//! (TCP in the `gossipkv` driver) instead of one datagram per round.
//!
//! **When.** A peer's digest (in a Syn, a SynAck or a page) shows it holds
//! at least [`ProtocolConfig::stream_threshold`](crate::ProtocolConfig::stream_threshold)
//! writes we lack that are not on their way by push: we ask it for a stream
//! ([`Protocol::poll_stream_open`](crate::Protocol::poll_stream_open)), one
//! at a time, only from a live member at the address it is known by, and
//! not from a peer whose last stream ended less than a few intervals ago.
//!
//! **What travels.** The opening frame is our complete digest in a `Syn`
//! (with the page to resume from when a re-synchronisation by that peer was
//! under way). The serving node answers with frames built one at a time, as
//! the driver asks for them: re-synchronisation pages from its ordered key
//! walk when we are below its collected floor (then deltas against what the
//! pages vouched for), or deltas against a cursor digest that starts as
//! ours and moves up as each frame goes out; then a last `SynAck` with its
//! complete digest, and the end marker. Every frame is an encoded envelope,
//! so the receiving side applies it through the same screened paths as a
//! datagram (invariant W per chunk, the paged drop rule, the own-origin and
//! clock guards).
//!
//! **Bounded.** The server holds one frame at a time and its cursor; the
//! client holds at most one incomplete frame. A node serves at most
//! [`ProtocolConfig::max_serving_streams`](crate::ProtocolConfig::max_serving_streams)
//! streams, and only to live members, from their own IP address. A stream
//! that is cut loses nothing: what was applied stays, and the next request
//! carries the digest that says where we stand. A stream that is refused
//! or fails leaves the datagram path to converge alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_proto::stream::{end_frame, open, Frame, FrameReader, StreamError};
use gossipkv_proto::{encode, Ack, Body, DecodeError, Reply, Syn, SynAck};
use gossipkv_storage::{Delta, DeltaOptions, Digest, DigestEntry, NodeId, Origin};
use tracing::debug;

use crate::context::Context;
use crate::push::Pusher;
use crate::time::Instant;

/// Most peers remembered for back-off (past it the earliest is forgotten).
pub(crate) const MAX_BACKOFF_PEERS: usize = 16;

/// Intervals before asking a peer again after its stream finished.
const AFTER_DONE_INTERVALS: u32 = 1;

/// Intervals before asking a peer again after its stream was cut, refused
/// or failed.
const AFTER_CUT_INTERVALS: u32 = 10;

/// Identifies one stream of a protocol instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(u64);

impl StreamId {
    /// The number behind the id (unique per protocol instance).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A stream this node asks for: the driver connects to `to` (the peer's
/// gossip address; over TCP, the same port number), sends `bytes`, then
/// hands every byte it receives to
/// [`Protocol::handle_stream_data`](crate::Protocol::handle_stream_data)
/// and reports the end of the connection to
/// [`Protocol::handle_stream_closed`](crate::Protocol::handle_stream_closed).
#[derive(Debug, Clone)]
pub struct StreamOpen {
    /// The stream.
    pub id: StreamId,
    /// The peer's gossip address.
    pub to: SocketAddr,
    /// What to send once connected: the stream's opening.
    pub bytes: Bytes,
}

/// What a serving stream has to send next
/// ([`Protocol::poll_stream_send`](crate::Protocol::poll_stream_send)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSend {
    /// Bytes to write; ask again once they are written.
    Data(Bytes),
    /// Nothing until more bytes arrive from the peer (its opening).
    Wait,
    /// Everything was sent: close the connection.
    Finished,
}

/// Why a stream was refused or closed by the protocol. The driver closes
/// the connection; the protocol has already forgotten the stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    /// Streams are off in this node's configuration, or it has left.
    #[error("streams are off on this node")]
    Disabled,
    /// The node already serves as many streams as it may.
    #[error("already serving {0} streams")]
    Busy(usize),
    /// The connection does not come from a live member at its own address.
    #[error("{0} is not the address of a live member")]
    NotAMember(SocketAddr),
    /// The stream's bytes are not a valid stream.
    #[error("bad framing: {0}")]
    Framing(#[from] StreamError),
    /// A frame did not decode.
    #[error("undecodable frame: {0}")]
    Decode(#[from] DecodeError),
    /// A frame is not what this side of the stream expects (wrong cluster,
    /// wrong sender, wrong kind of message).
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    /// The protocol knows no stream of that id (closed or never opened).
    #[error("no such stream")]
    Unknown,
    /// A frame carried something this node did not take (records of
    /// origins beyond their sender's allowance, or stamped beyond the
    /// clock drift, or a page refused): later frames could rely on it, so
    /// the stream stops there. Anti-entropy, and a later stream, go on.
    #[error("a frame carried records this node did not take; stream stopped")]
    Screened,
}

/// The side of a stream.
#[derive(Debug)]
pub(crate) enum Stream {
    /// We asked for it and receive.
    Client(Client),
    /// We serve it.
    Server(Server),
}

/// A stream we receive.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) to: SocketAddr,
    pub(crate) peer: NodeId,
    pub(crate) reader: FrameReader,
}

/// A stream we serve.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) from: SocketAddr,
    pub(crate) reader: FrameReader,
    pub(crate) state: Serve,
}

/// Where a served stream stands.
#[derive(Debug)]
pub(crate) enum Serve {
    /// Waiting for the peer's opening.
    Hello,
    /// Re-synchronisation pages from `next` on. `first`: the first page's
    /// watermarks, when the pass started here at the first key (then
    /// deltas follow, against them).
    Pages {
        next: String,
        from_start: bool,
        first: Option<Digest>,
        hello: Digest,
    },
    /// Deltas against `cursor`, our idea of the peer's watermarks.
    Deltas { cursor: Digest },
    /// The closing digest is next.
    Closing,
    /// The end marker is next.
    End,
    /// Nothing more.
    Done,
}

/// The streams of one protocol instance.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    next_id: u64,
    pub(crate) open: BTreeMap<StreamId, Stream>,
    /// A stream asked for, not yet handed to the driver.
    pending: Option<StreamOpen>,
    /// Per peer, when we may ask it again.
    backoff: BTreeMap<SocketAddr, Instant>,
}

impl Streams {
    fn id(&mut self) -> StreamId {
        self.next_id += 1;
        StreamId(self.next_id)
    }

    /// Streams served now.
    pub(crate) fn serving(&self) -> usize {
        self.open
            .values()
            .filter(|s| matches!(s, Stream::Server(_)))
            .count()
    }

    fn receiving(&self) -> bool {
        self.open.values().any(|s| matches!(s, Stream::Client(_)))
    }

    /// The stream asked for, for the driver to open.
    pub(crate) fn poll_open(&mut self) -> Option<StreamOpen> {
        self.pending.take()
    }

    /// A new served stream from `from`.
    pub(crate) fn accept(&mut self, from: SocketAddr, max_frame: usize) -> StreamId {
        let id = self.id();
        let reader = FrameReader::new(max_frame, true);
        self.open.insert(
            id,
            Stream::Server(Server {
                from,
                reader,
                state: Serve::Hello,
            }),
        );
        id
    }

    /// Forgets a stream; when we received it, when to ask its peer again.
    /// Returns whether it was a stream we received.
    pub(crate) fn close(&mut self, cx: &mut Context, id: StreamId) -> bool {
        let received = matches!(self.open.get(&id), Some(Stream::Client(_)));
        match self.open.remove(&id) {
            Some(Stream::Client(c)) => {
                let (intervals, done) = match c.reader.ended() {
                    true => (AFTER_DONE_INTERVALS, true),
                    false => (AFTER_CUT_INTERVALS, false),
                };
                if done {
                    cx.stats.streams_completed += 1;
                } else {
                    cx.stats.streams_cut += 1;
                }
                debug!(peer = %c.peer, done, "stream closed");
                self.back_off(c.to, cx.now + intervals * cx.cfg.interval());
                if self.pending.as_ref().is_some_and(|p| p.id == id) {
                    self.pending = None;
                }
            }
            Some(Stream::Server(s)) if !matches!(s.state, Serve::Done) => {
                cx.stats.streams_served_cut += 1;
            }
            Some(Stream::Server(_)) | None => {}
        }
        received
    }

    fn back_off(&mut self, to: SocketAddr, until: Instant) {
        self.backoff.insert(to, until);
        while self.backoff.len() > MAX_BACKOFF_PEERS {
            let Some((&earliest, _)) = self.backoff.iter().min_by_key(|(_, t)| **t) else {
                break;
            };
            self.backoff.remove(&earliest);
        }
    }

    /// Asks `from` (member `peer`) for a stream if its digest shows we lack
    /// enough to make one worth it.
    pub(crate) fn consider(
        &mut self,
        cx: &mut Context,
        push: &Pusher,
        from: SocketAddr,
        peer: &NodeId,
        theirs: &Digest,
        resume: Option<String>,
    ) {
        if !cx.cfg.streams || cx.left || self.receiving() || self.pending.is_some() {
            return;
        }
        let now = cx.now;
        self.backoff.retain(|_, t| *t > now);
        if self.backoff.contains_key(&from) || !cx.peers.is_live_at(peer, from) {
            return;
        }
        let lacking = lacking(cx, push, theirs);
        if lacking < cx.cfg.stream_threshold.max(1) {
            return;
        }
        let hello = cx.envelope(Body::Syn(Syn {
            digest: cx.store.digest(),
            resync_from: resume,
            digest_hash: None,
        }));
        let id = self.id();
        let bytes = open(&encode(&hello));
        cx.stats.streams_requested += 1;
        cx.stats.stream_bytes_sent += bytes.len() as u64;
        debug!(%from, %peer, lacking, "asking for a stream");
        self.open.insert(
            id,
            Stream::Client(Client {
                to: from,
                peer: peer.clone(),
                reader: FrameReader::new(cx.sizes.limits.max_message, false),
            }),
        );
        self.pending = Some(StreamOpen {
            id,
            to: from,
            bytes,
        });
    }

    /// Number of peers in back-off (for bound checks).
    #[cfg(test)]
    pub(crate) fn backoff_len(&self) -> usize {
        self.backoff.len()
    }
}

/// How many writes `theirs` vouches for that we lack and that are not
/// reaching us by push (an upper bound: sequence numbers of overwritten
/// keys count too).
fn lacking(cx: &Context, push: &Pusher, theirs: &Digest) -> u64 {
    let own = cx.store.local_origin();
    theirs
        .entries
        .iter()
        .filter(|e| &e.origin != own)
        .map(|e| {
            let top = e
                .watermark
                .min(push.hold(&e.origin, cx.now).saturating_sub(1));
            top.saturating_sub(cx.store.watermark(&e.origin))
        })
        .fold(0u64, u64::saturating_add)
}

/// Whether a peer with digest `peer` lacks enough of our writes that it
/// will ask for a stream (the estimate [`Streams::consider`] makes on its
/// side, without the push notes only it has). A datagram delta to such a
/// peer leaves out the newest-first loose records: the stream brings
/// everything in order at once, and records that arrived ahead of their
/// origin's order would only cost the peer an index merge for every record
/// the stream then brings (a million-key join took 3.2-3.6 s with them,
/// 2.2-2.7 s without).
pub(crate) fn far_behind(cx: &Context, peer: &Digest) -> bool {
    if !cx.cfg.streams {
        return false;
    }
    let theirs: BTreeMap<&Origin, u64> = peer
        .entries
        .iter()
        .map(|e| (&e.origin, e.watermark))
        .collect();
    let lacking = cx
        .store
        .digest()
        .entries
        .iter()
        .filter(|e| peer.covers(&e.origin))
        .map(|e| {
            let w = theirs.get(&e.origin).copied().unwrap_or(0);
            e.watermark.saturating_sub(w)
        })
        .fold(0u64, u64::saturating_add);
    lacking >= cx.cfg.stream_threshold.max(1)
}

/// The next frame of a served stream (not `Hello`).
pub(crate) fn next_frame(cx: &mut Context, s: &mut Server) -> StreamSend {
    let budget = cx.cfg.stream_frame_size.max(cx.sizes.body);
    let body = match std::mem::replace(&mut s.state, Serve::Done) {
        Serve::Hello => {
            s.state = Serve::Hello;
            return StreamSend::Wait;
        }
        Serve::Done => return StreamSend::Finished,
        Serve::End => {
            s.state = Serve::Done;
            cx.stats.streams_served += 1;
            return StreamSend::Data(end_frame());
        }
        Serve::Closing => {
            s.state = Serve::End;
            Body::SynAck(SynAck {
                digest: cx.store.digest(),
                reply: Reply::Delta(Delta::default()),
            })
        }
        Serve::Pages {
            next,
            from_start,
            first,
            hello,
        } => {
            let page = cx.store.page(&next, budget, cx.store.digest());
            let first = first.or_else(|| Some(page.watermarks.clone()));
            s.state = match (&page.end, from_start, first) {
                (Some(end), _, first) => Serve::Pages {
                    next: end.clone(),
                    from_start,
                    first,
                    hello,
                },
                (None, true, Some(first)) => Serve::Deltas {
                    cursor: highest(&hello, &first),
                },
                (None, _, _) => Serve::Closing,
            };
            cx.stats.stream_records_sent += page.records.len() as u64;
            Body::SynAck(SynAck {
                digest: Digest::default(),
                reply: Reply::Page(page),
            })
        }
        Serve::Deltas { mut cursor } => {
            let delta = delta_from(cx, &cursor, budget);
            if delta.is_empty() {
                s.state = Serve::Closing;
                return next_frame(cx, s);
            }
            let moved = advance(&mut cursor, &delta);
            // A frame that moves no watermark (only loose records) ends
            // the deltas: sending it again would never end.
            s.state = match moved {
                true => Serve::Deltas { cursor },
                false => Serve::Closing,
            };
            cx.stats.stream_records_sent += delta.record_count() as u64;
            Body::Ack(Ack { delta })
        }
    };
    let env = cx.envelope(body);
    let bytes = gossipkv_proto::stream::frame_compressed(&encode(&env));
    cx.stats.stream_frames_sent += 1;
    cx.stats.stream_bytes_sent += bytes.len() as u64;
    StreamSend::Data(bytes)
}

/// The delta a frame carries: within `budget`, or within a whole message
/// when the next record alone is larger than the budget; never more records
/// and ghosts than a receiver's decoder takes in one message.
///
/// Writes still being pushed are not held back, as they are from a
/// datagram delta: the peer asked because it lacks them and they were not
/// reaching it by push (it checked its own notes of pushes received), and
/// the pushes went to the members of the moment, which a joiner was not.
fn delta_from(cx: &mut Context, cursor: &Digest, budget: usize) -> Delta {
    let hold = |_: &Origin| u64::MAX;
    let build = |budget: usize| {
        let (mut delta, apart) = cx.store.delta_with(
            cursor,
            &DeltaOptions {
                budget,
                rotate: 0,
                inline_max: cx.cfg.max_value_size,
                hold: &hold,
                newest_first: false,
                // What a receiver's decoder takes in one message.
                max_items: cx.sizes.limits.max_records.min(cx.sizes.limits.max_entries),
            },
        );
        delta.loose.extend(apart);
        delta
    };
    let delta = build(budget);
    if progress(&delta) {
        return delta;
    }
    let whole = cx
        .sizes
        .limits
        .max_message
        .saturating_sub(gossipkv_proto::ENVELOPE_OVERHEAD + cx.cfg.cluster_id.len() + 512);
    build(whole)
}

/// Whether a delta carries anything that moves the peer forward.
fn progress(delta: &Delta) -> bool {
    !delta.loose.is_empty() || delta.chunks.iter().any(|c| c.to > c.from)
}

/// Moves `cursor` to where the peer stands once it applied `delta`;
/// whether any watermark moved.
fn advance(cursor: &mut Digest, delta: &Delta) -> bool {
    let mut moved = false;
    for c in &delta.chunks {
        match cursor.entries.iter_mut().find(|e| e.origin == c.origin) {
            Some(e) if c.to > e.watermark => {
                e.watermark = c.to;
                moved = true;
            }
            Some(_) => {}
            None if c.to > 0 => {
                cursor.entries.push(DigestEntry {
                    origin: c.origin.clone(),
                    watermark: c.to,
                });
                moved = true;
            }
            None => {}
        }
    }
    moved
}

/// Per origin the higher watermark of `a` and `b` (complete when `a` is).
fn highest(a: &Digest, b: &Digest) -> Digest {
    let mut out = a.clone();
    for e in &b.entries {
        match out.entries.iter_mut().find(|x| x.origin == e.origin) {
            Some(x) => x.watermark = x.watermark.max(e.watermark),
            None => out.entries.push(e.clone()),
        }
    }
    out
}

/// What a frame a client received holds, once checked.
pub(crate) enum Received {
    /// Apply these.
    Body(Body),
    /// The stream ended as planned.
    End,
}

/// The frames now complete in a client's stream, decoded and checked:
/// our cluster, the peer we asked, a kind of message a server sends.
pub(crate) fn take_frames(cx: &Context, c: &mut Client) -> Result<Vec<Received>, StreamRefused> {
    let mut out = Vec::new();
    while let Some(frame) = c.reader.next_frame()? {
        let payload = match frame {
            Frame::End => {
                out.push(Received::End);
                continue;
            }
            Frame::Data(p) => p,
        };
        let env = gossipkv_proto::decode_reassembled(&payload, &cx.sizes.limits)?;
        if env.cluster_id != cx.cfg.cluster_id {
            return Err(StreamRefused::Unexpected("frame of another cluster"));
        }
        if env.sender.node_id != c.peer {
            return Err(StreamRefused::Unexpected("frame from another node"));
        }
        match env.body {
            b @ (Body::Ack(_) | Body::SynAck(_)) => out.push(Received::Body(b)),
            _ => return Err(StreamRefused::Unexpected("not a delta, page or digest")),
        }
    }
    Ok(out)
}

/// A served stream's opening, once complete: checked (our cluster, a live
/// member from its own IP address, a Syn) and turned into the first state.
pub(crate) fn take_hello(cx: &Context, s: &mut Server) -> Result<Option<Serve>, StreamRefused> {
    let Some(frame) = s.reader.next_frame()? else {
        return Ok(None);
    };
    let Frame::Data(payload) = frame else {
        return Err(StreamRefused::Unexpected(
            "a stream ended before its opening",
        ));
    };
    let env = gossipkv_proto::decode_reassembled(&payload, &cx.sizes.limits)?;
    if env.cluster_id != cx.cfg.cluster_id {
        return Err(StreamRefused::Unexpected("opening of another cluster"));
    }
    let sender = &env.sender.node_id;
    if *sender == cx.cfg.node_id || !cx.peers.is_live_from(sender, s.from.ip()) {
        return Err(StreamRefused::NotAMember(s.from));
    }
    let Body::Syn(syn) = env.body else {
        return Err(StreamRefused::Unexpected("the opening is not a Syn"));
    };
    let behind = cx.store.resync_origins(&syn.digest);
    Ok(Some(match syn.resync_from {
        Some(next) => Serve::Pages {
            from_start: next.is_empty(),
            next,
            first: None,
            hello: syn.digest,
        },
        None if !behind.is_empty() => Serve::Pages {
            next: String::new(),
            from_start: true,
            first: None,
            hello: syn.digest,
        },
        None => Serve::Deltas { cursor: syn.digest },
    }))
}
