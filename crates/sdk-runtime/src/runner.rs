//! Running strategies: submit through the Gateway (or run offline), apply the queue map, backfill,
//! then feed live events through the engine until the feeds end or the runner is stopped.

use kit::shutdown::Shutdown;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::backfill::{BackfillJob, BackfillReport, run_jobs};
use crate::cache::bucket;
use crate::engine::{Engine, Mode, NodeSetup, Outgoing, Phase};
use crate::gateway_client::{GatewayClient, SubmitError};
use crate::metrics::{EventSource, SdkMetrics};
use crate::settings::SdkSettings;
use crate::source::{LiveFeed, unix_now};
use crate::strategy::{MatchMode, NodeKind, Strategy};
use crate::transport::{
    InProcessTransport, ProducerLease, Record, Subscription, Transport, TransportError,
};
use crate::value::Value;

/// Why a strategy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("queue `{topic}`: {source}")]
    Transport {
        topic: String,
        #[source]
        source: TransportError,
    },
    #[error("the strategy has stopped")]
    Stopped,
    #[error("the strategy's run ended abnormally: {0}")]
    Crashed(String),
    #[error(
        "a strategy submitted through the Gateway keeps its context; stop it and start it again in the new one (its queues are namespaced by context)"
    )]
    ContextFixedOnline,
    #[error("the metrics server could not listen on {address}: {source}")]
    MetricsServer {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

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

/// How a strategy's run ended.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub plan: Plan,
    /// Live events taken in.
    pub events: u64,
}

enum Command {
    SwitchContext(wire::ComputeContext, oneshot::Sender<usize>),
}

/// A running strategy.
#[derive(Debug)]
pub struct StrategyHandle {
    plan: Plan,
    online: bool,
    stop: Shutdown,
    commands: mpsc::Sender<Command>,
    done: oneshot::Receiver<u64>,
    thread: std::thread::JoinHandle<()>,
}

impl StrategyHandle {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs an offline strategy's nodes under a new compute context from now on. Every node
    /// whose cache holds data from another compute key is cleared (and counted); returns how
    /// many. A submitted strategy keeps its context: its queues belong to it.
    pub async fn switch_context(&self, context: wire::ComputeContext) -> Result<usize, RunError> {
        if self.online {
            return Err(RunError::ContextFixedOnline);
        }
        let (reply, cleared) = oneshot::channel();
        self.commands
            .send(Command::SwitchContext(context, reply))
            .await
            .map_err(|_| RunError::Stopped)?;
        cleared.await.map_err(|_| RunError::Stopped)
    }

    /// Stops taking new events; what is buffered is still processed and published.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the run to end (feeds exhausted and queues closed, or stopped).
    pub async fn join(self) -> Result<RunReport, RunError> {
        match self.done.await {
            Ok(events) => Ok(RunReport {
                plan: self.plan,
                events,
            }),
            Err(_) => {
                let reason = match self.thread.join() {
                    Err(panic) => panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "the engine thread panicked".into()),
                    Ok(()) => "the engine thread ended without a result".into(),
                };
                Err(RunError::Crashed(reason))
            }
        }
    }
}

/// Runs strategies: offline, or submitted through a Gateway with their queues on a transport.
#[derive(Debug, Clone)]
pub struct Runner {
    settings: SdkSettings,
    metrics: Arc<SdkMetrics>,
    gateway: Option<Arc<GatewayClient>>,
    transport: Arc<dyn Transport>,
    history_end: Option<i64>,
}

/// Where an event goes in the engine.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The node emits it (a stream's bar, a value read from the node's queue).
    Emit(usize),
    /// Into one ring of a node (a queue a tag query matched).
    Deliver(usize, usize),
    /// Nowhere: a record that could not be read, acknowledged in its turn.
    Skip,
}

struct Incoming {
    target: Target,
    timestamp: i64,
    value: Value,
    /// The producer's trace context, for records read from a queue.
    traceparent: Option<String>,
    ack: Option<crate::transport::Ack>,
}

