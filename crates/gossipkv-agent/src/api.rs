//! The agent's HTTP API, as an axum [`Router`] built by [`router`].
//!
//! Every error is a JSON object `{"error": "<stable code>", "message":
//! "..."}` with a 4xx status (see [`ApiError`]); the server errors are 503
//! `overloaded` / `shutting_down`, 507 `over_budget` (the node's memory
//! limits are full) and 500 `persist_failed` (the data directory failed).
//! Malformed requests (bad JSON, bad UTF-8, bad query strings, oversized
//! bodies) get a 4xx, never a 5xx.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{BoxError, Json, Router};
use base64::Engine as _;
use futures_util::stream::{self, Stream, StreamExt};
use gossipkv::{GossipKv, Key, KeyId, Keyring, Record, Version};
use serde::Serialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tower::ServiceBuilder;

use crate::changes::{Change, Feed, Resume};
use crate::config::EncryptionMode;
use crate::metrics::{state_name, HttpLabels, Metrics};

/// The node type the agent serves: string keys, raw byte values
/// ([`BytesCodec`](gossipkv::BytesCodec)).
pub type Node = GossipKv<String, bytes::Bytes>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Options of the HTTP API.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Bearer token every request must carry (`Authorization: Bearer
    /// TOKEN`), except the health probes; `None`: no check.
    pub token: Option<String>,
    /// Largest request body, in bytes; larger ones get a 413.
    pub max_body: usize,
    /// Requests served at once; more get a 503 at once.
    pub max_concurrent: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            token: None,
            max_body: crate::config::DEFAULT_MAX_BODY,
            max_concurrent: crate::config::DEFAULT_MAX_CONCURRENT,
        }
    }
}

/// What the handlers share: the node, the metrics, the leave signal.
#[derive(Clone, Debug)]
pub struct ApiState {
    kv: Node,
    metrics: Metrics,
    token: Option<Arc<[u8]>>,
    /// Makes the agent's own conditional writes (`If-Match`) atomic
    /// against its other writes: a conditional write checks and writes
    /// holding it exclusively, every other write through the API holds it
    /// shared (so they still run side by side, and share disk commits).
    /// Writes from peers do not take it: conditional writes are only
    /// atomic against this agent's API.
    write_lock: Arc<tokio::sync::RwLock<()>>,
    /// Whether writes wait for the disk (a data directory in `Sync` mode),
    /// and so run as blocking code.
    writes_block: bool,
    left: watch::Sender<bool>,
    /// The change feed: the change index (how many changes this agent's
    /// node has applied, local and remote, any key, since the agent
    /// started), the recent changes, and whether the node has shut down
    /// (which ends long polls and watch streams).
    feed: Arc<Feed>,
    /// The keyring file and what it holds, when the agent has one; its
    /// lock also serialises keyring changes made through the API.
    keyring_file: Arc<Mutex<Option<(PathBuf, Keyring)>>>,
}

/// Whether a write through the API needs the write lock alone (a
/// conditional write: check and write with no other API write between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exclusive {
    Yes,
    No,
}

impl ApiState {
    /// Runs `write` (given the node, to read, and a
    /// [`batch`](gossipkv::GossipKv::batch) of it, to write), holding the write lock as `exclusive` says until `write`
    /// returns, and then waits (without the lock) until its writes are on
    /// disk: a conditional write's check and write have no other API write
    /// between them, and conditional writes still share commits. The lock
    /// is awaited, never waited for on an async worker. With a data
    /// directory in `Sync` mode the batch runs as blocking code
    /// (`block_in_place`, or on the blocking pool on a current-thread
    /// runtime): it waits for an fsync, which on an async worker would
    /// stall the other requests meanwhile. Otherwise (in memory, or
    /// `Interval` mode) nothing waits, and it runs in place.
    async fn write<T, F>(&self, exclusive: Exclusive, write: F) -> ApiResult<T>
    where
        F: FnOnce(&Node, &gossipkv::Batch<'_, String, bytes::Bytes>) -> ApiResult<T>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let guard = match exclusive {
            Exclusive::Yes => WriteGuard::Alone {
                _guard: self.write_lock.clone().write_owned().await,
            },
            Exclusive::No => WriteGuard::Shared {
                _guard: self.write_lock.clone().read_owned().await,
            },
        };
        let kv = self.kv.clone();
        let batch = move || -> ApiResult<T> {
            kv.batch(|b| {
                let result = write(&kv, b);
                drop(guard);
                Ok(result)
            })?
        };
        if !self.writes_block {
            return batch();
        }
        // In place, with the worker's other tasks handed to another
        // thread: no hop for the request itself (a single client's writes
        // were about 15% slower through `spawn_blocking`).
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            return tokio::task::block_in_place(batch);
        }
        tokio::task::spawn_blocking(batch).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the write did not finish: {e}"),
            )
        })?
    }
}

/// The write lock as a write through the API holds it.
enum WriteGuard {
    /// A conditional write: no other API write meanwhile.
    Alone {
        _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
    },
    /// Any other write.
    Shared {
        _guard: tokio::sync::OwnedRwLockReadGuard<()>,
    },
}

/// Whether a request's write is conditional (`If-Match`).
fn exclusive(headers: &HeaderMap) -> Exclusive {
    if headers.contains_key(header::IF_MATCH) {
        Exclusive::Yes
    } else {
        Exclusive::No
    }
}

/// Longest `?wait=` of a long-poll read.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// `?wait=` of a long-poll read that gives none.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The response header that carries the change index.
pub const INDEX_HEADER: &str = "x-gossipkv-index";

