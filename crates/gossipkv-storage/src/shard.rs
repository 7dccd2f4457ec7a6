//! One shard of the store: its keys and entries packed in fixed-size
//! chunks, a hash index of positions in them for point reads and writes,
//! and the same keys in order, for walks over a key range
//! (re-synchronisation pages) that cost the range, not the whole key space.
//!
//! Why chunks and an index of `u32` positions rather than a hash map of
//! entries: a hash table is between 44 % and 87 % full, and every empty
//! slot of a map of entries costs a whole entry (88 bytes), about 58 bytes
//! per key on average over table sizes and up to 110 at the worst. Here an
//! empty index slot costs 5 bytes, and entries fill every chunk but the
//! last ([`CHUNK`] entries each, the last one growing by doubling up to
//! that): no slack to speak of, and growing copies at most one chunk (a
//! single vector that doubles would be a quarter empty on average, and copy
//! a whole shard under its lock when it grows). A lookup reads one more
//! cache line (the index, then the entry).

use std::hash::BuildHasher;
use std::ops::Bound;

use foldhash::fast::RandomState as FastState;
use hashbrown::HashTable;

use crate::ordered::OrderedKeys;
use crate::Key;

/// Entries per chunk.
const CHUNK: usize = 256;

/// Where an entry is in a [`ShardMap`] (see [`ShardMap::find`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot(usize);

/// A shard's keys and entries. Every change of the key set goes through
/// [`ShardMap::insert_new`] and [`ShardMap::remove`], which keep the index
/// and the ordered keys equal to the packed entries.
#[derive(Debug)]
pub(crate) struct ShardMap<E> {
    /// Keys and entries, packed: a removed one is replaced by the last.
    /// Every chunk but the last holds [`CHUNK`] of them; position `i` is
    /// entry `i % CHUNK` of chunk `i / CHUNK`.
    chunks: Vec<Vec<(Key, E)>>,
    /// Entries held.
    len: usize,
    /// Positions in the chunks, by the hash of their key.
    index: HashTable<u32>,
    hasher: FastState,
    order: OrderedKeys,
}

impl<E> Default for ShardMap<E> {
    fn default() -> Self {
        ShardMap {
            chunks: Vec::new(),
            len: 0,
            index: HashTable::new(),
            hasher: FastState::default(),
            order: OrderedKeys::default(),
        }
    }
}

impl<E> ShardMap<E> {
    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Position of `key` in the chunks.
    fn position(&self, key: &str) -> Option<usize> {
        let chunks = &self.chunks;
        self.index
            .find(self.hash(key), |&i| *slot(chunks, i).0 == *key)
            .map(|&i| i as usize)
    }

    fn at(&self, i: usize) -> &(Key, E) {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn at_mut(&mut self, i: usize) -> &mut (Key, E) {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    /// Appends an entry at position `len`.
    fn push(&mut self, slot: (Key, E)) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(slot),
            // A new chunk grows by doubling, to exactly `CHUNK` (a power
            // of two): a small shard does not pay for a whole chunk.
            _ => self.chunks.push(vec![slot]),
        }
        self.len += 1;
    }

    /// Removes the entry at position `len - 1` (there is one).
    fn pop(&mut self) -> (Key, E) {
        let last = self.chunks.last_mut().expect("an entry to pop");
        let slot = last.pop().expect("chunks are never empty");
        if last.is_empty() {
            self.chunks.pop();
        }
        self.len -= 1;
        slot
    }

    /// Where `key`'s entry is: valid until the key set changes (an
    /// [`ShardMap::insert_new`] or a [`ShardMap::remove`]), so a caller
    /// holding the shard's write lock looks a key up once.
    pub(crate) fn find(&self, key: &str) -> Option<Slot> {
        self.position(key).map(Slot)
    }

    /// The key and entry at `slot`.
    pub(crate) fn at_slot(&self, slot: Slot) -> (&Key, &E) {
        let (k, e) = self.at(slot.0);
        (k, e)
    }

    /// Replaces the entry at `slot`, returning the one it held.
    pub(crate) fn replace(&mut self, slot: Slot, entry: E) -> E {
        std::mem::replace(&mut self.at_mut(slot.0).1, entry)
    }

