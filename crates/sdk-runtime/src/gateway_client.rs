//! Submitting a strategy through the Gateway's HTTP API (wire.md section 3), behind the shared
//! breaker, and waiting for its queue map.

use base64::Engine as _;
use kit::breaker::{BreakerError, CircuitBreaker};
use kit::clock::SystemClock;
use kit::http::{BaseUrl, Client, Method};
use kit::probe::{HealthProbe, ProbeWhen};
use kit::shutdown::Shutdown;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::api::{ApiErrorBody, QueueMap, StrategyAck, StrategyState};

use crate::metrics::{GATEWAYCLIENT_BREAKER, SdkMetrics};

/// How the client talks to the Gateway.
#[derive(Debug, Clone)]
pub struct GatewayClientSettings {
    /// `http://host:port` (a bare `host:port` works too).
    pub url: String,
    /// How long a submission may take, retries and waiting for the queue map included.
    pub submit_timeout: Duration,
    /// Between looks at a queued strategy, and between retries while the Gateway is away.
    pub poll_interval: Duration,
    /// How often the health probe looks at an open breaker's Gateway.
    pub probe_interval: Duration,
    /// One HTTP request's limit.
    pub request_timeout: Duration,
}

/// What the Gateway made of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub strategy_id: String,
    pub queue_map: QueueMap,
    /// The same DAG had been submitted before (409); this is that strategy.
    pub duplicate: bool,
    /// Why the Gateway ran the strategy in a safer context than asked (`missing_as_of`,
    /// `decision_unavailable`), when it said so.
    pub downgrade_reason: Option<String>,
}

/// Why a submission did not give a queue map.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the Gateway refused the strategy ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
        /// The strategy the answer names (a duplicate's original).
        strategy_id: Option<String>,
    },
    #[error("strategy {strategy_id} failed at the Gateway: {reason}")]
    Failed { strategy_id: String, reason: String },
    #[error("the Gateway at {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("strategy {strategy_id} was not completed within {timeout_ms} ms")]
    Timeout {
        strategy_id: String,
        timeout_ms: u64,
    },
    #[error("the Gateway answered something that is not the API: {0}")]
    Protocol(String),
}

/// One HTTP exchange's failure: the Gateway's (counts against the breaker) or ours.
#[derive(Debug)]
enum CallError {
    Dependency(String),
    Answer { status: u16, body: String },
}

/// Where requests go and what sends them.
#[derive(Debug, Clone)]
struct Endpoint {
    base: BaseUrl,
    http: Client,
}

/// The Gateway's client: requests go through the `gatewayclient` breaker; a probe of
/// `GET /health`, outside the breaker, closes it again.
#[derive(Debug)]
pub struct GatewayClient {
    settings: GatewayClientSettings,
    /// `Err`: why the configured address (or the HTTP client) is unusable. Every request then
    /// fails with that reason, as a Gateway that is unavailable.
    endpoint: Result<Endpoint, String>,
    /// The Gateway's address as errors name it.
    url: String,
    breaker: CircuitBreaker,
    /// Stops the health probe when the client is dropped.
    probe: Shutdown,
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        self.probe.trigger();
    }
}