impl ApiState {
    /// The state of an API serving `kv`.
    pub fn new(kv: Node, options: &ApiOptions) -> Self {
        ApiState {
            feed: Feed::start(&kv),
            writes_block: kv.durability() == Some(gossipkv::Durability::Sync),
            kv,
            metrics: Metrics::default(),
            token: options.token.as_ref().map(|t| Arc::from(t.as_bytes())),
            write_lock: Arc::new(tokio::sync::RwLock::new(())),
            left: watch::Sender::new(false),
            keyring_file: Arc::new(Mutex::new(None)),
        }
    }

    /// Keeps the keyring in the file at `path`: `ring` is what it holds
    /// now (the node's keyring); every change made through the API is
    /// written back to it.
    #[must_use]
    pub fn with_keyring_file(self, path: PathBuf, ring: Keyring) -> Self {
        *self
            .keyring_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((path, ring));
        self
    }

    /// The change index now.
    pub fn index(&self) -> u64 {
        self.feed.index()
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.kv
    }

    /// Resolves once `POST /v1/leave` has shut the node down.
    pub async fn left(&self) {
        let mut rx = self.left.subscribe();
        // The sender lives in self, so this cannot fail while we wait.
        let _ = rx.wait_for(|l| *l).await;
    }
}

/// An API error: a status and a JSON body `{"error": code, "message": text}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, such as `not_found`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<gossipkv::Error> for ApiError {
    fn from(e: gossipkv::Error) -> Self {
        use gossipkv::Error as E;
        let message = e.to_string();
        let (status, code) = match &e {
            E::InvalidKey { .. } => (StatusCode::BAD_REQUEST, "invalid_key"),
            E::InvalidTtl { .. } => (StatusCode::BAD_REQUEST, "invalid_ttl"),
            E::ValueTooLarge { .. } | E::TooLargeForBudget { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            E::OverBudget { .. } => (StatusCode::INSUFFICIENT_STORAGE, "over_budget"),
            E::Closed { .. } => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            E::Codec { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "codec"),
            E::Persist { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "persist_failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

/// An extractor rejection as an [`ApiError`]: its status (400, 413, ...)
/// and text, with a code for the status.
fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => {
            // Extractors only fail this way on I/O errors reading the body:
            // the client went away or sent a broken body.
            return ApiError::bad_request("bad_body", text);
        }
        _ => "bad_request",
    };
    ApiError::new(status, code, text)
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;
type Params = HashMap<String, String>;

/// Whether a query flag is set: present (`?raw`, `?raw=`, `?raw=true`),
/// and not `false` or `0`.
fn flag(params: &Params, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| !matches!(v.as_str(), "false" | "0"))
}

fn ttl_param(params: &Params) -> ApiResult<Option<Duration>> {
    match params.get("ttl") {
        None => Ok(None),
        Some(s) => crate::config::parse_duration(s)
            .map(Some)
            .map_err(|m| ApiError::bad_request("invalid_ttl", m)),
    }
}

/// A version as one opaque string: `HLC.GENERATION.SEQ@NODE`. Two writes
/// have the same string only if they are the same write.
pub fn version_string(v: &Version) -> String {
    format!("{}.{}.{}@{}", v.hlc.as_u64(), v.generation, v.seq, v.node)
}

/// One key of `GET /v1/kv`, as JSON.
#[derive(Debug, Serialize)]
pub struct EntryJson {
    /// The key.
    pub key: String,
    /// The value, base64 (standard alphabet, padded).
    pub value: String,
    /// The version, opaque (see [`version_string`]); use it in `If-Match`.
    pub version: String,
    /// The node that wrote the value.
    pub node: String,
    /// The writer's generation.
    pub generation: u64,
    /// The writer's sequence number of this write.
    pub seq: u64,
    /// When it was written, Unix milliseconds, by the writer's clock.
    pub modified_ms: u64,
    /// When it expires, Unix milliseconds; `null` without a time to live.
    pub expires_ms: Option<u64>,
    /// Time left to live, milliseconds; `null` without a time to live.
    pub ttl_ms: Option<u64>,
    /// Whether the key goes with the node that wrote it.
    pub ephemeral: bool,
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EntryJson {
    /// The entry of a record.
    pub fn from_record(r: &Record) -> Self {
        let expires = (r.lifetime.expires_ms != 0).then_some(r.lifetime.expires_ms);
        EntryJson {
            key: r.key.to_string(),
            value: B64.encode(r.value.as_deref().unwrap_or_default()),
            version: version_string(&r.version),
            node: r.version.node.to_string(),
            generation: r.version.generation,
            seq: r.version.seq,
            modified_ms: r.version.hlc.physical_ms(),
            expires_ms: expires,
            ttl_ms: expires.map(|e| e.saturating_sub(now_unix_ms())),
            ephemeral: r.lifetime.ephemeral,
        }
    }
}

/// Builds the API's router: every route, the JSON fallbacks, the body and
/// concurrency limits, the token check and the request metrics. Serve it
/// with `axum::serve`; `state` also tells when `POST /v1/leave` was called.
pub fn router(state: ApiState, options: &ApiOptions) -> Router {
    let overload = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(overloaded))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            options.max_concurrent.max(1),
        ));
    Router::new()
        // The earlier system's routes.
        .route("/put", put(legacy_put))
        .route("/get", get(legacy_get))
        .route("/delete", axum::routing::delete(legacy_delete))
        .route("/set/{key}/{value}", post(legacy_set))
        // Consul-like key-value routes.
        .route("/v1/kv", get(kv_get_root).delete(kv_delete_root))
        .route("/v1/kv/", get(kv_get_root).delete(kv_delete_root))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/watch", get(watch_sse))
        .route("/v1/snapshot", get(snapshot_export).post(snapshot_import))
        .route("/v1/members", get(members))
        .route("/v1/self", get(self_info))
        .route("/v1/health", get(health))
        .route("/v1/health/ready", get(ready))
        .route("/v1/leave", post(leave))
        .route("/v1/keyring", get(keyring_get))
        .route("/v1/keyring/install", post(keyring_install))
        .route("/v1/keyring/use", post(keyring_use))
        .route("/v1/keyring/remove", post(keyring_remove))
        .route("/v1/keyring/encryption", put(keyring_encryption))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route("/ui.js", get(status_page_script))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(options.max_body))
        .layer(middleware::from_fn_with_state(
            options.max_body,
            refuse_declared_large_body,
        ))
        .layer(overload)
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

