//! The global graph of compute nodes, their queues and the strategies that use them, behind the
//! `GraphStore` trait. `EmbeddedGraphStore` is the default: an in-memory index of the graph,
//! kept durable in an embedded, crash-safe record log, so reads never touch the disk and only
//! changes are written.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::codec::decode_stored;
use crate::graph_index::Index;
use foldhash::HashMap;
use recordstore::{self as embedded, EmbeddedDb, EmbeddedError, Table, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A compute node as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node_id: String,
    pub node_type: String,
    pub code_hash: String,
    pub schema_hash: String,
    pub schema_compat_id: String,
    pub interval: i64,
    pub period: i64,
    pub tags: Vec<String>,
    pub created_at: f64,
    /// Set when a schema change asked consumers to rebuffer.
    pub buffering_since: Option<f64>,
}

/// A queue (topic) as stored. `node_id` is `None` once no compute node owns it (an orphan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub name: String,
    pub node_id: Option<String>,
    /// The topic namespace (`w1.backtest`), empty for a queue shared by every world.
    pub namespace: String,
    /// The GC tag: `raw`, `indicator`, `trade_exec` or `sentinel`.
    pub tag: crate::queues::GcTag,
    pub interval: i64,
    pub tags: Vec<String>,
    pub created_at: f64,
    /// Compute keys bound to this queue; more than one would mix contexts.
    pub compute_keys: Vec<String>,
    pub orphaned_at: Option<f64>,
}

/// A strategy's version sentinel and the nodes its DAG holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentinelRecord {
    pub sentinel_id: String,
    pub strategy_id: String,
    pub version: String,
    pub weight: Option<f64>,
    pub node_ids: Vec<String>,
    /// BLAKE3 of the sorted node ids, so an unchanged strategy is recognised without comparing
    /// every id.
    pub nodes_digest: String,
    pub updated_at: f64,
}

impl SentinelRecord {
    /// The digest of a sorted node-id list.
    pub fn digest_of(sorted_node_ids: &[&str]) -> String {
        // Hashed as one buffer: BLAKE3 hashes whole chunks in parallel lanes, not small updates.
        let mut text = Vec::with_capacity(sorted_node_ids.iter().map(|id| id.len() + 1).sum());
        for id in sorted_node_ids {
            text.extend_from_slice(id.as_bytes());
            text.push(b'\n');
        }
        blake3::hash(&text).to_hex().to_string()
    }
}

/// Everything one diff changes, applied atomically.
#[derive(Debug, Clone, Default)]
pub struct GraphChanges {
    pub nodes: Vec<NodeRecord>,
    pub queues: Vec<QueueRecord>,
    pub sentinel: Option<SentinelRecord>,
}

impl GraphChanges {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.queues.is_empty() && self.sentinel.is_none()
    }
}

/// A stored node with its queue in the namespace asked for. Records are shared, not copied.
#[derive(Debug, Clone)]
pub struct StoredNode {
    pub node: Arc<NodeRecord>,
    pub queue: Option<Arc<QueueRecord>>,
}

/// Why the graph store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("embedded graph store failed")]
    Embedded(#[from] EmbeddedError),
}

/// A point in a store's write order: writes up to `settled` had reached the disk or failed,
/// writes up to `queued` had been staged. See [`GraphStore::settle`].
pub type StoreMark = recordstore::WriteMark;