impl Runner {
    /// Submits through the Gateway of `settings.gateway_url` when it is set (offline otherwise),
    /// with queues on `transport`. Needs a Tokio runtime.
    pub fn new(
        settings: SdkSettings,
        metrics: Arc<SdkMetrics>,
        transport: Arc<dyn Transport>,
    ) -> Runner {
        let gateway = settings
            .gateway()
            .map(|g| Arc::new(GatewayClient::new(g, &metrics)));
        Runner {
            settings,
            metrics,
            gateway,
            transport,
            history_end: None,
        }
    }

    /// Every node here, nothing submitted or published.
    pub fn offline(settings: SdkSettings, metrics: Arc<SdkMetrics>) -> Runner {
        Runner {
            settings: SdkSettings {
                gateway_url: String::new(),
                ..settings
            },
            metrics,
            gateway: None,
            transport: Arc::new(InProcessTransport::default()),
            history_end: None,
        }
    }

    /// Backfill up to this timestamp instead of the current bar.
    pub fn history_end(mut self, timestamp: i64) -> Runner {
        self.history_end = Some(timestamp);
        self
    }

    pub fn metrics(&self) -> &Arc<SdkMetrics> {
        &self.metrics
    }

    /// Starts the runtime's metrics server on `sdk.host:sdk.metrics_port` until `shutdown`;
    /// returns the address it listens on.
    pub async fn serve_metrics(&self, shutdown: Shutdown) -> Result<SocketAddr, RunError> {
        let (host, port) = (&self.settings.host, self.settings.metrics_port);
        crate::metrics::start_metrics_server(self.metrics.clone(), host, port, shutdown)
            .await
            .map_err(|source| RunError::MetricsServer {
                address: format!("{host}:{port}"),
                source,
            })
    }

