//! Fused optimisers over the flat parameter vector (one parallel pass per step, no allocation), learning-
//! rate schedules and gradient clipping by global norm. Update rules follow PyTorch's SGD, Adam
//! and AdamW so hyperparameters carry over.

use ferrotrain_crds::{LrScheduleKind, LrScheduleSpec, OptimizerKind, OptimizerSpec};
use rayon::prelude::*;

use crate::nn::kernels::CHUNK;

/// Optimiser state that a checkpoint must carry.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f32,
    l1: f32,
    momentum: f32,
    nesterov: bool,
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// Updates applied so far (Adam's bias correction uses it).
    pub steps: u64,
    /// First moment (Adam) or momentum buffer (SGD); empty when unused.
    pub m: Vec<f32>,
    /// Second moment (Adam); empty when unused.
    pub v: Vec<f32>,
}

impl Optimizer {
    /// A fresh optimiser for `num_params` parameters.
    pub fn new(spec: &OptimizerSpec, num_params: usize) -> Self {
        let (beta1, beta2) = spec.betas_or_default();
        let momentum = spec.momentum_or_default() as f32;
        let (m, v) = match spec.kind {
            OptimizerKind::Sgd if momentum > 0.0 => (vec![0.0; num_params], Vec::new()),
            OptimizerKind::Sgd => (Vec::new(), Vec::new()),
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                (vec![0.0; num_params], vec![0.0; num_params])
            }
        };
        Self {
            kind: spec.kind,
            weight_decay: spec.weight_decay_or_default() as f32,
            l1: spec.l1_or_default() as f32,
            momentum,
            nesterov: spec.nesterov_or_default(),
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: spec.eps_or_default() as f32,
            steps: 0,
            m,
            v,
        }
    }

    /// Applies one update with learning rate `lr`, in parallel over chunks of the parameters.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.steps += 1;
        let (wd, l1) = (self.weight_decay, self.l1);
        let chunks = params.par_chunks_mut(CHUNK).zip(grads.par_chunks(CHUNK));
        match self.kind {
            OptimizerKind::Sgd if self.m.is_empty() => chunks.for_each(|(params, grads)| {
                for (p, &g) in params.iter_mut().zip(grads) {
                    *p -= lr * (g + wd * *p + l1_term(l1, *p));
                }
            }),
            OptimizerKind::Sgd => {
                let (mu, nesterov) = (self.momentum, self.nesterov);
                let first = self.steps == 1;
                chunks
                    .zip(self.m.par_chunks_mut(CHUNK))
                    .for_each(|((params, grads), momentum)| {
                        for ((p, &g), buf) in params.iter_mut().zip(grads).zip(momentum) {
                            let g = g + wd * *p + l1_term(l1, *p);
                            *buf = if first { g } else { mu * *buf + g };
                            *p -= lr * if nesterov { g + mu * *buf } else { *buf };
                        }
                    });
            }
            OptimizerKind::Adam | OptimizerKind::Adamw => {
                let t = self.steps as i32;
                let adam = AdamStep {
                    lr,
                    wd,
                    l1,
                    b1: self.beta1,
                    b2: self.beta2,
                    eps: self.eps,
                    step_size: lr / (1.0 - self.beta1.powi(t)),
                    bias2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
                };
                let decoupled = self.kind == OptimizerKind::Adamw;
                chunks
                    .zip(self.m.par_chunks_mut(CHUNK))
                    .zip(self.v.par_chunks_mut(CHUNK))
                    .for_each(|(((params, grads), m), v)| {
                        if decoupled {
                            adam.decoupled(params, grads, m, v);
                        } else {
                            adam.coupled(params, grads, m, v);
                        }
                    });
            }
        }
    }
}

/// The constants of one Adam update. The loops below take them by value and have no branches, so
/// the compiler keeps them in registers and vectorises (IEEE division and square root are exact
/// in vector form too: results do not change).
#[derive(Clone, Copy)]
struct AdamStep {
    lr: f32,
    wd: f32,
    l1: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bias2_sqrt: f32,
}

impl AdamStep {
    #[inline(always)]
    fn moments(self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        *m = self.b1 * *m + (1.0 - self.b1) * g;
        *v = self.b2 * *v + (1.0 - self.b2) * g * g;
        *p -= self.step_size * *m / ((*v).sqrt() / self.bias2_sqrt + self.eps);
    }

    /// Adam: weight decay is added to the gradient.
    fn coupled(self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            let g = g + self.wd * *p + l1_term(self.l1, *p);
            self.moments(p, g, m, v);
        }
    }

    /// AdamW: weight decay shrinks the parameter directly.
    fn decoupled(self, params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32]) {
        let shrink = 1.0 - self.lr * self.wd;
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(m).zip(v) {
            let g = g + l1_term(self.l1, *p);
            *p *= shrink;
            self.moments(p, g, m, v);
        }
    }
}

/// The L1 penalty's gradient at `p`: `l1 × sign(p)`, and nothing at exactly zero (a weight the
/// penalty has zeroed stays put unless the loss moves it).
#[inline(always)]
fn l1_term(l1: f32, p: f32) -> f32 {
    if p > 0.0 {
        l1
    } else if p < 0.0 {
        -l1
    } else {
        0.0
    }
}

