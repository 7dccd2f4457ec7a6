//! Tests specific to the in-memory network: faults, partitions, port
//! allocation, queue bounds and shutdown.
//!
//! Delivery on a `MemoryNetwork` happens synchronously inside `send_to`, so
//! "nothing arrived" is checked exactly with `try_recv_from`, never by
//! sleeping.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use gossipkv_transport::{
    MemoryConfig, MemoryNetwork, MemoryTransport, NetworkStats, Transport, TransportError,
};
use tokio::time::timeout;

const TIMEOUT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("valid socket address")
}

/// Bind `a`, `b`, `c` on 10.0.0.{1,2,3}:7000.
fn three(net: &MemoryNetwork) -> (MemoryTransport, MemoryTransport, MemoryTransport) {
    (
        net.bind(addr("10.0.0.1:7000")).unwrap(),
        net.bind(addr("10.0.0.2:7000")).unwrap(),
        net.bind(addr("10.0.0.3:7000")).unwrap(),
    )
}

async fn recv(t: &MemoryTransport) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; t.max_datagram_size()];
    let (len, from) = timeout(TIMEOUT, t.recv_from(&mut buf))
        .await
        .expect("timed out waiting for a datagram")
        .expect("recv_from failed");
    buf.truncate(len);
    (buf, from)
}

fn assert_empty(t: &MemoryTransport) {
    let mut buf = vec![0u8; t.max_datagram_size()];
    let got = t.try_recv_from(&mut buf).expect("try_recv_from");
    assert!(
        got.is_none(),
        "{} unexpectedly received {got:?}",
        t.local_addr()
    );
}

/// Send `from -> to` and report whether it was delivered.
async fn reaches(from: &MemoryTransport, to: &MemoryTransport) -> bool {
    from.send_to(b"probe", to.local_addr()).await.expect("send");
    let mut buf = [0u8; 16];
    match to.try_recv_from(&mut buf).expect("try_recv_from") {
        Some((len, src)) => {
            assert_eq!((&buf[..len], src), (&b"probe"[..], from.local_addr()));
            assert_empty(to);
            true
        }
        None => false,
    }
}

fn assert_invariant(s: &NetworkStats) {
    assert_eq!(s.sent + s.duplicated, s.delivered + s.dropped, "{s:?}");
    assert_eq!(
        s.dropped,
        s.dropped_loss + s.dropped_partition + s.dropped_unbound + s.dropped_queue_full,
        "{s:?}"
    );
}

#[tokio::test]
async fn loss_one_drops_everything_and_counts_it() {
    let net = MemoryNetwork::new(1);
    let (a, b, _) = three(&net);
    net.set_loss(1.0);
    for i in 0..50u8 {
        a.send_to(&[i], b.local_addr()).await.unwrap();
    }
    assert_empty(&b);
    let s = net.stats();
    assert_eq!(
        (s.sent, s.delivered, s.dropped, s.dropped_loss),
        (50, 0, 50, 50)
    );
    assert_invariant(&s);

    net.set_loss(0.0);
    a.send_to(b"marker", b.local_addr()).await.unwrap();
    assert_eq!(recv(&b).await, (b"marker".to_vec(), a.local_addr()));
}

#[tokio::test]
async fn duplicate_one_delivers_twice() {
    let net = MemoryNetwork::new(2);
    let (a, b, _) = three(&net);
    net.set_duplicate(1.0);
    a.send_to(b"twice", b.local_addr()).await.unwrap();
    assert_eq!(recv(&b).await, (b"twice".to_vec(), a.local_addr()));
    assert_eq!(recv(&b).await, (b"twice".to_vec(), a.local_addr()));
    assert_empty(&b);
    let s = net.stats();
    assert_eq!((s.sent, s.duplicated, s.delivered, s.dropped), (1, 1, 2, 0));
    assert_invariant(&s);
}

#[tokio::test]
async fn cut_and_heal_work_in_both_directions() {
    let net = MemoryNetwork::new(3);
    let (a, b, c) = three(&net);
    net.cut(a.local_addr(), b.local_addr());
    assert!(!reaches(&a, &b).await);
    assert!(!reaches(&b, &a).await);
    assert!(reaches(&a, &c).await);
    assert!(reaches(&c, &b).await);
    assert_eq!(net.stats().dropped_partition, 2);

    // Argument order does not matter.
    net.heal(b.local_addr(), a.local_addr());
    assert!(reaches(&a, &b).await);
    assert!(reaches(&b, &a).await);
    assert_invariant(&net.stats());
}

