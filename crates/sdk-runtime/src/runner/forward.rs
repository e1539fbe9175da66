//! The forwarders: one task per live feed and per queue read, carrying events to the engine.

use kit::shutdown::Shutdown;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::engine::{Engine, Mode};
use crate::metrics::SdkMetrics;
use crate::source::LiveFeed;
use crate::transport::{Ack, Subscription, Transport};
use crate::value::Value;

use super::RunError;

/// Where an event goes in the engine.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// The node emits it (a stream's bar, a value read from the node's queue).
    Emit(usize),
    /// Into one ring of a node (a queue a tag query matched).
    Deliver(usize, usize),
    /// Nowhere: a record that could not be read, acknowledged in its turn.
    Skip,
}

impl Target {
    /// The node an event is for.
    pub(super) fn node(self) -> usize {
        match self {
            Target::Emit(node) | Target::Deliver(node, _) => node,
            Target::Skip => 0,
        }
    }
}

pub(super) struct Incoming {
    pub(super) target: Target,
    pub(super) timestamp: i64,
    pub(super) value: Value,
    /// The producer's trace context, for records read from a queue.
    pub(super) traceparent: Option<String>,
    pub(super) ack: Option<Ack>,
}

/// A queue read into the engine, subscribed before backfill.
pub(super) type QueueRead = (Target, String, Box<dyn Subscription>);

/// Subscribes to every queue to read, in consumer group `group`.
pub(super) async fn subscribe(
    transport: &dyn Transport,
    reads: Vec<(Target, String)>,
    group: &str,
) -> Result<Vec<QueueRead>, RunError> {
    let mut subscriptions = Vec::with_capacity(reads.len());
    for (target, topic) in reads {
        let subscription =
            transport
                .subscribe(&topic, group)
                .await
                .map_err(|source| RunError::Transport {
                    topic: topic.clone(),
                    source,
                })?;
        subscriptions.push((target, topic, subscription));
    }
    Ok(subscriptions)
}

/// What the engine's thread receives from the forwarders.
pub(super) struct Inputs {
    pub(super) incoming: mpsc::Receiver<Incoming>,
    /// Subscriptions of stopped forwarders, ended once every acknowledgement is in.
    pub(super) retired: mpsc::UnboundedReceiver<Box<dyn Subscription>>,
}

/// Starts a forwarder for each feed of a stream produced here and for each queue read; they
/// stop on `stop`. A channel of `depth` events carries them to the engine.
pub(super) fn start_forwarders(
    engine: &Engine,
    feeds: Vec<(usize, Box<dyn LiveFeed>)>,
    subscriptions: Vec<QueueRead>,
    stop: &Shutdown,
    depth: usize,
    metrics: &SdkMetrics,
) -> Inputs {
    let (events, incoming) = mpsc::channel::<Incoming>(depth);
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
            metrics.queue_read_errors(),
        ));
    }
    Inputs {
        incoming,
        retired: retired_rx,
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
