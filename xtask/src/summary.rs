//! Turning criterion results into the summary table and `summary.json`, and
//! merging the figures of other measurements (`cluster.json` of the
//! `cluster_bench` binary, `sim.json` of `cargo xtask sim`) into it.

use serde_json::{json, Map, Value};

use crate::criterion::{BenchResult, Throughput};

/// A named figure in `summary.json`: a stable top-level key whose value is the
/// per-second rate of one criterion benchmark, possibly converted (see [`FigureUnit`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NamedFigure {
    /// Top-level key in `summary.json`, e.g. `get_ops_1t`.
    pub(crate) key: &'static str,
    /// Criterion ids to take the figure from; the first one present wins.
    pub(crate) bench_ids: &'static [&'static str],
    /// How the figure is derived from the benchmark's rate.
    pub(crate) unit: FigureUnit,
}

impl NamedFigure {
    /// A figure equal to the benchmark's `throughput_per_s`.
    pub(crate) const fn per_second(key: &'static str, bench_ids: &'static [&'static str]) -> Self {
        NamedFigure {
            key,
            bench_ids,
            unit: FigureUnit::PerSecond,
        }
    }

    /// A figure in megabytes (10^6 bytes) per second, from a benchmark that
    /// declares `Throughput::Bytes`.
    pub(crate) const fn megabytes_per_second(
        key: &'static str,
        bench_ids: &'static [&'static str],
    ) -> Self {
        NamedFigure {
            key,
            bench_ids,
            unit: FigureUnit::MegabytesPerSecond,
        }
    }
}

/// How a [`NamedFigure`] is derived from its benchmark's [`Row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FigureUnit {
    /// The row's `throughput_per_s` as is (elements, bytes or iterations per second).
    PerSecond,
    /// The row's bytes per second divided by 10^6. Only rows in `bytes/s`
    /// qualify; another unit means the benchmark changed, so no figure.
    MegabytesPerSecond,
}

impl FigureUnit {
    /// The figure for `row`, or `None` when the row's unit does not convert.
    pub(crate) fn convert(self, row: &Row) -> Option<f64> {
        match self {
            FigureUnit::PerSecond => Some(row.throughput_per_s),
            FigureUnit::MegabytesPerSecond => {
                (row.unit == BYTES_PER_S).then(|| row.throughput_per_s / 1e6)
            }
        }
    }
}

/// Stable named figures. Add a row here to publish another top-level key.
///
/// Unless converted, the value is the benchmark's `throughput_per_s`:
/// elements (or bytes) per second when the benchmark declares a throughput,
/// else iterations per second. The `storage/*_1m` benchmarks run on
/// `GOSSIPKV_BENCH_KEYS` keys (one million, 100,000 with `--quick`).
pub(crate) const NAMED_FIGURES: &[NamedFigure] = &[
    NamedFigure::per_second("get_ops_1t", &["storage/get_1m"]),
    NamedFigure::per_second("get_ops_2t", &["storage/get_1m_2threads"]),
    NamedFigure::per_second("set_ops_1t", &["storage/set_1m"]),
    NamedFigure::per_second("baseline_get_ops_1t", &["storage/baseline_get_1m"]),
    NamedFigure::per_second("baseline_get_ops_2t", &["storage/baseline_get_1m_2threads"]),
    NamedFigure::per_second("baseline_set_ops_1t", &["storage/baseline_set_1m"]),
    NamedFigure::per_second("merge_records_per_s", &["storage/merge"]),
    NamedFigure::per_second("resync_records_per_s", &["storage/resync_full_20k"]),
    NamedFigure::megabytes_per_second("encode_mb_per_s", &["codec/encode_synack_64k"]),
    NamedFigure::megabytes_per_second("decode_mb_per_s", &["codec/decode_synack_64k"]),
    NamedFigure::megabytes_per_second("seal_mb_per_s_1400", &["codec/seal_synack_1400"]),
    NamedFigure::megabytes_per_second("open_mb_per_s_1400", &["codec/open_synack_1400"]),
];

