//! The records table: rows of consecutive keys packed in blocks.
//!
//! Why blocks rather than a row per key: a B-tree leaf of redb is split in
//! half when it overflows, so a table filled in key order (or at random)
//! ends with leaves a half to two thirds full, and every row pays redb's
//! per-entry bookkeeping. A block holds the rows of a run of keys, up to
//! [`BLOCK_MAX`] bytes, and is split here: a block that overflows because
//! keys were appended at its end keeps as much as fits and starts a new
//! block with the rest (so a table filled in order ends with full blocks),
//! other overflows split in even pieces ([`cut`]). A change rewrites its
//! block, which costs what redb costs anyway: it rewrites the whole leaf
//! page of any row it changes. [`repack`] writes a table's records again
//! in full blocks (for a compaction).
//!
//! Layout. The table maps a block's *lower bound* to the block: every key
//! in a block is at least its bound and below the next block's bound. A
//! change to a key below every bound goes to a block of bound `""` (made
//! when there is none; a block left empty is removed). A block is a
//! sequence of entries in strictly ascending key order, each a varint key
//! length, the key (UTF-8), a varint row length and the row
//! ([`crate::rows::encode_record`]).

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// Lower bound of a block to the block.
pub(crate) const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");

/// The most bytes a block holds, unless one entry alone is larger: a block
/// and redb's bookkeeping fill a 16 KiB page.
pub(crate) const BLOCK_MAX: usize = 16 * 1024 - 128;

/// What happens to a key: its new row, or `None` to remove it.
pub(crate) type Change = Option<Vec<u8>>;

/// Appends `n` as a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A LEB128 varint of at most 5 bytes (below 2^35, more than any key or
/// row [`put_varint`] writes: they are far below 4 GiB) and the bytes
/// after it.
pub(crate) fn take_varint(b: &[u8]) -> Option<(usize, &[u8])> {
    let mut n = 0u64;
    for (i, &byte) in b.iter().enumerate().take(5) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(n).ok()?, &b[i + 1..]));
        }
    }
    None
}

/// One entry's encoded size.
fn entry_len(key: &str, row: &[u8]) -> usize {
    varint_len(key.len()) + key.len() + varint_len(row.len()) + row.len()
}

fn varint_len(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

/// Appends one entry to a block.
fn put_entry(out: &mut Vec<u8>, key: &str, row: &[u8]) {
    put_varint(out, key.len());
    out.extend_from_slice(key.as_bytes());
    put_varint(out, row.len());
    out.extend_from_slice(row);
}

/// A block of one entry (for fuzzing seeds).
pub(crate) fn encode_one(key: &str, row: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_entry(&mut out, key, row);
    out
}

/// The entries of a block, in order; `None` when it cannot be read: a
/// length past the end, a key that is not UTF-8, keys out of order or
/// repeated, or an empty row.
pub(crate) fn decode(mut block: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let mut out: Vec<(&str, &[u8])> = Vec::new();
    while !block.is_empty() {
        let (len, rest) = take_varint(block)?;
        let key = std::str::from_utf8(rest.get(..len)?).ok()?;
        let (len, rest) = take_varint(&rest[key.len()..])?;
        let row = rest.get(..len)?;
        if row.is_empty() || out.last().is_some_and(|(last, _)| *last >= key) {
            return None;
        }
        out.push((key, row));
        block = &rest[len..];
    }
    Some(out)
}

/// The most bytes of a block cut from an overflow in its middle: with
/// redb's bookkeeping it fits an 8 KiB page.
const PIECE_MAX: usize = BLOCK_MAX / 2 - 64;

/// `entries` (in order) cut into blocks of at most [`BLOCK_MAX`] bytes,
/// each with its first key: filled one after the other when `appended`
/// (the overflow came from keys added past the block's end), else in
/// even pieces of at most [`PIECE_MAX`] bytes. Why not halves: redb keeps
/// a leaf of one large value in a page of a power of two of 4 KiB pages,
/// so the halves of a block just past 16 KiB would each take a 16 KiB page
/// half empty; three pieces of about 5.4 KiB take 8 KiB pages two thirds
/// full, and fill them as they grow.
fn cut<'a>(entries: &[(&'a str, &[u8])], appended: bool) -> Vec<(&'a str, Vec<u8>)> {
    let total: usize = entries.iter().map(|(k, r)| entry_len(k, r)).sum();
    let target = if appended || total <= BLOCK_MAX {
        BLOCK_MAX
    } else {
        total.div_ceil(total.div_ceil(PIECE_MAX))
    };
    let mut blocks: Vec<(&str, Vec<u8>)> = Vec::new();
    for &(k, r) in entries {
        match blocks.last_mut() {
            Some((_, block)) if block.len() + entry_len(k, r) <= target => {
                put_entry(block, k, r);
            }
            _ => {
                let mut block = Vec::new();
                put_entry(&mut block, k, r);
                blocks.push((k, block));
            }
        }
    }
    blocks
}

