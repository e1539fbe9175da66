//! Loads one typed settings tree from `qmtl.yml` layered with `QMTL__SECTION__KEY` environment
//! variables; unknown keys are refused with their full path.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} could not be read")]
    Read {
        path: PathBuf,
        #[source]
        source: Box<config::ConfigError>,
    },
    #[error("invalid setting `{path}`: {message}")]
    Invalid { path: String, message: String },
}

/// Where settings come from: an optional YAML file, then environment-style overrides.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    /// `QMTL__DAGMANAGER__GRPC_PORT`-style variables; tests pass a map, `main` the process env.
    pub env: HashMap<String, String>,
}

impl ConfigSources {
    /// The file given on the command line plus the process environment's `QMTL__*` variables.
    pub fn from_process(file: Option<&Path>) -> ConfigSources {
        ConfigSources {
            file: file.map(Path::to_path_buf),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with("QMTL__"))
                .collect(),
        }
    }

    pub fn with_env(mut self, key: &str, value: &str) -> ConfigSources {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// Deserialises `T` from the sources. `T` should deny unknown fields at every level.
pub fn load<T: DeserializeOwned>(sources: &ConfigSources) -> Result<T, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = &sources.file {
        builder =
            builder.add_source(config::File::from(path.as_path()).format(config::FileFormat::Yaml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("QMTL")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(sources.env.clone())),
    );
    let merged = builder.build().map_err(|source| ConfigError::Read {
        path: sources.file.clone().unwrap_or_default(),
        source: Box::new(source),
    })?;
    serde_path_to_error::deserialize(merged).map_err(|error| ConfigError::Invalid {
        path: error.path().to_string(),
        message: error.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Section {
        port: u16,
        name: String,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Tree {
        service: Section,
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmtl.yml");
        std::fs::write(&path, "service:\n  port: 8000\n  name: a\n").unwrap();
        let sources = ConfigSources {
            file: Some(path),
            env: HashMap::new(),
        }
        .with_env("QMTL__SERVICE__PORT", "0");
        let tree: Tree = load(&sources).unwrap();
        assert_eq!(tree.service.port, 0);
        assert_eq!(tree.service.name, "a");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmtl.yml");
        std::fs::write(&path, "service:\n  prot: 8000\n").unwrap();
        let sources = ConfigSources {
            file: Some(path),
            env: HashMap::new(),
        };
        let error = load::<Tree>(&sources).unwrap_err().to_string();
        assert!(error.contains("`service.prot`"), "{error}");
        assert!(error.contains("prot"), "{error}");
    }
}
