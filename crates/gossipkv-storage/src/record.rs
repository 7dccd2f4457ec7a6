//! Records and the messages of the digest / delta exchange, in storage terms.

use bytes::Bytes;

use crate::version::{Hlc, Origin, Version};
use crate::Key;

/// Upper bound, in bytes, of what a record costs on the wire beyond its key,
/// value and node id. The wire crate checks its encoding stays within it.
pub const RECORD_OVERHEAD: usize = 76;
/// Upper bound of what an origin chunk costs beyond its node id and contents.
pub const CHUNK_OVERHEAD: usize = 48;
/// Upper bound of what a ghost entry costs beyond its key.
pub const GHOST_OVERHEAD: usize = 40;
/// Upper bound of what one digest entry costs beyond its node id: the
/// entry's tag and length (1 + 3 bytes), the node id's tag and length
/// (1 + 3), and the generation and watermark (1 + 10 each), for node ids
/// shorter than 2 MB.
pub const DIGEST_ENTRY_OVERHEAD: usize = 30;

/// How long a record's value lives, as its writer fixed it: part of the
/// replicated record, so every replica hides the value at the same moment
/// with no message of its own.
///
/// The default (`Lifetime::FOREVER`) is a value that lives until it is
/// overwritten or deleted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub struct Lifetime {
    /// Wall-clock time (Unix milliseconds) from which the value is expired
    /// and behaves as a tombstone of the same version; 0 for never. Values
    /// above [`crate::HLC_MAX_PHYSICAL_MS`] are kept at that bound.
    pub expires_ms: u64,
    /// Whether the value belongs to its writer's origin (node id and
    /// generation) and dies with it: hidden while that origin is dead, has
    /// left or was replaced by a newer generation, and removed for good
    /// after a grace period.
    pub ephemeral: bool,
}

impl Lifetime {
    /// A value that lives until overwritten or deleted.
    pub const FOREVER: Lifetime = Lifetime {
        expires_ms: 0,
        ephemeral: false,
    };

    /// A value that expires at `expires_ms` (Unix milliseconds; 0 never).
    pub fn expiring(expires_ms: u64) -> Lifetime {
        Lifetime {
            expires_ms: expires_ms.min(crate::HLC_MAX_PHYSICAL_MS),
            ephemeral: false,
        }
    }

    /// The same lifetime, owned by its writer (see [`Lifetime::ephemeral`]).
    pub fn owned(self) -> Lifetime {
        Lifetime {
            ephemeral: true,
            ..self
        }
    }

    /// Whether a value with this lifetime is expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    /// Whether this is [`Lifetime::FOREVER`].
    pub fn is_forever(&self) -> bool {
        *self == Lifetime::FOREVER
    }

    /// Packs the lifetime into one word: bit 63 is `ephemeral`, the low 48
    /// bits the expiry (which never needs more: it is bounded by
    /// [`crate::HLC_MAX_PHYSICAL_MS`]).
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.ephemeral) << 63) | self.expires_ms.min(crate::HLC_MAX_PHYSICAL_MS)
    }

    /// The inverse of [`Lifetime::pack`].
    pub(crate) fn unpack(word: u64) -> Lifetime {
        Lifetime {
            expires_ms: word & crate::HLC_MAX_PHYSICAL_MS,
            ephemeral: word >> 63 == 1,
        }
    }
}

/// One key's state: a value or a tombstone (`value == None`), with its version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// The key: a `smol_str::SmolStr` (this crate's [`Key`]; not the
    /// encryption key that the `gossipkv` crate calls `Key`), up to 23
    /// bytes inline, read as a `&str`.
    pub key: Key,
    /// The value, or `None` for a delete (tombstone).
    pub value: Option<Bytes>,
    /// Who wrote it and when.
    pub version: Version,
    /// How long the value lives (see [`Lifetime`]); for a tombstone, what
    /// the value had when it expired, or [`Lifetime::FOREVER`].
    pub lifetime: Lifetime,
}

impl Record {
    /// A record that lives until overwritten or deleted.
    pub fn new(key: impl Into<Key>, value: Option<Bytes>, version: Version) -> Record {
        Record {
            key: key.into(),
            value,
            version,
            lifetime: Lifetime::FOREVER,
        }
    }

    /// Whether this record holds a value still alive at `now_ms`.
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.value.is_some() && !self.lifetime.is_expired(now_ms)
    }

    /// Whether this record is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// An upper bound of this record's encoded size on the wire.
    pub fn size_hint(&self) -> usize {
        record_size_hint(
            self.key.len(),
            self.value.as_ref().map_or(0, Bytes::len),
            self.version.node.as_str().len(),
        )
    }
}

/// Upper bound of a record's encoded size, from the lengths of its parts.
pub fn record_size_hint(key_len: usize, value_len: usize, node_len: usize) -> usize {
    key_len + value_len + node_len + RECORD_OVERHEAD
}

