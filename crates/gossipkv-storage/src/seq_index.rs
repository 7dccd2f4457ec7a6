//! The per-origin index from sequence number to the key written.
//!
//! An origin's writes get ever larger sequence numbers, so almost every
//! insertion lands after the last one. [`SeqIndex`] keeps those in a sorted
//! `Vec` (an append, no allocation per entry, 40 bytes each) and only the
//! few that arrive out of order (a re-synchronisation page, newest-first
//! records) in a small B-tree, merged into the vector once it grows.
//! Removed entries leave a hole that is compacted away once holes are half
//! the vector. The store used a `BTreeMap` before: appends cost a descent
//! and a node allocation every few entries, which made it most of the cost
//! of a local write.

use std::collections::BTreeMap;

use crate::version::Hlc;
use crate::Key;

/// The write of one sequence number: its key, and its timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) key: Key,
    pub(crate) hlc: Hlc,
}

/// A map from sequence number to [`IndexEntry`], ordered by sequence number.
#[derive(Debug, Default)]
pub(crate) struct SeqIndex {
    /// Sorted by sequence number, strictly increasing. `None`: removed.
    run: Vec<(u64, Option<IndexEntry>)>,
    /// Holes in `run`.
    holes: usize,
    /// Entries inserted below the end of `run` and not in it.
    late: BTreeMap<u64, IndexEntry>,
}

/// `late` is merged into `run` once it holds more entries than this, or a
/// quarter of `run` if that is more (so merging stays amortized O(1)).
const LATE_MAX: usize = 1_024;

impl SeqIndex {
    /// Position in `run` of `seq`, or where it would go.
    fn find(&self, seq: u64) -> Result<usize, usize> {
        self.run.binary_search_by_key(&seq, |(s, _)| *s)
    }

    /// The entry of `seq`.
    pub(crate) fn get(&self, seq: u64) -> Option<&IndexEntry> {
        match self.find(seq) {
            Ok(i) => self.run[i].1.as_ref(),
            Err(_) => self.late.get(&seq),
        }
    }

    /// Whether `seq` has an entry.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.run.len() - self.holes + self.late.len()
    }

    /// Sets the entry of `seq`, replacing any.
    pub(crate) fn insert(&mut self, seq: u64, entry: IndexEntry) {
        self.put(seq, entry, true);
    }

    /// Sets the entry of `seq` unless it has one.
    pub(crate) fn insert_if_absent(&mut self, seq: u64, entry: IndexEntry) {
        self.put(seq, entry, false);
    }

    fn put(&mut self, seq: u64, entry: IndexEntry, replace: bool) {
        if self.run.last().is_none_or(|(last, _)| *last < seq) {
            self.run.push((seq, Some(entry)));
            return;
        }
        match self.find(seq) {
            Ok(i) => {
                let slot = &mut self.run[i].1;
                if slot.is_none() {
                    self.holes -= 1;
                    *slot = Some(entry);
                } else if replace {
                    *slot = Some(entry);
                }
            }
            Err(_) => {
                if replace {
                    self.late.insert(seq, entry);
                } else {
                    self.late.entry(seq).or_insert(entry);
                }
                if self.late.len() > LATE_MAX.max(self.run.len() / 4) {
                    self.rebuild();
                }
            }
        }
    }

    /// Removes the entry of `seq`, if any.
    pub(crate) fn remove(&mut self, seq: u64) {
        match self.find(seq) {
            Ok(i) => {
                if self.run[i].1.take().is_some() {
                    self.holes += 1;
                    if self.holes > 64 && self.holes * 2 > self.run.len() {
                        self.rebuild();
                    }
                }
            }
            Err(_) => {
                self.late.remove(&seq);
            }
        }
    }

    /// Merges `late` into `run` and drops the holes.
    fn rebuild(&mut self) {
        let late = std::mem::take(&mut self.late);
        let old = std::mem::take(&mut self.run);
        let mut run = Vec::with_capacity(old.len() - self.holes + late.len());
        let mut late = late.into_iter().peekable();
        for (seq, entry) in old {
            let Some(entry) = entry else { continue };
            while let Some((s, _)) = late.peek() {
                if *s >= seq {
                    break;
                }
                let (s, e) = late.next().expect("peeked");
                run.push((s, Some(e)));
            }
            run.push((seq, Some(entry)));
        }
        run.extend(late.map(|(s, e)| (s, Some(e))));
        self.run = run;
        self.holes = 0;
    }

    /// The entries with `lo <= seq <= hi`, in ascending order.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> Range<'_> {
        let (a, b) = self.bounds(lo, hi);
        Range {
            run: self.run[a..b].iter(),
            late: if lo <= hi {
                Some(self.late.range(lo..=hi))
            } else {
                None
            },
            front: (None, None),
            back: (None, None),
        }
    }

    /// Positions in `run` of the entries with `lo <= seq <= hi`.
    fn bounds(&self, lo: u64, hi: u64) -> (usize, usize) {
        if lo > hi {
            return (0, 0);
        }
        let a = self.run.partition_point(|(s, _)| *s < lo);
        let b = self.run.partition_point(|(s, _)| *s <= hi);
        (a, b.max(a))
    }
}

type Item<'a> = (u64, &'a IndexEntry);

/// An iterator over [`SeqIndex::range`], both ways.
pub(crate) struct Range<'a> {
    run: std::slice::Iter<'a, (u64, Option<IndexEntry>)>,
    late: Option<std::collections::btree_map::Range<'a, u64, IndexEntry>>,
    /// The next item of each source from the front (run, late), peeked.
    front: (Option<Item<'a>>, Option<Item<'a>>),
    /// The same from the back.
    back: (Option<Item<'a>>, Option<Item<'a>>),
}

