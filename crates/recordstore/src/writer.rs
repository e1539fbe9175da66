//! The writer thread: every write of one log goes through it, in queue order, in shared commits.
//!
//! Concurrent writes are grouped into one frame (group commit); see [`writer_loop`] for when a
//! group commits and how durably.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::LogFile;
use crate::{CommitError, Durability, EmbeddedError, Row, Table, Value, WriteMark};

/// One caller's write, handed to the writer thread.
pub(crate) struct WriteRequest {
    /// Its place in the order writes were queued (the first is 1).
    pub(crate) seq: u64,
    pub(crate) batches: Vec<(Table, Vec<Row>)>,
    pub(crate) durability: Durability,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<(), CommitError>>,
    /// Whether nobody waits for the write (see `unwaited_failure`); read once its answer is
    /// closed.
    pub(crate) detached: Arc<AtomicBool>,
}

/// Most writes one frame takes.
const MAX_GROUP: usize = 512;

/// How far the writer has got: the last write settled (committed or failed) and the writes that
/// failed, so a reader of queued state can tell whether what it read reached the disk.
pub(crate) struct Progress {
    pub(crate) settled: tokio::sync::watch::Sender<u64>,
    /// Sequence numbers of failed writes, newest last (the last `FAILURES_KEPT`).
    failed: Mutex<VecDeque<u64>>,
    /// Commits still to fail on purpose (tests of failure handling).
    pub(crate) faults: std::sync::atomic::AtomicUsize,
    /// Told when writes nobody waits for were not committed.
    pub(crate) unwaited_failure: std::sync::OnceLock<UnwaitedFailure>,
    /// Writes callers have announced and not yet queued.
    pub(crate) announced: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("settled", &*self.settled.borrow())
            .finish_non_exhaustive()
    }
}

/// A hook for failed writes nobody waits for: how many, and why.
pub(crate) type UnwaitedFailure = Box<dyn Fn(usize, &CommitError) + Send + Sync>;

/// Failed writes remembered for [`EmbeddedDb::settle`].
const FAILURES_KEPT: usize = 4096;

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            settled: tokio::sync::watch::Sender::new(0),
            failed: Mutex::new(VecDeque::new()),
            faults: std::sync::atomic::AtomicUsize::new(0),
            unwaited_failure: std::sync::OnceLock::new(),
            announced: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(crate) fn announced(&self) -> usize {
        self.announced.load(Ordering::SeqCst)
    }

    /// Whether this commit is to fail on purpose.
    fn take_fault(&self) -> bool {
        self.faults
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub(crate) async fn settle(&self, mark: WriteMark) -> Result<(), EmbeddedError> {
        let mut settled = self.settled.subscribe();
        if settled.wait_for(|s| *s >= mark.queued).await.is_err() {
            return Err(CommitError::Unsettled { write: mark.queued }.into());
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|seq| **seq > mark.settled && **seq <= mark.queued)
            .copied();
        if let Some(write) = failed {
            return Err(CommitError::DependencyFailed { write }.into());
        }
        Ok(())
    }

    /// Records a group of writes (sequence numbers in order) as settled.
    pub(crate) fn record(&self, seqs: impl Iterator<Item = u64> + Clone, ok: bool) {
        if !ok {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            for seq in seqs.clone() {
                if failed.len() == FAILURES_KEPT {
                    failed.pop_front();
                }
                failed.push_back(seq);
            }
        }
        if let Some(last) = seqs.last() {
            self.settled.send_replace(last);
        }
    }
}

/// How long a lazy write may wait for a durable one to share its commit.
const LAZY_DELAY: Duration = Duration::from_millis(20);

/// Longest a durable group waits for announced writes (see [`crate::EmbeddedDb::announce`]).
const COMMIT_DELAY: Duration = Duration::from_millis(5);
/// How often a waiting writer looks again whether announced writes are still coming.
const ANNOUNCED_POLL: Duration = Duration::from_micros(100);

