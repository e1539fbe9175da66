//! Backfill: one job per (stream, interval) fetches history before live data flows, with
//! retries; rows out of order or repeating a timestamp are counted and skipped.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::SdkMetrics;
use crate::source::{HistoryProvider, HistoryRequest};
use crate::value::Value;

/// How backfill jobs retry.
#[derive(Debug, Clone, Copy)]
pub struct BackfillPolicy {
    /// Retries after the first attempt, for retryable errors.
    pub retries: u32,
    /// Wait before the first retry; doubles each time.
    pub backoff: Duration,
}

/// How one job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillOutcome {
    Completed { rows: usize, skipped: usize },
    Failed { reason: String },
}

/// One job's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    pub node_id: String,
    pub interval: i64,
    pub start: i64,
    pub end: i64,
    pub outcome: BackfillOutcome,
}

pub(crate) struct BackfillJob {
    pub(crate) node: usize,
    pub(crate) node_id: String,
    pub(crate) interval: i64,
    pub(crate) bars: i64,
    /// The first live bar's bucket: history ends before it.
    pub(crate) end: i64,
    pub(crate) provider: Arc<dyn HistoryProvider>,
}

/// Runs every job at once; the rows of all of them, in timestamp order, tagged with their node.
pub(crate) async fn run_jobs(
    jobs: Vec<BackfillJob>,
    policy: BackfillPolicy,
    metrics: &SdkMetrics,
) -> (Vec<(i64, usize, Value)>, Vec<BackfillReport>) {
    let runs = jobs.into_iter().map(|job| run_job(job, policy, metrics));
    let results = futures_util::future::join_all(runs).await;
    let mut rows = Vec::new();
    let mut reports = Vec::new();
    for (job_rows, report) in results {
        rows.extend(job_rows);
        reports.push(report);
    }
    rows.sort_by_key(|(at, node, _)| (*at, *node));
    (rows, reports)
}

/// Keeps `backfill_jobs_in_progress` true even when a job is dropped half-way.
struct InProgress<'a>(&'a SdkMetrics);

impl<'a> InProgress<'a> {
    fn start(metrics: &'a SdkMetrics) -> InProgress<'a> {
        metrics.backfill_jobs_in_progress.increment(1.0);
        InProgress(metrics)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.backfill_jobs_in_progress.decrement(1.0);
    }
}

async fn run_job(
    job: BackfillJob,
    policy: BackfillPolicy,
    metrics: &SdkMetrics,
) -> (Vec<(i64, usize, Value)>, BackfillReport) {
    let series = metrics.backfill(&job.node_id, job.interval);
    let end = job.end;
    let span = job.bars.checked_mul(job.interval).unwrap_or(i64::MAX);
    let request = HistoryRequest {
        node_id: job.node_id.clone(),
        interval: job.interval,
        start: end.saturating_sub(span),
        end,
    };
    let report = |outcome| BackfillReport {
        node_id: job.node_id.clone(),
        interval: job.interval,
        start: request.start,
        end,
        outcome,
    };
    let in_progress = InProgress::start(metrics);
    let mut attempt = 0u32;
    let fetched = loop {
        match job.provider.fetch(&request).await {
            Ok(rows) => break Ok(rows),
            Err(error) if error.is_retryable() && attempt < policy.retries => {
                series.retries.increment(1);
                let wait = policy.backoff.saturating_mul(1 << attempt.min(16));
                tracing::info!(node_id = %job.node_id, attempt = attempt + 1, %error, "Backfill fetch failed; retrying.");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(error) => break Err(error),
        }
    };
    drop(in_progress);
    let rows = match fetched {
        Ok(rows) => rows,
        Err(error) => {
            series.failures.increment(1);
            tracing::warn!(node_id = %job.node_id, interval = job.interval, %error, "Backfill failed; the node starts on live data only.");
            return (
                Vec::new(),
                report(BackfillOutcome::Failed {
                    reason: error.to_string(),
                }),
            );
        }
    };
    let mut kept: Vec<(i64, usize, Value)> = Vec::with_capacity(rows.len());
    let mut skipped = 0;
    let mut gaps = 0usize;
    for (at, value) in rows {
        if let Some((last, _, _)) = kept.last()
            && at > *last + job.interval
        {
            gaps += 1;
        }
        match kept.last() {
            Some((last, _, _)) if at < *last => series.out_of_order.increment(1),
            Some((last, _, _)) if at == *last => series.duplicate.increment(1),
            _ => {
                kept.push((at, job.node, value));
                continue;
            }
        }
        skipped += 1;
    }
    if skipped > 0 {
        tracing::warn!(node_id = %job.node_id, skipped, "History rows out of order or repeated were skipped.");
    }
    if gaps > 0 {
        tracing::warn!(node_id = %job.node_id, interval = job.interval, gaps, "History has gaps: bars are missing between some rows.");
    }
    if let Some((last, _, _)) = kept.last() {
        series.last_timestamp.set(*last as f64);
    }
    series.completed.increment(1);
    let rows = kept.len();
    (kept, report(BackfillOutcome::Completed { rows, skipped }))
}
