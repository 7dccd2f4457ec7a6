//! [`Stats`]: the protocol's counters.

/// Counters of one protocol instance, for metrics and tests. New counters
/// may be added in any release, so the struct cannot be built outside this
/// crate; read its fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Gossip rounds started.
    pub rounds: u64,
    /// Datagrams handed to the driver for sending.
    pub datagrams_sent: u64,
    /// Payload bytes handed to the driver for sending.
    pub bytes_sent: u64,
    /// Datagrams received (valid or not).
    pub datagrams_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Datagrams dropped because they did not decode.
    pub decode_errors: u64,
    /// Datagrams dropped because they came from another cluster.
    pub foreign_cluster: u64,
    /// Datagrams dropped because they claimed our own node id.
    pub duplicate_node_id: u64,
    /// Records that won when merged.
    pub records_won: u64,
    /// Records received that were already known or older.
    pub records_lost: u64,
    /// Re-synchronisation pages applied.
    pub pages_applied: u64,
    /// Re-synchronisations completed.
    pub resyncs_completed: u64,
    /// Tombstones collected.
    pub tombstones_collected: u64,
    /// Index entries of superseded writes collected once every live member
    /// had passed them (before the tombstone retention).
    pub superseded_collected: u64,
    /// Datagrams not sent because they came out larger than the packet size (a bug if ever non-zero).
    pub oversized_dropped: u64,
    /// Push datagrams sent (fresh writes and forwards).
    pub pushes_sent: u64,
    /// Pushed records that were new here.
    pub pushed_records_won: u64,
    /// Syns answered in the short form because both digests were equal.
    pub short_replies: u64,
    /// Syns sent (gossip rounds and suspect probes).
    pub syns_sent: u64,
    /// Syns received.
    pub syns_received: u64,
    /// Syns sent in the hash-only form (our digest had not changed).
    pub hash_only_syns_sent: u64,
    /// Full Syns sent after a hash-only exchange showed the peer has writes we lack.
    pub pulls_sent: u64,
    /// Records too large to travel inline that were sent apart (fragmented).
    pub large_records_sent: u64,
    /// Fragment datagrams sent.
    pub fragments_sent: u64,
    /// Fragment datagrams received.
    pub fragments_received: u64,
    /// Fragmented envelopes put back together.
    pub messages_reassembled: u64,
    /// Fragmented envelopes dropped unfinished (pieces lost; anti-entropy
    /// sends them again).
    pub reassemblies_dropped: u64,
    /// Requests sent to other members to probe a member that did not answer.
    pub probe_requests_sent: u64,
    /// Members probed on behalf of other members.
    pub probes_relayed: u64,
    /// Rumors of our own suspicion or death refuted.
    pub refutations: u64,
    /// Member-list reconciliation messages sent.
    pub member_syncs_sent: u64,
    /// Member entries (rumors, samples, reconciliation) sent in datagrams.
    pub member_entries_sent: u64,
    /// Records, delta chunks and page watermarks from other nodes that
    /// claimed this node's own current origin beyond what it wrote
    /// (forged), refused. Only this node writes its origin.
    pub own_origin_refused: u64,
    /// Records and ghosts stamped further ahead of the local wall clock than
    /// the maximum clock drift, held back (anti-entropy brings them again
    /// once local time is within the bound).
    pub records_deferred: u64,
    /// Re-synchronisation pages refused whole because they carried a record
    /// stamped beyond the maximum clock drift (or forged for our origin).
    pub pages_refused: u64,
    /// Whether this node has caught up once: it exchanged digests with a
    /// live member and held everything that member vouched for (see
    /// [`Protocol::is_synced`](crate::Protocol::is_synced)).
    pub synced: bool,
    /// Streams this node asked peers for (it was far behind).
    pub streams_requested: u64,
    /// Streams received to their end.
    pub streams_completed: u64,
    /// Streams received that were cut, refused or failed before their end.
    pub streams_cut: u64,
    /// Streams this node served to their end.
    pub streams_served: u64,
    /// Streams this node served that were closed before their end.
    pub streams_served_cut: u64,
    /// Connections refused: streams off, too many served, not a live
    /// member, or bad opening.
    pub streams_refused: u64,
    /// Frames sent on served streams.
    pub stream_frames_sent: u64,
    /// Records sent on served streams.
    pub stream_records_sent: u64,
    /// Bytes sent on streams (served frames, and our openings).
    pub stream_bytes_sent: u64,
    /// Frames received on streams.
    pub stream_frames_received: u64,
    /// Bytes received on streams.
    pub stream_bytes_received: u64,
    /// Values whose time to live ran out, turned into tombstones here.
    pub values_expired: u64,
    /// Ephemeral values hidden because their owner died, left or was
    /// replaced by a newer generation.
    pub owned_hidden: u64,
    /// Ephemeral values shown again because their owner refuted its death.
    pub owned_shown: u64,
    /// Ephemeral values removed for good (owner left, replaced, or dead
    /// past the grace period).
    pub owned_removed: u64,
    /// This node's own ephemeral values written again after it refuted a
    /// rumor of its death.
    pub owned_rewritten: u64,
    /// Origins retired: gone for good, none of their writes held any more
    /// (see `Store::retire_origins`).
    pub origins_retired: u64,
    /// Retired origins made silent (left out of digests) once every live
    /// member listed them as retired or not at all.
    pub origins_silenced: u64,
    /// Retired origins taken back because a member showed writes of them
    /// this node lacked.
    pub origins_unretired: u64,
    /// Records of this node's older generations written again as its own
    /// (same timestamps), so those generations can retire.
    pub records_adopted: u64,
    /// Datagrams not sent to an address that has not shown it receives
    /// what is sent there: answers past three times the bytes it sent us,
    /// and fragmented messages (see address validation on [`crate::Protocol`]).
    pub unvalidated_refused: u64,
    /// Answers not sent because their destination had spent its reply
    /// allowance.
    pub replies_rate_limited: u64,
    /// Times an address not (or no longer freshly) validated showed it
    /// receives what we send (our token sent back).
    pub addresses_validated: u64,
    /// Datagrams from an address that has not shown it receives whose
    /// sender was not made a member there (nor moved there); their data
    /// was still handled.
    pub unvalidated_senders: u64,
    /// Origins new here that a message named beyond its sender's allowance
    /// (or past [`crate::MAX_ORIGINS`]), counted once per message: their
    /// records and chunks were dropped (and the delta raised no watermark),
    /// pages applied without them (see [`crate::SOURCE_BURST`]).
    pub origins_refused: u64,
    /// Datagrams and bytes sent, by kind (see [`MessageKind`]).
    pub sent_by_kind: [KindCount; MessageKind::COUNT],
    /// Datagrams and bytes received that decoded, by kind (those that did
    /// not are [`Stats::decode_errors`]).
    pub received_by_kind: [KindCount; MessageKind::COUNT],
}

