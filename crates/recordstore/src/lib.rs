//! Durable tables of JSON records in an embedded redb file, crash-safe. One writer thread per
//! file commits writes in the order they were queued, several to a transaction (see `writer`).
//! Records are JSON values stored under increasing `u64` keys, with the name → key map in
//! memory: new records append at the right edge of the B-tree, where random ids as keys would
//! dirty a page per insert and make every commit rewrite much of the file.

use foldhash::HashMap;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::{Arc, Mutex};

mod writer;
use writer::{Progress, WriteRequest, writer_loop};

/// A JSON-record table under storage keys.
pub type Table = TableDefinition<'static, u64, &'static [u8]>;

/// Names a table.
pub const fn table(name: &'static str) -> Table {
    TableDefinition::new(name)
}

/// A record's name and its new JSON; `None` deletes it.
pub type Row = (String, Option<Vec<u8>>);

/// A row under its storage key.
type KeyedRow = (u64, Option<Vec<u8>>);

/// Why embedded storage failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("database file {path} could not be opened")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("database I/O failed")]
    Storage(#[from] redb::Error),
    #[error("a stored record could not be encoded or decoded")]
    Codec(#[from] serde_json::Error),
    #[error("database task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("the write was not committed: {reason}")]
    Commit { reason: String },
}

fn storage<E: Into<redb::Error>>(error: E) -> EmbeddedError {
    EmbeddedError::Storage(error.into())
}

/// How a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// On disk when `write` returns.
    Durable,
    /// Committed with the next durable write (or within a few milliseconds without a flush),
    /// and on disk with the next durable write or a clean close; lost in a crash before that.
    /// For records that can be derived again.
    Lazy,
}

/// One table's record names and their storage keys.
#[derive(Debug, Default)]
struct Keys {
    by_name: HashMap<String, u64>,
    next: u64,
}

/// What is decided when a write is queued: storage keys, and the write's place in the order.
#[derive(Debug, Default)]
struct Queueing {
    tables: HashMap<String, Keys>,
    queued: u64,
}

/// Where the write queue stood at a moment: writes up to `settled` had settled, writes up to
/// `queued` had been queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMark {
    pub settled: u64,
    pub queued: u64,
}

impl WriteMark {
    /// From where `self` had settled to everything `later` had queued.
    pub fn covering(self, later: WriteMark) -> WriteMark {
        WriteMark {
            settled: self.settled,
            queued: later.queued.max(self.queued),
        }
    }
}

