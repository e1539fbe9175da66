//! The diff: which nodes of a submitted DAG already exist (their queues are reused) and which
//! need new queues; persisted so that reuse survives restarts (wire.md section 5).

use foldhash::HashMap;
use kit::clock::Clock;
use kit::metrics::RecentQuantile;
use proto::BufferInstruction;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use wire::{
    ComputeContext, DagError, DagLimits, Domain, QueueKind, QueueNamespace, queue_asset,
    queue_name_candidates,
};

use crate::metrics::DagManagerMetrics;
use crate::parse_cache::{CheckedDag, ParseCache};
use crate::queues::{GcTag, QueueAdmin, QueueAdminError, QueueSpec};
use crate::settings::{DagManagerSettings, TopicSettings};
use crate::store::{
    GraphChanges, GraphStore, NodeRecord, QueueRecord, SentinelRecord, StoreError, StoredNode,
};

/// A new queue of a DAG being diffed, before it is named.
struct Unnamed<'a> {
    /// Its entry in the queue map.
    slot: usize,
    /// The node, by index into the DAG's nodes.
    node: usize,
    compute_key: Option<&'a str>,
}

/// Candidate names asked of the graph at once when a queue's first choice is taken.
const NAME_PROBE_BATCH: usize = 8;

/// One diff request, transport aside.
#[derive(Debug, Clone, Default)]
pub struct DiffInput {
    pub strategy_id: String,
    pub dag_json: String,
    /// Context fields from the request; non-empty ones override what the DAG declares.
    pub context: ComputeContext,
}

/// What a diff decided.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffOutcome {
    pub sentinel_id: String,
    pub version: String,
    pub crc32: u32,
    /// (partition key, queue) in topological order.
    pub queue_map: Vec<(String, String)>,
    pub buffer_nodes: Vec<BufferInstruction>,
    pub new_nodes: usize,
    pub reused_nodes: usize,
}

/// Why a diff failed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("strategy_id is empty")]
    MissingStrategyId,
    #[error(transparent)]
    Dag(#[from] DagError),
    #[error(
        "execution_domain {domain:?} is not one of backtest, dryrun, live, shadow (or an alias)"
    )]
    UnknownDomain { domain: String },
    #[error(
        "node {node_id}: its queue {queue} is bound to another compute context; reusing it under compute key {compute_key} would mix contexts ({others} more nodes likewise)"
    )]
    CrossContext {
        node_id: String,
        queue: String,
        compute_key: String,
        others: usize,
    },
    #[error("queues could not be created")]
    QueueCreate(#[source] QueueAdminError),
    #[error("the graph store failed")]
    Store(#[from] StoreError),
}

impl DiffError {
    /// The bounded reason code logged with every counted failure.
    pub fn code(&self) -> &'static str {
        match self {
            DiffError::MissingStrategyId => "E_STRATEGY_ID_REQUIRED",
            DiffError::Dag(error) => error.code().as_str(),
            DiffError::UnknownDomain { .. } => "E_EXECUTION_DOMAIN_INVALID",
            DiffError::CrossContext { .. } => "E_CROSS_CONTEXT",
            DiffError::QueueCreate(QueueAdminError::ConfigMismatch { .. }) => {
                "E_QUEUE_CONFIG_MISMATCH"
            }
            DiffError::QueueCreate(QueueAdminError::Refused { .. }) => "E_QUEUE_REFUSED",
            DiffError::QueueCreate(_) => "E_QUEUE_CREATE",
            DiffError::Store(_) => "E_GRAPH_STORE",
        }
    }
}

/// The limits and naming rules a diff applies.
#[derive(Debug, Clone)]
pub struct DiffSettings {
    pub limits: DagLimits,
    pub topic_namespace: bool,
    pub topics: BTreeMap<String, TopicSettings>,
    pub parse_cache_nodes: usize,
}

impl DiffSettings {
    /// How queues of a GC tag are created (a tag with no settings: 1 partition, 7 days).
    pub fn queue_settings(&self, tag: &str) -> TopicSettings {
        self.topics.get(tag).cloned().unwrap_or(TopicSettings {
            partitions: 1,
            replication_factor: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
        })
    }

