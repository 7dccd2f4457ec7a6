//! # gossipkv
//!
//! An embedded, decentralized, eventually consistent key-value store. Every
//! process that embeds it is an equal node: any node may write any key,
//! writes spread to the others by gossip over UDP, and replicas merge
//! last-writer-wins on hybrid logical clocks, so they all end with the same
//! value. There is no server, and losing any node breaks nothing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gossipkv::Error> {
//! use std::time::Duration;
//! use gossipkv::GossipKv;
//!
//! let a = GossipKv::<String, String>::builder()
//!     .node_id("node-a")
//!     .bind_addr("127.0.0.1:0")
//!     .gossip_interval(Duration::from_millis(100))
//!     .build()
//!     .await?;
//! let b = GossipKv::<String, String>::builder()
//!     .node_id("node-b")
//!     .bind_addr("127.0.0.1:0")
//!     .seeds([a.local_addr().unwrap().to_string()])
//!     .build()
//!     .await?;
//! a.set("version", "v1.0.1".to_string())?;
//! // ... a few gossip rounds later:
//! assert_eq!(b.get("version")?, Some("v1.0.1".to_string()));
//! a.shutdown().await?;
//! b.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! With no bind address, a node is a local in-memory store and never touches
//! the network. What this crate does not do: strong consistency (there are
//! no transactions and no linearizable reads), persistence, or encryption.
//!
//! The gossip protocol itself is the sans-IO state machine in [`protocol`];
//! [`GossipKv`] drives it from one tokio task.

mod builder;
mod codec;
mod discovery;
mod error;
mod membership;
mod node;
pub mod protocol;
mod reassembly;
mod watch;

pub use builder::{
    Builder, DEFAULT_CLUSTER_ID, DEFAULT_DEAD_MEMBER_GRACE, DEFAULT_FANOUT,
    DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_VALUE_SIZE, DEFAULT_PACKET_SIZE, DEFAULT_SEED_REFRESH,
    DEFAULT_TOMBSTONE_RETENTION, MAX_PACKET_SIZE, MAX_VALUE_SIZE_LIMIT, MIN_PACKET_SIZE,
};
pub use codec::{BytesCodec, Codec, CodecError, DefaultCodec, JsonCodec, StringCodec};
pub use error::{Error, NetworkError};
pub use membership::{DetectorConfig, Member, MemberEvent, MemberState};
pub use node::{GossipKv, MAX_KEY_LEN, MAX_NODE_ID_LEN, WATCH_QUEUE};
pub use protocol::Stats;
pub use watch::{MemberEvents, WatchEvent, Watcher};

/// The storage layer, re-exported for tooling and simulations.
pub use gossipkv_storage as storage;
