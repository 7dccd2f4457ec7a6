//! # gossipkv-durable
//!
//! The data directory of a durable gossipkv node: one
//! [redb](https://docs.rs/redb) file, [`FILE_NAME`], under the directory the
//! node is given. This crate holds the disk side of durable mode so that the
//! storage crate stays free of I/O.
//!
//! What it does: [`DataDir::open`] creates the directory and the file, or
//! opens them and checks that they belong to this node: the same cluster id
//! and node id, and a format version this build can read
//! ([`FORMAT_VERSION`]). A directory of another cluster or node, a file
//! written by a newer version, a file that is not a redb file, and a
//! directory another process (or another handle) already uses are each a
//! clear [`OpenError`], never a panic. The file records the node's identity,
//! its generation, a ceiling of its hybrid logical clock and whether the
//! last run ended cleanly ([`Meta`]), so that a restarted node can keep its
//! generation after a clean stop and take a new one after a crash. It
//! stores records (tombstones included) and each origin's watermark and
//! collected floor in atomic batches ([`DataDir::persist`]) and reads them
//! back ([`DataDir::load`]); a row that cannot be read makes the file
//! corrupt, never a panic. Records are packed in blocks of consecutive keys
//! (up to 16 KiB each), which fill redb's pages where a row per key left
//! them a half to two thirds full. Small batches go to a write-ahead log
//! table that [`DataDir::checkpoint`] (and every open) folds into the
//! records. A file that takes well more disk than its data is rewritten,
//! its records repacked, by [`DataDir::compact_if_bloated`].
//!
//! ```
//! use gossipkv_durable::{DataDir, Identity};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let id = Identity::new("prod", "node-a");
//! let mut data = DataDir::open(dir.path(), &id).unwrap();
//! assert!(data.meta().created);
//! data.start(7).unwrap(); // generation 7 runs now
//! data.stop_clean(1_767_225_600_000, 3).unwrap(); // at incarnation 3
//!
//! let data = DataDir::open(dir.path(), &id).unwrap();
//! let meta = data.meta();
//! assert_eq!((meta.generation, meta.incarnation, meta.clean), (7, 3, true));
//! assert_eq!(meta.hlc_ceiling, 1_767_225_600_000);
//! ```

use std::path::{Path, PathBuf};

use gossipkv_storage::{Key, Origin, Record};
use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition};

mod blocks;
mod log;
mod rows;

/// The name of the database file inside the data directory.
pub const FILE_NAME: &str = "gossipkv.redb";

/// How many times its live bytes the file may take on disk before
/// [`DataDir::compact_if_bloated`] compacts it.
pub const BLOAT_FACTOR: u64 = 2;

/// The name of the copy [`DataDir::compact_if_bloated`] writes before
/// renaming it over [`FILE_NAME`].
pub const COMPACTING_NAME: &str = "gossipkv.redb.compacting";

/// Files smaller than this are never compacted.
pub const BLOAT_MIN_BYTES: u64 = 4 << 20;

/// The on-disk format this build writes, and the newest it reads. Format 2
/// added record lifetimes (expiry, ephemeral), format 3 retired origins (a
/// flag after an origin's marks), format 4 packs the records in blocks of
/// consecutive keys, format 5 writes a small batch to the write-ahead log
/// as one entry. Older files are read as they are, their records moved
/// into blocks when they are opened, and they are marked with the current
/// format then (an older build refuses them from there on).
pub const FORMAT_VERSION: u32 = 5;

/// Facts about the node, one row each.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

use log::LOG;

/// Batches of at most this many rows are appended to the write-ahead log
/// (one or two pages written per commit); larger ones fold the log and go
/// straight into the records' blocks.
pub const LOG_BATCH_MAX: usize = 256;

/// Per origin, its watermark and collected floor.
const MARKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("marks");

