//! Dissemination at scale: how many gossip rounds one fresh write needs to
//! reach every node of a large cluster, and what the gossip costs in bytes.
//!
//! [`rounds_to_converge`] lets a cluster form (every node seeded with a few
//! random earlier nodes, until every node lists every other node as a live
//! member; the time it takes is part of the report) or, with
//! [`SimConfig::given_membership`], starts from a formed cluster whose nodes
//! draw peers from a shared directory (what lets 10,000 nodes fit in
//! memory), then writes one key on one node, runs
//! until every node holds it, then keeps running without writes to measure
//! idle traffic. Everything is bounded in virtual time, so a run always ends,
//! and deterministic for a seed; [`rounds_to_converge_with`] also lets the
//! caller stop a run early (on a wall-clock or memory budget).

use std::ops::ControlFlow;
use std::time::Instant;

use gossipkv_core::MemberState;

use crate::{DatagramKind, NetStats, Sim, SimConfig};

/// Rounds run before the write when membership is given.
pub const GIVEN_WARM_UP_ROUNDS: u64 = 3;

/// Bounds and sampling of a [`rounds_to_converge`] run, in gossip rounds.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Give up on membership forming after this many rounds (the write is
    /// made anyway, and the report says membership never completed).
    pub max_membership_rounds: u64,
    /// Give up on the write reaching every node after this many rounds.
    pub max_rounds: u64,
    /// Rounds without writes over which idle traffic is measured.
    pub idle_rounds: u64,
    /// How often per round convergence of the write is checked (the
    /// precision of [`ScaleReport::rounds`]).
    pub checks_per_round: u64,
}

impl Default for ScaleOptions {
    fn default() -> Self {
        ScaleOptions {
            max_membership_rounds: 200,
            max_rounds: 200,
            idle_rounds: 5,
            checks_per_round: 50,
        }
    }
}

/// Where a [`rounds_to_converge_with`] run stands. The callback gets one
/// several times per round of virtual time; `detail` is set about once a round
/// and at the end of each phase.
#[derive(Clone, Debug)]
pub struct Progress {
    /// `"membership"`, `"dissemination"` or `"idle"`.
    pub phase: &'static str,
    /// Rounds of virtual time spent in this phase so far.
    pub rounds: f64,
    /// What has been reached, e.g. "812/1000 nodes know every member".
    pub detail: Option<String>,
    /// True when the phase ends (reached or given up).
    pub done: bool,
}

/// The outcome of [`rounds_to_converge`].
#[derive(Clone, Debug)]
pub struct ScaleReport {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Whether eager push was on (otherwise anti-entropy only).
    pub push: bool,
    /// Seed of the run.
    pub seed: u64,
    /// Peers per round.
    pub fanout: usize,
    /// Whether membership was given ([`SimConfig::given_membership`]): the
    /// cluster started formed, and the membership figures are then `None`
    /// and 1.0 / 0.0.
    pub given_membership: bool,
    /// Rounds (virtual time / gossip interval, from the start) until every
    /// node listed every other node as alive or suspect, or `None` if that did
    /// not happen within [`ScaleOptions::max_membership_rounds`].
    pub membership_rounds: Option<f64>,
    /// Share of (observer, other node) pairs seen alive when the write was made.
    pub membership_alive_share: f64,
    /// Share of (observer, other node) pairs seen suspect when the write was
    /// made (false suspicions: every node is healthy).
    pub membership_suspect_share: f64,
    /// Rounds (virtual time / gossip interval) from the write until every node
    /// held it, or `None` if it did not within [`ScaleOptions::max_rounds`].
    pub rounds: Option<f64>,
    /// Share of nodes holding the write at the end of the dissemination phase.
    pub reached_share: f64,
    /// log3(N) + ln(ln(N)): the push-pull anti-entropy yardstick.
    pub yardstick: f64,
    /// log2(N) + ln(N): the yardstick of push (rumor mongering) alone.
    pub push_yardstick: f64,
    /// Payload bytes sent by all nodes from the write until convergence, per
    /// node per round.
    pub bytes_per_node_per_round: f64,
    /// Datagrams sent from the write until convergence, per node per round.
    pub datagrams_per_node_per_round: f64,
    /// Payload bytes sent per node per round after convergence, without writes.
    pub idle_bytes_per_node_per_round: f64,
    /// Datagrams sent per node per round after convergence, without writes.
    pub idle_datagrams_per_node_per_round: f64,
    /// Suspicions raised per node per round after convergence, without
    /// writes: every node is healthy and the network loses nothing, so every
    /// one is false (each also makes the suspecting node probe the suspect).
    pub idle_suspicions_per_node_per_round: f64,
    /// Members declared dead during the whole run (all falsely).
    pub false_deaths: u64,
    /// Traffic by kind of datagram from the write until convergence.
    pub by_kind: Vec<KindRate>,
    /// Traffic by kind of datagram after convergence, without writes.
    pub idle_by_kind: Vec<KindRate>,
    /// Wall-clock seconds the run took (not deterministic).
    pub wall_secs: f64,
    /// Why the run was stopped early by its caller, if it was.
    pub gave_up: Option<String>,
}

