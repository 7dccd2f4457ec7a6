//! The HTTP API, served on 127.0.0.1:0 by nodes bound to loopback:
//! status codes, bodies, headers, errors, auth, limits, and replication
//! between two agents.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gossipkv::{BytesCodec, GossipKv};
use gossipkv_agent::api::{self, ApiOptions, ApiState, Node};
use serde_json::Value;

/// One agent: a runtime, a node on loopback, its API on loopback.
struct Agent {
    rt: tokio::runtime::Runtime,
    kv: Node,
    state: ApiState,
    http: SocketAddr,
}

impl Agent {
    fn start(id: &str, seeds: &[SocketAddr], options: ApiOptions) -> Agent {
        let seeds: Vec<String> = seeds.iter().map(|s| s.to_string()).collect();
        Agent::start_with(id, options, move |b| {
            if seeds.is_empty() {
                b
            } else {
                b.seeds(seeds)
            }
        })
    }

    /// An agent whose node builder `configure` adjusts.
    fn start_with(
        id: &str,
        options: ApiOptions,
        configure: impl FnOnce(
            gossipkv::Builder<String, bytes::Bytes>,
        ) -> gossipkv::Builder<String, bytes::Bytes>,
    ) -> Agent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (kv, state, http) = rt.block_on(async {
            let b = GossipKv::builder_with_codec(BytesCodec)
                .node_id(id)
                .bind_addr("127.0.0.1:0")
                .gossip_interval(Duration::from_millis(50));
            let kv: Node = configure(b).build().await.unwrap();
            let state = ApiState::new(kv.clone(), &options);
            let app = api::router(state.clone(), &options);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            (kv, state, http)
        });
        Agent {
            rt,
            kv,
            state,
            http,
        }
    }

    fn simple() -> Agent {
        Agent::start("node-a", &[], ApiOptions::default())
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let kv = self.kv.clone();
        let _ = self.rt.block_on(kv.shutdown());
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} (status {})",
                String::from_utf8_lossy(&self.body),
                self.status
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error reply: this status, a JSON body with this code and
    /// a message.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let a = http();
    let mut resp = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                a.get(url)
            } else {
                a.delete(url)
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        _ => {
            let mut r = match method {
                "PUT" => a.put(url),
                _ => a.post(url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.unwrap_or_default())
        }
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(url: &str) -> Reply {
    send("GET", url, &[], None)
}

/// Sends raw bytes on a new connection and returns the status code and
/// body of the reply (for requests a well-behaved client cannot send).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[test]
fn legacy_routes() {
    let a = Agent::simple();
    let r = send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(br#"{"key":"color","value":"blue"}"#),
    );
    assert_eq!(r.status, 204);
    let r = get(&a.url("/get?key=color"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"key": "color", "value": "blue"})
    );
    // A non-string value is stored as its JSON text.
    let r = send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(br#"{"key":"n","value":{"a":1}}"#),
    );
    assert_eq!(r.status, 204);
    assert_eq!(get(&a.url("/get?key=n")).json()["value"], r#"{"a":1}"#);

    let r = send("POST", &a.url("/set/size/XL"), &[], None);
    assert_eq!(r.status, 204);
    assert_eq!(a.kv.get("size").unwrap().as_deref(), Some(&b"XL"[..]));

    let r = send("DELETE", &a.url("/delete?key=color"), &[], None);
    assert_eq!(r.status, 204);
    get(&a.url("/get?key=color")).assert_error(404, "not_found");

    // Bad requests.
    send("PUT", &a.url("/put"), &[], Some(b"{\"key\":")).assert_error(400, "invalid_json");
    send("PUT", &a.url("/put"), &[], Some(b"[1,2]")).assert_error(400, "invalid_body");
    send("PUT", &a.url("/put"), &[], Some(br#"{"value":"v"}"#)).assert_error(400, "missing_key");
    send("PUT", &a.url("/put"), &[], Some(br#"{"key":""}"#)).assert_error(400, "missing_value");
    send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(br#"{"key":"","value":"v"}"#),
    )
    .assert_error(400, "invalid_key");
    send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(br#"{"key":5,"value":"v"}"#),
    )
    .assert_error(400, "invalid_key");
    get(&a.url("/get")).assert_error(400, "missing_key");
    send("DELETE", &a.url("/delete"), &[], None).assert_error(400, "missing_key");
    // Too large: over the body limit (2 MiB by default), refused before
    // the body is sent (a client that sends it all first may see the
    // connection reset instead of the reply: the agent does not read it).
    let (status, body) = raw(
        a.http,
        b"PUT /put HTTP/1.1\r\nHost: x\r\nContent-Length: 3145728\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"too_large\""), "{body}");
}

#[test]
fn kv_values_are_base64_with_versions_and_raw_mode() {
    let a = Agent::simple();
    let value: &[u8] = b"\x00\xffbinary<html>";
    let r = send("PUT", &a.url("/v1/kv/app/bin"), &[], Some(value));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let put = r.json();
    assert_eq!(put["key"], "app/bin");
    assert!(put.get("value").is_none(), "{put}");

    let r = get(&a.url("/v1/kv/app/bin"));
    assert_eq!(r.status, 200);
    let entries = r.json();
    let e = &entries[0];
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(b64(e["value"].as_str().unwrap()), value);
    assert_eq!(e["node"], "node-a");
    assert_eq!(e["seq"], 1);
    assert_eq!(e["ephemeral"], false);
    assert!(e["ttl_ms"].is_null());
    let version = e["version"].as_str().unwrap().to_string();
    assert_eq!(put["version"], version.as_str());
    assert_eq!(r.header("etag"), Some(format!("\"{version}\"").as_str()));

    let r = get(&a.url("/v1/kv/app/bin?raw"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, value);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));

    // A second write: a new version.
    send("PUT", &a.url("/v1/kv/app/bin"), &[], Some(b"v2"));
    let e2 = get(&a.url("/v1/kv/app/bin")).json();
    assert_ne!(e2[0]["version"], version.as_str());
    assert_eq!(e2[0]["seq"], 2);

    get(&a.url("/v1/kv/app/none")).assert_error(404, "not_found");
    get(&a.url("/v1/kv/app/none?raw")).assert_error(404, "not_found");
}

#[test]
fn kv_recurse_keys_separator_and_recursive_delete() {
    let a = Agent::simple();
    for k in ["app/a", "app/b/1", "app/b/2", "other"] {
        assert_eq!(
            send(
                "PUT",
                &a.url(&format!("/v1/kv/{k}")),
                &[],
                Some(k.as_bytes())
            )
            .status,
            200
        );
    }
    let r = get(&a.url("/v1/kv/app/?recurse"));
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/a", "app/b/1", "app/b/2"]);
    assert_eq!(
        get(&a.url("/v1/kv/app/?keys")).json(),
        serde_json::json!(["app/a", "app/b/1", "app/b/2"])
    );
    assert_eq!(
        get(&a.url("/v1/kv/app/?keys&separator=/")).json(),
        serde_json::json!(["app/a", "app/b/"])
    );
    assert_eq!(
        get(&a.url("/v1/kv/?keys&separator=/")).json(),
        serde_json::json!(["app/", "other"])
    );
    assert_eq!(
        get(&a.url("/v1/kv?keys")).json().as_array().unwrap().len(),
        4
    );
    get(&a.url("/v1/kv/zzz?keys")).assert_error(404, "not_found");
    get(&a.url("/v1/kv/zzz?recurse")).assert_error(404, "not_found");
    get(&a.url("/v1/kv/app?recurse&raw")).assert_error(400, "bad_request");
    get(&a.url("/v1/kv/")).assert_error(400, "invalid_key");

    assert_eq!(
        send("DELETE", &a.url("/v1/kv/app/b/?recurse"), &[], None).status,
        204
    );
    assert_eq!(a.kv.keys(), ["app/a", "other"]);
    assert_eq!(
        send("DELETE", &a.url("/v1/kv/other"), &[], None).status,
        204
    );
    assert_eq!(a.kv.keys(), ["app/a"]);
    // Deleting what is not there is fine.
    assert_eq!(
        send("DELETE", &a.url("/v1/kv/other"), &[], None).status,
        204
    );
}

#[test]
fn kv_put_ttl_and_ephemeral() {
    let a = Agent::simple();
    assert_eq!(
        send("PUT", &a.url("/v1/kv/t?ttl=30s"), &[], Some(b"1")).status,
        200
    );
    let ttl = a.kv.ttl("t").expect("has a ttl");
    assert!(
        ttl > Duration::from_secs(25) && ttl <= Duration::from_secs(30),
        "{ttl:?}"
    );
    assert!(!a.kv.get_record("t").unwrap().lifetime.ephemeral);
    let e = get(&a.url("/v1/kv/t")).json();
    assert!(e[0]["ttl_ms"].as_u64().unwrap() > 25_000, "{e}");

    assert_eq!(
        send("PUT", &a.url("/v1/kv/e?ephemeral"), &[], Some(b"1")).status,
        200
    );
    assert!(a.kv.get_record("e").unwrap().lifetime.ephemeral);
    assert_eq!(a.kv.ttl("e"), None);
    assert_eq!(get(&a.url("/v1/kv/e")).json()[0]["ephemeral"], true);

    assert_eq!(
        send(
            "PUT",
            &a.url("/v1/kv/both?ephemeral&ttl=1m"),
            &[],
            Some(b"1")
        )
        .status,
        200
    );
    assert!(a.kv.get_record("both").unwrap().lifetime.ephemeral);
    assert!(a.kv.ttl("both").unwrap() > Duration::from_secs(50));

    // ?ephemeral=false is a plain write.
    assert_eq!(
        send("PUT", &a.url("/v1/kv/p?ephemeral=false"), &[], Some(b"1")).status,
        200
    );
    assert!(!a.kv.get_record("p").unwrap().lifetime.ephemeral);

    send("PUT", &a.url("/v1/kv/x?ttl=soon"), &[], Some(b"1")).assert_error(400, "invalid_ttl");
    send("PUT", &a.url("/v1/kv/x?ttl=0s"), &[], Some(b"1")).assert_error(400, "invalid_ttl");
    send("PUT", &a.url("/v1/kv/x?ttl=1000years"), &[], Some(b"1")).assert_error(400, "invalid_ttl");
    assert!(a.kv.get("x").unwrap().is_none());
}

#[test]
fn if_match_is_checked_against_the_local_replica() {
    let a = Agent::simple();
    // `*` needs the key to exist.
    send("PUT", &a.url("/v1/kv/c"), &[("If-Match", "*")], Some(b"1"))
        .assert_error(412, "version_mismatch");
    assert_eq!(send("PUT", &a.url("/v1/kv/c"), &[], Some(b"1")).status, 200);
    let v1 = get(&a.url("/v1/kv/c")).json()[0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        send("PUT", &a.url("/v1/kv/c"), &[("If-Match", "*")], Some(b"2")).status,
        200
    );
    // v1 is stale now.
    send("PUT", &a.url("/v1/kv/c"), &[("If-Match", &v1)], Some(b"3"))
        .assert_error(412, "version_mismatch");
    assert_eq!(a.kv.get("c").unwrap().as_deref(), Some(&b"2"[..]));
    let v2 = get(&a.url("/v1/kv/c")).json()[0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    // The current version, quoted like an ETag, holds.
    let quoted = format!("\"{v2}\"");
    assert_eq!(
        send(
            "PUT",
            &a.url("/v1/kv/c"),
            &[("If-Match", &quoted)],
            Some(b"4")
        )
        .status,
        200
    );
    assert_eq!(a.kv.get("c").unwrap().as_deref(), Some(&b"4"[..]));
    // Conditional delete.
    send("DELETE", &a.url("/v1/kv/c"), &[("If-Match", &v2)], None)
        .assert_error(412, "version_mismatch");
    let v3 = get(&a.url("/v1/kv/c")).json()[0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        send("DELETE", &a.url("/v1/kv/c"), &[("If-Match", &v3)], None).status,
        204
    );
    assert!(a.kv.get("c").unwrap().is_none());
    send(
        "DELETE",
        &a.url("/v1/kv/?recurse"),
        &[("If-Match", "*")],
        None,
    )
    .assert_error(400, "bad_request");
}

/// A counter that six clients increment with read, then `If-Match` write
/// (retrying on 412), beside clients writing other keys unconditionally,
/// on a node with a data dir (each write waits for its commit, so a check
/// and its write are far apart): no increment is lost, and every write is
/// on disk when its reply comes.
#[test]
fn conditional_writes_stay_atomic_beside_unconditional_ones_on_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let a = Agent::start_with("node-cas", ApiOptions::default(), move |b| b.data_dir(path));
    assert_eq!(send("PUT", &a.url("/v1/kv/n"), &[], Some(b"0")).status, 200);
    const CLIENTS: usize = 6;
    const INCREMENTS: usize = 40;
    let conflicts = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (a, conflicts) = (&a, &conflicts);
            s.spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut done = 0;
                while done < INCREMENTS {
                    assert!(Instant::now() < deadline, "client {c}: no progress");
                    let entry = get(&a.url("/v1/kv/n")).json()[0].clone();
                    let version = entry["version"].as_str().unwrap().to_string();
                    let value = base64::engine::general_purpose::STANDARD
                        .decode(entry["value"].as_str().unwrap())
                        .unwrap();
                    let n: usize = std::str::from_utf8(&value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    let r = send(
                        "PUT",
                        &a.url("/v1/kv/n"),
                        &[("If-Match", &version)],
                        Some(next.as_bytes()),
                    );
                    match r.status {
                        200 => done += 1,
                        412 => {
                            conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        other => panic!("client {c}: status {other}"),
                    }
                }
            });
            s.spawn(move || {
                for i in 0..INCREMENTS {
                    let url = a.url(&format!("/v1/kv/other/{c}/{i}"));
                    assert_eq!(send("PUT", &url, &[], Some(b"x")).status, 200);
                }
            });
        }
    });
    let total = (CLIENTS * INCREMENTS).to_string();
    assert_eq!(a.kv.get("n").unwrap().as_deref(), Some(total.as_bytes()));
    assert_eq!(a.kv.keys().len(), 1 + CLIENTS * INCREMENTS);
    let stats = a.kv.durable_stats().expect("a data dir");
    assert_eq!(stats.pending, 0, "every acknowledged write committed");
    // The agent shows the data directory's counters.
    let s = get(&a.url("/v1/self")).json();
    assert_eq!(s["durable"]["pending"], 0, "{s}");
    assert!(
        s["durable"]["commits"]
            .as_u64()
            .is_some_and(|c| c >= stats.commits),
        "{s}"
    );
    let text = String::from_utf8(get(&a.url("/metrics")).body).unwrap();
    for line in [
        "gossipkv_durable_pending 0",
        "gossipkv_durable_commit_failures_total 0",
        "# TYPE gossipkv_durable_commits_total counter",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    eprintln!(
        "{} conflicts; {} commits for {} records",
        conflicts.into_inner(),
        stats.commits,
        stats.records_written
    );
}

/// An API served on a current-thread runtime (where blocking in place is
/// not allowed) still writes to a data dir, off its one thread.
#[test]
fn writes_on_a_data_dir_work_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kv: Node = GossipKv::builder_with_codec(BytesCodec)
            .node_id("node-ct")
            .data_dir(dir.path())
            .build()
            .await
            .unwrap();
        let options = ApiOptions::default();
        let app = api::router(ApiState::new(kv.clone(), &options), &options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/kv/k", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let status = tokio::task::spawn_blocking(move || send("PUT", &url, &[], Some(b"v")).status)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(kv.durable_stats().unwrap().pending, 0);
        assert_eq!(kv.get("k").unwrap().as_deref(), Some(&b"v"[..]));
        kv.shutdown().await.unwrap();
    });
}

