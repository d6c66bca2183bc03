//! The layers of a network that hold parameters, by name and place in the flat parameters: what
//! `freeze` and `initFrom.layers` name, and what pruning masks. Names count the layers of each
//! kind from the input (`conv1`, `conv2`, `fc1` …), as `ModelSpec::layer_names` lists them. A
//! layer's batch normalisation belongs to it.

use std::ops::Range;

use crate::nn::model::{Layer, Network};

/// One layer with parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterLayer {
    /// `conv1`, `fc2`, …
    pub name: String,
    /// Its weights in the flat parameters.
    pub weights: Range<usize>,
    /// Its biases, which follow the weights.
    pub biases: Range<usize>,
    /// The batch normalisation of its outputs, when the model has it.
    pub normalisation: Option<Normalisation>,
}

/// Where a layer's batch normalisation lives in the flat parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalisation {
    /// The learned scale per channel, after the layer's biases.
    pub scale: Range<usize>,
    /// The learned shift per channel, after the scale.
    pub shift: Range<usize>,
    /// The running mean and then the running variance, after every trained parameter.
    pub running: Range<usize>,
}

impl ParameterLayer {
    /// The trained parameters together: weights, biases and the normalisation's scale and shift.
    pub fn all(&self) -> Range<usize> {
        let end = self
            .normalisation
            .as_ref()
            .map_or(self.biases.end, |n| n.shift.end);
        self.weights.start..end
    }
}

impl Network {
    /// The layers with parameters, from the input to the classifier head.
    pub fn parameter_layers(&self) -> Vec<ParameterLayer> {
        let (mut convolutions, mut fully_connected) = (0, 0);
        let mut layers: Vec<ParameterLayer> = Vec::new();
        for layer in &self.layers {
            let (name, weight, bias, outputs) = match *layer {
                Layer::Linear {
                    weight,
                    bias,
                    outputs,
                    ..
                } => {
                    fully_connected += 1;
                    (format!("fc{fully_connected}"), weight, bias, outputs)
                }
                Layer::Conv {
                    weight,
                    bias,
                    out_channels,
                    ..
                } => {
                    convolutions += 1;
                    (format!("conv{convolutions}"), weight, bias, out_channels)
                }
                Layer::BatchNorm {
                    channels,
                    scale,
                    shift,
                    mean,
                    ..
                } => {
                    if let Some(normalised) = layers.last_mut() {
                        normalised.normalisation = Some(Normalisation {
                            scale: scale..scale + channels,
                            shift: shift..shift + channels,
                            running: mean..mean + 2 * channels,
                        });
                    }
                    continue;
                }
                _ => continue,
            };
            layers.push(ParameterLayer {
                name,
                weights: weight..bias,
                biases: bias..bias + outputs,
                normalisation: None,
            });
        }
        layers
    }
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;

    #[test]
    fn the_layers_are_named_as_the_api_names_them_and_tile_the_parameters() {
        for (kind, hidden, inputs, batch_norm) in [
            (ModelKind::Logistic, None, 20, None),
            (ModelKind::Mlp, Some(vec![32, 16, 8]), 20, None),
            (ModelKind::Mlp, Some(vec![32, 16, 8]), 20, Some(true)),
            (ModelKind::Lenet, None, 784, None),
            (ModelKind::Lenet, None, 784, Some(true)),
        ] {
            let spec = ModelSpec {
                kind,
                hidden,
                dropout: None,
                batch_norm,
                sync_batch_norm: None,
            };
            let net = Network::new(&spec, inputs, 10).expect("builds");
            let layers = net.parameter_layers();
            let names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
            assert_eq!(names, spec.layer_names(), "{kind:?}");
            let mut next = 0;
            for layer in &layers {
                assert_eq!(
                    layer.all().start,
                    next,
                    "{} starts where the last ended",
                    layer.name
                );
                assert_eq!(layer.weights.end, layer.biases.start);
                next = layer.all().end;
            }
            assert_eq!(
                next, net.trainable,
                "{kind:?}: every trained parameter in one layer"
            );
            // Every hidden layer normalised, its running statistics tiling the rest.
            let running: Vec<_> = layers
                .iter()
                .filter_map(|l| l.normalisation.as_ref().map(|n| n.running.clone()))
                .collect();
            let expected = if batch_norm.is_some() {
                layers.len() - 1
            } else {
                0
            };
            assert_eq!(running.len(), expected, "{kind:?}");
            let tiled = running
                .iter()
                .try_fold(net.trainable, |at, r| (r.start == at).then_some(r.end));
            assert_eq!(tiled, Some(net.num_params), "{kind:?}");
        }
    }
}
