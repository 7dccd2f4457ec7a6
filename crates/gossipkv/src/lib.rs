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
//! The gossip protocol itself is the sans-IO state machine of the
//! `gossipkv-core` crate; [`GossipKv`] drives it from one tokio task.

mod builder;
mod codec;
mod discovery;
mod driver;
mod error;
mod health;
mod node;
mod start;
mod watch;

pub use builder::{Builder, DEFAULT_CLUSTER_ID, DEFAULT_DEAD_MEMBER_GRACE, DEFAULT_SEED_REFRESH};
pub use codec::{BytesCodec, Codec, CodecError, DefaultCodec, JsonCodec, StringCodec};
pub use error::Error;
pub use health::{Health, Problem, ProblemKind, HEALTH_WINDOW};
pub use node::{GossipKv, MAX_KEY_LEN, WATCH_QUEUE};
pub use watch::{MemberEvents, WatchEvent, Watcher};

pub use bytes::Bytes;
pub use gossipkv_core::{
    Member, MemberEvent, MemberState, NetworkError, Stats, DEFAULT_FANOUT,
    DEFAULT_GOSSIP_INTERVAL, DEFAULT_MAX_CLOCK_DRIFT, DEFAULT_MAX_VALUE_SIZE, DEFAULT_PACKET_SIZE,
    DEFAULT_TOMBSTONE_RETENTION, MAX_NODE_ID_LEN, MAX_PACKET_SIZE, MAX_VALUE_SIZE_LIMIT,
    MIN_PACKET_SIZE,
};
pub use gossipkv_proto::DecodeError;
pub use gossipkv_storage::{Hlc, NodeId, Record, Version};
