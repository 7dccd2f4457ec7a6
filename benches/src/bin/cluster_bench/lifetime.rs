//! The `lifetime` scenario: keys with a time to live and ephemeral keys,
//! measured in the deterministic simulator (virtual time, one-second gossip
//! interval, as the targets are stated), so each figure is exact for its
//! seed and twin runs differ only in what is measured.
//!
//! - `ttl_expiry_late_ms_max`: over the nodes of a 5-node cluster whose
//!   clocks are skewed by up to [`SKEW_MS`] and that lose 10% of datagrams,
//!   the largest gap between a TTL key's expiry and the moment the node
//!   expired it, on that node's own clock (1 ms steps). Across nodes the
//!   moments then differ by their clocks' skew and nothing else;
//!   `ttl_expiry_skew_bound_ms` is the skew of that run.
//! - `ttl_expiry_extra_datagrams`: datagrams sent from a second before the
//!   expiry to five after it, less those of a twin run (same seed) whose key
//!   has no expiry. 0 means the expiry sent nothing of its own.
//! - `ttl_gossip_bytes_per_key_s`: bytes sent over a minute by a cluster
//!   holding 100 keys with a (long) time to live, less those of a twin
//!   holding the same keys without one, per key and second.
//! - `ephemeral_hidden_ms_p50` / `_max`: over [`SEEDS`] seeds, from the
//!   crash of the owner of an ephemeral key until no node of a 10-node
//!   cluster shows it; `ephemeral_detection_ms_max`: until every node
//!   lists the owner dead; `ephemeral_hidden_after_detection_ms_max`: the
//!   largest gap between the two (the target: one interval).
//! - `retired_origin_digest_entries`: in a 10-node cluster (tombstone
//!   retention [`RETENTION_MS`]) where one node restarts three times as a
//!   new generation and another leaves, each generation having registered
//!   an ephemeral key and written a key that another node overwrote (the
//!   restarted generations also a key nobody overwrote, which the next
//!   generation adopts): the
//!   digest entries of those four gone generations, summed over every
//!   running node, once [`RETIRE_GRACE_MS`] has passed after the last
//!   tombstone could be collected. `origins_retired_ms`: from the leave
//!   until no digest lists them (the retention, then a few collection
//!   passes).

use std::time::Instant;

use anyhow::{bail, Result};
use gossipkv_core::MemberState;
use gossipkv_sim::{Sim, SimConfig};
use gossipkv_storage::Lifetime;

use crate::report::{progress, Report};

/// Largest clock skew of the expiry run, ms.
const SKEW_MS: i64 = 300;
/// Seeds of the crashed-owner runs.
const SEEDS: u64 = 20;
const SEC: u64 = 1_000;
/// Tombstone retention of the retirement run, ms.
const RETENTION_MS: u64 = 30 * SEC;
/// How long after the retention the retirement run waits, ms.
const RETIRE_GRACE_MS: u64 = 30 * SEC;

/// Runs the scenario and records its figures.
pub(crate) fn scenario(report: &mut Report, t0: Instant) -> Result<()> {
    let late = expiry_lateness()?;
    report.put("ttl_expiry_late_ms_max", late as f64);
    report.put("ttl_expiry_skew_bound_ms", SKEW_MS as f64);
    let extra = expiry_datagrams(true)? as f64 - expiry_datagrams(false)? as f64;
    report.put("ttl_expiry_extra_datagrams", extra);
    let per_key_s = (idle_bytes(true)? as f64 - idle_bytes(false)? as f64) / 100.0 / 60.0;
    report.put("ttl_gossip_bytes_per_key_s", per_key_s);
    progress(
        t0,
        format!(
            "lifetime: TTL expired at most {late} ms late on each node's clock (skew up to \
             {SKEW_MS} ms), {extra} extra datagrams, {per_key_s:.3} gossip bytes per TTL key per s"
        ),
    );
    let mut hidden = Vec::new();
    let mut gap_max = 0;
    let mut detection_max = 0;
    for seed in 1..=SEEDS {
        let (h, d) = crashed_owner(seed)?;
        hidden.push(h);
        detection_max = detection_max.max(d);
        gap_max = gap_max.max(h.saturating_sub(d));
    }
    hidden.sort_unstable();
    let p50 = hidden[hidden.len() / 2];
    let max = hidden[hidden.len() - 1];
    report.put("ephemeral_hidden_ms_p50", p50 as f64);
    report.put("ephemeral_hidden_ms_max", max as f64);
    report.put("ephemeral_detection_ms_max", detection_max as f64);
    report.put("ephemeral_hidden_after_detection_ms_max", gap_max as f64);
    progress(
        t0,
        format!(
            "lifetime: a crashed owner's key hidden on all 10 nodes after p50 {p50} ms, max \
             {max} ms ({SEEDS} seeds); at most {gap_max} ms after all saw it dead"
        ),
    );
    let (entries, took) = retired_origins()?;
    report.put("retired_origin_digest_entries", entries as f64);
    report.put("origins_retired_ms", took as f64);
    progress(
        t0,
        format!(
            "lifetime: {entries} digest entries of 4 gone generations on 9 nodes after the \
             grace; out of every digest {took} ms after the leave ({RETENTION_MS} ms retention)"
        ),
    );
    Ok(())
}

