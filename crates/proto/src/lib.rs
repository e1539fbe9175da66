//! Generated gRPC types and stubs for `qmtl.services.dagmanager`; nothing hand-written lives here.

#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::allow_attributes_without_reason,
    reason = "generated code is not ours to lint"
)]

tonic::include_proto!("qmtl.services.dagmanager");