/// On a data dir, an import and a recursive delete wait for the disk once
/// each, not once per key, and are on disk when answered.
#[test]
fn imports_and_recursive_deletes_share_commits_on_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let a = Agent::start_with("node-bulk", ApiOptions::default(), move |b| {
        b.data_dir(path)
    });
    let body: serde_json::Map<String, Value> = (0..500)
        .map(|i| (format!("bulk/{i:03}"), Value::from(format!("v{i}"))))
        .collect();
    let before = a.kv.durable_stats().unwrap().commits;
    // The background sweep commits every 10 ms meanwhile; one commit per
    // key would be 500.
    let bound = |took: Duration| (took.as_millis() as u64 / 10 + 3).min(499);
    let started = Instant::now();
    let r = send(
        "POST",
        &a.url("/v1/snapshot"),
        &[],
        Some(Value::Object(body).to_string().as_bytes()),
    );
    let took = started.elapsed();
    assert_eq!(r.json()["imported"], 500);
    let stats = a.kv.durable_stats().unwrap();
    assert_eq!((stats.pending, a.kv.len()), (0, 500));
    let commits = stats.commits - before;
    assert!(
        commits <= bound(took),
        "{commits} commits for 500 keys in {took:?}"
    );
    let started = Instant::now();
    assert_eq!(
        send("DELETE", &a.url("/v1/kv/bulk/?recurse"), &[], None).status,
        204
    );
    let took = started.elapsed();
    let after = a.kv.durable_stats().unwrap();
    assert_eq!((after.pending, a.kv.len()), (0, 0));
    let commits = after.commits - stats.commits;
    assert!(
        commits <= bound(took),
        "{commits} commits for 500 deletes in {took:?}"
    );
}

