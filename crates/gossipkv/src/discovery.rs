//! Peer discovery on the local network with mDNS / DNS-SD (`mdns-sd`).
//!
//! Every node with discovery enabled registers one service instance of type
//! [`SERVICE_TYPE`] and browses for the others. The instance carries two TXT
//! properties, which are the only thing the browser trusts:
//!
//! - `cluster=<cluster id>`: instances of other clusters are ignored;
//! - `node=<node id>`: an instance with our own node id is ourselves.
//!
//! The instance name and the host name are derived from the node id (see
//! [`instance_label`] and [`host_label`]); they only need to be unique on the
//! link, and `mdns-sd` renames them on a conflict anyway.
//!
//! The daemon only uses interfaces of the address family of the node's UDP
//! socket: a peer's address of the other family could not be reached from it.
//! Each peer is reduced to one address of that family, so the set sent to the
//! node has one entry per discovered peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mdns_sd::{
    IfKind, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo, UnregisterStatus,
};
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

/// Service type used for discovery.
pub(crate) const SERVICE_TYPE: &str = "_gossipkv._udp.local.";

/// TXT property holding the cluster id.
const TXT_CLUSTER: &str = "cluster";
/// TXT property holding the node id.
const TXT_NODE: &str = "node";

/// Longest DNS label.
const MAX_LABEL: usize = 63;

/// How long [`MdnsHandle::shutdown`] waits for each answer of the daemon.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// What to advertise.
pub(crate) struct MdnsConfig {
    /// This node's id (also used to recognize our own announcements).
    pub(crate) node_id: String,
    /// This node's cluster id; instances of other clusters are ignored.
    pub(crate) cluster_id: String,
    /// The node's bound or advertised UDP address. With an unspecified IP
    /// (`0.0.0.0` or `::`) the addresses of all interfaces of that family
    /// are advertised, and kept up to date by the daemon.
    pub(crate) addr: SocketAddr,
}

/// A running mDNS daemon that advertises this node and browses for peers.
pub(crate) struct MdnsHandle {
    /// `None` once shut down.
    daemon: Option<ServiceDaemon>,
    /// Full name of our registered instance.
    fullname: String,
}

/// Starts an mDNS daemon: registers this node, browses [`SERVICE_TYPE`], and
/// sends the sorted addresses of all discovered peers of the same cluster on
/// `tx` every time that set changes.
///
/// The browse loop runs on its own thread (it needs no runtime); it ends when
/// the daemon shuts down or `tx` is closed.
pub(crate) fn start_mdns(
    cfg: MdnsConfig,
    tx: mpsc::Sender<Vec<SocketAddr>>,
) -> Result<MdnsHandle, String> {
    let instance = instance_label(&cfg.node_id);
    let host = format!("{}.local.", host_label(&cfg.node_id));
    let properties = [
        (TXT_CLUSTER, cfg.cluster_id.as_str()),
        (TXT_NODE, cfg.node_id.as_str()),
    ];
    let ip = cfg.addr.ip();
    let info = if ip.is_unspecified() {
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            (),
            cfg.addr.port(),
            &properties[..],
        )
        .map_err(|e| format!("mDNS service info: {e}"))?
        .enable_addr_auto();
        info.set_interfaces(vec![family_kind(ip)]);
        info
    } else {
        ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            ip,
            cfg.addr.port(),
            &properties[..],
        )
        .map_err(|e| format!("mDNS service info: {e}"))?
    };
    let fullname = info.get_fullname().to_string();

    let daemon = ServiceDaemon::new().map_err(|e| format!("mDNS daemon: {e}"))?;
    // From here on, shut the daemon down on every error (drop does it).
    let handle = MdnsHandle {
        daemon: Some(daemon.clone()),
        fullname: fullname.clone(),
    };
    let other_family = if ip.is_ipv4() {
        IfKind::IPv6
    } else {
        IfKind::IPv4
    };
    daemon
        .disable_interface(other_family)
        .map_err(|e| format!("mDNS interface selection: {e}"))?;
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| format!("mDNS browse {SERVICE_TYPE}: {e}"))?;
    daemon
        .register(info)
        .map_err(|e| format!("mDNS register {fullname}: {e}"))?;

    let browser = Browser {
        node_id: cfg.node_id,
        cluster_id: cfg.cluster_id,
        local: cfg.addr,
        peers: HashMap::new(),
        sent: Vec::new(),
    };
    if let Err(e) = std::thread::Builder::new()
        .name("gossipkv-mdns".to_string())
        .spawn(move || browser.run(events, tx))
    {
        // Dropping the handle shuts the daemon down without blocking.
        drop(handle);
        return Err(format!("mDNS browse thread: {e}"));
    }
    debug!(instance = %fullname, addr = %cfg.addr, "mDNS discovery started");
    Ok(handle)
}

