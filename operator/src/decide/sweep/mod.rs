//! The TrainingSweep decision: one pure function, [`decide`], from (sweep, observed trials, now)
//! to the next status and the trial changes to make. The Kubernetes sweep controller runs it over
//! TrainingJobs; `ferrotrain sweep` runs it over local jobs.
//!
//! Rules (docs/sweep.md has the prose):
//! - trials are created in index order, at most `parallelTrials` active at once, until the
//!   algorithm's plan is done (grid: every combination; random and asha: `maxTrials`; pbt:
//!   population × intervals);
//! - asha: a trial whose evaluation at rung k (step minSteps × η^k) is not in the top ⌈n/η⌉ of
//!   the n trials that reached rung k so far is stopped; a decision at a rung is never revisited;
//! - pbt: when every member finished interval g, the bottom quantile continues from the
//!   checkpoint of a top-quantile member with perturbed hyperparameters (×0.8 or ×1.2, or drawn
//!   afresh), the others from their own checkpoint with the same ones;
//! - more than `maxFailedTrials` failed trials fail the sweep; Succeeded and Failed are terminal
//!   and stop every trial still training;
//! - suspension pauses every active trial (emergency checkpoint) and creates none.

pub mod asha;
mod pbt;
pub mod sampling;
#[cfg(test)]
mod tests;
pub mod trials;

use sampling::planned_trials;

use std::collections::BTreeMap;

use ferrotrain_crds::sweep::{
    AlgorithmKind, BestTrial, SweepPhase, TrainingSweep, TrainingSweepStatus, TrialCounts,
    TrialState, TrialStatus,
};
use ferrotrain_crds::{Evaluation, Phase, TrainingJobSpec};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::decide::job::Event;
use crate::decide::status::set_condition;

/// How long a trial whose job succeeded may take to show its final progress before it counts
/// as done with what it shows.
pub const FINAL_PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Label on every trial TrainingJob: the name of its sweep.
pub const SWEEP_LABEL: &str = "ferrotrain.io/sweep";

/// What a trial's TrainingJob looks like now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrialObservation {
    /// Its phase; none before the job controller first wrote a status.
    pub phase: Option<Phase>,
    /// Latest reported step.
    pub step: i64,
    /// Total steps the trial reported it will train.
    pub total_steps: Option<i64>,
    /// When its job reached Succeeded or Failed.
    pub completed_at: Option<Timestamp>,
    /// Latest evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Recent evaluations with their steps.
    pub evaluations: Vec<Evaluation>,
    /// Latest committed checkpoint (manifest URI).
    pub checkpoint: Option<String>,
    /// Its status message.
    pub message: Option<String>,
}

/// A change to the trials.
#[derive(Clone, Debug, PartialEq)]
pub enum SweepAction {
    /// Create (or re-apply) the trial's TrainingJob.
    CreateTrial {
        /// TrainingJob name.
        name: String,
        /// Its spec.
        spec: Box<TrainingJobSpec>,
    },
    /// Suspend it for good: the algorithm stopped it, or the sweep ended.
    StopTrial {
        /// TrainingJob name.
        name: String,
    },
    /// Suspend it with the sweep.
    PauseTrial {
        /// TrainingJob name.
        name: String,
    },
    /// Lift the sweep's suspension.
    ResumeTrial {
        /// TrainingJob name.
        name: String,
    },
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepDecision {
    /// The next status.
    pub status: TrainingSweepStatus,
    /// Changes to make, in order.
    pub actions: Vec<SweepAction>,
    /// Events to record on the sweep.
    pub events: Vec<Event>,
}

/// Decides what to do next. Pure: no I/O, no clock.
pub fn decide(
    sweep: &TrainingSweep,
    observed: &BTreeMap<String, TrialObservation>,
    now: Timestamp,
) -> SweepDecision {
    let mut d = Decider {
        sweep,
        observed,
        now,
        status: sweep.status.clone().unwrap_or_default(),
        actions: Vec::new(),
        events: Vec::new(),
    };
    d.run();
    SweepDecision {
        status: d.status,
        actions: d.actions,
        events: d.events,
    }
}

struct Decider<'a> {
    sweep: &'a TrainingSweep,
    observed: &'a BTreeMap<String, TrialObservation>,
    now: Timestamp,
    status: TrainingSweepStatus,
    actions: Vec<SweepAction>,
    events: Vec<Event>,
}

