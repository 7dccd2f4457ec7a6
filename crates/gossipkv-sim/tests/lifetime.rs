//! Keys that expire and keys that die with their owner, in virtual time:
//! expiry under clock skew and loss, a crashed owner, a false suspicion, a
//! partition where each side sees the other dead, a restart, a leave.

use gossipkv_sim::{seed, DatagramKind, SeedGuard, Sim, SimConfig};
use gossipkv_storage::{Lifetime, Origin};

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;

/// A cluster of `nodes` once every node lists every node.
fn formed(cfg: SimConfig) -> Sim {
    let n = cfg.nodes;
    let mut sim = Sim::new(SimConfig {
        seeds_per_node: 2,
        ..cfg
    });
    sim.run_until(MIN, SEC, |s| (0..n).all(|i| s.members(i).len() == n))
        .expect("cluster forms");
    sim
}

fn all(sim: &Sim) -> Vec<usize> {
    (0..sim.len()).collect()
}

fn others(sim: &Sim, but: usize) -> Vec<usize> {
    (0..sim.len()).filter(|&i| i != but).collect()
}

/// Node `i`'s current origin (id and generation), read from its store.
fn origin_of(sim: &Sim, i: usize) -> Origin {
    sim.store(i).local_origin().clone()
}

/// Writes an ephemeral key `svc/<i>` on node `i` and waits until every node
/// shows it.
fn register(sim: &mut Sim, i: usize) -> String {
    let key = format!("svc/{i}");
    sim.set_with(i, &key, b"up", Lifetime::FOREVER.owned());
    let nodes = all(sim);
    sim.run_until(10 * SEC, 10, |s| s.all_show(&nodes, &key, Some(b"up")))
        .expect("every node shows the registration");
    key
}

/// SWIM's completeness bound at the default detector (see the membership
/// scenarios): the crashed member is probed within `2 * members - 1`
/// rounds, then doubted, suspected, declared dead, and the death spreads.
fn detection_bound_ms(members: u64) -> u64 {
    (2 * members - 1 + 7) * SEC + SEC / 2
}

#[test]
fn ttl_keys_expire_at_their_time_on_every_node_under_skew_and_loss() {
    let seed = seed(61);
    let _g = SeedGuard::new(
        "ttl_keys_expire_at_their_time_on_every_node_under_skew_and_loss",
        seed,
    );
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        ..SimConfig::default()
    });
    let skews = [0i64, 150, -150, 40, -300];
    for (i, &s) in skews.iter().enumerate() {
        sim.set_clock_skew(i, s);
    }
    sim.set_loss(0.1);
    let expires = sim.wall_ms(0) + 10 * SEC;
    sim.set_with(0, "ttl/k", b"v", Lifetime::expiring(expires));
    let nodes = all(&sim);
    sim.run_until(8 * SEC, 10, |s| s.all_show(&nodes, "ttl/k", Some(b"v")))
        .expect("every node has the key before it expires");
    let pushes_before = sim.net_stats().kind(DatagramKind::Push).sent;
    // Step through the expiry: note when each node swept the value (its
    // record became a tombstone).
    let mut swept = [None; 5];
    while swept.iter().any(Option::is_none) && sim.elapsed_ms() < expires + MIN {
        sim.run_for(1);
        for (i, at) in swept.iter_mut().enumerate() {
            if at.is_none() && sim.store(i).get("ttl/k").is_none() {
                *at = Some(sim.wall_ms(i));
            }
        }
    }
    for (i, at) in swept.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("node {i} never expired the key"));
        // On each node's own clock, at the expiry (to the millisecond step):
        // nodes differ by their clocks' skew, and by nothing else.
        assert!(
            (expires..=expires + 1).contains(&at),
            "node {i} expired it at {at} on its clock, expiry {expires}"
        );
        assert_eq!(sim.stats(i).values_expired, 1, "node {i}");
    }
    // No datagram of its own: no node pushed anything for the expiry.
    assert_eq!(
        sim.net_stats().kind(DatagramKind::Push).sent,
        pushes_before,
        "expiry sent pushes"
    );
    sim.set_loss(0.0);
    sim.run_for(5 * SEC);
    assert!(sim.converged(), "replicas hold the same tombstone");
    let r = sim.store(3).get_record("ttl/k").unwrap();
    assert!(r.is_tombstone());
}

