//! The `TrainingJob` custom resource: spec, status and the OpenAPI/CEL rules the API server enforces.
//!
//! Unions follow the Kubernetes convention of a `type` discriminator with the members' fields next
//! to it; CEL rules reject fields that do not belong to the chosen type. Optional fields stay
//! optional here: their defaults are applied in one place, `crate::defaults`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// The training configuration read by `ferrotrain-trainer`, from the env contract in a pod or from
/// `--config FILE.yaml` standalone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.epochs) || has(self.maxSteps)").message("set epochs, maxSteps or both so the job knows when it is done").field_path(".epochs"))]
#[serde(rename_all = "camelCase")]
pub struct TrainerSpec {
    /// The model to train.
    pub model: ModelSpec,
    /// The training data and how to evaluate.
    pub dataset: DatasetSpec,
    /// Samples per step on each worker; the global batch is batchSize × world size.
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: i32,
    /// Passes over the training data. With maxSteps too, training stops at whichever comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub epochs: Option<i32>,
    /// Total optimiser steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_steps: Option<i64>,
    /// Optimiser and its hyperparameters. Default: Adam, lr 0.001.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerSpec>,
    /// Learning-rate schedule. Default: constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_schedule: Option<LrScheduleSpec>,
    /// Clip gradients to this global L2 norm (greater than 0). Unset: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub grad_clip_norm: Option<f64>,
    /// Compute precision. bf16/fp16 apply on GPU with fp32 master weights; on CPU the trainer
    /// runs fp32 and says so in its log. Default: fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Synchronous (all-reduce every step) or asynchronous (bounded-staleness parameter server)
    /// data parallelism. Default: sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ModeSpec>,
    /// Stop early when a validation metric stops improving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStoppingSpec>,
    /// Evaluate on the validation/test set every N steps. Default: at the end of every epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub eval_every_steps: Option<i64>,
    /// Seed of parameter initialisation, shuffling and dropout, 0 to 2^53 − 1 (the largest
    /// integer every JSON parser keeps exact). Default: 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9_007_199_254_740_991_i64))]
    pub seed: Option<i64>,
    /// Compute device: auto (CUDA when built in and a GPU is visible, else CPU), cpu or cuda.
    /// Default: auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// Warm start: begin from the parameters of another job's committed checkpoint (transfer
    /// learning, fine-tuning, and the exploit step of a population-based sweep). The job's own
    /// checkpoints take precedence once it has written one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFromSpec>,
}

/// A checkpoint to start from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InitFromSpec {
    /// A checkpoint manifest (`…/manifests/000000001000.json`, as in a TrainingJob's
    /// `status.checkpoint.uri`) or a checkpoint location (`s3://bucket/prefix`, `file://dir`),
    /// whose newest checkpoint that verifies is used. Read with this job's checkpoint endpoint
    /// and credentials.
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// Start the optimiser afresh (no moments) instead of taking the checkpoint's optimiser
    /// state. Default: false; a checkpoint of another optimiser type needs true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_optimizer: Option<bool>,
    /// Continue the checkpoint's step count, epoch and position in the data, so `maxSteps` and
    /// the learning-rate schedule count from where it stopped (the segments of a
    /// population-based sweep). Default: false, a new run that starts at step 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_steps: Option<bool>,
}

/// Model architecture.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'mlp' || !has(self.hidden)").message("hidden applies only to type mlp").field_path(".hidden"))]
#[x_kube(validation = Rule::new("self.type != 'logistic' || !has(self.dropout)").message("dropout does not apply to type logistic").field_path(".dropout"))]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `logistic` (softmax regression), `mlp` (fully connected, ReLU) or `lenet` (LeNet-5-style CNN
    /// for 28×28 single-channel images).
    #[serde(rename = "type")]
    pub kind: ModelKind,
    /// Hidden layer widths of the MLP. Default: [256, 128].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(range(min = 1, max = 65536)))]
    pub hidden: Option<Vec<i32>>,
    /// Dropout probability after each hidden layer (mlp, lenet). Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.95))]
    pub dropout: Option<f64>,
}

