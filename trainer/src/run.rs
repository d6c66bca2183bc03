//! A worker process from start to exit code: configuration, data, rendezvous, checkpoints,
//! progress reporting, SIGTERM handling, then the training loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferrotrain_crds::env::WorkerEnv;
use ferrotrain_crds::{
    CheckpointSpec, DistillationSpec, InitFromSpec, OutputSpec, ResumePolicy, TrainerSpec,
};

use crate::checkpoint::layout::{sha256_hex, split_manifest_uri};
use crate::checkpoint::lease::{Holder, Lease, LeaseError, LeaseTerms};
use crate::checkpoint::store::{CheckpointError, CheckpointStore};
use crate::data::load::{self, Splits};
use crate::dist::handshake::GangKey;
use crate::dist::rendezvous::RendezvousConfig;
use crate::dist::ring::Ring;
use crate::engine::device::{self, Compute};
use crate::nn::model::Network;
use crate::progress::{Endpoint, Reporter};
use crate::storage::{self, S3Options};
use crate::train::job::{CheckpointPlan, Job, Outcome, OutputPlan, Teacher, TrainError, WarmStart};
use crate::train::steps::train;
use crate::{config, exit};

/// Settings that do not come from the TrainingJob.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long to wait for the gang to form.
    pub rendezvous_timeout: Duration,
    /// How long a collective may wait on a peer before the rank exits.
    pub peer_timeout: Duration,
    /// Time allowed for the emergency checkpoint after SIGTERM.
    pub grace: Duration,
    /// Minimum interval between progress reports.
    pub report_every: Duration,
    /// Stop as if preempted right after this step (drills and tests).
    pub stop_after_step: Option<u64>,
    /// Directory of the built-in datasets.
    pub data_dir: PathBuf,
}

/// Who this process is: a rank of a gang (env contract) or a standalone run (`--config`).
pub enum Role {
    /// Started by the operator or `ferrotrain run`.
    Worker(Box<WorkerEnv>),
    /// A single process with a trainer spec and optional checkpoints.
    Standalone {
        /// What to train.
        spec: Box<TrainerSpec>,
        /// Where to checkpoint.
        checkpoint: Option<Box<CheckpointSpec>>,
    },
}

/// The job's gang key from the file the contract names. A gang of more than one rank cannot form
/// without it; a single rank never connects to anyone and needs none.
fn gang_key(env: &WorkerEnv) -> Result<GangKey, String> {
    let job = env
        .job_uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", env.job_namespace, env.job_name));
    match &env.gang_key_path {
        Some(path) => GangKey::from_file(path, &job).map_err(|e| e.to_string()),
        None if env.world_size == 1 => {
            GangKey::random(&job).ok_or_else(|| "no system randomness".to_string())
        }
        None => Err(format!(
            "{} is not set: the {} ranks of a gang authenticate every connection with the job's gang key",
            ferrotrain_crds::env::GANG_KEY_PATH,
            env.world_size
        )),
    }
}

