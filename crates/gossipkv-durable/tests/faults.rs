//! A storage backend that fails I/O on purpose, mid-commit: the failing
//! batch reports an error (never a panic), and the file read back holds
//! every batch committed before it and either all of the failing batch or
//! nothing of it (an error after redb's commit point leaves it stored),
//! whichever write or sync failed.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use gossipkv_durable::{Batch, DataDir, Identity, FILE_NAME};
use gossipkv_storage::{Hlc, NodeId, Origin, Record, Version};
use redb::backends::FileBackend;
use redb::StorageBackend;

/// A file backend whose `write`s and `sync_data`s fail from the `fail_at`th
/// one on (counted together), once armed.
#[derive(Debug)]
struct Faulty {
    inner: FileBackend,
    armed: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    fail_at: u64,
}

impl Faulty {
    fn step(&self) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_at {
            return Err(io::Error::other(format!("injected fault at I/O call {n}")));
        }
        Ok(())
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.step()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.step()?;
        self.inner.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.step()?;
        self.inner.write(offset, data)
    }
}

fn me() -> Identity {
    Identity::new("prod", "node-a")
}

fn record(key: &str, value: &str, seq: u64) -> Record {
    Record {
        key: key.into(),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        version: Version {
            hlc: Hlc::new(1_767_225_600_000 + seq, 0),
            node: NodeId::new("node-a"),
            generation: 1,
            seq,
        },
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    }
}

/// Batch `n`: `size` keys of its own and an overwrite of key `shared`,
/// and the watermark over all of them.
fn batch(n: u64, size: u64) -> Batch {
    let mut records: Vec<Record> = (0..size)
        .map(|i| record(&format!("b{n}-{i:03}"), "v", n * 1000 + i + 1))
        .collect();
    records.push(record(
        "shared",
        &format!("from batch {n}"),
        n * 1000 + size + 1,
    ));
    Batch {
        records,
        marks: vec![(Origin::new("node-a", 1), n * 1000 + size + 1, 0)],
        ..Batch::default()
    }
}

/// Commits batches 0 and 1, then arms the fault and tries batch 2 (and 3):
/// returns whether batch 2 failed.
fn run(dir: &Path, fail_at: u64, size: u64) -> bool {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(FILE_NAME))
        .unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let backend = Faulty {
        inner: FileBackend::new(file).unwrap(),
        armed: armed.clone(),
        calls: Arc::new(AtomicU64::new(0)),
        fail_at,
    };
    let mut data = DataDir::open_with_backend(&dir.join(FILE_NAME), backend, &me()).unwrap();
    data.persist(&batch(0, size)).unwrap();
    data.persist(&batch(1, size)).unwrap();
    armed.store(true, Ordering::SeqCst);
    let failed = data.persist(&batch(2, size)).is_err();
    if failed {
        assert!(
            data.persist(&batch(3, size)).is_err(),
            "a failing disk keeps failing"
        );
    }
    failed
}

#[test]
fn a_commit_cut_by_an_io_error_leaves_the_last_good_one() {
    // Small batches go through the write-ahead log, large ones (above
    // LOG_BATCH_MAX) straight to the records table.
    for size in [50, gossipkv_durable::LOG_BATCH_MAX as u64 + 50] {
        faults_at_every_call(size);
    }
}

fn faults_at_every_call(size: u64) {
    let (mut failures, mut absent) = (0, 0);
    for fail_at in 0..40 {
        let tmp = tempfile::tempdir().unwrap();
        let failed = run(tmp.path(), fail_at, size);
        failures += usize::from(failed);
        let loaded = DataDir::open(tmp.path(), &me())
            .unwrap_or_else(|e| panic!("fault at call {fail_at}: cannot reopen: {e}"))
            .load()
            .unwrap_or_else(|e| panic!("fault at call {fail_at}: cannot read back: {e}"));
        // Batch 2 is there whole, or not at all.
        let per = size as usize;
        let last: u64 = if loaded.records.len() > 2 * per + 1 {
            2
        } else {
            1
        };
        assert!(failed || last == 2, "fault at call {fail_at}");
        absent += usize::from(last == 1);
        let expected = per * (last + 1) as usize + 1;
        assert_eq!(
            loaded.records.len(),
            expected,
            "fault at call {fail_at}: batches 0..={last} and nothing else"
        );
        let shared = loaded.records.iter().find(|r| &*r.key == "shared").unwrap();
        assert_eq!(
            shared.value.as_deref(),
            Some(format!("from batch {last}").as_bytes()),
            "fault at call {fail_at}"
        );
        assert_eq!(
            loaded.marks,
            vec![(Origin::new("node-a", 1), last * 1000 + size + 1, 0)],
            "fault at call {fail_at}: the watermark of the last good batch"
        );
    }
    assert!(failures >= 3, "the faults hit commits: {failures}");
    assert!(absent >= 3, "faults before the commit point: {absent}");
}
