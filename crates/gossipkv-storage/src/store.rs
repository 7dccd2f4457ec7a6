//! The sharded last-writer-wins store with its per-origin index.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use foldhash::fast::RandomState as FastState;
use parking_lot::{Mutex, RwLock};

use crate::record::{
    record_size_hint, Delta, Digest, DigestEntry, Ghost, Lifetime, OriginChunk, Page, Record,
    CHUNK_OVERHEAD, GHOST_OVERHEAD, RETIRED_WATERMARK,
};
use crate::seq_index::{IndexEntry, SeqIndex};
use crate::shard::ShardMap;
use crate::version::{Hlc, HlcClock, Origin, Version};
use crate::Key;

// Memory limits (issue 12): accounting, policies, eviction, early collection.
mod budget;
use budget::Budget;
pub use budget::{
    entry_cost, BudgetError, BudgetStats, EvictionObserver, Limits, Policy, ENTRY_OVERHEAD,
};

// Lifetimes (issue 13): expiry, values owned by their writer's origin.
mod lifetime;
pub use lifetime::ChangeCause;
use lifetime::{lifetime_of, Lifetimes, Shape};

// Retired origins (issue 13): superseded generations leave digests.
mod retire;
use retire::Retired;

/// A function told of every change of what a key shows: the key, its new
/// value (`None` when deleted or hidden) and why. It runs while the key's
/// shard is locked, so it must be quick and must not call back into the
/// store.
pub type ChangeObserver = Arc<dyn Fn(&str, Option<&Bytes>, ChangeCause) + Send + Sync>;

/// A function told of every key whose stored record changed with nothing a
/// watcher should see: a tombstone collected (by [`Store::collect_garbage`],
/// early under a memory budget, or dropped by a re-synchronisation page),
/// or a key evicted (its tombstone goes to the eviction observer). It runs
/// while the key's shard is locked, so it must be quick and must not call
/// back into the store.
pub type CollectObserver = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Observer(OnceLock<ChangeObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Observer(set)"
        } else {
            "Observer(none)"
        })
    }
}

#[derive(Default)]
struct CollectHook(OnceLock<CollectObserver>);

impl std::fmt::Debug for CollectHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "CollectHook(set)"
        } else {
            "CollectHook(none)"
        })
    }
}

/// Options of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Number of independently locked shards (rounded up to a power of two).
    pub shards: usize,
    /// Memory limits (default: none).
    pub limits: Limits,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: 64,
            limits: Limits::default(),
        }
    }
}

/// Options of [`Store::delta_with`].
#[derive(Clone, Copy)]
pub struct DeltaOptions<'a> {
    /// Bytes the delta may take (by [`Record::size_hint`]).
    pub budget: usize,
    /// Where the visit of origins starts (modulo their number).
    pub rotate: usize,
    /// Values longer than this are returned apart.
    pub inline_max: usize,
    /// Per origin, the first sequence number not to send yet (for example
    /// writes still being pushed); `u64::MAX` sends everything.
    pub hold: &'a dyn Fn(&Origin) -> u64,
    /// Whether a quarter of the budget is kept for loose records: when the
    /// chunks stop short, the newest writes the peer lacks beyond them fill
    /// it (they reach it a round early; the chunks bring them again later).
    /// Right for a datagram per round; a stream, whose next frame follows
    /// at once, turns it off and fills the whole budget with chunks.
    pub newest_first: bool,
    /// Most records and ghosts the delta carries, whatever the budget
    /// (`usize::MAX`: no limit): a receiver refuses messages with more than
    /// its decoder's limits.
    pub max_items: usize,
}

impl std::fmt::Debug for DeltaOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaOptions")
            .field("budget", &self.budget)
            .field("rotate", &self.rotate)
            .field("inline_max", &self.inline_max)
            .field("newest_first", &self.newest_first)
            .field("max_items", &self.max_items)
            .finish_non_exhaustive()
    }
}

/// What [`Store::apply`] or [`Store::apply_page`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Records that replaced (or created) the local state of their key.
    pub won: usize,
    /// Records that were older than (or equal to) what was already held.
    pub lost: usize,
    /// Origins whose watermark rose.
    pub advanced: usize,
    /// Keys dropped by a re-synchronisation page.
    pub dropped: usize,
}

/// What [`Store::collect_garbage`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Tombstones removed.
    pub tombstones: usize,
    /// Index entries of superseded writes removed.
    pub ghosts: usize,
}

/// Internal, compact form of a record held in a shard.
#[derive(Debug)]
struct Entry {
    value: Option<Bytes>,
    hlc: Hlc,
    origin: u32,
    /// Recency stamp, with [`Policy::EvictLru`] only (in the padding after
    /// `origin`).
    stamp: AtomicU32,
    seq: u64,
    /// The record's [`Lifetime`], packed ([`Lifetime::pack`]); 0 for
    /// [`Lifetime::FOREVER`].
    life: u64,
}

// What an entry and a sequence index entry take (see `ENTRY_OVERHEAD`):
// a change here changes the memory figures.
const _: () = assert!(std::mem::size_of::<(Key, Entry)>() == 88);
const _: () = assert!(std::mem::size_of::<(u64, Option<IndexEntry>)>() == 40);

impl Clone for Entry {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            hlc: self.hlc,
            origin: self.origin,
            stamp: AtomicU32::new(self.stamp()),
            seq: self.seq,
            life: self.life,
        }
    }
}

impl Entry {
    fn new(value: Option<Bytes>, hlc: Hlc, origin: u32, seq: u64, stamp: u32) -> Self {
        Entry {
            value,
            hlc,
            origin,
            stamp: AtomicU32::new(stamp),
            seq,
            life: 0,
        }
    }

    /// The same entry with lifetime `life`.
    fn living(mut self, life: Lifetime) -> Self {
        self.life = life.pack();
        self
    }

    /// What the lifetime bookkeeping needs to know of this entry.
    fn shape(&self) -> Shape {
        Shape {
            life: self.life,
            origin: self.origin,
            seq: self.seq,
            live: self.value.is_some(),
        }
    }

    fn stamp(&self) -> u32 {
        self.stamp.load(Ordering::Relaxed)
    }

    /// Marks a read (only when the stamp changes: no write otherwise).
    fn touch(&self, stamp: u32) {
        if self.stamp() != stamp {
            self.stamp.store(stamp, Ordering::Relaxed);
        }
    }

    /// Whether this is the write `seq` of the origin interned as `oid`.
    fn is_write(&self, oid: u32, seq: u64) -> bool {
        self.origin == oid && self.seq == seq
    }
}

#[derive(Debug)]
struct OriginLog {
    origin: Origin,
    /// Invariant W: every write of this origin with seq <= watermark is held,
    /// or a newer version of its key is, or that key's newer tombstone was collected.
    watermark: u64,
    /// Highest seq of this origin whose tombstone or index entry was collected.
    /// A peer whose watermark is below it must re-synchronise.
    floor: u64,
    /// seq -> key of that write (live, or superseded: a "ghost").
    index: SeqIndex,
    /// Whether the origin is retired (see `store/retire.rs`).
    retired: Retired,
}

