//! The `amplify` scenario: what a node holding data sends back to an address
//! that never sends its validation token back (as a spoofer cannot, since
//! the token goes to the address it forges), on loopback UDP.
//!
//! One node holds [`KEYS`] values of 100 bytes. A raw socket sends it
//! [`EACH`] datagrams of each kind a spoofer would pick to draw the largest
//! answers: first Syns of new nodes showing a complete, empty digest (each
//! asks for everything), hash-only Syns, probes and member-list syncs, all
//! unpadded. Every datagram names a new node, so that none is known.
//!
//! - `unvalidated_answer_ratio`: bytes received back at that socket over
//!   bytes it sent (the target: at most 3).
//! - `unvalidated_answer_bytes`, `unvalidated_sent_bytes`: the two sums.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gossipkv_proto::{encode, Body, Envelope, MemberSync, Probe, Sender, Syn};
use gossipkv_storage::Digest;

use crate::report::{progress, Report};
use crate::{Kv, INTERVAL};

/// Values the node holds.
const KEYS: usize = 2_000;
/// Datagrams of each kind.
const EACH: usize = 50;
/// Limit of the whole measurement.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the scenario and puts its figures in `report`.
pub(crate) async fn scenario(report: &mut Report, t0: Instant) -> Result<()> {
    let kv: Kv = Kv::builder()
        .node_id("amplify-target")
        .bind_addr("127.0.0.1:0")
        .gossip_interval(INTERVAL)
        .build()
        .await?;
    for i in 0..KEYS {
        kv.set(format!("key/{i:05}"), "v".repeat(100))?;
    }
    let target = kv.local_addr().context("a network node")?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let me = socket.local_addr()?;
    let mut sent = 0;
    for (i, body) in bodies().into_iter().enumerate() {
        let env = Envelope::new(
            gossipkv::DEFAULT_CLUSTER_ID,
            Sender::new(format!("spoof-{i}"), 1, Some(me)),
            body,
        );
        sent += socket.send_to(&encode(&env), target)?;
    }
    let handled = 4 * EACH as u64;
    let start = Instant::now();
    while kv.stats().datagrams_received < handled {
        ensure!(
            start.elapsed() < DEADLINE,
            "the node handled {} of {handled} datagrams",
            kv.stats().datagrams_received
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The node has no member and no seed: every datagram it sent went to
    // the socket (the count is final once they are handled).
    let expected = kv.stats().datagrams_sent;
    let answered = tokio::task::spawn_blocking(move || drain(&socket, expected)).await??;
    let ratio = answered as f64 / sent as f64;
    report.put("unvalidated_sent_bytes", sent as f64);
    report.put("unvalidated_answer_bytes", answered as f64);
    report.put("unvalidated_answer_ratio", ratio);
    progress(
        t0,
        format!(
            "amplify: {answered} bytes answered to an unvalidated address for {sent} sent ({ratio:.2}x; {} refused)",
            kv.stats().unvalidated_refused
        ),
    );
    kv.shutdown().await?;
    Ok(())
}

/// The datagrams' bodies: [`EACH`] of each kind.
fn bodies() -> Vec<Body> {
    let empty = Digest {
        complete: true,
        ..Digest::default()
    };
    let mut out = Vec::new();
    for i in 0..EACH {
        out.push(Body::Syn(Syn {
            digest: empty.clone(),
            resync_from: None,
            digest_hash: None,
        }));
        out.push(Body::Syn(Syn {
            digest: Digest::default(),
            resync_from: None,
            digest_hash: Some(i as u64),
        }));
        out.push(Body::Probe(Probe {
            target: Sender::new("amplify-target", 1, None),
            request: false,
        }));
        out.push(Body::MemberSync(MemberSync {
            buckets: vec![i as u64; 32],
            ttl: 1,
        }));
    }
    out
}

/// Bytes of the next `count` datagrams received on `socket`.
fn drain(socket: &UdpSocket, count: u64) -> Result<usize> {
    socket.set_read_timeout(Some(DEADLINE))?;
    let mut buf = [0u8; 65_536];
    let mut total = 0;
    for i in 0..count {
        let (n, _) = socket
            .recv_from(&mut buf)
            .with_context(|| format!("datagram {i} of {count} not received"))?;
        total += n;
    }
    Ok(total)
}
