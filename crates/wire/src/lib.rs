//! The QMTL DAG document and the identity functions every service must compute byte for byte
//! like the Python QMTL: node ids, CRC32 chains, compute keys and queue names (spec wire.md).

pub mod api;
mod canonical;
mod context;
mod dag;
mod error;
mod fast;
mod lenient;
mod node;
mod queue_name;

pub use canonical::{canonical_json, python_float_repr, sorted_json, sorted_json_text};
pub use context::{ComputeContext, Domain, compute_key, partition_key, partition_key_in};
pub use dag::{Dag, DagLimits, Sentinel, parse_dag, topological_order};
pub use error::{DagError, ErrorCode};
pub use node::{Node, NodeFields, crc32_chain, node_id_of};
pub use queue_name::{
    QueueKind, QueueNamespace, normalize_label, queue_asset, queue_name, queue_name_candidates,
};

/// The prefix of every node id and compute key.
pub const HASH_PREFIX: &str = "blake3:";

/// BLAKE3 of the bytes `write` puts in a per-thread buffer, reused so that hashing an id's or a
/// key's preimage allocates nothing and hashes it in one call.
pub(crate) fn hash_preimage(write: impl FnOnce(&mut Vec<u8>)) -> blake3::Hash {
    thread_local! {
        static PREIMAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PREIMAGE.with_borrow_mut(|preimage| {
        preimage.clear();
        write(preimage);
        blake3::hash(preimage)
    })
}
