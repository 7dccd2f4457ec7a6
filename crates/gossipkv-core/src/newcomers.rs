//! How many origins the network may add to this node's origin table.
//!
//! Every record names its origin (a node id and a generation), and a record
//! of an origin the store does not know adds one to its origin table, to
//! every digest this node sends, and to every round's work. Without a bound,
//! one datagram could name thousands of made-up origins and every datagram
//! after it thousands more. So origins new here are admitted against
//! allowances, checked by the guards (`guard.rs`) before anything reaches
//! the store:
//!
//! - **Per source.** A trusted source (an address that showed it receives
//!   what we send, or a live member's) may introduce
//!   [`ProtocolConfig::origin_burst`] new origins at once (default
//!   [`SOURCE_BURST`]), then [`ProtocolConfig::origins_per_interval`] per
//!   gossip interval (default [`SOURCE_PER_INTERVAL`]).
//!   Untrusted sources (strangers, and spoofed addresses) share one small
//!   allowance, [`STRANGERS_BURST`] then [`STRANGERS_PER_INTERVAL`]: a
//!   spoofer cannot multiply it by forging addresses.
//! - **In all.** Once [`MAX_ORIGINS`] origins are active here (known and not
//!   retired), no new one is admitted from anyone.
//! - **Members are exempt.** The current generation of a node in the member
//!   table (in any state) is admitted whatever the allowances and the cap:
//!   the table is bounded by itself ([`MAX_MEMBERS`](crate::MAX_MEMBERS)),
//!   and a cap filled with made-up origins (which never retire: their node
//!   was never a member) must not shut out the writes of a node that joins
//!   later. So active origins stay below `MAX_ORIGINS + MAX_MEMBERS`.
//!
//! Allowances are per source *address*: without a keyring, a spoofer that
//! forges the addresses of members or of validated peers gets their
//! allowances, and can fill the cap with made-up origins in a few
//! datagrams (then only members' new generations get in). A keyring is the
//! defence against that: only key holders are heard at all.
//!
//! What is not admitted is dropped as if it had been lost on the way, which
//! anti-entropy already tolerates, and the message it came in then vouches
//! for nothing (see `guard.rs`): a chunk of a new origin goes whole, a
//! record of one goes, and no chunk of that delta raises a watermark (a
//! later chunk may rely on a record the sender put in an earlier one); a
//! page is applied without such records, keeping what this node holds of
//! their keys, and its re-synchronisation pass raises nothing; a stream
//! stops at such a frame. Peers send it all again in a later round or
//! pass, once the allowance has refilled. The origins only a page's
//! watermarks name are introduced when its pass ends: the pass raises
//! those within the sender's allowance, and a later pass the others. A
//! joiner's first peers legitimately introduce every origin of the
//! cluster: up to the burst per peer arrive at once, and a cluster with
//! more origins than that takes more rounds (or passes) as the allowances
//! refill.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_storage::{Origin, Store};
use rand::Rng;

use crate::config::ProtocolConfig;
use crate::time::Instant;

/// Most active origins (known and not retired) this node takes from the
/// network; new ones past it are refused.
pub const MAX_ORIGINS: usize = 16_384;
/// New origins one trusted source may introduce at once, by default
/// ([`ProtocolConfig::origin_burst`]).
pub const SOURCE_BURST: u32 = 4_096;
/// New origins a trusted source's allowance regains per gossip interval,
/// by default ([`ProtocolConfig::origins_per_interval`]).
pub const SOURCE_PER_INTERVAL: u32 = 64;
/// New origins all untrusted sources together may introduce at once.
pub const STRANGERS_BURST: u32 = 64;
/// New origins the untrusted sources' shared allowance regains per interval.
pub const STRANGERS_PER_INTERVAL: u32 = 4;
/// Most trusted sources with an allowance of their own held at once.
const MAX_SOURCES: usize = crate::address::MAX_ADDRESSES;

/// An allowance of new origins that refills with time.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    left: u32,
    refilled: Instant,
}

impl Allowance {
    fn full(burst: u32, now: Instant) -> Self {
        Allowance {
            left: burst,
            refilled: now,
        }
    }

    /// Adds what the time since the last refill earned, up to `burst`.
    fn refill(&mut self, now: Instant, interval: Duration, burst: u32, per: u32) {
        let interval = interval.max(Duration::from_millis(1));
        let elapsed = now.saturating_since(self.refilled);
        if elapsed < interval {
            return;
        }
        let periods = elapsed.as_nanos() / interval.as_nanos();
        match u32::try_from(periods) {
            // What is left of the current interval counts toward the next.
            Ok(periods) if periods < burst => {
                let earned = per.saturating_mul(periods);
                self.left = self.left.saturating_add(earned).min(burst);
                self.refilled = self.refilled + interval * periods;
            }
            _ => {
                self.left = burst;
                self.refilled = now;
            }
        }
    }
}

