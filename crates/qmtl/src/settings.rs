//! The whole `qmtl.yml` tree: one section per service plus `telemetry`.

use dagmanager::DagManagerSettings;
use gateway::GatewaySettings;
use kit::config::{ConfigError, ConfigSources};
use kit::telemetry::TelemetrySettings;
use sdk_runtime::SdkSettings;
use serde::Deserialize;
use std::path::Path;

/// Every setting of every service, as `qmtl.yml` lays it out.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    pub dagmanager: DagManagerSettings,
    pub gateway: GatewaySettings,
    pub sdk: SdkSettings,
    pub telemetry: TelemetrySettings,
}

/// The file given with `--config`, else `./qmtl.yml` when present, else built-in defaults;
/// `QMTL__SECTION__KEY` variables override any of them.
pub(crate) fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    let default_file = Path::new("qmtl.yml");
    let file = path.or_else(|| default_file.exists().then_some(default_file));
    kit::config::load(&ConfigSources::from_process(file))
}