/// Runs one worker and returns its process exit code.
pub fn run(role: Role, options: &Options, stop: Arc<AtomicBool>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the I/O runtime");
            return exit::INTERNAL;
        }
    };
    let (spec, checkpoint, output, rendezvous, attempt, progress, holder) = match role {
        Role::Worker(env) => {
            let key = match gang_key(&env) {
                Ok(key) => key,
                Err(e) => {
                    tracing::error!(error = %e, "gang key");
                    return exit::BAD_CONFIG;
                }
            };
            let rendezvous = RendezvousConfig {
                rank: env.rank,
                world_size: env.world_size,
                attempt: env.attempt,
                addr: env.rendezvous_addr.clone(),
                port: env.rendezvous_port,
                rendezvous_timeout: options.rendezvous_timeout,
                peer_timeout: options.peer_timeout,
                key,
            };
            let progress = match (&env.progress_url, &env.progress_token_path) {
                (Some(url), Some(path)) if env.rank == 0 => match std::fs::read_to_string(path) {
                    Ok(token) => Some(Endpoint {
                        url: url.clone(),
                        token: token.trim().to_string(),
                        ca_pem: env.progress_ca.clone(),
                    }),
                    Err(e) => {
                        tracing::warn!(path = %path, error = %e, "progress token unreadable; reports go to stdout only");
                        None
                    }
                },
                _ => None,
            };
            let job = format!("{}/{}", env.job_namespace, env.job_name);
            // Only rank 0 writes checkpoints, so only rank 0 takes the location's lease.
            let holder = (env.rank == 0).then(|| Holder {
                id: env.job_uid.clone().unwrap_or_else(|| job.clone()),
                job,
                attempt: env.attempt,
            });
            (
                env.trainer,
                env.checkpoint,
                env.output,
                Some(rendezvous),
                env.attempt,
                progress,
                holder,
            )
        }
        Role::Standalone { spec, checkpoint } => {
            let holder = Holder {
                id: format!("standalone-{}", storage::unique_nonce()),
                job: format!("a standalone trainer (pid {})", std::process::id()),
                attempt: 1,
            };
            (
                *spec,
                checkpoint.map(|c| *c),
                None,
                None,
                1,
                None,
                Some(holder),
            )
        }
    };
    // Distillation and batch normalisation run on the CPU engine, so `auto` means the CPU for
    // them (validation refuses `cuda` with either).
    let device = match spec.device_or_default() {
        ferrotrain_crds::Device::Auto
            if spec.distillation.is_some() || spec.model.batch_norm_or_default() =>
        {
            tracing::info!(
                "device auto: the CPU, as distillation and batch normalisation run on the CPU engine"
            );
            ferrotrain_crds::Device::Cpu
        }
        device => device,
    };
    let compute = match device::select(device, spec.precision_or_default(), &device::probe()) {
        Ok((compute, line)) => {
            let reduced = spec.precision_or_default() != ferrotrain_crds::Precision::Fp32;
            if compute == Compute::Cpu && reduced {
                tracing::warn!(?compute, "{line}");
            } else {
                tracing::info!(?compute, "{line}");
            }
            compute
        }
        Err(e) => {
            tracing::error!(error = %e, "compute device");
            return exit::BAD_CONFIG;
        }
    };

    let seed = spec.seed_or_default();
    let data_s3 = S3Options::default();
    let data: Splits =
        match runtime.block_on(load::load(&spec.dataset, &options.data_dir, seed, &data_s3)) {
            Ok(data) => data,
            Err(e) if e.unreadable => {
                tracing::error!(error = %e, "training data unavailable");
                return exit::DATA_UNAVAILABLE;
            }
            Err(e) => {
                tracing::error!(error = %e, "training data");
                return exit::DATA_ERROR;
            }
        };
    tracing::info!(
        train = data.train.len(),
        eval = data.eval.len(),
        features = data.train.dim,
        classes = data.classes(),
        "data loaded"
    );

    let mut plan = match checkpoint
        .as_ref()
        .map(|c| checkpoint_plan(c, &spec, &data))
        .transpose()
    {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, "checkpoint storage");
            return exit::CHECKPOINT_ERROR;
        }
    };
    // Before the rendezvous: while rank 0 waits for another writer's lease to run out, the
    // other ranks wait in the rendezvous, whose timeout is the longer.
    let keeper = match (plan.as_mut(), holder) {
        (Some(plan), Some(holder)) => {
            let location = plan.store.location().clone();
            match runtime.block_on(Lease::acquire(location, holder, LeaseTerms::default())) {
                Ok(lease) => {
                    let keeper = lease.keep(runtime.handle());
                    plan.store = plan.store.clone().with_fence(keeper.fence());
                    Some(keeper)
                }
                Err(e @ LeaseError::HeldByAnother { .. }) => {
                    tracing::error!(error = %e, "checkpoint.uri");
                    return exit::BAD_CONFIG;
                }
                Err(e) => {
                    tracing::error!(error = %e, "checkpoint lease");
                    return exit::CHECKPOINT_ERROR;
                }
            }
        }
        _ => None,
    };

    let mut ring = match rendezvous {
        Some(cfg) => match Ring::connect(&cfg) {
            Ok(ring) => ring,
            Err(e) => {
                tracing::error!(error = %e, "rendezvous");
                return exit::PEER_LOST;
            }
        },
        None => Ring::single(),
    };
    let warm_start = match spec
        .init_from
        .as_ref()
        .map(|init| warm_start(init, checkpoint.as_ref()))
        .transpose()
    {
        Ok(warm_start) => warm_start,
        Err(e) => {
            tracing::error!(error = %e, "spec.trainer.initFrom.uri");
            return exit::BAD_CONFIG;
        }
    };
    let teacher = match spec
        .distillation
        .as_ref()
        .map(|d| teacher(d, checkpoint.as_ref()))
        .transpose()
    {
        Ok(teacher) => teacher,
        Err(e) => {
            tracing::error!(error = %e, "spec.trainer.distillation.teacher");
            return exit::BAD_CONFIG;
        }
    };
    // Only rank 0 writes the output, so only rank 0 opens its store.
    let output = match output
        .filter(|_| ring.rank() == 0)
        .map(|o| output_plan(&o, checkpoint.as_ref()))
        .transpose()
    {
        Ok(output) => output,
        Err(e) => {
            tracing::error!(error = %e, "spec.output.uri");
            return exit::BAD_CONFIG;
        }
    };
    let reporter = (ring.rank() == 0).then(|| Reporter::new(runtime.handle().clone(), progress));
    let job = Job {
        spec,
        attempt,
        teacher,
        checkpoint: plan,
        warm_start,
        output,
        reporter,
        report_every: options.report_every,
        stop,
        stop_after_step: options.stop_after_step,
        fail_after_step: None,
        grace: options.grace,
        compute,
        threads: 0,
    };
    let outcome = train(job, &data, &mut ring, runtime.handle());
    if let Some(keeper) = keeper {
        // A finished or checkpointed run gives the location up; a failed one leaves its lease to
        // expire, or to the job's next attempt, which takes it over at once.
        runtime.block_on(keeper.finish(matches!(
            outcome,
            Ok(Outcome::Completed(_) | Outcome::Preempted(_))
        )));
    }
    match outcome {
        Ok(Outcome::Completed(summary)) => {
            println!(
                "{}",
                serde_json::json!({
                    "event": "completed",
                    "step": summary.step,
                    "epoch": summary.epoch,
                    "loss": summary.loss,
                    "metrics": summary.metrics,
                    "samplesPerSecond": summary.samples_per_second,
                    "earlyStopped": summary.early_stopped,
                    "resumedFrom": summary.resumed_from,
                    "checkpoint": summary.checkpoint.as_ref().map(|c| &c.manifest_uri),
                    "checkpointStallSeconds": summary.checkpoint_stats.stall_seconds,
                    "output": summary.output,
                    "wallSeconds": summary.wall_seconds,
                })
            );
            exit::SUCCESS
        }
        Ok(Outcome::Preempted(summary)) => {
            println!(
                "{}",
                serde_json::json!({
                    "event": "preempted",
                    "step": summary.step,
                    "checkpoint": summary.checkpoint.as_ref().map(|c| &c.manifest_uri),
                })
            );
            exit::PREEMPTED_AFTER_CHECKPOINT
        }
        Err(e) => {
            tracing::error!(error = %e, "training failed");
            exit_code_of(&e)
        }
    }
}

