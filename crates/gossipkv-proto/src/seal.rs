//! Sealed datagrams and stream records: gossip encryption with a keyring.
//!
//! A node given a [`Keyring`] seals every datagram it sends with the
//! keyring's primary key and opens what it receives with whichever of its
//! keys the sender names. The cipher is XChaCha20-Poly1305, made of
//! HChaCha20 from RustCrypto's `chacha20` and ChaCha20-Poly1305 from
//! `ring`, and byte for byte RustCrypto's `chacha20poly1305`, which the
//! tests check it against: its 192-bit nonces may be drawn at random for
//! any number of messages without a collision worth counting.
//!
//! A sealed datagram is laid out as follows (all of it authenticated, the
//! header as associated data together with the protocol version and the
//! cluster id, so a datagram of another cluster or version never opens):
//!
//! ```text
//! magic | n     1 byte: SEALED_MAGIC with n, the number of secondary key
//!               ids that follow the primary's, in its low two bits
//! primary id    2 bytes: the key that sealed it
//! secondary ids 2 bytes each: the other keys the sender holds (so peers
//!               can tell who is ready for a rotation's next step)
//! nonce         24 bytes: the sender's wall-clock milliseconds (8 bytes,
//!               little-endian) and 16 random bytes
//! ciphertext    as long as the plaintext (the encoded envelope)
//! tag           16 bytes
//! ```
//!
//! With one key that is [`SEALED_OVERHEAD`] = 43 bytes per datagram, and
//! two more per extra key while a rotation is under way. The time in the
//! nonce cannot be changed without the tag failing, so a receiver can
//! refuse stale and replayed datagrams ([`ReplayGuard`]).
//!
//! Streams carry sealed records instead: after [`SEALED_STREAM_MAGIC`],
//! each record is a 4-byte big-endian length, the key id, a nonce, the
//! ciphertext and the tag, and its associated data adds the record's index
//! and direction, so records cannot be reordered, dropped, replayed within
//! a stream or reflected back to their sender ([`seal_record`],
//! [`RecordReader`]).
//!
//! Everything here is computation: the caller draws the random bytes and
//! reads the clock.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;

use zeroize::Zeroizing;

use crate::{xchacha, PROTOCOL_VERSION};

/// The high six bits of a sealed datagram's first byte. No plaintext
/// envelope starts with it (they start with the protocol version's tag,
/// `0x08`), so a receiver accepting both during a migration tells them
/// apart by their first byte.
pub const SEALED_MAGIC: u8 = 0xB4;

/// The first bytes of a sealed stream ("gossipkv encrypted stream, v1"),
/// in place of [`crate::stream::STREAM_MAGIC`].
pub const SEALED_STREAM_MAGIC: [u8; 4] = *b"GKE1";

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of a key id.
pub const KEY_ID_LEN: usize = 2;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Most keys a keyring holds: a primary and three secondaries.
pub const MAX_KEYS: usize = 4;

/// What sealing adds to a datagram sealed by a keyring of one key.
pub const SEALED_OVERHEAD: usize = 1 + KEY_ID_LEN + NONCE_LEN + TAG_LEN;

/// What sealing adds to a datagram at most (a full keyring).
pub const MAX_SEALED_OVERHEAD: usize = SEALED_OVERHEAD + (MAX_KEYS - 1) * KEY_ID_LEN;

/// What sealing adds to a stream record (length, key id, nonce, tag).
pub const RECORD_OVERHEAD: usize = 4 + KEY_ID_LEN + NONCE_LEN + TAG_LEN;

/// Bytes of a nonce that carry the sender's wall-clock milliseconds.
const NONCE_TIME: usize = 8;

/// A key's public name: a 16-bit check value derived from the key (the
/// cipher's tag over nothing, under a fixed nonce), so that a receiver
/// tries only the key the sender used, and nodes can compare keyrings
/// without showing their keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub u16);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}", self.0)
    }
}

/// A 256-bit key. Its bytes are wiped from memory when it is dropped and
/// never shown by `Debug` (which prints its [`KeyId`] only).
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: KeyId,
}

