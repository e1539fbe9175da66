//! The Gateway HTTP API's answer shapes (wire.md section 3), shared by the Gateway that writes
//! them and the SDK that reads them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One queue a node reads or writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRef {
    pub queue: String,
    pub global: bool,
}

/// node id -> its queues.
pub type QueueMap = BTreeMap<String, Vec<QueueRef>>;

/// The answer to a submission (`StrategyAck`), plus its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyAck {
    pub strategy_id: String,
    pub status: String,
    pub queue_map: QueueMap,
    pub sentinel_id: String,
    pub node_ids_crc32: u32,
    pub downgraded: bool,
    pub downgrade_reason: Option<String>,
    pub safe_mode: bool,
}

/// The answer to `GET /strategies/{id}`: a submission's state and, once it completed, its queue
/// map and sentinel. Fields past `status` read as empty when a Gateway leaves them out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StrategyState {
    #[serde(default)]
    pub strategy_id: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// Always written by our Gateway; a reader that needs it (a completed strategy) treats its
    /// absence as a protocol error rather than as an empty map.
    #[serde(default)]
    pub queue_map: Option<QueueMap>,
    #[serde(default)]
    pub sentinel_id: String,
    #[serde(default)]
    pub node_ids_crc32: u32,
    #[serde(default)]
    pub world_ids: Vec<String>,
    #[serde(default)]
    pub created_at: f64,
    #[serde(default)]
    pub updated_at: f64,
}

/// A refused request's body: a machine-readable code (`E_…`), a message, and what some refusals
/// add (a duplicate names its original `strategy_id`). A body that is not this shape reads as
/// empty, so a client falls back on the status and the raw text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApiErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiErrorBody {
    /// The strategy a refusal names, if any.
    pub fn strategy_id(&self) -> Option<&str> {
        self.extra
            .get("strategy_id")
            .and_then(serde_json::Value::as_str)
    }
}
