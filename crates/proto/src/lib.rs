//! Generated gRPC types and stubs for `qmtl.services.dagmanager`; nothing hand-written lives here.

#![allow(
    clippy::all,
    clippy::pedantic,
    reason = "generated code is not ours to lint"
)]

tonic::include_proto!("qmtl.services.dagmanager");