    /// The spec a queue of the graph is created with.
    pub fn queue_spec(&self, name: &str, tag: GcTag) -> QueueSpec {
        let settings = self.queue_settings(&tag);
        QueueSpec {
            name: name.to_owned(),
            tag,
            partitions: settings.partitions,
            replication_factor: settings.replication_factor,
            retention_ms: settings.retention_ms,
        }
    }
}

impl From<&DagManagerSettings> for DiffSettings {
    fn from(settings: &DagManagerSettings) -> Self {
        DiffSettings {
            limits: DagLimits {
                max_bytes: settings.max_dag_bytes,
                max_nodes: settings.max_nodes,
            },
            topic_namespace: settings.topic_namespace,
            topics: settings.topics.clone(),
            parse_cache_nodes: settings.parse_cache_nodes,
        }
    }
}

/// Runs diffs against the graph store and the queue admin.
#[derive(Debug)]
pub struct DiffEngine {
    store: Arc<dyn GraphStore>,
    queues: Arc<dyn QueueAdmin>,
    metrics: DagManagerMetrics,
    settings: DiffSettings,
    clock: Arc<dyn Clock>,
    /// Serialises the read-plan-stage part of diffs so two diffs never name or create one queue
    /// twice. Durable commits happen outside it.
    write_lock: tokio::sync::Mutex<()>,
    recent_ms: RecentQuantile,
    parse_cache: ParseCache,
}

/// The compute key inside a partition key (`…#ck={compute_key}`).
fn queue_compute_key(partition_key: &str) -> &str {
    // The last `#`: a compute key is hex.
    partition_key
        .rfind('#')
        .and_then(|mark| partition_key[mark..].strip_prefix("#ck="))
        .unwrap_or("")
}

/// Window of `diff_duration_ms_p95`.
pub const P95_WINDOW: Duration = Duration::from_secs(300);

