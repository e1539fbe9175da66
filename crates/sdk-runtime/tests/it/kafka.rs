//! The Kafka transport against a real broker (`scripts/tools/kafka.sh`): leases, the envelope,
//! at-least-once consumption that resumes after a restart, bad records skipped and counted, and
//! two strategies sharing a node through the broker.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sdk_runtime::{
    KafkaTransport, Mode, Record, Runner, SdkMetrics, SdkSettings, Subscription, Transport, Value,
};
use std::sync::Arc;
use std::time::Duration;
use test_support::{KafkaBroker, assert_eventually};

use crate::support::{channel_feed, collector, rounded, scrape, serve, stack_with, taken};

async fn create_topic(bootstrap: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client");
    let results = admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

fn record(timestamp: i64) -> Record {
    Record {
        payload: Value::Number(timestamp as f64),
        interval: 60,
        timestamp,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    }
}

/// A DAG Manager (queues on `broker`) and a Gateway under `dir`, and a runner submitting through
/// them in `world` with its queues on the broker; the runner's metrics endpoint.
async fn kafka_runner(
    broker: &KafkaBroker,
    dir: &std::path::Path,
    world: &str,
) -> anyhow::Result<(crate::support::Stack, Runner, std::net::SocketAddr)> {
    let stack = stack_with(dir, Some(&broker.bootstrap)).await?;
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let transport: Arc<dyn Transport> = Arc::new(KafkaTransport::new(
        &broker.bootstrap,
        Duration::from_secs(5),
        &metrics,
    )?);
    let settings = SdkSettings {
        gateway_url: format!("http://{}", stack.gateway),
        world_id: world.into(),
        as_of: "2025-01-01".into(),
        poll_interval_ms: 20,
        ..SdkSettings::default()
    };
    Ok((stack, Runner::new(settings, metrics, transport), address))
}

/// The offset `group` has committed on partition 0 of `topic`.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .ok()?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(partitions, Duration::from_secs(5))
        .ok()?;
    match offsets.elements().first()?.offset() {
        rdkafka::Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Record {
    // Records that could not be read come as acknowledgements only: acknowledged, passed over.
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("a record in time")
            .expect("the subscription is open")
            .expect("a delivery");
        let (record, ack) = delivery.into_parts();
        if let Some(ack) = ack {
            ack();
        }
        if let Some(record) = record {
            return record;
        }
    }
}

#[tokio::test]
async fn a_queue_has_one_producer_until_it_lets_go() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    let metrics = SdkMetrics::new()?;
    let transport = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(5), &metrics)?;
    let other = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(5), &metrics)?;
    let lease = transport.claim_producer("q-lease").await?;
    assert!(lease.is_some());
    assert!(other.claim_producer("q-lease").await?.is_none(), "held");
    assert!(other.claim_producer("another-queue").await?.is_some());
    drop(lease);
    assert_eventually!(
        other
            .claim_producer("q-lease")
            .await
            .ok()
            .flatten()
            .is_some(),
        Duration::from_secs(10),
        "released, the queue can be claimed"
    );
    Ok(())
}

#[tokio::test]
async fn records_keep_their_envelope_and_trace_and_a_restarted_reader_resumes() -> anyhow::Result<()>
{
    let broker = KafkaBroker::start();
    create_topic(&broker.bootstrap, "q-resume").await;
    let metrics = SdkMetrics::new()?;
    let transport = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(5), &metrics)?;
    for t in 1..=6 {
        transport.publish("q-resume", record(60 * t)).await?;
    }
    transport.flush().await?;

    let mut first = transport.subscribe("q-resume", "g-resume").await?;
    let seen = next(&mut first).await;
    assert_eq!(seen, record(60), "payload, interval, timestamp");
    assert_eq!(seen.traceparent, record(60).traceparent, "the trace header");
    for t in 2..=3 {
        assert_eq!(next(&mut first).await.timestamp, 60 * t);
    }
    // Stopped after three acknowledged records; its group resumes at the fourth, once the
    // three are committed (dropping the subscription commits them).
    drop(first);
    assert_eventually!(
        committed(&broker.bootstrap, "g-resume", "q-resume") == Some(3),
        Duration::from_secs(10),
        "the first reader's three acknowledged records are committed"
    );
    let mut again = transport.subscribe("q-resume", "g-resume").await?;
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(next(&mut again).await.timestamp);
    }
    assert_eq!(rest, vec![240, 300, 360], "none lost, none read twice");
    // Another group reads everything.
    let mut other = transport.subscribe("q-resume", "g-other").await?;
    assert_eq!(next(&mut other).await.timestamp, 60);
    Ok(())
}

#[tokio::test]
async fn a_record_that_is_not_an_envelope_is_counted_and_skipped() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    create_topic(&broker.bootstrap, "q-bad").await;
    let metrics = SdkMetrics::new()?;
    let address = serve(metrics.clone()).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()?;
    producer
        .send(
            FutureRecord::<(), str>::to("q-bad").payload("{not an envelope"),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    let transport = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(5), &metrics)?;
    transport.publish("q-bad", record(60)).await?;
    transport.flush().await?;
    let mut sub = transport.subscribe("q-bad", "g-bad").await?;
    assert_eq!(next(&mut sub).await.timestamp, 60);
    let scraped = scrape(address).await?;
    assert_eq!(scraped.value("runtime_bad_records_total", &[]), Some(1.0));
    Ok(())
}

