//! Seed corpora from real traffic: a three-node cluster of [`Protocol`]s
//! run in virtual time, sans IO, with writes (small values, a large value
//! sent as fragments, deletes); every datagram it exchanges is recorded and
//! turned into inputs of each target's format.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gossipkv_core::{Instant, Protocol, ProtocolConfig, WallTime};
use gossipkv_proto::{decode, Body, Limits};
use gossipkv_storage::{Origin, Store};

use crate::{peer, CLUSTER, WALL_START_MS};

/// At most this many seeds per target.
const PER_TARGET: usize = 40;

/// Runs the cluster and writes the seeds under `out/<target>/` (files named
/// `seed-NNN`, replacing those of an earlier run). Returns how many files
/// each target got.
pub fn generate(out: &Path) -> io::Result<Vec<(&'static str, usize)>> {
    let traffic = run_cluster();
    let mut seeds: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();

    // envelope: one datagram of each kind first, then others, small ones
    // preferred.
    let mut by_kind: BTreeMap<String, Vec<&Bytes>> = BTreeMap::new();
    for d in &traffic.datagrams {
        let kind = match decode(d, &Limits::default()) {
            Ok(env) => kind_name(&env.body),
            Err(_) => "undecodable".into(),
        };
        by_kind.entry(kind).or_default().push(d);
    }
    let mut picked: Vec<Vec<u8>> = Vec::new();
    for round in 0..PER_TARGET {
        for list in by_kind.values() {
            if let Some(d) = list.get(round * list.len().div_ceil(8).max(1)) {
                if picked.len() < PER_TARGET {
                    picked.push(d.to_vec());
                }
            }
        }
    }
    seeds.insert("envelope", picked.clone());

    // stream_frames: real envelopes framed as a stream (magic, plain and
    // compressed frames, the end marker); head byte: magic, 64 KiB frames.
    let mut frames = Vec::new();
    for (i, chunk) in picked.chunks(4).enumerate() {
        let mut s = vec![1 | (16 << 1) | (((i % 8) as u8) << 5)];
        s.extend_from_slice(&gossipkv_proto::stream::open(&chunk[0]));
        for (j, d) in chunk[1..].iter().enumerate() {
            let f = match j % 2 {
                0 => gossipkv_proto::stream::frame(d),
                _ => gossipkv_proto::stream::frame_compressed(d),
            };
            s.extend_from_slice(&f);
        }
        s.extend_from_slice(&gossipkv_proto::stream::end_frame());
        frames.push(s);
    }
    seeds.insert("stream_frames", frames);

    // durable_rows: the rows the data directory writes for the records and
    // marks the cluster ended with.
    let mut rows = Vec::new();
    let marks = traffic.store.marks();
    for (i, record) in traffic.store.records().iter().enumerate() {
        let (origin, w, f) =
            marks
                .get(i % marks.len().max(1))
                .cloned()
                .unwrap_or((Origin::new("a", 1), 1, 0));
        rows.extend(gossipkv_durable::fuzz_rows_of(record, &origin, w, f));
    }
    rows.truncate(PER_TARGET);
    seeds.insert("durable_rows", rows);

    // reassembly: fragments as sent (mode 0), and whole large envelopes to
    // cut (mode 1).
    let mut re = Vec::new();
    let fragments: Vec<gossipkv_proto::Fragment> = traffic
        .datagrams
        .iter()
        .filter_map(|d| match decode(d, &Limits::default()).ok()?.body {
            Body::Fragment(f) => Some(f),
            _ => None,
        })
        .collect();
    for group in fragments.chunks(6).take(PER_TARGET / 2) {
        let mut s = vec![0];
        for f in group {
            let data = &f.data[..f.data.len().min(255)];
            s.push((f.message_id & 0x7f) as u8);
            s.push(f.index as u8);
            s.push(f.count as u8);
            s.extend_from_slice(&(f.total_len as u16).to_le_bytes());
            s.push(data.len() as u8);
            s.extend_from_slice(data);
        }
        re.push(s);
    }
    let mut large: Vec<&Bytes> = traffic.datagrams.iter().collect();
    large.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for (i, d) in large.iter().take(PER_TARGET / 2).enumerate() {
        let mut s = vec![1 | (((i % 4) as u8) << 1), 199];
        s.extend_from_slice(d);
        re.push(s);
    }
    seeds.insert("reassembly", re);

    // protocol: windows of the datagrams node a received, with the time
    // steps between them, as the target reads them.
    let mut proto = Vec::new();
    let received = &traffic.received_by_a;
    let window = received.len().div_ceil(PER_TARGET).max(8);
    for w in received.chunks(window).take(PER_TARGET) {
        let mut s = Vec::new();
        for (from, d) in w {
            if d.len() > usize::from(u16::MAX) {
                continue;
            }
            s.push(*from % 4);
            s.extend_from_slice(&(d.len() as u16).to_le_bytes());
            s.extend_from_slice(d);
            s.push(0x80 | 4);
        }
        proto.push(s);
    }
    seeds.insert("protocol", proto);

    seeds.insert("http", http_seeds());

    // sealed: the picked datagrams sealed with the fuzz keyring (mode 0),
    // and streams of them as sealed records (odd modes, both directions).
    let ring = crate::fuzz_keyring();
    let mut sealed = Vec::new();
    for (i, d) in picked.iter().enumerate().take(PER_TARGET / 2) {
        let n = gossipkv_proto::seal::nonce(1_767_225_600_000 + i as u64, [i as u8; 16]);
        let mut s = vec![0];
        s.extend(gossipkv_proto::seal::seal_datagram(
            &ring,
            crate::CLUSTER,
            n,
            d,
        ));
        sealed.push(s);
    }
    for (i, chunk) in picked.chunks(4).enumerate().take(PER_TARGET / 2) {
        let dir = match i % 2 {
            0 => gossipkv_proto::seal::Direction::Request,
            _ => gossipkv_proto::seal::Direction::Response,
        };
        let mut s = vec![1 | (((i % 16) as u8) << 1) | (((i % 2) as u8) << 7)];
        for (j, d) in chunk.iter().enumerate() {
            let n = gossipkv_proto::seal::nonce(j as u64, [j as u8; 16]);
            s.extend(gossipkv_proto::seal::seal_record(
                &ring,
                crate::CLUSTER,
                dir,
                j as u64,
                n,
                d,
            ));
        }
        sealed.push(s);
    }
    seeds.insert("sealed", sealed);

    let mut counts = Vec::new();
    for (target, files) in seeds {
        let dir = out.join(target);
        if dir.exists() {
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                {
                    std::fs::remove_file(p)?;
                }
            }
        }
        std::fs::create_dir_all(&dir)?;
        for (i, f) in files.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), f)?;
        }
        counts.push((target, files.len()));
    }
    Ok(counts)
}

