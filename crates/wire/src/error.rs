//! Errors in a DAG document, each with the machine-readable code the wire spec gives it.

/// The machine-readable error codes of the wire spec (plus the structural ones it implies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    SchemaInvalid,
    NodeIdFields,
    NodeIdMismatch,
    ChecksumMismatch,
    SchemaCompatMismatch,
    DuplicateNode,
    MissingDependency,
    Cycle,
    TooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "E_INVALID_JSON",
            ErrorCode::SchemaInvalid => "E_SCHEMA_INVALID",
            ErrorCode::NodeIdFields => "E_NODE_ID_FIELDS",
            ErrorCode::NodeIdMismatch => "E_NODE_ID_MISMATCH",
            ErrorCode::ChecksumMismatch => "E_CHECKSUM_MISMATCH",
            ErrorCode::SchemaCompatMismatch => "E_SCHEMA_COMPAT_MISMATCH",
            ErrorCode::DuplicateNode => "E_DUPLICATE_NODE",
            ErrorCode::MissingDependency => "E_MISSING_DEPENDENCY",
            ErrorCode::Cycle => "E_CYCLE",
            ErrorCode::TooLarge => "E_TOO_LARGE",
        }
    }
}

/// Why a DAG document was refused; every message names the node or field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("dag_json is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("{reason}")]
    SchemaInvalid { reason: String },
    #[error("node {node} ({node_type}): field `{field}` is missing or malformed")]
    NodeIdFields {
        node: String,
        node_type: String,
        field: &'static str,
    },
    #[error("node {node}: node_id does not match its fields (expected {expected})")]
    NodeIdMismatch {
        node: String,
        node_type: String,
        expected: String,
    },
    #[error("node_ids_crc32 mismatch: client sent {client}, server computed {server}")]
    ChecksumMismatch { client: u32, server: u32 },
    #[error(
        "node {node}: schema_compat_id {schema_compat_id:?} and schema_id {schema_id:?} differ"
    )]
    SchemaCompatMismatch {
        node: String,
        schema_compat_id: String,
        schema_id: String,
    },
    #[error("node {node} appears more than once")]
    DuplicateNode { node: String },
    #[error("node {node} depends on {dependency}, which is not in the DAG")]
    MissingDependency { node: String, dependency: String },
    #[error("the DAG has a cycle through nodes: {}", nodes.join(", "))]
    Cycle { nodes: Vec<String> },
    #[error("{what} is {actual}, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        actual: usize,
        limit: usize,
    },
}

impl DagError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DagError::InvalidJson { .. } => ErrorCode::InvalidJson,
            DagError::SchemaInvalid { .. } => ErrorCode::SchemaInvalid,
            DagError::NodeIdFields { .. } => ErrorCode::NodeIdFields,
            DagError::NodeIdMismatch { .. } => ErrorCode::NodeIdMismatch,
            DagError::ChecksumMismatch { .. } => ErrorCode::ChecksumMismatch,
            DagError::SchemaCompatMismatch { .. } => ErrorCode::SchemaCompatMismatch,
            DagError::DuplicateNode { .. } => ErrorCode::DuplicateNode,
            DagError::MissingDependency { .. } => ErrorCode::MissingDependency,
            DagError::Cycle { .. } => ErrorCode::Cycle,
            DagError::TooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}
