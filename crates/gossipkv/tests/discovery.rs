//! The service-discovery example, tried as a new user would: three
//! processes register services and watch `svc/`; one is killed with
//! SIGKILL; the other two must see its registration go, and keep their own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// The example's binary: `cargo test --workspace` builds it beside this
/// test's binary; when this test was built alone (`--test discovery`), it
/// is built here.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = dir.join("examples").join("service_discovery");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "gossipkv", "--example", "service_discovery"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the example failed");
    }
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// A running example process and the lines it prints.
struct Service {
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Service {
    fn start(name: &str, seeds: &[&str]) -> Service {
        let mut cmd = Command::new(example());
        cmd.arg(name).args(["--interval-ms", "100"]);
        for s in seeds {
            cmd.args(["--seed", s]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the example starts");
        let lines = forward(child.stdout.take().unwrap());
        Service {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a printed line that `want` accepts; returns it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return l.clone();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{} did not print {what} within {DEADLINE:?}; it printed:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The address it printed on its `ready` line.
    fn addr(&mut self) -> String {
        let ready = self.wait_for("its ready line", |l| l.starts_with("ready "));
        ready.split_whitespace().nth(3).unwrap().to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn a_service_killed_with_sigkill_vanishes_from_the_others_view() {
    let mut web1 = Service::start("web-1", &[]);
    let seed = web1.addr();
    let mut web2 = Service::start("web-2", &[&seed]);
    let mut web3 = Service::start("web-3", &[&seed]);
    for s in [&mut web1, &mut web2, &mut web3] {
        for other in ["web-1", "web-2", "web-3"] {
            let line = format!("sees: svc/{other} at ");
            s.wait_for(&format!("svc/{other} registered"), |l| l.contains(&line));
        }
    }
    // SIGKILL: no goodbye, no shutdown code runs.
    web3.child.kill().unwrap();
    web3.child.wait().unwrap();
    for s in [&mut web1, &mut web2] {
        s.wait_for("svc/web-3 gone with its owner", |l| {
            l.contains("sees: svc/web-3 gone (its owner is gone)")
        });
    }
    // The survivors' registrations never went.
    for s in [&web1, &web2] {
        assert!(
            !s.seen
                .iter()
                .any(|l| l.contains("gone") && !l.contains("svc/web-3")),
            "{}: {:?}",
            s.name,
            s.seen
        );
    }
}
