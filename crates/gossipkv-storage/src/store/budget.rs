//! Memory limits of a [`Store`]: what an entry costs, the two policies
//! (refuse local writes, or evict the least recently used keys as
//! replicated deletes), and the early collection of tombstones that keeps
//! a node inside its budget under a load of fresh keys.
//!
//! **Cost of an entry** ([`entry_cost`]). `key + value.len() +
//! ENTRY_OVERHEAD`, a tombstone `key + ENTRY_OVERHEAD`, where `key` is the
//! key's length (at least 16) for a key of up to 23 bytes, held inline in
//! the entry and in the sequence index, and for a longer key 16 plus its
//! shared allocation: the key and 16 bytes of counts, with the allocator's
//! 8-byte header, rounded up to 16 bytes as the allocator does. The overhead is the resident memory a store
//! of a million 16-byte keys and 64-byte values takes per entry beyond its
//! 80 bytes (`bytes_per_key_1m` of `cargo xtask bench`): the entry in its
//! shard's chunk, its slot in the hash index, its position in the ordered
//! keys, the sequence index entry and the allocator's rounding of the
//! value. The indexes fill and grow, so it is close to an average, not
//! exact (145 bytes were measured for a million keys written in order):
//! [`Store::memory_usage`] is the store's memory to within a few percent
//! of the overhead, not to the byte. Index entries of overwritten writes
//! (40 bytes each, collected once every live peer has passed them) are not
//! counted.
//!
//! **Recency.** With [`Policy::EvictLru`], every entry carries a 32-bit
//! stamp from one counter: a write (local or merged) advances the counter
//! by two and stamps the entry with it, a [`Store::get`] stamps the entry
//! with the counter plus one, without advancing it (no write to a shared
//! cache line on the read path). So recency is exact between writes, and
//! two keys read between the same two writes are equally recent.
//! [`Store::contains`], [`Store::keys`], scans and replication do not touch
//! stamps. The eviction pool is refilled by one pass over every shard that
//! keeps the oldest `live / 64` keys (at least 16); evictions take them
//! oldest first, skipping any read or written since the pass. Every key
//! outside the pool was at least as recent as every key in it at the time of
//! the pass, and only grows more recent, so the order of evictions is exact
//! least-recently-used order (ties aside), at an amortized cost of about 64
//! entries visited per eviction. Stamps are compared modulo 2^32 against the
//! counter: a key neither read nor written for more than 2^31 writes counts
//! as recent again.
//!
//! **Eviction is a replicated delete.** An evicted key gets a tombstone
//! with a fresh local version, an ordinary local write: it takes the next
//! sequence number, enters the digest and deltas, and peers apply it as a
//! delete. Nothing special is needed in digests, deltas or pages: this node
//! never vouches for a write it dropped (it holds a newer version of the
//! key, the tombstone), and its peers do not send the evicted value back (the
//! tombstone is newer). The consequence: in a cluster, an eviction on one
//! node deletes the key on every node. It is a cache.
//!
//! **Tombstones** count toward the budget. A node under a load of fresh keys
//! would fill its budget with them until the retention (hours), so a store
//! with limits collects tombstones early, oldest sequence number first, up to
//! bounds the protocol sets ([`Store::set_early_collection`]): per origin, the
//! lowest watermark of every live peer (none of them is below the floor this
//! raises, so none needs re-synchronising), taken at an earlier round whose
//! digests this node holds entirely (otherwise a write older than the
//! tombstone, which a peer had and this node had not yet received, could
//! arrive after the collection and come back here alone; see `marks.rs` in
//! `gossipkv-core`). A store with no peers collects at once. Under [`Policy::EvictLru`], when the tombstones
//! still held exceed the budget, live values are evicted to make up for them;
//! when none is left, local writes of values are refused
//! ([`BudgetError::OverBudget`]) until its peers' marks cover its tombstones
//! and they are collected, so the store never holds more than its budget
//! and one entry. Deletes are never refused; merges always apply (and
//! evict).

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{Entry, Store};
use crate::record::{Lifetime, Record};
use crate::seq_index::IndexEntry;
use crate::version::{Hlc, Origin, Version};
use crate::Key;

