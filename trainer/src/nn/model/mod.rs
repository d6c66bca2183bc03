//! The models (softmax regression, MLP, LeNet-5, optionally batch-normalised) with hand-written
//! forward and backward passes over one flat parameter vector. Flat parameters and gradients are
//! what the ring all-reduce, the fused optimiser and the checkpoint writer work on, with no copies
//! in between.
//!
//! Activations are batch-major and channels-last (`[batch, height, width, channels]`). The forward
//! products and the convolutions run on the kernels of `conv`; the fully connected gradients go
//! through ndarray's `general_mat_mul` (matrixmultiply's AVX2/FMA kernels), split across threads
//! by output element (`parallel`). The accumulation order depends neither on the data nor on the
//! thread count, so results are bit-for-bit reproducible.

use ferrotrain_crds::{ModelKind, ModelSpec};
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::nn::batch_norm::{self, Reduce};
use crate::nn::conv::{self, ConvGeometry};
use crate::nn::kernels::gemm;
pub use crate::nn::loss::BatchStats;
pub(crate) use crate::nn::loss::logit_stats;
use crate::nn::loss::{Targets, loss_and_grad};
use crate::rng::{Rng, Stream};

/// One layer and where its parameters live in the flat vector.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Layer {
    Linear {
        inputs: usize,
        outputs: usize,
        weight: usize,
        bias: usize,
    },
    Relu,
    Dropout {
        p: f32,
    },
    /// Stride-1 square convolution over a channels-last `height × width × in_channels` input.
    Conv {
        height: usize,
        width: usize,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        pad: usize,
        weight: usize,
        bias: usize,
    },
    /// 2×2 max pooling with stride 2.
    MaxPool {
        height: usize,
        width: usize,
        channels: usize,
    },
    /// Batch normalisation of `channels` channels: a learned scale and shift, and running
    /// statistics kept after the trained parameters (they are not trained: see `trainable`).
    BatchNorm {
        channels: usize,
        scale: usize,
        shift: usize,
        mean: usize,
        var: usize,
    },
}

impl Layer {
    fn output_size(&self, input: usize) -> usize {
        match *self {
            Layer::Linear { outputs, .. } => outputs,
            Layer::Relu | Layer::Dropout { .. } | Layer::BatchNorm { .. } => input,
            Layer::Conv {
                height,
                width,
                out_channels,
                kernel,
                pad,
                ..
            } => (height + 2 * pad + 1 - kernel) * (width + 2 * pad + 1 - kernel) * out_channels,
            Layer::MaxPool {
                height,
                width,
                channels,
            } => (height / 2) * (width / 2) * channels,
        }
    }
}

/// Why a model cannot be built for a dataset.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// LeNet needs 28×28 single-channel inputs.
    #[error("lenet needs 28×28 single-channel images (784 features), the dataset has {0} features")]
    LenetInput(usize),
    /// Nothing to learn.
    #[error("the dataset has {0} classes; classification needs at least 2")]
    Classes(usize),
}

/// A network: its layers and parameter count. Parameters live outside, in a flat `Vec<f32>`.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub(crate) layers: Vec<Layer>,
    /// Length of the flat parameters: the trained ones, then batch normalisation's running
    /// statistics.
    pub num_params: usize,
    /// The trained parameters, `params[..trainable]`: what the optimiser steps. The values after
    /// them are running statistics, which a training step's "gradients" carry as the batch's own
    /// (see [`Network::update_running_statistics`]).
    pub trainable: usize,
    /// Features per input row.
    pub inputs: usize,
    /// Output classes.
    pub classes: usize,
}

/// Reusable buffers of one forward/backward pass, sized on first use.
#[derive(Default)]
pub struct Workspace {
    activations: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    argmax: Vec<Vec<u32>>,
    columns: Vec<Vec<f32>>,
    /// Weights rearranged for the forward products.
    transposed: Vec<[f32; conv::LANES]>,
    /// Per-group shares of a convolution's weight gradient.
    shares: Vec<f32>,
    grad_out: Vec<f32>,
    grad_in: Vec<f32>,
}

/// Lays out layers and their parameter offsets.
#[derive(Default)]
struct Builder {
    layers: Vec<Layer>,
    offset: usize,
}

impl Builder {
    fn linear(&mut self, inputs: usize, outputs: usize) {
        let weight = self.offset;
        self.layers.push(Layer::Linear {
            inputs,
            outputs,
            weight,
            bias: weight + inputs * outputs,
        });
        self.offset += inputs * outputs + outputs;
    }