/// The retirement run: digest entries of gone generations after the grace,
/// and ms from the leave until there were none.
fn retired_origins() -> Result<(usize, u64)> {
    let mut sim = Sim::new(SimConfig {
        seed: 11,
        nodes: 10,
        seeds_per_node: 2,
        tombstone_retention_ms: RETENTION_MS,
        ..SimConfig::default()
    });
    let all: Vec<usize> = (0..10).collect();
    if sim
        .run_until(60 * SEC, SEC, |s| {
            all.iter().all(|&i| s.members(i).len() == 10)
        })
        .is_none()
    {
        bail!("the retirement run's cluster did not form");
    }
    let mut gone = Vec::new();
    let spread = |sim: &mut Sim, writer: usize, key: &str, value: &[u8], life| {
        sim.set_with(writer, key, value, life);
        sim.run_until(20 * SEC, 10, |s| s.all_show(&all, key, Some(value)))
            .is_some()
    };
    for round in 0..4 {
        // Node 9 three times (restarting), then node 8 (leaving).
        let node = if round < 3 { 9 } else { 8 };
        let key = format!("cfg/{round}");
        let ok = spread(
            &mut sim,
            node,
            &format!("svc/{node}"),
            b"up",
            Lifetime::FOREVER.owned(),
        ) && spread(&mut sim, node, &key, b"old", Lifetime::FOREVER)
            // A key nobody overwrites: the next generation adopts it.
            && (node == 8 || spread(&mut sim, node, &format!("own/{round}"), b"kept", Lifetime::FOREVER))
            && spread(&mut sim, 0, &key, b"new", Lifetime::FOREVER);
        if !ok {
            bail!("a write of the retirement run did not spread");
        }
        gone.push(sim.store(node).local_origin().clone());
        if round < 3 {
            sim.restart(node);
            if sim
                .run_until(60 * SEC, 100, |s| s.members(node).len() == 10)
                .is_none()
            {
                bail!("a restarted node did not rejoin");
            }
        } else {
            sim.leave(node);
        }
    }
    let rest: Vec<usize> = (0..10).filter(|&i| i != 8).collect();
    let listed = |s: &Sim| s.digest_entries_of(&rest, &gone);
    let limit = RETENTION_MS + RETIRE_GRACE_MS;
    let took = sim.run_until(limit, 100, |s| listed(s) == 0);
    sim.run_for(limit.saturating_sub(took.unwrap_or(limit)));
    Ok((listed(&sim), took.unwrap_or(u64::MAX)))
}

/// A formed cluster of `nodes` at a one-second interval.
fn formed(seed: u64, nodes: usize) -> Result<Sim> {
    let mut sim = Sim::new(SimConfig {
        seed,
        nodes,
        seeds_per_node: 2,
        ..SimConfig::default()
    });
    let formed = sim.run_until(60 * SEC, SEC, |s| {
        (0..nodes).all(|i| s.members(i).len() == nodes)
    });
    if formed.is_none() {
        bail!("a {nodes}-node cluster did not form (seed {seed})");
    }
    Ok(sim)
}