async fn overloaded(e: BoxError) -> ApiError {
    if e.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry shortly",
        )
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

/// Answers 413 at once to a request whose `Content-Length` is over the
/// limit, without waiting for its body (the body limit itself catches
/// chunked bodies as they arrive).
async fn refuse_declared_large_body(
    State(max): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body of {n} bytes is over the limit of {max} bytes"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}

/// Counts every request by route, method and status.
async fn count_request(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let method = if matches!(
        method,
        Method::GET | Method::PUT | Method::POST | Method::DELETE | Method::HEAD
    ) {
        method.to_string()
    } else {
        "other".to_string()
    };
    let response = next.run(req).await;
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Checks the bearer token, when one is configured (health probes are
/// exempt). The comparison takes the same time wherever the tokens differ.
async fn auth(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    // Probes, and the status page's static files (it asks for the token
    // and sends it with its own requests).
    if matches!(path, "/v1/health" | "/v1/health/ready" | "/" | "/ui.js") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|h| {
            let (scheme, rest) = h.split_at(h.len().min(7));
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    match given {
        Some(given) if bool::from(given.ct_eq(token)) => next.run(req).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this agent needs a token: Authorization: Bearer TOKEN",
        )
        .into_response(),
    }
}

// ---- The earlier system's routes ----

/// `PUT /put` with `{"key": "...", "value": ...}`: a string value is
/// stored as its UTF-8 bytes, any other JSON value as its JSON text.
async fn legacy_put(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let body = body?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}")))?;
    let Some(obj) = doc.as_object() else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "body must be a JSON object {\"key\": ..., \"value\": ...}",
        ));
    };
    let key = match obj.get("key") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_key",
                "\"key\" must be a string",
            ))
        }
        None => return Err(ApiError::bad_request("missing_key", "\"key\" is missing")),
    };
    let value = match obj.get("value") {
        Some(Value::String(s)) => bytes::Bytes::from(s.clone().into_bytes()),
        Some(v) => bytes::Bytes::from(v.to_string().into_bytes()),
        None => {
            return Err(ApiError::bad_request(
                "missing_value",
                "\"value\" is missing",
            ))
        }
    };
    state
        .write(Exclusive::No, move |_, b| Ok(b.set(key, value)?))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn key_param(params: &Params) -> ApiResult<&str> {
    params
        .get("key")
        .map(String::as_str)
        .ok_or_else(|| ApiError::bad_request("missing_key", "query parameter key is missing"))
}

/// `GET /get?key=K`: `{"key": K, "value": "..."}` when the value is UTF-8,
/// `{"key": K, "value_base64": "..."}` otherwise; 404 when absent.
async fn legacy_get(
    State(state): State<ApiState>,
    params: Result<Query<Params>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(params) = params?;
    let key = key_param(&params)?;
    let value = state
        .kv
        .get(key)?
        .ok_or_else(|| ApiError::not_found(format!("no key {key:?}")))?;
    Ok(Json(match std::str::from_utf8(&value) {
        Ok(s) => json!({"key": key, "value": s}),
        Err(_) => json!({"key": key, "value_base64": B64.encode(&value)}),
    }))
}

