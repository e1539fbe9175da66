//! `spawn_app()` and gRPC helpers.

use dagclient::{CollectedDiff, collect_diff};
use dagmanager::{App, DagManagerSettings};
use kit::shutdown::Shutdown;
use proto::DiffRequest;
use proto::admin_service_client::AdminServiceClient;
use proto::diff_service_client::DiffServiceClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::Channel;

/// A running DAG Manager and what a test needs to reach and stop it.
pub(crate) struct TestApp {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub settings: DagManagerSettings,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), dagmanager::RunError>>,
}

/// Settings for a test: ports 0, stores under `dir`.
pub(crate) fn test_settings(dir: &std::path::Path) -> DagManagerSettings {
    let mut settings = DagManagerSettings {
        grpc_port: 0,
        admin_port: 0,
        data_dir: dir.join("data"),
        shutdown_grace_ms: 2_000,
        ..DagManagerSettings::default()
    };
    settings.gc.archive_dir = dir.join("archive");
    settings.gc.interval_secs = 3600;
    settings
}

pub(crate) async fn spawn_app(settings: DagManagerSettings) -> TestApp {
    let app = App::build(settings.clone())
        .await
        .expect("the DAG Manager builds");
    let (grpc_addr, admin_addr) = (app.grpc_addr(), app.admin_addr());
    let shutdown = Shutdown::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        grpc_addr,
        admin_addr,
        settings,
        shutdown,
        task,
    }
}

impl TestApp {
    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    pub(crate) async fn channel(&self) -> Channel {
        dagclient::connect(&self.grpc_addr.to_string())
            .await
            .expect("the gRPC port answers")
    }

    pub(crate) async fn diff_client(&self) -> DiffServiceClient<Channel> {
        DiffServiceClient::new(self.channel().await)
    }

    pub(crate) async fn admin_client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    /// Diffs `dag` for `strategy_id` with no world.
    pub(crate) async fn diff(
        &self,
        strategy_id: &str,
        dag: &serde_json::Value,
    ) -> Result<CollectedDiff, dagclient::ClientError> {
        self.diff_request(request(strategy_id, dag)).await
    }

    pub(crate) async fn diff_request(
        &self,
        request: DiffRequest,
    ) -> Result<CollectedDiff, dagclient::ClientError> {
        collect_diff(&mut self.diff_client().await, request).await
    }

    pub(crate) async fn metrics(&self) -> test_support::Exposition {
        test_support::scrape(&self.admin_url("/metrics"))
            .await
            .expect("metrics scrape")
    }

    pub(crate) async fn metrics_text(&self) -> String {
        let (status, text) = test_support::http_get(&self.admin_url("/metrics"))
            .await
            .expect("metrics scrape");
        assert_eq!(status, 200);
        text
    }

    /// Stops the service and waits until it has drained, so its files can be reopened.
    pub(crate) async fn stop(self) -> DagManagerSettings {
        self.shutdown.trigger();
        self.task
            .await
            .expect("the service task ends")
            .expect("the service stops cleanly");
        self.settings
    }
}

pub(crate) fn request(strategy_id: &str, dag: &serde_json::Value) -> DiffRequest {
    DiffRequest {
        strategy_id: strategy_id.to_owned(),
        dag_json: dag.to_string(),
        ..DiffRequest::default()
    }
}

pub(crate) fn temp_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Counts log events whose message is `message` while the guard lives. Only events of this
/// thread are seen, which is every task of the app under `#[tokio::test]` (one thread).
pub(crate) fn count_logs(
    message: &'static str,
) -> (Arc<AtomicUsize>, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::layer::SubscriberExt as _;
    let seen = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(LogCounter {
        message,
        seen: seen.clone(),
    });
    (seen, tracing::subscriber::set_default(subscriber))
}

struct LogCounter {
    message: &'static str,
    seen: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = MessageIs(self.message, false);
        event.record(&mut message);
        if message.1 {
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether an event's message is the one looked for.
struct MessageIs(&'static str, bool);

impl tracing::field::Visit for MessageIs {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == self.0 {
            self.1 = true;
        }
    }
}