/// Learning rate at `step` (0-based) of a run of `total_steps`.
pub fn learning_rate(base: f64, schedule: &LrScheduleSpec, step: u64, total_steps: u64) -> f32 {
    let lr = match schedule.kind {
        LrScheduleKind::Constant => base,
        LrScheduleKind::Step => {
            let every = schedule.every_steps.unwrap_or(i64::MAX).max(1) as u64;
            base * schedule.gamma_or_default().powi((step / every) as i32)
        }
        LrScheduleKind::Cosine => {
            let warmup = schedule.warmup_steps_or_default().max(0) as u64;
            let min_lr = schedule.min_lr_or_default();
            if step < warmup {
                base * (step + 1) as f64 / warmup as f64
            } else {
                let span = total_steps.saturating_sub(warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    };
    lr as f32
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f32) -> f32 {
    let norm = grads
        .iter()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum::<f64>()
        .sqrt() as f32;
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / norm;
        grads.iter_mut().for_each(|g| *g *= scale);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: OptimizerKind) -> OptimizerSpec {
        OptimizerSpec {
            kind,
            lr: None,
            momentum: None,
            nesterov: None,
            betas: None,
            eps: None,
            weight_decay: None,
            l1: None,
        }
    }

    /// Each optimiser minimises f(x) = Σ (x_i − 3)².
    #[test]
    fn every_optimizer_converges_on_a_quadratic() {
        let variants = [
            (spec(OptimizerKind::Sgd), 0.1),
            (
                OptimizerSpec {
                    momentum: Some(0.9),
                    ..spec(OptimizerKind::Sgd)
                },
                0.02,
            ),
            (
                OptimizerSpec {
                    momentum: Some(0.9),
                    nesterov: Some(true),
                    ..spec(OptimizerKind::Sgd)
                },
                0.02,
            ),
            (spec(OptimizerKind::Adam), 0.1),
            (
                OptimizerSpec {
                    weight_decay: Some(0.0),
                    ..spec(OptimizerKind::Adamw)
                },
                0.1,
            ),
        ];
        for (s, lr) in variants {
            let mut x = vec![0.0f32; 4];
            let mut opt = Optimizer::new(&s, 4);
            for _ in 0..500 {
                let g: Vec<f32> = x.iter().map(|&v| 2.0 * (v - 3.0)).collect();
                opt.step(&mut x, &g, lr);
            }
            assert!(x.iter().all(|v| (v - 3.0).abs() < 1e-2), "{s:?}: {x:?}");
        }
    }

    #[test]
    fn adam_first_step_matches_the_reference_update() {
        // With bias correction, Adam's first step moves each parameter by lr·sign(g).
        let mut p = vec![1.0f32, -1.0];
        let mut opt = Optimizer::new(&spec(OptimizerKind::Adam), 2);
        opt.step(&mut p, &[0.5, -2.0], 0.01);
        assert!(
            (p[0] - 0.99).abs() < 1e-6 && (p[1] + 0.99).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn adamw_decays_weights_decoupled_from_the_gradient() {
        let mut p = vec![2.0f32];
        let mut opt = Optimizer::new(
            &OptimizerSpec {
                weight_decay: Some(0.1),
                ..spec(OptimizerKind::Adamw)
            },
            1,
        );
        opt.step(&mut p, &[0.0], 0.5);
        assert!((p[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-6, "{p:?}");
    }

    /// With no gradient from the loss, L1 moves every weight towards zero by lr·l1 per SGD step
    /// and leaves a zero weight at zero; under every optimiser it makes more weights near zero.
    #[test]
    fn l1_pulls_weights_to_zero_under_every_optimizer() {
        let mut p = vec![0.5f32, -0.5, 0.0];
        let mut opt = Optimizer::new(
            &OptimizerSpec {
                l1: Some(0.1),
                ..spec(OptimizerKind::Sgd)
            },
            3,
        );
        opt.step(&mut p, &[0.0, 0.0, 0.0], 1.0);
        assert_eq!(p, vec![0.4, -0.4, 0.0]);
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            // Noisy gradients around zero: the penalty wins where the loss does not care.
            let run = |l1: Option<f64>| {
                let mut x: Vec<f32> = (0..200).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
                let mut opt = Optimizer::new(&OptimizerSpec { l1, ..spec(kind) }, x.len());
                for step in 0..400u32 {
                    let g: Vec<f32> = (0..x.len())
                        .map(|i| (((i as u32 * 31 + step * 17) % 13) as f32 - 6.0) * 1e-3)
                        .collect();
                    opt.step(&mut x, &g, 0.01);
                }
                x.iter().filter(|v| v.abs() < 0.05).count()
            };
            let (plain, sparse) = (run(None), run(Some(0.5)));
            assert!(
                sparse > plain + 50,
                "{kind:?}: {plain} → {sparse} near zero"
            );
        }
    }

    #[test]
    fn schedules() {
        let constant = LrScheduleSpec {
            kind: LrScheduleKind::Constant,
            every_steps: None,
            gamma: None,
            warmup_steps: None,
            min_lr: None,
        };
        assert_eq!(learning_rate(0.1, &constant, 999, 1000), 0.1);
        let step = LrScheduleSpec {
            kind: LrScheduleKind::Step,
            every_steps: Some(10),
            gamma: Some(0.5),
            ..constant.clone()
        };
        assert_eq!(learning_rate(1.0, &step, 9, 100), 1.0);
        assert_eq!(learning_rate(1.0, &step, 25, 100), 0.25);
        let cosine = LrScheduleSpec {
            kind: LrScheduleKind::Cosine,
            warmup_steps: Some(10),
            min_lr: Some(0.1),
            ..constant
        };
        assert!((learning_rate(1.0, &cosine, 4, 110) - 0.5).abs() < 1e-6);
        assert!((learning_rate(1.0, &cosine, 10, 110) - 1.0).abs() < 1e-6);
        assert!((learning_rate(1.0, &cosine, 60, 110) - 0.55).abs() < 1e-6);
        assert!((learning_rate(1.0, &cosine, 110, 110) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![3.0f32, 4.0];
        assert_eq!(clip_grad_norm(&mut g, 1.0), 5.0);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6);
        let mut small = vec![0.1f32];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.1]);
    }
}
