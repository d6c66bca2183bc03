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

use std::collections::BTreeMap;

use ferrotrain_crds::sweep::{
    AlgorithmKind, BestTrial, ParameterType, Scale, SweepParameter, SweepPhase, TrainingSweep,
    TrainingSweepStatus, TrialCounts, TrialState, TrialStatus,
};
use ferrotrain_crds::tunables::tunables;
use ferrotrain_crds::{Evaluation, InitFromSpec, Phase, RunPolicy, TrainerSpec, TrainingJobSpec};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};

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

    /// Records rung results and stops the trials that do not pass their rung. Trials that
    /// reached a rung since the last look are recorded together, then each is judged against
    /// every result at that rung.
    fn asha(&mut self) {
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
                });
            }
        }
    }

    /// The objective at a trial's first evaluation at or after `step`.
    fn rung_value(&self, trial: &str, step: i64) -> Option<f64> {
        let key = self.sweep.spec.objective.metric.key();
        self.observed
            .get(trial)?
            .evaluations
            .iter()
            .find(|e| e.step >= step)
            .and_then(|e| e.metrics.get(key).copied())
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

    fn create_trials(&mut self) {
        let parallel = self.sweep.spec.parallel_trials_or_default();
        while self.active() < parallel {
            let Some(trial) = self.next_trial() else {
                break;
            };
            self.events.push(Event {
                warning: false,
                reason: "TrialCreated".into(),
                message: format!(
                    "{} with {}",
                    trial.name,
                    describe_parameters(&trial.parameters)
                ),
            });
            self.push_create(&trial);
            self.status.trials.push(trial);
        }
    }

    fn push_create(&mut self, trial: &TrialStatus) {
        match trial_spec(self.sweep, trial) {
            Ok(spec) => self.actions.push(SweepAction::CreateTrial {
                name: trial.name.clone(),
                spec: Box::new(spec),
            }),
            Err(message) => self.events.push(Event {
                warning: true,
                reason: "InvalidTrial".into(),
                message: format!("{}: {message}", trial.name),
            }),
        }
    }

    /// The next trial of the plan, if one is due now.
    fn next_trial(&self) -> Option<TrialStatus> {
        let sweep = self.sweep;
        let index = self.status.trials.len();
        if index >= planned_trials(sweep) {
            return None;
        }
        let name = trial_name(sweep, index);
        let spec = &sweep.spec;
        let trial = match spec.algorithm.kind {
            AlgorithmKind::Grid => TrialStatus {
                parameters: grid_point(&spec.parameters, index),
                ..TrialStatus::default()
            },
            AlgorithmKind::Random | AlgorithmKind::Asha => TrialStatus {
                parameters: sample(&spec.parameters, spec.algorithm.seed_or_default(), index),
                ..TrialStatus::default()
            },
            AlgorithmKind::Pbt => return self.next_pbt_trial(index, name),
        };
        Some(TrialStatus {
            name,
            state: Some(TrialState::Pending),
            ..trial
        })
    }

    /// PBT: member `index % population` of interval `index / population`, due once every
    /// member finished the interval before.
    fn next_pbt_trial(&self, index: usize, name: String) -> Option<TrialStatus> {
        let spec = &self.sweep.spec;
        let algorithm = &spec.algorithm;
        let population = algorithm.population_or_default();
        let interval = algorithm.interval_steps.unwrap_or(1).max(1);
        let (generation, member) = (index / population, index % population);
        let base = TrialStatus {
            name,
            state: Some(TrialState::Pending),
            member: Some(member as i32),
            generation: Some(generation as i32),
            steps: generation as i64 * interval,
            ..TrialStatus::default()
        };
        if generation == 0 {
            return Some(TrialStatus {
                parameters: sample(&spec.parameters, algorithm.seed_or_default(), member),
                ..base
            });
        }
        let previous = &self.status.trials[(generation - 1) * population..generation * population];
        if previous
            .iter()
            .any(|t| !t.state.is_some_and(TrialState::is_done))
        {
            return None;
        }
        let (source, parameters) = pbt_exploit(self.sweep, previous, generation, member)?;
        Some(TrialStatus {
            parameters,
            parent: Some(source.name.clone()),
            init_from: source.checkpoint.clone(),
            ..base
        })
    }
}

