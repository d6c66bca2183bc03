//! The TrainingJob's status: phase, conditions, worker counts, restarts by cause, progress with
//! its evaluations, the latest checkpoint and goodput.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a TrainingJob, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Conditions: Scheduled, Running, Progressing, Suspended, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Gang attempt number, starting at 1; every gang restart increments it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Ready workers over desired workers, for `kubectl get` (for example `2/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Worker counts of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkerCounts>,
    /// Gang restarts so far, by cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartCounts>,
    /// Training progress as reported by rank 0, with rate and ETA computed by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
    /// The latest committed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointStatus>,
    /// The exported model (spec.output), once the run wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::output::OutputStatus>,
    /// Time spent making progress versus time lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<GoodputStatus>,
    /// When the first attempt's gang was running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the current attempt's workers were created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_start_time: Option<Time>,
    /// Ranks of the current attempt that exited 0: they stay done when their pods are deleted
    /// afterwards (pod garbage collection, a drain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed_ranks: Vec<i32>,
    /// Earliest time the next gang may be created (backoff after a gang-schedule timeout or
    /// after failures in a row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// When the job reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Lifecycle phases. Succeeded and Failed are terminal.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted; no workers created yet.
    Pending,
    /// Workers created; waiting for the whole gang to run.
    Scheduling,
    /// Every worker of the gang is running.
    Running,
    /// A worker failed; the gang is being torn down and recreated.
    Restarting,
    /// Suspended by the user; resumes from the emergency checkpoint.
    Suspended,
    /// Training finished.
    Succeeded,
    /// Training failed for good (budget exhausted, deadline, invalid spec).
    Failed,
}

/// Worker pod counts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerCounts {
    /// Workers the current attempt wants (its world size).
    pub desired: i32,
    /// Worker pods that exist.
    pub created: i32,
    /// Workers bound to a node.
    pub scheduled: i32,
    /// Workers running.
    pub running: i32,
    /// Workers running and ready.
    pub ready: i32,
    /// Workers that exited 0.
    pub succeeded: i32,
    /// Workers that failed.
    pub failed: i32,
}

/// Gang restarts by cause.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartCounts {
    /// Infrastructure failures charged to maxInfraRestarts (eviction, node loss, OOM, SIGTERM).
    pub infra: i32,
    /// Application failures charged to maxAppRestarts.
    pub app: i32,
    /// Preemptions (also counted in infra).
    pub preemption: i32,
    /// Restarts after a progress stall (also charged to maxAppRestarts).
    pub stall: i32,
    /// Gangs released because they did not all schedule within the gang timeout (no budget).
    #[serde(default)]
    pub schedule_timeouts: i32,
    /// Restarts a `RestartGangWithoutBudget` failure-policy rule allowed (no budget).
    #[serde(default)]
    pub uncharged: i32,
    /// Failures in a row of attempts that ran less than 10 minutes (preemptions aside): from the
    /// second on, the next attempt waits 10 s, doubling up to 5 min (`notBefore`).
    #[serde(default)]
    pub consecutive_failures: i32,
}

/// Training progress.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStatus {
    /// Global optimiser step.
    pub step: i64,
    /// Total steps of the run, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<i64>,
    /// Current epoch (zero-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// step / totalSteps × 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Latest training loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Latest evaluation metrics (for example valLoss, valAccuracy).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// The most recent evaluations with the step of each (at most 16), oldest first: a sweep
    /// compares trials at the same step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub evaluations: Vec<Evaluation>,
    /// Training throughput across the gang, computed by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_per_second: Option<f64>,
    /// Estimated seconds to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<i64>,
    /// etaSeconds in human form (for example `4m12s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    /// When the last progress report arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// Latest committed checkpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// URI of the checkpoint's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Step it captures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// When it was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Checkpoints committed so far in this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Checkpoints the current attempt passed over on resume because they did not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<i64>,
    /// What happened to them, when any were rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Productive versus lost time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GoodputStatus {
    /// Seconds of training whose progress was kept.
    pub productive_seconds: f64,
    /// Seconds lost to pending gangs and to failed attempts after their last checkpoint.
    pub lost_seconds: f64,
    /// productive / (productive + lost), 1 when nothing has run yet.
    pub ratio: f64,
}

/// One evaluation of the model.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Evaluation {
    /// Global step at which it was taken.
    pub step: i64,
    /// valLoss, valAccuracy.
    pub metrics: BTreeMap<String, f64>,
}
