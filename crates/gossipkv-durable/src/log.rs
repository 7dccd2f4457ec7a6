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

/// Entry tags.
pub(crate) const PUT: u8 = 1;
pub(crate) const REMOVE: u8 = 2;

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

/// What an entry does: `Some(row)` puts the row under the key, `None`
/// removes the key. `None` overall when the entry cannot be read.
pub(crate) fn decode(entry: &[u8]) -> Option<(&str, Option<&[u8]>)> {
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

/// Appends `batch`'s removals, then its records, from sequence number
/// `next` on. Returns the next free sequence number.
pub(crate) fn append(tx: &WriteTransaction, batch: &Batch, next: u64) -> Result<u64, String> {
    let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
    let mut seq = next;
    // Removals first: a key both removed and written keeps its write.
    for k in &batch.removed {
        log.insert(seq, encode(REMOVE, k, &[]).as_slice())
            .map_err(|e| e.to_string())?;
        seq += 1;
    }
    for r in &batch.records {
        let entry = encode(PUT, &r.key, &rows::encode_record(r));
        log.insert(seq, entry.as_slice())
            .map_err(|e| e.to_string())?;
        seq += 1;
    }
    Ok(seq)
}

/// Applies every log entry to the records' blocks, in order, and empties
/// the log. Returns how many entries it applied.
pub(crate) fn fold(tx: &WriteTransaction) -> Result<u64, String> {
    let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
    if log.is_empty().map_err(|e| e.to_string())? {
        return Ok(0);
    }
    // The last entry of each key wins.
    let mut changes: BTreeMap<String, blocks::Change> = BTreeMap::new();
    let mut n = 0;
    for entry in log.iter().map_err(|e| e.to_string())? {
        let (seq, entry) = entry.map_err(|e| e.to_string())?;
        let (key, row) =
            decode(entry.value()).ok_or_else(|| format!("unreadable log entry {}", seq.value()))?;
        changes.insert(key.to_owned(), row.map(<[u8]>::to_vec));
        n += 1;
    }
    blocks::apply(tx, &changes)?;
    log.retain(|_, _| false).map_err(|e| e.to_string())?;
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
