//! Opening a data directory: created once, then recognised; another
//! cluster's, another node's, a newer version's, a damaged one and one in
//! use are refused with their own error, and refusing changes nothing.

use std::path::Path;

use gossipkv_durable::{DataDir, Identity, OpenError, FILE_NAME, FORMAT_VERSION};
use redb::{Database, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn me() -> Identity {
    Identity::new("prod", "node-a")
}

#[test]
fn a_new_directory_is_created_then_recognised() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested/data");
    let data = DataDir::open(&dir, &me()).unwrap();
    let meta = *data.meta();
    assert!(meta.created);
    assert_eq!(
        (meta.generation, meta.hlc_ceiling, meta.clean),
        (0, 0, true)
    );
    assert!(dir.join(FILE_NAME).is_file());
    drop(data);
    let again = DataDir::open(&dir, &me()).unwrap();
    assert!(!again.meta().created);
}

#[test]
fn a_clean_stop_is_told_from_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    data.start(41).unwrap();
    data.stop_clean(1_000, 3).unwrap();
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    assert_eq!(
        (
            data.meta().generation,
            data.meta().hlc_ceiling,
            data.meta().incarnation,
            data.meta().clean
        ),
        (41, 1_000, 3, true)
    );
    // Generation 42 runs, and the handle goes away without a clean stop:
    // what a crash leaves behind.
    // Its batches raise the stored clock ceiling, never lower it.
    data.start(42).unwrap();
    for ceiling in [2_000, 1_500] {
        let batch = gossipkv_durable::Batch {
            hlc_ceiling: ceiling,
            ..Default::default()
        };
        data.persist(&batch).unwrap();
    }
    drop(data);
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    let meta = data.meta();
    assert_eq!((meta.generation, meta.clean), (42, false));
    assert_eq!(
        meta.hlc_ceiling, 2_000,
        "the greatest ceiling a batch stored"
    );
}

#[test]
fn another_clusters_or_nodes_directory_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = DataDir::open(tmp.path(), &me()).unwrap();
    data.start(5).unwrap();
    data.stop_clean(9, 0).unwrap();
    match DataDir::open(tmp.path(), &Identity::new("staging", "node-a")) {
        Err(OpenError::OtherCluster {
            found, expected, ..
        }) => assert_eq!((found.as_str(), expected.as_str()), ("prod", "staging")),
        other => panic!("{other:?}"),
    }
    match DataDir::open(tmp.path(), &Identity::new("prod", "node-b")) {
        Err(OpenError::OtherNode {
            found, expected, ..
        }) => assert_eq!((found.as_str(), expected.as_str()), ("node-a", "node-b")),
        other => panic!("{other:?}"),
    }
    let data = DataDir::open(tmp.path(), &me()).unwrap();
    assert_eq!((data.meta().generation, data.meta().clean), (5, true));
}

/// Rewrites one meta row of a closed data directory.
fn poke(dir: &Path, key: &str, value: &[u8]) {
    let db = Database::create(dir.join(FILE_NAME)).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META).unwrap().insert(key, value).unwrap();
    tx.commit().unwrap();
}

#[test]
fn a_newer_format_is_refused_with_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    drop(DataDir::open(tmp.path(), &me()).unwrap());
    poke(tmp.path(), "format", &(FORMAT_VERSION + 1).to_le_bytes());
    match DataDir::open(tmp.path(), &me()) {
        Err(
            e @ OpenError::NewerFormat {
                found, supported, ..
            },
        ) => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
            assert!(e.to_string().contains("reads up to"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn damaged_meta_rows_are_corrupt_not_a_panic() {
    for (key, value) in [
        ("format", &b"x"[..]),
        ("node_id", &[0xff, 0xfe][..]),
        ("generation", &[1, 2, 3][..]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        drop(DataDir::open(tmp.path(), &me()).unwrap());
        poke(tmp.path(), key, value);
        assert!(
            matches!(
                DataDir::open(tmp.path(), &me()),
                Err(OpenError::Corrupt { .. })
            ),
            "{key}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_database_is_corrupt_and_kept() {
    for garbage in [&b""[..], &b"not a database"[..], &[0xab; 8192][..]] {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(FILE_NAME);
        std::fs::write(&file, garbage).unwrap();
        let result = DataDir::open(tmp.path(), &me());
        if garbage.is_empty() {
            // An empty file is a new database.
            assert!(result.unwrap().meta().created);
            continue;
        }
        assert!(
            matches!(result, Err(OpenError::Corrupt { .. })),
            "{} bytes of garbage: {result:?}",
            garbage.len()
        );
        assert_eq!(std::fs::read(&file).unwrap(), garbage, "left as it was");
    }
}

#[test]
fn a_directory_in_use_is_refused_until_its_handle_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let first = DataDir::open(tmp.path(), &me()).unwrap();
    match DataDir::open(tmp.path(), &me()) {
        Err(e @ OpenError::InUse { .. }) => assert!(e.to_string().contains("in use"), "{e}"),
        other => panic!("{other:?}"),
    }
    drop(first);
    DataDir::open(tmp.path(), &me()).unwrap();
}

#[test]
fn a_path_that_cannot_be_a_directory_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        DataDir::open(&file.join("data"), &me()),
        Err(OpenError::Io { .. })
    ));
}
