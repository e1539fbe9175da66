//! Consumer lag of every queue this system created, measured against the broker on an
//! interval: for each consumer group that has committed offsets on a topic, the messages behind
//! the high watermarks (`queue_lag_messages`) and the age of the oldest one not yet consumed,
//! from the broker's record timestamps (`queue_lag_seconds`). The worst group counts. Beside
//! them `queue_lag_threshold_seconds`, with the same `{topic}` label, so
//! `queue_lag_seconds > queue_lag_threshold_seconds` matches series for series. A failed
//! measurement is counted and logged; the monitor keeps going.

use kit::metrics::MetricsRegistry;
use kit::shutdown::Shutdown;
use metrics::{Counter, Gauge};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{
    LAG_TOPIC_LABEL, QUEUE_LAG_ERRORS_TOTAL, QUEUE_LAG_LAST_RUN_TIMESTAMP, QUEUE_LAG_MESSAGES,
    QUEUE_LAG_SECONDS, QUEUE_LAG_THRESHOLD_SECONDS, describe_lag,
};
use crate::queues::QueueAdmin;

/// Groups of this service itself, never measured.
const OWN_GROUP_PREFIX: &str = "qmtl-dagmanager-";

/// When and against what lag is measured.
#[derive(Debug, Clone)]
pub struct LagSettings {
    pub bootstrap: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Seconds of lag a queue may have before `QueueLagHigh` fires.
    pub default_threshold_secs: f64,
    /// Per-topic thresholds, overriding the default.
    pub thresholds: BTreeMap<String, f64>,
}

/// One topic's measured lag.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicLag {
    pub topic: String,
    pub messages: i64,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
struct Series {
    seconds: Gauge,
    messages: Gauge,
}

/// Which topics lag is measured for.
#[derive(Debug, Clone)]
pub enum LagTopics {
    /// The queues this DAG Manager created (its registry).
    Registry(Arc<dyn QueueAdmin>),
    /// Every topic on the broker but its internal ones (`__*`) and the producer leases: for
    /// the standalone exporter, which has no registry.
    Broker,
}

/// Measures lag and sets the gauges.
pub struct LagMonitor {
    settings: LagSettings,
    topics: LagTopics,
    registry: MetricsRegistry,
    series: Mutex<HashMap<String, Series>>,
    errors: Counter,
    last_run: Gauge,
    clients: Arc<Mutex<Clients>>,
}

impl std::fmt::Debug for LagMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagMonitor")
            .field("bootstrap", &self.settings.bootstrap)
            .finish()
    }
}

/// Broker clients kept between measurements: one for metadata, watermarks and groups, one that
/// reads the oldest unconsumed records (its fetches never queue ahead of the other's requests),
/// and one per group to read its committed offsets (which does not join the group).
#[derive(Default)]
struct Clients {
    reader: Option<BaseConsumer>,
    sampler: Option<BaseConsumer>,
    groups: HashMap<String, BaseConsumer>,
}

fn client(bootstrap: &str, group: &str) -> Result<BaseConsumer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())
}

impl LagMonitor {
    pub fn new(settings: LagSettings, topics: LagTopics, registry: &MetricsRegistry) -> LagMonitor {
        describe_lag(registry);
        let errors = registry.counter(QUEUE_LAG_ERRORS_TOTAL, &[]);
        errors.increment(0);
        let last_run = registry.gauge(QUEUE_LAG_LAST_RUN_TIMESTAMP, &[]);
        LagMonitor {
            settings,
            topics,
            registry: registry.clone(),
            series: Mutex::new(HashMap::new()),
            errors,
            last_run,
            clients: Arc::default(),
        }
    }