#[test]
fn a_crashed_owners_keys_vanish_everywhere_within_failure_detection() {
    let seed = seed(62);
    let _g = SeedGuard::new(
        "a_crashed_owners_keys_vanish_everywhere_within_failure_detection",
        seed,
    );
    let mut sim = formed(SimConfig {
        seed,
        nodes: 8,
        ephemeral_grace_ms: 20 * SEC,
        ..SimConfig::default()
    });
    let key = register(&mut sim, 3);
    sim.set(3, "plain/3", b"kept");
    let owner = origin_of(&sim, 3);
    let rest = others(&sim, 3);
    sim.run_until(5 * SEC, 10, |s| s.all_show(&rest, "plain/3", Some(b"kept")))
        .expect("the plain key spreads");
    sim.crash(3);
    let bound = detection_bound_ms(8) + SEC;
    let took = sim
        .run_until(bound, 10, |s| s.all_show(&rest, &key, None))
        .unwrap_or_else(|| panic!("the key still shows somewhere after {bound} ms"));
    eprintln!("a crashed owner's key vanished everywhere after {took} ms (bound {bound} ms)");
    // Hidden, then removed for good after the grace; plain keys stay.
    sim.run_for(25 * SEC);
    for &i in &rest {
        assert_eq!(sim.store(i).owned_len(&owner), 0, "node {i} still holds it");
        assert!(sim.store(i).get_record(&key).unwrap().is_tombstone());
        assert_eq!(sim.shown(i, "plain/3").as_deref(), Some(&b"kept"[..]));
        assert!(sim.stats(i).owned_removed >= 1);
    }
    assert!(sim.converged_among(&rest));
}

#[test]
fn a_falsely_suspected_owner_gets_its_keys_back() {
    let seed = seed(63);
    let _g = SeedGuard::new("a_falsely_suspected_owner_gets_its_keys_back", seed);
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        ephemeral_grace_ms: 60 * SEC,
        ..SimConfig::default()
    });
    let key = register(&mut sim, 2);
    let rest = others(&sim, 2);
    sim.isolate(2);
    sim.run_until(30 * SEC, 10, |s| s.all_show(&rest, &key, None))
        .expect("the cut-off owner is taken for dead and its key hidden");
    // Within the grace: nothing was removed, only hidden.
    sim.heal();
    let took = sim
        .run_until(20 * SEC, 10, |s| s.all_show(&rest, &key, Some(b"up")))
        .expect("the key shows again once the owner refutes");
    eprintln!("back {took} ms after the heal");
    // Shown again by each node (the owner also writes them again when it
    // refutes its death, not knowing whether anyone removed them; those
    // writes are of its own origin, hidden until shown too).
    for &i in &rest {
        assert!(sim.stats(i).owned_shown >= 1, "node {i}");
        assert_eq!(
            sim.stats(i).owned_removed,
            0,
            "node {i} removed within the grace"
        );
    }
}

#[test]
fn an_owner_dead_past_the_grace_writes_its_keys_again_when_it_returns() {
    let seed = seed(64);
    let _g = SeedGuard::new(
        "an_owner_dead_past_the_grace_writes_its_keys_again_when_it_returns",
        seed,
    );
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        ephemeral_grace_ms: 5 * SEC,
        ..SimConfig::default()
    });
    let key = register(&mut sim, 2);
    let owner = origin_of(&sim, 2);
    let rest = others(&sim, 2);
    sim.isolate(2);
    sim.run_until(MIN, 100, |s| {
        rest.iter().all(|&i| s.store(i).owned_len(&owner) == 0)
    })
    .expect("removed for good after the grace");
    sim.heal();
    let took = sim
        .run_until(30 * SEC, 10, |s| {
            s.all_show(&[0, 1, 2, 3, 4], &key, Some(b"up"))
        })
        .expect("the owner writes its key again and it wins over the removals");
    eprintln!("written again and shown everywhere {took} ms after the heal");
    assert!(sim.stats(2).owned_rewritten >= 1);
    sim.run_for(5 * SEC);
    assert!(sim.converged());
}

