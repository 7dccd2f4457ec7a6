//! The agent's HTTP request handling.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use gossipkv::{BytesCodec, GossipKv};
use gossipkv_agent::api::{self, ApiOptions, ApiState, Node};
use tower::ServiceExt as _;

/// Methods the first byte picks from.
const METHODS: &[&str] = &[
    "GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW",
];

/// How long one request may take: a watch may wait longer, which is not a
/// finding (the request is dropped).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(50);

struct App {
    rt: tokio::runtime::Runtime,
    router: Router,
    _node: Node,
}

thread_local! {
    static APP: App = App::new();
}

impl App {
    fn new() -> App {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (node, router) = rt.block_on(async {
            let node: Node = GossipKv::builder_with_codec(BytesCodec)
                .node_id("fuzz")
                .build()
                .await
                .expect("a node without a network");
            let options = ApiOptions {
                max_body: 100,
                ..ApiOptions::default()
            };
            let router = api::router(ApiState::new(node.clone(), &options), &options);
            (node, router)
        });
        App {
            rt,
            router,
            _node: node,
        }
    }
}

/// The agent's router (a node without a network, bodies up to 100 bytes)
/// given one request built from `data`: the first byte picks the method,
/// the first line is the URI, the next lines up to an empty one are
/// `name: value` headers, the rest is the body. Requests the `http` crate
/// refuses to build are skipped (no client can send them), and so is
/// `/v1/leave`. No request may panic the handlers or get a 5xx.
pub fn http(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(m) % METHODS.len()];
    let mut lines = rest.splitn(2, |&b| b == b'\n');
    let uri = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut rest = lines.next().unwrap_or_default();
    let mut builder = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("a method"))
        .uri(uri.as_str());
    loop {
        let mut split = rest.splitn(2, |&b| b == b'\n');
        let line = split.next().unwrap_or_default();
        rest = split.next().unwrap_or_default();
        if line.is_empty() {
            break;
        }
        let mut kv = line.splitn(2, |&b| b == b':');
        let name = kv.next().unwrap_or_default();
        let value = kv.next().unwrap_or_default().trim_ascii();
        builder = builder.header(name, value);
    }
    let Ok(req) = builder.body(Body::from(rest.to_vec())) else {
        return;
    };
    if req.uri().path().starts_with("/v1/leave") {
        return;
    }
    APP.with(|app| {
        let status = app.rt.block_on(async {
            let call = app.router.clone().oneshot(req);
            match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
                Ok(resp) => Some(resp.expect("the router is infallible").status()),
                Err(_) => None,
            }
        });
        if let Some(status) = status {
            assert!(!status.is_server_error(), "{method} {uri} -> {status}");
        }
    });
}
