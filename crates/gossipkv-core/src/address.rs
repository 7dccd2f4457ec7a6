//! Address validation, so that a node cannot be used as a reflector: a
//! datagram's source address is whatever its sender wrote there, and a
//! small spoofed request must not draw a large answer toward a victim.
//!
//! The rule is QUIC's (RFC 9000, section 8): until an address has shown that
//! it receives what is sent to it, what we send there in answer to datagrams
//! is at most [`AMPLIFICATION`] times the bytes received from it, never a
//! fragmented message (large values, pages), and no more than the reply rate
//! any one source is allowed. An address shows it by sending back a token:
//! every envelope to an address not (or no longer) validated, and not a
//! live member's, carries `addr_token`, a keyed hash of that address
//! (SipHash-1-3 under a secret key, so nothing is stored per token), and the
//! peer sends back the last token it got from us in `addr_echo` until our
//! envelopes stop carrying one. A spoofer never sees the token sent to the
//! address it forges.
//!
//! Live members' addresses are trusted as validated ones are: a member is
//! made only from a validated address (see `protocol/input.rs`) or named by
//! a member, so the limit applies to strangers (joiners before their first
//! round trip, and spoofed sources) and a formed cluster pays nothing for
//! it. What is not charged either: datagrams we send of our own accord
//! (rounds, probes, pushes of local writes) go to members and seeds at the
//! protocol's own pace, whatever the network sends us. Every map here is
//! capped.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::time::Duration;

use gossipkv_proto::{encoded_len, Body, Envelope};
use rand::Rng;
use siphasher::sip::SipHasher13;
use tracing::debug;

use crate::context::Context;
use crate::time::Instant;

/// An unvalidated address may be sent at most this many times the bytes
/// received from it.
pub(crate) const AMPLIFICATION: u64 = 3;
/// Bytes the address token and echo add to an envelope, at most.
pub(crate) const ADDR_FIELDS: usize = 18;
/// Most addresses held in each map (validated, sources, tokens to echo).
pub(crate) const MAX_ADDRESSES: usize = crate::swim::MAX_MEMBERS;
/// A validation lasts this many gossip intervals (at least a minute); it is
/// renewed once half of it has passed, by a token sent again.
const VALID_ROUNDS: u32 = 300;
/// Replies a source may draw in a burst, and per gossip interval after it.
/// A member draws a few per interval (answers to its Syns and probes).
pub(crate) const REPLY_BURST: u32 = 256;
pub(crate) const REPLIES_PER_INTERVAL: u32 = 64;

/// How an address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It showed recently that it receives what we send.
    Validated,
    /// Validated, but a new token is due to renew it.
    Renewing,
    /// Never shown, or too long ago.
    Unvalidated,
}

/// What we know of one source address: bytes exchanged while unvalidated,
/// and its reply allowance.
#[derive(Debug, Clone, Copy)]
struct Source {
    received: u64,
    sent: u64,
    replies: u32,
    refilled: Instant,
}

/// Address validation state (see the module documentation).
#[derive(Debug)]
pub(crate) struct Addresses {
    key: (u64, u64),
    valid_for: Duration,
    interval: Duration,
    /// When each validated address last showed it receives.
    validated: BTreeMap<SocketAddr, Instant>,
    sources: BTreeMap<SocketAddr, Source>,
    /// The tokens peers gave us, to send back to them.
    echoes: BTreeMap<SocketAddr, u64>,
}

impl Addresses {
    /// `key`: the secret of tokens (never sent); `interval`: the gossip
    /// interval.
    pub(crate) fn new(key: u128, interval: Duration) -> Self {
        Addresses {
            key: ((key >> 64) as u64, key as u64),
            valid_for: (interval * VALID_ROUNDS).max(Duration::from_secs(60)),
            interval,
            validated: BTreeMap::new(),
            sources: BTreeMap::new(),
            echoes: BTreeMap::new(),
        }
    }

