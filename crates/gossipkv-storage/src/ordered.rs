//! A shard's keys in order, for walks over a key range: sorted blocks of
//! at most [`BLOCK`] keys.
//!
//! Why not a `BTreeSet`: its nodes hold 11 keys and split in half, so
//! after keys inserted in order they are about half full, and each costs
//! its allocation's bookkeeping: 37 bytes per key in all, measured, for a
//! 16-byte pointer. Here a block that overflows at the end of the last
//! block starts a new block (keys inserted in order fill their blocks),
//! other overflows split in half, and a block's vector grows by doubling
//! to [`BLOCK`]: 16 to 22 bytes per key. An insertion or removal moves at
//! most a block's keys (4 KiB), and finding a key is two binary searches.

use std::ops::Bound;
use std::sync::Arc;

/// Most keys per block.
const BLOCK: usize = 256;

/// Keys in ascending order, each once.
#[derive(Debug, Default)]
pub(crate) struct OrderedKeys {
    /// Sorted, non-empty blocks; every key of a block is below every key
    /// of the next.
    blocks: Vec<Vec<Arc<str>>>,
}

impl OrderedKeys {
    /// The block where `key` is or would go: the first whose last key is
    /// at least `key`, or the last block.
    fn block_of(&self, key: &str) -> usize {
        let i = self.blocks.partition_point(|b| last(b) < key);
        i.min(self.blocks.len().saturating_sub(1))
    }

    /// Adds `key`; returns whether it was absent.
    pub(crate) fn insert(&mut self, key: Arc<str>) -> bool {
        // Past the last key (keys loaded or streamed in order): one
        // comparison, no search.
        match self.blocks.last_mut() {
            None => {
                self.blocks.push(vec![key]);
                return true;
            }
            Some(block) if last(block) < &*key => {
                if block.len() < BLOCK {
                    block.push(key);
                } else {
                    self.blocks.push(vec![key]);
                }
                return true;
            }
            Some(_) => {}
        }
        let b = self.block_of(&key);
        let is_last = b + 1 == self.blocks.len();
        let block = &mut self.blocks[b];
        let at = match block.binary_search_by(|k| (**k).cmp(&*key)) {
            Ok(_) => return false,
            Err(at) => at,
        };
        if block.len() < BLOCK {
            block.insert(at, key);
        } else if at == BLOCK && is_last {
            // Past the end of the last block: keys come in order.
            self.blocks.push(vec![key]);
        } else {
            let mut right = Vec::with_capacity(BLOCK);
            right.extend(block.drain(BLOCK / 2..));
            if at <= BLOCK / 2 {
                block.insert(at, key);
            } else {
                right.insert(at - BLOCK / 2, key);
            }
            self.blocks.insert(b + 1, right);
        }
        true
    }

    /// Removes `key`; returns whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_of(key);
        let block = &mut self.blocks[b];
        match block.binary_search_by(|k| (**k).cmp(key)) {
            Ok(at) => {
                block.remove(at);
                if block.is_empty() {
                    self.blocks.remove(b);
                } else if block.len() < block.capacity() / 4 {
                    block.shrink_to(block.len() * 2);
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Where the first key above `key` (`above`) or at least `key` is: a
    /// block and a place in it, or `(blocks, 0)` past the last key.
    fn position(&self, key: &str, above: bool) -> (usize, usize) {
        let before = |k: &str| if above { k <= key } else { k < key };
        let b = self.blocks.partition_point(|blk| before(last(blk)));
        match self.blocks.get(b) {
            Some(blk) => (b, blk.partition_point(|k| before(k))),
            None => (self.blocks.len(), 0),
        }
    }

    /// The keys from `start` (included) up to `upper`, in order. The
    /// bounds are read here only: the walk borrows the keys alone.
    pub(crate) fn range(
        &self,
        start: &str,
        upper: Bound<&str>,
    ) -> impl Iterator<Item = &Arc<str>> + '_ {
        let (b0, i0) = self.position(start, false);
        let (b1, i1) = match upper {
            Bound::Included(u) => self.position(u, true),
            Bound::Excluded(u) => self.position(u, false),
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
            blk.get(from..to).unwrap_or_default()
        })
    }

    /// Number of keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.blocks.iter().map(Vec::len).sum()
    }
}

/// The last key of a block (blocks are never empty).
fn last(block: &[Arc<str>]) -> &str {
    block.last().map_or("", |k| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn walk(o: &OrderedKeys, start: &str, upper: Bound<&str>) -> Vec<String> {
        o.range(start, upper).map(|k| k.to_string()).collect()
    }

    /// Keys inserted in order fill their blocks: every block but the last
    /// is full.
    #[test]
    fn keys_in_order_fill_their_blocks() {
        let mut o = OrderedKeys::default();
        for i in 0..10 * BLOCK + 7 {
            assert!(o.insert(Arc::from(format!("k{i:06}"))));
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
            let mut o = OrderedKeys::default();
            let mut model = BTreeSet::new();
            for (add, n) in ops {
                let key = format!("k{n:04}");
                if add {
                    prop_assert_eq!(o.insert(Arc::from(key.as_str())), model.insert(key));
                } else {
                    prop_assert_eq!(o.remove(&key), model.remove(&key));
                }
            }
            prop_assert!(o.blocks.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
            let all: Vec<String> = model.iter().cloned().collect();
            prop_assert_eq!(walk(&o, "", Bound::Unbounded), all);
            let (s, e) = (format!("k{start:04}"), format!("k{:04}", start + len));
            let want: Vec<String> = model
                .range::<str, _>((Bound::Included(s.as_str()), Bound::Excluded(e.as_str())))
                .cloned()
                .collect();
            prop_assert_eq!(walk(&o, &s, Bound::Excluded(&e)), want);
            let want: Vec<String> = model.range(s.clone()..).cloned().collect();
            prop_assert_eq!(walk(&o, &s, Bound::Unbounded), want);
            let want: Vec<String> = model.range(s.clone()..=e.clone()).cloned().collect();
            prop_assert_eq!(walk(&o, &s, Bound::Included(&e)), want);
        }
    }
}
