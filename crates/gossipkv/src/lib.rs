//! # gossipkv
//!
//! An embedded, decentralized, eventually consistent key-value store. Every
//! process that embeds it runs one node, and every node is equal: any node
//! may write any key, writes spread to the others by gossip over UDP, and
//! replicas merge last-writer-wins on hybrid logical clocks, so once writes
//! stop every live, connected node holds the same value for every key.
//! There is no server and no leader, and losing a node breaks nothing.
//!
//! **What it is:** a small replicated map for configuration, feature flags,
//! service metadata and similar state that every process of a service
//! should see, with local reads and writes that never wait for the network.
//!
//! **What it is not:** a database. There is no persistence, no encryption or
//! authentication, and no strong consistency: no transactions, no
//! compare-and-set, no linearizable reads. Of two concurrent writes to a
//! key, one wins and the other is lost. See [Limits](#limits).
//!
//! ## Quick start
//!
//! Two nodes on loopback: a write on one reaches the other a few
//! milliseconds later, so the reader waits for it (with a deadline) instead
//! of reading right after the write.
//!
//! ```
//! use std::time::{Duration, Instant};
//!
//! use gossipkv::{Error, GossipKv};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Error> {
//!     // Port 0 picks a free port; loopback keeps the example on this host.
//!     let a = GossipKv::<String, String>::builder()
//!         .node_id("node-a")
//!         .bind_addr("127.0.0.1:0")
//!         .gossip_interval(Duration::from_millis(100))
//!         .build()
//!         .await?;
//!     let b = GossipKv::<String, String>::builder()
//!         .node_id("node-b")
//!         .bind_addr("127.0.0.1:0")
//!         .gossip_interval(Duration::from_millis(100))
//!         .seeds([a.local_addr().expect("bound").to_string()])
//!         .build()
//!         .await?;
//!
//!     // Local: returns as soon as the write is in a's replica.
//!     a.set("version", "v1.0.1".to_string())?;
//!
//!     // Gossip carries it to b.
//!     let deadline = Instant::now() + Duration::from_secs(10);
//!     while b.get("version")?.is_none() {
//!         assert!(Instant::now() < deadline, "not replicated within 10 s");
//!         tokio::time::sleep(Duration::from_millis(10)).await;
//!     }
//!     assert_eq!(b.get("version")?.as_deref(), Some("v1.0.1"));
//!
//!     // Leave the cluster: peers see both nodes as Left at once.
//!     a.shutdown().await?;
//!     b.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! A node built without [`bind_addr`](Builder::bind_addr) is a local
//! in-memory store that never touches the network (and needs no runtime).
//! A networked node must be built inside a tokio runtime with I/O and time
//! enabled (`#[tokio::main]` does that); elsewhere
//! [`build`](Builder::build) returns [`Error::NoRuntime`]. [`GossipKv`]
//! handles are cheap to clone and share one node.
//!
//! [`GossipKv::builder`] fixes the key type to `String`, so the value type
//! can be inferred from use (`GossipKv::builder().build().await?` then
//! `kv.set("k", Bytes::from_static(b"v"))`), or named, as above. See
//! [`Builder`] for every option and [`Builder::key_type`] for other key
//! types.
//!
//! ## Values and codecs
//!
//! Values of type `V` are stored as bytes made by the node's [`Codec`].
//! [`GossipKv::builder`] uses [`DefaultCodec`]: `String`, `Vec<u8>` and
//! [`Bytes`] as their raw bytes, any other `Serialize + DeserializeOwned`
//! type as JSON. [`GossipKv::builder_with_codec`] takes any codec
//! ([`JsonCodec`], [`StringCodec`], [`BytesCodec`], or your own). Every node
//! must use the same codec and value type for a key: a value that does not
//! decode is an [`Error::Codec`] naming the key from [`GossipKv::get`],
//! is left out of [`GossipKv::scan_prefix`] (and logged), and is shown with
//! its error by [`GossipKv::scan_prefix_checked`] and by watchers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gossipkv::Error> {
//! use gossipkv::GossipKv;
//!
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Flag {
//!     enabled: bool,
//!     rollout: u8,
//! }
//!
//! let kv = GossipKv::<String, Flag>::builder().build().await?;
//! kv.set("flags/new-ui", Flag { enabled: true, rollout: 25 })?; // JSON
//! for (key, flag) in kv.scan_prefix("flags/")? {
//!     println!("{key}: {flag:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! ## Watching keys
//!
//! [`GossipKv::watch`] returns a [`Watcher`] of the keys under a prefix. Its
//! `recv().await` yields a [`WatchEvent`] for every change applied on this
//! node, local or remote: `value: Some(v)` for a write, `value: None` for a
//! delete, and `value: None` with [`WatchEvent::error`] set for a value that
//! does not decode. A watcher never slows the node down: one that falls more
//! than [`WATCH_QUEUE`] changes behind is told how many it
//! [`missed`](WatchEvent::missed). After shutdown it delivers what was
//! already queued, then `None`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gossipkv::Error> {
//! use gossipkv::GossipKv;
//!
//! let kv = GossipKv::<String, String>::builder().build().await?;
//! let mut watcher = kv.watch("cfg/");
//! kv.set("cfg/color", "blue".to_string())?;
//! kv.delete("cfg/color")?;
//! kv.shutdown().await?;
//! while let Some(event) = watcher.recv().await {
//!     match (event.value, event.error) {
//!         (Some(value), _) => println!("{} = {value}", event.key),
//!         (None, None) => println!("{} deleted", event.key),
//!         (None, Some(e)) => println!("{} does not decode: {e}", event.key),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## Membership and member events
//!
//! Nodes find each other through seeds ([`Builder::seeds`], `host:port`),
//! through gossip (a node seeded with one address learns the whole cluster)
//! and optionally mDNS ([`Builder::discovery`]). A SWIM-style failure
//! detector probes members. [`GossipKv::members`] lists every [`Member`]
//! this node knows, itself first, each [`MemberState::Alive`], `Suspect`,
//! `Dead` or `Left`; [`GossipKv::member_events`] streams [`MemberEvent`]s
//! (`Joined`, `Suspect`, `Alive`, `Dead`, `Left`, `Rejoined`, `Forgotten`).
//! Node ids compare with strings: `member.node_id == "node-a"`. Peers are
//! identified by node id, so ids must be unique in a cluster.
//!
//! ## Health
//!
//! Problems seen on the network never stop a node; they go to the
//! [error handler](Builder::error_handler), if any, as [`NetworkError`]s,
//! and are always kept in [`GossipKv::health`]: a [`Health`] with the live
//! peers and each [`Problem`] by [`ProblemKind`]. Check it at startup or
//! from a readiness probe: a node configured with the id of another, or a
//! cluster id that differs from its peers', never shares data, and this is
//! where it shows.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gossipkv::Error> {
//! # let kv = gossipkv::GossipKv::<String, String>::builder().build().await?;
//! let health = kv.health();
//! if !health.is_healthy() {
//!     eprintln!("gossipkv: {health}"); // one line, problems included
//! }
//! # Ok(()) }
//! ```
//!
//! A node that just joined or restarted holds less than the cluster until it
//! has caught up: [`GossipKv::synced`] waits for that (it exchanged digests
//! with a live member and held everything that member vouched for), and
//! [`GossipKv::is_synced`] says it without waiting. Both fit a readiness
//! probe beside `health`. A node far behind catches up in bulk, over a
//! stream from one peer (see [`Builder::streams`]); [`GossipKv::join`]
//! contacts more addresses at runtime.
//!
//! ## Errors
//!
//! The API returns [`Error`]: [`Error::InvalidConfig`] names the failed
//! option as a [`ConfigOption`] (its `Display` is the builder method);
//! [`Error::NoRuntime`], [`Error::Bind`] and [`Error::Signal`] come from
//! starting and stopping; [`Error::InvalidKey`], [`Error::ValueTooLarge`]
//! and [`Error::Closed`] from writes; [`Error::Codec`] names the key whose
//! value failed. Errors keep their cause: [`std::error::Error::source`]
//! returns the I/O error or the [`CodecError`], whose own source is the
//! codec's error (a `serde_json::Error` for JSON).
//!
//! ## Limits
//!
//! - Keys are strings of at most [`MAX_KEY_LEN`] bytes that must fit a
//!   packet; values are at most [`Builder::max_value_size`] once encoded
//!   (1 MiB by default, up to 64 MiB).
//! - Every node holds every key: a replica is as large as the whole map.
//! - No persistence: a restarted node starts empty and catches up from its
//!   peers. A node far behind asks a peer for a stream over TCP on the
//!   gossip port number ([`Builder::streams`]) and receives what it lacks at
//!   the speed of the network and of its store; without TCP it catches up
//!   by datagrams, about one packet of records per gossip round.
//! - No encryption, no authentication: the cluster id is a name, not a
//!   secret. Run it on a network you trust.
//! - Last writer wins by hybrid logical clock: clock skew decides which of
//!   two concurrent writes wins, never whether a later write wins. Records
//!   stamped further ahead than [`Builder::max_clock_drift`] are held back.
//! - Watchers and member event streams are best-effort (they skip what they
//!   fall behind on, and say so).
//!
//! The README lists the limits in full, with measurements.
//!
//! ## Shutdown and signals
//!
//! [`GossipKv::shutdown`] announces the departure, so peers see the node
//! `Left` at once. A process that exits without it, such as one stopped by a
//! SIGTERM it does not handle, is only noticed when it stops answering
//! probes: peers see it `Suspect`, then `Dead` after the suspect timeout,
//! never `Left`. [`GossipKv::shutdown_on_termination`] waits for SIGINT or
//! SIGTERM and shuts down; [`GossipKv::shutdown_on`] does the same for any
//! future. Dropping the last handle never blocks: the gossip task announces
//! the departure on its own if the runtime keeps running.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), gossipkv::Error> {
//! let kv = gossipkv::GossipKv::<String, String>::builder()
//!     .bind_addr("0.0.0.0:7946")
//!     .seeds(["config-1.internal:7946"])
//!     .build()
//!     .await?;
//! // ... spawn the service's work ...
//! kv.shutdown_on_termination().await // leave on SIGINT or SIGTERM
//! # }
//! ```
//!
//! ## Going further
//!
//! - The README at the repository root is the user guide: every builder
//!   option and its default, the error table, troubleshooting (duplicate
//!   node ids, cluster id mismatches, clock skew, firewalls), the limits in
//!   full, and performance figures.
//! - docs/ALGORITHM.md explains the algorithm: versions, digests, deltas,
//!   push, re-synchronisation, the guards and membership.
//! - ARCHITECTURE.md explains the crates and the invariants they keep.
//! - The protocol itself is the sans-IO state machine of the
//!   `gossipkv-core` crate; [`GossipKv`] drives it from one tokio task. The
//!   types re-exported here ([`Record`], [`Version`], [`Hlc`], [`NodeId`],
//!   [`Origin`], [`Stats`], [`DecodeError`]) come from the lower crates.

mod batch;
mod builder;
mod codec;
mod discovery;
mod driver;
mod error;
mod health;
mod lifetime;
mod memory;
mod node;
mod persist;
mod sealing;
mod start;
mod streams;
mod watch;

pub use batch::Batch;
pub use builder::{Builder, DEFAULT_CLUSTER_ID, DEFAULT_DEAD_MEMBER_GRACE, DEFAULT_SEED_REFRESH};
pub use codec::{BytesCodec, Codec, CodecError, DefaultCodec, JsonCodec, StringCodec};
pub use error::{ConfigOption, DataDirError, Error};
pub use health::{Health, Problem, ProblemKind, HEALTH_WINDOW};
pub use lifetime::MAX_TTL;
pub use memory::{MemoryLimits, MemoryPolicy, MemoryStats, MIN_MAX_BYTES};
pub use node::{GossipKv, MAX_KEY_LEN, WATCH_QUEUE};
pub use persist::{Durability, DurableStats};
pub use sealing::{
    generate_key, key_to_base64, parse_key, Encryption, Key, KeyId, KeyStatus, Keyring,
    KeyringError, KeyringStatus, SealStats, DEFAULT_REPLAY_WINDOW, MAX_KEYS,
};
pub use watch::{ChangeKind, MemberEvents, WatchEvent, Watcher};

pub use bytes::Bytes;
pub use gossipkv_core::{
    KindCount, Member, MemberEvent, MemberState, MessageKind, NetworkError, Stats,
    DEFAULT_EPHEMERAL_GRACE, DEFAULT_FANOUT, DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_DRIFT,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_PACKET_SIZE, DEFAULT_TOMBSTONE_RETENTION, MAX_NODE_ID_LEN,
    MAX_PACKET_SIZE, MAX_VALUE_SIZE_LIMIT, MIN_PACKET_SIZE,
};
pub use gossipkv_proto::DecodeError;
pub use gossipkv_storage::{entry_cost, Hlc, Lifetime, NodeId, Origin, Record, Version};

/// Every Rust block of the README compiles, and runs unless marked
/// `no_run`, as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
