//! Replays the committed fuzz corpora and regressions on stable: every file
//! under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes
//! through its target's function, which must not panic.

use std::path::{Path, PathBuf};

use gossipkv_fuzz_targets::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn corpora_and_regressions_replay() {
    let mut total = 0;
    for (name, target) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).expect("read a corpus file");
                println!("{}", file.display());
                target(&data);
                total += 1;
            }
        }
    }
    println!("{total} inputs replayed");
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in TARGETS {
        let n = files(&fuzz_dir().join("corpus").join(name)).len();
        assert!(n > 0, "no corpus for the fuzz target {name}");
    }
}

#[test]
fn targets_take_trivial_inputs() {
    for (_, target) in TARGETS {
        target(&[]);
        target(&[0]);
        target(&[0xff; 64]);
        target(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }
}

#[test]
fn the_sealed_seeds_open_with_the_fuzz_keyring() {
    let ring = gossipkv_fuzz_targets::fuzz_keyring();
    let mut datagrams = 0;
    for file in files(&fuzz_dir().join("corpus").join("sealed")) {
        let data = std::fs::read(&file).expect("read a corpus file");
        if data.first() == Some(&0) && file.to_string_lossy().contains("seed-") {
            let mut buf = data[1..].to_vec();
            gossipkv_proto::seal::open_datagram(&ring, gossipkv_fuzz_targets::CLUSTER, &mut buf)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            datagrams += 1;
        }
    }
    assert!(datagrams > 0, "no sealed datagram among the seeds");
}

/// The cargo-fuzz binaries are built only with nightly (`cargo xtask
/// fuzz`); CI checks their lock file resolves, and this test that each
/// one's wrapper is exactly the call of its target's function here (which
/// `cargo test` builds), so a renamed or removed target cannot rot them.
#[test]
fn every_fuzz_binary_calls_its_target() {
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let call = format!(
            "libfuzzer_sys::fuzz_target!(|data: &[u8]| gossipkv_fuzz_targets::{name}(data));"
        );
        assert!(
            text.lines().any(|l| l.trim() == call),
            "{} does not call gossipkv_fuzz_targets::{name}",
            file.display()
        );
    }
    let wrappers = files(&fuzz_dir().join("fuzz_targets")).len();
    assert_eq!(
        wrappers,
        TARGETS.len(),
        "a wrapper without a target, or the reverse"
    );
}
