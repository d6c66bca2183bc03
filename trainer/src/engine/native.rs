//! The native engine: Ferrotrain's own CPU kernels behind the [`Engine`] contract.

use crate::engine::{Engine, EngineError};
use crate::nn::batch_norm::Reduce;
use crate::nn::loss::Targets;
use crate::nn::model::{BatchStats, Network, Workspace};
use crate::rng::Rng;

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

    fn train_step_towards(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout: &mut Rng,
    ) -> Result<BatchStats, EngineError> {
        Ok(self
            .net
            .train_step_towards(params, grads, inputs, targets, dropout, &mut self.ws))
    }

    fn train_step_reduced(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        inputs: &[f32],
        targets: Targets,
        dropout: &mut Rng,
        reduce: Reduce<'_>,
    ) -> Result<BatchStats, EngineError> {
        Ok(self.net.train_step_reduced(
            params,
            grads,
            inputs,
            targets,
            dropout,
            &mut self.ws,
            reduce,
        ))
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