    /// Measures every queue once and sets the gauges.
    pub async fn measure_once(&self) -> Result<Vec<TopicLag>, String> {
        let topics: Option<Vec<String>> = match &self.topics {
            LagTopics::Registry(queues) => Some(
                queues
                    .list_queues()
                    .await
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|q| q.spec.name)
                    .collect(),
            ),
            LagTopics::Broker => None,
        };
        let settings = self.settings.clone();
        let clients = self.clients.clone();
        let (lags, failed_groups) = tokio::task::spawn_blocking(move || {
            let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
            measure(&settings, &mut clients, topics.as_deref())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.errors.increment(failed_groups as u64);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for lag in &lags {
            let entry = series.entry(lag.topic.clone()).or_insert_with(|| {
                let labels = [(LAG_TOPIC_LABEL, lag.topic.as_str())];
                let threshold = self
                    .settings
                    .thresholds
                    .get(&lag.topic)
                    .copied()
                    .unwrap_or(self.settings.default_threshold_secs);
                self.registry
                    .gauge(QUEUE_LAG_THRESHOLD_SECONDS, &labels)
                    .set(threshold);
                Series {
                    seconds: self.registry.gauge(QUEUE_LAG_SECONDS, &labels),
                    messages: self.registry.gauge(QUEUE_LAG_MESSAGES, &labels),
                }
            });
            entry.seconds.set(lag.seconds);
            entry.messages.set(lag.messages as f64);
        }
        self.last_run.set(now_ms() as f64 / 1000.0);
        Ok(lags)
    }

    /// Measures on the interval until `shutdown`.
    pub async fn run_scheduled(self: Arc<Self>, shutdown: Shutdown) {
        let stop = shutdown.triggered();
        tokio::pin!(stop);
        loop {
            if let Err(error) = self.measure_once().await {
                self.errors.increment(1);
                tracing::warn!(code = "E_LAG_MEASURE", %error, "Consumer lag could not be measured.");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Topics never measured when measuring the whole broker.
fn internal(topic: &str) -> bool {
    topic.starts_with("__") || topic == "qmtl-leases"
}

/// One measurement: the wanted topics' partitions and watermarks, the committed offsets of every
/// active group, then the age of each lagging partition's oldest unconsumed record. Returns the
/// lag of every wanted topic and how many groups could not answer.
fn measure(
    settings: &LagSettings,
    clients: &mut Clients,
    topics: Option<&[String]>,
) -> Result<(Vec<TopicLag>, usize), String> {
    let timeout = settings.timeout;
    clients.connect(&settings.bootstrap)?;
    let reader = clients.reader.as_ref().ok_or("no reader")?;
    let metadata = reader
        .fetch_metadata(None, timeout)
        .map_err(|e| format!("metadata: {e}"))?;
    let partitions = wanted_partitions(&metadata, topics);
    let watermarks = watermarks(reader, &partitions, timeout)?;
    let groups = active_groups(reader, timeout)?;
    clients.groups.retain(|name, _| groups.contains(name));
    let behind = committed_lag(
        &settings.bootstrap,
        &mut clients.groups,
        groups,
        &partitions,
        &watermarks,
        timeout,
    )?;
    let sampler = clients.sampler.as_ref().ok_or("no sampler")?;
    let seconds = oldest_unconsumed_ages(sampler, &behind.oldest, timeout)?;
    if !behind.failures.is_empty() {
        tracing::warn!(code = "E_LAG_GROUP", failures = ?behind.failures, "Some consumer groups' offsets could not be read; the rest were measured.");
    }
    let lags = partitions
        .keys()
        .map(|topic| TopicLag {
            topic: (*topic).to_owned(),
            messages: behind.messages.get(*topic).copied().unwrap_or(0),
            seconds: seconds.get(*topic).copied().unwrap_or(0.0),
        })
        .collect();
    Ok((lags, behind.failures.len()))
}

impl Clients {
    /// Creates the reader and the sampler the first time.
    fn connect(&mut self, bootstrap: &str) -> Result<(), String> {
        if self.reader.is_none() {
            self.reader = Some(client(bootstrap, &format!("{OWN_GROUP_PREFIX}lag"))?);
        }
        if self.sampler.is_none() {
            let sampler: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("{OWN_GROUP_PREFIX}lag-sampler"))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "20")
                .set("log_level", "3")
                .create()
                .map_err(|e| e.to_string())?;
            self.sampler = Some(sampler);
        }
        Ok(())
    }
}

/// The partitions of each topic measured: those named, or all but the internal ones.
fn wanted_partitions<'m>(
    metadata: &'m Metadata,
    topics: Option<&[String]>,
) -> BTreeMap<&'m str, Vec<i32>> {
    let mut partitions: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for topic in metadata.topics() {
        let wanted = match topics {
            Some(names) => names.iter().any(|t| t.as_str() == topic.name()),
            None => !internal(topic.name()),
        };
        if wanted {
            partitions.insert(
                topic.name(),
                topic.partitions().iter().map(|p| p.id()).collect(),
            );
        }
    }
    partitions
}

/// (topic, partition) -> its (low, high) watermarks.
type Watermarks<'p> = HashMap<(&'p str, i32), (i64, i64)>;

