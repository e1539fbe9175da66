//! The DAG Manager's metric catalogue: every family's name (as in the shared observability spec),
//! help text, unit and buckets, with the lag and standalone exporter families beside the service's.

use kit::breaker::BreakerMetricNames;
use kit::metrics::{BucketError, MetricsRegistry};
use metrics::{Counter, Gauge, Histogram, Unit};

/// `qmtl_build_info{service}` of the DAG Manager and of its standalone metrics exporter.
pub const SERVICE: &str = "dagmanager";
pub const EXPORTER_SERVICE: &str = "dagmanager-metrics";

pub const DIFF_REQUESTS_TOTAL: &str = "diff_requests_total";
pub const DIFF_FAILURES_TOTAL: &str = "diff_failures_total";
pub const DIFF_DURATION_MS_P95: &str = "diff_duration_ms_p95";
pub const DIFF_DURATION_SECONDS: &str = "diff_duration_seconds";
pub const QUEUE_CREATE_ERROR_TOTAL: &str = "queue_create_error_total";
pub const SENTINEL_GAP_COUNT: &str = "sentinel_gap_count";
pub const ORPHAN_QUEUE_TOTAL: &str = "orphan_queue_total";
pub const GC_LAST_RUN_TIMESTAMP: &str = "gc_last_run_timestamp";
pub const GC_QUEUES_DROPPED_TOTAL: &str = "gc_queues_dropped_total";
pub const GC_QUEUES_ARCHIVED_TOTAL: &str = "gc_queues_archived_total";
pub const GC_FAILURES_TOTAL: &str = "gc_failures_total";
pub const COMPUTE_NODES_TOTAL: &str = "compute_nodes_total";
pub const QUEUES_TOTAL: &str = "queues_total";
pub const CROSS_CONTEXT_CACHE_HIT_TOTAL: &str = "cross_context_cache_hit_total";

/// Consumer lag (`lag.rs`), on the service's registry or the standalone exporter's; every family
/// starts with [`QUEUE_LAG_PREFIX`] and has a `topic` label where it is per queue.
pub const QUEUE_LAG_PREFIX: &str = "queue_lag_";
pub const QUEUE_LAG_SECONDS: &str = "queue_lag_seconds";
pub const QUEUE_LAG_MESSAGES: &str = "queue_lag_messages";
pub const QUEUE_LAG_THRESHOLD_SECONDS: &str = "queue_lag_threshold_seconds";
pub const QUEUE_LAG_ERRORS_TOTAL: &str = "queue_lag_errors_total";
pub const QUEUE_LAG_LAST_RUN_TIMESTAMP: &str = "queue_lag_last_run_timestamp";
/// The label of a lag series: the broker topic that holds the queue.
pub const LAG_TOPIC_LABEL: &str = "topic";

/// The standalone exporter's own families (`exporter.rs`).
pub const DAGMANAGER_UP: &str = "dagmanager_up";
pub const DAGMANAGER_SCRAPE_DURATION_SECONDS: &str = "dagmanager_scrape_duration_seconds";
pub const DAGMANAGER_SCRAPE_FAILURES_TOTAL: &str = "dagmanager_scrape_failures_total";

/// The Kafka admin client's breaker series.
pub const KAFKA_BREAKER: BreakerMetricNames = BreakerMetricNames {
    open_total: "kafka_breaker_open_total",
    state: "kafka_breaker_state",
    failures: "kafka_breaker_failures",
};

/// Buckets for `diff_duration_seconds`: sub-millisecond diffs up to the 200 ms alert and beyond.
pub const DIFF_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The value written for an empty label, so series stay distinguishable from missing ones.
pub const UNSET_LABEL: &str = "__unset__";

/// Where a GC run failed (`gc_failures_total{stage}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcStage {
    List,
    Archive,
    Drop,
}

impl GcStage {
    pub fn as_str(self) -> &'static str {
        match self {
            GcStage::List => "list",
            GcStage::Archive => "archive",
            GcStage::Drop => "drop",
        }
    }
}

