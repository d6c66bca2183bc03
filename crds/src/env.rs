//! The env contract between the operator (or local runner) and a worker: the only place in the
//! workspace that spells these variable names. The operator builds pods with [`WorkerEnv::to_env`];
//! the trainer reads them back with [`WorkerEnv::from_env`].

use serde::{Deserialize, Serialize};

use crate::run_policy::CheckpointSpec;
use crate::trainer_spec::TrainerSpec;

/// Rank of this worker, 0-based.
pub const RANK: &str = "FERROTRAIN_RANK";
/// Number of workers in this attempt.
pub const WORLD_SIZE: &str = "FERROTRAIN_WORLD_SIZE";
/// Host name or address of rank 0, where every rank rendezvouses.
pub const RENDEZVOUS_ADDR: &str = "FERROTRAIN_RENDEZVOUS_ADDR";
/// TCP port of rank 0's rendezvous listener.
pub const RENDEZVOUS_PORT: &str = "FERROTRAIN_RENDEZVOUS_PORT";
/// Gang attempt number; peers of another attempt are refused at rendezvous.
pub const ATTEMPT: &str = "FERROTRAIN_ATTEMPT";
/// Name of the TrainingJob.
pub const JOB_NAME: &str = "FERROTRAIN_JOB_NAME";
/// Namespace of the TrainingJob.
pub const JOB_NAMESPACE: &str = "FERROTRAIN_JOB_NAMESPACE";
/// UID of the TrainingJob (absent for local runs).
pub const JOB_UID: &str = "FERROTRAIN_JOB_UID";
/// `spec.trainer` as JSON.
pub const TRAINER_CONFIG: &str = "FERROTRAIN_TRAINER_CONFIG";
/// `spec.checkpoint` as JSON (without credentials).
pub const CHECKPOINT_CONFIG: &str = "FERROTRAIN_CHECKPOINT_CONFIG";
/// `spec.output` as JSON.
pub const OUTPUT_CONFIG: &str = "FERROTRAIN_OUTPUT_CONFIG";
/// URL rank 0 POSTs progress reports to.
pub const PROGRESS_URL: &str = "FERROTRAIN_PROGRESS_URL";
/// File holding the bearer token for progress reports.
pub const PROGRESS_TOKEN_PATH: &str = "FERROTRAIN_PROGRESS_TOKEN_PATH";
/// CA bundle (PEM) to verify the progress endpoint's certificate with, when it serves TLS.
pub const PROGRESS_CA: &str = "FERROTRAIN_PROGRESS_CA";
/// File holding the job's gang key: every connection between ranks proves it holds it.
pub const GANG_KEY_PATH: &str = "FERROTRAIN_GANG_KEY_PATH";
/// Writable scratch directory (an emptyDir in a pod).
pub const SCRATCH_DIR: &str = "FERROTRAIN_SCRATCH_DIR";
/// Directory holding the built-in datasets (`mnist/`); the trainer image sets it.
pub const DATA_DIR: &str = "FERROTRAIN_DATA_DIR";
/// Set by `ferrotrain run` only: the PID of the supervising runner. A worker whose parent is no
/// longer this process was orphaned and stops (after its emergency checkpoint).
pub const SUPERVISOR_PID: &str = "FERROTRAIN_SUPERVISOR_PID";
/// Set by `ferrotrain run` only: a file each worker holds a shared lock on while it lives, so
/// that a later run can wait until no worker of an earlier one is left.
pub const GANG_LOCK: &str = "FERROTRAIN_GANG_LOCK";
/// S3 access key id; set from the checkpoint Secret by `secretKeyRef`, never as a literal.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// S3 secret access key; set from the checkpoint Secret by `secretKeyRef`.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// Trainer exit code: the configuration or env contract is invalid, or training diverged (no
/// retry can help; the default failure policy fails the job).
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Trainer exit code: the training data is malformed (the default failure policy fails the job).
pub const EXIT_DATA_ERROR: i32 = 3;
/// Trainer exit code: the training data could not be read (missing, unreachable, access denied);
/// a later attempt may succeed, so the gang restarts against the application budget.
pub const EXIT_DATA_UNAVAILABLE: i32 = 6;
/// Trainer exit code: a peer rank was lost (a consequence; the operator looks for the cause).
pub const EXIT_PEER_LOST: i32 = 4;
/// Trainer exit code: stopped by SIGTERM after committing an emergency checkpoint.
pub const EXIT_PREEMPTED_AFTER_CHECKPOINT: i32 = 75;

/// Prefix reserved for the contract; user env overlays may not use it.
pub const RESERVED_PREFIX: &str = "FERROTRAIN_";

/// Variables whose values are credentials and come from a Secret.
pub const CREDENTIAL_VARS: [&str; 2] = [ACCESS_KEY_ID, SECRET_ACCESS_KEY];

