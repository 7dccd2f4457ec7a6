//! `GET /metrics`: the node's figures in the Prometheus text format.
//!
//! Node figures (keys, bytes, members, protocol counters) are read from the
//! node at each scrape; HTTP request counts are kept here as requests are
//! served.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use gossipkv::{GossipKv, MemberState, MessageKind};

/// Labels of an HTTP request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route pattern (`/v1/kv/{*key}`), or `unmatched`.
    pub route: String,
    /// The HTTP method.
    pub method: String,
    /// The response status code.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// A counter family by message kind, from per-kind figures.
fn by_kind(
    counts: &[gossipkv::KindCount; MessageKind::COUNT],
    pick: impl Fn(&gossipkv::KindCount) -> u64,
) -> Family<KindLabels, Counter> {
    let family = Family::<KindLabels, Counter>::default();
    for kind in MessageKind::ALL {
        family
            .get_or_create(&KindLabels { kind: kind.name() })
            .inc_by(pick(&counts[kind as usize]));
    }
    family
}

/// The agent's own metrics, shared by the HTTP handlers.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// HTTP requests served, by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// `reset` events sent to watch streams (a stream fell behind, or
    /// resumed from further back than the agent keeps).
    pub watch_resets: Counter,
}

impl Metrics {
    /// The metrics of `kv` and of the HTTP API, in the Prometheus text
    /// format (version 0.0.4).
    pub fn render(
        &self,
        kv: &GossipKv<String, bytes::Bytes>,
        feed: &crate::changes::Feed,
    ) -> String {
        let mut r = Registry::with_prefix("gossipkv");
        r.register(
            "keys",
            "Keys holding a value on this node",
            ConstGauge::new(kv.len() as i64),
        );
        r.register(
            "memory_bytes",
            "Bytes the entries take, as max_bytes counts them (tombstones included)",
            ConstGauge::new(kv.memory_usage() as i64),
        );
        let members = Family::<StateLabels, prometheus_client::metrics::gauge::Gauge>::default();
        for state in ["alive", "suspect", "dead", "left"] {
            members.get_or_create(&StateLabels { state }).set(0);
        }
        for m in kv.members() {
            members
                .get_or_create(&StateLabels {
                    state: state_name(m.state),
                })
                .inc();
        }
        r.register(
            "members",
            "Members this node knows (itself included), by state",
            members,
        );
        let s = kv.stats();
        r.register(
            "synced",
            "1 once the node has caught up with the cluster",
            ConstGauge::new(i64::from(s.synced)),
        );
        let mut counters: Vec<(&str, &str, u64)> = vec![
            ("rounds", "Gossip rounds", s.rounds),
            ("datagrams_sent", "Datagrams sent", s.datagrams_sent),
            ("bytes_sent", "Datagram bytes sent", s.bytes_sent),
            (
                "datagrams_received",
                "Datagrams received",
                s.datagrams_received,
            ),
            (
                "bytes_received",
                "Datagram bytes received",
                s.bytes_received,
            ),
            (
                "decode_errors",
                "Datagrams that did not decode (dropped)",
                s.decode_errors,
            ),
            (
                "foreign_cluster",
                "Datagrams from another cluster (dropped)",
                s.foreign_cluster,
            ),
            (
                "duplicate_node_id",
                "Datagrams claiming this node's id (dropped)",
                s.duplicate_node_id,
            ),
            (
                "unvalidated_refused",
                "Answers not sent to an address that has not shown it receives (over 3x its bytes, or fragmented)",
                s.unvalidated_refused,
            ),
            (
                "replies_rate_limited",
                "Answers not sent because their source spent its reply allowance",
                s.replies_rate_limited,
            ),
            (
                "addresses_validated",
                "Times an address sent back its validation token",
                s.addresses_validated,
            ),
            (
                "origins_refused",
                "New origins a message named beyond its sender's allowance (its records dropped)",
                s.origins_refused,
            ),
            (
                "oversized_dropped",
                "Records too large to send (dropped)",
                s.oversized_dropped,
            ),
            (
                "reassemblies_dropped",
                "Fragmented messages never completed (dropped)",
                s.reassemblies_dropped,
            ),
            (
                "records_won",
                "Received records that won the merge",
                s.records_won,
            ),
            (
                "records_lost",
                "Received records that lost the merge",
                s.records_lost,
            ),
            ("pushes_sent", "Eager pushes sent", s.pushes_sent),
            (
                "pushed_records_won",
                "Pushed records that won the merge",
                s.pushed_records_won,
            ),
            (
                "resyncs_completed",
                "Re-synchronisations completed",
                s.resyncs_completed,
            ),
            (
                "streams_completed",
                "Bulk catch-up streams received",
                s.streams_completed,
            ),
            (
                "streams_served",
                "Bulk catch-up streams served",
                s.streams_served,
            ),
            (
                "tombstones_collected",
                "Tombstones garbage-collected",
                s.tombstones_collected,
            ),
            (
                "values_expired",
                "Values whose time to live ran out",
                s.values_expired,
            ),
            (
                "owned_hidden",
                "Ephemeral values hidden with their owner",
                s.owned_hidden,
            ),
            (
                "refutations",
                "Suspicions of this node it refuted",
                s.refutations,
            ),
            (
                "records_deferred",
                "Records held back for clock drift",
                s.records_deferred,
            ),
        ];
        let m = kv.memory_stats();
        counters.extend([
            (
                "evictions",
                "Keys evicted to stay within the memory limits (each a replicated delete)",
                m.evicted,
            ),
            (
                "tombstones_collected_early",
                "Tombstones collected before their retention to stay within max_bytes",
                m.tombstones_collected_early,
            ),
            (
                "writes_refused_over_budget",
                "Local writes refused by the memory limits",
                m.refused,
            ),
            (
                "over_budget_after_eviction",
                "Eviction passes that ended still over the budget (only tombstones left)",
                m.over_after_eviction,
            ),
        ]);
        if let Some(d) = kv.durable_stats() {
            counters.extend([
                (
                    "durable_commits",
                    "Commits to the data directory (each flushed to disk)",
                    d.commits,
                ),
                (
                    "durable_records_written",
                    "Records written by those commits",
                    d.records_written,
                ),
                (
                    "durable_rows_removed",
                    "Rows removed from the data directory",
                    d.rows_removed,
                ),
                (
                    "durable_commit_failures",
                    "Commits that failed (tried again; see the logs)",
                    d.commit_failures,
                ),
            ]);
            r.register(
                "durable_pending",
                "Changes not committed to the data directory yet",
                ConstGauge::new(i64::try_from(d.pending).unwrap_or(i64::MAX)),
            );
        }
        for (name, help, value) in counters {
            r.register(name, help, ConstCounter::new(value));
        }
        let kinds = [
            (
                "datagrams_sent_by_kind",
                "Datagrams sent, by message kind",
                &s.sent_by_kind,
                true,
            ),
            (
                "bytes_sent_by_kind",
                "Datagram bytes sent, by message kind",
                &s.sent_by_kind,
                false,
            ),
            (
                "datagrams_received_by_kind",
                "Datagrams received that decoded, by message kind",
                &s.received_by_kind,
                true,
            ),
            (
                "bytes_received_by_kind",
                "Datagram bytes received that decoded, by message kind",
                &s.received_by_kind,
                false,
            ),
        ];
        for (name, help, counts, datagrams) in kinds {
            let family = by_kind(counts, |k| if datagrams { k.datagrams } else { k.bytes });
            r.register(name, help, family);
        }
        r.register(
            "change_index",
            "The agent's change index: changes its node applied since the agent started",
            ConstGauge::new(i64::try_from(feed.index()).unwrap_or(i64::MAX)),
        );
        r.register(
            "watch_missed",
            "Changes the agent's change feed missed because the node's watcher fell behind",
            ConstCounter::new(feed.missed()),
        );
        r.register(
            "watch_resets",
            "Reset events sent to watch streams (fell behind, or resumed too far back)",
            self.watch_resets.clone(),
        );
        r.register(
            "errors_dropped",
            "Network error reports dropped because the handler was too slow",
            ConstCounter::new(kv.errors_dropped()),
        );
        let keyring = kv.keyring_status();
        let seal = keyring.stats;
        r.register(
            "keyring_keys",
            "Keys in this node's gossip keyring (0: no encryption)",
            ConstGauge::new(keyring.keys.len() as i64),
        );
        r.register(
            "sealed_datagrams",
            "Datagrams sealed and sent",
            ConstCounter::new(seal.sealed),
        );
        r.register(
            "opened_datagrams",
            "Sealed datagrams received that opened and were fresh",
            ConstCounter::new(seal.opened),
        );
        r.register(
            "plaintext_datagrams_accepted",
            "Plaintext datagrams accepted while encryption is permissive",
            ConstCounter::new(seal.plaintext_accepted),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in [
            ("plaintext", seal.refused_plaintext),
            ("unknown_key", seal.refused_unknown_key),
            ("forged", seal.refused_forged),
            ("stale", seal.refused_stale),
            ("future", seal.refused_future),
            ("replayed", seal.refused_replayed),
        ] {
            refused.get_or_create(&ReasonLabels { reason }).inc_by(n);
        }
        r.register(
            "datagrams_refused",
            "Datagrams refused before decoding, by reason",
            refused,
        );
        r.register(
            "replay_forgotten",
            "Datagrams the replay guard forgot within its window because it was full",
            ConstCounter::new(seal.replay_forgotten),
        );
        r.register(
            "sealed_streams_refused",
            "Catch-up streams dropped because a record did not open (or was plaintext)",
            ConstCounter::new(seal.streams_refused),
        );
        r.register(
            "http_requests",
            "HTTP requests served by the agent, by route, method and status",
            self.http_requests.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &r);
        out
    }
}

/// The lowercase name of a member state, as the API shows it.
pub fn state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
        _ => "unknown",
    }
}
