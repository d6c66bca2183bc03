//! The engine computes forward and backward passes over the flat parameter vector. Everything
//! around it (all-reduce, optimiser, checkpoints) works on host `f32` buffers, so the engines are
//! interchangeable: Ferrotrain's CPU kernels, or burn on a GPU (feature `cuda`; feature `burn`
//! runs the same engine on burn's CPU backend, which is how it is tested without a GPU).

#[cfg(feature = "burn")]
pub mod burn_engine;
pub mod device;

use crate::engine::device::Compute;
use crate::nn::model::{BatchStats, Network, Workspace};
use crate::rng::Rng;

/// One forward/backward implementation.
pub trait Engine: Send {
    /// Forward and backward over one batch: writes the mean loss gradient into `grads`
    /// (overwriting it, unscaled, in fp32) and returns the batch's loss statistics.
    fn train_step(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        labels: &[u8],
        dropout: &mut Rng,
    ) -> Result<BatchStats, EngineError>;

    /// Loss and accuracy of a batch without dropout or gradients.
    fn evaluate(
        &mut self,
        params: &[f32],
        inputs: &[f32],
        labels: &[u8],
    ) -> Result<BatchStats, EngineError>;

    /// The loss scaler, when this engine computes in fp16.
    fn loss_scaler(&mut self) -> Option<&mut LossScaler> {
        None
    }
}

/// An engine failure (device errors; the native engine has none).
#[derive(Debug, thiserror::Error)]
#[error("compute device: {0}")]
pub struct EngineError(pub String);

/// Ferrotrain's own CPU kernels.
pub struct Native {
    net: Network,
    ws: Workspace,
}

impl Native {
    /// An engine for `net`.
    pub fn new(net: Network) -> Self {
        Self {
            net,
            ws: Workspace::default(),
        }
    }
}

impl Engine for Native {
    fn train_step(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        labels: &[u8],
        dropout: &mut Rng,
    ) -> Result<BatchStats, EngineError> {
        Ok(self
            .net
            .train_step(params, grads, inputs, labels, dropout, &mut self.ws))
    }

    fn evaluate(
        &mut self,
        params: &[f32],
        inputs: &[f32],
        labels: &[u8],
    ) -> Result<BatchStats, EngineError> {
        Ok(self.net.evaluate(params, inputs, labels, &mut self.ws))
    }
}

/// The engine for `compute`. With `device: auto`, a GPU engine that fails to start (its start-up
/// step panicked or failed) gives way to the CPU with a warning instead of ending the run.
pub fn build(net: &Network, compute: Compute) -> Result<Box<dyn Engine>, EngineError> {
    let started = match compute {
        Compute::Cpu => return Ok(Box::new(Native::new(net.clone()))),
        #[cfg(feature = "cuda")]
        Compute::Cuda {
            index, precision, ..
        } => crate::engine::burn_engine::cuda(net, index, precision),
        #[cfg(not(feature = "cuda"))]
        Compute::Cuda { .. } => Err(EngineError(
            "this trainer was built without the cuda feature".into(),
        )),
    };
    match (started, compute) {
        (
            Err(e),
            Compute::Cuda {
                cpu_fallback: true, ..
            },
        ) => {
            tracing::warn!(error = %e, "the GPU engine did not start; device auto trains on the CPU");
            Ok(Box::new(Native::new(net.clone())))
        }
        (started, _) => started,
    }
}

/// Runs `f`, turning a panic into an [`EngineError`]: burn and cubecl panic on device errors
/// (a failed kernel launch or read-back) where the training loop needs an error it can act on.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(EngineError(format!(
                "the compute engine panicked: {message}"
            )))
        }
    }
}

/// Dynamic loss scaling for fp16: the loss is multiplied by `scale` before the backward pass so
/// small gradients do not flush to zero; a step whose gradients overflow is skipped and the scale
/// halved; after `growth_interval` clean steps it doubles. The defaults are PyTorch's GradScaler.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    /// Current scale.
    pub scale: f32,
    growth_interval: u32,
    clean_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65_536.0,
            growth_interval: 2000,
            clean_steps: 0,
        }
    }
}

