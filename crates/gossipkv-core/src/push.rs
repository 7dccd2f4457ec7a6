//! Eager push: fresh writes go to peers at once, in packet-sized batches,
//! instead of waiting for anti-entropy.
//!
//! In a cluster of up to [`PUSH_DIRECT_MAX`] alive peers the writer pushes
//! to every one of them and nobody forwards (each node gets each write
//! once); in a larger one it pushes to that many at random and they forward
//! what was new to them to `fanout` peers each, hop-limited. While a write
//! is being pushed directly to every alive member, anti-entropy leaves it
//! out of deltas for two intervals ([`Pusher::hold`]), so that exchanges
//! during a burst of writes do not send it again.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{encoded_len, push_record_len, Body, Envelope, Push, PROTOCOL_VERSION};
use gossipkv_storage::{NodeId, Origin, Record, Version};

use crate::config::PUSH_DIRECT_MAX;
use crate::context::Context;
use crate::large::LargeValues;
use crate::time::{millis, Instant};

/// Most origins whose recent pushes are remembered (pushed records name
/// their origin, so this map is fed by the network).
pub(crate) const MAX_ORIGINS_NOTED: usize = 4_096;

/// One time slot of recent pushes of an origin.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// When the slot started.
    at: Instant,
    /// The lowest sequence number pushed in it.
    seq: u64,
}

/// Recent direct pushes, per origin.
#[derive(Debug, Default)]
pub(crate) struct Pusher {
    pushed: BTreeMap<Origin, VecDeque<Slot>>,
    /// How long pushed writes are held back from anti-entropy.
    hold: Duration,
    /// Length of a time slot.
    slot: Duration,
    enabled: bool,
}

impl Pusher {
    pub(crate) fn new(interval: Duration, enabled: bool) -> Self {
        Pusher {
            pushed: BTreeMap::new(),
            hold: 2 * interval,
            slot: (interval / 4).max(Duration::from_millis(1)),
            enabled,
        }
    }

    /// Pushes fresh local writes to the alive peers (see the module docs).
    /// Records whose value is too large for a datagram go to the same
    /// peers, each as its own fragmented envelope, and are not forwarded.
    pub(crate) fn push_local(
        &mut self,
        cx: &mut Context,
        large: &mut LargeValues,
        records: Vec<Record>,
    ) {
        let alive = cx.peers.alive_count();
        let hops = if alive <= PUSH_DIRECT_MAX {
            0
        } else {
            push_hops(alive.div_ceil(PUSH_DIRECT_MAX), cx.cfg.fanout()) + 1
        };
        if hops == 0 {
            // Every alive peer gets these directly.
            self.note(cx.now, records.iter().map(|r| &r.version));
        }
        push_records(cx, large, records, hops, None, PUSH_DIRECT_MAX);
    }

    /// Forwards records pushed to us by `sender` at `from` that were new
    /// here, with `hops` forwards left, to `fanout` other alive peers.
    pub(crate) fn forward(
        &mut self,
        cx: &mut Context,
        large: &mut LargeValues,
        (from, sender): (SocketAddr, &NodeId),
        hops: u32,
        records: Vec<Record>,
    ) {
        let fanout = cx.cfg.fanout();
        push_records(cx, large, records, hops, Some((sender, from)), fanout);
    }

    /// Per origin, the first sequence number anti-entropy should not send
    /// yet: writes pushed (or received by direct push) within the hold time
    /// are still reaching their peers by push.
    pub(crate) fn hold(&self, origin: &Origin, now: Instant) -> u64 {
        let horizon = self.horizon(now);
        self.pushed.get(origin).map_or(u64::MAX, |w| {
            w.iter()
                .filter(|s| s.at >= horizon)
                .map(|s| s.seq)
                .min()
                .unwrap_or(u64::MAX)
        })
    }

    fn horizon(&self, now: Instant) -> Instant {
        Instant::from_millis(now.as_millis().saturating_sub(millis(self.hold)))
    }

    /// Notes that writes went out (or came in) by a push that reaches every
    /// alive member directly, at `now`: per origin, time slots of a quarter
    /// interval with the lowest sequence number seen in each, for as long
    /// as the hold time. (Forwarded pushes may miss nodes, so anti-entropy
    /// does not wait for them.)
    pub(crate) fn note<'a>(
        &mut self,
        now: Instant,
        versions: impl IntoIterator<Item = &'a Version>,
    ) {
        if !self.enabled {
            return;
        }
        let horizon = self.horizon(now);
        for v in versions {
            let origin = v.origin();
            if !self.pushed.contains_key(&origin) && self.pushed.len() >= MAX_ORIGINS_NOTED {
                // Not noted: anti-entropy may send it again, which is safe.
                continue;
            }
            let w = self.pushed.entry(origin).or_default();
            while w.front().is_some_and(|s| s.at < horizon) {
                w.pop_front();
            }
            match w.back_mut() {
                Some(s) if now < s.at + self.slot => s.seq = s.seq.min(v.seq),
                _ => w.push_back(Slot {
                    at: now,
                    seq: v.seq,
                }),
            }
        }
    }

    /// Forgets origins with no push within the hold time.
    pub(crate) fn expire(&mut self, now: Instant) {
        let horizon = self.horizon(now);
        self.pushed.retain(|_, w| {
            while w.front().is_some_and(|s| s.at < horizon) {
                w.pop_front();
            }
            !w.is_empty()
        });
    }

    /// Number of origins noted (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pushed.len()
    }
}

