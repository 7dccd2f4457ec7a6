//! Reading criterion's saved results from `<target>/criterion`.
//!
//! For every benchmark criterion writes `<id dirs>/new/estimates.json` (the
//! statistics, times in nanoseconds) and `<id dirs>/new/benchmark.json` (the
//! id and the optional throughput per iteration).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context};
use serde_json::Value;

/// Throughput of one benchmark iteration, as declared with `Throughput::*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Throughput {
    /// Bytes processed per iteration (`Bytes` or `BytesDecimal`).
    Bytes(u64),
    /// Elements processed per iteration.
    Elements(u64),
}

/// One benchmark's result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchResult {
    /// Criterion's full id, e.g. `storage/get` or `codec/encode/1024`.
    pub(crate) id: String,
    /// Mean time of one iteration, in nanoseconds.
    pub(crate) mean_ns: f64,
    /// Declared throughput per iteration, if any.
    pub(crate) throughput: Option<Throughput>,
}

/// Collects all results under `criterion_dir`, sorted by id.
///
/// With `since`, results whose `estimates.json` is older than `since` are
/// skipped (stale results of benchmarks that no longer exist or did not run).
/// Fails with a clear message when no result is found.
pub(crate) fn collect(
    criterion_dir: &Path,
    since: Option<SystemTime>,
) -> anyhow::Result<Vec<BenchResult>> {
    let mut new_dirs = Vec::new();
    if criterion_dir.is_dir() {
        find_new_dirs(criterion_dir, &mut new_dirs)?;
    }
    let mut results = Vec::new();
    for dir in new_dirs {
        let estimates = dir.join("estimates.json");
        if let Some(since) = since {
            let modified = fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .with_context(|| format!("cannot stat {}", estimates.display()))?;
            if modified < since {
                continue;
            }
        }
        results.push(read_result(criterion_dir, &dir)?);
    }
    if results.is_empty() {
        bail!(
            "no criterion results found under {}{}",
            criterion_dir.display(),
            if since.is_some() {
                " from this run (did the benchmarks run? are there any?)"
            } else {
                " (run `cargo xtask bench` first)"
            }
        );
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(results)
}

/// Recursively finds directories named `new` that hold an `estimates.json`.
fn find_new_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == "new" && path.join("estimates.json").is_file() {
            out.push(path);
        } else if entry.file_name() != "report" {
            find_new_dirs(&path, out)?;
        }
    }
    Ok(())
}

/// Reads one benchmark's `new/estimates.json` and (optional) `new/benchmark.json`.
fn read_result(criterion_dir: &Path, new_dir: &Path) -> anyhow::Result<BenchResult> {
    let estimates = read_json(&new_dir.join("estimates.json"))?;
    let mean_ns = estimates
        .pointer("/mean/point_estimate")
        .and_then(Value::as_f64)
        .with_context(|| {
            format!(
                "{} has no mean.point_estimate",
                new_dir.join("estimates.json").display()
            )
        })?;

    let benchmark_file = new_dir.join("benchmark.json");
    let benchmark = if benchmark_file.is_file() {
        Some(read_json(&benchmark_file)?)
    } else {
        None
    };
    let id = benchmark
        .as_ref()
        .and_then(id_from_benchmark_json)
        .unwrap_or_else(|| id_from_path(criterion_dir, new_dir));
    let throughput = benchmark
        .as_ref()
        .and_then(|b| b.get("throughput"))
        .and_then(parse_throughput);
    Ok(BenchResult {
        id,
        mean_ns,
        throughput,
    })
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid JSON in {}", path.display()))
}

/// The benchmark id from `benchmark.json`: `full_id`, else rebuilt from its parts.
fn id_from_benchmark_json(benchmark: &Value) -> Option<String> {
    if let Some(full_id) = benchmark.get("full_id").and_then(Value::as_str) {
        return Some(full_id.to_owned());
    }
    let group = benchmark.get("group_id").and_then(Value::as_str)?;
    let parts: Vec<&str> = std::iter::once(group)
        .chain(benchmark.get("function_id").and_then(Value::as_str))
        .chain(benchmark.get("value_str").and_then(Value::as_str))
        .collect();
    Some(parts.join("/"))
}

