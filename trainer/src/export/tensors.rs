//! The trained parameters as named tensors in the conventions other frameworks load: dense
//! weights `[out, in]`, convolution weights `[out, in, kH, kW]` over NCHW images, and the first
//! dense layer after a convolution reading the CHW flattening. Ferrotrain keeps images
//! channels-last, so convolution weights and that layer's columns are permuted on the way out
//! and back.

use crate::nn::model::{Layer, Network};

/// One named tensor, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// `conv1.weight`, `fc3.bias`, …
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` values.
    pub values: Vec<f32>,
}

/// One layer's weights: their shape in the standard layout, and for each standard index the
/// index in Ferrotrain's flat parameters.
struct Weights {
    shape: Vec<usize>,
    ours: Vec<usize>,
}

/// The weights of every layer with parameters, in order, with where their biases lie.
fn weight_layouts(net: &Network) -> Vec<(Weights, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    // Height, width and channels of the activations when they are images.
    let mut image: Option<(usize, usize, usize)> = None;
    for layer in &net.layers {
        match *layer {
            Layer::Conv {
                height,
                width,
                in_channels,
                out_channels,
                kernel,
                pad,
                weight,
                bias,
            } => {
                let (k, c) = (kernel, in_channels);
                let mut ours = Vec::with_capacity(out_channels * c * k * k);
                // Standard [m][c][kh][kw] from ours [m][kh][kw][c].
                for m in 0..out_channels {
                    for ci in 0..c {
                        for kh in 0..k {
                            for kw in 0..k {
                                ours.push(weight + ((m * k + kh) * k + kw) * c + ci);
                            }
                        }
                    }
                }
                out.push((
                    Weights {
                        shape: vec![out_channels, c, k, k],
                        ours,
                    },
                    bias..bias + out_channels,
                ));
                image = Some((
                    height + 2 * pad + 1 - kernel,
                    width + 2 * pad + 1 - kernel,
                    out_channels,
                ));
            }
            Layer::MaxPool { .. } => {
                image = image.map(|(h, w, c)| (h / 2, w / 2, c));
            }
            Layer::Linear {
                inputs,
                outputs,
                weight,
                bias,
            } => {
                let flattened = image.take().filter(|(h, w, c)| h * w * c == inputs);
                let mut ours = Vec::with_capacity(inputs * outputs);
                for o in 0..outputs {
                    match flattened {
                        // Column c·h·w + y·w + x of the standard layout reads our (y, x, c).
                        Some((h, w, c)) => {
                            for ci in 0..c {
                                for y in 0..h {
                                    for x in 0..w {
                                        ours.push(weight + o * inputs + (y * w + x) * c + ci);
                                    }
                                }
                            }
                        }
                        None => ours.extend((0..inputs).map(|i| weight + o * inputs + i)),
                    }
                }
                out.push((
                    Weights {
                        shape: vec![outputs, inputs],
                        ours,
                    },
                    bias..bias + outputs,
                ));
            }
            // Exported networks have it folded into the layer before (`fold`).
            Layer::Relu | Layer::Dropout { .. } | Layer::BatchNorm { .. } => {}
        }
    }
    out
}

/// The parameters as `NAME.weight` and `NAME.bias` tensors, layer by layer.
pub fn to_standard(net: &Network, params: &[f32]) -> Vec<Tensor> {
    let names = net.parameter_layers();
    let mut tensors = Vec::new();
    for ((weights, biases), layer) in weight_layouts(net).into_iter().zip(names) {
        tensors.push(Tensor {
            name: format!("{}.weight", layer.name),
            shape: weights.shape,
            values: weights.ours.iter().map(|&i| params[i]).collect(),
        });
        tensors.push(Tensor {
            name: format!("{}.bias", layer.name),
            shape: vec![biases.len()],
            values: params[biases].to_vec(),
        });
    }
    tensors
}

/// Ferrotrain's flat parameters from standard tensors; names the first tensor that is missing
/// or has another shape.
pub fn from_standard(net: &Network, tensors: &[Tensor]) -> Result<Vec<f32>, String> {
    let mut params = vec![0.0; net.num_params];
    let names = net.parameter_layers();
    let find = |name: String, shape: &[usize]| -> Result<&Tensor, String> {
        let tensor = tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("no tensor {name}"))?;
        if tensor.shape != shape || tensor.values.len() != shape.iter().product::<usize>() {
            return Err(format!(
                "{name} has shape {:?}, the model needs {shape:?}",
                tensor.shape
            ));
        }
        Ok(tensor)
    };
    for ((weights, biases), layer) in weight_layouts(net).into_iter().zip(names) {
        let w = find(format!("{}.weight", layer.name), &weights.shape)?;
        for (&i, &v) in weights.ours.iter().zip(&w.values) {
            params[i] = v;
        }
        let b = find(format!("{}.bias", layer.name), &[biases.len()])?;
        params[biases].copy_from_slice(&b.values);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;

    #[test]
    fn lenet_round_trips_and_its_convolutions_are_permuted_to_nchw() {
        let spec = ModelSpec {
            kind: ModelKind::Lenet,
            hidden: None,
            dropout: None,
            batch_norm: None,
            sync_batch_norm: None,
        };
        let net = Network::new(&spec, 784, 10).expect("lenet");
        let params: Vec<f32> = (0..net.num_params).map(|i| i as f32).collect();
        let tensors = to_standard(&net, &params);
        let shapes: Vec<(&str, &[usize])> = tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("conv1.weight", &[6, 1, 5, 5][..]),
                ("conv1.bias", &[6]),
                ("conv2.weight", &[16, 6, 5, 5]),
                ("conv2.bias", &[16]),
                ("fc1.weight", &[120, 400]),
                ("fc1.bias", &[120]),
                ("fc2.weight", &[84, 120]),
                ("fc2.bias", &[84]),
                ("fc3.weight", &[10, 84]),
                ("fc3.bias", &[10]),
            ]
        );
        let conv2 = &tensors[2];
        let base = net.parameter_layers()[1].weights.start as f32;
        // Standard [m=1][c=2][kh=3][kw=4] is ours [m=1][kh=3][kw=4][c=2].
        let standard = ((6 + 2) * 5 + 3) * 5 + 4;
        assert_eq!(
            conv2.values[standard],
            base + (((5 + 3) * 5 + 4) * 6 + 2) as f32
        );
        // fc1's column c·25 + y·5 + x reads our (y, x, c): column 1 is (0, 1, 0) = ours 16.
        let fc1 = &tensors[4];
        let fc1_base = net.parameter_layers()[2].weights.start as f32;
        assert_eq!(fc1.values[1], fc1_base + 16.0);
        assert_eq!(from_standard(&net, &tensors), Ok(params));
        let mut wrong = tensors.clone();
        wrong[4].shape = vec![400, 120];
        assert_eq!(
            from_standard(&net, &wrong),
            Err("fc1.weight has shape [400, 120], the model needs [120, 400]".to_string())
        );
    }
}
