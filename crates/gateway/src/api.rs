//! The HTTP API's shapes (wire.md section 3) and its errors, each a JSON body with a code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use wire::api::{ApiErrorBody, QueueMap, QueueRef, StrategyAck, StrategyState};

/// A `TagQueryNode` of a submitted DAG: its queue map entry is the queues its tags match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagQuery {
    pub node_id: String,
    pub tags: Vec<String>,
    pub interval: i64,
    pub match_mode: String,
}

impl TagQuery {
    /// The tag queries of a checked DAG, read from their canonical identity blobs.
    pub fn all_in(dag: &wire::Dag) -> Vec<TagQuery> {
        dag.nodes
            .iter()
            .filter(|n| n.node_type() == "TagQueryNode")
            .map(|node| {
                let query: Value =
                    serde_json::from_str(&node.fields.params_blob).unwrap_or(Value::Null);
                TagQuery {
                    node_id: node.node_id.clone(),
                    tags: query["query_tags"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                    interval: query["interval"].as_i64().unwrap_or(node.fields.interval),
                    match_mode: query["match_mode"].as_str().unwrap_or("any").to_owned(),
                }
            })
            .collect()
    }
}

/// An error answer: status, machine-readable code, message, and optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Vec<(&'static str, Value)>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            retry_after_secs: None,
        }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> ApiError {
        self.extra.push((key, value));
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "E_NOT_FOUND",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            code: self.code.to_owned(),
            message: self.message,
            extra: self
                .extra
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect(),
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
