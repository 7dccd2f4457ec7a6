//! Helpers shared by the loopback test files.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use gossipkv::{GossipKv, MemberState};

/// The node type most tests use.
pub type Kv = GossipKv<String, String>;

/// Polls `cond` every 10 ms until it holds; panics after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node on 127.0.0.1:0 seeded with the addresses of `seeds`.
pub async fn node_with(id: &str, seeds: &[&Kv], interval: Duration) -> Kv {
    GossipKv::<String, String>::builder()
        .node_id(id)
        .bind_addr("127.0.0.1:0")
        .gossip_interval(interval)
        .seeds(seeds.iter().map(|s| s.local_addr().unwrap().to_string()))
        .build()
        .await
        .expect("node starts")
}

/// The state in which `observer` lists the member `node_id`, if it lists it.
pub fn state_of(observer: &Kv, node_id: &str) -> Option<MemberState> {
    observer
        .members()
        .into_iter()
        .find(|m| m.node_id == node_id)
        .map(|m| m.state)
}

/// A node on its own runtime, seeded with `seed`: dropping the runtime
/// (`shutdown_background`) kills it mid-flight, with no goodbye, as a
/// SIGKILL would.
pub fn killable(id: &str, seed: &Kv, interval: Duration) -> (tokio::runtime::Runtime, Kv) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seed = seed.local_addr().unwrap().to_string();
    let kv = rt.block_on(async {
        GossipKv::<String, String>::builder()
            .node_id(id)
            .bind_addr("127.0.0.1:0")
            .gossip_interval(interval)
            .seeds([seed])
            .build()
            .await
            .unwrap()
    });
    (rt, kv)
}

/// A runtime with two workers for the surviving nodes of a kill test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
