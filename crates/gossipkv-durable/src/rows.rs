//! How records and watermarks are laid out in the database's rows. Every
//! decoder checks lengths and returns `None` for a row it cannot read (the
//! caller reports the file corrupt); none panics.

use bytes::Bytes;
use gossipkv_storage::{Hlc, Key, Lifetime, NodeId, Origin, Record, Version, HLC_MAX_PHYSICAL_MS};

/// Flag bit: the record holds a value (else it is a tombstone).
const HAS_VALUE: u8 = 1;
/// Flag bit: a lifetime follows the sequence number (format 2; rows of
/// format 1 never set it).
const HAS_LIFETIME: u8 = 2;
/// Flag bit: the value is ephemeral (owned by its writer's origin).
const EPHEMERAL: u8 = 4;

/// A record's row value: a flag byte ([`HAS_VALUE`], [`HAS_LIFETIME`],
/// [`EPHEMERAL`]), the timestamp, generation and sequence number (u64
/// little-endian each), the expiry (u64, only with [`HAS_LIFETIME`]), the
/// writer's node id (u16 length, bytes), then the value's bytes.
pub(crate) fn encode_record(r: &Record) -> Vec<u8> {
    let node = r.version.node.as_str().as_bytes();
    let value = r.value.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(1 + 32 + 2 + node.len() + value.len());
    let timed = !r.lifetime.is_forever();
    let mut flag = 0;
    if r.value.is_some() {
        flag |= HAS_VALUE;
    }
    if timed {
        flag |= HAS_LIFETIME;
    }
    if r.lifetime.ephemeral {
        flag |= EPHEMERAL;
    }
    out.push(flag);
    out.extend_from_slice(&r.version.hlc.as_u64().to_le_bytes());
    out.extend_from_slice(&r.version.generation.to_le_bytes());
    out.extend_from_slice(&r.version.seq.to_le_bytes());
    if timed {
        out.extend_from_slice(&r.lifetime.expires_ms.to_le_bytes());
    }
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
    if flag & !(HAS_VALUE | HAS_LIFETIME | EPHEMERAL) != 0 {
        return None;
    }
    let (lifetime, rest) = if flag & HAS_LIFETIME != 0 {
        let (expires_ms, rest) = u64_le(rest)?;
        if expires_ms > HLC_MAX_PHYSICAL_MS {
            return None;
        }
        let lifetime = Lifetime {
            expires_ms,
            ephemeral: flag & EPHEMERAL != 0,
        };
        (lifetime, rest)
    } else if flag & EPHEMERAL != 0 {
        return None;
    } else {
        (Lifetime::FOREVER, rest)
    };
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*len));
    let node = std::str::from_utf8(rest.get(..len)?).ok()?;
    let value = &rest[len..];
    let value = match flag & HAS_VALUE {
        HAS_VALUE => Some(Bytes::copy_from_slice(value)),
        _ if value.is_empty() => None,
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
        key: Key::from(key),
        value,
        version: Version {
            hlc: Hlc::from_u64(hlc),
            node,
            generation,
            seq,
        },
        lifetime,
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

/// An origin's row value: watermark, then collected floor, then (format 3,
/// retired origins only) one byte 1.
pub(crate) fn encode_marks(watermark: u64, floor: u64, retired: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(&watermark.to_le_bytes());
    out.extend_from_slice(&floor.to_le_bytes());
    if retired {
        out.push(1);
    }
    out
}

/// Watermark, floor and whether retired; `None` for a malformed row.
pub(crate) fn decode_marks(row: &[u8]) -> Option<(u64, u64, bool)> {
    let (watermark, rest) = u64_le(row)?;
    let (floor, rest) = u64_le(rest)?;
    let retired = match rest {
        [] => false,
        [1] => true,
        _ => return None,
    };
    (floor <= watermark).then_some((watermark, floor, retired))
}

fn u64_le(b: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*head), rest))
}