/// The exit code a training error ends the worker with. A checkpoint of another configuration
/// is a configuration error (exit 2: no retry can help), not a storage failure.
pub fn exit_code_of(error: &TrainError) -> u8 {
    match error {
        TrainError::Comm(_) => exit::PEER_LOST,
        TrainError::Checkpoint(CheckpointError::Incompatible { .. }) => exit::BAD_CONFIG,
        // A store that failed the export may take it on the next attempt, which resumes from
        // the final checkpoint and exports at once.
        TrainError::Checkpoint(_) | TrainError::Output { .. } => exit::CHECKPOINT_ERROR,
        TrainError::Model(_) | TrainError::Config(_) | TrainError::Diverged { .. } => {
            exit::BAD_CONFIG
        }
        TrainError::Threads(_) | TrainError::Engine(_) => exit::INTERNAL,
    }
}

/// Identifies the configuration that shapes parameters and optimiser state; a checkpoint of
/// another configuration is refused on resume.
pub fn config_hash(spec: &TrainerSpec, data: &Splits) -> String {
    let identity = serde_json::json!({
        "model": spec.model,
        "dataset": spec.dataset,
        "optimizer": spec.optimizer_or_default().kind,
        "features": data.train.dim,
        "classes": data.classes(),
    });
    sha256_hex(identity.to_string().as_bytes())
}