/// Top-level keys `summary.json` should have after a full `cargo xtask bench`
/// (and `cargo xtask sim`); the ones absent are listed at the end of the run.
pub(crate) const REQUIRED_KEYS: &[&str] = &[
    "get_ops_1t",
    "get_ops_2t",
    "set_ops_1t",
    "baseline_get_ops_1t",
    "baseline_set_ops_1t",
    "merge_records_per_s",
    "encode_mb_per_s",
    "decode_mb_per_s",
    "bytes_per_key_1m",
    "bytes_per_key_1m_40b_keys",
    "memory_counted_per_rss_1m",
    "memory_counted_per_rss_1m_40b_keys",
    "max_bytes_peak_over_budget",
    "max_bytes_peak_over_budget_n2",
    "propagation_p50_ms_n10",
    "propagation_p99_ms_n10",
    "propagation_p50_ms_n100",
    "propagation_p50_ms_n10_loaded",
    "idle_bytes_per_node_round_n10",
    "propagation_p50_ratio_keyed_n10",
    "sealed_overhead_bytes",
    "unvalidated_answer_ratio",
    "idle_bytes_per_node_round_n100",
    "sim_rounds_n1000_pull",
    "sim_rounds_n10000_pull",
    "bulk_10k_keys_n10_ms",
    "late_join_ms_20k",
    "cold_burst_ms_2k",
    "heal_ms_100k",
    "bulk_10k_keys_n10_bytes",
    "max_value_bytes_replicated",
    "fsync_per_s",
    "durable_set_ops_1t",
    "durable_set_ops_4t",
    "durable_group_commit_ratio_4t",
    "interval_set_ratio",
    "restart_ms_1m",
    "disk_bytes_per_key_1m",
    "disk_bytes_per_key_shuffled_1m",
    "disk_file_len_per_key_1m",
    "restart_ms_shuffled_1m",
    "ttl_expiry_late_ms_max",
    "ttl_expiry_extra_datagrams",
    "ttl_gossip_bytes_per_key_s",
    "ephemeral_hidden_ms_max",
    "ephemeral_hidden_after_detection_ms_max",
    "retired_origin_digest_entries",
];

/// [`Row::unit`] of a benchmark declaring `Throughput::Bytes`.
const BYTES_PER_S: &str = "bytes/s";

/// One summarized benchmark.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Criterion benchmark id.
    pub(crate) id: String,
    /// Mean time per iteration, in nanoseconds.
    pub(crate) mean_ns: f64,
    /// Rate per second in `unit`.
    pub(crate) throughput_per_s: f64,
    /// `elements/s`, `bytes/s` or, without a declared throughput, `iterations/s`.
    pub(crate) unit: &'static str,
}

impl Row {
    /// Summarizes one criterion result.
    pub(crate) fn from_result(result: &BenchResult) -> Row {
        let (per_iter, unit) = match result.throughput {
            Some(Throughput::Elements(n)) => (n as f64, "elements/s"),
            Some(Throughput::Bytes(n)) => (n as f64, BYTES_PER_S),
            None => (1.0, "iterations/s"),
        };
        let throughput_per_s = if result.mean_ns > 0.0 {
            per_iter * 1e9 / result.mean_ns
        } else {
            0.0
        };
        Row {
            id: result.id.clone(),
            mean_ns: result.mean_ns,
            throughput_per_s,
            unit,
        }
    }
}

/// Summarizes all results, in the given order.
pub(crate) fn rows(results: &[BenchResult]) -> Vec<Row> {
    results.iter().map(Row::from_result).collect()
}

/// Maps rows to the named figures of `table` that have a matching benchmark
/// (whose unit converts, see [`FigureUnit::convert`]).
pub(crate) fn named_figures(rows: &[Row], table: &[NamedFigure]) -> Vec<(&'static str, f64)> {
    table
        .iter()
        .filter_map(|figure| {
            figure.bench_ids.iter().find_map(|id| {
                let row = rows.iter().find(|row| row.id == *id)?;
                let value = figure.unit.convert(row);
                if value.is_none() {
                    eprintln!(
                        "warning: named figure `{}` cannot be taken from `{id}` ({}); skipped",
                        figure.key, row.unit
                    );
                }
                value.map(|value| (figure.key, value))
            })
        })
        .collect()
}

