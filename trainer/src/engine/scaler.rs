//! Mixed precision's loss scaling: when a step's gradients are applied or skipped, decided the
//! same way on every rank.

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
}
