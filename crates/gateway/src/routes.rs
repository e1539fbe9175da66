//! The HTTP API (wire.md section 3): submissions, their state, queue look-ups and health; the
//! gauges `/metrics` refreshes (the route itself is the kit's admin router).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kit::clock::Clock;
use kit::metrics::RecentQuantile;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use crate::api::{ApiError, QueueMap, StrategyAck, StrategyState};
use crate::carrier::{Carrier, DiffPlan, diff_in_worlds};
use crate::link::{DagManagerLink, LinkError};
use crate::metrics::GatewayMetrics;
use crate::submissions::{Accepted, Status, StoredContext, StrategyRecord, Submissions};
use crate::validate::{Submission, validate};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub submissions: Arc<Submissions>,
    pub carrier: Arc<Carrier>,
    pub link: Arc<DagManagerLink>,
    pub metrics: Arc<GatewayMetrics>,
    pub clock: Arc<dyn Clock>,
    pub submit_latency_ms: Arc<RecentQuantile>,
    pub diff_budget: Duration,
    pub max_nodes: usize,
    pub shutdown: kit::shutdown::Shutdown,
}

/// The body, or a JSON error when it is over the limit or unreadable.
fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "E_PAYLOAD_TOO_LARGE"
        } else {
            "E_BODY_UNREADABLE"
        };
        ApiError::new(status, code, rejection.body_text())
    })
}

fn ack(record: &StrategyRecord, submission_downgrade: &crate::validate::Downgrade) -> StrategyAck {
    StrategyAck {
        strategy_id: record.strategy_id.clone(),
        status: record.status.as_str().to_owned(),
        queue_map: if record.status == Status::Completed {
            record.queue_map.clone()
        } else {
            QueueMap::new()
        },
        sentinel_id: record.sentinel_id.clone(),
        node_ids_crc32: record.node_ids_crc32,
        downgraded: submission_downgrade.downgraded,
        downgrade_reason: submission_downgrade.reason.map(str::to_owned),
        safe_mode: submission_downgrade.safe_mode,
    }
}

fn strategy_id_of(submission: &Submission) -> String {
    submission.dag_hash[..32].to_owned()
}

/// `POST /strategies`: validate, persist durably, hand to the carrier, and wait up to the diff
/// budget so a healthy DAG Manager's answer comes back in the 202 itself.
pub async fn submit(
    State(state): State<ApiState>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!(
        "gateway.submit",
        strategy_id = tracing::field::Empty,
        world_id = tracing::field::Empty,
        execution_domain = tracing::field::Empty,
    );
    submit_in(state, payload, span.clone())
        .instrument(span)
        .await
}