/// Builds `summary.json`: one entry per benchmark id,
/// `{"mean_ns": .., "throughput_per_s": .., "unit": ..}`, plus the named
/// figures of `table` as top-level numbers.
pub(crate) fn to_json(rows: &[Row], table: &[NamedFigure]) -> Value {
    let mut map = Map::new();
    for row in rows {
        map.insert(
            row.id.clone(),
            json!({
                "mean_ns": row.mean_ns,
                "throughput_per_s": row.throughput_per_s,
                "unit": row.unit,
            }),
        );
    }
    for (key, value) in named_figures(rows, table) {
        if map.contains_key(key) {
            eprintln!("warning: named figure `{key}` clashes with a benchmark id; skipped");
            continue;
        }
        map.insert(key.to_owned(), json!(value));
    }
    Value::Object(map)
}

/// Copies every top-level entry of the JSON object `figures` into the
/// top level of `summary`, replacing figures of the same name. An entry whose
/// key is a criterion benchmark id (an object in `summary`) is skipped with a
/// warning. Returns how many entries were merged.
pub(crate) fn merge_figures(summary: &mut Value, figures: &Value, source: &str) -> usize {
    let (Some(summary), Some(figures)) = (summary.as_object_mut(), figures.as_object()) else {
        eprintln!("warning: {source} is not a JSON object; not merged");
        return 0;
    };
    let mut merged = 0;
    for (key, value) in figures {
        if summary.get(key).is_some_and(Value::is_object) {
            eprintln!("warning: `{key}` of {source} clashes with a benchmark id; skipped");
            continue;
        }
        summary.insert(key.clone(), value.clone());
        merged += 1;
    }
    merged
}

/// The keys of `required` that `summary` lacks (or holds as `null`), in order.
pub(crate) fn missing_keys(summary: &Value, required: &[&'static str]) -> Vec<&'static str> {
    required
        .iter()
        .copied()
        .filter(|key| summary.get(key).is_none_or(Value::is_null))
        .collect()
}

/// Renders the top-level figures of `summary` (every entry that is neither a
/// criterion benchmark row nor a list such as `sim_runs`): the `required` keys first, in their order
/// (`missing` for absent ones), then the others sorted by name.
pub(crate) fn figures_table(summary: &Value, required: &[&str]) -> String {
    let empty = Map::new();
    let map = summary.as_object().unwrap_or(&empty);
    let mut rows: Vec<(String, String)> = required
        .iter()
        .map(|key| {
            let cell = map.get(*key).map_or("missing".to_owned(), format_figure);
            ((*key).to_owned(), cell)
        })
        .collect();
    let mut others: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(key, value)| {
            !value.is_object() && !value.is_array() && !required.contains(&key.as_str())
        })
        .collect();
    others.sort_by(|a, b| a.0.cmp(b.0));
    rows.extend(
        others
            .into_iter()
            .map(|(k, v)| (k.clone(), format_figure(v))),
    );

    let w0 = rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:<w0$}  {:>w1$}\n", "figure", "value");
    out.push_str(&format!("{}  {}\n", "-".repeat(w0), "-".repeat(w1)));
    for (key, cell) in &rows {
        out.push_str(&format!("{key:<w0$}  {cell:>w1$}\n"));
    }
    out
}

/// A figure's cell: whole numbers without decimals, others with up to
/// three significant decimals; non-numbers as JSON.
pub(crate) fn format_figure(value: &Value) -> String {
    match value.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
        None => value.to_string(),
    }
}

