//! `cargo xtask cluster-test`: a real multi-host test of the `gossipkv` agent.
//!
//! Starts N agents (default 5), each in its own network namespace, joined by
//! veth pairs to one bridge in the root namespace, on a private /24
//! (`10.213.X.0/24`, the bridge at `.1`, host `i` at `.10+i`). Every agent
//! is seeded by address with hosts 0 and 1. The test talks to the agents over
//! HTTP from the root namespace through the bridge (with a bearer token, as
//! the agent requires on a non-loopback address), or, while a host's link is
//! down, with the `gossipkv` command-line client run inside its namespace.
//!
//! Steps:
//!
//! 1. 100 keys written over the agents; every snapshot export ends equal.
//! 2. 20% loss (nftables, input and output, everything but the test's own
//!    HTTP port) on hosts 1 and 2; 100 more keys; convergence; loss removed.
//! 3. The last host's link is cut on the bridge side; keys are written on
//!    both sides, and one key on both; the others see the cut host leave the
//!    alive state; the link comes back; the cut host rejoins by itself
//!    (every member list shows every node alive) and every snapshot ends equal,
//!    the key written on both sides with one value.
//! 4. One agent is killed with SIGKILL, its link cut, and it is restarted
//!    from its data dir: with no peer to refill it, its export holds every
//!    key; then the link comes back and the cluster converges with it alive.
//! 5. At its first collection pass (about a minute after it started) the
//!    restarted agent writes its killed generation's records again as its
//!    own; every node ends holding them under its running generation.
//!
//! Needs root, `ip netns` and a bridge; says `SKIPPED: <reason>` and
//! succeeds otherwise. Without `nft` (and when installing Debian's
//! `nftables` fails) step 2 is skipped loudly. Everything lives in
//! namespaces and links named after this process's id (`gkvct-<pid>-h<i>`,
//! `gk<pid>br`, `gk<pid>v<i>`), removed at the end, on failure, and by a
//! watchdog process if this one dies (Ctrl-C, SIGKILL); leftovers of dead
//! runs are removed at start.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::cli::ClusterTestOptions;
use crate::workspace;

/// Prefix of the namespaces this command creates.
const NS_PREFIX: &str = "gkvct-";
/// Prefix of the links (bridge and veths) this command creates.
const LINK_PREFIX: &str = "gk";
/// Gossip port of every agent.
const GOSSIP_PORT: u16 = 7946;
/// HTTP port of every agent.
const HTTP_PORT: u16 = 8500;
/// Bearer token of every agent.
const TOKEN: &str = "cluster-test-token";
/// Limit of one wait for convergence.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(45);
/// Limit of one wait for an agent to answer, or for membership to change.
const WAIT_DEADLINE: Duration = Duration::from_secs(30);
/// Delay between two polls.
const POLL: Duration = Duration::from_millis(250);

/// The result of one step, for the summary table.
struct StepResult {
    /// The step's name.
    name: &'static str,
    /// `ok`, `FAILED` or `SKIPPED`.
    status: &'static str,
    /// Time the step took.
    elapsed: Duration,
    /// What was measured, or why it failed.
    detail: String,
}

