//! The Rust SDK runtime: define a strategy as a DAG of nodes, submit it through the Gateway,
//! and run here the nodes nobody else computes, reading the others from their queues.
//!
//! ```no_run
//! # use sdk_runtime::*;
//! # fn define() -> Result<Strategy, DefineError> {
//! let mut s = Strategy::new("sma");
//! let price = s.stream_input("price").tags(["btc", "price"]).interval(60)
//!     .history(SyntheticBars::new(7)).live(SyntheticBars::new(7).feed(60)).build()?;
//! let sma = s.node("SMA").input(price).period(20).params(serde_json::json!({"window": 20}))
//!     .code("sma", "1").compute(move |v| v.window(price).mean())?;
//! # let _ = sma; Ok(s) }
//! ```

mod backfill;
mod cache;
mod engine;
mod gateway_client;
mod kafka;
pub mod metrics;
mod runner;
mod settings;
mod source;
mod strategy;
mod transport;
mod value;

pub use backfill::{BackfillOutcome, BackfillPolicy, BackfillReport};
pub use cache::{CacheView, Window, bucket};
pub use engine::Mode;
pub use gateway_client::{GatewayClient, GatewayClientSettings, SubmitError, Submitted};
pub use kafka::{KafkaTransport, LEASE_TOPIC};
pub use kit::shutdown::Shutdown;
pub use metrics::SdkMetrics;
pub use runner::{NodePlan, Plan, RunError, RunReport, Runner, StrategyHandle};
pub use settings::SdkSettings;
pub use source::{
    CsvHistory, HistoryError, HistoryProvider, HistoryRequest, LiveFeed, ReplayFeed, SyntheticBars,
    SyntheticFeed, unix_now,
};
pub use strategy::{DefineError, MatchMode, NodeBuilder, NodeRef, Observer, Strategy};
pub use transport::{
    Delivery, InProcessTransport, ProducerLease, Record, Subscription, Transport, TransportError,
};
pub use value::{Bar, ComputeError, IntoOutput, Value};
