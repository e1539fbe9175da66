//! Queues on a real Kafka-protocol broker (`scripts/tools/kafka.sh`): topics created with the
//! configured policy, a configuration mismatch refused as the caller's problem, and the Kafka
//! breaker opening while the broker is down and closing through the probe once it is back.

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::time::{Duration, Instant};
use test_support::{Exposition, KafkaBroker, assert_eventually, synthetic_dag};
use tonic::Code;

use std::sync::atomic::Ordering;

use crate::support::{TestApp, count_logs, spawn_app, temp_dir, test_settings};

fn kafka_settings(dir: &std::path::Path, broker: &KafkaBroker) -> dagmanager::DagManagerSettings {
    let mut settings = test_settings(dir);
    settings.kafka_dsn = format!("kafka://{}", broker.bootstrap);
    settings.kafka_timeout_ms = 1_500;
    settings
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client")
}

/// Sends each payload to `topic` and waits for its delivery.
async fn produce(bootstrap: &str, topic: &str, payloads: impl IntoIterator<Item = String>) {
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("a producer");
    for payload in payloads {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), str>::to(topic).payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .expect("a record");
    }
}

/// A consumer in `group` subscribed to `topic`, from the earliest record, committing by hand.
fn group_reader(bootstrap: &str, group: &str, topic: &str) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a consumer");
    consumer.subscribe(&[topic]).expect("subscribed");
    consumer
}

/// Takes `count` records from `consumer`, within 20 seconds.
async fn take(consumer: &rdkafka::consumer::BaseConsumer, count: usize) {
    let mut taken = 0;
    assert_eventually!(
        {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                taken += 1;
            }
            taken >= count
        },
        Duration::from_secs(20),
        "took {taken} of {count} records"
    );
}

/// Whether consumer `group` has members, as the broker says.
fn group_has_members(bootstrap: &str, group: &str) -> bool {
    use rdkafka::consumer::Consumer as _;
    let observer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "qmtl-test-observer")
        .create()
        .expect("a client");
    observer
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .expect("the group list")
        .groups()
        .iter()
        .any(|g| g.name() == group && !g.members().is_empty())
}

/// Unix time now, in seconds, as `queue_lag_last_run_timestamp` has it.
fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Partitions and `retention.ms` of a topic, as the broker has them.
async fn topic_config(bootstrap: &str, topic: &str) -> (usize, Option<i64>) {
    let admin = admin(bootstrap);
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("topic metadata");
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("topic configs");
    let retention = configs
        .into_iter()
        .flatten()
        .flat_map(|r| r.entries)
        .find(|e| e.name == "retention.ms")
        .and_then(|e| e.value)
        .and_then(|v| v.parse().ok());
    (partitions, retention)
}

#[tokio::test]
async fn topics_are_created_on_the_broker_with_their_kinds_policy() {
    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let settings = kafka_settings(&path, &broker);
    let app = spawn_app(settings.clone()).await;
    let dag = synthetic_dag(3, "kafka-policy");
    let diff = app.diff("k1", &dag).await.expect("the diff succeeds");
    let mut topics: Vec<&String> = diff.queue_map.values().collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics.len(), 3);
    for topic in topics {
        let kind = if topic.contains("PriceFeed") {
            "raw"
        } else {
            "indicator"
        };
        let policy = &settings.topics[kind];
        assert_eq!(
            topic_config(&broker.bootstrap, topic).await,
            (policy.partitions as usize, Some(policy.retention_ms)),
            "{topic} ({kind})"
        );
    }
    // Again, and concurrently with itself: the same queues, no error.
    let (again, twice) = tokio::join!(app.diff("k1", &dag), app.diff("k2", &dag));
    assert_eq!(again.expect("again").queue_map, diff.queue_map);
    assert!(twice.is_ok());
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("queue_create_error_total", &[]), Some(0.0));
    assert_eq!(metrics.value("kafka_breaker_state", &[]), Some(0.0));
    assert_eq!(metrics.kind("kafka_breaker_open_total"), Some("counter"));
    app.stop().await;
}

