//! `POST /strategies` under a bounded concurrent load on loopback, against a Gateway and a DAG
//! Manager in this process: per-request latency percentiles and sustained completed submissions
//! per second (a submission counts once its 202 says `completed`, so every diff finished).
//!
//! Run: `cargo bench -p gateway --bench submit_http [-- NODES CONCURRENCY COUNT]` (default: 10-node
//! DAGs one at a time and 64 at once, 100-node DAGs one at a time and 32 at once)
//!
//! `QMTL_BENCH_TELEMETRY` measures the cost of telemetry: unset, no subscriber at all; `off`, logs
//! and spans as a service runs them with no `otel_exporter_endpoint`; an OTLP/HTTP URL, spans
//! exported there as well.

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kit::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Instant;
use test_support::bench::percentile_ms;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn body(nodes: usize, salt: &str) -> String {
    let dag = test_support::synthetic_dag(nodes, salt);
    let ids: Vec<&str> = dag["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    serde_json::json!({
        "dag_json": base64::engine::general_purpose::STANDARD.encode(dag.to_string()),
        "node_ids_crc32": wire::crc32_chain(ids),
        "world_ids": ["bench"],
        "context": {"execution_domain": "backtest", "as_of": "2025-01-01"},
    })
    .to_string()
}

async fn run_case(
    gateway: std::net::SocketAddr,
    nodes: usize,
    concurrency: usize,
    count: usize,
    round: &str,
) {
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..count)
            .map(|i| Bytes::from(body(nodes, &format!("{round}-{i}"))))
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // One keep-alive HTTP/1.1 connection per worker, as a load tool such as wrk keeps them: the
    // generator shares the machine's two cores with the services, so it stays lean. It is raw
    // hyper rather than the workspace's client (kit::http, reqwest) on purpose: measured, reqwest
    // cost the generator 0.03-0.1 ms of CPU per submission, which the Gateway then lost.
    let mut senders = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let stream = tokio::net::TcpStream::connect(gateway)
            .await
            .expect("the Gateway accepts");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        senders.push(sender);
    }
    let started = Instant::now();
    let cpu_before = test_support::bench::process_cpu();
    let mut workers = tokio::task::JoinSet::new();
    for mut sender in senders {
        let (bodies, next) = (bodies.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut completed = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= bodies.len() {
                    break;
                }
                let request = hyper::Request::post("/strategies")
                    .header("host", gateway.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(bodies[i].clone()))
                    .expect("request");
                let sent = Instant::now();
                sender.ready().await.expect("the connection stays open");
                let response = sender
                    .send_request(request)
                    .await
                    .expect("the Gateway answers");
                let status = response.status().as_u16();
                let answer = response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                latencies.push(sent.elapsed());
                assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
                let needle = b"\"status\":\"completed\"";
                if answer.windows(needle.len()).any(|w| w == needle) {
                    completed += 1;
                }
            }
            (latencies, completed)
        });
    }
    let mut latencies = Vec::new();
    let mut completed = 0;
    while let Some(result) = workers.join_next().await {
        let (mut l, c) = result.expect("worker");
        latencies.append(&mut l);
        completed += c;
    }
    let elapsed = started.elapsed();
    let cpu = test_support::bench::process_cpu().saturating_sub(cpu_before);
    latencies.sort_unstable();
    println!(
        "{nodes:>4}-node submissions, concurrency {concurrency:<3} n={count:<5} p50={:>7.3} ms  p95={:>7.3} ms  p99={:>7.3} ms  completed in the 202: {completed}/{count}  {:>7.0} completed/s  cpu {:.3} ms/submission",
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.95),
        percentile_ms(&latencies, 0.99),
        completed as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / count as f64,
    );
}

fn main() {
    println!("{}", test_support::bench::machine_facts());
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let telemetry = std::env::var("QMTL_BENCH_TELEMETRY").ok();
    let _telemetry = runtime.block_on(async {
        telemetry.as_deref().map(|mode| {
            let settings = kit::telemetry::TelemetrySettings {
                otel_exporter_endpoint: (mode != "off").then(|| mode.to_owned()),
                ..kit::telemetry::TelemetrySettings::default()
            };
            kit::telemetry::init("bench", &settings).expect("telemetry")
        })
    });
    println!(
        "telemetry: {}",
        telemetry.as_deref().unwrap_or("none (no subscriber)")
    );
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let dagmanager = dagmanager::App::build(dagmanager::DagManagerSettings {
            grpc_port: 0,
            admin_port: 0,
            data_dir: dir.path().join("dagmanager"),
            ..dagmanager::DagManagerSettings::default()
        })
        .await
        .expect("DAG Manager");
        let dagmanager_addr = dagmanager.grpc_addr();
        let shutdown = Shutdown::new();
        let dm_task = tokio::spawn(dagmanager.run_until_stopped(shutdown.clone()));
        let gateway = gateway::App::build(gateway::GatewaySettings {
            port: 0,
            dagmanager_url: dagmanager_addr.to_string(),
            data_dir: dir.path().join("gateway"),
            diff_budget_ms: 5_000,
            ..gateway::GatewaySettings::default()
        })
        .await
        .expect("Gateway");
        let gateway_addr = gateway.addr();
        let gw_task = tokio::spawn(gateway.run_until_stopped(shutdown.clone()));
        let cases: Vec<(usize, usize, usize)> = if args.len() == 3 {
            vec![(args[0], args[1], args[2])]
        } else {
            vec![(10, 1, 500), (10, 64, 5000), (100, 1, 200), (100, 32, 1000)]
        };
        for (round, (nodes, concurrency, count)) in cases.into_iter().enumerate() {
            run_case(
                gateway_addr,
                nodes,
                concurrency,
                count,
                &format!("r{round}"),
            )
            .await;
        }
        shutdown.trigger();
        let _ = gw_task.await;
        let _ = dm_task.await;
    });
}
