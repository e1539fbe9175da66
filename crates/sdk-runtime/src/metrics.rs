//! The runtime's metric catalogue (names as in the shared observability spec) and its server.

use kit::breaker::BreakerMetricNames;
use kit::metrics::{BucketError, MetricsRegistry, Readiness};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use tokio::net::TcpListener;

use crate::cache::SlotMetrics;

/// `qmtl_build_info{service}` of this service.
pub const SERVICE: &str = "sdk-runtime";

pub const CACHE_READ_TOTAL: &str = "cache_read_total";
pub const CACHE_LAST_READ_TIMESTAMP: &str = "cache_last_read_timestamp";
pub const NODECACHE_RESIDENT_BYTES: &str = "nodecache_resident_bytes";
pub const NODECACHE_GAPS_TOTAL: &str = "nodecache_gaps_total";
pub const NODECACHE_DROPPED_TOTAL: &str = "nodecache_dropped_total";
pub const NODE_PROCESSED_TOTAL: &str = "node_processed_total";
pub const NODE_PROCESS_DURATION_MS: &str = "node_process_duration_ms";
pub const NODE_PROCESS_FAILURE_TOTAL: &str = "node_process_failure_total";
pub const NODE_OBSERVER_FAILURE_TOTAL: &str = "node_observer_failure_total";
pub const BACKFILL_JOBS_IN_PROGRESS: &str = "backfill_jobs_in_progress";
pub const BACKFILL_LAST_TIMESTAMP: &str = "backfill_last_timestamp";
pub const BACKFILL_RETRY_TOTAL: &str = "backfill_retry_total";
pub const BACKFILL_FAILURE_TOTAL: &str = "backfill_failure_total";
pub const BACKFILL_ROWS_SKIPPED_TOTAL: &str = "backfill_rows_skipped_total";
pub const BACKFILL_COMPLETED_TOTAL: &str = "backfill_completed_total";
pub const CROSS_CONTEXT_CACHE_HIT_TOTAL: &str = "cross_context_cache_hit_total";
pub const EVENT_RECORDER_ERRORS_TOTAL: &str = "event_recorder_errors_total";
pub const RUNTIME_EVENTS_TOTAL: &str = "runtime_events_total";
pub const RUNTIME_PUBLISHED_TOTAL: &str = "runtime_published_total";
pub const RUNTIME_PUBLISH_FAILURE_TOTAL: &str = "runtime_publish_failure_total";
pub const RUNTIME_QUEUE_READ_ERRORS_TOTAL: &str = "runtime_queue_read_errors_total";
/// Records read from a Kafka queue that were not a valid envelope.
pub const RUNTIME_BAD_RECORDS_TOTAL: &str = "runtime_bad_records_total";

/// The runtime's breaker around the Gateway.
pub const GATEWAYCLIENT_BREAKER: BreakerMetricNames = BreakerMetricNames {
    open_total: "gatewayclient_breaker_open_total",
    state: "gatewayclient_breaker_state",
    failures: "gatewayclient_breaker_failures",
};

/// `node_process_duration_ms` buckets: 0.05 ms to 10 s, covering the 500 ms alert.
pub const NODE_DURATION_BUCKETS_MS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
    5000.0, 10000.0,
];

/// The value written for an empty label.
pub const UNSET_LABEL: &str = "__unset__";
/// The `node_id` of `nodecache_resident_bytes{scope="total"}`: every node of the process.
pub const ALL_NODES_LABEL: &str = "all";

/// What a `nodecache_resident_bytes` series sums, for its `scope` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidentScope {
    /// One node's caches, over every strategy of the process that holds it.
    Node,
    /// Every node cache of the process (`node_id="all"`).
    Total,
}

impl ResidentScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ResidentScope::Node => "node",
            ResidentScope::Total => "total",
        }
    }
}

/// Why a value was passed over, for the `reason` of `nodecache_dropped_total` and
/// `backfill_rows_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Older than the last bar already taken.
    OutOfOrder,
    /// Repeating the timestamp of the last bar taken.
    Duplicate,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OutOfOrder => "out_of_order",
            SkipReason::Duplicate => "duplicate",
        }
    }
}

