//! The CLI client: subcommands that talk to a running agent over HTTP, or
//! HTTPS (`https://` addresses; `--ca-cert` trusts a private CA or a
//! self-signed certificate besides the public roots).
//!
//! Exit codes: 0 success, 1 not found or refused by the agent (its JSON
//! error message is printed), 2 usage error, 3 agent unreachable.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

/// Exit code: the key (or anything asked for) does not exist, or the agent
/// refused the request.
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: bad usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the agent cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// How to reach the agent.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The agent's HTTP address (host:port, http://host:port or
    /// https://host:port)
    #[arg(long, env = "GOSSIPKV_HTTP_ADDR", default_value = crate::config::DEFAULT_HTTP_ADDR, value_name = "ADDR")]
    pub http_addr: String,
    /// Bearer token, if the agent requires one
    #[arg(
        long,
        env = "GOSSIPKV_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub http_token: Option<String>,
    /// PEM certificate(s) to trust for an https:// agent: its private CA
    /// or its self-signed certificate (the public roots are trusted
    /// without it)
    #[arg(long, env = "GOSSIPKV_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON instead of human output
    #[arg(long)]
    pub json: bool,
}

/// A client failure, with the exit code it maps to.
#[derive(Debug)]
pub struct ClientError {
    /// Exit code.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl ClientError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }
}

/// Prints a client result and turns it into an exit code.
pub fn finish(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gossipkv: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Percent-encodes a key for a URL path, keeping `/` (so `a/b` stays a
/// path) and the unreserved characters.
pub fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn encode_query(v: &str) -> String {
    encode_path(v).replace('/', "%2F")
}

/// A blocking HTTP client of one agent.
pub struct Client {
    base: String,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
    agent: ureq::Agent,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Result<Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::new(EXIT_NOT_FOUND, format!("the agent sent invalid JSON: {e}"))
        })
    }

    /// The error this reply stands for, if it is not a success: the
    /// agent's message, with exit code 1.
    fn check(self) -> Result<Reply, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| {
                let code = v.get("error")?.as_str()?.to_string();
                let msg = v.get("message")?.as_str()?.to_string();
                Some(format!("{msg} ({code}, HTTP {})", self.status))
            })
            .unwrap_or_else(|| {
                format!(
                    "HTTP {}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body).trim()
                )
            });
        Err(ClientError::new(EXIT_NOT_FOUND, message))
    }
}

impl Client {
    /// A client of the agent at `args.http_addr`; fails (usage error) if
    /// `args.ca_cert` cannot be read.
    pub fn new(args: &ClientArgs) -> Result<Self, ClientError> {
        let addr = args.http_addr.trim_end_matches('/');
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let agent = http_agent(args.ca_cert.as_deref(), Some(Duration::from_secs(30)))?;
        Ok(Client {
            base,
            token: args.http_token.clone(),
            ca_cert: args.ca_cert.clone(),
            agent,
        })
    }

    /// The options this client was made with (without `--json`).
    pub fn args(&self) -> ClientArgs {
        ClientArgs {
            http_addr: self.base.clone(),
            http_token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            json: false,
        }
    }

    /// Sends a request; `path_and_query` starts with `/`.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ClientError> {
        self.request_with(method, path_and_query, body, &[])
    }

    /// [`request`](Self::request) with extra headers.
    pub fn request_with(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, ClientError> {
        let url = format!("{}{}", self.base, path_and_query);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut extra: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        if let Some(a) = auth {
            extra.push(("Authorization", a));
        }
        let unreachable = |e: ureq::Error| {
            ClientError::new(
                EXIT_UNREACHABLE,
                format!("cannot reach the agent at {}: {e}", self.base),
            )
        };
        let result = match method {
            "GET" => {
                let mut r = self.agent.get(&url);
                for (k, v) in &extra {
                    r = r.header(*k, v);
                }
                r.call()
            }
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                for (k, v) in &extra {
                    r = r.header(*k, v);
                }
                r.call()
            }
            "PUT" | "POST" => {
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                for (k, v) in &extra {
                    r = r.header(*k, v);
                }
                r.send(body.unwrap_or_default())
            }
            _ => return Err(ClientError::new(EXIT_USAGE, format!("method {method}"))),
        };
        let mut response = result.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(unreachable)?;
        Ok(Reply { status, body })
    }
}

