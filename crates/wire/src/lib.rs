//! The QMTL DAG document and the identity functions every service must compute byte for byte
//! like the Python QMTL: node ids, CRC32 chains, compute keys and topic names (spec wire.md).

pub mod api;
mod canonical;
mod context;
mod dag;
mod error;
mod lenient;
mod node;
mod topic;

pub use canonical::{canonical_json, python_float_repr, sorted_json, sorted_json_text};
pub use context::{ComputeContext, Domain, compute_key, partition_key};
pub use dag::{Dag, DagLimits, Sentinel, parse_dag, topological_order};
pub use error::{DagError, ErrorCode};
pub use node::{Node, NodeFields, crc32_chain, node_id_of};
pub use topic::{
    TopicKind, TopicNamespace, normalize_label, topic_asset, topic_name, topic_name_candidates,
};

/// The prefix of every node id and compute key.
pub const HASH_PREFIX: &str = "blake3:";