/// Bytes an entry costs beyond its key and value (see the module docs):
/// the `bytes_per_key_1m` figure of `cargo xtask bench`, rounded up.
pub const ENTRY_OVERHEAD: usize = 150;

/// Longest key held inline (see [`crate::Key`]).
const INLINE_KEY_MAX: usize = 23;

/// What an entry of a `key_len`-byte key holding a `value_len`-byte value
/// (`None`: a tombstone) costs, as a store's budget and
/// [`Store::memory_usage`] count it (see the module docs): a key of up to
/// 23 bytes is held inline and costs its length, at least 16; a longer one
/// costs its shared allocation besides.
pub const fn entry_cost(key_len: usize, value_len: Option<usize>) -> usize {
    let key = if key_len <= INLINE_KEY_MAX {
        if key_len < 16 {
            16
        } else {
            key_len
        }
    } else {
        // The inline part (16 of the overhead's bytes hold an inline
        // key), then counts and key, rounded as the allocator does.
        16 + key_len.saturating_add(24).next_multiple_of(16)
    };
    let value = match value_len {
        Some(n) => n,
        None => 0,
    };
    key.saturating_add(value).saturating_add(ENTRY_OVERHEAD)
}

/// Most tombstones remembered per origin for early collection; older ones
/// are left to the retention.
const TOMBS_MAX: usize = 1 << 20;

/// What a store does when a write would take it over its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// Local writes that would exceed a limit are refused (right for
    /// configuration). Writes merged from peers are always applied (refusing
    /// them would break convergence), so a store can go over its limits by
    /// what peers write; local writes are refused until it is back within.
    #[default]
    Reject,
    /// The least recently used keys are evicted, as replicated deletes,
    /// until the store is within its limits again (right for a cache).
    /// Writes merged from peers evict too.
    EvictLru,
}

/// Memory limits of a store; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most keys holding a value (what [`Store::len`] counts; tombstones are
    /// not entries here, they count in bytes).
    pub max_entries: Option<usize>,
    /// Most bytes of entries, tombstones included, as
    /// [`Store::memory_usage`] counts them.
    pub max_bytes: Option<usize>,
    /// What happens at a limit.
    pub policy: Policy,
}

impl Limits {
    /// Whether neither limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.max_entries.is_none() && self.max_bytes.is_none()
    }
}

/// Why a local write was refused; nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The write would take the store over a limit ([`Policy::Reject`]), or
    /// the store is over its bytes with nothing left to evict but
    /// tombstones its peers have not passed yet ([`Policy::EvictLru`]).
    #[error(
        "over budget: the write needs {needed} more bytes and {new_entries} more entries; \
         {bytes} of {max_bytes:?} bytes and {entries} of {max_entries:?} entries are used"
    )]
    OverBudget {
        /// Bytes the write would add.
        needed: usize,
        /// Entries the write would add (0 or 1).
        new_entries: usize,
        /// Bytes in use.
        bytes: usize,
        /// The byte limit.
        max_bytes: Option<usize>,
        /// Keys holding a value.
        entries: usize,
        /// The entry limit.
        max_entries: Option<usize>,
    },
    /// The entry alone (key, value and overhead) is larger than the whole
    /// byte budget, under either policy.
    #[error("an entry of {size} bytes cannot fit a budget of {max_bytes} bytes")]
    TooLarge {
        /// What the entry would cost.
        size: usize,
        /// The byte limit.
        max_bytes: usize,
    },
}