/// `DELETE /delete?key=K`: 204 (also when the key was absent).
async fn legacy_delete(
    State(state): State<ApiState>,
    params: Result<Query<Params>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(params) = params?;
    let key = key_param(&params)?.to_owned();
    state
        .write(Exclusive::No, move |_, b| Ok(b.delete(key)?))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /set/{key}/{value}`: 204.
async fn legacy_set(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path((key, value)) = path?;
    let value = bytes::Bytes::from(value.into_bytes());
    state
        .write(Exclusive::No, move |_, b| Ok(b.set(key, value)?))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- /v1/kv ----

async fn kv_get_root(
    state: State<ApiState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    match params {
        Ok(Query(params)) => kv_get_indexed(state, String::new(), params).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn kv_get(
    state: State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Response {
    match (path, params) {
        (Ok(Path(key)), Ok(Query(params))) => kv_get_indexed(state, key, params).await,
        (Err(e), _) => ApiError::from(e).into_response(),
        (_, Err(e)) => ApiError::from(e).into_response(),
    }
}

/// A `/v1/kv` read with the change index: `?index=N` first waits (up to
/// `?wait=`, default 5 min, at most 10 min) until the index is past `N`;
/// the response, found or not, carries the index read just before the
/// data in `X-Gossipkv-Index`. The index counts every change the node
/// applies, to any key, so a wait may end for a change elsewhere: compare
/// the data. Waiting requests count against the concurrency limit.
async fn kv_get_indexed(state: State<ApiState>, key: String, params: Params) -> Response {
    if let Err(e) = wait_for_index(&state.0, &params).await {
        return e.into_response();
    }
    let index = state.0.index();
    let mut response = match kv_read(state, key, params).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    response
        .headers_mut()
        .insert(INDEX_HEADER, HeaderValue::from(index));
    response
}

async fn wait_for_index(state: &ApiState, params: &Params) -> ApiResult<()> {
    let Some(raw) = params.get("index") else {
        return Ok(());
    };
    let after: u64 = raw.trim().parse().map_err(|_| {
        ApiError::bad_request("invalid_index", format!("index {raw:?} is not a number"))
    })?;
    let wait = match params.get("wait") {
        None => DEFAULT_WAIT,
        Some(w) => crate::config::parse_duration(w)
            .map_err(|m| ApiError::bad_request("invalid_wait", m))?,
    }
    .min(MAX_WAIT);
    let mut index = state.feed.subscribe_index();
    let mut closed = state.feed.subscribe_closed();
    // Running out of time is not an error: the current data is the answer.
    // Neither is a shutdown: the node still serves reads.
    tokio::select! {
        _ = index.wait_for(|i| *i > after) => {}
        _ = closed.wait_for(|c| *c) => {}
        _ = tokio::time::sleep(wait) => {}
    }
    Ok(())
}

/// `GET /v1/kv/KEY`: `[entry]`; `?recurse`: every entry under the prefix
/// KEY; `?keys` (with `?separator=/`): the keys under the prefix; `?raw`:
/// the bare value. 404 when nothing matches.
async fn kv_read(
    State(state): State<ApiState>,
    key: String,
    params: Params,
) -> ApiResult<Response> {
    let raw = flag(&params, "raw");
    if flag(&params, "keys") {
        if raw {
            return Err(ApiError::bad_request(
                "bad_request",
                "?raw does not go with ?keys",
            ));
        }
        let separator = params.get("separator").filter(|s| !s.is_empty());
        let mut keys: Vec<String> = Vec::new();
        for k in state.kv.keys().into_iter().filter(|k| k.starts_with(&key)) {
            let listed = match separator {
                Some(sep) => match k[key.len()..].find(sep.as_str()) {
                    Some(i) => k[..key.len() + i + sep.len()].to_string(),
                    None => k,
                },
                None => k,
            };
            if keys.last() != Some(&listed) {
                keys.push(listed);
            }
        }
        if keys.is_empty() {
            return Err(ApiError::not_found(format!("no key under {key:?}")));
        }
        return Ok(Json(keys).into_response());
    }
    if flag(&params, "recurse") {
        if raw {
            return Err(ApiError::bad_request(
                "bad_request",
                "?raw does not go with ?recurse",
            ));
        }
        let entries: Vec<EntryJson> = state
            .kv
            .keys()
            .into_iter()
            .filter(|k| k.starts_with(&key))
            .filter_map(|k| state.kv.get_record(&k))
            .map(|r| EntryJson::from_record(&r))
            .collect();
        if entries.is_empty() {
            return Err(ApiError::not_found(format!("no key under {key:?}")));
        }
        return Ok(Json(entries).into_response());
    }
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_key",
            "no key given (use ?recurse or ?keys to list)",
        ));
    }
    let record = state
        .kv
        .get_record(&key)
        .ok_or_else(|| ApiError::not_found(format!("no key {key:?}")))?;
    let etag =
        HeaderValue::from_bytes(format!("\"{}\"", version_string(&record.version)).as_bytes()).ok();
    let mut response = if raw {
        let value = record.value.clone().unwrap_or_default();
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            value,
        )
            .into_response()
    } else {
        Json(vec![EntryJson::from_record(&record)]).into_response()
    };
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// The precondition of an `If-Match` header against the local replica:
/// `*` holds when the key has a value, a version when it is the key's
/// current one (quotes around it are allowed).
fn check_if_match(kv: &Node, key: &str, headers: &HeaderMap) -> ApiResult<()> {
    let Some(h) = headers.get(header::IF_MATCH) else {
        return Ok(());
    };
    let wanted = String::from_utf8_lossy(h.as_bytes()).trim().to_string();
    let wanted = wanted.trim_matches('"');
    let current = kv.get_record(key).map(|r| version_string(&r.version));
    let holds = match (&current, wanted) {
        (Some(_), "*") => true,
        (Some(c), w) => c == w,
        (None, _) => false,
    };
    if holds {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "version_mismatch",
            match current {
                Some(c) => format!("{key:?} is at version {c}, not {wanted}"),
                None => format!("{key:?} has no value"),
            },
        ))
    }
}

/// `PUT /v1/kv/KEY` with the raw value as body; `?ttl=30s`, `?ephemeral`;
/// `If-Match: VERSION` (or `*`) makes it conditional on the local replica.
/// Answers 200 with the new entry (without its value).
async fn kv_put(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Path(key) = path?;
    let Query(params) = params?;
    let ttl = ttl_param(&params)?;
    let ephemeral = flag(&params, "ephemeral");
    let value = body?;
    let (key, record) = state
        .write(exclusive(&headers), move |kv, b| {
            check_if_match(kv, &key, &headers)?;
            match (ttl, ephemeral) {
                (None, false) => b.set(&key, value)?,
                (Some(t), false) => b.set_with_ttl(&key, value, t)?,
                (None, true) => b.set_ephemeral(&key, value)?,
                (Some(t), true) => b.set_ephemeral_with_ttl(&key, value, t)?,
            }
            let record = kv.get_record(&key);
            Ok((key, record))
        })
        .await?;
    Ok(match record {
        Some(r) => {
            let mut e = serde_json::to_value(EntryJson::from_record(&r)).unwrap_or_default();
            if let Some(o) = e.as_object_mut() {
                o.remove("value");
            }
            Json(e).into_response()
        }
        // Replaced or expired at once (a very short ttl).
        None => Json(json!({"key": key})).into_response(),
    })
}

async fn kv_delete_root(
    state: State<ApiState>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    kv_remove(state, String::new(), params?.0, headers).await
}

async fn kv_delete(
    state: State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    kv_remove(state, path?.0, params?.0, headers).await
}

/// `DELETE /v1/kv/KEY` (`?recurse`: every key under the prefix): 204, also
/// when nothing was there. `If-Match` as for PUT (not with `?recurse`).
async fn kv_remove(
    State(state): State<ApiState>,
    key: String,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    if flag(&params, "recurse") {
        if headers.contains_key(header::IF_MATCH) {
            return Err(ApiError::bad_request(
                "bad_request",
                "If-Match does not go with ?recurse",
            ));
        }
        return state
            .write(Exclusive::No, move |kv, b| {
                for k in kv.keys().into_iter().filter(|k| k.starts_with(&key)) {
                    b.delete(&k)?;
                }
                Ok(StatusCode::NO_CONTENT)
            })
            .await;
    }
    state
        .write(exclusive(&headers), move |kv, b| {
            check_if_match(kv, &key, &headers)?;
            b.delete(&key)?;
            Ok(StatusCode::NO_CONTENT)
        })
        .await
}

// ---- Snapshot ----

/// `GET /v1/snapshot`: every key with a value, as JSON lines (one entry
/// per line, as `GET /v1/kv` shows it), sorted by key.
async fn snapshot_export(State(state): State<ApiState>) -> Response {
    let mut out = Vec::new();
    for key in state.kv.keys() {
        if let Some(r) = state.kv.get_record(&key) {
            if serde_json::to_writer(&mut out, &EntryJson::from_record(&r)).is_ok() {
                out.push(b'\n');
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Bytes::from(out),
    )
        .into_response()
}

/// One key to import.
struct Import {
    key: String,
    value: bytes::Bytes,
    ttl: Option<Duration>,
    ephemeral: bool,
}

/// Whether a JSON object is an entry of a snapshot (`key` and `value`
/// strings, and no field an entry does not have) rather than a flat
/// `{"key": "value"}` object.
fn is_entry(o: &serde_json::Map<String, Value>) -> bool {
    const FIELDS: [&str; 10] = [
        "key",
        "value",
        "version",
        "node",
        "generation",
        "seq",
        "modified_ms",
        "expires_ms",
        "ttl_ms",
        "ephemeral",
    ];
    o.get("key").is_some_and(Value::is_string)
        && o.get("value").is_some_and(Value::is_string)
        && o.keys().all(|k| FIELDS.contains(&k.as_str()))
}

fn parse_entry(line: usize, o: &serde_json::Map<String, Value>) -> ApiResult<Import> {
    let bad =
        |code: &'static str, m: String| ApiError::bad_request(code, format!("line {line}: {m}"));
    if !is_entry(o) {
        return Err(bad(
            "invalid_body",
            "an entry needs \"key\" and \"value\" strings and no other fields than an \
             exported entry's"
                .into(),
        ));
    }
    let key = o["key"].as_str().unwrap_or_default().to_string();
    let value = B64
        .decode(o["value"].as_str().unwrap_or_default())
        .map_err(|e| {
            bad(
                "invalid_base64",
                format!("value of {key:?} is not base64: {e}"),
            )
        })?;
    let ttl = match o.get("ttl_ms") {
        None | Some(Value::Null) => None,
        // An entry exported with no time left gets the shortest time to
        // live: it expires at once instead of living for ever.
        Some(v) => match v.as_u64() {
            Some(ms) => Some(Duration::from_millis(ms.max(1))),
            None => {
                return Err(bad(
                    "invalid_ttl",
                    format!("ttl_ms of {key:?} is not a number"),
                ))
            }
        },
    };
    let ephemeral = match o.get("ephemeral") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad(
                "invalid_body",
                format!("ephemeral of {key:?} is not a boolean"),
            ))
        }
    };
    Ok(Import {
        key,
        value: bytes::Bytes::from(value),
        ttl,
        ephemeral,
    })
}

/// `POST /v1/snapshot`: imports JSON lines as `GET /v1/snapshot` writes
/// them (`value` base64; `ttl_ms` and `ephemeral` are honoured, the
/// imported keys are this node's writes), or one flat JSON object `{"key":
/// "value", ...}` (string values stored as their UTF-8 bytes, other values
/// as their JSON text), as the earlier system stored. The whole body is
/// parsed and checked (JSON, base64, key lengths) before anything is
/// written; a write the node refuses midway (memory limits) leaves the
/// earlier ones written. 200 `{"imported": n}`.
async fn snapshot_import(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = body?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("body is not UTF-8: {e}")))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let mut imports = Vec::new();
    let whole: Option<Value> = serde_json::from_str(text).ok();
    match whole {
        Some(Value::Object(o)) if !is_entry(&o) => {
            for (key, v) in o {
                let value = match v {
                    Value::String(s) => s.into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                imports.push(Import {
                    key,
                    value: bytes::Bytes::from(value),
                    ttl: None,
                    ephemeral: false,
                });
            }
        }
        _ => {
            for (n, line) in lines {
                let v: Value = serde_json::from_str(line).map_err(|e| {
                    ApiError::bad_request("invalid_json", format!("line {n}: not JSON: {e}"))
                })?;
                let Some(o) = v.as_object() else {
                    return Err(ApiError::bad_request(
                        "invalid_body",
                        format!("line {n}: not a JSON object"),
                    ));
                };
                imports.push(parse_entry(n, o)?);
            }
        }
    }
    for i in &imports {
        if i.key.is_empty() || i.key.len() > gossipkv::MAX_KEY_LEN {
            return Err(ApiError::bad_request(
                "invalid_key",
                format!(
                    "key {:?} is empty or longer than {} bytes",
                    i.key,
                    gossipkv::MAX_KEY_LEN
                ),
            ));
        }
    }
    let n = imports.len();
    state
        .write(Exclusive::No, move |_, b| {
            // In one batch: one wait for the disk, not one per key.
            for i in imports {
                match (i.ttl, i.ephemeral) {
                    (None, false) => b.set(&i.key, i.value)?,
                    (Some(t), false) => b.set_with_ttl(&i.key, i.value, t)?,
                    (None, true) => b.set_ephemeral(&i.key, i.value)?,
                    (Some(t), true) => b.set_ephemeral_with_ttl(&i.key, i.value, t)?,
                }
            }
            Ok(())
        })
        .await?;
    Ok(Json(json!({"imported": n})))
}

// ---- Watch ----

/// `GET /v1/watch?prefix=P`: Server-Sent Events of the changes under `P`,
/// each with the agent's change index as its id: `put` (data: the entry as
/// JSON, value base64), `delete` (data: `{"key", "reason"}`), and `reset`
/// (data: `{"missed", "reason"}`, no id) when changes were skipped: re-read
/// the prefix then. A stream that reconnects with `Last-Event-ID` first
/// gets what it missed from the agent's recent changes (the last 1,024, at
/// most 8 MiB), or a `reset` when they no longer reach back that far.
/// Keepalive comments every 15 s. Ends when the node shuts down.
async fn watch_sse(
    State(state): State<ApiState>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(params) = params?;
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not a number")
                })?,
        ),
    };
    let (rx, resume) = state.feed.subscribe(after);
    let first: Vec<Result<Event, Infallible>> = match resume {
        Resume::Changes(changes) => changes
            .iter()
            .filter(|c| c.key.starts_with(&prefix))
            .flat_map(|c| change_events(c))
            .map(Ok)
            .collect(),
        Resume::TooOld => {
            state.metrics.watch_resets.inc();
            vec![Ok(reset_event(None, "resume"))]
        }
    };
    let resets = state.metrics.watch_resets.clone();
    let closed = state.feed.subscribe_closed();
    let live = stream::unfold(
        (rx, closed, prefix, resets),
        |(mut rx, mut closed, prefix, resets)| async move {
            loop {
                let next = tokio::select! {
                    // Deliver what is queued before ending at a shutdown.
                    biased;
                    r = rx.recv() => r,
                    _ = closed.wait_for(|c| *c) => return None,
                };
                let events = match next {
                    Ok(c) if c.key.starts_with(&prefix) => {
                        if c.missed > 0 {
                            resets.inc();
                        }
                        change_events(&c)
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        resets.inc();
                        vec![reset_event(Some(n), "lagged")]
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let events: Vec<Result<Event, Infallible>> = events.into_iter().map(Ok).collect();
                return Some((stream::iter(events), (rx, closed, prefix, resets)));
            }
        },
    )
    .flatten();
    let events = stream::iter(first).chain(live);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn reset_event(missed: Option<u64>, reason: &str) -> Event {
    Event::default()
        .event("reset")
        .data(json!({"missed": missed, "reason": reason}).to_string())
}

/// The events of one change: a reset first if the feed skipped changes
/// before it, then its put or delete.
fn change_events(c: &Change) -> Vec<Event> {
    let mut out = Vec::with_capacity(2);
    if c.missed > 0 {
        out.push(reset_event(Some(c.missed), "lagged"));
    }
    let event = match &c.entry {
        Some(entry) => Event::default().event("put").data(entry.to_string()),
        None => Event::default()
            .event("delete")
            .data(json!({"key": c.key, "reason": c.reason}).to_string()),
    };
    out.push(event.id(c.id.to_string()));
    out
}

// ---- Cluster, health, metrics ----

/// `GET /v1/members`: `[{"node_id", "addr", "state", "generation",
/// "incarnation"}]`, this node first.
async fn members(State(state): State<ApiState>) -> Json<Vec<Value>> {
    Json(
        state
            .kv
            .members()
            .into_iter()
            .map(|m| {
                json!({
                    "node_id": m.node_id.to_string(),
                    "addr": m.addr.to_string(),
                    "state": state_name(m.state),
                    "generation": m.generation,
                    "incarnation": m.incarnation,
                })
            })
            .collect(),
    )
}

/// `GET /v1/self`: this node: id, gossip address, generation, sync and
/// health, key count and memory, the memory limits' counters and the data
/// directory's (`null` without one).
async fn self_info(State(state): State<ApiState>) -> Json<Value> {
    let kv = &state.kv;
    let health = kv.health();
    let stats = kv.stats();
    Json(json!({
        "node_id": kv.node_id(),
        "addr": kv.local_addr().map(|a| a.to_string()),
        "generation": kv.generation(),
        "synced": kv.is_synced(),
        "closed": kv.is_closed(),
        "keys": kv.len(),
        "memory_bytes": kv.memory_usage(),
        "members": kv.members().len(),
        "live_peers": health.live_peers,
        "stats": {
            "rounds": stats.rounds,
            "datagrams_sent": stats.datagrams_sent,
            "bytes_sent": stats.bytes_sent,
            "datagrams_received": stats.datagrams_received,
            "bytes_received": stats.bytes_received,
        },
        "memory": memory_json(kv.memory_limits(), kv.memory_stats()),
        "durable": kv.durable_stats().map(|d| durable_json(kv.durability(), d)),
        "healthy": health.is_healthy(),
        "health": health.to_string(),
    }))
}

/// The memory limits and their counters, as `/v1/self` shows them.
fn memory_json(l: gossipkv::MemoryLimits, m: gossipkv::MemoryStats) -> Value {
    json!({
        "max_entries": l.max_entries,
        "max_bytes": l.max_bytes,
        "policy": crate::config::MemoryPolicyArg::of(l.policy).name(),
        "evicted": m.evicted,
        "tombstones_collected_early": m.tombstones_collected_early,
        "refused": m.refused,
        "over_after_eviction": m.over_after_eviction,
    })
}

/// The data directory's durability and counters, as `/v1/self` shows
/// them (`"sync"`, or the commit interval such as `"100ms"`).
fn durable_json(mode: Option<gossipkv::Durability>, d: gossipkv::DurableStats) -> Value {
    json!({
        "durability": match mode {
            Some(gossipkv::Durability::Interval(every)) => {
                humantime::format_duration(every).to_string()
            }
            _ => "sync".to_string(),
        },
        "commits": d.commits,
        "records_written": d.records_written,
        "rows_removed": d.rows_removed,
        "commit_failures": d.commit_failures,
        "pending": d.pending,
    })
}

/// `GET /v1/health`: liveness; 200 while the agent answers.
async fn health(State(state): State<ApiState>) -> Json<Value> {
    let h = state.kv.health();
    Json(json!({"status": "live", "healthy": h.is_healthy(), "health": h.to_string()}))
}

/// `GET /v1/health/ready`: 200 once the node has caught up with the
/// cluster ([`GossipKv::is_synced`]) and while it runs; 503 otherwise.
async fn ready(State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    if state.kv.is_closed() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the node has left the cluster",
        ));
    }
    if !state.kv.is_synced() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the node has not caught up with the cluster yet",
        ));
    }
    Ok(Json(json!({"status": "ready"})))
}

