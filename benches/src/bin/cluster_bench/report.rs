//! The figures measured, progress lines, the JSON file and the final table.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// The numbers measured so far, and the scenarios that failed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    figures: BTreeMap<String, f64>,
    failures: Vec<String>,
}

impl Report {
    /// Records the figure `key` (replacing an earlier one of that name).
    pub(crate) fn put(&mut self, key: impl Into<String>, value: f64) {
        self.figures.insert(key.into(), value);
    }

    /// The figure `key`, if measured.
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.figures.get(key).copied()
    }

    /// Records `scenario` as failed and says so in a progress line.
    pub(crate) fn fail(&mut self, t0: Instant, scenario: &str, err: anyhow::Error) {
        progress(t0, format!("{scenario}: FAILED: {err:#}"));
        self.failures.push(scenario.to_owned());
    }

    /// [`fail`](Self::fail)s `scenario` if `result` is an error.
    pub(crate) fn check(&mut self, t0: Instant, scenario: &str, result: Result<()>) {
        if let Err(e) = result {
            self.fail(t0, scenario, e);
        }
    }

    /// Writes the figures to `out` as a flat JSON object (with
    /// `cluster_bench_quick` and `cluster_bench_seconds`), prints them as a
    /// table, and fails if any scenario failed.
    pub(crate) fn finish(&self, out: &Path, quick: bool, t0: Instant) -> Result<()> {
        let mut map = Map::new();
        for (key, value) in &self.figures {
            map.insert(key.clone(), json!(value));
        }
        map.insert("cluster_bench_quick".to_owned(), json!(quick));
        map.insert(
            "cluster_bench_seconds".to_owned(),
            json!(t0.elapsed().as_secs_f64()),
        );
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&Value::Object(map))?;
        fs::write(out, text + "\n").with_context(|| format!("cannot write {}", out.display()))?;

        println!();
        print!("{}", table(&self.figures));
        println!(
            "\nwrote {} in {:.1} s",
            out.display(),
            t0.elapsed().as_secs_f64()
        );
        if !self.failures.is_empty() {
            bail!("scenarios failed: {}", self.failures.join(", "));
        }
        Ok(())
    }
}

/// Prints a progress line, stamped with the seconds since `start`.
pub(crate) fn progress(start: Instant, line: impl AsRef<str>) {
    println!(
        "[{:>6.1}s] {}",
        start.elapsed().as_secs_f64(),
        line.as_ref()
    );
}

/// Renders the figures as an aligned two-column table.
fn table(figures: &BTreeMap<String, f64>) -> String {
    let width = figures.keys().map(String::len).max().unwrap_or(0).max(6);
    let mut out = format!("{:<width$}  {:>14}\n", "figure", "value");
    out.push_str(&format!("{}  {}\n", "-".repeat(width), "-".repeat(14)));
    for (key, value) in figures {
        let text = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        out.push_str(&format!("{key:<width$}  {text:>14}\n"));
    }
    out
}
