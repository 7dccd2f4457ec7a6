//! Durable mode: the node's data directory, loaded at start and kept up to
//! date by a thread of its own.
//!
//! The store tells a [`Persister`] the key of every change (local writes,
//! merged records that win, keys dropped by re-synchronisation, collected
//! tombstones). A commit takes the watermarks first, then the keys marked so
//! far, reads each key's record as the store holds it then (or its absence),
//! and writes them with the watermarks in one redb transaction. A watermark
//! therefore never lands on disk ahead of a record it covers (invariant W on
//! disk): every record it covers was marked before it rose.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState as FastState;
use gossipkv_durable::{Batch, DataDir, Identity, WriteError};
use gossipkv_storage::{Hlc, Key, NodeId, Origin, Store, StoreConfig};
use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::{debug, error, info, warn};

use crate::error::{DataDirError, Error};

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

/// How often the write-ahead log of small commits is folded into the
/// records table, at most ...
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// ... or once it holds this many entries.
const FOLD_ENTRIES: u64 = 8192;

/// Entries of the dirty list from which its repeats are removed (at each
/// power of two), so that it stays bounded by the keys that changed.
const DIRTY_DEDUP: usize = 1 << 20;

/// In `Sync` mode, how often the thread commits what peers sent (writers
/// commit their own writes before they return).
const SYNC_SWEEP: Duration = Duration::from_millis(10);

/// In `Sync` mode, how long a commit waits at most for the writers under
/// way to mark their change, so that it takes them all (see
/// [`Persister::wait_durable`]). A small part of a commit: a disk flush
/// takes a few hundred microseconds on the fastest disks.
const GATHER: Duration = Duration::from_micros(200);

/// In `Sync` mode, how long a writer waiting for another's commit yields
/// before it sleeps: a sleeping thread takes 100 µs or more to wake on a
/// busy or virtual machine, as long as a fast disk's flush, and every
/// writer the next commit waits for pays it (the same trade as RocksDB's
/// write thread, which yields for up to 100 µs before it blocks).
const SPIN: Duration = Duration::from_millis(1);

/// When a node with a data directory makes writes durable. See the README's
/// "Durability" section for what each mode promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// [`set`](crate::GossipKv::set) and [`delete`](crate::GossipKv::delete)
    /// return only once the write is committed to disk (written and
    /// flushed with fsync). Writers that wait at the same time share one
    /// commit (group commit), so many threads writing at once cost about
    /// one commit per disk round trip, not one each. A crash loses no write
    /// that returned `Ok`. The default: a node given a data directory is
    /// asked to keep its data, and `Ok` should mean kept.
    ///
    /// The calling thread blocks for the commit (a few milliseconds on most
    /// disks): from async code, call it where blocking is acceptable (for
    /// example `tokio::task::spawn_blocking`), or choose `Interval`.
    Sync,
    /// `set` and `delete` return at once; what changed is committed every
    /// interval. A crash loses at most the writes of the last interval
    /// (and of the commit under way); they may still live on the peers
    /// they reached, and come back from them.
    Interval(Duration),
}

/// Counters of a node's data directory ([`GossipKv::durable_stats`](crate::GossipKv::durable_stats)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableStats {
    /// Commits made (each one redb transaction, flushed to disk).
    pub commits: u64,
    /// Records written by them (a key changed many times between two
    /// commits is written once).
    pub records_written: u64,
    /// Rows removed (collected tombstones, keys dropped by
    /// re-synchronisation).
    pub rows_removed: u64,
    /// Commits that failed (tried again; see the logs).
    pub commit_failures: u64,
    /// Changes marked but not committed yet.
    pub pending: u64,
}

/// What the persister's thread and the writers share.
#[derive(Debug, Default)]
struct State {
    /// Keys changed since the last commit began, in the order they
    /// changed, repeats included: appending is all a write pays; the
    /// commit removes the repeats.
    dirty: Vec<Key>,
    /// Changes marked so far (a writer's ticket).
    marked: u64,
    /// Changes covered by a finished commit.
    committed: u64,
    /// The tickets of the writers inside [`Persister::wait_durable`] (one
    /// per writer thread: as many as the threads writing at once).
    waiting: Vec<u64>,
    /// Commits that failed so far, and the last failure.
    failures: u64,
    last_error: Option<String>,
    /// Set when the node stops: the last commit, then a clean stop at this
    /// membership incarnation.
    stop: Option<u64>,
    /// Set when the thread ended (or never started): nothing more is
    /// committed.
    finished: bool,
    commits: u64,
    records_written: u64,
    rows_removed: u64,
}

