//! Dissemination at scale: one fresh write in a formed cluster, with eager
//! push off (anti-entropy only) and on, against the push-pull yardstick
//! log3(N) + ln ln N rounds. The release-mode runs at 1,000 and 10,000 nodes
//! are `cargo xtask sim`.

use gossipkv_sim::scale::{rounds_to_converge, yardstick, ScaleOptions};
use gossipkv_sim::{seed, SeedGuard, SimConfig};

/// Cluster size. The protocol's per-datagram cost grows with the membership
/// (every datagram samples it), so a debug build simulates N nodes in about
/// N² time: CI (debug) runs 100 nodes; release builds run 1,000.
fn nodes() -> usize {
    std::env::var("GOSSIPKV_SIM_SCALE_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) { 100 } else { 1_000 })
}

#[test]
fn a_fresh_write_reaches_every_node_within_the_push_pull_yardstick() {
    let seed = seed(1);
    let _g = SeedGuard::new(
        "a_fresh_write_reaches_every_node_within_the_push_pull_yardstick",
        seed,
    );
    let n = nodes();
    let opts = ScaleOptions {
        max_membership_rounds: 60,
        max_rounds: 60,
        idle_rounds: 2,
        ..ScaleOptions::default()
    };
    let cfg = SimConfig {
        seed,
        nodes: n,
        seeds_per_node: 4,
        ..SimConfig::default()
    };
    let pull = rounds_to_converge(
        SimConfig {
            push: false,
            ..cfg.clone()
        },
        &opts,
    );
    let push = rounds_to_converge(SimConfig { push: true, ..cfg }, &opts);
    eprintln!("{pull:#?}\n{push:#?}");
    assert!(
        pull.membership_rounds.is_some(),
        "membership formed: {pull:?}"
    );
    let pull_rounds = pull.rounds.expect("anti-entropy alone reaches every node");
    let push_rounds = push.rounds.expect("push reaches every node");
    let bound = yardstick(n);
    assert!(
        pull_rounds <= bound,
        "anti-entropy alone took {pull_rounds:.2} rounds for {n} nodes (yardstick {bound:.2})"
    );
    assert!(
        push_rounds < pull_rounds,
        "push ({push_rounds:.2} rounds) is faster than anti-entropy alone ({pull_rounds:.2})"
    );
}
