//! Helpers shared by the integration tests: snapshots, reliable exchanges,
//! the page protocol, and an oracle of every write for checking invariant W.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use gossipkv_storage::{Digest, Hlc, Origin, Record, Store, Version};

/// A store's watermarks as a sorted map (digest entries come in no particular order).
pub(crate) fn wm_map(s: &Store) -> BTreeMap<Origin, u64> {
    s.digest()
        .entries
        .into_iter()
        .map(|e| (e.origin, e.watermark))
        .collect()
}

/// Everything observable about a store's replicated state.
pub(crate) type Snapshot = (BTreeMap<Origin, u64>, Vec<Record>);

pub(crate) fn snapshot(s: &Store) -> Snapshot {
    (wm_map(s), s.records())
}

/// The page protocol: `to` re-synchronises from `from`, pages of at most
/// `budget` bytes, starting at "". Returns the number of pages.
pub(crate) fn resync(from: &Store, to: &Store, budget: usize) -> usize {
    resync_with(from, to, budget, |_| {})
}

/// [`resync`], calling `after_page` after every page is applied.
pub(crate) fn resync_with(
    from: &Store,
    to: &Store,
    budget: usize,
    mut after_page: impl FnMut(&Store),
) -> usize {
    let mut cursor = String::new();
    let mut first: Option<Digest> = None;
    let mut pages = 0;
    loop {
        let page = from.page(&cursor, budget, from.digest());
        assert_eq!(page.start, cursor);
        to.apply_page(&page);
        after_page(to);
        pages += 1;
        if first.is_none() {
            first = Some(page.watermarks.clone());
        }
        match page.end {
            Some(end) => {
                assert!(
                    end > cursor,
                    "page cursor must advance: {cursor:?} -> {end:?}"
                );
                cursor = end;
            }
            None => break,
        }
        assert!(pages < 100_000, "page protocol does not terminate");
    }
    to.raise_watermarks(&first.expect("at least one page"));
    pages
}

/// One reliable anti-entropy step from `from` to `to`: pages when `from`
/// says `to` is too far behind, a delta otherwise.
pub(crate) fn sync_once(from: &Store, to: &Store, budget: usize, rotate: usize) {
    let digest = to.digest();
    if from.needs_resync(&digest) {
        resync(from, to, budget);
    } else {
        to.apply(&from.delta_for(&digest, budget, rotate));
    }
}

/// Reliable exchanges between every ordered pair until nothing changes.
/// Returns the number of rounds, or an error after `max_rounds`.
pub(crate) fn converge(
    stores: &[&Store],
    budget: usize,
    max_rounds: usize,
) -> Result<usize, String> {
    for round in 0..max_rounds {
        let before: Vec<Snapshot> = stores.iter().map(|s| snapshot(s)).collect();
        for (i, a) in stores.iter().enumerate() {
            for (j, b) in stores.iter().enumerate() {
                if i != j {
                    sync_once(a, b, budget, round * 31 + i * 7 + j);
                }
            }
        }
        let after: Vec<Snapshot> = stores.iter().map(|s| snapshot(s)).collect();
        if before == after {
            return Ok(round);
        }
    }
    Err(format!("no fixpoint after {max_rounds} rounds"))
}

/// Asserts that every store holds the same records and the same watermarks.
pub(crate) fn assert_identical(stores: &[(&str, &Store)]) {
    let (name0, s0) = stores[0];
    let snap0 = snapshot(s0);
    for &(name, s) in &stores[1..] {
        let snap = snapshot(s);
        assert_eq!(snap.1, snap0.1, "records of {name} differ from {name0}");
        assert_eq!(snap.0, snap0.0, "watermarks of {name} differ from {name0}");
    }
}

/// Number of records holding a value.
pub(crate) fn live_count(records: &[Record]) -> usize {
    records.iter().filter(|r| !r.is_tombstone()).count()
}

/// One write made by some replica, as returned by `set` / `delete`.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) key: String,
    pub(crate) version: Version,
    pub(crate) tombstone: bool,
    pub(crate) record: Record,
}

/// Every write ever made, for checking invariant W and computing the
/// expected converged state.
#[derive(Default, Debug)]
pub(crate) struct Oracle {
    pub(crate) writes: Vec<Write>,
    /// Greatest garbage-collection cutoff used so far: tombstones older than
    /// it may have been collected.
    pub(crate) gc_cutoff: Option<Hlc>,
}

impl Oracle {
    pub(crate) fn record(&mut self, r: &Record) {
        self.writes.push(Write {
            key: r.key.to_string(),
            version: r.version.clone(),
            tombstone: r.is_tombstone(),
            record: r.clone(),
        });
    }

    /// Notes a `collect_garbage(now_ms, retention_ms)` call.
    pub(crate) fn collected(&mut self, now_ms: u64, retention_ms: u64) {
        let cutoff = Hlc::new(now_ms.saturating_sub(retention_ms), 0);
        self.gc_cutoff = Some(self.gc_cutoff.map_or(cutoff, |c| c.max(cutoff)));
    }

    /// The last-writer-wins winner of every key, no garbage collection.
    pub(crate) fn expected(&self) -> BTreeMap<String, Record> {
        let mut out: BTreeMap<String, Record> = BTreeMap::new();
        for w in &self.writes {
            match out.get(&w.key) {
                Some(r) if r.version >= w.version => {}
                _ => {
                    out.insert(w.key.clone(), w.record.clone());
                }
            }
        }
        out
    }

    /// Whether a tombstone of `key` at least as new as `v` (possibly the write
    /// `v` itself) may have been collected.
    fn newer_tombstone_collected(&self, key: &str, v: &Version) -> bool {
        let Some(cutoff) = self.gc_cutoff else {
            return false;
        };
        self.writes
            .iter()
            .any(|t| t.tombstone && t.key == key && &t.version >= v && t.version.hlc < cutoff)
    }

    /// Invariant W at `store`: for every origin O with watermark w there, every
    /// write of O with seq <= w is held, or a newer version of its key is, or
    /// (only once garbage has been collected) a newer tombstone of its key
    /// may have been collected.
    pub(crate) fn check_w(&self, name: &str, store: &Store) -> Result<(), String> {
        let mut wms: HashMap<Origin, u64> = HashMap::new();
        for w in &self.writes {
            let origin = w.version.origin();
            let wm = *wms
                .entry(origin.clone())
                .or_insert_with(|| store.watermark(&origin));
            if w.version.seq > wm {
                continue;
            }
            let held = store.get_record(&w.key);
            let ok = held.as_ref().is_some_and(|r| r.version >= w.version)
                || self.newer_tombstone_collected(&w.key, &w.version);
            if !ok {
                return Err(format!(
                    "invariant W broken at {name}: watermark {wm} for {origin} covers write \
                     {:?} of key {:?}, but the store holds {:?}",
                    w.version, w.key, held
                ));
            }
        }
        Ok(())
    }
}
