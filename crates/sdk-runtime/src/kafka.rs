//! Queues on a Kafka broker. Records travel as the JSON envelope of [`Record::to_envelope`]
//! with the W3C `traceparent` in a record header, from an idempotent producer (`acks=all`).
//! A reader consumes in its consumer group and stores a record's offset only once the record
//! is processed (committed in the background): at least once, resuming where it left off.
//! Producer leases live in the `qmtl-leases` topic: the earliest live claim of a queue in that
//! log holds it, renewing it every few seconds; a lease not renewed for 15 s has expired.

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::DeliveryResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, FutureProducer, FutureRecord, Producer as _, ProducerContext, ThreadedProducer,
};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::SdkMetrics;
use crate::transport::{Delivery, ProducerLease, Record, Subscription, Transport, TransportError};

/// The topic holding every queue's producer lease.
pub const LEASE_TOPIC: &str = "qmtl-leases";
/// A lease not renewed for this long is free to claim.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// The holder renews this often.
const LEASE_RENEW: Duration = Duration::from_secs(5);
/// Counts deliveries in flight and failed, from the producer's own thread.
#[derive(Default)]
struct Deliveries {
    in_flight: std::sync::atomic::AtomicI64,
    failed: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    settled: tokio::sync::Notify,
}

impl Deliveries {
    fn delivery(&self, result: &DeliveryResult<'_>) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
        }
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) <= 1 {
            self.settled.notify_waiters();
        }
    }
}

/// The producer's context: each record carries the counters of the strategy that sent it.
#[derive(Clone, Default)]
struct PerStrategy;

impl ClientContext for PerStrategy {}

impl ProducerContext for PerStrategy {
    type DeliveryOpaque = Arc<Deliveries>;

    fn delivery(&self, result: &DeliveryResult<'_>, counters: Arc<Deliveries>) {
        counters.delivery(result);
    }
}

