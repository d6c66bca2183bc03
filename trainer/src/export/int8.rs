//! Post-training int8 quantisation and its inference path. Weights are quantised symmetrically
//! per output channel (`w ≈ q × scale[out]`, q in [-127, 127]); the input of every layer with
//! weights is quantised symmetrically per tensor with a scale calibrated on training rows (the
//! largest magnitude seen, over 127). A layer multiplies int8 by int8 into int32 and rescales to
//! float once per output, adding the float bias; ReLU and pooling run in float between layers.
//! The computation follows the standard layout of `tensors` (NCHW images), as the ONNX graph does.

use std::collections::BTreeMap;
use std::ops::{Add, Mul};

use crate::export::safetensors::Int8Tensor;
use crate::export::tensors::Tensor;
use crate::nn::model::{Layer, Network};

/// What the network does, layer by layer, in the standard layout.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Conv {
        name: String,
        height: usize,
        width: usize,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        pad: usize,
    },
    Pool {
        height: usize,
        width: usize,
        channels: usize,
    },
    Dense {
        name: String,
        inputs: usize,
        outputs: usize,
    },
    Relu,
}

/// One layer's quantised weights.
#[derive(Clone, Debug, PartialEq)]
struct Quantised {
    weights: Vec<i8>,
    weight_scales: Vec<f32>,
    bias: Vec<f32>,
    input_scale: f32,
}

/// A network with int8 weights and calibrated input scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Model {
    ops: Vec<Op>,
    layers: BTreeMap<String, Quantised>,
    image: Option<[usize; 3]>,
    inputs: usize,
    classes: usize,
}

fn ops_of(net: &Network) -> Vec<Op> {
    let mut names = net.parameter_layers().into_iter().map(|l| l.name);
    let mut ops = Vec::new();
    for layer in &net.layers {
        ops.push(match *layer {
            Layer::Conv {
                height,
                width,
                in_channels,
                out_channels,
                kernel,
                pad,
                ..
            } => Op::Conv {
                name: names.next().unwrap_or_default(),
                height,
                width,
                in_channels,
                out_channels,
                kernel,
                pad,
            },
            Layer::MaxPool {
                height,
                width,
                channels,
            } => Op::Pool {
                height,
                width,
                channels,
            },
            Layer::Linear {
                inputs, outputs, ..
            } => Op::Dense {
                name: names.next().unwrap_or_default(),
                inputs,
                outputs,
            },
            Layer::Relu => Op::Relu,
            // `quantise` refuses unfolded batch normalisation.
            Layer::Dropout { .. } | Layer::BatchNorm { .. } => continue,
        });
    }
    ops
}

/// A stride-1 convolution over one CHW image, without bias: `[out_channels, oh, ow]`.
fn convolve<T: Copy + Into<A>, A: Copy + Default + Add<Output = A> + Mul<Output = A>>(
    x: &[T],
    weights: &[T],
    op: &Op,
) -> Vec<A> {
    let Op::Conv {
        height: h,
        width: w,
        in_channels: c,
        out_channels: m,
        kernel: k,
        pad,
        ..
    } = *op
    else {
        return Vec::new();
    };
    let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    let mut y = vec![A::default(); m * oh * ow];
    for out in 0..m {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = A::default();
                for ci in 0..c {
                    for ky in 0..k {
                        let Some(iy) = (oy + ky).checked_sub(pad).filter(|iy| *iy < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = (ox + kx).checked_sub(pad).filter(|ix| *ix < w) else {
                                continue;
                            };
                            let xv: A = x[(ci * h + iy) * w + ix].into();
                            let wv: A = weights[((out * c + ci) * k + ky) * k + kx].into();
                            acc = acc + xv * wv;
                        }
                    }
                }
                y[(out * oh + oy) * ow + ox] = acc;
            }
        }
    }
    y
}