    /// Inserts or replaces `key`'s entry; the map keeps the key it held.
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: Key, entry: E) -> Option<E> {
        match self.find(&key) {
            Some(slot) => Some(self.replace(slot, entry)),
            None => {
                self.insert_new(key, entry);
                None
            }
        }
    }

    /// Makes room in the hash index for `additional` more keys, so that
    /// inserting them does not grow it step by step (each step rehashes
    /// every key held).
    pub(crate) fn reserve(&mut self, additional: usize) {
        let ShardMap {
            chunks,
            index,
            hasher,
            ..
        } = self;
        index.reserve(additional, |&i| hasher.hash_one(&*slot(chunks, i).0));
    }

    /// Inserts `key`, which the caller just found absent (under the same
    /// write lock): no second lookup.
    pub(crate) fn insert_new(&mut self, key: Key, entry: E) {
        debug_assert!(self.position(&key).is_none(), "{key:?} is already held");
        let at = u32::try_from(self.len).expect("fewer than 2^32 keys per shard");
        let h = self.hash(&key);
        self.push((key.clone(), entry));
        let ShardMap {
            chunks,
            index,
            hasher,
            ..
        } = self;
        index.insert_unique(h, at, |&i| hasher.hash_one(&*slot(chunks, i).0));
        let chunks = &self.chunks;
        self.order.insert(at, &key, |i| &slot(chunks, i).0);
    }

    /// Removes `key`, returning its entry.
    pub(crate) fn remove(&mut self, key: &str) -> Option<E> {
        let h = self.hash(key);
        let chunks = &self.chunks;
        let found = self
            .index
            .find_entry(h, |&i| *slot(chunks, i).0 == *key)
            .ok()?;
        let (at, _) = found.remove();
        let key_at = |i| &*slot(chunks, i).0;
        let ordered = self.order.remove(key, key_at);
        debug_assert_eq!(
            ordered,
            Some(at),
            "the order holds {key:?} where the index does"
        );
        let at = at as usize;
        let last = self.len - 1;
        // Where the last entry's position is in the order, read before it
        // moves (the order reads keys through positions).
        let moved_place = (at != last)
            .then(|| self.order.locate(&self.at(last).0, key_at))
            .flatten();
        let mut removed = self.pop();
        if at != last {
            // The last entry moves into the hole: point its index slot and
            // its place in the order there.
            std::mem::swap(self.at_mut(at), &mut removed);
            let moved = self.hash(&self.at(at).0);
            let i = self
                .index
                .find_mut(moved, |&i| i as usize == last)
                .expect("every entry has its index slot");
            *i = at as u32;
            let place = moved_place.expect("every entry has its place in the order");
            self.order.repoint(place, at as u32);
        }
        Some(removed.1)
    }

    /// The entry of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&E> {
        self.position(key).map(|i| &self.at(i).1)
    }

    /// The key as held, and its entry.
    pub(crate) fn get_key_value(&self, key: &str) -> Option<(&Key, &E)> {
        self.position(key).map(|i| {
            let (k, e) = self.at(i);
            (k, e)
        })
    }

    /// The entry of `key`, to change in place (the key set stays).
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut E> {
        self.position(key).map(|i| &mut self.at_mut(i).1)
    }

    /// Whether `key` has an entry.
    #[cfg(test)]
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every key and entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Key, &E)> {
        self.chunks.iter().flatten().map(|(k, e)| (k, e))
    }

    /// Every entry, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &E> {
        self.chunks.iter().flatten().map(|(_, e)| e)
    }

    /// The keys in `[start, end)` (`end` `None`: to the last key) in order,
    /// with their entries. A range that ends before it starts is empty.
    pub(crate) fn range<'a>(
        &'a self,
        start: &str,
        end: Option<&str>,
    ) -> impl Iterator<Item = (&'a Key, &'a E)> + 'a {
        let upper = match end {
            Some(end) if end <= start => None,
            Some(end) => Some(Bound::Excluded(end)),
            None => Some(Bound::Unbounded),
        };
        // The bounds are read here only: the walk borrows the shard alone.
        let chunks = &self.chunks;
        let positions = upper.map(|upper| self.order.range(start, upper, |i| &slot(chunks, i).0));
        positions.into_iter().flatten().map(|i| {
            let (k, e) = self.at(i as usize);
            (k, e)
        })
    }
}

