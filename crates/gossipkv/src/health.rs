//! A node's health summary: the problems it saw, kept where a user will
//! find them ([`GossipKv::health`](crate::GossipKv::health)) even without an
//! error handler or a tracing subscriber.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use gossipkv_core::NetworkError;
use parking_lot::Mutex;
use tracing::error;

/// How long a serious problem keeps a node unhealthy after it was last seen.
pub const HEALTH_WINDOW: Duration = Duration::from_secs(600);

/// The kinds of problem a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Another node uses this node's id: the two never share data.
    DuplicateNodeId,
    /// Datagrams from a node of another cluster (a misconfigured cluster
    /// id, or two clusters on one network): the two never share data.
    ForeignCluster,
    /// A peer claimed writes of this node's own origin (forged or corrupt).
    OwnOriginClaimed,
    /// A peer's clock is far ahead of ours.
    ClockSkew,
    /// Datagrams that did not decode.
    Decode,
    /// Sending or receiving failed.
    Io,
    /// A seed host name did not resolve.
    SeedResolution,
    /// Datagrams that did not open with this node's keyring (another key,
    /// no key, forged, stale or replayed): with a wrong key, the node
    /// shares nothing with the others.
    Unopened,
    /// A kind of report this version does not classify yet.
    Other,
}

impl ProblemKind {
    /// The kind of a report.
    fn of(e: &NetworkError) -> Self {
        match e {
            NetworkError::DuplicateNodeId { .. } => ProblemKind::DuplicateNodeId,
            NetworkError::ForeignCluster { .. } => ProblemKind::ForeignCluster,
            NetworkError::OwnOriginClaimed { .. } => ProblemKind::OwnOriginClaimed,
            NetworkError::ClockSkew { .. } => ProblemKind::ClockSkew,
            NetworkError::Decode { .. } => ProblemKind::Decode,
            NetworkError::SeedResolution { .. } => ProblemKind::SeedResolution,
            NetworkError::Io { .. } => ProblemKind::Io,
            NetworkError::Unopened { .. } => ProblemKind::Unopened,
            _ => ProblemKind::Other,
        }
    }

    /// A short description, as `Health`'s `Display` shows it.
    pub fn describe(self) -> &'static str {
        match self {
            ProblemKind::DuplicateNodeId => "another node uses this node's id",
            ProblemKind::ForeignCluster => "nodes of another cluster send to this node",
            ProblemKind::OwnOriginClaimed => "a peer claimed writes of this node (forged?)",
            ProblemKind::ClockSkew => "a peer's clock is far ahead",
            ProblemKind::Decode => "undecodable datagrams",
            ProblemKind::Io => "network I/O errors",
            ProblemKind::SeedResolution => "a seed does not resolve",
            ProblemKind::Unopened => {
                "datagrams that do not open with this node's keyring (wrong key, forged or replayed)"
            }
            ProblemKind::Other => "other problems",
        }
    }

    /// Whether this kind means the node does not replicate as configured:
    /// a duplicate node id, a foreign cluster, or forged writes.
    pub fn is_serious(self) -> bool {
        matches!(
            self,
            ProblemKind::DuplicateNodeId
                | ProblemKind::ForeignCluster
                | ProblemKind::OwnOriginClaimed
                | ProblemKind::Unopened
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// One kind of problem: how often, and the latest report.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Problem {
    /// The kind.
    pub kind: ProblemKind,
    /// How many reports of this kind since the node started.
    pub count: u64,
    /// The latest report.
    pub last: NetworkError,
    /// When the latest report was made, by the wall clock (for display).
    pub last_seen: SystemTime,
    /// When the latest report was made, by the monotonic clock: what
    /// [`Health::is_healthy`] ages problems by, so that a wall clock
    /// stepped back or forward does not keep a problem or clear it early.
    pub last_seen_at: Instant,
}

/// A node's health: see [`GossipKv::health`](crate::GossipKv::health).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Health {
    /// Members alive or suspect, this node excluded.
    pub live_peers: usize,
    /// Whether the node has seeds or discovery, so it expects peers.
    pub expects_peers: bool,
    /// Every kind of problem seen since the node started, most serious first.
    pub problems: Vec<Problem>,
    /// Error reports dropped because the error handler was too slow.
    pub errors_dropped: u64,
}

