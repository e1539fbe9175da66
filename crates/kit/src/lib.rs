//! What every QMTL service does the same way: config loading, telemetry, the Prometheus
//! exporter, the three-strike circuit breaker, clocks and graceful shutdown. No service types.

pub mod breaker;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
