//! The gRPC services, wire-identical to the Python QMTL's `qmtl.services.dagmanager`: the diff
//! stream (`diff_stream`), the small services (`services`), and how a diff's error becomes a status.

mod diff_stream;
mod services;

use tonic::Status;

use crate::diff::DiffError;
use crate::queues::QueueAdminError;

pub use diff_stream::{AckRegistry, DiffServer, MAX_CHUNK_NODES, StreamSettings};
pub use services::{AdminServer, HealthServer, QueueFilter, TagQueryServer};

impl From<&DiffError> for Status {
    fn from(error: &DiffError) -> Status {
        let message = format!("{}: {error}", error.code());
        match error {
            DiffError::MissingStrategyId | DiffError::UnknownDomain { .. } => {
                Status::invalid_argument(message)
            }
            DiffError::Dag(wire::DagError::TooLarge { .. }) => Status::resource_exhausted(message),
            DiffError::Dag(_) => Status::invalid_argument(message),
            DiffError::CrossContext { .. } => Status::failed_precondition(message),
            DiffError::QueueCreate(
                QueueAdminError::ConfigMismatch { .. } | QueueAdminError::Refused { .. },
            ) => Status::failed_precondition(message),
            DiffError::QueueCreate(_) | DiffError::Store(_) => Status::unavailable(message),
        }
    }
}
