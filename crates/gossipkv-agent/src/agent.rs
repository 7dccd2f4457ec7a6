//! `gossipkv agent`: starts a node and serves its HTTP API until SIGINT,
//! SIGTERM or `POST /v1/leave`, then leaves the cluster gracefully.

use std::io::Write as _;

use gossipkv::{BytesCodec, GossipKv, Keyring};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::api::{self, ApiOptions, ApiState, Node};
use crate::config::{AgentConfig, Discovery, EncryptionMode, LogFormat};

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node did not start (its configuration, its bind address, its
    /// data directory).
    #[error("cannot start the node: {0}")]
    Node(#[from] gossipkv::Error),
    /// The HTTP address cannot be listened on.
    #[error("cannot listen on HTTP address {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The keyring file cannot be used.
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringFileError),
    /// The HTTP API's TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Signal handlers cannot be installed.
    #[error("cannot listen for signals: {0}")]
    Signal(std::io::Error),
}

/// Sets up logging to stderr: `filter` as a tracing `EnvFilter`, in text
/// or JSON. Does nothing if a subscriber is already set.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid --log-level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Starts the node described by `cfg` (string keys, raw byte values),
/// sealing its gossip with `keyring` when one is given (with
/// `cfg.encryption`).
pub async fn start_node(
    cfg: &AgentConfig,
    keyring: Option<Keyring>,
) -> Result<Node, gossipkv::Error> {
    let mut b = GossipKv::builder_with_codec(BytesCodec)
        .bind_addr(cfg.bind.clone())
        .discovery(cfg.discovery == Discovery::Mdns)
        .error_handler(|e| warn!(error = %e, "network problem"));
    if let Some(id) = &cfg.node_id {
        b = b.node_id(id.clone());
    }
    if let Some(id) = &cfg.cluster_id {
        b = b.cluster_id(id.clone());
    }
    if let Some(a) = &cfg.advertise {
        b = b.advertise_addr(a.clone());
    }
    if !cfg.seeds.is_empty() {
        b = b.seeds(cfg.seeds.clone());
    }
    if let Some(i) = cfg.gossip_interval {
        b = b.gossip_interval(i);
    }
    if let Some(r) = cfg.tombstone_retention {
        b = b.tombstone_retention(r);
    }
    if let Some(d) = &cfg.data_dir {
        b = b.data_dir(d.clone());
    }
    if let Some(n) = cfg.max_entries {
        b = b.max_entries(n);
    }
    if let Some(n) = cfg.max_bytes {
        b = b.max_bytes(n);
    }
    if let Some(d) = cfg.durability {
        b = b.durability(d);
    }
    b = b.memory_policy(cfg.memory_policy.to_policy());
    if let Some(ring) = keyring {
        b = b.keyring(ring).encryption(cfg.encryption.to_encryption());
    }
    b.build().await
}

/// Runs an agent until a termination signal or `POST /v1/leave`, then
/// leaves the cluster and stops serving. Prints `gossip listening on
/// ADDR` and `http listening on ADDR` (the addresses actually bound; `http
/// listening on https://ADDR` with TLS) on stdout once serving.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    run_with(cfg, |_| {}, std::future::pending()).await
}

/// [`run`], telling `on_ready` the HTTP address once serving, and stopping
/// (gracefully, as for a signal) also when `stop` resolves.
pub async fn run_with(
    cfg: AgentConfig,
    on_ready: impl FnOnce(std::net::SocketAddr),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // A certificate or key that cannot be used stops the agent before
    // anything listens.
    let tls = match &cfg.http_tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            &files.cert,
            &files.key,
        )?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&cfg.http)
        .await
        .map_err(|source| AgentError::Http {
            addr: cfg.http.clone(),
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| AgentError::Http {
        addr: cfg.http.clone(),
        source,
    })?;
    // Handlers first: a signal that comes once the addresses are printed
    // must find them.
    let signal = signals().map_err(AgentError::Signal)?;
    let keyring = match &cfg.keyring_file {
        Some(path) => Some(crate::keyring::load(path, cfg.init_keyring)?),
        None => {
            if cfg.encryption != EncryptionMode::Required {
                warn!(
                    "--encryption {} has no effect without --keyring-file",
                    cfg.encryption.name()
                );
            }
            None
        }
    };
    if let Some(ring) = &keyring {
        let ids: Vec<String> = ring.keys().iter().map(|k| k.id().to_string()).collect();
        info!(
            keys = ?ids,
            primary = %ring.primary().id(),
            encryption = cfg.encryption.name(),
            "gossip encryption on"
        );
    }
    let kv = start_node(&cfg, keyring.clone()).await?;
    let options = ApiOptions {
        token: cfg.http_token.clone(),
        max_body: cfg.http_max_body,
        max_concurrent: cfg.http_max_concurrent,
    };
    let mut state = ApiState::new(kv.clone(), &options);
    if let (Some(path), Some(ring)) = (&cfg.keyring_file, keyring) {
        state = state.with_keyring_file(path.clone(), ring);
    }
    let app = api::router(state.clone(), &options);
    info!(
        node_id = kv.node_id(),
        gossip = ?kv.local_addr(),
        http = %http_addr,
        tls = tls.is_some(),
        auth = cfg.http_token.is_some(),
        "agent started"
    );
    {
        let mut out = std::io::stdout().lock();
        if let Some(a) = kv.local_addr() {
            let _ = writeln!(out, "gossip listening on {a}");
        }
        if tls.is_some() {
            let _ = writeln!(out, "http listening on https://{http_addr}");
        } else {
            let _ = writeln!(out, "http listening on {http_addr}");
        }
        let _ = out.flush();
    }
    on_ready(http_addr);

    let stop = {
        let state = state.clone();
        async move {
            tokio::select! {
                name = signal => info!("{name}: leaving the cluster"),
                () = stop => info!("console closed: leaving the cluster"),
                _ = state.left() => info!("left the cluster (POST /v1/leave)"),
            }
        }
    };
    // Leave first (watch streams and long polls end with the node), then
    // let the requests under way finish.
    let shutdown_kv = kv.clone();
    let server = crate::server::ServerOptions {
        max_connections: cfg.http_max_connections,
        ..crate::server::ServerOptions::default()
    };
    let stop = async move {
        stop.await;
        if let Err(e) = shutdown_kv.shutdown().await {
            error!(error = %e, "graceful leave failed");
        }
    };
    match tls {
        Some(tls) => crate::server::serve_tls(listener, app, server, tls, stop).await,
        None => crate::server::serve(listener, app, server, stop).await,
    }
    // Idempotent: makes sure the leave happened.
    kv.shutdown().await?;
    info!("agent stopped");
    Ok(())
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT. The
/// handlers are installed before it returns, so no signal is missed.
#[cfg(unix)]
fn signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Resolves at the first Ctrl-C.
#[cfg(not(unix))]
fn signals() -> std::io::Result<impl std::future::Future<Output = &'static str>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    })
}
