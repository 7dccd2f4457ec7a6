//! Starting a node: the builder's options checked, the store, socket,
//! protocol, driver and discovery set up.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_core::{
    DetectorConfig, MemberEvent, Protocol, ProtocolConfig, MAX_NODE_ID_LEN, MAX_PACKET_SIZE,
    MAX_VALUE_SIZE_LIMIT, MIN_PACKET_SIZE,
};
use gossipkv_storage::{ChangeCause, Key, Limits, NodeId, Origin, Record, Store, StoreConfig};
use gossipkv_transport::{Transport, UdpConfig, UdpTransport};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info};

use crate::builder::{parse_socket_addr, split_host_port, Builder};
use crate::discovery::{start_mdns, MdnsConfig, MdnsHandle};
use crate::driver::{new_generation, refresh_seeds, resolve_seeds, Addrs, Clock, Driver, Reporter};
use crate::error::{ConfigOption, Error};
use crate::health::HealthTracker;
use crate::node::{GossipKv, Inner, WATCH_QUEUE};
use crate::persist::{self, Persister};
use crate::sealing::{SealedTransport, Sealing};
use crate::watch::{Change, ChangeKind};
use gossipkv_proto::seal::MAX_SEALED_OVERHEAD;

/// How many times a node bound to port 0 binds again when the port the
/// system gave its UDP socket is taken on TCP (see [`bind_pair`]).
const BIND_TRIES: usize = 8;

/// Fresh writes queued for eager push; beyond this, writes still replicate
/// by anti-entropy.
const PUSH_QUEUE: usize = 65_536;

/// Longest cluster id accepted, in bytes.
const MAX_CLUSTER_ID_LEN: usize = 128;

/// Checks the options that need no I/O. Each error names the option that
/// failed, as the builder method that sets it.
fn check<K, V>(b: &Builder<K, V>) -> Result<(), Error> {
    use ConfigOption as O;
    if let Some(id) = &b.node_id {
        if id.is_empty() {
            return Err(Error::config(O::NodeId, "node id is empty"));
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(Error::config(
                O::NodeId,
                format!("node id is {} bytes, at most {MAX_NODE_ID_LEN}", id.len()),
            ));
        }
    }
    if b.cluster_id.is_empty() || b.cluster_id.len() > MAX_CLUSTER_ID_LEN {
        return Err(Error::config(
            O::ClusterId,
            format!(
                "cluster id is {} bytes, it must be 1 to {MAX_CLUSTER_ID_LEN}",
                b.cluster_id.len()
            ),
        ));
    }
    if b.gossip_interval.is_zero() {
        return Err(Error::config(
            O::GossipInterval,
            "gossip interval must be greater than zero",
        ));
    }
    if b.fanout == 0 {
        return Err(Error::config(O::Fanout, "fanout must be at least 1"));
    }
    if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&b.packet_size) {
        return Err(Error::config(
            O::PacketSize,
            format!(
                "packet size {} is out of range {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE}",
                b.packet_size
            ),
        ));
    }
    if b.keyring.is_some() && b.packet_size < MIN_PACKET_SIZE + MAX_SEALED_OVERHEAD {
        return Err(Error::config(
            O::PacketSize,
            format!(
                "packet size {} leaves no room for sealing: with a keyring it must be at least {}",
                b.packet_size,
                MIN_PACKET_SIZE + MAX_SEALED_OVERHEAD
            ),
        ));
    }
    if b.replay_window < Duration::from_secs(1) {
        return Err(Error::config(
            O::Keyring,
            "replay window must be at least one second",
        ));
    }
    if !(1..=MAX_VALUE_SIZE_LIMIT).contains(&b.max_value_size) {
        return Err(Error::config(
            O::MaxValueSize,
            format!(
                "max value size {} is out of range 1..={MAX_VALUE_SIZE_LIMIT}",
                b.max_value_size
            ),
        ));
    }
    if b.tombstone_retention.is_zero() {
        return Err(Error::config(
            O::TombstoneRetention,
            "tombstone retention must be greater than zero",
        ));
    }
    if b.suspect_timeout.is_some_and(|t| t.is_zero()) {
        return Err(Error::config(
            O::SuspectTimeout,
            "suspect timeout must be greater than zero",
        ));
    }
    if b.seed_refresh.is_zero() {
        return Err(Error::config(
            O::SeedRefreshInterval,
            "seed refresh interval must be greater than zero",
        ));
    }
    if b.max_clock_drift < Duration::from_secs(1) {
        return Err(Error::config(
            O::MaxClockDrift,
            "max clock drift must be at least one second",
        ));
    }
    if let crate::persist::Durability::Interval(every) = b.durability {
        if every.is_zero() {
            return Err(Error::config(
                O::Durability,
                "the commit interval must be greater than zero",
            ));
        }
    }
    if b.data_dir.is_some() && b.node_id.is_none() {
        return Err(Error::config(
            O::NodeId,
            "a node with a data dir needs a fixed node id (the directory belongs to one node)",
        ));
    }
    for seed in &b.seeds {
        split_host_port(seed).map_err(|m| Error::config(O::Seeds, format!("seed {m}")))?;
    }
    if b.bind_addr.is_none() {
        if !b.seeds.is_empty() {
            return Err(Error::config(O::Seeds, "seeds need a bind address"));
        }
        if b.discovery {
            return Err(Error::config(
                O::Discovery,
                "discovery needs a bind address",
            ));
        }
        if b.advertise_addr.is_some() {
            return Err(Error::config(
                O::AdvertiseAddr,
                "an advertise address needs a bind address",
            ));
        }
    }
    Ok(())
}