/// A table error as text.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Applies `changes` (by key) to the blocks table of `tx`.
///
/// # Errors
/// A message when redb fails or a block it rewrites cannot be read.
pub(crate) fn apply(
    tx: &WriteTransaction,
    changes: &BTreeMap<String, Change>,
) -> Result<(), String> {
    let mut table = tx.open_table(BLOCKS).map_err(text)?;
    let mut pending = changes.iter().peekable();
    while let Some(&(first, _)) = pending.peek() {
        // The block of `first`, and the bound of the next one.
        let found = table
            .range::<&str>(..=first.as_str())
            .map_err(text)?
            .next_back()
            .transpose()
            .map_err(text)?
            .map(|(k, v)| (k.value().to_owned(), v.value().to_vec()));
        let existed = found.is_some();
        let (bound, bytes) = found.unwrap_or_default();
        let next = table
            .range::<&str>((Bound::Excluded(bound.as_str()), Bound::Unbounded))
            .map_err(text)?
            .next()
            .transpose()
            .map_err(text)?
            .map(|(k, _)| k.value().to_owned());
        let old = decode(&bytes).ok_or_else(|| format!("unreadable block {bound:?}"))?;
        let mut mine = Vec::new();
        while let Some(&(k, change)) = pending.peek() {
            if next.as_ref().is_some_and(|n| k >= n) {
                break;
            }
            mine.push((k.as_str(), change.as_deref()));
            pending.next();
        }
        let appended = match (old.last(), mine.first()) {
            (Some((last, _)), Some((k, _))) => k > last,
            _ => true,
        };
        let merged = merge(&old, &mine);
        let blocks = cut(&merged, appended);
        if blocks.is_empty() && existed {
            table.remove(bound.as_str()).map_err(text)?;
        }
        for (i, (first, block)) in blocks.iter().enumerate() {
            // The first block keeps the bound; the others start at their
            // first key (at least the bound, below the next one).
            let key = if i == 0 { bound.as_str() } else { first };
            table.insert(key, block.as_slice()).map_err(text)?;
        }
    }
    Ok(())
}

