//! Members as a node sees them, the failure detector's tuning, and the
//! merge rule: how news about a member changes what we believe of it.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::Liveness;
use gossipkv_storage::NodeId;

/// The state of a member, as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// Answers probes (or was vouched for by others).
    Alive,
    /// Did not answer probes, directly or through others; declared dead
    /// unless it refutes the suspicion in time.
    Suspect,
    /// Suspected for too long: considered gone (it is still contacted now
    /// and then, and comes back as soon as it refutes its death).
    Dead,
    /// Announced that it left the cluster.
    Left,
}

impl MemberState {
    /// Whether the member counts as live: alive or suspect.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        })
    }
}

/// A member of the cluster, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Member {
    /// The member's node id.
    pub node_id: NodeId,
    /// Where it can be reached.
    pub addr: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// Its generation (changes when it restarts without its state).
    pub generation: u64,
    /// Its incarnation within the generation: the member raises it to refute
    /// a suspicion or death of itself.
    pub incarnation: u64,
}

impl Member {
    /// A member entry (for drivers that describe the local node).
    pub fn new(
        node_id: NodeId,
        addr: SocketAddr,
        state: MemberState,
        generation: u64,
        incarnation: u64,
    ) -> Self {
        Member {
            node_id,
            addr,
            state,
            generation,
            incarnation,
        }
    }
}

/// A change in membership.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A node was heard of for the first time.
    Joined(Member),
    /// A member did not answer probes and is suspected.
    Suspect(Member),
    /// A suspected member refuted the suspicion.
    Alive(Member),
    /// A member is considered dead.
    Dead(Member),
    /// A member announced that it left.
    Left(Member),
    /// A dead or departed member came back, or a member restarted (new generation).
    Rejoined(Member),
    /// A dead or departed member was forgotten after the grace period.
    Forgotten(Member),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Suspect(m)
            | MemberEvent::Alive(m)
            | MemberEvent::Dead(m)
            | MemberEvent::Left(m)
            | MemberEvent::Rejoined(m)
            | MemberEvent::Forgotten(m) => m,
        }
    }

    /// The event reporting a move from state `from` to state `to`.
    pub(crate) fn of_change(from: MemberState, to: MemberState, m: Member) -> MemberEvent {
        match (from, to) {
            (_, MemberState::Suspect) => MemberEvent::Suspect(m),
            (_, MemberState::Dead) => MemberEvent::Dead(m),
            (_, MemberState::Left) => MemberEvent::Left(m),
            (MemberState::Suspect, MemberState::Alive) => MemberEvent::Alive(m),
            (_, MemberState::Alive) => MemberEvent::Rejoined(m),
        }
    }
}

/// Tuning of the failure detector.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DetectorConfig {
    /// How long a probe waits for its answer before the member is doubted
    /// and other members are asked to probe it too.
    pub probe_timeout: Duration,
    /// How many members are asked to probe a member that did not answer.
    pub indirect_probes: usize,
    /// How long a doubted member is probed (directly and through others)
    /// before it is suspected: a member that answers meanwhile is never
    /// suspected, so one lost datagram does not raise a suspicion.
    pub confirm_timeout: Duration,
    /// How long a member stays suspect before it is declared dead (it is
    /// probed directly meanwhile and told of the suspicion, so that it can
    /// refute it).
    pub suspect_timeout: Duration,
    /// How long dead or departed members are remembered.
    pub forget_after: Duration,
}

impl DetectorConfig {
    /// Defaults derived from the gossip interval: probe timeout half an
    /// interval, three indirect probes, confirmation one interval, suspect
    /// timeout three intervals (at least 1 s), forgotten after one hour.
    pub fn for_interval(interval: Duration) -> Self {
        let ms = Duration::from_millis(1);
        DetectorConfig {
            probe_timeout: (interval / 2).max(ms),
            indirect_probes: 3,
            confirm_timeout: interval.max(ms),
            suspect_timeout: (3 * interval).max(Duration::from_secs(1)),
            forget_after: Duration::from_secs(3600),
        }
    }
}

/// News about a known member of the same generation: what a datagram's
/// sender says of itself, or a member entry (a rumor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct News {
    /// Alive, suspect or dead (a direct sender is always alive).
    pub(crate) liveness: Liveness,
    /// Whether it announced its departure.
    pub(crate) left: bool,
    /// The incarnation the news is about.
    pub(crate) incarnation: u64,
}

/// What [`merge`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing changes.
    Keep,
    /// Only the incarnation rises to this.
    Adopt(u64),
    /// The member moves to a state, at an incarnation (reported and rumored).
    Become(MemberState, u64),
    /// A newer suspicion: the member gets the whole suspect timeout again,
    /// at this incarnation.
    Renew(u64),
    /// We know a refutation the sender does not: rumor our view again.
    Spread,
}

