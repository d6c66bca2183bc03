//! Why a local run could not start or went wrong, with the exit status the CLI gives it.

use crate::manifest::ManifestError;

/// Why the run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The manifest is not a valid TrainingJob.
    #[error("{}", render(.file, .errors))]
    Invalid {
        /// The file.
        file: String,
        /// Its problems.
        errors: Vec<ManifestError>,
    },
    /// Something needed is missing or unreachable.
    #[error("{0}")]
    Preflight(String),
    /// Local I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Another `ferrotrain run` of the same job in the same state directory is running.
    #[error(
        "job {job} is already running under PID {pid} (lock {lock}); stop it first, or use another --state-dir"
    )]
    AlreadyRunning {
        /// The job.
        job: String,
        /// The PID that holds the lock, as it wrote it.
        pid: String,
        /// The lock file.
        lock: String,
    },
    /// Workers of an earlier run of the job are still alive.
    #[error(
        "workers of an earlier run of {job} are still alive after {seconds}s (lock {lock}); stop them first"
    )]
    EarlierWorkersAlive {
        /// The job.
        job: String,
        /// How long was waited.
        seconds: u64,
        /// The gang lock file.
        lock: String,
    },
}

impl RunError {
    /// The message as the CLI prints it for `file`: a refusal that names a field of the manifest
    /// (`spec.…`) starts with the file, as validation errors do.
    pub fn for_file(&self, file: &std::path::Path) -> String {
        match self {
            RunError::Preflight(message) if message.starts_with("spec.") => {
                format!("{}: {message}", file.display())
            }
            other => other.to_string(),
        }
    }
}

fn render(file: &str, errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(|e| e.in_file(file))
        .collect::<Vec<_>>()
        .join("\n")
}