impl Health {
    /// Whether no serious problem (duplicate node id, foreign cluster,
    /// forged writes of our origin) was seen in the last
    /// [`HEALTH_WINDOW`], and a node that expects peers has one.
    pub fn is_healthy(&self) -> bool {
        let recent = |p: &&Problem| p.kind.is_serious() && p.last_seen_at.elapsed() < HEALTH_WINDOW;
        !self.problems.iter().any(|p| recent(&p)) && (!self.expects_peers || self.live_peers > 0)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_healthy() {
            "healthy"
        } else {
            "UNHEALTHY"
        };
        write!(f, "{state}: {} live peer(s)", self.live_peers)?;
        if self.expects_peers && self.live_peers == 0 {
            write!(f, " (seeds or discovery configured, but no peer answers)")?;
        }
        for p in &self.problems {
            write!(f, "; {} (x{}, latest: {})", p.kind, p.count, p.last)?;
        }
        if self.errors_dropped > 0 {
            write!(
                f,
                "; {} report(s) dropped by a slow error handler",
                self.errors_dropped
            )?;
        }
        Ok(())
    }
}

/// What the driver noted of the reports.
#[derive(Debug, Default)]
pub(crate) struct HealthTracker {
    problems: Mutex<BTreeMap<ProblemKind, Problem>>,
}

impl HealthTracker {
    /// Notes a report. The first serious one of its kind is also logged as
    /// an error, whatever the error handler does.
    pub(crate) fn note(&self, e: &NetworkError) {
        let kind = ProblemKind::of(e);
        let mut problems = self.problems.lock();
        let first = !problems.contains_key(&kind);
        let p = problems.entry(kind).or_insert_with(|| Problem {
            kind,
            count: 0,
            last: e.clone(),
            last_seen: SystemTime::now(),
            last_seen_at: Instant::now(),
        });
        p.count += 1;
        p.last = e.clone();
        p.last_seen = SystemTime::now();
        p.last_seen_at = Instant::now();
        if first && kind.is_serious() {
            error!(error = %e, "this node cannot replicate as configured; see GossipKv::health");
        }
    }

    /// The problems seen, most serious first.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut v: Vec<Problem> = self.problems.lock().values().cloned().collect();
        v.sort_by_key(|p| (!p.kind.is_serious(), p.kind));
        v
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    fn from() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7946))
    }

    fn health(tracker: &HealthTracker, live_peers: usize, expects_peers: bool) -> Health {
        Health {
            live_peers,
            expects_peers,
            problems: tracker.problems(),
            errors_dropped: 0,
        }
    }

    #[test]
    fn serious_problems_make_a_node_unhealthy_for_a_while() {
        let t = HealthTracker::default();
        assert!(health(&t, 0, false).is_healthy());
        // Not serious: undecodable datagrams, I/O.
        t.note(&NetworkError::Io {
            op: "send",
            source: Arc::new(std::io::Error::other("boom")),
        });
        assert!(health(&t, 0, false).is_healthy());
        // Serious: a duplicate node id, counted and listed first.
        for _ in 0..2 {
            t.note(&NetworkError::DuplicateNodeId {
                from: from(),
                node_id: "a".into(),
                generation: 7,
            });
        }
        let h = health(&t, 3, true);
        assert!(!h.is_healthy());
        assert_eq!(h.problems[0].kind, ProblemKind::DuplicateNodeId);
        assert_eq!(h.problems[0].count, 2);
        assert_eq!(h.problems[1].kind, ProblemKind::Io);
        let text = h.to_string();
        assert!(
            text.starts_with("UNHEALTHY: 3 live peer(s); another node uses this node's id (x2"),
            "{text}"
        );
        // Seen longer ago than the window: healthy again (still listed).
        let mut old = h.clone();
        // The wall clock says nothing: stepped an hour back, still recent.
        old.problems[0].last_seen = SystemTime::now() - HEALTH_WINDOW - Duration::from_secs(3600);
        assert!(!old.is_healthy(), "{old}");
        let Some(long_ago) = Instant::now().checked_sub(HEALTH_WINDOW + Duration::from_secs(1))
        else {
            return; // A monotonic clock this young cannot go back that far.
        };
        old.problems[0].last_seen_at = long_ago;
        assert!(old.is_healthy(), "{old}");
        assert_eq!(old.problems.len(), 2);
    }

    #[test]
    fn a_node_that_expects_peers_needs_one() {
        let t = HealthTracker::default();
        let h = health(&t, 0, true);
        assert!(!h.is_healthy());
        assert!(h.to_string().contains("no peer answers"), "{h}");
        assert!(health(&t, 1, true).is_healthy());
    }
}
