//! Queue (topic) administration behind the `QueueAdmin` trait. `EmbeddedQueueAdmin` records
//! queues in its own record log and stands in for a broker when none is configured; it holds no
//! messages, so every size it reports is 0. It records creations without a flush (the graph's
//! durable write that follows names them, and `App::build` re-creates any a crash lost), and
//! deletions durably.

use async_trait::async_trait;

use recordstore::{self as embedded, Durability, EmbeddedDb, EmbeddedError, Table, Write};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A queue's GC tag: one of a few names, borrowed (not allocated) when it is one of ours.
pub type GcTag = std::borrow::Cow<'static, str>;

/// A GC tag read back from storage, borrowed when it names a known kind.
pub fn gc_tag(tag: String) -> GcTag {
    match wire::QueueKind::parse(&tag) {
        Some(kind) => GcTag::Borrowed(kind.as_str()),
        None if tag == "sentinel" => GcTag::Borrowed("sentinel"),
        None => GcTag::Owned(tag),
    }
}

/// A queue to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpec {
    pub name: String,
    /// The GC tag (`raw`, `indicator`, `trade_exec`).
    pub tag: GcTag,
    pub partitions: u32,
    pub replication_factor: u16,
    pub retention_ms: i64,
}

/// A queue as the broker knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerQueue {
    pub spec: QueueSpec,
    /// Unix seconds.
    pub created_at: f64,
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueAdminError {
    /// The queue exists with another configuration: the caller's problem, not the broker's.
    #[error("queue {name} exists with a different configuration ({detail})")]
    ConfigMismatch { name: String, detail: String },
    #[error("embedded queue registry failed")]
    Embedded(#[from] EmbeddedError),
    /// The broker failed or did not answer: counts against its breaker.
    #[error("the broker failed to {operation}: {detail}")]
    Broker {
        operation: &'static str,
        detail: String,
    },
    /// The broker refused the request as invalid (replication factor, config, policy): the
    /// caller's problem, not counted against the breaker.
    #[error("the broker refused queue {name}: {detail}")]
    Refused { name: String, detail: String },
    /// The breaker is open: the call was not made.
    #[error("{dependency} is unavailable (its circuit breaker is open)")]
    Unavailable { dependency: String },
    #[error("archive of queue {name} could not be written to {path}")]
    Archive {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates, lists, sizes and deletes queues.
#[async_trait]
pub trait QueueAdmin: Send + Sync + std::fmt::Debug {
    /// Creates the queues that do not exist; an existing one with the same config is fine.
    async fn create_queues(&self, specs: Vec<QueueSpec>, now: f64) -> Result<(), QueueAdminError>;
    /// Makes every creation so far durable (a broker's creations already are).
    async fn sync(&self) -> Result<(), QueueAdminError>;
    async fn list_queues(&self) -> Result<Vec<BrokerQueue>, QueueAdminError>;
    async fn delete_queues(&self, names: &[String]) -> Result<(), QueueAdminError>;
    /// Approximate message counts of the named queues that exist.
    async fn queue_sizes(&self, names: &[String]) -> Result<HashMap<String, i64>, QueueAdminError>;
    /// Keeps what a queue holds somewhere durable before it is dropped.
    async fn archive_queue(
        &self,
        name: &str,
        archive_dir: &Path,
        now: f64,
    ) -> Result<PathBuf, QueueAdminError>;
    async fn health(&self) -> Result<(), QueueAdminError>;
    /// The breaker guarding a remote queue service, for the probe that closes it.
    fn breaker(&self) -> Option<&kit::breaker::CircuitBreaker> {
        None
    }
}

const QUEUES: Table = embedded::table("queues");

/// The registry's queues by name. Entries keep their hash, so growing the table moves them
/// without reading their names (with 100,000 queues, a rehash that read them took milliseconds
/// out of one diff).
#[derive(Debug, Default)]
struct ByName {
    hasher: foldhash::fast::RandomState,
    table: hashbrown::HashTable<(u64, Arc<BrokerQueue>)>,
}

impl ByName {
    fn hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    fn get(&self, name: &str) -> Option<&Arc<BrokerQueue>> {
        self.table
            .find(self.hash(name), |(_, q)| q.spec.name == name)
            .map(|(_, q)| q)
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn insert(&mut self, queue: Arc<BrokerQueue>) {
        let hash = self.hash(&queue.spec.name);
        match self
            .table
            .entry(hash, |(_, q)| q.spec.name == queue.spec.name, |(h, _)| *h)
        {
            hashbrown::hash_table::Entry::Occupied(mut found) => found.get_mut().1 = queue,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert((hash, queue));
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Ok(found) = self
            .table
            .find_entry(self.hash(name), |(_, q)| q.spec.name == name)
        {
            found.remove();
        }
    }

    fn values(&self) -> impl Iterator<Item = &Arc<BrokerQueue>> {
        self.table.iter().map(|(_, q)| q)
    }
}

/// A broker-less queue registry in `dir/queues.log`.
#[derive(Debug, Clone)]
pub struct EmbeddedQueueAdmin {
    db: Arc<EmbeddedDb>,
    queues: Arc<RwLock<ByName>>,
}

impl EmbeddedQueueAdmin {
    /// Refuses specs that name a recorded queue with another configuration.
    pub fn check(&self, specs: &[QueueSpec]) -> Result<(), QueueAdminError> {
        self.unrecorded(specs).map(drop)
    }

    /// For each spec, whether no queue is recorded under it; an error for one that names a
    /// recorded queue with another configuration.
    fn unrecorded(&self, specs: &[QueueSpec]) -> Result<Vec<bool>, QueueAdminError> {
        let queues = self.read();
        let mut unrecorded = Vec::with_capacity(specs.len());
        for spec in specs {
            match queues.get(&spec.name) {
                None => unrecorded.push(true),
                Some(existing) if existing.spec == *spec => unrecorded.push(false),
                Some(existing) => {
                    return Err(QueueAdminError::ConfigMismatch {
                        name: spec.name.clone(),
                        detail: format!(
                            "partitions {}/{}, replication {}/{}, retention_ms {}/{}",
                            existing.spec.partitions,
                            spec.partitions,
                            existing.spec.replication_factor,
                            spec.replication_factor,
                            existing.spec.retention_ms,
                            spec.retention_ms
                        ),
                    });
                }
            }
        }
        Ok(unrecorded)
    }

    pub fn open(dir: &Path) -> Result<EmbeddedQueueAdmin, QueueAdminError> {
        let db = EmbeddedDb::open(dir, "queues", &[QUEUES])?;
        db.on_unwaited_failure(|writes, error| {
            tracing::warn!(code = "E_QUEUE_REGISTRY", writes, reason = %kit::error::chain(error), "The queue registry could not record new queues; start-up will re-create them from the graph.");
        });
        let mut queues = ByName::default();
        for queue in db.read_all_with(QUEUES, crate::codec::decode_stored, |q: &BrokerQueue| {
            q.spec.name.clone()
        })? {
            queues.insert(Arc::new(queue));
        }
        Ok(EmbeddedQueueAdmin {
            db: Arc::new(db),
            queues: Arc::new(RwLock::new(queues)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ByName> {
        self.queues.read().unwrap_or_else(|e| e.into_inner())
    }

    async fn write_rows(&self, rows: Vec<embedded::Row>) -> Result<(), QueueAdminError> {
        Ok(self.db.commit(Write::new(vec![(QUEUES, rows)])).await?)
    }

    /// Queues a lazy write without waiting for it (diffs create queues under their lock). A
    /// failure is logged (see `open`); start-up re-creates from the graph any queue the registry
    /// lost.
    fn write_rows_lazily(&self, rows: Vec<embedded::Row>) -> Result<(), QueueAdminError> {
        let write = Write::new(vec![(QUEUES, rows)]).durability(Durability::Lazy);
        self.db.write(write)?.detach();
        Ok(())
    }
}

#[async_trait]
impl QueueAdmin for EmbeddedQueueAdmin {
    async fn create_queues(&self, specs: Vec<QueueSpec>, now: f64) -> Result<(), QueueAdminError> {
        let unrecorded = self.unrecorded(&specs)?;
        let new: Vec<Arc<BrokerQueue>> = specs
            .into_iter()
            .zip(unrecorded)
            .filter(|(_, unrecorded)| *unrecorded)
            .map(|(spec, _)| {
                Arc::new(BrokerQueue {
                    spec,
                    created_at: now,
                })
            })
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.write_rows_lazily(embedded::shared_rows(&new, |q| q.spec.name.clone()))?;
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        for queue in new {
            queues.insert(queue);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), QueueAdminError> {
        Ok(self.db.commit(Write::sync()).await?)
    }

    async fn list_queues(&self) -> Result<Vec<BrokerQueue>, QueueAdminError> {
        let mut queues: Vec<BrokerQueue> = self
            .read()
            .values()
            .map(|q| BrokerQueue::clone(q))
            .collect();
        queues.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(queues)
    }

    async fn delete_queues(&self, names: &[String]) -> Result<(), QueueAdminError> {
        self.write_rows(embedded::deletions(names)).await?;
        let mut queues = self.queues.write().unwrap_or_else(|e| e.into_inner());
        for name in names {
            queues.remove(name);
        }
        Ok(())
    }

    async fn queue_sizes(&self, names: &[String]) -> Result<HashMap<String, i64>, QueueAdminError> {
        let queues = self.read();
        Ok(names
            .iter()
            .filter(|n| queues.contains(n))
            .map(|n| (n.clone(), 0))
            .collect())
    }

    async fn archive_queue(
        &self,
        name: &str,
        archive_dir: &Path,
        now: f64,
    ) -> Result<PathBuf, QueueAdminError> {
        let record = self.read().get(name).cloned();
        let path = archive_dir.join(format!("{name}-{}.json", now as i64));
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "queue": name,
            "archived_at": now,
            "broker": "embedded",
            "config": record,
            "messages": [],
        }))
        .map_err(EmbeddedError::from)?;
        let error = |source| QueueAdminError::Archive {
            name: name.to_owned(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(archive_dir).map_err(error)?;
        std::fs::write(&path, body).map_err(error)?;
        Ok(path)
    }

    async fn health(&self) -> Result<(), QueueAdminError> {
        Ok(self.db.probe()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_gc_tags_read_back_borrowed_and_others_as_they_were() {
        for known in ["raw", "indicator", "trade_exec", "sentinel"] {
            let tag = gc_tag(known.to_owned());
            assert!(matches!(tag, GcTag::Borrowed(_)), "{known}");
            assert_eq!(tag, known);
        }
        let other = gc_tag("custom".to_owned());
        assert!(matches!(other, GcTag::Owned(_)));
        assert_eq!(other, "custom");
    }
}
