//! `gossipkv console`: an interactive console attached to a running agent
//! (over its HTTP API, found as the CLI finds it). On a terminal it has a
//! prompt, line editing and history (rustyline); from a pipe it reads
//! plain lines. End of input (Ctrl-D) exits cleanly.

use std::io::{BufRead, Write};
use std::time::Duration;

use serde_json::Value;

use crate::client::{encode_path, put_path, Client, ClientArgs};

const HELP: &str = "\
commands:
  set [--ttl D] [--ephemeral] KEY VALUE...
                     set KEY; the rest of the line is the value (quotes
                     allowed); --ttl 30s: it expires then; --ephemeral: it
                     goes with the agent's node (when it leaves or dies)
  get KEY            print KEY's value
  del KEY            delete KEY (also: delete)
  keys [PREFIX]      list the keys under PREFIX
  watch [PREFIX]     show the changes under PREFIX until Enter is pressed
  members            list the cluster's members
  info               show the agent's node
  leave              make the agent leave the cluster (it then exits)
  help               this text
  exit, quit, sair   leave the console (Ctrl-D too)";

/// What a console line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Print this and go on.
    Print(String),
    /// Leave the console.
    Exit,
    /// Show the changes under this prefix until Enter.
    Watch(String),
}

/// The value of a `set` line: the rest of the line, without one pair of
/// surrounding quotes (`"a b"` or `'a b'`).
pub fn unquote(rest: &str) -> &str {
    let r = rest.trim();
    for q in ['"', '\''] {
        if r.len() >= 2 && r.starts_with(q) && r.ends_with(q) {
            return &r[1..r.len() - 1];
        }
    }
    r
}

/// A `set` line: options, then the key, then the value.
#[derive(Debug, PartialEq, Eq)]
pub struct SetLine<'a> {
    /// The key.
    pub key: &'a str,
    /// The value (see [`unquote`]).
    pub value: &'a str,
    /// `--ttl D` (`--ttl=D` too): the key expires after `D` (`30s`, `5m`).
    pub ttl: Option<Duration>,
    /// `--ephemeral`: the key goes with the agent's node.
    pub ephemeral: bool,
}

/// Reads what follows `set`: `[--ttl D] [--ephemeral] KEY VALUE...`, the
/// options (in any order) before the key. A key that starts with `--`
/// follows a lone `--`. Errors are the message to print.
pub fn parse_set(rest: &str) -> Result<SetLine<'_>, String> {
    const USAGE: &str = "usage: set [--ttl DURATION] [--ephemeral] KEY VALUE...";
    let mut rest = rest.trim_start();
    let (mut ttl, mut ephemeral) = (None, false);
    loop {
        let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let after = after.trim_start();
        match word {
            "--" => {
                rest = after;
                break;
            }
            "--ephemeral" => ephemeral = true,
            "--ttl" => {
                let (d, tail) = after.split_once(char::is_whitespace).unwrap_or((after, ""));
                if d.is_empty() {
                    return Err(format!("--ttl needs a duration, such as 30s; {USAGE}"));
                }
                ttl = Some(crate::config::parse_duration(d)?);
                rest = tail.trim_start();
                continue;
            }
            w if w.starts_with("--ttl=") => {
                ttl = Some(crate::config::parse_duration(&w["--ttl=".len()..])?);
            }
            w if w.starts_with("--") => return Err(format!("unknown option {w:?}; {USAGE}")),
            _ => break,
        }
        rest = after;
    }
    match rest.split_once(char::is_whitespace) {
        Some((key, value)) if !value.trim().is_empty() => Ok(SetLine {
            key,
            value: unquote(value),
            ttl,
            ephemeral,
        }),
        _ => Err(USAGE.to_string()),
    }
}

fn show(reply: Result<crate::client::Reply, crate::client::ClientError>) -> Result<Value, String> {
    match reply {
        Err(e) => Err(e.message),
        Ok(r) if (200..300).contains(&r.status) => {
            Ok(serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        }
        Ok(r) => {
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            Err(v["message"]
                .as_str()
                .map_or_else(|| format!("HTTP {}", r.status), String::from))
        }
    }
}

/// Runs one console line against the agent.
pub fn run_line(client: &Client, line: &str) -> Action {
    let line = line.trim();
    let (cmd, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let out = match cmd {
        "" => return Action::Print(String::new()),
        "exit" | "quit" | "sair" => return Action::Exit,
        "help" | "?" => Ok(HELP.to_string()),
        "set" | "put" => parse_set(rest).and_then(|set| {
            show(client.request(
                "PUT",
                &put_path(set.key, set.ttl, set.ephemeral),
                Some(set.value.as_bytes()),
            ))
            .map(|_| "ok".to_string())
        }),
        "get" if !rest.is_empty() => {
            match client.request("GET", &format!("/v1/kv/{}?raw", encode_path(rest)), None) {
                Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
                other => show(other).map(|_| String::new()),
            }
        }
        "del" | "delete" if !rest.is_empty() => {
            show(client.request("DELETE", &format!("/v1/kv/{}", encode_path(rest)), None))
                .map(|_| "ok".to_string())
        }
        "keys" => {
            match client.request("GET", &format!("/v1/kv/{}?keys", encode_path(rest)), None) {
                Ok(r) if r.status == 404 => Ok("(no keys)".to_string()),
                other => show(other).map(|v| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                }),
            }
        }
        "members" => show(client.request("GET", "/v1/members", None)).map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{} {} {} {}",
                        m["node_id"].as_str().unwrap_or("?"),
                        m["addr"].as_str().unwrap_or("?"),
                        m["state"].as_str().unwrap_or("?"),
                        m["generation"]
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }),
        "watch" => return Action::Watch(rest.to_string()),
        "info" => show(client.request("GET", "/v1/self", None))
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default()),
        "leave" => show(client.request("POST", "/v1/leave", None))
            .map(|_| "the agent left the cluster".to_string()),
        "get" | "del" | "delete" => Err(format!("usage: {cmd} KEY")),
        other => Err(format!("unknown command {other:?}; try help")),
    };
    Action::Print(out.unwrap_or_else(|e| format!("error: {e}")))
}