/// `POST /v1/leave`: leaves the cluster gracefully (peers see the node
/// `left` at once); the agent then exits. 200 once the node has left.
async fn leave(State(state): State<ApiState>) -> ApiResult<Json<Value>> {
    state.kv.shutdown().await?;
    state.left.send_replace(true);
    Ok(Json(json!({"status": "left"})))
}

// ---- Keyring ----

/// `GET /v1/keyring`: the gossip encryption setting (`null`: no keyring),
/// each key's id (4 hex digits), whether it is primary and how many live
/// members hold and seal with it, the live members (this node excluded),
/// whether changes are written to a keyring file, and the counters of
/// what was sealed, opened and refused. Never the keys themselves.
async fn keyring_get(State(state): State<ApiState>) -> Json<Value> {
    let status = state.kv.keyring_status();
    let st = status.stats;
    Json(json!({
        "encryption": status.encryption.map(|e| EncryptionMode::of(e).name()),
        "keys": status.keys.iter().map(|k| json!({
            "id": k.id.to_string(),
            "primary": k.primary,
            "members_holding": k.members_holding,
            "members_sealing": k.members_sealing,
        })).collect::<Vec<_>>(),
        "members": status.members,
        "persisted": state.has_keyring_file(),
        "stats": {
            "sealed": st.sealed,
            "opened": st.opened,
            "plaintext_accepted": st.plaintext_accepted,
            "refused_plaintext": st.refused_plaintext,
            "refused_unknown_key": st.refused_unknown_key,
            "refused_forged": st.refused_forged,
            "refused_stale": st.refused_stale,
            "refused_future": st.refused_future,
            "refused_replayed": st.refused_replayed,
            "replay_forgotten": st.replay_forgotten,
            "streams_refused": st.streams_refused,
        },
    }))
}

