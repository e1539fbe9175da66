//! Everything a submission must pass before anything is stored: the request shape, base64 and
//! JSON decoding, the DAG's schema and fields, node ids recomputed, and the CRC32.

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::Digest as _;
use wire::{ComputeContext, DagError, DagLimits, Domain};

use crate::api::{ApiError, TagQuery};
use crate::metrics::GatewayMetrics;

/// A submission that passed every check.
#[derive(Debug)]
pub struct Submission {
    /// The DAG document as text (what the DAG Manager diffs).
    pub dag_json: String,
    /// The DAG's `TagQueryNode`s, resolved after each diff.
    pub tag_queries: Vec<TagQuery>,
    /// CRC32 of the node ids in submission order.
    pub crc32: u32,
    pub world_ids: Vec<String>,
    /// Compute context from `context` (and `meta`), world left empty.
    pub context: ComputeContext,
    /// SHA-256 of the DAG's key-sorted JSON: two submissions of one DAG share it.
    pub dag_hash: String,
}

/// Whether the context had to be downgraded (wire.md section 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downgrade {
    pub downgraded: bool,
    pub reason: Option<&'static str>,
    pub safe_mode: bool,
}

impl Submission {
    pub fn downgrade(&self) -> Downgrade {
        let domain = self.context.execution_domain.trim().to_ascii_lowercase();
        if domain.is_empty() || domain == "default" {
            return Downgrade {
                downgraded: true,
                reason: Some("decision_unavailable"),
                safe_mode: true,
            };
        }
        let needs_as_of = matches!(
            Domain::parse(&domain),
            Some(Domain::Backtest | Domain::Dryrun)
        );
        if needs_as_of && self.context.as_of.trim().is_empty() {
            return Downgrade {
                downgraded: true,
                reason: Some("missing_as_of"),
                safe_mode: true,
            };
        }
        Downgrade {
            downgraded: false,
            reason: None,
            safe_mode: false,
        }
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// Maps a DAG refusal to its answer, counting the node-id failures.
fn dag_error(error: DagError, metrics: &GatewayMetrics) -> ApiError {
    match &error {
        DagError::NodeIdFields {
            field, node_type, ..
        } => metrics.missing_field(field, node_type),
        DagError::NodeIdMismatch { node_type, .. } => metrics.nodeid_mismatch(node_type),
        DagError::ChecksumMismatch { .. } => metrics.checksum_mismatch("gateway"),
        DagError::InvalidJson { .. }
        | DagError::SchemaInvalid { .. }
        | DagError::SchemaCompatMismatch { .. }
        | DagError::DuplicateNode { .. }
        | DagError::MissingDependency { .. }
        | DagError::Cycle { .. }
        | DagError::TooLarge { .. } => {}
    }
    let status = match error {
        DagError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let code = error.code().as_str();
    let mut api = ApiError::new(status, code, error.to_string());
    if let DagError::NodeIdMismatch { node, expected, .. } = &error {
        api = api
            .with("node_id", Value::from(node.clone()))
            .with("expected", Value::from(expected.clone()));
    }
    api
}

fn text_field(map: Option<&Map<String, Value>>, key: &str) -> String {
    map.and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Checks a `POST /strategies` body.
pub fn validate(
    body: &[u8],
    max_nodes: usize,
    metrics: &GatewayMetrics,
) -> Result<Submission, ApiError> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        bad_request(
            "E_INVALID_JSON",
            format!("the request body is not JSON: {e}"),
        )
    })?;
    let Value::Object(request) = request else {
        return Err(bad_request(
            "E_INVALID_JSON",
            "the request body is not a JSON object",
        ));
    };
    if request.contains_key("world_id") {
        return Err(unprocessable(
            "E_WORLD_ID_DEPRECATED",
            "`world_id` is no longer accepted; send `world_ids`, a non-empty list",
        ));
    }
    let world_ids = world_ids(&request)?;
    let declared_crc = declared_crc(&request)?;
    let Some(Value::String(encoded)) = request.get("dag_json") else {
        return Err(unprocessable(
            "E_REQUEST_INVALID",
            "`dag_json` is required: the DAG, base64-encoded",
        ));
    };
    let dag_json = decode_dag(encoded)?;
    let limits = DagLimits {
        max_bytes: usize::MAX,
        max_nodes,
    };
    let dag = wire::parse_dag(&dag_json, limits, false).map_err(|e| dag_error(e, metrics))?;
    wire::topological_order(&dag).map_err(|e| dag_error(e, metrics))?;
    dag.verify_node_ids().map_err(|e| dag_error(e, metrics))?;
    let crc32 = dag.crc32();
    if let Some(client) = declared_crc
        && client != crc32
    {
        return Err(dag_error(
            DagError::ChecksumMismatch {
                client,
                server: crc32,
            },
            metrics,
        ));
    }
    let context = compute_context(&request, &dag)?;
    let sorted = wire::sorted_json_text(&dag_json)
        .map_err(|e| bad_request("E_INVALID_JSON", format!("dag_json is not JSON: {e}")))?;
    let dag_hash = hex(&sha2::Sha256::digest(sorted.as_bytes()));
    Ok(Submission {
        dag_json,
        tag_queries: TagQuery::all_in(&dag),
        crc32,
        world_ids,
        context,
        dag_hash,
    })
}

/// `world_ids`: a non-empty list of non-empty strings.
fn world_ids(request: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    match request.get("world_ids") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|w| {
                w.as_str()
                    .filter(|w| !w.trim().is_empty())
                    .map(str::to_owned)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                unprocessable(
                    "E_WORLD_IDS_REQUIRED",
                    "`world_ids` must hold non-empty strings",
                )
            }),
        _ => Err(unprocessable(
            "E_WORLD_IDS_REQUIRED",
            "`world_ids` is required: a non-empty list of world ids",
        )),
    }
}

