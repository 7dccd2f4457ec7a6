//! Conversions between the generated protobuf types and the domain types,
//! with every decoded length and count checked against [`Limits`].

use std::net::SocketAddr;

use bytes::Bytes;
use gossipkv_storage::{
    Delta, Digest, DigestEntry, Ghost, Hlc, Key, Lifetime, NodeId, Origin, OriginChunk, Page,
    Record, Version, HLC_MAX_PHYSICAL_MS,
};
use prost::Message;

use crate::error::DecodeError;
use crate::message::{
    Ack, Body, Envelope, Fragment, Limits, Liveness, MemberSync, Probe, Push, Reply, Sender, Syn,
    SynAck, PROTOCOL_VERSION,
};
use crate::pb;

/// Upper bound, in bytes, of what an envelope costs beyond the lengths of its
/// cluster id, sender node id and sender address text, and beyond the content
/// of its body (see [`envelope_overhead`]).
///
/// Derivation (every length prefix taken at 5 bytes, enough for anything
/// below 32 GiB; a `u64` varint is at most 10 bytes plus a 1-byte tag):
/// protocol version 6, cluster id 6, sender 6 + node id 6 + generation 11 +
/// address 6, body field 6, and inside the body at most 8 (a `Syn`'s
/// `resync_from` tag and prefix plus its flag; a delta's tag and prefix is 6),
/// plus the sender's incarnation 11, left flag 2 and member-list fingerprint 9,
/// plus the address token and echo, 9 each. That is 95; the constant leaves
/// some slack. Entries of [`Envelope::members`] are extra, each bounded by
/// [`member_size_hint`].
pub const ENVELOPE_OVERHEAD: usize = 106;

/// Upper bound of an envelope's encoded size minus the content of its body,
/// given the lengths (bytes) of its cluster id, sender node id and sender
/// address text ([`Sender::addr_len`]).
///
/// The encoded size of an envelope is at most this plus:
/// * `Syn`: `digest.size_hint()` + the length of `resync_from` (if any);
/// * `SynAck`: `digest.size_hint()` + `delta.size_hint()` or `page.size_hint()`;
/// * `Ack`: `delta.size_hint()`.
///
/// The storage size hints ([`Record::size_hint`], [`Delta::size_hint`],
/// [`Digest::size_hint`], [`Page::size_hint`], [`gossipkv_storage::CHUNK_OVERHEAD`],
/// [`gossipkv_storage::GHOST_OVERHEAD`]) bound the encodings of this crate, so
/// a protocol can cut deltas and pages to a datagram's byte budget.
pub fn envelope_overhead(cluster_id_len: usize, node_id_len: usize, addr_len: usize) -> usize {
    ENVELOPE_OVERHEAD + cluster_id_len + node_id_len + addr_len
}

/// Upper bound of what a [`Sender`]-shaped entry of [`Envelope::members`]
/// costs beyond its node id and address text: entry tag and prefix 6, node id
/// and address prefixes 12, generation and incarnation 22, flags 4.
pub const MEMBER_OVERHEAD: usize = 44;

/// Upper bound of the encoded size of one entry of [`Envelope::members`].
pub fn member_size_hint(node_id_len: usize, addr_len: usize) -> usize {
    MEMBER_OVERHEAD + node_id_len + addr_len
}

/// Upper bound of what a [`Fragment`] body costs beyond its data (tags,
/// length prefixes and varints of its four numbers).
pub const FRAGMENT_OVERHEAD: usize = 40;

/// Cuts an encoded envelope into pieces of at most `piece_len` bytes, as
/// [`Fragment`] bodies to be sent in separate envelopes. `message_id` must
/// differ between the sender's fragmented envelopes for a while (a counter
/// or a random number). Returns no pieces when `encoded` is empty or
/// `piece_len` is zero.
pub fn fragment(encoded: &Bytes, message_id: u64, piece_len: usize) -> Vec<Fragment> {
    (0..)
        .map_while(|i| fragment_piece(encoded, message_id, piece_len, i))
        .collect()
}

/// Piece `index` of [`fragment`]'s output, cut on demand (`None` past the
/// last piece, or when `encoded` is empty or `piece_len` zero).
pub fn fragment_piece(
    encoded: &Bytes,
    message_id: u64,
    piece_len: usize,
    index: usize,
) -> Option<Fragment> {
    if piece_len == 0 {
        return None;
    }
    let count = encoded.len().div_ceil(piece_len);
    if index >= count {
        return None;
    }
    let start = index * piece_len;
    let end = (start + piece_len).min(encoded.len());
    Some(Fragment {
        message_id,
        index: index as u32,
        count: count as u32,
        total_len: encoded.len() as u32,
        data: encoded.slice(start..end),
    })
}

