//! Feeds the tests control, observers that collect, the metrics endpoint, and the services.

use async_trait::async_trait;
use kit::shutdown::Shutdown;
use sdk_runtime::{LiveFeed, NodeRef, SdkMetrics, Strategy, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use test_support::Exposition;
use tokio::sync::mpsc;

/// A `window`-bar simple moving average of `input`.
pub(crate) fn sma(s: &mut Strategy, input: NodeRef, window: usize) -> NodeRef {
    s.node("SMA")
        .name(format!("sma{window}"))
        .input(input)
        .period(window)
        .params(serde_json::json!({"window": window}))
        .code("sma", "1")
        .compute(move |v| v.window(input).mean())
        .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)))
}

/// A live feed the test pushes bars into; dropping the sender ends it.
#[derive(Debug)]
pub(crate) struct ChannelFeed(pub mpsc::UnboundedReceiver<(i64, Value)>);

#[async_trait]
impl LiveFeed for ChannelFeed {
    async fn next(&mut self) -> Option<(i64, Value)> {
        self.0.recv().await
    }
}

pub(crate) fn channel_feed() -> (mpsc::UnboundedSender<(i64, Value)>, ChannelFeed) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (sender, ChannelFeed(receiver))
}

/// Collected `(timestamp, number)` outputs of a node.
pub(crate) type Outputs = Arc<Mutex<Vec<(i64, f64)>>>;

pub(crate) fn collector() -> (Outputs, impl FnMut(i64, &Value) + Send + 'static) {
    let outputs: Outputs = Arc::default();
    let sink = outputs.clone();
    let observe = move |at: i64, value: &Value| {
        if let (Ok(mut list), Some(n)) = (sink.lock(), value.as_f64()) {
            list.push((at, n));
        }
    };
    (outputs, observe)
}

pub(crate) fn taken(outputs: &Outputs) -> Vec<(i64, f64)> {
    outputs.lock().map(|o| o.clone()).unwrap_or_default()
}

/// Rounds to 1e-9 so hand-computed means compare exactly.
pub(crate) fn rounded(values: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
    values
        .into_iter()
        .map(|(t, v)| (t, (v * 1e9).round() / 1e9))
        .collect()
}

/// Serves the runtime's metrics on a free port; returns its address.
pub(crate) async fn serve(metrics: Arc<SdkMetrics>) -> anyhow::Result<SocketAddr> {
    Ok(
        sdk_runtime::metrics::start_metrics_server(metrics, "127.0.0.1", 0, Shutdown::new())
            .await?,
    )
}

pub(crate) async fn scrape(address: SocketAddr) -> anyhow::Result<Exposition> {
    test_support::scrape(&format!("http://{address}/metrics")).await
}

pub(crate) struct Stack {
    pub gateway: SocketAddr,
    stops: Vec<(Shutdown, tokio::task::JoinHandle<()>)>,
}

impl Stack {
    pub(crate) async fn stop(self) {
        for (shutdown, task) in self.stops.into_iter().rev() {
            shutdown.trigger();
            let _ = task.await;
        }
    }
}

/// A DAG Manager and a Gateway on embedded stores under `dir`, on free ports.
pub(crate) async fn stack(dir: &Path) -> anyhow::Result<Stack> {
    stack_with(dir, None).await
}

/// As [`stack`], with the DAG Manager's queues on a Kafka broker when one is given.
pub(crate) async fn stack_with(dir: &Path, kafka: Option<&str>) -> anyhow::Result<Stack> {
    let mut dm = dagmanager::DagManagerSettings {
        grpc_port: 0,
        admin_port: 0,
        data_dir: dir.join("dagmanager"),
        shutdown_grace_ms: 2_000,
        kafka_dsn: kafka.unwrap_or_default().to_owned(),
        ..dagmanager::DagManagerSettings::default()
    };
    dm.gc.interval_secs = 3600;
    let dm = dagmanager::App::build(dm).await?;
    let dm_addr = dm.grpc_addr();
    let dm_stop = Shutdown::new();
    let dm_task = tokio::spawn({
        let stop = dm_stop.clone();
        async move {
            let _ = dm.run_until_stopped(stop).await;
        }
    });
    let gw = gateway::App::build(gateway::GatewaySettings {
        port: 0,
        dagmanager_url: dm_addr.to_string(),
        data_dir: dir.join("gateway"),
        diff_budget_ms: 3_000,
        probe_interval_ms: 100,
        retry_interval_ms: 50,
        shutdown_grace_ms: 2_000,
        ..gateway::GatewaySettings::default()
    })
    .await?;
    let gateway = gw.addr();
    let gw_stop = Shutdown::new();
    let gw_task = tokio::spawn({
        let stop = gw_stop.clone();
        async move {
            let _ = gw.run_until_stopped(stop).await;
        }
    });
    Ok(Stack {
        gateway,
        stops: vec![(dm_stop, dm_task), (gw_stop, gw_task)],
    })
}