/// Whether a user-supplied env variable name collides with the contract.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX) || CREDENTIAL_VARS.contains(&name)
}

/// Everything a worker learns from its environment (credentials excepted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerEnv {
    /// This worker's rank.
    pub rank: u32,
    /// World size of the attempt.
    pub world_size: u32,
    /// Rank 0's address.
    pub rendezvous_addr: String,
    /// Rank 0's rendezvous port.
    pub rendezvous_port: u16,
    /// Gang attempt number (1-based).
    pub attempt: u32,
    /// TrainingJob name.
    pub job_name: String,
    /// TrainingJob namespace.
    pub job_namespace: String,
    /// TrainingJob UID, when run by the operator.
    pub job_uid: Option<String>,
    /// What to train.
    pub trainer: TrainerSpec,
    /// Where to checkpoint.
    pub checkpoint: Option<CheckpointSpec>,
    /// Where to export the trained model.
    pub output: Option<crate::output::OutputSpec>,
    /// Progress endpoint (rank 0 reports there).
    pub progress_url: Option<String>,
    /// Path of the progress bearer token file.
    pub progress_token_path: Option<String>,
    /// Path of the gang key file (required with more than one rank).
    pub gang_key_path: Option<String>,
    /// CA bundle (PEM) of the progress endpoint, when it serves TLS.
    pub progress_ca: Option<String>,
    /// Scratch directory.
    pub scratch_dir: Option<String>,
}

/// Why the environment does not describe a worker.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    /// A required variable is absent.
    #[error(
        "{0} is not set; workers must be started by the Ferrotrain operator or `ferrotrain run`"
    )]
    Missing(&'static str),
    /// A variable does not parse.
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value (never a credential).
        value: String,
        /// What is wrong.
        reason: String,
    },
}

