//! The `dagmanager` section of `qmtl.yml`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Settings of the DAG Manager service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DagManagerSettings {
    /// Address both listeners bind to.
    pub host: String,
    /// gRPC port (DiffService, TagQuery, AdminService, HealthCheck); 0 picks a free one.
    pub grpc_port: u16,
    /// Admin HTTP port (`/metrics`, `/healthz`, `/readyz`, `/status`, `POST /admin/gc-trigger`).
    pub admin_port: u16,
    /// Where the embedded graph store and queue registry keep their files.
    pub data_dir: PathBuf,
    /// Largest `dag_json` accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    pub max_dag_bytes: usize,
    /// Most nodes one DAG may have (more: RESOURCE_EXHAUSTED).
    pub max_nodes: usize,
    /// Nodes the cache of checked DAGs may hold (0 turns it off).
    pub parse_cache_nodes: usize,
    /// Nodes per DiffChunk; at most 100.
    pub chunk_size: usize,
    /// Chunks that may be in flight without an ack.
    pub ack_window: usize,
    /// How long to wait for acks before re-sending the unacknowledged chunks.
    pub ack_timeout_ms: u64,
    /// Re-sends before the stream fails with DEADLINE_EXCEEDED.
    pub ack_retries: u32,
    /// Prefix queue names with `{world}.{domain}.` when a diff names a world, so worlds never share a queue.
    pub topic_namespace: bool,
    /// How queues of each kind (`raw`, `indicator`, `trade_exec`) are created.
    pub topics: BTreeMap<String, TopicSettings>,
    pub gc: GcSettings,
    /// How long a graceful shutdown may take before in-flight work is dropped.
    pub shutdown_grace_ms: u64,
    /// Kafka bootstrap servers (`kafka://host:port` or `host:port,...`); empty keeps queues in
    /// the embedded registry, with no broker.
    pub kafka_dsn: String,
    /// One broker request's limit.
    pub kafka_timeout_ms: u64,
    /// Seconds between consumer lag measurements (with a broker).
    pub lag_interval_secs: u64,
    /// Lag in seconds a queue may reach before `QueueLagHigh` fires ...
    pub lag_threshold_secs: f64,
    /// ... unless the queue has its own threshold here (queue name -> seconds).
    pub lag_thresholds: BTreeMap<String, f64>,
}

impl Default for DagManagerSettings {
    fn default() -> Self {
        DagManagerSettings {
            host: "127.0.0.1".into(),
            grpc_port: 50051,
            admin_port: 8001,
            data_dir: PathBuf::from(".qmtl-data/dagmanager"),
            max_dag_bytes: 16 * 1024 * 1024,
            max_nodes: 50_000,
            parse_cache_nodes: 100_000,
            chunk_size: 100,
            ack_window: 10,
            ack_timeout_ms: 2_000,
            ack_retries: 3,
            topic_namespace: true,
            topics: default_topics(),
            gc: GcSettings::default(),
            shutdown_grace_ms: 10_000,
            kafka_dsn: String::new(),
            kafka_timeout_ms: 5_000,
            lag_interval_secs: 15,
            lag_threshold_secs: 60.0,
            lag_thresholds: BTreeMap::new(),
        }
    }
}

/// How queues of one kind are created (on a broker: their topics' configuration). Defaults fit a single broker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub partitions: u32,
    pub replication_factor: u16,
    pub retention_ms: i64,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

fn default_topics() -> BTreeMap<String, TopicSettings> {
    let kind = |partitions, days| TopicSettings {
        partitions,
        replication_factor: 1,
        retention_ms: days * DAY_MS,
    };
    BTreeMap::from([
        ("raw".to_owned(), kind(3, 7)),
        ("indicator".to_owned(), kind(1, 30)),
        ("trade_exec".to_owned(), kind(1, 90)),
    ])
}

/// Garbage collection of orphan queues.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GcSettings {
    /// Seconds between scheduled runs.
    pub interval_secs: u64,
    /// Most queues one run acts on.
    pub batch_size: usize,
    /// Where `archive` writes a queue's record before dropping it.
    pub archive_dir: PathBuf,
    /// Policy per queue tag. A tag with no policy is never collected.
    pub policies: BTreeMap<String, GcPolicy>,
}

impl Default for GcSettings {
    fn default() -> Self {
        let policy = |ttl_days: u64, grace_days: u64, action| GcPolicy {
            ttl_secs: ttl_days * 86_400,
            grace_secs: grace_days * 86_400,
            action,
        };
        GcSettings {
            interval_secs: 60,
            batch_size: 50,
            archive_dir: PathBuf::from(".qmtl-data/archive"),
            policies: BTreeMap::from([
                ("raw".to_owned(), policy(7, 1, GcAction::Drop)),
                ("indicator".to_owned(), policy(30, 3, GcAction::Drop)),
                ("sentinel".to_owned(), policy(180, 30, GcAction::Archive)),
            ]),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GcPolicy {
    pub ttl_secs: u64,
    pub grace_secs: u64,
    pub action: GcAction,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GcAction {
    Drop,
    Archive,
}