/// `y = W x` for `W` of `[outputs, inputs]`, without bias.
fn dense<T: Copy + Into<A>, A: Copy + Default + Add<Output = A> + Mul<Output = A>>(
    x: &[T],
    weights: &[T],
    inputs: usize,
) -> Vec<A> {
    weights
        .chunks_exact(inputs.max(1))
        .map(|row| {
            row.iter()
                .zip(x)
                .fold(A::default(), |acc, (&w, &v)| acc + v.into() * w.into())
        })
        .collect()
}

/// Runs `ops` on one row; `layer` computes each layer with weights from its input.
fn forward(
    ops: &[Op],
    image: Option<[usize; 3]>,
    row: &[f32],
    layer: &mut dyn FnMut(&Op, &[f32]) -> Vec<f32>,
) -> Vec<f32> {
    // Rows are channels-last; the standard layout convolves CHW images.
    let mut x: Vec<f32> = match image {
        Some([h, w, c]) if ops.iter().any(|op| matches!(op, Op::Conv { .. })) => {
            let mut chw = vec![0.0; h * w * c];
            for (i, v) in row.iter().enumerate() {
                let (pixel, channel) = (i / c, i % c);
                chw[channel * h * w + pixel] = *v;
            }
            chw
        }
        _ => row.to_vec(),
    };
    for op in ops {
        x = match *op {
            Op::Relu => x.into_iter().map(|v| v.max(0.0)).collect(),
            Op::Pool {
                height,
                width,
                channels,
            } => {
                let (oh, ow) = (height / 2, width / 2);
                let mut y = vec![f32::NEG_INFINITY; channels * oh * ow];
                for c in 0..channels {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let out = &mut y[(c * oh + oy) * ow + ox];
                            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                                let v = x[(c * height + 2 * oy + dy) * width + 2 * ox + dx];
                                *out = out.max(v);
                            }
                        }
                    }
                }
                y
            }
            Op::Conv { .. } | Op::Dense { .. } => layer(op, &x),
        };
    }
    x
}

fn name_of(op: &Op) -> &str {
    match op {
        Op::Conv { name, .. } | Op::Dense { name, .. } => name,
        Op::Pool { .. } | Op::Relu => "",
    }
}

/// The float computation of one layer with weights, in the standard layout.
fn float_layer(op: &Op, x: &[f32], weights: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut y: Vec<f32> = match op {
        Op::Conv { .. } => convolve::<f32, f32>(x, weights, op),
        Op::Dense { inputs, .. } => dense::<f32, f32>(x, weights, *inputs),
        Op::Pool { .. } | Op::Relu => return x.to_vec(),
    };
    let per_channel = y.len() / bias.len().max(1);
    for (i, v) in y.iter_mut().enumerate() {
        *v += bias[i / per_channel.max(1)];
    }
    y
}

