//! The `durable` scenario: what a data dir costs writers, how fast a node
//! with a million keys on disk restarts, and how much disk a key takes.
//!
//! Every node here is local-only (no bind address): the figures are the
//! disk's and the persister's, not the network's. Data dirs live in a
//! temporary directory beside `--out` (the target directory: a real disk,
//! not a tmpfs).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gossipkv::{Durability, GossipKv};
use gossipkv_benches::{KEY_LEN, VALUE_LEN};

use crate::memory::run_probe_with;
use crate::options::RESTART_PROBE;
use crate::report::{progress, Report};

/// The node type of this scenario.
type Kv = GossipKv<String, Vec<u8>>;

/// Keys on disk for the restart figure (full mode; quick mode uses a fifth).
const RESTART_KEYS: usize = 1_000_000;

/// Writes timed per write-throughput figure in memory and interval mode.
const MEMORY_WRITES: usize = 200_000;

/// Runs the scenario; the figures go to `report`.
pub(crate) async fn scenario(
    report: &mut Report,
    quick: bool,
    base: &Path,
    t0: Instant,
) -> Result<()> {
    std::fs::create_dir_all(base).with_context(|| format!("cannot create {}", base.display()))?;
    let tmp = tempfile::tempdir_in(base).context("cannot create a temporary data dir")?;
    let window = if quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(3)
    };

    let fsyncs = fsync_rate(tmp.path(), window)?;
    progress(t0, format!("durable: this disk does {fsyncs:.0} fsyncs/s"));
    report.put("fsync_per_s", fsyncs);

    sync_mode(report, tmp.path(), fsyncs, quick, t0).await?;

    let memory = GossipKv::<String, Vec<u8>>::builder().build().await?;
    let in_memory = counted_writes(&memory, MEMORY_WRITES)?;
    let kv = node(
        &tmp.path().join("interval"),
        Durability::Interval(Duration::from_millis(100)),
    )
    .await?;
    let interval = counted_writes(&kv, MEMORY_WRITES)?;
    kv.shutdown().await?;
    progress(
        t0,
        format!(
            "durable: Interval(100 ms) mode {interval:.0} sets/s, in memory {in_memory:.0} sets/s: ratio {:.2}",
            interval / in_memory
        ),
    );
    report.put("interval_set_ops", interval);
    report.put("memory_facade_set_ops", in_memory);
    report.put("interval_set_ratio", interval / in_memory);

    let keys = if quick {
        RESTART_KEYS / 5
    } else {
        RESTART_KEYS
    };
    restart(report, &tmp.path().join("restart"), keys, t0).await
}

