//! The `serve` scenario: the serving node's extra memory while it streams a
//! million keys to a joiner, measured in a fresh process of this binary
//! through the protocol's own stream calls (the bytes go to a sink; the
//! figure leaves out the kernel's socket buffers); how fast frames are
//! built; and how fast a joiner applies them (no network in between: the
//! two halves of a stream's cost, apart).

use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gossipkv_benches::{key, value, NOW_MS};
use gossipkv_core::{Instant as At, Protocol, ProtocolConfig, StreamSend, WallTime};
use gossipkv_storage::{Origin, Store};

use crate::options::SERVE_PROBE;
use crate::report::{progress, Report};

/// Keys the serving node holds.
const SERVE_KEYS: usize = 1_000_000;

/// Measures in a subprocess; records `serve_extra_mib_1m`.
pub(crate) fn scenario(report: &mut Report, t0: Instant) {
    progress(
        t0,
        format!("serve: streaming {SERVE_KEYS} keys to a sink (in a fresh process)..."),
    );
    match in_subprocess() {
        Ok((extra, bytes, ms, apply_ms)) => {
            progress(
                t0,
                format!(
                    "serve: {SERVE_KEYS} keys ({:.1} MB on the wire) built in {ms:.0} ms, applied by a joiner in {apply_ms:.0} ms; the server's peak RSS rose {:.1} MiB",
                    bytes / 1e6,
                    extra / f64::from(1 << 20)
                ),
            );
            report.put("serve_extra_mib_1m", extra / f64::from(1 << 20));
            report.put("serve_bytes_per_key_1m", bytes / SERVE_KEYS as f64);
            report.put("serve_keys_per_s_1m", SERVE_KEYS as f64 / (ms / 1e3));
            report.put(
                "stream_apply_keys_per_s_1m",
                SERVE_KEYS as f64 / (apply_ms / 1e3),
            );
        }
        Err(e) => report.fail(t0, "serve", e),
    }
}

fn in_subprocess() -> Result<(f64, f64, f64, f64)> {
    match crate::memory::run_probe(SERVE_PROBE, "serve")?[..] {
        [extra, bytes, ms, apply_ms] => Ok((extra, bytes, ms, apply_ms)),
        ref other => bail!("serve probe printed {other:?}"),
    }
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status_kb(field: &str) -> Result<f64> {
    let text = fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kb: f64 = line.trim().trim_end_matches("kB").trim().parse()?;
    Ok(kb * 1024.0)
}

fn node(id: &str, port: u16, seeds: Vec<SocketAddr>) -> (Protocol, SocketAddr) {
    let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cfg = ProtocolConfig::new(id, 1, "serve");
    cfg.advertise_addr = Some(addr);
    cfg.seeds = seeds;
    cfg.streams = true;
    cfg.gossip_interval = Duration::from_millis(100);
    let store = Arc::new(Store::new(Origin::new(id, 1)));
    (Protocol::new(cfg, store, At::from_millis(0)), addr)
}

/// A fresh joiner `id` of the server `a`: it meets the server, asks for a
/// stream, and the server accepts it and reads its opening. Returns the
/// joiner, its stream and the server's id of it.
fn joiner(
    a: &mut Protocol,
    a_addr: SocketAddr,
    (id, port): (&str, u16),
    (now, wall): (At, WallTime),
) -> Result<(Protocol, gossipkv_core::StreamOpen, gossipkv_core::StreamId)> {
    let (mut b, b_addr) = node(id, port, vec![a_addr]);
    // Two rounds: in the first the server and the joiner validate each
    // other's addresses, in the second the joiner asks for the stream.
    for later in [0, 100] {
        let now = now + Duration::from_millis(later);
        b.handle_timeout(now, wall);
        while let Some(t) = b.poll_transmit() {
            a.handle_datagram(now, wall, b_addr, &t.payload);
        }
        while let Some(t) = a.poll_transmit() {
            b.handle_datagram(now, wall, a_addr, &t.payload);
        }
    }
    let open = b
        .poll_stream_open()
        .context("the joiner asks for a stream")?;
    let served = a
        .accept_stream(now, b_addr)
        .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    a.handle_stream_data(now, wall, served, &open.bytes)
        .map_err(|e| anyhow::anyhow!("opening refused: {e}"))?;
    Ok((b, open, served))
}

/// The body of the hidden `--serve-probe` run: prints the rise of the peak
/// RSS while serving, the bytes served and the milliseconds it took.
pub(crate) fn probe() -> Result<()> {
    let (mut a, a_addr) = node("server", 7001, vec![]);
    for i in 0..SERVE_KEYS {
        a.store().set(&key(i), value(i), NOW_MS);
    }
    let wall = WallTime::from_unix_ms(NOW_MS);
    let now = At::from_millis(1);
    let (mut b, open, id) = joiner(&mut a, a_addr, ("joiner", 7002), (now, wall))?;
    // The peak so far is the store's: reset it, then serve.
    fs::write("/proc/self/clear_refs", "5").context("cannot reset the peak RSS")?;
    let base = status_kb("VmRSS:")?;
    let start = Instant::now();
    let mut bytes = 0usize;
    loop {
        match a.poll_stream_send(now, id) {
            StreamSend::Data(b) => bytes += b.len(),
            StreamSend::Finished => break,
            StreamSend::Wait => bail!("the server waits after the opening"),
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let peak = status_kb("VmHWM:")?;
    // (The joiner holds the few records of the server's first answer.)
    ensure!(
        a.stats().stream_records_sent + b.store().len() as u64 >= SERVE_KEYS as u64,
        "only {} records served",
        a.stats().stream_records_sent
    );
    a.handle_stream_closed(now, id);
    b.handle_stream_closed(now, open.id);
    let apply_ms = receiving_side(&mut a, a_addr, now, wall)?;
    println!("{} {bytes} {ms} {apply_ms}", (peak - base).max(0.0));
    Ok(())
}

/// Serves the store again to a fresh joiner, which applies every frame:
/// the milliseconds spent applying (the receiving side alone).
fn receiving_side(a: &mut Protocol, a_addr: SocketAddr, now: At, wall: WallTime) -> Result<f64> {
    let (mut b, open, id) = joiner(a, a_addr, ("joiner2", 7003), (now, wall))?;
    let mut applying = Duration::ZERO;
    while let StreamSend::Data(frame) = a.poll_stream_send(now, id) {
        let t = Instant::now();
        b.handle_stream_data(now, wall, open.id, &frame)
            .map_err(|e| anyhow::anyhow!("frame refused: {e}"))?;
        applying += t.elapsed();
    }
    ensure!(
        b.store().len() == SERVE_KEYS,
        "the joiner holds {}",
        b.store().len()
    );
    Ok(applying.as_secs_f64() * 1e3)
}
