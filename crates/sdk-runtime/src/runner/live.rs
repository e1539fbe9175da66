//! The live run on the strategy's thread: compute each event, publish, acknowledge once delivered.

use kit::shutdown::Shutdown;
use metrics::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Mode, Outgoing, Phase};
use crate::metrics::{EventSource, SdkMetrics};
use crate::transport::{Ack, ProducerLease, Record, Transport, TransportError};
use crate::value::Value;

use super::RunError;
use super::forward::{Incoming, Inputs, Target};
use super::handle::StrategyHandle;
use super::plan::Plan;

/// Events taken from the channel at once: fewer wake-ups under load, no wait when idle.
const EVENT_BATCH: usize = 256;
/// Records read from queues are acknowledged in groups of at most this many ...
const ACK_BATCH: usize = 4096;
/// ... or at least this often, once their outputs are delivered.
const ACK_EVERY: Duration = Duration::from_millis(50);

/// What a strategy's handle asks of its running engine.
pub(super) enum Command {
    SwitchContext(wire::ComputeContext, oneshot::Sender<usize>),
}

/// Everything the strategy's thread runs on.
pub(super) struct LiveRun {
    pub(super) engine: Engine,
    /// Backfilled rows, replayed before the first live event.
    pub(super) history: Vec<(i64, usize, Value)>,
    pub(super) inputs: Inputs,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) metrics: Arc<SdkMetrics>,
    pub(super) leases: Vec<Box<dyn ProducerLease>>,
}

/// Runs the strategy live on a thread of its own until `stop` (or until its feeds and queues
/// end); its handle holds the plan and hears the run's end.
pub(super) fn run_live(
    run: LiveRun,
    plan: Plan,
    online: bool,
    stop: Shutdown,
) -> Result<StrategyHandle, RunError> {
    let (commands, command_rx) = mpsc::channel(4);
    let (finished, done) = oneshot::channel();
    let thread = spawn_live_thread(run, command_rx, plan.strategy_id.as_deref(), finished)?;
    Ok(StrategyHandle {
        plan,
        online,
        stop,
        commands,
        done,
        thread,
    })
}

/// Starts the strategy's thread, named after it; it sends how many events it took on
/// `finished` once every feed and queue has ended.
fn spawn_live_thread(
    run: LiveRun,
    commands: mpsc::Receiver<Command>,
    strategy_id: Option<&str>,
    finished: oneshot::Sender<u64>,
) -> Result<std::thread::JoinHandle<()>, RunError> {
    // Compute functions run on the strategy's own thread, never on the runtime's workers:
    // a slow one delays its strategy only.
    std::thread::Builder::new()
        .name(format!("strategy-{}", strategy_id.unwrap_or("offline")))
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
            let taken = runtime.block_on(Live::new(run, commands).run());
            let _ = finished.send(taken);
        })
        .map_err(|e| RunError::Crashed(format!("could not start the strategy's thread: {e}")))
}

/// The live loop's state.
struct Live {
    run: LiveRun,
    commands: mpsc::Receiver<Command>,
    feed_events: Counter,
    queue_events: Counter,
    published: Counter,
    publish_failures: Counter,
    outbox: Vec<Outgoing>,
    /// Live events taken in.
    taken: u64,
    last_warning: Option<Instant>,
    /// Acknowledgements of records whose outputs are not yet known to be delivered.
    acks: Vec<Ack>,
    /// Once an output is lost, no later input is acknowledged either: offsets are stored per
    /// partition in order, so acknowledging past a loss would commit it.
    acks_blocked: bool,
    last_flush: Instant,
}

impl Live {
    fn new(run: LiveRun, commands: mpsc::Receiver<Command>) -> Live {
        let feed_events = run.metrics.events(EventSource::Feed);
        let queue_events = run.metrics.events(EventSource::Queue);
        let (published, publish_failures) = run.metrics.published();
        Live {
            run,
            commands,
            feed_events,
            queue_events,
            published,
            publish_failures,
            outbox: Vec::new(),
            taken: 0,
            last_warning: None,
            acks: Vec::new(),
            acks_blocked: false,
            last_flush: Instant::now(),
        }
    }

    /// Takes events until every feed and queue has ended; returns how many it took.
    async fn run(mut self) -> u64 {
        self.replay_history();
        self.last_flush = Instant::now();
        let mut commands_open = true;
        let mut batch: Vec<Incoming> = Vec::with_capacity(EVENT_BATCH);
        loop {
            let received = tokio::select! {
                biased;
                command = self.commands.recv(), if commands_open => {
                    match command {
                        Some(Command::SwitchContext(context, reply)) => {
                            let _ = reply.send(self.run.engine.set_context(&context));
                        }
                        None => commands_open = false,
                    }
                    continue;
                }
                received = self.run.inputs.incoming.recv_many(&mut batch, EVENT_BATCH) => received,
            };
            if received == 0 {
                break;
            }
            let tracing = kit::trace::exporting();
            for event in batch.drain(..) {
                self.take(event, tracing).await;
            }
            self.flush_if_due().await;
        }
        self.finish().await
    }