/// Datagrams of one kind and their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCount {
    /// Datagrams.
    pub datagrams: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl KindCount {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.datagrams += 1;
        self.bytes += bytes as u64;
    }
}

/// The kinds of datagram, as [`Stats::sent_by_kind`] and
/// [`Stats::received_by_kind`] count them (indexed by `kind as usize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// First message of an exchange: a digest.
    Syn,
    /// Second message: a digest and a delta, or a re-synchronisation page.
    SynAck,
    /// Third message: a delta.
    Ack,
    /// Fresh writes pushed at once.
    Push,
    /// A departure.
    Leave,
    /// A piece of a message too large for one datagram.
    Fragment,
    /// An indirect probe request or its answer.
    Probe,
    /// Member-list reconciliation.
    MemberSync,
}

impl MessageKind {
    /// Number of kinds.
    pub const COUNT: usize = 8;
    /// Every kind, in index order.
    pub const ALL: [MessageKind; Self::COUNT] = [
        MessageKind::Syn,
        MessageKind::SynAck,
        MessageKind::Ack,
        MessageKind::Push,
        MessageKind::Leave,
        MessageKind::Fragment,
        MessageKind::Probe,
        MessageKind::MemberSync,
    ];

    /// The kind's name, in lower case (`syn`, `synack`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Syn => "syn",
            MessageKind::SynAck => "synack",
            MessageKind::Ack => "ack",
            MessageKind::Push => "push",
            MessageKind::Leave => "leave",
            MessageKind::Fragment => "fragment",
            MessageKind::Probe => "probe",
            MessageKind::MemberSync => "membersync",
        }
    }

    /// The kind of a message body.
    pub fn of(body: &gossipkv_proto::Body) -> Self {
        use gossipkv_proto::Body;
        match body {
            Body::Syn(_) => MessageKind::Syn,
            Body::SynAck(_) => MessageKind::SynAck,
            Body::Ack(_) => MessageKind::Ack,
            Body::Leave => MessageKind::Leave,
            Body::Push(_) => MessageKind::Push,
            Body::Fragment(_) => MessageKind::Fragment,
            Body::Probe(_) => MessageKind::Probe,
            Body::MemberSync(_) => MessageKind::MemberSync,
        }
    }
}
