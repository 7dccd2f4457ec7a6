//! Gossip encryption in the agent: `gossipkv keygen`, `--keyring-file`
//! (created 0600 with `--init-keyring`, refused when others can read it,
//! rewritten after every change), the `/v1/keyring` routes and their
//! errors, the `keyring` CLI, the metrics, and keyed agents that replicate
//! only among holders of their key. Agents run as processes on loopback.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gossipkv");

/// A running agent process and the addresses it printed.
struct AgentProcess {
    child: Child,
    http: String,
    gossip: String,
    token: Option<String>,
}

fn agent_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .args([
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--gossip-interval",
            "100ms",
            "--discovery",
            "none",
        ])
        .args(args)
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CONFIG")
        .env_remove("GOSSIPKV_KEYRING_FILE")
        .env_remove("GOSSIPKV_ENCRYPTION");
    cmd
}

impl AgentProcess {
    fn start(args: &[&str]) -> AgentProcess {
        let token = args
            .iter()
            .position(|a| *a == "--http-token")
            .map(|i| args[i + 1].to_string());
        let started = common::spawn_agent(&mut agent_command(args));
        AgentProcess {
            child: started.child,
            http: started.http,
            gossip: started.gossip.expect("gossip address"),
            token,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["--http-addr", &self.http])
            .env_remove("GOSSIPKV_HTTP_TOKEN");
        if let Some(t) = &self.token {
            cmd.args(["--http-token", t]);
        }
        cmd.output().expect("run the CLI")
    }

