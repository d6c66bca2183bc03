//! The layers of a network that hold parameters, by name and place in the flat parameters: what
//! `freeze` and `initFrom.layers` name, and what pruning masks. Names count the layers of each
//! kind from the input (`conv1`, `conv2`, `fc1` …), as `ModelSpec::layer_names` lists them.

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
}

impl ParameterLayer {
    /// Weights and biases together.
    pub fn all(&self) -> Range<usize> {
        self.weights.start..self.biases.end
    }
}

impl Network {
    /// The layers with parameters, from the input to the classifier head.
    pub fn parameter_layers(&self) -> Vec<ParameterLayer> {
        let (mut convolutions, mut fully_connected) = (0, 0);
        let named = self.layers.iter().filter_map(|layer| {
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
                _ => return None,
            };
            Some(ParameterLayer {
                name,
                weights: weight..bias,
                biases: bias..bias + outputs,
            })
        });
        named.collect()
    }
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;

    #[test]
    fn the_layers_are_named_as_the_api_names_them_and_tile_the_parameters() {
        for (kind, hidden, inputs) in [
            (ModelKind::Logistic, None, 20),
            (ModelKind::Mlp, Some(vec![32, 16, 8]), 20),
            (ModelKind::Lenet, None, 784),
        ] {
            let spec = ModelSpec {
                kind,
                hidden,
                dropout: None,
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
                next, net.num_params,
                "{kind:?}: every parameter in one layer"
            );
        }
    }
}
