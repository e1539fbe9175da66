//! The synchronous core: nodes in topological order, their caches, and one wave of computation
//! per incoming event. No I/O here; the runner feeds it and publishes what it returns.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{Append, CacheView, NodeCache, WallClock, bucket};
use crate::metrics::{NodeMetrics, SdkMetrics};
use crate::strategy::{ComputeFn, NodeRef, Observer};
use crate::value::Value;

/// Whether the engine is replaying history or running live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Every node computes; nothing is published.
    Backfill,
    /// Nodes read from queues do not compute; produced nodes publish.
    Live,
}

/// How a node runs while live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Computed here (or, for a stream, fed here).
    Local,
    /// Read from its queue, which another runner produces.
    Read,
}

/// An output to publish to a queue.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) timestamp: i64,
    pub(crate) interval: i64,
    pub(crate) value: Value,
}

/// Compute failures are logged at most this often per node; every one is counted.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct NodeRt {
    pub(crate) node_id: String,
    pub(crate) name: String,
    pub(crate) interval: i64,
    pub(crate) mode: Mode,
    pub(crate) publish: Option<String>,
    cache: NodeCache,
    compute: Option<ComputeFn>,
    observers: Vec<Observer>,
    downstream: Vec<(usize, usize)>,
    metrics: NodeMetrics,
    reported_bytes: usize,
    context: wire::ComputeContext,
    failures_unlogged: u64,
    last_failure_log: Option<Instant>,
}

/// What the runner hands the engine for each node, in definition order.
pub(crate) struct NodeSetup {
    pub(crate) node_id: String,
    pub(crate) name: String,
    pub(crate) interval: i64,
    pub(crate) period: usize,
    pub(crate) inputs: Vec<NodeRef>,
    pub(crate) compute: Option<ComputeFn>,
    pub(crate) observers: Vec<Observer>,
}

pub(crate) struct Engine {
    nodes: Vec<NodeRt>,
    metrics: Arc<SdkMetrics>,
    clock: WallClock,
    dirty: Vec<Option<i64>>,
    high_water: usize,
}

impl Engine {
    pub(crate) fn new(
        setups: Vec<NodeSetup>,
        metrics: Arc<SdkMetrics>,
        context: &wire::ComputeContext,
    ) -> Engine {
        let mut nodes: Vec<NodeRt> = Vec::with_capacity(setups.len());
        for setup in setups {
            let index = nodes.len();
            let mut cache = NodeCache::new(setup.period);
            for input in &setup.inputs {
                let upstream = &mut nodes[input.index()];
                let slot = cache.add_slot(
                    Some(*input),
                    upstream.node_id.clone(),
                    upstream.interval,
                    metrics.slot(&upstream.node_id, upstream.interval),
                );
                upstream.downstream.push((index, slot));
            }
            nodes.push(NodeRt {
                metrics: metrics.node(&setup.node_id),
                node_id: setup.node_id,
                name: setup.name,
                interval: setup.interval,
                mode: Mode::Local,
                publish: None,
                cache,
                compute: setup.compute,
                observers: setup.observers,
                downstream: Vec::new(),
                reported_bytes: 0,
                context: context.clone(),
                failures_unlogged: 0,
                last_failure_log: None,
            });
        }
        Engine {
            dirty: vec![None; nodes.len()],
            nodes,
            metrics,
            clock: WallClock::new(),
            high_water: 0,
        }
    }

    pub(crate) fn nodes(&self) -> &[NodeRt] {
        &self.nodes
    }

    pub(crate) fn node_mut(&mut self, index: usize) -> &mut NodeRt {
        &mut self.nodes[index]
    }