#[tokio::test]
async fn two_strategies_share_a_node_through_the_broker() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir()?;
    let (stack, runner, address) = kafka_runner(&broker, dir.path(), "wk").await?;
    let (bars_in, feed_a) = channel_feed();
    let (_unused, feed_b) = channel_feed();
    let (a, _, _) = crate::online::with_sma("fast", 2, feed_a);
    let (mut b, _, slow) = crate::online::with_sma("slow", 3, feed_b);
    let (slow_means, observe) = collector();
    b.observe(slow, observe)?;
    let first = runner.start(a).await?;
    let second = runner.start(b).await?;
    assert_eq!(first.plan().nodes[0].mode, Mode::Local);
    assert_eq!(
        second.plan().nodes[0].mode,
        Mode::Read,
        "the price is read from the broker"
    );
    for k in 1..=5 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    assert_eventually!(
        taken(&slow_means).len() == 3,
        Duration::from_secs(20),
        "the reader computes from the broker's records"
    );
    assert_eq!(
        rounded(taken(&slow_means)),
        vec![(180, 2.0), (240, 3.0), (300, 4.0)]
    );
    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("runtime_events_total", &[("source", "queue")]),
        Some(5.0)
    );
    // Idle now, the reader has committed everything it processed: no phantom lag.
    let group = format!(
        "qmtl-sdk.{}",
        second.plan().strategy_id.clone().unwrap_or_default()
    );
    let topic = second.plan().nodes[0].topic.clone().unwrap_or_default();
    assert_eventually!(
        committed(&broker.bootstrap, &group, &topic) == Some(5),
        Duration::from_secs(10),
        "the last processed record is committed while the reader waits"
    );
    drop(bars_in);
    first.join().await?;
    second.stop();
    second.join().await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_reader_stopped_and_restarted_resumes_where_it_left_off() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir()?;
    let (stack, runner, address) = kafka_runner(&broker, dir.path(), "wr").await?;
    let (bars_in, feed_a) = channel_feed();
    let (a, _, _) = crate::online::with_sma("fast", 2, feed_a);
    let producer = runner.start(a).await?;
    let reader = |name: &str| {
        let (_unused, feed) = channel_feed();
        let (mut s, price, _) = crate::online::with_sma(name, 3, feed);
        let (seen, observe) = collector();
        s.observe(price, observe).map(|()| (s, seen))
    };

    let (b, seen) = reader("slow")?;
    let first = runner.start(b).await?;
    assert_eq!(first.plan().nodes[0].mode, Mode::Read);
    for k in 1..=5 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    assert_eventually!(
        taken(&seen).len() == 5,
        Duration::from_secs(20),
        "five read"
    );
    first.stop();
    first.join().await?;

    // While it is away, five more bars; the same strategy again reads exactly those.
    for k in 6..=10 {
        bars_in.send((60 * k, Value::Number(k as f64)))?;
    }
    let (b, seen_again) = reader("slow")?;
    let again = runner.start(b).await?;
    assert!(
        again.plan().duplicate,
        "the same strategy, so the same consumer group"
    );
    assert_eventually!(
        taken(&seen_again).len() >= 5,
        Duration::from_secs(20),
        "the rest read after the restart"
    );
    // Once the restarted reader has committed the queue's last record, it has processed every
    // record it was going to read (one partition, in order): a record read twice would be in
    // the list by now.
    let group = format!(
        "qmtl-sdk.{}",
        again.plan().strategy_id.clone().unwrap_or_default()
    );
    let topic = again.plan().nodes[0].topic.clone().unwrap_or_default();
    assert_eventually!(
        committed(&broker.bootstrap, &group, &topic) == Some(10),
        Duration::from_secs(10),
        "the restarted reader commits the queue's last record"
    );
    let timestamps: Vec<i64> = taken(&seen_again).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        timestamps,
        vec![360, 420, 480, 540, 600],
        "none lost, none twice"
    );
    let scraped = scrape(address).await?;
    assert_eq!(
        scraped.value("runtime_events_total", &[("source", "queue")]),
        Some(10.0)
    );
    drop(bars_in);
    producer.join().await?;
    again.stop();
    again.join().await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_broker_that_dies_fails_the_flush_in_bounded_time() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    create_topic(&broker.bootstrap, "q-down").await;
    let metrics = SdkMetrics::new()?;
    let transport = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(2), &metrics)?;
    transport.publish("q-down", record(60)).await?;
    transport.flush().await?;

    broker.stop();
    // Taken (the producer buffers it), then reported undelivered: the runner counts it in
    // runtime_publish_failure_total and leaves the inputs unacknowledged.
    transport.publish("q-down", record(120)).await?;
    let started = std::time::Instant::now();
    let failed = transport.flush().await;
    assert!(
        failed.is_err(),
        "undelivered records are an error, not silence"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_topic_deleted_under_a_reader_neither_crashes_nor_ends_it() -> anyhow::Result<()> {
    let broker = KafkaBroker::start();
    create_topic(&broker.bootstrap, "q-gone").await;
    let metrics = SdkMetrics::new()?;
    let transport = KafkaTransport::new(&broker.bootstrap, Duration::from_secs(2), &metrics)?;
    transport.publish("q-gone", record(60)).await?;
    transport.flush().await?;
    let mut sub = transport.subscribe("q-gone", "g-gone").await?;
    assert_eq!(next(&mut sub).await.timestamp, 60);

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()?;
    admin
        .delete_topics(&["q-gone"], &AdminOptions::new())
        .await?;
    // The reader sees an error or nothing for a while; it does not end or panic.
    let waited = tokio::time::timeout(Duration::from_secs(3), sub.next()).await;
    if let Ok(Some(Ok(delivery))) = &waited {
        panic!("a record from a deleted topic: {:?}", delivery.record);
    }
    assert!(!matches!(waited, Ok(None)), "the subscription did not end");
    Ok(())
}
