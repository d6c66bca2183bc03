//! `spec.trainer.compression`: making the trained model smaller while it trains.

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
