//! Shared fixtures of the gossipkv criterion benchmarks.
//!
//! The benchmarks themselves live in `benches/` (`storage.rs`, `codec.rs`) and
//! are run with `cargo bench -p gossipkv-benches --bench '*'` or, with a
//! summary table, `cargo xtask bench [--quick]`. This library only holds what
//! both share: the shape of keys and values, the key count, and the seeded
//! random access pattern.
//!
//! # Environment
//!
//! - `GOSSIPKV_BENCH_KEYS`: number of keys of the stores used by the
//!   `storage/*_1m` benchmarks (default [`DEFAULT_KEYS`], one million).
//!   `cargo xtask bench --quick` sets it to 100,000 unless it is already set.
//!   The benchmark ids keep their `_1m` suffix whatever the count, so compare
//!   figures only between runs with the same count.

use bytes::Bytes;
use gossipkv_storage::{Digest, Origin, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Environment variable overriding the key count of the `*_1m` benchmarks.
pub const KEYS_ENV: &str = "GOSSIPKV_BENCH_KEYS";
/// Key count of the `*_1m` benchmarks when [`KEYS_ENV`] is not set.
pub const DEFAULT_KEYS: usize = 1_000_000;
/// Operations per benchmark iteration (one "batch").
pub const BATCH: usize = 1_000;
/// Length of every key, in bytes (see [`key`]).
pub const KEY_LEN: usize = 16;
/// Length of every value, in bytes (see [`value`]).
pub const VALUE_LEN: usize = 64;
/// Physical time, in milliseconds, passed to every local write.
pub const NOW_MS: u64 = 1_700_000_000_000;
/// Seed of every random access pattern, so that runs are comparable.
pub const SEED: u64 = 0x6055_1b6b_0000_0001;

/// The key count of the `*_1m` benchmarks: [`KEYS_ENV`] if set, else
/// [`DEFAULT_KEYS`].
///
/// # Panics
/// If [`KEYS_ENV`] is set but is not a positive integer (underscores allowed,
/// as in `100_000`).
pub fn key_count() -> usize {
    match std::env::var(KEYS_ENV) {
        Ok(text) => parse_key_count(&text)
            .unwrap_or_else(|| panic!("{KEYS_ENV}={text:?} is not a positive integer")),
        Err(std::env::VarError::NotPresent) => DEFAULT_KEYS,
        Err(err) => panic!("{KEYS_ENV}: {err}"),
    }
}

/// Parses a key count such as `1000000` or `100_000`; `None` unless positive.
pub fn parse_key_count(text: &str) -> Option<usize> {
    let digits: String = text.trim().chars().filter(|c| *c != '_').collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// The `i`-th key: `key-` and 12 decimal digits, [`KEY_LEN`] bytes.
pub fn key(i: usize) -> String {
    format!("key-{i:012}")
}

/// The `i`-th value: [`VALUE_LEN`] bytes derived from `i`, in its own allocation.
pub fn value(i: usize) -> Bytes {
    let mut v: Vec<u8> = (0..VALUE_LEN).map(|j| (i + j) as u8).collect();
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(v)
}

/// A digest of a peer that holds nothing (complete, no entries): the
/// [`Store::delta_for`] answer to it is everything, cut to the budget.
pub fn empty_peer_digest() -> Digest {
    Digest {
        complete: true,
        ..Digest::default()
    }
}

/// `n` keys and values, and a seeded random access pattern over them.
#[derive(Debug)]
pub struct Workload {
    /// `keys[i] == key(i)`.
    pub keys: Vec<String>,
    /// `values[i] == value(i)`.
    pub values: Vec<Bytes>,
    /// Random indices into `keys`, a multiple of [`BATCH`] long (at least
    /// `n`), read batch by batch with [`Workload::batch`].
    pattern: Vec<u32>,
}

impl Workload {
    /// Precomputes `n` keys and values and a random access pattern drawn with
    /// a `SmallRng` seeded with `seed`.
    ///
    /// # Panics
    /// If `n` is 0 or does not fit a `u32`.
    pub fn new(n: usize, seed: u64) -> Self {
        assert!(n > 0, "a workload needs at least one key");
        let bound = u32::try_from(n).expect("key count fits a u32");
        let mut rng = SmallRng::seed_from_u64(seed);
        let len = n.div_ceil(BATCH) * BATCH;
        Workload {
            keys: (0..n).map(key).collect(),
            values: (0..n).map(value).collect(),
            pattern: (0..len).map(|_| rng.random_range(0..bound)).collect(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (never true for a built workload).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The next [`BATCH`] random key indices from `cursor`, which advances
    /// (and wraps around the pattern).
    pub fn batch(&self, cursor: &mut usize) -> &[u32] {
        if *cursor + BATCH > self.pattern.len() {
            *cursor = 0;
        }
        let start = *cursor;
        *cursor += BATCH;
        &self.pattern[start..start + BATCH]
    }

    /// A cursor half-way through the pattern, for a second thread.
    pub fn second_cursor(&self) -> usize {
        (self.pattern.len() / BATCH / 2) * BATCH
    }

    /// A store of origin `origin` holding every key with its value, written
    /// in key order at [`NOW_MS`].
    pub fn filled_store(&self, origin: Origin) -> Store {
        let store = Store::new(origin);
        for (k, v) in self.keys.iter().zip(&self.values) {
            store.set(k, v.clone(), NOW_MS);
        }
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_have_the_advertised_shape() {
        assert_eq!(key(7), "key-000000000007");
        assert_eq!(key(999_999_999_999).len(), KEY_LEN);
        assert_eq!(value(3).len(), VALUE_LEN);
        assert_ne!(value(3), value(4));
    }

    #[test]
    fn key_count_parsing() {
        assert_eq!(parse_key_count("100000"), Some(100_000));
        assert_eq!(parse_key_count(" 1_000_000 "), Some(1_000_000));
        assert_eq!(parse_key_count("0"), None);
        assert_eq!(parse_key_count("lots"), None);
    }

    #[test]
    fn batches_cover_existing_keys_and_wrap() {
        let w = Workload::new(2_500, SEED);
        assert_eq!(w.pattern.len(), 3_000);
        let mut cursor = 0;
        for _ in 0..7 {
            let batch = w.batch(&mut cursor);
            assert_eq!(batch.len(), BATCH);
            assert!(batch.iter().all(|&i| (i as usize) < w.len()));
        }
        assert_eq!(w.second_cursor(), 1_000);
        let again = Workload::new(2_500, SEED);
        assert_eq!(w.pattern, again.pattern, "the pattern is seeded");
    }

    #[test]
    fn filled_store_holds_every_key() {
        let w = Workload::new(10, SEED);
        let store = w.filled_store(Origin::new("a", 1));
        assert_eq!(store.len(), 10);
        assert_eq!(store.get(&key(9)), Some(value(9)));
        let delta = store.delta_for(&empty_peer_digest(), usize::MAX, 0);
        assert_eq!(delta.record_count(), 10);
    }
}
