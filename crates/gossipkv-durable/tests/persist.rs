//! Records and watermarks stored in batches and read back: exactly what was
//! stored, the last write of a key winning, removed keys gone, and a row
//! that cannot be read reported as corruption.

use std::collections::BTreeMap;

use bytes::Bytes;
use gossipkv_durable::{Batch, DataDir, Identity, OpenError, FILE_NAME, FORMAT_VERSION};
use gossipkv_storage::{Hlc, Key, Lifetime, NodeId, Origin, Record, Version, HLC_MAX_PHYSICAL_MS};
use proptest::prelude::*;
use redb::{Database, TableDefinition};

fn me() -> Identity {
    Identity::new("prod", "node-a")
}

fn record(key: &str, value: Option<&[u8]>, node: &str, generation: u64, seq: u64) -> Record {
    Record {
        key: Key::from(key),
        value: value.map(Bytes::copy_from_slice),
        version: Version {
            hlc: Hlc::new(1_767_225_600_000 + seq, (seq % 7) as u16),
            node: NodeId::new(node),
            generation,
            seq,
        },
        lifetime: gossipkv_storage::Lifetime::FOREVER,
    }
}

#[test]
fn a_batch_is_read_back_after_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    assert!(
        data.load().unwrap().records.is_empty(),
        "a new directory holds nothing"
    );
    let batch = Batch {
        records: vec![
            record("b", Some(b"two"), "node-a", 5, 2),
            record("a", Some(b""), "node-b", u64::MAX, 1),
            record("gone", None, "node-a", 5, 3),
        ],
        removed: Vec::new(),
        marks: vec![
            (Origin::new("node-a", 5), 3, 0),
            (Origin::new("node-b", u64::MAX), u64::MAX, 7),
        ],
        // A retired origin keeps its marks, with a flag.
        retired: vec![Origin::new("node-b", u64::MAX)],
        hlc_ceiling: u64::MAX,
    };
    data.persist(&batch).unwrap();
    drop(data);
    let loaded = DataDir::open(tmp.path(), &me()).unwrap().load().unwrap();
    let mut expected = batch.records.clone();
    expected.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        loaded.records, expected,
        "an empty value stays a value, a tombstone a tombstone"
    );
    assert_eq!(
        loaded.marks,
        vec![
            (Origin::new("node-a", 5), 3, 0),
            (Origin::new("node-b", u64::MAX), u64::MAX, 7),
        ]
    );
    assert_eq!(loaded.retired, vec![Origin::new("node-b", u64::MAX)]);
}

#[test]
fn a_later_batch_replaces_rows_and_removes_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    data.persist(&Batch {
        records: vec![
            record("k", Some(b"old"), "node-a", 1, 1),
            record("t", None, "node-a", 1, 2),
        ],
        removed: Vec::new(),
        marks: vec![(Origin::new("node-a", 1), 2, 0)],
        retired: Vec::new(),
        hlc_ceiling: 0,
    })
    .unwrap();
    data.persist(&Batch {
        records: vec![record("k", Some(b"new"), "node-c", 2, 9)],
        removed: vec![Key::from("t"), Key::from("never-stored")],
        marks: vec![(Origin::new("node-a", 1), 2, 2)],
        retired: Vec::new(),
        hlc_ceiling: 0,
    })
    .unwrap();
    // A key both removed and written in one batch keeps its write.
    data.persist(&Batch {
        records: vec![record("both", Some(b"kept"), "node-a", 1, 10)],
        removed: vec![Key::from("both")],
        marks: Vec::new(),
        retired: Vec::new(),
        hlc_ceiling: 0,
    })
    .unwrap();
    let loaded = data.load().unwrap();
    assert_eq!(
        loaded.records,
        vec![
            record("both", Some(b"kept"), "node-a", 1, 10),
            record("k", Some(b"new"), "node-c", 2, 9)
        ]
    );
    assert_eq!(loaded.marks, vec![(Origin::new("node-a", 1), 2, 2)]);
}

