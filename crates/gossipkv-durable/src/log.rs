//! The write-ahead log inside the data directory's file: small batches are
//! appended to it, so that a commit writes a page or two at the end of one
//! table, whatever keys it touches, instead of one page per block of the
//! records (the flush of a commit costs about a disk write per dirty
//! page). The log is folded into the records table by a large batch, by
//! [`DataDir::checkpoint`](crate::DataDir::checkpoint), and when a
//! directory is opened.
//!
//! The state a directory holds is the records table with the log's
//! entries applied over it in log order. Folding the log and writing a
//! large batch straight into the records table happen in one transaction,
//! so the records table never holds anything newer than a log entry that
//! would be applied over it.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use crate::Batch;
use crate::{blocks, rows};

/// Log sequence number to entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// The record of each key (tombstones included), a row per key: the
/// layout of formats 1 to 3, converted to blocks ([`crate::blocks`]) when
/// such a file is opened.
pub(crate) const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// One change an entry makes: the key, and its new row (`None`: removed).
pub(crate) type Change<'a> = (&'a str, Option<&'a [u8]>);

/// Entry tags.
pub(crate) const PUT: u8 = 1;
pub(crate) const REMOVE: u8 = 2;
/// A batch's changes in one entry (format 5): after the tag, each change
/// as a varint length and a [`PUT`] or [`REMOVE`] entry. One insert per
/// commit: a commit's cost here grows with the rows it inserts (about
/// 20 µs each on this project's machines), not with their bytes.
pub(crate) const BATCH: u8 = 3;

/// One log entry: a tag, the key's length (u32 little-endian), the key,
/// and for a put the record's row ([`rows::encode_record`]).
pub(crate) fn encode(tag: u8, key: &str, row: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + key.len() + row.len());
    out.push(tag);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(row);
    out
}

/// What an entry does, change by change in order (a [`BATCH`] entry holds
/// several): `Some(row)` puts the row under the key, `None` removes the
/// key. `None` overall when the entry cannot be read.
pub(crate) fn decode_all(entry: &[u8]) -> Option<Vec<Change<'_>>> {
    let Some((&BATCH, mut rest)) = entry.split_first() else {
        return decode(entry).map(|change| vec![change]);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, after) = blocks::take_varint(rest)?;
        let one = after.get(..len)?;
        // One level only: a batch inside a batch is not a change.
        if one.first() == Some(&BATCH) {
            return None;
        }
        out.push(decode(one)?);
        rest = &after[len..];
    }
    (!out.is_empty()).then_some(out)
}

/// What a single ([`PUT`] or [`REMOVE`]) entry does: `Some(row)` puts the
/// row under the key, `None` removes the key. `None` overall when the
/// entry cannot be read.
pub(crate) fn decode(entry: &[u8]) -> Option<Change<'_>> {
    let (&tag, rest) = entry.split_first()?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let key = std::str::from_utf8(rest.get(..len)?).ok()?;
    let row = &rest[len..];
    match tag {
        PUT if !row.is_empty() => Some((key, Some(row))),
        REMOVE if row.is_empty() => Some((key, None)),
        _ => None,
    }
}

/// Appends `batch`'s removals, then its records, at sequence number
/// `next`: one entry, a [`BATCH`] when there are several changes.
/// Returns the next free sequence number.
pub(crate) fn append(tx: &WriteTransaction, batch: &Batch, next: u64) -> Result<u64, String> {
    // Removals first: a key both removed and written keeps its write.
    let mut changes: Vec<Vec<u8>> = batch
        .removed
        .iter()
        .map(|k| encode(REMOVE, k, &[]))
        .collect();
    changes.extend(
        batch
            .records
            .iter()
            .map(|r| encode(PUT, &r.key, &rows::encode_record(r))),
    );
    let entry = match changes.len() {
        0 => return Ok(next),
        1 => changes.pop().unwrap_or_default(),
        _ => encode_batch(&changes),
    };
    let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
    log.insert(next, entry.as_slice())
        .map_err(|e| e.to_string())?;
    Ok(next + 1)
}

/// A [`BATCH`] entry of `changes` (each a [`PUT`] or [`REMOVE`] entry).
pub(crate) fn encode_batch(changes: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![BATCH];
    for c in changes {
        blocks::put_varint(&mut out, c.len());
        out.extend_from_slice(c);
    }
    out
}

/// Applies every log entry to the records' blocks, in order, and empties
/// the log. Returns how many changes (rows) it applied.
pub(crate) fn fold(tx: &WriteTransaction) -> Result<u64, String> {
    // The last entry of each key wins.
    let mut changes: BTreeMap<String, blocks::Change> = BTreeMap::new();
    let mut n = 0;
    {
        let log = tx.open_table(LOG).map_err(|e| e.to_string())?;
        if log.is_empty().map_err(|e| e.to_string())? {
            return Ok(0);
        }
        for entry in log.iter().map_err(|e| e.to_string())? {
            let (seq, entry) = entry.map_err(|e| e.to_string())?;
            let entry = decode_all(entry.value())
                .ok_or_else(|| format!("unreadable log entry {}", seq.value()))?;
            for (key, row) in entry {
                changes.insert(key.to_owned(), row.map(<[u8]>::to_vec));
                n += 1;
            }
        }
    }
    blocks::apply(tx, &changes)?;
    // The whole table goes at once (the next entry makes it again): taken
    // out entry by entry, a log of a second's small commits cost about
    // 12 µs per entry, while the commits waited.
    tx.delete_table(LOG).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Moves the rows of the records table of formats 1 to 3, if there is
/// one, into blocks, and deletes the table. Returns how many rows moved.
pub(crate) fn convert_rows(tx: &WriteTransaction) -> Result<u64, String> {
    /// Rows moved per [`blocks::apply`] (in key order: they fill blocks).
    const STEP: usize = 4096;
    let rows = match tx.open_table(RECORDS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.to_string()),
    };
    let mut n = 0;
    let mut changes = BTreeMap::new();
    for row in rows.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        changes.insert(k.value().to_owned(), Some(v.value().to_vec()));
        n += 1;
        if changes.len() == STEP {
            blocks::apply(tx, &std::mem::take(&mut changes))?;
        }
    }
    blocks::apply(tx, &changes)?;
    drop(rows);
    tx.delete_table(RECORDS).map_err(|e| e.to_string())?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch entry reads back as its changes in order; single entries
    /// (all that format 4 wrote) still read; a batch that is empty, cut,
    /// nested or holds an unreadable change is refused.
    #[test]
    fn batch_entries_read_back_in_order_and_bad_ones_are_refused() {
        let put = encode(PUT, "k", b"row");
        let remove = encode(REMOVE, "j", &[]);
        let batch = encode_batch(&[remove.clone(), put.clone()]);
        assert_eq!(
            decode_all(&batch).unwrap(),
            [("j", None), ("k", Some(&b"row"[..]))]
        );
        assert_eq!(decode_all(&put).unwrap(), [("k", Some(&b"row"[..]))]);
        assert_eq!(decode_all(&remove).unwrap(), [("j", None)]);
        for (what, bad) in [
            ("an empty batch", vec![BATCH]),
            ("a cut batch", batch[..batch.len() - 1].to_vec()),
            (
                "a batch in a batch",
                encode_batch(std::slice::from_ref(&batch)),
            ),
            ("an unreadable change", encode_batch(&[vec![PUT, 9]])),
            ("a length past the end", vec![BATCH, 100, PUT]),
        ] {
            assert!(decode_all(&bad).is_none(), "{what}");
        }
    }
}
