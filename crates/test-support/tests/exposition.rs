//! Holds our exposition parser to two other readers of the same text: the label values the
//! exporter was given, and what promtool reads from it (its OpenMetrics block importer, dumped).
//!
//! We parse exposition text ourselves because no maintained crate reads it correctly:
//! `prometheus-parse` splits a label set on ',' and '=' (a value holding either is dropped or cut,
//! and escapes are left in), and `openmetrics-parser` is LGPL-3.0 and reads OpenMetrics first.

use kit::metrics::MetricsRegistry;
use std::collections::BTreeSet;
use std::process::Command;
use test_support::Exposition;

/// Label values a careless parser gets wrong: separators, escapes, braces, Unicode, empty (which
/// Prometheus reads as no label at all). Not a backslash followed by a quote: the exporter
/// (metrics-exporter-prometheus 0.18) writes that pair unescaped, so no reader can recover it.
const HOSTILE: &[&str] = &[
    "plain",
    "with,comma",
    "a=b",
    "close}brace",
    "{open",
    "quote\"inside",
    "back\\slash",
    "trailing\\",
    "new\nline",
    "  spaced  out ",
    "ünïcødé 日本",
    "",
    "x\",y=\"z",
];

fn registry_with_hostile_labels() -> MetricsRegistry {
    let registry = MetricsRegistry::builder()
        .histogram_buckets("hostile_duration_seconds", &[0.005, 0.5, 5.0])
        .build()
        .expect("a registry");
    for (i, value) in HOSTILE.iter().enumerate() {
        registry
            .counter("hostile_events_total", &[("reason", *value), ("kind", "k")])
            .increment(i as u64 + 1);
        registry
            .gauge("hostile_level", &[("where", *value)])
            .set(i as f64 + 0.25);
        registry
            .histogram("hostile_duration_seconds", &[("op", *value)])
            .record(0.01 * (i as f64 + 1.0));
    }
    registry
}

#[test]
fn label_values_read_back_exactly_as_the_exporter_was_given_them() {
    let text = registry_with_hostile_labels().render();
    let exposition = Exposition::parse(&text).expect("the exposition parses");
    for (i, value) in HOSTILE.iter().enumerate() {
        assert_eq!(
            exposition.value("hostile_events_total", &[("reason", value), ("kind", "k")]),
            Some(i as f64 + 1.0),
            "counter with reason {value:?}"
        );
        assert_eq!(
            exposition.value("hostile_level", &[("where", value)]),
            Some(i as f64 + 0.25),
            "gauge with where {value:?}"
        );
        assert_eq!(
            exposition.value("hostile_duration_seconds_count", &[("op", value)]),
            Some(1.0),
            "histogram count with op {value:?}"
        );
        assert_eq!(
            exposition.value(
                "hostile_duration_seconds_bucket",
                &[("op", value), ("le", "+Inf")]
            ),
            Some(1.0),
            "histogram +Inf bucket with op {value:?}"
        );
    }
    assert_eq!(exposition.kind("hostile_events_total"), Some("counter"));
    assert_eq!(exposition.kind("hostile_level"), Some("gauge"));
    assert_eq!(
        exposition.kind("hostile_duration_seconds"),
        Some("histogram")
    );
}

#[test]
fn every_sample_reads_as_promtool_reads_it() {
    let text = registry_with_hostile_labels().render();
    let ours: BTreeSet<(String, String)> = Exposition::parse(&text)
        .expect("the exposition parses")
        .samples
        .iter()
        .map(|sample| {
            let mut series = format!("{{__name__={}", go_quote(&sample.name));
            for (name, value) in &sample.labels {
                series.push_str(&format!(", {name}={}", go_quote(value)));
            }
            series.push('}');
            (series, format_value(sample.value))
        })
        .collect();
    let promtools = promtool_view(&text);
    assert!(
        ours.len() > 3 * HOSTILE.len(),
        "too few samples: {}",
        ours.len()
    );
    let only_ours: Vec<_> = ours.difference(&promtools).collect();
    let only_promtools: Vec<_> = promtools.difference(&ours).collect();
    assert!(
        only_ours.is_empty() && only_promtools.is_empty(),
        "our parser and promtool disagree.\nonly ours: {only_ours:#?}\nonly promtool's: {only_promtools:#?}"
    );
}

#[test]
fn a_malformed_line_is_an_error_not_a_skipped_sample() {
    for bad in [
        "metric{label=\"unterminated} 1\n",
        "metric_without_value\n",
        "metric{l=\"v\"} not-a-number\n",
        "# TYPE only_a_name\n",
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted: {bad:?}");
    }
}

/// Series and value of every sample, as promtool reads the text: imported as OpenMetrics into
/// a block (every sample stamped with one time), then dumped.
fn promtool_view(exposition: &str) -> BTreeSet<(String, String)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut openmetrics = String::new();
    for line in exposition.lines().filter(|l| !l.trim().is_empty()) {
        openmetrics.push_str(line);
        if !line.starts_with('#') {
            openmetrics.push_str(" 1700000000");
        }
        openmetrics.push('\n');
    }
    openmetrics.push_str("# EOF\n");
    let input = dir.path().join("exposition.om");
    std::fs::write(&input, openmetrics).expect("the input file");
    let blocks = dir.path().join("blocks");
    run_promtool(&[
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        input.to_str().expect("a UTF-8 path"),
        blocks.to_str().expect("a UTF-8 path"),
    ]);
    // `tsdb dump` opens the directory as a database, which needs a WAL folder.
    std::fs::create_dir_all(blocks.join("wal")).expect("the wal folder");
    let dump = run_promtool(&["tsdb", "dump", blocks.to_str().expect("a UTF-8 path")]);
    dump.lines()
        .filter(|l| l.starts_with('{'))
        .map(|line| {
            // `{labels} value timestamp`: the value follows the last "} ".
            let (series, rest) = line.rsplit_once("} ").expect("a dumped sample");
            let value: f64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("a dumped value in {line}"));
            (format!("{series}}}"), format_value(value))
        })
        .collect()
}

fn run_promtool(args: &[&str]) -> String {
    let output = Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("promtool is not installed ({e}): run ./scripts/tools/promtool.sh, or ./scripts/test.sh which does")
    });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A string as Go's `%q` writes it, for the characters [`HOSTILE`] uses.
fn go_quote(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn format_value(value: f64) -> String {
    format!("{value:?}")
}
