//! Gradual magnitude pruning (`compression.pruning`): every `everySteps` from `startStep` to
//! `endStep` the smallest weights of each layer are masked to zero, up to a sparsity that follows
//! s × (1 − (1 − progress)³) and reaches `sparsity` at `endStep`. A pruned weight stays zero: its
//! gradient is masked before the optimiser and its value after it. The mask is part of every
//! checkpoint, and every decision is a function of the step and the parameters, so all ranks
//! of a gang hold the same mask and a resumed run prunes exactly as an uninterrupted one.

use std::ops::Range;

use ferrotrain_crds::PruningSpec;

use crate::nn::model::Network;

/// The pruning schedule of a run and its current mask.
#[derive(Clone, Debug)]
pub struct Pruner {
    sparsity: f64,
    start: u64,
    end: u64,
    every: u64,
    layers: Vec<Range<usize>>,
    /// 1 for a weight that trains, 0 for a pruned one; biases are always 1.
    pub mask: Vec<f32>,
}

impl Pruner {
    /// A pruner for `net` with nothing pruned yet.
    pub fn new(spec: &PruningSpec, net: &Network) -> Self {
        Self {
            sparsity: spec.sparsity.clamp(0.0, 0.99),
            start: spec.start_step_or_default(),
            end: (spec.end_step.max(1) as u64).max(spec.start_step_or_default()),
            every: spec.every_steps_or_default(),
            layers: net
                .parameter_layers()
                .into_iter()
                .map(|l| l.weights)
                .collect(),
            mask: vec![1.0; net.num_params],
        }
    }

    /// The sparsity each layer has after `step` steps.
    pub fn target(&self, step: u64) -> f64 {
        if step < self.start {
            return 0.0;
        }
        if step >= self.end {
            return self.sparsity;
        }
        let progress = (step - self.start) as f64 / (self.end - self.start) as f64;
        self.sparsity * (1.0 - (1.0 - progress).powi(3))
    }

    /// Whether the mask is recomputed after `step` steps: every `every` steps from the start,
    /// and at the end.
    pub fn due(&self, step: u64) -> bool {
        step >= self.start
            && step <= self.end
            && ((step - self.start).is_multiple_of(self.every) || step == self.end)
    }

