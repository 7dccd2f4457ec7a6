//! Serving the API's router over HTTP/1.1 with the limits `axum::serve`
//! does not have: at most `max_connections` open connections (more are
//! closed at once), and a timeout for reading a request's headers (a client
//! that trickles them is cut off). Stops gracefully: on `stop`, it stops
//! accepting, lets the requests under way finish and closes idle
//! connections.
//!
//! [`serve_tls`] serves HTTPS instead: each connection's TLS handshake runs
//! in the connection's own task, under the connection cap, and must finish
//! within [`ServerOptions::handshake_timeout`] (a client that connects and
//! sends nothing, or plain HTTP, gives its slot back then, or at once).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// Default most open HTTP connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client has to finish the TLS handshake (with TLS).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Most open connections; a connection beyond is closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers once it started one
    /// (or once it connected).
    pub header_timeout: Duration,
    /// Time a client has to finish the TLS handshake once it connected
    /// ([`serve_tls`] only).
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then waits for the
/// requests under way (a watch stream or a long poll ends when the node
/// shuts down, which the agent does first).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    stop: impl Future<Output = ()>,
) {
    serve_with(listener, app, options, None, stop).await;
}

/// [`serve`] over TLS: every connection starts with a handshake through
/// `tls`, which must finish within `options.handshake_timeout`; a
/// connection whose handshake fails or times out is closed (without an
/// HTTP answer) and gives its slot back.
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    tls: TlsAcceptor,
    stop: impl Future<Output = ()>,
) {
    serve_with(listener, app, options, Some(tls), stop).await;
}

async fn serve_with(
    listener: TcpListener,
    app: Router,
    options: ServerOptions,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many HTTP connections: closing this one");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let Some(tls) = &tls else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task (the accept loop
        // goes on), holding the slot, for at most the handshake timeout.
        // The watcher is taken now so that a stop during the handshake
        // waits for it, then closes the connection gracefully.
        let (tls, http, watcher) = (tls.clone(), http.clone(), graceful.watcher());
        let handshake_timeout = options.handshake_timeout;
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