/// Handles to every DAG Manager metric.
#[derive(Debug, Clone)]
pub struct DagManagerMetrics {
    registry: MetricsRegistry,
    pub diff_requests_total: Counter,
    pub diff_failures_total: Counter,
    pub diff_duration_ms_p95: Gauge,
    pub diff_duration_seconds: Histogram,
    pub queue_create_error_total: Counter,
    pub sentinel_gap_count: Gauge,
    pub orphan_queue_total: Gauge,
    pub gc_last_run_timestamp: Gauge,
    pub gc_queues_dropped_total: Counter,
    pub gc_queues_archived_total: Counter,
    pub compute_nodes_total: Gauge,
    pub queues_total: Gauge,
}

impl DagManagerMetrics {
    /// Builds the service's registry with its buckets, describes every family and creates the
    /// label-less series at zero so dashboards see them before the first event.
    pub fn new() -> Result<DagManagerMetrics, BucketError> {
        let registry = MetricsRegistry::builder()
            .service(SERVICE, env!("CARGO_PKG_VERSION"))
            .histogram_buckets(DIFF_DURATION_SECONDS, DIFF_DURATION_BUCKETS)
            .build()?;
        describe(&registry);
        let metrics = DagManagerMetrics {
            diff_requests_total: registry.counter(DIFF_REQUESTS_TOTAL, &[]),
            diff_failures_total: registry.counter(DIFF_FAILURES_TOTAL, &[]),
            diff_duration_ms_p95: registry.gauge(DIFF_DURATION_MS_P95, &[]),
            diff_duration_seconds: registry.histogram(DIFF_DURATION_SECONDS, &[]),
            queue_create_error_total: registry.counter(QUEUE_CREATE_ERROR_TOTAL, &[]),
            sentinel_gap_count: registry.gauge(SENTINEL_GAP_COUNT, &[]),
            orphan_queue_total: registry.gauge(ORPHAN_QUEUE_TOTAL, &[]),
            gc_last_run_timestamp: registry.gauge(GC_LAST_RUN_TIMESTAMP, &[]),
            gc_queues_dropped_total: registry.counter(GC_QUEUES_DROPPED_TOTAL, &[]),
            gc_queues_archived_total: registry.counter(GC_QUEUES_ARCHIVED_TOTAL, &[]),
            compute_nodes_total: registry.gauge(COMPUTE_NODES_TOTAL, &[]),
            queues_total: registry.gauge(QUEUES_TOTAL, &[]),
            registry,
        };
        for counter in [
            &metrics.diff_requests_total,
            &metrics.diff_failures_total,
            &metrics.queue_create_error_total,
            &metrics.gc_queues_dropped_total,
            &metrics.gc_queues_archived_total,
        ] {
            counter.increment(0);
        }
        for stage in [GcStage::List, GcStage::Archive, GcStage::Drop] {
            metrics.gc_failure(stage).increment(0);
        }
        metrics.sentinel_gap_count.increment(0.0);
        Ok(metrics)
    }

    pub fn registry(&self) -> &MetricsRegistry {
        &self.registry
    }

    pub fn gc_failure(&self, stage: GcStage) -> Counter {
        self.registry
            .counter(GC_FAILURES_TOTAL, &[("stage", stage.as_str())])
    }

    /// Counts a queue reused across compute contexts; empty label values become `__unset__`.
    pub fn cross_context_cache_hit(
        &self,
        node_id: &str,
        world_id: &str,
        execution_domain: &str,
        as_of: &str,
        partition: &str,
    ) {
        let label = |v: &str| {
            if v.is_empty() {
                UNSET_LABEL.to_owned()
            } else {
                v.to_owned()
            }
        };
        let (node_id, world_id, execution_domain, as_of, partition) = (
            label(node_id),
            label(world_id),
            label(execution_domain),
            label(as_of),
            label(partition),
        );
        self.registry
            .counter(
                CROSS_CONTEXT_CACHE_HIT_TOTAL,
                &[
                    ("node_id", &node_id),
                    ("world_id", &world_id),
                    ("execution_domain", &execution_domain),
                    ("as_of", &as_of),
                    ("partition", &partition),
                ],
            )
            .increment(1);
    }
}