fn checkpoint_plan(
    c: &CheckpointSpec,
    spec: &TrainerSpec,
    data: &Splits,
) -> Result<CheckpointPlan, storage::StorageError> {
    let location = storage::open(
        &c.uri,
        &S3Options {
            endpoint: c.endpoint.clone(),
            region: c.region.clone(),
        },
    )?;
    let model = Network::new(&spec.model, data.train.dim, data.classes())
        .map(|net| crate::nn::describe::describe(&spec.model, &net))
        .unwrap_or_default();
    Ok(CheckpointPlan {
        store: CheckpointStore::new(location, c.keep_or_default(), config_hash(spec, data))
            .with_model(model)
            .with_trained(crate::train::output::trained(spec, data)),
        every_steps: c.every_steps.map(|s| s.max(1) as u64),
        every_seconds: c.every_seconds.map(|s| s.max(1) as u64),
        resume: c.resume_or_default() == ResumePolicy::Auto,
    })
}

/// The output location, written with the job's checkpoint endpoint and region.
fn output_plan(
    output: &OutputSpec,
    checkpoint: Option<&CheckpointSpec>,
) -> Result<OutputPlan, storage::StorageError> {
    let location = storage::open(
        &output.uri,
        &S3Options {
            endpoint: checkpoint.and_then(|c| c.endpoint.clone()),
            region: checkpoint.and_then(|c| c.region.clone()),
        },
    )?;
    Ok(OutputPlan {
        location,
        formats: output.formats_or_default(),
    })
}

/// The store of a warm start, read with the job's checkpoint endpoint and region.
fn warm_start(
    init: &InitFromSpec,
    checkpoint: Option<&CheckpointSpec>,
) -> Result<WarmStart, storage::StorageError> {
    let (store, manifest_key) = checkpoint_to_read(&init.uri, checkpoint)?;
    Ok(WarmStart {
        store,
        manifest_key,
        uri: init.uri.clone(),
        reset_optimizer: init.reset_optimizer.unwrap_or(false),
        continue_steps: init.continue_steps.unwrap_or(false),
        layers: init.layers.clone(),
    })
}

/// Another run's checkpoints at `uri` (a location, or one manifest in it), read with the job's
/// checkpoint endpoint and region.
fn checkpoint_to_read(
    uri: &str,
    checkpoint: Option<&CheckpointSpec>,
) -> Result<(CheckpointStore, Option<String>), storage::StorageError> {
    let (location, manifest_key) = split_manifest_uri(uri);
    let location = storage::open(
        &location,
        &S3Options {
            endpoint: checkpoint.and_then(|c| c.endpoint.clone()),
            region: checkpoint.and_then(|c| c.region.clone()),
        },
    )?;
    Ok((CheckpointStore::new(location, 1, ""), manifest_key))
}

/// The teacher's store, read with the job's checkpoint endpoint and region.
fn teacher(
    distillation: &DistillationSpec,
    checkpoint: Option<&CheckpointSpec>,
) -> Result<Teacher, storage::StorageError> {
    let (store, manifest_key) = checkpoint_to_read(&distillation.teacher, checkpoint)?;
    Ok(Teacher {
        store,
        manifest_key,
        uri: distillation.teacher.clone(),
        temperature: distillation.temperature_or_default() as f32,
        alpha: distillation.alpha_or_default() as f32,
    })
}

/// The default data directory: `$FERROTRAIN_DATA_DIR`, else the repository's `data/`.
pub fn default_data_dir() -> PathBuf {
    config::data_dir(|k| std::env::var(k).ok())
}
