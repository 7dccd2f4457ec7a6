//! quicbench: bulk state-transfer stream over loopback, TCP (tokio) vs QUIC (quinn).
//!
//! Every socket binds/connects to 127.0.0.1 only. Each run uses two OS threads, each
//! with its own single-threaded tokio runtime: a "server" (sender) thread and a
//! "client" (receiver) thread. This makes per-side CPU time measurable with
//! getrusage(RUSAGE_THREAD); the process-wide getrusage(RUSAGE_SELF) delta is also
//! reported as a cross-check.
//!
//! Protocol per run:
//!   client connects, sends a 100-byte hello; server reads the hello, then writes
//!   N payload bytes as frames [u32 big-endian length][payload <= 64 KiB], then
//!   closes its sending side; client reads and parses frames until EOF.
//!   setup  = connect() start .. first byte of the response readable at the client
//!   total  = connect() start .. EOF at the client (all N bytes parsed)
//!   MB/s   = N / total  (MB = 10^6 bytes, N counts payload bytes only)

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const FRAME_PAYLOAD: usize = 64 * 1024;
const HELLO_LEN: usize = 100;
const RECV_BUF: usize = 256 * 1024;
/// Hard bound on one side of one run (connection + transfer + teardown).
const SIDE_TIMEOUT: Duration = Duration::from_secs(60);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

// ---------------------------------------------------------------------------------
// CPU accounting

fn rusage(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
fn cpu_thread() -> Duration {
    rusage(libc::RUSAGE_THREAD)
}
fn cpu_process() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

// ---------------------------------------------------------------------------------
// Payload

struct Payload {
    /// Complete frame (length prefix + 64 KiB payload), reused for every full frame.
    full: Vec<u8>,
    /// Final, shorter frame (empty if N is a multiple of 64 KiB).
    last: Vec<u8>,
    n_full: usize,
    total: u64,
}

impl Payload {
    fn new(total: u64) -> Self {
        // xorshift64* pseudo-random bytes: incompressible, generated once.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut payload = vec![0u8; FRAME_PAYLOAD];
        for chunk in payload.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n_full = (total / FRAME_PAYLOAD as u64) as usize;
        let rem = (total % FRAME_PAYLOAD as u64) as usize;
        let mk = |len: usize| {
            let mut f = Vec::with_capacity(4 + len);
            f.extend_from_slice(&(len as u32).to_be_bytes());
            f.extend_from_slice(&payload[..len]);
            f
        };
        Payload {
            full: mk(FRAME_PAYLOAD),
            last: if rem > 0 { mk(rem) } else { Vec::new() },
            n_full,
            total,
        }
    }
    fn n_frames(&self) -> usize {
        self.n_full + usize::from(!self.last.is_empty())
    }
    fn expected_len(&self, idx: usize) -> usize {
        if idx < self.n_full {
            FRAME_PAYLOAD
        } else {
            self.last.len().saturating_sub(4)
        }
    }
}

fn hello() -> [u8; HELLO_LEN] {
    let mut h = [b'h'; HELLO_LEN];
    h[..5].copy_from_slice(b"HELLO");
    h
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Read and parse frames until EOF. Returns time from `t0` to the first readable byte.
/// Identical for TCP and QUIC (both used through tokio's AsyncRead).
async fn receive<R: AsyncRead + Unpin>(
    r: &mut R,
    p: &Payload,
    t0: Instant,
    verify: bool,
) -> io::Result<Duration> {
    let mut buf = vec![0u8; RECV_BUF];
    let mut first = None;
    let mut hdr = [0u8; 4];
    let mut hdr_have = 0usize;
    let mut frame_len = 0usize;
    let mut remaining = 0usize; // payload bytes still expected in the current frame
    let mut frames = 0usize;
    let mut got: u64 = 0;
    // Bounded: each read returns >= 1 byte or EOF; total bytes are checked against N.
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t0.elapsed());
        let mut i = 0;
        while i < n {
            if remaining == 0 {
                let take = (4 - hdr_have).min(n - i);
                hdr[hdr_have..hdr_have + take].copy_from_slice(&buf[i..i + take]);
                hdr_have += take;
                i += take;
                if hdr_have == 4 {
                    hdr_have = 0;
                    frame_len = u32::from_be_bytes(hdr) as usize;
                    if frames >= p.n_frames() || frame_len != p.expected_len(frames) {
                        return Err(bad(format!("unexpected frame {frames} len {frame_len}")));
                    }
                    frames += 1;
                    remaining = frame_len;
                }
            } else {
                let take = remaining.min(n - i);
                if verify {
                    let off = 4 + frame_len - remaining;
                    if buf[i..i + take] != p.full[off..off + take] {
                        return Err(bad(format!("payload mismatch in frame {frames}")));
                    }
                }
                remaining -= take;
                got += take as u64;
                i += take;
            }
        }
        if got > p.total {
            return Err(bad("too many bytes"));
        }
    }
    if hdr_have != 0 || remaining != 0 || got != p.total || frames != p.n_frames() {
        return Err(bad(format!(
            "truncated stream: got {got} of {} bytes, {frames} frames",
            p.total
        )));
    }
    first.ok_or_else(|| bad("no data"))
}