/// `watch PREFIX`: prints the changes under the prefix from a background
/// thread until a line (Enter) or end of input comes on standard input.
/// The thread stops at the next event or keepalive after that.
fn watch_until_enter(client: &Client, prefix: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let args = client.args();
    let prefix_owned = prefix.to_string();
    let stopped = stop.clone();
    println!("watching {prefix:?}; press Enter to stop");
    std::thread::spawn(move || {
        let result = crate::client::stream_events(&args, &prefix_owned, |event, v| {
            if stopped.load(Ordering::SeqCst) {
                return false;
            }
            println!("{}", crate::client::describe_event(event, v));
            true
        });
        if let Err(e) = result {
            if !stopped.load(Ordering::SeqCst) {
                println!("error: {}", e.message);
            }
        }
    });
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    stop.store(true, Ordering::SeqCst);
    println!("(watch stopped)");
}

/// Runs the console until `exit` or end of input: with line editing and
/// history (in memory) when standard input is a terminal, reading plain
/// lines otherwise (scripts, pipes).
pub fn run(args: &ClientArgs) -> std::process::ExitCode {
    let client = match Client::new(args) {
        Ok(c) => c,
        Err(e) => return crate::client::finish(Err(e)),
    };
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        match rustyline::DefaultEditor::new() {
            Ok(editor) => return run_interactive(&client, editor),
            Err(e) => eprintln!("gossipkv console: no line editing ({e}); reading plain lines"),
        }
    }
    run_plain(&client)
}

fn run_interactive(
    client: &Client,
    mut editor: rustyline::DefaultEditor,
) -> std::process::ExitCode {
    use rustyline::error::ReadlineError;
    println!("gossipkv console: type help for commands, Ctrl-D to leave");
    loop {
        match editor.readline("gossipkv> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                match run_line(client, &line) {
                    Action::Exit => break,
                    Action::Watch(prefix) => watch_until_enter(client, &prefix),
                    Action::Print(s) if s.is_empty() => {}
                    Action::Print(s) => println!("{s}"),
                }
            }
            // Ctrl-C drops the line being typed, as in a shell.
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("gossipkv console: cannot read input: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

fn run_plain(client: &Client) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let mut lines = std::io::stdin().lock();
    loop {
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) => break, // end of input
            Ok(_) => {}
            Err(e) => {
                eprintln!("gossipkv console: cannot read input: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        match run_line(client, &line) {
            Action::Exit => break,
            Action::Watch(prefix) => watch_until_enter(client, &prefix),
            Action::Print(s) if s.is_empty() => {}
            Action::Print(s) => {
                let _ = writeln!(out, "{s}");
            }
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_takes_ttl_and_ephemeral_before_the_key() {
        let plain = parse_set("k some value").unwrap();
        assert_eq!(
            plain,
            SetLine {
                key: "k",
                value: "some value",
                ttl: None,
                ephemeral: false
            }
        );
        let s = parse_set("--ttl 30s --ephemeral svc/web \"up now\"").unwrap();
        assert_eq!((s.key, s.value), ("svc/web", "up now"));
        assert_eq!(s.ttl, Some(Duration::from_secs(30)));
        assert!(s.ephemeral);
        let s = parse_set("--ephemeral --ttl=1m30s k v").unwrap();
        assert_eq!(s.ttl, Some(Duration::from_secs(90)));
        assert!(s.ephemeral);
        // After `--`, a key may start with dashes; a value always may.
        let s = parse_set("-- --odd --ttl").unwrap();
        assert_eq!((s.key, s.value, s.ttl), ("--odd", "--ttl", None));
        let s = parse_set("n -5").unwrap();
        assert_eq!((s.key, s.value), ("n", "-5"));
        // An empty value, quoted, is a value.
        assert_eq!(parse_set("k \"\"").unwrap().value, "");
        // A zero time to live goes to the agent as zero (it refuses it);
        // a positive one below a millisecond as one millisecond.
        let path = |ttl| put_path("a b", Some(ttl), true);
        assert_eq!(path(Duration::ZERO), "/v1/kv/a%20b?ttl=0ms&ephemeral");
        assert_eq!(
            path(Duration::from_micros(500)),
            "/v1/kv/a%20b?ttl=1ms&ephemeral"
        );
        assert_eq!(put_path("k", None, false), "/v1/kv/k");
    }

    #[test]
    fn bad_set_lines_say_why() {
        for (line, says) in [
            ("", "usage"),
            ("k", "usage"),
            ("k   ", "usage"),
            ("--ttl", "needs a duration"),
            ("--ttl 5s", "usage"),
            ("--ttl=", "not a duration"),
            ("--", "usage"),
            ("--ttl soon k v", "not a duration"),
            ("--ttl=x k v", "not a duration"),
            ("--forever k v", "unknown option"),
            ("--ephemeral k", "usage"),
        ] {
            let e = parse_set(line).unwrap_err();
            assert!(e.contains(says), "{line:?}: {e}");
        }
    }

    #[test]
    fn set_values_may_be_quoted() {
        assert_eq!(unquote("hello world"), "hello world");
        assert_eq!(unquote(" \"hello world\" "), "hello world");
        assert_eq!(unquote("'x'"), "x");
        assert_eq!(unquote("\""), "\"");
        assert_eq!(unquote("\"a' "), "\"a'");
    }
}
