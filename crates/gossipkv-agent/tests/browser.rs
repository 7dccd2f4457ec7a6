//! The status page in headless Chromium, against a 3-agent cluster on
//! loopback: the page shows the three members, and a key set through the
//! page's form appears on another agent. Needs `chromium` (Debian's
//! package, which the test installs with `apt-get` when it is missing and
//! it runs as root) and `node` (which drives Chromium over the DevTools protocol,
//! with `tests/browser_drive.mjs`); where either is missing the test says
//! SKIPPED loudly and passes.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gossipkv");

struct Agent {
    child: Child,
    gossip: String,
    http: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(id: &str, seed: Option<&str>) -> Agent {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "--node-id",
        id,
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .args(["--gossip-interval", "100ms"]);
    if let Some(s) = seed {
        cmd.args(["--seed", s]);
    }
    let mut child = cmd
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut gossip, mut http) = (String::new(), String::new());
    while http.is_empty() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("agent output");
        if let Some(a) = line.strip_prefix("gossip listening on ") {
            gossip = a.to_string();
        } else if let Some(a) = line.strip_prefix("http listening on ") {
            http = a.to_string();
        }
    }
    Agent {
        child,
        gossip,
        http,
    }
}

fn found(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut r = agent.get(url).call().unwrap();
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// Installs Debian's `chromium` package when it is missing and this runs as
/// root with `apt-get` (bounded: 10 minutes for each step). Returns whether
/// `chromium` runs afterwards.
fn ensure_chromium() -> bool {
    if found("chromium", "--version") {
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !root || !found("apt-get", "--version") {
        return false;
    }
    eprintln!("status_page_in_headless_chromium: installing Debian's chromium (apt-get)");
    for args in [
        &["600", "apt-get", "update"][..],
        &[
            "600",
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "chromium",
        ],
    ] {
        let ok = Command::new("timeout")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "status_page_in_headless_chromium: `{}` failed",
                args[1..].join(" ")
            );
            return false;
        }
    }
    found("chromium", "--version")
}

#[test]
fn status_page_in_headless_chromium() {
    if !ensure_chromium() || !found("node", "--version") {
        let msg = "SKIPPED: status_page_in_headless_chromium needs `chromium` (installed with \
                   apt-get when this runs as root) and `node` on PATH";
        println!("{msg}");
        eprintln!("{msg}");
        return;
    }
    let a = start("page-a", None);
    let b = start("page-b", Some(&a.gossip));
    let c = start("page-c", Some(&a.gossip));
    // Wait for the cluster to form, as a's API sees it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = get(&format!("http://{}/v1/members", a.http));
        if body.matches("\"alive\"").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "cluster did not form: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The page shows the three members.
    let url = format!("http://{}/", a.http);
    // The page renders what it fetched; a dump taken before the fetches
    // came back is taken again (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let out = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=3000",
                "--dump-dom",
                &url,
            ])
            .stderr(Stdio::null())
            .output()
            .expect("run chromium");
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        if dom.matches("<tr class=\"member\">").count() == 3 || Instant::now() > deadline {
            break dom;
        }
    };
    assert_eq!(dom.matches("<tr class=\"member\">").count(), 3, "{dom}");
    for id in ["page-a", "page-b", "page-c"] {
        assert!(
            dom.contains(&format!("<td>{id}</td>")),
            "{id} missing: {dom}"
        );
    }
    assert!(
        dom.contains("<span id=\"node-id\" class=\"mono\">page-a</span>"),
        "{dom}"
    );

    // A key set through the page's form reaches another agent.
    let node_version = Command::new("node").arg("--version").output().unwrap();
    let major: u32 = String::from_utf8_lossy(&node_version.stdout)
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let mut node = Command::new("node");
    if major < 22 {
        node.arg("--experimental-websocket"); // a global WebSocket
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser_drive.mjs");
    let status = node
        .args([script, "chromium", &url, "from/page", "set in a browser"])
        .status()
        .expect("run node");
    assert!(status.success(), "driving the page failed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("http://{}/v1/kv/from/page?raw", c.http));
        if status == 200 {
            assert_eq!(body, "set in a browser");
            break;
        }
        assert!(Instant::now() < deadline, "the key never reached page-c");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(b);
}