/// A watermark per origin: "I hold every write of this origin with sequence
/// number at most `watermark`, or something newer for the same key".
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Digest {
    /// One entry per origin, in no particular order.
    pub entries: Vec<DigestEntry>,
    /// `true` when every origin the sender knows is listed (a missing origin
    /// then means watermark 0); `false` for a subset (missing = unknown).
    pub complete: bool,
    /// For a subset: `entries` are sorted by origin and cover the origins
    /// from the first entry to the last (an unlisted origin inside that range
    /// means watermark 0). `open_start` extends the range down to the
    /// smallest possible origin.
    pub open_start: bool,
    /// For a subset: extends the covered range up to the largest possible origin.
    pub open_end: bool,
}

/// One origin's watermark.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DigestEntry {
    /// The origin.
    pub origin: Origin,
    /// Highest sequence number covered (see [`Digest`]), or
    /// [`RETIRED_WATERMARK`].
    pub watermark: u64,
}

/// The watermark a digest lists for an origin its sender retired (see
/// [`Store::retire_origins`](crate::Store::retire_origins)): every write of
/// that origin is superseded there, and it takes no more. Read as a
/// watermark it says "sends me nothing of this origin", which is what the
/// sender wants; nothing raises a watermark of its own to it.
pub const RETIRED_WATERMARK: u64 = u64::MAX;

impl DigestEntry {
    /// Whether the sender retired this origin ([`RETIRED_WATERMARK`]).
    pub fn is_retired(&self) -> bool {
        self.watermark == RETIRED_WATERMARK
    }
}

impl Digest {
    /// A 64-bit fingerprint of the origins listed with a non-zero watermark
    /// and their watermarks, independent of their order: two complete
    /// digests with the same fingerprint almost surely say the same thing.
    /// FNV-1a over a canonical form, so every node and build computes the
    /// same value.
    pub fn fingerprint(&self) -> u64 {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut entries: Vec<&DigestEntry> =
            self.entries.iter().filter(|e| e.watermark > 0).collect();
        entries.sort_unstable_by(|a, b| a.origin.cmp(&b.origin));
        let mut h = OFFSET;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        };
        for e in entries {
            eat(&(e.origin.node.as_str().len() as u64).to_le_bytes());
            eat(e.origin.node.as_str().as_bytes());
            eat(&e.origin.generation.to_le_bytes());
            eat(&e.watermark.to_le_bytes());
        }
        h
    }

    /// The watermark for `origin`: `Some(0)` when the digest covers `origin`
    /// without listing it, `None` when it does not cover it (see
    /// [`Digest::covers`]).
    pub fn watermark(&self, origin: &Origin) -> Option<u64> {
        match self.entries.iter().find(|e| &e.origin == origin) {
            Some(e) => Some(e.watermark),
            None if self.covers(origin) => Some(0),
            None => None,
        }
    }

    /// Whether this digest speaks for `origin`: always for a complete
    /// digest; for a subset, when `origin` lies in its range.
    pub fn covers(&self, origin: &Origin) -> bool {
        if self.complete {
            return true;
        }
        let after_start =
            self.open_start || self.entries.first().is_some_and(|f| origin >= &f.origin);
        let before_end = self.open_end || self.entries.last().is_some_and(|l| origin <= &l.origin);
        after_start && before_end
    }

    /// A subset of this (complete) digest that fits `max_bytes` by
    /// [`Digest::size_hint`]: the origins from the `rotate`-th one on, in
    /// origin order, as many as fit. Returns the digest whole when it fits.
    pub fn window(mut self, max_bytes: usize, rotate: usize) -> Digest {
        if self.size_hint() <= max_bytes || self.entries.is_empty() {
            return self;
        }
        self.entries.sort_by(|a, b| a.origin.cmp(&b.origin));
        let n = self.entries.len();
        let start = rotate % n;
        let mut part = Digest {
            entries: Vec::new(),
            complete: false,
            open_start: start == 0,
            open_end: false,
        };
        let mut used = part.size_hint();
        for e in self.entries.drain(start..) {
            let cost = e.origin.node.as_str().len() + DIGEST_ENTRY_OVERHEAD;
            if used + cost > max_bytes {
                break;
            }
            used += cost;
            part.entries.push(e);
        }
        part.open_end = start + part.entries.len() == n;
        part
    }

    /// A subset of this (complete) digest that fits `max_bytes`, for a
    /// re-synchronisation page: the origins in `prefer` first, then the
    /// others from the `rotate`-th one on, wrapping around. The subset need
    /// not be contiguous: an unlisted origin inside its range reads as
    /// watermark 0, which only makes a page's receiver keep more and raise
    /// less. Returns the digest whole when it fits.
    pub fn page_window(mut self, max_bytes: usize, rotate: usize, prefer: &[Origin]) -> Digest {
        if self.size_hint() <= max_bytes || self.entries.is_empty() {
            return self;
        }
        self.entries.sort_by(|a, b| a.origin.cmp(&b.origin));
        let n = self.entries.len();
        let start = rotate % n;
        self.entries.rotate_left(start);
        let (mut order, rest): (Vec<DigestEntry>, Vec<DigestEntry>) = self
            .entries
            .into_iter()
            .partition(|e| prefer.contains(&e.origin));
        order.extend(rest);
        let mut part = Digest {
            entries: Vec::new(),
            complete: false,
            open_start: false,
            open_end: false,
        };
        let mut used = part.size_hint();
        for e in order {
            let cost = e.origin.node.as_str().len() + DIGEST_ENTRY_OVERHEAD;
            if used + cost <= max_bytes {
                used += cost;
                part.entries.push(e);
            }
        }
        part.entries.sort_by(|a, b| a.origin.cmp(&b.origin));
        part
    }

    /// An upper bound of this digest's encoded size.
    pub fn size_hint(&self) -> usize {
        16 + self
            .entries
            .iter()
            .map(|e| e.origin.node.as_str().len() + DIGEST_ENTRY_OVERHEAD)
            .sum::<usize>()
    }
}