/// A ureq agent that gives every status back (no error for 4xx/5xx), with
/// an overall timeout if given; for `https://`, rustls on ring, trusting
/// the certificates of `ca_cert` if given, else the public roots.
fn http_agent(
    ca_cert: Option<&Path>,
    timeout: Option<Duration>,
) -> Result<ureq::Agent, ClientError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(crate::tls::provider());
    if let Some(path) = ca_cert {
        let certs = crate::tls::load_certs(path)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("--ca-cert: {e}")))?;
        let roots: Vec<Certificate<'static>> = certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    Ok(ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .tls_config(tls.build())
        .build()
        .into())
}

fn print_json(v: &Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{text}");
    Ok(())
}

/// `get KEY`: prints the bare value.
pub fn get(args: &ClientArgs, key: &str) -> Result<(), ClientError> {
    let c = Client::new(args)?;
    if args.json {
        let r = c.request("GET", &format!("/v1/kv/{}", encode_path(key)), None)?;
        return print_json(&r.check()?.json()?);
    }
    let r = c.request("GET", &format!("/v1/kv/{}?raw", encode_path(key)), None)?;
    let r = r.check()?;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&r.body);
    if std::io::IsTerminal::is_terminal(&out) && !r.body.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    Ok(())
}

/// Options of `put`.
#[derive(Args, Clone, Debug)]
pub struct PutArgs {
    /// The key
    pub key: String,
    /// The value (`-` reads it from standard input; values may start with
    /// a dash, as in `put n -5`)
    #[arg(allow_hyphen_values = true)]
    pub value: String,
    /// Time to live, such as 30s or 5m: the key expires then
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub ttl: Option<Duration>,
    /// The key goes with this agent's node (when it leaves or dies)
    #[arg(long)]
    pub ephemeral: bool,
    /// Write only if the key is at this version (local check; `*`: if it exists)
    #[arg(long, value_name = "VERSION")]
    pub if_match: Option<String>,
}

/// The path of a `PUT` of `key` on `/v1/kv`, with `?ttl=` (in
/// milliseconds: at least one unless zero, which the agent refuses) and
/// `?ephemeral` when asked for.
pub fn put_path(key: &str, ttl: Option<Duration>, ephemeral: bool) -> String {
    let mut query = Vec::new();
    if let Some(t) = ttl {
        let ms = if t.is_zero() { 0 } else { t.as_millis().max(1) };
        query.push(format!("ttl={ms}ms"));
    }
    if ephemeral {
        query.push("ephemeral".to_string());
    }
    let path = format!("/v1/kv/{}", encode_path(key));
    if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// `put KEY VALUE`.
pub fn put(args: &ClientArgs, p: &PutArgs) -> Result<(), ClientError> {
    let value = if p.value == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("cannot read stdin: {e}")))?;
        buf
    } else {
        p.value.clone().into_bytes()
    };
    let path = put_path(&p.key, p.ttl, p.ephemeral);
    let c = Client::new(args)?;
    let headers: Vec<(&str, &str)> = p
        .if_match
        .as_deref()
        .map(|v| ("If-Match", v))
        .into_iter()
        .collect();
    let r = c.request_with("PUT", &path, Some(&value), &headers)?;
    let r = r.check()?;
    if args.json {
        print_json(&r.json()?)?;
    }
    Ok(())
}

/// `delete KEY`.
pub fn delete(args: &ClientArgs, key: &str) -> Result<(), ClientError> {
    let c = Client::new(args)?;
    c.request("DELETE", &format!("/v1/kv/{}", encode_path(key)), None)?
        .check()?;
    Ok(())
}

/// `keys [PREFIX]`: one key per line.
pub fn keys(args: &ClientArgs, prefix: &str) -> Result<(), ClientError> {
    let c = Client::new(args)?;
    let r = c.request("GET", &format!("/v1/kv/{}?keys", encode_path(prefix)), None)?;
    if r.status == 404 && !args.json {
        return Ok(()); // no key: nothing to list
    }
    let v = r.check()?.json()?;
    if args.json {
        return print_json(&v);
    }
    for k in v.as_array().into_iter().flatten() {
        if let Some(k) = k.as_str() {
            println!("{k}");
        }
    }
    Ok(())
}

/// `export`: every key as JSON lines on stdout (what `import` reads).
pub fn export(args: &ClientArgs) -> Result<(), ClientError> {
    let r = Client::new(args)?
        .request("GET", "/v1/snapshot", None)?
        .check()?;
    let mut out = std::io::stdout().lock();
    out.write_all(&r.body)
        .map_err(|e| ClientError::new(EXIT_NOT_FOUND, format!("cannot write: {e}")))?;
    Ok(())
}