#[tokio::test]
async fn an_existing_topic_with_another_configuration_is_refused_without_blaming_the_broker() {
    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let first = spawn_app(kafka_settings(&path.join("a"), &broker)).await;
    let dag = synthetic_dag(2, "kafka-mismatch");
    first.diff("m1", &dag).await.expect("the first diff");
    first.stop().await;

    // Another DAG Manager (its own registry) that wants 2 partitions for indicators.
    let mut settings = kafka_settings(&path.join("b"), &broker);
    if let Some(indicator) = settings.topics.get_mut("indicator") {
        indicator.partitions = 2;
    }
    let second = spawn_app(settings).await;
    let refused = second.diff("m1", &dag).await.expect_err("a mismatch");
    let status = match refused {
        dagclient::ClientError::Status(status) => status,
        other => panic!("expected a status, got {other:?}"),
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("E_QUEUE_CONFIG_MISMATCH"),
        "{status:?}"
    );
    let metrics = second.metrics().await;
    assert!(
        metrics
            .value("queue_create_error_total", &[])
            .is_some_and(|v| v > 0.0)
    );
    assert_eq!(metrics.value("kafka_breaker_failures", &[]), Some(0.0));
    assert_eq!(metrics.value("kafka_breaker_state", &[]), Some(0.0));
    second.stop().await;
}

#[tokio::test]
async fn a_broker_that_goes_away_opens_the_breaker_and_one_that_returns_closes_it() {
    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let app = spawn_app(kafka_settings(&path, &broker)).await;
    app.diff("up", &synthetic_dag(2, "kafka-up"))
        .await
        .expect("the broker is up");

    broker.stop();
    for attempt in 0..3 {
        let failed = app
            .diff("down", &synthetic_dag(2, &format!("kafka-down-{attempt}")))
            .await
            .expect_err("the broker is down");
        assert!(format!("{failed:?}").contains("Unavailable"), "{failed:?}");
    }
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("kafka_breaker_state", &[]), Some(1.0));
    assert_eq!(metrics.value("kafka_breaker_open_total", &[]), Some(1.0));
    // Open: the next create fails at once, without waiting for the broker.
    let started = Instant::now();
    let fast = app.diff("down", &synthetic_dag(2, "kafka-down-fast")).await;
    assert!(fast.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    let (status, _) = test_support::http_get(&app.admin_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(status, 503, "not ready while the broker is away");

    broker.resume();
    assert_eventually!(
        app.metrics().await.value("kafka_breaker_state", &[]) == Some(0.0),
        Duration::from_secs(20),
        "the probe closes the breaker once the broker answers"
    );
    app.diff("back", &synthetic_dag(2, "kafka-back"))
        .await
        .expect("creation works again");
    app.stop().await;
}

/// Topic names on the broker.
fn broker_topics(bootstrap: &str) -> Vec<String> {
    let admin = admin(bootstrap);
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(5))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}

