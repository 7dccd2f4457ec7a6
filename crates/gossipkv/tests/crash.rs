//! The crash loop: a child process writes with `Durability::Sync` from two
//! threads and reports every acknowledged write; the parent kills it with
//! SIGKILL at a random moment (or lets it stop cleanly now and then),
//! reads the data dir, and checks that every acknowledged write is there
//! (or a newer version of its key) and that no sequence number of any
//! generation was given to two writes.
//!
//! `GOSSIPKV_CRASH_CYCLES` sets the number of cycles (default 12);
//! `cargo xtask crash --cycles N` runs more. `GOSSIPKV_CRASH_SEED` replays
//! one run's choices.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gossipkv::{Durability, GossipKv};
use gossipkv_durable::{DataDir, Identity};
use gossipkv_storage::{Hlc, NodeId, Version};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Set in the child: the data dir it writes to.
const CHILD_DIR: &str = "GOSSIPKV_CRASH_CHILD_DIR";
/// Set in the child: stop cleanly after this many acknowledged writes.
const CHILD_CLEAN_AFTER: &str = "GOSSIPKV_CRASH_CHILD_CLEAN_AFTER";
/// Writer threads in the child (group commit shares their commits).
const WRITERS: usize = 2;
/// Keys each writer cycles through, so later writes overwrite earlier ones.
const KEYS_PER_WRITER: usize = 40;
/// Set in the child: register an ephemeral key, say so, and wait to be
/// killed (instead of the write loop).
const CHILD_EPHEMERAL: &str = "GOSSIPKV_CRASH_CHILD_EPHEMERAL";
/// Longest a cycle may take before the parent gives up on the child.
const CYCLE_LIMIT: Duration = Duration::from_secs(30);

/// An acknowledged write: key, value, and the version it got.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    version: Version,
}

/// Not a test of its own: the body of the child process the crash loop
/// starts (this test binary, run again with [`CHILD_DIR`] set). Without
/// that variable it returns at once.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let clean_after: Option<usize> = std::env::var(CHILD_CLEAN_AFTER)
        .ok()
        .and_then(|s| s.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let kv = rt
        .block_on(open(Path::new(&dir)))
        .expect("the child's node starts");
    if std::env::var(CHILD_EPHEMERAL).is_ok() {
        kv.set_ephemeral("svc/crash", "up".into()).unwrap();
        kv.set("plain", "kept".into()).unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "registered {}", kv.generation()).unwrap();
        out.flush().unwrap();
        drop(out);
        // Until the parent's SIGKILL.
        std::thread::sleep(CYCLE_LIMIT);
        return;
    }
    let run = kv.generation();
    let (tx, rx) = mpsc::channel::<String>();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (kv, tx) = (kv.clone(), tx.clone());
            std::thread::spawn(move || {
                for n in 0.. {
                    let key = format!("w{w}-k{:02}", n % KEYS_PER_WRITER);
                    let value = format!("{run}-{w}-{n}");
                    if let Err(e) = kv.set(&key, value.clone()) {
                        // Expected once a clean stop closed the node; said
                        // on stderr so that an early failure is diagnosable.
                        eprintln!("crash child: writer {w} stops: set {key}: {e}");
                        return;
                    }
                    let v = kv
                        .snapshot()
                        .into_iter()
                        .find(|r| *r.key == *key)
                        .expect("a key just written is held")
                        .version;
                    let line = format!(
                        "ack {key} {value} {} {} {}",
                        v.hlc.as_u64(),
                        v.generation,
                        v.seq
                    );
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut out = std::io::stdout().lock();
    for (acked, line) in rx.iter().enumerate() {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
        if clean_after.is_some_and(|n| acked + 1 >= n) {
            break;
        }
    }
    drop(rx);
    // A clean stop: writers still running get an error and end.
    rt.block_on(kv.shutdown()).expect("clean shutdown");
    for w in writers {
        let _ = w.join();
    }
    writeln!(out, "stopped").unwrap();
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut f = line.strip_prefix("ack ")?.split(' ');
    let key = f.next()?.to_string();
    let value = f.next()?.to_string();
    let hlc: u64 = f.next()?.parse().ok()?;
    let generation: u64 = f.next()?.parse().ok()?;
    let seq: u64 = f.next()?.parse().ok()?;
    let version = Version {
        hlc: Hlc::from_u64(hlc),
        node: NodeId::new("crash"),
        generation,
        seq,
    };
    Some(Ack {
        key,
        value,
        version,
    })
}

/// Runs one child until it has acknowledged `stop_at` writes, then kills
/// it (or, when `clean`, lets it stop by itself there). Returns its acks.
fn run_child(dir: &Path, stop_at: usize, clean: bool) -> Vec<Ack> {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "crash_child_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_DIR, dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if clean {
        cmd.env(CHILD_CLEAN_AFTER, stop_at.to_string());
    }
    let mut child = cmd.spawn().expect("the child starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut acks = Vec::new();
    let mut stopped = false;
    while started.elapsed() < CYCLE_LIMIT {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line == "stopped" => stopped = true,
            Ok(line) => acks.extend(parse_ack(&line)),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if !clean && acks.len() >= stop_at {
            break;
        }
    }
    if !clean {
        child.kill().expect("SIGKILL the child");
    }
    let status = child.wait().expect("the child ends");
    let _ = reader.join();
    acks.extend(rx.try_iter().filter_map(|l| parse_ack(&l)));
    if clean {
        assert!(
            stopped && status.success(),
            "the child stops cleanly: {status}"
        );
    }
    assert!(
        acks.len() >= stop_at.min(1),
        "the child acknowledged nothing in {CYCLE_LIMIT:?} ({status})"
    );
    acks
}

/// The node every run starts on `dir`.
async fn open(dir: &Path) -> Result<GossipKv<String, String>, gossipkv::Error> {
    GossipKv::<String, String>::builder()
        .node_id("crash")
        .cluster_id("crash")
        .data_dir(dir)
        .durability(Durability::Sync)
        .build()
        .await
}

#[test]
fn a_killed_runs_ephemeral_keys_do_not_come_back_with_its_data() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &dir)
        .env(CHILD_EPHEMERAL, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the child starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let registered = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("registered ")
                .map(|(_, g)| g.trim().to_owned())
        })
        .expect("the child registers");
    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();
    // On disk: the registration, as the killed run left it.
    let disk = stored(&dir);
    assert_eq!(disk["svc/crash"].0.as_deref(), Some("up"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kv = open(&dir).await.unwrap();
        assert_ne!(
            kv.generation().to_string(),
            registered,
            "a crash takes a new generation"
        );
        // The run that owned it is over: gone, for good, on disk too.
        assert_eq!(kv.get("svc/crash").unwrap(), None);
        assert_eq!(kv.get("plain").unwrap().as_deref(), Some("kept"));
        assert_eq!(kv.len(), 1);
        kv.shutdown().await.unwrap();
    });
    assert_eq!(
        stored(&dir)["svc/crash"].0,
        None,
        "the removal reached the disk"
    );
}

