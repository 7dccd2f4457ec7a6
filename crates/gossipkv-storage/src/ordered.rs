//! A shard's keys in order, for walks over a key range: sorted blocks of
//! at most [`BLOCK`] positions of entries in the shard's chunks.
//!
//! Why positions and not keys: a position is 4 bytes, a key 24 (a
//! [`crate::Key`]); the keys are read where the entries are, through a
//! function the shard gives (`key_at`). A comparison reads one entry, as a
//! comparison of shared keys read their allocation before. The shard moves
//! an entry when it removes another (the last fills the hole), and tells
//! the order with [`OrderedKeys::locate`] and [`OrderedKeys::repoint`].
//!
//! Why not a `BTreeSet`: its nodes hold 11 keys and split in half, so
//! after keys inserted in order they are about half full, and each costs
//! its allocation's bookkeeping: 37 bytes per key in all were measured for
//! a set of 16-byte key pointers. Here a block that overflows at the end of
//! the last block starts a new block (keys inserted in order fill them),
//! other overflows split in half, and a block's vector grows by doubling
//! to [`BLOCK`]: 4 to 6 bytes per key. An insertion or removal moves at
//! most a block's positions (1 KiB), and finding a key is two binary
//! searches.

use std::ops::Bound;

/// Most positions per block.
const BLOCK: usize = 256;

/// Where a key's position is held: a block and a place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place(usize, usize);

/// Positions of entries, in ascending order of their keys, each once.
#[derive(Debug, Default)]
pub(crate) struct OrderedKeys {
    /// Sorted, non-empty blocks; every key of a block is below every key
    /// of the next.
    blocks: Vec<Vec<u32>>,
}

impl OrderedKeys {
    /// The block where `key` is or would go: the first whose last key is
    /// at least `key`, or the last block.
    fn block_of<'k>(&self, key: &str, key_at: &impl Fn(u32) -> &'k str) -> usize {
        let i = self.blocks.partition_point(|b| key_at(last(b)) < key);
        i.min(self.blocks.len().saturating_sub(1))
    }

    /// Adds the entry at position `at`, whose key is `key`; returns whether
    /// the key was absent. `key_at` gives the key of a position held.
    pub(crate) fn insert<'k>(
        &mut self,
        at: u32,
        key: &str,
        key_at: impl Fn(u32) -> &'k str,
    ) -> bool {
        // Past the last key (keys loaded or streamed in order): one
        // comparison, no search.
        match self.blocks.last_mut() {
            None => {
                self.blocks.push(vec![at]);
                return true;
            }
            Some(block) if key_at(last(block)) < key => {
                if block.len() < BLOCK {
                    block.push(at);
                } else {
                    self.blocks.push(vec![at]);
                }
                return true;
            }
            Some(_) => {}
        }
        let b = self.block_of(key, &key_at);
        let is_last = b + 1 == self.blocks.len();
        let block = &mut self.blocks[b];
        let i = match block.binary_search_by(|&p| key_at(p).cmp(key)) {
            Ok(_) => return false,
            Err(i) => i,
        };
        if block.len() < BLOCK {
            block.insert(i, at);
        } else if i == BLOCK && is_last {
            // Past the end of the last block: keys come in order.
            self.blocks.push(vec![at]);
        } else {
            let mut right = Vec::with_capacity(BLOCK);
            right.extend(block.drain(BLOCK / 2..));
            if i <= BLOCK / 2 {
                block.insert(i, at);
            } else {
                right.insert(i - BLOCK / 2, at);
            }
            self.blocks.insert(b + 1, right);
        }
        true
    }

    /// Where `key`'s position is held, if it is.
    pub(crate) fn locate<'k>(&self, key: &str, key_at: impl Fn(u32) -> &'k str) -> Option<Place> {
        if self.blocks.is_empty() {
            return None;
        }
        let b = self.block_of(key, &key_at);
        self.blocks[b]
            .binary_search_by(|&p| key_at(p).cmp(key))
            .ok()
            .map(|i| Place(b, i))
    }

    /// Points the key held at `place` (from [`OrderedKeys::locate`], with
    /// no insertion or removal since) at position `to`: its entry moved.
    pub(crate) fn repoint(&mut self, place: Place, to: u32) {
        self.blocks[place.0][place.1] = to;
    }

    /// Removes `key`; returns the position it had.
    pub(crate) fn remove<'k>(&mut self, key: &str, key_at: impl Fn(u32) -> &'k str) -> Option<u32> {
        let Place(b, i) = self.locate(key, key_at)?;
        let block = &mut self.blocks[b];
        let at = block.remove(i);
        if block.is_empty() {
            self.blocks.remove(b);
        } else if block.len() < block.capacity() / 4 {
            block.shrink_to(block.len() * 2);
        }
        Some(at)
    }

    /// Where the first key above `key` (`above`) or at least `key` is: a
    /// block and a place in it, or `(blocks, 0)` past the last key.
    fn position<'k>(
        &self,
        key: &str,
        above: bool,
        key_at: &impl Fn(u32) -> &'k str,
    ) -> (usize, usize) {
        let before = |k: &str| if above { k <= key } else { k < key };
        let b = self.blocks.partition_point(|blk| before(key_at(last(blk))));
        match self.blocks.get(b) {
            Some(blk) => (b, blk.partition_point(|&p| before(key_at(p)))),
            None => (self.blocks.len(), 0),
        }
    }

    /// The positions of the keys from `start` (included) up to `upper`, in
    /// order of their keys. The bounds are read here only: the walk
    /// borrows the positions alone.
    pub(crate) fn range<'k>(
        &self,
        start: &str,
        upper: Bound<&str>,
        key_at: impl Fn(u32) -> &'k str,
    ) -> impl Iterator<Item = u32> + '_ {
        let (b0, i0) = self.position(start, false, &key_at);
        let (b1, i1) = match upper {
            Bound::Included(u) => self.position(u, true, &key_at),
            Bound::Excluded(u) => self.position(u, false, &key_at),
            Bound::Unbounded => (self.blocks.len(), 0),
        };
        let blocks = self
            .blocks
            .get(b0..(b1 + 1).min(self.blocks.len()))
            .unwrap_or_default();
        blocks.iter().enumerate().flat_map(move |(n, blk)| {
            let b = b0 + n;
            let from = if b == b0 { i0 } else { 0 };
            let to = if b == b1 { i1 } else { blk.len() };
            blk.get(from..to).unwrap_or_default().iter().copied()
        })
    }

    /// Number of keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
}

