//! HTTPS (on 127.0.0.1:0, with a self-signed certificate made here by
//! rcgen): the server answers a client that trusts the certificate, closes
//! plain HTTP and silent clients (within the handshake timeout, under the
//! connection cap) and serves the next client; the `gossipkv` binary
//! serves HTTPS with `--http-tls-cert`/`--http-tls-key`, its CLI talks to
//! it with `--ca-cert`, and it refuses to start with a key that does not
//! fit, a file that is missing, or only one of the two flags.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gossipkv::{BytesCodec, GossipKv};
use gossipkv_agent::api::{self, ApiOptions, ApiState, Node};
use gossipkv_agent::client::{Client, ClientArgs};
use gossipkv_agent::server::{serve_tls, ServerOptions};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_gossipkv");

/// A self-signed certificate for `localhost` and 127.0.0.1, and its key,
/// as PEM files in a temporary directory.
struct CertFiles {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    key_pem: String,
}

fn self_signed() -> CertFiles {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let key_pem = made.signing_key.serialize_pem();
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    CertFiles {
        dir,
        cert,
        key,
        key_pem,
    }
}

struct Server {
    _rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start(files: &CertFiles, options: ServerOptions) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = gossipkv_agent::tls::server_config(&files.cert, &files.key).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = rt.block_on(async {
        let kv: Node = GossipKv::builder_with_codec(BytesCodec)
            .build()
            .await
            .unwrap();
        let api = ApiOptions::default();
        let app = api::router(ApiState::new(kv, &api), &api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(serve_tls(listener, app, options, tls, async {
            let _ = stop_rx.await;
        }));
        addr
    });
    Server {
        _rt: rt,
        addr,
        _stop: stop_tx,
    }
}

fn client_args(addr: &str, ca_cert: Option<&Path>) -> ClientArgs {
    ClientArgs {
        http_addr: addr.to_string(),
        http_token: None,
        ca_cert: ca_cert.map(Path::to_path_buf),
        json: false,
    }
}

/// `GET /v1/health` over HTTPS, trusting the test certificate: the status,
/// or the client's error.
fn https_health(addr: SocketAddr, files: &CertFiles) -> Result<u16, String> {
    let client = Client::new(&client_args(
        &format!("https://localhost:{}", addr.port()),
        Some(&files.cert),
    ))
    .map_err(|e| e.message)?;
    client
        .request("GET", "/v1/health", None)
        .map(|r| r.status)
        .map_err(|e| e.message)
}

/// Reads until the server closes the connection; returns what came and
/// how long it took from `since` (the read gives up after 20 s).
fn read_until_closed(s: &mut TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (out, since.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn https_health_for_a_client_that_trusts_the_certificate() {
    let files = self_signed();
    let server = start(&files, ServerOptions::default());
    assert_eq!(https_health(server.addr, &files), Ok(200));
    // By IP address too (the certificate names 127.0.0.1).
    let client = Client::new(&client_args(
        &format!("https://{}", server.addr),
        Some(&files.cert),
    ))
    .unwrap();
    let r = client.request("GET", "/v1/health", None).unwrap();
    assert_eq!(r.status, 200);
    // A client that does not trust the certificate is refused.
    let untrusting = Client::new(&client_args(&format!("https://{}", server.addr), None)).unwrap();
    let err = untrusting.request("GET", "/v1/health", None).unwrap_err();
    assert_eq!(err.code, gossipkv_agent::client::EXIT_UNREACHABLE);
    // And the server goes on.
    assert_eq!(https_health(server.addr, &files), Ok(200));
}

#[test]
fn plain_http_to_the_tls_port_gets_no_http_answer_and_the_next_client_is_served() {
    let files = self_signed();
    let server = start(&files, ServerOptions::default());
    let started = Instant::now();
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, took) = read_until_closed(&mut plain, started);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(took < Duration::from_secs(10), "not closed: {took:?}");
    // The plain client through a gossipkv client: an error, not a reply.
    let plain_client = Client::new(&client_args(&server.addr.to_string(), None)).unwrap();
    assert!(plain_client.request("GET", "/v1/health", None).is_err());
    assert_eq!(https_health(server.addr, &files), Ok(200));
}

#[test]
fn a_client_that_never_handshakes_is_cut_off_while_others_are_served() {
    let files = self_signed();
    let timeout = Duration::from_millis(1500);
    let server = start(
        &files,
        ServerOptions {
            handshake_timeout: timeout,
            ..ServerOptions::default()
        },
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).unwrap();
    // Others are served while it waits.
    assert_eq!(https_health(server.addr, &files), Ok(200));
    let (got, took) = read_until_closed(&mut silent, started);
    assert!(got.is_empty(), "{got:?}");
    assert!(took >= timeout, "closed before the timeout: {took:?}");
    assert!(took < Duration::from_secs(10), "not cut off: {took:?}");
    assert_eq!(https_health(server.addr, &files), Ok(200));
}

#[test]
fn a_handshake_holds_a_connection_slot_only_until_its_timeout() {
    let files = self_signed();
    // Long enough for a first refused client on a loaded machine.
    let timeout = Duration::from_secs(3);
    let server = start(
        &files,
        ServerOptions {
            max_connections: 1,
            handshake_timeout: timeout,
            ..ServerOptions::default()
        },
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).unwrap();
    // The silent client has the only slot until its handshake times out:
    // clients before then are closed at once (retried until it times out).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    loop {
        match https_health(server.addr, &files) {
            Ok(200) => break,
            Ok(status) => panic!("HTTP {status}"),
            Err(_) => refused += 1,
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served_after = started.elapsed();
    assert!(refused > 0, "the cap did not hold during the handshake");
    assert!(served_after >= timeout, "served after {served_after:?}");
    let (got, _) = read_until_closed(&mut silent, started);
    assert!(got.is_empty(), "{got:?}");
}

#[test]
fn certificate_and_key_errors_name_the_file_and_not_the_key() {
    let files = self_signed();
    let other = self_signed();
    let err = gossipkv_agent::tls::server_config(&files.cert, &other.key)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not go with") && err.contains(&other.key.display().to_string()),
        "{err}"
    );
    let missing = files.dir.path().join("missing.pem");
    let err = gossipkv_agent::tls::server_config(&files.cert, &missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key file") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    // A key where the certificate should be: no certificate in it, and
    // nothing of the key in the message.
    let err = gossipkv_agent::tls::server_config(&files.key, &files.key)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no PEM certificate"), "{err}");
    // A broken key file: its lines are not quoted.
    let broken = files.dir.path().join("broken.pem");
    let mangled = files.key_pem.replace("-----END PRIVATE KEY-----", "");
    std::fs::write(&broken, &mangled).unwrap();
    let err = gossipkv_agent::tls::server_config(&files.cert, &broken)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&broken.display().to_string()), "{err}");
    assert_no_key(&err, &files.key_pem);
}

/// Fails if `text` has any base64 line of `key_pem`.
fn assert_no_key(text: &str, key_pem: &str) {
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in: {text}");
    }
}

