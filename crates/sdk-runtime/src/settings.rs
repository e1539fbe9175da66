//! The `sdk` section of `qmtl.yml`.

use serde::Deserialize;
use std::time::Duration;

use crate::backfill::BackfillPolicy;
use crate::gateway_client::GatewayClientSettings;

/// How a runner submits, backfills and serves its metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SdkSettings {
    /// The metrics server binds here.
    pub host: String,
    /// `/metrics`, `/healthz`, `/readyz` of the runtime (0: any free port).
    pub metrics_port: u16,
    /// The Gateway (`http://host:port`); empty runs strategies offline, every node here.
    pub gateway_url: String,
    /// The compute context strategies run in.
    pub world_id: String,
    pub execution_domain: String,
    pub as_of: String,
    pub partition: String,
    pub submit_timeout_ms: u64,
    pub poll_interval_ms: u64,
    pub probe_interval_ms: u64,
    pub request_timeout_ms: u64,
    pub backfill_retries: u32,
    pub backfill_backoff_ms: u64,
    /// Bars of history each stream backfills; 0 works it out from the DAG (enough for every
    /// node downstream to be ready when live data starts).
    pub backfill_bars: u64,
    /// Events buffered between the feeds or queues and the nodes.
    pub queue_depth: usize,
    /// Consumer groups are `{consumer_group}.{strategy_id}`.
    pub consumer_group: String,
}

impl Default for SdkSettings {
    fn default() -> SdkSettings {
        SdkSettings {
            host: "127.0.0.1".into(),
            metrics_port: 8000,
            gateway_url: String::new(),
            world_id: "default".into(),
            execution_domain: "backtest".into(),
            as_of: String::new(),
            partition: String::new(),
            submit_timeout_ms: 30_000,
            poll_interval_ms: 100,
            probe_interval_ms: 1_000,
            request_timeout_ms: 10_000,
            backfill_retries: 3,
            backfill_backoff_ms: 200,
            backfill_bars: 0,
            queue_depth: 1024,
            consumer_group: "qmtl-sdk".into(),
        }
    }
}

impl SdkSettings {
    pub fn context(&self) -> wire::ComputeContext {
        wire::ComputeContext {
            world_id: self.world_id.clone(),
            execution_domain: self.execution_domain.clone(),
            as_of: self.as_of.clone(),
            partition: self.partition.clone(),
            dataset_fingerprint: String::new(),
        }
    }

    pub fn gateway(&self) -> Option<GatewayClientSettings> {
        (!self.gateway_url.trim().is_empty()).then(|| GatewayClientSettings {
            url: self.gateway_url.trim().to_owned(),
            submit_timeout: Duration::from_millis(self.submit_timeout_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
            probe_interval: Duration::from_millis(self.probe_interval_ms.max(1)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
        })
    }

    pub fn backfill_policy(&self) -> BackfillPolicy {
        BackfillPolicy {
            retries: self.backfill_retries,
            backoff: Duration::from_millis(self.backfill_backoff_ms),
        }
    }
}
