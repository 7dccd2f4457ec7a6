//! Retired origins: an origin (a node id and generation) whose every write
//! is superseded here stops costing a digest entry.
//!
//! Every restart of a node without a data dir, every crash of one with a
//! data dir, adds an origin; its watermark stays in every digest for good,
//! although once the generation is gone and nothing it wrote is held any
//! more, the watermark only serves to refuse its old writes coming back.
//! Retiring keeps exactly that and drops the rest:
//!
//! - [`Store::retire_origins`] retires an origin only while no entry of it
//!   (value or tombstone) is held, checked under the origin's log lock, so
//!   no merge of it can slip in between. Its superseded-write index is
//!   dropped (the collected floor rises to the watermark).
//! - A retired origin takes nothing more: its records are refused (counted
//!   by [`Store::retired_refused`]); chunks, pages and restored marks do not
//!   touch its log. Refusing is what the watermark did for the writes it
//!   covered, and the protocol retires only an origin that will write no
//!   more and whose writes no live member holds beyond this watermark.
//! - At first it is *advertised*: digests list it with
//!   [`RETIRED_WATERMARK`], which tells a peer "send me nothing of it" (a
//!   peer that has not retired it yet would otherwise read its absence as
//!   watermark 0 and send all it holds of it, or re-synchronise us). Once
//!   every live member says the same (the protocol decides), it is made
//!   *silent* ([`Store::set_origin_silent`]): digests leave it out.
//! - [`Store::unretire_origin`] takes it back (a member shows writes of it
//!   beyond our watermark): its watermark and floor are as they were, so
//!   nothing that was refused meanwhile was vouched for.
//!
//! An older generation of this node is retired the same way once
//! [`Store::adopt_older_generations`] took over what it holds: each of its
//! records is written again as a local write with the same timestamp,
//! value and lifetime, which beats the original everywhere (same time and
//! node id, newer generation) and loses to every write that beat the
//! original. Without it, a generation that wrote a key nobody overwrote
//! would stay in every digest as long as the key lives.
//!
//! A retired origin still costs its entry in the origin table (its id, node
//! id, generation and marks: about 100 bytes), which is what refusing its
//! writes needs.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Entry, OriginLog, Store};
use crate::record::{Digest, DigestEntry, Lifetime, Record, RETIRED_WATERMARK};
use crate::version::{Origin, Version};
use crate::Key;

/// Where an origin stands (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Retired {
    /// Not retired.
    #[default]
    No,
    /// Retired, listed in digests with [`RETIRED_WATERMARK`].
    Advertised,
    /// Retired, left out of digests.
    Silent,
}

impl OriginLog {
    /// The entry a digest lists for this origin, if any.
    pub(super) fn digest_entry(&self) -> Option<DigestEntry> {
        let watermark = match self.retired {
            Retired::No if self.watermark > 0 => self.watermark,
            Retired::No | Retired::Silent => return None,
            Retired::Advertised => RETIRED_WATERMARK,
        };
        Some(DigestEntry {
            origin: self.origin.clone(),
            watermark,
        })
    }

    /// The entry a page's watermarks list for this origin, if any: the real
    /// watermark, also for an advertised retired origin.
    fn page_entry(&self) -> Option<DigestEntry> {
        (self.retired != Retired::Silent && self.watermark > 0).then(|| DigestEntry {
            origin: self.origin.clone(),
            watermark: self.watermark,
        })
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired != Retired::No
    }
}

impl Store {
    /// Retires each of `candidates` that holds no entry here (see the
    /// module docs) and returns those retired now. The local origin,
    /// unknown origins and those already retired are skipped.
    ///
    /// Costs, per candidate, a look at its indexed writes and, when none of
    /// them is held, one pass over every key (with only that origin's log
    /// and one shard at a time locked): call it seldom, for origins that
    /// will write no more.
    pub fn retire_origins(&self, candidates: &[Origin]) -> Vec<Origin> {
        let mut retired = Vec::new();
        for origin in candidates {
            if *origin == self.local {
                continue;
            }
            let Some((oid, log)) = self.id_and_log(origin) else {
                continue;
            };
            let mut log = log.lock();
            if log.is_retired() || self.holds_indexed(&log, oid) || self.holds_any(oid) {
                continue;
            }
            let writes: Vec<u64> = log.index.range(0, u64::MAX).map(|(s, _)| s).collect();
            log.forget(writes);
            log.floor = log.watermark;
            log.retired = Retired::Advertised;
            self.retired_count.fetch_add(1, Ordering::Relaxed);
            self.forget_owner(origin);
            retired.push(origin.clone());
        }
        retired
    }

    /// Whether a write `log` indexes is held (the cheap check first).
    fn holds_indexed(&self, log: &OriginLog, oid: u32) -> bool {
        log.index.range(0, u64::MAX).any(|(seq, ie)| {
            self.shard(&ie.key)
                .read()
                .get(&ie.key)
                .is_some_and(|e| e.is_write(oid, seq))
        })
    }

    /// Whether any entry of origin `oid` is held.
    fn holds_any(&self, oid: u32) -> bool {
        self.shards
            .iter()
            .any(|s| s.read().values().any(|e| e.origin == oid))
    }