/// The data directory's writer: commits what changed, from writers
/// waiting for their write (`Sync` mode) and from a thread of its own.
#[derive(Debug)]
pub(crate) struct Persister {
    state: Mutex<State>,
    /// Wakes the thread (a stop).
    work: Condvar,
    /// Wakes writers waiting for a commit.
    done: Condvar,
    /// Writers under way in `Sync` mode (see [`Persister::begin`]).
    writers: AtomicUsize,
    /// `State::committed`, readable without the lock (see
    /// [`Persister::watch_commit`]); set with it, under the lock.
    committed_hint: AtomicU64,
    mode: Durability,
    file: PathBuf,
    /// The store (weak: the store's observers hold the persister).
    store: Weak<Store>,
    /// The directory, locked for a commit; `None` once closed.
    data: Mutex<Option<DataDir>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A writer under way in `Sync` mode, from [`Persister::begin`] to the end
/// of [`Persister::wait_durable`] (or until dropped).
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    persister: &'a Persister,
    /// Whether this writer is counted (`Sync` mode).
    counted: bool,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.persister.writers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What a data directory gave the node at start.
pub(crate) struct Opened {
    /// The store, filled with the stored records and marks.
    pub(crate) store: Arc<Store>,
    /// The generation this run uses.
    pub(crate) generation: u64,
    /// The membership incarnation to start at.
    pub(crate) incarnation: u64,
    /// The directory's writer, running.
    pub(crate) persister: Arc<Persister>,
}

/// Opens `dir` for node `node` of cluster `cluster` and loads it into a new
/// store. After a clean stop the node keeps its generation (its sequence
/// numbers go on) and starts above its last incarnation; after a crash, or
/// the first time, it takes `fresh_generation`, and keeps the data.
pub(crate) fn open(
    dir: &Path,
    cluster: &str,
    node: &NodeId,
    fresh_generation: u64,
    config: StoreConfig,
    mode: Durability,
    clock_limit_ms: u64,
) -> Result<Opened, Error> {
    let t0 = Instant::now();
    let mut data = DataDir::open(dir, &Identity::new(cluster, node.as_str()))?;
    let meta = *data.meta();
    let loaded = data.load()?;
    check_clock(data.file(), &meta, &loaded, clock_limit_ms)?;
    // A stored watermark at the end of the sequence space (a damaged or
    // forged file) leaves no sequence number to go on with.
    let exhausted = loaded
        .marks
        .iter()
        .any(|(o, w, _)| o.node == *node && o.generation == meta.generation && *w >= u64::MAX - 1);
    let resumed = !meta.created && meta.clean && meta.generation != 0 && !exhausted;
    let (generation, incarnation) = if resumed {
        (meta.generation, meta.incarnation.saturating_add(1))
    } else {
        // Above the last run's: generations of one node only grow.
        (fresh_generation.max(meta.generation.saturating_add(1)), 0)
    };
    let store = Arc::new(Store::with_config(
        Origin::new(node.clone(), generation),
        config,
    ));
    store.clock().observe(Hlc::from_u64(meta.hlc_ceiling));
    data.start(generation).map_err(persist_error)?;
    // The persister first: keys a memory budget evicts while the stored
    // records are merged must reach the disk too.
    let persister = Persister::spawn(&store, data, mode);
    let records = loaded.records.len();
    store.reserve_keys(records);
    store.merge_batch(loaded.records);
    store.restore_marks(&loaded.marks);
    // Retired origins stay retired (if, against expectation, a record of
    // one was stored, it stays active: the store checks).
    store.retire_origins(&loaded.retired);
    let how = match (meta.created, resumed) {
        (true, _) => "new data dir",
        (false, true) => "clean restart: generation kept",
        (false, false) => "restart after a crash: new generation",
    };
    info!(
        dir = %dir.display(), records, origins = loaded.marks.len(), generation,
        elapsed_ms = t0.elapsed().as_millis() as u64, "{how}"
    );
    Ok(Opened {
        store,
        generation,
        incarnation,
        persister,
    })
}

/// Compacts the data dir when its file takes well more disk than its
/// data ([`DataDir::compact_if_bloated`]); a compaction that fails leaves
/// the file as it was and is only reported.
fn compact(data: &mut DataDir) {
    let t0 = Instant::now();
    match data.compact_if_bloated() {
        Ok(true) => info!(
            file = %data.file().display(),
            bytes = std::fs::metadata(data.file()).map_or(0, |m| m.len()),
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "data dir compacted"
        ),
        Ok(false) => {}
        Err(e) => warn!(file = %data.file().display(), error = %e.message,
            "cannot compact the data dir (it is kept as it was)"),
    }
}

/// Refuses a directory whose stored timestamps lead this node's wall clock
/// by more than the clock drift allows (`clock_limit_ms`: now plus
/// `max_clock_drift`): loading them would move the clock there, as a
/// forged datagram may not.
fn check_clock(
    file: &Path,
    meta: &gossipkv_durable::Meta,
    loaded: &gossipkv_durable::Loaded,
    clock_limit_ms: u64,
) -> Result<(), Error> {
    // `what` is only formatted for the record that fails: a million
    // `format!`s cost a restart tens of milliseconds.
    let ahead = |what: &dyn Fn() -> String, hlc: Hlc| -> Result<(), Error> {
        if hlc.physical_ms() <= clock_limit_ms {
            return Ok(());
        }
        let what = what();
        Err(Error::DataDir {
            source: DataDirError::Corrupt {
                path: file.to_path_buf(),
                message: format!(
                    "{what} is stamped {} ms, beyond this clock plus max_clock_drift ({clock_limit_ms} ms); \
                     if this machine's clock went back, set it right or raise max_clock_drift",
                    hlc.physical_ms()
                ),
            },
        })
    };
    ahead(
        &|| "the stored clock ceiling".into(),
        Hlc::from_u64(meta.hlc_ceiling),
    )?;
    for r in &loaded.records {
        ahead(&|| format!("record {:?}", &*r.key), r.version.hlc)?;
    }
    Ok(())
}

impl Persister {
    /// Starts the thread that keeps `data` up to date with `store`, and
    /// installs the store's collection observer. The caller installs
    /// [`Persister::mark`] in the store's change observer.
    pub(crate) fn spawn(store: &Arc<Store>, data: DataDir, mode: Durability) -> Arc<Persister> {
        let p = Arc::new(Persister {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            writers: AtomicUsize::new(0),
            committed_hint: AtomicU64::new(0),
            mode,
            file: data.file().to_path_buf(),
            store: Arc::downgrade(store),
            data: Mutex::new(Some(data)),
            thread: Mutex::new(None),
        });
        let marker = p.clone();
        store.set_collect_observer(Arc::new(move |key: &str| marker.mark(key)));
        let runner = p.clone();
        let thread = std::thread::Builder::new()
            .name("gossipkv-persist".into())
            .spawn(move || runner.run());
        match thread {
            Ok(t) => *p.thread.lock() = Some(t),
            // Without the thread nothing is committed in the background:
            // say so now; writers in `Sync` mode still commit themselves.
            Err(e) => {
                error!(error = %e, "cannot start the data dir thread: remote writes will not be persisted")
            }
        }
        p
    }