/// The optional `node_ids_crc32`: an unsigned 32-bit integer when present.
fn declared_crc(request: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    request
        .get("node_ids_crc32")
        .map(|value| {
            value
                .as_u64()
                .and_then(|c| u32::try_from(c).ok())
                .ok_or_else(|| {
                    unprocessable(
                        "E_REQUEST_INVALID",
                        "`node_ids_crc32` must be an unsigned 32-bit integer",
                    )
                })
        })
        .transpose()
}

/// The compute context: each field from `context`, else `meta`, else what the DAG declares; an
/// execution domain, when given, must be one we know.
fn compute_context(
    request: &Map<String, Value>,
    dag: &wire::Dag,
) -> Result<ComputeContext, ApiError> {
    let context_section = request.get("context").and_then(Value::as_object);
    let meta = request.get("meta").and_then(Value::as_object);
    let declared = dag.declared_context();
    let pick = |key: &str, declared: &str| {
        let from_context = text_field(context_section, key);
        if !from_context.is_empty() {
            return from_context;
        }
        let from_meta = text_field(meta, key);
        if from_meta.is_empty() {
            declared.to_owned()
        } else {
            from_meta
        }
    };
    let context = ComputeContext {
        world_id: String::new(),
        execution_domain: pick("execution_domain", &declared.execution_domain),
        as_of: pick("as_of", &declared.as_of),
        partition: pick("partition", &declared.partition),
        dataset_fingerprint: pick("dataset_fingerprint", &declared.dataset_fingerprint),
    };
    if !context.execution_domain.is_empty() && Domain::parse(&context.execution_domain).is_none() {
        return Err(unprocessable(
            "E_EXECUTION_DOMAIN_INVALID",
            format!(
                "execution_domain {:?} is not one of backtest, dryrun, live, shadow",
                context.execution_domain
            ),
        ));
    }
    Ok(context)
}

/// `dag_json` is base64 of the DAG text; a client that sends the JSON text itself is understood.
fn decode_dag(encoded: &str) -> Result<String, ApiError> {
    let trimmed = encoded.trim();
    if trimmed.starts_with('{') {
        return Ok(trimmed.to_owned());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(trimmed)
        .map_err(|e| bad_request("E_DAG_DECODE", format!("dag_json is not valid base64: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| bad_request("E_DAG_DECODE", "dag_json does not decode to UTF-8 text"))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}