/// The benchmark id from the directory layout: the path of `new`'s parent
/// relative to the criterion directory, with `/` separators.
fn id_from_path(criterion_dir: &Path, new_dir: &Path) -> String {
    let id_dir = new_dir.parent().unwrap_or(new_dir);
    let rel = id_dir.strip_prefix(criterion_dir).unwrap_or(id_dir);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses criterion's serialized `Throughput`, e.g. `{"Elements": 1}`.
fn parse_throughput(value: &Value) -> Option<Throughput> {
    let object = value.as_object()?;
    let (kind, amount) = object.iter().next()?;
    let amount = amount.as_u64()?;
    match kind.as_str() {
        "Bytes" | "BytesDecimal" => Some(Throughput::Bytes(amount)),
        "Elements" => Some(Throughput::Elements(amount)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh, empty scratch directory for one test.
    pub(crate) fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-test-{}-{}-{name}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes a fake criterion result like criterion 0.5 does.
    pub(crate) fn write_result(
        criterion_dir: &Path,
        dir_name: &str,
        benchmark_json: Option<&str>,
        mean_ns: f64,
    ) {
        let new_dir = criterion_dir.join(dir_name).join("new");
        fs::create_dir_all(&new_dir).unwrap();
        let estimate = |v: f64| {
            format!(
                r#"{{"confidence_interval":{{"confidence_level":0.95,"lower_bound":{v},"upper_bound":{v}}},"point_estimate":{v},"standard_error":0.5}}"#
            )
        };
        let estimates = format!(
            r#"{{"mean":{},"median":{},"median_abs_dev":{},"slope":null,"std_dev":{}}}"#,
            estimate(mean_ns),
            estimate(mean_ns),
            estimate(1.0),
            estimate(1.0)
        );
        fs::write(new_dir.join("estimates.json"), estimates).unwrap();
        if let Some(json) = benchmark_json {
            fs::write(new_dir.join("benchmark.json"), json).unwrap();
        }
        // Criterion also keeps `base` and `change` directories; they must be ignored.
        let base = criterion_dir.join(dir_name).join("base");
        fs::create_dir_all(&base).unwrap();
        fs::write(base.join("estimates.json"), "{}").unwrap();
    }

    #[test]
    fn collects_results_with_and_without_throughput() {
        let dir = scratch_dir("collect");
        write_result(
            &dir,
            "storage/get",
            Some(
                r#"{"group_id":"storage","function_id":"get","value_str":null,"throughput":{"Elements":1},"full_id":"storage/get","directory_name":"storage/get","title":"storage/get"}"#,
            ),
            50.0,
        );
        write_result(
            &dir,
            "codec/encode/1024",
            Some(
                r#"{"group_id":"codec","function_id":"encode","value_str":"1024","throughput":{"BytesDecimal":1024}}"#,
            ),
            1000.0,
        );
        write_result(&dir, "merge", None, 2.5);
        fs::create_dir_all(dir.join("report")).unwrap();

        let results = collect(&dir, None).unwrap();
        assert_eq!(
            results,
            vec![
                BenchResult {
                    id: "codec/encode/1024".into(),
                    mean_ns: 1000.0,
                    throughput: Some(Throughput::Bytes(1024)),
                },
                BenchResult {
                    id: "merge".into(),
                    mean_ns: 2.5,
                    throughput: None,
                },
                BenchResult {
                    id: "storage/get".into(),
                    mean_ns: 50.0,
                    throughput: Some(Throughput::Elements(1)),
                },
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_results_is_a_clear_error() {
        let dir = scratch_dir("empty");
        let missing = dir.join("criterion");
        let err = collect(&missing, None).unwrap_err().to_string();
        assert!(err.contains("no criterion results found under"), "{err}");
        assert!(err.contains(&missing.display().to_string()), "{err}");

        write_result(&missing, "old/bench", None, 1.0);
        let later = SystemTime::now() + std::time::Duration::from_secs(3600);
        let err = collect(&missing, Some(later)).unwrap_err().to_string();
        assert!(err.contains("no criterion results found under"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