impl Key {
    /// The key of these 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let bytes = Zeroizing::new(bytes);
        // Sealing nothing cannot fail: the message is far below the
        // cipher's length limit.
        let tag = xchacha::seal(&bytes, &[0u8; NONCE_LEN], b"gossipkv key id v1", &mut [])
            .unwrap_or_default();
        let id = KeyId(u16::from_le_bytes([tag[0], tag[1]]));
        Key { bytes, id }
    }

    /// The key's bytes (to store it in a keyring file, say).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key's public name.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        *self.bytes == *other.bytes
    }
}

impl Eq for Key {}

/// Why a keyring change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The keyring already holds [`MAX_KEYS`] keys.
    #[error("the keyring already holds {MAX_KEYS} keys; remove one first")]
    Full,
    /// Another key of the keyring has the same id (one chance in 65,536
    /// per pair): generate another key.
    #[error("key {0} has the id of another key in the keyring; generate another key")]
    IdClash(KeyId),
    /// No key of the keyring has this id.
    #[error("no key {0} in the keyring")]
    Unknown(KeyId),
    /// The primary key cannot be removed: make another key primary first.
    #[error("key {0} is the primary key; make another key primary before removing it")]
    Primary(KeyId),
}

/// The keys a node seals and opens with: one primary key that seals, and
/// up to three secondary keys that still open (during a rotation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring {
    /// The primary key first.
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of one key, the primary.
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// The key that seals.
    pub fn primary(&self) -> &Key {
        &self.keys[0]
    }

    /// Every key, the primary first.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key named `id`, if held.
    pub fn get(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Adds a secondary key (it opens at once; it seals once made primary
    /// with [`use_key`](Keyring::use_key)). Installing a key already held
    /// changes nothing.
    pub fn install(&mut self, key: Key) -> Result<(), KeyringError> {
        if let Some(held) = self.get(key.id) {
            return if *held == key {
                Ok(())
            } else {
                Err(KeyringError::IdClash(key.id))
            };
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        self.keys.push(key);
        Ok(())
    }

    /// Makes the key named `id` the primary; the old primary stays as a
    /// secondary key.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        let i = self
            .keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyringError::Unknown(id))?;
        self.keys.swap(0, i);
        Ok(())
    }

    /// Removes a secondary key.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if self.primary().id == id {
            return Err(KeyringError::Primary(id));
        }
        let before = self.keys.len();
        self.keys.retain(|k| k.id != id);
        if self.keys.len() == before {
            return Err(KeyringError::Unknown(id));
        }
        Ok(())
    }

    /// The key ids a sender names in its datagrams' headers.
    pub fn holdings(&self) -> Holdings {
        let mut h = Holdings {
            ids: [KeyId(0); MAX_KEYS],
            len: 0,
        };
        for k in &self.keys {
            h.ids[h.len] = k.id;
            h.len += 1;
        }
        h
    }

    /// What sealing adds to a datagram with this keyring.
    pub fn overhead(&self) -> usize {
        SEALED_OVERHEAD + (self.keys.len() - 1) * KEY_ID_LEN
    }
}

/// The keys a sender holds, as its datagram's header names them: the
/// primary first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    ids: [KeyId; MAX_KEYS],
    len: usize,
}

impl Holdings {
    /// The key the datagram was sealed with.
    pub fn primary(&self) -> KeyId {
        self.ids[0]
    }

    /// Every key id named, the primary first.
    pub fn ids(&self) -> &[KeyId] {
        &self.ids[..self.len]
    }
}

/// Why a datagram or stream record did not open. Nothing of it was
/// decoded or applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not sealed (a plaintext envelope, or garbage).
    #[error("not sealed")]
    NotSealed,
    /// Shorter than its header and tag.
    #[error("truncated")]
    Truncated,
    /// Sealed with a key this node does not hold.
    #[error("sealed with key {0}, which this node does not hold")]
    UnknownKey(KeyId),
    /// The tag does not match: forged, altered, of another cluster or
    /// protocol version, or of another position in a stream.
    #[error("authentication failed")]
    Forged,
    /// A stream record longer than the reader allows.
    #[error("a sealed record of {len} bytes is longer than {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The longest allowed.
        max: usize,
    },
}