async fn submit_in(
    state: ApiState,
    payload: Result<Bytes, BytesRejection>,
    span: tracing::Span,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // From here until it is queued for storage, this submission is a write the store's next
    // commit can wait for.
    let announced = state.submissions.announce();
    let payload = body(payload)?;
    let submission = validate(&payload, state.max_nodes, &state.metrics)?;
    let strategy_id = strategy_id_of(&submission);
    span.record("strategy_id", strategy_id.as_str());
    span.record("world_id", submission.world_ids.join(",").as_str());
    span.record(
        "execution_domain",
        submission.context.execution_domain.as_str(),
    );
    let now = state.clock.unix_seconds();
    let record = StrategyRecord {
        strategy_id: strategy_id.clone(),
        dag_hash: submission.dag_hash.clone(),
        dag_json: std::sync::Arc::from(submission.dag_json.as_str()),
        node_ids_crc32: submission.crc32,
        world_ids: submission.world_ids.clone(),
        context: StoredContext::from_context(&submission.context),
        tag_queries: submission.tag_queries.clone(),
        status: Status::Queued,
        reason: None,
        queue_map: QueueMap::new(),
        sentinel_id: format!("{strategy_id}-sentinel"),
        created_at: now,
        updated_at: now,
        traceparent: kit::trace::traceparent_of(&span),
    };
    let record = match state.submissions.accept(record, announced).await {
        Ok(Accepted::New(record)) => *record,
        Ok(Accepted::Duplicate(existing)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "E_DUPLICATE",
                "this DAG was already submitted",
            )
            .with("strategy_id", Value::from(existing)));
        }
        Err(error) => {
            state.metrics.lost_requests_total.increment(1);
            tracing::error!(code = "E_STORE_UNAVAILABLE", error = %kit::error::chain(&error), "A submission could not be persisted; refused with 503.");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "E_STORE_UNAVAILABLE",
                "the submission could not be stored; retry",
            )
            .retry_after(1));
        }
    };
    let mut watch = state.submissions.watch(&strategy_id);
    state.carrier.enqueue(&strategy_id);
    let _ = tokio::time::timeout(state.diff_budget, watch.wait_for(|s| s.is_final())).await;
    drop(watch);
    state.submissions.unwatch(&strategy_id);
    let current = state.submissions.get(&strategy_id).unwrap_or(record);
    let answer = ack(&current, &submission.downgrade());
    state
        .submit_latency_ms
        .record(started.elapsed().as_secs_f64() * 1000.0);
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// A DAG Manager failure as an answer: 503 with `Retry-After` while it is unavailable, 422 with
/// `refused_code` when it refused the request itself.
fn link_error(error: LinkError, refused_code: &'static str) -> ApiError {
    match error {
        LinkError::Unavailable { reason } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E_DAGMANAGER_UNAVAILABLE",
            reason,
        )
        .retry_after(1),
        LinkError::Refused { reason } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, refused_code, reason)
        }
        LinkError::Address { address } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "E_DAGMANAGER_ADDRESS",
            format!("the configured DAG Manager address {address:?} is not valid"),
        ),
    }
}