/// Which allowance a message is charged to.
#[derive(Debug, Clone, Copy)]
enum Payer {
    Source(SocketAddr),
    Strangers,
}

/// The allowances (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Newcomers {
    sources: BTreeMap<SocketAddr, Allowance>,
    strangers: Option<Allowance>,
}

/// What one message may still introduce while it is screened.
#[derive(Debug)]
pub(crate) struct Admission {
    payer: Payer,
    /// New origins this message may still introduce.
    left: u32,
    /// Origins of this message already looked at, with whether admitted.
    seen: BTreeMap<Origin, bool>,
    /// New origins admitted.
    pub(crate) admitted: u32,
    /// Distinct new origins refused.
    pub(crate) refused: u32,
}

impl Newcomers {
    /// Opens the screening of a message from `from` (`trusted`: see the
    /// module documentation) at `now`.
    pub(crate) fn open(
        &mut self,
        store: &Store,
        cfg: &ProtocolConfig,
        (from, trusted): (SocketAddr, bool),
        now: Instant,
    ) -> Admission {
        let interval = cfg.interval();
        let (payer, left) = if trusted {
            let burst = cfg.origin_burst;
            let left = self.sources.get_mut(&from).map_or(burst, |a| {
                a.refill(now, interval, burst, cfg.origins_per_interval);
                a.left
            });
            (Payer::Source(from), left)
        } else {
            let a = self
                .strangers
                .get_or_insert(Allowance::full(STRANGERS_BURST, now));
            a.refill(now, interval, STRANGERS_BURST, STRANGERS_PER_INTERVAL);
            (Payer::Strangers, a.left)
        };
        let room = MAX_ORIGINS.saturating_sub(store.active_origins());
        Admission {
            payer,
            left: left.min(u32::try_from(room).unwrap_or(u32::MAX)),
            seen: BTreeMap::new(),
            admitted: 0,
            refused: 0,
        }
    }

    /// Charges what `adm` admitted to its payer.
    pub(crate) fn close(
        &mut self,
        adm: &Admission,
        cfg: &ProtocolConfig,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        if adm.admitted == 0 {
            return;
        }
        match adm.payer {
            Payer::Strangers => {
                let a = self
                    .strangers
                    .get_or_insert(Allowance::full(STRANGERS_BURST, now));
                a.left = a.left.saturating_sub(adm.admitted);
            }
            Payer::Source(addr) => {
                let mut a = self
                    .sources
                    .get(&addr)
                    .copied()
                    .unwrap_or(Allowance::full(cfg.origin_burst, now));
                a.left = a.left.saturating_sub(adm.admitted);
                self.insert_source(addr, a, cfg.origin_burst, rng);
            }
        }
    }

    /// Stores `addr`'s allowance; at the cap, another source's goes first
    /// (a full one if there is one: dropping it changes nothing).
    fn insert_source(&mut self, addr: SocketAddr, a: Allowance, burst: u32, rng: &mut impl Rng) {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&addr) {
            let full = self
                .sources
                .iter()
                .find(|(_, a)| a.left >= burst)
                .map(|(k, _)| *k);
            let victim = full.or_else(|| {
                let skip = rng.random_range(0..self.sources.len());
                self.sources.keys().nth(skip).copied()
            });
            if let Some(victim) = victim {
                self.sources.remove(&victim);
            }
        }
        self.sources.insert(addr, a);
    }

    /// Number of sources with an allowance of their own (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }
}

impl Admission {
    /// Whether a record (or chunk, or watermark) of `origin` may reach the
    /// store: its origin is known there, or is the current generation of a
    /// member (`member`, asked only then: members are bounded by their own
    /// table), or is admitted now.
    pub(crate) fn admits(
        &mut self,
        store: &Store,
        origin: &Origin,
        member: impl FnOnce() -> bool,
    ) -> bool {
        if let Some(&ok) = self.seen.get(origin) {
            return ok;
        }
        let ok = if store.knows_origin(origin) || member() {
            true
        } else if let Some(left) = self.left.checked_sub(1) {
            self.left = left;
            self.admitted += 1;
            true
        } else {
            self.refused += 1;
            false
        };
        self.seen.insert(origin.clone(), ok);
        ok
    }
}