// ---------------------------------------------------------------------------------
// Results

#[derive(Clone, Debug, Default)]
struct RunResult {
    setup: Duration,
    total: Duration,
    cpu_server: Duration,
    cpu_client: Duration,
    cpu_process: Duration,
    note: String,
}

fn current_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs server and client on two threads (one current-thread runtime each).
/// `server` gets a ready signal sender; `client` gets the server address.
fn two_threads<S, C>(server: S, client: C) -> RunResult
where
    S: FnOnce(mpsc::Sender<SocketAddr>) -> (Duration, String) + Send + 'static,
    C: FnOnce(SocketAddr) -> (Duration, Duration, Duration, String) + Send + 'static,
{
    let proc0 = cpu_process();
    let (tx, rx) = mpsc::channel();
    let sh = std::thread::spawn(move || server(tx));
    let addr = rx.recv_timeout(SIDE_TIMEOUT).expect("server did not start");
    assert!(addr.ip().is_loopback());
    let ch = std::thread::spawn(move || client(addr));
    let (setup, total, cpu_client, cnote) = ch.join().expect("client thread panicked");
    let (cpu_server, snote) = sh.join().expect("server thread panicked");
    let cpu_process = cpu_process() - proc0;
    RunResult {
        setup,
        total,
        cpu_server,
        cpu_client,
        cpu_process,
        note: [snote, cnote].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "),
    }
}

async fn bounded<T>(what: &str, f: impl std::future::Future<Output = io::Result<T>>) -> T {
    match tokio::time::timeout(SIDE_TIMEOUT, f).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: timed out after {SIDE_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------------
// TCP

fn run_tcp(p: Arc<Payload>, verify: bool) -> RunResult {
    let ps = p.clone();
    two_threads(
        move |ready| {
            let rt = current_rt();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
                ready.send(listener.local_addr().unwrap()).unwrap();
                let c0 = cpu_thread();
                bounded("tcp server", async {
                    let (mut s, _) = listener.accept().await?;
                    s.set_nodelay(true)?;
                    let mut h = [0u8; HELLO_LEN];
                    s.read_exact(&mut h).await?;
                    if h != hello() {
                        return Err(bad("bad hello"));
                    }
                    for _ in 0..ps.n_full {
                        s.write_all(&ps.full).await?;
                    }
                    if !ps.last.is_empty() {
                        s.write_all(&ps.last).await?;
                    }
                    s.shutdown().await?;
                    // Wait for the client to close (EOF), so teardown is clean.
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                    Ok(())
                })
                .await;
                (cpu_thread() - c0, String::new())
            })
        },
        move |addr| {
            let rt = current_rt();
            rt.block_on(async move {
                let c0 = cpu_thread();
                let t0 = Instant::now();
                let (setup, total) = bounded("tcp client", async {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&hello()).await?;
                    let setup = receive(&mut s, &p, t0, verify).await?;
                    Ok((setup, t0.elapsed()))
                })
                .await;
                (setup, total, cpu_thread() - c0, String::new())
            })
        },
    )
}