/// Decodes an envelope reassembled from [`Fragment`]s: like [`decode`], but
/// its length is checked against `limits.max_message`, and an envelope that
/// is itself a fragment is rejected ([`DecodeError::Inconsistent`]).
pub fn decode_reassembled(buf: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    if buf.len() > limits.max_message {
        return Err(DecodeError::TooLarge {
            len: buf.len(),
            max: limits.max_message,
        });
    }
    let msg = pb::Envelope::decode(buf)?;
    let env = Decoder {
        limits,
        records: 0,
        ghosts: 0,
    }
    .envelope(msg)?;
    if matches!(env.body, Body::Fragment(_)) {
        return Err(DecodeError::Inconsistent(
            "a reassembled envelope is a fragment",
        ));
    }
    Ok(env)
}

/// Encodes an envelope into a datagram payload.
///
/// Encoding does not validate: an envelope that breaks [`Limits`] (or, say,
/// carries an empty node id) encodes fine and is rejected by [`decode`].
pub fn encode(env: &Envelope) -> Bytes {
    Bytes::from(envelope_to_pb(env).encode_to_vec())
}

/// The exact length of [`encode`]'s output for `env`.
pub fn encoded_len(env: &Envelope) -> usize {
    envelope_to_pb(env).encoded_len()
}

/// Decodes a datagram payload, checking it against `limits`.
///
/// The datagram's length is checked first ([`DecodeError::TooLarge`]); the
/// protobuf decoding that follows allocates at most proportionally to that
/// length (every element of a repeated field, every string and every byte
/// string consumes at least one input byte), so a hostile datagram cannot
/// make the decoder allocate more than a small multiple of
/// `limits.max_datagram`. Every length and count is then checked against
/// `limits`, and every field against the protocol's rules, while converting
/// to domain types. Never panics.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    if buf.len() > limits.max_datagram {
        return Err(DecodeError::TooLarge {
            len: buf.len(),
            max: limits.max_datagram,
        });
    }
    let msg = pb::Envelope::decode(buf)?;
    Decoder {
        limits,
        records: 0,
        ghosts: 0,
    }
    .envelope(msg)
}

// ----- domain -> protobuf ----------------------------------------------------

pub(crate) fn envelope_to_pb(env: &Envelope) -> pb::Envelope {
    let body = match &env.body {
        Body::Syn(syn) => pb::envelope::Body::Syn(pb::Syn {
            digest: match syn.digest_hash {
                Some(_) => None,
                None => Some(digest_to_pb(&syn.digest)),
            },
            resync_from: syn.resync_from.clone().unwrap_or_default(),
            resyncing: syn.resync_from.is_some(),
            hash_only: syn.digest_hash.is_some(),
            digest_hash: syn.digest_hash.unwrap_or_default(),
        }),
        Body::SynAck(ack) => pb::envelope::Body::SynAck(pb::SynAck {
            digest: Some(digest_to_pb(&ack.digest)),
            reply: Some(match &ack.reply {
                Reply::Delta(d) => pb::syn_ack::Reply::Delta(delta_to_pb(d)),
                Reply::Page(p) => pb::syn_ack::Reply::Page(page_to_pb(p)),
            }),
        }),
        Body::Ack(ack) => pb::envelope::Body::Ack(pb::Ack {
            delta: Some(delta_to_pb(&ack.delta)),
        }),
        Body::Leave => pb::envelope::Body::Leave(pb::Leave {}),
        Body::Push(p) => pb::envelope::Body::Push(pb::Push {
            records: match p.records.first() {
                Some(first) if deltas_fit(&p.records) => {
                    p.records.iter().map(|r| push_record(r, first)).collect()
                }
                Some(first) => p
                    .records
                    .iter()
                    .map(|r| record_in(r, Some((&first.version.node, first.version.generation))))
                    .collect(),
                None => Vec::new(),
            },
            base_hlc: match p.records.first() {
                Some(first) if deltas_fit(&p.records) => first.version.hlc.as_u64(),
                _ => 0,
            },
            hops: p.hops,
            // Left out when the records' origin is the sender.
            node_id: p
                .records
                .first()
                .filter(|f| !is_sender(env, f))
                .map(|f| f.version.node.as_str().to_owned())
                .unwrap_or_default(),
            generation: p
                .records
                .first()
                .filter(|f| !is_sender(env, f))
                .map_or(0, |f| f.version.generation),
        }),
        Body::MemberSync(m) => pb::envelope::Body::MemberSync(pb::MemberSync {
            buckets: m.buckets.clone(),
            ttl: m.ttl,
        }),
        Body::Probe(p) => pb::envelope::Body::Probe(pb::Probe {
            target: Some(node_ref_to_pb(&p.target)),
            request: p.request,
        }),
        Body::Fragment(f) => pb::envelope::Body::Fragment(pb::Fragment {
            message_id: f.message_id,
            index: f.index,
            count: f.count,
            total_len: f.total_len,
            data: f.data.clone(),
        }),
    };
    pb::Envelope {
        protocol_version: env.protocol_version,
        cluster_id: env.cluster_id.clone(),
        sender: Some(node_ref_to_pb(&env.sender)),
        members: env.members.iter().map(node_ref_to_pb).collect(),
        addr_token: env.addr_token,
        addr_echo: env.addr_echo,
        padding: Bytes::from(vec![0; env.padding]),
        body: Some(body),
    }
}