/// A nonce: the sender's wall-clock milliseconds and 16 random bytes.
pub fn nonce(wall_ms: u64, random: [u8; 16]) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[..NONCE_TIME].copy_from_slice(&wall_ms.to_le_bytes());
    n[NONCE_TIME..].copy_from_slice(&random);
    n
}

/// The wall-clock milliseconds a nonce carries.
pub fn nonce_time(nonce: &[u8; NONCE_LEN]) -> u64 {
    let mut t = [0u8; NONCE_TIME];
    t.copy_from_slice(&nonce[..NONCE_TIME]);
    u64::from_le_bytes(t)
}

/// What is bound to every sealed datagram or record besides its header:
/// what it is, the protocol version and the cluster id.
fn aad(kind: &[u8], header: &[u8], cluster_id: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(kind.len() + 4 + header.len() + cluster_id.len());
    a.extend_from_slice(kind);
    a.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    a.extend_from_slice(header);
    a.extend_from_slice(cluster_id.as_bytes());
    a
}

/// Seals `plaintext` (an encoded envelope) into a datagram with the
/// keyring's primary key; `nonce` must be fresh (see [`nonce`]).
pub fn seal_datagram(
    keyring: &Keyring,
    cluster_id: &str,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let holdings = keyring.holdings();
    let mut out = Vec::with_capacity(keyring.overhead() + plaintext.len());
    out.push(SEALED_MAGIC | (holdings.len - 1) as u8);
    for id in holdings.ids() {
        out.extend_from_slice(&id.0.to_le_bytes());
    }
    out.extend_from_slice(&nonce);
    let header_len = out.len();
    out.extend_from_slice(plaintext);
    let tag = seal_in_place(
        keyring.primary(),
        &nonce,
        &aad(b"d", &out[..header_len], cluster_id),
        &mut out[header_len..],
    );
    out.extend_from_slice(&tag);
    out
}

/// Encrypts `buf` in place; the tag.
fn seal_in_place(key: &Key, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    // XChaCha20-Poly1305 refuses only messages above 256 GiB.
    xchacha::seal(&key.bytes, nonce, aad, buf).unwrap_or_default()
}

/// Decrypts `sealed` in place: a header of `header_len` bytes ending with
/// the nonce, the ciphertext, the tag. The nonce, and where the plaintext is.
/// `sealed` must hold at least the header and the tag.
fn open_in_place(
    key: &Key,
    aad: &[u8],
    sealed: &mut [u8],
    header_len: usize,
) -> Result<([u8; NONCE_LEN], Range<usize>), OpenError> {
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[header_len - NONCE_LEN..header_len]);
    let tag_at = sealed.len() - TAG_LEN;
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&sealed[tag_at..]);
    // A refused datagram's ciphertext is overwritten (`ring` zeroes what
    // it decrypted): nothing reads it after an error.
    if !xchacha::open(
        &key.bytes,
        &nonce,
        aad,
        &mut sealed[header_len..tag_at],
        &tag,
    ) {
        return Err(OpenError::Forged);
    }
    Ok((nonce, header_len..tag_at))
}

/// A datagram opened in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Where the plaintext (the encoded envelope) is in the buffer.
    pub plaintext: Range<usize>,
    /// The nonce: its time is the sender's clock when it sealed it.
    pub nonce: [u8; NONCE_LEN],
    /// The keys the sender holds; the primary sealed it.
    pub holdings: Holdings,
}