    /// Runs a strategy to its end (feeds exhausted, or `shutdown`).
    pub async fn run(&self, strategy: Strategy, shutdown: Shutdown) -> Result<RunReport, RunError> {
        let handle = self.start(strategy).await?;
        let stop = handle.stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.triggered().await;
            stop.trigger();
        });
        let report = handle.join().await;
        watcher.abort();
        report
    }

    /// Submits (when connected), applies the queue map, backfills, and starts the live run.
    pub async fn start(&self, strategy: Strategy) -> Result<StrategyHandle, RunError> {
        let context = self.settings.context();
        // This strategy's own view of the transport: its flushes cover its outputs only.
        let transport = self.transport.clone().for_strategy();
        let submitted = match &self.gateway {
            Some(gateway) => {
                let span = tracing::info_span!(
                    "sdk.submit",
                    strategy = %strategy.name(),
                    world_id = %context.world_id,
                    execution_domain = %context.execution_domain,
                    strategy_id = tracing::field::Empty,
                );
                let submitted = gateway
                    .submit(
                        &strategy.dag_json(&context),
                        strategy.node_ids_crc32(),
                        &context,
                    )
                    .instrument(span.clone())
                    .await?;
                span.record("strategy_id", submitted.strategy_id.as_str());
                Some(submitted)
            }
            None => None,
        };
        let mut setups = Vec::with_capacity(strategy.nodes.len());
        let mut feeds: Vec<(usize, Box<dyn LiveFeed>)> = Vec::new();
        let mut jobs = Vec::new();
        let mut queries: Vec<(usize, Vec<String>, MatchMode)> = Vec::new();
        let warmup = self.warmup_bars(&strategy);
        let history_end = self.history_end.unwrap_or_else(unix_now);
        let mut tags: Vec<Vec<String>> = Vec::new();
        let mut streams: HashSet<usize> = HashSet::new();
        for (index, def) in strategy.nodes.into_iter().enumerate() {
            let compute = match def.kind {
                NodeKind::Stream { history, live } => {
                    streams.insert(index);
                    if let Some(provider) = history {
                        jobs.push(BackfillJob {
                            node: index,
                            node_id: def.node_id.clone(),
                            interval: def.interval,
                            bars: warmup.max(def.period as i64),
                            end: bucket(history_end, def.interval),
                            provider,
                        });
                    }
                    if let Some(feed) = live {
                        feeds.push((index, feed));
                    }
                    None
                }
                NodeKind::Compute(compute) => Some(compute),
                NodeKind::TagQuery {
                    tags,
                    match_mode,
                    compute,
                } => {
                    queries.push((index, tags, match_mode));
                    Some(compute)
                }
            };
            tags.push(def.tags);
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
        let mut engine = Engine::new(setups, self.metrics.clone(), &context);

        // Apply the queue map: claim each queue we could produce, read the others.
        let mut leases: Vec<Box<dyn ProducerLease>> = Vec::new();
        let mut reads: Vec<(Target, String)> = Vec::new();
        let fed: HashSet<usize> = feeds.iter().map(|(i, _)| *i).collect();
        let query_nodes: HashSet<usize> = queries.iter().map(|(i, _, _)| *i).collect();
        if let Some(submitted) = &submitted {
            for index in 0..engine.nodes().len() {
                // A tag query's queue map entry is the queues it matched, not a queue of its
                // own: it always runs here, reading them.
                if query_nodes.contains(&index) {
                    continue;
                }
                let node_id = engine.nodes()[index].node_id.clone();
                let Some(topic) = submitted
                    .queue_map
                    .get(&node_id)
                    .and_then(|q| q.first())
                    .map(|q| q.queue.clone())
                else {
                    continue;
                };
                // A stream without a feed here is fed by someone else: read it.
                let lease = if streams.contains(&index) && !fed.contains(&index) {
                    None
                } else {
                    transport.claim_producer(&topic).await.map_err(|source| {
                        RunError::Transport {
                            topic: topic.clone(),
                            source,
                        }
                    })?
                };
                let node = engine.node_mut(index);
                match lease {
                    Some(lease) => {
                        leases.push(lease);
                        node.publish = Some(topic.clone());
                    }
                    None => {
                        node.mode = Mode::Read;
                        reads.push((Target::Emit(index), topic));
                    }
                }
            }
            for (index, _, _) in &queries {
                let node_id = engine.nodes()[*index].node_id.clone();
                let interval = engine.nodes()[*index].interval;
                for queue in submitted.queue_map.get(&node_id).into_iter().flatten() {
                    let slot =
                        engine.add_external_slot(*index, None, queue.queue.clone(), interval);
                    reads.push((Target::Deliver(*index, slot), queue.queue.clone()));
                }
            }
        } else {
            // Offline, a tag query reads the earlier nodes of the strategy whose tags match.
            for (index, wanted, mode) in &queries {
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

        // Subscribe before backfill, so records published meanwhile wait in the subscription.
        let group = format!(
            "{}.{}",
            self.settings.consumer_group,
            submitted
                .as_ref()
                .map_or("offline", |s| s.strategy_id.as_str())
        );
        let mut subscriptions = Vec::with_capacity(reads.len());
        for (target, topic) in reads {
            let subscription = transport
                .subscribe(&topic, &group)
                .await
                .map_err(|source| RunError::Transport {
                    topic: topic.clone(),
                    source,
                })?;
            subscriptions.push((target, topic, subscription));
        }

        // Backfill: fetched here, replayed by the engine's thread before live data flows.
        let (history, reports) =
            run_jobs(jobs, self.settings.backfill_policy(), &self.metrics).await;

        let plan = Plan {
            strategy_id: submitted.as_ref().map(|s| s.strategy_id.clone()),
            duplicate: submitted.as_ref().is_some_and(|s| s.duplicate),
            downgrade_reason: submitted.as_ref().and_then(|s| s.downgrade_reason.clone()),
            nodes: engine
                .nodes()
                .iter()
                .enumerate()
                .map(|(index, n)| NodePlan {
                    name: n.name.clone(),
                    node_id: n.node_id.clone(),
                    mode: n.mode,
                    topic: submitted
                        .as_ref()
                        .filter(|_| !query_nodes.contains(&index))
                        .and_then(|s| {
                            s.queue_map
                                .get(&n.node_id)
                                .and_then(|q| q.first())
                                .map(|q| q.queue.clone())
                        }),
                })
                .collect(),
            backfill: reports,
        };
        for node in &plan.nodes {
            tracing::debug!(node = %node.name, node_id = %node.node_id, mode = ?node.mode, topic = ?node.topic, "Node planned.");
        }

        // Live: feeds of the streams we produce, and the queues we read.
        let stop = Shutdown::new();
        let (events, incoming) = mpsc::channel::<Incoming>(self.settings.queue_depth.max(1));
        for (index, feed) in feeds {
            if engine.nodes()[index].mode == Mode::Read {
                tracing::debug!(node = %engine.nodes()[index].name, "Another runner produces this stream; its live feed is not used.");
                continue;
            }
            tokio::spawn(forward_feed(
                Target::Emit(index),
                feed,
                events.clone(),
                stop.clone(),
            ));
        }
        // A forwarder that stops hands its subscription back: it ends (committing what was
        // acknowledged) only after the engine has acknowledged everything it took.
        let (retired, retired_rx) = mpsc::unbounded_channel::<Box<dyn Subscription>>();
        for (target, topic, subscription) in subscriptions {
            tokio::spawn(forward_queue(
                target,
                topic,
                subscription,
                events.clone(),
                stop.clone(),
                retired.clone(),
                self.metrics.queue_read_errors(),
            ));
        }
        drop(retired);
        drop(events);
        let (commands, command_rx) = mpsc::channel(4);
        let (finished, done) = oneshot::channel();
        let run = LiveRun {
            engine,
            history,
            retired: retired_rx,
            incoming,
            commands: command_rx,
            transport,
            metrics: self.metrics.clone(),
            leases,
        };
        // Compute functions run on the strategy's own thread, never on the runtime's workers:
        // a slow one delays its strategy only.
        let thread = std::thread::Builder::new()
            .name(format!(
                "strategy-{}",
                plan.strategy_id.as_deref().unwrap_or("offline")
            ))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "Could not start the strategy's runtime.");
                        return;
                    }
                };
                let taken = runtime.block_on(live(run));
                let _ = finished.send(taken);
            })
            .map_err(|e| {
                RunError::Crashed(format!("could not start the strategy's thread: {e}"))
            })?;
        Ok(StrategyHandle {
            plan,
            online: submitted.is_some(),
            stop,
            commands,
            done,
            thread,
        })
    }

    /// Bars of history that make every node ready: along each path, a node of period `p` needs
    /// `p - 1` bars more than its inputs. `sdk.backfill_bars` overrides it.
    fn warmup_bars(&self, strategy: &Strategy) -> i64 {
        if self.settings.backfill_bars > 0 {
            return self.settings.backfill_bars as i64;
        }
        let mut need: Vec<i64> = Vec::with_capacity(strategy.nodes.len());
        for def in &strategy.nodes {
            let from_inputs = def
                .inputs
                .iter()
                .map(|i| need[i.index()])
                .max()
                .unwrap_or(1);
            let own = match def.kind {
                NodeKind::Stream { .. } => def.period as i64,
                _ => from_inputs + def.period as i64 - 1,
            };
            need.push(own.max(1));
        }
        need.into_iter().max().unwrap_or(1)
    }
}

