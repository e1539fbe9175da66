//! Accepted submissions, kept durably before the Gateway answers, with their state:
//! `queued → processing → completed | failed`. A restart finds every unfinished one again.

use foldhash::HashMap;
use recordstore::{Durability, EmbeddedDb, EmbeddedError, Table, Write};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;
use wire::ComputeContext;

use crate::api::{QueueMap, TagQuery};

const STRATEGIES: Table = recordstore::table("strategies");
/// Each strategy's DAG text, written once at acceptance, apart from its state so that state
/// changes do not rewrite it.
const DAGS: Table = recordstore::table("dags");

/// A row of `DAGS`: the DAG text is stored as it came, unescaped.
#[derive(Debug, Deserialize)]
struct DagRow {
    strategy_id: String,
    dag: Box<serde_json::value::RawValue>,
}

impl DagRow {
    /// `{"strategy_id":…,"dag":<the DAG text>}`: the text is valid JSON (it was parsed before
    /// acceptance), so it goes in as it is.
    fn encode(strategy_id: &str, dag_json: &str) -> Result<Vec<u8>, serde_json::Error> {
        let id = serde_json::to_string(strategy_id)?;
        let mut row = Vec::with_capacity(dag_json.len() + id.len() + 24);
        row.extend_from_slice(b"{\"strategy_id\":");
        row.extend_from_slice(id.as_bytes());
        row.extend_from_slice(b",\"dag\":");
        row.extend_from_slice(dag_json.as_bytes());
        row.push(b'}');
        Ok(row)
    }
}

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
    /// Stored in `DAGS`, not with the state (records written before that split carry it here).
    #[serde(default, skip_serializing)]
    pub dag_json: Arc<str>,
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
        let db = EmbeddedDb::open(dir, "submissions", &[STRATEGIES, DAGS])?;
        db.on_unwaited_failure(|writes, error| {
            tracing::warn!(
                code = "E_STORE",
                writes,
                reason = %kit::error::chain(error),
                "End states of submissions were not stored; a restart carries them again."
            );
        });
        let mut dags: HashMap<String, Arc<str>> = db
            .read_all(DAGS, |r: &DagRow| r.strategy_id.clone())?
            .into_iter()
            .map(|row| (row.strategy_id, Arc::from(row.dag.get())))
            .collect();
        let mut index = Index::default();
        for mut record in db.read_all(STRATEGIES, |r: &StrategyRecord| r.strategy_id.clone())? {
            if let Some(dag) = dags.remove(&record.strategy_id) {
                record.dag_json = dag;
            }
            index
                .by_hash
                .insert(record.dag_hash.clone(), record.strategy_id.clone());
            index.records.insert(record.strategy_id.clone(), record);
        }
        Ok(Submissions {
            db,
            index: RwLock::new(index),
            watchers: Mutex::new(HashMap::default()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The state row and the DAG row of a new submission.
    fn acceptance_rows(
        record: &StrategyRecord,
    ) -> Result<Vec<(Table, Vec<recordstore::Row>)>, SubmissionError> {
        let dag =
            DagRow::encode(&record.strategy_id, &record.dag_json).map_err(EmbeddedError::from)?;
        Ok(vec![
            (STRATEGIES, Self::rows(record)?),
            (
                DAGS,
                vec![(
                    record.strategy_id.clone(),
                    Some(recordstore::Value::Bytes(dag)),
                )],
            ),
        ])
    }

    fn rows(record: &StrategyRecord) -> Result<Vec<recordstore::Row>, SubmissionError> {
        Ok(recordstore::rows(std::slice::from_ref(record), |r| {
            r.strategy_id.clone()
        })?)
    }

    /// Announces a submission about to be accepted: the store's next commit waits a little for
    /// it, so that concurrent acceptances share it. Pass the guard to [`Submissions::accept`].
    pub fn announce(&self) -> recordstore::Announced {
        self.db.announce()
    }

    /// Stores a new submission durably, or names the strategy that already has this DAG. The
    /// DAG's hash is claimed before the write, so a concurrent duplicate is caught too.
    pub async fn accept(
        &self,
        record: StrategyRecord,
        announced: recordstore::Announced,
    ) -> Result<Accepted, SubmissionError> {
        {
            let mut index = self.write();
            if let Some(existing) = index.by_hash.get(&record.dag_hash) {
                return Ok(Accepted::Duplicate(existing.clone()));
            }
            index
                .by_hash
                .insert(record.dag_hash.clone(), record.strategy_id.clone());
        }
        let written = async {
            let write = Write::new(Self::acceptance_rows(&record)?).announced(announced);
            Ok::<(), SubmissionError>(self.db.commit(write).await?)
        }
        .await;
        if let Err(error) = written {
            self.write().by_hash.remove(&record.dag_hash);
            return Err(error);
        }
        self.write()
            .records
            .insert(record.strategy_id.clone(), record.clone());
        Ok(Accepted::New(Box::new(record)))
    }

    /// Makes the next `commits` commits of the store fail, as a disk error would.
    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, commits: usize) {
        self.db.fail_next_commits(commits);
    }

    /// Proves the store can take submissions: its log is open, writable and still on disk.
    pub fn probe(&self) -> Result<(), SubmissionError> {
        Ok(self.db.probe()?)
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
        let mut counts = HashMap::default();
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
        let write =
            Write::new(vec![(STRATEGIES, Self::rows(&record)?)]).durability(Durability::Lazy);
        self.db.write(write)?.detach();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(strategy_id: &str, dag_json: &str) -> StrategyRecord {
        StrategyRecord {
            strategy_id: strategy_id.to_owned(),
            dag_hash: format!("hash-{strategy_id}"),
            dag_json: Arc::from(dag_json),
            node_ids_crc32: 7,
            world_ids: vec!["w".into()],
            context: StoredContext::default(),
            tag_queries: Vec::new(),
            status: Status::Queued,
            reason: None,
            queue_map: QueueMap::new(),
            sentinel_id: format!("{strategy_id}-sentinel"),
            created_at: 1.0,
            updated_at: 1.0,
            traceparent: None,
        }
    }

    /// The DAG text is kept apart from the state, exactly as it came, and an end state does not
    /// lose it; records from before that split (text inline) still load.
    #[tokio::test]
    async fn the_dag_text_survives_reopens_end_states_and_the_older_inline_format() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"nodes": [ {"node_id":"a", "x": "q\"uote"} ], "version":"v1"}"#;
        {
            let submissions = Submissions::open(dir.path()).unwrap();
            let announced = submissions.announce();
            submissions
                .accept(record("new", text), announced)
                .await
                .unwrap();
            let mut done = record("new", text);
            done.status = Status::Completed;
            submissions.finish(done).unwrap();
            // An end state is a lazy write: the older format's record rides with a durable one.
            let mut legacy = serde_json::to_value(record("old", "")).unwrap();
            legacy["dag_json"] = serde_json::Value::from(text);
            let legacy_row = serde_json::to_vec(&legacy).unwrap();
            submissions
                .db
                .commit(Write::new(vec![(
                    STRATEGIES,
                    vec![(
                        "old".to_owned(),
                        Some(recordstore::Value::Bytes(legacy_row)),
                    )],
                )]))
                .await
                .unwrap();
        }
        let submissions = Submissions::open(dir.path()).unwrap();
        let new = submissions.get("new").unwrap();
        assert_eq!(&*new.dag_json, text);
        assert_eq!(new.status, Status::Completed);
        assert_eq!(&*submissions.get("old").unwrap().dag_json, text);
    }
}