const FORMAT: &str = "format";
const CLUSTER: &str = "cluster_id";
const NODE: &str = "node_id";
const GENERATION: &str = "generation";
const HLC_CEILING: &str = "hlc_ceiling";
const CLEAN: &str = "clean";
const INCARNATION: &str = "incarnation";

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cluster id.
    pub cluster_id: String,
    /// The node id.
    pub node_id: String,
}

impl Identity {
    /// The identity of node `node_id` of cluster `cluster_id`.
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<String>) -> Self {
        Identity {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
        }
    }
}

/// What the data directory says of the node's last run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Whether [`DataDir::open`] created the file (nothing was there).
    pub created: bool,
    /// The generation of the last run ([`DataDir::start`]); 0 if none ran.
    pub generation: u64,
    /// The greatest clock reading stored: by the last batch
    /// ([`Batch::hlc_ceiling`]) or by [`DataDir::stop_clean`], which
    /// bounds every timestamp the run issued. 0 if none.
    pub hlc_ceiling: u64,
    /// The membership incarnation the last run stopped at
    /// ([`DataDir::stop_clean`]); 0 if none.
    pub incarnation: u64,
    /// Whether the last run ended with [`DataDir::stop_clean`] (or none
    /// ran). After a crash it is `false`.
    pub clean: bool,
}

/// Why a data directory cannot be used. Nothing was changed on disk.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or file could not be created or read.
    #[error("data dir {path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another process, or another handle in this one, has the data
    /// directory open.
    #[error("data dir {path} is in use by another node")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The file is not a database this version can read: damaged, or not a
    /// gossipkv data directory at all.
    #[error("data dir {path} is corrupt: {message}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file was written by a newer version of gossipkv.
    #[error("data dir {path} has format {found}; this version reads up to {supported}")]
    NewerFormat {
        /// The database file.
        path: PathBuf,
        /// Its format version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The directory belongs to another cluster.
    #[error("data dir {path} belongs to cluster {found:?}, not {expected:?}")]
    OtherCluster {
        /// The database file.
        path: PathBuf,
        /// The cluster id on disk.
        found: String,
        /// The cluster id this node was given.
        expected: String,
    },
    /// The directory belongs to another node.
    #[error("data dir {path} belongs to node {found:?}, not {expected:?}")]
    OtherNode {
        /// The database file.
        path: PathBuf,
        /// The node id on disk.
        found: String,
        /// The node id this node was given.
        expected: String,
    },
}

/// A write to the data directory failed.
#[derive(Debug, thiserror::Error)]
#[error("writing data dir {path}: {message}")]
pub struct WriteError {
    /// The database file.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// What one [`DataDir::persist`] writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Records to store, each replacing the row of its key.
    pub records: Vec<Record>,
    /// Keys whose rows go (their tombstones were collected). They go
    /// before `records` are written: a key in both keeps its record.
    pub removed: Vec<Key>,
    /// Per origin, its watermark and collected floor.
    pub marks: Vec<(Origin, u64, u64)>,
    /// Origins of `marks` that are retired (see
    /// `gossipkv_storage::Store::retire_origins`); stored with their marks.
    pub retired: Vec<Origin>,
    /// The node's clock reading when the batch was taken (0: none). The
    /// stored ceiling ([`Meta::hlc_ceiling`]) rises to it, so a restarted
    /// node's clock starts above every timestamp stored.
    pub hlc_ceiling: u64,
}

/// Everything a data directory holds of the replicated state.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Every record stored, tombstones included, in key order.
    pub records: Vec<Record>,
    /// Per origin, its watermark and collected floor, in origin order.
    pub marks: Vec<(Origin, u64, u64)>,
    /// The origins stored as retired, in origin order.
    pub retired: Vec<Origin>,
}

/// An open data directory, used by this handle alone until it is dropped.
pub struct DataDir {
    db: Database,
    file: PathBuf,
    /// Whether `db` is the file `file` (not a test backend).
    on_disk: bool,
    meta: Meta,
    /// The next log sequence number (the log is empty after an open).
    next_log: u64,
}