/// `import FILE`: JSON lines (as `export` writes them) or a flat
/// `{"key": "value"}` object; `-` reads stdin.
pub fn import(args: &ClientArgs, file: &str) -> Result<(), ClientError> {
    let data = if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("cannot read stdin: {e}")))?;
        buf
    } else {
        std::fs::read(file)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("cannot read {file}: {e}")))?
    };
    let v = Client::new(args)?
        .request("POST", "/v1/snapshot", Some(&data))?
        .check()?
        .json()?;
    if args.json {
        return print_json(&v);
    }
    println!("imported {} keys", v["imported"]);
    Ok(())
}

/// `watch PREFIX`: prints the changes under the prefix as they happen,
/// one line each (`put KEY VALUE`, `delete KEY REASON`, `reset MISSED`; or
/// `{"event", "data"}` JSON lines with `--json`), until the agent stops.
pub fn watch(args: &ClientArgs, prefix: &str) -> Result<(), ClientError> {
    let mut out = std::io::stdout();
    let json = args.json;
    stream_events(args, prefix, |event, v| {
        let text = if json {
            serde_json::json!({"event": event, "data": v}).to_string()
        } else {
            describe_event(event, v)
        };
        // Stop when stdout is closed.
        writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
    })
}

/// Reads the watch stream of `prefix`, giving each event (name and data)
/// to `on_event` until it returns false or the stream ends.
pub fn stream_events(
    args: &ClientArgs,
    prefix: &str,
    mut on_event: impl FnMut(&str, &Value) -> bool,
) -> Result<(), ClientError> {
    use std::io::BufRead as _;
    let c = Client::new(args)?;
    // No overall timeout: the stream lasts; the agent sends a keepalive
    // every 15 s.
    let agent = http_agent(args.ca_cert.as_deref(), None)?;
    let url = format!("{}/v1/watch?prefix={}", c.base, encode_query(prefix));
    let mut req = agent.get(&url);
    if let Some(t) = &c.token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let unreachable = |e: ureq::Error| {
        ClientError::new(
            EXIT_UNREACHABLE,
            format!("cannot reach the agent at {}: {e}", c.base),
        )
    };
    let mut response = req.call().map_err(unreachable)?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        Reply { status, body }.check()?;
        return Ok(());
    }
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let (mut event, mut data) = (String::new(), String::new());
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if let Some(e) = line.strip_prefix("event:") {
            event = e.trim().to_string();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push_str(d.trim_start());
        } else if line.is_empty() && !event.is_empty() {
            let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            if !on_event(&event, &v) {
                break;
            }
            event.clear();
            data.clear();
        } else if line.is_empty() {
            data.clear();
        }
    }
    Ok(())
}

/// One watch event as a line of text.
pub fn describe_event(event: &str, v: &Value) -> String {
    let key = v["key"].as_str().unwrap_or("?");
    match event {
        "put" => {
            let value = v["value"]
                .as_str()
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.decode(b).ok()
                })
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            format!("put {key} {value}")
        }
        "delete" => format!("delete {key} {}", v["reason"].as_str().unwrap_or("deleted")),
        "reset" => format!("reset {}", v["missed"]),
        other => format!("{other} {v}"),
    }
}

/// `members`: one member per line.
pub fn members(args: &ClientArgs) -> Result<(), ClientError> {
    let v = Client::new(args)?
        .request("GET", "/v1/members", None)?
        .check()?
        .json()?;
    if args.json {
        return print_json(&v);
    }
    println!("{:<24} {:<24} {:<8} GENERATION", "NODE", "ADDRESS", "STATE");
    for m in v.as_array().into_iter().flatten() {
        let s = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        let generation = m.get("generation").and_then(Value::as_u64).unwrap_or(0);
        println!(
            "{:<24} {:<24} {:<8} {generation}",
            s("node_id"),
            s("addr"),
            s("state")
        );
    }
    Ok(())
}

/// `info`: the agent's node.
pub fn info(args: &ClientArgs) -> Result<(), ClientError> {
    let v = Client::new(args)?
        .request("GET", "/v1/self", None)?
        .check()?
        .json()?;
    if args.json {
        return print_json(&v);
    }
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<14} {v}");
        }
    }
    Ok(())
}

