//! Transport conformance suite.
//!
//! Every case is written once as a generic async function over a
//! [`Fixture`] that creates endpoints of some [`Transport`], and is then
//! instantiated (by the `conformance!` macro) for UDP on IPv4 loopback, UDP
//! on IPv6 loopback (skipped loudly if unavailable) and the in-memory
//! network. Every receive is bounded by a timeout so a failure cannot hang.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gossipkv_transport::{
    MemoryNetwork, MemoryTransport, Transport, TransportError, UdpConfig, UdpTransport,
};
use tokio::time::timeout;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Creates fresh endpoints of one transport kind.
trait Fixture {
    type T: Transport;
    /// The IP every endpoint is bound on.
    fn ip(&self) -> IpAddr;
    /// Bind a fresh endpoint on [`Fixture::ip`], port 0.
    fn endpoint(&self) -> Self::T;
}

struct UdpFixture {
    ip: IpAddr,
}

impl UdpFixture {
    fn v4() -> Option<Self> {
        Some(Self {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        })
    }

    /// `None` (after saying so loudly) when IPv6 loopback is unusable here.
    fn v6() -> Option<Self> {
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        match UdpTransport::bind(SocketAddr::new(ip, 0), UdpConfig::default()) {
            Ok(_) => Some(Self { ip }),
            Err(e) => {
                eprintln!("!!! SKIPPING IPv6 UDP conformance case: cannot bind [::1]:0: {e}");
                None
            }
        }
    }
}

impl Fixture for UdpFixture {
    type T = UdpTransport;

    fn ip(&self) -> IpAddr {
        self.ip
    }

    fn endpoint(&self) -> UdpTransport {
        UdpTransport::bind(SocketAddr::new(self.ip, 0), UdpConfig::default())
            .expect("bind UDP on loopback")
    }
}

struct MemoryFixture {
    network: MemoryNetwork,
}

impl MemoryFixture {
    fn new() -> Option<Self> {
        Some(Self {
            network: MemoryNetwork::new(0x5eed),
        })
    }
}

impl Fixture for MemoryFixture {
    type T = MemoryTransport;

    fn ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
    }

    fn endpoint(&self) -> MemoryTransport {
        self.network
            .bind(SocketAddr::new(self.ip(), 0))
            .expect("bind memory endpoint")
    }
}

/// Receive one datagram (buffer one byte larger than the maximum), or panic
/// after [`TIMEOUT`].
async fn recv<T: Transport>(t: &T) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; t.max_datagram_size() + 1];
    let (len, from) = timeout(TIMEOUT, t.recv_from(&mut buf))
        .await
        .expect("timed out waiting for a datagram")
        .expect("recv_from failed");
    buf.truncate(len);
    (buf, from)
}

fn payload(tag: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (tag * 31 + j * 7) as u8).collect()
}

async fn local_addr_is_bound_address<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    for t in [&a, &b] {
        let addr = t.local_addr();
        assert_eq!(addr.ip(), f.ip());
        assert_ne!(addr.port(), 0, "port 0 must be replaced by the real port");
    }
    assert_ne!(a.local_addr(), b.local_addr());
}

async fn datagram_arrives_intact_with_source<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let msg = payload(1, 333);
    a.send_to(&msg, b.local_addr()).await.expect("send a->b");
    let (got, from) = recv(&b).await;
    assert_eq!(got, msg);
    assert_eq!(from, a.local_addr());

    b.send_to(b"reply", from).await.expect("send b->a");
    let (got, from) = recv(&a).await;
    assert_eq!(got, b"reply");
    assert_eq!(from, b.local_addr());
}

async fn many_datagrams_of_varying_sizes_arrive<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let sizes: Vec<usize> = (0..100).map(|i| i * 8000 / 99).collect();
    assert_eq!((sizes[0], sizes[99]), (0, 8000));
    // Batches keep the amount in flight well below any socket buffer the
    // kernel may grant, so loopback UDP cannot drop.
    for batch in sizes.chunks(10).enumerate() {
        let (batch_no, batch) = batch;
        let mut expected = Vec::new();
        for (k, &size) in batch.iter().enumerate() {
            let msg = payload(batch_no * 10 + k, size);
            a.send_to(&msg, b.local_addr()).await.expect("send");
            expected.push(msg);
        }
        let mut received = Vec::new();
        for _ in 0..batch.len() {
            let (got, from) = recv(&b).await;
            assert_eq!(from, a.local_addr());
            received.push(got);
        }
        expected.sort();
        received.sort();
        assert_eq!(received, expected, "batch {batch_no}");
    }
}

