//! The `TrainingSweep` custom resource: a hyperparameter search whose trials are TrainingJobs.
//!
//! A parameter names a numeric field of `spec.trainer` by its path (`optimizer.lr`). The paths
//! and ranges a sweep may tune are read from the TrainingJob schema itself ([`tunables`]), so a
//! field added to the trainer is tunable with the range it already has.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::tunables::{describe_range, tunables};
use crate::types::TrainingJobSpec;
use crate::validate::FieldError;

/// A hyperparameter search over TrainingJobs.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ferrotrain.io",
    version = "v1alpha1",
    kind = "TrainingSweep",
    plural = "trainingsweeps",
    singular = "trainingsweep",
    namespaced,
    shortname = "tsw",
    category = "ferrotrain",
    status = "TrainingSweepStatus",
    derive = "PartialEq",
    doc = "A hyperparameter search whose trials are TrainingJobs.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Sweep phase"
    ),
    printcolumn(
        name = "Trials",
        type_ = "string",
        json_path = ".status.trialsSummary",
        description = "Running / done / total trials"
    ),
    printcolumn(
        name = "Best",
        type_ = "string",
        json_path = ".status.best.trial",
        description = "Best trial so far"
    ),
    printcolumn(
        name = "Metric",
        type_ = "number",
        json_path = ".status.best.metric",
        description = "Objective metric of the best trial"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.parallelTrials) || self.parallelTrials <= self.maxTrials").message("parallelTrials must not exceed maxTrials").field_path(".parallelTrials"))]
#[x_kube(validation = Rule::new("self.parameters.all(p, self.parameters.exists_one(q, q.path == p.path))").message("each path may be tuned by one parameter only").field_path(".parameters"))]
#[serde(rename_all = "camelCase")]
pub struct TrainingSweepSpec {
    /// The TrainingJob every trial starts from; each trial sets the parameters on its copy of
    /// `template.trainer`. With `template.checkpoint`, trial checkpoints go under
    /// `<uri>/<trial name>`.
    pub template: TrainingJobSpec,
    /// The hyperparameters to search.
    #[schemars(length(min = 1, max = 16))]
    pub parameters: Vec<SweepParameter>,
    /// What makes a trial better.
    pub objective: Objective,
    /// How the trials are chosen and which are stopped early.
    pub algorithm: Algorithm,
    /// Trials (TrainingJobs) the sweep creates at most, 1 to 256. For pbt, one trial is one
    /// interval of one population member.
    #[schemars(range(min = 1, max = 256))]
    pub max_trials: i32,
    /// Trials that run at once. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub parallel_trials: Option<i32>,
    /// Failed trials after which the sweep fails (and stops the others). Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 256))]
    pub max_failed_trials: Option<i32>,
    /// Suspends every running trial (each keeps its emergency checkpoint) and creates none
    /// until set back to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// One searched hyperparameter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'categorical' || (has(self.values) && !has(self.min) && !has(self.max) && !has(self.scale) && !has(self.gridPoints))").message("a categorical parameter takes values only (no min, max, scale or gridPoints)").field_path(".values"))]
#[x_kube(validation = Rule::new("self.type == 'categorical' || (has(self.min) && has(self.max) && !has(self.values))").message("a double or int parameter takes min and max (use type categorical for a list of values)").field_path(".min"))]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min < self.max").message("min must be below max").field_path(".min"))]
#[x_kube(validation = Rule::new("!has(self.scale) || self.scale != 'log' || (has(self.min) && self.min > 0.0)").message("a log scale needs min greater than 0").field_path(".scale"))]
#[serde(rename_all = "camelCase")]
pub struct SweepParameter {
    /// The field of `spec.trainer` it sets, for example `optimizer.lr`, `model.dropout`,
    /// `batchSize`, `optimizer.weightDecay`, `optimizer.momentum`.
    #[schemars(length(min = 1, max = 128))]
    pub path: String,
    /// `double`, `int` or `categorical` (one of `values`).
    #[serde(rename = "type")]
    pub kind: ParameterType,
    /// Smallest value (double, int).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value (double, int).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// `linear` or `log` (sampled uniformly in log space). Default: linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Scale>,
    /// The values of a categorical parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub values: Option<Vec<f64>>,
    /// Grid search: points between min and max, evenly spaced on the scale. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 64))]
    pub grid_points: Option<i32>,
}

/// Kinds of parameter.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ParameterType {
    /// A real number in [min, max].
    Double,
    /// A whole number in [min, max].
    Int,
    /// One of a list of values.
    Categorical,
}

/// Sampling scales.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Uniform in [min, max].
    Linear,
    /// Uniform in [log min, log max].
    Log,
}