/// Sends `records` as packet-sized pushes to up to `fanout` of the push
/// peers (but `exclude`) per batch, with `hops` forwards left; large values
/// last, each on its own.
fn push_records(
    cx: &mut Context,
    large: &mut LargeValues,
    records: Vec<Record>,
    hops: u32,
    exclude: Option<(&NodeId, SocketAddr)>,
    fanout: usize,
) {
    if !cx.cfg.push || cx.left || records.is_empty() {
        return;
    }
    let mut peers = cx.peers.push_peers(exclude);
    if peers.is_empty() {
        return;
    }
    let (batches, apart) = batch(cx, records);
    for records in batches {
        for to in peers.draw(&mut cx.rng, fanout) {
            cx.stats.pushes_sent += 1;
            cx.send(
                to,
                Body::Push(Push {
                    records: records.clone(),
                    hops,
                }),
            );
        }
    }
    // Large values last, so that they never delay the small writes of the
    // same burst.
    for r in apart {
        for to in peers.draw(&mut cx.rng, fanout) {
            large.send(cx, to, r.clone(), 0);
        }
    }
}

/// Cuts records into push batches that fill a datagram exactly (pushes
/// carry no member entries: the whole packet but the header, which names
/// the records' origin once, is for records), and sets apart the records
/// too large for one.
fn batch(cx: &Context, records: Vec<Record>) -> (Vec<Vec<Record>>, Vec<Record>) {
    let mut batch: Vec<Record> = Vec::new();
    let mut used = 0;
    let mut room = 0;
    let mut batches = Vec::new();
    let mut apart = Vec::new();
    for r in records {
        if r.value
            .as_ref()
            .is_some_and(|v| v.len() > cx.sizes.inline_max)
        {
            apart.push(r);
            continue;
        }
        if batch.is_empty() {
            room = push_room(cx, &r);
        }
        let mut cost = push_record_len(&r, batch.first().unwrap_or(&r));
        if used + cost > room && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            used = 0;
            room = push_room(cx, &r);
            cost = push_record_len(&r, &r);
        }
        if cost > room {
            // Too large for a push datagram after all: send it apart.
            apart.push(r);
            continue;
        }
        used += cost;
        batch.push(r);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, apart)
}

/// Bytes a push datagram whose first record is `first` has for records.
fn push_room(cx: &Context, first: &Record) -> usize {
    let stand_in = Record::new(first.key.clone(), None, first.version.clone());
    let env = Envelope {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: cx.cfg.cluster_id.clone(),
        sender: cx.me(),
        members: Vec::new(),
        // Room for the address fields, which a push may carry.
        addr_token: u64::MAX,
        addr_echo: u64::MAX,
        padding: 0,
        body: Body::Push(Push {
            records: vec![stand_in.clone()],
            hops: u32::MAX,
        }),
    };
    // The header with the push's origin fields, less the stand-in; a few
    // bytes spare for an incarnation that grows meanwhile.
    let header = encoded_len(&env).saturating_sub(push_record_len(&stand_in, &stand_in));
    cx.cfg.packet_size.saturating_sub(header + 8)
}

/// How many times a fresh write may be forwarded: enough hops for `fanout`
/// pushes per hop to cover `n` nodes, plus one.
fn push_hops(n: usize, fanout: usize) -> u32 {
    let f = fanout.max(2) as f64;
    ((n.max(2) as f64).ln() / f.ln()).ceil() as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_hops_cover_the_cluster() {
        assert_eq!(push_hops(2, 3), 2);
        assert!(push_hops(10, 3) >= 3);
        assert!(push_hops(10_000, 3) >= 9);
    }

    #[test]
    fn pushed_writes_are_held_back_for_the_hold_time_only() {
        let mut p = Pusher::new(Duration::from_secs(1), true);
        let origin = Origin::new("w", 1);
        let v = |seq| Version::new(gossipkv_storage::Hlc::new(1, 0), &origin, seq);
        let t = Instant::from_millis;
        p.note(t(1_000), [&v(5), &v(3)]);
        p.note(t(1_100), [&v(7)]);
        assert_eq!(p.hold(&origin, t(1_100)), 3);
        p.note(t(1_400), [&v(9)]);
        assert_eq!(p.hold(&origin, t(3_000)), 3);
        assert_eq!(p.hold(&origin, t(3_300)), 9, "the first slot aged out");
        assert_eq!(p.hold(&origin, t(4_000)), u64::MAX);
        p.expire(t(4_000));
        assert_eq!(p.len(), 0, "origins with nothing held are forgotten");
        assert_eq!(p.hold(&Origin::new("other", 1), t(0)), u64::MAX);
    }
}
