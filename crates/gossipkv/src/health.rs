//! A node's health summary: the problems it saw, kept where a user will
//! find them ([`GossipKv::health`](crate::GossipKv::health)) even without an
//! error handler or a tracing subscriber.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

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
            _ => ProblemKind::Io,
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
        )
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
    /// When the latest report was made.
    pub last_seen: SystemTime,
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
        let recent = |p: &&Problem| {
            p.kind.is_serious()
                && p.last_seen
                    .elapsed()
                    .map_or(true, |age| age < HEALTH_WINDOW)
        };
        !self.problems.iter().any(|p| recent(&p)) && (!self.expects_peers || self.live_peers > 0)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_healthy() { "healthy" } else { "UNHEALTHY" };
        write!(f, "{state}: {} live peer(s)", self.live_peers)?;
        if self.expects_peers && self.live_peers == 0 {
            write!(f, " (seeds or discovery configured, but no peer answers)")?;
        }
        for p in &self.problems {
            write!(f, "; {:?} x{}: {}", p.kind, p.count, p.last)?;
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
        });
        p.count += 1;
        p.last = e.clone();
        p.last_seen = SystemTime::now();
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