/// Counters of the memory limits, for [`Store::budget_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Keys evicted (each a replicated delete).
    pub evicted: u64,
    /// Tombstones collected early, before the retention.
    pub tombstones_collected_early: u64,
    /// Local writes refused ([`Policy::Reject`], too large, or an
    /// [`Policy::EvictLru`] store over its bytes with nothing to evict).
    pub refused: u64,
    /// Times an eviction pass ended with the store still over its budget
    /// (nothing left to evict but tombstones its peers have not passed yet).
    pub over_after_eviction: u64,
}

/// Told of every key evicted, with the tombstone written for it (for eager
/// push), while the key's shard is locked: quick, and no calls back into the
/// store.
pub type EvictionObserver = Arc<dyn Fn(&Record) + Send + Sync>;

/// Up to where, per origin, tombstones may be collected early.
#[derive(Debug)]
enum Early {
    /// No peer: everything this store holds contiguously.
    All,
    /// By interned origin id (absent: nothing).
    Bounds(Vec<u64>),
}

/// The limits of a store and their state.
pub(super) struct Budget {
    pub(super) limits: Limits,
    lru: bool,
    /// The recency counter (see the module docs).
    clock: AtomicU32,
    /// Eviction candidates, oldest last: (age at the pass, stamp, key).
    pool: Mutex<Vec<(u32, u32, Key)>>,
    /// Per interned origin, sequence numbers of tombstones held, in the order
    /// they were written.
    tombs: Mutex<Vec<VecDeque<u64>>>,
    early: Mutex<Early>,
    /// The latest physical time seen, for the stamps of evictions made
    /// while merging (which are given no time).
    now_ms: AtomicU64,
    observer: OnceLock<EvictionObserver>,
    evicted: AtomicU64,
    collected: AtomicU64,
    refused: AtomicU64,
    over: AtomicU64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub(super) fn new(limits: Limits) -> Option<Box<Self>> {
        (!limits.is_unlimited()).then(|| {
            Box::new(Budget {
                limits,
                lru: limits.policy == Policy::EvictLru,
                clock: AtomicU32::new(0),
                pool: Mutex::new(Vec::new()),
                tombs: Mutex::new(Vec::new()),
                early: Mutex::new(Early::All),
                now_ms: AtomicU64::new(0),
                observer: OnceLock::new(),
                evicted: AtomicU64::new(0),
                collected: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                over: AtomicU64::new(0),
            })
        })
    }

    /// Whether reads and writes stamp entries.
    pub(super) fn lru(&self) -> bool {
        self.lru
    }

    /// The stamp of a write (advances the counter).
    pub(super) fn write_stamp(&self) -> u32 {
        self.clock.fetch_add(2, Ordering::Relaxed).wrapping_add(2)
    }

    /// The stamp of a read (between the last write and the next).
    pub(super) fn read_stamp(&self) -> u32 {
        self.clock.load(Ordering::Relaxed).wrapping_add(1)
    }

    /// Remembers that the write `seq` of origin `oid` is a tombstone.
    pub(super) fn note_tombstone(&self, oid: u32, seq: u64) {
        let mut tombs = self.tombs.lock();
        let i = oid as usize;
        if tombs.len() <= i {
            tombs.resize_with(i + 1, VecDeque::new);
        }
        let q = &mut tombs[i];
        if q.len() >= TOMBS_MAX {
            q.pop_front();
        }
        q.push_back(seq);
    }

    fn see_time(&self, now_ms: u64) {
        self.now_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Checks that an entry of `size` bytes can fit at all.
    pub(super) fn check_size(&self, size: usize) -> Result<(), BudgetError> {
        match self.limits.max_bytes {
            Some(max_bytes) if size > max_bytes => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(BudgetError::TooLarge { size, max_bytes })
            }
            _ => Ok(()),
        }
    }
}

