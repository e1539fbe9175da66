//! `Runner`: submit (or run offline), plan the queue map, claim leases, backfill, then run live.

mod forward;
mod handle;
mod live;
mod plan;

use kit::shutdown::Shutdown;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument as _;

use crate::backfill::run_jobs;
use crate::engine::Engine;
use crate::gateway_client::{GatewayClient, SubmitError, Submitted};
use crate::metrics::SdkMetrics;
use crate::settings::SdkSettings;
use crate::source::unix_now;
use crate::strategy::{NodeKind, Strategy};
use crate::transport::{InProcessTransport, Transport, TransportError};

pub use handle::{RunReport, StrategyHandle};
pub use plan::{NodePlan, Plan};

/// Why a strategy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error("could not claim or subscribe to queue `{topic}`")]
    Transport {
        topic: String,
        #[source]
        source: TransportError,
    },
    #[error("the strategy has stopped")]
    Stopped,
    #[error("the strategy's run ended abnormally: {0}")]
    Crashed(String),
    #[error(
        "a strategy submitted through the Gateway keeps its context; stop it and start it again in the new one (its queues are namespaced by context)"
    )]
    ContextFixedOnline,
    #[error("the metrics server could not listen on {address}")]
    MetricsServer {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs strategies: offline, or submitted through a Gateway with their queues on a transport.
#[derive(Debug, Clone)]
pub struct Runner {
    settings: SdkSettings,
    metrics: Arc<SdkMetrics>,
    gateway: Option<Arc<GatewayClient>>,
    transport: Arc<dyn Transport>,
    history_end: Option<i64>,
}

impl Runner {
    /// Submits through the Gateway of `settings.gateway_url` when it is set (offline otherwise),
    /// with queues on `transport`. Needs a Tokio runtime.
    pub fn new(
        settings: SdkSettings,
        metrics: Arc<SdkMetrics>,
        transport: Arc<dyn Transport>,
    ) -> Runner {
        let gateway = settings
            .gateway()
            .map(|g| Arc::new(GatewayClient::new(g, &metrics)));
        Runner {
            settings,
            metrics,
            gateway,
            transport,
            history_end: None,
        }
    }

    /// Every node here, nothing submitted or published.
    pub fn offline(settings: SdkSettings, metrics: Arc<SdkMetrics>) -> Runner {
        Runner {
            settings: SdkSettings {
                gateway_url: String::new(),
                ..settings
            },
            metrics,
            gateway: None,
            transport: Arc::new(InProcessTransport::default()),
            history_end: None,
        }
    }

    /// Backfill up to this timestamp instead of the current bar.
    pub fn history_end(mut self, timestamp: i64) -> Runner {
        self.history_end = Some(timestamp);
        self
    }

    pub fn metrics(&self) -> &Arc<SdkMetrics> {
        &self.metrics
    }

    /// Starts the runtime's metrics server on `sdk.host:sdk.metrics_port` until `shutdown`;
    /// returns the address it listens on.
    pub async fn serve_metrics(&self, shutdown: Shutdown) -> Result<SocketAddr, RunError> {
        let (host, port) = (&self.settings.host, self.settings.metrics_port);
        crate::metrics::start_metrics_server(self.metrics.clone(), host, port, shutdown)
            .await
            .map_err(|source| RunError::MetricsServer {
                address: format!("{host}:{port}"),
                source,
            })
    }

    /// Runs a strategy to its end (feeds exhausted, or `shutdown`).
    pub async fn run(&self, strategy: Strategy, shutdown: Shutdown) -> Result<RunReport, RunError> {
        let handle = self.start(strategy).await?;
        let stop = handle.stop.clone();
        let watcher = tokio::spawn(async move {
            shutdown.triggered().await;
            stop.trigger();
        });
        let report = handle.join().await;
        watcher.abort();
        report
    }

    /// Submits (when connected), applies the queue map, backfills, and starts the live run.
    pub async fn start(&self, strategy: Strategy) -> Result<StrategyHandle, RunError> {
        let context = self.settings.context();
        // This strategy's own view of the transport: its flushes cover its outputs only.
        let transport = self.transport.clone().for_strategy();
        let submitted = self.submit(&strategy, &context).await?;
        let (mut engine, layout) = self.lay_out(strategy, &context);
        let queues =
            plan::plan_queue_map(&mut engine, submitted.as_ref(), &layout, transport.as_ref())
                .await?;
        // Subscribe before backfill, so records published meanwhile wait in the subscription.
        let group = self.consumer_group(submitted.as_ref());
        let subscriptions = forward::subscribe(transport.as_ref(), queues.reads, &group).await?;
        // Backfill: fetched here, replayed by the engine's thread before live data flows.
        let (history, reports) =
            run_jobs(layout.jobs, self.settings.backfill_policy(), &self.metrics).await;
        let plan = plan::report(&engine, submitted.as_ref(), &layout.queries, reports);
        // Live: feeds of the streams we produce, and the queues we read.
        let stop = Shutdown::new();
        let inputs = forward::start_forwarders(
            &engine,
            layout.feeds,
            subscriptions,
            &stop,
            self.settings.queue_depth.max(1),
            &self.metrics,
        );
        let run = live::LiveRun {
            engine,
            history,
            inputs,
            transport,
            metrics: self.metrics.clone(),
            leases: queues.leases,
        };
        live::run_live(run, plan, submitted.is_some(), stop)
    }

    /// The engine of the strategy's nodes, and what else its nodes bring (feeds, backfill
    /// jobs, tag queries).
    fn lay_out(
        &self,
        strategy: Strategy,
        context: &wire::ComputeContext,
    ) -> (Engine, plan::Layout) {
        let warmup = self.warmup_bars(&strategy);
        let history_end = self.history_end.unwrap_or_else(unix_now);
        let (setups, layout) = plan::Layout::of(strategy.nodes, warmup, history_end);
        (Engine::new(setups, self.metrics.clone(), context), layout)
    }

    /// Submits the strategy's DAG when connected to a Gateway; offline, nothing.
    async fn submit(
        &self,
        strategy: &Strategy,
        context: &wire::ComputeContext,
    ) -> Result<Option<Submitted>, RunError> {
        let Some(gateway) = &self.gateway else {
            return Ok(None);
        };
        let span = tracing::info_span!(
            "sdk.submit",
            strategy = %strategy.name(),
            world_id = %context.world_id,
            execution_domain = %context.execution_domain,
            strategy_id = tracing::field::Empty,
        );
        let submitted = gateway
            .submit(
                &strategy.dag_json(context),
                strategy.node_ids_crc32(),
                context,
            )
            .instrument(span.clone())
            .await?;
        span.record("strategy_id", submitted.strategy_id.as_str());
        Ok(Some(submitted))
    }

    /// The consumer group of the strategy's queue reads: one per strategy, so a restarted
    /// strategy resumes where it left off.
    fn consumer_group(&self, submitted: Option<&Submitted>) -> String {
        format!(
            "{}.{}",
            self.settings.consumer_group,
            submitted.map_or("offline", |s| s.strategy_id.as_str())
        )
    }

    /// Bars of history that make every node ready: along each path, a node of period `p` needs
    /// `p - 1` bars more than its inputs. `sdk.backfill_bars` overrides it.
    fn warmup_bars(&self, strategy: &Strategy) -> i64 {
        if self.settings.backfill_bars > 0 {
            return self.settings.backfill_bars as i64;
        }
        let mut need: Vec<i64> = Vec::with_capacity(strategy.nodes.len());
        for def in &strategy.nodes {
            let from_inputs = def
                .inputs
                .iter()
                .map(|i| need[i.index()])
                .max()
                .unwrap_or(1);
            let own = match def.kind {
                NodeKind::Stream { .. } => def.period as i64,
                _ => from_inputs + def.period as i64 - 1,
            };
            need.push(own.max(1));
        }
        need.into_iter().max().unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_error_names_its_cause_once_in_the_chain() {
        let error = RunError::Transport {
            topic: "q".into(),
            source: TransportError::Unavailable("the broker is away".into()),
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::from(error)),
            "could not claim or subscribe to queue `q`: the transport is unavailable: the broker is away"
        );
    }
}
