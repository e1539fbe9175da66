//! The small gRPC services: TagQuery (queues by tags), AdminService (cleanup, queue stats, redo
//! a diff) and HealthCheck.

use proto::admin_service_server::AdminService;
use proto::health_check_server::HealthCheck;
use proto::tag_query_server::TagQuery;
use proto::{
    CleanupRequest, CleanupResponse, DiffResult, QueueDescriptor, QueueStats, QueueStatsRequest,
    RedoDiffRequest, StatusReply, StatusRequest, TagQueryReply, TagQueryRequest,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

use crate::diff::{DiffEngine, DiffInput};
use crate::gc::GarbageCollector;
use crate::queues::QueueAdmin;
use crate::store::GraphStore;

/// TagQuery.
#[derive(Debug, Clone)]
pub struct TagQueryServer {
    pub store: Arc<dyn GraphStore>,
}

#[tonic::async_trait]
impl TagQuery for TagQueryServer {
    async fn get_queues(
        &self,
        request: Request<TagQueryRequest>,
    ) -> Result<Response<TagQueryReply>, Status> {
        let request = request.into_inner();
        let match_all = match request.match_mode.trim().to_ascii_lowercase().as_str() {
            "" | "any" => false,
            "all" => true,
            other => {
                return Err(Status::invalid_argument(format!(
                    "E_MATCH_MODE_INVALID: match_mode {other:?} is neither \"any\" nor \"all\""
                )));
            }
        };
        let queues = self
            .store
            .queues_by_tags(&request.tags, request.interval, match_all)
            .await
            .map_err(|e| Status::unavailable(format!("E_GRAPH_STORE: {e}")))?;
        Ok(Response::new(TagQueryReply {
            queues: queues
                .into_iter()
                .map(|q| QueueDescriptor {
                    global: q.namespace.is_empty(),
                    queue: q.name,
                })
                .collect(),
        }))
    }
}

/// A `GetQueueStats` filter: `tag=a,b;interval=60`, both parts optional.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct QueueFilter {
    pub tags: Vec<String>,
    pub interval: i64,
}

impl QueueFilter {
    pub fn parse(text: &str) -> Result<QueueFilter, String> {
        let mut filter = QueueFilter::default();
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("filter part {part:?} is not key=value"))?;
            match key.trim() {
                "tag" | "tags" => {
                    filter.tags = value
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "interval" => {
                    filter.interval = value.trim().parse().map_err(|_| {
                        format!("interval {value:?} is not a whole number of seconds")
                    })?;
                }
                other => {
                    return Err(format!(
                        "unknown filter key {other:?} (expected tag or interval)"
                    ));
                }
            }
        }
        Ok(filter)
    }
}

/// AdminService.
#[derive(Debug, Clone)]
pub struct AdminServer {
    pub engine: Arc<DiffEngine>,
    pub store: Arc<dyn GraphStore>,
    pub queues: Arc<dyn QueueAdmin>,
    pub gc: Arc<GarbageCollector>,
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    async fn cleanup(
        &self,
        request: Request<CleanupRequest>,
    ) -> Result<Response<CleanupResponse>, Status> {
        let strategy_id = request.into_inner().strategy_id;
        if !strategy_id.trim().is_empty() {
            let orphaned = self
                .engine
                .release_strategy(&strategy_id)
                .await
                .map_err(|e| Status::unavailable(format!("E_GRAPH_STORE: {e}")))?;
            tracing::info!(strategy_id = %strategy_id, orphaned = orphaned.len(), "Strategy released.");
        }
        self.gc
            .run_once()
            .await
            .map_err(|e| Status::unavailable(format!("E_GC: {e}")))?;
        Ok(Response::new(CleanupResponse {}))
    }

    async fn get_queue_stats(
        &self,
        request: Request<QueueStatsRequest>,
    ) -> Result<Response<QueueStats>, Status> {
        let filter = QueueFilter::parse(&request.into_inner().filter)
            .map_err(|e| Status::invalid_argument(format!("E_FILTER_INVALID: {e}")))?;
        let queues = if filter.tags.is_empty() {
            self.store.queues().await
        } else {
            self.store
                .queues_by_tags(&filter.tags, filter.interval, false)
                .await
        }
        .map_err(|e| Status::unavailable(format!("E_GRAPH_STORE: {e}")))?;
        let names: Vec<String> = queues
            .into_iter()
            .filter(|q| filter.interval == 0 || q.interval == filter.interval)
            .map(|q| q.name)
            .collect();
        let sizes = self
            .queues
            .queue_sizes(&names)
            .await
            .map_err(|e| Status::unavailable(format!("E_QUEUE_ADMIN: {e}")))?;
        Ok(Response::new(QueueStats {
            sizes: sizes.into_iter().collect(),
        }))
    }

    async fn redo_diff(
        &self,
        request: Request<RedoDiffRequest>,
    ) -> Result<Response<DiffResult>, Status> {
        let request = request.into_inner();
        let strategy_id = request
            .sentinel_id
            .strip_suffix("-sentinel")
            .unwrap_or(&request.sentinel_id)
            .to_owned();
        let outcome = self
            .engine
            .diff(DiffInput {
                strategy_id,
                dag_json: request.dag_json,
                context: wire::ComputeContext::default(),
            })
            .await
            .map_err(|e| Status::from(&e))?;
        Ok(Response::new(DiffResult {
            queue_map: outcome.queue_map.into_iter().collect(),
            sentinel_id: outcome.sentinel_id,
            version: outcome.version,
        }))
    }
}

/// HealthCheck. `neo4j` reports the graph store (whatever backs it), `state` the service.
#[derive(Debug, Clone)]
pub struct HealthServer {
    pub store: Arc<dyn GraphStore>,
    pub shutdown: kit::shutdown::Shutdown,
}

#[tonic::async_trait]
impl HealthCheck for HealthServer {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let neo4j = match self.store.health().await {
            Ok(()) => "ok",
            Err(_) => "error",
        };
        let state = if self.shutdown.is_triggered() {
            "stopping"
        } else {
            "running"
        };
        Ok(Response::new(StatusReply {
            neo4j: neo4j.to_owned(),
            state: state.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_filters_parse_and_bad_ones_are_refused() {
        assert_eq!(
            QueueFilter::parse("tag=a, b;interval=60").unwrap(),
            QueueFilter {
                tags: vec!["a".into(), "b".into()],
                interval: 60
            }
        );
        assert_eq!(QueueFilter::parse("").unwrap(), QueueFilter::default());
        assert!(QueueFilter::parse("interval=1h").is_err());
        assert!(QueueFilter::parse("colour=red").is_err());
    }
}