// The binary.

/// A running agent process and the HTTP address it printed.
struct AgentProcess {
    child: Child,
    http: String,
}

impl AgentProcess {
    fn start(args: &[&str]) -> AgentProcess {
        let started = common::spawn_agent(&mut agent_command(args));
        AgentProcess {
            child: started.child,
            http: started.http,
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        common::kill(&mut self.child);
    }
}

fn agent_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("agent")
        .args(["--bind", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--discovery", "none"])
        .args(args)
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CONFIG")
        .env_remove("GOSSIPKV_HTTP_TLS_CERT")
        .env_remove("GOSSIPKV_HTTP_TLS_KEY");
    cmd
}

fn cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("GOSSIPKV_HTTP_TOKEN")
        .env_remove("GOSSIPKV_CA_CERT");
    cmd
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_cli_talks_to_a_tls_agent_with_ca_cert() {
    let files = self_signed();
    let agent = AgentProcess::start(&[
        "--http-tls-cert",
        path(&files.cert),
        "--http-tls-key",
        path(&files.key),
    ]);
    assert!(
        agent.http.starts_with("https://127.0.0.1:"),
        "{}",
        agent.http
    );
    let http = agent.http.as_str();
    let ca = path(&files.cert);

    let o = cli(&["kv", "put", "tls/k", "over https"])
        .args(["--http-addr", http, "--ca-cert", ca])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli(&["kv", "get", "tls/k"])
        .args(["--http-addr", http, "--ca-cert", ca])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "over https");
    // GOSSIPKV_CA_CERT does the same.
    let o = cli(&["kv", "ls"])
        .args(["--http-addr", http])
        .env("GOSSIPKV_CA_CERT", ca)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "tls/k\n", "{}", stderr(&o));
    // Without it the certificate is not trusted: unreachable, exit 3.
    let o = cli(&["kv", "get", "tls/k"])
        .args(["--http-addr", http])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // Plain http:// to the TLS port: no answer either.
    let plain = http.replace("https://", "http://");
    let o = cli(&["kv", "get", "tls/k"])
        .args(["--http-addr", &plain])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // A --ca-cert that cannot be read is a usage error that names it.
    let missing = files.dir.path().join("no-ca.pem");
    let o = cli(&["kv", "get", "tls/k"])
        .args(["--http-addr", http, "--ca-cert", path(&missing)])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-ca.pem"), "{}", stderr(&o));
    // The agent still serves HTTPS.
    let o = cli(&["kv", "get", "tls/k"])
        .args(["--http-addr", http, "--ca-cert", ca])
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "over https", "{}", stderr(&o));
}

/// Runs an agent that is expected to refuse to start (within a deadline).
fn refused(args: &[&str]) -> Output {
    refused_cmd(agent_command(args))
}

fn refused_cmd(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_agent_refuses_to_start_with_a_key_that_does_not_fit_or_is_missing() {
    let files = self_signed();
    let other = self_signed();
    let o = refused(&[
        "--http-tls-cert",
        path(&files.cert),
        "--http-tls-key",
        path(&other.key),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("does not go with") && err.contains(path(&other.key)),
        "{err}"
    );
    assert_no_key(&err, &other.key_pem);

    let missing = files.dir.path().join("missing-key.pem");
    let o = refused(&[
        "--http-tls-cert",
        path(&files.cert),
        "--http-tls-key",
        path(&missing),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("TLS key file") && err.contains(path(&missing)),
        "{err}"
    );

    let garbage = files.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let o = refused(&[
        "--http-tls-cert",
        path(&garbage),
        "--http-tls-key",
        path(&files.key),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("TLS certificate file") && err.contains(path(&garbage)),
        "{err}"
    );
}

#[test]
fn only_one_of_the_two_tls_options_is_a_config_error() {
    let files = self_signed();
    let o = refused(&["--http-tls-cert", path(&files.cert)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs --http-tls-key"),
        "{}",
        stderr(&o)
    );
    let mut cmd = agent_command(&[]);
    cmd.env("GOSSIPKV_HTTP_TLS_KEY", &files.key);
    let o = refused_cmd(cmd);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs --http-tls-cert"),
        "{}",
        stderr(&o)
    );
}
