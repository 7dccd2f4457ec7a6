//! How records and watermarks are laid out in the database's rows. Every
//! decoder checks lengths and returns `None` for a row it cannot read (the
//! caller reports the file corrupt); none panics.

use std::sync::Arc;

use bytes::Bytes;
use gossipkv_storage::{Hlc, NodeId, Origin, Record, Version};

/// A record's row value: a flag byte (1: value, 0: tombstone), the
/// timestamp, generation and sequence number (u64 little-endian each), the
/// writer's node id (u16 length, bytes), then the value's bytes.
pub(crate) fn encode_record(r: &Record) -> Vec<u8> {
    let node = r.version.node.as_str().as_bytes();
    let value = r.value.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(1 + 24 + 2 + node.len() + value.len());
    out.push(u8::from(r.value.is_some()));
    out.extend_from_slice(&r.version.hlc.as_u64().to_le_bytes());
    out.extend_from_slice(&r.version.generation.to_le_bytes());
    out.extend_from_slice(&r.version.seq.to_le_bytes());
    let len = u16::try_from(node.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&node[..usize::from(len)]);
    out.extend_from_slice(value);
    out
}

/// The record of key `key` from its row value. `last_node` is the node id
/// of the record decoded before: rows of one writer share one id.
pub(crate) fn decode_record(
    key: &str,
    row: &[u8],
    last_node: &mut Option<NodeId>,
) -> Option<Record> {
    let (&flag, rest) = row.split_first()?;
    let (hlc, rest) = u64_le(rest)?;
    let (generation, rest) = u64_le(rest)?;
    let (seq, rest) = u64_le(rest)?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    let node = std::str::from_utf8(rest.get(..len)?).ok()?;
    let value = &rest[len..];
    let value = match flag {
        1 => Some(Bytes::copy_from_slice(value)),
        0 if value.is_empty() => None,
        _ => return None,
    };
    if node.is_empty() || seq == 0 {
        return None;
    }
    let node = match last_node {
        Some(n) if n.as_str() == node => n.clone(),
        _ => last_node.insert(NodeId::new(node)).clone(),
    };
    Some(Record {
        key: Arc::from(key),
        value,
        version: Version {
            hlc: Hlc::from_u64(hlc),
            node,
            generation,
            seq,
        },
    })
}

/// An origin's row key: its generation (u64 little-endian), then its node id.
pub(crate) fn encode_origin(o: &Origin) -> Vec<u8> {
    let mut out = o.generation.to_le_bytes().to_vec();
    out.extend_from_slice(o.node.as_str().as_bytes());
    out
}

pub(crate) fn decode_origin(key: &[u8]) -> Option<Origin> {
    let (generation, node) = u64_le(key)?;
    let node = std::str::from_utf8(node).ok()?;
    (!node.is_empty()).then(|| Origin::new(node, generation))
}

/// An origin's row value: watermark, then collected floor.
pub(crate) fn encode_marks(watermark: u64, floor: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&watermark.to_le_bytes());
    out[8..].copy_from_slice(&floor.to_le_bytes());
    out
}

pub(crate) fn decode_marks(row: &[u8]) -> Option<(u64, u64)> {
    let (watermark, rest) = u64_le(row)?;
    let (floor, rest) = u64_le(rest)?;
    (rest.is_empty() && floor <= watermark).then_some((watermark, floor))
}

fn u64_le(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}