/// The records of one origin that a peer lacks, cut to a byte budget.
///
/// Applying it lets the receiver raise its watermark for `origin` from `from`
/// to `to` (only if its watermark is at least `from`), because the chunk
/// carries every write of the origin in `(from, to]` that the sender still
/// holds, plus, for writes the sender holds something newer for, either that
/// newer record or a ghost entry naming the key when the receiver already has
/// the newer record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OriginChunk {
    /// The origin these sequence numbers belong to.
    pub origin: Origin,
    /// The receiver's watermark this chunk was built against.
    pub from: u64,
    /// The watermark the receiver may advance to.
    pub to: u64,
    /// Records, ascending by sequence of the origin they stand for.
    pub records: Vec<Record>,
    /// Writes of `origin` that were superseded by a newer version of their key.
    pub ghosts: Vec<Ghost>,
}

/// A superseded write: write `seq` of an origin was to `key`, and a newer
/// version of `key` exists.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ghost {
    /// The superseded write's sequence number.
    pub seq: u64,
    /// The key it wrote.
    pub key: Key,
    /// Its timestamp (used to collect it after the retention period).
    pub hlc: Hlc,
}

/// What a node sends a peer so that the peer catches up: one chunk per origin,
/// and loose records.
///
/// Loose records are writes the peer lacks that lie beyond the end of their
/// origin's chunk, because the chunk had to stop before a record too large to
/// travel inline (see [`Store::delta_split`](crate::Store::delta_split)).
/// The receiver merges them one by one; they raise no watermark beyond what
/// [`Store::merge`](crate::Store::merge) allows, so a large value in transit
/// never holds up the later writes of its origin.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Delta {
    /// Chunks, in the order they were built.
    pub chunks: Vec<OriginChunk>,
    /// Records merged one by one, beyond their origin's chunk.
    pub loose: Vec<Record>,
}

impl Delta {
    /// Whether the delta carries nothing.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.loose.is_empty()
    }

    /// Number of records carried.
    pub fn record_count(&self) -> usize {
        self.chunks.iter().map(|c| c.records.len()).sum::<usize>() + self.loose.len()
    }

    /// An upper bound of this delta's encoded size.
    pub fn size_hint(&self) -> usize {
        self.loose.iter().map(Record::size_hint).sum::<usize>()
            + self
                .chunks
                .iter()
                .map(|c| {
                    CHUNK_OVERHEAD
                        + c.origin.node.as_str().len()
                        + c.records.iter().map(Record::size_hint).sum::<usize>()
                        + c.ghosts
                            .iter()
                            .map(|g| g.key.len() + GHOST_OVERHEAD)
                            .sum::<usize>()
                })
                .sum::<usize>()
    }
}

/// One page of a full re-synchronisation, for a peer that is too far behind
/// to be sent a delta (it missed tombstones that have been collected since).
///
/// The page covers the keys in `[start, end)` (`end == None`: to the last
/// key). The receiver merges `records`; a key it holds in that range that is
/// absent from the page is dropped if `watermarks` covers its version (the
/// sender saw that write and deleted the key since), and kept otherwise.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page {
    /// First key covered (inclusive).
    pub start: String,
    /// First key not covered, or `None` for the end of the key space.
    pub end: Option<String>,
    /// The sender's records for keys in the range, tombstones included.
    pub records: Vec<Record>,
    /// The sender's watermarks, taken before the page was read.
    pub watermarks: Digest,
}

impl Page {
    /// An upper bound of this page's encoded size.
    pub fn size_hint(&self) -> usize {
        32 + self.start.len()
            + self.end.as_ref().map_or(0, String::len)
            + self.records.iter().map(Record::size_hint).sum::<usize>()
            + self.watermarks.size_hint()
    }
}

impl Version {
    /// Builds a version from its parts.
    pub fn new(hlc: Hlc, origin: &Origin, seq: u64) -> Self {
        Version {
            hlc,
            node: origin.node.clone(),
            generation: origin.generation,
            seq,
        }
    }
}
