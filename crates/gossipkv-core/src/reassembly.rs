//! Putting fragmented envelopes back together, within a memory bound.
//!
//! An envelope larger than a datagram (a large value) travels as
//! [`Fragment`]s. A message's id is a hash of its encoding
//! (a stable hash of it), and senders cut the same bytes at the same places, so
//! the receiver keeps the pieces of each message id, whoever sent them,
//! until all have arrived: pieces of a retry, or of the same large record
//! sent by another node, fill the holes a lossy network left in an earlier
//! attempt. The whole is handed back only if its hash matches its id.
//!
//! Bounds: at most `max_bytes` of memory are held in all and at most
//! `max_messages` messages are open; when a new piece would break either, the
//! least recently active message is dropped. Memory is counted as it is
//! spent, not only as data: each piece costs its bytes and
//! [`PIECE_OVERHEAD`], each message [`MESSAGE_OVERHEAD`], so a flood of
//! one-byte pieces holds no more than the bound either. A message with no new piece for
//! `timeout` is dropped by [`Reassembly::expire`]. Pieces are checked
//! against their message (same count and length, in range, not longer than
//! the whole), so a hostile sender cannot make the receiver hold more than
//! the bounds.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gossipkv_proto::Fragment;

use crate::hash::stable_hash;
use crate::time::Instant;

/// What [`Reassembly::insert`] made of a piece.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// More pieces are needed (or the piece was a duplicate).
    Pending,
    /// The message is whole: its encoding.
    Complete(Bytes),
    /// The piece contradicts the pieces received before it, or the whole
    /// does not match its id; the message was dropped.
    Rejected(&'static str),
}

/// Memory a piece costs besides its data: its `Bytes` handle and heap
/// block, and its share of the B-tree's nodes (measured layouts plus an
/// allocator's rounding; a bound, not an estimate).
pub(crate) const PIECE_OVERHEAD: usize = 96;

/// Memory an open message costs besides its pieces: its [`Partial`] and
/// its entry in the map of open messages.
pub(crate) const MESSAGE_OVERHEAD: usize = 160;

#[derive(Debug)]
struct Partial {
    count: u32,
    total_len: u32,
    pieces: BTreeMap<u32, Bytes>,
    /// Data bytes of the pieces held.
    data: usize,
    /// Memory they cost, the message's own overhead included.
    cost: usize,
    last: Instant,
}

/// Open fragmented messages; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Reassembly {
    open: BTreeMap<u64, Partial>,
    held: usize,
    max_bytes: usize,
    max_messages: usize,
    timeout: Duration,
    /// Messages dropped unfinished (timed out or pushed out by newer ones).
    pub(crate) dropped: u64,
}

impl Reassembly {
    /// Holds at most `max_bytes` of pieces in `max_messages` messages, each
    /// kept `timeout` after its last new piece.
    pub(crate) fn new(max_bytes: usize, max_messages: usize, timeout: Duration) -> Self {
        Reassembly {
            open: BTreeMap::new(),
            held: 0,
            max_bytes,
            max_messages: max_messages.max(1),
            timeout,
            dropped: 0,
        }
    }

