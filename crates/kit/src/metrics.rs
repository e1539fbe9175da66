//! Each service's own Prometheus registry (with its process's resource figures and its build
//! info), the admin endpoints (`/metrics`, `/healthz`, `/readyz`) and a recent-window quantile for
//! the `*_p95` gauges operators alert on.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

static METADATA: Metadata<'static> = Metadata::new("qmtl", metrics::Level::INFO, Some("qmtl"));

/// Why a registry could not be built.
#[derive(Debug, thiserror::Error)]
#[error("histogram buckets for `{metric}` are invalid")]
pub struct BucketError {
    metric: String,
    #[source]
    source: metrics_exporter_prometheus::BuildError,
}

/// `qmtl_ready`: 1 while the service can do its work, 0 while not (what `/readyz` answers at the
/// scrape), so an alert can tell a target that is up but not ready.
pub const READY: &str = "qmtl_ready";

/// `qmtl_build_info{service, version}`, always 1: which build of which service a target runs.
pub const BUILD_INFO: &str = "qmtl_build_info";

/// The process's resource families every registry carries (metrics-process names them; the
/// Prometheus client libraries' conventional names, which dashboards and alerts expect).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Whole seconds: the metrics crate's counters are integers (over a 5-minute `rate()` window that
/// is exact to 1/300 of a core).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
/// Every family the process collector writes, the five above among them.
pub const PROCESS_FAMILIES: &[&str] = &[
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_START_TIME_SECONDS,
    "process_threads",
];

/// Builds a [`MetricsRegistry`] with explicit histogram buckets per metric name.
#[derive(Debug, Default)]
pub struct MetricsRegistryBuilder {
    buckets: Vec<(String, Vec<f64>)>,
    service: Option<(&'static str, &'static str)>,
}

impl MetricsRegistryBuilder {
    /// The service the registry belongs to and its version: `qmtl_build_info{service, version}`.
    pub fn service(mut self, name: &'static str, version: &'static str) -> Self {
        self.service = Some((name, version));
        self
    }

    pub fn histogram_buckets(mut self, metric: &str, buckets: &[f64]) -> Self {
        self.buckets.push((metric.to_owned(), buckets.to_vec()));
        self
    }

    pub fn build(self) -> Result<MetricsRegistry, BucketError> {
        let mut builder = PrometheusBuilder::new();
        for (metric, buckets) in self.buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(metric.clone()), &buckets)
                .map_err(|source| BucketError { metric, source })?;
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || process.describe());
        let registry = MetricsRegistry {
            recorder: Arc::new(recorder),
            handle,
            spans_dropped: Counter::noop(),
            process,
        };
        if let Some((service, version)) = self.service {
            registry.describe_gauge(
                BUILD_INFO,
                None,
                "Always 1: the service and version this target runs.",
            );
            registry
                .gauge(BUILD_INFO, &[("service", service), ("version", version)])
                .set(1.0);
        }
        registry.describe_counter(
            SPANS_DROPPED_TOTAL,
            Some(Unit::Count),
            "Spans the trace collector could not take (down or slow); dropped, never blocking.",
        );
        let spans_dropped = registry.counter(SPANS_DROPPED_TOTAL, &[]);
        spans_dropped.absolute(0);
        Ok(MetricsRegistry {
            spans_dropped,
            ..registry
        })
    }
}

/// One service's registry. Services hold metric handles taken from it, so two services in one
/// test process never see each other's families.
#[derive(Clone)]
pub struct MetricsRegistry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    spans_dropped: Counter,
    /// Reads the process's figures into this registry at each render.
    process: metrics_process::Collector,
}

/// Every registry carries the process's dropped-span count, current at each render.
pub const SPANS_DROPPED_TOTAL: &str = "otel_spans_dropped_total";

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRegistry")
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

impl MetricsRegistry {
    pub fn builder() -> MetricsRegistryBuilder {
        MetricsRegistryBuilder::default()
    }

    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Histogram {
        self.recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    pub fn describe_counter(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.recorder
            .describe_counter(name.into(), unit, help.into());
    }

    pub fn describe_gauge(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.recorder.describe_gauge(name.into(), unit, help.into());
    }

    pub fn describe_histogram(&self, name: &'static str, unit: Option<Unit>, help: &'static str) {
        self.recorder
            .describe_histogram(name.into(), unit, help.into());
    }

    /// The Prometheus text exposition of everything registered so far, with the process's
    /// resource figures read now.
    pub fn render(&self) -> String {
        self.spans_dropped
            .absolute(crate::telemetry::spans_dropped());
        metrics::with_local_recorder(self.recorder.as_ref(), || self.process.collect());
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// Whether a service is ready to take traffic; flipped by the service as dependencies come and go.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Called before each scrape so gauges derived from state (windows, store sizes) are current.
pub type RefreshHook = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: MetricsRegistry,
    readiness: Readiness,
    ready: Gauge,
    refresh: RefreshHook,
}

/// `/metrics`, `/healthz` (the process answers) and `/readyz` (the service can do its work).
pub fn admin_router(
    registry: MetricsRegistry,
    readiness: Readiness,
    refresh: RefreshHook,
) -> Router {
    registry.describe_gauge(
        READY,
        None,
        "1 while the service can do its work (what /readyz answers), 0 while not.",
    );
    let ready = registry.gauge(READY, &[]);
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz_handler))
        .with_state(AdminState {
            registry,
            readiness,
            ready,
            refresh,
        })
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (state.refresh)();
    state
        .ready
        .set(if state.readiness.is_ready() { 1.0 } else { 0.0 });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.registry.render(),
    )
}

