//! # gossipkv-storage
//!
//! The replicated state of gossipkv, usable on its own: a concurrent
//! last-writer-wins map of string keys to byte values (or tombstones),
//! versions stamped by hybrid logical clocks, and the Scuttlebutt-style
//! digest / delta logic that lets two replicas exchange exactly what the
//! other lacks.
//!
//! What this crate deliberately does **not** do: no I/O, no networking, no
//! serialization format, no async runtime, and no clock reads. Every
//! operation that needs the time takes it as an argument (milliseconds since
//! the Unix epoch), so the same code runs in a real node and in a simulator.
//!
//! ## The model in one paragraph
//! Every write gets a [`Version`]: an [`Hlc`] timestamp, the writer's
//! [`NodeId`] and generation (together an [`Origin`]), and the next sequence
//! number of that origin. Versions are totally ordered (timestamp, node id,
//! generation, sequence) and [`Store::merge`] keeps the greater one, so merge
//! is commutative, associative and idempotent. A [`Digest`] lists a watermark
//! per origin; [`Store::delta_for`] answers a peer's digest with the records it
//! lacks, cut to a byte budget without breaking **invariant W**: a watermark
//! `w` for origin `O` means every write of `O` with sequence `<= w` is held,
//! or a newer version of its key is, or that key's newer tombstone has been
//! collected. Tombstones are collected after a retention period
//! ([`Store::collect_garbage`]); a peer that fell behind what was collected is
//! re-synchronised page by page ([`Store::page`], [`Store::apply_page`]) so
//! that deletes never come back.
//!
//! ```
//! use bytes::Bytes;
//! use gossipkv_storage::{Origin, Store};
//!
//! let a = Store::new(Origin::new("a", 1));
//! let b = Store::new(Origin::new("b", 1));
//! a.set("color", Bytes::from_static(b"blue"), 1_000);
//! // b asks a for what it lacks, within a 1,400-byte budget.
//! let delta = a.delta_for(&b.digest(), 1_400, 0);
//! b.apply(&delta);
//! assert_eq!(b.get("color"), Some(Bytes::from_static(b"blue")));
//! assert_eq!(a.digest(), b.digest());
//! ```

/// A key, as the store and its records hold it: up to 23 bytes inline (no
/// allocation of its own), a longer one in one shared allocation. Cloning
/// it (into the sequence index, into a record) copies 24 bytes or bumps a
/// count. Made from a `&str`, a `String` or an `Arc<str>` with `into()`,
/// and read as a `&str` (it derefs to one).
pub type Key = smol_str::SmolStr;

mod ordered;
mod record;
mod seq_index;
mod shard;
mod store;
mod version;

pub use record::{
    record_size_hint, Delta, Digest, DigestEntry, Ghost, Lifetime, OriginChunk, Page, Record,
    CHUNK_OVERHEAD, DIGEST_ENTRY_OVERHEAD, GHOST_OVERHEAD, RECORD_OVERHEAD, RETIRED_WATERMARK,
};
pub use store::{
    entry_cost, ApplyStats, BudgetError, BudgetStats, ChangeCause, ChangeObserver, CollectObserver,
    DeltaOptions, EvictionObserver, GcStats, Limits, Policy, Store, StoreConfig, ENTRY_OVERHEAD,
};
pub use version::{Hlc, HlcClock, NodeId, Origin, Version, HLC_MAX_PHYSICAL_MS};
