//! The messages of the gossip exchange, in domain (storage) terms.

use std::net::SocketAddr;

use gossipkv_storage::{Delta, Digest, NodeId, Origin, Page};

/// The wire format version this crate encodes and decodes.
pub const PROTOCOL_VERSION: u32 = 1;

/// One datagram: who sent it, for which cluster, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Wire format version; [`crate::decode`] only accepts [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Name of the cluster; receivers drop envelopes of other clusters.
    pub cluster_id: String,
    /// The node that sent the envelope.
    pub sender: Sender,
    /// A bounded sample of other members as the sender sees them.
    pub members: Vec<Sender>,
    /// Address validation: a secret token for the address this envelope is
    /// sent to, given while that address has not shown that it receives
    /// there (0: none).
    pub addr_token: u64,
    /// The token the receiver last gave the sender's address, sent back as
    /// proof that the sender receives there (0: none).
    pub addr_echo: u64,
    /// Zero bytes of padding, ignored by receivers (decoded: how many came).
    pub padding: usize,
    /// The message itself.
    pub body: Body,
}

impl Envelope {
    /// An envelope of the current [`PROTOCOL_VERSION`].
    pub fn new(cluster_id: impl Into<String>, sender: Sender, body: Body) -> Self {
        Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            sender,
            members: Vec::new(),
            addr_token: 0,
            addr_echo: 0,
            padding: 0,
            body,
        }
    }
}

/// The sender of an envelope: a node incarnation and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    /// The sender's node id (never empty once decoded).
    pub node_id: NodeId,
    /// The sender's generation (incarnation).
    pub generation: u64,
    /// The address the sender advertises, if any. It travels as text, so the
    /// IPv6 flow information is not carried (the scope id is).
    pub addr: Option<SocketAddr>,
    /// The node's incarnation within its generation: raised only to refute
    /// a suspicion or death of itself.
    pub incarnation: u64,
    /// Whether the node announced that it is leaving.
    pub left: bool,
    /// As an entry of [`Envelope::members`]: how the sending node sees the
    /// member (a suspicion or death is about the member at `incarnation`; a
    /// greater incarnation refutes it). Always [`Liveness::Alive`] in a sender.
    pub liveness: Liveness,
    /// In an envelope's sender: fingerprint of the sender's member list
    /// (ids and generations of every node it knows, itself included), 0 when
    /// not given. Zero in member entries.
    pub members_hash: u64,
}

/// How a node sees a member it reports (see [`Sender::liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Liveness {
    /// Heard from and not doubted.
    #[default]
    Alive,
    /// Did not answer probes; declared dead unless it refutes in time.
    Suspect,
    /// Declared dead.
    Dead,
}

impl Sender {
    /// A sender.
    pub fn new(node_id: impl Into<NodeId>, generation: u64, addr: Option<SocketAddr>) -> Self {
        Sender {
            node_id: node_id.into(),
            generation,
            addr,
            incarnation: 0,
            left: false,
            liveness: Liveness::Alive,
            members_hash: 0,
        }
    }

    /// The sender's origin (node id and generation).
    pub fn origin(&self) -> Origin {
        Origin {
            node: self.node_id.clone(),
            generation: self.generation,
        }
    }

    /// Length in bytes of the advertised address as carried on the wire
    /// (its text form), 0 when there is none. This is the `addr_len` argument
    /// of [`crate::envelope_overhead`].
    pub fn addr_len(&self) -> usize {
        self.addr.map_or(0, |a| a.to_string().len())
    }
}

/// The message an envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// First message of an exchange.
    Syn(Syn),
    /// Second message of an exchange.
    SynAck(SynAck),
    /// Third message of an exchange.
    Ack(Ack),
    /// The sender leaves the cluster on purpose.
    Leave,
    /// Fresh writes pushed at once.
    Push(Push),
    /// One piece of an envelope too large for one datagram.
    Fragment(Fragment),
    /// Failure detection help: an indirect probe request or its answer.
    Probe(Probe),
    /// Member-list reconciliation between two nodes whose lists differ.
    MemberSync(MemberSync),
}

