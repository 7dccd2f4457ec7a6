//! One shard of the store: a hash map for point reads and writes, and the
//! same keys in order, for walks over a key range (re-synchronisation
//! pages) that cost the range, not the whole key space.

use std::collections::{BTreeSet, HashMap};
use std::ops::{Bound, Deref};
use std::sync::Arc;

use foldhash::fast::RandomState as FastState;

/// A shard's keys and entries. Reads go through [`Deref`] to the map; every
/// change of the key set goes through [`ShardMap::insert`] and
/// [`ShardMap::remove`], which keep the ordered keys equal to the map's.
#[derive(Debug)]
pub(crate) struct ShardMap<E> {
    map: HashMap<Arc<str>, E, FastState>,
    order: BTreeSet<Arc<str>>,
}

impl<E> Default for ShardMap<E> {
    fn default() -> Self {
        ShardMap {
            map: HashMap::with_hasher(FastState::default()),
            order: BTreeSet::new(),
        }
    }
}

impl<E> ShardMap<E> {
    /// Inserts or replaces `key`'s entry; the map keeps the key it held.
    pub(crate) fn insert(&mut self, key: Arc<str>, entry: E) -> Option<E> {
        let old = self.map.insert(key.clone(), entry);
        if old.is_none() {
            self.order.insert(key);
        }
        old
    }

    /// Removes `key`, returning its entry.
    pub(crate) fn remove(&mut self, key: &str) -> Option<E> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.order.remove(key);
        }
        old
    }

    /// The entry of `key`, to change in place (the key set stays).
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut E> {
        self.map.get_mut(key)
    }

    /// The keys in `[start, end)` (`end` `None`: to the last key) in order,
    /// with their entries. A range that ends before it starts is empty.
    pub(crate) fn range<'a>(
        &'a self,
        start: &str,
        end: Option<&str>,
    ) -> impl Iterator<Item = (&'a Arc<str>, &'a E)> + 'a {
        let upper = match end {
            Some(end) if end <= start => None,
            Some(end) => Some(Bound::Excluded(end)),
            None => Some(Bound::Unbounded),
        };
        // The bounds are read here only: the walk borrows the shard alone.
        let keys = upper.map(|upper| self.order.range::<str, _>((Bound::Included(start), upper)));
        keys.into_iter()
            .flatten()
            .filter_map(|k| self.map.get_key_value(&**k))
    }
}

impl<E> Deref for ShardMap<E> {
    type Target = HashMap<Arc<str>, E, FastState>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
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
            assert_eq!(s.insert(Arc::from(k), 1), None);
        }
        assert_eq!(s.insert(Arc::from("c"), 2), Some(1), "replaced, not added");
        assert_eq!(s.remove("d"), Some(1));
        assert_eq!(s.remove("d"), None);
        assert_eq!(keys(&s, "", None), ["a", "b", "c", "e"]);
        assert_eq!(keys(&s, "b", Some("e")), ["b", "c"]);
        assert_eq!(keys(&s, "b\0", None), ["c", "e"]);
        assert_eq!(s.range("c", None).next().map(|(_, e)| *e), Some(2));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn backwards_and_empty_ranges_are_empty_not_panics() {
        let mut s = ShardMap::default();
        s.insert(Arc::from("m"), 0);
        assert!(keys(&s, "z", Some("a")).is_empty());
        assert!(keys(&s, "m", Some("m")).is_empty());
        assert!(keys(&s, "n", None).is_empty());
    }
}