impl ApiState {
    fn has_keyring_file(&self) -> bool {
        self.keyring_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Applies a keyring change: `check` against the node's keyring status
    /// (for the stable error codes), then `node` to the node, then `file`
    /// to the keyring file's copy, which is written back. Changes are
    /// serialised. The answer says whether the change was persisted.
    fn change_keyring(
        &self,
        what: &str,
        id: KeyId,
        check: impl FnOnce(&gossipkv::KeyringStatus, Option<&Keyring>) -> ApiResult<()>,
        node: impl FnOnce(&Node) -> Result<(), gossipkv::Error>,
        file: impl FnOnce(&mut Keyring) -> Result<(), gossipkv::KeyringError>,
    ) -> ApiResult<Json<Value>> {
        let mut guard = self
            .keyring_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        check(
            &self.kv.keyring_status(),
            guard.as_ref().map(|(_, ring)| ring),
        )?;
        node(&self.kv).map_err(keyring_refused)?;
        let persisted = match guard.as_mut() {
            None => false,
            Some((path, ring)) => {
                let mut next = ring.clone();
                file(&mut next).map_err(|e| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "keyring_refused",
                        format!(
                            "the node took the change but the keyring file's copy did not: {e}"
                        ),
                    )
                })?;
                crate::keyring::save(path, &next).map_err(|e| {
                    tracing::error!(error = %e, key = %id, "cannot write the keyring file");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "persist_failed",
                        format!("the change applies in memory, but {e}"),
                    )
                })?;
                *ring = next;
                true
            }
        };
        tracing::info!(key = %id, persisted, "keyring: {what}");
        Ok(Json(json!({"id": id.to_string(), "persisted": persisted})))
    }
}