impl std::fmt::Debug for DataDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataDir")
            .field("file", &self.file)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl DataDir {
    /// Opens the data directory `dir` for node `id`, creating the directory
    /// and its file when they do not exist.
    ///
    /// # Errors
    /// [`OpenError`]: the directory cannot be created or read, another
    /// handle uses it, the file is corrupt or newer than this build, or it
    /// belongs to another cluster or node.
    pub fn open(dir: &Path, id: &Identity) -> Result<DataDir, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let file = dir.join(FILE_NAME);
        let db = Database::create(&file).map_err(|e| open_error(&file, e))?;
        // The file is ours (redb locks it): a copy left by a compaction
        // that did not finish is of no use.
        let _ = std::fs::remove_file(dir.join(COMPACTING_NAME));
        Self::from_db(db, file, true, id)
    }

    /// Opens a data directory kept by `backend` instead of a file (for
    /// tests: a backend that fails I/O on purpose). `name` stands for the
    /// file in errors. No lock keeps other handles out.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with_backend(
        name: &Path,
        backend: impl redb::StorageBackend,
        id: &Identity,
    ) -> Result<DataDir, OpenError> {
        let db = redb::Builder::new()
            .create_with_backend(backend)
            .map_err(|e| open_error(name, e))?;
        Self::from_db(db, name.to_path_buf(), false, id)
    }

    /// Checks or creates the meta rows of an opened database.
    fn from_db(
        db: Database,
        file: PathBuf,
        on_disk: bool,
        id: &Identity,
    ) -> Result<DataDir, OpenError> {
        let corrupt = |e: &dyn std::fmt::Display| OpenError::Corrupt {
            path: file.clone(),
            message: e.to_string(),
        };
        let rows = read_meta(&db).map_err(|e| corrupt(&e))?;
        let meta = match rows {
            None => {
                create_meta(&db, id).map_err(|e| corrupt(&e))?;
                Meta {
                    created: true,
                    generation: 0,
                    hlc_ceiling: 0,
                    incarnation: 0,
                    clean: true,
                }
            }
            Some(rows) => check_meta(&file, &rows, id)?,
        };
        let mut data = DataDir {
            db,
            file,
            on_disk,
            meta,
            next_log: 0,
        };
        // A file of formats 1 to 3 has a row per key: into blocks first.
        data.convert_rows().map_err(|e| OpenError::Corrupt {
            path: data.file.clone(),
            message: e.message,
        })?;
        // What the last run left in the log goes to the records.
        data.checkpoint().map_err(|e| OpenError::Corrupt {
            path: data.file.clone(),
            message: e.message,
        })?;
        Ok(data)
    }

    /// Folds the write-ahead log into the records (one transaction).
    /// Returns how many changes (rows written or removed) it applied: a
    /// batched entry counts each of its rows. Small batches
    /// ([`LOG_BATCH_MAX`] rows or fewer) accumulate in the log; call it
    /// now and then (the facade does, every second or so) so that the log
    /// stays short and a restart quick.
    ///
    /// # Errors
    /// [`WriteError`] when the transaction fails; the log is then as it was.
    pub fn checkpoint(&mut self) -> Result<u64, WriteError> {
        let err = |m: String| WriteError {
            path: self.file.clone(),
            message: m,
        };
        let tx = self.db.begin_write().map_err(|e| err(text(e)))?;
        let n = log::fold(&tx).map_err(err)?;
        if n == 0 {
            tx.abort().map_err(|e| err(text(e)))?;
            return Ok(0);
        }
        tx.commit().map_err(|e| err(text(e)))?;
        self.next_log = 0;
        Ok(n)
    }

    /// Moves the records of a file of formats 1 to 3 (a row per key) into
    /// blocks, and marks the file with the current format, in one
    /// transaction, before anything else may write blocks (the log's fold).
    /// Nothing to do for a file of the current format.
    fn convert_rows(&mut self) -> Result<(), WriteError> {
        let err = |m: String| WriteError {
            path: self.file.clone(),
            message: m,
        };
        let tx = self.db.begin_write().map_err(|e| err(text(e)))?;
        let moved = log::convert_rows(&tx).map_err(err)?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(text(e)))?;
            let format = meta
                .get(FORMAT)
                .map_err(|e| err(text(e)))?
                .and_then(|v| Some(u32::from_le_bytes(v.value().try_into().ok()?)));
            if moved == 0 && format == Some(FORMAT_VERSION) {
                drop(meta);
                return tx.abort().map_err(|e| err(text(e)));
            }
            // Marked before anything goes to blocks (the log is folded
            // next): an older build would find no records in them.
            meta.insert(FORMAT, &FORMAT_VERSION.to_le_bytes()[..])
                .map_err(|e| err(text(e)))?;
        }
        tx.commit().map_err(|e| err(text(e)))
    }

    /// Entries in the write-ahead log since the last fold.
    pub fn log_len(&self) -> u64 {
        self.next_log
    }

    /// What the directory said of the last run when it was opened (updated
    /// by [`start`](Self::start)).
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Records that generation `generation` runs now, committed before it
    /// returns: until [`stop_clean`](Self::stop_clean), the run counts as
    /// not ended cleanly.
    ///
    /// # Errors
    /// [`WriteError`] when the commit fails.
    pub fn start(&mut self, generation: u64) -> Result<(), WriteError> {
        self.put(&[
            (FORMAT, &FORMAT_VERSION.to_le_bytes()),
            (GENERATION, &generation.to_le_bytes()),
            (CLEAN, &[0]),
        ])?;
        self.meta.generation = generation;
        self.meta.clean = false;
        Ok(())
    }

    /// Records that the run ended cleanly, with `hlc_ceiling` a bound on
    /// every timestamp it issued and `incarnation` its last membership
    /// incarnation, and closes the directory. Call it only once everything
    /// the run holds is persisted: a clean stop lets the next run keep the
    /// generation and go on with its sequence numbers.
    ///
    /// # Errors
    /// [`WriteError`] when the commit fails (the run then counts as not
    /// ended cleanly).
    pub fn stop_clean(mut self, hlc_ceiling: u64, incarnation: u64) -> Result<(), WriteError> {
        self.checkpoint()?;
        let ceiling = hlc_ceiling.max(self.meta.hlc_ceiling);
        self.put(&[
            (HLC_CEILING, &ceiling.to_le_bytes()),
            (INCARNATION, &incarnation.to_le_bytes()),
            (CLEAN, &[1]),
        ])
    }

    /// Stores `batch` in one transaction, committed to disk before it
    /// returns: after a crash either all of it is there or none.
    ///
    /// Invariant W on disk is the caller's to keep with the order it reads
    /// the store in: read the watermarks first, then collect every record
    /// merged up to that moment, and put both in one batch. A watermark
    /// then never lands on disk ahead of the records it covers.
    ///
    /// # Errors
    /// [`WriteError`] when the transaction fails. Then the batch is stored
    /// whole or not at all, never in part: an I/O error before redb's
    /// commit point leaves nothing of it, one after (while freeing pages or
    /// syncing again) leaves all of it. A caller counts it as not stored
    /// and writes it again.
    pub fn persist(&mut self, batch: &Batch) -> Result<(), WriteError> {
        let err = |e: &dyn std::fmt::Display| WriteError {
            path: self.file.clone(),
            message: e.to_string(),
        };
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        let small = batch.records.len() + batch.removed.len() <= LOG_BATCH_MAX;
        let next_log = if small {
            log::append(&tx, batch, self.next_log).map_err(|e| err(&e))?
        } else {
            // The log first: nothing older may land over this batch later.
            log::fold(&tx).map_err(|e| err(&e))?;
            0
        };
        {
            if !small {
                // Removals first: a key both removed and written keeps its write.
                let mut changes = std::collections::BTreeMap::new();
                for k in &batch.removed {
                    changes.insert(k.to_string(), None);
                }
                for r in &batch.records {
                    changes.insert(r.key.to_string(), Some(rows::encode_record(r)));
                }
                blocks::apply(&tx, &changes).map_err(|e| err(&e))?;
            }
            let mut marks = tx.open_table(MARKS).map_err(|e| err(&e))?;
            for (origin, watermark, floor) in &batch.marks {
                let retired = batch.retired.contains(origin);
                let row = rows::encode_marks(*watermark, (*floor).min(*watermark), retired);
                marks
                    .insert(rows::encode_origin(origin).as_slice(), row.as_slice())
                    .map_err(|e| err(&e))?;
            }
            if batch.hlc_ceiling > self.meta.hlc_ceiling {
                let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
                meta.insert(HLC_CEILING, &batch.hlc_ceiling.to_le_bytes()[..])
                    .map_err(|e| err(&e))?;
            }
        }
        tx.commit().map_err(|e| err(&e))?;
        self.next_log = next_log;
        self.meta.hlc_ceiling = self.meta.hlc_ceiling.max(batch.hlc_ceiling);
        Ok(())
    }

    /// Reads back every record and watermark stored.
    ///
    /// # Errors
    /// [`OpenError::Corrupt`] when a row cannot be read (the file is left
    /// as it is).
    pub fn load(&self) -> Result<Loaded, OpenError> {
        let corrupt = |message: String| OpenError::Corrupt {
            path: self.file.clone(),
            message,
        };
        let tx = self.db.begin_read().map_err(|e| corrupt(text(e)))?;
        let mut loaded = Loaded::default();
        match tx.open_table(blocks::BLOCKS) {
            Ok(table) => {
                let mut last_node = None;
                blocks::for_each(&table, |key, row| {
                    let record = rows::decode_record(key, row, &mut last_node)
                        .ok_or_else(|| format!("unreadable record of {key:?}"))?;
                    loaded.records.push(record);
                    Ok(())
                })
                .map_err(corrupt)?;
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(corrupt(text(e))),
        }
        self.overlay_log(&tx, &mut loaded.records)?;
        match tx.open_table(MARKS) {
            Ok(table) => {
                for row in table.iter().map_err(|e| corrupt(text(e)))? {
                    let (k, v) = row.map_err(|e| corrupt(text(e)))?;
                    let origin = rows::decode_origin(k.value())
                        .ok_or_else(|| corrupt("unreadable origin".into()))?;
                    let (watermark, floor, retired) = rows::decode_marks(v.value())
                        .ok_or_else(|| corrupt(format!("unreadable watermark of {origin}")))?;
                    if retired {
                        loaded.retired.push(origin.clone());
                    }
                    loaded.marks.push((origin, watermark, floor));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(corrupt(text(e))),
        }
        loaded.marks.sort_by(|a, b| a.0.cmp(&b.0));
        loaded.retired.sort();
        Ok(loaded)
    }

    /// Applies the log's entries over `records` (sorted by key, and left so).
    fn overlay_log(
        &self,
        tx: &redb::ReadTransaction,
        records: &mut Vec<Record>,
    ) -> Result<(), OpenError> {
        let corrupt = |message: String| OpenError::Corrupt {
            path: self.file.clone(),
            message,
        };
        let table = match tx.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(corrupt(text(e))),
        };
        let mut last: std::collections::HashMap<String, Option<Record>> = Default::default();
        let mut last_node = None;
        for entry in table.iter().map_err(|e| corrupt(text(e)))? {
            let (seq, entry) = entry.map_err(|e| corrupt(text(e)))?;
            let unreadable = || corrupt(format!("unreadable log entry {}", seq.value()));
            for (key, row) in log::decode_all(entry.value()).ok_or_else(unreadable)? {
                let record = match row {
                    Some(row) => {
                        Some(rows::decode_record(key, row, &mut last_node).ok_or_else(unreadable)?)
                    }
                    None => None,
                };
                last.insert(key.to_string(), record);
            }
        }
        if last.is_empty() {
            return Ok(());
        }
        records.retain(|r| !last.contains_key(&*r.key));
        records.extend(last.into_values().flatten());
        records.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(())
    }

    /// Compacts the file when it takes well more disk than the data it
    /// holds: more than [`BLOAT_FACTOR`] times the bytes of its rows and
    /// their index, and at least [`BLOAT_MIN_BYTES`]. The file grows past
    /// its data when records are written in no particular order (blocks
    /// split, and each commit copies the pages it changes, whose old
    /// copies stay in the file as free pages for later commits) or after
    /// much is removed; redb's own compaction can only move pages into
    /// free space of their size, which leaves such a file about twice its
    /// data. So this rewrites it: every table is copied into a new file
    /// beside it, the records in full blocks as keys written in order
    /// would be, and the new file is renamed over the old one once
    /// committed. The directory stays locked throughout (the new file is
    /// open, and locked, before the rename); a crash before the rename
    /// leaves the old file as it was (and the partial copy, removed by the
    /// next [`open`](Self::open)). Needs free disk space for the copy.
    /// The facade calls it on a clean stop. Returns whether it compacted.
    ///
    /// # Errors
    /// [`WriteError`] when reading the statistics, writing the copy or
    /// renaming it fails (the directory is then as it was, and this handle
    /// usable), or when syncing the directory after the rename fails (the
    /// handle is then on the new file, whose name a power loss may give
    /// back to the old one).
    pub fn compact_if_bloated(&mut self) -> Result<bool, WriteError> {
        self.checkpoint()?;
        let file = self.file.clone();
        let err = |e: &dyn std::fmt::Display| WriteError {
            path: file.clone(),
            message: e.to_string(),
        };
        let Some(dir) = file.parent().filter(|_| self.on_disk) else {
            return Ok(false);
        };
        let used = disk_bytes(&file).map_err(|e| err(&e))?;
        let live = {
            let tx = self.db.begin_write().map_err(|e| err(&e))?;
            let stats = tx.stats().map_err(|e| err(&e))?;
            tx.abort().map_err(|e| err(&e))?;
            stats.stored_bytes() + stats.metadata_bytes()
        };
        if used < BLOAT_MIN_BYTES || used <= live.saturating_mul(BLOAT_FACTOR) {
            return Ok(false);
        }
        let copy = dir.join(COMPACTING_NAME);
        let db = match self.copy_to(&copy) {
            Ok(db) => db,
            Err(e) => {
                let _ = std::fs::remove_file(&copy);
                return Err(err(&e));
            }
        };
        if let Err(e) = std::fs::rename(&copy, &file) {
            drop(db);
            let _ = std::fs::remove_file(&copy);
            return Err(err(&e));
        }
        // The file is the copy from here on, whatever follows: the old
        // one, renamed over, goes with its handle.
        self.db = db;
        // Until the directory is synced, a power loss may bring the old
        // file back, without what is written to the new one after this.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| err(&e))?;
        Ok(true)
    }

    /// A new database at `path` holding what this one holds, the records
    /// repacked ([`blocks::repack`]), committed.
    fn copy_to(&self, path: &Path) -> Result<Database, String> {
        let _ = std::fs::remove_file(path);
        let db = Database::create(path).map_err(text)?;
        let from = self.db.begin_read().map_err(text)?;
        let tx = db.begin_write().map_err(text)?;
        copy_table(&from, &tx, META)?;
        copy_table(&from, &tx, MARKS)?;
        tx.commit().map_err(text)?;
        match from.open_table(blocks::BLOCKS) {
            Ok(table) => blocks::repack(&table, &db)?,
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(text(e)),
        }
        Ok(db)
    }

    /// Writes meta rows in one transaction.
    fn put(&mut self, rows: &[(&str, &[u8])]) -> Result<(), WriteError> {
        let err = |e: &dyn std::fmt::Display| WriteError {
            path: self.file.clone(),
            message: e.to_string(),
        };
        let tx = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = tx.open_table(META).map_err(|e| err(&e))?;
            for (k, v) in rows {
                table.insert(*k, *v).map_err(|e| err(&e))?;
            }
        }
        tx.commit().map_err(|e| err(&e))
    }
}

