//! What the `qmtl` binary's test files share: running `qmtl up` on free ports.

use std::path::Path;
use std::process::{Command, Output};

pub(crate) use test_support::free_port;

/// Runs `qmtl up` in `dir` on free ports, with `env` on top and these arguments. Ports are
/// picked free, then bound by the services a moment later; another test can take one in
/// between, so a run that lost a port is tried again on new ones. The last run's output.
pub(crate) fn qmtl_up(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut attempts = 0;
    loop {
        let output = Command::new(env!("CARGO_BIN_EXE_qmtl"))
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("QMTL__DAGMANAGER__GRPC_PORT", free_port().to_string())
            .env("QMTL__DAGMANAGER__ADMIN_PORT", free_port().to_string())
            .env("QMTL__GATEWAY__PORT", free_port().to_string())
            .env("QMTL__SDK__METRICS_PORT", free_port().to_string())
            .env("QMTL__SDK__AS_OF", "2025-01-01")
            .envs(env.iter().copied())
            .arg("up")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("qmtl up did not run: {e}"));
        attempts += 1;
        let lost_a_port =
            String::from_utf8_lossy(&output.stderr).contains("Address already in use");
        if output.status.success() || !lost_a_port || attempts == 3 {
            return output;
        }
    }
}
