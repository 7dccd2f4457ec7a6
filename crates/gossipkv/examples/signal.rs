//! Leaving the cluster cleanly when the process is asked to stop.
//!
//! A process stopped with SIGTERM (`kill`, systemd, Docker, Kubernetes) or
//! Ctrl-C dies without a word unless it handles the signal: its peers only
//! notice when it stops answering probes, suspect it, and declare it `Dead`
//! after the suspect timeout. This example handles both signals and shuts
//! the node down, so its peers see it `Left` at once.
//!
//! ```sh
//! cargo run --example signal                        # a first node
//! cargo run --example signal -- 127.0.0.1:<port>    # more, seeded with it
//! ```
//!
//! Stop one with Ctrl-C or `kill <pid>` and watch the others print `left`.

use std::time::Duration;

use anyhow::{Context, Result};
use gossipkv::{GossipKv, MemberEvent};

#[tokio::main]
async fn main() -> Result<()> {
    let seeds: Vec<String> = std::env::args().skip(1).collect();
    let kv = GossipKv::<String, String>::builder()
        .bind_addr("127.0.0.1:0")
        .gossip_interval(Duration::from_millis(200))
        .seeds(seeds)
        .build()
        .await
        .context("start the node")?;
    println!(
        "{} listening on {} (pid {}); Ctrl-C or `kill {}` to leave",
        kv.node_id(),
        kv.local_addr().context("bound")?,
        std::process::id(),
        std::process::id(),
    );

    // Print what this node sees of the others while it runs.
    let mut events = kv.member_events();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let m = event.member();
            let what = match &event {
                MemberEvent::Joined(_) => "joined",
                MemberEvent::Left(_) => "left",
                MemberEvent::Suspect(_) => "is suspect",
                MemberEvent::Dead(_) => "is dead",
                MemberEvent::Alive(_) => "is alive again",
                MemberEvent::Rejoined(_) => "rejoined",
                MemberEvent::Forgotten(_) => "is forgotten",
                _ => "changed",
            };
            println!("  {} ({}) {what}", m.node_id, m.addr);
        }
    });

    // The service's own work would run here, on other tasks. This waits for
    // SIGINT or SIGTERM, then announces the departure and stops gossiping.
    kv.shutdown_on_termination().await?;
    println!("left the cluster; exiting");
    Ok(())
}