/// Where an event came from, for `runtime_events_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Feed,
    Queue,
    Backfill,
}

impl EventSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Feed => "feed",
            EventSource::Queue => "queue",
            EventSource::Backfill => "backfill",
        }
    }
}

/// Handles of one node's series.
#[derive(Debug, Clone)]
pub(crate) struct NodeMetrics {
    pub(crate) processed: Counter,
    pub(crate) duration_ms: Histogram,
    pub(crate) failures: Counter,
    pub(crate) observer_failures: Counter,
    /// The node's resident bytes over every engine of the process that holds it.
    resident_sum: Arc<AtomicI64>,
    resident: Gauge,
    pub(crate) gaps: Counter,
    pub(crate) out_of_order: Counter,
}

/// The runtime's registry and the handles every strategy of the process shares.
#[derive(Debug)]
pub struct SdkMetrics {
    registry: MetricsRegistry,
    resident_by_node: std::sync::Mutex<std::collections::HashMap<String, Arc<AtomicI64>>>,
    resident_total: AtomicI64,
    resident_total_gauge: Gauge,
    pub(crate) backfill_jobs_in_progress: Gauge,
    pub(crate) event_recorder_errors_total: Counter,
}

impl SdkMetrics {
    pub fn new() -> Result<Arc<SdkMetrics>, BucketError> {
        let registry = MetricsRegistry::builder()
            .service(SERVICE, env!("CARGO_PKG_VERSION"))
            .histogram_buckets(NODE_PROCESS_DURATION_MS, NODE_DURATION_BUCKETS_MS)
            .build()?;
        describe(&registry);
        let metrics = SdkMetrics {
            resident_by_node: Default::default(),
            resident_total: AtomicI64::new(0),
            resident_total_gauge: registry.gauge(
                NODECACHE_RESIDENT_BYTES,
                &[
                    ("node_id", ALL_NODES_LABEL),
                    ("scope", ResidentScope::Total.as_str()),
                ],
            ),
            backfill_jobs_in_progress: registry.gauge(BACKFILL_JOBS_IN_PROGRESS, &[]),
            event_recorder_errors_total: registry.counter(EVENT_RECORDER_ERRORS_TOTAL, &[]),
            registry,
        };
        metrics.resident_total_gauge.set(0.0);
        metrics.backfill_jobs_in_progress.set(0.0);
        metrics.event_recorder_errors_total.increment(0);
        Ok(Arc::new(metrics))
    }

    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }

    pub(crate) fn node(&self, node_id: &str) -> NodeMetrics {
        let labels = [("node_id", node_id)];
        let resident_sum = self
            .resident_by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node_id.to_owned())
            .or_default()
            .clone();
        let metrics = NodeMetrics {
            processed: self.registry.counter(NODE_PROCESSED_TOTAL, &labels),
            duration_ms: self.registry.histogram(NODE_PROCESS_DURATION_MS, &labels),
            failures: self.registry.counter(NODE_PROCESS_FAILURE_TOTAL, &labels),
            observer_failures: self.registry.counter(NODE_OBSERVER_FAILURE_TOTAL, &labels),
            resident_sum,
            resident: self.registry.gauge(
                NODECACHE_RESIDENT_BYTES,
                &[
                    ("node_id", node_id),
                    ("scope", ResidentScope::Node.as_str()),
                ],
            ),
            gaps: self.registry.counter(NODECACHE_GAPS_TOTAL, &labels),
            out_of_order: self.registry.counter(
                NODECACHE_DROPPED_TOTAL,
                &[
                    ("node_id", node_id),
                    ("reason", SkipReason::OutOfOrder.as_str()),
                ],
            ),
        };
        metrics.processed.increment(0);
        metrics.failures.increment(0);
        metrics
    }

    pub(crate) fn slot(&self, upstream_id: &str, interval: i64) -> SlotMetrics {
        let interval = interval.to_string();
        let labels = [
            ("upstream_id", upstream_id),
            ("interval", interval.as_str()),
        ];
        let slot = SlotMetrics {
            reads: self.registry.counter(CACHE_READ_TOTAL, &labels),
            last_read: self.registry.gauge(CACHE_LAST_READ_TIMESTAMP, &labels),
        };
        slot.reads.increment(0);
        slot
    }

    /// Moves a node's resident bytes, and the process-wide total, by `delta` bytes.
    pub(crate) fn add_resident(&self, node: &NodeMetrics, delta: i64) {
        let held = node.resident_sum.fetch_add(delta, Ordering::Relaxed) + delta;
        node.resident.set(held as f64);
        let total = self.resident_total.fetch_add(delta, Ordering::Relaxed) + delta;
        self.resident_total_gauge.set(total as f64);
    }

    pub(crate) fn cross_context(&self, node_id: &str, context: &wire::ComputeContext) -> Counter {
        let or_unset = |v: &str| {
            if v.is_empty() {
                UNSET_LABEL.to_owned()
            } else {
                v.to_owned()
            }
        };
        let world = or_unset(&context.world_id);
        let domain = or_unset(&context.execution_domain);
        let as_of = or_unset(&context.as_of);
        let partition = or_unset(&context.partition);
        self.registry.counter(
            CROSS_CONTEXT_CACHE_HIT_TOTAL,
            &[
                ("node_id", node_id),
                ("world_id", &world),
                ("execution_domain", &domain),
                ("as_of", &as_of),
                ("partition", &partition),
            ],
        )
    }

    pub(crate) fn backfill(&self, node_id: &str, interval: i64) -> BackfillMetrics {
        let interval = interval.to_string();
        let labels = [("node_id", node_id), ("interval", interval.as_str())];
        let skipped = |reason: SkipReason| {
            self.registry.counter(
                BACKFILL_ROWS_SKIPPED_TOTAL,
                &[
                    ("node_id", node_id),
                    ("interval", interval.as_str()),
                    ("reason", reason.as_str()),
                ],
            )
        };
        let metrics = BackfillMetrics {
            last_timestamp: self.registry.gauge(BACKFILL_LAST_TIMESTAMP, &labels),
            retries: self.registry.counter(BACKFILL_RETRY_TOTAL, &labels),
            failures: self.registry.counter(BACKFILL_FAILURE_TOTAL, &labels),
            completed: self.registry.counter(BACKFILL_COMPLETED_TOTAL, &labels),
            out_of_order: skipped(SkipReason::OutOfOrder),
            duplicate: skipped(SkipReason::Duplicate),
        };
        metrics.retries.increment(0);
        metrics.failures.increment(0);
        metrics.completed.increment(0);
        metrics
    }

    pub(crate) fn events(&self, source: EventSource) -> Counter {
        self.registry
            .counter(RUNTIME_EVENTS_TOTAL, &[("source", source.as_str())])
    }

    pub(crate) fn queue_read_errors(&self) -> Counter {
        let counter = self.registry.counter(RUNTIME_QUEUE_READ_ERRORS_TOTAL, &[]);
        counter.increment(0);
        counter
    }

    /// `runtime_bad_records_total`, described and registered by the Kafka transport that counts
    /// it (a runtime without one exposes no such series).
    pub(crate) fn bad_records(&self) -> Counter {
        self.registry.describe_counter(
            RUNTIME_BAD_RECORDS_TOTAL,
            Some(Unit::Count),
            "Records read from a queue that were not a valid envelope: logged, skipped, committed.",
        );
        let counter = self.registry.counter(RUNTIME_BAD_RECORDS_TOTAL, &[]);
        counter.increment(0);
        counter
    }

    pub(crate) fn published(&self) -> (Counter, Counter) {
        (
            self.registry.counter(RUNTIME_PUBLISHED_TOTAL, &[]),
            self.registry.counter(RUNTIME_PUBLISH_FAILURE_TOTAL, &[]),
        )
    }
}