impl Decider<'_> {
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

/// The trials the plan creates in all.
pub fn planned_trials(sweep: &TrainingSweep) -> usize {
    let spec = &sweep.spec;
    let max = spec.max_trials.max(1) as usize;
    match spec.algorithm.kind {
        AlgorithmKind::Grid => spec
            .parameters
            .iter()
            .map(|p| grid_values(p).len().max(1))
            .try_fold(1usize, |acc, n| acc.checked_mul(n))
            .unwrap_or(usize::MAX)
            .min(max),
        AlgorithmKind::Random | AlgorithmKind::Asha => max,
        AlgorithmKind::Pbt => {
            let interval = spec.algorithm.interval_steps.unwrap_or(1).max(1);
            let generations = spec.template.trainer.max_steps.unwrap_or(interval) / interval;
            (spec.algorithm.population_or_default() * generations.max(1) as usize).min(max)
        }
    }
}

/// The TrainingJob name of trial `index`: `<sweep>-<index>`, three digits at least.
pub fn trial_name(sweep: &TrainingSweep, index: usize) -> String {
    let name = sweep.metadata.name.as_deref().unwrap_or("sweep");
    format!("{name}-{index:03}")
}

/// Step of ASHA rung `k`: minSteps × η^k (none on overflow).
pub fn rung_step(min_steps: i64, eta: u32, k: u32) -> Option<i64> {
    i64::from(eta)
        .checked_pow(k)
        .and_then(|f| f.checked_mul(min_steps))
}

/// The points of a parameter on a grid.
pub fn grid_values(parameter: &SweepParameter) -> Vec<f64> {
    if let Some(values) = &parameter.values {
        return values.clone();
    }
    let (Some(min), Some(max)) = (parameter.min, parameter.max) else {
        return Vec::new();
    };
    let points = parameter.grid_points_or_default();
    if parameter.kind == ParameterType::Int && (max - min + 1.0) <= points as f64 {
        return (min as i64..=max as i64).map(|v| v as f64).collect();
    }
    let mut out: Vec<f64> = (0..points)
        .map(|i| {
            let u = i as f64 / (points - 1) as f64;
            let value = on_scale(parameter, min, max, u);
            if parameter.kind == ParameterType::Int {
                value.round()
            } else {
                value
            }
        })
        .collect();
    out.dedup();
    out
}

fn on_scale(parameter: &SweepParameter, min: f64, max: f64, u: f64) -> f64 {
    let value = match parameter.scale_or_default() {
        Scale::Linear => min + u * (max - min),
        Scale::Log => (min.ln() + u * (max.ln() - min.ln())).exp(),
    };
    value.clamp(min, max)
}

/// Combination `index` of the grid: the last parameter varies fastest.
fn grid_point(parameters: &[SweepParameter], index: usize) -> BTreeMap<String, f64> {
    let mut rest = index;
    let mut out = BTreeMap::new();
    for parameter in parameters.iter().rev() {
        let values = grid_values(parameter);
        if values.is_empty() {
            continue;
        }
        out.insert(parameter.path.clone(), values[rest % values.len()]);
        rest /= values.len();
    }
    out
}