impl Store {
    /// Bytes the store's entries take, tombstones included, as the budget
    /// counts them (see [`ENTRY_OVERHEAD`]).
    pub fn memory_usage(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The store's limits (all `None` when it has none).
    pub fn limits(&self) -> Limits {
        self.budget
            .as_ref()
            .map_or_else(Limits::default, |b| b.limits)
    }

    /// Counters of evictions, early collections and refusals (zero without
    /// limits).
    pub fn budget_stats(&self) -> BudgetStats {
        self.budget.as_ref().map_or_else(BudgetStats::default, |b| {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            BudgetStats {
                evicted: get(&b.evicted),
                tombstones_collected_early: get(&b.collected),
                refused: get(&b.refused),
                over_after_eviction: get(&b.over),
            }
        })
    }

    /// Installs the eviction observer (once; returns `false` if one was
    /// already installed). Evicted keys are not shown to the change
    /// observer.
    pub fn set_eviction_observer(&self, observer: EvictionObserver) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| b.observer.set(observer).is_ok())
    }

    /// Sets up to where tombstones may be collected early (see the module
    /// docs): `None` when the node has no live peer (everything it holds),
    /// otherwise per origin the bound, origins not listed getting none. A
    /// store is created with `None`. Does nothing without limits.
    pub fn set_early_collection(&self, bounds: Option<&[(Origin, u64)]>) {
        let Some(b) = &self.budget else { return };
        let early = match bounds {
            None => Early::All,
            Some(bounds) => {
                let mut v = Vec::new();
                for (origin, bound) in bounds {
                    if let Some((oid, _)) = self.id_and_log(origin) {
                        let i = oid as usize;
                        if v.len() <= i {
                            v.resize(i + 1, 0);
                        }
                        v[i] = *bound;
                    }
                }
                Early::Bounds(v)
            }
        };
        *b.early.lock() = early;
        // Tombstones held over the budget may go now.
        if self.bytes_over(b, 0) {
            self.collect_early(b, 0);
        }
    }

    /// Whether the store is over one of its limits.
    pub fn is_over_budget(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| self.over(b))
    }

    fn over(&self, b: &Budget) -> bool {
        self.bytes_over(b, 0) || b.limits.max_entries.is_some_and(|m| self.len() > m)
    }

    /// Whether `need` more bytes would take the store over its byte limit.
    fn bytes_over(&self, b: &Budget, need: usize) -> bool {
        b.limits
            .max_bytes
            .is_some_and(|m| self.memory_usage().saturating_add(need) > m)
    }

    /// Writes `value` under `key` (a tombstone for `None`) as
    /// [`Store::write`] does, within the store's limits: under
    /// [`Policy::Reject`] a write that would exceed one is refused, under
    /// [`Policy::EvictLru`] other keys are evicted after it (never the key
    /// written). An entry larger than the whole byte budget is refused under
    /// both; a delete is never refused.
    pub fn try_write(
        &self,
        key: &str,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<Record, BudgetError> {
        self.try_write_with(key, value, Lifetime::FOREVER, now_ms)
    }

    /// [`Store::try_write`] with a [`Lifetime`] (ignored for a tombstone).
    pub fn try_write_with(
        &self,
        key: &str,
        value: Option<Bytes>,
        lifetime: Lifetime,
        now_ms: u64,
    ) -> Result<Record, BudgetError> {
        let lifetime = super::lifetime_of(&value, lifetime);
        let (k, hlc, seq) = self.limited_write(key, value.clone(), lifetime, now_ms)?;
        Ok(Record {
            key: k,
            value,
            version: Version::new(hlc, self.local_origin(), seq),
            lifetime,
        })
    }

    /// [`Store::try_write`] without building a record (no shared header for
    /// the value), as [`Store::set`] is to [`Store::write`].
    pub fn try_set(
        &self,
        key: &str,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<Version, BudgetError> {
        let (_, hlc, seq) = self.limited_write(key, value, Lifetime::FOREVER, now_ms)?;
        Ok(Version::new(hlc, self.local_origin(), seq))
    }

    fn limited_write(
        &self,
        key: &str,
        value: Option<Bytes>,
        life: Lifetime,
        now_ms: u64,
    ) -> Result<(Key, Hlc, u64), BudgetError> {
        let Some(b) = &self.budget else {
            return Ok(self.write_unchecked(key, value, life, now_ms));
        };
        b.see_time(now_ms);
        // A delete is never refused.
        let Some(size) = value.as_ref().map(|v| entry_cost(key.len(), Some(v.len()))) else {
            return Ok(self.write_unchecked(key, value, life, now_ms));
        };
        b.check_size(size)?;
        if b.limits.policy != Policy::Reject {
            // A cache still over its bytes after the last eviction pass has
            // nothing left to evict but tombstones its peers have not
            // passed: another value would leave one more tombstone over the
            // budget. It refuses values until collection brings it back.
            if self.bytes_over(b, 0) {
                self.collect_early(b, 0);
                if self.bytes_over(b, 0) {
                    b.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(self.over_budget(b, size, 0, self.memory_usage()));
                }
            }
            return Ok(self.write_unchecked(key, value, life, now_ms));
        }
        if self.bytes_over(b, size) {
            self.collect_early(b, size);
        }
        let written = self.write_local(key, value, life, now_ms, |_, bytes, live| {
            self.reserve(b, bytes, live)
        });
        if written.is_err() {
            b.refused.fetch_add(1, Ordering::Relaxed);
        }
        let written = written?;
        self.enforce(b, Some(key));
        Ok(written)
    }

    /// The refusal of a write that needs `needed` bytes and `new_entries`
    /// entries while `bytes_now` are in use.
    fn over_budget(
        &self,
        b: &Budget,
        needed: usize,
        new_entries: usize,
        bytes_now: usize,
    ) -> BudgetError {
        BudgetError::OverBudget {
            needed,
            new_entries,
            bytes: bytes_now,
            max_bytes: b.limits.max_bytes,
            entries: self.len(),
            max_entries: b.limits.max_entries,
        }
    }

    /// Reserves what a checked write adds in `bytes` and `live` keys (either
    /// may be negative), or says why not. Called under the key's shard lock.
    pub(super) fn reserve(&self, b: &Budget, bytes: isize, live: isize) -> Result<(), BudgetError> {
        let refuse = |bytes_now: usize| {
            self.over_budget(
                b,
                bytes.max(0).unsigned_abs(),
                live.max(0).unsigned_abs(),
                bytes_now,
            )
        };
        match b.limits.max_bytes.filter(|_| bytes > 0) {
            Some(max) => {
                let add = bytes.unsigned_abs();
                self.bytes
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                        u.checked_add(add).filter(|n| *n <= max)
                    })
                    .map_err(refuse)?;
            }
            None => self.add_bytes(bytes),
        }
        match b.limits.max_entries.filter(|_| live > 0) {
            Some(max) => {
                let r = self
                    .live
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                        (l < max).then_some(l + 1)
                    });
                if r.is_err() {
                    self.add_bytes(-bytes);
                    return Err(refuse(self.memory_usage()));
                }
            }
            None => self.account(0, live),
        }
        Ok(())
    }

    /// Adds `delta` to the bytes in use.
    pub(super) fn add_bytes(&self, delta: isize) {
        if delta == 0 {
            // The common overwrite of a value by one of the same size.
        } else if delta > 0 {
            self.bytes.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// After a merge: evicts under [`Policy::EvictLru`], collects tombstones
    /// early when over budget.
    pub(super) fn after_merge(&self) {
        if let Some(b) = &self.budget {
            self.enforce(b, None);
        }
    }

    /// Brings the store back within its limits, as far as its policy allows
    /// (see the module docs); never evicts `protect`.
    fn enforce(&self, b: &Budget, protect: Option<&str>) {
        if !self.over(b) {
            return;
        }
        if self.bytes_over(b, 0) {
            self.collect_early(b, 0);
        }
        if !b.lru {
            return;
        }
        // Whether a key was evicted since the last refill: a refill whose
        // candidates were all read or written since (none evicted) means
        // every live key is in use by this very pass; stop there.
        let mut progress = true;
        while self.over(b) {
            let next = b.pool.lock().pop();
            let Some((_, stamp, key)) = next else {
                if !progress || !self.refill(b, protect) {
                    b.over.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                progress = false;
                continue;
            };
            if protect != Some(&*key) && self.evict(b, &key, stamp) {
                progress = true;
                if self.bytes_over(b, 0) {
                    // Its tombstone may go at once (no peers, or they passed it).
                    self.collect_early(b, 0);
                }
            }
        }
    }

    /// Refills the eviction pool from one pass over every shard; `false`
    /// when it found nothing to evict.
    fn refill(&self, b: &Budget, protect: Option<&str>) -> bool {
        let want = (self.len() / 64).clamp(16, 65_536);
        let now = b.clock.load(Ordering::Relaxed).wrapping_add(1);
        // A max-heap of ages: the youngest of the oldest `want` on top.
        let mut heap: BinaryHeap<(u32, u32, Key)> = BinaryHeap::with_capacity(want + 1);
        for shard in self.shards.iter() {
            let shard = shard.read();
            for (k, e) in shard.iter() {
                if e.value.is_none() || protect == Some(&**k) {
                    continue;
                }
                let stamp = e.stamp();
                let age = now.wrapping_sub(stamp);
                if heap.len() < want {
                    heap.push((age, stamp, k.clone()));
                } else if heap.peek().is_some_and(|top| age > top.0) {
                    heap.pop();
                    heap.push((age, stamp, k.clone()));
                }
            }
        }
        // Ascending by age: the oldest last, popped first.
        let found = heap.into_sorted_vec();
        let any = !found.is_empty();
        *b.pool.lock() = found;
        any
    }

    /// Evicts `key` if it still holds a value stamped `stamp` (it was not
    /// read or written since the pass that chose it); returns whether it did.
    fn evict(&self, b: &Budget, key: &str, stamp: u32) -> bool {
        let mut log = self.local_log.lock();
        let seq = log.watermark + 1;
        let mut shard = self.shard(key).write();
        let Some((k, e)) = shard.get_key_value(key) else {
            return false;
        };
        if e.value.is_none() || e.stamp() != stamp {
            return false;
        }
        let k = k.clone();
        let old = e.value.as_ref().map(Bytes::len);
        let old_shape = e.shape();
        let hlc = self.clock.tick(b.now_ms.load(Ordering::Relaxed));
        let entry = Entry::new(None, hlc, 0, seq, b.write_stamp());
        self.relife(&k, Some(old_shape), Some(entry.shape()));
        if let Some(slot) = shard.get_mut(key) {
            *slot = entry;
        }
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.add_bytes(-(old.unwrap_or(0) as isize));
        b.evicted.fetch_add(1, Ordering::Relaxed);
        b.note_tombstone(0, seq);
        self.tell_collected(&k);
        if let Some(f) = b.observer.get() {
            f(&Record::new(
                k.clone(),
                None,
                Version::new(hlc, self.local_origin(), seq),
            ));
        }
        drop(shard);
        log.index.insert(seq, IndexEntry { key: k, hlc });
        log.watermark = seq;
        true
    }

    /// Collects the tombstones the early bounds allow, oldest sequence
    /// number first, until `need` more bytes fit; returns how many.
    fn collect_early(&self, b: &Budget, need: usize) -> usize {
        let logs: Vec<_> = self.origins.read().logs.clone();
        let mut collected = 0;
        for (oid, log) in logs.iter().enumerate() {
            if !self.bytes_over(b, need) {
                break;
            }
            let bound = match &*b.early.lock() {
                Early::All => u64::MAX,
                Early::Bounds(v) => v.get(oid).copied().unwrap_or(0),
            };
            let mut log = log.lock();
            let top = bound.min(log.watermark);
            let mut forget = Vec::new();
            while self.bytes_over(b, need) {
                let next = {
                    let mut tombs = b.tombs.lock();
                    match tombs.get(oid).and_then(|q| q.front().copied()) {
                        Some(seq) if seq <= top => q_pop(&mut tombs, oid),
                        _ => None,
                    }
                };
                let Some(seq) = next else { break };
                let Some(ie) = log.index.get(seq).cloned() else {
                    continue;
                };
                let mut shard = self.shard(&ie.key).write();
                if shard
                    .get(&ie.key)
                    .is_some_and(|e| e.is_write(oid as u32, seq) && e.value.is_none())
                {
                    shard.remove(&ie.key);
                    self.tell_collected(&ie.key);
                    self.add_bytes(-(entry_cost(ie.key.len(), None) as isize));
                    forget.push(seq);
                    collected += 1;
                }
            }
            log.forget(forget);
        }
        b.collected.fetch_add(collected as u64, Ordering::Relaxed);
        collected
    }
}

/// Pops the front of origin `oid`'s tombstone queue.
fn q_pop(tombs: &mut [VecDeque<u64>], oid: usize) -> Option<u64> {
    tombs.get_mut(oid).and_then(VecDeque::pop_front)
}

/// What replacing an entry of `old` (`None`: absent; `Some(None)`: a
/// tombstone; `Some(Some(n))`: a value of `n` bytes) by `new` adds in bytes.
pub(super) fn delta_bytes(
    key_len: usize,
    old: Option<Option<usize>>,
    new: Option<Option<usize>>,
) -> isize {
    let c = |e: Option<Option<usize>>| e.map_or(0, |v| entry_cost(key_len, v) as isize);
    c(new) - c(old)
}

/// What replacing `old` by `new` (as in [`delta_bytes`]) adds in live keys.
pub(super) fn delta_live(old: Option<Option<usize>>, new: Option<Option<usize>>) -> isize {
    let live = |e: Option<Option<usize>>| isize::from(matches!(e, Some(Some(_))));
    live(new) - live(old)
}

impl Store {
    /// Counts what a change added: `bytes` and `live` keys (either may be
    /// negative).
    pub(super) fn account(&self, bytes: isize, live: isize) {
        self.add_bytes(bytes);
        match live {
            1 => {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
            -1 => {
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Counts the replacement of a key's `old` entry by `new` (see
    /// [`delta_bytes`]).
    pub(super) fn changed(
        &self,
        key_len: usize,
        old: Option<Option<usize>>,
        new: Option<Option<usize>>,
    ) {
        self.account(delta_bytes(key_len, old, new), delta_live(old, new));
    }

    /// A merged entry won: stamps it and remembers it if a tombstone.
    pub(super) fn won(&self, e: &Entry) {
        if let Some(b) = &self.budget {
            if b.lru() {
                e.stamp.store(b.write_stamp(), Ordering::Relaxed);
            }
            if e.value.is_none() {
                b.note_tombstone(e.origin, e.seq);
            }
        }
    }

    /// The stamp of a local write (0 without [`Policy::EvictLru`]).
    pub(super) fn write_stamp(&self) -> u32 {
        match &self.budget {
            Some(b) if b.lru() => b.write_stamp(),
            _ => 0,
        }
    }

    /// Remembers a tombstone for early collection (with limits only).
    pub(super) fn note_tombstone(&self, oid: u32, seq: u64) {
        if let Some(b) = &self.budget {
            b.note_tombstone(oid, seq);
        }
    }

    /// After an unchecked local write: enforces the limits.
    pub(super) fn after_write(&self, key: &str, now_ms: u64) {
        if let Some(b) = &self.budget {
            b.see_time(now_ms);
            self.enforce(b, Some(key));
        }
    }
}
