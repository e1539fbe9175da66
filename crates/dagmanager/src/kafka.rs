//! Queues on a Kafka broker (`dagmanager.kafka_dsn`). Topics are created with the partitions,
//! replication factor and retention of their kind; an existing topic is verified, and one with
//! another configuration is the caller's problem (`ConfigMismatch`), not the broker's. The
//! embedded registry beside it records what this system created, and when: GC only ever sees
//! those topics, never `__consumer_offsets` or anybody else's. Every broker call goes through
//! the `kafka` breaker; the readiness probe's metadata request, outside it, closes it again.

use async_trait::async_trait;
use kit::breaker::{BreakerError, CircuitBreaker};
use kit::clock::SystemClock;
use kit::metrics::MetricsRegistry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::KAFKA_BREAKER;
use crate::queues::{BrokerQueue, EmbeddedQueueAdmin, QueueAdmin, QueueAdminError, QueueSpec};

/// Queues on a broker, with the registry of what this system created.
#[derive(Clone)]
pub struct KafkaQueueAdmin {
    registry: EmbeddedQueueAdmin,
    admin: Arc<AdminClient<DefaultClientContext>>,
    client: Arc<BaseConsumer>,
    bootstrap: String,
    timeout: Duration,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for KafkaQueueAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaQueueAdmin")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

fn broker_error(operation: &'static str, detail: impl std::fmt::Display) -> QueueAdminError {
    QueueAdminError::Broker {
        operation,
        detail: detail.to_string(),
    }
}

/// `kafka://host:port[,host:port]` or a bare bootstrap list.
pub fn bootstrap_of(dsn: &str) -> String {
    dsn.trim().trim_start_matches("kafka://").to_owned()
}

impl KafkaQueueAdmin {
    /// Clients are made without contacting the broker, so a broker that is down at start-up
    /// only makes the service unready until it answers.
    pub fn open(
        dsn: &str,
        data_dir: &Path,
        timeout: Duration,
        registry: &MetricsRegistry,
    ) -> Result<KafkaQueueAdmin, QueueAdminError> {
        let bootstrap = bootstrap_of(dsn);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("socket.timeout.ms", timeout.as_millis().max(10).to_string())
            .set("log_level", "3");
        let admin: AdminClient<DefaultClientContext> =
            config.create().map_err(|e| broker_error("connect", e))?;
        let client: BaseConsumer = config
            .clone()
            .set("group.id", "qmtl-dagmanager-admin")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| broker_error("connect", e))?;
        Ok(KafkaQueueAdmin {
            registry: EmbeddedQueueAdmin::open(data_dir)?,
            admin: Arc::new(admin),
            client: Arc::new(client),
            bootstrap,
            timeout,
            breaker: CircuitBreaker::new("kafka", KAFKA_BREAKER, registry, Arc::new(SystemClock)),
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// Runs a broker call through the breaker; a configuration mismatch does not count.
    async fn guarded<T>(
        &self,
        call: impl Future<Output = Result<T, QueueAdminError>>,
    ) -> Result<T, QueueAdminError> {
        self.breaker
            .call_classified(call, |e| {
                !matches!(
                    e,
                    QueueAdminError::ConfigMismatch { .. } | QueueAdminError::Refused { .. }
                )
            })
            .await
            .map_err(|e| match e {
                BreakerError::Open { dependency } => QueueAdminError::Unavailable {
                    dependency: dependency.to_owned(),
                },
                BreakerError::Call(e) => e,
            })
    }

    /// A blocking librdkafka call, off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&BaseConsumer, Duration) -> Result<T, QueueAdminError> + Send + 'static,
    ) -> Result<T, QueueAdminError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || call(&client, timeout))
            .await
            .map_err(|e| broker_error("spawn", e))?
    }

