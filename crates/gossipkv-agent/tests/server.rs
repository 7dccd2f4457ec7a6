//! The HTTP server's own limits (on 127.0.0.1:0): a client that trickles
//! its headers is cut off, connections beyond the cap are closed at once,
//! and a stop ends the server.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gossipkv::{BytesCodec, GossipKv};
use gossipkv_agent::api::{self, ApiOptions, ApiState, Node};
use gossipkv_agent::server::{serve, ServerOptions};

struct Server {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

fn start(options: ServerOptions) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, done) = rt.block_on(async {
        let kv: Node = GossipKv::builder_with_codec(BytesCodec)
            .build()
            .await
            .unwrap();
        let api = ApiOptions::default();
        let app = api::router(ApiState::new(kv, &api), &api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let done = tokio::spawn(serve(listener, app, options, async {
            let _ = stop_rx.await;
        }));
        (addr, done)
    });
    Server {
        rt,
        addr,
        stop: Some(stop_tx),
        done: Some(done),
    }
}

/// Reads until the server closes the connection; returns what came and
/// how long it took (the read gives up after 20 s).
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (out, started.elapsed()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn health(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut s).0).into_owned()
}

#[test]
fn a_client_that_trickles_its_headers_is_cut_off() {
    let server = start(ServerOptions {
        header_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    });
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (_, took) = read_until_closed(&mut slow);
    assert!(took < Duration::from_secs(10), "not cut off: {took:?}");
    // Others are served meanwhile and after.
    assert!(health(server.addr).starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_beyond_the_cap_are_closed_at_once() {
    let server = start(ServerOptions {
        max_connections: 1,
        ..ServerOptions::default()
    });
    // One connection, kept open after its request.
    let mut first = TcpStream::connect(server.addr).unwrap();
    first
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = first.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A second one is closed without an answer.
    let mut second = TcpStream::connect(server.addr).unwrap();
    let _ = second.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (got, took) = read_until_closed(&mut second);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(took < Duration::from_secs(10));
    // Once the first goes, a new one is served.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !health(server.addr).starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stop_ends_the_server() {
    let mut server = start(ServerOptions::default());
    assert!(health(server.addr).starts_with("HTTP/1.1 200"));
    let _ = server.stop.take().unwrap().send(());
    let done = server.done.take().unwrap();
    server.rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .expect("the server stopped")
            .unwrap();
    });
    assert!(TcpStream::connect(server.addr).is_err());
}
