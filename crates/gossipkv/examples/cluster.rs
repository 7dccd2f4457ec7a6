//! A local multi-node demo: five nodes on loopback in one process.
//!
//! Run with `cargo run --example cluster` (add `RUST_LOG=gossipkv=debug` for
//! the protocol's logs). It starts the nodes, each seeded only with the one
//! before it, writes on the first node, shows every node converging, deletes,
//! and prints timings and traffic counters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gossipkv::GossipKv;

type Kv = GossipKv<String, String>;

const NODES: usize = 5;
const INTERVAL: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `cond` holds on every node, printing when each one gets there.
async fn converge(nodes: &[Kv], what: &str, cond: impl Fn(&Kv) -> bool) -> Result<Duration> {
    let start = Instant::now();
    let mut seen = vec![None; nodes.len()];
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if seen[i].is_none() && cond(n) {
                seen[i] = Some(start.elapsed());
            }
        }
        if seen.iter().all(Option::is_some) {
            break;
        }
        if start.elapsed() > DEADLINE {
            bail!("{what}: not every node got there within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cells: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{} {:>4} ms",
                nodes[i].node_id(),
                t.map_or(0, |t| t.as_millis())
            )
        })
        .collect();
    let total = start.elapsed();
    println!("  {what:<28} {}", cells.join(" | "));
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    println!("starting {NODES} nodes on loopback (gossip every {INTERVAL:?}, each seeded with the previous one)");
    let mut nodes: Vec<Kv> = Vec::new();
    for i in 0..NODES {
        let mut b = GossipKv::<String, String>::builder()
            .node_id(format!("node-{i}"))
            .bind_addr("127.0.0.1:0")
            .gossip_interval(INTERVAL);
        if let Some(prev) = nodes.last() {
            b = b.seeds([prev.local_addr().context("bound")?.to_string()]);
        }
        let n = b.build().await.context("start node")?;
        println!(
            "  node-{i} listening on {}",
            n.local_addr().context("bound")?
        );
        nodes.push(n);
    }

    // Wait until every node knows every other one (membership spreads by gossip).
    converge(&nodes, "membership: all 5 alive", |n| {
        n.members()
            .iter()
            .filter(|m| m.state == gossipkv::MemberState::Alive)
            .count()
            == NODES
    })
    .await?;
    println!("\nnode-4 sees the cluster as:");
    for m in nodes[4].members() {
        println!("  {:<8} {:<21} {}", m.node_id, m.addr, m.state);
    }

    // A watcher on node-3 prints every change under "cfg/" as it arrives.
    let mut watcher = nodes[3].watch("cfg/");
    let watch_task = tokio::spawn(async move {
        let mut seen = 0usize;
        let mut last = None;
        while let Some(ev) = watcher.recv().await {
            seen += 1 + ev.missed as usize;
            last = Some((ev.key, ev.value));
        }
        (seen, last)
    });

    println!("\nwriting version=v1.0.1 on node-0; time until each node reads it:");
    let start = Instant::now();
    nodes[0].set("version", "v1.0.1".to_string())?;
    converge(&nodes, "version=v1.0.1", |n| {
        n.get("version").ok().flatten().as_deref() == Some("v1.0.1")
    })
    .await?;

    println!("\nwriting 500 keys on node-2:");
    for k in 0..500 {
        nodes[2].set(format!("cfg/{k:03}"), format!("value-{k}"))?;
    }
    converge(&nodes, "500 keys", |n| n.len() == 501).await?;

    println!("\nconcurrent writes of the same key on every node:");
    for (i, n) in nodes.iter().enumerate() {
        n.set("leader", format!("node-{i}"))?;
    }
    let winner = {
        converge(&nodes, "one winner everywhere", |n| {
            let v = n.get("leader").ok().flatten();
            nodes.iter().all(|m| m.get("leader").ok().flatten() == v)
        })
        .await?;
        nodes[0].get("leader")?.unwrap_or_default()
    };
    println!("  every node agrees: leader={winner}");

    println!("\ndeleting version on node-4:");
    nodes[4].delete("version")?;
    converge(&nodes, "version deleted", |n| !n.contains_key("version")).await?;

    println!("\nnode-1 leaves; the others see it as left:");
    let leaving = nodes.remove(1);
    leaving.shutdown().await?;
    converge(&nodes, "node-1 left", |n| {
        n.members()
            .iter()
            .any(|m| m.node_id.as_str() == "node-1" && m.state == gossipkv::MemberState::Left)
    })
    .await?;

    println!("\nafter {:?}:", start.elapsed());
    println!(
        "  {:<8} {:>6} {:>8} {:>10} {:>10} {:>8}",
        "node", "keys", "peers", "sent", "bytes", "rounds"
    );
    for n in &nodes {
        let s = n.stats();
        println!(
            "  {:<8} {:>6} {:>8} {:>10} {:>10} {:>8}",
            n.node_id(),
            n.len(),
            n.peers().len(),
            s.datagrams_sent,
            s.bytes_sent,
            s.rounds
        );
    }
    for n in &nodes {
        n.shutdown().await?;
    }
    let (seen, last) = watch_task.await?;
    println!("\nthe watcher on node-3 saw {seen} changes under cfg/; the last: {last:?}");
    println!("all nodes shut down");
    Ok(())
}
