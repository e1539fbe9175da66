//! Diff latency over gRPC on loopback, client and server in one process as the Gateway would call
//! them: a fresh 1000-node DAG (every queue created and persisted) and a fresh 5000-node one (50
//! chunks, more than the server's ack window); a repeated 1000-node and 100-node DAG (every queue
//! reused), both as the same text (served by the parse cache) and as a new text with the same nodes
//! (parsed and checked again); and a known DAG under a new strategy (its sentinel written). Prints
//! percentiles and machine facts.
//!
//! Run: `cargo bench -p dagmanager --bench diff_grpc [-- FILTER]`; with FILTER, only the cases
//! whose name contains it run (`=NAME`: only the case named NAME).

use dagclient::collect_diff;
use dagmanager::{App, DagManagerSettings};
use kit::shutdown::Shutdown;
use proto::DiffRequest;
use proto::diff_service_client::DiffServiceClient;
use std::time::{Duration, Instant};
use test_support::bench::percentile_ms;
use test_support::synthetic_dag;

/// The same allocator as the `qmtl` binary, so the figures are the service's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cases to run: all, those whose name contains the first non-flag argument, or the one it
/// names after `=`.
fn wanted(name: &str) -> bool {
    match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(filter) => match filter.strip_prefix('=') {
            Some(exact) => name == exact,
            None => name.contains(&filter),
        },
        None => true,
    }
}

/// `diff_duration_seconds` sum and count from the server's own `/metrics`.
async fn server_time(metrics_url: &str) -> (f64, f64) {
    let exposition = test_support::scrape(metrics_url)
        .await
        .expect("metrics scrape");
    (
        exposition
            .value("diff_duration_seconds_sum", &[])
            .unwrap_or(0.0),
        exposition
            .value("diff_duration_seconds_count", &[])
            .unwrap_or(0.0),
    )
}

/// Prints client-side percentiles and the mean time the server spent inside the diff itself
/// (from its histogram), so transport and engine can be told apart.
async fn report(name: &str, mut samples: Vec<Duration>, metrics_url: &str, before: (f64, f64)) {
    let after = server_time(metrics_url).await;
    let server_mean_ms = (after.0 - before.0) / (after.1 - before.1).max(1.0) * 1000.0;
    samples.sort_unstable();
    println!(
        "{name:<34} n={:<5} p50={:>8.3} ms  p95={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms  server mean={server_mean_ms:>7.3} ms",
        samples.len(),
        percentile_ms(&samples, 0.50),
        percentile_ms(&samples, 0.95),
        percentile_ms(&samples, 0.99),
        percentile_ms(&samples, 1.0),
    );
}

async fn diff(client: &mut Client, strategy_id: &str, dag_json: &str) -> Duration {
    let started = Instant::now();
    let collected = collect_diff(
        client,
        DiffRequest {
            strategy_id: strategy_id.to_owned(),
            dag_json: dag_json.to_owned(),
            world_id: "bench".into(),
            execution_domain: "backtest".into(),
            as_of: "2025-01-01".into(),
            ..DiffRequest::default()
        },
    )
    .await
    .expect("diff succeeds");
    let elapsed = started.elapsed();
    assert!(!collected.queue_map.is_empty());
    elapsed
}

type Client = DiffServiceClient<tonic::transport::Channel>;

/// Fresh DAGs: every queue created and persisted.
async fn fresh_diffs(client: &mut Client, metrics_url: &str) {
    for (nodes, count) in [(1000, 100), (5000, 20)] {
        let name = format!("fresh {nodes}-node diff");
        if !wanted(&name) {
            continue;
        }
        let before = server_time(metrics_url).await;
        let mut samples = Vec::new();
        for i in 0..count {
            let strategy = format!("fresh{nodes}-{i}");
            let dag = synthetic_dag(nodes, &strategy).to_string();
            samples.push(diff(client, &strategy, &dag).await);
        }
        report(&name, samples, metrics_url, before).await;
    }
}

/// The same text `count` times (served by the parse cache), every queue reused.
async fn repeated_diffs(
    client: &mut Client,
    metrics_url: &str,
    name: &str,
    strategy: &str,
    dag: &str,
    count: usize,
) {
    if !wanted(name) {
        return;
    }
    let before = server_time(metrics_url).await;
    let mut samples = Vec::new();
    for _ in 0..count {
        samples.push(diff(client, strategy, dag).await);
    }
    report(name, samples, metrics_url, before).await;
}

/// The same nodes in a text the parse cache has not seen: every check runs again.
async fn repeated_diffs_new_text(
    client: &mut Client,
    metrics_url: &str,
    name: &str,
    strategy: &str,
    nodes: usize,
    count: usize,
) {
    if !wanted(name) {
        return;
    }
    let before = server_time(metrics_url).await;
    let mut dag = synthetic_dag(nodes, strategy);
    let mut samples = Vec::new();
    for i in 0..count {
        dag["meta"]["submission"] = serde_json::json!(i);
        samples.push(diff(client, strategy, &dag.to_string()).await);
    }
    report(name, samples, metrics_url, before).await;
}

/// A known DAG under a new strategy each time: every queue reused, the sentinel written.
async fn new_strategies(client: &mut Client, metrics_url: &str, dag: &str) {
    let name = "1000 nodes reused, new strategy";
    if !wanted(name) {
        return;
    }
    let before = server_time(metrics_url).await;
    let mut samples = Vec::new();
    for i in 0..300 {
        samples.push(diff(client, &format!("new-strategy-{i}"), dag).await);
    }
    report(name, samples, metrics_url, before).await;
}

fn main() {
    println!("{}", test_support::bench::machine_facts());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = DagManagerSettings {
            grpc_port: 0,
            admin_port: 0,
            data_dir: dir.path().join("data"),
            ..DagManagerSettings::default()
        };
        let app = App::build(settings).await.expect("app builds");
        let address = app.grpc_addr().to_string();
        let metrics_url = format!("http://{}/metrics", app.admin_addr());
        let shutdown = Shutdown::new();
        let server = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let channel = dagclient::connect(&address).await.expect("connect");
        let mut client = DiffServiceClient::new(channel);
        let client = &mut client;
        let metrics_url = metrics_url.as_str();

        fresh_diffs(client, metrics_url).await;
        // Each repeated DAG is diffed once first (whatever the filter: later cases reuse it).
        let dag_1000 = synthetic_dag(1000, "repeat-1000").to_string();
        diff(client, "repeat-1000", &dag_1000).await;
        let name = "repeated 1000-node diff";
        repeated_diffs(client, metrics_url, name, "repeat-1000", &dag_1000, 300).await;
        let dag_100 = synthetic_dag(100, "repeat-100").to_string();
        diff(client, "repeat-100", &dag_100).await;
        let name = "repeated 100-node diff";
        repeated_diffs(client, metrics_url, name, "repeat-100", &dag_100, 1000).await;
        let name = "repeated 1000-node diff, new text";
        repeated_diffs_new_text(client, metrics_url, name, "repeat-1000", 1000, 300).await;
        let name = "repeated 100-node diff, new text";
        repeated_diffs_new_text(client, metrics_url, name, "repeat-100", 100, 1000).await;
        new_strategies(client, metrics_url, &dag_1000).await;

        shutdown.trigger();
        let _ = server.await;
    });
}