async fn oversize_datagram_rejected_and_not_sent<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let max = a.max_datagram_size();
    let too_big = vec![0xAB; max + 1];
    match a.send_to(&too_big, b.local_addr()).await {
        Err(TransportError::DatagramTooLarge { len, max: m }) => {
            assert_eq!((len, m), (max + 1, max));
        }
        other => panic!("expected DatagramTooLarge, got {other:?}"),
    }
    // Nothing was sent: the next datagram b sees is the marker.
    a.send_to(b"marker", b.local_addr()).await.expect("send");
    let (got, _) = recv(&b).await;
    assert_eq!(got, b"marker");
}

async fn max_size_datagram_arrives<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let max = a.max_datagram_size();
    assert_eq!(max, 65_507, "default maximum datagram size");
    let msg = payload(9, max);
    a.send_to(&msg, b.local_addr())
        .await
        .expect("send max size");
    let (got, from) = recv(&b).await;
    assert_eq!(got.len(), max);
    assert_eq!(got, msg);
    assert_eq!(from, a.local_addr());
}

async fn small_buffer_truncates<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let msg = payload(3, 100);
    a.send_to(&msg, b.local_addr()).await.expect("send");
    let mut small = [0u8; 10];
    let (len, from) = timeout(TIMEOUT, b.recv_from(&mut small))
        .await
        .expect("timed out")
        .expect("recv");
    assert_eq!(len, 10);
    assert_eq!(&small[..], &msg[..10]);
    assert_eq!(from, a.local_addr());
    // The rest of the datagram is discarded, not delivered later.
    a.send_to(b"next", b.local_addr()).await.expect("send");
    assert_eq!(recv(&b).await.0, b"next");
}

async fn send_to_closed_peer_does_not_break_recv<F: Fixture>(f: &F) {
    let a = f.endpoint();
    let b = f.endpoint();
    let dead_addr = {
        let dead = f.endpoint();
        dead.local_addr()
    };
    for i in 0..5 {
        a.send_to(&payload(i, 64), dead_addr)
            .await
            .expect("sending to a closed peer is not an error");
    }
    b.send_to(b"alive", a.local_addr()).await.expect("send");
    let (got, from) = recv(&a).await;
    assert_eq!(got, b"alive");
    assert_eq!(from, b.local_addr());

    // And the sender keeps working in both directions afterwards.
    a.send_to(b"again", dead_addr).await.expect("send");
    a.send_to(b"still", b.local_addr()).await.expect("send");
    assert_eq!(recv(&b).await.0, b"still");
}

async fn concurrent_send_and_recv_through_arc<F: Fixture>(f: &F) {
    let a = Arc::new(f.endpoint());
    let b = Arc::new(f.endpoint());
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    let receiver = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            while seen.len() < 20 {
                let (got, from) = recv(&b).await;
                assert_eq!(from, a_addr);
                seen.insert(got);
            }
            seen
        })
    };
    for i in 0..20u8 {
        a.send_to(&[i; 16], b_addr).await.expect("send");
        tokio::task::yield_now().await;
    }
    let seen = timeout(TIMEOUT, receiver)
        .await
        .expect("receiver timed out")
        .expect("receiver panicked");
    let expected: HashSet<Vec<u8>> = (0..20u8).map(|i| vec![i; 16]).collect();
    assert_eq!(seen, expected);
}

macro_rules! conformance {
    ($module:ident, $fixture:expr) => {
        mod $module {
            use super::*;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        let Some(fixture) = $fixture else { return };
                        super::$name(&fixture).await;
                    }
                };
            }

            case!(local_addr_is_bound_address);
            case!(datagram_arrives_intact_with_source);
            case!(many_datagrams_of_varying_sizes_arrive);
            case!(oversize_datagram_rejected_and_not_sent);
            case!(max_size_datagram_arrives);
            case!(small_buffer_truncates);
            case!(send_to_closed_peer_does_not_break_recv);
            case!(concurrent_send_and_recv_through_arc);
        }
    };
}

conformance!(udp_v4, UdpFixture::v4());
conformance!(udp_v6, UdpFixture::v6());
conformance!(memory, MemoryFixture::new());