impl WorkerEnv {
    /// The variables to set on a worker, in a stable order. Credentials are not included: the
    /// operator adds them as `secretKeyRef`, the local runner passes its own environment through.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            (RANK, self.rank.to_string()),
            (WORLD_SIZE, self.world_size.to_string()),
            (RENDEZVOUS_ADDR, self.rendezvous_addr.clone()),
            (RENDEZVOUS_PORT, self.rendezvous_port.to_string()),
            (ATTEMPT, self.attempt.to_string()),
            (JOB_NAME, self.job_name.clone()),
            (JOB_NAMESPACE, self.job_namespace.clone()),
            (TRAINER_CONFIG, to_json(&self.trainer)),
        ];
        let optional = [
            (JOB_UID, self.job_uid.clone()),
            (CHECKPOINT_CONFIG, self.checkpoint.as_ref().map(to_json)),
            (OUTPUT_CONFIG, self.output.as_ref().map(to_json)),
            (PROGRESS_URL, self.progress_url.clone()),
            (PROGRESS_TOKEN_PATH, self.progress_token_path.clone()),
            (GANG_KEY_PATH, self.gang_key_path.clone()),
            (PROGRESS_CA, self.progress_ca.clone()),
            (SCRATCH_DIR, self.scratch_dir.clone()),
        ];
        vars.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads a worker's environment through `lookup` (for example `|k| std::env::var(k).ok()`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let required = |name: &'static str| lookup(name).ok_or(EnvError::Missing(name));
        let rank: u32 = parse(RANK, required(RANK)?)?;
        let world_size: u32 = parse(WORLD_SIZE, required(WORLD_SIZE)?)?;
        if world_size == 0 || rank >= world_size {
            return Err(EnvError::Invalid {
                name: RANK,
                value: rank.to_string(),
                reason: format!("rank must be below the world size {world_size}"),
            });
        }
        let attempt: u32 = parse(ATTEMPT, required(ATTEMPT)?)?;
        if attempt == 0 {
            return Err(EnvError::Invalid {
                name: ATTEMPT,
                value: "0".into(),
                reason: "attempts start at 1".into(),
            });
        }
        let trainer = from_json(TRAINER_CONFIG, required(TRAINER_CONFIG)?)?;
        let checkpoint = lookup(CHECKPOINT_CONFIG)
            .map(|v| from_json(CHECKPOINT_CONFIG, v))
            .transpose()?;
        let output = lookup(OUTPUT_CONFIG)
            .map(|v| from_json(OUTPUT_CONFIG, v))
            .transpose()?;
        Ok(Self {
            rank,
            world_size,
            rendezvous_addr: required(RENDEZVOUS_ADDR)?,
            rendezvous_port: parse(RENDEZVOUS_PORT, required(RENDEZVOUS_PORT)?)?,
            attempt,
            job_name: required(JOB_NAME)?,
            job_namespace: required(JOB_NAMESPACE)?,
            job_uid: lookup(JOB_UID),
            trainer,
            checkpoint,
            output,
            progress_url: lookup(PROGRESS_URL),
            progress_token_path: lookup(PROGRESS_TOKEN_PATH),
            gang_key_path: lookup(GANG_KEY_PATH),
            progress_ca: lookup(PROGRESS_CA),
            scratch_dir: lookup(SCRATCH_DIR),
        })
    }

    /// Reads the current process environment.
    pub fn from_process_env() -> Result<Self, EnvError> {
        Self::from_env(|k| std::env::var(k).ok())
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Serialising our own plain data types cannot fail; fall back to null to stay total.
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn parse<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, EnvError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse().map_err(|e: T::Err| EnvError::Invalid {
        name,
        reason: e.to_string(),
        value,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(
    name: &'static str,
    value: String,
) -> Result<T, EnvError> {
    serde_json::from_str(&value).map_err(|e| EnvError::Invalid {
        name,
        reason: e.to_string(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn sample() -> WorkerEnv {
        WorkerEnv {
            rank: 2,
            world_size: 3,
            rendezvous_addr: "mnist-worker-0.mnist".into(),
            rendezvous_port: 29400,
            attempt: 4,
            job_name: "mnist".into(),
            job_namespace: "ml".into(),
            job_uid: Some("0b0e-uid".into()),
            trainer: serde_yaml::from_str(
                "model: {type: mlp, hidden: [64]}\ndataset: {type: mnist}\nbatchSize: 32\nepochs: 2\n",
            )
            .expect("trainer yaml"),
            checkpoint: Some(
                serde_yaml::from_str("uri: s3://ckpt/mnist\neverySteps: 100\n").expect("ckpt"),
            ),
            output: Some(
                serde_yaml::from_str("uri: s3://models/mnist\nformats: [onnx, int8]\n")
                    .expect("output"),
            ),
            progress_url: Some("http://ferrotrain:8080/v1/namespaces/ml/trainingjobs/mnist/progress".into()),
            progress_token_path: Some("/var/run/ferrotrain/token".into()),
            gang_key_path: Some("/var/run/ferrotrain/gang-key".into()),
            progress_ca: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
            scratch_dir: Some("/scratch".into()),
        }
    }

    #[test]
    fn round_trips_through_the_environment() {
        let env = sample();
        let vars: HashMap<String, String> = env.to_env().into_iter().collect();
        let back = WorkerEnv::from_env(|k| vars.get(k).cloned()).expect("parses");
        assert_eq!(back, env);
    }

    #[test]
    fn optional_variables_may_be_absent() {
        let mut env = sample();
        env.job_uid = None;
        env.checkpoint = None;
        env.output = None;
        env.progress_url = None;
        env.progress_token_path = None;
        env.gang_key_path = None;
        env.progress_ca = None;
        env.scratch_dir = None;
        let vars: HashMap<String, String> = env.to_env().into_iter().collect();
        assert!(!vars.contains_key(CHECKPOINT_CONFIG));
        assert_eq!(
            WorkerEnv::from_env(|k| vars.get(k).cloned()).expect("parses"),
            env
        );
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let vars: HashMap<String, String> = sample().to_env().into_iter().collect();
        let without = |name: &str| {
            let mut v = vars.clone();
            v.remove(name);
            WorkerEnv::from_env(|k| v.get(k).cloned())
        };
        assert_eq!(without(RANK), Err(EnvError::Missing(RANK)));
        assert_eq!(
            without(TRAINER_CONFIG),
            Err(EnvError::Missing(TRAINER_CONFIG))
        );
        let with = |name: &str, value: &str| {
            let mut v = vars.clone();
            v.insert(name.into(), value.into());
            WorkerEnv::from_env(|k| v.get(k).cloned())
        };
        assert!(matches!(
            with(RANK, "3"),
            Err(EnvError::Invalid { name: RANK, .. })
        ));
        assert!(matches!(
            with(RENDEZVOUS_PORT, "70000"),
            Err(EnvError::Invalid {
                name: RENDEZVOUS_PORT,
                ..
            })
        ));
        assert!(matches!(
            with(ATTEMPT, "0"),
            Err(EnvError::Invalid { name: ATTEMPT, .. })
        ));
        assert!(matches!(
            with(TRAINER_CONFIG, "{}"),
            Err(EnvError::Invalid {
                name: TRAINER_CONFIG,
                ..
            })
        ));
    }

    #[test]
    fn reserved_names() {
        assert!(is_reserved("FERROTRAIN_RANK"));
        assert!(is_reserved("AWS_SECRET_ACCESS_KEY"));
        assert!(!is_reserved("OMP_NUM_THREADS"));
    }
}
