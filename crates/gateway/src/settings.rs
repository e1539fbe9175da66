//! The `gateway` section of `qmtl.yml`.

use serde::Deserialize;
use std::path::PathBuf;

/// Settings of the Gateway service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    pub host: String,
    /// HTTP port of the API (and of `/metrics`, `/health`, `/healthz`, `/readyz`, `/status`); 0
    /// picks a free one.
    pub port: u16,
    /// The DAG Manager's gRPC address (`host:port` or `http://host:port`).
    pub dagmanager_url: String,
    /// Where accepted submissions are kept (`submissions.log`).
    pub data_dir: PathBuf,
    /// Largest request body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Most nodes one DAG may have.
    pub max_nodes: usize,
    /// How long `POST /strategies` waits for the diff before answering `queued`.
    pub diff_budget_ms: u64,
    /// Submissions carried to the DAG Manager at once.
    pub workers: usize,
    /// How often the DAG Manager's health is probed (outside the breaker), and the store for
    /// `/readyz`.
    pub probe_interval_ms: u64,
    /// How long a submission waits before another try while the DAG Manager is unavailable.
    pub retry_interval_ms: u64,
    /// How long one call to the DAG Manager may take.
    pub dagmanager_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            host: "127.0.0.1".into(),
            port: 8000,
            dagmanager_url: "127.0.0.1:50051".into(),
            data_dir: PathBuf::from(".qmtl-data/gateway"),
            max_body_bytes: 32 * 1024 * 1024,
            max_nodes: 50_000,
            diff_budget_ms: 500,
            workers: 64,
            probe_interval_ms: 1_000,
            retry_interval_ms: 500,
            dagmanager_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}