/// The meta rows of a file: name and value.
type Rows = Vec<(String, Vec<u8>)>;

/// A redb error as text (the variants are large, and the caller only
/// reports them).
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The meta rows, or `None` for a new file.
fn read_meta(db: &Database) -> Result<Option<Rows>, String> {
    let tx = db.begin_read().map_err(text)?;
    let table = match tx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(text(e)),
    };
    let mut rows = Vec::new();
    for row in table.iter().map_err(text)? {
        let (k, v) = row.map_err(text)?;
        rows.push((k.value().to_string(), v.value().to_vec()));
    }
    Ok(Some(rows))
}

fn create_meta(db: &Database, id: &Identity) -> Result<(), String> {
    let tx = db.begin_write().map_err(text)?;
    {
        let mut t = tx.open_table(META).map_err(text)?;
        let rows: [(&str, &[u8]); 6] = [
            (FORMAT, &FORMAT_VERSION.to_le_bytes()),
            (CLUSTER, id.cluster_id.as_bytes()),
            (NODE, id.node_id.as_bytes()),
            (GENERATION, &0u64.to_le_bytes()),
            (HLC_CEILING, &0u64.to_le_bytes()),
            (CLEAN, &[1]),
        ];
        for (k, v) in rows {
            t.insert(k, v).map_err(text)?;
        }
    }
    tx.commit().map_err(text)
}

