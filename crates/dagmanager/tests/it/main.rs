//! Integration tests of the DAG Manager: each builds the real service on port 0 over gRPC and
//! HTTP, with its embedded stores in a temporary directory.

mod admin;
mod bad_input;
mod diff;
mod gc;
mod kafka;
mod metrics;
mod support;