async fn readyz_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A quantile over the samples of a recent time window (at most `capacity` of them), so a
/// `*_p95` gauge decays once traffic stops instead of holding its last value forever.
#[derive(Debug)]
pub struct RecentQuantile {
    window: Duration,
    capacity: usize,
    clock: Arc<dyn Clock>,
    samples: Mutex<VecDeque<(Instant, f64)>>,
}

impl RecentQuantile {
    pub fn new(window: Duration, capacity: usize, clock: Arc<dyn Clock>) -> RecentQuantile {
        RecentQuantile {
            window,
            capacity: capacity.max(1),
            clock,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    pub fn record(&self, value: f64) {
        let now = self.clock.now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back((now, value));
    }

    /// The `q` quantile (nearest rank) of the samples still in the window; 0 when there are none.
    pub fn quantile(&self, q: f64) -> f64 {
        let now = self.clock.now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        while samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.window)
        {
            samples.pop_front();
        }
        if samples.is_empty() {
            return 0.0;
        }
        let mut values: Vec<f64> = samples.iter().map(|(_, v)| *v).collect();
        values.sort_unstable_by(f64::total_cmp);
        let rank =
            ((q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::SystemTime;

    #[test]
    fn the_recent_p95_forgets_samples_older_than_the_window() {
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH));
        let window = RecentQuantile::new(Duration::from_secs(60), 1000, clock.clone());
        for v in 1..=100 {
            window.record(f64::from(v));
        }
        assert_eq!(window.quantile(0.95), 95.0);
        clock.advance(Duration::from_secs(61));
        assert_eq!(window.quantile(0.95), 0.0);
        window.record(7.0);
        assert_eq!(window.quantile(0.95), 7.0);
    }

    #[test]
    fn two_registries_do_not_share_families() {
        let a = MetricsRegistry::builder().build().unwrap();
        let b = MetricsRegistry::builder().build().unwrap();
        a.counter("only_in_a_total", &[]).increment(1);
        assert!(a.render().contains("only_in_a_total 1"));
        assert!(!b.render().contains("only_in_a_total"));
    }

    #[test]
    fn histograms_use_the_buckets_given() {
        let registry = MetricsRegistry::builder()
            .histogram_buckets("h_seconds", &[0.1, 1.0])
            .build()
            .unwrap();
        registry.histogram("h_seconds", &[]).record(0.5);
        let text = registry.render();
        assert!(text.contains("h_seconds_bucket{le=\"1\"} 1"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"0.1\"} 0"), "{text}");
    }

    /// A sample's value in an exposition: `name` alone or `name{labels}` exactly as written.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_registry_carries_its_process_figures_and_a_service_its_build_info() {
        let registry = MetricsRegistry::builder()
            .service("probe-service", "9.9.9")
            .build()
            .unwrap();
        let text = registry.render();
        for family in PROCESS_FAMILIES {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        let resident = sample(&text, PROCESS_RESIDENT_MEMORY_BYTES).expect("resident memory");
        assert!(resident > 1_000_000.0, "resident memory {resident}");
        let open = sample(&text, PROCESS_OPEN_FDS).expect("open fds");
        let max = sample(&text, PROCESS_MAX_FDS).expect("max fds");
        assert!(open >= 3.0 && max >= open, "fds {open} of {max}");
        let started = sample(&text, PROCESS_START_TIME_SECONDS).expect("start time");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            started > now - 86_400.0 && started <= now + 1.0,
            "start {started}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "qmtl_build_info{service=\"probe-service\",version=\"9.9.9\"}"
            ),
            Some(1.0),
            "{text}"
        );
        // A registry without a service has no build info, but still its process.
        let anonymous = MetricsRegistry::builder().build().unwrap().render();
        assert!(!anonymous.contains(BUILD_INFO));
        assert!(anonymous.contains(PROCESS_RESIDENT_MEMORY_BYTES));
    }

    #[test]
    fn cpu_time_is_the_process_cpu_in_whole_seconds() {
        // The metrics crate's counters are integers, so the figure counts whole seconds: over a
        // 5-minute rate window that is exact to 1/300 of a core.
        let registry = MetricsRegistry::builder().build().unwrap();
        let spin = Instant::now();
        let mut x = 0u64;
        while test_support::bench::process_cpu() < Duration::from_millis(1100)
            && spin.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let reported = sample(&registry.render(), PROCESS_CPU_SECONDS_TOTAL).expect("cpu");
        let measured = test_support::bench::process_cpu().as_secs_f64();
        assert!(
            reported >= 1.0 && reported <= measured && reported > measured - 1.0,
            "reported {reported} s of {measured} s"
        );
    }

    #[tokio::test]
    async fn the_ready_gauge_follows_readiness_at_each_scrape() {
        let registry = MetricsRegistry::builder().build().unwrap();
        let readiness = Readiness::default();
        let router = admin_router(registry, readiness.clone(), Arc::new(|| {}));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let scrape = || async {
            let (_, text) = test_support::http_get(&format!("http://{address}/metrics"))
                .await
                .expect("a scrape");
            sample(&text, READY)
        };
        assert_eq!(scrape().await, Some(0.0));
        readiness.set(true);
        assert_eq!(scrape().await, Some(1.0));
        readiness.set(false);
        assert_eq!(scrape().await, Some(0.0));
    }
}