    /// Notes that `key` changed. Called from the store's observers, under
    /// a shard lock: quick, and never calls back into the store.
    pub(crate) fn mark(&self, key: &str) {
        let mut s = self.state.lock();
        s.dirty.push(Key::from(key));
        s.marked += 1;
        if s.dirty.len() >= DIRTY_DEDUP && s.dirty.len().is_power_of_two() {
            // Commits are failing or far apart: keep one entry per key.
            s.dirty.sort_unstable();
            s.dirty.dedup();
        }
    }

    /// When writes reach the disk.
    pub(crate) fn mode(&self) -> Durability {
        self.mode
    }

    /// The counters so far.
    pub(crate) fn stats(&self) -> DurableStats {
        let s = self.state.lock();
        DurableStats {
            commits: s.commits,
            records_written: s.records_written,
            rows_removed: s.rows_removed,
            commit_failures: s.failures,
            pending: s.marked - s.committed.min(s.marked),
        }
    }

    /// Notes that a writer begins a write that it will wait for with
    /// [`Persister::wait_durable`] (in `Sync` mode; otherwise nothing).
    /// Dropping the ticket without waiting is fine (a write that failed).
    pub(crate) fn begin(&self) -> Writer<'_> {
        let counted = self.mode == Durability::Sync;
        if counted {
            self.writers.fetch_add(1, Ordering::SeqCst);
        }
        Writer {
            persister: self,
            counted,
        }
    }