    /// Takes `origin` back from retirement: it is listed with its watermark
    /// again and its records merge as any others. Returns whether it was
    /// retired.
    pub fn unretire_origin(&self, origin: &Origin) -> bool {
        let Some(log) = self.log_of(origin) else {
            return false;
        };
        let mut log = log.lock();
        let was = log.is_retired();
        if was {
            self.retired_count.fetch_sub(1, Ordering::Relaxed);
        }
        log.retired = Retired::No;
        was
    }

    /// Makes a retired `origin` silent (left out of digests) or advertised
    /// again. Returns whether its state changed; origins not retired are
    /// left alone.
    pub fn set_origin_silent(&self, origin: &Origin, silent: bool) -> bool {
        let Some(log) = self.log_of(origin) else {
            return false;
        };
        let mut log = log.lock();
        let to = match (log.retired, silent) {
            (Retired::No, _) => return false,
            (_, true) => Retired::Silent,
            (_, false) => Retired::Advertised,
        };
        let changed = log.retired != to;
        log.retired = to;
        changed
    }

    /// Every retired origin, with whether it is silent.
    pub fn retired_origins(&self) -> Vec<(Origin, bool)> {
        let logs: Vec<_> = self.origins.read().logs.clone();
        logs.iter()
            .filter_map(|log| {
                let log = log.lock();
                log.is_retired()
                    .then(|| (log.origin.clone(), log.retired == Retired::Silent))
            })
            .collect()
    }

    /// Whether `origin` is retired.
    pub fn is_retired(&self, origin: &Origin) -> bool {
        self.log_of(origin).is_some_and(|l| l.lock().is_retired())
    }

    /// Origins known here and not retired (this node's own included): what
    /// a protocol caps, since retired origins cost a digest nothing.
    pub fn active_origins(&self) -> usize {
        let all = self.origins.read().logs.len();
        all.saturating_sub(self.retired_count.load(Ordering::Relaxed))
    }

    /// Whether `origin` is known here (retired or not): a record of an
    /// unknown origin would add one to the origin table.
    pub fn knows_origin(&self, origin: &Origin) -> bool {
        self.origins.read().ids.contains_key(origin)
    }

    /// Records of retired origins refused so far.
    pub fn retired_refused(&self) -> u64 {
        self.retired_refused.load(Ordering::Relaxed)
    }

    pub(super) fn refuse_retired(&self) -> bool {
        self.retired_refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The watermarks a re-synchronisation page carries: the digest, with
    /// advertised retired origins at their real watermark (a page's
    /// watermarks decide which keys the receiver drops, so they must not
    /// cover more than this store had).
    pub fn page_digest(&self) -> Digest {
        self.complete_digest(OriginLog::page_entry)
    }

    /// Writes again, as local writes, every record held of an older
    /// generation of this node (see the module docs), and returns them. The
    /// values and lifetimes do not change, so watchers are told nothing (the
    /// collection observer is, for a persister); the records keep their
    /// timestamps, so they win or lose against every other write as the
    /// originals did, and beat the originals. One pass over every key when
    /// an older generation is known and not retired; nothing otherwise.
    pub fn adopt_older_generations(&self) -> Vec<Record> {
        // The origin table is released before any log is locked (the lock
        // order on `Store`).
        let candidates: Vec<(u32, Arc<parking_lot::Mutex<OriginLog>>)> = {
            let o = self.origins.read();
            o.ids
                .iter()
                .filter(|(origin, _)| {
                    origin.node == self.local.node && origin.generation < self.local.generation
                })
                .map(|(_, &id)| (id, o.logs[id as usize].clone()))
                .collect()
        };
        let older: HashSet<u32> = candidates
            .into_iter()
            .filter(|(_, log)| !log.lock().is_retired())
            .map(|(id, _)| id)
            .collect();
        if older.is_empty() {
            return Vec::new();
        }
        let keys: Vec<Key> = self
            .shards
            .iter()
            .flat_map(|s| {
                let s = s.read();
                s.iter()
                    .filter(|(_, e)| adoptable(e, &older))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.into_iter()
            .filter_map(|key| self.adopt(key, &older))
            .collect()
    }

    /// Writes `key`'s record again as a local write with the same
    /// timestamp, if it is still one of `older`'s.
    fn adopt(&self, key: Key, older: &HashSet<u32>) -> Option<Record> {
        // Lock order: the local log, then the key's shard (as local writes).
        let mut log = self.local_log.lock();
        let seq = log.watermark.checked_add(1)?;
        let mut shard = self.shard(&key).write();
        let e = shard.get_mut(&key).filter(|e| adoptable(e, older))?;
        let (value, hlc, life) = (e.value.clone(), e.hlc, e.life);
        let old_shape = e.shape();
        *e = Entry::new(value.clone(), hlc, 0, seq, e.stamp()).living(Lifetime::unpack(life));
        let new_shape = e.shape();
        if value.is_none() {
            self.note_tombstone(0, seq);
        }
        self.relife(&key, Some(old_shape), Some(new_shape));
        self.tell_collected(&key);
        drop(shard);
        log.append(seq, key.clone(), hlc);
        Some(Record {
            key,
            value,
            version: Version::new(hlc, &self.local, seq),
            lifetime: Lifetime::unpack(life),
        })
    }
}

/// Whether `e` is a record of one of `older` to adopt: not a live ephemeral
/// value (an older generation's are dead; the protocol removes them, and the
/// tombstone is adopted then).
fn adoptable(e: &Entry, older: &HashSet<u32>) -> bool {
    older.contains(&e.origin) && !(e.value.is_some() && Lifetime::unpack(e.life).ephemeral)
}