/// A uniform number in [0, 1) from (seed, stream, indices): SplitMix64 over the inputs, so that
/// trial `i` gets the same values whatever happened to the others.
fn uniform(seed: u64, stream: u64, indices: &[u64]) -> f64 {
    let mut x = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &i in indices {
        x = splitmix(x ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    }
    (splitmix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const SAMPLE_STREAM: u64 = 1;
const EXPLORE_STREAM: u64 = 2;
const EXPLOIT_STREAM: u64 = 3;

fn draw(parameter: &SweepParameter, u: f64) -> f64 {
    if let Some(values) = &parameter.values {
        let i = ((u * values.len() as f64) as usize).min(values.len().saturating_sub(1));
        return values.get(i).copied().unwrap_or_default();
    }
    let (min, max) = (parameter.min.unwrap_or(0.0), parameter.max.unwrap_or(1.0));
    if parameter.kind == ParameterType::Int {
        // Whole numbers in [min, max] equally likely (on a log scale: equally likely in log).
        let value = match parameter.scale_or_default() {
            Scale::Linear => (min + u * (max - min + 1.0)).floor(),
            Scale::Log => on_scale(parameter, min, max, u).round(),
        };
        return value.clamp(min, max);
    }
    on_scale(parameter, min, max, u)
}

/// Trial `index`'s values, drawn independently for each parameter.
pub fn sample(parameters: &[SweepParameter], seed: u64, index: usize) -> BTreeMap<String, f64> {
    parameters
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let u = uniform(seed, SAMPLE_STREAM, &[index as u64, j as u64]);
            (p.path.clone(), draw(p, u))
        })
        .collect()
}

/// PBT: where member `member` of interval `generation` starts from, and with which values.
/// The previous interval's trials are ranked by their objective (failed ones and those without
/// a checkpoint last); the bottom quantile copies a top-quantile trial and explores.
fn pbt_exploit<'t>(
    sweep: &TrainingSweep,
    previous: &'t [TrialStatus],
    generation: usize,
    member: usize,
) -> Option<(&'t TrialStatus, BTreeMap<String, f64>)> {
    let spec = &sweep.spec;
    let algorithm = &spec.algorithm;
    let usable = |t: &TrialStatus| {
        t.state == Some(TrialState::Succeeded) && t.checkpoint.is_some() && t.metric.is_some()
    };
    let mut ranked: Vec<&TrialStatus> = previous.iter().collect();
    // Best first; ties by member, so the order is total.
    ranked.sort_by(|a, b| {
        let key = |t: &TrialStatus| (usable(t), t.metric.unwrap_or(f64::NAN));
        let ((ua, ma), (ub, mb)) = (key(a), key(b));
        ub.cmp(&ua)
            .then_with(|| {
                if spec.objective.better(ma, mb) {
                    std::cmp::Ordering::Less
                } else if spec.objective.better(mb, ma) {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .then(a.member.cmp(&b.member))
    });
    let population = ranked.len();
    let cut = ((population as f64 * algorithm.quantile_or_default()).floor() as usize)
        .max(1)
        .min(population / 2);
    let top: Vec<&TrialStatus> = ranked
        .iter()
        .take(cut)
        .copied()
        .filter(|t| usable(t))
        .collect();
    let own = previous.iter().find(|t| t.member == Some(member as i32))?;
    let position = ranked.iter().position(|t| t.member == own.member)?;
    let bottom = position >= population - cut || !usable(own);
    if !bottom || top.is_empty() {
        return usable(own).then(|| (own, own.parameters.clone()));
    }
    let pick = uniform(
        algorithm.seed_or_default(),
        EXPLOIT_STREAM,
        &[generation as u64, member as u64],
    );
    let source = top[((pick * top.len() as f64) as usize).min(top.len() - 1)];
    let parameters = explore(sweep, &source.parameters, generation, member);
    Some((source, parameters))
}

/// PBT explore: each value is drawn afresh with the resample probability, else multiplied by
/// 0.8 or 1.2 (a categorical one moves to a neighbouring value), within its range.
fn explore(
    sweep: &TrainingSweep,
    parameters: &BTreeMap<String, f64>,
    generation: usize,
    member: usize,
) -> BTreeMap<String, f64> {
    let algorithm = &sweep.spec.algorithm;
    let seed = algorithm.seed_or_default();
    let resample = algorithm.resample_probability_or_default();
    sweep
        .spec
        .parameters
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let at = |salt: u64| {
                uniform(
                    seed,
                    EXPLORE_STREAM,
                    &[generation as u64, member as u64, j as u64, salt],
                )
            };
            let current = parameters.get(&p.path).copied().unwrap_or_default();
            let value = if at(0) < resample {
                draw(p, at(1))
            } else if let Some(values) = &p.values {
                let i = values.iter().position(|v| *v == current).unwrap_or(0);
                let next = if at(2) < 0.5 {
                    i.saturating_sub(1)
                } else {
                    (i + 1).min(values.len() - 1)
                };
                values[next]
            } else {
                let factor = if at(2) < 0.5 { 0.8 } else { 1.2 };
                let value = current * factor;
                let value = if p.kind == ParameterType::Int {
                    value.round()
                } else {
                    value
                };
                value.clamp(p.min.unwrap_or(f64::MIN), p.max.unwrap_or(f64::MAX))
            };
            (p.path.clone(), value)
        })
        .collect()
}

/// `optimizer.lr=0.003, model.dropout=0.2`.
pub fn describe_parameters(parameters: &BTreeMap<String, f64>) -> String {
    parameters
        .iter()
        .map(|(k, v)| format!("{k}={}", format_value(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value with four significant digits, as the tables and events show it.
pub fn format_value(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) {
        format!("{v:.3e}")
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else {
        let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
        let text = format!("{v:.digits$}");
        text.trim_end_matches('0').to_string()
    }
}

/// The TrainingJob spec of a trial: the template with the trial's values set, its own
/// checkpoint location under the template's, and for pbt its interval's end and warm start.
pub fn trial_spec(sweep: &TrainingSweep, trial: &TrialStatus) -> Result<TrainingJobSpec, String> {
    let spec = &sweep.spec;
    let mut job = spec.template.clone();
    let integers: Vec<String> = tunables()
        .into_iter()
        .filter(|t| t.integer)
        .map(|t| t.path)
        .collect();
    for (path, value) in &trial.parameters {
        set_parameter(&mut job.trainer, path, *value, integers.contains(path))?;
    }
    if let Some(checkpoint) = job.checkpoint.as_mut() {
        checkpoint.uri = format!("{}/{}", checkpoint.uri.trim_end_matches('/'), trial.name);
    }
    if spec.algorithm.kind == AlgorithmKind::Pbt {
        let interval = spec.algorithm.interval_steps.unwrap_or(1).max(1);
        let generation = i64::from(trial.generation.unwrap_or(0));
        job.trainer.max_steps = Some((generation + 1) * interval);
        job.trainer.epochs = None;
        job.trainer.init_from = trial.init_from.as_ref().map(|uri| InitFromSpec {
            uri: uri.clone(),
            reset_optimizer: None,
            continue_steps: Some(true),
        });
    }
    // A trial is stopped by suspension; one created while the sweep is suspended starts so.
    if spec.suspend_or_default() {
        job.run_policy = Some(RunPolicy {
            suspend: Some(true),
            ..job.run_policy.unwrap_or_default()
        });
    }
    Ok(job)
}

/// A trial's TrainingJob as the API takes it: labelled with its sweep and owned by it (when
/// the sweep has a uid, as in a cluster).
pub fn trial_object(
    sweep: &TrainingSweep,
    name: &str,
    spec: &ferrotrain_crds::TrainingJobSpec,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "ferrotrain.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": sweep.namespace(),
            "labels": {SWEEP_LABEL: sweep.name_any()},
            "ownerReferences": sweep.controller_owner_ref(&()).map(|o| vec![o]),
        },
        "spec": spec,
    })
}

/// Sets `path` (under spec.trainer) to `value`. A missing optimizer or lrSchedule is filled in
/// with its defaults first, so `optimizer.lr` works on a template that leaves the optimiser out.
pub fn set_parameter(
    trainer: &mut TrainerSpec,
    path: &str,
    value: f64,
    integer: bool,
) -> Result<(), String> {
    if path.starts_with("optimizer.") && trainer.optimizer.is_none() {
        trainer.optimizer = Some(trainer.optimizer_or_default());
    }
    if path.starts_with("lrSchedule.") && trainer.lr_schedule.is_none() {
        trainer.lr_schedule = Some(trainer.lr_schedule_or_default());
    }
    let mut json = serde_json::to_value(&*trainer).map_err(|e| e.to_string())?;
    let (parents, leaf) = match path.rsplit_once('.') {
        Some((parents, leaf)) => (parents.split('.').collect::<Vec<_>>(), leaf),
        None => (Vec::new(), path),
    };
    let mut node = &mut json;
    for part in parents {
        node = node
            .as_object_mut()
            .ok_or_else(|| format!("spec.trainer.{path}: {part} is not an object"))?
            .entry(part.to_string())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    let number = if integer {
        serde_json::Value::from(value.round() as i64)
    } else {
        serde_json::Value::from(value)
    };
    node.as_object_mut()
        .ok_or_else(|| format!("spec.trainer.{path}: its parent is not an object"))?
        .insert(leaf.to_string(), number);
    *trainer = serde_json::from_value(json).map_err(|e| {
        format!("spec.template.trainer.{path}: setting it needs more of its parent object in the template: {e}")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;
