//! Carries every accepted submission to the DAG Manager and on to `completed` or `failed`:
//! one diff per world through the breaker, TagQuery nodes resolved, queue maps merged. While the
//! DAG Manager is unavailable a submission waits as `queued` and goes again when the probe sees
//! it back; nothing accepted is dropped.

use foldhash::HashSet;
use kit::clock::Clock;
use kit::shutdown::Shutdown;
use proto::DiffRequest;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument as _;

use crate::api::{QueueMap, QueueRef, TagQuery};
use crate::link::{DagManagerLink, LinkError};
use crate::metrics::{GatewayMetrics, Outcome};
use crate::submissions::{Status, StoredContext, StrategyRecord, Submissions};

/// The node id inside a partition key (`{node_id}:{interval}:{bucket}[#ck=…]`).
pub fn node_of_partition_key(key: &str) -> &str {
    let base = key.split_once("#ck=").map_or(key, |(base, _)| base);
    let mut parts = base.rsplitn(3, ':');
    let _bucket = parts.next();
    let _interval = parts.next();
    parts.next().unwrap_or(base)
}

fn add_queue(queue_map: &mut QueueMap, node_id: &str, queue: QueueRef) {
    let queues = queue_map.entry(node_id.to_owned()).or_default();
    if !queues.contains(&queue) {
        queues.push(queue);
    }
}

/// The submission carrier.
#[derive(Debug)]
pub struct Carrier {
    submissions: Arc<Submissions>,
    link: Arc<DagManagerLink>,
    metrics: Arc<GatewayMetrics>,
    clock: Arc<dyn Clock>,
    retry_interval: Duration,
    workers: usize,
    queue: mpsc::UnboundedSender<String>,
    in_flight: Mutex<HashSet<String>>,
}

