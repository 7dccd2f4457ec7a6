//! The `gossipkv` binary as an operator runs it: an agent on loopback, the
//! CLI against it (output and exit codes), SIGTERM (graceful, exit 0), and
//! the refusal to serve beyond loopback without a token.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gossipkv");

/// A running agent process and the HTTP address it printed.
struct AgentProcess {
    child: Child,
    http: String,
}

impl AgentProcess {
    fn start(args: &[&str]) -> AgentProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("agent").args(args);
        AgentProcess::spawn(cmd)
    }

    /// Spawns `cmd` (an `agent` command line) and waits for its address.
    fn spawn(mut cmd: Command) -> AgentProcess {
        let started = common::spawn_agent(
            cmd.env_remove("GOSSIPKV_HTTP_TOKEN")
                .env_remove("GOSSIPKV_CONFIG"),
        );
        AgentProcess {
            child: started.child,
            http: started.http,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--http-addr", &self.http])
            .env_remove("GOSSIPKV_HTTP_TOKEN")
            .output()
            .expect("run the CLI")
    }

    /// Sends SIGTERM and waits (with a deadline) for the exit code.
    fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the agent did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        common::kill(&mut self.child);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn cli_against_a_running_agent_then_sigterm_exits_0() {
    let agent = AgentProcess::start(&[
        "--node-id",
        "proc-a",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--gossip-interval",
        "100ms",
        "--discovery",
        "none",
    ]);

    let o = agent.cli(&["put", "greeting", "hello world"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = agent.cli(&["kv", "put", "app/flag", "on", "--ttl", "30s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = agent.cli(&["kv", "put", "app/svc", "up", "--ephemeral", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"ephemeral\": true"), "{}", stdout(&o));

    // `get` prints the bare value.
    let o = agent.cli(&["get", "greeting"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout, b"hello world");
    let o = agent.cli(&["kv", "get", "app/flag", "--json"]);
    assert!(stdout(&o).contains("\"ttl_ms\""), "{}", stdout(&o));

    let o = agent.cli(&["keys", "app/"]);
    assert_eq!(stdout(&o), "app/flag\napp/svc\n");
    let o = agent.cli(&["kv", "ls"]);
    assert_eq!(stdout(&o), "app/flag\napp/svc\ngreeting\n");

    let o = agent.cli(&["members"]);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("proc-a") && stdout(&o).contains("alive"),
        "{}",
        stdout(&o)
    );
    let o = agent.cli(&["info", "--json"]);
    assert!(
        stdout(&o).contains("\"node_id\": \"proc-a\""),
        "{}",
        stdout(&o)
    );

    let o = agent.cli(&["del", "greeting"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Not found: exit 1, with the agent's message.
    let o = agent.cli(&["get", "greeting"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not_found"), "{}", stderr(&o));
    // Refused by the agent: exit 1 too.
    let o = agent.cli(&["put", "k", "v", "--if-match", "*"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("version_mismatch"), "{}", stderr(&o));
    // A zero time to live is refused by the agent (exit 1); one that is not
    // a duration is a usage error (exit 2). Neither writes anything.
    let o = agent.cli(&["kv", "put", "brief", "v", "--ttl", "0s"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid_ttl"), "{}", stderr(&o));
    let o = agent.cli(&["kv", "put", "brief", "v", "--ttl", "soon"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(agent.cli(&["get", "brief"]).status.code(), Some(1));
    // Usage error: exit 2.
    let o = agent.cli(&["get"]);
    assert_eq!(o.status.code(), Some(2));

    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn unreachable_agent_exits_3() {
    // Nothing listens there: bind a port, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(BIN)
        .args(["get", "k", "--http-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot reach"), "{}", stderr(&o));
}

#[test]
fn refuses_a_public_http_address_without_a_token() {
    let o = Command::new(BIN)
        .args(["agent", "--bind", "127.0.0.1:0", "--http", "0.0.0.0:0"])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("without a token"), "{}", stderr(&o));
}

#[test]
fn config_file_and_env_are_read_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        "node_id = \"from-file\"\nbind = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
         http_token = \"t0ken\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["agent", "--config"])
        .arg(&path)
        .args(["--node-id", "from-flag"])
        .env("GOSSIPKV_NODE_ID", "from-env");
    let agent = AgentProcess::spawn(cmd);
    // The token from the file is required...
    let o = agent.cli(&["info", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));
    // ... and the node id comes from the flag (over the env and the file).
    let o = Command::new(BIN)
        .args(["info", "--json", "--http-addr", &agent.http])
        .env("GOSSIPKV_HTTP_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"node_id\": \"from-flag\""),
        "{}",
        stdout(&o)
    );
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn console_reads_commands_until_quit_or_end_of_input() {
    use std::io::Write as _;
    let agent = AgentProcess::start(&[
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--node-id",
        "con",
    ]);
    let run = |input: &str| {
        let mut child = Command::new(BIN)
            .args(["console", "--http-addr", &agent.http])
            .env_remove("GOSSIPKV_HTTP_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run(
        "set greeting \"hello there\"\nget greeting\nset x 1\nkeys\nmembers\nbogus\nget nope\ndel x\nkeys\nquit\nget greeting\n",
    );
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ok");
    assert_eq!(lines[1], "hello there");
    assert_eq!(lines[2], "ok");
    assert_eq!(&lines[3..5], ["greeting", "x"]);
    assert!(
        lines[5].starts_with("con 127.0.0.1:") && lines[5].contains(" alive "),
        "{out}"
    );
    assert!(lines[6].starts_with("error: unknown command"), "{out}");
    assert!(lines[7].starts_with("error: no key"), "{out}");
    assert_eq!(lines[8], "ok");
    assert_eq!(lines[9], "greeting");
    // Nothing after quit ran.
    assert_eq!(lines.len(), 10, "{out}");

    // End of input without quit: a clean exit too (no endless loop).
    let o = run("get greeting");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "hello there\n");

    // sair leaves the console too.
    let o = run("sair\nget greeting\n");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");

    // set takes the CLI's --ttl and --ephemeral; a bad option writes nothing.
    let o = run("set --ttl 30s --ephemeral svc/web \"up now\"\nset plain/k v\nset --ttl never bad/k v\nget svc/web\n");
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(&lines[..2], ["ok", "ok"], "{out}");
    assert!(
        lines[2].starts_with("error: ") && lines[2].contains("not a duration"),
        "{out}"
    );
    assert_eq!(lines[3], "up now", "{out}");
    let json = |key: &str| -> serde_json::Value {
        let o = agent.cli(&["kv", "get", key, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v[0].clone()
    };
    let web = json("svc/web");
    assert_eq!(web["ephemeral"], true, "{web}");
    let ttl = web["ttl_ms"].as_u64().expect("a time to live");
    assert!(ttl > 20_000 && ttl <= 30_000, "{web}");
    let plain = json("plain/k");
    assert_eq!(plain["ephemeral"], false, "{plain}");
    assert!(plain["ttl_ms"].is_null(), "{plain}");
    // Nothing else was written (an older console wrote a key named --ttl).
    let o = agent.cli(&["kv", "ls"]);
    assert_eq!(stdout(&o), "greeting\nplain/k\nsvc/web\n");
    assert_eq!(agent.terminate(), Some(0));
}

/// Starts an agent on a new data dir with `extra` options, writes a key,
/// runs `before_stop`, stops it with SIGTERM, starts it again and reads the
/// key back.
fn restart_keeps_a_key(extra: &[&str], before_stop: impl Fn(&AgentProcess)) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut args = vec![
        "--node-id",
        "durable",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ];
    args.extend_from_slice(extra);
    let agent = AgentProcess::start(&args);
    let o = agent.cli(&["put", "kept", "on disk"]);
    assert!(o.status.success(), "{}", stderr(&o));
    before_stop(&agent);
    assert_eq!(agent.terminate(), Some(0));

    let agent = AgentProcess::start(&args);
    let o = agent.cli(&["get", "kept"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout, b"on disk");
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn data_dir_keeps_keys_across_a_sigterm_restart() {
    restart_keeps_a_key(&[], |agent| {
        let o = agent.cli(&["info", "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(info["durable"]["pending"], 0, "sync: on disk: {info}");
        assert_eq!(info["durable"]["durability"], "sync", "{info}");
    });
}

#[test]
fn interval_durability_keeps_keys_across_a_sigterm_restart() {
    // An hour between commits: the write is answered before it is on disk,
    // and reaches it through the commit of the graceful stop.
    restart_keeps_a_key(&["--durability", "1h"], |agent| {
        let o = agent.cli(&["info", "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(info["durable"]["pending"].as_u64() >= Some(1), "{info}");
        assert_eq!(info["durable"]["durability"], "1h", "{info}");
    });
}

#[test]
fn evict_lru_keeps_the_most_recent_keys_and_reject_refuses() {
    let base = [
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--max-entries",
        "3",
    ];
    let cache = AgentProcess::start(&[&base[..], &["--memory-policy", "evict-lru"]].concat());
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        let o = cache.cli(&["put", k, "v"]);
        assert!(o.status.success(), "{k}: {}", stderr(&o));
    }
    let o = cache.cli(&["kv", "ls"]);
    assert_eq!(stdout(&o), "k3\nk4\nk5\n");
    let o = cache.cli(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["memory"]["evicted"], 2, "{info}");
    assert_eq!(info["memory"]["policy"], "evict-lru", "{info}");
    assert_eq!(info["memory"]["max_entries"], 3, "{info}");
    assert!(info["memory"]["max_bytes"].is_null(), "{info}");
    assert_eq!(cache.terminate(), Some(0));

    let config = AgentProcess::start(&base);
    for k in ["k1", "k2", "k3"] {
        let o = config.cli(&["put", k, "v"]);
        assert!(o.status.success(), "{k}: {}", stderr(&o));
    }
    let o = config.cli(&["put", "k4", "v"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("over_budget"), "{}", stderr(&o));
    let o = config.cli(&["kv", "ls"]);
    assert_eq!(stdout(&o), "k1\nk2\nk3\n");
    assert_eq!(config.terminate(), Some(0));
}

#[test]
fn sigterm_with_a_watch_stream_and_a_long_poll_open_still_exits_0() {
    // One request at a time: while the long poll waits, others get a 503,
    // which tells that it is under way.
    let agent = AgentProcess::start(&[
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--http-max-concurrent",
        "1",
    ]);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    // The watch stream answers its headers at once and stays open.
    let watch = http
        .get(&format!("http://{}/v1/watch?prefix=", agent.http))
        .call()
        .unwrap();
    assert_eq!(watch.status().as_u16(), 200);
    let url = format!("http://{}/v1/kv/k?index=1000000&wait=600s", agent.http);
    let poller = http.clone();
    // The poll may meet the health checks below in the only slot: then it
    // got a 503 and tries again.
    let poll = std::thread::spawn(move || loop {
        let status = poller.get(&url).call().map(|r| r.status().as_u16());
        if !matches!(status, Ok(503)) {
            return status;
        }
    });
    let health = format!("http://{}/v1/health", agent.http);
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(&health).call().unwrap().status().as_u16() != 503 {
        assert!(Instant::now() < deadline, "the long poll never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    assert_eq!(agent.terminate(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The long poll got its answer before the agent went.
    assert_eq!(poll.join().unwrap().ok(), Some(404));
    drop(watch);
}

#[test]
fn kv_watch_prints_changes_until_the_agent_stops() {
    let agent = AgentProcess::start(&["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let mut watch = Command::new(BIN)
        .args(["kv", "watch", "app/", "--http-addr", &agent.http])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Write until the watcher shows it is subscribed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(agent.cli(&["put", "app/ping", "1"]).status.success());
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            assert_eq!(line, "put app/ping 1");
            break;
        }
        assert!(Instant::now() < deadline, "the watch never showed a change");
    }
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {} // later pings
    assert!(agent.cli(&["put", "other", "x"]).status.success());
    assert!(agent.cli(&["put", "app/x", "hello"]).status.success());
    assert!(agent.cli(&["del", "app/x"]).status.success());
    // A ping echoed after the pause above may still come first: skip it.
    let next = |rx: &mpsc::Receiver<String>| loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        if !line.starts_with("put app/ping") {
            break line;
        }
    };
    assert_eq!(next(&rx), "put app/x hello");
    assert_eq!(next(&rx), "delete app/x deleted");
    assert_eq!(agent.terminate(), Some(0));
    // The stream ends with the agent, and so does the watch.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = watch.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            panic!("kv watch did not end with the agent");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

/// The console on a pseudo-terminal: prompt, line editing history (the up
/// arrow recalls the last line), and Ctrl-D leaving cleanly.
#[cfg(unix)]
#[test]
fn console_on_a_terminal_has_history_and_leaves_at_ctrl_d() {
    use expectrl::{ControlCode, Eof, Expect as _, Session};
    let agent = AgentProcess::start(&["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let mut cmd = Command::new(BIN);
    cmd.args(["console", "--http-addr", &agent.http])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env("TERM", "xterm");
    let mut p = Session::spawn(cmd).expect("spawn on a pty");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("gossipkv> ").unwrap();
    p.send_line("set color \"deep blue\"").unwrap();
    p.expect("ok").unwrap();
    p.expect("gossipkv> ").unwrap();
    p.send_line("get color").unwrap();
    p.expect("deep blue").unwrap();
    p.expect("gossipkv> ").unwrap();
    // The up arrow brings back "get color".
    agent.cli(&["put", "color", "red"]);
    p.send("\x1b[A").unwrap();
    p.send("\r").unwrap();
    p.expect("red").unwrap();
    p.expect("gossipkv> ").unwrap();
    // watch shows changes until Enter.
    p.send_line("watch app/").unwrap();
    p.expect("press Enter to stop").unwrap();
    p.set_expect_timeout(Some(Duration::from_millis(300)));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Until the stream is subscribed, writes go unseen: write again.
        agent.cli(&["put", "app/x", "hello"]);
        if p.expect("put app/x hello").is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "watch showed nothing");
    }
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.send("\r").unwrap();
    p.expect("(watch stopped)").unwrap();
    p.expect("gossipkv> ").unwrap();
    p.send(ControlCode::EndOfTransmission).unwrap();
    p.expect(Eof).unwrap();
    let status = p.get_process().wait().unwrap();
    assert!(
        matches!(status, expectrl::process::unix::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    assert_eq!(agent.terminate(), Some(0));
}

/// `agent --console`: the agent and a console attached to it in one
/// process; the end of the console is a graceful leave, exit 0.
#[cfg(unix)]
#[test]
fn agent_with_console_leaves_when_the_console_ends() {
    use expectrl::{ControlCode, Eof, Expect as _, Session};
    let mut cmd = Command::new(BIN);
    cmd.args([
        "agent",
        "--console",
        "--node-id",
        "inproc",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .env_remove("GOSSIPKV_HTTP_TOKEN")
    .env_remove("GOSSIPKV_CONFIG")
    .env("TERM", "xterm");
    let mut p = Session::spawn(cmd).expect("spawn on a pty");
    p.set_expect_timeout(Some(Duration::from_secs(20)));
    p.expect("http listening on").unwrap();
    p.expect("gossipkv> ").unwrap();
    p.send_line("set k in process").unwrap();
    p.expect("ok").unwrap();
    p.send_line("members").unwrap();
    p.expect("inproc 127.0.0.1:").unwrap();
    p.expect("gossipkv> ").unwrap();
    p.send(ControlCode::EndOfTransmission).unwrap();
    p.expect(Eof).unwrap();
    let status = p.get_process().wait().unwrap();
    assert!(
        matches!(status, expectrl::process::unix::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
}

#[test]
fn json_logs_and_bad_configs() {
    // --log-format json: one JSON object per line on stderr.
    let mut child = Command::new(BIN)
        .args(["agent", "--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--log-format", "json", "--node-id", "json-logs"])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Every line is JSON, until the agent's own "agent started" (earlier
    // lines may be the node's, such as a warning).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a log line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        assert!(v["level"].is_string(), "{v}");
        assert!(v["fields"]["message"].is_string(), "{v}");
        if v["fields"]["message"] == "agent started" {
            assert_eq!(v["level"], "INFO", "{v}");
            assert_eq!(v["fields"]["node_id"], "json-logs", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no agent started line");
    }
    let _ = child.kill();
    let _ = child.wait();

    // A config file that cannot be read, or has a bad value: exit 1, said why.
    let o = Command::new(BIN)
        .args(["agent", "--config", "/nonexistent/gossipkv.toml"])
        .env_remove("GOSSIPKV_CONFIG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read config file"),
        "{}",
        stderr(&o)
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "gossip_interval = \"fast\"\n").unwrap();
    let o = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--gossip-interval"), "{}", stderr(&o));
    // A flag value that does not parse is a usage error: exit 2.
    let o = Command::new(BIN)
        .args(["agent", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn put_takes_values_that_start_with_a_dash() {
    let agent = AgentProcess::start(&["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let o = agent.cli(&["put", "n", "-5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(agent.cli(&["get", "n"]).stdout, b"-5");
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn post_leave_makes_the_agent_exit_0() {
    let mut agent = AgentProcess::start(&["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let r = http
        .post(&format!("http://{}/v1/leave", agent.http))
        .send_empty()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit after leaving"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
