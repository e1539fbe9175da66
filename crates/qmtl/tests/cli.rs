//! The `qmtl` binary as a user runs it: settings errors, the DAG Manager server and its CLI.

mod common;

use common::free_port;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use test_support::assert_eventually;

fn qmtl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qmtl"));
    command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    command.env_remove("RUST_LOG");
    command
}

#[test]
fn the_shipped_qmtl_yml_loads_and_an_unknown_key_exits_64_naming_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "dagmanager:\n  grpc_prot: 1\n").unwrap();
    let output = qmtl()
        .args([
            "--config",
            bad.to_str().unwrap(),
            "service",
            "dagmanager",
            "queue-stats",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dagmanager.grpc_prot"), "{stderr}");

    let output = qmtl()
        .args([
            "service",
            "dagmanager",
            "queue-stats",
            "--target",
            "127.0.0.1:1",
        ])
        .env("QMTL__DAGMANAGER__BOGUS", "1")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(64),
        "environment keys are checked too"
    );
    let output = qmtl()
        .args([
            "service",
            "dagmanager",
            "queue-stats",
            "--target",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "qmtl.yml loads; the closed port is the error"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("could not reach the DAG Manager"));
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Tokio tests only for `assert_eventually!`'s sleep: everything else here blocks, as a user's
// shell would.
#[tokio::test]
async fn the_server_runs_from_the_command_line_and_the_cli_diffs_an_example_then_it_stops_on_sigterm()
 {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, grpc, admin) = start_server(dir.path()).await;
    let target = format!("127.0.0.1:{grpc}");
    let (_exporter, exporter_port) = start_exporter(admin).await;
    assert_eq!(exported(exporter_port, "diff_requests_total"), Some(0.0));
    the_cli_diffs_an_example_twice_with_one_answer(&target);
    assert_eq!(
        exported(exporter_port, "diff_requests_total"),
        Some(2.0),
        "the exporter shows the live figures"
    );
    test_support::assert_promtool_clean(&exposition(exporter_port).unwrap_or_default());
    the_cli_reads_queue_stats_and_runs_gc(&target);
    stops_on_sigterm(&mut server).await;
    assert_eq!(
        exported(exporter_port, "dagmanager_up"),
        Some(0.0),
        "the exporter keeps serving and says the DAG Manager is away"
    );
}

/// `qmtl service dagmanager server` with its data under `dir`, once it logs that it listens;
/// the server and its gRPC and admin ports.
async fn start_server(dir: &std::path::Path) -> (Server, u16, u16) {
    let (grpc, admin) = (free_port(), free_port());
    let mut server = Server(
        qmtl()
            .args(["service", "dagmanager", "server"])
            .env("QMTL__DAGMANAGER__GRPC_PORT", grpc.to_string())
            .env("QMTL__DAGMANAGER__ADMIN_PORT", admin.to_string())
            .env("QMTL__DAGMANAGER__DATA_DIR", dir.join("data"))
            .env("QMTL__TELEMETRY__LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Read on a thread of its own, so that a server that hangs without a word fails the
    // deadline too; it reads to the end, so the log never fills the pipe nor finds it closed.
    let stdout = server.0.stdout.take().unwrap();
    let (log_lines, logged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = log_lines.send(line);
        }
    });
    let mut listening = None;
    assert_eventually!(
        {
            listening = listening.take().or_else(|| {
                logged
                    .try_iter()
                    .find(|line| line.contains("DAG Manager listening"))
            });
            listening.is_some()
        },
        Duration::from_secs(20),
        "the server did not start"
    );
    let listening = listening.unwrap_or_default();
    assert!(listening.contains(&grpc.to_string()), "{listening}");
    (server, grpc, admin)
}

/// The standalone exporter, next to the running DAG Manager, once it sees it; its port.
async fn start_exporter(admin: u16) -> (Server, u16) {
    let exporter_port = free_port();
    let exporter = Server(
        qmtl()
            .args(["service", "dagmanager", "metrics", "--port"])
            .arg(exporter_port.to_string())
            .args(["--target", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eventually!(
        exported(exporter_port, "dagmanager_up") == Some(1.0),
        Duration::from_secs(20),
        "the exporter did not see the DAG Manager"
    );
    (exporter, exporter_port)
}

fn the_cli_diffs_an_example_twice_with_one_answer(target: &str) {
    let diff = |world: &str| {
        qmtl()
            .args([
                "service",
                "dagmanager",
                "diff",
                "--file",
                "examples/ma-crossover.json",
            ])
            .args(["--target", target, "--world-id", world])
            .output()
            .unwrap()
    };
    let first = diff("w1");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let queue_map = printed["queue_map"].as_object().unwrap();
    assert_eq!(queue_map.len(), 4);
    assert!(
        queue_map
            .values()
            .all(|t| t.as_str().unwrap().starts_with("w1.backtest.btc_"))
    );
    let again = diff("w1");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap()["queue_map"],
        printed["queue_map"]
    );
}

fn the_cli_reads_queue_stats_and_runs_gc(target: &str) {
    let stats = qmtl()
        .args([
            "service",
            "dagmanager",
            "queue-stats",
            "--target",
            target,
            "--filter",
            "tag=btc;interval=60",
        ])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["sizes"].as_object().unwrap().len(), 4);
    let gc = qmtl()
        .args(["service", "dagmanager", "gc", "--target", target])
        .output()
        .unwrap();
    assert!(gc.status.success());
}

async fn stops_on_sigterm(server: &mut Server) {
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eventually!(
        server.0.try_wait().unwrap().is_some(),
        Duration::from_secs(15),
        "the server did not stop on SIGTERM"
    );
    // The status try_wait reaped, kept by the child.
    let status = server.0.wait().unwrap();
    assert!(status.success(), "a drained shutdown exits 0: {status}");
}

#[test]
fn qmtl_up_runs_the_stack_and_the_demo_and_sums_it_up() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = qmtl_up(dir.path(), &["--bars", "30", "--pace-ms", "5"]);
    let value = |series: &str| summary_value(&stdout, series);
    assert!(value("node_processed_total") > 0.0);
    assert_eq!(value("backfill_completed_total"), 2.0);
    assert_eq!(value("backfill_failure_total"), 0.0);
    assert_eq!(value("diff_requests_total"), 2.0);
    assert_eq!(
        value("compute_nodes_total"),
        6.0,
        "7 nodes submitted, price shared"
    );
    assert_eq!(value("runtime_events_total{source=\"queue\"}"), 30.0);
    assert!(stdout.contains("reused queue: ma-"), "{stdout}");
    assert!(stdout.contains("gateway stopped."), "{stdout}");
}

/// The body of `GET /metrics` on a local port (plain HTTP/1.0).
fn exposition(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(_, body)| body.to_owned()),
    )
}

/// A sample's value from `GET /metrics` on a local port.
fn exported(port: u16, series: &str) -> Option<f64> {
    exposition(port)?
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn qmtl_up_runs_the_demo_through_a_kafka_broker() {
    let broker = test_support::KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let stdout = qmtl_up(
        dir.path(),
        &[
            "--bars",
            "20",
            "--pace-ms",
            "20",
            "--kafka",
            &broker.bootstrap,
        ],
    );
    assert!(stdout.contains("on the Kafka broker at"), "{stdout}");
    let value = |series: &str| summary_value(&stdout, series);
    assert_eq!(
        value("runtime_events_total{source=\"queue\"}"),
        20.0,
        "every bar through the broker"
    );
    assert_eq!(value("backfill_completed_total"), 2.0);
    assert!(value("node_processed_total") > 0.0);
    assert!(stdout.contains("reused queue: ma-"), "{stdout}");
}

/// Runs `qmtl up` in `dir` with these arguments; its standard output, once it has succeeded.
fn qmtl_up(dir: &std::path::Path, args: &[&str]) -> String {
    let output = common::qmtl_up(dir, &[], args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// A series' value in `qmtl up`'s summary.
fn summary_value(stdout: &str, series: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in:\n{stdout}"))
}
