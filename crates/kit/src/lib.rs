//! What every QMTL service does the same way: config loading, telemetry, the Prometheus
//! exporter, the three-strike circuit breaker and the probe that closes it, the HTTP client,
//! clocks and graceful shutdown. No service types.

pub mod breaker;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod probe;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
