//! Simulator scenarios of the bulk path: nodes far behind a peer catch up
//! over streams, under datagram loss and with connections cut mid-stream.
//! Every scenario prints its seed when it fails (replay with
//! GOSSIPKV_SIM_SEED).

use gossipkv_core::Stats;
use gossipkv_sim::{seed, SeedGuard, Sim, SimConfig};

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;

/// Writes `n` keys `{prefix}-{k}` spread over `writers`, then deletes every
/// tenth of them (on the node that wrote it).
fn write_keys(sim: &mut Sim, writers: &[usize], prefix: &str, n: usize) {
    for k in 0..n {
        let w = writers[k % writers.len()];
        sim.set(
            w,
            &format!("{prefix}-{k}"),
            format!("value {prefix} {k}").as_bytes(),
        );
    }
    for k in (0..n).step_by(10) {
        let w = writers[k % writers.len()];
        sim.delete(w, &format!("{prefix}-{k}"));
    }
}

/// The counters of every running node, added up.
fn total(sim: &Sim, f: impl Fn(&Stats) -> u64) -> u64 {
    (0..sim.len()).map(|i| f(&sim.stats(i))).sum()
}

/// One line on the streams of a run, for the test log.
fn report(name: &str, sim: &Sim) {
    let n = sim.net_stats();
    eprintln!(
        "{name}: {} ms; streams: {} opened, {} finished, {} cut, {} refused, {} unreachable; \
         {} frames, {} bytes (largest frame {}); nodes: {} completed, {} cut, {} served, \
         {} served cut, {} records sent; datagrams: {} sent, {} bytes",
        sim.elapsed_ms(),
        n.streams_opened,
        n.streams_finished,
        n.streams_cut,
        n.streams_refused,
        n.streams_unreachable,
        n.stream_frames,
        n.stream_bytes,
        n.stream_largest_frame,
        total(sim, |s| s.streams_completed),
        total(sim, |s| s.streams_cut),
        total(sim, |s| s.streams_served),
        total(sim, |s| s.streams_served_cut),
        total(sim, |s| s.stream_records_sent),
        n.sent,
        n.bytes,
    );
}

/// A cluster of `nodes` where the last node is down from the start (it
/// joins later with [`Sim::restart`]).
fn cluster(cfg: SimConfig) -> Sim {
    let mut sim = Sim::new(cfg);
    let last = sim.len() - 1;
    sim.crash(last);
    sim
}

/// Four nodes hold 3,000 keys (300 deleted); a fifth is about to join.
fn before_join(seed: u64, streams: bool) -> Sim {
    let mut sim = cluster(SimConfig {
        seed,
        nodes: 5,
        loss: 0.15,
        streams,
        ..SimConfig::default()
    });
    write_keys(&mut sim, &[0, 1, 2, 3], "k", 3_000);
    sim.run_until(5 * MIN, SEC, |s| s.converged())
        .expect("the first four converge");
    sim.restart(4);
    sim
}

#[test]
fn a_joiner_catches_up_over_streams_much_faster_under_loss() {
    let seed = seed(1);
    let _g = SeedGuard::new(
        "a_joiner_catches_up_over_streams_much_faster_under_loss",
        seed,
    );
    let mut sim = before_join(seed, true);
    let with = sim
        .run_until(MIN, 100, |s| s.converged())
        .expect("the joiner converges");
    assert!(
        total(&sim, |s| s.streams_completed) > 0,
        "streams were used"
    );
    let j = sim.stats(4);
    assert!(
        j.stream_frames_received > 0,
        "the joiner streamed: {} asked, {} completed, {} cut, {} frames; open {:?}",
        j.streams_requested,
        j.streams_completed,
        j.streams_cut,
        j.stream_frames_received,
        sim.stream_pairs()
    );
    assert_eq!(sim.net_stats().streams_stalled, 0);
    assert_eq!(sim.contents(4).len(), 2_700);
    for k in (0..3_000).step_by(10) {
        assert!(sim.all_have(&format!("k-{k}"), None), "k-{k} resurrected");
    }
    // The same run without streams is still not done after five times as
    // long (it takes minutes: one packet per exchange).
    let mut plain = before_join(seed, false);
    let bound = 5 * with;
    let without = plain.run_until(bound, 100, |s| s.converged());
    assert_eq!(total(&plain, |s| s.streams_requested), 0);
    assert_eq!(without, None, "datagrams alone converged within {bound} ms");
    eprintln!("join: {with} ms with streams; without, not done after {bound} ms");
    report("join", &sim);
}