/// The expiry run: how late, at most, a node expired the key on its clock.
fn expiry_lateness() -> Result<u64> {
    let mut sim = formed(7, 5)?;
    for (i, s) in [0, SKEW_MS, -SKEW_MS, SKEW_MS / 3, -SKEW_MS / 2]
        .into_iter()
        .enumerate()
    {
        sim.set_clock_skew(i, s);
    }
    sim.set_loss(0.1);
    let expires = sim.wall_ms(0) + 10 * SEC;
    sim.set_with(0, "ttl/k", b"v", Lifetime::expiring(expires));
    let nodes: Vec<usize> = (0..5).collect();
    if sim
        .run_until(9 * SEC, 10, |s| s.all_show(&nodes, "ttl/k", Some(b"v")))
        .is_none()
    {
        bail!("the TTL key did not reach every node before its expiry");
    }
    let mut late = [None; 5];
    while late.iter().any(Option::is_none) && sim.wall_ms(0) < expires + 60 * SEC {
        sim.run_for(1);
        for (i, l) in late.iter_mut().enumerate() {
            if l.is_none() && sim.store(i).get("ttl/k").is_none() {
                *l = Some(sim.wall_ms(i).saturating_sub(expires));
            }
        }
    }
    late.iter()
        .map(|l| l.ok_or_else(|| anyhow::anyhow!("a node never expired the key")))
        .try_fold(0, |m, l| Ok(m.max(l?)))
}

/// Datagrams sent around the expiry, with the key expiring or not.
fn expiry_datagrams(expiring: bool) -> Result<u64> {
    let mut sim = formed(8, 5)?;
    let expires = sim.wall_ms(0) + 10 * SEC;
    let life = if expiring {
        Lifetime::expiring(expires)
    } else {
        Lifetime::FOREVER
    };
    sim.set_with(0, "ttl/k", b"v", life);
    sim.run_for(9 * SEC);
    let before = sim.net_stats().sent;
    sim.run_for(6 * SEC);
    Ok(sim.net_stats().sent - before)
}

/// Bytes sent over a minute by a 5-node cluster holding 100 keys, with a
/// time to live (of a day) or without, once they have spread.
fn idle_bytes(ttl: bool) -> Result<u64> {
    let mut sim = formed(9, 5)?;
    let life = if ttl {
        Lifetime::expiring(sim.wall_ms(0) + 86_400 * SEC)
    } else {
        Lifetime::FOREVER
    };
    for k in 0..100 {
        sim.set_with(k % 5, &format!("ttl/{k}"), b"value", life);
    }
    sim.run_for(30 * SEC);
    if !sim.converged() {
        bail!("100 keys did not spread within 30 s");
    }
    let before = sim.net_stats().bytes;
    sim.run_for(60 * SEC);
    Ok(sim.net_stats().bytes - before)
}

/// One crashed-owner run: ms until no node shows the owner's ephemeral key,
/// and until every node lists it dead.
fn crashed_owner(seed: u64) -> Result<(u64, u64)> {
    let mut sim = formed(seed, 10)?;
    sim.set_with(3, "svc/3", b"up", Lifetime::FOREVER.owned());
    let nodes: Vec<usize> = (0..10).collect();
    if sim
        .run_until(10 * SEC, 10, |s| s.all_show(&nodes, "svc/3", Some(b"up")))
        .is_none()
    {
        bail!("the registration did not spread (seed {seed})");
    }
    sim.crash(3);
    let rest: Vec<usize> = (0..10).filter(|&i| i != 3).collect();
    let (mut hidden, mut dead) = (None, None);
    let start = sim.elapsed_ms();
    while (hidden.is_none() || dead.is_none()) && sim.elapsed_ms() - start < 120 * SEC {
        sim.run_for(10);
        let t = sim.elapsed_ms() - start;
        if hidden.is_none() && sim.all_show(&rest, "svc/3", None) {
            hidden = Some(t);
        }
        if dead.is_none()
            && rest
                .iter()
                .all(|&i| sim.state_seen(i, 3) == Some(MemberState::Dead))
        {
            dead = Some(t);
        }
    }
    match (hidden, dead) {
        (Some(h), Some(d)) => Ok((h, d)),
        _ => bail!("a crashed owner's key was not hidden within 120 s (seed {seed})"),
    }
}
