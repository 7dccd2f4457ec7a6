//! Unit tests of the membership table, rumors and reconciliation.

use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_proto::{Liveness, Sender};
use gossipkv_storage::NodeId;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::member::{DetectorConfig, MemberEvent, MemberState};
use super::rumors::retransmits;
use super::table::{Table, MAX_MEMBERS};
use crate::time::Instant;

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn rumor(id: &str, generation: u64, incarnation: u64, liveness: Liveness) -> Sender {
    let mut s = Sender::new(id, generation, Some("127.0.0.1:9000".parse().unwrap()));
    s.incarnation = incarnation;
    s.liveness = liveness;
    s
}

fn left(id: &str, generation: u64, incarnation: u64) -> Sender {
    let mut s = rumor(id, generation, incarnation, Liveness::Alive);
    s.left = true;
    s
}

fn kinds(m: &mut Table) -> Vec<&'static str> {
    std::iter::from_fn(|| m.poll_event())
        .map(|e| match e {
            MemberEvent::Joined(_) => "joined",
            MemberEvent::Suspect(_) => "suspect",
            MemberEvent::Alive(_) => "alive",
            MemberEvent::Dead(_) => "dead",
            MemberEvent::Left(_) => "left",
            MemberEvent::Rejoined(_) => "rejoined",
            MemberEvent::Forgotten(_) => "forgotten",
        })
        .collect()
}

fn table_of(id: &str, cfg: DetectorConfig) -> Table {
    Table::new(id.into(), 1, Duration::from_secs(3), cfg)
}

fn table() -> Table {
    table_of("me", DetectorConfig::for_interval(Duration::from_secs(1)))
}

fn state(m: &Table, id: &str) -> Option<MemberState> {
    m.get(&id.into()).map(|m| m.state)
}

fn unsettled(m: &Table, now: Instant) -> bool {
    m.rumors.pending() || m.print.recently_changed(now)
}

fn sample(
    m: &mut Table,
    me: &Sender,
    to: Option<&NodeId>,
    reply: bool,
    now: Instant,
    rng: &mut SmallRng,
) -> Vec<Sender> {
    let (members, print) = (&m.members, &m.print);
    m.rumors
        .sample(members, print, me, to, reply, now, 1_000, rng)
}

#[test]
fn a_doubt_that_lasts_becomes_suspicion_then_death() {
    let mut m = table();
    m.observe(&rumor("x", 1, 0, Liveness::Alive), None, t(0));
    m.doubt(&"x".into(), t(1_000));
    m.check(t(1_500));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    assert_eq!(m.to_probe().len(), 1, "a doubted member is probed");
    m.check(t(2_000));
    assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
    m.check(t(4_999));
    assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
    m.check(t(5_000));
    assert_eq!(state(&m, "x"), Some(MemberState::Dead));
    assert_eq!(kinds(&mut m), vec!["joined", "suspect", "dead"]);
}

#[test]
fn an_answer_clears_a_doubt_before_it_becomes_suspicion() {
    let mut m = table();
    m.observe(&rumor("x", 1, 0, Liveness::Alive), None, t(0));
    m.doubt(&"x".into(), t(1_000));
    let from = "127.0.0.1:9".parse().unwrap();
    m.observe(&rumor("x", 1, 0, Liveness::Alive), Some(from), t(1_200));
    m.check(t(5_000));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    assert!(m.to_probe().is_empty());
    assert_eq!(
        m.get(&"x".into()).unwrap().addr,
        from,
        "direct address wins"
    );
}

#[test]
fn suspicion_is_overridden_only_by_a_greater_incarnation() {
    let mut m = table();
    m.observe(&rumor("x", 1, 3, Liveness::Alive), None, t(0));
    // A stale suspicion (older incarnation) changes nothing.
    m.observe(&rumor("x", 1, 2, Liveness::Suspect), None, t(10));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    m.observe(&rumor("x", 1, 3, Liveness::Suspect), None, t(20));
    assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
    // The same incarnation, even heard directly, does not refute.
    let from = "127.0.0.1:9000".parse().unwrap();
    m.observe(&rumor("x", 1, 3, Liveness::Alive), Some(from), t(30));
    assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
    m.observe(&rumor("x", 1, 4, Liveness::Alive), None, t(40));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    // Death at an older incarnation is stale too; at the current one it
    // sticks until refuted.
    m.observe(&rumor("x", 1, 3, Liveness::Dead), None, t(50));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    m.observe(&rumor("x", 1, 4, Liveness::Dead), None, t(60));
    assert_eq!(state(&m, "x"), Some(MemberState::Dead));
    m.observe(&rumor("x", 1, 5, Liveness::Alive), None, t(70));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    assert_eq!(
        kinds(&mut m),
        vec!["joined", "suspect", "alive", "dead", "rejoined"]
    );
}