/// Renders the aligned summary table.
pub(crate) fn table(rows: &[Row]) -> String {
    let header = ["benchmark", "mean", "throughput"];
    let cells: Vec<[String; 3]> = rows
        .iter()
        .map(|row| {
            [
                row.id.clone(),
                format_duration_ns(row.mean_ns),
                format_rate(row.throughput_per_s, row.unit),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |c: [&str; 3]| {
        out.push_str(&format!(
            "{:<w0$}  {:>w1$}  {:>w2$}\n",
            c[0],
            c[1],
            c[2],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        ));
    };
    line(header);
    let rules = widths.map(|w| "-".repeat(w));
    line([&rules[0], &rules[1], &rules[2]]);
    for row in &cells {
        line([&row[0], &row[1], &row[2]]);
    }
    out
}

/// Formats a duration given in nanoseconds with a readable unit.
pub(crate) fn format_duration_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.2} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// Formats a per-second rate with an SI prefix, e.g. `12.35 M elements/s`.
pub(crate) fn format_rate(per_s: f64, unit: &str) -> String {
    let (value, prefix) = if per_s >= 1e9 {
        (per_s / 1e9, "G")
    } else if per_s >= 1e6 {
        (per_s / 1e6, "M")
    } else if per_s >= 1e3 {
        (per_s / 1e3, "K")
    } else {
        (per_s, "")
    };
    if prefix.is_empty() {
        format!("{value:.2} {unit}")
    } else {
        format!("{value:.2} {prefix} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, mean_ns: f64, throughput: Option<Throughput>) -> BenchResult {
        BenchResult {
            id: id.to_owned(),
            mean_ns,
            throughput,
        }
    }

    #[test]
    fn rates_follow_declared_throughput() {
        let r = Row::from_result(&result("a", 50.0, Some(Throughput::Elements(10))));
        assert_eq!(r.unit, "elements/s");
        assert!((r.throughput_per_s - 2e8).abs() < 1.0);
        let r = Row::from_result(&result("b", 1000.0, Some(Throughput::Bytes(1024))));
        assert_eq!(r.unit, "bytes/s");
        assert!((r.throughput_per_s - 1.024e9).abs() < 1.0);
        let r = Row::from_result(&result("c", 4.0, None));
        assert_eq!(r.unit, "iterations/s");
        assert!((r.throughput_per_s - 2.5e8).abs() < 1.0);
    }

    #[test]
    fn json_has_entries_and_named_figures() {
        let rows = rows(&[
            result("storage/get", 100.0, Some(Throughput::Elements(1))),
            result("codec/encode", 10.0, None),
        ]);
        let table = [
            NamedFigure::per_second("get_ops_1t", &["storage/get_1t", "storage/get"]),
            NamedFigure::per_second("missing_figure", &["nope"]),
        ];
        let json = to_json(&rows, &table);
        assert_eq!(json["storage/get"]["mean_ns"], 100.0);
        assert_eq!(json["storage/get"]["unit"], "elements/s");
        assert_eq!(json["codec/encode"]["throughput_per_s"], 1e8);
        assert_eq!(json["get_ops_1t"], 1e7);
        assert!(json.get("missing_figure").is_none());
    }

    #[test]
    fn default_table_maps_benchmark_ids() {
        let rows = rows(&[
            result("storage/get_1m", 20.0, None),
            result(
                "storage/get_1m_2threads",
                1000.0,
                Some(Throughput::Elements(2000)),
            ),
            result(
                "codec/encode_synack_64k",
                1000.0,
                Some(Throughput::Bytes(61_000)),
            ),
            result(
                "codec/decode_synack_64k",
                2000.0,
                Some(Throughput::Bytes(61_000)),
            ),
        ]);
        let figures = named_figures(&rows, NAMED_FIGURES);
        let expected = [
            ("get_ops_1t", 5e7),
            ("get_ops_2t", 2e9),
            ("encode_mb_per_s", 61_000.0),
            ("decode_mb_per_s", 30_500.0),
        ];
        assert_eq!(figures.len(), expected.len(), "{figures:?}");
        for ((key, value), (want_key, want)) in figures.iter().zip(expected) {
            assert_eq!(*key, want_key);
            assert!(
                (value - want).abs() < 1e-6 * want,
                "{key}: {value} != {want}"
            );
        }
        let keys: Vec<&str> = NAMED_FIGURES.iter().map(|f| f.key).collect();
        for key in ["set_ops_1t", "baseline_get_ops_1t", "baseline_set_ops_1t"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(keys.contains(&"merge_records_per_s"));
    }

    #[test]
    fn megabytes_need_a_byte_throughput() {
        let table = [NamedFigure::megabytes_per_second("mb", &["a", "b"])];
        let rows = rows(&[
            result("a", 100.0, Some(Throughput::Elements(1))),
            result("b", 1000.0, Some(Throughput::Bytes(5_000))),
        ]);
        assert_eq!(named_figures(&rows, &table), vec![("mb", 5_000.0)]);
        let rows = rows[..1].to_vec();
        assert!(named_figures(&rows, &table).is_empty());
    }

    #[test]
    fn merging_figures_keeps_benchmark_rows() {
        let mut summary = json!({
            "storage/get": {"mean_ns": 1.0},
            "get_ops_1t": 5.0,
            "old": 1.0,
        });
        let figures = json!({
            "propagation_p50_ms_n10": 1.5,
            "old": 2.0,
            "storage/get": 3.0,
        });
        assert_eq!(merge_figures(&mut summary, &figures, "test"), 2);
        assert_eq!(summary["propagation_p50_ms_n10"], 1.5);
        assert_eq!(summary["old"], 2.0);
        assert_eq!(summary["storage/get"]["mean_ns"], 1.0);
        assert_eq!(summary["get_ops_1t"], 5.0);
        assert_eq!(merge_figures(&mut summary, &json!([1, 2]), "test"), 0);
    }

    #[test]
    fn missing_keys_are_listed_in_order() {
        let summary = json!({"b": 1.0, "c": null, "d": 2.0});
        assert_eq!(missing_keys(&summary, &["a", "b", "c"]), vec!["a", "c"]);
        let all: Map<String, Value> = REQUIRED_KEYS
            .iter()
            .map(|k| ((*k).to_owned(), json!(1.0)))
            .collect();
        assert!(missing_keys(&Value::Object(all), REQUIRED_KEYS).is_empty());
        assert!(REQUIRED_KEYS.contains(&"sim_rounds_n10000_pull"));
        assert!(REQUIRED_KEYS.contains(&"max_value_bytes_replicated"));
    }

    #[test]
    fn figures_table_lists_required_then_extras() {
        let summary = json!({
            "storage/get": {"mean_ns": 1.0},
            "sim_runs": [{"nodes": 1000, "rounds": 4.0}],
            "zeta": 0.5,
            "alpha": 1234567.891,
            "get_ops_1t": 12.0,
        });
        let text = figures_table(&summary, &["get_ops_1t", "sim_rounds_n1000_pull"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(
            lines[2].starts_with("get_ops_1t") && lines[2].ends_with(" 12"),
            "{text}"
        );
        assert!(lines[3].ends_with("missing"), "{text}");
        assert!(
            lines[4].starts_with("alpha") && lines[4].ends_with("1234567.9"),
            "{text}"
        );
        assert!(
            lines[5].starts_with("zeta") && lines[5].ends_with("0.500"),
            "{text}"
        );
        assert!(!text.contains("storage/get"), "{text}");
        assert!(!text.contains("sim_runs"), "{text}");
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
    }

    #[test]
    fn table_is_aligned() {
        let rows = rows(&[
            result("storage/get", 123.4, Some(Throughput::Elements(1))),
            result("codec/encode/a-much-longer-id", 2_500_000.0, None),
        ]);
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(text.contains("123.40 ns"), "{text}");
        assert!(text.contains("2.50 ms"), "{text}");
        assert!(text.contains("8.10 M elements/s"), "{text}");
        assert!(text.contains("400.00 iterations/s"), "{text}");
    }
}