#[tokio::test]
async fn isolate_and_recover_work_in_both_directions() {
    let net = MemoryNetwork::new(4);
    let (a, b, c) = three(&net);
    net.isolate(a.local_addr());
    for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
        assert!(
            !reaches(from, to).await,
            "{} -> {}",
            from.local_addr(),
            to.local_addr()
        );
    }
    assert!(reaches(&b, &c).await);
    assert!(reaches(&c, &b).await);
    assert!(
        reaches(&a, &a).await,
        "a node is not partitioned from itself"
    );

    net.recover(a.local_addr());
    for (from, to) in [(&a, &b), (&b, &a), (&a, &c), (&c, &a)] {
        assert!(
            reaches(from, to).await,
            "{} -> {}",
            from.local_addr(),
            to.local_addr()
        );
    }
}

#[tokio::test]
async fn recover_keeps_cuts_and_heal_all_clears_everything() {
    let net = MemoryNetwork::new(5);
    let (a, b, c) = three(&net);
    net.cut(a.local_addr(), b.local_addr());
    net.isolate(c.local_addr());
    net.isolate(a.local_addr());
    net.recover(a.local_addr());
    assert!(!reaches(&a, &b).await, "cut survives recover");
    assert!(!reaches(&b, &c).await, "c still isolated");

    net.heal_all();
    for (from, to) in [(&a, &b), (&b, &a), (&b, &c), (&c, &a)] {
        assert!(reaches(from, to).await);
    }
}

/// Indices (in arrival order, with duplicates) that survive 200 sends with
/// loss and duplication on a network seeded with `seed`.
async fn fault_pattern(seed: u64) -> Vec<u16> {
    let net = MemoryNetwork::new(seed);
    let (a, b, _) = three(&net);
    net.set_loss(0.5);
    net.set_duplicate(0.25);
    for i in 0..200u16 {
        a.send_to(&i.to_be_bytes(), b.local_addr()).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 2];
    while let Some((len, _)) = b.try_recv_from(&mut buf).unwrap() {
        assert_eq!(len, 2);
        seen.push(u16::from_be_bytes(buf));
    }
    let s = net.stats();
    assert_eq!(s.delivered, seen.len() as u64);
    assert_invariant(&s);
    seen
}

#[tokio::test]
async fn same_seed_gives_same_fault_pattern() {
    let first = fault_pattern(42).await;
    let second = fault_pattern(42).await;
    assert_eq!(first, second);
    let distinct: HashSet<u16> = first.iter().copied().collect();
    assert!(
        (50..150).contains(&distinct.len()),
        "about half should survive, got {}",
        distinct.len()
    );
    assert!(
        first.len() > distinct.len(),
        "some datagrams were duplicated"
    );
    assert_ne!(first, fault_pattern(43).await, "a different seed differs");
}

#[tokio::test]
async fn port_zero_allocates_distinct_addresses() {
    let net = MemoryNetwork::new(6);
    let taken = net.bind(addr("10.0.0.1:49152")).unwrap();
    let endpoints: Vec<MemoryTransport> = (0..200)
        .map(|_| net.bind(addr("10.0.0.1:0")).unwrap())
        .collect();
    let addrs: HashSet<SocketAddr> = endpoints.iter().map(|t| t.local_addr()).collect();
    assert_eq!(addrs.len(), 200);
    assert!(!addrs.contains(&taken.local_addr()));
    for a in &addrs {
        assert_eq!(a.ip(), addr("10.0.0.1:1").ip());
        assert_ne!(a.port(), 0);
        assert!(net.is_bound(*a));
    }
    let v6 = net.bind(addr("[fd00::1]:0")).unwrap();
    assert_ne!(v6.local_addr().port(), 0);
    assert_eq!(v6.local_addr().ip(), addr("[fd00::1]:1").ip());
}

