//! The engine computes forward and backward passes over the flat parameter vector. Everything
//! around it (all-reduce, optimiser, checkpoints) works on host `f32` buffers, so the engines are
//! interchangeable: Ferrotrain's CPU kernels, or burn on a GPU (feature `cuda`; feature `burn`
//! runs the same engine on burn's CPU backend, which is how it is tested without a GPU). This file
//! holds the contract every engine meets; `select` picks one for a run.

#[cfg(feature = "burn")]
pub mod burn_engine;
pub mod device;
pub mod native;
pub mod scaler;
pub mod select;

use crate::engine::scaler::LossScaler;
use crate::nn::batch_norm::Reduce;
use crate::nn::loss::Targets;
use crate::nn::model::BatchStats;
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

    /// [`Engine::train_step`] towards `targets`: labels, or labels and a teacher's logits
    /// (knowledge distillation, which only the native engine computes).
    fn train_step_towards(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout: &mut Rng,
    ) -> Result<BatchStats, EngineError> {
        match targets {
            Targets::Labels(labels) => self.train_step(params, grads, inputs, labels, dropout),
            Targets::Distilled { .. } => Err(EngineError(
                "knowledge distillation runs on the CPU engine; set spec.trainer.device: cpu"
                    .into(),
            )),
        }
    }

    /// [`Engine::train_step_towards`] with batch normalisation's sums passed through `reduce`, an
    /// all-reduce over the gang (synchronised batch normalisation; only the native engine).
    fn train_step_reduced(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout: &mut Rng,
        reduce: Reduce<'_>,
    ) -> Result<BatchStats, EngineError> {
        let _ = (params, grads, inputs, targets, dropout, reduce);
        Err(EngineError(
            "batch normalisation runs on the CPU engine; set spec.trainer.device: cpu".into(),
        ))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_engine_is_an_error() {
        let error = guarded::<()>(|| panic!("CUDA_ERROR_ILLEGAL_ADDRESS")).expect_err("error");
        assert!(error.0.contains("CUDA_ERROR_ILLEGAL_ADDRESS"), "{error:?}");
        assert_eq!(guarded(|| Ok(7)).expect("value"), 7);
    }
}
