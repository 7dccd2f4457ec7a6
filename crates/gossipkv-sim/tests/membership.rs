//! Membership and failure detection scenarios in virtual time.

use gossipkv_core::{MemberEvent, MemberState};
use gossipkv_sim::{seed, SeedGuard, Sim, SimConfig};

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;

fn all_see(sim: &Sim, target: usize, state: MemberState) -> bool {
    (0..sim.len())
        .filter(|&i| i != target && sim.is_up(i))
        .all(|i| sim.state_seen(i, target) == Some(state))
}

/// A cluster of `nodes`, each seeded with two others, once every node lists
/// every node.
fn formed(seed: u64, nodes: usize) -> Sim {
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes,
        seeds_per_node: 2,
        ..SimConfig::default()
    });
    sim.run_until(MIN, SEC, knows_everyone)
        .expect("cluster forms");
    sim
}

/// The member events at or after `start` that match `pred`.
fn events_since(
    sim: &Sim,
    start: u64,
    pred: impl Fn(&MemberEvent) -> bool,
) -> Vec<&(usize, u64, MemberEvent)> {
    sim.member_events()
        .iter()
        .filter(|(_, t, e)| *t >= start && pred(e))
        .collect()
}

/// Whether every node lists every node (itself included), in any state.
fn knows_everyone(sim: &Sim) -> bool {
    (0..sim.len()).all(|i| sim.members(i).len() == sim.len())
}

#[test]
fn a_chain_of_seeds_learns_the_whole_cluster() {
    let seed = seed(31);
    let _g = SeedGuard::new("a_chain_of_seeds_learns_the_whole_cluster", seed);
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 20,
        seeds_per_node: 1,
        ..SimConfig::default()
    });
    let took = sim
        .run_until(2 * MIN, SEC, |s| {
            (0..20).all(|i| {
                let m = s.members(i);
                m.len() == 20 && m.iter().all(|m| m.state == MemberState::Alive)
            })
        })
        .expect("every node lists all 20 members as alive");
    eprintln!("20 chained nodes know each other after {took} ms");
}

/// SWIM's completeness bound, in ms, for `members` live members at the
/// default detector settings (one-second interval). Every node probes each
/// member once per cycle of `members` rounds, in an order shuffled again
/// for each cycle, so any one node probes the crashed member within
/// `2 * members - 1` rounds; then the probe times out (half an interval),
/// the doubt is confirmed (one interval), the suspicion runs out (three
/// intervals), and the death spreads (three rounds allowed). Usually some
/// node probes it within the first few rounds (about 6 s in all; the
/// slowest of 600 seeds took 9.8 s).
fn detection_bound_ms(members: u64) -> u64 {
    (2 * members - 1 + 7) * SEC + SEC / 2
}

#[test]
fn a_crashed_node_is_declared_dead_by_all_within_the_completeness_bound() {
    let seed = seed(41);
    let _g = SeedGuard::new(
        "a_crashed_node_is_declared_dead_by_all_within_the_completeness_bound",
        seed,
    );
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 10,
        seeds_per_node: 2,
        ..SimConfig::default()
    });
    sim.set(7, "written-by-7", b"data");
    sim.run_until(MIN, SEC, |s| knows_everyone(s) && s.converged())
        .expect("cluster forms");
    sim.run_for(30 * SEC);
    sim.crash(7);
    // Nine members: 24.5 s at worst.
    let took = sim
        .run_until(detection_bound_ms(9), 100, |s| {
            all_see(s, 7, MemberState::Dead)
        })
        .expect("every node declares the crashed node dead within the completeness bound");
    eprintln!("crash detected by all in {took} ms");
    // Healthy nodes are not declared dead, and the dead node's data stays.
    for i in (0..10).filter(|&i| i != 7) {
        for j in (0..10).filter(|&j| j != 7 && j != i) {
            assert_eq!(sim.state_seen(i, j), Some(MemberState::Alive));
        }
        assert_eq!(
            sim.store(i).get("written-by-7").as_deref(),
            Some(&b"data"[..])
        );
    }
}

