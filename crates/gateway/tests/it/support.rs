//! Spawning a DAG Manager and a Gateway, and building submissions.

use base64::Engine as _;
use gateway::GatewaySettings;
use kit::shutdown::Shutdown;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;

pub(crate) struct Running<E> {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), E>>,
}

impl<E: std::fmt::Debug> Running<E> {
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        self.task
            .await
            .expect("the task ends")
            .expect("the service stops cleanly");
    }
}

/// A DAG Manager with its stores under `dir`, on `grpc_port` (0: any).
pub(crate) async fn spawn_dagmanager(dir: &Path, grpc_port: u16) -> Running<dagmanager::RunError> {
    let mut settings = dagmanager::DagManagerSettings {
        grpc_port,
        admin_port: 0,
        data_dir: dir.join("dagmanager"),
        shutdown_grace_ms: 2_000,
        ..dagmanager::DagManagerSettings::default()
    };
    settings.gc.interval_secs = 3600;
    let app = dagmanager::App::build(settings)
        .await
        .expect("the DAG Manager builds");
    let addr = app.grpc_addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

pub(crate) fn gateway_settings(dir: &Path, dagmanager: SocketAddr) -> GatewaySettings {
    GatewaySettings {
        port: 0,
        dagmanager_url: dagmanager.to_string(),
        data_dir: dir.join("gateway"),
        diff_budget_ms: 3_000,
        probe_interval_ms: 100,
        retry_interval_ms: 50,
        dagmanager_timeout_ms: 2_000,
        shutdown_grace_ms: 2_000,
        ..GatewaySettings::default()
    }
}

pub(crate) async fn spawn_gateway(settings: GatewaySettings) -> Running<std::io::Error> {
    let app = gateway::App::build(settings)
        .await
        .expect("the Gateway builds");
    let addr = app.addr();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

/// The `POST /strategies` body for `dag` in `worlds`, with its correct CRC32.
pub(crate) fn submission(dag: &Value, worlds: &[&str]) -> Value {
    let text = dag.to_string();
    let ids: Vec<&str> = dag["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["node_type"] != "VersionSentinel")
                .filter_map(|n| n["node_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let crc = wire::crc32_chain(ids);
    json!({
        "dag_json": base64::engine::general_purpose::STANDARD.encode(text),
        "meta": null,
        "node_ids_crc32": crc,
        "world_ids": worlds,
        "context": {"execution_domain": "backtest", "as_of": "2025-01-01"},
    })
}

pub(crate) async fn post(gateway: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = test_support::http(
        "POST",
        &format!("http://{gateway}{path}"),
        &body.to_string(),
    )
    .await
    .expect("the Gateway answers");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn get(gateway: SocketAddr, path: &str) -> (u16, Value) {
    let (status, text) = test_support::http_get(&format!("http://{gateway}{path}"))
        .await
        .expect("the Gateway answers");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn metrics(gateway: SocketAddr) -> test_support::Exposition {
    test_support::scrape(&format!("http://{gateway}/metrics"))
        .await
        .expect("metrics scrape")
}