fn unavailable(error: impl std::fmt::Display) -> TransportError {
    TransportError::Unavailable(error.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LeaseEvent {
    Claim,
    Renew,
    Release,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    queue: String,
    owner: String,
    event: LeaseEvent,
    at_ms: i64,
}

/// Queues on a Kafka broker.
#[derive(Clone)]
pub struct KafkaTransport {
    bootstrap: String,
    /// Node outputs: one delivery callback per record, no future per record. Replaced when it
    /// hits a fatal error (an idempotent producer whose broker lost its state).
    producer: Arc<std::sync::RwLock<Arc<ThreadedProducer<PerStrategy>>>>,
    config: ClientConfig,
    deliveries: Arc<Deliveries>,
    /// Lease records, awaited one by one.
    leases: FutureProducer,
    timeout: Duration,
    bad_records: metrics::Counter,
    owner_prefix: String,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

impl KafkaTransport {
    /// `bootstrap`: `host:port[,host:port]` (a `kafka://` prefix is accepted).
    pub fn new(
        bootstrap: &str,
        timeout: Duration,
        metrics: &SdkMetrics,
    ) -> Result<KafkaTransport, TransportError> {
        let bootstrap = bootstrap.trim().trim_start_matches("kafka://").to_owned();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(1000).to_string(),
            )
            .set("log_level", "3");
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<PerStrategy> = config
            .create_with_context(PerStrategy)
            .map_err(unavailable)?;
        let leases: FutureProducer = config.create().map_err(unavailable)?;
        let bad_records = metrics.bad_records();
        Ok(KafkaTransport {
            bootstrap,
            producer: Arc::new(std::sync::RwLock::new(Arc::new(producer))),
            config,
            deliveries,
            leases,
            timeout,
            bad_records,
            owner_prefix: format!("{}-{}", std::process::id(), now_ms()),
        })
    }

    async fn ensure_lease_topic(&self) -> Result<(), TransportError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "3")
            .create()
            .map_err(unavailable)?;
        // Compacted: the latest record of each queue is all a reader needs (see holder_upto).
        let topic = NewTopic::new(LEASE_TOPIC, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact");
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(unavailable)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(unavailable(format!("{name}: {code}"))),
            }
        }
        Ok(())
    }

    async fn write_lease(&self, record: &LeaseRecord) -> Result<i64, TransportError> {
        let payload = serde_json::to_vec(record).map_err(unavailable)?;
        let delivered = self
            .leases
            .send(
                FutureRecord::to(LEASE_TOPIC)
                    .key(record.queue.as_str())
                    .payload(&payload),
                self.timeout,
            )
            .await
            .map_err(|(e, _)| unavailable(e))?;
        Ok(delivered.offset)
    }

    /// Who holds `queue`'s lease after the lease log's records up to `upto` (inclusive).
    fn holder_upto(&self, queue: &str, upto: i64) -> Result<Option<String>, TransportError> {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "qmtl-lease-reader")
            .set("enable.auto.commit", "false")
            .set("log_level", "3")
            .create()
            .map_err(unavailable)?;
        let mut start = TopicPartitionList::new();
        start
            .add_partition_offset(LEASE_TOPIC, 0, Offset::Beginning)
            .map_err(unavailable)?;
        reader.assign(&start).map_err(unavailable)?;
        let deadline = Instant::now() + self.timeout;
        let mut holder: Option<(String, i64)> = None;
        loop {
            if Instant::now() > deadline {
                return Err(unavailable("the lease log was not read in time"));
            }
            let Some(message) = reader.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.map_err(unavailable)?;
            let offset = message.offset();
            if let Some(record) = message
                .payload()
                .and_then(|p| serde_json::from_slice::<LeaseRecord>(p).ok())
                .filter(|r| r.queue == queue)
            {
                let expired = |last: i64| record.at_ms - last > LEASE_TTL.as_millis() as i64;
                match record.event {
                    LeaseEvent::Claim => match &mut holder {
                        Some((owner, last)) if *owner == record.owner => *last = record.at_ms,
                        Some((_, last)) if !expired(*last) => {}
                        _ => holder = Some((record.owner, record.at_ms)),
                    },
                    // A renewal holds the lease for its owner, as a claim does: once compaction
                    // has removed the claim, the latest renewal still names the holder.
                    LeaseEvent::Renew => match &mut holder {
                        Some((owner, last)) if *owner == record.owner => *last = record.at_ms,
                        Some((_, last)) if !expired(*last) => {}
                        _ => holder = Some((record.owner, record.at_ms)),
                    },
                    LeaseEvent::Release => {
                        if holder.as_ref().is_some_and(|(o, _)| *o == record.owner) {
                            holder = None;
                        }
                    }
                }
            }
            if offset >= upto {
                return Ok(holder.map(|(owner, _)| owner));
            }
        }
    }

    /// Replaces the output producer after a fatal error, dropping what it still held (counted
    /// as failed deliveries). Returns whether it did.
    fn replace_if_fatal(&self) -> bool {
        let mut current = self.producer.write().unwrap_or_else(|e| e.into_inner());
        let Some((code, reason)) = current.client().fatal_error() else {
            return false;
        };
        tracing::warn!(%code, %reason, "The Kafka producer hit a fatal error; it is replaced.");
        rdkafka::producer::Producer::purge(
            current.as_ref(),
            rdkafka::producer::PurgeConfig::default().queue().inflight(),
        );
        current.poll(Duration::from_millis(200));
        let fresh: Result<ThreadedProducer<PerStrategy>, _> =
            self.config.create_with_context(PerStrategy);
        match fresh {
            Ok(fresh) => {
                // The purged records' deliveries report failures to their strategies' counters.
                *current = Arc::new(fresh);
                true
            }
            Err(error) => {
                tracing::warn!(%error, "A new Kafka producer could not be made.");
                false
            }
        }
    }

    /// Waits until nothing is in flight; an error if a delivery failed since the last wait.
    async fn drain(&self) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.timeout.saturating_mul(2);
        loop {
            let settled = self.deliveries.settled.notified();
            if self.deliveries.in_flight.load(Ordering::Acquire) <= 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.replace_if_fatal();
                return Err(unavailable("deliveries did not settle in time"));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), settled).await;
        }
        if self.deliveries.failed.swap(0, Ordering::AcqRel) > 0 {
            self.replace_if_fatal();
            let last = self
                .deliveries
                .last_error
                .lock()
                .ok()
                .and_then(|mut e| e.take())
                .unwrap_or_default();
            return Err(unavailable(format!("a delivery failed: {last}")));
        }
        Ok(())
    }
}

/// A held lease: renewed in the background, released when dropped.
struct KafkaLease {
    renew: tokio::task::JoinHandle<()>,
    release: Option<(KafkaTransport, LeaseRecord)>,
}

impl std::fmt::Debug for KafkaLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaLease")
    }
}

impl ProducerLease for KafkaLease {}

impl Drop for KafkaLease {
    fn drop(&mut self) {
        self.renew.abort();
        if let Some((transport, mut record)) = self.release.take() {
            record.event = LeaseEvent::Release;
            record.at_ms = now_ms();
            if let Ok(payload) = serde_json::to_vec(&record) {
                // Enqueued now, delivered by the producer's own thread.
                let _ = transport.leases.send_result(
                    FutureRecord::to(LEASE_TOPIC)
                        .key(record.queue.as_str())
                        .payload(&payload),
                );
                let _ = rdkafka::producer::Producer::flush(&transport.leases, transport.timeout);
            }
        }
    }
}

struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
    topic: String,
    bad_records: metrics::Counter,
    last_warning: Option<Instant>,
}