/// The data dir's records by key, read as the next start would.
fn stored(dir: &Path) -> HashMap<String, (Option<String>, Version)> {
    let data = DataDir::open(dir, &Identity::new("crash", "crash")).expect("the data dir opens");
    data.load()
        .expect("the data dir reads back")
        .records
        .into_iter()
        .map(|r| {
            let value = r.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            (r.key.to_string(), (value, r.version))
        })
        .collect()
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let cycles: usize = std::env::var("GOSSIPKV_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("GOSSIPKV_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash loop: {cycles} cycles, GOSSIPKV_CRASH_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("data");
    let mut latest: HashMap<String, Ack> = HashMap::new();
    let mut seqs: HashMap<(u64, u64), (String, String)> = HashMap::new();
    let (mut kills, mut acked) = (0, 0);
    for cycle in 0..cycles {
        let clean = rng.random_ratio(1, 4);
        let stop_at = rng.random_range(1..=200);
        let acks = run_child(&dir, stop_at, clean);
        kills += usize::from(!clean);
        acked += acks.len();
        for a in acks {
            let id = (a.version.generation, a.version.seq);
            let write = (a.key.clone(), a.value.clone());
            if let Some(earlier) = seqs.insert(id, write.clone()) {
                assert_eq!(
                    earlier, write,
                    "cycle {cycle}: sequence number {id:?} was given to two writes (seed {seed})"
                );
            }
            let newer = latest.get(&a.key).is_none_or(|old| a.version > old.version);
            if newer {
                latest.insert(a.key.clone(), a);
            }
        }
        let disk = stored(&dir);
        for (key, ack) in &latest {
            let Some((value, version)) = disk.get(key) else {
                panic!("cycle {cycle}: acknowledged write {ack:?} is lost (seed {seed})");
            };
            assert!(
                *version >= ack.version,
                "cycle {cycle}: {key} went back from {:?} to {version:?} (seed {seed})",
                ack.version
            );
            if *version == ack.version {
                assert_eq!(value.as_deref(), Some(ack.value.as_str()), "cycle {cycle}");
            }
        }
    }
    eprintln!(
        "crash loop: {cycles} cycles ({kills} SIGKILLs), {acked} acknowledged writes, none lost"
    );
    assert!(acked > 0);
}
