//! Service discovery with ephemeral keys: each process registers itself
//! under `svc/<name>` and watches `svc/` to follow the others.
//!
//! A registration is an **ephemeral** key: it belongs to the node that
//! wrote it and vanishes from every node when that node dies (killed,
//! crashed, cut off: once the cluster declares it dead, a few gossip
//! intervals), leaves (at once, on a clean shutdown), or restarts. With
//! `--ttl`, it also carries a time to live that the process refreshes, so
//! a process that hangs without dying drops out too.
//!
//! ```sh
//! cargo run --example service_discovery -- web-1                  # prints its address
//! cargo run --example service_discovery -- web-2 --seed 127.0.0.1:<port>
//! cargo run --example service_discovery -- web-3 --seed 127.0.0.1:<port> --ttl 10
//! kill -9 <pid of web-3>    # the others print `svc/web-3 gone (its owner is gone)`
//! ```
//!
//! Options: `--seed ADDR` (repeatable), `--bind ADDR` (default
//! `127.0.0.1:0`), `--interval-ms N` (gossip interval, default 1000),
//! `--ttl SECS` (also expire the registration unless refreshed).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use gossipkv::{ChangeKind, GossipKv};

struct Args {
    name: String,
    bind: String,
    seeds: Vec<String>,
    interval: Duration,
    ttl: Option<Duration>,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let name = it.next().context("usage: service_discovery NAME [--seed ADDR]... [--bind ADDR] [--interval-ms N] [--ttl SECS]")?;
    let mut args = Args {
        name,
        bind: "127.0.0.1:0".into(),
        seeds: Vec::new(),
        interval: Duration::from_secs(1),
        ttl: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seed" => args.seeds.push(value),
            "--bind" => args.bind = value,
            "--interval-ms" => args.interval = Duration::from_millis(value.parse()?),
            "--ttl" => args.ttl = Some(Duration::from_secs(value.parse()?)),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse()?;
    let kv = GossipKv::<String, String>::builder()
        .node_id(&args.name)
        .bind_addr(&args.bind)
        .gossip_interval(args.interval)
        .seeds(args.seeds.clone())
        .build()
        .await
        .context("start the node")?;
    let addr = kv.local_addr().context("bound")?.to_string();

    // Follow the other services before registering, so no change is missed.
    let mut watcher = kv.watch("svc/");
    let me = args.name.clone();
    tokio::spawn(async move {
        while let Some(e) = watcher.recv().await {
            let why = match e.kind {
                ChangeKind::OwnerGone => "its owner is gone",
                ChangeKind::Expired => "its time to live ran out",
                ChangeKind::OwnerBack => "its owner is back",
                _ if e.value.is_some() => "registered",
                _ => "deregistered",
            };
            match e.value {
                Some(at) => println!("{me} sees: {} at {at} ({why})", e.key),
                None => println!("{me} sees: {} gone ({why})", e.key),
            }
        }
    });

    // Register: the key dies with this process.
    let key = format!("svc/{}", args.name);
    match args.ttl {
        Some(ttl) => kv.set_ephemeral_with_ttl(&key, addr.clone(), ttl)?,
        None => kv.set_ephemeral(&key, addr.clone())?,
    }
    println!(
        "ready {} at {addr} (pid {}); kill -9 it and watch the others",
        args.name,
        std::process::id()
    );

    // Refresh the time to live at a third of it, until asked to stop.
    let refresh = {
        let kv = kv.clone();
        let (key, addr) = (key.clone(), addr.clone());
        async move {
            match args.ttl {
                Some(ttl) => loop {
                    tokio::time::sleep(ttl / 3).await;
                    if kv.set_ephemeral_with_ttl(&key, addr.clone(), ttl).is_err() {
                        break;
                    }
                },
                None => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        r = kv.shutdown_on_termination() => r?,
        _ = refresh => {}
    }
    Ok(())
}