/// Symmetric int8 of `values` with `scale` (values beyond ±127 × scale saturate).
fn quantise(values: &[f32], scale: f32) -> Vec<i8> {
    values
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

impl Int8Model {
    /// Quantises the standard `tensors` of `net`, with input scales calibrated on `calibration`
    /// rows (as the trainer reads them).
    pub fn quantise(
        net: &Network,
        tensors: &[Tensor],
        image: Option<[usize; 3]>,
        calibration: &[f32],
    ) -> Result<Self, String> {
        if net.has_batch_norm() {
            return Err("batch normalisation is folded into the layers before it ahead of export (export::fold)".into());
        }
        let ops = ops_of(net);
        let find = |name: String| {
            tensors
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.values.as_slice())
                .ok_or_else(|| format!("no tensor {name}"))
        };
        let mut float = BTreeMap::new();
        for op in &ops {
            let name = name_of(op);
            if !name.is_empty() {
                let weights = find(format!("{name}.weight"))?;
                let bias = find(format!("{name}.bias"))?;
                float.insert(name.to_string(), (weights, bias));
            }
        }
        // The largest magnitude of each layer's input over the calibration rows.
        let mut ranges: BTreeMap<String, f32> = BTreeMap::new();
        for row in calibration.chunks_exact(net.inputs.max(1)) {
            forward(&ops, image, row, &mut |op, x| {
                let name = name_of(op);
                let largest = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let range = ranges.entry(name.to_string()).or_default();
                *range = range.max(largest);
                let (weights, bias) = float[name];
                float_layer(op, x, weights, bias)
            });
        }
        let mut layers = BTreeMap::new();
        for (name, (weights, bias)) in &float {
            let outputs = bias.len().max(1);
            let per_output = weights.len() / outputs;
            let mut weight_scales = Vec::with_capacity(outputs);
            let mut quantised = Vec::with_capacity(weights.len());
            for row in weights.chunks_exact(per_output.max(1)) {
                let largest = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
                weight_scales.push(scale);
                quantised.extend(quantise(row, scale));
            }
            let range = ranges.get(name).copied().unwrap_or(0.0);
            layers.insert(
                name.clone(),
                Quantised {
                    weights: quantised,
                    weight_scales,
                    bias: bias.to_vec(),
                    input_scale: if range > 0.0 { range / 127.0 } else { 1.0 },
                },
            );
        }
        Ok(Self {
            ops,
            layers,
            image,
            inputs: net.inputs,
            classes: net.classes,
        })
    }

    /// The logits of `rows`, computed in int8 with int32 sums.
    pub fn logits(&self, rows: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len() / self.inputs.max(1) * self.classes);
        for row in rows.chunks_exact(self.inputs.max(1)) {
            out.extend(forward(&self.ops, self.image, row, &mut |op, x| {
                let Some(layer) = self.layers.get(name_of(op)) else {
                    return Vec::new();
                };
                let qx = quantise(x, layer.input_scale);
                let sums: Vec<i32> = match op {
                    Op::Conv { .. } => convolve::<i8, i32>(&qx, &layer.weights, op),
                    Op::Dense { inputs, .. } => dense::<i8, i32>(&qx, &layer.weights, *inputs),
                    Op::Pool { .. } | Op::Relu => Vec::new(),
                };
                let per_channel = (sums.len() / layer.bias.len().max(1)).max(1);
                sums.iter()
                    .enumerate()
                    .map(|(i, &sum)| {
                        let channel = i / per_channel;
                        sum as f32 * layer.input_scale * layer.weight_scales[channel]
                            + layer.bias[channel]
                    })
                    .collect()
            }));
        }
        out
    }

    /// The tensors of `model.int8.safetensors`: `NAME.weight` (I8, standard layout),
    /// `NAME.weight_scale` (one per output), `NAME.bias` and `NAME.input_scale` (F32).
    pub fn to_tensors(&self) -> (Vec<Tensor>, Vec<Int8Tensor>) {
        let (mut floats, mut int8) = (Vec::new(), Vec::new());
        for op in &self.ops {
            let name = name_of(op);
            let Some(layer) = self.layers.get(name) else {
                continue;
            };
            int8.push(Int8Tensor {
                name: format!("{name}.weight"),
                shape: weight_shape(op),
                values: layer.weights.clone(),
            });
            for (suffix, values) in [
                ("weight_scale", layer.weight_scales.clone()),
                ("bias", layer.bias.clone()),
                ("input_scale", vec![layer.input_scale]),
            ] {
                floats.push(Tensor {
                    name: format!("{name}.{suffix}"),
                    shape: vec![values.len()],
                    values,
                });
            }
        }
        (floats, int8)
    }

    /// Reads the tensors of `to_tensors` back for `net`; names the first that is missing or has
    /// another shape.
    pub fn from_tensors(
        net: &Network,
        image: Option<[usize; 3]>,
        floats: &[Tensor],
        int8: &[Int8Tensor],
    ) -> Result<Self, String> {
        let ops = ops_of(net);
        let mut layers = BTreeMap::new();
        for op in &ops {
            let name = name_of(op);
            if name.is_empty() {
                continue;
            }
            let shape = weight_shape(op);
            let outputs = shape[0];
            let weights = int8
                .iter()
                .find(|t| t.name == format!("{name}.weight") && t.shape == shape)
                .ok_or_else(|| format!("no I8 tensor {name}.weight of shape {shape:?}"))?;
            let float = |suffix: &str, len: usize| {
                floats
                    .iter()
                    .find(|t| t.name == format!("{name}.{suffix}") && t.shape == [len])
                    .map(|t| t.values.clone())
                    .ok_or_else(|| format!("no F32 tensor {name}.{suffix} of shape [{len}]"))
            };
            let input_scale = float("input_scale", 1)?[0];
            if !(input_scale.is_finite() && input_scale > 0.0) {
                return Err(format!("{name}.input_scale is {input_scale}"));
            }
            layers.insert(
                name.to_string(),
                Quantised {
                    weights: weights.values.clone(),
                    weight_scales: float("weight_scale", outputs)?,
                    bias: float("bias", outputs)?,
                    input_scale,
                },
            );
        }
        Ok(Self {
            ops,
            layers,
            image,
            inputs: net.inputs,
            classes: net.classes,
        })
    }
}

