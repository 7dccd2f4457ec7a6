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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gossipkv_durable::{Batch, DataDir, Identity, WriteError};
use gossipkv_storage::{Hlc, NodeId, Origin, Store};
use parking_lot::{Condvar, Mutex};
use tracing::{debug, error, info, warn};

use crate::error::Error;

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_millis(100);

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

/// What the persister's thread and the writers share.
#[derive(Debug, Default)]
struct State {
    /// Keys changed since the last commit began.
    dirty: HashSet<Arc<str>>,
    /// Changes marked so far (a writer's ticket).
    marked: u64,
    /// Changes covered by a finished commit.
    committed: u64,
    /// Commits that failed so far, and the last failure.
    failures: u64,
    last_error: Option<String>,
    /// Set when the node stops: the last commit, then a clean stop at this
    /// membership incarnation.
    stop: Option<u64>,
    /// Set when the thread ended (or never started): nothing more is
    /// committed.
    finished: bool,
}

/// The data directory's writer: a thread that commits what changed.
#[derive(Debug)]
pub(crate) struct Persister {
    state: Mutex<State>,
    /// Wakes the thread (a change in `Sync` mode, a stop).
    work: Condvar,
    /// Wakes writers waiting for a commit.
    done: Condvar,
    mode: Durability,
    file: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What a data directory gave the node at start.
pub(crate) struct Opened {
    /// The store, filled with the stored records and marks.
    pub(crate) store: Arc<Store>,
    /// The generation this run uses.
    pub(crate) generation: u64,
    /// The membership incarnation to start at.
    pub(crate) incarnation: u64,
    /// The directory, with this run's start recorded.
    pub(crate) data: DataDir,
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
) -> Result<Opened, Error> {
    let t0 = Instant::now();
    let mut data = DataDir::open(dir, &Identity::new(cluster, node.as_str()))?;
    let meta = *data.meta();
    let loaded = data.load()?;
    let resumed = !meta.created && meta.clean && meta.generation != 0;
    let (generation, incarnation) = if resumed {
        (meta.generation, meta.incarnation.saturating_add(1))
    } else {
        // Above the last run's: generations of one node only grow.
        (fresh_generation.max(meta.generation.saturating_add(1)), 0)
    };
    let store = Arc::new(Store::new(Origin::new(node.clone(), generation)));
    store.clock().observe(Hlc::from_u64(meta.hlc_ceiling));
    let records = loaded.records.len();
    store.merge_batch(loaded.records);
    store.restore_marks(&loaded.marks);
    data.start(generation).map_err(persist_error)?;
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
        data,
    })
}

impl Persister {
    /// Starts the thread that keeps `data` up to date with `store`, and
    /// installs the store's collection observer. The caller installs
    /// [`Persister::mark`] in the store's change observer.
    pub(crate) fn spawn(store: Arc<Store>, data: DataDir, mode: Durability) -> Arc<Persister> {
        let p = Arc::new(Persister {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            mode,
            file: data.file().to_path_buf(),
            thread: Mutex::new(None),
        });
        let marker = p.clone();
        store.set_collect_observer(Arc::new(move |key: &str| marker.mark(key)));
        let runner = p.clone();
        let thread = std::thread::Builder::new()
            .name("gossipkv-persist".into())
            .spawn(move || runner.run(&store, data));
        match thread {
            Ok(t) => *p.thread.lock() = Some(t),
            // Without the thread nothing is committed: writers in `Sync`
            // mode get the error below, and the node says so now.
            Err(e) => {
                error!(error = %e, "cannot start the data dir thread: nothing will be persisted");
                let mut s = p.state.lock();
                s.failures += 1;
                s.last_error = Some(format!("cannot start the persist thread: {e}"));
                s.finished = true;
            }
        }
        p
    }

    /// Notes that `key` changed. Called from the store's observers, under
    /// a shard lock: quick, and never calls back into the store.
    pub(crate) fn mark(&self, key: &str) {
        let mut s = self.state.lock();
        if s.dirty.is_empty() && self.mode == Durability::Sync {
            self.work.notify_one();
        }
        if !s.dirty.contains(key) {
            s.dirty.insert(Arc::from(key));
        }
        s.marked += 1;
    }