/// Keys are hashed with foldhash (randomly seeded per map): several times
/// faster than the standard SipHash on short keys, which matters because
/// every `get` and `set` hashes its key twice (shard, then map). Each shard
/// also keeps its keys in order, for pages and prefix scans.
type Shard = RwLock<ShardMap<Entry>>;

/// A shard alone on its cache lines (two, against adjacent-line
/// prefetching): readers on different cores that take the read locks of
/// neighbouring shards do not invalidate each other's caches.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Shard);

impl std::ops::Deref for Padded {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        &self.0
    }
}

#[derive(Debug, Default)]
struct Origins {
    logs: Vec<Arc<Mutex<OriginLog>>>,
    origins: Vec<Origin>,
    ids: HashMap<Origin, u32>,
}

/// A concurrent last-writer-wins map from string keys to byte values.
///
/// Reads take one shard's read lock; local writes of one origin are ordered
/// by that origin's log lock. Lock order, everywhere: origin table (released
/// before anything else), then one origin log, then one shard; the only
/// holder of several shards ([`Store::page`], read locks) takes them in
/// index order and, while holding them, only reads the origin table.
///
/// The store never reads a clock: callers pass the physical time in
/// milliseconds to every operation that needs one.
#[derive(Debug)]
pub struct Store {
    local: Origin,
    local_log: Arc<Mutex<OriginLog>>,
    clock: HlcClock,
    shards: Box<[Padded]>,
    shard_hasher: FastState,
    shard_mask: u64,
    origins: RwLock<Origins>,
    live: AtomicUsize,
    observer: Observer,
    collected: CollectHook,
    /// Bytes of entries, as the budget counts them.
    bytes: AtomicUsize,
    budget: Option<Box<Budget>>,
    /// Expiries and owned values (see `store/lifetime.rs`).
    lives: Lifetimes,
    /// Records of retired origins refused (see `store/retire.rs`).
    retired_refused: AtomicU64,
    /// Origins retired now (see `store/retire.rs`).
    retired_count: AtomicUsize,
}

impl Store {
    /// An empty store whose local writes are stamped with `local`.
    pub fn new(local: Origin) -> Self {
        Self::with_config(local, StoreConfig::default())
    }

    /// An empty store with explicit options.
    pub fn with_config(local: Origin, config: StoreConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let shards = (0..n)
            .map(|_| Padded(RwLock::new(ShardMap::default())))
            .collect();
        let mut origins = Origins::default();
        let local_log = Arc::new(Mutex::new(OriginLog::new(local.clone())));
        origins.logs.push(local_log.clone());
        origins.origins.push(local.clone());
        origins.ids.insert(local.clone(), 0);
        Store {
            local,
            local_log,
            clock: HlcClock::new(),
            shards,
            shard_hasher: FastState::default(),
            shard_mask: n as u64 - 1,
            origins: RwLock::new(origins),
            live: AtomicUsize::new(0),
            observer: Observer::default(),
            collected: CollectHook::default(),
            bytes: AtomicUsize::new(0),
            budget: Budget::new(config.limits),
            lives: Lifetimes::default(),
            retired_refused: AtomicU64::new(0),
            retired_count: AtomicUsize::new(0),
        }
    }
    /// Installs the change observer (once; returns `false` if one was
    /// already installed). It sees local writes, merged records that win, and
    /// keys dropped by a re-synchronisation page.
    pub fn set_observer(&self, observer: ChangeObserver) -> bool {
        self.observer.0.set(observer).is_ok()
    }

    /// Installs the collection observer (once; returns `false` if one was
    /// already installed). A durable node uses it, with the change
    /// observer, to learn every key whose stored state changed: collected
    /// tombstones leave no change a watcher should see.
    pub fn set_collect_observer(&self, observer: CollectObserver) -> bool {
        self.collected.0.set(observer).is_ok()
    }

    /// Tells the collection observer that `key`'s record changed with no
    /// change a watcher should see.
    fn tell_collected(&self, key: &str) {
        if let Some(f) = self.collected.0.get() {
            f(key);
        }
    }

    fn notify(&self, key: &str, value: Option<&Bytes>) {
        self.notify_as(key, value, ChangeCause::Write);
    }

    fn notify_as(&self, key: &str, value: Option<&Bytes>, cause: ChangeCause) {
        if let Some(f) = self.observer.0.get() {
            f(key, value, cause);
        }
    }

    /// The origin of local writes.
    pub fn local_origin(&self) -> &Origin {
        &self.local
    }

    /// The store's hybrid logical clock.
    pub fn clock(&self) -> &HlcClock {
        &self.clock
    }

    // ----- local operations -------------------------------------------------

    /// Writes `value` under `key` as a new local version at `now_ms`.
    /// Returns the version written (see [`Store::write`] for the record).
    pub fn set(&self, key: &str, value: Bytes, now_ms: u64) -> Version {
        let (_, hlc, seq) = self.write_unchecked(key, Some(value), Lifetime::FOREVER, now_ms);
        Version::new(hlc, &self.local, seq)
    }

    /// Deletes `key` by writing a tombstone at `now_ms`. Returns the version
    /// of the tombstone.
    pub fn delete(&self, key: &str, now_ms: u64) -> Version {
        let (_, hlc, seq) = self.write_unchecked(key, None, Lifetime::FOREVER, now_ms);
        Version::new(hlc, &self.local, seq)
    }

    /// Writes `value` under `key` (a tombstone for `None`) like
    /// [`Store::set`] and [`Store::delete`], and returns the record written,
    /// for a caller that sends it on (an eager push). The record shares the
    /// store's value, which costs the value a shared header when it had
    /// none (a `Bytes` made from a `Vec`), and its key (a copy when the key
    /// is held inline); [`Store::set`] does not.
    ///
    /// These three never refuse a write: with limits, use
    /// [`Store::try_write`]. Under [`Policy::EvictLru`] they evict after the
    /// write as it does.
    pub fn write(&self, key: &str, value: Option<Bytes>, now_ms: u64) -> Record {
        self.write_with(key, value, Lifetime::FOREVER, now_ms)
    }

    /// [`Store::write`] with a [`Lifetime`] (ignored for a tombstone).
    pub fn write_with(
        &self,
        key: &str,
        value: Option<Bytes>,
        lifetime: Lifetime,
        now_ms: u64,
    ) -> Record {
        let lifetime = lifetime_of(&value, lifetime);
        let (key, hlc, seq) = self.write_unchecked(key, value.clone(), lifetime, now_ms);
        Record {
            key,
            value,
            version: Version::new(hlc, &self.local, seq),
            lifetime,
        }
    }