#[test]
fn a_restarted_node_catches_up_over_streams_cut_at_random_and_by_a_crash() {
    let seed = seed(2);
    let _g = SeedGuard::new(
        "a_restarted_node_catches_up_over_streams_cut_at_random_and_by_a_crash",
        seed,
    );
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 5,
        loss: 0.15,
        streams: true,
        stream_cut: 0.1,
        // Small frames: a catch-up takes dozens of them, so cuts happen.
        stream_frame_size: 4 << 10,
        ..SimConfig::default()
    });
    write_keys(&mut sim, &[0, 1, 3, 4], "k", 3_000);
    sim.run_until(5 * MIN, SEC, |s| s.converged())
        .expect("the cluster converges");
    sim.crash(2);
    write_keys(&mut sim, &[0, 4], "while-down", 200);
    sim.run_for(10 * SEC);
    sim.restart(2);
    assert!(sim.contents(2).is_empty());
    sim.set(2, "after-restart", b"3");

    // The node the restarted one streams from crashes mid-stream, and
    // comes back later (empty, in a new generation) itself.
    let pair = sim.run_until(10 * SEC, 1, |s| {
        s.stream_pairs().iter().any(|&(c, _)| c == 2)
    });
    assert!(pair.is_some(), "the restarted node asked for a stream");
    let server = sim
        .stream_pairs()
        .into_iter()
        .find(|&(c, _)| c == 2)
        .map(|(_, s)| s)
        .expect("a stream of node 2");
    let cut_before = sim.net_stats().streams_cut;
    sim.crash(server);
    assert!(
        sim.net_stats().streams_cut > cut_before,
        "the crash cut the stream"
    );
    assert!(sim
        .stream_pairs()
        .iter()
        .all(|&(c, s)| c != server && s != server));
    sim.run_for(5 * SEC);
    sim.restart(server);

    sim.run_until(2 * MIN, 100, |s| s.converged())
        .expect("converges after the restarts");
    report("restart", &sim);
    assert!(sim.all_have("after-restart", Some(b"3")));
    assert!(sim.all_have("while-down-199", Some(b"value while-down 199")));
    assert!(sim.all_have("k-10", None));
    assert_eq!(sim.contents(2).len(), 2_700 + 180 + 1);
    assert!(
        total(&sim, |s| s.streams_completed) > 0,
        "streams were used"
    );
    assert!(total(&sim, |s| s.streams_cut) > 0, "streams were cut");
    assert_eq!(sim.net_stats().streams_stalled, 0);
    assert_eq!(sim.net_stats().streams_rejected, 0);
}

#[test]
fn a_healed_partition_converges_over_streams_cut_at_random_and_by_the_network() {
    let seed = seed(3);
    let _g = SeedGuard::new(
        "a_healed_partition_converges_over_streams_cut_at_random_and_by_the_network",
        seed,
    );
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 6,
        loss: 0.1,
        streams: true,
        stream_cut: 0.2,
        stream_frame_size: 4 << 10,
        seeds_per_node: 2,
        ..SimConfig::default()
    });
    sim.run_for(5 * SEC);
    let (left, right): (Vec<usize>, Vec<usize>) = ((0..3).collect(), (3..6).collect());
    sim.partition(&[&left, &right]);
    write_keys(&mut sim, &left, "left", 2_000);
    write_keys(&mut sim, &right, "right", 2_000);
    // Conflicting writes of the same keys on both sides.
    for k in 0..100 {
        sim.set(1, &format!("both-{k}"), b"from-left");
        sim.set(4, &format!("both-{k}"), b"from-right");
    }
    sim.run_until(5 * MIN, SEC, |s| {
        s.converged_among(&[0, 1, 2]) && s.converged_among(&[3, 4, 5])
    })
    .expect("each half converges");
    assert!(
        !sim.contents(0).contains_key("right-1"),
        "the partition held"
    );

    // The network splits again while streams run, then heals for good.
    // (A stream within one half, from a node that already holds some of
    // the other half's writes, is not cut by the partition.)
    let across = |s: &Sim| {
        s.stream_pairs()
            .iter()
            .any(|&(c, srv)| left.contains(&c) != left.contains(&srv))
    };
    sim.heal();
    sim.run_until(MIN, 1, |s| across(s))
        .expect("streams across the halves after the heal");
    let cut_before = sim.net_stats().streams_cut;
    sim.partition(&[&left, &right]);
    assert!(
        sim.net_stats().streams_cut > cut_before,
        "the partition cut streams"
    );
    assert!(!across(&sim), "no stream crosses the partition");
    sim.run_for(2 * SEC);
    sim.heal();

    sim.run_until(2 * MIN, 100, |s| s.converged())
        .expect("the halves converge after the partition heals");
    report("heal", &sim);
    assert_eq!(sim.contents(5).len(), 2 * 1_800 + 100);
    assert!(sim.all_have("left-10", None));
    assert!(sim.all_have("right-1", Some(b"value right 1")));
    let winner = sim.store(0).get("both-3");
    assert!(sim.all_have("both-3", winner.as_deref()));
    assert!(
        total(&sim, |s| s.streams_completed) > 0,
        "streams were used"
    );
    assert!(total(&sim, |s| s.streams_cut) > 0, "streams were cut");
    assert_eq!(sim.net_stats().streams_stalled, 0);
    assert_eq!(sim.net_stats().streams_rejected, 0);
}

