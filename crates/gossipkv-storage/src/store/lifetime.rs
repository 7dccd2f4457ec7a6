//! Lifetimes of values (see [`Lifetime`]): expiry, and values owned by the
//! origin that wrote them.
//!
//! **Expiry.** A value whose expiry passed behaves as a tombstone of the
//! same version. Reads that are given the time (`get_at`, `keys_at`, ...)
//! hide it at once; [`Store::expire`] turns it into that tombstone (the
//! value freed, the key no longer counted by [`Store::len`], watchers told
//! with [`ChangeCause::Expired`]). Every replica holds the same record, so
//! every replica does the same at the same wall-clock time, with no message
//! of its own: nothing special is needed in digests, deltas, pages or
//! collection. The tombstone keeps the record's version and lifetime; it is
//! collected like any other, by the age of its version. A record that
//! arrives already expired is stored as its tombstone. An index of expiries
//! (ordered by time) makes a sweep cost what it expires.
//!
//! **Owned values.** A value with [`Lifetime::ephemeral`] belongs to the
//! origin (node id and generation) that wrote it. Which owners are gone is
//! the membership's business, not the store's: the protocol calls
//! [`Store::hide_owner`] (the owner died or left: its values read as absent,
//! nothing changes in the records), [`Store::show_owner`] (it refuted a
//! false death: they read again) and, after a grace period,
//! [`Store::remove_owned`] (each owned value becomes the tombstone of its
//! own version, as an expired value does). Hiding changes what this replica
//! shows, not what it holds or sends, so replicas that disagree for a while
//! about an owner still converge on the same records; once they agree
//! (the owner is dead everywhere, or has refuted everywhere), they show the
//! same. A value overwritten by another writer belongs to that writer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use super::{Entry, Store};
use crate::record::{Lifetime, Record};
use crate::seq_index::IndexEntry;
use crate::version::{Origin, Version};
use crate::Key;

/// Why what a key shows changed (see [`ChangeObserver`](super::ChangeObserver)).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ChangeCause {
    /// A write: local or merged, or a key dropped by a re-synchronisation
    /// page.
    Write,
    /// The value's expiry passed ([`Store::expire`]).
    Expired,
    /// The value's owner died, left or was replaced by a newer generation
    /// ([`Store::hide_owner`], [`Store::remove_owned`]).
    OwnerGone,
    /// The value's owner is back ([`Store::show_owner`]).
    OwnerBack,
}

/// What the lifetime bookkeeping needs to know of an entry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) life: u64,
    pub(super) origin: u32,
    pub(super) seq: u64,
    pub(super) live: bool,
}

impl Shape {
    fn expiry(&self) -> Option<u64> {
        let t = Lifetime::unpack(self.life).expires_ms;
        (self.live && t != 0).then_some(t)
    }

    fn owned(&self) -> bool {
        self.live && Lifetime::unpack(self.life).ephemeral
    }
}

/// The store's expiry index and owners.
#[derive(Debug, Default)]
pub(super) struct Lifetimes {
    /// `(expiry, key)` of every value held with an expiry.
    expiries: Mutex<BTreeSet<(u64, Key)>>,
    owners: RwLock<Owners>,
    /// Whether any owner is hidden: reads of owned values look no further
    /// when none is.
    any_hidden: AtomicBool,
    /// The latest physical time the store was given.
    now_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Owners {
    /// Owned values held, per origin id.
    live: HashMap<u32, usize>,
    /// Origin ids whose owned values are hidden.
    hidden: HashSet<u32>,
}

impl Lifetimes {
    pub(super) fn see_time(&self, now_ms: u64) {
        // A read first: the common case (time already seen) writes nothing.
        if now_ms > self.now_ms.load(Ordering::Relaxed) {
            self.now_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    /// The latest physical time the store was given (0 before any).
    pub(super) fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    fn is_hidden(&self, oid: u32) -> bool {
        self.any_hidden.load(Ordering::Acquire) && self.owners.read().hidden.contains(&oid)
    }

    /// Owned values held of origin `oid`.
    fn owned(&self, oid: u32) -> usize {
        self.owners.read().live.get(&oid).copied().unwrap_or(0)
    }

    /// Owned values held whose owner is hidden.
    pub(super) fn hidden_live(&self) -> usize {
        if !self.any_hidden.load(Ordering::Acquire) {
            return 0;
        }
        let o = self.owners.read();
        o.hidden.iter().filter_map(|id| o.live.get(id)).sum()
    }
}

/// The lifetime a local write stores: a tombstone lives forever.
pub(super) fn lifetime_of(value: &Option<Bytes>, life: Lifetime) -> Lifetime {
    if value.is_some() {
        life
    } else {
        Lifetime::FOREVER
    }
}

impl Store {
    /// Keeps the expiry index and the owned counts in step with a key's
    /// entry going from `old` to `new`. Called under the key's shard lock.
    pub(super) fn relife(&self, key: &Key, old: Option<Shape>, new: Option<Shape>) {
        let old = old.filter(|s| s.live && s.life != 0);
        let new = new.filter(|s| s.live && s.life != 0);
        if old.is_none() && new.is_none() {
            return;
        }
        let (t_old, t_new) = (old.and_then(|s| s.expiry()), new.and_then(|s| s.expiry()));
        if t_old != t_new {
            let mut x = self.lives.expiries.lock();
            if let Some(t) = t_old {
                x.remove(&(t, key.clone()));
            }
            if let Some(t) = t_new {
                x.insert((t, key.clone()));
            }
        }
        let (o_old, o_new) = (old.filter(Shape::owned), new.filter(Shape::owned));
        if o_old.map(|s| s.origin) != o_new.map(|s| s.origin) {
            let mut owners = self.lives.owners.write();
            if let Some(s) = o_old {
                if let Some(n) = owners.live.get_mut(&s.origin) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        owners.live.remove(&s.origin);
                    }
                }
            }
            if let Some(s) = o_new {
                *owners.live.entry(s.origin).or_default() += 1;
            }
        }
    }