    /// A local write that no limit refuses.
    fn write_unchecked(
        &self,
        key: &str,
        value: Option<Bytes>,
        life: Lifetime,
        now_ms: u64,
    ) -> (Key, Hlc, u64) {
        let Ok(written) = self.write_local(key, value, life, now_ms, |_, bytes, live| {
            self.account(bytes, live);
            Ok::<(), std::convert::Infallible>(())
        });
        self.after_write(key, now_ms);
        written
    }

    /// A local write: the key as held, and the timestamp and sequence number
    /// it got. `charge` is given the write the key holds (origin id and
    /// sequence number, if any) and what the write adds in bytes and live
    /// keys (under the shard lock, before anything changes) and counts it,
    /// or refuses the write.
    fn write_local<E>(
        &self,
        key: &str,
        value: Option<Bytes>,
        life: Lifetime,
        now_ms: u64,
        charge: impl FnOnce(Option<(u32, u64)>, isize, isize) -> Result<(), E>,
    ) -> Result<(Key, Hlc, u64), E> {
        self.lives.see_time(now_ms);
        let mut log = self.local_log.lock();
        let seq = log.watermark + 1;
        let mut shard = self.shard(key).write();
        // One lookup for the key as held and what it holds.
        let slot = shard.find(key);
        let held = slot.map(|s| {
            let (k, e) = shard.at_slot(s);
            (k.clone(), e.value.as_ref().map(Bytes::len), e.shape())
        });
        let old = held.as_ref().map(|(_, len, _)| *len);
        let new = Some(value.as_ref().map(Bytes::len));
        charge(
            held.as_ref().map(|(_, _, s)| (s.origin, s.seq)),
            budget::delta_bytes(key.len(), old, new),
            budget::delta_live(old, new),
        )?;
        // Tick while holding the shard lock: a concurrent merge observes its
        // record's timestamp before taking this lock, so this write is newer
        // than whatever the key holds (otherwise it could overwrite a newer
        // merged version).
        let hlc = self.clock.tick(now_ms);
        // Told before the map changes, while the shard is locked: nobody
        // can see the difference.
        self.notify(key, value.as_ref());
        let tomb = value.is_none();
        let entry = Entry::new(value, hlc, 0, seq, self.write_stamp()).living(life);
        let new_shape = entry.shape();
        let old_shape = held.as_ref().map(|(_, _, s)| *s);
        let key: Key = match (held, slot) {
            (Some((k, _, _)), Some(slot)) => {
                // Replaced in place: the map keeps its key.
                shard.replace(slot, entry);
                k
            }
            _ => {
                let k = Key::new(key);
                shard.insert_new(k.clone(), entry);
                k
            }
        };
        if tomb {
            self.note_tombstone(0, seq);
        }
        self.relife(&key, old_shape, Some(new_shape));
        drop(shard);
        log.append(seq, key.clone(), hlc);
        Ok((key, hlc, seq))
    }