    /// In `Sync` mode, returns once every change marked so far (the
    /// caller's write among them) is committed; otherwise at once.
    ///
    /// Group commit: a writer that finds no commit under way makes one
    /// itself, taking every change marked up to then (its own and other
    /// writers'); writers that arrive meanwhile wait for it, and the first
    /// of them whose change it missed makes the next. No thread hand-off
    /// sits between a write and its commit. Before it takes the batch, a
    /// commit waits (at most [`GATHER`]) for every writer under way
    /// ([`Persister::begin`]) to mark its change: writers woken by the last
    /// commit are writing again, and a commit that left them out would
    /// cost them a commit of their own.
    pub(crate) fn wait_durable(&self, writer: Writer<'_>) -> Result<(), Error> {
        if !writer.counted {
            return Ok(());
        }
        let mut s = self.state.lock();
        let ticket = s.marked;
        s.waiting.push(ticket);
        let result = self.wait_committed(&mut s, ticket);
        if let Some(i) = s.waiting.iter().position(|t| *t == ticket) {
            s.waiting.swap_remove(i);
        }
        // Leaves the writers under way with the lock held, so that a
        // commit gathering them never sees it waiting and not under way.
        drop(writer);
        result
    }

    /// The body of [`Persister::wait_durable`].
    fn wait_committed(&self, s: &mut MutexGuard<'_, State>, ticket: u64) -> Result<(), Error> {
        let failures = s.failures;
        let spin_until = Instant::now() + SPIN;
        loop {
            if s.committed >= ticket {
                return Ok(());
            }
            if s.failures != failures || s.finished {
                return Err(self.not_durable(s));
            }
            match self.data.try_lock() {
                Some(mut data) => {
                    MutexGuard::unlocked(s, || {
                        self.gather();
                        let _ = self.commit_with(&mut data);
                        drop(data);
                        self.commit_done();
                    });
                }
                // A commit is under way: watch it for a while, then sleep.
                None if Instant::now() < spin_until => {
                    MutexGuard::unlocked(s, || self.watch_commit(ticket, spin_until));
                }
                None => self.done.wait(s),
            }
        }
    }

    /// Yields, without the state lock, while the commit under way runs and
    /// has not covered `ticket`, until `until`: writers waiting for a
    /// commit do not take turns on the lock that the committing writer and
    /// the writers marking their next change need. What the watch sees is
    /// a hint: the caller checks again under the lock.
    fn watch_commit(&self, ticket: u64, until: Instant) {
        loop {
            std::thread::yield_now();
            if self.committed_hint.load(Ordering::Acquire) >= ticket
                || !self.data.is_locked()
                || Instant::now() >= until
            {
                return;
            }
        }
    }

    /// Records that the changes up to `to` are committed (under the state
    /// lock, `s`).
    fn set_committed(&self, s: &mut State, to: u64) {
        s.committed = to;
        self.committed_hint.store(to, Ordering::Release);
    }

