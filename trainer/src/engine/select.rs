//! Which engine a run trains with, from the device the run selected.

use crate::engine::device::Compute;
use crate::engine::native::Native;
use crate::engine::{Engine, EngineError};
use crate::nn::model::Network;

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

#[cfg(all(test, not(feature = "cuda")))]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_build_refuses_cuda_without_the_feature() {
        let spec = ferrotrain_crds::ModelSpec {
            kind: ferrotrain_crds::ModelKind::Logistic,
            hidden: None,
            dropout: None,
            batch_norm: None,
            sync_batch_norm: None,
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
}