#[tokio::test]
async fn gc_drops_and_archives_only_the_topics_this_system_created() {
    use dagmanager::settings::{GcAction, GcPolicy};
    use rdkafka::admin::{NewTopic, TopicReplication};

    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let mut settings = kafka_settings(&path, &broker);
    let policy = |action| GcPolicy {
        ttl_secs: 0,
        grace_secs: 0,
        action,
    };
    settings.gc.policies = [
        ("raw".to_owned(), policy(GcAction::Drop)),
        ("indicator".to_owned(), policy(GcAction::Archive)),
    ]
    .into();
    let app = spawn_app(settings.clone()).await;

    // Somebody else's topic on the same broker.
    let admin = admin(&broker.bootstrap);
    admin
        .create_topics(
            [&NewTopic::new(
                "someone-elses-topic",
                1,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .expect("a foreign topic");

    let diff = app
        .diff("gc-kafka", &synthetic_dag(2, "kafka-gc"))
        .await
        .expect("the diff");
    let ours: Vec<String> = diff.queue_map.values().cloned().collect();
    let indicator = ours
        .iter()
        .find(|t| t.contains("Indicator"))
        .expect("an indicator topic")
        .clone();
    produce(
        &broker.bootstrap,
        &indicator,
        ["first", "second"].map(String::from),
    )
    .await;

    app.admin_client()
        .await
        .cleanup(proto::CleanupRequest {
            strategy_id: "gc-kafka".into(),
        })
        .await
        .expect("cleanup runs GC");
    let left = broker_topics(&broker.bootstrap);
    assert!(
        ours.iter().all(|t| !left.contains(t)),
        "our topics are dropped: {left:?}"
    );
    assert!(left.contains(&"someone-elses-topic".to_owned()), "{left:?}");

    let archived: Vec<std::path::PathBuf> = std::fs::read_dir(&settings.gc.archive_dir)
        .expect("the archive directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let lines = std::fs::read_to_string(&archived[0]).expect("the archive");
    let payloads: Vec<String> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["payload"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(payloads, ["first", "second"]);
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("gc_queues_dropped_total", &[]), Some(2.0));
    assert_eq!(metrics.value("gc_queues_archived_total", &[]), Some(1.0));
    app.stop().await;
}

#[tokio::test]
async fn queue_lag_rises_while_a_consumer_is_paused_and_falls_after_it_resumes() {
    use rdkafka::consumer::{CommitMode, Consumer};

    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let mut settings = kafka_settings(&path, &broker);
    settings.lag_interval_secs = 1;
    settings.lag_threshold_secs = 30.0;
    let app = spawn_app(settings).await;
    let diff = app
        .diff("lag", &synthetic_dag(2, "kafka-lag"))
        .await
        .expect("the diff");
    let topic = diff
        .queue_map
        .values()
        .find(|t| t.contains("Indicator"))
        .expect("an indicator topic (one partition)")
        .clone();
    produce(
        &broker.bootstrap,
        &topic,
        (0..5).map(|i| format!("event {i}")),
    )
    .await;
    let consumer = group_reader(&broker.bootstrap, "a-strategy", topic.as_str());
    // Two consumed and committed, then the consumer pauses with three left.
    take(&consumer, 2).await;
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("committed");

    let labels = [("topic", topic.as_str())];
    assert_eventually!(
        app.metrics().await.value("queue_lag_messages", &labels) == Some(3.0),
        Duration::from_secs(20),
        "three messages behind"
    );
    let first = app
        .metrics()
        .await
        .value("queue_lag_seconds", &labels)
        .unwrap_or(0.0);
    assert_eventually!(
        app.metrics()
            .await
            .value("queue_lag_seconds", &labels)
            .is_some_and(|later| later >= first + 1.5),
        Duration::from_secs(15),
        "the age of the oldest unconsumed record grows while the consumer is paused"
    );
    assert_lag_series_of(&app.metrics().await, &labels, 30.0);

    // Resumed: the rest consumed and committed.
    take(&consumer, 3).await;
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("committed");
    assert_eventually!(
        {
            let metrics = app.metrics().await;
            metrics.value("queue_lag_messages", &labels) == Some(0.0)
                && metrics.value("queue_lag_seconds", &labels) == Some(0.0)
        },
        Duration::from_secs(20),
        "no lag once the consumer caught up"
    );
    assert_eq!(
        app.metrics().await.value("queue_lag_errors_total", &[]),
        Some(0.0)
    );
    // The consumer leaves; records that arrive after it are nobody's lag.
    drop(consumer);
    assert_eventually!(
        !group_has_members(&broker.bootstrap, "a-strategy"),
        Duration::from_secs(20),
        "the consumer left its group"
    );
    produce(
        &broker.bootstrap,
        &topic,
        (5..7).map(|i| format!("event {i}")),
    )
    .await;
    // A measurement that began after the records arrived had them to count.
    lag_measured_since(&app, unix_seconds()).await;
    assert_eq!(
        app.metrics().await.value("queue_lag_messages", &labels),
        Some(0.0),
        "a group with no members is not a reader"
    );
    assert_the_kafka_families_are_exposed(&app).await;
    app.stop().await;
}

/// Waits until a lag measurement that began after `since` (unix seconds) has ended: two end
/// after it, and the second began once the first had ended.
async fn lag_measured_since(app: &TestApp, since: f64) {
    let last_run = || async {
        app.metrics()
            .await
            .value("queue_lag_last_run_timestamp", &[])
            .unwrap_or(0.0)
    };
    assert_eventually!(
        last_run().await > since,
        Duration::from_secs(20),
        "a lag measurement ends after {since}"
    );
    let measured_at = last_run().await;
    assert_eventually!(
        last_run().await > measured_at,
        Duration::from_secs(20),
        "a lag measurement begins after {since}"
    );
}

/// A queue's lag threshold is exposed beside its lag, every lag series labelled by topic only.
fn assert_lag_series_of(metrics: &Exposition, labels: &[(&str, &str)], threshold: f64) {
    assert_eq!(
        metrics.value("queue_lag_threshold_seconds", labels),
        Some(threshold)
    );
    for family in [
        "queue_lag_seconds",
        "queue_lag_messages",
        "queue_lag_threshold_seconds",
    ] {
        assert_eq!(
            metrics.label_names(family),
            Some(vec!["topic".to_owned()]),
            "{family}"
        );
    }
}

/// With a broker, the Kafka families of the catalogue are there too, and promtool agrees.
async fn assert_the_kafka_families_are_exposed(app: &TestApp) {
    let topic_label = &["topic"][..];
    test_support::assert_catalogue(
        &app.metrics().await,
        &[
            ("kafka_breaker_open_total", "counter", &[]),
            ("kafka_breaker_state", "gauge", &[]),
            ("kafka_breaker_failures", "gauge", &[]),
            ("queue_lag_seconds", "gauge", topic_label),
            ("queue_lag_messages", "gauge", topic_label),
            ("queue_lag_threshold_seconds", "gauge", topic_label),
        ],
    );
    test_support::assert_promtool_clean(&app.metrics_text().await);
}

#[tokio::test]
async fn a_broker_down_at_start_up_leaves_the_service_unready_until_it_appears() {
    // Logged by the readiness probe each time it finds the broker away.
    let (probe_failures, _logs) = count_logs("The queue service is not healthy.");
    let broker = KafkaBroker::start();
    broker.stop();
    let (_dir, path) = temp_dir();
    let app = spawn_app(kafka_settings(&path, &broker)).await;
    let readyz = || async {
        test_support::http_get(&app.admin_url("/readyz"))
            .await
            .map(|(status, _)| status)
            .unwrap_or(0)
    };
    let (status, _) = test_support::http_get(&app.admin_url("/healthz"))
        .await
        .expect("the service answers");
    assert_eq!(status, 200, "it started without the broker");
    assert_eventually!(
        probe_failures.load(Ordering::SeqCst) > 0,
        Duration::from_secs(20),
        "the readiness probe finds the queue service unhealthy"
    );
    assert_eq!(readyz().await, 503, "not ready without its broker");
    broker.resume();
    assert_eventually!(
        readyz().await == 200,
        Duration::from_secs(20),
        "ready once the broker answers"
    );
    app.diff("late", &synthetic_dag(2, "kafka-late"))
        .await
        .expect("diffs work");
    app.stop().await;
}

#[tokio::test]
async fn the_standalone_exporter_measures_lag_itself_even_when_the_dag_manager_is_away() {
    use rdkafka::admin::{NewTopic, TopicReplication};
    use rdkafka::consumer::{CommitMode, Consumer};

    let broker = KafkaBroker::start();
    let admin = admin(&broker.bootstrap);
    admin
        .create_topics(
            [&NewTopic::new("exported", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("a topic");
    produce(&broker.bootstrap, "exported", (0..3).map(|i| i.to_string())).await;
    let consumer = group_reader(&broker.bootstrap, "exported-reader", "exported");
    take(&consumer, 1).await;
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("committed");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = listener.local_addr().expect("an address");
    let shutdown = kit::shutdown::Shutdown::new();
    let settings = dagmanager::exporter::ExporterSettings {
        target: "127.0.0.1:1".into(),
        scrape_timeout: Duration::from_millis(1_500),
        kafka: Some(broker.bootstrap.clone()),
        lag_interval: Duration::from_secs(1),
        lag_threshold_secs: 45.0,
    };
    let server = tokio::spawn(dagmanager::exporter::serve_exporter(
        settings,
        listener,
        shutdown.clone(),
    ));
    let url = format!("http://{address}/metrics");
    let labels = [("topic", "exported")];
    assert_eventually!(
        test_support::scrape(&url)
            .await
            .is_ok_and(|m| m.value("queue_lag_messages", &labels) == Some(2.0)),
        Duration::from_secs(20),
        "the exporter's own lag measurement"
    );
    let metrics = test_support::scrape(&url).await.expect("a scrape");
    assert_eq!(metrics.value("dagmanager_up", &[]), Some(0.0));
    assert_eq!(
        metrics.value("queue_lag_threshold_seconds", &labels),
        Some(45.0)
    );
    assert_eq!(
        metrics.value("queue_lag_messages", &[("topic", "qmtl-leases")]),
        None
    );
    shutdown.trigger();
    let _ = server.await;
}

#[tokio::test]
async fn a_request_the_broker_refuses_as_invalid_does_not_open_the_breaker() {
    let broker = KafkaBroker::start();
    let (_dir, path) = temp_dir();
    let mut settings = kafka_settings(&path, &broker);
    for policy in settings.topics.values_mut() {
        policy.partitions = 0;
    }
    let app = spawn_app(settings).await;
    for attempt in 0..3 {
        let refused = app
            .diff(
                "bad",
                &synthetic_dag(2, &format!("kafka-refused-{attempt}")),
            )
            .await
            .expect_err("zero partitions are refused");
        assert!(
            format!("{refused:?}").contains("FailedPrecondition"),
            "{refused:?}"
        );
    }
    let metrics = app.metrics().await;
    assert_eq!(metrics.value("kafka_breaker_failures", &[]), Some(0.0));
    assert_eq!(metrics.value("kafka_breaker_state", &[]), Some(0.0));
    app.stop().await;
}