impl Decider<'_> {
    fn run(&mut self) {
        let spec = &self.sweep.spec;
        self.status.observed_generation = self.sweep.metadata.generation;
        if self.status.start_time.is_none() {
            self.status.start_time = Some(Time(self.now));
        }
        self.observe();
        if self.is_terminal() {
            self.stop_active("the sweep has ended");
            self.summarise();
            // Stopped trials report their last evaluation after the end: the best may change.
            if self.status.phase == Some(SweepPhase::Succeeded) {
                let message = self.done_message();
                self.set_phase(SweepPhase::Succeeded, "TrialsDone", &message);
            }
            return;
        }
        if spec.algorithm.kind == AlgorithmKind::Pbt && spec.template.checkpoint.is_none() {
            self.finish(
                SweepPhase::Failed,
                "CheckpointRequired",
                "spec.template.checkpoint: pbt continues trials from each other's checkpoints; set a checkpoint uri",
            );
            self.summarise();
            return;
        }
        let failed = self.count(TrialState::Failed);
        let max_failed = spec.max_failed_trials_or_default();
        if failed > max_failed {
            let last = self
                .status
                .trials
                .iter()
                .rev()
                .find(|t| t.state == Some(TrialState::Failed))
                .map(|t| format!("{}: {}", t.name, t.message.clone().unwrap_or_default()))
                .unwrap_or_default();
            let message = format!(
                "{failed} trials failed, more than maxFailedTrials ({max_failed}); the last, {last}"
            );
            self.finish(SweepPhase::Failed, "TooManyFailedTrials", &message);
            self.stop_active("the sweep failed");
            self.summarise();
            return;
        }
        if spec.suspend_or_default() {
            for trial in &mut self.status.trials {
                if matches!(trial.state, Some(TrialState::Running | TrialState::Pending)) {
                    trial.state = Some(TrialState::Paused);
                    self.actions.push(SweepAction::PauseTrial {
                        name: trial.name.clone(),
                    });
                }
            }
            self.set_phase(SweepPhase::Suspended, "Suspended", "suspended by the user");
            self.summarise();
            return;
        }
        for trial in &mut self.status.trials {
            if trial.state == Some(TrialState::Paused) {
                trial.state = Some(TrialState::Running);
                self.actions.push(SweepAction::ResumeTrial {
                    name: trial.name.clone(),
                });
            }
        }
        if spec.algorithm.kind == AlgorithmKind::Asha {
            self.asha();
        }
        self.reapply_unseen();
        self.create_trials();
        self.summarise();
        let active = self.active();
        let planned = planned_trials(self.sweep);
        if active == 0 && self.status.trials.len() >= planned {
            let message = self.done_message();
            self.finish(SweepPhase::Succeeded, "TrialsDone", &message);
            return;
        }
        let message = format!(
            "{active} trials training, {} of {planned} created",
            self.status.trials.len()
        );
        self.set_phase(SweepPhase::Running, "TrialsRunning", &message);
    }

    /// Folds what the trials' TrainingJobs say into the trial statuses.
    fn observe(&mut self) {
        let objective = &self.sweep.spec.objective;
        let key = objective.metric.key();
        let terminal = self.is_terminal();
        let early_stopping = self.sweep.spec.template.trainer.early_stopping.is_some();
        for trial in &mut self.status.trials {
            let Some(obs) = self.observed.get(&trial.name) else {
                if matches!(trial.state, Some(TrialState::Running | TrialState::Paused)) {
                    trial.state = Some(TrialState::Failed);
                    trial.message =
                        Some("its TrainingJob was deleted before it finished".to_string());
                }
                continue;
            };
            let start = trial.steps - trial.trained_steps;
            trial.steps = trial.steps.max(obs.step);
            trial.trained_steps = (trial.steps - start).max(0);
            if let Some(&value) = obs.metrics.get(key) {
                trial.metric = Some(value);
                trial.metric_step = obs.evaluations.last().map(|e| e.step).or(Some(obs.step));
                if trial
                    .best_metric
                    .is_none_or(|best| objective.better(value, best))
                {
                    trial.best_metric = Some(value);
                }
            }
            if obs.checkpoint.is_some() {
                trial.checkpoint = obs.checkpoint.clone();
            }
            // The job's phase and its progress are written apart: a job that just succeeded
            // may not show its last evaluation and checkpoint yet, which the ranking needs.
            let final_progress = early_stopping
                || obs.total_steps.is_none_or(|total| obs.step >= total)
                || obs.completed_at.is_some_and(|at| {
                    self.now.duration_since(at).as_secs() >= FINAL_PROGRESS_WAIT.as_secs() as i64
                });
            let state = trial.state.unwrap_or(TrialState::Pending);
            trial.state = Some(match (state, obs.phase) {
                // The sweep's decisions stand whatever the job does while it stops.
                (TrialState::Stopped | TrialState::Failed | TrialState::Succeeded, _) => state,
                (_, Some(Phase::Succeeded)) if !final_progress => TrialState::Running,
                (_, Some(Phase::Succeeded)) => TrialState::Succeeded,
                (_, Some(Phase::Failed)) => {
                    trial.message = obs.message.clone();
                    TrialState::Failed
                }
                (TrialState::Paused, _) => TrialState::Paused,
                (_, Some(Phase::Suspended)) if terminal => TrialState::Stopped,
                (_, None | Some(Phase::Pending)) => TrialState::Pending,
                (_, Some(_)) => TrialState::Running,
            });
        }
    }

    /// A trial recorded as Pending whose job is not seen may not have been created (a failed
    /// create, or a status write that won a race): its create is applied again, which is
    /// idempotent.
    fn reapply_unseen(&mut self) {
        let unseen: Vec<usize> = (0..self.status.trials.len())
            .filter(|i| {
                let t = &self.status.trials[*i];
                t.state == Some(TrialState::Pending) && !self.observed.contains_key(&t.name)
            })
            .collect();
        for i in unseen {
            let trial = self.status.trials[i].clone();
            self.push_create(&trial);
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self.status.phase,
            Some(SweepPhase::Succeeded | SweepPhase::Failed)
        )
    }

    fn done_message(&self) -> String {
        let key = self.sweep.spec.objective.metric.key();
        let trials = self.status.trials.len();
        match &self.status.best {
            Some(best) => format!(
                "{trials} trials done; best {} with {key} {:.4}",
                best.trial, best.metric
            ),
            None => format!("{trials} trials done; none reported {key}"),
        }
    }

    fn count(&self, state: TrialState) -> usize {
        self.status
            .trials
            .iter()
            .filter(|t| t.state == Some(state))
            .count()
    }

    fn active(&self) -> usize {
        self.count(TrialState::Pending) + self.count(TrialState::Running)
    }

    /// Stops every trial still training or paused.
    fn stop_active(&mut self, why: &str) {
        for trial in &mut self.status.trials {
            if matches!(
                trial.state,
                Some(TrialState::Pending | TrialState::Running | TrialState::Paused)
            ) {
                trial.state = Some(TrialState::Stopped);
                trial.message = Some(why.to_string());
                self.actions.push(SweepAction::StopTrial {
                    name: trial.name.clone(),
                });
            }
        }
    }

    fn set_phase(&mut self, phase: SweepPhase, reason: &str, message: &str) {
        if self.status.phase != Some(phase) {
            self.events.push(Event {
                warning: phase == SweepPhase::Failed,
                reason: format!("{phase:?}"),
                message: format!("{reason}: {message}"),
                trial: None,
            });
        }
        self.status.phase = Some(phase);
        self.status.message = Some(message.to_string());
        let generation = self.sweep.metadata.generation;
        for (kind, on) in [
            ("Running", phase == SweepPhase::Running),
            ("Suspended", phase == SweepPhase::Suspended),
            ("Succeeded", phase == SweepPhase::Succeeded),
            ("Failed", phase == SweepPhase::Failed),
        ] {
            let present = self.status.conditions.iter().any(|c| c.type_ == kind);
            if on || present {
                set_condition(
                    &mut self.status.conditions,
                    kind,
                    on,
                    reason,
                    message,
                    self.now,
                    generation,
                );
            }
        }
    }

    fn finish(&mut self, phase: SweepPhase, reason: &str, message: &str) {
        self.set_phase(phase, reason, message);
        if self.status.completion_time.is_none() {
            self.status.completion_time = Some(Time(self.now));
        }
    }

    /// Counts, the summary column, the best trial and the steps trained.
    fn summarise(&mut self) {
        let trials = &self.status.trials;
        let count = |state| trials.iter().filter(|t| t.state == Some(state)).count() as i32;
        let counts = TrialCounts {
            running: count(TrialState::Pending) + count(TrialState::Running),
            paused: count(TrialState::Paused),
            succeeded: count(TrialState::Succeeded),
            stopped: count(TrialState::Stopped),
            failed: count(TrialState::Failed),
            total: planned_trials(self.sweep) as i32,
        };
        self.status.trials_summary = Some(format!(
            "{}/{}/{}",
            counts.running,
            counts.succeeded + counts.stopped + counts.failed,
            counts.total
        ));
        self.status.counts = Some(counts);
        self.status.trained_steps = Some(trials.iter().map(|t| t.trained_steps).sum());
        let objective = &self.sweep.spec.objective;
        let mut best: Option<&TrialStatus> = None;
        for trial in trials.iter().filter(|t| t.metric.is_some()) {
            let better = match (best.and_then(|b| b.metric), trial.metric) {
                (Some(b), Some(m)) => objective.better(m, b),
                (None, Some(_)) => true,
                _ => false,
            };
            if better {
                best = Some(trial);
            }
        }
        self.status.best = best.and_then(|t| {
            Some(BestTrial {
                trial: t.name.clone(),
                parameters: t.parameters.clone(),
                metric: t.metric?,
                step: t.metric_step,
                checkpoint: t.checkpoint.clone(),
            })
        });
    }
}