fn live<'a>(slot: &'a (u64, Option<IndexEntry>)) -> Option<Item<'a>> {
    slot.1.as_ref().map(|e| (slot.0, e))
}

impl<'a> Range<'a> {
    fn next_run(&mut self) -> Option<Item<'a>> {
        self.run.by_ref().find_map(live)
    }

    fn next_run_back(&mut self) -> Option<Item<'a>> {
        self.run.by_ref().rev().find_map(live)
    }

    fn next_late(&mut self) -> Option<Item<'a>> {
        self.late.as_mut()?.next().map(|(s, e)| (*s, e))
    }

    fn next_late_back(&mut self) -> Option<Item<'a>> {
        self.late.as_mut()?.next_back().map(|(s, e)| (*s, e))
    }
}

impl<'a> Iterator for Range<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        if self.front.0.is_none() {
            self.front.0 = self.next_run().or_else(|| self.back.0.take());
        }
        if self.front.1.is_none() {
            self.front.1 = self.next_late().or_else(|| self.back.1.take());
        }
        match (self.front.0, self.front.1) {
            (Some(r), Some(l)) if l.0 < r.0 => self.front.1.take(),
            (Some(_), _) => self.front.0.take(),
            (None, _) => self.front.1.take(),
        }
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.0.is_none() {
            self.back.0 = self.next_run_back().or_else(|| self.front.0.take());
        }
        if self.back.1.is_none() {
            self.back.1 = self.next_late_back().or_else(|| self.front.1.take());
        }
        match (self.back.0, self.back.1) {
            (Some(r), Some(l)) if l.0 > r.0 => self.back.1.take(),
            (Some(_), _) => self.back.0.take(),
            (None, _) => self.back.1.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(seq: u64) -> IndexEntry {
        IndexEntry {
            key: Key::from(format!("k{seq}")),
            hlc: Hlc::from_u64(seq),
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64),
        InsertIfAbsent(u64, u64),
        Remove(u64),
        Append,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..3_000).prop_map(Op::Insert),
            (0u64..3_000, 0u64..10).prop_map(|(s, h)| Op::InsertIfAbsent(s, h)),
            (0u64..3_000).prop_map(Op::Remove),
            Just(Op::Append),
        ]
    }

    proptest! {
        /// Every operation agrees with a `BTreeMap` doing the same, and so do
        /// ranges read from either end or both.
        #[test]
        fn behaves_like_a_btree_map(ops in proptest::collection::vec(op(), 0..3_000),
                                    ranges in proptest::collection::vec((0u64..3_200, 0u64..3_200), 1..20)) {
            let mut index = SeqIndex::default();
            let mut model: BTreeMap<u64, IndexEntry> = BTreeMap::new();
            let mut next = 3_000;
            for op in ops {
                match op {
                    Op::Insert(s) => {
                        index.insert(s, entry(s));
                        model.insert(s, entry(s));
                    }
                    Op::InsertIfAbsent(s, h) => {
                        let e = IndexEntry { hlc: Hlc::from_u64(h), ..entry(s) };
                        index.insert_if_absent(s, e.clone());
                        model.entry(s).or_insert(e);
                    }
                    Op::Remove(s) => {
                        index.remove(s);
                        model.remove(&s);
                    }
                    Op::Append => {
                        next += 1;
                        index.insert(next, entry(next));
                        model.insert(next, entry(next));
                    }
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for s in 0..3_200 {
                prop_assert_eq!(index.get(s), model.get(&s));
            }
            for (lo, hi) in ranges {
                let want: Vec<_> = if lo <= hi {
                    model.range(lo..=hi).map(|(s, e)| (*s, e)).collect()
                } else {
                    Vec::new()
                };
                let fwd: Vec<_> = index.range(lo, hi).collect();
                prop_assert_eq!(&fwd, &want);
                let mut rev: Vec<_> = index.range(lo, hi).rev().collect();
                rev.reverse();
                prop_assert_eq!(&rev, &want);
                // Alternating ends meet in the middle without losing or
                // repeating an entry.
                let mut it = index.range(lo, hi);
                let (mut head, mut tail) = (Vec::new(), Vec::new());
                while let Some(x) = it.next() {
                    head.push(x);
                    match it.next_back() {
                        Some(x) => tail.push(x),
                        None => break,
                    }
                }
                tail.reverse();
                head.extend(tail);
                prop_assert_eq!(&head, &want);
            }
        }
    }

    #[test]
    fn appends_stay_in_the_vector_and_holes_are_compacted() {
        let mut index = SeqIndex::default();
        for s in 1..=1_000 {
            index.insert(s, entry(s));
        }
        assert!(index.late.is_empty());
        for s in 1..=900 {
            index.remove(s);
        }
        assert_eq!(index.len(), 100);
        assert!(index.run.len() < 1_000, "compacted: {}", index.run.len());
        assert_eq!(index.range(0, u64::MAX).next().map(|(s, _)| s), Some(901));
    }

    #[test]
    fn out_of_order_entries_are_merged_once_many() {
        let mut index = SeqIndex::default();
        index.insert(1_000_000, entry(1_000_000));
        for s in (0..2 * LATE_MAX as u64).rev() {
            index.insert_if_absent(s, entry(s));
        }
        assert!(index.late.len() <= LATE_MAX, "{}", index.late.len());
        let seqs: Vec<u64> = index.range(0, u64::MAX).map(|(s, _)| s).collect();
        assert_eq!(seqs.len(), 2 * LATE_MAX + 1);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
}