/// The graph the DAG Manager owns.
///
/// Writes of diffs are staged: [`GraphStore::stage`] makes them visible to readers at once and
/// queues them for a durable commit, so concurrent diffs share commits. A reader answers only
/// after [`GraphStore::settle`] confirms that everything it may have read reached the disk.
#[async_trait]
pub trait GraphStore: Send + Sync + std::fmt::Debug {
    /// Marks the start of a read. Recovers first if an earlier staged write failed (readers
    /// then see what is on disk again).
    async fn begin(&self) -> Result<StoreMark, StoreError>;
    /// Makes `changes` visible now and queues them for a durable commit, in staging order,
    /// ending `announced` (see [`GraphStore::announce`]). Returns the mark just after them.
    async fn stage(
        &self,
        changes: GraphChanges,
        announced: Option<recordstore::Announced>,
    ) -> Result<StoreMark, StoreError>;
    /// Waits until every write staged up to `mark.queued` is durable; fails when one staged
    /// after `mark.settled` failed.
    async fn settle(&self, mark: StoreMark) -> Result<(), StoreError>;
    /// Announces a change about to be staged, so that a commit waits a little for it and they
    /// share it; drop the guard once staged. `None` where commits are not shared.
    fn announce(&self) -> Option<recordstore::Announced> {
        None
    }
    /// For each of `node_ids`, in order, the stored node and its queue in `namespace`.
    async fn nodes(
        &self,
        node_ids: &[&str],
        namespace: &str,
    ) -> Result<Vec<Option<StoredNode>>, StoreError>;
    /// For each of `names`, whether a queue (owned or orphan) is recorded under it.
    async fn queue_names_taken(&self, names: &[String]) -> Result<Vec<bool>, StoreError>;
    /// Queues of nodes whose tags match (`any` or `all`) and whose interval is `interval` (0: any).
    async fn queues_by_tags(
        &self,
        tags: &[String],
        interval: i64,
        match_all: bool,
    ) -> Result<Vec<QueueRecord>, StoreError>;
    async fn queues(&self) -> Result<Vec<QueueRecord>, StoreError>;
    async fn sentinel(&self, sentinel_id: &str) -> Result<Option<SentinelRecord>, StoreError>;
    /// Forgets a strategy; nodes no other strategy uses are removed and their queues orphaned.
    /// Returns the queues orphaned.
    async fn release_strategy(
        &self,
        strategy_id: &str,
        now: f64,
    ) -> Result<Vec<String>, StoreError>;
    async fn remove_queues(&self, names: &[String]) -> Result<(), StoreError>;
    /// (compute nodes, queues).
    async fn counts(&self) -> Result<(usize, usize), StoreError>;
    async fn health(&self) -> Result<(), StoreError>;
}

const NODES: Table = embedded::table("nodes");
const QUEUES: Table = embedded::table("queues");
const SENTINELS: Table = embedded::table("sentinels");

/// The embedded default: an in-memory index, durable in a record log (`graph.log`).
#[derive(Debug, Clone)]
pub struct EmbeddedGraphStore {
    db: Arc<EmbeddedDb>,
    index: Arc<RwLock<Index>>,
    /// Set when a staged write failed: the index holds what the disk does not, until the next
    /// [`GraphStore::begin`] reloads it.
    stale: Arc<AtomicBool>,
}