#[test]
fn a_partition_where_each_side_sees_the_other_dead_heals_with_every_key_back() {
    let seed = seed(65);
    let _g = SeedGuard::new(
        "a_partition_where_each_side_sees_the_other_dead_heals_with_every_key_back",
        seed,
    );
    let mut sim = formed(SimConfig {
        seed,
        nodes: 6,
        ephemeral_grace_ms: 10 * SEC,
        ..SimConfig::default()
    });
    let keys: Vec<String> = (0..6).map(|i| register(&mut sim, i)).collect();
    sim.partition(&[&[0, 1, 2], &[3, 4, 5]]);
    sim.run_for(40 * SEC);
    // Each side hides, then removes, the other side's keys; keeps its own.
    for i in 0..6 {
        for (j, key) in keys.iter().enumerate() {
            let same_side = (i < 3) == (j < 3);
            let want: Option<&[u8]> = same_side.then_some(b"up");
            assert_eq!(sim.shown(i, key).as_deref(), want, "node {i}, key {key}");
        }
    }
    sim.heal();
    let took = sim
        .run_until(MIN, 100, |s| {
            keys.iter()
                .all(|k| s.all_show(&[0, 1, 2, 3, 4, 5], k, Some(b"up")))
        })
        .expect("every key shows everywhere again");
    eprintln!("every registration back {took} ms after the heal");
    sim.run_for(5 * SEC);
    assert!(sim.converged());
}

#[test]
fn a_restart_as_a_new_generation_removes_the_old_generations_keys() {
    let seed = seed(66);
    let _g = SeedGuard::new(
        "a_restart_as_a_new_generation_removes_the_old_generations_keys",
        seed,
    );
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        ..SimConfig::default()
    });
    let key = register(&mut sim, 2);
    let old = origin_of(&sim, 2);
    let rest = others(&sim, 2);
    sim.restart(2);
    // Long before failure detection could declare it dead: the new
    // generation is news enough.
    let took = sim
        .run_until(6 * SEC, 10, |s| {
            rest.iter()
                .all(|&i| s.shown(i, &key).is_none() && s.store(i).owned_len(&old) == 0)
        })
        .expect("the old generation's key is removed once the new one is heard");
    eprintln!("old generation's key gone {took} ms after the restart");
}

#[test]
fn a_graceful_leave_deletes_the_owners_keys_at_once() {
    let seed = seed(67);
    let _g = SeedGuard::new("a_graceful_leave_deletes_the_owners_keys_at_once", seed);
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        ..SimConfig::default()
    });
    let key = register(&mut sim, 4);
    let rest = others(&sim, 4);
    sim.leave(4);
    let took = sim
        .run_until(3 * SEC, 10, |s| s.all_show(&rest, &key, None))
        .expect("the departed owner's key is gone within a few rounds");
    eprintln!("gone {took} ms after the leave");
    for &i in &rest {
        let r = sim.store(i).get_record(&key).unwrap();
        assert!(r.is_tombstone(), "node {i}: a replicated delete");
    }
}

