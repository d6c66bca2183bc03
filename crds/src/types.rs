//! The `TrainingJob` custom resource and its `spec.workers` (the gang and its pod overlay); the
//! other parts of the spec and the status have files of their own. Each type carries the
//! OpenAPI/CEL rules the API server enforces.
//!
//! Unions follow the Kubernetes convention of a `type` discriminator with the members' fields next
//! to it; CEL rules reject fields that do not belong to the chosen type. Optional fields stay
//! optional here: their defaults are applied in one place, `crate::defaults`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::run_policy::{CheckpointSpec, RunPolicy};
use crate::status::TrainingJobStatus;
use crate::trainer_spec::TrainerSpec;

/// A distributed training run: a gang of worker pods running the Ferrotrain trainer (or a custom
/// image that honours the same env contract), checkpointing to object storage.
// Several printer columns share a `type_`, which the lint mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrotrain.io",
    version = "v1alpha1",
    kind = "TrainingJob",
    plural = "trainingjobs",
    singular = "trainingjob",
    namespaced,
    shortname = "tj",
    category = "ferrotrain",
    status = "TrainingJobStatus",
    derive = "PartialEq",
    doc = "A distributed data-parallel training run managed by Ferrotrain.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready workers / desired workers"
    ),
    printcolumn(
        name = "Progress",
        type_ = "number",
        json_path = ".status.progress.percent",
        description = "Percent of total steps done"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.progress.step",
        description = "Last reported global step"
    ),
    printcolumn(
        name = "Loss",
        type_ = "number",
        json_path = ".status.progress.loss",
        description = "Last reported training loss"
    ),
    printcolumn(
        name = "ETA",
        type_ = "string",
        json_path = ".status.progress.eta",
        description = "Estimated time to completion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// The worker gang: how many ranks, their resources and pod overlay.
    pub workers: WorkersSpec,
    /// What to train: model, data, optimiser and schedule. The same structure the trainer reads.
    #[x_kube(validation = Rule::new("self.model == oldSelf.model").message("model is immutable after creation; create a new TrainingJob").field_path(".model"))]
    #[x_kube(validation = Rule::new("self.dataset == oldSelf.dataset").message("dataset is immutable after creation; create a new TrainingJob").field_path(".dataset"))]
    pub trainer: TrainerSpec,
    /// Where and how often to checkpoint. Without it, `ferrotrain run` checkpoints to
    /// `file://./.ferrotrain/<job>/checkpoints`; in a cluster a job without checkpoints restarts
    /// from step 0 after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSpec>,
    /// Restart budgets, deadlines, suspension, gang scheduling and cleanup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_policy: Option<RunPolicy>,
    /// Where a successful run exports its trained model (safetensors, ONNX, int8), as
    /// `ferrotrain export` does; recorded in status.output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::output::OutputSpec>,
}

// ---------------------------------------------------------------------------------------------
// spec.workers

/// The gang of worker pods. Rank 0 is the rendezvous point and reports progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.replicas").message("minReplicas must not exceed replicas").field_path(".minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Number of worker ranks (the world size), 1 to 1024.
    #[schemars(range(min = 1, max = 1024))]
    pub replicas: i32,
    /// Elastic floor: when only k ≥ minReplicas workers can be scheduled within the gang timeout,
    /// the job runs with world size k and tries the full size again at the next restart.
    /// Unset means the job always runs with exactly `replicas` workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub min_replicas: Option<i32>,
    /// Compute resources of each worker (cpu, memory, `nvidia.com/gpu`), as in a Pod container.
    /// GPUs must be whole numbers and, when both are given, requests equal limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Container image of the workers. Defaults to the operator's configured trainer image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Entrypoint override for a custom trainer image that honours the Ferrotrain env contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments passed to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Pod settings merged on top of what the operator generates (see docs/api.md for precedence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverlay>,
}

/// User pod settings merged over the generated worker pod. Operator-owned labels, env variables
/// and the scratch volume cannot be overridden.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverlay {
    /// Extra labels on every worker pod. Keys under `ferrotrain.io/` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on every worker pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node labels a worker's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for tainted nodes (for example GPU nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Scheduling affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the worker pods; overrides `spec.runPolicy.priorityClassName`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Secrets used to pull the worker image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Service account the workers run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra environment variables. Names starting with `FERROTRAIN_` are reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra volumes. The name `scratch` is reserved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Mounts of the extra volumes into the worker container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

// ---------------------------------------------------------------------------------------------
// spec.trainer