fn weight_shape(op: &Op) -> Vec<usize> {
    match *op {
        Op::Conv {
            in_channels,
            out_channels,
            kernel,
            ..
        } => vec![out_channels, in_channels, kernel, kernel],
        Op::Dense {
            inputs, outputs, ..
        } => vec![outputs, inputs],
        Op::Pool { .. } | Op::Relu => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;
    use crate::export::tensors::to_standard;

    fn lenet() -> Network {
        let spec = ModelSpec {
            kind: ModelKind::Lenet,
            hidden: None,
            dropout: None,
            batch_norm: None,
            sync_batch_norm: None,
        };
        Network::new(&spec, 784, 10).expect("lenet")
    }

    fn rows(n: usize) -> Vec<f32> {
        (0..n * 784)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0).powi(3))
            .collect()
    }

    #[test]
    fn the_float_path_of_the_standard_layout_is_the_trainers_network() {
        let net = lenet();
        let params = net.init_params(4);
        let tensors = to_standard(&net, &params);
        let ops = ops_of(&net);
        let input = rows(3);
        let mut ws = crate::nn::model::Workspace::default();
        let ours = net.logits(&params, &input, 3, &mut ws).to_vec();
        for (i, row) in input.chunks_exact(784).enumerate() {
            let theirs = forward(&ops, Some([28, 28, 1]), row, &mut |op, x| {
                let name = name_of(op);
                let find = |suffix: &str| {
                    tensors
                        .iter()
                        .find(|t| t.name == format!("{name}.{suffix}"))
                        .map(|t| t.values.clone())
                        .unwrap_or_default()
                };
                float_layer(op, x, &find("weight"), &find("bias"))
            });
            for (a, b) in theirs.iter().zip(&ours[i * 10..(i + 1) * 10]) {
                assert!((a - b).abs() < 1e-4, "{a} against {b}");
            }
        }
    }

    #[test]
    fn int8_logits_stay_close_and_the_tensors_round_trip() {
        let net = lenet();
        let params = net.init_params(4);
        let tensors = to_standard(&net, &params);
        let model =
            Int8Model::quantise(&net, &tensors, Some([28, 28, 1]), &rows(16)).expect("quantised");
        let input = rows(4);
        let mut ws = crate::nn::model::Workspace::default();
        let float = net.logits(&params, &input, 4, &mut ws).to_vec();
        let int8 = model.logits(&input);
        let largest = float.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let error = float
            .iter()
            .zip(&int8)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(error < 0.05 * largest, "{error} of {largest}");
        let (floats, bytes) = model.to_tensors();
        assert_eq!(bytes[0].shape, [6, 1, 5, 5]);
        let back = Int8Model::from_tensors(&net, Some([28, 28, 1]), &floats, &bytes);
        assert_eq!(back, Ok(model));
        assert!(Int8Model::from_tensors(&net, None, &floats[1..], &bytes).is_err());
    }
}
