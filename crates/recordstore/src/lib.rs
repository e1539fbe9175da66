//! Durable tables of records, kept in one append-only log of checksummed binary frames per store.
//!
//! A record is a name and bytes; each store picks how its records become bytes ([`Encode`], read
//! back by the decoder it gives [`EmbeddedDb::read_all_with`]; [`encode_json`], [`rows`] and
//! [`EmbeddedDb::read_all`] are there for stores that keep JSON). Every record lives in the
//! caller's memory; the log is read once, when the store opens. One writer thread per file
//! appends writes in the order they were queued, several to a frame (see `writer`), and the log
//! is rewritten to its live records when it has grown to twice their size (see `log`). There is
//! one way to write: [`EmbeddedDb::write`] queues a [`Write`], [`EmbeddedDb::commit`] also waits
//! for it. A redb file left by an earlier version is imported on first open (see `legacy`).

use foldhash::{HashMap, HashSet};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod legacy;
mod log;
mod writer;
pub use log::{LogError, Poison};
use log::{LogFile, TableScan};
use writer::{Progress, WriteRequest, writer_loop};

/// A table of records, named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    name: &'static str,
}

impl Table {
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// Names a table (at most 255 bytes).
pub const fn table(name: &'static str) -> Table {
    assert!(name.len() <= 255, "table names are at most 255 bytes");
    Table { name }
}

/// A record's name and its new value; `None` deletes it.
pub type Row = (String, Option<Value>);

/// A record's new value: its bytes, or the record itself, which the writer thread encodes (off
/// the caller's path) when it writes the commit.
#[derive(Clone)]
pub enum Value {
    Bytes(Vec<u8>),
    Record(Arc<dyn Encode>),
}

impl Value {
    pub(crate) fn value_ref(&self) -> log::ValueRef<'_> {
        match self {
            Value::Bytes(bytes) => log::ValueRef::Bytes(bytes),
            Value::Record(record) => log::ValueRef::Record(record.as_ref()),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Value::Record(_) => f.write_str("Record(..)"),
        }
    }
}

/// Why a record could not be encoded or decoded.
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// A record the writer thread can encode. A store picks its records' encoding; JSON
/// ([`encode_json`]) is what [`EmbeddedDb::read_all`] reads back.
pub trait Encode: Send + Sync {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
}

/// Appends the JSON of `record` to `out`.
pub fn encode_json<T: serde::Serialize>(record: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    Ok(serde_json::to_writer(out, record)?)
}

/// Why embedded storage failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("the record log failed")]
    Log(#[from] LogError),
    #[error("the earlier version's database {path} could not be imported")]
    Legacy {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("a stored record could not be encoded or decoded")]
    Codec(#[source] CodecError),
    #[error("the write was not committed")]
    Commit(#[from] CommitError),
}

/// Why a write was not committed (or a write state depends on may not have been).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("an earlier version's file is still being imported: read every table first")]
    Importing,
    #[error("the writer has stopped")]
    WriterStopped,
    #[error("the writer stopped before answering")]
    Unanswered,
    #[error("the writer stopped before write {write} settled")]
    Unsettled { write: u64 },
    #[error("write {write}, which this depends on, was not committed")]
    DependencyFailed { write: u64 },
    #[error("injected fault: the commit failed")]
    InjectedFault,
    /// The log refused the commit's frame; shared by every write of the commit.
    #[error(transparent)]
    Log(Arc<LogError>),
}

impl From<serde_json::Error> for EmbeddedError {
    fn from(error: serde_json::Error) -> EmbeddedError {
        EmbeddedError::Codec(Box::new(error))
    }
}

/// How a write reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk when the write's commit is answered.
    Durable,
    /// Written with the next durable write (or within a few milliseconds without a sync), and
    /// on disk with the next durable write or a clean close; lost in a machine crash before
    /// that. For records that can be derived again.
    Lazy,
}

