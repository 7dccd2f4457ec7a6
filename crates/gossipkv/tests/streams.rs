//! The bulk path on loopback: nodes far behind catch up over TCP streams at
//! the default one-second gossip interval, where datagrams alone would move
//! about ten records a second; refused streams leave the datagram path to
//! converge alone.

mod common;

use std::time::{Duration, Instant};

use common::{wait_until, Kv};
use gossipkv::GossipKv;

/// Far below what datagrams alone need at a one-second interval (minutes).
const DEADLINE: Duration = Duration::from_secs(20);

async fn node(
    id: &str,
    seeds: &[&Kv],
    tune: impl FnOnce(gossipkv::Builder<String, String>) -> gossipkv::Builder<String, String>,
) -> Kv {
    let b = GossipKv::<String, String>::builder()
        .node_id(id)
        .bind_addr("127.0.0.1:0")
        .seeds(seeds.iter().map(|s| s.local_addr().unwrap().to_string()));
    tune(b).build().await.expect("node starts")
}

fn key(i: usize) -> String {
    format!("svc/{i:05}")
}

fn deleted(i: usize) -> bool {
    i % 10 == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_holds_every_key_and_none_deleted_before_it_joined() {
    const KEYS: usize = 5_000;
    let a = node("bulk-a", &[], |b| b).await;
    for i in 0..KEYS {
        a.set(key(i), format!("value-{i:0>90}")).unwrap();
    }
    for i in (0..KEYS).filter(|i| deleted(*i)) {
        a.delete(key(i)).unwrap();
    }
    let live = a.len();
    let start = Instant::now();
    // The default gossip interval: one second.
    let b = node("bulk-b", &[&a], |b| b).await;
    wait_until("the joiner holds every live key", DEADLINE, || {
        b.len() == live
    })
    .await;
    eprintln!("5,000 keys joined in {:?}", start.elapsed());
    for i in 0..KEYS {
        let got = b.get(key(i)).unwrap();
        match deleted(i) {
            true => assert_eq!(got, None, "{} was deleted before b joined", key(i)),
            false => assert_eq!(got, Some(format!("value-{i:0>90}"))),
        }
    }
    // The counters move after the last keys land: a stream is counted
    // served once its end is built, completed once its end is read.
    wait_until("b's stream completed", DEADLINE, || {
        b.stats().streams_completed >= 1
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.streams_served >= 1, "{sa:?}");
    // The records came by stream: a datagram carries about ten.
    assert!(sa.stream_records_sent >= (KEYS - 100) as u64, "{sa:?}");
    assert!(sb.stream_frames_received >= 2, "{sb:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_by_stream_at_the_default_interval() {
    const KEYS: usize = 5_000;
    let a = node("restart-a", &[], |b| b).await;
    let b = node("restart-b", &[&a], |b| b).await;
    for i in 0..KEYS {
        a.set(key(i), format!("{i}")).unwrap();
    }
    wait_until("b holds every key", DEADLINE, || b.len() == KEYS).await;
    b.shutdown().await.unwrap();
    // Writes b misses while it is down.
    for i in 0..100 {
        a.set(key(i), format!("new-{i}")).unwrap();
    }
    // The same id, restarted empty (a new generation).
    let b = node("restart-b", &[&a], |b| b).await;
    tokio::time::timeout(DEADLINE, b.synced())
        .await
        .expect("the restarted node catches up")
        .unwrap();
    assert_eq!(b.len(), KEYS, "synced means it holds every key");
    assert_eq!(b.get(key(7)).unwrap(), Some("new-7".to_string()));
    assert_eq!(b.get(key(700)).unwrap(), Some("700".to_string()));
    wait_until("b's stream completed", DEADLINE, || {
        b.stats().streams_completed >= 1
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_leave_the_datagram_path_to_converge() {
    const KEYS: usize = 300;
    let interval = Duration::from_millis(20);
    let a = node("refuse-a", &[], |b| {
        b.gossip_interval(interval).max_serving_streams(0)
    })
    .await;
    for i in 0..KEYS {
        a.set(key(i), format!("{i}")).unwrap();
    }
    let b = node("refuse-b", &[&a], |b| b.gossip_interval(interval)).await;
    wait_until("b holds every key by datagrams", DEADLINE, || {
        b.len() == KEYS
    })
    .await;
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sb.streams_requested >= 1, "b was far behind: {sb:?}");
    assert_eq!(sb.streams_completed, 0, "{sb:?}");
    assert!(sa.streams_refused >= 1 && sa.streams_served == 0, "{sa:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_streams_off_neither_asks_nor_listens() {
    const KEYS: usize = 300;
    let interval = Duration::from_millis(20);
    let a = node("off-a", &[], |b| b.gossip_interval(interval).streams(false)).await;
    for i in 0..KEYS {
        a.set(key(i), format!("{i}")).unwrap();
    }
    // Nothing listens on a's port over TCP.
    let addr = a.local_addr().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    let b = node("off-b", &[&a], |b| {
        b.gossip_interval(interval).streams(false)
    })
    .await;
    wait_until("b holds every key by datagrams", DEADLINE, || {
        b.len() == KEYS
    })
    .await;
    assert_eq!(b.stats().streams_requested, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A port the user chose that another program holds on TCP: the node runs
/// (on UDP) without streams and says why in its health. (With port 0 the
/// node binds both again elsewhere instead; `start.rs` tests that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_port_taken_on_tcp_runs_without_streams_and_says_so() {
    // The UDP side of a port held on TCP is almost always free; try a few.
    let mut started = None;
    for _ in 0..5 {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        let built = GossipKv::<String, String>::builder()
            .node_id("taken")
            .bind_addr(addr.to_string())
            .build()
            .await;
        if let Ok(kv) = built {
            started = Some((kv, holder, addr));
            break;
        }
    }
    let (a, _holder, addr) = started.expect("a node on a port held on TCP");
    assert_eq!(a.local_addr(), Some(addr));
    wait_until("the node reports that it cannot listen", DEADLINE, || {
        a.health().problems.iter().any(|p| {
            matches!(&p.last, gossipkv::NetworkError::Io { op: "listen", source }
                if source.kind() == std::io::ErrorKind::AddrInUse)
        })
    })
    .await;
    // It still works, and a peer gets its keys by datagrams.
    a.set("k", "v".to_string()).unwrap();
    let b = node("taken-b", &[&a], |b| {
        b.gossip_interval(Duration::from_millis(20))
    })
    .await;
    wait_until("b holds a's key", DEADLINE, || {
        b.get("k").ok().flatten().is_some()
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Reads until the peer closes (or `limit` passes: then `false`).
async fn closed_by_peer(sock: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connections_are_closed_and_the_node_still_serves_joiners() {
    use gossipkv_proto::{encode, stream, Body, Envelope, Sender, Syn};
    use tokio::io::AsyncWriteExt;
    const KEYS: usize = 2_000;
    let a = node("tcp-a", &[], |b| b).await;
    for i in 0..KEYS {
        a.set(key(i), format!("{i}")).unwrap();
    }
    // A peer that makes a the member b below, so its IP is a member's.
    let addr = a.local_addr().unwrap();
    let hello = |cluster: &str, id: &str| {
        let env = Envelope::new(
            cluster,
            Sender::new(id, 1, Some("127.0.0.1:9".parse().unwrap())),
            Body::Syn(Syn {
                digest: gossipkv_storage::Digest {
                    entries: Vec::new(),
                    complete: true,
                    open_start: false,
                    open_end: false,
                },
                resync_from: None,
                digest_hash: None,
            }),
        );
        stream::open(&encode(&env)).to_vec()
    };
    let b = node("tcp-b", &[&a], |b| b).await;
    wait_until("b holds every key", DEADLINE, || b.len() == KEYS).await;
    // b's stream counted on both sides before the count is taken.
    wait_until("b's stream completed", DEADLINE, || {
        b.stats().streams_completed >= 1
    })
    .await;
    let served = a.stats().streams_served;
    let mut frame_too_long = stream::STREAM_MAGIC.to_vec();
    frame_too_long.extend_from_slice(&u32::MAX.to_be_bytes());
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a frame of 4 GiB", frame_too_long),
        (
            "a stranger's opening",
            hello(gossipkv::DEFAULT_CLUSTER_ID, "mallory"),
        ),
        ("another cluster's opening", hello("other", "tcp-b")),
    ];
    for (what, bytes) in attacks {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.write_all(&bytes).await.unwrap();
        assert!(
            closed_by_peer(&mut sock, Duration::from_secs(5)).await,
            "{what}: the connection stayed open"
        );
    }
    assert!(a.stats().streams_refused >= 4, "{:?}", a.stats());
    assert_eq!(a.stats().streams_served, served, "nothing was served");
    // A late joiner is still served.
    let c = node("tcp-c", &[&a], |b| b).await;
    wait_until("c holds every key", DEADLINE, || c.len() == KEYS).await;
    wait_until("c's stream counted as served", DEADLINE, || {
        a.stats().streams_served > served
    })
    .await;
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_trickled_a_byte_at_a_time_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let a = node("trickle-a", &[], |b| b).await;
    // b makes 127.0.0.1 a live member's address.
    let b = node("trickle-b", &[&a], |b| b).await;
    wait_until("a knows b", DEADLINE, || !a.peers().is_empty()).await;
    let mut sock = tokio::net::TcpStream::connect(a.local_addr().unwrap())
        .await
        .unwrap();
    let start = Instant::now();
    sock.write_all(&gossipkv_proto::stream::STREAM_MAGIC)
        .await
        .unwrap();
    sock.write_all(&[0, 0, 1]).await.unwrap();
    // The magic, a frame length of 256, then one byte of the frame a
    // second: the idle timeout (10 s) never fires and the frame never
    // completes; only the opening's own deadline (5 s) ends it.
    let mut trickle = gossipkv_proto::stream::STREAM_MAGIC.to_vec();
    trickle.extend_from_slice(&256u32.to_be_bytes());
    trickle.resize(trickle.len() + 12, 0);
    let mut closed = false;
    for byte in trickle.iter().skip(7) {
        if sock.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_by_peer(&mut sock, Duration::from_secs(1)).await {
            closed = true;
            break;
        }
    }
    let took = start.elapsed();
    assert!(closed, "the connection stayed open for {took:?}");
    assert!(took < Duration::from_secs(9), "closed only after {took:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_nodes_catch_up_over_sealed_streams_and_refuse_unsealed_ones() {
    use gossipkv::{generate_key, Keyring};
    use gossipkv_proto::seal::{nonce, seal_record, Direction, SEALED_STREAM_MAGIC};
    use gossipkv_proto::stream;
    use tokio::io::AsyncWriteExt;
    const KEYS: usize = 3_000;
    let k = generate_key();
    let ring = Keyring::new(k.clone());
    let keyed = |r: Keyring| move |b: gossipkv::Builder<String, String>| b.keyring(r);
    let a = node("sealed-a", &[], keyed(ring.clone())).await;
    for i in 0..KEYS {
        a.set(key(i), format!("value-{i:0>90}")).unwrap();
    }
    // The default one-second interval: only a stream brings 3,000 keys in time.
    let b = node("sealed-b", &[&a], keyed(ring.clone())).await;
    wait_until("b holds every key", DEADLINE, || b.len() == KEYS).await;
    assert_eq!(b.get(key(7)).unwrap(), Some(format!("value-{:0>90}", 7)));
    wait_until("b's stream completed", DEADLINE, || {
        b.stats().streams_completed >= 1
    })
    .await;
    let sa = a.stats();
    assert!(sa.stream_records_sent >= (KEYS - 100) as u64, "{sa:?}");
    assert_eq!(a.keyring_status().stats.streams_refused, 0);

    // From a member's IP: a plaintext opening, one sealed with another key,
    // and one sealed with the right key as if it were the answer.
    let opening = stream::open(b"whatever").to_vec();
    let sealed = |r: &Keyring, dir: Direction| {
        let mut v = SEALED_STREAM_MAGIC.to_vec();
        v.extend(seal_record(
            r,
            gossipkv::DEFAULT_CLUSTER_ID,
            dir,
            0,
            nonce(1, [1; 16]),
            &opening,
        ));
        v
    };
    let attacks = [
        ("a plaintext stream", opening.clone()),
        (
            "another key",
            sealed(&Keyring::new(generate_key()), Direction::Request),
        ),
        ("a reflected record", sealed(&ring, Direction::Response)),
    ];
    let served = a.stats().streams_served;
    for (n, (what, bytes)) in attacks.into_iter().enumerate() {
        let mut sock = tokio::net::TcpStream::connect(a.local_addr().unwrap())
            .await
            .unwrap();
        sock.write_all(&bytes).await.unwrap();
        assert!(
            closed_by_peer(&mut sock, Duration::from_secs(5)).await,
            "{what}: the connection stayed open"
        );
        wait_until(what, DEADLINE, || {
            a.keyring_status().stats.streams_refused == n as u64 + 1
        })
        .await;
    }
    assert_eq!(a.stats().streams_served, served, "nothing was served");
    for n in [a, b] {
        n.shutdown().await.unwrap();
    }
}