/// The writer thread: takes every write waiting and appends them all as one frame, so
/// concurrent writers share one commit. A group with a durable write commits durably: at once
/// when no other write is announced, else once the announced writes have joined it (at most
/// [`COMMIT_DELAY`] later).
/// Lazy writes wait (up to [`LAZY_DELAY`]) to ride along with the next durable one, then commit
/// without a sync. When the queue closes, whatever is left is committed durably. Compaction runs
/// here too, between commits.
pub(crate) fn writer_loop(
    log: Arc<Mutex<LogFile>>,
    requests: std::sync::mpsc::Receiver<WriteRequest>,
    progress: Arc<Progress>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut writer = Writer {
        log,
        progress,
        group: Vec::new(),
        lazy_since: None,
        unflushed: false,
    };
    loop {
        let next = match writer.lazy_since {
            None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => requests.recv_timeout(LAZY_DELAY.saturating_sub(since.elapsed())),
        };
        let closing = match next {
            Ok(request) => {
                writer.group.push(request);
                writer.gather(&requests);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let durable = closing
            || writer
                .group
                .iter()
                .any(|r| r.durability == Durability::Durable);
        if durable && !closing {
            writer.gather_announced(&requests, Instant::now() + COMMIT_DELAY);
        }
        let lazy_due = writer
            .lazy_since
            .is_some_and(|since| since.elapsed() >= LAZY_DELAY);
        if durable || lazy_due || writer.group.len() >= MAX_GROUP {
            writer.commit(durable, closing);
        } else {
            writer.lazy_since.get_or_insert_with(Instant::now);
        }
        if closing {
            // A compaction under way is finished, so none is left half done.
            writer
                .log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finish_compaction();
            return;
        }
    }
}

/// The writer thread's state between commits.
struct Writer {
    log: Arc<Mutex<LogFile>>,
    progress: Arc<Progress>,
    /// Writes taken and not yet committed, in queue order.
    group: Vec<WriteRequest>,
    /// When the oldest lazy write of `group` arrived.
    lazy_since: Option<Instant>,
    /// Whether a commit without a sync happened since the last durable one.
    unflushed: bool,
}

impl Writer {
    /// Takes writes already waiting into the group.
    fn gather(&mut self, requests: &std::sync::mpsc::Receiver<WriteRequest>) {
        while self.group.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(request) => self.group.push(request),
                Err(_) => break,
            }
        }
    }

    /// Takes writes into the group while others are announced, until `until`.
    fn gather_announced(
        &mut self,
        requests: &std::sync::mpsc::Receiver<WriteRequest>,
        until: Instant,
    ) {
        self.gather(requests);
        while self.group.len() < MAX_GROUP && self.progress.announced() > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(request) = requests.recv_timeout(left.min(ANNOUNCED_POLL)) {
                self.group.push(request);
                self.gather(requests);
            }
        }
    }

    /// Commits the group (durably if asked; on closing, also flushes earlier lazy commits) and
    /// answers each of its writers.
    fn commit(&mut self, durable: bool, closing: bool) {
        self.lazy_since = None;
        if self.group.is_empty() && !(closing && self.unflushed) {
            return;
        }
        let result = if self.progress.take_fault() {
            Err(CommitError::InjectedFault)
        } else {
            self.append_group(durable)
        };
        if result.is_ok() {
            self.unflushed = !durable;
        }
        self.progress
            .record(self.group.iter().map(|r| r.seq), result.is_ok());
        let mut unwaited = 0;
        for request in self.group.drain(..) {
            // A detached write's answer is closed (see `PendingWrite::detach`).
            if request.reply.send(result.clone()).is_err()
                && request.detached.load(Ordering::SeqCst)
            {
                unwaited += 1;
            }
        }
        if let (Err(error), Some(hook)) = (&result, self.progress.unwaited_failure.get())
            && unwaited > 0
        {
            hook(unwaited, error);
        }
    }

    /// Appends the group's rows as one frame, then compacts the log if it is due.
    fn append_group(&self, durable: bool) -> Result<(), CommitError> {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let rows = self.group.iter().flat_map(|request| {
            request.batches.iter().flat_map(|(table, rows)| {
                rows.iter().map(|(name, value)| {
                    (
                        table.name(),
                        name.as_str(),
                        value.as_ref().map(Value::value_ref),
                    )
                })
            })
        });
        log.append(rows, durable)
            .map_err(|e| CommitError::Log(Arc::new(e)))?;
        log.maintain();
        Ok(())
    }
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}