    /// Adds a ring to `node` fed by `deliver` (a tag query's matched queue or local node).
    pub(crate) fn add_external_slot(
        &mut self,
        node: usize,
        upstream: Option<usize>,
        label: String,
        interval: i64,
    ) -> usize {
        let metrics = self.metrics.slot(&label, interval);
        let slot = self.nodes[node]
            .cache
            .add_slot(None, label, interval, metrics);
        if let Some(upstream) = upstream {
            self.nodes[upstream].downstream.push((node, slot));
        }
        slot
    }

    /// `node` emits `value` at `timestamp` (a stream's bar, or a value read from its queue),
    /// and every node downstream that becomes due computes, in topological order.
    pub(crate) fn emit(
        &mut self,
        node: usize,
        timestamp: i64,
        value: Value,
        phase: Phase,
        outbox: &mut Vec<Outgoing>,
    ) {
        let at = bucket(timestamp, self.nodes[node].interval);
        self.fan_out(node, at, value, phase, outbox);
        self.run_wave(node + 1, phase, outbox);
    }

    /// A value for one ring of `node` from outside the strategy (a queue a tag query matched).
    pub(crate) fn deliver(
        &mut self,
        node: usize,
        slot: usize,
        timestamp: i64,
        value: Value,
        phase: Phase,
        outbox: &mut Vec<Outgoing>,
    ) {
        if self.offer(node, slot, timestamp, value) {
            self.high_water = self.high_water.max(node);
            self.run_wave(node, phase, outbox);
        }
    }