/// The member merge rule (SWIM with suspicion): a departure sticks for the
/// generation, until news that the member is alive at a greater
/// incarnation (a node that stopped cleanly and restarted from its data
/// directory keeps its generation and starts above every incarnation it
/// used, so nothing of its earlier run can revive it); a greater
/// incarnation overrides a suspicion or death; a
/// suspicion or death at an incarnation at least the current one overrides
/// an alive member.
pub(crate) fn merge(state: MemberState, incarnation: u64, news: News) -> Verdict {
    use MemberState as S;
    use Verdict::*;
    let newer = news.incarnation > incarnation;
    let at_least = news.incarnation >= incarnation;
    match (state, news.left, news.liveness) {
        (S::Left, false, Liveness::Alive) if newer => Become(S::Alive, news.incarnation),
        (S::Left, _, _) => Keep,
        (_, true, _) => Become(S::Left, incarnation.max(news.incarnation)),
        (S::Alive, _, Liveness::Alive) if newer => Adopt(news.incarnation),
        (S::Suspect | S::Dead, _, Liveness::Alive) if newer => Become(S::Alive, news.incarnation),
        (_, _, Liveness::Alive) => Keep,
        (S::Alive, _, Liveness::Suspect) if at_least => Become(S::Suspect, news.incarnation),
        (S::Alive, _, Liveness::Suspect | Liveness::Dead) if !at_least => Spread,
        (S::Suspect, _, Liveness::Suspect) if newer => Renew(news.incarnation),
        (S::Alive | S::Suspect, _, Liveness::Dead) if at_least => Become(S::Dead, news.incarnation),
        (S::Dead, _, Liveness::Suspect | Liveness::Dead) if newer => Adopt(news.incarnation),
        (S::Suspect | S::Dead, _, Liveness::Suspect | Liveness::Dead) => Keep,
        (S::Alive, _, Liveness::Suspect | Liveness::Dead) => Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberState::*;
    use Verdict::*;

    fn news(liveness: Liveness, incarnation: u64) -> News {
        News {
            liveness,
            left: false,
            incarnation,
        }
    }

    /// Every (state, news) pair at incarnations below, equal to and above
    /// the member's (5), with the verdict SWIM prescribes.
    #[test]
    fn the_merge_rule_table() {
        use Liveness::{Alive as A, Dead as D, Suspect as S};
        #[rustfmt::skip]
        let table: &[(MemberState, Liveness, u64, Verdict)] = &[
            (Alive,   A, 4, Keep), (Alive,   A, 5, Keep),        (Alive,   A, 6, Adopt(6)),
            (Alive,   S, 4, Spread), (Alive, S, 5, Become(Suspect, 5)), (Alive, S, 6, Become(Suspect, 6)),
            (Alive,   D, 4, Spread), (Alive, D, 5, Become(Dead, 5)), (Alive, D, 6, Become(Dead, 6)),
            (Suspect, A, 4, Keep), (Suspect, A, 5, Keep),        (Suspect, A, 6, Become(Alive, 6)),
            (Suspect, S, 4, Keep), (Suspect, S, 5, Keep),        (Suspect, S, 6, Renew(6)),
            (Suspect, D, 4, Keep), (Suspect, D, 5, Become(Dead, 5)), (Suspect, D, 6, Become(Dead, 6)),
            (Dead,    A, 4, Keep), (Dead,    A, 5, Keep),        (Dead,    A, 6, Become(Alive, 6)),
            (Dead,    S, 4, Keep), (Dead,    S, 5, Keep),        (Dead,    S, 6, Adopt(6)),
            (Dead,    D, 4, Keep), (Dead,    D, 5, Keep),        (Dead,    D, 6, Adopt(6)),
            (Left,    A, 6, Become(Alive, 6)), (Left, S, 6, Keep),   (Left,    D, 6, Keep),
        ];
        for &(state, liveness, inc, want) in table {
            assert_eq!(
                merge(state, 5, news(liveness, inc)),
                want,
                "{state:?} hearing {liveness:?} at incarnation {inc}"
            );
        }
    }

    #[test]
    fn a_departure_sticks_and_keeps_the_greater_incarnation() {
        for state in [Alive, Suspect, Dead] {
            let left = News {
                left: true,
                ..news(Liveness::Alive, 3)
            };
            assert_eq!(merge(state, 5, left), Become(Left, 5));
            let left = News {
                left: true,
                ..news(Liveness::Dead, 9)
            };
            assert_eq!(merge(state, 5, left), Become(Left, 9));
        }
        let left = News {
            left: true,
            ..news(Liveness::Alive, 9)
        };
        assert_eq!(merge(Left, 5, left), Keep);
        for (liveness, inc) in [
            (Liveness::Alive, 5),
            (Liveness::Alive, 4),
            (Liveness::Suspect, 9),
            (Liveness::Dead, 9),
        ] {
            assert_eq!(
                merge(Left, 5, news(liveness, inc)),
                Keep,
                "{liveness:?} {inc}"
            );
        }
    }

    #[test]
    fn events_name_the_change() {
        let m = Member::new("x".into(), "127.0.0.1:1".parse().unwrap(), Alive, 1, 0);
        let kind = |from, to| match MemberEvent::of_change(from, to, m.clone()) {
            MemberEvent::Suspect(_) => "suspect",
            MemberEvent::Dead(_) => "dead",
            MemberEvent::Left(_) => "left",
            MemberEvent::Alive(_) => "alive",
            MemberEvent::Rejoined(_) => "rejoined",
            _ => "other",
        };
        assert_eq!(kind(Suspect, Alive), "alive");
        assert_eq!(kind(Dead, Alive), "rejoined");
        assert_eq!(kind(Alive, Suspect), "suspect");
        assert_eq!(kind(Suspect, Dead), "dead");
        assert_eq!(kind(Alive, Left), "left");
        assert_eq!(kind(Left, Alive), "rejoined");
    }
}