/// Runs the test; `Ok(false)` when a step failed.
pub(crate) fn run(opts: &ClusterTestOptions) -> anyhow::Result<bool> {
    let started = Instant::now();
    if let Some(reason) = cannot_run() {
        println!("cluster-test SKIPPED: {reason}");
        return Ok(true);
    }
    let bin = build_agent()?;
    println!(
        "agent binary {} ({:.1} s)",
        bin.display(),
        started.elapsed().as_secs_f64()
    );
    remove_leftovers();
    let nft = ensure_nft();
    let pid = std::process::id();
    let subnet = pick_subnet(pid)?;
    let work = std::env::temp_dir().join(format!("{NS_PREFIX}{pid}"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut cluster = match Cluster::create(pid, &subnet, opts.agents, bin, work.clone())? {
        Setup::Ready(c) => c,
        Setup::Unavailable(reason) => {
            println!("cluster-test SKIPPED: {reason}");
            let _ = std::fs::remove_dir_all(&work);
            return Ok(true);
        }
    };
    println!(
        "{} namespaces on bridge {} ({}.0/24), logs in {} ({:.1} s)",
        opts.agents,
        cluster.bridge,
        subnet,
        work.display(),
        started.elapsed().as_secs_f64()
    );
    let results = run_steps(&mut cluster, opts, nft.as_deref());
    print_summary(&results);
    let failed = results.iter().any(|r| r.status == "FAILED");
    if failed {
        cluster.print_log_tails();
    }
    drop(cluster);
    if failed {
        println!("cluster-test FAILED; agent logs kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
        println!(
            "cluster-test passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(!failed)
}

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces need Linux".to_owned());
    }
    match effective_uid() {
        Some(0) => {}
        Some(uid) => return Some(format!("needs root (running as uid {uid})")),
        None => return Some("cannot read the uid from /proc/self/status".to_owned()),
    }
    match Command::new(ip_bin()).arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("`ip` (iproute2) not found".to_owned()),
    }
}

/// The effective uid of this process, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The `ip` binary: `/usr/sbin/ip` or `/sbin/ip` when present, else `ip`.
fn ip_bin() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// Runs `ip ARGS`; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_cmd(Command::new(ip_bin()).args(args))
}

/// Runs a command to completion; fails with its stderr when it fails.
fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the agent (debug) and returns the path of its binary.
fn build_agent() -> anyhow::Result<PathBuf> {
    let root = workspace::root();
    let status = Command::new(workspace::cargo())
        .args(["build", "-p", "gossipkv-agent", "--bin", "gossipkv"])
        .current_dir(&root)
        .status()
        .context("failed to run `cargo build -p gossipkv-agent`")?;
    ensure!(status.success(), "`cargo build -p gossipkv-agent` failed");
    let bin = workspace::target_dir(&root)?.join("debug").join("gossipkv");
    ensure!(bin.exists(), "{} not found after the build", bin.display());
    Ok(bin)
}

/// Finds `nft`, installing Debian's `nftables` when it is missing; `None`
/// (and a loud line) when that fails.
fn ensure_nft() -> Option<String> {
    let find = || {
        ["/usr/sbin/nft", "/sbin/nft", "nft"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .map(str::to_owned)
    };
    if let Some(nft) = find() {
        return Some(nft);
    }
    println!("nft not found: installing Debian's nftables (apt-get, at most 5 minutes)");
    let installed = Command::new("timeout")
        .args([
            "300",
            "sh",
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables",
        ])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let nft = if installed { find() } else { None };
    if nft.is_none() {
        println!("SKIPPED: nft is not available and nftables could not be installed: the loss step will be skipped");
    }
    nft
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The process id in a name made by this command (`gkvct-<pid>-...`,
/// `gk<pid>br`, `gk<pid>v<i>`), if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix(NS_PREFIX) {
        let (pid, tail) = rest.split_once('-')?;
        return (tail.starts_with('h') && !pid.is_empty()).then(|| pid.parse().ok())?;
    }
    let rest = name.strip_prefix(LINK_PREFIX)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit())?;
    let (pid, tail) = rest.split_at(digits);
    let ours = tail == "br"
        || tail
            .strip_prefix('v')
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if ours && !pid.is_empty() {
        pid.parse().ok()
    } else {
        None
    }
}

/// Removes namespaces and links left by runs whose process is gone (and
/// kills what still runs in those namespaces).
fn remove_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if owner_pid(name).is_some_and(|p| !alive(p)) {
                println!("removing namespace {name} left by an earlier run");
                kill_in_namespace(name);
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: gk123br: <...>" or "8: gk123v0@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if owner_pid(name).is_some_and(|p| !alive(p)) {
                println!("removing link {name} left by an earlier run");
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// Kills (SIGKILL) every process in namespace `ns`.
fn kill_in_namespace(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// Picks a free `10.213.X` prefix, starting from one derived from `pid`.
fn pick_subnet(pid: u32) -> anyhow::Result<String> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    for k in 0..250 {
        let x = (pid + k) % 250 + 1;
        let prefix = format!("10.213.{x}.");
        if !used.contains(&prefix) {
            return Ok(format!("10.213.{x}"));
        }
    }
    bail!("no free 10.213.X.0/24 subnet")
}

/// What [`Cluster::create`] made.
enum Setup {
    /// Everything is in place.
    Ready(Cluster),
    /// Namespaces or a bridge cannot be made here: why.
    Unavailable(String),
}

/// One agent of the cluster.
struct Host {
    /// Its namespace.
    ns: String,
    /// The bridge-side end of its veth pair.
    veth: String,
    /// Its address on the bridge.
    addr: String,
    /// Its node id.
    node_id: String,
    /// Its running process (`ip netns exec ... gossipkv agent`).
    child: Option<Child>,
}

/// The namespaces, bridge and agents of one run. Dropping it kills the
/// agents and removes everything.
struct Cluster {
    /// The bridge's name.
    bridge: String,
    /// The hosts.
    hosts: Vec<Host>,
    /// The agent binary.
    bin: PathBuf,
    /// Directory of logs and data dirs.
    work: PathBuf,
    /// HTTP client.
    http: ureq::Agent,
    /// The watchdog that cleans up if this process dies.
    watchdog: Option<Child>,
}

impl Cluster {
    /// Creates the bridge and namespaces (no agents yet). When the bridge or
    /// a namespace cannot be made, says why (the test is then skipped);
    /// later setup failures are errors.
    fn create(
        pid: u32,
        subnet: &str,
        agents: usize,
        bin: PathBuf,
        work: PathBuf,
    ) -> anyhow::Result<Setup> {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(3)))
            .build()
            .into();
        let hosts = (0..agents)
            .map(|i| Host {
                ns: format!("{NS_PREFIX}{pid}-h{i}"),
                veth: format!("{LINK_PREFIX}{pid}v{i}"),
                addr: format!("{subnet}.{}", 10 + i),
                node_id: format!("h{i}"),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            bridge: format!("{LINK_PREFIX}{pid}br"),
            hosts,
            bin,
            work,
            http,
            watchdog: None,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog(pid)?);
        let br = cluster.bridge.clone();
        if let Err(e) = ip(&["link", "add", &br, "type", "bridge"]) {
            return Ok(Setup::Unavailable(format!("cannot create a bridge: {e:#}")));
        }
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for h in &cluster.hosts {
            let ns = h.ns.as_str();
            if let Err(e) = ip(&["netns", "add", ns]) {
                return Ok(Setup::Unavailable(format!(
                    "cannot create a network namespace: {e:#}"
                )));
            }
            ip(&[
                "link", "add", &h.veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &h.veth, "master", &br])?;
            ip(&["link", "set", &h.veth, "up"])?;
            let in_ns = |args: &[&str]| {
                let mut all = vec!["-n", ns];
                all.extend_from_slice(args);
                ip(&all)
            };
            in_ns(&["link", "set", "lo", "up"])?;
            in_ns(&["addr", "add", &format!("{}/24", h.addr), "dev", "eth0"])?;
            in_ns(&["link", "set", "eth0", "up"])?;
        }
        Ok(Setup::Ready(cluster))
    }

    /// The shell commands that remove everything this run made.
    fn cleanup_script(&self) -> String {
        let mut script = String::new();
        let ip = ip_bin();
        for h in &self.hosts {
            // The veth goes explicitly: a deleted namespace is freed by the
            // kernel later, and its links with it.
            script.push_str(&format!(
                "for p in $({ip} netns pids {ns} 2>/dev/null); do kill -9 $p; done; {ip} link del {veth} 2>/dev/null; {ip} netns del {ns} 2>/dev/null; ",
                ns = h.ns,
                veth = h.veth
            ));
        }
        script.push_str(&format!("{ip} link del {} 2>/dev/null; true", self.bridge));
        script
    }

    /// Starts a process, in its own process group (so Ctrl-C does not reach
    /// it), that waits for this one to end and then removes everything,
    /// logs and data dirs too (at most after 30 minutes). After a normal
    /// end, [`Drop`] cleans up and kills it first.
    fn spawn_watchdog(&self, pid: u32) -> anyhow::Result<Child> {
        let script = format!(
            "i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 1800 ]; do sleep 1; i=$((i+1)); done; {}; rm -rf '{}'",
            self.cleanup_script(),
            self.work.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the cleanup watchdog")
    }

    /// Data dir of host `i`.
    fn data_dir(&self, i: usize) -> PathBuf {
        self.work.join(format!("h{i}.data"))
    }

    /// Log file of host `i`.
    fn log_path(&self, i: usize) -> PathBuf {
        self.work.join(format!("h{i}.log"))
    }

    /// Starts the agent of host `i` (appending to its log) and waits until
    /// it answers `/v1/health` over the bridge when `reachable`, or through
    /// the client in its namespace otherwise.
    fn start(&mut self, i: usize, reachable: bool) -> anyhow::Result<()> {
        let log_path = self.log_path(i);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log.try_clone().context("duplicating a log file")?;
        let h = &self.hosts[i];
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", &h.ns])
            .arg(&self.bin)
            .args(["agent", "--node-id", &h.node_id, "--cluster-id", "ct"])
            .args(["--bind", &format!("{}:{GOSSIP_PORT}", h.addr)])
            .args(["--http", &format!("{}:{HTTP_PORT}", h.addr)])
            .args(["--http-token", TOKEN, "--gossip-interval", "200ms"])
            // Collection passes every 6 s (a tenth of it), so that step 5
            // waits seconds, not a minute.
            .args(["--tombstone-retention", "60s"])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--log-level", "info"])
            .env("NO_COLOR", "1");
        for seed in self.hosts.iter().take(2).filter(|s| s.addr != h.addr) {
            cmd.args(["--seed", &format!("{}:{GOSSIP_PORT}", seed.addr)]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start agent h{i}"))?;
        self.hosts[i].child = Some(child);
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Some(c) = self.hosts[i].child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("agent h{i} exited at start: {status}");
                }
            }
            let up = if reachable {
                self.get(i, "/v1/health").is_ok_and(|(s, _)| s == 200)
            } else {
                self.cli(i, &["info"]).is_ok()
            };
            if up {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "agent h{i} did not answer within {WAIT_DEADLINE:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Kills the agent of host `i` with SIGKILL and reaps it.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.hosts[i]
            .child
            .take()
            .with_context(|| format!("agent h{i} is not running"))?;
        child.kill().context("SIGKILL")?;
        child.wait().context("reaping a killed agent")?;
        Ok(())
    }

    /// Sends one request to host `i` over the bridge: (status, body).
    fn request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.hosts[i].addr);
        let auth = format!("Bearer {TOKEN}");
        let result = match (method, body) {
            ("PUT", Some(b)) => self
                .http
                .put(&url)
                .header("Authorization", &auth)
                .send(b.as_bytes()),
            _ => self.http.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = result.with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        Ok((status, text))
    }

    /// GET `path` on host `i`.
    fn get(&self, i: usize, path: &str) -> anyhow::Result<(u16, String)> {
        self.request(i, "GET", path, None)
    }

    /// Writes `key` = `value` through host `i` over the bridge (up to three
    /// attempts).
    fn put(&self, i: usize, key: &str, value: &str) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match self.request(i, "PUT", &format!("/v1/kv/{key}"), Some(value)) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = Some(anyhow::anyhow!("status {status}: {body}")),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(POLL);
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
            .with_context(|| format!("writing {key} through h{i}"))
    }

    /// Runs the `gossipkv` client inside host `i`'s namespace (for when its
    /// link is down); returns its stdout.
    fn cli(&self, i: usize, args: &[&str]) -> anyhow::Result<String> {
        let h = &self.hosts[i];
        run_cmd(
            Command::new("timeout")
                .args(["10", ip_bin(), "netns", "exec", &h.ns])
                .arg(&self.bin)
                .args(args)
                .args(["--http-addr", &format!("{}:{HTTP_PORT}", h.addr)])
                .args(["--http-token", TOKEN]),
        )
    }

    /// Sets the bridge side of host `i`'s link up or down.
    fn link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.hosts[i].veth, state])?;
        Ok(())
    }

    /// Hosts `i`'s snapshot export.
    fn snapshot(&self, i: usize) -> anyhow::Result<String> {
        let (status, body) = self.get(i, "/v1/snapshot")?;
        ensure!(status == 200, "h{i}: /v1/snapshot answered {status}");
        Ok(body)
    }

    /// Host `i`'s view of membership: node id -> state.
    fn members(&self, i: usize) -> anyhow::Result<Vec<(String, String)>> {
        let (status, body) = self.get(i, "/v1/members")?;
        ensure!(status == 200, "h{i}: /v1/members answered {status}");
        parse_members(&body)
    }

    /// Waits until every host (all of `among`) exports the same snapshot
    /// holding exactly the keys `keys`; returns the snapshot.
    fn converge(&self, among: &[usize], keys: &BTreeSet<String>) -> anyhow::Result<String> {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        loop {
            let err = match self.snapshots_agree(among, keys) {
                Ok(snap) => return Ok(snap),
                Err(e) => e,
            };
            ensure!(
                Instant::now() < deadline,
                "no convergence within {CONVERGE_DEADLINE:?}: {err:#}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// One convergence check: see [`Cluster::converge`].
    fn snapshots_agree(&self, among: &[usize], keys: &BTreeSet<String>) -> anyhow::Result<String> {
        let mut first: Option<(usize, String)> = None;
        for &i in among {
            let snap = self.snapshot(i)?;
            let have = snapshot_keys(&snap)?;
            if &have != keys {
                let missing = keys.difference(&have).count();
                let extra = have.difference(keys).count();
                bail!(
                    "h{i} has {} keys ({missing} missing, {extra} unexpected)",
                    have.len()
                );
            }
            match &first {
                None => first = Some((i, snap)),
                Some((j, s)) if *s != snap => {
                    bail!("h{i} and h{j} hold the same keys with different versions")
                }
                Some(_) => {}
            }
        }
        Ok(first.map(|(_, s)| s).unwrap_or_default())
    }

    /// Waits until every host of `among` sees every host alive.
    fn all_alive(&self, among: &[usize]) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let check = || -> anyhow::Result<()> {
                for &i in among {
                    let members = self.members(i)?;
                    for h in &self.hosts {
                        let state = members
                            .iter()
                            .find(|(id, _)| *id == h.node_id)
                            .map(|(_, s)| s.as_str());
                        ensure!(
                            state == Some("alive"),
                            "h{i} sees {} as {}",
                            h.node_id,
                            state.unwrap_or("absent")
                        );
                    }
                }
                Ok(())
            };
            match check() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("not all alive within {WAIT_DEADLINE:?}")))
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Waits until host `observer` sees host `target` as `dead` (or `left`),
    /// reading the member list over the bridge or, when `inside`, with the
    /// client in the observer's namespace.
    fn wait_dead(&self, observer: usize, target: usize, inside: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        let id = &self.hosts[target].node_id;
        let mut last;
        loop {
            let members = if inside {
                self.cli(observer, &["members", "--json"])
                    .and_then(|out| parse_members(&out))
            } else {
                self.members(observer)
            };
            match members {
                Ok(members) => match members.iter().find(|(n, _)| n == id) {
                    Some((_, state)) if state == "dead" || state == "left" => return Ok(()),
                    Some((_, state)) => last = format!("as {state}"),
                    None => last = "absent".to_owned(),
                },
                Err(e) => last = format!("(no member list: {e:#})"),
            }
            ensure!(
                Instant::now() < deadline,
                "h{observer} does not see {id} dead after {WAIT_DEADLINE:?}: last {last}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Prints the last lines of every agent's log, and whether it still
    /// runs.
    fn print_log_tails(&mut self) {
        for i in 0..self.hosts.len() {
            let state = match self.hosts[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => "running".to_owned(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "not running".to_owned(),
            };
            println!("agent h{i}: {state}");
            let path = self.log_path(i);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(25);
            println!("---- last lines of {} ----", path.display());
            for line in &lines[from..] {
                println!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut child) = h.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = Command::new("sh")
            .args(["-c", &self.cleanup_script()])
            .stdin(Stdio::null())
            .status();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Parses `/v1/members`: (node id, state) pairs.
fn parse_members(body: &str) -> anyhow::Result<Vec<(String, String)>> {
    let value: serde_json::Value =
        serde_json::from_str(body).context("/v1/members: invalid JSON")?;
    let array = value.as_array().context("/v1/members: not an array")?;
    array
        .iter()
        .map(|m| {
            let field = |name: &str| {
                m.get(name)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .with_context(|| format!("/v1/members: an entry without `{name}`"))
            };
            Ok((field("node_id")?, field("state")?))
        })
        .collect()
}

/// The keys of a snapshot export (JSON lines).
fn snapshot_keys(snap: &str) -> anyhow::Result<BTreeSet<String>> {
    snap.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).context("snapshot: a line is not JSON")?;
            v.get("key")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .context("snapshot: an entry without `key`")
        })
        .collect()
}

/// The value of `key` in a snapshot export (base64, as exported).
fn snapshot_value(snap: &str, key: &str) -> Option<String> {
    snap.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v.get("key")?.as_str()? == key).then(|| v.get("value")?.as_str().map(str::to_owned))?
    })
}

/// State carried from step to step.
struct Run<'a> {
    /// The cluster.
    cluster: &'a mut Cluster,
    /// Every key written so far.
    keys: BTreeSet<String>,
    /// `nft` binary, if any.
    nft: Option<&'a str>,
}

