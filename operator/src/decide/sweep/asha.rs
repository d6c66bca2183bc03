//! Asynchronous successive halving: at each rung a trial outside the top ⌈n/η⌉ of the trials
//! that reached it so far is stopped, and a decision at a rung is never revisited.

use ferrotrain_crds::sweep::TrialState;

use super::Decider;
use super::SweepAction;
use crate::decide::job::Event;

impl Decider<'_> {
    /// Records rung results and stops the trials that do not pass their rung. Trials that
    /// reached a rung since the last look are recorded together, then each is judged against
    /// every result at that rung.
    pub(super) fn asha(&mut self) {
        let spec = &self.sweep.spec;
        let Some(min_steps) = spec.algorithm.min_steps else {
            return;
        };
        let eta = spec.algorithm.reduction_factor_or_default();
        let total = spec.template.trainer.max_steps;
        let objective = &spec.objective;
        for k in 0u32.. {
            let Some(rung) = rung_step(min_steps, eta, k).filter(|r| total.is_none_or(|t| *r < t))
            else {
                break;
            };
            // A trial that finished between two looks is recorded too (it counts for the
            // others), but it is not stopped.
            let arrivals: Vec<(usize, f64)> = (0..self.status.trials.len())
                .filter_map(|i| {
                    let trial = &self.status.trials[i];
                    let alive = trial.state != Some(TrialState::Stopped);
                    (alive && trial.rungs.len() == k as usize)
                        .then(|| self.rung_value(&trial.name, rung))
                        .flatten()
                        .map(|value| (i, value))
                })
                .collect();
            for &(i, value) in &arrivals {
                self.status.trials[i].rungs.push(value);
            }
            let peers: Vec<f64> = self
                .status
                .trials
                .iter()
                .filter_map(|t| t.rungs.get(k as usize).copied())
                .collect();
            if peers.is_empty() {
                break;
            }
            let keep = peers.len().div_ceil(eta as usize).max(1);
            for (i, value) in arrivals {
                let better = peers
                    .iter()
                    .filter(|v| objective.better(**v, value))
                    .count();
                let trial = &mut self.status.trials[i];
                if better < keep || trial.state != Some(TrialState::Running) {
                    continue;
                }
                let message = format!(
                    "stopped at rung {k} (step {rung}): {} {value:.4} is not in the top {keep} of the {} trials at that rung",
                    objective.metric.key(),
                    peers.len()
                );
                trial.state = Some(TrialState::Stopped);
                trial.message = Some(message.clone());
                self.actions.push(SweepAction::StopTrial {
                    name: trial.name.clone(),
                });
                self.events.push(Event {
                    warning: false,
                    reason: "TrialStopped".into(),
                    message: format!("{}: {message}", trial.name),
                    trial: Some(trial.name.clone()),
                });
            }
        }
    }

    /// The objective at a trial's first evaluation at or after `step`.
    pub(super) fn rung_value(&self, trial: &str, step: i64) -> Option<f64> {
        let key = self.sweep.spec.objective.metric.key();
        self.observed
            .get(trial)?
            .evaluations
            .iter()
            .find(|e| e.step >= step)
            .and_then(|e| e.metrics.get(key).copied())
    }
}

/// Step of ASHA rung `k`: minSteps × η^k (none on overflow).
pub fn rung_step(min_steps: i64, eta: u32, k: u32) -> Option<i64> {
    i64::from(eta)
        .checked_pow(k)
        .and_then(|f| f.checked_mul(min_steps))
}