/// The last position of a block (blocks are never empty).
fn last(block: &[u32]) -> u32 {
    block.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The keys of the positions the walk gives (position `n` holds
    /// `keys[n]`).
    fn walk(o: &OrderedKeys, keys: &[String], start: &str, upper: Bound<&str>) -> Vec<String> {
        o.range(start, upper, |p| &keys[p as usize])
            .map(|p| keys[p as usize].clone())
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:06}")).collect()
    }

    /// Keys inserted in order fill their blocks: every block but the last
    /// is full.
    #[test]
    fn keys_in_order_fill_their_blocks() {
        let keys = names(10 * BLOCK + 7);
        let mut o = OrderedKeys::default();
        for (i, k) in keys.iter().enumerate() {
            assert!(o.insert(i as u32, k, |p| &keys[p as usize]));
        }
        assert_eq!(o.blocks.len(), 11);
        assert!(o.blocks[..10].iter().all(|b| b.len() == BLOCK));
        assert_eq!(o.len(), 10 * BLOCK + 7);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever the inserts and removals, the blocks hold what a
        /// `BTreeSet` would, and a range walk gives what its walk gives.
        #[test]
        fn it_holds_and_walks_what_a_btreeset_would(
            ops in proptest::collection::vec((any::<bool>(), 0u16..2000), 0..3000),
            start in 0u16..2100,
            len in 0u16..800,
        ) {
            // Position `n` holds key `k{n:04}`.
            let keys: Vec<String> = (0..2000).map(|n| format!("k{n:04}")).collect();
            let key_at = |p: u32| keys[p as usize].as_str();
            let mut o = OrderedKeys::default();
            let mut model = BTreeSet::new();
            for (add, n) in ops {
                let key = keys[usize::from(n)].clone();
                if add {
                    prop_assert_eq!(o.insert(u32::from(n), &key, key_at), model.insert(key));
                } else {
                    let was = model.remove(&key).then_some(u32::from(n));
                    prop_assert_eq!(o.remove(&key, key_at), was);
                }
            }
            prop_assert!(o.blocks.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
            for k in &model {
                let place = o.locate(k, key_at);
                prop_assert!(place.is_some(), "{} not found", k);
            }
            prop_assert_eq!(o.locate("k9999", key_at), None);
            let all: Vec<String> = model.iter().cloned().collect();
            prop_assert_eq!(walk(&o, &keys, "", Bound::Unbounded), all);
            let (s, e) = (format!("k{start:04}"), format!("k{:04}", start + len));
            let want: Vec<String> = model
                .range::<str, _>((Bound::Included(s.as_str()), Bound::Excluded(e.as_str())))
                .cloned()
                .collect();
            prop_assert_eq!(walk(&o, &keys, &s, Bound::Excluded(&e)), want);
            let want: Vec<String> = model.range(s.clone()..).cloned().collect();
            prop_assert_eq!(walk(&o, &keys, &s, Bound::Unbounded), want);
            let want: Vec<String> = model.range(s.clone()..=e.clone()).cloned().collect();
            prop_assert_eq!(walk(&o, &keys, &s, Bound::Included(&e)), want);
        }
    }
}