/// The model families the trainer implements.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Softmax regression.
    Logistic,
    /// Multi-layer perceptron.
    Mlp,
    /// LeNet-5-style convolutional network.
    Lenet,
}

/// Training data, and the data used for evaluation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'idx' || (has(self.images) && has(self.labels))").message("type idx needs images and labels").field_path(".images"))]
#[x_kube(validation = Rule::new("self.type == 'idx' || (!has(self.images) && !has(self.labels) && !has(self.testImages) && !has(self.testLabels))").message("images, labels, testImages and testLabels apply only to type idx").field_path(".images"))]
#[x_kube(validation = Rule::new("self.type != 'csv' || has(self.uri)").message("type csv needs uri").field_path(".uri"))]
#[x_kube(validation = Rule::new("self.type == 'csv' || (!has(self.uri) && !has(self.testUri) && !has(self.labelColumn) && !has(self.header))").message("uri, testUri, labelColumn and header apply only to type csv").field_path(".uri"))]
#[x_kube(validation = Rule::new("has(self.testImages) == has(self.testLabels)").message("testImages and testLabels go together").field_path(".testImages"))]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// `mnist` (built into the trainer image), `idx` (an IDX image/label pair) or `csv`.
    #[serde(rename = "type")]
    pub kind: DatasetKind,
    /// IDX images file (`file://` or `s3://`, optionally gzipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub images: Option<String>,
    /// IDX labels file (`file://` or `s3://`, optionally gzipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub labels: Option<String>,
    /// IDX test images; with testLabels it replaces the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub test_images: Option<String>,
    /// IDX test labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub test_labels: Option<String>,
    /// CSV file of numeric features and an integer class label (`file://` or `s3://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub uri: Option<String>,
    /// CSV test file with the same columns; it replaces the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub test_uri: Option<String>,
    /// Zero-based index of the CSV label column. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub label_column: Option<i32>,
    /// Whether the CSV's first row is a header. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<bool>,
    /// Fraction of the training data held out for evaluation when no test set is given (MNIST
    /// uses its own test set). Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub validation_split: Option<f64>,
    /// Number of classes; every label must be below it. Unset: one more than the largest
    /// training label, and then every class up to it must occur in the training labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 256))]
    pub classes: Option<i32>,
}

/// Dataset formats.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// The MNIST handwritten digits shipped with the trainer.
    Mnist,
    /// An IDX images/labels pair.
    Idx,
    /// A CSV file of numeric features with an integer label column.
    Csv,
}

/// Optimiser and hyperparameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'sgd' || (!has(self.momentum) && !has(self.nesterov))").message("momentum and nesterov apply only to type sgd").field_path(".momentum"))]
#[x_kube(validation = Rule::new("self.type != 'sgd' || (!has(self.betas) && !has(self.eps))").message("betas and eps apply only to adam and adamw").field_path(".betas"))]
#[x_kube(validation = Rule::new("!has(self.nesterov) || !self.nesterov || (has(self.momentum) && self.momentum > 0.0)").message("nesterov needs momentum > 0").field_path(".nesterov"))]
#[serde(rename_all = "camelCase")]
pub struct OptimizerSpec {
    /// `sgd`, `adam` or `adamw` (decoupled weight decay).
    #[serde(rename = "type")]
    pub kind: OptimizerKind,
    /// Learning rate. Default: 0.001 for adam/adamw, 0.01 for sgd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub lr: Option<f64>,
    /// SGD momentum. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.9999))]
    pub momentum: Option<f64>,
    /// Nesterov momentum for SGD. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Adam β1 and β2. Default: [0.9, 0.999].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2), inner(range(min = 0.0, max = 0.99999)))]
    pub betas: Option<Vec<f64>>,
    /// Adam ε. Default: 1e-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub eps: Option<f64>,
    /// Weight decay: L2 penalty for sgd/adam, decoupled for adamw. Default: 0 (0.01 for adamw).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub weight_decay: Option<f64>,
}

/// Optimisers the trainer implements.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd,
    /// Adam.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// Learning-rate schedule over optimiser steps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'step' || (!has(self.everySteps) && !has(self.gamma))").message("everySteps and gamma apply only to type step").field_path(".everySteps"))]
