//! Gossip encryption: the keyring a node seals its datagrams and streams
//! with, the transport wrapper that seals and opens, and the keyring's
//! runtime operations on [`GossipKv`].
//!
//! The format (XChaCha20-Poly1305, key ids, a timestamped nonce) is
//! `gossipkv_proto::seal`; this module draws the nonces, reads the clock,
//! keeps the replay guard and the counters, and learns which keys each
//! peer holds from the headers of what it sends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use gossipkv_core::{MemberState, NetworkError};
use gossipkv_proto::seal::{
    self, open_datagram, seal_datagram, Direction, Freshness, Holdings, OpenError, RecordReader,
    ReplayGuard,
};
use gossipkv_transport::{Transport, TransportError};
use parking_lot::{Mutex, RwLock};
use rand::Rng;

pub use gossipkv_proto::seal::{Key, KeyId, Keyring, KeyringError, MAX_KEYS};

use crate::driver::{wall_now, Reporter};
use crate::error::Error;
use crate::GossipKv;

/// Default [`Builder::replay_window`](crate::Builder::replay_window).
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// Most datagrams the replay guard remembers (about 12 MB at most). Beyond
/// it the oldest are forgotten and anything sealed at or before them is
/// refused as stale, so a replay never passes for want of memory.
const REPLAY_CAP: usize = 1 << 18;

/// Most peer addresses whose keys are remembered (a network-fed map: only
/// holders of a key can add to it, and the oldest half is dropped when it
/// is full).
const PEER_KEYS_CAP: usize = 4096;

/// How a node with a keyring treats datagrams and streams without a seal.
/// The two permissive settings are the steps of a migration of a running
/// cluster to encryption (see the README's security section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encryption {
    /// Everything sent is sealed, and only sealed datagrams and streams are
    /// accepted (the default with a keyring).
    #[default]
    Required,
    /// Sealed and plaintext datagrams are both accepted; what is sent is
    /// sealed when `seal_outgoing`. Only for a migration: while plaintext
    /// is accepted, anyone can still write to the cluster.
    Permissive {
        /// Whether what this node sends is sealed.
        seal_outgoing: bool,
    },
}

impl Encryption {
    fn seals(self) -> bool {
        matches!(
            self,
            Encryption::Required
                | Encryption::Permissive {
                    seal_outgoing: true
                }
        )
    }

    fn accepts_plaintext(self) -> bool {
        matches!(self, Encryption::Permissive { .. })
    }
}

/// A new random key, from the operating system's generator (by way of
/// `rand`'s thread-local cryptographic generator).
pub fn generate_key() -> Key {
    Key::from_bytes(rand::rng().random())
}

/// The key of a base64 string of 32 bytes (as [`key_to_base64`] and
/// `gossipkv keygen` write it).
pub fn parse_key(text: &str) -> Result<Key, Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| Error::Keyring {
            message: format!("a key is 32 bytes in base64: {e}"),
        })?;
    let bytes: [u8; seal::KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| Error::Keyring {
        message: format!("a key is 32 bytes in base64, not {}", b.len()),
    })?;
    Ok(Key::from_bytes(bytes))
}

/// A key as base64 (for a keyring file; it is the secret itself).
pub fn key_to_base64(key: &Key) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.bytes())
}

/// What [`GossipKv::keyring_status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyringStatus {
    /// How plaintext is treated; `None` when the node has no keyring
    /// (everything goes in plaintext).
    pub encryption: Option<Encryption>,
    /// The node's keys, the primary first.
    pub keys: Vec<KeyStatus>,
    /// Live members other than this node.
    pub members: usize,
    /// Counters.
    pub stats: SealStats,
}

/// One key of a [`KeyringStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// The key's id.
    pub id: KeyId,
    /// Whether this node seals with it.
    pub primary: bool,
    /// Live members whose last sealed datagram named this key among theirs
    /// (they can open what it seals).
    pub members_holding: usize,
    /// Live members whose last sealed datagram was sealed with it.
    pub members_sealing: usize,
}

