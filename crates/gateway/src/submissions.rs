//! Accepted submissions, kept durably before the Gateway answers, with their state:
//! `queued → processing → completed | failed`. A restart finds every unfinished one again.

use recordstore::{Commit, EmbeddedDb, EmbeddedError, Table};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;
use wire::ComputeContext;

use crate::api::{QueueMap, TagQuery};

const STRATEGIES: Table = recordstore::table("strategies");

/// Where a submission is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Processing,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// The compute context as stored (the world comes from `world_ids`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredContext {
    pub execution_domain: String,
    pub as_of: String,
    pub partition: String,
    pub dataset_fingerprint: String,
}

impl StoredContext {
    pub fn from_context(context: &ComputeContext) -> StoredContext {
        StoredContext {
            execution_domain: context.execution_domain.clone(),
            as_of: context.as_of.clone(),
            partition: context.partition.clone(),
            dataset_fingerprint: context.dataset_fingerprint.clone(),
        }
    }
}

/// One accepted strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRecord {
    pub strategy_id: String,
    pub dag_hash: String,
    pub dag_json: String,
    pub node_ids_crc32: u32,
    pub world_ids: Vec<String>,
    pub context: StoredContext,
    /// The DAG's tag queries, taken at acceptance so carrying never parses the DAG again.
    #[serde(default)]
    pub tag_queries: Vec<TagQuery>,
    pub status: Status,
    pub reason: Option<String>,
    pub queue_map: QueueMap,
    pub sentinel_id: String,
    pub created_at: f64,
    pub updated_at: f64,
    /// W3C `traceparent` of the submission's span: carrying it, even after a restart, continues
    /// the same trace.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Why a submission could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    #[error("the submission store failed")]
    Store(#[from] EmbeddedError),
}

/// What accepting a submission found.
#[derive(Debug)]
pub enum Accepted {
    New(Box<StrategyRecord>),
    Duplicate(String),
}

#[derive(Debug, Default)]
struct Index {
    records: HashMap<String, StrategyRecord>,
    by_hash: HashMap<String, String>,
}

/// The durable set of submissions, with an in-memory index and a watch per strategy.
#[derive(Debug)]
pub struct Submissions {
    db: EmbeddedDb,
    index: RwLock<Index>,
    watchers: Mutex<HashMap<String, watch::Sender<Status>>>,
}

impl Submissions {
    pub fn open(dir: &Path) -> Result<Submissions, SubmissionError> {
        let db = EmbeddedDb::open(dir, "submissions.redb", &[STRATEGIES])?;
        let mut index = Index::default();
        for record in db.read_all(STRATEGIES, |r: &StrategyRecord| r.strategy_id.clone())? {
            index
                .by_hash
                .insert(record.dag_hash.clone(), record.strategy_id.clone());
            index.records.insert(record.strategy_id.clone(), record);
        }
        Ok(Submissions {
            db,
            index: RwLock::new(index),
            watchers: Mutex::new(HashMap::new()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn rows(record: &StrategyRecord) -> Result<Vec<recordstore::Row>, SubmissionError> {
        Ok(recordstore::rows(std::slice::from_ref(record), |r| {
            r.strategy_id.clone()
        })?)
    }

    /// Stores a new submission durably, or names the strategy that already has this DAG. The
    /// DAG's hash is claimed before the write, so a concurrent duplicate is caught too.
    pub async fn accept(&self, record: StrategyRecord) -> Result<Accepted, SubmissionError> {
        {
            let mut index = self.write();
            if let Some(existing) = index.by_hash.get(&record.dag_hash) {
                return Ok(Accepted::Duplicate(existing.clone()));
            }
            index
                .by_hash
                .insert(record.dag_hash.clone(), record.strategy_id.clone());
        }
        let written = match Self::rows(&record) {
            Ok(rows) => self
                .db
                .write(vec![(STRATEGIES, rows)])
                .await
                .map_err(Into::into),
            Err(error) => Err(error),
        };
        if let Err(error) = written {
            self.write().by_hash.remove(&record.dag_hash);
            return Err(error);
        }
        self.write()
            .records
            .insert(record.strategy_id.clone(), record.clone());
        Ok(Accepted::New(Box::new(record)))
    }

    pub fn get(&self, strategy_id: &str) -> Option<StrategyRecord> {
        self.read().records.get(strategy_id).cloned()
    }

    /// Ids of every submission not yet completed or failed, oldest first.
    pub fn unfinished(&self) -> Vec<String> {
        let index = self.read();
        let mut unfinished: Vec<&StrategyRecord> = index
            .records
            .values()
            .filter(|r| !r.status.is_final())
            .collect();
        unfinished.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        unfinished.iter().map(|r| r.strategy_id.clone()).collect()
    }

    /// Counts by state.
    pub fn counts(&self) -> HashMap<Status, usize> {
        let mut counts = HashMap::new();
        for record in self.read().records.values() {
            *counts.entry(record.status).or_insert(0) += 1;
        }
        counts
    }

    /// Marks a submission as being carried; not persisted (a restart re-queues it anyway).
    pub fn mark_processing(&self, strategy_id: &str) {
        if let Some(record) = self.write().records.get_mut(strategy_id) {
            record.status = Status::Processing;
        }
        self.notify(strategy_id, Status::Processing);
    }

    /// Puts a submission back to `queued` (the DAG Manager was unavailable).
    pub fn mark_queued(&self, strategy_id: &str) {
        if let Some(record) = self.write().records.get_mut(strategy_id) {
            record.status = Status::Queued;
        }
        self.notify(strategy_id, Status::Queued);
    }

    /// Records an end state and tells whoever waits. The write is lazy and not waited for: it
    /// shares the next acceptance's commit. An end state lost in a crash (or a failed commit,
    /// which is logged) leaves the submission `queued` on disk, and carrying it again after a
    /// restart gives the same answer.
    pub fn finish(&self, mut record: StrategyRecord) -> Result<(), SubmissionError> {
        let strategy = record.strategy_id.clone();
        self.db
            .enqueue(vec![(STRATEGIES, Self::rows(&record)?)], Commit::Lazy)?
            .on_failure(move |error| {
                tracing::warn!(strategy_id = %strategy, code = "E_STORE", error = %error, "A submission's end state was not stored; a restart carries it again.");
            });
        let status = record.status;
        let strategy_id = record.strategy_id.clone();
        if let Some(stored) = self.write().records.get_mut(&strategy_id) {
            std::mem::swap(stored, &mut record);
        }
        self.notify(&strategy_id, status);
        Ok(())
    }

    fn notify(&self, strategy_id: &str, status: Status) {
        let watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = watchers.get(strategy_id) {
            sender.send_replace(status);
        }
    }

    /// A receiver that sees the submission's state changes.
    pub fn watch(&self, strategy_id: &str) -> watch::Receiver<Status> {
        let status = self.get(strategy_id).map_or(Status::Queued, |r| r.status);
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers
            .entry(strategy_id.to_owned())
            .or_insert_with(|| watch::channel(status).0)
            .subscribe()
    }

    /// Forgets the watch of a submission nobody waits for any more.
    pub fn unwatch(&self, strategy_id: &str) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers
            .get(strategy_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            watchers.remove(strategy_id);
        }
    }
}

/// Shared handle.
pub type SharedSubmissions = Arc<Submissions>;