/// The entry at position `i` of `chunks` (a function, not a method, for
/// closures that borrow the chunks while the index is borrowed).
fn slot<E>(chunks: &[Vec<(Key, E)>], i: u32) -> &(Key, E) {
    let i = i as usize;
    &chunks[i / CHUNK][i % CHUNK]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &ShardMap<u32>, start: &str, end: Option<&str>) -> Vec<String> {
        s.range(start, end).map(|(k, _)| k.to_string()).collect()
    }

    #[test]
    fn the_order_follows_inserts_and_removes() {
        let mut s = ShardMap::default();
        for k in ["c", "a", "e", "b", "d"] {
            assert_eq!(s.insert(Key::from(k), 1), None);
        }
        assert_eq!(s.insert(Key::from("c"), 2), Some(1), "replaced, not added");
        assert_eq!(s.remove("d"), Some(1));
        assert_eq!(s.remove("d"), None);
        assert_eq!(keys(&s, "", None), ["a", "b", "c", "e"]);
        assert_eq!(keys(&s, "b", Some("e")), ["b", "c"]);
        assert_eq!(keys(&s, "b\0", None), ["c", "e"]);
        assert_eq!(s.range("c", None).next().map(|(_, e)| *e), Some(2));
        assert_eq!(s.len(), 4);
    }

    /// Room reserved is room kept: inserting what was reserved for does
    /// not grow (rehash) the index, and the keys are all found.
    #[test]
    fn reserved_room_takes_the_keys_without_growing() {
        let mut s = ShardMap::default();
        s.insert(Key::from("first"), 0);
        s.reserve(5_000);
        let room = s.index.capacity();
        assert!(room >= 5_001, "{room} slots after reserving 5,000 more");
        for i in 0..5_000u32 {
            s.insert_new(Key::from(format!("k{i:05}")), i);
        }
        assert_eq!(s.index.capacity(), room, "the index grew");
        assert_eq!(s.get("k04999"), Some(&4_999));
        assert_eq!(s.get("first"), Some(&0));
        assert_eq!(s.len(), 5_001);
    }

    #[test]
    fn backwards_and_empty_ranges_are_empty_not_panics() {
        let mut s = ShardMap::default();
        s.insert(Key::from("m"), 0);
        assert!(keys(&s, "z", Some("a")).is_empty());
        assert!(keys(&s, "m", Some("m")).is_empty());
        assert!(keys(&s, "n", None).is_empty());
    }

    /// Removals move the last entry into the hole: every key must still
    /// find its own entry, whatever the order of removals.
    #[test]
    fn every_key_finds_its_entry_after_removals_in_any_order() {
        let mut s = ShardMap::default();
        let n = 2_000u32; // several chunks
        for i in 0..n {
            s.insert(Key::from(format!("k{i}")), i);
        }
        // Remove every third, from the middle outwards, then re-add some.
        let mut gone: Vec<u32> = (0..n).filter(|i| i % 3 == 0).collect();
        gone.sort_by_key(|i| (i64::from(*i) - i64::from(n / 2)).abs());
        for i in &gone {
            assert_eq!(s.remove(&format!("k{i}")), Some(*i));
        }
        for i in gone.iter().take(100) {
            assert_eq!(s.insert(Key::from(format!("k{i}")), i + n), None);
        }
        for i in 0..n {
            let want = if i % 3 != 0 {
                Some(i)
            } else if gone[..100].contains(&i) {
                Some(i + n)
            } else {
                None
            };
            assert_eq!(s.get(&format!("k{i}")).copied(), want, "k{i}");
            assert_eq!(s.contains_key(&format!("k{i}")), want.is_some());
        }
        let held = n as usize - gone.len() + 100;
        assert_eq!(s.len(), held);
        assert_eq!(s.iter().count(), held);
        let mut want: Vec<String> = s.iter().map(|(k, _)| k.to_string()).collect();
        want.sort();
        assert_eq!(
            keys(&s, "", None),
            want,
            "the walk gives every key, in order"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Whatever the inserts and removals (each removal but the last
        /// one's moves an entry, and its place in the order), a walk of
        /// any range gives what a `BTreeMap` gives: the keys in order, each
        /// with its own entry.
        #[test]
        fn walks_give_each_key_with_its_entry_after_any_changes(
            ops in proptest::collection::vec((proptest::bool::ANY, 0u16..600), 0..2_000),
            start in 0u16..650,
            len in 0u16..300,
        ) {
            let mut s = ShardMap::default();
            let mut model = std::collections::BTreeMap::new();
            for (i, (add, n)) in ops.into_iter().enumerate() {
                let key = format!("k{n:03}");
                if add {
                    let old = s.insert(Key::from(key.as_str()), i);
                    proptest::prop_assert_eq!(old, model.insert(key, i));
                } else {
                    proptest::prop_assert_eq!(s.remove(&key), model.remove(&key));
                }
            }
            let walk = |from: &str, to: Option<&str>| -> Vec<(String, usize)> {
                s.range(from, to).map(|(k, e)| (k.to_string(), *e)).collect()
            };
            let all: Vec<(String, usize)> = model.iter().map(|(k, e)| (k.clone(), *e)).collect();
            proptest::prop_assert_eq!(walk("", None), all);
            let (from, to) = (format!("k{start:03}"), format!("k{:03}", start + len));
            let want: Vec<(String, usize)> = model
                .range(from.clone()..to.clone())
                .map(|(k, e)| (k.clone(), *e))
                .collect();
            proptest::prop_assert_eq!(walk(&from, Some(&to)), want);
            for (k, e) in &model {
                proptest::prop_assert_eq!(s.get(k), Some(e));
            }
        }
    }
}