// ---------------------------------------------------------------------------------
// QUIC

#[cfg(feature = "quic")]
mod quic {
    use super::*;
    use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use quinn::{TransportConfig, VarInt};

    pub struct Certs {
        pub cert: CertificateDer<'static>,
        pub key_pkcs8: Vec<u8>,
    }

    /// Self-signed certificate for "localhost", generated with rcgen at startup.
    pub fn make_certs() -> Certs {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        Certs { cert: ck.cert.der().clone(), key_pkcs8: ck.signing_key.serialize_der() }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Windows {
        /// quinn's TransportConfig::default()
        Default,
        /// stream + connection receive windows and send window = 16 MiB
        Big,
        /// Big windows + SO_RCVBUF/SO_SNDBUF of SOCKBUF on both UDP sockets
        /// (extra variant, not part of the original brief)
        BigSockBuf,
    }

    /// Requested UDP socket buffer size; the kernel caps it at net.core.{r,w}mem_max
    /// and doubles the value it reports.
    pub const SOCKBUF: libc::c_int = 4 * 1024 * 1024;

    fn sockopt(fd: libc::c_int, opt: libc::c_int, val: Option<libc::c_int>) -> libc::c_int {
        unsafe {
            if let Some(v) = val {
                let rc = libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "setsockopt");
            }
            let mut out: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let rc = libc::getsockopt(fd, libc::SOL_SOCKET, opt, &mut out as *mut _ as *mut libc::c_void, &mut len);
            assert_eq!(rc, 0, "getsockopt");
            out
        }
    }

