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