    /// Waits, at most [`GATHER`], until every writer under way has marked
    /// a change not committed yet (a writer whose change the last commit
    /// took is about to return and write again). Yields rather than
    /// sleeps: the writers need the CPU for a few microseconds each, and
    /// the wait is shorter than a timer's.
    fn gather(&self) {
        let deadline = Instant::now() + GATHER;
        loop {
            let all_in = {
                let s = self.state.lock();
                let pending = s.waiting.iter().filter(|t| **t > s.committed).count();
                pending >= self.writers.load(Ordering::SeqCst)
            };
            if all_in || Instant::now() >= deadline {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn not_durable(&self, s: &State) -> Error {
        Error::Persist {
            path: self.file.clone(),
            message: s
                .last_error
                .clone()
                .unwrap_or_else(|| "the node stopped".into()),
        }
    }

    /// Wakes the writers waiting for a commit. Called once the data lock
    /// is released; taking the state lock first means a writer between
    /// its check and its wait cannot miss the wake-up.
    fn commit_done(&self) {
        drop(self.state.lock());
        self.done.notify_all();
    }

    /// Commits what is left, records a clean stop at `incarnation`, and
    /// waits for the thread to end. Blocks: call it off the async workers.
    pub(crate) fn stop(&self, incarnation: u64) {
        self.stop_soon(incarnation);
        let thread = self.thread.lock().take();
        match thread {
            Some(t) => {
                if t.join().is_err() {
                    error!(file = %self.file.display(), "the data dir thread panicked");
                }
            }
            // No thread (it never started): stop from here.
            None => self.close(incarnation),
        }
    }

    /// Asks the thread to commit what is left and stop cleanly, without
    /// waiting for it (a node dropped without `shutdown`).
    pub(crate) fn stop_soon(&self, incarnation: u64) {
        let mut s = self.state.lock();
        s.stop.get_or_insert(incarnation);
        self.work.notify_one();
    }

    /// The thread: commits what changed every interval ([`SYNC_SWEEP`] in
    /// `Sync` mode, where writers commit their own writes and the thread
    /// commits what peers sent), until told to stop; then commits the
    /// rest and closes the directory cleanly.
    fn run(&self) {
        let every = match self.mode {
            Durability::Sync => SYNC_SWEEP,
            Durability::Interval(every) => every,
        };
        let mut last_fold = Instant::now();
        loop {
            let stopping = {
                let mut s = self.state.lock();
                if s.stop.is_none() {
                    let _ = self.work.wait_for(&mut s, every);
                }
                s.stop
            };
            if let Some(incarnation) = stopping {
                self.close(incarnation);
                return;
            }
            let failed = {
                let mut data = self.data.lock();
                let failed = self.commit_with(&mut data).is_err();
                if let Some(d) = data.as_mut() {
                    let due = last_fold.elapsed() >= FOLD_EVERY || d.log_len() >= FOLD_ENTRIES;
                    if due && d.log_len() > 0 {
                        match d.checkpoint() {
                            Ok(_) => last_fold = Instant::now(),
                            Err(e) => warn!(file = %self.file.display(), error = %e.message,
                                "folding the write-ahead log failed; trying again later"),
                        }
                    }
                }
                failed
            };
            self.commit_done();
            if failed {
                std::thread::sleep(RETRY);
            }
        }
    }

    /// The last commit and the clean stop; then the directory is closed
    /// (its lock released) and waiting writers are told.
    fn close(&self, incarnation: u64) {
        let mut guard = self.data.lock();
        let mut ok = true;
        for attempt in 0..2 {
            match self.commit_with(&mut guard) {
                Ok(()) => break,
                Err(()) if attempt == 0 => std::thread::sleep(RETRY),
                Err(()) => ok = false,
            }
        }
        let ceiling = self
            .store
            .upgrade()
            .map_or(0, |s| s.clock().last().as_u64());
        match (guard.take(), ok) {
            (Some(mut data), true) => {
                compact(&mut data);
                match data.stop_clean(ceiling, incarnation) {
                    Ok(()) => debug!(file = %self.file.display(), "data dir closed cleanly"),
                    Err(e) => error!(file = %self.file.display(), error = %e.message,
                        "cannot record the clean stop: the next start takes a new generation"),
                }
            }
            (Some(_), false) => error!(file = %self.file.display(),
                "last commit failed: the next start takes a new generation"),
            (None, _) => {}
        }
        drop(guard);
        self.state.lock().finished = true;
        self.done.notify_all();
    }

    /// One commit into `data` (`None`: closed), with failures counted and
    /// logged.
    fn commit_with(&self, data: &mut Option<DataDir>) -> Result<(), ()> {
        let (Some(data), Some(store)) = (data.as_mut(), self.store.upgrade()) else {
            return Err(());
        };
        self.commit(&store, data).map_err(|e| {
            warn!(file = %self.file.display(), error = %e.message, "commit failed; trying again");
        })
    }

    /// One commit: watermarks first, then the keys marked up to now and
    /// their records as held now, then the floors, all in one transaction.
    fn commit(&self, store: &Store, data: &mut DataDir) -> Result<(), WriteError> {
        let before = store.marks();
        let (keys, ticket) = {
            let mut s = self.state.lock();
            if s.dirty.is_empty() && s.stop.is_none() {
                // Nothing changed: no commit (a watermark that rose alone
                // is stored with the next change, or at the stop).
                let marked = s.marked;
                self.set_committed(&mut s, marked);
                return Ok(());
            }
            (std::mem::take(&mut s.dirty), s.marked)
        };
        let mut taken = Taken {
            persister: self,
            keys: keys.into_iter().collect(),
            stored: false,
        };
        let mut batch = Batch::default();
        for key in &taken.keys {
            match store.get_record(key) {
                Some(r) => batch.records.push(r),
                None => batch.removed.push(key.clone()),
            }
        }
        // Floors after the records: a tombstone collected meanwhile raised
        // its floor before this read, so no row goes without its floor.
        let after = store.marks();
        batch.marks = before
            .into_iter()
            .map(|(origin, watermark, _)| {
                let floor = after
                    .iter()
                    .find(|(o, _, _)| *o == origin)
                    .map_or(0, |(_, _, f)| *f);
                (origin, watermark, floor)
            })
            .collect();
        batch.retired = store
            .retired_origins()
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        batch.hlc_ceiling = store.clock().last().as_u64();
        let result = data.persist(&batch);
        let mut s = self.state.lock();
        match &result {
            Ok(()) => {
                taken.stored = true;
                let committed = s.committed.max(ticket);
                self.set_committed(&mut s, committed);
                s.commits += 1;
                s.records_written += batch.records.len() as u64;
                s.rows_removed += batch.removed.len() as u64;
            }
            // Nothing was stored: `taken` gives every key back for the
            // next commit.
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e.message.clone());
            }
        }
        drop(s);
        result
    }
}

/// The keys a commit took from the dirty list. Unless the commit stored
/// them, dropping gives them back for the next commit, also when the
/// commit panics: the next commit covers their writers' tickets, and must
/// not do so without their keys.
struct Taken<'a> {
    persister: &'a Persister,
    keys: HashSet<Key, FastState>,
    stored: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.stored {
            return;
        }
        let mut s = self.persister.state.lock();
        s.dirty.extend(self.keys.drain());
        if std::thread::panicking() {
            // Writers waiting for this commit are told it failed.
            s.failures += 1;
            s.last_error = Some("a commit panicked".into());
        }
    }
}