    /// The token for `addr`: never 0 (0 means none on the wire).
    pub(crate) fn token(&self, addr: SocketAddr) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        match addr.ip() {
            IpAddr::V4(ip) => h.write(&ip.octets()),
            IpAddr::V6(ip) => h.write(&ip.octets()),
        }
        h.write_u16(addr.port());
        h.finish().max(1)
    }

    /// How `addr` stands at `now`.
    pub(crate) fn standing(&self, addr: SocketAddr, now: Instant) -> Standing {
        match self.validated.get(&addr) {
            Some(&at) if now.saturating_since(at) < self.valid_for / 2 => Standing::Validated,
            Some(&at) if now.saturating_since(at) < self.valid_for => Standing::Renewing,
            _ => Standing::Unvalidated,
        }
    }

    /// The token to send back to `addr`, if it gave us one.
    pub(crate) fn echo(&self, addr: SocketAddr) -> u64 {
        self.echoes.get(&addr).copied().unwrap_or(0)
    }

    /// A datagram of `len` bytes from `from`, whose envelope carried `token`
    /// and `echo`, and whose sender advertises `advertised`. Returns whether
    /// this validated (or renewed) an address that was not freshly validated.
    pub(crate) fn on_datagram(
        &mut self,
        (now, rng): (Instant, &mut impl Rng),
        (from, advertised): (SocketAddr, Option<SocketAddr>),
        len: usize,
        (token, echo): (u64, u64),
    ) -> bool {
        if token != 0 {
            insert_capped(&mut self.echoes, from, token, rng);
        } else {
            // Its envelopes stopped carrying one: it validated us.
            self.echoes.remove(&from);
        }
        // The echo proves the sender receives at its source address, or at
        // the address it advertises (where we send to members).
        let proven = [Some(from), advertised]
            .into_iter()
            .flatten()
            .find(|a| echo != 0 && echo == self.token(*a));
        if let Some(addr) = proven {
            let fresh = self.standing(addr, now) != Standing::Validated;
            self.validate(addr, now);
            return fresh;
        }
        if self.standing(from, now) == Standing::Unvalidated {
            let source = self.source(from, now, rng);
            source.received = source.received.saturating_add(len as u64);
        }
        false
    }

    /// Notes that `addr` showed it receives, at `now`.
    pub(crate) fn validate(&mut self, addr: SocketAddr, now: Instant) {
        if self.validated.len() >= MAX_ADDRESSES && !self.validated.contains_key(&addr) {
            // Only a round trip adds an entry: the oldest goes.
            let oldest = self
                .validated
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.validated.remove(&oldest);
            }
        }
        self.validated.insert(addr, now);
    }

    /// Bytes an unvalidated `addr` may still be sent in answer.
    pub(crate) fn credit(&self, addr: SocketAddr) -> u64 {
        self.sources.get(&addr).map_or(0, |s| {
            (s.received.saturating_mul(AMPLIFICATION)).saturating_sub(s.sent)
        })
    }

    /// Charges `len` bytes sent in answer to an unvalidated `addr`; false
    /// (nothing charged) when its credit does not cover them.
    pub(crate) fn charge(&mut self, addr: SocketAddr, len: usize) -> bool {
        if self.credit(addr) < len as u64 {
            return false;
        }
        if let Some(s) = self.sources.get_mut(&addr) {
            s.sent = s.sent.saturating_add(len as u64);
        }
        true
    }

    /// Takes one reply from `addr`'s allowance; false when it is spent.
    pub(crate) fn take_reply(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        rng: &mut impl Rng,
    ) -> bool {
        let interval = self.interval.max(Duration::from_millis(1));
        let source = self.source(addr, now, rng);
        let elapsed = now.saturating_since(source.refilled);
        if elapsed >= interval {
            let periods = (elapsed.as_nanos() / interval.as_nanos()).min(u128::from(REPLY_BURST));
            let add = REPLIES_PER_INTERVAL.saturating_mul(periods as u32);
            source.replies = source.replies.saturating_add(add).min(REPLY_BURST);
            source.refilled = now;
        }
        match source.replies.checked_sub(1) {
            Some(left) => {
                source.replies = left;
                true
            }
            None => false,
        }
    }

    /// `addr`'s entry, made (and another dropped at the cap) when new.
    fn source(&mut self, addr: SocketAddr, now: Instant, rng: &mut impl Rng) -> &mut Source {
        if !self.sources.contains_key(&addr) {
            let fresh = Source {
                received: 0,
                sent: 0,
                replies: REPLY_BURST,
                refilled: now,
            };
            insert_capped(&mut self.sources, addr, fresh, rng);
        }
        self.sources.get_mut(&addr).expect("inserted above")
    }

    /// Sizes of the maps, for tests that check they stay bounded.
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> [usize; 3] {
        [self.validated.len(), self.sources.len(), self.echoes.len()]
    }
}