#[x_kube(validation = Rule::new("self.type != 'step' || has(self.everySteps)").message("type step needs everySteps").field_path(".everySteps"))]
#[x_kube(validation = Rule::new("self.type == 'cosine' || (!has(self.warmupSteps) && !has(self.minLr))").message("warmupSteps and minLr apply only to type cosine").field_path(".warmupSteps"))]
#[serde(rename_all = "camelCase")]
pub struct LrScheduleSpec {
    /// `constant`, `step` (multiply by gamma every N steps) or `cosine` (linear warmup, then cosine
    /// decay to minLr at the last step).
    #[serde(rename = "type")]
    pub kind: LrScheduleKind,
    /// Step schedule: decay interval in steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub every_steps: Option<i64>,
    /// Step schedule: decay factor. Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub gamma: Option<f64>,
    /// Cosine schedule: linear warmup steps. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub warmup_steps: Option<i64>,
    /// Cosine schedule: final learning rate. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_lr: Option<f64>,
}

/// Learning-rate schedules.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduleKind {
    /// The optimiser's lr throughout.
    Constant,
    /// Multiply by gamma every everySteps steps.
    Step,
    /// Linear warmup then cosine decay.
    Cosine,
}

/// Compute precision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats everywhere.
    Fp32,
    /// bfloat16 compute, fp32 master weights (GPU).
    Bf16,
    /// float16 compute with dynamic loss scaling, fp32 master weights (GPU).
    Fp16,
}

/// Compute device selection.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU.
    Auto,
    /// Always the CPU.
    Cpu,
    /// Always CUDA; the trainer exits with a config error when no GPU is usable.
    Cuda,
}

/// Data-parallel mode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'async' || !has(self.maxStaleness)").message("maxStaleness applies only to type async").field_path(".maxStaleness"))]
#[x_kube(validation = Rule::new("self.type == 'sync' || !has(self.gradientCompression)").message("gradientCompression applies only to type sync").field_path(".gradientCompression"))]
#[serde(rename_all = "camelCase")]
pub struct ModeSpec {
    /// `sync` (ring all-reduce of gradients every step) or `async` (parameter server on rank 0,
    /// workers apply updates computed on parameters at most maxStaleness versions old).
    #[serde(rename = "type")]
    pub kind: ModeKind,
    /// Async: how many parameter versions a worker's gradient may lag behind. Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_staleness: Option<i32>,
    /// Sync: how gradients travel between ranks. `none` sends fp32; `bf16` sends bfloat16
    /// (rounded to nearest even) and sums in fp32, halving the bytes on the wire at a small cost
    /// in accuracy. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_compression: Option<GradientCompression>,
}

/// Gradient encodings on the wire.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GradientCompression {
    /// fp32, exact.
    None,
    /// bfloat16: 8 exponent and 7 mantissa bits.
    Bf16,
}

/// Data-parallel modes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModeKind {
    /// Bulk-synchronous: every rank applies the same averaged gradient.
    Sync,
    /// Bounded-staleness asynchronous SGD.
    Async,
}

/// Early stopping on a validation metric.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EarlyStoppingSpec {
    /// The metric watched: `valLoss` or `valAccuracy`.
    pub metric: EarlyStoppingMetric,
    /// `min` when lower is better (loss), `max` when higher is better (accuracy). Default: the
    /// metric's natural direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EarlyStoppingMode>,
    /// Evaluations without improvement before stopping. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub patience: Option<i32>,
    /// Smallest change that counts as an improvement. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_delta: Option<f64>,
}

/// Metrics early stopping can watch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EarlyStoppingMetric {
    /// Validation loss.
    ValLoss,
    /// Validation accuracy.
    ValAccuracy,
}

/// Direction of improvement.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStoppingMode {
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

// ---------------------------------------------------------------------------------------------
// spec.checkpoint

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
    /// while Running. Unset: no stall detection.
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
    /// Time spent making progress versus time lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goodput: Option<GoodputStatus>,
    /// When the first attempt's gang was running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the current attempt's workers were created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_start_time: Option<Time>,
    /// Earliest time the next gang may be created (backoff after a gang-schedule timeout).
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