#[test]
fn a_token_is_required_when_configured() {
    let a = Agent::start(
        "node-t",
        &[],
        ApiOptions {
            token: Some("s3cret".into()),
            ..ApiOptions::default()
        },
    );
    get(&a.url("/v1/kv/k")).assert_error(401, "unauthorized");
    send(
        "GET",
        &a.url("/v1/self"),
        &[("Authorization", "Bearer wrong")],
        None,
    )
    .assert_error(401, "unauthorized");
    send(
        "GET",
        &a.url("/v1/self"),
        &[("Authorization", "Bearer s3cret-longer")],
        None,
    )
    .assert_error(401, "unauthorized");
    send(
        "GET",
        &a.url("/v1/self"),
        &[("Authorization", "s3cret")],
        None,
    )
    .assert_error(401, "unauthorized");
    send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(br#"{"key":"k","value":"v"}"#),
    )
    .assert_error(401, "unauthorized");
    get(&a.url("/metrics")).assert_error(401, "unauthorized");
    assert!(a.kv.get("k").unwrap().is_none());
    let ok = send(
        "GET",
        &a.url("/v1/self"),
        &[("Authorization", "Bearer s3cret")],
        None,
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["node_id"], "node-t");
    let ok = send(
        "GET",
        &a.url("/v1/self"),
        &[("authorization", "bearer s3cret")],
        None,
    );
    assert_eq!(ok.status, 200);
    // Health probes need no token.
    assert_eq!(get(&a.url("/v1/health")).status, 200);
    assert_eq!(get(&a.url("/v1/health/ready")).status, 200);
}