/// A record row as the file lays it out (see `rows.rs`): flag, timestamp,
/// generation, sequence number, node id length and bytes, value.
fn raw_record(flag: u8, seq: u64, node_len: u16, node: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&7u64.to_le_bytes());
    v.extend_from_slice(&1u64.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&node_len.to_le_bytes());
    v.extend_from_slice(node);
    v.extend_from_slice(value);
    v
}

/// A record row with a lifetime: flag, the fixed numbers, `expiry`, then
/// node id "n" and value "v".
fn raw_timed(flag: u8, expiry: u64) -> Vec<u8> {
    let mut v = raw_record(flag, 1, 1, b"n", b"v");
    let at = 1 + 24;
    v.splice(at..at, expiry.to_le_bytes());
    v
}

/// `load` of a directory whose `records` row of key "k" is `row`, or whose
/// `marks` row is (`origin`, `marks`).
fn load_with(
    records: Option<Vec<u8>>,
    marks: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<usize, OpenError> {
    const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
    const MARKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("marks");
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), &me()).unwrap());
    {
        let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        if let Some(row) = &records {
            tx.open_table(RECORDS)
                .unwrap()
                .insert("k", row.as_slice())
                .unwrap();
        }
        if let Some((k, v)) = &marks {
            tx.open_table(MARKS)
                .unwrap()
                .insert(k.as_slice(), v.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    data.load().map(|l| l.records.len() + l.marks.len())
}

fn marks_row(watermark: u64, floor: u64) -> Vec<u8> {
    let mut v = watermark.to_le_bytes().to_vec();
    v.extend_from_slice(&floor.to_le_bytes());
    v
}

fn origin_key(generation: u64, node: &[u8]) -> Vec<u8> {
    let mut v = generation.to_le_bytes().to_vec();
    v.extend_from_slice(node);
    v
}

#[test]
fn an_unreadable_row_is_corruption_not_a_panic() {
    // The same layouts, readable: the helpers write what the file holds.
    assert_eq!(
        load_with(Some(raw_record(1, 1, 1, b"n", b"v")), None).unwrap(),
        1
    );
    assert_eq!(
        load_with(Some(raw_record(0, 1, 1, b"n", b"")), None).unwrap(),
        1
    );
    assert_eq!(
        load_with(None, Some((origin_key(1, b"n"), marks_row(5, 5)))).unwrap(),
        1
    );
    // With a lifetime: an expiry, ephemeral or not.
    assert_eq!(load_with(Some(raw_timed(1 | 2, 5)), None).unwrap(), 1);
    assert_eq!(load_with(Some(raw_timed(1 | 2 | 4, 0)), None).unwrap(), 1);
    let bad_records = [
        (
            "ephemeral without a lifetime",
            raw_record(1 | 4, 1, 1, b"n", b"v"),
        ),
        ("a lifetime cut short", raw_record(1 | 2, 1, 1, b"n", b"v")),
        (
            "an expiry past the clock's range",
            raw_timed(1 | 2, u64::MAX),
        ),
        ("too short", vec![1, 2, 3]),
        ("an unknown flag", raw_record(9, 1, 1, b"n", b"v")),
        (
            "a node id past the end",
            raw_record(1, 1, 0xffff, b"n", b""),
        ),
        (
            "a node id that is not UTF-8",
            raw_record(1, 1, 2, &[0xff, 0xfe], b""),
        ),
        ("an empty node id", raw_record(1, 1, 0, b"", b"v")),
        ("sequence number 0", raw_record(1, 0, 1, b"n", b"v")),
        ("a tombstone with a value", raw_record(0, 1, 1, b"n", b"x")),
    ];
    for (what, row) in bad_records {
        assert!(
            matches!(load_with(Some(row), None), Err(OpenError::Corrupt { .. })),
            "{what}"
        );
    }
    let bad_marks = [
        (
            "an origin without a node",
            origin_key(1, b""),
            marks_row(1, 0),
        ),
        ("an origin too short", vec![1, 2], marks_row(1, 0)),
        (
            "a floor above the watermark",
            origin_key(1, b"n"),
            marks_row(5, 6),
        ),
        ("marks too short", origin_key(1, b"n"), vec![0; 15]),
    ];
    for (what, k, v) in bad_marks {
        assert!(
            matches!(
                load_with(None, Some((k, v))),
                Err(OpenError::Corrupt { .. })
            ),
            "{what}"
        );
    }
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        "[a-z/]{0,12}",
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        "[a-z0-9-]{1,20}",
        any::<u64>(),
        1..u64::MAX,
        any::<u64>(),
        arb_lifetime(),
    )
        .prop_map(
            |(key, value, node, generation, seq, hlc, lifetime)| Record {
                key: Key::from(key.as_str()),
                value: value.map(Bytes::from),
                version: Version {
                    hlc: Hlc::from_u64(hlc),
                    node: NodeId::new(node),
                    generation,
                    seq,
                },
                lifetime,
            },
        )
}

/// Lifetimes as a store holds them: forever, or an expiry within the
/// clock's range (its ends included), owned or not.
fn arb_lifetime() -> impl Strategy<Value = Lifetime> {
    let expiry = prop_oneof![
        Just(0),
        Just(1),
        Just(HLC_MAX_PHYSICAL_MS),
        1..HLC_MAX_PHYSICAL_MS
    ];
    (expiry, any::<bool>()).prop_map(|(t, owned)| {
        let l = Lifetime::expiring(t);
        if owned {
            l.owned()
        } else {
            l
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever is stored, over several batches, small ones (through the
    /// write-ahead log) and large ones (straight into the records table)
    /// mixed, is read back as the last batch that touched each key left
    /// it: from the same handle (the log applied over the records) and
    /// after a reopen (the log folded in).
    #[test]
    fn stored_records_come_back_exactly(
        batches in proptest::collection::vec(
            (prop_oneof![
                3 => proptest::collection::vec(arb_record(), 0..20),
                1 => proptest::collection::vec(arb_record(), 250..300),
             ],
             proptest::collection::vec("[a-z/]{0,12}", 0..4)),
            1..5,
        )
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let mut data = DataDir::open(tmp.path(), &me()).unwrap();
        let mut model: BTreeMap<Key, Record> = BTreeMap::new();
        for (records, removed) in batches {
            let removed: Vec<Key> = removed.iter().map(|k| Key::from(k.as_str())).collect();
            for k in &removed {
                model.remove(k);
            }
            for r in &records {
                model.insert(r.key.clone(), r.clone());
            }
            data.persist(&Batch { records, removed, ..Batch::default() }).unwrap();
        }
        let expected: Vec<Record> = model.into_values().collect();
        prop_assert_eq!(&data.load().unwrap().records, &expected);
        drop(data);
        let loaded = DataDir::open(tmp.path(), &me()).unwrap().load().unwrap();
        prop_assert_eq!(loaded.records, expected);
    }
}

#[test]
fn a_file_grown_well_past_its_data_is_compacted_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    let value = vec![7u8; 1024];
    let keys: Vec<String> = (0..20_000).map(|i| format!("key-{i:05}")).collect();
    let records = keys
        .iter()
        .enumerate()
        .map(|(i, k)| record(k, Some(&value), "node-a", 1, i as u64 + 1))
        .collect();
    data.persist(&Batch {
        records,
        ..Batch::default()
    })
    .unwrap();
    assert!(!data.compact_if_bloated().unwrap(), "all of it is live");
    let full = std::fs::metadata(&file).unwrap().len();
    data.persist(&Batch {
        removed: keys[100..].iter().map(|k| Key::from(k.as_str())).collect(),
        ..Batch::default()
    })
    .unwrap();
    assert!(data.compact_if_bloated().unwrap(), "99% removed");
    let compacted = std::fs::metadata(&file).unwrap().len();
    assert!(
        compacted * 4 < full,
        "{full} bytes before, {compacted} after"
    );
    assert!(!data.compact_if_bloated().unwrap(), "nothing left to gain");
    drop(data);
    let loaded = DataDir::open(tmp.path(), &me()).unwrap().load().unwrap();
    let kept: Vec<&str> = loaded.records.iter().map(|r| &*r.key).collect();
    assert_eq!(
        kept,
        keys[..100].iter().map(String::as_str).collect::<Vec<_>>()
    );
}

/// A file of format 3 keeps a row per key in a `records` table: opened by
/// this build, its rows move into blocks and the file is marked with the
/// current format (so an older build refuses it rather than finding no records), with
/// every record read back, and the log of its last run applied over them.
#[test]
fn a_format_3_file_is_converted_when_opened() {
    const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const ROWS: u64 = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), &me()).unwrap());
    {
        let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut rows = tx.open_table(RECORDS).unwrap();
            for seq in 1..=ROWS {
                let row = raw_record(1, seq, 1, b"n", format!("value {seq}").as_bytes());
                rows.insert(format!("k{seq:06}").as_str(), row.as_slice())
                    .unwrap();
            }
            let mut meta = tx.open_table(META).unwrap();
            meta.insert("format", &3u32.to_le_bytes()[..]).unwrap();
            // The last run's log rewrote the first key.
            let row = raw_record(1, ROWS + 1, 1, b"n", b"rewritten");
            tx.open_table(LOG)
                .unwrap()
                .insert(0, log_put("k000001", &row).as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    let loaded = data.load().unwrap();
    assert_eq!(loaded.records.len(), ROWS as usize);
    for (i, r) in loaded.records.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(&*r.key, format!("k{seq:06}"));
        if seq == 1 {
            assert_eq!(r.value.as_deref(), Some(&b"rewritten"[..]));
            continue;
        }
        assert_eq!(r.version.seq, seq);
        assert_eq!(r.value.as_deref(), Some(format!("value {seq}").as_bytes()));
    }
    drop(data);
    let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(
        matches!(
            tx.open_table(RECORDS),
            Err(redb::TableError::TableDoesNotExist(_))
        ),
        "the row-per-key table is gone"
    );
    let format = tx
        .open_table(META)
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap()
        .value()
        .to_vec();
    assert_eq!(format, FORMAT_VERSION.to_le_bytes());
}

/// The log's table, and one entry of it putting `row` under `key`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

fn log_put(key: &str, row: &[u8]) -> Vec<u8> {
    let mut e = vec![1];
    e.extend_from_slice(&(key.len() as u32).to_le_bytes());
    e.extend_from_slice(key.as_bytes());
    e.extend_from_slice(row);
    e
}

/// The format of the file in `dir`.
fn format_of(dir: &std::path::Path) -> Vec<u8> {
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let tx = db.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    let format = meta.get("format").unwrap().unwrap().value().to_vec();
    format
}

/// A format-3 file with no row table but a log (a run that crashed before
/// its first large commit) is marked with the current format as soon as the log goes
/// into blocks, even if the node never starts: an older build would read
/// no records in them, and keep the watermarks that vouch for them.
#[test]
fn a_format_3_file_with_only_a_log_is_marked_when_its_log_is_folded() {
    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), &me()).unwrap());
    {
        let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format", &3u32.to_le_bytes()[..])
            .unwrap();
        let row = raw_record(1, 1, 1, b"n", b"v");
        tx.open_table(LOG)
            .unwrap()
            .insert(0, log_put("k", &row).as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    assert_eq!(data.load().unwrap().records.len(), 1);
    drop(data);
    assert_eq!(format_of(tmp.path()), FORMAT_VERSION.to_le_bytes());
}

/// A block holding a key at or above the next block's bound is corrupt
/// when read: accepted, a change of that key would go to the next block
/// and the key would be held twice.
#[test]
fn a_key_past_the_next_blocks_bound_is_corruption() {
    const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
    fn block(keys: &[&str]) -> Vec<u8> {
        let row = raw_record(1, 1, 1, b"n", b"v");
        let mut b = Vec::new();
        for k in keys {
            b.push(k.len() as u8);
            b.extend_from_slice(k.as_bytes());
            b.push(row.len() as u8);
            b.extend_from_slice(&row);
        }
        b
    }
    let with_blocks = |blocks: &[(&str, &[&str])]| {
        let tmp = tempfile::tempdir().unwrap();
        drop(DataDir::open(tmp.path(), &me()).unwrap());
        {
            let db = Database::create(tmp.path().join(FILE_NAME)).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(BLOCKS).unwrap();
                for (bound, keys) in blocks {
                    t.insert(*bound, block(keys).as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let data = DataDir::open(tmp.path(), &me()).unwrap();
        data.load().map(|l| l.records.len())
    };
    assert_eq!(with_blocks(&[("", &["a", "l"]), ("m", &["o"])]).unwrap(), 3);
    for (what, blocks) in [
        (
            "a key above the next bound",
            [("", &["a", "n"][..]), ("m", &["o"][..])],
        ),
        (
            "a key at the next bound",
            [("", &["a", "m"][..]), ("m", &["o"][..])],
        ),
        (
            "a key below its bound",
            [("", &["a"][..]), ("m", &["b"][..])],
        ),
    ] {
        assert!(
            matches!(with_blocks(&blocks), Err(OpenError::Corrupt { .. })),
            "{what}"
        );
    }
}

/// Bytes a file takes on disk (its allocated blocks).
fn on_disk(file: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

/// Records written in no order leave the file taking several times their
/// bytes on disk (blocks split, and every commit leaves the old copies of
/// the pages it changed as free pages): compacting rewrites it with full
/// blocks and keeps every record, mark and meta row. A compaction that
/// cannot write its copy fails and leaves the directory as it was; a copy
/// left by a compaction that did not finish is removed at the next open.
#[test]
fn a_file_written_in_no_order_is_compacted_and_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    let copy = tmp.path().join(gossipkv_durable::COMPACTING_NAME);
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    data.start(9).unwrap();
    let value = [3u8; 100];
    for b in 0..40u64 {
        let records = (0..1000)
            .map(|i| {
                let seq = b * 1000 + i + 1;
                // Spread over the key space, as an application's ids are.
                let n = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
                record(&format!("key-{n:012x}"), Some(&value), "node-a", 9, seq)
            })
            .collect();
        data.persist(&Batch {
            records,
            marks: vec![(Origin::new("node-a", 9), (b + 1) * 1000, 0)],
            ..Batch::default()
        })
        .unwrap();
    }
    let before = data.load().unwrap();
    assert_eq!(before.records.len(), 40_000);
    let data_bytes = 40_000 * (16 + 100);
    let bloated = on_disk(&file);
    assert!(bloated > 3 * data_bytes, "{bloated} bytes on disk");

    // The copy cannot be created (a directory is in its way).
    std::fs::create_dir(&copy).unwrap();
    assert!(data.compact_if_bloated().is_err());
    assert_eq!(data.load().unwrap().records, before.records);
    std::fs::remove_dir(&copy).unwrap();

    assert!(data.compact_if_bloated().unwrap());
    let compacted = on_disk(&file);
    assert!(
        compacted < 2 * data_bytes,
        "{bloated} bytes on disk before, {compacted} after"
    );
    assert!(!copy.exists());
    let after = data.load().unwrap();
    assert_eq!(after.records, before.records);
    assert_eq!(after.marks, before.marks);
    assert!(!data.compact_if_bloated().unwrap(), "nothing left to gain");
    data.stop_clean(7, 3).unwrap();

    std::fs::write(&copy, b"left by a crash").unwrap();
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    assert!(!copy.exists(), "a stale copy is removed");
    assert_eq!(data.meta().generation, 9);
    assert!(data.meta().clean);
    assert_eq!(data.meta().hlc_ceiling, 7);
    assert_eq!(data.load().unwrap().records, before.records);
}
