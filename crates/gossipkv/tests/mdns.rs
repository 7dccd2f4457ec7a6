//! mDNS discovery end to end, only ever inside a private network namespace.
//!
//! An mDNS daemon joins multicast groups on every interface it can see, so
//! this test must never run in the host's network namespace. It is built with
//! `harness = false` and works in two modes:
//!
//! - outer (no `GOSSIPKV_MDNS_NETNS`): re-runs this executable under
//!   `unshare --net` with `GOSSIPKV_MDNS_NETNS=1` and exits with its status.
//!   If no namespace can be made (not root, no `unshare`, no `ip`, no veth),
//!   it prints a loud `SKIPPED` message and exits 0 without touching mDNS;
//! - inner (`GOSSIPKV_MDNS_NETNS` set): checks that it is in a fresh network
//!   namespace (else aborts), brings up `lo` and a veth pair with
//!   10.77.0.1/24 and 10.77.0.2/24 (both ends here), then runs the scenario.
//!
//! Scenario: three nodes of cluster `mdns-a` and one of `mdns-b`, all with
//! discovery and no seeds. The `mdns-a` nodes must find each other and
//! replicate a key; the `mdns-b` node must never see them nor their data;
//! a node that shuts down must leave discovery (its goodbye is seen by an
//! independent mDNS browser) and stop being an alive member. Then, on a
//! current-thread runtime, dropping the last handle of a discovery node must
//! return within [`DROP_BOUND`] without stalling the runtime, and its goodbye
//! must still be sent. Every wait polls a condition with a deadline; nothing
//! sleeps and hopes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use gossipkv::{GossipKv, MemberState};

/// Set in the re-executed child that runs inside the namespace.
const NETNS_ENV: &str = "GOSSIPKV_MDNS_NETNS";
/// mDNS service type of gossipkv nodes (TXT properties `cluster` and `node`).
const SERVICE_TYPE: &str = "_gossipkv._udp.local.";
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
const IP_A: &str = "10.77.0.1";
const IP_B: &str = "10.77.0.2";

type Kv = GossipKv<String, String>;

fn main() -> ExitCode {
    if std::env::var_os(NETNS_ENV).is_some() {
        inner()
    } else {
        outer()
    }
}

// ---------------------------------------------------------------- outer mode

fn outer() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return failed(&format!("cannot find the test executable: {e}")),
    };
    if let Err(reason) = probe_netns() {
        skipped(&reason);
        return ExitCode::SUCCESS;
    }
    let status = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&exe)
        .env(NETNS_ENV, "1")
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        // The child already printed its summary line.
        Ok(s) if s.code() == Some(1) => ExitCode::FAILURE,
        Ok(s) => failed(&format!("the namespaced test process ended with {s}")),
        Err(e) => failed(&format!("cannot run unshare: {e}")),
    }
}

/// Why a private network namespace with a veth pair cannot be made, if so.
fn probe_netns() -> std::result::Result<(), String> {
    let ip = find_ip().ok_or("the iproute2 `ip` command was not found")?;
    run_probe(&["--net", "--", "true"])
        .map_err(|e| format!("`unshare --net -- true` failed: {e}"))?;
    let ip = ip.to_string_lossy();
    run_probe(&[
        "--net",
        "--",
        &ip,
        "link",
        "add",
        "gkvprobe0",
        "type",
        "veth",
        "peer",
        "name",
        "gkvprobe1",
    ])
    .map_err(|e| format!("cannot create a veth pair in a new namespace: {e}"))
}

fn run_probe(args: &[&str]) -> std::result::Result<(), String> {
    let out = Command::new("unshare")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "`unshare` was not found".to_string(),
            _ => format!("cannot run `unshare`: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn skipped(reason: &str) {
    let msg = format!(
        "\n\
         ************************************************************************\n\
         SKIPPED: mDNS test needs a private network namespace (root or\n\
         CAP_SYS_ADMIN, `unshare`, iproute2 `ip` with veth support): {reason}\n\
         mDNS is never run in the host's network namespace, so discovery was\n\
         NOT tested. Run this test as root to test it.\n\
         ************************************************************************\n"
    );
    eprintln!("{msg}");
    println!("{msg}");
    println!("mdns: 0 passed, 0 failed, 1 skipped");
}

fn failed(why: &str) -> ExitCode {
    eprintln!("mdns: FAILED: {why}");
    println!("mdns: 0 passed, 1 failed");
    ExitCode::FAILURE
}

fn find_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join("ip"))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------- inner mode