pub(crate) fn node_ref_to_pb(s: &Sender) -> pb::NodeRef {
    pb::NodeRef {
        node_id: s.node_id.as_str().to_owned(),
        generation: s.generation,
        addr: s.addr.map(|a| a.to_string()).unwrap_or_default(),
        incarnation: s.incarnation,
        left: s.left,
        liveness: match s.liveness {
            Liveness::Alive => pb::Liveness::Alive,
            Liveness::Suspect => pb::Liveness::Suspect,
            Liveness::Dead => pb::Liveness::Dead,
        } as i32,
        members_hash: s.members_hash,
    }
}

pub(crate) fn digest_to_pb(d: &Digest) -> pb::Digest {
    pb::Digest {
        entries: d
            .entries
            .iter()
            .map(|e| pb::Watermark {
                node_id: e.origin.node.as_str().to_owned(),
                generation: e.origin.generation,
                seq: e.watermark,
            })
            .collect(),
        complete: d.complete,
        open_start: d.open_start,
        open_end: d.open_end,
    }
}

/// The exact number of bytes `r` adds to a [`Push`] whose records' origin
/// is `origin` (the push's first record's origin): the record, its tag and
/// its length prefix.
pub fn push_record_len(r: &Record, first: &Record) -> usize {
    let m = push_record(r, first);
    prost::encoding::message::encoded_len(1, &m)
}

/// Whether `r` was written by the envelope's sender (this incarnation).
fn is_sender(env: &Envelope, r: &Record) -> bool {
    env.sender.node_id == r.version.node && env.sender.generation == r.version.generation
}

/// Whether a push's timestamps can count from its first record's: not when
/// a record has the (never issued) timestamp 0, which a zero hlc field with
/// a base would misread.
fn deltas_fit(records: &[Record]) -> bool {
    records.iter().all(|r| r.version.hlc.as_u64() != 0)
}

/// A record of a push whose first record is `first`: its origin left out
/// when it is the first record's, its timestamp as a delta from the first
/// record's when not earlier.
fn push_record(r: &Record, first: &Record) -> pb::Record {
    let mut m = record_in(r, Some((&first.version.node, first.version.generation)));
    let base = first.version.hlc.as_u64();
    if base != 0 && m.hlc >= base {
        m.hlc_delta = m.hlc - base;
        m.hlc = 0;
    }
    m
}

/// A record whose origin is `ctx` (the enclosing push's or chunk's) leaves
/// its node id empty and its generation 0.
pub(crate) fn record_in(r: &Record, ctx: Option<(&NodeId, u64)>) -> pb::Record {
    let mut m = record_to_pb(r);
    if ctx.is_some_and(|(n, g)| *n == r.version.node && g == r.version.generation) {
        m.node_id = String::new();
        m.generation = 0;
    }
    m
}

pub(crate) fn record_to_pb(r: &Record) -> pb::Record {
    pb::Record {
        key: r.key.to_string(),
        value: r.value.clone().unwrap_or_default(),
        deleted: r.value.is_none(),
        hlc: r.version.hlc.as_u64(),
        node_id: r.version.node.as_str().to_owned(),
        generation: r.version.generation,
        seq: r.version.seq,
        hlc_delta: 0,
        expires_ms: r.lifetime.expires_ms,
        ephemeral: r.lifetime.ephemeral,
    }
}