/// Opens a sealed datagram in place: on success the plaintext is
/// `buf[opened.plaintext]`. On failure `buf` may hold garbage.
pub fn open_datagram(
    keyring: &Keyring,
    cluster_id: &str,
    buf: &mut [u8],
) -> Result<Opened, OpenError> {
    let first = *buf.first().ok_or(OpenError::NotSealed)?;
    if first & !0b11 != SEALED_MAGIC {
        return Err(OpenError::NotSealed);
    }
    let n_ids = usize::from(first & 0b11) + 1;
    let header_len = 1 + n_ids * KEY_ID_LEN + NONCE_LEN;
    if buf.len() < header_len + TAG_LEN {
        return Err(OpenError::Truncated);
    }
    let mut holdings = Holdings {
        ids: [KeyId(0); MAX_KEYS],
        len: n_ids,
    };
    for (i, id) in holdings.ids[..n_ids].iter_mut().enumerate() {
        let at = 1 + i * KEY_ID_LEN;
        *id = KeyId(u16::from_le_bytes([buf[at], buf[at + 1]]));
    }
    let key = keyring
        .get(holdings.primary())
        .ok_or(OpenError::UnknownKey(holdings.primary()))?;
    let aad = aad(b"d", &buf[..header_len], cluster_id);
    let (nonce, plaintext) = open_in_place(key, &aad, buf, header_len)?;
    Ok(Opened {
        plaintext,
        nonce,
        holdings,
    })
}

/// Which way a stream record goes: from the node that asked for the stream,
/// or from the node that serves it. Bound to every record, so a record
/// cannot be sent back to the node that sealed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the node that opened the connection.
    Request,
    /// From the node that accepted it.
    Response,
}

impl Direction {
    fn label(self) -> u8 {
        match self {
            Direction::Request => b'q',
            Direction::Response => b'r',
        }
    }
}

/// Seals `plaintext` as the `index`th record of a stream going
/// `direction`: its length prefix, key id, nonce, ciphertext and tag.
///
/// # Panics
/// Never for records shorter than 4 GiB minus the overhead; a longer one is
/// a caller's bug (records are stream frames, bounded by
/// [`crate::Limits`]).
pub fn seal_record(
    keyring: &Keyring,
    cluster_id: &str,
    direction: Direction,
    index: u64,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let body_len = RECORD_OVERHEAD - 4 + plaintext.len();
    let len = u32::try_from(body_len).expect("a record is shorter than 4 GiB");
    let mut out = Vec::with_capacity(4 + body_len);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&keyring.primary().id.0.to_le_bytes());
    out.extend_from_slice(&nonce);
    let header_len = out.len();
    out.extend_from_slice(plaintext);
    let kind = record_kind(direction, index);
    let tag = seal_in_place(
        keyring.primary(),
        &nonce,
        &aad(&kind, &out[4..header_len], cluster_id),
        &mut out[header_len..],
    );
    out.extend_from_slice(&tag);
    out
}

/// The associated data's kind of a record: direction and index.
fn record_kind(direction: Direction, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = b's';
    k[1] = direction.label();
    k[2..].copy_from_slice(&index.to_le_bytes());
    k
}

/// Takes a sealed stream's bytes (after [`SEALED_STREAM_MAGIC`]) as they
/// arrive and hands back the plaintext of each whole record, in order. It
/// holds at most one record of `max_record` plaintext bytes plus what the
/// last push brought, and refuses a longer length as soon as it is read.
#[derive(Debug)]
pub struct RecordReader {
    direction: Direction,
    max_record: usize,
    next_index: u64,
    buf: Vec<u8>,
}

impl RecordReader {
    /// A reader of records going `direction`, of at most `max_record`
    /// plaintext bytes each.
    pub fn new(direction: Direction, max_record: usize) -> RecordReader {
        RecordReader {
            direction,
            max_record,
            next_index: 0,
            buf: Vec::new(),
        }
    }

