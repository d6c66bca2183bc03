//! What a rank is asked to train (model, data, schedule, checkpoint plan, warm start) and what it
//! reports back when it stops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferrotrain_crds::TrainerSpec;
use ferrotrain_crds::progress::RejectedCheckpoints;

use crate::checkpoint::store::{CheckpointError, CheckpointStore, Committed};
use crate::dist::wire::CommError;
use crate::engine::EngineError;
use crate::engine::device::Compute;
use crate::nn::model::ModelError;
use crate::progress::Reporter;

/// Checkpoint cadence and destination.
pub struct CheckpointPlan {
    /// The store.
    pub store: CheckpointStore,
    /// Every N steps.
    pub every_steps: Option<u64>,
    /// At least every N seconds.
    pub every_seconds: Option<u64>,
    /// Whether to resume from the newest checkpoint.
    pub resume: bool,
}

/// A warm start (`spec.trainer.initFrom`): where its checkpoint is and what to take from it.
pub struct WarmStart {
    /// The checkpoint location.
    pub store: CheckpointStore,
    /// The manifest, when the URI names one; else the newest that verifies.
    pub manifest_key: Option<String>,
    /// The URI as written, for messages.
    pub uri: String,
    /// Start the optimiser afresh.
    pub reset_optimizer: bool,
    /// Continue the checkpoint's step count and data position.
    pub continue_steps: bool,
    /// Take only these layers (the optimiser starts afresh); `None`: the whole model.
    pub layers: Option<Vec<String>>,
}

/// The teacher of a distilled run.
pub struct Teacher {
    /// The teacher's checkpoint location.
    pub store: CheckpointStore,
    /// The manifest, when the URI names one; else the newest that verifies.
    pub manifest_key: Option<String>,
    /// The URI as written, for messages.
    pub uri: String,
    /// Softening temperature.
    pub temperature: f32,
    /// Weight of the teacher's term.
    pub alpha: f32,
}

/// Where a successful run exports its trained model (`spec.output`; rank 0 writes it).
pub struct OutputPlan {
    /// The output location.
    pub location: crate::storage::Location,
    /// The formats to write besides the model card.
    pub formats: Vec<ferrotrain_crds::OutputFormat>,
}

/// Everything one rank needs to train.
pub struct Job {
    /// What to train.
    pub spec: TrainerSpec,
    /// Gang attempt (reported with progress).
    pub attempt: u32,
    /// Checkpoints, if any.
    pub checkpoint: Option<CheckpointPlan>,
    /// The teacher of knowledge distillation, if any.
    pub teacher: Option<Teacher>,
    /// Where to start from when the job has no checkpoint of its own yet.
    pub warm_start: Option<WarmStart>,
    /// Where to export the trained model, if anywhere.
    pub output: Option<OutputPlan>,
    /// Progress reports (rank 0).
    pub reporter: Option<Reporter>,
    /// Minimum seconds between progress reports.
    pub report_every: Duration,
    /// Set by the SIGTERM handler.
    pub stop: Arc<AtomicBool>,
    /// Behave as if SIGTERM arrived right after this step (tests and drills).
    pub stop_after_step: Option<u64>,
    /// Behave as if the compute device failed in the step after this one (tests and drills).
    pub fail_after_step: Option<u64>,
    /// How long the emergency checkpoint may take.
    pub grace: Duration,
    /// The device that computes forward and backward passes.
    pub compute: Compute,
    /// Compute threads of this rank; 0 takes `RAYON_NUM_THREADS`, else every CPU the process may
    /// use (its cgroup's CPU limit in a pod).
    pub threads: usize,
}

impl Job {
    /// A first attempt at `spec` on the CPU with nothing else: no checkpoints, warm start,
    /// teacher or progress reports, the default threads; the fields a run needs are set on top.
    pub fn new(spec: TrainerSpec) -> Self {
        Self {
            spec,
            attempt: 1,
            checkpoint: None,
            teacher: None,
            warm_start: None,
            output: None,
            reporter: None,
            report_every: Duration::from_secs(3600),
            stop: Arc::new(AtomicBool::new(false)),
            stop_after_step: None,
            fail_after_step: None,
            grace: Duration::from_secs(30),
            compute: Compute::Cpu,
            threads: 0,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// All epochs or steps done, or early stopping triggered.
    Completed(Summary),
    /// Stopped on request after committing an emergency checkpoint (rank 0) or with the gang.
    Preempted(Summary),
}

/// The final state of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    /// Global step reached.
    pub step: u64,
    /// The files exported to spec.output (rank 0 of a completed run with an output).
    pub output: Vec<ferrotrain_crds::OutputFile>,
    /// Epoch reached.
    pub epoch: u64,
    /// Total steps planned.
    pub total_steps: u64,
    /// Last training loss.
    pub loss: Option<f64>,
    /// Last evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Training samples per second across the gang in this attempt.
    pub samples_per_second: f64,
    /// Step this attempt started from.
    pub resumed_from: Option<u64>,
    /// Checkpoints the resume passed over because they did not verify (rank 0).
    pub rejected_checkpoints: Option<RejectedCheckpoints>,
    /// Whether early stopping ended the run.
    pub early_stopped: bool,
    /// Latest committed checkpoint (rank 0).
    pub checkpoint: Option<Committed>,
    /// Checkpoint commits and the time the loop spent waiting on them.
    pub checkpoint_stats: CheckpointStats,
    /// Wall time of the loop.
    pub wall_seconds: f64,
    /// Final parameters.
    pub params: Vec<f32>,
}

/// Cost of checkpointing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointStats {
    /// Checkpoints committed.
    pub committed: u64,
    /// Seconds the loop spent on periodic checkpoints (snapshot copies, upload bookkeeping).
    pub stall_seconds: f64,
    /// Seconds spent on the final or emergency checkpoint, which is written synchronously.
    pub final_seconds: f64,
    /// Seconds uploads took in the background.
    pub upload_seconds: f64,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// Training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The model does not fit the data.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A peer was lost.
    #[error(transparent)]
    Comm(#[from] CommError),
    /// Checkpoint storage failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The configuration cannot work with this data.
    #[error("{0}")]
    Config(String),
    /// The compute device failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The trained model could not be exported to spec.output.
    #[error("spec.output.uri {uri}: {problem}")]
    Output {
        /// The output location.
        uri: String,
        /// What failed.
        problem: String,
    },
    /// The compute threads could not start.
    #[error("cannot start the compute threads: {0}")]
    Threads(#[from] rayon::ThreadPoolBuildError),
    /// The loss stopped being a number: training diverged, and more steps cannot bring it back.
    #[error(
        "the training loss is {loss} at step {step}: training diverged; lower spec.trainer.optimizer.lr or set gradClipNorm"
    )]
    Diverged {
        /// The step whose loss was not finite.
        step: u64,
        /// The loss (NaN or infinite).
        loss: f64,
    },
}