/// Datagrams sealed, opened and refused by a node with a keyring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealStats {
    /// Datagrams sealed and sent.
    pub sealed: u64,
    /// Sealed datagrams received that opened and were fresh.
    pub opened: u64,
    /// Plaintext datagrams accepted (only while
    /// [`Encryption::Permissive`]).
    pub plaintext_accepted: u64,
    /// Plaintext (or garbage) refused while encryption is required.
    pub refused_plaintext: u64,
    /// Sealed with a key this node does not hold.
    pub refused_unknown_key: u64,
    /// Truncated, forged or altered, or of another cluster or version.
    pub refused_forged: u64,
    /// Sealed longer ago than the replay window (or forgotten by a full
    /// replay guard).
    pub refused_stale: u64,
    /// Sealed further ahead of this node's clock than the replay window.
    pub refused_future: u64,
    /// Seen before.
    pub refused_replayed: u64,
    /// Datagrams the replay guard forgot within its window because it was
    /// full.
    pub replay_forgotten: u64,
    /// Stream records that did not open (the stream was dropped).
    pub streams_refused: u64,
}

#[derive(Default)]
struct Counters {
    sealed: AtomicU64,
    opened: AtomicU64,
    plaintext_accepted: AtomicU64,
    refused_plaintext: AtomicU64,
    refused_unknown_key: AtomicU64,
    refused_forged: AtomicU64,
    refused_stale: AtomicU64,
    refused_future: AtomicU64,
    refused_replayed: AtomicU64,
    streams_refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The keyring and the encryption setting, changed together.
struct State {
    keyring: Option<Keyring>,
    encryption: Encryption,
}

/// A node's sealing: shared by its transport, its stream tasks and its
/// handle.
pub(crate) struct Sealing {
    cluster_id: String,
    state: RwLock<State>,
    guard: Mutex<ReplayGuard>,
    peers: Mutex<HashMap<SocketAddr, Holdings>>,
    counters: Counters,
}

impl Sealing {
    pub(crate) fn new(
        cluster_id: String,
        keyring: Option<Keyring>,
        encryption: Encryption,
        replay_window: Duration,
    ) -> Sealing {
        let window = u64::try_from(replay_window.as_millis()).unwrap_or(u64::MAX);
        Sealing {
            cluster_id,
            state: RwLock::new(State {
                keyring,
                encryption,
            }),
            guard: Mutex::new(ReplayGuard::new(window, window, REPLAY_CAP)),
            peers: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// A fresh nonce: now, and 16 random bytes.
    fn nonce() -> [u8; seal::NONCE_LEN] {
        seal::nonce(wall_now().as_unix_ms(), rand::rng().random())
    }

    /// `plaintext` sealed, when this node seals what it sends.
    pub(crate) fn seal(&self, plaintext: &[u8]) -> Option<Vec<u8>> {
        let state = self.state.read();
        let ring = state
            .keyring
            .as_ref()
            .filter(|_| state.encryption.seals())?;
        bump(&self.counters.sealed);
        Some(seal_datagram(
            ring,
            &self.cluster_id,
            Self::nonce(),
            plaintext,
        ))
    }

    /// Opens the datagram in `buf` in place: the length of its plaintext,
    /// moved to the front of `buf`; or why it was refused.
    fn open(&self, from: SocketAddr, buf: &mut [u8]) -> Result<usize, String> {
        let state = self.state.read();
        let Some(ring) = &state.keyring else {
            return Ok(buf.len());
        };
        let opened = match open_datagram(ring, &self.cluster_id, buf) {
            Ok(o) => o,
            Err(OpenError::NotSealed) if state.encryption.accepts_plaintext() => {
                bump(&self.counters.plaintext_accepted);
                return Ok(buf.len());
            }
            Err(e) => {
                let c = &self.counters;
                bump(match e {
                    OpenError::NotSealed => &c.refused_plaintext,
                    OpenError::UnknownKey(_) => &c.refused_unknown_key,
                    _ => &c.refused_forged,
                });
                return Err(match e {
                    OpenError::NotSealed => "not sealed, and encryption is required".into(),
                    e => e.to_string(),
                });
            }
        };
        drop(state);
        if let Err(f) = self
            .guard
            .lock()
            .check(wall_now().as_unix_ms(), &opened.nonce)
        {
            let c = &self.counters;
            bump(match f {
                Freshness::Stale => &c.refused_stale,
                Freshness::Future => &c.refused_future,
                Freshness::Replayed => &c.refused_replayed,
            });
            let sent = seal::nonce_time(&opened.nonce);
            return Err(format!("{f} (sealed at {sent} ms since the epoch)"));
        }
        bump(&self.counters.opened);
        self.note_peer(from, opened.holdings);
        let len = opened.plaintext.len();
        buf.copy_within(opened.plaintext, 0);
        Ok(len)
    }

    /// Remembers which keys `from` holds.
    fn note_peer(&self, from: SocketAddr, holdings: Holdings) {
        let mut peers = self.peers.lock();
        if peers.get(&from) == Some(&holdings) {
            return;
        }
        if peers.len() >= PEER_KEYS_CAP && !peers.contains_key(&from) {
            // Full: forget an arbitrary half (members are counted only
            // among live addresses, which send again within a round).
            let drop: Vec<SocketAddr> = peers.keys().copied().step_by(2).collect();
            for a in drop {
                peers.remove(&a);
            }
        }
        peers.insert(from, holdings);
    }

    /// Whether streams are sealed: a keyring and a sealing setting.
    pub(crate) fn seals_streams(&self) -> bool {
        let s = self.state.read();
        s.keyring.is_some() && s.encryption.seals()
    }

    /// Whether a plaintext stream may be served.
    pub(crate) fn accepts_plain_streams(&self) -> bool {
        let s = self.state.read();
        s.keyring.is_none() || s.encryption.accepts_plaintext()
    }

    /// Counts a plaintext stream refused.
    pub(crate) fn refuse_plain_stream(&self) {
        bump(&self.counters.streams_refused);
    }

    /// Seals one stream record, or `None` without a keyring.
    pub(crate) fn seal_record(&self, dir: Direction, index: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let state = self.state.read();
        let ring = state.keyring.as_ref()?;
        Some(seal::seal_record(
            ring,
            &self.cluster_id,
            dir,
            index,
            Self::nonce(),
            plain,
        ))
    }

    /// Opens stream bytes with `reader`.
    pub(crate) fn open_records(
        &self,
        reader: &mut RecordReader,
        bytes: &[u8],
    ) -> Result<Vec<Vec<u8>>, String> {
        let state = self.state.read();
        let Some(ring) = &state.keyring else {
            return Err("a sealed stream, and this node has no keyring".into());
        };
        reader.push(ring, &self.cluster_id, bytes).map_err(|e| {
            bump(&self.counters.streams_refused);
            e.to_string()
        })
    }

    fn stats(&self) -> SealStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SealStats {
            sealed: get(&c.sealed),
            opened: get(&c.opened),
            plaintext_accepted: get(&c.plaintext_accepted),
            refused_plaintext: get(&c.refused_plaintext),
            refused_unknown_key: get(&c.refused_unknown_key),
            refused_forged: get(&c.refused_forged),
            refused_stale: get(&c.refused_stale),
            refused_future: get(&c.refused_future),
            refused_replayed: get(&c.refused_replayed),
            replay_forgotten: self.guard.lock().forgotten(),
            streams_refused: get(&c.streams_refused),
        }
    }

    fn change(
        &self,
        f: impl FnOnce(&mut Option<Keyring>, &mut Encryption) -> Result<(), KeyringError>,
    ) -> Result<(), Error> {
        let mut s = self.state.write();
        let State {
            keyring,
            encryption,
        } = &mut *s;
        f(keyring, encryption).map_err(|e| Error::Keyring {
            message: e.to_string(),
        })
    }
}

/// A transport that seals what it sends and opens what it receives; the
/// datagrams that do not open are dropped before decoding, counted and
/// reported.
pub(crate) struct SealedTransport<T> {
    pub(crate) inner: T,
    pub(crate) sealing: Arc<Sealing>,
    pub(crate) reporter: Reporter,
}

impl<T: Transport> Transport for SealedTransport<T> {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn max_datagram_size(&self) -> usize {
        self.inner.max_datagram_size()
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> Result<(), TransportError> {
        match self.sealing.seal(buf) {
            Some(sealed) => self.inner.send_to(&sealed, target).await,
            None => self.inner.send_to(buf, target).await,
        }
    }

    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), TransportError> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            match self.sealing.open(from, &mut buf[..n]) {
                Ok(len) => return Ok((len, from)),
                Err(reason) => {
                    tracing::debug!(%from, %reason, "datagram refused before decoding");
                    self.reporter
                        .report(NetworkError::Unopened { from, reason });
                }
            }
        }
    }
}

