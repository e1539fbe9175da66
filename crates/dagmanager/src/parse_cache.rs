//! Checked DAGs by the BLAKE3 of their text, so a DAG submitted again (a retry, the same
//! strategy in another world, a RedoDiff) is not parsed, ordered and verified again. Parsing is
//! a pure function of the text; the diff itself always runs against the live graph. A text is
//! admitted on its second sighting, so one-off texts cost a hash, not a cache insertion.

use foldhash::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use wire::{
    ComputeContext, Dag, DagError, DagLimits, parse_dag, partition_key_in, topological_order,
};

use crate::store::SentinelRecord;

/// A DAG that passed every check, with what the diff derives from it alone.
#[derive(Debug)]
pub struct CheckedDag {
    pub dag: Dag,
    /// Indices of `dag.nodes`, dependencies first.
    pub order: Vec<usize>,
    /// Indices of `dag.nodes` in the order of their ids.
    pub by_id: Vec<usize>,
    /// The digest of the sorted node ids (`SentinelRecord::nodes_digest`).
    pub nodes_digest: String,
    /// Partition keys in `order` for the last compute context diffed (`None`: no compute key).
    partition_keys: Mutex<PartitionKeyMemo>,
}

/// The context partition keys were last derived for, and the keys.
type PartitionKeyMemo = Option<(Option<ComputeContext>, Arc<Vec<String>>)>;

impl CheckedDag {
    /// The `queue_map` keys of every node, in `order`, under `context` (when a compute key
    /// applies); remembered for the last context, which a resubmission usually repeats.
    pub fn partition_keys(&self, context: Option<&ComputeContext>) -> Arc<Vec<String>> {
        let mut memo = self
            .partition_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((for_context, keys)) = memo.as_ref()
            && for_context.as_ref() == context
        {
            return keys.clone();
        }
        let keys: Arc<Vec<String>> = Arc::new(
            self.order
                .iter()
                .map(|&i| {
                    let node = &self.dag.nodes[i];
                    partition_key_in(&node.node_id, node.fields.interval, 0, context)
                })
                .collect(),
        );
        *memo = Some((context.cloned(), keys.clone()));
        keys
    }
}

/// Parses and checks a DAG: structure first (so a cycle is reported as a cycle, not as the
/// id mismatch it implies), then node ids and any declared CRC32.
pub fn check(text: &str, limits: DagLimits) -> Result<CheckedDag, DagError> {
    let dag = parse_dag(text, limits, false)?;
    let order = topological_order(&dag)?;
    dag.verify_node_ids()?;
    dag.verify_crc32()?;
    let mut by_id: Vec<usize> = (0..dag.nodes.len()).collect();
    by_id.sort_unstable_by(|&a, &b| dag.nodes[a].node_id.cmp(&dag.nodes[b].node_id));
    let sorted_ids: Vec<&str> = by_id
        .iter()
        .map(|&i| dag.nodes[i].node_id.as_str())
        .collect();
    let nodes_digest = SentinelRecord::digest_of(&sorted_ids);
    Ok(CheckedDag {
        dag,
        order,
        by_id,
        nodes_digest,
        partition_keys: Mutex::new(None),
    })
}

#[derive(Debug, Default)]
struct Entries {
    by_digest: HashMap<[u8; 32], Arc<CheckedDag>>,
    oldest_first: VecDeque<[u8; 32]>,
    nodes: usize,
    /// Digests seen once and not cached yet, oldest first, at most `SEEN_CAPACITY`.
    seen_once: HashSet<[u8; 32]>,
    seen_order: VecDeque<[u8; 32]>,
}

/// How many once-seen digests are remembered.
const SEEN_CAPACITY: usize = 4096;

/// A bounded cache of checked DAGs; the bound is the total number of nodes held.
#[derive(Debug)]
pub struct ParseCache {
    limits: DagLimits,
    max_nodes: usize,
    entries: Mutex<Entries>,
}