impl Carrier {
    pub fn new(
        submissions: Arc<Submissions>,
        link: Arc<DagManagerLink>,
        metrics: Arc<GatewayMetrics>,
        clock: Arc<dyn Clock>,
        retry_interval: Duration,
        workers: usize,
    ) -> (Arc<Carrier>, mpsc::UnboundedReceiver<String>) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let carrier = Arc::new(Carrier {
            submissions,
            link,
            metrics,
            clock,
            retry_interval,
            workers: workers.max(1),
            queue,
            in_flight: Mutex::new(HashSet::default()),
        });
        (carrier, receiver)
    }

    /// Hands a submission to the carrier.
    pub fn enqueue(&self, strategy_id: &str) {
        let _ = self.queue.send(strategy_id.to_owned());
    }

    /// Takes submissions off the queue, `workers` at a time, until shutdown. Unfinished ones
    /// stay `queued` in the store for the next start.
    pub async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::UnboundedReceiver<String>,
        shutdown: Shutdown,
    ) {
        for strategy_id in self.submissions.unfinished() {
            self.enqueue(&strategy_id);
        }
        let permits = Arc::new(Semaphore::new(self.workers));
        let stop = shutdown.triggered();
        tokio::pin!(stop);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let strategy_id = tokio::select! {
                _ = &mut stop => break,
                next = receiver.recv() => match next {
                    Some(id) => id,
                    None => break,
                },
            };
            let fresh = self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(strategy_id.clone());
            if !fresh {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let carrier = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                carrier.carry(&strategy_id, &shutdown).await;
                carrier
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&strategy_id);
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Waits until the DAG Manager may be back: the probe closed the breaker, or a retry interval
    /// passed. False when shutting down.
    async fn wait_for_dagmanager(&self, shutdown: &Shutdown) -> bool {
        tokio::select! {
            _ = shutdown.triggered() => false,
            _ = self.link.recovered.notified() => true,
            _ = tokio::time::sleep(self.retry_interval) => true,
        }
    }

    async fn carry(&self, strategy_id: &str, shutdown: &Shutdown) {
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let Some(record) = self.submissions.get(strategy_id) else {
                return;
            };
            if record.status.is_final() {
                return;
            }
            if self.link.breaker().is_open() {
                self.submissions.mark_queued(strategy_id);
                if !self.wait_for_dagmanager(shutdown).await {
                    return;
                }
                continue;
            }
            self.submissions.mark_processing(strategy_id);
            let span = tracing::info_span!("gateway.carry", strategy_id = %strategy_id);
            kit::trace::continue_from(&span, record.traceparent.as_deref(), None);
            let result = self.attempt(&record).instrument(span).await;
            let (status, reason, queue_map, sentinel_id) = match result {
                Ok((queue_map, sentinel_id)) => (Status::Completed, None, queue_map, sentinel_id),
                Err(LinkError::Unavailable { reason }) => {
                    tracing::warn!(strategy_id, code = "E_DAGMANAGER_UNAVAILABLE", reason = %reason, "Submission waits for the DAG Manager.");
                    self.submissions.mark_queued(strategy_id);
                    if !self.wait_for_dagmanager(shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(error @ (LinkError::Refused { .. } | LinkError::Address { .. })) => (
                    Status::Failed,
                    Some(error.to_string()),
                    QueueMap::new(),
                    record.sentinel_id.clone(),
                ),
            };
            let outcome = if status == Status::Completed {
                Outcome::Completed
            } else {
                Outcome::Failed
            };
            let finished = StrategyRecord {
                status,
                reason: reason.clone(),
                queue_map,
                sentinel_id,
                updated_at: self.clock.unix_seconds(),
                ..record
            };
            match self.submissions.finish(finished) {
                Ok(()) => {
                    self.metrics.submission(outcome).increment(1);
                    if let Some(reason) = reason {
                        tracing::warn!(strategy_id, code = "E_SUBMISSION_FAILED", reason = %reason, "Submission failed.");
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(strategy_id, code = "E_STORE", error = %kit::error::chain(&error), "Could not record a submission's end; it stays queued.");
                    self.submissions.mark_queued(strategy_id);
                    if !self.wait_for_dagmanager(shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// One try: a diff per world, then TagQuery nodes resolved.
    async fn attempt(&self, record: &StrategyRecord) -> Result<(QueueMap, String), LinkError> {
        diff_in_worlds(
            &self.link,
            &DiffPlan {
                strategy_id: &record.strategy_id,
                dag_json: &record.dag_json,
                node_ids_crc32: record.node_ids_crc32,
                world_ids: &record.world_ids,
                context: &record.context,
                tag_queries: &record.tag_queries,
            },
        )
        .await
    }
}

/// What to diff: one DAG for one strategy, in each of its worlds.
#[derive(Debug)]
pub struct DiffPlan<'a> {
    pub strategy_id: &'a str,
    pub dag_json: &'a str,
    pub node_ids_crc32: u32,
    pub world_ids: &'a [String],
    pub context: &'a StoredContext,
    pub tag_queries: &'a [TagQuery],
}

/// A diff per world through the breaker (each chunk's CRC32 checked against the submission's),
/// queue maps merged by node id, then TagQuery nodes resolved. Returns the queue map and the
/// sentinel id.
pub async fn diff_in_worlds(
    link: &DagManagerLink,
    plan: &DiffPlan<'_>,
) -> Result<(QueueMap, String), LinkError> {
    let mut queue_map = QueueMap::new();
    let mut sentinel_id = format!("{}-sentinel", plan.strategy_id);
    for world_id in plan.world_ids {
        let diff = link
            .diff(DiffRequest {
                strategy_id: plan.strategy_id.to_owned(),
                dag_json: plan.dag_json.to_owned(),
                world_id: world_id.clone(),
                execution_domain: plan.context.execution_domain.clone(),
                as_of: plan.context.as_of.clone(),
                partition: plan.context.partition.clone(),
                dataset_fingerprint: plan.context.dataset_fingerprint.clone(),
            })
            .await?;
        if diff.crc32 != Some(plan.node_ids_crc32) {
            return Err(LinkError::Refused {
                reason: format!(
                    "E_CHECKSUM_MISMATCH: the DAG Manager computed CRC32 {:?}, the submission {}",
                    diff.crc32, plan.node_ids_crc32
                ),
            });
        }
        if !diff.sentinel_id.is_empty() {
            sentinel_id = diff.sentinel_id;
        }
        for (key, queue) in diff.queue_map {
            add_queue(
                &mut queue_map,
                node_of_partition_key(&key),
                QueueRef {
                    queue,
                    global: false,
                },
            );
        }
    }
    for query in plan.tag_queries {
        let queues = link
            .queues_by_tags(query.tags.clone(), query.interval, &query.match_mode)
            .await?;
        queue_map.insert(
            query.node_id.clone(),
            queues
                .into_iter()
                .map(|q| QueueRef {
                    queue: q.queue,
                    global: q.global,
                })
                .collect(),
        );
    }
    Ok((queue_map, sentinel_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_read_back_from_a_partition_key() {
        assert_eq!(node_of_partition_key("blake3:ab:60:0"), "blake3:ab");
        assert_eq!(
            node_of_partition_key("blake3:ab:0:0#ck=blake3:cd"),
            "blake3:ab"
        );
    }
}