/// Member-list reconciliation: the sender's per-bucket member-list
/// fingerprints; the envelope's members are the sender's members from the
/// buckets that differed from the receiver's (if this is an answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSync {
    /// One fingerprint per bucket.
    pub buckets: Vec<u64>,
    /// How many more answers the exchange may take.
    pub ttl: u32,
}

/// Failure detection help (SWIM's indirect probe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The member concerned.
    pub target: Sender,
    /// True: the sender asks the receiver to contact `target` (which did not
    /// answer the sender) and to report back if it answers. False: the
    /// sender reports `target` alive at `target.incarnation`.
    pub request: bool,
}

/// One piece of an encoded envelope too large for one datagram (see
/// [`crate::fragment`] and [`crate::decode_reassembled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Identifies the envelope among the sender's fragmented envelopes.
    pub message_id: u64,
    /// This piece's position, in `0..count`.
    pub index: u32,
    /// Number of pieces (at least 2).
    pub count: u32,
    /// Length of the whole encoded envelope.
    pub total_len: u32,
    /// The piece.
    pub data: bytes::Bytes,
}

/// Fresh writes pushed to peers as soon as they are made; receivers merge
/// them and forward what was new to them while `hops` allows. A watermark
/// rises only over writes the receiver holds without a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The records.
    pub records: Vec<gossipkv_storage::Record>,
    /// How many more times the records may be forwarded.
    pub hops: u32,
}

/// First message of an exchange: the initiator's watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syn {
    /// The initiator's digest.
    pub digest: Digest,
    /// `Some(start)` when the initiator is being re-synchronised and asks for
    /// the [`Page`] starting at key `start` instead of a delta.
    pub resync_from: Option<String>,
    /// `Some(fingerprint)` for a hash-only Syn: `digest` is empty, and this is
    /// [`Digest::fingerprint`] of the initiator's complete digest.
    pub digest_hash: Option<u64>,
}

/// Second message of an exchange: the responder's watermarks and what the
/// initiator lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynAck {
    /// The responder's digest, to be answered with an [`Ack`].
    pub digest: Digest,
    /// What the initiator lacks.
    pub reply: Reply,
}

/// What a [`SynAck`] carries for the initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The records the initiator lacks, by its digest.
    Delta(Delta),
    /// A re-synchronisation page, for an initiator too far behind for a delta.
    Page(Page),
}

/// Third message of an exchange: what the responder lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The records the responder lacks, by its digest (possibly empty).
    pub delta: Delta,
}

/// Bounds checked by [`crate::decode`]; a datagram breaking one is rejected
/// with [`crate::DecodeError::TooLarge`] or
/// [`crate::DecodeError::LimitExceeded`].
///
/// Lengths are in bytes (UTF-8 bytes for strings). Counts are totals over the
/// whole envelope, except `max_entries` for digest entries, which applies to
/// each digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest datagram accepted, checked before anything is parsed.
    /// Default 65,507 (the largest UDP payload over IPv4).
    pub max_datagram: usize,
    /// Longest key (record keys, ghost keys, page bounds, `resync_from`).
    /// Default 4,096.
    pub max_key_len: usize,
    /// Longest node id (sender, records, digests, chunks). Default 256.
    pub max_node_id_len: usize,
    /// Longest cluster id. Default 256.
    pub max_cluster_id_len: usize,
    /// Longest value. Default 1 MiB.
    pub max_value_len: usize,
    /// Largest envelope reassembled from fragments, checked by
    /// [`crate::decode_reassembled`] and on every [`Fragment`]'s
    /// `total_len`. Default 1 MiB + 64 KiB.
    pub max_message: usize,
    /// Most records in one envelope (all chunks, or one page). Default 16,384.
    pub max_records: usize,
    /// Most entries of one digest, most chunks of a delta, and most ghosts
    /// in one envelope (all chunks together). Default 16,384.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_datagram: 65_507,
            max_key_len: 4_096,
            max_node_id_len: 256,
            max_cluster_id_len: 256,
            max_value_len: 1 << 20,
            max_message: (1 << 20) + (64 << 10),
            max_records: 16_384,
            max_entries: 16_384,
        }
    }
}