impl<K, V> GossipKv<K, V>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    fn sealing(&self) -> Result<&Arc<Sealing>, Error> {
        self.inner.sealing.as_ref().ok_or_else(|| Error::Keyring {
            message: "a local-only node has no keyring".into(),
        })
    }

    /// Adds a key to this node's keyring: it opens at once, and seals once
    /// made primary with [`use_key`](GossipKv::use_key). On a node without
    /// a keyring it becomes the primary key of a new one, with encryption
    /// [`Permissive`](Encryption::Permissive) and nothing sealed yet (the
    /// first step of a migration; see [`set_encryption`](GossipKv::set_encryption)).
    ///
    /// The keyring lives in memory: a node started again gets the keyring
    /// its builder gives it.
    pub fn install_key(&self, key: Key) -> Result<(), Error> {
        self.sealing()?.change(|ring, enc| match ring {
            Some(r) => r.install(key),
            None => {
                *ring = Some(Keyring::new(key));
                *enc = Encryption::Permissive {
                    seal_outgoing: false,
                };
                Ok(())
            }
        })
    }

    /// Makes the key `id` primary: what this node sends is sealed with it.
    /// Install it on every node first ([`keyring_status`] shows how many
    /// hold it), or they cannot open what this node sends.
    ///
    /// [`keyring_status`]: GossipKv::keyring_status
    pub fn use_key(&self, id: KeyId) -> Result<(), Error> {
        self.sealing()?.change(|ring, _| match ring {
            Some(r) => r.use_key(id),
            None => Err(KeyringError::Unknown(id)),
        })
    }

    /// Removes a key that is not primary. Wait until no member seals with
    /// it any more ([`keyring_status`]), or what they send is refused.
    ///
    /// [`keyring_status`]: GossipKv::keyring_status
    pub fn remove_key(&self, id: KeyId) -> Result<(), Error> {
        self.sealing()?.change(|ring, _| match ring {
            Some(r) => r.remove(id),
            None => Err(KeyringError::Unknown(id)),
        })
    }

    /// Changes how plaintext is treated (the steps of a migration).
    /// Refused on a node without a keyring.
    pub fn set_encryption(&self, encryption: Encryption) -> Result<(), Error> {
        let s = self.sealing()?;
        if s.state.read().keyring.is_none() {
            return Err(Error::Keyring {
                message: "install a key before changing the encryption setting".into(),
            });
        }
        s.change(|_, enc| {
            *enc = encryption;
            Ok(())
        })
    }

    /// This node's keys, how many live members hold and seal with each,
    /// and the counters of what was sealed, opened and refused. Key
    /// material is never part of it.
    pub fn keyring_status(&self) -> KeyringStatus {
        let Some(s) = &self.inner.sealing else {
            return KeyringStatus {
                encryption: None,
                keys: Vec::new(),
                members: 0,
                stats: SealStats::default(),
            };
        };
        let live: Vec<SocketAddr> = self
            .members()
            .into_iter()
            .filter(|m| {
                m.node_id != self.inner.node_id
                    && matches!(m.state, MemberState::Alive | MemberState::Suspect)
            })
            .map(|m| m.addr)
            .collect();
        let peers = s.peers.lock().clone();
        let state = s.state.read();
        let keys = state
            .keyring
            .iter()
            .flat_map(|r| r.keys())
            .enumerate()
            .map(|(i, k)| {
                let of = |a: &SocketAddr| peers.get(a);
                KeyStatus {
                    id: k.id(),
                    primary: i == 0,
                    members_holding: live
                        .iter()
                        .filter(|a| of(a).is_some_and(|h| h.ids().contains(&k.id())))
                        .count(),
                    members_sealing: live
                        .iter()
                        .filter(|a| of(a).is_some_and(|h| h.primary() == k.id()))
                        .count(),
                }
            })
            .collect();
        KeyringStatus {
            encryption: state.keyring.as_ref().map(|_| state.encryption),
            keys,
            members: live.len(),
            stats: s.stats(),
        }
    }
}
