//! Traces as an operator sees them in a collector: a real OTLP collector (rotel, installed and
//! started by `scripts/tools/rotel.sh`) receives the spans of `qmtl up`'s three processes.

mod common;

use common::free_port;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use test_support::assert_eventually;

/// A span as the collector logged it.
#[derive(Debug, Clone, Default)]
struct Span {
    service: String,
    trace: String,
    parent: String,
    id: String,
    name: String,
    links: Vec<String>,
}

/// Parses rotel's detailed debug log: `ResourceSpans` blocks naming their `service.name`, then
/// `Span #n` blocks with `Trace ID`, `Parent ID`, `ID`, `Name` and `SpanLink`s.
fn parse(log: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut service = String::new();
    let mut in_link = false;
    for line in log.lines() {
        let line = line.trim();
        let value = |key: &str| {
            line.strip_prefix(key)
                .map(|rest| rest.trim_start().trim_start_matches(':').trim().to_owned())
        };
        if let Some(name) = line.strip_prefix("-> service.name: Str(") {
            service = name.trim_end_matches(')').to_owned();
        } else if line.starts_with("Span #") {
            spans.push(Span {
                service: service.clone(),
                ..Span::default()
            });
            in_link = false;
        } else if line.starts_with("SpanLink #") {
            in_link = true;
        } else if let Some(span) = spans.last_mut() {
            if in_link {
                if let Some(id) = value("-> ID:") {
                    span.links.push(id);
                }
            } else if let Some(v) = value("Trace ID") {
                span.trace = v;
            } else if let Some(v) = value("Parent ID") {
                span.parent = v;
            } else if let Some(v) = value("ID") {
                span.id = v;
            } else if let Some(v) = value("Name") {
                span.name = v;
            }
        }
    }
    spans
}

/// Names from a span up through its parents.
fn ancestry<'a>(span: &'a Span, by_id: &HashMap<&str, &'a Span>) -> Vec<(&'a str, &'a str)> {
    let mut chain = vec![(span.service.as_str(), span.name.as_str())];
    let mut current = span;
    while let Some(parent) = by_id.get(current.parent.as_str()) {
        chain.push((parent.service.as_str(), parent.name.as_str()));
        current = parent;
    }
    chain
}

