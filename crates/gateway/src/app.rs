//! Builds the Gateway from its settings (binding its listener, port 0 allowed) and runs it until
//! shutdown: the API with the admin routes, the carrier, the DAG Manager probe and the store's
//! readiness probe.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use kit::clock::{Clock, SystemClock};
use kit::metrics::{Readiness, RecentQuantile};
use kit::probe::HealthProbe;
use kit::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::carrier::Carrier;
use crate::link::{DagManagerLink, LinkError};
use crate::metrics::GatewayMetrics;
use crate::routes::{self, ApiState};
use crate::settings::GatewaySettings;
use crate::submissions::{SubmissionError, Submissions};

/// Window of `gateway_e2e_latency_p95`.
const LATENCY_WINDOW: Duration = Duration::from_secs(300);

/// Why the Gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics registry could not be built")]
    Metrics(#[from] kit::metrics::BucketError),
    #[error("submission store could not be opened")]
    Store(#[from] SubmissionError),
    #[error("the DAG Manager link could not be set up")]
    Link(#[from] LinkError),
    #[error("could not listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// A built, bound, not yet running Gateway.
#[derive(Debug)]
pub struct App {
    settings: GatewaySettings,
    listener: TcpListener,
    state: ApiState,
    carrier_queue: mpsc::UnboundedReceiver<String>,
}

impl App {
    pub async fn build(settings: GatewaySettings) -> Result<App, BuildError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Arc::new(GatewayMetrics::new()?);
        let submissions = Arc::new(Submissions::open(&settings.data_dir)?);
        let link = Arc::new(DagManagerLink::new(
            &settings.dagmanager_url,
            Duration::from_millis(settings.dagmanager_timeout_ms),
            &metrics,
            clock.clone(),
        )?);
        let (carrier, carrier_queue) = Carrier::new(
            submissions.clone(),
            link.clone(),
            metrics.clone(),
            clock.clone(),
            Duration::from_millis(settings.retry_interval_ms),
            settings.workers,
        );
        let listener = TcpListener::bind((settings.host.as_str(), settings.port))
            .await
            .map_err(|source| BuildError::Bind {
                address: format!("{}:{}", settings.host, settings.port),
                source,
            })?;
        let state = ApiState {
            submissions,
            carrier,
            link,
            metrics,
            submit_latency_ms: Arc::new(RecentQuantile::new(LATENCY_WINDOW, 10_000, clock.clone())),
            clock,
            diff_budget: Duration::from_millis(settings.diff_budget_ms),
            max_nodes: settings.max_nodes,
            shutdown: Shutdown::new(),
        };
        Ok(App {
            settings,
            listener,
            state,
            carrier_queue,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The API over `state`, with the kit's admin routes (`/metrics`, `/healthz`, `/readyz`)
    /// merged in; every route is timed by the same middleware.
    fn router(&self, state: ApiState, readiness: Readiness) -> Router {
        let metrics = state.metrics.clone();
        let refreshed = state.clone();
        let admin = kit::metrics::admin_router(
            state.metrics.registry().clone(),
            readiness,
            Arc::new(move || routes::refresh_gauges(&refreshed)),
        );
        Router::new()
            .route("/strategies", post(routes::submit))
            .route("/strategies/dry-run", post(routes::dry_run))
            .route("/strategies/{strategy_id}", get(routes::strategy))
            .route(
                "/strategies/{strategy_id}/status",
                get(routes::strategy_status),
            )
            .route("/queues/by_tag", get(routes::queues_by_tag))
            .route("/status", get(routes::status))
            .route("/health", get(routes::status))
            .with_state(state)
            .merge(admin)
            .fallback(routes::not_found)
            // After the merge: it applies to the routes present when it is called.
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            .layer(axum::middleware::from_fn_with_state(
                metrics,
                routes::record_request,
            ))
    }

    /// Serves until `shutdown` fires, then stops taking requests and drains within the grace
    /// period; submissions not yet carried stay `queued` in the store for the next start.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), std::io::Error> {
        let state = ApiState {
            shutdown: shutdown.clone(),
            ..self.state.clone()
        };
        let readiness = Readiness::default();
        // Ready from the first request on when the store is, not one probe later.
        readiness.set(state.submissions.probe().is_ok());
        let router = self.router(state.clone(), readiness.clone());
        let grace = Duration::from_millis(self.settings.shutdown_grace_ms);
        let probe_interval = Duration::from_millis(self.settings.probe_interval_ms);
        let probe = tokio::spawn(
            state
                .link
                .clone()
                .run_probe(probe_interval, shutdown.clone()),
        );
        let store_probe = tokio::spawn(store_readiness(
            state.submissions.clone(),
            readiness,
            probe_interval,
            shutdown.clone(),
        ));
        let carrier = tokio::spawn(
            state
                .carrier
                .clone()
                .run(self.carrier_queue, shutdown.clone()),
        );
        let server =
            axum::serve(self.listener, router).with_graceful_shutdown(shutdown.triggered());
        let result = tokio::select! {
            result = server => result,
            () = async {
                shutdown.triggered().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "Shutdown grace period over; dropping in-flight requests.");
                Ok(())
            }
        };
        shutdown.trigger();
        let _ = probe.await;
        let _ = store_probe.await;
        let _ = tokio::time::timeout(grace, carrier).await;
        result
    }
}

/// Keeps `/readyz` answering whether the Gateway can accept submissions: its store is open and
/// writable. The DAG Manager's health is no part of it, since submissions are accepted durably
/// while it is away. Not ready from shutdown on.
async fn store_readiness(
    submissions: Arc<Submissions>,
    readiness: Readiness,
    interval: Duration,
    shutdown: Shutdown,
) {
    HealthProbe::every(interval)
        .run(shutdown, || {
            let probed = submissions.probe();
            let ready = probed.is_ok();
            if readiness.is_ready() != ready {
                match &probed {
                    Ok(()) => tracing::info!(ready, "The submission store is writable again."),
                    Err(error) => tracing::warn!(
                        ready,
                        code = "E_STORE",
                        error = %kit::error::chain(error),
                        "The submission store cannot take submissions."
                    ),
                }
            }
            readiness.set(ready);
            std::future::ready(ready)
        })
        .await;
    readiness.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// A submission the store cannot persist gets 503 `E_STORE_UNAVAILABLE`, is counted in
    /// `lost_requests_total`, and leaves nothing behind: the same DAG is accepted once the
    /// store works again.
    #[tokio::test]
    async fn a_submission_the_store_cannot_keep_gets_503_is_counted_and_can_be_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let app = App::build(GatewaySettings {
            port: 0,
            // Nothing listens there: the submission stays queued, which is all this needs.
            dagmanager_url: "127.0.0.1:1".into(),
            data_dir: dir.path().to_path_buf(),
            diff_budget_ms: 50,
            ..GatewaySettings::default()
        })
        .await
        .unwrap();
        let url = format!("http://{}", app.addr());
        let submissions = app.state.submissions.clone();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let dag = test_support::synthetic_dag(3, "store-down");
        let body = serde_json::json!({
            "dag_json": base64::engine::general_purpose::STANDARD.encode(dag.to_string()),
            "world_ids": ["w"],
        })
        .to_string();

        submissions.fail_next_commits(1);
        let (status, answer) = test_support::http("POST", &format!("{url}/strategies"), &body)
            .await
            .unwrap();
        assert_eq!(status, 503, "{answer}");
        assert!(answer.contains("E_STORE_UNAVAILABLE"), "{answer}");
        let metrics = test_support::scrape(&format!("{url}/metrics"))
            .await
            .unwrap();
        assert_eq!(metrics.value("lost_requests_total", &[]), Some(1.0));

        let (status, answer) = test_support::http("POST", &format!("{url}/strategies"), &body)
            .await
            .unwrap();
        assert_eq!(status, 202, "the DAG was not left claimed: {answer}");
        let metrics = test_support::scrape(&format!("{url}/metrics"))
            .await
            .unwrap();
        assert_eq!(metrics.value("lost_requests_total", &[]), Some(1.0));
        shutdown.trigger();
        task.await.unwrap().unwrap();
    }
}
