//! The DAG Manager: owns the global graph of compute nodes and their queues, answers diffs over
//! gRPC, garbage-collects orphan queues, and serves its own metrics and admin endpoints.

pub mod admin;
pub mod app;
mod codec;
pub mod diff;
pub mod exporter;
pub mod gc;
mod graph_index;
pub mod grpc;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod parse_cache;
pub mod queues;
pub mod settings;
pub mod store;

pub use app::{App, BuildError, RunError};
pub use settings::DagManagerSettings;