struct Collector {
    pid: String,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn start_collector(run_dir: &Path, http_port: u16) -> Collector {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/tools/rotel.sh");
    let output = Command::new("bash")
        .arg(script)
        .env("RUN_DIR", run_dir)
        .env("GRPC_PORT", free_port().to_string())
        .env("HTTP_PORT", http_port.to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the OTLP collector did not start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pid = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    Collector { pid }
}

fn qmtl_up(dir: &Path, endpoint: &str, bars: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--bars", bars, "--pace-ms", "25"];
    args.extend_from_slice(extra);
    common::qmtl_up(
        dir,
        &[("QMTL__TELEMETRY__OTEL_EXPORTER_ENDPOINT", endpoint)],
        &args,
    )
}

/// Runs `qmtl up` (5 bars, plus `extra`) exporting to a collector of its own, then reads the
/// collector's spans until `found` picks something out of them; after 20 s it fails, saying
/// `missing`.
async fn traced_run<T>(
    extra: &[&str],
    found: impl Fn(&[Span]) -> Option<T>,
    missing: &str,
) -> (Vec<Span>, T) {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let _collector = start_collector(&dir.path().join("rotel"), http_port);
    let endpoint = format!("http://127.0.0.1:{http_port}/v1/traces");
    let output = qmtl_up(dir.path(), &endpoint, "5", extra);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log_path = dir.path().join("rotel/server.log");
    let mut spans: Vec<Span>;
    let mut hit: Option<T>;
    assert_eventually!(
        {
            spans = parse(&std::fs::read_to_string(&log_path).unwrap_or_default());
            hit = found(&spans);
            hit.is_some()
        },
        Duration::from_secs(20),
        "{missing}; spans: {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name, &s.parent))
            .collect::<Vec<_>>()
    );
    let hit = hit.expect("assert_eventually! saw it");
    (spans, hit)
}

// Tokio tests only for `assert_eventually!`'s sleep in `traced_run`; the rest blocks.
#[tokio::test]
async fn one_trace_runs_from_the_sdk_through_the_gateway_into_the_dag_manager() {
    let (spans, diff_chain) = traced_run(
        &[],
        |spans| {
            let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
            spans
                .iter()
                .find(|s| s.name == "dagmanager.topic_create")
                .map(|s| {
                    ancestry(s, &by_id)
                        .into_iter()
                        .map(|(svc, name)| format!("{svc}:{name}"))
                        .collect::<Vec<_>>()
                })
                .filter(|chain| chain.last().is_some_and(|root| root == "sdk:sdk.submit"))
        },
        "no topic creation traced back to the SDK",
    )
    .await;
    // One trace: the SDK's submission, the Gateway's request and submission, the carry, the
    // DAG Manager's diff and its topic creation, each the parent of the next.
    assert_eq!(
        diff_chain,
        [
            "dagmanager:dagmanager.topic_create",
            "dagmanager:dagmanager.diff",
            "gateway:gateway.carry",
            "gateway:gateway.submit",
            "gateway:POST /strategies",
            "sdk:sdk.submit",
        ]
    );
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let diff = spans
        .iter()
        .find(|s| s.name == "dagmanager.topic_create")
        .and_then(|s| by_id.get(s.parent.as_str()))
        .unwrap();
    let submit = spans
        .iter()
        .find(|s| s.name == "sdk.submit" && s.trace == diff.trace);
    assert!(submit.is_some(), "the SDK's span shares the trace id");

    // The reader's node.process span continues, and links to, the producer's node.feed span.
    let process = spans
        .iter()
        .find(|s| s.name == "node.process")
        .expect("a node.process span");
    let producer = by_id
        .get(process.parent.as_str())
        .expect("node.process has its producer's span as parent");
    assert_eq!(producer.name, "node.feed");
    assert_eq!(producer.trace, process.trace);
    assert!(process.links.contains(&producer.id), "{process:?}");
}

#[test]
fn a_collector_that_is_down_drops_spans_counts_them_and_blocks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here.
    let endpoint = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let started = Instant::now();
    // Long enough (40 bars, 25 ms apart) that every process has tried to export by the summary.
    let output = qmtl_up(dir.path(), &endpoint, "40", &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("gateway_submissions_total{outcome=\"completed\"} 2"),
        "{stdout}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run took {:?}",
        started.elapsed()
    );
    // Exports never sit on the request path: with a 2 s export timeout against a closed port,
    // a blocked submission would take seconds; they stay under the 150 ms latency alert.
    let p95 = stdout.lines().find_map(|l| {
        l.trim()
            .strip_prefix("gateway_e2e_latency_p95 ")?
            .parse::<f64>()
            .ok()
    });
    assert!(
        p95.is_some_and(|ms| ms < 150.0),
        "gateway_e2e_latency_p95 {p95:?}\n{stdout}"
    );
    // Each service's summary shows its own count; every one has dropped spans.
    let dropped: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("otel_spans_dropped_total ")?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(dropped.len(), 3, "{stdout}");
    assert!(dropped.iter().all(|d| *d > 0.0), "{stdout}");
}

#[tokio::test]
async fn through_a_kafka_broker_the_consumer_span_continues_the_producers_from_the_record_headers()
{
    let broker = test_support::KafkaBroker::start();
    traced_run(
        &["--kafka", &broker.bootstrap],
        |spans| {
            let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
            spans
                .iter()
                .any(|s| {
                    s.name == "node.process"
                        && by_id
                            .get(s.parent.as_str())
                            .is_some_and(|p| p.name == "node.feed" && s.links.contains(&p.id))
                })
                .then_some(())
        },
        "no node.process span continued its producer's node.feed span",
    )
    .await;
}