impl MdnsHandle {
    /// Unregisters (sends goodbye) and shuts the daemon down, waiting up to
    /// [`SHUTDOWN_WAIT`] for each answer: blocking, so never on an async
    /// worker (`GossipKv::shutdown` runs it with `spawn_blocking`, `Drop`
    /// on a thread of its own). Idempotent.
    pub(crate) fn shutdown(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.unregister(&self.fullname) {
            Ok(status) => match status.recv_timeout(SHUTDOWN_WAIT) {
                Ok(UnregisterStatus::OK) => {
                    debug!(instance = %self.fullname, "mDNS service unregistered")
                }
                Ok(other) => {
                    debug!(instance = %self.fullname, status = ?other, "mDNS unregister")
                }
                Err(e) => warn!(instance = %self.fullname, "mDNS unregister: {e}"),
            },
            Err(e) => warn!(instance = %self.fullname, "mDNS unregister: {e}"),
        }
        // The daemon also says goodbye for anything still registered.
        match daemon.shutdown() {
            Ok(status) => {
                if let Err(e) = status.recv_timeout(SHUTDOWN_WAIT) {
                    warn!("mDNS daemon shutdown: {e}");
                }
            }
            Err(mdns_sd::Error::DaemonShutdown) => {}
            Err(e) => warn!("mDNS daemon shutdown: {e}"),
        }
    }
}

impl Drop for MdnsHandle {
    /// Never blocks the caller (the last handle of a node may be dropped on
    /// an async worker): the goodbye and the daemon's shutdown, and the wait
    /// for their answers, run on a short-lived thread of their own. Should
    /// no thread start, both are sent without waiting for the answers.
    fn drop(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        let fullname = std::mem::take(&mut self.fullname);
        let mut handle = MdnsHandle {
            daemon: Some(daemon.clone()),
            fullname: fullname.clone(),
        };
        off_thread(
            "gossipkv-mdns-stop",
            move || handle.shutdown(),
            move || {
                // Both only queue a command for the daemon's own thread.
                let _ = daemon.unregister(&fullname);
                let _ = daemon.shutdown();
            },
        );
    }
}

/// Runs `work` on a new thread named `name` and returns at once; runs
/// `fallback` here instead when no thread can be started.
fn off_thread(name: &str, work: impl FnOnce() + Send + 'static, fallback: impl FnOnce()) {
    if let Err(e) = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(work)
    {
        warn!("cannot start thread {name}: {e}; not waiting for the mDNS daemon");
        fallback();
    }
}

/// State of the browse loop.
struct Browser {
    node_id: String,
    cluster_id: String,
    /// Our own address: decides the family and loopback preference.
    local: SocketAddr,
    /// Discovered peers by lowercased instance full name: node id, address.
    peers: HashMap<String, (String, SocketAddr)>,
    /// The last set sent.
    sent: Vec<SocketAddr>,
}

impl Browser {
    fn run(mut self, events: mdns_sd::Receiver<ServiceEvent>, tx: mpsc::Sender<Vec<SocketAddr>>) {
        while let Ok(event) = events.recv() {
            match event {
                ServiceEvent::ServiceResolved(service) => self.resolved(&service),
                ServiceEvent::ServiceRemoved(_, fullname) => self.removed(&fullname),
                ServiceEvent::SearchStopped(_) => break,
                _ => continue,
            }
            let mut addrs: Vec<SocketAddr> = self.peers.values().map(|(_, a)| *a).collect();
            addrs.sort_unstable();
            addrs.dedup();
            if addrs != self.sent {
                self.sent = addrs.clone();
                if tx.blocking_send(addrs).is_err() {
                    break;
                }
            }
        }
        debug!("mDNS browse loop ended");
    }

    fn resolved(&mut self, service: &ResolvedService) {
        let key = service.get_fullname().to_ascii_lowercase();
        let (Some(cluster), Some(node)) = (txt(service, TXT_CLUSTER), txt(service, TXT_NODE))
        else {
            trace!(instance = %service.get_fullname(), "mDNS: skipping service without cluster/node TXT");
            self.forget(&key);
            return;
        };
        if node == self.node_id {
            return;
        }
        if cluster != self.cluster_id {
            trace!(instance = %service.get_fullname(), %cluster, "mDNS: skipping service of another cluster");
            self.forget(&key);
            return;
        }
        let Some(addr) = pick_addr(service, self.local) else {
            trace!(instance = %service.get_fullname(), "mDNS: skipping service without a usable address");
            self.forget(&key);
            return;
        };
        let peer = (node.to_string(), addr);
        if self.peers.get(&key) != Some(&peer) {
            debug!(instance = %service.get_fullname(), node = %node, %addr, "mDNS: discovered peer");
            self.peers.insert(key, peer);
        }
    }

    fn removed(&mut self, fullname: &str) {
        self.forget(&fullname.to_ascii_lowercase());
    }

    fn forget(&mut self, key: &str) {
        if let Some((node, addr)) = self.peers.remove(key) {
            debug!(instance = %key, node = %node, %addr, "mDNS: peer removed");
        }
    }
}

/// A TXT property as UTF-8; `None` if missing, valueless or not UTF-8.
fn txt<'a>(service: &'a ResolvedService, key: &str) -> Option<&'a str> {
    let value = service.get_property_val(key)??;
    std::str::from_utf8(value).ok()
}