    /// Whether `e` shows its value: it has one, not expired at `now_ms`
    /// (when given), and not owned by a hidden owner.
    pub(super) fn shows(&self, e: &Entry, now_ms: Option<u64>) -> bool {
        if e.value.is_none() {
            return false;
        }
        if e.life == 0 {
            return true;
        }
        let life = Lifetime::unpack(e.life);
        if now_ms.is_some_and(|now| life.is_expired(now)) {
            return false;
        }
        !(life.ephemeral && self.lives.is_hidden(e.origin))
    }

    /// The value `e` shows (ignoring expiry), for the change observer.
    pub(super) fn shown_value<'e>(&self, e: &'e Entry) -> Option<&'e Bytes> {
        e.value.as_ref().filter(|_| self.shows(e, None))
    }

    /// Turns every value whose expiry is at or before `now_ms` into the
    /// tombstone of its version (watchers see [`ChangeCause::Expired`]), and
    /// returns how many. Costs what it expires.
    pub fn expire(&self, now_ms: u64) -> usize {
        self.lives.see_time(now_ms);
        let due: Vec<(u64, Key)> = {
            let mut x = self.lives.expiries.lock();
            match x.first() {
                Some((t, _)) if *t <= now_ms => {}
                _ => return 0,
            }
            let later = match now_ms.checked_add(1) {
                Some(after) => x.split_off(&(after, Key::default())),
                None => BTreeSet::new(),
            };
            std::mem::replace(&mut *x, later).into_iter().collect()
        };
        let mut expired = 0;
        for (t, key) in due {
            let done = self.end_value(&key, ChangeCause::Expired, |e| {
                e.shape().expiry() == Some(t)
            });
            expired += usize::from(done);
        }
        expired
    }

    /// The earliest expiry of a value held (Unix milliseconds), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.lives.expiries.lock().first().map(|(t, _)| *t)
    }

    /// Replaces `key`'s value by the tombstone of the same version, if the
    /// entry held passes `which`; tells the observers (`cause` when the
    /// value was shown). Returns whether it did.
    fn end_value(&self, key: &Key, cause: ChangeCause, which: impl Fn(&Entry) -> bool) -> bool {
        let mut shard = self.shard(key).write();
        let Some(e) = shard.get_mut(key) else {
            return false;
        };
        if e.value.is_none() || !which(e) {
            return false;
        }
        let shown = self.shows(e, None);
        let old = e.shape();
        let len = e.value.take().map_or(0, |v| v.len());
        let (origin, seq, new) = (e.origin, e.seq, e.shape());
        self.changed(key.len(), Some(Some(len)), Some(None));
        self.note_tombstone(origin, seq);
        self.relife(key, Some(old), Some(new));
        if shown {
            self.notify_as(key, None, cause);
        } else {
            self.tell_collected(key);
        }
        true
    }

    /// Hides the owned values of `origin` (it died, left or was replaced):
    /// they read as absent, here and for values of it that arrive later,
    /// until [`Store::show_owner`]. Watchers see each value go
    /// ([`ChangeCause::OwnerGone`]). Returns how many values were hidden
    /// (0 when the owner already was, or is an origin this store never
    /// heard of: nothing to hide, and no origin is added for it).
    pub fn hide_owner(&self, origin: &Origin) -> usize {
        let Some((oid, _)) = self.id_and_log(origin) else {
            return 0;
        };
        {
            let mut owners = self.lives.owners.write();
            if !owners.hidden.insert(oid) {
                return 0;
            }
            self.lives.any_hidden.store(true, Ordering::Release);
        }
        self.tell_owned(oid, ChangeCause::OwnerGone)
    }

    /// Shows again the owned values of `origin` (it refuted a false death).
    /// Watchers see each value come back ([`ChangeCause::OwnerBack`]).
    /// Returns how many (0 when the owner was not hidden).
    pub fn show_owner(&self, origin: &Origin) -> usize {
        let Some((oid, _)) = self.id_and_log(origin) else {
            return 0;
        };
        {
            let mut owners = self.lives.owners.write();
            if !owners.hidden.remove(&oid) {
                return 0;
            }
            if owners.hidden.is_empty() {
                self.lives.any_hidden.store(false, Ordering::Release);
            }
        }
        self.tell_owned(oid, ChangeCause::OwnerBack)
    }

    /// The origins whose owned values are held or hidden: those the
    /// membership must be asked about.
    pub fn owners(&self) -> Vec<Origin> {
        let ids: Vec<u32> = {
            let o = self.lives.owners.read();
            let mut ids: Vec<u32> = o.live.keys().chain(o.hidden.iter()).copied().collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        ids.into_iter().map(|id| self.origin_of(id)).collect()
    }

    /// Forgets that `origin` is hidden when it holds no owned value (its
    /// member was forgotten: nothing is left to hide). Returns whether it
    /// did.
    pub fn forget_owner(&self, origin: &Origin) -> bool {
        let Some((oid, _)) = self.id_and_log(origin) else {
            return false;
        };
        let mut owners = self.lives.owners.write();
        if owners.live.contains_key(&oid) || !owners.hidden.remove(&oid) {
            return false;
        }
        if owners.hidden.is_empty() {
            self.lives.any_hidden.store(false, Ordering::Release);
        }
        true
    }

    /// Whether the owned values of `origin` are hidden.
    pub fn is_owner_hidden(&self, origin: &Origin) -> bool {
        self.id_and_log(origin)
            .is_some_and(|(oid, _)| self.lives.is_hidden(oid))
    }

    /// How many owned values of `origin` are held (hidden or not).
    pub fn owned_len(&self, origin: &Origin) -> usize {
        self.id_and_log(origin)
            .map_or(0, |(oid, _)| self.lives.owned(oid))
    }

    /// Removes the owned values of `origin` for good: each becomes the
    /// tombstone of its own version. Those still shown are told to watchers
    /// as [`ChangeCause::OwnerGone`]. Returns how many.
    pub fn remove_owned(&self, origin: &Origin) -> usize {
        let Some((oid, _)) = self.id_and_log(origin) else {
            return 0;
        };
        let mut removed = 0;
        for (seq, key) in self.owned_writes(oid) {
            let done = self.end_value(&key, ChangeCause::OwnerGone, |e| {
                e.is_write(oid, seq) && e.shape().owned()
            });
            removed += usize::from(done);
        }
        removed
    }

    /// Tells watchers of every owned value of `oid` held, as `cause` (with
    /// the value for [`ChangeCause::OwnerBack`]); returns how many.
    fn tell_owned(&self, oid: u32, cause: ChangeCause) -> usize {
        let mut told = 0;
        for (seq, key) in self.owned_writes(oid) {
            let shard = self.shard(&key).read();
            let Some(e) = shard.get(&key) else {
                continue;
            };
            if !e.is_write(oid, seq) || !e.shape().owned() {
                continue;
            }
            let value = e.value.as_ref().filter(|_| cause == ChangeCause::OwnerBack);
            self.notify_as(&key, value, cause);
            told += 1;
        }
        told
    }

    /// The indexed writes of origin `oid` (they may be superseded since).
    fn owned_writes(&self, oid: u32) -> Vec<(u64, Key)> {
        if self.lives.owned(oid) == 0 {
            return Vec::new();
        }
        let log = self.origins.read().logs[oid as usize].clone();
        let log = log.lock();
        log.index
            .range(0, u64::MAX)
            .map(|(seq, ie): (u64, &IndexEntry)| (seq, ie.key.clone()))
            .collect()
    }

    /// Writes again, with a new version, every owned value of this node's
    /// origin that is still its latest write, keeping value and lifetime
    /// (`keep`), or deletes each (`!keep`). Returns the records written,
    /// for eager push.
    ///
    /// A node that learns it was declared dead re-stamps its owned values
    /// (a replica that removed them for good holds tombstones of the old
    /// versions, which the new ones beat); a node leaving deletes them.
    pub fn rewrite_owned(&self, keep: bool, now_ms: u64) -> Vec<Record> {
        let mut out = Vec::new();
        for (seq, key) in self.owned_writes(0) {
            let current = {
                let shard = self.shard(&key).read();
                match shard.get(&key) {
                    Some(e) if e.is_write(0, seq) && e.shape().owned() => {
                        Some((e.value.clone(), Lifetime::unpack(e.life)))
                    }
                    _ => None,
                }
            };
            let Some((value, life)) = current else {
                continue;
            };
            let value = value.filter(|_| keep);
            let life = lifetime_of(&value, life);
            // Only if the key still holds that write: a concurrent write
            // of the key is newer and must not be overwritten.
            let written = self.write_local(&key, value.clone(), life, now_ms, |held, bytes, n| {
                if held == Some((0, seq)) {
                    self.account(bytes, n);
                    Ok(())
                } else {
                    Err(())
                }
            });
            if let Ok((key, hlc, seq)) = written {
                out.push(Record {
                    key,
                    value,
                    version: Version::new(hlc, self.local_origin(), seq),
                    lifetime: life,
                });
            }
        }
        out
    }
}
