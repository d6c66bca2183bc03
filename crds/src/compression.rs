//! Making the trained model smaller while it trains: `spec.trainer.compression` (pruning) and
//! `spec.trainer.distillation` (a small student taught by a larger teacher).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Model compression during training.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompressionSpec {
    /// Gradual magnitude pruning of the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruningSpec>,
}

/// Gradual magnitude pruning: from `startStep` to `endStep` the smallest weights of every layer
/// are set to zero and kept there, on a schedule that prunes fast first and slowly towards the
/// end (s × (1 − (1 − progress)³)), so the network recovers between rounds. Biases are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.startStep) || self.startStep < self.endStep").message("startStep must be before endStep").field_path(".startStep"))]
#[serde(rename_all = "camelCase")]
pub struct PruningSpec {
    /// Fraction of each layer's weights that are zero from `endStep` on.
    #[schemars(range(min = 0.0, max = 0.99))]
    pub sparsity: f64,
    /// Step of the first pruning round. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub start_step: Option<i64>,
    /// Step at which `sparsity` is reached; the masks stay fixed after it.
    #[schemars(range(min = 1))]
    pub end_step: i64,
    /// Steps between two pruning rounds. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub every_steps: Option<i64>,
}

/// Knowledge distillation: the student trains on its labels and on a teacher's outputs softened
/// by `temperature`, weighted `alpha` to the teacher and `1 − alpha` to the labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillationSpec {
    /// The teacher: a checkpoint location (its newest checkpoint that verifies) or one manifest
    /// in it, of a model trained by Ferrotrain for the same features and classes. Read with this
    /// job's checkpoint endpoint and credentials.
    #[schemars(length(min = 1, max = 2048))]
    pub teacher: String,
    /// Softening temperature T of both models' outputs, at least 1 (1 leaves them as they are).
    /// Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub temperature: Option<f64>,
    /// Weight of the teacher's term; the labels get 1 − alpha. Default: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub alpha: Option<f64>,
}
