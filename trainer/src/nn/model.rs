//! The models (softmax regression, MLP, LeNet-5) with hand-written forward and backward passes over
//! one flat parameter vector. Flat parameters and gradients are what the ring all-reduce, the
//! fused optimiser and the checkpoint writer work on, with no copies in between.
//!
//! Activations are batch-major and channels-last (`[batch, height, width, channels]`). The forward
//! products and the convolutions run on the kernels of `conv`; the fully connected gradients go
//! through ndarray's `general_mat_mul` (matrixmultiply's AVX2/FMA kernels), split across threads
//! by output element (`parallel`). The accumulation order depends neither on the data nor on the
//! thread count, so results are bit-for-bit reproducible.

use ferrotrain_crds::{ModelKind, ModelSpec};
use ndarray::{ArrayView2, ArrayViewMut2};

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
}

impl Layer {
    fn output_size(&self, input: usize) -> usize {
        match *self {
            Layer::Linear { outputs, .. } => outputs,
            Layer::Relu | Layer::Dropout { .. } => input,
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
    /// Total number of parameters.
    pub num_params: usize,
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
}

impl Network {
    /// Builds the network `spec` describes for `inputs` features and `classes` classes.
    pub fn new(spec: &ModelSpec, inputs: usize, classes: usize) -> Result<Self, ModelError> {
        if classes < 2 {
            return Err(ModelError::Classes(classes));
        }
        let dropout = spec.dropout_or_default() as f32;
        let mut b = Builder::default();
        match spec.kind {
            ModelKind::Logistic => b.linear(inputs, classes),
            ModelKind::Mlp => {
                let mut width = inputs;
                for hidden in spec.hidden_or_default() {
                    let hidden = usize::try_from(hidden).unwrap_or(1);
                    b.linear(width, hidden);
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
                b.layers.push(Layer::Relu);
                b.layers.push(Layer::MaxPool {
                    height: 28,
                    width: 28,
                    channels: 6,
                });
                b.conv(14, 6, 16, 0);
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
                    b.layers.push(Layer::Relu);
                    width = hidden;
                }
                b.linear(width, classes);
            }
        }
        let Builder { layers, offset } = b;
        Ok(Self {
            layers,
            num_params: offset,
            inputs,
            classes,
        })
    }

    /// The layers in order, with their parameter offsets (other engines build the same network).
    #[cfg(feature = "burn")]
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Initial parameters: uniform in ±1/√fan_in for weights and biases, as PyTorch does.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0; self.num_params];
        let mut rng = Rng::derive(seed, Stream::Init, &[]);
        for layer in &self.layers {
            let (start, end, fan_in) = match *layer {
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
        let batch = targets.labels().len();
        self.forward(params, inputs, batch, Some(dropout_rng), ws);
        let logits = ws.activations.last().map(Vec::as_slice).unwrap_or_default();
        let stats = loss_and_grad(logits, self.classes, targets, &mut ws.grad_out);
        self.backward(params, grads, batch, ws);
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

    fn forward(
        &self,
        params: &[f32],
        inputs: &[f32],
        batch: usize,
        mut dropout_rng: Option<&mut Rng>,
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
                Layer::Dropout { p } => match dropout_rng.as_deref_mut() {
                    Some(rng) => {
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
            }
            size = out_size;
        }
    }

    fn backward(&self, params: &[f32], grads: &mut [f32], batch: usize, ws: &mut Workspace) {
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
mod tests {
    use super::*;

    fn spec(kind: ModelKind, hidden: Option<Vec<i32>>, dropout: Option<f64>) -> ModelSpec {
        ModelSpec {
            kind,
            hidden,
            dropout,
        }
    }

    /// Central differences against the analytic gradient on a few coordinates of every layer.
    fn check_gradients(net: &Network, inputs: usize, batch: usize) {
        let params = net.init_params(3);
        let mut rng = Rng::new(9);
        let x: Vec<f32> = (0..batch * inputs).map(|_| rng.next_f32()).collect();
        let labels: Vec<u8> = (0..batch).map(|i| (i % net.classes) as u8).collect();
        let mut grads = vec![0.0; net.num_params];
        let mut ws = Workspace::default();
        net.train_step(&params, &mut grads, &x, &labels, &mut Rng::new(1), &mut ws);
        let loss_at = |p: &[f32], ws: &mut Workspace| {
            let mut g = vec![0.0; net.num_params];
            let s = net.train_step(p, &mut g, &x, &labels, &mut Rng::new(1), ws);
            s.loss_sum / batch as f64
        };
        let stride = (net.num_params / 60).max(1);
        for i in (0..net.num_params).step_by(stride) {
            let eps = 1e-3_f32;
            let mut plus = params.clone();
            plus[i] += eps;
            let mut minus = params.clone();
            minus[i] -= eps;
            let numeric =
                (loss_at(&plus, &mut ws) - loss_at(&minus, &mut ws)) / (2.0 * f64::from(eps));
            let analytic = f64::from(grads[i]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                "param {i}: numeric {numeric} analytic {analytic}"
            );
        }
    }

    #[test]
    fn logistic_gradients_match_finite_differences() {
        let net = Network::new(&spec(ModelKind::Logistic, None, None), 12, 3).expect("builds");
        assert_eq!(net.num_params, 12 * 3 + 3);
        check_gradients(&net, 12, 5);
    }

    #[test]
    fn mlp_gradients_match_finite_differences() {
        let net =
            Network::new(&spec(ModelKind::Mlp, Some(vec![16, 8]), None), 10, 4).expect("builds");
        check_gradients(&net, 10, 6);
    }

    #[test]
    fn lenet_gradients_match_finite_differences() {
        let net = Network::new(&spec(ModelKind::Lenet, None, None), 784, 10).expect("builds");
        assert_eq!(net.num_params, 156 + 2416 + 48120 + 10164 + 850);
        check_gradients(&net, 784, 2);
    }

    /// Gradients and a few optimiser steps on pools of 1, 2 and 3 threads are bit-for-bit equal.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let models = [
            (spec(ModelKind::Mlp, Some(vec![256, 128]), Some(0.1)), 784),
            (spec(ModelKind::Lenet, None, None), 784),
        ];
        for (model, inputs) in models {
            let net = Network::new(&model, inputs, 10).expect("builds");
            let mut rng = Rng::new(5);
            let batch = 64;
            let x: Vec<f32> = (0..batch * inputs).map(|_| rng.next_f32()).collect();
            let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool");
                pool.install(|| {
                    let optimizer_spec: ferrotrain_crds::OptimizerSpec =
                        serde_yaml::from_str("type: adam").expect("spec");
                    let mut optimizer =
                        crate::optim::Optimizer::new(&optimizer_spec, net.num_params);
                    let mut params = net.init_params(7);
                    let mut grads = vec![0.0; net.num_params];
                    let mut ws = Workspace::default();
                    for step in 0..3 {
                        let mut dropout = Rng::new(step);
                        net.train_step(&params, &mut grads, &x, &labels, &mut dropout, &mut ws);
                        optimizer.step(&mut params, &grads, 1e-3);
                    }
                    (params, grads)
                })
            };
            let one = run(1);
            assert_eq!(run(2), one, "{:?} on 2 threads", model.kind);
            assert_eq!(run(3), one, "{:?} on 3 threads", model.kind);
        }
    }

    #[test]
    fn dropout_masks_follow_the_rng_and_vanish_in_evaluation() {
        let net =
            Network::new(&spec(ModelKind::Mlp, Some(vec![32]), Some(0.5)), 8, 2).expect("builds");
        let params = net.init_params(1);
        let x = vec![0.5; 4 * 8];
        let labels = [0, 1, 0, 1];
        let mut ws = Workspace::default();
        let mut g1 = vec![0.0; net.num_params];
        let mut g2 = vec![0.0; net.num_params];
        let a = net.train_step(&params, &mut g1, &x, &labels, &mut Rng::new(5), &mut ws);
        let b = net.train_step(&params, &mut g2, &x, &labels, &mut Rng::new(5), &mut ws);
        assert_eq!(a, b);
        assert_eq!(g1, g2);
        let c = net.train_step(&params, &mut g2, &x, &labels, &mut Rng::new(6), &mut ws);
        assert_ne!(a.loss_sum, c.loss_sum);
        let e1 = net.evaluate(&params, &x, &labels, &mut ws);
        let e2 = net.evaluate(&params, &x, &labels, &mut ws);
        assert_eq!(e1, e2);
    }

    #[test]
    fn lenet_refuses_other_input_sizes() {
        assert_eq!(
            Network::new(&spec(ModelKind::Lenet, None, None), 54, 7),
            Err(ModelError::LenetInput(54))
        );
        assert_eq!(
            Network::new(&spec(ModelKind::Mlp, None, None), 4, 1),
            Err(ModelError::Classes(1))
        );
    }
}