/// The metric a sweep optimises.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Objective {
    /// `valAccuracy` or `valLoss`, as the trials report them.
    pub metric: ObjectiveMetric,
    /// `maximize` or `minimize`. Default: maximize for valAccuracy, minimize for valLoss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
}

/// Metrics a sweep can optimise.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectiveMetric {
    /// Accuracy on the validation or test split.
    #[serde(rename = "valAccuracy")]
    ValAccuracy,
    /// Cross-entropy on the validation or test split.
    #[serde(rename = "valLoss")]
    ValLoss,
}

impl ObjectiveMetric {
    /// The key of the metric in a TrainingJob's `status.progress.metrics`.
    pub fn key(self) -> &'static str {
        match self {
            ObjectiveMetric::ValAccuracy => "valAccuracy",
            ObjectiveMetric::ValLoss => "valLoss",
        }
    }
}

/// Optimisation direction.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Larger is better.
    Maximize,
    /// Smaller is better.
    Minimize,
}

impl Objective {
    /// The goal, with its default for the metric.
    pub fn goal_or_default(&self) -> Goal {
        self.goal.unwrap_or(match self.metric {
            ObjectiveMetric::ValAccuracy => Goal::Maximize,
            ObjectiveMetric::ValLoss => Goal::Minimize,
        })
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        match self.goal_or_default() {
            Goal::Maximize => a > b,
            Goal::Minimize => a < b,
        }
    }
}

/// The search algorithm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.type == 'asha' || (!has(self.minSteps) && !has(self.reductionFactor))").message("minSteps and reductionFactor apply only to type asha").field_path(".minSteps"))]
#[x_kube(validation = Rule::new("self.type != 'asha' || has(self.minSteps)").message("type asha needs minSteps, the steps of its first rung").field_path(".minSteps"))]
#[x_kube(validation = Rule::new("self.type == 'pbt' || (!has(self.intervalSteps) && !has(self.population) && !has(self.quantile) && !has(self.resampleProbability))").message("intervalSteps, population, quantile and resampleProbability apply only to type pbt").field_path(".intervalSteps"))]
#[x_kube(validation = Rule::new("self.type != 'pbt' || has(self.intervalSteps)").message("type pbt needs intervalSteps, the steps between exploit/explore rounds").field_path(".intervalSteps"))]
#[x_kube(validation = Rule::new("self.type != 'grid' || !has(self.seed)").message("a grid search is not random; remove seed").field_path(".seed"))]
#[serde(rename_all = "camelCase")]
pub struct Algorithm {
    /// `grid` (every combination, in order), `random`, `asha` (random trials, stopped at rungs
    /// of minSteps × reductionFactor^k unless in the rung's top 1/reductionFactor) or `pbt`
    /// (population-based training: every intervalSteps the bottom quantile continues from the
    /// checkpoint of a top trial with perturbed hyperparameters).
    #[serde(rename = "type")]
    pub kind: AlgorithmKind,
    /// Seed of random, asha and pbt, 0 to 2^53 − 1. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 9_007_199_254_740_991_i64))]
    pub seed: Option<i64>,
    /// ASHA: steps of the first rung.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_steps: Option<i64>,
    /// ASHA: η, the factor between rungs; a rung keeps its top 1/η. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 16))]
    pub reduction_factor: Option<i32>,
    /// PBT: steps between exploit/explore rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub interval_steps: Option<i64>,
    /// PBT: trials trained side by side. Default: 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 64))]
    pub population: Option<i32>,
    /// PBT: fraction at the bottom that copies the top, and at the top that is copied.
    /// Default: 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub quantile: Option<f64>,
    /// PBT: chance that an explored hyperparameter is drawn afresh instead of multiplied by 0.8
    /// or 1.2. Default: 0.25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub resample_probability: Option<f64>,
}

/// Search algorithms.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmKind {
    /// Every combination of the parameters' grid points.
    Grid,
    /// Independent random samples.
    Random,
    /// Asynchronous successive halving.
    Asha,
    /// Population-based training.
    Pbt,
}

/// Defaults of the sweep API.
pub mod defaults {
    /// Trials at once.
    pub const PARALLEL_TRIALS: i32 = 1;
    /// Failed trials tolerated.
    pub const MAX_FAILED_TRIALS: i32 = 3;
    /// Seed of the random algorithms.
    pub const SEED: i64 = 1;
    /// ASHA reduction factor.
    pub const REDUCTION_FACTOR: i32 = 3;
    /// PBT population.
    pub const POPULATION: i32 = 4;
    /// PBT quantile.
    pub const QUANTILE: f64 = 0.25;
    /// PBT resample probability.
    pub const RESAMPLE_PROBABILITY: f64 = 0.25;
    /// Grid points of a double or int parameter.
    pub const GRID_POINTS: i32 = 3;
}