/// A refusal of the node's keyring as a 409.
fn keyring_refused(e: gossipkv::Error) -> ApiError {
    match e {
        gossipkv::Error::Keyring { message } => {
            ApiError::new(StatusCode::CONFLICT, "keyring_refused", message)
        }
        other => ApiError::from(other),
    }
}

/// The JSON object of a keyring request's body, and its string field
/// `field`.
fn body_field(body: Result<Bytes, BytesRejection>, field: &str) -> ApiResult<String> {
    let body = body?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("body is not JSON: {e}")))?;
    match doc.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(
            "invalid_body",
            format!("\"{field}\" must be a string"),
        )),
        None => Err(ApiError::bad_request(
            "invalid_body",
            format!("body must be a JSON object with a \"{field}\" string"),
        )),
    }
}

/// A key id as the API shows it: 4 hex digits.
pub fn parse_key_id(s: &str) -> Result<KeyId, String> {
    let s = s.trim();
    if s.len() != 4 {
        return Err(format!("a key id is 4 hex digits, not {s:?}"));
    }
    u16::from_str_radix(s, 16)
        .map(KeyId)
        .map_err(|_| format!("a key id is 4 hex digits, not {s:?}"))
}

fn id_field(body: Result<Bytes, BytesRejection>) -> ApiResult<KeyId> {
    parse_key_id(&body_field(body, "id")?).map_err(|m| ApiError::bad_request("bad_id", m))
}

