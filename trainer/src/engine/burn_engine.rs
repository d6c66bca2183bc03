//! The burn engine: the networks of `model`, written as burn tensor operations over one leaf
//! tensor that holds the flat parameter vector, so the gradient burn returns for that leaf is the
//! flat gradient the all-reduce and the optimiser expect. Parameters are uploaded from the fp32
//! master copy every step and converted to the backend's element type (bf16/f16 on GPU); the
//! gradient comes back as fp32. Dropout masks come from the same random stream as the native
//! engine, so both engines compute the same function.
//!
//! Runs on burn's CUDA backend (feature `cuda`) and on its CPU backend Flex (feature `burn`), on
//! which the tests compare it with the native kernels.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, FloatDType, Int, Tensor, TensorData, activation, module};

use crate::engine::{Engine, EngineError, LossScaler};
use crate::nn::model::{BatchStats, Layer, Network, logit_stats};
use crate::rng::Rng;

/// An activation: rows of features, or images in burn's NCHW layout.
enum Activation<B: AutodiffBackend> {
    Rows(Tensor<B, 2>),
    Images(Tensor<B, 4>),
}

impl<B: AutodiffBackend> Activation<B> {
    /// Rows in the native engine's feature order (channels-last for images).
    fn rows(self, batch: usize) -> Tensor<B, 2> {
        match self {
            Activation::Rows(x) => x,
            Activation::Images(x) => {
                let [_, c, h, w] = x.dims();
                x.permute([0, 2, 3, 1]).reshape([batch, h * w * c])
            }
        }
    }

    /// NCHW images from channels-last rows.
    fn images(self, batch: usize, height: usize, width: usize, channels: usize) -> Tensor<B, 4> {
        match self {
            Activation::Images(x) => x,
            Activation::Rows(x) => x
                .reshape([batch, height, width, channels])
                .permute([0, 3, 1, 2]),
        }
    }
}

/// The burn engine on backend `B`, computing in `dtype`.
pub struct BurnEngine<B: AutodiffBackend> {
    net: Network,
    device: B::Device,
    dtype: FloatDType,
    scaler: Option<LossScaler>,
}

impl<B: AutodiffBackend> BurnEngine<B> {
    /// An engine for `net` on `device` computing in `dtype`; `loss_scaling` for fp16.
    pub fn new(net: &Network, device: B::Device, dtype: FloatDType, loss_scaling: bool) -> Self {
        Self {
            net: net.clone(),
            device,
            dtype,
            scaler: loss_scaling.then(LossScaler::default),
        }
    }

