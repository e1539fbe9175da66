//! How node outputs travel between runners: a queue per node, one producer per queue, consumer
//! groups that read it. In-process here; the Kafka transport implements the same trait.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

use crate::value::Value;

/// One record of a queue. On a broker it travels as the JSON envelope of
/// [`Record::to_envelope`] with the W3C `traceparent` in a record header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The node's output.
    pub payload: Value,
    /// The node's bar interval, seconds.
    pub interval: i64,
    /// Event time: the start of the bar's bucket, unix seconds.
    pub timestamp: i64,
    /// W3C trace context of the producing span, when there is one.
    #[serde(skip)]
    pub traceparent: Option<String>,
}

impl Record {
    /// `{"payload": ..., "interval": 60, "timestamp": 1700000000}`.
    pub fn to_envelope(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_envelope(bytes: &[u8]) -> Result<Record, TransportError> {
        serde_json::from_slice(bytes).map_err(|e| TransportError::Envelope(e.to_string()))
    }
}

/// Called once a record is processed: transports that commit offsets store its offset then.
pub(crate) type Ack = Box<dyn FnOnce() + Send>;

/// A record handed to a consumer. Acknowledge it once processed: transports that commit offsets
/// commit then (at least once).
pub struct Delivery {
    /// `None` for a record that could not be read (an invalid envelope): it carries only its
    /// acknowledgement, which takes its place in order, so nothing before it is committed early.
    pub record: Option<Record>,
    ack: Option<Ack>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("record", &self.record)
            .finish()
    }
}

impl Delivery {
    pub fn new(record: Record, ack: Option<Ack>) -> Delivery {
        Delivery {
            record: Some(record),
            ack,
        }
    }

    /// A record skipped for good; acknowledged like a processed one, in its turn.
    pub fn skipped(ack: Option<Ack>) -> Delivery {
        Delivery { record: None, ack }
    }

    pub fn ack(self) {
        if let Some(ack) = self.ack {
            ack();
        }
    }

    /// The record (if it could be read), with its acknowledgement to call after processing.
    pub fn into_parts(self) -> (Option<Record>, Option<Ack>) {
        (self.record, self.ack)
    }
}

/// Why a transport call failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("queue `{topic}` is not keeping up: a record was dropped after {waited_ms} ms")]
    Full { topic: String, waited_ms: u64 },
    #[error("the transport is unavailable: {0}")]
    Unavailable(String),
    #[error("a record is not a valid envelope: {0}")]
    Envelope(String),
}

/// Held by the one runner that produces a queue; dropping it gives the queue up.
pub trait ProducerLease: Send + Sync + std::fmt::Debug {}

/// Records of one queue for one consumer.
#[async_trait]
pub trait Subscription: Send {
    /// The next record; `None` once the queue ends (its producer left, or the transport closed).
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>>;
}

/// Queues between runners.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// Becomes the queue's producer, unless another runner already is (`None`).
    async fn claim_producer(
        &self,
        topic: &str,
    ) -> Result<Option<Box<dyn ProducerLease>>, TransportError>;

    async fn publish(&self, topic: &str, record: Record) -> Result<(), TransportError>;

    /// Waits until every record published so far is delivered (or has failed).
    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }

    /// The transport one strategy uses: its `flush` covers what that strategy published, and
    /// only that, so strategies sharing a transport never take each other's failures.
    fn for_strategy(self: Arc<Self>) -> Arc<dyn Transport>;

    /// Reads a queue in a consumer group: each record goes to one member of every group.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Subscription>, TransportError>;
}

#[derive(Debug, Default)]
struct Topic {
    producing: bool,
    /// A producer was here and left: the queue has ended.
    ended: bool,
    /// group -> its members' channels, and the member the next record goes to.
    groups: HashMap<String, (Vec<mpsc::Sender<Record>>, usize)>,
    /// The newest records, which a new consumer group reads first (as a broker's retention).
    retained: std::collections::VecDeque<Record>,
}

#[derive(Debug, Default)]
struct Topics(Mutex<HashMap<String, Topic>>);

impl Topics {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Topic>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Queues inside one process: for embedded mode and tests. A record goes to one member of each
/// group subscribed; a new group first reads the newest `depth` records the queue kept, so a
/// reader that subscribes just after its producer started misses nothing. Each member buffers
/// `depth` records. When a queue's producer leaves, its subscriptions end.
#[derive(Debug, Clone)]
pub struct InProcessTransport {
    topics: Arc<Topics>,
    depth: usize,
    publish_wait: Duration,
}

impl InProcessTransport {
    /// `depth`: records each consumer buffers; a publisher waits up to `publish_wait` for room,
    /// then drops the record for that consumer (and says so).
    pub fn new(depth: usize, publish_wait: Duration) -> InProcessTransport {
        InProcessTransport {
            topics: Arc::new(Topics::default()),
            depth: depth.max(1),
            publish_wait,
        }
    }
}

impl Default for InProcessTransport {
    fn default() -> InProcessTransport {
        InProcessTransport::new(1024, Duration::from_secs(1))
    }
}

#[derive(Debug)]
struct InProcessLease {
    topics: Arc<Topics>,
    topic: String,
}

impl ProducerLease for InProcessLease {}

impl Drop for InProcessLease {
    fn drop(&mut self) {
        self.topics.with(|topics| {
            if let Some(topic) = topics.get_mut(&self.topic) {
                topic.producing = false;
                topic.ended = true;
                // Dropping the senders ends every subscription of the queue.
                topic.groups.clear();
            }
        });
    }
}

struct InProcessSubscription(mpsc::Receiver<Record>);

#[async_trait]
impl Subscription for InProcessSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        self.0.recv().await.map(|r| Ok(Delivery::new(r, None)))
    }
}