/// Calls `f` with every entry of the blocks in `table`, in key order.
///
/// # Errors
/// A message when redb fails, a block cannot be read, or a key is out of
/// place (below its block's bound, or not above the key before it).
pub(crate) fn for_each(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    mut f: impl FnMut(&str, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut last: Option<String> = None;
    for block in table.iter().map_err(text)? {
        let (bound, bytes) = block.map_err(text)?;
        let (bound, bytes) = (bound.value(), bytes.value());
        let entries = decode(bytes).ok_or_else(|| format!("unreadable block {bound:?}"))?;
        // The key before must be below this block's bound (or a change
        // of it would land here, beside it), and this block's keys at
        // least its bound.
        if let Some(l) = last.as_deref().filter(|l| *l >= bound) {
            return Err(format!("block {bound:?} follows key {l:?}"));
        }
        if let Some((first, _)) = entries.first().filter(|(first, _)| *first < bound) {
            return Err(format!("block {bound:?} holds {first:?} below its bound"));
        }
        for (k, row) in &entries {
            f(k, row)?;
        }
        if let Some((k, _)) = entries.last() {
            last = Some((*k).to_owned());
        }
    }
    Ok(())
}

/// Bytes of blocks written per transaction by [`repack`].
const REPACK_TX_BYTES: usize = 32 << 20;

/// Writes the records of `from` (a blocks table) to the blocks table of
/// the database `to`, packed in full blocks as keys written in order
/// would be, in transactions of about [`REPACK_TX_BYTES`], each committed
/// before it returns.
///
/// # Errors
/// A message when redb fails or `from` cannot be read ([`for_each`]).
pub(crate) fn repack(
    from: &impl ReadableTable<&'static str, &'static [u8]>,
    to: &redb::Database,
) -> Result<(), String> {
    let mut tx = Some(to.begin_write().map_err(text)?);
    let mut written = 0;
    // The block being filled, and its first key (its bound).
    let (mut first, mut block) = (String::new(), Vec::new());
    let mut emit = |tx: &mut Option<WriteTransaction>, first: &str, block: &[u8]| {
        let open = match tx {
            Some(open) => open,
            None => tx.insert(to.begin_write().map_err(text)?),
        };
        open.open_table(BLOCKS)
            .map_err(text)?
            .insert(first, block)
            .map_err(text)?;
        written += block.len();
        if written >= REPACK_TX_BYTES {
            written = 0;
            // Committed before the next one begins (one writer at a time).
            if let Some(full) = tx.take() {
                full.commit().map_err(text)?;
            }
        }
        Ok::<(), String>(())
    };
    for_each(from, |key, row| {
        if !block.is_empty() && block.len() + entry_len(key, row) > BLOCK_MAX {
            emit(&mut tx, &first, &block)?;
            block.clear();
        }
        if block.is_empty() {
            key.clone_into(&mut first);
        }
        put_entry(&mut block, key, row);
        Ok(())
    })?;
    if !block.is_empty() {
        emit(&mut tx, &first, &block)?;
    }
    match tx {
        Some(last) => last.commit().map_err(text),
        None => Ok(()),
    }
}

/// `old` (a block's entries) with `changes` (ascending keys) applied.
fn merge<'a>(
    old: &[(&'a str, &'a [u8])],
    changes: &[(&'a str, Option<&'a [u8]>)],
) -> Vec<(&'a str, &'a [u8])> {
    let mut out = Vec::with_capacity(old.len() + changes.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < changes.len() {
        match (old.get(i), changes.get(j)) {
            (Some(&(ok, _)), Some(&(ck, c))) if ok == ck => {
                if let Some(row) = c {
                    out.push((ck, row));
                }
                i += 1;
                j += 1;
            }
            (Some(&(ok, or)), Some(&(ck, _))) if ok < ck => {
                out.push((ok, or));
                i += 1;
            }
            (Some(&(ok, or)), None) => {
                out.push((ok, or));
                i += 1;
            }
            (_, Some(&(ck, c))) => {
                if let Some(row) = c {
                    out.push((ck, row));
                }
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redb::backends::InMemoryBackend;
    use redb::Database;

    fn db() -> Database {
        redb::Builder::new()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn commit(db: &Database, changes: &BTreeMap<String, Change>) {
        let tx = db.begin_write().unwrap();
        apply(&tx, changes).unwrap();
        tx.commit().unwrap();
    }

    /// Every entry, in order, and the size of each block.
    fn read(db: &Database) -> (Vec<(String, Vec<u8>)>, Vec<usize>) {
        let tx = db.begin_read().unwrap();
        let table = match tx.open_table(BLOCKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return (Vec::new(), Vec::new()),
            Err(e) => panic!("{e}"),
        };
        let mut entries = Vec::new();
        for_each(&table, |k, r| {
            entries.push((k.to_owned(), r.to_vec()));
            Ok(())
        })
        .unwrap();
        let sizes = table
            .iter()
            .unwrap()
            .map(|b| b.unwrap().1.value().len())
            .collect();
        (entries, sizes)
    }

    fn row(i: usize, len: usize) -> Vec<u8> {
        let mut r = vec![(i % 251) as u8 + 1; len];
        r[..8.min(len)].copy_from_slice(&i.to_le_bytes()[..8.min(len)]);
        r
    }

    /// Keys written in order fill their blocks: all but the last are
    /// within one entry of full (a table of rows per key would leave
    /// redb's leaves a half to two thirds full).
    #[test]
    fn keys_written_in_order_fill_their_blocks() {
        let db = db();
        for step in 0..20 {
            let changes = (0..1000)
                .map(|i| {
                    let i = step * 1000 + i;
                    (format!("key-{i:012}"), Some(row(i, 90)))
                })
                .collect();
            commit(&db, &changes);
        }
        let (entries, sizes) = read(&db);
        assert_eq!(entries.len(), 20_000);
        let entry = entry_len("key-000000000000", &row(0, 90));
        for s in &sizes[..sizes.len() - 1] {
            assert!(
                *s + entry > BLOCK_MAX && *s <= BLOCK_MAX,
                "a block of {s} bytes"
            );
        }
    }

    /// A block that overflows in its middle splits in even pieces that
    /// fit an 8 KiB page, and an entry larger than a block gets one of its
    /// own.
    #[test]
    fn overflows_in_the_middle_split_evenly_and_large_entries_stand_alone() {
        let db = db();
        let evens = (0..300)
            .map(|i| (format!("k{:05}", 2 * i), Some(row(i, 100))))
            .collect();
        commit(&db, &evens);
        let odds = (0..300)
            .map(|i| (format!("k{:05}", 2 * i + 1), Some(row(i, 100))))
            .collect();
        commit(&db, &odds);
        let (_, sizes) = read(&db);
        assert!(
            sizes
                .iter()
                .all(|s| (PIECE_MAX / 2..=PIECE_MAX).contains(s)),
            "{sizes:?}"
        );
        let big = [("k00100x".to_owned(), Some(row(7, 3 * BLOCK_MAX)))].into();
        commit(&db, &big);
        let (entries, sizes) = read(&db);
        assert_eq!(entries.len(), 601);
        assert!(
            sizes.iter().any(|s| *s > BLOCK_MAX),
            "the large entry is whole"
        );
    }

    #[test]
    fn unreadable_blocks_are_refused() {
        let good = encode_one("a", b"r");
        assert_eq!(decode(&good).unwrap(), [("a", &b"r"[..])]);
        let mut two = good.clone();
        two.extend(encode_one("b", b"s"));
        assert_eq!(decode(&two).unwrap().len(), 2);
        let mut out_of_order = encode_one("b", b"s");
        out_of_order.extend(encode_one("a", b"r"));
        let mut repeated = good.clone();
        repeated.extend(encode_one("a", b"s"));
        for (what, bad) in [
            ("keys out of order", out_of_order),
            ("a key twice", repeated),
            ("an empty row", encode_one("a", b"")),
            ("a key that is not UTF-8", vec![1, 0xff, 1, 1]),
            ("a key past the end", vec![5, b'a']),
            ("a row past the end", vec![1, b'a', 9, 1]),
            (
                "a varint that does not end",
                vec![0x80, 0x80, 0x80, 0x80, 0x01],
            ),
            ("a cut entry", good[..good.len() - 1].to_vec()),
        ] {
            assert!(decode(&bad).is_none(), "{what}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever the changes, the blocks hold what a map would, in
        /// order, each block within its size (or one large entry). Few
        /// keys and large rows: blocks split, empty and go often.
        #[test]
        fn blocks_hold_what_a_map_would(
            steps in proptest::collection::vec(
                proptest::collection::btree_map(
                    "[a-d]{0,2}",
                    proptest::option::of(1usize..6000),
                    0..16,
                ),
                1..12,
            )
        ) {
            let db = db();
            let mut model = BTreeMap::new();
            for (n, step) in steps.iter().enumerate() {
                let changes: BTreeMap<String, Change> = step
                    .iter()
                    .map(|(k, len)| (k.clone(), len.map(|l| row(n, l))))
                    .collect();
                for (k, c) in &changes {
                    match c {
                        Some(r) => { model.insert(k.clone(), r.clone()); }
                        None => { model.remove(k); }
                    }
                }
                commit(&db, &changes);
                let (entries, sizes) = read(&db);
                let want: Vec<_> = model.clone().into_iter().collect();
                prop_assert_eq!(entries, want);
                prop_assert!(sizes.iter().all(|s| *s <= BLOCK_MAX || *s <= 6000 + 16));
            }
        }
    }
}