impl TrainingSweepSpec {
    /// Trials at once.
    pub fn parallel_trials_or_default(&self) -> usize {
        self.parallel_trials
            .unwrap_or(defaults::PARALLEL_TRIALS)
            .max(1) as usize
    }

    /// Failed trials tolerated.
    pub fn max_failed_trials_or_default(&self) -> usize {
        self.max_failed_trials
            .unwrap_or(defaults::MAX_FAILED_TRIALS)
            .max(0) as usize
    }

    /// Whether the sweep is suspended.
    pub fn suspend_or_default(&self) -> bool {
        self.suspend.unwrap_or(false)
    }
}

impl Algorithm {
    /// Seed.
    pub fn seed_or_default(&self) -> u64 {
        self.seed.unwrap_or(defaults::SEED).max(0) as u64
    }
    /// η.
    pub fn reduction_factor_or_default(&self) -> u32 {
        self.reduction_factor
            .unwrap_or(defaults::REDUCTION_FACTOR)
            .max(2) as u32
    }
    /// Population.
    pub fn population_or_default(&self) -> usize {
        self.population.unwrap_or(defaults::POPULATION).max(2) as usize
    }
    /// Quantile.
    pub fn quantile_or_default(&self) -> f64 {
        self.quantile.unwrap_or(defaults::QUANTILE)
    }
    /// Resample probability.
    pub fn resample_probability_or_default(&self) -> f64 {
        self.resample_probability
            .unwrap_or(defaults::RESAMPLE_PROBABILITY)
    }
}

impl SweepParameter {
    /// Scale.
    pub fn scale_or_default(&self) -> Scale {
        self.scale.unwrap_or(Scale::Linear)
    }
    /// Grid points.
    pub fn grid_points_or_default(&self) -> usize {
        self.grid_points.unwrap_or(defaults::GRID_POINTS).max(2) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// status

/// Observed state of a sweep, written by the sweep controller (or `ferrotrain sweep`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSweepStatus {
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SweepPhase>,
    /// Conditions: Running, Suspended, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Every trial created so far, in creation order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trials: Vec<TrialStatus>,
    /// Trials by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<TrialCounts>,
    /// Running / done / total, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials_summary: Option<String>,
    /// The best trial so far by its latest objective metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestTrial>,
    /// Optimiser steps trained over all trials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_steps: Option<i64>,
    /// When the sweep started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Human-readable summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Sweep phases; Succeeded and Failed are terminal.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepPhase {
    /// Trials are being created or are training.
    Running,
    /// Suspended by the user.
    Suspended,
    /// Every trial finished or was stopped.
    Succeeded,
    /// More than maxFailedTrials trials failed, or the sweep cannot create valid trials.
    Failed,
}

/// What became of a trial.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialState {
    /// Its TrainingJob is being created or is starting.
    Pending,
    /// Training.
    Running,
    /// Suspended with the sweep; resumes with it.
    Paused,
    /// Trained to the end.
    Succeeded,
    /// Stopped by the algorithm (an ASHA rung it did not pass).
    Stopped,
    /// Its TrainingJob failed, or was deleted before it finished.
    Failed,
}

impl TrialState {
    /// Whether it is done (it trains no more).
    pub fn is_done(self) -> bool {
        matches!(
            self,
            TrialState::Succeeded | TrialState::Stopped | TrialState::Failed
        )
    }
}

/// One trial.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrialStatus {
    /// Name of its TrainingJob.
    pub name: String,
    /// The values it sets, by path.
    pub parameters: BTreeMap<String, f64>,
    /// State.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TrialState>,
    /// Latest objective metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<f64>,
    /// Step of the latest metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_step: Option<i64>,
    /// Best objective metric it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<f64>,
    /// Latest reported step.
    #[serde(default)]
    pub steps: i64,
    /// Steps it trained itself (a pbt trial starts from its parent's step).
    #[serde(default)]
    pub trained_steps: i64,
    /// ASHA: the objective at each rung it reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rungs: Vec<f64>,
    /// PBT: population member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<i32>,
    /// PBT: interval (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
    /// PBT: the trial whose checkpoint it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// PBT: that checkpoint (its manifest URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// Its latest committed checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Why it failed or was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Trials by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrialCounts {
    /// Pending or running.
    pub running: i32,
    /// Paused with the sweep.
    pub paused: i32,
    /// Trained to the end.
    pub succeeded: i32,
    /// Stopped by the algorithm.
    pub stopped: i32,
    /// Failed.
    pub failed: i32,
    /// Trials the sweep will have created in all.
    pub total: i32,
}

/// The best trial.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BestTrial {
    /// Its name.
    pub trial: String,
    /// Its parameters.
    pub parameters: BTreeMap<String, f64>,
    /// Its objective metric.
    pub metric: f64,
    /// The step of that metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i64>,
    /// Its latest checkpoint, to warm-start from (`spec.trainer.initFrom.uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// tunable fields