    /// The value of `key`, if it shows one: tombstones, and values owned by
    /// a hidden owner ([`Store::hide_owner`]), read as `None`. Values whose
    /// expiry passed are shown until [`Store::expire`] sweeps them; use
    /// [`Store::get_at`] to hide them at once.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.get_shown(key, None)
    }

    /// [`Store::get`], hiding values expired at `now_ms` too.
    pub fn get_at(&self, key: &str, now_ms: u64) -> Option<Bytes> {
        self.get_shown(key, Some(now_ms))
    }

    fn get_shown(&self, key: &str, now_ms: Option<u64>) -> Option<Bytes> {
        let shard = self.shard(key).read();
        let e = shard.get(key)?;
        if !self.shows(e, now_ms) {
            return None;
        }
        if let Some(b) = self.budget.as_deref().filter(|b| b.lru()) {
            e.touch(b.read_stamp());
        }
        e.value.clone()
    }

    /// The full record of `key`, tombstones included.
    pub fn get_record(&self, key: &str) -> Option<Record> {
        let (k, e) = {
            let shard = self.shard(key).read();
            let (k, e) = shard.get_key_value(key)?;
            (k.clone(), e.clone())
        };
        Some(self.to_record(k, &e))
    }

    /// Whether `key` shows a value (as [`Store::get`] would).
    pub fn contains(&self, key: &str) -> bool {
        self.contains_shown(key, None)
    }

    /// Whether `key` shows a value at `now_ms` (as [`Store::get_at`] would).
    pub fn contains_at(&self, key: &str, now_ms: u64) -> bool {
        self.contains_shown(key, Some(now_ms))
    }

    fn contains_shown(&self, key: &str, now_ms: Option<u64>) -> bool {
        self.shard(key)
            .read()
            .get(key)
            .is_some_and(|e| self.shows(e, now_ms))
    }

    /// Number of keys showing a value (tombstones and values of hidden
    /// owners excluded). Values whose expiry passed count until
    /// [`Store::expire`] sweeps them.
    pub fn len(&self) -> usize {
        self.live
            .load(Ordering::Relaxed)
            .saturating_sub(self.lives.hidden_live())
    }

    /// Whether no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of keys held, tombstones included.
    pub fn len_with_tombstones(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// The keys showing a value (as [`Store::get`] would), sorted.
    pub fn keys(&self) -> Vec<String> {
        self.keys_shown(None)
    }

    /// The keys showing a value at `now_ms`, sorted.
    pub fn keys_at(&self, now_ms: u64) -> Vec<String> {
        self.keys_shown(Some(now_ms))
    }

    fn keys_shown(&self, now_ms: Option<u64>) -> Vec<String> {
        let mut keys: Vec<String> = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.read();
            keys.extend(
                shard
                    .iter()
                    .filter(|(_, e)| self.shows(e, now_ms))
                    .map(|(k, _)| k.to_string()),
            );
        }
        keys.sort_unstable();
        keys
    }

    /// The keys starting with `prefix` and their values (as [`Store::get`]
    /// shows them), sorted by key.
    pub fn scan_prefix(&self, prefix: &str) -> Vec<(String, Bytes)> {
        self.scan_shown(prefix, None)
    }

    /// [`Store::scan_prefix`] at `now_ms` (as [`Store::get_at`] shows them).
    pub fn scan_prefix_at(&self, prefix: &str, now_ms: u64) -> Vec<(String, Bytes)> {
        self.scan_shown(prefix, Some(now_ms))
    }

    fn scan_shown(&self, prefix: &str, now_ms: Option<u64>) -> Vec<(String, Bytes)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read();
            let matching = shard
                .range(prefix, None)
                .take_while(|(k, _)| k.starts_with(prefix));
            for (k, e) in matching {
                if let Some(v) = e.value.as_ref().filter(|_| self.shows(e, now_ms)) {
                    out.push((k.to_string(), v.clone()));
                }
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every record held (tombstones included), sorted by key.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let items: Vec<(Key, Entry)> = shard
                .read()
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect();
            out.extend(items.into_iter().map(|(k, e)| self.to_record(k, &e)));
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out
    }

    // ----- replication --------------------------------------------------------

    /// Merges a record from elsewhere. Returns whether it won (it is now the
    /// local state of its key). Commutative, associative and idempotent.
    ///
    /// A record the local watermarks already cover, for a key that is not
    /// held at all, is refused: its key was deleted since and the tombstone
    /// collected, so accepting it would bring the key back.
    pub fn merge(&self, record: Record) -> bool {
        self.clock.observe(record.version.hlc);
        let (oid, log) = self.intern(&record.version.origin());
        let mut log = log.lock();
        let (won, write) = self.merge_locked(&mut log, oid, record);
        log.index_writes(write);
        drop(log);
        self.after_merge();
        won
    }

    /// Makes room for about `additional` more keys before they are merged
    /// (a node loading its data dir knows how many it will hold): the
    /// shards' hash indexes are sized once rather than grown, and rehashed,
    /// step by step. Costs only the index slots the keys would take anyway,
    /// plus a margin for shards that get more than their share.
    pub fn reserve_keys(&self, additional: usize) {
        let per = additional.div_ceil(self.shards.len());
        // Keys spread over shards by hash: allow four standard deviations.
        let per = per + 4 * per.isqrt();
        for shard in self.shards.iter() {
            shard.write().reserve(per);
        }
    }

    /// Merges `records` as [`Store::merge`] would one after the other, and
    /// returns whether each won. Consecutive records of one origin (a push,
    /// a delta's chunk) share one lookup and one lock of that origin.
    pub fn merge_batch(&self, records: Vec<Record>) -> Vec<bool> {
        let mut won = Vec::with_capacity(records.len());
        // The batch's index entries go in at its end, each origin's in
        // sequence order: records in key order (a page, a stream, a data
        // dir loaded) come from origins interleaved and have sequence
        // numbers in no order, and putting them one by one would search
        // the index for each.
        let mut writes: Vec<(u32, u64, IndexEntry)> = Vec::with_capacity(records.len());
        let mut logs = Vec::new();
        let mut rest = records.into_iter().peekable();
        while let Some(first) = rest.next() {
            let origin = first.version.origin();
            let same = |r: &Record| {
                r.version.generation == origin.generation && r.version.node == origin.node
            };
            let mut run = vec![first];
            while let Some(r) = rest.next_if(|r| same(r)) {
                run.push(r);
            }
            if let Some(newest) = run.iter().map(|r| r.version.hlc).max() {
                self.clock.observe(newest);
            }
            let (oid, log) = self.intern(&origin);
            {
                let mut log = log.lock();
                for r in run {
                    let (w, write) = self.merge_locked(&mut log, oid, r);
                    won.push(w);
                    writes.extend(write.map(|(seq, entry)| (oid, seq, entry)));
                }
            }
            logs.push((oid, log));
        }
        // Stable: of two writes with one number, the first stays first.
        writes.sort_by_key(|(oid, seq, _)| (*oid, *seq));
        logs.sort_by_key(|(oid, _)| *oid);
        logs.dedup_by_key(|(oid, _)| *oid);
        let mut writes = writes.into_iter().peekable();
        for (oid, log) in logs {
            let mine = std::iter::from_fn(|| writes.next_if(|(o, _, _)| *o == oid));
            log.lock()
                .index_writes(mine.map(|(_, seq, entry)| (seq, entry)));
        }
        self.after_merge();
        won
    }

    /// [`Store::merge`] once the record's origin is interned as `oid`, its
    /// log locked and its timestamp observed. Returns whether it won, and
    /// the write's index entry, for [`OriginLog::index_writes`] (a batch
    /// indexes its writes at its end, and raises the watermark then: a
    /// record of a key not held is refused when its write is already
    /// indexed, whether or not the watermark has passed it yet).
    fn merge_locked(
        &self,
        log: &mut OriginLog,
        oid: u32,
        record: Record,
    ) -> (bool, Option<(u64, IndexEntry)>) {
        if log.is_retired() {
            return (self.refuse_retired(), None);
        }
        let Record {
            key,
            value,
            version,
            lifetime,
        } = record;
        // A value already expired is stored as the tombstone it behaves as.
        let value = value.filter(|_| !lifetime.is_expired(self.lives.now_ms()));
        let incoming = Entry::new(value, version.hlc, oid, version.seq, 0).living(lifetime);
        let len = |e: &Entry| e.value.as_ref().map(Bytes::len);
        let covered = version.seq <= log.watermark;
        let (won, key) = {
            let mut shard = self.shard(&key).write();
            match shard.find(&key) {
                Some(slot) => {
                    let (k, current) = shard.at_slot(slot);
                    let k = k.clone();
                    if self.cmp_entries(&incoming, current) == CmpOrdering::Greater {
                        self.changed(k.len(), Some(len(current)), Some(len(&incoming)));
                        self.won(&incoming);
                        self.relife(&k, Some(current.shape()), Some(incoming.shape()));
                        if self.shows(current, None) || self.shows(&incoming, None) {
                            self.notify(&k, self.shown_value(&incoming));
                        } else {
                            // Nothing a watcher sees (a tombstone over a
                            // tombstone, a hidden owner's value), but the
                            // record changed: a persister must hear of it.
                            self.tell_collected(&k);
                        }
                        shard.replace(slot, incoming);
                        (true, k)
                    } else {
                        (false, k)
                    }
                }
                // Covered, or this very write was indexed here before and
                // its key has gone since (a newer tombstone that was
                // collected, a page that dropped it): taking it again would
                // bring a deleted key back. (The index check also holds
                // mid-batch, where the watermark is raised only at the end.)
                None if covered || log.index.contains(version.seq) => (false, key),
                None => {
                    self.changed(key.len(), None, Some(len(&incoming)));
                    self.won(&incoming);
                    self.relife(&key, None, Some(incoming.shape()));
                    self.notify(&key, self.shown_value(&incoming));
                    shard.insert_new(key.clone(), incoming);
                    (true, key)
                }
            }
        };
        let write = (version.seq > log.floor).then(|| {
            let entry = IndexEntry {
                key,
                hlc: version.hlc,
            };
            (version.seq, entry)
        });
        (won, write)
    }

    /// The local watermark of every known origin (a complete digest).
    pub fn digest(&self) -> Digest {
        self.complete_digest(OriginLog::digest_entry)
    }

    /// A complete digest of the entries `entry` gives for each origin.
    fn complete_digest(&self, entry: fn(&OriginLog) -> Option<DigestEntry>) -> Digest {
        let logs: Vec<_> = self.origins.read().logs.clone();
        let entries = logs.iter().filter_map(|log| entry(&log.lock())).collect();
        Digest {
            entries,
            complete: true,
            open_start: false,
            open_end: false,
        }
    }

    /// Every known origin with its watermark and collected floor, in the
    /// order origins became known.
    pub fn marks(&self) -> Vec<(Origin, u64, u64)> {
        let logs: Vec<_> = self.origins.read().logs.clone();
        logs.iter()
            .map(|log| {
                let log = log.lock();
                (log.origin.clone(), log.watermark, log.floor)
            })
            .collect()
    }

    /// The local watermark for `origin` (0 when unknown).
    pub fn watermark(&self, origin: &Origin) -> u64 {
        self.log_of(origin).map_or(0, |l| l.lock().watermark)
    }

    /// The highest collected sequence number of `origin` (0 when none).
    pub fn floor(&self, origin: &Origin) -> u64 {
        self.log_of(origin).map_or(0, |l| l.lock().floor)
    }

    /// Whether a peer with digest `peer` is too far behind for a delta: it
    /// could miss a delete whose tombstone was collected here. It must then
    /// be sent [`Store::page`]s instead.
    pub fn needs_resync(&self, peer: &Digest) -> bool {
        !self.resync_origins(peer).is_empty()
    }

    /// The origins in which the peer with digest `peer` is below this
    /// store's floor (see [`Store::needs_resync`]).
    pub fn resync_origins(&self, peer: &Digest) -> Vec<Origin> {
        let logs: Vec<_> = self.origins.read().logs.clone();
        logs.iter()
            .filter_map(|log| {
                let log = log.lock();
                let behind = peer.watermark(&log.origin).is_some_and(|w| w < log.floor);
                (log.floor > 0 && !log.is_retired() && behind).then(|| log.origin.clone())
            })
            .collect()
    }

    /// Records the peer with digest `peer` lacks, cut to `budget` bytes (by
    /// [`Record::size_hint`]). Origins are visited starting at `rotate`
    /// (modulo their number), so repeated calls with varying values share a
    /// small budget fairly between origins.
    ///
    /// Applying the result at the peer keeps invariant W there, whatever the
    /// cut; see [`OriginChunk`]. Every record travels inline: a record larger
    /// than `budget` stops its origin here (use [`Store::delta_split`] to
    /// send such records separately).
    pub fn delta_for(&self, peer: &Digest, budget: usize, rotate: usize) -> Delta {
        self.delta_split(peer, budget, rotate, usize::MAX).0
    }

    /// Like [`Store::delta_for`], but records whose value is longer than
    /// `inline_max` bytes are returned apart (second item, at most one per
    /// origin), for the caller to send by other means; they do not count
    /// against `budget`.
    ///
    /// An origin's chunk stops just before the first such record (so the
    /// peer raises no watermark over it), and the later writes of that
    /// origin the peer lacks follow as [`Delta::loose`] records, so a large
    /// value in transit never holds the others up. Once the peer holds the
    /// large record (by [`Store::merge`]), its watermark rises over it and the
    /// loose records after it.
    ///
    /// Newest first for a peer far behind: when the chunks fill three
    /// quarters of the budget before the peer is caught up, the last quarter
    /// carries, as loose records, the newest writes of the origin that was cut
    /// and of the origins not reached, newest first. A far-behind peer sees
    /// current values at once while the chunks fill in the history in order.
    pub fn delta_split(
        &self,
        peer: &Digest,
        budget: usize,
        rotate: usize,
        inline_max: usize,
    ) -> (Delta, Vec<Record>) {
        self.delta_with(
            peer,
            &DeltaOptions {
                budget,
                rotate,
                inline_max,
                hold: &|_| u64::MAX,
                newest_first: true,
                max_items: usize::MAX,
            },
        )
    }

    /// Like [`Store::delta_split`], and writes that `opts.hold` holds back
    /// (because they are being pushed) are not sent: an origin's chunk stops
    /// before them, as if the budget had run out there.
    pub fn delta_with(&self, peer: &Digest, opts: &DeltaOptions<'_>) -> (Delta, Vec<Record>) {
        let DeltaOptions {
            budget,
            rotate,
            inline_max,
            hold,
            newest_first,
            max_items,
        } = *opts;
        let logs: Vec<_> = self.origins.read().logs.clone();
        let mut delta = Delta::default();
        let mut large = Vec::new();
        let mut used = 0usize;
        // Records and ghosts in the delta so far.
        let mut items = 0usize;
        // Keys whose record travels inline in this delta, and apart.
        let mut sent_keys: HashSet<Key> = HashSet::new();
        let mut large_keys: HashSet<Key> = HashSet::new();
        let n = logs.len();
        let is_large = |e: &Entry| e.value.as_ref().is_some_and(|v| v.len() > inline_max);
        let full_budget = budget;
        let budget = match newest_first {
            true => budget - budget / 4,
            false => budget,
        };
        // Where the chunks stopped short: the position in the rotation and
        // the last seq of that origin already sent.
        let mut stopped: Option<(usize, u64)> = None;
        'origins: for i in 0..n {
            let oid = ((rotate + i) % n) as u32;
            let log = logs[oid as usize].lock();
            let Some(from) = peer.watermark(&log.origin).filter(|_| !log.is_retired()) else {
                continue;
            };
            let top = log.watermark.min(hold(&log.origin).saturating_sub(1));
            if from >= top {
                continue;
            }
            let chunk_cost = CHUNK_OVERHEAD + log.origin.node.as_str().len();
            if used + chunk_cost > budget {
                stopped = Some((i, from));
                break;
            }
            let mut chunk = OriginChunk {
                origin: log.origin.clone(),
                from,
                to: from,
                records: Vec::new(),
                ghosts: Vec::new(),
            };
            let mut cost = chunk_cost;
            let mut cut = false;
            // Set once the chunk stopped before a large record: later writes
            // go loose.
            let mut loose_from = None;
            let mut last_sent = from;
            for (seq, ie) in log.index.range(from + 1, top) {
                let current = self.shard(&ie.key).read().get(&ie.key).cloned();
                if loose_from.is_some() {
                    // Only this origin's live writes, each once.
                    let Some(e) = current.filter(|e| e.is_write(oid, seq)) else {
                        continue;
                    };
                    if sent_keys.contains(&ie.key) {
                        continue;
                    }
                    if is_large(&e) {
                        continue;
                    }
                    let rec_cost = self.entry_size(&ie.key, &e);
                    if used + cost + rec_cost > budget || items >= max_items {
                        cut = true;
                        break;
                    }
                    cost += rec_cost;
                    items += 1;
                    sent_keys.insert(ie.key.clone());
                    delta.loose.push(self.to_record(ie.key.clone(), &e));
                    last_sent = seq;
                    continue;
                }
                let mut add_record = None;
                let mut add_ghost = false;
                match current {
                    Some(e) if e.is_write(oid, seq) && !sent_keys.contains(&ie.key) => {
                        add_record = Some(e);
                    }
                    // Live, but already sent as the newer version of a ghost.
                    Some(e) if e.is_write(oid, seq) => {}
                    Some(e) => {
                        add_ghost = true;
                        let newer = self.origin_of(e.origin);
                        let peer_has = peer.watermark(&newer).is_some_and(|w| w >= e.seq);
                        if !peer_has && !sent_keys.contains(&ie.key) {
                            add_record = Some(e);
                        }
                    }
                    // Collected since the index entry was read: nothing to send.
                    None => {}
                }
                if let Some(e) = add_record.as_ref().filter(|e| is_large(e)) {
                    // The chunk ends before this write: the peer may raise
                    // its watermark over it only once it holds the record.
                    if large_keys.insert(ie.key.clone()) {
                        large.push(self.to_record(ie.key.clone(), e));
                    }
                    loose_from = Some(seq);
                    last_sent = seq;
                    continue;
                }
                let rec_cost = add_record
                    .as_ref()
                    .map_or(0, |e| self.entry_size(&ie.key, e));
                let ghost_cost = if add_ghost {
                    ie.key.len() + GHOST_OVERHEAD
                } else {
                    0
                };
                let adds = usize::from(add_record.is_some()) + usize::from(add_ghost);
                if used + cost + rec_cost + ghost_cost > budget
                    || items.saturating_add(adds) > max_items
                {
                    cut = true;
                    break;
                }
                cost += rec_cost + ghost_cost;
                items += adds;
                if let Some(e) = add_record {
                    sent_keys.insert(ie.key.clone());
                    chunk.records.push(self.to_record(ie.key.clone(), &e));
                }
                if add_ghost {
                    chunk.ghosts.push(Ghost {
                        seq,
                        key: ie.key.clone(),
                        hlc: ie.hlc,
                    });
                }
                chunk.to = seq;
                last_sent = seq;
            }
            if !cut && loose_from.is_none() {
                chunk.to = top;
            }
            used += cost;
            if chunk.to > chunk.from {
                delta.chunks.push(chunk);
            }
            if cut {
                stopped = Some((i, last_sent));
                break 'origins;
            }
        }
        if let Some((at, after)) = stopped.filter(|_| newest_first) {
            self.newest_first(
                &logs,
                peer,
                (rotate, at, after),
                (used, full_budget, max_items.saturating_sub(items)),
                &mut sent_keys,
                hold,
                &is_large,
                &mut delta.loose,
            );
        }
        (delta, large)
    }

    /// Adds loose records, newest first, from the origin at position `at` of
    /// the rotation (writes after `after` only) and the origins after it,
    /// while `used` stays within `budget`.
    #[allow(clippy::too_many_arguments)]
    fn newest_first(
        &self,
        logs: &[Arc<Mutex<OriginLog>>],
        peer: &Digest,
        (rotate, at, after): (usize, usize, u64),
        (mut used, budget, max_records): (usize, usize, usize),
        sent_keys: &mut HashSet<Key>,
        hold: &dyn Fn(&Origin) -> u64,
        is_large: &dyn Fn(&Entry) -> bool,
        loose: &mut Vec<Record>,
    ) {
        let already = loose.len();
        let n = logs.len();
        for i in at..n {
            let oid = ((rotate + i) % n) as u32;
            let log = logs[oid as usize].lock();
            let Some(from) = peer.watermark(&log.origin).filter(|_| !log.is_retired()) else {
                continue;
            };
            let from = if i == at { from.max(after) } else { from };
            let top = log.watermark.min(hold(&log.origin).saturating_sub(1));
            if from >= top {
                continue;
            }
            for (seq, ie) in log.index.range(from + 1, top).rev() {
                if sent_keys.contains(&ie.key) {
                    continue;
                }
                let current = self.shard(&ie.key).read().get(&ie.key).cloned();
                let Some(e) = current.filter(|e| e.is_write(oid, seq)) else {
                    continue;
                };
                if is_large(&e) {
                    continue;
                }
                let cost = self.entry_size(&ie.key, &e);
                if used + cost > budget || loose.len() - already >= max_records {
                    return;
                }
                used += cost;
                sent_keys.insert(ie.key.clone());
                loose.push(self.to_record(ie.key.clone(), &e));
            }
        }
    }

    /// Applies a delta from a peer: merges its records, remembers its ghosts,
    /// raises watermarks where the chunk starts at or below them, then merges
    /// the loose records.
    pub fn apply(&self, delta: &Delta) -> ApplyStats {
        self.apply_owned(delta.clone())
    }

    /// [`Store::apply`] for a delta the caller no longer needs: its records
    /// are stored as they are, not copied (a copy gives each value a shared
    /// header that the store would keep).
    pub fn apply_owned(&self, delta: Delta) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let mut count = |won: Vec<bool>| {
            let n = won.iter().filter(|w| **w).count();
            stats.won += n;
            stats.lost += won.len() - n;
        };
        for mut chunk in delta.chunks {
            count(self.merge_batch(std::mem::take(&mut chunk.records)));
            let (_, log) = self.intern(&chunk.origin);
            let mut log = log.lock();
            if log.is_retired() {
                continue;
            }
            for g in &chunk.ghosts {
                self.clock.observe(g.hlc);
                if g.seq > log.floor {
                    log.index.insert_if_absent(
                        g.seq,
                        IndexEntry {
                            key: g.key.clone(),
                            hlc: g.hlc,
                        },
                    );
                }
            }
            if log.watermark >= chunk.from && chunk.to > log.watermark {
                log.watermark = chunk.to;
                stats.advanced += 1;
            }
        }
        count(self.merge_batch(delta.loose));
        stats
    }

    /// Removes tombstones, and index entries of superseded writes, whose
    /// timestamp is older than `now_ms - retention_ms`, and raises the
    /// collected floor of their origins. Live values are never removed.
    pub fn collect_garbage(&self, now_ms: u64, retention_ms: u64) -> GcStats {
        let cutoff = Hlc::new(now_ms.saturating_sub(retention_ms), 0);
        let logs: Vec<_> = self.origins.read().logs.clone();
        let mut stats = GcStats::default();
        for (oid, log) in logs.iter().enumerate() {
            let mut log = log.lock();
            let watermark = log.watermark;
            let mut remove = Vec::new();
            for (seq, ie) in log.index.range(0, watermark) {
                if ie.hlc >= cutoff {
                    break;
                }
                let mut shard = self.shard(&ie.key).write();
                match shard.get(&ie.key) {
                    Some(e) if e.is_write(oid as u32, seq) => {
                        if e.value.is_none() {
                            shard.remove(&ie.key);
                            self.tell_collected(&ie.key);
                            self.changed(ie.key.len(), Some(None), None);
                            stats.tombstones += 1;
                            remove.push(seq);
                        }
                    }
                    _ => {
                        stats.ghosts += 1;
                        remove.push(seq);
                    }
                }
            }
            log.forget(remove);
        }
        stats
    }

    /// Removes the index entries of superseded writes ("ghosts") of each
    /// listed origin up to its bound (and the local watermark), whatever
    /// their age, and raises the collected floor over them. Returns how many
    /// were removed.
    ///
    /// Always safe, as [`Store::collect_garbage`] is: a peer whose watermark
    /// is below a floor is sent re-synchronisation pages instead of deltas.
    /// A good bound is the lowest watermark the live peers have for the
    /// origin: then none of them has to be re-synchronised, and overwrites
    /// no longer cost index memory for the whole tombstone retention.
    pub fn collect_superseded(&self, bounds: &[(Origin, u64)]) -> usize {
        let mut removed = 0;
        for (origin, bound) in bounds {
            let Some((oid, log)) = self.id_and_log(origin) else {
                continue;
            };
            let mut log = log.lock();
            let top = (*bound).min(log.watermark);
            let ghosts: Vec<u64> = log
                .index
                .range(0, top)
                .filter(|(seq, ie)| {
                    let shard = self.shard(&ie.key).read();
                    !shard.get(&ie.key).is_some_and(|e| e.is_write(oid, *seq))
                })
                .map(|(seq, _)| seq)
                .collect();
            removed += ghosts.len();
            log.forget(ghosts);
        }
        removed
    }

    /// Number of index entries: one per live write, plus the superseded
    /// writes not collected yet (see [`Store::collect_superseded`]).
    pub fn index_len(&self) -> usize {
        let logs: Vec<_> = self.origins.read().logs.clone();
        logs.iter().map(|l| l.lock().index.len()).sum()
    }

    /// Raises local watermarks to those of `digest` (the first page of a
    /// completed re-synchronisation, see [`Page`]).
    pub fn raise_watermarks(&self, digest: &Digest) -> usize {
        let mut raised = 0;
        for e in digest.entries.iter().filter(|e| !e.is_retired()) {
            let (_, log) = self.intern(&e.origin);
            let mut log = log.lock();
            if e.watermark > log.watermark && !log.is_retired() {
                // Pages carry neither the tombstones the sender collected nor
                // its superseded writes, so this store cannot tell a peer
                // below the new watermark what it missed: such a peer must be
                // re-synchronised too, as by a store that collected them.
                log.floor = log.floor.max(e.watermark);
                log.watermark = e.watermark;
                raised += 1;
            }
        }
        raised
    }

    /// Restores the watermarks and collected floors a durable node stored,
    /// once its stored records are merged. Each watermark rises to the
    /// stored one, and the floor to the stored one and, where the watermark
    /// rose past the writes now indexed, to the watermark: the superseded
    /// writes and collected tombstones below it are not stored, so a peer
    /// below it must be re-synchronised, as by [`Store::raise_watermarks`].
    /// Returns how many origins' marks changed.
    pub fn restore_marks(&self, marks: &[(Origin, u64, u64)]) -> usize {
        let mut changed = 0;
        for (origin, watermark, floor) in marks {
            let (_, log) = self.intern(origin);
            let mut log = log.lock();
            if log.is_retired() {
                continue;
            }
            let before = (log.watermark, log.floor);
            if *watermark > log.watermark {
                log.floor = log.floor.max(*watermark);
                log.watermark = *watermark;
            }
            log.floor = log.floor.max((*floor).min(log.watermark));
            changed += usize::from((log.watermark, log.floor) != before);
        }
        changed
    }

    /// One page of a full re-synchronisation: the records (tombstones
    /// included) of the keys from `start` on, in key order, cut to `budget`.
    ///
    /// `watermarks` is the digest the page carries (see [`Page`]): this
    /// store's [`Store::digest`], or a window of it when the whole digest
    /// would not leave room for records. It must be taken before the call.
    /// `end` is the successor of the last key included (that key followed by
    /// a NUL character), so the page's size is bounded by the keys it carries.
    ///
    /// The shards' ordered keys are merged from `start` on, so a page costs
    /// its own records (times log of the shard count) plus one range lookup
    /// per shard, and a whole re-synchronisation of n keys about n log n.
    /// All shards are read-locked for the page, in index order: a thread
    /// that holds several shard locks always takes them in that order.
    pub fn page(&self, start: &str, budget: usize, watermarks: Digest) -> Page {
        let mut page = Page {
            start: start.to_string(),
            end: None,
            records: Vec::new(),
            watermarks,
        };
        let mut used = page.size_hint();
        let guards: Vec<_> = self.shards.iter().map(|s| s.read()).collect();
        let mut walks: Vec<_> = guards.iter().map(|g| g.range(start, None)).collect();
        // The next entry of each shard; the heap orders their keys.
        let mut next: Vec<Option<&Entry>> = vec![None; walks.len()];
        let mut heads = BinaryHeap::with_capacity(walks.len());
        for (i, walk) in walks.iter_mut().enumerate() {
            if let Some((k, e)) = walk.next() {
                next[i] = Some(e);
                heads.push(Reverse((k, i)));
            }
        }
        while let Some(Reverse((k, i))) = heads.pop() {
            let Some(e) = next[i].take() else { break };
            let cost = self.entry_size(k, e) + k.len();
            // Always make progress: a page carries at least one record.
            if used + cost > budget && !page.records.is_empty() {
                let last = page.records.last().map(|r| r.key.to_string());
                page.end = Some(last.unwrap_or_default() + "\0");
                break;
            }
            used += cost;
            page.records.push(self.to_record(k.clone(), e));
            if let Some((k, e)) = walks[i].next() {
                next[i] = Some(e);
                heads.push(Reverse((k, i)));
            }
        }
        page
    }

    /// Applies one re-synchronisation page (see [`Page`]).
    pub fn apply_page(&self, page: &Page) -> ApplyStats {
        self.apply_page_skipping(page, &BTreeSet::new())
    }

    /// Applies `page` but for the records of the keys in `skipped`, which
    /// are not merged and still count as in the page: whatever this store
    /// holds of them is kept. (A receiver that screens records out of a
    /// page skips them so: it must neither take them nor drop the keys
    /// they name, and must not raise watermarks on the strength of it.)
    pub fn apply_page_skipping(&self, page: &Page, skipped: &BTreeSet<Key>) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let in_page: HashSet<&str> = page.records.iter().map(|r| &*r.key).collect();
        let taken = page.records.iter().filter(|r| !skipped.contains(&r.key));
        let won: Vec<bool> = if self.budget.is_none() {
            // In one batch: a page's records come in key order, their
            // sequence numbers in none, and a batch indexes them in order.
            self.merge_batch(taken.cloned().collect())
        } else {
            // One at a time, so that a budget is enforced after each.
            taken.map(|r| self.merge(r.clone())).collect()
        };
        let n = won.iter().filter(|w| **w).count();
        stats.won += n;
        stats.lost += won.len() - n;
        let origins: Vec<Origin> = self.origins.read().origins.clone();
        let mut collected: Vec<(u32, u64)> = Vec::new();
        for shard in self.shards.iter() {
            // A page covers a narrow range: most shards hold nothing to drop
            // in it, and are only read.
            if self
                .dropped_by(&shard.read(), page, &in_page, &origins)
                .is_empty()
            {
                continue;
            }
            let mut shard = shard.write();
            for k in self.dropped_by(&shard, page, &in_page, &origins) {
                if let Some(e) = shard.remove(&k) {
                    self.changed(k.len(), Some(e.value.as_ref().map(Bytes::len)), None);
                    self.relife(&k, Some(e.shape()), None);
                    stats.dropped += 1;
                    collected.push((e.origin, e.seq));
                    if self.shows(&e, None) {
                        self.notify(&k, None);
                    } else {
                        self.tell_collected(&k);
                    }
                }
            }
        }
        // Dropping a record is collecting it (the sender collected a newer
        // tombstone of its key): raise the floor of its origin, so that a peer
        // that has not seen it is re-synchronised rather than sent a delta that
        // skips it.
        if !collected.is_empty() {
            let logs: Vec<_> = self.origins.read().logs.clone();
            for (oid, seq) in collected {
                let mut log = logs[oid as usize].lock();
                log.floor = log.floor.max(seq.min(log.watermark));
            }
        }
        self.after_merge();
        stats
    }

    /// The keys of `shard` that `page` drops: in its range, absent from it,
    /// and held at a version its watermarks cover (see [`Page`]).
    fn dropped_by(
        &self,
        shard: &ShardMap<Entry>,
        page: &Page,
        in_page: &HashSet<&str>,
        origins: &[Origin],
    ) -> Vec<Key> {
        let covered = |e: &Entry| {
            // An origin interned (by a concurrent merge) since `origins` was
            // read is looked up again.
            let origin = match origins.get(e.origin as usize) {
                Some(o) => o.clone(),
                None => self.origin_of(e.origin),
            };
            page.watermarks
                .watermark(&origin)
                .is_some_and(|w| w >= e.seq && w != RETIRED_WATERMARK)
        };
        shard
            .range(&page.start, page.end.as_deref())
            .filter(|(k, e)| !in_page.contains(&***k) && covered(e))
            .map(|(k, _)| k.clone())
            .collect()
    }

    // ----- helpers ------------------------------------------------------------

    fn shard(&self, key: &str) -> &Shard {
        // A hasher of its own: the maps' hashes of the keys in one shard
        // must not share the bits that chose the shard.
        let h = self.shard_hasher.hash_one(key);
        &self.shards[(h & self.shard_mask) as usize]
    }

    fn intern(&self, origin: &Origin) -> (u32, Arc<Mutex<OriginLog>>) {
        {
            // One read guard: parking_lot's RwLock is fair, so a second read
            // taken while a writer waits would deadlock.
            let o = self.origins.read();
            if let Some(&id) = o.ids.get(origin) {
                return (id, o.logs[id as usize].clone());
            }
        }
        let mut o = self.origins.write();
        let next = o.logs.len() as u32;
        match o.ids.entry(origin.clone()) {
            MapEntry::Occupied(e) => {
                let id = *e.get();
                (id, o.logs[id as usize].clone())
            }
            MapEntry::Vacant(v) => {
                v.insert(next);
                let log = Arc::new(Mutex::new(OriginLog::new(origin.clone())));
                o.logs.push(log.clone());
                o.origins.push(origin.clone());
                (next, log)
            }
        }
    }

    fn id_and_log(&self, origin: &Origin) -> Option<(u32, Arc<Mutex<OriginLog>>)> {
        let o = self.origins.read();
        o.ids
            .get(origin)
            .map(|&id| (id, o.logs[id as usize].clone()))
    }

    fn log_of(&self, origin: &Origin) -> Option<Arc<Mutex<OriginLog>>> {
        self.id_and_log(origin).map(|(_, log)| log)
    }

    fn origin_of(&self, id: u32) -> Origin {
        self.origins.read().origins[id as usize].clone()
    }

    fn to_record(&self, key: Key, e: &Entry) -> Record {
        let origin = self.origin_of(e.origin);
        Record {
            key,
            value: e.value.clone(),
            version: Version::new(e.hlc, &origin, e.seq),
            lifetime: Lifetime::unpack(e.life),
        }
    }

    fn entry_size(&self, key: &str, e: &Entry) -> usize {
        let node_len = self.origins.read().origins[e.origin as usize]
            .node
            .as_str()
            .len();
        record_size_hint(key.len(), e.value.as_ref().map_or(0, Bytes::len), node_len)
    }

    /// The LWW order on internal entries (same as [`Version`]'s order).
    fn cmp_entries(&self, a: &Entry, b: &Entry) -> CmpOrdering {
        a.hlc.cmp(&b.hlc).then_with(|| {
            if a.origin == b.origin {
                return a.seq.cmp(&b.seq);
            }
            let o = self.origins.read();
            let (oa, ob) = (&o.origins[a.origin as usize], &o.origins[b.origin as usize]);
            oa.node
                .cmp(&ob.node)
                .then(oa.generation.cmp(&ob.generation))
                .then(a.seq.cmp(&b.seq))
        })
    }
}