impl DiffEngine {
    pub fn new(
        store: Arc<dyn GraphStore>,
        queues: Arc<dyn QueueAdmin>,
        metrics: DagManagerMetrics,
        settings: DiffSettings,
        clock: Arc<dyn Clock>,
    ) -> DiffEngine {
        DiffEngine {
            parse_cache: ParseCache::new(settings.limits, settings.parse_cache_nodes),
            store,
            queues,
            metrics,
            settings,
            recent_ms: RecentQuantile::new(P95_WINDOW, 10_000, clock.clone()),
            clock,
            write_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn settings(&self) -> &DiffSettings {
        &self.settings
    }

    /// Refreshes `diff_duration_ms_p95` so it decays once diffs stop.
    pub fn refresh_p95(&self) {
        self.metrics
            .diff_duration_ms_p95
            .set(self.recent_ms.quantile(0.95));
    }

    /// Forgets a strategy (its nodes no other strategy uses are removed and their queues
    /// orphaned), serialised with diffs so a diff never reuses a node that is being removed.
    pub async fn release_strategy(&self, strategy_id: &str) -> Result<Vec<String>, StoreError> {
        let _write = self.write_lock.lock().await;
        let orphaned = self
            .store
            .release_strategy(strategy_id, self.clock.unix_seconds())
            .await?;
        let (nodes, queues) = self.store.counts().await?;
        self.metrics.compute_nodes_total.set(nodes as f64);
        self.metrics.queues_total.set(queues as f64);
        Ok(orphaned)
    }

    /// Runs one diff, counting and timing it, and returns once its writes are durable.
    pub async fn diff(&self, input: DiffInput) -> Result<DiffOutcome, DiffError> {
        let (outcome, commit) = self.stage(input).await?.into_parts();
        self.settle(commit).await?;
        Ok(outcome)
    }

    /// Decides a diff and stages its writes: the answer is known and visible to later diffs,
    /// but not durable until [`DiffEngine::settle`] returns, which must follow (it counts and
    /// times the diff). The answer may be sent while the commit runs, as long as its end waits.
    pub async fn stage(&self, input: DiffInput) -> Result<StagedDiff, DiffError> {
        self.metrics.diff_requests_total.increment(1);
        let started = Instant::now();
        let strategy_id = input.strategy_id.clone();
        let staged = self.run(input, started).await;
        if let Err(error) = &staged {
            self.finish(&strategy_id, started, Err(error));
        }
        staged
    }

    /// Waits until what a staged diff read and wrote is durable, then counts and times it.
    pub async fn settle(&self, commit: PendingCommit) -> Result<(), DiffError> {
        let result = self.commit(&commit).await;
        self.finish(
            &commit.strategy_id,
            commit.started,
            result.as_ref().map(|()| &commit),
        );
        result
    }

    async fn commit(&self, commit: &PendingCommit) -> Result<(), DiffError> {
        self.store.settle(commit.mark).await?;
        if commit.sentinel_gap {
            self.metrics.sentinel_gap_count.increment(1.0);
        }
        if commit.wrote {
            let (nodes, queues) = self.store.counts().await?;
            self.metrics.compute_nodes_total.set(nodes as f64);
            self.metrics.queues_total.set(queues as f64);
        }
        Ok(())
    }

    fn finish(
        &self,
        strategy_id: &str,
        started: Instant,
        result: Result<&PendingCommit, &DiffError>,
    ) {
        let elapsed = started.elapsed();
        self.metrics
            .diff_duration_seconds
            .record(elapsed.as_secs_f64());
        // `diff_duration_ms_p95` itself is computed at each scrape (`refresh_p95`).
        self.recent_ms.record(elapsed.as_secs_f64() * 1000.0);
        match result {
            Ok(commit) => tracing::debug!(
                strategy_id = %strategy_id,
                new_nodes = commit.new_nodes,
                reused_nodes = commit.reused_nodes,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "Diff done."
            ),
            Err(error) => {
                self.metrics.diff_failures_total.increment(1);
                tracing::warn!(strategy_id = %strategy_id, code = error.code(), error = %error, "Diff failed.");
            }
        }
    }

    fn resolve_context(
        declared: ComputeContext,
        request: ComputeContext,
    ) -> Result<ComputeContext, DiffError> {
        let pick = |req: String, dec: String| if req.trim().is_empty() { dec } else { req };
        let raw_domain = pick(request.execution_domain, declared.execution_domain);
        let domain =
            Domain::parse(&raw_domain).ok_or(DiffError::UnknownDomain { domain: raw_domain })?;
        Ok(ComputeContext {
            world_id: pick(request.world_id, declared.world_id),
            execution_domain: domain.as_str().to_owned(),
            as_of: pick(request.as_of, declared.as_of),
            partition: pick(request.partition, declared.partition),
            dataset_fingerprint: pick(request.dataset_fingerprint, declared.dataset_fingerprint),
        })
    }

    /// Names for the new queues of a DAG, in order: each takes the first of its
    /// candidates (see `wire::queue_name`) that neither an earlier new queue of this DAG nor a
    /// recorded queue (owned or orphan) holds. The graph is asked once for every first choice,
    /// and again only for a node whose first choice turned out to be taken.
    async fn name_new_queues(
        &self,
        unnamed: &[Unnamed<'_>],
        dag: &wire::Dag,
        version: &str,
        namespace: Option<&QueueNamespace>,
    ) -> Result<Vec<String>, StoreError> {
        let prefix = namespace.map(QueueNamespace::prefix).unwrap_or_default();
        let assets: Vec<Cow<'_, str>> = unnamed
            .iter()
            .map(|new| queue_asset(&dag.nodes[new.node].tags))
            .collect();
        let candidates = |position: usize| {
            let node = &dag.nodes[unnamed[position].node];
            queue_name_candidates(
                &prefix,
                &assets[position],
                node.node_type(),
                &node.node_id,
                version,
                false,
            )
        };
        // Every name planned (a replaced first choice stays: it is taken either way), found
        // through a table of positions in `planned`, so no name is held twice.
        let hasher = foldhash::fast::RandomState::default();
        let hash = |name: &str| hasher.hash_one(name);
        let mut planned: Vec<String> = Vec::with_capacity(unnamed.len());
        let mut table: hashbrown::HashTable<usize> =
            hashbrown::HashTable::with_capacity(unnamed.len());
        let is_planned = |table: &hashbrown::HashTable<usize>, planned: &[String], c: &str| {
            table.find(hash(c), |&i| planned[i] == c).is_some()
        };
        let plan =
            |table: &mut hashbrown::HashTable<usize>, planned: &mut Vec<String>, name: String| {
                table.insert_unique(hash(&name), planned.len(), |&i| hash(&planned[i]));
                planned.push(name);
                planned.len() - 1
            };
        let mut chosen: Vec<usize> = Vec::with_capacity(unnamed.len());
        for position in 0..unnamed.len() {
            let name = candidates(position)
                .find(|c| !is_planned(&table, &planned, c))
                .expect("the candidates never end");
            chosen.push(plan(&mut table, &mut planned, name));
        }
        let taken = self.store.queue_names_taken(&planned).await?;
        for (position, _) in taken.iter().enumerate().filter(|(_, taken)| **taken) {
            // Rare: the node's queue was orphaned before, or a short hash collides.
            let mut candidates = candidates(position);
            let name = loop {
                let batch: Vec<String> = candidates
                    .by_ref()
                    .filter(|c| !is_planned(&table, &planned, c))
                    .take(NAME_PROBE_BATCH)
                    .collect();
                let taken = self.store.queue_names_taken(&batch).await?;
                if let Some((name, _)) = batch.into_iter().zip(taken).find(|(_, taken)| !taken) {
                    break name;
                }
            };
            chosen[position] = plan(&mut table, &mut planned, name);
        }
        Ok(chosen
            .into_iter()
            .map(|i| std::mem::take(&mut planned[i]))
            .collect())
    }

    /// Parses the DAG and places it in its context; then, under the write lock, plans reuse,
    /// checks compute-key isolation, names and creates the new queues, decides the sentinel and
    /// stages the changes. Parsing runs before the lock and the durable commit after it
    /// ([`DiffEngine::settle`]), so concurrent diffs overlap there.
    async fn run(&self, input: DiffInput, started: Instant) -> Result<StagedDiff, DiffError> {
        if input.strategy_id.trim().is_empty() {
            return Err(DiffError::MissingStrategyId);
        }
        // From here until its change is staged, this diff is a write the graph's next commit
        // can wait for.
        let announced = self.store.announce();
        let checked = self.parse_cache.get_or_check(&input.dag_json)?;
        let (dag, order) = (&checked.dag, &checked.order);
        let context = Self::resolve_context(dag.declared_context(), input.context)?;
        let version = dag.version();
        let namespace = self.namespace(dag, &context);
        let namespace_key = namespace
            .as_ref()
            .map(QueueNamespace::prefix)
            .unwrap_or_default();
        let sentinel_id = format!("{}-sentinel", input.strategy_id);
        let node_ids: Vec<&str> = order
            .iter()
            .map(|&i| dag.nodes[i].node_id.as_str())
            .collect();

        let write = self.write_lock.lock().await;
        let begun = self.store.begin().await?;
        let stored = self.store.nodes(&node_ids, &namespace_key).await?;
        let now = self.clock.unix_seconds();
        let partition_keys = checked.partition_keys(context.applies().then_some(&context));
        let mut plan = Plan::reuse(dag, order, &stored, &partition_keys, context.applies(), now);
        self.check_isolation(&plan.violations, &context)?;
        let names = self
            .name_new_queues(&plan.unnamed, dag, &version, namespace.as_ref())
            .await?;
        let specs = self.record_new_queues(&mut plan, names, dag, &namespace_key, now);
        self.create_queues(specs, now).await?;
        plan.changes.sentinel = self
            .sentinel_change(&checked, &input.strategy_id, &sentinel_id, &version, now)
            .await?;
        let wrote = !plan.changes.is_empty();
        let staged = self.store.stage(plan.changes, announced).await?;
        drop(write);

        let commit = PendingCommit {
            // Others may plan on what this diff staged while it is committed (and share the
            // commit); the diff is done when everything it read or wrote is on disk.
            mark: begun.covering(staged),
            wrote,
            sentinel_gap: dag.sentinel.is_some() && plan.new_nodes == 0,
            started,
            strategy_id: input.strategy_id,
            new_nodes: plan.new_nodes,
            reused_nodes: plan.reused_nodes,
        };
        Ok(StagedDiff {
            outcome: DiffOutcome {
                sentinel_id,
                version,
                crc32: dag.crc32(),
                queue_map: plan.queue_map,
                buffer_nodes: plan.buffer_nodes,
                new_nodes: plan.new_nodes,
                reused_nodes: plan.reused_nodes,
            },
            commit,
        })
    }

    /// The namespace of the DAG's queues: with `topic_namespace` on and a world in the context,
    /// the one the DAG declares, else `{world}.{domain}`.
    fn namespace(&self, dag: &wire::Dag, context: &ComputeContext) -> Option<QueueNamespace> {
        (self.settings.topic_namespace && context.applies()).then(|| {
            dag.declared_namespace()
                .unwrap_or_else(|| QueueNamespace::WorldDomain {
                    world: context.world_id.clone(),
                    domain: context.execution_domain.clone(),
                })
        })
    }

    /// Fails the diff when it reuses a queue under a compute key the queue is not bound to,
    /// counting every such node.
    fn check_isolation(
        &self,
        violations: &[(String, String, String)],
        context: &ComputeContext,
    ) -> Result<(), DiffError> {
        let Some((node_id, queue, compute_key)) = violations.first().cloned() else {
            return Ok(());
        };
        for (node_id, _, _) in violations {
            self.metrics.cross_context_cache_hit(
                node_id,
                &context.world_id,
                &context.execution_domain,
                &context.as_of,
                &context.partition,
            );
        }
        Err(DiffError::CrossContext {
            node_id,
            queue,
            compute_key,
            others: violations.len() - 1,
        })
    }

    /// Gives the new queues their `names` (in order of `plan.unnamed`): in the queue map and in
    /// the queue records to stage. Returns the specs to create them with.
    fn record_new_queues(
        &self,
        plan: &mut Plan<'_>,
        names: Vec<String>,
        dag: &wire::Dag,
        namespace_key: &str,
        now: f64,
    ) -> Vec<QueueSpec> {
        let mut new_specs: Vec<QueueSpec> = Vec::with_capacity(plan.unnamed.len());
        // A DAG's nodes share a few types: each type's GC tag is worked out once.
        let mut tags_by_type: HashMap<&str, &'static str> = HashMap::default();
        for (new, name) in plan.unnamed.iter().zip(names) {
            let node = &dag.nodes[new.node];
            let tag = *tags_by_type
                .entry(node.node_type())
                .or_insert_with(|| QueueKind::of_node_type(node.node_type()).as_str());
            new_specs.push(self.settings.queue_spec(&name, GcTag::Borrowed(tag)));
            plan.changes.queues.push(QueueRecord {
                name: name.clone(),
                node_id: Some(node.node_id.clone()),
                namespace: namespace_key.to_owned(),
                tag: GcTag::Borrowed(tag),
                interval: node.fields.interval,
                tags: node.tags.clone(),
                created_at: now,
                compute_keys: new.compute_key.iter().map(|k| (*k).to_owned()).collect(),
                orphaned_at: None,
            });
            plan.queue_map[new.slot].1 = name;
        }
        new_specs
    }

    /// Creates the new queues (before the graph names them), counting a failure once per queue.
    async fn create_queues(&self, specs: Vec<QueueSpec>, now: f64) -> Result<(), DiffError> {
        let creating = specs.len();
        if creating == 0 {
            return Ok(());
        }
        self.queues
            .create_queues(specs, now)
            .instrument(tracing::info_span!(
                "dagmanager.topic_create",
                queues = creating
            ))
            .await
            .map_err(|error| {
                self.metrics
                    .queue_create_error_total
                    .increment(creating as u64);
                DiffError::QueueCreate(error)
            })
    }

    /// The strategy's sentinel record to stage, or `None` when the stored one already has this
    /// version, weight and set of nodes.
    async fn sentinel_change(
        &self,
        checked: &CheckedDag,
        strategy_id: &str,
        sentinel_id: &str,
        version: &str,
        now: f64,
    ) -> Result<Option<SentinelRecord>, StoreError> {
        let dag = &checked.dag;
        let weight = dag.sentinel.as_ref().and_then(|s| s.weight);
        let unchanged = self.store.sentinel(sentinel_id).await?.is_some_and(|old| {
            old.version == version
                && old.weight == weight
                && old.nodes_digest == checked.nodes_digest
        });
        Ok((!unchanged).then(|| SentinelRecord {
            sentinel_id: sentinel_id.to_owned(),
            strategy_id: strategy_id.to_owned(),
            version: version.to_owned(),
            weight,
            node_ids: checked
                .by_id
                .iter()
                .map(|&i| dag.nodes[i].node_id.clone())
                .collect(),
            nodes_digest: checked.nodes_digest.clone(),
            updated_at: now,
        }))
    }
}

/// What a diff plans from the stored graph, under the write lock: the changes to stage, the
/// answer's queue map (new queues still unnamed) and buffer instructions, and every reuse that
/// would cross compute contexts.
struct Plan<'a> {
    changes: GraphChanges,
    unnamed: Vec<Unnamed<'a>>,
    /// (partition key, queue) in topological order; a new queue's name is empty until named.
    queue_map: Vec<(String, String)>,
    buffer_nodes: Vec<BufferInstruction>,
    /// (node id, queue, compute key) of each queue reused under a compute key it is not bound to.
    violations: Vec<(String, String, String)>,
    new_nodes: usize,
    reused_nodes: usize,
}

impl<'a> Plan<'a> {
    /// Plans reuse for the DAG's nodes in topological `order`: `stored[position]` is what the
    /// graph holds for the node at `position`, `partition_keys[position]` its queue map key.
    fn reuse(
        dag: &wire::Dag,
        order: &[usize],
        stored: &[Option<StoredNode>],
        partition_keys: &'a [String],
        compute_keys_apply: bool,
        now: f64,
    ) -> Plan<'a> {
        let mut plan = Plan {
            changes: GraphChanges {
                nodes: Vec::with_capacity(order.len()),
                queues: Vec::with_capacity(order.len()),
                sentinel: None,
            },
            unnamed: Vec::with_capacity(order.len()),
            queue_map: Vec::with_capacity(order.len()),
            buffer_nodes: Vec::new(),
            violations: Vec::new(),
            new_nodes: 0,
            reused_nodes: 0,
        };
        for (position, &i) in order.iter().enumerate() {
            let node = &dag.nodes[i];
            let compute_key =
                compute_keys_apply.then(|| queue_compute_key(&partition_keys[position]));
            let key = partition_keys[position].clone();
            let existing = stored[position].as_ref();
            plan.node(node, existing, now);
            plan.queue(i, node, existing, key, compute_key);
        }
        plan
    }

    /// A new node is recorded; a reused one is recorded again (buffering) only when its schema
    /// changed.
    fn node(&mut self, node: &wire::Node, existing: Option<&StoredNode>, now: f64) {
        let Some(found) = existing else {
            self.new_nodes += 1;
            self.changes.nodes.push(NodeRecord {
                node_id: node.node_id.clone(),
                node_type: node.node_type().to_owned(),
                code_hash: node.fields.code_hash.clone(),
                schema_hash: node.schema_hash.clone(),
                schema_compat_id: node.fields.schema_compat_id.clone(),
                interval: node.fields.interval,
                period: node.fields.period,
                tags: node.tags.clone(),
                created_at: now,
                buffering_since: None,
            });
            return;
        };
        self.reused_nodes += 1;
        if found.node.schema_hash != node.schema_hash {
            self.buffer_nodes.push(BufferInstruction {
                node_id: node.node_id.clone(),
                node_type: node.node_type().to_owned(),
                code_hash: node.fields.code_hash.clone(),
                schema_hash: node.schema_hash.clone(),
                interval: node.fields.interval,
                period: i32::try_from(node.fields.period).unwrap_or(i32::MAX),
                tags: node.tags.clone(),
                lag: i32::try_from(node.fields.period).unwrap_or(i32::MAX),
                schema_compat_id: node.fields.schema_compat_id.clone(),
            });
            self.changes.nodes.push(NodeRecord {
                schema_hash: node.schema_hash.clone(),
                buffering_since: found.node.buffering_since.or(Some(now)),
                ..NodeRecord::clone(&found.node)
            });
        }
    }

    /// A stored queue is reused (bound to the compute key if it had none, or noted as a
    /// violation if bound to others); a node without one gets a queue named later.
    fn queue(
        &mut self,
        node_index: usize,
        node: &wire::Node,
        existing: Option<&StoredNode>,
        key: String,
        compute_key: Option<&'a str>,
    ) {
        let Some(queue) = existing.and_then(|found| found.queue.as_ref()) else {
            // Named later, once every new queue of this DAG is known.
            self.unnamed.push(Unnamed {
                slot: self.queue_map.len(),
                node: node_index,
                compute_key,
            });
            self.queue_map.push((key, String::new()));
            return;
        };
        if let Some(compute_key) = compute_key {
            if queue.compute_keys.is_empty() {
                self.changes.queues.push(QueueRecord {
                    compute_keys: vec![compute_key.to_owned()],
                    ..QueueRecord::clone(queue)
                });
            } else if !queue.compute_keys.iter().any(|k| k == compute_key) {
                self.violations.push((
                    node.node_id.clone(),
                    queue.name.clone(),
                    compute_key.to_owned(),
                ));
            }
        }
        self.queue_map.push((key, queue.name.clone()));
    }
}

/// A diff decided and staged (see [`DiffEngine::stage`]).
#[derive(Debug)]
#[must_use = "a staged diff is done only once its commit is settled"]
pub struct StagedDiff {
    pub outcome: DiffOutcome,
    commit: PendingCommit,
}

impl StagedDiff {
    pub fn into_parts(self) -> (DiffOutcome, PendingCommit) {
        (self.outcome, self.commit)
    }
}

/// What a staged diff waits for before it is done, and what it counts then.
#[derive(Debug)]
#[must_use = "a staged diff is done only once its commit is settled"]
pub struct PendingCommit {
    mark: crate::store::StoreMark,
    wrote: bool,
    sentinel_gap: bool,
    started: Instant,
    strategy_id: String,
    new_nodes: usize,
    reused_nodes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queues::EmbeddedQueueAdmin;
    use crate::settings::DagManagerSettings;
    use crate::store::EmbeddedGraphStore;