/// Traffic of one kind of datagram, per node per round.
#[derive(Clone, Debug)]
pub struct KindRate {
    /// The kind.
    pub kind: DatagramKind,
    /// Datagrams sent per node per round.
    pub datagrams: f64,
    /// Payload bytes sent per node per round.
    pub bytes: f64,
}

fn rates(from: &NetStats, to: &NetStats, nodes: usize, rounds: f64) -> Vec<KindRate> {
    let per = |x: u64| {
        if rounds > 0.0 {
            x as f64 / nodes.max(1) as f64 / rounds
        } else {
            f64::NAN
        }
    };
    DatagramKind::ALL
        .iter()
        .map(|&kind| {
            let (a, b) = (from.kind(kind), to.kind(kind));
            KindRate {
                kind,
                datagrams: per(b.sent - a.sent),
                bytes: per(b.bytes - a.bytes),
            }
        })
        .filter(|r| r.datagrams > 0.0)
        .collect()
}

/// log3(N) + ln(ln(N)), the number of rounds push-pull anti-entropy needs to
/// reach N nodes (see the protocol notes).
pub fn yardstick(nodes: usize) -> f64 {
    let n = nodes.max(3) as f64;
    n.ln() / 3f64.ln() + n.ln().ln()
}

/// log2(N) + ln(N), the number of rounds push alone needs to reach N nodes.
pub fn push_yardstick(nodes: usize) -> f64 {
    let n = nodes.max(2) as f64;
    n.log2() + n.ln()
}

/// [`rounds_to_converge_with`] without progress output or early stop.
pub fn rounds_to_converge(cfg: SimConfig, opts: &ScaleOptions) -> ScaleReport {
    rounds_to_converge_with(cfg, opts, |_| ControlFlow::Continue(()))
}