/// The watermarks of every partition.
fn watermarks<'p>(
    reader: &BaseConsumer,
    partitions: &BTreeMap<&'p str, Vec<i32>>,
    timeout: Duration,
) -> Result<Watermarks<'p>, String> {
    let mut watermarks: Watermarks<'_> = HashMap::new();
    for (topic, ids) in partitions {
        for id in ids {
            let marks = reader
                .fetch_watermarks(topic, *id, timeout)
                .map_err(|e| format!("watermarks of {topic}: {e}"))?;
            watermarks.insert((topic, *id), marks);
        }
    }
    Ok(watermarks)
}

/// Consumer groups with members, but this service's own.
fn active_groups(reader: &BaseConsumer, timeout: Duration) -> Result<Vec<String>, String> {
    // Groups with members only: a group nobody is in any more (a stopped strategy) keeps its
    // committed offsets for days, and would otherwise count as the worst reader.
    Ok(reader
        .fetch_group_list(None, timeout)
        .map_err(|e| format!("groups: {e}"))?
        .groups()
        .iter()
        .filter(|g| !g.members().is_empty() && !matches!(g.state(), "Empty" | "Dead"))
        .map(|g| g.name().to_owned())
        .filter(|g| !g.starts_with(OWN_GROUP_PREFIX))
        .collect())
}

/// What the groups' committed offsets say.
struct Behind {
    /// Per topic, the messages the worst group is behind.
    messages: HashMap<String, i64>,
    /// (topic, partition) -> the lowest committed offset of any group that reads it.
    oldest: HashMap<(String, i32), i64>,
    /// The groups whose offsets could not be read.
    failures: Vec<String>,
}

/// Reads every group's committed offsets (through a client per group, kept in `consumers`,
/// which does not join it); one group that cannot answer does not stop the others.
fn committed_lag(
    bootstrap: &str,
    consumers: &mut HashMap<String, BaseConsumer>,
    groups: Vec<String>,
    partitions: &BTreeMap<&str, Vec<i32>>,
    watermarks: &Watermarks<'_>,
    timeout: Duration,
) -> Result<Behind, String> {
    let mut all = TopicPartitionList::new();
    for (topic, ids) in partitions {
        for id in ids {
            all.add_partition(topic, *id);
        }
    }
    let mut behind = Behind {
        messages: HashMap::new(),
        oldest: HashMap::new(),
        failures: Vec::new(),
    };
    for group in groups {
        if !consumers.contains_key(&group) {
            let consumer = client(bootstrap, &group)?;
            consumers.insert(group.clone(), consumer);
        }
        let Some(consumer) = consumers.get(&group) else {
            continue;
        };
        let committed = match consumer.committed_offsets(all.clone(), timeout) {
            Ok(committed) => committed,
            Err(error) => {
                behind
                    .failures
                    .push(format!("offsets of group {group}: {error}"));
                continue;
            }
        };
        let mut per_topic: HashMap<String, i64> = HashMap::new();
        for element in committed.elements() {
            let Offset::Offset(offset) = element.offset() else {
                continue;
            };
            let key = (element.topic(), element.partition());
            let Some((low, high)) = watermarks.get(&key) else {
                continue;
            };
            let position = offset.max(*low);
            *per_topic.entry(element.topic().to_owned()).or_default() += (high - position).max(0);
            if position < *high {
                let slot = behind
                    .oldest
                    .entry((element.topic().to_owned(), element.partition()))
                    .or_insert(position);
                *slot = (*slot).min(position);
            }
        }
        for (topic, lag) in per_topic {
            let worst = behind.messages.entry(topic).or_default();
            *worst = (*worst).max(lag);
        }
    }
    Ok(behind)
}

/// Per topic, the age in seconds of the oldest unconsumed record of its lagging partitions
/// (from the broker's record timestamps), read at each partition's `oldest` offset.
fn oldest_unconsumed_ages(
    sampler: &BaseConsumer,
    oldest: &HashMap<(String, i32), i64>,
    timeout: Duration,
) -> Result<HashMap<String, f64>, String> {
    let mut seconds: HashMap<String, f64> = HashMap::new();
    let now = now_ms();
    for ((topic, partition), offset) in oldest {
        let mut one = TopicPartitionList::new();
        one.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .map_err(|e| e.to_string())?;
        sampler.assign(&one).map_err(|e| e.to_string())?;
        let sampled = sampler.poll(timeout);
        if let Some(Ok(message)) = &sampled
            && let Some(at) = message.timestamp().to_millis()
        {
            let age = ((now - at).max(0)) as f64 / 1000.0;
            let worst = seconds.entry(topic.clone()).or_default();
            *worst = worst.max(age);
        }
        drop(sampled);
        sampler.unassign().map_err(|e| e.to_string())?;
    }
    Ok(seconds)
}