/// One write: batches of rows committed atomically, how durably, and the announcement (see
/// [`EmbeddedDb::announce`]) it fulfils. Queue it with [`EmbeddedDb::write`].
#[derive(Debug)]
#[must_use = "a write does nothing until it is queued"]
pub struct Write {
    batches: Vec<(Table, Vec<Row>)>,
    durability: Durability,
    announced: Option<Announced>,
    /// Queued even without rows.
    sync: bool,
}

impl Write {
    /// A durable write of every batch.
    pub fn new(batches: Vec<(Table, Vec<Row>)>) -> Write {
        Write {
            batches,
            durability: Durability::Durable,
            announced: None,
            sync: false,
        }
    }

    /// A durable write of nothing, queued all the same: once it commits, every write queued
    /// before it is on disk (it shares its commit with whatever other writes are waiting).
    pub fn sync() -> Write {
        Write {
            sync: true,
            ..Write::new(Vec::new())
        }
    }

    pub fn durability(self, durability: Durability) -> Write {
        Write { durability, ..self }
    }

    /// The write `announced` announced: the announcement ends as the write reaches the writer,
    /// so the writer never waits for a write it holds.
    pub fn announced(self, announced: Announced) -> Write {
        Write {
            announced: Some(announced),
            ..self
        }
    }
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

/// What opening read, handed out table by table (see [`EmbeddedDb::read_all`]).
#[derive(Debug, Default)]
struct Loaded {
    tables: HashMap<String, TableScan>,
    /// Tables already handed out: reading one again scans the file.
    taken: HashSet<&'static str>,
}

/// A log file of record tables, written by one thread that groups concurrent writes into shared
/// frames.
#[derive(Debug)]
pub struct EmbeddedDb {
    path: PathBuf,
    log: Arc<Mutex<LogFile>>,
    loaded: Mutex<Loaded>,
    /// A redb file of an earlier version, being imported table by table.
    legacy: Mutex<Option<legacy::Import>>,
    /// The last write queued, decided under this lock together with sending it.
    queued: Mutex<u64>,
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/{stem}.log` holding `tables`. While `dir/{stem}.redb` (an
    /// earlier version's file, renamed once imported) exists, the log starts empty and the old
    /// file's tables are imported as [`EmbeddedDb::read_all`] reads them; no write is accepted
    /// until every table was read.
    pub fn open(dir: &Path, stem: &str, tables: &[Table]) -> Result<EmbeddedDb, EmbeddedError> {
        let path = dir.join(format!("{stem}.log"));
        std::fs::create_dir_all(dir).map_err(|source| LogError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let import = legacy::Import::find(&dir.join(format!("{stem}.redb")), &path, tables)?;
        let (log, scan) = LogFile::open(&path)?;
        let log = Arc::new(Mutex::new(log));
        let (sender, requests) = std::sync::mpsc::channel();
        let progress = Arc::new(Progress::new());
        let thread = std::thread::Builder::new()
            .name(format!("recordstore-{stem}"))
            .spawn({
                let log = log.clone();
                let progress = progress.clone();
                move || writer_loop(log, requests, progress)
            })
            .map_err(|source| LogError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(EmbeddedDb {
            path,
            log,
            loaded: Mutex::new(Loaded {
                tables: scan.tables,
                taken: HashSet::default(),
            }),
            legacy: Mutex::new(import),
            queued: Mutex::new(0),
            progress,
            writer: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(thread)),
        })
    }

    /// Every record of a table as on disk, decoded, oldest first. Before any write, the first
    /// read of each table comes from what opening read; any other read (recovery after a failed
    /// write) scans the file again, and sees queued writes only once they are written. `name`
    /// tells each record's name, for records imported from an earlier version.
    pub fn read_all<T: DeserializeOwned>(
        &self,
        table: Table,
        name: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, EmbeddedError> {
        self.read_all_with(table, |bytes| Ok(serde_json::from_slice(bytes)?), name)
    }

    /// [`EmbeddedDb::read_all`] for records in the store's own encoding, read by `decode`
    /// (which must also read JSON, the encoding of imported records).
    pub fn read_all_with<T>(
        &self,
        table: Table,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
        name: impl Fn(&T) -> String,
    ) -> Result<Vec<T>, EmbeddedError> {
        if let Some(records) = self.import(table, &decode, name)? {
            return Ok(records);
        }
        let scanned = {
            let mut loaded = lock(&self.loaded);
            if *lock(&self.queued) == 0 && loaded.taken.insert(table.name) {
                Some(loaded.tables.remove(table.name).unwrap_or_default())
            } else {
                None
            }
        };
        let scanned = match scanned {
            Some(scanned) => scanned,
            None => log::scan(&self.path)?
                .tables
                .remove(table.name)
                .unwrap_or_default(),
        };
        scanned
            .into_records()
            .map(|(_, value)| decode(&value).map_err(EmbeddedError::Codec))
            .collect()
    }

    /// Imports `table` from the earlier version's file, if one is being imported: decodes its
    /// records, appends them durably under their names, and retires the old file once every
    /// table is in.
    fn import<T>(
        &self,
        table: Table,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
        name: impl Fn(&T) -> String,
    ) -> Result<Option<Vec<T>>, EmbeddedError> {
        let mut legacy = lock(&self.legacy);
        let Some(import) = legacy.as_mut() else {
            return Ok(None);
        };
        let Some(values) = import.take(table) else {
            return Ok(None);
        };
        let mut records = Vec::with_capacity(values.len());
        let mut rows = Vec::with_capacity(values.len());
        for value in values {
            let record = decode(&value).map_err(EmbeddedError::Codec)?;
            rows.push((name(&record), value));
            records.push(record);
        }
        lock(&self.log).append(
            rows.iter().map(|(name, value)| {
                (table.name, name.as_str(), Some(log::ValueRef::Bytes(value)))
            }),
            true,
        )?;
        lock(&self.loaded).taken.insert(table.name);
        if import.is_done() {
            legacy.take().expect("import in progress").retire()?;
        }
        Ok(Some(records))
    }

    /// Queues `write`: writes commit in the order they are queued, so a caller can publish what
    /// it wrote before the commit and wait for it later (several callers then share one
    /// commit). A write without rows is answered at once and queues nothing, except
    /// [`Write::sync`]. Fails at once, queuing nothing, while an earlier version's file is
    /// being imported or after the writer stopped.
    pub fn write(&self, write: Write) -> Result<PendingWrite, EmbeddedError> {
        if !write.sync && write.batches.iter().all(|(_, rows)| rows.is_empty()) {
            return Ok(PendingWrite::done(self.progress.clone()));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let detached = Arc::new(AtomicBool::new(false));
        self.queue(write, reply, detached.clone())?;
        Ok(PendingWrite {
            answer,
            detached,
            progress: self.progress.clone(),
        })
    }

    /// [`EmbeddedDb::write`], then waits for the write's commit.
    pub async fn commit(&self, write: Write) -> Result<(), EmbeddedError> {
        self.write(write)?.wait().await
    }

    /// Called with the number of writes lost and why, when a commit holding writes
    /// nobody waits for ([`PendingWrite::detach`]) fails: from the writer thread, or from
    /// `detach` itself when the commit had failed already. Set once; later calls are ignored.
    pub fn on_unwaited_failure(&self, hook: impl Fn(usize, &CommitError) + Send + Sync + 'static) {
        let _ = self.progress.unwaited_failure.set(Box::new(hook));
    }

    fn queue(
        &self,
        write: Write,
        reply: tokio::sync::oneshot::Sender<Result<(), CommitError>>,
        detached: Arc<AtomicBool>,
    ) -> Result<(), EmbeddedError> {
        if lock(&self.legacy).is_some() {
            return Err(CommitError::Importing.into());
        }
        let Write {
            batches,
            durability,
            announced,
            sync: _,
        } = write;
        // The sequence number is decided and the write sent under one lock, so the writer
        // applies writes in sequence order.
        let mut queued = lock(&self.queued);
        let seq = *queued + 1;
        let writer = lock(&self.writer);
        drop(announced);
        let sent = writer.as_ref().is_some_and(|sender| {
            sender
                .send(WriteRequest {
                    seq,
                    batches,
                    durability,
                    reply,
                    detached,
                })
                .is_ok()
        });
        if !sent {
            return Err(CommitError::WriterStopped.into());
        }
        *queued = seq;
        Ok(())
    }
    /// Announces a write this caller is about to queue: while announced writes are coming, a
    /// durable commit waits for them (up to a few milliseconds) so that they share it. Drop the
    /// guard once the write is queued, or when it turns out there is none.
    pub fn announce(&self) -> Announced {
        self.progress.announced.fetch_add(1, Ordering::SeqCst);
        Announced(self.progress.clone())
    }

    /// Makes the next `commits` commits fail as a disk error would, writing nothing: for tests
    /// of what callers do when storage fails.
    #[cfg(any(test, feature = "faults"))]
    pub fn fail_next_commits(&self, commits: usize) {
        self.progress.faults.store(commits, Ordering::SeqCst);
    }

    /// Where the write queue stands now.
    pub fn mark(&self) -> WriteMark {
        // Settled is read first: it never passes queued.
        let settled = *self.progress.settled.borrow();
        WriteMark {
            settled,
            queued: *lock(&self.queued),
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

    /// Proves the log is writable: it has not failed a sync, and its file is still there.
    pub fn probe(&self) -> Result<(), EmbeddedError> {
        lock(&self.log).check()?;
        Ok(())
    }
}

/// A write announced with [`EmbeddedDb::announce`]; dropping it withdraws the announcement.
#[derive(Debug)]
#[must_use = "the announcement lasts as long as the guard"]
pub struct Announced(Arc<Progress>);

impl Drop for Announced {
    fn drop(&mut self) {
        self.0.announced.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queued write: [`PendingWrite::wait`] for its commit, or [`PendingWrite::detach`] it.
/// Dropping it leaves the write to commit, its outcome unheard.
#[derive(Debug)]
pub struct PendingWrite {
    answer: tokio::sync::oneshot::Receiver<Result<(), CommitError>>,
    /// Set by `detach`, read by the writer when the receiver is gone.
    detached: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

impl PendingWrite {
    /// A write with nothing to commit, answered already.
    fn done(progress: Arc<Progress>) -> PendingWrite {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let _ = reply.send(Ok(()));
        PendingWrite {
            answer,
            detached: Arc::new(AtomicBool::new(false)),
            progress,
        }
    }

    /// Answers once the write is committed (or failed).
    pub async fn wait(self) -> Result<(), EmbeddedError> {
        match self.answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(CommitError::Unanswered.into()),
        }
    }

    /// Nobody will wait for this write: if its commit fails, the hook set with
    /// [`EmbeddedDb::on_unwaited_failure`] hears of it. For records whose loss is recoverable
    /// by design.
    pub fn detach(mut self) {
        // Flagged before the answer is closed: the writer either finds the answer closed and
        // the flag set (and tells the hook), or has answered already (and this tells it).
        self.detached.store(true, Ordering::SeqCst);
        self.answer.close();
        if let (Ok(Err(error)), Some(hook)) =
            (self.answer.try_recv(), self.progress.unwaited_failure.get())
        {
            hook(1, &error);
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
        .map(|record| {
            Ok((
                name(record),
                Some(Value::Bytes(serde_json::to_vec(record)?)),
            ))
        })
        .collect()
}

/// Rows of shared records named by `name`, encoded by the writer thread.
pub fn shared_rows<T: Encode + 'static>(
    records: &[Arc<T>],
    name: impl Fn(&T) -> String,
) -> Vec<Row> {
    records
        .iter()
        .map(|record| (name(record), Some(Value::Record(record.clone()))))
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
            let db = Arc::new(EmbeddedDb::open(dir.path(), "x", &[T]).unwrap());
            let mut writes = tokio::task::JoinSet::new();
            for i in 0..200 {
                let db = db.clone();
                writes.spawn(async move {
                    let record = [serde_json::json!({"name": format!("r{i}"), "v": i})];
                    let durability = if i % 2 == 0 {
                        Durability::Durable
                    } else {
                        Durability::Lazy
                    };
                    let write =
                        Write::new(vec![(T, rows(&record, name).unwrap())]).durability(durability);
                    db.commit(write).await
                });
            }
            while let Some(result) = writes.join_next().await {
                result.unwrap().unwrap();
            }
            // The last write is durable, so every lazy one before it is on disk too.
            db.commit(Write::new(vec![(
                T,
                rows(&[serde_json::json!({"name": "last"})], name).unwrap(),
            )]))
            .await
            .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 201);
    }

    const T: Table = table("t");

    /// A record in an encoding of its own: `name=count`.
    #[derive(Debug, PartialEq)]
    struct Counted {
        name: String,
        count: u32,
    }

    impl Encode for Counted {
        fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
            out.extend_from_slice(format!("{}={}", self.name, self.count).as_bytes());
            Ok(())
        }
    }

    fn decode_counted(bytes: &[u8]) -> Result<Counted, CodecError> {
        let text = std::str::from_utf8(bytes)?;
        let (name, count) = text.split_once('=').ok_or("no '='")?;
        Ok(Counted {
            name: name.to_owned(),
            count: count.parse()?,
        })
    }

    #[tokio::test]
    async fn shared_records_are_encoded_by_the_writer_and_read_back_by_their_decoder() {
        let dir = tempfile::tempdir().unwrap();
        let name = |c: &Counted| c.name.clone();
        let records: Vec<Arc<Counted>> = (0..3)
            .map(|i| {
                Arc::new(Counted {
                    name: format!("s{i}"),
                    count: i,
                })
            })
            .collect();
        {
            let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
            db.commit(Write::new(vec![(T, shared_rows(&records, name))]))
                .await
                .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        let read = db.read_all_with(T, decode_counted, name).unwrap();
        let written: Vec<&Counted> = records.iter().map(|r| r.as_ref()).collect();
        assert_eq!(read.iter().collect::<Vec<_>>(), written);
        // A record the decoder refuses is an error, not a record lost in silence.
        drop(db);
        {
            let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
            let bad = vec![("s9".to_owned(), Some(Value::Bytes(b"s9=many".to_vec())))];
            db.commit(Write::new(vec![(T, bad)])).await.unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        assert!(matches!(
            db.read_all_with(T, decode_counted, name),
            Err(EmbeddedError::Codec(_))
        ));
    }

    #[tokio::test]
    async fn an_earlier_versions_redb_file_is_imported_once_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        const U: Table = table("u");
        {
            // The earlier layout: JSON values under increasing u64 keys.
            let old = redb::Database::create(dir.path().join("x.redb")).unwrap();
            let write = old.begin_write().unwrap();
            {
                let mut t = write
                    .open_table(redb::TableDefinition::<u64, &[u8]>::new("t"))
                    .unwrap();
                t.insert(0, br#"{"name":"b","v":1}"#.as_slice()).unwrap();
                t.insert(1, br#"{"name":"a","v":2}"#.as_slice()).unwrap();
            }
            write.commit().unwrap();
        }
        {
            let db = EmbeddedDb::open(dir.path(), "x", &[T, U]).unwrap();
            let refused = db.commit(Write::new(vec![(
                T,
                rows(&[serde_json::json!({"name": "c"})], name).unwrap(),
            )]));
            assert!(
                refused.await.is_err(),
                "no write before every table is imported"
            );
            let imported: Vec<String> = db.read_all(T, name).unwrap().iter().map(name).collect();
            assert_eq!(imported, ["b", "a"]);
            assert!(db.read_all(U, name).unwrap().is_empty());
            db.commit(Write::new(vec![(T, deletions(&["b".to_owned()]))]))
                .await
                .unwrap();
        }
        assert!(!dir.path().join("x.redb").exists());
        assert!(dir.path().join("x.redb.imported").exists());
        let db = EmbeddedDb::open(dir.path(), "x", &[T, U]).unwrap();
        let names: Vec<String> = db.read_all(T, name).unwrap().iter().map(name).collect();
        assert_eq!(
            names,
            ["a"],
            "the import and the delete after it are in the log"
        );
    }

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
            let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
            let lazy = db
                .write(Write::new(vec![(T, row("lazy"))]).durability(Durability::Lazy))
                .unwrap();
            db.commit(Write::new(vec![(T, row("durable"))]))
                .await
                .unwrap();
            // The durable commit took the lazy write along.
            lazy.wait().await.unwrap();
            // Never waited for: the close commits it.
            drop(
                db.write(Write::new(vec![(T, row("left"))]).durability(Durability::Lazy))
                    .unwrap(),
            );
        }
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        let mut names: Vec<String> = db.read_all(T, name).unwrap().iter().map(name).collect();
        names.sort();
        assert_eq!(names, ["durable", "lazy", "left"]);
    }

    #[tokio::test]
    async fn a_failed_commit_of_writes_nobody_waits_for_is_reported_to_the_hook() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let row = |n: &str| rows(&[serde_json::json!({"name": n})], name).unwrap();
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        let lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        db.on_unwaited_failure({
            let lost = lost.clone();
            move |writes, _error| {
                lost.fetch_add(writes, Ordering::SeqCst);
            }
        });
        // The durable write normally takes both lazy ones into its commit; on a stalled
        // machine they may commit alone first. Either way every commit here fails.
        db.fail_next_commits(2);
        let lazy = |n: &str| Write::new(vec![(T, row(n))]).durability(Durability::Lazy);
        db.write(lazy("a")).unwrap().detach();
        db.write(lazy("b")).unwrap().detach();
        assert!(db.commit(Write::new(vec![(T, row("c"))])).await.is_err());
        assert_eq!(lost.load(Ordering::SeqCst), 2);
        db.fail_next_commits(0);
        db.commit(Write::new(vec![(T, row("d"))])).await.unwrap();
        let names: Vec<String> = db.read_all(T, name).unwrap().iter().map(name).collect();
        assert_eq!(names, ["d"]);
    }

    #[tokio::test]
    async fn an_announcement_ends_when_its_write_is_queued_and_never_holds_a_commit_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let row = |n: &str| rows(&[serde_json::json!({"name": n})], name).unwrap();
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        let announced = |db: &EmbeddedDb| db.progress.announced();

        let first = db.announce();
        let second = db.announce();
        assert_eq!(announced(&db), 2);
        let pending = db
            .write(Write::new(vec![(T, row("a"))]).announced(first))
            .unwrap();
        assert_eq!(announced(&db), 1, "queued: no longer announced");
        // `second` never writes: the commit waits for it a few milliseconds at most.
        pending.wait().await.unwrap();
        drop(second);
        assert_eq!(announced(&db), 0);
        db.commit(Write::new(vec![(T, row("b"))])).await.unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn queued_writes_settle_in_order_and_a_mark_tells_where_the_queue_stands() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        let before = db.mark();
        let pending: Vec<PendingWrite> = (0..50)
            .map(|i| {
                let record = [serde_json::json!({"name": format!("r{i}")})];
                db.write(Write::new(vec![(T, rows(&record, name).unwrap())]))
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
        assert_eq!(db.read_all(T, name).unwrap().len(), 50);
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_updates_and_deletes_find_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let name = |v: &serde_json::Value| v["name"].as_str().unwrap().to_owned();
        {
            let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
            assert!(db.read_all(T, name).unwrap().is_empty());
            let records = [
                serde_json::json!({"name": "b", "v": 1}),
                serde_json::json!({"name": "a", "v": 1}),
            ];
            db.commit(Write::new(vec![(T, rows(&records, name).unwrap())]))
                .await
                .unwrap();
        }
        let db = EmbeddedDb::open(dir.path(), "x", &[T]).unwrap();
        assert_eq!(db.read_all(T, name).unwrap().len(), 2);
        let updated = [
            serde_json::json!({"name": "b", "v": 2}),
            serde_json::json!({"name": "c", "v": 1}),
        ];
        db.commit(Write::new(vec![(T, rows(&updated, name).unwrap())]))
            .await
            .unwrap();
        db.commit(Write::new(vec![(T, deletions(&["a".to_owned()]))]))
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