    /// Every float tensor is created with the engine's type explicitly: burn's default float
    /// type of a device is whatever the first tensor on it had.
    fn upload(&self, values: &[f32], shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), shape),
            (&self.device, DType::from(self.dtype)),
        )
    }

    /// The type the network's activations are computed in (before the fp32 loss).
    pub fn computed_dtype(&self, params: &[f32], inputs: &[f32], batch: usize) -> DType {
        let leaf = self.params_leaf(params);
        self.activations(&leaf, inputs, batch, None).dtype()
    }

    /// Logits in fp32, from activations computed in the engine's type; an error if burn computed
    /// in another type.
    fn forward(
        &self,
        params: &Tensor<B, 1>,
        inputs: &[f32],
        batch: usize,
        dropout: Option<&mut Rng>,
    ) -> Result<Tensor<B, 2>, EngineError> {
        let logits = self.activations(params, inputs, batch, dropout);
        if logits.dtype() != DType::from(self.dtype) {
            return Err(EngineError(format!(
                "computed in {:?} instead of {:?}",
                logits.dtype(),
                self.dtype
            )));
        }
        // The loss is computed in fp32 whatever the compute type, as mixed-precision training does.
        Ok(logits.cast(FloatDType::F32))
    }

    fn activations(
        &self,
        params: &Tensor<B, 1>,
        inputs: &[f32],
        batch: usize,
        mut dropout: Option<&mut Rng>,
    ) -> Tensor<B, 2> {
        let slice = |start: usize, len: usize| params.clone().narrow(0, start, len);
        let features = self.net.inputs;
        let mut x = Activation::Rows(self.upload(&inputs[..batch * features], [batch, features]));
        for layer in self.net.layers() {
            x = match *layer {
                Layer::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                } => {
                    let w = slice(weight, inputs * outputs).reshape([outputs, inputs]);
                    let b = slice(bias, outputs).reshape([1, outputs]);
                    Activation::Rows(x.rows(batch).matmul(w.transpose()) + b)
                }
                Layer::Relu => match x {
                    Activation::Rows(x) => Activation::Rows(activation::relu(x)),
                    Activation::Images(x) => Activation::Images(activation::relu(x)),
                },
                Layer::Dropout { p } => match dropout.as_deref_mut() {
                    Some(rng) => {
                        let x = x.rows(batch);
                        let [rows, cols] = x.dims();
                        let scale = 1.0 / (1.0 - p);
                        let mask: Vec<f32> = (0..rows * cols)
                            .map(|_| if rng.next_f32() >= p { scale } else { 0.0 })
                            .collect();
                        Activation::Rows(x * self.upload(&mask, [rows, cols]))
                    }
                    None => x,
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
                    // Native weights are [out, kh, kw, in]; burn's are [out, in, kh, kw].
                    let w = slice(weight, out_channels * kernel * kernel * in_channels)
                        .reshape([out_channels, kernel, kernel, in_channels])
                        .permute([0, 3, 1, 2]);
                    let b = slice(bias, out_channels);
                    let images = x.images(batch, height, width, in_channels);
                    let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
                    Activation::Images(module::conv2d(images, w, Some(b), options))
                }
                // `cuda` refuses batch-normalised networks.
                Layer::BatchNorm { .. } => x,
                Layer::MaxPool {
                    height,
                    width,
                    channels,
                } => {
                    let images = x.images(batch, height, width, channels);
                    Activation::Images(module::max_pool2d(
                        images,
                        [2, 2],
                        [2, 2],
                        [0, 0],
                        [1, 1],
                        false,
                    ))
                }
            };
        }
        x.rows(batch)
    }

    fn params_leaf(&self, params: &[f32]) -> Tensor<B, 1> {
        Tensor::from_data(
            TensorData::new(params.to_vec(), [params.len()]),
            (&self.device, DType::from(self.dtype)),
        )
    }

    fn stats(&self, logits: Tensor<B, 2>, labels: &[u8]) -> Result<BatchStats, EngineError> {
        let logits = download(logits.inner().try_into_data())?;
        Ok(logit_stats(&logits, self.net.classes, labels))
    }
}

/// A tensor's values as f32; a device error is an error, not a panic.
fn download(
    data: Result<TensorData, burn::tensor::backend::ExecutionError>,
) -> Result<Vec<f32>, EngineError> {
    data.map_err(|e| EngineError(format!("reading a tensor back from the device: {e:?}")))?
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| EngineError(format!("reading a tensor back: {e:?}")))
}

impl<B: AutodiffBackend> Engine for BurnEngine<B> {
    fn train_step(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        labels: &[u8],
        dropout: &mut Rng,
    ) -> Result<BatchStats, EngineError> {
        let batch = labels.len();
        let leaf = self.params_leaf(params).require_grad();
        let logits = self.forward(&leaf, inputs, batch, Some(dropout))?;
        let logit_values = logits.clone().inner().reshape([batch * self.net.classes]);
        let targets: Vec<i32> = labels.iter().map(|&l| i32::from(l)).collect();
        let targets =
            Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [batch, 1]), &self.device);
        let picked = activation::log_softmax(logits, 1).gather(1, targets);
        let scale = self.scaler.as_ref().map_or(1.0, |s| s.scale);
        let loss = picked.sum().mul_scalar(-scale / batch as f32);
        let gradients = loss.backward();
        let gradient = leaf
            .grad(&gradients)
            .ok_or_else(|| EngineError("the parameters received no gradient".into()))?;
        // One read-back per step: the logits (for the batch statistics) and the gradient
        // travel together, in fp32.
        let both = Tensor::cat(vec![logit_values, gradient.cast(FloatDType::F32)], 0);
        let mut values = download(both.try_into_data())?;
        let gradient_values = values.split_off(batch * self.net.classes);
        let stats = logit_stats(&values, self.net.classes, labels);
        let values = gradient_values;
        if values.len() != grads.len() {
            return Err(EngineError(format!(
                "gradient has {} values, the model {}",
                values.len(),
                grads.len()
            )));
        }
        let unscale = 1.0 / scale;
        for (g, v) in grads.iter_mut().zip(values) {
            *g = v * unscale;
        }
        Ok(stats)
    }

    fn evaluate(
        &mut self,
        params: &[f32],
        inputs: &[f32],
        labels: &[u8],
    ) -> Result<BatchStats, EngineError> {
        let leaf = self.params_leaf(params);
        let logits = self.forward(&leaf, inputs, labels.len(), None)?;
        self.stats(logits, labels)
    }

    fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }
}