    fn engine(dir: &std::path::Path) -> (DiffEngine, EmbeddedGraphStore) {
        let store = EmbeddedGraphStore::open(dir).unwrap();
        let queues = EmbeddedQueueAdmin::open(dir).unwrap();
        let engine = DiffEngine::new(
            Arc::new(store.clone()),
            Arc::new(queues),
            DagManagerMetrics::new().unwrap(),
            DiffSettings::from(&DagManagerSettings::default()),
            Arc::new(kit::clock::SystemClock),
        );
        (engine, store)
    }

    fn input(strategy_id: &str, dag: &serde_json::Value) -> DiffInput {
        DiffInput {
            strategy_id: strategy_id.to_owned(),
            dag_json: dag.to_string(),
            context: ComputeContext::default(),
        }
    }

    /// A graph commit that fails must not leave queues behind that only memory knows: the diff
    /// fails with `E_GRAPH_STORE`, the next one reloads the graph from disk and creates the
    /// nodes for real, and a restart finds them.
    #[tokio::test]
    async fn a_failed_graph_commit_fails_its_diff_and_the_next_diff_starts_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let kept = test_support::synthetic_dag(5, "kept");
        let lost = test_support::synthetic_dag(5, "lost");
        let redone = {
            let (engine, store) = engine(dir.path());
            engine.diff(input("a", &kept)).await.unwrap();

            store.db().fail_next_commits(1);
            let error = engine.diff(input("b", &lost)).await.unwrap_err();
            assert_eq!(error.code(), "E_GRAPH_STORE");
            assert_eq!(store.counts().await.unwrap(), (10, 10), "still in memory");

            let redone = engine.diff(input("b", &lost)).await.unwrap();
            assert_eq!(redone.new_nodes, 5, "the lost nodes were created again");
            let again = engine.diff(input("a", &kept)).await.unwrap();
            assert_eq!(again.reused_nodes, 5);
            redone
        };
        let (engine, store) = engine(dir.path());
        assert_eq!(store.counts().await.unwrap(), (10, 10));
        let after_restart = engine.diff(input("b", &lost)).await.unwrap();
        assert_eq!(after_restart.queue_map, redone.queue_map);
        assert_eq!(after_restart.new_nodes, 0);
    }