fn inner() -> ExitCode {
    let outcome = std::panic::catch_unwind(|| -> Result<()> {
        setup_netns().context("network namespace setup")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(scenario())?;
        drop(rt);
        // On a current-thread runtime, a blocking drop would stall every
        // task: the one place where it shows.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(dropping_a_discovery_node())
    });
    match outcome {
        Ok(Ok(())) => {
            println!("mdns: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => failed(&format!("{e:#}")),
        Err(_) => failed("panicked (see above)"),
    }
}

/// Makes sure this is a fresh network namespace, then brings up `lo` and a
/// veth pair with [`IP_A`] and [`IP_B`].
fn setup_netns() -> Result<()> {
    let ip = find_ip().ok_or_else(|| anyhow!("`ip` not found"))?;
    // Never run mDNS in the host's namespace: refuse unless this namespace
    // differs from the parent's (the outer test process, or whoever set the
    // variable by hand) and PID 1's (when readable), and holds no live
    // interface of its own.
    let ours = std::fs::read_link("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let parent = format!("/proc/{}/ns/net", std::os::unix::process::parent_id());
    for other in [parent.as_str(), "/proc/1/ns/net"] {
        if let Ok(theirs) = std::fs::read_link(other) {
            ensure!(
                theirs != ours,
                "REFUSING TO RUN: this process shares the network namespace of {other} ({}); \
                 {NETNS_ENV} must only be set by the test itself under `unshare --net`",
                ours.display()
            );
        }
    }
    let links = list_links(&ip)?;
    let foreign: Vec<&Link> = links
        .iter()
        .filter(|l| l.name != "lo" && (l.up || !l.addrs.is_empty()))
        .collect();
    ensure!(
        foreign.is_empty(),
        "REFUSING TO RUN: not a fresh network namespace, it has live interfaces {:?}",
        foreign.iter().map(|l| &l.name).collect::<Vec<_>>()
    );

    let pid = std::process::id() % 100_000;
    let (va, vb) = (format!("gkm{pid}a"), format!("gkm{pid}b"));
    run_ip(&ip, &["link", "set", "lo", "up"])?;
    run_ip(
        &ip,
        &["link", "add", &va, "type", "veth", "peer", "name", &vb],
    )?;
    for (dev, addr) in [(&va, IP_A), (&vb, IP_B)] {
        run_ip(&ip, &["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        run_ip(&ip, &["link", "set", "dev", dev, "multicast", "on", "up"])?;
    }

    let start = Instant::now();
    loop {
        let links = list_links(&ip)?;
        let mut names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        let live: Vec<&Link> = links
            .iter()
            .filter(|l| l.up || !l.addrs.is_empty())
            .collect();
        let ready = |dev: &str, addr: &str| {
            links
                .iter()
                .any(|l| l.name == dev && l.oper_up && l.addrs.iter().any(|a| a == addr))
        };
        ensure!(
            live.iter()
                .all(|l| l.name == "lo" || l.name == va || l.name == vb),
            "REFUSING TO RUN: unexpected live interfaces {names:?}"
        );
        if ready(&va, IP_A) && ready(&vb, IP_B) {
            eprintln!("mdns: network namespace ready: interfaces {names:?}");
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "veth pair {va}/{vb} did not come up: {links:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[derive(Debug)]
struct Link {
    name: String,
    /// Administratively up.
    up: bool,
    /// Operationally up (carrier).
    oper_up: bool,
    /// IPv4 and IPv6 addresses, without prefix length.
    addrs: Vec<String>,
}

fn list_links(ip: &Path) -> Result<Vec<Link>> {
    let out = run_ip(ip, &["-j", "addr", "show"])?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j addr show`")?;
    let list = json
        .as_array()
        .ok_or_else(|| anyhow!("`ip -j addr show` is not a list"))?;
    Ok(list
        .iter()
        .map(|l| Link {
            name: l["ifname"].as_str().unwrap_or_default().to_string(),
            up: l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP")),
            oper_up: l["operstate"] == "UP",
            addrs: l["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|a| a["local"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

fn run_ip(ip: &Path, args: &[&str]) -> Result<Output> {
    let out = Command::new(ip)
        .args(args.iter().map(OsStr::new))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "ip {} failed: {} ({})",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

// ---------------------------------------------------------------- scenario

async fn node(id: &str, cluster: &str, ip: &str) -> Result<Kv> {
    GossipKv::<String, String>::builder()
        .node_id(id)
        .cluster_id(cluster)
        .bind_addr(format!("{ip}:0"))
        .discovery(true)
        .gossip_interval(Duration::from_millis(100))
        .build()
        .await
        .with_context(|| format!("starting {id}"))
}

/// Polls `cond` every [`POLL`] until it returns true, an error, or
/// [`DEADLINE`] passes; `invariant` is checked at every poll too.
async fn wait_until(
    what: &str,
    invariant: &impl Fn() -> Result<()>,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        invariant()?;
        if cond()? {
            eprintln!("mdns: ok after {:?}: {what}", start.elapsed());
            return Ok(());
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `kv`'s view of the other members: node id to (address, state).
fn members(kv: &Kv) -> HashMap<String, (SocketAddr, MemberState)> {
    kv.members()
        .into_iter()
        .map(|m| (m.node_id.to_string(), (m.addr, m.state)))
        .filter(|(id, _)| id != kv.node_id())
        .collect()
}

async fn scenario() -> Result<()> {
    let observer = Observer::start()?;
    let a1 = node("mdns-a1", "mdns-a", IP_A).await?;
    let a2 = node("mdns-a2", "mdns-a", IP_B).await?;
    let a3 = node("mdns-a3", "mdns-a", IP_A).await?;
    let b1 = node("mdns-b1", "mdns-b", IP_B).await?;
    let all_a = [&a1, &a2, &a3];
    b1.set("b-only", "from b".to_string())?;

    // Checked at every poll: the mdns-b node never learns of mdns-a.
    let isolated = || -> Result<()> {
        let seen = members(&b1);
        ensure!(
            seen.keys().all(|id| !id.starts_with("mdns-a")),
            "the mdns-b node lists mdns-a members: {seen:?}"
        );
        ensure!(
            b1.get("greeting")?.is_none(),
            "the mdns-b node got mdns-a's key"
        );
        for a in all_a.iter().filter(|a| !a.is_closed()) {
            ensure!(
                a.get("b-only")?.is_none(),
                "{} got mdns-b's key",
                a.node_id()
            );
        }
        Ok(())
    };

    wait_until(
        "an independent mDNS browser sees all four nodes with their TXT records",
        &isolated,
        || {
            let seen = observer.nodes();
            Ok([
                ("mdns-a1", "mdns-a"),
                ("mdns-a2", "mdns-a"),
                ("mdns-a3", "mdns-a"),
                ("mdns-b1", "mdns-b"),
            ]
            .iter()
            .all(|(n, c)| seen.get(*n).map(String::as_str) == Some(c)))
        },
    )
    .await?;

    wait_until(
        "each mdns-a node lists the other two as alive, at their bound addresses",
        &isolated,
        || {
            Ok(all_a.iter().all(|kv| {
                let seen = members(kv);
                all_a
                    .iter()
                    .filter(|o| o.node_id() != kv.node_id())
                    .all(|o| {
                        seen.get(o.node_id())
                            == Some(&(o.local_addr().expect("bound"), MemberState::Alive))
                    })
            }))
        },
    )
    .await?;

    a1.set("greeting", "hello over mDNS".to_string())?;
    wait_until(
        "the key set on mdns-a1 reaches mdns-a2 and mdns-a3",
        &isolated,
        || {
            Ok(a2.get("greeting")?.as_deref() == Some("hello over mDNS")
                && a3.get("greeting")?.as_deref() == Some("hello over mDNS"))
        },
    )
    .await?;

    a3.shutdown().await?;
    wait_until(
        "mdns-a3 leaves discovery (its goodbye reaches the browser)",
        &isolated,
        || Ok(!observer.nodes().contains_key("mdns-a3")),
    )
    .await?;
    wait_until(
        "mdns-a1 and mdns-a2 no longer list mdns-a3 as alive",
        &isolated,
        || {
            Ok([&a1, &a2].iter().all(|kv| {
                members(kv)
                    .get("mdns-a3")
                    .is_none_or(|(_, state)| *state != MemberState::Alive)
            }))
        },
    )
    .await?;
    for kv in [&a1, &a2] {
        eprintln!(
            "mdns: {} sees mdns-a3 as {:?}",
            kv.node_id(),
            members(kv).get("mdns-a3").map(|(_, s)| s)
        );
    }
    isolated()?;

    for kv in [a1, a2, b1] {
        kv.shutdown().await?;
    }
    observer.stop();
    Ok(())
}

/// Longest a drop of a discovery node's last handle may take.
const DROP_BOUND: Duration = Duration::from_millis(200);

/// Drops the last handle of a registered discovery node on a
/// current-thread runtime: the drop returns at once (the goodbye and the
/// daemon's shutdown run off the caller), a timer on the same runtime still
/// fires, and the goodbye is still sent.
async fn dropping_a_discovery_node() -> Result<()> {
    let observer = Observer::start()?;
    let no_invariant = || Ok(());
    let kv = node("mdns-drop", "mdns-c", IP_A).await?;
    wait_until(
        "the browser sees mdns-drop registered",
        &no_invariant,
        || Ok(observer.nodes().contains_key("mdns-drop")),
    )
    .await?;
    let timer = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
    });
    let start = Instant::now();
    drop(kv);
    let took = start.elapsed();
    eprintln!("mdns: dropping the last handle of a discovery node took {took:?}");
    ensure!(
        took < DROP_BOUND,
        "dropping the last handle of a discovery node took {took:?} (bound {DROP_BOUND:?})"
    );
    tokio::time::timeout(DEADLINE, timer)
        .await
        .context("a timer on the same current-thread runtime never fired")??;
    wait_until(
        "mdns-drop's goodbye reaches the browser after the drop",
        &no_invariant,
        || Ok(!observer.nodes().contains_key("mdns-drop")),
    )
    .await?;
    observer.stop();
    Ok(())
}

/// A plain mdns-sd browser, independent of gossipkv: node id to cluster id of
/// every `_gossipkv._udp` instance currently announced.
struct Observer {
    daemon: mdns_sd::ServiceDaemon,
    /// Instance full name to (node id, cluster id).
    seen: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl Observer {
    fn start() -> Result<Self> {
        let daemon = mdns_sd::ServiceDaemon::new()?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let map = Arc::clone(&seen);
        std::thread::spawn(move || {
            while let Ok(event) = events.recv() {
                let mut map = map.lock().unwrap();
                match event {
                    mdns_sd::ServiceEvent::ServiceResolved(s) => {
                        let txt = |k| s.get_property_val_str(k).unwrap_or_default().to_string();
                        let name = s.get_fullname().to_ascii_lowercase();
                        map.insert(name, (txt("node"), txt("cluster")));
                    }
                    mdns_sd::ServiceEvent::ServiceRemoved(_, name) => {
                        map.remove(&name.to_ascii_lowercase());
                    }
                    _ => {}
                }
            }
        });
        Ok(Self { daemon, seen })
    }

    fn nodes(&self) -> HashMap<String, String> {
        self.seen.lock().unwrap().values().cloned().collect()
    }

    fn stop(self) {
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }
}