#[test]
fn rumors_about_ourselves_are_refuted_with_a_greater_incarnation() {
    let m = table();
    assert_eq!(m.refutes(&rumor("me", 1, 4, Liveness::Suspect), 4), Some(5));
    assert_eq!(m.refutes(&rumor("me", 1, 4, Liveness::Dead), 2), Some(5));
    assert_eq!(m.refutes(&rumor("me", 1, 3, Liveness::Suspect), 4), None);
    assert_eq!(m.refutes(&rumor("me", 1, 9, Liveness::Alive), 4), None);
    assert_eq!(m.refutes(&rumor("me", 2, 9, Liveness::Dead), 4), None);
    assert_eq!(m.refutes(&rumor("x", 1, 9, Liveness::Dead), 4), None);
}

#[test]
fn rumors_spread_a_bounded_number_of_times_and_quiet_tables_send_nothing() {
    let mut m = table();
    let me = Sender::new("me", 1, None);
    let mut rng = SmallRng::seed_from_u64(1);
    m.observe(&rumor("x", 1, 0, Liveness::Alive), None, t(0));
    assert!(
        !unsettled(&m, t(10_000)),
        "a join is not rumored (reconciliation carries it)"
    );
    m.observe(&rumor("y", 1, 0, Liveness::Alive), None, t(0));
    m.observe(&rumor("y", 1, 0, Liveness::Suspect), None, t(0));
    let x: NodeId = "x".into();
    let mut sent = 0;
    while !sample(&mut m, &me, None, false, t(0), &mut rng).is_empty() && sent < 100 {
        sent += 1;
        if !unsettled(&m, t(10_000)) {
            break;
        }
    }
    assert_eq!(
        sent,
        retransmits(m.members.len()) as usize,
        "a suspicion is sent 3 log2 n times"
    );
    // A peer that agrees on the member list gets no entries.
    let from = "127.0.0.1:9000".parse().unwrap();
    let mut s = rumor("x", 1, 0, Liveness::Alive);
    s.members_hash = m.print.hash();
    m.observe(&s, Some(from), t(10));
    assert!(sample(&mut m, &me, Some(&x), true, t(10), &mut rng).is_empty());
    // One that does not gets a random sample in replies, and in first
    // messages only while our list changed recently; so does an unknown node.
    s.members_hash = 1;
    m.observe(&s, Some(from), t(20));
    assert!(!sample(&mut m, &me, Some(&x), false, t(20), &mut rng).is_empty());
    assert!(sample(&mut m, &me, Some(&x), false, t(3_000), &mut rng).is_empty());
    assert!(!sample(&mut m, &me, Some(&x), true, t(3_000), &mut rng).is_empty());
    assert!(!sample(&mut m, &me, None, false, t(3_000), &mut rng).is_empty());
}

#[test]
fn fingerprints_agree_on_the_same_members_whatever_the_order() {
    let cfg = DetectorConfig::for_interval(Duration::from_secs(1));
    let mut a = table_of("a", cfg.clone());
    let mut b = table_of("b", cfg);
    a.observe(&rumor("b", 1, 0, Liveness::Alive), None, t(0));
    a.observe(&rumor("c", 7, 0, Liveness::Alive), None, t(0));
    b.observe(&rumor("c", 7, 0, Liveness::Alive), None, t(0));
    b.observe(&rumor("a", 1, 0, Liveness::Alive), None, t(0));
    assert_eq!(a.print.hash(), b.print.hash());
    b.observe(&rumor("c", 8, 0, Liveness::Alive), None, t(0));
    assert_ne!(
        a.print.hash(),
        b.print.hash(),
        "a restart changes the fingerprint"
    );
}

#[test]
fn an_overflowing_incarnation_is_not_refuted_and_does_not_panic() {
    let m = table();
    let forged = rumor("me", 1, u64::MAX, Liveness::Dead);
    assert_eq!(m.refutes(&forged, 0), None);
}

#[test]
fn dead_and_departed_members_stay_out_of_the_fingerprint() {
    let cfg = DetectorConfig::for_interval(Duration::from_secs(1));
    let mut a = table_of("a", cfg.clone());
    let mut b = table_of("b", cfg);
    a.observe(&rumor("b", 1, 0, Liveness::Alive), None, t(0));
    b.observe(&rumor("a", 1, 0, Liveness::Alive), None, t(0));
    assert_eq!(a.print.hash(), b.print.hash());
    // `a` knew `d` and `l` before one died and the other left; `b` never
    // heard of them (rumors of their end teach it nothing).
    a.observe(&rumor("d", 1, 0, Liveness::Alive), None, t(0));
    a.observe(&rumor("l", 1, 0, Liveness::Alive), None, t(0));
    assert_ne!(a.print.hash(), b.print.hash());
    a.observe(&rumor("d", 1, 0, Liveness::Dead), None, t(10));
    a.observe(&left("l", 1, 0), None, t(10));
    b.observe(&rumor("d", 1, 0, Liveness::Dead), None, t(10));
    assert_eq!(
        a.print.hash(),
        b.print.hash(),
        "the lists agree on the live members"
    );
    let mut rng = SmallRng::seed_from_u64(1);
    assert!(a
        .print
        .reconcile(&a.members, &b.print.buckets(), 10_000, &mut rng)
        .is_none());
    // A member that comes back counts again.
    a.observe(&rumor("d", 1, 1, Liveness::Alive), None, t(20));
    assert_ne!(a.print.hash(), b.print.hash());
}