/// `keyring list`: a table of the agent's keys (id, primary, members
/// holding and sealing with each, out of the live members), then the
/// encryption setting and the counters of refused gossip.
pub fn keyring_list(args: &ClientArgs) -> Result<(), ClientError> {
    let v = Client::new(args)?
        .request("GET", "/v1/keyring", None)?
        .check()?
        .json()?;
    if args.json {
        return print_json(&v);
    }
    print!("{}", describe_keyring(&v));
    Ok(())
}

/// The text `keyring list` prints for a `GET /v1/keyring` answer.
pub fn describe_keyring(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let Some(mode) = v["encryption"].as_str() else {
        out.push_str("no keyring: gossip is not encrypted\n");
        return out;
    };
    let members = v["members"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "{:<6} {:<8} {:<10} SEALING",
        "ID", "PRIMARY", "HOLDING"
    );
    for k in v["keys"].as_array().into_iter().flatten() {
        let n = |f: &str| k[f].as_u64().unwrap_or(0);
        let holding = format!("{}/{members}", n("members_holding"));
        let sealing = format!("{}/{members}", n("members_sealing"));
        let primary = if k["primary"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        let id = k["id"].as_str().unwrap_or("?");
        let _ = writeln!(out, "{id:<6} {primary:<8} {holding:<10} {sealing}");
    }
    let s = &v["stats"];
    let n = |f: &str| s[f].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "encryption {mode}; {members} live members besides this one; keyring file: {}",
        if v["persisted"].as_bool() == Some(true) {
            "yes"
        } else {
            "none (changes last until the agent stops)"
        }
    );
    let _ = writeln!(
        out,
        "sealed {} opened {} plaintext accepted {}; refused: plaintext {} unknown key {} \
         forged {} stale {} future {} replayed {}",
        n("sealed"),
        n("opened"),
        n("plaintext_accepted"),
        n("refused_plaintext"),
        n("refused_unknown_key"),
        n("refused_forged"),
        n("refused_stale"),
        n("refused_future"),
        n("refused_replayed"),
    );
    out
}

fn print_change(args: &ClientArgs, v: &Value, what: &str) -> Result<(), ClientError> {
    if args.json {
        return print_json(v);
    }
    let persisted = if v["persisted"].as_bool() == Some(true) {
        "saved to the keyring file"
    } else {
        "in memory only (no keyring file)"
    };
    println!("{what} {}: {persisted}", v["id"].as_str().unwrap_or("?"));
    Ok(())
}

/// `keyring install KEY` (`-`: the key from stdin).
pub fn keyring_install(args: &ClientArgs, key: &str) -> Result<(), ClientError> {
    let key = if key == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| ClientError::new(EXIT_USAGE, format!("cannot read stdin: {e}")))?;
        buf.trim().to_string()
    } else {
        key.trim().to_string()
    };
    let body = serde_json::json!({ "key": key }).to_string();
    let v = Client::new(args)?
        .request("POST", "/v1/keyring/install", Some(body.as_bytes()))?
        .check()?
        .json()?;
    print_change(args, &v, "installed key")
}

/// `keyring use ID` (`action` = `use`) and `keyring remove ID` (`remove`).
pub fn keyring_change(args: &ClientArgs, action: &str, id: &str) -> Result<(), ClientError> {
    let body = serde_json::json!({ "id": id }).to_string();
    let v = Client::new(args)?
        .request(
            "POST",
            &format!("/v1/keyring/{action}"),
            Some(body.as_bytes()),
        )?
        .check()?
        .json()?;
    let what = if action == "use" {
        "now sealing with key"
    } else {
        "removed key"
    };
    print_change(args, &v, what)
}

/// `keyring encryption MODE`.
pub fn keyring_encryption(
    args: &ClientArgs,
    mode: crate::config::EncryptionMode,
) -> Result<(), ClientError> {
    let body = serde_json::json!({ "mode": mode.name() }).to_string();
    let v = Client::new(args)?
        .request("PUT", "/v1/keyring/encryption", Some(body.as_bytes()))?
        .check()?
        .json()?;
    if args.json {
        return print_json(&v);
    }
    println!(
        "encryption {} (until the agent stops; set --encryption for its next start)",
        mode.name()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_but_keep_slashes() {
        assert_eq!(encode_path("a/b-c_d.e~"), "a/b-c_d.e~");
        assert_eq!(encode_path("a b?c#d%"), "a%20b%3Fc%23d%25");
        assert_eq!(encode_path("é"), "%C3%A9");
        assert_eq!(encode_query("a/b&c"), "a%2Fb%26c");
    }
}