    /// A 5×5 convolution over a `side × side × in_channels` input.
    fn conv(&mut self, side: usize, in_channels: usize, out_channels: usize, pad: usize) {
        let (kernel, weight) = (5, self.offset);
        let weights = out_channels * kernel * kernel * in_channels;
        self.layers.push(Layer::Conv {
            height: side,
            width: side,
            in_channels,
            out_channels,
            kernel,
            pad,
            weight,
            bias: weight + weights,
        });
        self.offset += weights + out_channels;
    }

    /// Batch normalisation of `channels` channels (its statistics are placed by `finish`).
    fn batch_norm(&mut self, channels: usize) {
        self.layers.push(Layer::BatchNorm {
            channels,
            scale: self.offset,
            shift: self.offset + channels,
            mean: 0,
            var: 0,
        });
        self.offset += 2 * channels;
    }

    /// Places the running statistics after the trained parameters: `(trainable, total)`.
    fn finish(&mut self) -> (usize, usize) {
        let trainable = self.offset;
        for layer in &mut self.layers {
            if let Layer::BatchNorm {
                channels,
                mean,
                var,
                ..
            } = layer
            {
                *mean = self.offset;
                *var = self.offset + *channels;
                self.offset += 2 * *channels;
            }
        }
        (trainable, self.offset)
    }
}

impl Network {
    /// Builds the network `spec` describes for `inputs` features and `classes` classes.
    pub fn new(spec: &ModelSpec, inputs: usize, classes: usize) -> Result<Self, ModelError> {
        if classes < 2 {
            return Err(ModelError::Classes(classes));
        }
        let dropout = spec.dropout_or_default() as f32;
        let normalised = spec.batch_norm_or_default();
        let mut b = Builder::default();
        match spec.kind {
            ModelKind::Logistic => b.linear(inputs, classes),
            ModelKind::Mlp => {
                let mut width = inputs;
                for hidden in spec.hidden_or_default() {
                    let hidden = usize::try_from(hidden).unwrap_or(1);
                    b.linear(width, hidden);
                    if normalised {
                        b.batch_norm(hidden);
                    }
                    b.layers.push(Layer::Relu);
                    if dropout > 0.0 {
                        b.layers.push(Layer::Dropout { p: dropout });
                    }
                    width = hidden;
                }
                b.linear(width, classes);
            }
            ModelKind::Lenet => {
                if inputs != 28 * 28 {
                    return Err(ModelError::LenetInput(inputs));
                }
                b.conv(28, 1, 6, 2);
                if normalised {
                    b.batch_norm(6);
                }
                b.layers.push(Layer::Relu);
                b.layers.push(Layer::MaxPool {
                    height: 28,
                    width: 28,
                    channels: 6,
                });
                b.conv(14, 6, 16, 0);
                if normalised {
                    b.batch_norm(16);
                }
                b.layers.push(Layer::Relu);
                b.layers.push(Layer::MaxPool {
                    height: 10,
                    width: 10,
                    channels: 16,
                });
                let mut width = 16 * 5 * 5;
                for hidden in [120, 84] {
                    if dropout > 0.0 {
                        b.layers.push(Layer::Dropout { p: dropout });
                    }
                    b.linear(width, hidden);
                    if normalised {
                        b.batch_norm(hidden);
                    }
                    b.layers.push(Layer::Relu);
                    width = hidden;
                }
                b.linear(width, classes);
            }
        }
        let (trainable, num_params) = b.finish();
        Ok(Self {
            layers: b.layers,
            num_params,
            trainable,
            inputs,
            classes,
        })
    }