/// Checks an existing file's rows: format first (a newer format may lay
/// out everything else differently), then cluster, then node.
fn check_meta(file: &Path, rows: &Rows, id: &Identity) -> Result<Meta, OpenError> {
    let corrupt = |message: String| OpenError::Corrupt {
        path: file.to_path_buf(),
        message,
    };
    let get = |k: &str| {
        rows.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_slice())
            .ok_or_else(|| corrupt(format!("no {k} recorded")))
    };
    let format = u32::from_le_bytes(
        get(FORMAT)?
            .try_into()
            .map_err(|_| corrupt("unreadable format version".into()))?,
    );
    if format > FORMAT_VERSION {
        return Err(OpenError::NewerFormat {
            path: file.to_path_buf(),
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let string = |k: &str| {
        String::from_utf8(get(k)?.to_vec()).map_err(|_| corrupt(format!("{k} is not UTF-8")))
    };
    let number = |k: &str| {
        Ok::<u64, OpenError>(u64::from_le_bytes(
            get(k)?
                .try_into()
                .map_err(|_| corrupt(format!("unreadable {k}")))?,
        ))
    };
    let cluster = string(CLUSTER)?;
    if cluster != id.cluster_id {
        return Err(OpenError::OtherCluster {
            path: file.to_path_buf(),
            found: cluster,
            expected: id.cluster_id.clone(),
        });
    }
    let node = string(NODE)?;
    if node != id.node_id {
        return Err(OpenError::OtherNode {
            path: file.to_path_buf(),
            found: node,
            expected: id.node_id.clone(),
        });
    }
    // Absent until the first clean stop records it.
    let incarnation = match rows.iter().any(|(name, _)| name == INCARNATION) {
        true => number(INCARNATION)?,
        false => 0,
    };
    Ok(Meta {
        created: false,
        generation: number(GENERATION)?,
        hlc_ceiling: number(HLC_CEILING)?,
        incarnation,
        clean: get(CLEAN)? == [1],
    })
}

/// An error of `Database::create`, as an [`OpenError`].
/// Copies every row of `table` from `from` to `to`.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), String> {
    let source = match from.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(text(e)),
    };
    let mut target = to.open_table(table).map_err(text)?;
    for row in source.iter().map_err(text)? {
        let (k, v) = row.map_err(text)?;
        target.insert(k.value(), v.value()).map_err(text)?;
    }
    Ok(())
}