#[test]
fn a_joiner_refused_every_stream_converges_by_datagrams() {
    let seed = seed(4);
    let _g = SeedGuard::new("a_joiner_refused_every_stream_converges_by_datagrams", seed);
    let mut sim = cluster(SimConfig {
        seed,
        nodes: 5,
        loss: 0.15,
        streams: true,
        max_serving_streams: 0,
        ..SimConfig::default()
    });
    write_keys(&mut sim, &[0, 1, 2, 3], "k", 400);
    sim.run_until(5 * MIN, SEC, |s| s.converged())
        .expect("the first four converge");
    sim.restart(4);
    sim.run_until(5 * MIN, 100, |s| s.converged())
        .expect("the joiner converges by datagrams");
    report("refused", &sim);
    assert_eq!(sim.contents(4).len(), 360);
    assert!(sim.all_have("k-10", None));
    assert!(
        total(&sim, |s| s.streams_requested) > 0,
        "streams were asked for"
    );
    assert!(
        total(&sim, |s| s.streams_refused) > 0,
        "streams were refused"
    );
    assert_eq!(total(&sim, |s| s.streams_completed), 0);
    assert_eq!(total(&sim, |s| s.stream_frames_received), 0);
    assert!(sim.net_stats().streams_refused > 0);
}

/// Five nodes hold 2,000 keys; node 4 is cut off longer than tombstones are
/// kept while half the keys are deleted (their tombstones then collected)
/// and 500 written. The streams it asks for on its return are
/// re-synchronisation pages; returns the sim once its records converged.
fn away_longer_than_retention(seed: u64, stream_cut: f64) -> Sim {
    let retention = MIN;
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes: 5,
        loss: 0.15,
        streams: true,
        stream_cut,
        stream_frame_size: 8 << 10,
        tombstone_retention_ms: retention,
        ..SimConfig::default()
    });
    for k in 0..2_000 {
        sim.set(k % 4, &format!("key-{k}"), b"v");
    }
    sim.run_until(5 * MIN, SEC, |s| s.converged())
        .expect("initial convergence");
    sim.isolate(4);
    for k in 0..1_000 {
        sim.delete(k % 4, &format!("key-{k}"));
    }
    for k in 0..500 {
        sim.set(k % 4, &format!("new-{k}"), b"n");
    }
    sim.set(4, "written-while-away", b"w");
    sim.run_for(retention + 2 * MIN);
    let collected = total(&sim, |s| s.tombstones_collected);
    assert!(
        collected >= 1_000,
        "tombstones were collected ({collected})"
    );
    sim.heal();
    sim.run_until(5 * MIN, 100, |s| s.converged())
        .expect("the returning node converges");
    sim
}

#[test]
fn a_node_away_longer_than_tombstone_retention_resyncs_over_cut_streams() {
    let seed = seed(5);
    let _g = SeedGuard::new(
        "a_node_away_longer_than_tombstone_retention_resyncs_over_cut_streams",
        seed,
    );
    let mut sim = away_longer_than_retention(seed, 0.05);
    report("away", &sim);
    for k in 0..1_000 {
        assert!(
            sim.all_have(&format!("key-{k}"), None),
            "key-{k} resurrected"
        );
    }
    assert!(sim.all_have("key-1000", Some(b"v")));
    assert!(sim.all_have("new-499", Some(b"n")));
    assert!(sim.all_have("written-while-away", Some(b"w")));
    assert!(sim.stats(4).stream_frames_received > 0, "streams were used");
    sim.run_until(2 * MIN, 100, |s| s.watermarks_converged())
        .expect("the returning node's watermarks are raised");
    assert!(sim.stats(4).resyncs_completed >= 1);
    assert_eq!(sim.net_stats().streams_stalled, 0);
    assert_eq!(sim.net_stats().streams_rejected, 0);
}

/// The re-synchronisation a stream's pages carry completes with them: the
/// returning node's watermarks catch up with its records, and it does not
/// ask for the whole store again. (Before streamed pages took the pass
/// over, and datagram pages were kept from restarting it mid-stream, seeds
/// 4, 10, 16 and 20 of 1..=20 lagged up to 10 s and asked for 15 more
/// streams.)
#[test]
fn a_resync_over_streams_raises_watermarks_with_the_records() {
    let seed = seed(2);
    let _g = SeedGuard::new(
        "a_resync_over_streams_raises_watermarks_with_the_records",
        seed,
    );
    let mut sim = away_longer_than_retention(seed, 0.0);
    let streams = sim.stats(4).streams_requested;
    let lag = sim
        .run_until(MIN, 100, |s| s.watermarks_converged())
        .expect("watermarks converge");
    let more = sim.stats(4).streams_requested - streams;
    eprintln!("watermarks {lag} ms after the records; {more} more streams asked for");
    assert!(
        lag <= 2 * SEC && more <= 2,
        "lag {lag} ms, {more} more streams"
    );
}