    /// Memory held now: the pieces' bytes and the overheads.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.held
    }

    /// Adds one piece received at `now`.
    pub(crate) fn insert(&mut self, f: Fragment, now: Instant) -> Outcome {
        let id = f.message_id;
        if let Some(p) = self.open.get(&id) {
            if p.count != f.count || p.total_len != f.total_len {
                self.remove(&id);
                return Outcome::Rejected("fragment disagrees with earlier pieces of its message");
            }
            if p.pieces.contains_key(&f.index) {
                return Outcome::Pending;
            }
            if p.data + f.data.len() > p.total_len as usize {
                self.remove(&id);
                return Outcome::Rejected("fragments are longer than their message");
            }
        } else if f.data.len() as u64 > u64::from(f.total_len) {
            return Outcome::Rejected("fragment is longer than its message");
        }
        let new = !self.open.contains_key(&id);
        let cost = f.data.len() + PIECE_OVERHEAD + if new { MESSAGE_OVERHEAD } else { 0 };
        self.make_room(id, cost);
        if self.held + cost > self.max_bytes {
            // Alone, this piece does not fit the bound.
            if self.remove(&id).is_some() {
                self.dropped += 1;
            }
            return Outcome::Rejected("fragmented message larger than the reassembly bound");
        }
        let p = self.open.entry(id).or_insert_with(|| Partial {
            count: f.count,
            total_len: f.total_len,
            pieces: BTreeMap::new(),
            data: 0,
            cost: 0,
            last: now,
        });
        p.data += f.data.len();
        p.cost += cost;
        p.last = now;
        self.held += cost;
        p.pieces.insert(f.index, f.data);
        if p.pieces.len() < p.count as usize {
            return Outcome::Pending;
        }
        let whole = p.data == p.total_len as usize;
        let p = self.remove(&id).expect("message is open");
        if !whole {
            return Outcome::Rejected("fragments do not add up to their message's length");
        }
        let mut out = BytesMut::with_capacity(p.total_len as usize);
        for piece in p.pieces.values() {
            out.extend_from_slice(piece);
        }
        if stable_hash(&out) != id {
            return Outcome::Rejected("reassembled message does not match its id");
        }
        Outcome::Complete(out.freeze())
    }

    /// Drops messages that got no new piece for the timeout; returns how many.
    pub(crate) fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        let stale: Vec<_> = self
            .open
            .iter()
            .filter(|(_, p)| now.saturating_since(p.last) > timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in &stale {
            self.remove(id);
        }
        self.dropped += stale.len() as u64;
        stale.len()
    }

    /// Drops the least recently active other messages until `extra` more
    /// bytes (and, for a new message, one more message) fit the bounds.
    fn make_room(&mut self, keep: u64, extra: usize) {
        let new = !self.open.contains_key(&keep);
        while self.held + extra > self.max_bytes || (new && self.open.len() >= self.max_messages) {
            let victim = self
                .open
                .iter()
                .filter(|(&id, _)| id != keep)
                .min_by_key(|(_, p)| p.last)
                .map(|(&id, _)| id);
            match victim {
                Some(id) => {
                    self.remove(&id);
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, id: &u64) -> Option<Partial> {
        let p = self.open.remove(id)?;
        self.held -= p.cost;
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of `data`; `salt` makes otherwise equal test messages distinct.
    fn pieces(data: &[u8], salt: u64, len: usize) -> Vec<Fragment> {
        let mut data = data.to_vec();
        data.extend_from_slice(&salt.to_le_bytes());
        let id = stable_hash(&data);
        gossipkv_proto::fragment(&Bytes::from(data), id, len)
    }

    #[test]
    fn pieces_in_any_order_and_with_duplicates_make_the_message() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut ps = pieces(&data, 7, 64);
        ps.reverse();
        let dup = ps[3].clone();
        ps.insert(5, dup);
        let mut r = Reassembly::new(1 << 20, 4, Duration::from_secs(1));
        let mut done = None;
        for p in ps {
            match r.insert(p, Instant::from_millis(0)) {
                Outcome::Pending => {}
                Outcome::Complete(b) => done = Some(b),
                Outcome::Rejected(why) => panic!("{why}"),
            }
        }
        let done = done.expect("message completes");
        assert_eq!(&done[..data.len()], &data[..]);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn a_retry_fills_the_holes_of_an_earlier_attempt() {
        let data = vec![9u8; 500];
        let ps = pieces(&data, 1, 100);
        let mut r = Reassembly::new(1 << 20, 4, Duration::from_secs(1));
        // First attempt: every other piece lost.
        for p in ps.iter().step_by(2) {
            assert_eq!(
                r.insert(p.clone(), Instant::from_millis(0)),
                Outcome::Pending
            );
        }
        // Second attempt: only the others arrive.
        let mut out = Outcome::Pending;
        for p in ps.iter().skip(1).step_by(2) {
            out = r.insert(p.clone(), Instant::from_millis(10));
        }
        let Outcome::Complete(done) = out else {
            panic!("message does not complete: {out:?}");
        };
        assert_eq!(&done[..data.len()], &data[..]);
    }

    #[test]
    fn memory_and_message_bounds_hold_and_stale_messages_expire() {
        let mut r = Reassembly::new(1_000, 2, Duration::from_millis(100));
        for id in 0..10u64 {
            let ps = pieces(&[1u8; 800], id, 400);
            assert_eq!(
                r.insert(ps[0].clone(), Instant::from_millis(id)),
                Outcome::Pending
            );
            assert!(r.held_bytes() <= 1_000);
            assert!(r.open.len() <= 2);
        }
        assert!(r.dropped >= 8);
        let open = r.open.len();
        assert_eq!(r.expire(Instant::from_millis(1_000)), open);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn a_flood_of_one_byte_pieces_is_counted_at_its_real_cost() {
        // One message of 1 MiB announced in one-byte pieces: without the
        // overheads, 64 KiB of "bytes" would be 65,536 pieces.
        let bound = 64 << 10;
        let mut r = Reassembly::new(bound, 8, Duration::from_secs(10));
        let total = 1u32 << 20;
        for i in 0..20_000u32 {
            let f = Fragment {
                message_id: 42,
                index: i,
                count: total,
                total_len: total,
                data: Bytes::from_static(b"x"),
            };
            let _ = r.insert(f, Instant::from_millis(0));
            assert!(r.held_bytes() <= bound, "{} > {bound}", r.held_bytes());
        }
        let held: usize = r.open.values().map(|p| p.pieces.len()).sum();
        assert!(
            held <= bound / (1 + PIECE_OVERHEAD),
            "{held} pieces held in {bound} bytes"
        );
        assert!(held > 0, "the bound holds pieces at all");
        // A message whose first piece alone exceeds the bound is refused.
        let mut tiny = Reassembly::new(100, 8, Duration::from_secs(10));
        let ps = pieces(&[1u8; 300], 3, 100);
        assert!(matches!(
            tiny.insert(ps[0].clone(), Instant::from_millis(0)),
            Outcome::Rejected(_)
        ));
        assert_eq!(tiny.held_bytes(), 0);
    }

    #[test]
    fn contradicting_pieces_are_rejected() {
        let mut r = Reassembly::new(1 << 20, 4, Duration::from_millis(100));
        let ps = pieces(&[1u8; 300], 5, 100);
        assert_eq!(
            r.insert(ps[0].clone(), Instant::from_millis(0)),
            Outcome::Pending
        );
        let mut other = ps[1].clone();
        other.count = 9;
        assert!(matches!(
            r.insert(other, Instant::from_millis(0)),
            Outcome::Rejected(_)
        ));
        assert_eq!(r.held_bytes(), 0);
        // Pieces that fit together but are not the message their id names.
        let mut forged = pieces(&[1u8; 300], 7, 100);
        forged[1].data = Bytes::from(vec![2u8; 100]);
        let mut last = Outcome::Pending;
        for p in forged {
            last = r.insert(p, Instant::from_millis(0));
        }
        assert!(matches!(last, Outcome::Rejected(_)));
        // Pieces whose lengths do not add up to the whole.
        let mut short = pieces(&[1u8; 300], 6, 100);
        short[2].data = Bytes::from_static(b"x");
        let mut last = Outcome::Pending;
        for p in short {
            last = r.insert(p, Instant::from_millis(0));
        }
        assert!(matches!(last, Outcome::Rejected(_)));
    }
}