/// The channels and trackers every node has, networked or not.
struct Shared {
    store: Arc<Store>,
    persister: Option<Arc<Persister>>,
    changes: broadcast::Sender<Change>,
    member_events: broadcast::Sender<MemberEvent>,
    closed_tx: watch::Sender<bool>,
    synced: watch::Sender<bool>,
    health: Arc<HealthTracker>,
}

impl Shared {
    /// Installs the store's change observer: it tells watchers, and the
    /// persister when there is one.
    fn new(store: Arc<Store>, persister: Option<Arc<Persister>>) -> Self {
        let (changes, _) = broadcast::channel::<Change>(WATCH_QUEUE);
        let (member_events, _) = broadcast::channel::<MemberEvent>(WATCH_QUEUE);
        let (closed_tx, _) = watch::channel(false);
        let (synced, _) = watch::channel(false);
        let tx = changes.clone();
        let marker = persister.clone();
        store.set_observer(Arc::new(
            move |key: &str, value: Option<&Bytes>, cause: ChangeCause| {
                if let Some(p) = &marker {
                    p.mark(key);
                }
                if tx.receiver_count() > 0 {
                    let _ = tx.send(Change {
                        key: Key::from(key),
                        value: value.cloned(),
                        kind: ChangeKind::from(cause),
                    });
                }
            },
        ));
        Shared {
            store,
            persister,
            changes,
            member_events,
            closed_tx,
            synced,
            health: Arc::new(HealthTracker::default()),
        }
    }
}