    /// Clears the cache of every node whose context changes while it holds data, counting
    /// `cross_context_cache_hit_total`; returns how many were cleared.
    pub(crate) fn set_context(&mut self, context: &wire::ComputeContext) -> usize {
        let mut cleared = 0;
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            if same_compute_key(&node.context, context) {
                continue;
            }
            if !node.cache.is_empty() {
                node.cache.clear();
                self.metrics
                    .cross_context(&node.node_id, context)
                    .increment(1);
                tracing::warn!(
                    node_id = %node.node_id,
                    node = %node.name,
                    world_id = %context.world_id,
                    execution_domain = %context.execution_domain,
                    "Compute context changed: the node's cache was cleared."
                );
                cleared += 1;
            }
            node.context = context.clone();
            self.report_bytes(index);
        }
        cleared
    }

    fn fan_out(
        &mut self,
        node: usize,
        at: i64,
        value: Value,
        phase: Phase,
        outbox: &mut Vec<Outgoing>,
    ) {
        let source = &mut self.nodes[node];
        for observer in &mut source.observers {
            let seen = QuietPanics::run(|| observer(at, &value));
            if let Err(panic) = seen {
                source.metrics.observer_failures.increment(1);
                tracing::warn!(
                    node_id = %source.node_id,
                    node = %source.name,
                    error = %panic_message(panic.as_ref()),
                    "An observer panicked; the value still flows downstream."
                );
            }
        }
        if phase == Phase::Live
            && let Some(topic) = &source.publish
        {
            outbox.push(Outgoing {
                topic: topic.clone(),
                timestamp: at,
                interval: source.interval,
                value: value.clone(),
            });
        }
        for i in 0..self.nodes[node].downstream.len() {
            let (target, slot) = self.nodes[node].downstream[i];
            if phase == Phase::Live && self.nodes[target].mode == Mode::Read {
                continue;
            }
            if self.offer(target, slot, at, value.clone()) {
                self.high_water = self.high_water.max(target);
            }
        }
    }

    /// Appends to a ring; marks the node due when it took the value.
    fn offer(&mut self, node: usize, slot: usize, timestamp: i64, value: Value) -> bool {
        let target = &mut self.nodes[node];
        let outcome = target.cache.append(slot, timestamp, value);
        match outcome {
            Append::OutOfOrder => {
                target.metrics.out_of_order.increment(1);
                return false;
            }
            Append::AppendedAfterGap => target.metrics.gaps.increment(1),
            Append::Appended | Append::Replaced => {}
        }
        let due = bucket(timestamp, target.interval);
        self.dirty[node] = Some(self.dirty[node].map_or(due, |t| t.max(due)));
        self.report_bytes(node);
        true
    }

    fn report_bytes(&mut self, node: usize) {
        let target = &mut self.nodes[node];
        let now = target.cache.resident_bytes();
        if now != target.reported_bytes {
            let delta = now as i64 - target.reported_bytes as i64;
            target.reported_bytes = now;
            self.metrics.add_resident(&target.metrics, delta);
        }
    }

    fn run_wave(&mut self, from: usize, phase: Phase, outbox: &mut Vec<Outgoing>) {
        let mut index = from;
        while index <= self.high_water && index < self.nodes.len() {
            if let Some(at) = self.dirty[index].take()
                && let Some(output) = self.compute(index)
            {
                self.fan_out(index, at, output, phase, outbox);
            }
            index += 1;
        }
        self.high_water = 0;
    }

    fn compute(&mut self, index: usize) -> Option<Value> {
        let clock = self.clock;
        let node = &mut self.nodes[index];
        let NodeRt {
            compute: Some(compute),
            cache,
            metrics,
            ..
        } = node
        else {
            return None;
        };
        if !cache.is_ready() {
            return None;
        }
        let started = Instant::now();
        let view = CacheView::new(cache, clock, started);
        let result = QuietPanics::run(|| compute(&view));
        metrics
            .duration_ms
            .record(started.elapsed().as_secs_f64() * 1000.0);
        let failure = match result {
            Ok(Ok(output)) => {
                metrics.processed.increment(1);
                return output;
            }
            Ok(Err(error)) => error.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
        };
        metrics.failures.increment(1);
        node.failures_unlogged += 1;
        if node
            .last_failure_log
            .is_none_or(|at| started.duration_since(at) >= FAILURE_LOG_EVERY)
        {
            tracing::warn!(
                node_id = %node.node_id,
                node = %node.name,
                failures = node.failures_unlogged,
                error = %failure,
                "Compute function failed; the node skips this bar and keeps running."
            );
            node.failures_unlogged = 0;
            node.last_failure_log = Some(started);
        }
        None
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for node in &self.nodes {
            self.metrics
                .add_resident(&node.metrics, -(node.reported_bytes as i64));
            if node.failures_unlogged > 0 {
                tracing::warn!(
                    node_id = %node.node_id,
                    node = %node.name,
                    failures = node.failures_unlogged,
                    "Compute function failures since the last report."
                );
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Whether two contexts give a node the same compute key (wire.md section 4): world, normalised
/// domain, as_of and partition. The dataset fingerprint is not part of it.
fn same_compute_key(a: &wire::ComputeContext, b: &wire::ComputeContext) -> bool {
    let domain = |c: &wire::ComputeContext| {
        wire::Domain::parse(&c.execution_domain).unwrap_or(wire::Domain::Backtest)
    };
    a.world_id == b.world_id
        && domain(a) == domain(b)
        && a.as_of == b.as_of
        && a.partition == b.partition
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs user code, turning a panic into an error without the default hook's report: the engine
/// counts and logs it, rate-limited, instead of a message (and backtrace) per bar.
struct QuietPanics;

impl QuietPanics {
    fn run<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    previous(info);
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        let result = catch_unwind(AssertUnwindSafe(f));
        QUIET.with(|q| q.set(false));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compute_key_ignores_the_fingerprint_and_domain_spelling() {
        let base = wire::ComputeContext {
            world_id: "w".into(),
            execution_domain: "backtest".into(),
            ..wire::ComputeContext::default()
        };
        let fingerprinted = wire::ComputeContext {
            dataset_fingerprint: "abc".into(),
            execution_domain: "default".into(),
            ..base.clone()
        };
        assert!(same_compute_key(&base, &fingerprinted));
        let elsewhere = wire::ComputeContext {
            world_id: "w2".into(),
            ..base.clone()
        };
        assert!(!same_compute_key(&base, &elsewhere));
    }
}
