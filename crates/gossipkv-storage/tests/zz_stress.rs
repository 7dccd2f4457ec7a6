use bytes::Bytes;
use gossipkv_storage::{Hlc, Origin, Record, Store, Version};
use std::sync::{Arc, Barrier};
use std::thread;

#[test]
fn race_write_merge() {
    let mut bad = 0;
    for round in 0..3000u64 {
        let store = Arc::new(Store::new(Origin::new("a", 1)));
        let barrier = Arc::new(Barrier::new(2));
        let remote = Origin::new("b", 1);
        let m = {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut merged = Vec::new();
                for i in 0..300u64 {
                    let r = Record {
                        key: "k".into(),
                        value: Some(Bytes::from_static(b"r")),
                        version: Version::new(
                            Hlc::new(10_000 + round * 1000 + i, 0),
                            &remote,
                            i + 1,
                        ),
                    };
                    store.merge(r.clone());
                    merged.push(r);
                }
                merged
            })
        };
        let w = {
            let (store, barrier) = (store.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                (0..300u64)
                    .map(|i| store.set("k", Bytes::from_static(b"l"), i))
                    .collect::<Vec<_>>()
            })
        };
        let merged = m.join().unwrap();
        let local = w.join().unwrap();
        let max = merged
            .iter()
            .chain(&local)
            .max_by(|a, b| a.version.cmp(&b.version))
            .unwrap();
        if &store.get_record("k").unwrap() != max {
            bad += 1;
        }
    }
    assert_eq!(bad, 0);
}

#[test]
fn intern_deadlock() {
    let store = Arc::new(Store::new(Origin::new("a", 1)));
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..200_000u64 {
                    let origin = if i % 2 == 0 {
                        Origin::new(format!("t{t}-{i}"), 1)
                    } else {
                        Origin::new("shared", 1)
                    };
                    let r = Record {
                        key: "k".into(),
                        value: None,
                        version: Version::new(Hlc::new(i, 0), &origin, i + 1),
                    };
                    store.merge(r);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
}
