//! `qmtl up`: the DAG Manager and the Gateway as separate processes on embedded defaults, then
//! the demo strategies through them, with a progress line and a summary of every service's
//! key counters. Ctrl-C drains the strategies and stops everything.

use anyhow::Context as _;
use dagmanager::metrics as dm;
use gateway::metrics as gw;
use kit::metrics::{Readiness, SPANS_DROPPED_TOTAL};
use kit::shutdown::Shutdown;
use sdk_runtime::metrics as sdk;
use sdk_runtime::{
    InProcessTransport, KafkaTransport, Mode, Plan, RunReport, Runner, SdkMetrics, SdkSettings,
    StrategyHandle, Transport,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::demo::{self, Pace};
use crate::settings::Settings;

/// What `qmtl up` was asked for.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    pub config: Option<PathBuf>,
    pub bars: u64,
    pub pace: Duration,
    pub keep_running: bool,
    /// A Kafka bootstrap list: the DAG Manager's topics and the runtime's queues go there.
    pub kafka: Option<String>,
}

/// A service process; stopped with SIGTERM (it drains) when dropped.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn spawn(
        name: &'static str,
        args: &[&str],
        env: &[(&str, String)],
        config: Option<&Path>,
        logs: &Path,
    ) -> anyhow::Result<Service> {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot write {}", log.display()))?;
        let exe = std::env::current_exe().context("cannot find the qmtl executable")?;
        let mut command = Command::new(exe);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        // Their own process group: Ctrl-C reaches `qmtl up`, which drains the strategies and
        // reads every service's counters before it stops the services.
        let child = std::os::unix::process::CommandExt::process_group(&mut command, 0)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        Ok(Service { name, child, log })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

pub(crate) async fn up(settings: Settings, options: UpOptions) -> anyhow::Result<()> {
    let _telemetry = kit::telemetry::init("sdk", &settings.telemetry)?;
    let shutdown = Shutdown::new();
    let addresses = Addresses::of(&settings);
    let services = start_services(&settings, &options, &addresses, &shutdown).await?;
    let metrics = SdkMetrics::new()?;
    let sdk_server = serve_sdk_metrics(&settings, &metrics).await?;
    print_stack(
        &settings,
        &options,
        &addresses,
        &services,
        &sdk_server.address,
    );
    let (_runner, handles) = start_demo(&settings, &options, &addresses, &metrics).await?;
    follow_progress(&handles, &metrics, &shutdown).await;
    let reports = join_strategies(handles).await;
    print_summary(&reports, &addresses, &sdk_server.address).await;

    if options.keep_running && !shutdown.is_triggered() {
        println!("\nThe services keep running; press Ctrl-C to stop them.");
        shutdown.triggered().await;
    }
    sdk_server.stop.trigger();
    let _ = sdk_server.task.await;
    for mut service in services {
        service.stop(Duration::from_secs(10));
        println!("{} stopped.", service.name);
    }
    Ok(())
}

/// The services' HTTP base addresses, as `qmtl up` prints and reads them.
struct Addresses {
    dm_admin: String,
    gateway: String,
}

impl Addresses {
    fn of(settings: &Settings) -> Addresses {
        let (dm, gw) = (&settings.dagmanager, &settings.gateway);
        Addresses {
            dm_admin: format!("http://{}:{}", dm.host, dm.admin_port),
            gateway: format!("http://{}:{}", gw.host, gw.port),
        }
    }
}

/// Starts the DAG Manager and the Gateway as processes, each stopped when dropped and on
/// Ctrl-C, and waits until both are ready.
async fn start_services(
    settings: &Settings,
    options: &UpOptions,
    addresses: &Addresses,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<Service>> {
    let children: Arc<std::sync::Mutex<Vec<u32>>> = Arc::default();
    let to_stop = children.clone();
    shutdown.trigger_on_os_signals_then(move || {
        for pid in to_stop.lock().map(|p| p.clone()).unwrap_or_default() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    });
    let logs = PathBuf::from(".qmtl-data/logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let dm = &settings.dagmanager;
    let config = options.config.as_deref();
    // The Gateway talks to the DAG Manager started here, whatever its own setting says.
    let dm_grpc = format!("{}:{}", dm.host, dm.grpc_port);
    let mut services = vec![
        Service::spawn(
            "dagmanager",
            &["service", "dagmanager", "server"],
            &options
                .kafka
                .iter()
                .map(|k| ("QMTL__DAGMANAGER__KAFKA_DSN", k.clone()))
                .collect::<Vec<_>>(),
            config,
            &logs,
        )?,
        Service::spawn(
            "gateway",
            &["service", "gateway"],
            &[("QMTL__GATEWAY__DAGMANAGER_URL", dm_grpc)],
            config,
            &logs,
        )?,
    ];
    if let Ok(mut pids) = children.lock() {
        pids.extend(services.iter().map(|s| s.child.id()));
    }
    wait_ready(
        &mut services,
        &[
            (addresses.dm_admin.as_str(), "/readyz"),
            (addresses.gateway.as_str(), "/health"),
        ],
        shutdown,
    )
    .await?;
    Ok(services)
}

/// The SDK runtime's `/metrics`, served until the summary has read it, after the strategies
/// stop.
struct SdkMetricsServer {
    address: String,
    stop: Shutdown,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve_sdk_metrics(
    settings: &Settings,
    metrics: &Arc<SdkMetrics>,
) -> anyhow::Result<SdkMetricsServer> {
    let (dm, gw, sdk) = (&settings.dagmanager, &settings.gateway, &settings.sdk);
    // The SDK's default port (8000, as in the Python SDK) is the Gateway's too: on one machine
    // a taken port gives way to a free one.
    let taken = [gw.port, dm.admin_port, dm.grpc_port];
    let sdk_port = if taken.contains(&sdk.metrics_port) {
        println!(
            "  (sdk.metrics_port {} is a service's port; the runtime takes a free one)",
            sdk.metrics_port
        );
        0
    } else {
        sdk.metrics_port
    };
    let (listener, sdk_addr) = sdk_runtime::metrics::bind_metrics(&sdk.host, sdk_port)
        .await
        .with_context(|| format!("cannot serve the runtime's metrics on port {sdk_port}"))?;
    let readiness = Readiness::default();
    readiness.set(true);
    let stop = Shutdown::new();
    let task = tokio::spawn(sdk_runtime::metrics::serve_metrics(
        metrics.clone(),
        listener,
        readiness,
        stop.clone(),
    ));
    Ok(SdkMetricsServer {
        address: format!("http://{sdk_addr}"),
        stop,
        task,
    })
}

/// What runs where: the queues' home and each process's endpoints and log.
fn print_stack(
    settings: &Settings,
    options: &UpOptions,
    addresses: &Addresses,
    services: &[Service],
    sdk_address: &str,
) {
    let (dm, dm_admin, gateway) = (
        &settings.dagmanager,
        &addresses.dm_admin,
        &addresses.gateway,
    );
    match &options.kafka {
        Some(bootstrap) => println!(
            "qmtl up: the stack is running with its queues on the Kafka broker at {bootstrap}."
        ),
        None => println!("qmtl up: the stack is running on embedded stores (no Kafka, no Neo4j)."),
    }
    println!(
        "  DAG Manager  gRPC {}:{}   metrics {dm_admin}/metrics   log {}",
        dm.host,
        dm.grpc_port,
        services[0].log.display()
    );
    println!(
        "  Gateway      {gateway}   metrics {gateway}/metrics   log {}",
        services[1].log.display()
    );
    println!("  SDK runtime  metrics {sdk_address}/metrics");
}

/// Submits the two demo strategies through the Gateway and prints their plans. The runner is
/// returned with them, to live as long as they run.
async fn start_demo(
    settings: &Settings,
    options: &UpOptions,
    addresses: &Addresses,
    metrics: &Arc<SdkMetrics>,
) -> anyhow::Result<(Runner, Vec<(&'static str, StrategyHandle)>)> {
    let sdk = &settings.sdk;
    let runner_settings = SdkSettings {
        gateway_url: addresses.gateway.clone(),
        ..sdk.clone()
    };
    let transport: Arc<dyn Transport> = match &options.kafka {
        Some(bootstrap) => Arc::new(
            KafkaTransport::new(
                bootstrap,
                Duration::from_millis(settings.dagmanager.kafka_timeout_ms),
                metrics,
            )
            .context("cannot use the Kafka broker")?,
        ),
        None => Arc::new(InProcessTransport::new(
            sdk.queue_depth,
            Duration::from_secs(1),
        )),
    };
    let runner = Runner::new(runner_settings, metrics.clone(), transport);
    let pace = Pace {
        bars: options.bars,
        every: options.pace,
    };
    let (crossover, _) = demo::ma_crossover(pace)?;
    let (trend, _) = demo::ma_trend(pace)?;
    println!(
        "Submitting two strategies that share the btc-price stream ({} bars of {} ms each, after a backfilled history) ...",
        options.bars,
        options.pace.as_millis()
    );
    let (first, second) = tokio::join!(runner.start(crossover), runner.start(trend));
    let handles = vec![
        ("ma-crossover", first.context("ma-crossover")?),
        ("ma-trend", second.context("ma-trend")?),
    ];
    for (name, handle) in &handles {
        describe_plan(name, handle.plan());
    }
    Ok((runner, handles))
}

/// A progress line a second until the strategies finish, go quiet, or Ctrl-C stops them.
async fn follow_progress(
    handles: &[(&str, StrategyHandle)],
    metrics: &SdkMetrics,
    shutdown: &Shutdown,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let started = Instant::now();
    let (mut last_read, mut quiet) = (-1.0, 0);
    loop {
        tokio::select! {
            () = shutdown.triggered() => {
                println!("\nStopping: the strategies drain, then the services stop.");
                for (_, handle) in handles {
                    handle.stop();
                }
                break;
            }
            _ = ticker.tick() => {
                if handles.iter().all(|(_, h)| h.is_finished()) {
                    break;
                }
                let exposition = metrics.render();
                // A broker's queue outlives its producer: once a strategy's feed has ended and
                // the readers have taken nothing new for two seconds, the demo is over.
                let read = sum_of(&exposition, sdk::RUNTIME_EVENTS_TOTAL, "source=\"queue\"");
                if handles.iter().any(|(_, h)| h.is_finished()) {
                    quiet = if read == last_read { quiet + 1 } else { 0 };
                    if quiet >= 2 {
                        for (_, handle) in handles {
                            handle.stop();
                        }
                        break;
                    }
                }
                last_read = read;
                println!("  {:>3} s  {}", started.elapsed().as_secs(), progress(&exposition));
            }
        }
    }
}

/// Each strategy's report once it has drained; a failed one is printed and left out.
async fn join_strategies(
    handles: Vec<(&'static str, StrategyHandle)>,
) -> Vec<(&'static str, RunReport)> {
    let mut reports = Vec::new();
    for (name, handle) in handles {
        match handle.join().await {
            Ok(report) => reports.push((name, report)),
            Err(error) => println!("  {name}: {:#}", anyhow::Error::new(error)),
        }
    }
    reports
}

/// The strategies' events, every service's key series and the queue one strategy reused.
async fn print_summary(reports: &[(&str, RunReport)], addresses: &Addresses, sdk_address: &str) {
    println!("\nSummary");
    for (name, report) in reports {
        println!("  {name}: {} live events taken", report.events);
    }
    summary(
        "DAG Manager",
        &addresses.dm_admin,
        &[
            dm::DIFF_REQUESTS_TOTAL,
            dm::DIFF_FAILURES_TOTAL,
            dm::COMPUTE_NODES_TOTAL,
            dm::QUEUES_TOTAL,
            SPANS_DROPPED_TOTAL,
        ],
    )
    .await;
    summary(
        "Gateway",
        &addresses.gateway,
        &[
            gw::GATEWAY_SUBMISSIONS_TOTAL,
            gw::LOST_REQUESTS_TOTAL,
            gw::DAGCLIENT_BREAKER.state,
            gw::GATEWAY_E2E_LATENCY_P95,
            SPANS_DROPPED_TOTAL,
        ],
    )
    .await;
    summary(
        "SDK runtime",
        sdk_address,
        &[
            sdk::NODE_PROCESSED_TOTAL,
            sdk::NODE_PROCESS_FAILURE_TOTAL,
            sdk::BACKFILL_COMPLETED_TOTAL,
            sdk::BACKFILL_FAILURE_TOTAL,
            sdk::RUNTIME_EVENTS_TOTAL,
            sdk::RUNTIME_PUBLISHED_TOTAL,
            SPANS_DROPPED_TOTAL,
        ],
    )
    .await;
    if let Some(reused) = reused_queue(reports) {
        println!("  reused queue: {reused}");
    }
}

async fn wait_ready(
    services: &mut [Service],
    endpoints: &[(&str, &str)],
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for service in services.iter_mut() {
            if let Some(status) = service.exited() {
                let tail = std::fs::read_to_string(&service.log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                anyhow::bail!(
                    "the {} exited ({status}) before it was ready; are the ports in qmtl.yml free? Its log ({}) ends:\n{}",
                    service.name,
                    service.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        let mut ready = true;
        for (address, path) in endpoints {
            ready &= matches!(crate::submit::get(address, path).await, Ok((200, _)));
        }
        if ready {
            return Ok(());
        }
        anyhow::ensure!(
            !shutdown.is_triggered(),
            "stopped before the services were ready"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the services were not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe_plan(name: &str, plan: &Plan) {
    let id = plan.strategy_id.as_deref().unwrap_or("-");
    let again = if plan.duplicate {
        " (submitted before: the same strategy)"
    } else {
        ""
    };
    println!("  {name}: strategy {id}{again}");
    for node in &plan.nodes {
        let how = match node.mode {
            Mode::Local => "computed here, published to",
            Mode::Read => "read from",
        };
        println!(
            "    {:<10} {how} {}",
            node.name,
            node.topic.as_deref().unwrap_or("-")
        );
    }
    for job in &plan.backfill {
        println!(
            "    backfill {} @{}s [{}, {}): {:?}",
            short(&job.node_id),
            job.interval,
            job.start,
            job.end,
            job.outcome
        );
    }
}

fn short(node_id: &str) -> &str {
    node_id.get(..15).unwrap_or(node_id)
}

/// The stream one strategy reads from the queue the other produces.
fn reused_queue(reports: &[(&str, RunReport)]) -> Option<String> {
    for (reader, report) in reports {
        for node in report.plan.read() {
            let producer = reports.iter().find(|(other, r)| {
                other != reader
                    && r.plan
                        .nodes
                        .iter()
                        .any(|n| n.node_id == node.node_id && n.mode == Mode::Local)
            });
            if let (Some((producer, _)), Some(topic)) = (producer, &node.topic) {
                return Some(format!(
                    "{reader} reads {} from {topic}, which {producer} produces",
                    node.name
                ));
            }
        }
    }
    None
}

/// The sum of a family's series whose labels contain `filter`.
fn sum_of(exposition: &str, family: &str, filter: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| {
            l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']) && l.contains(filter)
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Sums of the families a progress line shows.
fn progress(exposition: &str) -> String {
    let sum = |family: &str, filter: &str| sum_of(exposition, family, filter);
    format!(
        "events: {:.0} from the feed, {:.0} from queues, {:.0} backfilled | node runs: {:.0} | published: {:.0}",
        sum(sdk::RUNTIME_EVENTS_TOTAL, "source=\"feed\""),
        sum(sdk::RUNTIME_EVENTS_TOTAL, "source=\"queue\""),
        sum(sdk::RUNTIME_EVENTS_TOTAL, "source=\"backfill\""),
        sum(sdk::NODE_PROCESSED_TOTAL, ""),
        sum(sdk::RUNTIME_PUBLISHED_TOTAL, ""),
    )
}

/// Prints each family's series (summed over node ids) from a service's `/metrics`.
async fn summary(service: &str, address: &str, families: &[&str]) {
    let url = format!("{address}/metrics");
    let body = match crate::submit::get(address, "/metrics").await {
        Ok((200, body)) => body,
        other => {
            println!("  {service}: {url} did not answer ({other:?})");
            return;
        }
    };
    println!("  {service} ({url})");
    for family in families {
        let mut by_labels: Vec<(String, f64)> = Vec::new();
        for line in body.lines().filter(|l| l.starts_with(family)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let rest = &series[family.len()..];
            if !(rest.is_empty() || rest.starts_with('{')) {
                continue;
            }
            // Node ids are summed away; other labels are kept.
            let labels: Vec<&str> = rest
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|l| {
                    !l.is_empty() && !l.starts_with("node_id=") && !l.starts_with("interval=")
                })
                .collect();
            let key = labels.join(",");
            match by_labels.iter_mut().find(|(k, _)| *k == key) {
                Some((_, total)) => *total += value,
                None => by_labels.push((key, value)),
            }
        }
        for (labels, value) in by_labels {
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            println!("    {family}{labels} {value}");
        }
    }
}
