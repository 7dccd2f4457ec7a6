//! Helpers shared by the tests that run the `gossipkv` binary as a process.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long an agent may take to print its HTTP address.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A started agent: the process, the HTTP address it printed (after
/// `http listening on `, so `https://ADDR` with TLS), and the gossip
/// address when it printed one before it.
pub struct Started {
    pub child: Child,
    pub http: String,
    pub gossip: Option<String>,
}

/// Spawns `cmd` (an `agent` command line) with stdout piped and stderr
/// dropped, and waits until it prints its HTTP address; kills it and
/// panics when it does not within 30 s.
pub fn spawn_agent(cmd: &mut Command) -> Started {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the agent");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, also once nobody listens: the agent must never
        // write into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_DEADLINE;
    let mut gossip = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("http listening on ") {
                    return Started {
                        child,
                        http: a.to_string(),
                        gossip,
                    };
                }
                if let Some(a) = line.strip_prefix("gossip listening on ") {
                    gossip = Some(a.to_string());
                }
            }
            Err(_) => {
                kill(&mut child);
                panic!("the agent did not print its HTTP address");
            }
        }
    }
}

/// Kills `child` if it still runs, and reaps it (for `Drop`).
pub fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
