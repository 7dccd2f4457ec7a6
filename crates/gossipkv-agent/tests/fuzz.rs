//! Property-based fuzzing of the HTTP API: arbitrary methods, paths,
//! query strings, headers and bodies never get a 5xx, and every error is
//! the JSON error shape. Requests go straight to the router (no socket)
//! against a node without a network.

use axum::body::Body;
use axum::http::{Method, Request};
use gossipkv::{BytesCodec, GossipKv};
use gossipkv_agent::api::{self, ApiOptions, ApiState, Node};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tower::ServiceExt as _;

fn request_strategy(
) -> impl Strategy<Value = (String, String, String, Vec<(String, String)>, Vec<u8>)> {
    let method = prop::sample::select(vec![
        "GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW",
    ])
    .prop_map(String::from);
    let prefix = prop::sample::select(vec![
        "/",
        "/put",
        "/get",
        "/delete",
        "/set/",
        "/v1/kv",
        "/v1/kv/",
        "/v1/kv/a/",
        "/v1/watch",
        "/v1/members",
        "/v1/self",
        "/v1/health",
        "/v1/health/ready",
        "/metrics",
        "/v1/",
    ]);
    let rest = prop_oneof![
        Just(String::new()),
        "[a-z]{1,6}",
        "[a-zA-Z0-9/%._~-]{0,24}",
        "(%[0-9A-Fa-f]{2}){1,4}",
    ];
    let path = (prefix, rest).prop_map(|(p, rest)| format!("{p}{rest}"));
    let query_part = prop::sample::select(vec![
        "raw",
        "recurse",
        "keys",
        "separator=/",
        "separator=",
        "ttl=30s",
        "ttl=0s",
        "ttl=x",
        "ttl=99999999999999999999s",
        "ephemeral",
        "ephemeral=0",
        "key=k",
        "key=",
        "key=%FF",
        "prefix=a",
        "%",
        "%%",
        "=",
        "&&",
        "raw=%FF",
        "index=1&wait=10ms",
        "wait=soon",
        "index=x",
    ]);
    let query = prop::collection::vec(query_part, 0..4).prop_map(|q| q.join("&"));
    let header = (
        prop::sample::select(vec![
            "if-match",
            "content-type",
            "authorization",
            "content-length",
            "x-anything",
            "accept",
            "transfer-encoding",
        ]),
        "[ -~]{0,20}",
    )
        .prop_map(|(k, v)| (k.to_string(), v));
    let headers = prop::collection::vec(header, 0..3);
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        Just(br#"{"key":"k","value":"v"}"#.to_vec()),
        Just(br#"{"key":"","value":1}"#.to_vec()),
        "[{}\":,a-z0-9 ]{0,40}".prop_map(String::into_bytes),
    ];
    (method, path, query, headers, body)
}

#[test]
fn no_request_gets_a_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (kv, app) = rt.block_on(async {
        let kv: Node = GossipKv::builder_with_codec(BytesCodec)
            .node_id("fuzz")
            .build()
            .await
            .unwrap();
        let options = ApiOptions {
            max_body: 100,
            ..ApiOptions::default()
        };
        let app = api::router(ApiState::new(kv.clone(), &options), &options);
        (kv, app)
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &request_strategy(),
            |(method, path, query, headers, body)| {
                let uri = if query.is_empty() {
                    path.clone()
                } else {
                    format!("{path}?{query}")
                };
                let mut builder = Request::builder()
                    .method(Method::from_bytes(method.as_bytes()).unwrap())
                    .uri(uri.as_str());
                for (k, v) in &headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                // What the http crate refuses to build, no client can send.
                let req = match builder.body(Body::from(body.clone())) {
                    Ok(r) => r,
                    Err(_) => {
                        *seen.borrow_mut().entry(0).or_default() += 1;
                        return Ok(());
                    }
                };
                if req.uri().path() == "/v1/leave" {
                    return Ok(());
                }
                let (status, bytes) = rt.block_on(async {
                    let resp = app.clone().oneshot(req).await.unwrap();
                    let status = resp.status();
                    let bytes = if status.is_success() {
                        Default::default() // the watch stream never ends
                    } else {
                        axum::body::to_bytes(resp.into_body(), 1 << 20)
                            .await
                            .unwrap_or_default()
                    };
                    (status, bytes)
                });
                *seen.borrow_mut().entry(status.as_u16()).or_default() += 1;
                prop_assert!(
                    !status.is_server_error(),
                    "{method} {uri} {headers:?} -> {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
                if status.is_client_error() && method != "HEAD" {
                    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                        TestCaseError::fail(format!("{method} {uri}: {status}, body not JSON: {e}"))
                    })?;
                    prop_assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(!kv.is_closed());
    // The requests reached the handlers, not only the fallbacks.
    let seen = seen.into_inner();
    println!("statuses: {seen:?}");
    let count = |code: u16| seen.get(&code).copied().unwrap_or(0);
    assert!(seen.values().sum::<u32>() >= 2000, "{seen:?}");
    assert!(count(0) < 500, "too few requests could be built: {seen:?}");
    for code in [200, 204, 400, 404, 405] {
        assert!(count(code) > 0, "no {code} in {seen:?}");
    }
}
