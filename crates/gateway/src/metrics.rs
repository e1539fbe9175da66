//! The Gateway's metric catalogue: names as in the shared observability spec.

use kit::breaker::BreakerMetricNames;
use kit::metrics::{BucketError, MetricsRegistry};
use metrics::{Counter, Gauge, Unit};
use std::collections::HashSet;
use std::sync::Mutex;

/// `qmtl_build_info{service}` of this service.
pub const SERVICE: &str = "gateway";

pub const GATEWAY_E2E_LATENCY_P95: &str = "gateway_e2e_latency_p95";
pub const GATEWAY_REQUEST_DURATION_SECONDS: &str = "gateway_request_duration_seconds";
pub const LOST_REQUESTS_TOTAL: &str = "lost_requests_total";
pub const NODEID_CHECKSUM_MISMATCH_TOTAL: &str = "nodeid_checksum_mismatch_total";
pub const NODEID_MISMATCH_TOTAL: &str = "nodeid_mismatch_total";
pub const NODEID_MISSING_FIELDS_TOTAL: &str = "nodeid_missing_fields_total";
pub const GATEWAY_SUBMISSIONS_TOTAL: &str = "gateway_submissions_total";
pub const GATEWAY_STRATEGIES: &str = "gateway_strategies";

/// The DAG Manager breaker's series.
pub const DAGCLIENT_BREAKER: BreakerMetricNames = BreakerMetricNames {
    open_total: "dagclient_breaker_open_total",
    state: "dagclient_breaker_state",
    failures: "dagclient_breaker_failures",
};

/// Request duration buckets: sub-millisecond up to the 150 ms latency alert and past it.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Distinct user-supplied node types that get their own label value; the rest share `other`.
const MAX_NODE_TYPE_LABELS: usize = 64;

/// How a submission ended, for `gateway_submissions_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
        }
    }
}

/// Handles to every Gateway metric.
#[derive(Debug)]
pub struct GatewayMetrics {
    registry: MetricsRegistry,
    pub e2e_latency_p95: Gauge,
    pub lost_requests_total: Counter,
    node_types: Mutex<HashSet<String>>,
}

impl GatewayMetrics {
    pub fn new() -> Result<GatewayMetrics, BucketError> {
        let registry = MetricsRegistry::builder()
            .service(SERVICE, env!("CARGO_PKG_VERSION"))
            .histogram_buckets(GATEWAY_REQUEST_DURATION_SECONDS, REQUEST_DURATION_BUCKETS)
            .build()?;
        describe(&registry);
        let metrics = GatewayMetrics {
            e2e_latency_p95: registry.gauge(GATEWAY_E2E_LATENCY_P95, &[]),
            lost_requests_total: registry.counter(LOST_REQUESTS_TOTAL, &[]),
            node_types: Mutex::new(HashSet::new()),
            registry,
        };
        metrics.lost_requests_total.increment(0);
        for outcome in [Outcome::Completed, Outcome::Failed] {
            metrics.submission(outcome).increment(0);
        }
        Ok(metrics)
    }

    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.registry
            .histogram(
                GATEWAY_REQUEST_DURATION_SECONDS,
                &[("route", route), ("method", method), ("status", &status)],
            )
            .record(seconds);
    }

    pub fn submission(&self, outcome: Outcome) -> Counter {
        self.registry
            .counter(GATEWAY_SUBMISSIONS_TOTAL, &[("outcome", outcome.as_str())])
    }

    pub fn strategies(&self, state: &str, count: usize) {
        self.registry
            .gauge(GATEWAY_STRATEGIES, &[("state", state)])
            .set(count as f64);
    }

    /// A node type as a label value: kept while few distinct ones have been seen, else `other`.
    fn node_type_label(&self, node_type: &str) -> String {
        let mut seen = self.node_types.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(node_type) {
            return node_type.to_owned();
        }
        if seen.len() < MAX_NODE_TYPE_LABELS && !node_type.is_empty() {
            seen.insert(node_type.to_owned());
            return node_type.to_owned();
        }
        if node_type.is_empty() {
            "__unset__"
        } else {
            "other"
        }
        .to_owned()
    }

    pub fn checksum_mismatch(&self, source: &'static str) {
        self.registry
            .counter(NODEID_CHECKSUM_MISMATCH_TOTAL, &[("source", source)])
            .increment(1);
    }

    pub fn nodeid_mismatch(&self, node_type: &str) {
        let node_type = self.node_type_label(node_type);
        self.registry
            .counter(NODEID_MISMATCH_TOTAL, &[("node_type", &node_type)])
            .increment(1);
    }

    pub fn missing_field(&self, field: &'static str, node_type: &str) {
        let node_type = self.node_type_label(node_type);
        self.registry
            .counter(
                NODEID_MISSING_FIELDS_TOTAL,
                &[("field", field), ("node_type", &node_type)],
            )
            .increment(1);
    }
}

fn describe(registry: &MetricsRegistry) {
    registry.describe_gauge(
        GATEWAY_E2E_LATENCY_P95,
        Some(Unit::Milliseconds),
        "95th percentile of POST /strategies latency over the last five minutes, in milliseconds.",
    );
    registry.describe_histogram(
        GATEWAY_REQUEST_DURATION_SECONDS,
        Some(Unit::Seconds),
        "HTTP request duration by route template, method and status.",
    );
    registry.describe_counter(
        LOST_REQUESTS_TOTAL,
        None,
        "Submissions that could not be carried to the DAG Manager (not persisted).",
    );
    registry.describe_counter(
        NODEID_CHECKSUM_MISMATCH_TOTAL,
        None,
        "Submissions whose node_ids_crc32 did not match.",
    );
    registry.describe_counter(
        NODEID_MISMATCH_TOTAL,
        None,
        "Nodes whose node_id did not match their fields.",
    );
    registry.describe_counter(
        NODEID_MISSING_FIELDS_TOTAL,
        None,
        "Nodes missing a field their node_id needs.",
    );
    registry.describe_counter(
        GATEWAY_SUBMISSIONS_TOTAL,
        None,
        "Submissions carried to an end state.",
    );
    registry.describe_gauge(
        GATEWAY_STRATEGIES,
        None,
        "Strategies known to the Gateway, by state.",
    );
}