/// Validates a builder and starts the node.
pub(crate) async fn start<K, V>(b: Builder<K, V>) -> Result<GossipKv<K, V>, Error>
where
    K: From<String> + AsRef<str> + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    check(&b)?;
    let limits = crate::memory::limits(b.max_entries, b.max_bytes, b.memory_policy)?;
    let node_id = b
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{:016x}", rand::rng().random::<u64>()));
    let node = NodeId::new(&node_id);
    let (shared, generation, incarnation) = open_store(&b, &node, limits).await?;
    let Some(bind) = &b.bind_addr else {
        debug!(node = %node, "started local-only node");
        return Ok(local_only(b, node, shared));
    };
    let bind = parse_socket_addr(ConfigOption::BindAddr, "bind address", bind)?;
    let advertise = match &b.advertise_addr {
        Some(a) => Some(parse_socket_addr(
            ConfigOption::AdvertiseAddr,
            "advertise address",
            a,
        )?),
        None => None,
    };
    // Everything from here on (the socket, the tasks) needs a runtime:
    // without one, say so instead of panicking inside the transport.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::NoRuntime);
    }
    let reporter = Reporter::spawn(b.error_handler.clone(), shared.health.clone());
    let (udp, listener) = bind_pair(
        bind.port() == 0,
        || bind_udp(bind),
        |udp: &UdpTransport| match b.streams {
            true => crate::streams::listen(udp.local_addr()).map(Some),
            false => Ok(None),
        },
    )?;
    let local_addr = udp.local_addr();
    if let Err(e) = &listener {
        crate::streams::report_no_listener(local_addr, e, &reporter);
    }
    let listener = listener.ok().flatten();
    let advertise = advertise.unwrap_or(local_addr);
    let sealing = Arc::new(Sealing::new(
        b.cluster_id.clone(),
        b.keyring.clone(),
        b.encryption,
        b.replay_window,
    ));
    let transport = SealedTransport {
        inner: udp,
        sealing: sealing.clone(),
        reporter: reporter.clone(),
    };
    let seeds = resolve_seeds(&b.seeds, &reporter).await;
    let mut cfg = protocol_config(&b, node.clone(), generation, advertise, seeds);
    cfg.streams = listener.is_some();
    cfg.incarnation = incarnation;
    let clock = Clock::new();
    let protocol = Arc::new(Mutex::new(Protocol::new(
        cfg,
        shared.store.clone(),
        clock.now(),
    )));
    let record_budget = Some(protocol.lock().body_budget());
    let expects_peers = !b.seeds.is_empty() || b.discovery;
    if !expects_peers {
        // Nobody to catch up from.
        protocol.lock().mark_synced();
        shared.synced.send_replace(true);
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let (addrs_tx, addrs_rx) = mpsc::channel::<Addrs>(16);
    let (push_tx, push_rx) = mpsc::channel::<Record>(PUSH_QUEUE);
    let push_tx = b.eager_push.then_some(push_tx);
    crate::memory::observe_evictions(&shared.store, shared.changes.clone(), push_tx.clone());
    if b.seeds.iter().any(|s| s.parse::<SocketAddr>().is_err()) {
        tokio::spawn(refresh_seeds(
            b.seeds.clone(),
            b.seed_refresh,
            addrs_tx.clone(),
            reporter.clone(),
        ));
    }
    let discovery = if b.discovery {
        Some(discover(&b, &node_id, advertise, addrs_tx.clone())?)
    } else {
        None
    };
    drop(addrs_tx);
    let handle = tokio::spawn(
        Driver {
            transport,
            protocol: protocol.clone(),
            clock,
            stop: stop_rx,
            addrs: addrs_rx,
            pushes: push_rx,
            reporter: reporter.clone(),
            member_events: shared.member_events.clone(),
            synced: shared.synced.clone(),
            listener,
            sealing: sealing.clone(),
        }
        .run(),
    );
    info!(node = %node, addr = %local_addr, cluster = %b.cluster_id, "node started");
    Ok(GossipKv {
        inner: Arc::new(Inner {
            store: shared.store,
            codec: b.codec,
            node_id: node,
            local_addr: Some(local_addr),
            record_budget,
            max_value_size: b.max_value_size,
            closed: AtomicBool::new(false),
            protocol: Some(protocol),
            task: Mutex::new(Some((stop_tx, handle))),
            errors_dropped: reporter.dropped().clone(),
            health: shared.health,
            expects_peers,
            changes: shared.changes,
            member_events: shared.member_events,
            closed_tx: shared.closed_tx,
            synced: shared.synced,
            discovery: Mutex::new(discovery),
            push_tx,
            persister: shared.persister,
            expiry_wake: None,
            sealing: Some(sealing),
        }),
        _key: PhantomData,
    })
}