fn kind_name(body: &Body) -> String {
    let s = format!("{body:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Requests in the `http` target's format, over the agent's routes.
fn http_seeds() -> Vec<Vec<u8>> {
    let reqs: &[(u8, &str, &str, &str)] = &[
        (0, "/v1/kv/a", "", ""),
        (
            1,
            "/v1/kv/a",
            "content-type: application/octet-stream",
            "hello",
        ),
        (1, "/v1/kv/b?ttl=30s", "", "v"),
        (1, "/v1/kv/c?ephemeral", "", "v"),
        (0, "/v1/kv/?recurse", "", ""),
        (0, "/v1/kv/?keys&separator=/", "", ""),
        (0, "/v1/kv/a?raw", "", ""),
        (3, "/v1/kv/a", "", ""),
        (1, "/v1/kv/a", "if-match: 1", "x"),
        (0, "/v1/members", "", ""),
        (0, "/v1/self", "", ""),
        (0, "/v1/health", "", ""),
        (0, "/v1/health/ready", "", ""),
        (0, "/metrics", "accept: text/plain", ""),
        (0, "/v1/watch?index=1&wait=10ms", "", ""),
        (
            2,
            "/put",
            "content-type: application/json",
            r#"{"key":"k","value":"v"}"#,
        ),
        (0, "/get?key=k", "", ""),
        (3, "/delete?key=k", "", ""),
        (5, "/v1/kv/a", "", ""),
        (6, "/v1/kv/a", "", ""),
        (7, "/", "authorization: Bearer x", ""),
    ];
    reqs.iter()
        .map(|(m, uri, header, body)| {
            let mut s = vec![*m];
            s.extend_from_slice(uri.as_bytes());
            s.push(b'\n');
            if !header.is_empty() {
                s.extend_from_slice(header.as_bytes());
                s.push(b'\n');
            }
            s.push(b'\n');
            s.extend_from_slice(body.as_bytes());
            s
        })
        .collect()
}

struct Traffic {
    datagrams: Vec<Bytes>,
    /// Datagrams node `a` received, with the sender's index.
    received_by_a: Vec<(u8, Bytes)>,
    /// Node `a`'s store at the end.
    store: Arc<Store>,
}

/// Three nodes `a`, `b`, `c` at [`peer`] 1..=3, seeded with each other,
/// for 20 virtual seconds with writes on every node.
fn run_cluster() -> Traffic {
    let names = ["a", "b", "c"];
    let addrs: Vec<SocketAddr> = (1..=3).map(peer).collect();
    let mut now = Instant::from_millis(0);
    let mut wall = WALL_START_MS;
    let mut nodes: Vec<Protocol> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut cfg = ProtocolConfig::new(*n, 1, CLUSTER);
            cfg.seeds = addrs.iter().filter(|a| **a != addrs[i]).copied().collect();
            Protocol::new(cfg, Arc::new(Store::new(Origin::new(*n, 1))), now)
        })
        .collect();
    let mut traffic = Traffic {
        datagrams: Vec::new(),
        received_by_a: Vec::new(),
        store: nodes[0].store().clone(),
    };
    for step in 0..400u64 {
        now = now + Duration::from_millis(50);
        wall += 50;
        if step % 20 == 5 {
            let i = (step / 20 % 3) as usize;
            let store = nodes[i].store().clone();
            let mut records = vec![store.write(
                &format!("key/{step}"),
                Some(Bytes::from(format!("value {step}"))),
                wall,
            )];
            if step % 60 == 5 {
                let big = Bytes::from(vec![b'x'; 6000 + step as usize]);
                records.push(store.write(&format!("big/{step}"), Some(big), wall));
            }
            if step % 40 == 25 {
                records.push(store.write(&format!("key/{}", step - 20), None, wall));
            }
            nodes[i].push_local(now, records);
        }
        for node in nodes.iter_mut() {
            if node.poll_timeout().is_some_and(|due| due <= now) {
                node.handle_timeout(now, WallTime::from_unix_ms(wall));
            }
        }
        // Deliver until quiet.
        loop {
            let mut sent = Vec::new();
            for (i, node) in nodes.iter_mut().enumerate() {
                while let Some(t) = node.poll_transmit() {
                    sent.push((i, t));
                }
                while node.poll_event().is_some() {}
                while node.poll_stream_open().is_some() {}
            }
            if sent.is_empty() {
                break;
            }
            for (from, t) in sent {
                traffic.datagrams.push(t.payload.clone());
                if let Some(to) = addrs.iter().position(|a| *a == t.to) {
                    if to == 0 {
                        traffic
                            .received_by_a
                            .push((from as u8 + 1, t.payload.clone()));
                    }
                    nodes[to].handle_datagram(
                        now,
                        WallTime::from_unix_ms(wall),
                        addrs[from],
                        &t.payload,
                    );
                }
            }
        }
    }
    traffic
}