/// The burn engine on burn's CPU backend.
pub fn flex(net: &Network) -> BurnEngine<Autodiff<burn::backend::Flex>> {
    BurnEngine::new(net, Default::default(), FloatDType::F32, false)
}

/// The burn engine on CUDA GPU `index`, computing in `precision`.
#[cfg(feature = "cuda")]
pub fn cuda(
    net: &Network,
    index: usize,
    precision: ferrotrain_crds::Precision,
) -> Result<Box<dyn Engine>, EngineError> {
    use burn::backend::cuda::{Cuda, CudaDevice};
    use burn::tensor::{bf16, f16};
    use ferrotrain_crds::Precision;

    if net.has_batch_norm() {
        return Err(EngineError(
            "batch normalisation runs on the CPU engine".into(),
        ));
    }
    let device = CudaDevice::new(index);
    let mut engine: Box<dyn Engine> = match precision {
        Precision::Fp32 => Box::new(BurnEngine::<Autodiff<Cuda<f32>>>::new(
            net,
            device,
            FloatDType::F32,
            false,
        )),
        Precision::Bf16 => Box::new(BurnEngine::<Autodiff<Cuda<bf16>>>::new(
            net,
            device,
            FloatDType::BF16,
            false,
        )),
        Precision::Fp16 => Box::new(BurnEngine::<Autodiff<Cuda<f16>>>::new(
            net,
            device,
            FloatDType::F16,
            true,
        )),
    };
    // The CUDA runtime and NVRTC load on first use and panic when they cannot. One real training
    // step in the requested type, under a panic guard, turns a broken driver, a missing NVRTC or
    // missing CUDA headers into a clean error before training starts.
    startup_step(engine.as_mut(), net)
        .map_err(|e| EngineError(format!("CUDA device {index} failed its start-up step: {e}")))?;
    Ok(engine)
}