impl Context {
    /// Whether `to` is trusted to receive what we send: it showed it (a
    /// token sent back), or it is a live member's address (members are
    /// made only from validated addresses, or named by members).
    pub(crate) fn trusted(&self, to: SocketAddr) -> bool {
        self.addrs.standing(to, self.now) != Standing::Unvalidated || self.peers.is_live_addr(to)
    }

    /// Bytes that may still go to `to` in answer to the datagram being
    /// handled: its credit when it is not trusted, otherwise no limit.
    pub(crate) fn answer_room(&self, to: SocketAddr) -> usize {
        if self.answering.is_some() && !self.trusted(to) {
            usize::try_from(self.addrs.credit(to)).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        }
    }

    /// Bytes for the body of an answer to `to` (see [`Self::answer_room`]):
    /// a datagram's body, or less when its credit is smaller.
    pub(crate) fn answer_body(&self, to: SocketAddr) -> usize {
        let overhead = self.cfg.packet_size.saturating_sub(self.sizes.body) + ADDR_FIELDS;
        self.sizes
            .body
            .min(self.answer_room(to).saturating_sub(overhead))
    }

    /// Stamps `env` with the address fields for `to` and decides whether
    /// it may go there: answers to a source past its reply allowance do
    /// not, nor do answers to an untrusted address past its credit, nor
    /// fragmented messages to an untrusted address. Refusals are counted.
    pub(crate) fn admit(&mut self, to: SocketAddr, env: &mut Envelope) -> bool {
        let standing = self.addrs.standing(to, self.now);
        let member = self.peers.is_live_addr(to);
        if standing != Standing::Validated && !member {
            env.addr_token = self.addrs.token(to);
        }
        env.addr_echo = self.addrs.echo(to);
        if self.answering == Some(to) && !self.addrs.take_reply(to, self.now, &mut self.rng) {
            self.stats.replies_rate_limited += 1;
            debug!(%to, "reply allowance spent; answer not sent");
            return false;
        }
        let admitted = member || standing != Standing::Unvalidated || self.admit_untrusted(to, env);
        self.answered |= admitted && self.answering == Some(to);
        admitted
    }

    /// The rest of [`Self::admit`], for an address that is neither
    /// validated nor a live member's.
    fn admit_untrusted(&mut self, to: SocketAddr, env: &mut Envelope) -> bool {
        let len = encoded_len(env);
        if self.answering.is_none() && matches!(env.body, Body::Syn(_)) {
            // A first contact, most likely unvalidated there too: to a seed,
            // a whole datagram, so that the answer it allows (three times
            // that) holds a full answer with member entries (the field's tag
            // and length prefix take at most 3 bytes). Not to other
            // addresses: they came from the network.
            if self.cfg.seeds.contains(&to) || self.discovered.contains(&to) {
                env.padding = self.cfg.packet_size.saturating_sub(len + 3);
            }
            return true;
        }
        let fits = len <= self.cfg.packet_size;
        let refused = !fits || (self.answering.is_some() && !self.addrs.charge(to, len));
        if refused {
            self.stats.unvalidated_refused += 1;
            debug!(%to, len, "not sent to an address that has not shown it receives");
            return false;
        }
        true
    }
}

/// Inserts into a map fed by any datagram: at the cap, an entry picked at
/// random goes first (a flood of spoofed sources cannot choose which). For
/// the sources, dropping an entry forgets bytes received and sent alike, so
/// what was sent to an address never exceeds [`AMPLIFICATION`] times what
/// came from it.
fn insert_capped<V>(
    map: &mut BTreeMap<SocketAddr, V>,
    key: SocketAddr,
    value: V,
    rng: &mut impl Rng,
) {
    if map.len() >= MAX_ADDRESSES && !map.contains_key(&key) {
        let pivot = random_like(key, rng);
        let victim = map
            .range((Bound::Included(pivot), Bound::Unbounded))
            .next()
            .or_else(|| map.iter().next())
            .map(|(k, _)| *k);
        if let Some(victim) = victim {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

/// A random address of `like`'s family.
fn random_like(like: SocketAddr, rng: &mut impl Rng) -> SocketAddr {
    let ip = match like.ip() {
        IpAddr::V4(_) => IpAddr::from(rng.random::<[u8; 4]>()),
        IpAddr::V6(_) => IpAddr::from(rng.random::<[u8; 16]>()),
    };
    SocketAddr::new(ip, rng.random())
}
