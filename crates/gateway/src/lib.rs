//! The Gateway: takes strategy submissions over HTTP, checks them, stores them durably before
//! answering, and carries each one to the DAG Manager and on to `completed` or `failed`.

pub mod api;
pub mod app;
pub mod carrier;
pub mod link;
pub mod metrics;
pub mod routes;
pub mod settings;
pub mod submissions;
pub mod validate;

pub use app::{App, BuildError};
pub use settings::GatewaySettings;