/// The node's store: empty, or loaded from its data directory (then with
/// its persister); the generation and membership incarnation to run at.
async fn open_store<K, V>(
    b: &Builder<K, V>,
    node: &NodeId,
    limits: Limits,
) -> Result<(Shared, u64, u64), Error> {
    let fresh = new_generation();
    let config = StoreConfig {
        limits,
        ..StoreConfig::default()
    };
    let Some(dir) = b.data_dir.clone() else {
        let store = Arc::new(Store::with_config(Origin::new(node.clone(), fresh), config));
        return Ok((Shared::new(store, None), fresh, 0));
    };
    let (cluster, id) = (b.cluster_id.clone(), node.clone());
    let mode = b.durability;
    let limit = crate::driver::wall_now()
        .as_unix_ms()
        .saturating_add(b.max_clock_drift.as_millis() as u64);
    let load = move || persist::open(&dir, &cluster, &id, fresh, config, mode, limit);
    // Loading reads the whole directory: off the async workers when
    // there are any (a local-only node may be built without a runtime).
    let opened = match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(load).await.map_err(|e| Error::Task {
            message: format!("loading the data dir: {e}"),
        })??,
        Err(_) => load()?,
    };
    let shared = Shared::new(opened.store, Some(opened.persister));
    crate::lifetime::after_load(&shared.store, opened.generation);
    Ok((shared, opened.generation, opened.incarnation))
}

/// A node without a network: a local in-memory store.
fn local_only<K, V>(b: Builder<K, V>, node: NodeId, shared: Shared) -> GossipKv<K, V> {
    // Nobody to catch up from.
    shared.synced.send_replace(true);
    crate::memory::observe_evictions(&shared.store, shared.changes.clone(), None);
    let wake = Arc::new(tokio::sync::Notify::new());
    crate::lifetime::spawn_sweeper(&shared.store, wake.clone(), shared.closed_tx.subscribe());
    GossipKv {
        inner: Arc::new(Inner {
            store: shared.store,
            codec: b.codec,
            node_id: node,
            local_addr: None,
            record_budget: None,
            max_value_size: b.max_value_size,
            closed: AtomicBool::new(false),
            protocol: None,
            task: Mutex::new(None),
            errors_dropped: Arc::new(AtomicU64::new(0)),
            health: shared.health,
            expects_peers: false,
            changes: shared.changes,
            member_events: shared.member_events,
            closed_tx: shared.closed_tx,
            synced: shared.synced,
            discovery: Mutex::new(None),
            push_tx: None,
            persister: shared.persister,
            expiry_wake: Some(wake),
            sealing: None,
        }),
        _key: PhantomData,
    }
}

/// The protocol's options from the builder's.
fn protocol_config<K, V>(
    b: &Builder<K, V>,
    node: NodeId,
    generation: u64,
    advertise: SocketAddr,
    seeds: Vec<SocketAddr>,
) -> ProtocolConfig {
    let mut cfg = ProtocolConfig::new(node, generation, b.cluster_id.clone());
    cfg.advertise_addr = (!advertise.ip().is_unspecified()).then_some(advertise);
    cfg.gossip_interval = b.gossip_interval.max(Duration::from_millis(1));
    cfg.fanout = b.fanout;
    // Room for the seal: a datagram sealed with a full keyring still fits
    // the packet size. (A keyring installed at run time on a node built
    // without one makes datagrams up to that much longer.)
    cfg.packet_size = match b.keyring {
        Some(_) => b.packet_size - MAX_SEALED_OVERHEAD,
        None => b.packet_size,
    };
    cfg.tombstone_retention = b.tombstone_retention;
    cfg.seeds = seeds;
    cfg.rng_seed = b.rng_seed.unwrap_or_else(|| rand::rng().random());
    // The address-validation key must be secret whatever seed was given.
    cfg.token_key = rand::rng().random();
    cfg.push = b.eager_push;
    cfg.max_value_size = b.max_value_size;
    cfg.max_clock_drift = b.max_clock_drift;
    cfg.max_serving_streams = b.max_serving_streams;
    cfg.ephemeral_grace = b.ephemeral_grace;
    let mut detector = DetectorConfig::for_interval(cfg.gossip_interval);
    if let Some(t) = b.suspect_timeout {
        detector.suspect_timeout = t;
    }
    detector.forget_after = b.dead_member_grace;
    cfg.detector = detector;
    cfg
}

