//! Leaving the cluster on SIGTERM, with a real signal sent to this test
//! process (a file of its own: once tokio handles SIGTERM, the signal no
//! longer ends the process, which no other test should have to know).
//! Nodes bind 127.0.0.1 port 0; every wait polls a condition with a
//! deadline.

#![cfg(unix)]

use std::process::Command;
use std::time::{Duration, Instant};

use gossipkv::MemberState;

mod common;

use common::{state_of, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_the_node_leave_instead_of_dying() {
    // Handle SIGTERM in this process before any is sent, so that a signal
    // sent before the node's handler is installed cannot end the test.
    let mut guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let interval = Duration::from_millis(50);
    let a = common::node_with("term-a", &[], interval).await;
    let b = common::node_with("term-b", &[&a], interval).await;
    wait_until("a lists b as alive", DEADLINE, || {
        state_of(&a, "term-b") == Some(MemberState::Alive)
    })
    .await;
    let leave = tokio::spawn(b.shutdown_on_termination());

    // SIGTERM this process until b has left (the handler is installed on the
    // leave task's first poll, so the first signals may come before it).
    let start = Instant::now();
    while !b.is_closed() {
        assert!(start.elapsed() < DEADLINE, "b never left on SIGTERM");
        let status = Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let _ = tokio::time::timeout(Duration::from_millis(50), guard.recv()).await;
    }
    tokio::time::timeout(DEADLINE, leave)
        .await
        .expect("shutdown_on_termination returns")
        .unwrap()
        .expect("no error");
    wait_until("a sees b as left, not dead", DEADLINE, || {
        state_of(&a, "term-b") == Some(MemberState::Left)
    })
    .await;
    a.shutdown().await.unwrap();
}