/// The bytes `file` takes on disk: its allocated blocks (redb extends a
/// file ahead of the pages it uses, and the part never written takes no
/// space on file systems with sparse files), or its length where the
/// platform does not tell.
fn disk_bytes(file: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(file)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(meta.blocks().saturating_mul(512))
    }
    #[cfg(not(unix))]
    {
        Ok(meta.len())
    }
}

fn open_error(file: &Path, e: DatabaseError) -> OpenError {
    let path = file.to_path_buf();
    match e {
        DatabaseError::DatabaseAlreadyOpen => OpenError::InUse { path },
        DatabaseError::Storage(StorageError::Io(source)) => match source.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                OpenError::Corrupt {
                    path,
                    message: source.to_string(),
                }
            }
            _ => OpenError::Io { path, source },
        },
        other => OpenError::Corrupt {
            path,
            message: other.to_string(),
        },
    }
}

/// Fuzzing entry point (used by `gossipkv-fuzz-targets`, not part of the
/// API): runs every row decoder of the data directory over `data`. The
/// first byte picks how the rest is split into a row key and a row value.
/// None of the decoders may panic, whatever the bytes.
#[doc(hidden)]
pub fn fuzz_decode_rows(data: &[u8]) {
    let (split, rest) = match data.split_first() {
        Some((&s, rest)) => (usize::from(s), rest),
        None => (0, data),
    };
    let (key, row) = rest.split_at(split.min(rest.len()));
    let key = String::from_utf8_lossy(key);
    let mut last_node = None;
    if let Some(r) = rows::decode_record(&key, row, &mut last_node) {
        // What decodes encodes again without panicking (a row may have more
        // than one encoding: a lifetime flag with the forever lifetime).
        let _ = rows::encode_record(&r);
    }
    let _ = rows::decode_record(&key, rest, &mut last_node);
    let _ = rows::decode_origin(rest);
    if let Some((w, f, retired)) = rows::decode_marks(rest) {
        assert_eq!(rows::encode_marks(w, f, retired), rest, "marks round trip");
    }
    let _ = log::decode_all(rest);
    let _ = blocks::decode(rest);
}