pub(crate) fn chunk_to_pb(c: &OriginChunk) -> pb::OriginChunk {
    pb::OriginChunk {
        node_id: c.origin.node.as_str().to_owned(),
        generation: c.origin.generation,
        from: c.from,
        to: c.to,
        records: c
            .records
            .iter()
            .map(|r| record_in(r, Some((&c.origin.node, c.origin.generation))))
            .collect(),
        ghosts: c
            .ghosts
            .iter()
            .map(|g| pb::Ghost {
                seq: g.seq,
                key: g.key.to_string(),
                hlc: g.hlc.as_u64(),
            })
            .collect(),
    }
}

pub(crate) fn delta_to_pb(d: &Delta) -> pb::Delta {
    pb::Delta {
        chunks: d.chunks.iter().map(chunk_to_pb).collect(),
        loose: d.loose.iter().map(record_to_pb).collect(),
    }
}

pub(crate) fn page_to_pb(p: &Page) -> pb::Page {
    pb::Page {
        start: p.start.clone(),
        end: p.end.clone().unwrap_or_default(),
        has_end: p.end.is_some(),
        records: p.records.iter().map(record_to_pb).collect(),
        watermarks: Some(digest_to_pb(&p.watermarks)),
    }
}

// ----- protobuf -> domain ----------------------------------------------------

/// Longest address text quoted in [`DecodeError::InvalidAddr`].
const MAX_QUOTED_ADDR: usize = 64;

/// Converts a decoded envelope, keeping the running totals that [`Limits`]
/// bounds per envelope.
struct Decoder<'a> {
    limits: &'a Limits,
    records: usize,
    ghosts: usize,
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::LimitExceeded { what, len, max })
    } else {
        Ok(())
    }
}