    /// Masks the smallest weights of each layer up to the target of `step` (weights pruned before
    /// stay pruned) and zeroes them in `params`.
    pub fn update(&mut self, params: &mut [f32], step: u64) {
        let target = self.target(step);
        let mut order = Vec::new();
        for range in &self.layers {
            let prune = (target * range.len() as f64).floor() as usize;
            if prune == 0 {
                continue;
            }
            // Pruned weights sort first; ties fall to the lower index, so every rank picks the
            // same weights.
            order.clear();
            order.extend(range.clone().map(|i| {
                let magnitude = if self.mask[i] == 0.0 {
                    -1.0
                } else {
                    params[i].abs()
                };
                (magnitude, i)
            }));
            order.select_nth_unstable_by(prune - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for &(_, i) in &order[..prune] {
                self.mask[i] = 0.0;
            }
        }
        self.apply(params);
    }

    /// Zeroes what the mask prunes (in parameters after an update, in gradients before one).
    pub fn apply(&self, values: &mut [f32]) {
        for (value, keep) in values.iter_mut().zip(&self.mask) {
            *value *= keep;
        }
    }

    /// Restores the mask of a checkpoint; `false` when it does not fit this network.
    pub fn restore(&mut self, mask: &[f32]) -> bool {
        if mask.len() != self.mask.len() || mask.iter().any(|m| *m != 0.0 && *m != 1.0) {
            return false;
        }
        self.mask.copy_from_slice(mask);
        true
    }

    /// The fraction of all weights (biases not counted) that are pruned.
    pub fn sparsity(&self) -> f64 {
        let (pruned, total) = self.layers.iter().fold((0usize, 0usize), |(p, t), range| {
            let zeros = self.mask[range.clone()]
                .iter()
                .filter(|m| **m == 0.0)
                .count();
            (p + zeros, t + range.len())
        });
        pruned as f64 / total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use ferrotrain_crds::{ModelKind, ModelSpec};

    use super::*;

    fn spec(sparsity: f64, start: i64, end: i64, every: i64) -> PruningSpec {
        PruningSpec {
            sparsity,
            start_step: Some(start),
            end_step: end,
            every_steps: Some(every),
        }
    }

    fn mlp() -> Network {
        let model = ModelSpec {
            kind: ModelKind::Mlp,
            hidden: Some(vec![16]),
            dropout: None,
            batch_norm: None,
            sync_batch_norm: None,
        };
        Network::new(&model, 8, 3).expect("builds")
    }

    #[test]
    fn the_schedule_prunes_fast_first_and_reaches_the_target_at_the_end() {
        let pruner = Pruner::new(&spec(0.8, 100, 1100, 100), &mlp());
        assert_eq!(pruner.target(0), 0.0);
        assert_eq!(pruner.target(100), 0.0);
        assert!((pruner.target(600) - 0.8 * (1.0 - 0.125)).abs() < 1e-12);
        assert_eq!(pruner.target(1100), 0.8);
        assert_eq!(pruner.target(5000), 0.8);
        let rounds: Vec<u64> = (0..2000).filter(|s| pruner.due(*s)).collect();
        assert_eq!(rounds, (1..=11).map(|k| k * 100).collect::<Vec<_>>());
        let uneven = Pruner::new(&spec(0.5, 0, 250, 100), &mlp());
        let rounds: Vec<u64> = (0..400).filter(|s| uneven.due(*s)).collect();
        assert_eq!(rounds, [0, 100, 200, 250], "the end is a round too");
    }

    #[test]
    fn the_smallest_weights_of_each_layer_go_and_stay_gone_biases_stay() {
        let net = mlp();
        let mut pruner = Pruner::new(&spec(0.5, 0, 10, 5), &net);
        let mut params: Vec<f32> = (0..net.num_params)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let before = params.clone();
        pruner.update(&mut params, 10);
        for range in net.parameter_layers().into_iter().map(|l| l.weights) {
            let zeros = range.clone().filter(|&i| params[i] == 0.0).count();
            assert_eq!(zeros, range.len() / 2, "half of each layer");
            // Every pruned weight was no larger than every kept one.
            let largest_pruned = range
                .clone()
                .filter(|&i| pruner.mask[i] == 0.0)
                .map(|i| before[i].abs())
                .fold(0.0f32, f32::max);
            let smallest_kept = range
                .clone()
                .filter(|&i| pruner.mask[i] == 1.0)
                .map(|i| before[i].abs())
                .fold(f32::INFINITY, f32::min);
            assert!(largest_pruned <= smallest_kept);
        }
        let pruned_per_layer: usize = net
            .parameter_layers()
            .iter()
            .map(|l| l.weights.len() / 2)
            .sum();
        assert_eq!(
            pruner.mask.iter().filter(|m| **m == 0.0).count(),
            pruned_per_layer,
            "biases are never pruned"
        );
        assert!((pruner.sparsity() - 0.5).abs() < 0.01);
        // A pruned weight that the optimiser moved is zeroed again, and a pruned weight that
        // became the largest is not revived at the next round.
        let pruned: Vec<usize> = (0..net.num_params)
            .filter(|&i| pruner.mask[i] == 0.0)
            .collect();
        params[pruned[0]] = 100.0;
        pruner.update(&mut params, 10);
        assert_eq!(params[pruned[0]], 0.0);
        assert_eq!(
            (0..net.num_params)
                .filter(|&i| pruner.mask[i] == 0.0)
                .collect::<Vec<_>>(),
            pruned
        );
    }

    #[test]
    fn a_mask_of_another_network_or_with_other_values_is_refused() {
        let mut pruner = Pruner::new(&spec(0.5, 0, 10, 5), &mlp());
        let good = pruner.mask.clone();
        assert!(pruner.restore(&good));
        assert!(!pruner.restore(&good[1..]));
        let mut odd = good;
        odd[0] = 0.5;
        assert!(!pruner.restore(&odd));
    }
}