/// Checks what the schema and CEL rules of a sweep cannot: that each path is a tunable field
/// and its values lie in the field's own range, and that the algorithm fits the template.
pub fn validate_sweep(sweep: &TrainingSweep) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let tunables = tunables();
    let spec = &sweep.spec;
    for (i, parameter) in spec.parameters.iter().enumerate() {
        let base = format!("spec.parameters[{i}]");
        let Some(tunable) = tunables.iter().find(|t| t.path == parameter.path) else {
            let known: Vec<&str> = tunables.iter().map(|t| t.path.as_str()).collect();
            errors.push(FieldError::new(
                format!("{base}.path"),
                format!(
                    "{:?} is not a numeric field of spec.trainer that a sweep can tune; one of: {}",
                    parameter.path,
                    known.join(", ")
                ),
            ));
            continue;
        };
        let mut values: Vec<(&str, f64)> = Vec::new();
        values.extend(parameter.min.map(|v| ("min", v)));
        values.extend(parameter.max.map(|v| ("max", v)));
        values.extend(parameter.values.iter().flatten().map(|v| ("values", *v)));
        for (field, value) in values {
            let below = tunable.min.is_some_and(|min| value < min);
            let above = tunable.max.is_some_and(|max| value > max);
            if !value.is_finite() || below || above {
                errors.push(FieldError::new(
                    format!("{base}.{field}"),
                    format!(
                        "{value} is outside the range of spec.trainer.{}: {}",
                        tunable.path,
                        describe_range(tunable)
                    ),
                ));
            } else if (tunable.integer || parameter.kind == ParameterType::Int)
                && value.fract() != 0.0
            {
                errors.push(FieldError::new(
                    format!("{base}.{field}"),
                    format!(
                        "{value} is not a whole number, and spec.trainer.{} takes integers",
                        tunable.path
                    ),
                ));
            }
        }
        if tunable.integer && parameter.kind == ParameterType::Double {
            errors.push(FieldError::new(
                format!("{base}.type"),
                format!(
                    "spec.trainer.{} is an integer; use type int or categorical",
                    tunable.path
                ),
            ));
        }
    }
    let algorithm = &spec.algorithm;
    let total_steps = spec.template.trainer.max_steps;
    match algorithm.kind {
        AlgorithmKind::Asha => {
            if let (Some(min_steps), Some(total)) = (algorithm.min_steps, total_steps)
                && min_steps >= total
            {
                errors.push(FieldError::new(
                    "spec.algorithm.minSteps",
                    format!(
                        "{min_steps} is not below the template's maxSteps {total}, so no trial would ever be stopped"
                    ),
                ));
            }
            if let (Some(min_steps), Some(eval)) =
                (algorithm.min_steps, spec.template.trainer.eval_every_steps)
                && min_steps % eval != 0
            {
                errors.push(FieldError::new(
                    "spec.algorithm.minSteps",
                    format!(
                        "{min_steps} is not a multiple of spec.template.trainer.evalEverySteps ({eval}), so trials are not evaluated at the rungs"
                    ),
                ));
            }
            if spec.template.trainer.eval_every_steps.is_none() {
                errors.push(FieldError::new(
                    "spec.template.trainer.evalEverySteps",
                    "asha compares trials at the rung steps; set evalEverySteps to a divisor of minSteps",
                ));
            }
        }
        AlgorithmKind::Pbt => {
            let interval = algorithm.interval_steps.unwrap_or(1).max(1);
            match total_steps {
                None => errors.push(FieldError::new(
                    "spec.template.trainer.maxSteps",
                    "pbt trains in intervals of intervalSteps; set maxSteps to a multiple of it",
                )),
                Some(total) if total % interval != 0 || total < 2 * interval => {
                    errors.push(FieldError::new(
                        "spec.algorithm.intervalSteps",
                        format!(
                            "{interval} must divide the template's maxSteps ({total}) into at least 2 intervals"
                        ),
                    ));
                }
                Some(total) => {
                    let needed = algorithm.population_or_default() as i64 * (total / interval);
                    if needed > i64::from(spec.max_trials) {
                        errors.push(FieldError::new(
                            "spec.maxTrials",
                            format!(
                                "pbt needs population × maxSteps / intervalSteps = {needed} trials; raise maxTrials or intervalSteps"
                            ),
                        ));
                    }
                }
            }
            if spec.template.trainer.init_from.is_some() {
                errors.push(FieldError::new(
                    "spec.template.trainer.initFrom",
                    "pbt sets initFrom on its own trials; remove it from the template",
                ));
            }
        }
        AlgorithmKind::Grid | AlgorithmKind::Random => {}
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