async fn forward_feed(
    target: Target,
    mut feed: Box<dyn LiveFeed>,
    events: mpsc::Sender<Incoming>,
    stop: Shutdown,
) {
    let stopped = stop.triggered();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => return,
            next = feed.next() => next,
        };
        let Some((timestamp, value)) = next else {
            return;
        };
        let event = Incoming {
            target,
            timestamp,
            value,
            traceparent: None,
            ack: None,
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

async fn forward_queue(
    target: Target,
    topic: String,
    mut subscription: Box<dyn Subscription>,
    events: mpsc::Sender<Incoming>,
    stop: Shutdown,
    retired: mpsc::UnboundedSender<Box<dyn Subscription>>,
    read_errors: metrics::Counter,
) {
    forward_records(
        target,
        &topic,
        subscription.as_mut(),
        &events,
        stop,
        &read_errors,
    )
    .await;
    // Handed back before `events` is dropped, so the engine has it when its loop ends.
    let _ = retired.send(subscription);
    drop(events);
}

async fn forward_records(
    target: Target,
    topic: &str,
    subscription: &mut dyn Subscription,
    events: &mpsc::Sender<Incoming>,
    stop: Shutdown,
    read_errors: &metrics::Counter,
) {
    let stopped = stop.triggered();
    tokio::pin!(stopped);
    let mut last_warning: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            biased;
            () = &mut stopped => return,
            next = subscription.next() => next,
        };
        match next {
            None => return,
            Some(Ok(delivery)) => {
                let event = match delivery.into_parts() {
                    (Some(record), ack) => Incoming {
                        target,
                        timestamp: record.timestamp,
                        value: record.payload,
                        traceparent: record.traceparent,
                        ack,
                    },
                    // Unreadable: only its acknowledgement travels, to keep its place in order.
                    (None, ack) => Incoming {
                        target: Target::Skip,
                        timestamp: 0,
                        value: Value::Number(0.0),
                        traceparent: None,
                        ack,
                    },
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Some(Err(error)) => {
                read_errors.increment(1);
                if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(%topic, %error, "Reading a queue failed; retrying.");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Events taken from the channel at once: fewer wake-ups under load, no wait when idle.
const EVENT_BATCH: usize = 256;
/// Records read from queues are acknowledged in groups of at most this many ...
const ACK_BATCH: usize = 4096;
/// ... or at least this often, once their outputs are delivered.
const ACK_EVERY: Duration = Duration::from_millis(50);

/// Waits for every published output, then acknowledges the records that caused them. On a
/// failed delivery they stay unacknowledged (and the caller stops acknowledging).
async fn flush_then_ack(
    transport: &Arc<dyn Transport>,
    acks: &mut Vec<crate::transport::Ack>,
    failures: &metrics::Counter,
) -> Result<(), TransportError> {
    match transport.flush().await {
        Ok(()) => {
            for ack in acks.drain(..) {
                ack();
            }
            Ok(())
        }
        Err(error) => {
            failures.increment(1);
            acks.clear();
            Err(error)
        }
    }
}

/// Stops acknowledging, for good: the records read since the last acknowledged one are read
/// again when the strategy restarts.
fn block_acks(blocked: &mut bool, acks: &mut Vec<crate::transport::Ack>, error: &TransportError) {
    acks.clear();
    if !*blocked {
        *blocked = true;
        tracing::error!(%error, "An output was not delivered: this strategy acknowledges no more input, so a restart reads it again from the last committed offset.");
    }
}

/// The node an event is for.
fn node_of(target: Target) -> usize {
    match target {
        Target::Emit(node) | Target::Deliver(node, _) => node,
        Target::Skip => 0,
    }
}

struct LiveRun {
    engine: Engine,
    /// Backfilled rows, replayed before the first live event.
    history: Vec<(i64, usize, Value)>,
    /// Subscriptions of stopped forwarders, ended once every acknowledgement is in.
    retired: mpsc::UnboundedReceiver<Box<dyn Subscription>>,
    incoming: mpsc::Receiver<Incoming>,
    commands: mpsc::Receiver<Command>,
    transport: Arc<dyn Transport>,
    metrics: Arc<SdkMetrics>,
    leases: Vec<Box<dyn ProducerLease>>,
}

/// Takes events until every feed and queue has ended; returns how many it took.
async fn live(mut run: LiveRun) -> u64 {
    let feed_events = run.metrics.events(EventSource::Feed);
    let queue_events = run.metrics.events(EventSource::Queue);
    let (published, publish_failures) = run.metrics.published();
    let mut outbox: Vec<Outgoing> = Vec::new();
    let backfilled = run.metrics.events(EventSource::Backfill);
    for (at, node, value) in std::mem::take(&mut run.history) {
        backfilled.increment(1);
        run.engine
            .emit(node, at, value, Phase::Backfill, &mut outbox);
    }
    let mut taken = 0u64;
    let mut last_warning: Option<Instant> = None;
    let mut commands_open = true;
    let mut batch: Vec<Incoming> = Vec::with_capacity(EVENT_BATCH);
    let mut acks: Vec<crate::transport::Ack> = Vec::new();
    let mut last_flush = Instant::now();
    // Once an output is lost, no later input is acknowledged either: offsets are stored per
    // partition in order, so acknowledging past a loss would commit it.
    let mut acks_blocked = false;
    loop {
        let received = tokio::select! {
            biased;
            command = run.commands.recv(), if commands_open => {
                match command {
                    Some(Command::SwitchContext(context, reply)) => {
                        let _ = reply.send(run.engine.set_context(&context));
                    }
                    None => commands_open = false,
                }
                continue;
            }
            received = run.incoming.recv_many(&mut batch, EVENT_BATCH) => received,
        };
        if received == 0 {
            break;
        }
        let tracing = kit::trace::exporting();
        for event in batch.drain(..) {
            if matches!(event.target, Target::Skip) {
                if let Some(ack) = event.ack
                    && !acks_blocked
                {
                    acks.push(ack);
                }
                continue;
            }
            taken += 1;
            // With span export on, every event is a span: `node.feed` for a feed's bar,
            // `node.process` for a record read from a queue, child of (and linked to) the
            // producer's span. Outputs published meanwhile carry this span's context.
            let span = if tracing {
                let (node, from_queue) = match event.target {
                    Target::Emit(node) => (node, run.engine.nodes()[node].mode == Mode::Read),
                    Target::Deliver(_, _) | Target::Skip => (node_of(event.target), true),
                };
                let node_id = run.engine.nodes()[node].node_id.as_str();
                let span = if from_queue {
                    tracing::info_span!(
                        "node.process",
                        otel.kind = "consumer",
                        node_id,
                        timestamp = event.timestamp
                    )
                } else {
                    tracing::info_span!(
                        "node.feed",
                        otel.kind = "producer",
                        node_id,
                        timestamp = event.timestamp
                    )
                };
                if let Some(parent) = &event.traceparent {
                    kit::trace::continue_from(&span, Some(parent), None);
                    kit::trace::link_to(&span, parent);
                }
                span
            } else {
                tracing::Span::none()
            };
            let traceparent = if tracing {
                kit::trace::traceparent_of(&span)
            } else {
                None
            };
            {
                let _entered = span.enter();
                match event.target {
                    Target::Emit(node) => {
                        if run.engine.nodes()[node].mode == Mode::Read {
                            queue_events.increment(1);
                        } else {
                            feed_events.increment(1);
                        }
                        run.engine.emit(
                            node,
                            event.timestamp,
                            event.value,
                            Phase::Live,
                            &mut outbox,
                        );
                    }
                    Target::Deliver(node, slot) => {
                        queue_events.increment(1);
                        run.engine.deliver(
                            node,
                            slot,
                            event.timestamp,
                            event.value,
                            Phase::Live,
                            &mut outbox,
                        );
                    }
                    Target::Skip => {}
                }
            }
            for out in outbox.drain(..) {
                let record = Record {
                    payload: out.value,
                    interval: out.interval,
                    timestamp: out.timestamp,
                    traceparent: traceparent.clone(),
                };
                match run.transport.publish(&out.topic, record).await {
                    Ok(()) => published.increment(1),
                    Err(error) => {
                        publish_failures.increment(1);
                        block_acks(&mut acks_blocked, &mut acks, &error);
                        if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            tracing::warn!(topic = %out.topic, %error, "Publishing a node's output failed.");
                            last_warning = Some(Instant::now());
                        }
                    }
                }
            }
            // At least once: a record is acknowledged only after its outputs are published.
            if let Some(ack) = event.ack
                && !acks_blocked
            {
                acks.push(ack);
            }
        }
        // Published outputs are delivered before the records that caused them are acknowledged.
        // Acknowledgements wait for a batch of them (or a pause), so deliveries overlap.
        if !acks.is_empty()
            && (acks.len() >= ACK_BATCH
                || last_flush.elapsed() >= ACK_EVERY
                || run.incoming.is_empty())
        {
            if let Err(error) = flush_then_ack(&run.transport, &mut acks, &publish_failures).await {
                block_acks(&mut acks_blocked, &mut acks, &error);
            }
            last_flush = Instant::now();
        }
    }
    if let Err(error) = flush_then_ack(&run.transport, &mut acks, &publish_failures).await {
        block_acks(&mut acks_blocked, &mut acks, &error);
    }
    while let Ok(subscription) = run.retired.try_recv() {
        drop(subscription);
    }
    drop(run.leases);
    taken
}