impl OriginLog {
    /// Indexes merged writes, given in sequence order (each unless its
    /// sequence number already has an entry; of two for one number, the
    /// first), then raises the watermark over the indexed numbers that
    /// follow it: every indexed write of this origin is held (or something
    /// newer for its key is), so contiguous arrivals (eager pushes) raise
    /// it without waiting for anti-entropy. In order, writes past the
    /// index's last number are appended without a search.
    fn index_writes(&mut self, writes: impl IntoIterator<Item = (u64, IndexEntry)>) {
        let mut last = None;
        for (seq, entry) in writes {
            if last.replace(seq) != Some(seq) {
                self.index.insert_if_absent(seq, entry);
            }
        }
        // (Checked: a forged chunk may have put the watermark at the end
        // of the sequence space.)
        while let Some(next) = self.watermark.checked_add(1) {
            if !self.index.contains(next) {
                break;
            }
            self.watermark = next;
        }
    }

    /// Indexes local write `seq` (the next one) and raises the watermark
    /// over it.
    fn append(&mut self, seq: u64, key: Key, hlc: Hlc) {
        self.index.insert(seq, IndexEntry { key, hlc });
        self.watermark = seq;
    }

    /// Removes the index entries of `seqs` and raises the collected floor
    /// over them.
    fn forget(&mut self, seqs: Vec<u64>) {
        for seq in seqs {
            self.index.remove(seq);
            self.floor = self.floor.max(seq);
        }
    }

    fn new(origin: Origin) -> Self {
        OriginLog {
            origin,
            watermark: 0,
            floor: 0,
            index: SeqIndex::default(),
            retired: Retired::No,
        }
    }
}