#[test]
fn thirty_percent_loss_for_ten_minutes_declares_no_healthy_node_dead() {
    let seed = seed(43);
    let _g = SeedGuard::new(
        "thirty_percent_loss_for_ten_minutes_declares_no_healthy_node_dead",
        seed,
    );
    let mut sim = formed(seed, 10);
    sim.set_loss(0.3);
    let start = sim.elapsed_ms();
    for minute in 0..10 {
        sim.set(minute % 10, &format!("k{minute}"), b"v");
        sim.run_for(MIN);
    }
    let false_deaths: Vec<_> = events_since(&sim, start, |e| matches!(e, MemberEvent::Dead(_)));
    assert!(
        false_deaths.is_empty(),
        "healthy nodes declared dead: {false_deaths:?}"
    );
    let suspicions = events_since(&sim, start, |e| matches!(e, MemberEvent::Suspect(_))).len();
    eprintln!("10 min at 30% loss: {suspicions} suspicions, 0 deaths");
    assert!(sim.converged(), "data still converges under loss");
}

#[test]
fn a_member_one_node_cannot_reach_is_vouched_for_by_the_others() {
    let seed = seed(67);
    let _g = SeedGuard::new(
        "a_member_one_node_cannot_reach_is_vouched_for_by_the_others",
        seed,
    );
    let mut sim = formed(seed, 8);
    let start = sim.elapsed_ms();
    // Nodes 0 and 5 can no longer exchange datagrams, but both reach
    // everyone else: probes between them fail, probes through others do not.
    sim.cut(0, 5);
    sim.run_for(5 * MIN);
    let deaths: Vec<_> = events_since(&sim, start, |e| matches!(e, MemberEvent::Dead(_)));
    assert!(deaths.is_empty(), "members declared dead: {deaths:?}");
    assert_eq!(sim.state_seen(0, 5), Some(MemberState::Alive));
    assert_eq!(sim.state_seen(5, 0), Some(MemberState::Alive));
    let vouched: u64 = (0..8).map(|i| sim.stats(i).probes_relayed).sum();
    assert!(vouched > 0, "other members probed on the cut nodes' behalf");
    let suspicions = events_since(&sim, start, |e| matches!(e, MemberEvent::Suspect(_))).len();
    eprintln!("5 min with one link cut: {suspicions} suspicions, {vouched} probes relayed");
}

#[test]
fn a_partitioned_cluster_finds_itself_again_and_converges() {
    let seed = seed(47);
    let _g = SeedGuard::new(
        "a_partitioned_cluster_finds_itself_again_and_converges",
        seed,
    );
    let mut sim = formed(seed, 10);
    let left: Vec<usize> = (0..5).collect();
    let right: Vec<usize> = (5..10).collect();
    sim.partition(&[&left, &right]);
    sim.set(1, "left", b"L");
    sim.set(8, "right", b"R");
    sim.run_for(5 * MIN);
    assert_eq!(
        sim.state_seen(0, 9),
        Some(MemberState::Dead),
        "the halves lost each other"
    );
    assert_eq!(sim.state_seen(9, 0), Some(MemberState::Dead));
    sim.heal();
    let took = sim
        .run_until(30 * SEC, 500, |s| {
            s.converged()
                && (0..10).all(|i| s.members(i).iter().all(|m| m.state == MemberState::Alive))
        })
        .expect("the halves rejoin and converge within 30 s of the heal");
    eprintln!("healed partition rejoined and converged in {took} ms");
    assert!(sim.all_have("left", Some(b"L")) && sim.all_have("right", Some(b"R")));
}

#[test]
fn a_graceful_leave_is_seen_within_three_rounds() {
    let seed = seed(53);
    let _g = SeedGuard::new("a_graceful_leave_is_seen_within_three_rounds", seed);
    let mut sim = formed(seed, 8);
    sim.leave(3);
    let took = sim
        .run_until(3 * SEC, 50, |s| all_see(s, 3, MemberState::Left))
        .expect("every node sees the leave within three rounds");
    eprintln!("leave seen by all in {took} ms");
    // And it stays left (not dead, not alive) afterwards.
    sim.run_for(MIN);
    assert!(all_see(&sim, 3, MemberState::Left));
}

#[test]
fn a_restarted_node_rejoins_with_a_new_generation() {
    let seed = seed(59);
    let _g = SeedGuard::new("a_restarted_node_rejoins_with_a_new_generation", seed);
    let mut sim = formed(seed, 6);
    sim.crash(4);
    sim.run_until(20 * SEC, 100, |s| all_see(s, 4, MemberState::Dead))
        .expect("crash detected");
    sim.restart(4);
    sim.run_until(20 * SEC, 100, |s| all_see(s, 4, MemberState::Alive))
        .expect("the restarted node is alive again everywhere");
    assert!(sim.member_events().iter().any(
        |(_, _, e)| matches!(e, MemberEvent::Rejoined(m) if m.node_id.as_str() == "sim-00004")
    ));
}