    /// In `Sync` mode, waits until every change marked so far (the
    /// caller's write among them) is committed; otherwise returns at once.
    pub(crate) fn wait_durable(&self) -> Result<(), Error> {
        if self.mode != Durability::Sync {
            return Ok(());
        }
        let mut s = self.state.lock();
        let ticket = s.marked;
        let failures = s.failures;
        loop {
            if s.committed >= ticket {
                return Ok(());
            }
            if s.failures != failures || s.finished {
                return Err(Error::Persist {
                    path: self.file.clone(),
                    message: s
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "node stopped".into()),
                });
            }
            self.done.wait(&mut s);
        }
    }

    /// Commits what is left, records a clean stop at `incarnation`, and
    /// waits for the thread to end. Blocks: call it off the async workers.
    pub(crate) fn stop(&self, incarnation: u64) {
        self.state.lock().stop = Some(incarnation);
        self.work.notify_one();
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if t.join().is_err() {
                error!(file = %self.file.display(), "the data dir thread panicked");
            }
        }
        self.done.notify_all();
    }

    /// Asks the thread to commit what is left and stop cleanly, without
    /// waiting for it (a node dropped without `shutdown`).
    pub(crate) fn stop_soon(&self, incarnation: u64) {
        let mut s = self.state.lock();
        s.stop.get_or_insert(incarnation);
        self.work.notify_one();
    }

    /// The thread: commits when there is something to commit and it is
    /// time (at once in `Sync` mode, every interval otherwise), until
    /// told to stop; then commits the rest and stops cleanly.
    fn run(&self, store: &Store, data: DataDir) {
        self.run_until_stopped(store, data);
        self.state.lock().finished = true;
        self.done.notify_all();
    }

    fn run_until_stopped(&self, store: &Store, mut data: DataDir) {
        loop {
            let stopping = self.wait_for_work();
            match self.commit(store, &mut data) {
                Ok(()) => {}
                Err(e) => {
                    warn!(file = %self.file.display(), error = %e.message, "commit failed; retrying");
                    std::thread::sleep(RETRY);
                    if stopping.is_some() {
                        // One more try below; a node that stops cannot wait long.
                        if let Err(e) = self.commit(store, &mut data) {
                            error!(file = %self.file.display(), error = %e.message,
                                "last commit failed: the next start takes a new generation");
                            return;
                        }
                    } else {
                        continue;
                    }
                }
            }
            if let Some(incarnation) = stopping {
                let ceiling = store.clock().last().as_u64();
                match data.stop_clean(ceiling, incarnation) {
                    Ok(()) => debug!(file = %self.file.display(), "data dir closed cleanly"),
                    Err(e) => error!(file = %self.file.display(), error = %e.message,
                        "cannot record the clean stop: the next start takes a new generation"),
                }
                return;
            }
        }
    }

    /// Waits until a commit is due; returns the stop's incarnation when
    /// the node stops.
    fn wait_for_work(&self) -> Option<u64> {
        let mut s = self.state.lock();
        match self.mode {
            // Whatever changed is committed at once; what changes during a
            // commit waits for the next one, together (group commit).
            Durability::Sync => {
                while s.stop.is_none() && s.dirty.is_empty() {
                    self.work.wait(&mut s);
                }
            }
            Durability::Interval(every) => {
                let deadline = Instant::now() + every;
                while s.stop.is_none() {
                    if self.work.wait_until(&mut s, deadline).timed_out() {
                        break;
                    }
                }
            }
        }
        s.stop
    }

    /// One commit: watermarks first, then the keys marked up to now and
    /// their records as held now, then the floors, all in one transaction.
    fn commit(&self, store: &Store, data: &mut DataDir) -> Result<(), WriteError> {
        let before = store.marks();
        let (keys, ticket) = {
            let mut s = self.state.lock();
            (std::mem::take(&mut s.dirty), s.marked)
        };
        if keys.is_empty() && self.state.lock().stop.is_none() {
            // Nothing changed: no commit (a watermark that rose alone is
            // stored with the next change, or at the stop).
            return Ok(());
        }
        let mut batch = Batch::default();
        for key in &keys {
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
        batch.hlc_ceiling = store.clock().last().as_u64();
        let result = data.persist(&batch);
        let mut s = self.state.lock();
        match &result {
            Ok(()) => s.committed = s.committed.max(ticket),
            Err(e) => {
                // Nothing was stored: every key waits for the next commit.
                s.dirty.extend(keys);
                s.failures += 1;
                s.last_error = Some(e.message.clone());
            }
        }
        drop(s);
        self.done.notify_all();
        result
    }
}

/// A data directory write error as an [`Error`].
fn persist_error(e: WriteError) -> Error {
    Error::Persist {
        path: e.path,
        message: e.message,
    }
}