/// Starts mDNS discovery; addresses found are forwarded to the driver.
fn discover<K, V>(
    b: &Builder<K, V>,
    node_id: &str,
    advertise: SocketAddr,
    addrs_tx: mpsc::Sender<Addrs>,
) -> Result<MdnsHandle, Error> {
    let (disc_tx, mut disc_rx) = mpsc::channel::<Vec<SocketAddr>>(16);
    let handle = start_mdns(
        MdnsConfig {
            node_id: node_id.to_string(),
            cluster_id: b.cluster_id.clone(),
            addr: advertise,
        },
        disc_tx,
    )
    .map_err(|m| {
        Error::config(
            ConfigOption::Discovery,
            format!("cannot start mDNS discovery: {m}"),
        )
    })?;
    tokio::spawn(async move {
        while let Some(addrs) = disc_rx.recv().await {
            if addrs_tx.send(Addrs::Discovered(addrs)).await.is_err() {
                break;
            }
        }
    });
    Ok(handle)
}

/// Binds the UDP socket on `bind`.
fn bind_udp(bind: SocketAddr) -> Result<UdpTransport, Error> {
    UdpTransport::bind(bind, UdpConfig::default()).map_err(|e| match e {
        gossipkv_transport::TransportError::Bind { addr, source } => Error::Bind { addr, source },
        other => Error::Bind {
            addr: bind,
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// Binds the UDP socket (`bind_udp`), then the stream listener on the same
/// port number (`listen`). With a port the system picks (`any_port`),
/// another program may already hold that port number on TCP: then both are
/// bound again, up to [`BIND_TRIES`] times, rather than leaving the node
/// without streams. A listener that still cannot be bound is given back
/// as its error (the node runs without streams); a UDP socket that cannot
/// be bound is the error.
fn bind_pair<U, L>(
    any_port: bool,
    mut bind_udp: impl FnMut() -> Result<U, Error>,
    mut listen: impl FnMut(&U) -> std::io::Result<L>,
) -> Result<(U, std::io::Result<L>), Error> {
    let mut tries = 1;
    loop {
        let udp = bind_udp()?;
        match listen(&udp) {
            Err(e)
                if any_port && e.kind() == std::io::ErrorKind::AddrInUse && tries < BIND_TRIES =>
            {
                debug!(error = %e, "the UDP port is taken on TCP; binding both again");
                tries += 1;
            }
            listened => return Ok((udp, listened)),
        }
    }
}

#[cfg(test)]
mod bind_tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    /// `bind_pair` with fake sockets: `udp` numbers each UDP bind, and
    /// `listen` answers from `answers` in turn.
    fn run(any_port: bool, answers: &[ErrorKind]) -> (usize, Result<u32, ErrorKind>, usize) {
        let mut binds = 0;
        let mut answers = answers.iter();
        let (udp, listened) = bind_pair(
            any_port,
            || {
                binds += 1;
                Ok(binds)
            },
            |_: &usize| match answers.next() {
                Some(kind) => Err(IoError::from(*kind)),
                None => Ok(7),
            },
        )
        .unwrap();
        (udp, listened.map_err(|e| e.kind()), binds)
    }

    #[test]
    fn a_port_taken_on_tcp_binds_both_again() {
        let (udp, listened, binds) = run(true, &[ErrorKind::AddrInUse, ErrorKind::AddrInUse]);
        assert_eq!((udp, listened, binds), (3, Ok(7), 3));
    }

    #[test]
    fn a_chosen_port_or_another_error_is_not_retried() {
        // A port the user chose: the UDP socket stays, streams are off.
        assert_eq!(
            run(false, &[ErrorKind::AddrInUse]),
            (1, Err(ErrorKind::AddrInUse), 1)
        );
        assert_eq!(
            run(true, &[ErrorKind::PermissionDenied]),
            (1, Err(ErrorKind::PermissionDenied), 1)
        );
    }

    #[test]
    fn binding_again_gives_up_after_a_few_tries() {
        let taken = [ErrorKind::AddrInUse; BIND_TRIES + 2];
        let (udp, listened, binds) = run(true, &taken);
        assert_eq!(
            (udp, listened, binds),
            (BIND_TRIES, Err(ErrorKind::AddrInUse), BIND_TRIES)
        );
    }

    #[test]
    fn a_udp_bind_that_fails_is_the_error() {
        let r = bind_pair(
            true,
            || -> Result<(), Error> { Err(Error::NoRuntime) },
            |_: &()| Ok::<_, IoError>(()),
        );
        assert!(matches!(r, Err(Error::NoRuntime)));
    }
}