/// Fuzzing seed helper (used by `gossipkv-fuzz-targets`, not part of the
/// API): the rows this data directory writes for `record` and for
/// `origin`'s marks, each in the input format of [`fuzz_decode_rows`].
#[doc(hidden)]
pub fn fuzz_rows_of(record: &Record, origin: &Origin, watermark: u64, floor: u64) -> Vec<Vec<u8>> {
    let key = record.key.as_bytes();
    let mut out = Vec::new();
    if let Ok(split) = u8::try_from(key.len()) {
        let mut row = vec![split];
        row.extend_from_slice(key);
        row.extend_from_slice(&rows::encode_record(record));
        out.push(row);
    }
    for bytes in [
        rows::encode_origin(origin),
        rows::encode_marks(watermark, floor, false),
        rows::encode_marks(watermark, floor, true),
        log::encode(log::PUT, &record.key, &rows::encode_record(record)),
        log::encode(log::REMOVE, &record.key, &[]),
        log::encode_batch(&[
            log::encode(log::REMOVE, &record.key, &[]),
            log::encode(log::PUT, &record.key, &rows::encode_record(record)),
        ]),
        blocks::encode_one(&record.key, &rows::encode_record(record)),
    ] {
        let mut row = vec![0];
        row.extend_from_slice(&bytes);
        out.push(row);
    }
    out
}