    async fn create_on_broker(&self, specs: &[QueueSpec]) -> Result<(), QueueAdminError> {
        let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.to_string()).collect();
        let topics: Vec<NewTopic<'_>> = specs
            .iter()
            .zip(&retention)
            .map(|(spec, retention)| {
                NewTopic::new(
                    &spec.name,
                    spec.partitions as i32,
                    TopicReplication::Fixed(i32::from(spec.replication_factor)),
                )
                .set("retention.ms", retention)
            })
            .collect();
        let results = self
            .admin
            .create_topics(topics.iter(), &self.options())
            .await
            .map_err(|e| broker_error("create topics", e))?;
        let mut existing = Vec::new();
        for result in results {
            match result {
                Ok(_) => {}
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
                // The request itself is wrong (more replicas than brokers, a config the
                // cluster refuses): the caller's problem, not the broker's.
                Err((
                    name,
                    code @ (RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidConfig
                    | RDKafkaErrorCode::PolicyViolation
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::TopicAuthorizationFailed),
                )) => {
                    return Err(QueueAdminError::Refused {
                        name,
                        detail: code.to_string(),
                    });
                }
                Err((name, code)) => {
                    return Err(broker_error("create topics", format!("{name}: {code}")));
                }
            }
        }
        for name in existing {
            if let Some(spec) = specs.iter().find(|s| s.name == name) {
                self.verify(spec).await?;
            }
        }
        Ok(())
    }

    /// An existing topic must have the partitions and retention its spec asks for.
    async fn verify(&self, spec: &QueueSpec) -> Result<(), QueueAdminError> {
        let name = spec.name.clone();
        let partitions = self
            .blocking(move |client, timeout| {
                let metadata = client
                    .fetch_metadata(Some(&name), timeout)
                    .map_err(|e| broker_error("metadata", e))?;
                Ok(metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len()))
            })
            .await?;
        let configs = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &self.options())
            .await
            .map_err(|e| broker_error("describe configs", e))?;
        let retention = configs
            .into_iter()
            .flatten()
            .flat_map(|resource| resource.entries)
            .find(|entry| entry.name == "retention.ms")
            .and_then(|entry| entry.value)
            .and_then(|value| value.parse::<i64>().ok());
        if partitions != spec.partitions as usize || retention != Some(spec.retention_ms) {
            return Err(QueueAdminError::ConfigMismatch {
                name: spec.name.clone(),
                detail: format!(
                    "partitions {partitions}/{}, retention_ms {}/{}",
                    spec.partitions,
                    retention.map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
                    spec.retention_ms
                ),
            });
        }
        Ok(())
    }

    /// Sum over a topic's partitions of `high - low` watermarks, and the partitions.
    fn sizes_blocking(
        client: &BaseConsumer,
        names: &[String],
        timeout: Duration,
    ) -> Result<HashMap<String, i64>, QueueAdminError> {
        let metadata = client
            .fetch_metadata(None, timeout)
            .map_err(|e| broker_error("metadata", e))?;
        let mut sizes = HashMap::new();
        for topic in metadata.topics() {
            if !names.iter().any(|n| n == topic.name()) {
                continue;
            }
            let mut total = 0i64;
            for partition in topic.partitions() {
                let (low, high) = client
                    .fetch_watermarks(topic.name(), partition.id(), timeout)
                    .map_err(|e| broker_error("watermarks", e))?;
                total += (high - low).max(0);
            }
            sizes.insert(topic.name().to_owned(), total);
        }
        Ok(sizes)
    }
}

#[async_trait]
impl QueueAdmin for KafkaQueueAdmin {
    async fn create_queues(&self, specs: Vec<QueueSpec>, now: f64) -> Result<(), QueueAdminError> {
        self.registry.check(&specs)?;
        self.guarded(self.create_on_broker(&specs)).await?;
        self.registry.create_queues(specs, now).await
    }

    async fn sync(&self) -> Result<(), QueueAdminError> {
        self.registry.sync().await
    }

    async fn list_queues(&self) -> Result<Vec<BrokerQueue>, QueueAdminError> {
        self.registry.list_queues().await
    }

    async fn delete_queues(&self, names: &[String]) -> Result<(), QueueAdminError> {
        let call = async {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let results = self
                .admin
                .delete_topics(&refs, &self.options())
                .await
                .map_err(|e| broker_error("delete topics", e))?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((name, code)) => {
                        return Err(broker_error("delete topics", format!("{name}: {code}")));
                    }
                }
            }
            Ok(())
        };
        self.guarded(call).await?;
        self.registry.delete_queues(names).await
    }

    async fn queue_sizes(&self, names: &[String]) -> Result<HashMap<String, i64>, QueueAdminError> {
        let names = names.to_vec();
        self.guarded(
            self.blocking(move |client, timeout| Self::sizes_blocking(client, &names, timeout)),
        )
        .await
    }

    async fn archive_queue(
        &self,
        name: &str,
        archive_dir: &Path,
        now: f64,
    ) -> Result<PathBuf, QueueAdminError> {
        let path = archive_dir.join(format!("{name}.{}.jsonl", now as i64));
        let topic = name.to_owned();
        let target = path.clone();
        let bootstrap = self.bootstrap.clone();
        self.guarded(
            self.blocking(move |_, timeout| archive_blocking(&bootstrap, &topic, &target, timeout)),
        )
        .await?;
        Ok(path)
    }

    async fn health(&self) -> Result<(), QueueAdminError> {
        // Outside the breaker: this is the probe that closes it.
        self.blocking(|client, timeout| {
            client
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| broker_error("metadata", e))
        })
        .await
    }

    fn breaker(&self) -> Option<&CircuitBreaker> {
        Some(&self.breaker)
    }
}

/// Reads every record of a topic, from each partition's low to high watermark, into a JSON
/// lines file: `{"partition", "offset", "timestamp_ms", "payload"}`.
fn archive_blocking(
    bootstrap: &str,
    topic: &str,
    path: &Path,
    timeout: Duration,
) -> Result<(), QueueAdminError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "qmtl-dagmanager-archive")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .map_err(|e| broker_error("archive", e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| broker_error("archive metadata", e))?;
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .map_err(|e| broker_error("archive watermarks", e))?;
        if high > low {
            remaining.insert(partition.id(), high);
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .map_err(|e| broker_error("archive", e))?;
        }
    }
    let io = |source| QueueAdminError::Archive {
        name: topic.to_owned(),
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    if remaining.is_empty() {
        return file.flush().map_err(io);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| broker_error("archive", e))?;
    let deadline = Instant::now() + timeout.saturating_mul(10);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            return Err(broker_error(
                "archive",
                "the topic was not read to its end in time",
            ));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(|e| broker_error("archive", e))?;
        let line = serde_json::json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": message.timestamp().to_millis(),
            "payload": message.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
        });
        writeln!(file, "{line}").map_err(io)?;
        if remaining
            .get(&message.partition())
            .is_some_and(|high| message.offset() + 1 >= *high)
        {
            remaining.remove(&message.partition());
        }
    }
    file.flush().map_err(io)
}
