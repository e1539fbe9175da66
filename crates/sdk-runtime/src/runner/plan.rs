//! The queue map applied: which node is computed here and which is read from a queue; `Plan`.

use std::collections::HashSet;

use crate::backfill::{BackfillJob, BackfillReport};
use crate::cache::bucket;
use crate::engine::{Engine, Mode, NodeSetup};
use crate::gateway_client::Submitted;
use crate::source::LiveFeed;
use crate::strategy::{MatchMode, NodeDef, NodeKind};
use crate::transport::{ProducerLease, Transport};

use super::RunError;
use super::forward::Target;

/// How one node runs, once the queue map is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    pub node_id: String,
    pub mode: Mode,
    /// The node's queue, when the strategy was submitted.
    pub topic: Option<String>,
}

/// What a runner decided for a strategy and how its backfill went.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The Gateway's id for the strategy (none offline).
    pub strategy_id: Option<String>,
    /// The same DAG had been submitted before.
    pub duplicate: bool,
    /// Why the Gateway downgraded the strategy's context, if it did.
    pub downgrade_reason: Option<String>,
    pub nodes: Vec<NodePlan>,
    pub backfill: Vec<BackfillReport>,
}

impl Plan {
    /// Nodes read from a queue another runner produces.
    pub fn read(&self) -> impl Iterator<Item = &NodePlan> {
        self.nodes.iter().filter(|n| n.mode == Mode::Read)
    }
}

/// A tag query node: its index, the tags it wants, and how they must match.
pub(super) type TagQuery = (usize, Vec<String>, MatchMode);

/// A strategy's nodes taken apart: what feeds the engine, and what the queue map needs.
pub(super) struct Layout {
    /// Live feeds of stream nodes, by node index.
    pub(super) feeds: Vec<(usize, Box<dyn LiveFeed>)>,
    /// Backfill jobs of stream nodes with a history provider.
    pub(super) jobs: Vec<BackfillJob>,
    pub(super) queries: Vec<TagQuery>,
    /// Every node's tags, by index.
    pub(super) tags: Vec<Vec<String>>,
    /// Indexes of the stream nodes.
    pub(super) streams: HashSet<usize>,
}

impl Layout {
    /// Splits the nodes into what the engine runs and the rest; each history job loads
    /// `warmup` bars (or the node's period, if more) ending before the bucket of `history_end`.
    pub(super) fn of(
        nodes: Vec<NodeDef>,
        warmup: i64,
        history_end: i64,
    ) -> (Vec<NodeSetup>, Layout) {
        let mut setups = Vec::with_capacity(nodes.len());
        let mut layout = Layout {
            feeds: Vec::new(),
            jobs: Vec::new(),
            queries: Vec::new(),
            tags: Vec::new(),
            streams: HashSet::new(),
        };
        for (index, def) in nodes.into_iter().enumerate() {
            let compute = match def.kind {
                NodeKind::Stream { history, live } => {
                    layout.streams.insert(index);
                    if let Some(provider) = history {
                        layout.jobs.push(BackfillJob {
                            node: index,
                            node_id: def.node_id.clone(),
                            interval: def.interval,
                            bars: warmup.max(def.period as i64),
                            end: bucket(history_end, def.interval),
                            provider,
                        });
                    }
                    if let Some(feed) = live {
                        layout.feeds.push((index, feed));
                    }
                    None
                }
                NodeKind::Compute(compute) => Some(compute),
                NodeKind::TagQuery {
                    tags,
                    match_mode,
                    compute,
                } => {
                    layout.queries.push((index, tags, match_mode));
                    Some(compute)
                }
            };
            layout.tags.push(def.tags);
            setups.push(NodeSetup {
                node_id: def.node_id,
                name: def.name,
                interval: def.interval,
                period: def.period,
                inputs: def.inputs,
                compute,
                observers: def.observers,
            });
        }
        (setups, layout)
    }
}

/// The queue map applied: the leases held here, and the queues to read into the engine.
#[derive(Default)]
pub(super) struct QueuePlan {
    pub(super) leases: Vec<Box<dyn ProducerLease>>,
    pub(super) reads: Vec<(Target, String)>,
}

/// The first queue the queue map gives `node_id`: the node's own.
fn own_queue(submitted: &Submitted, node_id: &str) -> Option<String> {
    submitted
        .queue_map
        .get(node_id)
        .and_then(|q| q.first())
        .map(|q| q.queue.clone())
}

/// Plans the queue map. Submitted, each node claims its queue's producer lease or is read
/// from its queue; offline, every node is computed here and tag queries match earlier nodes.
pub(super) async fn plan_queue_map(
    engine: &mut Engine,
    submitted: Option<&Submitted>,
    layout: &Layout,
    transport: &dyn Transport,
) -> Result<QueuePlan, RunError> {
    match submitted {
        Some(submitted) => claim_producer_leases(engine, submitted, layout, transport).await,
        None => {
            match_tags_offline(engine, &layout.queries, &layout.tags);
            Ok(QueuePlan::default())
        }
    }
}