impl GatewayClient {
    /// Needs a Tokio runtime: the health probe runs on it until the client is dropped.
    pub fn new(settings: GatewayClientSettings, metrics: &SdkMetrics) -> GatewayClient {
        let endpoint = endpoint(&settings);
        let url = match &endpoint {
            Ok(endpoint) => endpoint.base.to_string(),
            Err(_) => settings.url.clone(),
        };
        let breaker = CircuitBreaker::new(
            "gateway",
            GATEWAYCLIENT_BREAKER,
            metrics.registry(),
            Arc::new(SystemClock),
        );
        let probe = Shutdown::new();
        tokio::spawn(
            HealthProbe::every(settings.probe_interval)
                .closing(breaker.clone())
                .when(ProbeWhen::BreakerOpen)
                .run(probe.clone(), {
                    let endpoint = endpoint.clone().ok();
                    move || is_healthy(endpoint.clone())
                }),
        );
        GatewayClient {
            settings,
            endpoint,
            url,
            breaker,
            probe,
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Submits a DAG document and waits until the Gateway has its queue map. A duplicate DAG
    /// gives the queue map of the strategy already submitted.
    pub async fn submit(
        &self,
        dag_json: &str,
        node_ids_crc32: u32,
        context: &wire::ComputeContext,
    ) -> Result<Submitted, SubmitError> {
        let deadline = Instant::now() + self.settings.submit_timeout;
        let body = json!({
            "dag_json": base64::engine::general_purpose::STANDARD.encode(dag_json),
            "meta": null,
            "node_ids_crc32": node_ids_crc32,
            "world_ids": [context.world_id],
            "context": {
                "execution_domain": context.execution_domain,
                "as_of": context.as_of,
                "partition": context.partition,
                "dataset_fingerprint": context.dataset_fingerprint,
            },
        })
        .to_string();
        let (strategy_id, duplicate, downgrade) = loop {
            match self
                .call::<StrategyAck>(Method::POST, "/strategies", &body)
                .await
            {
                Ok(ack) => {
                    let downgrade = ack.downgraded.then(|| {
                        ack.downgrade_reason
                            .clone()
                            .unwrap_or_else(|| "unspecified".to_owned())
                    });
                    if let Some(reason) = &downgrade {
                        tracing::warn!(strategy_id = %ack.strategy_id, %reason, safe_mode = %ack.safe_mode, "The Gateway downgraded the strategy's context.");
                    }
                    if ack.status == "completed" {
                        return Ok(Submitted {
                            strategy_id: ack.strategy_id,
                            queue_map: ack.queue_map,
                            duplicate: false,
                            downgrade_reason: downgrade,
                        });
                    }
                    break (ack.strategy_id, false, downgrade);
                }
                Err(Retry::No(SubmitError::Rejected {
                    status: 409,
                    strategy_id: Some(existing),
                    ..
                })) => break (existing, true, None),
                Err(Retry::No(error)) => return Err(error),
                Err(Retry::After(error)) => self.wait_or(deadline, error).await?,
            }
        };
        let mut submitted = self
            .wait_completed(&strategy_id, duplicate, deadline)
            .await?;
        submitted.downgrade_reason = downgrade;
        Ok(submitted)
    }

    async fn wait_completed(
        &self,
        strategy_id: &str,
        duplicate: bool,
        deadline: Instant,
    ) -> Result<Submitted, SubmitError> {
        let path = format!("/strategies/{strategy_id}");
        loop {
            match self.call::<StrategyState>(Method::GET, &path, "").await {
                Ok(state) => match state.status.as_str() {
                    "completed" => {
                        let queue_map = state.queue_map.ok_or_else(|| {
                            SubmitError::Protocol(format!(
                                "bad queue_map: strategy {strategy_id} completed without one"
                            ))
                        })?;
                        return Ok(Submitted {
                            strategy_id: strategy_id.to_owned(),
                            queue_map,
                            duplicate,
                            downgrade_reason: None,
                        });
                    }
                    "failed" => {
                        return Err(SubmitError::Failed {
                            strategy_id: strategy_id.to_owned(),
                            reason: state.reason.unwrap_or_else(|| "unknown".to_owned()),
                        });
                    }
                    _ => {
                        if Instant::now() >= deadline {
                            return Err(SubmitError::Timeout {
                                strategy_id: strategy_id.to_owned(),
                                timeout_ms: self.settings.submit_timeout.as_millis() as u64,
                            });
                        }
                        tokio::time::sleep(self.settings.poll_interval).await;
                    }
                },
                Err(Retry::No(error)) => return Err(error),
                Err(Retry::After(error)) => self.wait_or(deadline, error).await?,
            }
        }
    }

    async fn wait_or(&self, deadline: Instant, error: SubmitError) -> Result<(), SubmitError> {
        if Instant::now() + self.settings.poll_interval >= deadline {
            return Err(error);
        }
        tracing::debug!(%error, "Gateway unavailable; trying again.");
        tokio::time::sleep(self.settings.poll_interval).await;
        Ok(())
    }

    fn unavailable(&self, reason: String) -> SubmitError {
        SubmitError::Unavailable {
            url: self.url.clone(),
            reason,
        }
    }

    /// One request through the breaker: a 2xx gives its JSON as `T`; a 4xx is refused for
    /// good; a 5xx, a transport error or an open breaker may be retried.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<T, Retry> {
        let result = self
            .breaker
            .call_classified(
                async {
                    match self.request(method, path, body).await {
                        Ok((status, text)) if (200..300).contains(&status) => Ok(text),
                        Ok((status, text)) => Err(CallError::Answer { status, body: text }),
                        Err(e) => Err(e),
                    }
                },
                |e| match e {
                    CallError::Dependency(_) => true,
                    CallError::Answer { status, .. } => *status >= 500,
                },
            )
            .await;
        match result {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Retry::No(SubmitError::Protocol(format!("{e}: {text}")))),
            Err(BreakerError::Open { .. }) => Err(Retry::After(
                self.unavailable("its circuit breaker is open".into()),
            )),
            Err(BreakerError::Call(CallError::Dependency(reason))) => {
                Err(Retry::After(self.unavailable(reason)))
            }
            Err(BreakerError::Call(CallError::Answer { status, body })) => {
                let refusal: ApiErrorBody = serde_json::from_str(&body).unwrap_or_default();
                let strategy_id = refusal.strategy_id().map(str::to_owned);
                let code = refusal.code;
                let message = if refusal.message.is_empty() {
                    body
                } else {
                    refusal.message
                };
                if status >= 500 {
                    Err(Retry::After(
                        self.unavailable(format!("{status} {code}: {message}")),
                    ))
                } else {
                    Err(Retry::No(SubmitError::Rejected {
                        status,
                        code,
                        message,
                        strategy_id,
                    }))
                }
            }
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), CallError> {
        let endpoint = self
            .endpoint
            .as_ref()
            .map_err(|reason| CallError::Dependency(reason.clone()))?;
        let mut request = endpoint
            .http
            .request(method, endpoint.base.join(path))
            .header("content-type", "application/json");
        // The caller's span continues in the Gateway (W3C trace context headers).
        if let Some((parent, state)) = kit::trace::context_of(&tracing::Span::current()) {
            request = request.header(kit::trace::TRACEPARENT, parent);
            if let Some(state) = state {
                request = request.header(kit::trace::TRACESTATE, state);
            }
        }
        let response = request
            .body(body.to_owned())
            .send()
            .await
            .map_err(dependency)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(dependency)?;
        Ok((status, text))
    }
}

enum Retry {
    No(SubmitError),
    After(SubmitError),
}

/// The Gateway's base URL and the client to reach it; the client's timeout bounds one request,
/// connection and answer included.
fn endpoint(settings: &GatewayClientSettings) -> Result<Endpoint, String> {
    let base = BaseUrl::parse(&settings.url).map_err(|e| kit::error::chain(&e))?;
    let http = kit::http::client(settings.request_timeout).map_err(|e| kit::error::chain(&e))?;
    Ok(Endpoint { base, http })
}

/// The probe's check: `GET /health` answers 2xx in time. Without a usable endpoint, never.
async fn is_healthy(endpoint: Option<Endpoint>) -> bool {
    let Some(endpoint) = endpoint else {
        return false;
    };
    matches!(
        endpoint.http.get(endpoint.base.join("/health")).send().await,
        Ok(response) if response.status().is_success()
    )
}

/// An exchange that failed on the way: the Gateway is unavailable.
fn dependency(error: reqwest::Error) -> CallError {
    if error.is_timeout() {
        CallError::Dependency("the request timed out".into())
    } else {
        CallError::Dependency(kit::error::chain(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn the_probe_closes_an_open_breaker_once_the_gateway_answers_its_health_check() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let checks = Arc::new(AtomicU32::new(0));
        let router = axum::Router::new().route(
            "/health",
            axum::routing::get({
                let checks = checks.clone();
                move || async move {
                    checks.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        let metrics = SdkMetrics::new().unwrap();
        let client = GatewayClient::new(
            GatewayClientSettings {
                // A bare `host:port`, as operators may write it.
                url: address.to_string(),
                submit_timeout: Duration::from_secs(5),
                poll_interval: Duration::from_millis(10),
                probe_interval: Duration::from_millis(10),
                request_timeout: Duration::from_secs(5),
            },
            &metrics,
        );
        for _ in 0..3 {
            client.breaker().record_failure();
        }
        assert!(client.breaker().is_open());
        test_support::assert_eventually!(
            !client.breaker().is_open(),
            Duration::from_secs(5),
            "the probe did not close the breaker"
        );
        assert!(
            checks.load(Ordering::SeqCst) >= 1,
            "closed by a health check"
        );
    }

    #[tokio::test]
    async fn a_completed_strategy_without_a_queue_map_is_a_protocol_error_not_an_empty_map() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/strategies/{id}",
            axum::routing::get(|| async {
                axum::Json(serde_json::json!({"strategy_id": "s1", "status": "completed"}))
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        let metrics = SdkMetrics::new().unwrap();
        let client = GatewayClient::new(
            GatewayClientSettings {
                url: format!("http://{address}"),
                submit_timeout: Duration::from_secs(5),
                poll_interval: Duration::from_millis(10),
                probe_interval: Duration::from_millis(10),
                request_timeout: Duration::from_secs(5),
            },
            &metrics,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let error = client
            .wait_completed("s1", false, deadline)
            .await
            .expect_err("no queue map to apply");
        assert!(
            matches!(&error, SubmitError::Protocol(reason) if reason.contains("queue_map")),
            "{error:?}"
        );
    }
}