#[test]
fn a_rumor_does_not_take_an_address_from_a_known_member() {
    let mut m = table();
    let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    m.observe(&rumor("y", 1, 0, Liveness::Alive), Some(addr), t(0));
    // A stale rumor puts `x` at the same address.
    m.observe(&rumor("x", 1, 0, Liveness::Alive), None, t(10));
    assert_eq!(m.id_at(addr), Some("y".into()));
    // `x` restarts elsewhere: `y` keeps its address.
    let elsewhere: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    m.observe(&rumor("x", 2, 0, Liveness::Alive), Some(elsewhere), t(20));
    assert_eq!(m.id_at(addr), Some("y".into()));
    assert_eq!(m.id_at(elsewhere), Some("x".into()));
    // Direct contact from a new node at `y`'s address: it is there now.
    m.observe(&rumor("z", 1, 0, Liveness::Alive), Some(addr), t(30));
    assert_eq!(m.id_at(addr), Some("z".into()));
}

#[test]
fn a_newer_suspicion_gets_the_whole_timeout() {
    let mut m = table();
    m.observe(&rumor("x", 1, 0, Liveness::Alive), None, t(0));
    m.observe(&rumor("x", 1, 0, Liveness::Suspect), None, t(0));
    // The refutation was missed; a new suspicion at the new incarnation
    // arrives just before the first would have turned into death.
    m.observe(&rumor("x", 1, 1, Liveness::Suspect), None, t(2_900));
    m.check(t(3_000));
    assert_eq!(state(&m, "x"), Some(MemberState::Suspect));
    m.check(t(5_900));
    assert_eq!(state(&m, "x"), Some(MemberState::Dead));
}

#[test]
fn leave_sticks_for_the_generation_and_a_restart_rejoins() {
    let mut m = table();
    m.observe(&rumor("x", 1, 5, Liveness::Alive), None, t(0));
    m.observe(&left("x", 1, 5), None, t(100));
    m.observe(&rumor("x", 1, 5, Liveness::Alive), None, t(200));
    assert_eq!(state(&m, "x"), Some(MemberState::Left));
    m.observe(&rumor("x", 2, 0, Liveness::Alive), None, t(300));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    assert_eq!(kinds(&mut m), vec!["joined", "left", "rejoined"]);
}

#[test]
fn a_clean_restart_in_the_same_generation_rejoins_above_its_last_incarnation() {
    let mut m = table();
    m.observe(&rumor("x", 1, 5, Liveness::Alive), None, t(0));
    m.observe(&left("x", 1, 5), None, t(100));
    let from = "127.0.0.1:9000".parse().unwrap();
    // Its earlier run's last incarnation, even heard directly, stays departed.
    m.observe(&rumor("x", 1, 5, Liveness::Alive), Some(from), t(200));
    assert_eq!(state(&m, "x"), Some(MemberState::Left));
    m.observe(&rumor("x", 1, 6, Liveness::Alive), Some(from), t(300));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    assert_eq!(kinds(&mut m), vec!["joined", "left", "rejoined"]);
}

#[test]
fn forgotten_members_are_not_revived_by_stale_gossip() {
    let mut cfg = DetectorConfig::for_interval(Duration::from_secs(1));
    cfg.forget_after = Duration::from_secs(10);
    let mut m = table_of("me", cfg);
    let before = m.print.hash();
    m.observe(&left("x", 1, 5), None, t(0));
    m.check(t(20_000));
    assert!(m.get(&"x".into()).is_none());
    assert_eq!(
        m.print.hash(),
        before,
        "a forgotten member leaves the fingerprint"
    );
    m.observe(&rumor("x", 1, 5, Liveness::Alive), None, t(20_100));
    assert!(m.get(&"x".into()).is_none());
    m.observe(&rumor("x", 1, 6, Liveness::Alive), None, t(20_200));
    assert_eq!(state(&m, "x"), Some(MemberState::Alive));
    m.observe(&rumor("me", 1, 6, Liveness::Alive), None, t(20_200));
    assert!(
        m.get(&"me".into()).is_none(),
        "the local node is never a member of its own table"
    );
}

#[test]
fn the_table_holds_at_most_max_members() {
    let mut m = table();
    for i in 0..MAX_MEMBERS + 10 {
        let mut s = Sender::new(
            format!("n{i}"),
            1,
            Some(SocketAddr::from((
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                7946,
            ))),
        );
        s.incarnation = 0;
        m.observe(&s, None, t(0));
    }
    assert_eq!(m.members.len(), MAX_MEMBERS);
    let (members, _, by_addr) = m.sizes();
    assert_eq!(members, MAX_MEMBERS);
    assert!(by_addr <= MAX_MEMBERS);
}