/// One training step on a two-sample batch of zeros, with panics turned into errors.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn startup_step(engine: &mut dyn Engine, net: &Network) -> Result<(), EngineError> {
    let params = net.init_params(0);
    let mut grads = vec![0.0; net.num_params];
    let inputs = vec![0.0; 2 * net.inputs];
    let labels = [0u8, 1];
    crate::engine::guarded(|| {
        engine.train_step(&params, &mut grads, &inputs, &labels, &mut Rng::new(0))
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::native::Native;
    use ferrotrain_crds::{ModelKind, ModelSpec};

    fn network(kind: ModelKind, hidden: Option<Vec<i32>>, dropout: Option<f64>) -> Network {
        let spec = ModelSpec {
            kind,
            hidden,
            dropout,
            batch_norm: None,
            sync_batch_norm: None,
        };
        let inputs = if kind == ModelKind::Lenet { 784 } else { 20 };
        Network::new(&spec, inputs, 10).expect("builds")
    }

    fn batch(net: &Network, rows: usize) -> (Vec<f32>, Vec<u8>) {
        let mut rng = Rng::new(11);
        let x = (0..rows * net.inputs).map(|_| rng.next_f32()).collect();
        let y = (0..rows).map(|i| (i * 7 % 10) as u8).collect();
        (x, y)
    }

    /// burn on the CPU and the native kernels compute the same loss, accuracy and gradient.
    #[test]
    fn burn_and_native_engines_agree() {
        for net in [
            network(ModelKind::Logistic, None, None),
            network(ModelKind::Mlp, Some(vec![32, 16]), Some(0.2)),
            network(ModelKind::Lenet, None, Some(0.1)),
        ] {
            let params = net.init_params(4);
            let (x, y) = batch(&net, 8);
            let mut native_grads = vec![0.0; net.num_params];
            let mut burn_grads = vec![1.0; net.num_params];
            let native = Native::new(net.clone()).train_step(
                &params,
                &mut native_grads,
                &x,
                &y,
                &mut Rng::new(3),
            );
            let burned = flex(&net).train_step(&params, &mut burn_grads, &x, &y, &mut Rng::new(3));
            let (native, burned) = (native.expect("native"), burned.expect("burn"));
            assert_eq!(
                (native.correct, native.count),
                (burned.correct, burned.count)
            );
            assert!((native.loss_sum - burned.loss_sum).abs() < 1e-4 * native.loss_sum.abs());
            let scale = native_grads.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            for (i, (a, b)) in native_grads.iter().zip(&burn_grads).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * scale,
                    "{:?} param {i}: native {a} burn {b}",
                    net.layers().len()
                );
            }
            let eval_native = Native::new(net.clone())
                .evaluate(&params, &x, &y)
                .expect("native");
            let eval_burn = flex(&net).evaluate(&params, &x, &y).expect("burn");
            assert_eq!(eval_native.correct, eval_burn.correct);
        }
    }

    /// burn fixes a device's default float type at the first tensor created on it, so a tensor
    /// made without an explicit type can silently compute in fp32. A bf16 engine must compute in
    /// bf16: its loss differs from the fp32 engine's (and stays close to it).
    #[test]
    fn a_bf16_engine_computes_in_bf16() {
        let net = network(ModelKind::Mlp, Some(vec![32, 16]), None);
        let params = net.init_params(5);
        let (x, y) = batch(&net, 16);
        let mut losses = Vec::new();
        // fp32 first: it claims the device's default type, as the start-up check did on CUDA.
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            let mut engine: BurnEngine<Autodiff<burn::backend::Flex>> =
                BurnEngine::new(&net, Default::default(), dtype, false);
            let mut grads = vec![0.0; net.num_params];
            let stats = engine
                .train_step(&params, &mut grads, &x, &y, &mut Rng::new(1))
                .expect("step");
            assert_eq!(engine.computed_dtype(&params, &x, 16), DType::from(dtype));
            losses.push(stats.loss_sum);
        }
        assert_ne!(losses[0], losses[1], "bf16 computed the fp32 result");
        assert!(
            (losses[0] - losses[1]).abs() < 0.02 * losses[0].abs(),
            "{losses:?}"
        );
    }

    #[test]
    fn a_working_engine_passes_its_start_up_step() {
        let net = network(ModelKind::Lenet, None, None);
        startup_step(&mut flex(&net), &net).expect("a working engine passes its start-up step");
    }

    /// A scaled loss gives the same (unscaled) gradient.
    #[test]
    fn loss_scaling_returns_unscaled_gradients() {
        let net = network(ModelKind::Mlp, Some(vec![16]), None);
        let params = net.init_params(2);
        let (x, y) = batch(&net, 4);
        let mut plain = vec![0.0; net.num_params];
        let mut scaled = vec![0.0; net.num_params];
        flex(&net)
            .train_step(&params, &mut plain, &x, &y, &mut Rng::new(1))
            .expect("plain");
        let mut engine: BurnEngine<Autodiff<burn::backend::Flex>> =
            BurnEngine::new(&net, Default::default(), FloatDType::F32, true);
        assert_eq!(engine.loss_scaler().map(|s| s.scale), Some(65_536.0));
        engine
            .train_step(&params, &mut scaled, &x, &y, &mut Rng::new(1))
            .expect("scaled");
        for (a, b) in plain.iter().zip(&scaled) {
            assert!((a - b).abs() <= 1e-6 + 1e-4 * a.abs(), "{a} vs {b}");
        }
    }
}