fn describe(registry: &MetricsRegistry) {
    registry.describe_counter(DIFF_REQUESTS_TOTAL, None, "Diff requests received.");
    registry.describe_counter(DIFF_FAILURES_TOTAL, None, "Diff requests that failed.");
    registry.describe_gauge(
        DIFF_DURATION_MS_P95,
        Some(Unit::Milliseconds),
        "95th percentile of diff duration over the last five minutes, in milliseconds.",
    );
    registry.describe_histogram(DIFF_DURATION_SECONDS, Some(Unit::Seconds), "Diff duration.");
    registry.describe_counter(
        QUEUE_CREATE_ERROR_TOTAL,
        None,
        "Queues that could not be created.",
    );
    registry.describe_gauge(
        SENTINEL_GAP_COUNT,
        None,
        "Diffs that carried a version sentinel but created no new node (only increases).",
    );
    registry.describe_gauge(
        ORPHAN_QUEUE_TOTAL,
        None,
        "Orphan queues seen by the last GC run.",
    );
    registry.describe_gauge(
        GC_LAST_RUN_TIMESTAMP,
        Some(Unit::Seconds),
        "Unix time at which the last GC run completed.",
    );
    registry.describe_counter(GC_QUEUES_DROPPED_TOTAL, None, "Orphan queues GC dropped.");
    registry.describe_counter(
        GC_QUEUES_ARCHIVED_TOTAL,
        None,
        "Orphan queues GC archived before dropping.",
    );
    registry.describe_counter(GC_FAILURES_TOTAL, None, "GC steps that failed, by stage.");
    registry.describe_gauge(
        COMPUTE_NODES_TOTAL,
        None,
        "Compute nodes in the stored graph.",
    );
    registry.describe_gauge(QUEUES_TOTAL, None, "Queues in the stored graph.");
    registry.describe_counter(
        CROSS_CONTEXT_CACHE_HIT_TOTAL,
        None,
        "Diffs refused for reusing a queue under a different compute context.",
    );
}

/// Help text and units of the lag families, on whichever registry measures lag.
pub fn describe_lag(registry: &MetricsRegistry) {
    registry.describe_gauge(
        QUEUE_LAG_SECONDS,
        Some(Unit::Seconds),
        "Age of the oldest message a consumer group has not consumed yet (worst group).",
    );
    registry.describe_gauge(
        QUEUE_LAG_MESSAGES,
        Some(Unit::Count),
        "Messages behind the high watermarks (worst consumer group).",
    );
    registry.describe_gauge(
        QUEUE_LAG_THRESHOLD_SECONDS,
        Some(Unit::Seconds),
        "Lag in seconds a queue may reach before QueueLagHigh fires.",
    );
    registry.describe_counter(
        QUEUE_LAG_ERRORS_TOTAL,
        Some(Unit::Count),
        "Lag measurements that failed (the broker did not answer).",
    );
    registry.describe_gauge(
        QUEUE_LAG_LAST_RUN_TIMESTAMP,
        Some(Unit::Seconds),
        "Unix time of the last completed lag measurement.",
    );
}

/// Help text and units of the standalone exporter's own families.
pub fn describe_exporter(registry: &MetricsRegistry) {
    registry.describe_gauge(
        DAGMANAGER_UP,
        None,
        "1 when the last look at the DAG Manager's metrics succeeded, else 0.",
    );
    registry.describe_gauge(
        DAGMANAGER_SCRAPE_DURATION_SECONDS,
        Some(Unit::Seconds),
        "How long the last look at the DAG Manager's metrics took.",
    );
    registry.describe_counter(
        DAGMANAGER_SCRAPE_FAILURES_TOTAL,
        Some(Unit::Count),
        "Looks at the DAG Manager's metrics that failed.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lag_family_has_the_lag_prefix() {
        for name in [
            QUEUE_LAG_SECONDS,
            QUEUE_LAG_MESSAGES,
            QUEUE_LAG_THRESHOLD_SECONDS,
            QUEUE_LAG_ERRORS_TOTAL,
            QUEUE_LAG_LAST_RUN_TIMESTAMP,
        ] {
            assert!(name.starts_with(QUEUE_LAG_PREFIX), "{name}");
        }
    }
}
