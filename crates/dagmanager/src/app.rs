//! Builds the DAG Manager from its settings (binding every listener, port 0 allowed) and runs it
//! until shutdown, then drains.

use kit::clock::{Clock, SystemClock};
use kit::metrics::{Readiness, admin_router};
use kit::probe::HealthProbe;
use kit::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::diff::{DiffEngine, DiffSettings};
use crate::gc::GarbageCollector;
use crate::grpc::{
    AckRegistry, AdminServer, DiffServer, HealthServer, StreamSettings, TagQueryServer,
};
use crate::kafka::KafkaQueueAdmin;
use crate::lag::{LagMonitor, LagSettings, LagTopics};
use crate::metrics::DagManagerMetrics;
use crate::queues::{EmbeddedQueueAdmin, QueueAdmin, QueueAdminError};
use crate::settings::DagManagerSettings;
use crate::store::{EmbeddedGraphStore, GraphStore, StoreError};

/// HTTP/2 windows large enough that a multi-megabyte DAG crosses in one flight, and frames
/// large enough that it crosses in a few frames, not hundreds.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Why the service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("metrics registry could not be built")]
    Metrics(#[from] kit::metrics::BucketError),
    #[error("graph store could not be opened")]
    Store(#[from] StoreError),
    #[error("queue registry could not be opened")]
    Queues(#[from] QueueAdminError),
    #[error("could not listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin HTTP server failed")]
    Admin(#[source] std::io::Error),
}

/// A built, bound, not yet running DAG Manager.
#[derive(Debug)]
pub struct App {
    settings: DagManagerSettings,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    metrics: DagManagerMetrics,
    store: Arc<dyn GraphStore>,
    queues: Arc<dyn QueueAdmin>,
    engine: Arc<DiffEngine>,
    gc: Arc<GarbageCollector>,
    lag: Option<Arc<LagMonitor>>,
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, BuildError> {
    TcpListener::bind((host, port))
        .await
        .map_err(|source| BuildError::Bind {
            address: format!("{host}:{port}"),
            source,
        })
}

impl App {
    /// Opens the embedded stores under `data_dir` and binds both listeners.
    pub async fn build(settings: DagManagerSettings) -> Result<App, BuildError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = DagManagerMetrics::new()?;
        let store: Arc<dyn GraphStore> = Arc::new(EmbeddedGraphStore::open(&settings.data_dir)?);
        let queues: Arc<dyn QueueAdmin> = if settings.kafka_dsn.trim().is_empty() {
            Arc::new(EmbeddedQueueAdmin::open(&settings.data_dir)?)
        } else {
            Arc::new(KafkaQueueAdmin::open(
                &settings.kafka_dsn,
                &settings.data_dir,
                Duration::from_millis(settings.kafka_timeout_ms),
                metrics.registry(),
            )?)
        };
        let diff_settings = DiffSettings::from(&settings);
        let recreated = reconcile_queues(store.as_ref(), queues.as_ref(), &diff_settings).await?;
        if recreated > 0 {
            tracing::warn!(
                recreated,
                "Re-created queues the graph names and the queue registry had lost."
            );
        }
        let (nodes, queue_count) = store.counts().await?;
        metrics.compute_nodes_total.set(nodes as f64);
        metrics.queues_total.set(queue_count as f64);
        let engine = Arc::new(DiffEngine::new(
            store.clone(),
            queues.clone(),
            metrics.clone(),
            diff_settings,
            clock.clone(),
        ));
        let gc = Arc::new(GarbageCollector::new(
            store.clone(),
            queues.clone(),
            metrics.clone(),
            settings.gc.clone(),
            clock.clone(),
        ));
        let lag = (!settings.kafka_dsn.trim().is_empty()).then(|| {
            Arc::new(LagMonitor::new(
                LagSettings {
                    bootstrap: crate::kafka::bootstrap_of(&settings.kafka_dsn),
                    interval: Duration::from_secs(settings.lag_interval_secs.max(1)),
                    timeout: Duration::from_millis(settings.kafka_timeout_ms),
                    default_threshold_secs: settings.lag_threshold_secs,
                    thresholds: settings.lag_thresholds.clone(),
                },
                LagTopics::Registry(queues.clone()),
                metrics.registry(),
            ))
        });
        let grpc_listener = bind(&settings.host, settings.grpc_port).await?;
        let admin_listener = bind(&settings.host, settings.admin_port).await?;
        Ok(App {
            settings,
            grpc_listener,
            admin_listener,
            metrics,
            store,
            queues,
            engine,
            gc,
            lag,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves gRPC and admin HTTP, runs GC and the readiness probe, until `shutdown` fires; then
    /// stops taking requests and lets in-flight ones finish within the grace period.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), RunError> {
        let readiness = Readiness::default();
        let grace = Duration::from_millis(self.settings.shutdown_grace_ms);
        let grpc = self
            .grpc_router(&shutdown)
            .serve_with_incoming_shutdown(no_delay(self.grpc_listener), shutdown.triggered());

        let engine = self.engine.clone();
        let admin = admin_router(
            self.metrics.registry().clone(),
            readiness.clone(),
            Arc::new(move || engine.refresh_p95()),
        )
        .merge(crate::admin::router(crate::admin::AdminState {
            store: self.store.clone(),
            queues: self.queues.clone(),
            gc: self.gc.clone(),
            shutdown: shutdown.clone(),
        }))
        .fallback(crate::admin::not_found);
        let admin =
            axum::serve(self.admin_listener, admin).with_graceful_shutdown(shutdown.triggered());

        let gc_task = tokio::spawn(self.gc.clone().run_scheduled(shutdown.clone()));
        let lag_task = self
            .lag
            .clone()
            .map(|lag| tokio::spawn(lag.run_scheduled(shutdown.clone())));
        let probe_task = tokio::spawn(readiness_probe(
            self.store.clone(),
            self.queues.clone(),
            readiness.clone(),
            shutdown.clone(),
        ));

        let servers = async {
            tokio::try_join!(async { grpc.await.map_err(RunError::Grpc) }, async {
                admin.await.map_err(RunError::Admin)
            })
        };
        tokio::pin!(servers);
        let result = tokio::select! {
            result = &mut servers => result.map(|_| ()),
            () = async {
                shutdown.triggered().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "Shutdown grace period over; dropping in-flight requests.");
                Ok(())
            }
        };
        shutdown.trigger();
        readiness.set(false);
        let _ = gc_task.await;
        if let Some(task) = lag_task {
            let _ = task.await;
        }
        let _ = probe_task.await;
        result
    }

    /// The four gRPC services on one server, with windows and frames sized for large DAGs.
    fn grpc_router(&self, shutdown: &Shutdown) -> tonic::transport::server::Router {
        let max_message = self
            .settings
            .max_dag_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20);
        let stream = StreamSettings {
            chunk_size: self.settings.chunk_size,
            ack_window: self.settings.ack_window,
            ack_timeout: Duration::from_millis(self.settings.ack_timeout_ms),
            ack_retries: self.settings.ack_retries,
        };
        let diff = DiffServer {
            engine: self.engine.clone(),
            acks: Arc::new(AckRegistry::default()),
            stream,
        };
        tonic::transport::Server::builder()
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .add_service(
                proto::diff_service_server::DiffServiceServer::new(diff)
                    .max_decoding_message_size(max_message),
            )
            .add_service(proto::tag_query_server::TagQueryServer::new(
                TagQueryServer {
                    store: self.store.clone(),
                },
            ))
            .add_service(
                proto::admin_service_server::AdminServiceServer::new(AdminServer {
                    engine: self.engine.clone(),
                    store: self.store.clone(),
                    queues: self.queues.clone(),
                    gc: self.gc.clone(),
                })
                .max_decoding_message_size(max_message),
            )
            .add_service(proto::health_check_server::HealthCheckServer::new(
                HealthServer {
                    store: self.store.clone(),
                    shutdown: shutdown.clone(),
                },
            ))
    }
}

/// Re-creates every queue the graph names that the queue registry lacks: the registry records
/// creations without a flush, so a crash can lose some that the graph (flushed after them)
/// still names. Returns how many were re-created.
async fn reconcile_queues(
    store: &dyn GraphStore,
    queues: &dyn QueueAdmin,
    settings: &DiffSettings,
) -> Result<usize, BuildError> {
    let known: std::collections::HashSet<String> = queues
        .list_queues()
        .await?
        .into_iter()
        .map(|q| q.spec.name)
        .collect();
    let mut recreated = 0;
    for queue in store.queues().await? {
        if !known.contains(&queue.name) {
            queues
                .create_queues(
                    vec![settings.queue_spec(&queue.name, queue.tag.clone())],
                    queue.created_at,
                )
                .await?;
            recreated += 1;
        }
    }
    if recreated > 0 {
        queues.sync().await?;
    }
    Ok(recreated)
}

/// Accepted gRPC connections with Nagle's algorithm off: a diff stream is many small frames
/// answered by small acks, which Nagle and delayed ACKs would hold back by tens of milliseconds.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(error) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %error, "Could not turn Nagle off on a gRPC connection.");
        }
        accepted
    })
}

/// How often readiness is checked (and an open queue breaker probed).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Marks the service ready while its graph store and queue admin answer. A healthy queue admin
/// closes its breaker whatever the store answers: the breaker guards the queue service only.
async fn readiness_probe(
    store: Arc<dyn GraphStore>,
    queues: Arc<dyn QueueAdmin>,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let mut probe = HealthProbe::every(PROBE_INTERVAL);
    if let Some(breaker) = queues.breaker() {
        probe = probe.closing(breaker.clone());
    }
    probe
        .run(shutdown, move || {
            let (store, queues, readiness) = (store.clone(), queues.clone(), readiness.clone());
            async move {
                let queues_ok = match queues.health().await {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::debug!(%error, "The queue service is not healthy.");
                        false
                    }
                };
                let ready = store.health().await.is_ok() && queues_ok;
                if readiness.is_ready() != ready {
                    tracing::info!(ready, "Readiness changed.");
                }
                readiness.set(ready);
                queues_ok
            }
        })
        .await;
}
