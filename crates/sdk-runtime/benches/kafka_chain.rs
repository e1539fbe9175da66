//! Events per second through the runtime on a real broker, next to a plain rdkafka loop on the
//! same broker, printed as a ratio.
//!
//! - Plain: an rdkafka producer (idempotent, `acks=all`, as the runtime's) sends N records to a
//!   topic while a consumer group reads them. The figure is N over the time to the last record.
//!   A second plain run also produces one output record per input, as the runtime's reader
//!   publishes its SMA: the same records through the broker as the runtime.
//! - Runtime: strategy A produces a price stream of N bars (produce); strategy B reads it from
//!   the broker (consume), computes a 5-bar SMA (compute) and publishes it (publish). The figure
//!   is N over the time until B has processed every bar.
//!
//! Both are measured in steady state: the clock starts once the consumers have joined their
//! groups (for the runtime, once a first bar has gone from A to B).
//!
//! Both start `scripts/tools/kafka.sh`'s broker; the runtime also runs a DAG Manager (queues on
//! that broker) and a Gateway in this process.
//!
//! Run: `cargo bench -p sdk-runtime --bench kafka_chain [-- EVENTS]`

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sdk_runtime::{
    KafkaTransport, Mode, Runner, SdkMetrics, SdkSettings, Shutdown, Strategy, Transport, Value,
};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `outputs`: also publish one output record per input to a second topic, as the runtime's
/// reader does, so both sides put the same records through the broker.
async fn plain(bootstrap: &str, events: usize, outputs: bool) -> anyhow::Result<f64> {
    let topic = format!("plain-{}-{outputs}", std::process::id());
    let output_topic = format!("{topic}-out");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    admin
        .create_topics(
            [
                &NewTopic::new(&topic, 1, TopicReplication::Fixed(1)),
                &NewTopic::new(&output_topic, 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("plain-bench-{outputs}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let consumer = Arc::new(consumer);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    // Steady state: the consumer has joined its group before the clock starts.
    let reading = consumer.clone();
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        while seen < events {
            if reading.recv().await.is_ok() {
                seen += 1;
            }
        }
    });
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let payload = br#"{"payload":100.0,"interval":60,"timestamp":60}"#;
    let mut sent = 0;
    while sent < events {
        match producer.send_result(FutureRecord::<(), [u8]>::to(&topic).payload(&payload[..])) {
            Ok(_) => sent += 1,
            Err(_) => {
                producer.poll(Duration::from_millis(1));
            }
        }
        while outputs
            && producer
                .send_result(FutureRecord::<(), [u8]>::to(&output_topic).payload(&payload[..]))
                .is_err()
        {
            producer.poll(Duration::from_millis(1));
        }
    }
    producer.flush(Duration::from_secs(30))?;
    reader.await?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Bars handed over by the bench once both strategies are running.
#[derive(Debug)]
struct GatedFeed(tokio::sync::mpsc::UnboundedReceiver<(i64, Value)>);

#[async_trait::async_trait]
impl sdk_runtime::LiveFeed for GatedFeed {
    async fn next(&mut self) -> Option<(i64, Value)> {
        self.0.recv().await
    }
}

/// A DAG Manager with its queues on the broker and a Gateway, on free ports, until `stop`.
struct Services {
    gateway: std::net::SocketAddr,
    stop: Shutdown,
    /// The Gateway's task, then the DAG Manager's: awaited in that order.
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Services {
    async fn start(bootstrap: &str, dir: &std::path::Path) -> anyhow::Result<Services> {
        let mut dm = dagmanager::DagManagerSettings {
            grpc_port: 0,
            admin_port: 0,
            data_dir: dir.join("dagmanager"),
            kafka_dsn: bootstrap.to_owned(),
            ..dagmanager::DagManagerSettings::default()
        };
        dm.gc.interval_secs = 3600;
        let dm = dagmanager::App::build(dm).await?;
        let dm_addr = dm.grpc_addr();
        let stop = Shutdown::new();
        let dm_task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = dm.run_until_stopped(stop).await;
            }
        });
        let gw = gateway::App::build(gateway::GatewaySettings {
            port: 0,
            dagmanager_url: dm_addr.to_string(),
            data_dir: dir.join("gateway"),
            ..gateway::GatewaySettings::default()
        })
        .await?;
        let gateway = gw.addr();
        let gw_task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = gw.run_until_stopped(stop).await;
            }
        });
        Ok(Services {
            gateway,
            stop,
            tasks: [gw_task, dm_task],
        })
    }

    async fn stop(self) {
        self.stop.trigger();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The producer (the price stream, fed by `feed`) or the reader (the price and an SMA over it,
/// counting the price bars it sees).
fn define(feed: Option<GatedFeed>, with_sma: bool) -> anyhow::Result<(Strategy, Arc<AtomicUsize>)> {
    let mut s = Strategy::new(if with_sma { "reader" } else { "producer" });
    let mut price = s
        .stream_input("price")
        .tags(["bench", "price"])
        .interval(60);
    if let Some(feed) = feed {
        price = price.live(feed);
    }
    let price = price.build()?;
    let seen = Arc::new(AtomicUsize::new(0));
    if with_sma {
        let sma = s
            .node("SMA")
            .input(price)
            .period(5)
            .params(json!({"window": 5}))
            .code("sma", "1")
            .compute(move |v| v.window(price).mean())?;
        let counter = seen.clone();
        s.observe(price, move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        })?;
        let _ = sma;
    }
    Ok((s, seen))
}

async fn runtime(bootstrap: &str, events: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let services = Services::start(bootstrap, dir.path()).await?;
    let metrics = SdkMetrics::new()?;
    let transport: Arc<dyn Transport> = Arc::new(KafkaTransport::new(
        bootstrap,
        Duration::from_secs(10),
        &metrics,
    )?);
    let settings = SdkSettings {
        gateway_url: format!("http://{}", services.gateway),
        world_id: "bench".into(),
        as_of: "2025-01-01".into(),
        poll_interval_ms: 10,
        ..SdkSettings::default()
    };
    let runner = Runner::new(settings, metrics, transport);
    let (bars, gate) = tokio::sync::mpsc::unbounded_channel();
    let (producer, _) = define(Some(GatedFeed(gate)), false)?;
    let (reader, seen) = define(None, true)?;
    let a = runner.start(producer).await?;
    let b = runner.start(reader).await?;
    anyhow::ensure!(
        a.plan().nodes[0].mode == Mode::Local,
        "A produces the stream"
    );
    anyhow::ensure!(
        b.plan().nodes[0].mode == Mode::Read,
        "B reads it from the broker"
    );
    // Steady state: both strategies running and B's consumer in its group (a first bar has
    // made the round trip) before the clock starts.
    bars.send((60, Value::Number(100.0)))?;
    let warm = Instant::now();
    while seen.load(Ordering::Relaxed) < 1 {
        anyhow::ensure!(warm.elapsed() < Duration::from_secs(60), "no first bar");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    for k in 2..=events as i64 + 1 {
        bars.send((60 * k, Value::Number(100.0 + (k % 7) as f64)))?;
    }
    drop(bars);
    let events = events + 1;
    while seen.load(Ordering::Relaxed) < events {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "B did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (events - 1) as f64 / started.elapsed().as_secs_f64();
    a.join().await?;
    b.stop();
    b.join().await?;
    services.stop().await;
    Ok(rate)
}

fn main() -> anyhow::Result<()> {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("{}", test_support::bench::machine_facts());
    let broker = test_support::KafkaBroker::start();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let plain_once = tokio.block_on(plain(&broker.bootstrap, events, false))?;
    let plain_both = tokio.block_on(plain(&broker.bootstrap, events, true))?;
    let runtime = tokio.block_on(runtime(&broker.bootstrap, events))?;
    println!("plain rdkafka produce+consume: {plain_once:.0} events/s ({events} events)");
    println!(
        "plain rdkafka produce+consume+produce outputs: {plain_both:.0} events/s ({events} events)"
    );
    println!("runtime produce+consume+SMA+publish: {runtime:.0} events/s ({events} events)");
    println!(
        "ratio runtime/plain: {:.2}; against the plain loop with outputs: {:.2}",
        runtime / plain_once,
        runtime / plain_both
    );
    Ok(())
}