/// A redb database file of JSON-record tables, written by one thread that groups concurrent
/// writes into shared commits.
#[derive(Debug)]
pub struct EmbeddedDb {
    db: Arc<redb::Database>,
    keys: Mutex<Queueing>,
    progress: Arc<Progress>,
    writer: Mutex<Option<std::sync::mpsc::Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for EmbeddedDb {
    /// Stops the writer and waits for it, so the file is closed when this returns.
    fn drop(&mut self) {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = thread.join();
        }
    }
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/file` and makes sure every table exists.
    pub fn open(dir: &Path, file: &str, tables: &[Table]) -> Result<EmbeddedDb, EmbeddedError> {
        std::fs::create_dir_all(dir).map_err(|e| storage(redb::StorageError::Io(e)))?;
        let path = dir.join(file);
        let db = redb::Database::create(&path).map_err(|source| EmbeddedError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let write = db.begin_write().map_err(storage)?;
        for table in tables {
            write.open_table(*table).map_err(storage)?;
        }
        write.commit().map_err(storage)?;
        let db = Arc::new(db);
        let (sender, requests) = std::sync::mpsc::channel();
        let writer_db = db.clone();
        let progress = Arc::new(Progress::new());
        let writer_progress = progress.clone();
        let thread = std::thread::Builder::new()
            .name(format!("recordstore-{file}"))
            .spawn(move || writer_loop(writer_db, requests, writer_progress))
            .map_err(|e| storage(redb::StorageError::Io(e)))?;
        Ok(EmbeddedDb {
            db,
            keys: Mutex::new(Queueing::default()),
            progress,
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, Queueing> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every record of a table, decoded; `name` tells each record's name. A name stored twice
    /// (a failed commit can leave that behind) resolves to its newest record. Also loads the
    /// table's storage keys: call it when opening, before any write.
    pub fn read_all<T: DeserializeOwned>(
        &self,
        table: Table,
        name: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, EmbeddedError> {
        let (records, keys) = self.scan(table, name)?;
        self.keys().tables.insert(table.name().to_owned(), keys);
        Ok(records)
    }

    /// Every record of a table as on disk now, like [`EmbeddedDb::read_all`] but leaving the
    /// storage keys alone (queued writes may hold keys the disk does not have yet).
    pub fn read_records<T: DeserializeOwned>(
        &self,
        table: Table,
        name: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, EmbeddedError> {
        Ok(self.scan(table, name)?.0)
    }

    fn scan<T: DeserializeOwned>(
        &self,
        table: Table,
        name: impl Fn(&T) -> String,
    ) -> Result<(Vec<T>, Keys), EmbeddedError> {
        let read = self.db.begin_read().map_err(storage)?;
        let opened = read.open_table(table).map_err(storage)?;
        let mut records = Vec::new();
        let mut keys = Keys::default();
        for entry in opened.iter().map_err(storage)? {
            let (key, value) = entry.map_err(storage)?;
            let record: T = serde_json::from_slice(value.value())?;
            keys.by_name.insert(name(&record), key.value());
            keys.next = keys.next.max(key.value() + 1);
            records.push(record);
        }
        Ok((records, keys))
    }

    /// Writes every batch in one durable transaction (shared with concurrent writers).
    pub async fn write(&self, batches: Vec<(Table, Vec<Row>)>) -> Result<(), EmbeddedError> {
        self.write_with(batches, Commit::Durable).await
    }

    /// Makes every write before it durable (an empty durable commit, shared with whatever other
    /// writes are waiting).
    pub async fn sync(&self) -> Result<(), EmbeddedError> {
        self.submit(Vec::new(), Commit::Durable).await
    }

    /// Writes every batch atomically, durable or not as asked.
    pub async fn write_with(
        &self,
        batches: Vec<(Table, Vec<Row>)>,
        commit: Commit,
    ) -> Result<(), EmbeddedError> {
        if batches.iter().all(|(_, rows)| rows.is_empty()) {
            return Ok(());
        }
        self.submit(batches, commit).await
    }

    async fn submit(
        &self,
        batches: Vec<(Table, Vec<Row>)>,
        commit: Commit,
    ) -> Result<(), EmbeddedError> {
        self.enqueue(batches, commit)?.wait().await
    }

    /// Queues a write without waiting for it: writes are committed in the order they are
    /// queued, so a caller can publish what it wrote before the commit and wait for it later
    /// (several callers then share one commit).
    pub fn enqueue(
        &self,
        batches: Vec<(Table, Vec<Row>)>,
        commit: Commit,
    ) -> Result<PendingWrite, EmbeddedError> {
        self.enqueue_announced(batches, commit, None)
    }

    /// [`EmbeddedDb::enqueue`] for the write `announced` (if any) announced: the announcement
    /// ends as the write reaches the writer, so the writer never waits for a write it holds.
    pub fn enqueue_announced(
        &self,
        batches: Vec<(Table, Vec<Row>)>,
        commit: Commit,
        announced: Option<Announced>,
    ) -> Result<PendingWrite, EmbeddedError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue(batches, commit, Some(reply), announced)?;
        Ok(PendingWrite(answer))
    }

    /// Queues a lazy write nobody waits for: for records whose loss is recoverable by design.
    /// If its commit fails, the hook set with [`EmbeddedDb::on_unwaited_failure`] hears of it.
    pub fn enqueue_lazy(&self, batches: Vec<(Table, Vec<Row>)>) -> Result<(), EmbeddedError> {
        self.queue(batches, Commit::Lazy, None, None)
    }

    /// Called from the writer thread with the number of writes lost and the reason, when a
    /// commit holding writes queued by [`EmbeddedDb::enqueue_lazy`] fails. Set once; later
    /// calls are ignored.
    pub fn on_unwaited_failure(&self, hook: impl Fn(usize, &str) + Send + Sync + 'static) {
        let _ = self.progress.unwaited_failure.set(Box::new(hook));
    }

    fn queue(
        &self,
        batches: Vec<(Table, Vec<Row>)>,
        commit: Commit,
        reply: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
        announced: Option<Announced>,
    ) -> Result<(), EmbeddedError> {
        // Keys are handed out and the write queued under one lock, so the writer applies
        // writes in the order their keys were decided.
        let mut queueing = self.keys();
        let keyed: Vec<(Table, Vec<KeyedRow>)> = batches
            .into_iter()
            .map(|(table, rows)| {
                let keys = queueing.tables.entry(table.name().to_owned()).or_default();
                let rows = rows
                    .into_iter()
                    .filter_map(|(name, value)| match value {
                        Some(bytes) => {
                            let key = match keys.by_name.get(&name) {
                                Some(key) => *key,
                                None => {
                                    let key = keys.next;
                                    keys.next += 1;
                                    keys.by_name.insert(name, key);
                                    key
                                }
                            };
                            Some((key, Some(bytes)))
                        }
                        None => keys.by_name.remove(&name).map(|key| (key, None)),
                    })
                    .collect();
                (table, rows)
            })
            .collect();
        let seq = queueing.queued + 1;
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        drop(announced);
        let sent = writer.as_ref().is_some_and(|sender| {
            sender
                .send(WriteRequest {
                    seq,
                    batches: keyed,
                    commit,
                    reply,
                })
                .is_ok()
        });
        if !sent {
            return Err(EmbeddedError::Commit {
                reason: "the writer has stopped".into(),
            });
        }
        queueing.queued = seq;
        Ok(())
    }

    /// Announces a write this caller is about to queue: while announced writes are coming, a
    /// durable commit waits for them (up to a few milliseconds) so that they share it. Drop the
    /// guard once the write is queued, or when it turns out there is none.
    pub fn announce(&self) -> Announced {
        self.progress
            .announced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Announced(self.progress.clone())
    }

    /// Makes the next `commits` commits fail as a disk error would, writing nothing: for tests
    /// of what callers do when storage fails.
    #[cfg(any(test, feature = "faults"))]
    pub fn fail_next_commits(&self, commits: usize) {
        self.progress
            .faults
            .store(commits, std::sync::atomic::Ordering::SeqCst);
    }

    /// Where the write queue stands now.
    pub fn mark(&self) -> WriteMark {
        // Settled is read first: it never passes queued.
        let settled = *self.progress.settled.borrow();
        WriteMark {
            settled,
            queued: self.keys().queued,
        }
    }

    /// Waits until every write queued so far has settled, committed or not.
    pub async fn quiesce(&self) -> Result<(), EmbeddedError> {
        let queued = self.mark().queued;
        self.progress
            .settle(WriteMark {
                settled: queued,
                queued,
            })
            .await
    }

    /// Waits until every write up to `mark.queued` has settled. Fails when one of them, queued
    /// after `mark.settled`, failed: state read at `mark` may then hold what never reached the
    /// disk.
    pub async fn settle(&self, mark: WriteMark) -> Result<(), EmbeddedError> {
        self.progress.settle(mark).await
    }

    /// A cheap read that proves the file answers.
    pub async fn probe(&self, table: Table) -> Result<(), EmbeddedError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), EmbeddedError> {
            db.begin_read()
                .map_err(storage)?
                .open_table(table)
                .map_err(storage)?;
            Ok(())
        })
        .await?
    }
}

/// A write announced with [`EmbeddedDb::announce`]; dropping it withdraws the announcement.
#[derive(Debug)]
#[must_use = "the announcement lasts as long as the guard"]
pub struct Announced(Arc<Progress>);

impl Drop for Announced {
    fn drop(&mut self) {
        self.0
            .announced
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A queued write; [`PendingWrite::wait`] answers once it is committed (or failed).
#[derive(Debug)]
pub struct PendingWrite(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl PendingWrite {
    pub async fn wait(self) -> Result<(), EmbeddedError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(EmbeddedError::Commit { reason }),
            Err(_) => Err(EmbeddedError::Commit {
                reason: "the writer stopped before answering".into(),
            }),
        }
    }
}

/// Encodes records as rows named by `name`.
pub fn rows<T: serde::Serialize>(
    records: &[T],
    name: impl Fn(&T) -> String,
) -> Result<Vec<Row>, EmbeddedError> {
    records
        .iter()
        .map(|record| Ok((name(record), Some(serde_json::to_vec(record)?))))
        .collect()
}

/// Deletion rows for `names`.
pub fn deletions(names: &[String]) -> Vec<Row> {
    names.iter().map(|k| (k.clone(), None)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits_and_all_persist() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        {
            let db = Arc::new(EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap());
            let mut writes = tokio::task::JoinSet::new();
            for i in 0..200 {
                let db = db.clone();
                writes.spawn(async move {
                    let record = [serde_json::json!({"name": format!("r{i}"), "v": i})];
                    let commit = if i % 2 == 0 {
                        Commit::Durable
                    } else {
                        Commit::Lazy
                    };
                    db.write_with(vec![(T, rows(&record, name).unwrap())], commit)
                        .await
                });
            }
            while let Some(result) = writes.join_next().await {
                result.unwrap().unwrap();
            }
            // The last write is durable, so every lazy one before it is on disk too.
            db.write(vec![(
                T,
                rows(&[serde_json::json!({"name": "last"})], name).unwrap(),
            )])
            .await
            .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 201);
    }

    const T: Table = table("t");

    #[tokio::test]
    async fn a_settle_waits_for_the_writes_it_covers_and_fails_when_one_of_them_failed() {
        let progress = Arc::new(Progress::new());
        let mark = |settled, queued| WriteMark { settled, queued };
        // Nothing pending: at once.
        progress.settle(mark(0, 0)).await.unwrap();
        // Waits until write 3 settles.
        let waiting = tokio::spawn({
            let progress = progress.clone();
            async move { progress.settle(mark(0, 3)).await }
        });
        progress.record([1, 2].into_iter(), true);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "write 3 has not settled yet");
        progress.record([3].into_iter(), true);
        waiting.await.unwrap().unwrap();
        // Write 5 fails: a mark that read while it was pending fails, one taken after does not.
        progress.record([4].into_iter(), true);
        progress.record([5, 6].into_iter(), false);
        progress.record([7].into_iter(), true);
        assert!(progress.settle(mark(4, 7)).await.is_err());
        assert!(progress.settle(mark(3, 5)).await.is_err());
        progress.settle(mark(6, 7)).await.unwrap();
        progress.settle(mark(0, 4)).await.unwrap();
    }

    #[tokio::test]
    async fn lazy_writes_ride_with_the_next_durable_one_and_a_clean_close_flushes_them() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let row = |n: &str| rows(&[serde_json::json!({"name": n})], name).unwrap();
        {
            let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
            let lazy = db.enqueue(vec![(T, row("lazy"))], Commit::Lazy).unwrap();
            db.write(vec![(T, row("durable"))]).await.unwrap();
            // The durable commit took the lazy write along.
            lazy.wait().await.unwrap();
            // Never waited for: the close commits it.
            db.enqueue(vec![(T, row("left"))], Commit::Lazy).unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        let mut names: Vec<String> = db.read_all(T, name).unwrap().iter().map(name).collect();
        names.sort();
        assert_eq!(names, ["durable", "lazy", "left"]);
    }

    #[tokio::test]
    async fn a_failed_commit_of_writes_nobody_waits_for_is_reported_to_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let row = |n: &str| rows(&[serde_json::json!({"name": n})], name).unwrap();
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        let lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        db.on_unwaited_failure({
            let lost = lost.clone();
            move |writes, _reason| {
                lost.fetch_add(writes, std::sync::atomic::Ordering::SeqCst);
            }
        });
        // The durable write normally takes both lazy ones into its commit; on a stalled
        // machine they may commit alone first. Either way every commit here fails.
        db.fail_next_commits(2);
        db.enqueue_lazy(vec![(T, row("a"))]).unwrap();
        db.enqueue_lazy(vec![(T, row("b"))]).unwrap();
        assert!(db.write(vec![(T, row("c"))]).await.is_err());
        assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 2);
        db.fail_next_commits(0);
        db.write(vec![(T, row("d"))]).await.unwrap();
        let names: Vec<String> = db.read_records(T, name).unwrap().iter().map(name).collect();
        assert_eq!(names, ["d"]);
    }

    #[tokio::test]
    async fn an_announcement_ends_when_its_write_is_queued_and_never_holds_a_commit_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let row = |n: &str| rows(&[serde_json::json!({"name": n})], name).unwrap();
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        let announced = |db: &EmbeddedDb| db.progress.announced();

        let first = db.announce();
        let second = db.announce();
        assert_eq!(announced(&db), 2);
        let pending = db
            .enqueue_announced(vec![(T, row("a"))], Commit::Durable, Some(first))
            .unwrap();
        assert_eq!(announced(&db), 1, "queued: no longer announced");
        // `second` never writes: the commit waits for it a few milliseconds at most.
        pending.wait().await.unwrap();
        drop(second);
        assert_eq!(announced(&db), 0);
        db.write(vec![(T, row("b"))]).await.unwrap();
        assert_eq!(db.read_records(T, name).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn queued_writes_settle_in_order_and_a_mark_tells_where_the_queue_stands() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        let before = db.mark();
        let pending: Vec<PendingWrite> = (0..50)
            .map(|i| {
                let record = [serde_json::json!({"name": format!("r{i}")})];
                db.enqueue(vec![(T, rows(&record, name).unwrap())], Commit::Durable)
                    .unwrap()
            })
            .collect();
        let queued = db.mark();
        assert_eq!(queued.queued, before.queued + 50);
        db.settle(before.covering(queued)).await.unwrap();
        assert!(db.mark().settled >= queued.queued);
        for write in pending {
            write.wait().await.unwrap();
        }
        assert_eq!(db.read_records(T, name).unwrap().len(), 50);
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_updates_and_deletes_find_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        {
            let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
            assert!(db.read_all(T, name).unwrap().is_empty());
            let records = [
                serde_json::json!({"name": "b", "v": 1}),
                serde_json::json!({"name": "a", "v": 1}),
            ];
            db.write(vec![(T, rows(&records, name).unwrap())])
                .await
                .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x.redb", &[T]).unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 2);
        let updated = [
            serde_json::json!({"name": "b", "v": 2}),
            serde_json::json!({"name": "c", "v": 1}),
        ];
        db.write(vec![(T, rows(&updated, name).unwrap())])
            .await
            .unwrap();
        db.write(vec![(T, deletions(&["a".to_owned()]))])
            .await
            .unwrap();
        let mut names: Vec<(String, i64)> = db
            .read_all(T, name)
            .unwrap()
            .iter()
            .map(|v| (name(v), v["v"].as_i64().unwrap()))
            .collect();
        names.sort();
        assert_eq!(names, [("b".to_owned(), 2), ("c".to_owned(), 1)]);
    }
}