#[test]
fn retired_generations_leave_every_digest_and_nothing_comes_back() {
    let seed = seed(68);
    let _g = SeedGuard::new(
        "retired_generations_leave_every_digest_and_nothing_comes_back",
        seed,
    );
    let retention = 10 * SEC;
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        tombstone_retention_ms: retention,
        ..SimConfig::default()
    });
    sim.set_loss(0.05);
    let nodes = all(&sim);
    let mut gone = Vec::new();
    // Node 2 restarts three times; each generation registers itself,
    // writes a key that node 0 overwrites later, and one that nobody
    // overwrites (the next generation adopts it).
    for round in 0..3 {
        register(&mut sim, 2);
        sim.set(2, &format!("own/{round}"), b"kept");
        let key = format!("cfg/{round}");
        sim.set(2, &key, b"from-2");
        sim.run_until(10 * SEC, 10, |s| s.all_show(&nodes, &key, Some(b"from-2")))
            .expect("every node has node 2's write");
        sim.set(0, &key, b"from-0");
        sim.run_until(10 * SEC, 10, |s| s.all_show(&nodes, &key, Some(b"from-0")))
            .expect("every node has the overwrite");
        gone.push(origin_of(&sim, 2));
        sim.restart(2);
        sim.run_until(MIN, 10, |s| s.members(2).len() == nodes.len())
            .expect("the new generation joins");
    }
    // Node 4 registers, writes, then leaves for good.
    register(&mut sim, 4);
    sim.set(4, "cfg/4", b"from-4");
    sim.run_until(10 * SEC, 10, |s| {
        s.all_show(&nodes, "cfg/4", Some(b"from-4"))
    })
    .expect("every node has node 4's write");
    sim.delete(1, "cfg/4");
    let rest = others(&sim, 4);
    sim.run_until(10 * SEC, 10, |s| s.all_show(&rest, "cfg/4", None))
        .expect("every node has the delete");
    gone.push(origin_of(&sim, 4));
    sim.leave(4);
    let left_at = sim.elapsed_ms();
    // Their tombstones are collected after the retention; then each node
    // retires them, lists them as retired, and leaves them out once every
    // live member does.
    let took = sim
        .run_until(retention + 2 * MIN, 100, |s| {
            s.digest_entries_of(&rest, &gone) == 0
                && rest.iter().all(|&i| {
                    let store = s.store(i);
                    // Retired, or never known (node 2's last generation
                    // started after some of them were gone).
                    gone.iter()
                        .all(|o| store.is_retired(o) || store.watermark(o) == 0)
                })
        })
        .expect("retired origins leave every digest");
    eprintln!(
        "retired origins out of every digest {took} ms after the leave ({} ms retention)",
        retention
    );
    // They stay out (no flapping), and nothing they wrote comes back.
    sim.set_loss(0.0);
    sim.run_for(20 * SEC);
    assert_eq!(sim.digest_entries_of(&rest, &gone), 0);
    for &i in &rest {
        for round in 0..3 {
            let key = format!("cfg/{round}");
            assert_eq!(
                sim.shown(i, &key).as_deref(),
                Some(&b"from-0"[..]),
                "node {i} {key}"
            );
        }
        for round in 0..3 {
            // Kept, now as a write of node 2's running generation.
            let key = format!("own/{round}");
            assert_eq!(
                sim.shown(i, &key).as_deref(),
                Some(&b"kept"[..]),
                "node {i} {key}"
            );
            let r = sim.store(i).get_record(&key).unwrap();
            assert_eq!(r.version.origin(), origin_of(&sim, 2), "node {i} {key}");
        }
        assert_eq!(sim.shown(i, "cfg/4"), None, "node {i}");
        assert_eq!(sim.shown(i, "svc/2"), None, "node {i}");
        assert_eq!(sim.shown(i, "svc/4"), None, "node {i}");
        // Nodes that ran throughout knew them all, and retired each.
        let known = if i == 2 { 1 } else { gone.len() as u64 };
        let stats = sim.stats(i);
        if i == 2 {
            assert!(stats.records_adopted >= 3, "{stats:?}");
        }
        assert!(stats.origins_retired >= known, "node {i}: {stats:?}");
        assert!(stats.origins_silenced >= known, "node {i}: {stats:?}");
    }
    assert!(sim.converged(), "replicas hold the same records");
    assert!(sim.watermarks_converged(), "and vouch for the same writes");
    assert!(sim.elapsed_ms() - left_at < retention + 3 * MIN);
}

#[test]
fn a_member_that_crashed_for_good_retires_once_forgotten() {
    let seed = seed(69);
    let _g = SeedGuard::new(
        "a_member_that_crashed_for_good_retires_once_forgotten",
        seed,
    );
    let retention = 10 * SEC;
    let mut detector =
        gossipkv_core::DetectorConfig::for_interval(std::time::Duration::from_secs(1));
    detector.forget_after = std::time::Duration::from_secs(20);
    let mut sim = formed(SimConfig {
        seed,
        nodes: 5,
        tombstone_retention_ms: retention,
        detector: Some(detector),
        ..SimConfig::default()
    });
    let nodes = all(&sim);
    register(&mut sim, 4);
    sim.set(4, "cfg/4", b"from-4");
    sim.run_until(10 * SEC, 10, |s| {
        s.all_show(&nodes, "cfg/4", Some(b"from-4"))
    })
    .expect("every node has node 4's write");
    sim.set(0, "cfg/4", b"from-0");
    sim.run_until(10 * SEC, 10, |s| {
        s.all_show(&nodes, "cfg/4", Some(b"from-0"))
    })
    .expect("every node has the overwrite");
    let gone = vec![origin_of(&sim, 4)];
    sim.crash(4);
    let rest = others(&sim, 4);
    // Dead after failure detection, forgotten 20 s later; by then its
    // ephemeral key's tombstone is past the retention.
    let took = sim
        .run_until(2 * MIN, 100, |s| {
            s.digest_entries_of(&rest, &gone) == 0
                && rest.iter().all(|&i| s.store(i).is_retired(&gone[0]))
        })
        .expect("a crashed, forgotten member's origin retires");
    eprintln!("retired {took} ms after the crash");
    assert!(
        took >= 20 * SEC,
        "not before the member is forgotten: {took} ms"
    );
    for &i in &rest {
        assert_eq!(sim.shown(i, "svc/4"), None, "node {i}");
        assert_eq!(
            sim.shown(i, "cfg/4").as_deref(),
            Some(&b"from-0"[..]),
            "node {i}"
        );
    }
    assert!(sim.converged());
}
