//! Large values: a record whose value is too large for a datagram travels
//! on its own, as a push envelope cut into fragments.
//!
//! The envelope is the same whoever sends the record and whenever (its
//! header names the record's origin, with no address or incarnation), so at
//! the receiver pieces of a retry, or from another node, fill the holes of
//! an earlier attempt (see [`crate::reassembly`]). The same record goes to
//! the same peer at most once every three intervals.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{encoded_len, Body, Envelope, Push, Sender, PROTOCOL_VERSION};
use gossipkv_storage::{NodeId, Record};

use crate::context::Context;
use crate::time::Instant;

/// Most (peer, record) sends remembered; past it the oldest is forgotten
/// (which only risks sending that record again early).
pub(crate) const MAX_REMEMBERED: usize = 4_096;

/// Which peer got which large record (by origin and sequence number).
type SentKey = (SocketAddr, NodeId, u64, u64);

/// Large records sent lately.
#[derive(Debug, Default)]
pub(crate) struct LargeValues {
    sent: BTreeMap<SentKey, Instant>,
    /// How long before the same record goes to the same peer again.
    resend: Duration,
}

impl LargeValues {
    pub(crate) fn new(interval: Duration) -> Self {
        LargeValues {
            sent: BTreeMap::new(),
            resend: 3 * interval,
        }
    }

    /// Sends `record` to `to` on its own, unless it went there a moment ago.
    pub(crate) fn send(&mut self, cx: &mut Context, to: SocketAddr, record: Record, hops: u32) {
        let v = &record.version;
        let key = (to, v.node.clone(), v.generation, v.seq);
        if self
            .sent
            .get(&key)
            .is_some_and(|&t| cx.now.saturating_since(t) < self.resend)
        {
            return;
        }
        if self.sent.len() >= MAX_REMEMBERED {
            self.expire(cx.now);
            if self.sent.len() >= MAX_REMEMBERED {
                let oldest = self
                    .sent
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.sent.remove(&oldest);
                }
            }
        }
        self.sent.insert(key, cx.now);
        cx.stats.large_records_sent += 1;
        let mut env = Envelope {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: cx.cfg.cluster_id.clone(),
            sender: Sender::new(v.node.clone(), v.generation, None),
            members: Vec::new(),
            addr_token: 0,
            addr_echo: 0,
            padding: 0,
            body: Body::Push(Push {
                records: vec![record],
                hops,
            }),
        };
        if encoded_len(&env) <= cx.cfg.packet_size {
            // It fits after all: an ordinary push, under our own name.
            cx.send(to, env.body);
            return;
        }
        // Only to an address that showed it receives (see `address`).
        if cx.admit(to, &mut env) {
            cx.out.queue_large(to, env);
        }
    }

    /// Forgets sends older than the resend time.
    pub(crate) fn expire(&mut self, now: Instant) {
        let resend = self.resend;
        self.sent.retain(|_, t| now.saturating_since(*t) < resend);
    }

    /// Number of sends remembered (for bound checks).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sent.len()
    }
}