/// `POST /strategies/dry-run`: validate and diff without storing; 503 while the DAG Manager is
/// unavailable.
pub async fn dry_run(
    State(state): State<ApiState>,
    payload: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let payload = body(payload)?;
    let submission = validate(&payload, state.max_nodes, &state.metrics)?;
    let strategy_id = format!("dryrun-{}", &submission.dag_hash[..24]);
    let context = StoredContext::from_context(&submission.context);
    let (queue_map, sentinel_id) = diff_in_worlds(
        &state.link,
        &DiffPlan {
            strategy_id: &strategy_id,
            dag_json: &submission.dag_json,
            node_ids_crc32: submission.crc32,
            world_ids: &submission.world_ids,
            context: &context,
            tag_queries: &submission.tag_queries,
        },
    )
    .await
    .map_err(|error| link_error(error, "E_DIFF_REFUSED"))?;
    let downgrade = submission.downgrade();
    let answer = StrategyAck {
        strategy_id,
        status: Status::Completed.as_str().to_owned(),
        queue_map,
        sentinel_id,
        node_ids_crc32: submission.crc32,
        downgraded: downgrade.downgraded,
        downgrade_reason: downgrade.reason.map(str::to_owned),
        safe_mode: downgrade.safe_mode,
    };
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// `GET /strategies/{id}/status`.
pub async fn strategy_status(
    State(state): State<ApiState>,
    Path(strategy_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .submissions
        .get(&strategy_id)
        .ok_or_else(|| ApiError::not_found("strategy"))?;
    Ok(Json(json!({"status": record.status.as_str()})))
}

/// `GET /strategies/{id}`: state, reason, queue map and sentinel once known.
pub async fn strategy(
    State(state): State<ApiState>,
    Path(strategy_id): Path<String>,
) -> Result<Json<StrategyState>, ApiError> {
    let record = state
        .submissions
        .get(&strategy_id)
        .ok_or_else(|| ApiError::not_found("strategy"))?;
    Ok(Json(StrategyState {
        strategy_id: record.strategy_id,
        status: record.status.as_str().to_owned(),
        reason: record.reason,
        queue_map: Some(record.queue_map),
        sentinel_id: record.sentinel_id,
        node_ids_crc32: record.node_ids_crc32,
        world_ids: record.world_ids,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ByTag {
    #[serde(default)]
    tags: String,
    #[serde(default)]
    interval: i64,
    #[serde(default)]
    match_mode: Option<String>,
    #[serde(default)]
    world_id: Option<String>,
    #[serde(default)]
    execution_domain: Option<String>,
}

/// `GET /queues/by_tag`: queues of nodes with those tags, in the world asked for (or global).
pub async fn queues_by_tag(
    State(state): State<ApiState>,
    Query(query): Query<ByTag>,
) -> Result<Json<Value>, ApiError> {
    let tags: Vec<String> = query
        .tags
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tags.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "E_TAGS_REQUIRED",
            "`tags` is required",
        ));
    }
    let match_mode = query.match_mode.unwrap_or_else(|| "any".into());
    let queues = state
        .link
        .queues_by_tags(tags, query.interval, &match_mode)
        .await
        .map_err(|error| link_error(error, "E_QUERY_REFUSED"))?;
    let prefix = query.world_id.filter(|w| !w.is_empty()).map(|world| {
        let domain = query
            .execution_domain
            .as_deref()
            .and_then(wire::Domain::parse)
            .unwrap_or(wire::Domain::Backtest);
        format!(
            "{}.",
            wire::QueueNamespace::WorldDomain {
                world,
                domain: domain.as_str().to_owned()
            }
            .prefix()
        )
    });
    let queues: Vec<Value> = queues
        .into_iter()
        .filter(|q| q.global || prefix.as_ref().is_none_or(|p| q.queue.starts_with(p)))
        .map(|q| json!({"queue": q.queue, "global": q.global}))
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

/// `GET /status` and `GET /health`: the Gateway, its store and the DAG Manager as last probed.
pub async fn status(State(state): State<ApiState>) -> Json<Value> {
    let breaker = state.link.breaker().snapshot();
    let counts = state.submissions.counts();
    let count = |s: Status| counts.get(&s).copied().unwrap_or(0);
    let dagmanager = state.link.health();
    let healthy = dagmanager == crate::link::DagManagerHealth::Ok
        && breaker.state == kit::breaker::BreakerState::Closed;
    Json(json!({
        "status": if healthy { "ok" } else { "degraded" },
        "service": "gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "state": if state.shutdown.is_triggered() { "stopping" } else { "running" },
        "dagmanager": {
            "status": dagmanager.as_str(),
            "breaker": breaker.state.as_str(),
            "consecutive_failures": breaker.consecutive_failures,
        },
        "strategies": {
            "queued": count(Status::Queued),
            "processing": count(Status::Processing),
            "completed": count(Status::Completed),
            "failed": count(Status::Failed),
        },
    }))
}

/// Brings the gauges derived from state up to date; run by the kit's `/metrics` before it renders.
pub fn refresh_gauges(state: &ApiState) {
    state
        .metrics
        .e2e_latency_p95
        .set(state.submit_latency_ms.quantile(0.95));
    for (status, count) in state.submissions.counts() {
        state.metrics.strategies(status.as_str(), count);
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "E_NOT_FOUND", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "E_METHOD_NOT_ALLOWED",
        "this route does not take that method",
    )
}

/// Times every request into `gateway_request_duration_seconds{route, method, status}`, with the
/// route as its template (never a raw path).
pub async fn record_request(
    State(metrics): State<Arc<GatewayMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    // In a block: a borrow of the request must not live across the await below.
    let (parent, state) = {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (
            header(kit::trace::TRACEPARENT),
            header(kit::trace::TRACESTATE),
        )
    };
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        otel.name = %format!("{method} {route}"),
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    kit::trace::continue_from(&span, parent.as_deref(), state.as_deref());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    metrics.request(&route, method, status, started.elapsed().as_secs_f64());
    response
}