/// Measures how many rounds one fresh write needs to reach all `cfg.nodes`
/// nodes, with eager push on or off as `cfg.push` says. `progress` is called
/// several times per round of virtual time; returning `Break(reason)` stops
/// the run (the report then says why in [`ScaleReport::gave_up`]).
pub fn rounds_to_converge_with(
    mut cfg: SimConfig,
    opts: &ScaleOptions,
    mut progress: impl FnMut(&Progress) -> ControlFlow<String>,
) -> ScaleReport {
    let started = Instant::now();
    let mut gave_up: Option<String> = None;
    cfg.record_member_events = false;
    cfg.classify_datagrams = true;
    let interval = cfg.gossip_interval_ms.max(1);
    let n = cfg.nodes;
    let mut sim = Sim::new(cfg);
    let rounds_of = |ms: u64| ms as f64 / interval as f64;
    let mut stop = |gave_up: &mut Option<String>, p: Progress| {
        if let ControlFlow::Break(reason) = progress(&p) {
            *gave_up = Some(format!("{} (in the {} phase)", reason, p.phase));
        }
        gave_up.is_some()
    };

    // 1. Membership: run until every node lists every other node as a live
    // member (alive, or suspect: both are gossiped with). Checked every
    // tenth of a round, counted every round.
    // When membership is given the cluster starts formed, and this phase is
    // a warm-up of a few rounds, so that the write meets a quiet cluster
    // (whose nodes send one Syn per round), as it does after forming.
    let given = sim.config().given_membership;
    let mut census = if given {
        Census::given(n)
    } else {
        Census::default()
    };
    let start = sim.elapsed_ms();
    let mut next_census = start;
    let step = (interval / 10).max(1);
    let max_ms = if given {
        GIVEN_WARM_UP_ROUNDS * interval
    } else {
        opts.max_membership_rounds * interval
    };
    let formed = sim.run_until(max_ms, step, |s| {
        if given {
            return s.elapsed_ms() - start >= max_ms;
        }
        let now = s.elapsed_ms();
        let mut detail = None;
        if now >= next_census {
            next_census = now + interval;
            census = Census::take(s);
            detail = Some(census.describe(n));
        }
        let p = Progress {
            phase: "membership",
            rounds: rounds_of(now - start),
            detail,
            done: false,
        };
        census.complete == n || stop(&mut gave_up, p)
    });
    let formed = formed
        .filter(|_| gave_up.is_none() && !given)
        .map(rounds_of);
    let _ = stop(
        &mut gave_up,
        Progress {
            phase: "membership",
            rounds: rounds_of(sim.elapsed_ms() - start),
            detail: Some(format!(
                "{}: {}",
                if given {
                    "given"
                } else if formed.is_some() {
                    "formed"
                } else {
                    "gave up"
                },
                census.describe(n)
            )),
            done: true,
        },
    );

    // 2. One write, until every node holds it.
    let writer = n / 2;
    let key = "scale-probe";
    let value = b"fresh";
    let net0 = sim.net_stats();
    let t0 = sim.elapsed_ms();
    let mut took = None;
    if gave_up.is_none() {
        sim.set(writer, key, value);
        let step = (interval / opts.checks_per_round.max(1)).max(1);
        let mut next_report = t0 + interval;
        took = sim.run_until(opts.max_rounds * interval, step, |s| {
            if s.all_have(key, Some(value)) {
                return true;
            }
            let now = s.elapsed_ms();
            let mut detail = None;
            if now >= next_report {
                next_report = now + interval;
                detail = Some(format!(
                    "{}/{n} nodes hold the write",
                    holders(s, key, value)
                ));
            }
            let p = Progress {
                phase: "dissemination",
                rounds: rounds_of(now - t0),
                detail,
                done: false,
            };
            stop(&mut gave_up, p)
        });
        if gave_up.is_some() {
            took = None;
        }
    }
    let spent = sim.elapsed_ms() - t0;
    let net1 = sim.net_stats();
    let reached = holders(&sim, key, value);
    if gave_up.is_none() {
        let _ = stop(
            &mut gave_up,
            Progress {
                phase: "dissemination",
                rounds: rounds_of(spent),
                detail: Some(match took {
                    Some(_) => format!("all {n} nodes hold the write"),
                    None => format!("gave up: {reached}/{n} nodes hold the write"),
                }),
                done: true,
            },
        );
    }
    let dis_rounds = rounds_of(spent);

    // 3. Idle traffic, without writes.
    let idle_start = sim.net_stats();
    let events_start = sim.member_event_counts();
    let mut idle_ms = 0;
    let step = (interval / 10).max(1);
    while gave_up.is_none() && idle_ms < opts.idle_rounds * interval {
        sim.run_for(step);
        idle_ms += step;
        let done = idle_ms >= opts.idle_rounds * interval;
        let p = Progress {
            phase: "idle",
            rounds: rounds_of(idle_ms),
            detail: (done || idle_ms % interval == 0).then(String::new),
            done,
        };
        if stop(&mut gave_up, p) {
            break;
        }
    }
    let idle_end = sim.net_stats();
    let idle_rounds = rounds_of(idle_ms);
    let events_end = sim.member_event_counts();
    let suspicions = events_end.suspect - events_start.suspect;

    let per = |x: u64, rounds: f64| {
        if rounds > 0.0 {
            x as f64 / n.max(1) as f64 / rounds
        } else {
            f64::NAN
        }
    };
    let cfg = sim.config();
    ScaleReport {
        nodes: n,
        push: cfg.push,
        seed: cfg.seed,
        fanout: cfg.fanout,
        given_membership: given,
        membership_rounds: formed,
        membership_alive_share: Census::share(census.alive, n),
        membership_suspect_share: Census::share(census.suspect, n),
        rounds: took.map(rounds_of),
        reached_share: reached as f64 / n.max(1) as f64,
        yardstick: yardstick(n),
        push_yardstick: push_yardstick(n),
        bytes_per_node_per_round: per(net1.bytes - net0.bytes, dis_rounds),
        datagrams_per_node_per_round: per(net1.sent - net0.sent, dis_rounds),
        idle_bytes_per_node_per_round: per(idle_end.bytes - idle_start.bytes, idle_rounds),
        idle_datagrams_per_node_per_round: per(idle_end.sent - idle_start.sent, idle_rounds),
        idle_suspicions_per_node_per_round: per(suspicions, idle_rounds),
        false_deaths: events_end.dead,
        by_kind: rates(&net0, &net1, n, dis_rounds),
        idle_by_kind: rates(&idle_start, &idle_end, n, idle_rounds),
        wall_secs: started.elapsed().as_secs_f64(),
        gave_up,
    }
}

