//! Garbage collection of orphan queues: queues no compute node owns are dropped (or archived,
//! then dropped) once older than their tag's TTL plus grace, measured from their creation.

use kit::clock::Clock;
use kit::shutdown::Shutdown;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{DagManagerMetrics, GcStage};
use crate::queues::{QueueAdmin, QueueAdminError};
use crate::settings::{GcAction, GcSettings};
use crate::store::{GraphStore, StoreError};

/// What one GC run saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub orphans: usize,
    pub eligible: usize,
    pub dropped: Vec<String>,
    pub archived: Vec<String>,
    pub failed: Vec<String>,
}

/// Why a GC run could not even look at the queues.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("listing queues in the graph store failed")]
    Store(#[from] StoreError),
    #[error("listing queues at the broker failed")]
    Broker(#[from] QueueAdminError),
}

/// An orphan queue and what GC needs to decide about it.
#[derive(Debug)]
struct Orphan {
    name: String,
    tag: crate::queues::GcTag,
    created_at: f64,
    in_store: bool,
}

#[derive(Debug)]
pub struct GarbageCollector {
    store: Arc<dyn GraphStore>,
    queues: Arc<dyn QueueAdmin>,
    metrics: DagManagerMetrics,
    settings: GcSettings,
    clock: Arc<dyn Clock>,
    /// One run at a time: a scheduled run and an operator's trigger never overlap.
    running: tokio::sync::Mutex<()>,
}

impl GarbageCollector {
    pub fn new(
        store: Arc<dyn GraphStore>,
        queues: Arc<dyn QueueAdmin>,
        metrics: DagManagerMetrics,
        settings: GcSettings,
        clock: Arc<dyn Clock>,
    ) -> GarbageCollector {
        GarbageCollector {
            store,
            queues,
            metrics,
            settings,
            clock,
            running: tokio::sync::Mutex::new(()),
        }
    }

    async fn orphans(&self) -> Result<Vec<Orphan>, GcError> {
        let stored = self.store.queues().await?;
        let known: HashSet<&str> = stored.iter().map(|q| q.name.as_str()).collect();
        let mut orphans: Vec<Orphan> = stored
            .iter()
            .filter(|q| q.node_id.is_none())
            .map(|q| Orphan {
                name: q.name.clone(),
                tag: q.tag.clone(),
                created_at: q.created_at,
                in_store: true,
            })
            .collect();
        // Queues the broker holds that the graph never recorded (a crash between creating a
        // queue and persisting the diff) are ours too, and owned by nobody.
        for queue in self.queues.list_queues().await? {
            if !known.contains(queue.spec.name.as_str()) {
                orphans.push(Orphan {
                    name: queue.spec.name,
                    tag: queue.spec.tag,
                    created_at: queue.created_at,
                    in_store: false,
                });
            }
        }
        Ok(orphans)
    }

    /// One GC pass. Per-queue failures are counted and logged; the pass goes on.
    #[tracing::instrument(name = "dagmanager.gc", skip_all)]
    pub async fn run_once(&self) -> Result<GcReport, GcError> {
        let _running = self.running.lock().await;
        let orphans = match self.orphans().await {
            Ok(orphans) => orphans,
            Err(error) => {
                self.metrics.gc_failure(GcStage::List).increment(1);
                tracing::warn!(code = "E_GC_LIST", error = %error, "GC could not list queues.");
                return Err(error);
            }
        };
        let now = self.clock.unix_seconds();
        self.metrics.orphan_queue_total.set(orphans.len() as f64);
        let mut report = GcReport {
            orphans: orphans.len(),
            ..GcReport::default()
        };
        let eligible: Vec<(&Orphan, GcAction)> = orphans
            .iter()
            .filter_map(|orphan| {
                let policy = self.settings.policies.get(orphan.tag.as_ref())?;
                let age = now - orphan.created_at;
                (age >= (policy.ttl_secs + policy.grace_secs) as f64)
                    .then_some((orphan, policy.action))
            })
            .collect();
        report.eligible = eligible.len();
        for (orphan, action) in eligible.into_iter().take(self.settings.batch_size.max(1)) {
            if action == GcAction::Archive {
                match self
                    .queues
                    .archive_queue(&orphan.name, &self.settings.archive_dir, now)
                    .await
                {
                    Ok(path) => {
                        self.metrics.gc_queues_archived_total.increment(1);
                        tracing::info!(queue = %orphan.name, path = %path.display(), "GC archived an orphan queue.");
                        report.archived.push(orphan.name.clone());
                    }
                    Err(error) => {
                        self.metrics.gc_failure(GcStage::Archive).increment(1);
                        tracing::warn!(queue = %orphan.name, code = "E_GC_ARCHIVE", error = %error, "GC could not archive a queue; it is kept.");
                        report.failed.push(orphan.name.clone());
                        continue;
                    }
                }
            }
            let names = [orphan.name.clone()];
            let dropped = match self.queues.delete_queues(&names).await {
                Ok(()) if orphan.in_store => self
                    .store
                    .remove_queues(&names)
                    .await
                    .map_err(GcError::from),
                Ok(()) => Ok(()),
                Err(error) => Err(GcError::from(error)),
            };
            match dropped {
                Ok(()) => {
                    self.metrics.gc_queues_dropped_total.increment(1);
                    tracing::info!(queue = %orphan.name, tag = %orphan.tag, "GC dropped an orphan queue.");
                    report.dropped.push(orphan.name.clone());
                }
                Err(error) => {
                    self.metrics.gc_failure(GcStage::Drop).increment(1);
                    tracing::warn!(queue = %orphan.name, code = "E_GC_DROP", error = %error, "GC could not drop a queue.");
                    report.failed.push(orphan.name.clone());
                }
            }
        }
        if let Ok((nodes, queues)) = self.store.counts().await {
            self.metrics.compute_nodes_total.set(nodes as f64);
            self.metrics.queues_total.set(queues as f64);
        }
        self.metrics
            .gc_last_run_timestamp
            .set(self.clock.unix_seconds());
        Ok(report)
    }

    /// Runs GC now and then every `interval_secs` until shutdown; an error never ends the loop.
    pub async fn run_scheduled(self: Arc<Self>, shutdown: Shutdown) {
        let interval = Duration::from_secs(self.settings.interval_secs.max(1));
        let stop = shutdown.triggered();
        tokio::pin!(stop);
        loop {
            if let Ok(report) = self.run_once().await
                && (!report.dropped.is_empty() || !report.failed.is_empty())
            {
                tracing::info!(
                    orphans = report.orphans,
                    dropped = report.dropped.len(),
                    archived = report.archived.len(),
                    failed = report.failed.len(),
                    "GC run done."
                );
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