    /// A node whose queue was orphaned (its strategy released) gets a new queue when it comes
    /// back, under the next free name: the orphan keeps its own until GC drops it.
    #[tokio::test]
    async fn a_returning_node_whose_queue_is_an_orphan_gets_the_next_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, store) = engine(dir.path());
        let dag = test_support::synthetic_dag(3, "returning");
        let first = engine.diff(input("a", &dag)).await.unwrap();
        let orphaned = engine.release_strategy("a").await.unwrap();
        assert_eq!(orphaned.len(), 3);

        let again = engine.diff(input("b", &dag)).await.unwrap();
        assert_eq!(again.new_nodes, 3);
        for ((_, old), (_, new)) in first.queue_map.iter().zip(&again.queue_map) {
            assert_ne!(old, new, "the orphan keeps its name");
            // The short hash grew by two digits: `{asset}_{type}_{short}_{version}`.
            let short = |name: &str| name.rsplit('_').nth(1).unwrap().len();
            assert_eq!(short(new), short(old) + 2, "{old} -> {new}");
        }
        let names: foldhash::HashSet<String> = store
            .queues()
            .await
            .unwrap()
            .into_iter()
            .map(|q| q.name)
            .collect();
        assert_eq!(names.len(), 6, "three orphans and three new queues");
    }

    /// Releasing a strategy removes only the nodes no other strategy's DAG holds; a shared node
    /// keeps its queue until its last strategy goes.
    #[tokio::test]
    async fn a_released_strategy_leaves_the_nodes_another_strategy_still_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, store) = engine(dir.path());
        let shared = test_support::synthetic_dag(4, "shared");
        let mut longer = shared.clone();
        let extra = test_support::synthetic_dag(1, "extra")["nodes"][0].clone();
        longer["nodes"].as_array_mut().unwrap().push(extra);
        engine.diff(input("a", &shared)).await.unwrap();
        let b = engine.diff(input("b", &longer)).await.unwrap();
        assert_eq!(b.reused_nodes, 4);
        assert_eq!(store.counts().await.unwrap(), (5, 5));

        assert!(
            engine.release_strategy("a").await.unwrap().is_empty(),
            "b holds them all"
        );
        let again = engine.diff(input("b", &longer)).await.unwrap();
        assert_eq!((again.new_nodes, again.queue_map), (0, b.queue_map.clone()));

        let orphaned = engine.release_strategy("b").await.unwrap();
        assert_eq!(orphaned.len(), 5);
        assert_eq!(
            store.counts().await.unwrap(),
            (0, 5),
            "nodes gone, queues orphaned"
        );
    }
}