#[async_trait]
impl Transport for InProcessTransport {
    fn for_strategy(self: Arc<Self>) -> Arc<dyn Transport> {
        self
    }

    async fn claim_producer(
        &self,
        topic: &str,
    ) -> Result<Option<Box<dyn ProducerLease>>, TransportError> {
        let claimed = self.topics.with(|topics| {
            let entry = topics.entry(topic.to_owned()).or_default();
            let claimed = !std::mem::replace(&mut entry.producing, true);
            if claimed {
                entry.ended = false;
            }
            claimed
        });
        Ok(claimed.then(|| {
            Box::new(InProcessLease {
                topics: self.topics.clone(),
                topic: topic.to_owned(),
            }) as Box<dyn ProducerLease>
        }))
    }

    async fn publish(&self, topic: &str, record: Record) -> Result<(), TransportError> {
        let depth = self.depth;
        let targets: Vec<mpsc::Sender<Record>> = self.topics.with(|topics| {
            let entry = topics.entry(topic.to_owned()).or_default();
            entry.retained.push_back(record.clone());
            while entry.retained.len() > depth {
                entry.retained.pop_front();
            }
            entry
                .groups
                .values_mut()
                .filter_map(|(members, next)| {
                    members.retain(|m| !m.is_closed());
                    if members.is_empty() {
                        return None;
                    }
                    *next = (*next + 1) % members.len();
                    Some(members[*next].clone())
                })
                .collect()
        });
        let mut dropped = false;
        for target in targets {
            match target.try_send(record.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                Err(mpsc::error::TrySendError::Full(record)) => {
                    if let Ok(Err(_)) | Err(_) =
                        tokio::time::timeout(self.publish_wait, target.send(record)).await
                    {
                        dropped = true;
                    }
                }
            }
        }
        if dropped {
            Err(TransportError::Full {
                topic: topic.to_owned(),
                waited_ms: self.publish_wait.as_millis() as u64,
            })
        } else {
            Ok(())
        }
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let (sender, receiver) = mpsc::channel(self.depth);
        self.topics.with(|topics| {
            let entry = topics.entry(topic.to_owned()).or_default();
            // A new group starts from what the queue kept (the channel holds `depth`, as many
            // as are kept). A queue whose producer has left ends once that is read.
            if !entry.groups.contains_key(group) {
                for record in &entry.retained {
                    let _ = sender.try_send(record.clone());
                }
            }
            if !entry.ended {
                entry
                    .groups
                    .entry(group.to_owned())
                    .or_default()
                    .0
                    .push(sender);
            }
        });
        Ok(Box::new(InProcessSubscription(receiver)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(timestamp: i64) -> Record {
        Record {
            payload: Value::Number(timestamp as f64),
            interval: 60,
            timestamp,
            traceparent: None,
        }
    }

    async fn next_timestamp(sub: &mut Box<dyn Subscription>) -> Option<i64> {
        match sub.next().await {
            Some(Ok(delivery)) => delivery.record.map(|r| r.timestamp),
            _ => None,
        }
    }

    #[tokio::test]
    async fn one_producer_per_queue_and_every_group_gets_every_record() -> anyhow::Result<()> {
        let transport = InProcessTransport::default();
        let lease = transport.claim_producer("q").await?;
        assert!(lease.is_some());
        assert!(transport.claim_producer("q").await?.is_none());
        let mut a = transport.subscribe("q", "a").await?;
        let mut b = transport.subscribe("q", "b").await?;
        transport.publish("q", record(60)).await?;
        assert_eq!(next_timestamp(&mut a).await, Some(60));
        assert_eq!(next_timestamp(&mut b).await, Some(60));
        drop(lease);
        assert_eq!(next_timestamp(&mut a).await, None);
        let mut late = transport.subscribe("q", "late").await?;
        let kept = next_timestamp(&mut late).await;
        assert_eq!(kept, Some(60), "a new group reads what the queue kept");
        let then = next_timestamp(&mut late).await;
        assert_eq!(then, None, "then the ended queue ends");
        assert!(transport.claim_producer("q").await?.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn a_consumer_that_does_not_keep_up_loses_records_and_the_publisher_hears_of_it()
    -> anyhow::Result<()> {
        let transport = InProcessTransport::new(1, Duration::from_millis(10));
        let _sub = transport.subscribe("q", "slow").await?;
        transport.publish("q", record(60)).await?;
        let full = transport.publish("q", record(120)).await;
        assert!(matches!(full, Err(TransportError::Full { .. })));
        Ok(())
    }

    #[test]
    fn the_envelope_round_trips() -> anyhow::Result<()> {
        let original = record(120);
        let text = String::from_utf8(original.to_envelope())?;
        assert_eq!(text, r#"{"payload":120.0,"interval":60,"timestamp":120}"#);
        assert_eq!(Record::from_envelope(text.as_bytes())?, original);
        Ok(())
    }
}