impl ParseCache {
    pub fn new(limits: DagLimits, max_nodes: usize) -> ParseCache {
        ParseCache {
            limits,
            max_nodes,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// The checked DAG for `text`, from the cache or freshly checked. Refusals are not cached.
    pub fn get_or_check(&self, text: &str) -> Result<Arc<CheckedDag>, DagError> {
        if text.len() > self.limits.max_bytes {
            return check(text, self.limits).map(Arc::new);
        }
        let digest = *blake3::hash(text.as_bytes()).as_bytes();
        let seen_before = {
            let mut entries = self.lock();
            if let Some(hit) = entries.by_digest.get(&digest) {
                return Ok(hit.clone());
            }
            let seen_before = entries.seen_once.remove(&digest);
            if !seen_before {
                if entries.seen_order.len() >= SEEN_CAPACITY
                    && let Some(oldest) = entries.seen_order.pop_front()
                {
                    entries.seen_once.remove(&oldest);
                }
                entries.seen_once.insert(digest);
                entries.seen_order.push_back(digest);
            }
            seen_before
        };
        let checked = Arc::new(check(text, self.limits)?);
        let size = checked.dag.nodes.len().max(1);
        if seen_before && size <= self.max_nodes {
            let mut entries = self.lock();
            if entries.by_digest.insert(digest, checked.clone()).is_none() {
                entries.oldest_first.push_back(digest);
                entries.nodes += size;
            }
            while entries.nodes > self.max_nodes {
                let Some(oldest) = entries.oldest_first.pop_front() else {
                    break;
                };
                if let Some(evicted) = entries.by_digest.remove(&oldest) {
                    entries.nodes -= evicted.dag.nodes.len().max(1);
                }
            }
        }
        Ok(checked)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(salt: &str, nodes: usize) -> String {
        let mut items = Vec::new();
        for i in 0..nodes {
            let fields = wire::NodeFields {
                node_type: "X".into(),
                interval: 0,
                period: 0,
                params_blob: format!("{{\"i\":{i},\"salt\":\"{salt}\"}}"),
                dependencies: Vec::new(),
                schema_compat_id: String::new(),
                code_hash: String::new(),
            };
            items.push(format!(
                "{{\"node_type\":\"X\",\"node_id\":\"{}\",\"params\":{{\"i\":{i},\"salt\":\"{salt}\"}}}}",
                fields.node_id()
            ));
        }
        format!("{{\"nodes\":[{}]}}", items.join(","))
    }

    #[test]
    fn a_repeated_text_is_served_from_the_cache_and_the_oldest_is_evicted_past_the_bound() {
        let cache = ParseCache::new(DagLimits::default(), 5);
        let (a, b) = (dag("a", 3), dag("b", 3));
        let once = cache.get_or_check(&a).unwrap();
        let twice = cache.get_or_check(&a).unwrap();
        assert!(
            !Arc::ptr_eq(&once, &twice),
            "a text is admitted on its second sighting"
        );
        assert!(Arc::ptr_eq(&twice, &cache.get_or_check(&a).unwrap()));
        cache.get_or_check(&b).unwrap();
        cache.get_or_check(&b).unwrap();
        let third = cache.get_or_check(&a).unwrap();
        assert!(!Arc::ptr_eq(&twice, &third), "a was evicted by b");
    }

    #[test]
    fn partition_keys_follow_the_context_they_are_asked_for() {
        let checked = check(&dag("k", 2), DagLimits::default()).unwrap();
        let world = |w: &str| ComputeContext {
            world_id: w.into(),
            execution_domain: "backtest".into(),
            ..ComputeContext::default()
        };
        let plain = checked.partition_keys(None);
        assert!(plain.iter().all(|k| !k.contains("#ck=")));
        let w1 = checked.partition_keys(Some(&world("w1")));
        assert!(Arc::ptr_eq(
            &w1,
            &checked.partition_keys(Some(&world("w1")))
        ));
        let w2 = checked.partition_keys(Some(&world("w2")));
        assert_ne!(w1, w2);
        let node_id = &checked.dag.nodes[checked.order[0]].node_id;
        let key = wire::compute_key(node_id, "w2", "backtest", "", "");
        assert_eq!(w2[0], format!("{node_id}:0:0#ck={key}"));
        assert_eq!(*checked.partition_keys(None), *plain);
    }

    #[test]
    fn refusals_are_not_cached() {
        let cache = ParseCache::new(DagLimits::default(), 100);
        assert!(cache.get_or_check("{\"nodes\": [").is_err());
        assert!(cache.get_or_check("{\"nodes\": [").is_err());
        assert_eq!(cache.lock().by_digest.len(), 0);
    }
}