impl LossScaler {
    /// Records whether the (all-reduced) gradients of a step were finite; returns whether the
    /// optimiser may apply them.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(f32::MAX / 2.0);
                self.clean_steps = 0;
            }
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
        }
        finite
    }

    /// Decides whether a step's gradients are applied, the same way on every rank.
    /// `overflowed_ranks` is the all-reduced sum of every rank's [`overflow_flag`]; `applied` are
    /// the gradients this rank is about to apply (all-reduced in synchronous mode, its own in
    /// asynchronous mode, where they differ between ranks).
    pub fn update_for_gang(&mut self, overflowed_ranks: f32, applied: &[f32]) -> bool {
        self.update(overflowed_ranks == 0.0 && applied.iter().all(|g| g.is_finite()))
    }
}

/// This rank's share of the fp16 skip decision: 1 when its own gradients overflowed.
pub fn overflow_flag(local_grads: &[f32]) -> f32 {
    f32::from(u8::from(!local_grads.iter().all(|g| g.is_finite())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_halves_the_scale_and_clean_steps_grow_it() {
        let mut scaler = LossScaler {
            growth_interval: 3,
            ..LossScaler::default()
        };
        assert!(!scaler.update(false));
        assert_eq!(scaler.scale, 32_768.0);
        assert!(scaler.update(true) && scaler.update(true));
        assert_eq!(scaler.scale, 32_768.0);
        assert!(scaler.update(true));
        assert_eq!(scaler.scale, 65_536.0);
        for _ in 0..40 {
            scaler.update(false);
        }
        assert_eq!(scaler.scale, 1.0, "never below 1");
    }

    #[test]
    fn in_asynchronous_mode_every_rank_skips_a_step_one_rank_overflowed() {
        // Asynchronous mode: each rank applies its own gradients; one rank's overflowed.
        let own = [vec![0.5, -0.25], vec![f32::INFINITY, 0.5]];
        let overflowed_ranks: f32 = own.iter().map(|g| overflow_flag(g)).sum();
        let mut scalers = [LossScaler::default(), LossScaler::default()];
        let applies: Vec<bool> = scalers
            .iter_mut()
            .zip(&own)
            .map(|(scaler, grads)| scaler.update_for_gang(overflowed_ranks, grads))
            .collect();
        assert_eq!(applies, [false, false], "every rank skips the step");
        assert_eq!(scalers[0], scalers[1], "the ranks' loss scales stay equal");
        assert_eq!(scalers[0].scale, 32_768.0);

        // Synchronous mode: the all-reduced gradients can overflow in the sum alone.
        let reduced = [f32::MAX * 2.0, 1.0];
        assert!(!LossScaler::default().update_for_gang(0.0, &reduced));
        assert!(LossScaler::default().update_for_gang(0.0, &[1.0, 2.0]));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn the_cpu_build_refuses_cuda_without_the_feature() {
        let spec = ferrotrain_crds::ModelSpec {
            kind: ferrotrain_crds::ModelKind::Logistic,
            hidden: None,
            dropout: None,
        };
        let net = Network::new(&spec, 4, 2).expect("builds");
        assert!(build(&net, Compute::Cpu).is_ok());
        let cuda = |cpu_fallback| {
            build(
                &net,
                Compute::Cuda {
                    index: 0,
                    precision: ferrotrain_crds::Precision::Fp32,
                    cpu_fallback,
                },
            )
        };
        // No GPU here: `device: cuda` fails, `device: auto` falls back to the CPU.
        assert!(cuda(false).is_err());
        assert!(cuda(true).is_ok());
    }

    #[test]
    fn a_panic_in_the_engine_is_an_error() {
        let error = guarded::<()>(|| panic!("CUDA_ERROR_ILLEGAL_ADDRESS")).expect_err("error");
        assert!(error.0.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{error:?}");
        assert_eq!(guarded(|| Ok(7)).expect("value"), 7);
    }
}