/// A data directory write error as an [`Error`].
fn persist_error(e: WriteError) -> Error {
    Error::Persist {
        path: e.path,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persister(dir: &Path, mode: Durability) -> (Arc<Store>, Arc<Persister>) {
        let data = DataDir::open(dir, &Identity::new("c", "n")).unwrap();
        let store = Arc::new(Store::new(Origin::new("n", 1)));
        let p = Persister::spawn(&store, data, mode);
        (store, p)
    }

    /// A writer that gives up before it waits (a refused write, a panic)
    /// leaves the writers under way, or every commit after it would wait
    /// [`GATHER`] for a change that never comes.
    #[test]
    fn writers_leave_the_count_whether_they_wait_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, p) = persister(tmp.path(), Durability::Sync);
        let gave_up = p.begin();
        assert_eq!(p.writers.load(Ordering::SeqCst), 1);
        drop(gave_up);
        assert_eq!(p.writers.load(Ordering::SeqCst), 0);

        let w = p.begin();
        store.set("k", bytes::Bytes::from_static(b"v"), 1);
        p.mark("k");
        p.wait_durable(w).unwrap();
        assert_eq!(p.writers.load(Ordering::SeqCst), 0);
        assert!(p.state.lock().waiting.is_empty());
        assert!(p.stats().commits >= 1, "the write was committed");
        p.stop(0);
    }

    /// In `Interval` mode no writer waits, so none is counted.
    #[test]
    fn interval_writers_are_not_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (_store, p) = persister(tmp.path(), Durability::Interval(Duration::from_secs(60)));
        let w = p.begin();
        assert_eq!(p.writers.load(Ordering::SeqCst), 0);
        p.wait_durable(w).unwrap();
        p.stop(0);
    }

    /// Keys taken by a commit that panics go back to the dirty list, and
    /// the writers waiting for it are told it failed: otherwise the next
    /// commit would cover their tickets without their keys.
    #[test]
    fn a_commit_that_panics_gives_its_keys_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (_store, p) = persister(tmp.path(), Durability::Interval(Duration::from_secs(60)));
        let keys: HashSet<Key, FastState> = [Key::from("a"), Key::from("b")].into_iter().collect();
        let failures = p.state.lock().failures;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _taken = Taken {
                persister: &p,
                keys,
                stored: false,
            };
            panic!("redb panicked mid-commit");
        }));
        assert!(panicked.is_err());
        {
            let s = p.state.lock();
            let mut dirty: Vec<&str> = s.dirty.iter().map(|k| &**k).collect();
            dirty.sort_unstable();
            assert_eq!(dirty, ["a", "b"]);
            assert_eq!(s.failures, failures + 1);
        }
        // A commit that stored its keys gives nothing back.
        let stored = Taken {
            persister: &p,
            keys: [Key::from("c")].into_iter().collect(),
            stored: true,
        };
        drop(stored);
        assert_eq!(p.state.lock().dirty.len(), 2);
        p.stop(0);
    }
}
