//! The admin HTTP endpoints beside the kit's `/metrics`, `/healthz` and `/readyz`: `/status` and
//! `POST /admin/gc-trigger`.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;

use crate::gc::GarbageCollector;
use crate::queues::QueueAdmin;
use crate::store::GraphStore;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<dyn GraphStore>,
    pub queues: Arc<dyn QueueAdmin>,
    pub gc: Arc<GarbageCollector>,
    pub shutdown: kit::shutdown::Shutdown,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/admin/gc-trigger", post(gc_trigger))
        .with_state(state)
}

async fn status(State(state): State<AdminState>) -> Response {
    let graph_store = state.store.health().await;
    let queue_admin = state.queues.health().await;
    let (nodes, queues) = state.store.counts().await.unwrap_or((0, 0));
    let healthy = graph_store.is_ok() && queue_admin.is_ok();
    let body = json!({
        "service": "dagmanager",
        "version": env!("CARGO_PKG_VERSION"),
        "state": if state.shutdown.is_triggered() { "stopping" } else { "running" },
        "graph_store": if graph_store.is_ok() { "ok" } else { "error" },
        "queue_admin": if queue_admin.is_ok() { "ok" } else { "error" },
        "compute_nodes": nodes,
        "queues": queues,
    });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn gc_trigger(State(state): State<AdminState>) -> Response {
    match state.gc.run_once().await {
        Ok(report) => (StatusCode::OK, Json(report)).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"code": "E_GC", "message": error.to_string()})),
        )
            .into_response(),
    }
}

/// JSON 404 for unknown admin routes.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": "E_NOT_FOUND", "message": "no such route"})),
    )
        .into_response()
}