    fn replay_history(&mut self) {
        let backfilled = self.run.metrics.events(EventSource::Backfill);
        for (at, node, value) in std::mem::take(&mut self.run.history) {
            backfilled.increment(1);
            self.run
                .engine
                .emit(node, at, value, Phase::Backfill, &mut self.outbox);
        }
    }

    /// One event through the engine, its outputs published, its acknowledgement queued.
    async fn take(&mut self, event: Incoming, tracing: bool) {
        if matches!(event.target, Target::Skip) {
            self.queue_ack(event.ack);
            return;
        }
        self.taken += 1;
        let span = if tracing {
            self.event_span(&event)
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
            self.compute(event.target, event.timestamp, event.value);
        }
        self.publish_outputs(traceparent).await;
        // At least once: a record is acknowledged only after its outputs are published.
        self.queue_ack(event.ack);
    }

    fn queue_ack(&mut self, ack: Option<Ack>) {
        if let Some(ack) = ack
            && !self.acks_blocked
        {
            self.acks.push(ack);
        }
    }

    /// With span export on, every event is a span: `node.feed` for a feed's bar, `node.process`
    /// for a record read from a queue, child of (and linked to) the producer's span. Outputs
    /// published meanwhile carry this span's context.
    fn event_span(&self, event: &Incoming) -> tracing::Span {
        let engine = &self.run.engine;
        let (node, from_queue) = match event.target {
            Target::Emit(node) => (node, engine.nodes()[node].mode == Mode::Read),
            Target::Deliver(_, _) | Target::Skip => (event.target.node(), true),
        };
        let node_id = engine.nodes()[node].node_id.as_str();
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
    }

    /// Runs the engine's wave for one live event, counted by where it came from.
    fn compute(&mut self, target: Target, timestamp: i64, value: Value) {
        let engine = &mut self.run.engine;
        match target {
            Target::Emit(node) => {
                if engine.nodes()[node].mode == Mode::Read {
                    self.queue_events.increment(1);
                } else {
                    self.feed_events.increment(1);
                }
                engine.emit(node, timestamp, value, Phase::Live, &mut self.outbox);
            }
            Target::Deliver(node, slot) => {
                self.queue_events.increment(1);
                engine.deliver(node, slot, timestamp, value, Phase::Live, &mut self.outbox);
            }
            Target::Skip => {}
        }
    }

    async fn publish_outputs(&mut self, traceparent: Option<String>) {
        // Taken out and put back, so the outbox keeps its allocation from event to event.
        let mut outbox = std::mem::take(&mut self.outbox);
        for out in outbox.drain(..) {
            let record = Record {
                payload: out.value,
                interval: out.interval,
                timestamp: out.timestamp,
                traceparent: traceparent.clone(),
            };
            match self.run.transport.publish(&out.topic, record).await {
                Ok(()) => self.published.increment(1),
                Err(error) => {
                    self.publish_failures.increment(1);
                    self.block_acks(&error);
                    if self
                        .last_warning
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                    {
                        tracing::warn!(topic = %out.topic, %error, "Publishing a node's output failed.");
                        self.last_warning = Some(Instant::now());
                    }
                }
            }
        }
        self.outbox = outbox;
    }

    /// Published outputs are delivered before the records that caused them are acknowledged.
    /// Acknowledgements wait for a batch of them (or a pause), so deliveries overlap.
    async fn flush_if_due(&mut self) {
        if !self.acks.is_empty()
            && (self.acks.len() >= ACK_BATCH
                || self.last_flush.elapsed() >= ACK_EVERY
                || self.run.inputs.incoming.is_empty())
        {
            self.flush_then_ack().await;
            self.last_flush = Instant::now();
        }
    }

    /// Delivers what is left, ends the retired subscriptions and gives the leases up.
    async fn finish(mut self) -> u64 {
        self.flush_then_ack().await;
        while let Ok(subscription) = self.run.inputs.retired.try_recv() {
            drop(subscription);
        }
        drop(self.run.leases);
        self.taken
    }

    /// Waits for every published output, then acknowledges the records that caused them. On a
    /// failed delivery they stay unacknowledged, and acknowledging stops.
    async fn flush_then_ack(&mut self) {
        match self.run.transport.flush().await {
            Ok(()) => {
                for ack in self.acks.drain(..) {
                    ack();
                }
            }
            Err(error) => {
                self.publish_failures.increment(1);
                self.acks.clear();
                self.block_acks(&error);
            }
        }
    }

    /// Stops acknowledging, for good: the records read since the last acknowledged one are read
    /// again when the strategy restarts.
    fn block_acks(&mut self, error: &TransportError) {
        self.acks.clear();
        if !self.acks_blocked {
            self.acks_blocked = true;
            tracing::error!(%error, "An output was not delivered: this strategy acknowledges no more input, so a restart reads it again from the last committed offset.");
        }
    }
}