    /// A request with the agent's token (if any): status and body.
    fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("http://{}{path}", self.http);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = if method == "PUT" {
                    agent.put(&url)
                } else {
                    agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(body.unwrap_or_default().as_bytes())
            }
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap();
        (status, body)
    }

    fn keyring(&self) -> Value {
        let (status, body) = self.send("GET", "/v1/keyring", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
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
            assert!(
                Instant::now() < deadline,
                "the agent did not exit after SIGTERM"
            );
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

/// Polls `cond` until it holds, or fails with `what` after 30 s.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn keygen() -> String {
    let o = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn file_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn id_of(b64: &str) -> String {
    gossipkv::parse_key(b64).unwrap().id().to_string()
}

fn key_ids(v: &Value) -> Vec<(String, bool)> {
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                k["primary"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn keygen_prints_one_line_that_parses_as_a_key() {
    let o = Command::new(BIN).arg("keygen").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "{text:?}");
    let key = gossipkv::parse_key(text.trim()).expect("a key");
    assert_eq!(gossipkv::key_to_base64(&key), text.trim());
    // A new key each time.
    assert_ne!(keygen(), text.trim());
}

#[test]
fn an_agent_with_a_keyring_file_serves_its_status_without_key_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.json");
    let p = path.to_str().unwrap();
    let agent = AgentProcess::start(&[
        "--node-id",
        "keyed-a",
        "--keyring-file",
        p,
        "--init-keyring",
        "--http-token",
        "t0ken",
    ]);
    assert_eq!(mode_of(&path), 0o600);
    let file = file_json(&path);
    let primary = file["primary"].as_str().unwrap().to_string();
    assert_eq!(file["keys"], json!([]));

    let (status, body) = agent.send("GET", "/v1/keyring", None);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&primary), "key material in {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["encryption"], "required");
    assert_eq!(v["persisted"], true);
    assert_eq!(v["members"], 0);
    assert_eq!(key_ids(&v), vec![(id_of(&primary), true)]);
    assert_eq!(v["keys"][0]["members_holding"], 0);
    assert!(v["stats"]["refused_unknown_key"].is_u64(), "{v}");

    // Behind the token like every other route.
    let o = Command::new(BIN)
        .args(["keyring", "list", "--http-addr", &agent.http])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));

    let o = agent.cli(&["keyring", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&id_of(&primary)), "{out}");
    assert!(out.contains("yes") && out.contains("0/0"), "{out}");
    assert!(out.contains("encryption required"), "{out}");
    assert!(!out.contains(&primary), "{out}");

    let (status, metrics) = agent.send("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("gossipkv_keyring_keys 1"), "{metrics}");
    assert!(
        metrics.contains("gossipkv_sealed_datagrams_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gossipkv_datagrams_refused_total{reason=\"unknown_key\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(&primary));
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn install_use_remove_rewrite_the_file_0600_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.json");
    let p = path.to_str().unwrap();
    let agent = AgentProcess::start(&["--keyring-file", p, "--init-keyring"]);
    let old = file_json(&path)["primary"].as_str().unwrap().to_string();
    let new = keygen();
    let (old_id, new_id) = (id_of(&old), id_of(&new));

    // Install (from stdin, as the README advises).
    let mut child = Command::new(BIN)
        .args(["keyring", "install", "-", "--http-addr", &agent.http])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), new.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("saved to the keyring file"),
        "{}",
        stdout(&o)
    );
    let file = file_json(&path);
    assert_eq!(file["primary"], old.as_str());
    assert_eq!(file["keys"], json!([new]));
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        key_ids(&agent.keyring()),
        vec![(old_id.clone(), true), (new_id.clone(), false)]
    );
    // Installing it again changes nothing.
    let (status, body) = agent.send(
        "POST",
        "/v1/keyring/install",
        Some(&json!({"key": new}).to_string()),
    );
    assert_eq!(status, 200, "{body}");

    // Use the new key.
    let o = agent.cli(&["keyring", "use", &new_id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = file_json(&path);
    assert_eq!(file["primary"], new.as_str());
    assert_eq!(file["keys"], json!([old]));
    assert_eq!(mode_of(&path), 0o600);

    // Remove the old one.
    let o = agent.cli(&["keyring", "remove", &old_id, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["id"], old_id.as_str());
    assert_eq!(v["persisted"], true);
    let file = file_json(&path);
    assert_eq!(file["primary"], new.as_str());
    assert_eq!(file["keys"], json!([]));
    assert_eq!(mode_of(&path), 0o600);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // The encryption setting changes in memory only.
    let o = agent.cli(&["keyring", "encryption", "permissive"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(agent.keyring()["encryption"], "permissive");
    assert_eq!(agent.terminate(), Some(0));

    // A restart reads the keyring back (and --init-keyring leaves an
    // existing file alone).
    let agent = AgentProcess::start(&[
        "--keyring-file",
        p,
        "--init-keyring",
        "--encryption",
        "permissive-sealing",
    ]);
    let v = agent.keyring();
    assert_eq!(key_ids(&v), vec![(new_id, true)]);
    assert_eq!(v["encryption"], "permissive-sealing");
    assert_eq!(file_json(&path)["primary"], new.as_str());
    assert_eq!(agent.terminate(), Some(0));
}

/// Asserts that `method route body` gets `status` and a JSON error `code`.
fn check(agent: &AgentProcess, method: &str, route: &str, body: &str, status: u16, code: &str) {
    let (s, b) = agent.send(method, route, Some(body));
    assert_eq!(s, status, "{method} {route} {body}: {b}");
    let v: Value = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"));
    assert_eq!(v["error"], code, "{method} {route} {body}: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[test]
fn bad_keyring_requests_get_json_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.json");
    let agent = AgentProcess::start(&[
        "--keyring-file",
        path.to_str().unwrap(),
        "--init-keyring",
        "--http-token",
        "s3cret",
    ]);
    let primary = id_of(file_json(&path)["primary"].as_str().unwrap());
    let other = id_of(&keygen());
    let install = "/v1/keyring/install";
    check(&agent, "POST", install, "{not json", 400, "invalid_json");
    check(&agent, "POST", install, "[]", 400, "invalid_body");
    check(
        &agent,
        "POST",
        install,
        r#"{"key": 5}"#,
        400,
        "invalid_body",
    );
    check(
        &agent,
        "POST",
        install,
        r#"{"key": "not base64!"}"#,
        400,
        "bad_key",
    );
    check(
        &agent,
        "POST",
        install,
        r#"{"key": "c2hvcnQ="}"#,
        400,
        "bad_key",
    );
    check(&agent, "POST", "/v1/keyring/use", "", 400, "invalid_json");
    check(
        &agent,
        "POST",
        "/v1/keyring/use",
        r#"{"id": "xyz"}"#,
        400,
        "bad_id",
    );
    check(
        &agent,
        "POST",
        "/v1/keyring/use",
        r#"{"id": "12345"}"#,
        400,
        "bad_id",
    );
    let unknown = json!({ "id": other }).to_string();
    check(
        &agent,
        "POST",
        "/v1/keyring/use",
        &unknown,
        404,
        "unknown_key",
    );
    check(
        &agent,
        "POST",
        "/v1/keyring/remove",
        &unknown,
        404,
        "unknown_key",
    );
    let own = json!({ "id": primary }).to_string();
    check(
        &agent,
        "POST",
        "/v1/keyring/remove",
        &own,
        409,
        "primary_key",
    );
    let enc = "/v1/keyring/encryption";
    check(&agent, "PUT", enc, r#"{"mode": "off"}"#, 400, "bad_mode");
    check(
        &agent,
        "PUT",
        enc,
        r#"{"level": "required"}"#,
        400,
        "invalid_body",
    );
    check(
        &agent,
        "POST",
        enc,
        r#"{"mode": "required"}"#,
        405,
        "method_not_allowed",
    );
    // The keyring holds at most MAX_KEYS keys.
    for _ in 1..gossipkv::MAX_KEYS {
        let body = json!({ "key": keygen() }).to_string();
        let (s, b) = agent.send("POST", install, Some(&body));
        assert_eq!(s, 200, "{b}");
    }
    check(
        &agent,
        "POST",
        install,
        &json!({ "key": keygen() }).to_string(),
        409,
        "keyring_full",
    );
    assert_eq!(
        file_json(&path)["keys"].as_array().unwrap().len(),
        gossipkv::MAX_KEYS - 1
    );
    // Without the token: 401, like every other route.
    let o = Command::new(BIN)
        .args(["keyring", "use", &primary, "--http-addr", &agent.http])
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unauthorized"), "{}", stderr(&o));
    // The CLI reports a refusal with exit 1 and the code.
    let o = agent.cli(&["keyring", "remove", &primary]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("primary_key"), "{}", stderr(&o));
    assert_eq!(agent.terminate(), Some(0));

    // An agent without a keyring file: no keyring, so no encryption to
    // change; an installed key applies in memory only.
    let agent = AgentProcess::start(&[]);
    let v = agent.keyring();
    assert_eq!(v["encryption"], Value::Null);
    assert_eq!(v["persisted"], false);
    let o = agent.cli(&["keyring", "list"]);
    assert!(stdout(&o).contains("no keyring"), "{}", stdout(&o));
    check(
        &agent,
        "PUT",
        enc,
        r#"{"mode": "required"}"#,
        409,
        "no_keyring",
    );
    let key = keygen();
    let (s, b) = agent.send("POST", install, Some(&json!({ "key": key }).to_string()));
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["persisted"], false);
    assert_eq!(v["id"], id_of(&key).as_str());
    let v = agent.keyring();
    assert_eq!(v["encryption"], "permissive");
    assert_eq!(key_ids(&v), vec![(id_of(&key), true)]);
    let (s, b) = agent.send("PUT", enc, Some(r#"{"mode": "permissive-sealing"}"#));
    assert_eq!(s, 200, "{b}");
    assert_eq!(agent.keyring()["encryption"], "permissive-sealing");
    assert_eq!(agent.terminate(), Some(0));
}

#[test]
fn unsafe_or_missing_keyring_files_stop_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.json");
    let key = keygen();
    std::fs::write(&path, json!({ "primary": key, "keys": [] }).to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = |args: &[&str]| agent_command(args).output().unwrap();

    let o = run(&["--keyring-file", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("readable by its group or others"), "{err}");
    assert!(err.contains("0644"), "{err}");
    assert!(!err.contains(&key), "{err}");
    assert!(!stdout(&o).contains("http listening"), "{}", stdout(&o));

    // Group-readable only is refused too.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let o = run(&["--keyring-file", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // From the environment as well.
    let o = agent_command(&[])
        .env("GOSSIPKV_KEYRING_FILE", &path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));

    // Not a keyring: refused without quoting it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, format!("{{\"primary\": \"{key}x\"}}")).unwrap();
    let o = run(&["--keyring-file", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a keyring"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(&key), "{}", stderr(&o));

    // Missing, without --init-keyring.
    let missing = dir.path().join("missing.json");
    let o = run(&["--keyring-file", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--init-keyring"), "{}", stderr(&o));
    assert!(!missing.exists());
    // --init-keyring without a file is a configuration error.
    let o = run(&["--init-keyring"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--keyring-file"), "{}", stderr(&o));
}

#[test]
fn keyed_agents_replicate_and_an_agent_with_another_key_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("a.json");
    let b_file = dir.path().join("b.json");
    let c_file = dir.path().join("c.json");
    let a = AgentProcess::start(&[
        "--node-id",
        "keyed-a",
        "--keyring-file",
        a_file.to_str().unwrap(),
        "--init-keyring",
    ]);
    // The same keyring for b (the copy keeps mode 0600).
    std::fs::copy(&a_file, &b_file).unwrap();
    let b = AgentProcess::start(&[
        "--node-id",
        "keyed-b",
        "--keyring-file",
        b_file.to_str().unwrap(),
        "--seed",
        &a.gossip,
    ]);
    // Another key for c.
    let c = AgentProcess::start(&[
        "--node-id",
        "other-c",
        "--keyring-file",
        c_file.to_str().unwrap(),
        "--init-keyring",
        "--seed",
        &a.gossip,
    ]);

    let o = a.cli(&["put", "secret", "shared"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_until("b to read the key written on a", || {
        let o = b.cli(&["get", "secret"]);
        o.status.success() && o.stdout == b"shared"
    });
    // a and b see each other as holding and sealing with their key.
    wait_until("a to see b sealing with the shared key", || {
        let v = a.keyring();
        v["members"] == 1
            && v["keys"][0]["members_holding"] == 1
            && v["keys"][0]["members_sealing"] == 1
    });
    let o = a.cli(&["keyring", "list"]);
    assert!(stdout(&o).contains("1/1"), "{}", stdout(&o));
    // c's datagrams reach a and are refused as sealed with an unknown key
    // (before decoding: a never learns of c, and never answers it).
    wait_until("a to refuse c's datagrams", || {
        a.keyring()["stats"]["refused_unknown_key"]
            .as_u64()
            .is_some_and(|n| n > 0)
    });
    // A second write reaches b; by then c still has neither.
    let o = a.cli(&["put", "secret2", "also"]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_until("b to read the second key", || {
        b.cli(&["get", "secret2"]).status.success()
    });
    for k in ["secret", "secret2"] {
        let o = c.cli(&["get", k]);
        assert_eq!(o.status.code(), Some(1), "c read {k}: {}", stdout(&o));
    }
    let v = c.keyring();
    assert_eq!(v["members"], 0, "{v}");
    assert_eq!(v["keys"][0]["members_holding"], 0, "{v}");
    assert_eq!(a.keyring()["members"], 1);
    let (_, metrics) = a.send("GET", "/metrics", None);
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("gossipkv_datagrams_refused_total{reason=\"unknown_key\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!refused.ends_with(" 0"), "{refused}");
    for agent in [c, b, a] {
        assert_eq!(agent.terminate(), Some(0));
    }
}
