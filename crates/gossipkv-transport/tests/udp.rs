//! UDP-specific tests (loopback only, always port 0 for fresh sockets).

use std::io;
use std::net::SocketAddr;

use gossipkv_transport::{Transport, TransportError, UdpConfig, UdpTransport};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn reports_kernel_buffer_sizes() {
    let t = UdpTransport::bind(loopback(), UdpConfig::default()).unwrap();
    assert!(t.recv_buffer_size() > 0);
    assert!(t.send_buffer_size() > 0);
    assert_eq!(t.max_datagram_size(), 65_507);
}

#[tokio::test]
async fn invalid_max_datagram_size_is_rejected() {
    for max in [0, 70_000] {
        let config = UdpConfig {
            max_datagram_size: max,
            ..UdpConfig::default()
        };
        assert!(matches!(
            UdpTransport::bind(loopback(), config),
            Err(TransportError::InvalidConfig { .. })
        ));
    }
}

#[tokio::test]
async fn custom_max_datagram_size_is_enforced() {
    let config = UdpConfig {
        max_datagram_size: 1200,
        ..UdpConfig::default()
    };
    let t = UdpTransport::bind(loopback(), config).unwrap();
    assert_eq!(t.max_datagram_size(), 1200);
    assert!(matches!(
        t.send_to(&[0; 1201], t.local_addr()).await,
        Err(TransportError::DatagramTooLarge {
            len: 1201,
            max: 1200
        })
    ));
}

#[tokio::test]
async fn binding_a_taken_address_without_reuse_fails() {
    let config = UdpConfig {
        reuse_address: false,
        ..UdpConfig::default()
    };
    let first = UdpTransport::bind(loopback(), config.clone()).unwrap();
    let taken = first.local_addr();
    match UdpTransport::bind(taken, config) {
        Err(TransportError::Bind { addr, source }) => {
            assert_eq!(addr, taken);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind error, got {other:?}"),
    }
}

#[tokio::test]
async fn binding_a_foreign_address_fails_with_bind_error() {
    // 192.0.2.0/24 is TEST-NET-1: never assigned to a local interface.
    let foreign: SocketAddr = "192.0.2.1:0".parse().unwrap();
    match UdpTransport::bind(foreign, UdpConfig::default()) {
        Err(TransportError::Bind { addr, .. }) => assert_eq!(addr, foreign),
        other => panic!("expected Bind error, got {other:?}"),
    }
}

/// With the default configuration, port 0 never hands out a port that a live
/// socket of ours already holds (with SO_REUSEADDR it does, on Linux).
#[tokio::test]
async fn port_zero_never_duplicates_a_live_port_by_default() {
    let mut sockets = Vec::new();
    let mut ports = std::collections::HashSet::new();
    for _ in 0..500 {
        let t = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), UdpConfig::default()).unwrap();
        assert!(
            ports.insert(t.local_addr().port()),
            "port {} handed out twice",
            t.local_addr().port()
        );
        sockets.push(t);
    }
}
