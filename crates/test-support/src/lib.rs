//! Fixtures shared by the integration tests and benches: HTTP calls, a Prometheus exposition
//! parser, `assert_eventually!`, the spec vectors and synthetic DAGs with real node ids.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a test's HTTP request may take, connect included.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Status and body of an HTTP request, through the workspace's one HTTP client.
pub async fn http(method: &str, url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    // A client per call: tests run on many runtimes, and a pooled connection belongs to one.
    let client = kit::http::client(HTTP_TIMEOUT)?;
    let method = kit::http::Method::from_bytes(method.as_bytes())?;
    let response = client
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, text))
}

/// Status and body of a GET.
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    http("GET", url, "").await
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// family name -> TYPE.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> anyhow::Result<Exposition> {
        let mut exposition = Exposition::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| anyhow::anyhow!("bad TYPE line: {line}"))?;
                exposition.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| anyhow::anyhow!("bad sample line: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))?),
                None => (series, BTreeMap::new()),
            };
            exposition.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse()?,
            });
        }
        Ok(exposition)
    }

    /// The value of the series `name` whose labels include all of `labels` (an empty value
    /// asks for the label's absence, as in Prometheus).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels.iter().all(|(k, v)| {
                        s.labels.get(*k).map(String::as_str).unwrap_or_default() == *v
                    })
            })
            .map(|s| s.value)
    }

    /// The TYPE of a family.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Label names of the first sample of `name`.
    pub fn label_names(&self, name: &str) -> Option<Vec<String>> {
        self.samples
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.labels.keys().cloned().collect())
    }
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .ok_or_else(|| anyhow::anyhow!("bad labels: {text}"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| anyhow::anyhow!("unterminated label value: {text}"))?;
        // An empty value is no label at all, as Prometheus reads it.
        if !value.is_empty() {
            labels.insert(key.trim_start_matches(',').to_owned(), value);
        }
        rest = after[end + 1..].trim_start_matches(',');
    }
    Ok(labels)
}

/// Scrapes and parses `/metrics`.
pub async fn scrape(url: &str) -> anyhow::Result<Exposition> {
    let (status, body) = http_get(url).await?;
    anyhow::ensure!(status == 200, "scrape of {url} answered {status}");
    Exposition::parse(&body)
}

/// Retries an async condition until it holds or the time runs out.
#[macro_export]
macro_rules! assert_eventually {
    ($condition:expr, $timeout:expr, $($message:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $condition {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($message)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The text of a file under the repository's `testdata/`.
pub fn testdata(name: &str) -> String {
    let path = format!("{}/../../testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A node object with a correct node id (computed by `wire`, whatever its node type).
pub fn node(
    node_type: &str,
    interval: i64,
    period: i64,
    params: Value,
    inputs: &[String],
    tags: &[&str],
    code_hash: &str,
) -> Value {
    let mut node = json!({
        "node_type": node_type,
        "interval": interval,
        "period": period,
        "params": params,
        "inputs": inputs,
        "schema_compat_id": "s1",
        "schema_hash": "schema-1",
        "code_hash": code_hash,
        "tags": tags,
    });
    node["node_id"] =
        Value::from(wire::node_id_of(&node).expect("the node's fields are well-formed"));
    node
}

/// A DAG of `count` nodes: one price feed, then layers where each node reads one or two
/// earlier nodes. `salt` makes the ids distinct from another DAG of the same size.
pub fn synthetic_dag(count: usize, salt: &str) -> Value {
    let mut nodes: Vec<Value> = Vec::with_capacity(count);
    for i in 0..count {
        let node = if i == 0 {
            node(
                "PriceFeed",
                60,
                20,
                json!({"symbol": salt}),
                &[],
                &["btc", "ohlcv"],
                "price-v1",
            )
        } else {
            let id = |j: usize| nodes[j]["node_id"].as_str().unwrap_or_default().to_owned();
            let mut inputs = vec![id(i - 1)];
            if i >= 3 {
                inputs.push(id(i / 2));
            }
            node(
                "Indicator",
                60,
                (i % 30) as i64 + 1,
                json!({"step": i, "salt": salt}),
                &inputs,
                &["btc"],
                "indicator-v1",
            )
        };
        nodes.push(node);
    }
    json!({"schema_version": "v1", "nodes": nodes, "meta": {"strategy_version": "v1"}})
}

/// Replaces one node's field and recomputes nothing: for tests that need a wrong id.
pub fn with_field(mut dag: Value, index: usize, field: &str, value: Value) -> Value {
    dag["nodes"][index][field] = value;
    dag
}

/// Helpers the bench binaries share: percentiles and the machine facts every bench prints.
pub mod bench {
    use std::time::Duration;

    /// The `q` quantile (nearest rank) of sorted samples, in milliseconds.
    pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1000.0
    }

    /// CPU time (user + system) this process has used so far, from `/proc/self/stat`, at the
    /// kernel's tick (usually 10 ms). Zero where that file does not exist.
    pub fn process_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }

    /// `machine: <cpu>; <cores> cores; <rustc>; profile: <debug|release>`.
    pub fn machine_facts() -> String {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        format!("machine: {model}; {cores} cores; {rustc}; profile: {profile}")
    }
}

/// `promtool check metrics` on an exposition: the names it lints (a parse error, or promtool
/// missing, fails the test). `./scripts/test.sh` installs promtool (`scripts/tools/promtool.sh`).
pub fn promtool_lint(exposition: &str) -> Vec<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}): run ./scripts/tools/promtool.sh, or ./scripts/test.sh which does")
        });
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .unwrap_or_else(|e| panic!("promtool's stdin: {e}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool did not finish: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Vec::new(),
        // 3: the exposition parsed; these are lint findings, one per line: `name message`.
        Some(3) => text
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect(),
        _ => panic!("promtool check metrics refused the exposition:\n{text}\n---\n{exposition}"),
    }
}

