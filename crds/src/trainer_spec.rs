//! `spec.trainer`: what the Ferrotrain trainer trains: model, dataset, optimiser and schedule,
//! precision and device, synchronous or asynchronous data parallelism, early stopping, and a warm
//! start from another job's checkpoint.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// Layers kept fixed: no gradient step, no weight decay, no optimiser state. Names count the
    /// layers of each kind from the input: `conv1`, `conv2`, `fc1`, `fc2`, `fc3` for LeNet,
    /// `fc1` … `fcN` for an MLP (the last is the classifier head), `fc1` for logistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 16)))]
    pub freeze: Option<Vec<String>>,
    /// Knowledge distillation from a teacher checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<crate::compression::DistillationSpec>,
    /// Model compression while training (pruning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<crate::compression::CompressionSpec>,
}

/// A checkpoint to start from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.layers) || !has(self.continueSteps) || !self.continueSteps").message("continueSteps takes the whole run over; with layers only parameters are taken, so remove one of them").field_path(".continueSteps"))]
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
    /// Take only these layers' weights and biases (names as in `freeze`); the others start from
    /// this job's seed, as a new classifier head for a task with other classes does. The
    /// optimiser starts afresh. Default: every parameter, of a model that must then match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 16)))]
    pub layers: Option<Vec<String>>,
}

/// Model architecture.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'mlp' || !has(self.hidden)").message("hidden applies only to type mlp").field_path(".hidden"))]
#[x_kube(validation = Rule::new("self.type != 'logistic' || !has(self.dropout)").message("dropout does not apply to type logistic").field_path(".dropout"))]
#[x_kube(validation = Rule::new("self.type != 'logistic' || !has(self.batchNorm) || !self.batchNorm").message("batchNorm applies to types mlp and lenet: softmax regression has no hidden layer to normalise").field_path(".batchNorm"))]
#[x_kube(validation = Rule::new("!has(self.syncBatchNorm) || !self.syncBatchNorm || (has(self.batchNorm) && self.batchNorm)").message("syncBatchNorm needs batchNorm: true").field_path(".syncBatchNorm"))]
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
    /// Batch normalisation after every convolution and hidden dense layer, before its ReLU (mlp,
    /// lenet). Each rank normalises with its own batch's statistics; the running statistics that
    /// evaluation uses are averaged over the gang every step. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_norm: Option<bool>,
    /// With batchNorm: normalise with the statistics of the whole gang's batch (synchronised
    /// batch normalisation; two collectives per layer and step). For small per-rank batches.
    /// Synchronous mode only. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_batch_norm: Option<bool>,
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
#[x_kube(validation = Rule::new("self.type != 'csv' || !has(self.augment)").message("augment transforms images; type csv has none, use mnist or idx").field_path(".augment"))]
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
    /// Random transformations of every training image (never of evaluation images), drawn from
    /// the seed, the step and the rank so that a resumed run sees the images an uninterrupted
    /// run sees. Image datasets only (`mnist`, `idx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentSpec>,
}

/// Data augmentation of training images. Each transformation is off at 0 (the default); pixels
/// are on the [0, 1] scale the trainer reads images in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AugmentSpec {
    /// Largest shift in pixels along each axis (uniform in [-shiftPixels, shiftPixels]); pixels
    /// shifted in from outside are background (0): a random crop of the zero-padded image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 8))]
    pub shift_pixels: Option<i32>,
    /// Largest rotation in degrees about the image centre (uniform in
    /// [-rotationDegrees, rotationDegrees]), sampled bilinearly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 45.0))]
    pub rotation_degrees: Option<f64>,
    /// Standard deviation of Gaussian noise added to every pixel; the result is clamped to
    /// [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub noise_std: Option<f64>,
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
    /// L1 penalty: `l1 × sign(w)` is added to the gradient of every parameter, which drives
    /// weights that do not earn their keep to zero (a sparser model than weight decay gives).
    /// Applies to every optimiser, beside `weightDecay`. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub l1: Option<f64>,
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