#[test]
fn malformed_requests_get_json_4xx_never_5xx() {
    let a = Agent::start(
        "node-m",
        &[],
        ApiOptions {
            max_body: 4096,
            ..ApiOptions::default()
        },
    );
    let cases: Vec<(&str, String, Option<Vec<u8>>)> = vec![
        ("GET", a.url("/nope"), None),
        ("GET", a.url("/v1/kvx"), None),
        ("POST", a.url("/v1/kv/k"), Some(b"x".to_vec())),
        ("PUT", a.url("/v1/members"), Some(b"x".to_vec())),
        ("GET", a.url("/v1/kv/%FF%FE"), None),
        ("PUT", a.url("/v1/kv/%FF"), Some(b"x".to_vec())),
        ("PUT", a.url("/v1/kv/k"), Some(vec![b'x'; 5000])),
        ("PUT", a.url("/put"), Some(vec![b'{'; 5000])),
        ("PUT", a.url("/put"), Some(b"\xff\xfe".to_vec())),
        ("PUT", a.url("/put"), Some(b"null".to_vec())),
        ("GET", a.url("/get?key=%FF"), None),
        ("GET", a.url("/get?key"), None),
        ("GET", a.url("/v1/kv/k?raw=%"), None),
        ("POST", a.url("/set/a%FF/b"), None),
        (
            "PUT",
            a.url(&format!("/v1/kv/{}", "k".repeat(5000))),
            Some(b"v".to_vec()),
        ),
        ("GET", a.url("/v1/health/ready/x"), None),
    ];
    for (method, url, body) in cases {
        let r = send(method, &url, &[], body.as_deref());
        assert!(
            (400..500).contains(&r.status),
            "{method} {url}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    }
    send("PUT", &a.url("/v1/kv/k"), &[], Some(&[b'x'; 5000])).assert_error(413, "too_large");
    get(&a.url("/v1/kv/%FF%FE")).assert_error(400, "bad_request");
    send("POST", &a.url("/v1/kv/k"), &[], Some(b"x")).assert_error(405, "method_not_allowed");
    get(&a.url("/nope")).assert_error(404, "not_found");

    // Requests a polite client would not send: a huge declared body is
    // refused before it comes; a chunked one as soon as it passes the limit.
    let (status, body) = raw(
        a.http,
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\nConnection: close\r\n\r\nabc",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");
    let mut chunked =
        b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    // One chunk of 4097 bytes: just over the limit (the whole request fits
    // one read, so the agent leaves nothing unread).
    chunked.extend_from_slice(b"1001\r\n");
    chunked.extend_from_slice(&[b'y'; 0x1001]);
    chunked.extend_from_slice(b"\r\n");
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw(a.http, &chunked);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");
    let (status, _) = raw(
        a.http,
        b"GET /v1/kv/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!((400..500).contains(&status), "{status}");
    let (status, _) = raw(
        a.http,
        b"BREW /pot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!((400..500).contains(&status), "{status}");
    let (status, _) = raw(a.http, b"GARBAGE\r\n\r\n");
    assert!((400..500).contains(&status), "{status}");
    // The agent still serves.
    assert_eq!(get(&a.url("/v1/health")).status, 200);
}

#[test]
fn members_self_health_and_metrics() {
    let a = Agent::simple();
    let m = get(&a.url("/v1/members")).json();
    let m0 = &m[0];
    assert_eq!(m0["node_id"], "node-a");
    assert_eq!(m0["state"], "alive");
    assert_eq!(m0["addr"], a.kv.local_addr().unwrap().to_string());
    assert_eq!(m0["generation"], a.kv.generation());

    let s = get(&a.url("/v1/self")).json();
    assert_eq!(s["node_id"], "node-a");
    assert_eq!(s["synced"], true);
    assert_eq!(s["memory"]["evicted"], 0, "{s}");
    assert!(s["durable"].is_null(), "no data dir: {s}");
    assert_eq!(get(&a.url("/v1/health")).json()["status"], "live");
    assert_eq!(get(&a.url("/v1/health/ready")).json()["status"], "ready");

    send("PUT", &a.url("/v1/kv/k"), &[], Some(b"v"));
    get(&a.url("/v1/kv/none"));
    let r = get(&a.url("/metrics"));
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for line in [
        "gossipkv_keys 1",
        "gossipkv_members{state=\"alive\"} 1",
        "gossipkv_members{state=\"dead\"} 0",
        "# TYPE gossipkv_datagrams_sent_total counter",
        "gossipkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"PUT\",status=\"200\"} 1",
        "gossipkv_http_requests_total{route=\"/v1/kv/{*key}\",method=\"GET\",status=\"404\"} 1",
        "# TYPE gossipkv_change_index gauge",
        "gossipkv_watch_missed_total 0",
        "gossipkv_watch_resets_total 0",
        "gossipkv_errors_dropped_total 0",
        "# TYPE gossipkv_datagrams_sent_by_kind_total counter",
        "gossipkv_bytes_received_by_kind_total{kind=\"push\"} 0",
        "gossipkv_evictions_total 0",
        "gossipkv_writes_refused_over_budget_total 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("gossipkv_durable_"), "no data dir:\n{text}");
}

#[test]
fn leave_shuts_the_node_down() {
    let a = Agent::simple();
    let r = send("POST", &a.url("/v1/leave"), &[], None);
    assert_eq!(r.status, 200);
    assert!(a.kv.is_closed());
    // The agent's main loop is told.
    a.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), a.state.left())
            .await
            .expect("left() resolves");
    });
    send("PUT", &a.url("/v1/kv/k"), &[], Some(b"v")).assert_error(503, "shutting_down");
    get(&a.url("/v1/health/ready")).assert_error(503, "shutting_down");
}

#[test]
fn too_many_requests_in_flight_get_503() {
    let a = Agent::start(
        "node-c",
        &[],
        ApiOptions {
            max_concurrent: 1,
            ..ApiOptions::default()
        },
    );
    // A request whose body never comes holds the only slot.
    let start_stuck = || {
        let mut s = TcpStream::connect(a.http).unwrap();
        s.write_all(b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
            .unwrap();
        s
    };
    let mut stuck = start_stuck();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&a.url("/v1/self"));
        if r.status == 503 {
            r.assert_error(503, "overloaded");
            break;
        }
        // The slow request may have met this one in the only slot and been
        // refused itself (an answer came): start another.
        stuck.set_nonblocking(true).unwrap();
        let answered = !matches!(
            stuck.peek(&mut [0u8; 1]),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        stuck.set_nonblocking(false).unwrap();
        if answered {
            stuck = start_stuck();
        }
        assert!(Instant::now() < deadline, "never overloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Once the slow request ends, the agent serves again.
    stuck.write_all(b"cdefghij").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&a.url("/v1/self")).status != 200 {
        assert!(Instant::now() < deadline, "still overloaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(a.kv.get("k").unwrap().as_deref(), Some(&b"abcdefghij"[..]));
}

#[test]
fn watch_streams_puts_and_deletes() {
    let a = Agent::simple();
    let mut resp = http().get(&a.url("/v1/watch?prefix=w/")).call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut lines = BufReader::new(resp.body_mut().as_reader()).lines();
    send("PUT", &a.url("/v1/kv/other"), &[], Some(b"no"));
    send("PUT", &a.url("/v1/kv/w/1"), &[], Some(b"yes"));
    send("DELETE", &a.url("/v1/kv/w/1"), &[], None);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let line = lines.next().expect("stream open").expect("read");
        if line.starts_with("event:") || line.starts_with("data:") {
            seen.push(line);
        }
    }
    assert_eq!(seen[0], "event: put");
    let data: Value = serde_json::from_str(seen[1].trim_start_matches("data:").trim()).unwrap();
    assert_eq!(data["key"], "w/1");
    assert_eq!(b64(data["value"].as_str().unwrap()), b"yes");
    assert_eq!(seen[2], "event: delete");
    let data: Value = serde_json::from_str(seen[3].trim_start_matches("data:").trim()).unwrap();
    assert_eq!(data, serde_json::json!({"key": "w/1", "reason": "deleted"}));
}

#[test]
fn a_write_through_one_agent_is_read_through_another() {
    let a = Agent::start("node-1", &[], ApiOptions::default());
    let b = Agent::start(
        "node-2",
        &[a.kv.local_addr().unwrap()],
        ApiOptions::default(),
    );
    let r = send("PUT", &a.url("/v1/kv/shared/x"), &[], Some(b"hello"));
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&b.url("/v1/kv/shared/x?raw"));
        if r.status == 200 {
            assert_eq!(r.body, b"hello");
            break;
        }
        assert_eq!(r.status, 404);
        assert!(Instant::now() < deadline, "not replicated in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both agents list both members.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = get(&b.url("/v1/members")).json();
        let alive = m
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive")
            .count();
        if alive == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "members: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // b's traffic by kind matches what its node counted, kind by kind.
    let text = String::from_utf8(get(&b.url("/metrics")).body).unwrap();
    let stats = b.kv.stats();
    let value = |line: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
    };
    let syns = value("gossipkv_datagrams_sent_by_kind_total{kind=\"syn\"}");
    assert!(syns > 0, "b sent Syns to a");
    assert!(syns <= stats.sent_by_kind[gossipkv::MessageKind::Syn as usize].datagrams);
    let received: u64 = gossipkv::MessageKind::ALL
        .iter()
        .map(|k| {
            value(&format!(
                "gossipkv_datagrams_received_by_kind_total{{kind=\"{}\"}}",
                k.name()
            ))
        })
        .sum();
    assert!(received > 0 && received <= b.kv.stats().datagrams_received);
}

#[test]
fn snapshot_export_and_import() {
    let a = Agent::simple();
    send("PUT", &a.url("/v1/kv/s/plain"), &[], Some(b"one"));
    send("PUT", &a.url("/v1/kv/s/bin"), &[], Some(b"\x00\x01\xff"));
    send("PUT", &a.url("/v1/kv/s/ttl?ttl=1h"), &[], Some(b"t"));
    let r = get(&a.url("/v1/snapshot"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["key"], "s/bin");

    let b = Agent::start("node-b", &[], ApiOptions::default());
    let r = send("POST", &b.url("/v1/snapshot"), &[], Some(&r.body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["imported"], 3);
    assert_eq!(b.kv.get("s/plain").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(
        b.kv.get("s/bin").unwrap().as_deref(),
        Some(&b"\x00\x01\xff"[..])
    );
    let ttl = b.kv.ttl("s/ttl").expect("the time to live comes along");
    assert!(ttl > Duration::from_secs(3500), "{ttl:?}");

    // The earlier system's flat object.
    let r = send(
        "POST",
        &b.url("/v1/snapshot"),
        &[],
        Some(br#"{"x": "1", "y": {"z": 2}}"#),
    );
    assert_eq!(r.json()["imported"], 2);
    assert_eq!(b.kv.get("x").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(b.kv.get("y").unwrap().as_deref(), Some(&br#"{"z":2}"#[..]));

    // Bad input: nothing is written, not even the good lines before it.
    let bad = b"{\"key\":\"ok\",\"value\":\"b2s=\"}\n{\"key\":\"k\",\"value\":\"%%%\"}\n";
    send("POST", &b.url("/v1/snapshot"), &[], Some(bad)).assert_error(400, "invalid_base64");
    assert!(b.kv.get("ok").unwrap().is_none());
    let bad = b"{\"key\":\"ok\",\"value\":\"b2s=\"}\nnot json\n";
    send("POST", &b.url("/v1/snapshot"), &[], Some(bad)).assert_error(400, "invalid_json");
    let bad = b"{\"key\":\"ok\",\"value\":\"b2s=\"}\n[1]\n";
    send("POST", &b.url("/v1/snapshot"), &[], Some(bad)).assert_error(400, "invalid_body");
    let bad =
        b"{\"key\":\"ok\",\"value\":\"b2s=\",\"ttl_ms\":\"x\"}\n{\"key\":\"a\",\"value\":\"\"}";
    send("POST", &b.url("/v1/snapshot"), &[], Some(bad)).assert_error(400, "invalid_ttl");
    send("POST", &b.url("/v1/snapshot"), &[], Some(b"\xff\xfe")).assert_error(400, "invalid_body");
    send(
        "POST",
        &b.url("/v1/snapshot"),
        &[],
        Some(br#"{"": "empty key"}"#),
    )
    .assert_error(400, "invalid_key");
    assert!(b.kv.get("ok").unwrap().is_none());
}

#[test]
fn long_poll_reads_wait_for_the_next_change() {
    let a = Agent::simple();
    send("PUT", &a.url("/v1/kv/lp"), &[], Some(b"1"));
    let r = get(&a.url("/v1/kv/lp"));
    let index: u64 = r.header("x-gossipkv-index").unwrap().parse().unwrap();
    // Absent keys carry the index too.
    assert!(get(&a.url("/v1/kv/none"))
        .header("x-gossipkv-index")
        .is_some());

    // Nothing changes: the wait runs out and the current data comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut current = index;
    loop {
        // Catch up with the change counter first (it follows the node's
        // changes asynchronously).
        let started = Instant::now();
        let r = get(&a.url(&format!("/v1/kv/lp?index={current}&wait=300ms")));
        assert_eq!(r.status, 200);
        let next: u64 = r.header("x-gossipkv-index").unwrap().parse().unwrap();
        if next == current {
            assert!(started.elapsed() >= Duration::from_millis(290));
            break;
        }
        current = next;
        assert!(Instant::now() < deadline, "the index never settled");
    }

    // A change ends the wait early.
    let url = a.url(&format!("/v1/kv/lp?index={current}&wait=60s"));
    let started = Instant::now();
    let waiter = std::thread::spawn(move || get(&url));
    std::thread::sleep(Duration::from_millis(100));
    send("PUT", &a.url("/v1/kv/lp"), &[], Some(b"2"));
    let r = waiter.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(r.status, 200);
    assert_eq!(b64(r.json()[0]["value"].as_str().unwrap()), b"2");
    let next: u64 = r.header("x-gossipkv-index").unwrap().parse().unwrap();
    assert!(next > current);

    get(&a.url("/v1/kv/lp?index=x")).assert_error(400, "invalid_index");
    get(&a.url("/v1/kv/lp?index=1&wait=x")).assert_error(400, "invalid_wait");
}

#[test]
fn a_shutdown_ends_long_poll_waits() {
    // One request at a time: while the long poll waits, others get a 503,
    // which tells that it is under way.
    let a = Agent::start(
        "node-lp",
        &[],
        ApiOptions {
            max_concurrent: 1,
            ..ApiOptions::default()
        },
    );
    let url = a.url("/v1/kv/lp?index=1000000&wait=600s");
    // The poll may meet the health checks below in the only slot: then it
    // got a 503 and tries again.
    let waiter = std::thread::spawn(move || loop {
        let r = get(&url);
        if r.status != 503 {
            return r;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&a.url("/v1/health")).status != 503 {
        assert!(Instant::now() < deadline, "the long poll never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    a.rt.block_on(a.kv.shutdown()).unwrap();
    let r = waiter.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    r.assert_error(404, "not_found");
    assert!(r.header("x-gossipkv-index").is_some());
}

#[test]
fn node_limits_map_to_413_and_507() {
    let a = Agent::start_with("node-l", ApiOptions::default(), |b| {
        b.max_value_size(16).max_entries(2)
    });
    send("PUT", &a.url("/v1/kv/big"), &[], Some(&[b'v'; 17])).assert_error(413, "too_large");
    send(
        "PUT",
        &a.url("/put"),
        &[],
        Some(format!("{{\"key\":\"big\",\"value\":\"{}\"}}", "v".repeat(17)).as_bytes()),
    )
    .assert_error(413, "too_large");
    assert_eq!(send("PUT", &a.url("/v1/kv/a"), &[], Some(b"1")).status, 200);
    assert_eq!(send("PUT", &a.url("/v1/kv/b"), &[], Some(b"1")).status, 200);
    // Full: a new key is refused (the node's default policy), with the
    // storage status; overwriting a key is not a new entry.
    send("PUT", &a.url("/v1/kv/c"), &[], Some(b"1")).assert_error(507, "over_budget");
    assert_eq!(send("PUT", &a.url("/v1/kv/a"), &[], Some(b"2")).status, 200);
    let long_key = "k".repeat(gossipkv::MAX_KEY_LEN + 1);
    send(
        "PUT",
        &a.url(&format!("/v1/kv/{long_key}")),
        &[],
        Some(b"1"),
    )
    .assert_error(400, "invalid_key");
}

/// Reads `n` events (`event`, `id`, `data`) of a watch stream opened with
/// these headers.
fn watch_events(
    a: &Agent,
    query: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<(String, String, Value)> {
    let mut req = http().get(&a.url(&format!("/v1/watch?{query}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let lines = BufReader::new(resp.body_mut().as_reader()).lines();
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    let mut out = Vec::new();
    for line in lines {
        let line = line.expect("stream open");
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data = v.trim().to_string();
        } else if line.is_empty() && !event.is_empty() {
            out.push((
                std::mem::take(&mut event),
                std::mem::take(&mut id),
                serde_json::from_str(&data).unwrap(),
            ));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

/// Waits until the agent's change index reaches `n`.
fn wait_index(a: &Agent, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.state.index() < n {
        assert!(Instant::now() < deadline, "index {} < {n}", a.state.index());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn watch_streams_resume_after_last_event_id() {
    let a = Agent::simple();
    for k in ["w/1", "w/2", "other", "w/3"] {
        assert_eq!(
            send(
                "PUT",
                &a.url(&format!("/v1/kv/{k}")),
                &[],
                Some(k.as_bytes())
            )
            .status,
            200
        );
    }
    wait_index(&a, 4);
    // Resuming after change 1: the later changes under the prefix, with
    // their ids, then the live ones.
    let events = watch_events(&a, "prefix=w/", &[("Last-Event-ID", "1")], 2);
    assert_eq!(events[0].0, "put");
    assert_eq!(events[0].1, "2");
    assert_eq!(events[0].2["key"], "w/2");
    assert_eq!(events[1].1, "4");
    assert_eq!(events[1].2["key"], "w/3");
    // Up to date: nothing replayed; the next change comes live.
    let b = a.url("/v1/kv/w/4");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        send("PUT", &b, &[], Some(b"4"))
    });
    let events = watch_events(&a, "prefix=w/", &[("Last-Event-ID", "4")], 1);
    assert_eq!(writer.join().unwrap().status, 200);
    assert_eq!(
        (events[0].1.as_str(), &events[0].2["key"]),
        ("5", &Value::from("w/4"))
    );
    // An id from the future (another agent's): a reset first.
    let events = watch_events(&a, "prefix=w/", &[("Last-Event-ID", "999")], 1);
    assert_eq!(events[0].0, "reset");
    assert_eq!(events[0].1, "");
    assert_eq!(events[0].2["reason"], "resume");
    // Further back than the agent keeps: a reset first.
    for i in 0..gossipkv_agent::changes::RECENT_CHANGES + 10 {
        a.kv.set(format!("x/{i}"), bytes::Bytes::from_static(b"x"))
            .unwrap();
    }
    wait_index(&a, 5 + gossipkv_agent::changes::RECENT_CHANGES as u64 + 10);
    let events = watch_events(&a, "prefix=w/", &[("Last-Event-ID", "1")], 1);
    assert_eq!(events[0].0, "reset");
    // Not a number: 400.
    let r = send(
        "GET",
        &a.url("/v1/watch"),
        &[("Last-Event-ID", "abc")],
        None,
    );
    r.assert_error(400, "invalid_last_event_id");
    // Both resets are counted.
    let text = String::from_utf8(get(&a.url("/metrics")).body).unwrap();
    assert!(text.contains("gossipkv_watch_resets_total 2\n"), "{text}");
}

#[test]
fn status_page_is_served_without_a_token() {
    let a = Agent::start(
        "node-ui",
        &[],
        ApiOptions {
            token: Some("s3cret".into()),
            ..ApiOptions::default()
        },
    );
    let r = get(&a.url("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("<script src=\"/ui.js\"></script>"), "{html}");
    let r = get(&a.url("/ui.js"));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(String::from_utf8(r.body).unwrap().contains("/v1/watch"));
    // The data behind it still needs the token.
    get(&a.url("/v1/self")).assert_error(401, "unauthorized");
    let s = send(
        "GET",
        &a.url("/v1/self"),
        &[("Authorization", "Bearer s3cret")],
        None,
    )
    .json();
    assert!(s["stats"]["datagrams_sent"].is_u64(), "{s}");
}