/// Claims each queue this runner could produce, reads the others: a node whose lease another
/// runner holds, or a stream without a feed here, is read from its queue.
async fn claim_producer_leases(
    engine: &mut Engine,
    submitted: &Submitted,
    layout: &Layout,
    transport: &dyn Transport,
) -> Result<QueuePlan, RunError> {
    let mut queues = QueuePlan::default();
    let fed: HashSet<usize> = layout.feeds.iter().map(|(i, _)| *i).collect();
    let query_nodes = query_nodes(&layout.queries);
    for index in 0..engine.nodes().len() {
        // A tag query's queue map entry is the queues it matched, not a queue of its own: it
        // always runs here, reading them.
        if query_nodes.contains(&index) {
            continue;
        }
        let Some(topic) = own_queue(submitted, &engine.nodes()[index].node_id) else {
            continue;
        };
        // A stream without a feed here is fed by someone else: read it.
        let lease = if layout.streams.contains(&index) && !fed.contains(&index) {
            None
        } else {
            transport
                .claim_producer(&topic)
                .await
                .map_err(|source| RunError::Transport {
                    topic: topic.clone(),
                    source,
                })?
        };
        let node = engine.node_mut(index);
        match lease {
            Some(lease) => {
                queues.leases.push(lease);
                node.publish = Some(topic.clone());
            }
            None => {
                node.mode = Mode::Read;
                queues.reads.push((Target::Emit(index), topic));
            }
        }
    }
    read_matched_queues(engine, submitted, &layout.queries, &mut queues.reads);
    Ok(queues)
}

/// Gives each tag query a ring per queue the Gateway matched to its tags, read from it.
fn read_matched_queues(
    engine: &mut Engine,
    submitted: &Submitted,
    queries: &[TagQuery],
    reads: &mut Vec<(Target, String)>,
) {
    for (index, _, _) in queries {
        let node_id = engine.nodes()[*index].node_id.clone();
        let interval = engine.nodes()[*index].interval;
        for queue in submitted.queue_map.get(&node_id).into_iter().flatten() {
            let slot = engine.add_external_slot(*index, None, queue.queue.clone(), interval);
            reads.push((Target::Deliver(*index, slot), queue.queue.clone()));
        }
    }
}

/// Offline, a tag query reads the earlier nodes of the strategy whose tags match.
fn match_tags_offline(engine: &mut Engine, queries: &[TagQuery], tags: &[Vec<String>]) {
    for (index, wanted, mode) in queries {
        let before = engine.nodes()[*index].name.clone();
        let mut matched = 0;
        for (upstream, have) in tags.iter().enumerate().take(*index) {
            let matches = match mode {
                MatchMode::Any => wanted.iter().any(|t| have.contains(t)),
                MatchMode::All => wanted.iter().all(|t| have.contains(t)),
            };
            if matches {
                let label = engine.nodes()[upstream].node_id.clone();
                let interval = engine.nodes()[upstream].interval;
                engine.add_external_slot(*index, Some(upstream), label, interval);
                matched += 1;
            }
        }
        if matched == 0 {
            tracing::warn!(node = %before, tags = ?wanted, "No earlier node of the strategy has these tags: the tag query will never compute offline.");
        }
    }
}

fn query_nodes(queries: &[TagQuery]) -> HashSet<usize> {
    queries.iter().map(|(i, _, _)| *i).collect()
}

/// The plan as decided: each node's mode and queue, and how the backfill went.
pub(super) fn report(
    engine: &Engine,
    submitted: Option<&Submitted>,
    queries: &[TagQuery],
    backfill: Vec<BackfillReport>,
) -> Plan {
    let query_nodes = query_nodes(queries);
    let plan = Plan {
        strategy_id: submitted.map(|s| s.strategy_id.clone()),
        duplicate: submitted.is_some_and(|s| s.duplicate),
        downgrade_reason: submitted.and_then(|s| s.downgrade_reason.clone()),
        nodes: engine
            .nodes()
            .iter()
            .enumerate()
            .map(|(index, n)| NodePlan {
                name: n.name.clone(),
                node_id: n.node_id.clone(),
                mode: n.mode,
                topic: submitted
                    .filter(|_| !query_nodes.contains(&index))
                    .and_then(|s| own_queue(s, &n.node_id)),
            })
            .collect(),
        backfill,
    };
    for node in &plan.nodes {
        tracing::debug!(node = %node.name, node_id = %node.node_id, mode = ?node.mode, topic = ?node.topic, "Node planned.");
    }
    plan
}