/// Runs the steps in order; stops after the first failure unless
/// `--keep-going`.
fn run_steps(
    cluster: &mut Cluster,
    opts: &ClusterTestOptions,
    nft: Option<&str>,
) -> Vec<StepResult> {
    type Step = fn(&mut Run<'_>) -> anyhow::Result<String>;
    let steps: [(&'static str, Step); 6] = [
        ("start agents", step_start),
        ("write 100 keys, converge", step_converge),
        ("20% loss on 2 hosts", step_loss),
        ("cut a link, heal", step_partition),
        ("SIGKILL, restart", step_restart),
        ("restarted node adopts", step_adopt),
    ];
    let mut run = Run {
        cluster,
        keys: BTreeSet::new(),
        nft,
    };
    let mut results: Vec<StepResult> = Vec::new();
    let mut failed = false;
    for (name, step) in steps {
        let start_failed = results.first().is_some_and(|r| r.status == "FAILED");
        if failed && (!opts.keep_going || start_failed) {
            results.push(StepResult {
                name,
                status: "not run",
                elapsed: Duration::ZERO,
                detail: String::new(),
            });
            continue;
        }
        println!("==> {name}");
        let t = Instant::now();
        let outcome = step(&mut run);
        let elapsed = t.elapsed();
        let (status, detail) = match outcome {
            Ok(detail) if detail.starts_with("SKIPPED") => ("SKIPPED", detail),
            Ok(detail) => ("ok", detail),
            Err(e) => {
                failed = true;
                ("FAILED", format!("{e:#}"))
            }
        };
        println!(
            "<== {name}: {status} in {:.1} s: {detail}",
            elapsed.as_secs_f64()
        );
        results.push(StepResult {
            name,
            status,
            elapsed,
            detail,
        });
    }
    results
}

/// Prints the summary table.
fn print_summary(results: &[StepResult]) {
    println!();
    println!("{:<28} {:<8} {:>8}  detail", "step", "result", "time");
    for r in results {
        println!(
            "{:<28} {:<8} {:>6.1} s  {}",
            r.name,
            r.status,
            r.elapsed.as_secs_f64(),
            r.detail
        );
    }
}

/// Every host's index.
fn all(run: &Run<'_>) -> Vec<usize> {
    (0..run.cluster.hosts.len()).collect()
}

/// Writes `count` keys `prefix/NNN` round-robin over `through`.
fn write_keys(
    run: &mut Run<'_>,
    prefix: &str,
    count: usize,
    through: &[usize],
) -> anyhow::Result<()> {
    for k in 0..count {
        let i = through[k % through.len()];
        let key = format!("{prefix}/{k:03}");
        run.cluster
            .put(i, &key, &format!("{prefix}-{k}-via-h{i}"))?;
        run.keys.insert(key);
    }
    Ok(())
}

/// Step 0: starts every agent and waits until each sees all alive.
fn step_start(run: &mut Run<'_>) -> anyhow::Result<String> {
    for i in 0..run.cluster.hosts.len() {
        run.cluster.start(i, true)?;
    }
    let t = Instant::now();
    run.cluster.all_alive(&all(run))?;
    Ok(format!(
        "{} agents up; all alive everywhere {:.1} s after the last start",
        run.cluster.hosts.len(),
        t.elapsed().as_secs_f64()
    ))
}

/// Step 1: 100 keys over every agent, then convergence.
fn step_converge(run: &mut Run<'_>) -> anyhow::Result<String> {
    let hosts = all(run);
    write_keys(run, "base", 100, &hosts)?;
    let t = Instant::now();
    run.cluster.converge(&hosts, &run.keys)?;
    Ok(format!(
        "{} keys identical on {} agents {:.2} s after the last write",
        run.keys.len(),
        hosts.len(),
        t.elapsed().as_secs_f64()
    ))
}

/// The nftables table of the loss step.
const NFT_TABLE: &str = "gkvct_loss";

/// Adds (or, with `on == false`, removes) 20% loss on every packet in and
/// out of host `i` but the test's own HTTP traffic.
fn set_loss(run: &Run<'_>, nft: &str, i: usize, on: bool) -> anyhow::Result<()> {
    let ns = run.cluster.hosts[i].ns.as_str();
    let nft_in = |args: &[&str]| {
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", ns, nft]).args(args);
        run_cmd(&mut cmd)
    };
    if !on {
        nft_in(&["delete", "table", "inet", NFT_TABLE])?;
        return Ok(());
    }
    nft_in(&["add", "table", "inet", NFT_TABLE])?;
    for (chain, hook, port_match) in [("in", "input", "dport"), ("out", "output", "sport")] {
        nft_in(&[
            "add",
            "chain",
            "inet",
            NFT_TABLE,
            chain,
            &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
        ])?;
        let http = HTTP_PORT.to_string();
        nft_in(&[
            "add", "rule", "inet", NFT_TABLE, chain, "tcp", port_match, &http, "accept",
        ])?;
        nft_in(&[
            "add", "rule", "inet", NFT_TABLE, chain, "numgen", "random", "mod", "100", "<", "20",
            "counter", "drop",
        ])?;
    }
    Ok(())
}

/// Step 2: 20% loss on hosts 1 and 2, 100 more keys, convergence.
fn step_loss(run: &mut Run<'_>) -> anyhow::Result<String> {
    let Some(nft) = run.nft else {
        return Ok("SKIPPED: nft not available".to_owned());
    };
    let lossy = [1, 2];
    for &i in &lossy {
        set_loss(run, nft, i, true).with_context(|| format!("adding loss on h{i}"))?;
    }
    let result = (|| {
        let hosts = all(run);
        write_keys(run, "lossy", 100, &hosts)?;
        let t = Instant::now();
        run.cluster.converge(&hosts, &run.keys)?;
        let drops = count_drops(run, nft, &lossy);
        Ok(format!(
            "{} keys identical {:.2} s after the last write, with 20% loss on h1 and h2 ({drops} packets dropped)",
            run.keys.len(),
            t.elapsed().as_secs_f64()
        ))
    })();
    for &i in &lossy {
        let removed =
            set_loss(run, nft, i, false).with_context(|| format!("removing loss on h{i}"));
        if let (Ok(_), Err(e)) = (&result, removed) {
            return Err(e);
        }
    }
    result
}

/// Packets dropped by the loss rules of `hosts` (their counters, read with
/// `nft list`).
fn count_drops(run: &Run<'_>, nft: &str, hosts: &[usize]) -> String {
    let mut total = 0u64;
    for &i in hosts {
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", &run.cluster.hosts[i].ns, nft])
            .args(["list", "table", "inet", NFT_TABLE]);
        let Ok(out) = run_cmd(&mut cmd) else {
            return "?".to_owned();
        };
        for line in out.lines().filter(|l| l.contains("drop")) {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "packets" {
                    total += words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    total.to_string()
}

/// Step 3: cut the last host's link, write on both sides, heal, check that
/// it rejoins and everything ends identical.
fn step_partition(run: &mut Run<'_>) -> anyhow::Result<String> {
    let n = run.cluster.hosts.len();
    let cut = n - 1;
    let others: Vec<usize> = (0..cut).collect();
    let t = Instant::now();
    run.cluster.link(cut, false)?;
    let healed = (|| -> anyhow::Result<String> {
        // Both sides notice the cut: the others declare the cut host dead,
        // and it declares them dead.
        run.cluster.wait_dead(0, cut, false)?;
        let seen_after = t.elapsed();
        for &i in &others {
            run.cluster.wait_dead(cut, i, true)?;
        }
        let seen_inside = t.elapsed();
        // Writes on the majority side, over the bridge.
        write_keys(run, "major", 20, &others)?;
        run.cluster.put(0, "split/both", "majority-side")?;
        // Writes on the cut host, from inside its namespace.
        for k in 0..10 {
            let key = format!("minor/{k:03}");
            run.cluster
                .cli(cut, &["kv", "put", &key, &format!("minor-{k}")])
                .with_context(|| format!("writing {key} on the cut host"))?;
            run.keys.insert(key);
        }
        run.cluster
            .cli(cut, &["kv", "put", "split/both", "cut-side"])
            .context("writing split/both on the cut host")?;
        run.keys.insert("split/both".to_owned());
        Ok(format!(
            "h0 saw h{cut} dead {:.1} s after the cut, h{cut} saw all others dead after {:.1} s",
            seen_after.as_secs_f64(),
            seen_inside.as_secs_f64()
        ))
    })();
    run.cluster.link(cut, true)?;
    let during = healed?;
    let t_heal = Instant::now();
    let hosts = all(run);
    run.cluster.all_alive(&hosts)?;
    let alive_after = t_heal.elapsed();
    let snap = run.cluster.converge(&hosts, &run.keys)?;
    let value = snapshot_value(&snap, "split/both").context("split/both missing")?;
    // The snapshot is the same everywhere, so split/both has one value; say which.
    let winner = match value.as_str() {
        "bWFqb3JpdHktc2lkZQ==" => "majority-side",
        "Y3V0LXNpZGU=" => "cut-side",
        other => bail!("split/both has an unexpected value {other}"),
    };
    Ok(format!(
        "{during}; after healing all alive in {:.1} s, {} keys identical in {:.1} s, split/both = {winner} everywhere",
        alive_after.as_secs_f64(),
        run.keys.len(),
        t_heal.elapsed().as_secs_f64()
    ))
}

/// Step 4: SIGKILL one agent, restart it from its data dir with its link
/// down (nobody can refill it), check its keys, heal, check convergence.
fn step_restart(run: &mut Run<'_>) -> anyhow::Result<String> {
    let n = run.cluster.hosts.len();
    let victim = n - 2;
    let hosts = all(run);
    // It holds every key before the kill.
    run.cluster.converge(&hosts, &run.keys)?;
    let t = Instant::now();
    run.cluster.kill(victim)?;
    run.cluster.link(victim, false)?;
    let offline = (|| -> anyhow::Result<usize> {
        run.cluster.start(victim, false)?;
        let export = run.cluster.cli(victim, &["kv", "export"])?;
        let have = snapshot_keys(&export)?;
        let missing: Vec<&String> = run.keys.difference(&have).collect();
        ensure!(
            missing.is_empty(),
            "h{victim} restarted without {} of {} keys (first: {:?})",
            missing.len(),
            run.keys.len(),
            missing.first()
        );
        Ok(have.len())
    })();
    run.cluster.link(victim, true)?;
    let kept = offline?;
    let restarted = t.elapsed();
    let t_heal = Instant::now();
    run.cluster.all_alive(&hosts)?;
    run.cluster.converge(&hosts, &run.keys)?;
    Ok(format!(
        "h{victim} back with {kept} keys from its data dir (link still down) {:.1} s after SIGKILL; all alive and identical {:.1} s after its link came back",
        restarted.as_secs_f64(),
        t_heal.elapsed().as_secs_f64()
    ))
}

/// What a node logs when it writes its older generations' records again as
/// its own (at its first collection pass, a tenth of the retention after it
/// starts: 6 s here).
const ADOPTED_LINE: &str = "took over the records of our older generations";
/// Limit of the wait for [`ADOPTED_LINE`].
const ADOPT_DEADLINE: Duration = Duration::from_secs(30);

/// Step 5: the node restarted in step 4 takes over the records its killed
/// generation wrote (they carry its new generation); the cluster converges
/// again, and every record written by that node, on every node, carries its
/// running generation.
fn step_adopt(run: &mut Run<'_>) -> anyhow::Result<String> {
    let n = run.cluster.hosts.len();
    let victim = n - 2;
    let t = Instant::now();
    let log = run.cluster.log_path(victim);
    loop {
        let text =
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        if text.contains(ADOPTED_LINE) {
            break;
        }
        ensure!(
            t.elapsed() < ADOPT_DEADLINE,
            "h{victim} did not log `{ADOPTED_LINE}` within {ADOPT_DEADLINE:?}"
        );
        std::thread::sleep(POLL);
    }
    let waited = t.elapsed();
    let (status, body) = run.cluster.get(victim, "/v1/self")?;
    ensure!(status == 200, "h{victim}: /v1/self answered {status}");
    let info: serde_json::Value = serde_json::from_str(&body).context("/v1/self: invalid JSON")?;
    let generation = info
        .get("generation")
        .and_then(serde_json::Value::as_u64)
        .context("/v1/self: no generation")?;
    let hosts = all(run);
    let t_conv = Instant::now();
    let id = run.cluster.hosts[victim].node_id.clone();
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let mut last;
    loop {
        let snap = run.cluster.converge(&hosts, &run.keys)?;
        let (mine, stale) = generations_of(&snap, &id, generation)?;
        if stale == 0 && mine > 0 {
            return Ok(format!(
                "h{victim} adopted its killed generation's records {:.1} s after step 4; {mine} records of h{victim}, all of generation {generation}, identical everywhere {:.1} s later",
                waited.as_secs_f64(),
                t_conv.elapsed().as_secs_f64()
            ));
        }
        last = format!("{mine} records of {id} of generation {generation}, {stale} of older ones");
        ensure!(
            Instant::now() < deadline,
            "after {CONVERGE_DEADLINE:?}: {last}"
        );
        std::thread::sleep(POLL);
    }
}

/// Counts the entries of `snap` written by `node`: (of `generation`, of
/// any other generation).
fn generations_of(snap: &str, node: &str, generation: u64) -> anyhow::Result<(usize, usize)> {
    let (mut mine, mut other) = (0, 0);
    for line in snap.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).context("snapshot: a line is not JSON")?;
        if v.get("node").and_then(serde_json::Value::as_str) != Some(node) {
            continue;
        }
        if v.get("generation").and_then(serde_json::Value::as_u64) == Some(generation) {
            mine += 1;
        } else {
            other += 1;
        }
    }
    Ok((mine, other))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_recognises_only_our_names() {
        assert_eq!(owner_pid("gkvct-123-h0"), Some(123));
        assert_eq!(owner_pid("gk123br"), Some(123));
        assert_eq!(owner_pid("gk123v4"), Some(123));
        assert_eq!(owner_pid("gk123v"), None);
        assert_eq!(owner_pid("gkvct-x-h0"), None);
        assert_eq!(owner_pid("gkvct-12-x"), None);
        assert_eq!(owner_pid("eth0"), None);
        assert_eq!(owner_pid("gkbr"), None);
        assert_eq!(owner_pid("gk12brx"), None);
    }

    #[test]
    fn snapshot_helpers() {
        let snap = "{\"key\":\"a\",\"value\":\"eA==\"}\n{\"key\":\"b\",\"value\":\"eQ==\"}\n";
        let keys = snapshot_keys(snap).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(snapshot_value(snap, "b").as_deref(), Some("eQ=="));
        assert_eq!(snapshot_value(snap, "c"), None);
    }

    #[test]
    fn generations_counted() {
        let snap = "{\"key\":\"a\",\"node\":\"h3\",\"generation\":7}\n\
                    {\"key\":\"b\",\"node\":\"h3\",\"generation\":5}\n\
                    {\"key\":\"c\",\"node\":\"h1\",\"generation\":5}\n";
        assert_eq!(generations_of(snap, "h3", 7).unwrap(), (1, 1));
    }

    #[test]
    fn members_parse() {
        let m = parse_members(r#"[{"node_id":"h0","state":"alive","addr":"x"}]"#).unwrap();
        assert_eq!(m, vec![("h0".to_owned(), "alive".to_owned())]);
    }
}
