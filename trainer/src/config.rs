//! Where the trainer's configuration comes from: the env contract inside a worker, or a
//! `--config FILE.yaml` holding a `spec.trainer` document when run standalone.

use std::path::Path;

use ferrotrain_crds::env::{self, EnvError, WorkerEnv};
use ferrotrain_crds::validate::validate_trainer_spec;
use ferrotrain_crds::{FieldError, TrainerSpec};

/// Why no usable configuration was found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not a trainer spec.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The YAML error, with line and column.
        source: serde_yaml::Error,
    },
    /// The env contract is incomplete or malformed.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The trainer spec fails semantic validation.
    #[error("invalid trainer configuration:\n{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates a standalone trainer config file.
pub fn from_file(path: &Path) -> Result<TrainerSpec, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let spec: TrainerSpec = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: shown,
        source,
    })?;
    validate_trainer_spec(&spec).map_err(ConfigError::Invalid)?;
    Ok(spec)
}

/// Reads the env contract of a worker started by the operator or `ferrotrain run`.
pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<WorkerEnv, ConfigError> {
    let worker = WorkerEnv::from_env(lookup)?;
    validate_trainer_spec(&worker.trainer).map_err(ConfigError::Invalid)?;
    Ok(worker)
}

/// Directory of the built-in datasets: the env contract's data dir, else `data/` next to the
/// workspace (for development and tests).
pub fn data_dir(lookup: impl Fn(&str) -> Option<String>) -> std::path::PathBuf {
    lookup(env::DATA_DIR)
        .map(Into::into)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_config_is_parsed_and_validated() {
        let dir = std::env::temp_dir().join(format!("ferrotrain-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "model: {type: mlp}\ndataset: {type: mnist}\nbatchSize: 64\nepochs: 1\n",
        )
        .expect("write");
        assert_eq!(from_file(&good).expect("valid").batch_size, 64);
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "model: {type: mlp}\ndataset: {type: csv, uri: 'ftp://x/y'}\nbatchSize: 64\nepochs: 1\n").expect("write");
        let err = from_file(&bad).expect_err("ftp dataset");
        assert!(
            err.to_string()
                .contains("spec.trainer.dataset.uri: scheme \"ftp\""),
            "{err}"
        );
        let typo = dir.join("typo.yaml");
        std::fs::write(&typo, "model: {type: mlpp}\n").expect("write");
        assert!(matches!(from_file(&typo), Err(ConfigError::Parse { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn env_config_requires_the_contract() {
        assert!(matches!(
            from_env(|_| None),
            Err(ConfigError::Env(EnvError::Missing(_)))
        ));
        assert!(data_dir(|_| None).ends_with("data"));
        assert_eq!(
            data_dir(|_| Some("/opt/data".into())),
            std::path::PathBuf::from("/opt/data")
        );
    }
}
