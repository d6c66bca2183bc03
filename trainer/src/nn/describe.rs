//! A model in words, for checkpoint manifests and warm-start errors.

use ferrotrain_crds::{ModelKind, ModelSpec};

use crate::nn::model::Network;

/// The model, its inputs, classes and size: `mlp [256, 128], 784 features, 10 classes, 235146
/// parameters`.
pub fn describe(spec: &ModelSpec, net: &Network) -> String {
    format!(
        "{}, {} features, {} classes, {} parameters",
        kind(spec),
        net.inputs,
        net.classes,
        net.num_params
    )
}

/// The architecture alone: `mlp [256, 128]`, `lenet with batch normalisation`.
pub fn kind(spec: &ModelSpec) -> String {
    let kind = match spec.kind {
        ModelKind::Logistic => "logistic".to_string(),
        ModelKind::Mlp => format!("mlp {:?}", spec.hidden_or_default()),
        ModelKind::Lenet => "lenet".to_string(),
    };
    if spec.batch_norm_or_default() {
        format!("{kind} with batch normalisation")
    } else {
        kind
    }
}
