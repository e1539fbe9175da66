//! Submitting a strategy through the Gateway's HTTP API (wire.md section 3), behind the shared
//! breaker, and waiting for its queue map.

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kit::breaker::{BreakerError, CircuitBreaker};
use kit::clock::SystemClock;
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::api::QueueMap;

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

/// The Gateway's client: requests go through the `gatewayclient` breaker; a probe of
/// `GET /health`, outside the breaker, closes it again.
#[derive(Debug)]
pub struct GatewayClient {
    settings: GatewayClientSettings,
    base: String,
    http: Client<HttpConnector, Full<Bytes>>,
    breaker: CircuitBreaker,
    probe: tokio::task::JoinHandle<()>,
}

impl Drop for GatewayClient {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl GatewayClient {
    /// Needs a Tokio runtime: the health probe runs on it until the client is dropped.
    pub fn new(settings: GatewayClientSettings, metrics: &SdkMetrics) -> GatewayClient {
        let base = if settings.url.contains("://") {
            settings.url.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", settings.url.trim_end_matches('/'))
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.request_timeout));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        let breaker = CircuitBreaker::new(
            "gateway",
            GATEWAYCLIENT_BREAKER,
            metrics.registry(),
            Arc::new(SystemClock),
        );
        let probe = tokio::spawn(probe(
            breaker.clone(),
            http.clone(),
            format!("{base}/health"),
            settings.probe_interval,
            settings.request_timeout,
        ));
        GatewayClient {
            settings,
            base,
            http,
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
            match self.call(hyper::Method::POST, "/strategies", &body).await {
                Ok((_, answer)) => {
                    let id = text(&answer, "strategy_id")?;
                    let downgrade = (answer["downgraded"] == true).then(|| {
                        answer["downgrade_reason"]
                            .as_str()
                            .unwrap_or("unspecified")
                            .to_owned()
                    });
                    if let Some(reason) = &downgrade {
                        tracing::warn!(strategy_id = %id, %reason, safe_mode = %answer["safe_mode"], "The Gateway downgraded the strategy's context.");
                    }
                    if answer["status"] == "completed" {
                        return Ok(Submitted {
                            strategy_id: id,
                            queue_map: queue_map(&answer)?,
                            duplicate: false,
                            downgrade_reason: downgrade,
                        });
                    }
                    break (id, false, downgrade);
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
            match self.call(hyper::Method::GET, &path, "").await {
                Ok((_, answer)) => match answer["status"].as_str() {
                    Some("completed") => {
                        return Ok(Submitted {
                            strategy_id: strategy_id.to_owned(),
                            queue_map: queue_map(&answer)?,
                            duplicate,
                            downgrade_reason: None,
                        });
                    }
                    Some("failed") => {
                        return Err(SubmitError::Failed {
                            strategy_id: strategy_id.to_owned(),
                            reason: answer["reason"].as_str().unwrap_or("unknown").to_owned(),
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
            url: self.base.clone(),
            reason,
        }
    }

    /// One request through the breaker: a 2xx gives its JSON; a 4xx is refused for good; a
    /// 5xx, a transport error or an open breaker may be retried.
    async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: &str,
    ) -> Result<(u16, Json), Retry> {
        let result = self
            .breaker
            .call_classified(
                async {
                    match self.request(method, path, body).await {
                        Ok((status, text)) if (200..300).contains(&status) => Ok((status, text)),
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
            Ok((status, text)) => serde_json::from_str(&text)
                .map(|json| (status, json))
                .map_err(|e| Retry::No(SubmitError::Protocol(format!("{e}: {text}")))),
            Err(BreakerError::Open { .. }) => Err(Retry::After(
                self.unavailable("its circuit breaker is open".into()),
            )),
            Err(BreakerError::Call(CallError::Dependency(reason))) => {
                Err(Retry::After(self.unavailable(reason)))
            }
            Err(BreakerError::Call(CallError::Answer { status, body })) => {
                let answer: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
                let code = answer["code"].as_str().unwrap_or("").to_owned();
                let message = answer["message"].as_str().unwrap_or(&body).to_owned();
                if status >= 500 {
                    Err(Retry::After(
                        self.unavailable(format!("{status} {code}: {message}")),
                    ))
                } else {
                    Err(Retry::No(SubmitError::Rejected {
                        status,
                        code,
                        message,
                        strategy_id: answer["strategy_id"].as_str().map(str::to_owned),
                    }))
                }
            }
        }
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), CallError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        // The caller's span continues in the Gateway (W3C trace context headers).
        if let Some((parent, state)) = kit::trace::context_of(&tracing::Span::current()) {
            request = request.header(kit::trace::TRACEPARENT, parent);
            if let Some(state) = state {
                request = request.header(kit::trace::TRACESTATE, state);
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| CallError::Dependency(e.to_string()))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| CallError::Dependency(format!("{e}")))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Dependency(e.to_string()))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(self.settings.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(CallError::Dependency("the request timed out".into())))
    }
}

enum Retry {
    No(SubmitError),
    After(SubmitError),
}

fn text(answer: &Json, field: &str) -> Result<String, SubmitError> {
    answer[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| SubmitError::Protocol(format!("no `{field}` in {answer}")))
}

fn queue_map(answer: &Json) -> Result<QueueMap, SubmitError> {
    serde_json::from_value(answer["queue_map"].clone())
        .map_err(|e| SubmitError::Protocol(format!("bad queue_map: {e}")))
}

async fn probe(
    breaker: CircuitBreaker,
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
    every: Duration,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !breaker.is_open() {
            continue;
        }
        let Ok(request) = hyper::Request::get(&url).body(Full::new(Bytes::new())) else {
            continue;
        };
        let healthy = matches!(
            tokio::time::timeout(timeout, http.request(request)).await,
            Ok(Ok(response)) if response.status().is_success()
        );
        if healthy {
            breaker.reset();
        }
    }
}
