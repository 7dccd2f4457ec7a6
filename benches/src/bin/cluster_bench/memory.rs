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

/// Length of the long keys measured beside the benchmark's 16-byte ones:
/// past the 23 bytes a key can hold inline.
const LONG_KEY_LEN: usize = 40;

/// Measures the memory per entry in a subprocess, for 16-byte keys
/// (`bytes_per_key_1m`) and 40-byte keys (`bytes_per_key_1m_40b_keys`),
/// with what the store's accounting counts over what the RSS grew
/// (`memory_counted_per_rss_1m*`: at least 1 when the budget's count is
/// not below the real cost); a failure is recorded in `report`.
pub(crate) fn scenario(report: &mut Report, t0: Instant) {
    for (key_len, suffix) in [(KEY_LEN, ""), (LONG_KEY_LEN, "_40b_keys")] {
        progress(
            t0,
            format!(
                "memory: inserting {MEMORY_KEYS} keys of {key_len} bytes into a Store (in a fresh process)..."
            ),
        );
        match memory_in_subprocess(key_len) {
            Ok(m) => {
                progress(
                    t0,
                    format!(
                        "memory: RSS grew {:.1} MB: {:.1} bytes per entry beyond its {}; counted {:.2}x that",
                        m.rss_growth / 1e6,
                        m.per_key,
                        key_len + VALUE_LEN,
                        m.counted_per_rss,
                    ),
                );
                report.put(format!("bytes_per_key_1m{suffix}"), m.per_key);
                report.put(
                    format!("memory_counted_per_rss_1m{suffix}"),
                    m.counted_per_rss,
                );
            }
            Err(e) => report.fail(t0, "memory", e),
        }
    }
}

/// The body of the hidden `--memory-probe` run: measures
/// [`memory_per_key`] and prints its numbers on one line.
pub(crate) fn probe(key_len: usize) -> Result<()> {
    let m = memory_per_key(key_len)?;
    println!("{} {} {}", m.per_key, m.rss_growth, m.counted_per_rss);
    Ok(())
}

/// What the memory probe measured.
struct Measured {
    /// Resident bytes per entry beyond its key and value.
    per_key: f64,
    /// Resident bytes the store's entries took.
    rss_growth: f64,
    /// [`Store::memory_usage`] over `rss_growth`.
    counted_per_rss: f64,
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
fn memory_in_subprocess(key_len: usize) -> Result<Measured> {
    let arg = key_len.to_string();
    match run_probe_with(MEMORY_PROBE, &[arg.as_ref()], "memory")?[..] {
        [per_key, rss_growth, counted_per_rss] => Ok(Measured {
            per_key,
            rss_growth,
            counted_per_rss,
        }),
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

/// Bytes of resident memory per entry of a [`Store`] of one million
/// `key_len`-byte keys (the benchmark's keys, padded in front) with 64-byte
/// values, minus the key and value bytes; the RSS growth; and what the
/// store counts ([`Store::memory_usage`]) over that growth.
fn memory_per_key(key_len: usize) -> Result<Measured> {
    ensure!(key_len >= KEY_LEN, "keys of at least {KEY_LEN} bytes");
    let pad = "k".repeat(key_len - KEY_LEN);
    let keys: Vec<String> = (0..MEMORY_KEYS)
        .map(|i| format!("{pad}{}", key(i)))
        .collect();
    let page = page_size();
    let before = rss_bytes(page)?;
    let store = Store::new(Origin::new("memory", 1));
    for (i, k) in keys.iter().enumerate() {
        // `value(i)` is a fresh 64-byte allocation, owned by the store from here on.
        store.set(k, value(i), NOW_MS);
    }
    ensure!(store.len() == MEMORY_KEYS, "the store lost keys");
    let after = rss_bytes(page)?;
    let counted = store.memory_usage() as f64;
    drop(store);
    let growth = after.saturating_sub(before) as f64;
    let per_entry = growth / MEMORY_KEYS as f64;
    Ok(Measured {
        per_key: per_entry - (key_len + VALUE_LEN) as f64,
        rss_growth: growth,
        counted_per_rss: counted / growth,
    })
}