/// `IfKind` of `ip`'s address family.
fn family_kind(ip: IpAddr) -> IfKind {
    if ip.is_ipv4() {
        IfKind::IPv4
    } else {
        IfKind::IPv6
    }
}

/// One address of `service` that a socket bound to `local` can reach: same
/// family, not unspecified or multicast; loopback only if `local` is
/// loopback, else preferred last; IPv6 link-local preferred last and given
/// its scope. Ties go to the smallest address, so the choice is stable.
fn pick_addr(service: &ResolvedService, local: SocketAddr) -> Option<SocketAddr> {
    let port = service.get_port();
    if port == 0 {
        return None;
    }
    let local_loopback = local.ip().is_loopback();
    service
        .get_addresses()
        .iter()
        .filter_map(|scoped| {
            let ip = scoped.to_ip_addr();
            if ip.is_ipv4() != local.is_ipv4() || ip.is_unspecified() || ip.is_multicast() {
                return None;
            }
            let addr = match scoped {
                ScopedIp::V6(v6) if is_unicast_link_local(v6.addr()) => {
                    let scope = v6.scope_id().index;
                    if scope == 0 {
                        return None;
                    }
                    SocketAddr::V6(SocketAddrV6::new(*v6.addr(), port, 0, scope))
                }
                _ => SocketAddr::new(ip, port),
            };
            // Lower is better: matching loopback-ness, then not link-local.
            let loopback_rank = match (ip.is_loopback(), local_loopback) {
                (false, false) | (true, true) => 0_u8,
                (false, true) => 1,
                (true, false) => 2,
            };
            let link_local = matches!(addr, SocketAddr::V6(a) if a.scope_id() != 0);
            let rank = (loopback_rank, link_local);
            Some((rank, addr))
        })
        .min()
        .map(|(_, addr)| addr)
}

fn is_unicast_link_local(ip: &std::net::Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The mDNS instance name of a node: the node id if it is made of ASCII
/// letters, digits, `-` and `_` and fits in a DNS label, else those
/// characters (others replaced by `-`), shortened, plus `-` and a hash of
/// the node id.
fn instance_label(node_id: &str) -> String {
    sanitize(node_id, |c| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    })
}

/// The host label of a node (the host name is `<label>.local.`): like
/// [`instance_label`], but only ASCII letters, digits and inner `-`.
fn host_label(node_id: &str) -> String {
    sanitize(node_id, |c| c.is_ascii_alphanumeric() || c == '-')
}

fn sanitize(node_id: &str, allowed: impl Fn(char) -> bool) -> String {
    let mapped: String = node_id
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .collect();
    let mut label = mapped.trim_matches('-').to_string();
    if label == node_id && !label.is_empty() && label.len() <= MAX_LABEL {
        return label;
    }
    let suffix = format!("-{:08x}", fnv1a(node_id.as_bytes()) as u32);
    // `label` is ASCII: any byte index is a char boundary.
    label.truncate(MAX_LABEL - suffix.len());
    let mut label = label.trim_end_matches('-').to_string();
    if label.is_empty() {
        label.push_str("gossipkv");
    }
    label.push_str(&suffix);
    label
}

/// 64-bit FNV-1a: a stable hash (std's hasher is not stable across builds).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_thread_returns_before_the_work_is_done() {
        // The work blocks until released: `off_thread` must not wait for it
        // (no mDNS daemon here: mDNS only runs in tests/mdns.rs, inside a
        // network namespace).
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let start = std::time::Instant::now();
        off_thread(
            "test-off-thread",
            move || {
                let _ = release_rx.recv();
                let _ = done_tx.send(());
            },
            || panic!("a thread can be started"),
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(done_rx.try_recv().is_err(), "the work is still blocked");
        release_tx.send(()).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the work finishes on its own thread");
    }

    #[test]
    fn labels_are_valid_dns_labels() {
        assert_eq!(instance_label("node-a"), "node-a");
        assert_eq!(instance_label("node_a"), "node_a");
        assert_eq!(host_label("node-a"), "node-a");
        let h = host_label("node_a");
        assert!(
            h.starts_with("node-a-") && h.len() == "node-a-".len() + 8,
            "{h}"
        );
        assert_ne!(host_label("node_a"), host_label("node.a"));
        for id in [
            "",
            "-",
            "..",
            "é",
            "a.b\\c",
            &"x".repeat(200),
            "-lead",
            "trail-",
        ] {
            for label in [instance_label(id), host_label(id)] {
                assert!(
                    !label.is_empty() && label.len() <= MAX_LABEL,
                    "{id:?} -> {label:?}"
                );
                assert!(
                    label.is_ascii() && !label.contains('.'),
                    "{id:?} -> {label:?}"
                );
                assert!(
                    !label.starts_with('-') && !label.ends_with('-'),
                    "{id:?} -> {label:?}"
                );
            }
        }
        assert_eq!(instance_label("é"), instance_label("é"));
        assert_ne!(instance_label("é"), instance_label("è"));
    }
}
