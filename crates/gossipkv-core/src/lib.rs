//! # gossipkv-core
//!
//! The gossip protocol of gossipkv as a sans-IO state machine, in the shape
//! of `quinn-proto`: [`Protocol`] takes time, randomness (a seed) and bytes
//! as inputs, and hands back datagrams ([`Transmit`]), timers
//! ([`Protocol::poll_timeout`]) and events ([`Event`]). The driving contract
//! is written once, on [`Protocol`].
//!
//! What it replicates is a [`gossipkv_storage::Store`]: anti-entropy
//! (Syn / SynAck / Ack with digests and deltas, short and hash-only forms),
//! eager push of fresh writes, re-synchronisation by pages for peers that
//! fell below a collected floor, large values as fragmented envelopes,
//! early collection of superseded writes, and SWIM membership (probes,
//! suspicion, rumors, member-list reconciliation). Guards keep hostile and
//! broken peers from speaking for this node's own origin or pulling its
//! clock to the end of time (see [`ProtocolConfig::max_clock_drift`]).
//!
//! What this crate deliberately does **not** do: no sockets, no async
//! runtime, no clock reads, no global random generator, and no iteration
//! over randomly seeded hash maps (its maps are ordered), so the same inputs
//! always give the same outputs. `xtask/tests/tidy.rs` checks these rules.
//! The `gossipkv` crate drives a `Protocol` from a tokio task over UDP; the
//! `gossipkv-sim` crate drives thousands of them in virtual time.
//!
//! ```
//! use std::sync::Arc;
//! use gossipkv_core::{Instant, Protocol, ProtocolConfig, WallTime};
//! use gossipkv_storage::{Origin, Store};
//!
//! let mut cfg = ProtocolConfig::new("a", 1, "demo");
//! cfg.seeds = vec!["127.0.0.1:7001".parse().unwrap()];
//! let store = Arc::new(Store::new(Origin::new("a", 1)));
//! let mut node = Protocol::new(cfg, store, Instant::from_millis(0));
//!
//! // The first round is due at once: a Syn to the seed.
//! let due = node.poll_timeout().unwrap();
//! node.handle_timeout(due, WallTime::from_unix_ms(1_767_225_600_000));
//! let datagram = node.poll_transmit().expect("a Syn");
//! assert_eq!(datagram.to, "127.0.0.1:7001".parse().unwrap());
//! assert!(node.poll_timeout().unwrap() > due);
//! ```

mod address;
mod config;
mod context;
mod event;
mod exchange;
mod guard;
mod hash;
mod large;
mod marks;
mod newcomers;
mod outbox;
mod owners;
mod peers;
mod protocol;
mod push;
mod reassembly;
mod resync;
mod retire;
mod stats;
mod stream;
mod swim;
mod synced;
mod time;

#[cfg(test)]
mod tests;

pub use config::{
    ProtocolConfig, CLOCK_SKEW_REPORT, DEFAULT_EPHEMERAL_GRACE, DEFAULT_FANOUT,
    DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_DRIFT, DEFAULT_MAX_SERVING_STREAMS,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_PACKET_SIZE, DEFAULT_STREAM_FRAME_SIZE,
    DEFAULT_STREAM_THRESHOLD, DEFAULT_TOMBSTONE_RETENTION, MAX_NODE_ID_LEN, MAX_PACKET_SIZE,
    MAX_VALUE_SIZE_LIMIT, MESSAGE_SLACK, MIN_PACKET_SIZE, PUSH_DIRECT_MAX,
};
pub use event::{Event, NetworkError, Transmit};
pub use newcomers::{
    MAX_ORIGINS, SOURCE_BURST, SOURCE_PER_INTERVAL, STRANGERS_BURST, STRANGERS_PER_INTERVAL,
};
pub use peers::Directory;
pub use protocol::Protocol;
pub use stats::{KindCount, MessageKind, Stats};
pub use stream::{StreamId, StreamOpen, StreamRefused, StreamSend};
pub use swim::{DetectorConfig, Member, MemberEvent, MemberState, MAX_MEMBERS};
pub use time::{Instant, WallTime};