#[tokio::test]
async fn binding_a_taken_address_errors_until_dropped() {
    let net = MemoryNetwork::new(7);
    let x = addr("10.0.0.9:9000");
    let first = net.bind(x).unwrap();
    match net.bind(x) {
        Err(TransportError::Bind { addr, source }) => {
            assert_eq!(addr, x);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("expected Bind error, got {other:?}"),
    }
    drop(first);
    assert!(!net.is_bound(x));
    let again = net.bind(x).unwrap();
    assert_eq!(again.local_addr(), x);
}

#[tokio::test]
async fn unbound_target_is_silently_dropped_and_counted() {
    let net = MemoryNetwork::new(8);
    let (a, _, _) = three(&net);
    a.send_to(b"void", addr("10.9.9.9:1")).await.unwrap();
    let s = net.stats();
    assert_eq!((s.sent, s.dropped, s.dropped_unbound), (1, 1, 1));
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let config = MemoryConfig {
        queue_capacity: 4,
        ..MemoryConfig::default()
    };
    let net = MemoryNetwork::with_config(9, config).unwrap();
    let (a, b, _) = three(&net);
    for i in 0..10u8 {
        a.send_to(&[i], b.local_addr()).await.unwrap();
    }
    let s = net.stats();
    assert_eq!((s.delivered, s.dropped_queue_full), (4, 6));
    assert_invariant(&s);
    for i in 0..4u8 {
        assert_eq!(recv(&b).await.0, vec![i], "FIFO, oldest kept");
    }
    assert_empty(&b);
}

#[tokio::test]
async fn custom_max_datagram_size_is_enforced() {
    let config = MemoryConfig {
        max_datagram_size: 100,
        ..MemoryConfig::default()
    };
    let net = MemoryNetwork::with_config(10, config).unwrap();
    let (a, b, _) = three(&net);
    assert_eq!(a.max_datagram_size(), 100);
    assert!(matches!(
        a.send_to(&[0; 101], b.local_addr()).await,
        Err(TransportError::DatagramTooLarge { len: 101, max: 100 })
    ));
    assert_eq!(
        net.stats(),
        NetworkStats::default(),
        "rejected sends are not counted"
    );
    a.send_to(&[1; 100], b.local_addr()).await.unwrap();
    assert_eq!(recv(&b).await.0, vec![1; 100]);
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    for config in [
        MemoryConfig {
            max_datagram_size: 0,
            ..MemoryConfig::default()
        },
        MemoryConfig {
            queue_capacity: 0,
            ..MemoryConfig::default()
        },
    ] {
        assert!(matches!(
            MemoryNetwork::with_config(0, config),
            Err(TransportError::InvalidConfig { .. })
        ));
    }
}

#[test]
#[should_panic(expected = "probability")]
fn out_of_range_probability_panics() {
    MemoryNetwork::new(0).set_loss(1.5);
}

#[tokio::test]
async fn recv_wakes_up_when_a_datagram_is_sent_later() {
    let net = MemoryNetwork::new(11);
    let (a, b, _) = three(&net);
    let b_addr = b.local_addr();
    let receiver = tokio::spawn(async move { recv(&b).await });
    tokio::task::yield_now().await;
    a.send_to(b"late", b_addr).await.unwrap();
    let got = timeout(TIMEOUT, receiver).await.unwrap().unwrap();
    assert_eq!(got, (b"late".to_vec(), a.local_addr()));
}

#[tokio::test]
async fn close_drains_queue_then_reports_closed() {
    let net = MemoryNetwork::new(12);
    let (a, b, _) = three(&net);
    a.send_to(b"last", b.local_addr()).await.unwrap();
    net.close();
    assert!(net.is_closed());
    assert_eq!(recv(&b).await.0, b"last");
    let mut buf = [0u8; 8];
    assert!(matches!(
        timeout(TIMEOUT, b.recv_from(&mut buf)).await.unwrap(),
        Err(TransportError::Closed)
    ));
    assert!(matches!(
        a.send_to(b"x", b.local_addr()).await,
        Err(TransportError::Closed)
    ));
    assert!(matches!(
        net.bind(addr("10.0.0.4:1")),
        Err(TransportError::Closed)
    ));
}

#[tokio::test]
async fn mixed_faults_keep_stats_consistent() {
    let net = MemoryNetwork::new(13);
    let (a, b, c) = three(&net);
    net.set_loss(0.3);
    net.set_duplicate(0.3);
    net.cut(a.local_addr(), c.local_addr());
    for i in 0..300u16 {
        let (from, to) = match i % 3 {
            0 => (&a, b.local_addr()),
            1 => (&b, c.local_addr()),
            _ => (&a, c.local_addr()),
        };
        from.send_to(&i.to_be_bytes(), to).await.unwrap();
    }
    a.send_to(b"nobody", addr("10.0.0.99:1")).await.unwrap();
    let s = net.stats();
    assert_eq!(s.sent, 301);
    assert_eq!(s.dropped_partition, 100);
    assert!(s.dropped_loss > 0 && s.duplicated > 0);
    assert_invariant(&s);
}
