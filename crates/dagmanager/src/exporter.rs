//! `qmtl service dagmanager metrics`: a standalone exporter that shows the live figures of a
//! running DAG Manager (read from its admin `/metrics` at every scrape) beside its own
//! `dagmanager_up`, so an operator running only this command sees `diff_requests_total` move,
//! and sees plainly when the DAG Manager cannot be reached.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use kit::http::{BaseUrl, Client, ClientError, Url, UrlError};
use kit::metrics::{BucketError, MetricsRegistry};
use kit::shutdown::Shutdown;
use metrics::{Counter, Gauge};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

use crate::metrics::{
    DAGMANAGER_SCRAPE_DURATION_SECONDS, DAGMANAGER_SCRAPE_FAILURES_TOTAL, DAGMANAGER_UP,
    EXPORTER_SERVICE, QUEUE_LAG_PREFIX, describe_exporter,
};

/// Where the DAG Manager is and how long a look at it may take.
#[derive(Debug, Clone)]
pub struct ExporterSettings {
    /// The DAG Manager's admin HTTP address (`host:port` or `http://host:port`).
    pub target: String,
    pub scrape_timeout: Duration,
    /// A Kafka bootstrap list: the exporter then measures consumer lag itself, for every topic
    /// on the broker, and its `queue_lag_*` families replace the DAG Manager's.
    pub kafka: Option<String>,
    pub lag_interval: Duration,
    pub lag_threshold_secs: f64,
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error(transparent)]
    Metrics(#[from] BucketError),
    #[error("the DAG Manager's address is not usable")]
    Target(#[from] UrlError),
    #[error("the exporter's HTTP client could not be built")]
    Client(#[from] ClientError),
}

#[derive(Clone)]
struct Exporter {
    url: Url,
    client: Client,
    registry: MetricsRegistry,
    up: Gauge,
    duration: Gauge,
    failures: Counter,
    /// The exporter measures lag itself: the DAG Manager's lag families are left out.
    own_lag: bool,
}

impl Exporter {
    fn new(settings: &ExporterSettings) -> Result<Exporter, SetupError> {
        let url = BaseUrl::parse(&settings.target)?.join("metrics");
        let client = kit::http::client(settings.scrape_timeout)?;
        let registry = MetricsRegistry::builder()
            .service(EXPORTER_SERVICE, env!("CARGO_PKG_VERSION"))
            .build()?;
        describe_exporter(&registry);
        let exporter = Exporter {
            url,
            client,
            up: registry.gauge(DAGMANAGER_UP, &[]),
            duration: registry.gauge(DAGMANAGER_SCRAPE_DURATION_SECONDS, &[]),
            failures: registry.counter(DAGMANAGER_SCRAPE_FAILURES_TOTAL, &[]),
            registry,
            own_lag: settings.kafka.is_some(),
        };
        exporter.up.set(0.0);
        exporter.failures.increment(0);
        Ok(exporter)
    }

    /// The DAG Manager's exposition; a failure as its message with every cause.
    async fn fetch(&self) -> Result<String, String> {
        let response = self
            .client
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| kit::error::chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|e| kit::error::chain(&e))?;
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }

    async fn scrape(&self) -> String {
        let started = Instant::now();
        let live = self.fetch().await;
        self.duration.set(started.elapsed().as_secs_f64());
        match live {
            Ok(text) => {
                self.up.set(1.0);
                let mut body = if self.own_lag {
                    without_lag(&text)
                } else {
                    text
                };
                // The DAG Manager's process and build figures describe another process: its
                // own endpoint serves them. These are the exporter's.
                body = without_families(&body, &self_described());
                if !body.ends_with('\n') {
                    body.push('\n');
                }
                // A family both expositions have (`otel_spans_dropped_total`) appears once:
                // the DAG Manager's.
                let theirs = families(&body);
                body.push_str(&without_families(&self.registry.render(), &theirs));
                body
            }
            Err(error) => {
                self.up.set(0.0);
                self.failures.increment(1);
                tracing::warn!(target = %self.url, %error, "The DAG Manager's metrics are unavailable.");
                self.registry.render()
            }
        }
    }
}

/// The family names an exposition declares (its `# TYPE` lines).
fn families(text: &str) -> std::collections::HashSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The family a line belongs to (a sample's name without its histogram suffix, or the name a
/// HELP/TYPE line declares).
fn family_of(line: &str) -> &str {
    let name = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    let name = name.split(['{', ' ']).next().unwrap_or(name);
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// The families that describe the process serving them: the resource figures, the build and
/// the readiness.
fn self_described() -> std::collections::HashSet<String> {
    kit::metrics::PROCESS_FAMILIES
        .iter()
        .chain([&kit::metrics::BUILD_INFO, &kit::metrics::READY])
        .map(|name| (*name).to_owned())
        .collect()
}

/// The exposition without the named families.
fn without_families(text: &str, names: &std::collections::HashSet<String>) -> String {
    text.lines()
        .filter(|line| {
            let family = family_of(line);
            !(names.contains(family) || names.contains(line.split(['{', ' ']).next().unwrap_or("")))
        })
        .fold(String::with_capacity(text.len()), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

/// The exposition without its `queue_lag_*` families (samples and HELP/TYPE lines).
fn without_lag(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            !name.starts_with(QUEUE_LAG_PREFIX)
        })
        .fold(String::with_capacity(text.len()), |mut out, line| {
            out.push_str(line);
            out.push('\n');
            out
        })
}

async fn metrics_handler(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        exporter.scrape().await,
    )
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve_exporter(
    settings: ExporterSettings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let exporter = Arc::new(Exporter::new(&settings).map_err(std::io::Error::other)?);
    if let Some(bootstrap) = &settings.kafka {
        let lag = Arc::new(crate::lag::LagMonitor::new(
            crate::lag::LagSettings {
                bootstrap: crate::kafka::bootstrap_of(bootstrap),
                interval: settings.lag_interval,
                timeout: settings.scrape_timeout,
                default_threshold_secs: settings.lag_threshold_secs,
                thresholds: Default::default(),
            },
            crate::lag::LagTopics::Broker,
            &exporter.registry,
        ));
        tokio::spawn(lag.run_scheduled(shutdown.clone()));
    }
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(exporter);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.triggered())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_both_expositions_have_appears_once() {
        let theirs = "# TYPE otel_spans_dropped_total counter\notel_spans_dropped_total 0\n";
        let ours = "# HELP otel_spans_dropped_total x\n# TYPE otel_spans_dropped_total counter\notel_spans_dropped_total 1\n# TYPE dagmanager_up gauge\ndagmanager_up 1\n";
        assert_eq!(
            without_families(ours, &families(theirs)),
            "# TYPE dagmanager_up gauge\ndagmanager_up 1\n"
        );
    }

    #[test]
    fn the_dag_managers_lag_families_are_left_out() {
        let text = "# HELP queue_lag_seconds a\n# TYPE queue_lag_seconds gauge\nqueue_lag_seconds{topic=\"t\"} 3\n# TYPE diff_requests_total counter\ndiff_requests_total 2\n";
        assert_eq!(
            without_lag(text),
            "# TYPE diff_requests_total counter\ndiff_requests_total 2\n"
        );
    }
}