/// A census of every node's view of the membership.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    /// Nodes that list every other node as alive or suspect.
    complete: usize,
    /// Nodes that list every other node as alive.
    all_alive: usize,
    /// (observer, other node) pairs seen alive, suspect, and dead or left.
    alive: usize,
    suspect: usize,
    dead: usize,
}

impl Census {
    /// The census of a cluster whose membership is given: complete.
    fn given(n: usize) -> Self {
        let pairs = n * n.saturating_sub(1);
        Census {
            complete: n,
            all_alive: n,
            alive: pairs,
            suspect: 0,
            dead: 0,
        }
    }

    fn take(sim: &Sim) -> Self {
        let n = sim.len();
        let mut c = Census::default();
        for i in 0..n {
            let (mut alive, mut suspect, mut dead) = (0, 0, 0);
            for m in sim.members(i) {
                match m.state {
                    MemberState::Alive => alive += 1,
                    MemberState::Suspect => suspect += 1,
                    _ => dead += 1,
                }
            }
            // `members` lists the node itself, alive.
            alive -= usize::from(alive > 0);
            c.alive += alive;
            c.suspect += suspect;
            c.dead += dead;
            if alive + suspect + 1 >= n {
                c.complete += 1;
            }
            if alive + 1 >= n {
                c.all_alive += 1;
            }
        }
        c
    }

    fn share(x: usize, n: usize) -> f64 {
        let pairs = n * n.saturating_sub(1);
        if pairs == 0 {
            1.0
        } else {
            x as f64 / pairs as f64
        }
    }

    fn describe(&self, n: usize) -> String {
        format!(
            "{}/{n} nodes know all {n} (alive or suspect), {} all alive; pairs: {:.2}% alive, {:.2}% suspect, {:.2}% dead",
            self.complete,
            self.all_alive,
            Self::share(self.alive, n) * 100.0,
            Self::share(self.suspect, n) * 100.0,
            Self::share(self.dead, n) * 100.0,
        )
    }
}

fn holders(sim: &Sim, key: &str, value: &[u8]) -> usize {
    (0..sim.len())
        .filter(|&i| sim.store(i).get(key).as_deref() == Some(value))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yardsticks() {
        assert!((yardstick(1000) - (6.2877 + 1.9326)).abs() < 1e-3);
        assert!((push_yardstick(1024) - (10.0 + 6.9315)).abs() < 1e-3);
    }
}
