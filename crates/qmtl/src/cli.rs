//! The command tree and what each command does.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use dagclient::collect_diff;
use kit::shutdown::Shutdown;
use proto::admin_service_client::AdminServiceClient;
use proto::diff_service_client::DiffServiceClient;
use std::path::PathBuf;
use tonic::transport::Channel;

use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(name = "qmtl", version, about = "QMTL services and tools")]
pub(crate) struct Cli {
    /// Settings file (default: ./qmtl.yml when present).
    #[arg(long, global = true, env = "QMTL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the whole stack on this machine (embedded stores, no Kafka or Neo4j): the DAG
    /// Manager and the Gateway as processes, then two demo strategies through them.
    Up {
        /// Live bars each demo strategy's feed produces.
        #[arg(long, default_value_t = 200)]
        bars: u64,
        /// Milliseconds between live bars.
        #[arg(long, default_value_t = 50)]
        pace_ms: u64,
        /// Keep the services running after the demo, until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
        /// Run the queues on this Kafka broker (`host:port`) instead of in process
        /// (default: `dagmanager.kafka_dsn` when set).
        #[arg(long)]
        kafka: Option<String>,
    },
    /// Run or drive a service.
    Service {
        #[command(subcommand)]
        service: Service,
    },
    /// Submit a DAG file to the Gateway as an SDK would (`POST /strategies`), print the answer.
    Submit {
        /// The DAG document (JSON).
        #[arg(long)]
        file: PathBuf,
        /// Worlds to run in (repeat for several).
        #[arg(long = "world-id", required = true)]
        world_ids: Vec<String>,
        #[arg(long, default_value = "backtest")]
        execution_domain: String,
        #[arg(long, default_value = "")]
        as_of: String,
        /// Gateway address (default: gateway.host:port from the settings).
        #[arg(long)]
        gateway: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum Service {
    /// The Gateway: strategy submissions over HTTP, carried to the DAG Manager.
    Gateway,
    /// The DAG Manager.
    Dagmanager {
        #[command(subcommand)]
        command: DagManagerCommand,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Target {
    /// DAG Manager gRPC address (default: dagmanager.host:grpc_port from the settings).
    #[arg(long)]
    pub target: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DagManagerCommand {
    /// Run the DAG Manager (gRPC and admin HTTP) until SIGINT or SIGTERM.
    Server,
    /// A standalone metrics exporter: the running DAG Manager's live figures (read from its
    /// admin endpoint at every scrape) and `dagmanager_up`, on its own port.
    Metrics {
        /// Port to serve `/metrics` on (0: any free port; the address is logged).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// The DAG Manager's admin HTTP address (default: dagmanager.host:admin_port).
        #[arg(long)]
        target: Option<String>,
        /// How long one look at the DAG Manager may take.
        #[arg(long, default_value_t = 2000)]
        scrape_timeout_ms: u64,
        /// Measure consumer lag on this Kafka broker (`host:port`) too (default:
        /// `dagmanager.kafka_dsn` when set).
        #[arg(long)]
        kafka: Option<String>,
    },
    /// Diff a DAG file and print the queue map.
    Diff {
        /// The DAG document (JSON).
        #[arg(long)]
        file: PathBuf,
        /// Strategy id (default: derived from the file's content).
        #[arg(long)]
        strategy_id: Option<String>,
        #[arg(long, default_value = "")]
        world_id: String,
        #[arg(long, default_value = "")]
        execution_domain: String,
        #[arg(long, default_value = "")]
        as_of: String,
        #[arg(long, default_value = "")]
        partition: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print queue sizes, optionally filtered (`tag=a,b;interval=60`).
    QueueStats {
        #[arg(long, default_value = "")]
        filter: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run garbage collection now (after releasing a strategy, when one is named).
    Gc {
        #[arg(long, default_value = "")]
        strategy_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Re-run the diff of a strategy by its sentinel id.
    RedoDiff {
        #[arg(long)]
        sentinel_id: String,
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

pub(crate) async fn run(
    command: Command,
    settings: Settings,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    match command {
        Command::Up {
            bars,
            pace_ms,
            keep_running,
            kafka,
        } => {
            let kafka = kafka
                .or_else(|| Some(settings.dagmanager.kafka_dsn.clone()))
                .filter(|k| !k.trim().is_empty());
            let options = crate::up::UpOptions {
                config,
                bars,
                pace: std::time::Duration::from_millis(pace_ms),
                keep_running,
                kafka,
            };
            crate::up::up(settings, options).await
        }
        Command::Submit {
            file,
            world_ids,
            execution_domain,
            as_of,
            gateway,
        } => {
            let gateway = gateway
                .unwrap_or_else(|| format!("{}:{}", settings.gateway.host, settings.gateway.port));
            let body = crate::submit::body(&read(&file)?, &world_ids, &execution_domain, &as_of)?;
            submit(&gateway, &body).await
        }
        Command::Service {
            service: Service::Gateway,
        } => serve_gateway(settings).await,
        Command::Service {
            service: Service::Dagmanager { command },
        } => dagmanager(command, settings).await,
    }
}

/// `qmtl submit`: sends the body and prints the answer, or the strategy as the Gateway has it
/// when this DAG was submitted before.
async fn submit(gateway: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let (status, answer) = crate::submit::post(gateway, "/strategies", body).await?;
    if status == 409 {
        // Already submitted: show the strategy as the Gateway has it.
        let existing: serde_json::Value = serde_json::from_str(&answer)?;
        let strategy_id = existing["strategy_id"].as_str().unwrap_or_default();
        eprintln!("qmtl: this DAG was already submitted as strategy {strategy_id}");
        let (_, current) =
            crate::submit::get(gateway, &format!("/strategies/{strategy_id}")).await?;
        println!("{current}");
        return Ok(());
    }
    println!("{answer}");
    anyhow::ensure!(status < 400, "the Gateway answered {status}");
    Ok(())
}

/// `qmtl service dagmanager ...`: the server, its exporter, or one call to a running one.
async fn dagmanager(command: DagManagerCommand, settings: Settings) -> anyhow::Result<()> {
    match command {
        DagManagerCommand::Server => serve_dagmanager(settings).await,
        DagManagerCommand::Metrics {
            port,
            host,
            target,
            scrape_timeout_ms,
            kafka,
        } => {
            let target = target.unwrap_or_else(|| {
                format!(
                    "{}:{}",
                    settings.dagmanager.host, settings.dagmanager.admin_port
                )
            });
            let kafka = kafka
                .or_else(|| Some(settings.dagmanager.kafka_dsn.clone()))
                .filter(|k| !k.trim().is_empty());
            let exporter = dagmanager::exporter::ExporterSettings {
                target,
                scrape_timeout: std::time::Duration::from_millis(scrape_timeout_ms),
                kafka,
                lag_interval: std::time::Duration::from_secs(
                    settings.dagmanager.lag_interval_secs.max(1),
                ),
                lag_threshold_secs: settings.dagmanager.lag_threshold_secs,
            };
            serve_exporter(&settings, &host, port, exporter).await
        }
        DagManagerCommand::Diff {
            file,
            strategy_id,
            world_id,
            execution_domain,
            as_of,
            partition,
            target,
        } => {
            let dag_json = read(&file)?;
            let strategy_id = strategy_id
                .unwrap_or_else(|| format!("cli-{:08x}", wire::crc32_chain([dag_json.as_str()])));
            let request = proto::DiffRequest {
                strategy_id,
                dag_json,
                world_id,
                execution_domain,
                as_of,
                partition,
                dataset_fingerprint: String::new(),
            };
            diff(&settings, &target, request).await
        }
        DagManagerCommand::QueueStats { filter, target } => {
            let mut client = AdminServiceClient::new(connect(&settings, &target).await?);
            let stats = client
                .get_queue_stats(proto::QueueStatsRequest { filter })
                .await?
                .into_inner();
            let sizes: std::collections::BTreeMap<_, _> = stats.sizes.into_iter().collect();
            print_json(&serde_json::json!({ "sizes": sizes }))
        }
        DagManagerCommand::Gc {
            strategy_id,
            target,
        } => {
            let mut client = AdminServiceClient::new(connect(&settings, &target).await?);
            client
                .cleanup(proto::CleanupRequest { strategy_id })
                .await?;
            println!("GC ran.");
            Ok(())
        }
        DagManagerCommand::RedoDiff {
            sentinel_id,
            file,
            target,
        } => redo_diff(&settings, &target, sentinel_id, read(&file)?).await,
    }
}

/// `qmtl service dagmanager metrics`: the standalone exporter, until SIGINT or SIGTERM.
async fn serve_exporter(
    settings: &Settings,
    host: &str,
    port: u16,
    exporter: dagmanager::exporter::ExporterSettings,
) -> anyhow::Result<()> {
    let _telemetry = kit::telemetry::init("dagmanager-metrics", &settings.telemetry)?;
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    tracing::info!(
        metrics = %format!("http://{}/metrics", listener.local_addr()?),
        target = %exporter.target,
        "DAG Manager metrics exporter listening."
    );
    let shutdown = Shutdown::new();
    shutdown.trigger_on_os_signals();
    dagmanager::exporter::serve_exporter(exporter, listener, shutdown).await?;
    Ok(())
}

/// `qmtl service dagmanager diff`: one diff, its queue map printed.
async fn diff(
    settings: &Settings,
    target: &Target,
    request: proto::DiffRequest,
) -> anyhow::Result<()> {
    let mut client = DiffServiceClient::new(connect(settings, target).await?);
    let diff = collect_diff(&mut client, request).await?;
    let buffer: Vec<_> = diff
        .buffer_nodes
        .iter()
        .map(|b| serde_json::json!({"node_id": b.node_id, "lag": b.lag, "schema_hash": b.schema_hash}))
        .collect();
    print_json(&serde_json::json!({
        "sentinel_id": diff.sentinel_id,
        "version": diff.version,
        "crc32": diff.crc32,
        "chunks": diff.chunks,
        "queue_map": diff.queue_map,
        "buffer_nodes": buffer,
    }))
}

/// `qmtl service dagmanager redo-diff`: the diff of a strategy again, by its sentinel id.
async fn redo_diff(
    settings: &Settings,
    target: &Target,
    sentinel_id: String,
    dag_json: String,
) -> anyhow::Result<()> {
    let mut client = AdminServiceClient::new(connect(settings, target).await?);
    let result = client
        .redo_diff(proto::RedoDiffRequest {
            sentinel_id,
            dag_json,
        })
        .await?
        .into_inner();
    let queue_map: std::collections::BTreeMap<_, _> = result.queue_map.into_iter().collect();
    print_json(&serde_json::json!({
        "sentinel_id": result.sentinel_id,
        "version": result.version,
        "queue_map": queue_map,
    }))
}

async fn serve_dagmanager(settings: Settings) -> anyhow::Result<()> {
    let _telemetry = kit::telemetry::init("dagmanager", &settings.telemetry)?;
    let app = dagmanager::App::build(settings.dagmanager).await?;
    tracing::info!(
        grpc = %app.grpc_addr(),
        admin = %app.admin_addr(),
        version = env!("CARGO_PKG_VERSION"),
        "DAG Manager listening."
    );
    let shutdown = Shutdown::new();
    shutdown.trigger_on_os_signals();
    app.run_until_stopped(shutdown).await?;
    tracing::info!("DAG Manager stopped.");
    Ok(())
}

async fn serve_gateway(settings: Settings) -> anyhow::Result<()> {
    let _telemetry = kit::telemetry::init("gateway", &settings.telemetry)?;
    let app = gateway::App::build(settings.gateway.clone()).await?;
    tracing::info!(
        http = %app.addr(),
        dagmanager = %settings.gateway.dagmanager_url,
        version = env!("CARGO_PKG_VERSION"),
        "Gateway listening."
    );
    let shutdown = Shutdown::new();
    shutdown.trigger_on_os_signals();
    app.run_until_stopped(shutdown).await?;
    tracing::info!("Gateway stopped.");
    Ok(())
}

async fn connect(settings: &Settings, target: &Target) -> anyhow::Result<Channel> {
    let address = target.target.clone().unwrap_or_else(|| {
        format!(
            "{}:{}",
            settings.dagmanager.host, settings.dagmanager.grpc_port
        )
    });
    Ok(dagclient::connect(&address).await?)
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("could not read {}", file.display()))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
