//! The `memory` scenario: resident memory per entry of a [`Store`] of a
//! million keys, measured in a fresh process of this binary.

use std::fs;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use gossipkv_benches::{key, value, KEY_LEN, NOW_MS, VALUE_LEN};
use gossipkv_storage::{Origin, Store};

use crate::options::MEMORY_PROBE;
use crate::report::{progress, Report};

/// Keys inserted for the memory figure.
const MEMORY_KEYS: usize = 1_000_000;

/// Measures the memory per entry in a subprocess and records it as
/// `bytes_per_key_1m`; a failure is recorded in `report`.
pub(crate) fn scenario(report: &mut Report, t0: Instant) {
    progress(
        t0,
        format!("memory: inserting {MEMORY_KEYS} keys into a Store (in a fresh process)..."),
    );
    match memory_in_subprocess() {
        Ok((per_key, rss_growth)) => {
            progress(
                t0,
                format!(
                    "memory: RSS grew {:.1} MB: {per_key:.1} bytes per entry beyond its 80",
                    rss_growth / 1e6
                ),
            );
            report.put("bytes_per_key_1m", per_key);
        }
        Err(e) => report.fail(t0, "memory", e),
    }
}

/// The body of the hidden `--memory-probe` run: measures
/// [`memory_per_key`] and prints its two numbers on one line.
pub(crate) fn probe() -> Result<()> {
    let (per_key, rss_growth) = memory_per_key()?;
    println!("{per_key} {rss_growth}");
    Ok(())
}

/// Resident set size of this process, in bytes.
pub(crate) fn rss_now() -> Result<u64> {
    rss_bytes(page_size())
}

/// Resident set size of this process, in bytes, from `/proc/self/statm`.
fn rss_bytes(page_size: u64) -> Result<u64> {
    let statm = fs::read_to_string("/proc/self/statm").context("cannot read /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("/proc/self/statm has no resident field")?
        .parse()
        .context("/proc/self/statm resident field is not a number")?;
    Ok(pages * page_size)
}

/// The kernel page size, from the first `KernelPageSize:` line of
/// `/proc/self/smaps` (4096 if absent).
fn page_size() -> u64 {
    fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(4096, |kb| kb * 1024)
}

/// Runs [`memory_per_key`] in a fresh process of this binary, so that the
/// RSS growth is not blurred by memory freed by other scenarios (which the
/// allocator would reuse) and the million keys leave no footprint here.
fn memory_in_subprocess() -> Result<(f64, f64)> {
    match run_probe(MEMORY_PROBE, "memory")?[..] {
        [per_key, rss_growth] => Ok((per_key, rss_growth)),
        ref other => bail!("memory probe printed {other:?}"),
    }
}

/// Runs this executable with the hidden probe flag `flag` and returns the
/// numbers it printed on its one line; `what` names it in errors.
pub(crate) fn run_probe(flag: &str, what: &str) -> Result<Vec<f64>> {
    run_probe_with(flag, &[], what)
}

/// [`run_probe`] with arguments after the flag.
pub(crate) fn run_probe_with(
    flag: &str,
    args: &[&std::ffi::OsStr],
    what: &str,
) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let output = std::process::Command::new(&exe)
        .arg(flag)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "{what} probe failed ({}): {}{}",
        output.status,
        stdout.trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    stdout
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{what} probe printed {stdout:?}"))
}

/// Bytes of resident memory per entry of a [`Store`] of one million 16-byte
/// keys with 64-byte values, minus those 80 bytes; and the RSS growth in bytes.
fn memory_per_key() -> Result<(f64, f64)> {
    let page = page_size();
    let before = rss_bytes(page)?;
    let store = Store::new(Origin::new("memory", 1));
    for i in 0..MEMORY_KEYS {
        // `value(i)` is a fresh 64-byte allocation, owned by the store from here on.
        store.set(&key(i), value(i), NOW_MS);
    }
    ensure!(store.len() == MEMORY_KEYS, "the store lost keys");
    let after = rss_bytes(page)?;
    drop(store);
    let growth = after.saturating_sub(before) as f64;
    let per_entry = growth / MEMORY_KEYS as f64;
    Ok((per_entry - (KEY_LEN + VALUE_LEN) as f64, growth))
}
