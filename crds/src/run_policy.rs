//! `spec.checkpoint` and `spec.runPolicy`: where checkpoints go and how often, and how the job
//! lives: restart budgets, the failure policy, deadlines, suspension, the gang and cleanup.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Checkpoint storage and cadence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.everySteps) || has(self.everySeconds)").message("set everySteps, everySeconds or both").field_path(".everySteps"))]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Where checkpoints go: `s3://bucket/prefix` or `file:///path` (`file://./path` locally).
    #[schemars(
        length(min = 1, max = 2048),
        pattern(r"^[A-Za-z][A-Za-z0-9+.-]*://.+$")
    )]
    pub uri: String,
    /// S3 endpoint for MinIO, SeaweedFS or other S3-compatible servers (`http://` allowed),
    /// path-style addressing. Unset: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: Option<String>,
    /// S3 region. Default: us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// Secret in the job's namespace holding the S3 access key id and secret access key. The
    /// operator passes them to workers as secretKeyRef env variables, never as literals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<CredentialsSecretRef>,
    /// Checkpoint every N steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub every_steps: Option<i64>,
    /// Checkpoint at least every N seconds of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub every_seconds: Option<i64>,
    /// How many committed checkpoints to keep, newest first. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: Option<i32>,
    /// `auto`: resume from the newest valid checkpoint; `never`: always start from step 0.
    /// Default: auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumePolicy>,
}

/// A Secret holding object-store credentials.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the access key id. Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub access_key_id_key: Option<String>,
    /// Key of the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_access_key_key: Option<String>,
}

/// Whether a new attempt resumes from a checkpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResumePolicy {
    /// Resume from the newest checkpoint that verifies.
    Auto,
    /// Always start from scratch.
    Never,
}

// ---------------------------------------------------------------------------------------------
// spec.runPolicy

/// Lifecycle policy of the job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Suspend the job: workers get SIGTERM, write an emergency checkpoint and stop; setting it
    /// back to false resumes from that checkpoint without charging a restart budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Fail the job (reason DeadlineExceeded) after this many seconds since it first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Delete the job this many seconds after it finished. Unset: keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Which pods to delete when the job finishes. Default: Running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// Gang restarts allowed for infrastructure causes (eviction, preemption, node loss, OOM,
    /// SIGTERM after checkpoint). Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_infra_restarts: Option<i32>,
    /// Gang restarts allowed for application failures (non-zero exit of the trainer). Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_app_restarts: Option<i32>,
    /// Gang scheduling settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangPolicy>,
    /// Restart the gang from its checkpoint when progress has not advanced for this many seconds
    /// while Running. Unset: 10 × the job's median step time, at least 60 s, once a step time
    /// is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10))]
    pub progress_deadline_seconds: Option<i64>,
    /// Scheduler for the worker pods (for example `volcano`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub scheduler_name: Option<String>,
    /// Queue for Kueue (`kueue.x-k8s.io/queue-name`) or Volcano.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub queue: Option<String>,
    /// Priority class of the worker pods (overridden by workers.template.priorityClassName).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// What a worker failure does to the job, by exit code or failure reason. Unset: the
    /// defaults of docs/lifecycle.md (configuration and data errors fail the job; every other
    /// failure restarts the gang against its budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
}

/// Rules that decide what a worker failure does. The first rule that matches decides; a failure
/// no rule matches falls through to the default rules.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// The rules, tried in order.
    #[schemars(length(min = 1, max = 32))]
    pub rules: Vec<FailurePolicyRule>,
}

/// One rule: a set of exit codes or of failure reasons, and the action taken when the failure
/// that explains a gang's end is one of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.onExitCodes) != has(self.onReasons)").message("a rule matches either onExitCodes or onReasons; set exactly one").field_path(".onExitCodes"))]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicyRule {
    /// What to do when the rule matches.
    pub action: FailureAction,
    /// Exit codes of the worker's container (1 to 255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(range(min = 1, max = 255)))]
    pub on_exit_codes: Option<Vec<i32>>,
    /// Failure reasons the platform reports (condition and event reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub on_reasons: Option<Vec<FailureReason>>,
}

/// What a matching failure-policy rule does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Fail the job at once: the failure cannot go away on a retry.
    FailJob,
    /// Restart the gang from its checkpoint, charged to the budget of the failure's class.
    RestartGang,
    /// Restart the gang from its checkpoint without charging any budget (counted in
    /// `status.restarts.uncharged`).
    RestartGangWithoutBudget,
}

/// Failure reasons a rule can match, as the platform names them in conditions and events.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// The kubelet evicted the pod (node pressure).
    Evicted,
    /// The scheduler preempted the pod for a higher-priority one.
    Preempted,
    /// The pod was disrupted (a drain through the Eviction API).
    DisruptionTarget,
    /// The pod's node went away.
    NodeLost,
    /// The container was killed for exceeding its memory limit.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The trainer stopped on SIGTERM after an emergency checkpoint (exit 75).
    PreemptedAfterCheckpoint,
    /// A worker of the running gang disappeared.
    WorkerMissing,
    /// Someone other than the operator deleted a worker.
    WorkerDeleted,
}

/// Pods deleted when a job finishes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanPodPolicy {
    /// Delete every worker pod.
    All,
    /// Delete pods still running; keep finished ones for their logs.
    Running,
    /// Delete nothing.
    None,
}

/// Gang scheduling: all workers start together or none does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GangPolicy {
    /// Seconds to wait for every worker to be running before releasing them all and retrying
    /// with backoff. Default: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub schedule_timeout_seconds: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// status