    /// Adds `bytes`; the plaintexts of the records they complete. After an
    /// error the stream must be dropped.
    pub fn push(
        &mut self,
        keyring: &Keyring,
        cluster_id: &str,
        bytes: &[u8],
    ) -> Result<Vec<Vec<u8>>, OpenError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(len) = self.record_len(at)? {
            let end = at + 4 + len;
            if self.buf.len() < end {
                break;
            }
            out.push(self.open_record(keyring, cluster_id, at + 4..end)?);
            at = end;
        }
        self.buf.drain(..at);
        Ok(out)
    }

    /// The length of the record at `at`, once its prefix is in.
    fn record_len(&self, at: usize) -> Result<Option<usize>, OpenError> {
        let Some(prefix) = self.buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let max = self.max_record + RECORD_OVERHEAD - 4;
        if len > max {
            return Err(OpenError::TooLong { len, max });
        }
        if len < RECORD_OVERHEAD - 4 {
            return Err(OpenError::Truncated);
        }
        Ok(Some(len))
    }

    fn open_record(
        &mut self,
        keyring: &Keyring,
        cluster_id: &str,
        range: Range<usize>,
    ) -> Result<Vec<u8>, OpenError> {
        let body = &mut self.buf[range];
        let id = KeyId(u16::from_le_bytes([body[0], body[1]]));
        let key = keyring.get(id).ok_or(OpenError::UnknownKey(id))?;
        let header_len = KEY_ID_LEN + NONCE_LEN;
        let kind = record_kind(self.direction, self.next_index);
        let aad = aad(&kind, &body[..header_len], cluster_id);
        let (_, plaintext) = open_in_place(key, &aad, body, header_len)?;
        self.next_index += 1;
        Ok(body[plaintext].to_vec())
    }
}

/// Why [`ReplayGuard::check`] refused a datagram that opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Freshness {
    /// Sealed longer ago than the window (or before the guard's floor,
    /// when it had to forget datagrams to stay within its cap).
    #[error("sealed too long ago")]
    Stale,
    /// Sealed further ahead of this node's clock than the clock drift
    /// allowed.
    #[error("sealed in the future")]
    Future,
    /// Seen before.
    #[error("replayed")]
    Replayed,
}

/// Refuses datagrams sealed too long ago, too far in the future, or seen
/// before: it remembers every datagram accepted within the window, up to a
/// cap. When the cap is hit it forgets the oldest and refuses anything
/// sealed at or before it (so a replay is never let through for want of
/// memory; at worst a datagram delayed that long is dropped).
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    drift_ms: u64,
    cap: usize,
    seen: BTreeSet<(u64, [u8; 16])>,
    /// Datagrams sealed at or before this time were forgotten for the cap.
    floor: Option<u64>,
    forgotten: u64,
}

impl ReplayGuard {
    /// A guard accepting datagrams sealed up to `window_ms` plus `drift_ms`
    /// ago and up to `drift_ms` ahead, remembering at most `cap`.
    pub fn new(window_ms: u64, drift_ms: u64, cap: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            drift_ms,
            cap: cap.max(1),
            seen: BTreeSet::new(),
            floor: None,
            forgotten: 0,
        }
    }

    /// Checks the datagram of `nonce` at `now_ms` (this node's wall
    /// clock), and remembers it if it passes.
    pub fn check(&mut self, now_ms: u64, nonce: &[u8; NONCE_LEN]) -> Result<(), Freshness> {
        let sent = nonce_time(nonce);
        let oldest = now_ms.saturating_sub(self.window_ms.saturating_add(self.drift_ms));
        if sent > now_ms.saturating_add(self.drift_ms) {
            return Err(Freshness::Future);
        }
        if sent < oldest || self.floor.is_some_and(|f| sent <= f) {
            return Err(Freshness::Stale);
        }
        let mut random = [0u8; 16];
        random.copy_from_slice(&nonce[NONCE_TIME..]);
        if !self.seen.insert((sent, random)) {
            return Err(Freshness::Replayed);
        }
        // Forget what left the window, then the oldest beyond the cap.
        while let Some(&first) = self.seen.first() {
            if first.0 >= oldest && self.seen.len() <= self.cap {
                break;
            }
            self.seen.pop_first();
            if first.0 >= oldest {
                self.floor = self.floor.max(Some(first.0));
                self.forgotten += 1;
            }
        }
        Ok(())
    }

    /// Datagrams remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Datagrams forgotten inside the window because the cap was hit.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }
}