/// Handles of one backfill job's series.
#[derive(Debug, Clone)]
pub(crate) struct BackfillMetrics {
    pub(crate) last_timestamp: Gauge,
    pub(crate) retries: Counter,
    pub(crate) failures: Counter,
    pub(crate) completed: Counter,
    pub(crate) out_of_order: Counter,
    pub(crate) duplicate: Counter,
}

fn describe(registry: &MetricsRegistry) {
    use Unit::{Bytes, Count, Milliseconds, Seconds};
    let counters: &[(&'static str, &'static str)] = &[
        (
            CACHE_READ_TOTAL,
            "Reads of an upstream's window by a compute function.",
        ),
        (
            NODECACHE_GAPS_TOTAL,
            "Bars that arrived after one or more empty buckets.",
        ),
        (
            NODECACHE_DROPPED_TOTAL,
            "Values a node's cache refused (older than its last bar).",
        ),
        (NODE_PROCESSED_TOTAL, "Compute function runs that returned."),
        (
            NODE_PROCESS_FAILURE_TOTAL,
            "Compute function runs that failed or panicked.",
        ),
        (
            NODE_OBSERVER_FAILURE_TOTAL,
            "Observer callbacks that panicked; the value still flowed downstream.",
        ),
        (
            BACKFILL_RETRY_TOTAL,
            "Backfill fetches retried after a retryable error.",
        ),
        (
            BACKFILL_FAILURE_TOTAL,
            "Backfill jobs that gave up; the node runs on live data only.",
        ),
        (BACKFILL_COMPLETED_TOTAL, "Backfill jobs that completed."),
        (
            BACKFILL_ROWS_SKIPPED_TOTAL,
            "History rows skipped: out of order or repeating a timestamp.",
        ),
        (
            CROSS_CONTEXT_CACHE_HIT_TOTAL,
            "Caches cleared because their node ran under a new compute context.",
        ),
        (
            EVENT_RECORDER_ERRORS_TOTAL,
            "Payloads the event recorder failed to persist.",
        ),
        (RUNTIME_EVENTS_TOTAL, "Events taken in, by source."),
        (RUNTIME_PUBLISHED_TOTAL, "Node outputs published to queues."),
        (
            RUNTIME_QUEUE_READ_ERRORS_TOTAL,
            "Reads of a queue that failed (its topic gone, the broker away); retried.",
        ),
        (
            RUNTIME_PUBLISH_FAILURE_TOTAL,
            "Node outputs that could not be published.",
        ),
    ];
    for (name, help) in counters {
        registry.describe_counter(name, Some(Count), help);
    }
    registry.describe_gauge(
        CACHE_LAST_READ_TIMESTAMP,
        Some(Seconds),
        "Unix time of the last read of an upstream's window.",
    );
    registry.describe_gauge(
        NODECACHE_RESIDENT_BYTES,
        Some(Bytes),
        "Bytes held by node caches: per node (scope=node) and in total (node_id=all, scope=total).",
    );
    registry.describe_gauge(
        BACKFILL_JOBS_IN_PROGRESS,
        Some(Count),
        "Backfill jobs running now.",
    );
    registry.describe_gauge(
        BACKFILL_LAST_TIMESTAMP,
        Some(Seconds),
        "Timestamp of the last bar a backfill job loaded.",
    );
    registry.describe_histogram(
        NODE_PROCESS_DURATION_MS,
        Some(Milliseconds),
        "Compute function run time in milliseconds.",
    );
}

/// Serves the runtime's `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve_metrics(
    metrics: Arc<SdkMetrics>,
    listener: TcpListener,
    readiness: Readiness,
    shutdown: kit::shutdown::Shutdown,
) -> std::io::Result<()> {
    let router = kit::metrics::admin_router(metrics.registry().clone(), readiness, Arc::new(|| {}));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.triggered())
        .await
}

/// Starts the runtime's metrics server on `host:port` (0: any free port) until `shutdown`;
/// returns the address it listens on.
pub async fn start_metrics_server(
    metrics: Arc<SdkMetrics>,
    host: &str,
    port: u16,
    shutdown: kit::shutdown::Shutdown,
) -> std::io::Result<SocketAddr> {
    let (listener, address) = bind_metrics(host, port).await?;
    let readiness = Readiness::default();
    readiness.set(true);
    tokio::spawn(async move {
        if let Err(error) = serve_metrics(metrics, listener, readiness, shutdown).await {
            tracing::warn!(%error, "The runtime's metrics server stopped.");
        }
    });
    Ok(address)
}

/// Binds the metrics server's port (0: any free port).
pub async fn bind_metrics(host: &str, port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind((host, port)).await?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}