/// Families whose names the shared spec fixes although promtool's lint objects: gauges named
/// `*_total`, a gauge named `*_count` and units abbreviated as `_ms`. Operators' dashboards and
/// alerts use these names, so they stay; every other family must lint clean.
pub const SPEC_NAMES_PROMTOOL_LINTS: &[&str] = &[
    "compute_nodes_total",
    "queues_total",
    "orphan_queue_total",
    "sentinel_gap_count",
    "diff_duration_ms_p95",
    "node_process_duration_ms",
    "controlbus_apply_ack_latency_ms",
];

/// Asserts an exposition parses with promtool and lints clean outside the spec's fixed names.
pub fn assert_promtool_clean(exposition: &str) {
    let findings = promtool_lint(exposition);
    let unexpected: Vec<&String> = findings
        .iter()
        .filter(|name| !SPEC_NAMES_PROMTOOL_LINTS.contains(&name.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool check metrics objects to families outside the spec's fixed names: {unexpected:?}"
    );
}

/// What a catalogue test expects of a family: its name, TYPE and label names.
pub type FamilySpec<'a> = (&'a str, &'a str, &'a [&'a str]);

/// Asserts every family is exposed with its type and exactly its label names.
pub fn assert_catalogue(exposition: &Exposition, families: &[FamilySpec<'_>]) {
    for (family, kind, labels) in families {
        assert_eq!(exposition.kind(family), Some(*kind), "{family}: type");
        let sample = match *kind {
            "histogram" => format!("{family}_count"),
            _ => (*family).to_owned(),
        };
        let mut expected: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        expected.sort();
        let mut found = exposition
            .label_names(&sample)
            .unwrap_or_else(|| panic!("{family}: no samples"));
        found.sort();
        assert_eq!(found, expected, "{family}: labels");
    }
}

/// Asserts an exposition carries its process's resource figures (the families every
/// Prometheus client library exports, which dashboards and alerts expect) and exactly one
/// `qmtl_build_info`, the given service's, at 1.
pub fn assert_process_and_build_info(exposition: &Exposition, service: &str) {
    let families: [FamilySpec<'_>; 5] = [
        ("process_resident_memory_bytes", "gauge", &[]),
        ("process_cpu_seconds_total", "counter", &[]),
        ("process_open_fds", "gauge", &[]),
        ("process_max_fds", "gauge", &[]),
        ("process_start_time_seconds", "gauge", &[]),
    ];
    assert_catalogue(exposition, &families);
    let value = |name: &str| exposition.value(name, &[]).unwrap_or(-1.0);
    assert!(
        value("process_resident_memory_bytes") > 1e6,
        "resident memory"
    );
    assert!(value("process_open_fds") >= 1.0, "open fds");
    assert!(
        value("process_max_fds") >= value("process_open_fds"),
        "max fds"
    );
    assert!(value("process_start_time_seconds") > 1.7e9, "start time");
    let builds: Vec<&Sample> = exposition
        .samples
        .iter()
        .filter(|s| s.name == "qmtl_build_info")
        .collect();
    assert_eq!(builds.len(), 1, "one qmtl_build_info: {builds:?}");
    if service != "dagmanager-metrics" {
        // The services' admin routers export their readiness; the exporter has none.
        assert_eq!(exposition.kind("qmtl_ready"), Some("gauge"), "qmtl_ready");
        let ready = exposition.value("qmtl_ready", &[]);
        assert!(
            matches!(ready, Some(v) if v == 0.0 || v == 1.0),
            "qmtl_ready {ready:?}"
        );
    } else {
        assert_eq!(
            exposition.kind("qmtl_ready"),
            None,
            "the DAG Manager's readiness is not the exporter's"
        );
    }
    assert_eq!(builds[0].value, 1.0);
    assert_eq!(
        builds[0].labels.get("service").map(String::as_str),
        Some(service)
    );
    assert!(
        builds[0]
            .labels
            .get("version")
            .is_some_and(|v| !v.is_empty()),
        "a version: {builds:?}"
    );
}

/// A port nothing listens on right now (another process may take it before it is bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A Kafka-protocol broker started by `scripts/tools/kafka.sh` (built once and cached) on a free
/// port, stopped when dropped. Fails the test loudly when it cannot start.
#[derive(Debug)]
pub struct KafkaBroker {
    pub port: u16,
    pub bootstrap: String,
    dir: std::path::PathBuf,
    // Removed once the broker is stopped (fields drop after `Drop::drop`).
    _temp: tempfile::TempDir,
}

fn kafka_script() -> String {
    format!(
        "{}/../../scripts/tools/kafka.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

impl KafkaBroker {
    pub fn start() -> KafkaBroker {
        // A port picked free can be taken by another test before the broker binds it: then
        // the broker starts again on another.
        let mut attempts = 0;
        loop {
            let port = free_port();
            let temp = tempfile::Builder::new()
                .prefix(&format!("qmtl-kafka-{port}-"))
                .tempdir()
                .unwrap_or_else(|e| panic!("no temporary directory for the broker: {e}"));
            let broker = KafkaBroker {
                port,
                bootstrap: format!("127.0.0.1:{port}"),
                dir: temp.path().to_path_buf(),
                _temp: temp,
            };
            attempts += 1;
            match broker.try_resume() {
                Ok(()) => return broker,
                Err(error) if attempts < 3 && error.contains("already in use") => continue,
                Err(error) => {
                    panic!("the Kafka broker did not start (scripts/tools/kafka.sh start): {error}")
                }
            }
        }
    }

    fn try_resume(&self) -> Result<(), String> {
        let output = std::process::Command::new("bash")
            .arg(kafka_script())
            .arg("start")
            .arg(self.port.to_string())
            .arg(&self.dir)
            .output()
            .map_err(|e| format!("kafka.sh start: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Stops the broker (its in-memory topics are gone with it).
    pub fn stop(&self) {
        let status = std::process::Command::new("bash")
            .arg(kafka_script())
            .arg("stop")
            .arg(&self.dir)
            .status()
            .unwrap_or_else(|e| panic!("kafka.sh stop: {e}"));
        assert!(status.success(), "kafka.sh stop failed");
    }

    /// Starts the broker again on the same port.
    pub fn resume(&self) {
        if let Err(error) = self.try_resume() {
            panic!("the Kafka broker did not start (scripts/tools/kafka.sh start): {error}");
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(kafka_script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