impl EmbeddedGraphStore {
    /// Opens (or creates) `dir/graph.log` and loads its index.
    pub fn open(dir: &Path) -> Result<EmbeddedGraphStore, StoreError> {
        let db = EmbeddedDb::open(dir, "graph", &[NODES, QUEUES, SENTINELS])?;
        let index = Self::load(&db)?;
        Ok(EmbeddedGraphStore {
            db: Arc::new(db),
            index: Arc::new(RwLock::new(index)),
            stale: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The index of what is on disk.
    fn load(db: &EmbeddedDb) -> Result<Index, StoreError> {
        let mut index = Index::default();
        for node in db.read_all_with(NODES, decode_stored, |n: &NodeRecord| n.node_id.clone())? {
            index.put_node(Arc::new(node));
        }
        for queue in db.read_all_with(QUEUES, decode_stored, |q: &QueueRecord| q.name.clone())? {
            index.put_queue(Arc::new(queue));
        }
        for sentinel in db.read_all_with(SENTINELS, decode_stored, |s: &SentinelRecord| {
            s.sentinel_id.clone()
        })? {
            index.put_sentinel(Arc::new(sentinel));
        }
        Ok(index)
    }

    /// The file underneath, for tests that make its commits fail.
    #[cfg(test)]
    pub(crate) fn db(&self) -> &EmbeddedDb {
        &self.db
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn commit(&self, batches: Vec<(Table, Vec<embedded::Row>)>) -> Result<(), StoreError> {
        Ok(self.db.commit(Write::new(batches)).await?)
    }
}

fn tags_match(node_tags: &[String], wanted: &[String], match_all: bool) -> bool {
    if wanted.is_empty() {
        return false;
    }
    if match_all {
        wanted.iter().all(|t| node_tags.contains(t))
    } else {
        wanted.iter().any(|t| node_tags.contains(t))
    }
}

#[async_trait]
impl GraphStore for EmbeddedGraphStore {
    async fn nodes(
        &self,
        node_ids: &[&str],
        namespace: &str,
    ) -> Result<Vec<Option<StoredNode>>, StoreError> {
        let index = self.read_index();
        Ok(node_ids
            .iter()
            .map(|&node_id| {
                let node = index.node(node_id)?;
                Some(StoredNode {
                    node: node.record.clone(),
                    queue: index.bound_queue(node_id, namespace).cloned(),
                })
            })
            .collect())
    }

    async fn queue_names_taken(&self, names: &[String]) -> Result<Vec<bool>, StoreError> {
        let index = self.read_index();
        Ok(names
            .iter()
            .map(|name| index.queue(name).is_some())
            .collect())
    }

    async fn begin(&self) -> Result<StoreMark, StoreError> {
        if self.stale.load(Ordering::SeqCst) {
            // Let every queued write settle, then read back what reached the disk.
            self.db.quiesce().await?;
            let index = Self::load(&self.db)?;
            *self.write_index() = index;
            self.stale.store(false, Ordering::SeqCst);
            tracing::warn!(
                code = "E_GRAPH_STORE",
                "A graph write had failed; the graph was reloaded from disk."
            );
        }
        Ok(self.db.mark())
    }

    async fn stage(
        &self,
        changes: GraphChanges,
        announced: Option<recordstore::Announced>,
    ) -> Result<StoreMark, StoreError> {
        if changes.is_empty() {
            return Ok(self.db.mark());
        }
        // Records are shared with the writer thread, which encodes them while the index is
        // updated here.
        let nodes: Vec<Arc<NodeRecord>> = changes.nodes.into_iter().map(Arc::new).collect();
        let queues: Vec<Arc<QueueRecord>> = changes.queues.into_iter().map(Arc::new).collect();
        let node_rows = embedded::shared_rows(&nodes, |n| n.node_id.clone());
        let queue_rows = embedded::shared_rows(&queues, |q| q.name.clone());
        let sentinel: Vec<Arc<SentinelRecord>> =
            changes.sentinel.into_iter().map(Arc::new).collect();
        let sentinel_rows = embedded::shared_rows(&sentinel, |s| s.sentinel_id.clone());
        // Queued and published under the index lock, so readers never see a write that was
        // queued after one they cannot see.
        let mut index = self.write_index();
        let batches = vec![
            (NODES, node_rows),
            (QUEUES, queue_rows),
            (SENTINELS, sentinel_rows),
        ];
        let write = match announced {
            Some(announced) => Write::new(batches).announced(announced),
            None => Write::new(batches),
        };
        self.db.write(write)?;
        for node in nodes {
            index.put_node(node);
        }
        for queue in queues {
            index.put_queue(queue);
        }
        for sentinel in sentinel {
            index.put_sentinel(sentinel);
        }
        drop(index);
        Ok(self.db.mark())
    }

    fn announce(&self) -> Option<recordstore::Announced> {
        Some(self.db.announce())
    }

    async fn settle(&self, mark: StoreMark) -> Result<(), StoreError> {
        let settled = self.db.settle(mark).await;
        if settled.is_err() {
            self.stale.store(true, Ordering::SeqCst);
        }
        Ok(settled?)
    }

    async fn queues_by_tags(
        &self,
        tags: &[String],
        interval: i64,
        match_all: bool,
    ) -> Result<Vec<QueueRecord>, StoreError> {
        let index = self.read_index();
        let mut queues: Vec<QueueRecord> = index
            .queues()
            .filter(|q| q.node_id.is_some())
            .filter(|q| interval == 0 || q.interval == interval)
            .filter(|q| tags_match(&q.tags, tags, match_all))
            .map(|q| QueueRecord::clone(q))
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(queues)
    }

    async fn queues(&self) -> Result<Vec<QueueRecord>, StoreError> {
        let mut queues: Vec<QueueRecord> = self
            .read_index()
            .queues()
            .map(|q| QueueRecord::clone(q))
            .collect();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(queues)
    }

    async fn sentinel(&self, sentinel_id: &str) -> Result<Option<SentinelRecord>, StoreError> {
        Ok(self.read_index().sentinel(sentinel_id).cloned())
    }

    async fn release_strategy(
        &self,
        strategy_id: &str,
        now: f64,
    ) -> Result<Vec<String>, StoreError> {
        let (removed_nodes, orphaned, sentinel_ids) = {
            let index = self.read_index();
            let released: Vec<&SentinelRecord> = index
                .sentinels()
                .filter(|s| s.strategy_id == strategy_id)
                .collect();
            // A node goes when every sentinel holding it is being released.
            let mut released_users: HashMap<&str, u32> = HashMap::default();
            for sentinel in &released {
                for node_id in &sentinel.node_ids {
                    *released_users.entry(node_id.as_str()).or_default() += 1;
                }
            }
            let mut removed_nodes: Vec<String> = released_users
                .iter()
                .filter(|(node_id, released)| {
                    index
                        .node(node_id)
                        .is_some_and(|entry| entry.users <= **released)
                })
                .map(|(node_id, _)| (*node_id).to_owned())
                .collect();
            removed_nodes.sort_unstable();
            let removed: foldhash::HashSet<&str> =
                removed_nodes.iter().map(String::as_str).collect();
            let sentinel_ids: Vec<String> =
                released.iter().map(|s| s.sentinel_id.clone()).collect();
            let orphaned: Vec<Arc<QueueRecord>> = index
                .queues()
                .filter(|q| q.node_id.as_deref().is_some_and(|n| removed.contains(n)))
                .map(|q| {
                    Arc::new(QueueRecord {
                        node_id: None,
                        orphaned_at: Some(now),
                        ..QueueRecord::clone(q)
                    })
                })
                .collect();
            (removed_nodes, orphaned, sentinel_ids)
        };
        if sentinel_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.commit(vec![
            (NODES, embedded::deletions(&removed_nodes)),
            (QUEUES, embedded::shared_rows(&orphaned, |q| q.name.clone())),
            (SENTINELS, embedded::deletions(&sentinel_ids)),
        ])
        .await?;
        let mut index = self.write_index();
        for sentinel_id in &sentinel_ids {
            index.remove_sentinel(sentinel_id);
        }
        for node_id in &removed_nodes {
            index.remove_node(node_id);
        }
        let names = orphaned.iter().map(|q| q.name.clone()).collect();
        for queue in orphaned {
            index.put_queue(queue);
        }
        Ok(names)
    }

    async fn remove_queues(&self, names: &[String]) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        self.commit(vec![(QUEUES, embedded::deletions(names))])
            .await?;
        let mut index = self.write_index();
        for name in names {
            index.remove_queue(name);
        }
        Ok(())
    }

    async fn counts(&self) -> Result<(usize, usize), StoreError> {
        Ok(self.read_index().counts())
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(self.db.probe()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            node_type: "SMA".into(),
            code_hash: "c".into(),
            schema_hash: "s".into(),
            schema_compat_id: String::new(),
            interval: 60,
            period: 5,
            tags: vec!["btc".into()],
            created_at: 1.0,
            buffering_since: None,
        }
    }

    fn queue(name: &str, node_id: &str) -> QueueRecord {
        QueueRecord {
            name: name.into(),
            node_id: Some(node_id.into()),
            namespace: String::new(),
            tag: "indicator".into(),
            interval: 60,
            tags: vec!["btc".into()],
            created_at: 1.0,
            compute_keys: Vec::new(),
            orphaned_at: None,
        }
    }

    /// Stored sentinels keep their digests: an unchanged DAG must digest as it always did.
    #[test]
    fn the_digest_of_sorted_node_ids_is_the_blake3_of_their_lines() {
        assert_eq!(
            SentinelRecord::digest_of(&["a", "b"]),
            blake3::hash(b"a\nb\n").to_hex().to_string()
        );
    }

    /// Earlier versions wrote JSON records; they are read beside the binary ones written since.
    #[tokio::test]
    async fn a_graph_an_earlier_version_wrote_in_json_opens_and_takes_new_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = EmbeddedDb::open(dir.path(), "graph", &[NODES, QUEUES, SENTINELS]).unwrap();
            db.commit(Write::new(vec![
                (
                    NODES,
                    embedded::rows(&[node("n1")], |n| n.node_id.clone()).unwrap(),
                ),
                (
                    QUEUES,
                    embedded::rows(&[queue("q1", "n1")], |q| q.name.clone()).unwrap(),
                ),
            ]))
            .await
            .unwrap();
        }
        {
            let store = EmbeddedGraphStore::open(dir.path()).unwrap();
            let found = store.nodes(&["n1"], "").await.unwrap();
            let found = found[0].as_ref().expect("the JSON node is read");
            assert_eq!(*found.node, node("n1"));
            assert_eq!(found.queue.as_deref(), Some(&queue("q1", "n1")));
            let begun = store.begin().await.unwrap();
            let changes = GraphChanges {
                nodes: vec![node("n2")],
                queues: vec![queue("q2", "n2")],
                sentinel: None,
            };
            let staged = store.stage(changes, None).await.unwrap();
            store.settle(begun.covering(staged)).await.unwrap();
        }
        let store = EmbeddedGraphStore::open(dir.path()).unwrap();
        assert_eq!(store.counts().await.unwrap(), (2, 2));
        let both = store.nodes(&["n1", "n2"], "").await.unwrap();
        assert_eq!(*both[1].as_ref().unwrap().node, node("n2"));
        assert_eq!(
            both[1].as_ref().unwrap().queue.as_deref(),
            Some(&queue("q2", "n2"))
        );
    }
}