    /// Endpoint on 127.0.0.1:0; for BigSockBuf the UDP socket buffers are enlarged first.
    /// Returns the endpoint and a note with the effective SO_RCVBUF/SO_SNDBUF.
    fn endpoint(w: Windows, server: Option<quinn::ServerConfig>) -> (quinn::Endpoint, String) {
        use std::os::fd::AsRawFd;
        let sock = std::net::UdpSocket::bind((LOOPBACK, 0)).unwrap();
        let fd = sock.as_raw_fd();
        let set = if w == Windows::BigSockBuf { Some(SOCKBUF) } else { None };
        let rcv = sockopt(fd, libc::SO_RCVBUF, set);
        let snd = sockopt(fd, libc::SO_SNDBUF, set);
        let rt = quinn::default_runtime().expect("tokio runtime");
        let ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), server, sock, rt).unwrap();
        (ep, format!("rcvbuf={rcv} sndbuf={snd}"))
    }

    pub const BIG_WINDOW: u32 = 16 * 1024 * 1024;

    fn transport(w: Windows) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        if w != Windows::Default {
            t.stream_receive_window(VarInt::from_u32(BIG_WINDOW));
            t.receive_window(VarInt::from_u32(BIG_WINDOW));
            t.send_window(BIG_WINDOW as u64);
        }
        Arc::new(t)
    }

    fn server_config(c: &Certs, w: Windows) -> quinn::ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pkcs8.clone()));
        let mut sc = quinn::ServerConfig::with_single_cert(vec![c.cert.clone()], key).unwrap();
        sc.transport_config(transport(w));
        sc
    }

    /// Client trusts exactly the generated certificate (full webpki verification,
    /// server name "localhost"); no skip-verify.
    fn client_config(c: &Certs, w: Windows) -> quinn::ClientConfig {
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(c.cert.clone()).unwrap();
        let mut cc = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        cc.transport_config(transport(w));
        cc
    }

    fn ioe<E: std::fmt::Display>(e: E) -> io::Error {
        io::Error::other(e.to_string())
    }

    pub fn run_quic(p: Arc<Payload>, certs: Arc<Certs>, w: Windows, verify: bool) -> RunResult {
        let ps = p.clone();
        let cs = certs.clone();
        two_threads(
            move |ready| {
                let rt = current_rt();
                rt.block_on(async move {
                    let (ep, sockinfo) = endpoint(w, Some(server_config(&cs, w)));
                    ready.send(ep.local_addr().unwrap()).unwrap();
                    let c0 = cpu_thread();
                    let stats = bounded("quic server", async {
                        let inc = ep.accept().await.ok_or_else(|| ioe("endpoint closed"))?;
                        let conn = inc.await.map_err(ioe)?;
                        let (mut send, mut recv) = conn.accept_bi().await.map_err(ioe)?;
                        let mut h = [0u8; HELLO_LEN];
                        recv.read_exact(&mut h).await.map_err(ioe)?;
                        if h != hello() {
                            return Err(bad("bad hello"));
                        }
                        let full = bytes::Bytes::from(ps.full.clone());
                        for _ in 0..ps.n_full {
                            // zero-copy hand-off of a refcounted buffer
                            send.write_chunk(full.clone()).await.map_err(ioe)?;
                        }
                        if !ps.last.is_empty() {
                            send.write_chunk(bytes::Bytes::from(ps.last.clone()))
                                .await
                                .map_err(ioe)?;
                        }
                        send.finish().map_err(ioe)?;
                        // Completes once the peer has acknowledged all stream data.
                        let _ = send.stopped().await;
                        // Client closes the connection after reading everything.
                        let _ = conn.closed().await;
                        Ok(conn.stats())
                    })
                    .await;
                    let cpu = cpu_thread() - c0;
                    let s = stats;
                    let note = format!(
                        "srv[{sockinfo} sent_pkts={} lost={} cong_ev={} cwnd={} mtu={} udp_tx_dgrams={} udp_tx_ios={}]",
                        s.path.sent_packets,
                        s.path.lost_packets,
                        s.path.congestion_events,
                        s.path.cwnd,
                        s.path.current_mtu,
                        s.udp_tx.datagrams,
                        s.udp_tx.ios
                    );
                    drop(ep);
                    (cpu, note)
                })
            },
            move |addr| {
                let rt = current_rt();
                rt.block_on(async move {
                    let (mut ep, sockinfo) = endpoint(w, None);
                    ep.set_default_client_config(client_config(&certs, w));
                    let c0 = cpu_thread();
                    let t0 = Instant::now();
                    let (setup, total, stats) = bounded("quic client", async {
                        let conn = ep
                            .connect(addr, "localhost")
                            .map_err(ioe)?
                            .await
                            .map_err(ioe)?;
                        let (mut send, mut recv) = conn.open_bi().await.map_err(ioe)?;
                        send.write_all(&hello()).await.map_err(ioe)?;
                        send.finish().map_err(ioe)?;
                        let setup = receive(&mut recv, &p, t0, verify).await?;
                        let total = t0.elapsed();
                        let stats = conn.stats();
                        conn.close(VarInt::from_u32(0), b"done");
                        Ok((setup, total, stats))
                    })
                    .await;
                    // Let the CONNECTION_CLOSE go out (bounded).
                    let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
                    let cpu = cpu_thread() - c0;
                    let note = format!(
                        "cli[{sockinfo} udp_rx_dgrams={} udp_rx_ios={} rtt={:?}]",
                        stats.udp_rx.datagrams, stats.udp_rx.ios, stats.path.rtt
                    );
                    (setup, total, cpu, note)
                })
            },
        )
    }
}

// ---------------------------------------------------------------------------------
// Driver

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let med = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    (v[0], med, v[n - 1])
}

struct Args {
    runs: usize,
    warmup: usize,
    bytes: u64,
    verify: bool,
}

