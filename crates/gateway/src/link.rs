//! The Gateway's link to the DAG Manager: the generated gRPC client behind the three-strike
//! breaker, and the health probe that runs outside the breaker and closes it again.

use dagclient::{ClientError, CollectedDiff, collect_diff};
use kit::breaker::{BreakerError, CircuitBreaker};
use kit::clock::Clock;
use kit::probe::HealthProbe;
use kit::shutdown::Shutdown;
use proto::diff_service_client::DiffServiceClient;
use proto::health_check_client::HealthCheckClient;
use proto::tag_query_client::TagQueryClient;
use proto::{DiffRequest, QueueDescriptor, StatusRequest, TagQueryRequest};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::{DAGCLIENT_BREAKER, GatewayMetrics};

/// Why a call to the DAG Manager failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the DAG Manager address {address:?} is not valid")]
    Address { address: String },
    /// The DAG Manager is unavailable (or the breaker is open): try again later.
    #[error("the DAG Manager is unavailable: {reason}")]
    Unavailable { reason: String },
    /// The DAG Manager refused the request itself: trying again will not help.
    #[error("the DAG Manager refused the request: {reason}")]
    Refused { reason: String },
}

/// What the probe last saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagManagerHealth {
    Unknown,
    Ok,
    Error,
}

impl DagManagerHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            DagManagerHealth::Unknown => "unknown",
            DagManagerHealth::Ok => "ok",
            DagManagerHealth::Error => "error",
        }
    }
}

/// Errors of the DAG Manager's own making count against the breaker; a refusal of the
/// request (bad DAG, cross-context reuse, a CRC disagreement) is the caller's and does not.
fn is_dependency_failure(error: &ClientError) -> bool {
    match error {
        ClientError::InvalidAddress { .. } | ClientError::CrcMismatch { .. } => false,
        ClientError::Connect { .. } => true,
        ClientError::Status(status) => !matches!(
            status.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::AlreadyExists
                | Code::NotFound
                | Code::OutOfRange
                | Code::PermissionDenied
                | Code::Unauthenticated
        ),
    }
}

fn link_error(error: BreakerError<ClientError>) -> LinkError {
    match error {
        BreakerError::Open { dependency } => LinkError::Unavailable {
            reason: format!("circuit breaker for {dependency} is open"),
        },
        BreakerError::Call(error) if is_dependency_failure(&error) => LinkError::Unavailable {
            reason: kit::error::chain(&error),
        },
        BreakerError::Call(error) => LinkError::Refused {
            reason: kit::error::chain(&error),
        },
    }
}

/// The DAG Manager as the Gateway sees it.
#[derive(Debug)]
pub struct DagManagerLink {
    channel: Channel,
    breaker: CircuitBreaker,
    timeout: Duration,
    health: AtomicU8,
    /// Woken when the probe closes the breaker, so waiting submissions go at once.
    pub recovered: Notify,
}

impl DagManagerLink {
    /// A link that connects lazily, so the Gateway starts whether or not the DAG Manager is up.
    pub fn new(
        address: &str,
        timeout: Duration,
        metrics: &GatewayMetrics,
        clock: Arc<dyn Clock>,
    ) -> Result<DagManagerLink, LinkError> {
        let uri = if address.contains("://") {
            address.to_owned()
        } else {
            format!("http://{address}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|_| LinkError::Address {
            address: address.to_owned(),
        })?;
        let channel = endpoint
            .tcp_nodelay(true)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .timeout(timeout)
            .initial_stream_window_size(dagclient::STREAM_WINDOW_BYTES)
            .initial_connection_window_size(dagclient::CONNECTION_WINDOW_BYTES)
            .connect_lazy();
        Ok(DagManagerLink {
            channel,
            breaker: CircuitBreaker::new(
                "dagmanager",
                DAGCLIENT_BREAKER,
                metrics.registry(),
                clock,
            ),
            timeout,
            health: AtomicU8::new(0),
            recovered: Notify::new(),
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    pub fn health(&self) -> DagManagerHealth {
        match self.health.load(Ordering::SeqCst) {
            1 => DagManagerHealth::Ok,
            2 => DagManagerHealth::Error,
            _ => DagManagerHealth::Unknown,
        }
    }

    /// One diff, through the breaker.
    pub async fn diff(&self, request: DiffRequest) -> Result<CollectedDiff, LinkError> {
        let mut client = DiffServiceClient::new(self.channel.clone());
        self.breaker
            .call_classified(collect_diff(&mut client, request), is_dependency_failure)
            .await
            .map_err(link_error)
    }

    /// Queues of nodes matching tags at an interval, through the breaker.
    pub async fn queues_by_tags(
        &self,
        tags: Vec<String>,
        interval: i64,
        match_mode: &str,
    ) -> Result<Vec<QueueDescriptor>, LinkError> {
        let mut client = TagQueryClient::new(self.channel.clone());
        let request = TagQueryRequest {
            tags,
            interval,
            match_mode: match_mode.to_owned(),
        };
        let call = async move {
            client
                .get_queues(request)
                .await
                .map(|r| r.into_inner().queues)
                .map_err(ClientError::Status)
        };
        self.breaker
            .call_classified(call, is_dependency_failure)
            .await
            .map_err(link_error)
    }

    /// Asks `HealthCheck.Status` outside the breaker and records the answer, for `/status` and
    /// the probe loop (which closes the breaker on a healthy one).
    pub async fn probe(&self) -> DagManagerHealth {
        let mut client = HealthCheckClient::new(self.channel.clone());
        let answer = tokio::time::timeout(self.timeout, client.status(StatusRequest {})).await;
        let healthy = matches!(
            &answer,
            Ok(Ok(reply)) if reply.get_ref().neo4j == "ok" && reply.get_ref().state == "running"
        );
        let health = if healthy {
            DagManagerHealth::Ok
        } else {
            DagManagerHealth::Error
        };
        self.health.store(
            match health {
                DagManagerHealth::Ok => 1,
                _ => 2,
            },
            Ordering::SeqCst,
        );
        health
    }

    /// Probes every `interval` until shutdown, logging each change of health. A healthy answer
    /// closes an open breaker and wakes the submissions waiting for it.
    pub async fn run_probe(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let waiting = self.clone();
        HealthProbe::every(interval)
            .closing(self.breaker.clone())
            .on_reset(move || waiting.recovered.notify_waiters())
            .run(shutdown, || {
                let link = self.clone();
                async move {
                    let before = link.health();
                    let now = link.probe().await;
                    if before != now {
                        tracing::info!(dagmanager = now.as_str(), "DAG Manager health changed.");
                    }
                    now == DagManagerHealth::Ok
                }
            })
            .await;
    }
}