    /// The layers in order, with their parameter offsets (other engines build the same network).
    #[cfg(feature = "burn")]
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Whether any layer is batch-normalised.
    pub fn has_batch_norm(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm { .. }))
    }

    /// Moves the running statistics in `params` towards the batch statistics a training step
    /// wrote after the gradients in `grads` (averaged over the gang by the all-reduce).
    pub fn update_running_statistics(&self, params: &mut [f32], grads: &[f32]) {
        let statistics = self.trainable..self.num_params;
        batch_norm::update_running(&mut params[statistics.clone()], &grads[statistics]);
    }

    /// Initial parameters: uniform in ±1/√fan_in for weights and biases, as PyTorch does; batch
    /// normalisation starts as the identity (scale 1, shift 0, running mean 0 and variance 1).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0; self.num_params];
        let mut rng = Rng::derive(seed, Stream::Init, &[]);
        for layer in &self.layers {
            let (start, end, fan_in) = match *layer {
                Layer::BatchNorm {
                    channels,
                    scale,
                    var,
                    ..
                } => {
                    params[scale..scale + channels].fill(1.0);
                    params[var..var + channels].fill(1.0);
                    continue;
                }
                Layer::Linear {
                    inputs,
                    outputs,
                    weight,
                    ..
                } => (weight, weight + inputs * outputs + outputs, inputs),
                Layer::Conv {
                    in_channels,
                    out_channels,
                    kernel,
                    weight,
                    ..
                } => {
                    let fan_in = in_channels * kernel * kernel;
                    (
                        weight,
                        weight + out_channels * fan_in + out_channels,
                        fan_in,
                    )
                }
                _ => continue,
            };
            let bound = 1.0 / (fan_in as f32).sqrt();
            for p in &mut params[start..end] {
                *p = (rng.next_f32() * 2.0 - 1.0) * bound;
            }
        }
        params
    }

    /// Forward and backward over one batch: writes the loss gradient into `grads` (overwriting it)
    /// and returns the batch's loss statistics. `dropout_rng` draws the dropout masks.
    pub fn train_step(
        &self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        labels: &[u8],
        dropout_rng: &mut Rng,
        ws: &mut Workspace,
    ) -> BatchStats {
        let targets = Targets::Labels(labels);
        self.train_step_towards(params, grads, inputs, targets, dropout_rng, ws)
    }

    /// [`Network::train_step`] towards `targets` (labels, or a teacher's logits too).
    pub fn train_step_towards(
        &self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout_rng: &mut Rng,
        ws: &mut Workspace,
    ) -> BatchStats {
        self.train_step_reduced(params, grads, inputs, targets, dropout_rng, ws, &mut |_| {})
    }

    /// [`Network::train_step_towards`] with batch normalisation's sums passed through `reduce`:
    /// an all-reduce over the gang normalises with the whole gang's batch. After the gradients,
    /// `grads` holds the batch statistics for the running ones (`params[trainable..]`).
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_reduced(
        &self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout_rng: &mut Rng,
        ws: &mut Workspace,
        reduce: Reduce<'_>,
    ) -> BatchStats {
        let batch = targets.labels().len();
        self.forward(params, inputs, batch, Some((dropout_rng, &mut *reduce)), ws);
        let logits = ws.activations.last().map(Vec::as_slice).unwrap_or_default();
        let stats = loss_and_grad(logits, self.classes, targets, &mut ws.grad_out);
        self.backward(params, grads, batch, ws, reduce);
        stats
    }

    /// The logits of a batch (`batch × classes`, row-major), without dropout.
    pub fn logits<'w>(
        &self,
        params: &[f32],
        inputs: &[f32],
        batch: usize,
        ws: &'w mut Workspace,
    ) -> &'w [f32] {
        self.forward(params, inputs, batch, None, ws);
        ws.activations.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// Loss and accuracy of a batch without dropout or gradients.
    pub fn evaluate(
        &self,
        params: &[f32],
        inputs: &[f32],
        labels: &[u8],
        ws: &mut Workspace,
    ) -> BatchStats {
        self.forward(params, inputs, labels.len(), None, ws);
        let logits = ws.activations.last().map(Vec::as_slice).unwrap_or_default();
        logit_stats(logits, self.classes, labels)
    }

    /// With `training` (the dropout draws and batch normalisation's reduction), a training
    /// pass; without, evaluation.
    fn forward(
        &self,
        params: &[f32],
        inputs: &[f32],
        batch: usize,
        mut training: Option<(&mut Rng, Reduce<'_>)>,
        ws: &mut Workspace,
    ) {
        let n = self.layers.len();
        ws.activations.resize_with(n + 1, Vec::new);
        ws.masks.resize_with(n, Vec::new);
        ws.argmax.resize_with(n, Vec::new);
        ws.columns.resize_with(n, Vec::new);
        ws.activations[0].clear();
        ws.activations[0].extend_from_slice(&inputs[..batch * self.inputs]);
        let mut size = self.inputs;
        for (i, layer) in self.layers.iter().enumerate() {
            let out_size = layer.output_size(size);
            let (before, after) = ws.activations.split_at_mut(i + 1);
            let x = &before[i];
            let y = &mut after[0];
            y.resize(batch * out_size, 0.0);
            match *layer {
                Layer::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => {
                    conv::linear_forward(
                        &x[..batch * inputs],
                        &params[weight..bias],
                        &params[bias..bias + outputs],
                        &mut ws.transposed,
                        y,
                    );
                }
                Layer::Relu => {
                    for (o, &v) in y.iter_mut().zip(x.iter()) {
                        *o = v.max(0.0);
                    }
                }
                Layer::Dropout { p } => match training.as_mut() {
                    Some((rng, _)) => {
                        let mask = &mut ws.masks[i];
                        mask.resize(x.len(), 0.0);
                        let scale = 1.0 / (1.0 - p);
                        for ((o, m), &v) in y.iter_mut().zip(mask.iter_mut()).zip(x.iter()) {
                            *m = if rng.next_f32() >= p { scale } else { 0.0 };
                            *o = v * *m;
                        }
                    }
                    None => y.copy_from_slice(x),
                },
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
                    let geometry = ConvGeometry {
                        batch,
                        height,
                        width,
                        in_channels,
                        out_channels,
                        kernel,
                        pad,
                    };
                    conv::forward(
                        &geometry,
                        x,
                        &params[weight..bias],
                        &params[bias..bias + out_channels],
                        &mut ws.transposed,
                        &mut ws.columns[i],
                        y,
                    );
                }
                Layer::MaxPool {
                    height,
                    width,
                    channels,
                } => {
                    conv::max_pool(x, batch, height, width, channels, y, &mut ws.argmax[i]);
                }
                Layer::BatchNorm {
                    channels,
                    scale,
                    shift,
                    mean,
                    var,
                } => {
                    let (scale, shift) = (
                        &params[scale..scale + channels],
                        &params[shift..shift + channels],
                    );
                    match training.as_mut() {
                        Some((_, reduce)) => batch_norm::forward_train(
                            x,
                            scale,
                            shift,
                            y,
                            &mut ws.columns[i],
                            &mut ws.masks[i],
                            &mut **reduce,
                        ),
                        None => batch_norm::forward_eval(
                            x,
                            scale,
                            shift,
                            &params[mean..mean + channels],
                            &params[var..var + channels],
                            y,
                        ),
                    }
                }
            }
            size = out_size;
        }
    }

    fn backward(
        &self,
        params: &[f32],
        grads: &mut [f32],
        batch: usize,
        ws: &mut Workspace,
        reduce: Reduce<'_>,
    ) {
        let mut size_in: Vec<usize> = Vec::with_capacity(self.layers.len());
        let mut size = self.inputs;
        for layer in &self.layers {
            size_in.push(size);
            size = layer.output_size(size);
        }
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let need_input_grad = i > 0;
            let x = &ws.activations[i];
            let dy = &ws.grad_out;
            let dx = &mut ws.grad_in;
            dx.resize(batch * size_in[i], 0.0);
            match *layer {
                Layer::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => {
                    let dy_view = view(dy, batch, outputs);
                    let (gw, gb) = grads[weight..bias + outputs].split_at_mut(inputs * outputs);
                    gemm(
                        dy_view.t(),
                        view(x, batch, inputs),
                        view_mut(gw, outputs, inputs),
                    );
                    conv::column_sums(dy, outputs, gb);
                    if need_input_grad {
                        let w = view(&params[weight..weight + inputs * outputs], outputs, inputs);
                        gemm(dy_view, w, view_mut(dx, batch, inputs));
                    }
                }
                Layer::Relu => {
                    let y = &ws.activations[i + 1];
                    for ((d, &g), &out) in dx.iter_mut().zip(dy.iter()).zip(y.iter()) {
                        *d = if out > 0.0 { g } else { 0.0 };
                    }
                }
                Layer::Dropout { .. } => {
                    for ((d, &g), &m) in dx.iter_mut().zip(dy.iter()).zip(ws.masks[i].iter()) {
                        *d = g * m;
                    }
                }
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
                    let geometry = ConvGeometry {
                        batch,
                        height,
                        width,
                        in_channels,
                        out_channels,
                        kernel,
                        pad,
                    };
                    let (gw, gb) = grads[weight..bias + out_channels].split_at_mut(bias - weight);
                    conv::backward(
                        &geometry,
                        dy,
                        &params[weight..bias],
                        &mut ws.columns[i],
                        gw,
                        gb,
                        need_input_grad.then_some(&mut dx[..]),
                        &mut ws.shares,
                    );
                }
                Layer::MaxPool { .. } => {
                    dx.fill(0.0);
                    for (&g, &src) in dy.iter().zip(ws.argmax[i].iter()) {
                        dx[src as usize] += g;
                    }
                }
                Layer::BatchNorm {
                    channels,
                    scale,
                    shift,
                    mean,
                    var,
                } => {
                    let saved = &ws.masks[i];
                    let (grad_scale, grad_shift) =
                        grads[scale..shift + channels].split_at_mut(channels);
                    batch_norm::backward(
                        dy,
                        &ws.columns[i],
                        &saved[..channels],
                        &params[scale..scale + channels],
                        grad_scale,
                        grad_shift,
                        dx,
                        &mut *reduce,
                    );
                    // The batch's statistics ride after the gradients to the running ones.
                    grads[mean..mean + channels].copy_from_slice(&saved[channels..2 * channels]);
                    grads[var..var + channels].copy_from_slice(&saved[2 * channels..]);
                }
            }
            if need_input_grad {
                std::mem::swap(&mut ws.grad_out, &mut ws.grad_in);
            }
        }
    }
}

fn view(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &data[..rows * cols])
        .expect("slice holds rows × cols values")
}

fn view_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut data[..rows * cols])
        .expect("slice holds rows × cols values")
}

#[cfg(test)]
mod tests;