impl KafkaSubscription {
    /// Stores the record's offset (committed in the background) once it is processed.
    fn acknowledgement(&self, partition: i32, offset: i64) -> crate::transport::Ack {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        Box::new(move || {
            let _ = consumer.store_offset(&topic, partition, offset);
        })
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // What was acknowledged is committed now, then the group is left, so a restart
        // resumes after it at once.
        if let Err(error) = self
            .consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        {
            tracing::debug!(topic = %self.topic, %error, "Nothing committed when the subscription ended.");
        }
        self.consumer.unsubscribe();
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, TransportError>> {
        let message = match self.consumer.recv().await {
            Ok(message) => message,
            Err(error) => return Some(Err(unavailable(error))),
        };
        let (partition, offset) = (message.partition(), message.offset());
        let parsed = message
            .payload()
            .ok_or_else(|| TransportError::Envelope("an empty record".into()))
            .and_then(Record::from_envelope);
        let traceparent = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == kit::trace::TRACEPARENT)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
        });
        drop(message);
        let store = self.acknowledgement(partition, offset);
        match parsed {
            Ok(mut record) => {
                record.traceparent = traceparent;
                return Some(Ok(Delivery::new(record, Some(store))));
            }
            Err(error) => {
                self.bad_records.increment(1);
                if self
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                {
                    tracing::warn!(topic = %self.topic, partition, offset, %error, "A record is not a valid envelope; skipped.");
                    self.last_warning = Some(Instant::now());
                }
                // Skipped for good: acknowledged in its turn, like a processed record.
                return Some(Ok(Delivery::skipped(Some(store))));
            }
        }
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn for_strategy(self: Arc<Self>) -> Arc<dyn Transport> {
        Arc::new(KafkaTransport {
            deliveries: Arc::new(Deliveries::default()),
            ..(*self).clone()
        })
    }

    async fn claim_producer(
        &self,
        topic: &str,
    ) -> Result<Option<Box<dyn ProducerLease>>, TransportError> {
        self.ensure_lease_topic().await?;
        let owner = format!(
            "{}-{}",
            self.owner_prefix,
            NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
        );
        let claim = LeaseRecord {
            queue: topic.to_owned(),
            owner: owner.clone(),
            event: LeaseEvent::Claim,
            at_ms: now_ms(),
        };
        let offset = self.write_lease(&claim).await?;
        let this = self.clone();
        let queue = topic.to_owned();
        let holder = tokio::task::spawn_blocking(move || this.holder_upto(&queue, offset))
            .await
            .map_err(unavailable)??;
        if holder.as_deref() != Some(owner.as_str()) {
            return Ok(None);
        }
        let renewer = self.clone();
        let mut renew = claim.clone();
        renew.event = LeaseEvent::Renew;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                renew.at_ms = now_ms();
                if let Err(error) = renewer.write_lease(&renew).await {
                    tracing::warn!(queue = %renew.queue, %error, "A producer lease could not be renewed.");
                }
            }
        });
        Ok(Some(Box::new(KafkaLease {
            renew: task,
            release: Some((self.clone(), claim)),
        })))
    }

    async fn publish(&self, topic: &str, record: Record) -> Result<(), TransportError> {
        let payload = record.to_envelope();
        let mut headers = OwnedHeaders::new();
        if let Some(parent) = &record.traceparent {
            headers = headers.insert(Header {
                key: kit::trace::TRACEPARENT,
                value: Some(parent.as_str()),
            });
        }
        let mut message =
            BaseRecord::<(), [u8], Arc<Deliveries>>::with_opaque_to(topic, self.deliveries.clone())
                .payload(payload.as_slice())
                .headers(headers);
        let deadline = Instant::now() + self.timeout;
        loop {
            let sent = {
                let producer = self.producer.read().unwrap_or_else(|e| e.into_inner());
                self.deliveries.in_flight.fetch_add(1, Ordering::AcqRel);
                producer.send(message)
            };
            match sent {
                Ok(()) => return Ok(()),
                Err((error, returned)) => {
                    self.deliveries.in_flight.fetch_sub(1, Ordering::AcqRel);
                    if self.replace_if_fatal() {
                        message = returned;
                        continue;
                    }
                    let full = matches!(
                        error.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::QueueFull)
                    );
                    if !full || Instant::now() > deadline {
                        return Err(unavailable(error));
                    }
                    // The producer's queue is full: the broker is slower than the nodes.
                    message = returned;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.drain().await
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Backpressure: a slow node lets at most this much wait in the consumer.
            .set("queued.max.messages.kbytes", "16384")
            .set("log_level", "3")
            .create()
            .map_err(unavailable)?;
        consumer.subscribe(&[topic]).map_err(unavailable)?;
        Ok(Box::new(KafkaSubscription {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            bad_records: self.bad_records.clone(),
            last_warning: None,
        }))
    }
}