fn unknown_key(id: KeyId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_key",
        format!("no key {id} in the keyring"),
    )
}

fn held(status: &gossipkv::KeyringStatus, id: KeyId) -> Option<&gossipkv::KeyStatus> {
    status.keys.iter().find(|k| k.id == id)
}

/// `POST /v1/keyring/install` with `{"key": "<base64>"}`: adds a key the
/// node opens with (it seals once made primary). On a node without a
/// keyring it becomes the primary key of a new one, with encryption
/// `permissive` (the first step of a migration). Installing a key already
/// held changes nothing. 200 `{"id", "persisted"}`.
async fn keyring_install(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let text = body_field(body, "key")?;
    let key: Key = gossipkv::parse_key(&text).map_err(|e| match e {
        gossipkv::Error::Keyring { message } => ApiError::bad_request("bad_key", message),
        other => ApiError::bad_request("bad_key", other.to_string()),
    })?;
    let id = key.id();
    let for_node = key.clone();
    let for_file = key.clone();
    state.change_keyring(
        "key installed",
        id,
        |status, file| {
            let clash = file
                .and_then(|r| r.get(id))
                .is_some_and(|held| *held != key);
            if clash {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "key_id_clash",
                    format!(
                        "key {id} has the id of another key in the keyring; generate another key"
                    ),
                ));
            }
            if held(status, id).is_none() && status.keys.len() >= gossipkv::MAX_KEYS {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "keyring_full",
                    format!(
                        "the keyring already holds {} keys; remove one first",
                        gossipkv::MAX_KEYS
                    ),
                ));
            }
            Ok(())
        },
        move |kv| kv.install_key(for_node),
        move |ring| ring.install(for_file),
    )
}

/// `POST /v1/keyring/use` with `{"id": "<4 hex digits>"}`: makes a held
/// key primary (what the node sends is sealed with it). 200 `{"id",
/// "persisted"}`; 404 `unknown_key`.
async fn keyring_use(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_field(body)?;
    state.change_keyring(
        "key made primary",
        id,
        |status, _| held(status, id).map(|_| ()).ok_or_else(|| unknown_key(id)),
        |kv| kv.use_key(id),
        |ring| ring.use_key(id),
    )
}

/// `POST /v1/keyring/remove` with `{"id": "<4 hex digits>"}`: removes a
/// key that is not primary. 200 `{"id", "persisted"}`; 404
/// `unknown_key`; 409 `primary_key`.
async fn keyring_remove(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = id_field(body)?;
    state.change_keyring(
        "key removed",
        id,
        |status, _| match held(status, id) {
            None => Err(unknown_key(id)),
            Some(k) if k.primary => Err(ApiError::new(
                StatusCode::CONFLICT,
                "primary_key",
                format!("key {id} is the primary key; make another key primary before removing it"),
            )),
            Some(_) => Ok(()),
        },
        |kv| kv.remove_key(id),
        |ring| ring.remove(id),
    )
}

/// `PUT /v1/keyring/encryption` with `{"mode": "required" | "permissive"
/// | "permissive-sealing"}`: how gossip without a seal is treated. Lasts
/// until the agent stops (the keyring file holds keys only: set
/// `--encryption` for the next start). 200 `{"encryption", "persisted":
/// false}`; 409 `no_keyring` on a node without a keyring.
async fn keyring_encryption(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let mode = EncryptionMode::parse(&body_field(body, "mode")?)
        .map_err(|m| ApiError::bad_request("bad_mode", m))?;
    let _guard = state
        .keyring_file
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.kv.keyring_status().encryption.is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_keyring",
            "this node has no keyring: install a key first",
        ));
    }
    state
        .kv
        .set_encryption(mode.to_encryption())
        .map_err(keyring_refused)?;
    tracing::info!(encryption = mode.name(), "keyring: encryption changed");
    Ok(Json(json!({"encryption": mode.name(), "persisted": false})))
}

/// `GET /`: the status page (HTML, served from the binary; its script is
/// `/ui.js`). No token is needed for the page itself; it asks for one.
async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("ui/index.html"),
    )
        .into_response()
}

/// `GET /ui.js`: the status page's script.
async fn status_page_script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("ui/ui.js"),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        state.metrics.render(&state.kv, &state.feed),
    )
        .into_response()
}