impl Decoder<'_> {
    fn envelope(&mut self, m: pb::Envelope) -> Result<Envelope, DecodeError> {
        if m.protocol_version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                got: m.protocol_version,
                supported: PROTOCOL_VERSION,
            });
        }
        check(
            "cluster id length",
            m.cluster_id.len(),
            self.limits.max_cluster_id_len,
        )?;
        let sender = self.sender(
            m.sender
                .ok_or(DecodeError::MissingField("Envelope.sender"))?,
        )?;
        let body = match m.body.ok_or(DecodeError::MissingField("Envelope.body"))? {
            pb::envelope::Body::Syn(s) => Body::Syn(self.syn(s)?),
            pb::envelope::Body::SynAck(s) => Body::SynAck(self.syn_ack(s)?),
            pb::envelope::Body::Ack(a) => Body::Ack(Ack {
                delta: self.delta(a.delta.ok_or(DecodeError::MissingField("Ack.delta"))?)?,
            }),
            pb::envelope::Body::Leave(_) => Body::Leave,
            pb::envelope::Body::Push(p) => Body::Push(Push {
                records: {
                    let ctx = if p.node_id.is_empty() {
                        Some(Origin {
                            node: sender.node_id.clone(),
                            generation: sender.generation,
                        })
                    } else {
                        Some(Origin {
                            node: self.node_id(p.node_id)?,
                            generation: p.generation,
                        })
                    };
                    if p.base_hlc == 0 && p.records.iter().any(|r| r.hlc_delta != 0) {
                        return Err(DecodeError::Inconsistent("timestamp delta without a base"));
                    }
                    let mut records = p.records;
                    for r in &mut records {
                        if r.hlc == 0 {
                            r.hlc = p
                                .base_hlc
                                .checked_add(r.hlc_delta)
                                .ok_or(DecodeError::Inconsistent("timestamp delta overflows"))?;
                            r.hlc_delta = 0;
                        } else if r.hlc_delta != 0 {
                            return Err(DecodeError::Inconsistent(
                                "record carries a timestamp and a delta",
                            ));
                        }
                    }
                    self.records(records, ctx.as_ref())?
                },
                hops: p.hops,
            }),
            pb::envelope::Body::Fragment(f) => Body::Fragment(self.fragment(f)?),
            pb::envelope::Body::MemberSync(m) => {
                check(
                    "member sync buckets",
                    m.buckets.len(),
                    self.limits.max_entries,
                )?;
                Body::MemberSync(MemberSync {
                    buckets: m.buckets,
                    ttl: m.ttl,
                })
            }
            pb::envelope::Body::Probe(p) => Body::Probe(Probe {
                target: self.sender(p.target.ok_or(DecodeError::MissingField("Probe.target"))?)?,
                request: p.request,
            }),
        };
        check("members", m.members.len(), self.limits.max_entries)?;
        let members = m
            .members
            .into_iter()
            .map(|n| self.sender(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Envelope {
            protocol_version: m.protocol_version,
            cluster_id: m.cluster_id,
            sender,
            members,
            addr_token: m.addr_token,
            addr_echo: m.addr_echo,
            padding: m.padding.len(),
            body,
        })
    }

    fn sender(&self, n: pb::NodeRef) -> Result<Sender, DecodeError> {
        let node_id = self.node_id(n.node_id)?;
        let addr = if n.addr.is_empty() {
            None
        } else {
            match n.addr.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => return Err(DecodeError::InvalidAddr(quote(&n.addr))),
            }
        };
        Ok(Sender {
            node_id,
            generation: n.generation,
            addr,
            incarnation: n.incarnation,
            left: n.left,
            liveness: match pb::Liveness::try_from(n.liveness) {
                Ok(pb::Liveness::Alive) => Liveness::Alive,
                Ok(pb::Liveness::Suspect) => Liveness::Suspect,
                Ok(pb::Liveness::Dead) => Liveness::Dead,
                Err(_) => return Err(DecodeError::Inconsistent("unknown member liveness")),
            },
            members_hash: n.members_hash,
        })
    }

    fn syn(&mut self, s: pb::Syn) -> Result<Syn, DecodeError> {
        if s.hash_only {
            if s.resyncing || s.digest.as_ref().is_some_and(|d| !d.entries.is_empty()) {
                return Err(DecodeError::Inconsistent(
                    "hash-only Syn carries a digest or a re-synchronisation request",
                ));
            }
            return Ok(Syn {
                digest: Digest::default(),
                resync_from: None,
                digest_hash: Some(s.digest_hash),
            });
        }
        let digest = self.digest(s.digest.ok_or(DecodeError::MissingField("Syn.digest"))?)?;
        let resync_from = if s.resyncing {
            self.key(&s.resync_from)?;
            Some(s.resync_from)
        } else if s.resync_from.is_empty() {
            None
        } else {
            return Err(DecodeError::Inconsistent(
                "Syn.resync_from set without Syn.resyncing",
            ));
        };
        Ok(Syn {
            digest,
            resync_from,
            digest_hash: None,
        })
    }

    fn syn_ack(&mut self, s: pb::SynAck) -> Result<SynAck, DecodeError> {
        let digest = self.digest(s.digest.ok_or(DecodeError::MissingField("SynAck.digest"))?)?;
        let reply = match s.reply.ok_or(DecodeError::MissingField("SynAck.reply"))? {
            pb::syn_ack::Reply::Delta(d) => Reply::Delta(self.delta(d)?),
            pb::syn_ack::Reply::Page(p) => Reply::Page(self.page(p)?),
        };
        Ok(SynAck { digest, reply })
    }

    fn node_id(&self, s: String) -> Result<NodeId, DecodeError> {
        if s.is_empty() {
            return Err(DecodeError::EmptyNodeId);
        }
        check("node id length", s.len(), self.limits.max_node_id_len)?;
        Ok(NodeId::from(s))
    }

    fn key(&self, key: &str) -> Result<(), DecodeError> {
        check("key length", key.len(), self.limits.max_key_len)
    }

    fn add_records(&mut self, n: usize) -> Result<(), DecodeError> {
        self.records = self.records.saturating_add(n);
        check("records", self.records, self.limits.max_records)
    }

    fn digest(&self, d: pb::Digest) -> Result<Digest, DecodeError> {
        check("digest entries", d.entries.len(), self.limits.max_entries)?;
        let entries = d
            .entries
            .into_iter()
            .map(|w| {
                Ok(DigestEntry {
                    origin: Origin {
                        node: self.node_id(w.node_id)?,
                        generation: w.generation,
                    },
                    watermark: w.seq,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Digest {
            entries,
            complete: d.complete,
            open_start: d.open_start,
            open_end: d.open_end,
        })
    }

    fn record(&self, r: pb::Record, ctx: Option<&Origin>) -> Result<Record, DecodeError> {
        self.key(&r.key)?;
        if r.hlc_delta != 0 {
            // Pushes resolve their deltas before their records get here.
            return Err(DecodeError::Inconsistent("timestamp delta outside a push"));
        }
        let (node, generation) = match ctx {
            Some(o) if r.node_id.is_empty() => {
                if r.generation != 0 {
                    return Err(DecodeError::Inconsistent(
                        "record without a node id carries a generation",
                    ));
                }
                (o.node.clone(), o.generation)
            }
            _ => (self.node_id(r.node_id)?, r.generation),
        };
        check("value length", r.value.len(), self.limits.max_value_len)?;
        let value = if r.deleted {
            if !r.value.is_empty() {
                return Err(DecodeError::Inconsistent("tombstone carries a value"));
            }
            None
        } else {
            Some(r.value)
        };
        Ok(Record {
            key: Key::from(r.key),
            value,
            version: Version {
                hlc: Hlc::from_u64(r.hlc),
                node,
                generation,
                seq: r.seq,
            },
            // Expiries past the clock's range are kept at its end.
            lifetime: Lifetime {
                expires_ms: r.expires_ms.min(HLC_MAX_PHYSICAL_MS),
                ephemeral: r.ephemeral,
            },
        })
    }

    /// Records; those without a node id belong to `ctx` (an enclosing push's
    /// or chunk's origin), and are refused where there is none.
    fn records(
        &mut self,
        rs: Vec<pb::Record>,
        ctx: Option<&Origin>,
    ) -> Result<Vec<Record>, DecodeError> {
        self.add_records(rs.len())?;
        rs.into_iter().map(|r| self.record(r, ctx)).collect()
    }

    fn delta(&mut self, d: pb::Delta) -> Result<Delta, DecodeError> {
        check("delta chunks", d.chunks.len(), self.limits.max_entries)?;
        let chunks = d
            .chunks
            .into_iter()
            .map(|c| self.chunk(c))
            .collect::<Result<_, _>>()?;
        let loose = self.records(d.loose, None)?;
        Ok(Delta { chunks, loose })
    }

    fn fragment(&self, f: pb::Fragment) -> Result<Fragment, DecodeError> {
        check(
            "fragment total length",
            f.total_len as usize,
            self.limits.max_message,
        )?;
        if f.count < 2 || f.index >= f.count {
            return Err(DecodeError::Inconsistent(
                "fragment index out of range, or fewer than two pieces",
            ));
        }
        if f.data.is_empty() || f.data.len() > f.total_len as usize || f.count > f.total_len {
            return Err(DecodeError::Inconsistent(
                "fragment piece empty or longer than its envelope",
            ));
        }
        Ok(Fragment {
            message_id: f.message_id,
            index: f.index,
            count: f.count,
            total_len: f.total_len,
            data: f.data,
        })
    }

    fn chunk(&mut self, c: pb::OriginChunk) -> Result<OriginChunk, DecodeError> {
        let origin = Origin {
            node: self.node_id(c.node_id)?,
            generation: c.generation,
        };
        if c.to < c.from {
            return Err(DecodeError::Inconsistent("chunk ends before it starts"));
        }
        let records = self.records(c.records, Some(&origin))?;
        self.ghosts = self.ghosts.saturating_add(c.ghosts.len());
        check("ghosts", self.ghosts, self.limits.max_entries)?;
        let ghosts = c
            .ghosts
            .into_iter()
            .map(|g| {
                if g.seq <= c.from || g.seq > c.to {
                    return Err(DecodeError::Inconsistent("ghost outside its chunk's range"));
                }
                self.key(&g.key)?;
                Ok(Ghost {
                    seq: g.seq,
                    key: Key::from(g.key),
                    hlc: Hlc::from_u64(g.hlc),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(OriginChunk {
            origin,
            from: c.from,
            to: c.to,
            records,
            ghosts,
        })
    }

    fn page(&mut self, p: pb::Page) -> Result<Page, DecodeError> {
        self.key(&p.start)?;
        let end = if p.has_end {
            self.key(&p.end)?;
            Some(p.end)
        } else if p.end.is_empty() {
            None
        } else {
            return Err(DecodeError::Inconsistent(
                "Page.end set without Page.has_end",
            ));
        };
        let watermarks = self.digest(
            p.watermarks
                .ok_or(DecodeError::MissingField("Page.watermarks"))?,
        )?;
        let records = self.records(p.records, None)?;
        Ok(Page {
            start: p.start,
            end,
            records,
            watermarks,
        })
    }
}

/// `s` cut to at most [`MAX_QUOTED_ADDR`] bytes, on a character boundary.
fn quote(s: &str) -> String {
    let mut end = s.len().min(MAX_QUOTED_ADDR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