/// `Sync` mode with one writer thread and with four, in alternating
/// slices (this disk's speed drifts: each slice of four threads is
/// compared with the slice of one just before it; the median ratio is
/// the group-commit figure). Quick runs take five short pairs: with three,
/// thirteen runs of one build ranged 2.57-3.69; with five, ten ranged
/// 2.98-3.61.
async fn sync_mode(
    report: &mut Report,
    base: &Path,
    fsyncs: f64,
    quick: bool,
    t0: Instant,
) -> Result<()> {
    let (rounds, slice) = if quick {
        (5, Duration::from_millis(300))
    } else {
        (7, Duration::from_millis(500))
    };
    let one = node(&base.join("sync1"), Durability::Sync).await?;
    let four = node(&base.join("sync4"), Durability::Sync).await?;
    let (mut ops1, mut ops4, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let a = timed_writes(&one, 1, slice, round)?;
        let b = timed_writes(&four, 4, slice, round)?;
        ops1.push(a);
        ops4.push(b);
        ratios.push(b / a);
    }
    let stats = four.durable_stats().context("a durable node has stats")?;
    one.shutdown().await?;
    four.shutdown().await?;
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(0.0, f64::max);
    let (ops1, ops4, ratio) = (median(ops1), median(ops4), median(ratios));
    let per_commit = stats.records_written as f64 / stats.commits.max(1) as f64;
    progress(
        t0,
        format!(
            "durable: Sync mode: 1 writer {ops1:.0} sets/s ({:.2} per fsync), 4 writers {ops4:.0} sets/s \
             ({:.2} per fsync, {per_commit:.2} writes per commit); median ratio 4/1 {ratio:.2} \
             (pairs {low:.2}-{high:.2})",
            ops1 / fsyncs,
            ops4 / fsyncs
        ),
    );
    report.put("durable_set_ops_1t", ops1);
    report.put("durable_set_ops_4t", ops4);
    report.put("durable_set_per_fsync_1t", ops1 / fsyncs);
    report.put("durable_set_per_fsync_4t", ops4 / fsyncs);
    report.put("durable_group_commit_ratio_4t", ratio);
    report.put("durable_group_commit_ratio_4t_low", low);
    report.put("durable_group_commit_ratio_4t_high", high);
    report.put("durable_writes_per_commit_4t", per_commit);
    Ok(())
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A local-only node with a data dir.
async fn node(dir: &Path, mode: Durability) -> Result<Kv> {
    Ok(GossipKv::<String, Vec<u8>>::builder()
        .node_id("bench")
        .data_dir(dir)
        .durability(mode)
        .build()
        .await?)
}

/// The key of write `i` by writer `w`: [`KEY_LEN`] bytes.
fn key(w: usize, i: usize) -> String {
    format!("w{w}-{i:0width$}", width = KEY_LEN - 3)
}

/// Small writes and fsyncs of one file, for `window`: fsyncs per second.
fn fsync_rate(dir: &Path, window: Duration) -> Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .context("cannot create the fsync probe")?;
    let block = [0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// `threads` threads set keys for `window`: sets per second. Keys of
/// round `round` are new keys.
fn timed_writes(kv: &Kv, threads: usize, window: Duration, round: usize) -> Result<f64> {
    let value = vec![7u8; VALUE_LEN];
    let start = Instant::now();
    let counts: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (kv, value) = (kv.clone(), value.clone());
                s.spawn(move || {
                    let mut i = 0;
                    while start.elapsed() < window {
                        kv.set(key(w, round * 10_000_000 + i), value.clone())?;
                        i += 1;
                    }
                    Ok(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer panicked")))
            })
            .collect()
    });
    let mut total = 0;
    for c in counts {
        total += c?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `n` sets from this thread: sets per second.
fn counted_writes(kv: &Kv, n: usize) -> Result<f64> {
    let value = vec![7u8; VALUE_LEN];
    let start = Instant::now();
    for i in 0..n {
        kv.set(key(0, i), value.clone())?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Fills a data dir with `keys` keys, stops cleanly, and times a restart
/// until the last key reads back; also the file's size per key.
async fn restart(report: &mut Report, dir: &Path, keys: usize, t0: Instant) -> Result<()> {
    let kv = node(dir, Durability::Interval(Duration::from_millis(200))).await?;
    let fill = Instant::now();
    let value = vec![7u8; VALUE_LEN];
    for i in 0..keys {
        kv.set(key(0, i), value.clone())?;
    }
    kv.shutdown().await?;
    drop(kv);
    let file = dir.join(gossipkv_durable::FILE_NAME);
    let (len, held) = file_bytes(&file)?;
    let per_key = |bytes: f64| bytes / keys as f64 / (KEY_LEN + VALUE_LEN) as f64;
    progress(
        t0,
        format!(
            "durable: {keys} keys written and committed in {:.1} s; file {:.1} MB on disk, {:.2}x key+value \
             ({:.1} MB long, {:.2}x: redb extends its file ahead of use)",
            fill.elapsed().as_secs_f64(),
            held / 1e6,
            per_key(held),
            len / 1e6,
            per_key(len),
        ),
    );
    // A restart is a new process: time it in one (this process's
    // allocator still holds the pieces of the node just dropped), and
    // again in this process, for comparison.
    let last = key(0, keys - 1);
    let ms = restart_in_new_process(dir, keys, &last)?;
    let in_process = timed_restart(dir, keys, &last).await?;
    progress(
        t0,
        format!(
            "durable: restart with {keys} keys on disk: {ms:.0} ms until reads are served \
             ({in_process:.0} ms restarted within the process that wrote them)"
        ),
    );
    let suffix = if keys == RESTART_KEYS {
        "1m".to_string()
    } else {
        format!("{}k", keys / 1000)
    };
    report.put(format!("restart_ms_{suffix}"), ms);
    report.put(format!("restart_in_process_ms_{suffix}"), in_process);
    report.put(format!("disk_bytes_per_key_{suffix}"), per_key(held));
    report.put(format!("disk_file_len_per_key_{suffix}"), per_key(len));
    let shuffled = dir.with_extension("shuffled");
    let (len, held, count, last) = shuffled_fill(&shuffled, keys).await?;
    let ms = restart_in_new_process(&shuffled, count, &last)?;
    progress(
        t0,
        format!(
            "durable: {keys} keys written in no order: file {held:.2}x key+value on disk ({len:.2}x long); \
             restart {ms:.0} ms until reads are served"
        ),
    );
    report.put(format!("disk_bytes_per_key_shuffled_{suffix}"), held);
    report.put(format!("disk_file_len_per_key_shuffled_{suffix}"), len);
    report.put(format!("restart_ms_shuffled_{suffix}"), ms);
    Ok(())
}

/// [`timed_restart`] in a fresh process of this binary (the restart
/// probe).
fn restart_in_new_process(dir: &Path, keys: usize, last: &str) -> Result<f64> {
    let keys = keys.to_string();
    let args = [
        dir.as_os_str(),
        std::ffi::OsStr::new(&keys),
        std::ffi::OsStr::new(last),
    ];
    match run_probe_with(RESTART_PROBE, &args, "restart")?[..] {
        [ms] => Ok(ms),
        ref other => anyhow::bail!("restart probe printed {other:?}"),
    }
}

/// Starts a node from `dir` (which holds `keys` keys, `last` among them):
/// milliseconds until `last` reads back, after which it checks every key
/// is there and shuts the node down.
async fn timed_restart(dir: &Path, keys: usize, last: &str) -> Result<f64> {
    let start = Instant::now();
    let kv = node(dir, Durability::Sync).await?;
    let last = kv.get(last)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    ensure!(last.is_some(), "the last key is missing after the restart");
    ensure!(
        kv.len() == keys,
        "{} keys after the restart, not {keys}",
        kv.len()
    );
    kv.shutdown().await?;
    Ok(ms)
}

/// The body of the hidden `--restart-probe DIR KEYS` run: times a restart
/// from `dir` ([`timed_restart`]) in this fresh process and prints the
/// milliseconds.
pub(crate) fn restart_probe(dir: &Path, keys: usize, last: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let ms = runtime.block_on(timed_restart(dir, keys, last))?;
    println!("{ms}");
    Ok(())
}

/// The file's length and its bytes on disk ([`file_bytes`]) per key, over
/// key and value bytes, the keys held and the last key written, of a data
/// dir filled
/// with about `keys` keys in no particular order (a multiplicative hash of
/// their number: keys written in order fill redb's pages and the records'
/// blocks better than most applications' keys do).
async fn shuffled_fill(dir: &Path, keys: usize) -> Result<(f64, f64, usize, String)> {
    let kv = node(dir, Durability::Interval(Duration::from_millis(200))).await?;
    let value = vec![7u8; VALUE_LEN];
    let digits = 10u64.pow((KEY_LEN - 3) as u32);
    let mut last = String::new();
    for i in 0..keys as u64 {
        let n = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % digits;
        last = key(0, n as usize);
        kv.set(last.clone(), value.clone())?;
    }
    let held = kv.len();
    kv.shutdown().await?;
    drop(kv);
    let (len, bytes) = file_bytes(&dir.join(gossipkv_durable::FILE_NAME))?;
    let per_key = |b: f64| b / held as f64 / (KEY_LEN + VALUE_LEN) as f64;
    Ok((per_key(len), per_key(bytes), held, last))
}

/// A file's length and the bytes the disk holds for it (its allocated
/// blocks, as `du` counts them). redb extends its file ahead of the pages
/// it uses, and on file systems with sparse files (ext4, XFS, btrfs) the
/// part never written takes no disk space: the length overstates the
/// disk used.
fn file_bytes(file: &Path) -> Result<(f64, f64)> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(file).with_context(|| format!("cannot stat {}", file.display()))?;
    Ok((meta.len() as f64, (meta.blocks() * 512) as f64))
}