fn parse_args() -> Args {
    let mut a = Args { runs: 5, warmup: 1, bytes: 116_000_000, verify: false };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("missing value");
        match k.as_str() {
            "--runs" => a.runs = val().parse().unwrap(),
            "--warmup" => a.warmup = val().parse().unwrap(),
            "--bytes" => a.bytes = val().parse().unwrap(),
            "--verify" => a.verify = true,
            "-h" | "--help" => {
                println!("usage: quicbench [--runs 5] [--warmup 1] [--bytes 116000000] [--verify]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    assert!((1..=50).contains(&a.runs), "--runs must be 1..=50");
    assert!(a.warmup <= 10, "--warmup must be <= 10");
    assert!(a.bytes > 0 && a.bytes <= 4_000_000_000, "--bytes must be 1..=4e9");
    a
}

fn main() {
    let args = parse_args();
    let p = Arc::new(Payload::new(args.bytes));
    let mb = args.bytes as f64 / 1e6;

    type Runner = Box<dyn Fn(bool) -> RunResult>;
    let mut variants: Vec<(&str, Runner)> = Vec::new();
    {
        let p = p.clone();
        variants.push(("tcp", Box::new(move |v| run_tcp(p.clone(), v))));
    }
    #[cfg(feature = "quic")]
    {
        let certs = Arc::new(quic::make_certs());
        for (name, w) in [
            ("quic-default", quic::Windows::Default),
            ("quic-16MiB", quic::Windows::Big),
            ("quic-16MiB+sockbuf", quic::Windows::BigSockBuf),
        ] {
            let p = p.clone();
            let c = certs.clone();
            variants.push((name, Box::new(move |v| quic::run_quic(p.clone(), c.clone(), w, v))));
        }
    }

    println!(
        "N = {} payload bytes ({:.1} MB) in {} frames of <= {} B (+4 B prefix); runs = {}, warmup = {}",
        args.bytes,
        mb,
        p.n_frames(),
        FRAME_PAYLOAD,
        args.runs,
        args.warmup
    );
    // Warm-up (full payload verification on; not reported).
    for w in 0..args.warmup {
        for (name, f) in &variants {
            let r = f(true);
            println!("warmup {w} {name:<18} total {:8.1} ms (payload verified) {}", ms(r.total), r.note);
        }
    }
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); variants.len()];
    let bench0 = Instant::now();
    for i in 0..args.runs {
        for (vi, (name, f)) in variants.iter().enumerate() {
            let r = f(args.verify);
            println!(
                "run {i} {name:<18} setup {:7.3} ms  total {:8.1} ms  {:7.1} MB/s  cpu srv {:6.1} cli {:6.1} proc {:6.1} ms  {}",
                ms(r.setup),
                ms(r.total),
                mb / r.total.as_secs_f64(),
                ms(r.cpu_server),
                ms(r.cpu_client),
                ms(r.cpu_process),
                r.note
            );
            results[vi].push(r);
        }
    }
    println!("measured phase took {:.1} s", bench0.elapsed().as_secs_f64());

    println!();
    println!("| variant | figure | min | median | max |");
    println!("|---|---|---:|---:|---:|");
    for (vi, (name, _)) in variants.iter().enumerate() {
        let rs = &results[vi];
        let rows: Vec<(&str, Vec<f64>, usize)> = vec![
            ("setup ms", rs.iter().map(|r| ms(r.setup)).collect(), 3),
            ("total ms", rs.iter().map(|r| ms(r.total)).collect(), 1),
            ("throughput MB/s", rs.iter().map(|r| mb / r.total.as_secs_f64()).collect(), 1),
            ("CPU ms/MB sender", rs.iter().map(|r| ms(r.cpu_server) / mb).collect(), 3),
            ("CPU ms/MB receiver", rs.iter().map(|r| ms(r.cpu_client) / mb).collect(), 3),
            ("CPU ms/MB both (threads)", rs.iter().map(|r| ms(r.cpu_server + r.cpu_client) / mb).collect(), 3),
            ("CPU ms/MB process", rs.iter().map(|r| ms(r.cpu_process) / mb).collect(), 3),
        ];
        for (fig, v, prec) in rows {
            let (lo, med, hi) = stats(v);
            println!("| {name} | {fig} | {lo:.prec$} | {med:.prec$} | {hi:.prec$} |");
        }
    }
}
